"""Reward and cost: learn what is unknown (quality), price what is known (tokens × price).

    reward = quality − λ · cost_usd − μ · latency_s

λ (`cost_weight`) is the number of quality points one would give up to save 1 USD; μ (`latency_weight`)
the points per second of latency (0 unless configured). Expected cost for a decision is

    ĉ_m = (input_tokens · p_in(m) + ô_m · p_out(m)) / 10⁶

with ô_m, the model's expected output tokens, learned from feedback by `OutputTokenEstimator`. A feedback's tokens
(and latency) enter that mean at most `OUTLIER_FACTOR` × the current estimate: one absurd report cannot price a
model out for good (it would never be chosen again to correct the estimate). The realised cost, the reward and
the budgets' spend still use what was reported.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .catalog import DEFAULT_OUTPUT_TOKENS, ModelSpec
from .errors import InvalidInput
from .types import Outcome

OUTLIER_FACTOR = 10.0
"""A feedback's output tokens (latency) count at most this × the model's current estimate in the learned mean:

    ô ← (w·ô + min(x, 10·max(ô, floor))) / (w + 1),   w = w₀ + n

so one report raises ô at most (w + 10)/(w + 1)-fold (2.5× for a model without feedback, w₀ = 5), where 10¹⁵
output tokens made gpt-4o's expected cost $10⁹ per request, and the model was never chosen again to correct it.
Answers that really got longer (or slower) still raise it, by up to that factor per feedback."""

MAX_COST_WEIGHT = 1e9
"""The largest λ (and μ) the service takes, configured or per request: sums of it in the rollup stay finite."""


@dataclass(frozen=True, slots=True)
class RewardConfig:
    """Default trade-offs: λ (USD → quality points) and μ (seconds → quality points)."""

    cost_weight: float = 20.0
    latency_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("cost_weight", "latency_weight"):
            value = getattr(self, name)
            number = not isinstance(value, bool) and isinstance(value, numbers.Real)
            if not number or not math.isfinite(value) or value < 0:
                raise InvalidInput(f"{name} must be a finite number >= 0, got {value!r}")


def reward(
    quality: float, cost_usd: float, latency_s: float = 0.0, *, cost_weight: float, latency_weight: float = 0.0
) -> float:
    """quality − λ·cost_usd − μ·latency_s; `InvalidInput` when that is not a finite number (a NaN or infinite term,
    or a product that overflows: λ = 20 × cost 1e308 USD was −inf), so that nothing learns from it."""
    value = quality - cost_weight * cost_usd - latency_weight * latency_s
    if not math.isfinite(value):
        raise InvalidInput(
            f"the reward quality − λ·cost − μ·latency = {quality!r} − {cost_weight!r}·{cost_usd!r} − "
            f"{latency_weight!r}·{latency_s!r} is not a finite number: costs, latencies, λ, μ and their products "
            "must be finite"
        )
    return value


class OutputTokenEstimator:
    """Per-model mean output tokens: a prior worth `prior_weight` observations, updated by each feedback.

    ô_m = (w₀·prior_m + Σ tokens) / (w₀ + n_m), each feedback's tokens counted at most `OUTLIER_FACTOR` × the
    estimate before it (at least 1 token). With `decay` < 1 the sum and count are discounted, so the estimate
    follows a model whose answers got longer or shorter.
    """

    def __init__(self, *, prior_weight: float = 5.0, decay: float = 1.0) -> None:
        self.prior_weight = prior_weight
        self.decay = decay
        self._sum: dict[str, float] = {}
        self._n: dict[str, float] = {}

    def estimate(self, spec: ModelSpec) -> float:
        prior = spec.output_tokens if spec.output_tokens is not None else DEFAULT_OUTPUT_TOKENS
        n = self._n.get(spec.name, 0.0)
        return (self.prior_weight * prior + self._sum.get(spec.name, 0.0)) / (self.prior_weight + n)

    def observe(self, spec: ModelSpec, output_tokens: float) -> None:
        counted = _admitted(float(output_tokens), self.estimate(spec), 1.0)
        model = spec.name
        self._sum[model] = self.decay * self._sum.get(model, 0.0) + counted
        self._n[model] = self.decay * self._n.get(model, 0.0) + 1.0

    def state(self) -> dict[str, Any]:
        return {"sum": dict(self._sum), "n": dict(self._n)}

    def load(self, state: dict[str, Any]) -> None:
        self._sum = {str(k): float(v) for k, v in state["sum"].items()}
        self._n = {str(k): float(v) for k, v in state["n"].items()}


class LatencyEstimator:
    """Per-model mean latency in seconds: the catalog's prior (or 1 s) worth `prior_weight` observations; each
    feedback's latency counted at most `OUTLIER_FACTOR` × the estimate before it (at least 1 ms)."""

    def __init__(self, *, prior_weight: float = 5.0) -> None:
        self.prior_weight = prior_weight
        self._sum: dict[str, float] = {}
        self._n: dict[str, float] = {}

    def estimate(self, spec: ModelSpec) -> float:
        prior = spec.latency_s if spec.latency_s is not None else 1.0
        n = self._n.get(spec.name, 0.0)
        return (self.prior_weight * prior + self._sum.get(spec.name, 0.0)) / (self.prior_weight + n)

    def observe(self, spec: ModelSpec, latency_s: float) -> None:
        model = spec.name
        self._sum[model] = self._sum.get(model, 0.0) + _admitted(float(latency_s), self.estimate(spec), 1e-3)
        self._n[model] = self._n.get(model, 0.0) + 1.0

    def state(self) -> dict[str, Any]:
        return {"sum": dict(self._sum), "n": dict(self._n)}

    def load(self, state: dict[str, Any]) -> None:
        self._sum = {str(k): float(v) for k, v in state["sum"].items()}
        self._n = {str(k): float(v) for k, v in state["n"].items()}


class CostModel:
    """Expected and realised cost of calls, from the catalog's prices and learned output lengths."""

    def __init__(
        self, *, output_tokens: OutputTokenEstimator | None = None, latency: LatencyEstimator | None = None
    ) -> None:
        self.output_tokens = output_tokens or OutputTokenEstimator()
        self.latency = latency or LatencyEstimator()

    def expected_costs(self, specs: Sequence[ModelSpec], input_tokens: int) -> np.ndarray:
        """ĉ per model, shape (n_models,)."""
        estimate = self.output_tokens.estimate
        return np.array([s.cost_usd(input_tokens, estimate(s)) for s in specs])

    def expected_latencies(self, specs: Sequence[ModelSpec]) -> np.ndarray:
        """Expected latency in seconds per model, shape (n_models,)."""
        return np.array([self.latency.estimate(s) for s in specs])

    def realised_cost(self, spec: ModelSpec, outcome: Outcome, estimated_input_tokens: int) -> float:
        """The outcome's cost when reported; else tokens × price, estimating what is missing."""
        if outcome.cost_usd is not None:
            return float(outcome.cost_usd)
        inp = outcome.input_tokens if outcome.input_tokens is not None else estimated_input_tokens
        out = outcome.output_tokens if outcome.output_tokens is not None else self.output_tokens.estimate(spec)
        return spec.cost_usd(inp, out)

    def observe(self, spec: ModelSpec, outcome: Outcome) -> None:
        """Learn the outcome's output tokens and latency (each bounded by `OUTLIER_FACTOR` × the estimate)."""
        if outcome.output_tokens is not None:
            self.output_tokens.observe(spec, outcome.output_tokens)
        if outcome.latency_s is not None:
            self.latency.observe(spec, outcome.latency_s)

    def state(self) -> dict[str, Any]:
        return {"output_tokens": self.output_tokens.state(), "latency": self.latency.state()}

    def load(self, state: dict[str, Any]) -> None:
        self.output_tokens.load(state["output_tokens"])
        self.latency.load(state["latency"])


def _admitted(value: float, estimate: float, floor: float) -> float:
    """`value` as a learned mean counts it: at most `OUTLIER_FACTOR` × max(`estimate`, `floor`)."""
    return min(value, OUTLIER_FACTOR * max(estimate, floor))
