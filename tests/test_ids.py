"""Information-directed sampling (`default:sampler=ids`): the pmf and its choice.

Stated margins: on its own draws, the pmf's information ratio is no worse than the least over every pair of
arms and a 2,001-point grid of mixing weights (20 seeds); a model that is confidently worse while the leader is
known gets about the uniform share `mix/k` = 0.01 (mean ≤ 0.0105 and never > 0.02 over 200 seeds); the same
seed gives the same pmf.
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


def information_ratio_by_grid(theta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The plain transcription on given draws θ (M, K): Δ, g and the least (πᵀΔ)²/(πᵀg) over every pair of arms
    and 2,001 mixing weights."""
    star = theta.argmax(axis=1)
    average = theta.mean(axis=0)
    delta = theta.max(axis=1).mean() - average
    gain = np.zeros(theta.shape[1])
    for a in np.unique(star):
        gain += (star == a).mean() * (theta[star == a].mean(axis=0) - average) ** 2
    q = np.linspace(0.0, 1.0, 2001)[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (q * delta[:, None] + (1 - q) * delta) ** 2 / (q * gain[:, None] + (1 - q) * gain)
    return float(np.nanmin(ratio)), delta, gain


def test_ids_pmf_minimises_the_information_ratio_of_its_draws() -> None:
    for seed in range(20):
        pmf = exploration.ids_pmf(MEAN, SD, np.random.default_rng(seed), draws=512, mix=0.0)
        theta = MEAN + SD * np.random.default_rng(seed).standard_normal((512, len(MEAN)))  # the same draws
        best, delta, gain = information_ratio_by_grid(theta)
        assert pmf.sum() == pytest.approx(1.0) and np.count_nonzero(pmf) <= 2
        assert (pmf @ delta) ** 2 / (pmf @ gain) <= best * (1 + 1e-9)


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
    pmfs = np.array([exploration.ids_pmf(mean, sd, np.random.default_rng(seed), mix=0.02) for seed in range(200)])
    assert np.allclose(pmfs.sum(axis=1), 1.0)
    assert (pmfs[:, 2] == 0.0).all()  # confidently dominated
    # Only its share of the uniform mix (0.02 / 2 alive models), as a rule: its outcome cannot change the choice.
    assert pmfs[:, 1].mean() <= 0.0105 and pmfs[:, 1].max() <= 0.02
    # Two close models, one uncertain: IDS tries the uncertain one (its outcome can change the decision).
    pmfs = [exploration.ids_pmf(np.array([0.80, 0.79]), np.array([0.01, 0.2]), np.random.default_rng(s), mix=0.0)
            for s in range(200)]
    assert np.mean([p[1] for p in pmfs]) > 0.5


def test_ids_pmf_is_reproducible_for_a_seed() -> None:
    first = exploration.ids_pmf(MEAN, SD, np.random.default_rng(7))
    again = exploration.ids_pmf(MEAN, SD, np.random.default_rng(7))
    assert np.array_equal(first, again) and first.sum() == pytest.approx(1.0)
    assert first[4] >= 0.02 / 5  # not dominated (0.30 + 3·0.20 > 0.62 − 3·0.03): keeps the mix share


def test_the_default_policy_with_ids_learns_the_good_model_and_replays() -> None:
    """Five models, one of quality 0.8, the others 0.4–0.6 (seed 0, 600 requests): the good one gets ≥ 85% of the
    last 300 routes (measured 100%; 20% if the pmf were uniform); the same
    seed gives the same decisions."""
    quality = {"a": 0.4, "b": 0.5, "good": 0.8, "c": 0.6, "d": 0.45}
    models = [ModelSpec(name, 1.0, 1.0) for name in quality]

    def run() -> list[str]:
        router = Router(models, make_policy("default:sampler=ids"), seed=0)
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
