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
    prior_strength = 2            # optional: how many observations that prior is worth (default 2, at most 1e6)
    route = false                 # optional: never routed to nor named (a judge or routing LLM of [[routers]] only)
    description = "fast, cheap"   # optional: one line for an LLM router's prompt
    base_url = "https://api.openai.com/v1"   # optional: an OpenAI-compatible endpoint (the gateway calls it)
    api_key_env = "OPENAI_API_KEY"           # optional: the environment variable that holds its key
    upstream_model = "gpt-4o-mini"           # optional: the provider's model id (default: `name`)
    timeout_s = 60                           # optional: seconds one call may take (default: [gateway])
    connect_timeout_s = 5                    # optional: seconds to connect (default: [gateway])
    max_concurrency = 64                     # optional: concurrent calls to this model (default: [gateway])
    judge_params = { max_completion_tokens = 500 }   # optional: the request's fields when the service asks this
                                             # model itself (a judge, a routing LLM), in place of its defaults

Beside the `[[models]]` tables a file may hold `prices_source` and `prices_read_on`; other top-level keys are refused.
The tags become action features: a new model with `family = "openai", tier = "small"` starts from what the
policy learned about similar models. The upstream keys (`UPSTREAM_KEYS`) only tell the gateway
(`bandit_router.gateway`) where and how to call the model; they are not part of what the policy learns, so a
checkpoint survives a change of them. A key itself never lives in a file: only the name of its variable.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import CatalogError
from .hints import did_you_mean, quoted
from .names import MAX_NAME_LENGTH, name_problem, safe_text
from .tomlfile import TOMLFileError, load_toml_file
from .types import reduce_frozen

CATALOG_KEYS = ("models", "prices_source", "prices_read_on")
"""The top-level keys of a catalog file."""
UPSTREAM_KEYS = ("base_url", "api_key_env", "upstream_model", "timeout_s", "connect_timeout_s", "max_concurrency",
                 "judge_params")
"""Catalog keys that say how the gateway calls a model (not what the policy learns)."""
NOT_LEARNED_KEYS = (*UPSTREAM_KEYS, "description")
"""Catalog keys the learned state does not depend on (`learning_json` leaves them out): a restored snapshot takes
them from the router's own catalog (`ModelSpec.called_as`), so that a changed file reaches a model after a restart."""
JUDGE_PARAMS_SET_BY_SERVICE = ("model", "messages", "stream", "stream_options")
"""Request fields `judge_params` may not give: the service sets them for every call."""
MAX_JUDGE_PARAMS_CHARS = 4096
"""The longest `judge_params` as JSON (non-ASCII characters count as their `\\u` escapes)."""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_URL = re.compile(r"https?://[^\s/?#@]+(/[^\s?#]*)?")

DEFAULT_OUTPUT_TOKENS = 250.0
"""Prior mean of output tokens when a catalog entry gives none (ShareGPT's median first reply is 239)."""

DEFAULT_PRIOR_STRENGTH = 2.0
"""Pseudo-observations a catalog `prior_quality` is worth when the entry gives no `prior_strength`: a public
benchmark score says little about quality on one team's own traffic, so it is soon outweighed by feedback."""
MAX_PRIOR_STRENGTH = 1e6
"""The most pseudo-observations a prior may be worth (as `POST /v1/models` accepts): the `default` policy's prior sd
is 0.5/√n₀ (5·10⁻⁴ at the cap). A prior worth more than a million observations is a typo rather than a belief;
the argmax quadrature itself is right for any sd (`exploration.gaussian_argmax_pmf`)."""
MAX_USD_PER_MTOK = 1e6
"""The largest price a model may have, USD per 1M tokens (a dollar a token; `POST /v1/models` takes the same): a
price beyond it is a typo, and one near the float range makes a call's cost infinite."""
MAX_OUTPUT_TOKENS = 1e7
"""The largest prior mean of output tokens (as `POST /v1/models` takes)."""
MAX_LATENCY_S = 3600.0
"""The largest prior mean latency in seconds (as `POST /v1/models` takes)."""
_UPPER_BOUNDS = {"input_usd_per_mtok": MAX_USD_PER_MTOK, "output_usd_per_mtok": MAX_USD_PER_MTOK,
                 "output_tokens": MAX_OUTPUT_TOKENS, "latency_s": MAX_LATENCY_S}


def check_entry(spec: ModelSpec) -> ModelSpec:
    """`spec` as a catalog entry someone wrote (a catalog file, `[[models]]` in the configuration): within the bounds
    `POST /v1/models` has, else `CatalogError`. Not in `ModelSpec` itself: the simulator prices a dataset's
    per-request cost b as b·10⁶ USD per 1M tokens of one token, which a model dearer than $1 a request exceeds."""
    for key, bound in _UPPER_BOUNDS.items():
        value = getattr(spec, key)
        if value is not None and value > bound:
            shown = f"{bound:g}".replace("e+0", "e").replace("e+", "e")  # 1e6, 3600, 1e7
            raise CatalogError(f"model {spec.name!r}: {key} must be at most {shown} (got {value:g})")
    return spec


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
    base_url: str | None = None
    api_key_env: str | None = None
    upstream_model: str | None = None
    timeout_s: float | None = None
    connect_timeout_s: float | None = None
    max_concurrency: int | None = None
    route: bool = True
    """False: never routed to, nor called for a request naming it (a judge or a routing LLM of `[[routers]]` only)."""
    description: str | None = None
    """One line for an LLM router's prompt (what the model is good at)."""
    judge_params: Mapping[str, Any] | None = None
    """The fields of the request when the service asks this model itself (the gateway's `[judge]`, a named
    router's judge or routing LLM), in place of the defaults (`temperature = 0`, and `max_tokens = 20` for a named
    router's): a reasoning model refuses `temperature = 0` or `max_tokens`, or spends 20 tokens thinking. None:
    the defaults; `{}`: no field but the messages."""

    __reduce__ = reduce_frozen  # picklable and deep-copyable: `tags` and `judge_params` are read-only

    def __post_init__(self) -> None:
        problem = name_problem(self.name, MAX_NAME_LENGTH)  # one grammar for every name (bandit_router.names)
        if problem is not None:
            shown = safe_text(self.name)[:80] if isinstance(self.name, str) else type(self.name).__name__
            raise CatalogError(f"model name {shown!r} {problem}")
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
        if self.prior_strength is not None and self.prior_strength > MAX_PRIOR_STRENGTH:
            raise CatalogError(f"model {self.name!r}: prior_strength must be at most 1e6 (got {self.prior_strength})")
        if self.prior_strength is not None and self.prior_quality is None:
            raise CatalogError(f"model {self.name!r}: prior_strength needs a prior_quality")
        if self.prior_quality is not None and self.prior_strength is None:
            object.__setattr__(self, "prior_strength", DEFAULT_PRIOR_STRENGTH)
        if not isinstance(self.tags, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.tags.items()
        ):
            raise CatalogError(f"model {self.name!r}: tags must map strings to strings")
        for k, v in self.tags.items():
            for text, what in ((k, "tag key"), (v, "tag value")):
                problem = name_problem(text)
                if problem is not None:
                    raise CatalogError(f"model {self.name!r}: {what} {safe_text(text)[:80]!r} {problem}")
        object.__setattr__(self, "tags", MappingProxyType(dict(self.tags)))
        self._check_upstream()
        if not isinstance(self.route, bool):
            raise CatalogError(f"model {self.name!r}: route must be true or false")
        about = self.description
        if about is not None and (not isinstance(about, str) or len(about) > 1000):
            raise CatalogError(f"model {self.name!r}: description must be a string of at most 1000 characters")
        if self.judge_params is not None:
            object.__setattr__(self, "judge_params", MappingProxyType(self._checked_judge_params(self.judge_params)))

    def _checked_judge_params(self, given: Any) -> dict[str, Any]:
        """`judge_params` as a plain JSON table: text keys, none the service sets, finite numbers, small."""
        where = f"model {self.name!r}: judge_params"
        if not isinstance(given, Mapping) or not all(isinstance(k, str) for k in given):
            raise CatalogError(f"{where} must be a table of request fields (judge_params = {{ max_tokens = 500 }})")
        taken = sorted(set(given) & set(JUDGE_PARAMS_SET_BY_SERVICE))
        if taken:
            raise CatalogError(f"{where} may not set {taken}: the service sets them")
        try:  # a copy no caller can change; TOML's nan / inf (and dates) are not JSON an upstream reads
            text = json.dumps(dict(given), allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise CatalogError(f"{where} must hold JSON values (finite numbers, text, true/false, arrays, tables): "
                               f"{exc}") from None
        if len(text) > MAX_JUDGE_PARAMS_CHARS:
            raise CatalogError(f"{where} is too large (at most {MAX_JUDGE_PARAMS_CHARS} characters as JSON)")
        copy: dict[str, Any] = json.loads(text)
        return copy

    def judge_request(self, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """The fields beside `messages` of a call the service makes itself: `judge_params` when given, else
        `defaults` (a deep copy: the caller may change it)."""
        fields: dict[str, Any] = json.loads(json.dumps(dict(defaults if self.judge_params is None
                                                             else self.judge_params)))
        return fields

    def _check_upstream(self) -> None:
        """The upstream keys: an http(s) URL without credentials or query, a variable name, finite timeouts."""
        url = self.base_url
        if url is not None and (not isinstance(url, str) or _URL.fullmatch(url) is None or len(url) > 2048):
            raise CatalogError(f"model {self.name!r}: base_url must be an http:// or https:// URL without "
                               "credentials, query or fragment")
        env = self.api_key_env
        if env is not None and (not isinstance(env, str) or _ENV_NAME.fullmatch(env) is None):
            raise CatalogError(f"model {self.name!r}: api_key_env must be the NAME of an environment variable "
                               "(letters, digits, _), never the key itself")
        model = self.upstream_model
        if model is not None and (not isinstance(model, str) or not 0 < len(model) <= 256
                                  or not model.isprintable()):
            raise CatalogError(f"model {self.name!r}: upstream_model must be 1 to 256 printable characters")
        for key in ("timeout_s", "connect_timeout_s"):
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise CatalogError(f"model {self.name!r}: {key} must be a finite number > 0")
            object.__setattr__(self, key, float(value))
        limit = self.max_concurrency
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise CatalogError(f"model {self.name!r}: max_concurrency must be an integer >= 1")

    @property
    def upstream_name(self) -> str:
        """The model id sent to the upstream: `upstream_model`, else `name`."""
        return self.upstream_model or self.name

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
        for key in ("output_tokens", "prior_quality", "prior_strength", *UPSTREAM_KEYS, "description"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.judge_params is not None:
            out["judge_params"] = dict(self.judge_params)
        if not self.route:
            out["route"] = False
        return out

    def learning_json(self) -> dict[str, Any]:
        """`to_json()` without the upstream keys and the description: what the learned state depends on."""
        return {k: v for k, v in self.to_json().items() if k not in NOT_LEARNED_KEYS}

    def called_as(self, configured: ModelSpec) -> ModelSpec:
        """This spec with `configured`'s keys that are not learned (where and how the model is called, its
        description): a restored snapshot's model, called as the catalog now says."""
        return replace(self, **{key: getattr(configured, key) for key in NOT_LEARNED_KEYS})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Build a spec from a mapping, with a clear error for unknown or missing keys."""
        if not isinstance(data, Mapping):
            raise CatalogError("each model must be a table")
        known = {
            "name", "input_usd_per_mtok", "output_usd_per_mtok", "tags", "latency_s", "output_tokens",
            "prior_quality", "prior_strength", *UPSTREAM_KEYS, "route", "description",
        }  # fmt: skip
        unknown = set(data) - known
        if unknown:
            raise CatalogError(f"model {data.get('name')!r}: unknown keys {quoted(sorted(unknown), known)}")
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
            **{key: data[key] for key in (*UPSTREAM_KEYS, "route", "description") if key in data},
        )


class Catalog:
    """An ordered, validated set of `ModelSpec` with unique names."""

    def __init__(self, models: Iterable[ModelSpec], *, source: str = "", prices_read_on: str = "") -> None:
        self._models: dict[str, ModelSpec] = {}
        if isinstance(models, str | Mapping):  # a name, or a table, read key by key
            raise CatalogError(f"a catalog takes a list of ModelSpecs, got {type(models).__name__} "
                               "(Catalog.from_mapping reads a catalog file's table; load_catalog(path) a file)")
        for spec in models:
            if not isinstance(spec, ModelSpec):  # "'dict' object has no attribute 'name'"
                raise CatalogError(f"a catalog takes ModelSpecs, got {type(spec).__name__} (ModelSpec.from_json(entry) "
                                   "reads a [[models]] table as a dict)")
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
        unknown = sorted(set(data) - set(CATALOG_KEYS))  # `[[modles]]`: models silently left out otherwise
        if unknown:
            hints = "".join(did_you_mean(key, CATALOG_KEYS) for key in unknown)
            raise CatalogError(f"unknown keys {unknown}{hints}; known: {', '.join(CATALOG_KEYS)}")
        models = data.get("models")
        if not isinstance(models, list) or not models:
            raise CatalogError(f"{source or 'catalog'}: expected a non-empty list of [[models]] tables")
        return cls(
            (check_entry(ModelSpec.from_json(m)) for m in models),
            source=str(data.get("prices_source", source)),
            prices_read_on=str(data.get("prices_read_on", "")),
        )


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog TOML file; every problem raises `CatalogError` naming the file."""
    path = Path(path)
    try:
        data = load_toml_file(path)
    except FileNotFoundError as exc:
        raise CatalogError(f"{path}: no such file") from exc
    except OSError as exc:  # a folder, a file it may not read
        raise CatalogError(f"{path}: cannot read: {exc.strerror}") from exc
    except TOMLFileError as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    try:
        return Catalog.from_mapping(data, source=str(path))
    except CatalogError as exc:
        raise CatalogError(f"{path}: {exc}") from exc


def default_catalog() -> Catalog:
    """The catalog shipped with the package (real list prices; see the file for the date they were read)."""
    text = resources.files("bandit_router").joinpath("default_catalog.toml").read_text(encoding="utf-8")
    return Catalog.from_mapping(tomllib.loads(text), source="bandit_router/default_catalog.toml")
