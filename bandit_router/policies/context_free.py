"""Context-free bandits: they learn one mean quality per model and ignore the prompt.

With n_m observations and sum S_m for model m (q̄_m = S_m / n_m), scores are q̂_m − penalty_m where:

- `egreedy`: q̂_m = (S_m + q₀)/(n_m + 1) (one pseudo-observation of prior q₀ = 0.5); pmf = (1−ε)·greedy + ε/K.
- `ucb1` (Auer, Cesa-Bianchi & Fischer 2002): q̂_m = q̄_m + c·√(2 ln t / n_m), t = Σ n; untried models first.
- `thompson` (Thompson 1933; Chapelle & Li 2011):
    `dist=beta`: q̃_m ~ Beta(1 + S_m, 1 + n_m − S_m) (fractional qualities as fractional successes);
    `dist=gaussian`: q̃_m ~ N((S_m + q₀)/(n_m + 1), σ²/(n_m + 1)).
  The pmf is that of the argmax over `n_draws` draws.

`decay` < 1 discounts old observations (for drift).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import exploration
from ..catalog import ModelSpec
from ..types import Context
from .base import BasePolicy, QualityStats

PRIOR_QUALITY = 0.5


@dataclass(frozen=True)
class ContextFreeParams:
    epsilon: float = 0.1
    c: float = 0.5
    dist: str = "beta"
    sigma: float = 0.3
    n_draws: int = 64
    decay: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError("epsilon must be in [0, 1]")
        if self.c < 0 or self.sigma <= 0:
            raise ValueError("c must be >= 0 and sigma > 0")
        if self.dist not in ("beta", "gaussian"):
            raise ValueError("dist must be beta or gaussian")
        if not 1 <= self.n_draws <= 10_000:
            raise ValueError("n_draws must be in [1, 10000]")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError("decay must be in (0, 1]")


class ContextFreePolicy(BasePolicy):
    """ε-greedy, UCB1 or Thompson sampling on per-model mean quality (`name` selects which)."""

    explores = True
    Params = ContextFreeParams

    def __init__(self, params: ContextFreeParams | None = None, *, name: str = "egreedy") -> None:
        if name not in ("egreedy", "ucb1", "thompson"):
            raise ValueError(f"unknown context-free policy {name!r}")
        self.params = params or ContextFreeParams()
        self.name = name
        self.kind = name
        self.stats = QualityStats()

    def pmf(
        self, context: Context, models: Sequence[ModelSpec], penalty: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        n, s = self.stats.arrays(models)
        p = self.params
        if self.kind == "egreedy":
            return exploration.epsilon_greedy((s + PRIOR_QUALITY) / (n + 1) - penalty, p.epsilon)
        if self.kind == "ucb1":
            untried = n == 0
            if untried.any():
                return np.asarray(untried / untried.sum())
            total = n.sum()
            bonus = p.c * np.sqrt(2.0 * math.log(max(total, 1.0)) / n)
            return exploration.greedy(s / n + bonus - penalty)
        if p.dist == "beta":
            alpha, beta = 1.0 + s, 1.0 + np.maximum(n - s, 0.0)

            def draw(k: int) -> np.ndarray:
                return np.asarray(rng.beta(alpha, beta, size=(k, len(models))) - penalty)
        else:
            mean, std = (s + PRIOR_QUALITY) / (n + 1), p.sigma / np.sqrt(n + 1)

            def draw(k: int) -> np.ndarray:
                return np.asarray(mean + std * rng.standard_normal((k, len(models))) - penalty)

        return exploration.monte_carlo_pmf(draw, p.n_draws)

    def update(self, context: Context, model: ModelSpec, quality: float, probability: float) -> None:
        self.stats.observe(model.name, float(quality), self.params.decay)

    def state(self) -> dict[str, Any]:
        return self.stats.state()

    def load(self, state: dict[str, Any]) -> None:
        self.stats.load(state)

    def weights(self) -> np.ndarray:
        return self.stats.weights()
