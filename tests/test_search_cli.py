"""``scalenas search`` end to end on a tiny, really trained digits-tiny supernet.

One supernet is trained once per session (6 steps) and one reference search is run once; the other tests
compare against its reports. Every torch workload runs with one thread (see conftest.torch_threads). Every
test that starts Ray leaves it shut down (checked by ``_no_ray_left``).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import cli_code

from scalenas.cli.main import main
from scalenas.report.search_report import FAMILY_COLUMNS, LOG_COLUMNS, PARETO_COLUMNS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_threads", "no_ray_left")]

TARGET = "4M"  # digits-tiny, 3 scaling stages: targets 0.5M, 1M, 2M, 4M, all inside their feasible ranges
REPORTS = ("pareto.csv", "family.csv", "chain.json", "best.json", "search_log.csv", "pareto.png", "state.json",
           "search_config.json")


def search_args(run: Path, *extra: str, workers: str = "0", generations: str = "2",
                population: str = "4") -> list[str]:
    return ["search", "--run", str(run), "--target-flops", TARGET, "--generations", generations,
            "--population", population, "--elites", "2", "--workers", workers, "--calib-batches", "1",
            "--no-progress", *extra]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    from scalenas.train.config import load_job
    from scalenas.train.supernet import train_supernet

    cfg = load_job("digits", {"steps": 6, "batch_size": 32})
    cfg.panel_random = 0
    cfg.bn_calib_batches = 1
    cfg.threads = 1
    run = tmp_path_factory.mktemp("digits_run")
    train_supernet(cfg, run, progress=False)
    assert (run / "checkpoint.pt").is_file()
    return run


@pytest.fixture(scope="session")
def reference(trained_run, tmp_path_factory) -> Path:
    """The reference search (in-process, default output folder RUN/search), copied aside so that later tests
    may overwrite RUN/search."""
    assert main(search_args(trained_run)) == 0
    ref = tmp_path_factory.mktemp("ref") / "search"
    shutil.copytree(trained_run / "search", ref)
    return ref


def cli(args: list[str]) -> int:
    return cli_code(main, args)


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------- reports
def test_every_report_written_and_parses(reference):
    for name in REPORTS:
        assert (reference / name).is_file() and (reference / name).stat().st_size > 0, name
    assert (reference / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    pareto = pd.read_csv(reference / "pareto.csv")
    assert list(pareto.columns) == PARETO_COLUMNS
    assert len(pareto) > 0 and pareto["top1"].between(0, 1).all()
    assert set(pareto["stage"]) == {0, 1, 2, 3}
    assert set(pareto["generation"]) == {0, 1}
    assert pareto["is_pareto"].any()
    family = pd.read_csv(reference / "family.csv")
    assert list(family.columns) == FAMILY_COLUMNS
    assert list(family["stage"]) == [0, 1, 2, 3] and (family["kind"] == "searched").all()
    assert list(family["target_flops"]) == [500_000, 1_000_000, 2_000_000, 4_000_000]
    log = pd.read_csv(reference / "search_log.csv")
    assert list(log.columns) == LOG_COLUMNS
    assert list(log["generation"]) == [0, 1] and log["evaluations"].is_monotonic_increasing
    # Unique evaluations, keyed by the BUILT network (two (d, w, r) may build the same one): none twice.
    from scalenas.spaces.arch import parse_subnet
    from scalenas.search.strategy import built_key
    from scalenas.spaces.space import load_space

    space = load_space("digits-tiny")
    built = {built_key(space, parse_subnet(json.loads(a), space)) for a in pareto["arch"]}
    assert log["evaluations"].iloc[-1] == len(built) <= pareto["arch"].nunique()

    best = _read(reference / "best.json")
    assert best["strategy"] == "markov" and best["targets"] == list(family["target_flops"])
    assert len(best["chain"]) == 3 and len(best["family"]) == 4
    stage_w = [0.0, 1.0, 1.0, 1.0]
    expect = sum(w * r["top1"] for w, r in zip(stage_w, best["family"])) / sum(stage_w)
    assert best["fitness"] == pytest.approx(expect)
    assert best["fitness"] == pytest.approx(log["best_fitness"].iloc[-1])
    chain = _read(reference / "chain.json")
    assert chain["matrices"] is not None and len(chain["chain"]) == 3
    config = _read(reference / "search_config.json")
    assert config["workers"] == 0 and config["options"]["generations"] == 2 and config["calib_batches"] == 1
    state = _read(reference / "state.json")
    assert state["done"] and state["generation"] == 2


def test_second_run_numbered_and_force_overwrites(trained_run, reference):
    run = trained_run
    small = dict(generations="1", population="2")
    assert main(search_args(run, **small)) == 0  # RUN/search holds a search: this one goes to search-2
    assert (run / "search-2" / "state.json").is_file()
    assert (run / "search" / "state.json").read_bytes() == (reference / "state.json").read_bytes()
    assert _read(run / "search-2" / "search_config.json")["options"]["population"] == 2

    assert main(search_args(run, "--force", **small)) == 0  # overwrites RUN/search
    assert not (run / "search-3").exists()
    assert _read(run / "search" / "search_config.json")["options"]["population"] == 2
    state = _read(run / "search" / "state.json")
    assert state["options"]["population"] == 2 and state["generation"] == 1
    assert set(pd.read_csv(run / "search" / "pareto.csv")["generation"]) == {0}

    # --out holding a finished search: refused without --force (one line, exit 2)
    out = run / "search-2"
    assert main(search_args(run, "--out", str(out), **small)) == 2


# ---------------------------------------------------------------------------------------------- Ray
@pytest.mark.ray
def test_one_ray_worker_gives_the_inprocess_results(trained_run, reference, tmp_path):
    ray = pytest.importorskip("ray")
    out = tmp_path / "ray1"
    assert main(search_args(trained_run, "--out", str(out), workers="1")) == 0
    assert not ray.is_initialized()  # the pool started Ray and shut it down
    mine, ref = pd.read_csv(out / "pareto.csv"), pd.read_csv(reference / "pareto.csv")
    assert list(mine["arch"]) == list(ref["arch"])
    assert mine["top1"].tolist() == ref["top1"].tolist()  # bit-identical: fitness does not depend on N
    assert _read(out / "best.json") == _read(reference / "best.json")
    assert _read(out / "search_config.json")["workers"] == 1


# ---------------------------------------------------------------------------------------------- resume
def test_resume_after_interrupt_equals_uninterrupted(trained_run, reference, tmp_path, monkeypatch, capsys):
    from scalenas.search.fitness import SupernetEvaluator

    log = pd.read_csv(reference / "search_log.csv")
    after_gen0 = int(log["evaluations"].iloc[0])
    in_gen1 = int(log["evaluations"].iloc[1]) - after_gen0
    assert in_gen1 >= 1
    stop_at = after_gen0 + min(2, in_gen1)  # interrupt inside generation 1
    calls = {"n": 0}
    original = SupernetEvaluator.evaluate

    def interrupting(self, item):
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise KeyboardInterrupt
        return original(self, item)

    out = tmp_path / "resumed"
    monkeypatch.setattr(SupernetEvaluator, "evaluate", interrupting)
    assert main(search_args(trained_run, "--out", str(out))) == 130
    assert "interrupted" in capsys.readouterr().err
    state = _read(out / "state.json")
    assert state["generation"] == 1 and not state["done"] and state["evaluations"] == after_gen0
    monkeypatch.setattr(SupernetEvaluator, "evaluate", original)

    # The saved options win on resume: a different --generations is ignored (and recorded as the saved one).
    with pytest.warns(RuntimeWarning, match="saved search options"):
        assert main(search_args(trained_run, "--out", str(out), "--resume", generations="5")) == 0
    assert _read(out / "best.json") == _read(reference / "best.json")
    assert pd.read_csv(out / "pareto.csv").equals(pd.read_csv(reference / "pareto.csv"))
    assert _read(out / "search_config.json")["options"]["generations"] == 2
    state = _read(out / "state.json")
    assert state["done"] and state["generation"] == 2 and state["evaluations"] == int(log["evaluations"].iloc[1])


# ---------------------------------------------------------------------------------------------- bad inputs
@pytest.fixture(scope="session")
def broken_runs(trained_run, tmp_path_factory) -> dict[str, Path]:
    """Run folders with: no checkpoint, a corrupt file, a non-scalenas file, weights that do not fit."""
    from scalenas.train.checkpoint import read_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("broken")
    runs = {name: root / name for name in ("empty", "corrupt", "foreign", "mismatch")}
    for p in runs.values():
        p.mkdir()
    good = (trained_run / "checkpoint.pt").read_bytes()
    (runs["corrupt"] / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    torch.save({"model": {}}, runs["foreign"] / "checkpoint.pt")
    payload = read_checkpoint(trained_run / "checkpoint.pt")
    key = next(k for k, v in payload["model"].items() if v.ndim == 4)
    payload["model"][key] = torch.zeros(1, 1, 1, 1)
    save_checkpoint(runs["mismatch"] / "checkpoint.pt", payload)
    return runs


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


BAD = [
    ("target 2X", lambda r, b: _replace(search_args(r), "--target-flops", "2X"), "malformed"),
    ("target abc", lambda r, b: _replace(search_args(r), "--target-flops", "abc"), "malformed"),
    ("target =-1G", lambda r, b: [a for a in search_args(r) if a not in ("--target-flops", TARGET)]
     + ["--target-flops=-1G"], "positive"),
    ("target -1G", lambda r, b: _replace(search_args(r), "--target-flops", "-1G"), "--target-flops"),
    ("tolerance 0", lambda r, b: search_args(r, "--flops-tolerance", "0"), "tolerance"),
    ("tolerance 1.5", lambda r, b: search_args(r, "--flops-tolerance", "1.5"), "tolerance"),
    ("infeasible 1T", lambda r, b: _replace(search_args(r), "--target-flops", "1T"), "feasible"),
    ("missing run", lambda r, b: search_args(r.parent / "no-such-run"), "not a directory"),
    ("no checkpoint", lambda r, b: search_args(b["empty"]), "not found"),
    ("corrupt checkpoint", lambda r, b: search_args(b["corrupt"]), "corrupt"),
    ("foreign checkpoint", lambda r, b: search_args(b["foreign"]), "not a scalenas supernet checkpoint"),
    ("mismatched checkpoint", lambda r, b: search_args(b["mismatch"]), "do not fit"),
    ("unknown strategy", lambda r, b: search_args(r, "--strategy", "genetic"), "invalid choice"),
    ("negative workers", lambda r, b: search_args(r, workers="-1"), "--workers"),
    ("resume nothing", lambda r, b: search_args(r, "--resume", "--out", str(r / "nothing-here")), "cannot resume"),
]


@pytest.mark.parametrize("case,make,needle", BAD, ids=[c[0] for c in BAD])
def test_bad_input_one_line_exit_2(case, make, needle, trained_run, broken_runs, capfd):
    before = sorted(p.name for p in trained_run.iterdir())
    args = make(trained_run, broken_runs)
    assert cli(args) == 2
    err = capfd.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert needle in err
    assert sorted(p.name for p in trained_run.iterdir()) == before  # nothing created in the run folder
    for p in broken_runs.values():
        assert sorted(x.name for x in p.iterdir()) in ([], ["checkpoint.pt"])


def test_infeasible_target_names_every_stage_range(trained_run, capfd):
    assert main(_replace(search_args(trained_run), "--target-flops", "1T")) == 2
    err = capfd.readouterr().err.strip()
    assert "\n" not in err
    assert "unreachable" in err.lower()
    for s in range(4):
        assert f"stage {s}: target" in err
    assert err.count("feasible ") == 4  # each stage's feasible range, e.g. "feasible 289K..1.11M"


def test_unreachable_ray_address_fails_fast(trained_run, tmp_path, capfd):
    pytest.importorskip("ray")
    out = tmp_path / "never"
    t0 = time.perf_counter()
    rc = main(search_args(trained_run, "--ray-address", "127.0.0.1:1", "--out", str(out), workers="1"))
    elapsed = time.perf_counter() - t0
    err = capfd.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cannot reach Ray cluster at 127.0.0.1:1" in err, err
    assert elapsed < 15
    assert not out.exists()  # nothing written before the pool is up
