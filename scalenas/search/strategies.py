"""The search strategies (docs/method.md) and their registry: :data:`STRATEGIES`, :func:`strategy_names` and
:func:`make_strategy`.

Each is a :class:`scalenas.search.strategy.Strategy` subclass that decides what a generation proposes and what it
learns from the evaluated one:

- ``markov`` (default): bases by crossover + mutation, chains from a learned Markov chain;
- ``alternate``: a grid search of the scaling with the base fixed, alternating with base generations;
- ``compound``: EfficientNet's compound scaling of one searched base;
- ``random``: random families;
- ``independent``: a separate search per stage.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from scalenas.errors import ScalenasError
from scalenas.search.candidate import Candidate
from scalenas.search.markov import MarkovChainModel, State, draw_state
from scalenas.search.objectives import LatencyTargets
from scalenas.search.operators import random_family, random_state
from scalenas.search.strategy import SearchOptions, Strategy
from scalenas.spaces.arch import Base, base_to_json, sample_base
from scalenas.spaces.space import SearchSpace, load_space


class MarkovStrategy(Strategy):
    """The project's joint search: bases by crossover + mutation, chains from a learned Markov chain."""

    name = "markov"

    def _setup(self) -> None:
        self.model = MarkovChainModel.from_space(self.space, self.n, self.options.smoothing)
        self.elites: list[Candidate] = []

    def _sample_chain(self, base: Base) -> list[State]:
        # The chain's distribution restricted to each stage's in-band states (stages are independent given
        # the base, so this never dead-ends; a stage with none falls back to its full distribution).
        allowed = [self.objective.stage_table(base, s) == 0 for s in range(1, self.n + 1)]
        return self.model.sample_chain(self.rng, allowed)

    def _child(self) -> Candidate:
        parents = [e.base for e in self.elites]
        parent = self.rng.choice(self.elites)
        if self.rng.random() < self.options.keep_base_prob:
            # The parent's base with one state redrawn: one new evaluation (the other members are cached).
            return Candidate(parent.base, ((0, 0, 0), *self._resample_state(parent.base, parent.chain)))
        if self.rng.random() < self.options.chain_sample_prob:
            return random_family(self.objective, self.rng, self.mutate(parents), self._sample_chain)
        base = self.mutate(parents)
        return Candidate(base, ((0, 0, 0), *self._resample_state(base, parent.chain)))

    def _resample_state(self, base: Base, chain: list[State]) -> list[State]:
        """``chain`` with one random stage's state redrawn by a Gibbs step of the chain
        (:meth:`MarkovChainModel.conditional_weights`) over the stage's in-band states for ``base`` other than the
        current one (uniform over the others when none is in band)."""
        s = self.rng.randrange(1, self.n + 1)
        current = tuple(chain[s - 1])
        allowed = self.objective.stage_table(base, s) == 0
        allowed[current] = False
        out = list(chain)
        if allowed.any():
            weights = self.model.conditional_weights(s, chain[s - 2] if s > 1 else None,
                                                     chain[s] if s < self.n else None)
            out[s - 1] = draw_state(weights, self.rng, allowed)
        else:
            out[s - 1] = random_state(self.objective, self.rng, base, s, exclude=current)  # type: ignore[arg-type]
        return out

    def _assembled(self, base: Base) -> Candidate | None:
        """The best family of ``base`` from what is already evaluated: per stage, its best-scoring in-band state
        (stages are separable given the base). Costs no evaluation; None unless every stage has one."""
        chain: list[State] = []
        for s in range(1, self.n + 1):
            scored = [(v, x) for x in self.objective.feasible_states(base, s)
                      for v in [self.results.score(base, s, x)] if v is not None and math.isfinite(v)]
            if not scored:
                return None
            chain.append(max(scored, key=lambda t: t[0])[1])
        return Candidate(base, ((0, 0, 0), *chain))

    def _propose(self) -> list[Candidate]:
        if not self.elites:
            sample = self._sample_chain
            return self.propose_unique(self.options.population,
                                       lambda: random_family(self.objective, self.rng, chain_sampler=sample))
        batch: list[Candidate] = []
        for e in self.elites:  # stage-wise recombination of the elites' evaluated states: free
            if len(batch) == self.options.population:
                break
            c = self._assembled(e.base)
            if c is not None:
                self.add_if_new(c, batch)
        return self.propose_unique(self.options.population - len(batch), self._child, batch)

    def _after_generation(self, evaluated: list[Candidate]) -> None:
        self.elites = self.rank(self.elites + evaluated)[:self.options.elites]
        self.model.update([e.chain for e in self.elites], self.options.matrix_lr, self.options.smoothing)

    def transition_report(self) -> dict[str, Any] | None:
        return self.model.report()

    def _extra_state(self) -> dict[str, Any]:
        return {"elites": [c.to_dict() for c in self.elites], "model": self.model.to_dict()}

    def _load_extra_state(self, data: dict[str, Any]) -> None:
        self.elites = self._cands(data["elites"])
        self.model = MarkovChainModel.from_dict(data["model"])


class RandomStrategy(Strategy):
    """Random families: a random base and, per stage, a uniformly drawn in-band state."""

    name = "random"

    def _propose(self) -> list[Candidate]:
        return self.propose_unique(self.options.population, lambda: random_family(self.objective, self.rng))


class AlternateStrategy(Strategy):
    """The research code's schedule: a grid search of the scaling per stage with the base fixed, then
    ``alternate_base_generations`` genetic generations of the base with the scaling fixed, repeated.
    Generation 0 is random families."""

    name = "alternate"

    def _setup(self) -> None:
        self.elites: list[Candidate] = []
        self.phase = 0  # 0: scaling grid; 1..k: base generations
        self.fixed_chain: list[State] | None = None

    def _propose(self) -> list[Candidate]:
        if not self.elites:
            return self.propose_unique(self.options.population, lambda: random_family(self.objective, self.rng))
        best = self.elites[0]
        if self.phase == 0:
            # Every in-band state of every stage with the best base and the rest of its chain.
            batch: list[Candidate] = []
            for s in range(1, self.n + 1):
                states = self.objective.feasible_states(best.base, s) or \
                    [self.objective.least_violating_state(best.base, s)]
                for x in states:
                    chain = best.chain
                    chain[s - 1] = x  # type: ignore[call-overload]
                    self.add_if_new(Candidate(best.base, ((0, 0, 0), *chain)), batch)
            return batch
        chain = self.fixed_chain or best.chain
        batch = []
        self.add_if_new(Candidate(best.base, ((0, 0, 0), *chain)), batch)  # the grid's combination: cached, free
        parents = [e.base for e in self.elites]
        return self.propose_unique(self.options.population - len(batch),
                                   lambda: Candidate(self.mutate(parents), ((0, 0, 0), *chain)), batch)

    def _after_generation(self, evaluated: list[Candidate]) -> None:
        if self.elites and self.phase == 0:
            # Stages are separable given the base: take the best evaluated in-band state of each stage.
            base, chain = self.elites[0].base, self.elites[0].chain
            new_chain = []
            for s in range(1, self.n + 1):
                tried = {c.states[s] for c in evaluated} | {chain[s - 1]}
                table = self.objective.stage_table(base, s)
                ranked = sorted(tried, key=lambda x: (table[x] > 0, table[x], -_finite(self.results.score(base, s, x))))
                new_chain.append(ranked[0])
            self.fixed_chain = new_chain
        if self.elites:
            self.phase = (self.phase + 1) % (1 + self.options.alternate_base_generations)
        self.elites = self.rank(self.elites + evaluated)[:self.options.elites]

    def _extra_state(self) -> dict[str, Any]:
        return {"elites": [c.to_dict() for c in self.elites], "phase": self.phase,
                "fixed_chain": None if self.fixed_chain is None else [list(x) for x in self.fixed_chain]}

    def _load_extra_state(self, data: dict[str, Any]) -> None:
        self.elites = self._cands(data["elites"])
        self.phase = int(data["phase"])
        fc = data["fixed_chain"]
        self.fixed_chain = None if fc is None else [tuple(int(v) for v in x) for x in fc]  # type: ignore[misc]


class CompoundStrategy(Strategy):
    """EfficientNet's compound scaling.

    (1) A genetic search of the base alone at stage 0 (fitness = stage-0 top-1) for ``generations - 2``
    generations (at least one; it ends early to leave budget for the rest); (2) a grid search of stage 1's
    (d, w, r) on the best base, which fixes (alpha, beta, gamma) = (d, w, r / r_base); (3) for each stage s >= 2
    the options nearest alpha^phi, beta^phi, gamma^phi in log space, with phi chosen per stage so the FLOPs land
    closest to the target; that one family is evaluated and the search ends.
    """

    name = "compound"

    def _setup(self) -> None:
        self.base_elites: list[Candidate] = []
        self.phase = "base"  # base -> grid -> family -> finished
        self.grid_base: Base | None = None

    def _stage0(self, base: Base) -> Candidate:
        return Candidate(base, ((0, 0, 0),) + (None,) * self.n)

    def _reserve(self) -> int:
        return self.space.scaling[1].size + self.n + 1

    def _propose(self) -> list[Candidate]:
        if self.phase == "base":
            if not self.base_elites:
                return self.propose_unique(self.options.population,
                                           lambda: self._stage0(sample_base(self.space, self.rng)))
            parents = [e.base for e in self.base_elites]
            return self.propose_unique(self.options.population, lambda: self._stage0(self.mutate(parents)))
        if self.phase == "grid":
            base = self.base_elites[0].base
            self.grid_base = base
            batch: list[Candidate] = []
            states = self.objective.feasible_states(base, 1) or [self.objective.least_violating_state(base, 1)]
            for x in states:
                self.add_if_new(Candidate(base, ((0, 0, 0), x) + (None,) * (self.n - 1)), batch)
            return batch
        # phase == "family"
        assert self.grid_base is not None
        grid = [c for _, c in self.results.archive if c.base == self.grid_base and c.stages == [0, 1]]
        x1 = self.rank(grid)[0].states[1] if grid else random_state(self.objective, self.rng, self.grid_base, 1)
        chain = [x1] + [self._compound_state(self.grid_base, x1, s) for s in range(2, self.n + 1)]  # type: ignore
        batch = []
        self.add_if_new(Candidate(self.grid_base, ((0, 0, 0), *chain)), batch)
        return batch

    def _compound_state(self, base: Base, x1: State, stage: int) -> State:
        """The state nearest (alpha, beta, gamma)^phi in log space, phi chosen so FLOPs land on target."""
        s1, sc = self.space.scaling[1], self.space.scaling[stage]
        r0 = self.space.base_resolution
        logs = np.log([s1.depth[x1[0]], s1.width[x1[1]], s1.resolution[x1[2]] / r0])
        opts = [np.log(sc.depth), np.log(sc.width), np.log(np.array(sc.resolution) / r0)]
        # phi sweeps far enough that every growing dimension passes its largest option; the distinct snapped
        # states along the sweep are few, each costs one FLOPs count.
        growing = logs[logs > 0]
        phi_max = 1.0 + (1.5 * max(float(np.max(o)) for o in opts) / float(growing.min()) if growing.size else 0.0)
        states = dict.fromkeys(tuple(int(np.argmin(np.abs(o - phi * l))) for o, l in zip(opts, logs))
                               for phi in np.linspace(0.0, phi_max, 2001))
        best, best_err = None, math.inf
        for state in states:
            err = self.objective.target_distance(stage, self.objective.subnet(base, stage, state))  # type: ignore
            if err < best_err:
                best, best_err = state, err
        return best  # type: ignore[return-value]

    def _after_generation(self, evaluated: list[Candidate]) -> None:
        if self.phase == "base":
            self.base_elites = self.rank(self.base_elites + evaluated)[:self.options.elites]
            left = math.inf if self.options.budget is None else self.options.budget - self.evaluations
            # leave room for the grid and the family: one more base generation would not fit
            if self.generation + 1 >= max(1, self.options.generations - 2) or \
                    left <= self._reserve() + self.options.population:
                self.phase = "grid"
        elif self.phase == "grid":
            self.phase = "family"
        else:
            self.phase = "finished"

    def _is_finished(self) -> bool:
        return self.phase == "finished"

    def max_generations(self) -> int:
        return max(3, self.options.generations)  # at least one base generation, the grid and the family

    def _extra_state(self) -> dict[str, Any]:
        return {"base_elites": [c.to_dict() for c in self.base_elites], "phase": self.phase,
                "grid_base": None if self.grid_base is None else base_to_json(self.grid_base)}

    def _load_extra_state(self, data: dict[str, Any]) -> None:
        self.base_elites = self._cands(data["base_elites"])
        self.phase = data["phase"]
        gb = data["grid_base"]
        self.grid_base = None if gb is None else tuple(tuple(x) for x in gb)


class IndependentStrategy(Strategy):
    """A separate search per stage: each stage's (base, x_s) is evolved on its own (fitness = that stage's
    top-1, feasibility = that stage's band); the reported family is the best of each stage, so its members
    generally have different bases."""

    name = "independent"

    def _setup(self) -> None:
        self.stage_elites: list[list[Candidate]] = [[] for _ in range(self.n + 1)]

    def _single(self, base: Base, stage: int, state: State) -> Candidate:
        states: list[State | None] = [None] * (self.n + 1)
        states[stage] = state
        return Candidate(base, tuple(states))

    def _make(self, stage: int) -> Candidate:
        elites = self.stage_elites[stage]
        if elites:
            parent = self.rng.choice(elites)
            base = self.mutate([e.base for e in elites])
            keep = self.rng.random() >= self.options.chain_sample_prob
            x = parent.states[stage] if keep else None
        else:
            base, x = sample_base(self.space, self.rng), None
        if x is None:
            x = random_state(self.objective, self.rng, base, stage) if self.objective.stage_possible(base, stage) \
                else self.rng.choice(self.objective.all_states(stage))
        return self._single(base, stage, x)

    def _propose(self) -> list[Candidate]:
        batch: list[Candidate] = []
        for s in range(self.n + 1):
            self.propose_unique(self.options.population, lambda s=s: self._make(s), batch)
        return batch

    def _after_generation(self, evaluated: list[Candidate]) -> None:
        for s in range(self.n + 1):
            mine = [c for c in evaluated if c.stages == [s]]
            self.stage_elites[s] = self.rank(self.stage_elites[s] + mine)[:self.options.elites]

    def _pick_best(self) -> None:
        if not all(self.stage_elites):
            return super()._pick_best()
        # the best of each stage's own search: one base per stage
        self.results.pick([(e[0].base, s, e[0].states[s]) for s, e in enumerate(self.stage_elites)],  # type: ignore
                          separate_bases=True)

    def _extra_state(self) -> dict[str, Any]:
        return {"stage_elites": [[c.to_dict() for c in e] for e in self.stage_elites]}

    def _load_extra_state(self, data: dict[str, Any]) -> None:
        self.stage_elites = [self._cands(e) for e in data["stage_elites"]]


def _finite(v: float | None) -> float:
    return -math.inf if v is None or not math.isfinite(v) else v


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (
    MarkovStrategy, AlternateStrategy, CompoundStrategy, RandomStrategy, IndependentStrategy)}


def strategy_names() -> list[str]:
    """The registered strategy names, ``markov`` (the default) first."""
    return list(STRATEGIES)


def make_strategy(name: str, space: SearchSpace | str, targets: Sequence[int] | None,
                  options: SearchOptions | Mapping[str, Any] | None = None,
                  latency: LatencyTargets | None = None) -> Strategy:
    """A search strategy by name: ``markov`` (default), ``alternate``, ``compound``, ``random``, ``independent``."""
    if name not in STRATEGIES:
        raise ScalenasError(f"unknown search strategy {name!r} (known: {', '.join(strategy_names())})")
    if not isinstance(options, SearchOptions):
        options = SearchOptions.from_dict(options)
    return STRATEGIES[name](load_space(space), targets, options, latency)
