"""The joint search of a base network and its scaling chain (docs/method.md), as ask/tell strategies.

An individual (:class:`Candidate`) is a base network g plus one scaling state per scaling stage. Its family is
the subnets s = 0..S: stage 0 is g itself at (d=1, w=1, r=base), stage s >= 1 is g at (D_s[i], W_s[j], R_s[k]).
A strategy proposes a generation of candidates, the caller evaluates the subnets they need (:meth:`ask`) and
reports the metric of each (:meth:`tell`: holdout top-1 or log-loss, optionally with their noise); the strategy
then selects, learns and breeds the next generation. The same object is driven by
:func:`scalenas.search.driver.run_search` (a plain loop), by the lead's Ray evaluator and by Ray Tune
(:mod:`scalenas.search.tune`). What a family is worth (FLOPs bands,
fitness, the selection order) is :class:`scalenas.search.objectives.FamilyObjective`; the strategies themselves
are in :mod:`scalenas.search.strategies`.

Design choices that keep searches comparable and reproducible:

- Every strategy counts the same budget: unique subnet evaluations, keyed by the BUILT architecture
  (``derive_subnet(...).key()``), so two (d, w, r) that build the same network cost one evaluation, and no
  subnet is ever evaluated twice in a run. No family (tuple of built keys) is proposed twice either.
- Selection is feasibility-first (:meth:`FamilyObjective.selection_key`) over the stages a candidate covers.
  Feasible candidates whose fitness differs by less than the tie width (``tie_tolerance``, by default the
  measured noise of the evaluations) are ties, won by the candidate whose members lie nearest their FLOPs
  targets (``tie_break="target"``; ``"cheaper"``: the cheaper candidate) (:meth:`Strategy.rank`).
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
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from scalenas.errors import ScalenasError
from scalenas.options import check_options, option
from scalenas.search.markov import State
from scalenas.search.objectives import FamilyObjective
from scalenas.spaces.arch import Base, Subnet, base_to_json, derive_subnet, parse_subnet, sample_base
from scalenas.spaces.flops import subnet_flops_params
from scalenas.spaces.space import SearchSpace, load_space
from scalenas.spaces.targets import check_targets, check_tolerance

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
TIE_BREAKS = ("target", "cheaper")  # within a tie group: members nearest their FLOPs targets, or the cheapest
METRICS = ("top1", "loss")  # the per-member score: holdout top-1, or holdout log-loss (score = -loss)
MEASURES = ("top1", "loss", "top1_se", "loss_se")  # what an evaluation may report per subnet


# ============================================================================================== options
@dataclass
class SearchOptions:
    """Every knob of the search; the resolved values are recorded in ``state.json``."""

    population: int = option(16, "new candidates per generation (per stage for independent)", min=1)
    generations: int = option(10, "generations to run (the search also stops when the budget is spent)", min=1)
    elites: int = option(4, "candidates kept as parents and for re-estimating the Markov chain", min=1)
    matrix_lr: float = option(0.5, "EMA rate of the transition counts toward the elites' counts", min=0.0,
                              max=1.0, min_open=True)
    smoothing: float = option(0.5, "additive smoothing of the counts: no transition ever has probability 0",
                              min=0.0, min_open=True)
    chain_sample_prob: float = option(0.5, "child's chain sampled from the Markov chain (else one parent state "
                                      "mutated)", min=0.0, max=1.0)
    keep_base_prob: float = option(0.5, "markov: a child keeps its parent's base and Gibbs-resamples one stage's "
                                   "state from the chain (one new evaluation); else the base is bred", min=0.0,
                                   max=1.0)
    depth_mutation: float = option(0.2, "per searchable stage: probability of depth +-1", min=0.0, max=1.0)
    op_mutation: float = option(0.1, "per layer: probability of resampling its op", min=0.0, max=1.0)
    tolerance: float = option(0.1, "relative FLOPs tolerance around each stage's target", min=0.0, max=1.0,
                              min_open=True, max_open=True)
    stage_weights: list[float] | None = option(None, "fitness weights of stages 0..S (None: 0 for s=0, 1 "
                                               "otherwise)", flag=False)
    seed: int = option(0, "search seed (python RNG of the strategy)")
    budget: int | None = option(None, "max unique subnet evaluations (None: only the generations limit)", min=1)
    max_tries: int = option(100, "tries of a constrained sampler before it gives up (and reports it)", min=1)
    alternate_base_generations: int = option(2, "alternate: base generations between two scaling grid searches",
                                             min=1)
    metric: str = option("top1", "per-member score: holdout top-1, or holdout log-loss (fitness = minus the "
                         "weighted mean loss, so higher is better); a search keeps its metric", choices=METRICS)
    tie_tolerance: float | None = option(None, "feasible candidates whose fitness differs by less than this tie; "
                                         "tie_break orders them (None: the measured noise, the median bootstrap SE "
                                         "of the evaluated subnets; 0: exact order)", min=0.0)
    tie_break: str = option("target", "which candidate of a tie comes first: 'target', the family whose members lie "
                            "nearest their FLOPs targets (summed |log FLOPs/target|), or 'cheaper', the lowest "
                            "FLOPs relative to the targets", choices=TIE_BREAKS)

    def resolved(self, n_stages: int) -> "SearchOptions":
        """A validated copy with the stage weights filled in for stages 0..``n_stages``."""
        o = check_options(dataclasses.replace(self), "search option")
        if o.elites > o.population:
            raise ScalenasError(f"search option elites ({o.elites}) must not exceed population ({o.population})")
        o.tolerance = check_tolerance(o.tolerance)
        if o.stage_weights is None:
            o.stage_weights = [0.0] + [1.0] * n_stages
        try:
            w = [float(x) for x in o.stage_weights]
        except (TypeError, ValueError):
            w = []
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
def _built_key(space: SearchSpace, subnet: Subnet) -> str:
    # A SearchSpace hashes and compares by its content_key, so this cache is keyed on (content, subnet): a space
    # rebuilt from a checkpoint (no YAML on disk, or num_classes fitted to the data) is never re-read by path.
    return derive_subnet(space, subnet).key()


def built_key(space: SearchSpace, subnet: Subnet) -> str:
    """Dedupe key of the network ``subnet`` builds (cached by the space's content_key and the subnet)."""
    return _built_key(load_space(space), subnet)


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
        self.objective = self._objective()
        self.rng = random.Random(self.options.seed)
        self.generation = 0
        self.done = False
        self.cache: dict[str, float] = {}  # built key -> score: top-1 or -loss, higher is better (NaN: failed)
        self.metrics: dict[str, dict[str, float]] = {}  # built key -> the MEASURES an evaluation reported
        self.population: list[Candidate] = []  # the current generation, awaiting evaluation
        self.archive: list[tuple[int, Candidate]] = []  # (generation, candidate) of every evaluated candidate
        self.history: list[dict[str, Any]] = []
        self.gave_up = 0  # constrained samplers that gave up while breeding the current generation
        self.budget_hit = False
        self._seen: set[tuple[tuple[int, str], ...]] = set()  # family keys ever proposed
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

    # ------------------------------------------------------------------ subnets and the objective
    def _objective(self) -> FamilyObjective:
        return FamilyObjective(self.space, self.targets, self.options.tolerance,
                               self.options.stage_weights)  # type: ignore[arg-type]

    def subnet(self, base: Base, stage: int, state: State) -> Subnet:
        return self.objective.subnet(base, stage, state)

    def subnets(self, c: Candidate) -> list[tuple[int, Subnet]]:
        return [(s, self.subnet(c.base, s, c.states[s])) for s in c.stages]  # type: ignore[arg-type]

    def family_key(self, c: Candidate) -> tuple[tuple[int, str], ...]:
        return tuple((s, built_key(self.space, sub)) for s, sub in self.subnets(c))

    def _key(self, base: Base, stage: int, state: State) -> str:
        return built_key(self.space, self.subnet(base, stage, state))

    def score(self, base: Base, stage: int, state: State) -> float | None:
        """The cached score of one subnet (higher is better: top-1, or -loss with metric ``loss``), None if not
        evaluated, NaN if its evaluation failed."""
        return self.cache.get(self._key(base, stage, state))

    def measures(self, base: Base, stage: int, state: State) -> dict[str, float | None]:
        """``top1``, ``loss``, ``top1_se``, ``loss_se`` of one subnet (None: not evaluated, failed or not
        reported; an evaluator that reports plain numbers gives only the search's metric)."""
        key = self._key(base, stage, state)
        out: dict[str, float | None] = dict.fromkeys(MEASURES)
        out.update(self.metrics.get(key, {}))
        metric, value = self.options.metric, self.cache.get(key)
        if out[metric] is None and value is not None and math.isfinite(value):
            out[metric] = value if metric == "top1" else -value
        return out

    def top1(self, base: Base, stage: int, state: State) -> float | None:
        """The top-1 of one subnet, None if not evaluated (or not reported), NaN if its evaluation failed."""
        if self.options.metric == "top1":
            return self.score(base, stage, state)
        return self.metrics.get(self._key(base, stage, state), {}).get("top1")

    def noise(self, base: Base, stage: int, state: State) -> float:
        """The standard error of one subnet's score (the evaluator's bootstrap SE of the metric), NaN if unknown."""
        se = self.metrics.get(self._key(base, stage, state), {}).get(f"{self.options.metric}_se")
        return math.nan if se is None else se

    def violation(self, c: Candidate) -> float:
        """Total relative FLOPs violation over the candidate's stages (0: feasible)."""
        return self.objective.violation(self.subnets(c))

    def fitness(self, c: Candidate) -> float:
        """The objective's weighted mean score over the candidate's stages (NaN: a stage failed or is missing)."""
        return self.objective.fitness({s: self.score(c.base, s, c.states[s]) for s in c.stages})  # type: ignore

    def fitness_noise(self, c: Candidate) -> float:
        """The noise of :meth:`fitness` (:meth:`FamilyObjective.fitness_noise`; NaN when a member's is unknown)."""
        return self.objective.fitness_noise({s: self.noise(c.base, s, c.states[s]) for s in c.stages})  # type: ignore

    def cost(self, c: Candidate) -> float:
        """The tie-break cost (lower first) of ``tie_break``: :meth:`FamilyObjective.cost`."""
        return self.objective.cost(self.subnets(c), self.options.tie_break)

    def feasible(self, c: Candidate) -> bool:
        return self.violation(c) == 0.0

    def tie_width(self) -> float:
        """Fitness differences below this are ties: ``tie_tolerance`` if set, else the measured noise, the median
        standard error of the metric over the subnets evaluated so far (0 while none reported one)."""
        if self.options.tie_tolerance is not None:
            return float(self.options.tie_tolerance)
        name = f"{self.options.metric}_se"
        errors = [m[name] for k, m in self.metrics.items()
                  if name in m and math.isfinite(self.cache.get(k, math.nan))]
        return float(np.median(errors)) if errors else 0.0

    def rank(self, candidates: Iterable[Candidate]) -> list[Candidate]:
        """Candidates best first, without duplicate families.

        Feasibility-first (:meth:`FamilyObjective.selection_key`; stable: exact ties keep their order). Then,
        with a positive :meth:`tie_width` w, the feasible candidates are taken in tie groups: the best one left
        and every one whose fitness is within w of it (strictly less than w below it); a group is ordered by
        :meth:`cost` (``tie_break``: nearest the FLOPs targets, or the cheaper, first), then by fitness, then by
        the order given. Deterministic.
        """
        unique: dict[tuple[tuple[int, str], ...], Candidate] = {}
        for c in candidates:
            unique.setdefault(self.family_key(c), c)
        key = self.objective.selection_key
        scored = [(c, self.violation(c), self.fitness(c)) for c in unique.values()]
        ordered = sorted(scored, key=lambda t: key(t[1], t[2]))
        width = self.tie_width() if ordered else 0.0
        if width <= 0:
            return [c for c, _, _ in ordered]
        head = [t for t in ordered if t[1] == 0.0 and math.isfinite(t[2])]  # a prefix of ``ordered``
        out: list[Candidate] = []
        i = 0
        while i < len(head):
            top = head[i][2]
            j = i + 1
            while j < len(head) and head[j][2] > top - width:
                j += 1
            out += sorted((c for c, _, _ in head[i:j]), key=self.cost)  # stable: fitness order within a cost
            i = j
        return out + [c for c, _, _ in ordered[len(head):]]

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
        obj = self.objective
        feasible = obj.feasible_states(base, stage) if obj.stage_possible(base, stage) else []
        pool = [x for x in feasible if x != exclude] or \
            [x for x in obj.all_states(stage) if x != exclude] or [exclude]  # type: ignore[list-item]
        return self.rng.choice(pool)  # type: ignore[return-value]

    def random_family(self, chain_sampler: Callable[[Base], list[State]] | None = None,
                      parents: Sequence[Base] | None = None) -> Candidate:
        """A base (random, or bred from ``parents``) with a chain; the chain is only drawn with care
        (FLOPs tables) when the base can be feasible at all, which keeps rejected tries cheap."""
        base = self.mutate_base(parents) if parents else sample_base(self.space, self.rng)
        stages = range(self.n + 1)
        if chain_sampler is not None and self.objective.base_promising(base, stages):
            chain = chain_sampler(base)
        elif chain_sampler is None and self.objective.base_promising(base, stages):
            chain = [self.random_state(base, s) for s in range(1, self.n + 1)]
        else:  # hopeless base: any chain, only kept if every try is as bad
            chain = [self.rng.choice(self.objective.all_states(s)) for s in range(1, self.n + 1)]
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

    def tell(self, results: Mapping[str, float | Mapping[str, Any] | None]) -> None:
        """Record the result of each subnet JSON; finishes the generation once all are in.

        A result is the value of the search's metric (a number: top-1, or the loss with metric ``loss``), or
        a mapping with that metric and optionally the others of ``top1``, ``loss``, ``top1_se``, ``loss_se``
        (what :class:`~scalenas.search.fitness.SupernetEvaluator` returns; other keys are ignored). None or NaN
        (also as the mapping's metric): the evaluation failed.
        """
        pending = {built_key(self.space, s): s for s in self._missing()}
        for text, value in results.items():
            sub = parse_subnet(json.loads(text), self.space, source="result")
            key = built_key(self.space, sub)
            if key in self.cache:
                continue  # already known (a duplicate report): the first value stands
            if key not in pending:
                raise ScalenasError(f"result for a subnet the search did not ask for: {sub.short()}")
            score, measured = self._score(value, sub)
            self.cache[key] = score
            if measured:
                self.metrics[key] = measured
        self._maybe_finish()

    def _score(self, value: float | Mapping[str, Any] | None, sub: Subnet) -> tuple[float, dict[str, float]]:
        """(score, finite measures) of one result; the score is higher-is-better (top-1, or -loss)."""
        metric = self.options.metric
        measured: dict[str, float] = {}
        if isinstance(value, Mapping):
            if metric not in value:
                raise ScalenasError(f"result for {sub.short()} has no {metric!r} (the search's metric); it has "
                                    f"{', '.join(map(str, value)) or 'nothing'}")
            for name in MEASURES:
                x = value.get(name)
                if x is not None and math.isfinite(float(x)):
                    measured[name] = float(x)
            raw = measured.get(metric)
        else:
            raw = None if value is None else float(value)
        if raw is None or not math.isfinite(raw):
            return math.nan, measured
        return (raw if metric == "top1" else -raw), measured

    def _maybe_finish(self) -> None:
        # Bounded: every pass either stops or advances the generation counter toward options.generations.
        while not self.done and not self._missing():
            self._finish_generation()

    def _finish_generation(self) -> None:
        evaluated = self.population
        self.archive.extend((self.generation, c) for c in evaluated)
        self._after_generation(evaluated)
        fits = np.array([self.fitness(c) for c in evaluated]) if evaluated else np.array([math.nan])
        noises = np.array([self.fitness_noise(c) for c in evaluated]) if evaluated else np.array([math.nan])
        best = self.best()
        new_evals = len(self.cache) - self._evals_at_start
        elapsed = None if self._gen_started is None else time.monotonic() - self._gen_started
        self.history.append({
            "generation": self.generation,
            "best_fitness": best.get("fitness"),
            "fitness_noise": best.get("fitness_noise"),
            "mean_fitness": float(np.nanmean(fits)) if np.isfinite(fits).any() else None,
            "mean_fitness_noise": float(np.mean(noises[np.isfinite(noises)])) if np.isfinite(noises).any() else None,
            "tie_width": self.tie_width(),
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
        m = self.measures(base, stage, state)
        top1 = self.top1(base, stage, state)
        return {"stage": stage, "target_flops": self.targets[stage], "flops": flops, "params": params,
                "resolution": sub.resolution, "depth_mult": sub.depth, "width_mult": sub.width,
                "top1": None if top1 is None or math.isnan(top1) else top1, "top1_se": m["top1_se"],
                "loss": m["loss"], "loss_se": m["loss_se"],
                "feasible": self.objective.stage_violation(stage, flops) == 0.0, "arch": sub.to_json()}

    def _best_dict(self, members: list[tuple[Base, int, State]]) -> dict[str, Any]:
        """best() of a family given as (base, stage, state) per stage 0..S."""
        family = [self.stage_row(*m) for m in members]
        fitness = self.objective.fitness({s: self.score(b, s, x) for b, s, x in members})
        noise = self.objective.fitness_noise({s: self.noise(b, s, x) for b, s, x in members})
        chain = []
        for base, s, x in members[1:]:
            sc = self.space.scaling[s]
            chain.append({"stage": s, "index": list(x), "depth": sc.depth[x[0]], "width": sc.width[x[1]],
                          "resolution": sc.resolution[x[2]]})
        return {"strategy": self.name, "base": base_to_json(members[0][0]), "chain": chain, "family": family,
                "fitness": fitness if math.isfinite(fitness) else None,
                "fitness_noise": noise if math.isfinite(noise) else None, "metric": self.options.metric,
                "feasible": all(r["feasible"] for r in family)}

    def best(self) -> dict[str, Any]:
        """The best family: base, chain (indices and values), family rows per stage, fitness and its noise,
        the metric, feasibility.

        Empty family (and None fitness) if no complete family has been evaluated yet.
        """
        c = self.best_candidate()
        if c is None:
            return {"strategy": self.name, "base": None, "chain": [], "family": [], "fitness": None,
                    "fitness_noise": None, "metric": self.options.metric, "feasible": False}
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
            "metrics": self.metrics,
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
        if options.metric != self.options.metric:  # the cache holds scores of the saved metric
            raise ScalenasError(f"cannot resume: the saved search has metric {options.metric!r}, this one "
                                f"{self.options.metric!r} (a search keeps its metric)")
        differ = [k for k, v in options.to_dict().items() if getattr(self.options, k) != v]
        if differ:
            msg = f"resuming with the saved search options; these differ from the ones given: {', '.join(differ)}"
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        self.options = options
        self.objective = self._objective()  # the saved tolerance and stage weights; fresh FLOPs tables
        _set_rng_state(self.rng, state["rng"])
        self.generation = int(state["generation"])
        self.done = bool(state["done"])
        self.budget_hit = bool(state["budget_hit"])
        self.gave_up = int(state["gave_up"])
        self.cache = {k: (math.nan if v is None else float(v)) for k, v in state["cache"].items()}
        self.metrics = {k: {name: float(v) for name, v in m.items() if name in MEASURES}
                        for k, m in (state.get("metrics") or {}).items()}
        self.population = [Candidate.from_dict(c) for c in state["population"]]
        self.archive = [(int(g), Candidate.from_dict(c)) for g, c in state["archive"]]
        self.history = [dict(r) for r in state["history"]]
        self._seen = {self.family_key(c) for c in self.population} | {self.family_key(c) for _, c in self.archive}
        self._gen_started = None
        self._evals_at_start = len(self.cache)
        self._load_extra_state(state.get("extra", {}))

    def _cands(self, items: Iterable[Mapping[str, Any]]) -> list[Candidate]:
        return [Candidate.from_dict(c) for c in items]
