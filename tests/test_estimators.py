"""Off-policy estimators against exact ground truth (`evaluation.synthetic`), and their arithmetic."""

from __future__ import annotations

import dataclasses
import doctest
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from bandit_router.errors import InvalidInput
from bandit_router.evaluation import (
    IPS,
    SNIPS,
    ClippedIPS,
    DirectMethod,
    DoublyRobust,
    Estimate,
    RidgeRewardModel,
    effective_sample_size,
    fit_rewards,
    make_estimator,
)
from bandit_router.evaluation import estimators as estimators_module
from bandit_router.evaluation.resampling import bootstrap_counts
from bandit_router.evaluation.synthetic import BanditLog, make_synthetic_bandit

SEEDS = range(50)
N_ROUNDS = 2000
# A (nearly) well-specified model for DM: the synthetic contexts are one-hot, so ridge per action is a table.
TABULAR = RidgeRewardModel(ridge=0.1)
ESTIMATORS = {
    "ips": IPS(n_bootstrap=200),
    "clipped-ips": ClippedIPS(max_weight=10, n_bootstrap=200),
    "clipped-ips-harsh": ClippedIPS(max_weight=3, n_bootstrap=200),
    "snips": SNIPS(n_bootstrap=200),
    "dm": DirectMethod(reward_model=TABULAR),
    "dr": DoublyRobust(reward_model=TABULAR, n_bootstrap=200),
}


@dataclass
class Trial:
    truth: float
    estimates: dict[str, Estimate]


def _estimate(est: Any, log: BanditLog, target: np.ndarray) -> Estimate:
    return est.estimate(
        rewards=log.rewards,
        actions=log.actions,
        logged_probability=log.logged_probability,
        target_pmf=target,
        features=log.features,
    )


@pytest.fixture(scope="module")
def trials() -> list[Trial]:
    """50 seeds: a random bandit, 2000 rounds from its softmax logger, the ε-greedy-on-the-truth candidate."""
    out = []
    for seed in SEEDS:
        bandit = make_synthetic_bandit(seed=seed, temperature=1.0)
        log = bandit.sample(N_ROUNDS, seed=seed + 1000)
        pool = bandit.epsilon_greedy(0.1)
        target = log.target(pool)
        out.append(Trial(bandit.value(pool), {name: _estimate(e, log, target) for name, e in ESTIMATORS.items()}))
    return out


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_interval_covers_the_true_value_in_at_least_90_percent_of_50_seeds(trials: list[Trial], name: str) -> None:
    covered = sum(t.estimates[name].covers(t.truth) for t in trials)
    assert covered >= 45, f"{name}: {covered}/50"


@pytest.mark.parametrize("name", ["ips", "clipped-ips", "snips", "dm", "dr"])
def test_bootstrap_interval_covers_too(trials: list[Trial], name: str) -> None:
    covered = 0
    for t in trials:
        ci = t.estimates[name].bootstrap_ci
        assert ci is not None
        covered += ci[0] <= t.truth <= ci[1]
    assert covered >= 45, f"{name} bootstrap: {covered}/50"


def _rmse(trials: list[Trial], name: str) -> float:
    return math.sqrt(np.mean([(t.estimates[name].value - t.truth) ** 2 for t in trials]))


def test_doubly_robust_error_is_below_ips_error(trials: list[Trial]) -> None:
    assert _rmse(trials, "dr") < 0.8 * _rmse(trials, "ips")
    wins = sum(abs(t.estimates["dr"].value - t.truth) < abs(t.estimates["ips"].value - t.truth) for t in trials)
    assert wins > 25


def test_harsh_clipping_is_biased_but_its_interval_accounts_for_it(trials: list[Trial]) -> None:
    bias = np.mean([t.estimates["clipped-ips-harsh"].value - t.truth for t in trials])
    assert bias < -0.1  # clipping at 3 throws away real weight …
    assert all(t.estimates["clipped-ips-harsh"].ci_high > t.estimates["clipped-ips-harsh"].value + 0.1 for t in trials)


def test_ess_is_reported_and_is_below_n_for_a_different_policy(trials: list[Trial]) -> None:
    for t in trials:
        est = t.estimates["ips"]
        assert est.n == N_ROUNDS
        assert 0 < est.ess < N_ROUNDS
        assert t.estimates["dr"].ess == pytest.approx(est.ess)


# -- every interval holds its own point and covers the truth at its nominal rate ------------------------------

COVERAGE_LOGS = 200
COVERAGE_MIN = 181
"""Nominal 95% less 3 binomial standard deviations over 200 logs: 200·(0.95 − 3·√(0.95·0.05/200)) = 180.8."""
HARSH_M = 3.0


@dataclass
class FlooredTrial:
    truth: float
    clipped_truth: float
    clipped_off: float
    estimates: dict[str, Estimate]


def _within(interval: tuple[float, float] | None, value: float) -> bool:
    assert interval is not None
    return interval[0] <= value <= interval[1]


def _floored_trials(transform: Any, estimators: dict[str, Any]) -> list[FlooredTrial]:
    out = []
    for seed in range(COVERAGE_LOGS):
        bandit = make_synthetic_bandit(seed=seed, temperature=1.0)
        log = bandit.sample(N_ROUNDS, seed=seed + 1000)
        pool = bandit.epsilon_greedy(0.1)
        expected = transform(bandit.expected_reward)
        truth = bandit.value(pool, expected)
        shifted = dataclasses.replace(log, rewards=transform(log.rewards))
        estimates = {name: _estimate(e, shifted, log.target(pool)) for name, e in estimators.items()}
        clipped_off = float(bandit.probability @ np.maximum(pool - HARSH_M * bandit.logging_pmf, 0.0).sum(axis=1))
        out.append(FlooredTrial(truth, bandit.clipped_value(pool, HARSH_M, expected), clipped_off, estimates))
    return out


FLOORED = {name: ESTIMATORS[name] for name in ("ips", "clipped-ips-harsh", "snips")}  # clipping at M = 3 bites
"""The weighting estimators, whose intervals the floor shifts; DM's and DR's are covered on `trials` (their 200
floored logs cost ~7 s of refits)."""


@pytest.fixture(scope="module")
def floored_trials() -> list[FlooredTrial]:
    """200 seeds of `trials`' setting with rewards 0.5 + 0.5·Bernoulli: every reward ≥ 0.5, as quality − λ·cost on
    a service's log usually is. Clipping at M = 3 takes ≈ 0.27 off the value."""
    return _floored_trials(lambda r: 0.5 + 0.5 * r, FLOORED)


@pytest.mark.parametrize("name", list(FLOORED))
def test_every_interval_holds_its_own_point_estimate(floored_trials: list[FlooredTrial], name: str) -> None:
    """A point outside its own interval (clipped IPS printed 0.618 [1.173, 2.886]): the clipped estimate's
    interval was shifted up by r_min·(mean clipped-off weight), r_min = 0.5 here, so it held neither V̂_M nor
    V_M. Normal intervals hold the point by construction; percentile bootstrap ones need not, but do here."""
    for t in floored_trials:
        est = t.estimates[name]
        assert est.normal_ci[0] <= est.value <= est.normal_ci[1], (name, est)
        assert est.bootstrap_ci is not None
        assert est.bootstrap_ci[0] <= est.value <= est.bootstrap_ci[1], (name, est)


@pytest.mark.parametrize("name", list(FLOORED))
def test_every_interval_covers_the_true_value_at_its_nominal_rate(
    floored_trials: list[FlooredTrial], name: str
) -> None:
    normal = sum(_within(t.estimates[name].normal_ci, t.truth) for t in floored_trials)
    boot = sum(_within(t.estimates[name].bootstrap_ci, t.truth) for t in floored_trials)
    assert normal >= COVERAGE_MIN and boot >= COVERAGE_MIN, f"{name}: normal {normal}/200, bootstrap {boot}/200"


@pytest.mark.parametrize("transform", [lambda r: 0.5 + 0.5 * r, lambda r: r - 0.7], ids=["r>=0.5", "r-0.7"])
def test_clipped_ips_interval_covers_the_clipped_value_and_the_true_one(transform: Any) -> None:
    """The point is V̂_M, an estimate of V_M = E[min(w, M) r]; the interval covers V_M (what the point estimates)
    and V, whatever the rewards' sign (with rewards of both signs the clipped-off part can go either way)."""
    trials = _floored_trials(transform, {"clip": ESTIMATORS["clipped-ips-harsh"]})
    assert min(t.clipped_off for t in trials) > 0.1  # clipping bites on every log: E[(w − M)₊] > 0.1
    for ci in ("normal_ci", "bootstrap_ci"):
        clipped = sum(_within(getattr(t.estimates["clip"], ci), t.clipped_truth) for t in trials)
        true = sum(_within(getattr(t.estimates["clip"], ci), t.truth) for t in trials)
        assert clipped >= COVERAGE_MIN and true >= COVERAGE_MIN, f"{ci}: V_M {clipped}/200, V {true}/200"
        assert all(_within(getattr(t.estimates["clip"], ci), t.estimates["clip"].value) for t in trials)


def test_clipped_ips_interval_runs_from_its_own_lower_bound_to_ips_upper_one() -> None:
    """For rewards ≥ 0: [V̂_M − z·se(V̂_M), IPS's upper bound]; nothing clipped: IPS's interval exactly."""
    data = _fixed([1.0, 0.2, 0.9, 0.4, 0.6], [1.9, 0.1, 1.5, 0.3, 1.2])
    ips = IPS().estimate(**data)
    clip = ClippedIPS(max_weight=1.0).estimate(**data)
    clipped_terms = np.minimum([1.9, 0.1, 1.5, 0.3, 1.2], 1.0) * np.array([1.0, 0.2, 0.9, 0.4, 0.6])
    z = 1.959963984540054
    assert clip.value == pytest.approx(clipped_terms.mean())
    assert clip.std_error == pytest.approx(clipped_terms.std(ddof=1) / math.sqrt(5))
    assert clip.ci_low == pytest.approx(clip.value - z * clip.std_error)
    assert clip.ci_high == pytest.approx(ips.ci_high)
    unclipped = ClippedIPS(max_weight=2.0).estimate(**data)
    assert (unclipped.value, unclipped.ci_low, unclipped.ci_high) == pytest.approx((ips.value, ips.ci_low, ips.ci_high))


def test_clipped_ips_ends_take_the_clipped_off_part_by_the_rewards_sign() -> None:
    """Rewards of both signs, M = 1: ℓ_i = min(w_i, M) r_i + (w_i − M)₊ min(r_i, 0), u_i = … max(r_i, 0); the normal
    ends are ℓ̄ − z·sd(ℓ)/√n and ū + z·sd(u)/√n (sd with ddof = 1), the bootstrap ends the 2.5% percentile of ℓ̄*
    and the 97.5% one of ū* on the same resamples. Dropping the negative part from ℓ moves the lower end up."""
    r = np.array([1.0, -0.8, -0.9, 0.4, 0.6, -0.5, -0.3, 0.7])
    w = np.array([1.9, 0.1, 1.5, 0.3, 1.2, 1.8, 0.7, 1.6])
    n, m, z, b = len(r), 1.0, 1.959963984540054, 400
    kept, off = np.minimum(w, m) * r, np.maximum(w - m, 0.0)
    lower, upper = kept + off * np.minimum(r, 0.0), kept + off * np.maximum(r, 0.0)
    assert lower.mean() < kept.mean() - 0.1 and upper.mean() > kept.mean() + 0.1  # both parts matter here
    clip = ClippedIPS(max_weight=m, n_bootstrap=b, seed=3).estimate(**_fixed(list(r), list(w)))
    assert clip.value == pytest.approx(kept.mean())
    assert clip.normal_ci == pytest.approx(
        (lower.mean() - z * lower.std(ddof=1) / math.sqrt(n), upper.mean() + z * upper.std(ddof=1) / math.sqrt(n))
    )
    counts = bootstrap_counts(n, b, 3)
    assert clip.bootstrap_ci == pytest.approx(
        (np.quantile(counts @ lower / n, 0.025), np.quantile(counts @ upper / n, 0.975))
    )


# -- identical to the logger -------------------------------------------------------------------------------


def test_candidate_identical_to_the_logger_estimates_the_logged_mean() -> None:
    bandit = make_synthetic_bandit(seed=7, temperature=1.0)
    log = bandit.sample(3000, seed=8)
    target = log.logged_pmf
    mean = float(log.rewards.mean())
    for est in (IPS(), SNIPS(), ClippedIPS(max_weight=1.0)):
        e = _estimate(est, log, target)
        assert e.value == pytest.approx(mean, abs=1e-12)
        assert e.ess == pytest.approx(len(log.rewards))
    # DM and DR equal it in expectation: the correction Σ_a μ q̂ − q̂(a_i) has mean zero and a tiny spread.
    dr = _estimate(DoublyRobust(reward_model=TABULAR), log, target)
    assert abs(dr.value - mean) < dr.std_error
    dm = _estimate(DirectMethod(reward_model=TABULAR), log, target)
    assert dm.covers(mean)


# -- SNIPS -------------------------------------------------------------------------------------------------


def _fixed(rewards: list[float], weights: list[float]) -> dict[str, Any]:
    """Two actions, logger 1/2 each, action 0 logged, π(0) = w/2: so the importance weight of round i is w_i."""
    w = np.asarray(weights)
    return {
        "rewards": np.asarray(rewards, dtype=float),
        "actions": np.zeros(len(w), dtype=int),
        "logged_probability": np.full(len(w), 0.5),
        "target_pmf": np.stack([w / 2, 1 - w / 2], axis=1),
    }


def test_snips_divides_by_the_sum_of_the_weights_not_by_n() -> None:
    data = _fixed([1.0, 0.0, 1.0, 1.0], [2.0, 2.0, 0.5, 0.1])  # Σw = 4.6 ≠ n = 4
    snips = SNIPS().estimate(**data)
    ips = IPS().estimate(**data)
    assert snips.value == pytest.approx((2.0 + 0.5 + 0.1) / 4.6)
    assert ips.value == pytest.approx((2.0 + 0.5 + 0.1) / 4)
    assert snips.ess == pytest.approx(4.6**2 / (4 + 4 + 0.25 + 0.01))


def test_snips_of_a_constant_reward_is_that_constant_whatever_the_weights() -> None:
    for weights in ([1.9, 0.1, 0.3, 0.2], [0.1, 0.1, 0.1, 0.2], [2.0, 2.0, 2.0, 1.5]):
        data = _fixed([0.7] * 4, weights)
        assert SNIPS().estimate(**data).value == pytest.approx(0.7)
        assert IPS().estimate(**data).value == pytest.approx(0.7 * np.mean(weights))


def test_snips_is_shift_equivariant_and_stays_within_the_observed_rewards() -> None:
    bandit = make_synthetic_bandit(seed=3, temperature=0.3)
    log = bandit.sample(500, seed=4)
    target = log.target(bandit.epsilon_greedy(0.0))
    kw: dict[str, Any] = {"actions": log.actions, "logged_probability": log.logged_probability, "target_pmf": target}
    base = SNIPS().estimate(rewards=log.rewards, **kw)
    shifted = SNIPS().estimate(rewards=log.rewards + 5.0, **kw)
    assert shifted.value == pytest.approx(base.value + 5.0)
    assert shifted.std_error == pytest.approx(base.std_error)
    assert 0.0 <= base.value <= 1.0


def test_snips_without_any_weight_is_nan_not_an_error() -> None:
    est = SNIPS(n_bootstrap=10).estimate(**_fixed([1.0, 0.0], [0.0, 0.0]))
    assert math.isnan(est.value) and est.ess == 0.0
    assert est.to_json()["value"] is None


# -- intervals, ESS, reward models --------------------------------------------------------------------------


def test_effective_sample_size() -> None:
    assert effective_sample_size(np.ones(10)) == pytest.approx(10)
    assert effective_sample_size(np.array([0, 0, 3.0, 0])) == pytest.approx(1)
    w = np.array([0.5, 2.0, 1.0, 0.1])
    assert effective_sample_size(3 * w) == pytest.approx(effective_sample_size(w))
    assert effective_sample_size(np.zeros(3)) == 0.0


def test_bootstrap_is_seeded() -> None:
    bandit = make_synthetic_bandit(seed=1)
    log = bandit.sample(400, seed=2)
    target = log.target(bandit.epsilon_greedy(0.2))
    a = _estimate(IPS(n_bootstrap=100, seed=5), log, target)
    b = _estimate(IPS(n_bootstrap=100, seed=5), log, target)
    c = _estimate(IPS(n_bootstrap=100, seed=6), log, target)
    assert a.bootstrap_ci == b.bootstrap_ci
    assert a.bootstrap_ci != c.bootstrap_ci
    primary = _estimate(IPS(n_bootstrap=100, interval="bootstrap"), log, target)
    assert (primary.ci_low, primary.ci_high) == primary.bootstrap_ci and primary.interval == "bootstrap"


def test_normal_interval_width_follows_the_standard_error() -> None:
    est = IPS(confidence=0.9).estimate(**_fixed([1.0, 0.0, 1.0, 0.5], [1.0, 1.5, 0.5, 1.0]))
    z = 1.6448536269514722
    assert est.ci_high - est.ci_low == pytest.approx(2 * z * est.std_error)


@pytest.mark.parametrize("estimator", [
    DirectMethod(), DirectMethod(n_bootstrap=20, interval="bootstrap"), IPS(n_bootstrap=20, interval="bootstrap"),
    SNIPS(n_bootstrap=20), ClippedIPS(n_bootstrap=20, interval="bootstrap"), DoublyRobust(n_bootstrap=20),
], ids=lambda e: f"{e.name}-{e.interval}")
def test_one_round_gives_no_interval(estimator: Any) -> None:
    """From one observation no estimator claims certainty: DM's refits of one round all agreed, and every
    bootstrap resample of one round is that round, so DM (and any bootstrap-primary interval) gave a zero-width
    interval at n = 1. Now the standard error is ∞, the interval (−∞, ∞) (null in JSON), and no bootstrap one."""
    est = estimator.estimate(rewards=np.array([0.7]), actions=np.array([0]), logged_probability=np.array([0.5]),
                             target_pmf=np.array([[1.0, 0.0]]), features=np.array([[1.0, 2.0]]))
    assert est.n == 1 and math.isfinite(est.value)
    assert (est.ci_low, est.ci_high) == (-math.inf, math.inf) and est.std_error == math.inf
    assert est.bootstrap_ci is None and est.interval == "normal"
    assert est.to_json()["ci_low"] is None and est.to_json()["ci_high"] is None
    two = estimator.estimate(rewards=np.array([0.7, 0.2]), actions=np.array([0, 1]),
                             logged_probability=np.array([0.5, 0.5]), target_pmf=np.array([[0.5, 0.5]] * 2),
                             features=np.array([[1.0, 2.0], [0.5, 1.0]]))
    assert math.isfinite(two.ci_low) and math.isfinite(two.ci_high)  # from two rounds: an interval again


def test_cross_fitted_prediction_does_not_see_its_own_reward() -> None:
    bandit = make_synthetic_bandit(seed=2)
    log = bandit.sample(300, seed=3)
    fit = fit_rewards(log.features, log.actions, log.rewards, 4, folds=5, seed=0)
    changed = log.rewards.copy()
    changed[17] = 1.0 - changed[17]
    refit = fit_rewards(log.features, log.actions, changed, 4, folds=5, seed=0)
    assert np.allclose(fit.predictions[17], refit.predictions[17])
    assert not np.allclose(fit.predictions, refit.predictions)  # other folds did see it


def test_ridge_reward_model_recovers_a_table() -> None:
    bandit = make_synthetic_bandit(seed=4, n_contexts=5, n_actions=3)
    log = bandit.sample(20_000, seed=5)
    predicted = RidgeRewardModel(ridge=1e-3).fit(log.features, log.actions, log.rewards, 3).predict(bandit.features)
    assert np.abs(predicted - bandit.expected_reward).max() < 0.05


def test_dm_shares_a_precomputed_fit() -> None:
    bandit = make_synthetic_bandit(seed=5)
    log = bandit.sample(500, seed=6)
    target = log.target(bandit.epsilon_greedy(0.1))
    fit = fit_rewards(log.features, log.actions, log.rewards, 4, model=TABULAR, n_bootstrap=50, seed=0)
    shared = DirectMethod(reward_model=TABULAR, n_bootstrap=50).estimate(
        rewards=log.rewards,
        actions=log.actions,
        logged_probability=log.logged_probability,
        target_pmf=target,
        reward_fit=fit,
    )
    own = _estimate(DirectMethod(reward_model=TABULAR, n_bootstrap=50), log, target)
    assert shared.value == pytest.approx(own.value)
    assert shared.std_error == pytest.approx(own.std_error)


def test_docstring_examples_run() -> None:
    result = doctest.testmod(estimators_module)
    assert result.attempted > 0 and result.failed == 0


# -- invalid input ------------------------------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "rewards": np.array([1.0, 0.0]),
    "actions": np.array([0, 1]),
    "logged_probability": np.array([0.5, 0.5]),
    "target_pmf": np.array([[0.5, 0.5], [0.5, 0.5]]),
}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"rewards": np.array([[1.0, 0.0]])}, "rewards must have shape"),
        ({"rewards": np.array([])}, "rewards must have shape"),
        ({"rewards": np.array([1.0, np.nan])}, "rewards must be finite"),
        ({"actions": np.array([0])}, "actions must have shape"),
        ({"actions": np.array([0.0, 1.0])}, "actions must be integer"),
        ({"actions": np.array([0, 2])}, r"actions must be in 0…1"),
        ({"logged_probability": np.array([0.5, 0.0])}, r"logged_probability must be in \(0, 1\]"),
        ({"logged_probability": np.array([0.5, 1.5])}, r"logged_probability must be in \(0, 1\]"),
        ({"logged_probability": np.array([0.5])}, "logged_probability must have shape"),
        ({"target_pmf": np.array([0.5, 0.5])}, "target_pmf must have shape"),
        ({"target_pmf": np.array([[0.5, 0.6], [0.5, 0.5]])}, "must sum to 1"),
        ({"target_pmf": np.array([[1.5, -0.5], [0.5, 0.5]])}, "non-negative"),
    ],
)
@pytest.mark.parametrize("estimator", [IPS(), ClippedIPS(), SNIPS(), DoublyRobust(folds=2)])
def test_invalid_arrays_are_refused(change: dict[str, np.ndarray], match: str, estimator: object) -> None:
    with pytest.raises(InvalidInput, match=match):
        estimator.estimate(**{**GOOD, **change})  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: IPS(confidence=1.0), "confidence"),
        (lambda: IPS(n_bootstrap=-1), "n_bootstrap"),
        (lambda: SNIPS(interval="bootstrap"), "needs n_bootstrap"),
        (lambda: IPS(interval="exact"), "interval must be"),
        (lambda: ClippedIPS(max_weight=0), "max_weight"),
        (lambda: DoublyRobust(folds=1), "folds >= 2"),
        (lambda: DirectMethod(folds=0), "folds must be"),
        (lambda: RidgeRewardModel(ridge=0), "ridge"),
        (lambda: make_estimator("magic"), "unknown estimator 'magic'"),
        (lambda: DirectMethod().estimate(**GOOD), "needs `features`"),
        (lambda: IPS(seed=-1), "seed"),
    ],
)
def test_invalid_settings_are_refused(build: object, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        build()  # type: ignore[operator]
