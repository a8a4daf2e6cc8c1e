"""``jobs/family_evidence.py`` and ``jobs/bench/bench_search.py`` end to end at toy sizes (digits, digits-tiny).

One supernet (20 steps) is trained per module; the family evidence runs its whole pipeline on it (1-generation
markov / compound / random searches in-process, 2 extrapolated members, 5-step trainings, 1 seed), then again
from the markov search folder (everything cached), and refuses a search without extrapolated members in one
line with exit code 2. The search benchmark runs every strategy for 2 seeds on a budget of 8 evaluations.
No Ray (``--workers 0``); one torch thread.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

# the jobs run with --workers 0: no Ray
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_threads", "no_ray_left")]

ROOT = Path(__file__).resolve().parents[1]
FAMILY_COLUMNS = {"strategy", "stage", "seed", "extrapolated", "flops", "params", "test_top1", "holdout_top1"}


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def supernet(tmp_path_factory) -> Path:
    from scalenas.train.config import load_job
    from scalenas.train.supernet import train_supernet

    # small holdout/test splits (~140 images each): evaluation dominates these toy trainings and searches
    cfg = load_job("digits", {"steps": 20, "batch_size": 32, "threads": 1, "holdout_frac": 0.08, "test_frac": 0.08})
    cfg.panel_random = 0
    cfg.bn_calib_batches = 1
    run = tmp_path_factory.mktemp("fe_supernet")
    train_supernet(cfg, run, progress=False)
    return run / "checkpoint.pt"


@pytest.fixture(scope="module")
def family_job():
    return _load(ROOT / "jobs" / "family_evidence.py", "family_evidence_job")


@pytest.fixture(scope="module")
def pipeline(supernet, family_job, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fe")
    out, csv, md = tmp / "cache", tmp / "family.csv", tmp / "family.md"
    argv = ["--supernet", str(supernet), "--out", str(out), "--target-flops", "3M", "--population", "2",
            "--generations", "1", "--elites", "1", "--calib-batches", "1", "--workers", "0", "--steps", "5",
            "--batch-size", "16", "--seeds", "0", "--csv", str(csv), "--md", str(md)]
    assert family_job.main(argv) == 0
    return {"out": out, "csv": csv, "md": md, "argv": argv, "tmp": tmp}


def test_pipeline_writes_both_files(pipeline):
    frame = pd.read_csv(pipeline["csv"])
    assert FAMILY_COLUMNS <= set(frame.columns)
    assert set(frame["strategy"]) == {"markov", "compound", "random"}
    for strat, g in frame.groupby("strategy"):
        assert sorted(g["stage"]) == [0, 1, 2, 3, 4, 5], strat  # S = 3 searched + 2 extrapolated
        assert g.set_index("stage")["extrapolated"].to_dict() == {0: False, 1: False, 2: False, 3: False,
                                                                  4: True, 5: True}
        assert g["flops"].is_monotonic_increasing
    assert frame["test_top1"].between(0, 1).all() and frame["holdout_top1"].between(0, 1).all()
    # the extended members sit at the markov members' FLOPs (within the default 10 % tolerance)
    ext = frame[frame["extrapolated"]].pivot_table(index="stage", columns="strategy", values="flops")
    assert ((ext["compound"] / ext["markov"] - 1).abs() < 0.1).all()
    text = pipeline["md"].read_text()
    for needle in ("markov − compound", "markov − random", "## Target", "python jobs/family_evidence.py --supernet",
                   "smoke run", "extrapolated"):
        assert needle in text, needle


def test_search_mode_reuses_the_cache(pipeline, family_job, capsys):
    csv, md = pipeline["tmp"] / "again.csv", pipeline["tmp"] / "again.md"
    argv = ["--search", str(pipeline["out"] / "search-markov"), "--out", str(pipeline["out"]), "--steps", "5",
            "--batch-size", "16", "--seeds", "0", "--csv", str(csv), "--md", str(md)]
    assert family_job.main(argv) == 0
    printed = capsys.readouterr().out
    assert "reusing the finished one" in printed and "(cached)" in printed
    first, again = pd.read_csv(pipeline["csv"]), pd.read_csv(csv)
    assert first["test_top1"].tolist() == again["test_top1"].tolist()


def test_search_without_extrapolated_members_exits_2(pipeline, family_job, capsys, tmp_path):
    folder = tmp_path / "search"
    shutil.copytree(pipeline["out"] / "search-markov", folder)
    fam = pd.read_csv(folder / "family.csv")
    fam[fam["kind"] != "extrapolated"].to_csv(folder / "family.csv", index=False)
    out = tmp_path / "cache"
    assert family_job.main(["--search", str(folder), "--out", str(out), "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no extrapolated members" in err and "scalenas extrapolate" in err
    assert not out.exists()  # nothing written


def test_a_search_with_other_options_is_refused_not_reused(pipeline, family_job, capsys):
    # the pipeline's searches ran under the default stage weights: asking for others (or another population)
    # with the same --out must not pick up the old family; the weights name their own folders
    assert family_job.search_folder("markov", [0.0, 1.0, 1.0, 1.0], 3) == "search-markov"
    assert family_job.search_folder("markov", [1.0, 1.0, 1.0, 1.0], 3) == "search-markov-w1-1-1-1"
    argv = pipeline["argv"]
    other = argv[:argv.index("--population") + 1] + ["3"] + argv[argv.index("--population") + 2:]
    assert family_job.main(other) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "search-markov holds a markov search with other population" in err
    assert family_job.main(argv + ["--stage-weights", "1,x"]) == 2
    assert "--stage-weights '1,x'" in capsys.readouterr().err


def test_bench_search_tiny(supernet, tmp_path):
    bench = _load(ROOT / "jobs" / "bench" / "bench_search.py", "bench_search_job")
    csv, md = tmp_path / "search.csv", tmp_path / "search.md"
    bench.main(["--supernet", str(supernet), "--seeds", "2", "--budget", "8", "--population", "4",
                "--elites", "2", "--calib-batches", "1", "--target-flops", "3M", "--csv", str(csv),
                "--md", str(md)])
    frame = pd.read_csv(csv)
    from scalenas.search.strategies import strategy_names

    assert set(frame["strategy"]) == set(strategy_names()) and sorted(set(frame["seed"])) == [0, 1]
    assert {"evals_to_reach_alternate", "evals_ratio_vs_alternate", "seconds_per_evaluation"} <= set(frame.columns)
    alt = frame[frame["strategy"] == "alternate"]
    assert (alt["evals_ratio_vs_alternate"] == 1.0).all()  # alternate reaches its own final at its own count
    curves = pd.read_csv(tmp_path / "search_curves.csv")
    assert {"strategy", "seed", "evaluations", "fitness"} <= set(curves.columns) and len(curves) >= len(frame)
    text = md.read_text()
    assert "python jobs/bench/bench_search.py --supernet" in text and "1/2.53" in text
    assert "markov >= random in" in text and "markov >= compound in" in text


def test_sigterm_stops_the_worker_pool(pipeline, tmp_path):
    """``kill PID`` of the script (not only Ctrl-C, which reaches the whole process group) stops its training
    workers: each saves its checkpoint and exits, the script exits 130, no process is left behind."""
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "cache"
    # every search is cached (the pipeline's), so the script goes straight to the trainings
    shutil.copytree(pipeline["out"], out, ignore=lambda d, names: ["train"] if Path(d) == pipeline["out"] else [])
    cmd = [sys.executable, str(ROOT / "jobs" / "family_evidence.py"), "--search", str(out / "search-markov"),
           "--out", str(out), "--steps", "400", "--batch-size", "16", "--seeds", "0", "--jobs", "2",
           "--csv", str(tmp_path / "f.csv"), "--md", str(tmp_path / "f.md")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    train = out / "train"
    deadline = time.monotonic() + 240
    # wait until two trainings have started (their first checkpoint: every max(50, steps // 4) = 100 steps; 18
    # trainings of 400 steps queue behind them, so the pool is still busy when the signal comes)
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(train.glob("*/train_checkpoint.pt"))) >= 2 or len(list(train.glob("*/train_log.csv"))) >= 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stdout.read()
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert children, "no worker processes"
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text
    assert "interrupted (rerun the same command to resume)" in text

    def alive() -> list[str]:
        return [c for c in children if subprocess.run(["kill", "-0", c], capture_output=True).returncode == 0]

    end = time.monotonic() + 20  # the resource tracker leaves a moment after the workers
    while alive() and time.monotonic() < end:
        time.sleep(0.5)
    left = {c: Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ")[:120] for c in alive()
            if Path(f"/proc/{c}/cmdline").exists()}
    assert not left, f"processes left behind: {left}"
    assert not (tmp_path / "f.csv").exists()


def test_equivalent_multipliers_share_one_training_folder(tmp_path):
    """Two arch JSONs that build the same network (depth 1.2 and 1.36 give 3 layers from 2) train once."""
    from scalenas.spaces.space import load_space

    fe = _load(ROOT / "jobs" / "family_evidence.py", "family_evidence_cache_key")
    space = load_space("animals-tiny")
    base = [["ir_k7"], ["ir_k7", "ir_k7"], ["ir_k7", "ir_k7"], ["ir_k7"]]
    rows = [{"arch": {"space": space.name, "base": base, "depth": d, "width": w, "resolution": 22}}
            for d, w in ((1.2, 1.28), (1.36, 1.28), (1.52, 1.28))]
    a, b, c = (fe._member(2, r, False, space) for r in rows)
    assert a["arch"] != b["arch"] and a["net"] == b["net"] != c["net"]
    recipe = {"steps": 5, "batch_size": 8}
    assert fe.task_dir(tmp_path, a["net"], recipe, "animals", 0) == fe.task_dir(tmp_path, b["net"], recipe, "animals", 0)
    assert fe.task_dir(tmp_path, a["net"], recipe, "animals", 0) != fe.task_dir(tmp_path, c["net"], recipe, "animals", 0)
    assert fe.task_dir(tmp_path, a["net"], recipe, "animals", 0) != fe.task_dir(tmp_path, a["net"], recipe, "animals", 1)


def test_search_cost_noise_recomputes_the_bench_ratio_and_relaxes_it(tmp_path):
    """w = 0 is bench_search's own reach rule; a width lowers one threshold for both strategies; bad input is one
    clear line with exit code 2."""
    mod = _load(ROOT / "jobs" / "bench" / "search_cost_noise.py", "search_cost_noise_job")
    rows = [("alternate", 0, 40, 0.90), ("alternate", 0, 80, 0.92), ("alternate", 0, 100, 0.93),
            ("markov", 0, 30, 0.915), ("markov", 0, 60, 0.925), ("markov", 0, 100, 0.928),
            ("alternate", 1, 50, 0.95), ("markov", 1, 20, 0.951)]
    curves = tmp_path / "curves.csv"
    pd.DataFrame([{"strategy": s, "seed": d, "generation": i, "evaluations": e, "fitness": f, "feasible": True}
                  for i, (s, d, e, f) in enumerate(rows)]).to_csv(curves, index=False)
    out = tmp_path / "noise"
    assert mod.main(["--curves", str(curves), "--widths", "0,0.005,0.03", "--holdout-size", "1000",
                     "--out", str(out)]) == 0
    table = pd.read_csv(out.with_suffix(".csv"))
    s0 = table[table["seed"] == 0].set_index("width")
    assert s0.loc[0.0, "ratio"] == float("inf")  # markov never reaches 0.93
    assert s0.loc[0.005, "alternate_evals"] == 100 and s0.loc[0.005, "markov_evals"] == 60  # level 0.925
    assert s0.loc[0.005, "ratio"] == pytest.approx(0.6)
    assert s0.loc[0.03, "ratio"] == pytest.approx(30 / 40)  # level 0.90: both at their first generation
    assert table[table["seed"] == 1].set_index("width").loc[0.0, "ratio"] == pytest.approx(20 / 50)
    text = out.with_suffix(".md").read_text()
    assert "| curves.csv | 0 | 2 | 0/2 | inf 0.400 | inf |" in text and "binomial standard error" in text
    with pytest.raises(SystemExit) as e:
        mod.main(["--curves", str(tmp_path / "none.csv"), "--out", str(out)])
    assert e.value.code == 2


def test_earlier_rows_add_seeds_without_retraining_and_refuse_other_families(pipeline, family_job, capsys):
    """--earlier-rows: seed 0 comes from the pipeline's CSV (its training folders are gone, so it cannot have
    been retrained), seed 1 is trained; a CSV of other networks, steps or seeds is refused with one line."""
    tmp = pipeline["tmp"]
    earlier = pd.read_csv(pipeline["csv"])
    earlier["run_dir"] = "/nowhere"
    earlier.to_csv(tmp / "earlier.csv", index=False)
    base = ["--search", str(pipeline["out"] / "search-markov"), "--out", str(pipeline["out"]), "--steps", "5",
            "--batch-size", "16"]
    csv, md = tmp / "merged.csv", tmp / "merged.md"
    assert family_job.main(base + ["--seeds", "1", "--earlier-rows", str(tmp / "earlier.csv"), "--csv", str(csv),
                                   "--md", str(md)]) == 0
    merged = pd.read_csv(csv)
    assert sorted(merged["seed"].unique()) == [0, 1] and len(merged) == 2 * len(earlier)
    old = merged[merged["seed"] == 0].reset_index(drop=True)
    assert old["test_top1"].tolist() == earlier["test_top1"].tolist() and (old["run_dir"] == "/nowhere").all()
    assert "training seeds 0, 1" in md.read_text() and "earlier rows" in md.read_text()
    capsys.readouterr()

    def refused(frame, *extra) -> str:
        frame.to_csv(tmp / "bad.csv", index=False)
        assert family_job.main(base + ["--seeds", "1", "--earlier-rows", str(tmp / "bad.csv"), *extra,
                                       "--csv", str(tmp / "no.csv"), "--md", str(tmp / "no.md")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--earlier-rows" in err
        assert not (tmp / "no.csv").exists()
        return err

    other = earlier.copy()
    other.loc[0, "arch"] = earlier.loc[len(earlier) - 1, "arch"]
    assert "another network" in refused(other)
    assert "each seed is trained once" in refused(earlier.assign(seed=1))
    assert "steps" in refused(earlier.assign(steps=7))
    assert "missing column" in refused(earlier.drop(columns=["arch"]))
    assert family_job.main(base + ["--seeds", "1", "--earlier-rows", str(tmp / "missing.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
