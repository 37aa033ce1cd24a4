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


WORDS_UP_TO = 200
"""The word fallback looks among at most this many known names (a setting's, a key's, a small catalog's): past
that the names are a long model list, where difflib over every word of every name would cost milliseconds per
refused name, and a word of one of hundreds of names is no longer a hint."""


class Known:
    """The known names of one refusal, with what the hints need of them computed once for all the names refused:
    their longest length, and (on first need) each word of the names written with `_` or `-` → the names with it."""

    def __init__(self, known: Iterable[str]) -> None:
        self.names = list(known)
        self._of_length: dict[int, list[str]] = {}
        for known_name in self.names:
            self._of_length.setdefault(len(known_name), []).append(known_name)
        self._words: Known | None = None
        self._with_word: dict[str, set[str]] = {}

    def closest(self, name: str) -> str | None:
        """The known name most like `name` (ratio ≥ `CUTOFF`), else None.

        Only the known names k whose length lets them reach the ratio are compared: 2·min(len(name), len(k)) /
        (len(name) + len(k)) is the most they can have (difflib's `real_quick_ratio`, checked per length here rather
        than per name). difflib's cost grows with the name's length, and a client could otherwise hold the event
        loop with megabyte-long field names; most words of a long model list are too short to be compared."""
        if not isinstance(name, str):
            return None
        size = len(name)
        candidates = [k for length, same in self._of_length.items() if _may_reach(size, length) for k in same]
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=CUTOFF) if candidates else []
        return close[0] if close else None

    def close_names(self, name: str) -> list[str]:
        """`close_names(name, known)`."""
        found = self.closest(name)
        if found is not None:
            return [found]
        if not isinstance(name, str) or re.search(r"[_-]", name) or len(self.names) > WORDS_UP_TO:
            return []  # one word only (`gpt-5` is not close to `gpt`)
        words = self._word_index()
        word = words.closest(name)
        if word is None or len(self._with_word[word]) > MAX_BY_WORD:
            return []
        return sorted(self._with_word[word])

    def _word_index(self) -> Known:
        if self._words is None:
            for known_name in self.names:
                parts = re.split(r"[_-]+", known_name) if isinstance(known_name, str) else []
                for word in parts if len(parts) > 1 else ():
                    if word:  # `_private`'s empty first word is no word
                        self._with_word.setdefault(word, set()).add(known_name)  # once, however often its word
            self._words = Known(self._with_word)
        return self._words


def _may_reach(size: int, length: int) -> bool:
    """Whether names of these lengths can have difflib's ratio `CUTOFF` (as `real_quick_ratio` computes it)."""
    return size + length == 0 or 2.0 * min(size, length) / (size + length) >= CUTOFF


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name most like `name` (ratio ≥ `CUTOFF`), else None (`Known.closest`)."""
    return Known(known).closest(name)


def close_names(name: str, known: Iterable[str]) -> list[str]:
    """The known names to suggest for `name`: its `closest`; else, when `name` is one word close to one word of
    known names written with `_` or `-` (`gama` to the `gamma` of `gamma_scale`: the whole names are too long to
    be close), the names with that word, at most `MAX_BY_WORD` (and none past `WORDS_UP_TO` known names); else
    none."""
    return Known(known).close_names(name)


def did_you_mean(name: str, known: Iterable[str] | Known) -> str:
    """` (did you mean <name>?)` (or `<a> or <b>`: `close_names`), or `` when no known name is close."""
    found = (known if isinstance(known, Known) else Known(known)).close_names(name)
    return f" (did you mean {' or '.join(found)}?)" if found else ""


HINTED = 5
"""How many names of one refusal `quoted` looks for close names to (a client may send thousands)."""


def quoted(names: Iterable[str], known: Iterable[str]) -> str:
    """The unknown `names`, each quoted (repr), the first `HINTED` followed by their `did_you_mean` among `known`,
    comma-separated."""
    candidates = Known(known)  # its word index built once, for all the names
    return ", ".join(f"{name!r}{did_you_mean(name, candidates) if i < HINTED else ''}" for i, name in enumerate(names))
