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
import functools
import re
from collections.abc import Iterable

import numpy as np

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
        self._bounds: _Bounds | None = None

    def closest(self, name: str) -> str | None:
        """The known name most like `name` (ratio ≥ `CUTOFF`), else None: `difflib.get_close_matches(name, names,
        n=1, cutoff=CUTOFF)`, the same name.

        Only the known names k whose length lets them reach the ratio are compared: 2·min(len(name), len(k)) /
        (len(name) + len(k)) is the most they can have (difflib's `real_quick_ratio`, checked per length here rather
        than per name). difflib's cost grows with the name's length, and a client could otherwise hold the event
        loop with megabyte-long field names; most words of a long model list are too short to be compared. More
        than `FAST_FROM` of them go to `_Bounds` instead of difflib's loop, and get no hint past `HINTS_UP_TO`
        characters of names."""
        if not isinstance(name, str):
            return None
        size = len(name)
        candidates = [k for length, same in self._of_length.items() if _may_reach(size, length) for k in same]
        if len(candidates) > FAST_FROM and all(isinstance(k, str) for k in self.names):
            if self._bounds is None:
                names, size = tuple(self.names), sum(map(len, self.names))
                if size > HINTS_UP_TO:
                    return None  # no hint: its cost would hold the event loop
                # once per list of names, kept for the next refusal unless it is large
                self._bounds = bounds_of(names) if size <= KEPT_UP_TO else _Bounds(self.names)
            return self._bounds.closest(name)
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


FAST_FROM = 64
"""`Known.closest` compares more candidates than this with `_Bounds` (fewer: difflib's own loop, as fast there)."""
TABLE_UP_TO = 1 << 16
"""`_Bounds` maps characters to the refused name's through a table of at most this many entries (256 KB)."""
BOUNDS_CELLS = 1 << 20
"""`_Bounds` counts at most this many (name, character) cells, and reads at most this many of the names' characters,
at a time for one refused name (8 MB): more (thousands of names and a refused name of hundreds of distinct
characters, or 100,000 names) are counted a block of names after another."""
KEPT_UP_TO = 1 << 20
"""`bounds_of` keeps the index of a list of names of at most this many characters in all (8 bytes each: 8 MB, and
its counts at most 2 MB): a larger one (100,000 names of 128 characters would keep 105 MB, `BOUNDS_KEPT` of them
840 MB) is built for the refusal and dropped."""
HINTS_UP_TO = 1 << 22
"""Against names of more than this many characters in all (4M: 35,000 names of 120) no hint is looked for among
more than `FAST_FROM` candidates: the search reads every character of the names, on the event loop, for each
refusal."""


class _Bounds:
    """`difflib.get_close_matches(name, names, n=1, cutoff=CUTOFF)`'s answer with difflib's ratio computed for a
    few names only. difflib computes, per name k, ratio = 2·M / (|name| + |k|), M the characters of its matching
    blocks, once two upper bounds of it reach the cutoff: `real_quick_ratio` (the lengths) and `quick_ratio`
    (2·|multiset ∩ of their characters| / (|name| + |k|)), a Python loop over k's characters. Against a long
    model list that loop is half the cost, and many names share the characters of model names (`-`, digits,
    `instruct`), so the full ratio runs for dozens of them: 10–25 ms for a typo of one of 2,000 names.

    Here the quick ratios of every name come from one array operation, the same numbers as difflib's: only the
    characters of the refused name count (one it lacks adds nothing to the intersection, and each name's length is
    all the total needs), so the counts are a |names| × (its distinct characters) matrix, built per refused name
    from the names' characters (kept once per refusal; `_columns` maps them), whatever the catalog's alphabet. The
    names are then taken by falling quick ratio, each first bounded by the length ℓ of the longest common
    subsequence (the matching blocks are one: M ≤ ℓ, so 2·ℓ / (|name| + |k|) ≥ ratio; bit-parallel, a few
    big-integer operations per character), and the search stops as soon as a bound is below the best ratio found.
    The best is difflib's: the highest ratio, ties to the greatest name. Past `BOUNDS_CELLS` cells the counts are
    taken a block of names at a time."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.codes = _code_points("".join(names))  # every name's characters, one after the other
        self.lengths = np.fromiter(map(len, names), dtype=np.int64, count=len(names))
        self.rows = np.repeat(np.arange(len(names), dtype=np.int32), self.lengths)  # the name of each character
        self.offsets = np.concatenate(([0], np.cumsum(self.lengths)))  # where each name's characters start
        self.alphabet, self.counts = _character_counts(self.codes, self.rows, len(names))

    def _quick_ratios(self, name: str) -> np.ndarray:
        """difflib's `quick_ratio` of `name` against every name (to the bit: 2.0·matches / total, in float64). From
        the names' character counts when they are kept (`_character_counts`: the columns of `name`'s characters),
        else counted here over blocks of names of at most `BOUNDS_CELLS` cells and characters each."""
        chars, mine = np.unique(_code_points(name), return_counts=True)
        total = self.lengths + len(name)
        if self.counts is not None:
            at = np.minimum(np.searchsorted(self.alphabet, chars), len(self.alphabet) - 1)
            present = self.alphabet[at] == chars  # a character no name has adds nothing
            matches = np.minimum(self.counts[:, at[present]], mine[present]).sum(axis=1)
            return np.where(total > 0, 2.0 * matches / np.maximum(total, 1), 1.0)
        width, count = max(len(chars), 1), len(self.names)
        matches = np.zeros(count, dtype=np.int64)
        start = 0
        while start < count:
            by_characters = int(np.searchsorted(self.offsets, self.offsets[start] + BOUNDS_CELLS, "right")) - 1
            stop = max(start + 1, min(start + BOUNDS_CELLS // width, by_characters, count))
            lo, hi, rows = int(self.offsets[start]), int(self.offsets[stop]), stop - start
            column = self._columns(chars, self.codes[lo:hi])
            cell = (self.rows[lo:hi] - start) * width + column
            cell[column < 0] = rows * width  # a character `name` lacks: one more cell, dropped
            counts = np.bincount(cell, minlength=rows * width + 1)[:-1]
            matches[start:stop] = np.minimum(counts.reshape(rows, width), mine).sum(axis=1)
            start = stop
        return np.where(total > 0, 2.0 * matches / np.maximum(total, 1), 1.0)

    @staticmethod
    def _columns(chars: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Each of `codes`' index in `chars` (sorted, distinct), -1 where it is not there: through a table indexed
        by code point when `chars` are all below `TABLE_UP_TO` (the usual names), else a sorted search (a
        character near U+10FFFF must not size a table)."""
        if not len(chars):
            return np.full(len(codes), -1, dtype=np.int32)
        if chars[-1] < TABLE_UP_TO:
            table = np.full(int(chars[-1]) + 2, -1, dtype=np.int32)  # the last entry: every greater code point
            table[chars] = np.arange(len(chars), dtype=np.int32)
            columns: np.ndarray = table[np.minimum(codes, len(table) - 1)]
            return columns
        column = np.searchsorted(chars, codes).astype(np.int32)
        np.minimum(column, len(chars) - 1, out=column)
        column[chars[column] != codes] = -1
        return column

    def closest(self, name: str) -> str | None:
        """The answer for `name`."""
        quick = self._quick_ratios(name)
        order = np.flatnonzero(quick >= CUTOFF)
        order = order[np.argsort(-quick[order], kind="stable")]
        lcs = _LongestCommon(name)
        matcher = difflib.SequenceMatcher()
        matcher.set_seq2(name)  # as get_close_matches: the name is seq2, each candidate seq1
        best: tuple[float, str] | None = None
        for i in order:
            if best is not None and quick[i] < best[0]:
                break  # no later name can reach the best ratio (nor tie it: its bound is below)
            known = self.names[i]
            total = len(known) + len(name)
            bound = 2.0 * lcs.length(known) / total if total else 1.0
            if bound < CUTOFF or (best is not None and bound < best[0]):
                continue
            matcher.set_seq1(known)
            ratio = matcher.ratio()
            if ratio >= CUTOFF and (best is None or (ratio, known) > best):
                best = (ratio, known)
        return None if best is None else best[1]


COUNTS_CELLS = 1 << 19
"""`_Bounds` keeps each name's count of each character of the names' alphabet when that takes at most this many
cells (2 MB: 2,000 model names over their 35 characters take 70,000); a larger alphabet (CJK names) is
counted per refused name instead, over its own characters only."""


def _character_counts(codes: np.ndarray, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The names' alphabet (sorted distinct code points) and the n × |alphabet| matrix of each name's count of
    each (None past `COUNTS_CELLS` cells)."""
    if not len(codes):
        return codes, None
    if int(codes.max()) < TABLE_UP_TO:  # through a table by code point, as `_Bounds._columns` (no sort)
        seen = np.zeros(int(codes.max()) + 1, dtype=bool)
        seen[codes] = True
        alphabet = np.flatnonzero(seen).astype(codes.dtype)
        if n * len(alphabet) > COUNTS_CELLS:
            return alphabet, None
        column = (np.cumsum(seen) - 1)[codes]
    else:
        alphabet, column = np.unique(codes, return_inverse=True)
        if n * len(alphabet) > COUNTS_CELLS:
            return alphabet, None
    counts = np.bincount(rows.astype(np.int64) * len(alphabet) + column, minlength=n * len(alphabet))
    return alphabet, counts.reshape(n, len(alphabet)).astype(np.int32)


BOUNDS_KEPT = 8
"""How many lists of names `bounds_of` keeps the character index of (a catalog's, its aliases': a handful)."""


@functools.lru_cache(maxsize=BOUNDS_KEPT)
def bounds_of(names: tuple[str, ...]) -> _Bounds:
    """The `_Bounds` of `names` (their characters, lengths and rows: about half of a refusal's hint against 2,000
    names), built once per list and kept for the next refusal. Keyed by the names themselves, in order, so a
    catalog that changes (a model added or retired, another file) is another key and never meets a stale index;
    the `BOUNDS_KEPT` lists used last are kept (hashing and comparing the tuple costs microseconds). Read-only
    once built: threads share it."""
    return _Bounds(list(names))


def _code_points(text: str) -> np.ndarray:
    """`text`'s characters as integers (a lone surrogate too: a name stored by an older version may hold one)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class _LongestCommon:
    """The length of the longest common subsequence of `name` and any string, bit-parallel (Allison and Dix 1986;
    Hyyrö 2004): bit j of V is 1 while name[j] is not yet the end of a longest match; per character c of the other
    string, with U = V ∧ mask(c), V ← (V + U) ∨ (V − U); the answer is the number of 0 bits among |name|."""

    def __init__(self, name: str) -> None:
        self.size = len(name)
        self.all = (1 << self.size) - 1
        self.masks: dict[str, int] = {}
        for j, char in enumerate(name):
            self.masks[char] = self.masks.get(char, 0) | (1 << j)

    def length(self, other: str) -> int:
        v, masks = self.all, self.masks
        for char in other:
            u = v & masks.get(char, 0)
            v = (v + u) | (v - u)
        return self.size - (v & self.all).bit_count()


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


def quoted_few(names: Iterable[str], known: Iterable[str]) -> str:
    """`quoted` of the first `HINTED` distinct `names`, then how many more: a request's `models` may list 1,024
    names of up to 128 characters, each of which a refusal repeated back (131 KB)."""
    unique = list(dict.fromkeys(names))
    more = f" and {len(unique) - HINTED} more" if len(unique) > HINTED else ""
    return quoted(unique[:HINTED], known) + more
