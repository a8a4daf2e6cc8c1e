"""Inspecting spaces and subnets: ``space show|list``, ``sample``, ``flops``, ``export``."""
from __future__ import annotations

import argparse
import json

from scalenas.cli.common import number
from scalenas.errors import ScalenasError
from scalenas.io import SEED_RANGE

MAX_SAMPLES = 100_000  # sample --n


def _space_arg(args: argparse.Namespace):
    from scalenas.spaces.space import load_space

    return load_space(args.space) if getattr(args, "space", None) else None


def _read_arch(args: argparse.Namespace, allow_outside: bool = True):
    """(subnet, space) of ``--arch``: the space is ``--space`` when given, else the one the JSON names."""
    from scalenas.spaces.arch import load_arch

    return load_arch(args.arch, _space_arg(args), allow_outside=allow_outside)


# ------------------------------------------------------------------ space show / list
def cmd_space_show(args: argparse.Namespace) -> int:
    from scalenas.spaces.arch import extreme_subnets
    from scalenas.spaces.flops import subnet_flops_params
    from scalenas.spaces.space import load_space

    space = load_space(args.space)
    print(f"space {space.name}  ({space.path})")
    print(f"  input {space.in_channels}x{space.base_resolution}x{space.base_resolution}, {space.num_classes} classes,"
          f" coupling n={space.coupling}, width rounding {space.width_rounding}"
          + (f" {space.width_multiple}" if space.width_rounding == "multiple" else "") + f", growth {space.growth}")
    print(f"  stem   conv{space.stem_kernel}x{space.stem_kernel} stride {space.stem_stride} -> {space.stem_channels}")
    for i, st in enumerate(space.stages):
        print(f"  stage {i + 1}  {st.channels:>4} ch  1..{st.max_layers} layers  stride {st.stride}  expand {st.expand}"
              f"  ops {', '.join(st.ops)}  ({space.positions(i)} supernet positions)")
    print(f"  head   conv1x1 -> {space.head_channels}, pool, linear -> {space.num_classes}")
    print(f"  base networks: {space.num_base_networks():,}")
    print("  scaling stages (FLOPs = fvcore MACs, batch 1):")
    print(f"    {'s':>2} {'P(s)':>5}  {'depth':<18} {'width':<18} {'resolution':<14} {'min FLOPs':>12} {'max FLOPs':>12}"
          f" {'min params':>11} {'max params':>11}")
    for s, sc in enumerate(space.scaling):
        small, large = extreme_subnets(space, s)
        f0, p0 = subnet_flops_params(space, small)
        f1, p1 = subnet_flops_params(space, large)
        rng = lambda v: f"{v[0]}" if len(v) == 1 else f"{v[0]}..{v[-1]} ({len(v)})"  # noqa: E731
        print(f"    {s:>2} {space.stage_weights[s]:>5.2f}  {rng(sc.depth):<18} {rng(sc.width):<18} "
              f"{rng(sc.resolution):<14} {_fmt(f0):>12} {_fmt(f1):>12} {_fmt(p0):>11} {_fmt(p1):>11}")
    return 0


def _fmt(n: float) -> str:
    from scalenas.spaces.targets import format_flops

    return format_flops(n, decimals=3)


# ------------------------------------------------------------------ sample
def cmd_sample(args: argparse.Namespace) -> int:
    import random

    from scalenas.spaces.arch import arch_record, sample_subnet
    from scalenas.spaces.flops import subnet_flops_params
    from scalenas.spaces.space import load_space

    space = load_space(args.space)
    rng = random.Random(args.seed)
    for _ in range(args.n):
        stage, sub = sample_subnet(space, rng, stage=args.stage)
        flops, params = subnet_flops_params(space, sub)
        row = arch_record(sub, space)  # a user's space is named by its file (absolute path) and content key
        row.update({"stage": stage, "flops": flops, "params": params})
        print(json.dumps(row))
    return 0


# ------------------------------------------------------------------ flops
def cmd_flops(args: argparse.Namespace) -> int:
    from scalenas.spaces.arch import derive_subnet
    from scalenas.spaces.flops import FLOPS_CONVENTION, flops_params, fvcore_flops

    sub, space = _read_arch(args)
    derived = derive_subnet(space, sub)
    flops, params = flops_params(derived)
    out = {"arch": sub.to_dict(), "stage": space.stage_of(sub.depth, sub.width, sub.resolution),
           "flops": flops, "params": params, "convention": FLOPS_CONVENTION}
    if args.check_fvcore:
        from scalenas.models.standalone import StandaloneNet

        fv = fvcore_flops(StandaloneNet(derived), derived.resolution, derived.in_channels)
        out.update({"fvcore_flops": fv, "agree": fv == flops})
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{sub.short()}  (scaling stage {out['stage'] if out['stage'] is not None else 'outside the space'})")
        print(f"FLOPs  {flops:,} ({_fmt(flops)})   [{FLOPS_CONVENTION}]")
        print(f"params {params:,} ({_fmt(params)})")
        if args.check_fvcore:
            print(f"fvcore {out['fvcore_flops']:,}  -> {'agree' if out['agree'] else 'DISAGREE'}")
    return 0 if out.get("agree", True) else 1


# ------------------------------------------------------------------ export
def cmd_export(args: argparse.Namespace) -> int:
    from scalenas.train.checkpoint import load_supernet
    from scalenas.spaces.flops import subnet_flops_params
    from scalenas.models.registry import save_model
    from scalenas.models.standalone import StandaloneNet
    from scalenas.models.supernet import export_subnet, fits_supernet

    if (args.arch is None) == (args.model is None):
        raise ScalenasError("export: give --arch (a subnet) or --model (a model file), not both")
    fmt = args.format or ("onnx" if args.model else "pt")
    if args.model is not None:
        return _export_model_file(args, fmt)
    if fmt == "onnx":
        raise ScalenasError("--format onnx: export a model file (--model FILE); build it first with --arch ... "
                            "--out m.pt")
    sub, space = _read_arch(args)
    if args.supernet:
        supernet = load_supernet(args.supernet, expect_space=space)
        if not fits_supernet(space, sub):
            raise ScalenasError(f"--arch {sub.short()} lies outside the supernet's scaling stages; "
                                "export it without --supernet (fresh weights)")
        model = export_subnet(supernet, sub, side=args.side)
        source = f"supernet {args.supernet} (coupling side {args.side})"
    else:
        model = StandaloneNet.from_subnet(space, sub)
        source = "fresh initialisation"
    flops, params = subnet_flops_params(space, sub)
    save_model(args.out, model, extra={"flops": flops, "source": source})
    print(f"wrote {args.out}: {sub.short()}, {_fmt(flops)} FLOPs, {_fmt(params)} params, weights from {source}")
    print("load it with: from scalenas.models.registry import load_model; model = load_model(PATH)")
    return 0


def _export_model_file(args: argparse.Namespace, fmt: str) -> int:
    from scalenas.models.onnx_export import check_onnx, export_onnx
    from scalenas.models.registry import load_model

    if fmt != "onnx":
        raise ScalenasError("--model: the only conversion is --format onnx")
    if args.supernet or args.space:
        raise ScalenasError("--model: --supernet and --space apply to --arch only")
    model = load_model(args.model)
    path = export_onnx(model, args.out)
    try:
        diff = check_onnx(model, path)
        check = f"onnxruntime vs PyTorch max abs diff {diff:.2e}"
    except ScalenasError:
        check = "not checked (onnxruntime is not installed)"
    print(f"wrote {path}: {getattr(model, 'model_kind', '?')} model from {args.model} (dynamic batch); {check}")
    return 0


def cmd_space_list(args: argparse.Namespace) -> int:
    from scalenas.spaces.space import shipped_spaces

    print("\n".join(shipped_spaces()))
    return 0


# ------------------------------------------------------------------ parser
def add_parser(sub) -> None:
    sp = sub.add_parser("space", help="inspect search spaces")
    spsub = sp.add_subparsers(dest="space_command", metavar="ACTION", parser_class=type(sp))
    show = spsub.add_parser("show", help="stages, ops, scaling stages, FLOPs/params ranges of a space")
    show.add_argument("space", help="shipped space name (digits-tiny, cifar-mbv3, scalenet-mbv3) or a YAML path")
    show.set_defaults(func=cmd_space_show)
    lst = spsub.add_parser("list", help="list the shipped spaces")
    lst.set_defaults(func=cmd_space_list)
    def no_action(args: argparse.Namespace) -> int:
        sp.print_help()
        raise ScalenasError("space: give an action, show or list (see scalenas space --help)")

    sp.set_defaults(func=no_action)

    sa = sub.add_parser("sample", help="random subnets as JSON lines, with flops and params")
    sa.add_argument("--space", required=True, help="space name or YAML path")
    sa.add_argument("--n", type=number("--n", int, min=1, max=MAX_SAMPLES), default=5,
                    help=f"number of subnets, 1..{MAX_SAMPLES} (default 5)")
    sa.add_argument("--seed", type=number("--seed", int, min=SEED_RANGE[0], max=SEED_RANGE[1]), default=0,
                    help="random seed (default 0)")
    sa.add_argument("--stage", type=number("--stage", int, min=0), default=None,
                    help="scaling stage to sample from (default: hierarchical sampling over all stages)")
    sa.set_defaults(func=cmd_sample)

    fl = sub.add_parser("flops", help="FLOPs and params of one subnet (optionally checked against fvcore)")
    fl.add_argument("--space", default=None, help="space (default: the one named in the JSON)")
    fl.add_argument("--arch", required=True, help="architecture JSON file or inline JSON string")
    fl.add_argument("--check-fvcore", action="store_true", help="also trace the model with fvcore and compare")
    fl.add_argument("--json", action="store_true", help="print one JSON object")
    fl.set_defaults(func=cmd_flops)

    ex = sub.add_parser("export", help="build a standalone model file for a subnet, or export a model file to ONNX",
                        description="--arch: a standalone model file (.pt) of a subnet (fresh weights or copied from "
                        "--supernet). --model FILE --format onnx: any scalenas model file as ONNX (dynamic batch; "
                        "needs pip install 'scalenas[export]').")
    ex.add_argument("--space", default=None, help="space (default: the one named in the JSON)")
    ex.add_argument("--arch", default=None, help="architecture JSON file or inline JSON string")
    ex.add_argument("--model", default=None, help="a scalenas model file to convert (with --format onnx)")
    ex.add_argument("--format", choices=("pt", "onnx"), default=None,
                    help="output format: pt (scalenas model file, default for --arch) or onnx (default for --model)")
    ex.add_argument("--supernet", default=None, help="supernet checkpoint to copy weights from (else fresh init)")
    ex.add_argument("--side", type=int, default=0, choices=(0, 1), help="coupling side of the slices (default 0)")
    ex.add_argument("--out", required=True, help="output file (.pt model file, or .onnx)")
    ex.set_defaults(func=cmd_export)
