"""Search spaces: shipped files load, scalenet-mbv3 is docs/method.md, bad files name the file and the key."""
from __future__ import annotations

import math

import pytest

from scalenas.spaces.arch import derive_subnet, extreme_subnets
from scalenas.errors import ScalenasError
from scalenas.spaces.space import load_space, resolve_space_path, shipped_spaces
from scalenas.models.supernet import SliceLayout

pytestmark = pytest.mark.usefixtures("torch_threads")

SHIPPED = ["digits-tiny", "cifar-mbv3", "scalenet-mbv3"]


def test_shipped_spaces_load():
    assert set(SHIPPED) <= set(shipped_spaces())
    for name in SHIPPED:
        sp = load_space(name)
        assert sp.name == name
        assert sp.scaling[0].depth == (1.0,) and sp.scaling[0].width == (1.0,)
        assert sp.scaling[0].resolution == (sp.base_resolution,)
        assert math.isclose(sum(sp.stage_weights), 1.0)
        assert load_space(name) is sp  # cached
        assert load_space(str(resolve_space_path(name))) is sp  # by path: the same object


def test_scalenet_mbv3_is_method_section_2():
    sp = load_space("scalenet-mbv3")
    assert (sp.in_channels, sp.base_resolution, sp.num_classes) == (3, 224, 1000)
    assert (sp.stem_channels, sp.stem_kernel, sp.stem_stride) == (32, 3, 2)
    table = [  # channels, max layers, stride, expand ratio
        (16, 1, 1, 1), (32, 4, 2, 6), (40, 4, 2, 6), (80, 4, 2, 6), (96, 4, 1, 6), (192, 4, 2, 6), (320, 1, 1, 6)]
    assert [(s.channels, s.max_layers, s.stride, s.expand) for s in sp.stages] == table
    for st in sp.stages:
        assert st.ops == ("ir_k3", "ir_k5", "ir_k7")
    assert {n: (o.kernel, o.se) for n, o in sp.ops.items()} == {"ir_k3": (3, True), "ir_k5": (5, True),
                                                               "ir_k7": (7, True)}
    assert sp.se_reduction == 4
    assert sp.head_channels == 1280
    steps = lambda a, n: tuple(round(a + 0.04 * i, 2) for i in range(n))  # noqa: E731
    expected = [((1.0,), (1.0,), (224,)),
                (steps(1.04, 4), steps(1.04, 4), (224, 240, 256)),
                (steps(1.20, 5), steps(1.20, 5), (272, 288, 304)),
                (steps(1.40, 7), steps(1.40, 7), (320, 336, 354))]
    assert [(s.depth, s.width, s.resolution) for s in sp.scaling] == expected
    assert sp.scaling[2].depth[-1] == 1.36 and sp.scaling[3].width[-1] == 1.64
    assert sp.num_scaling_stages == 3
    assert sp.growth == 2.0
    assert sp.coupling == 2
    assert sp.width_rounding == "ceil"
    assert sp.stage_weights == pytest.approx([1 / 17, 4 / 17, 5 / 17, 7 / 17], abs=1e-12)
    # ceil rounding: channels = ceil(c * w), 5 layers * 1.2 -> 6 layers; exact despite binary floats
    assert sp.scale_channels(16, 1.04) == 17 and sp.scale_channels(32, 1.64) == 53
    assert sp.scale_channels(25, 1.12) == 28  # 25 * 1.12 == 28.000000000000004 in floats
    assert sp.scale_channels(100, 1.12) == 112 and sp.scale_channels(75, 1.36) == 102
    assert sp.scale_depth(5, 1.2) == 6 and sp.scale_depth(4, 1.04) == 5 and sp.scale_depth(1, 1.0) == 1
    # supernet positions: ceil(max_layers * 1.64)
    assert [sp.positions(i) for i in range(7)] == [2, 7, 7, 7, 7, 7, 2]


def test_other_shipped_spaces_follow_the_same_structure():
    ref = load_space("scalenet-mbv3")
    cifar = load_space("cifar-mbv3")
    assert [s.channels for s in cifar.stages] == [s.channels for s in ref.stages]
    assert [s.depth for s in cifar.scaling] == [s.depth for s in ref.scaling]
    assert [s.width for s in cifar.scaling] == [s.width for s in ref.scaling]
    digits = load_space("digits-tiny")
    assert (digits.in_channels, digits.base_resolution, digits.coupling) == (1, 16, 2)
    assert digits.stage_weights == pytest.approx([1 / 11, 4 / 11, 3 / 11, 3 / 11])


# ------------------------------------------------------------------------------------------ bad files
def _set(path: str, value):
    """An edit that sets a dotted/indexed key, e.g. ``stages.1.ops``."""

    def edit(d):
        keys = path.split(".")
        for k in keys[:-1]:
            d = d[int(k)] if isinstance(d, list) else d[k]
        last = keys[-1]
        if value is _DELETE:
            del d[last]
        elif isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value

    return edit


_DELETE = object()

BAD = [  # (edit, words the message must contain)
    (_set("colour", "red"), ["colour", "unknown key"]),
    (_set("stages.1.ops", ["ir_k3", "ir_k9"]), ["stages[1].ops", "ir_k9"]),
    (_set("num_classes", _DELETE), ["num_classes", "missing"]),
    (_set("head.channels", _DELETE), ["head.channels", "missing"]),
    (_set("num_classes", "ten"), ["num_classes", "integer"]),
    (_set("stages.0.channels", 8.5), ["stages[0].channels", "integer"]),
    (_set("stem", [8, 3]), ["stem", "mapping"]),
    (_set("scaling.0.depth", [1.04]), ["scaling[0]", "base"]),
    (_set("scaling.0.resolution", [18]), ["scaling[0]", "base"]),
    (_set("ops.ir_k3.kernel", 4), ["ops.ir_k3.kernel", "odd"]),
    (_set("growth", 1.0), ["growth", "> 1"]),
    (_set("growth", 0.5), ["growth", "> 1"]),
    (_set("coupling", 3), ["coupling"]),
    (_set("width_rounding", {"multiple": 0}), ["width_rounding"]),
    (_set("width_rounding", "floor"), ["width_rounding"]),
    (_set("stages.2.stride", 3), ["stages[2].stride"]),
    (_set("stage_weights", [1, 2]), ["stage_weights"]),
    (_set("scaling.2.width", [1.2, "x"]), ["scaling[2].width[1]"]),
    (_set("scaling.3.resolution", [24, 24]), ["scaling[3].resolution", "duplicates"]),
    (_set("scaling.1.depth", [0.9, 1.04]), ["scaling[1]", ">= 1.0"]),
    (_set("scaling", [{"depth": [1.0], "width": [1.0], "resolution": [16]}]), ["scaling"]),
    (_set("head.dropout", 1.5), ["head.dropout"]),
]


@pytest.mark.parametrize("edit,words", BAD, ids=[" ".join(w) for _, w in BAD])
def test_bad_space_names_file_and_key(space_yaml, edit, words):
    path = space_yaml(edit)
    with pytest.raises(ScalenasError) as err:
        load_space(str(path))
    msg = str(err.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, msg
    assert "\n" not in msg


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nstages: [1, 2\nhead: {channels: 4}\n")
    with pytest.raises(ScalenasError) as err:
        load_space(str(path))
    assert str(path) in str(err.value) and "malformed YAML" in str(err.value) and "line" in str(err.value)


def test_top_level_not_a_mapping_and_missing_files(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ScalenasError, match="mapping"):
        load_space(str(path))
    with pytest.raises(ScalenasError, match="not found"):
        load_space(str(tmp_path / "nope.yaml"))
    with pytest.raises(ScalenasError, match="unknown search space 'nope'.*digits-tiny"):
        load_space("nope")


def test_a_valid_variant_loads(space_yaml):
    path = space_yaml(_set("name", "variant"), name="variant.yaml")
    sp = load_space(str(path))
    assert sp.name == "variant" and sp.path == str(path)


def test_width_rounding_multiple_is_the_one_rule(space_yaml):
    path = space_yaml(_set("width_rounding", {"multiple": 8}), name="m8.yaml")
    sp = load_space(str(path))
    assert (sp.width_rounding, sp.width_multiple) == ("multiple", 8)
    # round to the nearest multiple of 8, never down by more than 10 %, at least 8
    assert [sp.scale_channels(c, 1.0) for c in (8, 12, 16, 24)] == [8, 16, 16, 24]
    assert sp.scale_channels(16, 1.64) == 24 and sp.scale_channels(24, 1.52) == 40
    assert sp.scale_channels(4, 1.0) == 8
    for c in (8, 12, 16, 24, 100):
        for w in (1.0, 1.04, 1.28, 1.64):
            v = sp.scale_channels(c, w)
            assert v % 8 == 0 and v >= 0.9 * c * w
    # the derivation and the supernet capacities go through it
    for s in range(len(sp.scaling)):
        for sub in extreme_subnets(sp, s):
            d = derive_subnet(sp, sub)
            assert d.stem_ch == sp.scale_channels(sp.stem_channels, sub.width)
            for l in d.layers:
                assert l.out_ch == sp.scale_channels(sp.stages[l.stage].channels, sub.width)
                assert l.out_ch % 8 == 0
    lay = SliceLayout(sp)
    wmax = sp.max_width_mult
    assert lay.stem_cap == sp.scale_channels(8, wmax) + sp.scale_channels(8, 1.0)
    assert lay.out_caps == [sp.scale_channels(st.channels, wmax) + sp.scale_channels(st.channels, 1.0)
                            for st in sp.stages]


def test_stage_of_and_defaults():
    sp = load_space("scalenet-mbv3")
    assert sp.stage_of(1.0, 1.0, 224) == 0
    assert sp.stage_of(1.04, 1.16, 256) == 1
    assert sp.stage_of(1.2, 1.36, 304) == 2
    assert sp.stage_of(1.04, 1.2, 224) is None  # mixed stages are not members
    assert sp.stage_of(1.0, 1.0, 240) is None
    assert sp.max_depth_mult == 1.64 and sp.max_width_mult == 1.64
    assert sp.all_resolutions == [224, 240, 256, 272, 288, 304, 320, 336, 354]
    assert sp.num_base_networks() == 3 * (3 + 9 + 27 + 81) ** 5 * 3
