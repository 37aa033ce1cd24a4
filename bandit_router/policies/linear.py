"""LinUCB and linear Thompson sampling in numpy, one ridge regression per model (disjoint models).

Each context is projected to x ∈ ℝᵈ by `features.dense_vector` (bias, small namespaces, hashed words).
Per model m, with ridge strength λ₀ and prior mean θ₀ (zero, or the mean of similar models, below):

    A_m = λ₀·I + Σ x xᵀ,    b_m = λ₀·θ₀ + Σ q·x,    θ_m = A_m⁻¹ b_m

`A_m⁻¹` is kept up to date with the Sherman–Morrison identity, O(d²) per update:

    (A + x xᵀ)⁻¹ = A⁻¹ − (A⁻¹x)(A⁻¹x)ᵀ / (1 + xᵀA⁻¹x)

- LinUCB (Li, Chu, Langford & Schapire 2010): score_m = θ_mᵀx + α·√(xᵀA_m⁻¹x) − penalty_m, greedy.
- LinTS (Agrawal & Goyal 2013): q̃_m ~ N(θ_mᵀx, v²·xᵀA_m⁻¹x), score = q̃_m − penalty_m; the pmf of the
  argmax is estimated from `n_draws` draws (`exploration.monte_carlo_pmf`).

Cold start: a model added at run time gets θ₀ = the mean θ of the models that share its family (else its
tier), so it starts from what similar models taught, with the uncertainty of a fresh model.
With `decay` < 1, old observations are discounted (A ← γA + (1−γ)λ₀I + xxᵀ, b ← γb + (1−γ)λ₀θ₀ + qx),
for drift; the inverse is then recomputed (O(d³)), so use decay only where drift matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import exploration
from ..catalog import ModelSpec
from ..features import dense_vector
from ..types import Context
from .base import BasePolicy


@dataclass(frozen=True)
class LinearParams:
    """Settings of LinUCB / LinTS."""

    dim: int = 64
    ridge: float = 1.0
    alpha: float = 0.5
    v: float = 0.2
    n_draws: int = 64
    decay: float = 1.0

    def __post_init__(self) -> None:
        if not 32 <= self.dim <= 4096:
            raise ValueError("dim must be in [32, 4096]")
        if self.ridge <= 0 or self.alpha < 0 or self.v < 0:
            raise ValueError("ridge must be > 0, alpha and v >= 0")
        if not 1 <= self.n_draws <= 10_000:
            raise ValueError("n_draws must be in [1, 10000]")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError("decay must be in (0, 1]")


class _Ridge:
    """One model's ridge regression: A⁻¹, b, and the prior θ₀."""

    __slots__ = ("a", "a_inv", "b", "prior", "theta")

    def __init__(self, dim: int, ridge: float, prior: np.ndarray | None = None) -> None:
        self.prior = np.zeros(dim) if prior is None else prior.copy()
        self.a = ridge * np.eye(dim)
        self.a_inv = np.eye(dim) / ridge
        self.b = ridge * self.prior
        self.theta = self.prior.copy()

    def update(self, x: np.ndarray, q: float, ridge: float, decay: float) -> None:
        if decay < 1.0:
            self.a = decay * self.a + (1.0 - decay) * ridge * np.eye(len(x)) + np.outer(x, x)
            self.b = decay * self.b + (1.0 - decay) * ridge * self.prior + q * x
            self.a_inv = np.asarray(np.linalg.inv(self.a), dtype=np.float64)
        else:
            self.a += np.outer(x, x)
            self.b += q * x
            ax = self.a_inv @ x
            self.a_inv -= np.outer(ax, ax) / (1.0 + x @ ax)
        self.theta = self.a_inv @ self.b


class LinearPolicy(BasePolicy):
    """Disjoint linear models with UCB (`linucb`) or Thompson sampling (`lints`) exploration."""

    explores = True
    Params = LinearParams

    def __init__(self, params: LinearParams | None = None, *, name: str = "linucb") -> None:
        self.params = params or LinearParams()
        self.name = name
        self.thompson = name == "lints"
        self._arms: dict[str, _Ridge] = {}

    def _arm(self, name: str) -> _Ridge:
        arm = self._arms.get(name)
        if arm is None:
            arm = self._arms[name] = _Ridge(self.params.dim, self.params.ridge)
        return arm

    def add_model(self, spec: ModelSpec, similar: Sequence[ModelSpec]) -> None:
        known = [self._arms[s.name].theta for s in similar if s.name in self._arms]
        if spec.name not in self._arms and known:
            self._arms[spec.name] = _Ridge(self.params.dim, self.params.ridge, prior=np.mean(known, axis=0))

    def mean_and_width(self, context: Context, models: Sequence[ModelSpec]) -> tuple[np.ndarray, np.ndarray]:
        """θ_mᵀx and √(xᵀA_m⁻¹x) per model, each shape (len(models),)."""
        x = dense_vector(context, self.params.dim)
        arms = [self._arm(m.name) for m in models]
        mean = np.array([a.theta @ x for a in arms])
        width = np.sqrt(np.array([x @ a.a_inv @ x for a in arms]).clip(min=0.0))
        return mean, width

    def pmf(
        self, context: Context, models: Sequence[ModelSpec], penalty: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        mean, width = self.mean_and_width(context, models)
        if not self.thompson:
            return exploration.greedy(mean + self.params.alpha * width - penalty)
        scale = self.params.v * width

        def draw(n: int) -> np.ndarray:
            return mean - penalty + scale * rng.standard_normal((n, len(models)))

        return exploration.monte_carlo_pmf(draw, self.params.n_draws)

    def update(self, context: Context, model: ModelSpec, quality: float, probability: float) -> None:
        x = dense_vector(context, self.params.dim)
        self._arm(model.name).update(x, float(quality), self.params.ridge, self.params.decay)

    def state(self) -> dict[str, Any]:
        return {
            name: {"a": arm.a, "a_inv": arm.a_inv, "b": arm.b, "prior": arm.prior} for name, arm in self._arms.items()
        }

    def load(self, state: dict[str, Any]) -> None:
        self._arms = {}
        for name, s in state.items():
            arm = _Ridge(self.params.dim, self.params.ridge)
            arm.a, arm.a_inv, arm.b, arm.prior = (
                np.array(s[k], dtype=np.float64) for k in ("a", "a_inv", "b", "prior")
            )
            arm.theta = arm.a_inv @ arm.b
            self._arms[name] = arm

    def weights(self) -> np.ndarray:
        if not self._arms:
            return np.zeros(0)
        return np.concatenate([self._arms[k].theta for k in sorted(self._arms)])
