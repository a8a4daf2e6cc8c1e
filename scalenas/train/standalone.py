"""Training ONE standalone model (a searched or extrapolated subnet, a ViT, a grown model), resumable.

Same data, splits and recipe as the supernet (:mod:`scalenas.train.supernet`): SGD with Nesterov momentum
(plain ``torch.optim.SGD``: every parameter is used every step, so nothing leaks as it would in a supernet),
no weight decay on BN parameters and biases (:func:`~scalenas.train.optim.param_groups`), linear warm-up + cosine
(:func:`~scalenas.train.optim.lr_at`), label smoothing, random 1-2 px shifts. Batches are resized once per step to
the model's resolution (the subnet's own for a CNN, ``image_size`` for a ViT).

Where the weights start (``init``):

* ``"scratch"``: fresh initialisation (default for an architecture JSON; a model file is rebuilt from its
  config and re-initialised);
* ``"supernet:CKPT"``: the subnet's weights inherited from a supernet checkpoint (coupling side 0, via
  :func:`~scalenas.models.supernet.export_subnet`); only for subnets inside the supernet's scaling stages;
* a model file written by :func:`~scalenas.models.registry.save_model` (e.g. a grown model); its architecture must
  match ``arch`` when both are given. A model file given as ``arch`` starts from its own weights by default.

A run directory holds ``config.yaml``, ``split.json``, ``arch.json``, ``train_checkpoint.pt`` (atomic, every
``checkpoint_every`` steps and at the end; deliberately not ``checkpoint.pt`` so a standalone run is never
mistaken for a supernet run), ``train_log.csv``, ``final.pt`` (loadable with ``modelio.load_model``) and
``result.json`` (holdout and test top-1). Resuming on CPU reproduces the uninterrupted run's weights exactly.
"""
from __future__ import annotations

import json
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from scalenas.spaces.arch import Subnet, derive_subnet, read_arch
from scalenas.train.config import TrainConfig, dump_config
from scalenas.data.datasets import BatchIterator, load_data, resize_batch
from scalenas.errors import ScalenasError
from scalenas.train.evaluate import accuracy
from scalenas.spaces.flops import FLOPS_CONVENTION, count_params, fvcore_flops, subnet_flops_params
from scalenas.io import atomic_torch_save, atomic_write_csv, atomic_write_json, atomic_write_text, seed_everything
from scalenas.models.registry import load_model, model_kinds, save_model
from scalenas.train.optim import lr_at, param_groups
from scalenas.spaces.space import SearchSpace, load_space
from scalenas.train.supernet import new_run_dir

TRAIN_CKPT_NAME = "train_checkpoint.pt"
TRAIN_CKPT_FORMAT = "scalenas-train/1"
RESULT_NAME = "result.json"


# ------------------------------------------------------------------------------------------ the model
@dataclass
class ModelSpec:
    """The model to train and what it is."""

    model: nn.Module
    kind: str                    # cnn | vit | grown
    name: str                    # short name for the run directory
    resolution: int              # input size the batches are resized to
    in_channels: int
    num_classes: int
    init: str                    # where the weights came from (human readable)
    subnet: Subnet | None = None  # CNN architecture (also the base of a grown CNN)
    space: SearchSpace | None = None

    def arch_record(self) -> dict[str, Any]:
        if self.kind == "cnn" and self.subnet is not None:
            return self.subnet.to_dict()
        return {"kind": self.kind, "config": self.model.to_config()}


def _inner(model: nn.Module) -> nn.Module:
    """The original-kind network inside a grown model (itself otherwise)."""
    return getattr(model, "model", model) if getattr(model, "model_kind", None) == "grown" else model


def describe_model(model: nn.Module, name: str, init: str) -> ModelSpec:
    """Kind, resolution, channels and classes of a registered scalenas model."""
    kind = getattr(model, "model_kind", None)
    if kind is None:
        raise ScalenasError(f"{type(model).__name__} is not a scalenas model kind ({', '.join(model_kinds())})")
    inner = _inner(model)
    subnet = getattr(inner, "subnet", None)
    if subnet is not None:  # a StandaloneNet (possibly grown)
        d = inner.derived
        space = load_space(subnet.space)
        return ModelSpec(model, kind, name, d.resolution, d.in_channels, d.num_classes, init, subnet, space)
    cfg = getattr(inner, "config", None)
    if cfg is not None and hasattr(cfg, "image_size"):  # a ViT (possibly grown)
        return ModelSpec(model, kind, name, int(cfg.image_size), int(cfg.in_channels), int(cfg.num_classes), init)
    raise ScalenasError(f"cannot tell the input size of a {kind!r} model; train CNN, ViT or grown models")


def _is_json_text(arch: str) -> bool:
    if arch.strip().startswith("{"):
        return True
    p = Path(arch)
    if not p.is_file():
        raise ScalenasError(f"--arch {arch}: no such file (give an architecture JSON, inline JSON or a model file)")
    with open(p, "rb") as fh:
        head = fh.read(64)
    return head.lstrip().startswith(b"{")


def _name_of(arch: str | None, fallback: str) -> str:
    raw = fallback if arch is None or arch.strip().startswith("{") else Path(arch).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw)[:60] or "model"


def _set_dropout(model: nn.Module, p: float | None) -> None:
    if p is None or not hasattr(model, "dropout") or not isinstance(model.dropout, (nn.Dropout, nn.Identity)):
        return
    model.dropout = nn.Dropout(p) if p > 0 else nn.Identity()


def _from_supernet(ckpt: str, sub: Subnet, space: SearchSpace) -> nn.Module:
    from scalenas.train.checkpoint import checkpoint_space, load_supernet, read_checkpoint, resolve_checkpoint
    from scalenas.models.supernet import export_subnet, fits_supernet

    path = resolve_checkpoint(ckpt)
    payload = read_checkpoint(path)
    sn_space = checkpoint_space(payload, str(path))
    if sn_space.name != space.name:
        raise ScalenasError(f"--init supernet:{ckpt}: the architecture is of space {space.name!r} but the supernet "
                            f"was trained on {sn_space.name!r}")
    if not fits_supernet(sn_space, sub):
        raise ScalenasError(f"--arch {sub.short()} does not fit the supernet {path}: its (depth, width, resolution) "
                            "lies outside the supernet's scaling stages (an extrapolated member); train it with "
                            "--init scratch or from a grown model file")
    supernet = load_supernet(path, payload=payload)
    if supernet.space.num_classes != space.num_classes:
        raise ScalenasError(f"--init supernet:{ckpt}: the supernet has {supernet.space.num_classes} classes, the "
                            f"space {space.name!r} {space.num_classes}")
    return export_subnet(supernet, sub, side=0)


def build_model(arch: str | None, init: str | None, seed: int = 0, dropout: float | None = None,
                freeze_shared: bool = False) -> ModelSpec:
    """The model ``scalenas train`` trains, from ``--arch`` / ``--init`` (see the module docstring)."""
    if init is not None and not str(init).strip():
        raise ScalenasError("--init: empty (give scratch, supernet:CKPT or a model file)")
    if arch is None and (init is None or init == "scratch" or str(init).startswith("supernet:")):
        raise ScalenasError("--arch is required (an architecture JSON or a model file) unless --init is a model file")
    seed_everything(seed)  # fresh initialisations are seeded
    spec: ModelSpec
    if arch is not None and _is_json_text(arch):
        from scalenas.models.standalone import StandaloneNet

        sub = read_arch(arch, None, allow_outside=True)
        space = load_space(sub.space)
        name = _name_of(arch, f"{space.name}-r{sub.resolution}")
        if init is None or init == "scratch":
            model = StandaloneNet.from_subnet(space, sub, dropout)
            spec = ModelSpec(model, "cnn", name, sub.resolution, space.in_channels, space.num_classes,
                             "scratch (fresh initialisation)", sub, space)
        elif init.startswith("supernet:"):
            ckpt = init[len("supernet:"):]
            model = _from_supernet(ckpt, sub, space)
            _set_dropout(model, dropout)
            spec = ModelSpec(model, "cnn", name, sub.resolution, space.in_channels, space.num_classes,
                             f"supernet {ckpt} (coupling side 0)", sub, space)
        else:
            model = load_model(init)
            other = describe_model(model, name, f"model file {init}")
            if other.kind != "cnn" or other.subnet is None or \
                    derive_subnet(space, other.subnet).key() != derive_subnet(space, sub).key():
                what = other.subnet.short() if other.subnet is not None and other.kind == "cnn" else \
                    f"a {other.kind} model"
                raise ScalenasError(f"--init {init}: its architecture ({what}) does not match --arch {sub.short()}; "
                                    "give the model file alone (--init FILE without --arch) to train it as it is")
            _set_dropout(model, dropout)
            spec = other
    else:
        source = arch if arch is not None else init
        base = load_model(source)
        name = _name_of(source, "model")
        if init is None or (arch is None and init == source):
            spec = describe_model(base, name, f"model file {source}")
        elif init == "scratch":
            fresh = type(base).from_config(base.to_config())  # same architecture, fresh (seeded) weights
            spec = describe_model(fresh, name, "scratch (fresh initialisation)")
        elif init.startswith("supernet:"):
            info = describe_model(base, name, "")
            if info.kind != "cnn" or info.subnet is None:
                raise ScalenasError(f"--init {init}: only CNN subnets inherit supernet weights; {source} is a "
                                    f"{info.kind} model")
            model = _from_supernet(init[len("supernet:"):], info.subnet, info.space)
            spec = ModelSpec(model, "cnn", name, info.resolution, info.in_channels, info.num_classes,
                             f"supernet {init[len('supernet:'):]} (coupling side 0)", info.subnet, info.space)
        else:
            other = load_model(init)
            if getattr(other, "model_kind", None) != base.model_kind or other.to_config() != base.to_config():
                raise ScalenasError(f"--init {init}: its architecture does not match --arch {source} "
                                    f"(kinds {getattr(other, 'model_kind', None)!r} / {base.model_kind!r})")
            spec = describe_model(other, name, f"model file {init}")
        if dropout is not None and spec.kind == "cnn":
            _set_dropout(spec.model, dropout)
    if freeze_shared:
        if spec.kind != "grown":
            raise ScalenasError(f"--freeze-shared applies to grown models (scalenas grow); this is a {spec.kind} model")
        spec.model.freeze_shared()
    return spec


def model_flops_params(spec: ModelSpec) -> tuple[int | None, int]:
    """(FLOPs, params): analytic for CNN subnets, fvcore for other kinds; params with shared tensors once."""
    params = count_params(spec.model)
    if spec.kind == "cnn" and spec.subnet is not None and spec.space is not None:
        return subnet_flops_params(spec.space, spec.subnet)[0], params
    try:
        return fvcore_flops(spec.model, spec.resolution, spec.in_channels), params
    except Exception:  # noqa: BLE001 - a count that fvcore cannot trace is reported as unknown, not fatal
        return None, params


# ------------------------------------------------------------------------------------------ run folders
def latest_train_run() -> Path:
    from scalenas.train.supernet import RUNS_DIR, latest_run

    return latest_run(TRAIN_CKPT_NAME, f"--resume: no standalone training run under {RUNS_DIR}/ "
                                       f"(none holds {TRAIN_CKPT_NAME})")


def read_train_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ScalenasError(f"--resume: nothing to resume in {path.parent} (no {TRAIN_CKPT_NAME})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a torn/corrupt file is a user problem
        raise ScalenasError(f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != TRAIN_CKPT_FORMAT:
        raise ScalenasError(f"{path}: not a scalenas standalone training checkpoint ({TRAIN_CKPT_FORMAT!r})")
    return payload


def _rebuild(payload: dict[str, Any]) -> ModelSpec:
    from scalenas.models.registry import _KINDS, _import_builtin_kinds  # noqa: PLC2701 - same package

    _import_builtin_kinds()
    kind = payload["model_kind"]
    if kind not in _KINDS:
        raise ScalenasError(f"checkpoint model kind {kind!r} is unknown")
    model = _KINDS[kind].from_config(payload["model_config"])
    model.load_state_dict(payload["model"])
    return describe_model(model, payload.get("name", "model"), payload.get("init", ""))


# ------------------------------------------------------------------------------------------ training
def train_standalone(cfg: TrainConfig, arch: str | None = None, init: str | None = None,
                     out_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
                     stop_after: int | None = None, freeze_shared: bool = False) -> dict[str, Any]:
    """Train (or resume) one standalone model; returns a summary dict (``result`` holds the top-1s).

    ``stop_after`` simulates an interruption after that many steps (checkpoint saved, ``finished`` False).
    """
    from scalenas.train.supernet import _install_signal_handlers, _Stop, resolve_device, total_steps

    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # Everything that can fail on bad input fails before anything is written.
    payload = None
    if resume:
        out_dir = Path(out_dir) if out_dir is not None else latest_train_run()
        payload = read_train_checkpoint(out_dir / TRAIN_CKPT_NAME)
        saved = payload.get("config", {})
        # The run's own recipe wins on resume, so the weights match an uninterrupted run.
        cfg = TrainConfig(**{**cfg.to_dict(), **{k: v for k, v in saved.items() if k in cfg.to_dict()}})
        spec = _rebuild(payload)
    else:
        spec = build_model(arch, init, cfg.seed, cfg.dropout, freeze_shared)
        out_dir = Path(out_dir) if out_dir is not None else new_run_dir(f"train-{spec.name}")
        if (out_dir / TRAIN_CKPT_NAME).exists():
            raise ScalenasError(f"{out_dir} already holds a training run; use --resume or another --out")
    data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    data = load_data(cfg.data, seed=data_seed, holdout_frac=cfg.holdout_frac, test_frac=cfg.test_frac,
                     in_channels=spec.in_channels, store_size=cfg.store_size)
    if data.num_classes != spec.num_classes:
        raise ScalenasError(f"data {cfg.data} has {data.num_classes} classes but the model has {spec.num_classes} "
                            "outputs")

    seed_everything(cfg.seed)
    model = spec.model.to(device)
    cuda = device.type == "cuda"
    if cuda and cfg.channels_last and spec.kind != "vit":
        model = model.to(memory_format=torch.channels_last)
    groups = [g for g in param_groups(model, cfg.weight_decay) if g["params"]]
    if not groups:
        raise ScalenasError("the model has no trainable parameters")
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                          weight_decay=cfg.weight_decay)
    batches = BatchIterator(data.train, cfg.batch_size, seed=cfg.seed, augment=cfg.augment)
    total = total_steps(cfg, batches.steps_per_epoch)
    step = 0
    log_rows: list[dict] = []
    train_seconds = 0.0
    if payload is not None:
        opt.load_state_dict(payload["optimizer"])
        batches.load_state_dict(payload["data"])
        torch.set_rng_state(payload["torch_rng"])
        step = int(payload["step"])
        train_seconds = float(payload.get("train_seconds", 0.0))
        log_path = out_dir / "train_log.csv"
        if log_path.is_file():
            log_rows = [r for r in pd.read_csv(log_path).to_dict("records") if r["step"] <= step]
    scaler = torch.amp.GradScaler("cuda") if cuda and cfg.amp == "fp16" else None
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    use_amp = cuda and amp_dtype is not None
    flops, params = model_flops_params(spec)

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", dump_config(cfg))
    data.save_info(out_dir / "split.json")
    atomic_write_json(out_dir / "arch.json", spec.arch_record())

    def checkpoint(finished: bool) -> None:
        atomic_torch_save(out_dir / TRAIN_CKPT_NAME, {
            "format": TRAIN_CKPT_FORMAT, "model_kind": spec.kind, "model_config": model.to_config(),
            "model": model.state_dict(), "optimizer": opt.state_dict(), "data": batches.state_dict(),
            "torch_rng": torch.get_rng_state(), "step": step, "total_steps": total, "finished": finished,
            "config": {**cfg.to_dict(), "data_seed": data_seed}, "name": spec.name, "init": spec.init,
            "train_seconds": train_seconds})
        if log_rows:
            atomic_write_csv(out_dir / "train_log.csv", pd.DataFrame(log_rows))

    old_handlers = _install_signal_handlers()
    _Stop.requested = False
    bar = tqdm(total=total, initial=step, disable=not progress, dynamic_ncols=True, desc=f"train {spec.name}",
               unit="step")
    t_last, imgs_since, loss_sum, correct, seen = time.perf_counter(), 0, 0.0, 0, 0
    t_start = time.perf_counter()
    interrupted = False
    try:
        while step < total:
            lr = lr_at(step, total, cfg.lr, cfg.warmup_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            xb, yb = next(batches)
            x = resize_batch(xb.to(device, non_blocking=True), spec.resolution)
            yb = yb.to(device, non_blocking=True)
            if cuda and cfg.channels_last and spec.kind != "vit":
                x = x.contiguous(memory_format=torch.channels_last)
            model.train()
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
                out = model(x)
                loss = F.cross_entropy(out.float(), yb, label_smoothing=cfg.label_smoothing)
            if scaler:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            step += 1
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((out.detach().argmax(1) == yb).sum())
            seen += len(yb)
            imgs_since += len(yb)
            if step % cfg.log_every == 0 or step == total:
                now = time.perf_counter()
                ips = imgs_since / max(1e-9, now - t_last)
                row = {"step": step, "epoch": batches.epoch, "lr": lr, "loss": loss_sum / max(1, seen),
                       "train_top1": correct / max(1, seen), "images_per_s": ips}
                log_rows.append(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_top1']:.3f}", lr=f"{lr:.4f}",
                                img_s=f"{ips:.0f}")
                t_last, imgs_since, loss_sum, correct, seen = now, 0, 0.0, 0, 0
            bar.update(1)
            if step % cfg.checkpoint_every == 0 and step < total:
                now = time.perf_counter()
                train_seconds, t_start = train_seconds + now - t_start, now
                checkpoint(False)
            if _Stop.requested or (stop_after is not None and step >= stop_after and step < total):
                interrupted = True
                break
    finally:
        bar.close()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
    train_seconds += time.perf_counter() - t_start
    checkpoint(not interrupted)
    summary: dict[str, Any] = {"out_dir": str(out_dir), "step": step, "total_steps": total,
                               "finished": not interrupted}
    if interrupted:
        sys.stderr.write(f"interrupted at step {step}/{total}; checkpoint saved in {out_dir}. "
                         f"Continue with: scalenas train --resume --out {out_dir}\n")
        return summary

    holdout = accuracy(model, data.holdout, spec.resolution, device=device)
    test = accuracy(model, data.test, spec.resolution, device=device)
    model_cpu = model.to("cpu")
    if cuda:
        model_cpu = model_cpu.to(memory_format=torch.contiguous_format)
    result = {
        "name": spec.name, "kind": spec.kind, "arch": spec.arch_record(),
        "arch_json": spec.subnet.to_json() if spec.kind == "cnn" and spec.subnet is not None else None,
        "space": spec.space.name if spec.space is not None else None, "init": spec.init,
        "resolution": spec.resolution, "flops": flops, "params": params, "flops_convention": FLOPS_CONVENTION,
        "steps": total, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed, "data": cfg.data,
        "data_seed": data_seed, "frozen_shared": bool(getattr(model, "plan", {}).get("frozen_shared", False))
        if spec.kind == "grown" else False,
        "holdout_top1": round(holdout, 6), "test_top1": round(test, 6),
        "holdout_size": len(data.holdout), "test_size": len(data.test),
        "train_seconds": round(train_seconds, 2), "device": str(device),
        "final_model": str(out_dir / "final.pt"),
    }
    save_model(out_dir / "final.pt", model_cpu, extra={"flops": flops, "source": spec.init,
                                                       "holdout_top1": result["holdout_top1"],
                                                       "test_top1": result["test_top1"]})
    atomic_write_json(out_dir / RESULT_NAME, result)
    summary["result"] = result
    return summary


def find_results(root: str | Path) -> list[dict[str, Any]]:
    """Every ``result.json`` directly under ``root`` (``root/*/result.json``), each with its ``run_dir``."""
    out = []
    for p in sorted(Path(root).glob(f"*/{RESULT_NAME}")):
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            out.append({**data, "run_dir": str(p.parent)})
    return out
