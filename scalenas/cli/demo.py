"""``scalenas demo``: the whole pipeline (train-supernet -> search -> extrapolate -> report) on CPU.

It calls the library functions the commands call; everything lands in one run directory.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from scalenas.runs import SearchFolder
from scalenas.cli.common import number
from scalenas.errors import ScalenasError
from scalenas.io import SEED_RANGE


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="the whole pipeline on the embedded animals: train-supernet, search, "
                       "extrapolate, report (CPU, minutes)",
                       description="Train the default supernet (jobs/animals.yaml; --job digits for the quickest run), search a family with a FLOPs target "
                       "chosen inside the trained space's feasible range, extrapolate 2 members beyond it and "
                       "print the family. Everything lands in one run directory.")
    d.add_argument("--job", default=None, help="the supernet's job (default: animals; digits is quicker and easier)")
    d.add_argument("--out", default=None, help="run directory (default: results/runs/<time>-demo)")
    d.add_argument("--steps", type=number("--steps", int, min=1), default=None,
                   help=f"supernet training steps (default {DEMO_STEPS}; --quick: {QUICK_STEPS})")
    d.add_argument("--sandwich", action=argparse.BooleanOptionalAction, default=False,
                   help="train with the sandwich rule and in-place distillation, as train-supernet's default "
                   "job does (about 3x the training time: past the demo's 5 minutes on 2 cores); default off")
    d.add_argument("--quick", action="store_true",
                   help="a smoke run: few steps, tiny search in-process (no Ray), for checking the install")
    d.add_argument("--workers", type=number("--workers", int, min=0), default=None,
                   help="Ray evaluation workers of the search (default: scalenas search's; --quick: 0)")
    d.add_argument("--seed", type=number("--seed", int, min=SEED_RANGE[0], max=SEED_RANGE[1]), default=0,
                   help="seed of training and search (default 0)")
    d.add_argument("--threads", type=number("--threads", int, min=1), default=None,
                   help="torch CPU threads of the supernet training (default: torch's; 1 is faster on a "
                   "2-core machine busy with other work)")
    d.set_defaults(func=run_demo)




# ------------------------------------------------------------------------------------------ demo
DEMO_STEPS = 800  # the default job's steps, at DEMO_BATCH: the demo stays within 5 minutes on 2 cores
DEMO_BATCH = 96
# The default job trains with the sandwich rule + in-place distillation (3 passes per step); the demo trains one
# path per step unless --sandwich, so that it stays within 5 minutes. Its family is then less accurate (gap to
# standalone ~14 instead of ~4 points, results/bench/supernet_quality.md) but rises with FLOPs all the same.
QUICK_STEPS = 40


def run_demo(args: argparse.Namespace) -> int:

    from scalenas.cli.extrapolate import print_extrapolation
    from scalenas.cli.search import print_family
    from scalenas.report.family import extrapolate_search, report
    from scalenas.report.search_report import write_reports
    from scalenas.runs import RUNS_DIR, SUPERNET_CKPT
    from scalenas.search.job import EvaluationSettings, search_supernet
    from scalenas.search.strategy import SearchOptions
    from scalenas.spaces.targets import format_flops, reachable_target
    from scalenas.train.checkpoint import checkpoint_space, read_checkpoint
    from scalenas.train.config import DEFAULT_JOB, load_job
    from scalenas.train.supernet import train_supernet

    steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else DEMO_STEPS)
    out = Path(args.out) if args.out else RUNS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-demo"
    if (out / SUPERNET_CKPT).exists():
        raise ScalenasError(f"{out} already holds a run; choose another --out")
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    job = args.job or DEFAULT_JOB
    recipe = "sandwich rule + in-place distillation" if args.sandwich else "one path per step (--sandwich: the job's recipe)"
    print(f"[1/4] train-supernet: {job} job, {steps} steps of batch {DEMO_BATCH}, {recipe} -> {out}", flush=True)
    cfg = load_job(job, {"steps": steps, "seed": args.seed, "threads": args.threads, "batch_size": DEMO_BATCH,
                         "checkpoint_every": max(50, min(200, steps)), "sandwich": args.sandwich,
                         "inplace_distill": args.sandwich})
    summary = train_supernet(cfg, out, progress=True)
    if not summary["finished"]:
        return 130
    panel = summary.get("panel")
    if panel is not None:
        print(f"      panel mean holdout top-1 {panel['holdout_top1'].mean():.4f}")
    times["train-supernet"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    ckpt = out / SUPERNET_CKPT
    space = checkpoint_space(read_checkpoint(ckpt), str(ckpt))
    target = reachable_target(space)
    pop, gens = (6, 2) if args.quick else (8, 3)
    workers = args.workers if args.workers is not None else (0 if args.quick else None)
    print(f"[2/4] search: markov, target {format_flops(target)} at the top stage (inside the trained space's "
          f"feasible range), population {pop}, {gens} generations", flush=True)
    result = search_supernet(ckpt, out, str(target), options=SearchOptions(population=pop, generations=gens,
                                                                          elites=2, seed=args.seed),
                             evaluation=EvaluationSettings(workers=workers), progress=False,
                             on_generation=write_reports)
    search_dir = Path(result["out_dir"])
    print_family(search_dir)
    times["search"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    print("[3/4] extrapolate: 2 members beyond the last stage", flush=True)
    print_extrapolation(search_dir, extrapolate_search(search_dir, 2))
    times["extrapolate"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    print("[4/4] report", flush=True)
    text, paths, folder = report(str(search_dir), "table")
    times["report"] = time.perf_counter() - t3
    total = time.perf_counter() - t0
    print(text)
    print("plots: " + ", ".join(str(p) for p in paths))
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f"; total {total:.0f} s")
    print(f"run directory: {out}  (train the extrapolated members with: scalenas train --arch "
          f"{SearchFolder(folder).member_file(space.num_scaling_stages + 1)})")
    return 0
