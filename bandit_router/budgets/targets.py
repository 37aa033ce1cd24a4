"""Budget targets and their text grammar (the budget configuration that holds them: `budgets.config`).

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

In a TOML table or a JSON body the same grammar is split into keys (`budgets.config.BudgetConfig.from_mapping`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from ..catalog import ModelSpec
from ..errors import InvalidInput
from ..hints import did_you_mean
from ..names import check_name
from ..types import tenant_named

DURATION_UNITS: Mapping[str, int] = MappingProxyType({"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800})
LATENCY_KEY = re.compile(r"latency_p(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)_s")  # as `_fmt` writes it: 1e-05
MAX_TENANT_LENGTH = 128
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


def finite_number(value: Any) -> bool:
    """A finite int or float, not a bool (an int too large for a float is not: `math.isfinite` overflows on it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_positive(value: float, what: str) -> float:
    if not finite_number(value) or value <= 0:
        raise InvalidInput(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


def _fmt(value: float) -> str:
    """Shortest text that parses back to the same float (`200`, `0.0005`, `1e-05`)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def parse_duration(text: str) -> float:
    """`86400`, `86400s`, `1440m`, `24h`, `1d`, `1w` → seconds (> 0); the unit in either case, except `M`, which
    reads as months as often as minutes."""
    text = text.strip()
    if text.endswith("M"):  # `4000/1M` was 4,000 USD a minute: a monthly budget that never bound
        raise InvalidInput(f"period {text!r}: M is ambiguous (minutes or months?): m for minutes, 30d for a month")
    unit = text[-1:].lower()
    scale = DURATION_UNITS.get(unit)
    number = text[:-1] if scale is not None else text
    try:
        seconds = _number(number, "period") * (scale or 1)
    except InvalidInput:
        raise InvalidInput(f"period {text!r} must be seconds or a number with s, m, h, d or w (86400, 24h, 1d)") \
            from None
    return check_positive(seconds, "period")


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
        object.__setattr__(self, "usd", check_positive(self.usd, "avg_cost_usd"))

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
        object.__setattr__(self, "usd", check_positive(self.usd, "spend_usd"))
        period = check_positive(self.period_s, "spend period")
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
        object.__setattr__(self, "max_s", check_positive(self.max_s, "latency bound"))

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
        match = LATENCY_KEY.fullmatch(key)
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
        return check_tenant(tenant), parse_target(rest)
    return None, parse_target(text)


def check_tenant(name: Any) -> str:
    """A tenant name: the grammar of `bandit_router.names` (it becomes a metrics label and a stored key), as the
    tenant it means (`types.tenant_named`: `5.0` is the number 5.0's tenant, `5`)."""
    return tenant_named(check_name(name, "tenant", MAX_TENANT_LENGTH))
