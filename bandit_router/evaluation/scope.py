"""Which logged decisions an evaluation scores: `Scope(policy, since, until, tenant)`.

Every decision with feedback teaches the replayed candidates, in log order, as it taught the live policy (a service
replays the whole log into a new policy); only the decisions in the scope are scored: decision d is in it when

    (policy is None or d.policy == policy) and (since is None or since ≤ d.created_at)
        and (until is None or d.created_at < until) and (tenant is None or logged_tenant(d's tenant) == tenant)

with `created_at` the decision's Unix time in seconds and its tenant the context's `tenant` value read as the
service reads it (`types.tenant_of`: 5 and 5.0 are tenant "5"). An unset field selects every decision. A tenant
stored as a float beyond ±2⁵³ (which `tenant_of` refuses now; a log written before can hold one) is read as the
service read it then, by its text (`logged_tenant`: 1e17 is tenant "1e+17", as the log's `tenant` column has it),
and `inexact_tenant_warnings` says so.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from ..errors import InvalidInput
from ..types import inexact_tenant, logged_tenant, tenant_named, tenant_of
from .log import LoggedRecord

#: The latest Unix time a scope's bound may be (as the dashboard's time series: year 5138).
MAX_TIME = 1e11


def parse_time(text: str, name: str = "time") -> float:
    """Unix seconds from `text`: a number of seconds, or an ISO 8601 date or date and time (`2026-11-20`,
    `2026-11-20T08:30`, `2026-11-20T08:30:00+01:00`); a time without an offset is UTC. Eight digits that are also
    a date in ISO 8601's basic format (`20261120`) are refused as ambiguous: as seconds they are a time of 1970."""
    date = _basic_date(text)
    if date is not None:
        raise InvalidInput(f"{name}: {text.strip()!r} is ambiguous: Unix seconds ({_iso(float(text))}) or the date "
                           f"{date}; write the date as {date}, or the seconds as {text.strip()}.0")
    try:
        seconds = float(text)
    except ValueError:  # not a number: a date or time (a number out of range is said as such, below)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidInput(f"{name}: expected Unix seconds or an ISO 8601 date or time (2026-11-20, "
                               f"2026-11-20T08:30Z), not {text!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    return _bounded(seconds, name, text)


def _basic_date(text: str) -> str | None:
    """`text` as an ISO 8601 extended date (2026-11-20) when it is eight digits that read as a basic one (20261120)."""
    digits = text.strip()
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return datetime.strptime(digits, "%Y%m%d").date().isoformat()
    except ValueError:
        return None


def _bounded(seconds: float, name: str, text: str | None = None) -> float:
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_TIME):
        given = repr(seconds) if text is None or text.strip() == repr(seconds) else f"{text!r} ({seconds!r} s)"
        raise InvalidInput(f"{name}: a Unix time in seconds from 0 to {MAX_TIME:.0f} (year 5138), not "
                           f"{given}")
    return seconds


def _iso(seconds: float) -> str:
    """UTC in ISO 8601, to the second, or to the microsecond when the time has a fraction (a bound given with one:
    10.2 and 10.7 must not read alike)."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="seconds" if not moment.microsecond else "microseconds").replace("+00:00", "Z")


def inexact_tenant_warnings(logged: Sequence[LoggedRecord], scope: Scope) -> list[str]:
    """With a tenant scope: a warning naming the decisions of `logged` whose tenant is a float beyond ±2⁵³, said how
    they were read (`logged_tenant`) and whether the scope holds them."""
    if scope.tenant is None:
        return []
    inexact = [r for r in logged if inexact_tenant(r.decision.context.attributes.get("tenant"))]
    if not inexact:
        return []
    found = Counter(str(r.decision.context.attributes.get("tenant")) for r in inexact)
    k = len(inexact)
    names = ", ".join(repr(name) for name in sorted(found))
    # in the scope: the tenant and its other bounds (a scope no decision is in was refused before: `none_in_scope`)
    matched = sum(scope.holds(r) for r in inexact)
    said = (f"{matched} of them {'is' if matched == 1 else 'are'} tenant {scope.tenant!r}, in the scope" if matched
            else f"none is tenant {scope.tenant!r} in the scope")
    one = k == 1
    return [f"{k} decision{'' if one else 's'} with feedback {'has' if one else 'have'} a tenant stored as a float "
            f"beyond ±2^53, as the service stored such a tenant before it refused them: read by "
            f"{'its' if one else 'their'} text, the tenant the service gave {'it' if one else 'them'} then ({names}); "
            f"{said}"]


@dataclass(frozen=True)
class Scope:
    """The decisions an evaluation scores (see the module docstring); checks itself when built. `tenant` may be
    given as the service reads one (a number names the tenant of its text: 5 and 5.0 are "5")."""

    policy: str | None = None
    since: float | None = None
    until: float | None = None
    tenant: str | None = None

    def __post_init__(self) -> None:
        if self.policy is not None and (not isinstance(self.policy, str) or not self.policy):
            raise InvalidInput(f"policy must be a live policy's name (a decision's `policy`) or None, got "
                               f"{self.policy!r}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
                raise InvalidInput(f"{name} must be a Unix time in seconds or None, got {value!r}")
            object.__setattr__(self, name, _bounded(float(value), name))
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidInput(f"since ({_iso(self.since)}) must be before until ({_iso(self.until)})")
        if self.tenant is not None:
            if isinstance(self.tenant, bool) or not isinstance(self.tenant, str | numbers.Real):
                raise InvalidInput(f"tenant must be a tenant's name (a string) or None, got {self.tenant!r}")
            name = tenant_named(self.tenant) if isinstance(self.tenant, str) else tenant_of(self.tenant)
            if not name:
                raise InvalidInput("tenant must not be empty")
            object.__setattr__(self, "tenant", name)

    @property
    def everything(self) -> bool:
        """True when every decision is in the scope."""
        return self.policy is None and self.since is None and self.until is None and self.tenant is None

    @property
    def policy_only(self) -> bool:
        """True when no field but `policy` is set (`--policy` alone, or nothing): messages then name the policy."""
        return self.since is None and self.until is None and self.tenant is None

    def holds(self, record: LoggedRecord) -> bool:
        """Whether `record`'s decision is in the scope."""
        d = record.decision
        if self.policy is not None and d.policy != self.policy:
            return False
        if self.since is not None and not d.created_at >= self.since:
            return False
        if self.until is not None and not d.created_at < self.until:
            return False
        return self.tenant is None or logged_tenant(d.context.attributes.get("tenant")) == self.tenant

    def mask(self, records: Sequence[LoggedRecord]) -> np.ndarray:
        """`holds` of each record, as a boolean array."""
        if self.everything:
            return np.ones(len(records), dtype=bool)
        return np.fromiter((self.holds(r) for r in records), dtype=bool, count=len(records))

    def describe(self) -> str:
        """The scope in words (`live policy 'x', since 2026-11-20T00:00:00Z, tenant 'acme'`); "" for everything."""
        parts = [] if self.policy is None else [f"live policy {self.policy!r}"]
        if self.since is not None:
            parts.append(f"since {_iso(self.since)}")
        if self.until is not None:
            parts.append(f"until {_iso(self.until)}")
        if self.tenant is not None:
            parts.append(f"tenant {self.tenant!r}")
        return ", ".join(parts)

    def none_in_scope(self, logged: Sequence[LoggedRecord]) -> str:
        """Why no decision of `logged` (with feedback) is in the scope: what the log holds of each field set."""
        counts = Counter(r.decision.policy for r in logged)
        policies = ", ".join(f"{name} ({n})" for name, n in counts.most_common(8))
        if self.policy_only:
            return (f"policy {self.policy!r}: none of the {len(logged)} decisions with feedback was made by that "
                    f"policy; theirs: {policies}")
        what = [f"none of the {len(logged)} decisions with feedback is in the scope ({self.describe()})"]
        if self.policy is not None:
            what.append(f"their live policies: {policies}")
        if self.since is not None or self.until is not None:
            times = [r.decision.created_at for r in logged]
            what.append(f"they were made from {_iso(min(times))} to {_iso(max(times))}")
        if self.tenant is not None:
            tenants = Counter(logged_tenant(r.decision.context.attributes.get("tenant")) for r in logged)
            spelt = [f"{'(none)' if name is None else repr(name)} ({n})" for name, n in tenants.most_common(8)]
            more = len(tenants) - len(spelt)
            what.append("their tenants: " + ", ".join(spelt) + (f" and {more} more" if more > 0 else ""))
        return "; ".join(what)
