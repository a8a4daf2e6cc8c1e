"""The demo target: `scalenas demo` end to end (train-supernet -> search -> extrapolate -> report), timed.

Runs the demo in a subprocess as a user would (plus --out) and appends one row to results/bench/demo.csv with the
process wall time and the per-phase times the demo prints, and keeps the demo's output (the family table) in
results/bench/demo_output.txt. Target (default job, animals): <= 300 s on a 2-core CPU, supernet top-1 rising with
the stage.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
ROOT = jobkit.REPO


def main() -> int:
    ap = jobkit.parser(__doc__)
    ap.add_argument("--out", default="results/runs/bench-demo", help="demo run directory (replaced)")
    ap.add_argument("--csv", default=str(ROOT / "results/bench/demo.csv"))
    args = ap.parse_args()
    shutil.rmtree(ROOT / args.out, ignore_errors=True)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "scalenas.cli", "demo", "--out", args.out], cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-2000:])
        return proc.returncode
    phases = dict(re.findall(r"(train-supernet|search|extrapolate|report) (\d+) s", proc.stdout))
    from scalenas.io import atomic_write_text
    atomic_write_text(Path(args.csv).with_name("demo_output.txt"), proc.stdout)
    row = {"when": time.strftime("%Y-%m-%d %H:%M"), "job": "animals", "loadavg_at_start": round(load, 2),
           "wall_s": round(wall, 1),
           **{f"{k}_s": int(v) for k, v in phases.items()}}
    jobkit.append_row(args.csv, row)
    print(pd.DataFrame([row]).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
