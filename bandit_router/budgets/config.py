"""The budget configuration: every target (global and per tenant), the guard rails and the controller's step
sizes (`BudgetConfig`), and its table form, the target grammar of `budgets.targets` split into keys::

    [budgets]
    avg_cost_usd = 0.0005
    spend_usd = "200/1d"                      # or a list: ["200/1d", "4000/30d"]
    share = { "gpt-4o" = 0.3, "tag:tier=large" = "30%" }
    latency_p95_s = 3
    fallback_model = "gpt-4o-mini"            # guard rails, step sizes: see `BudgetConfig`
    [budgets.tenants.acme]
    spend_usd = "50/1d"

The same table as JSON is the body of `PUT /v1/budgets` and what the service stores; stored data, which an older
version may have written, loads through `BudgetConfig.from_stored`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from ..catalog import ModelSpec
from ..errors import InvalidInput
from ..hints import did_you_mean
from ..names import check_name
from ..types import reduce_frozen
from .targets import (
    LATENCY_KEY,
    TARGET_KEYS,
    AvgCost,
    Latency,
    Share,
    Spend,
    Target,
    check_positive,
    check_tenant,
    finite_number,
    parse_scoped_target,
    parse_target,
)

log = logging.getLogger("bandit_router.budgets")
_QUIET: ContextVar[bool] = ContextVar("bandit_router_budgets_quiet", default=False)


@contextmanager
def quietly() -> Iterator[None]:
    """Load stored budgets without saying what their loading drops or resets (`say`): to learn only whether they
    load (`log.budget_state.stored_budgets`), leaving the saying to the start that loads them."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


def say(message: str, *args: Any) -> None:
    """A warning about stored budgets, unless they are loaded `quietly`."""
    if not _QUIET.get():
        log.warning(message, *args)


MAX_TENANTS = 1024
"""The most tenants a `[budgets]` table or a `PUT /v1/budgets` body may give targets (the OpenAPI document's
`maxProperties`); stored data is not held to it."""
MAX_SPENDS = 16
"""The most spend targets of one scope (`spend_usd = [...]`)."""
MAX_SHARES = 256
"""The most share targets of one scope (the `share` table and `share:<selector>` keys together)."""


def tenants_once(names: Iterable[Any], where: str, *, stored: bool = False) -> dict[str, Any]:
    """Each written tenant name → the tenant it means; `InvalidInput` when two name one tenant (`5` and `5.0`),
    whose targets would otherwise replace each other.

    `stored`: the names come from stored data (a pacer state, the service's stored targets), which a version
    before `tenant_named` wrote with `5` and `5.0` as two tenants. Refusing it would lose every other target
    with it, so the name written as the tenant's own (`5`) wins and the other is dropped, with a warning."""
    out: dict[str, Any] = {}
    for name in names:
        tenant = check_tenant(name)
        if tenant in out:
            if not stored:
                raise InvalidInput(f"{where}: {out[tenant]!r} and {name!r} are one tenant, {tenant!r} (a number's "
                                   "tenant is its decimal text, an integral one without a fraction): give its targets "
                                   "once")
            kept, dropped = (name, out[tenant]) if name == tenant else (out[tenant], name)
            say("%s: %r and %r were stored as two tenants and are one now, %r: kept the targets of %r, "
                "dropped those of %r", where, out[tenant], name, tenant, kept, dropped)
            name = kept
        out[tenant] = name
    return out


_KIND_ORDER = {"avg_cost": 0, "spend": 1, "share": 2, "latency": 3}


def _check_unique(targets: Iterable[Target], scope: str) -> tuple[Target, ...]:
    """The targets in canonical order (kind, then key), so two configs with the same targets are equal."""
    if isinstance(targets, str):  # read letter by letter: "not a target: 's'"
        raise InvalidInput(f"{scope}: must be a list of targets, not one string {targets!r:.60} "
                           "(BudgetConfig.from_strings([...]) reads targets as text)")
    out = tuple(targets)
    for t in out:
        if not isinstance(t, AvgCost | Spend | Share | Latency):
            raise InvalidInput(f"{scope}: not a target: {t!r}")
    out = tuple(sorted(out, key=lambda t: (_KIND_ORDER[t.kind], t.key)))
    keys = [t.key for t in out]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise InvalidInput(f"{scope}: more than one target for {duplicates}")
    return out


def _targets_from_mapping(
    data: Mapping[str, Any], scope: str, also: Iterable[str] = (), dropped: list[str] | None = None
) -> tuple[Target, ...]:
    """The keys of one scope's table → targets, through `parse_target` (one grammar for both forms); `also`: the
    table's keys that are not targets (suggested for a misspelt key). `dropped`: the table is stored data, whose
    targets an older version took and this one may refuse (`spend_usd=1e-320/1d`): such a target is left out,
    with a warning naming it, and its text appended to `dropped`; the others load."""
    texts: list[str] = []
    for key, value in data.items():
        for part, text in [(value, "")] if dropped is None else _stored_parts(key, value):
            try:
                texts += _target_texts(key, part, scope, also)
            except InvalidInput as exc:
                if dropped is None:
                    raise
                _left_out(scope, text or f"{key}={json.dumps(value, default=repr)}",
                          str(exc).removeprefix(f"{scope}: "), dropped)
    if dropped is None:  # new input; stored data was taken without these limits
        for kind, most in (("spend_usd", MAX_SPENDS), ("share", MAX_SHARES)):
            count = sum(t.startswith(f"{kind}=" if kind == "spend_usd" else "share:") for t in texts)
            if count > most:
                raise InvalidInput(f"{scope}: {count} {kind} targets; at most {most} per scope")
    try:
        if dropped is None:
            return _check_unique((parse_target(t, also=also) for t in texts), scope)
        return _check_unique((t for text in texts if (t := _stored_target(text, scope, dropped)) is not None), scope)
    except InvalidInput as exc:  # `_check_unique`'s names the scope already
        raise InvalidInput(f"{scope}: {str(exc).removeprefix(f'{scope}: ')}") from None


def _stored_parts(key: str, value: Any) -> list[tuple[Any, str]]:
    """A stored key's value split into the parts that load or are refused alone, each with its text for the log
    (empty: the key's): each element of a `spend_usd` list, each selector of a `share` table; any other value
    whole. So one element this version refuses (a newer version's `{"usd": 900, "period": "1mo"}`) leaves out only
    itself, not its siblings."""
    if key == "share" and isinstance(value, Mapping):
        return [({selector: share}, f"share:{selector}={json.dumps(share, default=repr)}")
                for selector, share in value.items()]
    if key == "spend_usd" and isinstance(value, list):
        return [([element], f"spend_usd={json.dumps(element, default=repr)}") for element in value]
    return [(value, "")]


def _target_texts(key: str, value: Any, scope: str, also: Iterable[str]) -> list[str]:
    """One key of a scope's table → its targets' texts (`spend_usd` may list several, `share` is a table)."""
    if key == "share":
        if not isinstance(value, Mapping):
            raise InvalidInput(f"{scope}: share must be a table of selector = max share")
        return [f"share:{sel}={_scalar(v, f'share {sel!r}')}" for sel, v in value.items()]
    if key == "spend_usd" and isinstance(value, list):
        return [f"spend_usd={_scalar(v, key)}" for v in value]
    if not isinstance(value, str | int | float) and key not in TARGET_KEYS and not LATENCY_KEY.fullmatch(key):
        raise InvalidInput(f"{scope}: unknown target {key!r}{did_you_mean(key, (*TARGET_KEYS, *also))}")
    return [f"{key}={_scalar(value, key)}"]


def _stored_target(text: str, scope: str, dropped: list[str]) -> Target | None:
    """`parse_target(text)`, or None (logged, appended to `dropped`) for a stored target this version refuses."""
    try:
        return parse_target(text)
    except InvalidInput as exc:
        _left_out(scope, text.strip(), str(exc).partition("': ")[2], dropped)
        return None


def _left_out(scope: str, text: str, why: str, dropped: list[str]) -> None:
    say("%s: left out the stored target %r, which this version refuses (%s); it stays stored (a version that "
        "takes it paces it again), the other targets keep pacing; a PUT /v1/budgets replaces it", scope, text, why)
    dropped.append(text)


def _scalar(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidInput(f"{what} must be a number or a string, got {value!r}")
    return value if isinstance(value, str) else repr(value)


def _targets_to_mapping(targets: Iterable[Target]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    spends: list[str] = []
    for t in targets:
        if isinstance(t, Share):
            out.setdefault("share", {})[t.selector] = t.max_share
        elif isinstance(t, Spend):
            spends.append(str(t).partition("=")[2])
        elif isinstance(t, AvgCost):
            out["avg_cost_usd"] = t.usd
        else:
            out[t.key] = t.max_s
    if spends:
        out["spend_usd"] = spends[0] if len(spends) == 1 else spends
    return out


@dataclass(frozen=True)
class BudgetConfig:
    """All targets (global and per tenant), the guard rails and the controller's step sizes.

    Global `targets` hold for all traffic together; `tenants[name]` for the requests whose context has
    `tenant = name`. A request is paced by both (the strictest cost multiplier, the sum of the penalties).

    Guard rails (while a spend target's period budget is exhausted): only models whose input and output
    prices are both ≤ `guard_max_usd_per_mtok`; if none of the request's models is, `fallback_model`; if that
    is not among them either, the request's cheapest model by expected cost.

    Steps (see `bandit_router.budgets.pacer`): `cost_step` η in log λ per request-sized overspend;
    `share_step` and `latency_step` in quality points per request. `cost_step = 0` freezes λ at the router's
    default: then only the guard rails act (the hard-cap baseline). λ stays in [`min_cost_weight`,
    `max_cost_weight`] (quality points per USD) and, while it moves, at or above ε / (ĉ_max − ĉ_min) with
    ε = `negligible_penalty` quality points, where decisions stop changing.
    """

    targets: tuple[Target, ...] = ()
    tenants: Mapping[str, tuple[Target, ...]] = field(default_factory=dict)
    fallback_model: str | None = None
    guard_max_usd_per_mtok: float | None = None
    cost_step: float = 0.05
    share_step: float = 0.02
    latency_step: float = 0.02
    min_cost_weight: float = 0.01
    max_cost_weight: float = 1e6
    negligible_penalty: float = 0.01

    __reduce__ = reduce_frozen  # picklable and deep-copyable: `tenants` is read-only

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", _check_unique(self.targets, "global targets"))
        if not isinstance(self.tenants, Mapping):
            raise InvalidInput("tenants must map a tenant name to its targets")
        written = {name: ts for name, ts in self.tenants.items() if ts}
        tenants = {tenant: _check_unique(written[name], f"tenant {name!r}")
                   for tenant, name in tenants_once(written, "tenants").items()}
        object.__setattr__(self, "tenants", MappingProxyType(tenants))
        if self.fallback_model is not None and (not isinstance(self.fallback_model, str) or not self.fallback_model):
            raise InvalidInput("fallback_model must be a model name")
        if self.fallback_model is not None:
            check_name(self.fallback_model, "fallback_model")
        if self.guard_max_usd_per_mtok is not None:
            price = self.guard_max_usd_per_mtok
            if not finite_number(price) or price < 0:
                raise InvalidInput("guard_max_usd_per_mtok must be a finite number >= 0")
            object.__setattr__(self, "guard_max_usd_per_mtok", float(price))
        for name in ("cost_step", "share_step", "latency_step", "negligible_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 10.0:
                raise InvalidInput(f"{name} must be a number in [0, 10], got {value!r}")
            object.__setattr__(self, name, float(value))
        low = check_positive(self.min_cost_weight, "min_cost_weight")
        high = check_positive(self.max_cost_weight, "max_cost_weight")
        if low >= high:
            raise InvalidInput("min_cost_weight must be below max_cost_weight")
        object.__setattr__(self, "min_cost_weight", low)
        object.__setattr__(self, "max_cost_weight", high)

    def targets_for(self, tenant: str | None) -> tuple[Target, ...]:
        """The targets of one scope: the global ones (tenant None) or a tenant's own (empty when it has none)."""
        return self.targets if tenant is None else self.tenants.get(tenant, ())

    def with_targets(self, targets: Iterable[Target], tenant: str | None = None) -> BudgetConfig:
        """A copy where the scope's targets are replaced (an empty list removes a tenant)."""
        if tenant is None:
            return replace(self, targets=tuple(targets))
        tenants = dict(self.tenants)
        tenants[check_tenant(tenant)] = tuple(targets)
        return replace(self, tenants=tenants)

    @classmethod
    def from_strings(cls, texts: Iterable[str], **settings: Any) -> BudgetConfig:
        """Targets in the text grammar (`@tenant:` for a tenant's), e.g. from repeated `--target` options."""
        scoped: dict[str | None, list[Target]] = {}
        for text in texts:
            tenant, target = parse_scoped_target(text)
            scoped.setdefault(tenant, []).append(target)
        tenants = {k: tuple(v) for k, v in scoped.items() if k is not None}
        return cls(targets=tuple(scoped.get(None, ())), tenants=tenants, **settings)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, stored: bool = False) -> BudgetConfig:
        """From a `[budgets]` TOML table or a JSON body (the inverse of `to_mapping`); unknown keys raise.
        `stored`: `data` is what `to_mapping` stored, maybe by an older version (`from_stored`)."""
        return cls.from_stored(data)[0] if stored else cls._from_mapping(data, None)

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> tuple[BudgetConfig, dict[str | None, list[str]]]:
        """What `to_mapping` stored, maybe by a version that took what this one refuses; what it would refuse whole
        is left out, each with a warning, rather than losing every other target with it: two tables of one tenant
        (`5` and `5.0`, before tenant names followed `tenant_of`) keep the one named `5` (`tenants_once`); a
        target this version refuses (`spend_usd=1e-320/1d`) is dropped, and a tenant left without targets with it.
        Returns the config and the dropped targets' texts per scope (None: the global one; else the tenant)."""
        dropped: dict[str | None, list[str]] = {}
        return cls._from_mapping(data, dropped), dropped

    @classmethod
    def _from_mapping(cls, data: Mapping[str, Any], dropped: dict[str | None, list[str]] | None) -> BudgetConfig:
        stored = dropped is not None
        if not isinstance(data, Mapping):
            raise InvalidInput("budgets must be a table")
        settings = {f.name for f in fields(cls)} - {"targets", "tenants"}
        kwargs = {k: v for k, v in data.items() if k in settings}
        tenants_data = data.get("tenants", {})
        if not isinstance(tenants_data, Mapping):
            raise InvalidInput("budgets.tenants must be a table of tenant → targets")
        if not stored and len(tenants_data) > MAX_TENANTS:
            raise InvalidInput(f"budgets: tenants: {len(tenants_data)} tenants; at most {MAX_TENANTS} may have targets")

        def dropped_in(tenant: str | None) -> list[str] | None:
            return None if dropped is None else dropped.setdefault(tenant, [])

        targets = _targets_from_mapping({k: v for k, v in data.items() if k not in settings | {"tenants"}}, "budgets",
                                        sorted(settings | {"tenants"}), dropped_in(None))
        tenants = {}
        for tenant, name in tenants_once(tenants_data, "budgets.tenants", stored=stored).items():
            table = tenants_data[name]
            if not isinstance(table, Mapping):
                raise InvalidInput(f"budgets.tenants.{name} must be a table of targets")
            tenants[tenant] = _targets_from_mapping(table, f"budgets.tenants.{name}", (), dropped_in(tenant))
        if dropped is not None:
            for scope in [scope for scope, texts in dropped.items() if not texts]:
                del dropped[scope]
        return cls(targets=targets, tenants=tenants, **kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """A JSON-able (and TOML-able) form that `from_mapping` turns back into an equal config."""
        out = _targets_to_mapping(self.targets)
        for f in fields(self):
            if f.name not in ("targets", "tenants") and getattr(self, f.name) is not None:
                out[f.name] = getattr(self, f.name)
        if self.tenants:
            out["tenants"] = {name: _targets_to_mapping(ts) for name, ts in self.tenants.items()}
        return out

    def describe(self) -> list[str]:
        """Every target in the text grammar (`@tenant:` prefixed for tenants)."""
        return [str(t) for t in self.targets] + [
            f"@{name}:{t}" for name, ts in self.tenants.items() for t in ts
        ]

    def shares_matching_nothing(self, specs: Iterable[ModelSpec]) -> list[str]:
        """The share targets (text grammar) whose selector picks none of `specs`: a misspelt model or tag, which
        would otherwise be a target that can never bind."""
        models = list(specs)
        scoped = [("", t) for t in self.targets] + [(f"@{n}:", t) for n, ts in self.tenants.items() for t in ts]
        return [f"{prefix}{t}" for prefix, t in scoped
                if isinstance(t, Share) and not any(t.matches_spec(m) for m in models)]
