"""EvaluatorPool on real Ray (local, loopback only) with a small real torch evaluator; no mocks."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scalenas.errors import ScalenasError
from scalenas.search.raylocal import (connect_ray, default_workers, is_loopback, non_loopback_listeners,
                                      start_local_ray)
from scalenas.search.raypool import EvaluatorPool

pytestmark = [pytest.mark.ray]

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
ITEMS = [json.dumps({"arch": i, "ops": [i % 3, (i * 7) % 5]}, sort_keys=True, separators=(",", ":"))
         for i in range(12)]


class TorchEvaluator:
    """Builds a small MLP seeded by a hash of the item and returns its mean output on seeded inputs.

    ``die_on``: the first process to see that item claims a marker file in ``marker_dir`` and exits hard
    (a worker crash, not a Python exception), so it dies exactly once over the whole test.
    ``always_die_on``: exits hard every time. ``raise_on``: raises ValueError (an evaluator bug).
    """

    def __init__(self, marker_dir: str | None = None, die_on: str | None = None,
                 always_die_on: str | None = None, raise_on: str | None = None, fail_init: bool = False) -> None:
        if fail_init:
            raise RuntimeError("supernet checkpoint missing")
        self.marker_dir, self.die_on, self.always_die_on, self.raise_on = marker_dir, die_on, always_die_on, raise_on
        self.threads = None

    def set_threads(self, n: int) -> None:
        self.threads = n

    def evaluate(self, item: str) -> dict:
        if item == self.always_die_on:
            os._exit(1)
        if item == self.die_on:
            try:  # O_EXCL: only one process ever wins the right to die
                os.close(os.open(os.path.join(self.marker_dir, "died"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                os._exit(1)
            except FileExistsError:
                pass
        if item == self.raise_on:
            raise ValueError(f"bad item {item}")
        seed = int(hashlib.sha256(item.encode()).hexdigest()[:15], 16)
        g = torch.Generator().manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            score = float(model(torch.randn(256, 32, generator=g)).mean())
        return {"score": score, "pid": os.getpid(), "torch_threads": torch.get_num_threads(),
                "set_threads": self.threads}


def scores(results: list[dict]) -> list[float]:
    return [r["score"] for r in results]


@pytest.fixture(scope="module", autouse=True)
def _ray_cleanup():
    """Whatever a test left running, no Ray survives this module."""
    yield
    ray.shutdown()


@pytest.fixture
def local_ray():
    start_local_ray(num_cpus=2, object_store_mb=100)  # no-op when already up
    yield


@pytest.fixture(scope="module")
def reference() -> list[float]:
    with EvaluatorPool(TorchEvaluator, workers=0) as pool:
        return scores(pool.map(ITEMS))


def test_inprocess_imports_no_ray():
    # A fresh interpreter: workers=0 must work without importing Ray at all.
    code = (
        "import sys\n"
        "from scalenas.search.raypool import EvaluatorPool\n"
        "class E:\n"
        "    def evaluate(self, item): return {'n': len(item)}\n"
        "with EvaluatorPool(E, workers=0) as p: r = p.map(['ab', 'abc', 'ab'])\n"
        "assert r == [{'n': 2}, {'n': 3}, {'n': 2}] and p.evaluations == 2, (r, p.evaluations)\n"
        "assert 'ray' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(REPO)})


def test_inprocess_threads_restored_and_duplicates():
    before = torch.get_num_threads()
    seen = []
    with EvaluatorPool(TorchEvaluator, workers=0, threads_per_worker=1,
                       progress=lambda d, t: seen.append((d, t))) as pool:
        res = pool.map([ITEMS[0], ITEMS[1], ITEMS[0]])
        assert pool.evaluations == 2
    assert res[0]["score"] == res[2]["score"] and res[0] is not res[2]
    assert res[0]["torch_threads"] == 1 and res[0]["set_threads"] == 1
    assert torch.get_num_threads() == before
    assert seen == [(1, 2), (2, 2)]


def test_results_identical_for_0_1_2_workers(local_ray, reference):
    for workers in (1, 2):
        with EvaluatorPool(TorchEvaluator, workers=workers, threads_per_worker=1) as pool:
            res = pool.map(ITEMS)
            pids = set(pool.actor_pids())
            assert pool.evaluations == len(ITEMS) and pool.replaced_actors == 0
        assert scores(res) == reference  # bit-identical, same order
        assert {r["pid"] for r in res} == pids and len(pids) == workers  # dynamic scheduling used every actor
        assert os.getpid() not in pids
        assert all(r["torch_threads"] == 1 and r["set_threads"] == 1 for r in res)


def test_actor_crash_mid_map_is_replaced(local_ray, reference, tmp_path):
    factory = functools.partial(TorchEvaluator, marker_dir=str(tmp_path), die_on=ITEMS[5])
    seen = []
    with EvaluatorPool(factory, workers=2, progress=lambda d, t: seen.append(d)) as pool:
        first_pids = set(pool.actor_pids())
        res = pool.map(ITEMS)
        assert pool.replaced_actors == 1
        assert pool.evaluations == len(ITEMS)  # each item counted once, the crashed attempt not at all
        assert len(set(pool.actor_pids()) - first_pids) == 1  # one fresh actor
        res2 = pool.map(ITEMS[:3])  # the pool keeps working after a replacement
        assert pool.evaluations == len(ITEMS) + 3
    assert (tmp_path / "died").exists()
    assert scores(res) == reference
    assert scores(res2) == reference[:3]
    assert seen[:len(ITEMS)] == list(range(1, len(ITEMS) + 1))


def test_gives_up_after_max_retries(local_ray):
    factory = functools.partial(TorchEvaluator, always_die_on=ITEMS[2])
    with EvaluatorPool(factory, workers=1, max_retries=1) as pool:
        with pytest.raises(ScalenasError, match=r"item 2 failed 2 times \(max_retries=1\)"):
            pool.map(ITEMS[:4])
        assert pool.replaced_actors == 2


def test_evaluator_exception_is_not_retried(local_ray):
    factory = functools.partial(TorchEvaluator, raise_on=ITEMS[1])
    with EvaluatorPool(factory, workers=1) as pool:
        with pytest.raises(ValueError, match="bad item"):
            pool.map(ITEMS[:3])
        assert pool.replaced_actors == 0


def test_factory_failure_in_worker_is_not_retried(local_ray):
    factory = functools.partial(TorchEvaluator, fail_init=True)
    with EvaluatorPool(factory, workers=1) as pool:
        with pytest.raises(ScalenasError, match="could not build the evaluator.*supernet checkpoint missing"):
            pool.map(ITEMS[:2])
        assert pool.replaced_actors == 0


def test_capacity_is_checked(local_ray):
    with pytest.raises(ScalenasError, match="need 3 CPUs"):
        EvaluatorPool(TorchEvaluator, workers=3, threads_per_worker=1)


def test_ray_stays_on_loopback(local_ray):
    with EvaluatorPool(TorchEvaluator, workers=1) as pool:
        pool.map(ITEMS[:1])  # a live actor with its own gRPC server
        assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        assert non_loopback_listeners() == []
        if shutil.which("ss"):
            # Independent check with ss: every socket of a Ray process listens on loopback.
            # Only the processes of this Ray (descendants of this process), not another user's Ray.
            import psutil  # vendored by Ray

            mine = {p.pid for p in psutil.Process().children(recursive=True)}
            out = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True, check=True).stdout
            ray_lines = [ln for ln in out.splitlines()
                         if any(f"pid={pid}," in ln for pid in mine)
                         and any(k in ln for k in ("raylet", "gcs_server", "ray::"))]
            assert ray_lines
            for ln in ray_lines:
                host = ln.split()[3].rsplit(":", 1)[0].strip("[]")
                assert is_loopback(host), ln


def test_unreachable_address_fails_fast():
    t0 = time.monotonic()
    with pytest.raises(ScalenasError, match=r"cannot reach Ray cluster at 127\.0\.0\.1:1"):
        EvaluatorPool(TorchEvaluator, workers=1, ray_address="127.0.0.1:1")
    assert time.monotonic() - t0 < 10


def test_join_existing_cluster_without_owning_it(reference, monkeypatch):
    """A separate Ray head (ray.cluster_utils.Cluster, on loopback) joined by address; the pool must not
    shut down a cluster it did not start."""
    from ray.cluster_utils import Cluster
    import ray._private.ray_constants as ray_constants

    ray.shutdown()
    # Same loopback recipe as start_local_ray, for a head that this test starts itself.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), str(REPO)]))
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "object_store_memory": 100 * 2**20, "node_ip_address": "127.0.0.1",
        "include_dashboard": False})
    try:
        assert cluster.address.startswith("127.0.0.1:")
        with EvaluatorPool(TorchEvaluator, workers=1, ray_address=cluster.address) as pool:
            assert scores(pool.map(ITEMS[:4])) == reference[:4]
            assert non_loopback_listeners() == []
        assert ray.is_initialized()  # still connected: the pool did not own this Ray
        with socket.create_server(("127.0.0.1", 0)) as other:  # reachable, but not the Ray we are on
            with pytest.raises(ScalenasError, match="already connected"):
                connect_ray(f"127.0.0.1:{other.getsockname()[1]}")
        connect_ray(cluster.address)  # the same cluster: a no-op
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_bad_arguments():
    with pytest.raises(ScalenasError):
        EvaluatorPool(TorchEvaluator, workers=-1)
    with pytest.raises(ScalenasError):
        EvaluatorPool(TorchEvaluator, workers=1, threads_per_worker=0)
    with pytest.raises(ScalenasError, match="host:port"):
        EvaluatorPool(TorchEvaluator, workers=1, ray_address="nonsense")
    for bad in (0, -1, float("nan"), float("inf"), "soon"):
        with pytest.raises(ScalenasError, match="worker_timeout_s"):
            EvaluatorPool(TorchEvaluator, workers=1, worker_timeout_s=bad)
    assert default_workers() >= 1


def test_pool_owns_and_shuts_down_its_ray(reference):
    ray.shutdown()  # this test needs no Ray running beforehand
    with EvaluatorPool(TorchEvaluator, workers=1, object_store_mb=100) as pool:
        assert ray.is_initialized()
        assert scores(pool.map(ITEMS[:2])) == reference[:2]
    assert not ray.is_initialized()
