"""Budget targets, their text grammar and the budget configuration (global and per tenant).

One target per string::

    avg_cost_usd=0.0005            mean cost per request ≤ 0.0005 USD
    spend_usd=200/1d               spend ≤ 200 USD per day (period: a number of seconds, or s|m|h|d|w)
    spend_usd=200/86400            the same, the period in seconds (at least 0.001)
    share:gpt-4o=0.3               at most 30 % of the decisions go to gpt-4o (also `=30%`)
    share:tag:tier=large=0.3       at most 30 % go to models tagged tier=large (`share:tier=large=0.3` too)
    latency_p95_s=3                the 95th percentile of latency ≤ 3 s (any percentile in (0, 100))
    @acme:spend_usd=50/1d          a target of tenant `acme` (the request context's `tenant`)

A share selector that contains `=` is a tag (`key=value`, optional `tag:` prefix); anything else is a model
name. The last `=` separates the value, so tag values may not contain `=`. `str(target)` is the canonical
form and parses back to an equal target.

In a TOML table or a JSON body (see `BudgetConfig.from_mapping`) the same grammar is split into keys::

    [budgets]
    avg_cost_usd = 0.0005
    spend_usd = "200/1d"                      # or a list: ["200/1d", "4000/30d"]
    share = { "gpt-4o" = 0.3, "tag:tier=large" = "30%" }
    latency_p95_s = 3
    fallback_model = "gpt-4o-mini"            # guard rails, step sizes: see `BudgetConfig`
    [budgets.tenants.acme]
    spend_usd = "50/1d"
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, ClassVar

from ..catalog import ModelSpec
from ..errors import InvalidInput
from ..hints import did_you_mean
from ..names import check_name
from ..types import tenant_named

log = logging.getLogger("bandit_router.budgets")

DURATION_UNITS: Mapping[str, int] = MappingProxyType({"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800})
_LATENCY_KEY = re.compile(r"latency_p(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)_s")  # as `_fmt` writes it: 1e-05
MAX_TENANT_LENGTH = 128
MAX_TENANTS = 1024
"""The most tenants a `[budgets]` table or a `PUT /v1/budgets` body may give targets (the OpenAPI document's
`maxProperties`); stored data is not held to it."""
MAX_SPENDS = 16
"""The most spend targets of one scope (`spend_usd = [...]`)."""
MAX_SHARES = 256
"""The most share targets of one scope (the `share` table and `share:<selector>` keys together)."""
MIN_PERIOD_S = 0.001
"""The shortest spend period, a millisecond: periods are numbered floor(t / P), which a tiny P overflows; an older
version took any positive period, so a stored one of half a second still loads."""


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise InvalidInput(f"{what} must be finite, got {text!r}")
    return value


def _finite_number(value: Any) -> bool:
    """A finite int or float, not a bool (an int too large for a float is not: `math.isfinite` overflows on it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_positive(value: float, what: str) -> float:
    if not _finite_number(value) or value <= 0:
        raise InvalidInput(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


def _fmt(value: float) -> str:
    """Shortest text that parses back to the same float (`200`, `0.0005`, `1e-05`)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def parse_duration(text: str) -> float:
    """`86400`, `86400s`, `1440m`, `24h`, `1d`, `1w` → seconds (> 0)."""
    text = text.strip()
    unit = text[-1:].lower()
    scale = DURATION_UNITS.get(unit)
    number = text[:-1] if scale is not None else text
    try:
        seconds = _number(number, "period") * (scale or 1)
    except InvalidInput:
        raise InvalidInput(f"period {text!r} must be seconds or a number with s, m, h, d or w (86400, 24h, 1d)") \
            from None
    return _check_positive(seconds, "period")


def format_duration(seconds: float) -> str:
    """Seconds → the largest unit that divides them exactly (`86400` → `1d`, `90` → `90s`)."""
    for unit in ("w", "d", "h", "m"):
        count = seconds / DURATION_UNITS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{_fmt(seconds)}s"


def _fraction(text: str, what: str) -> float:
    text = text.strip()
    value = _number(text[:-1], what) / 100 if text.endswith("%") else _number(text, what)
    if not 0.0 <= value <= 1.0:
        raise InvalidInput(f"{what} must be in [0, 1] (or 0%–100%), got {text!r}")
    return value


@dataclass(frozen=True)
class AvgCost:
    """Mean cost per request ≤ `usd`, over the scope's requests since the target was set."""

    usd: float
    kind: ClassVar[str] = "avg_cost"

    def __post_init__(self) -> None:
        object.__setattr__(self, "usd", _check_positive(self.usd, "avg_cost_usd"))

    @property
    def key(self) -> str:
        """Identity within a scope: changing the value of a target with the same key retargets it."""
        return "avg_cost_usd"

    def __str__(self) -> str:
        return f"avg_cost_usd={_fmt(self.usd)}"


@dataclass(frozen=True)
class Spend:
    """Spend ≤ `usd` in each period of `period_s` seconds; periods start at multiples of `period_s` on the
    pacer's clock (Unix time by default: `1d` periods start at 00:00 UTC)."""

    usd: float
    period_s: float
    kind: ClassVar[str] = "spend"

    def __post_init__(self) -> None:
        object.__setattr__(self, "usd", _check_positive(self.usd, "spend_usd"))
        period = _check_positive(self.period_s, "spend period")
        if period < MIN_PERIOD_S:  # periods are numbered floor(t / P): a tiny P overflows that
            raise InvalidInput(f"spend period must be at least {MIN_PERIOD_S:g} s, got {_fmt(period)} s")
        if not math.isfinite(self.usd / period):  # the pacer's plan runs at B/P USD a second
            raise InvalidInput("the rate B/P (USD a second) overflows a float: a smaller amount or a longer period")
        if self.usd / period == 0.0 or self.usd * 1e-6 == 0.0:  # the pacer divides by B·10⁻⁶ and by B/P·gap
            raise InvalidInput(f"spend_usd={_fmt(self.usd)} is too small for a float: its rate B/P or B·10⁻⁶ "
                               "underflows to 0 (a larger amount or a shorter period)")
        object.__setattr__(self, "period_s", period)

    @property
    def rate(self) -> float:
        """The plan's spend rate r = B / P in USD per second."""
        return self.usd / self.period_s

    @property
    def key(self) -> str:
        return f"spend_usd/{format_duration(self.period_s)}"

    def __str__(self) -> str:
        return f"spend_usd={_fmt(self.usd)}/{format_duration(self.period_s)}"


@dataclass(frozen=True)
class Share:
    """At most `max_share` of the scope's decisions go to the models `selector` picks: one model name, or every
    model with a tag (`tag:key=value`). `max_share = 0` removes those models from the choice."""

    selector: str
    max_share: float
    kind: ClassVar[str] = "share"

    def __post_init__(self) -> None:
        if not isinstance(self.selector, str) or not self.selector.strip():
            raise InvalidInput("a share target needs a model name or tag:key=value")
        selector = self.selector.strip()
        if "=" in selector:
            key, _, value = selector.removeprefix("tag:").partition("=")
            if not key or not value or "=" in value or any(c.isspace() for c in key + value):
                raise InvalidInput(f"share selector {selector!r}: a tag selector is tag:key=value")
            check_name(key, "share selector: tag key")
            check_name(value, "share selector: tag value")
            selector = f"tag:{key}={value}"
        elif any(c.isspace() for c in selector) or selector.startswith("tag:"):
            raise InvalidInput(f"share selector {selector!r}: a model name (no spaces) or tag:key=value")
        else:
            check_name(selector, "share selector: model name")
        object.__setattr__(self, "selector", selector)
        share = self.max_share
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 <= share <= 1.0:
            raise InvalidInput(f"max share for {selector!r} must be in [0, 1], got {share!r}")
        object.__setattr__(self, "max_share", float(share))

    @property
    def tag(self) -> tuple[str, str] | None:
        """(key, value) for a tag selector, None for a model name."""
        if not self.selector.startswith("tag:"):
            return None
        key, _, value = self.selector[4:].partition("=")
        return key, value

    def matches(self, name: str, tags: Mapping[str, str]) -> bool:
        tag = self.tag
        return name == self.selector if tag is None else tags.get(tag[0]) == tag[1]

    def matches_spec(self, spec: ModelSpec) -> bool:
        return self.matches(spec.name, spec.tags)

    @property
    def key(self) -> str:
        return f"share:{self.selector}"

    def __str__(self) -> str:
        return f"share:{self.selector}={_fmt(self.max_share)}"


@dataclass(frozen=True)
class Latency:
    """The `percentile`-th percentile of reported latency ≤ `max_s`, i.e. P(latency > max_s) ≤ 1 − pct/100."""

    percentile: float
    max_s: float
    kind: ClassVar[str] = "latency"

    def __post_init__(self) -> None:
        pct = self.percentile
        if isinstance(pct, bool) or not isinstance(pct, int | float) or not 0.0 < pct < 100.0:
            raise InvalidInput(f"latency percentile must be in (0, 100), got {pct!r}")
        object.__setattr__(self, "percentile", float(pct))
        object.__setattr__(self, "max_s", _check_positive(self.max_s, "latency bound"))

    @property
    def allowed_over(self) -> float:
        """The share of requests that may be slower than `max_s`: 1 − percentile/100."""
        return 1.0 - self.percentile / 100.0

    @property
    def key(self) -> str:
        return f"latency_p{_fmt(self.percentile)}_s"

    def __str__(self) -> str:
        return f"{self.key}={_fmt(self.max_s)}"


Target = AvgCost | Spend | Share | Latency
COST_TARGETS = (AvgCost, Spend)


TARGET_KEYS = ("avg_cost_usd", "spend_usd", "share", "latency_p95_s")
"""The target keys a misspelt one is compared with (`did you mean …?`)."""


def parse_target(text: str, *, also: Iterable[str] = ()) -> Target:
    """One target from its text form (see the module docstring); raises `InvalidInput` naming the text, with a
    `did you mean` among the target keys and `also` (the other keys of a `[budgets]` table) for an unknown key."""
    if not isinstance(text, str):
        raise InvalidInput(f"a target must be a string, got {text!r}")
    text = text.strip()
    try:
        if text.startswith("share:"):
            selector, eq, value = text[len("share:") :].rpartition("=")
            if not eq or not selector:
                raise InvalidInput("expected share:<model or tag:key=value>=<fraction>")
            return Share(selector, _fraction(value, "max share"))
        key, eq, value = text.partition("=")
        if not eq:
            raise InvalidInput("expected key=value")
        if key == "avg_cost_usd":
            return AvgCost(_number(value, "avg_cost_usd"))
        if key == "spend_usd":
            usd, slash, period = value.partition("/")
            if not slash:
                raise InvalidInput("expected spend_usd=<USD>/<period>, e.g. spend_usd=200/1d")
            return Spend(_number(usd, "spend_usd"), parse_duration(period))
        match = _LATENCY_KEY.fullmatch(key)
        if match:
            return Latency(float(match.group(1)), _number(value, key))
        raise InvalidInput(
            f"unknown target {key!r}{did_you_mean(key, (*TARGET_KEYS, *also))}; known: avg_cost_usd=, "
            "spend_usd=<USD>/<period>, share:<selector>=, "
            "latency_p<percentile>_s="
        )
    except InvalidInput as exc:
        raise InvalidInput(f"target {text!r}: {exc}") from None


def parse_scoped_target(text: str) -> tuple[str | None, Target]:
    """`@tenant:<target>` → (tenant, target); a plain target → (None, target), which applies to all traffic."""
    if isinstance(text, str) and text.strip().startswith("@"):
        tenant, colon, rest = text.strip()[1:].partition(":")
        if not colon or not tenant:
            raise InvalidInput(f"target {text!r}: expected @<tenant>:<target>")
        return _check_tenant(tenant), parse_target(rest)
    return None, parse_target(text)


def _check_tenant(name: Any) -> str:
    """A tenant name: the grammar of `bandit_router.names` (it becomes a metrics label and a stored key), as the
    tenant it means (`types.tenant_named`: `5.0` is the number 5.0's tenant, `5`)."""
    return tenant_named(check_name(name, "tenant", MAX_TENANT_LENGTH))


def tenants_once(names: Iterable[Any], where: str, *, stored: bool = False) -> dict[str, Any]:
    """Each written tenant name → the tenant it means; `InvalidInput` when two name one tenant (`5` and `5.0`),
    whose targets would otherwise replace each other.

    `stored`: the names come from stored data (a pacer state, the service's stored targets), which a version
    before `tenant_named` wrote with `5` and `5.0` as two tenants. Refusing it would lose every other target
    with it, so the name written as the tenant's own (`5`) wins and the other is dropped, with a warning."""
    out: dict[str, Any] = {}
    for name in names:
        tenant = _check_tenant(name)
        if tenant in out:
            if not stored:
                raise InvalidInput(f"{where}: {out[tenant]!r} and {name!r} are one tenant, {tenant!r} (a number's "
                                   "tenant is its decimal text, an integral one without a fraction): give its targets "
                                   "once")
            kept, dropped = (name, out[tenant]) if name == tenant else (out[tenant], name)
            log.warning("%s: %r and %r were stored as two tenants and are one now, %r: kept the targets of %r, "
                        "dropped those of %r", where, out[tenant], name, tenant, kept, dropped)
            name = kept
        out[tenant] = name
    return out


_KIND_ORDER = {"avg_cost": 0, "spend": 1, "share": 2, "latency": 3}


def _check_unique(targets: Iterable[Target], scope: str) -> tuple[Target, ...]:
    """The targets in canonical order (kind, then key), so two configs with the same targets are equal."""
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
        if key == "share":
            if not isinstance(value, Mapping):
                raise InvalidInput(f"{scope}: share must be a table of selector = max share")
            texts += [f"share:{sel}={_scalar(v, f'share {sel!r}')}" for sel, v in value.items()]
        elif key == "spend_usd" and isinstance(value, list):
            texts += [f"spend_usd={_scalar(v, key)}" for v in value]
        else:
            if not isinstance(value, str | int | float) and key not in TARGET_KEYS and not _LATENCY_KEY.fullmatch(key):
                raise InvalidInput(f"{scope}: unknown target {key!r}{did_you_mean(key, (*TARGET_KEYS, *also))}")
            texts.append(f"{key}={_scalar(value, key)}")
    if dropped is None:  # new input; stored data was taken without these limits
        for kind, most in (("spend_usd", MAX_SPENDS), ("share", MAX_SHARES)):
            count = sum(t.startswith(f"{kind}=" if kind == "spend_usd" else "share:") for t in texts)
            if count > most:
                raise InvalidInput(f"{scope}: {count} {kind} targets; at most {most} per scope")
    try:
        if dropped is None:
            return _check_unique((parse_target(t, also=also) for t in texts), scope)
        return _check_unique((t for text in texts if (t := _stored_target(text, scope, dropped)) is not None), scope)
    except InvalidInput as exc:
        raise InvalidInput(f"{scope}: {exc}") from None


def _stored_target(text: str, scope: str, dropped: list[str]) -> Target | None:
    """`parse_target(text)`, or None (logged, appended to `dropped`) for a stored target this version refuses."""
    try:
        return parse_target(text)
    except InvalidInput as exc:
        log.warning("%s: dropped the stored target %r, which this version refuses (%s); the other targets keep "
                    "pacing; PUT /v1/budgets to set it again", scope, text.strip(), str(exc).partition("': ")[2])
        dropped.append(text.strip())
        return None


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
            if not _finite_number(price) or price < 0:
                raise InvalidInput("guard_max_usd_per_mtok must be a finite number >= 0")
            object.__setattr__(self, "guard_max_usd_per_mtok", float(price))
        for name in ("cost_step", "share_step", "latency_step", "negligible_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 10.0:
                raise InvalidInput(f"{name} must be a number in [0, 10], got {value!r}")
            object.__setattr__(self, name, float(value))
        low = _check_positive(self.min_cost_weight, "min_cost_weight")
        high = _check_positive(self.max_cost_weight, "max_cost_weight")
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
        tenants[_check_tenant(tenant)] = tuple(targets)
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
