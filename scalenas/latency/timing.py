"""Timing a module on a runtime, and the fingerprint of the machine and software that timed it.

A runtime turns an eval-mode module and an example input into a zero-argument callable that runs one inference
(:func:`prepare`): ``torch`` calls the module under ``torch.inference_mode`` (CUDA: and waits for the GPU);
``onnxruntime`` exports the module to ONNX and runs an ``InferenceSession`` (CPU, or CUDA where the installed
onnxruntime has that provider). :func:`measure` times such a callable: warm-up calls, then at least ``repeats``
calls and at least ``min_time`` seconds of them, each call timed on its own; the result is the median.
Threads are pinned for the whole measurement (``torch.set_num_threads``; onnxruntime's ``intra_op_num_threads``,
one inter-op thread, sequential execution), so a table says how many threads its numbers are for.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from scalenas.errors import ScalenasError

RUNTIMES = ("torch", "onnxruntime")
DEVICES = ("cpu", "cuda")
MAX_CALLS = 100_000  # per measurement, whatever min_time asks


def check_runtime(runtime: str, device: str) -> None:
    """An unknown runtime or device, a missing onnxruntime or a missing GPU: one line."""
    if runtime not in RUNTIMES:
        raise ScalenasError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    if device not in DEVICES:
        raise ScalenasError(f"unknown device {device!r} (known: {', '.join(DEVICES)})")
    if device == "cuda" and not torch.cuda.is_available():
        raise ScalenasError("--device cuda: no CUDA GPU is visible to PyTorch here")
    if runtime == "onnxruntime":
        ort = _onnxruntime()
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ScalenasError("--runtime onnxruntime --device cuda: the installed onnxruntime has no "
                                "CUDAExecutionProvider (pip install onnxruntime-gpu)")


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ScalenasError("--runtime onnxruntime needs onnxruntime: pip install 'scalenas[export]'") from None
    return onnxruntime


def check_threads(threads: int) -> int:
    """``threads`` must be >= 1 and at most the cores this process may run on."""
    cores = available_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cores:
        raise ScalenasError(f"--threads must be an integer from 1 to {cores} (the cores this process may use), "
                            f"got {threads!r}")
    return threads


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------- fingerprint
def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name (``/proc/cpuinfo``, else what ``platform`` says)."""
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def runtime_version(runtime: str) -> str:
    if runtime == "onnxruntime":
        return str(_onnxruntime().__version__)
    return str(torch.__version__)


def fingerprint(device: str, runtime: str) -> dict[str, str]:
    """What a table's numbers depend on besides its own settings: the device, its name, the runtime and versions."""
    return {"device": device, "device_name": device_name(device), "runtime": runtime,
            "runtime_version": runtime_version(runtime), "torch_version": str(torch.__version__)}


# ---------------------------------------------------------------------------------------------- running
@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block, the previous value restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def onnx_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX graph of ``module`` (eval mode, CPU) for inputs shaped like ``example``.

    The TorchScript exporter takes ~15 ms per layer where the dynamo exporter (:func:`scalenas.models.onnx_export.
    export_onnx`, what a deployed member goes through) takes ~1 s, and a table has thousands of layers; both give
    the same operators to onnxruntime, which fuses conv + BN + activation in either. Where the TorchScript exporter
    is gone, the dynamo one is used.
    """
    module = module.eval().cpu()
    with _quiet():
        try:
            buf = io.BytesIO()
            torch.onnx.export(module, (example,), buf, dynamo=False, input_names=["x"], output_names=["y"])
            return buf.getvalue()
        except Exception:  # noqa: BLE001 - a torch without the TorchScript exporter: the dynamo one below
            pass
        try:
            return torch.onnx.export(module, (example,), dynamo=True, input_names=["x"],
                                     output_names=["y"]).model_proto.SerializeToString()
        except Exception as exc:  # noqa: BLE001 - the exporter's many failure types: one line
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ScalenasError(f"ONNX export of {type(module).__name__} for timing failed: {first}") from None


def ort_session(model: bytes | str, device: str, threads: int) -> Any:
    """An onnxruntime session with pinned threads (``threads`` intra-op, 1 inter-op, sequential execution)."""
    ort = _onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(model, sess_options=opts, providers=providers)


def prepare(module: nn.Module, example: torch.Tensor, runtime: str, device: str, threads: int,
            onnx_model: bytes | str | None = None) -> Callable[[], Any]:
    """A zero-argument callable that runs one inference of ``module`` on ``example`` (batch included).

    ``onnx_model`` (bytes or a path) is used instead of exporting ``module`` with :func:`onnx_bytes`: the
    benchmark passes the file :func:`~scalenas.models.onnx_export.export_onnx` wrote, as a user deploys it.
    """
    if runtime == "torch":
        dev = torch.device(device)
        module = module.eval().to(dev)
        x = example.to(dev)

        if device == "cuda":
            def run() -> Any:
                with torch.inference_mode():
                    y = module(x)
                torch.cuda.synchronize()
                return y
        else:
            def run() -> Any:
                with torch.inference_mode():
                    return module(x)
        return run
    if runtime == "onnxruntime":
        sess = ort_session(onnx_model if onnx_model is not None else onnx_bytes(module, example), device, threads)
        feed = {sess.get_inputs()[0].name: example.cpu().numpy()}
        return lambda: sess.run(None, feed)
    raise ScalenasError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")


@dataclass(frozen=True)
class Timing:
    ms: float  # the median of the calls on the clock asked for, milliseconds
    calls: int
    spread: float  # (75th - 25th percentile) / median of the calls
    wall_ms: float  # the median wall-clock time of the same calls (= ms with the wall clock)


CLOCKS = ("auto", "wall", "cpu")


def resolve_clock(clock: str, device: str, threads: int) -> str:
    """``auto``: the CPU time of the calling thread for one CPU thread, else wall-clock time.

    With one thread the whole inference runs on the calling thread, so its CPU time is the inference's time
    without the moments the scheduler gave the core to another process: on a shared machine, wall-clock times
    of long calls (which are preempted more often than short ones) would otherwise be inflated unevenly. With
    several threads, or on a GPU, only wall-clock time sees all the work.
    """
    if clock not in CLOCKS:
        raise ScalenasError(f"unknown clock {clock!r} (known: {', '.join(CLOCKS)})")
    if clock == "auto":
        return "cpu" if device == "cpu" and threads == 1 else "wall"
    return clock


def measure(run: Callable[[], Any], warmup: int = 10, repeats: int = 50, min_time: float = 0.05,
            clock: str = "wall") -> Timing:
    """Median time of one call of ``run``: ``warmup`` calls first, then at least ``repeats`` calls and at least
    ``min_time`` seconds (wall clock) of calls (at most :data:`MAX_CALLS`), each timed on its own with ``clock``
    (``wall``: ``time.perf_counter``; ``cpu``: ``time.thread_time``, the calling thread's CPU time)."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    walls: list[float] = []
    cpu = clock == "cpu"
    wall, thread = time.perf_counter, time.thread_time
    start = wall()
    while len(times) < repeats or (wall() - start < min_time and len(times) < MAX_CALLS):
        c0, t0 = (thread() if cpu else 0.0), wall()
        run()
        t1 = wall()
        walls.append(t1 - t0)
        times.append(thread() - c0 if cpu else t1 - t0)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    med = statistics.median(times)
    return Timing(ms=med * 1e3, calls=len(times), spread=(q[2] - q[0]) / med if med > 0 else 0.0,
                  wall_ms=statistics.median(walls) * 1e3)
