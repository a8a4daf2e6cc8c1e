"""The joint search of a base network and its scaling chain (docs/method.md), as ask/tell strategies: the
search options, and :class:`Strategy` with ask/tell, the budget, de-duplication and ranking.

An individual (:class:`~scalenas.search.candidate.Candidate`) is a base network g plus one scaling state per
scaling stage. Its family is the subnets s = 0..S: stage 0 is g itself at (d=1, w=1, r=base), stage s >= 1 is g
at (D_s[i], W_s[j], R_s[k]). A strategy proposes a generation of candidates, the caller evaluates the subnets
they need (:meth:`ask`) and reports the metric of each (:meth:`tell`: holdout top-1 or log-loss, optionally with
their noise); the strategy then selects, learns and breeds the next generation. The same object is driven by
:func:`scalenas.search.driver.run_search` (a plain loop), by the lead's Ray evaluator and by Ray Tune
(:mod:`scalenas.search.tune`). What a family is worth (FLOPs bands, fitness, the selection order) is
:class:`scalenas.search.objectives.FamilyObjective`; what was evaluated and scored, and the report rows, are a
:class:`scalenas.search.results.SearchResults`; the breeding operators are the functions of
:mod:`scalenas.search.operators`; the strategies themselves are in :mod:`scalenas.search.strategies`.

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
from typing import Any, Callable, Iterable, Mapping, Sequence

from scalenas.errors import ScalenasError
from scalenas.options import check_options, option
from scalenas.search import operators
from scalenas.search.candidate import Candidate, built_key
from scalenas.search.objectives import FamilyObjective, LatencyTargets
from scalenas.search.results import METRICS, SearchResults
from scalenas.spaces.arch import Base, Subnet, parse_subnet
from scalenas.spaces.space import SearchSpace
from scalenas.spaces.targets import check_targets, check_tolerance

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
TIE_BREAKS = ("target", "cheaper")  # within a tie group: members nearest their FLOPs targets, or the cheapest


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
    tolerance: float = option(0.1, "relative tolerance around each stage's target (FLOPs, and latency when "
                              "searching by latency)", min=0.0, max=1.0, min_open=True, max_open=True)
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


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(rng: random.Random, state: Sequence[Any]) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


# ============================================================================================== strategy
class Strategy:
    """Ask/tell search over candidates; subclasses decide what each generation proposes.

    Subclasses implement :meth:`_propose` (the next generation's candidates, drawing only from ``self.rng``,
    usually with the functions of :mod:`scalenas.search.operators` through :meth:`propose_unique`),
    :meth:`_after_generation` (selection / learning once a generation is evaluated) and the ``_extra_state``
    pair for whatever they keep. What was evaluated and scored is in :attr:`results`
    (:class:`~scalenas.search.results.SearchResults`).
    """

    name = ""

    def __init__(self, space: SearchSpace, targets: Sequence[int] | None, options: SearchOptions | None = None,
                 latency: LatencyTargets | None = None) -> None:
        """``targets``: FLOPs targets of stages 0..S; ``latency``: latency targets and predictor (both must hold
        when both are given; either may be left out, not both)."""
        self.space = space
        self.targets = [int(t) for t in targets or ()]
        self.latency = latency
        self.latency_targets = [float(t) for t in latency.targets] if latency else None
        if not self.targets and latency is None:
            raise ScalenasError("a search needs FLOPs targets, latency targets or both")
        if self.targets and latency is not None and len(self.targets) != len(latency.targets):
            raise ScalenasError(f"{len(self.targets)} FLOPs targets but {len(latency.targets)} latency targets")
        self.n = len(self.targets or latency.targets) - 1  # S: scaling stages searched
        options = options or SearchOptions()
        self.options = options.resolved(self.n)
        if self.targets:
            check_targets(space, self.targets, self.options.tolerance)
        self.objective = self._objective()
        self.results = self._new_results()
        self.rng = random.Random(self.options.seed)
        self.generation = 0
        self.done = False
        self.population: list[Candidate] = []  # the current generation, awaiting evaluation
        self.gave_up = 0  # constrained samplers that gave up while breeding the current generation
        self.budget_hit = False
        self._seen: set[tuple[tuple[int, str], ...]] = set()  # family keys ever proposed
        self._gen_started: float | None = None
        self._evals_at_start = 0
        self._setup()
        self._begin(self._propose())
        self._maybe_finish()
        self._publish()

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

    def transition_report(self) -> dict[str, Any] | None:
        """pi and T_s with labels, for strategies that learn a Markov chain."""
        return None

    def _pick_best(self) -> None:
        """Name the best family to :attr:`results`: by default the best-ranked evaluated family."""
        families = [c for _, c in self.results.archive if c.is_family]
        c = self.rank(families)[0] if families else None
        self.results.pick(None if c is None else [(c.base, s, c.states[s]) for s in range(self.n + 1)])  # type: ignore

    # ------------------------------------------------------------------ members, de-duplication and ranking
    def _objective(self) -> FamilyObjective:
        return FamilyObjective(self.space, self.targets, self.options.tolerance,
                               self.options.stage_weights, self.latency)  # type: ignore[arg-type]

    def _new_results(self) -> SearchResults:
        return SearchResults(self.objective, self.options.metric, self.options.tie_tolerance, self.name)

    def family_key(self, c: Candidate) -> tuple[tuple[int, str], ...]:
        return c.family_key(self.objective)

    def violation(self, c: Candidate) -> float:
        """Total relative FLOPs violation over the candidate's stages (0: feasible)."""
        return self.objective.violation(c.members(self.objective))

    def feasible(self, c: Candidate) -> bool:
        return self.violation(c) == 0.0

    def cost(self, c: Candidate) -> float:
        """The tie-break cost (lower first) of ``tie_break``: :meth:`FamilyObjective.cost`."""
        return self.objective.cost(c.members(self.objective), self.options.tie_break)

    def rank(self, candidates: Iterable[Candidate]) -> list[Candidate]:
        """Candidates best first, without duplicate families.

        Feasibility-first (:meth:`FamilyObjective.selection_key`; stable: exact ties keep their order). Then,
        with a positive :meth:`SearchResults.tie_width` w, the feasible candidates are taken in tie groups: the
        best one left and every one whose fitness is within w of it (strictly less than w below it); a group is
        ordered by :meth:`cost` (``tie_break``: nearest the FLOPs targets, or the cheaper, first), then by
        fitness, then by the order given. Deterministic.
        """
        unique: dict[tuple[tuple[int, str], ...], Candidate] = {}
        for c in candidates:
            unique.setdefault(self.family_key(c), c)
        key = self.objective.selection_key
        scored = [(c, self.violation(c), self.results.fitness(c)) for c in unique.values()]
        ordered = sorted(scored, key=lambda t: key(t[1], t[2]))
        width = self.results.tie_width() if ordered else 0.0
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

    def propose_unique(self, count: int, make: Callable[[], Candidate],
                       batch: list[Candidate] | None = None) -> list[Candidate]:
        """``count`` new candidates from ``make``, each feasible and never proposed before
        (:func:`scalenas.search.operators.propose_unique` with ``max_tries``; give-ups are counted in ``gave_up``)."""
        out, gave_up = operators.propose_unique(self.objective, make, count, self._seen, self.options.max_tries,
                                                batch)
        self.gave_up += gave_up
        return out

    def mutate(self, parents: Sequence[Base]) -> Base:
        """A base bred from ``parents`` (:func:`scalenas.search.operators.mutate_base` at this search's rates)."""
        return operators.mutate_base(self.space, self.rng, parents, self.options.depth_mutation,
                                     self.options.op_mutation)

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
        cache = self.results.cache
        remaining = math.inf if self.options.budget is None else self.options.budget - len(cache)
        chosen: list[Candidate] = []
        new: set[str] = set()
        for c in candidates:
            missing = {k for _, k in self.family_key(c) if k not in cache and k not in new}
            if len(new) + len(missing) > remaining:
                self.budget_hit = True  # keep looking: a later candidate may reuse cached subnets
                continue
            chosen.append(c)
            new |= missing
        self.population = chosen
        self._gen_started = None
        self._evals_at_start = len(cache)
        if not chosen:
            self.done = True

    def _missing(self) -> list[Subnet]:
        out: list[Subnet] = []
        seen: set[str] = set()
        for c in self.population:
            for _, sub in c.members(self.objective):
                k = built_key(self.space, sub)
                if k not in self.results.cache and k not in seen:
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
            if key in self.results.cache:
                continue  # already known (a duplicate report): the first value stands
            if key not in pending:
                raise ScalenasError(f"result for a subnet the search did not ask for: {sub.short()}")
            self.results.record(key, sub, value)
        self._maybe_finish()
        self._publish()

    def _maybe_finish(self) -> None:
        # Bounded: every pass either stops or advances the generation counter toward options.generations.
        while not self.done and not self._missing():
            self._finish_generation()

    def _finish_generation(self) -> None:
        evaluated = self.population
        self.results.archive.extend((self.generation, c) for c in evaluated)
        self._after_generation(evaluated)
        self._publish()
        new_evals = len(self.results.cache) - self._evals_at_start
        elapsed = None if self._gen_started is None else time.monotonic() - self._gen_started
        self.results.log_generation(self.generation, evaluated, self.gave_up, (new_evals / elapsed) if elapsed
                                    else None)
        self.generation += 1
        self.population = []
        exhausted = self.options.budget is not None and len(self.results.cache) >= self.options.budget
        if self.generation >= self.max_generations() or exhausted or self.budget_hit or self._is_finished():
            self.done = True
            return
        self.gave_up = 0
        self._begin(self._propose())

    def _publish(self) -> None:
        """Hand :attr:`results` what only the strategy knows: its best family and what it learned."""
        self._pick_best()
        self.results.transitions = self.transition_report()

    # ------------------------------------------------------------------ results
    def best(self) -> dict[str, Any]:
        """:meth:`SearchResults.best`: the best family (base, chain, rows per stage, fitness and its noise)."""
        self._publish()
        return self.results.best()

    @property
    def evaluations(self) -> int:
        """Unique subnet evaluations so far (the budget's unit)."""
        return len(self.results.cache)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The whole search state, JSON-able (NaN stored as null)."""
        results = self.results.state_dict()
        return {
            "format": STATE_FORMAT, "strategy": self.name, "space": self.space.name, "targets": self.targets,
            "latency_targets": self.latency_targets,
            "options": self.options.to_dict(), "rng": _rng_state(self.rng), "generation": self.generation,
            "done": self.done, "budget_hit": self.budget_hit, "gave_up": self.gave_up,
            "evaluations": self.evaluations,
            "cache": results["cache"],
            "metrics": results["metrics"],
            "population": [c.to_dict() for c in self.population],
            "archive": results["archive"],
            "history": results["history"],
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`. The state's options win (a warning names differences)."""
        if state.get("format") != STATE_FORMAT:
            raise ScalenasError(f"search state format {state.get('format')!r} is not supported "
                                f"(expected {STATE_FORMAT})")
        for field_name, mine in (("strategy", self.name), ("space", self.space.name), ("targets", self.targets),
                                 ("latency_targets", self.latency_targets)):
            if state.get(field_name) != mine:
                raise ScalenasError(f"cannot resume: the saved search has {field_name} {state.get(field_name)!r}, "
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
        self.results = self._new_results()
        self.results.load_state_dict(state)
        self.population = [Candidate.from_dict(c) for c in state["population"]]
        self._seen = {self.family_key(c) for c in self.population} | \
            {self.family_key(c) for _, c in self.results.archive}
        self._gen_started = None
        self._evals_at_start = len(self.results.cache)
        self._load_extra_state(state.get("extra", {}))
        self._publish()

    def _cands(self, items: Iterable[Mapping[str, Any]]) -> list[Candidate]:
        return [Candidate.from_dict(c) for c in items]
