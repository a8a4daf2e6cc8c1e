"""Job configs: YAML files that mirror :class:`TrainConfig`, validated once with messages naming file and key.

Precedence: defaults < job file < command-line flags. The resolved config is written next to the results.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scalenas.data.datasets import DataSplits, load_data
from scalenas.data.options import DataOptions
from scalenas.errors import ScalenasError
from scalenas.models.supernet import CONV_IMPLS
from scalenas.options import (
    check_options,
    check_value,
    coerce_option,
    flat_dict,
    flat_fields,
    flat_keys,
    from_flat,
    group,
    option,
)
from scalenas.resources import JOBS, shipped_dir
from scalenas.runs import DATA_RECORD_FORMAT, RunFolder, SearchFolder
from scalenas.train.optim import DEFAULT_LR, DEFAULT_WEIGHT_DECAY, OPTIMIZERS, SCHEDULES

JOBS_DIR = shipped_dir(JOBS)  # the shipped job files (package data)
DEFAULT_JOB = "animals"  # what train-supernet, train and demo run without --job (jobs/animals.yaml)


@flat_keys
@dataclass
class TrainConfig:
    """One training recipe: supernet (``train-supernet``) and standalone (``train``) training share it.

    The data keys form a group, :class:`~scalenas.data.options.DataOptions` (:attr:`data_options`, handed whole to
    :func:`~scalenas.data.datasets.load_data`); job files, flags and ``config.yaml`` keep them flat, and
    ``cfg.holdout_frac`` reads ``cfg.data_options.holdout_frac``."""

    # what to train on
    space: str = option("digits-tiny", "search space name or YAML path (supernet training)")
    # the data, its split, storage, reading and augmentation: keys data .. rescan_data (flat in files and flags)
    data_options: DataOptions = group(DataOptions)
    # how long
    epochs: int | None = option(None, "passes over the train split (overrides steps)", min=1)
    steps: int | None = option(800, "optimiser steps", min=1)
    batch_size: int = option(128, "batch size per process", min=1)
    # the recipe: linear warm-up then the schedule, label smoothing, no decay on BN parameters and biases
    optimizer: str = option("sgd", "sgd (Nesterov momentum, L2 decay) or adamw (decoupled decay)",
                            choices=OPTIMIZERS)
    lr: float | None = option(None, "peak learning rate (None: 0.2 for sgd, 3e-3 for adamw)", min=0.0,
                              min_open=True)
    schedule: str = option("cosine", "learning-rate schedule after the warm-up", choices=SCHEDULES)
    momentum: float = option(0.9, "SGD momentum", min=0.0, max=1.0, max_open=True)
    nesterov: bool = option(True, "Nesterov momentum (SGD)")
    weight_decay: float | None = option(None, "weight decay (None: 4e-5 for sgd, 0.05 for adamw)", min=0.0)
    warmup_steps: int = option(50, "linear warm-up steps", min=0)
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy", min=0.0, max=1.0, max_open=True)
    # supernet sampling
    sampling: str = option("hierarchical", "path sampling: hierarchical (paper) or uniform (ablation: flat over "
                           "all (d, w, r))", choices=("hierarchical", "uniform"))
    sandwich: bool = option(False, "BigNAS sandwich rule: largest + smallest + random path of the drawn stage")
    inplace_distill: bool = option(False, "smaller paths learn the largest path's soft predictions (needs "
                                   "sandwich)")
    sandwich_largest: str = option("max-ops", "base network of the sandwich's largest path: max-ops (the largest "
                                   "kernel everywhere, BigNAS) or random (a fresh random base each step)",
                                   choices=("max-ops", "random"))
    # hardware
    device: str = option("auto", "training device", choices=("auto", "cpu", "cuda"))
    amp: str = option("bf16", "mixed precision on CUDA", choices=("bf16", "fp16", "off"))
    channels_last: bool = option(True, "channels_last memory format on CUDA")
    cudnn: str = option("auto", "cuDNN on CUDA: auto (off for a supernet on the conv path, whose convolution shapes "
                        "change every step; on otherwise), on, off", choices=("auto", "on", "off"))
    conv_impl: str = option("auto", "supernet convolutions: gemm (1x1 convs as one matrix product over N*H*W, "
                            "depthwise on PyTorch's own kernel: no per-shape cuDNN plans), conv (F.conv2d on the "
                            "weight slices); auto: gemm on CUDA, conv on CPU", choices=CONV_IMPLS)
    threads: int | None = option(None, "torch CPU threads (None: torch's default)", min=1)
    seed: int = option(0, "seed of python, numpy, torch, the path sampler and the data order")
    # bookkeeping
    checkpoint_every: int = option(200, "steps between atomic checkpoints (and one at the end)", min=1)
    log_every: int = option(10, "steps between train_log.csv rows", min=1)
    tensorboard: bool = option(True, "TensorBoard scalars in RUN/tensorboard when the tensorboard package is "
                               "installed (pip install 'scalenas[tensorboard]')")
    bn_calib_batches: int = option(4, "training batches for BN recalibration before evaluation", min=1)
    panel_random: int = option(4, "random subnets in the end-of-training panel (besides the extremes)", min=0)
    # standalone training (`scalenas train`) only
    arch: str | None = option(None, "architecture JSON or model file (set by the train command)", flag=False)
    dropout: float | None = option(None, "classifier dropout of a standalone CNN (None: the space's)", min=0.0,
                                   max=1.0, max_open=True)
    notes: str = option("", "free text kept with the run", flag=False)

    def __post_init__(self) -> None:
        self.data_options = dataclasses.replace(self.data_options)  # each config owns its group (replace() copies)

    def to_dict(self) -> dict[str, Any]:
        """The flat keys, in the order of a job file (``config.yaml``, a checkpoint's ``config``)."""
        return flat_dict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from flat keys (any subset; the rest default); an unknown key raises :class:`TypeError`."""
        return from_flat(cls, values)


def validate(cfg: TrainConfig, where: str = "config") -> TrainConfig:
    """Check every key (type, finiteness, choices, range) and the rules between keys; fill the
    optimiser-dependent defaults (lr, weight_decay)."""
    if isinstance(cfg.augment, bool):  # the boolean of earlier versions: true = the dataset's default
        cfg.augment = "auto" if cfg.augment else "none"
    check_options(cfg, where)
    if cfg.epochs is None and cfg.steps is None:
        raise ScalenasError(f"{where}: steps: give steps or epochs")
    if cfg.inplace_distill and not cfg.sandwich:
        raise ScalenasError(f"{where}: inplace_distill: needs sandwich: true (the largest path is the teacher)")
    if cfg.lr is None:
        cfg.lr = DEFAULT_LR[cfg.optimizer]
    if cfg.weight_decay is None:
        cfg.weight_decay = DEFAULT_WEIGHT_DECAY[cfg.optimizer]
    return cfg


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
    known = {f.name: f for f in flat_fields(TrainConfig)}
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
                raise ScalenasError(f"{path}: {k}: unknown key (the keys are TrainConfig's fields, see docs/method.md)")
            if k == "augment" and isinstance(v, bool):
                v = "auto" if v else "none"
            setattr(cfg, k, coerce_option(known[k], v, str(path)))
        if "epochs" in data and "steps" not in data:
            cfg.steps = None
    for k, v in (overrides or {}).items():
        if v is not None:
            flag = f"--{k.replace('_', '-')}"
            check_value(known[k], v, where, flag)
            setattr(cfg, k, coerce_option(known[k], v, where, flag))
            if k == "epochs":
                cfg.steps = None
            if k == "steps":
                cfg.epochs = None
    return validate(cfg, where)


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def recorded_data_options(record: TrainConfig | dict[str, Any]) -> DataOptions:
    """The data options a recipe (a config, or the config record of a checkpoint) sets, for loading its data
    again: older records lack the newer keys (their defaults hold), ``data_seed`` is resolved to the split seed
    and ``rescan_data`` is off (an action of one invocation, not part of the recipe)."""
    d = record.to_dict() if isinstance(record, TrainConfig) else dict(record)
    keys = {f.name for f in flat_fields(DataOptions)}
    opts = DataOptions(**{k: v for k, v in d.items() if k in keys})
    if isinstance(opts.augment, bool):
        opts.augment = "auto" if opts.augment else "none"
    return dataclasses.replace(opts, data_seed=opts.split_seed(d.get("seed", 0)), rescan_data=False)


# ------------------------------------------------------------------------------------------ the data a run follows
# The keys a run fixes for every command that continues it (``train --family``, ``train --arch`` of a member file,
# ``train --init supernet:RUN``, ``report``): they come from the run's data record unless given as flags.
FOLLOW_KEYS = ("data", "data_seed", "holdout_frac", "test_frac", "store_size", "augment", "flip")
EMBEDDED_DATA = ("digits", "animals")  # names of the datasets shipped inside the package


def data_fingerprint(classes: list[str], class_counts: list[int]) -> str:
    """What identifies a dataset's content for reports: its class list and images per class (any split)."""
    doc = json.dumps({"classes": list(classes), "counts": [int(c) for c in class_counts]}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def _total_counts(info: dict[str, Any], n: int) -> list[int]:
    counts = [0] * n
    for per_split in (info.get("class_counts") or {}).values():
        for i, c in enumerate(per_split[:n]):
            counts[i] += int(c)
    return counts


def data_record(cfg: TrainConfig, data: DataSplits) -> dict[str, Any]:
    """The run's data record (:class:`scalenas.runs.RunFolder`): what it trained on, how it was split, and a
    fingerprint of the content; an on-disk dataset is named by its absolute path, so any folder can follow it."""
    ref = cfg.data if cfg.data in EMBEDDED_DATA and not Path(cfg.data).exists() else str(Path(cfg.data).resolve())
    counts = _total_counts(data.info, data.num_classes)
    return {"format": DATA_RECORD_FORMAT, "data": ref, "classes": list(data.classes),
            "num_classes": int(data.num_classes), "in_channels": int(data.in_channels),
            "class_counts": counts, "fingerprint": data_fingerprint(data.classes, counts),
            "data_seed": cfg.seed if cfg.data_seed is None else cfg.data_seed, "holdout_frac": cfg.holdout_frac,
            "test_frac": cfg.test_frac, "store_size": cfg.store_size, "augment": cfg.augment, "flip": cfg.flip}


def legacy_data_record(run_dir: Path) -> dict[str, Any] | None:
    """A data record rebuilt from an older run's ``config.yaml`` + ``split.json`` (None when they are missing)."""
    run = RunFolder(run_dir)
    try:
        cfg = yaml.safe_load(run.file(run.CONFIG).read_text())
        info = json.loads(run.file(run.SPLIT).read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not isinstance(cfg, dict) or not isinstance(info, dict) or not isinstance(info.get("classes"), list):
        return None
    classes = [str(c) for c in info["classes"]]
    counts = _total_counts(info, len(classes))
    data = str(cfg.get("data", ""))
    return {"format": DATA_RECORD_FORMAT, "data": data, "classes": classes, "num_classes": len(classes),
            "in_channels": int(info.get("in_channels") or 0), "class_counts": counts,
            "fingerprint": data_fingerprint(classes, counts),
            "data_seed": info.get("seed", cfg.get("data_seed")), "holdout_frac": cfg.get("holdout_frac"),
            "test_frac": cfg.get("test_frac"), "store_size": cfg.get("store_size"),
            "augment": cfg.get("augment"), "flip": cfg.get("flip"), "rebuilt_from": "config.yaml + split.json"}


def followed_record(run_or_search: str | Path) -> tuple[dict[str, Any] | None, Path]:
    """(data record, folder it came from) of a run or a search folder; None for a folder with no record."""
    p = Path(run_or_search)
    if SearchFolder.holds_search(p):
        folder = SearchFolder(p)
        rec = folder.data_record()
        if rec is not None:
            return rec, p
        run = folder.run_dir()
        if run is not None and run.is_dir():
            return legacy_data_record(run), run
        return None, p
    rec = RunFolder(p).data_record()
    return (rec if rec is not None else legacy_data_record(p)), p


def follow_overrides(record: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The flags a following command uses: the run's data keys, unless given on the command line."""
    out = dict(given)
    for k in FOLLOW_KEYS:
        if k not in given and k in record:
            out[k] = record[k]
    return out


def check_follows(record: dict[str, Any], data: DataSplits, where: str) -> list[str]:
    """Refuse (one line) data that cannot stand in for the record's: another class count, class list or channel
    count. Returns warnings (the same classes with other content: moved *and* changed data)."""
    name = record.get("data")
    if data.num_classes != record["num_classes"]:
        raise ScalenasError(f"data {data.name} has {data.num_classes} classes but {where} was trained on {name} "
                            f"with {record['num_classes']} classes")
    if list(data.classes) != list(record["classes"]):
        diff = next(i for i, (a, b) in enumerate(zip(data.classes, record["classes"])) if a != b)
        raise ScalenasError(f"data {data.name} has other classes than {name}, which {where} was trained on (class "
                            f"{diff}: {data.classes[diff]!r} vs {record['classes'][diff]!r})")
    if record.get("in_channels") and data.in_channels != record["in_channels"]:
        raise ScalenasError(f"data {data.name} has {data.in_channels} input channels but {where} was trained on "
                            f"{name} with {record['in_channels']}")
    counts = _total_counts(data.info, data.num_classes)
    if data_fingerprint(data.classes, counts) != record["fingerprint"]:
        return [f"data {data.name} has the classes of {name} ({where}) but other images per class: not the same "
                "data; its results are reported apart"]
    return []


def load_run_data(cfg: TrainConfig, in_channels: int, out_dir: Path, device) -> DataSplits:
    """The run's data: the recipe's source and pipeline, the file list cached in ``out_dir``."""
    return load_data(cfg.data_options, seed=cfg.seed, in_channels=in_channels,
                     pin_memory=getattr(device, "type", "") == "cuda", cache_dir=out_dir)
