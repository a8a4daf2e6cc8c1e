"""FLOPs targets: parsing, per-stage targets, feasible ranges (checked against random subnets), up-front checks."""
from __future__ import annotations

import random

import pytest

from scalenas.spaces.arch import sample_subnet
from scalenas.errors import ScalenasError
from scalenas.spaces.flops import subnet_flops_params
from scalenas.spaces.space import load_space
from scalenas.spaces.targets import check_targets, check_tolerance, feasible_ranges, format_flops, parse_flops, stage_targets


@pytest.mark.parametrize("text, value", [
    ("2G", 2_000_000_000), ("2g", 2_000_000_000), ("1.22G", 1_220_000_000), ("306M", 306_000_000),
    ("306m", 306_000_000), ("7k", 7_000), ("7 K", 7_000), ("1T", 10**12), ("1500000", 1_500_000),
    (" 5e8 ", 500_000_000), (".5M", 500_000), (1_500_000, 1_500_000), (2.5e9, 2_500_000_000),
])
def test_parse_flops_accepts_units_and_plain_numbers(text, value):
    assert parse_flops(text) == value


@pytest.mark.parametrize("text", ["-2G", "0", "0.0G", "abc", "2X", "", "G", "nan", "inf", "1e400", "2GG", "0.0001",
                                  True])
def test_parse_flops_rejects_bad_values_naming_them(text):
    with pytest.raises(ScalenasError) as err:
        parse_flops(text)
    assert repr(text) in str(err.value) or str(text) in str(err.value)


def test_format_flops():
    assert format_flops(1_220_000_000) == "1.22G"
    assert format_flops(306_000_000) == "306M"
    assert format_flops(950) == "950"
    assert [format_flops(n, decimals=3) for n in (1_220_000_000, 306_000_000, 4_500, 950.7)] == \
        ["1.220G", "306.000M", "4.500K", "950"]  # the fixed form of `scalenas space show` and `flops`


def test_stage_targets_single_value_and_list():
    space = load_space("digits-tiny")
    assert stage_targets(space, "8M") == [1_000_000, 2_000_000, 4_000_000, 8_000_000]
    assert stage_targets(space, "9M", growth=3.0) == [333_333, 1_000_000, 3_000_000, 9_000_000]
    assert stage_targets(space, "4M", stages=2) == [1_000_000, 2_000_000, 4_000_000]
    assert stage_targets(space, "1M,2M,3.5M,7M") == [1_000_000, 2_000_000, 3_500_000, 7_000_000]
    assert stage_targets(space, "1M, 2M", stages=1) == [1_000_000, 2_000_000]


@pytest.mark.parametrize("kwargs, needle", [
    ({"spec": "1M,2M"}, "need 4"),
    ({"spec": "1M,2M,3M,4M", "growth": 2.0}, "growth"),
    ({"spec": "8M", "growth": 1.0}, "growth"),
    ({"spec": "8M", "stages": 0}, "stages"),
    ({"spec": "8M", "stages": 4}, "stages"),
    ({"spec": "1M,-2M,3M,4M"}, "'-2M'"),
])
def test_stage_targets_bad_inputs(kwargs, needle):
    with pytest.raises(ScalenasError, match=needle):
        stage_targets(load_space("digits-tiny"), **kwargs)


@pytest.mark.parametrize("name", ["digits-tiny", "scalenet-mbv3"])
def test_feasible_ranges_bound_random_subnets(name):
    space = load_space(name)
    ranges = feasible_ranges(space)
    assert len(ranges) == space.num_scaling_stages + 1
    rng = random.Random(0)
    for stage, (lo, hi) in enumerate(ranges):
        assert 0 < lo < hi
        for _ in range(150):
            _, sub = sample_subnet(space, rng, stage=stage)
            assert lo <= subnet_flops_params(space, sub)[0] <= hi


def test_check_targets_lists_every_stage():
    space = load_space("digits-tiny")
    check_targets(space, stage_targets(space, "4.5M"), 0.1)  # reachable: no error
    with pytest.raises(ScalenasError) as err:
        check_targets(space, stage_targets(space, "100M"), 0.1)
    msg = str(err.value)
    assert all(f"stage {s}:" in msg for s in range(4)) and "UNREACHABLE" in msg and "feasible" in msg


@pytest.mark.parametrize("tol", [0, 1, 1.5, -0.1, "0.1", True])
def test_tolerance_must_be_in_open_unit_interval(tol):
    with pytest.raises(ScalenasError, match="tolerance"):
        check_tolerance(tol)
    with pytest.raises(ScalenasError, match="tolerance"):
        check_targets(load_space("digits-tiny"), [1_000_000, 2_000_000], tol)
