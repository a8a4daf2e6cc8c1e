"""Breeding operators of the search: functions of the space (or the family objective, which holds it), the
search's one ``random.Random`` and their knobs. They only draw; what a strategy keeps is up to the strategy.

- :func:`mutate_base`: crossover of two parent bases, then depth and op mutation;
- :func:`random_state` / :func:`random_family`: in-band scaling states, and a base with a whole chain;
- :func:`propose_unique`: bounded rejection sampling of feasible candidates never proposed before.
"""
from __future__ import annotations

import math
import random
from typing import Callable, Sequence

from scalenas.search.candidate import Candidate
from scalenas.search.markov import State
from scalenas.search.objectives import FamilyObjective
from scalenas.spaces.arch import Base, sample_base
from scalenas.spaces.space import SearchSpace

FamilyKey = tuple[tuple[int, str], ...]


def mutate_base(space: SearchSpace, rng: random.Random, parents: Sequence[Base], depth_mutation: float,
                op_mutation: float) -> Base:
    """Uniform per-stage crossover of two parents, then depth +-1 per stage (probability ``depth_mutation``)
    and op resampling per layer (probability ``op_mutation``)."""
    a, b = rng.choice(parents), rng.choice(parents)
    layers = [list(a[i] if rng.random() < 0.5 else b[i]) for i in range(space.num_stages)]
    for i, st in enumerate(space.stages):
        if st.max_layers > 1 and rng.random() < depth_mutation:
            grow = len(layers[i]) == 1 or (len(layers[i]) < st.max_layers and rng.random() < 0.5)
            if grow:
                layers[i].append(rng.choice(st.ops))
            else:
                layers[i].pop()
        for j in range(len(layers[i])):
            if rng.random() < op_mutation:
                layers[i][j] = rng.choice(st.ops)
    return tuple(tuple(x) for x in layers)


def random_state(objective: FamilyObjective, rng: random.Random, base: Base, stage: int,
                 exclude: State | None = None) -> State:
    """A uniformly drawn feasible state of ``stage`` (any state if none is feasible), not ``exclude``."""
    feasible = objective.feasible_states(base, stage) if objective.stage_possible(base, stage) else []
    pool = [x for x in feasible if x != exclude] or \
        [x for x in objective.all_states(stage) if x != exclude] or [exclude]  # type: ignore[list-item]
    return rng.choice(pool)  # type: ignore[return-value]


def random_family(objective: FamilyObjective, rng: random.Random, base: Base | None = None,
                  chain_sampler: Callable[[Base], list[State]] | None = None) -> Candidate:
    """``base`` (None: a random one) with a chain from ``chain_sampler`` (None: uniform in-band states). The
    chain is only drawn with care (FLOPs tables) when the base can be feasible at all, which keeps rejected
    tries cheap."""
    if base is None:
        base = sample_base(objective.space, rng)
    n = objective.n
    if objective.base_promising(base, range(n + 1)):
        chain = chain_sampler(base) if chain_sampler is not None else \
            [random_state(objective, rng, base, s) for s in range(1, n + 1)]
    else:  # hopeless base: any chain, only kept if every try is as bad
        chain = [rng.choice(objective.all_states(s)) for s in range(1, n + 1)]
    return Candidate(base, ((0, 0, 0), *chain))


def propose_unique(objective: FamilyObjective, make: Callable[[], Candidate], count: int, seen: set[FamilyKey],
                   max_tries: int, batch: list[Candidate] | None = None) -> tuple[list[Candidate], int]:
    """(``batch`` extended by ``count`` new candidates from ``make``, give-ups): each new candidate is feasible
    and its family key not in ``seen`` (it is added there).

    Each one gets at most ``max_tries`` tries; when none is feasible the least-violating new one is kept and a
    give-up is counted, so an unreachable band never hangs the search.
    """
    out = batch if batch is not None else []
    gave_up = 0
    for _ in range(count):
        best: Candidate | None = None
        best_v = math.inf
        best_key = None
        for _ in range(max_tries):
            c = make()
            key = c.family_key(objective)
            if key in seen:
                continue
            v = objective.violation(c.members(objective))
            if v < best_v:
                best, best_v, best_key = c, v, key
            if v == 0.0:
                break
        if best is None or best_v > 0.0:
            gave_up += 1
        if best is not None:
            seen.add(best_key)  # type: ignore[arg-type]
            out.append(best)
    return out, gave_up
