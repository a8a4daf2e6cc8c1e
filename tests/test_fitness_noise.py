"""A fitness that is not noise: ``--metric top1|loss``, the measured noise of every evaluation, and ties.

The fast tests use a synthetic split on the session's random-BN supernet (conftest) and a made-up evaluator; the
slow one trains a tiny digits supernet and runs ``scalenas search --metric loss`` in-process.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cli_code

from scalenas.cli.main import main
from scalenas.data.splits import Split
from scalenas.errors import ScalenasError
from scalenas.report.search_report import LOG_COLUMNS, pareto_mask
from scalenas.search.fitness import bootstrap_se, calibration_noise, split_metrics
from scalenas.search.strategies import make_strategy
from scalenas.search.strategy import SearchOptions
from scalenas.spaces.arch import Subnet, sample_base
from scalenas.spaces.flops import subnet_flops_params
from scalenas.spaces.space import load_space
from scalenas.spaces.targets import stage_targets
from scalenas.train.evaluate import calibration_batches, subnet_metrics

SPACE = load_space("digits-tiny")
TARGETS = stage_targets(SPACE, "4.5M")
SMALL = {"population": 6, "generations": 3, "elites": 2, "seed": 3}


def cli(args: list[str]) -> int:
    return cli_code(main, args)


def toy_result(sub: Subnet) -> dict:
    """A made-up evaluation: top-1 grows with FLOPs, the loss falls with it, both with a standard error."""
    flops, _ = subnet_flops_params(SPACE, sub)
    top1 = 0.3 + 0.04 * math.log(flops)
    return {"top1": top1, "loss": 2.5 - 0.1 * math.log(flops), "top1_se": 0.02, "loss_se": 0.05, "pid": 1}


def drive(strategy, result=toy_result, generations: int | None = None) -> None:
    for _ in range(1000):
        if strategy.done or (generations is not None and strategy.generation >= generations):
            return
        subs = strategy.ask()
        strategy.tell({s.to_json(): result(s) for s in subs})
    raise AssertionError("search did not finish")


# ------------------------------------------------------------------------------------------ the metric option
def test_unknown_metric_is_one_line_exit_2(capfd):
    assert cli(["search", "--target-flops", "4M", "--metric", "accuracy", "--no-progress"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "--metric" in err and "top1" in err and "loss" in err, err
    with pytest.raises(ScalenasError, match="metric: must be one of top1, loss"):
        make_strategy("markov", SPACE, TARGETS, {**SMALL, "metric": "accuracy"})


def test_metric_and_tie_tolerance_are_recorded_and_checked():
    st = make_strategy("markov", SPACE, TARGETS, {**SMALL, "metric": "loss", "tie_tolerance": 0.0})
    opts = st.state_dict()["options"]
    assert opts["metric"] == "loss" and opts["tie_tolerance"] == 0.0
    assert SearchOptions().metric == "top1" and SearchOptions().tie_tolerance is None
    with pytest.raises(ScalenasError, match="tie_tolerance"):
        make_strategy("markov", SPACE, TARGETS, {**SMALL, "tie_tolerance": -0.1})


def test_resume_with_another_metric_is_refused():
    saved = make_strategy("markov", SPACE, TARGETS, {**SMALL, "metric": "loss"})
    drive(saved, generations=1)
    state = json.loads(json.dumps(saved.state_dict()))
    with pytest.raises(ScalenasError, match="cannot resume: the saved search has metric 'loss', this one 'top1'"):
        make_strategy("markov", SPACE, TARGETS, SMALL).load_state_dict(state)
    same = make_strategy("markov", SPACE, TARGETS, {**SMALL, "metric": "loss"})
    same.load_state_dict(state)  # the same metric resumes
    assert same.results.metrics == saved.results.metrics and same.results.cache == saved.results.cache


def test_loss_metric_scores_minus_the_loss_and_reports_both():
    st = make_strategy("markov", SPACE, TARGETS, {**SMALL, "metric": "loss"})
    drive(st)
    best = st.best()
    assert best["metric"] == "loss"
    rows = best["family"]
    assert all(r["top1"] is not None and r["loss"] is not None for r in rows)
    w = st.options.stage_weights
    assert best["fitness"] == pytest.approx(-sum(wi * r["loss"] for wi, r in zip(w, rows)) / sum(w))
    assert best["fitness_noise"] == pytest.approx(0.05)  # every member's loss SE is 0.05
    # plain numbers are the metric's value: with "loss" a number is a loss (lower is better); they carry no
    # noise, so the order is exact, as with tie_tolerance 0
    exact = make_strategy("markov", SPACE, TARGETS, {**SMALL, "metric": "loss", "tie_tolerance": 0.0})
    drive(exact)
    plain = make_strategy("markov", SPACE, TARGETS, {**SMALL, "metric": "loss"})
    drive(plain, result=lambda s: toy_result(s)["loss"])
    assert plain.best()["fitness"] == pytest.approx(exact.best()["fitness"])
    assert [r["arch"] for r in plain.best()["family"]] == [r["arch"] for r in exact.best()["family"]]
    assert plain.best()["family"][0]["top1"] is None and plain.best()["fitness_noise"] is None
    with pytest.raises(ScalenasError, match="has no 'loss'"):
        fresh = make_strategy("markov", SPACE, TARGETS, {**SMALL, "metric": "loss"})
        fresh.tell({fresh.ask()[0].to_json(): {"top1": 0.5}})


def test_pareto_mask_follows_the_metric():
    frame = pd.DataFrame({"stage": [0, 0, 0], "flops": [1, 2, 3], "top1": [0.5, 0.6, 0.4],
                          "loss": [1.0, 1.2, 0.8]})
    assert pareto_mask(frame).tolist() == [True, True, False]
    assert pareto_mask(frame, "loss").tolist() == [True, False, True]


# ------------------------------------------------------------------------------------------ measured noise
def test_bootstrap_se_is_positive_seeded_and_shrinks_with_the_holdout():
    rng = np.random.default_rng(0)
    ses = {}
    for n in (100, 1_000, 10_000):
        correct = torch.from_numpy(rng.random(n) < 0.7)
        se = bootstrap_se(correct)
        assert se > 0 and se == bootstrap_se(correct)  # seeded: the same value every time
        assert se == pytest.approx(math.sqrt(0.7 * 0.3 / n), rel=0.25)  # the binomial SE
        ses[n] = se
    assert ses[100] > ses[1_000] > ses[10_000]
    assert bootstrap_se(torch.ones(50, dtype=torch.bool)) == 0.0  # no spread, no noise
    assert math.isnan(bootstrap_se(np.zeros(0)))
    both = bootstrap_se(np.stack([np.arange(30.0), np.ones(30)], axis=1))
    assert both.shape == (2,) and both[0] > 0 and both[1] == 0
    assert both[0] == pytest.approx(bootstrap_se(np.arange(30.0)))  # the same draws for every column


def _split(n: int, seed: int) -> Split:
    """Random images labelled 3 or 5 (the classes the random supernet mostly predicts: top-1 near 0.5)."""
    g = torch.Generator().manual_seed(seed)
    r = SPACE.base_resolution
    return Split(torch.randn(n, SPACE.in_channels, r, r, generator=g),
                 torch.tensor([3, 5])[torch.randint(0, 2, (n,), generator=g)])


def test_split_metrics_adds_noise_to_evaluate_split(tiny_supernet, torch_threads):
    sub = Subnet(SPACE.name, sample_base(SPACE, random.Random(0)), 1.0, 1.0, SPACE.base_resolution)
    calib = calibration_batches(_split(64, 1), 1, 64, seed=0)
    ses = {}
    for n in (40, 640):
        holdout = _split(n, 2)
        ref = subnet_metrics(tiny_supernet, sub, calib, holdout)
        got = split_metrics(tiny_supernet, sub, calib, holdout)
        assert got["top1"] == ref["top1"] and got["loss"] == ref["loss"] and got["n"] == n
        assert got["top1_se"] > 0 and got["loss_se"] > 0
        assert got == split_metrics(tiny_supernet, sub, calib, holdout)  # deterministic
        ses[n] = got
    assert ses[640]["top1_se"] < ses[40]["top1_se"] and ses[640]["loss_se"] < ses[40]["loss_se"]
    noise = calibration_noise(tiny_supernet, sub, _split(256, 3), _split(80, 2), draws=3, calib_batches=1,
                              calib_batch_size=32)
    assert len(noise["top1"]) == len(noise["loss"]) == 3 and noise["seeds"] == [1, 2, 3]
    assert noise["loss_sd"] > 0 and noise["top1_sd"] >= 0  # other calibration images, other BN statistics


# ------------------------------------------------------------------------------------------ ties
def _feasible_pair(st):
    cands = sorted((c for c in st.population if st.feasible(c)), key=st.cost)
    assert len(cands) >= 3 and st.cost(cands[0]) < st.cost(cands[-1])
    return cands[0], cands[1], cands[-1]  # cheapest, next, dearest


def test_fitness_within_the_tolerance_ties_and_the_cheaper_wins():
    st = make_strategy("markov", SPACE, TARGETS, {**SMALL, "tie_tolerance": 0.01, "tie_break": "cheaper"})
    cheap, mid, dear = _feasible_pair(st)
    fitness = {dear: 0.800, cheap: 0.795, mid: 0.700}
    st.results.fitness = fitness.__getitem__
    assert st.results.tie_width() == 0.01
    assert st.rank([dear, mid, cheap]) == [cheap, dear, mid]  # 0.005 apart: a tie, the cheaper first
    fitness[cheap] = 0.789  # 0.011 below the best: no longer a tie
    assert st.rank([dear, mid, cheap]) == [dear, cheap, mid]
    exact = make_strategy("markov", SPACE, TARGETS, {**SMALL, "tie_tolerance": 0.0, "tie_break": "cheaper"})
    exact.results.fitness = {dear: 0.800, cheap: 0.7999, mid: 0.700}.__getitem__
    assert exact.rank([mid, cheap, dear]) == [dear, cheap, mid]  # 0: the exact order
    # a tie group is led by its best member: the third within 0.01 of the second but not of the first
    st.results.fitness = {dear: 0.800, mid: 0.792, cheap: 0.785}.__getitem__
    order = st.rank([dear, mid, cheap])
    assert order[:2] == sorted([dear, mid], key=st.cost) and order[2] == cheap


def test_measured_noise_sets_the_tie_width():
    st = make_strategy("markov", SPACE, TARGETS, SMALL)
    assert st.results.tie_width() == 0.0  # nothing measured yet: exact order
    subs = st.ask()
    errors = [0.01 * (i + 1) for i in range(len(subs))]
    st.tell({s.to_json(): {**toy_result(s), "top1_se": e} for s, e in zip(subs, errors)})
    assert st.results.tie_width() == pytest.approx(float(np.median(errors)))
    row = st.results.history[0]
    assert row["tie_width"] == pytest.approx(float(np.median(errors)))
    assert row["fitness_noise"] > 0 and row["mean_fitness_noise"] > 0
    assert set(LOG_COLUMNS) <= set(row)
    # plain numbers carry no noise: the order stays exact
    plain = make_strategy("markov", SPACE, TARGETS, SMALL)
    drive(plain, result=lambda s: toy_result(s)["top1"], generations=1)
    assert plain.results.tie_width() == 0.0 and plain.results.history[0]["fitness_noise"] is None


def test_noise_aware_markov_search_is_deterministic_resumes_and_learns():
    opts = {**SMALL, "generations": 4}
    a, b = (make_strategy("markov", SPACE, TARGETS, opts) for _ in range(2))
    drive(a)
    drive(b)
    assert json.dumps(a.best(), sort_keys=True) == json.dumps(b.best(), sort_keys=True)
    assert a.results.history[-1]["tie_width"] == pytest.approx(0.02)
    part = make_strategy("markov", SPACE, TARGETS, opts)
    drive(part, generations=2)
    resumed = make_strategy("markov", SPACE, TARGETS, opts)
    resumed.load_state_dict(json.loads(json.dumps(part.state_dict())))
    drive(resumed)
    assert json.dumps(resumed.best(), sort_keys=True) == json.dumps(a.best(), sort_keys=True)
    assert resumed.results.pareto_rows() == a.results.pareto_rows()
    uniform = -sum(math.log(np.prod(a.model.sizes(s))) for s in (1, 2, 3))
    for e in a.elites:  # the chain is still learned from the (tie-aware) elites
        assert a.model.log_prob(e.chain) > uniform


# ------------------------------------------------------------------------------------------ a real search
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, torch_threads) -> Path:
    from scalenas.train.config import load_job
    from scalenas.train.supernet import train_supernet

    cfg = load_job("digits", {"steps": 6, "batch_size": 32})
    cfg.panel_random = 0
    cfg.bn_calib_batches = 1
    cfg.threads = 1
    run = tmp_path_factory.mktemp("noise_run")
    train_supernet(cfg, run, progress=False)
    return run


@pytest.mark.slow
def test_loss_search_in_process_reports_the_noise(trained_run, tmp_path, capfd):
    out = tmp_path / "search"
    args = ["search", "--run", str(trained_run), "--target-flops", "4M", "--generations", "2", "--population", "3",
            "--elites", "2", "--workers", "0", "--calib-batches", "1", "--no-progress", "--out", str(out)]
    assert cli([*args, "--metric", "loss"]) == 0
    assert "(loss)" in capfd.readouterr().out
    log = pd.read_csv(out / "search_log.csv")
    assert list(log.columns) == LOG_COLUMNS
    assert (log["fitness_noise"] > 0).all() and (log["tie_width"] > 0).all()
    assert (log["best_fitness"] < 0).all()  # minus a log-loss
    family = pd.read_csv(out / "family.csv")
    for col in ("top1", "top1_se", "loss", "loss_se"):
        assert family[col].notna().all(), col
    pareto = pd.read_csv(out / "pareto.csv")
    assert pareto["loss"].gt(0).all() and pareto["top1"].between(0, 1).all() and pareto["is_pareto"].any()
    best = json.loads((out / "best.json").read_text())
    w = [0.0, 1.0, 1.0, 1.0]
    assert best["metric"] == "loss" and best["fitness_noise"] > 0
    assert best["fitness"] == pytest.approx(-sum(wi * r["loss"] for wi, r in zip(w, best["family"])) / sum(w))
    config = json.loads((out / "search_config.json").read_text())
    assert config["metric"] == "loss" and config["options"]["metric"] == "loss" and "log-loss" in config["fitness"]

    # resuming it with another metric: one line, exit 2, nothing changed
    before = (out / "state.json").read_bytes()
    assert cli([*args, "--resume", "--metric", "top1"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "metric 'loss'" in err and "cannot resume" in err, err
    assert (out / "state.json").read_bytes() == before

    from scalenas.search.fitness import SupernetEvaluator

    ev = SupernetEvaluator(str(trained_run / "checkpoint.pt"), calib_batches=1)
    arch = best["family"][1]["arch"]
    got = ev.evaluate(arch)
    assert got["loss"] == pytest.approx(best["family"][1]["loss"]) and got["loss_se"] > 0
    noise = ev.calibration_noise(arch, draws=3)
    assert len(noise["loss"]) == 3 and noise["loss_sd"] >= 0


def test_by_default_a_tie_goes_to_the_family_nearest_its_flops_targets():
    st = make_strategy("markov", SPACE, TARGETS, {**SMALL, "tie_tolerance": 0.01})
    assert st.options.tie_break == "target"
    cands = [c for c in st.population if st.feasible(c)]
    dist = {c: sum(abs(math.log(subnet_flops_params(st.space, sub)[0] / st.targets[s]))
                   for s, sub in c.members(st.objective)) for c in cands}
    near, far = min(cands, key=dist.get), max(cands, key=dist.get)
    assert dist[near] < dist[far] and st.cost(near) == pytest.approx(dist[near])
    st.results.fitness = {far: 0.800, near: 0.795}.__getitem__
    assert st.rank([far, near]) == [near, far]  # a tie: the one on target first
    st.results.fitness = {far: 0.800, near: 0.780}.__getitem__
    assert st.rank([near, far]) == [far, near]  # not a tie
    with pytest.raises(ScalenasError, match="tie_break"):
        make_strategy("markov", SPACE, TARGETS, {**SMALL, "tie_break": "largest"})
