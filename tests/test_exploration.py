"""Scores → pmf (`bandit_router.exploration`) on input no pmf is defined for: a NaN or an infinity is a
`ValueError` naming the function, never a ZeroDivisionError or a silent NaN pmf."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from bandit_router import exploration

BAD = [math.nan, math.inf, -math.inf]
OK_MEAN, OK_SD = np.array([0.5, 0.4, 0.6]), np.array([0.1, 0.2, 0.05])


def _with(values: np.ndarray, bad: float, at: int) -> np.ndarray:
    out = values.copy()
    out[at] = bad
    return out


PMFS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "greedy": lambda m, s: exploration.greedy(m),
    "epsilon_greedy": lambda m, s: exploration.epsilon_greedy(m, 0.1),
    "softmax": lambda m, s: exploration.softmax(m, 0.1),
    "squarecb": lambda m, s: exploration.squarecb(m, 10.0),
    "gaussian_argmax_pmf": exploration.gaussian_argmax_pmf,
    "gaussian_argmax_pmfs": lambda m, s: exploration.gaussian_argmax_pmfs([OK_MEAN, m], [OK_SD, s])[1],
    "ids_pmf": lambda m, s: exploration.ids_pmf(m, s, np.random.default_rng(0)),
    "monte_carlo_pmf": lambda m, s: exploration.monte_carlo_pmf(lambda n: m + s * np.ones((n, len(m))), 8),
}


@pytest.mark.parametrize("function", list(PMFS))
@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("at", [0, 2])
def test_a_nan_or_infinite_score_is_a_value_error(function: str, bad: float, at: int) -> None:
    """A NaN mean made `gaussian_argmax_pmf` and `greedy` raise ZeroDivisionError; an infinity gave a one-hot or a
    NaN pmf depending on the function. Each function now refuses both, in any position."""
    pmf = PMFS[function]
    assert pmf(OK_MEAN, OK_SD).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="must be finite numbers"):
        pmf(_with(OK_MEAN, bad, at), OK_SD)


@pytest.mark.parametrize("function", ["gaussian_argmax_pmf", "gaussian_argmax_pmfs", "ids_pmf", "monte_carlo_pmf"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nan_or_infinite_sd_is_a_value_error(function: str, bad: float) -> None:
    with pytest.raises(ValueError, match="must be finite numbers"):
        PMFS[function](OK_MEAN, _with(OK_SD, bad, 1))


def test_huge_finite_scores_whose_sum_overflows_still_give_a_pmf() -> None:
    """The finiteness check sums first: a sum that overflows (finite values) is checked value by value."""
    scores = np.array([1.5e308, 1.6e308, 1.0e308])
    assert exploration.greedy(scores).tolist() == [0.0, 1.0, 0.0]
    assert exploration.gaussian_argmax_pmf(scores, np.array([1.0, 1.0, 1.0])).tolist() == [0.0, 1.0, 0.0]


def test_subnormal_sds_give_a_pmf() -> None:
    """Every sd below the smallest normal float (2.2·10⁻³⁰⁸) with means at 0: the union grid's density 1/sd
    overflowed to inf, `_degenerate`'s bounds underflowed to 0, and the pmf was NaN (before the compiled quadrature
    too). Such arms are degenerate: integrated per arm in standard units, where only ratios of sds enter."""
    cases = [
        ([0.0, 0.0], [1e-320, 2e-320], [0.5, 0.5]),  # equal means: a fair coin, whatever the sds
        ([0.0, 0.0], [1e-308, 3e-308], [0.5, 0.5]),
        ([1e-310, 0.0], [1e-310, 2e-310], [0.6726396, 0.3273604]),  # Φ(1/√5)
    ]
    for mean, sd, want in cases:
        pmf = exploration.gaussian_argmax_pmf(np.array(mean), np.array(sd))
        assert pmf.tolist() == pytest.approx(want, abs=1e-3)
