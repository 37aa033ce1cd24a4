"""Cutting text short without splitting a character a reader sees as one (a grapheme cluster, approximately).

`cut(text, n)` keeps at most `n` code points and moves the cut back to the start of the cluster it falls in,
by the rules of Unicode's extended grapheme clusters (UAX #29) that a preview meets, checked at the cut only:
no break before a combining mark, a spacing mark, a variation selector, an emoji modifier, a tag character,
ZWJ or ZWNJ (Extend, SpacingMark, ZWJ), after a ZWJ (GB11: 👩‍💻), inside a CR LF, inside a pair of regional
indicators (a flag: the run's parity), before a Hangul vowel or final jamo, or between the two halves of a
surrogate pair. Prepend characters and Indic conjunct rules are left out (rare in prompts); no dependency, and
the cost is the length of the cluster at the cut, not of the text.
"""

from __future__ import annotations

import unicodedata

_MARKS = frozenset({"Mn", "Me", "Mc"})
ZWJ = "\u200d"


def cut(text: str, n: int) -> str:
    """`text[:k]` for the largest `k <= n` that is a cluster boundary; `text[:n]` when the cluster at `n` starts
    at 0 (one cluster longer than `n`: cut inside it rather than show nothing)."""
    if len(text) <= n:
        return text
    k = n
    while k > 0 and not _breaks(text, k):
        k -= 1
    return text[:k] if k > 0 else text[:n]


def _breaks(text: str, i: int) -> bool:
    """Whether a cluster may end between `text[i - 1]` and `text[i]` (0 < i < len(text))."""
    before, after = text[i - 1], text[i]
    if before == ZWJ or (before == "\r" and after == "\n"):
        return False
    if _extends(after):
        return False
    if "\ud800" <= before <= "\udbff" and "\udc00" <= after <= "\udfff":
        return False
    if _regional(before) and _regional(after):
        run = 0
        while i - 1 - run >= 0 and _regional(text[i - 1 - run]):
            run += 1
        return run % 2 == 0  # an odd run before: `after` completes its flag
    return True


def _extends(char: str) -> bool:
    """Never a cluster's start: marks, ZWJ and ZWNJ, emoji modifiers, tags, Hangul vowel and final jamo."""
    code = ord(char)
    return (
        char in "\u200c\u200d"
        or 0x1F3FB <= code <= 0x1F3FF  # emoji skin tone modifiers
        or 0xE0020 <= code <= 0xE007F  # tags (subdivision flags)
        or 0x1160 <= code <= 0x11FF  # Hangul jungseong and jongseong (V, T)
        or 0xD7B0 <= code <= 0xD7FF  # their extended blocks
        or unicodedata.category(char) in _MARKS  # variation selectors are Mn
    )


def _regional(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"
