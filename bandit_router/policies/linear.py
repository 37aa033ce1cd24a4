"""LinUCB and linear Thompson sampling in numpy: one ridge regression per model, or one shared over model features.

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

`shared=true` fits one ridge regression instead, over φ(x, m) = x ⊗ g(m), where g(m) one-hot encodes the
model's feature groups (`model=<name>` and every tag, e.g. `family=openai`, `tier=small`): each group owns a
block of d weights, so q̂(x, m) = Σ_{g ∈ g(m)} θ_gᵀx. A new model shares its family's and tier's blocks from
the first request (Li et al. 2010's hybrid model, with tags as the shared part). Blocks are added as new
tag values appear; a block not yet seen counts with its prior (mean 0, variance ‖x‖²/λ₀).
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
    shared: bool = False

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


RidgeRegression = _Ridge
"""One Bayesian ridge regression (A⁻¹, b, θ; Sherman–Morrison updates), for other learners (cascade escalation)."""


def _groups(spec: ModelSpec) -> list[str]:
    return [f"model={spec.name}"] + [f"{k}={v}" for k, v in sorted(spec.tags.items())]


class _SharedRidge:
    """One ridge regression over x ⊗ (the model's feature groups); see the module docstring."""

    def __init__(self, dim: int, ridge: float) -> None:
        self.dim = dim
        self.ridge = ridge
        self.blocks: dict[str, int] = {}
        self.a = np.zeros((0, 0))
        self.a_inv = np.zeros((0, 0))
        self.b = np.zeros(0)
        self.theta = np.zeros(0)

    def _indices(self, groups: Sequence[str]) -> np.ndarray:
        d = self.dim
        return np.concatenate([np.arange(self.blocks[g] * d, (self.blocks[g] + 1) * d) for g in groups])

    def _grow(self, groups: Sequence[str]) -> None:
        new = [g for g in groups if g not in self.blocks]
        if not new:
            return
        for g in new:
            self.blocks[g] = len(self.blocks)
        size = len(self.blocks) * self.dim
        old = len(self.b)
        a, a_inv = np.zeros((size, size)), np.zeros((size, size))
        a[:old, :old], a_inv[:old, :old] = self.a, self.a_inv
        a[old:, old:] = self.ridge * np.eye(size - old)
        a_inv[old:, old:] = np.eye(size - old) / self.ridge
        self.a, self.a_inv = a, a_inv
        self.b = np.concatenate([self.b, np.zeros(size - old)])
        self.theta = np.concatenate([self.theta, np.zeros(size - old)])

    def mean_and_width(self, x: np.ndarray, spec: ModelSpec) -> tuple[float, float]:
        groups = _groups(spec)
        known = [g for g in groups if g in self.blocks]
        unseen = len(groups) - len(known)
        variance = unseen * float(x @ x) / self.ridge
        mean = 0.0
        if known:
            idx = self._indices(known)
            v = np.tile(x, len(known))
            mean = float(self.theta[idx] @ v)
            variance += float(v @ self.a_inv[np.ix_(idx, idx)] @ v)
        return mean, max(variance, 0.0) ** 0.5

    def update(self, x: np.ndarray, spec: ModelSpec, q: float, decay: float) -> None:
        groups = _groups(spec)
        self._grow(groups)
        idx = self._indices(groups)
        v = np.tile(x, len(groups))
        if decay < 1.0:
            size = len(self.b)
            self.a = decay * self.a + (1.0 - decay) * self.ridge * np.eye(size)
            self.a[np.ix_(idx, idx)] += np.outer(v, v)
            self.b = decay * self.b
            self.b[idx] += q * v
            self.a_inv = np.asarray(np.linalg.inv(self.a), dtype=np.float64)
        else:
            self.a[np.ix_(idx, idx)] += np.outer(v, v)
            self.b[idx] += q * v
            av = self.a_inv[:, idx] @ v
            self.a_inv -= np.outer(av, av) / (1.0 + v @ av[idx])
        self.theta = self.a_inv @ self.b

    def state(self) -> dict[str, Any]:
        return {"blocks": list(self.blocks), "a": self.a, "a_inv": self.a_inv, "b": self.b}

    def load(self, state: dict[str, Any]) -> None:
        self.blocks = {g: i for i, g in enumerate(state["blocks"])}
        self.a, self.a_inv, self.b = (np.array(state[k], dtype=np.float64) for k in ("a", "a_inv", "b"))
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
        self._shared = _SharedRidge(self.params.dim, self.params.ridge) if self.params.shared else None

    def _arm(self, name: str) -> _Ridge:
        arm = self._arms.get(name)
        if arm is None:
            arm = self._arms[name] = _Ridge(self.params.dim, self.params.ridge)
        return arm

    def add_model(self, spec: ModelSpec, similar: Sequence[ModelSpec]) -> None:
        if self._shared is not None:
            return  # shared blocks already carry what similar models taught
        known = [self._arms[s.name].theta for s in similar if s.name in self._arms]
        if spec.name not in self._arms and known:
            self._arms[spec.name] = _Ridge(self.params.dim, self.params.ridge, prior=np.mean(known, axis=0))

    def mean_and_width(self, context: Context, models: Sequence[ModelSpec]) -> tuple[np.ndarray, np.ndarray]:
        """θ_mᵀx and √(xᵀA_m⁻¹x) per model, each shape (len(models),)."""
        x = dense_vector(context, self.params.dim)
        if self._shared is not None:
            pairs = [self._shared.mean_and_width(x, m) for m in models]
            return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
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
            return np.asarray(mean - penalty + scale * rng.standard_normal((n, len(models))))

        return exploration.monte_carlo_pmf(draw, self.params.n_draws)

    def update(self, context: Context, model: ModelSpec, quality: float, probability: float) -> None:
        x = dense_vector(context, self.params.dim)
        if self._shared is not None:
            self._shared.update(x, model, float(quality), self.params.decay)
            return
        self._arm(model.name).update(x, float(quality), self.params.ridge, self.params.decay)

    def state(self) -> dict[str, Any]:
        if self._shared is not None:
            return {"shared": self._shared.state()}
        return {
            name: {"a": arm.a, "a_inv": arm.a_inv, "b": arm.b, "prior": arm.prior} for name, arm in self._arms.items()
        }

    def load(self, state: dict[str, Any]) -> None:
        if self._shared is not None:
            self._shared.load(state["shared"])
            return
        self._arms = {}
        for name, s in state.items():
            arm = _Ridge(self.params.dim, self.params.ridge)
            arm.a, arm.a_inv, arm.b, arm.prior = (
                np.array(s[k], dtype=np.float64) for k in ("a", "a_inv", "b", "prior")
            )
            arm.theta = arm.a_inv @ arm.b
            self._arms[name] = arm

    def weights(self) -> np.ndarray:
        if self._shared is not None:
            return self._shared.theta.copy()
        if not self._arms:
            return np.zeros(0)
        return np.concatenate([self._arms[k].theta for k in sorted(self._arms)])
