"""``scalenas grow``: make a saved model deeper with shared layers (see :mod:`scalenas.models.grow`).

    scalenas grow --model vit.pt --depth 2x --out vit_x2.pt
    scalenas grow --model cnn.pt --depth 2x --order interleave --adapter lowrank --rank 4 --out cnn_x2.pt
    scalenas grow --model s3.pt --to RUN/search/member_s4.json --out s4.pt     # member -> next member

The output is a model file of kind ``"grown"``: ``modelio.load_model`` rebuilds it with the sharing in place.
"""
from __future__ import annotations

import argparse
import math

from scalenas.cli.common import number
from scalenas.errors import ScalenasError
from scalenas.models.grow import ADAPTERS, DEFAULT_RANK, ORDERS, grow, param_report
from scalenas.models.registry import load_model, save_model


MAX_FACTOR = 16  # --depth Nx: at most 16 times the blocks
MAX_BLOCKS = 4096  # --depth N: at most this many blocks in the grown list
MAX_RANK = 4096  # --rank: adapters wider than this are not small adjustments any more


def _depth(text: str) -> str:
    """``--depth``: a whole factor ``2x`` .. ``16x`` or a block count 2..4096, checked before the model is loaded
    (the grow module checks it against the model's blocks)."""
    t = text.strip().lower()
    try:
        value = float(t[:-1]) if t.endswith("x") else int(t)
    except ValueError:
        raise ScalenasError(f"--depth: expected a factor like 2x or a block count like 12, got {text!r}") from None
    if t.endswith("x"):
        if not math.isfinite(value) or value != int(value) or not 1 < value <= MAX_FACTOR:
            raise ScalenasError(f"--depth: the factor must be a whole number greater than 1 and at most "
                                f"{MAX_FACTOR}x, got {text!r}")
        return f"{int(value)}x"
    if not 2 <= value <= MAX_BLOCKS:
        raise ScalenasError(f"--depth: the block count must be 2..{MAX_BLOCKS}, got {text!r}")
    return str(value)


def add_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``grow`` subcommand to the scalenas CLI (``set_defaults(func=run)``)."""
    p = subparsers.add_parser(
        "grow", help="grow a trained model deeper with shared layers and small adapters",
        description="Insert blocks that reuse the tensors of existing blocks (ScaleNet-style growing); "
                    "every block instance gets its own small adapter. Prints the parameter overhead with "
                    "shared tensors counted once.")
    p.add_argument("--model", required=True, metavar="FILE", help="scalenas model file to grow")
    p.add_argument("--to", default=None, metavar="MEMBER_JSON",
                   help="grow a trained CNN member into this larger member of the same base network (deeper, "
                   "wider, higher resolution; function preserving) instead of --depth")
    init = p.add_mutually_exclusive_group()
    init.add_argument("--copy", dest="depth_init", action="store_const", const="copy",
                      help="--to: extra layers start as copies of same-op layers that add zero (default)")
    init.add_argument("--fresh", dest="depth_init", action="store_const", const="fresh",
                      help="--to: extra layers start freshly initialised, adding zero")
    p.add_argument("--seed", type=number("--seed", int, min=0), default=0,
                   help="--to: seed of the channel replicas and weight splits (default 0)")
    p.add_argument("--depth", default=None, metavar="2x|N", type=_depth,
                   help=f"factor per block list (2x .. {MAX_FACTOR}x) or total blocks N (2..{MAX_BLOCKS}) of a "
                   "single block list")
    p.add_argument("--order", choices=ORDERS, default="stack",
                   help="stack: [1..L,1..L] (default); interleave: [1,1,2,2,...]")
    p.add_argument("--adapter", choices=ADAPTERS, default="parallel",
                   help="per-instance adjustment parameters (default parallel)")
    p.add_argument("--rank", type=number("--rank", int, min=1, max=MAX_RANK), default=DEFAULT_RANK,
                   help=f"adapter rank, 1..{MAX_RANK} (default {DEFAULT_RANK})")
    p.add_argument("--scale", type=number("--scale", float), default=1.0,
                   help="adapter output scale s, a finite number (default 1.0)")
    p.add_argument("--blocks", nargs="+", metavar="NAME", default=None,
                   help="dotted path(s) of the block list(s) to grow (default: blocks / stages)")
    p.add_argument("--share-norms", action="store_true",
                   help="share LayerNorm tensors too (BatchNorm is always per-instance)")
    p.add_argument("--freeze-shared", action="store_true",
                   help="mark inherited weights frozen: only adapters and per-instance norms train")
    p.add_argument("--space", default=None, metavar="NAME|FILE",
                   help="--to: the member's space (default: the one its JSON names)")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the grown model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load ``--model``, grow it, save it atomically to ``--out``, print the parameter report."""
    if (args.to is None) == (args.depth is None):
        raise ScalenasError("grow: give --depth (shared layers) or --to MEMBER_JSON (the next member), not both")
    if args.to is not None:
        return _grow_to_member(args)
    model = load_model(args.model)
    grown = grow(model, args.depth, order=args.order, adapter=args.adapter, rank=args.rank,
                 scale=args.scale, share_norms=args.share_norms, block_lists=args.blocks,
                 frozen_shared=getattr(args, "freeze_shared", False))
    save_model(args.out, grown)
    report = param_report(model, grown)
    depths = ", ".join(f"{path} {len(set(src))} -> {len(src)}" for path, src in grown.source_map().items())
    print(f"grown {args.model} -> {args.out} ({args.order}, adapter {args.adapter}"
          f"{'' if args.adapter == 'none' else f' rank {args.rank}'})")
    print(f"depth: {depths}")
    print(f"parameters: original {report['original']:,}, grown {report['grown']:,} "
          f"(shared tensors counted once), overhead {report['overhead_pct']:.2f} %")
    return 0


def _grow_to_member(args: argparse.Namespace) -> int:
    from scalenas.models.grow_member import grow_to
    from scalenas.spaces.arch import load_arch
    from scalenas.spaces.flops import count_params
    from scalenas.spaces.space import space_differences

    model = load_model(args.model)
    space_name = getattr(getattr(model, "subnet", None), "space", None)
    if space_name is None:
        raise ScalenasError(f"--to: {args.model} is not a scalenas CNN member (kind "
                            f"{getattr(model, 'model_kind', '?')!r})")
    target, target_space = load_arch(args.to, args.space, allow_outside=True)
    if model.space is not None and target_space.content_key != model.space.content_key:
        raise ScalenasError(f"--to {args.to}: the member is of space {target_space.name!r} "
                            f"({space_differences(model.space, target_space) or 'other content'}: model vs member); "
                            "grow within one space")
    grown = grow_to(model, target, depth_init=args.depth_init or "copy", seed=args.seed)
    save_model(args.out, grown, extra={"source": f"grown from {args.model}"})
    print(f"grown {args.model} ({model.subnet.short()}) -> {args.out} ({target.short()}), "
          f"{count_params(model):,} -> {count_params(grown):,} params; function preserving "
          f"(extra layers: {args.depth_init or 'copy'})")
    return 0

