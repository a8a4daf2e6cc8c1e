"""The joint search of a base network and its scaling chain (METHOD.md §5), as ask/tell strategies.

An individual (:class:`Candidate`) is a base network g plus one scaling state per scaling stage. Its family is
the subnets s = 0..S: stage 0 is g itself at (d=1, w=1, r=base), stage s >= 1 is g at (D_s[i], W_s[j], R_s[k]).
A strategy proposes a generation of candidates, the caller evaluates the subnets they need (:meth:`ask`) and
reports the supernet top-1 of each (:meth:`tell`); the strategy then selects, learns and breeds the next
generation. The same object is driven by :func:`run_search` (a plain loop), by the lead's Ray evaluator and by
Ray Tune (:mod:`scalenas.search.tune`).

Design choices that keep searches comparable and reproducible:

- Every strategy counts the same budget: unique subnet evaluations, keyed by the BUILT architecture
  (``derive_subnet(...).key()``), so two (d, w, r) that build the same network cost one evaluation, and no
  subnet is ever evaluated twice in a run. No family (tuple of built keys) is proposed twice either.
- Selection is feasibility-first: a candidate is feasible when every stage it covers lands within the
  relative tolerance of its FLOPs target; feasible beats infeasible, feasible ones compare by fitness,
  infeasible ones by their total relative violation.
- Samplers that retry to satisfy the FLOPs bands and the no-duplicate rule make at most ``max_tries`` tries,
  then keep the least-violating new candidate, count a give-up (``gave_up`` in the search log) and warn.
- One ``random.Random(seed)`` drives everything; its state is part of :meth:`Strategy.state_dict`, so a search
  saved after generation k and resumed finishes exactly like an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from scalenas.spaces.arch import Base, Subnet, base_to_json, derive_subnet, parse_subnet, sample_base
from scalenas.errors import ScalenasError
from scalenas.spaces.flops import subnet_flops_params
from scalenas.search.markov import MarkovChainModel, State
from scalenas.spaces.space import SearchSpace, load_space
from scalenas.spaces.targets import check_targets, check_tolerance

logger = logging.getLogger(__name__)

STATE_FORMAT = 1


# ============================================================================================== options
@dataclass
class SearchOptions:
    """Every knob of the search; the resolved values are recorded in ``state.json``."""

    population: int = 16  # new candidates per generation (per stage for ``independent``)
    generations: int = 10  # generations to run (the search also stops when the budget is spent)
    elites: int = 4  # candidates kept as parents and for re-estimating the Markov chain
    matrix_lr: float = 0.5  # EMA rate of the transition counts toward the elites' counts
    smoothing: float = 0.5  # additive smoothing of the counts: no transition ever has probability 0
    chain_sample_prob: float = 0.5  # child's chain: sampled from the chain (else one parent state mutated)
    depth_mutation: float = 0.2  # per searchable stage: probability of depth +-1
    op_mutation: float = 0.1  # per layer: probability of resampling its op
    tolerance: float = 0.1  # relative FLOPs tolerance around each stage's target
    stage_weights: list[float] | None = None  # fitness weights of stages 0..S; None = 0 for s=0, 1 otherwise
    seed: int = 0
    budget: int | None = None  # max unique subnet evaluations; None = only generations limit
    max_tries: int = 100  # tries of a constrained sampler before it gives up (and reports it)
    alternate_base_generations: int = 2  # ``alternate``: base generations between two scaling grid searches

    def resolved(self, n_stages: int) -> "SearchOptions":
        """A validated copy with the stage weights filled in for stages 0..``n_stages``."""
        o = dataclasses.replace(self)
        for name in ("population", "generations", "elites", "max_tries", "alternate_base_generations"):
            v = getattr(o, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ScalenasError(f"search option {name} must be an integer >= 1, got {v!r}")
        if o.elites > o.population:
            raise ScalenasError(f"search option elites ({o.elites}) must not exceed population ({o.population})")
        if not 0.0 < o.matrix_lr <= 1.0:
            raise ScalenasError(f"search option matrix_lr must be in (0, 1], got {o.matrix_lr!r}")
        if not o.smoothing > 0:
            raise ScalenasError(f"search option smoothing must be > 0, got {o.smoothing!r}")
        for name in ("chain_sample_prob", "depth_mutation", "op_mutation"):
            v = getattr(o, name)
            if not 0.0 <= v <= 1.0:
                raise ScalenasError(f"search option {name} must be in [0, 1], got {v!r}")
        o.tolerance = check_tolerance(o.tolerance)
        if o.budget is not None and (isinstance(o.budget, bool) or not isinstance(o.budget, int) or o.budget < 1):
            raise ScalenasError(f"search option budget must be an integer >= 1 or None, got {o.budget!r}")
        if isinstance(o.seed, bool) or not isinstance(o.seed, int):
            raise ScalenasError(f"search option seed must be an integer, got {o.seed!r}")
        if o.stage_weights is None:
            o.stage_weights = [0.0] + [1.0] * n_stages
        w = [float(x) for x in o.stage_weights]
        if len(w) != n_stages + 1 or any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
            raise ScalenasError(f"stage weights must be {n_stages + 1} non-negative numbers (stages 0..{n_stages})"
                                f" with a positive sum, got {o.stage_weights!r}")
        o.stage_weights = w
        return o

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "SearchOptions":
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ScalenasError(f"unknown search option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**data)


# ============================================================================================== candidates
@dataclass(frozen=True)
class Candidate:
    """A base network and one scaling state per stage 0..S (None: the stage is not part of this candidate).

    Family strategies fill every stage; ``compound`` and ``independent`` also use partial candidates.
    Stage 0's state is always (0, 0, 0), the base's single option.
    """

    base: Base
    states: tuple[State | None, ...]

    @property
    def stages(self) -> list[int]:
        return [s for s, x in enumerate(self.states) if x is not None]

    @property
    def is_family(self) -> bool:
        return all(x is not None for x in self.states)

    @property
    def chain(self) -> list[State]:
        """x_1..x_S (family candidates only)."""
        return [x for x in self.states[1:]]  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        return {"base": base_to_json(self.base), "states": [None if x is None else list(x) for x in self.states]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Candidate":
        return cls(tuple(tuple(layers) for layers in data["base"]),
                   tuple(None if x is None else tuple(int(v) for v in x) for x in data["states"]))


@lru_cache(maxsize=200_000)
def _built_key(space_path: str, subnet: Subnet) -> str:
    return derive_subnet(load_space(space_path), subnet).key()


def built_key(space: SearchSpace, subnet: Subnet) -> str:
    """Dedupe key of the network ``subnet`` builds (cached)."""
    return _built_key(space.path, subnet)


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(rng: random.Random, state: Sequence[Any]) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


# ============================================================================================== strategy
class Strategy:
    """Ask/tell search over candidates; subclasses decide what each generation proposes.

    Subclasses implement :meth:`_propose` (the next generation's candidates, drawing only from ``self.rng``),
    :meth:`_after_generation` (selection / learning once a generation is evaluated) and the ``_extra_state``
    pair for whatever they keep.
    """

    name = ""

    def __init__(self, space: SearchSpace, targets: Sequence[int], options: SearchOptions | None = None) -> None:
        self.space = space
        self.targets = [int(t) for t in targets]
        self.n = len(self.targets) - 1  # S: scaling stages searched
        options = options or SearchOptions()
        self.options = options.resolved(self.n)
        check_targets(space, self.targets, self.options.tolerance)
        self.rng = random.Random(self.options.seed)
        self.generation = 0
        self.done = False
        self.cache: dict[str, float] = {}  # built key -> top-1 (NaN: the evaluation failed)
        self.population: list[Candidate] = []  # the current generation, awaiting evaluation
        self.archive: list[tuple[int, Candidate]] = []  # (generation, candidate) of every evaluated candidate
        self.history: list[dict[str, Any]] = []
        self.gave_up = 0  # constrained samplers that gave up while breeding the current generation
        self.budget_hit = False
        self._seen: set[tuple[tuple[int, str], ...]] = set()  # family keys ever proposed
        self._tables: dict[tuple[Base, int], np.ndarray] = {}  # FLOPs violations per (base, stage), derived
        self._gen_started: float | None = None
        self._evals_at_start = 0
        self._setup()
        self._begin(self._propose())
        self._maybe_finish()

    # ------------------------------------------------------------------ subclass hooks
    def _setup(self) -> None:
        """Initialise strategy-specific state."""

    def _propose(self) -> list[Candidate]:
        raise NotImplementedError

    def _after_generation(self, evaluated: list[Candidate]) -> None:
        """Selection and learning after generation ``self.generation`` was evaluated."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, data: dict[str, Any]) -> None:
        pass

    def _is_finished(self) -> bool:
        """True when the strategy has nothing more to propose (besides the generation and budget limits)."""
        return False

    def max_generations(self) -> int:
        """Generations this strategy runs at most."""
        return self.options.generations

    # ------------------------------------------------------------------ subnets, FLOPs and fitness
    def subnet(self, base: Base, stage: int, state: State) -> Subnet:
        sc = self.space.scaling[stage]
        return Subnet(self.space.name, base, sc.depth[state[0]], sc.width[state[1]], sc.resolution[state[2]])

    def subnets(self, c: Candidate) -> list[tuple[int, Subnet]]:
        return [(s, self.subnet(c.base, s, c.states[s])) for s in c.stages]  # type: ignore[arg-type]

    def family_key(self, c: Candidate) -> tuple[tuple[int, str], ...]:
        return tuple((s, built_key(self.space, sub)) for s, sub in self.subnets(c))

    def stage_violation(self, stage: int, flops: float) -> float:
        """Relative distance of ``flops`` outside stage ``stage``'s band (0 inside it)."""
        return max(0.0, abs(flops / self.targets[stage] - 1.0) - self.options.tolerance)

    def violation(self, c: Candidate) -> float:
        """Total relative FLOPs violation over the candidate's stages (0: feasible)."""
        return sum(self.stage_violation(s, subnet_flops_params(self.space, sub)[0]) for s, sub in self.subnets(c))

    def stage_table(self, base: Base, stage: int) -> np.ndarray:
        """Violation of every state of ``stage`` for ``base``, shape (|D_s|, |W_s|, |R_s|) (cached, derived)."""
        key = (base, stage)
        table = self._tables.get(key)
        if table is None:
            sc = self.space.scaling[stage]
            table = np.empty((len(sc.depth), len(sc.width), len(sc.resolution)))
            for idx in np.ndindex(*table.shape):
                sub = self.subnet(base, stage, idx)  # type: ignore[arg-type]
                table[idx] = self.stage_violation(stage, subnet_flops_params(self.space, sub)[0])
            if len(self._tables) > 20_000:  # a derived cache: bounded, cheap to rebuild
                self._tables.clear()
            self._tables[key] = table
        return table

    def stage_possible(self, base: Base, stage: int) -> bool:
        """Cheap necessary condition: the band meets [FLOPs at the smallest, at the largest options].

        FLOPs are monotone in d, w and r, so two FLOPs counts bound the whole stage.
        """
        sc = self.space.scaling[stage]
        lo = subnet_flops_params(self.space, self.subnet(base, stage, (0, 0, 0)))[0]
        hi = subnet_flops_params(self.space, self.subnet(
            base, stage, (len(sc.depth) - 1, len(sc.width) - 1, len(sc.resolution) - 1)))[0]
        t, tol = self.targets[stage], self.options.tolerance
        return lo <= t * (1 + tol) and hi >= t * (1 - tol)

    def base_promising(self, base: Base, stages: Iterable[int]) -> bool:
        """Every stage in ``stages`` could be feasible for ``base`` (stage 0 checked exactly)."""
        return all(self.stage_possible(base, s) for s in stages)

    def feasible_states(self, base: Base, stage: int) -> list[State]:
        """States of ``stage`` within the FLOPs band for ``base`` (in option order)."""
        return [tuple(int(v) for v in idx) for idx in np.argwhere(self.stage_table(base, stage) == 0)]  # type: ignore

    def all_states(self, stage: int) -> list[State]:
        sc = self.space.scaling[stage]
        return [tuple(idx) for idx in np.ndindex(len(sc.depth), len(sc.width), len(sc.resolution))]  # type: ignore

    def top1(self, base: Base, stage: int, state: State) -> float | None:
        """The cached top-1 of one subnet, None if not evaluated."""
        return self.cache.get(built_key(self.space, self.subnet(base, stage, state)))

    def fitness(self, c: Candidate) -> float:
        """Weighted mean top-1 over the candidate's stages (weights renormalised over them; equal if all 0).

        NaN when a stage's evaluation failed or is missing.
        """
        stages = c.stages
        w = np.array([self.options.stage_weights[s] for s in stages])  # type: ignore[index]
        if w.sum() <= 0:
            w = np.ones(len(stages))
        vals = []
        for s in stages:
            v = self.top1(c.base, s, c.states[s])  # type: ignore[arg-type]
            vals.append(math.nan if v is None else v)
        return float(np.dot(w, vals) / w.sum())

    def feasible(self, c: Candidate) -> bool:
        return self.violation(c) == 0.0

    def selection_key(self, c: Candidate) -> tuple[int, float, float]:
        """Sort key, best first: feasible first; then smaller violation; then higher fitness (NaN last)."""
        v = self.violation(c)
        f = self.fitness(c)
        return (0 if v == 0.0 else 1, v, -f if math.isfinite(f) else math.inf)

    def rank(self, candidates: Iterable[Candidate]) -> list[Candidate]:
        """Candidates best first (stable: ties keep their order), without duplicate families."""
        unique: dict[tuple[tuple[int, str], ...], Candidate] = {}
        for c in candidates:
            unique.setdefault(self.family_key(c), c)
        return sorted(unique.values(), key=self.selection_key)

    # ------------------------------------------------------------------ breeding helpers
    def mutate_base(self, parents: Sequence[Base]) -> Base:
        """Uniform per-stage crossover of two parents, then depth +-1 per stage and op resampling per layer."""
        a, b = self.rng.choice(parents), self.rng.choice(parents)
        layers = [list(a[i] if self.rng.random() < 0.5 else b[i]) for i in range(self.space.num_stages)]
        for i, st in enumerate(self.space.stages):
            if st.max_layers > 1 and self.rng.random() < self.options.depth_mutation:
                grow = len(layers[i]) == 1 or (len(layers[i]) < st.max_layers and self.rng.random() < 0.5)
                if grow:
                    layers[i].append(self.rng.choice(st.ops))
                else:
                    layers[i].pop()
            for j in range(len(layers[i])):
                if self.rng.random() < self.options.op_mutation:
                    layers[i][j] = self.rng.choice(st.ops)
        return tuple(tuple(x) for x in layers)

    def random_state(self, base: Base, stage: int, exclude: State | None = None) -> State:
        """A uniformly drawn feasible state of ``stage`` (any state if none is feasible), not ``exclude``."""
        feasible = self.feasible_states(base, stage) if self.stage_possible(base, stage) else []
        pool = [x for x in feasible if x != exclude] or \
            [x for x in self.all_states(stage) if x != exclude] or [exclude]  # type: ignore[list-item]
        return self.rng.choice(pool)  # type: ignore[return-value]

    def random_family(self, chain_sampler: Callable[[Base], list[State]] | None = None,
                      parents: Sequence[Base] | None = None) -> Candidate:
        """A base (random, or bred from ``parents``) with a chain; the chain is only drawn with care
        (FLOPs tables) when the base can be feasible at all, which keeps rejected tries cheap."""
        base = self.mutate_base(parents) if parents else sample_base(self.space, self.rng)
        stages = range(self.n + 1)
        if chain_sampler is not None and self.base_promising(base, stages):
            chain = chain_sampler(base)
        elif chain_sampler is None and self.base_promising(base, stages):
            chain = [self.random_state(base, s) for s in range(1, self.n + 1)]
        else:  # hopeless base: any chain, only kept if every try is as bad
            chain = [self.rng.choice(self.all_states(s)) for s in range(1, self.n + 1)]
        return Candidate(base, ((0, 0, 0), *chain))

    def propose_unique(self, count: int, make: Callable[[], Candidate],
                       batch: list[Candidate] | None = None) -> list[Candidate]:
        """``count`` new candidates from ``make``, each feasible and never proposed before.

        Each one gets at most ``max_tries`` tries; when none is feasible the least-violating new one is kept
        and a give-up is counted (``gave_up``), so an unreachable band never hangs the search.
        """
        out = batch if batch is not None else []
        for _ in range(count):
            best: Candidate | None = None
            best_v = math.inf
            best_key = None
            for _ in range(self.options.max_tries):
                c = make()
                key = self.family_key(c)
                if key in self._seen:
                    continue
                v = self.violation(c)
                if v < best_v:
                    best, best_v, best_key = c, v, key
                if v == 0.0:
                    break
            if best is None or best_v > 0.0:
                self.gave_up += 1
            if best is not None:
                self._seen.add(best_key)  # type: ignore[arg-type]
                out.append(best)
        return out

    def add_if_new(self, c: Candidate, batch: list[Candidate]) -> bool:
        key = self.family_key(c)
        if key in self._seen:
            return False
        self._seen.add(key)
        batch.append(c)
        return True

    # ------------------------------------------------------------------ ask / tell
    def _begin(self, candidates: list[Candidate]) -> None:
        """Make ``candidates`` the current generation, dropping those that would overrun the budget."""
        if self.gave_up:
            msg = (f"{self.name} search, generation {self.generation}: {self.gave_up} constrained sampler(s) gave up "
                   f"after {self.options.max_tries} tries (no feasible new candidate; kept the least-violating)")
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        remaining = math.inf if self.options.budget is None else self.options.budget - len(self.cache)
        chosen: list[Candidate] = []
        new: set[str] = set()
        for c in candidates:
            missing = {k for _, k in self.family_key(c) if k not in self.cache and k not in new}
            if len(new) + len(missing) > remaining:
                self.budget_hit = True  # keep looking: a later candidate may reuse cached subnets
                continue
            chosen.append(c)
            new |= missing
        self.population = chosen
        self._gen_started = None
        self._evals_at_start = len(self.cache)
        if not chosen:
            self.done = True

    def _missing(self) -> list[Subnet]:
        out: list[Subnet] = []
        seen: set[str] = set()
        for c in self.population:
            for _, sub in self.subnets(c):
                k = built_key(self.space, sub)
                if k not in self.cache and k not in seen:
                    seen.add(k)
                    out.append(sub)
        return out

    def ask(self) -> list[Subnet]:
        """Subnets the current generation still needs (deduplicated by built network, none cached)."""
        if self.done:
            return []
        if self._gen_started is None:
            self._gen_started = time.monotonic()
        return self._missing()

    def tell(self, results: Mapping[str, float | None]) -> None:
        """Record top-1 per subnet JSON (None/NaN: failed); finishes the generation once all are in."""
        pending = {built_key(self.space, s): s for s in self._missing()}
        for text, value in results.items():
            sub = parse_subnet(json.loads(text), self.space, source="result")
            key = built_key(self.space, sub)
            if key in self.cache:
                continue  # already known (a duplicate report): the first value stands
            if key not in pending:
                raise ScalenasError(f"result for a subnet the search did not ask for: {sub.short()}")
            self.cache[key] = math.nan if value is None else float(value)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        # Bounded: every pass either stops or advances the generation counter toward options.generations.
        while not self.done and not self._missing():
            self._finish_generation()

    def _finish_generation(self) -> None:
        evaluated = self.population
        self.archive.extend((self.generation, c) for c in evaluated)
        self._after_generation(evaluated)
        fits = np.array([self.fitness(c) for c in evaluated]) if evaluated else np.array([math.nan])
        best = self.best()
        new_evals = len(self.cache) - self._evals_at_start
        elapsed = None if self._gen_started is None else time.monotonic() - self._gen_started
        self.history.append({
            "generation": self.generation,
            "best_fitness": best.get("fitness"),
            "mean_fitness": float(np.nanmean(fits)) if np.isfinite(fits).any() else None,
            "feasible_share": float(np.mean([self.feasible(c) for c in evaluated])) if evaluated else 0.0,
            "evaluations": len(self.cache),
            "evaluations_per_s": (new_evals / elapsed) if elapsed else None,
            "gave_up": self.gave_up,
        })
        self.generation += 1
        self.population = []
        exhausted = self.options.budget is not None and len(self.cache) >= self.options.budget
        if self.generation >= self.max_generations() or exhausted or self.budget_hit or self._is_finished():
            self.done = True
            return
        self.gave_up = 0
        self._begin(self._propose())

    # ------------------------------------------------------------------ results
    def best_candidate(self) -> Candidate | None:
        """The best evaluated family (feasibility-first), None before any family was evaluated."""
        families = [c for _, c in self.archive if c.is_family]
        return self.rank(families)[0] if families else None

    def stage_row(self, base: Base, stage: int, state: State) -> dict[str, Any]:
        sub = self.subnet(base, stage, state)
        flops, params = subnet_flops_params(self.space, sub)
        top1 = self.top1(base, stage, state)
        return {"stage": stage, "target_flops": self.targets[stage], "flops": flops, "params": params,
                "resolution": sub.resolution, "depth_mult": sub.depth, "width_mult": sub.width,
                "top1": None if top1 is None or math.isnan(top1) else top1,
                "feasible": self.stage_violation(stage, flops) == 0.0, "arch": sub.to_json()}

    def _best_dict(self, members: list[tuple[Base, int, State]]) -> dict[str, Any]:
        """best() of a family given as (base, stage, state) per stage 0..S."""
        family = [self.stage_row(*m) for m in members]
        w = np.array(self.options.stage_weights, dtype=float)  # type: ignore[arg-type]
        vals = np.array([math.nan if r["top1"] is None else r["top1"] for r in family])
        fitness = float(np.dot(w, vals) / w.sum())
        chain = []
        for base, s, x in members[1:]:
            sc = self.space.scaling[s]
            chain.append({"stage": s, "index": list(x), "depth": sc.depth[x[0]], "width": sc.width[x[1]],
                          "resolution": sc.resolution[x[2]]})
        return {"strategy": self.name, "base": base_to_json(members[0][0]), "chain": chain, "family": family,
                "fitness": fitness if math.isfinite(fitness) else None,
                "feasible": all(r["feasible"] for r in family)}

    def best(self) -> dict[str, Any]:
        """The best family: base, chain (indices and values), family rows per stage, fitness, feasibility.

        Empty family (and None fitness) if no complete family has been evaluated yet.
        """
        c = self.best_candidate()
        if c is None:
            return {"strategy": self.name, "base": None, "chain": [], "family": [], "fitness": None,
                    "feasible": False}
        return self._best_dict([(c.base, s, c.states[s]) for s in range(self.n + 1)])  # type: ignore[misc]

    def pareto_rows(self) -> list[dict[str, Any]]:
        """One row per evaluated (candidate, stage), in evaluation order (``is_pareto`` added by reports)."""
        rows = []
        for cand_id, (gen, c) in enumerate(self.archive):
            for s in c.stages:
                rows.append({"generation": gen, "candidate": cand_id,
                             **self.stage_row(c.base, s, c.states[s])})  # type: ignore[arg-type]
        return rows

    def transition_report(self) -> dict[str, Any] | None:
        """pi and T_s with labels, for strategies that learn a Markov chain."""
        return None

    @property
    def evaluations(self) -> int:
        """Unique subnet evaluations so far (the budget's unit)."""
        return len(self.cache)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The whole search state, JSON-able (NaN stored as null)."""
        return {
            "format": STATE_FORMAT, "strategy": self.name, "space": self.space.name, "targets": self.targets,
            "options": self.options.to_dict(), "rng": _rng_state(self.rng), "generation": self.generation,
            "done": self.done, "budget_hit": self.budget_hit, "gave_up": self.gave_up,
            "evaluations": len(self.cache),
            "cache": {k: (None if math.isnan(v) else v) for k, v in self.cache.items()},
            "population": [c.to_dict() for c in self.population],
            "archive": [[g, c.to_dict()] for g, c in self.archive],
            "history": self.history,
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`. The state's options win (a warning names differences)."""
        if state.get("format") != STATE_FORMAT:
            raise ScalenasError(f"search state format {state.get('format')!r} is not supported "
                                f"(expected {STATE_FORMAT})")
        for field_name, mine in (("strategy", self.name), ("space", self.space.name), ("targets", self.targets)):
            if state[field_name] != mine:
                raise ScalenasError(f"cannot resume: the saved search has {field_name} {state[field_name]!r}, "
                                    f"this one {mine!r}")
        options = SearchOptions.from_dict(state["options"]).resolved(self.n)
        differ = [k for k, v in options.to_dict().items() if getattr(self.options, k) != v]
        if differ:
            msg = f"resuming with the saved search options; these differ from the ones given: {', '.join(differ)}"
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        self.options = options
        _set_rng_state(self.rng, state["rng"])
        self.generation = int(state["generation"])
        self.done = bool(state["done"])
        self.budget_hit = bool(state["budget_hit"])
        self.gave_up = int(state["gave_up"])
        self.cache = {k: (math.nan if v is None else float(v)) for k, v in state["cache"].items()}
        self.population = [Candidate.from_dict(c) for c in state["population"]]
        self.archive = [(int(g), Candidate.from_dict(c)) for g, c in state["archive"]]
        self.history = [dict(r) for r in state["history"]]
        self._seen = {self.family_key(c) for c in self.population} | {self.family_key(c) for _, c in self.archive}
        self._tables.clear()
        self._gen_started = None
        self._evals_at_start = len(self.cache)
        self._load_extra_state(state.get("extra", {}))

    def _cands(self, items: Iterable[Mapping[str, Any]]) -> list[Candidate]:
        return [Candidate.from_dict(c) for c in items]


# ============================================================================================== strategies
class MarkovStrategy(Strategy):
    """The project's joint search: bases by crossover + mutation, chains from a learned Markov chain."""

    name = "markov"

    def _setup(self) -> None:
        self.model = MarkovChainModel.from_space(self.space, self.n, self.options.smoothing)
        self.elites: list[Candidate] = []

    def _sample_chain(self, base: Base) -> list[State]:
        # The chain's distribution restricted to each stage's in-band states (stages are independent given
        # the base, so this never dead-ends; a stage with none falls back to its full distribution).
        allowed = [self.stage_table(base, s) == 0 for s in range(1, self.n + 1)]
        return self.model.sample_chain(self.rng, allowed)

    def _child(self) -> Candidate:
        parents = [e.base for e in self.elites]
        if self.rng.random() < self.options.chain_sample_prob:
            return self.random_family(self._sample_chain, parents)
        parent = self.rng.choice(self.elites)
        base = self.mutate_base(parents)
        chain = parent.chain
        s = self.rng.randrange(1, self.n + 1)
        chain[s - 1] = self.random_state(base, s, exclude=chain[s - 1])
        return Candidate(base, ((0, 0, 0), *chain))

    def _propose(self) -> list[Candidate]:
        if not self.elites:
            return self.propose_unique(self.options.population, lambda: self.random_family(self._sample_chain))
        return self.propose_unique(self.options.population, self._child)

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
        return self.propose_unique(self.options.population, self.random_family)


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
            return self.propose_unique(self.options.population, self.random_family)
        best = self.elites[0]
        if self.phase == 0:
            # Every in-band state of every stage with the best base and the rest of its chain.
            batch: list[Candidate] = []
            for s in range(1, self.n + 1):
                states = self.feasible_states(best.base, s) or \
                    [tuple(int(v) for v in np.unravel_index(np.argmin(self.stage_table(best.base, s)),
                                                            self.stage_table(best.base, s).shape))]
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
                                   lambda: Candidate(self.mutate_base(parents), ((0, 0, 0), *chain)), batch)

    def _after_generation(self, evaluated: list[Candidate]) -> None:
        if self.elites and self.phase == 0:
            # Stages are separable given the base: take the best evaluated in-band state of each stage.
            base, chain = self.elites[0].base, self.elites[0].chain
            new_chain = []
            for s in range(1, self.n + 1):
                tried = {c.states[s] for c in evaluated} | {chain[s - 1]}
                ranked = sorted(tried, key=lambda x: (self.stage_table(base, s)[x] > 0,
                                                      self.stage_table(base, s)[x],
                                                      -_finite(self.top1(base, s, x))))
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
            return self.propose_unique(self.options.population, lambda: self._stage0(self.mutate_base(parents)))
        if self.phase == "grid":
            base = self.base_elites[0].base
            self.grid_base = base
            batch: list[Candidate] = []
            states = self.feasible_states(base, 1) or [tuple(int(v) for v in np.unravel_index(
                np.argmin(self.stage_table(base, 1)), self.stage_table(base, 1).shape))]
            for x in states:
                self.add_if_new(Candidate(base, ((0, 0, 0), x) + (None,) * (self.n - 1)), batch)
            return batch
        # phase == "family"
        assert self.grid_base is not None
        grid = [c for _, c in self.archive if c.base == self.grid_base and c.stages == [0, 1]]
        x1 = self.rank(grid)[0].states[1] if grid else self.random_state(self.grid_base, 1)
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
            flops = subnet_flops_params(self.space, self.subnet(base, stage, state))[0]  # type: ignore[arg-type]
            err = abs(math.log(flops / self.targets[stage]))
            if err < best_err:
                best, best_err = state, err
        return best  # type: ignore[return-value]

    def _after_generation(self, evaluated: list[Candidate]) -> None:
        if self.phase == "base":
            self.base_elites = self.rank(self.base_elites + evaluated)[:self.options.elites]
            left = math.inf if self.options.budget is None else self.options.budget - len(self.cache)
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
            base = self.mutate_base([e.base for e in elites])
            keep = self.rng.random() >= self.options.chain_sample_prob
            x = parent.states[stage] if keep else None
        else:
            base, x = sample_base(self.space, self.rng), None
        if x is None:
            x = self.random_state(base, stage) if self.stage_possible(base, stage) \
                else self.rng.choice(self.all_states(stage))
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

    def best(self) -> dict[str, Any]:
        if not all(self.stage_elites):
            return super().best()
        members = [(e[0].base, s, e[0].states[s]) for s, e in enumerate(self.stage_elites)]
        out = self._best_dict(members)  # type: ignore[arg-type]
        out["bases"] = [base_to_json(b) for b, _, _ in members]  # one base per stage
        return out

    def _extra_state(self) -> dict[str, Any]:
        return {"stage_elites": [[c.to_dict() for c in e] for e in self.stage_elites]}

    def _load_extra_state(self, data: dict[str, Any]) -> None:
        self.stage_elites = [self._cands(e) for e in data["stage_elites"]]


def _finite(v: float | None) -> float:
    return -math.inf if v is None or not math.isfinite(v) else v


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (
    MarkovStrategy, AlternateStrategy, CompoundStrategy, RandomStrategy, IndependentStrategy)}


def make_strategy(name: str, space: SearchSpace | str, targets: Sequence[int],
                  options: SearchOptions | Mapping[str, Any] | None = None) -> Strategy:
    """A search strategy by name: ``markov`` (default), ``alternate``, ``compound``, ``random``, ``independent``."""
    if name not in STRATEGIES:
        raise ScalenasError(f"unknown search strategy {name!r} (known: {', '.join(STRATEGIES)})")
    if not isinstance(options, SearchOptions):
        options = SearchOptions.from_dict(options)
    return STRATEGIES[name](load_space(space), targets, options)


# ============================================================================================== driver
def run_search(space: SearchSpace | str, strategy: Strategy, evaluate: Callable[[list[Subnet]], Sequence[float]],
               out_dir: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """ask → evaluate → tell until done; after every generation write ``state.json`` and the reports.

    ``resume=True`` continues from ``out_dir/state.json``. A KeyboardInterrupt saves the state, then re-raises.
    Returns :meth:`Strategy.best` plus ``evaluations``, ``generations`` and ``out_dir``.
    """
    from tqdm.auto import tqdm

    from scalenas.io import atomic_write_json
    from scalenas.report.search_report import write_reports

    space = load_space(space)
    if space.name != strategy.space.name:
        raise ScalenasError(f"space {space.name!r} differs from the strategy's {strategy.space.name!r}")
    out = Path(out_dir)
    state_path = out / "state.json"
    if resume:
        if not state_path.is_file():
            raise ScalenasError(f"cannot resume: {state_path} does not exist")
        try:
            state = json.loads(state_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ScalenasError(f"cannot resume: {state_path} is unreadable ({exc})") from None
        strategy.load_state_dict(state)
    elif state_path.exists():
        raise ScalenasError(f"{out} already holds a search (state.json): resume it or choose another folder")

    def save() -> None:
        atomic_write_json(state_path, strategy.state_dict())
        write_reports(out, strategy)

    bar = tqdm(total=strategy.max_generations(), initial=min(strategy.generation, strategy.max_generations()),
               desc=f"search {strategy.name}", unit="gen", disable=not progress)
    try:
        while not strategy.done:
            subnets = strategy.ask()
            if not subnets:  # cannot happen: a generation with nothing to evaluate finishes inside tell/_begin
                raise RuntimeError("search asked for nothing but is not done")
            values = list(evaluate(subnets))
            if len(values) != len(subnets):
                raise ValueError(f"evaluator returned {len(values)} values for {len(subnets)} subnets")
            before = strategy.generation
            strategy.tell({s.to_json(): v for s, v in zip(subnets, values)})
            if strategy.generation != before or strategy.done:
                save()
                last = strategy.history[-1] if strategy.history else {}
                bar.update(strategy.generation - before)
                rate = last.get("evaluations_per_s")
                best = last.get("best_fitness")
                bar.set_postfix(best="-" if best is None else f"{best:.4f}",
                                evals_per_s=f"{rate:.1f}" if rate else "-", refresh=False)
    except KeyboardInterrupt:
        save()
        raise
    finally:
        bar.close()
    save()
    return {**strategy.best(), "evaluations": strategy.evaluations, "generations": strategy.generation,
            "out_dir": str(out)}
