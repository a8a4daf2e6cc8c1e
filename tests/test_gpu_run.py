"""The prepared GPU run (jobs/bench/gpu_run.sh / gpu_run.py): its CPU dry mode runs every phase end to end and
writes each phase's CSV; bad input (no CUDA, a budget too small, a missing dependency, an unknown phase) is one
line and exit code 2 with nothing run."""
from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "jobs/bench/gpu_run.py"
WRAPPER = REPO / "jobs/bench/gpu_run.sh"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_run", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # stdlib (and gpu_check's stdlib) imports only at module level: cheap
    return mod


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_wrapper_is_valid_bash_and_reaches_the_script(tmp_path):
    assert subprocess.run(["bash", "-n", str(WRAPPER)], check=False).returncode == 0
    proc = subprocess.run(["bash", str(WRAPPER), "--help"], check=False, cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=60)  # from another folder: the wrapper cds itself
    assert proc.returncode == 0, proc.stderr
    assert "--budget" in proc.stdout and "--dry" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda_and_runs_nothing(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out-dir", str(tmp_path / "out"), "--work",
                           str(tmp_path / "work")], check=False, cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no CUDA device" in proc.stderr and "--dry" in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    mod = _module()
    out = tmp_path / "out"
    assert mod.main(["--dry", "--budget", "5", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "too small for phase a" in err and len(err.strip().splitlines()) == 1
    assert mod.main(["--dry", "--phases", "a,x", "--out-dir", str(out)]) == 2
    assert "unknown x" in capsys.readouterr().err
    mod.REQUIRED = {**mod.REQUIRED, "scalenas_no_such_module": "no-such-package"}  # a dependency that is not there
    assert mod.main(["--dry", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "missing dependencies: no-such-package" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_profile_categories_and_summary():
    mod = _module()
    cat = mod._category
    assert cat("sm90_xmma_fprop_implicit_gemm_bf16f32", False) == "convolution"  # cuDNN convolutions are GEMMs too
    assert cat("void at::native::conv_depthwise2d_forward_kernel<float>", False) == "depthwise"
    assert cat("ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_tn", False) == "matmul"
    assert cat("void cudnn::bn_fw_tr_1C11_kernel_NCHW<float>", False) == "batch_norm"
    assert cat("aten::addmm", False) == "matmul" and cat("elementwise_kernel", False) == "other"
    assert cat("ampere_sgemm_64x64_nn", True) == "optimiser"
    rows = [{"phase": "speed", "check": "x[gemm]", "status": "ok", "metric": "steps_per_s", "value": 12.5,
             "unit": "steps/s"},
            {"phase": "speed", "check": "y", "status": "failed", "metric": "error", "value": math.nan, "unit": ""}]
    text = mod.summary_text(rows, 3.0, Path("out"))
    assert "x[gemm]" in text and "steps_per_s=12.5" in text and "failed: speed/y" in text


@pytest.mark.slow
def test_dry_run_writes_every_phase_csv(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(WRAPPER), "--dry", "--out-dir", str(out), "--work", str(work)], check=False,
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert wall < 120, wall  # ~35 s on 2 idle cores (the bound is 60 s; a shared machine gets slack)
    mod = _module()
    rows = _rows(out / "gpu_run.csv")
    assert list(rows[0]) == list(mod.COLUMNS)
    by_phase: dict[str, list[dict]] = {}
    for r in rows:
        by_phase.setdefault(r["phase"], []).append(r)
        assert r["status"] != "failed", r
        assert r["device"] == "cpu"
    assert set(by_phase) == set(mod.NAMES.values())
    for phase, name in mod.NAMES.items():  # each phase's own CSV holds exactly its rows
        assert _rows(out / f"gpu_run_{name}.csv") == by_phase[name]

    def values(phase: str, metric: str, check: str = "") -> list[float]:
        return [float(r["value"]) for r in by_phase[phase] if r["metric"] == metric and r["check"].startswith(check)]

    # a: parity of the gemm path (export and conv), the census (only depthwise and stem convolutions), training
    assert len(values("health", "max_abs_diff_export")) == 2
    assert all(0 <= v <= mod.PARITY_TOL for v in values("health", "max_abs_diff_logits"))
    assert values("health", "unexpected_convolutions", "census[digits-tiny,bf16]") == [0.0]
    census = next(r for r in by_phase["health"] if r["check"] == "census[animals-tiny,bf16]")
    assert "conv_fwd:depthwise" in census["detail"] and "conv_fwd:stem" in census["detail"]
    assert "conv_fwd:other" not in census["detail"] and "matmul:" in census["detail"]
    assert values("health", "steps_per_s", "train[digits-tiny,bf16]")[0] > 0
    assert all(r["status"] == "skipped (dry)" for r in by_phase["health"] if ",fp16]" in r["check"])  # CPU refuses
    # b: steady rates of supernet (gemm, conv) and static, their ratio, the profile split
    for check in ("animals_job[gemm]", "animals-tiny@32[static]", "animals-tiny@32[gemm]", "animals_job[conv_nocudnn]",
                  "animals-tiny@32[gemm_nchw]"):
        assert values("speed", "steps_per_s", check)[0] > 0, check
    assert values("speed", "ratio", "animals-tiny@32[gemm/static]")[0] > 0
    shares = [r for r in by_phase["speed"] if r["metric"].startswith("share_")]
    assert {"share_idle", "share_optimiser"} <= {r["metric"] for r in shares}
    assert sum(float(r["value"]) for r in shares) == pytest.approx(1.0, abs=0.05)
    # c: the learning curve, the budget it picked, complete seed rounds, the family tables
    curve = [r for r in by_phase["evidence"] if r["metric"].startswith("test_top1[")]
    assert [r["metric"] for r in curve] == ["test_top1[2]", "test_top1[4]"]
    assert values("evidence", "steps", "budget") == [2.0]
    assert values("evidence", "seeds") == [2.0]
    fam = _rows(out / "family_animals_gpu.csv")
    assert len(fam) == 3 * 2 * 2 and {r["strategy"] for r in fam} == {"markov", "compound", "random"}
    assert {r["seed"] for r in fam} == {"0", "1"}
    md = (out / "family_animals_gpu.md").read_text()
    assert "markov − compound" in md and "`jobs/bench/gpu_run.py` (phase c)" in md
    # d: no search folder here: a skipped row, not a failure
    assert by_phase["growth"][0]["status"].startswith("skipped")
    assert "summary" in proc.stdout and "no failures" in proc.stdout
    assert not list(out.glob(".*.tmp"))  # every CSV was replaced atomically
