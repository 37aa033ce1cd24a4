"""Named routers: `[[routers]]` tables, each an alias a client sends as `model` (the alias `router` stays the bandit).

    [[routers]]
    name = "cascade"            # clients send model="cascade"
    strategy = "cascade"        # or "learned-cascade", "llm-router"
    models = ["llama-3.1-8b-instruct", "llama-3.1-70b-instruct"]   # cheapest first
    judge = "gpt-4o-mini"       # a catalog model; or signal = "logprob" (or "logprob-min")
    threshold = 0.7             # on the judge's score scaled to [0, 1] (cascade only)

    [[routers]]
    name = "auto"
    strategy = "llm-router"
    router_model = "gpt-4o-mini"
    models = ["gpt-4o-mini", "gpt-4o"]

`RouterAlias.from_mapping` checks each table on its own; `check_router_names` checks their names against the
catalog file and the bandit's alias (`Settings.check`), `check_router_models` their models against the live catalog
(`Settings.check_catalog`, at start-up); `check_routers` does both against one catalog.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ..cascade.escalation import EscalationParams
from ..cascade.signals import SIGNALS
from ..errors import ConfigError
from ..hints import quoted
from ..names import name_problem
from ..setting_values import type_name, typed_value
from .sections import check_types, setting

STRATEGIES = ("cascade", "learned-cascade", "llm-router")
DEFAULT_THRESHOLD = 0.7
_KEYS = {
    "cascade": {"name", "strategy", "models", "judge", "signal", "threshold", "rubric"},
    "learned-cascade": {"name", "strategy", "models", "judge", "signal", "rubric", "escalation"},
    "llm-router": {"name", "strategy", "models", "router_model", "descriptions"},
}


@dataclass(frozen=True)
class RouterAlias:
    """One named router (see the module docstring). `escalation` holds `LearnedEscalation`'s settings
    (`v`, `floor`, `dim`, `ridge`); `descriptions` optional one-line descriptions of the candidates for the
    routing LLM (model name → text)."""

    name: str
    strategy: str
    models: tuple[str, ...]
    judge: str | None = None
    signal: str = "judge"
    threshold: float = DEFAULT_THRESHOLD
    rubric: str | None = None
    router_model: str | None = None
    escalation: Mapping[str, float] = field(default_factory=dict)
    descriptions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"routers: {self.name!r}"
        problem = name_problem(self.name)
        if problem is not None:
            raise ConfigError(f"routers: name {problem}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"{where}: strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if len(self.models) < 2 or len(set(self.models)) != len(self.models):
            raise ConfigError(f"{where}: models must list at least two different catalog models")
        if self.strategy == "llm-router":
            if self.router_model is None:
                raise ConfigError(f"{where}: the llm-router strategy needs router_model (a catalog model)")
            return
        if self.signal not in SIGNALS:
            raise ConfigError(f"{where}: signal must be one of {', '.join(SIGNALS)}, not {self.signal!r}")
        if self.signal == "judge" and self.judge is None:
            raise ConfigError(f"{where}: give judge = \"<catalog model>\" or signal = \"logprob\"")
        if self.signal != "judge" and self.judge is not None:
            raise ConfigError(f"{where}: judge is only used with signal = \"judge\"")
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ConfigError(f"{where}: threshold must be in [0, 1] (the confidence scaled to [0, 1])")
        if self.rubric is not None and ("{request}" not in self.rubric or "{answer}" not in self.rubric):
            raise ConfigError(f"{where}: rubric must contain {{request}} and {{answer}}")
        self.escalation_params()

    def escalation_params(self) -> EscalationParams:
        """`LearnedEscalation`'s settings from `escalation` (defaults for the others)."""
        try:
            kinds = {f.name: type_name(f.type) for f in fields(EscalationParams)}
            unknown = sorted(set(self.escalation) - set(kinds))
            if unknown:
                raise ValueError(f"unknown settings {quoted(unknown, kinds)}; known: {sorted(kinds)}")
            settings: dict[str, Any] = {}
            for key, value in self.escalation.items():
                try:
                    settings[key] = typed_value(kinds[key], value)
                except ValueError as exc:
                    raise ValueError(f"{key} {exc}") from None
            return EscalationParams(**settings)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"routers: {self.name!r}: escalation: {exc}") from None

    @property
    def called_models(self) -> tuple[str, ...]:
        """Every catalog model this router may call: its models, its judge, its routing model."""
        extra = tuple(m for m in (self.judge, self.router_model) if m is not None and m not in self.models)
        return self.models + extra

    @classmethod
    def from_mapping(cls, data: Any) -> RouterAlias:
        if not isinstance(data, Mapping):
            raise ConfigError("routers: each [[routers]] entry must be a table")
        name = data.get("name")
        strategy = data.get("strategy")
        if not isinstance(name, str) or not isinstance(strategy, str):
            raise ConfigError("routers: each entry needs a name and a strategy (strings)")
        allowed = _KEYS.get(strategy)
        if allowed is None:
            raise ConfigError(f"routers: {name!r}: strategy must be one of {', '.join(STRATEGIES)}, not "
                              f"{quoted([strategy], STRATEGIES)}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"routers: {name!r}: unknown keys {quoted(unknown, allowed)} for strategy "
                              f"{strategy!r}; known: {sorted(allowed)}")
        models = data.get("models")
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ConfigError(f"routers: {name!r}: models must be a list of catalog model names")
        for key in ("judge", "signal", "rubric", "router_model"):
            if key in data and not isinstance(data[key], str):
                raise ConfigError(f"routers: {name!r}: {key} must be a string")
        threshold = data.get("threshold", DEFAULT_THRESHOLD)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ConfigError(f"routers: {name!r}: threshold must be a number")
        for key in ("escalation", "descriptions"):
            if key in data and not isinstance(data[key], Mapping):
                raise ConfigError(f"routers: {name!r}: {key} must be a table")
        descriptions = dict(data.get("descriptions", {}))
        if not all(isinstance(v, str) for v in descriptions.values()):
            raise ConfigError(f"routers: {name!r}: descriptions must map model names to text")
        return cls(
            name=name,
            strategy=strategy,
            models=tuple(models),
            judge=data.get("judge"),
            signal=data.get("signal", "judge"),
            threshold=float(threshold),
            rubric=data.get("rubric"),
            router_model=data.get("router_model"),
            escalation=dict(data.get("escalation", {})),
            descriptions=descriptions,
        )


def parse_routers(value: Any) -> tuple[RouterAlias, ...]:
    """A list of `[[routers]]` tables → aliases (names unique)."""
    if not isinstance(value, list):
        raise ConfigError("routers: must be a list of [[routers]] tables")
    routers = tuple(RouterAlias.from_mapping(v) for v in value)
    names = [r.name for r in routers]
    if len(set(names)) != len(names):
        raise ConfigError("routers: two [[routers]] have the same name")
    return routers


def check_router_names(routers: Sequence[RouterAlias], catalog_names: Collection[str], bandit_alias: str) -> None:
    """Each alias differs from every catalog name and from the bandit's alias. Raises `ConfigError` naming the
    router. (A model added at run time under a router's name is the recovery's to refuse, saying what to do.)"""
    for r in routers:
        if r.name == bandit_alias:
            raise ConfigError(f"routers: {r.name!r} is the bandit's alias (router_alias); choose another name")
        if r.name in catalog_names:
            raise ConfigError(f"routers: {r.name!r} is also a catalog model's name; choose another name")


def check_router_models(
    routers: Sequence[RouterAlias], catalog_names: Sequence[str], unroutable: Collection[str] = (),
    *, retired: Collection[str] = (),
) -> list[str]:
    """Every model a router calls is in the catalog (`catalog_names`: the active models); every model it answers
    with is routable (`unroutable`: the catalog's `route = false` models, which only judge or route). Raises
    `ConfigError` naming the router and listing the models. A model `retired` at run time (a restart keeps it so)
    is not refused: the router runs without it as it does after the DELETE (it answers with its other models, none
    left: each request a 502; a retired judge or router_model is still called); returned, one line per router, for
    the start to say."""
    known = set(catalog_names)
    said = []
    for r in routers:
        missing = [m for m in r.called_models if m not in known]
        nowhere = [m for m in missing if m not in retired]
        if nowhere:
            raise ConfigError(f"routers: {r.name!r}: not in the catalog: {nowhere}; its models: "
                              f"{', '.join(catalog_names)}")
        if missing:
            answering = [m for m in r.models if m in known]
            said.append(f"routers: {r.name!r}: {missing} retired at run time (DELETE /v1/models), which a restart "
                        f"keeps whatever the file says: it answers with {answering or 'no model (each request a 502)'}"
                        f"{'' if set(missing) <= set(r.models) else ', its judge or router_model still called'} "
                        "until a model of that name is added (POST /v1/models)")
        judges_only = [m for m in r.models if m in unroutable]
        if judges_only:
            raise ConfigError(f"routers: {r.name!r}: models has route = false models {judges_only} (they may only "
                              "be a judge or router_model); set route = true in the catalog or remove them")
        stray = sorted(set(r.descriptions) - set(r.models))
        if stray:
            raise ConfigError(f"routers: {r.name!r}: descriptions for models it does not route to: {stray}")
    return said


def check_routers(
    routers: Sequence[RouterAlias], catalog_names: Sequence[str], bandit_alias: str, unroutable: Collection[str] = ()
) -> None:
    """Both checks against one catalog: `check_router_names`, then `check_router_models`."""
    check_router_names(routers, catalog_names, bandit_alias)
    check_router_models(routers, catalog_names, unroutable)


def alias_clash(name: str, bandit_alias: str, routers: Sequence[RouterAlias]) -> str | None:
    """Why the gateway could never reach a model called `name` (a client's `model = name` means the alias, which
    wins), or None: the name is the bandit's alias or a named router's."""
    if name == bandit_alias:
        return "the name is the gateway's alias for routing (router_alias)"
    if any(r.name == name for r in routers):
        return "the name is a named router's ([[routers]])"
    return None


@dataclass(frozen=True)
class RoutersSettings:
    """Named routers besides the bandit: cascades, learned cascades and LLM routers (`[[routers]]` tables)."""

    routers: tuple[RouterAlias, ...] = setting((), help="named routers a client sends as `model`: [[routers]] "
                                               "tables with name, strategy (cascade, learned-cascade, llm-router), "
                                               "models and judge/signal/threshold or router_model (see docs: "
                                               "cascades); environment: a JSON list of objects")

    def __post_init__(self) -> None:
        check_types(self)
        names = [r.name for r in self.routers]
        if len(set(names)) != len(names):
            raise ConfigError("routers: two [[routers]] have the same name")

    def get(self, name: str) -> RouterAlias | None:
        """The router named `name`, or None."""
        return next((r for r in self.routers if r.name == name), None)
