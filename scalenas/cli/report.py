"""``scalenas report`` (the family of a search, with plots) and ``scalenas demo`` (the whole pipeline).

    scalenas report                          # the most recent search under results/runs/
    scalenas report results/runs/RUN --format markdown
    scalenas demo                            # train-supernet -> search -> extrapolate -> report, CPU

The family table lists the searched members (supernet top-1 = holdout top-1 after BN recalibration) and the
extrapolated ones (not evaluated by the supernet), with standalone top-1 where standalone results exist:
``standalone.csv`` in the search folder (columns ``arch``, ``holdout_top1``, optional ``test_top1`` and
``run_dir``; one row per trained model, seeds averaged) or ``result.json`` files of ``scalenas train`` runs (under results/runs/, the
search folder or its run) whose architecture is the member's. Plots: ``pareto.png`` (regenerated from
pareto.csv) and ``family.png`` (FLOPs vs top-1, log-x, extrapolated members marked).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from scalenas.errors import ScalenasError

FORMATS = ("table", "csv", "markdown", "json")
COLUMNS = ["stage", "kind", "flops", "params", "resolution", "depth_mult", "width_mult", "supernet_top1",
           "standalone_top1", "standalone_test_top1", "standalone_runs", "arch"]


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="the searched + extrapolated family as a table, with pareto.png/family.png",
                       description="Print the family of a search (searched and extrapolated members: stage, kind, "
                       "FLOPs, params, resolution, multipliers, supernet top-1, standalone top-1 where trained) and "
                       "regenerate pareto.png and family.png in the search folder. FLOPs are fvcore MACs, batch 1.")
    p.add_argument("run", nargs="?", default=None,
                   help="search folder or a training run holding one (default: the most recent search)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    p.add_argument("--no-plots", action="store_true", help="do not regenerate the plots")
    p.set_defaults(func=run)

    d = sub.add_parser("demo", help="the whole pipeline on the embedded digits: train-supernet, search, "
                       "extrapolate, report (CPU, minutes)",
                       description="Train the default digits supernet, search a family with a FLOPs target "
                       "chosen inside the trained space's feasible range, extrapolate 2 members beyond it and "
                       "print the family. Everything lands in one run directory.")
    d.add_argument("--out", default=None, help="run directory (default: results/runs/<time>-demo)")
    d.add_argument("--steps", type=int, default=None,
                   help=f"supernet training steps (default {DEMO_STEPS}; --quick: {QUICK_STEPS})")
    d.add_argument("--quick", action="store_true",
                   help="a smoke run: few steps, tiny search in-process (no Ray), for checking the install")
    d.add_argument("--workers", type=int, default=None,
                   help="Ray evaluation workers of the search (default: scalenas search's; --quick: 0)")
    d.add_argument("--seed", type=int, default=0, help="seed of training and search (default 0)")
    d.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads of the supernet training (default: torch's; 1 is faster on a "
                   "2-core machine busy with other work)")
    d.set_defaults(func=run_demo)


# ------------------------------------------------------------------------------------------ the family table
def _canonical(arch: Any, space) -> str | None:
    """Canonical subnet JSON (or None when it does not parse in ``space``)."""
    from scalenas.spaces.arch import parse_subnet

    try:
        obj = json.loads(arch) if isinstance(arch, str) else arch
        return parse_subnet(obj, space, allow_outside=True).to_json()
    except (ScalenasError, json.JSONDecodeError, TypeError, ValueError):
        return None


def standalone_results(folder: Path, space) -> dict[str, dict[str, Any]]:
    """canonical arch JSON -> {holdout_top1, test_top1, runs}: standalone.csv rows and result.json files."""
    import pandas as pd

    from scalenas.train.standalone import find_results
    from scalenas.train.supernet import RUNS_DIR

    rows: list[dict[str, Any]] = []
    seen_dirs: set[Path] = set()
    sa = folder / "standalone.csv"
    if sa.is_file():
        frame = pd.read_csv(sa)
        if "arch" in frame.columns and "holdout_top1" in frame.columns:
            for r in frame.to_dict("records"):
                rows.append({"arch": r["arch"], "holdout_top1": r.get("holdout_top1"),
                             "test_top1": r.get("test_top1")})
                if isinstance(r.get("run_dir"), str):  # the same model's result.json is not counted twice
                    seen_dirs.add(Path(r["run_dir"]).resolve())
    for root in (RUNS_DIR, folder, folder.parent):
        if not root.is_dir():
            continue
        for res in find_results(root):
            d = Path(res["run_dir"]).resolve()
            if d in seen_dirs or not res.get("arch_json"):
                continue
            seen_dirs.add(d)
            rows.append({"arch": res["arch_json"], "holdout_top1": res.get("holdout_top1"),
                         "test_top1": res.get("test_top1")})
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = _canonical(r["arch"], space)
        if key is None:
            continue
        acc = out.setdefault(key, {"holdout": [], "test": []})
        for name, col in (("holdout", "holdout_top1"), ("test", "test_top1")):
            v = r.get(col)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                acc[name].append(float(v))
    return {k: {"holdout_top1": sum(v["holdout"]) / len(v["holdout"]) if v["holdout"] else None,
                "test_top1": sum(v["test"]) / len(v["test"]) if v["test"] else None,
                "runs": max(len(v["holdout"]), len(v["test"]))} for k, v in out.items()}


def family_table(folder: Path):
    """The family of the search in ``folder`` as a DataFrame with :data:`COLUMNS`."""
    import pandas as pd

    from scalenas.cli.extrapolate import read_search, search_space

    found = read_search(folder, require_done=False)
    space = search_space(folder, found["best"])
    fam_path = folder / "family.csv"
    if fam_path.is_file():
        fam = pd.read_csv(fam_path)
    else:
        from scalenas.report.search_report import family_frame

        fam = family_frame(found["best"])
    if "kind" not in fam.columns:
        fam["kind"] = "searched"
    fam["kind"] = fam["kind"].fillna("searched")
    trained = standalone_results(folder, space)
    rows = []
    for r in fam.to_dict("records"):
        key = _canonical(r.get("arch"), space)
        sa = trained.get(key, {}) if key else {}
        top1 = r.get("top1")
        rows.append({"stage": int(r["stage"]), "kind": r["kind"], "flops": int(r["flops"]),
                     "params": int(r["params"]), "resolution": int(r["resolution"]),
                     "depth_mult": float(r["depth_mult"]), "width_mult": float(r["width_mult"]),
                     "supernet_top1": None if top1 is None or pd.isna(top1) else float(top1),
                     "standalone_top1": sa.get("holdout_top1"), "standalone_test_top1": sa.get("test_top1"),
                     "standalone_runs": sa.get("runs", 0), "arch": key or r.get("arch")})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(["stage"], kind="stable").reset_index(drop=True)


def _display(frame):
    """Human-readable copy (no arch): FLOPs/params with units, top-1 with 4 decimals, '-' for missing."""
    from scalenas.spaces.targets import format_flops

    show = frame.drop(columns=["arch"]).copy().astype(object)
    show["flops"] = [format_flops(v) for v in frame["flops"]]
    show["params"] = [format_flops(v) for v in frame["params"]]
    show["depth_mult"] = [f"{v:.4g}" for v in frame["depth_mult"]]
    show["width_mult"] = [f"{v:.4g}" for v in frame["width_mult"]]
    for col in ("supernet_top1", "standalone_top1", "standalone_test_top1"):
        show[col] = ["-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
                     for v in frame[col]]
    return show


def to_markdown(frame) -> str:
    """A GitHub markdown table, written by hand (tabulate is not a dependency)."""
    show = _display(frame)
    cols = list(show.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in show.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |")
    return "\n".join(lines)


def render(frame, fmt: str) -> str:
    if fmt == "csv":
        return frame.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        records = json.loads(frame.to_json(orient="records", double_precision=15))
        return json.dumps(records, indent=1)
    if fmt == "markdown":
        return to_markdown(frame)
    return _display(frame).to_string(index=False)


# ------------------------------------------------------------------------------------------ plots
def plot_family(frame, title: str) -> bytes:
    """PNG bytes: top-1 vs FLOPs (log-x) of the family; extrapolated members marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scalenas.report.search_report import finish_plot

    fig, ax = plt.subplots(figsize=(7, 4.5))
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.92)
    try:
        searched = frame[frame["kind"] != "extrapolated"]
        extra = frame[frame["kind"] == "extrapolated"]
        sn = searched.dropna(subset=["supernet_top1"])
        if not sn.empty:
            ax.plot(sn["flops"], sn["supernet_top1"], "k-*", markersize=11, label="searched: supernet top-1")
        sa = frame.dropna(subset=["standalone_top1"])
        if not sa.empty:
            ax.plot(sa["flops"], sa["standalone_top1"], "o-", color="tab:blue", label="standalone top-1")
            sx = sa[sa["kind"] == "extrapolated"]
            if not sx.empty:
                ax.plot(sx["flops"], sx["standalone_top1"], "D", color="tab:red", markersize=9,
                        label="extrapolated: standalone top-1")
        for k, r in enumerate(extra.itertuples(index=False)):
            ax.axvline(r.flops, color="tab:red", linestyle="--", alpha=0.5,
                       label="extrapolated member (FLOPs)" if k == 0 else None)
            ax.text(r.flops, 0.5, f"s{r.stage} extrapolated", transform=ax.get_xaxis_transform(), rotation=90,
                    fontsize=8, color="tab:red", ha="right", va="center")
        for r in searched.itertuples(index=False):
            ax.annotate(f"s{r.stage}", (r.flops, 0.02), xycoords=("data", "axes fraction"), fontsize=8,
                        color="0.3", ha="center", va="bottom")
        if not frame.empty:
            ax.set_xscale("log")
            lo, hi = float(frame["flops"].min()), float(frame["flops"].max())
            ax.set_xlim(lo / 1.4, hi * 1.4)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
        return finish_plot(fig, ax, title, "top-1")
    finally:
        plt.close(fig)


def write_plots(folder: Path, frame) -> list[Path]:
    import pandas as pd

    from scalenas.io import atomic_write_bytes
    from scalenas.report.search_report import family_frame, plot_pareto

    best = json.loads((folder / "best.json").read_text())
    name = f"{best.get('space', '?')}: {best.get('strategy', '?')} search"
    paths = []
    if (folder / "pareto.csv").is_file():
        pareto = pd.read_csv(folder / "pareto.csv")
        fam = family_frame(best)
        paths.append(atomic_write_bytes(folder / "pareto.png", plot_pareto(pareto, fam, name)))
    paths.append(atomic_write_bytes(folder / "family.png", plot_family(frame, f"{name}: family")))
    return paths


def report(run_dir: str | None, fmt: str = "table", plots: bool = True) -> tuple[str, list[Path], Path]:
    """(rendered table, plot paths, search folder)."""
    from scalenas.cli.extrapolate import find_search_dir

    if fmt not in FORMATS:
        raise ScalenasError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    folder = find_search_dir(run_dir)
    frame = family_table(folder)
    paths = write_plots(folder, frame) if plots else []
    return render(frame, fmt), paths, folder


def run(args: argparse.Namespace) -> int:
    import sys

    text, paths, folder = report(args.run, args.format, plots=not args.no_plots)
    print(text)
    note = (f"family of {folder} (FLOPs = fvcore MACs, batch 1; supernet top-1 = holdout after BN "
            "recalibration; standalone top-1 = holdout, mean over runs)")
    plots = "plots: " + ", ".join(str(p) for p in paths) if paths else ""
    # machine-readable formats keep stdout parseable: the notes go to stderr
    stream = sys.stdout if args.format in ("table", "markdown") else sys.stderr
    print(note, file=stream)
    if plots:
        print(plots, file=stream)
    return 0


# ------------------------------------------------------------------------------------------ demo
DEMO_STEPS = 800  # the default digits job
QUICK_STEPS = 40


def pick_target(space, tolerance: float = 0.1) -> int:
    """A top-stage FLOPs target every stage can reach: the top stage's midpoint, else a scan of its range."""
    from scalenas.spaces.targets import check_targets, feasible_ranges, stage_targets

    lo, hi = feasible_ranges(space)[-1]
    candidates = [(lo + hi) / 2, math.sqrt(lo * hi)]
    candidates += [lo * (hi / lo) ** (k / 20) for k in range(1, 20)]
    for t in candidates:
        try:
            check_targets(space, stage_targets(space, str(int(t))), tolerance)
            return int(t)
        except ScalenasError:
            continue
    raise ScalenasError(f"space {space.name!r}: no top-stage target between {lo} and {hi} FLOPs is reachable by "
                        f"every stage at growth {space.growth}")


def run_demo(args: argparse.Namespace) -> int:
    from scalenas.train.checkpoint import CKPT_NAME, checkpoint_space, read_checkpoint
    from scalenas.cli.main import main
    from scalenas.train.config import load_job
    from scalenas.spaces.targets import format_flops
    from scalenas.train.supernet import RUNS_DIR, train_supernet

    steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else DEMO_STEPS)
    if steps < 1:
        raise ScalenasError(f"--steps must be >= 1, got {steps}")
    if args.workers is not None and args.workers < 0:
        raise ScalenasError(f"--workers must be >= 0, got {args.workers}")
    out = Path(args.out) if args.out else RUNS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-demo"
    if (out / CKPT_NAME).exists():
        raise ScalenasError(f"{out} already holds a run; choose another --out")
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    print(f"[1/4] train-supernet: digits job, {steps} steps -> {out}", flush=True)
    if args.threads is not None and args.threads < 1:
        raise ScalenasError(f"--threads must be >= 1, got {args.threads}")
    cfg = load_job("digits", {"steps": steps, "seed": args.seed, "threads": args.threads,
                              "checkpoint_every": max(50, min(200, steps))})
    summary = train_supernet(cfg, out, progress=True)
    if not summary["finished"]:
        return 130
    panel = summary.get("panel")
    if panel is not None:
        print(f"      panel mean holdout top-1 {panel['holdout_top1'].mean():.4f}")
    times["train-supernet"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    space = checkpoint_space(read_checkpoint(out / CKPT_NAME), str(out / CKPT_NAME))
    target = pick_target(space)
    pop, gens = (6, 2) if args.quick else (8, 4)
    workers = args.workers if args.workers is not None else (0 if args.quick else None)
    print(f"[2/4] search: markov, target {format_flops(target)} at the top stage (inside the trained space's "
          f"feasible range), population {pop}, {gens} generations", flush=True)
    argv = ["search", "--run", str(out), "--target-flops", str(target), "--population", str(pop),
            "--generations", str(gens), "--elites", "2", "--seed", str(args.seed), "--no-progress"]
    if workers is not None:
        argv += ["--workers", str(workers)]
    if main(argv) != 0:
        raise ScalenasError("demo: the search failed (see above)")
    times["search"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    print("[3/4] extrapolate: 2 members beyond the last stage", flush=True)
    if main(["extrapolate", "--run", str(out / "search"), "--steps", "2"]) != 0:
        raise ScalenasError("demo: extrapolation failed (see above)")
    times["extrapolate"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    print("[4/4] report", flush=True)
    text, paths, folder = report(str(out / "search"), "table")
    times["report"] = time.perf_counter() - t3
    total = time.perf_counter() - t0
    print(text)
    print("plots: " + ", ".join(str(p) for p in paths))
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f"; total {total:.0f} s")
    print(f"run directory: {out}  (train the extrapolated members with: scalenas train --arch "
          f"{folder}/member_s{space.num_scaling_stages + 1}.json)")
    return 0
