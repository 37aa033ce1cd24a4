"""Baselines that do not learn: one fixed model (`fixed:<model>`), or uniformly at random (`random`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..catalog import ModelSpec
from ..errors import InvalidInput, UnknownModel
from ..types import Context
from .base import BasePolicy


@dataclass(frozen=True)
class FixedParams:
    model: str = ""

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("fixed needs a model: fixed:<model>")


def cheapest(models: Sequence[ModelSpec]) -> int:
    """Index of the model with the lowest blended price (1:3 input:output), first on ties."""
    prices = [m.input_usd_per_mtok + 3 * m.output_usd_per_mtok for m in models]
    return int(np.argmin(prices))


class FixedPolicy(BasePolicy):
    """Always the same model; when a request does not allow it (or it was retired since), the cheapest allowed
    model. A router is not built on a catalog without it (`check_models`): a misspelt name would otherwise send
    every request to the cheapest model without a word."""

    Params = FixedParams

    def __init__(self, params: FixedParams, *, name: str = "fixed") -> None:
        self.params = params
        self.name = f"fixed:{params.model}"

    def check_models(self, models: Sequence[ModelSpec]) -> None:
        model = self.params.model
        found = [m for m in models if m.name == model]
        if not found:
            raise UnknownModel(
                f"policy {self.name!r} names the model {model!r}, which is not in the catalog; its models: "
                f"{', '.join(m.name for m in models)}"
            )
        if not found[0].route:
            raise InvalidInput(
                f"policy {self.name!r} names the model {model!r}, which has route = false (a judge or router model "
                "only): it is never chosen"
            )

    def pmf(
        self, context: Context, models: Sequence[ModelSpec], penalty: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        names = [m.name for m in models]
        index = names.index(self.params.model) if self.params.model in names else cheapest(models)
        out = np.zeros(len(models))
        out[index] = 1.0
        return out


class RandomPolicy(BasePolicy):
    """Uniform over the allowed models."""

    def __init__(self, params: object = None, *, name: str = "random") -> None:
        self.name = "random"

    def pmf(
        self, context: Context, models: Sequence[ModelSpec], penalty: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        return np.full(len(models), 1.0 / len(models))
