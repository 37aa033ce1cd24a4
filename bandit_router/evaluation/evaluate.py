"""`evaluate_log`: estimate what each candidate policy would have earned on a log of decisions and feedback.

For every candidate (and, by default, the baselines: the logged policy, uniform random and each fixed model)
it replays the candidate on the log (`replay`, in `learning`, `frozen` or `replay` mode), then runs every
estimator on three outcomes of the same rounds: reward, quality and cost. One `EstimateRecord` per
(candidate, estimator), with intervals, the effective sample size and the overlap warnings.

Which λ measures the reward (`reward_lambda`):
- `"logged"` (default): each request's own logged λ, the trade-off the service was asked to make. Every
  candidate is then scored on the same scale, also one whose `@lambda=` changes how it decides.
- a number: that λ for every request and candidate.
- `"candidate"`: the candidate's own `@lambda=` where it has one (else the logged λ). Values of candidates
  with different λ are then not comparable; compare their quality and cost instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..catalog import ModelSpec
from ..errors import InvalidInput
from .candidates import Candidate, baseline_candidates, parse_candidate
from .estimators import ClippedIPS, Estimate, Estimator, make_estimator, normal_interval
from .log import DEFAULT_FEATURE_DIM, LoggedRecord, log_arrays
from .overlap import Overlap, OverlapThresholds, overlap
from .replay import MODES, ReplayResult, replay
from .reward_models import RewardFit, RidgeRewardModel, fit_rewards

DEFAULT_ESTIMATORS = ("ips", "clipped-ips", "snips", "dm", "dr")
METRICS = ("reward", "quality", "cost")


@dataclass(frozen=True, eq=False)
class EstimateRecord:
    """One candidate under one estimator: reward (`value`), quality and cost estimates, and its overlap.

    `cost_weight` is the λ the reward was measured with (None: each request's logged λ).
    """

    candidate: str
    estimator: str
    mode: str
    reward: Estimate
    quality: Estimate
    cost: Estimate
    overlap: Overlap
    cost_weight: float | None = None

    @property
    def value(self) -> float:
        return self.reward.value

    @property
    def ci_low(self) -> float:
        return self.reward.ci_low

    @property
    def ci_high(self) -> float:
        return self.reward.ci_high

    @property
    def ess(self) -> float:
        return self.reward.ess

    @property
    def n(self) -> int:
        return self.reward.n

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.overlap.warnings

    def to_json(self) -> dict[str, Any]:
        """The flat record of `evaluation.json`'s `candidates` list."""
        r, q, c = self.reward.to_json(), self.quality.to_json(), self.cost.to_json()
        return {
            "candidate": self.candidate,
            "estimator": self.estimator,
            "value": r["value"],
            "ci_low": r["ci_low"],
            "ci_high": r["ci_high"],
            "ess": r["ess"],
            "n": self.n,
            "std_error": r["std_error"],
            "interval": self.reward.interval,
            "confidence": self.reward.confidence,
            "quality": q["value"],
            "quality_ci_low": q["ci_low"],
            "quality_ci_high": q["ci_high"],
            "cost_usd": c["value"],
            "cost_ci_low": c["ci_low"],
            "cost_ci_high": c["ci_high"],
            "cost_weight": self.cost_weight,
            "mode": self.mode,
            "max_weight": self.overlap.max_weight,
            "unsupported_mass": self.overlap.unsupported_mass,
            "warnings": list(self.overlap.warnings),
        }


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Everything `evaluate_log` found: the records, the log's size, global warnings and the settings used.

    `replays` keeps each candidate's `ReplayResult` (its pmfs and, for policies, its trained router).
    """

    records: tuple[EstimateRecord, ...]
    models: tuple[str, ...]
    mode: str
    n_logged: int
    n_with_feedback: int
    n_evaluated: int
    warnings: tuple[str, ...]
    settings: Mapping[str, Any]
    replays: Mapping[str, ReplayResult] = field(default_factory=dict)

    @property
    def candidates(self) -> tuple[str, ...]:
        """Candidate labels in the order they were evaluated."""
        return tuple(dict.fromkeys(r.candidate for r in self.records))

    def record(self, candidate: str, estimator: str) -> EstimateRecord:
        for r in self.records:
            if r.candidate == candidate and r.estimator == estimator:
                return r
        raise KeyError((candidate, estimator))

    def to_json(self) -> dict[str, Any]:
        return {
            "candidates": [r.to_json() for r in self.records],
            "models": list(self.models),
            "mode": self.mode,
            "n_logged": self.n_logged,
            "n_with_feedback": self.n_with_feedback,
            "n_evaluated": self.n_evaluated,
            "warnings": list(self.warnings),
            "settings": dict(self.settings),
        }


def _specs(models: Iterable[ModelSpec] | Mapping[str, ModelSpec]) -> dict[str, ModelSpec]:
    return dict(models) if isinstance(models, Mapping) else {s.name: s for s in models}


def _replay_estimate(values: np.ndarray, confidence: float) -> Estimate:
    """Mean of the accepted rounds' outcomes (the replay method), with a normal interval."""
    n = len(values)
    if n == 0:
        return Estimate("replay", math.nan, math.nan, math.nan, math.nan, 0.0, 0, confidence, "normal", (math.nan,) * 2)
    value = float(values.mean())
    se = float(values.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    ci = normal_interval(value, se, confidence)
    return Estimate("replay", value, ci[0], ci[1], se, float(n), n, confidence, "normal", ci)


def evaluate_log(
    records: Iterable[LoggedRecord],
    candidates: Sequence[str | Candidate],
    *,
    models: Iterable[ModelSpec] | Mapping[str, ModelSpec],
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    mode: str = "learning",
    train_fraction: float = 0.5,
    baselines: bool = True,
    reward_lambda: float | str = "logged",
    latency_weight: float = 0.0,
    confidence: float = 0.95,
    interval: str = "normal",
    n_bootstrap: int = 200,
    dm_bootstrap: int = 100,
    max_weight: float = 20.0,
    ridge: float = 1.0,
    folds: int = 5,
    feature_dim: int = DEFAULT_FEATURE_DIM,
    thresholds: OverlapThresholds | None = None,
    seed: int = 0,
) -> Evaluation:
    """Estimate each candidate's reward, quality and cost on `records` (in decision order).

    `models`: catalog entries of every model in the log (the candidates' routers need them; outcomes without a
    cost are priced with them). `baselines` adds `logged`, `random` and `fixed:<model>` for each model.
    `n_bootstrap`: replicates of the bootstrap intervals; `dm_bootstrap`: refits behind DM's standard error;
    `interval`: which interval is primary (`normal` or `bootstrap`). `max_weight`: clipped IPS's M. `ridge`,
    `folds`, `feature_dim`: the reward model of DM/DR (ridge per model on `dense_vector` features, cross-fitted).
    Decisions without feedback are left out (and counted in a warning).
    """
    if mode not in MODES:
        raise InvalidInput(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    if isinstance(reward_lambda, str) and reward_lambda not in ("logged", "candidate"):
        raise InvalidInput("reward_lambda must be 'logged', 'candidate' or a number")
    if not isinstance(reward_lambda, str) and not (math.isfinite(reward_lambda) and reward_lambda >= 0):
        raise InvalidInput("reward_lambda must be a finite number >= 0")
    for name in estimators:
        make_estimator(name)  # fail early on an unknown name
    t = thresholds or OverlapThresholds()
    settings: dict[str, Any] = {
        "estimators": list(estimators),
        "train_fraction": train_fraction,
        "reward_lambda": reward_lambda,
        "latency_weight": latency_weight,
        "confidence": confidence,
        "interval": interval,
        "n_bootstrap": n_bootstrap,
        "dm_bootstrap": dm_bootstrap,
        "max_weight": max_weight,
        "ridge": ridge,
        "folds": folds,
        "feature_dim": feature_dim,
        "seed": seed,
        "thresholds": dataclasses.asdict(t),
    }
    specs = _specs(models)
    every = list(records)
    logged = [r for r in every if r.outcome is not None]
    arrays = log_arrays(logged, specs, feature_dim=feature_dim)
    parsed = [c if isinstance(c, Candidate) else parse_candidate(c) for c in candidates]
    if baselines:
        parsed = [*(parse_candidate(b) for b in baseline_candidates(arrays.models)), *parsed]
    unique: dict[str, Candidate] = {}
    for c in parsed:
        unique.setdefault(c.label, c)
    wanted = list(unique.values())
    if not wanted:
        raise InvalidInput("no candidates to evaluate")

    replays = {
        c.label: replay(
            logged,
            c,
            specs=specs,
            mode=mode,
            train_fraction=train_fraction,
            seed=seed,
            latency_weight=latency_weight,
            models=arrays.models,
        )
        for c in wanted
    }
    warnings: list[str] = []
    dropped = len(every) - len(logged)
    if dropped:
        warnings.append(
            f"{dropped} of {len(every)} decisions have no feedback and were left out; if feedback is missing more "
            f"often for some models than others, every estimate is biased"
        )

    def lam_of(c: Candidate) -> float | None:
        if reward_lambda == "candidate":
            return c.cost_weight
        return None if reward_lambda == "logged" else float(reward_lambda)

    out: list[EstimateRecord] = []
    if mode == "replay":
        for c in wanted:
            res = replays[c.label]
            rows = res.evaluated
            sub = arrays.subset(rows)
            ov = overlap(arrays.actions, arrays.logged_probability, arrays.logged_pmf, res.target_pmf, t)
            notes = list(ov.warnings)
            if res.bound_exceeded:
                notes.append(
                    f"replay: π/μ exceeded the bound M = {res.acceptance_bound:.3g} on {res.bound_exceeded} rounds"
                )
            if int(rows.sum()) < t.min_ess:
                notes.append(f"replay: only {int(rows.sum())} of {len(rows)} rounds accepted")
            ov = dataclasses.replace(ov, warnings=tuple(notes))
            lam = lam_of(c)
            out.append(
                EstimateRecord(
                    c.label,
                    "replay",
                    mode,
                    _replay_estimate(sub.rewards(lam, latency_weight), confidence),
                    _replay_estimate(sub.quality, confidence),
                    _replay_estimate(sub.cost_usd, confidence),
                    ov,
                    lam,
                )
            )
        n_eval = int(max((r.evaluated.sum() for r in replays.values()), default=0))
        return Evaluation(
            tuple(out), arrays.models, mode, len(every), len(logged), n_eval, tuple(warnings), settings, replays
        )

    rows = next(iter(replays.values())).evaluated
    sub = arrays.subset(rows)
    n_eval = len(sub)
    if n_eval == 0:
        raise InvalidInput("no logged decision with feedback to evaluate on")
    if n_eval < t.min_ess:
        warnings.append(f"only {n_eval} rounds to evaluate on: every interval is rough")
    needs_model = any(e in ("dm", "dr") for e in estimators)
    fits: dict[tuple[str, float | None], RewardFit] = {}

    def metric(c: Candidate, name: str) -> tuple[np.ndarray, tuple[str, float | None]]:
        if name == "quality":
            return sub.quality, ("quality", None)
        if name == "cost":
            return sub.cost_usd, ("cost", None)
        lam = lam_of(c)
        return sub.rewards(lam, latency_weight), ("reward", lam)

    def fit_for(key: tuple[str, float | None], values: np.ndarray) -> RewardFit | None:
        if not needs_model:
            return None
        if key not in fits:
            fits[key] = fit_rewards(
                sub.features,
                sub.actions,
                values,
                len(arrays.models),
                model=RidgeRewardModel(ridge),
                folds=folds,
                seed=seed,
                n_bootstrap=dm_bootstrap if "dm" in estimators else 0,
            )
        return fits[key]

    bounds = {"quality": (0.0, 1.0), "cost": (0.0, float(sub.cost_usd.max()))}
    results: dict[tuple[str, str, str], Estimate] = {}
    overlaps: dict[str, Overlap] = {}
    for c in wanted:
        target = replays[c.label].target_pmf[rows]
        overlaps[c.label] = overlap(sub.actions, sub.logged_probability, sub.logged_pmf, target, t)
    for name in METRICS:  # one metric at a time, so one set of reward-model replicates lives in memory
        for c in wanted:
            values, key = metric(c, name)
            fit = fit_for(key, values)
            target = replays[c.label].target_pmf[rows]
            for e in estimators:
                est = _estimator(e, confidence, interval, n_bootstrap, dm_bootstrap, max_weight, folds, seed, ridge)
                if isinstance(est, ClippedIPS):
                    est = dataclasses.replace(est, reward_range=bounds.get(name))
                results[(c.label, e, name)] = est.estimate(
                    rewards=values,
                    actions=sub.actions,
                    logged_probability=sub.logged_probability,
                    target_pmf=target,
                    features=sub.features,
                    reward_fit=fit,
                )
        fits.clear()
    for c in wanted:
        for e in estimators:
            out.append(
                EstimateRecord(
                    c.label,
                    e,
                    mode,
                    results[(c.label, e, "reward")],
                    results[(c.label, e, "quality")],
                    results[(c.label, e, "cost")],
                    overlaps[c.label],
                    lam_of(c),
                )
            )
    return Evaluation(
        tuple(out), arrays.models, mode, len(every), len(logged), n_eval, tuple(warnings), settings, replays
    )


def _estimator(
    name: str,
    confidence: float,
    interval: str,
    n_bootstrap: int,
    dm_bootstrap: int,
    max_weight: float,
    folds: int,
    seed: int,
    ridge: float,
) -> Estimator:
    settings: dict[str, Any] = {"confidence": confidence, "seed": seed}
    if name == "dm":
        settings.update(n_bootstrap=dm_bootstrap, folds=folds, reward_model=RidgeRewardModel(ridge))
        settings["interval"] = interval if dm_bootstrap >= 2 else "normal"
    else:
        settings.update(n_bootstrap=n_bootstrap, interval=interval if n_bootstrap >= 2 else "normal")
    if name == "dr":
        settings.update(folds=folds, reward_model=RidgeRewardModel(ridge))
    if name == "clipped-ips":
        settings["max_weight"] = max_weight
    return make_estimator(name, **settings)


@dataclass(frozen=True)
class PromotionCheck:
    """Whether `candidate` may replace the live policy: its lower confidence bound must beat the live policy's
    estimate (same estimator, same rounds), and, with `require_trusted`, its overlap must raise no warning."""

    candidate: str
    estimator: str
    candidate_low: float
    live_value: float
    ok: bool
    reason: str


def promotion_check(
    evaluation: Evaluation,
    candidate: str,
    *,
    estimator: str = "dr",
    live: str = "logged",
    require_trusted: bool = True,
) -> PromotionCheck:
    """The rule for promoting a shadow or candidate: ci_low(candidate) > value(live) under `estimator`."""
    try:
        mine = evaluation.record(candidate, estimator)
        theirs = evaluation.record(live, estimator)
    except KeyError:
        raise InvalidInput(f"the evaluation has no {estimator!r} estimate of {candidate!r} and {live!r}") from None
    low, live_value = mine.ci_low, theirs.value
    if not (math.isfinite(low) and math.isfinite(live_value)):
        return PromotionCheck(candidate, estimator, low, live_value, False, "no finite estimate to compare")
    if require_trusted and mine.warnings:
        reason = f"overlap too poor to trust the estimate: {mine.warnings[0]}"
        return PromotionCheck(candidate, estimator, low, live_value, False, reason)
    if low > live_value:
        reason = f"lower bound {low:.4f} beats the live policy's {live_value:.4f}"
        return PromotionCheck(candidate, estimator, low, live_value, True, reason)
    reason = f"lower bound {low:.4f} does not beat the live policy's {live_value:.4f}"
    return PromotionCheck(candidate, estimator, low, live_value, False, reason)
