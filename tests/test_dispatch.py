"""The retry rules of one EvaluatorPool.map (lost node, unplaced worker, dead actor, failed item), without Ray.

:class:`Dispatch` is plain bookkeeping: these tests play the part of Ray (placing actors, answering or losing
references, the clock) and check what it decides. The same rules on real Ray are in test_raypool.py and
test_ray_cluster.py.
"""
from __future__ import annotations

import logging

import pytest

from scalenas.errors import ScalenasError
from scalenas.search.raypool import Dispatch, Worker

TIMEOUT = 10.0
ITEMS = [f"item{i}" for i in range(4)]


class Cluster:
    """The pool's side: workers, replacement and sending, with references as strings."""

    def __init__(self, workers: int) -> None:
        self.now = 0.0
        self.made = 0
        self.workers = [self._new(False) for _ in range(workers)]
        self.sent: list[tuple[str, str]] = []  # (actor, item)

    def _new(self, replacement: bool) -> Worker:
        k = self.made
        self.made += 1
        return Worker(f"actor{k}", f"where{k}", f"load{k}", self.now, replacement)

    def replace(self, slot: int) -> None:
        self.workers[slot] = self._new(True)

    def send(self, w: Worker, item: str) -> str:
        self.sent.append((w.actor, item))
        return f"ref{len(self.sent) - 1}"

    def dispatch(self, items=ITEMS, max_retries: int = 1, progress=None) -> Dispatch:
        return Dispatch(list(items), self.workers, max_retries=max_retries, worker_timeout_s=TIMEOUT,
                        replace=self.replace, progress=progress)


def place(d: Dispatch, slot: int, node: str, pid: int = 1) -> None:
    """Ray answers the placement and the load probes of the worker in ``slot``."""
    d.waiting()
    w = d.workers[slot]
    d.answered(w.where_ref, (pid, node))
    d.waiting()
    d.answered(w.load_ref, pid)


def test_items_go_out_first_to_last_and_results_come_back_in_order():
    c = Cluster(2)
    seen = []
    d = c.dispatch(progress=lambda done, total: seen.append((done, total)))
    d.assign(c.now, c.send)  # young first actors may take items before they are placed
    assert c.sent == [("actor0", "item0"), ("actor1", "item1")]
    assert set(d.waiting()) == {"ref0", "ref1", "where0", "where1"}
    d.answered("ref1", "r1")
    d.assign(c.now, c.send)
    assert c.sent[-1] == ("actor1", "item2")  # the idle worker gets the next item; the busy one nothing
    for ref, value in (("ref0", "r0"), ("ref2", "r2")):
        d.answered(ref, value)
    d.assign(c.now, c.send)
    d.answered("ref3", "r3")
    assert d.finished and d.results == ["r0", "r1", "r2", "r3"] and d.rerun == 0
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_a_lost_node_retires_its_workers_and_requeues_their_items(caplog):
    c = Cluster(2)
    d = c.dispatch()
    place(d, 0, "node-a")
    place(d, 1, "node-b")
    d.assign(c.now, c.send)
    assert d.node_check_due(c.now) and not d.node_check_due(c.now + 1)  # the node table: every few seconds
    with caplog.at_level(logging.WARNING, logger="scalenas.search.raypool"):
        d.nodes_alive({"node-b"})
    assert d.lost_nodes == {"node-a"} and d.lost_workers == 1 and d.rerun == 1
    assert d.workers[0].actor == "actor2" and d.workers[0].replacement  # a fresh actor in slot 0
    assert d.pending == [3, 2, 0] and not d.is_current("ref0")  # item 0 next again; its old reference stale
    assert any("which left the cluster" in r.getMessage() for r in caplog.records)
    d.assign(c.now, c.send)  # the replacement is not placed: it waits; item 0 waits for a placed worker
    assert c.sent == [("actor0", "item0"), ("actor1", "item1")]
    d.answered("ref1", "r1")
    d.assign(c.now, c.send)
    assert c.sent[-1] == ("actor1", "item0")  # re-run on the worker that remains
    # a placement answer makes the next node check due at once: is its node still listed?
    d.waiting()
    d.answered(d.workers[0].where_ref, (7, "node-c"))
    assert d.node_check_due(c.now + 0.1)


def test_an_unplaced_worker_loses_its_item_and_no_placed_worker_at_all_stops_the_map():
    c = Cluster(2)
    d = c.dispatch()
    place(d, 1, "node-b")
    d.assign(c.now, c.send)
    assert c.sent == [("actor0", "item0"), ("actor1", "item1")]
    d.check_placement(TIMEOUT - 1, lambda: "")  # not yet too late
    assert d.rerun == 0
    d.check_placement(TIMEOUT, lambda: "")
    assert d.rerun == 1 and d.pending == [3, 2, 0] and d.workers[0].replacement  # item 0 is next again
    # Every node gone: nothing placed for worker_timeout_s -> one clear error, not a hang.
    c2 = Cluster(1)
    d2 = c2.dispatch()
    d2.check_placement(0.0, lambda: "0 live node(s)")
    d2.check_placement(TIMEOUT - 0.5, lambda: "0 live node(s)")
    with pytest.raises(ScalenasError, match=r"no Ray worker could be placed for 10 s .* 4 of 4 items left; "
                                             r"0 worker\(s\) lost .* Ray lists 0 live node\(s\)"):
        d2.check_placement(TIMEOUT, lambda: "0 live node(s)")


def test_actors_that_die_before_they_are_ready_are_replaced_then_the_map_gives_up():
    c = Cluster(1)
    d = c.dispatch(max_retries=1)
    deaths = 0
    with pytest.raises(ScalenasError, match="died 3 times in a row before their evaluator was built"):
        for _ in range(5):
            d.waiting()
            d.died(d.workers[0].where_ref, RuntimeError("worker crashed"))
            deaths += 1
    assert deaths == 2 and d.load_deaths == 3  # max_retries (1) + workers (1) deaths are tolerated
    # a built evaluator resets the count
    c = Cluster(1)
    d = c.dispatch(max_retries=1)
    d.waiting()
    d.died("where0", RuntimeError("crash"))
    assert d.load_deaths == 1 and not d.is_current("where0")
    place(d, 0, "node-a")
    assert d.load_deaths == 0


def test_an_item_whose_actor_dies_is_charged_retried_on_a_fresh_actor_then_given_up():
    c = Cluster(1)
    d = c.dispatch(max_retries=1)
    place(d, 0, "node-a")
    d.assign(c.now, c.send)
    d.waiting()
    d.died("ref0", RuntimeError("OOM killed"))
    assert d.failures[0] == 1 and d.pending[-1] == 0 and d.rerun == 1 and d.workers[0].actor == "actor1"
    place(d, 0, "node-a", pid=2)
    d.assign(c.now, c.send)
    assert c.sent[-1] == ("actor1", "item0")  # the same item again, on the fresh actor
    d.waiting()
    with pytest.raises(ScalenasError, match=r"item 0 failed 2 times \(max_retries=1\); last error RuntimeError: "
                                            r"OOM killed again; item: item0"):
        d.died("ref1", RuntimeError("OOM killed\nagain"))
