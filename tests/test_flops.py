"""FLOPs (docs/method.md): the analytic count equals fvcore's exactly, and the parameter count equals the model's.

fvcore traces a real forward pass and is slow per op: on one thread of the shared 2-core machine ~0.15 s per
digits-tiny model, ~0.6 s per cifar-mbv3 model and ~1 s per scalenet-mbv3 model (224-354 px), plus ~0.3-0.7 s to
build and He-initialise a cifar/scalenet model. The big models are therefore built on the meta device and
materialised with zero weights (fvcore's count and the parameter count depend on shapes only). Counts below keep
>= 200 subnets in all and >= 30 per space, spread evenly over every scaling stage.
"""
from __future__ import annotations

import random

import pytest
import torch

from scalenas.spaces.arch import derive_subnet, extreme_subnets, sample_subnet
from scalenas.spaces.flops import count_params, flops_params, fvcore_flops, subnet_flops_params
from scalenas.spaces.space import load_space
from scalenas.models.standalone import StandaloneNet
from scalenas.models.supernet import SuperNet, export_subnet

pytestmark = pytest.mark.usefixtures("torch_threads")

PER_STAGE = {"digits-tiny": 35, "cifar-mbv3": 8, "scalenet-mbv3": 8}  # x 4 stages = 140 + 32 + 32 = 204
CASES = [(name, s) for name in PER_STAGE for s in range(4)]


def _model(d, fast: bool) -> StandaloneNet:
    if not fast:
        return StandaloneNet(d)
    with torch.device("meta"):
        model = StandaloneNet(d)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.zero_()
    return model


def _check(space, subs, fast=False):
    bad = []
    for sub in subs:
        d = derive_subnet(space, sub)
        flops, params = flops_params(d)
        model = _model(d, fast)
        fv = fvcore_flops(model, d.resolution, d.in_channels)
        n = count_params(model)
        if (flops, params) != (fv, n):
            bad.append(f"{sub.to_json()}: analytic {flops}/{params}, fvcore {fv}, model params {n}")
        assert subnet_flops_params(space, sub) == (flops, params)
    assert not bad, "\n".join(bad)


@pytest.mark.slow
@pytest.mark.parametrize("name,stage", CASES, ids=[f"{n}-s{s}" for n, s in CASES])
def test_analytic_equals_fvcore(name, stage):
    space = load_space(name)
    assert len(space.scaling) == 4
    rng = random.Random(1000 * stage + len(name))
    n = PER_STAGE[name]
    subs = [sample_subnet(space, rng, stage=stage)[1] for _ in range(n)]
    if name != "scalenet-mbv3":  # the extremes (largest: 8.3 GFLOPs at 354 px, ~3 s in fvcore) only here
        subs[:2] = extreme_subnets(space, stage)
    _check(space, subs, fast=name != "digits-tiny")


def test_subnet_counts_total():
    assert sum(PER_STAGE[n] for n, _ in CASES) >= 200 and min(PER_STAGE.values()) * 4 >= 30


def test_analytic_equals_fvcore_with_multiple_of_8_rounding(space_yaml):
    path = space_yaml(lambda d: d.update(name="digits-m8", width_rounding={"multiple": 8}), name="m8.yaml")
    space = load_space(str(path))
    rng = random.Random(8)
    subs = [s for st in range(4) for s in extreme_subnets(space, st)]
    subs += [sample_subnet(space, rng)[1] for _ in range(8)]
    _check(space, subs)


def test_extrapolated_subnet_and_exported_model(tiny_supernet, digits):
    """Outside the space (an extrapolated member, standalone only) and a model exported from the supernet."""
    base = sample_subnet(digits, random.Random(2))[1]
    big = base.with_scaling(1.9, 1.8, 34)
    _check(digits, [big])
    sub = sample_subnet(digits, random.Random(3), stage=3)[1]
    model = export_subnet(tiny_supernet, sub, 1)
    d = derive_subnet(digits, sub)
    assert model.training
    assert (fvcore_flops(model, d.resolution, 1), count_params(model)) == flops_params(d)
    assert model.training  # traced in eval mode, the caller's mode restored


def test_scalenet_base_is_mobilenetv3_sized():
    """Sanity of the convention (MACs, batch 1): the smallest base is ~0.1 G, the stage-0 largest ~0.6 G."""
    space = load_space("scalenet-mbv3")
    small, large = extreme_subnets(space, 0)
    f0, p0 = subnet_flops_params(space, small)
    f1, p1 = subnet_flops_params(space, large)
    assert 50e6 < f0 < 200e6 and 300e6 < f1 < 1e9, (f0, f1)
    assert 1e6 < p0 < p1 < 20e6
    growth = [subnet_flops_params(space, extreme_subnets(space, s)[1])[0] for s in range(4)]
    assert growth == sorted(growth)
    assert type(f0) is int and type(p0) is int


def test_supernet_parameters_cover_every_subnet(digits):
    """The supernet holds a path for the largest subnet: exporting it gives the analytic parameter count."""
    torch.manual_seed(0)
    sn = SuperNet(digits)
    large = extreme_subnets(digits, 3)[1]
    assert count_params(export_subnet(sn, large)) == subnet_flops_params(digits, large)[1]


def test_cached_count_works_for_a_space_not_on_disk():
    from scalenas.spaces.space import space_from_dict

    raw = dict(load_space("digits-tiny").raw, name="digits-from-ckpt")
    space = space_from_dict(raw, "/nonexistent/run/checkpoint.pt[space_yaml]")
    sub = sample_subnet(space, random.Random(0))[1]
    assert subnet_flops_params(space, sub) == flops_params(derive_subnet(space, sub))
