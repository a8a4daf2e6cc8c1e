"""Ray on this machine or a cluster, for the evaluation pool (:mod:`scalenas.search.raypool`): a private local Ray
bound to 127.0.0.1 (:func:`start_local_ray`), joining an existing cluster (:func:`connect_ray`), and how many
workers this machine affords (:func:`default_workers`).

Ray is imported inside the functions that need it, so importing this module costs nothing.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import sys
from typing import Iterator

from scalenas.errors import ScalenasError

__all__ = ["connect_ray", "cpu_count", "cuda_count", "default_workers", "is_loopback", "non_loopback_listeners",
           "start_local_ray"]

LOOPBACK = "127.0.0.1"
# Ray refuses object stores below 75 MiB; fail early with our own message instead of its traceback.
_MIN_OBJECT_STORE_MB = 75
# Seconds allowed for the TCP probe of a Ray address before ray.init is tried: ray.init itself retries an
# unreachable GCS for many minutes, so without the probe a wrong address looks like a hang.
_PROBE_TIMEOUT_S = 5.0
# Memory a worker is assumed to need (a torch import alone is ~600 MB; the supernet and data come on top).
_WORKER_MEMORY_BYTES = 2 * 1024**3

log = logging.getLogger(__name__)


def cpu_count() -> int:
    """CPUs this process may run on (affinity-aware, unlike ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def cuda_count() -> int:
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
    gpus = cuda_count()
    if gpus:
        return gpus
    workers = cpu_count()
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
            num_cpus=num_cpus or cpu_count(),
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
