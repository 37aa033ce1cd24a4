"""Spec strings shared by the CLI and the config files: `name[:value|:key=value,key=value]`.

    drift:model=gpt-4o,delta=-0.3,at=0.5      outage:model=gpt-4o      fixed:gpt-4o-mini
    cascade:threshold=0.5,error=0.1           vw-squarecb                linucb:alpha=0.5,dim=128

A comma-separated list of specs (`--policies vw-squarecb,linucb:alpha=0.5,dim=128,random`) is split with
`split_specs`: a piece that holds `=` but no `:` continues the spec before it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bandit_router.errors import InvalidInput
from bandit_router.hints import quoted
from bandit_router.policies import parse_settings
from bandit_router.setting_values import typed_value


@dataclass(frozen=True)
class Spec:
    """A parsed spec: its name, its settings as strings, and the original text."""

    name: str
    settings: Mapping[str, str] = field(default_factory=dict)
    text: str = ""

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.settings.get(key, default)

    def float(self, key: str, default: float) -> float:
        value = self.settings.get(key)
        if value is None:
            return default
        try:
            out = float(value)
        except ValueError as exc:
            raise InvalidInput(f"{self.text}: {key}={value!r} must be a number") from exc
        if not math.isfinite(out):
            raise InvalidInput(f"{self.text}: {key} must be finite")
        return out

    def integer(self, key: str, default: int) -> int:
        """An integer setting: `dim=64.5` is refused, not truncated."""
        value = self.settings.get(key)
        if value is None:
            return default
        try:
            return int(typed_value("int", value, text=True))
        except ValueError as exc:
            raise InvalidInput(f"{self.text}: {key} {exc}") from None

    def check(self, allowed: set[str]) -> None:
        """Reject settings this spec's owner does not know, naming the ones it does."""
        unknown = set(self.settings) - allowed
        if unknown:
            raise InvalidInput(f"{self.text}: unknown setting(s) {quoted(sorted(unknown), allowed)}; known: "
                               f"{sorted(allowed)}")


def parse_spec(text: str, positional: str = "") -> Spec:
    """`name[:value|:k=v,k=v]` → `Spec`. A bare value fills the `positional` setting."""
    text = text.strip()
    name, _, rest = text.partition(":")
    if not name:
        raise InvalidInput(f"empty spec in {text!r}")
    settings = parse_settings(text, rest, positional)
    return Spec(name=name.strip(), settings=settings, text=text)


def split_specs(text: str) -> list[str]:
    """Split a comma-separated list of specs whose settings also use commas."""
    out: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if out and "=" in piece and ":" not in piece:
            out[-1] = f"{out[-1]},{piece}"
        else:
            out.append(piece)
    return out


def parse_floats(text: str | list[Any] | tuple[Any, ...]) -> tuple[float, ...]:
    """`"0,10,20"` or a list → a tuple of finite, non-negative floats."""
    items = [p for p in text.split(",") if p.strip()] if isinstance(text, str) else list(text)
    try:
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"expected numbers, got {text!r}") from exc
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise InvalidInput(f"expected one or more finite numbers >= 0, got {text!r}")
    return values


def step_of(at: float, n_steps: int) -> int:
    """An event time: a fraction of the run when `at` < 1, else an absolute step."""
    if at < 0:
        raise InvalidInput(f"event time must be >= 0, got {at}")
    step = round(at * n_steps) if at < 1 else int(at)
    return min(step, n_steps)
