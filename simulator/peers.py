"""MABWiser's LinUCB and LinTS behind bandit-router's `Policy` protocol, for the peer comparison.

MABWiser (Strong et al. 2019, Fidelity) is a dev-only dependency. The adapter gives it exactly what our own
`linucb`/`lints` get: the context projected by `features.dense_vector` (same `dim`), the chosen model's
quality as the reward, and the same scoring: its estimate minus the request's cost penalty λ·ĉ, greedy.
For LinTS, `predict_expectations` returns one posterior draw per model, so the pmf is one-hot on the argmax
of that draw (its logged probability is therefore not the true propensity; the simulator does not need it).

    mabwiser-linucb[:alpha=0.5,ridge=1.0,dim=64]    mabwiser-lints[:alpha=0.2,ridge=1.0,dim=64]

The defaults equal those of our `linucb` (α = 0.5) and `lints` (v = 0.2), ridge 1, d = 64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bandit_router import exploration
from bandit_router.catalog import ModelSpec
from bandit_router.errors import InvalidInput
from bandit_router.features import dense_vector
from bandit_router.policies.base import BasePolicy
from bandit_router.types import Context

from .specs import parse_spec


class MabwiserPolicy(BasePolicy):
    """A MABWiser contextual learner (LinUCB or LinTS) on `dense_vector` features."""

    explores = True

    def __init__(self, kind: str, *, alpha: float, ridge: float, dim: int, seed: int) -> None:
        from mabwiser.mab import LearningPolicy

        if kind not in ("linucb", "lints"):
            raise ValueError(f"unknown MABWiser policy {kind!r}")
        self.name = f"mabwiser-{kind}"
        make = LearningPolicy.LinUCB if kind == "linucb" else LearningPolicy.LinTS
        self.learning_policy = make(alpha=alpha, l2_lambda=ridge)
        self.dim, self.seed = dim, seed
        self._mab: Any = None
        self._fitted = False

    def _ensure(self, names: Sequence[str]) -> Any:
        from mabwiser.mab import MAB

        if self._mab is None:
            self._mab = MAB(list(names), self.learning_policy, seed=self.seed)
        for name in names:
            if name not in self._mab.arms:
                self._mab.add_arm(name)
        return self._mab

    def pmf(
        self, context: Context, models: Sequence[ModelSpec], penalty: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        mab = self._ensure([m.name for m in models])
        if not self._fitted:
            return np.full(len(models), 1.0 / len(models))
        expected = mab.predict_expectations(dense_vector(context, self.dim)[None, :])
        return exploration.greedy(np.array([float(expected[m.name]) for m in models]) - penalty)

    def update(self, context: Context, model: ModelSpec, quality: float, probability: float) -> None:
        mab = self._ensure([model.name])
        x = dense_vector(context, self.dim)[None, :]
        if self._fitted:
            mab.partial_fit([model.name], [quality], x)
        else:
            mab.fit([model.name], [quality], x)
            self._fitted = True


def mabwiser_factory(text: str) -> Callable[[int], MabwiserPolicy]:
    """`mabwiser-linucb[:alpha=…,ridge=…,dim=…]` → a factory of fresh policies, seeded per run."""
    spec = parse_spec(text)
    spec.check({"alpha", "ridge", "dim"})
    try:  # a dev dependency: not there after a plain `pip install bandit-router`, and then a message, not a traceback
        import mabwiser  # noqa: F401
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "mabwiser":
            raise InvalidInput(f"{spec.name} needs MABWiser, which bandit-router does not install: "
                               "pip install mabwiser") from None
        raise InvalidInput(f"{spec.name} needs MABWiser, which is installed but fails to import: "
                           f"{type(exc).__name__}: {exc}") from exc
    kind = spec.name.removeprefix("mabwiser-")
    alpha = spec.float("alpha", 0.5 if kind == "linucb" else 0.2)
    ridge, dim = spec.float("ridge", 1.0), spec.integer("dim", 64)
    return lambda seed: MabwiserPolicy(kind, alpha=alpha, ridge=ridge, dim=dim, seed=seed % 2**31)
