"""Search reports: every file is written atomically, so an interrupted search never leaves a torn report.

Files in the output folder (columns documented in :func:`write_reports`):
``pareto.csv``, ``family.csv``, ``chain.json``, ``best.json``, ``search_log.csv``, ``pareto.png``.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from scalenas.spaces.flops import FLOPS_CONVENTION
from scalenas.io import atomic_write_bytes, atomic_write_csv, atomic_write_json
from scalenas.runs import SearchFolder

if TYPE_CHECKING:  # reports read the results of a search, never the strategy that fed them
    from scalenas.search.results import SearchResults

MEMBER_METRICS = ["top1", "top1_se", "loss", "loss_se"]  # per member: both metrics and their bootstrap SE
PARETO_COLUMNS = ["generation", "candidate", "stage", "target_flops", "flops", "params", "resolution", "depth_mult",
                  "width_mult", *MEMBER_METRICS, "feasible", "is_pareto", "arch"]
FAMILY_COLUMNS = ["stage", "kind", "target_flops", "flops", "params", "resolution", "depth_mult", "width_mult",
                  *MEMBER_METRICS, "feasible", "arch"]
LATENCY_COLUMNS = ["target_latency_ms", "latency_ms"]  # after "params", in searches with a latency table (predicted)
LOG_COLUMNS = ["generation", "best_fitness", "fitness_noise", "mean_fitness", "mean_fitness_noise", "tie_width",
               "feasible_share", "evaluations", "evaluations_per_s", "gave_up"]


def pareto_mask(frame: pd.DataFrame, metric: str = "top1") -> np.ndarray:
    """Non-dominated rows of ``frame`` within each stage (fewer FLOPs and a better ``metric`` are better:
    higher ``top1``, or lower ``loss``).

    A row is dominated when another row of its stage has flops <= and top1 >= (loss <=) with one of them strict.
    Rows without the metric (failed evaluations) are never on the front. Sort-based, O(n log n) per stage.
    """
    mask = np.zeros(len(frame), dtype=bool)
    if frame.empty:
        return mask
    if metric not in ("top1", "loss"):
        raise ValueError(f"pareto_mask: metric must be top1 or loss, got {metric!r}")
    top1 = pd.to_numeric(frame[metric], errors="coerce") * (1.0 if metric == "top1" else -1.0)
    for _, idx in frame.groupby("stage").groups.items():
        sub = pd.DataFrame({"flops": frame.loc[idx, "flops"].astype(float), "top1": top1.loc[idx]}).dropna()
        if sub.empty:
            continue
        group_max = sub.groupby("flops")["top1"].max().sort_index()
        # best top-1 among strictly fewer FLOPs: the running max of the previous FLOPs groups
        prev_max = group_max.cummax().shift(1, fill_value=-np.inf)
        same = sub["flops"].map(group_max)
        before = sub["flops"].map(prev_max)
        front = (before < sub["top1"]) & (same <= sub["top1"])
        mask[frame.index.get_indexer(front.index[front.to_numpy()])] = True
    return mask


def with_latency(columns: list[str], latency: bool) -> list[str]:
    """``columns`` with :data:`LATENCY_COLUMNS` after ``params`` when the search had latency targets."""
    if not latency:
        return list(columns)
    i = columns.index("params") + 1
    return [*columns[:i], *LATENCY_COLUMNS, *columns[i:]]


def pareto_frame(results: "SearchResults") -> pd.DataFrame:
    columns = with_latency(PARETO_COLUMNS, results.objective.latency is not None)
    frame = pd.DataFrame(results.pareto_rows(), columns=[c for c in columns if c != "is_pareto"])
    frame.insert(columns.index("is_pareto"), "is_pareto", pareto_mask(frame, results.metric))
    return frame


def family_frame(best: dict[str, Any]) -> pd.DataFrame:
    family = best.get("family", [])
    columns = with_latency(FAMILY_COLUMNS, any("latency_ms" in r for r in family))
    rows = [{**{k: r[k] for k in columns if k in r}, "kind": "searched"} for r in family]
    return pd.DataFrame(rows, columns=columns)


def chain_report(results: "SearchResults", best: dict[str, Any]) -> dict[str, Any]:
    """The best chain (indices and values) and, for strategies that learn one, the Markov chain."""
    matrices = results.transitions
    return {"strategy": results.strategy, "space": results.space.name,
            "chain": best.get("chain", []),
            "dimensions": ["depth", "width", "resolution"],
            "matrices": matrices,
            "note": None if matrices is not None else f"strategy {results.strategy!r} holds no transition model"}


def best_report(results: "SearchResults", best: dict[str, Any]) -> dict[str, Any]:
    return {"space": results.space.name, "strategy": results.strategy, "base": best.get("base"),
            "chain": [{k: x[k] for k in ("depth", "width", "resolution")} for x in best.get("chain", [])],
            "metric": best.get("metric", results.metric), "fitness": best.get("fitness"),
            "fitness_noise": best.get("fitness_noise"), "feasible": best.get("feasible"),
            "targets": results.targets, "tolerance": results.tolerance,
            **({} if results.objective.latency is None else
               {"latency_targets": [float(t) for t in results.objective.latency.targets]}),
            "flops_convention": FLOPS_CONVENTION,
            "family": [{"stage": r["stage"], "arch": r["arch"], "flops": r["flops"],
                        **{k: r[k] for k in LATENCY_COLUMNS if k in r},
                        **{k: r.get(k) for k in MEMBER_METRICS}} for r in best.get("family", [])],
            **({"bases": best["bases"]} if "bases" in best else {})}


def plot_pareto(frame: pd.DataFrame, family: pd.DataFrame, title: str) -> bytes:
    """PNG bytes: top-1 vs FLOPs of every evaluated subnet, one colour per stage, the family highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.92)  # fixed margins: tight_layout costs 0.15 s
    try:
        data = frame.dropna(subset=["top1"])
        for stage, group in data.groupby("stage"):
            ax.scatter(group["flops"], group["top1"], s=10, alpha=0.5, label=f"stage {stage}")
        fam = family.dropna(subset=["top1"])
        if not fam.empty:
            ax.plot(fam["flops"], fam["top1"], "k-*", markersize=12, label="best family")
        if not data.empty:
            ax.set_xscale("log")
            ax.legend(fontsize=8)
        return finish_plot(fig, ax, title, "supernet top-1")
    finally:
        plt.close(fig)


def finish_plot(fig, ax, title: str, ylabel: str) -> bytes:
    """Label a FLOPs-vs-accuracy axis the same way in every plot and return the figure as PNG bytes."""
    ax.set_xlabel(f"FLOPs ({FLOPS_CONVENTION})")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_reports(out_dir: str | Path, results: "SearchResults") -> dict[str, Path]:
    """Write every report of a search's ``results`` into ``out_dir`` (atomically); returns their paths.

    - ``pareto.csv``: one row per evaluated (candidate, stage): generation, candidate, stage, target_flops,
      flops, params, resolution, depth_mult, width_mult, top1, top1_se, loss, loss_se, feasible, is_pareto
      (non-dominated in FLOPs vs the search's metric within its stage), arch (canonical subnet JSON).
    - ``family.csv``: the best family, one row per stage (kind = "searched").
    - ``chain.json``: the best chain as indices and values; pi and every T_s with row/column labels.
    - ``best.json``: space, base, chain (d, w, r per stage 1..S), metric, fitness and its noise, targets,
      tolerance, FLOPs convention.
    - ``search_log.csv``: per generation best fitness and its noise, mean fitness and mean noise, the tie width,
      feasible share, cumulative unique evaluations, evaluations/s and the constrained samplers that gave up.
    - ``pareto.png``: top-1 vs FLOPs, per-stage colours, the family highlighted.
    """
    out = SearchFolder(out_dir)
    best = results.best()
    pareto = pareto_frame(results)
    family = family_frame(best)
    paths = {
        "pareto": atomic_write_csv(out.file(out.PARETO), pareto),
        "family": atomic_write_csv(out.file(out.FAMILY), family),
        "chain": atomic_write_json(out.file(out.CHAIN), chain_report(results, best)),
        "best": atomic_write_json(out.file(out.BEST), best_report(results, best)),
        "search_log": atomic_write_csv(out.file(out.LOG), pd.DataFrame(results.history, columns=LOG_COLUMNS)),
    }
    png = plot_pareto(pareto, family, f"{results.space.name}: {results.strategy} search")
    paths["plot"] = atomic_write_bytes(out.file(out.PLOT), png)
    return paths
