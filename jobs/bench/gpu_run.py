"""The prepared GPU run (issue 24): one call on a lent CUDA machine, the most valuable measurement first.

    bash jobs/bench/gpu_run.sh [--budget 540]      # the real run (CUDA); rows land in results/bench/gpu_run*.csv
    python jobs/bench/gpu_run.py --dry              # the same code on CPU with tiny sizes (< 60 s; in the tests)
        [--phases a,b,c,d] [--out-dir DIR] [--work DIR] [--jobs N] [--seeds N] [--c-steps N] [--grow-search DIR]

Phases, in this order, each in its own subprocess (a hang is killed at its limit, a CUDA error does not poison the
next phase) that writes its rows the moment it measures them:

  a  health (<= 60 s): on digits-tiny and animals-tiny, the exported model == the supernet path on the gemm path
     (fp32, TF32 off), gemm == conv path (logits, input and weight gradients); one training step in bf16 and in fp16
     under a dispatch census: which backend every kind of convolution and batch norm went to
     (``torch._C._select_conv_backend``; ``cudnn_batch_norm`` vs ``native_batch_norm``); 20 steps of
     ``train_supernet`` in bf16 and fp16 with every loss finite.
  b  speed (<= 120 s): steady steps/s (warm-up timed apart) of supernet training on the gemm path, the conv path
     with cuDNN and without, and the static baseline (the same loop, ``StandaloneStep``, on a fixed subnet of the same
     stage): the default animals job (sandwich + distillation) and the demo's one-path recipe at their batch sizes
     over all stages, then stage by stage against the static model on scalenet-mbv3 at 224 px (batch 64, bf16),
     animals-tiny and digits-tiny; gemm in NCHW as well as channels_last; a ``torch.profiler`` split of the animals
     job (matmul / depthwise / batch norm / other convolution / optimiser / other kernels / idle).
  c  evidence at convergence (the rest of the budget): the families of ``results/family_animals.csv`` (markov,
     compound, random; stages 0-5 with the two extrapolated members) retrained from scratch through ``scalenas
     train``'s library, several trainings at once on the one GPU (``--jobs``). First a learning curve of the largest
     member (steps 300, 600, 1200, 2400; 2 seeds each) picks the budget: the smallest where doubling moves its test
     top-1 by < 0.3 points. Then seeds in rounds (every architecture with seed 0, then seed 1, ...): after every
     complete round ``results/family_animals_gpu.csv`` / ``.md`` are rewritten (the same table and paired differences
     as ``family_animals.md``), so a cut run keeps complete seeds.
  d  growth (if time is left): ``jobs/grow_evidence.py`` on ``--grow-search`` (a search folder with extrapolated
     members; default ``results/runs/demo-evidence/search`` when it exists), else a "skipped" row.

Every row (columns phase, check, device, status, metric, value, unit, detail) goes to ``OUT/gpu_run_<phase>.csv``
(health, speed, evidence, growth) and ``OUT/gpu_run.csv`` (all phases), each rewritten atomically; OUT is
results/bench (dry: results/tmp/gpu_run_dry, or ``--out-dir``). A summary is printed at the end; exit code 1 when a
row failed. Refused with one line and exit code 2: no CUDA device (unless ``--dry``), a budget too small for phase
a, a dependency of phases a-c missing (said at once; Ray, fvcore and TensorBoard are not needed).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
REPO = jobkit.REPO

from scalenas.runs import SearchFolder  # noqa: E402
from gpu_check import (device_name, error_line, finite, one_line, randomize_bn_, read_log, row,  # noqa: E402
                       set_fp32_exact, steady_steps_per_s, stop_group, sync)

PROG = "gpu_run"
PHASES = ("a", "b", "c", "d")
NAMES = {"a": "health", "b": "speed", "c": "evidence", "d": "growth"}
COLUMNS = ("phase", "check", "device", "status", "metric", "value", "unit", "detail")
CAPS = {"a": 60.0, "b": 120.0, "c": None, "d": None}  # seconds; None: whatever is left
MIN_LEFT = {"a": 40.0, "b": 30.0, "c": 60.0, "d": 60.0}  # a phase with less left is not started
DRY_CAPS = {"a": 40.0, "b": 40.0, "c": 60.0, "d": 20.0}
DRY_MIN_LEFT = {"a": 5.0, "b": 5.0, "c": 5.0, "d": 2.0}
# Phases a-c import only these (and scalenas); d imports what jobs/grow_evidence.py does.
REQUIRED = {"torch": "torch", "numpy": "numpy", "pandas": "pandas", "yaml": "PyYAML", "tqdm": "tqdm",
            "sklearn": "scikit-learn"}
NOT_NEEDED = {"ray": "ray", "fvcore": "fvcore", "tensorboard": "tensorboard", "kornia": "kornia"}
FAMILY_CSV = REPO / "results/family_animals.csv"
CONVERGED_POINTS = 0.3  # doubling the steps moves the largest member's test top-1 by less than this
PARITY_TOL = 1e-4  # fp32, TF32 off, max abs difference (as gpu_check's export check)
DEFAULT_GROW_SEARCH = REPO / "results/runs/demo-evidence/search"


# ============================================================================================ sizes
class Sizes:
    """Everything that differs between the real run and the dry run."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.device = "cpu" if dry else "cuda"
        self.threads = 1 if dry else None
        # a
        self.parity_batch = 2 if dry else 16
        self.parity_every = 6 if dry else 1  # dry: every 6th (subnet, side) pair
        self.train_steps = 2 if dry else 20
        self.train_batch = 8 if dry else 128
        # b
        self.warmup = 2 if dry else 100  # the warm-up window (its mean step time vs the steady one)
        self.steady = 3 if dry else 100
        self.variant_cap = 6.0 if dry else 12.0  # seconds per variant, warm-up included
        self.bench_space = "animals-tiny" if dry else "scalenet-mbv3"  # dry: no 318 M-parameter supernet
        self.bench_batch = 2 if dry else 64
        self.bench_res = 32 if dry else 224
        self.job_batch = 8 if dry else None  # None: the job's own batch size
        self.profile_steps = 2 if dry else 10
        # c
        self.curve = [2, 4] if dry else [300, 600, 1200, 2400]
        self.curve_seeds = 1 if dry else 2
        self.seeds = 2 if dry else 10
        self.stages = (0, 1) if dry else None  # None: every stage of the families
        self.c_batch = 16 if dry else 64
        self.eval_frac = 0.05 if dry else 0.15  # dry: small holdout/test splits, quick evaluations
        self.jobs = 2 if dry else max(1, min(8, (os.cpu_count() or 2) // 2))


# ============================================================================================ rows
class Recorder:
    """The rows of one phase: every new row rewrites the phase's JSON (for the parent) and CSV atomically."""

    def __init__(self, phase: str, rows_path: Path, csv_path: Path, device: str):
        self.phase, self.rows_path, self.csv_path, self.device = phase, rows_path, csv_path, device
        self.rows: list[dict] = []

    def add(self, check: str, status: str, metric: str, value, unit: str = "", detail: str = "") -> dict:
        r = {"phase": NAMES[self.phase], **row(check, status, metric, value, unit, detail), "device": self.device}
        self.rows.append(r)
        self.flush()
        print(f"  {check:<22s} {status:<14s} {metric}={r['value']} {unit} {r['detail'][:150]}", flush=True)
        return r

    def flush(self) -> None:
        tmp = self.rows_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.rows))
        os.replace(tmp, self.rows_path)
        write_rows(self.csv_path, self.rows)


def write_rows(path: Path, rows: list[dict]) -> None:
    jobkit.write_rows(path, rows, COLUMNS)


class Context:
    def __init__(self, args: argparse.Namespace, sz: Sizes):
        self.args, self.sz = args, sz
        self.deadline = float(args.deadline)
        self.work = Path(args.work)
        self.out_dir = Path(args.out_dir)

    def left(self) -> float:
        return self.deadline - time.time()


# ============================================================================================ a: health
def _pairs(space, rng: random.Random):
    from scalenas.spaces.arch import extreme_subnets, sample_subnet

    return [(stage, sub, side) for stage in range(len(space.scaling))
            for sub in (*extreme_subnets(space, stage), sample_subnet(space, rng, stage=stage)[1])
            for side in range(space.coupling)]


def health_parity(ctx: Context, rec: Recorder, name: str) -> None:
    """Export == supernet on the gemm path (eval), and gemm == conv (train: logits, input and weight grads)."""
    import torch
    import torch.nn.functional as F

    from scalenas.models.supernet import SuperNet, export_subnet, resolve_conv_impl
    from scalenas.spaces.space import load_space

    dev = ctx.sz.device
    set_fp32_exact()
    space = load_space(name)
    torch.manual_seed(0)
    net = SuperNet(space)
    randomize_bn_(net, seed=1)
    net = net.to(dev)
    gen = torch.Generator().manual_seed(0)
    pairs = _pairs(space, random.Random(0))[::ctx.sz.parity_every]
    worst = Counter()
    cudnn_before = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False  # the conv-path reference on PyTorch's own kernels: no cuDNN plans to wait for
    scale = Counter()
    for stage, sub, side in pairs:
        x = torch.randn(ctx.sz.parity_batch, space.in_channels, sub.resolution, sub.resolution, generator=gen).to(dev)
        y = torch.randint(0, space.num_classes, (x.shape[0],), generator=gen).to(dev)
        net.eval()
        net.conv_impl = "gemm"
        with torch.no_grad():
            a = net(x, sub, side)
            b = export_subnet(net, sub, side).to(dev).eval()(x)
        worst["export"] = max(worst["export"], float((a - b).abs().max()))
        scale["export"] = max(scale["export"], float(a.abs().max()))
        net.train()
        got = {}
        for impl in ("conv", "gemm"):
            net.conv_impl = impl
            net.zero_grad(set_to_none=True)
            xg = x.clone().requires_grad_()
            out = net(xg, sub, side)
            F.cross_entropy(out, y).backward()
            got[impl] = (out.detach(), xg.grad, {n: p.grad for n, p in net.named_parameters() if p.grad is not None})
        (oc, dc, gc), (og, dg, gg) = got["conv"], got["gemm"]
        worst["logits"] = max(worst["logits"], float((oc - og).abs().max()))
        worst["input_grad"] = max(worst["input_grad"], float((dc - dg).abs().max()))
        worst["weight_grad"] = max(worst["weight_grad"], max(float((gc[k] - gg[k]).abs().max()) for k in gc))
        scale["weight_grad"] = max(scale["weight_grad"], max(float(v.abs().max()) for v in gc.values()))
    torch.backends.cudnn.enabled = cudnn_before
    auto = resolve_conv_impl("auto", dev)
    for key in ("export", "logits", "input_grad", "weight_grad"):
        tol = PARITY_TOL * max(1.0, scale[key])
        what = ("exported model vs supernet path on the gemm path, eval" if key == "export"
                else f"gemm vs conv path, train mode, {key.replace('_', ' ')}")
        rec.add(f"parity[{name}]", "ok" if worst[key] <= tol else "failed", f"max_abs_diff_{key}", worst[key], "",
                f"{what}; {len(pairs)} (subnet, side) pairs (extremes + 1 random per stage, both sides"
                f"{'; dry: every 6th' if ctx.sz.dry else ''}), batch "
                f"{ctx.sz.parity_batch}, fp32 TF32 off, random BN; tolerance {tol:.3g}; conv_impl auto here = {auto}")


def census_categories(space, args, backward: bool) -> tuple[str, str]:
    """(kind, backend) of one convolution call: kind stem / depthwise / other."""
    import torch

    if backward:
        x, w, stride, padding, dilation, transposed, out_pad, groups = (args[1], args[2], args[4], args[5], args[6],
                                                                         args[7], args[8], args[9])
    else:
        x, w, stride, padding, dilation, transposed, out_pad, groups = (args[0], args[1], args[3], args[4], args[5],
                                                                         args[6], args[7], args[8])
    if groups > 1 and groups == x.shape[1]:
        kind = "depthwise"
    elif x.shape[1] == space.in_channels and w.shape[-1] == space.stem_kernel:
        kind = "stem"
    else:
        kind = "other"
    try:
        backend = str(torch._C._select_conv_backend(x, w, None, stride, padding, dilation, transposed, out_pad,
                                                    groups)).split(".")[-1]
    except Exception as exc:  # noqa: BLE001 - a private helper: its absence must not lose the counts
        backend = f"?({type(exc).__name__})"
    return kind, backend


def make_census(space):
    """A TorchDispatchMode counting convolutions (kind x backend, forward and backward), batch norms (op x input
    dtype) and matrix products of what runs inside it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Census(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts: Counter = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name == "convolution":
                kind, backend = census_categories(space, args, False)
                self.counts[f"conv_fwd:{kind}:{backend}"] += 1
            elif name == "convolution_backward":
                kind, backend = census_categories(space, args, True)
                self.counts[f"conv_bwd:{kind}:{backend}"] += 1
            elif "batch_norm" in name:
                self.counts[f"bn:{name}:{str(args[0].dtype).replace('torch.', '')}"] += 1
            elif name in ("mm", "addmm", "bmm", "baddbmm"):
                self.counts[f"matmul:{name}"] += 1
            return func(*args, **(kwargs or {}))

    return Census()


def _supernet_step(space_name: str, data_name: str | None, overrides: dict, dev: str, stage: int | None = None,
                   work: Path | None = None):
    """The training set-up of ``train_supernet`` (precision, model, path-masked optimiser, SupernetStep) and a
    batch source: the dataset's own batches and device pipeline, or (``data_name`` None) one synthetic batch."""
    import torch

    from scalenas.data.batches import BatchIterator
    from scalenas.models.supernet import SuperNet
    from scalenas.spaces.space import load_space
    from scalenas.train.config import load_job, load_run_data
    from scalenas.train.loop import DistInfo, Precision
    from scalenas.train.optim import make_optimizer
    from scalenas.train.supernet import PathSampler, SupernetStep

    device = torch.device(dev)
    space = load_space(space_name)
    cfg = load_job(None, {"space": space_name, "data": data_name or "digits", "device": dev, "tensorboard": False,
                          "seed": 0, **{k: v for k, v in overrides.items() if not k.startswith("_")}})
    prec = Precision(cfg, device, dynamic_shapes=True)
    with torch.device(device):  # initialised where it trains (a 318 M-parameter supernet builds in seconds)
        model = SuperNet(space)
    model.conv_impl = prec.conv_impl
    if prec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg.optimizer, model, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                         nesterov=cfg.nesterov, path_masked=True)
    pipeline, batches = None, None
    if data_name is not None:
        data = load_run_data(cfg, space.in_channels, work or Path(tempfile.mkdtemp()), device)
        pipeline = data.pipeline
        it = BatchIterator(data.train, cfg.batch_size, seed=0)
        batches = lambda: tuple(t.to(device, non_blocking=True) for t in next(it))  # noqa: E731
    else:
        res = overrides.get("_res", space.base_resolution)
        x = torch.rand(cfg.batch_size, space.in_channels, res, res, device=device)
        y = torch.randint(0, space.num_classes, (cfg.batch_size,), device=device)
        batches = lambda: (x, y)  # noqa: E731
    step = SupernetStep(model, opt, PathSampler(space, cfg, 0, stage=stage), cfg, prec, DistInfo(), None, pipeline)
    return step, batches, prec, cfg, space


def health_census(ctx: Context, rec: Recorder, name: str, data: str, amp: str) -> None:
    from scalenas.errors import ScalenasError

    dev = ctx.sz.device
    ov = {"amp": amp, "batch_size": ctx.sz.train_batch, "threads": ctx.sz.threads, "sandwich": True,
          "inplace_distill": True, "conv_impl": "gemm" if ctx.sz.dry else "auto"}  # CPU: auto would be conv
    try:
        step, batches, prec, cfg, space = _supernet_step(name, None, ov, dev)
    except ScalenasError as exc:
        if ctx.sz.dry and amp == "fp16":
            rec.add(f"census[{name},{amp}]", "skipped (dry)", "unexpected_convolutions", float("nan"), "calls",
                    f"amp fp16 refused on CPU as it should be: {exc}")
            return
        raise
    step(*batches(), False)  # the first step outside the census (lazy initialisation)
    census = make_census(space)
    with census:
        res = step(*batches(), False)
    sync(dev)
    c = census.counts
    unexpected = sum(n for k, n in c.items() if k.startswith(("conv_fwd:other", "conv_bwd:other")))
    cudnn_bn = sum(n for k, n in c.items() if k.startswith("bn:cudnn"))
    backends = "; ".join(f"{k}={n}" for k, n in sorted(c.items()))
    how = (f"one sandwich step (3 paths) of {name}, amp {amp} -> autocast {prec.dtype}, channels_last "
           f"{prec.channels_last}, conv_impl {prec.conv_impl}, cuDNN {prec.cudnn}; loss {res.loss:.4g}")
    ok = unexpected == 0 and cudnn_bn == 0 and (prec.conv_impl == "gemm") and finite(res.loss)
    rec.add(f"census[{name},{amp}]", "ok" if ok else "failed", "unexpected_convolutions", unexpected, "calls",
            f"convolutions that are neither depthwise nor stem (want 0); cudnn batch norms {cudnn_bn} (want 0); {how}; "
            f"{backends}")


def health_train(ctx: Context, rec: Recorder, name: str, data: str, amp: str) -> None:
    """``train_supernet`` (the command's entry point), short: every logged loss finite."""
    import torch

    from scalenas.errors import ScalenasError
    from scalenas.train.config import load_job
    from scalenas.train.supernet import train_supernet

    sz = ctx.sz
    out = ctx.work / f"train-{name}-{amp}"
    cfg = load_job(None, {"space": name, "data": data, "steps": sz.train_steps, "batch_size": sz.train_batch,
                          "device": sz.device, "amp": amp, "warmup_steps": 1, "log_every": max(1, sz.train_steps // 4),
                          "checkpoint_every": sz.train_steps, "panel_random": 0, "bn_calib_batches": 1,
                          "threads": sz.threads, "seed": 0, "tensorboard": False})
    t0 = time.perf_counter()
    try:
        summary = train_supernet(cfg, out, progress=False)
    except ScalenasError as exc:
        if sz.dry and amp == "fp16":
            rec.add(f"train[{name},{amp}]", "skipped (dry)", "steps_per_s", float("nan"), "steps/s",
                    f"amp fp16 refused on CPU as it should be: {exc}")
            return
        raise
    wall = time.perf_counter() - t0
    rows = read_log(out)
    losses = [float(r["loss"]) for r in rows]
    sps, n = steady_steps_per_s(rows, cfg.batch_size, 1)
    ok = bool(losses) and all(math.isfinite(v) for v in losses) and summary.get("finished")
    panel = summary.get("panel")
    mem = f"; peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if sz.device == "cuda" else ""
    rec.add(f"train[{name},{amp}]", "ok" if ok else "failed", "steps_per_s", sps, "steps/s",
            f"train_supernet {summary.get('step')} steps of batch {cfg.batch_size}, amp {amp}, default recipe "
            f"(conv_impl auto); {len(losses)} logged losses all finite: {ok}; last loss {losses[-1] if losses else 'none'}; "
            f"panel mean holdout top-1 {float(panel['holdout_top1'].mean()) if panel is not None else float('nan'):.3f}; "
            f"steady over {n} steps; wall {wall:.1f} s incl. data, build and panel{mem}")


def phase_health(ctx: Context, rec: Recorder) -> None:
    spaces = (("digits-tiny", "digits"), ("animals-tiny", "animals"))
    for name, _ in spaces:
        health_parity(ctx, rec, name)
    for name, data in spaces:
        for amp in ("bf16", "fp16"):
            health_census(ctx, rec, name, data, amp)
    for name, data in spaces:
        for amp in ("bf16", "fp16"):
            if ctx.sz.dry and (name, amp) == ("animals-tiny", "bf16"):
                continue  # dry: one full run (digits) is the code path; fp16 is refused on CPU in both
            health_train(ctx, rec, name, data, amp)


# ============================================================================================ b: speed
def _timed(step, batches, n: int, cap: float, dev: str) -> tuple[int, float]:
    """Run up to ``n`` steps within ``cap`` seconds; (steps done, seconds). Each step syncs (it reads its loss)."""
    t0 = time.perf_counter()
    done = 0
    while done < n and time.perf_counter() - t0 < cap:
        step(*batches(), False)
        done += 1
    sync(dev)
    return done, time.perf_counter() - t0


def speed_variant(ctx: Context, rec: Recorder, label: str, space_name: str, data: str | None, overrides: dict,
                  stage: int | None, static: bool = False, profile: bool = False) -> float:
    """Steady steps/s of one training set-up (supernet or static); returns it (NaN when no steady window)."""
    import torch

    sz, dev = ctx.sz, ctx.sz.device
    cap = min(sz.variant_cap, max(1.0, ctx.left() - 2))
    t_build = time.perf_counter()
    if static:
        step, batches, what = _static_step(ctx, space_name, data, overrides, stage)
        passes = 1
    else:
        step, batches, prec, cfg, space = _supernet_step(space_name, data, overrides, dev, stage, ctx.work / label)
        passes = 3 if cfg.sandwich else 1
        what = (f"supernet, {'sandwich + distillation' if cfg.inplace_distill else 'sandwich' if cfg.sandwich else 'one path'}"
                f", stage {'all (hierarchical)' if stage is None else stage}, conv_impl {prec.conv_impl}, cuDNN "
                f"{prec.cudnn}, channels_last {prec.channels_last}, amp {cfg.amp}, batch {cfg.batch_size}")
    build = time.perf_counter() - t_build
    n_warm, t_warm = _timed(step, batches, sz.warmup, cap * 0.6, dev)
    n_steady, t_steady = _timed(step, batches, sz.steady, max(0.5, cap - t_warm), dev)
    sps = n_steady / t_steady if n_steady >= min(3, sz.steady) and t_steady > 0 else float("nan")
    warm_ratio = (t_warm / n_warm) * sps if n_warm and finite(sps) else float("nan")
    status = "ok" if finite(sps) else "failed"
    detail = (f"{what}; warm-up {n_warm} steps in {t_warm:.2f} s (mean step {1e3 * t_warm / max(1, n_warm):.1f} ms"
              + (f", {warm_ratio:.2f}x the steady step" if finite(warm_ratio) else ", no steady window after it")
              + ("" if n_warm == sz.warmup else f"; cut at {0.6 * cap:.1f} s before {sz.warmup} steps")
              + f"), steady {n_steady} steps in {t_steady:.2f} s; build {build:.1f} s; {passes} pass(es) per step")
    rec.add(label, status, "steps_per_s", sps, "steps/s", detail)
    if finite(sps):
        rec.add(label, "ok", "passes_per_s", sps * passes, "passes/s", f"{passes} forward/backward pass(es) per step")
        rec.add(label, "ok", "warmup_over_steady", warm_ratio, "x",
                f"mean step time of the first {n_warm} steps / steady step time (target <= 3)")
    if profile and finite(sps):
        profile_split(ctx, rec, label, step, batches)
    del step, batches
    if dev == "cuda":
        torch.cuda.empty_cache()
    return sps


def _static_step(ctx: Context, space_name: str, data: str | None, overrides: dict, stage: int):
    """The static baseline: a fixed subnet of ``stage`` as a standalone model, in the standalone step."""
    import torch

    from scalenas.data.batches import BatchIterator
    from scalenas.models.standalone import StandaloneNet
    from scalenas.spaces.arch import sample_subnet
    from scalenas.spaces.space import load_space
    from scalenas.train.config import load_job, load_run_data
    from scalenas.train.loop import Precision
    from scalenas.train.optim import make_optimizer
    from scalenas.train.standalone import StandaloneStep

    dev = ctx.sz.device
    device = torch.device(dev)
    space = load_space(space_name)
    sub = sample_subnet(space, random.Random(0), stage=stage)[1]
    res = overrides.get("_res")
    if res:
        sub = sub.with_scaling(sub.depth, sub.width, res)
    cfg = load_job(None, {"space": space_name, "data": data or "digits", "device": dev, "tensorboard": False,
                          "seed": 0, **{k: v for k, v in overrides.items() if not k.startswith("_")}})
    prec = Precision(cfg, device, channels_last=bool(overrides.get("channels_last", False)), dynamic_shapes=False)
    torch.manual_seed(0)
    model = StandaloneNet.from_subnet(space, sub).to(device)
    if prec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg.optimizer, model, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                         nesterov=cfg.nesterov, path_masked=False)
    pipeline = None
    if data is not None:
        d = load_run_data(cfg, space.in_channels, ctx.work / "static-data", device)
        pipeline = d.pipeline
        it = BatchIterator(d.train, cfg.batch_size, seed=0)
        batches = lambda: tuple(t.to(device, non_blocking=True) for t in next(it))  # noqa: E731
    else:
        x = torch.rand(cfg.batch_size, space.in_channels, sub.resolution, sub.resolution, device=device)
        y = torch.randint(0, space.num_classes, (cfg.batch_size,), device=device)
        batches = lambda: (x, y)  # noqa: E731
    step = StandaloneStep(model, opt, sub.resolution, cfg, prec, pipeline)
    what = (f"static baseline: {sub.short()} (stage {stage}) as a standalone model, cuDNN {prec.cudnn}, "
            f"channels_last {prec.channels_last}, amp {cfg.amp}, batch {cfg.batch_size}")
    return step, batches, what


# Kernel (CUDA) or op (CPU) name -> kind, first match wins: cuDNN's convolution kernels are implicit GEMMs
# ("..._xmma_fprop_implicit_gemm_...") and its batch norm kernels say cudnn too, so the order matters.
PROFILE_CATEGORIES = (("depthwise", ("depthwise",)),
                      ("batch_norm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw")),
                      ("convolution", ("conv", "fprop", "dgrad", "wgrad", "implicit", "cudnn", "winograd", "fft")),
                      ("matmul", ("gemm", "gemv", "cutlass", "xmma", "cublas", "splitk", "aten::mm", "aten::addmm",
                                  "aten::bmm", "matmul")))


def _category(name: str, under_optimizer: bool) -> str:
    if under_optimizer:
        return "optimiser"
    low = name.lower()
    for cat, keys in PROFILE_CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def profile_split(ctx: Context, rec: Recorder, label: str, step, batches) -> None:
    """Device time by kind over a few steady steps (torch.profiler); CPU op time on a CPU machine."""
    from torch.profiler import ProfilerActivity, profile

    dev = ctx.sz.device
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
    sync(dev)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(ctx.sz.profile_steps):
            step(*batches(), False)
        sync(dev)
    wall_us = (time.perf_counter() - t0) * 1e6
    busy = Counter()
    for evt in prof.events():
        under = False
        p = evt
        while p is not None:
            if p.name.startswith("Optimizer.step"):
                under = True
                break
            p = p.cpu_parent
        if dev == "cuda":
            for k in evt.kernels:
                busy[_category(k.name, under)] += k.duration
        elif evt.name.startswith("aten::"):  # CPU: no kernels; self times do not count children twice
            busy[_category(evt.name, under)] += evt.self_cpu_time_total
    total = sum(busy.values())
    busy["idle"] = max(0.0, wall_us - total)
    parts = ", ".join(f"{k} {100 * v / wall_us:.1f} %" for k, v in busy.most_common())
    for cat, us in busy.items():
        rec.add(f"{label}:profile", "ok", f"share_{cat}", us / wall_us, "fraction",
                f"{'device kernel' if dev == 'cuda' else 'CPU op'} time over {ctx.sz.profile_steps} steps / wall "
                f"{wall_us / 1e3:.1f} ms")
    rec.add(f"{label}:profile", "ok", "wall_ms_per_step", wall_us / 1e3 / ctx.sz.profile_steps, "ms", parts)


def phase_speed(ctx: Context, rec: Recorder) -> None:
    sz = ctx.sz
    bf16 = {"amp": "bf16", "threads": sz.threads}
    job = {**bf16, "sandwich": True, "inplace_distill": True, "batch_size": sz.job_batch or 128}
    demo = {**bf16, "sandwich": False, "inplace_distill": False, "batch_size": sz.job_batch or 96}
    one = {**bf16, "sandwich": False, "inplace_distill": False}
    big = {**one, "batch_size": sz.bench_batch, "_res": sz.bench_res}
    tiny_batch = {"batch_size": sz.job_batch or 128}
    gemm, conv_on, conv_off = {"conv_impl": "gemm"}, {"conv_impl": "conv", "cudnn": "on"}, \
        {"conv_impl": "conv", "cudnn": "off"}
    nchw = {"conv_impl": "gemm", "channels_last": False}
    ratios: dict[str, tuple[float, float]] = {}
    # (label, space, data, overrides, stage, static, profile), most valuable first. The static baselines run in NCHW
    # (bf16 NCHW depthwise goes to PyTorch's own kernel; channels_last depthwise always goes to cuDNN, whose
    # per-shape plans could eat a variant's seconds): static_cl measures the channels_last one last.
    plan = [("animals_job[gemm]", "animals-tiny", "animals", {**job, **gemm}, None, False, False),
            ("demo[gemm]", "animals-tiny", "animals", {**demo, **gemm}, None, False, False),
            (f"{sz.bench_space}@{sz.bench_res}[static]", sz.bench_space, None, big, 0, True, False),
            (f"{sz.bench_space}@{sz.bench_res}[gemm]", sz.bench_space, None, {**big, **gemm}, 0, False, False),
            ("animals-tiny@s2[static]", "animals-tiny", "animals", {**one, **tiny_batch}, 2, True, False),
            ("animals-tiny@s2[gemm]", "animals-tiny", "animals", {**one, **tiny_batch, **gemm}, 2, False, False),
            ("digits-tiny@s2[static]", "digits-tiny", "digits", {**one, **tiny_batch}, 2, True, False),
            ("digits-tiny@s2[gemm]", "digits-tiny", "digits", {**one, **tiny_batch, **gemm}, 2, False, False),
            ("animals_job[gemm,profile]", "animals-tiny", "animals", {**job, **gemm}, None, False, True),
            (f"{sz.bench_space}@{sz.bench_res}[gemm_nchw]", sz.bench_space, None, {**big, **nchw}, 0, False, False),
            ("animals_job[gemm_nchw]", "animals-tiny", "animals", {**job, **nchw}, None, False, False),
            ("animals_job[conv_nocudnn]", "animals-tiny", "animals", {**job, **conv_off}, None, False, False),
            (f"{sz.bench_space}@{sz.bench_res}[conv_nocudnn]", sz.bench_space, None, {**big, **conv_off}, 0, False,
             False),
            (f"{sz.bench_space}@{sz.bench_res}[static_cl]", sz.bench_space, None, {**big, "channels_last": True}, 0,
             True, False),
            ("animals_job[conv_cudnn]", "animals-tiny", "animals", {**job, **conv_on}, None, False, False),
            (f"{sz.bench_space}@{sz.bench_res}[conv_cudnn]", sz.bench_space, None, {**big, **conv_on}, 0, False,
             False)]
    if sz.dry:  # every code path once: static and supernet, real and synthetic data, profile, NCHW, conv path
        keep = ("animals_job[gemm]", f"{sz.bench_space}@{sz.bench_res}[static]",
                f"{sz.bench_space}@{sz.bench_res}[gemm]", "digits-tiny@s2[static]", "animals_job[gemm,profile]",
                f"{sz.bench_space}@{sz.bench_res}[gemm_nchw]", "animals_job[conv_nocudnn]")
        plan = [p for p in plan if p[0] in keep]
    for label, space, data, ov, stage, static, prof in plan:
        if ctx.left() < 3:
            rec.add(label, "failed", "error", float("nan"), "", "not run: phase b's time was spent")
            continue
        try:
            sps = speed_variant(ctx, rec, label, space, data, ov, stage, static, prof)
        except Exception as exc:  # noqa: BLE001 - one variant's failure is a row, the next runs
            traceback.print_exc()
            rec.add(label, "failed", "error", float("nan"), "", one_line(exc))
            continue
        key, kind = label.split("[")[0], label.split("[")[1].rstrip("]")
        if kind in ("static", "gemm"):
            old = ratios.get(key, (float("nan"), float("nan")))
            ratios[key] = (sps, old[1]) if kind == "static" else (old[0], sps)
            static_sps, gemm_sps = ratios[key]
            if finite(static_sps) and finite(gemm_sps):
                want = 0.7 if key.startswith("scalenet") else 0.5
                r = gemm_sps / static_sps
                rec.add(f"{key}[gemm/static]", "ok", "ratio", r, "x",
                        f"supernet (gemm, one path, stage as the static model) steps/s / static baseline steps/s; "
                        f"target >= {want} ({'met' if r >= want else 'not met'})")


# ============================================================================================ c: evidence
def family_members(stages) -> dict[str, list[dict]]:
    """The families of results/family_animals.csv, one member per (strategy, stage), counted by family_evidence."""
    import family_evidence as fe
    import pandas as pd

    from scalenas.spaces.space import load_space

    frame = pd.read_csv(FAMILY_CSV)
    space = load_space("animals-tiny")
    fams: dict[str, list[dict]] = {}
    for strat in fe.STRATEGIES:
        sel = frame[frame["strategy"] == strat].drop_duplicates("stage").sort_values("stage")
        fams[strat] = [fe._member(int(r["stage"]), r, bool(r["extrapolated"]), space)  # noqa: SLF001 - same rule
                       for r in sel.to_dict("records") if stages is None or int(r["stage"]) in stages]
    return fams


class Trainer:
    """Standalone trainings in worker processes (``family_evidence.train_one``: cached, resumable), stopped at the
    deadline (a training cut short keeps its checkpoint; a rerun resumes it)."""

    def __init__(self, jobs: int):
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        self.pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"))

    def submit(self, task: dict):
        import family_evidence as fe

        return self.pool.submit(fe.train_one, task)

    def stop(self) -> None:
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        self.pool.shutdown(wait=False, cancel_futures=True)


def phase_evidence(ctx: Context, rec: Recorder) -> None:
    from concurrent.futures import FIRST_COMPLETED, wait

    import family_evidence as fe
    import pandas as pd

    from scalenas.io import atomic_write_csv, atomic_write_text

    sz, dev = ctx.sz, ctx.sz.device
    t0 = time.perf_counter()
    fams = family_members(sz.stages)
    largest = max(fams["markov"], key=lambda m: m["flops"])
    cache = ctx.work / "evidence-train"
    threads = max(1, (os.cpu_count() or 2) // max(1, ctx.args.jobs))

    def overrides(steps: int) -> dict:
        return {"steps": steps, "batch_size": sz.c_batch, "device": dev, "data": "animals", "data_seed": 0,
                "holdout_frac": sz.eval_frac, "test_frac": sz.eval_frac, "store_size": None, "amp": "bf16",
                # NCHW: in bf16 PyTorch sends NCHW depthwise convolutions to its own kernel, not to cuDNN's planner
                "channels_last": False, "tensorboard": False, "warmup_steps": min(50, max(1, steps // 10)),
                "checkpoint_every": steps, "log_every": max(1, steps // 10)}

    def task(m: dict, steps: int, seed: int, label: str) -> dict:
        ov = overrides(steps)
        return {"arch": m["arch"], "seed": seed, "job": "animals", "overrides": ov, "threads": threads,
                "out_dir": str(fe.task_dir(cache, m["net"], ov, "animals", seed)), "label": label}

    trainer = Trainer(ctx.args.jobs)
    try:
        # 1. the budget: a learning curve of the largest member
        if ctx.args.c_steps:
            steps, how = ctx.args.c_steps, f"--c-steps {ctx.args.c_steps}"
        else:
            futs = {trainer.submit(task(largest, s, k, f"curve {s} seed {k}")): (s, k)
                    for s in sz.curve for k in range(sz.curve_seeds)}
            done, pending = wait(futs, timeout=max(1.0, ctx.left() - 5))
            curve: dict[int, list[float]] = {}
            for f in done:
                s, _ = futs[f]
                curve.setdefault(s, []).append(float(f.result()["test_top1"]))
            for s in sz.curve:
                vals = curve.get(s, [])
                rec.add("curve", "ok" if len(vals) == sz.curve_seeds else "failed", f"test_top1[{s}]",
                        sum(vals) / len(vals) if vals else float("nan"), "fraction",
                        f"largest markov member (s{largest['stage']}, {largest['flops'] / 1e6:.1f} MFLOPs), {s} steps "
                        f"of batch {sz.c_batch}, mean of {len(vals)} seed(s): {', '.join(f'{v:.4f}' for v in vals)}")
            if pending:
                rec.add("curve", "failed", "steps", float("nan"), "steps", "the learning curve did not finish in time")
                return
            means = [sum(curve[s]) / len(curve[s]) for s in sz.curve]
            steps, how = sz.curve[-1], f"not converged by {sz.curve[-1]} steps: the longest"
            for i in range(len(sz.curve) - 1):
                if abs(means[i + 1] - means[i]) * 100 < CONVERGED_POINTS:
                    steps = sz.curve[i]
                    how = (f"converged: {sz.curve[i]} -> {sz.curve[i + 1]} steps moves the largest member by "
                           f"{(means[i + 1] - means[i]) * 100:+.2f} points (< {CONVERGED_POINTS})")
                    break
        rec.add("budget", "ok", "steps", steps, "steps", how)
        # 2. seeds in rounds; every architecture of a round before any of the next
        by_dir: dict[str, object] = {}
        meta = []  # (strategy, member, seed, out_dir)
        for seed in range(ctx.args.seeds):
            for strat, fam in fams.items():
                for m in fam:
                    t = task(m, steps, seed, f"{strat} s{m['stage']} seed {seed}")
                    if t["out_dir"] not in by_dir:
                        by_dir[t["out_dir"]] = trainer.submit(t)
                    meta.append((strat, m, seed, t["out_dir"]))
        results: dict[str, dict] = {}
        written = -1
        csv_path = ctx.out_dir / "family_animals_gpu.csv" if sz.dry else REPO / "results/family_animals_gpu.csv"
        md_path = csv_path.with_suffix(".md")
        pending = set(by_dir.values())
        while pending and ctx.left() > 2:
            done, pending = wait(pending, timeout=ctx.left() - 2, return_when=FIRST_COMPLETED)
            for d, f in by_dir.items():
                if f in done and d not in results:
                    results[d] = f.result()
            complete = 0  # seeds 0..complete-1 are complete
            while complete < ctx.args.seeds and all(d in results for _, _, s, d in meta if s == complete):
                complete += 1
            if complete - 1 > written:
                written = complete - 1
                frame = pd.DataFrame([{"strategy": st, "stage": m["stage"], "seed": s, "extrapolated": m["extrapolated"],
                                       "flops": results[d]["flops"], "params": results[d]["params"],
                                       "test_top1": results[d]["test_top1"], "holdout_top1": results[d]["holdout_top1"],
                                       "target_flops": m["target_flops"], "steps": results[d]["steps"],
                                       "train_seconds": results[d].get("train_seconds"), "arch": m["arch"],
                                       "run_dir": d} for st, m, s, d in meta if s < complete])
                atomic_write_csv(csv_path, frame)
                summary = fe.summarise(frame)
                settings = {"data": "animals", "space": "animals-tiny", "families": FAMILY_CSV.name, "steps": steps,
                            "batch_size": sz.c_batch, "job": "animals", "amp": "bf16", "device": rec.device,
                            "seeds": " ".join(map(str, range(complete))), "data_seed": 0, "csv": csv_path.name,
                            "wall_s": time.perf_counter() - t0}
                command = "bash jobs/bench/gpu_run.sh " + shlex.join(ctx.args.argv)
                text = fe.markdown(frame, summary, settings, command).replace(
                    "Generated by `jobs/family_evidence.py`", "Generated by `jobs/bench/gpu_run.py` (phase c)")
                atomic_write_text(md_path, text)
                c = summary["compound"]
                rec.add("evidence", "ok", "markov_minus_compound_points", c["mean"] * 100, "points",
                        f"{complete} complete seed(s) at {steps} steps: markov >= compound at {c['stages_ahead']}/"
                        f"{c['stages']} stages; target (every stage, mean >= +0.5) "
                        f"{'holds' if summary['holds'] else 'does not hold'}; {csv_path.name}, {md_path.name}")
        if written < 0:
            rec.add("evidence", "failed", "seeds", 0, "seeds", "no complete seed round in time")
        else:
            rec.add("evidence", "ok", "seeds", written + 1, "seeds",
                    f"{len(results)} trainings finished, {len(by_dir) - len(results)} cut at the deadline; "
                    f"{len(by_dir)} distinct trainings for {len(meta)} rows; {ctx.args.jobs} at once")
    finally:
        trainer.stop()


# ============================================================================================ d: growth
def phase_growth(ctx: Context, rec: Recorder) -> None:
    search = Path(ctx.args.grow_search) if ctx.args.grow_search else DEFAULT_GROW_SEARCH
    if not (search / SearchFolder.FAMILY).is_file():
        rec.add("growth", "skipped: no search", "seconds", 0.0, "s",
                f"no search folder with extrapolated members at {search} (give --grow-search; carry it to the GPU "
                "machine)")
        return
    out = ctx.out_dir if ctx.sz.dry else REPO / "results"
    cmd = [sys.executable, str(REPO / "jobs/grow_evidence.py"), "--search", str(search), "--steps",
           str(ctx.args.d_steps), "--seeds", "1" if ctx.sz.dry else "3", "--models", "cnn",
           "--cache", str(ctx.work / "grow"), "--out-csv", str(out / "grow_evidence_gpu.csv"),
           "--out-md", str(out / "grow_evidence_gpu.md")]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(1.0, ctx.left() - 2))
        ok = proc.returncode == 0
        detail = f"{shlex.join(cmd[1:])}: exit {proc.returncode}; {error_line(proc.stdout + proc.stderr)}"
    except subprocess.TimeoutExpired:
        ok, detail = False, f"{shlex.join(cmd[1:])}: cut at the deadline"
    rec.add("growth", "ok" if ok else "failed", "seconds", time.perf_counter() - t0, "s", detail)


PHASE_FUNCS = {"a": phase_health, "b": phase_speed, "c": phase_evidence, "d": phase_growth}


# ============================================================================================ child / parent
def run_child(args: argparse.Namespace) -> int:
    def on_term(signum, frame):  # the parent's limit: unwind (stop the training workers)
        raise TimeoutError(f"stopped by signal {signum} (phase limit)")

    signal.signal(signal.SIGTERM, on_term)
    sz = Sizes(args.dry)
    ctx = Context(args, sz)
    phase = args.child
    try:
        import torch

        if sz.threads:
            torch.set_num_threads(sz.threads)
        dev = device_name(sz.device)
    except Exception:  # noqa: BLE001
        dev = "?"
    rec = Recorder(phase, Path(args.rows), Path(args.phase_csv), dev)
    rec.flush()
    try:
        PHASE_FUNCS[phase](ctx, rec)
        return 0
    except BaseException as exc:  # noqa: BLE001 - the failure becomes a row
        traceback.print_exc()
        rec.add(NAMES[phase], "failed", "error", float("nan"), "", one_line(exc))
        return 1


def missing_dependencies() -> tuple[list[str], list[str]]:
    """(missing packages phases a-c need, absent packages they do not need) -- found without importing them."""
    need = [pkg for mod, pkg in REQUIRED.items() if importlib.util.find_spec(mod) is None]
    spare = [pkg for mod, pkg in NOT_NEEDED.items() if importlib.util.find_spec(mod) is None]
    return need, spare


def refuse(text: str) -> int:
    sys.stderr.write(f"{PROG}: {text}\n")
    return 2


def run_phase(phase: str, args: argparse.Namespace, work: Path, out_dir: Path, limit: float) -> list[dict]:
    rows_path = work / f"{NAMES[phase]}.rows.json"
    log_path = work / f"{NAMES[phase]}.log"
    phase_csv = out_dir / f"gpu_run_{NAMES[phase]}.csv"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", phase, "--rows", str(rows_path),
           "--phase-csv", str(phase_csv), "--deadline", str(time.time() + limit - 3), "--work", str(work),
           "--out-dir", str(out_dir), "--jobs", str(args.jobs), "--seeds", str(args.seeds),
           "--d-steps", str(args.d_steps), "--argv-json", json.dumps(args.argv)] + (["--dry"] if args.dry else []) \
        + (["--c-steps", str(args.c_steps)] if args.c_steps else []) \
        + (["--grow-search", args.grow_search] if args.grow_search else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.setdefault("OMP_NUM_THREADS", "1" if args.dry else "4")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:
                stop_group(proc)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group (training workers)
    rows = json.loads(rows_path.read_text()) if rows_path.is_file() else []
    text = log_path.read_text(errors="replace")
    if proc.returncode not in (0, None) and not any(r["status"] == "failed" for r in rows):
        reason = f"cut at its limit ({limit:.0f} s)" if proc.returncode in (-signal.SIGTERM, -signal.SIGKILL) \
            else f"exit code {proc.returncode}: {error_line(text)}"
        rows.append({"phase": NAMES[phase], **row(NAMES[phase], "failed", "error", float("nan"), "", reason),
                     "device": rows[0]["device"] if rows else "?"})
    if rows:
        write_rows(phase_csv, rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = jobkit.parser(__doc__, prog="gpu_run.sh")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run (default 540)")
    ap.add_argument("--dry", action="store_true", help="CPU, tiny sizes (< 60 s): the code path, not a measurement")
    ap.add_argument("--phases", default="a,b,c,d", help="comma list of phases to run (default a,b,c,d)")
    ap.add_argument("--out-dir", default=None, help="where the CSVs go (default results/bench; dry: "
                    "results/tmp/gpu_run_dry)")
    ap.add_argument("--work", default=None, help="folder for trainings and logs (default results/runs/gpu_run; "
                    "dry: a temporary folder); kept, so a rerun reuses finished trainings")
    ap.add_argument("--jobs", type=int, default=None, help="phase c: trainings at once (default min(8, cores / 2))")
    ap.add_argument("--seeds", type=int, default=None, help="phase c: at most this many seed rounds (default 10)")
    ap.add_argument("--c-steps", type=int, default=None, help="phase c: training steps (default: from the learning "
                    "curve)")
    ap.add_argument("--grow-search", default=None, help="phase d: search folder with extrapolated members")
    ap.add_argument("--d-steps", type=int, default=200, help="phase d: grow_evidence's E in steps (default 200)")
    ap.add_argument("--child", choices=PHASES, help=argparse.SUPPRESS)
    ap.add_argument("--rows", help=argparse.SUPPRESS)
    ap.add_argument("--phase-csv", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", help=argparse.SUPPRESS)
    ap.add_argument("--argv-json", default="[]", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sz = Sizes(args.dry)
    args.jobs = args.jobs or sz.jobs
    args.seeds = args.seeds or sz.seeds
    if args.child:
        args.argv = json.loads(args.argv_json)
        return run_child(args)
    args.argv = argv
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    bad = [p for p in phases if p not in PHASES]
    if bad or not phases:
        return refuse(f"--phases: unknown {', '.join(bad) or '(none)'} (choose from {', '.join(PHASES)})")
    if min(args.jobs, args.seeds, args.d_steps, args.c_steps or 1) < 1:
        return refuse("--jobs, --seeds, --c-steps and --d-steps must be >= 1")
    caps, min_left = (DRY_CAPS, DRY_MIN_LEFT) if args.dry else (CAPS, MIN_LEFT)
    first = phases[0]
    if args.budget < min_left[first] + 5:
        return refuse(f"--budget {args.budget:g} s is too small for phase {first} ({NAMES[first]}, needs "
                      f"{min_left[first] + 5:g} s): nothing run")
    need, spare = missing_dependencies()
    if need:
        return refuse(f"missing dependencies: {', '.join(need)} (phases a-c need them; this script installs "
                      "nothing): nothing run")
    import torch

    if not args.dry and not torch.cuda.is_available():
        return refuse(f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}): nothing run; "
                      "--dry runs the same code on CPU")
    out_dir = Path(args.out_dir) if args.out_dir else (REPO / "results/tmp/gpu_run_dry" if args.dry
                                                        else REPO / "results/bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    keep = args.work is not None or not args.dry
    work = Path(args.work).resolve() if args.work else (REPO / "results/runs/gpu_run" if not args.dry
                                                        else Path(tempfile.mkdtemp(prefix="scalenas_gpu_run_")))
    work.mkdir(parents=True, exist_ok=True)
    dev = torch.cuda.get_device_name(0) if not args.dry else "cpu"
    print(f"{PROG}{' --dry' if args.dry else ''}: {dev}, torch {torch.__version__}, budget {args.budget:g} s, "
          f"phases {','.join(phases)} -> {out_dir} (work {work})", flush=True)
    print(f"{PROG}: dependencies of phases a-c present; not needed and absent: {', '.join(spare) or 'none'}",
          flush=True)
    start = time.perf_counter()
    all_rows: list[dict] = []
    try:
        for phase in phases:
            left = args.budget - (time.perf_counter() - start)
            limit = min(left, caps[phase] or left)
            t0 = time.perf_counter()
            print(f"[{phase}] {NAMES[phase]} (limit {limit:.0f} s)", flush=True)
            if left < min_left[phase]:
                rows = [{"phase": NAMES[phase], **row(NAMES[phase], "skipped: time", "seconds_left", left, "s",
                                                      f"{left:.0f} s left, the phase needs {min_left[phase]:g}"),
                         "device": dev}]
                write_rows(out_dir / f"gpu_run_{NAMES[phase]}.csv", rows)
            else:
                rows = run_phase(phase, args, work, out_dir, limit)
            all_rows += rows
            write_rows(out_dir / "gpu_run.csv", all_rows)
            failed = [r for r in rows if r["status"] == "failed"]
            print(f"[{phase}] {NAMES[phase]}: {len(rows)} rows, {len(failed)} failed, "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        if not keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    print(summary_text(all_rows, time.perf_counter() - start, out_dir), flush=True)
    return 1 if any(r["status"] == "failed" for r in all_rows) else 0


def summary_text(rows: list[dict], seconds: float, out_dir: Path) -> str:
    """The headline rows of every phase, one line each."""
    lines = [f"{PROG} summary ({seconds:.0f} s, {len(rows)} rows in {out_dir / 'gpu_run.csv'}):"]
    keep = ("max_abs_diff_export", "max_abs_diff_weight_grad", "unexpected_convolutions", "steps_per_s", "ratio",
            "steps", "markov_minus_compound_points", "seeds", "error", "seconds", "seconds_left", "wall_ms_per_step")
    for r in rows:
        if r["metric"] in keep or r["status"] == "failed":
            value = r["value"]
            value = f"{value:.4g}" if isinstance(value, float) else value
            lines.append(f"  {r['phase']:<8s} {r['check']:<34s} {r['status']:<14s} {r['metric']}={value} {r['unit']}")
    failed = sorted({f"{r['phase']}/{r['check']}" for r in rows if r["status"] == "failed"})
    lines.append(f"  failed: {', '.join(failed)}" if failed else "  no failures")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
