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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scalenas.data.augment import DevicePipeline, train_view
from scalenas.data.batches import BatchIterator, derived_seed
from scalenas.errors import ScalenasError
from scalenas.io import (atomic_torch_save, atomic_write_json, atomic_write_text, folder_lock, make_dir,
                         remove_stale_temps, safe_torch_load, seed_everything)
from scalenas.models.registry import load_model, model_class, model_kinds, save_model
from scalenas.runs import RUNS_DIR, STANDALONE_CKPT, RunFolder, latest_run, new_run_dir
from scalenas.spaces.arch import Subnet, arch_record, derive_subnet, load_arch
from scalenas.spaces.flops import FLOPS_CONVENTION, count_params, fvcore_flops, subnet_flops_params
from scalenas.spaces.space import SearchSpace, load_space
from scalenas.train.config import TrainConfig, check_follows, data_record, dump_config, load_run_data
from scalenas.train.evaluate import accuracy
from scalenas.train.loop import (LoopState, Precision, StepResult, common_payload, resolve_device, restore,
                                 resumed_config, resumed_total, run_loop, total_steps)
from scalenas.train.optim import make_optimizer

TRAIN_CKPT_NAME = STANDALONE_CKPT
TRAIN_CKPT_FORMAT = "scalenas-train/1"
RESULT_NAME = RunFolder.RESULT


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
            return self.subnet.to_dict() if self.space is None else arch_record(self.subnet, self.space, embed=True)
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
        space = getattr(inner, "space", None) or load_space(subnet.space)
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
    from scalenas.spaces.space import space_differences

    path = resolve_checkpoint(ckpt)
    payload = read_checkpoint(path)
    sn_space = checkpoint_space(payload, str(path))
    if sn_space.name != space.name:
        raise ScalenasError(f"--init supernet:{ckpt}: the architecture is of space {space.name!r} but the supernet "
                            f"was trained on {sn_space.name!r}")
    if sn_space.content_key != space.content_key:  # same name, other content: an edited YAML or fitted classes
        raise ScalenasError(f"--init supernet:{ckpt}: the supernet's space {sn_space.name!r} differs from the "
                            f"architecture's ({space.path}): {space_differences(sn_space, space) or 'content'} "
                            "(supernet vs architecture)")
    if not fits_supernet(sn_space, sub):
        raise ScalenasError(f"--arch {sub.short()} does not fit the supernet {path}: its (depth, width, resolution) "
                            "lies outside the supernet's scaling stages (an extrapolated member); train it with "
                            "--init scratch or from a grown model file")
    supernet = load_supernet(path, payload=payload)
    return export_subnet(supernet, sub, side=0)


def build_model(arch: str | None, init: str | None, seed: int = 0, dropout: float | None = None,
                freeze_shared: bool = False, space: SearchSpace | str | None = None) -> ModelSpec:
    """The model ``scalenas train`` trains, from ``--arch`` / ``--init`` (see the module docstring).

    ``space``: the space of an architecture JSON (``--space``); by default the one the JSON names
    (:func:`~scalenas.spaces.arch.load_arch`: a shipped name, the user's YAML, a search folder's space.yaml).
    """
    space_override = space
    if init is not None and not str(init).strip():
        raise ScalenasError("--init: empty (give scratch, supernet:CKPT or a model file)")
    if arch is None and (init is None or init == "scratch" or str(init).startswith("supernet:")):
        raise ScalenasError("--arch is required (an architecture JSON or a model file) unless --init is a model file")
    seed_everything(seed)  # fresh initialisations are seeded
    spec: ModelSpec
    if arch is not None and arch in model_kinds() and not Path(arch).exists():
        # A model kind by name: its default configuration (e.g. ``--arch vit``: the default ViT), fresh weights.
        try:
            model = model_class(arch).from_config({})
        except (ScalenasError, TypeError, KeyError, AttributeError):
            raise ScalenasError(f"--arch {arch}: this model kind has no default configuration; give an "
                                "architecture JSON or a model file") from None
        if init is not None and init != "scratch":
            raise ScalenasError(f"--arch {arch} (a default model) starts from scratch; drop --init {init}")
        spec = describe_model(model, arch, "scratch (fresh initialisation, default configuration)")
        if dropout is not None:
            _set_dropout(spec.model, dropout)
    elif arch is not None and _is_json_text(arch):
        from scalenas.models.standalone import StandaloneNet

        sub, space = load_arch(arch, space_override, allow_outside=True)
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
    return latest_run(TRAIN_CKPT_NAME, f"--resume: no standalone training run under {RUNS_DIR}/ "
                                       f"(none holds {TRAIN_CKPT_NAME})")


def read_train_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ScalenasError(f"--resume: nothing to resume in {path.parent} (no {TRAIN_CKPT_NAME})")
    payload = safe_torch_load(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != TRAIN_CKPT_FORMAT:
        raise ScalenasError(f"{path}: not a scalenas standalone training checkpoint ({TRAIN_CKPT_FORMAT!r})")
    for key in ("model_kind", "model_config", "model", "optimizer", "step", "total_steps", "config"):
        if key not in payload:
            raise ScalenasError(f"{path}: checkpoint lacks field {key!r}")
    for key, kind in (("model_kind", str), ("model_config", dict), ("model", dict), ("optimizer", dict),
                      ("config", dict)):
        if not isinstance(payload[key], kind):
            raise ScalenasError(f"{path}: damaged checkpoint: field {key!r} is not a {kind.__name__}")
    return payload


def _rebuild(payload: dict[str, Any], path: Path) -> ModelSpec:
    """The checkpoint's model with its weights, or one line saying why it cannot be rebuilt."""
    cls = model_class(payload["model_kind"], str(path))
    try:
        model = cls.from_config(payload["model_config"])
    except ScalenasError as exc:
        raise ScalenasError(f"{path}: damaged checkpoint: field 'model_config': {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise ScalenasError(f"{path}: damaged checkpoint: field 'model_config' does not build a "
                            f"{payload['model_kind']!r} model ({type(exc).__name__}: {exc})") from None
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ScalenasError(f"{path}: weights do not fit the model config: {first}") from None
    name, init = payload.get("name", "model"), payload.get("init", "")
    return describe_model(model, name if isinstance(name, str) else "model", init if isinstance(init, str) else "")


# ------------------------------------------------------------------------------------------ training
class StandaloneStep:
    """One plain optimiser step of a standalone model at its own resolution."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, resolution: int, cfg: TrainConfig,
                 precision: Precision, pipeline: DevicePipeline | None = None):
        self.model, self.optimizer, self.resolution, self.cfg, self.precision = \
            model, optimizer, resolution, cfg, precision
        self.pipeline = pipeline
        self.steps = 0

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, stop: bool) -> StepResult:
        seed = derived_seed(self.cfg.seed, self.steps, 0, 11)
        self.steps += 1
        x = self.precision.prepare(train_view(self.pipeline, xb, self.resolution, seed))
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            out = self.model(x)
            loss = F.cross_entropy(out.float(), yb, label_smoothing=self.cfg.label_smoothing)
        self.precision.backward(loss)
        self.precision.step(self.optimizer)
        return StepResult(float(loss.detach()), int((out.detach().argmax(1) == yb).sum()), len(yb), stop)

    def state_dict(self) -> Any:
        return None

    def load_state_dict(self, state: Any) -> None:
        pass


def train_standalone(cfg: TrainConfig, arch: str | None = None, init: str | None = None,
                     out_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
                     stop_after: int | None = None, freeze_shared: bool = False,
                     extend_to: int | None = None, space: SearchSpace | str | None = None,
                     follow: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume) one standalone model; returns a summary dict (``result`` holds the top-1s).

    ``stop_after`` simulates an interruption after that many steps (checkpoint saved, ``finished`` False). On
    resume the run's saved recipe wins; a finished run is left as it is (``already_finished`` in the summary,
    every file unchanged) unless ``extend_to`` (``--steps`` with ``--resume``) exceeds its total. The run folder
    is locked while this runs (:func:`~scalenas.io.folder_lock`); stale temp files are removed.

    ``follow``: ``{"record": data record, "where": what it belongs to, "strict": bool}`` of the run or search
    this model continues: the data loaded must have its classes and channels (else one line, before anything
    is written); ``strict`` also refuses the same classes with other content.
    """
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # Everything that can fail on bad input fails before anything is written.
    spec = None
    if resume:
        out_dir = Path(out_dir) if out_dir is not None else latest_train_run()
        if not (out_dir / TRAIN_CKPT_NAME).is_file():
            raise ScalenasError(f"--resume: nothing to resume in {out_dir} (no {TRAIN_CKPT_NAME})")
    else:
        spec = build_model(arch, init, cfg.seed, cfg.dropout, freeze_shared, space)
        out_dir = Path(out_dir) if out_dir is not None else new_run_dir(f"train-{spec.name}")
        if (out_dir / TRAIN_CKPT_NAME).exists():
            raise ScalenasError(f"{out_dir} already holds a training run; use --resume or another --out")
    out_dir = Path(out_dir)
    with folder_lock(out_dir, "training run"):
        remove_stale_temps(out_dir)
        return _train_standalone(cfg, spec, out_dir, device, progress, stop_after, extend_to, follow)


def _train_standalone(cfg: TrainConfig, spec: ModelSpec | None, out_dir: Path, device: torch.device,
                      progress: bool, stop_after: int | None, extend_to: int | None,
                      follow: dict[str, Any] | None = None) -> dict[str, Any]:
    payload = None
    if spec is None:  # resume
        ckpt_path = out_dir / TRAIN_CKPT_NAME
        payload = read_train_checkpoint(ckpt_path)
        rescan = cfg.rescan_data  # an action of this invocation, not part of the saved recipe
        cfg = resumed_config(cfg, payload, str(ckpt_path))
        cfg.rescan_data = rescan
        cfg, done = resumed_total(cfg, payload, extend_to, out_dir, str(ckpt_path),
                                  outputs=(RunFolder.FINAL, RESULT_NAME))
        if done:
            return done
        spec = _rebuild(payload, ckpt_path)
    data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    data = load_run_data(cfg, spec.in_channels, out_dir, device)
    if follow is not None and follow.get("record") is not None:
        for note in check_follows(follow["record"], data, follow.get("where", "the run")):
            if follow.get("strict"):
                raise ScalenasError(note)
            warnings.warn(note, stacklevel=2)
    if data.num_classes != spec.num_classes:
        raise ScalenasError(f"data {cfg.data} has {data.num_classes} classes but the model has {spec.num_classes} "
                            "outputs")
    record = data_record(cfg, data)

    seed_everything(cfg.seed)
    precision = Precision(cfg, device, channels_last=spec.kind != "vit")
    model = spec.model.to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg.optimizer, model, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                         nesterov=cfg.nesterov)
    batches = BatchIterator(data.train, cfg.batch_size, seed=cfg.seed)
    step_obj = StandaloneStep(model, opt, spec.resolution, cfg, precision, data.pipeline)
    total = total_steps(cfg, batches.steps_per_epoch)
    state = LoopState()
    if payload is not None:
        state = restore(payload, step_obj, batches, out_dir, str(out_dir / TRAIN_CKPT_NAME))
        step_obj.steps = state.step
    flops, params = model_flops_params(spec)
    cfg_record = {**cfg.to_dict(), "data_seed": data_seed}

    make_dir(out_dir)
    atomic_write_text(out_dir / RunFolder.CONFIG, dump_config(cfg))
    data.save_info(out_dir / RunFolder.SPLIT)
    RunFolder(out_dir).write_data_record(record)
    atomic_write_json(out_dir / RunFolder.ARCH, spec.arch_record())

    def save(finished: bool) -> None:
        atomic_torch_save(out_dir / TRAIN_CKPT_NAME, {
            "format": TRAIN_CKPT_FORMAT, "model_kind": spec.kind, "model_config": model.to_config(),
            **common_payload(step_obj, batches, state, total, finished, cfg_record),
            "name": spec.name, "init": spec.init})

    finished = run_loop(step_obj, batches, cfg, total=total, device=device, out_dir=out_dir, state=state,
                        save_checkpoint=save, progress=progress, desc=f"train {spec.name}",
                        stop_after=stop_after, resume_hint="scalenas train --resume")
    summary: dict[str, Any] = {"out_dir": str(out_dir), "step": state.step, "total_steps": total,
                               "finished": finished}
    if not finished:
        return summary

    holdout = accuracy(model, data.holdout, spec.resolution, device=device)
    test = accuracy(model, data.test, spec.resolution, device=device)
    model_cpu = model.to("cpu")
    if precision.channels_last:
        model_cpu = model_cpu.to(memory_format=torch.contiguous_format)
    result = {
        "name": spec.name, "kind": spec.kind, "arch": spec.arch_record(),
        "arch_json": spec.subnet.to_json() if spec.kind == "cnn" and spec.subnet is not None else None,
        "space": spec.space.name if spec.space is not None else None, "init": spec.init,
        "resolution": spec.resolution, "flops": flops, "params": params, "flops_convention": FLOPS_CONVENTION,
        "steps": total, "batch_size": cfg.batch_size, "optimizer": cfg.optimizer, "lr": cfg.lr, "seed": cfg.seed,
        "data": record["data"], "data_seed": data_seed, "data_fingerprint": record["fingerprint"],
        "num_classes": record["num_classes"], "frozen_shared": bool(getattr(model, "plan", {}).get(
            "frozen_shared", False)) if spec.kind == "grown" else False,
        "holdout_top1": round(holdout, 6), "test_top1": round(test, 6),
        "holdout_size": len(data.holdout), "test_size": len(data.test),
        "train_seconds": round(state.train_seconds, 2), "device": str(device),
        "final_model": str(out_dir / RunFolder.FINAL),
    }
    save_model(out_dir / RunFolder.FINAL, model_cpu, extra={"flops": flops, "source": spec.init,
                                                       "holdout_top1": result["holdout_top1"],
                                                       "test_top1": result["test_top1"]})
    atomic_write_json(out_dir / RESULT_NAME, result)
    summary["result"] = result
    return summary


def train_or_reuse(cfg: TrainConfig, arch: str | None, init: str | None, out_dir: str | Path, *,
                   progress: bool = False, space: SearchSpace | str | None = None,
                   follow: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """(result.json, how) of the standalone run in ``out_dir``: reused when it finished, resumed from its checkpoint
    when it was interrupted, else trained from ``arch`` / ``init``; ``how`` is ``reused``, ``resumed`` or
    ``trained``. The cache every evidence script and ``train --family`` share; an interruption (signal) raises
    :class:`KeyboardInterrupt` after the checkpoint is saved, so rerunning resumes."""
    out = Path(out_dir)
    result = out / RESULT_NAME

    def reused() -> tuple[dict[str, Any], str]:
        try:
            return json.loads(result.read_text()), "reused"
        except (OSError, ValueError):
            raise ScalenasError(f"{result}: unreadable; remove the run folder to train it again") from None

    if result.is_file():
        return reused()
    resume = (out / TRAIN_CKPT_NAME).is_file()
    summary = train_standalone(cfg, None if resume else arch, None if resume else init, out_dir=out, resume=resume,
                               progress=progress, space=space, follow=follow)
    if summary.get("already_finished"):
        return reused()
    if not summary["finished"]:
        raise KeyboardInterrupt
    return summary["result"], "resumed" if resume else "trained"


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
