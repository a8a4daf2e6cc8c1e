"""A pool of evaluators that keep their state loaded, in-process or in Ray actors.

Evaluating one candidate architecture is cheap once a supernet and its data are loaded, and loading them is
expensive. :class:`EvaluatorPool` therefore builds each evaluator once (in the calling process, or once per
Ray actor) and then streams candidates through them.

Evaluator contract: ``make_evaluator`` is a picklable zero-argument callable returning an object with
``evaluate(item: str) -> dict`` (``item`` is a canonical JSON string, the result a JSON-able dict), which is
deterministic given the item, and optionally ``set_threads(n: int)``.

Ray is imported lazily: ``workers=0`` never touches Ray, so the in-process path works without it.

A private local Ray (:func:`start_local_ray`) keeps every socket on 127.0.0.1; see the function for how.
"""
from __future__ import annotations

import copy
import ipaddress
import logging
import os
import re
import socket
import sys
from typing import Any, Callable, Protocol

from scalenas.errors import ScalenasError

__all__ = [
    "Evaluator",
    "EvaluatorPool",
    "connect_ray",
    "default_workers",
    "start_local_ray",
]

LOOPBACK = "127.0.0.1"
# Ray refuses object stores below 75 MiB; fail early with our own message instead of its traceback.
_MIN_OBJECT_STORE_MB = 75
# Seconds allowed for the TCP probe of a Ray address before ray.init is tried: ray.init itself retries an
# unreachable GCS for many minutes, so without the probe a wrong address looks like a hang.
_PROBE_TIMEOUT_S = 5.0
# Memory a worker is assumed to need (a torch import alone is ~600 MB; the supernet and data come on top).
_WORKER_MEMORY_BYTES = 2 * 1024**3

log = logging.getLogger(__name__)


class Evaluator(Protocol):
    """What ``make_evaluator()`` returns."""

    def evaluate(self, item: str) -> dict:  # pragma: no cover - protocol
        ...


# --------------------------------------------------------------------------------------------- Ray startup
def _cpu_count() -> int:
    """CPUs this process may run on (affinity-aware, unlike ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _cuda_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_workers() -> int:
    """A sensible number of evaluator workers for this machine.

    One per GPU when CUDA is available. Otherwise one per CPU core (each with one thread): small-batch
    evaluation scales better across processes than across threads of one process. Capped so that every
    worker can have ~2 GiB of RAM, because each one holds its own copy of torch, the supernet and the data.
    """
    gpus = _cuda_count()
    if gpus:
        return gpus
    workers = _cpu_count()
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        workers = min(workers, max(1, total // _WORKER_MEMORY_BYTES))
    except (AttributeError, ValueError, OSError):
        pass
    return max(1, int(workers))


def is_loopback(host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # Ray's gRPC servers report "::ffff:127.0.0.1"
    return addr.is_loopback


def non_loopback_listeners() -> list[str]:
    """Listening TCP sockets of this process and its descendants (the Ray daemons and workers of a local
    Ray started here) that are not bound to loopback, as ``"name(pid) host:port"``."""
    try:
        import psutil  # Ray vendors psutil (ray/thirdparty_files); present once ray is imported
    except ImportError:  # pragma: no cover - depends on the Ray build
        log.warning("psutil not importable: cannot check that Ray listens on loopback only")
        return []
    me = psutil.Process()
    bad = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="tcp")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN and c.laddr and not is_loopback(c.laddr.ip):
                bad.append(f"{name}({proc.pid}) {c.laddr.ip}:{c.laddr.port}")
    return bad


def start_local_ray(num_cpus: int | None = None, object_store_mb: int = 200) -> None:
    """Start a private single-machine Ray in this process, with every socket bound to 127.0.0.1.

    How loopback-only binding is achieved: Ray picks its node address with
    ``ray._private.services.get_node_ip_address``, which returns 127.0.0.1 only when the constant
    ``ray_constants.ENABLE_RAY_CLUSTER`` is false. That constant is read from the environment variable
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` *when Ray is first imported*, so setting the variable is not
    enough once something has imported Ray: the constant is patched as well, for the duration of
    ``ray.init``. The variable stays set while the daemons start, so they and their workers (which import
    Ray afresh) agree. ``_node_ip_address`` alone does not work (Ray then still advertises other
    addresses). After start-up the node address and every listening socket of the new processes are checked;
    anything off loopback shuts Ray down again and raises.

    Also: usage stats off, auth token off (Ray would otherwise write ``~/.ray/auth_token``), no dashboard,
    a small object store (the default claims ~30 % of RAM in /dev/shm), worker logs not echoed. The
    driver's ``sys.path`` is passed to the workers through ``PYTHONPATH``, so that an evaluator factory that
    imports in this process also imports in the actors (Ray itself only forwards the cwd and script dir).

    A no-op when Ray is already initialised in this process.
    """
    import ray

    if ray.is_initialized():
        return
    if num_cpus is not None and num_cpus < 1:
        raise ScalenasError(f"num_cpus must be >= 1, got {num_cpus}")
    if object_store_mb < _MIN_OBJECT_STORE_MB:
        raise ScalenasError(f"object_store_mb must be >= {_MIN_OBJECT_STORE_MB} (a Ray minimum), got {object_store_mb}")

    import ray._private.ray_constants as ray_constants

    paths = [os.path.abspath(p) for p in sys.path if p and os.path.isdir(p)]
    old_path = os.environ.get("PYTHONPATH")
    if old_path:
        paths.append(old_path)
    temp_env = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)),
    }
    # Kept for the life of the process: they only switch features off.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    saved = {k: os.environ.get(k) for k in temp_env}
    saved_const = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(temp_env)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            num_cpus=num_cpus or _cpu_count(),
            include_dashboard=False,
            object_store_memory=int(object_store_mb) * 1024 * 1024,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    finally:
        # Restore: a later connect_ray to a real multi-node cluster must advertise a routable address.
        ray_constants.ENABLE_RAY_CLUSTER = saved_const
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    node_ips = sorted({n.get("NodeManagerAddress", "") for n in ray.nodes() if n.get("Alive")})
    bad = [] if node_ips == [LOOPBACK] else [f"node address {ip}" for ip in node_ips if ip != LOOPBACK]
    bad += non_loopback_listeners()
    if bad:
        ray.shutdown()
        raise ScalenasError("local Ray did not stay on loopback: " + ", ".join(bad))


def _parse_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ScalenasError(f"Ray address must be 'auto' or 'host:port', got {address!r}")
    return host, int(port)


def connect_ray(address: str) -> None:
    """Join an existing Ray cluster: ``"auto"`` (``RAY_ADDRESS`` or the cluster last started with
    ``ray start`` on this machine) or ``"host:port"`` of its GCS.

    The address is first probed with a plain TCP connect (bounded by a few seconds), because ``ray.init``
    retries an unreachable address for minutes. Raises :class:`ScalenasError` when it cannot be reached. If
    Ray is already initialised in this process, the address must be the one it is connected to.

    The evaluator factory and ``scalenas`` must be importable on the cluster's workers (same code and venv,
    or a ``runtime_env``): unlike :func:`start_local_ray`, nothing is forwarded.
    """
    import ray

    if address == "auto":
        from ray._private import services  # private, but it is how ray.init itself resolves "auto"

        try:
            resolved = services.canonicalize_bootstrap_address_or_die("auto")
        except (ConnectionError, ValueError) as exc:
            raise ScalenasError(f"cannot reach Ray cluster at auto: {str(exc).splitlines()[0]}") from None
    else:
        resolved = address
    host, port = _parse_host_port(resolved)
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ScalenasError(f"cannot reach Ray cluster at {address} ({host}:{port}: {exc})") from None

    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if _parse_host_port(current) != (host, port):
            raise ScalenasError(f"this process is already connected to Ray at {current}, not {address}")
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=resolved, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as exc:
        raise ScalenasError(f"cannot reach Ray cluster at {address}: {str(exc).splitlines()[0]}") from None


# ------------------------------------------------------------------------------------------------- workers
def _apply_threads(evaluator: Any, threads: int) -> None:
    """Give torch (if present) and the evaluator ``threads`` intra-op threads."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if evaluator is not None and hasattr(evaluator, "set_threads"):
        evaluator.set_threads(threads)


class _EvaluatorActor:
    """Body of the Ray actor: one evaluator, built once, used for many items.

    Plain class here; wrapped with ``ray.remote`` at pool start so that importing this module needs no Ray.
    """

    def __init__(self, make_evaluator: Callable[[], Evaluator], threads: int) -> None:
        _apply_threads(None, threads)  # before the factory: loading may already run torch ops
        self.evaluator = make_evaluator()
        _apply_threads(self.evaluator, threads)

    def evaluate(self, item: str) -> dict:
        return self.evaluator.evaluate(item)

    def pid(self) -> int:
        return os.getpid()


def _retryable_errors() -> tuple[type[BaseException], ...]:
    """Ray errors that mean "the worker went away", not "the evaluator raised"."""
    import ray.exceptions as rex

    names = ("RayActorError", "WorkerCrashedError", "OutOfMemoryError", "NodeDiedError", "ObjectLostError",
             "LocalRayletDiedError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """``exc`` as one short line (ScalenasError messages are printed as one line; Ray's are coloured)."""
    text = " ".join(_ANSI.sub("", str(exc)).split())
    return f"{type(exc).__name__}: {text[:limit]}"


def _last_line(exc: BaseException) -> str:
    """The last non-empty line of ``exc``: for a remote traceback, the original exception."""
    lines = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


class EvaluatorPool:
    """Evaluate many items with evaluators that stay loaded.

    ``workers == 0``: one evaluator in this process, no Ray at all. ``workers >= 1``: that many Ray actors,
    each holding one evaluator and ``threads_per_worker`` CPUs (and ``gpus_per_worker`` GPUs). With
    ``ray_address`` the pool joins that cluster (:func:`connect_ray`); otherwise it reuses Ray if this
    process already runs it, or starts a private local one (:func:`start_local_ray`) that :meth:`close`
    shuts down again.

    ``map`` keeps every actor busy with one item at a time (dynamic scheduling: fast items do not wait for
    slow ones). One item in flight per actor also means that when an actor dies the failure is charged to
    exactly the item it was running: that actor is replaced and the item re-run, at most ``max_retries``
    times per item, then :class:`ScalenasError`. An exception raised by the evaluator itself is not
    retried (evaluation is deterministic, so it would fail again); it propagates.

    Not thread-safe: call ``map`` from one thread.
    """

    def __init__(
        self,
        make_evaluator: Callable[[], Evaluator],
        workers: int,
        threads_per_worker: int = 1,
        ray_address: str | None = None,
        max_retries: int = 3,
        progress: Callable[[int, int], None] | None = None,
        gpus_per_worker: float | None = None,
        object_store_mb: int = 200,
    ) -> None:
        """``gpus_per_worker=None`` means 1 when this process sees CUDA, else 0. ``object_store_mb`` only
        applies when the pool starts its own local Ray."""
        if not callable(make_evaluator):
            raise ScalenasError("make_evaluator must be a zero-argument callable returning an evaluator")
        if workers < 0:
            raise ScalenasError(f"workers must be >= 0, got {workers}")
        if threads_per_worker < 1:
            raise ScalenasError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
        if max_retries < 0:
            raise ScalenasError(f"max_retries must be >= 0, got {max_retries}")
        self.make_evaluator = make_evaluator
        self.workers = int(workers)
        self.threads_per_worker = int(threads_per_worker)
        self.max_retries = int(max_retries)
        self.progress = progress
        self.evaluations = 0
        self.replaced_actors = 0
        self._owns_ray = False
        self._closed = False
        self._local: Evaluator | None = None
        self._actors: list[Any] = []
        self._actor_cls: Any = None

        if self.workers == 0:
            self._local = make_evaluator()
            return

        import ray

        if ray_address is not None:
            connect_ray(ray_address)
        elif not ray.is_initialized():
            start_local_ray(object_store_mb=object_store_mb)
            self._owns_ray = True
        try:
            if gpus_per_worker is None:
                gpus_per_worker = 1.0 if _cuda_count() else 0.0
            self._check_capacity(ray, float(gpus_per_worker))
            self._actor_cls = ray.remote(num_cpus=self.threads_per_worker, num_gpus=gpus_per_worker,
                                         max_restarts=0, max_task_retries=0)(_EvaluatorActor)
            # Created now so that all evaluators load in parallel while the caller prepares its items.
            self._actors = [self._new_actor() for _ in range(self.workers)]
        except BaseException:
            self.close()
            raise

    # -- helpers ------------------------------------------------------------------------------------------
    def _check_capacity(self, ray: Any, gpus: float) -> None:
        """Refuse a pool the cluster can never place: surplus actors would stay pending and ``map`` would
        wait forever on the items handed to them."""
        res = ray.cluster_resources()
        need_cpu = self.workers * self.threads_per_worker
        if need_cpu > res.get("CPU", 0):
            raise ScalenasError(
                f"{self.workers} workers x {self.threads_per_worker} threads need {need_cpu} CPUs, "
                f"the Ray cluster has {res.get('CPU', 0):g}")
        if gpus and self.workers * gpus > res.get("GPU", 0):
            raise ScalenasError(
                f"{self.workers} workers x {gpus:g} GPUs need {self.workers * gpus:g} GPUs, "
                f"the Ray cluster has {res.get('GPU', 0):g}")

    def _new_actor(self) -> Any:
        return self._actor_cls.remote(self.make_evaluator, self.threads_per_worker)

    def _replace_actor(self, slot: int) -> None:
        import ray

        try:
            ray.kill(self._actors[slot], no_restart=True)  # may be half-alive (e.g. unavailable)
        except Exception:  # already gone
            pass
        self._actors[slot] = self._new_actor()
        self.replaced_actors += 1

    def actor_pids(self) -> list[int]:
        """Process ids of the current actors (empty in-process); for inspection and tests."""
        if not self._actors:
            return []
        import ray

        return ray.get([a.pid.remote() for a in self._actors])

    # -- evaluation ---------------------------------------------------------------------------------------
    def map(self, items: list[str]) -> list[dict]:
        """Evaluate ``items``; results in the same order. Identical items are evaluated once (evaluation is
        deterministic) and each receives its own copy of the result; ``progress(done, total)`` counts
        distinct items."""
        if self._closed:
            raise ScalenasError("EvaluatorPool is closed")
        items = list(items)
        unique = list(dict.fromkeys(items))
        if self.workers == 0:
            results = self._map_local(unique)
        else:
            results = self._map_ray(unique)
        by_item = dict(zip(unique, results))
        seen: set[str] = set()
        out = []
        for it in items:
            # First occurrence gets the object itself, repeats a deep copy, so callers may mutate freely.
            out.append(by_item[it] if it not in seen else copy.deepcopy(by_item[it]))
            seen.add(it)
        return out

    def _map_local(self, unique: list[str]) -> list[dict]:
        # Same thread count as an actor would have, so in-process and Ray results agree bit for bit; the
        # caller's setting is restored afterwards.
        try:
            import torch
            before = torch.get_num_threads()
        except ImportError:
            torch, before = None, None
        _apply_threads(self._local, self.threads_per_worker)
        try:
            results = []
            for i, item in enumerate(unique):
                results.append(self._local.evaluate(item))
                self.evaluations += 1
                if self.progress:
                    self.progress(i + 1, len(unique))
            return results
        finally:
            if torch is not None and before is not None:
                torch.set_num_threads(before)

    def _map_ray(self, unique: list[str]) -> list[dict]:
        import ray

        retryable = _retryable_errors()
        total = len(unique)
        results: list[dict | None] = [None] * total
        failures = [0] * total
        pending = list(range(total - 1, -1, -1))  # a stack, popped from the end: item 0 goes first
        in_flight: dict[Any, tuple[int, int]] = {}  # ObjectRef -> (actor slot, item index)
        idle = list(range(len(self._actors)))
        done = 0
        while done < total:
            while idle and pending:
                slot, idx = idle.pop(), pending.pop()
                in_flight[self._actors[slot].evaluate.remote(unique[idx])] = (slot, idx)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                slot, idx = in_flight.pop(ref)
                try:
                    value = ray.get(ref)
                except retryable as exc:
                    if getattr(exc, "actor_init_failed", False):
                        # make_evaluator() raised inside the worker: deterministic, so retrying (or replacing
                        # the actor) is pointless.
                        raise ScalenasError(
                            f"could not build the evaluator in a Ray worker: {_last_line(exc)}") from exc
                    # The worker died (crash, OOM kill, node loss) while running this item: fresh actor,
                    # item back on the stack. Nothing was recorded for it, so nothing is counted twice.
                    failures[idx] += 1
                    self._replace_actor(slot)
                    idle.append(slot)
                    if failures[idx] > self.max_retries:
                        raise ScalenasError(
                            f"evaluation of item {idx} failed {failures[idx]} times (max_retries="
                            f"{self.max_retries}); last error {_first_line(exc)}; item: {unique[idx][:200]}"
                        ) from None
                    log.warning("Ray worker died on item %d (attempt %d); replacing it: %s",
                                idx, failures[idx], _first_line(exc))
                    pending.append(idx)
                    continue
                results[idx] = value
                idle.append(slot)
                done += 1
                self.evaluations += 1
                if self.progress:
                    self.progress(done, total)
        return results  # type: ignore[return-value]

    # -- lifetime -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the actors; shut Ray down if this pool started it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._local = None
        if self._actors or self._owns_ray:
            import ray

            if ray.is_initialized():
                for actor in self._actors:
                    try:
                        ray.kill(actor, no_restart=True)
                    except Exception:
                        pass
            self._actors = []
            if self._owns_ray:
                ray.shutdown()
                self._owns_ray = False

    def __enter__(self) -> "EvaluatorPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
