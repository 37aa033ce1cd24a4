"""Vowpal Wabbit as the regression oracle of a contextual bandit over action-dependent features.

The only module that imports VW, knows its example layout, or its cost sign.

Model: VW `--cb_adf` (Langford & Zhang 2007; Bietti, Agarwal & Langford 2021, "A Contextual Bandit
Bake-off") with `--cb_type mtr`: for each decision, a shared example `s` (every context feature) and one
action example `a` per allowed model (model name, family, tier, every tag, log price). With `-q sa` the
learner fits

    q̂(x, m) = w·φ_s(x) + w·φ_a(m) + w·(φ_s(x) ⊗ φ_a(m))

by importance-weighted online least squares on the chosen model only (VW's cost = −quality). Models that
share tags share weights, so a new model starts from what its family and tier taught.

Exploration is applied by bandit-router to the scores q̂ − penalty (so a request's λ takes effect at once):
`vw-greedy`, `vw-egreedy` (ε), `vw-softmax` (temperature τ), `vw-squarecb` (γ_t = γ₀·t^ρ, as VW's own
`--squarecb` with `gamma_scale` γ₀ and `gamma_exponent` ρ). For drift, `power_t=0` gives a constant
learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import vowpal_wabbit_next as vw

from .. import exploration
from ..catalog import ModelSpec
from ..features import hash_name
from ..types import Context
from .base import BasePolicy

_SHARED = ord("s")
_ACTION = ord("a")
_SHARED_LABEL = vw.CBLabel(shared=True)


@dataclass(frozen=True)
class VWParams:
    """Settings of the VW policies. `exploration` is set by the registry name."""

    exploration: str = "squarecb"
    epsilon: float = 0.05
    temperature: float = 0.05
    gamma_scale: float = 10.0
    gamma_exponent: float = 0.5
    bits: int = 18
    learning_rate: float = 0.1
    power_t: float = 0.5
    interactions: bool = True
    l2: float = 0.0

    def __post_init__(self) -> None:
        if self.exploration not in ("greedy", "egreedy", "softmax", "squarecb"):
            raise ValueError(f"unknown exploration {self.exploration!r}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError("epsilon must be in [0, 1]")
        if self.temperature <= 0 or self.gamma_scale <= 0 or self.learning_rate <= 0:
            raise ValueError("temperature, gamma_scale and learning_rate must be > 0")
        if not 0.0 <= self.gamma_exponent <= 1.0 or not 0.0 <= self.power_t <= 1.0:
            raise ValueError("gamma_exponent and power_t must be in [0, 1]")
        if not 10 <= self.bits <= 28:
            raise ValueError("bits must be in [10, 28]")
        if self.l2 < 0:
            raise ValueError("l2 must be >= 0")

    def args(self) -> list[str]:
        out = [
            "--cb_adf",
            "--cb_type",
            "mtr",
            "-b",
            str(self.bits),
            "-l",
            str(self.learning_rate),
            "--power_t",
            str(self.power_t),
            "--quiet",
        ]
        if self.interactions:
            out += ["-q", "sa"]
        if self.l2 > 0:
            out += ["--l2", str(self.l2)]
        return out


def action_features(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """The action-dependent features of a model: name, every tag, and log10 of its blended price."""
    names = [f"model={spec.name}"] + [f"{k}={v}" for k, v in sorted(spec.tags.items())]
    indices = [hash_name(n) for n in names]
    values = [1.0] * len(names)
    blended = (spec.input_usd_per_mtok + 3 * spec.output_usd_per_mtok) / 4
    indices.append(hash_name("price"))
    values.append(math.log10(blended + 0.01) + 2.0)
    return np.asarray(indices, dtype=np.uint64), np.asarray(values, dtype=np.float32)


class VWPolicy(BasePolicy):
    """Contextual bandit with VW `cb_adf` as the quality regressor; exploration on q̂ − penalty."""

    explores = True
    Params = VWParams

    def __init__(self, params: VWParams | None = None, *, name: str = "vw-squarecb") -> None:
        self.params = params or VWParams()
        self.name = name
        self._ws = vw.Workspace(self.params.args())
        self._actions: dict[str, vw.Example] = {}
        self._updates = 0

    # -- examples ---------------------------------------------------------------------------------------
    def _action(self, spec: ModelSpec) -> vw.Example:
        ex = self._actions.get(spec.name)
        if ex is None:
            ex = vw.Example()
            idx, val = action_features(spec)
            ex[_ACTION].push_many_features(idx, val)  # type: ignore[arg-type]
            ex.set_label(vw.CBLabel())
            self._actions[spec.name] = ex
        return ex

    @staticmethod
    def _shared(context: Context) -> vw.Example:
        ex = vw.Example()
        idx, val = context.flat
        if len(idx):
            ex[_SHARED].push_many_features(idx, val)  # type: ignore[arg-type]
        ex.set_label(_SHARED_LABEL)
        return ex

    # -- policy -----------------------------------------------------------------------------------------
    def quality(self, context: Context, models: Sequence[ModelSpec]) -> np.ndarray:
        """q̂ per model, shape (len(models),)."""
        # The public predict_one re-checks every label in Python (≈10 µs); our examples are built right here.
        raw = [self._shared(context)._example, *(self._action(m)._example for m in models)]
        scores = cast(list[tuple[int, float]], self._ws._workspace.predict_multi_ex_one(raw))
        q = [0.0] * len(models)
        for action, cost in scores:  # VW sorts by score: map back by index
            q[action] = -cost
        return np.array(q)

    def gamma(self) -> float:
        return float(self.params.gamma_scale * (self._updates + 1) ** self.params.gamma_exponent)

    def pmf(
        self, context: Context, models: Sequence[ModelSpec], penalty: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        scores = self.quality(context, models) - penalty
        kind = self.params.exploration
        if kind == "egreedy":
            return exploration.epsilon_greedy(scores, self.params.epsilon)
        if kind == "softmax":
            return exploration.softmax(scores, self.params.temperature)
        if kind == "squarecb":
            return exploration.squarecb(scores, self.gamma())
        return exploration.greedy(scores)

    def update(self, context: Context, model: ModelSpec, quality: float, probability: float) -> None:
        shared = self._shared(context)
        chosen = self._action(model)
        chosen.set_label(vw.CBLabel(label=(-float(quality), float(probability))))
        try:
            self._ws.learn_one([shared, chosen])
        finally:
            chosen.set_label(vw.CBLabel())
        self._updates += 1

    # -- state ------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"model": self._ws.serialize(), "updates": self._updates}

    def load(self, state: dict[str, Any]) -> None:
        self._ws = vw.Workspace(self.params.args(), model_data=bytes(state["model"]))
        self._actions.clear()
        self._updates = int(state["updates"])

    def weights(self) -> np.ndarray:
        return np.asarray(self._ws.weights()[..., 0]).ravel()
