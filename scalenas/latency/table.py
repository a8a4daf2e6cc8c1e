"""Latency tables: every layer configuration of a space timed on this device, and the predictor built on them.

A table is one CSV file (docs/method.md, "Latency"):

- line 1: ``# scalenas latency table {JSON}``: the fingerprint (space name and content key, device, device name,
  runtime, runtime and torch versions) and the settings the numbers were measured with (batch, threads, warm-up,
  repeats, minimum time, passes, calibration networks, seed);
- line 2: the column names (:data:`COLUMNS`);
- one row per measurement: ``stem`` / ``block`` / ``head`` rows time one :class:`~scalenas.latency.layers.
  LayerConfig` (``key`` says which, ``pass`` which pass over the configurations), ``network`` rows time a whole
  calibration network (``arch``: its architecture JSON).

Rows are appended one at a time (one ``write`` each, flushed to disk), so an interrupted build keeps every row it
wrote, and running the same build again resumes it; a torn last line (a build killed in the middle of a write) is
cut off when the build resumes. A layer's latency is the median of its rows (one per pass: passes interleave all
configurations, so a burst of load from another process hits one pass of some layers, not all of them).

The predictor (:meth:`LatencyTable.predict`): the sum of the latencies of a network's stem, blocks and head plus a
per-network overhead, linear in the number of layers and the activations that cross layer boundaries, fitted by
least squares to the calibration networks (what running layers back to back costs beyond running them one at a
time: one runtime call per network instead of one per layer, layouts, caches).
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import random
import statistics
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from scalenas.errors import ScalenasError
from scalenas.io import atomic_write_text
from scalenas.latency.layers import (KINDS, LayerConfig, check_max_stage, extrapolated_flops_bound,
                                     extrapolation_points, layer_input, layer_module, network_layers,
                                     space_layer_configs, subnet_layers, unique_configs)
from scalenas.latency.timing import (CLOCKS, DEVICES, RUNTIMES, Timing, check_runtime, check_threads, fingerprint,
                                     measure, pinned_threads, prepare, resolve_clock)
from scalenas.options import check_options, option
from scalenas.spaces.arch import Subnet, derive_subnet, parse_subnet, sample_base, sample_subnet
from scalenas.spaces.flops import subnet_flops_params
from scalenas.spaces.space import SearchSpace, load_space

HEADER = "# scalenas latency table "
FORMAT_VERSION = 1
COLUMNS = ("kind", "key", "cin", "hidden", "cout", "kernel", "stride", "resolution", "se", "pass", "ms", "calls",
           "spread", "arch")
# The fingerprint: a table is refused for another space, and for another device or runtime version unless the
# caller allows it (allow_other_device)
DEVICE_FIELDS = ("device", "device_name", "runtime", "runtime_version", "torch_version")
# Settings a resumed build must share with the table (the numbers are only comparable under the same ones)
SETTINGS = ("batch", "threads", "clock", "warmup", "repeats", "min_time", "passes", "calibration", "seed")
MAX_EAGER = 50_000  # configurations a build measures up front; beyond that it asks for --lazy
OVERHEAD_FEATURES = ("network", "layers", "mflops")  # ms per network, per layer and per million FLOPs


@dataclass
class LatencyOptions:
    """How a latency table is measured (``scalenas latency build`` flags; each declared once, here)."""

    device: str = option("cpu", "device the layers run on", choices=DEVICES)
    runtime: str = option("torch", "runtime that runs them", choices=RUNTIMES)
    batch: int = option(1, "batch size of every measurement", min=1, max=4096)
    threads: int = option(1, "threads the runtime may use, pinned (torch.set_num_threads; onnxruntime intra-op "
                          "threads), at most the cores of this machine", min=1)
    max_stage: int | None = option(None, "highest stage whose members the table covers: above the space's last "
                                   "scaling stage S it adds the layers extrapolated members of stages S+1.. can have "
                                   "(default S)", min=0)
    lazy: bool = option(False, "time only the calibration networks now and every other layer the first time a "
                        "prediction needs it (then cached in the table)")
    clock: str = option("auto", "what a call's time is: wall-clock time, or the CPU time of the calling thread "
                        "(immune to other processes taking the core; exact for one thread); auto: cpu for one CPU "
                        "thread, else wall", choices=CLOCKS)
    warmup: int = option(10, "untimed calls before each measurement", min=0)
    repeats: int = option(30, "timed calls per measurement, at least", min=1)
    min_time: float = option(0.05, "seconds of timed calls per measurement, at least", min=0.0)
    passes: int = option(3, "passes over all layers, each in a new random order; a layer's latency is the median "
                         "over passes", min=1, max=20)
    calibration: int = option(24, "random networks of stages 0..max-stage timed whole, to fit the per-network "
                              "overhead", min=2, max=1000)
    seed: int = option(0, "seed of the calibration networks, the layer order and the inputs")


def options_from(meta: dict[str, Any]) -> LatencyOptions:
    """The options a table was measured with (its header)."""
    names = {f.name for f in fields(LatencyOptions)}
    return LatencyOptions(**{k: v for k, v in meta.items() if k in names})


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class TableRows:
    """The rows of a table file, checked."""

    layers: dict[str, list[float]]  # config key -> ms of each pass
    configs: dict[str, LayerConfig]
    networks: dict[str, list[float]]  # architecture JSON -> ms of each pass
    done: set[tuple[str, int]]  # (key, pass) measured; network rows under their architecture JSON
    valid_bytes: int  # bytes up to the end of the last complete line
    torn: bool  # the file ends in the middle of a line (an interrupted write)


def read_header(path: Path) -> dict[str, Any]:
    """The header of a table file (line 1), checked."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
    except FileNotFoundError:
        raise ScalenasError(f"latency table not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScalenasError(f"{path}: cannot read the latency table ({_reason(exc)})") from None
    return _parse_header(path, first)


def _parse_header(path: Path, first: str) -> dict[str, Any]:
    if not first.startswith(HEADER):
        raise ScalenasError(f"{path}: not a scalenas latency table (line 1 should start with {HEADER.strip()!r}; "
                            "build one with scalenas latency build)")
    try:
        meta = json.loads(first[len(HEADER):])
    except (json.JSONDecodeError, RecursionError):
        raise ScalenasError(f"{path}: corrupt latency table header (line 1 is not valid JSON)") from None
    need = ("version", "space", "space_key", *DEVICE_FIELDS, *SETTINGS)
    missing = [k for k in need if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ScalenasError(f"{path}: corrupt latency table header (line 1 lacks {', '.join(missing)})")
    if meta["version"] != FORMAT_VERSION:
        raise ScalenasError(f"{path}: latency table format {meta['version']!r}, this scalenas reads "
                            f"{FORMAT_VERSION}: rebuild the table")
    try:
        check_options(options_from(meta), f"{path}: header")
    except ScalenasError as exc:
        raise ScalenasError(f"corrupt latency table: {exc}") from None
    return meta


def read_rows(path: Path) -> tuple[dict[str, Any], TableRows]:
    """The header and the rows of a table file; any malformed row is one line naming the file and line."""
    try:
        data = Path(path).read_bytes()
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ScalenasError(f"latency table not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScalenasError(f"{path}: cannot read the latency table ({_reason(exc)})") from None
    torn = not text.endswith("\n")
    cut = text.rfind("\n") + 1
    lines = text[:cut].split("\n")[:-1]
    if not lines:
        raise ScalenasError(f"{path}: empty or truncated latency table (no complete header line)")
    meta = _parse_header(path, lines[0] + "\n")
    if len(lines) < 2 or next(csv.reader([lines[1]])) != list(COLUMNS):
        raise ScalenasError(f"{path}: corrupt latency table (line 2 should name the columns "
                            f"{','.join(COLUMNS)})")
    rows = TableRows({}, {}, {}, set(), len(text[:cut].encode("utf-8")), torn)
    for lineno, fields_ in enumerate(csv.reader(lines[2:]), start=3):
        _add_row(path, lineno, fields_, rows)
    return meta, rows


def _add_row(path: Path, lineno: int, row: list[str], rows: TableRows) -> None:
    def bad(msg: str) -> ScalenasError:
        return ScalenasError(f"{path}: line {lineno}: corrupt latency table row ({msg})")

    if len(row) != len(COLUMNS):
        raise bad(f"{len(row)} fields, expected {len(COLUMNS)}")
    r = dict(zip(COLUMNS, row))
    try:
        p, ms, calls, spread = int(r["pass"]), float(r["ms"]), int(r["calls"]), float(r["spread"])
    except ValueError:
        raise bad("pass, ms, calls and spread must be numbers") from None
    if p < 0 or not (math.isfinite(ms) and ms > 0) or calls < 1 or not (math.isfinite(spread) and spread >= 0):
        raise bad(f"pass {p}, ms {ms}, calls {calls}, spread {spread} out of range")
    kind = r["kind"]
    if kind == "network":
        if not r["arch"].startswith("{"):
            raise bad("a network row needs its architecture JSON")
        key = r["arch"]
        rows.networks.setdefault(key, []).append(ms)
    elif kind in KINDS:
        try:
            sizes = [int(r[k]) for k in ("cin", "hidden", "cout", "kernel", "stride", "resolution", "se")]
        except ValueError:
            raise bad("layer sizes must be integers") from None
        if min(sizes[:6]) < 1 or sizes[6] < 0:
            raise bad("layer sizes must be positive")
        config = LayerConfig(kind, *sizes)
        if config.key != r["key"]:
            raise bad(f"key {r['key']!r} does not match its sizes ({config.key!r})")
        key = config.key
        rows.configs[key] = config
        rows.layers.setdefault(key, []).append(ms)
    else:
        raise bad(f"unknown kind {kind!r}")
    rows.done.add((key, p))


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__


# ---------------------------------------------------------------------------------------------- writing
def _csv_line(values: Sequence[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def layer_row(config: LayerConfig, p: int, t: Timing) -> str:
    return _csv_line([config.kind, config.key, config.cin, config.hidden, config.cout, config.kernel, config.stride,
                      config.resolution, config.se, p, f"{t.ms:.6g}", t.calls, f"{t.spread:.4g}", ""])


def network_row(subnet: Subnet, p: int, t: Timing) -> str:
    key = "network " + hashlib.sha256(subnet.to_json().encode()).hexdigest()[:12]
    return _csv_line(["network", key, "", "", "", "", "", subnet.resolution, "", p, f"{t.ms:.6g}", t.calls,
                      f"{t.spread:.4g}", subnet.to_json()])


@contextlib.contextmanager
def _locked(path: Path, rows: TableRows | None = None) -> Iterator[int]:
    """An append descriptor of ``path``, exclusively locked (flock) for the block; a torn last line is cut off."""
    import fcntl

    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        raise ScalenasError(f"{path}: cannot write ({_reason(exc)})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ScalenasError(f"{path}: another scalenas process is writing this latency table; wait for it to "
                                "finish") from None
        if rows is not None and rows.torn:
            os.ftruncate(fd, rows.valid_bytes)  # the partial line of an interrupted write (re-measured below)
            rows.torn = False
        yield fd
    finally:
        os.close(fd)


def _append(fd: int, path: Path, line: str) -> None:
    try:
        os.write(fd, line.encode("utf-8"))  # one write per row: a killed build leaves whole rows (or one torn)
        os.fsync(fd)
    except OSError as exc:
        raise ScalenasError(f"{path}: cannot write ({_reason(exc)})") from None


# ---------------------------------------------------------------------------------------------- timing
def time_layer(config: LayerConfig, options: LatencyOptions, seed: int = 0) -> Timing:
    """Time one layer configuration under ``options`` (runtime, device, batch, threads, repeats)."""
    with pinned_threads(options.threads):
        run = prepare(layer_module(config), layer_input(config, options.batch, seed), options.runtime,
                      options.device, options.threads)
        return measure(run, options.warmup, options.repeats, options.min_time,
                       resolve_clock(options.clock, options.device, options.threads))


def time_networks(space: SearchSpace, subnets: Sequence[Subnet], options: LatencyOptions, rounds: int = 1,
                  seed: int = 0, progress: Callable[[int, int], Any] | None = None) -> list[Timing]:
    """Time each network's exported model whole, ``rounds`` times, every round in a new random order (seed
    ``seed``): a burst of load from another process hits one round of some networks, not every round of one.
    Per network: the medians over rounds of ``ms``, ``wall_ms`` and ``spread`` (``calls`` summed). Inputs are
    seeded with ``options.seed``; ``progress(round, rounds)`` after each round."""
    from scalenas.models.standalone import StandaloneNet

    clock = resolve_clock(options.clock, options.device, options.threads)
    with pinned_threads(options.threads):
        runs = []
        for subnet in subnets:
            derived = derive_subnet(space, subnet)
            x = layer_input(network_layers(derived)[0], options.batch, options.seed)
            runs.append(prepare(StandaloneNet(derived).eval(), x, options.runtime, options.device, options.threads))
        timings: list[list[Timing]] = [[] for _ in runs]
        rng = random.Random(seed)
        for r in range(rounds):
            order = list(range(len(runs)))
            rng.shuffle(order)
            for i in order:
                timings[i].append(measure(runs[i], options.warmup, options.repeats, options.min_time, clock))
            if progress is not None:
                progress(r + 1, rounds)
    return [Timing(ms=statistics.median(t.ms for t in ts), calls=sum(t.calls for t in ts),
                   spread=statistics.median(t.spread for t in ts), wall_ms=statistics.median(t.wall_ms for t in ts))
            for ts in timings]


def time_network(space: SearchSpace, subnet: Subnet, options: LatencyOptions) -> Timing:
    """Time the exported model of ``subnet`` whole, once (:func:`time_networks` of one network)."""
    return time_networks(space, [subnet], options)[0]


def calibration_subnets(space: SearchSpace, n: int, seed: int, max_stage: int | None = None) -> list[Subnet]:
    """``n`` distinct random networks of stages 0..``max_stage`` in turn (the networks the overhead is fitted to).

    Stages 0..S are sampled as the search samples them; a stage s above S (an extrapolated member's) gets a random
    base at a random (width, resolution) extrapolated members of stage s can have and a random depth between stage
    S's largest and that times growth^((s - S) / 2), kept when its FLOPs lie between stage s - 1's and stage s's
    bounds (:func:`~scalenas.latency.layers.extrapolation_points`).
    """
    rng = random.Random(seed)
    s_last = space.num_scaling_stages
    max_stage = s_last if max_stage is None else max_stage
    extra = {s: _extrapolated_sampler(space, s) for s in range(s_last + 1, max_stage + 1)}
    out: dict[str, Subnet] = {}
    for i in range(200 * n):
        stage = i % (max_stage + 1)
        sub = sample_subnet(space, rng, stage=stage)[1] if stage <= s_last else extra[stage](rng)
        if sub is not None:
            out.setdefault(derive_subnet(space, sub).key(), sub)
        if len(out) == n:
            break
    return list(out.values())


def _extrapolated_sampler(space: SearchSpace, stage: int) -> Callable[[random.Random], Subnet | None]:
    s_last = space.num_scaling_stages
    sc = space.scaling[-1]
    lo, hi = extrapolated_flops_bound(space, stage - 1), extrapolated_flops_bound(space, stage)
    points = extrapolation_points(space, stage)
    d_hi = max(sc.depth) * space.growth ** ((stage - s_last) / 2)

    def draw(rng: random.Random) -> Subnet | None:
        w, r = rng.choice(points)
        sub = Subnet(space.name, sample_base(space, rng), round(rng.uniform(max(sc.depth), d_hi), 4), w, r)
        return sub if lo <= subnet_flops_params(space, sub)[0] <= hi else None

    return draw


# ---------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Overhead:
    """The fitted per-network overhead: ``coef`` per feature of :data:`OVERHEAD_FEATURES` (the first ``len(coef)``),
    in ms, and how well sum + overhead fits the calibration networks."""

    coef: tuple[float, ...]
    networks: int
    mape: float  # mean absolute relative error on the calibration networks (in-sample)
    max_error: float

    def __call__(self, features: Sequence[float]) -> float:
        return float(np.dot(self.coef, features[:len(self.coef)]))


def overhead_features(space: SearchSpace, subnet: Subnet, batch: int) -> tuple[float, float, float]:
    """(1, layers, million FLOPs x batch) of a network: what its overhead is linear in (one runtime call instead of
    one per layer; running each layer after the others rather than alone, with colder caches, costs per layer and
    in proportion to the work)."""
    return (1.0, float(len(subnet_layers(space, subnet))), subnet_flops_params(space, subnet)[0] * batch / 1e6)


class LatencyTable:
    """A latency table opened for a space: per-layer latencies and the predictor.

    Open one with :meth:`open`. ``lazy=True`` times a layer the table lacks when a prediction needs it and appends
    it to the file; otherwise a missing layer is an error naming it.
    """

    def __init__(self, path: Path, space: SearchSpace, meta: dict[str, Any], rows: TableRows, lazy: bool):
        self.path = path
        self.space = space
        self.meta = meta
        self.options = options_from(meta)
        self.rows = rows
        self.lazy = lazy
        self._overhead: Overhead | None = None
        self._cache: dict[Subnet, float] = {}

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, space: SearchSpace | str, *, lazy: bool = False,
             allow_other_device: bool = False) -> "LatencyTable":
        """Read and check a table for ``space``: built for another space, refused; on another device or with
        another runtime version, refused unless ``allow_other_device`` (then a warning; no lazy measuring)."""
        path = Path(path)
        space = load_space(space)
        meta, rows = read_rows(path)
        check_space(path, meta, space)
        diffs = device_differences(meta)
        if diffs:
            what = f"{path}: built on another device or runtime ({diffs})"
            if not allow_other_device:
                raise ScalenasError(f"{what}; rebuild it here, or pass --allow-other-device to use it anyway")
            if lazy:
                raise ScalenasError(f"{what}: --lazy would mix this machine's timings into it; use a table built here")
            warnings.warn(f"{what}: predictions are for that device", RuntimeWarning, stacklevel=2)
        if rows.torn and not lazy:
            raise ScalenasError(f"{path}: truncated latency table (its last line is incomplete: an interrupted "
                                "build); run the same scalenas latency build again to resume it")
        return cls(path, space, meta, rows, lazy)

    # ------------------------------------------------------------------ layers
    def missing(self, configs: Sequence[LayerConfig]) -> list[LayerConfig]:
        """The configurations among ``configs`` that the table has no row for."""
        return [c for c in unique_configs(configs) if c.key not in self.rows.layers]

    def layer_ms(self, config: LayerConfig) -> float:
        """The latency of one layer (ms): the median of its rows; measured now and appended with ``lazy``."""
        values = self.rows.layers.get(config.key)
        if values is None:
            self.measure_missing([config])
            values = self.rows.layers[config.key]
        return statistics.median(values)

    def measure_missing(self, configs: Sequence[LayerConfig], progress: Callable | None = None) -> int:
        """Time the configurations the table lacks and append them (lazy tables only); returns how many."""
        todo = self.missing(configs)
        if not todo:
            return 0
        if not self.lazy:
            first = todo[0].key
            more = f" and {len(todo) - 1} more" if len(todo) > 1 else ""
            raise ScalenasError(f"{self.path}: no row for layer '{first}'{more} (the table does not cover it: "
                                "build it with a higher --max-stage, resume an interrupted build, or time missing "
                                "layers on demand: --lazy; in search and extrapolate --lazy-latency)")
        with _locked(self.path, self.rows) as fd:
            for p in range(self.options.passes):  # as many interleaved passes as the build made
                for c in (progress(todo) if progress else todo):
                    line = layer_row(c, p, time_layer(c, self.options, self.options.seed))
                    _append(fd, self.path, line)
                    _add_row(self.path, 0, next(csv.reader([line])), self.rows)
        self._overhead = None
        return len(todo)

    # ------------------------------------------------------------------ the predictor
    @property
    def overhead(self) -> Overhead:
        """The per-network overhead fitted to the calibration networks (refitted after lazy measurements)."""
        if self._overhead is None:
            self._overhead = self._fit()
        return self._overhead

    def _fit(self) -> Overhead:
        nets = []
        for arch, values in self.rows.networks.items():
            sub = parse_subnet(json.loads(arch), self.space, allow_outside=True, source=f"{self.path}: network row")
            configs = subnet_layers(self.space, sub)
            if self.missing(configs) and not self.lazy:
                continue  # an interrupted build: fit to the networks it has all layers of
            total = sum(self.layer_ms(c) for c in configs)
            nets.append((overhead_features(self.space, sub, self.options.batch), total, statistics.median(values)))
        if len(nets) < 2:
            raise ScalenasError(f"{self.path}: {len(nets)} calibration network(s) with all their layers timed, at "
                                "least 2 are needed to fit the per-network overhead (an interrupted build? run it "
                                "again to resume)")
        k = len(OVERHEAD_FEATURES) if len(nets) >= 4 * len(OVERHEAD_FEATURES) else 1
        x = np.array([f[:k] for f, _, _ in nets])
        sums = np.array([s for _, s, _ in nets])
        measured = np.array([m for _, _, m in nets])
        # relative least squares: every network counts alike, whatever its size (the targets are relative errors)
        coef, *_ = np.linalg.lstsq(x / measured[:, None], (measured - sums) / measured, rcond=None)
        err = np.abs((sums + x @ coef) / measured - 1.0)
        return Overhead(tuple(float(c) for c in coef), len(nets), float(err.mean()), float(err.max()))

    def predict_layers(self, subnet: Subnet) -> tuple[float, float]:
        """(sum of the layer latencies, overhead) of ``subnet``'s network, ms."""
        configs = subnet_layers(self.space, subnet)
        self.measure_missing(configs)
        total = sum(self.layer_ms(c) for c in configs)
        return total, self.overhead(overhead_features(self.space, subnet, self.options.batch))

    def predict(self, subnet: Subnet) -> float:
        """Predicted latency of ``subnet``'s exported model on the table's device and runtime, ms (cached)."""
        hit = self._cache.get(subnet)
        if hit is None:
            hit = self._cache[subnet] = float(sum(self.predict_layers(subnet)))
        return hit

    def describe(self) -> str:
        m = self.meta
        return (f"{self.path}: space {m['space']}, {m['runtime']} {m['runtime_version']} on {m['device']} "
                f"({m['device_name']}), batch {m['batch']}, {m['threads']} thread(s); {len(self.rows.layers)} layers, "
                f"{len(self.rows.networks)} calibration networks")


def check_space(path: Path, meta: dict[str, Any], space: SearchSpace) -> None:
    if meta["space_key"] != space.content_key:
        raise ScalenasError(f"{path}: built for space {meta['space']!r} (content key {meta['space_key'][:12]}), not "
                            f"for space {space.name!r} (content key {space.content_key[:12]}): build a table for this "
                            "space")


def device_differences(meta: dict[str, Any]) -> str:
    """What differs between the table's device and runtime and this machine's (``''`` if nothing)."""
    device, runtime = meta["device"], meta["runtime"]
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return f"device cuda ({meta['device_name']}) vs no CUDA GPU here"
    try:
        here = fingerprint(device, runtime)
    except ScalenasError as exc:
        return f"runtime {runtime} not usable here: {exc}"
    return "; ".join(f"{k} {meta[k]!r} vs {here[k]!r} here" for k in DEVICE_FIELDS if str(meta[k]) != here[k])


# ---------------------------------------------------------------------------------------------- building
@dataclass(frozen=True)
class BuildSummary:
    path: Path
    configs: int  # configurations in scope (all, or the calibration networks' with lazy)
    measured: int  # rows written by this run
    kept: int  # rows an earlier, interrupted run had written
    networks: int
    seconds: float
    overhead: Overhead


def build_table(space: SearchSpace | str, out: str | os.PathLike, options: LatencyOptions | None = None, *,
                progress: bool = True, extra_configs: Sequence[LayerConfig] = ()) -> BuildSummary:
    """Time every layer configuration of ``space`` (or, with ``options.lazy``, the calibration networks' only),
    ``extra_configs`` too, and the calibration networks, appending rows to ``out``; an existing ``out`` of the same
    fingerprint and settings is resumed, any other is refused. Every check runs before anything is written.

    Each pass times its layers and calibration networks in one random order, so the networks the overhead is
    fitted to are timed at the same moments as the layers on average: on a machine whose speed drifts (other
    work, shared caches and hyperthreads), timing all networks after all layers would fold the drift into the
    overhead."""
    from tqdm.auto import tqdm

    options = options or LatencyOptions()
    check_options(options, "latency options")
    space = load_space(space)
    check_runtime(options.runtime, options.device)
    check_threads(options.threads)
    max_stage = check_max_stage(space, space.num_scaling_stages if options.max_stage is None else options.max_stage)
    out = Path(out)
    if out.is_dir():
        raise ScalenasError(f"{out}: is a folder (give a .csv file name)")
    meta = {"version": FORMAT_VERSION, "space": space.name, "space_key": space.content_key,
            **fingerprint(options.device, options.runtime),
            **{k: getattr(options, k) for k in SETTINGS}, "max_stage": max_stage,
            "cpus": os.cpu_count(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    calib = calibration_subnets(space, options.calibration, options.seed, max_stage)
    scope = unique_configs(c for s in calib for c in subnet_layers(space, s))
    if not options.lazy:
        everything = space_layer_configs(space, max_stage)
        if len(everything) > MAX_EAGER:
            raise ScalenasError(f"space {space.name!r} up to stage {max_stage} has {len(everything)} layer "
                                f"configurations (more than {MAX_EAGER} to time up front): use --lazy to time them "
                                "on demand")
        scope = unique_configs([*everything, *scope])
    scope = unique_configs([*scope, *extra_configs])

    if out.exists():
        old = read_header(out)
        _check_resumable(out, old, meta)
    else:
        atomic_write_text(out, HEADER + json.dumps(meta) + "\n" + _csv_line(COLUMNS))
    _, rows = read_rows(out)
    kept = len(rows.done)
    measured = 0
    start = time.perf_counter()
    with _locked(out, rows) as fd:
        for p in range(options.passes):
            todo: list[LayerConfig | Subnet] = [c for c in scope if (c.key, p) not in rows.done]
            todo += [s for s in calib if (s.to_json(), p) not in rows.done]
            random.Random(options.seed * 1000 + p).shuffle(todo)  # a new order each pass (interleaving)
            bar = tqdm(todo, desc=f"pass {p + 1}/{options.passes}", disable=not progress or not todo,
                       dynamic_ncols=True, leave=False, unit="row")
            for item in bar:
                if isinstance(item, LayerConfig):
                    bar.set_postfix_str(item.key, refresh=False)
                    line = layer_row(item, p, time_layer(item, options, options.seed))
                else:
                    bar.set_postfix_str("calibration network", refresh=False)
                    line = network_row(item, p, time_network(space, item, options))
                _append(fd, out, line)
                _add_row(out, 0, next(csv.reader([line])), rows)
                measured += 1
    table = LatencyTable(out, space, read_header(out), rows, lazy=False)
    return BuildSummary(out, len(scope), measured, kept, len(calib), time.perf_counter() - start, table.overhead)


def _check_resumable(out: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    if old["space_key"] != new["space_key"]:
        raise ScalenasError(f"{out}: exists and was built for space {old['space']!r} (content key "
                            f"{old['space_key'][:12]}), not this {new['space']!r} ({new['space_key'][:12]}): choose "
                            "another --out or remove it")
    diffs = [f"{k} {old[k]!r} (asked {new[k]!r})" for k in (*DEVICE_FIELDS, *SETTINGS) if old[k] != new[k]]
    if diffs:
        raise ScalenasError(f"{out}: exists and was built with {'; '.join(diffs)}: resume it with the same "
                            "options on the same machine, choose another --out, or remove it")
