"""Why supernet training is slow (and fp16 fails) on CUDA: the convolution backend under changing shapes.

The first GPU check (results/bench/gpu.csv, NVIDIA H200) trained digits-tiny at ~0.2 steps/s with AMP bf16 -- slower
than 2 CPU cores -- while fixed subnets evaluated at 2,000-36,000 images/s, and AMP fp16 stopped with "CUDA error:
misaligned address". A supernet step meets convolution shapes it has not seen (channel slices x resolutions x
kernels), and cuDNN builds (and may compile) an execution plan for each new shape. This script trains the same
short run under variants, each in its own subprocess (a CUDA error does not poison the next one) with its own time
limit, and reads steps/s from the trainer's log, leaving out the first log window:

    cudnn       cuDNN on (PyTorch's default), the sliced weight views as they are
    no_cudnn    torch.backends.cudnn.enabled = False: PyTorch's own conv kernels
    contiguous  cuDNN on, every sliced weight made contiguous before use (a probe of the fp16 failure)

    python jobs/bench/gpu_conv_backend.py [--variants cudnn,no_cudnn] [--amp bf16,fp16] [--steps 30]
        [--job digits|animals] [--timeout 45] [--out results/bench/gpu_conv_backend.csv]

On a CPU machine it runs the same code with ``--device cpu`` (amp is then ignored by the package): a dry run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
REPO = jobkit.REPO

VARIANTS = ("cudnn", "no_cudnn", "contiguous")
COLUMNS = ("job", "variant", "amp", "device", "status", "steps_done", "steady_steps_per_s", "images_per_s",
           "wall_s", "detail")


def child(args: argparse.Namespace) -> int:
    import torch

    from scalenas.models.supernet import SuperNet
    from scalenas.train.config import load_job
    from scalenas.train.supernet import train_supernet

    if args.variant == "no_cudnn":
        torch.backends.cudnn.enabled = False
    if args.variant == "contiguous":
        plain = SuperNet.use

        def use_contiguous(self, param, *slices):
            return plain(self, param, *slices).contiguous()

        SuperNet.use = use_contiguous
    cfg = load_job(args.job, {"steps": args.steps, "device": args.device, "amp": args.amp, "log_every": 5,
                              "checkpoint_every": args.steps, "panel_random": 0, "bn_calib_batches": 1,
                              "seed": 0})
    train_supernet(cfg, Path(args.work), progress=False)
    return 0


def summarise(work: Path, batch: int) -> tuple[int, float, float]:
    """(last logged step, steady steps/s, images/s) of the run in ``work``, as the GPU check reads its own."""
    from gpu_check import read_log, steady_steps_per_s

    rows = read_log(work) if (work / "train_log.csv").is_file() else []
    if not rows:
        return 0, float("nan"), float("nan")
    sps, _ = steady_steps_per_s(rows, batch, 1)
    return int(rows[-1]["step"]), sps, sps * batch


def main(argv: list[str] | None = None) -> int:
    ap = jobkit.parser(__doc__, prog="gpu_conv_backend.py")
    ap.add_argument("--variants", default="cudnn,no_cudnn,contiguous")
    ap.add_argument("--amp", default="bf16,fp16")
    ap.add_argument("--job", default="digits")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=45.0)
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu (dry)")
    ap.add_argument("--out", default=str(REPO / "results/bench/gpu_conv_backend.csv"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        print(f"gpu_conv_backend.py: unknown variant {bad[0]!r} (choose from {', '.join(VARIANTS)})", file=sys.stderr)
        return 2
    from scalenas.train.config import load_job

    batch = load_job(args.job, {}).batch_size
    out_rows = []
    root = Path(tempfile.mkdtemp(prefix="scalenas_conv_backend_"))
    for amp in [a for a in args.amp.split(",") if a]:
        for variant in variants:
            work = root / f"{variant}-{amp}"
            cmd = [sys.executable, __file__, "--child", "--variant", variant, "--work", str(work), "--job", args.job,
                   "--steps", str(args.steps), "--device", device, "--amp", amp]
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                rc, text = proc.returncode, proc.stdout + proc.stderr
            except subprocess.TimeoutExpired as exc:
                rc, text = "timeout", f"time limit {args.timeout:.0f} s " + str(exc.stderr or "")[-300:]
            wall = time.perf_counter() - t0
            done, sps, ips = summarise(work, batch)
            errs = [ln.strip() for ln in text.splitlines() if "Error" in ln or "error" in ln]
            status = "ok" if rc == 0 else ("timeout" if rc == "timeout" else "failed")
            detail = (errs[-1] if errs and rc != 0 else f"rc {rc}")[:200]
            r = {"job": args.job, "variant": variant, "amp": amp, "device": name, "status": status,
                 "steps_done": done, "steady_steps_per_s": round(sps, 4), "images_per_s": round(ips, 1),
                 "wall_s": round(wall, 1), "detail": detail}
            print(json.dumps(r), flush=True)
            out_rows.append(r)
    import pandas as pd

    from scalenas.io import atomic_write_csv

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out, pd.DataFrame(out_rows, columns=list(COLUMNS)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)
