"""The one seam between the router and a learning method.

A policy estimates, for one context and the allowed models, a pmf over those models given a per-model
penalty (λ·ĉ, plus budget penalties); it learns from (context, model, quality, probability). It never
samples the final choice (the `Router` does) and never sees HTTP.

Adding a policy: one module with a class that implements `Policy` and a frozen `Params` dataclass, one line
in `policies/__init__.py`'s registry. The contract tests then run it automatically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..catalog import ModelSpec
from ..errors import InvalidInput, UnknownModel
from ..hints import quoted
from ..types import Context


@dataclass(frozen=True)
class NoParams:
    """A policy without settings."""


@runtime_checkable
class Policy(Protocol):
    """What the router needs from a learning method."""

    name: str
    explores: bool
    """True when the policy learns and should get the router's cold-start floor for new models."""

    def pmf(
        self, context: Context, models: Sequence[ModelSpec], penalty: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Probability per model, shape (len(models),), summing to 1.

        `penalty[i]` is what choosing `models[i]` costs in quality points (λ·ĉ + …), shape (len(models),).
        """
        ...

    def update(self, context: Context, model: ModelSpec, quality: float, probability: float) -> None:
        """Learn from the quality observed for the chosen model, chosen with `probability`."""
        ...

    def cold_start_floors(
        self, context: Context, models: Sequence[ModelSpec], penalty: np.ndarray
    ) -> np.ndarray | None:
        """The least probability each model must get now, shape (len(models),); None leaves it to the router's
        fixed rule (`cold_start_floor` until a model has `cold_start_rounds` feedbacks)."""
        ...

    def add_model(self, spec: ModelSpec, similar: Sequence[ModelSpec]) -> None:
        """A model joined the catalog; `similar` are existing models with the same family or tier."""
        ...

    def remove_model(self, name: str) -> None:
        """A model was retired. Its learned state may be kept (it can come back)."""
        ...

    def state(self) -> dict[str, Any]:
        """Everything learned, as a tree for `bandit_router.state.pack`."""
        ...

    def load(self, state: dict[str, Any]) -> None:
        """Replace everything learned by `state` (from `state()` of the same policy)."""
        ...

    def weights(self) -> np.ndarray:
        """The learned parameters as one flat array, to compare two policies (replay determinism)."""
        ...


class BasePolicy:
    """Defaults shared by the policies: no-op model changes, empty state."""

    name: str = ""
    explores: bool = False
    Params: ClassVar[type] = NoParams

    def cold_start_floors(
        self, context: Context, models: Sequence[ModelSpec], penalty: np.ndarray
    ) -> np.ndarray | None:
        return None

    def check_models(self, models: Sequence[ModelSpec]) -> None:
        """Raise `InvalidInput` when the policy cannot work with the catalog `models` (a model it names is not
        there); called by `Router` when it is built. Optional: a policy without it is not checked."""
        return None

    def missing_models(self, models: Sequence[ModelSpec]) -> list[str]:
        """For each model the policy names that is not among the active `models` (retired at run time), a
        sentence saying so and what the policy does instead; the service logs them at start. Optional."""
        return []

    def add_model(self, spec: ModelSpec, similar: Sequence[ModelSpec]) -> None:
        return None

    def remove_model(self, name: str) -> None:
        return None

    def update(self, context: Context, model: ModelSpec, quality: float, probability: float) -> None:
        return None

    def state(self) -> dict[str, Any]:
        return {}

    def load(self, state: dict[str, Any]) -> None:
        return None

    def weights(self) -> np.ndarray:
        return np.zeros(0)


NOT_IN_CATALOG = "which is not in the catalog; its models:"
"""What `check_named_model` says of a model outside the catalog, before the catalog's models."""


def check_named_model(who: str, model: str, models: Sequence[ModelSpec]) -> None:
    """A policy's `check_models` for one model it names (`who`: "policy 'fixed:gpt-4o'"): `UnknownModel` when
    `model` is not among `models`, `InvalidInput` when it has `route = false` (a judge or router model: never
    chosen, so a policy naming it would never choose it either)."""
    found = [m for m in models if m.name == model]
    if not found:
        names = [m.name for m in models]
        routable = [m.name for m in models if m.route]  # a route = false model is refused below: not a hint
        raise UnknownModel(f"{who} names the model {quoted([model], routable)}, {NOT_IN_CATALOG} {', '.join(names)}")
    if not found[0].route:
        raise InvalidInput(f"{who} names the model {model!r}, which has route = false (a judge or router model "
                           "only): it is never chosen")


class QualityStats:
    """Per-model running sums for the context-free policies: n, Σq, Σq²."""

    def __init__(self) -> None:
        self.n: dict[str, float] = {}
        self.total: dict[str, float] = {}
        self.squares: dict[str, float] = {}

    def observe(self, model: str, quality: float, decay: float = 1.0) -> None:
        self.n[model] = decay * self.n.get(model, 0.0) + 1.0
        self.total[model] = decay * self.total.get(model, 0.0) + quality
        self.squares[model] = decay * self.squares.get(model, 0.0) + quality * quality

    def arrays(self, models: Sequence[ModelSpec]) -> tuple[np.ndarray, np.ndarray]:
        """(counts, sums), each shape (len(models),)."""
        n = np.array([self.n.get(m.name, 0.0) for m in models])
        s = np.array([self.total.get(m.name, 0.0) for m in models])
        return n, s

    def state(self) -> dict[str, Any]:
        return {"n": dict(self.n), "total": dict(self.total), "squares": dict(self.squares)}

    def load(self, state: dict[str, Any]) -> None:
        self.n = {k: float(v) for k, v in state["n"].items()}
        self.total = {k: float(v) for k, v in state["total"].items()}
        self.squares = {k: float(v) for k, v in state["squares"].items()}

    def weights(self) -> np.ndarray:
        keys = sorted(self.n)
        return np.array([[self.n[k], self.total[k], self.squares[k]] for k in keys]).ravel()
