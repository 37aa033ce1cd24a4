"""Logged decisions joined with their feedback, and the arrays the estimators read from them.

A `LoggedRecord` is what the service's store holds for one decision: the `Decision` (context features, allowed
models, pmf, probability of the chosen model, λ), its `Outcome` once feedback arrived, and when it arrived.
`log_arrays` turns records into aligned arrays over one global list of K models (the union of every record's
allowed models; a model a request did not allow has probability 0 there, for the logger and every candidate).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from ..catalog import DEFAULT_OUTPUT_TOKENS, ModelSpec
from ..errors import InvalidInput
from ..features import dense_vector
from ..types import Decision, Outcome, reduce_frozen

DEFAULT_FEATURE_DIM = 64
"""Dimension of the dense context vector the reward models see (`features.dense_vector`)."""


@dataclass(frozen=True, eq=False)
class LoggedRecord:
    """One logged decision and what became of it.

    `outcome` is None while no feedback arrived. `cost_usd` is the realised cost the store computed (reported,
    or tokens × price); None → `outcome.cost_usd`, else tokens × the catalog's price. `feedback_at` (seconds,
    same clock as `decision.created_at`) orders learning in replay; None → right after the decision.
    `shadow_pmfs` maps a shadow policy's name to its pmf over `decision.models` on this decision.
    `default_reward`: `outcome` is the service's `default_reward`, learned when the decision's reward window closed
    without feedback (a `default` row), not a caller's report.
    """

    decision: Decision
    outcome: Outcome | None = None
    cost_usd: float | None = None
    feedback_at: float | None = None
    shadow_pmfs: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    default_reward: bool = False

    __reduce__ = reduce_frozen  # picklable and deep-copyable: `shadow_pmfs` is read-only

    def __post_init__(self) -> None:
        k = len(self.decision.models)
        for name, pmf in self.shadow_pmfs.items():
            if len(pmf) != k:
                raise InvalidInput(f"shadow pmf {name!r} has {len(pmf)} entries for {k} models")
        object.__setattr__(self, "shadow_pmfs", MappingProxyType({k: tuple(v) for k, v in self.shadow_pmfs.items()}))
        if self.cost_usd is not None and not (math.isfinite(self.cost_usd) and self.cost_usd >= 0):
            raise InvalidInput("cost_usd must be a finite number >= 0")

    @property
    def arrival(self) -> float:
        """When the feedback became learnable: `feedback_at`, never before the decision itself."""
        created = self.decision.created_at
        return created if self.feedback_at is None else max(self.feedback_at, created)


def specs_by_name(specs: Iterable[ModelSpec] | Mapping[str, ModelSpec], what: str = "models") -> dict[str, ModelSpec]:
    """The catalog entries by name, from `ModelSpec`s or a name → spec mapping; `InvalidInput` naming `what` for
    anything else (model names were "'str' object has no attribute 'name'")."""
    if isinstance(specs, str):
        raise InvalidInput(f"{what} must be the catalog's ModelSpecs, not one string {specs!r:.60}")
    given: list[Any] = list(specs.values() if isinstance(specs, Mapping) else specs)
    for spec in given:
        if not isinstance(spec, ModelSpec):
            raise InvalidInput(f"{what} must be the catalog's ModelSpecs (default_catalog(), load_catalog(path)), "
                               f"got {type(spec).__name__} {spec!r:.60}")
    return dict(specs) if isinstance(specs, Mapping) else {s.name: s for s in given}


def realised_cost(record: LoggedRecord, spec: ModelSpec | None) -> float:
    """The record's cost in USD: stored, else reported, else tokens × `spec`'s prices (0 without a spec)."""
    if record.cost_usd is not None:
        return float(record.cost_usd)
    outcome = record.outcome
    if outcome is None:
        raise InvalidInput(f"decision {record.decision.decision_id!r} has no feedback")
    if outcome.cost_usd is not None:
        return float(outcome.cost_usd)
    if spec is None:
        return 0.0
    inp = outcome.input_tokens if outcome.input_tokens is not None else record.decision.context.input_tokens
    default = spec.output_tokens if spec.output_tokens is not None else DEFAULT_OUTPUT_TOKENS
    out = outcome.output_tokens if outcome.output_tokens is not None else default
    return spec.cost_usd(inp, out)


@dataclass(frozen=True, eq=False)
class LogArrays:
    """Aligned arrays of n logged rounds over K models (`models`, the global action list).

    actions (n,) int, logged_probability (n,), logged_pmf (n, K), allowed (n, K) bool, quality (n,),
    cost_usd (n,), latency_s (n,) (0 when unknown), cost_weight (n,) the logged λ, features (n, d).
    """

    models: tuple[str, ...]
    actions: np.ndarray
    logged_probability: np.ndarray
    logged_pmf: np.ndarray
    allowed: np.ndarray
    quality: np.ndarray
    cost_usd: np.ndarray
    latency_s: np.ndarray
    cost_weight: np.ndarray
    features: np.ndarray

    def __len__(self) -> int:
        return len(self.actions)

    def rewards(self, cost_weight: float | None = None, latency_weight: float = 0.0) -> np.ndarray:
        """quality − λ·cost − μ·latency, shape (n,); λ = each round's logged λ unless `cost_weight` is given."""
        lam = self.cost_weight if cost_weight is None else np.full(len(self), float(cost_weight))
        return np.asarray(self.quality - lam * self.cost_usd - latency_weight * self.latency_s, dtype=np.float64)

    def subset(self, rows: np.ndarray) -> LogArrays:
        """The rounds selected by `rows` (a boolean mask or indices)."""
        return LogArrays(
            self.models,
            *(np.asarray(getattr(self, f))[rows] for f in _ARRAY_FIELDS),
        )


_ARRAY_FIELDS = (
    "actions",
    "logged_probability",
    "logged_pmf",
    "allowed",
    "quality",
    "cost_usd",
    "latency_s",
    "cost_weight",
    "features",
)


def model_list(records: Iterable[LoggedRecord]) -> tuple[str, ...]:
    """Every model any record allowed, in order of first appearance."""
    seen: dict[str, None] = {}
    for record in records:
        for m in record.decision.models:
            seen.setdefault(m, None)
    return tuple(seen)


def log_arrays(
    records: Sequence[LoggedRecord],
    specs: Mapping[str, ModelSpec] | None = None,
    *,
    feature_dim: int = DEFAULT_FEATURE_DIM,
    models: Sequence[str] | None = None,
) -> LogArrays:
    """Arrays of `records` (every one must have an outcome). `specs` price outcomes that report no cost."""
    names = tuple(models) if models is not None else model_list(records)
    index = {m: i for i, m in enumerate(names)}
    n, k = len(records), len(names)
    actions = np.empty(n, dtype=np.intp)
    prob = np.empty(n)
    pmf = np.zeros((n, k))
    allowed = np.zeros((n, k), dtype=bool)
    quality, cost, latency, lam = np.empty(n), np.empty(n), np.zeros(n), np.empty(n)
    features = np.empty((n, feature_dim))
    specs = specs or {}
    for i, record in enumerate(records):
        d = record.decision
        if record.outcome is None:
            raise InvalidInput(f"decision {d.decision_id!r} has no feedback")
        try:
            cols = [index[m] for m in d.models]
        except KeyError as exc:
            raise InvalidInput(f"decision {d.decision_id!r} allows model {exc.args[0]!r} outside {names}") from None
        actions[i] = index[d.model]
        prob[i] = d.probability
        pmf[i, cols] = d.pmf
        allowed[i, cols] = True
        quality[i] = record.outcome.quality
        cost[i] = realised_cost(record, specs.get(d.model))
        if record.outcome.latency_s is not None:
            latency[i] = record.outcome.latency_s
        lam[i] = d.cost_weight
        features[i] = dense_vector(d.context, feature_dim)
    return LogArrays(names, actions, prob, pmf, allowed, quality, cost, latency, lam, features)
