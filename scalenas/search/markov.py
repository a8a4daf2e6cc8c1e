"""The Markov chain over scaling states (docs/method.md).

A chain is x_1..x_S with x_s = (i, j, k): indices into the depth, width and resolution option lists D_s, W_s,
R_s of scaling stage s. The model is

    P(x_1..x_S) = pi(x_1) * prod_{s>=2} T_s(x_{s-1} -> x_s),

with pi and every T_s factorised per dimension (depth, width, resolution) into independent distributions:
pi^D over D_1 and a row-stochastic |D_{s-1}| x |D_s| matrix T_s^D, likewise for W and R.

The model holds transition COUNTS, not probabilities: an update is an exponential moving average of the counts
seen in the elites, and probabilities are the counts plus an additive smoothing, normalised per row. The
smoothing keeps every transition possible, so the search never locks itself out of a scaling option.
"""
from __future__ import annotations

import math
import random
from typing import Any, Sequence

import numpy as np

from scalenas.errors import ScalenasError
from scalenas.spaces.space import SearchSpace

DIMENSIONS = ("depth", "width", "resolution")
State = tuple[int, int, int]
Chain = Sequence[State]


class MarkovChainModel:
    """pi and the per-dimension transition matrices T_s^D, T_s^W, T_s^R for scaling stages 1..S.

    ``options[s - 1]`` holds the option values ``(D_s, W_s, R_s)`` of scaling stage s; they label the rows and
    columns of the matrices in reports and fix their shapes.
    """

    def __init__(self, options: Sequence[Sequence[Sequence[float]]], smoothing: float = 0.5) -> None:
        if len(options) < 1:
            raise ScalenasError("a Markov chain needs at least one scaling stage")
        self.options: list[tuple[tuple[float, ...], ...]] = [
            tuple(tuple(v for v in dim) for dim in stage) for stage in options]
        for s, stage in enumerate(self.options, start=1):
            if len(stage) != 3 or any(len(dim) == 0 for dim in stage):
                raise ScalenasError(f"stage {s}: need non-empty depth, width and resolution options")
        self.smoothing = _check_smoothing(smoothing)
        # pi_counts[d]: counts over stage-1 options; trans_counts[s-2][d]: counts of stage s-1 -> s.
        self.pi_counts = [np.zeros(len(dim)) for dim in self.options[0]]
        self.trans_counts = [[np.zeros((len(prev), len(cur))) for prev, cur in zip(self.options[s - 1],
                                                                                   self.options[s])]
                             for s in range(1, len(self.options))]

    @classmethod
    def from_space(cls, space: SearchSpace, stages: int | None = None, smoothing: float = 0.5) -> "MarkovChainModel":
        """The uniform model over scaling stages 1..``stages`` (default: all) of ``space``."""
        n = space.num_scaling_stages if stages is None else stages
        return cls([(sc.depth, sc.width, sc.resolution) for sc in space.scaling[1:n + 1]], smoothing)

    # ------------------------------------------------------------------------------ probabilities
    @property
    def num_stages(self) -> int:
        """S: the chain length."""
        return len(self.options)

    def sizes(self, stage: int) -> State:
        """(|D_s|, |W_s|, |R_s|) of scaling stage ``stage`` (1-based)."""
        return tuple(len(dim) for dim in self.options[stage - 1])  # type: ignore[return-value]

    def pi(self, dim: int) -> np.ndarray:
        """The initial distribution of dimension ``dim`` (0 depth, 1 width, 2 resolution) over stage-1 options."""
        c = self.pi_counts[dim] + self.smoothing
        return c / c.sum()

    def transition(self, stage: int, dim: int) -> np.ndarray:
        """Row-stochastic T_stage for dimension ``dim``: rows = options of stage-1, columns = options of stage."""
        if not 2 <= stage <= self.num_stages:
            raise IndexError(f"transition matrices exist for stages 2..{self.num_stages}, not {stage}")
        c = self.trans_counts[stage - 2][dim] + self.smoothing
        return c / c.sum(axis=1, keepdims=True)

    def stage_distribution(self, stage: int, prev: State | None) -> np.ndarray:
        """The joint distribution over stage ``stage``'s states, shape (|D|, |W|, |R|), given x_{stage-1}."""
        if stage == 1:
            rows = [self.pi(d) for d in range(3)]
        else:
            assert prev is not None
            rows = [self.transition(stage, d)[prev[d]] for d in range(3)]
        return np.einsum("i,j,k->ijk", *rows)

    # ------------------------------------------------------------------------------ sampling
    def sample_chain(self, rng: random.Random, allowed: Sequence[np.ndarray | None] | None = None) -> list[State]:
        """Draw x_1..x_S ancestrally with ``rng`` (the search's one RNG).

        ``allowed[s-1]``, a boolean array of shape (|D_s|, |W_s|, |R_s|), restricts stage s to the states
        marked True (the chain's distribution renormalised over them). Since every transition probability is
        positive, any allowed state is reachable from any previous one; a stage with no allowed state falls back
        to its unrestricted distribution.
        """
        chain: list[State] = []
        prev: State | None = None
        for s in range(1, self.num_stages + 1):
            prev = draw_state(self.stage_distribution(s, prev), rng, None if allowed is None else allowed[s - 1])
            chain.append(prev)
        return chain

    def conditional_weights(self, stage: int, prev: State | None, nxt: State | None) -> np.ndarray:
        """Weights proportional to the full conditional of stage ``stage``'s state given its neighbours (a Gibbs
        step): p(x_s | x_{s-1}, x_{s+1}) ~ T_s(x_{s-1} -> x_s) * T_{s+1}(x_s -> x_{s+1}), shape (|D|, |W|, |R|).
        ``prev`` is None for stage 1 (then pi), ``nxt`` None for the last stage."""
        p = self.stage_distribution(stage, prev)
        if nxt is not None:
            p = p * np.einsum("i,j,k->ijk", *[self.transition(stage + 1, d)[:, nxt[d]] for d in range(3)])
        return p

    def log_prob(self, chain: Chain) -> float:
        """log P(x_1..x_S) under the current model."""
        self._check_chain(chain)
        total = sum(math.log(self.pi(d)[chain[0][d]]) for d in range(3))
        for s in range(2, self.num_stages + 1):
            total += sum(math.log(self.transition(s, d)[chain[s - 2][d], chain[s - 1][d]]) for d in range(3))
        return float(total)

    # ------------------------------------------------------------------------------ learning
    def counts_from(self, chains: Sequence[Chain]) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
        """Initial-state and transition counts of ``chains`` (same shapes as the model's counts)."""
        pi = [np.zeros_like(c) for c in self.pi_counts]
        trans = [[np.zeros_like(c) for c in stage] for stage in self.trans_counts]
        for chain in chains:
            self._check_chain(chain)
            for d in range(3):
                pi[d][chain[0][d]] += 1
                for s in range(2, self.num_stages + 1):
                    trans[s - 2][d][chain[s - 2][d], chain[s - 1][d]] += 1
        return pi, trans

    def update(self, elite_chains: Sequence[Chain], lr: float, smoothing: float | None = None) -> None:
        """Move the counts toward the elites': ``counts = (1 - lr) * counts + lr * counts_from_elites``.

        ``smoothing`` (if given) replaces the additive smoothing used to turn counts into probabilities.
        """
        if not 0.0 < lr <= 1.0:
            raise ScalenasError(f"matrix learning rate must be in (0, 1], got {lr!r}")
        if smoothing is not None:
            self.smoothing = _check_smoothing(smoothing)
        if not elite_chains:
            return
        pi, trans = self.counts_from(elite_chains)
        self.pi_counts = [(1 - lr) * c + lr * e for c, e in zip(self.pi_counts, pi)]
        self.trans_counts = [[(1 - lr) * c + lr * e for c, e in zip(cs, es)]
                             for cs, es in zip(self.trans_counts, trans)]

    def _check_chain(self, chain: Chain) -> None:
        if len(chain) != self.num_stages:
            raise ScalenasError(f"chain has {len(chain)} states, the model has {self.num_stages} stages")
        for s, state in enumerate(chain, start=1):
            sizes = self.sizes(s)
            if len(state) != 3 or not all(0 <= int(v) < n for v, n in zip(state, sizes)):
                raise ScalenasError(f"stage {s}: state {tuple(state)} outside option sizes {sizes}")

    # ------------------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able state (counts, smoothing, option values); :meth:`from_dict` restores it exactly."""
        return {"options": [[list(dim) for dim in stage] for stage in self.options],
                "smoothing": self.smoothing,
                "pi_counts": [c.tolist() for c in self.pi_counts],
                "trans_counts": [[c.tolist() for c in stage] for stage in self.trans_counts]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MarkovChainModel":
        model = cls(data["options"], data["smoothing"])
        pi = [np.asarray(c, dtype=float) for c in data["pi_counts"]]
        trans = [[np.asarray(c, dtype=float) for c in stage] for stage in data["trans_counts"]]
        if [c.shape for c in pi] != [c.shape for c in model.pi_counts] or \
                [[c.shape for c in st] for st in trans] != [[c.shape for c in st] for st in model.trans_counts]:
            raise ScalenasError("Markov chain state does not match its option lists")
        model.pi_counts, model.trans_counts = pi, trans
        return model

    def report(self) -> dict[str, Any]:
        """pi and every T_s per dimension as probabilities labelled with the option values (for chain.json)."""
        out: dict[str, Any] = {"pi": {name: {"labels": list(self.options[0][d]), "probs": self.pi(d).tolist()}
                                      for d, name in enumerate(DIMENSIONS)},
                               "transitions": []}
        for s in range(2, self.num_stages + 1):
            out["transitions"].append({"stage": s, **{
                name: {"rows": list(self.options[s - 2][d]), "cols": list(self.options[s - 1][d]),
                       "probs": self.transition(s, d).tolist()} for d, name in enumerate(DIMENSIONS)}})
        return out


def draw_state(weights: np.ndarray, rng: random.Random, mask: np.ndarray | None = None) -> State:
    """One state drawn with ``rng`` in proportion to ``weights`` (shape (|D|, |W|, |R|)), restricted to the states
    ``mask`` marks True when it marks any (else unrestricted)."""
    if mask is not None and mask.any():
        weights = np.where(mask, weights, 0.0)
    flat = weights.ravel()
    idx = rng.choices(range(flat.size), weights=flat.tolist())[0]
    return tuple(int(v) for v in np.unravel_index(idx, weights.shape))  # type: ignore[return-value]


def _check_smoothing(smoothing: float) -> float:
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not float(smoothing) > 0 \
            or not math.isfinite(smoothing):
        raise ScalenasError(f"matrix smoothing must be a positive number, got {smoothing!r}")
    return float(smoothing)
