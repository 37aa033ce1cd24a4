"""The classifier-based strategy: a router trained offline on prompts with every model's quality.

For each model m, a ridge regression on the dense projection x = `dense_vector(context, dim)`:

    θ_m = (XᵀX + λ₀I)⁻¹ Xᵀ y_m,     q̂_m(x) = θ_mᵀx

fitted only on the prompts where m's quality is known (RouterBench-style "predictive router"; Hu et al. 2024,
Ong et al. 2024 for the matrix-factorisation and BERT variants of the same idea). It routes by
argmax q̂_m − penalty_m (with optional ε for logging overlap). It does not learn online; `warm_start` uses
the same table to pre-train any bandit policy with full-information updates.

From the command line: `supervised:table=PATH[,dim=256,ridge=1.0,epsilon=0]`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import exploration
from ..catalog import ModelSpec
from ..features import FeatureExtractor, dense_vector
from ..outcomes import OutcomeTable, load_table
from ..types import Context
from .base import BasePolicy, Policy


@dataclass(frozen=True)
class SupervisedParams:
    table: str = ""
    dim: int = 256
    ridge: float = 1.0
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        if not 32 <= self.dim <= 8192:
            raise ValueError("dim must be in [32, 8192]")
        if self.ridge <= 0:
            raise ValueError("ridge must be > 0")
        if not 0 <= self.epsilon <= 1:
            raise ValueError("epsilon must be in [0, 1]")


class SupervisedPolicy(BasePolicy):
    """Per-model ridge regressors of quality, fitted offline; greedy (or ε-greedy) on q̂ − penalty."""

    Params = SupervisedParams

    def __init__(self, params: SupervisedParams | None = None, *, name: str = "supervised") -> None:
        self.params = params or SupervisedParams()
        self.name = "supervised"
        self.theta: dict[str, np.ndarray] = {}
        self.fallback: dict[str, float] = {}
        if self.params.table:
            table = load_table(self.params.table)
            extractor = FeatureExtractor()
            self.fit([extractor.extract(p) for p in table.prompts], table.models, table.quality)

    def fit(self, contexts: Sequence[Context], models: Sequence[str], quality: np.ndarray) -> SupervisedPolicy:
        """Fit on `contexts` with `quality` of shape (len(contexts), len(models)); NaN = unknown."""
        x = np.stack([dense_vector(c, self.params.dim) for c in contexts])
        eye = self.params.ridge * np.eye(self.params.dim)
        for k, model in enumerate(models):
            known = np.isfinite(quality[:, k])
            if not known.any():
                continue
            xk, yk = x[known], quality[known, k]
            self.theta[model] = np.linalg.solve(xk.T @ xk + eye, xk.T @ yk)
            self.fallback[model] = float(yk.mean())
        return self

    def quality(self, context: Context, models: Sequence[ModelSpec]) -> np.ndarray:
        """q̂ per model, shape (len(models),); a model never seen in training scores the mean of the rest."""
        x = dense_vector(context, self.params.dim)
        default = float(np.mean(list(self.fallback.values()))) if self.fallback else 0.5
        return np.array([float(self.theta[m.name] @ x) if m.name in self.theta else default for m in models])

    def pmf(
        self, context: Context, models: Sequence[ModelSpec], penalty: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        return exploration.epsilon_greedy(self.quality(context, models) - penalty, self.params.epsilon)

    def state(self) -> dict[str, Any]:
        return {"theta": dict(self.theta), "fallback": dict(self.fallback)}

    def load(self, state: dict[str, Any]) -> None:
        self.theta = {k: np.asarray(v, dtype=np.float64) for k, v in state["theta"].items()}
        self.fallback = {k: float(v) for k, v in state["fallback"].items()}

    def weights(self) -> np.ndarray:
        return np.concatenate([self.theta[k] for k in sorted(self.theta)]) if self.theta else np.zeros(0)


def warm_start(policy: Policy, contexts: Sequence[Context], specs: Mapping[str, ModelSpec], table: OutcomeTable) -> int:
    """Pre-train `policy` with every known (prompt, model, quality) of `table` as a full-information update
    (probability 1). `specs` maps the table's model names to catalog entries; returns the number of updates."""
    n = 0
    for i, context in enumerate(contexts):
        for k, model in enumerate(table.models):
            q = table.quality[i, k]
            if model in specs and np.isfinite(q):
                policy.update(context, specs[model], float(q), 1.0)
                n += 1
    return n
