"""``scalenas report``: the family of a search (searched + extrapolated members) with plots.

    scalenas report                          # the most recent search under results/runs/
    scalenas report results/runs/RUN --format markdown
"""
from __future__ import annotations

import argparse
import sys

from scalenas.report.family import FORMATS, report, search_data


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="the searched + extrapolated family as a table, with pareto.png/family.png",
                       description="Print the family of a search (searched and extrapolated members: stage, kind, "
                       "FLOPs, params, resolution, multipliers, supernet top-1, standalone top-1 where trained) and "
                       "regenerate pareto.png and family.png in the search folder. FLOPs are fvcore MACs, batch 1.")
    p.add_argument("run", nargs="?", default=None,
                   help="search folder or a training run holding one (default: the most recent search)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    p.add_argument("--no-plots", action="store_true", help="do not regenerate the plots")
    p.add_argument("--measure-latency", action="store_true",
                   help="time every member's model on this device (the settings of the search's latency table, else "
                   "PyTorch, CPU, batch 1, one thread) and add a measured_ms column beside the predicted latency_ms")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text, paths, folder = report(args.run, args.format, plots=not args.no_plots, measure_latency=args.measure_latency)
    print(text)
    note = (f"family of {folder} (FLOPs = fvcore MACs, batch 1; supernet top-1 = holdout after BN "
            "recalibration; standalone top-1 = holdout, mean over runs)")
    record = search_data(folder)
    if record is not None:  # one table, one dataset: say which
        note += (f"\ndata: {record['data']} ({record['num_classes']} classes, fingerprint {record['fingerprint']}); "
                 "standalone results of other data are not shown")
    plots = "plots: " + ", ".join(str(p) for p in paths) if paths else ""
    # machine-readable formats keep stdout parseable: the notes go to stderr
    stream = sys.stdout if args.format in ("table", "markdown") else sys.stderr
    print(note, file=stream)
    if plots:
        print(plots, file=stream)
    return 0


