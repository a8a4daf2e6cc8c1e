"""The scalenas search strategies as a Ray Tune searcher.

Each Tune trial evaluates ONE subnet: :meth:`MarkovSearcher.suggest` hands out the current generation's
subnets one at a time (``config["arch"]`` is the subnet JSON, ``config["stage"]`` its scaling stage), and
:meth:`MarkovSearcher.on_trial_complete` feeds ``result[metric]`` back to the strategy. When every subnet of a
generation is in, the strategy breeds the next one; until then ``suggest`` returns None (Tune asks again
later). The strategy's budget, deduplication and cache are the same as with :func:`scalenas.search.driver.run_search`.

``save``/``restore`` store the whole strategy state as JSON (plus the trials still running), so a restored Tune
experiment continues the same search instead of silently starting a new one.
"""
from __future__ import annotations

import json
from typing import Any

from ray.tune.search import Searcher

from scalenas.errors import ScalenasError
from scalenas.search.strategy import Strategy
from scalenas.spaces.flops import subnet_flops_params
from scalenas.io import atomic_write_text


class MarkovSearcher(Searcher):
    """A :class:`ray.tune.search.Searcher` driving a scalenas :class:`Strategy` (``markov`` or any other).

    ``metric`` is the result key holding the value of the strategy's metric (its ``metric`` option): top-1,
    maximised (``mode="max"``), or the loss, minimised (``mode="min"``); ``mode=None`` follows the strategy. A
    trial that errors or reports no metric counts as a failed evaluation (NaN: ranked last, never re-evaluated).
    """

    def __init__(self, strategy: Strategy, metric: str = "top1", mode: str | None = None) -> None:
        self._mode_needed = "min" if strategy.options.metric == "loss" else "max"
        if mode is None:
            mode = self._mode_needed
        if mode != self._mode_needed:
            raise ScalenasError(f"MarkovSearcher: the strategy's metric is {strategy.options.metric!r}, so mode "
                                f"must be {self._mode_needed!r}, got {mode!r}")
        super().__init__(metric=metric, mode=mode)
        self.strategy = strategy
        self._trials: dict[str, str] = {}  # trial id -> subnet JSON, for trials still running

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        if mode not in (None, self._mode_needed):
            return False
        if metric:
            self._metric = metric
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.strategy.done:
            return Searcher.FINISHED
        running = set(self._trials.values())
        space = self.strategy.space
        for sub in self.strategy.ask():
            text = sub.to_json()
            if text in running:
                continue
            self._trials[trial_id] = text
            return {"arch": text, "stage": space.stage_of(sub.depth, sub.width, sub.resolution),
                    "generation": self.strategy.generation, "flops": subnet_flops_params(space, sub)[0]}
        return None  # the rest of this generation is running; its results decide the next one

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        text = self._trials.pop(trial_id, None)
        if text is None:
            return  # not one of ours (or already reported)
        value = None
        if not error and result and self._metric in result and result[self._metric] is not None:
            value = float(result[self._metric])
        self.strategy.tell({text: value})

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        return {"strategy": self.strategy.state_dict(), "trials": dict(self._trials), "metric": self._metric}

    def set_state(self, state: dict[str, Any]) -> None:
        self.strategy.load_state_dict(state["strategy"])
        self._trials = dict(state["trials"])
        self._metric = state["metric"]

    def save(self, checkpoint_path: str) -> None:
        atomic_write_text(checkpoint_path, json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as fh:
            self.set_state(json.load(fh))
