"""``scalenas latency``: measured latency tables of a space on this device, and predictions from them.

    scalenas latency build --space digits-tiny --runtime onnxruntime --threads 1 --out table.csv
    scalenas latency predict --table table.csv --arch member_s4.json

``build`` times every layer configuration the space can produce (``--lazy``: only the calibration networks' now,
the others the first time a prediction needs them) and the calibration networks the per-network overhead is
fitted to; running it again on an interrupted table resumes it. ``predict`` prints an architecture's predicted
latency (sum of its layers + overhead). docs/method.md ("Latency") says what is measured.
"""
from __future__ import annotations

import argparse

from scalenas.cli.common import add_option_flags, given

# LatencyOptions keys that are flags (defaults, ranges and help come from the dataclass)
BUILD_FLAGS = ("device", "runtime", "batch", "threads", "max_stage", "lazy", "clock", "warmup", "repeats", "min_time",
               "passes", "calibration", "seed")


def add_parser(sub) -> None:
    from scalenas.latency.table import LatencyOptions

    p = sub.add_parser("latency", help="latency tables of a space measured on this device, and predictions",
                       description="Per-layer latency tables measured on this machine (docs/method.md, 'Latency'): "
                       "'build' one, 'predict' an architecture's latency from one.")
    cmds = p.add_subparsers(dest="latency_command", metavar="{build,predict}")
    b = cmds.add_parser("build", help="time every layer configuration of a space (resumable)",
                        description="Time every layer configuration a subnet of the space (and an extrapolated "
                        "member up to --max-stage) can contain, with warm-up, repeats and the median over "
                        "interleaved passes, plus whole calibration networks for the overhead fit. Rows are appended "
                        "as they are measured: an interrupted build keeps them and the same command resumes it.")
    b.add_argument("--space", required=True, help="space name or YAML file")
    b.add_argument("--out", required=True, help="table file (.csv); an existing one with the same settings is resumed")
    add_option_flags(b, LatencyOptions, BUILD_FLAGS)
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_build)

    q = cmds.add_parser("predict", help="predicted latency of an architecture from a table",
                        description="The sum of the architecture's layer latencies plus the fitted per-network "
                        "overhead, in ms.")
    q.add_argument("--table", required=True, help="latency table file (scalenas latency build)")
    q.add_argument("--arch", required=True, help="architecture JSON file or inline JSON")
    q.add_argument("--space", default=None, help="space name or YAML file (default: the one the JSON names)")
    q.add_argument("--lazy", action="store_true", help="time layers the table lacks now (and append them)")
    q.add_argument("--allow-other-device", action="store_true",
                   help="use a table built on another device or runtime version (with a warning)")
    q.set_defaults(func=cmd_predict)
    p.set_defaults(func=lambda args: _no_subcommand(p))


def _no_subcommand(p: argparse.ArgumentParser) -> int:
    p.error("give a subcommand: build or predict")
    return 2


def cmd_build(args: argparse.Namespace) -> int:
    from scalenas.latency.layers import config_counts
    from scalenas.latency.table import LatencyOptions, build_table
    from scalenas.latency.targets import format_latency
    from scalenas.spaces.space import load_space

    options = LatencyOptions(**given(args, BUILD_FLAGS, LatencyOptions))
    space = load_space(args.space)
    done = build_table(space, args.out, options, progress=not args.no_progress)
    counts = config_counts(space, options.max_stage)
    o = done.overhead
    print(f"{done.path}: space {space.name} ({counts['total']} layer configurations: {counts['stem']} stem, "
          f"{counts['block']} block, {counts['head']} head; {done.configs} in this table's scope"
          f"{', the rest measured on demand' if options.lazy else ''})")
    print(f"  {done.measured} rows timed in {done.seconds:.0f} s, {done.kept} kept from an earlier run; "
          f"{done.networks} calibration networks; overhead fit: MAPE {o.mape:.1%}, max error {o.max_error:.1%}, "
          f"{format_latency(o.coef[0])} per network")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from scalenas.latency.table import LatencyTable
    from scalenas.latency.targets import format_latency
    from scalenas.spaces.arch import load_arch
    from scalenas.spaces.flops import subnet_flops_params

    subnet, space = load_arch(args.arch, args.space, allow_outside=True)
    table = LatencyTable.open(args.table, space, lazy=args.lazy, allow_other_device=args.allow_other_device)
    layers, overhead = table.predict_layers(subnet)
    flops = subnet_flops_params(space, subnet)[0]
    print(f"{format_latency(layers + overhead)} predicted ({format_latency(layers)} layers + "
          f"{format_latency(overhead)} overhead; {flops / 1e6:.2f} MFLOPs)")
    print(table.describe())
    return 0
