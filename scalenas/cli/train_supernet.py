"""``scalenas train-supernet``: train the super-supernet on the embedded animals (or digits) or your data."""
from __future__ import annotations

import argparse
from pathlib import Path

from scalenas.cli.common import add_option_flags, given
from scalenas.errors import ScalenasError
from scalenas.train.config import DEFAULT_JOB, TrainConfig, load_job

# TrainConfig keys that are flags of train-supernet (defaults, choices and help come from TrainConfig).
FLAGS = ("space", "data", "data_seed", "holdout_frac", "test_frac", "store_size", "augment", "flip", "source", "workers", "memory_limit_mb", "max_bad_frac", "rescan_data", "epochs", "steps", "batch_size", "optimizer", "lr",
         "schedule", "momentum", "weight_decay", "warmup_steps", "label_smoothing", "sampling", "sandwich",
         "inplace_distill", "sandwich_largest", "device", "amp", "cudnn", "conv_impl", "threads", "seed", "checkpoint_every", "log_every", "tensorboard", "bn_calib_batches",
         "panel_random")


def add_parser(sub) -> None:
    p = sub.add_parser("train-supernet", help="train the weight-sharing super-supernet (hierarchical sampling)",
                       description="Train a super-supernet. With no arguments: the default job "
                       "(jobs/animals.yaml: animals-tiny space on the embedded 28x28 animal silhouettes, CPU friendly; "
                       "--job digits is quicker and easier). "
                       "Flags override the job file; the resolved config is written to the run directory.")
    p.add_argument("--job", default=None, help="job YAML (path, or a name in jobs/: animals, digits, cifar10, "
                   "imagenet); default: jobs/animals.yaml")
    add_option_flags(p, TrainConfig, FLAGS, defaults=load_job(DEFAULT_JOB), defaults_name=f"jobs/{DEFAULT_JOB}.yaml")
    p.add_argument("--out", default=None, help="run directory (default: a new folder under results/runs/)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (default: the most recent run) from its checkpoint, with its "
                   "saved recipe; a finished run stays unchanged unless --steps exceeds its total (then it trains "
                   "on to --steps)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def finished_note(summary: dict) -> str:
    """What ``--resume`` of a finished run prints (nothing was changed)."""
    return (f"{summary['out_dir']}: the run is already finished ({summary['step']}/{summary['total_steps']} steps); "
            "nothing changed (give --steps larger than its total to train it further)")


def run(args: argparse.Namespace) -> int:
    from scalenas.train.supernet import train_supernet

    job = args.job if args.job is not None else DEFAULT_JOB
    cfg = load_job(job, given(args, FLAGS))
    out = Path(args.out) if args.out else None
    if args.resume and out is not None and not out.is_dir():
        raise ScalenasError(f"--resume: run directory {out} does not exist")
    # Resuming without --space/--job: the run's own space (from its checkpoint), not the default job's.
    summary = train_supernet(cfg, out, resume=args.resume, progress=not args.no_progress,
                             space_from_checkpoint=args.resume and args.space is None and args.job is None,
                             extend_to=args.steps if args.resume else None)
    if summary.get("already_finished"):
        print(finished_note(summary))
        return 0
    if not summary["finished"]:
        return 130
    panel = summary.get("panel")
    if panel is not None:
        show = panel.drop(columns=["arch"]).copy()
        show["flops"] = (show["flops"] / 1e6).round(2)
        show["params"] = (show["params"] / 1e3).round(1)
        show = show.rename(columns={"flops": "MFLOPs", "params": "Kparams"})
        print(show.to_string(index=False))
        print(f"panel mean holdout top-1: {panel['holdout_top1'].mean():.4f} "
              f"(min {panel['holdout_top1'].min():.4f})")
        print(f"run directory: {summary['out_dir']}  (checkpoint.pt, train_log.csv, panel.csv, config.yaml, "
              "split.json)")
    return 0
