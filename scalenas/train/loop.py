"""The one training loop of scalenas: supernet training and standalone training differ only in the step.

The loop owns everything around the step: learning-rate schedule, device precision (AMP), signals (SIGINT /
SIGTERM stop after the current step with a checkpoint), logging rows (``train_log.csv``), checkpoint cadence,
the progress bar and exact resume. A *step object* (:class:`TrainStep`) owns the model, the optimiser and what
one optimiser step means: the supernet's step samples a path, runs the sandwich and distillation passes and
all-reduces the path's gradients; the standalone step is a plain forward/backward.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from scalenas.errors import ScalenasError
from scalenas.io import atomic_write_csv
from scalenas.models.supernet import resolve_conv_impl
from scalenas.train.config import TrainConfig
from scalenas.train.optim import lr_at

LOG_NAME = "train_log.csv"


# ------------------------------------------------------------------------------- environment
@dataclass
class DistInfo:
    """Rank and world size of this process (1 process without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` -> a device (CUDA: this process's local GPU)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ScalenasError("--device cuda: no CUDA device is available (use --device cpu)")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    return cfg.epochs * steps_per_epoch if cfg.epochs is not None else int(cfg.steps)


def configure_cudnn(device: torch.device, setting: str = "auto", dynamic_shapes: bool = True) -> bool:
    """Switch cuDNN on or off for this process when ``device`` is CUDA (no effect elsewhere); returns whether it is on.

    ``dynamic_shapes``: the process runs convolutions whose shapes change from call to call *through cuDNN* -- a
    supernet on the ``conv`` path (channel slices x resolutions x kernels). ``auto`` turns cuDNN off for those and on
    otherwise: a fixed model, or a supernet on the ``gemm`` path (``conv_impl``), whose 1x1 convolutions are matrix
    products, whose depthwise convolutions and sliced batch norms never use cuDNN, and whose stem convolution
    meets only a few shapes. cuDNN builds an execution plan per new (shape, dtype, layout, alignment) and pass:
    on an NVIDIA H200 (torch 2.11 + CUDA 13) supernet training on the conv path ran at ~0.2 steps/s with cuDNN
    and 3.6 without (results/bench/gpu.md). The flag is process-wide because convolution backward picks its
    backend when it runs, not when the forward ran.
    """
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"cudnn: {setting!r}")
    enabled = setting == "on" or (setting == "auto" and not dynamic_shapes)
    if device.type != "cuda":
        return False
    torch.backends.cudnn.enabled = enabled
    return enabled


def check_amp(cfg: TrainConfig, device: torch.device) -> None:
    """Refuse ``amp: fp16`` off CUDA (its grad scaler needs a GPU; CPU trains in fp32, and bf16 is simply unused)."""
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ScalenasError(f"amp: fp16 needs a CUDA device (fp16 with a grad scaler), but this run is on "
                            f"{device.type}; use amp: off or bf16 (CPU trains in fp32)")


class Precision:
    """AMP on CUDA (bf16, or fp16 with a grad scaler), channels_last and cuDNN (:func:`configure_cudnn`);
    plain fp32 on CPU. ``dynamic_shapes``: the model is a supernet whose shapes change every step; with it,
    ``conv_impl`` says whether its convolutions go through cuDNN (``conv``) or matrix products (``gemm``)."""

    def __init__(self, cfg: TrainConfig, device: torch.device, channels_last: bool = True,
                 dynamic_shapes: bool = False):
        check_amp(cfg, device)
        cuda = device.type == "cuda"
        self.conv_impl = resolve_conv_impl(cfg.conv_impl, device) if dynamic_shapes else "conv"
        self.cudnn = configure_cudnn(device, cfg.cudnn, dynamic_shapes and self.conv_impl == "conv")
        self.device_type = device.type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp) if cuda else None
        self.scaler = torch.amp.GradScaler("cuda") if cuda and cfg.amp == "fp16" else None
        self.channels_last = cuda and cfg.channels_last and channels_last

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


class StopRequest:
    """A stop asked for by SIGINT/SIGTERM; the loop finishes the current step, checkpoints and returns."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = 0

    @contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        """Install the signal handlers for the duration of the block (main thread only), then restore them."""
        def handler(signum, frame):  # noqa: ARG001
            self.requested, self.signum = True, signum

        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        try:
            yield self
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)


# ------------------------------------------------------------------------------- the step protocol
@dataclass
class StepResult:
    """What one optimiser step reports: loss and hits of the logged pass, and whether every process stops."""

    loss: float
    correct: int
    seen: int
    stop: bool = False
    log: dict[str, Any] = field(default_factory=dict)  # extra train_log.csv columns (e.g. stage, resolution)


class TrainStep(Protocol):
    """What varies between supernet and standalone training."""

    model: nn.Module
    optimizer: torch.optim.Optimizer

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, stop: bool) -> StepResult:
        """One optimiser step on a batch (already on the device). ``stop``: this process was asked to stop."""

    def state_dict(self) -> Any:
        """Step-owned state besides model and optimiser (e.g. the path sampler's RNG), for exact resume."""

    def load_state_dict(self, state: Any) -> None: ...


@dataclass
class LoopState:
    """Progress of a run: restored from the checkpoint on resume."""

    step: int = 0
    log_rows: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0


def _plain(value: Any) -> Any:
    """A log value as a plain python number or string (what ``weights_only`` loading admits)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def common_payload(step_obj: TrainStep, batches, state: LoopState, total: int, finished: bool,
                   cfg_record: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint fields every run has; callers add their own (format, space, model kind, ...).

    ``log_rows`` (the ``train_log.csv`` rows up to this step) travel inside the checkpoint, so the log can be
    rebuilt from it: a kill between the checkpoint write and the log write loses no row.
    """
    return {"model": step_obj.model.state_dict(), "optimizer": step_obj.optimizer.state_dict(),
            "sampler": step_obj.state_dict(), "data": batches.state_dict(), "torch_rng": torch.get_rng_state(),
            "step": state.step, "total_steps": total, "finished": finished, "config": cfg_record,
            "train_seconds": state.train_seconds,
            "log_rows": [{str(k): _plain(v) for k, v in row.items()} for row in state.log_rows]}


def _saved_rows(payload: dict[str, Any], out_dir: Path, step: int, where: str) -> list[dict[str, Any]]:
    """The log rows up to ``step``: the checkpoint's own (``log_rows``), else (an older checkpoint) the
    ``train_log.csv`` beside it."""
    rows = payload.get("log_rows")
    if rows is not None:
        if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("step"), int)
                                                 for r in rows):
            raise ScalenasError(f"{where}: damaged checkpoint: field 'log_rows' is not a list of log rows")
        return [dict(r) for r in rows if r["step"] <= step]
    log_path = out_dir / LOG_NAME
    if not log_path.is_file():
        return []
    try:
        frame = pd.read_csv(log_path)
        return [r for r in frame.to_dict("records") if r["step"] <= step]
    except (pd.errors.EmptyDataError, pd.errors.ParserError, KeyError, TypeError, ValueError, OSError):
        return []  # an unreadable log of an old checkpoint: the log restarts from the checkpoint


def write_log(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    """``train_log.csv`` from the rows (the human-readable copy of the checkpoint's ``log_rows``)."""
    if rows:
        atomic_write_csv(out_dir / LOG_NAME, pd.DataFrame(rows))


def resumed_config(cfg: TrainConfig, payload: dict[str, Any], where: str) -> TrainConfig:
    """``cfg`` with the checkpoint's saved recipe on top (the run's own recipe wins on resume, so the weights
    match an uninterrupted run), validated like a job file."""
    from scalenas.train.config import validate

    saved = payload.get("config", {})
    if not isinstance(saved, dict):
        raise ScalenasError(f"{where}: damaged checkpoint: field 'config' is not a mapping")
    base = cfg.to_dict()
    try:
        merged = TrainConfig.from_dict({**base, **{k: v for k, v in saved.items() if k in base}})
    except TypeError as exc:
        raise ScalenasError(f"{where}: damaged checkpoint: field 'config': {exc}") from None
    return validate(merged, f"{where}: saved config")


def log_agrees(out_dir: Path, payload: dict[str, Any]) -> bool:
    """Whether ``train_log.csv`` holds exactly the checkpoint's log rows (by step)."""
    rows = payload.get("log_rows")
    if not isinstance(rows, list) or not rows:
        return True  # an older checkpoint (no rows inside), or nothing logged yet: nothing to compare
    try:
        steps = pd.read_csv(out_dir / LOG_NAME)["step"].tolist()
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError, KeyError, ValueError):
        return False
    return steps == [r.get("step") if isinstance(r, dict) else None for r in rows]


def resumed_total(cfg: TrainConfig, payload: dict[str, Any], extend_to: int | None, out_dir: Path,
                  where: str, outputs: tuple[str, ...] = ()) -> tuple[TrainConfig, dict[str, Any] | None]:
    """What a resume does with the run's total: ``(cfg, None)`` to train on, or ``(cfg, summary)`` when the run
    is finished and stays as it is (nothing is written; ``summary["already_finished"]`` is True).

    ``extend_to`` (``--steps`` given with ``--resume``) larger than the run's total extends the run to that many
    steps, finished or not; otherwise the saved total wins. A run whose last checkpoint says finished but whose
    end was cut short (one of ``outputs`` missing, or the log behind the checkpoint) is completed, not skipped.
    """
    step, total = payload.get("step"), payload.get("total_steps")
    if isinstance(step, bool) or not isinstance(step, int) or isinstance(total, bool) or not isinstance(total, int) \
            or not 0 <= step <= total:
        raise ScalenasError(f"{where}: damaged checkpoint: step {step!r} of total_steps {total!r}")
    if extend_to is not None and extend_to > total:
        cfg = dataclasses.replace(cfg, steps=int(extend_to), epochs=None)
        return cfg, None
    complete = all((out_dir / name).is_file() for name in outputs) and log_agrees(out_dir, payload)
    if payload.get("finished") is True and complete:
        return cfg, {"out_dir": str(out_dir), "step": step, "total_steps": total, "finished": True,
                     "already_finished": True}
    return cfg, None


def restore(payload: dict[str, Any], step_obj: TrainStep, batches, out_dir: Path, where: str) -> LoopState:
    """Load a checkpoint's common fields into the step object and batches; read back the log rows."""
    try:
        step_obj.model.load_state_dict(payload["model"])
        step_obj.optimizer.load_state_dict(payload["optimizer"])
        if payload.get("sampler") is not None:
            step_obj.load_state_dict(payload["sampler"])
        batches.load_state_dict(payload["data"])
        torch.set_rng_state(payload["torch_rng"])
        step = int(payload["step"])
        seconds = float(payload.get("train_seconds", 0.0))
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ScalenasError(f"{where}: weights do not fit this run (another space or model?): {first}") from None
    return LoopState(step, _saved_rows(payload, out_dir, step, where), seconds)


# ------------------------------------------------------------------------------- the loop
BOARD_DIR = "tensorboard"


def _tensorboard(out_dir: Path, step: int):
    """A TensorBoard writer in ``RUN/tensorboard`` when the ``tensorboard`` package is installed, else None.

    ``purge_step``: a resumed run drops events logged after its checkpoint, so the curves have no doubles.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(Path(out_dir) / BOARD_DIR), purge_step=step if step > 0 else None)


def run_loop(step_obj: TrainStep, batches, cfg: TrainConfig, *, total: int, device: torch.device,
             out_dir: Path, state: LoopState, save_checkpoint: Callable[[bool], None],
             dinfo: DistInfo | None = None, progress: bool = True, desc: str = "train",
             stop_after: int | None = None, resume_hint: str = "") -> bool:
    """Train until ``total`` steps (or a stop); returns True when the run finished.

    ``save_checkpoint(finished)`` writes the caller's checkpoint; the loop calls it every
    ``cfg.checkpoint_every`` steps and once at the end (also after an interruption), then writes the log.
    ``stop_after`` simulates an interruption after that many steps.
    """
    dinfo = dinfo or DistInfo()
    main = dinfo.main

    def checkpoint(finished: bool) -> None:
        if not main:
            return
        save_checkpoint(finished)  # holds the log rows too: a kill before the next line loses none
        write_log(out_dir, state.log_rows)

    if main and state.step > 0:  # resumed: the log agrees with the checkpoint from the first moment
        write_log(out_dir, state.log_rows)

    board = _tensorboard(out_dir, state.step) if main and cfg.tensorboard else None
    stage_loss: dict[int, list[float]] = {}
    stop = StopRequest()
    bar = tqdm(total=total, initial=state.step, disable=not (progress and main), dynamic_ncols=True, desc=desc,
               unit="step")
    t_last, t_start, imgs, loss_sum, correct, seen = time.perf_counter(), time.perf_counter(), 0, 0.0, 0, 0
    wait, steps_since = 0.0, 0
    interrupted = False
    with stop.installed():
        try:
            while state.step < total:
                lr = lr_at(state.step, total, cfg.lr, cfg.warmup_steps, schedule=cfg.schedule)
                for g in step_obj.optimizer.param_groups:
                    g["lr"] = lr
                t_data = time.perf_counter()
                xb, yb = next(batches)
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                wait += time.perf_counter() - t_data
                res = step_obj(xb, yb, stop.requested)
                state.step += 1
                steps_since += 1
                loss_sum += res.loss * res.seen
                correct += res.correct
                seen += res.seen
                imgs += len(yb) * dinfo.world
                if "stage" in res.log:
                    acc = stage_loss.setdefault(int(res.log["stage"]), [0.0, 0])
                    acc[0], acc[1] = acc[0] + res.loss, acc[1] + 1
                if state.step % cfg.log_every == 0 or state.step == total:
                    now = time.perf_counter()
                    ips = imgs / max(1e-9, now - t_last)
                    row = {"step": state.step, "epoch": batches.epoch, "lr": lr, "loss": loss_sum / max(1, seen),
                           "train_top1": correct / max(1, seen), "images_per_s": ips,
                           "data_wait_s": wait / max(1, steps_since), **res.log}
                    state.log_rows.append(row)
                    if board is not None:
                        for key in ("loss", "train_top1", "lr", "images_per_s", "data_wait_s"):
                            board.add_scalar(f"train/{key}", row[key], state.step)
                        for s_, (total_loss, n) in sorted(stage_loss.items()):
                            board.add_scalar(f"train/loss_stage{s_}", total_loss / n, state.step)
                    stage_loss.clear()
                    bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_top1']:.3f}", lr=f"{lr:.4f}",
                                    img_s=f"{ips:.0f}")
                    t_last, imgs, loss_sum, correct, seen, wait, steps_since = now, 0, 0.0, 0, 0, 0.0, 0
                bar.update(1)
                if state.step % cfg.checkpoint_every == 0 and state.step < total:
                    now = time.perf_counter()
                    state.train_seconds, t_start = state.train_seconds + now - t_start, now
                    checkpoint(False)
                if res.stop or (stop_after is not None and state.step >= stop_after):
                    interrupted = state.step < total  # a stop on the very last step is a finished run
                    break
        finally:
            bar.close()
            if hasattr(batches, "close"):
                batches.close()  # a streaming source's loader workers
            if board is not None:
                board.close()
    state.train_seconds += time.perf_counter() - t_start
    checkpoint(not interrupted)
    if interrupted and main:
        sys.stderr.write(f"interrupted at step {state.step}/{total}; checkpoint saved in {out_dir}. "
                         f"Continue with: {resume_hint or 'the same command with --resume'} --out {out_dir}\n")
    return not interrupted
