"""The parts a strategy is built from: SearchResults, the breeding operators, and a sixth strategy in a page."""
from __future__ import annotations

import functools
import json
import math
import random
from typing import Any

import pandas as pd
import pytest

from scalenas.errors import ScalenasError
from scalenas.report.search_report import write_reports
from scalenas.search.candidate import Candidate, built_key
from scalenas.search.driver import run_search
from scalenas.search.objectives import FamilyObjective
from scalenas.search.operators import mutate_base, propose_unique, random_family, random_state
from scalenas.search.results import SearchResults
from scalenas.search.strategy import SearchOptions, Strategy
from scalenas.spaces.arch import Subnet, parse_subnet, sample_base
from scalenas.spaces.flops import subnet_flops_params
from scalenas.spaces.space import load_space
from scalenas.spaces.targets import stage_targets

SPACE = load_space("digits-tiny")
TARGETS = stage_targets(SPACE, "4.5M")
OBJECTIVE = FamilyObjective(SPACE, TARGETS, 0.1, [0.0, 1.0, 1.0, 1.0])


def toy(sub: Subnet) -> dict[str, float]:
    flops, _ = subnet_flops_params(SPACE, sub)
    return {"top1": 0.3 + 0.04 * math.log(flops), "loss": 2.5 - 0.1 * math.log(flops), "top1_se": 0.02}


def family(seed: int) -> Candidate:
    return random_family(OBJECTIVE, random.Random(seed))


# ------------------------------------------------------------------------------------------ SearchResults
def test_results_record_score_measures_and_fitness():
    res = SearchResults(OBJECTIVE, metric="loss", strategy="none")
    c = family(0)
    members = c.members(OBJECTIVE)
    for i, (s, sub) in enumerate(members):
        value = None if i == 1 else (toy(sub) if i else toy(sub)["loss"])  # member 1 failed, member 0 a number
        res.record(built_key(SPACE, sub), sub, value)
    x0, x1, x2 = c.states[0], c.states[1], c.states[2]
    assert res.score(c.base, 0, x0) == pytest.approx(-toy(members[0][1])["loss"])  # loss scored as -loss
    assert math.isnan(res.score(c.base, 1, x1))  # failed: NaN, never re-evaluated
    assert res.measures(c.base, 0, x0) == {"top1": None, "loss": pytest.approx(toy(members[0][1])["loss"]),
                                           "top1_se": None, "loss_se": None}
    assert res.top1(c.base, 2, x2) == pytest.approx(toy(members[2][1])["top1"])
    assert math.isnan(res.noise(c.base, 2, x2))  # no loss_se reported
    assert math.isnan(res.fitness(c))  # a failed member makes the family's fitness NaN
    assert res.evaluations == len(members) and res.tie_width() == 0.0
    with pytest.raises(ScalenasError, match="has no 'loss'"):
        res.record("k", members[0][1], {"top1": 0.5})


def test_results_best_is_the_picked_family_and_state_round_trips():
    res = SearchResults(OBJECTIVE, strategy="none", tie_tolerance=0.01)
    assert res.best()["family"] == [] and res.best()["strategy"] == "none"
    c = family(1)
    for _, sub in c.members(OBJECTIVE):
        res.record(built_key(SPACE, sub), sub, toy(sub))
    res.archive.append((0, c))
    res.pick([(c.base, s, c.states[s]) for s in c.stages])
    res.log_generation(0, [c], gave_up=0, evaluations_per_s=None)
    best = res.best()
    assert [r["stage"] for r in best["family"]] == [0, 1, 2, 3] and best["fitness"] == pytest.approx(res.fitness(c))
    assert best["fitness_noise"] == pytest.approx(0.02) and "bases" not in best
    assert res.history[0]["best_fitness"] == best["fitness"] and res.history[0]["tie_width"] == 0.01
    assert [r["candidate"] for r in res.pareto_rows()] == [0, 0, 0, 0]
    again = SearchResults(OBJECTIVE, strategy="none", tie_tolerance=0.01)
    again.load_state_dict(json.loads(json.dumps(res.state_dict())))
    again.pick([(c.base, s, c.states[s]) for s in c.stages])
    assert again.best() == best and again.pareto_rows() == res.pareto_rows() and again.history == res.history


# ------------------------------------------------------------------------------------------ operators
def test_operators_draw_only_from_the_rng_given():
    parents = [sample_base(SPACE, random.Random(i)) for i in range(3)]
    a = [mutate_base(SPACE, random.Random(7), parents, 0.5, 0.5) for _ in range(2)]
    assert a[0] == a[1]  # same seed, same child
    for child in a:
        assert len(child) == SPACE.num_stages
        assert all(1 <= len(layers) <= st.max_layers and set(layers) <= set(st.ops)
                   for layers, st in zip(child, SPACE.stages))
    base = parents[0]
    for stage in range(1, 4):
        x = random_state(OBJECTIVE, random.Random(stage), base, stage)
        if OBJECTIVE.feasible_states(base, stage):
            assert OBJECTIVE.stage_table(base, stage)[x] == 0  # in band whenever the band is reachable
        assert random_state(OBJECTIVE, random.Random(0), base, stage, exclude=x) != x
    assert family(3) == family(3) and family(3).is_family


def test_propose_unique_skips_seen_families_and_counts_give_ups():
    seen: set = set()
    batch, gave_up = propose_unique(OBJECTIVE, functools.partial(family, 5), 1, seen, max_tries=4)
    assert len(batch) == 1 and batch[0].family_key(OBJECTIVE) in seen
    # the same family over and over: no new one in 4 tries, nothing proposed, one give-up
    again, gave_up = propose_unique(OBJECTIVE, functools.partial(family, 5), 1, seen, max_tries=4)
    assert again == [] and gave_up == 1
    rng = random.Random(0)
    hopeless = FamilyObjective(SPACE, [t * 50 for t in TARGETS], 0.01, [0.0, 1.0, 1.0, 1.0])
    out, gave_up = propose_unique(hopeless, lambda: random_family(hopeless, rng), 2, set(), max_tries=3)
    assert len(out) == 2 and gave_up == 2  # no feasible one: the least violating is kept, and counted


# ------------------------------------------------------------------------------------------ a sixth strategy
class HillClimb(Strategy):
    """Keep the best family; each generation, mutate its base and redraw its chain."""

    name = "hill"

    def _setup(self) -> None:
        self.leader: Candidate | None = None

    def _propose(self) -> list[Candidate]:
        if self.leader is None:
            return self.propose_unique(self.options.population, lambda: random_family(self.objective, self.rng))
        parents = [self.leader.base]
        return self.propose_unique(self.options.population,
                                   lambda: random_family(self.objective, self.rng, self.mutate(parents)))

    def _after_generation(self, evaluated: list[Candidate]) -> None:
        self.leader = self.rank(([self.leader] if self.leader else []) + evaluated)[0]

    def _extra_state(self) -> dict[str, Any]:
        return {"leader": None if self.leader is None else self.leader.to_dict()}

    def _load_extra_state(self, data: dict[str, Any]) -> None:
        self.leader = None if data["leader"] is None else Candidate.from_dict(data["leader"])


def test_a_sixth_strategy_fits_in_a_page_and_gets_budget_reports_and_resume(tmp_path):
    opts = {"population": 4, "generations": 4, "elites": 2, "seed": 1, "budget": 40}
    evaluate = lambda subs: [toy(s) for s in subs]  # noqa: E731
    full = run_search(SPACE, _hill(opts), evaluate, tmp_path / "full", progress=False,
                      on_generation=functools.partial(write_reports, tmp_path / "full"))
    assert full["evaluations"] <= 40 and full["feasible"] and full["strategy"] == "hill"
    pareto = pd.read_csv(tmp_path / "full" / "pareto.csv")
    built = {built_key(SPACE, parse_subnet(json.loads(a), SPACE)) for a in pareto["arch"]}
    assert len(built) == full["evaluations"] and pareto["is_pareto"].any()  # each network evaluated once
    assert json.loads((tmp_path / "full" / "best.json").read_text())["strategy"] == "hill"
    part = _hill(opts)
    for _ in range(2):
        part.tell({s.to_json(): toy(s) for s in part.ask()})
    resumed = _hill(opts)
    resumed.load_state_dict(json.loads(json.dumps(part.state_dict())))
    while not resumed.done:
        resumed.tell({s.to_json(): toy(s) for s in resumed.ask()})
    assert json.dumps(resumed.best(), sort_keys=True) == json.dumps(
        {k: v for k, v in full.items() if k not in ("evaluations", "generations", "out_dir")}, sort_keys=True)


def _hill(opts: dict[str, Any]) -> HillClimb:
    return HillClimb(SPACE, TARGETS, SearchOptions(**opts))
