"""What a search evaluated and what it scored: :class:`SearchResults`.

A strategy (:mod:`scalenas.search.strategy`) feeds it: every subnet result it is told (:meth:`SearchResults.record`),
every evaluated candidate (:attr:`SearchResults.archive`), one log row per generation, and the family it ranks best
(:meth:`SearchResults.pick`). The results answer for what was measured (scores, the four measures, their noise,
the tie width), for what a family is worth (fitness and its noise under the search's
:class:`~scalenas.search.objectives.FamilyObjective`) and for the report rows (:meth:`~SearchResults.stage_row`,
:meth:`~SearchResults.pareto_rows`, :meth:`~SearchResults.best`). The report layer reads a ``SearchResults``,
never the strategy that fed it, and this module never imports a strategy.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from scalenas.errors import ScalenasError
from scalenas.search.candidate import Candidate, built_key
from scalenas.search.markov import State
from scalenas.search.objectives import FamilyObjective
from scalenas.spaces.arch import Base, Subnet, base_to_json
from scalenas.spaces.flops import subnet_flops_params
from scalenas.spaces.space import SearchSpace

METRICS = ("top1", "loss")  # the per-member score: holdout top-1, or holdout log-loss (score = -loss)
MEASURES = ("top1", "loss", "top1_se", "loss_se")  # what an evaluation may report per subnet

Member = tuple[Base, int, State]  # (base, stage, state): one member of a family


class SearchResults:
    """The evaluated subnets and candidates of one search, with their scores, noise and report rows.

    ``metric`` is the per-member score (``top1``, or ``loss`` scored as -loss so that higher is better);
    ``tie_tolerance`` the fitness difference below which feasible candidates tie (None: the measured noise, see
    :meth:`tie_width`); ``strategy`` names the strategy that feeds these results (for the reports).
    """

    def __init__(self, objective: FamilyObjective, metric: str = "top1", tie_tolerance: float | None = None,
                 strategy: str = "") -> None:
        self.objective = objective
        self.metric = metric
        self.tie_tolerance = tie_tolerance
        self.strategy = strategy
        self.cache: dict[str, float] = {}  # built key -> score: top-1 or -loss, higher is better (NaN: failed)
        self.metrics: dict[str, dict[str, float]] = {}  # built key -> the MEASURES an evaluation reported
        self.archive: list[tuple[int, Candidate]] = []  # (generation, candidate) of every evaluated candidate
        self.history: list[dict[str, Any]] = []  # one row per finished generation (search_log.csv)
        self.transitions: dict[str, Any] | None = None  # what the strategy learned, if a Markov chain (chain.json)
        self._picked: list[Member] | None = None  # the family the strategy ranks best
        self._separate_bases = False

    @property
    def space(self) -> SearchSpace:
        return self.objective.space

    @property
    def targets(self) -> list[int]:
        return self.objective.targets

    @property
    def tolerance(self) -> float:
        return self.objective.tolerance

    @property
    def evaluations(self) -> int:
        """Unique subnet evaluations so far."""
        return len(self.cache)

    # ------------------------------------------------------------------ recording
    def record(self, key: str, subnet: Subnet, value: float | Mapping[str, Any] | None) -> None:
        """Store the result of ``subnet`` (built key ``key``): the value of the metric, or a mapping with it and
        optionally the other :data:`MEASURES`; None or NaN: the evaluation failed."""
        measured: dict[str, float] = {}
        if isinstance(value, Mapping):
            if self.metric not in value:
                raise ScalenasError(f"result for {subnet.short()} has no {self.metric!r} (the search's metric); it "
                                    f"has {', '.join(map(str, value)) or 'nothing'}")
            for name in MEASURES:
                x = value.get(name)
                if x is not None and math.isfinite(float(x)):
                    measured[name] = float(x)
            raw = measured.get(self.metric)
        else:
            raw = None if value is None else float(value)
        self.cache[key] = math.nan if raw is None or not math.isfinite(raw) else \
            (raw if self.metric == "top1" else -raw)
        if measured:
            self.metrics[key] = measured

    def pick(self, members: list[Member] | None, separate_bases: bool = False) -> None:
        """Name the best family as (base, stage, state) per stage 0..S (None: none evaluated yet);
        ``separate_bases``: its members come from separate searches (``best()`` then lists a base per stage)."""
        self._picked, self._separate_bases = members, separate_bases

    def log_generation(self, generation: int, evaluated: list[Candidate], gave_up: int,
                       evaluations_per_s: float | None) -> None:
        """Append the row of a finished generation (``evaluated``: its candidates) to :attr:`history`."""
        fits = np.array([self.fitness(c) for c in evaluated]) if evaluated else np.array([math.nan])
        noises = np.array([self.fitness_noise(c) for c in evaluated]) if evaluated else np.array([math.nan])
        best = self.best()
        self.history.append({
            "generation": generation,
            "best_fitness": best.get("fitness"),
            "fitness_noise": best.get("fitness_noise"),
            "mean_fitness": float(np.nanmean(fits)) if np.isfinite(fits).any() else None,
            "mean_fitness_noise": float(np.mean(noises[np.isfinite(noises)])) if np.isfinite(noises).any() else None,
            "tie_width": self.tie_width(),
            "feasible_share": float(np.mean([self.feasible(c) for c in evaluated])) if evaluated else 0.0,
            "evaluations": len(self.cache),
            "evaluations_per_s": evaluations_per_s,
            "gave_up": gave_up,
        })

    # ------------------------------------------------------------------ one subnet
    def key(self, base: Base, stage: int, state: State) -> str:
        return built_key(self.space, self.objective.subnet(base, stage, state))

    def score(self, base: Base, stage: int, state: State) -> float | None:
        """The cached score of one subnet (higher is better: top-1, or -loss with metric ``loss``), None if not
        evaluated, NaN if its evaluation failed."""
        return self.cache.get(self.key(base, stage, state))

    def measures(self, base: Base, stage: int, state: State) -> dict[str, float | None]:
        """``top1``, ``loss``, ``top1_se``, ``loss_se`` of one subnet (None: not evaluated, failed or not
        reported; an evaluator that reports plain numbers gives only the search's metric)."""
        key = self.key(base, stage, state)
        out: dict[str, float | None] = dict.fromkeys(MEASURES)
        out.update(self.metrics.get(key, {}))
        value = self.cache.get(key)
        if out[self.metric] is None and value is not None and math.isfinite(value):
            out[self.metric] = value if self.metric == "top1" else -value
        return out

    def top1(self, base: Base, stage: int, state: State) -> float | None:
        """The top-1 of one subnet, None if not evaluated (or not reported), NaN if its evaluation failed."""
        if self.metric == "top1":
            return self.score(base, stage, state)
        return self.metrics.get(self.key(base, stage, state), {}).get("top1")

    def noise(self, base: Base, stage: int, state: State) -> float:
        """The standard error of one subnet's score (the evaluator's bootstrap SE of the metric), NaN if unknown."""
        se = self.metrics.get(self.key(base, stage, state), {}).get(f"{self.metric}_se")
        return math.nan if se is None else se

    # ------------------------------------------------------------------ one candidate
    def fitness(self, c: Candidate) -> float:
        """The objective's weighted mean score over the candidate's stages (NaN: a stage failed or is missing)."""
        return self.objective.fitness({s: self.score(c.base, s, c.states[s]) for s in c.stages})  # type: ignore

    def fitness_noise(self, c: Candidate) -> float:
        """The noise of :meth:`fitness` (:meth:`FamilyObjective.fitness_noise`; NaN when a member's is unknown)."""
        return self.objective.fitness_noise({s: self.noise(c.base, s, c.states[s]) for s in c.stages})  # type: ignore

    def feasible(self, c: Candidate) -> bool:
        return self.objective.violation(c.members(self.objective)) == 0.0

    def tie_width(self) -> float:
        """Fitness differences below this are ties: ``tie_tolerance`` if set, else the measured noise, the median
        standard error of the metric over the subnets evaluated so far (0 while none reported one)."""
        if self.tie_tolerance is not None:
            return float(self.tie_tolerance)
        name = f"{self.metric}_se"
        errors = [m[name] for k, m in self.metrics.items()
                  if name in m and math.isfinite(self.cache.get(k, math.nan))]
        return float(np.median(errors)) if errors else 0.0

    # ------------------------------------------------------------------ report rows
    def stage_row(self, base: Base, stage: int, state: State) -> dict[str, Any]:
        """One member: target and FLOPs, params, (with latency targets: target and predicted latency in ms),
        (r, d, w), both metrics and their noise, feasibility, arch."""
        sub = self.objective.subnet(base, stage, state)
        flops, params = subnet_flops_params(self.space, sub)
        m = self.measures(base, stage, state)
        top1 = self.top1(base, stage, state)
        latency = self.objective.latency
        lat = {} if latency is None else {"target_latency_ms": float(latency.targets[stage]),
                                          "latency_ms": float(latency.predict(sub))}
        return {"stage": stage, "target_flops": self.targets[stage] if self.targets else None, "flops": flops,
                "params": params, **lat,
                "resolution": sub.resolution, "depth_mult": sub.depth, "width_mult": sub.width,
                "top1": None if top1 is None or math.isnan(top1) else top1, "top1_se": m["top1_se"],
                "loss": m["loss"], "loss_se": m["loss_se"],
                "feasible": self.objective.member_violation(stage, sub) == 0.0, "arch": sub.to_json()}

    def pareto_rows(self) -> list[dict[str, Any]]:
        """One row per evaluated (candidate, stage), in evaluation order (``is_pareto`` added by reports)."""
        rows = []
        for cand_id, (gen, c) in enumerate(self.archive):
            for s in c.stages:
                rows.append({"generation": gen, "candidate": cand_id,
                             **self.stage_row(c.base, s, c.states[s])})  # type: ignore[arg-type]
        return rows

    def best(self) -> dict[str, Any]:
        """The picked family (:meth:`pick`): strategy, base, chain (indices and values), family rows per stage,
        fitness and its noise, the metric, feasibility (and ``bases``, one per stage, for separate searches).

        Empty family (and None fitness) if no complete family has been evaluated yet.
        """
        members = self._picked
        if members is None:
            return {"strategy": self.strategy, "base": None, "chain": [], "family": [], "fitness": None,
                    "fitness_noise": None, "metric": self.metric, "feasible": False}
        family = [self.stage_row(*m) for m in members]
        fitness = self.objective.fitness({s: self.score(b, s, x) for b, s, x in members})
        noise = self.objective.fitness_noise({s: self.noise(b, s, x) for b, s, x in members})
        chain = []
        for _, s, x in members[1:]:
            sc = self.space.scaling[s]
            chain.append({"stage": s, "index": list(x), "depth": sc.depth[x[0]], "width": sc.width[x[1]],
                          "resolution": sc.resolution[x[2]]})
        out = {"strategy": self.strategy, "base": base_to_json(members[0][0]), "chain": chain, "family": family,
               "fitness": fitness if math.isfinite(fitness) else None,
               "fitness_noise": noise if math.isfinite(noise) else None, "metric": self.metric,
               "feasible": all(r["feasible"] for r in family)}
        if self._separate_bases:
            out["bases"] = [base_to_json(b) for b, _, _ in members]
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``cache``, ``metrics``, ``archive`` and ``history``, JSON-able (NaN stored as null)."""
        return {"cache": {k: (None if math.isnan(v) else v) for k, v in self.cache.items()},
                "metrics": self.metrics,
                "archive": [[g, c.to_dict()] for g, c in self.archive],
                "history": self.history}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` wrote (the keys may sit in a larger search state)."""
        self.cache = {k: (math.nan if v is None else float(v)) for k, v in state["cache"].items()}
        self.metrics = {k: {name: float(v) for name, v in m.items() if name in MEASURES}
                        for k, m in (state.get("metrics") or {}).items()}
        self.archive = [(int(g), Candidate.from_dict(c)) for g, c in state["archive"]]
        self.history = [dict(r) for r in state["history"]]

