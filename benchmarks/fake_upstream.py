"""A fake OpenAI-compatible upstream: a real HTTP server on 127.0.0.1 for the gateway's tests and benchmarks.

It serves `POST /v1/chat/completions` for several "models" whose answer quality depends on the prompt's kind
(`kind_of`: code, math or prose), streamed or not, with OpenAI's shapes. Each answer states its quality in its
text (`[q=0.83]`), the way a grader would find it, so a test can give feedback without knowing the table, and the
fake's judge model (`JUDGE`) grades an answer by reading it (with `judge_noise`, noisily). A non-streamed
request with `logprobs: true` gets token log-probabilities whose geometric mean is the answer's quality. Per
model it can be told (`mode`) to be `slow` (`delay_s` before the reply or first chunk), to `fail` (HTTP 500), to
`hang` (never answer), to `omit_usage`, or to answer `garbage` (200 with an HTML page, or a stream without a
single event); the operator's drills (`experiments/gateway-drills`) add `ratelimit` (429 with `Retry-After:
delay_s`), `cut` (the connection closed halfway through the reply or stream), `malformed` (a 200 whose JSON, or a
chunk's, is cut short), `offshape` (a 200 JSON that is not a chat completion, or chunks without `choices`),
`trickle` (the reply's bytes, or the stream's chunks, `delay_s` apart), `stall` (the reply's first half, or
the stream's first chunk, then nothing until told otherwise) and `keepalive` (a 200 that sends a blank, or an SSE
comment, every `delay_s` and nothing else until told otherwise, as some providers do while a model thinks);
`truncated` (a stream that ends halfway, its body ended properly but without a `finish_reason` or `[DONE]`, as a
proxy that gave up may end it) and `nodone` (a whole stream, its `finish_reason` given, without `[DONE]`);
a `temperature` above 2 gets OpenAI's 400. `POST /_control {"model", "mode", "delay_s"}` changes a model from
another process; `GET /_stats` tells what arrived and how it ended (`calls` per model, `active` now, `peak`
since it was last asked, `finished`, and `abandoned`: the caller left before the reply ended); `calls` and
`authorizations` record what arrived.

    python -m benchmarks.fake_upstream --port 9100     # serve until killed (benchmarks run it like this)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from tools.loopback import loopback

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

KINDS = ("code", "math", "prose")
JUDGE = "fake-judge"
QUALITY: dict[str, dict[str, float]] = {
    "fake-coder": {"code": 0.9, "math": 0.5, "prose": 0.3},
    "fake-writer": {"code": 0.3, "math": 0.5, "prose": 0.9},
    "fake-small": {"code": 0.5, "math": 0.6, "prose": 0.5},
    JUDGE: {"code": 0.5, "math": 0.5, "prose": 0.5},
}
"""Mean answer quality per model and prompt kind (each answer adds ±`NOISE`)."""
NOISE = 0.1
MODES = ("ok", "slow", "fail", "hang", "omit_usage", "garbage", "reject", "ratelimit", "cut", "malformed", "offshape",
         "trickle", "stall", "keepalive", "truncated", "nodone", "unauthorized")
"""`reject`: a 400 that blames the request, as a model whose context window is too small answers;
`unauthorized`: a 401, as to a wrong key."""
ANSWER_WORDS = 24


def kind_of(text: str) -> str:
    """The prompt's kind, as the fake sees it: code words, math words, else prose."""
    lowered = text.lower()
    if any(w in lowered for w in ("python", "function", "sql", "code", "bug", "compile")):
        return "code"
    if any(w in lowered for w in ("solve", "integral", "equation", "prove", "sum of")):
        return "math"
    return "prose"


def quality_in(text: str) -> float | None:
    """The quality an answer states (`[q=0.83]`), None when it states none."""
    start = text.rfind("[q=")
    end = text.find("]", start)
    if start < 0 or end < 0:
        return None
    try:
        return float(text[start + 3 : end])
    except ValueError:
        return None


@dataclass
class Behaviour:
    mode: str = "ok"
    delay_s: float = 0.0


@dataclass
class FakeUpstream:
    """The ASGI app. `quality` maps model → kind → mean quality; unknown models get 404 like OpenAI."""

    quality: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: QUALITY)
    seed: int = 0
    behaviour: dict[str, Behaviour] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    authorizations: list[str] = field(default_factory=list)
    closing: bool = False
    judge_noise: float = 0.0
    """The judge's score is round(10·(q + u)), u uniform on ±`judge_noise` (0: it reads the quality exactly)."""
    url: str = ""
    """Where it is served (set by whoever serves it), for building catalogs."""
    active: int = 0
    """Calls being answered now."""
    peak: int = 0
    """The most calls answered at once since `/_stats` last told it."""
    finished: int = 0
    """Calls whose reply was sent to its end."""
    abandoned: int = 0
    """Calls whose caller left before the reply ended (it closed the connection); a reply the fake cut itself
    (`cut`, `malformed` streams) is neither."""

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def set(self, model: str, mode: str = "ok", delay_s: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.behaviour[model] = Behaviour(mode, delay_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path == "/_control":
            data = json.loads(body)
            self.set(data["model"], data.get("mode", "ok"), float(data.get("delay_s", 0.0)))
            await _json(send, 200, {"ok": True})
            return
        if path == "/_stats":
            await _json(send, 200, {"calls": dict(self.calls), "active": self.active, "peak": self.peak,
                                    "finished": self.finished, "abandoned": self.abandoned})
            self.peak = self.active
            return
        if path != "/v1/chat/completions":
            await _json(send, 404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            return
        for name, value in scope["headers"]:
            if name == b"authorization":
                self.authorizations.append(value.decode("latin-1"))
        request = json.loads(body)
        self.active += 1
        self.peak = max(self.peak, self.active)
        left = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, left))
        ended = False

        async def sending(message: MutableMapping[str, Any]) -> None:
            nonlocal ended
            await send(message)
            ended = ended or (message["type"] == "http.response.body" and not message.get("more_body"))

        try:
            await self.complete(request, sending, left)
        finally:
            self.active -= 1
            watcher.cancel()
            if ended:
                self.finished += 1
            elif left.is_set():
                self.abandoned += 1

    async def complete(self, request: dict[str, Any], send: Send, left: asyncio.Event | None = None) -> None:
        model = request.get("model", "")
        if model not in self.quality:
            await _json(send, 404, {"error": {"message": f"The model `{model}` does not exist",
                                              "type": "invalid_request_error", "param": "model",
                                              "code": "model_not_found"}})
            return
        if float(request.get("temperature") or 0) > 2:
            await _json(send, 400, {"error": {"message": "temperature must be at most 2",
                                              "type": "invalid_request_error", "param": "temperature",
                                              "code": None}})
            return
        self.calls[model] += 1
        behaviour = self.behaviour.get(model, Behaviour())
        left = left or asyncio.Event()
        if behaviour.mode == "hang":  # until told otherwise (or closing, or the caller leaves): never answers
            await self._until_changed(model, "hang", left)
            return
        if behaviour.mode == "ratelimit":
            body = json.dumps({"error": {"message": "Rate limit reached", "type": "requests",
                                         "code": "rate_limit_exceeded"}}).encode()
            await send({"type": "http.response.start", "status": 429, "headers": [
                (b"content-type", b"application/json"), (b"retry-after", str(int(behaviour.delay_s or 7)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if behaviour.mode == "reject":
            await _json(send, 400, {"error": {"message": f"This model's maximum context length is exceeded ({model})",
                                              "type": "invalid_request_error", "param": "messages",
                                              "code": "context_length_exceeded"}})
            return
        if behaviour.mode == "unauthorized":  # the gateway's key for this upstream is wrong
            await _json(send, 401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                              "code": "invalid_api_key"}})
            return
        if behaviour.mode == "fail":
            await _json(send, 500, {"error": {"message": "the model is overloaded", "type": "server_error"}})
            return
        if behaviour.mode == "keepalive":
            stream = bool(request.get("stream"))
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream" if stream else b"application/json")]})
            while self.behaviour.get(model, Behaviour()).mode == "keepalive" and not self.closing \
                    and not left.is_set():
                await send({"type": "http.response.body", "body": b": keep-alive\n\n" if stream else b" ",
                            "more_body": True})
                await _pause(behaviour.delay_s or 0.2, left)
            return
        if behaviour.delay_s and behaviour.mode not in ("trickle", "stall"):
            await _pause(behaviour.delay_s, left)
            if left.is_set():
                return
        if behaviour.mode == "offshape" and not request.get("stream"):
            await _json(send, 200, {"id": "x", "object": "text_completion", "output": "an answer, not in choices"})
            return
        if behaviour.mode == "malformed" and not request.get("stream"):
            body = b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": {"ro'
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if behaviour.mode == "garbage":
            kind = b"text/event-stream" if request.get("stream") else b"text/html"
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
            await send({"type": "http.response.body", "body": b": nothing\n\n" if request.get("stream") else
                        b"<html>upstream maintenance</html>"})
            return
        messages = request.get("messages") or []
        prompt = "\n".join(str(m.get("content") or "") for m in messages)
        content = self.answer(model, messages, prompt)
        usage = None if behaviour.mode == "omit_usage" else {
            "prompt_tokens": max(1, len(prompt) // 4), "completion_tokens": len(content.split()),
            "total_tokens": max(1, len(prompt) // 4) + len(content.split())}
        created = int(time.time())
        ident = f"chatcmpl-{self._rng.getrandbits(48):012x}"
        if not request.get("stream"):
            reply: dict[str, Any] = {
                "id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
            }
            if request.get("logprobs") is True:  # each token as likely as the answer is good: exp(mean) = q
                shown = quality_in(content)
                lp = math.log(max(shown if shown is not None else 0.5, 1e-3))
                reply["choices"][0]["logprobs"] = {"content": [{"token": w, "logprob": lp, "top_logprobs": []}
                                                               for w in content.split(" ")]}
            if usage is not None:
                reply["usage"] = usage
            if behaviour.mode in ("cut", "trickle", "stall"):
                await self._in_pieces(model, behaviour, json.dumps(reply).encode(), send, left)
                return
            await _json(send, 200, reply)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        words = content.split(" ")
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
        pieces = [{"role": "assistant", "content": ""}] + [{"content": w + " "} for w in words[:-1]] + \
            [{"content": words[-1]}]
        for i, delta in enumerate(pieces):
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            if behaviour.mode == "offshape":
                chunk = {"id": ident, "text": delta.get("content", "")}
            if behaviour.mode == "malformed" and i == 2:
                await send({"type": "http.response.body", "body": b'data: {"id": "x", "choices": [{"de\n\n',
                            "more_body": True})
                return
            if behaviour.mode == "cut" and i == len(pieces) // 2:
                return  # returning before the body's end: uvicorn closes the connection
            if behaviour.mode == "truncated" and i == len(pieces) // 2:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if behaviour.mode == "stall" and i == 1:
                await self._until_changed(model, "stall", left)
                return
            if behaviour.mode == "trickle" and i > 0:
                await _pause(behaviour.delay_s, left)
            if left.is_set():
                return
            await _event(send, chunk)
        await _event(send, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        options = request.get("stream_options") or {}
        if usage is not None and options.get("include_usage"):
            await _event(send, {**base, "choices": [], "usage": usage})
        end = b"" if behaviour.mode == "nodone" else b"data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": end, "more_body": False})

    async def _until_changed(self, model: str, mode: str, left: asyncio.Event) -> None:
        while self.behaviour.get(model, Behaviour()).mode == mode and not self.closing and not left.is_set():
            await _pause(0.05, left)

    async def _in_pieces(self, model: str, behaviour: Behaviour, body: bytes, send: Send,
                         left: asyncio.Event) -> None:
        """A 200 whose body is sent in ten pieces `delay_s` apart (`trickle`), or whose first half is followed by
        nothing (`stall`, until told otherwise) or by the connection's end (`cut`)."""
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        if behaviour.mode in ("cut", "stall"):
            await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
            if behaviour.mode == "stall":
                await self._until_changed(model, "stall", left)
            return  # returning before the body's end: uvicorn closes the connection
        step = -(-len(body) // 10)
        for start in range(0, len(body), step):
            if start:
                await _pause(behaviour.delay_s, left)
            if left.is_set():
                return
            await send({"type": "http.response.body", "body": body[start : start + step],
                        "more_body": start + step < len(body)})

    def answer(self, model: str, messages: list[dict[str, Any]], prompt: str) -> str:
        if model == JUDGE:
            shown = quality_in(prompt)
            if shown is None:
                return "5"
            noisy = shown + self._rng.uniform(-self.judge_noise, self.judge_noise) if self.judge_noise else shown
            return str(round(10 * min(1.0, max(0.0, noisy))))
        kind = kind_of(prompt)
        q = min(1.0, max(0.0, self.quality[model][kind] + self._rng.uniform(-NOISE, NOISE)))
        filler = " ".join(["word"] * ANSWER_WORDS)
        return f"{model} answers a {kind} prompt: {filler} [q={q:.3f}]"


async def _watch_disconnect(receive: Receive, left: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    left.set()


async def _pause(seconds: float, left: asyncio.Event) -> None:
    """Sleep `seconds`, or less when the caller leaves meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(left.wait(), seconds)


async def _json(send: Send, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _event(send: Send, chunk: dict[str, Any]) -> None:
    await send({"type": "http.response.body", "body": b"data: " + json.dumps(chunk).encode() + b"\n\n",
                "more_body": True})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """An ASGI app served by uvicorn on 127.0.0.1 in a thread of this process (tests); `stop()` ends it."""

    def __init__(self, app: Any, port: int | None = None, **options: Any) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 10.0) -> str:
        """Wait until a bandit-router app's `/readyz` answers 200 (its learned state recovered); its URL."""
        deadline = time.monotonic() + timeout
        while loopback.get(self.url + "/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not become ready")
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(FakeUpstream(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
