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

import contextlib
import copy
import ipaddress
import logging
import os
import re
import socket
import sys
from typing import Any, Callable, Iterator, Protocol

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


@contextlib.contextmanager
def _loopback_ray(**extra_env: str) -> Iterator[None]:
    """While inside: Ray takes 127.0.0.1 as this machine's address (see :func:`start_local_ray`), and
    ``extra_env`` is set. Both are restored on exit, so that a later join of a real multi-node cluster
    advertises a routable address."""
    import ray._private.ray_constants as ray_constants

    temp_env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **extra_env}
    saved = {k: os.environ.get(k) for k in temp_env}
    saved_const = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(temp_env)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_const
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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

    Always a private instance (``address="local"``), also when another Ray runs on the machine (``ray start``,
    ``RAY_ADDRESS``): that one is neither joined nor touched, and ``ray.shutdown()`` stops only this one.

    A no-op when Ray is already initialised in this process.
    """
    import ray

    if ray.is_initialized():
        return
    if num_cpus is not None and num_cpus < 1:
        raise ScalenasError(f"num_cpus must be >= 1, got {num_cpus}")
    if object_store_mb < _MIN_OBJECT_STORE_MB:
        raise ScalenasError(f"object_store_mb must be >= {_MIN_OBJECT_STORE_MB} (a Ray minimum), got {object_store_mb}")

    paths = [os.path.abspath(p) for p in sys.path if p and os.path.isdir(p)]
    old_path = os.environ.get("PYTHONPATH")
    if old_path:
        paths.append(old_path)
    # Kept for the life of the process: they only switch features off.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    with _loopback_ray(PYTHONPATH=os.pathsep.join(dict.fromkeys(paths))):
        # address="local": always a new instance of our own. Without it ray.init attaches to a cluster that
        # RAY_ADDRESS or `ray start` (its /tmp/ray/ray_current_cluster file) points to, refuses num_cpus
        # there, and its shutdown would not be ours to do.
        ray.init(
            address="local",
            _node_ip_address=LOOPBACK,
            num_cpus=num_cpus or _cpu_count(),
            include_dashboard=False,
            object_store_memory=int(object_store_mb) * 1024 * 1024,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )

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

    A loopback address (a cluster started with ``--node-ip-address=127.0.0.1``) is joined under the same
    loopback rule as :func:`start_local_ray`: Ray would otherwise swap 127.0.0.1 for this machine's network
    address (``resolve_ip_for_localhost``) and try to reach the cluster there, where it does not listen.

    The evaluator factory and ``scalenas`` must be importable on the cluster's workers (same code and venv,
    or a ``runtime_env``): unlike :func:`start_local_ray`, nothing is forwarded.
    """
    import ray

    if address == "auto":
        from ray._private import services  # private, but it is how ray.init itself resolves "auto"

        try:
            with _loopback_ray():  # keeps a 127.0.0.1 address as it is (see the docstring)
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
    loopback = host == "localhost" or is_loopback(host)
    try:
        with _loopback_ray() if loopback else contextlib.nullcontext():
            ray.init(address=resolved, log_to_driver=False, logging_level=logging.WARNING,
                     **({"_node_ip_address": LOOPBACK} if loopback else {}))
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
    """Body of the Ray actor: one evaluator, built once by :meth:`load`, used for many items.

    Plain class here; wrapped with ``ray.remote`` at pool start so that importing this module needs no Ray.
    The constructor does nothing, so that the first call (:meth:`where`) answers as soon as the actor is
    *placed* on a node: the pool can then tell "cannot be placed" (bounded wait) from "still loading" (the
    evaluator's own time, not bounded).
    """

    def __init__(self) -> None:
        self.evaluator: Evaluator | None = None

    def where(self) -> tuple[int, str]:
        """(pid, Ray node id) of this actor."""
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def load(self, make_evaluator: Callable[[], Evaluator], threads: int) -> int:
        _apply_threads(None, threads)  # before the factory: loading may already run torch ops
        self.evaluator = make_evaluator()
        _apply_threads(self.evaluator, threads)
        return os.getpid()

    def evaluate(self, item: str) -> dict:
        if self.evaluator is None:  # load() failed; the pool reports load()'s error instead
            raise RuntimeError("the evaluator was not built")
        return self.evaluator.evaluate(item)


def _retryable_errors() -> tuple[type[BaseException], ...]:
    """Ray errors that mean "the worker went away", not "the evaluator raised"."""
    import ray.exceptions as rex

    names = ("RayActorError", "WorkerCrashedError", "OutOfMemoryError", "NodeDiedError", "ObjectLostError",
             "LocalRayletDiedError", "GetTimeoutError")
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


# How often map() wakes up when nothing finishes, to check nodes and placement deadlines (seconds).
_POLL_S = 0.5
# How often the node table is read from the GCS while waiting (seconds).
_NODE_CHECK_S = 2.0
# Bound on fetching a result that ray.wait already reported ready (a small value held by this process).
_GET_TIMEOUT_S = 30.0
# Default for EvaluatorPool(worker_timeout_s=...).
DEFAULT_WORKER_TIMEOUT_S = 60.0


class _Worker:
    """One actor and what the pool knows about it."""

    __slots__ = ("actor", "where_ref", "load_ref", "created", "replacement", "pid", "node_id", "loaded")

    def __init__(self, actor: Any, where_ref: Any, load_ref: Any, created: float, replacement: bool) -> None:
        self.actor, self.where_ref, self.load_ref = actor, where_ref, load_ref
        self.created, self.replacement = created, replacement
        self.pid: int | None = None  # set once placed (where() answered)
        self.node_id: str | None = None
        self.loaded = False

    @property
    def placed(self) -> bool:
        return self.pid is not None


class EvaluatorPool:
    """Evaluate many items with evaluators that stay loaded.

    ``workers == 0``: one evaluator in this process, no Ray at all. ``workers >= 1``: that many Ray actors,
    each holding one evaluator and ``threads_per_worker`` CPUs (and ``gpus_per_worker`` GPUs). With
    ``ray_address`` the pool joins that cluster (:func:`connect_ray`); otherwise it reuses Ray if this
    process already runs it, or starts a private local one (:func:`start_local_ray`, never another Ray
    running on the machine) that :meth:`close` shuts down again.

    ``map`` keeps every actor busy with one item at a time (dynamic scheduling: fast items do not wait for
    slow ones). One item in flight per actor also means that when an actor dies the failure is charged to
    exactly the item it was running: that actor is replaced and the item re-run, at most ``max_retries``
    times per item, then :class:`ScalenasError`. An exception raised by the evaluator itself is not
    retried (evaluation is deterministic, so it would fail again); it propagates.

    Lost capacity never makes ``map`` wait forever; every wait is a bounded ``ray.wait`` loop:

    - a dead actor (crash, OOM kill, its node gone) fails its item's reference: replaced, item re-queued;
    - a node that leaves the cluster (``ray.nodes()``, read every few seconds) has its actors retired at
      once, without waiting for their references to fail; their items are re-queued;
    - a replacement actor gets items only once it is placed on a node, so re-queued items run on the
      workers that remain, while the replacement waits for capacity (it joins when a node comes back);
    - an actor not placed within ``worker_timeout_s`` has its item taken back and run elsewhere;
    - when no actor is placed for ``worker_timeout_s`` (every node with capacity gone), ``map`` raises
      :class:`ScalenasError` naming what was lost. Results returned by earlier ``map`` calls are unaffected
      (a search has saved its state after each finished generation and can be resumed).

    Each event is logged as a warning, and ``map`` ends with one warning saying how many items were re-run.
    Loading (``make_evaluator()`` in the actor) and evaluation themselves are not time-limited.

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
        worker_timeout_s: float = DEFAULT_WORKER_TIMEOUT_S,
    ) -> None:
        """``gpus_per_worker=None`` means 1 when this process sees CUDA, else 0. ``object_store_mb`` only
        applies when the pool starts its own local Ray. ``worker_timeout_s``: how long ``map`` waits for an
        actor to be placed on a node (see the class notes)."""
        if not callable(make_evaluator):
            raise ScalenasError("make_evaluator must be a zero-argument callable returning an evaluator")
        if workers < 0:
            raise ScalenasError(f"workers must be >= 0, got {workers}")
        if threads_per_worker < 1:
            raise ScalenasError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
        if max_retries < 0:
            raise ScalenasError(f"max_retries must be >= 0, got {max_retries}")
        try:
            worker_timeout_s = float(worker_timeout_s)
        except (TypeError, ValueError):
            raise ScalenasError(f"worker_timeout_s must be a number, got {worker_timeout_s!r}") from None
        if not 0 < worker_timeout_s < float("inf"):
            raise ScalenasError(f"worker_timeout_s must be finite and > 0, got {worker_timeout_s}")
        self.make_evaluator = make_evaluator
        self.workers = int(workers)
        self.threads_per_worker = int(threads_per_worker)
        self.max_retries = int(max_retries)
        self.worker_timeout_s = worker_timeout_s
        self.progress = progress
        self.evaluations = 0
        self.replaced_actors = 0
        self.rerun_items = 0  # items sent again after their worker was lost (all map calls)
        self.lost_nodes: set[str] = set()  # Ray node ids seen leaving the cluster while they held actors
        self._owns_ray = False
        self._closed = False
        self._local: Evaluator | None = None
        self._workers: list[_Worker] = []
        self._actor_cls: Any = None
        self._load_deaths = 0  # actors that died while building the evaluator, since the last good load

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
            self._gpus = float(gpus_per_worker)
            self._check_capacity(ray, self._gpus)
            self._actor_cls = ray.remote(num_cpus=self.threads_per_worker, num_gpus=gpus_per_worker,
                                         max_restarts=0, max_task_retries=0)(_EvaluatorActor)
            # Created now so that all evaluators load in parallel while the caller prepares its items.
            self._workers = [self._new_worker(replacement=False) for _ in range(self.workers)]
        except BaseException:
            self.close()
            raise

    # -- helpers ------------------------------------------------------------------------------------------
    def _check_capacity(self, ray: Any, gpus: float) -> None:
        """Refuse a pool the cluster can never place: surplus actors would stay pending and ``map`` would
        wait on them for ``worker_timeout_s`` at best."""
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

    def _new_worker(self, replacement: bool) -> _Worker:
        import time

        actor = self._actor_cls.remote()
        where_ref = actor.where.remote()  # answers once placed (the constructor is empty)
        load_ref = actor.load.remote(self.make_evaluator, self.threads_per_worker)
        return _Worker(actor, where_ref, load_ref, time.monotonic(), replacement)

    def _replace_actor(self, slot: int) -> None:
        import ray

        try:
            ray.kill(self._workers[slot].actor, no_restart=True)  # may be half-alive, pending or on a lost node
        except Exception:  # already gone
            pass
        self._workers[slot] = self._new_worker(replacement=True)
        self.replaced_actors += 1

    def _eligible(self, w: _Worker, now: float) -> bool:
        """May ``w`` be given an item? Placed actors, and the pool's first actors while they are young (their
        placement was checked against the cluster's resources). A replacement waits until it is placed, so
        that items lost with a node run on the workers that remain."""
        return w.placed or (not w.replacement and now - w.created < self.worker_timeout_s)

    def _alive_nodes(self, ray: Any) -> dict[str, dict] | None:
        try:
            return {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
        except Exception as exc:  # GCS briefly unreachable: try again at the next check
            log.warning("could not read the Ray node table: %s", _first_line(exc))
            return None

    def _capacity_text(self, ray: Any) -> str:
        nodes = self._alive_nodes(ray) or {}
        cpus = sum(float(n.get("Resources", {}).get("CPU", 0)) for n in nodes.values())
        gpus = sum(float(n.get("Resources", {}).get("GPU", 0)) for n in nodes.values())
        need = f"{self.threads_per_worker} CPU" + (f" + {self._gpus:g} GPU" if self._gpus else "")
        have = f"{cpus:g} CPUs" + (f", {gpus:g} GPUs" if self._gpus else "")
        return f"{len(nodes)} live node(s) with {have}; a worker needs {need}"

    def actor_pids(self, timeout: float | None = None) -> list[int]:
        """Process ids of the actors that have built their evaluator (empty in-process), waiting up to
        ``timeout`` seconds (default ``worker_timeout_s``) for the others; for inspection and tests."""
        if not self._workers:
            return []
        import ray

        refs = [w.load_ref for w in self._workers]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.worker_timeout_s if timeout is None
                            else timeout)
        ready_set = set(ready)
        return [ray.get(r, timeout=_GET_TIMEOUT_S) for r in refs if r in ready_set]

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
        import time

        import ray

        retryable = _retryable_errors()
        total = len(unique)
        results: list[dict | None] = [None] * total
        failures = [0] * total
        pending = list(range(total - 1, -1, -1))  # a stack, popped from the end: item 0 goes first
        in_flight: dict[Any, tuple[int, int, _Worker]] = {}  # ObjectRef -> (slot, item index, worker)
        busy: dict[int, Any] = {}  # slot -> the ObjectRef of the item it runs
        done = 0
        rerun = 0
        lost_workers = 0
        no_worker_since: float | None = None
        next_node_check = 0.0  # check the node table before the first dispatch

        def requeue(slot: int) -> None:
            """Take back the item of ``slot`` (if any) without charging it: its worker is gone, not its fault."""
            nonlocal rerun
            ref = busy.pop(slot, None)
            if ref is not None:
                _, idx, _ = in_flight.pop(ref)
                pending.append(idx)
                rerun += 1

        def retire(slot: int, why: str) -> None:
            nonlocal lost_workers
            requeue(slot)
            lost_workers += 1
            self._replace_actor(slot)
            log.warning("Ray worker %d %s; replaced by a new actor, which gets items once it is placed",
                        slot, why)

        def load_failed(w: _Worker) -> ScalenasError | None:
            """The error of ``w``'s load(), if it failed with an exception of the evaluator factory."""
            ready, _ = ray.wait([w.load_ref], timeout=_GET_TIMEOUT_S)
            if not ready:
                return None
            try:
                ray.get(w.load_ref, timeout=_GET_TIMEOUT_S)
            except retryable:
                return None
            except Exception as exc:
                return ScalenasError(f"could not build the evaluator in a Ray worker: {_last_line(exc)}")
            return None

        while done < total:
            now = time.monotonic()
            if now >= next_node_check:
                next_node_check = now + _NODE_CHECK_S
                alive = self._alive_nodes(ray)
                if alive is not None:
                    for slot, w in enumerate(self._workers):
                        if w.node_id is not None and w.node_id not in alive:
                            self.lost_nodes.add(w.node_id)
                            retire(slot, f"was on Ray node {w.node_id[:12]}, which left the cluster")
            for slot, w in enumerate(self._workers):
                # Not placed in time while holding an item: give the item to a placed worker.
                if slot in busy and not w.placed and now - w.created >= self.worker_timeout_s:
                    retire(slot, f"was not placed on any node within {self.worker_timeout_s:g} s")
            if any(w.placed for w in self._workers):
                no_worker_since = None
            elif no_worker_since is None:
                no_worker_since = now
            elif now - no_worker_since >= self.worker_timeout_s:
                raise ScalenasError(
                    f"no Ray worker could be placed for {now - no_worker_since:.0f} s (worker_timeout_s="
                    f"{self.worker_timeout_s:g}) with {total - done} of {total} items left; "
                    f"{lost_workers} worker(s) lost in this batch"
                    + (f", {len(self.lost_nodes)} node(s) gone" if self.lost_nodes else "")
                    + f"; Ray lists {self._capacity_text(ray)}; results of earlier batches are kept")

            for slot, w in enumerate(self._workers):
                if not pending:
                    break
                if slot not in busy and self._eligible(w, now):
                    idx = pending.pop()
                    ref = w.actor.evaluate.remote(unique[idx])
                    in_flight[ref] = (slot, idx, w)
                    busy[slot] = ref

            probes: dict[Any, tuple[str, int, _Worker]] = {}
            for slot, w in enumerate(self._workers):
                if not w.placed:
                    probes[w.where_ref] = ("where", slot, w)
                elif not w.loaded:
                    probes[w.load_ref] = ("load", slot, w)
            waiting = [*in_flight, *probes]
            if not waiting:  # nothing placed, loading or running (all retired just now): re-check shortly
                time.sleep(_POLL_S)
                continue
            ready, _ = ray.wait(waiting, num_returns=1, timeout=_POLL_S)
            if ready and len(waiting) > 1:  # take everything that is ready now, not one per round
                ready, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
            for ref in ready:
                if ref in probes:
                    kind, slot, w = probes[ref]
                    if self._workers[slot] is not w:
                        continue
                    try:
                        value = ray.get(ref, timeout=_GET_TIMEOUT_S)
                    except retryable as exc:
                        if kind == "load" or not w.placed:
                            self._load_deaths += 1
                            if self._load_deaths > self.max_retries + self.workers:
                                raise ScalenasError(
                                    f"Ray workers died {self._load_deaths} times in a row before their evaluator "
                                    f"was built; last error {_first_line(exc)}") from None
                        retire(slot, f"died before it was ready ({_first_line(exc, 120)})")
                        continue
                    except Exception as exc:  # make_evaluator() raised: deterministic, retrying is pointless
                        raise ScalenasError(
                            f"could not build the evaluator in a Ray worker: {_last_line(exc)}") from exc
                    if kind == "where":
                        w.pid, w.node_id = value
                        next_node_check = 0.0  # is its node still listed? Checked before it gets an item
                    else:
                        w.loaded = True
                        self._load_deaths = 0
                    continue

                if ref not in in_flight:  # its worker was retired earlier in this round; item re-queued
                    continue
                slot, idx, w = in_flight.pop(ref)
                busy.pop(slot, None)
                try:
                    value = ray.get(ref, timeout=_GET_TIMEOUT_S)
                except retryable as exc:
                    # The worker died (crash, OOM kill, node loss) while running this item: fresh actor,
                    # item back on the stack. Nothing was recorded for it, so nothing is counted twice.
                    failures[idx] += 1
                    if self._workers[slot] is w:
                        self._replace_actor(slot)
                        lost_workers += 1
                    if failures[idx] > self.max_retries:
                        raise ScalenasError(
                            f"evaluation of item {idx} failed {failures[idx]} times (max_retries="
                            f"{self.max_retries}); last error {_first_line(exc)}; item: {unique[idx][:200]}"
                        ) from None
                    log.warning("Ray worker died on item %d (attempt %d); replacing it: %s",
                                idx, failures[idx], _first_line(exc))
                    pending.append(idx)
                    rerun += 1
                    continue
                except Exception:
                    # The evaluator raised; if it was never built, say so instead of its knock-on error.
                    err = load_failed(w)
                    if err is not None:
                        raise err from None
                    raise
                results[idx] = value
                done += 1
                self.evaluations += 1
                if self.progress:
                    self.progress(done, total)
        self.rerun_items += rerun
        if rerun:
            log.warning("re-ran %d of %d item(s) after losing %d Ray worker(s)%s; all %d results are in",
                        rerun, total, lost_workers,
                        f" ({len(self.lost_nodes)} node(s) gone)" if self.lost_nodes else "", total)
        return results  # type: ignore[return-value]

    # -- lifetime -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the actors; shut Ray down if this pool started it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._local = None
        if self._workers or self._owns_ray:
            import ray

            if ray.is_initialized():
                for w in self._workers:
                    try:
                        ray.kill(w.actor, no_restart=True)
                    except Exception:
                        pass
            self._workers = []
            if self._owns_ray:
                ray.shutdown()
                self._owns_ray = False

    def __enter__(self) -> "EvaluatorPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
