"""The Markov chain over scaling states: stochastic rows, positivity, learning, seeding, exact round trip."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from scalenas.errors import ScalenasError
from scalenas.search.markov import MarkovChainModel
from scalenas.spaces.space import load_space


@pytest.fixture()
def model() -> MarkovChainModel:
    return MarkovChainModel.from_space(load_space("digits-tiny"), smoothing=0.5)


def all_probabilities(m: MarkovChainModel) -> list[np.ndarray]:
    out = [m.pi(d) for d in range(3)]
    out += [m.transition(s, d) for s in range(2, m.num_stages + 1) for d in range(3)]
    return out


def check_stochastic(m: MarkovChainModel) -> None:
    for p in all_probabilities(m):
        assert (p > 0).all()
        np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=0, atol=1e-12)


def test_shapes_follow_the_option_lists(model):
    space = load_space("digits-tiny")
    assert model.num_stages == 3
    assert model.pi(0).shape == (len(space.scaling[1].depth),)
    assert model.transition(2, 2).shape == (len(space.scaling[1].resolution), len(space.scaling[2].resolution))
    assert model.transition(3, 0).shape == (len(space.scaling[2].depth), len(space.scaling[3].depth))
    with pytest.raises(IndexError):
        model.transition(1, 0)


def test_rows_stochastic_and_positive_before_and_after_updates(model):
    check_stochastic(model)
    elites = [[(0, 0, 0), (0, 0, 0), (0, 0, 0)]] * 5
    for _ in range(30):  # even a degenerate, repeated elite set never zeroes a transition
        model.update(elites, lr=1.0, smoothing=1e-3)
    check_stochastic(model)


def test_matrices_learn_the_elites_transitions(model):
    elites = [[(3, 1, 2), (2, 0, 1), (1, 2, 0)], [(3, 1, 2), (2, 2, 1), (1, 2, 0)]]
    before_pi = model.pi(0)[3]
    before_t = model.transition(2, 0)[3, 2]
    before_lp = model.log_prob(elites[0])
    lps = []
    for _ in range(3):
        model.update(elites, lr=0.5)
        lps.append(model.log_prob(elites[0]))
    assert model.pi(0)[3] > before_pi
    assert model.transition(2, 0)[3, 2] > before_t
    assert model.transition(3, 2)[1, 0] > 1 / 3
    assert before_lp < lps[0] < lps[1] < lps[2]
    # untouched rows stay uniform
    np.testing.assert_allclose(model.transition(2, 0)[0], 1 / 3)


def test_update_is_an_ema_of_counts(model):
    chain = [(1, 0, 0), (0, 0, 0), (0, 0, 0)]
    model.update([chain], lr=0.25)
    model.update([chain], lr=0.25)
    assert model.pi_counts[0][1] == pytest.approx(0.25 + 0.75 * 0.25)
    p = model.pi(0)
    assert p[1] == pytest.approx((0.4375 + 0.5) / (0.4375 + 4 * 0.5))


def test_sampling_is_deterministic_with_a_seed(model):
    model.update([[(3, 1, 2), (2, 0, 1), (1, 2, 0)]], lr=0.5)
    a = [model.sample_chain(random.Random(7)) for _ in range(5)]
    b = [model.sample_chain(random.Random(7)) for _ in range(5)]
    assert a == b
    rng = random.Random(1)
    chains = [model.sample_chain(rng) for _ in range(50)]
    assert len({tuple(c) for c in chains}) > 1
    for c in chains:
        assert len(c) == 3 and all(0 <= v < n for x, s in zip(c, (1, 2, 3)) for v, n in zip(x, model.sizes(s)))


def test_sampling_respects_allowed_states(model):
    allowed = [np.zeros(model.sizes(s), dtype=bool) for s in (1, 2, 3)]
    allowed[0][1, 2, 0] = True
    allowed[1][0, 1, 2] = allowed[1][2, 2, 2] = True
    allowed[2][:] = False  # no allowed state: falls back to the full distribution
    rng = random.Random(0)
    for _ in range(20):
        c = model.sample_chain(rng, allowed)
        assert c[0] == (1, 2, 0) and c[1] in [(0, 1, 2), (2, 2, 2)]


def test_round_trip_is_exact(model):
    model.update([[(3, 1, 2), (2, 0, 1), (1, 2, 0)], [(0, 3, 1), (1, 1, 1), (2, 0, 2)]], lr=0.3)
    model.update([[(1, 1, 1), (0, 0, 0), (2, 2, 2)]], lr=0.7, smoothing=0.2)
    again = MarkovChainModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again.to_dict() == model.to_dict()
    for p, q in zip(all_probabilities(model), all_probabilities(again)):
        assert np.array_equal(p, q)
    chain = [(3, 1, 2), (2, 0, 1), (1, 2, 0)]
    assert again.log_prob(chain) == model.log_prob(chain)
    report = model.report()
    assert report["pi"]["depth"]["labels"] == [1.04, 1.08, 1.12, 1.16]
    assert report["transitions"][0]["resolution"]["cols"] == [20, 22, 24]


def test_bad_inputs(model):
    with pytest.raises(ScalenasError, match="learning rate"):
        model.update([], lr=0.0)
    with pytest.raises(ScalenasError, match="smoothing"):
        MarkovChainModel.from_space(load_space("digits-tiny"), smoothing=0)
    with pytest.raises(ScalenasError, match="states"):
        model.log_prob([(0, 0, 0)])
    with pytest.raises(ScalenasError, match="outside"):
        model.update([[(9, 0, 0), (0, 0, 0), (0, 0, 0)]], lr=0.5)
