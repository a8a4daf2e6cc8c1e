"""``scalenas search``: Markov-chain evolution of base + scaling chain with Ray-distributed supernet fitness."""
from __future__ import annotations

import argparse
from pathlib import Path

from scalenas.cli.common import add_option_flags, given, number
from scalenas.errors import ScalenasError
from scalenas.runs import SearchFolder
from scalenas.search.job import EvaluationSettings
from scalenas.search.strategies import strategy_names
from scalenas.search.strategy import SearchOptions

# SearchOptions / EvaluationSettings keys that are flags (defaults, ranges and help come from the dataclasses).
SEARCH_FLAGS = ("population", "generations", "elites", "matrix_lr", "smoothing", "keep_base_prob", "chain_sample_prob",
                "depth_mutation", "op_mutation", "tolerance", "budget", "seed", "max_tries",
                "alternate_base_generations", "metric", "tie_tolerance", "tie_break")
EVAL_FLAGS = ("workers", "threads_per_worker", "ray_address", "calib_batches", "device")
# the band around each stage's target, FLOPs and latency alike: --tolerance is the same flag
TOLERANCE_FLAGS = {"tolerance": ("--flops-tolerance", "--tolerance")}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "search", help="jointly search the base network and the scaling chain under FLOPs targets",
        description="Markov-chain evolution (docs/method.md): individuals are (base network, scaling chain); the "
        "transition matrices of the chain are re-estimated from the elites every generation. Fitness is the "
        "supernet's holdout top-1 (--metric top1) or minus its holdout log-loss (--metric loss) after BN "
        "recalibration, evaluated by Ray workers that keep the supernet loaded; fitness differences below the "
        "measured noise (--tie-tolerance) are ties, won by the family nearest its FLOPs targets (--tie-break). "
        "FLOPs are fvcore MACs at batch 1.")
    p.add_argument("--target-flops", default=None,
                   help="top of the family (e.g. 2G: stage s gets 2G*growth^(s-S)) or a comma list T0,...,TS; "
                        "units K, M, G, T")
    p.add_argument("--target-latency", default=None,
                   help="latency of the top of the family on this device (e.g. 8ms: stage s gets 8ms*growth^(s-S)) "
                        "or a comma list; units s, ms, us; needs --latency-table; with --target-flops both must hold")
    p.add_argument("--latency-table", default=None, help="latency table of the space (scalenas latency build)")
    p.add_argument("--lazy-latency", action="store_true",
                   help="time layers the latency table lacks when they are needed (and append them to it)")
    p.add_argument("--allow-other-device", action="store_true",
                   help="use a latency table built on another device or runtime version (with a warning)")
    p.add_argument("--run", default=None, help="train-supernet run directory (default: the most recent run)")
    p.add_argument("--supernet", default=None, help="supernet checkpoint file (instead of --run)")
    p.add_argument("--out", default=None, help="report directory (default: RUN/search, or a new numbered one)")
    p.add_argument("--force", action="store_true", help="overwrite a finished search in --out")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search in --out")
    p.add_argument("--strategy", default="markov", choices=strategy_names(), help="search strategy (default markov)")
    p.add_argument("--stages", type=number("--stages", int, min=1), default=None,
                   help="number of scaling stages S, 1..the space's (default: the space's)")
    p.add_argument("--growth", type=number("--growth", float, min=1.0, min_open=True), default=None,
                   help="FLOPs ratio between stages, > 1 (default: the space's)")
    add_option_flags(p, SearchOptions, SEARCH_FLAGS, flag_names=TOLERANCE_FLAGS)
    p.add_argument("--stage-weights", default=None, type=stage_weights_arg,
                   help="fitness weights of stages 0..S, comma separated, finite and >= 0 (default 0,1,...,1)")
    add_option_flags(p, EvaluationSettings, EVAL_FLAGS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def stage_weights_arg(text: str) -> list[float]:
    """``--stage-weights 0,1,1,1``: finite numbers >= 0 (their count is checked against the stages later)."""
    weight = number("--stage-weights", float, min=0.0)
    try:
        return [weight(x.strip()) for x in text.split(",")]
    except (ScalenasError, ValueError):
        raise ScalenasError(f"--stage-weights {text!r}: expected comma-separated finite numbers >= 0") from None


def run(args: argparse.Namespace) -> int:
    from scalenas.options import check_options
    from scalenas.report.search_report import write_reports
    from scalenas.search.job import resolve_inputs, search_supernet

    options = given(args, SEARCH_FLAGS, SearchOptions, TOLERANCE_FLAGS)
    if args.stage_weights:
        options["stage_weights"] = args.stage_weights
    options = check_options(SearchOptions(**options), "search option")
    evaluation = check_options(EvaluationSettings(**given(args, EVAL_FLAGS, EvaluationSettings)), "evaluation")
    ckpt, run_dir = resolve_inputs(args.run, args.supernet)
    result = search_supernet(ckpt, run_dir, args.target_flops, strategy=args.strategy, options=options,
                             evaluation=evaluation, stages=args.stages, growth=args.growth, out=args.out,
                             resume=args.resume, force=args.force, progress=not args.no_progress,
                             on_generation=write_reports, target_latency=args.target_latency,
                             latency_table=args.latency_table, latency_lazy=args.lazy_latency,
                             allow_other_device=args.allow_other_device)
    out = Path(result["out_dir"])
    print_family(out)
    fitness = result.get("fitness")  # None when no complete family was evaluated (or every evaluation failed)
    noise = result.get("fitness_noise")
    print(f"{result['evaluations']} subnet evaluations in {result['seconds']:.0f} s; best fitness "
          + ("none" if fitness is None else f"{fitness:.4f}")
          + ("" if fitness is None or noise is None else f" ± {noise:.4f}")
          + f" ({result.get('metric', 'top1')})")
    print(f"reports: {out}/pareto.csv family.csv chain.json best.json search_log.csv pareto.png")
    return 0


def print_family(out: Path) -> None:
    """The best family of the search in ``out`` (what ``scalenas search`` prints at the end)."""
    import pandas as pd

    fam = pd.read_csv(out / SearchFolder.FAMILY)
    cols = [c for c in ("stage", "target_flops", "flops", "params", "target_latency_ms", "latency_ms", "resolution",
                        "depth_mult", "width_mult",
                        "top1", "loss", "feasible") if c in fam.columns
            and (c not in ("loss", "target_flops") or fam[c].notna().any())]
    print(fam[cols].to_string(index=False))


