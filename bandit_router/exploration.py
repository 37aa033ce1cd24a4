"""Scores → pmf. Every function takes scores in reward units (q̂ − λ·ĉ) of shape (K,) and returns a pmf (K,).

Ties at the top share the greedy mass equally, so a pmf never depends on the order of the models.
K is small (a handful of models), so the arithmetic runs on Python floats: faster than numpy at this size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

TIE_TOLERANCE = 1e-12


def _top(scores: list[float]) -> list[bool]:
    best = max(scores)
    return [s >= best - TIE_TOLERANCE for s in scores]


def greedy(scores: np.ndarray) -> np.ndarray:
    """All mass on the best score (split evenly among exact ties)."""
    top = _top(scores.tolist())
    share = 1.0 / sum(top)
    return np.array([share if t else 0.0 for t in top])


def epsilon_greedy(scores: np.ndarray, epsilon: float) -> np.ndarray:
    """p = (1 − ε)·greedy + ε/K."""
    top = _top(scores.tolist())
    share = (1.0 - epsilon) / sum(top)
    floor = epsilon / len(top)
    return np.array([floor + share if t else floor for t in top])


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    """p_a ∝ exp(s_a / τ). Small τ → greedy, large τ → uniform."""
    s = scores.tolist()
    best = max(s)
    tau = max(temperature, 1e-12)
    w = [math.exp((x - best) / tau) for x in s]
    total = sum(w)
    return np.array([x / total for x in w])


def squarecb(scores: np.ndarray, gamma: float) -> np.ndarray:
    """Inverse-gap weighting (Abe & Long 1999; Foster & Rakhlin 2020, "Beyond UCB"):

        p_a = 1 / (K + γ·(s* − s_a))  for a ≠ a*,   p_{a*} = 1 − Σ_{a≠a*} p_a

    γ grows with the number of updates (γ_t = γ₀·t^ρ), so exploration shrinks as the estimates firm up.
    Exact ties at the top share the remaining mass.
    """
    s = scores.tolist()
    k = len(s)
    best = max(s)
    top = [x >= best - TIE_TOLERANCE for x in s]
    p = [0.0 if t else 1.0 / (k + gamma * (best - x)) for x, t in zip(s, top, strict=True)]
    share = (1.0 - sum(p)) / sum(top)
    return np.array([share if t else x for x, t in zip(p, top, strict=True)])


def monte_carlo_pmf(draw: Callable[[int], np.ndarray], n_draws: int) -> np.ndarray:
    """Estimate the pmf of "argmax of one random draw" from `n_draws` draws (Thompson sampling).

    `draw(n)` returns sampled scores of shape (n, K). The router then samples from this pmf, so the logged
    probability is exactly the probability with which the model was chosen.
    """
    samples = draw(n_draws)
    top = samples >= samples.max(axis=1, keepdims=True) - TIE_TOLERANCE
    counts = (top / top.sum(axis=1, keepdims=True)).sum(axis=0)  # a tie splits that draw's vote
    return np.asarray(counts / counts.sum())


def with_floor(pmf: np.ndarray, mask: list[bool], floor: float) -> np.ndarray:
    """Give each arm where `mask` is true at least `floor` probability (cold start), by mixing:

    p' = (1 − m·f)·p + f·1_mask,   m = number of masked arms, with m·f capped at 0.5.
    """
    m = sum(mask)
    if m == 0 or floor <= 0:
        return pmf
    f = min(floor, 0.5 / m)
    keep = 1.0 - m * f
    return np.array([keep * p + (f if c else 0.0) for p, c in zip(pmf.tolist(), mask, strict=True)])
