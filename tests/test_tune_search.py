"""The strategies inside Ray Tune: one trial per subnet, results fed back, state saved and restored."""
from __future__ import annotations

import json
import os
import sys

import pytest

from scalenas.search.strategies import make_strategy
from scalenas.spaces.space import load_space
from scalenas.spaces.targets import stage_targets
from scalenas.search.tune import MarkovSearcher

pytestmark = [pytest.mark.ray]

SPACE = load_space("digits-tiny")
TARGETS = stage_targets(SPACE, "4.5M")
OPTIONS = dict(population=2, generations=3, elites=1, seed=0)


def flops_score(flops: int) -> float:
    """A deterministic stand-in for top-1, computed from the subnet's FLOPs."""
    return 1.0 - 1.0 / (1.0 + flops / 1e6)


def trainable(config: dict) -> None:
    from ray import tune

    tune.report({"top1": flops_score(config["flops"]), "stage": config["stage"]})


@pytest.fixture()
def local_ray():
    for key, value in (("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"), ("RAY_USAGE_STATS_ENABLED", "0"),
                       ("RAY_AUTH_MODE", "disabled")):
        os.environ[key] = value
    import ray
    from ray import cloudpickle

    # Ray workers cannot import this test module: ship its functions (the trainable) by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=2, include_dashboard=False,
             object_store_memory=100 * 2**20, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_searcher_inside_tuner(local_ray, tmp_path):
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    strategy = make_strategy("markov", SPACE, TARGETS, OPTIONS)
    searcher = MarkovSearcher(strategy, metric="top1", mode="max")
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=2), num_samples=12,
                                    metric="top1", mode="max", reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="markov", verbose=0),
    )
    results = tuner.fit()
    assert not results.errors and len(results) == 12
    # every trial's result reached the strategy's cache, and no subnet ran twice
    archs = [r.config["arch"] for r in results]
    assert len(set(archs)) == 12 and strategy.evaluations == 12
    assert strategy.generation >= 1 and strategy.results.history[0]["evaluations"] == 8  # 2 families x 4 stages
    for r in results:
        assert r.metrics["top1"] == pytest.approx(flops_score(r.config["flops"]))
    # the searcher's saved state restores the same search
    path = tmp_path / "searcher.json"
    searcher.save(str(path))
    again = MarkovSearcher(make_strategy("markov", SPACE, TARGETS, OPTIONS))
    again.restore(str(path))
    assert json.dumps(again.get_state(), sort_keys=True) == json.dumps(searcher.get_state(), sort_keys=True)


def test_searcher_without_ray_tune_loop():
    # The same protocol driven by hand: suggest waits (None) while a generation is running, FINISHED at the end.
    strategy = make_strategy("markov", SPACE, TARGETS, {**OPTIONS, "generations": 2})
    searcher = MarkovSearcher(strategy)
    n = 0
    for _ in range(200):
        running = []
        for _ in range(100):
            cfg = searcher.suggest(f"t{n}")
            if cfg is None or cfg == "FINISHED":
                break
            running.append((f"t{n}", cfg))
            n += 1
        if cfg == "FINISHED":
            break
        assert running, "suggest returned None with nothing running"
        for i, (tid, c) in enumerate(running):
            searcher.on_trial_complete(tid, None if i == 0 else {"top1": flops_score(c["flops"])}, error=i == 0)
    assert cfg == "FINISHED" and strategy.done and n == strategy.evaluations
