"""Latency tables (``scalenas latency build``), the predictor, latency targets and bad input, on digits-tiny.

Tables here are tiny on purpose (lazy, one pass, 3 timed calls, 6 calibration networks: well under a second to
build); the numbers are not meant to be accurate, only the machinery (the predictor's accuracy is
jobs/bench/bench_latency.py's job).
"""
from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pytest
from conftest import cli_code

from scalenas.cli.main import main
from scalenas.errors import ScalenasError
from scalenas.latency.layers import network_layers, space_layer_configs, subnet_layers
from scalenas.latency.table import LatencyOptions, LatencyTable, build_table, read_rows
from scalenas.latency.targets import check_latency_targets, latency_stage_targets, parse_latency
from scalenas.search.objectives import LatencyTargets
from scalenas.search.strategies import make_strategy
from scalenas.spaces.arch import derive_subnet, sample_subnet

pytestmark = pytest.mark.usefixtures("torch_threads")

FAST = ["--lazy", "--warmup", "1", "--repeats", "3", "--min-time", "0", "--passes", "1", "--calibration", "6",
        "--no-progress"]
FAST_OPTIONS = LatencyOptions(lazy=True, warmup=1, repeats=3, min_time=0.0, passes=1, calibration=6)


def cli(args: list[str]) -> int:
    return cli_code(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def table_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("latency") / "table.csv"
    assert cli(["latency", "build", "--space", "digits-tiny", "--out", path, *FAST]) == 0
    return path


def lazy_copy(table_path: Path, tmp_path: Path) -> Path:
    """A copy of the module's table for a test that measures on demand (appends): the original stays as built."""
    copy = tmp_path / "lazy.csv"
    copy.write_bytes(table_path.read_bytes())
    return copy


def one_line_error(capfd, needle: str) -> None:
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


# ---------------------------------------------------------------------------------------------- layers
def test_every_searched_layer_is_a_space_config(digits):
    keys = {c.key for c in space_layer_configs(digits)}
    assert len(keys) == 537  # the count docs/method.md gives for digits-tiny (stages 0..3)
    rng = random.Random(0)
    for i in range(40):
        sub = sample_subnet(digits, rng, stage=i % 4)[1]
        layers = subnet_layers(digits, sub)
        assert len(layers) == len(derive_subnet(digits, sub).layers) + 2
        assert {c.key for c in layers} <= keys


def test_max_stage_adds_the_extrapolated_members_layers(digits):
    from scalenas.search.extrapolate import extrapolate

    keys = {c.key for c in space_layer_configs(digits, max_stage=4)}
    chain = [(sc.depth[-1], sc.width[-1], sc.resolution[-1]) for sc in digits.scaling[1:]]
    base = tuple((st.ops[-1],) * st.max_layers for st in digits.stages)
    for m in extrapolate(digits, base, chain, 1):
        from scalenas.spaces.arch import parse_subnet

        sub = parse_subnet(json.loads(m["arch"]), digits, allow_outside=True)
        assert {c.key for c in network_layers(derive_subnet(digits, sub))} <= keys


# ---------------------------------------------------------------------------------------------- build, resume
def test_build_writes_fingerprint_and_predicts(table_path, digits, capsys, tmp_path):
    meta, rows = read_rows(table_path)
    assert meta["space_key"] == digits.content_key and meta["runtime"] == "torch" and meta["threads"] == 1
    assert rows.layers and len(rows.networks) == 6 and not rows.torn
    table_path = lazy_copy(table_path, tmp_path)
    table = LatencyTable.open(table_path, digits, lazy=True)
    sub = sample_subnet(digits, random.Random(3), stage=2)[1]
    ms = table.predict(sub)
    assert 0.01 < ms < 1000
    arch = json.dumps({**json.loads(sub.to_json())})
    assert cli(["latency", "predict", "--table", table_path, "--arch", arch, "--lazy"]) == 0
    assert "predicted" in capsys.readouterr().out


def test_interrupted_build_resumes_and_keeps_its_rows(tmp_path, digits):
    path = tmp_path / "t.csv"
    build_table(digits, path, FAST_OPTIONS, progress=False)
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    # an interrupted build: the last 5 rows lost, the one before torn in the middle of its write
    path.write_text("".join(lines[:-6]) + lines[-6][: len(lines[-6]) // 2])
    with pytest.raises(ScalenasError, match="truncated"):
        LatencyTable.open(path, digits)
    again = build_table(digits, path, FAST_OPTIONS, progress=False)
    assert again.kept == len(lines) - 2 - 6 and again.measured == 6
    meta, rows = read_rows(path)
    assert not rows.torn and len(path.read_text().splitlines()) == len(lines)


def test_onnxruntime_layer_timing(digits):
    pytest.importorskip("onnxruntime")
    from scalenas.latency.table import time_layer

    config = subnet_layers(digits, sample_subnet(digits, random.Random(1), stage=1)[1])[2]
    t = time_layer(config, LatencyOptions(runtime="onnxruntime", warmup=1, repeats=3, min_time=0.0))
    assert t.ms > 0 and t.calls >= 3


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("extra, needle", [
    (["--threads", "999"], "--threads must be an integer from 1 to"),
    (["--threads", "0"], "--threads"),
    (["--runtime", "tvm"], "invalid choice"),
    (["--max-stage", "99"], "--max-stage"),
    (["--batch", "0"], "--batch"),
])
def test_bad_build_flags_one_line_exit_2_nothing_written(tmp_path, capfd, extra, needle):
    out = tmp_path / "t.csv"
    assert cli(["latency", "build", "--space", "digits-tiny", "--out", out, *extra]) == 2
    one_line_error(capfd, needle)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_existing_table_of_another_space_or_settings_is_refused(table_path, tmp_path, capfd):
    before = table_path.read_bytes()
    assert cli(["latency", "build", "--space", "animals-tiny", "--out", table_path, *FAST]) == 2
    one_line_error(capfd, "built for space 'digits-tiny'")
    assert cli(["latency", "build", "--space", "digits-tiny", "--out", table_path, *FAST, "--repeats", "4"]) == 2
    one_line_error(capfd, "repeats 3 (asked 4)")
    assert table_path.read_bytes() == before


@pytest.mark.parametrize("damage, needle", [
    (lambda text: "garbage\n", "not a scalenas latency table"),
    (lambda text: text.replace('"threads": 1', '"threads": "x"', 1), "corrupt latency table"),
    (lambda text: text.replace("\nstem,", "\nstem,stem 1>8>8,1,2,", 1), "corrupt latency table row"),
    (lambda text: text[: len(text) - 7], "truncated"),
])
def test_corrupt_or_truncated_table_is_one_line(table_path, tmp_path, capfd, damage, needle):
    bad = tmp_path / "bad.csv"
    bad.write_text(damage(table_path.read_text()))
    arch = derive_arch()
    assert cli(["latency", "predict", "--table", bad, "--arch", arch]) == 2
    one_line_error(capfd, needle)


def derive_arch(stage: int = 3, seed: int = 7) -> str:
    from scalenas.spaces.space import load_space

    return sample_subnet(load_space("digits-tiny"), random.Random(seed), stage=stage)[1].to_json()


def test_table_of_another_space_device_or_version(table_path, tmp_path, digits, capfd):
    animals = derive_arch().replace('"digits-tiny"', '"animals-tiny"')
    assert cli(["latency", "predict", "--table", table_path, "--arch", animals]) == 2
    one_line_error(capfd, "built for space 'digits-tiny'")
    other = tmp_path / "other.csv"
    other.write_text(table_path.read_text().replace('"runtime_version": "', '"runtime_version": "0.0-other', 1))
    with pytest.raises(ScalenasError, match="runtime_version '0.0-other"):
        LatencyTable.open(other, digits)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        LatencyTable.open(other, digits, allow_other_device=True)
    assert any("another device" in str(w.message) for w in seen)


def test_missing_layer_named_without_lazy_measured_with_it(table_path, digits, tmp_path):
    copy = tmp_path / "copy.csv"
    copy.write_bytes(table_path.read_bytes())
    strict = LatencyTable.open(copy, digits)
    missing = next(s for s in (sample_subnet(digits, random.Random(k), stage=3)[1] for k in range(100))
                   if strict.missing(subnet_layers(digits, s)))
    with pytest.raises(ScalenasError, match="no row for layer '"):
        strict.predict(missing)
    lazy = LatencyTable.open(copy, digits, lazy=True)
    assert lazy.predict(missing) > 0
    assert not LatencyTable.open(copy, digits).missing(subnet_layers(digits, missing))  # appended to the file


@pytest.mark.parametrize("text, needle", [
    ("8", "no unit"), ("8 parsecs", "unknown unit"), ("0ms", "positive"), ("-1ms", "positive"),
    ("infms", "finite"), ("nanms", "finite"), ("fast", "malformed"),
])
def test_bad_latency_targets(text, needle):
    with pytest.raises(ScalenasError, match=needle):
        parse_latency(text)


def test_latency_targets_double_and_unreachable_names_the_range(table_path, digits, tmp_path):
    table_path = lazy_copy(table_path, tmp_path)
    assert parse_latency("0.5s") == 500.0 and parse_latency("250us") == 0.25
    assert latency_stage_targets("8ms", 3, 2.0) == [1.0, 2.0, 4.0, 8.0]
    table = LatencyTable.open(table_path, digits, lazy=True)
    with pytest.raises(ScalenasError, match=r"latency targets unreachable .* feasible .* ms"):
        check_latency_targets(digits, latency_stage_targets("10s", 3, 2.0), 0.1, table.predict)


# ---------------------------------------------------------------------------------------------- search
@pytest.mark.filterwarnings("ignore:.*gave up:RuntimeWarning")
def test_strategy_by_latency_alone_and_with_flops(table_path, digits, tmp_path):
    table_path = lazy_copy(table_path, tmp_path)
    from scalenas.spaces.arch import Subnet, sample_base
    from scalenas.spaces.flops import subnet_flops_params

    table = LatencyTable.open(table_path, digits, lazy=True)
    base = sample_base(digits, random.Random(5))
    family = [Subnet(digits.name, base, sc.depth[len(sc.depth) // 2], sc.width[len(sc.width) // 2],
                     sc.resolution[len(sc.resolution) // 2]) for sc in digits.scaling]
    targets = [table.predict(s) for s in family]  # one family lands on them: reachable
    flops = [subnet_flops_params(digits, s)[0] for s in family]
    opts = {"population": 4, "generations": 1, "elites": 2, "tolerance": 0.3}
    for flops_targets in (None, flops):
        st = make_strategy("random", digits, flops_targets, opts, latency=LatencyTargets(targets, table.predict))
        subnets = st.ask()
        st.tell({s.to_json(): 0.5 for s in subnets})
        fam = st.results.best()["family"]
        assert len(fam) == 4 and all({"target_latency_ms", "latency_ms"} <= set(r) for r in fam)
        assert all((r["target_flops"] is None) == (flops_targets is None) for r in fam)
        assert st.state_dict()["latency_targets"] == targets
    doubled = LatencyTargets([2 * t for t in targets], table.predict)
    other = make_strategy("random", digits, flops, opts, latency=doubled)
    with pytest.raises(ScalenasError, match="latency_targets"):
        other.load_state_dict(st.state_dict())
    with pytest.raises(ScalenasError, match="FLOPs targets, latency targets or both"):
        make_strategy("random", digits, None, opts)


# ---------------------------------------------------------------------------------------------- the CLI, end to end
@pytest.fixture(scope="module")
def random_supernet(tmp_path_factory) -> Path:
    """A digits-tiny supernet checkpoint with random weights (the search only needs something to evaluate)."""
    import torch
    from conftest import randomize_bn

    from scalenas.models.supernet import SuperNet
    from scalenas.spaces.space import load_space
    from scalenas.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    space = load_space("digits-tiny")
    net = SuperNet(space)
    randomize_bn(net)
    path = tmp_path_factory.mktemp("supernet") / "checkpoint.pt"
    save_checkpoint(path, {"space": space.name, "space_yaml": space.raw, "space_path": space.path,
                           "model": net.state_dict()})
    return path


def search_args(ckpt: Path, out: Path, *extra) -> list:
    return ["search", "--supernet", ckpt, "--out", out, "--workers", "0", "--generations", "1", "--population", "2",
            "--elites", "1", "--calib-batches", "1", "--no-progress", *extra]


@pytest.mark.parametrize("extra, needle", [
    ([], "give --target-flops, --target-latency or both"),
    (["--target-latency", "4ms"], "--target-latency needs --latency-table"),
    (["--target-latency", "4", "--latency-table", "t.csv"], "has no unit"),
    (["--target-latency", "4 min", "--latency-table", "t.csv"], "unknown unit"),
    (["--target-latency", "0ms", "--latency-table", "t.csv"], "must be positive"),
    (["--target-latency=-2ms", "--latency-table", "t.csv"], "must be positive"),
    (["--target-latency", "infms", "--latency-table", "t.csv"], "finite"),
    (["--target-latency", "4ms", "--latency-table", "missing.csv"], "latency table not found"),
])
def test_search_bad_latency_input(random_supernet, tmp_path, capfd, extra, needle):
    out = tmp_path / "s"
    assert cli(search_args(random_supernet, out, *extra)) == 2
    one_line_error(capfd, needle)
    assert not out.exists()


def test_search_names_a_layer_the_table_lacks(random_supernet, table_path, tmp_path, capfd):
    out = tmp_path / "s"
    assert cli(search_args(random_supernet, out, "--target-latency", "4ms", "--latency-table", table_path)) == 2
    one_line_error(capfd, "no row for layer '")
    assert not out.exists()


@pytest.mark.slow
def test_search_extrapolate_report_by_latency(random_supernet, table_path, tmp_path, capsys):
    """search --target-latency (lazy table) → family.csv with predicted latency → extrapolate by latency → report
    --measure-latency. Doubling latency is out of reach in digits-tiny at batch 1 (a network's fixed cost
    dominates), so the stages grow by 1.25."""
    import pandas as pd

    table = lazy_copy(table_path, tmp_path)
    out = tmp_path / "s"
    assert cli(search_args(random_supernet, out, "--target-latency", "4ms", "--growth", "1.25", "--latency-table",
                           table, "--lazy-latency")) == 0
    fam = pd.read_csv(out / "family.csv")
    assert fam["target_latency_ms"].tolist() == pytest.approx([4 * 1.25 ** (s - 3) for s in range(4)])
    assert fam["latency_ms"].gt(0).all() and fam["target_flops"].isna().all()
    assert "latency_ms" in pd.read_csv(out / "pareto.csv").columns
    assert cli(["extrapolate", "--run", out, "--steps", "1"]) == 0
    fam = pd.read_csv(out / "family.csv")
    last = fam[fam["kind"] == "extrapolated"].iloc[0]
    assert last["target_latency_ms"] == pytest.approx(1.25 * fam[fam["stage"] == 3]["latency_ms"].iloc[0])
    capsys.readouterr()
    assert cli(["report", out, "--no-plots", "--format", "csv", "--measure-latency"]) == 0
    import io

    rep = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(rep.columns[4:6]) == ["latency_ms", "measured_ms"] and rep["measured_ms"].gt(0).all()
