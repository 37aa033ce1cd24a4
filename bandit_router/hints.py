"""`did you mean …?` for a misspelt name: every place that refuses a name it does not know (a policy, a policy's
setting, a model, a configuration or catalog key, an API field, a scenario, an estimator, …) gives the same hint.

Examples:
    >>> did_you_mean("latency_s", ("quality", "latency_ms"))
    ' (did you mean latency_ms?)'
    >>> did_you_mean("colour", ("quality", "latency_ms"))
    ''
    >>> quoted(["alpah", "zeta"], ("alpha", "ridge"))
    "'alpah' (did you mean alpha?), 'zeta'"
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
    if not isinstance(name, str):
        return None
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


HINTED = 5
"""How many names of one refusal `quoted` looks for close names to (a client may send thousands)."""


def quoted(names: Iterable[str], known: Iterable[str]) -> str:
    """The unknown `names`, each quoted (repr), the first `HINTED` followed by their `did_you_mean` among `known`,
    comma-separated."""
    candidates = list(known)
    return ", ".join(f"{name!r}{did_you_mean(name, candidates) if i < HINTED else ''}" for i, name in enumerate(names))
