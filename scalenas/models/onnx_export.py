"""ONNX export of any scalenas model file (standalone members, grown models with shared tensors, the ViT).

Needs the ``export`` extra (``pip install 'scalenas[export]'``: onnx, onnxscript, onnxruntime). The graph takes
one input ``x`` of shape (batch, channels, resolution, resolution) with a dynamic batch size and returns the
logits. :func:`check_onnx` runs the file in onnxruntime and returns the largest difference to PyTorch.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from scalenas.errors import ScalenasError


def input_shape(model: nn.Module) -> tuple[int, int]:
    """(channels, resolution) a scalenas model expects."""
    inner = getattr(model, "model", model) if getattr(model, "model_kind", None) == "grown" else model
    derived = getattr(inner, "derived", None)
    if derived is not None:
        return int(derived.in_channels), int(derived.resolution)
    cfg = getattr(inner, "config", None)
    if cfg is not None and hasattr(cfg, "image_size"):
        return int(cfg.in_channels), int(cfg.image_size)
    raise ScalenasError(f"cannot tell the input size of a {type(model).__name__}; export CNN, ViT or grown models")


class _OneInput(nn.Module):
    """``forward(x)`` around any model (a grown model forwards ``*args``, which torch.export cannot name)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs warnings about optional torchvision ops and prints progress; keep the CLI to its lines."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _require_onnx() -> None:
    missing = []
    for mod in ("onnx", "onnxscript"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ScalenasError(f"ONNX export needs {', '.join(missing)}: pip install 'scalenas[export]'")


def export_onnx(model: nn.Module, path: str | os.PathLike, resolution: int | None = None) -> Path:
    """Write ``model`` (eval mode, CPU) as ONNX to ``path`` atomically; dynamic batch size."""
    _require_onnx()
    channels, res = input_shape(model)
    res = int(resolution or res)
    model = model.eval().to("cpu")
    path = Path(path)
    if path.is_dir():
        raise ScalenasError(f"{path}: is a directory (give a .onnx file name)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise ScalenasError(f"{path}: cannot write ({exc.strerror or exc})") from None
    x = torch.randn(2, channels, res, res)
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        with warnings.catch_warnings(), _quiet_exporter():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(_OneInput(model).eval(), (x,), dynamo=True, input_names=["x"], output_names=["logits"],
                                        dynamic_shapes={"x": {0: batch}}, verbose=False)
            program.save(tmp)
        os.replace(tmp, path)
    except ScalenasError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter's many failure types: one line for the user
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ScalenasError(f"ONNX export of {type(model).__name__} failed: {first}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_onnx(model: nn.Module, path: str | os.PathLike, batch: int = 3, resolution: int | None = None,
               seed: int = 0) -> float:
    """Max abs difference between onnxruntime on ``path`` and PyTorch ``model`` on a random batch."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ScalenasError("checking an ONNX file needs onnxruntime: pip install 'scalenas[export]'") from None
    channels, res = input_shape(model)
    res = int(resolution or res)
    x = torch.randn(batch, channels, res, res, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float(abs(out - ref).max())
