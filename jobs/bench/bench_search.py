"""Search quality and cost at an equal evaluation budget: markov vs alternate / compound / random / independent.

    python jobs/bench/bench_search.py --supernet results/runs/animals/checkpoint.pt --seeds 5 [--budget 150]
        [--target-flops 4M] [--strategies alternate,markov,compound,random,independent]
        [--population 8] [--elites 4] [--calib-batches 4] [--cache FILE]
        [--csv results/bench/search.csv] [--md results/bench/search.md] [--curves results/bench/search_curves.csv]

The data is the supernet's (train it with ``scalenas train-supernet --data animals --space animals-tiny`` for the
animals benchmark). Every (strategy, seed) run gets the same budget of unique subnet evaluations
(``SearchOptions.budget``, counted by built network, as the search itself counts them) and is driven by the same
ask/tell loop as ``scalenas search``. Strategies default to every registered one (``strategy_names()``),
alternate first; seeds default to 5 (``--seeds N`` = seeds 0..N-1, or a comma list). Fitness comes from ONE
in-process :class:`~scalenas.search.fitness.SupernetEvaluator` (one torch thread) behind a cache keyed by the
subnet's JSON, shared by every strategy and seed: fitness is deterministic, so a subnet that two runs both
propose is scored once. Each run is still charged for every unique subnet it asks for (``evaluations``);
``evaluator_calls`` says how many of them actually ran. ``--cache FILE`` keeps that cache on disk between
invocations (it is only reused for the same checkpoint file, calibration and device).

Recorded per run (``--csv``): the final family fitness and feasibility; ``evals_to_final`` (evaluations at which
the run first reached its own final fitness); ``evals_to_reach_alternate`` (evaluations at which it first held a
feasible family at least as fit as ``alternate``'s final family of the same seed; ``inf`` when never, empty when
alternate did not run); ``evals_ratio_vs_alternate`` = that / alternate's own ``evals_to_reach_alternate``
(= alternate's ``evals_to_final``; ``inf`` when never reached): for markov, the paper's search-cost claim is
<= 1/2.53 (alternate needs >= 2.53x the evaluations); ``cost_ratio_vs_alternate`` is its inverse;
``seconds_per_evaluation`` (run wall time / evaluations charged; cache hits make later runs cheaper) and
``seconds_per_evaluator_call`` (evaluator time / cache misses of the run). Per generation (``--curves``): the best
family's fitness against the cumulative evaluations. Evaluations are counted at generation ends, the only points
where a strategy's best family is defined. The markdown summary (``--md``) quotes the command.

Writes the CSVs and the markdown summary atomically (``scalenas.io``).
"""
from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
REPO = jobkit.REPO

os.environ.setdefault("OMP_NUM_THREADS", "1")  # set before torch is imported

import numpy as np
import pandas as pd
import torch

from scalenas.io import atomic_write_csv, atomic_write_json, atomic_write_text
from scalenas.search.fitness import SupernetEvaluator
from scalenas.search.strategies import STRATEGIES, make_strategy, strategy_names
from scalenas.search.strategy import SearchOptions
from scalenas.spaces.targets import check_targets, format_flops, stage_targets
from scalenas.train.checkpoint import (
    checkpoint_space,
    read_checkpoint,
    resolve_checkpoint,
)

# alternate first: the others compare to it; then every other registered strategy, markov first
ORDER = tuple(["alternate"] + [s for s in strategy_names() if s != "alternate"])
COLUMNS = ["strategy", "seed", "budget", "evaluations", "final_fitness", "feasible", "evals_to_final",
           "evals_to_reach_alternate", "alternate_final_fitness", "alternate_evals_to_final",
           "evals_ratio_vs_alternate", "cost_ratio_vs_alternate", "generations", "gave_up", "evaluator_calls",
           "seconds", "seconds_per_evaluation", "seconds_per_evaluator_call", "population", "elites",
           "target_flops", "family_flops", "family_top1"]
CURVE_COLUMNS = ["strategy", "seed", "generation", "evaluations", "fitness", "feasible"]
EPS = 1e-12
PAPER_RATIO = 1 / 2.53  # markov's evaluations / alternate's to reach the same fitness (ScaleNet, ECCV 2022)


class CachedEvaluator:
    """``evaluate(subnets) -> top-1 list`` over one SupernetEvaluator, with a cache keyed by the subnet JSON."""

    def __init__(self, ckpt: Path, calib_batches: int, device: str, threads: int, cache_file: str | None):
        self.ev = SupernetEvaluator(str(ckpt), calib_batches=calib_batches, device=device, threads=threads)
        st = ckpt.stat()
        self.identity = {"supernet": str(ckpt.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                         "calib_batches": calib_batches, "device": device}
        self.cache_file = Path(cache_file) if cache_file else None
        self.values: dict[str, float] = {}
        if self.cache_file and self.cache_file.is_file():
            data = json.loads(self.cache_file.read_text())
            if data.get("identity") == self.identity:
                self.values = {k: float(v) for k, v in data["values"].items()}
                print(f"cache: {len(self.values)} fitness values from {self.cache_file}")
            else:
                print(f"cache: {self.cache_file} belongs to another checkpoint/setting; not used")
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, subnets) -> list[float]:
        out = []
        for sub in subnets:
            key = sub.to_json()
            if key not in self.values:
                t0 = time.perf_counter()
                self.values[key] = float(self.ev.evaluate(key)["top1"])
                self.seconds += time.perf_counter() - t0
                self.calls += 1
            out.append(self.values[key])
        return out

    def save(self) -> None:
        if self.cache_file:
            atomic_write_json(self.cache_file, {"identity": self.identity, "values": self.values})


def run_one(name: str, seed: int, space, targets: list[int], args, evaluator: CachedEvaluator) -> dict[str, Any]:
    """One search to the end of its budget; returns its summary and per-generation curve."""
    options = SearchOptions(population=args.population, generations=args.generations, elites=args.elites,
                            tolerance=args.flops_tolerance, seed=seed, budget=args.budget,
                            keep_base_prob=args.keep_base_prob)
    strategy = make_strategy(name, space, targets, options)
    calls0, ev_s0, t0 = evaluator.calls, evaluator.seconds, time.perf_counter()
    curve: list[dict[str, Any]] = []
    while not strategy.done:
        subnets = strategy.ask()
        values = evaluator(subnets)
        before = strategy.generation
        strategy.tell({s.to_json(): v for s, v in zip(subnets, values)})
        if strategy.generation != before:
            # Best-family feasibility is monotone (feasible families are ranked first and never dropped), so
            # the value after this tell holds for every generation it completed.
            feasible = bool(strategy.best()["feasible"])
            for row in strategy.results.history[before:strategy.generation]:
                curve.append({"strategy": name, "seed": seed, "generation": row["generation"],
                              "evaluations": row["evaluations"], "fitness": row["best_fitness"],
                              "feasible": feasible})
    best = strategy.best()
    fitness = best["fitness"]
    seconds = time.perf_counter() - t0
    calls = evaluator.calls - calls0
    return {
        "strategy": name, "seed": seed, "budget": args.budget, "evaluations": strategy.evaluations,
        "final_fitness": fitness, "feasible": bool(best["feasible"]),
        "evals_to_final": first_reach(curve, fitness),
        "generations": strategy.generation, "gave_up": int(sum(r["gave_up"] for r in strategy.results.history)),
        "evaluator_calls": calls, "seconds": round(seconds, 2),
        "seconds_per_evaluation": round(seconds / strategy.evaluations, 4) if strategy.evaluations else None,
        "seconds_per_evaluator_call": round((evaluator.seconds - ev_s0) / calls, 4) if calls else None,
        "population": args.population, "elites": args.elites, "target_flops": args.target_flops,
        "family_flops": ";".join(format_flops(r["flops"]) for r in best["family"]),
        "family_top1": ";".join("nan" if r["top1"] is None else f"{r['top1']:.4f}" for r in best["family"]),
        "curve": curve,
    }


def first_reach(curve: list[dict[str, Any]], level: float | None) -> int | None:
    """Evaluations at the first generation end whose best family is feasible with fitness >= ``level``."""
    if level is None or not math.isfinite(level):
        return None
    for row in curve:
        f = row["fitness"]
        if row["feasible"] and f is not None and math.isfinite(f) and f >= level - EPS:
            return int(row["evaluations"])
    return None


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> seeds 0, 1, 2; ``"0,5,7"`` -> those seeds."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise SystemExit(f"--seeds must be a count or a comma list of integers, got {text!r}") from None
    if len(seeds) == 1 and "," not in text:
        if seeds[0] < 1:
            raise SystemExit("--seeds count must be >= 1")
        return list(range(seeds[0]))
    return seeds


def fmt(v: Any, digits: int = 4) -> str:
    """A number for the tables: ``–`` when missing (None/NaN), ``inf`` when never reached."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _num(v: Any) -> float:
    """A cell as a float (None/NA -> NaN)."""
    return float("nan") if v is None or pd.isna(v) else float(v)


def geomean(values: list[float]) -> float:
    """Geometric mean of positive numbers (inf if any is inf, NaN if there are none)."""
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return float("nan")
    if any(math.isinf(x) for x in v):
        return math.inf
    return float(np.exp(np.mean(np.log(v))))


def markdown(frame: pd.DataFrame, args, targets: list[int], ckpt: Path, data: str, evaluator: CachedEvaluator,
             total_s: float, command: str) -> str:
    seeds = sorted(set(frame.seed))
    lines = [
        "# Search quality and cost at an equal evaluation budget",
        "",
        "Command:", "", "```bash", command, "```", "",
        f"Supernet `{ckpt}` ({evaluator.ev.space.name}, data {data}); targets "
        + ", ".join(f"s{s} {format_flops(t)}" for s, t in enumerate(targets))
        + f" (±{args.flops_tolerance:.0%}); budget {args.budget} unique subnet evaluations per run; "
        f"population {args.population}, elites {args.elites}, markov keep_base_prob {args.keep_base_prob}; "
        f"seeds {', '.join(map(str, seeds))}; "
        f"fitness = mean supernet holdout top-1 over stages 1..S after BN recalibration "
        f"(calibration batches: {args.calib_batches}), one shared in-process evaluator with a fitness cache.",
        "",
    ]
    if len(seeds) < 5:
        lines += [f"**Only {len(seeds)} seed(s): a smoke run, not the benchmark (it uses >= 5).**", ""]
    lines += [
        ("| strategy | final fitness (mean ± sd) | feasible | evaluations (mean) | evals to own final (mean) "
        "| reached alternate's final | evals to reach it, per seed | ratio vs alternate (geo. mean) "
        "| s / evaluation | s / evaluator call |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in [s for s in ORDER if s in set(frame.strategy)]:
        g = frame[frame.strategy == name].sort_values("seed")
        fit = g.final_fitness.astype(float)
        reach = [_num(v) for v in g.evals_to_reach_alternate]
        reached = sum(math.isfinite(x) for x in reach)
        known = sum(not math.isnan(x) for x in reach)
        calls = g.evaluator_calls.sum()
        ev_s = (g.seconds_per_evaluator_call.astype(float) * g.evaluator_calls).sum()
        lines.append(
            f"| {name} | {fmt(float(fit.mean()))} ± {fmt(float(fit.std(ddof=1)) if len(g) > 1 else 0.0)} | "
            f"{int(g.feasible.sum())}/{len(g)} | {g.evaluations.mean():.0f} | "
            f"{_num(g.evals_to_final.astype(float).mean()):.0f} | {reached}/{known} | "
            f"{' '.join(fmt(x if math.isnan(x) or math.isinf(x) else int(x)) for x in reach)} | "
            f"{fmt(geomean([_num(v) for v in g.evals_ratio_vs_alternate]), 3)} | "
            f"{g.seconds.sum() / max(1, g.evaluations.sum()):.3f} | "
            f"{fmt(float(ev_s / calls) if calls else None, 3)} |")
    m = frame[frame.strategy == "markov"].set_index("seed")
    a = frame[frame.strategy == "alternate"].set_index("seed")
    if len(m) and len(a):
        lines += ["", "## Search cost: markov vs alternate", "",
                  (f"Per seed: the evaluations markov needs to reach alternate's final fitness, divided by the "
                  f"evaluations alternate needed to reach it (its own first reach). Target (the paper's claim: "
                  f"alternate needs >= 2.53x the evaluations of markov): ratio <= 1/2.53 = {PAPER_RATIO:.3f}."), "",
                  ("| seed | alternate final | alternate evals to final / total | markov final "
                  "| markov evals to reach alternate's final | ratio markov / alternate | target met |"),
                  "|---|---|---|---|---|---|---|"]
        ratios = []
        for seed in sorted(set(m.index) & set(a.index)):
            r, alt = m.loc[seed], a.loc[seed]
            ratio = _num(r.evals_ratio_vs_alternate)
            ratios.append(ratio)
            reach = _num(r.evals_to_reach_alternate)
            lines.append(f"| {seed} | {alt.final_fitness:.4f} | {fmt(_num(alt.evals_to_final), 0)} / "
                         f"{alt.evaluations} | {r.final_fitness:.4f} | {fmt(reach, 0)} | {fmt(ratio, 3)} | "
                         f"{'yes' if ratio <= PAPER_RATIO + EPS else 'no'} |")
        gm = geomean(ratios)
        met = sum(x <= PAPER_RATIO + EPS for x in ratios)
        lines += ["", (f"markov reached alternate's final fitness in {sum(math.isfinite(x) for x in ratios)}/"
                  f"{len(ratios)} seeds; the ratio is <= 1/2.53 in {met}/{len(ratios)} seeds; geometric mean "
                  f"{fmt(gm, 3)} (1/2.53 = {PAPER_RATIO:.3f}): the paper's claim is "
                  f"**{'met' if gm <= PAPER_RATIO + EPS else 'not met'}** on the geometric mean.")]
    if len(m):
        lines += ["", "## Final fitness: markov vs the baselines", ""]
        for other in [s for s in ORDER if s not in ("markov",) and s in set(frame.strategy)]:
            o = frame[frame.strategy == other].set_index("seed")
            common = sorted(set(m.index) & set(o.index))
            ge = sum(_num(m.loc[k].final_fitness) >= _num(o.loc[k].final_fitness) - EPS for k in common)
            diff = [x for x in (_num(m.loc[k].final_fitness) - _num(o.loc[k].final_fitness) for k in common)
                    if not math.isnan(x)]
            lines.append(f"- markov >= {other} in **{ge}/{len(common)}** seeds (mean difference "
                         f"{fmt(float(np.mean(diff)) if diff else None)})")
    lines += ["", (f"Evaluations charged to budgets: {int(frame.evaluations.sum())}; evaluator calls actually run "
              f"(cache misses): {evaluator.calls} in {evaluator.seconds:.0f} s "
              f"({evaluator.seconds / max(1, evaluator.calls):.3f} s per call); whole benchmark {total_s:.0f} s. "
              "Evaluation counts are taken at generation ends; `inf` = never reached within the budget. "
              f"Per-generation curves (fitness vs evaluations): `{Path(args.curves).name}`; per-run rows: "
              f"`{Path(args.csv).name}`."), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = jobkit.parser(__doc__)
    ap.add_argument("--supernet", default=None, help="supernet checkpoint or run folder (default: latest run)")
    ap.add_argument("--budget", type=int, default=150, help="unique subnet evaluations per run (default 150)")
    ap.add_argument("--seeds", default="5", help="a count (seeds 0..N-1) or a comma list (default 5)")
    ap.add_argument("--target-flops", default="4M", help="top of the family, or T0,...,TS (default 4M)")
    ap.add_argument("--flops-tolerance", type=float, default=0.1)
    ap.add_argument("--strategies", default=",".join(ORDER), help="comma list (default: every registered strategy, alternate first)")
    ap.add_argument("--population", type=int, default=8, help="candidates per generation (default 8)")
    ap.add_argument("--elites", type=int, default=4)
    ap.add_argument("--keep-base-prob", type=float, default=SearchOptions().keep_base_prob,
                    help="markov: share of children that keep an elite's base (0: the earlier breeding)")
    ap.add_argument("--generations", type=int, default=200, help="upper bound; the budget ends the runs")
    ap.add_argument("--calib-batches", type=int, default=4, help="BN recalibration batches (search default 4)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the evaluator (default 1)")
    ap.add_argument("--cache", default=None, help="JSON file keeping fitness values between invocations")
    ap.add_argument("--csv", default=str(REPO / "results/bench/search.csv"))
    ap.add_argument("--md", default=str(REPO / "results/bench/search.md"))
    ap.add_argument("--curves", default=None, help="per-generation curves CSV (default: next to --csv, "
                    "NAME_curves.csv)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    if args.budget < 1:
        raise SystemExit("--budget must be >= 1")
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise SystemExit(f"--strategies: unknown {unknown} (known: {', '.join(STRATEGIES)})")
    names = [s for s in ORDER if s in names]
    seeds = parse_seeds(args.seeds)
    if args.curves is None:
        args.curves = str(Path(args.csv).with_name(Path(args.csv).stem + "_curves.csv"))
    if args.supernet is None:
        from scalenas.train.supernet import latest_run

        args.supernet = str(latest_run())
    ckpt = resolve_checkpoint(args.supernet)
    space = checkpoint_space(read_checkpoint(ckpt), str(ckpt))
    targets = stage_targets(space, args.target_flops)
    check_targets(space, targets, args.flops_tolerance)
    torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    evaluator = CachedEvaluator(ckpt, args.calib_batches, args.device, args.threads, args.cache)
    print(f"{len(names)} strategies x {len(seeds)} seeds, budget {args.budget}; supernet {ckpt}; targets "
          + ", ".join(format_flops(t) for t in targets), flush=True)
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for name in names:
            r = run_one(name, seed, space, targets, args, evaluator)
            runs.append(r)
            evaluator.save()
            print(f"seed {seed} {name:11s} fitness {fmt(r['final_fitness'])} feasible {r['feasible']} "
                  f"evaluations {r['evaluations']} (own final at {r['evals_to_final']}) generations "
                  f"{r['generations']}; {r['evaluator_calls']} evaluator calls in {r['seconds']:.0f} s", flush=True)

    alt = {r["seed"]: r for r in runs if r["strategy"] == "alternate"}
    for r in runs:
        a = alt.get(r["seed"])
        r["alternate_final_fitness"] = None if a is None else a["final_fitness"]
        r["alternate_evals_to_final"] = None if a is None else a["evals_to_final"]
        if a is None or a["final_fitness"] is None or not math.isfinite(a["final_fitness"]):
            reach = math.nan  # nothing to reach
        else:
            hit = first_reach(r["curve"], a["final_fitness"])
            reach = math.inf if hit is None else float(hit)
        r["evals_to_reach_alternate"] = reach
        own = a["evals_to_final"] if a is not None else None
        if own and not math.isnan(reach):
            r["evals_ratio_vs_alternate"] = round(reach / own, 4) if math.isfinite(reach) else math.inf
            r["cost_ratio_vs_alternate"] = round(own / reach, 4) if math.isfinite(reach) else 0.0
        else:
            r["evals_ratio_vs_alternate"] = r["cost_ratio_vs_alternate"] = math.nan
    frame = pd.DataFrame([{k: r[k] for k in COLUMNS} for r in runs], columns=COLUMNS)
    for col in ("evals_to_final", "alternate_evals_to_final"):
        frame[col] = frame[col].astype("Int64")
    curves = pd.DataFrame([row for r in runs for row in r["curve"]], columns=CURVE_COLUMNS)
    atomic_write_csv(args.csv, frame)
    atomic_write_csv(args.curves, curves)
    data = str((read_checkpoint(ckpt).get("config") or {}).get("data", "?"))
    command = "python jobs/bench/bench_search.py " + shlex.join(argv)
    text = markdown(frame, args, targets, ckpt, data, evaluator, time.perf_counter() - t_start, command)
    atomic_write_text(args.md, text)
    print(text)
    print(f"wrote {args.csv}, {args.curves}, {args.md}")


if __name__ == "__main__":
    main()
