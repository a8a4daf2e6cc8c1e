"""The joint search: selection, deduplication, cache, budget, bounded rejection, resume, every strategy, reports.

The evaluator is a cheap deterministic function of the subnet (FLOPs, kernels, resolution); the supernet
evaluator is tested end to end elsewhere.
"""
from __future__ import annotations

import functools
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from scalenas.spaces.arch import Subnet, derive_subnet
from scalenas.errors import ScalenasError
from scalenas.search.driver import run_search
from scalenas.search.strategies import STRATEGIES, make_strategy
from scalenas.search.strategy import Candidate, SearchOptions
from scalenas.spaces.flops import subnet_flops_params
from scalenas.report.search_report import pareto_mask, write_reports
from scalenas.spaces.space import load_space
from scalenas.spaces.targets import stage_targets

SPACE = load_space("digits-tiny")
TARGETS = stage_targets(SPACE, "4.5M")
SMALL = dict(population=6, generations=3, elites=2, seed=3)


def score(sub: Subnet) -> float:
    """A smooth made-up 'top-1': more FLOPs help, large kernels help a bit, low resolution per width hurts."""
    flops, _ = subnet_flops_params(SPACE, sub)
    kernels = [SPACE.ops[op].kernel for layers in sub.base for op in layers]
    return 0.3 + 0.04 * math.log(flops) + 0.01 * float(np.mean(kernels)) - 0.001 * sub.resolution / sub.width


class Evaluator:
    """Counts every subnet it is asked to evaluate, by built architecture."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.calls = 0

    def __call__(self, subnets: list[Subnet]) -> list[float]:
        self.calls += 1
        self.keys += [derive_subnet(SPACE, s).key() for s in subnets]
        return [score(s) for s in subnets]


def drive(strategy, evaluator=None, generations: int | None = None) -> None:
    """ask → evaluate → tell, optionally stopping after ``generations`` generations."""
    evaluator = evaluator or Evaluator()
    for _ in range(1000):
        if strategy.done or (generations is not None and strategy.generation >= generations):
            return
        subs = strategy.ask()
        strategy.tell({s.to_json(): v for s, v in zip(subs, evaluator(subs))})
    raise AssertionError("search did not finish")


def comparable(strategy) -> tuple:
    return json.dumps(strategy.best(), sort_keys=True), json.dumps(strategy.results.pareto_rows(), sort_keys=True)


# ------------------------------------------------------------------------------------------ selection
def test_feasibility_first_ordering():
    st = make_strategy("markov", SPACE, TARGETS, SMALL)
    cands = st.population[:5]
    violation = dict(zip(cands, [0.0, 0.3, 0.0, 0.1, 0.1]))
    fitness = dict(zip(cands, [0.5, 0.99, 0.7, 0.2, 0.9]))
    st.violation = violation.__getitem__
    st.results.fitness = fitness.__getitem__
    ranked = st.rank(cands)
    # feasible by fitness, then infeasible by violation (ties by fitness); the best infeasible never wins
    assert ranked == [cands[2], cands[0], cands[4], cands[3], cands[1]]


def test_fitness_weights_and_family():
    st = make_strategy("markov", SPACE, TARGETS, {**SMALL, "stage_weights": [0, 1, 2, 3]})
    drive(st, generations=1)
    c = st.results.archive[0][1]
    vals = [score(sub) for _, sub in c.members(st.objective)]
    assert st.results.fitness(c) == pytest.approx((vals[1] + 2 * vals[2] + 3 * vals[3]) / 6)
    subs = c.members(st.objective)
    assert [s for s, _ in subs] == [0, 1, 2, 3]
    assert (subs[0][1].depth, subs[0][1].width, subs[0][1].resolution) == (1.0, 1.0, SPACE.base_resolution)
    for s, sub in subs[1:]:
        assert SPACE.stage_of(sub.depth, sub.width, sub.resolution) == s and sub.base == c.base


def test_default_options_recorded_in_state():
    st = make_strategy("markov", SPACE, TARGETS)
    opts = st.state_dict()["options"]
    assert opts == {**SearchOptions().to_dict(), "stage_weights": [0.0, 1.0, 1.0, 1.0]}
    assert opts["population"] == 16 and opts["tolerance"] == 0.1 and opts["budget"] is None


# ------------------------------------------------------------------------------------------ dedupe, cache, budget
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_no_subnet_or_family_evaluated_twice(name):
    ev = Evaluator()
    st = make_strategy(name, SPACE, TARGETS, {**SMALL, "generations": 4})
    drive(st, ev)
    assert st.done and ev.calls >= 2
    assert len(ev.keys) == len(set(ev.keys)) == st.evaluations
    families = [st.family_key(c) for _, c in st.results.archive]
    assert len(families) == len(set(families))
    assert st.ask() == []


def test_ask_never_returns_cached_subnets_and_is_idempotent():
    st = make_strategy("markov", SPACE, TARGETS, SMALL)
    first = st.ask()
    assert first == st.ask()
    keys = [derive_subnet(SPACE, s).key() for s in first]
    assert len(keys) == len(set(keys))
    half = first[: len(first) // 2]
    st.tell({s.to_json(): score(s) for s in half})
    rest = st.ask()
    assert rest == first[len(first) // 2:]
    # the largest stage-3 subnet is far outside its FLOPs band, so the search never asks for it
    sc = SPACE.scaling[3]
    other = Subnet(SPACE.name, tuple(("ir_k7",) * st_.max_layers for st_ in SPACE.stages), sc.depth[-1],
                   sc.width[-1], sc.resolution[-1])
    assert derive_subnet(SPACE, other).key() not in {derive_subnet(SPACE, s).key() for s in rest}
    with pytest.raises(ScalenasError, match="did not ask"):
        st.tell({other.to_json(): 0.5})


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_budget_is_respected(name):
    ev = Evaluator()
    st = make_strategy(name, SPACE, TARGETS, {**SMALL, "generations": 50, "budget": 23})
    drive(st, ev)
    assert st.done and 0 < st.evaluations <= 23 and len(ev.keys) == st.evaluations


def test_failed_evaluations_rank_last_and_are_not_retried():
    st = make_strategy("markov", SPACE, TARGETS, SMALL)
    subs = st.ask()
    st.tell({s.to_json(): (None if i == 0 else score(s)) for i, s in enumerate(subs)})
    failed = derive_subnet(SPACE, subs[0]).key()
    assert math.isnan(st.results.cache[failed])
    drive(st)
    assert st.best()["fitness"] is not None and math.isfinite(st.best()["fitness"])


def test_bounded_rejection_gives_up_and_reports():
    # A reachable but very narrow band: random bases rarely land in it, so samplers exhaust their tries.
    st = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        st = make_strategy("markov", SPACE, TARGETS, {**SMALL, "tolerance": 0.002, "max_tries": 3})
        drive(st)
    assert st.done
    assert sum(row["gave_up"] for row in st.results.history) > 0
    assert any("gave up" in str(w.message) for w in caught)


def test_unreachable_targets_fail_up_front():
    with pytest.raises(ScalenasError, match="unreachable"):
        make_strategy("markov", SPACE, stage_targets(SPACE, "500M"), SMALL)


@pytest.mark.parametrize("options, needle", [
    ({"population": 0}, "population"), ({"elites": 9, "population": 4}, "elites"), ({"matrix_lr": 0}, "matrix_lr"),
    ({"tolerance": 1.0}, "tolerance"), ({"stage_weights": [1, 1]}, "stage weights"), ({"budget": 0}, "budget"),
    ({"nonsense": 1}, "unknown search option"),
])
def test_bad_options(options, needle):
    with pytest.raises(ScalenasError, match=needle):
        make_strategy("markov", SPACE, TARGETS, options)


def test_unknown_strategy():
    with pytest.raises(ScalenasError, match="unknown search strategy"):
        make_strategy("bayes", SPACE, TARGETS)


# ------------------------------------------------------------------------------------------ determinism, resume
def test_same_seed_same_search():
    a, b = (make_strategy("markov", SPACE, TARGETS, SMALL) for _ in range(2))
    drive(a)
    drive(b)
    assert comparable(a) == comparable(b)
    c = make_strategy("markov", SPACE, TARGETS, {**SMALL, "seed": 4})
    drive(c)
    assert comparable(c) != comparable(a)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_resume_from_state_dict_equals_uninterrupted(name):
    opts = {**SMALL, "generations": 5}
    full = make_strategy(name, SPACE, TARGETS, opts)
    drive(full)
    part = make_strategy(name, SPACE, TARGETS, opts)
    drive(part, generations=2)
    state = json.loads(json.dumps(part.state_dict()))
    resumed = make_strategy(name, SPACE, TARGETS, opts)
    resumed.load_state_dict(state)
    drive(resumed)
    assert comparable(resumed) == comparable(full)


def test_run_search_resume_after_interrupt_equals_uninterrupted(tmp_path):
    opts = {**SMALL, "generations": 4}
    run_search(SPACE, make_strategy("markov", SPACE, TARGETS, opts), Evaluator(), tmp_path / "full", resume=False,
               progress=False, on_generation=functools.partial(write_reports, tmp_path / "full"))

    class Interrupting(Evaluator):
        def __call__(self, subnets):
            if self.calls == 2:
                raise KeyboardInterrupt
            return super().__call__(subnets)

    with pytest.raises(KeyboardInterrupt):
        run_search(SPACE, make_strategy("markov", SPACE, TARGETS, opts), Interrupting(), tmp_path / "part",
                   resume=False, progress=False, on_generation=functools.partial(write_reports, tmp_path / "part"))
    saved = json.loads((tmp_path / "part" / "state.json").read_text())
    assert saved["generation"] == 2 and not saved["done"]
    with pytest.raises(ScalenasError, match="already holds a search"):
        run_search(SPACE, make_strategy("markov", SPACE, TARGETS, opts), Evaluator(), tmp_path / "part",
                   resume=False, progress=False)
    ev = Evaluator()
    best = run_search(SPACE, make_strategy("markov", SPACE, TARGETS, opts), ev, tmp_path / "part", resume=True,
                      progress=False, on_generation=functools.partial(write_reports, tmp_path / "part"))
    assert ev.calls == 2  # only the two missing generations were evaluated
    for name in ("pareto.csv", "family.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "full" / name), pd.read_csv(tmp_path / "part" / name))
    full_best = json.loads((tmp_path / "full" / "best.json").read_text())
    assert json.loads((tmp_path / "part" / "best.json").read_text()) == full_best
    assert best["base"] == full_best["base"] and best["generations"] == 4


def test_resume_errors(tmp_path):
    with pytest.raises(ScalenasError, match="does not exist"):
        run_search(SPACE, make_strategy("markov", SPACE, TARGETS, SMALL), Evaluator(), tmp_path, resume=True,
                   progress=False)
    st = make_strategy("random", SPACE, TARGETS, SMALL)
    with pytest.raises(ScalenasError, match="strategy"):
        make_strategy("markov", SPACE, TARGETS, SMALL).load_state_dict(st.state_dict())


# ------------------------------------------------------------------------------------------ strategies and reports
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_runs_and_writes_every_report(name, tmp_path):
    result = run_search(SPACE, make_strategy(name, SPACE, TARGETS, SMALL), Evaluator(), tmp_path, resume=False,
                        progress=False, on_generation=functools.partial(write_reports, tmp_path))
    n = SPACE.num_scaling_stages
    pareto = pd.read_csv(tmp_path / "pareto.csv")
    assert list(pareto.columns) == ["generation", "candidate", "stage", "target_flops", "flops", "params",
                                    "resolution", "depth_mult", "width_mult", "top1", "top1_se", "loss", "loss_se",
                                    "feasible", "is_pareto", "arch"]
    assert len(pareto) > 0 and pareto["is_pareto"].any()
    family = pd.read_csv(tmp_path / "family.csv")
    assert list(family["stage"]) == list(range(n + 1)) and set(family["kind"]) == {"searched"}
    for _, row in family.iterrows():  # every family member's FLOPs and top-1 are real
        sub = Subnet(**{**json.loads(row["arch"]), "base": tuple(tuple(x) for x in json.loads(row["arch"])["base"])})
        assert row["flops"] == subnet_flops_params(SPACE, sub)[0]
        assert row["top1"] == pytest.approx(score(sub))
    log = pd.read_csv(tmp_path / "search_log.csv")
    assert list(log.columns) == ["generation", "best_fitness", "fitness_noise", "mean_fitness", "mean_fitness_noise",
                                 "tie_width", "feasible_share", "evaluations", "evaluations_per_s", "gave_up"]
    assert log["evaluations"].is_monotonic_increasing and log["evaluations"].iloc[-1] == result["evaluations"]
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["space"] == SPACE.name and best["targets"] == TARGETS and best["tolerance"] == 0.1
    assert len(best["chain"]) == n and set(best["chain"][0]) == {"depth", "width", "resolution"}
    assert "fvcore" in best["flops_convention"] and best["fitness"] == pytest.approx(result["fitness"])
    chain = json.loads((tmp_path / "chain.json").read_text())
    assert [c["stage"] for c in chain["chain"]] == list(range(1, n + 1))
    if name == "markov":
        t2 = chain["matrices"]["transitions"][0]
        assert t2["stage"] == 2 and np.allclose(np.sum(t2["width"]["probs"], axis=1), 1.0)
        assert t2["depth"]["rows"] == list(SPACE.scaling[1].depth)
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "state.json").read_text())["done"] is True


def test_compound_scales_one_triple():
    st = make_strategy("compound", SPACE, TARGETS, {**SMALL, "generations": 4})
    drive(st)
    best = st.best()
    assert len(best["family"]) == 4 and best["feasible"]
    grid = [c for _, c in st.results.archive if c.stages == [0, 1]]
    assert len({c.base for c in grid}) == 1 and len(grid) > 1  # the stage-1 grid on one base
    # stages >= 2 sit on the (alpha, beta, gamma)^phi ray: resolution and width never shrink along it
    ch = best["chain"]
    assert all(a["width"] <= b["width"] and a["resolution"] <= b["resolution"] for a, b in zip(ch, ch[1:]))


def test_independent_reports_a_base_per_stage():
    st = make_strategy("independent", SPACE, TARGETS, SMALL)
    drive(st)
    best = st.best()
    assert len(best["bases"]) == 4 and len(best["family"]) == 4
    assert all(c.stages in ([0], [1], [2], [3]) for _, c in st.results.archive)


def test_markov_learns_from_its_elites():
    st = make_strategy("markov", SPACE, TARGETS, {**SMALL, "generations": 4})
    drive(st)
    for e in st.elites:
        assert st.model.log_prob(e.chain) > np.log(1 / np.prod([np.prod(st.model.sizes(s)) for s in (1, 2, 3)]))


def test_markov_gibbs_step_redraws_one_in_band_state_from_the_conditional():
    st = make_strategy("markov", SPACE, TARGETS, SMALL)
    drive(st, generations=1)
    parent = st.elites[0]
    base, chain = parent.base, parent.chain
    # Make the chain's conditional of stage 2 favour one in-band state (other than the current one) strongly.
    feasible = [x for x in st.objective.feasible_states(base, 2) if x != chain[1]]
    assert feasible
    target = feasible[-1]
    st.model.update([[chain[0], target, chain[2]]] * 50, lr=1.0, smoothing=0.01)
    hits = changed_stage2 = 0
    for _ in range(300):
        new = st._resample_state(base, chain)
        diff = [s for s in range(3) if tuple(new[s]) != tuple(chain[s])]
        assert len(diff) == 1  # exactly one stage redrawn ...
        s = diff[0] + 1
        assert st.objective.stage_table(base, s)[tuple(new[s - 1])] == 0  # ... to an in-band state
        if s == 2:
            changed_stage2 += 1
            hits += tuple(new[1]) == target
    assert changed_stage2 > 50 and hits / changed_stage2 > 0.8  # the conditional is followed


def test_markov_assembles_each_stage_best_evaluated_state_for_free():
    st = make_strategy("markov", SPACE, TARGETS, {**SMALL, "generations": 4})
    drive(st)
    for e in st.elites:
        c = st._assembled(e.base)
        assert c is not None and st.feasible(c)
        assert st.results.fitness(c) >= st.results.fitness(e)  # per-stage best of what was evaluated: never worse
        assert all(st.results.score(c.base, s, c.states[s]) is not None for s in c.stages)  # nothing new to evaluate
        for s in range(1, 4):
            evaluated = [st.results.score(e.base, s, x) for x in st.objective.feasible_states(e.base, s)]
            assert st.results.score(c.base, s, c.states[s]) == max(v for v in evaluated if v is not None)


def test_pareto_mask_matches_brute_force():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"stage": rng.integers(0, 3, 200), "flops": rng.integers(0, 15, 200),
                          "top1": rng.integers(0, 10, 200) / 10.0})
    frame.loc[3, "top1"] = np.nan
    got = pareto_mask(frame)
    for i, row in frame.iterrows():
        same = frame[(frame["stage"] == row["stage"]) & frame["top1"].notna()]
        dominated = ((same["flops"] <= row["flops"]) & (same["top1"] >= row["top1"]) &
                     ((same["flops"] < row["flops"]) | (same["top1"] > row["top1"]))).any()
        assert got[i] == (not dominated and not np.isnan(row["top1"])), i


def test_candidate_round_trip():
    c = Candidate((("ir_k3",), ("ir_k5", "ir_k7"), ("ir_k3",), ("ir_k3",)), ((0, 0, 0), (1, 2, 0), None, (0, 1, 2)))
    assert Candidate.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.stages == [0, 1, 3] and not c.is_family
