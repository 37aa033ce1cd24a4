"""`evaluate_log`: estimate what each candidate policy would have earned on a log of decisions and feedback.

For every candidate (and, by default, the baselines: the logged policy, uniform random and each fixed model)
it replays the candidate on the log (`replay`, in `learning`, `frozen` or `replay` mode), then runs every
estimator on three outcomes of the same rounds: reward, quality and cost. One `EstimateRecord` per
(candidate, estimator), with intervals, the effective sample size and the overlap warnings. How it evaluates is
an `EvaluationConfig`.

Which λ measures the reward (`reward_lambda`):
- `"logged"` (default): each request's own logged λ, the trade-off the service was asked to make. Every
  candidate is then scored on the same scale, also one whose `@lambda=` changes how it decides.
- a number: that λ for every request and candidate.
- `"candidate"`: the candidate's own `@lambda=` where it has one (else the logged λ). Values of candidates
  with different λ are then not comparable; compare their quality and cost instead.

Why one module: `EvaluationConfig`, the checks of `evaluate_log`'s arguments, the preparation of the log and the
two paths (estimators, replay) share the prepared arrays and the config; split, each would reach into the others.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..catalog import ModelSpec
from ..errors import InvalidInput
from ..hints import quoted
from .candidates import Candidate, baseline_candidates, check_models, parse_candidate, text_rule_warnings
from .estimators import Estimate, Estimator, make_estimator, normal_interval
from .log import DEFAULT_FEATURE_DIM, LogArrays, LoggedRecord, log_arrays, specs_by_name
from .overlap import Overlap, OverlapThresholds, overlap
from .removed import check_priced, removed_model_warnings, unroutable_choices, unroutable_reason, with_retired
from .replay import MODES, ReplayResult, replay
from .reward_models import RewardFit, RidgeRewardModel, fit_rewards
from .scope import Scope, inexact_tenant_warnings

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
            "expected_ess": self.overlap.expected_ess,
            "warnings": list(self.overlap.warnings),
        }


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Everything `evaluate_log` found: the records, the log's size, global warnings and the settings used.

    `replays` keeps each candidate's `ReplayResult` (its pmfs and, for policies, its trained router).
    `unroutable`: the candidates whose estimates credit choices of models this catalog does not route (removed,
    `route = false` or retired since; `removed.unroutable_choices`), with those models: shown, never recommended or
    promoted.
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
    unroutable: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

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
            "unroutable": {label: list(models) for label, models in self.unroutable.items()},
            "settings": dict(self.settings),
        }


def _replay_estimate(values: np.ndarray, confidence: float) -> Estimate:
    """Mean of the accepted rounds' outcomes (the replay method), with a normal interval."""
    n = len(values)
    if n == 0:
        return Estimate("replay", math.nan, math.nan, math.nan, math.nan, 0.0, 0, confidence, "normal", (math.nan,) * 2)
    value = float(values.mean())
    se = float(values.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    ci = normal_interval(value, se, confidence)
    return Estimate("replay", value, ci[0], ci[1], se, float(n), n, confidence, "normal", ci)


@dataclass(frozen=True)
class EvaluationConfig:
    """How `evaluate_log` evaluates; checks itself when built.

    `estimators`: which off-policy estimators (`make_estimator` names). `mode`: how candidates are replayed
    (`learning`, `frozen`: trained on the first `train_fraction` of the log, or `replay`: the rejection-sampling
    replay method, which takes its own path). `baselines` adds `logged`, `random` and `fixed:<model>` for each
    model. `reward_lambda`: see the module docstring; `latency_weight`: μ of the reward. `confidence`, `interval`
    (`normal` or `bootstrap`: which interval is primary), `n_bootstrap` (replicates of the bootstrap intervals),
    `dm_bootstrap` (refits behind DM's standard error). `max_weight`: clipped IPS's M. `ridge`, `folds`,
    `feature_dim`: the reward model of DM/DR (ridge per model on `dense_vector` features, cross-fitted).
    `thresholds`: when overlap warnings are raised. `seed`: every random choice of the evaluation. `policy`,
    `since`, `until`, `tenant`: evaluate only the decisions that live policy made (their `decision.policy`), made at
    a Unix time in [since, until), for that tenant (`scope.Scope`; `scope` gives them as one); every decision still
    teaches the replayed candidates, in log order, as it taught the live policy (a service replays the whole log
    into a new policy).
    """

    estimators: Sequence[str] = DEFAULT_ESTIMATORS
    mode: str = "learning"
    train_fraction: float = 0.5
    baselines: bool = True
    reward_lambda: float | str = "logged"
    latency_weight: float = 0.0
    confidence: float = 0.95
    interval: str = "normal"
    n_bootstrap: int = 200
    dm_bootstrap: int = 100
    max_weight: float = 20.0
    ridge: float = 1.0
    folds: int = 5
    feature_dim: int = DEFAULT_FEATURE_DIM
    thresholds: OverlapThresholds = field(default_factory=OverlapThresholds)
    seed: int = 0
    policy: str | None = None
    since: float | None = None
    until: float | None = None
    tenant: str | None = None

    def __post_init__(self) -> None:
        if self.thresholds is None:  # `thresholds=None`: the defaults
            object.__setattr__(self, "thresholds", OverlapThresholds())
        if self.mode not in MODES:
            raise InvalidInput(f"unknown mode {quoted([self.mode], MODES)}; known: {', '.join(MODES)}")
        lam = self.reward_lambda
        if isinstance(lam, str) and lam not in ("logged", "candidate"):
            raise InvalidInput("reward_lambda must be 'logged', 'candidate' or a number")
        if isinstance(lam, bool | np.bool_) or not isinstance(lam, str | numbers.Real):  # True was λ = 1
            raise InvalidInput(f"reward_lambda must be 'logged', 'candidate' or a number, got {lam!r}")
        if not isinstance(lam, str | int | float):  # numpy's: as Python's (`np.float32(20)` was refused)
            lam = float(lam)
            object.__setattr__(self, "reward_lambda", lam)
        if not isinstance(lam, str) and not (math.isfinite(lam) and lam >= 0):
            raise InvalidInput("reward_lambda must be a finite number >= 0")
        if isinstance(self.estimators, str):  # read letter by letter: "unknown estimator 'd'"
            raise InvalidInput(f"estimators must be a list of estimator names, e.g. ({self.estimators!r},), not one "
                               "string")
        if not self.estimators:
            raise InvalidInput("estimators: give at least one of ips, clipped-ips, snips, dm, dr")
        share = self.train_fraction  # NaN was "cannot convert float NaN to integer" from the split
        if isinstance(share, bool | np.bool_) or not isinstance(share, numbers.Real) or not 0.0 < share < 1.0:
            raise InvalidInput(f"train_fraction must be a number in (0, 1), got {share!r}")
        object.__setattr__(self, "train_fraction", float(share))
        dim = self.feature_dim  # a ValueError from the features ("dense_vector needs dim >= 32")
        if isinstance(dim, bool | np.bool_) or not isinstance(dim, numbers.Integral) or dim < 32:
            raise InvalidInput(f"feature_dim must be an integer >= 32, got {dim!r}")
        object.__setattr__(self, "feature_dim", int(dim))  # numpy's integers too
        for name in self.estimators:
            make_estimator(name)  # fail early on an unknown name
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidInput(f"seed must be an integer >= 0, got {self.seed!r}")
        scope = Scope(self.policy, self.since, self.until, self.tenant)  # checked, the tenant as the service reads it
        for name in ("since", "until", "tenant"):
            object.__setattr__(self, name, getattr(scope, name))

    @property
    def scope(self) -> Scope:
        """The decisions evaluated (`policy`, `since`, `until`, `tenant` as one)."""
        return Scope(self.policy, self.since, self.until, self.tenant)

    def lam_of(self, candidate: Candidate) -> float | None:
        """The λ `candidate`'s reward is measured with (None: each request's logged λ)."""
        if self.reward_lambda == "candidate":
            return candidate.cost_weight
        return None if self.reward_lambda == "logged" else float(self.reward_lambda)

    def to_json(self) -> dict[str, Any]:
        """The settings as `evaluation.json` records them."""
        out = dataclasses.asdict(self)
        out.pop("mode")
        out.pop("baselines")
        out["estimators"] = list(self.estimators)
        return {key: out[key] for key in _SETTINGS_ORDER}

    def estimator(self, name: str) -> Estimator:
        """The estimator `name` with this configuration's settings."""
        settings: dict[str, Any] = {"confidence": self.confidence, "seed": self.seed}
        if name == "dm":
            settings.update(n_bootstrap=self.dm_bootstrap, folds=self.folds, reward_model=RidgeRewardModel(self.ridge))
            settings["interval"] = self.interval if self.dm_bootstrap >= 2 else "normal"
        else:
            settings.update(n_bootstrap=self.n_bootstrap, interval=self.interval if self.n_bootstrap >= 2 else "normal")
        if name == "dr":
            settings.update(folds=self.folds, reward_model=RidgeRewardModel(self.ridge))
        if name == "clipped-ips":
            settings["max_weight"] = self.max_weight
        return make_estimator(name, **settings)


_SETTINGS_ORDER = (
    "estimators", "train_fraction", "reward_lambda", "latency_weight", "confidence", "interval", "n_bootstrap",
    "dm_bootstrap", "max_weight", "ridge", "folds", "feature_dim", "seed", "thresholds", "policy", "since", "until",
    "tenant",
)  # fmt: skip


@dataclass(frozen=True, eq=False)
class _Prepared:
    """What both paths start from: the log (how many decisions, those with feedback, as arrays), the candidates
    and their replays, and the warnings so far."""

    n_every: int
    logged: list[LoggedRecord]
    arrays: LogArrays
    wanted: list[Candidate]
    replays: dict[str, ReplayResult]
    warnings: list[str]
    unroutable: dict[str, tuple[str, ...]]


def evaluate_log(
    records: Iterable[LoggedRecord],
    candidates: Sequence[str | Candidate],
    *,
    models: Iterable[ModelSpec] | Mapping[str, ModelSpec],
    config: EvaluationConfig | None = None,
    without_feedback: int = 0,
    retired: Collection[str] = (),
    **settings: Any,
) -> Evaluation:
    """Estimate each candidate's reward, quality and cost on `records` (in decision order).

    `models`: catalog entries of every model in the log (the candidates' routers need them; outcomes without a
    cost are priced with them). `config` (or its fields as keywords, e.g. `estimators=("dr",)`, `seed=3`): see
    `EvaluationConfig`. Decisions without feedback are left out (and counted in a warning); only the records with
    feedback are kept while `records` is read, so a generator of a large log (`store_log.iter_log`) is not held
    whole. `without_feedback`: decisions without feedback the caller left out of `records` itself, counted as if
    they were in it (`store_log.with_feedback`): any integer >= 0, NumPy's too. `retired`: the models retired at
    run time (`store_log.retired_models`): their `models` entries price their outcomes, but no candidate routes to
    them, and `logged`, a shadow or `fixed:<model>` crediting their choices is marked unroutable
    (`removed.with_retired`).

    Two paths: `mode="replay"` scores each candidate on the rounds where it agrees with the log
    (`_by_replay`); the other modes run the off-policy estimators on every round (`_by_estimators`).
    """
    config = config or EvaluationConfig()
    if settings:
        config = dataclasses.replace(config, **settings)
    prepared = _prepare(records, candidates, specs_by_name(models), config, without_feedback, retired)
    path = _by_replay if config.mode == "replay" else _by_estimators
    out, n_eval = path(prepared, config)
    return Evaluation(
        tuple(out), prepared.arrays.models, config.mode, prepared.n_every, len(prepared.logged), n_eval,
        tuple(prepared.warnings), config.to_json(), prepared.replays, prepared.unroutable,
    )


def _prepare(
    records: Iterable[LoggedRecord], candidates: Sequence[str | Candidate], specs: dict[str, ModelSpec],
    config: EvaluationConfig, without_feedback: int = 0, retired: Collection[str] = (),
) -> _Prepared:
    if (isinstance(without_feedback, bool) or not isinstance(without_feedback, numbers.Integral)
            or without_feedback < 0):  # Integral: NumPy's integers too (a count from an array)
        raise InvalidInput(f"without_feedback must be an integer >= 0, got {without_feedback!r}")
    n_every = int(without_feedback)
    if isinstance(retired, str):  # read letter by letter: model 'c' of "c" would pass as retired
        raise InvalidInput(f"retired must be a collection of model names, e.g. [{retired!r:.60}], not one string")
    retired = frozenset(retired)
    specs = with_retired(specs, retired)  # routable no more; their specs still price their outcomes
    logged: list[LoggedRecord] = []
    if isinstance(candidates, str):  # read letter by letter: "candidate 'l': unknown policy 'l'"
        raise InvalidInput(f"candidates must be a list of candidate specs, e.g. [{candidates!r:.60}], not one string")
    for record in records:  # one at a time: a decision without feedback is counted, not kept
        if not isinstance(record, LoggedRecord):  # "'dict' object has no attribute 'outcome'"
            raise InvalidInput(f"records must be LoggedRecords (LoggedRecord(decision, outcome, …); "
                               f"store_log.iter_log(store) reads a service's), got {type(record).__name__}")
        n_every += 1
        if record.outcome is not None:
            logged.append(record)
    if not logged:  # else the first replayed candidate's router fails: "a router needs at least one model"
        raise InvalidInput(f"no logged decision with feedback to evaluate on ({n_every} decisions, none with "
                           "feedback)")
    scope = config.scope
    mixed = mixed_policy_warnings(logged, scope)  # before the replays: a scope no decision is in is refused
    check_priced(logged, specs, mode=config.mode, train_fraction=config.train_fraction, scope=scope)
    arrays = log_arrays(logged, specs, feature_dim=config.feature_dim)
    parsed = [c if isinstance(c, Candidate) else parse_candidate(c) for c in candidates]
    check_models(parsed, arrays.models)
    if config.baselines:
        parsed = [*(parse_candidate(b) for b in baseline_candidates(arrays.models)), *parsed]
    unique: dict[str, Candidate] = {}
    for c in parsed:
        unique.setdefault(c.label, c)
    wanted = list(unique.values())
    if not wanted:
        raise InvalidInput("no candidates to evaluate")
    wanted, warnings = removed_model_warnings(logged, specs, arrays.models, wanted, mode=config.mode,
                                              train_fraction=config.train_fraction, scope=scope,
                                              retired=retired)
    without_text = sum(not record.decision.context.text for record in logged)
    warnings.extend(text_rule_warnings(wanted, without_text, len(logged)))
    replays = {
        c.label: replay(
            logged,
            c,
            specs=specs,
            mode=config.mode,
            train_fraction=config.train_fraction,
            seed=config.seed,
            latency_weight=config.latency_weight,
            models=arrays.models,
            scope=scope,
        )
        for c in wanted
    }
    dropped = n_every - len(logged)
    if dropped:
        warnings.append(
            f"{dropped} of {n_every} decisions have no feedback and were left out; if feedback is missing more "
            f"often for some models than others, every estimate is biased"
        )
    warnings.extend(mixed)
    warnings.extend(inexact_tenant_warnings(logged, scope))
    warnings.extend(default_reward_warnings(logged, scope))
    unroutable = unroutable_choices(replays, specs, mode=config.mode, train_fraction=config.train_fraction)
    return _Prepared(n_every, logged, arrays, wanted, replays, warnings, unroutable)


def _scope_of(scope: Scope | str | None) -> Scope:
    return scope if isinstance(scope, Scope) else Scope(policy=scope)


def default_reward_warnings(logged: Sequence[LoggedRecord], scope: Scope | str | None = None) -> list[str]:
    """A warning when some outcomes are the service's `default_reward` for a decision whose window closed without
    feedback: the policy learned them, and every estimate counts them as observed, pulled toward that quality.
    With a `scope` (a `Scope`, or a live policy's name), among the decisions evaluated: those in it (the others
    teach the candidates, never scored)."""
    scope = _scope_of(scope)
    if not scope.everything:
        logged = [r for r in logged if scope.holds(r)]
    imputed = [r.outcome.quality for r in logged if r.default_reward and r.outcome is not None]
    if not imputed:
        return []
    low, high = min(imputed), max(imputed)
    quality = f"{low:g}" if low == high else f"{low:g} to {high:g}"
    whose = "" if scope.everything else f" of {scope.policy!r}" if scope.policy_only else \
        f" in the scope ({scope.describe()})"
    return [f"{len(imputed)} of the {len(logged)} decisions{whose} with feedback have none from a caller: their reward "
            f"window closed and the service learned its default_reward (quality {quality}) for them, as the policy "
            "did; every estimate counts them as observed outcomes"]


def mixed_policy_warnings(logged: Sequence[LoggedRecord], scope: Scope | str | None = None) -> list[str]:
    """A warning when the decisions evaluated were made by more than one live policy (a restart with another
    `policy`, a promotion): `logged` estimates their mix, V = Σ_p (n_p/n)·V_p, not the value of the policy live at
    the end. With a `scope` (a `Scope`, or a live policy's name): `InvalidInput` when no decision is in it, and no
    warning when it names the policy."""
    scope = _scope_of(scope)
    if not scope.everything:
        evaluated = [r for r in logged if scope.holds(r)]
        if not evaluated:
            raise InvalidInput(scope.none_in_scope(logged))
        if scope.policy is not None:
            return []
        logged = evaluated
    counts = Counter(record.decision.policy for record in logged)
    if len(counts) < 2:
        return []
    last = logged[-1].decision.policy
    spelt = ", ".join(f"{name} ({n})" for name, n in counts.items())
    return [f"the {len(logged)} decisions with feedback{'' if scope.everything else ' in the scope'} were made by "
            f"{len(counts)} live policies, in log order: {spelt}; `logged` is their mix, not the value of the policy "
            f"live last ({last!r}): to compare candidates with that one, evaluate its decisions alone "
            "(`bandit-router evaluate --policy`)"]


def _by_replay(p: _Prepared, config: EvaluationConfig) -> tuple[list[EstimateRecord], int]:
    """The replay method: each candidate's mean outcome on the rounds it accepted."""
    t = config.thresholds
    first = next(iter(p.replays.values())).left_out
    kept = ~first if first is not None else np.ones(len(p.arrays), dtype=bool)  # the same rows for every candidate
    arrays = p.arrays.subset(kept)
    n = len(arrays)
    if n < t.min_ess:
        p.warnings.append(f"only {n} round{'' if n == 1 else 's'} to evaluate on: every interval is rough")
    out: list[EstimateRecord] = []
    for c in p.wanted:
        res = p.replays[c.label]
        rows = res.evaluated[kept]
        sub = arrays.subset(rows)
        ov = overlap(arrays.actions, arrays.logged_probability, arrays.logged_pmf, res.target_pmf[kept], t)
        notes = list(ov.warnings)
        if res.bound_exceeded:
            notes.append(
                f"replay: π/μ exceeded the bound M = {res.acceptance_bound:.3g} on {res.bound_exceeded} rounds"
            )
        if int(rows.sum()) < min(t.min_ess, n):  # a small log is said once, above
            notes.append(f"replay: only {int(rows.sum())} of {len(rows)} rounds accepted")
        ov = dataclasses.replace(ov, warnings=tuple(notes))
        lam = config.lam_of(c)
        out.append(
            EstimateRecord(
                c.label,
                "replay",
                config.mode,
                _replay_estimate(sub.rewards(lam, config.latency_weight), config.confidence),
                _replay_estimate(sub.quality, config.confidence),
                _replay_estimate(sub.cost_usd, config.confidence),
                ov,
                lam,
            )
        )
    return out, int(max((r.evaluated.sum() for r in p.replays.values()), default=0))


def _by_estimators(p: _Prepared, config: EvaluationConfig) -> tuple[list[EstimateRecord], int]:
    """Every estimator on reward, quality and cost, for every candidate, on the same evaluated rounds."""
    rows = next(iter(p.replays.values())).evaluated
    sub = p.arrays.subset(rows)
    n_eval = len(sub)
    t, estimators = config.thresholds, config.estimators
    scope = config.scope
    if n_eval == 0 and not scope.everything and config.mode == "frozen":
        n_scope = sum(scope.holds(r) for r in p.logged)
        whose = f"policy {scope.policy!r}: none of its" if scope.policy_only else \
            f"scope ({scope.describe()}): none of its"
        raise InvalidInput(f"{whose} {n_scope} decisions with feedback is in the part of the log the frozen mode "
                           f"evaluates (the last {1 - config.train_fraction:.0%}): evaluate a policy live before a "
                           "promotion or a restart, or an earlier time, in the learning or the replay mode")
    if n_eval == 0:
        raise InvalidInput("no logged decision with feedback to evaluate on")
    if n_eval < t.min_ess:
        p.warnings.append(f"only {n_eval} round{'' if n_eval == 1 else 's'} to evaluate on: every interval is rough")
    needs_model = any(e in ("dm", "dr") for e in estimators)
    fits: dict[tuple[str, float | None], RewardFit] = {}

    def metric(c: Candidate, name: str) -> tuple[np.ndarray, tuple[str, float | None]]:
        if name == "quality":
            return sub.quality, ("quality", None)
        if name == "cost":
            return sub.cost_usd, ("cost", None)
        lam = config.lam_of(c)
        return sub.rewards(lam, config.latency_weight), ("reward", lam)

    def fit_for(key: tuple[str, float | None], values: np.ndarray) -> RewardFit | None:
        if not needs_model:
            return None
        if key not in fits:
            fits[key] = fit_rewards(
                sub.features,
                sub.actions,
                values,
                len(p.arrays.models),
                model=RidgeRewardModel(config.ridge),
                folds=config.folds,
                seed=config.seed,
                n_bootstrap=config.dm_bootstrap if "dm" in estimators else 0,
            )
        return fits[key]

    results: dict[tuple[str, str, str], Estimate] = {}
    overlaps: dict[str, Overlap] = {}
    for c in p.wanted:
        target = p.replays[c.label].target_pmf[rows]
        overlaps[c.label] = overlap(sub.actions, sub.logged_probability, sub.logged_pmf, target, t)
    for name in METRICS:  # one metric at a time, so one set of reward-model replicates lives in memory
        for c in p.wanted:
            values, key = metric(c, name)
            fit = fit_for(key, values)
            target = p.replays[c.label].target_pmf[rows]
            for e in estimators:
                est = config.estimator(e)
                results[(c.label, e, name)] = est.estimate(
                    rewards=values,
                    actions=sub.actions,
                    logged_probability=sub.logged_probability,
                    target_pmf=target,
                    features=sub.features,
                    reward_fit=fit,
                )
        fits.clear()
    out = [
        EstimateRecord(
            c.label,
            e,
            config.mode,
            results[(c.label, e, "reward")],
            results[(c.label, e, "quality")],
            results[(c.label, e, "cost")],
            overlaps[c.label],
            config.lam_of(c),
        )
        for c in p.wanted
        for e in estimators
    ]
    return out, n_eval


@dataclass(frozen=True)
class PromotionCheck:
    """Whether `candidate` may replace the live policy: its lower confidence bound must beat the live policy's
    estimate (same estimator, same rounds; `lower_bound_beats`), and, with `require_trusted`, its overlap must
    raise no warning."""

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
    """The rule for promoting a shadow or candidate: ci_low(candidate) > value(live) under `estimator`
    (`lower_bound_beats`), and no overlap warning on the candidate when `require_trusted`. A candidate whose
    estimate credits choices of a model this catalog does not route (`Evaluation.unroutable`) is refused whatever
    its bound: it estimates choices that cannot be made now."""
    try:
        mine = evaluation.record(candidate, estimator)
        theirs = evaluation.record(live, estimator)
    except KeyError:
        raise InvalidInput(f"the evaluation has no {estimator!r} estimate of {candidate!r} and {live!r}") from None
    low, live_value = mine.ci_low, theirs.value
    if candidate in evaluation.unroutable:
        return PromotionCheck(candidate, estimator, low, live_value, False, unroutable_reason(
            evaluation.unroutable[candidate]))
    if not (math.isfinite(low) and math.isfinite(live_value)):
        return PromotionCheck(candidate, estimator, low, live_value, False, "no finite estimate to compare")
    if require_trusted and mine.warnings:
        reason = f"overlap too poor to trust the estimate: {mine.warnings[0]}"
        return PromotionCheck(candidate, estimator, low, live_value, False, reason)
    if lower_bound_beats(mine.reward, theirs.reward):
        reason = f"lower bound {low:.4f} beats the live policy's {live_value:.4f}"
        return PromotionCheck(candidate, estimator, low, live_value, True, reason)
    reason = f"lower bound {low:.4f} does not beat the live policy's {live_value:.4f}"
    return PromotionCheck(candidate, estimator, low, live_value, False, reason)


def lower_bound_beats(candidate: Estimate, live: Estimate) -> bool:
    """The promotion rule's comparison: ci_low(candidate) > value(live), on the same rounds.

    ci_low is the low end of the candidate's two-sided interval at `confidence` (0.95): a one-sided lower bound
    at (1 + confidence)/2 = 97.5%. The live policy's estimate is taken as exact; it is computed on the same
    rounds and the two move together, so a candidate exactly as good as the live policy is promoted less often
    than 2.5% of the time (`tests/test_offline_replay.py`), at the price of needing a clearer margin than a
    paired test on the difference would.
    """
    return bool(candidate.ci_low > live.value)
