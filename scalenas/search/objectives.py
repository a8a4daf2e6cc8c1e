"""The family objective of a search (docs/method.md): per-stage FLOPs targets, a tolerance and stage weights.

A family is a base network g plus one scaling state x_s = (i, j, k) per stage s = 0..S: stage 0 is g itself at
(d=1, w=1, r=base), stage s >= 1 is g at (D_s[i], W_s[j], R_s[k]). :class:`FamilyObjective` says how good such a
family (or a part of it) is, without knowing how a strategy represents or breeds it:

- feasibility: a stage is feasible when its FLOPs lie within the relative tolerance of the stage's target; the
  violation of a set of stages is the sum of their relative distances outside their bands (0: feasible);
- fitness: the weighted mean of the members' scores over the stages (weights renormalised over the stages
  given); a score is higher-is-better: the holdout top-1, or minus the holdout log-loss (the search's ``metric``);
- fitness noise: the same weighted mean of the members' standard errors, an upper bound of the standard error of
  the fitness whatever the correlation between members (they are scored on the same holdout images);
- selection is feasibility-first (:meth:`FamilyObjective.selection_key`): feasible beats infeasible, feasible
  ones compare by fitness, infeasible ones by their total violation. Among feasible ones a strategy may treat
  fitness differences below the noise as ties and prefer the family nearest its FLOPs targets, or the cheaper one
  (:meth:`FamilyObjective.cost`).

Latency (docs/method.md, "Latency") is a second constraint of the same kind: with :class:`LatencyTargets` a member
must also lie within the tolerance of its stage's latency target, its latency predicted from a measured table;
without FLOPs targets latency is the only constraint. Violations, the cheap stage bound and the tie-break cost
sum over the constraints in force.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from scalenas.search.markov import State
from scalenas.spaces.arch import Base, Subnet
from scalenas.spaces.flops import subnet_flops_params
from scalenas.spaces.space import SearchSpace

TABLE_CACHE_SIZE = 20_000  # (base, stage) violation tables kept before the derived cache is dropped


@dataclass(frozen=True)
class LatencyTargets:
    """Latency targets of stages 0..S in ms, and the predictor of a member's latency in ms (e.g.
    :meth:`scalenas.latency.table.LatencyTable.predict`)."""

    targets: Sequence[float]
    predict: Callable[[Subnet], float]


class FamilyObjective:
    """FLOPs targets T_0..T_S (and/or :class:`LatencyTargets`) with a relative ``tolerance``, and fitness weights
    of stages 0..S.

    ``targets`` and ``tolerance`` are expected checked (:func:`scalenas.spaces.targets.check_targets`) and
    ``stage_weights`` resolved (:meth:`scalenas.search.strategy.SearchOptions.resolved`). ``targets`` may be empty
    when ``latency`` is given (latency is then the only constraint).
    """

    def __init__(self, space: SearchSpace, targets: Sequence[int] | None, tolerance: float,
                 stage_weights: Sequence[float], latency: LatencyTargets | None = None) -> None:
        self.space = space
        self.targets = [int(t) for t in targets or ()]
        self.latency = latency
        self.n = len(self.targets or (latency.targets if latency else ())) - 1  # S: scaling stages
        self.tolerance = tolerance
        self.stage_weights = [float(w) for w in stage_weights]
        self._tables: dict[tuple[Base, int], np.ndarray] = {}  # violations per (base, stage), derived

    def measures(self, stage: int, sub: Subnet) -> list[tuple[float, float]]:
        """(value, target) of each constraint in force for a member of ``stage``: FLOPs, predicted latency (ms)."""
        out = []
        if self.targets:
            out.append((float(subnet_flops_params(self.space, sub)[0]), float(self.targets[stage])))
        if self.latency is not None:
            out.append((float(self.latency.predict(sub)), float(self.latency.targets[stage])))
        return out

    def member_violation(self, stage: int, sub: Subnet) -> float:
        """Relative distance of a member outside its stage's bands, summed over the constraints (0: inside)."""
        return sum(max(0.0, abs(v / t - 1.0) - self.tolerance) for v, t in self.measures(stage, sub))

    def target_distance(self, stage: int, sub: Subnet) -> float:
        """Summed |log(value / target)| of a member over the constraints (0: on target)."""
        return sum(abs(math.log(v / t)) for v, t in self.measures(stage, sub))

    # ------------------------------------------------------------------ members
    def subnet(self, base: Base, stage: int, state: State) -> Subnet:
        """Stage ``stage``'s member of the family of ``base`` in scaling state ``state``."""
        sc = self.space.scaling[stage]
        return Subnet(self.space.name, base, sc.depth[state[0]], sc.width[state[1]], sc.resolution[state[2]])

    def all_states(self, stage: int) -> list[State]:
        sc = self.space.scaling[stage]
        return [tuple(idx) for idx in np.ndindex(len(sc.depth), len(sc.width), len(sc.resolution))]  # type: ignore

    # ------------------------------------------------------------------ FLOPs feasibility
    def stage_violation(self, stage: int, flops: float) -> float:
        """Relative distance of ``flops`` outside stage ``stage``'s band (0 inside it)."""
        return max(0.0, abs(flops / self.targets[stage] - 1.0) - self.tolerance)

    def violation(self, members: Iterable[tuple[int, Subnet]]) -> float:
        """Total relative violation (FLOPs and/or latency) over (stage, subnet) members (0: feasible)."""
        return sum(self.member_violation(s, sub) for s, sub in members)

    def stage_table(self, base: Base, stage: int) -> np.ndarray:
        """Violation of every state of ``stage`` for ``base``, shape (|D_s|, |W_s|, |R_s|) (cached, derived)."""
        key = (base, stage)
        table = self._tables.get(key)
        if table is None:
            sc = self.space.scaling[stage]
            table = np.empty((len(sc.depth), len(sc.width), len(sc.resolution)))
            for idx in np.ndindex(*table.shape):
                sub = self.subnet(base, stage, idx)  # type: ignore[arg-type]
                table[idx] = self.member_violation(stage, sub)
            if len(self._tables) > TABLE_CACHE_SIZE:  # a derived cache: bounded, cheap to rebuild
                self._tables.clear()
            self._tables[key] = table
        return table

    def stage_possible(self, base: Base, stage: int) -> bool:
        """Cheap necessary condition: the band meets [FLOPs at the smallest, at the largest options].

        FLOPs are monotone in d, w and r, so two FLOPs counts bound the whole stage; predicted latency, a sum of
        measured layer latencies, is too (up to timing noise).
        """
        sc = self.space.scaling[stage]
        lo = self.measures(stage, self.subnet(base, stage, (0, 0, 0)))
        hi = self.measures(stage, self.subnet(
            base, stage, (len(sc.depth) - 1, len(sc.width) - 1, len(sc.resolution) - 1)))
        tol = self.tolerance
        return all(a <= t * (1 + tol) and b >= t * (1 - tol) for (a, t), (b, _) in zip(lo, hi))

    def base_promising(self, base: Base, stages: Iterable[int]) -> bool:
        """Every stage in ``stages`` could be feasible for ``base`` (stage 0 checked exactly)."""
        return all(self.stage_possible(base, s) for s in stages)

    def feasible_states(self, base: Base, stage: int) -> list[State]:
        """States of ``stage`` within the FLOPs band for ``base`` (in option order)."""
        return [tuple(int(v) for v in idx) for idx in np.argwhere(self.stage_table(base, stage) == 0)]  # type: ignore

    def least_violating_state(self, base: Base, stage: int) -> State:
        """The state of ``stage`` closest to its band for ``base`` (the first in option order on ties)."""
        table = self.stage_table(base, stage)
        return tuple(int(v) for v in np.unravel_index(np.argmin(table), table.shape))  # type: ignore[return-value]

    # ------------------------------------------------------------------ fitness and selection
    def fitness(self, scores: Mapping[int, float | None]) -> float:
        """Weighted mean of ``scores`` (stage -> score, e.g. top-1) over its stages, weights renormalised over
        them (equal if all 0). NaN when a stage's score is NaN or None (failed or missing)."""
        stages = list(scores)
        w = np.array([self.stage_weights[s] for s in stages])
        if w.sum() <= 0:
            w = np.ones(len(stages))
        vals = [math.nan if scores[s] is None else scores[s] for s in stages]
        return float(np.dot(w, vals) / w.sum())

    def fitness_noise(self, errors: Mapping[int, float | None]) -> float:
        """The noise of :meth:`fitness`: the same weighted mean of the members' standard errors (stage -> SE).
        By the triangle inequality it bounds the SE of the weighted mean for any correlation between members.
        NaN when a stage's SE is unknown. Stages of weight 0 do not count (as in the fitness)."""
        return self.fitness(errors)

    def cost(self, members: Iterable[tuple[int, Subnet]], tie_break: str = "target") -> float:
        """The tie-break cost of (stage, subnet) members, lower first (each stage counts alike, whatever its size):
        ``target``: the summed distance |log(FLOPs / target)| of the members from their stage targets (the
        family that lands on the FLOPs asked for); ``cheaper``: their FLOPs relative to the targets, summed
        (latency too, when it is a constraint)."""
        ratios = [v / t for s, sub in members for v, t in self.measures(s, sub)]
        return sum(ratios) if tie_break == "cheaper" else sum(abs(math.log(r)) for r in ratios)

    @staticmethod
    def selection_key(violation: float, fitness: float) -> tuple[int, float, float]:
        """Sort key, best first: feasible first; then smaller violation; then higher fitness (NaN last)."""
        return (0 if violation == 0.0 else 1, violation, -fitness if math.isfinite(fitness) else math.inf)
