"""Information-directed sampling (`default:sampler=ids`, `default:sampler=ids-sampled`): the pmf's terms and choice.

Stated margins: the quadrature's Δ and g agree with 400,000 seeded posterior draws within 0.002 (Δ) and 5% (g);
the two-arm minimiser is no worse than a 2,001-point grid over every pair; a model that is confidently worse
while the leader is known gets only the uniform share `mix/k` (≤ 0.01 here); the sampled version is the same
pmf for the same seed and, from 4,096 draws, puts its mass on the same models as the quadrature.
"""

from __future__ import annotations

import numpy as np
import pytest

from bandit_router import exploration
from bandit_router.catalog import ModelSpec
from bandit_router.policies import make_policy
from bandit_router.router import Router
from bandit_router.types import Outcome, Request

MEAN = np.array([0.62, 0.60, 0.58, 0.61, 0.30])
SD = np.array([0.03, 0.03, 0.04, 0.03, 0.20])


def monte_carlo_terms(mean: np.ndarray, sd: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Δ and g from n joint draws, the plain transcription of their definitions."""
    theta = mean + sd * np.random.default_rng(seed).standard_normal((n, len(mean)))
    star = theta.argmax(axis=1)
    delta = theta.max(axis=1).mean() - mean
    gain = np.zeros(len(mean))
    for a in range(len(mean)):
        if (star == a).any():
            gain += (star == a).mean() * (theta[star == a].mean(axis=0) - mean) ** 2
    return delta, gain


def test_quadrature_terms_match_posterior_draws() -> None:
    terms = exploration._information_terms(MEAN, SD, 16)
    assert terms is not None
    delta, gain = terms
    mc_delta, mc_gain = monte_carlo_terms(MEAN, SD, 400_000, seed=0)
    assert np.abs(delta - mc_delta).max() < 0.002
    assert np.abs(gain / mc_gain - 1).max() < 0.05


def test_two_arm_minimiser_is_no_worse_than_a_grid() -> None:
    rng = np.random.default_rng(1)
    q = np.linspace(0.0, 1.0, 2001)
    for _ in range(50):
        delta, gain = rng.random(5), rng.random(5) * 0.1
        (a, b), share = exploration._two_arm_minimum(delta, gain)
        found = (share * delta[a] + (1 - share) * delta[b]) ** 2 / (share * gain[a] + (1 - share) * gain[b])
        mix_d = q[:, None, None] * delta[:, None] + (1 - q[:, None, None]) * delta[None, :]
        mix_g = q[:, None, None] * gain[:, None] + (1 - q[:, None, None]) * gain[None, :]
        assert found <= (mix_d**2 / mix_g).min() * (1 + 1e-9)


def test_ids_pmf_leaves_a_known_loser_alone_and_sums_to_one() -> None:
    # The leader is known (sd 0.005); model 1 is worse by 0.05 and uncertain enough not to be dominated (β = 3).
    mean, sd = np.array([0.80, 0.75, 0.40]), np.array([0.005, 0.015, 0.01])
    pmf = exploration.gaussian_ids_pmf(mean, sd, mix=0.02)
    assert pmf.sum() == pytest.approx(1.0)
    assert pmf[2] == 0.0  # confidently dominated
    assert pmf[1] <= 0.01  # only its share of the uniform mix: learning about it cannot change the choice
    assert pmf[0] >= 0.99
    # Two close models, one uncertain: IDS tries the uncertain one (its outcome can change the decision).
    pmf = exploration.gaussian_ids_pmf(np.array([0.80, 0.79]), np.array([0.01, 0.2]), mix=0.0)
    assert pmf[1] > 0.5


def test_ids_is_deterministic_and_the_sampled_version_reproducible() -> None:
    assert np.array_equal(exploration.gaussian_ids_pmf(MEAN, SD), exploration.gaussian_ids_pmf(MEAN, SD))
    first = exploration.sampled_ids_pmf(MEAN, SD, np.random.default_rng(7), draws=4096)
    again = exploration.sampled_ids_pmf(MEAN, SD, np.random.default_rng(7), draws=4096)
    assert np.array_equal(first, again) and first.sum() == pytest.approx(1.0)
    exact = exploration.gaussian_ids_pmf(MEAN, SD)
    assert set(np.flatnonzero(first > 0.05)) == set(np.flatnonzero(exact > 0.05))


@pytest.mark.parametrize("sampler", ["ids", "ids-sampled"])
def test_the_default_policy_with_ids_learns_the_good_model_and_replays(sampler: str) -> None:
    """Five models, one of quality 0.8, the others 0.4–0.6 (seed 0, 600 requests): the good one gets ≥ 85% of the
    last 300 routes (measured 96% with `ids`, 100% with `ids-sampled`; 20% if the pmf were uniform); the same
    seed gives the same decisions."""
    quality = {"a": 0.4, "b": 0.5, "good": 0.8, "c": 0.6, "d": 0.45}
    models = [ModelSpec(name, 1.0, 1.0) for name in quality]

    def run() -> list[str]:
        router = Router(models, make_policy(f"default:sampler={sampler}"), seed=0)
        world = np.random.default_rng(1)
        chosen = []
        for i in range(600):
            decision = router.route(Request(prompt=f"question {i % 7}", cost_weight=0.0))
            assert sum(decision.pmf) == pytest.approx(1.0)
            chosen.append(decision.model)
            router.learn(decision, Outcome(quality=float(world.random() < quality[decision.model])))
        return chosen

    chosen = run()
    assert chosen[300:].count("good") >= 0.85 * 300
    assert run() == chosen
