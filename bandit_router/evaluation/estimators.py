"""Off-policy estimators: the value of a target policy π from rounds logged under another policy μ.

Every estimator is a small frozen class with one verb, `estimate(...) -> Estimate`, and the same arguments:

    rewards             shape (n,)     observed reward of the logged action (quality, cost or quality − λ·cost)
    actions             shape (n,)     index of the logged action in 0…K−1
    logged_probability  shape (n,)     μ(a_i | x_i), the propensity the logger chose a_i with, in (0, 1]
    target_pmf          shape (n, K)   π(· | x_i), the target policy's pmf on the logged context (rows sum to 1)
    features            shape (n, d)   context features for the reward model (DM and DR only)

The importance weight of round i is w_i = π(a_i | x_i) / μ(a_i | x_i). Every estimate reports the effective
sample size of these weights, ESS = (Σ w)² / Σ w² (Kish 1965): n when π = μ, near 1 when a few rounds carry
all the weight. Intervals are normal (from the estimator's per-round influence terms) and, with
`n_bootstrap` > 0, a seeded percentile bootstrap over rounds; `interval` picks which one is the primary
`ci_low`/`ci_high`. A normal interval holds its point; a percentile one need not (it did on every seeded test
log). Clipped IPS's point estimates the clipped value V_M and its interval covers V_M and V asymptotically
(`ClippedIPS`).
From one round there is no interval: (−∞, ∞), standard error ∞, no bootstrap.

| estimator      | V̂                                                    | bias              | variance        |
|----------------|------------------------------------------------------|-------------------|-----------------|
| `IPS`          | (1/n) Σ w_i r_i                                       | none              | high            |
| `ClippedIPS`   | (1/n) Σ min(w_i, M) r_i                               | −E[(w − M)₊ r]    | ≤ M²-bounded    |
| `SNIPS`        | Σ w_i r_i / Σ w_i                                     | O(1/n)            | lower           |
| `DirectMethod` | (1/n) Σ_i Σ_a π(a|x_i) q̂(x_i, a)                       | the model's error | lowest          |
| `DoublyRobust` | DM + (1/n) Σ w_i (r_i − q̂(x_i, a_i)), q̂ cross-fitted  | none              | IPS's on r − q̂  |

"none" assumes μ(a|x) > 0 wherever π(a|x) > 0 (overlap) and correctly logged propensities.

Why one module: the estimators share the weights, the interval helpers and the bootstrap's resamples
(`bootstrap_counts`, the same for every estimator of one log), and the table above compares them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from ..errors import InvalidInput
from ..hints import quoted
from .resampling import bootstrap_counts
from .reward_models import RewardFit, RewardModel, RidgeRewardModel, fit_rewards

PMF_TOLERANCE = 1e-6
"""How far a row of `target_pmf` may sum away from 1."""


@dataclass(frozen=True)
class Estimate:
    """One estimate of a policy's value, with its interval and the effective sample size of its weights.

    `ci_low`/`ci_high` are the primary interval (`interval` says which kind); `normal_ci` and, when a
    bootstrap ran, `bootstrap_ci` are both kept. A value is `nan` when it cannot be estimated (e.g. SNIPS when
    the target puts no mass on any logged action).
    """

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    std_error: float
    ess: float
    n: int
    confidence: float
    interval: str
    normal_ci: tuple[float, float]
    bootstrap_ci: tuple[float, float] | None = None

    def covers(self, value: float) -> bool:
        """True when `value` lies in the primary interval."""
        return bool(self.ci_low <= value <= self.ci_high)

    def to_json(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator,
            "value": _finite_or_none(self.value),
            "ci_low": _finite_or_none(self.ci_low),
            "ci_high": _finite_or_none(self.ci_high),
            "std_error": _finite_or_none(self.std_error),
            "ess": _finite_or_none(self.ess),
            "n": self.n,
            "confidence": self.confidence,
            "interval": self.interval,
            "normal_ci": [_finite_or_none(x) for x in self.normal_ci],
            "bootstrap_ci": None if self.bootstrap_ci is None else [_finite_or_none(x) for x in self.bootstrap_ci],
        }


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


class Estimator(Protocol):
    """What `evaluate_log` needs from an estimator."""

    name: ClassVar[str]

    def estimate(
        self,
        *,
        rewards: np.ndarray,
        actions: np.ndarray,
        logged_probability: np.ndarray,
        target_pmf: np.ndarray,
        features: np.ndarray | None = None,
        reward_fit: RewardFit | None = None,
    ) -> Estimate: ...


# -- shared arithmetic ---------------------------------------------------------------------------------


def effective_sample_size(weights: np.ndarray) -> float:
    """ESS = (Σ w)² / Σ w² of importance weights `weights` (shape (n,)); 0 when every weight is 0."""
    w = np.asarray(weights, dtype=np.float64)
    total_sq = float(np.dot(w, w))
    return 0.0 if total_sq == 0.0 else float(w.sum()) ** 2 / total_sq


def importance_weights(actions: np.ndarray, logged_probability: np.ndarray, target_pmf: np.ndarray) -> np.ndarray:
    """w_i = π(a_i | x_i) / μ(a_i | x_i), shape (n,)."""
    n = len(actions)
    return np.asarray(target_pmf[np.arange(n), actions] / logged_probability, dtype=np.float64)


def _z(confidence: float) -> float:
    from scipy import stats  # here: 0.7 s of imports that `bandit-router serve` need not pay (performance.md)

    return float(stats.norm.ppf(0.5 + confidence / 2.0))


def normal_interval(value: float, std_error: float, confidence: float) -> tuple[float, float]:
    """value ± z_{(1+c)/2} · std_error."""
    half = _z(confidence) * std_error
    return value - half, value + half


def _percentiles(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = replicates[np.isfinite(replicates)]
    if len(finite) == 0:
        return math.nan, math.nan
    alpha = 1.0 - confidence
    lo, hi = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def check_inputs(
    rewards: np.ndarray, actions: np.ndarray, logged_probability: np.ndarray, target_pmf: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate and convert the common arguments; raises `InvalidInput` naming the argument at fault."""
    r = np.asarray(rewards, dtype=np.float64)
    p = np.asarray(logged_probability, dtype=np.float64)
    pi = np.asarray(target_pmf, dtype=np.float64)
    a_raw = np.asarray(actions)
    if r.ndim != 1 or len(r) == 0:
        raise InvalidInput(f"rewards must have shape (n,) with n >= 1, got {r.shape}")
    n = len(r)
    if not np.isfinite(r).all():
        raise InvalidInput("rewards must be finite")
    if a_raw.shape != (n,):
        raise InvalidInput(f"actions must have shape ({n},), got {a_raw.shape}")
    if a_raw.dtype.kind not in "iu":
        raise InvalidInput("actions must be integer indices")
    if p.shape != (n,):
        raise InvalidInput(f"logged_probability must have shape ({n},), got {p.shape}")
    if not (np.isfinite(p).all() and (p > 0).all() and (p <= 1.0 + 1e-12).all()):
        raise InvalidInput("logged_probability must be in (0, 1]")
    if pi.ndim != 2 or pi.shape[0] != n or pi.shape[1] == 0:
        raise InvalidInput(f"target_pmf must have shape ({n}, K), got {pi.shape}")
    k = pi.shape[1]
    a = a_raw.astype(np.intp)
    if (a < 0).any() or (a >= k).any():
        raise InvalidInput(f"actions must be in 0…{k - 1} (target_pmf has {k} columns)")
    if not np.isfinite(pi).all() or (pi < -1e-12).any():
        raise InvalidInput("target_pmf must be finite and non-negative")
    if (np.abs(pi.sum(axis=1) - 1.0) > PMF_TOLERANCE).any():
        raise InvalidInput("every row of target_pmf must sum to 1")
    return r, a, p, np.clip(pi, 0.0, None)


_Side = tuple[float, float, "np.ndarray | None"]
"""One end's source: (centre, standard error, bootstrap replicates or None)."""


@dataclass(frozen=True, kw_only=True)
class _Settings:
    confidence: float = 0.95
    """Coverage of the intervals."""
    n_bootstrap: int = 0
    """Bootstrap replicates (0: no bootstrap interval)."""
    interval: str = "normal"
    """Which interval is primary: `normal` or `bootstrap` (needs `n_bootstrap` >= 2)."""
    seed: int = 0
    """Seed of the bootstrap's resampling."""

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise InvalidInput("confidence must be in (0, 1)")
        if self.n_bootstrap < 0:
            raise InvalidInput("n_bootstrap must be >= 0")
        if self.seed < 0:
            raise InvalidInput("seed must be >= 0")
        if self.interval not in ("normal", "bootstrap"):
            raise InvalidInput("interval must be 'normal' or 'bootstrap'")
        if self.interval == "bootstrap" and self.n_bootstrap < 2:
            raise InvalidInput("interval='bootstrap' needs n_bootstrap >= 2")

    def _finish(
        self,
        name: str,
        value: float,
        std_error: float,
        ess: float,
        n: int,
        replicates: np.ndarray | None,
        sides: tuple[_Side, _Side] | None = None,
    ) -> Estimate:
        """Assemble an `Estimate` from its value, standard error and bootstrap replicates.

        `sides` (clipped IPS): the lower end of both intervals is taken from the first (centre, standard error,
        replicates), the upper end from the second; None: both ends from (`value`, `std_error`, `replicates`).
        From one round (`n` < 2) there is no interval: its spread is unknown, so the standard error is ∞ and the
        interval (−∞, ∞), and no bootstrap interval is given (every resample of one round is that round, a
        zero-width interval that would claim certainty)."""
        if n < 2:
            std_error, replicates, sides = math.inf, None, None
        low, high = sides if sides is not None else ((value, std_error, replicates),) * 2
        normal = (
            normal_interval(low[0], low[1], self.confidence)[0],
            normal_interval(high[0], high[1], self.confidence)[1],
        )
        boot = None
        if low[2] is not None and high[2] is not None:
            boot = (_percentiles(low[2], self.confidence)[0], _percentiles(high[2], self.confidence)[1])
        primary = boot if self.interval == "bootstrap" and boot is not None else normal
        return Estimate(
            estimator=name,
            value=value,
            ci_low=primary[0],
            ci_high=primary[1],
            std_error=std_error,
            ess=ess,
            n=n,
            confidence=self.confidence,
            interval="bootstrap" if primary is boot else "normal",
            normal_ci=normal,
            bootstrap_ci=boot,
        )

    def _ratio_parts(self, numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, float, np.ndarray | None]:
        """(V̂, standard error, bootstrap replicates or None) of V̂ = Σ num / Σ den.

        The standard error is the delta method's: influence (num_i − V̂·den_i) / mean(den).
        """
        n = len(numerator)
        total = float(denominator.sum())
        if total <= 0.0:
            return math.nan, math.nan, None
        value = float(numerator.sum()) / total
        influence = (numerator - value * denominator) / (total / n)
        std_error = float(influence.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
        replicates = None
        if self.n_bootstrap:
            counts = bootstrap_counts(n, self.n_bootstrap, self.seed)
            with np.errstate(invalid="ignore", divide="ignore"):
                if np.all(denominator == 1.0):  # a plain mean: every resample has n rounds
                    replicates = (counts @ numerator) / n
                else:
                    replicates = (counts @ numerator) / (counts @ denominator)
        return value, std_error, replicates

    def _ratio(self, name: str, numerator: np.ndarray, denominator: np.ndarray, ess: float) -> Estimate:
        """V̂ = Σ num / Σ den with a delta-method normal interval and a bootstrap over rounds."""
        value, std_error, replicates = self._ratio_parts(numerator, denominator)
        return self._finish(name, value, std_error, ess, len(numerator), replicates)


# -- estimators ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class IPS(_Settings):
    """Inverse propensity scoring (Horvitz & Thompson 1952; Dudík, Langford & Li 2011, "Doubly robust policy
    evaluation and learning", ICML).

        V̂_IPS = (1/n) Σ_i w_i r_i,    w_i = π(a_i|x_i) / μ(a_i|x_i)

    Bias: none when μ > 0 wherever π > 0. Variance: E[w² r²]/n − V²/n, large when π puts mass where μ
    rarely goes (few rounds with large weights). Normal interval from the standard error of w_i r_i.

    Examples:
        >>> import numpy as np
        >>> IPS().estimate(rewards=np.array([1.0, 0.0]), actions=np.array([0, 1]),
        ...     logged_probability=np.array([0.5, 0.5]), target_pmf=np.array([[1.0, 0.0], [1.0, 0.0]])).value
        1.0
    """

    name: ClassVar[str] = "ips"

    def estimate(
        self,
        *,
        rewards: np.ndarray,
        actions: np.ndarray,
        logged_probability: np.ndarray,
        target_pmf: np.ndarray,
        features: np.ndarray | None = None,
        reward_fit: RewardFit | None = None,
    ) -> Estimate:
        """V̂_IPS of `target_pmf` (n, K) from `rewards` (n,), `actions` (n,), `logged_probability` (n,)."""
        r, a, p, pi = check_inputs(rewards, actions, logged_probability, target_pmf)
        w = importance_weights(a, p, pi)
        return self._ratio(self.name, w * r, np.ones_like(w), effective_sample_size(w))


@dataclass(frozen=True, kw_only=True)
class ClippedIPS(_Settings):
    """IPS with each weight clipped at `max_weight` M (Ionides 2008, "Truncated importance sampling";
    Bottou et al. 2013, "Counterfactual reasoning and learning systems", JMLR).

        V̂_M = (1/n) Σ_i min(w_i, M) r_i,    an unbiased estimate of V_M = E[min(w, M) r]

    Variance: bounded by M²·E[r²]/n. Bias for V: V_M − V = −E[e r], e = (w − M)₊ the clipped-off weight.
    The point is V̂_M; the interval covers V_M and V alike (asymptotically). Split the clipped-off part e_i r_i
    into its negative and positive parts, r⁻ = min(r, 0), r⁺ = max(r, 0):

        ℓ_i = min(w_i, M) r_i + e_i r_i⁻,    u_i = min(w_i, M) r_i + e_i r_i⁺

    Since w r = min(w, M) r + e r and e r⁻ ≤ min(e r, 0), e r⁺ ≥ max(e r, 0): E[ℓ] ≤ min(V_M, V) and
    E[u] ≥ max(V_M, V). The interval is [ℓ̄ − z·s_ℓ/√n, ū + z·s_u/√n] (bootstrap: the (1−c)/2 percentile of ℓ̄*,
    the (1+c)/2 one of ū*, on the same resamples), each end a one-sided bound at (1+c)/2, so it covers both V_M
    and V with probability ≥ c (asymptotically). ℓ̄ ≤ V̂_M ≤ ū, so the normal interval always contains the point
    (the bootstrap one contains V̂_M's own percentile interval). When no weight exceeds M, ℓ = u = w r: IPS's
    interval. For rewards ≥ 0 it runs from clipped IPS's lower bound to IPS's upper bound. `std_error` is V̂_M's.
    """

    name: ClassVar[str] = "clipped-ips"
    max_weight: float = 20.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.max_weight > 0:
            raise InvalidInput("max_weight must be > 0")

    def estimate(
        self,
        *,
        rewards: np.ndarray,
        actions: np.ndarray,
        logged_probability: np.ndarray,
        target_pmf: np.ndarray,
        features: np.ndarray | None = None,
        reward_fit: RewardFit | None = None,
    ) -> Estimate:
        """V̂_M of `target_pmf` (n, K) from `rewards` (n,), `actions` (n,), `logged_probability` (n,)."""
        r, a, p, pi = check_inputs(rewards, actions, logged_probability, target_pmf)
        w = importance_weights(a, p, pi)
        kept = np.minimum(w, self.max_weight) * r
        clipped_off = np.maximum(w - self.max_weight, 0.0)
        ones = np.ones_like(w)
        value, std_error, replicates = self._ratio_parts(kept, ones)
        low = self._ratio_parts(kept + clipped_off * np.minimum(r, 0.0), ones)
        high = self._ratio_parts(kept + clipped_off * np.maximum(r, 0.0), ones)
        return self._finish(self.name, value, std_error, effective_sample_size(w), len(r), replicates, (low, high))


@dataclass(frozen=True, kw_only=True)
class SNIPS(_Settings):
    """Self-normalized IPS (Kong 1992; Swaminathan & Joachims 2015, "The self-normalized estimator for
    counterfactual learning", NeurIPS).

        V̂_SNIPS = Σ_i w_i r_i / Σ_i w_i

    The weights need not sum to n: dividing by their sum makes the estimate a weighted mean, always within
    [min r, max r], and equivariant to shifting the rewards (V̂(r + c) = V̂(r) + c; IPS gives V̂ + c·mean(w)).
    Bias: O(1/n) (a ratio of unbiased estimates), consistent. Variance: usually well below IPS's.
    Normal interval by the delta method, influence w_i (r_i − V̂) / mean(w). `nan` when Σ w = 0.
    """

    name: ClassVar[str] = "snips"

    def estimate(
        self,
        *,
        rewards: np.ndarray,
        actions: np.ndarray,
        logged_probability: np.ndarray,
        target_pmf: np.ndarray,
        features: np.ndarray | None = None,
        reward_fit: RewardFit | None = None,
    ) -> Estimate:
        """V̂_SNIPS of `target_pmf` (n, K) from `rewards` (n,), `actions` (n,), `logged_probability` (n,)."""
        r, a, p, pi = check_inputs(rewards, actions, logged_probability, target_pmf)
        w = importance_weights(a, p, pi)
        return self._ratio(self.name, w * r, w, effective_sample_size(w))


def _reward_fit(
    settings: DirectMethod | DoublyRobust,
    features: np.ndarray | None,
    reward_fit: RewardFit | None,
    r: np.ndarray,
    a: np.ndarray,
    k: int,
    n_bootstrap: int,
) -> RewardFit:
    if reward_fit is not None:
        if reward_fit.predictions.shape != (len(r), k):
            raise InvalidInput(f"reward_fit predictions must have shape ({len(r)}, {k})")
        return reward_fit
    if features is None:
        raise InvalidInput(f"{settings.name} needs `features` (n, d) or a `reward_fit`")
    return fit_rewards(
        features,
        a,
        r,
        k,
        model=settings.reward_model,
        folds=settings.folds,
        seed=settings.seed,
        n_bootstrap=n_bootstrap,
    )


@dataclass(frozen=True, kw_only=True)
class DirectMethod(_Settings):
    """Direct method: average the reward model's prediction under the target policy (Beygelzimer & Langford
    2009; Dudík, Langford & Li 2011).

        V̂_DM = (1/n) Σ_i Σ_a π(a|x_i) q̂(x_i, a)

    q̂ is `reward_model` fitted by `folds`-fold cross-fitting (each round predicted by a model that did not see
    it). Variance: lowest of all (no weights). Bias: whatever q̂ gets wrong where π goes and μ did not; no
    interval can see it. The standard error comes from `n_bootstrap` replicates that refit the model on each
    resample (so it includes the model's own estimation noise, which the per-round terms do not show).
    Pass `reward_fit` (from `fit_rewards`) to share one fit between estimators and policies.
    """

    name: ClassVar[str] = "dm"
    reward_model: RewardModel = field(default_factory=RidgeRewardModel)
    folds: int = 5
    n_bootstrap: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.folds < 1:
            raise InvalidInput("folds must be >= 1")

    def estimate(
        self,
        *,
        rewards: np.ndarray,
        actions: np.ndarray,
        logged_probability: np.ndarray,
        target_pmf: np.ndarray,
        features: np.ndarray | None = None,
        reward_fit: RewardFit | None = None,
    ) -> Estimate:
        """V̂_DM of `target_pmf` (n, K); needs `features` (n, d) or a `reward_fit` over the same rounds."""
        r, a, p, pi = check_inputs(rewards, actions, logged_probability, target_pmf)
        n, k = pi.shape
        fit = _reward_fit(self, features, reward_fit, r, a, k, self.n_bootstrap)
        ess = effective_sample_size(importance_weights(a, p, pi))
        terms = (pi * fit.predictions).sum(axis=1)
        value = float(terms.mean())
        replicates = None
        if fit.replicates is not None and len(fit.replicates) > 1:
            replicates = np.array([float((pi * rep).sum()) / n for rep in fit.replicates])
            std_error = float(replicates.std(ddof=1))
        else:  # no refits: only the context-sampling noise is visible
            std_error = float(terms.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
        return self._finish(self.name, value, std_error, ess, n, replicates)


@dataclass(frozen=True, kw_only=True)
class DoublyRobust(_Settings):
    """Doubly robust estimator (Robins & Rotnitzky 1995; Dudík, Langford & Li 2011), reward model cross-fitted
    (Chernozhukov et al. 2018, "Double/debiased machine learning").

        V̂_DR = (1/n) Σ_i [ Σ_a π(a|x_i) q̂(x_i, a) + w_i (r_i − q̂(x_i, a_i)) ]

    Bias: none when the propensities are right, whatever q̂ is (the correction term removes the model's error
    in expectation; cross-fitting keeps q̂(x_i, ·) independent of round i's own reward). Variance: IPS's with
    r replaced by the residual r − q̂, so lower than IPS's when q̂ explains the reward. Normal interval from
    the per-round terms; the optional bootstrap resamples terms without refitting.
    """

    name: ClassVar[str] = "dr"
    reward_model: RewardModel = field(default_factory=RidgeRewardModel)
    folds: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.folds < 2:
            raise InvalidInput("cross-fitting needs folds >= 2")

    def estimate(
        self,
        *,
        rewards: np.ndarray,
        actions: np.ndarray,
        logged_probability: np.ndarray,
        target_pmf: np.ndarray,
        features: np.ndarray | None = None,
        reward_fit: RewardFit | None = None,
    ) -> Estimate:
        """V̂_DR of `target_pmf` (n, K); needs `features` (n, d) or a `reward_fit` over the same rounds."""
        r, a, p, pi = check_inputs(rewards, actions, logged_probability, target_pmf)
        n, k = pi.shape
        fit = _reward_fit(self, features, reward_fit, r, a, k, 0)
        w = importance_weights(a, p, pi)
        q = fit.predictions
        terms = (pi * q).sum(axis=1) + w * (r - q[np.arange(n), a])
        return self._ratio(self.name, terms, np.ones(n), effective_sample_size(w))


ESTIMATORS: Mapping[str, Callable[..., Estimator]] = {
    IPS.name: IPS,
    ClippedIPS.name: ClippedIPS,
    SNIPS.name: SNIPS,
    DirectMethod.name: DirectMethod,
    DoublyRobust.name: DoublyRobust,
}
"""The estimators by name, in the order reports list them."""


def make_estimator(name: str, **settings: Any) -> Estimator:
    """An estimator by its name (`ips`, `clipped-ips`, `snips`, `dm`, `dr`) with keyword settings."""
    try:
        factory = ESTIMATORS[name]
    except KeyError:
        raise InvalidInput(f"unknown estimator {quoted([name], ESTIMATORS)}; known: {', '.join(ESTIMATORS)}") from None
    return factory(**settings)
