"""`did you mean …?` for a misspelt name: every place that refuses a name it does not know (a policy, a policy's
setting, a model, a configuration or catalog key, an API field, a scenario, an estimator, …) gives the same hint.

Examples:
    >>> did_you_mean("latency_s", ("quality", "latency_ms"))
    ' (did you mean latency_ms?)'
    >>> did_you_mean("colour", ("quality", "latency_ms"))
    ''
    >>> quoted(["alpah", "zeta"], ("alpha", "ridge"))
    "'alpah' (did you mean alpha?), 'zeta'"
    >>> did_you_mean("gama", ("bits", "gamma_exponent", "gamma_scale"))
    ' (did you mean gamma_exponent or gamma_scale?)'
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

CUTOFF = 0.75
"""`difflib`'s similarity ratio a known name needs to be suggested (2·matches / total length)."""
MAX_BY_WORD = 3
"""A name close to a word of several known names (`gama`: `gamma_scale`, `gamma_exponent`) suggests them all, if
there are at most this many (more is a list, not a hint)."""


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


def close_names(name: str, known: Iterable[str]) -> list[str]:
    """The known names to suggest for `name`: its `closest`; else, when `name` is one word close to one word of
    known names written with `_` or `-` (`gama` to the `gamma` of `gamma_scale`: the whole names are too long to
    be close), the names with that word, at most `MAX_BY_WORD`; else none."""
    names = list(known)
    found = closest(name, names)
    if found is not None:
        return [found]
    if not isinstance(name, str) or re.search(r"[_-]", name):  # one word only (`gpt-5` is not close to `gpt`)
        return []
    with_word: dict[str, list[str]] = {}
    for known_name in names:
        words = re.split(r"[_-]+", known_name) if isinstance(known_name, str) else []
        for word in words if len(words) > 1 else ():
            with_word.setdefault(word, []).append(known_name)
    word = closest(name, with_word)
    if word is None or len(with_word[word]) > MAX_BY_WORD:
        return []
    return sorted(set(with_word[word]))


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean <name>?)` (or `<a> or <b>`: `close_names`), or `` when no known name is close."""
    found = close_names(name, known)
    return f" (did you mean {' or '.join(found)}?)" if found else ""


HINTED = 5
"""How many names of one refusal `quoted` looks for close names to (a client may send thousands)."""


def quoted(names: Iterable[str], known: Iterable[str]) -> str:
    """The unknown `names`, each quoted (repr), the first `HINTED` followed by their `did_you_mean` among `known`,
    comma-separated."""
    candidates = list(known)
    return ", ".join(f"{name!r}{did_you_mean(name, candidates) if i < HINTED else ''}" for i, name in enumerate(names))
