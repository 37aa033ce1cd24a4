"""Confidence signals: how sure a cascade is of an answer, as a number in [0, 1] or None ("not confident").

- **judge**: a catalog model reads the question and the answer with a rubric (`JUDGE_RUBRIC`) and replies with
  a score from 1 to 10. The first number in its reply is the score (`parse_judge_score`), clipped to [1, 10]
  and scaled to [0, 1] as (score − 1)/9; a reply without a number gives None, which a threshold treats as
  "not confident" (escalate).
- **logprob**: the answering model's own token log-probabilities (when its upstream returns them):
  `mean` → exp(mean log p) (the geometric mean of the token probabilities), `min` → exp(min log p) (the least
  likely token). No log-probs → None.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

JUDGE_RUBRIC = (
    "You grade an AI assistant's answer to a user's request.\n"
    "Score it from 1 to 10: 10 = fully correct, complete and helpful; 5 = partly correct or incomplete; "
    "1 = wrong, harmful or off-topic.\n"
    "Reply with the score as a number first, then at most one short sentence.\n\n"
    "[Request]\n{request}\n\n[Answer]\n{answer}\n"
)
"""The default rubric; `{request}` and `{answer}` are filled in (each cut to `MAX_JUDGE_CHARS`: the request keeps its
start and its end, where the latest question is; the answer its start)."""

MAX_JUDGE_CHARS = 12_000
SIGNALS = ("judge", "logprob", "logprob-min")
"""`logprob` is the mean over the answer's tokens, `logprob-min` the least likely token."""

_NUMBER = re.compile(r"(?<![A-Za-z0-9_.])(?<![A-Za-z0-9_.][-+])([-+]?[0-9]+(?:\.[0-9]+)?)")
"""A number in ASCII digits, with its sign, not glued to a Latin word or a name (`v2`, `gpt-4`, `1.5` read from
`.5`); other scripts may touch it (`评分8分` is 8), as they did before the rule knew names."""


_SLOTS = re.compile(r"\{(request|answer)\}")


def judge_prompt(request: str, answer: str, rubric: str = JUDGE_RUBRIC) -> str:
    """The judge's user message for one (request, answer): the rubric's slots filled in one pass, so that a
    `{answer}` written in the request stays text."""
    shown = {"request": excerpt(request, MAX_JUDGE_CHARS), "answer": answer[:MAX_JUDGE_CHARS]}
    return _SLOTS.sub(lambda slot: shown[slot.group(1)], rubric)


def excerpt(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters keeping both ends: its first quarter (a system prompt's instructions)
    and the rest from its end (the latest question, which the whole request leads up to)."""
    if len(text) <= limit:
        return text
    head = limit // 4
    return f"{text[:head]}\n[…]\n{text[len(text) - (limit - head):]}"


def parse_judge_score(reply: str | None) -> float | None:
    """The first number of `reply` (signed; one glued to a word or a name, as in `gpt-4`, does not count), clipped
    to [1, 10] (one too large for a float too) and scaled to [0, 1]; None when there is none.

    >>> parse_judge_score("8/10: correct"), parse_judge_score("Score: 10"), parse_judge_score("no idea")
    (0.7777777777777778, 1.0, None)
    """
    score = first_number(reply)
    return None if score is None else (min(max(score, 1.0), 10.0) - 1.0) / 9.0


def first_number(reply: str | None) -> float | None:
    """The first number of `reply`, with its sign (±inf when too large for a float), not one glued to a word or a
    name (`v2`, `gpt-4`); None when there is none. The judges' rule: a cascade's and the feedback judge's."""
    match = _NUMBER.search(reply or "")
    return None if match is None else float(match.group(1))


def logprob_confidence(logprobs: Sequence[float] | None, kind: str = "logprob") -> float | None:
    """exp(mean) (`logprob`) or exp(min) (`logprob-min`) of the answer's token log-probabilities; None if none."""
    values = [float(v) for v in logprobs or () if math.isfinite(float(v))]
    if not values:
        return None
    value = min(values) if kind == "logprob-min" else sum(values) / len(values)
    return min(1.0, math.exp(min(value, 0.0)))
