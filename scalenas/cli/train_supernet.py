"""``scalenas train-supernet``: train the super-supernet on the embedded digits or your data."""
from __future__ import annotations

import argparse
from pathlib import Path

from scalenas.errors import ScalenasError


def add_parser(sub) -> None:
    p = sub.add_parser("train-supernet", help="train the weight-sharing super-supernet (hierarchical sampling)",
                       description="Train a super-supernet. With no arguments: the default job "
                       "(jobs/digits.yaml: digits-tiny space on scikit-learn's handwritten digits, CPU friendly). "
                       "Flags override the job file; the resolved config is written to the run directory.")
    p.add_argument("--job", default=None, help="job YAML (path, or a name in jobs/: digits, cifar10, imagenet); "
                   "default: jobs/digits.yaml")
    p.add_argument("--space", default=None, help="search space name or YAML path")
    p.add_argument("--data", default=None, help="'digits', an ImageFolder dir, a CIFAR python dir or an .npz")
    p.add_argument("--store-size", type=int, default=None,
                   help="store images once at this size (ImageFolder default 32; others keep their own size)")
    p.add_argument("--epochs", type=int, default=None, help="epochs over the train split (overrides --steps)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=None, help="batch size per process")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--sampling", choices=("hierarchical", "uniform"), default=None,
                   help="path sampling: hierarchical (paper, default) or uniform (ablation)")
    p.add_argument("--sandwich", action="store_true", default=None, help="BigNAS sandwich rule")
    p.add_argument("--inplace-distill", action="store_true", default=None,
                   help="in-place distillation from the largest path (needs --sandwich)")
    p.add_argument("--out", default=None, help="run directory (default: a new folder under results/runs/)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (default: the most recent run) from its checkpoint")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="device (default auto)")
    p.add_argument("--seed", type=int, default=None, help="random seed (python, numpy, torch, sampler, data order)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scalenas.train.config import load_job
    from scalenas.train.supernet import train_supernet

    job = args.job if args.job is not None else "digits"
    overrides = {k: getattr(args, k) for k in ("space", "data", "store_size", "epochs", "steps", "batch_size", "lr", "sampling",
                                                "sandwich", "inplace_distill", "device", "seed", "threads",
                                                "checkpoint_every")}
    cfg = load_job(job, overrides)
    out = Path(args.out) if args.out else None
    if args.resume and out is not None and not out.is_dir():
        raise ScalenasError(f"--resume: run directory {out} does not exist")
    # Resuming without --space/--job: the run's own space (from its checkpoint), not the default job's.
    summary = train_supernet(cfg, out, resume=args.resume, progress=not args.no_progress,
                             space_from_checkpoint=args.resume and args.space is None and args.job is None)
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
