"""`did you mean …?` for a misspelt name: the configuration loader, the HTTP API's 422s for unknown fields and
the gateway's `bandit_router` extension give the same hint.

Examples:
    >>> did_you_mean("latency_s", ("quality", "latency_ms"))
    ' (did you mean latency_ms?)'
    >>> did_you_mean("colour", ("quality", "latency_ms"))
    ''
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

CUTOFF = 0.75
"""`difflib`'s similarity ratio a known name needs to be suggested (2·matches / total length)."""


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name most like `name` (ratio ≥ `CUTOFF`), else None.

    A name longer than `2·len(k)/CUTOFF − len(k)` cannot reach the ratio with k (2·len(k)/(len(name) + len(k)) is
    the most it can have), so it is not compared: difflib's cost grows with the name's length, and a client could
    otherwise hold the event loop with megabyte-long field names."""
    names = list(known)
    longest = max((len(k) for k in names), default=0)
    if len(name) > 2.0 * longest / CUTOFF - longest:
        return None
    close = difflib.get_close_matches(name, names, n=1, cutoff=CUTOFF)
    return close[0] if close else None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean <closest>?)`, or `` when no known name is close."""
    found = closest(name, known)
    return "" if found is None else f" (did you mean {found}?)"
