"""A pool of evaluators that keep their state loaded, in-process or in Ray actors.

Evaluating one candidate architecture is cheap once a supernet and its data are loaded, and loading them is
expensive. :class:`EvaluatorPool` therefore builds each evaluator once (in the calling process, or once per
Ray actor) and then streams candidates through them. What one ``map`` over the actors knows, and its rules for
what goes wrong (a lost node, an unplaced worker, a dead actor, a failed item), is a :class:`Dispatch`, which
needs no Ray.

Evaluator contract: ``make_evaluator`` is a picklable zero-argument callable returning an object with
``evaluate(item: str) -> dict`` (``item`` is a canonical JSON string, the result a JSON-able dict), which is
deterministic given the item, and optionally ``set_threads(n: int)``.

Ray is imported lazily: ``workers=0`` never touches Ray, so the in-process path works without it. Starting or
joining Ray is :mod:`scalenas.search.raylocal` (a private local Ray keeps every socket on 127.0.0.1).
"""
from __future__ import annotations

import copy
import logging
import os
import re
from typing import Any, Callable, Container, Protocol

from scalenas.errors import ScalenasError
from scalenas.search.raylocal import connect_ray, cuda_count, start_local_ray

__all__ = ["Dispatch", "Evaluator", "EvaluatorPool", "Worker"]

log = logging.getLogger(__name__)


class Evaluator(Protocol):
    """What ``make_evaluator()`` returns."""

    def evaluate(self, item: str) -> dict:  # pragma: no cover - protocol
        ...


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


class Worker:
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


class Dispatch:
    """One ``map`` over the pool's workers: which item runs where, what came back, and the rules for what goes
    wrong. Plain Python: the pool does the Ray calls and tells this object what happened, with the time.

    ``workers`` is the pool's list (``replace(slot)`` puts a fresh actor in place of ``workers[slot]``);
    ``items`` are handed out first to last, and known by their index. References (``ray.ObjectRef`` in the pool)
    are opaque keys here. ``lost_nodes`` (the pool's set) collects the nodes seen leaving with actors on them;
    ``load_deaths`` counts actors that died before their evaluator was built, across maps.
    """

    def __init__(self, items: list[str], workers: list[Worker], *, max_retries: int, worker_timeout_s: float,
                 replace: Callable[[int], None], lost_nodes: set[str] | None = None, load_deaths: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.items, self.total, self.workers = items, len(items), workers
        self.max_retries, self.worker_timeout_s = max_retries, worker_timeout_s
        self.replace, self.progress = replace, progress
        self.lost_nodes = lost_nodes if lost_nodes is not None else set()
        self.load_deaths = load_deaths
        self.results: list[Any] = [None] * self.total
        self.failures = [0] * self.total
        self.pending = list(range(self.total - 1, -1, -1))  # a stack, popped from the end: item 0 goes first
        self.in_flight: dict[Any, tuple[int, int, Worker]] = {}  # reference -> (slot, item, worker)
        self.busy: dict[int, Any] = {}  # slot -> the reference of the item it runs
        self.probes: dict[Any, tuple[str, int, Worker]] = {}  # reference -> ("where" | "load", slot, worker)
        self.done = 0
        self.rerun = 0  # items sent again because their worker went away
        self.lost_workers = 0
        self.no_worker_since: float | None = None
        self.next_node_check = 0.0  # check the node table before the first dispatch

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    # ------------------------------------------------------------------ the rules
    def requeue(self, slot: int) -> None:
        """Take back the item of ``slot`` (if any) without charging it: its worker is gone, not its fault."""
        ref = self.busy.pop(slot, None)
        if ref is not None:
            _, idx, _ = self.in_flight.pop(ref)
            self.pending.append(idx)
            self.rerun += 1

    def retire(self, slot: int, why: str) -> None:
        """Replace the worker of ``slot``; its item goes back on the stack."""
        self.requeue(slot)
        self.lost_workers += 1
        self.replace(slot)
        log.warning("Ray worker %d %s; replaced by a new actor, which gets items once it is placed", slot, why)

    def node_check_due(self, now: float) -> bool:
        """Whether to read the node table now (every ``_NODE_CHECK_S``, and as soon as a worker is placed)."""
        if now < self.next_node_check:
            return False
        self.next_node_check = now + _NODE_CHECK_S
        return True

    def nodes_alive(self, alive: Container[str]) -> None:
        """Lost node: a worker placed on a node that is not ``alive`` any more is retired at once, without
        waiting for its references to fail."""
        for slot, w in enumerate(self.workers):
            if w.node_id is not None and w.node_id not in alive:
                self.lost_nodes.add(w.node_id)
                self.retire(slot, f"was on Ray node {w.node_id[:12]}, which left the cluster")

    def check_placement(self, now: float, capacity: Callable[[], str]) -> None:
        """Unplaced worker: one that holds an item but is not placed within ``worker_timeout_s`` is retired (its
        item runs elsewhere). When no worker at all is placed for ``worker_timeout_s``, raise
        :class:`ScalenasError` (``capacity()`` says what the cluster has)."""
        for slot, w in enumerate(self.workers):
            if slot in self.busy and not w.placed and now - w.created >= self.worker_timeout_s:
                self.retire(slot, f"was not placed on any node within {self.worker_timeout_s:g} s")
        if any(w.placed for w in self.workers):
            self.no_worker_since = None
        elif self.no_worker_since is None:
            self.no_worker_since = now
        elif now - self.no_worker_since >= self.worker_timeout_s:
            raise ScalenasError(
                f"no Ray worker could be placed for {now - self.no_worker_since:.0f} s (worker_timeout_s="
                f"{self.worker_timeout_s:g}) with {self.total - self.done} of {self.total} items left; "
                f"{self.lost_workers} worker(s) lost in this batch"
                + (f", {len(self.lost_nodes)} node(s) gone" if self.lost_nodes else "")
                + f"; Ray lists {capacity()}; results of earlier batches are kept")

    def eligible(self, w: Worker, now: float) -> bool:
        """May ``w`` be given an item? Placed actors, and the pool's first actors while they are young (their
        placement was checked against the cluster's resources). A replacement waits until it is placed, so
        that items lost with a node run on the workers that remain."""
        return w.placed or (not w.replacement and now - w.created < self.worker_timeout_s)

    def assign(self, now: float, send: Callable[[Worker, str], Any]) -> None:
        """Give each idle eligible worker the next item: ``send(worker, item)`` starts it, returns its reference."""
        for slot, w in enumerate(self.workers):
            if not self.pending:
                break
            if slot not in self.busy and self.eligible(w, now):
                idx = self.pending.pop()
                ref = send(w, self.items[idx])
                self.in_flight[ref] = (slot, idx, w)
                self.busy[slot] = ref

    def waiting(self) -> list[Any]:
        """The references to wait on: items in flight, and each worker's placement or loading probe."""
        self.probes = {}
        for slot, w in enumerate(self.workers):
            if not w.placed:
                self.probes[w.where_ref] = ("where", slot, w)
            elif not w.loaded:
                self.probes[w.load_ref] = ("load", slot, w)
        return [*self.in_flight, *self.probes]

    def is_current(self, ref: Any) -> bool:
        """Whether ``ref`` still matters: an item in flight, or the probe of a worker not retired since."""
        if ref in self.probes:
            _, slot, w = self.probes[ref]
            return self.workers[slot] is w
        return ref in self.in_flight

    def is_probe(self, ref: Any) -> bool:
        return ref in self.probes

    def worker_of(self, ref: Any) -> Worker:
        return self.probes[ref][2] if ref in self.probes else self.in_flight[ref][2]

    def answered(self, ref: Any, value: Any) -> None:
        """``ref`` (a current one) came back with ``value``: a placement (pid, node id), a built evaluator, or a
        result."""
        if ref in self.probes:
            kind, _, w = self.probes[ref]
            if kind == "where":
                w.pid, w.node_id = value
                self.next_node_check = 0.0  # is its node still listed? Checked before it gets an item
            else:
                w.loaded = True
                self.load_deaths = 0
            return
        slot, idx, _ = self.in_flight.pop(ref)
        self.busy.pop(slot, None)
        self.results[idx] = value
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total)

    def died(self, ref: Any, exc: BaseException) -> None:
        """The worker behind ``ref`` (a current one) went away (``exc``: Ray's error).

        Dead actor, before it was ready: retired; more than ``max_retries`` + workers such deaths in a row
        (none built since) raise. Failed item, the actor died running it: a fresh actor, the item back on the
        stack, charged to the item; more than ``max_retries`` failures of one item raise.
        """
        if ref in self.probes:
            kind, slot, w = self.probes[ref]
            if kind == "load" or not w.placed:
                self.load_deaths += 1
                if self.load_deaths > self.max_retries + len(self.workers):
                    raise ScalenasError(f"Ray workers died {self.load_deaths} times in a row before their evaluator "
                                        f"was built; last error {_first_line(exc)}") from None
            self.retire(slot, f"died before it was ready ({_first_line(exc, 120)})")
            return
        slot, idx, w = self.in_flight.pop(ref)
        self.busy.pop(slot, None)
        # Nothing was recorded for the item, so nothing is counted twice.
        self.failures[idx] += 1
        if self.workers[slot] is w:
            self.replace(slot)
            self.lost_workers += 1
        if self.failures[idx] > self.max_retries:
            raise ScalenasError(f"evaluation of item {idx} failed {self.failures[idx]} times (max_retries="
                                f"{self.max_retries}); last error {_first_line(exc)}; item: {self.items[idx][:200]}"
                                ) from None
        log.warning("Ray worker died on item %d (attempt %d); replacing it: %s", idx, self.failures[idx],
                    _first_line(exc))
        self.pending.append(idx)
        self.rerun += 1


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
        self._workers: list[Worker] = []
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
                gpus_per_worker = 1.0 if cuda_count() else 0.0
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

    def _new_worker(self, replacement: bool) -> Worker:
        import time

        actor = self._actor_cls.remote()
        where_ref = actor.where.remote()  # answers once placed (the constructor is empty)
        load_ref = actor.load.remote(self.make_evaluator, self.threads_per_worker)
        return Worker(actor, where_ref, load_ref, time.monotonic(), replacement)

    def _replace_actor(self, slot: int) -> None:
        import ray

        try:
            ray.kill(self._workers[slot].actor, no_restart=True)  # may be half-alive, pending or on a lost node
        except Exception:  # already gone
            pass
        self._workers[slot] = self._new_worker(replacement=True)
        self.replaced_actors += 1

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
        d = Dispatch(unique, self._workers, max_retries=self.max_retries, worker_timeout_s=self.worker_timeout_s,
                     replace=self._replace_actor, lost_nodes=self.lost_nodes, load_deaths=self._load_deaths,
                     progress=self._result_in)
        try:
            while not d.finished:
                now = time.monotonic()
                if d.node_check_due(now):
                    alive = self._alive_nodes(ray)
                    if alive is not None:
                        d.nodes_alive(alive)
                d.check_placement(now, lambda: self._capacity_text(ray))
                d.assign(now, lambda w, item: w.actor.evaluate.remote(item))
                waiting = d.waiting()
                if not waiting:  # nothing placed, loading or running (all retired just now): re-check shortly
                    time.sleep(_POLL_S)
                    continue
                ready, _ = ray.wait(waiting, num_returns=1, timeout=_POLL_S)
                if ready and len(waiting) > 1:  # take everything that is ready now, not one per round
                    ready, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
                for ref in ready:
                    if not d.is_current(ref):  # its worker was retired earlier in this round
                        continue
                    try:
                        value = ray.get(ref, timeout=_GET_TIMEOUT_S)
                    except retryable as exc:
                        d.died(ref, exc)
                        continue
                    except Exception as exc:
                        if d.is_probe(ref):  # make_evaluator() raised: deterministic, retrying is pointless
                            raise ScalenasError(
                                f"could not build the evaluator in a Ray worker: {_last_line(exc)}") from exc
                        # The evaluator raised; if it was never built, say so instead of its knock-on error.
                        err = self._load_error(d.worker_of(ref), retryable)
                        if err is not None:
                            raise err from None
                        raise
                    d.answered(ref, value)
        finally:
            self._load_deaths = d.load_deaths
        self.rerun_items += d.rerun
        if d.rerun:
            log.warning("re-ran %d of %d item(s) after losing %d Ray worker(s)%s; all %d results are in",
                        d.rerun, d.total, d.lost_workers,
                        f" ({len(self.lost_nodes)} node(s) gone)" if self.lost_nodes else "", d.total)
        return d.results

    def _result_in(self, done: int, total: int) -> None:
        self.evaluations += 1
        if self.progress:
            self.progress(done, total)

    def _load_error(self, w: Worker, retryable: tuple[type[BaseException], ...]) -> ScalenasError | None:
        """The error of ``w``'s load(), if it failed with an exception of the evaluator factory."""
        import ray

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
