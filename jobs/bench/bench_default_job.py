"""The train-supernet target: `scalenas train-supernet` with no arguments, timed, with its panel.

Runs the default job (jobs/digits.yaml) in a subprocess exactly as a user would (plus --out and --no-progress),
or, with --from-run, records an existing run's run_summary.json. Appends one row to
results/bench/train_default.csv: wall seconds, CPU seconds, load average at start, panel mean/min holdout top-1.
Targets: <= 300 s on a 2-core CPU, panel mean >= 0.90, no member below 0.80.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
ROOT = jobkit.REPO
from scalenas.runs import RunFolder  # noqa: E402


def main() -> int:
    ap = jobkit.parser(__doc__)
    ap.add_argument("--out", default="results/runs/bench-default-job", help="run directory to create")
    ap.add_argument("--from-run", default=None, help="record an existing run instead of training")
    ap.add_argument("--extra", nargs="*", default=[], help="extra flags for train-supernet (e.g. --threads 1)")
    ap.add_argument("--note", default="", help="free text stored with the row (e.g. how the machine was loaded)")
    ap.add_argument("--csv", default=str(ROOT / "results/bench/train_default.csv"))
    args = ap.parse_args()
    load = os.getloadavg()[0]
    if args.from_run:
        run = Path(args.from_run)
        cpu_s = None
    else:
        run = Path(args.out)
        if (run / RunFolder.CHECKPOINT).exists():
            sys.exit(f"{run} exists; remove it or pass another --out")
        cmd = [sys.executable, "-m", "scalenas.cli", "train-supernet", "--out", str(run), "--no-progress",
               *args.extra]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = usage.ru_utime + usage.ru_stime
    summary = json.loads((run / RunFolder.SUMMARY).read_text())
    row = {"when": time.strftime("%Y-%m-%d %H:%M"), "run": str(run), "extra_flags": " ".join(args.extra), "note": args.note,
           "steps": summary["steps"], "threads": summary["threads"], "wall_s": summary["wall_s"],
           "process_wall_s": None if args.from_run else round(wall, 1),
           "cpu_s": None if cpu_s is None else round(cpu_s, 1), "loadavg_at_start": round(load, 2),
           "panel_mean_holdout_top1": round(summary["panel_mean_holdout_top1"], 4),
           "panel_min_holdout_top1": round(summary["panel_min_holdout_top1"], 4)}
    jobkit.append_row(args.csv, row)
    print(pd.DataFrame([row]).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
