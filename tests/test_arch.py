"""Architectures: JSON interchange (docs/method.md), derivation (§3), dedupe key, sampling (§4), bad input."""
from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from fractions import Fraction

import pytest
from scipy.stats import chisquare

from scalenas.spaces.arch import (Subnet, derive_subnet, extreme_subnets, parse_subnet, read_arch, sample_subnet,
                           unique_by_built)
from scalenas.errors import ScalenasError
from scalenas.spaces.space import load_space

pytestmark = pytest.mark.usefixtures("torch_threads")

SHIPPED = ["digits-tiny", "cifar-mbv3", "scalenet-mbv3"]

METHOD_EXAMPLE = """{"space": "scalenet-mbv3",
 "base": [["ir_k5"], ["ir_k5"], ["ir_k7", "ir_k7", "ir_k5", "ir_k3"], ["ir_k5", "ir_k5"],
          ["ir_k7", "ir_k7"], ["ir_k7", "ir_k5", "ir_k7"], ["ir_k5"]],
 "depth": 1.0, "width": 1.0, "resolution": 224}"""


def _subnets(space, per_stage=8, seed=0):
    rng = random.Random(seed)
    out = []
    for s in range(len(space.scaling)):
        out += list(extreme_subnets(space, s))
        out += [sample_subnet(space, rng, stage=s)[1] for _ in range(per_stage)]
    return out


# ------------------------------------------------------------------------------------------ JSON
@pytest.mark.parametrize("name", SHIPPED)
def test_json_round_trip_is_exact(name):
    space = load_space(name)
    for sub in _subnets(space):
        text = sub.to_json()
        assert "\n" not in text
        again = parse_subnet(json.loads(text), space)
        assert again == sub and again.to_json() == text
        assert read_arch(text) == sub  # space taken from the JSON
        assert type(again.depth) is float and type(again.resolution) is int
    # every float of the space survives exactly, including 1.2 / 1.28 (not 1.2000000000000002)
    for sc in space.scaling:
        for d, w in itertools.product(sc.depth, sc.width):
            sub = Subnet(space.name, extreme_subnets(space, 0)[0].base, d, w, sc.resolution[0])
            obj = json.loads(sub.to_json())
            assert obj["depth"] == d and obj["width"] == w
            assert parse_subnet(obj, space) == sub


def test_near_floats_snap_to_the_space_option():
    space = load_space("scalenet-mbv3")
    obj = json.loads(METHOD_EXAMPLE)
    obj.update(depth=1.2000000000000002, width=1.28 + 1e-12, resolution=288)
    sub = parse_subnet(obj, space)
    assert sub.depth == 1.2 and sub.width == 1.28
    obj.update(depth=1, width=1, resolution=224)  # ints are fine
    assert parse_subnet(obj, space).depth == 1.0


def test_method_example_parses_and_derives():
    space = load_space("scalenet-mbv3")
    sub = read_arch(METHOD_EXAMPLE)
    assert sub == read_arch(METHOD_EXAMPLE, space)
    assert sub.space == "scalenet-mbv3" and (sub.depth, sub.width, sub.resolution) == (1.0, 1.0, 224)
    assert [len(b) for b in sub.base] == [1, 1, 4, 2, 2, 3, 1]
    assert sub.base[2] == ("ir_k7", "ir_k7", "ir_k5", "ir_k3")
    d = derive_subnet(space, sub)
    assert len(d.layers) == 14 and d.head_in == 320 and d.stem_ch == 32
    # extra fields are allowed (docs/method.md: more fields may be added)
    obj = json.loads(METHOD_EXAMPLE)
    obj["note"] = "x"
    assert parse_subnet(obj, space) == sub


def test_read_arch_from_file(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(METHOD_EXAMPLE)
    assert read_arch(str(p)) == read_arch(METHOD_EXAMPLE)


# ------------------------------------------------------------------------------------------ derivation
def _ceil_exact(n: int, m: float) -> int:
    return math.ceil(Fraction(repr(m)) * n)  # decimal value of the option as written in the YAML


@pytest.mark.parametrize("name", SHIPPED)
def test_derivation_follows_method_section_3(name):
    space = load_space(name)
    for sub in _subnets(space, per_stage=10, seed=1):
        d = derive_subnet(space, sub)
        assert d.resolution == sub.resolution and d.stem_ch == _ceil_exact(space.stem_channels, sub.width)
        c_in = d.stem_ch
        for i, (st, ops) in enumerate(zip(space.stages, sub.base)):
            layers = d.stage_layers(i)
            assert len(layers) == _ceil_exact(len(ops), sub.depth)
            expected_ops = list(ops) + [ops[-1]] * (len(layers) - len(ops))  # added layers repeat the last op
            assert [l.op for l in layers] == expected_ops
            assert [l.position for l in layers] == list(range(len(layers)))
            assert [l.stride for l in layers] == [st.stride] + [1] * (len(layers) - 1)
            c_out = _ceil_exact(st.channels, sub.width)
            for l in layers:
                assert (l.in_ch, l.out_ch, l.expand) == (c_in, c_out, st.expand)
                assert l.hidden == c_in * st.expand and l.se_ch == max(1, l.hidden // space.se_reduction)
                assert l.kernel == space.ops[l.op].kernel and l.se == space.ops[l.op].se
                assert l.residual == (l.stride == 1 and l.in_ch == l.out_ch)
                c_in = c_out
        assert d.head_in == c_in and d.head_ch == space.head_channels  # the head is not scaled


def test_depth_rounding_examples():
    space = load_space("scalenet-mbv3")
    base = tuple(("ir_k3",) * st.max_layers for st in space.stages)
    d = derive_subnet(space, Subnet(space.name, base, 1.2, 1.0, 272))
    assert [len(d.stage_layers(i)) for i in range(7)] == [2, 5, 5, 5, 5, 5, 2]  # ceil(4 * 1.2) = 5
    assert space.scale_depth(5, 1.2) == 6  # not 7
    assert space.scale_depth(3, 1.4) == 5 and space.scale_depth(4, 1.64) == 7 and space.scale_depth(4, 1.0) == 4
    d = derive_subnet(space, Subnet(space.name, base, 1.64, 1.64, 354))
    assert [len(d.stage_layers(i)) for i in range(7)] == [space.positions(i) for i in range(7)]


# ------------------------------------------------------------------------------------------ dedupe key
def _structure(d):
    return (d.resolution, d.stem_ch, d.layers, d.head_in)


@pytest.mark.parametrize("name", SHIPPED)
def test_dedupe_key_is_the_built_network(name):
    space = load_space(name)
    rng = random.Random(3)
    bases = [tuple((st.ops[0],) for st in space.stages)] + [sample_subnet(space, rng)[1].base for _ in range(2)]
    equal_pairs = 0
    for base in bases:
        triples = [(d, w, r) for sc in space.scaling for d in sc.depth for w in sc.width for r in sc.resolution]
        derived = [derive_subnet(space, Subnet(space.name, base, *t)) for t in triples]
        by_key: dict[str, list] = {}
        for t, d in zip(triples, derived):
            by_key.setdefault(d.key(), []).append((t, _structure(d)))
        structures = {s for group in by_key.values() for _, s in group}
        assert len(structures) == len(by_key)  # different built networks never share a key
        for group in by_key.values():
            assert len({s for _, s in group}) == 1  # one key, one network
            equal_pairs += len(group) - 1
        subs = [Subnet(space.name, base, *t) for t in triples]
        assert len(unique_by_built(space, subs)) == len(by_key)
    assert equal_pairs > 0  # ceil makes depth steps coarse: (d, w, r) pairs that build the same network exist
    # the example from the brief: a 1-layer stage gets 2 layers at depth 1.04 and at 1.08
    one = tuple((st.ops[0],) for st in space.stages)
    a = derive_subnet(space, Subnet(space.name, one, 1.04, 1.08, space.scaling[1].resolution[0]))
    b = derive_subnet(space, Subnet(space.name, one, 1.08, 1.08, space.scaling[1].resolution[0]))
    c = derive_subnet(space, Subnet(space.name, one, 1.08, 1.12, space.scaling[1].resolution[0]))
    assert a.key() == b.key() and a.key() != c.key()


# ------------------------------------------------------------------------------------------ sampling
def test_seeded_sampling_is_reproducible():
    space = load_space("scalenet-mbv3")
    def draw(seed):
        rng = random.Random(seed)
        return [sample_subnet(space, rng) for _ in range(50)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    rng1, rng2 = random.Random(11), random.Random(11)
    a = [sample_subnet(space, rng1, stage=2) for _ in range(20)]
    b = [sample_subnet(space, rng2, stage=2) for _ in range(20)]
    assert a == b and all(s == 2 for s, _ in a)
    for s, sub in a:
        assert space.stage_of(sub.depth, sub.width, sub.resolution) == 2
        parse_subnet(sub.to_dict(), space)  # every sample is a valid member


@pytest.mark.parametrize("name", ["scalenet-mbv3", "digits-tiny"])
def test_hierarchical_stage_frequencies_match_the_weights(name):
    space = load_space(name)
    rng = random.Random(2024)
    n = 5000
    draws = [sample_subnet(space, rng) for _ in range(n)]
    counts = Counter(s for s, _ in draws)
    observed = [counts[s] for s in range(len(space.scaling))]
    expected = [n * w for w in space.stage_weights]
    assert chisquare(observed, expected).pvalue > 1e-3, (observed, expected)
    # within a stage, d / w / r are uniform over the stage's lists; base depth uniform per stage
    top = len(space.scaling) - 1
    subs = [sub for s, sub in draws if s == top]
    for field, options in (("depth", space.scaling[top].depth), ("width", space.scaling[top].width),
                           ("resolution", space.scaling[top].resolution)):
        c = Counter(getattr(sub, field) for sub in subs)
        assert set(c) == set(options)
        assert chisquare([c[o] for o in options]).pvalue > 1e-3
    st = max(range(space.num_stages), key=lambda i: space.stages[i].max_layers)
    c = Counter(len(sub.base[st]) for _, sub in draws)
    assert chisquare([c[k] for k in range(1, space.stages[st].max_layers + 1)]).pvalue > 1e-3
    if name == "scalenet-mbv3":
        assert space.stage_weights == pytest.approx([1 / 17, 4 / 17, 5 / 17, 7 / 17])


def test_flat_sampling_is_proportional_to_stage_sizes():
    space = load_space("digits-tiny")
    rng = random.Random(5)
    n = 5000
    counts = Counter(sample_subnet(space, rng, hierarchical=False)[0] for _ in range(n))
    sizes = [sc.size for sc in space.scaling]
    expected = [n * s / sum(sizes) for s in sizes]
    assert chisquare([counts[s] for s in range(len(sizes))], expected).pvalue > 1e-3


def test_bad_stage_for_sampling():
    space = load_space("digits-tiny")
    with pytest.raises(ScalenasError, match="--stage 4"):
        sample_subnet(space, random.Random(0), stage=4)


# ------------------------------------------------------------------------------------------ bad input
def _example():
    return json.loads(METHOD_EXAMPLE)


def _with(**kw):
    obj = _example()
    obj.update(kw)
    return obj


BASE = _example()["base"]
BAD = [  # (object, words the message must contain)
    (_with(base=[b if i != 2 else ["ir_k7", "ir_k9"] for i, b in enumerate(BASE)]), ["base[2][1]", "ir_k9"]),
    (_with(base=BASE[:-1]), ["'base'", "6 stages", "7"]),
    (_with(base=BASE + [["ir_k3"]]), ["'base'", "8 stages"]),
    (_with(base=[[]] + BASE[1:]), ["base[0]", "depth 0"]),
    (_with(base=BASE[:2] + [["ir_k3"] * 5] + BASE[3:]), ["base[2]", "depth 5", "1..4"]),
    (_with(base=BASE[:2] + ["ir_k3"] + BASE[3:]), ["base[2]", "list of op names"]),
    (_with(base="ir_k3"), ["'base'"]),
    (_with(width=1.5), ["width 1.5", "not in any scaling stage"]),
    (_with(depth=1.04), ["depth 1.04", "not in any scaling stage"]),  # stage 1 depth, stage 0 width/res
    (_with(resolution=225), ["resolution 225", "not in any scaling stage"]),
    (_with(depth=0), ["depth 0.0"]),
    (_with(depth="1.0"), ["'depth'"]),
    (_with(width=True), ["'width'"]),
    (_with(resolution=224.0), ["'resolution'"]),
    (_with(resolution="224"), ["'resolution'"]),
    (_with(space="digits-tiny"), ["'space'", "digits-tiny", "scalenet-mbv3"]),
    ([1, 2], ["JSON object"]),
]


@pytest.mark.parametrize("obj,words", BAD, ids=[" ".join(w) for _, w in BAD])
def test_bad_subnets_name_the_field(obj, words):
    space = load_space("scalenet-mbv3")
    with pytest.raises(ScalenasError) as err:
        parse_subnet(obj, space)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_outside_the_space_when_allowed():
    space = load_space("scalenet-mbv3")
    sub = parse_subnet(_with(depth=1.9, width=1.75, resolution=400), space, allow_outside=True)
    assert (sub.depth, sub.width, sub.resolution) == (1.9, 1.75, 400)
    for bad in (dict(depth=0.5), dict(width=0.0), dict(resolution=0)):
        with pytest.raises(ScalenasError, match=">= 1"):
            parse_subnet(_with(**bad), space, allow_outside=True)


def test_bad_text_and_missing_space(tmp_path):
    with pytest.raises(ScalenasError, match="malformed JSON"):
        read_arch('{"space": "digits-tiny", ')
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ScalenasError, match=f"{p}: malformed JSON"):
        read_arch(str(p))
    with pytest.raises(ScalenasError, match="not found"):
        read_arch(str(tmp_path / "missing.json"))
    obj = _example()
    del obj["space"]
    with pytest.raises(ScalenasError, match="'space' missing"):
        parse_subnet(obj)
    assert parse_subnet(obj, load_space("scalenet-mbv3")).space == "scalenet-mbv3"
    with pytest.raises(ScalenasError, match="unknown search space 'nope'"):
        parse_subnet(_with(space="nope"))
    with pytest.raises(ScalenasError, match="'space'.*'cifar-mbv3'"):  # space mismatch against a given space
        read_arch(METHOD_EXAMPLE, load_space("cifar-mbv3"))


def test_float_resolution_message():
    with pytest.raises(ScalenasError, match="'resolution' must be an integer"):
        parse_subnet(_with(resolution=224.0), load_space("scalenet-mbv3"))
