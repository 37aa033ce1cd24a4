"""The fake upstream of the named-router tests: a cheap model good on prose and math and bad on code, a strong
expensive one, a judge whose scores track the answer's quality with noise, and a routing LLM (`chooser`)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from benchmarks.fake_upstream import JUDGE, FakeUpstream, Send, ServerThread, kind_of

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


Scripted = Callable[[dict[str, Any]], tuple[int, str, Iterable[bytes]]]
"""`script[model](request)` → (status, content type, the body's parts, each sent as it is, lazily)."""


@dataclass
class ScriptedFake(ChooserFake):
    """`ChooserFake` whose models can be told to answer with exact bytes (`script`), for replies that no well-behaved
    upstream sends: malformed log-probs, lone surrogates, a stream that ends early or never ends a line. It stops
    sending when the caller leaves; `sent` counts the bytes it sent per model."""

    script: dict[str, Scripted] = field(default_factory=dict)
    sent: Counter[str] = field(default_factory=Counter)

    async def complete(self, request: dict[str, Any], send: Send, left: asyncio.Event | None = None) -> None:
        model = request.get("model", "")
        scripted = self.script.get(model)
        if scripted is None:
            await super().complete(request, send, left)
            return
        self.calls[model] += 1
        status, content_type, parts = scripted(request)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode())]})
        for part in parts:
            await asyncio.sleep(0)  # the disconnect watcher's turn
            if left is not None and left.is_set():
                return
            await send({"type": "http.response.body", "body": part, "more_body": True})
            self.sent[model] += len(part)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def completion(content: Any, **choice: Any) -> bytes:
    """A chat completion's JSON with one choice whose message has `content` (and `choice`'s other fields)."""
    return json.dumps({
        "id": "chatcmpl-scripted", "object": "chat.completion", "created": 1, "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop",
                     **choice}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }).encode()


def replying(body: bytes, status: int = 200) -> Scripted:
    """A script that answers every request with `body` (JSON)."""
    return lambda request: (status, "application/json", [body])


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
