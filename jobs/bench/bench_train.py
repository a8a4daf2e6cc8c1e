"""Supernet training benchmark: throughput of the default digits job, and hierarchical vs uniform sampling.

    python jobs/bench/bench_train.py [--steps 800] [--seeds 3] [--threads 2] [--throughput-steps 100]
                                     [--csv results/bench/train.csv] [--md results/bench/train.md]

(a) throughput: the default job (jobs/digits.yaml) trained through ``train_supernet`` for ``--warmup`` +
    ``--throughput-steps`` steps; steps/s and images/s are taken from the trainer's own log over the steps after
    the warm-up (so they include sampling, resizing and the path-restricted optimiser, not start-up or the panel).
(b) ablation: the default job at ``--steps`` steps (default: the job's own steps) with ``sampling: hierarchical``
    and ``sampling: uniform``, ``--seeds`` seeds each (seed k also fixes the data split and the report panel, so
    the two samplings are paired per seed). Per scaling stage: the mean holdout top-1 over the panel members of
    that stage (its smallest and largest subnet plus the random panel members that fall in it).

Rows of the CSV: experiment (throughput | ablation), sampling, seed, stage, steps, holdout_top1, images_per_s,
steps_per_s, seconds (wall time of the run, panel included), batch_size, threads. Both files are written
atomically. Run directories go to a temporary folder and are deleted.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
REPO = jobkit.REPO

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from scalenas.train.config import load_job  # noqa: E402
from scalenas.io import atomic_write_csv, atomic_write_text  # noqa: E402
from scalenas.train.supernet import train_supernet  # noqa: E402

JOB = "digits"


def log_rate(out: Path, batch_size: int, world: int = 1, after_step: int = 0) -> tuple[float, float, int]:
    """(images/s, steps/s, steps) over the trainer's log rows past ``after_step`` (each row covers the steps
    since the previous row, timed by the trainer)."""
    log = pd.read_csv(out / "train_log.csv")
    prev = log["step"].shift(1, fill_value=0)
    rows = log[prev >= after_step]
    steps = (rows["step"] - prev[rows.index]).to_numpy()
    images = steps * batch_size * world
    seconds = float((images / rows["images_per_s"].to_numpy()).sum())
    return float(images.sum()) / seconds, float(steps.sum()) / seconds, int(steps.sum())


def throughput(args, tmp: Path) -> dict:
    n = args.throughput_steps if args.throughput_steps is not None else min(100, args.steps)
    cfg = load_job(JOB, {"steps": args.warmup + n, "threads": args.threads, "device": "cpu"})
    cfg.log_every = 1
    out = tmp / "throughput"
    t0 = time.perf_counter()
    # stop_after = total: the run ends like an interruption, so no panel evaluation is timed or run.
    train_supernet(cfg, out, progress=False, stop_after=args.warmup + n)
    seconds = time.perf_counter() - t0
    ips, sps, steps = log_rate(out, cfg.batch_size, after_step=args.warmup)
    print(f"throughput: {sps:.2f} steps/s, {ips:.0f} images/s over {steps} steps (batch {cfg.batch_size}, "
          f"{args.threads} threads)", flush=True)
    return {"experiment": "throughput", "sampling": cfg.sampling, "seed": cfg.seed, "stage": None, "steps": steps,
            "holdout_top1": None, "images_per_s": round(ips, 1), "steps_per_s": round(sps, 3),
            "seconds": round(seconds, 1), "batch_size": cfg.batch_size, "threads": args.threads}


def ablation(args, tmp: Path) -> list[dict]:
    rows = []
    for seed in range(args.seeds):
        for sampling in ("hierarchical", "uniform"):
            cfg = load_job(JOB, {"steps": args.steps, "sampling": sampling, "seed": seed, "threads": args.threads,
                                 "device": "cpu"})
            out = tmp / f"{sampling}-{seed}"
            t0 = time.perf_counter()
            summary = train_supernet(cfg, out, progress=False)
            seconds = time.perf_counter() - t0
            ips, sps, _ = log_rate(out, cfg.batch_size)
            panel = summary["panel"]
            for stage, grp in panel.groupby("stage"):
                rows.append({"experiment": "ablation", "sampling": sampling, "seed": seed, "stage": int(stage),
                             "steps": args.steps, "holdout_top1": round(float(grp["holdout_top1"].mean()), 4),
                             "images_per_s": round(ips, 1), "steps_per_s": round(sps, 3),
                             "seconds": round(seconds, 1), "batch_size": cfg.batch_size, "threads": args.threads})
            print(f"ablation {sampling} seed {seed}: panel mean {panel['holdout_top1'].mean():.4f} "
                  f"({seconds:.0f} s)", flush=True)
    return rows


def markdown(df: pd.DataFrame, args, started: str) -> str:
    lines = ["# Supernet training benchmark", "",
             f"`python jobs/bench/bench_train.py {' '.join(sys.argv[1:])}` — {started}; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
             f"{args.threads} threads, CPU only. Job: jobs/{JOB}.yaml (batch 128).", ""]
    tp = df[df["experiment"] == "throughput"]
    if len(tp):
        r = tp.iloc[0]
        lines += ["## Throughput (default job, hierarchical sampling)", "",
                  f"{r['steps_per_s']:.2f} steps/s, {r['images_per_s']:.0f} images/s over {int(r['steps'])} steps "
                  f"after {args.warmup} warm-up steps (trainer's own timing; no panel).", ""]
    ab = df[df["experiment"] == "ablation"]
    if len(ab):
        lines += [f"## Hierarchical vs uniform sampling ({args.steps} steps, {args.seeds} seed(s))", "",
                  "Holdout top-1 after BN recalibration, mean over the panel members of each scaling stage, then "
                  "mean ± sd over seeds. Δ = hierarchical − uniform, paired by seed (same split and panel).", ""]
        job_steps = int(load_job(JOB).steps)
        if args.steps < job_steps:
            lines += [f"**Budget below the default job's {job_steps} steps: a short-budget comparison; both modes "
                      "are far from converged.**", ""]
        lines += ["| stage | hierarchical | uniform | Δ (paired) |", "|---|---|---|---|"]
        ab = ab.astype({"stage": int})
        piv = ab.pivot_table(index=["stage", "seed"], columns="sampling", values="holdout_top1")

        def ms(s: pd.Series) -> str:
            return f"{s.mean():.3f} ± {s.std(ddof=1):.3f}" if len(s) > 1 else f"{s.mean():.3f}"

        for stage, grp in piv.groupby(level="stage"):
            lines.append(f"| {stage} | {ms(grp['hierarchical'])} | {ms(grp['uniform'])} | "
                         f"{ms(grp['hierarchical'] - grp['uniform'])} |")
        per_seed = piv.groupby(level="seed").mean()
        lines.append(f"| all | {ms(per_seed['hierarchical'])} | {ms(per_seed['uniform'])} | "
                     f"{ms(per_seed['hierarchical'] - per_seed['uniform'])} |")
        secs = ab.drop_duplicates(["sampling", "seed"]).groupby("sampling")["seconds"].mean()
        lines += ["", "Mean wall time per run (panel included): "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()) + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = jobkit.parser(__doc__)
    ap.add_argument("--steps", type=int, default=None, help="ablation budget per run (default: the job's steps)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per sampling mode (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--throughput-steps", type=int, default=None,
                    help="timed steps of the throughput run (default min(100, --steps))")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps before the timed ones (default 10)")
    ap.add_argument("--skip-ablation", action="store_true", help="throughput only")
    ap.add_argument("--csv", default=str(REPO / "results" / "bench" / "train.csv"))
    ap.add_argument("--md", default=str(REPO / "results" / "bench" / "train.md"))
    args = ap.parse_args()
    if args.steps is None:
        args.steps = int(load_job(JOB).steps)
    if args.steps < 1 or args.seeds < 1 or args.threads < 1 or args.warmup < 0:
        ap.error("--steps, --seeds and --threads must be >= 1, --warmup >= 0")
    started = time.strftime("%Y-%m-%d %H:%M")
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        rows = [throughput(args, Path(tmp))]
        if not args.skip_ablation:
            rows += ablation(args, Path(tmp))
    df = pd.DataFrame(rows)
    df["stage"] = df["stage"].astype("Int64")  # integer stages; empty for the throughput row
    atomic_write_csv(args.csv, df)
    atomic_write_text(args.md, markdown(df, args, started))
    print(f"wrote {args.csv} and {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
