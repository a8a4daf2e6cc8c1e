"""Training the super-supernet with hierarchical sampling (METHOD.md §4), resumable, CPU to multi-GPU.

One step: draw a scaling stage (weights from the space), then d, w, r, then a base network, and a coupling side;
resize the batch to the subnet's resolution; forward/backward through that path only; :class:`PathSGD` updates
only the entries the path used. With ``torchrun`` every process draws the same subnet (same sampler seed) and
the gradients of the path are averaged with one all-reduce per step.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from scalenas.spaces.arch import Subnet, extreme_subnets, sample_base, sample_subnet
from scalenas.train.checkpoint import CKPT_NAME, checkpoint_space, read_checkpoint, save_checkpoint
from scalenas.train.config import TrainConfig, dump_config
from scalenas.data.datasets import BatchIterator, DataSplits, load_data, resize_batch
from scalenas.errors import ScalenasError
from scalenas.train.evaluate import calibration_batches, soft_cross_entropy, subnet_top1
from scalenas.spaces.flops import subnet_flops_params
from scalenas.io import atomic_write_csv, atomic_write_json, atomic_write_text, seed_everything
from scalenas.train.optim import PathSGD, lr_at, masks_from_record, param_groups
from scalenas.spaces.space import SearchSpace, load_space
from scalenas.models.supernet import SuperNet

RUNS_DIR = Path("results") / "runs"
# Debug hook (tests of multi-process runs): when set, every process appends one JSON line per step to
# "<value>.rank<R>.jsonl" with the step's stage, coupling side, subnets and the sum of all parameters after it.
DEBUG_ENV = "SCALENAS_DEBUG_STEPS"


# ------------------------------------------------------------------------------- environment
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ScalenasError("--device cuda: no CUDA device is available (use --device cpu)")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def new_run_dir(label: str) -> Path:
    """A new, not yet existing folder ``results/runs/<time>-<label>`` (suffixed -1, -2, ... on a clash)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = RUNS_DIR / f"{stamp}-{label}"
    path, k = base, 1
    while path.exists():
        path = Path(f"{base}-{k}")
        k += 1
    return path


def latest_run(kind_file: str = CKPT_NAME, missing: str | None = None) -> Path:
    """The most recently modified run folder holding ``kind_file``; ``missing`` is the error when there is none."""
    runs = sorted((p for p in RUNS_DIR.glob("*") if (p / kind_file).is_file()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ScalenasError(missing or f"no run found under {RUNS_DIR}/ holding {kind_file} "
                            "(train one with scalenas train-supernet)")
    return runs[-1]


# ------------------------------------------------------------------------------- sampling
class PathSampler:
    """Seeded sampler of (stage, subnets, side) per step; its state is checkpointed for exact resume."""

    def __init__(self, space: SearchSpace, cfg: TrainConfig, seed: int):
        self.space, self.cfg = space, cfg
        self.rng = random.Random(seed)

    def draw(self) -> tuple[int, list[Subnet], int]:
        stage, sub = sample_subnet(self.space, self.rng, hierarchical=self.cfg.sampling == "hierarchical")
        side = self.rng.randrange(2) if self.space.coupling == 2 else 0
        if not self.cfg.sandwich:
            return stage, [sub], side
        small, large = extreme_subnets(self.space, stage)
        # The extremes of the stage keep their multipliers but get a random base, so every op is trained.
        large = Subnet(self.space.name, _largest_base(self.space), large.depth, large.width, large.resolution)
        small = Subnet(self.space.name, sample_base(self.space, self.rng), small.depth, small.width,
                       small.resolution)
        return stage, [large, small, sub], side

    def state(self) -> Any:
        return self.rng.getstate()

    def load(self, state: Any) -> None:
        self.rng.setstate(_to_tuple(state))


def _largest_base(space: SearchSpace):
    return tuple(tuple(max(st.ops, key=lambda o: space.ops[o].kernel) for _ in range(st.max_layers))
                 for st in space.stages)


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def panel_subnets(space: SearchSpace, n_random: int, seed: int) -> list[tuple[str, int, Subnet]]:
    """The fixed report panel: smallest and largest of every scaling stage and a few random subnets."""
    out = []
    for s in range(len(space.scaling)):
        small, large = extreme_subnets(space, s)
        out += [(f"s{s}-smallest", s, small), (f"s{s}-largest", s, large)]
    rng = random.Random(seed + 7919)
    for k in range(n_random):
        stage, sub = sample_subnet(space, rng)
        out.append((f"random-{k}", stage, sub))
    return out


# ------------------------------------------------------------------------------- the trainer
class _Stop:
    requested = False
    signum = 0


def _install_signal_handlers() -> dict:
    old = {}

    def handler(signum, frame):  # noqa: ARG001
        _Stop.requested = True
        _Stop.signum = signum

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. inside a test runner thread)
            pass
    return old


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    return cfg.epochs * steps_per_epoch if cfg.epochs is not None else int(cfg.steps)


def train_supernet(cfg: TrainConfig, out_dir: Path | None = None, resume: bool = False,
                   progress: bool = True, stop_after: int | None = None, *,
                   space_from_checkpoint: bool = False) -> dict[str, Any]:
    """Train (or resume) a supernet run; returns a summary dict. ``stop_after`` simulates an interruption.

    On resume the run's saved recipe wins over ``cfg``. ``cfg.space`` must name the checkpoint's space, unless
    ``space_from_checkpoint`` (the CLI's ``--resume`` without ``--space``/``--job``) takes it from the checkpoint.
    """
    wall_start = time.perf_counter()
    space = None if (resume and space_from_checkpoint) else load_space(cfg.space)
    device_pref = torch.device("cuda") if cfg.device == "cuda" else torch.device("cpu")
    dinfo = init_distributed(device_pref if cfg.device != "auto" else
                             (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")))
    device = resolve_device(cfg.device, dinfo.local_rank)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # Everything that can fail on bad input fails before anything is written.
    payload = None
    if resume:
        if out_dir is None:
            out_dir = latest_run()
        ckpt_path = Path(out_dir) / CKPT_NAME
        if not ckpt_path.is_file():
            raise ScalenasError(f"--resume: nothing to resume in {out_dir} (no {CKPT_NAME})")
        payload = read_checkpoint(ckpt_path)
        if space is None:
            space = checkpoint_space(payload, str(ckpt_path))
        if payload["space"] != space.name:
            raise ScalenasError(f"{ckpt_path}: checkpoint of space {payload['space']!r}, but the job trains "
                                f"{space.name!r}")
        saved = payload.get("config", {})
        # The run's own recipe wins on resume, so the weights match an uninterrupted run.
        cfg = TrainConfig(**{**cfg.to_dict(), **{k: v for k, v in saved.items() if k in cfg.to_dict()}})
    else:
        out_dir = Path(out_dir) if out_dir is not None else new_run_dir(Path(cfg.space).stem)
        if (out_dir / CKPT_NAME).exists():
            raise ScalenasError(f"{out_dir} already holds a checkpoint; use --resume or another --out")
    data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    data = load_data(cfg.data, seed=data_seed, holdout_frac=cfg.holdout_frac, test_frac=cfg.test_frac,
                     in_channels=space.in_channels, store_size=cfg.store_size)
    if data.num_classes != space.num_classes:
        space = _space_with_classes(space, data.num_classes)

    seed_everything(cfg.seed)
    model = SuperNet(space).to(device)
    if device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = PathSGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                  nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    batches = BatchIterator(data.train, cfg.batch_size, seed=cfg.seed, rank=dinfo.rank, world_size=dinfo.world,
                            augment=cfg.augment)
    sampler = PathSampler(space, cfg, cfg.seed)
    total = total_steps(cfg, batches.steps_per_epoch)
    step = 0
    log_rows: list[dict] = []
    if payload is not None:
        try:
            model.load_state_dict(payload["model"])
            opt.load_state_dict(payload["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ScalenasError(f"{ckpt_path}: weights do not fit space {space.name!r}: {first}") from None
        sampler.load(payload["sampler"])
        batches.load_state_dict(payload["data"])
        torch.set_rng_state(payload["torch_rng"])
        step = int(payload["step"])
        log_path = Path(out_dir) / "train_log.csv"
        if log_path.is_file():
            log_rows = pd.read_csv(log_path).to_dict("records")
            log_rows = [r for r in log_rows if r["step"] <= step]
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and cfg.amp == "fp16" else None
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    use_amp = device.type == "cuda" and amp_dtype is not None
    debug_path = os.environ.get(DEBUG_ENV)

    if dinfo.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", dump_config(cfg))
        data.save_info(out_dir / "split.json")

    def checkpoint(finished: bool) -> None:
        if not dinfo.main:
            return
        save_checkpoint(out_dir / CKPT_NAME, {
            "space": space.name, "space_path": space.path, "space_yaml": space.raw, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "sampler": sampler.state(), "data": batches.state_dict(),
            "torch_rng": torch.get_rng_state(), "step": step, "total_steps": total, "finished": finished,
            "config": {**cfg.to_dict(), "data_seed": data_seed}, "num_classes": data.num_classes})
        if log_rows:
            atomic_write_csv(out_dir / "train_log.csv", pd.DataFrame(log_rows))

    old_handlers = _install_signal_handlers()
    _Stop.requested = False
    bar = tqdm(total=total, initial=step, disable=not (progress and dinfo.main), dynamic_ncols=True,
               desc="train-supernet", unit="step")
    t_last, imgs_since, loss_sum, correct, seen = time.perf_counter(), 0, 0.0, 0, 0
    interrupted = False
    try:
        while step < total:
            lr = lr_at(step, total, cfg.lr, cfg.warmup_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            stage, subnets, side = sampler.draw()
            xb, yb = next(batches)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            model.train()
            model.record = []
            opt.zero_grad(set_to_none=True)
            teacher = None
            for k, sub in enumerate(subnets):
                x = resize_batch(xb, sub.resolution)
                if device.type == "cuda" and cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
                    out = model(x, sub, side)
                    if teacher is not None:
                        loss = soft_cross_entropy(out.float(), teacher)
                    else:
                        loss = F.cross_entropy(out.float(), yb, label_smoothing=cfg.label_smoothing)
                if k == 0 and cfg.inplace_distill:
                    teacher = F.softmax(out.detach().float(), 1)
                (scaler.scale(loss) if scaler else loss).backward()
                if k == len(subnets) - 1 or not cfg.sandwich:
                    loss_sum += float(loss.detach()) * len(yb)
                    correct += int((out.argmax(1) == yb).sum())
                    seen += len(yb)
            # Every process stops after the same step: the stop flag travels with the gradients.
            stop_now = _Stop.requested
            if dinfo.world > 1:
                stop_now = _allreduce_grads(model, dinfo.world, stop_now)
            opt.set_masks(masks_from_record(model.record))
            model.record = None
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            step += 1
            if debug_path:
                _debug_step(debug_path, dinfo.rank, step, stage, side, subnets, model)
            imgs_since += len(yb) * dinfo.world
            if step % cfg.log_every == 0 or step == total:
                now = time.perf_counter()
                ips = imgs_since / max(1e-9, now - t_last)
                row = {"step": step, "epoch": batches.epoch, "lr": lr, "loss": loss_sum / max(1, seen),
                       "train_top1": correct / max(1, seen), "images_per_s": ips, "stage": stage,
                       "resolution": subnets[-1].resolution}
                log_rows.append(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_top1']:.3f}", lr=f"{lr:.4f}",
                                img_s=f"{ips:.0f}")
                t_last, imgs_since, loss_sum, correct, seen = now, 0, 0.0, 0, 0
            bar.update(1)
            if step % cfg.checkpoint_every == 0 and step < total:
                checkpoint(False)
            if stop_now or (stop_after is not None and step >= stop_after):
                interrupted = step < total  # a stop on the very last step is a finished run
                break
    finally:
        bar.close()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
    checkpoint(not interrupted)
    summary: dict[str, Any] = {"out_dir": str(out_dir), "step": step, "total_steps": total,
                               "finished": not interrupted}
    if interrupted:
        if dinfo.main:
            sys.stderr.write(f"interrupted at step {step}/{total}; checkpoint saved in {out_dir}. "
                             f"Continue with: scalenas train-supernet --resume --out {out_dir}\n")
        return summary
    if dinfo.main:
        panel = evaluate_panel(model, space, data, cfg, device)
        atomic_write_csv(out_dir / "panel.csv", panel)
        summary["panel"] = panel
        # Wall time and panel of this invocation (a resumed run records only its own part).
        atomic_write_json(out_dir / "run_summary.json", {
            "space": space.name, "steps": step, "total_steps": total, "resumed": resume,
            "wall_s": round(time.perf_counter() - wall_start, 1), "threads": torch.get_num_threads(),
            "panel_mean_holdout_top1": float(panel["holdout_top1"].mean()),
            "panel_min_holdout_top1": float(panel["holdout_top1"].min())})
    return summary


def _space_with_classes(space: SearchSpace, classes: int) -> SearchSpace:
    """The space with the data's number of classes (the classifier size follows the data)."""
    from scalenas.spaces.space import space_from_dict

    raw = dict(space.raw)
    raw["num_classes"] = classes
    return space_from_dict(raw, space.path)


def _allreduce_grads(model: SuperNet, world: int, stop: bool = False) -> bool:
    """Average the path's gradients over processes: one flat all-reduce (every rank used the same path).

    A stop request (signal) of any process rides along as one extra element; returns True on every process
    when any process asked to stop, so all of them leave the loop after the same step.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    ref = grads[0] if grads else next(model.parameters())
    flag = torch.tensor([1.0 if stop else 0.0], dtype=ref.dtype, device=ref.device)
    flat = torch.cat([g.reshape(-1) for g in grads] + [flag])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
    return bool(flat[-1] > 0)


def _debug_step(prefix: str, rank: int, step: int, stage: int, side: int, subnets: list[Subnet],
                model: SuperNet) -> None:
    with torch.no_grad():
        total = float(sum(p.double().sum() for p in model.parameters()).item())
    row = {"step": step, "stage": stage, "side": side, "subnets": [s.to_dict() for s in subnets],
           "param_sum": total}
    with open(f"{prefix}.rank{rank}.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


def evaluate_panel(model: SuperNet, space: SearchSpace, data: DataSplits, cfg: TrainConfig,
                   device: torch.device) -> pd.DataFrame:
    """Holdout top-1 (after BN recalibration, coupling side 0) of the fixed panel of subnets."""
    calib = calibration_batches(data.train, cfg.bn_calib_batches, cfg.batch_size, cfg.seed)
    rows = []
    for name, stage, sub in panel_subnets(space, cfg.panel_random, cfg.seed):
        flops, params = subnet_flops_params(space, sub)
        top1 = subnet_top1(model, sub, calib, data.holdout, 0, device)
        rows.append({"name": name, "stage": stage, "flops": flops, "params": params,
                     "resolution": sub.resolution, "depth_mult": sub.depth, "width_mult": sub.width,
                     "holdout_top1": round(top1, 4), "arch": sub.to_json()})
    return pd.DataFrame(rows)
