"""Job configs: YAML files that mirror :class:`TrainConfig`, validated once with messages naming file and key.

Precedence: defaults < job file < command-line flags. The resolved config is written next to the results.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from scalenas.errors import ScalenasError
from scalenas.resources import JOBS, shipped_dir

JOBS_DIR = shipped_dir(JOBS)  # the shipped job files (package data)


@dataclass
class TrainConfig:
    # what to train on
    space: str = "digits-tiny"          # search space name or YAML path (supernet training)
    data: str = "digits"                # "digits" | ImageFolder dir | CIFAR python dir | .npz file
    data_seed: int | None = None        # seed of the train/holdout/test split (default: seed)
    holdout_frac: float = 0.15          # share of the data held out for the search's fitness
    test_frac: float = 0.15             # share kept for final reports only
    store_size: int | None = None       # images stored once at this size, resized per batch (None: native)
    augment: bool = True                # random 1-2 px shifts (no flips: digits change meaning)
    # how long
    epochs: int | None = None           # passes over the train split (overrides steps when given)
    steps: int | None = 800             # optimiser steps
    batch_size: int = 128               # per process
    # the recipe: SGD + Nesterov, linear warm-up + cosine, label smoothing, no decay on BN and biases
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    warmup_steps: int = 50
    label_smoothing: float = 0.1
    # supernet sampling (METHOD.md §4)
    sampling: str = "hierarchical"      # "hierarchical" (paper) | "uniform" (ablation: flat over all triples)
    sandwich: bool = False              # BigNAS sandwich rule: largest + smallest + random of the drawn stage
    inplace_distill: bool = False       # smaller paths learn the largest path's soft predictions (with sandwich)
    # hardware
    device: str = "auto"                # auto | cpu | cuda
    amp: str = "bf16"                   # bf16 | fp16 | off (CUDA only)
    channels_last: bool = True          # CUDA only
    threads: int | None = None          # torch CPU threads (None: torch default)
    seed: int = 0
    # bookkeeping
    checkpoint_every: int = 200         # steps between atomic checkpoints (and one at the end)
    log_every: int = 10                 # steps between train_log.csv rows
    bn_calib_batches: int = 4           # training batches for BN recalibration before evaluation
    panel_random: int = 4               # random subnets in the end-of-training panel (besides the extremes)
    # standalone training (`scalenas train`) only
    arch: str | None = None             # architecture JSON or model file (set by the train command)
    dropout: float | None = None        # classifier dropout of standalone models (None: the space's)
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {"sampling": ("hierarchical", "uniform"), "device": ("auto", "cpu", "cuda"),
            "amp": ("bf16", "fp16", "off")}


def validate(cfg: TrainConfig, where: str = "config") -> TrainConfig:
    """Check every invariant once, with a message that names the key."""
    def bad(key: str, msg: str) -> ScalenasError:
        return ScalenasError(f"{where}: {key}: {msg}")

    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise bad(key, f"must be one of {', '.join(choices)}, got {getattr(cfg, key)!r}")
    if cfg.epochs is not None and cfg.epochs <= 0:
        raise bad("epochs", f"must be a positive number of epochs, got {cfg.epochs}")
    if cfg.epochs is None and (cfg.steps is None or cfg.steps <= 0):
        raise bad("steps", f"must be a positive number of steps, got {cfg.steps}")
    for key in ("batch_size", "checkpoint_every", "log_every", "bn_calib_batches"):
        if getattr(cfg, key) <= 0:
            raise bad(key, f"must be >= 1, got {getattr(cfg, key)}")
    if cfg.lr <= 0:
        raise bad("lr", f"must be > 0, got {cfg.lr}")
    for key in ("momentum", "label_smoothing", "holdout_frac", "test_frac"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise bad(key, f"must be in [0, 1), got {getattr(cfg, key)}")
    if cfg.weight_decay < 0 or cfg.warmup_steps < 0 or cfg.panel_random < 0:
        raise bad("weight_decay/warmup_steps/panel_random", "must be >= 0")
    if cfg.inplace_distill and not cfg.sandwich:
        raise bad("inplace_distill", "needs sandwich: true (the largest path is the teacher)")
    return cfg


def _coerce(f: dataclasses.Field, value: Any, where: str) -> Any:
    typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if value is None:
        if "None" in typ:
            return None
        raise ScalenasError(f"{where}: {f.name}: must not be empty")
    if typ.startswith("bool"):
        if not isinstance(value, bool):
            raise ScalenasError(f"{where}: {f.name}: expected true/false, got {value!r}")
        return value
    if typ.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScalenasError(f"{where}: {f.name}: expected an integer, got {value!r}")
        return value
    if typ.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ScalenasError(f"{where}: {f.name}: expected a number, got {value!r}")
        return float(value)
    if typ.startswith("str"):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ScalenasError(f"{where}: {f.name}: expected a string, got {value!r}")
        return str(value)
    return value


def resolve_job_path(job: str) -> Path:
    p = Path(job)
    if p.is_file():
        return p
    shipped = JOBS_DIR / f"{job}.yaml"
    if shipped.is_file():
        return shipped
    raise ScalenasError(f"job file not found: {job}")


def load_job(job: str | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < job YAML < overrides (flags that were given)."""
    cfg = TrainConfig()
    known = {f.name: f for f in fields(TrainConfig)}
    where = "config"
    if job:
        path = resolve_job_path(job)
        where = str(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            raise ScalenasError(f"{path}: malformed YAML") from None
        if not isinstance(data, dict):
            raise ScalenasError(f"{path}: expected a mapping of config keys")
        for k, v in data.items():
            if k not in known:
                raise ScalenasError(f"{path}: {k}: unknown key (see scalenas/config.py TrainConfig)")
            setattr(cfg, k, _coerce(known[k], v, str(path)))
        if "epochs" in data and "steps" not in data:
            cfg.steps = None
    for k, v in (overrides or {}).items():
        if v is not None:
            setattr(cfg, k, _coerce(known[k], v, f"--{k.replace('_', '-')}"))
            if k == "epochs":
                cfg.steps = None
            if k == "steps":
                cfg.epochs = None
    return validate(cfg, where)


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
