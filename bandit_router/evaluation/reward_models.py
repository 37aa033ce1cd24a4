"""Reward models q̂(x, a) for the direct method and doubly robust estimators, and their cross-fitting.

A reward model is fitted on logged rounds (features (m, d), actions (m,), rewards (m,)) and predicts every
action's expected reward for new contexts, shape (n, K). `fit_rewards` cross-fits it: the rounds are split
into `folds` random folds and each fold is predicted by a model fitted on the others (Chernozhukov et al.
2018), so a round's prediction never saw that round's reward, which DR's unbiasedness argument needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import InvalidInput
from .resampling import bootstrap_counts


class RewardPredictor(Protocol):
    """A fitted reward model."""

    def predict(self, features: np.ndarray) -> np.ndarray:
        """q̂(x_i, a) for `features` (n, d): shape (n, K)."""
        ...


class RewardModel(Protocol):
    """A recipe that fits a `RewardPredictor` on logged rounds."""

    def fit(
        self,
        features: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        n_actions: int,
        sample_weight: np.ndarray | None = None,
    ) -> RewardPredictor:
        """Fit on `features` (m, d), `actions` (m,), `rewards` (m,), optional `sample_weight` (m,)."""
        ...


@dataclass(frozen=True)
class _FittedRidge:
    """Per action a: q̂(x, a) = r̄_a + (x − x̄_a)·θ_a."""

    means_x: np.ndarray  # (K, d)
    means_r: np.ndarray  # (K,)
    theta: np.ndarray  # (K, d)

    def predict(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        # (n, K): r̄_a + x·θ_a − x̄_a·θ_a
        offset = self.means_r - np.einsum("kd,kd->k", self.means_x, self.theta)
        return np.asarray(x @ self.theta.T + offset, dtype=np.float64)


@dataclass(frozen=True)
class RidgeRewardModel:
    """One ridge regression per action on the context features (x ⊗ e_a, block by block), centred per action:

        θ_a = argmin Σ_{i: a_i = a} c_i (r_i − r̄_a − (x_i − x̄_a)·θ)² + ridge·‖θ‖²

    with c_i the sample weights and r̄_a, x̄_a the weighted means of the rounds that chose a, so the penalty
    shrinks towards the action's mean reward rather than towards 0. An action with no rounds predicts the
    overall mean reward. Closed form, O(m·d² + K·d³).
    """

    ridge: float = 1.0

    def __post_init__(self) -> None:
        if not self.ridge > 0:
            raise InvalidInput("ridge must be > 0")

    def fit(
        self,
        features: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        n_actions: int,
        sample_weight: np.ndarray | None = None,
    ) -> _FittedRidge:
        x = np.asarray(features, dtype=np.float64)
        r = np.asarray(rewards, dtype=np.float64)
        a = np.asarray(actions, dtype=np.intp)
        c = np.ones(len(r)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        d = x.shape[1]
        total = c.sum()
        overall = float(c @ r / total) if total > 0 else 0.0
        means_x = np.zeros((n_actions, d))
        means_r = np.full(n_actions, overall)
        theta = np.zeros((n_actions, d))
        for k in range(n_actions):
            rows = (a == k) & (c > 0)
            weight = c[rows]
            if weight.sum() <= 0:
                continue
            xk, rk = x[rows], r[rows]
            mx = weight @ xk / weight.sum()
            mr = float(weight @ rk / weight.sum())
            root = np.sqrt(weight)
            xs = (xk - mx) * root[:, None]
            gram = xs.T @ xs + self.ridge * np.eye(d)  # Xᵀ X of one array: numpy's fast symmetric product
            theta[k] = np.linalg.solve(gram, xs.T @ (root * (rk - mr)))
            means_x[k], means_r[k] = mx, mr
        return _FittedRidge(means_x, means_r, theta)


@dataclass(frozen=True, eq=False)
class RewardFit:
    """A reward model fitted on one set of rounds.

    `predictions` (n, K): cross-fitted q̂(x_i, a). `replicates` (B, n, K), float32: for bootstrap replicate b
    with resampling counts c_b (n,), c_b,i · q̂_b(x_i, a) where q̂_b was refitted on that resample, so a
    policy's DM value in replicate b is Σ_{i,a} π(a|x_i) · replicates[b, i, a] / n (DM's standard error).
    Memory: 4·B·n·K bytes.
    """

    predictions: np.ndarray
    replicates: np.ndarray | None = None


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
    """A seeded random assignment of n rounds to `folds` folds of (nearly) equal size, shape (n,)."""
    return np.random.default_rng(seed).permutation(n) % folds


def fit_rewards(
    features: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    n_actions: int,
    *,
    model: RewardModel | None = None,
    folds: int = 5,
    seed: int = 0,
    n_bootstrap: int = 0,
) -> RewardFit:
    """Cross-fit `model` (default: `RidgeRewardModel()`) on `features` (n, d), `actions` (n,), `rewards` (n,).

    With `folds` = 1 the model is fitted and evaluated on all rounds (in-sample). With `n_bootstrap` > 0, also
    refit it on that many seeded bootstrap resamples (as sample weights) and keep their predictions.
    """
    x = np.asarray(features, dtype=np.float64)
    a = np.asarray(actions, dtype=np.intp)
    r = np.asarray(rewards, dtype=np.float64)
    n = len(r)
    if x.ndim != 2 or x.shape[0] != n:
        raise InvalidInput(f"features must have shape ({n}, d), got {x.shape}")
    if not np.isfinite(x).all():
        raise InvalidInput("features must be finite")
    if folds < 1:
        raise InvalidInput("folds must be >= 1")
    model = model or RidgeRewardModel()
    predictions = np.empty((n, n_actions))
    if folds == 1 or n < 2 * folds:
        predictions[:] = model.fit(x, a, r, n_actions).predict(x)
    else:
        ids = fold_ids(n, folds, seed)
        for f in range(folds):
            test = ids == f
            predictions[test] = model.fit(x[~test], a[~test], r[~test], n_actions).predict(x[test])
    replicates = None
    if n_bootstrap:
        replicates = np.empty((n_bootstrap, n, n_actions), dtype=np.float32)
        for b, counts in enumerate(bootstrap_counts(n, n_bootstrap, seed)):
            fitted = model.fit(x, a, r, n_actions, sample_weight=counts)
            replicates[b] = counts[:, None] * fitted.predict(x)
    return RewardFit(predictions, replicates)
