"""`graphemes.cut`: a preview never splits a character a reader sees as one; the recent decisions use it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import regex
from service_client import client_factory

from bandit_router.graphemes import cut

E_ACUTE = "e\u0301"  # e + combining acute
FAMILY = "\U0001f469\u200d\U0001f469\u200d\U0001f467"  # 👩‍👩‍👧: three emoji joined by ZWJ
WAVE = "\U0001f44b\U0001f3fd"  # 👋🏽: a skin tone modifier
FLAG_FR, FLAG_DE = "\U0001f1eb\U0001f1f7", "\U0001f1e9\U0001f1ea"
HEART = "\u2764\ufe0f"  # ❤️: a variation selector
HANGUL = "\u1112\u1161\u11ab"  # 한 as conjoining jamo (L V T)
THAI_WATER = "\u0e19\u0e49\u0e33"  # น้ำ: a letter, a tone mark and SARA AM (a SpacingMark, not a mark)


@pytest.mark.parametrize("cluster", [
    E_ACUTE, FAMILY, WAVE, FLAG_FR, HEART, HANGUL, "\r\n", "\ud83d\ude00", "a\u0301\u0302\u0303", THAI_WATER,
    "\u0e81\u0eb3",  # Lao AM
    "\u1100\u1100\u1161", "\u1100\uac00", "\uac00\u11a8",  # Hangul L L V, L LV, LV T (GB6, GB7)
    "\uff76\uff9e",  # ｶﾞ: a halfwidth katakana and its voiced sound mark
    "\u0915\u094d\u0937",  # क्ष: a conjunct (GB9c)
    "\u0600\u0661",  # an Arabic number sign and the digit it prefixes (Prepend)
])
def test_a_cut_inside_a_cluster_moves_to_its_start(cluster: str) -> None:
    """Every cut that falls inside the cluster keeps the text before it, whole, and nothing of the cluster."""
    text = "ab" + cluster + "cd"
    for n in range(3, 2 + len(cluster)):
        assert cut(text, n) == "ab", (cluster, n)
    assert cut(text, 2 + len(cluster)) == "ab" + cluster
    assert cut(text, 2) == "ab"


def test_flags_in_a_row_are_cut_between_pairs_not_inside_one() -> None:
    text = FLAG_FR + FLAG_DE + FLAG_FR
    assert [cut(text, n) for n in range(2, 6)] == [FLAG_FR, FLAG_FR, FLAG_FR + FLAG_DE, FLAG_FR + FLAG_DE]
    assert cut("x" + text, 4) == "x" + FLAG_FR  # the parity counts from the run's start


def test_plain_text_and_short_text_are_cut_where_asked() -> None:
    assert cut("hello world", 5) == "hello"
    assert cut("\x01" * 10, 4) == "\x01" * 4  # control characters are clusters of their own
    assert cut("short", 10) == "short" and cut("", 3) == ""
    assert cut("a" + "\u0301" * 50, 10) == "a" + "\u0301" * 9  # one cluster longer than n: cut inside it


def test_the_recent_decisions_preview_keeps_whole_characters(tmp_path: Path) -> None:
    """A prompt whose 1,000th code point sits inside an emoji sequence was shown with half of it (a lone 👩 and a
    dangling ZWJ), or inside น้ำ (Thai for water, SARA AM cut off); the preview ends before it, then `…`."""
    for make in client_factory(tmp_path / "preview.db", seed=1):
        client = make(store_prompts=True)
        ids = [client.post("/v1/route", json={"prompt": "x" * 998 + cluster + "tail"}).json()["decision_id"]
               for cluster in (FAMILY, THAI_WATER)]
        rows = {row["decision_id"]: row["prompt"] for row in client.get("/v1/stats/recent").json()["decisions"]}
        assert [rows[decision_id] for decision_id in ids] == ["x" * 998 + "…"] * 2


def _reference_cut(text: str, n: int) -> str:
    """`cut` by the `regex` package's `\\X` (every UAX #29 rule)."""
    if len(text) <= n:
        return text
    k = 0
    for match in regex.finditer(r"\X", text):
        if match.end() > n:
            break
        k = match.end()
    return text[:k] if k > 0 else text[:n]


# Pieces of text for every rule `cut` implements; ZWJ only inside an emoji sequence and a virama only after a
# consonant (GB11's emoji check and GB9c's consonant are where `cut` may cut earlier than the rules, by design).
_PIECES = ["a", "\u0301", "\u200c", "\r", "\n", "\x01", "\u00ad", "\u2028", "\ufeff", "\U0001f1eb", "\U0001f1f7",
           "\U0001f469", "\U0001f3fd", "\ufe0f", "\U0001f469\u200d\U0001f4bb", "\u1100", "\u1161", "\u11a8",
           "\uac00", "\uac01", "\ua960", "\ud7b0", "\ud7cb", "\u0e19", "\u0e49", "\u0e33", "\u0eb3", "\u0903",
           "\u102b", "\u1031", "\uff76", "\uff9e", "\uff9f", "\u0600", "\u0d4e", "\U000e0067", "\U000e007f",
           "\u0915", "\u0915\u094d\u0937"]


def test_every_cut_is_the_one_regex_grapheme_clusters_give() -> None:
    """Seeded random texts of the pieces above, cut at every length: the same text as the cut at the last `\\X`
    boundary (2,000 texts, ~13,000 cuts)."""
    rng = random.Random(20261128)
    for _ in range(2000):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 12)))
        for n in range(1, len(text)):
            assert cut(text, n) == _reference_cut(text, n), (ascii(text), n)
