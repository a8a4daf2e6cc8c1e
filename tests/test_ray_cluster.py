"""EvaluatorPool next to other Ray clusters, and when a node of its cluster dies; loopback only, real Ray.

- Another Ray already running on the machine (``ray start --head``, as Ray users have): a pool or a
  ``scalenas search`` without ``--ray-address`` starts its own private Ray and leaves that one running.
- A multi-node cluster (``ray.cluster_utils.Cluster``) loses a node in the middle of ``map``: the pool
  re-runs the lost items on the node that remains, or, with no capacity left, stops with a ScalenasError
  within a bounded time. It never hangs.

Every node, head and worker, is on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before it starts,
``--node-ip-address=127.0.0.1``), and the tests assert it. The external head keeps its files under a private
``RAY_TMPDIR``, so its ``ray_current_cluster`` file (which a plain ``ray.init()`` would follow) is seen by this
test only, not by other Ray users of the machine; it is stopped by the process ids of its own processes, never
with ``ray stop``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from scalenas.errors import ScalenasError
from scalenas.search.raylocal import non_loopback_listeners
from scalenas.search.raypool import EvaluatorPool

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ITEMS = [json.dumps({"arch": i}, sort_keys=True, separators=(",", ":")) for i in range(12)]
RAY_CLI = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else "ray"
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "disabled"}


class SleepyEvaluator:
    """Deterministic score from a hash of the item, after ``sleep`` seconds (so a map lasts long enough for a
    node to die under it). No torch: workers start fast and small."""

    def __init__(self, sleep: float = 0.0) -> None:
        self.sleep = sleep

    def evaluate(self, item: str) -> dict:
        time.sleep(self.sleep)
        return {"score": int(hashlib.sha256(item.encode()).hexdigest()[:12], 16), "pid": os.getpid()}


class SleepyFactory:
    """Picklable factory (by reference: workers import this module through PYTHONPATH)."""

    def __init__(self, sleep: float) -> None:
        self.sleep = sleep

    def __call__(self) -> SleepyEvaluator:
        return SleepyEvaluator(self.sleep)


EXPECTED = [SleepyEvaluator().evaluate(it)["score"] for it in ITEMS]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_under(marker: str) -> list:
    """Processes whose command line names ``marker`` (the external head's private temp dir), and their
    descendants (Ray agents and workers, whose command lines Ray rewrites)."""
    import psutil  # vendored by Ray

    roots = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and any(marker in a for a in (p.info["cmdline"] or [])):
                roots.append(p)
        except psutil.Error:
            continue
    found = {}
    for r in roots:
        try:
            for p in [r, *r.children(recursive=True)]:
                found[p.pid] = p
        except psutil.Error:
            continue
    return list(found.values())


def _kill_processes(procs: list) -> None:
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=3)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


def _ray_status(env: dict, port: int) -> subprocess.CompletedProcess:
    # With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (in env): otherwise the CLI swaps 127.0.0.1 for the machine's
    # network address and tries to reach the head there.
    return subprocess.run([RAY_CLI, "status", "--address", f"127.0.0.1:{port}"],
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def external_ray(monkeypatch):
    """A Ray head started with ``ray start`` on 127.0.0.1, as a user would have it, whose address a plain
    ``ray.init()`` in this process would follow. Yields (port, env of the head); stopped afterwards by the
    ids of its own processes."""
    import ray._private.ray_constants as ray_constants

    ray.shutdown()
    tmp = tempfile.mkdtemp(prefix="snx", dir="/tmp")  # short: Ray's socket paths live under it
    port = _free_port()
    env = {**os.environ, **LOOPBACK_ENV, "RAY_TMPDIR": tmp}
    env.pop("RAY_ADDRESS", None)
    try:
        subprocess.run(
            [RAY_CLI, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
             "--num-cpus=1", "--include-dashboard=false", f"--object-store-memory={80 * 2**20}",
             "--disable-usage-stats"],
            env=env, check=True, capture_output=True, text=True, timeout=120)
        head_procs = _processes_under(tmp)
        assert head_procs
        # This process now sees that cluster the way a user's scripts see one started with `ray start`.
        monkeypatch.setenv("RAY_TMPDIR", tmp)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        from ray._private import services

        with monkeypatch.context() as m:  # resolve without Ray swapping 127.0.0.1 for the machine's address
            m.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
            assert services.get_ray_address_from_environment(None, None) == f"127.0.0.1:{port}"
        yield port, env
    finally:
        _kill_processes(_processes_under(tmp))
        shutil.rmtree(tmp, ignore_errors=True)


def _assert_external_alive(port: int, env: dict) -> None:
    status = _ray_status(env, port)
    assert status.returncode == 0, status.stderr[-2000:]
    assert "1.0 CPU" in status.stdout, status.stdout  # its own resources, nothing of ours left on it


@pytest.mark.timeout(300)
def test_private_ray_next_to_a_running_cluster(external_ray, tmp_path):
    port, env = external_ray
    import ray._private.ray_constants as ray_constants

    # What failed before: ray.init(num_cpus=...) attaches to that cluster and refuses num_cpus.
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with pytest.raises(ValueError, match="existing cluster"):
            ray.init(num_cpus=1)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
    assert not ray.is_initialized()

    t0 = time.monotonic()
    with EvaluatorPool(SleepyFactory(0.0), workers=1, object_store_mb=80) as pool:
        assert ray.is_initialized()
        gcs = ray.get_runtime_context().gcs_address
        assert gcs.startswith("127.0.0.1:") and gcs != f"127.0.0.1:{port}"  # a Ray of its own
        assert [r["score"] for r in pool.map(ITEMS[:4])] == EXPECTED[:4]
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        assert ray.cluster_resources().get("CPU", 0) >= 1 and len(ray.nodes()) == 1
        assert non_loopback_listeners() == []
    assert not ray.is_initialized()  # the pool shut down its own Ray ...
    _assert_external_alive(port, env)  # ... and only that
    print(f"pool next to a running cluster: {time.monotonic() - t0:.1f} s")

    # The whole command: train a tiny supernet, search with one Ray worker, no --ray-address.
    from scalenas.cli.main import main

    run = tmp_path / "run"
    t0 = time.monotonic()
    assert main(["train-supernet", "--steps", "3", "--batch-size", "16", "--out", str(run), "--no-progress"]) == 0
    t1 = time.monotonic()
    out = tmp_path / "search"
    assert main(["search", "--run", str(run), "--target-flops", "4M", "--generations", "1", "--population", "4",
                 "--elites", "2", "--workers", "1", "--calib-batches", "1", "--no-progress",
                 "--out", str(out)]) == 0
    print(f"train-supernet {t1 - t0:.1f} s, search --workers 1 {time.monotonic() - t1:.1f} s")
    assert json.loads((out / "search_config.json").read_text())["workers"] == 1
    assert (out / "best.json").is_file()
    assert not ray.is_initialized()
    _assert_external_alive(port, env)


# --------------------------------------------------------------------------------------------- node loss
@pytest.fixture
def loopback_cluster(monkeypatch):
    """``make(head_cpus, worker_cpus)``: a 2-node ``ray.cluster_utils.Cluster`` on 127.0.0.1 whose workers can
    import this module, with its files under a private RAY_TMPDIR; returns (cluster, worker node). Shut down
    afterwards."""
    from ray.cluster_utils import Cluster
    import ray._private.ray_constants as ray_constants

    ray.shutdown()
    for key, value in LOOPBACK_ENV.items():
        monkeypatch.setenv(key, value)
    # Cluster writes its address to RAY_TMPDIR/ray/ray_current_cluster, which a plain ray.init() anywhere on
    # the machine would follow: keep it private to this test.
    tmp = tempfile.mkdtemp(prefix="snc", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(REPO)]))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    clusters = []

    def make(head_cpus: int, worker_cpus: int):
        node_args = {"object_store_memory": 80 * 2**20, "node_ip_address": "127.0.0.1"}
        cluster = Cluster(initialize_head=True, head_node_args={**node_args, "num_cpus": head_cpus,
                                                                "include_dashboard": False})
        clusters.append(cluster)
        node = cluster.add_node(**node_args, num_cpus=worker_cpus)
        assert cluster.address.startswith("127.0.0.1:")
        return cluster, node

    try:
        yield make
    finally:
        ray.shutdown()
        for cluster in clusters:
            cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def _assert_loopback_nodes(count: int | None = None) -> None:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert count is None or len(nodes) == count
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
    assert non_loopback_listeners() == []


@pytest.mark.timeout(240)
def test_node_lost_mid_map_reruns_on_remaining_node(loopback_cluster, caplog):
    """Head with 1 CPU + a worker node with 1 CPU, one actor on each; the worker node is killed after 2 items.
    The items it held run again on the head's actor and map returns every result."""
    cluster, node = loopback_cluster(head_cpus=1, worker_cpus=1)
    killed_at = []

    def progress(done: int, total: int) -> None:
        if done == 2 and not killed_at:
            killed_at.append(time.monotonic())
            cluster.remove_node(node, allow_graceful=False)  # kill -9 of the node's raylet and the rest

    with caplog.at_level(logging.WARNING, logger="scalenas.search.raypool"):
        with EvaluatorPool(SleepyFactory(0.3), workers=2, ray_address=cluster.address, progress=progress,
                           worker_timeout_s=20) as pool:
            _assert_loopback_nodes(2)
            assert len(set(pool.actor_pids())) == 2  # both loaded, one per node
            t0 = time.monotonic()
            res = pool.map(ITEMS)
            elapsed = time.monotonic() - t0
            assert killed_at, "the node was not removed during map"
            assert [r["score"] for r in res] == EXPECTED  # nothing lost, nothing wrong
            assert pool.evaluations == len(ITEMS)  # each item counted once
            assert pool.replaced_actors >= 1 and pool.rerun_items >= 1
            assert len({r["pid"] for r in res}) == 2  # both actors worked; the rest ran on the head
            _assert_loopback_nodes()
            # The pool keeps working on what is left (the replacement stays pending without capacity).
            assert [r["score"] for r in pool.map(ITEMS[:2])] == EXPECTED[:2]
            rerun_mid_map = pool.rerun_items

            # A node comes back: the pending replacement is placed there and joins.
            node2 = cluster.add_node(object_store_memory=80 * 2**20, node_ip_address="127.0.0.1", num_cpus=1)
            assert len(set(pool.actor_pids(timeout=60))) == 2
            _assert_loopback_nodes()  # the first removed node may still be listed: Ray notices in its time
            # It dies between two map calls; once Ray's node table says so, the next map retires its actor
            # from that table before sending it anything, and runs everything on the head.
            cluster.remove_node(node2, allow_graceful=False)
            deadline = time.monotonic() + 90
            while node2.node_id in {n["NodeID"] for n in ray.nodes() if n["Alive"]}:
                assert time.monotonic() < deadline, "Ray never marked the removed node dead"
                time.sleep(0.5)
            t1 = time.monotonic()
            assert [r["score"] for r in pool.map(ITEMS)] == EXPECTED
            elapsed2 = time.monotonic() - t1
            assert node2.node_id in pool.lost_nodes
    print(f"map with a node lost after 2 items: {elapsed:.1f} s (node removed {killed_at[0] - t0:.1f} s in); "
          f"re-ran {rerun_mid_map} item(s); map after a node left the table: {elapsed2:.1f} s")
    assert elapsed < 90 and elapsed2 < 60
    messages = [r.getMessage() for r in caplog.records]
    assert any("re-ran" in m for m in messages), messages
    assert any("which left the cluster" in m for m in messages), messages


@pytest.mark.timeout(240)
def test_all_capacity_lost_stops_with_clear_error(loopback_cluster, caplog):
    """Head with 0 CPUs + a worker node with 2 CPUs holding both actors; the node is killed mid-map. Nothing can
    be placed any more: map raises a one-line ScalenasError within worker_timeout_s of noticing, no hang."""
    cluster, node = loopback_cluster(head_cpus=0, worker_cpus=2)
    killed_at = []

    def progress(done: int, total: int) -> None:
        if done == 2 and not killed_at:
            killed_at.append(time.monotonic())
            cluster.remove_node(node, allow_graceful=False)

    with caplog.at_level(logging.WARNING, logger="scalenas.search.raypool"):
        with EvaluatorPool(SleepyFactory(0.3), workers=2, ray_address=cluster.address, progress=progress,
                           worker_timeout_s=5) as pool:
            _assert_loopback_nodes(2)
            t0 = time.monotonic()
            with pytest.raises(ScalenasError, match=r"no Ray worker could be placed .* of 12 items left") as err:
                pool.map(ITEMS)
            elapsed = time.monotonic() - t0
            assert killed_at
            _assert_loopback_nodes()  # the GCS may not have marked the node dead yet: the pool did not wait
            assert "\n" not in str(err.value)
            # Still bounded on the next call, not a hang.
            t1 = time.monotonic()
            with pytest.raises(ScalenasError, match="no Ray worker could be placed"):
                pool.map(ITEMS[:1])
            assert time.monotonic() - t1 < 30
    print(f"all capacity lost: ScalenasError after {elapsed:.1f} s (node removed {killed_at[0] - t0:.1f} s in): "
          f"{err.value}")
    assert elapsed < 90
