"""Search quality at an equal evaluation budget: markov vs alternate / compound / random / independent.

    python jobs/bench/bench_search.py --supernet RUN/checkpoint.pt [--budget 150] [--seeds 3]
        [--target-flops 4M] [--strategies markov,alternate,compound,random,independent]
        [--population 8] [--elites 4] [--calib-batches 4] [--cache FILE]
        [--csv results/bench/search.csv] [--md results/bench/search.md] [--curves results/bench/search_curves.csv]

Every (strategy, seed) run gets the same budget of unique subnet evaluations (``SearchOptions.budget``, counted
by built network, as the search itself counts them) and is driven by the same ask/tell loop as
``scalenas search``. Fitness comes from ONE in-process :class:`~scalenas.search.fitness.SupernetEvaluator` (one torch
thread) behind a cache keyed by the subnet's JSON, shared by every strategy and seed: fitness is deterministic,
so a subnet that two runs both propose is scored once. Each run is still charged for every unique subnet it
asks for (``evaluations``); ``evaluator_calls`` says how many of them actually ran. ``--cache FILE`` keeps that
cache on disk between invocations (it is only reused for the same checkpoint file, calibration and device).

Recorded per run: the best family's fitness after every generation against the cumulative evaluations
(``--curves``), the final family fitness and feasibility, the evaluations at which the run first reached its
own final fitness (``evals_to_final``), and the evaluations at which it first held a feasible family at least as
fit as ``alternate``'s final family of the same seed (``evals_to_reach_alternate``, empty when never reached).
``cost_ratio_vs_alternate`` = alternate's ``evals_to_final`` / this run's ``evals_to_reach_alternate``: for
markov that is the paper's search-cost claim (>= 2.53x). Evaluations are counted at generation ends, the only
points where a strategy's best family is defined.

Writes the CSVs and the markdown summary atomically (``scalenas.io``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

os.environ.setdefault("OMP_NUM_THREADS", "1")  # set before torch is imported

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from scalenas.train.checkpoint import checkpoint_space, read_checkpoint, resolve_checkpoint  # noqa: E402
from scalenas.search.strategies import STRATEGIES, make_strategy  # noqa: E402
from scalenas.search.strategy import SearchOptions  # noqa: E402
from scalenas.search.fitness import SupernetEvaluator  # noqa: E402
from scalenas.io import atomic_write_csv, atomic_write_json, atomic_write_text  # noqa: E402
from scalenas.spaces.targets import check_targets, format_flops, stage_targets  # noqa: E402

ORDER = ("alternate", "markov", "compound", "random", "independent")  # alternate first: the others compare to it
COLUMNS = ["strategy", "seed", "budget", "evaluations", "final_fitness", "feasible", "evals_to_final",
           "evals_to_reach_alternate", "alternate_final_fitness", "cost_ratio_vs_alternate", "generations",
           "gave_up", "evaluator_calls", "seconds", "population", "elites", "target_flops", "family_flops",
           "family_top1"]
EPS = 1e-12


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
                            tolerance=args.flops_tolerance, seed=seed, budget=args.budget)
    strategy = make_strategy(name, space, targets, options)
    calls0, t0 = evaluator.calls, time.perf_counter()
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
            for row in strategy.history[before:strategy.generation]:
                curve.append({"strategy": name, "seed": seed, "generation": row["generation"],
                              "evaluations": row["evaluations"], "fitness": row["best_fitness"],
                              "feasible": feasible})
    best = strategy.best()
    fitness = best["fitness"]
    return {
        "strategy": name, "seed": seed, "budget": args.budget, "evaluations": strategy.evaluations,
        "final_fitness": fitness, "feasible": bool(best["feasible"]),
        "evals_to_final": first_reach(curve, fitness),
        "generations": strategy.generation, "gave_up": int(sum(r["gave_up"] for r in strategy.history)),
        "evaluator_calls": evaluator.calls - calls0, "seconds": round(time.perf_counter() - t0, 2),
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
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(frame: pd.DataFrame, args, targets: list[int], ckpt: Path, evaluator: CachedEvaluator,
             total_s: float) -> str:
    lines = [
        "# Search quality at an equal evaluation budget",
        "",
        f"Supernet `{ckpt}` ({evaluator.ev.space.name}); targets "
        + ", ".join(f"s{s} {format_flops(t)}" for s, t in enumerate(targets))
        + f" (±{args.flops_tolerance:.0%}); budget {args.budget} unique subnet evaluations per run; "
        f"population {args.population}, elites {args.elites}; seeds {', '.join(map(str, sorted(set(frame.seed))))}; "
        f"fitness = mean supernet holdout top-1 over stages 1..S after BN recalibration "
        f"(calibration batches: {args.calib_batches}), one shared in-process evaluator with a fitness cache.",
        "",
        "| strategy | final fitness (mean ± sd) | feasible | evaluations (mean) | evals to own final (mean) "
        "| reached alternate's final | evals to reach it (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in [s for s in ORDER if s in set(frame.strategy)]:
        g = frame[frame.strategy == name]
        fit = g.final_fitness.astype(float)
        reached = g.evals_to_reach_alternate.notna()
        lines.append(
            f"| {name} | {fit.mean():.4f} ± {fit.std(ddof=1) if len(g) > 1 else 0.0:.4f} | "
            f"{int(g.feasible.sum())}/{len(g)} | {g.evaluations.mean():.0f} | {g.evals_to_final.mean():.0f} | "
            f"{int(reached.sum())}/{len(g)} | "
            f"{fmt(float(g.evals_to_reach_alternate[reached].mean()) if reached.any() else None, 0)} |")
    m = frame[frame.strategy == "markov"]
    a = frame[frame.strategy == "alternate"].set_index("seed")
    if len(m) and len(a):
        lines += ["", "Search cost of markov relative to alternate, per seed (paper: alternate needs >= 2.53x the "
                  "evaluations of markov to reach the same fitness):", "",
                  "| seed | alternate final | alternate evals to final / total | markov final "
                  "| markov evals to reach alternate's final | ratio (alternate to final / markov) "
                  "| ratio (alternate total / markov) |", "|---|---|---|---|---|---|---|"]
        ratios, ratios_total = [], []
        for _, r in m.sort_values("seed").iterrows():
            alt = a.loc[r.seed]
            reach = r.evals_to_reach_alternate
            ok = not pd.isna(reach) and not pd.isna(alt.evals_to_final)
            ratio = float(alt.evals_to_final / reach) if ok else None
            ratio_total = float(alt.evaluations / reach) if ok else None
            if ok:
                ratios.append(ratio)
                ratios_total.append(ratio_total)
            lines.append(f"| {r.seed} | {alt.final_fitness:.4f} | {fmt(alt.evals_to_final, 0)} / {alt.evaluations} "
                         f"| {r.final_fitness:.4f} | {fmt(int(reach) if ok else None)} | {fmt(ratio, 2)} "
                         f"| {fmt(ratio_total, 2)} |")
        if ratios:
            gm = float(np.exp(np.mean(np.log(ratios))))
            lines += ["", f"markov reached alternate's final fitness in {len(ratios)}/{len(m)} seeds; geometric-mean "
                      f"cost ratio {gm:.2f}x (alternate's evaluations to its own final fitness) and "
                      f"{float(np.exp(np.mean(np.log(ratios_total)))):.2f}x (alternate's whole budget); the paper's "
                      f"claim of >= 2.53x is {'met' if gm >= 2.53 else 'not met'} on the conservative ratio."]
        else:
            lines += ["", f"markov never reached alternate's final fitness within the budget ({len(m)} seeds)."]
    lines += ["", f"Evaluations charged to budgets: {int(frame.evaluations.sum())}; evaluator calls actually run "
              f"(cache misses): {evaluator.calls} in {evaluator.seconds:.0f} s; whole benchmark {total_s:.0f} s. "
              "Evaluation counts are taken at generation ends. Per-generation curves: "
              f"`{Path(args.curves).name}`; per-run rows: `{Path(args.csv).name}`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--supernet", default=None, help="supernet checkpoint or run folder (default: latest run)")
    ap.add_argument("--budget", type=int, default=150, help="unique subnet evaluations per run (default 150)")
    ap.add_argument("--seeds", default="3", help="a count (seeds 0..N-1) or a comma list (default 3)")
    ap.add_argument("--target-flops", default="4M", help="top of the family, or T0,...,TS (default 4M)")
    ap.add_argument("--flops-tolerance", type=float, default=0.1)
    ap.add_argument("--strategies", default=",".join(ORDER), help="comma list (default: all five)")
    ap.add_argument("--population", type=int, default=8, help="candidates per generation (default 8)")
    ap.add_argument("--elites", type=int, default=4)
    ap.add_argument("--generations", type=int, default=200, help="upper bound; the budget ends the runs")
    ap.add_argument("--calib-batches", type=int, default=4, help="BN recalibration batches (search default 4)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the evaluator (default 1)")
    ap.add_argument("--cache", default=None, help="JSON file keeping fitness values between invocations")
    ap.add_argument("--csv", default=str(REPO / "results/bench/search.csv"))
    ap.add_argument("--md", default=str(REPO / "results/bench/search.md"))
    ap.add_argument("--curves", default=None, help="per-generation curves CSV (default: next to --csv, "
                    "NAME_curves.csv)")
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
        reach = None if a is None else first_reach(r["curve"], a["final_fitness"])
        r["evals_to_reach_alternate"] = reach
        r["cost_ratio_vs_alternate"] = (round(a["evals_to_final"] / reach, 4)
                                        if a is not None and reach and a["evals_to_final"] else None)
    frame = pd.DataFrame([{k: r[k] for k in COLUMNS} for r in runs], columns=COLUMNS)
    frame["evals_to_reach_alternate"] = frame["evals_to_reach_alternate"].astype("Int64")
    frame["evals_to_final"] = frame["evals_to_final"].astype("Int64")
    curves = pd.DataFrame([row for r in runs for row in r["curve"]],
                          columns=["strategy", "seed", "generation", "evaluations", "fitness", "feasible"])
    atomic_write_csv(args.csv, frame)
    atomic_write_csv(args.curves, curves)
    text = markdown(frame, args, targets, ckpt, evaluator, time.perf_counter() - t_start)
    atomic_write_text(args.md, text)
    print(text)
    print(f"wrote {args.csv}, {args.curves}, {args.md}")


if __name__ == "__main__":
    main()
