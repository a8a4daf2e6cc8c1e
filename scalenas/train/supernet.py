"""Training the super-supernet with hierarchical sampling (docs/method.md), resumable, CPU to multi-GPU.

One step: draw a scaling stage (weights from the space), then d, w, r, then a base network, and a coupling side;
resize the batch to the subnet's resolution; forward/backward through that path only; :class:`PathSGD` updates
only the entries the path used. With ``torchrun`` every process draws the same subnet (same sampler seed) and
the gradients of the path are averaged with one all-reduce per step.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F

from scalenas.errors import ScalenasError
from scalenas.io import (atomic_write_csv, atomic_write_json, atomic_write_text, folder_lock, make_dir,
                         remove_stale_temps, seed_everything)
from scalenas.models.supernet import SuperNet
from scalenas.runs import RunFolder, latest_run, new_run_dir
from scalenas.spaces.arch import Subnet, extreme_subnets, sample_base, sample_subnet
from scalenas.spaces.flops import subnet_flops_params
from scalenas.spaces.space import SearchSpace, load_space, space_from_dict
from scalenas.data.augment import DevicePipeline, train_view
from scalenas.data.batches import BatchIterator, derived_seed
from scalenas.data.splits import DataSplits
from scalenas.train.checkpoint import CKPT_NAME, checkpoint_space, read_checkpoint, save_checkpoint
from scalenas.train.config import TrainConfig, data_record, dump_config, load_run_data
from scalenas.train.evaluate import calibration_batches, soft_cross_entropy, subnet_top1
from scalenas.train.loop import (DistInfo, LoopState, Precision, StepResult, check_amp, common_payload,
                                 init_distributed, resolve_device, restore, resumed_config, resumed_total, run_loop,
                                 total_steps)
from scalenas.train.optim import make_optimizer, masks_from_record

# Debug hook (tests of multi-process runs): when set, every process appends one JSON line per step to
# "<value>.rank<R>.jsonl" with the step's stage, coupling side, subnets and the sum of all parameters after it.
DEBUG_ENV = "SCALENAS_DEBUG_STEPS"
STOP_ENV = "SCALENAS_DEBUG_STOP_AFTER"  # stop (as if interrupted) after this many steps


# ------------------------------------------------------------------------------- sampling
class PathSampler:
    """Seeded sampler of (stage, subnets, side) per step; its state is checkpointed for exact resume.

    ``stage``: draw every step from this scaling stage only (benchmarks compare a stage with its static models).
    """

    def __init__(self, space: SearchSpace, cfg: TrainConfig, seed: int, stage: int | None = None):
        self.space, self.cfg, self.stage = space, cfg, stage
        self.rng = random.Random(seed)

    def draw(self) -> tuple[int, list[Subnet], int]:
        if self.stage is None:
            stage, sub = sample_subnet(self.space, self.rng, hierarchical=self.cfg.sampling == "hierarchical")
        else:
            stage, sub = sample_subnet(self.space, self.rng, stage=self.stage)
        side = self.rng.randrange(2) if self.space.coupling == 2 else 0
        if not self.cfg.sandwich:
            return stage, [sub], side
        small, large = extreme_subnets(self.space, stage)
        # The extremes of the stage keep their multipliers. The smallest gets a random base, so every op is
        # trained; the largest gets the largest kernel everywhere (max-ops, BigNAS) or a random base too: ops do
        # not share weights here, so the max-ops path is one path among many that the sandwich would favour.
        large_base = (_largest_base(self.space) if self.cfg.sandwich_largest == "max-ops"
                      else sample_base(self.space, self.rng))
        large = Subnet(self.space.name, large_base, large.depth, large.width, large.resolution)
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


# ------------------------------------------------------------------------------- the supernet step
class SupernetStep:
    """One supernet optimiser step: draw the path(s), forward/backward each, all-reduce, masked update."""

    def __init__(self, model: SuperNet, optimizer, sampler: PathSampler, cfg: TrainConfig, precision: Precision,
                 dinfo: DistInfo, debug_path: str | None = None, pipeline: DevicePipeline | None = None):
        self.model, self.optimizer, self.sampler, self.cfg = model, optimizer, sampler, cfg
        self.precision, self.dinfo, self.debug_path = precision, dinfo, debug_path
        self.pipeline = pipeline
        self.steps = 0

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, stop: bool) -> StepResult:
        cfg, model, prec = self.cfg, self.model, self.precision
        stage, subnets, side = self.sampler.draw()
        model.train()
        model.record = []
        self.optimizer.zero_grad(set_to_none=True)
        teacher = None
        loss_v, correct = 0.0, 0
        # One seed per step and rank: every pass of the step sees the same views, at its own resolution.
        view_seed = derived_seed(cfg.seed, self.steps, self.dinfo.rank, 11)
        for k, sub in enumerate(subnets):
            x = prec.prepare(train_view(self.pipeline, xb, sub.resolution, view_seed))
            with prec.autocast():
                out = model(x, sub, side)
                if teacher is not None:
                    loss = soft_cross_entropy(out.float(), teacher)
                else:
                    loss = F.cross_entropy(out.float(), yb, label_smoothing=cfg.label_smoothing)
            if k == 0 and cfg.inplace_distill:
                teacher = F.softmax(out.detach().float(), 1)
            prec.backward(loss)
            if k == len(subnets) - 1 or not cfg.sandwich:
                loss_v = float(loss.detach())
                correct = int((out.argmax(1) == yb).sum())
        # Every process stops after the same step: the stop flag travels with the gradients.
        if self.dinfo.world > 1:
            stop = allreduce_path_grads(model, self.dinfo.world, stop)
        self.optimizer.set_masks(masks_from_record(model.record))
        model.record = None
        prec.step(self.optimizer)
        self.steps += 1
        if self.debug_path:
            _debug_step(self.debug_path, self.dinfo.rank, self.steps, stage, side, subnets, model, xb)
        return StepResult(loss_v, correct, len(yb), stop, {"stage": stage, "resolution": subnets[-1].resolution})

    def state_dict(self) -> Any:
        return self.sampler.state()

    def load_state_dict(self, state: Any) -> None:
        self.sampler.load(state)


# ------------------------------------------------------------------------------- the trainer
def train_supernet(cfg: TrainConfig, out_dir: Path | None = None, resume: bool = False,
                   progress: bool = True, stop_after: int | None = None, *,
                   space_from_checkpoint: bool = False, extend_to: int | None = None) -> dict[str, Any]:
    """Train (or resume) a supernet run; returns a summary dict. ``stop_after`` simulates an interruption.

    On resume the run's saved recipe wins over ``cfg``. ``cfg.space`` must name the checkpoint's space, unless
    ``space_from_checkpoint`` (the CLI's ``--resume`` without ``--space``/``--job``) takes it from the checkpoint.
    A finished run is left as it is (every file unchanged; the summary says ``already_finished``) unless
    ``extend_to`` (the CLI's ``--steps`` on resume) exceeds its total: then it trains on to that many steps.
    The run folder is locked (:func:`~scalenas.io.folder_lock`) while this runs; stale temp files are removed.
    """
    wall_start = time.perf_counter()
    if stop_after is None and os.environ.get(STOP_ENV):
        stop_after = int(os.environ[STOP_ENV])  # a debug hook: simulate an interruption (tests, torchrun)
    space = None if (resume and space_from_checkpoint) else load_space(cfg.space)
    dinfo = init_distributed(cfg.device)
    device = resolve_device(cfg.device, dinfo.local_rank)
    check_amp(cfg, device)  # a resumed run's own recipe is checked again once it is read
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if resume:
        if out_dir is None:
            out_dir = latest_run(CKPT_NAME)
        if not (Path(out_dir) / CKPT_NAME).is_file():
            raise ScalenasError(f"--resume: nothing to resume in {out_dir} (no {CKPT_NAME})")
    else:
        out_dir = Path(out_dir) if out_dir is not None else new_run_dir(Path(cfg.space).stem)
        if (out_dir / CKPT_NAME).exists():
            raise ScalenasError(f"{out_dir} already holds a checkpoint; use --resume or another --out")
    out_dir = Path(out_dir)
    with folder_lock(out_dir, "training run") if dinfo.main else contextlib.nullcontext():
        if dinfo.main:
            remove_stale_temps(out_dir)
        return _train_supernet(cfg, out_dir, space, dinfo, device, resume, progress, stop_after, extend_to,
                               wall_start)


def _train_supernet(cfg: TrainConfig, out_dir: Path, space: SearchSpace | None, dinfo: DistInfo,
                    device: torch.device, resume: bool, progress: bool, stop_after: int | None,
                    extend_to: int | None, wall_start: float) -> dict[str, Any]:
    # Everything that can fail on bad input fails before anything is written.
    payload = None
    if resume:
        ckpt_path = out_dir / CKPT_NAME
        payload = read_checkpoint(ckpt_path)
        if space is None:
            space = checkpoint_space(payload, str(ckpt_path))
        if payload["space"] != space.name:
            raise ScalenasError(f"{ckpt_path}: checkpoint of space {payload['space']!r}, but the job trains "
                                f"{space.name!r}")
        # The run's own recipe wins on resume, so the weights match an uninterrupted run.
        rescan = cfg.rescan_data  # an action of this invocation, not part of the saved recipe
        cfg = resumed_config(cfg, payload, str(ckpt_path))
        cfg.rescan_data = rescan
        cfg, done = resumed_total(cfg, payload, extend_to, out_dir, str(ckpt_path),
                                  outputs=(RunFolder.PANEL, RunFolder.SUMMARY))
        if done:
            return done
    check_amp(cfg, device)  # the recipe a resume goes on with, before anything is written
    data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    data = load_run_data(cfg, space.in_channels, out_dir, device)
    if data.num_classes != space.num_classes:
        space = _space_with_classes(space, data.num_classes)

    seed_everything(cfg.seed)
    precision = Precision(cfg, device, dynamic_shapes=True)
    model = SuperNet(space).to(device)
    model.conv_impl = precision.conv_impl  # gemm on CUDA by default: no per-shape cuDNN plans
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg.optimizer, model, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                         nesterov=cfg.nesterov, path_masked=True)
    batches = BatchIterator(data.train, cfg.batch_size, seed=cfg.seed, rank=dinfo.rank, world_size=dinfo.world)
    step_obj = SupernetStep(model, opt, PathSampler(space, cfg, cfg.seed), cfg, precision, dinfo,
                            os.environ.get(DEBUG_ENV), data.pipeline)
    total = total_steps(cfg, batches.steps_per_epoch)
    state = LoopState()
    if payload is not None:
        state = restore(payload, step_obj, batches, out_dir, str(ckpt_path))
        step_obj.steps = state.step
    cfg_record = {**cfg.to_dict(), "data_seed": data_seed}

    if dinfo.main:
        make_dir(out_dir)
        atomic_write_text(out_dir / RunFolder.CONFIG, dump_config(cfg))
        data.save_info(out_dir / RunFolder.SPLIT)
        # what every command that continues this run follows: its data, split and fitted space
        RunFolder(out_dir).write_data_record(data_record(cfg, data))
        RunFolder(out_dir).write_space(space.raw)

    def save(finished: bool) -> None:
        save_checkpoint(out_dir / CKPT_NAME, {
            "space": space.name, "space_path": space.path, "space_yaml": space.raw,
            **common_payload(step_obj, batches, state, total, finished, cfg_record),
            "num_classes": data.num_classes})

    finished = run_loop(step_obj, batches, cfg, total=total, device=device, out_dir=out_dir, state=state,
                        save_checkpoint=save, dinfo=dinfo, progress=progress, desc="train-supernet",
                        stop_after=stop_after, resume_hint="scalenas train-supernet --resume")
    summary: dict[str, Any] = {"out_dir": str(out_dir), "step": state.step, "total_steps": total,
                               "finished": finished}
    if not finished:
        return summary
    if dinfo.main:
        panel = evaluate_panel(model, space, data, cfg, device)
        atomic_write_csv(out_dir / RunFolder.PANEL, panel)
        summary["panel"] = panel
        # Wall time and panel of this invocation (a resumed run records only its own part).
        atomic_write_json(out_dir / RunFolder.SUMMARY, {
            "space": space.name, "steps": state.step, "total_steps": total, "resumed": resume,
            "wall_s": round(time.perf_counter() - wall_start, 1), "threads": torch.get_num_threads(),
            "panel_mean_holdout_top1": float(panel["holdout_top1"].mean()),
            "panel_min_holdout_top1": float(panel["holdout_top1"].min())})
    return summary

def _space_with_classes(space: SearchSpace, classes: int) -> SearchSpace:
    """The space with the data's number of classes (the classifier size follows the data)."""
    raw = dict(space.raw)
    raw["num_classes"] = classes
    return space_from_dict(raw, space.path)


def allreduce_path_grads(model: SuperNet, world: int, stop: bool = False) -> bool:
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
                model: SuperNet, xb: torch.Tensor) -> None:
    with torch.no_grad():
        total = float(sum(p.double().sum() for p in model.parameters()).item())
    # first_pixels: the raw top-left value of every image of the batch (tests mark images by it)
    row = {"step": step, "stage": stage, "side": side, "subnets": [s.to_dict() for s in subnets],
           "param_sum": total, "first_pixels": xb[:, 0, 0, 0].float().tolist()}
    with open(f"{prefix}.rank{rank}.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


def evaluate_panel(model: SuperNet, space: SearchSpace, data: DataSplits, cfg: TrainConfig,
                   device: torch.device) -> pd.DataFrame:
    """Holdout top-1 (after BN recalibration, coupling side 0) of the fixed panel of subnets."""
    calib = calibration_batches(data.train, cfg.bn_calib_batches, cfg.batch_size, cfg.seed)
    rows = []
    for name, stage, sub in panel_subnets(space, cfg.panel_random, cfg.seed):
        flops, params = subnet_flops_params(space, sub)
        top1 = subnet_top1(model, sub, calib, data.holdout, 0, device, batch_size=cfg.batch_size)
        rows.append({"name": name, "stage": stage, "flops": flops, "params": params,
                     "resolution": sub.resolution, "depth_mult": sub.depth, "width_mult": sub.width,
                     "holdout_top1": round(top1, 4), "arch": sub.to_json()})
    return pd.DataFrame(rows)
