"""Environments: `dataset` (replay an outcome table) and `synthetic` (a configurable world, exact truth).

`make_environment("dataset:PATH" | "synthetic:CONFIG", **options)` builds either from its CLI form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bandit_router.errors import InvalidInput

from .base import Environment, Episode, Event, Feedback, Mark
from .dataset import load_dataset
from .synthetic import build_world, load_world


@dataclass(frozen=True)
class EnvSpec:
    """How to build an environment; small and picklable, so worker processes can rebuild it.

    `options` for `dataset`: split, train_value, eval_value, tasks, drop_flag, context_columns, prices.
    """

    kind: str
    source: str
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, **options: Any) -> EnvSpec:
        if not isinstance(text, str):  # "'NoneType' object has no attribute 'partition'"
            raise InvalidInput(f"--env must be dataset:PATH or synthetic:CONFIG, got {type(text).__name__} "
                               f"{text!r:.60}")
        kind, sep, source = text.partition(":")
        if not sep or kind not in ("dataset", "synthetic") or not source:
            raise InvalidInput(f"--env must be dataset:PATH or synthetic:CONFIG, got {text!r}")
        return cls(kind=kind, source=source, options={k: v for k, v in options.items() if v not in (None, (), [])})

    def build(self) -> Environment:
        if self.kind == "dataset":
            return load_dataset(self.source, **self.options)
        if self.options:
            raise InvalidInput(f"synthetic worlds take no options, got {sorted(self.options)}")
        return load_world(self.source)

    def __str__(self) -> str:
        return f"{self.kind}:{self.source}"


def make_environment(text: str, **options: Any) -> Environment:
    return EnvSpec.parse(text, **options).build()


__all__ = [
    "EnvSpec",
    "Environment",
    "Episode",
    "Event",
    "Feedback",
    "Mark",
    "build_world",
    "load_dataset",
    "load_world",
    "make_environment",
]
