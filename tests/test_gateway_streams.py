"""Streams that no well-behaved upstream sends, through the gateway (a real server on 127.0.0.1) from the scripted
fake upstream (`tests.named_fakes.ScriptedFake`, a real HTTP server too): the exact bytes of each stream are the
test's, so that what the gateway reads from them, relays and records is checked byte for byte."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bandit_router.catalog import ModelSpec
from bandit_router.config import Settings
from bandit_router.gateway.sse import sse_lines
from bandit_router.service import create_app
from benchmarks.fake_upstream import ServerThread
from tests.named_fakes import PRICES, PROSE, QUALITY, ScriptedFake, serving
from tools.loopback import loopback, openai_client

FINISH = b'data: {"id":"s","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'


def event(content: str) -> bytes:
    """One SSE event of a chunk whose delta is `content`, its JSON in UTF-8 as it is (no \\u escapes)."""
    chunk = {"id": "s", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": content}}]}
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode("utf-8") + b"\n\n"


def streaming(parts: Callable[[], Iterable[bytes]]) -> Callable[[dict[str, Any]], tuple[int, str, Iterable[bytes]]]:
    return lambda request: (200, "text/event-stream", parts())


@pytest.fixture(scope="module")
def fake() -> Iterator[ScriptedFake]:
    with serving(ScriptedFake(quality=QUALITY, seed=5)) as upstream:
        yield upstream


@pytest.fixture
def gateway(fake: ScriptedFake, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """`start(**settings)` serves a fresh gateway over `cheap` and `strong`; returns its base URL."""
    servers: list[ServerThread] = []
    fake.script.clear()
    fake.sent.clear()

    def start(**changes: Any) -> str:
        specs = tuple(ModelSpec(n, *PRICES[n], base_url=fake.url + "/v1") for n in ("cheap", "strong"))
        server = ServerThread(create_app(Settings(db=tmp_path / f"s{len(servers)}.db", models=specs, seed=3,
                                                  **changes)))
        servers.append(server)
        return server.wait_ready()

    yield start
    for server in servers:
        server.stop()


def stream(url: str, model: str = "cheap") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": PROSE}], "stream": True}
    return loopback.post(url + "/v1/chat/completions", json=body, timeout=30)


def recorded(db: Path, decision_id: str) -> tuple[str, str | None]:
    """(status, error) of the decision's call record, once it is stored."""
    deadline = time.monotonic() + 10
    while True:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT status, error FROM calls WHERE decision_id = ?", (decision_id,)).fetchone()
        if row is not None:
            return row[0], row[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"], ids=["U+2028", "U+2029", "U+0085"])
def test_a_line_separator_inside_a_chunks_json_is_text_not_the_end_of_an_event(
    gateway: Callable[..., str], fake: ScriptedFake, tmp_path: Path, separator: str
) -> None:
    """SSE lines end at CR, LF or CRLF only. JSON may hold U+2028, U+2029 and U+0085 unescaped (JavaScript's
    `JSON.stringify`, Rust's serde_json send them so), and a model may write them: the chunk is read whole and
    relayed, not split there into two halves that are not JSON (the model's `invalid_response`, a 502)."""
    url = gateway()
    fake.script["cheap"] = streaming(lambda: [event(f"one{separator}two"), FINISH + b"\n\n", b"data: [DONE]\n\n"])
    reply = stream(url)
    assert reply.status_code == 200, reply.text
    chunks = [json.loads(line[6:]) for line in reply.text.split("\n\n") if line.startswith("data: {")]
    assert chunks[0]["choices"][0]["delta"]["content"] == f"one{separator}two"
    assert reply.text.rstrip().endswith("data: [DONE]")
    assert recorded(tmp_path / "s0.db", reply.headers["x-decision-id"]) == ("ok", None)



def test_a_stream_cut_inside_a_line_is_a_cut_not_an_answer_that_is_not_json(
    gateway: Callable[..., str], fake: ScriptedFake, tmp_path: Path
) -> None:
    """The connection ends inside a line: what arrived of that line is dropped, as SSE drops pending data at the
    end of a stream. Before the answer's `finish_reason` it is the model's `connection_error`, as a cut between two
    events is; after it (a usage chunk cut short), the answer is whole: `ok`. The cut line was read as a chunk that
    is not JSON, the model's `invalid_response` in both cases."""
    url = gateway()
    fake.script["cheap"] = streaming(lambda: [event("Hello"), b'data: {"id": "s", "choices": [{"delta": {"con'])
    reply = stream(url)
    error = json.loads(reply.text.rstrip().rsplit("data: ", 1)[1])["error"]
    assert error["code"] == "connection_error", reply.text
    assert recorded(tmp_path / "s0.db", reply.headers["x-decision-id"])[0] == "connection_error"
    fake.script["cheap"] = streaming(lambda: [event("Hello"), FINISH + b"\n\n", b'data: {"id": "s", "usage": {"pro'])
    reply = stream(url)
    assert reply.status_code == 200 and reply.text.rstrip().endswith("data: [DONE]"), reply.text
    assert recorded(tmp_path / "s0.db", reply.headers["x-decision-id"]) == ("ok", None)


@pytest.mark.parametrize("error", [{"message": "Output blocked by content filtering policy", "code": "content_filter"},
                                   "Output blocked by content filtering policy"], ids=["object", "text"])
def test_an_error_event_from_the_upstream_reaches_the_caller_in_its_own_words(
    gateway: Callable[..., str], fake: ScriptedFake, tmp_path: Path, error: Any
) -> None:
    """An upstream that ends its stream with an error event (a provider's content filter, an overload) after the
    first chunk: the openai client raises `APIError` with the upstream's message in the gateway's error event, and
    the call record keeps it. The caller and the record only read "the upstream sent an error mid-stream"."""
    url = gateway()
    said = b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
    fake.script["cheap"] = streaming(lambda: [event("Hello"), said])
    client = openai_client(url + "/v1", api_key="unused", max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(
        model="cheap", messages=[{"role": "user", "content": PROSE}], stream=True)
    with pytest.raises(openai.APIError) as broke:
        for _ in raw.parse():
            pass
    words = "cheap: the upstream sent an error mid-stream: Output blocked by content filtering policy"
    assert broke.value.message == f"the stream broke: {words}" and broke.value.code == "server_error"
    assert recorded(tmp_path / "s0.db", raw.headers["x-decision-id"]) == ("server_error", words)


def test_sse_lines_end_at_cr_lf_or_crlf_only_wherever_the_parts_are_cut() -> None:
    """Every way of cutting a body into parts gives the same lines (a CRLF cut in two is one line end), a character
    cut in two is whole, and U+2028 is text. A last line the body ends inside is dropped, as SSE drops pending data
    at the end of a stream, unless it is a bare `data: [DONE]`."""

    async def lines(body: bytes, cuts: list[int]) -> list[str]:
        async def parts() -> AsyncIterator[bytes]:
            for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
                yield body[start:end]
        return [line async for line in sse_lines(parts())]

    body = "data: a\u2028b\r\n\r\ndata: é\rdata: c\n\ndata: [DONE]".encode()
    expected = ["data: a\u2028b", "", "data: é", "data: c", "", "data: [DONE]"]
    for cut in range(1, len(body)):
        assert asyncio.run(lines(body, [cut])) == expected, cut
        assert asyncio.run(lines(body, [cut, min(cut + 1, len(body) - 1)])) == expected, cut
    cut_short = b'data: {"choices": []}\n\ndata: {"choices": [{"delta": {"content": "Hel'
    for cut in range(1, len(cut_short)):
        assert asyncio.run(lines(cut_short, [cut])) == ['data: {"choices": []}', ""], cut


def test_a_stream_that_never_ends_a_line_is_cut_at_max_upstream_response_bytes(
    gateway: Callable[..., str], fake: ScriptedFake, tmp_path: Path
) -> None:
    """`max_upstream_response_bytes` bounds a stream by the bytes that arrive, not by the lines read: an upstream
    that sends 64 MB without a line break after its first chunk is cut once 1 MB has arrived (the stream's error
    event, the model's `invalid_response`), instead of being held whole in memory until its line ends."""
    url = gateway(max_upstream_response_bytes=1024 * 1024)
    fake.script["cheap"] = streaming(lambda: [event("Hello"), *[b"x" * 65536] * 1024])
    reply = stream(url)
    assert reply.status_code == 200
    error = json.loads(reply.text.rstrip().rsplit("data: ", 1)[1])["error"]
    assert error["code"] == "invalid_response" and "larger than 1048576 bytes" in error["message"]
    assert recorded(tmp_path / "s0.db", reply.headers["x-decision-id"])[0] == "invalid_response"
    assert fake.sent["cheap"] < 16 * 1024 * 1024  # it stopped reading (and the fake sending) near the limit


def test_a_streamed_tool_calls_tokens_are_counted_when_the_upstream_reports_no_usage(
    gateway: Callable[..., str], fake: ScriptedFake, tmp_path: Path
) -> None:
    """A stream whose answer is a tool call (its deltas carry `tool_calls`, no content) and no usage: the call's
    output tokens are estimated from the call's name and arguments, not 0 (what an empty text gave)."""
    url = gateway()

    def delta(**fields: Any) -> bytes:
        chunk = {"id": "s", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": fields}]}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    arguments = '{"city": "Paris", "unit": "celsius", "days": 3}'
    calls = [delta(role="assistant", content=None, tool_calls=[
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}])]
    calls += [delta(tool_calls=[{"index": 0, "function": {"arguments": arguments[i : i + 8]}}])
              for i in range(0, len(arguments), 8)]
    fake.script["cheap"] = streaming(lambda: [*calls, FINISH.replace(b'"stop"', b'"tool_calls"') + b"\n\n",
                                              b"data: [DONE]\n\n"])
    reply = stream(url)
    assert reply.status_code == 200 and reply.text.rstrip().endswith("data: [DONE]")
    assert recorded(tmp_path / "s0.db", reply.headers["x-decision-id"]) == ("ok", None)
    with closing(sqlite3.connect(f"file:{tmp_path / 's0.db'}?mode=ro", uri=True)) as conn:
        usage, tokens = conn.execute("SELECT usage, output_tokens FROM calls").fetchone()
    assert usage == "estimated" and tokens >= 10


def test_a_streamed_answer_is_shown_to_a_judge_as_the_same_answer_unstreamed_is(fake: ScriptedFake) -> None:
    """The feedback judge reads a streamed answer as `pricing.answer_text` reads it unstreamed: the first choice's
    content, then each tool call as `name(arguments)` on its own line, the calls' pieces joined by their `index`
    (it was every choice's content and every piece run together: 'Checking.get_weather{...}get_time{...}')."""
    from bandit_router.gateway.pricing import answer_text
    from bandit_router.gateway.upstreams import Endpoint, Upstreams

    def chunk(index: int, **delta: Any) -> bytes:
        body = {"id": "s", "object": "chat.completion.chunk", "choices": [{"index": index, "delta": delta}]}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    def call(i: int, name: str | None, arguments: str) -> dict[str, Any]:
        function = {"arguments": arguments} if name is None else {"name": name, "arguments": arguments}
        return {"index": i, "function": function}

    parts = [chunk(0, role="assistant", content="Check"), chunk(1, content="other choice"), chunk(0, content="ing."),
             chunk(0, tool_calls=[call(0, "get_weather", '{"city"')]), chunk(0, tool_calls=[call(1, "get_time", "")]),
             chunk(0, tool_calls=[call(0, None, ': "Paris"}')]), chunk(0, tool_calls=[call(1, None, '{"tz": "CET"}')]),
             FINISH + b"\n\n", b"data: [DONE]\n\n"]
    fake.script["cheap"] = streaming(lambda: parts)
    unstreamed = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "2", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}}]}}]}

    async def streamed() -> tuple[str, list[str]]:
        spec = ModelSpec("cheap", *PRICES["cheap"], base_url=fake.url + "/v1")
        endpoint = Endpoint.of(spec, default_base_url=None, default_api_key_env=None, timeout_s=10,
                               connect_timeout_s=5, max_concurrency=4)
        assert endpoint is not None
        upstreams = Upstreams([endpoint], max_response_bytes=1 << 20)
        try:
            stream = await upstreams.stream("cheap", {"messages": [{"role": "user", "content": "hi"}]},
                                            time.monotonic() + 10)
            try:
                await stream.first()
                async for _ in stream.rest():
                    pass
                return stream.answer(), stream.text
            finally:
                await stream.close()
        finally:
            await upstreams.aclose()

    answer, counted = asyncio.run(streamed())
    assert answer == answer_text(unstreamed) == 'Checking.\nget_weather({"city": "Paris"})\nget_time({"tz": "CET"})'
    # every choice's pieces, as counted for the token estimate (each delta's tool calls are read once for both)
    assert counted == ["Check", "other choice", "ing.", 'get_weather{"city"', "get_time", ': "Paris"}',
                       '{"tz": "CET"}']
