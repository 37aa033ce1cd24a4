"""Cutting text short without splitting a character a reader sees as one (an extended grapheme cluster).

`cut(text, n)` keeps at most `n` code points and moves the cut back to the start of the cluster it falls in, by
the rules of Unicode's extended grapheme clusters (UAX #29), checked at the cut only: no break inside CR LF;
always a break after and before a control character (GB4, GB5); Hangul syllables (GB6-GB8: L × L|V|LV|LVT,
LV|V × V|T, LVT|T × T, with LV the syllables whose (code - 0xAC00) % 28 == 0); no break before an Extend
(combining marks, variation selectors, emoji modifiers, tags, ZWNJ, the halfwidth voiced marks ﾞ ﾟ) or ZWJ (GB9),
before a SpacingMark (GB9a: Mc, and Thai and Lao AM, U+0E33 and U+0EB3: น้ำ), after a Prepend (GB9b); after a
ZWJ (GB11, without its check that an emoji precedes: 👩‍💻); inside a pair of regional indicators (GB12, GB13: the
run's parity); the Indic conjunct rule (GB9c, Unicode 15.1: no break in क्ष, with any letter of the six scripts
with a linker taken for a consonant); and between the two halves of a surrogate pair. GB11 does not check that
an emoji precedes the ZWJ, so a cut there can only be earlier than the rule's. No dependency, and the cost is the
length of the cluster at the cut, not of the text (`tests/test_graphemes.py` checks the cuts against the `regex`
package's `\\X`).
"""

from __future__ import annotations

import unicodedata

ZWJ = "\u200d"
_CONTROLS = frozenset({"Cc", "Zl", "Zp", "Cf", "Cs"})
_MARKS = frozenset({"Mn", "Me"})
_NOT_SPACING = frozenset(  # Mc that are not SpacingMark (GraphemeBreakProperty.txt): a cluster may start there
    [0x102B, 0x102C, 0x1038, 0x1062, 0x1063, 0x1064, *range(0x1067, 0x106E), 0x1083, *range(0x1087, 0x108D),
     0x108F, 0x109A, 0x109B, 0x109C, 0x1A61, 0x1A63, 0x1A64, 0xAA7B, 0xAA7D, 0x11720, 0x11721])
_PREPEND = frozenset(
    [*range(0x0600, 0x0606), 0x06DD, 0x070F, 0x0890, 0x0891, 0x08E2, 0x0D4E, 0x110BD, 0x110CD, 0x111C2, 0x111C3,
     0x1193F, 0x11941, 0x11A3A, *range(0x11A84, 0x11A8A), 0x11D46, 0x11F02])


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
    if "\ud800" <= before <= "\udbff" and "\udc00" <= after <= "\udfff":
        return False
    if before == "\r" and after == "\n":
        return False  # GB3
    if _control(before) or _control(after):
        return True  # GB4, GB5
    hangul = _hangul(before), _hangul(after)
    if hangul in _HANGUL_JOINS:
        return False  # GB6-GB8
    if after == ZWJ or _extends(after) or _spacing(after):
        return False  # GB9, GB9a
    if before == ZWJ or ord(before) in _PREPEND:
        return False  # GB11 (any ZWJ), GB9b
    if _conjunct_consonant(after) and _joins_conjunct(text, i):
        return False  # GB9c
    if _regional(before) and _regional(after):
        run = 0
        while i - 1 - run >= 0 and _regional(text[i - 1 - run]):
            run += 1
        return run % 2 == 0  # an odd run before: `after` completes its flag
    return True


_HANGUL_JOINS = frozenset({("L", "L"), ("L", "V"), ("L", "LV"), ("L", "LVT"), ("LV", "V"), ("V", "V"),
                           ("LV", "T"), ("V", "T"), ("LVT", "T"), ("T", "T")})


_LINKERS = frozenset("\u094d\u09cd\u0acd\u0b4d\u0c4d\u0d4d")  # the viramas of InCB=Linker
_CONJUNCT_BLOCKS = ((0x0900, 0x097F), (0x0980, 0x09FF), (0x0A80, 0x0AFF), (0x0B00, 0x0B7F), (0x0C00, 0x0C7F),
                    (0x0D00, 0x0D7F))  # Devanagari, Bengali, Gujarati, Oriya, Telugu, Malayalam


def _conjunct_consonant(char: str) -> bool:
    """InCB=Consonant, approximately: a letter (Lo) of a script with a linker (an independent vowel counts too,
    so the cut can only come earlier)."""
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _CONJUNCT_BLOCKS) and unicodedata.category(char) == "Lo"


def _joins_conjunct(text: str, i: int) -> bool:
    """GB9c before `text[i]`: consonant [Extend Linker]* Linker [Extend Linker]* ends at `i` (the marks before `i`
    are read once more by `cut`'s walk back, so the cost stays linear)."""
    j, linked = i - 1, False
    while j >= 0 and (text[j] in _LINKERS or text[j] == ZWJ or _extends(text[j])):
        linked = linked or text[j] in _LINKERS
        j -= 1
    return linked and j >= 0 and _conjunct_consonant(text[j])


def _hangul(char: str) -> str:
    """The Hangul class of `char` (GB6-GB8): L (leading jamo), V (vowel), T (trailing), LV, LVT, or ""."""
    code = ord(char)
    if 0x1100 <= code <= 0x115F or 0xA960 <= code <= 0xA97C:
        return "L"
    if 0x1160 <= code <= 0x11A7 or 0xD7B0 <= code <= 0xD7C6:
        return "V"
    if 0x11A8 <= code <= 0x11FF or 0xD7CB <= code <= 0xD7FB:
        return "T"
    if 0xAC00 <= code <= 0xD7A3:
        return "LV" if (code - 0xAC00) % 28 == 0 else "LVT"
    return ""


def _control(char: str) -> bool:
    """GB4/GB5's Control, CR or LF: control and format characters, line and paragraph separators, surrogates,
    but not ZWJ, ZWNJ, the tags (Extend) or the prepended concatenation marks (Prepend)."""
    code = ord(char)
    if char in "\u200c\u200d" or 0xE0020 <= code <= 0xE007F or code in _PREPEND:
        return False
    return unicodedata.category(char) in _CONTROLS


def _extends(char: str) -> bool:
    """Extend (never a cluster's start): marks, ZWNJ, emoji modifiers, tags, the halfwidth voiced marks."""
    code = ord(char)
    return (
        char == "\u200c"
        or 0x1F3FB <= code <= 0x1F3FF  # emoji skin tone modifiers
        or 0xE0020 <= code <= 0xE007F  # tags (subdivision flags)
        or code in (0xFF9E, 0xFF9F)  # halfwidth katakana voiced and semi-voiced sound marks: ｶﾞ
        or unicodedata.category(char) in _MARKS  # variation selectors are Mn
    )


def _spacing(char: str) -> bool:
    """SpacingMark (GB9a): Mc but a few Myanmar, Tai Tham and Ahom ones, and Thai and Lao AM."""
    code = ord(char)
    return code in (0x0E33, 0x0EB3) or (unicodedata.category(char) == "Mc" and code not in _NOT_SPACING)


def _regional(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"
