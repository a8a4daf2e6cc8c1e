"""The prepared GPU check: one short run on a lent CUDA machine that records what only a GPU can show.

    bash jobs/bench/gpu_check.sh                    # the real run (CUDA), writes results/bench/gpu.csv
    python jobs/bench/gpu_check.py --dry            # the same code path on CPU, tiny sizes (~45-60 s on 2 cores)
        [--full-dry] [--out CSV] [--timeout S] [--budget S] [--checks a,b,...] [--steps N] [--work DIR]

Checks, in this order, each in its own subprocess (a hang is killed by its timeout, a CUDA error does not poison
the others, and a check that fails still records a row):

  train_bf16  ``train_supernet`` (the train-supernet entry point) on the embedded digits, space digits-tiny,
              AMP bf16 + channels_last, 40 steps: steady steps/s from the trainer's own log (the first log window,
              start-up and autotuning, left out), every logged loss finite, the end-of-run panel finite.
  export      supernet path vs exported standalone model (``export_subnet``) on the same CUDA input, fp32 eval,
              TF32 off: the train_bf16 supernet (and a copy with random BN statistics, so BN is not the identity),
              extremes + a random subnet of every scaling stage on both coupling sides; max abs logit diff <= 1e-4.
  train_fp16  as train_bf16 with AMP fp16 and the grad scaler: loss finite.
  throughput  images/s of supernet paths vs the same exported static models, space scalenet-mbv3 at 224 px,
              eval mode, batch 128, fp32 (TF32 off), bf16 autocast, bf16 autocast + channels_last, for the smallest
              subnet of stage 0 and a middle and the largest subnet of stage 1 (at 224 px); 5 warm-up and 20 timed
              iterations between torch.cuda.synchronize calls. Also the fp32 logit difference of each pair.
  ray         ``scalenas search`` (1 generation, population 8, 1 Ray worker, --device cuda) on the train_bf16
              supernet in a private Ray on 127.0.0.1, then a probe (a SupernetEvaluator that also reports where
              its supernet lives) in a Ray actor with 1 GPU: the evaluation ran on cuda, in another process.
  ddp         torchrun --nproc_per_node=N -m scalenas.cli train-supernet on NCCL over the N visible GPUs
              (N >= 2), else "skipped: 1 GPU"; the command line is checked with the CLI parser either way.

The CSV (columns check, device, status, metric, value, unit, detail) holds one or more rows per check, the first
being its headline; status is ok, failed, or "skipped: why". It is rewritten atomically (temp file + os.replace)
after every check, so an interrupted run keeps what it measured. Exit code 1 when any row failed. The whole run
is capped by --budget (default 290 s), each check by its own limit (--timeout overrides them all).

``--dry`` runs the checks on CPU with tiny sizes: 3 training steps at batch 32, batch 2 and 32 px input for the
224 px models, one timed iteration, CPU bf16 autocast in the throughput check. The package refuses amp fp16 on
CPU (train_fp16 checks that it does) and ddp needs two processes: both are "skipped (dry)" after checking
their config / command line, unless ``--full-dry`` also runs them (fp32, and 2 gloo processes; ~35 s more). Dry
mode writes results/bench/gpu_dry.csv unless --out is given, and refuses results/bench/gpu.csv.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
REPO = jobkit.REPO

from scalenas.runs import RunFolder, SearchFolder  # noqa: E402

# Before Ray is imported anywhere (the wrapper exports them too): a private Ray on loopback, no telemetry.
for _k, _v in (("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"), ("RAY_USAGE_STATS_ENABLED", "0"),
               ("RAY_AUTH_MODE", "disabled")):
    os.environ.setdefault(_k, _v)

# In this order: the cheap and most wanted first; Ray (the likeliest to stall) and multi-GPU DDP last.
CHECKS = ("train_bf16", "export", "train_fp16", "throughput", "ray", "ddp")
COLUMNS = ("check", "device", "status", "metric", "value", "unit", "detail")
DEFAULT_OUT = REPO / "results/bench/gpu.csv"
DEFAULT_DRY_OUT = REPO / "results/bench/gpu_dry.csv"
# Per-check time limits (s) of the real run; together well inside 5 minutes when nothing hangs.
TIMEOUTS = {"train_bf16": 90, "export": 60, "train_fp16": 90, "ddp": 120, "ray": 150, "throughput": 120}
DRY_TIMEOUTS = {k: 120 for k in CHECKS}
EXPORT_TOL = 1e-4  # max abs logit difference, fp32, TF32 off
TRAIN_SPACE, TRAIN_DATA = "digits-tiny", "digits"
BENCH_SPACE = "scalenet-mbv3"
SEARCH_TARGET = "4M"  # digits-tiny: targets 0.5M, 1M, 2M, 4M, all feasible


# ============================================================================================ sizes
class Sizes:
    """Everything that differs between the real run and the dry run."""

    def __init__(self, dry: bool, steps: int | None, full_dry: bool = False):
        self.dry = dry
        self.full_dry = full_dry  # dry: also run the CPU stand-ins of train_fp16 (fp32) and ddp (2 x gloo)
        self.device = "cpu" if dry else "cuda"
        self.steps = steps or (3 if dry else 40)
        self.log_every = 1 if dry else 10
        self.batch = 32 if dry else 128
        self.threads = 1 if dry else None
        self.ddp_steps = 2 if dry else 20
        self.ddp_batch = 16 if dry else 128
        self.population = 2 if dry else 8
        self.bench_batch = 2 if dry else 128
        self.bench_res = 32 if dry else None  # None: the subnet's own resolution (224)
        self.bench_warmup = 1 if dry else 5
        self.bench_iters = 1 if dry else 20
        self.export_batch = 4 if dry else 16


# ============================================================================================ helpers
def device_name(device: str) -> str:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def row(check: str, status: str, metric: str, value, unit: str = "", detail: str = "") -> dict:
    if isinstance(value, float) and finite(value):
        value = float(f"{value:.6g}")
    return {"check": check, "status": status, "metric": metric, "value": value, "unit": unit,
            "detail": " ".join(str(detail).split())}


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def set_fp32_exact() -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def error_line(text: str) -> str:
    """The line of a log that best says what went wrong: the last one naming an error, else the last one."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not set(ln.strip()) <= set("=-*")]
    named = [ln for ln in lines if "Error" in ln or "error:" in ln or "Exception" in ln]
    return ((named or lines or ["no output"])[-1])[:250]


def steady_steps_per_s(rows: list[dict], batch: int, world: int) -> tuple[float, int]:
    """Steps/s over the log windows after the first one (the first holds start-up and autotuning); with a
    single window, that one. ``images_per_s`` of a window counts the images of all processes."""
    windows = []
    prev = 0
    for r in rows:
        windows.append((int(r["step"]) - prev, float(r["images_per_s"])))
        prev = int(r["step"])
    use = windows[1:] if len(windows) > 1 else windows
    steps = sum(n for n, _ in use)
    seconds = sum(n * batch * world / ips for n, ips in use if ips > 0)
    return (steps / seconds if seconds > 0 else float("nan")), steps


def read_log(run: Path) -> list[dict]:
    with open(run / "train_log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ============================================================================================ the checks
def train_run(check: str, sz: Sizes, work: Path, amp: str) -> list[dict]:
    import torch

    from scalenas.train.config import load_job
    from scalenas.train.loop import Precision
    from scalenas.train.supernet import train_supernet

    out = work / check
    cfg = load_job(None, {"space": TRAIN_SPACE, "data": TRAIN_DATA, "steps": sz.steps, "batch_size": sz.batch,
                          "device": sz.device, "amp": amp, "warmup_steps": min(5, sz.steps),
                          "log_every": sz.log_every, "checkpoint_every": sz.steps, "panel_random": 0,
                          "bn_calib_batches": 1, "threads": sz.threads, "seed": 0})
    cfg.channels_last = True
    prec = Precision(cfg, torch.device(sz.device), dynamic_shapes=True)  # as train_supernet sets it up
    t0 = time.perf_counter()
    summary = train_supernet(cfg, out, progress=False)
    wall = time.perf_counter() - t0
    if not summary.get("finished"):
        raise RuntimeError(f"training did not finish: {summary}")
    rows = read_log(out)
    losses = [float(r["loss"]) for r in rows]
    sps, n = steady_steps_per_s(rows, sz.batch, 1)
    ok_loss = bool(losses) and all(math.isfinite(v) for v in losses)
    panel_ok = all(finite(v) for v in summary["panel"]["holdout_top1"])
    mem = f"; peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if sz.device == "cuda" else ""
    how = (f"amp={amp} channels_last=True -> autocast dtype {prec.dtype}, channels_last {prec.channels_last}, "
           f"grad scaler {prec.scaler is not None}, cuDNN {prec.cudnn}")
    if sz.dry:
        how += " (CPU: the package trains in fp32; amp/channels_last apply on CUDA only)"
    detail = (f"{TRAIN_SPACE} on {TRAIN_DATA}, {summary['step']} steps, batch {sz.batch}; {how}; steady over {n} "
              f"steps; wall {wall:.1f} s incl. data, build and panel{mem}")
    status = "ok" if ok_loss and panel_ok and finite(sps) and sps > 0 else "failed"
    return [row(check, status, "steps_per_s", sps, "steps/s", detail),
            row(check, "ok" if ok_loss else "failed", "final_loss", losses[-1] if losses else float("nan"), "",
                f"all {len(losses)} logged losses finite: {ok_loss}; min {min(losses, default=float('nan')):.4g}"),
            row(check, "ok" if panel_ok else "failed", "panel_mean_holdout_top1",
                float(summary["panel"]["holdout_top1"].mean()), "fraction", "holdout top-1 of the end-of-run panel")]


def check_train_bf16(sz: Sizes, work: Path) -> list[dict]:
    return train_run("train_bf16", sz, work, "bf16")


def check_train_fp16(sz: Sizes, work: Path) -> list[dict]:
    if sz.dry and not sz.full_dry:
        # The package refuses amp fp16 off CUDA (its grad scaler needs a GPU): check that it does, in one line.
        import torch

        from scalenas.errors import ScalenasError
        from scalenas.train.config import load_job
        from scalenas.train.loop import Precision

        cfg = load_job(None, {"space": TRAIN_SPACE, "data": TRAIN_DATA, "device": "cpu", "amp": "fp16"})
        try:
            Precision(cfg, torch.device("cpu"))
            refused = "not refused"
        except ScalenasError as exc:
            refused = f"refused on CPU: {exc}"
        return [row("train_fp16", "skipped (dry)", "steps_per_s", float("nan"), "steps/s",
                    f"GradScaler needs CUDA; config amp=fp16 validated, {refused} (--full-dry trains the fp32 "
                    "stand-in)")]
    # --full-dry: fp32 on CPU stands in for fp16 (refused there)
    return train_run("train_fp16", sz, work, "off" if sz.dry else "fp16")


def supernet_checkpoint(sz: Sizes, work: Path) -> tuple[Path, str]:
    """The train_bf16 checkpoint; when that check did not leave one, a short fp32 run of our own."""
    ckpt = work / "train_bf16" / RunFolder.CHECKPOINT
    if ckpt.is_file():
        return ckpt, "the train_bf16 supernet"
    from scalenas.train.config import load_job
    from scalenas.train.supernet import train_supernet

    out = work / "fallback_supernet"
    if not (out / RunFolder.CHECKPOINT).is_file():
        cfg = load_job(None, {"space": TRAIN_SPACE, "data": TRAIN_DATA, "steps": 3, "batch_size": 32,
                              "device": sz.device, "amp": "off", "warmup_steps": 1, "panel_random": 0,
                              "bn_calib_batches": 1, "threads": sz.threads, "seed": 0})
        train_supernet(cfg, out, progress=False)
    return out / RunFolder.CHECKPOINT, "a 3-step fp32 supernet (train_bf16 left no checkpoint)"


def check_export(sz: Sizes, work: Path) -> list[dict]:
    import copy

    import torch

    from scalenas.models.supernet import export_subnet
    from scalenas.spaces.arch import extreme_subnets, sample_subnet
    from scalenas.train.checkpoint import load_supernet

    set_fp32_exact()
    ckpt, what = supernet_checkpoint(sz, work)
    trained = load_supernet(ckpt).eval()
    space = trained.space
    rng = random.Random(0)
    pairs = [(stage, sub, side) for stage in range(len(space.scaling))
             for sub in [*extreme_subnets(space, stage), sample_subnet(space, rng, stage=stage)[1]]
             for side in range(space.coupling)]
    shaken = copy.deepcopy(trained)
    randomize_bn_(shaken, seed=1)
    rows = []
    for label, net in (("trained", trained), ("random_bn", shaken)):
        net = net.to(sz.device).eval()
        gen = torch.Generator().manual_seed(0)
        worst, scale, worst_sub = 0.0, 0.0, ""
        for stage, sub, side in pairs:
            x = torch.randn(sz.export_batch, space.in_channels, sub.resolution, sub.resolution,
                            generator=gen).to(sz.device)
            model = export_subnet(net, sub, side).to(sz.device).eval()
            with torch.no_grad():
                a, b = net(x, sub, side), model(x)
            diff = float((a.float() - b.float()).abs().max())
            scale = max(scale, float(a.abs().max()))
            if not math.isnan(worst) and not diff <= worst:  # a NaN difference is the worst and stays
                worst, worst_sub = diff, f"s{stage} side {side} {sub.short()}"
        net.cpu()
        how = what if label == "trained" else f"{what} with random BN statistics/affines and classifier"
        rows.append(row("export", "ok" if worst <= EXPORT_TOL else "failed",
                        "max_abs_diff" if label == "trained" else "max_abs_diff_random_bn", worst, "logit",
                        f"{how}, {space.name} on {sz.device}: {len(pairs)} (subnet, side) pairs, extremes + 1 random "
                        f"per stage, both sides; fp32 eval, TF32 off, batch {sz.export_batch}; tolerance max abs "
                        f"diff <= {EXPORT_TOL:g}; max |logit| {scale:.3g}; worst {worst_sub or 'all equal'}"))
    return rows


def check_ddp(sz: Sizes, work: Path) -> list[dict]:
    import torch

    from scalenas.cli.main import build_parser
    from scalenas.train.checkpoint import read_checkpoint

    if sz.dry:
        world, backend, device = 2, "gloo", "cpu"
    else:
        world, backend, device = torch.cuda.device_count(), "nccl", "cuda"
    out = work / "ddp"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env.setdefault("NCCL_SOCKET_IFNAME", "lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           "-m", "scalenas.cli", "train-supernet", "--space", TRAIN_SPACE, "--data", TRAIN_DATA,
           "--steps", str(sz.ddp_steps), "--batch-size", str(sz.ddp_batch), "--device", device, "--amp", "bf16",
           "--warmup-steps", "1", "--log-every", str(1 if sz.dry else 5), "--checkpoint-every", str(sz.ddp_steps),
           "--panel-random", "0", "--bn-calib-batches", "1", "--seed", "0", "--out", str(out), "--no-progress"]
    if sz.threads:
        cmd += ["--threads", str(sz.threads)]
    cli_args = cmd[cmd.index("scalenas.cli") + 1:]
    build_parser().parse_args(cli_args)  # a wrong flag fails here, also where the run itself is skipped
    checked = "train-supernet command line checked with the CLI parser"
    if sz.dry and not sz.full_dry:
        return [row("ddp", "skipped (dry)", "world_size", world, "processes",
                    f"2 x gloo on CPU only with --full-dry (~25 s); {checked}")]
    if world < 2:
        return [row("ddp", "skipped: 1 GPU", "world_size", world, "processes",
                    f"NCCL DDP needs >= 2 visible GPUs; {checked}")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, env=env, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"torchrun exit {proc.returncode}: {error_line(proc.stderr + proc.stdout)}")
    ck = read_checkpoint(out)
    rows = read_log(out)
    losses = [float(r["loss"]) for r in rows]
    ok = (ck["step"] == sz.ddp_steps and ck["finished"] is True and ck["data"]["world_size"] == world
          and bool(losses) and all(math.isfinite(v) for v in losses))
    sps, n = steady_steps_per_s(rows, sz.ddp_batch, world)
    detail = (f"torchrun {world} x {backend} ({device}), {TRAIN_SPACE}, {ck['step']} steps, batch {sz.ddp_batch}/process, "
              f"checkpoint world_size {ck['data']['world_size']}, losses finite "
              f"{all(math.isfinite(v) for v in losses)}; steady over {n} steps; wall {wall:.1f} s")
    return [row("ddp", "ok" if ok else "failed", "steps_per_s", sps, "steps/s", detail),
            row("ddp", "ok" if ok else "failed", "world_size", world, "processes", f"backend {backend}")]


def check_ray(sz: Sizes, work: Path) -> list[dict]:
    import functools

    from scalenas.cli.main import main as cli
    from scalenas.search.fitness import SupernetEvaluator
    from scalenas.search.raypool import EvaluatorPool, start_local_ray
    from scalenas.spaces.arch import extreme_subnets
    from scalenas.train.checkpoint import checkpoint_space, read_checkpoint

    class DeviceProbeEvaluator(SupernetEvaluator):
        """A SupernetEvaluator whose results also say where the evaluation ran (process, device, GPU memory).
        Defined here, so Ray pickles it by value into the actor."""

        def evaluate(self, item: str) -> dict:
            import torch

            t0 = time.perf_counter()
            out = super().evaluate(item)
            dev = next(self.supernet.parameters()).device
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            out.update(param_device=str(dev), seconds=time.perf_counter() - t0,
                       cuda_visible=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                       gpu=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "",
                       cuda_mem_mib=torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else 0.0)
            return out

    ckpt, what = supernet_checkpoint(sz, work)
    space = checkpoint_space(read_checkpoint(ckpt), str(ckpt))
    gpus = 1.0 if sz.device == "cuda" else 0.0
    out = work / "search"
    import ray

    t0 = time.perf_counter()
    start_local_ray(num_cpus=2 if sz.dry else min(4, os.cpu_count() or 1), object_store_mb=100)
    try:
        t_ray = time.perf_counter() - t0
        if gpus and ray.cluster_resources().get("GPU", 0) < 1:
            raise RuntimeError(f"the local Ray sees no GPU: {ray.cluster_resources()}")
        t1 = time.perf_counter()
        rc = cli(["search", "--supernet", str(ckpt), "--target-flops", SEARCH_TARGET, "--generations", "1",
                  "--population", str(sz.population), "--elites", "2", "--workers", "1", "--threads-per-worker",
                  "1", "--calib-batches", "1", "--device", sz.device, "--out", str(out), "--no-progress"])
        t_search = time.perf_counter() - t1
        if rc != 0:
            raise RuntimeError(f"scalenas search exit code {rc}")
        config = SearchFolder(out).config()
        with open(out / SearchFolder.LOG, newline="") as fh:
            log = list(csv.DictReader(fh))
        # The probe: the same evaluator class in a Ray actor on the GPU, reporting where it computed.
        make = functools.partial(DeviceProbeEvaluator, str(ckpt), calib_batches=1, device=sz.device, threads=1)
        t2 = time.perf_counter()
        with EvaluatorPool(make, workers=1, threads_per_worker=1, gpus_per_worker=gpus) as pool:
            probe = pool.map([extreme_subnets(space, len(space.scaling) - 1)[1].to_json()])[0]
        t_probe = time.perf_counter() - t2
    finally:
        ray.shutdown()
    want = "cuda" if sz.device == "cuda" else "cpu"
    on_device = probe["param_device"].startswith(want) and probe["pid"] != os.getpid()
    searched = config.get("device") == sz.device and config.get("workers") == 1
    status = "ok" if on_device and searched and finite(probe["top1"]) else "failed"
    detail = (f"search on {what}: 1 generation, population {sz.population}, 1 Ray worker, search_config device "
              f"{config.get('device')!r} workers {config.get('workers')}, {len(log)} log row(s), {t_search:.1f} s "
              f"(Ray start {t_ray:.1f} s); probe actor pid {probe['pid']} (driver {os.getpid()}): supernet on "
              f"{probe['param_device']} {probe['gpu']} CUDA_VISIBLE_DEVICES={probe['cuda_visible']!r} peak "
              f"{probe['cuda_mem_mib']:.0f} MiB, top1 {probe['top1']:.3f}, {probe['seconds']:.2f} s in the actor, "
              f"{t_probe:.1f} s with actor start")
    return [row("ray", status, "search_seconds", t_search, "s", detail),
            row("ray", "ok" if on_device else "failed", "probe_eval_seconds", probe["seconds"], "s",
                f"evaluation inside the Ray actor ran on {probe['param_device']}")]


def randomize_bn_(net, seed: int = 0) -> None:
    """Random BN affine parameters and running statistics (eval-mode BN is then not the identity and the
    zero-initialised residual branches are live) and a larger classifier, so equal logits mean something."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            owner, leaf = name.rsplit(".", 1) if "." in name else ("", name)
            if owner == "classifier" and leaf == "weight":
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
                continue
            if "bn" not in owner:
                continue
            if leaf == "weight":
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif leaf in ("bias", "running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif leaf == "running_var":
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)


def check_throughput(sz: Sizes, work: Path) -> list[dict]:
    import torch

    from scalenas.models.supernet import SuperNet, export_subnet
    from scalenas.spaces.arch import Subnet, extreme_subnets, sample_base
    from scalenas.spaces.space import load_space

    set_fp32_exact()
    dev = sz.device
    space = load_space(BENCH_SPACE)
    res0 = space.scaling[0].resolution[0]  # 224
    small = extreme_subnets(space, 0)[0]
    sc1 = space.scaling[1]
    if res0 not in sc1.resolution:
        raise RuntimeError(f"{BENCH_SPACE}: stage 1 has no {res0} px option")
    mid = Subnet(space.name, sample_base(space, random.Random(0)), sc1.depth[len(sc1.depth) // 2],
                 sc1.width[len(sc1.width) // 2], res0)
    large = extreme_subnets(space, 1)[1].with_scaling(max(sc1.depth), max(sc1.width), res0)
    subnets = [("s0-smallest", small), ("s1-middle", mid), ("s1-largest", large)]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    net = SuperNet(space)
    randomize_bn_(net)
    net = net.to(dev).eval()
    build = time.perf_counter() - t0
    res = sz.bench_res or res0
    variants = (("fp32", None, False), ("bf16", torch.bfloat16, False), ("bf16_cl", torch.bfloat16, True))
    x32 = torch.randn(sz.bench_batch, space.in_channels, res, res, generator=torch.Generator().manual_seed(0)).to(dev)
    rows, worst = [], 0.0

    def timed(fn, x, dtype) -> float:
        cast = torch.autocast(dev, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.no_grad(), cast:
            for _ in range(sz.bench_warmup):
                fn(x)
            sync(dev)
            t = time.perf_counter()
            for _ in range(sz.bench_iters):
                out = fn(x)
            sync(dev)
            dt = time.perf_counter() - t
        if not torch.isfinite(out.float()).all():
            raise RuntimeError("non-finite logits")
        return sz.bench_iters * x.shape[0] / dt

    for label, sub in subnets:
        model = export_subnet(net, sub, 0).to(dev).eval()
        with torch.no_grad():
            a, b = net(x32, sub, 0), model(x32)
        diff, scale = float((a - b).abs().max()), float(a.abs().max())
        worst = diff if not math.isnan(worst) and not diff <= worst else worst  # a NaN stays
        for vname, dtype, cl in variants:
            x = x32.contiguous(memory_format=torch.channels_last) if cl else x32
            mdl = model.to(memory_format=torch.channels_last) if cl else model.to(memory_format=torch.contiguous_format)
            sup = timed(lambda t, s=sub: net(t, s, 0), x, dtype)
            sta = timed(mdl, x, dtype)
            info = (f"{sub.short()} at {res} px, batch {sz.bench_batch}, {sz.bench_iters} timed iters after "
                    f"{sz.bench_warmup} warm-up")
            rows.append(row("throughput", "ok", f"supernet_{vname}[{label}]", sup, "images/s", info))
            rows.append(row("throughput", "ok", f"static_{vname}[{label}]", sta, "images/s",
                            f"{info}; static/supernet {sta / sup:.2f}x"))
        rows.append(row("throughput", "ok" if diff <= EXPORT_TOL * max(1.0, scale) else "failed",
                        f"max_abs_diff_fp32[{label}]", diff, "logit",
                        f"static vs supernet path, fp32 TF32 off, max |logit| {scale:.3g}; tolerance "
                        f"{EXPORT_TOL:g} x max(1, max |logit|)"))
    head = next(r for r in rows if r["metric"] == "static_bf16[s1-largest]")
    headline = row("throughput", "ok" if all(finite(r["value"]) for r in rows) else "failed",
                   "static_bf16_images_per_s[s1-largest]", head["value"], "images/s",
                   f"{BENCH_SPACE}, eval, {len(subnets)} subnets x (supernet, static) x (fp32, bf16, bf16+channels_last);"
                   f" supernet build {build:.1f} s; worst fp32 logit diff {worst:.3g}")
    return [headline, *rows]


CHECK_FUNCS = {"train_bf16": check_train_bf16, "export": check_export, "train_fp16": check_train_fp16,
               "ddp": check_ddp, "ray": check_ray, "throughput": check_throughput}


# ============================================================================================ child / parent
def run_child(args: argparse.Namespace) -> int:
    """One check in this process; its rows go to ``--rows`` as JSON."""
    def on_term(signum, frame):  # the parent's timeout: unwind, so that Ray etc. are shut down
        raise TimeoutError(f"stopped by signal {signum} (check timeout)")

    signal.signal(signal.SIGTERM, on_term)
    sz = Sizes(args.dry, args.steps, args.full_dry)
    name = args.child
    try:
        import torch

        if sz.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("no CUDA device visible (use --dry on a CPU machine)")
        if sz.threads:
            torch.set_num_threads(sz.threads)
        dev = device_name(sz.device)
        rows = CHECK_FUNCS[name](sz, Path(args.work))
        rc = 0
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a row
        traceback.print_exc()
        try:
            dev = device_name(sz.device)
        except Exception:  # noqa: BLE001 - the row matters, not the name
            dev = "?"
        rows = [row(name, "failed", "error", float("nan"), "", one_line(exc))]
        rc = 1
    for r in rows:
        r["device"] = dev
    tmp = Path(args.rows).with_suffix(".tmp")
    tmp.write_text(json.dumps(rows))
    os.replace(tmp, args.rows)
    return rc


def write_csv(path: Path, rows: list[dict]) -> None:
    jobkit.write_rows(path, rows, COLUMNS)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the child's process group (it unwinds and shuts Ray down), then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:
                os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group (daemons)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def run_check(name: str, args: argparse.Namespace, work: Path, timeout: float) -> tuple[list[dict], str]:
    rows_path = work / f"{name}.rows.json"
    log_path = work / f"{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--rows", str(rows_path),
           "--work", str(work)] + (["--dry"] if args.dry else []) + (["--full-dry"] if args.full_dry else []) \
        + (["--steps", str(args.steps)] if args.steps else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if args.dry:
        env.setdefault("OMP_NUM_THREADS", "1")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            return [row(name, "failed", "error", float("nan"), "", f"timed out after {timeout:.0f} s")], log_path.read_text()
        finally:
            if proc.poll() is None:
                stop_group(proc)
        try:  # daemons the check left behind in its group (Ray's, if its shutdown failed)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    text = log_path.read_text(errors="replace")
    if rows_path.is_file():
        rows = json.loads(rows_path.read_text())
        if rows:
            return rows, text
    return [row(name, "failed", "error", float("nan"), "", f"exit code {proc.returncode}: {error_line(text)}")], text


def main(argv: list[str] | None = None) -> int:
    ap = jobkit.parser(__doc__)
    ap.add_argument("--dry", action="store_true", help="CPU dry mode: same code path, tiny sizes (~1 min)")
    ap.add_argument("--full-dry", action="store_true", help="with --dry: also run the CPU stand-ins of train_fp16 "
                    "(fp32 on CPU) and ddp (2 gloo processes), ~35 s more")
    ap.add_argument("--out", default=None, help=f"CSV path (default {DEFAULT_OUT.relative_to(REPO)}; dry mode "
                    f"{DEFAULT_DRY_OUT.relative_to(REPO)})")
    ap.add_argument("--timeout", type=float, default=None, help="limit per check in seconds (default: per check, "
                    + ", ".join(f"{k} {v}" for k, v in TIMEOUTS.items()) + ")")
    ap.add_argument("--budget", type=float, default=290.0, help="limit of the whole run in seconds (default 290): a "
                    "check gets at most what is left, one with under 10 s left fails without running")
    ap.add_argument("--checks", default=",".join(CHECKS), help=f"comma list of checks to run (default all: "
                    f"{','.join(CHECKS)})")
    ap.add_argument("--steps", type=int, default=None, help="training steps of the training checks (default 40; "
                    "dry 3)")
    ap.add_argument("--work", default=None, help="folder for runs and per-check logs (kept; default: a temporary "
                    "folder, deleted at the end)")
    ap.add_argument("--child", default=None, choices=CHECKS, help=argparse.SUPPRESS)
    ap.add_argument("--rows", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return run_child(args)
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = [c for c in checks if c not in CHECKS]
    if unknown or not checks:
        ap.error(f"--checks: unknown {unknown} (choose from {', '.join(CHECKS)})")
    if args.full_dry and not args.dry:
        ap.error("--full-dry goes with --dry")
    if args.steps is not None and args.steps < 2:
        ap.error("--steps must be >= 2")
    out = Path(args.out) if args.out else (DEFAULT_DRY_OUT if args.dry else DEFAULT_OUT)
    if args.dry and out.resolve() == DEFAULT_OUT.resolve():
        ap.error(f"--dry does not write {DEFAULT_OUT.relative_to(REPO)} (the GPU record); give another --out")

    import shutil

    keep = args.work is not None
    work = Path(args.work).resolve() if keep else Path(tempfile.mkdtemp(prefix="scalenas_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    limits = DRY_TIMEOUTS if args.dry else TIMEOUTS
    print(f"gpu_check{' --dry' if args.dry else ''}: {len(checks)} checks -> {out} (work {work})", flush=True)
    rows: list[dict] = []
    start = time.perf_counter()
    device = "cpu" if args.dry else "?"
    try:
        for i, name in enumerate(checks, 1):
            left = args.budget - (time.perf_counter() - start)
            limit = min(args.timeout or limits[name], left)
            t0 = time.perf_counter()
            if left < 10:
                got = [row(name, "failed", "error", float("nan"), "", f"not run: time budget "
                           f"{args.budget:.0f} s spent")]
                text = ""
            else:
                got, text = run_check(name, args, work, limit)
            seconds = time.perf_counter() - t0
            for r in got:
                if r.get("device") in (None, "", "?"):
                    r["device"] = device
                device = r["device"] if device == "?" else device
            rows += got
            write_csv(out, rows)
            head = got[0]
            print(f"[{i}/{len(checks)}] {name:<10s} {head['status']:<8s} {head['metric']}={head['value']} "
                  f"{head['unit']} ({seconds:.1f} s) {head['detail'][:160]}", flush=True)
            if any(r["status"] == "failed" for r in got):
                for r in got:
                    if r["status"] == "failed":
                        print(f"    failed: {r['metric']}: {r['detail'][:300]}", flush=True)
                tail = text.strip().splitlines()[-15:]
                if tail:
                    print("    log tail:\n      " + "\n      ".join(tail), flush=True)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    failed = sorted({r["check"] for r in rows if r["status"] == "failed"})
    print(f"gpu_check: {len(rows)} rows in {time.perf_counter() - start:.1f} s, "
          + (f"FAILED: {', '.join(failed)}" if failed else "no failures") + f"; wrote {out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
