"""The prepared GPU check (jobs/bench/gpu_check.sh / gpu_check.py): its CPU dry mode runs every check end to end
and writes one CSV with a non-failed row per check; the wrapper is valid bash."""
from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "jobs/bench/gpu_check.py"
WRAPPER = REPO / "jobs/bench/gpu_check.sh"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # stdlib imports only at module level: cheap
    return mod


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_wrapper_is_valid_bash_and_reaches_the_script(tmp_path):
    assert subprocess.run(["bash", "-n", str(WRAPPER)], check=False, capture_output=True).returncode == 0
    proc = subprocess.run(["bash", str(WRAPPER), "--help"], check=False, cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=60)  # from another folder: the wrapper cds to the repo itself
    assert proc.returncode == 0, proc.stderr
    assert "--dry" in proc.stdout and "--timeout" in proc.stdout


def test_dry_never_writes_the_gpu_record():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry", "--out", "results/bench/gpu.csv"], check=False, cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "gpu.csv" in proc.stderr
    mod = _module()
    assert mod.DEFAULT_DRY_OUT != mod.DEFAULT_OUT and mod.DEFAULT_DRY_OUT.name == "gpu_dry.csv"


def test_helpers():
    mod = _module()
    # windows of 10 steps at batch 8: the first (warm-up) is left out; 20 steps in 10 s + 10 s
    rows = [{"step": 10, "images_per_s": 1.0}, {"step": 20, "images_per_s": 8.0}, {"step": 30, "images_per_s": 8.0}]
    sps, n = mod.steady_steps_per_s(rows, batch=8, world=1)
    assert n == 20 and sps == pytest.approx(1.0)
    assert mod.steady_steps_per_s(rows[:1], batch=8, world=1) == (pytest.approx(1 / 8), 10)
    text = "Traceback\n  File x\nValueError: bad thing\n=========\nchild exit\n"
    assert mod.error_line(text) == "ValueError: bad thing"
    assert mod.error_line("") == "no output"


@pytest.mark.slow
@pytest.mark.ray
def test_dry_run_records_every_check(tmp_path):
    out = tmp_path / "gpu.csv"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry", "--out", str(out)], check=False, cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    mod = _module()
    assert list(rows[0]) == list(mod.COLUMNS)
    by_check: dict[str, list[dict]] = {}
    for r in rows:
        by_check.setdefault(r["check"], []).append(r)
    assert set(by_check) == set(mod.CHECKS)
    assert all(line.startswith(f"[{i}/{len(mod.CHECKS)}]") for i, line in
               enumerate((ln for ln in proc.stdout.splitlines() if ln.startswith("[")), 1))
    for r in rows:
        assert r["status"] != "failed", r
        assert r["device"] == "cpu"
        if r["status"] == "ok":
            assert math.isfinite(float(r["value"])), r

    def value(check: str, metric: str) -> float:
        return float(next(r["value"] for r in by_check[check] if r["metric"] == metric))

    assert value("train_bf16", "steps_per_s") > 0
    assert math.isfinite(value("train_bf16", "final_loss"))
    assert 0 <= value("export", "max_abs_diff") <= mod.EXPORT_TOL
    assert 0 <= value("export", "max_abs_diff_random_bn") <= mod.EXPORT_TOL
    assert by_check["ray"][0]["status"] == "ok" and value("ray", "search_seconds") > 0
    assert "ran on cpu" in next(r["detail"] for r in by_check["ray"] if r["metric"] == "probe_eval_seconds")
    speeds = [r for r in by_check["throughput"] if r["unit"] == "images/s"]
    assert len(speeds) == 1 + 3 * 2 * 3 and all(float(r["value"]) > 0 for r in speeds)
    diffs = [float(r["value"]) for r in by_check["throughput"] if r["metric"].startswith("max_abs_diff_fp32")]
    assert len(diffs) == 3 and all(0 <= d <= mod.EXPORT_TOL for d in diffs)  # logits are O(1) here
    for check in ("train_fp16", "ddp"):  # CPU stand-ins only with --full-dry; skipped, not failed
        assert by_check[check][0]["status"] == "skipped (dry)"
    assert not list(tmp_path.glob(".*.tmp"))  # the CSV was replaced atomically, no temp left


def test_conv_backend_script_refuses_an_unknown_variant_and_summarises_a_log(tmp_path):
    script = REPO / "jobs/bench/gpu_conv_backend.py"
    proc = subprocess.run([sys.executable, str(script), "--variants", "cudnn,turbo", "--device", "cpu",
                           "--out", str(tmp_path / "x.csv")], check=False, cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "turbo" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()
    spec = importlib.util.spec_from_file_location("gpu_conv_backend", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "train_log.csv").write_text("step,images_per_s\n5,10.0\n10,40.0\n15,40.0\n")
    done, sps, ips = mod.summarise(tmp_path, batch=8)  # the first window is left out: 10 steps at 5 steps/s
    assert done == 15 and sps == pytest.approx(5.0) and ips == pytest.approx(40.0)
    assert mod.summarise(tmp_path / "missing", batch=8)[0] == 0
