"""``scalenas extrapolate``: grow a searched family beyond its last scaling stage (docs/method.md).

    scalenas extrapolate --steps 2                       # the most recent search under results/runs/
    scalenas extrapolate --steps 3 --run results/runs/RUN/search --growth 1.8

Reads ``best.json`` (base, chain, targets, tolerance) of a finished search, calls
:func:`scalenas.search.extrapolate.extrapolate` and writes into the search folder:

* ``member_s{S+k}.json``: one architecture JSON per new member (docs/method.md fields plus stage, kind, flops,
  params, target_flops), usable as ``scalenas train --arch``;
* ``family.csv``: the searched rows plus rows of ``kind = extrapolated`` (top1 empty: not evaluated);
* ``extrapolation.json``: direction u, step lengths, FLOPs ratios, growth and tolerance.

Re-running replaces the previous extrapolated rows and member files (idempotent); fewer ``--steps`` than the
folder holds is refused unless ``--replace`` (the larger member files would go).
"""
from __future__ import annotations

import argparse

from scalenas.cli.common import number
from scalenas.report.family import extrapolate_search
from scalenas.runs import find_search_dir
from scalenas.search.extrapolate import MAX_GROWTH, MAX_STEPS
from scalenas.latency.targets import format_latency
from scalenas.spaces.targets import format_flops


def add_parser(sub) -> None:
    p = sub.add_parser(
        "extrapolate", help="extend the searched family beyond its last scaling stage",
        description="Take the best chain's per-step log-multiplier increments, form the stationary step direction "
        "u (weighted toward the last steps) and, for each new step, solve for the step length along u that "
        "multiplies FLOPs by the growth factor under the real rounding rules. New members lie outside the "
        "supernet: they are not evaluated (train them with scalenas train, or grow a smaller member).")
    p.add_argument("--steps", type=number("--steps", int, min=1, max=MAX_STEPS), required=True,
                   help=f"number of new members (1..{MAX_STEPS})")
    p.add_argument("--run", default=None, help="search folder, or a training run holding one "
                   "(default: the most recent search under results/runs/)")
    p.add_argument("--growth", type=number("--growth", float, min=1.0, min_open=True, max=MAX_GROWTH), default=None,
                   help=f"FLOPs ratio between members, > 1 and <= {MAX_GROWTH:g} (default: the search's target "
                   "ratio, else the space's)")
    p.add_argument("--tolerance", type=number("--tolerance", float, min=0.0, max=1.0, min_open=True, max_open=True),
                   default=None, help="relative FLOPs tolerance reported per member, in (0, 1) (default: the "
                   "search's)")
    p.add_argument("--lazy-latency", action="store_true",
                   help="a search run with a latency table: time the layers the table lacks now (and append them)")
    p.add_argument("--replace", action="store_true",
                   help="with fewer --steps than the folder holds: drop the larger extrapolated members (default: "
                   "refuse, so member files are never deleted silently)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    folder = find_search_dir(args.run)
    doc = extrapolate_search(folder, args.steps, args.growth, args.tolerance, replace=args.replace,
                             lazy_latency=args.lazy_latency)
    print_extrapolation(folder, doc)
    return 0


def print_extrapolation(folder, doc: dict) -> None:
    """The new members as a table (what ``scalenas extrapolate`` prints)."""
    u = doc["direction"]
    print(f"extrapolated {doc['steps']} member(s) of {folder} (space {doc['space']}, growth {doc['growth']:g}, "
          f"tolerance {doc['tolerance']:g}); direction u = (log d {u['depth']:.3f}, log w {u['width']:.3f}, "
          f"log r {u['resolution']:.3f})")
    print(f"  {'stage':>5} {'target':>9} {'FLOPs':>9} {'ratio':>6} {'params':>9} {'res':>4} {'depth':>7} {'width':>7}"
          f" {'t':>7}  within  file")
    for m in doc["members"]:
        target = format_flops(m["target_flops"]) if m.get("target_flops") else format_latency(m["target_latency_ms"])
        print(f"  {m['stage']:>5} {target:>9} {format_flops(m['flops']):>9} "
              f"{m['flops_ratio']:>6.3f} {format_flops(m['params']):>9} {m['resolution']:>4} {m['depth_mult']:>7.4f} "
              f"{m['width_mult']:>7.4f} {m['step_length']:>7.4f}  {'yes' if m['within_tolerance'] else 'NO':<6}  "
              f"{m['file']}")
    print(f"wrote {folder}/member_s*.json, family.csv (kind=extrapolated rows), extrapolation.json; "
          "members are not evaluated: train them with scalenas train --arch FILE")
