"""What the gateway's failure drills (`experiments/gateway-drills`) found, each as a behaviour test against real
servers on 127.0.0.1 (the gateway and the fake upstream, as in `test_gateway.py`): a caller that leaves a stream
before its first chunk, an upstream that trickles its reply past `timeout_s`, streamed chunks that are not chat
completion chunks, a stream whose body ends before its answer, rate limits (429 with `Retry-After`) on every
model tried, and requests a shutdown cuts short."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bandit_router.catalog import ModelSpec
from bandit_router.config import RouterAlias, Settings
from bandit_router.service import create_app
from benchmarks.fake_upstream import JUDGE, FakeUpstream, ServerThread
from tests.test_gateway import PRICES, fake, gateway  # noqa: F401  (fixtures)
from tools.loopback import loopback

HI = [{"role": "user", "content": "Write a short poem about the sea at dawn"}]


def calls(db: Path) -> list[tuple[Any, ...]]:
    """(model, status, error) of every stored call record, oldest first."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute("SELECT model, status, error FROM calls ORDER BY created_at").fetchall()


def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def chat(url: str, model: str = "router", *, stream: bool = False, timeout: float = 30.0) -> httpx.Response:
    return loopback.post(url + "/v1/chat/completions", json={"model": model, "messages": HI, "stream": stream},
                         timeout=timeout)


def test_a_stream_whose_caller_left_before_its_first_chunk_is_recorded_cancelled_and_lets_its_connection_go(
    gateway: Callable[..., str], fake: FakeUpstream, tmp_path: Path  # noqa: F811
) -> None:
    # One call slot and one pooled connection for the model: a connection left checked out would starve the next.
    url = gateway(models=("fake-writer",), upstream_max_concurrency=1, upstream_timeout_s=3, deadline_s=6)
    fake.set("fake-writer", "slow", 0.4)
    for _ in range(3):
        with pytest.raises(httpx.TimeoutException):  # gone before the first chunk (and the reply's headers)
            chat(url, stream=True, timeout=0.1)
        assert eventually(lambda: fake.active == 0)
    assert eventually(lambda: len(calls(tmp_path / "gw0.db")) == 3)
    assert [status for _, status, _ in calls(tmp_path / "gw0.db")] == ["cancelled"] * 3  # nobody read the answers
    fake.set("fake-writer")
    reply = chat(url, stream=True, timeout=10)
    assert reply.status_code == 200 and reply.text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize(("mode", "stream"), [("trickle", False), ("keepalive", False), ("keepalive", True)])
def test_timeout_s_bounds_a_whole_call_not_each_wait_for_bytes(
    gateway: Callable[..., str], fake: FakeUpstream, tmp_path: Path, mode: str, stream: bool  # noqa: F811
) -> None:
    """An upstream that sends its reply in pieces 0.3 s apart (3 s in all), or blanks / SSE comments every 0.2 s
    and nothing else, never waits longer than httpx's read timeout between bytes: `timeout_s` (1 s) must still
    end the call (for a stream, the wait for its first chunk), within a deadline that would allow 20 s."""
    url = gateway(models=("fake-writer",), upstream_timeout_s=1, deadline_s=20, max_attempts=1)
    fake.set("fake-writer", mode, 0.3 if mode == "trickle" else 0.2)  # (a streamed trickle is a healthy stream)
    reply = chat(url, "fake-writer", stream=stream)
    fake.set("fake-writer")
    assert reply.status_code == 504, reply.text
    assert reply.json()["error"]["code"] == "timeout"
    assert "within 1 s" in reply.json()["error"]["message"]
    assert eventually(lambda: [s for _, s, _ in calls(tmp_path / "gw0.db")] == ["timeout"])


@pytest.mark.parametrize("model", ["fake-writer", "router"])
def test_streamed_chunks_that_are_not_chat_completion_chunks_are_the_models_invalid_response(
    gateway: Callable[..., str], fake: FakeUpstream, tmp_path: Path, model: str  # noqa: F811
) -> None:
    """A 200 stream of JSON events without `choices` is not an answer: before its first chunk it is the model's
    failure like a non-streamed reply of that shape (the router falls back; a named model answers 502), instead
    of events the caller's client cannot read, recorded `ok`."""
    url = gateway(models=("fake-writer", "fake-coder"))
    fake.set("fake-writer", "offshape")
    for _ in range(6):
        reply = chat(url, model, stream=True)
        if model == "fake-writer":
            assert reply.status_code == 502 and reply.json()["error"]["code"] == "invalid_response", reply.text
        else:
            assert reply.status_code == 200 and reply.headers["x-bandit-router-model"] == "fake-coder"
            assert reply.text.rstrip().endswith("data: [DONE]")
    assert eventually(lambda: len(calls(tmp_path / "gw0.db")) >= 6)
    writer = {status for m, status, _ in calls(tmp_path / "gw0.db") if m == "fake-writer"}
    assert writer == {"invalid_response"}



@pytest.mark.parametrize("model", ["fake-writer", "router"])
def test_a_stream_whose_body_ends_before_its_answer_did_is_cut_not_an_answer(
    gateway: Callable[..., str], fake: FakeUpstream, tmp_path: Path, model: str  # noqa: F811
) -> None:
    """A stream whose body ends properly halfway through the answer (no `finish_reason`, no `[DONE]`) was cut on
    the way: the caller gets the stream's error event, not a `[DONE]` that passes half an answer off as whole, and
    the call is the model's `connection_error`, paid for what it streamed. A whole stream without `[DONE]` (its
    `finish_reason` given) is an answer."""
    url = gateway(models=("fake-writer",))
    fake.set("fake-writer", "truncated")
    reply = chat(url, model, stream=True)
    assert reply.status_code == 200 and "data: [DONE]" not in reply.text
    error = json.loads(reply.text.rstrip().rsplit("data: ", 1)[1])["error"]
    assert error["code"] == "connection_error" and "ended before its answer" in error["message"]
    assert eventually(lambda: [s for _, s, _ in calls(tmp_path / "gw0.db")] == ["connection_error"])
    fake.set("fake-writer", "nodone")
    reply = chat(url, model, stream=True)
    assert reply.status_code == 200 and reply.text.rstrip().endswith("data: [DONE]")
    assert eventually(lambda: [s for _, s, _ in calls(tmp_path / "gw0.db")] == ["connection_error", "ok"])

def test_a_request_whose_every_model_is_rate_limited_answers_429_with_the_soonest_retry_after(
    gateway: Callable[..., str], fake: FakeUpstream, tmp_path: Path  # noqa: F811
) -> None:
    """Every model tried answered 429: the caller gets a 429 (OpenAI's `RateLimitError`, which its client retries
    after `Retry-After`) with the soonest time any of them gave, not a 502 it would retry at once; each 429 is still
    the model's failure (learned, and the request falls back). One 429 beside another failure stays a 502."""
    routers = (RouterAlias("cascade", "cascade", ("fake-small", "fake-coder"), judge=JUDGE, threshold=0.7),)
    url = gateway(models=("fake-small", "fake-coder", JUDGE), not_routed=(JUDGE,), routers=routers)
    fake.set("fake-small", "ratelimit", 7)
    fake.set("fake-coder", "ratelimit", 3)
    for model, stream in (("router", False), ("router", True), ("cascade", False), ("cascade", True)):
        reply = chat(url, model, stream=stream)
        assert reply.status_code == 429, (model, stream, reply.text)
        assert reply.json()["error"]["code"] == "rate_limit_exceeded"
        assert reply.headers["retry-after"] == "3"
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0).chat.completions.create(
            model="fake-small", messages=HI)  # type: ignore[arg-type]
    assert eventually(lambda: len(calls(tmp_path / "gw0.db")) == 5)  # the router's 2 × 2 tries, the named call
    assert {status for _, status, _ in calls(tmp_path / "gw0.db")} == {"server_error"}
    fake.set("fake-coder", "fail")
    reply = chat(url)
    assert reply.status_code == 502 and "retry-after" not in reply.headers


def test_requests_a_shutdown_cuts_short_get_503_or_an_error_event_and_every_paid_call_is_recorded(
    fake: FakeUpstream, tmp_path: Path  # noqa: F811
) -> None:
    """The server stops while requests outlast its grace (uvicorn's `timeout_graceful_shutdown`, 10 s for `serve`,
    1 s here) and cancels them: a non-streamed caller gets a 503 in OpenAI's shape (not a bare 500 with a
    traceback in the log), a stream ends with an error event and its proper end, each call is recorded
    `cancelled` (no decision is left without its record), and a cascade cut short counts what it paid."""
    fake.behaviour.clear()
    specs = tuple(ModelSpec(name, *PRICES[name], base_url=fake.url + "/v1", route=name != JUDGE)
                  for name in ("fake-small", "fake-coder", "fake-writer", JUDGE))
    routers = (RouterAlias("cascade", "cascade", ("fake-small", "fake-coder"), judge=JUDGE, threshold=0.99),)
    db = tmp_path / "stop.db"
    server = ServerThread(create_app(Settings(db=db, models=specs, routers=routers, seed=3)),
                          timeout_graceful_shutdown=1)
    url = server.wait_ready()
    fake.set("fake-coder", "hang")  # the cascade's second model too (threshold 0.99: it always escalates)
    fake.set("fake-writer", "trickle", 0.5)  # a 16 s stream
    replies: dict[str, httpx.Response | Exception] = {}

    def ask(name: str, model: str, stream: bool) -> None:
        try:
            replies[name] = chat(url, model, stream=stream, timeout=30)
        except httpx.HTTPError as exc:
            replies[name] = exc

    asks = [threading.Thread(target=ask, args=a) for a in
            (("named", "fake-coder", False), ("stream", "fake-writer", True), ("cascade", "cascade", False))]
    for thread in asks:
        thread.start()
    try:
        assert eventually(lambda: fake.active >= 3)  # the writer's stream, the coder's two hanging calls
    finally:
        server.stop()
        for thread in asks:
            thread.join(30)
        fake.behaviour.clear()
    named, stream, cascade = replies["named"], replies["stream"], replies["cascade"]
    for reply in (named, cascade):
        assert isinstance(reply, httpx.Response) and reply.status_code == 503, reply
        assert reply.json()["error"]["code"] == "shutting_down" and reply.headers["retry-after"] == "1"
    assert isinstance(stream, httpx.Response) and stream.status_code == 200
    events = [line[6:] for line in stream.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[-1])["error"]["code"] == "shutting_down"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        unrecorded = conn.execute("SELECT count(*) FROM decisions d LEFT JOIN calls c "
                                  "ON c.decision_id = d.decision_id WHERE c.decision_id IS NULL").fetchone()[0]
        statuses = [r[0] for r in conn.execute("SELECT status FROM calls")]
        counted = conn.execute("SELECT sum(requests), sum(answer_calls), sum(judge_calls) FROM router_stats "
                               "WHERE router = 'cascade'").fetchone()
    assert unrecorded == 0 and sorted(statuses) == ["cancelled", "cancelled"]
    assert counted == (1, 1, 1)  # fake-small's answer and the judge's score were paid before the stop
