"""`graphemes.cut`: a preview never splits a character a reader sees as one; the recent decisions use it."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_client import client_factory

from bandit_router.graphemes import cut

E_ACUTE = "e\u0301"  # e + combining acute
FAMILY = "\U0001f469\u200d\U0001f469\u200d\U0001f467"  # 👩‍👩‍👧: three emoji joined by ZWJ
WAVE = "\U0001f44b\U0001f3fd"  # 👋🏽: a skin tone modifier
FLAG_FR, FLAG_DE = "\U0001f1eb\U0001f1f7", "\U0001f1e9\U0001f1ea"
HEART = "\u2764\ufe0f"  # ❤️: a variation selector
HANGUL = "\u1112\u1161\u11ab"  # 한 as conjoining jamo (L V T)


@pytest.mark.parametrize("cluster", [E_ACUTE, FAMILY, WAVE, FLAG_FR, HEART, HANGUL, "\r\n", "\ud83d\ude00",
                                     "a\u0301\u0302\u0303"])
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
    dangling ZWJ); the preview ends before the sequence, then `…`."""
    for make in client_factory(tmp_path / "preview.db", seed=1):
        client = make(store_prompts=True)
        prompt = "x" * 998 + FAMILY + "tail"
        decision_id = client.post("/v1/route", json={"prompt": prompt}).json()["decision_id"]
        rows = {row["decision_id"]: row["prompt"] for row in client.get("/v1/stats/recent").json()["decisions"]}
        assert rows[decision_id] == "x" * 998 + "…"
