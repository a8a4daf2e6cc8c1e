"""How much of the search-cost ratio is noise? The markov / alternate evaluation ratio at relaxed thresholds.

    python jobs/bench/search_cost_noise.py --curves results/bench/search_curves.csv \
        [--curves results/bench/search_budget240_curves.csv] [--widths 0,0.001,0.002,0.003,0.005] \
        [--holdout-size 1500] [--out results/bench/search_cost_noise]

``bench_search.py`` scores the paper's search-cost claim by the evaluations markov needs to first hold a
feasible family at least as fit as alternate's final one, divided by the evaluations alternate itself needed
(target <= 1/2.53). Both searches end within about 0.001 of each other, less than the noise of the fitness, so
this script re-reads the per-generation curves (``--curves``, written by ``bench_search.py``) and recomputes the
ratio with the threshold lowered by a width w: the evaluations each strategy needs to reach alternate's final
fitness minus w (the same threshold for both). ``w = 0`` is bench_search's own measure. With
``--holdout-size N`` the summary also gives the binomial standard error of one member's top-1 on N holdout
images at alternate's mean final fitness, the scale of w at which fitness differences are no longer resolved.

Writes ``OUT.csv`` (one row per curves file, seed and width) and ``OUT.md`` atomically.
"""
from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import EPS, first_reach, geomean  # the benchmark's own rules
from bench_search import PAPER_RATIO as TARGET_RATIO

from scalenas.cli.main import OneLineParser
from scalenas.io import atomic_write_csv, atomic_write_text

REPO = Path(__file__).resolve().parents[2]


def _curve(frame: pd.DataFrame, strategy: str, seed: int) -> list[dict]:
    rows = frame[(frame["strategy"] == strategy) & (frame["seed"] == seed)].sort_values("evaluations")
    return rows.to_dict("records")


def ratios(frame: pd.DataFrame, widths: list[float]) -> pd.DataFrame:
    """Per seed and width: alternate's final fitness, the threshold, the evaluations each strategy needs to
    reach it (NaN: never), and markov's / alternate's ratio (inf when markov never reaches it)."""
    out = []
    for seed in sorted(frame.loc[frame["strategy"] == "alternate", "seed"].unique()):
        alt, mk = _curve(frame, "alternate", seed), _curve(frame, "markov", seed)
        if not alt or not mk:
            continue
        final = alt[-1]["fitness"]
        for w in widths:
            level = final - w
            ea, em = first_reach(alt, level), first_reach(mk, level)
            out.append({"seed": int(seed), "width": w, "alternate_final": final, "threshold": level,
                        "alternate_evals": ea, "markov_evals": em,
                        "ratio": (em / ea) if (em is not None and ea) else math.inf})
    return pd.DataFrame(out)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (curves, width): seeds, seeds where the ratio meets the target, the ratios, their geometric mean."""
    rows = []
    for (name, w), g in table.groupby(["curves", "width"], sort=False):
        r = g["ratio"].to_numpy(float)
        rows.append({"curves": name, "width": w, "seeds": len(r), "met": int((r <= TARGET_RATIO + EPS).sum()),
                     "ratios": " ".join("inf" if not math.isfinite(x) else f"{x:.3f}" for x in r),
                     "geo_mean": geomean(list(r))})
    return pd.DataFrame(rows)


def markdown(summ: pd.DataFrame, command: str, holdout: int | None, finals: list[float]) -> str:
    lines = ["# Search cost vs the fitness's resolution", "", "Command:", "", "```bash", command, "```", "",
             ("Per seed, the evaluations markov needs to reach alternate's final fitness minus w, divided by the "
              "evaluations alternate needs to reach the same level (w = 0: `bench_search.py`'s measure). Target "
              f"(the paper's claim): ratio <= 1/2.53 = {TARGET_RATIO:.3f}."), ""]
    if holdout:
        p = float(np.mean(finals))
        se = math.sqrt(p * (1 - p) / holdout)
        lines += [(f"Scale: one member's top-1 on {holdout} holdout images at p = {p:.4f} (alternate's mean final) "
                   f"has a binomial standard error of {se:.4f}; one image is {1 / holdout:.5f}."), ""]
    lines += ["| curves | w | seeds | ratio <= 0.395 | ratio per seed | geometric mean |", "|---|---|---|---|---|---|"]
    for r in summ.itertuples():
        geo = "inf" if not math.isfinite(r.geo_mean) else f"{r.geo_mean:.3f}"
        lines.append(f"| {r.curves} | {r.width:g} | {r.seeds} | {r.met}/{r.seeds} | {r.ratios} | {geo} |")
    lines += ["", "`inf`: markov never reached the level within its budget. Rows per seed: the CSV next to this file."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = OneLineParser(prog="search_cost_noise.py", description=__doc__.split("\n")[0])
    p.add_argument("--curves", action="append", required=True, help="a curves CSV of bench_search.py (repeatable)")
    p.add_argument("--widths", default="0,0.001,0.002,0.003,0.005", help="comma-separated threshold widths")
    p.add_argument("--holdout-size", type=int, default=None, help="holdout images (for the noise scale line)")
    p.add_argument("--out", default=str(REPO / "results" / "bench" / "search_cost_noise"), help="OUT.csv, OUT.md")
    args = p.parse_args(argv)
    try:
        widths = [float(x) for x in args.widths.split(",")]
    except ValueError:
        p.error(f"--widths: comma-separated numbers, got {args.widths!r}")
    if any(not math.isfinite(w) or w < 0 for w in widths):
        p.error(f"--widths: non-negative numbers, got {args.widths!r}")
    if args.holdout_size is not None and args.holdout_size < 1:
        p.error("--holdout-size: a positive integer")
    tables = []
    for path in args.curves:
        if not Path(path).is_file():
            p.error(f"--curves {path}: no such file")
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            p.error(f"--curves {path}: not a readable CSV ({type(exc).__name__})")
        missing = {"strategy", "seed", "evaluations", "fitness", "feasible"} - set(frame.columns)
        if missing:
            p.error(f"--curves {path}: not a bench_search.py curves CSV (missing {', '.join(sorted(missing))})")
        t = ratios(frame, widths)
        if t.empty:
            p.error(f"--curves {path}: holds no seed with both alternate and markov")
        t.insert(0, "curves", Path(path).name)
        tables.append(t)
    table = pd.concat(tables, ignore_index=True)
    summ = summary(table)
    out = Path(args.out)
    atomic_write_csv(out.with_suffix(".csv"), table)
    finals = table.groupby(["curves", "seed"])["alternate_final"].first().tolist()  # one per run, any width
    text = markdown(summ, "python jobs/bench/search_cost_noise.py " + shlex.join(argv), args.holdout_size, finals)
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
