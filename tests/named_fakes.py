"""The fake upstream of the named-router tests: a cheap model good on prose and math and bad on code, a strong
expensive one, a judge whose scores track the answer's quality with noise, and a routing LLM (`chooser`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from benchmarks.fake_upstream import JUDGE, FakeUpstream, ServerThread, kind_of

QUALITY = {
    "cheap": {"code": 0.15, "math": 0.85, "prose": 0.9},
    "strong": {"code": 0.95, "math": 0.95, "prose": 0.95},
    JUDGE: {"code": 0.5, "math": 0.5, "prose": 0.5},
    "chooser": {"code": 0.5, "math": 0.5, "prose": 0.5},
}
PRICES = {"cheap": (0.1, 0.2), "strong": (5.0, 15.0), JUDGE: (0.15, 0.6), "chooser": (0.15, 0.6)}
CODE = "Fix the bug in this Python function: def mean(xs): return sum(xs) / len(x)"
PROSE = "Write a short poem about the sea at dawn"
MATH = "Solve the equation x^2 - 5x + 6 = 0"


class ChooserFake(FakeUpstream):
    """The fake upstream plus a routing LLM (`chooser`): strong for code, cheap for prose, no name for math."""

    def answer(self, model: str, messages: list[dict[str, Any]], prompt: str) -> str:
        if model == "chooser":
            kind = kind_of(prompt.split("[Request]", 1)[-1])
            return {"code": "I would use **strong**.", "prose": "cheap"}.get(kind, "Hard to say.")
        return super().answer(model, messages, prompt)


Upstream = TypeVar("Upstream", bound=FakeUpstream)


@contextmanager
def serving(upstream: Upstream) -> Iterator[Upstream]:
    """`upstream` served on 127.0.0.1 (its `url` set) until the block ends."""
    server = ServerThread(upstream)
    upstream.url = server.url
    try:
        yield upstream
    finally:
        upstream.closing = True
        server.stop()
