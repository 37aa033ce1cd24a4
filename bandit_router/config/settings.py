"""`Settings`: the service's configuration as nested, typed sections.

    settings.server     ServerSettings    host, port, workers, logging
    settings.storage    StorageSettings   database file, durability, checkpoints
    settings.routing    RoutingSettings   catalog, policy, shadows, λ and μ
    settings.feedback   FeedbackSettings  reward windows, a second feedback
    settings.budgets    BudgetConfig      budget targets (`bandit_router.budgets`)
    settings.limits     LimitsSettings    body and prompt sizes
    settings.auth       AuthSettings      API keys
    settings.gateway    GatewaySettings   the OpenAI-compatible gateway: upstreams, tries, limits
    settings.judge      JudgeSettings     the LLM judge that scores a sample of the gateway's answers
    settings.named_routers  RoutersSettings  `[[routers]]`: cascades, learned cascades, LLM routers

The configuration file and the environment name every key flatly (`port`, `BANDIT_ROUTER_DB`); so do
`Settings(port=9000, db=...)` and `settings.port`, which reach into the section that owns the key (`KEYS`).
Building is cheap and checks each field; `check()` does what costs: builds the policies and reads the catalog.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_type_hints

from ..budgets import BudgetConfig
from ..catalog import Catalog, ModelSpec, default_catalog, load_catalog
from ..errors import CatalogError, ConfigError, InvalidInput
from ..policies import Policy, check_models, in_folder, make_policy, parse_spec
from ..reward import RewardConfig
from .routers import RoutersSettings, check_router_models, check_router_names
from .sections import (
    AuthSettings,
    FeedbackSettings,
    GatewaySettings,
    JudgeSettings,
    LimitsSettings,
    RoutingSettings,
    ServerSettings,
    StorageSettings,
)


@dataclass(frozen=True, slots=True)
class Key:
    """One settings key: the section that owns it, its type, its help text."""

    section: str
    type: Any
    help: str
    lower: bool = False


SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "storage": StorageSettings,
    "routing": RoutingSettings,
    "feedback": FeedbackSettings,
    "budgets": BudgetConfig,
    "limits": LimitsSettings,
    "auth": AuthSettings,
    "gateway": GatewaySettings,
    "judge": JudgeSettings,
    "named_routers": RoutersSettings,
}
"""Section name → its class, in the order the docs show them."""


def _keys() -> dict[str, Key]:
    keys: dict[str, Key] = {}
    for section, cls in SECTIONS.items():
        if cls is BudgetConfig:  # one key, a table: `[budgets]`
            keys["budgets"] = Key("budgets", BudgetConfig, "budget targets, e.g. {avg_cost_usd = 0.0005, tenants = "
                                  "{acme = {spend_usd = \"50/1d\"}}} (see docs: budgets); PUT /v1/budgets changes "
                                  "them at run time")
            continue
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in ("api_keys", "admin_keys") or f.metadata.get("internal"):  # secrets: from the environment
                continue  # only, never a file key; internal fields: set by the loader
            keys[f.name] = Key(section, hints[f.name], f.metadata["help"], f.metadata.get("lower", False))
    return keys


KEYS: dict[str, Key] = _keys()
"""Every key of the configuration file, in the order of the sections."""
_SECRETS = ("api_keys", "admin_keys")
_INTERNAL = {"folders": "routing"}
"""Fields that are not keys, set flat by the loader: name → section."""


@dataclass(frozen=True, init=False)
class Settings:
    """Everything the service needs; build with `load_settings` (or directly, in tests: flat keys or sections)."""

    server: ServerSettings
    storage: StorageSettings
    routing: RoutingSettings
    feedback: FeedbackSettings
    budgets: BudgetConfig
    limits: LimitsSettings
    auth: AuthSettings
    gateway: GatewaySettings
    judge: JudgeSettings
    named_routers: RoutersSettings

    def __init__(self, **values: Any) -> None:
        """`Settings(port=9000, db=Path("x.db"))` or `Settings(server=ServerSettings(...))`, or both (flat keys
        then change the sections given)."""
        flat: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        sections: dict[str, Any] = {}
        for name, value in values.items():
            if name in SECTIONS:
                if value is not None:
                    sections[name] = _section(name, value)
            elif name in KEYS:
                flat[KEYS[name].section][name] = value
            elif name in _SECRETS:
                flat["auth"][name] = value
            elif name in _INTERNAL:
                flat[_INTERNAL[name]][name] = value
            else:
                raise TypeError(f"Settings got an unknown key {name!r}")
        for name, cls in SECTIONS.items():
            if name == "budgets":
                built = sections.get("budgets", BudgetConfig())
            else:
                base = sections.get(name)
                built = cls(**flat[name]) if base is None else dataclasses.replace(base, **flat[name])
            object.__setattr__(self, name, built)

    def __getattr__(self, name: str) -> Any:
        """A key by its flat name (`settings.port` is `settings.server.port`)."""
        key = KEYS.get(name)
        section = key.section if key is not None else ("auth" if name in _SECRETS else None)
        if section is None or section == "budgets":
            raise AttributeError(name)
        return getattr(object.__getattribute__(self, section), name)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled and deep-copied without the policies `check()` built, a cache that VW's policies make impossible
        to copy ("cannot pickle 'vowpal_wabbit_next._core.Workspace' object"): the copy is not `checked`."""
        return {name: value for name, value in self.__dict__.items() if name != "_checked_policies"}

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` (flat keys or sections) applied (checked again, cheaply)."""
        return Settings(**{name: getattr(self, name) for name in SECTIONS}, **changes)

    def check(self, *, stored_models: bool = False) -> Settings:
        """The checks that cost: build the policy and every shadow, read the catalog file, find the budgets'
        fallback model in the catalog. Raises `ConfigError` naming the key; returns `self`.

        The catalog's models (a routable one, the models a fixed or rules policy names, the budgets' fallback model
        and shares, the judge model, the named routers' models: `check_catalog`) are
        checked against the catalog alone, unless `stored_models`: the service's start, where the models added
        and retired at run time, stored in the log, count too (it runs `check_catalog` on the live catalog,
        `log.catalog`, once it has read them)."""
        routing = self.routing
        policies = self.build_policies()
        twice = sorted(set(parse_spec(routing.policy)[1]) & set(routing.policy_settings))
        if twice:  # `make_policy` would let policy_settings win, silently
            raise ConfigError(f"policy_settings: {', '.join(twice)} {'is' if len(twice) == 1 else 'are'} also set "
                              f"in policy {routing.policy!r}; set each setting in one place")
        catalog = self.load_catalog()  # a missing or malformed catalog file fails now, not at the first request
        check_router_names(self.named_routers.routers, catalog.names, self.gateway.router_alias)
        if not stored_models:
            self.check_catalog(list(catalog), policies=policies)
        if len(catalog) > self.limits.max_models:
            raise ConfigError(f"max_models: the catalog has {len(catalog)} models; max_models is "
                              f"{self.limits.max_models}")
        if self.gateway.router_alias in catalog.names:
            raise ConfigError(f"router_alias: {self.gateway.router_alias!r} is also a catalog model's name")
        days, window = self.storage.retention_days, self.feedback.reward_window_s
        if days is not None and window is not None and days * 86400.0 <= window:
            raise ConfigError(f"retention_days: {days:g} days is not longer than reward_window_s ({window:g} s): "
                              "decisions would be deleted before their reward window closes (no default reward, no "
                              "average learned, later feedback a 404)")
        object.__setattr__(self, "_checked_policies", policies)  # `check_catalog` at the start: built once
        return self

    def check_catalog(
        self, active: Sequence[ModelSpec], retired: Sequence[ModelSpec] = (),
        policies: Sequence[tuple[str, Policy]] | None = None, *, budgets: bool = True,
    ) -> list[str]:
        """The checks of the catalog's models: one is routable, each model a policy, live or shadow, names
        (`fixed:<model>`, a `rules` policy's rules and default) is a routable model of the catalog: `active` or,
        then warned about at start (`PolicySet.warn_about_missing_models`), `retired` at run time; and the models
        the budgets (unless not `budgets`: stored targets replace the file's), the judge and the named routers name
        are `active` or `retired` (`_check_models_named`). Raises `ConfigError` naming the key. Returns what the
        start says about the models named that were retired at run time (one warning each). `check()` runs it on
        the catalog file; the service's start on the live catalog (the catalog with the stored model events
        applied, `log.catalog.live_catalog`). `policies`: those `build_policies` returns; by default those
        `check()` built (only read here: each router builds its own)."""
        routing = self.routing
        key = "models" if routing.catalog is None and routing.models else "catalog"
        if not any(m.route for m in active):  # every POST /v1/route would be a 422
            gone = [m.name for m in retired if m.route]
            stays = (f"; retired at run time, which a restart keeps whatever the file says: {', '.join(gone)} "
                     "(add another routable model to the catalog)") if gone else ""
            raise ConfigError(f"{key}: every model has route = false ({', '.join(m.name for m in active)}): nothing "
                              f"can be routed; set route = true (the default) on at least one model{stays}")
        if policies is None:
            policies = self.__dict__.get("_checked_policies") or self.build_policies()
        for where, policy in policies:  # a router is built
            try:  # without this check (`build_router`): the models the log adds come later
                check_models(policy, [*active, *retired])
            except InvalidInput as exc:
                raise ConfigError(f"{where}: {exc}") from exc
        return self._check_models_named(active, retired, budgets=budgets)

    def _check_models_named(
        self, active: Sequence[ModelSpec], retired: Sequence[ModelSpec], *, budgets: bool = True
    ) -> list[str]:
        """The budgets' `fallback_model` is an active routable model and each share selector picks one; the
        `judge_model` and every model a named router calls are active. One `retired` at run time (a restart keeps it
        so, whatever the file says) is not refused, as a policy's is not: the service runs without it as it does
        after the DELETE, and the returned warnings say how (the fallback: the guard rails take the request's
        cheapest model; a share: it never binds; the judge: still called, its upstream kept; a named router:
        `check_router_models`). A name in neither raises `ConfigError` naming the key and listing the active
        models. `budgets=False`: stored targets replace the file's `[budgets]`, which is not checked."""
        names = [m.name for m in active]
        gone = [m.name for m in retired]
        said: list[str] = []
        fallback = self.budgets.fallback_model if budgets else None
        if fallback is not None and (why := _not_active(fallback, names, gone)) is not None:
            if fallback not in gone:
                raise ConfigError(f"budgets: fallback_model {fallback!r} {why}")
            said.append(f"budgets: fallback_model {fallback!r} {why}: while a budget is exhausted the guard rails "
                        "take the request's cheapest model until a model of that name is added (POST /v1/models)")
        elif fallback is not None and not next(m for m in active if m.name == fallback).route:
            raise ConfigError(f"budgets: fallback_model {fallback!r} has route = false: it is never chosen")
        routable = [m for m in active if m.route]  # what a decision can choose: the budgets' fallback and shares
        unmatched = self.budgets.shares_matching_nothing(routable) if budgets else []
        if unmatched:
            retired_picked = [m.name for m in retired  # those a selector would pick: it was written for them
                              if m.route and len(self.budgets.shares_matching_nothing([*routable, m])) < len(unmatched)]
            nowhere = self.budgets.shares_matching_nothing([*routable, *(m for m in retired if m.route)])
            if nowhere:
                stays = f"; retired at run time: {', '.join(retired_picked)}" if retired_picked else ""
                raise ConfigError(f"budgets: {', '.join(nowhere)}: no active model is picked by that selector "
                                  f"(models with route = false do not count: they are never chosen){stays}; its "
                                  f"routable models: {', '.join(m.name for m in routable)}")
            said.append(f"budgets: {', '.join(unmatched)}: picks only models retired at run time (DELETE "
                        f"/v1/models), which a restart keeps whatever the file says: {', '.join(retired_picked)}; "
                        "the share picks no active model and never binds until a model it picks is added (POST "
                        "/v1/models)")
        judge = self.judge.judge_model
        if judge is not None and (why := _not_active(judge, names, gone)) is not None:
            if judge not in gone:
                raise ConfigError(f"judge_model: {judge!r} {why}")
            said.append(f"judge_model: {judge!r} {why}: the judge goes on calling it (retiring a model stops routing "
                        "to it, not the calls of a judge)")
        said += check_router_models(self.named_routers.routers, names, [m.name for m in active if not m.route],
                                    retired=gone)
        return said

    @property
    def checked(self) -> bool:
        """`check()` has run on these settings (`load_settings` runs it)."""
        return "_checked_policies" in self.__dict__

    def build_policies(self) -> list[tuple[str, Policy]]:
        """The configured policy and every shadow, each with the key that gives it; `ConfigError` naming the key
        for one that cannot be built."""
        where = "policy"
        try:
            policies = [(where, self.build_policy())]
            where = "shadow_policies"
            policies += [(where, self.build_policy(spec)) for spec in self.routing.shadow_policies]
        except InvalidInput as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        return policies

    def build_policy(self, spec: str | None = None) -> Policy:
        """A fresh configured policy (`policy` with `policy_settings`), or the shadow `spec`; a file one names by a
        relative path is read from the folder of the configuration file that gave it (`RoutingSettings.folders`),
        else from the working directory."""
        routing = self.routing
        if spec is not None:
            return make_policy(spec, folder=routing.folders.get("shadow_policies"))
        name, in_spec = parse_spec(routing.policy)
        settings = in_folder(name, routing.policy_settings, routing.folders.get("policy_settings"))  # else cwd
        policy = make_policy(routing.policy, folder=routing.folders.get("policy"), **settings)
        if routing.policy_settings and name != "fixed":  # named with every setting, as a spec string names it:
            given = {**in_spec, **{k: _spec_value(v) for k, v in routing.policy_settings.items()}}  # decisions made
            policy.name = f"{name}:" + ",".join(f"{k}={given[k]}" for k in sorted(given))  # under others: another's
        return policy

    @property
    def auth_enabled(self) -> bool:
        return self.auth.enabled

    def load_catalog(self) -> Catalog:
        """The initial model catalog: the file `catalog`, the inline `models`, or the shipped default."""
        routing = self.routing
        if routing.catalog is not None:
            try:
                return load_catalog(routing.catalog)
            except CatalogError as exc:
                raise ConfigError(f"catalog: {exc}") from exc
        if routing.models:
            try:
                return Catalog(routing.models, source="inline [[models]]")
            except CatalogError as exc:  # e.g. two [[models]] tables with one name
                raise ConfigError(f"models: {exc}") from exc
        return default_catalog()

    def reward_config(self) -> RewardConfig:
        return RewardConfig(cost_weight=self.routing.cost_weight, latency_weight=self.routing.latency_weight)

    def fingerprint_source(self) -> dict[str, Any]:
        """What the learned state depends on: a checkpoint taken under other values is not restored."""
        return {
            "policy": self.routing.policy,
            "policy_settings": dict(sorted(self.routing.policy_settings.items())),
            "catalog": [m.learning_json() for m in self.load_catalog()],
        }

    def flat(self) -> Mapping[str, Any]:
        """Every key by its flat name."""
        return {name: getattr(self, name) for name in KEYS}


def _section(name: str, value: Any) -> Any:
    """`value` when it is section `name`'s object, else `TypeError` saying what to give: `Settings(budgets={…})`
    was taken, and `check()` failed with "'dict' object has no attribute 'fallback_model'"; `Settings(server={…})`
    said "replace() should be called on dataclass instances"."""
    cls = SECTIONS[name]
    if isinstance(value, cls):
        return value
    if cls is BudgetConfig:
        how = ("BudgetConfig.from_mapping({...}) reads a [budgets] table, BudgetConfig.from_strings([...]) targets "
               "as text")
    else:
        example = next(iter(f.name for f in dataclasses.fields(cls) if f.name in KEYS), "key")
        how = f"build one with {cls.__name__}(...), or give its keys flat: Settings({example}=...)"
    article = "an" if cls.__name__[0] in "AEIOU" else "a"
    raise TypeError(f"Settings: {name} must be {article} {cls.__name__}, got {type(value).__name__}; {how}")


def _spec_value(value: Any) -> str:
    """A policy setting as a policy's name shows it (`Settings.build_policy`): a number, boolean or plain string as
    written; a structure (inline rules) or a string a spec cannot hold (with `,` or `=`) by a short digest of its
    JSON, `sha256-<12 hex>`, so that the name stays a spec string of bounded length stored in every decision."""
    if isinstance(value, bool | int | float) or (isinstance(value, str) and not set(value) & {",", "=", ":"}):
        return str(value)
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return "sha256-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _not_active(model: str, active: Sequence[str], retired: Collection[str]) -> str | None:
    """Why `model` is not among the `active` models (None when it is): retired at run time, or in neither."""
    if model in active:
        return None
    why = ("was retired at run time (DELETE /v1/models), which a restart keeps whatever the file says"
           if model in retired else "is not in the catalog")
    return f"{why}; its models: {', '.join(active)}"
