"""The crash sweep's smoke mode (jobs/bench/crash_sweep.py, issue 13): one kill -9 of a tiny train-supernet run
at a random moment, resumed to the end, must give the uninterrupted run's weights and log rows."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_crash_sweep_smoke_train_supernet(tmp_path):
    out_csv = tmp_path / "crash.csv"
    proc = subprocess.run([sys.executable, str(ROOT / "jobs/bench/crash_sweep.py"), "--smoke", "--targets",
                           "train-supernet", "--trials", "1", "--out-csv", str(out_csv),
                           "--work-dir", str(tmp_path / "work")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["target"] == "train-supernet" and int(row["kills"]) >= 1, row
    assert int(row["resumes"]) + int(row["restarts"]) >= 1, row
    assert row["identical"] == "True" and row["log_rows_complete"] == "True", row
    assert out_csv.with_suffix(".md").is_file()
    assert not list((tmp_path / "work").rglob("*.tmp"))
