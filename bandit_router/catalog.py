"""The model catalog: which models can be chosen, what they cost, and what they are like.

A catalog is a TOML file with one `[[models]]` table per model::

    [[models]]
    name = "gpt-4o-mini"
    input_usd_per_mtok = 0.15     # USD per 1M input tokens
    output_usd_per_mtok = 0.60    # USD per 1M output tokens
    tags = { family = "openai", tier = "small" }
    latency_s = 1.0               # optional prior mean latency
    output_tokens = 250           # optional prior mean output tokens
    prior_quality = 0.82          # optional prior mean quality in [0, 1] (e.g. a public benchmark score)
    prior_strength = 2            # optional: how many observations that prior is worth (default 2)

The tags become action features: a new model with `family = "openai", tier = "small"` starts from what the
policy learned about similar models.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import CatalogError

DEFAULT_OUTPUT_TOKENS = 250.0
"""Prior mean of output tokens when a catalog entry gives none (ShareGPT's median first reply is 239)."""

MAX_NAME_LENGTH = 128

DEFAULT_PRIOR_STRENGTH = 2.0
"""Pseudo-observations a catalog `prior_quality` is worth when the entry gives no `prior_strength`: a public
benchmark score says little about quality on one team's own traffic, so it is soon outweighed by feedback."""


@dataclass(frozen=True)
class ModelSpec:
    """One model: its name, its prices (USD per 1M tokens), its tags and optional priors."""

    name: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    tags: Mapping[str, str] = field(default_factory=dict)
    latency_s: float | None = None
    output_tokens: float | None = None
    prior_quality: float | None = None
    prior_strength: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise CatalogError("model name must be a non-empty string")
        if len(self.name) > MAX_NAME_LENGTH or any(c.isspace() for c in self.name):
            raise CatalogError(f"model name {self.name!r} must be at most {MAX_NAME_LENGTH} characters, no spaces")
        for key in ("input_usd_per_mtok", "output_usd_per_mtok"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise CatalogError(f"model {self.name!r}: {key} must be a finite number")
            if value < 0:
                raise CatalogError(f"model {self.name!r}: {key} must not be negative (got {value})")
            object.__setattr__(self, key, float(value))
        for key in ("latency_s", "output_tokens", "prior_quality", "prior_strength"):
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise CatalogError(f"model {self.name!r}: {key} must be a finite number")
            if value < 0:
                raise CatalogError(f"model {self.name!r}: {key} must not be negative (got {value})")
            object.__setattr__(self, key, float(value))
        if self.prior_quality is not None and self.prior_quality > 1.0:
            raise CatalogError(f"model {self.name!r}: prior_quality must be in [0, 1] (got {self.prior_quality})")
        if self.prior_strength is not None and self.prior_strength <= 0:
            raise CatalogError(f"model {self.name!r}: prior_strength must be > 0 (got {self.prior_strength})")
        if self.prior_strength is not None and self.prior_quality is None:
            raise CatalogError(f"model {self.name!r}: prior_strength needs a prior_quality")
        if self.prior_quality is not None and self.prior_strength is None:
            object.__setattr__(self, "prior_strength", DEFAULT_PRIOR_STRENGTH)
        if not isinstance(self.tags, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.tags.items()
        ):
            raise CatalogError(f"model {self.name!r}: tags must map strings to strings")
        object.__setattr__(self, "tags", MappingProxyType(dict(self.tags)))

    @property
    def family(self) -> str:
        return self.tags.get("family", "")

    @property
    def tier(self) -> str:
        return self.tags.get("tier", "")

    def cost_usd(self, input_tokens: float, output_tokens: float) -> float:
        """Cost of one call: tokens × list price."""
        return (input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok) / 1e6

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "input_usd_per_mtok": self.input_usd_per_mtok,
            "output_usd_per_mtok": self.output_usd_per_mtok,
            "tags": dict(self.tags),
        }
        if self.latency_s is not None:
            out["latency_s"] = self.latency_s
        for key in ("output_tokens", "prior_quality", "prior_strength"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Build a spec from a mapping, with a clear error for unknown or missing keys."""
        if not isinstance(data, Mapping):
            raise CatalogError("each model must be a table")
        known = {
            "name", "input_usd_per_mtok", "output_usd_per_mtok", "tags", "latency_s", "output_tokens",
            "prior_quality", "prior_strength",
        }  # fmt: skip
        unknown = set(data) - known
        if unknown:
            raise CatalogError(f"model {data.get('name')!r}: unknown keys {sorted(unknown)}")
        missing = {"name", "input_usd_per_mtok", "output_usd_per_mtok"} - set(data)
        if missing:
            raise CatalogError(f"model {data.get('name')!r}: missing keys {sorted(missing)}")
        return cls(
            name=data["name"],
            input_usd_per_mtok=data["input_usd_per_mtok"],
            output_usd_per_mtok=data["output_usd_per_mtok"],
            tags=data.get("tags") or {},
            latency_s=data.get("latency_s"),
            output_tokens=data.get("output_tokens"),
            prior_quality=data.get("prior_quality"),
            prior_strength=data.get("prior_strength"),
        )


class Catalog:
    """An ordered, validated set of `ModelSpec` with unique names."""

    def __init__(self, models: Iterable[ModelSpec], *, source: str = "", prices_read_on: str = "") -> None:
        self._models: dict[str, ModelSpec] = {}
        for spec in models:
            if spec.name in self._models:
                raise CatalogError(f"duplicate model name {spec.name!r}")
            self._models[spec.name] = spec
        if not self._models:
            raise CatalogError("a catalog needs at least one model")
        self.source = source
        self.prices_read_on = prices_read_on

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __getitem__(self, name: str) -> ModelSpec:
        return self._models[name]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._models)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "") -> Catalog:
        models = data.get("models")
        if not isinstance(models, list) or not models:
            raise CatalogError(f"{source or 'catalog'}: expected a non-empty list of [[models]] tables")
        return cls(
            (ModelSpec.from_json(m) for m in models),
            source=str(data.get("prices_source", source)),
            prices_read_on=str(data.get("prices_read_on", "")),
        )


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog TOML file; every problem raises `CatalogError` naming the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CatalogError(f"{path}: no such file") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return Catalog.from_mapping(data, source=str(path))
    except CatalogError as exc:
        raise CatalogError(f"{path}: {exc}") from exc


def default_catalog() -> Catalog:
    """The catalog shipped with the package (real list prices; see the file for the date they were read)."""
    text = resources.files("bandit_router").joinpath("default_catalog.toml").read_text(encoding="utf-8")
    return Catalog.from_mapping(tomllib.loads(text), source="bandit_router/default_catalog.toml")
