"""The super-supernet: export equality, resolutions, coupling slices, sliced BN, model files, checkpoints."""
from __future__ import annotations

import random

import pytest
import torch

from conftest import randomize_bn
from scalenas.spaces.arch import Subnet, derive_subnet, extreme_subnets, parse_subnet, sample_subnet
from scalenas.train.checkpoint import load_supernet, read_checkpoint, save_checkpoint
from scalenas.errors import ScalenasError
from scalenas.models.registry import load_model, save_model
from scalenas.spaces.space import load_space
from scalenas.models.standalone import StandaloneNet
from scalenas.models.supernet import DynamicBN, SuperNet, export_subnet

pytestmark = pytest.mark.usefixtures("torch_threads")

TOL = 1e-5


def _x(space, res, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, space.in_channels, res, res, generator=g)


def _max_diff(sn, sub, side, x):
    model = export_subnet(sn, sub, side).eval()
    with torch.no_grad():
        a, b = sn(x, sub, side), model(x)
    return (a - b).abs().max().item(), a


@pytest.fixture(scope="module")
def cifar_supernet():
    """The one cifar-mbv3 supernet of this session (318 M parameters, ~1.3 GB)."""
    torch.manual_seed(1)
    net = SuperNet("cifar-mbv3")
    randomize_bn(net, seed=1)
    yield net.eval()
    del net


# ------------------------------------------------------------------------------------------ export equality
@pytest.mark.parametrize("side", [0, 1])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_export_equals_supernet_digits(tiny_supernet, digits, stage, side):
    rng = random.Random(100 * stage + side)
    subs = list(extreme_subnets(digits, stage)) + [sample_subnet(digits, rng, stage=stage)[1] for _ in range(8)]
    outs = []
    for sub in subs:
        diff, out = _max_diff(tiny_supernet, sub, side, _x(digits, sub.resolution))
        assert diff <= TOL, (sub.to_json(), side, diff)
        outs.append(out)
    # not a trivial network: logits vary with the input and between subnets
    assert outs[0].std() > 1e-3 and not torch.allclose(outs[0], outs[1])


def test_export_equals_supernet_cifar(cifar_supernet):
    space = cifar_supernet.space
    rng = random.Random(7)
    for stage in range(len(space.scaling)):
        subs = [sample_subnet(space, rng, stage=stage)[1] for _ in range(2)]
        if stage == len(space.scaling) - 1:
            subs.append(extreme_subnets(space, stage)[1])  # the largest subnet: full depth and width
        for i, sub in enumerate(subs):
            side = (stage + i) % 2
            diff, out = _max_diff(cifar_supernet, sub, side, _x(space, sub.resolution, seed=stage))
            assert diff <= TOL, (sub.to_json(), side, diff)
            assert out.std() > 1e-3


def test_cifar_forward_at_every_resolution(cifar_supernet):
    space = cifar_supernet.space
    small = extreme_subnets(space, 0)[0]
    for r in space.all_resolutions:
        stage = next(s for s, sc in enumerate(space.scaling) if r in sc.resolution)
        sc = space.scaling[stage]
        sub = small.with_scaling(sc.depth[0], sc.width[0], r)
        with torch.no_grad():
            out = cifar_supernet(_x(space, r, batch=1), sub)
        assert out.shape == (1, space.num_classes) and torch.isfinite(out).all()


def test_forward_at_every_resolution_digits(tiny_supernet, digits):
    rng = random.Random(3)
    for r in digits.all_resolutions:
        for stage, sc in enumerate(digits.scaling):
            if r not in sc.resolution:
                continue
            sub = sample_subnet(digits, rng, stage=stage)[1].with_scaling(sc.depth[-1], sc.width[-1], r)
            for side in (0, 1):
                with torch.no_grad():
                    out = tiny_supernet(_x(digits, r, batch=3), sub, side)
                assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_equal_keys_give_equal_outputs(tiny_supernet, digits):
    base = tuple((st.ops[-1],) for st in digits.stages)
    a = Subnet(digits.name, base, 1.04, 1.08, 18)
    b = Subnet(digits.name, base, 1.16, 1.08, 18)
    assert derive_subnet(digits, a).key() == derive_subnet(digits, b).key()
    x = _x(digits, 18)
    with torch.no_grad():
        assert torch.equal(tiny_supernet(x, a), tiny_supernet(x, b))


def test_supernet_rejects_foreign_subnets(tiny_supernet, digits):
    other = parse_subnet(extreme_subnets(load_space("cifar-mbv3"), 0)[0].to_dict(), load_space("cifar-mbv3"))
    with pytest.raises(ScalenasError, match="space 'cifar-mbv3'"):
        tiny_supernet(_x(digits, 16), other)
    outside = extreme_subnets(digits, 0)[0].with_scaling(1.9, 1.0, 16)
    with pytest.raises(ScalenasError, match="outside"):
        export_subnet(tiny_supernet, outside)
    with pytest.raises(ScalenasError, match="side"):
        tiny_supernet(_x(digits, 16), extreme_subnets(digits, 0)[0], 2)


# ------------------------------------------------------------------------------------------ coupling
def _masks(sn, sub, side, x):
    """{param id: bool mask of the entries the pass used}."""
    sn.record = []
    try:
        with torch.no_grad():
            sn(x, sub, side)
        rec = sn.record
    finally:
        sn.record = None
    masks = {}
    for p, slices in rec:
        m = masks.setdefault(id(p), torch.zeros(p.shape, dtype=torch.bool))
        m[slices if slices else (Ellipsis,)] = True
    return masks


def test_bilateral_slices_do_not_overlap_at_width_1(tiny_supernet, digits):
    shared = {id(p) for p in (tiny_supernet.head_bn.weight, tiny_supernet.head_bn.bias,
                              tiny_supernet.classifier.weight, tiny_supernet.classifier.bias)}
    rng = random.Random(0)
    for _ in range(6):
        sub = sample_subnet(digits, rng, stage=0)[1]
        x = _x(digits, 16)
        left, right = _masks(tiny_supernet, sub, 0, x), _masks(tiny_supernet, sub, 1, x)
        assert set(left) == set(right)
        for pid in left:
            overlap = (left[pid] & right[pid]).sum().item()
            if pid in shared:  # the head's 1280 features and the classifier are not scaled
                assert left[pid].all() and right[pid].all()
            else:
                assert overlap == 0
    # the stem output of side 0 is the right slice and stage 1 (index 0) the left slice
    d = derive_subnet(digits, sub)
    plan0, plan1 = tiny_supernet.layout.plan(d, 0), tiny_supernet.layout.plan(d, 1)
    cap = tiny_supernet.layout.stem_cap
    assert plan0.stem == slice(cap - d.stem_ch, cap) and plan1.stem == slice(0, d.stem_ch)
    assert plan0.layers[0].out.start == 0 and plan1.layers[0].out.stop == tiny_supernet.layout.out_caps[0]
    # capacity = c(w_max) + c(1)
    assert cap == digits.scale_channels(8, 1.64) + 8


def test_ordered_slices_with_coupling_1(space_yaml):
    path = space_yaml(lambda d: d.update(name="digits-n1", coupling=1), name="n1.yaml")
    space = load_space(str(path))
    torch.manual_seed(0)
    sn = SuperNet(space).eval()
    randomize_bn(sn)
    assert sn.layout.stem_cap == space.scale_channels(8, 1.64)
    rng = random.Random(1)
    for stage in range(len(space.scaling)):
        sub = sample_subnet(space, rng, stage=stage)[1]
        x = _x(space, sub.resolution)
        sn.record = []
        with torch.no_grad():
            a = sn(x, sub, 0)
            b = sn(x, sub, 1)
        rec, sn.record = sn.record, None
        for _, slices in rec:
            assert all(s.start in (0, None) for s in slices)
        assert torch.equal(a, b)
        assert _max_diff(sn, sub, 1, x)[0] <= TOL


# ------------------------------------------------------------------------------------------ sliced BN
def _bn_buffers(sn):
    return {n: b.clone() for n, b in sn.named_buffers() if n.endswith(("running_mean", "running_var"))}


def test_sliced_bn_updates_only_its_slice(digits):
    torch.manual_seed(0)
    sn = SuperNet(digits)
    randomize_bn(sn)
    sub = sample_subnet(digits, random.Random(9), stage=2)[1]
    side = 1
    model = export_subnet(sn, sub, side).train()
    d = derive_subnet(digits, sub)
    plan = sn.layout.plan(d, side)
    expected = {}  # buffer-owner BN -> slice the pass may touch
    expected[sn.stem_bn] = plan.stem
    for spec, sl in zip(d.layers, plan.layers):
        for bn, which in sn.blocks[spec.stage][spec.position][spec.op].bns():
            expected[bn] = getattr(sl, which)
    expected[sn.head_bn] = slice(None)
    before = _bn_buffers(sn)
    x = _x(digits, sub.resolution, batch=8)
    sn.train()
    out_sn = sn(x, sub, side)
    out_model = model(x)
    assert (out_sn - out_model).abs().max() <= 1e-4  # train mode: batch statistics, same numbers
    after = _bn_buffers(sn)
    owners = {n: m for n, m in sn.named_modules() if isinstance(m, DynamicBN)}
    changed_any = 0
    for name, old in before.items():
        owner_name, buf = name.rsplit(".", 1)
        bn = owners[owner_name]
        new = after[name]
        mask = torch.zeros_like(old, dtype=torch.bool)
        if bn in expected:
            mask[expected[bn]] = True
        assert torch.equal(old[~mask], new[~mask]), name  # nothing outside the slice moves
        if bn in expected:
            changed_any += int(not torch.equal(old[mask], new[mask]))
    assert changed_any == len(expected) * 2  # every path BN moved both statistics
    # the slice follows nn.BatchNorm2d's update exactly (compare with the exported model after its step)
    assert torch.allclose(sn.stem_bn.running_mean[plan.stem], model.stem[1].running_mean, atol=1e-6)
    assert torch.allclose(sn.stem_bn.running_var[plan.stem], model.stem[1].running_var, atol=1e-6)
    first = sn.blocks[0][0][d.layers[0].op]
    assert torch.allclose(first.project_bn.running_var[plan.layers[0].out],
                          model.stages[0][0].project_bn.running_var, atol=1e-6)


def test_reset_bn_stats_touches_only_the_path(digits):
    torch.manual_seed(0)
    sn = SuperNet(digits)
    randomize_bn(sn)
    sub = sample_subnet(digits, random.Random(4), stage=1)[1]
    before = _bn_buffers(sn)
    sn.reset_bn_stats(sub, side=0)
    after = _bn_buffers(sn)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    d = derive_subnet(digits, sub)
    assert len(changed) == 2 * (2 + sum(len(blk.bns()) for blk in sn.path_modules(d)))
    plan = sn.layout.plan(d, 0)
    assert (sn.stem_bn.running_mean[plan.stem] == 0).all() and (sn.stem_bn.running_var[plan.stem] == 1).all()


# ------------------------------------------------------------------------------------------ files
def test_exported_model_file_round_trip(tiny_supernet, digits, tmp_path):
    sub = sample_subnet(digits, random.Random(12), stage=3)[1]
    model = export_subnet(tiny_supernet, sub, 1).eval()
    path = save_model(tmp_path / "m.pt", model, extra={"flops": 1})
    loaded = load_model(path).eval()
    assert isinstance(loaded, StandaloneNet) and loaded.subnet == sub
    x = _x(digits, sub.resolution, batch=4)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert (loaded(x) - tiny_supernet(x, sub, 1)).abs().max() <= TOL


def test_checkpoint_round_trip_and_other_space(tiny_supernet, digits, tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {**tiny_supernet.checkpoint_meta(), "model": tiny_supernet.state_dict()})
    assert read_checkpoint(path)["space"] == "digits-tiny"
    net = load_supernet(path, expect_space=digits)
    sub = sample_subnet(digits, random.Random(1), stage=2)[1]
    x = _x(digits, sub.resolution)
    with torch.no_grad():
        assert torch.equal(net(x, sub), tiny_supernet(x, sub))
    with pytest.raises(ScalenasError, match="'digits-tiny'.*'cifar-mbv3'"):
        load_supernet(path, expect_space=load_space("cifar-mbv3"))


def test_bad_checkpoints(tiny_supernet, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(4096)))
    with pytest.raises(ScalenasError, match="corrupt"):
        load_supernet(corrupt)
    with pytest.raises(ScalenasError, match="not found"):
        load_supernet(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    with pytest.raises(ScalenasError, match="not a scalenas supernet checkpoint"):
        load_supernet(other)
    # the stored space and the stored weights disagree
    meta = tiny_supernet.checkpoint_meta()
    yaml_dict = dict(meta["space_yaml"], head={"channels": 32, "dropout": 0.0})
    path = tmp_path / "mismatch.pt"
    save_checkpoint(path, {**meta, "space_yaml": yaml_dict, "space_path": None,
                           "model": tiny_supernet.state_dict()})
    with pytest.raises(ScalenasError, match="do not fit"):
        load_supernet(path)
    path = tmp_path / "nomodel.pt"
    save_checkpoint(path, meta)
    with pytest.raises(ScalenasError, match="'model'"):
        load_supernet(path)
