"""``scalenas train``: train one standalone model (searched/extrapolated subnet, ViT, grown model).

    scalenas train --arch results/runs/RUN/search/member_s4.json --steps 600
    scalenas train --arch '{"space": "digits-tiny", "base": [...], "depth": 1.2, ...}' --init supernet:RUN
    scalenas train --init grown.pt --freeze-shared --steps 300
    scalenas train --resume --out results/runs/20250101-120000-train-member_s4
"""
from __future__ import annotations

import argparse
from pathlib import Path

from scalenas.cli.common import add_option_flags, given
from scalenas.errors import ScalenasError
from scalenas.runs import SearchFolder
from scalenas.train.config import DEFAULT_JOB, TrainConfig, follow_overrides, followed_record, load_job

# TrainConfig keys that are flags of train (defaults, choices and help come from TrainConfig).
FLAGS = ("data", "data_seed", "holdout_frac", "test_frac", "store_size", "augment", "flip", "source", "workers", "memory_limit_mb", "max_bad_frac", "rescan_data", "epochs", "steps", "batch_size", "optimizer", "lr", "schedule", "momentum",
         "weight_decay", "warmup_steps", "label_smoothing", "dropout", "device", "amp", "cudnn", "threads", "seed",
         "checkpoint_every", "log_every", "tensorboard")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train one standalone model (a searched or extrapolated member, a ViT, a grown model)",
        description="Train ONE standalone model with the supernet's data and recipe (SGD + Nesterov, warm-up + "
        "cosine, label smoothing, no decay on BN/biases), then report its holdout and test top-1 (result.json). "
        "The data split follows the job's seed (data_seed), not --seed, so repeated seeds share one split. "
        "Flags override the job file (default jobs/animals.yaml).")
    p.add_argument("--arch", default=None, help="architecture JSON (file or inline; searched or extrapolated member),"
                   " a model file written by scalenas (export, grow, save_model), or a model kind with a default"
                   " configuration (vit: the default ViT)")
    p.add_argument("--init", default=None, metavar="scratch|supernet:CKPT|FILE",
                   help="initial weights: scratch (default for a JSON), supernet:CKPT (inherit from a supernet "
                   "checkpoint or run dir; the member must fit inside it) or a model file (e.g. a grown model); "
                   "a model file given as --arch starts from its own weights")
    p.add_argument("--family", default=None, metavar="SEARCH_DIR",
                   help="train every member of the search's family (family.csv: searched and extrapolated rows) "
                   "into SEARCH_DIR/family-grown|family-scratch/s<k>, resumable member by member; results go to "
                   "SEARCH_DIR/standalone.csv (scalenas report shows them)")
    p.add_argument("--grow", action="store_true",
                   help="--family: s0 from scratch, each next member grown from the trained previous one")
    p.add_argument("--job", default=None, help="job YAML with the recipe (default: animals)")
    followed = "; when following a run (--family SEARCH_DIR, a member file of a search folder, --init supernet:RUN): " \
        "the run's"
    add_option_flags(p, TrainConfig, FLAGS, defaults=load_job(DEFAULT_JOB), defaults_name=f"jobs/{DEFAULT_JOB}.yaml",
                     help_overrides={
        "data_seed": "seed of the train/holdout/test split (default: the job's data_seed, else its seed" + followed
                     + " split seed)",
        "data": f"the data to train on (default: {load_job(DEFAULT_JOB).data}, from jobs/{DEFAULT_JOB}.yaml"
                + followed + " data; another data path with the run's classes is accepted, another class count "
                "refused)"})
    p.add_argument("--space", default=None, metavar="NAME|FILE",
                   help="the space of an architecture JSON (default: the one the JSON names: a shipped space, a YAML "
                   "path, or the search folder's space.yaml)")
    p.add_argument("--out", default=None, help="run directory (default: results/runs/<time>-train-<name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (default: the most recent standalone run) from its checkpoint, "
                   "with its saved recipe; a finished run stays unchanged unless --steps exceeds its total (then it "
                   "trains on to --steps)")
    p.add_argument("--freeze-shared", action="store_true",
                   help="grown models: train only the adapters and per-instance norms")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from scalenas.train.standalone import train_standalone

    job = args.job if args.job is not None else DEFAULT_JOB
    overrides = given(args, FLAGS)
    record, where = _followed(args)
    if record is not None:  # the data, split and augmentation defaults of the run this model continues
        overrides = follow_overrides(record, overrides)
        print(f"data: {overrides['data']} (split seed {overrides.get('data_seed')}, {record['num_classes']} classes) "
              f"as in {where}" + ("" if args.data is None else f"; the run's data: {record['data']}"))
    if overrides.get("data_seed") is None:  # the split follows the job, so --seed 1, 2, 3 train on the same split
        job_cfg = load_job(job)
        overrides["data_seed"] = job_cfg.data_seed if job_cfg.data_seed is not None else job_cfg.seed
    cfg = load_job(job, overrides)
    follow = None if record is None else {"record": record, "where": str(where)}
    if args.family is not None:
        return _train_family(args, cfg, record)
    if args.grow:
        raise ScalenasError("--grow applies to --family only")
    out = Path(args.out) if args.out else None
    if args.resume:
        if out is not None and not out.is_dir():
            raise ScalenasError(f"--resume: run directory {out} does not exist")
    elif args.arch is None and args.init is None:
        raise ScalenasError("give --arch (an architecture JSON or a model file), or --resume")
    summary = train_standalone(cfg, args.arch, args.init, out, resume=args.resume, progress=not args.no_progress,
                               freeze_shared=args.freeze_shared, extend_to=args.steps if args.resume else None,
                               space=args.space, follow=follow)
    if summary.get("already_finished"):
        from scalenas.cli.train_supernet import finished_note

        print(finished_note(summary))
        return 0
    if not summary["finished"]:
        return 130
    r = summary["result"]
    flops = "?" if r["flops"] is None else f"{r['flops'] / 1e6:.3f}M"
    print(f"{r['name']}: {r['kind']} at {r['resolution']} px, {flops} FLOPs, {r['params'] / 1e3:.1f}K params, "
          f"weights from {r['init']}")
    print(f"holdout top-1 {r['holdout_top1']:.4f}   test top-1 {r['test_top1']:.4f}   "
          f"({r['steps']} steps, {r['train_seconds']:.0f} s)")
    print(f"run directory: {summary['out_dir']}  (final.pt, result.json, train_log.csv, train_checkpoint.pt)")
    return 0


def _followed(args: argparse.Namespace) -> tuple[dict | None, Path | None]:
    """The data record of the run or search folder this command continues (None: it continues none)."""
    if args.resume:
        return None, None  # a resumed run follows its own saved recipe
    source = None
    if args.family is not None:
        if not Path(args.family).is_dir():
            raise ScalenasError(f"--family {args.family}: not a directory")
        source = Path(args.family)
    elif args.init is not None and args.init.startswith("supernet:"):
        p = Path(args.init[len("supernet:"):])
        source = p if p.is_dir() else p.parent
    elif args.arch is not None and not args.arch.strip().startswith("{") and Path(args.arch).is_file() \
            and SearchFolder.holds_search(Path(args.arch).parent):
        source = Path(args.arch).parent
    if source is None or not source.is_dir():
        return None, None
    record, where = followed_record(source)
    if record is None and SearchFolder.holds_search(source) and args.data is None:
        run = SearchFolder(source).run_dir()
        gone = f"its run {run} was moved or deleted" if run is not None and not run.is_dir() else \
            "it records no data (written before data records)"
        raise ScalenasError(f"{source}: cannot tell which data the search's supernet trained on: {gone}; give --data "
                            "(and --store-size, --data-seed as in that run) to say what to train on")
    return record, where


def _train_family(args: argparse.Namespace, cfg, record: dict | None) -> int:
    from scalenas.train.family import total_compute, train_family

    if args.arch or args.init or args.resume or args.freeze_shared or args.space:
        raise ScalenasError("--family trains the search's members: drop --arch/--init/--resume/--freeze-shared/"
                            "--space (rerunning --family resumes it)")
    rows = train_family(args.family, cfg, grow=args.grow, progress=not args.no_progress,
                        out_dir=Path(args.out) if args.out else None, record=record)
    print(f"{'stage':>5} {'kind':>12} {'holdout':>8} {'test':>8} {'steps':>6} {'train s':>8}  init")
    for r in rows:
        print(f"{r['stage']:>5} {r['kind']:>12} {r['holdout_top1']:>8.4f} {r['test_top1']:>8.4f} {r['steps']:>6} "
              f"{r['train_seconds'] or 0:>8.0f}  {r['init']}")
    c = total_compute(rows)
    print(f"total: {c['block_steps']:,.0f} block-steps, {c['train_seconds']:.0f} s of training; results in "
          f"{Path(args.family) / 'standalone.csv'} (scalenas report {args.family})")
    return 0

