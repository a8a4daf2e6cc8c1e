"""``scalenas search``: Markov-chain evolution of base + scaling chain with Ray-distributed supernet fitness."""
from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

from scalenas.errors import ScalenasError

STRATEGIES = ("markov", "alternate", "compound", "random", "independent")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "search", help="jointly search the base network and the scaling chain under FLOPs targets",
        description="Markov-chain evolution (METHOD.md §5): individuals are (base network, scaling chain); the "
        "transition matrices of the chain are re-estimated from the elites every generation. Fitness is the "
        "supernet's holdout top-1 after BN recalibration, evaluated by Ray workers that keep the supernet loaded. "
        "FLOPs are fvcore MACs at batch 1.")
    p.add_argument("--target-flops", required=True,
                   help="top of the family (e.g. 2G: stage s gets 2G*growth^(s-S)) or a comma list T0,...,TS; "
                        "units K, M, G, T")
    p.add_argument("--run", default=None, help="train-supernet run directory (default: the most recent run)")
    p.add_argument("--supernet", default=None, help="supernet checkpoint file (instead of --run)")
    p.add_argument("--out", default=None, help="report directory (default: RUN/search, or a new numbered one)")
    p.add_argument("--force", action="store_true", help="overwrite a finished search in --out")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search in --out")
    p.add_argument("--strategy", default="markov", help=f"one of {', '.join(STRATEGIES)} (default markov)")
    p.add_argument("--stages", type=int, default=None, help="number of scaling stages S (default: the space's)")
    p.add_argument("--growth", type=float, default=None, help="FLOPs ratio between stages (default: the space's)")
    p.add_argument("--flops-tolerance", type=float, default=0.1, help="relative FLOPs tolerance (default 0.1)")
    p.add_argument("--population", type=int, default=16, help="candidates per generation (default 16)")
    p.add_argument("--generations", type=int, default=10, help="generations (default 10)")
    p.add_argument("--elites", type=int, default=4, help="elites kept and used for the matrices (default 4)")
    p.add_argument("--matrix-lr", type=float, default=0.5, help="EMA rate of the transition counts (default 0.5)")
    p.add_argument("--smoothing", type=float, default=0.5, help="additive smoothing of the counts (default 0.5)")
    p.add_argument("--depth-mutation", type=float, default=0.2, help="per-stage depth +-1 probability")
    p.add_argument("--op-mutation", type=float, default=0.1, help="per-layer op resampling probability")
    p.add_argument("--stage-weights", default=None,
                   help="fitness weights of stages 0..S, comma separated (default 0,1,...,1)")
    p.add_argument("--budget", type=int, default=None, help="max unique subnet evaluations")
    p.add_argument("--seed", type=int, default=0, help="search seed (default 0)")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray evaluation workers (default: one per GPU, else one per 2 CPU cores); 0 = in-process")
    p.add_argument("--threads-per-worker", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--ray-address", default=None, help="join an existing Ray cluster (host:port or 'auto')")
    p.add_argument("--calib-batches", type=int, default=4, help="BN recalibration batches per candidate")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="evaluation device (default: cuda if "
                   "available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def resolve_inputs(run: str | None, supernet: str | None) -> tuple[Path, Path]:
    """(checkpoint file, run directory) from --run / --supernet / the most recent run."""
    from scalenas.train.checkpoint import CKPT_NAME, resolve_checkpoint
    from scalenas.train.supernet import latest_run

    if supernet:
        ckpt = resolve_checkpoint(supernet)
        return ckpt, ckpt.parent
    run_dir = Path(run) if run else latest_run()
    if not run_dir.is_dir():
        raise ScalenasError(f"--run {run_dir}: not a directory")
    return resolve_checkpoint(run_dir / CKPT_NAME), run_dir


def resolve_out(run_dir: Path, out: str | None, force: bool, resume: bool) -> Path:
    if out:
        path = Path(out)
        if resume:
            return path
        if (path / "state.json").exists() and not force:
            raise ScalenasError(f"{path} already holds a search; use --resume, --force or another --out")
        return path
    base = run_dir / "search"
    if resume:
        done = sorted(run_dir.glob("search*"), key=lambda p: p.stat().st_mtime)
        if not done:
            raise ScalenasError(f"--resume: no search folder in {run_dir}")
        return done[-1]
    if not (base / "state.json").exists() or force:
        return base
    k = 2
    while (run_dir / f"search-{k}" / "state.json").exists():
        k += 1
    return run_dir / f"search-{k}"


def run(args: argparse.Namespace) -> int:
    import torch

    from scalenas.train.checkpoint import checkpoint_space, read_checkpoint
    from scalenas.search.strategy import SearchOptions, make_strategy, run_search
    from scalenas.train.evaluate import SupernetEvaluator
    from scalenas.io import atomic_write_json
    from scalenas.search.raypool import EvaluatorPool, default_workers
    from scalenas.spaces.targets import check_targets, check_tolerance, format_flops, stage_targets

    if args.strategy not in STRATEGIES:
        raise ScalenasError(f"--strategy {args.strategy!r}: unknown (choose from {', '.join(STRATEGIES)})")
    tol = check_tolerance(args.flops_tolerance)
    if args.workers is not None and args.workers < 0:
        raise ScalenasError(f"--workers must be >= 0, got {args.workers}")
    if args.threads_per_worker < 1:
        raise ScalenasError(f"--threads-per-worker must be >= 1, got {args.threads_per_worker}")
    ckpt, run_dir = resolve_inputs(args.run, args.supernet)
    payload = read_checkpoint(ckpt)
    space = checkpoint_space(payload, str(ckpt))
    del payload
    targets = stage_targets(space, args.target_flops, args.stages, args.growth)
    check_targets(space, targets, tol)
    weights = None
    if args.stage_weights:
        try:
            weights = [float(x) for x in args.stage_weights.split(",")]
        except ValueError:
            raise ScalenasError(f"--stage-weights {args.stage_weights!r}: expected comma-separated numbers") from None
    options = SearchOptions(population=args.population, generations=args.generations, elites=args.elites,
                            matrix_lr=args.matrix_lr, smoothing=args.smoothing, depth_mutation=args.depth_mutation,
                            op_mutation=args.op_mutation, tolerance=tol, stage_weights=weights, seed=args.seed,
                            budget=args.budget)
    strategy = make_strategy(args.strategy, space, targets, options)
    out = resolve_out(run_dir, args.out, args.force, args.resume)
    recorded_options = strategy.options.to_dict()
    if args.resume:
        # Checked before anything starts or is written; on resume the saved options win, so record those.
        state_path = out / "state.json"
        if not state_path.is_file():
            raise ScalenasError(f"cannot resume: {state_path} does not exist")
        try:
            recorded_options = json.loads(state_path.read_text())["options"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ScalenasError(f"cannot resume: {state_path} is unreadable ({exc})") from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ScalenasError("--device cuda: no CUDA device is available")
    workers = default_workers() if args.workers is None else args.workers
    make = functools.partial(SupernetEvaluator, str(ckpt), calib_batches=args.calib_batches, device=device,
                             threads=args.threads_per_worker)
    t0 = time.perf_counter()
    # The pool (and so the checkpoint's weights and the Ray address) is set up before anything is written or
    # deleted: a bad checkpoint or an unreachable cluster leaves the output folder as it was.
    with EvaluatorPool(make, workers, threads_per_worker=args.threads_per_worker,
                       ray_address=args.ray_address, gpus_per_worker=1.0 if device == "cuda" else 0.0) as pool:
        if args.force and not args.resume and out.exists():
            for name in ("state.json", "pareto.csv", "family.csv", "chain.json", "best.json", "search_log.csv",
                         "pareto.png", "search_config.json"):
                (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "search_config.json", {
            "supernet": str(ckpt), "space": space.name, "strategy": args.strategy,
            "targets": targets, "options": recorded_options, "workers": workers,
            "threads_per_worker": args.threads_per_worker,
            "ray_address": args.ray_address, "device": device, "calib_batches": args.calib_batches,
            "fitness": "supernet holdout top-1 after BN recalibration, coupling side 0",
            "flops_convention": "fvcore MACs (1 multiply-add = 1 FLOP), batch 1, eval mode"})
        print(f"search {args.strategy} on {space.name}: targets "
              + ", ".join(f"s{s} {format_flops(t)}" for s, t in enumerate(targets))
              + f" (±{tol:.0%}); supernet {ckpt}; {workers} worker(s); reports in {out}")

        def evaluate(subnets):
            return [r["top1"] for r in pool.map([s.to_json() for s in subnets])]

        result = run_search(space, strategy, evaluate, out, resume=args.resume, progress=not args.no_progress)
    elapsed = time.perf_counter() - t0
    _print_family(out)
    fitness = result.get("fitness")  # None when no complete family was evaluated (or every evaluation failed)
    print(f"{result['evaluations']} subnet evaluations in {elapsed:.0f} s; best fitness "
          + ("none" if fitness is None else f"{fitness:.4f}"))
    print(f"reports: {out}/pareto.csv family.csv chain.json best.json search_log.csv pareto.png")
    return 0


def _print_family(out: Path) -> None:
    import pandas as pd

    fam = pd.read_csv(out / "family.csv")
    cols = [c for c in ("stage", "target_flops", "flops", "params", "resolution", "depth_mult", "width_mult",
                        "top1", "feasible") if c in fam.columns]
    print(fam[cols].to_string(index=False))
