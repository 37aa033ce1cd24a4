"""Named routers live, end to end through the gateway (`/v1/chat/completions`, the `openai` client) against the fake
OpenAI-compatible upstream on 127.0.0.1: a cheap model good on prose and math and bad on code, a strong expensive
one, a judge whose scores track the answer's quality with noise, log-probs on request, and a routing LLM."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bandit_router.budgets import BudgetConfig
from bandit_router.catalog import ModelSpec
from bandit_router.config import RouterAlias, Settings
from bandit_router.evaluation.store_log import first_tries, recent_log
from bandit_router.service import create_app
from bandit_router.store import SQLiteStore
from bandit_router.store.location import DatabaseURL
from benchmarks.fake_upstream import JUDGE, ServerThread, quality_in
from tests.named_fakes import CODE, MATH, PRICES, PROSE, QUALITY, ScriptedFake, completion, replying, serving
from tools.loopback import loopback, openai_client
from tools.pg_server import PgServer
from tools.serve_process import ServeProcess

ROUTERS = (
    RouterAlias("cascade", "cascade", ("cheap", "strong"), judge=JUDGE, threshold=0.7),
    RouterAlias("confident", "cascade", ("cheap", "strong"), signal="logprob", threshold=0.7),
    RouterAlias("learned", "learned-cascade", ("cheap", "strong"), judge=JUDGE),
    RouterAlias("auto", "llm-router", ("cheap", "strong"), router_model="chooser",
                descriptions={"strong": "best at code"}),
)


@pytest.fixture(scope="module")
def fake() -> Iterator[ScriptedFake]:
    with serving(ScriptedFake(quality=QUALITY, seed=5, judge_noise=0.1)) as upstream:
        yield upstream


@pytest.fixture
def gateway(fake: ScriptedFake, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """`start()` serves a fresh gateway with the named routers; returns its base URL. Every model starts healthy."""
    servers: list[ServerThread] = []
    fake.behaviour.clear()
    fake.script.clear()

    def start(**changes: Any) -> str:
        specs = tuple(ModelSpec(n, *PRICES[n], tags={"family": "fake"}, base_url=fake.url + "/v1",  # type: ignore[attr-defined]
                                route=n in ("cheap", "strong")) for n in PRICES)  # judge, chooser: never routed
        changes.setdefault("models", specs)
        settings = Settings(db=tmp_path / f"n{len(servers)}.db", routers=ROUTERS, seed=11, **changes)
        server = ServerThread(create_app(settings))
        servers.append(server)
        return server.wait_ready()

    yield start
    for server in servers:
        server.stop()


def ask(url: str, model: str, prompt: str, **extra: Any) -> tuple[Any, dict[str, Any], str]:
    """(the completion, its `bandit_router` field, its decision id) through the openai client."""
    client = openai_client(url + "/v1", api_key="unused", max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], **extra
    )
    completion = raw.parse()
    return completion, (completion.model_extra or {}).get("bandit_router", {}), raw.headers["x-decision-id"]


def stored(url: str, decision_id: str, feedbacks: int = 0) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        reply = loopback.get(f"{url}/v1/decisions/{decision_id}")
        if reply.status_code == 200 and len(reply.json()["feedback"]) >= feedbacks:
            return dict(reply.json())
        assert time.monotonic() < deadline, reply.text
        time.sleep(0.02)


def feedback(url: str, decision_id: str, quality: float) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:  # the call record is written off the reply path: feedback finds it once it is stored
        reply = loopback.post(url + "/v1/feedback", json={"decision_id": decision_id, "quality": quality})
        if reply.status_code == 200:
            return dict(reply.json())
        assert reply.status_code == 404 and time.monotonic() < deadline, reply.text
        time.sleep(0.02)


# -- a fixed-threshold cascade --------------------------------------------------------------------------------------
def test_the_cascade_answers_easy_kinds_with_one_call_and_escalates_hard_ones(gateway: Callable[..., str]) -> None:
    url = gateway()
    completion, chain, _ = ask(url, "cascade", PROSE)
    assert completion.model == "cheap" and completion.choices[0].message.content.startswith("cheap answers")
    assert [(c["model"], c["role"]) for c in chain["calls"]] == [("cheap", "answer"), (JUDGE, "judge")]
    assert chain["calls"][1]["confidence"] >= 0.7 and chain["steps"][0]["action"] == "accept"
    assert chain["escalations"] == 0

    completion, chain, code_id = ask(url, "cascade", CODE)
    assert completion.model == "strong"
    assert [(c["model"], c["role"]) for c in chain["calls"]] == [("cheap", "answer"), (JUDGE, "judge"),
                                                                ("strong", "answer")]  # the last is not judged
    assert chain["steps"][0]["action"] == "escalate" and chain["calls"][1]["confidence"] < 0.7
    assert chain["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in chain["calls"]))

    decision = stored(url, code_id)
    assert decision["model"] == "strong" and decision["policy"] == "cascade:cascade"
    assert decision["probability"] == 1.0 and decision["probabilities"] == {"cheap": 0.0, "strong": 1.0}
    result = feedback(url, code_id, 0.9)
    assert result["status"] == "unrouted"  # on record, never learned by the bandit
    row = stored(url, code_id, 1)["feedback"][0]
    assert row["cost_usd"] == pytest.approx(chain["cost_usd"])  # the whole chain is paid for and priced in
    stats = loopback.get(url + "/v1/stats").json()["named_routers"]["cascade"]
    assert stats["requests"] == 2 and stats["escalations"] == 1 and stats["judge_calls"] == 2
    assert stats["answered_by"] == {"cheap": 1, "strong": 1} and stats["spend_usd"] > 0
    live = loopback.get(url + "/v1/stats/live").json()["named_routers"]  # what the dashboard's panel shows
    assert live["cascade"]["escalations"] == 1 and live["learned"]["requests"] == 0


def test_a_streaming_client_gets_the_accepted_answer(gateway: Callable[..., str]) -> None:
    url = gateway()
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
    with client.chat.completions.with_streaming_response.create(
        model="cascade", messages=[{"role": "user", "content": CODE}], stream=True,
        stream_options={"include_usage": True},
    ) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream") and raw.headers["x-decision-id"]
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("strong answers a code prompt") and {c.model for c in chunks} == {"strong"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0



def _streamed(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON events of a streamed reply (200), in order, up to `[DONE]`, which must end it."""
    reply = loopback.post(url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream"), reply.text
    data = [line[6:] for line in reply.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]", data
    return [json.loads(d) for d in data[:-1]]


def test_a_streamed_answer_with_a_lone_surrogate_is_relayed_not_a_500(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    """An upstream's JSON may escape half of a surrogate pair (`\\ud800`): valid JSON, not encodable as UTF-8. The
    streamed cascade relays it escaped, as the JSON reply does, instead of failing to encode it (a 500)."""
    url = gateway()
    text = "half \ud800 a pair"
    fake.script["cheap"] = replying(completion(text))
    fake.script[JUDGE] = replying(completion("9"))
    body = {"model": "cascade", "messages": [{"role": "user", "content": PROSE}]}
    chunks = _streamed(url, body)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == text
    reply = loopback.post(url + "/v1/chat/completions", json=body)
    assert reply.json()["choices"][0]["message"]["content"] == text

def test_a_streamed_answer_carries_every_choice_tool_call_and_log_prob_of_the_accepted_completion(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    """A streaming client gets exactly the accepted completion: with `n = 2` both choices, a tool call (the
    OpenAI client's stream helper assembles it), the log-probs it asked for; only the first choice was streamed,
    as text, before."""
    url = gateway()
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    tokens = {"content": [{"token": "Hi", "logprob": -0.1, "top_logprobs": []}]}
    two = json.loads(completion("Hi", logprobs=tokens))
    two["choices"].append({"index": 1, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                           "finish_reason": "tool_calls", "logprobs": None})
    fake.script["cheap"] = replying(json.dumps(two).encode())
    fake.script[JUDGE] = replying(completion("9"))
    body = {"model": "cascade", "messages": [{"role": "user", "content": PROSE}], "n": 2, "logprobs": True}
    accepted = loopback.post(url + "/v1/chat/completions", json=body).json()["choices"]
    assert [c["index"] for c in accepted] == [0, 1] and accepted[1]["message"]["tool_calls"] == [call]
    chunks = _streamed(url, body)
    streamed: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            got = streamed.setdefault(choice["index"], {"content": "", "tool_calls": [], "logprobs": None})
            got["content"] += choice["delta"].get("content") or ""
            got["tool_calls"] += [{k: v for k, v in c.items() if k != "index"}
                                  for c in choice["delta"].get("tool_calls") or []]
            got["logprobs"] = choice.get("logprobs") or got["logprobs"]
            got["finish_reason"] = choice.get("finish_reason") or got.get("finish_reason")
    assert streamed == {
        0: {"content": "Hi", "tool_calls": [], "logprobs": tokens, "finish_reason": "stop"},
        1: {"content": "", "tool_calls": [call], "logprobs": None, "finish_reason": "tool_calls"},
    }
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
    with client.beta.chat.completions.stream(model="cascade", messages=body["messages"], n=2) as stream:
        final = stream.get_final_completion()
    assert final.choices[1].message.tool_calls[0].function.arguments == call["function"]["arguments"]
    assert final.choices[0].message.content == "Hi"

def test_a_streamed_answer_carries_the_completions_own_fields_on_every_chunk(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    """A named router's stream is the accepted completion's: each chunk has its `id`, `created`,
    `system_fingerprint` and `service_tier` (and a provider's own field), as the upstream's own stream would, and
    the openai client reads them as it reads the unstreamed completion's. They were left out but for `id` and
    `created`."""
    url = gateway()
    answer = json.loads(completion("Hi"))
    answer.update(created=1700000000, system_fingerprint="fp_0123", service_tier="default", provider="fake")
    fake.script["cheap"] = replying(json.dumps(answer).encode())
    fake.script[JUDGE] = replying(completion("9"))
    client = openai_client(url + "/v1", api_key="unused", max_retries=0, timeout=30)
    messages = [{"role": "user", "content": PROSE}]
    whole = client.chat.completions.create(model="cascade", messages=messages)
    assert (whole.system_fingerprint, whole.service_tier) == ("fp_0123", "default")
    chunks = list(client.chat.completions.create(model="cascade", messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    assert len(chunks) == 3 and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 15
    for chunk in chunks:
        assert (chunk.id, chunk.created, chunk.model) == ("chatcmpl-scripted", 1700000000, "cheap")
        assert (chunk.object, chunk.system_fingerprint, chunk.service_tier) == \
            ("chat.completion.chunk", "fp_0123", "default")
        assert (chunk.model_extra or {}).get("provider") == "fake"


def test_a_completions_large_field_is_streamed_once_on_the_first_chunk(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    """A top-level field that is an object, an array or a long text (vLLM's `prompt_logprobs`) goes on the first
    chunk only, as vLLM streams it; scalars stay on every chunk, and OpenAI's own (`id`, `system_fingerprint`)
    whatever their length: a 300-character `id` was on the first chunk only, so the openai client read `id` None
    from the others. Every field was copied into every chunk: a 7 MB field with `n` = 30 made a 224 MB stream.
    Here, with three choices and a 200 kB field, the stream is under twice the completion."""
    url = gateway()
    answer = json.loads(completion("Hi"))
    answer["choices"] = [{**answer["choices"][0], "index": i} for i in range(3)]
    big = ["x" * 1000] * 200
    long_id, fingerprint = "chatcmpl-" + "a" * 300, "fp_" + "0" * 300
    answer.update(id=long_id, system_fingerprint=fingerprint, prompt_logprobs=big, kv_params={"k": 1},
                  note="n" * 300)
    raw = json.dumps(answer).encode()
    fake.script["cheap"] = replying(raw)
    fake.script[JUDGE] = replying(completion("9"))
    body = {"model": "cascade", "stream": True, "messages": [{"role": "user", "content": PROSE}],
            "stream_options": {"include_usage": True}}
    reply = loopback.post(url + "/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    chunks = [json.loads(line[6:]) for line in reply.text.split("\n\n") if line.startswith("data: {")]
    assert len(chunks) == 5 and len(reply.content) < 2 * len(raw)
    once = {"prompt_logprobs": big, "kv_params": {"k": 1}, "note": "n" * 300}
    assert {k: chunks[0].get(k) for k in once} == once
    for chunk in chunks[1:]:
        assert not set(once) & set(chunk), sorted(chunk)
    assert all(chunk["system_fingerprint"] == fingerprint for chunk in chunks)
    client = openai_client(url + "/v1", api_key="unused", max_retries=0, timeout=30)
    streamed = list(client.chat.completions.create(model="cascade", messages=body["messages"], stream=True))
    assert (streamed[0].model_extra or {}).get("kv_params") == {"k": 1}
    assert [(c.id, c.system_fingerprint) for c in streamed] == [(long_id, fingerprint)] * len(streamed)


def test_an_accepted_completions_error_field_is_not_streamed(gateway: Callable[..., str], fake: ScriptedFake) -> None:
    """A completion with a top-level `error` field (a provider's warning beside its answer) that the cascade
    accepted is an answer: streamed, the openai client reads it as it reads it unstreamed. The field was copied
    into every chunk, where the client reads a stream's failure and raises `APIError`."""
    url = gateway()
    answer = json.loads(completion("Hi"))
    answer["error"] = {"message": "partial: provider warning", "code": 0}
    fake.script["cheap"] = replying(json.dumps(answer).encode())
    fake.script[JUDGE] = replying(completion("9"))
    client = openai_client(url + "/v1", api_key="unused", max_retries=0, timeout=30)
    messages = [{"role": "user", "content": PROSE}]
    assert client.chat.completions.create(model="cascade", messages=messages).choices[0].message.content == "Hi"
    chunks = list(client.chat.completions.create(model="cascade", messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi"
    assert not any("error" in (c.model_extra or {}) for c in chunks)


def test_a_tool_call_is_an_answer_the_judge_reads_and_its_tokens_are_counted(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    """A model that answers with a tool call (content null) has answered: the cascade's judge reads the call (here it
    scores 9 only when it sees it, 1 for an empty answer, as a real judge would), so the cheap model's good call is
    accepted rather than always escalated; and without `usage` from the upstream the call's own tokens are counted
    (they were 0: the answer's text was its content only)."""
    url = gateway()
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}
    answer = json.loads(completion(None))
    answer["choices"][0]["message"]["tool_calls"] = [call]
    answer["choices"][0]["finish_reason"] = "tool_calls"
    del answer["usage"]
    fake.script["cheap"] = replying(json.dumps(answer).encode())

    def judge(request: dict[str, Any]) -> tuple[int, str, list[bytes]]:
        shown = request["messages"][-1]["content"]
        return 200, "application/json", [completion("9" if 'get_weather({"city": "Paris"' in shown else "1")]

    fake.script[JUDGE] = judge
    body = {"model": "cascade", "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}
    reply = loopback.post(url + "/v1/chat/completions", json=body).json()
    assert reply["model"] == "cheap" and reply["choices"][0]["message"]["tool_calls"] == [call]
    assert reply["bandit_router"]["steps"][0]["action"] == "accept"
    assert reply["bandit_router"]["calls"][0]["output_tokens"] >= 8  # the call's name and arguments, estimated
    reply = loopback.post(url + "/v1/chat/completions", json={**body, "model": "cheap"})  # a named model's call record
    record = stored(url, reply.headers["x-decision-id"])["call"]
    deadline = time.monotonic() + 10
    while record is None and time.monotonic() < deadline:
        time.sleep(0.02)
        record = stored(url, reply.headers["x-decision-id"])["call"]
    assert record["usage"] == "estimated" and record["output_tokens"] >= 8

def test_the_logprob_signal_needs_no_judge(gateway: Callable[..., str], fake: ScriptedFake) -> None:
    url = gateway()
    before = fake.calls[JUDGE]
    completion, chain, _ = ask(url, "confident", PROSE)
    assert completion.model == "cheap" and chain["steps"][0]["confidence"] == pytest.approx(
        quality_in(completion.choices[0].message.content), abs=1e-3)
    completion, chain, _ = ask(url, "confident", CODE)
    assert completion.model == "strong" and chain["escalations"] == 1
    assert fake.calls[JUDGE] == before



@pytest.mark.parametrize("logprobs", [
    '{"content": [{"token": "a", "logprob": 1%s}]}' % ("0" * 400),  # an integer no float holds
    "null", '{"content": null}', '{"content": "a"}', '{"content": [{"token": "a", "logprob": null}]}',
    '{"content": [{"token": "a", "logprob": "likely"}]}', '{"content": [{"token": "a"}]}',
], ids=["huge-int", "null", "content-null", "content-str", "logprob-null", "logprob-str", "logprob-missing"])
def test_log_probs_that_are_not_numbers_are_not_confident_never_a_500(
    gateway: Callable[..., str], fake: ScriptedFake, logprobs: str
) -> None:
    """A reply whose log-probs cannot be read is an answer without a confidence (escalate), not a 500."""
    url = gateway()
    field = b'"logprobs": ' + logprobs.encode() + b', "finish_reason"'
    answer = completion("cheap's answer").replace(b'"finish_reason"', field)
    fake.script["cheap"] = replying(answer)
    reply = loopback.post(url + "/v1/chat/completions",
                          json={"model": "confident", "messages": [{"role": "user", "content": PROSE}]})
    assert reply.status_code == 200, reply.text
    chain = reply.json()["bandit_router"]
    assert chain["steps"][0]["confidence"] is None and chain["steps"][0]["action"] == "escalate"
    assert reply.json()["model"] == "strong" and chain["calls"][0]["cost_usd"] > 0  # the cheap answer was paid for


@pytest.mark.parametrize("alias", ["cascade", "learned", "auto"])
def test_the_models_knob_is_checked_and_never_silently_ignored_by_a_named_router(
    gateway: Callable[..., str], fake: ScriptedFake, alias: str
) -> None:
    """A named router calls its configured models (a chain's positions, an LLM router's candidates): `models` that
    allows all of them is fine (a client may send it with every request), one that leaves one out cannot be
    honoured and is a 400 naming it, an unknown name a 400 as for the bandit's alias; no model is called then. The
    judge and the routing model are the deployment's, not candidates: a knob need not list them (documented)."""
    url = gateway()
    before = sum(fake.calls.values())

    def ask_with(models: list[str] | None = None, header: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"model": alias, "messages": [{"role": "user", "content": PROSE}]}
        if models is not None:
            body["bandit_router"] = {"models": models}
        headers = {} if header is None else {"x-bandit-router-models": header}
        return loopback.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30)

    for models, header in ((["nope"], None), (["cheap"], None), (None, "strong"), (["cheap", JUDGE], None)):
        reply = ask_with(models, header)
        assert reply.status_code == 400, (models, header, reply.text)
        error = reply.json()["error"]
        where = "bandit_router.models" if header is None else "x-bandit-router-models"  # where the knob came from
        assert error["param"] == where and error["type"] == "invalid_request_error"
        assert ("nope" if models == ["nope"] else "strong" if models else "cheap") in error["message"]
    assert sum(fake.calls.values()) == before
    helper = "chooser" if alias == "auto" else JUDGE
    asked = fake.calls[helper]
    assert ask_with(["strong", "cheap"]).status_code == 200
    assert fake.calls[helper] > asked  # the knob is about the models that may answer: not the judge, the chooser
    assert ask_with(None, "cheap,strong,fake-judge").status_code == 200


def test_the_judge_and_the_routing_llm_see_the_question_after_a_long_system_prompt(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    """A request longer than what the judge (12,000 characters) or the routing LLM (8,000) is shown, here a long
    system prompt before the question: both see its end, where the question is, and not its start alone. The
    judge scores 9 only when it sees the question; the routing LLM names `strong` for code."""
    url = gateway()
    question = "Fix the bug in this Python function: def mean(xs): return sum(xs) / len(x)"

    def judge(request: dict[str, Any]) -> tuple[int, str, list[bytes]]:
        return 200, "application/json", [completion("9" if question in request["messages"][-1]["content"] else "1")]

    fake.script[JUDGE] = judge
    fake.script["cheap"] = replying(completion("def mean(xs): return sum(xs) / len(xs)"))
    system = "You are a friendly assistant who writes poems about the sea. " * 400  # 24,400 characters of prose
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    reply = loopback.post(url + "/v1/chat/completions", json={"model": "cascade", "messages": messages}).json()
    assert reply["bandit_router"]["steps"][0]["confidence"] == pytest.approx(8 / 9) and reply["model"] == "cheap"
    reply = loopback.post(url + "/v1/chat/completions", json={"model": "auto", "messages": messages}).json()
    assert reply["bandit_router"]["named"] == "strong"  # it read the code question, not only the poems

def test_a_judges_and_a_routing_llms_calls_take_their_catalog_entrys_judge_params(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    """The judge's and the routing LLM's calls send `temperature = 0, max_tokens = 20` unless the model's catalog
    entry gives `judge_params`, which replaces them (a reasoning model refuses `max_tokens` or `temperature = 0`):
    here the judge's fields are the entry's own, and the chooser's `{}` sends the messages alone. So do the
    gateway's `[judge]` calls (default `temperature = 0`)."""
    seen: dict[str, dict[str, Any]] = {}

    def recording(model: str, reply: bytes) -> Any:
        def script(request: dict[str, Any]) -> tuple[int, str, list[bytes]]:
            seen[model] = request
            return 200, "application/json", [reply]
        return script

    fake.script[JUDGE] = recording(JUDGE, completion("9"))
    fake.script["chooser"] = recording("chooser", completion("strong"))
    for model in ("cheap", "strong"):  # scripted: the fake's seeded noise is left to the tests after this one
        fake.script[model] = replying(completion(f"{model} answers"))
    url = gateway()
    for alias in ("cascade", "auto"):
        loopback.post(url + "/v1/chat/completions", json={"model": alias, "messages": [{"role": "user",
                                                                                         "content": CODE}]})
    assert {k: v for k, v in seen[JUDGE].items() if k not in ("model", "messages")} == {"temperature": 0,
                                                                                          "max_tokens": 20}
    assert set(seen["chooser"]) - {"model", "messages"} == {"temperature", "max_tokens"}
    own = {JUDGE: {"max_completion_tokens": 400, "reasoning_effort": "low"}, "chooser": {}}
    specs = tuple(ModelSpec(n, *PRICES[n], tags={"family": "fake"}, base_url=fake.url + "/v1",  # type: ignore[attr-defined]
                            route=n in ("cheap", "strong"), judge_params=own.get(n)) for n in PRICES)
    url = gateway(models=specs)
    for alias in ("cascade", "auto"):
        reply = loopback.post(url + "/v1/chat/completions",
                              json={"model": alias, "messages": [{"role": "user", "content": CODE}]})
        assert reply.status_code == 200, reply.text
    assert {k: v for k, v in seen[JUDGE].items() if k not in ("model", "messages")} == own[JUDGE]
    assert set(seen["chooser"]) == {"model", "messages"}
    seen.clear()  # the gateway's own judge ([judge]: it scores routed answers) takes them too
    url = gateway(models=specs, judge_model=JUDGE, judge_sample_rate=1.0, judge_delay_s=0.0)
    reply = loopback.post(url + "/v1/chat/completions", json={"model": "router", "messages": [{"role": "user",
                                                                                             "content": CODE}]})
    assert reply.status_code == 200, reply.text
    deadline = time.monotonic() + 10
    while JUDGE not in seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert {k: v for k, v in seen[JUDGE].items() if k not in ("model", "messages")} == own[JUDGE]


def test_a_judge_that_spent_its_token_limit_thinking_is_named_once_in_the_log(
    gateway: Callable[..., str], fake: ScriptedFake, caplog: pytest.LogCaptureFixture
) -> None:
    """A reasoning model asked with `max_tokens = 20` may answer nothing (`finish_reason = "length"`): every answer
    then reads as "not confident" and escalates. The log says so once, naming the model and `judge_params`."""
    from bandit_router.gateway import judge as judge_module

    judge_module._CUT_SHORT_SAID.discard(JUDGE)
    fake.script[JUDGE] = replying(completion("", finish_reason="length"))
    fake.script["cheap"] = replying(completion("an answer"))
    fake.script["strong"] = replying(completion("a better answer"))
    url = gateway()
    with caplog.at_level(logging.WARNING, logger="bandit_router.gateway"):
        for _ in range(3):
            reply = loopback.post(url + "/v1/chat/completions", json={"model": "cascade", "messages": [
                {"role": "user", "content": PROSE}]}).json()
            assert reply["model"] == "strong"  # not confident: escalated
    said = [r.getMessage() for r in caplog.records if "token limit" in r.getMessage()]
    assert len(said) == 1 and JUDGE in said[0] and "judge_params" in said[0]


# -- failures ---------------------------------------------------------------------------------------------------
def test_an_upstream_failure_mid_chain_falls_back_without_a_500(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    url = gateway()
    fake.set("strong", "fail")
    completion, chain, decision_id = ask(url, "cascade", CODE)  # escalated to a failing model: cheap's answer
    assert completion.model == "cheap" and chain["escalations"] == 1
    assert chain["calls"][-1]["model"] == "strong" and "(500)" in chain["calls"][-1]["error"]
    assert stored(url, decision_id)["model"] == "cheap"
    fake.set(JUDGE, "fail")
    fake.set("strong")
    completion, chain, _ = ask(url, "cascade", PROSE)  # no score: not confident, escalate
    assert completion.model == "strong" and chain["calls"][1]["error"] and chain["steps"][0]["confidence"] is None
    fake.set("cheap", "fail")
    fake.set("strong", "fail")
    reply = loopback.post(url + "/v1/chat/completions",
                          json={"model": "cascade", "messages": [{"role": "user", "content": PROSE}]})
    assert reply.status_code == 502 and reply.json()["error"]["type"] == "upstream_error"
    assert loopback.get(url + "/v1/stats").json()["named_routers"]["cascade"]["failed_requests"] == 1


def refused_as_the_upstream_said(url: str, alias: str, model: str) -> None:
    """A request to `alias` for a code prompt is refused with the 400 `model` gave (the fake's context window
    error), its own error body: the openai client's `BadRequestError` with the upstream's `code` and `param`, as
    the bandit's alias passes it through, so that a client that trims its history on `context_length_exceeded`
    does so behind a named router too."""
    client = openai_client(url + "/v1", api_key="unused", max_retries=0, timeout=30)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=alias, messages=[{"role": "user", "content": CODE}])
    assert refused.value.code == "context_length_exceeded" and refused.value.param == "messages"
    assert refused.value.body == {"message": f"This model's maximum context length is exceeded ({model})",
                                  "type": "invalid_request_error", "param": "messages",
                                  "code": "context_length_exceeded"}


def strict_json(raw: bytes) -> Any:
    """`raw` read as JSON is written: `NaN` and `Infinity`, which Python's json reads, refused."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(raw, parse_constant=refuse)


@pytest.mark.parametrize("alias", ["router", "cascade"])
def test_an_upstream_4xx_with_numbers_json_has_not_is_passed_through_as_json(
    gateway: Callable[..., str], fake: ScriptedFake, alias: str
) -> None:
    """An upstream's error body in OpenAI's shape with `NaN`, `Infinity` or a number too large for a float (which
    Python's json reads) reaches the caller with null in their place, its words kept: the body was written back
    with `NaN` and `Infinity` in it, which is not JSON (a strict parser, JavaScript's `JSON.parse`, refuses it)."""
    url = gateway()
    raw = b'{"error": {"message": "x", "type": "invalid_request_error", "code": NaN, "param": -Infinity, "n": 1e400}}'
    fake.script["cheap"] = fake.script["strong"] = replying(raw, 400)
    reply = loopback.post(url + "/v1/chat/completions", timeout=30,
                          json={"model": alias, "messages": [{"role": "user", "content": PROSE}]})
    assert reply.status_code == 400
    assert strict_json(reply.content) == {"error": {"message": "x", "type": "invalid_request_error", "code": None,
                                                    "param": None, "n": None}}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("alias", ["router", "cascade"])
def test_an_answer_with_numbers_json_has_not_reaches_the_caller_as_json(
    gateway: Callable[..., str], fake: ScriptedFake, alias: str, stream: bool
) -> None:
    """An upstream's 200 answer with `NaN`, `-Infinity` or a number too large for a float (`1e400`, valid JSON that
    Python reads as infinity) reaches the caller with null in their place, its words kept, unstreamed and as
    events: every reply was written with `NaN` and `Infinity` in it, which a strict parser refuses."""
    url = gateway()
    raw = completion("Hi")[:-1] + b', "weird": NaN, "low": -Infinity, "big": 1e400}'
    chunk = (b'data: {"id":"s","object":"chat.completion.chunk","created":1,"model":"m","weird":NaN,"low":-Infinity,'
             b'"big":1e400,"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}\n\n')
    fake.script["cheap"] = fake.script["strong"] = lambda request: (
        (200, "text/event-stream", [chunk, b"data: [DONE]\n\n"]) if request.get("stream")
        else (200, "application/json", [raw]))
    fake.script[JUDGE] = replying(completion("9"))
    reply = loopback.post(url + "/v1/chat/completions", timeout=30,
                          json={"model": alias, "stream": stream, "messages": [{"role": "user", "content": PROSE}]})
    assert reply.status_code == 200
    if stream:
        events = [strict_json(e[len("data: "):].encode()) for e in reply.text.split("\n\n") if e.startswith("data: {")]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in events if c["choices"]) == "Hi"
        assert all(c.get(k) is None for c in events for k in ("weird", "low", "big"))
    else:
        body = strict_json(reply.content)
        assert body["choices"][0]["message"]["content"] == "Hi"
        assert (body["weird"], body["low"], body["big"]) == (None, None, None)


VLLM_FLAT = {"object": "error", "message": "This model's maximum context length is 2048 tokens.",
             "type": "BadRequestError", "param": None, "code": 400}
"""vLLM's error body until mid-2025 (vllm-project/vllm#22099): flat, its `code` the HTTP status."""


@pytest.mark.parametrize("alias", ["router", "cascade"])
@pytest.mark.parametrize(("body", "message", "param", "code"), [
    (VLLM_FLAT, "This model's maximum context length is 2048 tokens.", None, "upstream_rejected"),
    ({**VLLM_FLAT, "param": "messages", "code": "context_length_exceeded"},
     "This model's maximum context length is 2048 tokens.", "messages", "context_length_exceeded"),
    ({"error": "model 'llama3' not found, try pulling it first"}, "model 'llama3' not found, try pulling it first",
     None, "upstream_rejected"),
    ({"detail": "Input validation error"}, "Input validation error", None, "upstream_rejected"),
    ({"unexpected": 1}, "the upstream refused the request (400)", None, "upstream_rejected"),
    ({"message": "   ", "detail": "\n\t"}, "the upstream refused the request (400)", None, "upstream_rejected"),
    ({"message": " ", "param": "messages", "detail": "Input validation error"}, "Input validation error", None,
     "upstream_rejected"),
    ("not json", "the upstream refused the request (400)", None, "upstream_rejected"),
])
def test_an_upstream_4xx_outside_openais_shape_keeps_the_upstreams_words(
    gateway: Callable[..., str], fake: ScriptedFake, alias: str, body: Any, message: str, param: str | None,
    code: str
) -> None:
    """An upstream that refuses a request (400) with an error body in another shape than OpenAI's (vLLM's flat
    one, a bare text under `error` or `detail`) gives the client its words, in OpenAI's shape: the openai client's
    `BadRequestError` says what the upstream said, with its `param` and `code` when they are text. The message was
    only `cheap: the upstream refused the request (400)`; a body without words (or with blank ones, which replaced
    that by `cheap:    `) still says that."""
    url = gateway()
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    fake.script["cheap"] = fake.script["strong"] = replying(raw, 400)
    client = openai_client(url + "/v1", api_key="unused", max_retries=0, timeout=30)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=alias, messages=[{"role": "user", "content": PROSE}])
    said = refused.value.body
    assert isinstance(said, dict) and said["type"] == "invalid_request_error", said
    assert said["message"] in (f"cheap: {message}", f"strong: {message}"), said
    assert (said["param"], said["code"]) == (param, code)


def test_a_model_refusing_an_escalation_leaves_the_paid_answer_and_a_refusal_before_any_answer_is_the_clients(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    url = gateway()
    fake.set("strong", "reject")  # a 400 that blames the request: e.g. the prompt is too long for this model
    completion, chain, decision_id = ask(url, "cascade", CODE)  # escalated, refused: cheap's answer, not a 400
    assert completion.model == "cheap" and chain["escalations"] == 1
    assert "(400)" in chain["calls"][-1]["error"]
    assert stored(url, decision_id)["model"] == "cheap"
    counts = loopback.get(url + "/v1/stats").json()["named_routers"]["cascade"]
    assert counts["requests"] == 1 and counts["failed_calls"] == 1 and counts["spend_usd"] > 0
    fake.set("strong")
    fake.set("cheap", "reject")  # the first model refuses: nothing answered, the client's 400 goes back to it
    refused_as_the_upstream_said(url, "cascade", "cheap")
    counts = loopback.get(url + "/v1/stats").json()["named_routers"]["cascade"]
    assert counts["requests"] == 2 and counts["failed_requests"] == 1 and counts["failed_calls"] == 2  # counted


def test_a_refusal_after_a_failed_call_is_the_clients_and_both_calls_are_counted(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    """The cascade's first model fails (a 500), the next refuses the request itself (a 400) before any model
    answered: the client gets the 400, and the request counts as failed with both of its calls."""
    url = gateway()
    fake.set("cheap", "fail")
    fake.set("strong", "reject")
    refused_as_the_upstream_said(url, "cascade", "strong")
    counts = loopback.get(url + "/v1/stats").json()["named_routers"]["cascade"]
    assert counts["requests"] == 1 and counts["failed_requests"] == 1
    assert counts["answer_calls"] == 2 and counts["failed_calls"] == 2


def test_a_refusal_of_the_llm_routers_named_model_is_the_clients_and_the_routing_call_is_counted(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    """The routing LLM names `strong` for code; `strong` refuses the request itself (a 400): the client gets the
    400, and the request counts as failed with the routing call it paid for."""
    url = gateway()
    fake.set("strong", "reject")
    refused_as_the_upstream_said(url, "auto", "strong")
    counts = loopback.get(url + "/v1/stats").json()["named_routers"]["auto"]
    assert counts["requests"] == 1 and counts["failed_requests"] == 1 and counts["router_calls"] == 1
    assert counts["answer_calls"] == 1 and counts["failed_calls"] == 1 and counts["spend_usd"] > 0
    fake.set("strong")
    completion, info, _ = ask(url, "auto", CODE)  # the same request, accepted: answered, nothing else changed
    assert completion.model == "strong" and info["named"] == "strong"



def test_a_named_router_refuses_at_once_when_the_service_does_not_store_and_pays_for_no_call(
    gateway: Callable[..., str], fake: ScriptedFake, tmp_path: Path
) -> None:
    """The service refuses requests (here: a newer version migrated its database under it; also while it starts or
    while the database does not answer): a named router's request is a 503 before any call, as the bandit's alias
    and a named model are, not after a chain it has paid for and can neither store nor count."""
    import sqlite3

    from bandit_router.store.migrations import SCHEMA_VERSION

    url = gateway()
    with sqlite3.connect(tmp_path / "n0.db") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    deadline = time.monotonic() + 10
    while loopback.get(url + "/readyz").status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    before = sum(fake.calls.values())
    for model in ("router", "cheap", "cascade", "learned", "auto"):
        reply = loopback.post(url + "/v1/chat/completions",
                              json={"model": model, "messages": [{"role": "user", "content": CODE}]})
        assert reply.status_code == 503 and reply.json()["error"]["type"] == "service_unavailable", (model, reply.text)
    assert sum(fake.calls.values()) == before

def test_a_named_router_refuses_at_once_while_postgresql_is_unreachable(
    fake: ScriptedFake, pg_url: str, pg_server: PgServer
) -> None:
    """The outage the bandit's alias meets by failing its first write, before any call: PostgreSQL refusing
    connections. A named router, which writes only after its chain, asks the same question first (the maintenance
    thread's probe, twice a second) and answers 503 without paying for a call it could not store."""
    fake.behaviour.clear()
    fake.script.clear()
    specs = tuple(ModelSpec(n, *PRICES[n], tags={"family": "fake"}, base_url=fake.url + "/v1",  # type: ignore[attr-defined]
                            route=n in ("cheap", "strong")) for n in PRICES)  # fmt: skip
    server = ServerThread(create_app(Settings(db=DatabaseURL(pg_url), models=specs, routers=ROUTERS, seed=11)))
    url = server.wait_ready()
    try:
        pg_server.down()
        try:
            deadline = time.monotonic() + 10
            while loopback.get(url + "/readyz").status_code != 503:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            before = sum(fake.calls.values())
            for model in ("router", "cascade", "learned", "auto"):
                reply = loopback.post(url + "/v1/chat/completions", timeout=30,
                                      json={"model": model, "messages": [{"role": "user", "content": CODE}]})
                assert reply.status_code == 503, (model, reply.text)
            assert sum(fake.calls.values()) == before
        finally:
            pg_server.up()
    finally:
        server.stop()


# -- learned escalation -----------------------------------------------------------------------------------------
def test_learned_escalation_learns_which_kinds_to_escalate(gateway: Callable[..., str]) -> None:
    """λ = 400: escalating costs ≈ 0.2 quality points (the strong model's ≈ 0.0005 USD), so the best is to accept
    the cheap prose answers (0.9 vs ≈ 0.75) and to escalate the code ones (0.15 vs ≈ 0.75). After 140 requests
    with feedback (the answer's quality), the last 60 escalate ≥ 80% of code and ≤ 20% of prose prompts."""
    url = gateway()
    escalated: dict[str, list[bool]] = {"code": [], "prose": []}
    for i in range(200):
        kind, prompt = ("code", f"{CODE} #{i}") if i % 2 else ("prose", f"{PROSE} #{i}")
        completion, chain, decision_id = ask(url, "learned", prompt, extra_body={"bandit_router": {"cost_weight": 400}})
        step = chain["steps"][0]
        assert 0 < step["probability"] <= 1 and 0 < step["p_escalate"] < 1  # propensities logged
        escalated[kind].append(step["action"] == "escalate")
        assert feedback(url, decision_id, quality_in(completion.choices[0].message.content) or 0.0)["status"] == (
            "unrouted")
    assert sum(escalated["code"][-30:]) >= 24 and sum(escalated["prose"][-30:]) <= 6, escalated
    stats = loopback.get(url + "/v1/stats").json()["named_routers"]["learned"]
    assert stats["learned_chains"] == 200


# -- an LLM as the router ---------------------------------------------------------------------------------------
def test_the_llm_router_picks_per_its_judgement_and_falls_back_to_the_policy(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    url = gateway()
    completion, info, decision_id = ask(url, "auto", CODE)
    assert completion.model == "strong" and info["named"] == "strong"
    decision = stored(url, decision_id)
    assert decision["policy"] == "llm-router:auto" and decision["probability"] == 1.0
    assert decision["chain"]["calls"] == info["calls"] and decision["chain"]["named"] == "strong"  # stored
    assert "reply" not in decision["chain"]  # the routing LLM's text is not stored
    assert info["calls"][0]["role"] == "router" and info["cost_usd"] == pytest.approx(
        sum(c["cost_usd"] for c in info["calls"]))  # the routing LLM's call is paid and recorded
    completion, info, _ = ask(url, "auto", PROSE)
    assert completion.model == "cheap" and info["named"] == "cheap"
    completion, info, decision_id = ask(url, "auto", MATH)  # "Hard to say.": the policy's choice
    assert info["named"] is None and completion.model in ("cheap", "strong")
    decision = stored(url, decision_id)
    assert not decision["policy"].startswith("llm-router") and decision["model"] == completion.model
    fake.set("chooser", "fail")
    completion, info, _ = ask(url, "auto", CODE)  # the routing LLM is down: the policy's choice, no 500
    assert info["named"] is None and info["calls"][0]["error"]
    stats = loopback.get(url + "/v1/stats").json()["named_routers"]["auto"]
    assert stats["parsed"] == 2 and stats["fallbacks"] == 2 and stats["router_calls"] == 4


def test_judge_and_router_models_with_route_false_are_never_routed_to(gateway: Callable[..., str]) -> None:
    url = gateway()
    answered = {ask(url, "router", f"{PROSE} #{i}")[0].model for i in range(30)}
    assert answered <= {"cheap", "strong"}
    reply = loopback.post(url + "/v1/chat/completions", json={
        "model": "router", "messages": [{"role": "user", "content": PROSE}], "bandit_router": {"models": [JUDGE]}})
    assert reply.status_code == 400 and "routable" in reply.json()["error"]["message"]
    # a misspelt name in the knob is hinted at a model the request can take: not a route = false one (refused as
    # above), and for a named router one of its models (the knob must list them all)
    for alias, models, hint in (("router", ["fake-judg"], None), ("router", ["stronk"], "strong"),
                                ("cascade", ["cheap", "strong", "fake-judg"], None),
                                ("cascade", ["cheap", "strong", "stronk"], "strong")):
        reply = loopback.post(url + "/v1/chat/completions", json={
            "model": alias, "messages": [{"role": "user", "content": PROSE}], "bandit_router": {"models": models}})
        message = reply.json()["error"]["message"]
        assert reply.status_code == 400 and "unknown or retired models" in message, (alias, models, message)
        assert ("did you mean" not in message) if hint is None else (f"(did you mean {hint}?)" in message), message


def test_openai_clients_see_the_named_routers_as_models(gateway: Callable[..., str]) -> None:
    url = gateway()
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
    ids = [m.id for m in client.models.list()]
    assert ids[:5] == ["router", "cascade", "confident", "learned", "auto"] and "cheap" in ids
    assert client.models.retrieve("cascade").id == "cascade"  # `GET /v1/models/{name}`, as listed


# -- x-bandit-router-attempts ---------------------------------------------------------------------------------------
def _attempts(url: str, model: str, prompt: str, stream: bool = False) -> tuple[str, int, list[dict[str, Any]]]:
    """(the model that answered, x-bandit-router-attempts, the reply's `bandit_router.calls` or [] for a gateway
    call) of one request, streamed or not."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}
    with loopback.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as reply:
        assert reply.status_code == 200, reply.read()
        text = reply.read().decode()
        headers = reply.headers
    if stream:
        chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        calls = next((c["bandit_router"]["calls"] for c in chunks if "bandit_router" in c), [])
        answered = chunks[0]["model"]
    else:
        completion = json.loads(text)
        calls, answered = completion.get("bandit_router", {}).get("calls", []), completion["model"]
    assert headers["x-bandit-router-model"] == answered
    return answered, int(headers["x-bandit-router-attempts"]), calls


def _answer_calls(calls: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """(model, answered) of each answer call of a chain: judge and routing calls left out."""
    return [(c["model"], not c.get("error")) for c in calls if c["role"] == "answer"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_attempts_counts_the_models_asked_for_an_answer_for_every_strategy(
    gateway: Callable[..., str], fake: ScriptedFake, stream: bool
) -> None:
    """`x-bandit-router-attempts` is how many models the request asked for an answer, answered or failed: the
    first choice and its fallbacks for the bandit's alias, 1 for a model the caller named, every model a cascade
    (fixed or learned) reached, every model an LLM router tried; a judge's or the routing LLM's calls are not
    attempts. `x-bandit-router-model` is the model whose answer the caller got."""
    url = gateway()
    assert _attempts(url, "cheap", PROSE, stream)[:2] == ("cheap", 1)  # the caller's model
    # a fixed cascade: accepted at once (one answer and a judge's call), escalated (two answers)
    answered, attempts, calls = _attempts(url, "cascade", PROSE, stream)
    assert (answered, attempts) == ("cheap", 1) and [c["role"] for c in calls] == ["answer", "judge"]
    answered, attempts, calls = _attempts(url, "cascade", CODE, stream)
    assert (answered, attempts) == ("strong", 2) and _answer_calls(calls) == [("cheap", True), ("strong", True)]
    for i in range(6):  # a learned cascade: whatever it chose, one attempt per model it asked
        answered, attempts, calls = _attempts(url, "learned", f"{CODE} #{i}", stream)
        assert attempts == len(_answer_calls(calls)) >= 1 and answered == _answer_calls(calls)[-1][0]
    # an LLM router: its named model (the routing call is not an attempt); the policy's choice on no name
    answered, attempts, calls = _attempts(url, "auto", CODE, stream)
    assert (answered, attempts) == ("strong", 1) and [c["role"] for c in calls] == ["router", "answer"]
    assert _attempts(url, "auto", MATH, stream)[1] == 1
    # failures: each model asked counts, the one that failed too
    fake.set("strong", "fail")
    answered, attempts, calls = _attempts(url, "cascade", CODE, stream)  # escalated to a failing model
    assert (answered, attempts) == ("cheap", 2) and _answer_calls(calls) == [("cheap", True), ("strong", False)]
    answered, attempts, calls = _attempts(url, "auto", CODE, stream)  # the named model failed, the other answered
    assert (answered, attempts) == ("cheap", 2) and _answer_calls(calls) == [("strong", False), ("cheap", True)]
    seen = set()
    for i in range(40):  # the bandit's alias: the first choice, then a fallback when it was the failing model
        answered, attempts, _ = _attempts(url, "router", f"{PROSE} #{i}", stream)
        assert answered == "cheap" and attempts in (1, 2)
        seen.add(attempts)
        if seen == {1, 2}:
            break
    assert seen == {1, 2}


# -- what a named router stores and reports -------------------------------------------------------------------------
def test_an_llm_router_whose_named_model_fails_stores_the_model_that_answered_with_probability_1(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    """The routing LLM names `cheap` (prose), `cheap` fails, `strong` answers: the decision is the LLM router's,
    probability 1 on `strong`, never the policy's (whose pmf did not choose it); feedback on it is `unrouted`."""
    url = gateway()
    fake.set("cheap", "fail")
    for i in range(8):
        completion, info, decision_id = ask(url, "auto", f"{PROSE} #{i}")
        assert completion.model == "strong" and info["named"] == "cheap"
        decision = stored(url, decision_id)
        assert decision["policy"] == "llm-router:auto" and decision["model"] == "strong"
        assert decision["probability"] == 1.0 and decision["probabilities"] == {"cheap": 0.0, "strong": 1.0}
        assert feedback(url, decision_id, 0.5)["status"] == "unrouted"


def test_an_llm_routers_policy_decision_whose_model_fails_is_stored_as_a_failed_try_and_learned_once(
    gateway: Callable[..., str], fake: ScriptedFake, tmp_path: Path
) -> None:
    """The routing LLM names no candidate (math), so the policy decides (`random`: 1/2 each, whatever it learns);
    `cheap` fails on every call, `strong` answers. Every policy decision is stored, as the gateway stores a try:
    one whose model failed with its call record (`server_error`, `attempt` 1, routed) and one feedback, the failure
    (`failure_quality`, source "gateway"), learned once by the bandit; the answer after it is the LLM router's
    (probability 1 on `strong`), its call record `attempt` 2 linked to the failed try by `request_id`. The request
    is counted once (`GET /v1/stats`, `/metrics`), its failed call once. The log's bandit decisions (the
    evaluation's view) are one per request, and their importance weights sum to N per model: |Σ 1{A = m}/p(m) − N|
    within 4.5 standard deviations (√Σ(1 − p)/p = √N here: a margin of 35 for N = 60). Storing only the policy
    decisions whose model answered kept no `cheap` row (Σ = 0, N·(1 − f) with f = 1: 60 off), n − k rows in all."""
    url = gateway(failure_quality=0.05, policy="random")
    fake.set("cheap", "fail")
    n = 60
    final: dict[str, list[tuple[str, bool]]] = {}
    for i in range(n):
        answer, info, decision_id = ask(url, "auto", f"{MATH} #{i}")
        assert info["named"] is None and answer.model == "strong"
        final[decision_id] = _answer_calls(info["calls"])
        feedback(url, decision_id, 0.9)  # learned for the policy's answered decision; `unrouted` for the router's
    failed = [d for d, calls in final.items() if calls == [("cheap", False), ("strong", True)]]
    k = len(failed)
    assert all(calls in ([("strong", True)], [("cheap", False), ("strong", True)]) for calls in final.values())
    assert 0 < k < n, k  # the policy chose both

    def learned(model: str) -> int:
        models = loopback.get(url + "/v1/models", timeout=10).json()["models"]
        return int(next(m for m in models if m["name"] == model)["feedback"])

    deadline = time.monotonic() + 10
    while learned("cheap") < k:
        assert time.monotonic() < deadline, learned("cheap")
        time.sleep(0.05)
    time.sleep(0.3)
    assert learned("cheap") == k and learned("strong") == n - k  # each failure learned once; the answers fed back

    for decision_id in final:
        decision = stored(url, decision_id)
        if decision_id not in failed:  # the policy's model answered: its decision, as before
            assert decision["policy"] == "random" and decision["model"] == "strong"
            assert decision["call"]["attempt"] == 1 and decision["call"]["request_id"] == decision_id
            continue
        assert decision["policy"] == "llm-router:auto" and decision["model"] == "strong"
        assert decision["probability"] == 1.0 and not decision["call"]["routed"]
        first = decision["call"]["request_id"]
        assert decision["call"]["attempt"] == 2 and first != decision_id
        tried = stored(url, first, 1)
        assert tried["policy"] == "random" and tried["model"] == "cheap" and tried["probability"] == 0.5
        assert {key: tried["call"][key] for key in ("status", "attempt", "request_id", "routed")} == {
            "status": "server_error", "attempt": 1, "request_id": first, "routed": True}
        assert [(r["source"], r["quality"], r["learned"]) for r in tried["feedback"]] == [("gateway", 0.05, True)]

    counts = loopback.get(url + "/v1/stats", timeout=10).json()
    auto = counts["named_routers"]["auto"]
    assert (auto["requests"], auto["fallbacks"], auto["router_calls"]) == (n, n, n)
    assert (auto["answer_calls"], auto["failed_calls"], auto["failed_requests"]) == (n + k, k, 0)
    assert auto["answered_by"] == {"strong": n} and counts["decisions"] == n + k
    assert_named_metrics_are_the_stats(url)
    assert f'bandit_router_upstream_calls_total{{model="cheap",status="server_error"}} {float(k)}' in (
        loopback.get(url + "/metrics", timeout=10).text)  # the failed call, once

    store = SQLiteStore(tmp_path / "n0.db")
    logged = recent_log(store, 10 * n)  # the bandit's first tries with their learned feedback
    store.close()
    assert len(logged) == n and sum(r.decision.model == "cheap" for r in logged) == k
    assert all(r.outcome is not None for r in logged)
    assert {r.outcome.quality for r in logged if r.outcome is not None and r.decision.model == "cheap"} == {0.05}
    for model in ("cheap", "strong"):
        weights = sum(1.0 / r.decision.probability for r in logged if r.decision.model == model)
        variance = sum((1.0 - (p := r.decision.probabilities[model])) / p for r in logged)
        assert abs(weights - n) <= 4.5 * variance**0.5, (model, weights, variance)


def test_a_shutdown_during_the_fallback_after_the_policys_model_failed_keeps_the_failed_try_and_counts_once(
    fake: ScriptedFake, tmp_path: Path
) -> None:
    """`share:strong = 0` makes the policy pick `cheap`, which fails; the server stops while `strong`, the fallback,
    hangs past the shutdown's grace (1 s). The request is a 503; the failed try is stored all the same (written in
    a task the gateway's close waits for): its decision, its `server_error` call record and its failure feedback;
    the request is counted once, as one no model answered, with the calls it made before the stop."""
    import contextlib
    import sqlite3
    import threading

    fake.behaviour.clear()
    fake.script.clear()
    specs = tuple(ModelSpec(n, *PRICES[n], base_url=fake.url + "/v1", route=n in ("cheap", "strong"))  # type: ignore[attr-defined]
                  for n in PRICES)
    db = tmp_path / "stop.db"
    settings = Settings(db=db, models=specs, routers=ROUTERS, seed=11,
                        budgets=BudgetConfig.from_mapping({"share": {"strong": 0}}))
    server = ServerThread(create_app(settings), timeout_graceful_shutdown=1)
    url = server.wait_ready()
    fake.set("cheap", "fail")
    fake.set("strong", "hang")
    before = fake.calls["strong"]
    replies: list[httpx.Response | Exception] = []

    def post() -> None:
        try:
            replies.append(loopback.post(url + "/v1/chat/completions", timeout=30,
                                      json={"model": "auto", "messages": [{"role": "user", "content": MATH}]}))
        except httpx.HTTPError as exc:
            replies.append(exc)

    asking = threading.Thread(target=post)
    asking.start()
    try:
        deadline = time.monotonic() + 10
        while fake.calls["strong"] == before:  # the fallback's call is in flight
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        server.stop()
        asking.join(30)
        fake.behaviour.clear()
    assert isinstance(replies[0], httpx.Response) and replies[0].status_code == 503, replies
    with contextlib.closing(sqlite3.connect(db)) as conn:
        decisions = conn.execute("SELECT decision_id, model, policy FROM decisions").fetchall()
        records = conn.execute("SELECT decision_id, request_id, attempt, routed, status FROM calls").fetchall()
        feedback_rows = conn.execute("SELECT decision_id, quality, source FROM feedback").fetchall()
        counted = conn.execute("SELECT sum(requests), sum(failed_requests), sum(router_calls), sum(answer_calls), "
                               "sum(failed_calls) FROM router_stats WHERE router = 'auto'").fetchone()
    assert [(model, policy) for _, model, policy in decisions] == [("cheap", "default")]
    tried = decisions[0][0]
    assert records == [(tried, tried, 1, 1, "server_error")]
    assert feedback_rows == [(tried, 0.0, "gateway")]
    assert counted == (1, 1, 1, 1, 1)  # the routing call and cheap's failure, paid before the stop


def test_an_llm_router_calls_no_model_once_the_deadline_passed_and_stores_or_learns_nothing_for_it(
    gateway: Callable[..., str], fake: ScriptedFake, tmp_path: Path
) -> None:
    """The routing LLM hangs until the request's deadline (1 s): the policy's model was then "called" with no time
    left, failed at once without any HTTP call ("no answer before the request's deadline"), and that was stored and
    learned as the model's failure (3 requests: 3 learned failures, 0 upstream calls), then the other candidate
    failed the same way. The gateway starts no try after the deadline; neither does an LLM router now: each
    request is a 504 that names the deadline, no candidate is called, no decision stored, nothing learned, and its
    count holds only the routing call. Not a change (the gateway does the same for a try it starts late): a model
    called with a little time left (the routing LLM took 1 of 2 s) and cut at the deadline is stored as that
    model's timeout and learned."""
    import contextlib
    import sqlite3

    url = gateway(deadline_s=1.0, policy="random")
    fake.set("chooser", "hang")
    before = fake.calls["cheap"] + fake.calls["strong"]
    replies = [loopback.post(url + "/v1/chat/completions", timeout=30,
                             json={"model": "auto", "messages": [{"role": "user", "content": f"{MATH} #{i}"}]})
               for i in range(3)]
    assert [r.status_code for r in replies] == [504] * 3
    time.sleep(0.5)  # a failed try's write (the task the reply does not wait for) would be done by now
    with contextlib.closing(sqlite3.connect(tmp_path / "n0.db")) as conn:
        assert conn.execute("SELECT count(*) FROM decisions").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM feedback").fetchone()[0] == 0
    auto = loopback.get(url + "/v1/stats", timeout=10).json()["named_routers"]["auto"]
    assert (auto["requests"], auto["failed_requests"], auto["router_calls"]) == (3, 3, 3)
    assert (auto["answer_calls"], auto["failed_calls"]) == (0, 3), auto  # the routing calls' timeouts alone
    assert fake.calls["cheap"] + fake.calls["strong"] == before
    assert all("deadline passed before the next model could be called" in r.json()["error"]["message"]
               for r in replies)

    url = gateway(deadline_s=2.0, policy="random")  # the routing LLM takes 1 s; each candidate 30 s
    fake.set("chooser", "slow", 1.0)
    fake.set("cheap", "hang")
    fake.set("strong", "hang")
    reply = loopback.post(url + "/v1/chat/completions", timeout=30,
                          json={"model": "auto", "messages": [{"role": "user", "content": MATH}]})
    assert reply.status_code == 504, reply.text
    with contextlib.closing(sqlite3.connect(tmp_path / "n1.db")) as conn:
        deadline = time.monotonic() + 10
        while not (rows := conn.execute("SELECT d.policy, c.status, c.attempt, f.quality, f.source FROM decisions d "
                                        "JOIN calls c USING (decision_id) JOIN feedback f USING (decision_id)"
                                        ).fetchall()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert rows == [("random", "timeout", 1, 0.0, "gateway")]


def test_a_cascade_calls_no_model_once_the_deadline_passed_and_counts_only_the_calls_it_made(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    """A fixed cascade went on "calling" its models after the request's deadline: each failed at once as a
    timeout without any HTTP call and was counted in `failed_calls` and listed in the chain as a call. As the
    gateway and the LLM router, it now starts no call with no time left: `cheap` hanging until the deadline (1 s) is
    a 504 naming the deadline, `strong` neither called nor counted (failed calls 1, it was 2); a judge hanging until
    the deadline leaves `cheap`'s answer, returned with the chain marked `out_of_time`, with no step, and `strong`
    not listed (it was, as a failed call). The rule escalates on no score, and that step was kept: counted as an
    escalation (`escalations` 1 in /v1/stats) for a model never called."""
    url = gateway(deadline_s=1.0)
    fake.set("cheap", "hang")
    strong_before = fake.calls["strong"]
    reply = loopback.post(url + "/v1/chat/completions", timeout=30,
                          json={"model": "cascade", "messages": [{"role": "user", "content": CODE}]})
    assert reply.status_code == 504, reply.text
    assert "deadline passed before the next model could be called" in reply.json()["error"]["message"]
    counts = loopback.get(url + "/v1/stats", timeout=10).json()["named_routers"]["cascade"]
    assert (counts["requests"], counts["failed_requests"], counts["answer_calls"], counts["failed_calls"]) == (
        1, 1, 1, 1), counts  # cheap's timeout alone

    fake.set("cheap")
    fake.set(JUDGE, "hang")
    completion, chain, decision_id = ask(url, "cascade", CODE)
    assert completion.model == "cheap"
    assert [(c["model"], c["role"], "error" in c) for c in chain["calls"]] == [("cheap", "answer", False),
                                                                             (JUDGE, "judge", True)], chain
    assert chain["out_of_time"] is True and chain["steps"] == [] and chain["escalations"] == 0, chain
    decision = stored(url, decision_id)
    assert decision["probabilities"] == {"cheap": 1.0, "strong": 0.0} and decision["chain"]["out_of_time"] is True
    counts = loopback.get(url + "/v1/stats", timeout=10).json()["named_routers"]["cascade"]
    assert (counts["requests"], counts["failed_requests"], counts["answer_calls"], counts["judge_calls"]) == (
        2, 1, 2, 1), counts
    assert counts["failed_calls"] == 2, counts  # cheap's timeout before, the judge's now
    assert (counts["escalations"], counts["escalated_requests"]) == (0, 0), counts
    assert fake.calls["strong"] == strong_before


def _failing_cheap(gateway: Callable[..., str], fake: ScriptedFake) -> str:
    """A gateway whose policy always picks `cheap` (`share:strong = 0`), which fails; `strong` answers after it."""
    url = gateway(budgets=BudgetConfig.from_mapping({"share": {"strong": 0}}))
    fake.set("cheap", "fail")
    return url


def _ask_auto(url: str, prompt: str, stream: bool = False) -> str:
    """The decision id of an answered `auto` request, streamed or not (read to its end)."""
    body = {"model": "auto", "messages": [{"role": "user", "content": prompt}], "stream": stream}
    with loopback.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as reply:
        assert reply.status_code == 200, reply.read()
        reply.read()
        return str(reply.headers["x-decision-id"])


def test_an_answer_after_a_failed_try_whose_decision_was_not_stored_is_the_requests_first_try(
    gateway: Callable[..., str], fake: ScriptedFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy's failed try is written in a task; when that write is refused (the database stalled, a
    PostgreSQL server restarting: here `Engine.store_decision` refuses it as it does while the service is not
    ready), the answer after it was stored all the same as `attempt` 2 with a `request_id` naming a decision that
    does not exist (`GET /v1/decisions/<request_id>` a 404). The answer now waits for that write and, as it
    failed, is the request's first try: `attempt` 1, its own id as `request_id`."""
    from bandit_router.service.engine import Engine
    from bandit_router.service.exceptions import Unavailable

    real = Engine.store_decision

    async def refusing_failed_tries(self: Engine, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("booked") is False:  # the failed try's decision, booked only once stored
            raise Unavailable("the service is not ready (the database has not answered for 5 s)")
        return await real(self, *args, **kwargs)

    url = _failing_cheap(gateway, fake)
    monkeypatch.setattr(Engine, "store_decision", refusing_failed_tries)
    for i in range(3):
        decision_id = _ask_auto(url, f"{MATH} #{i}")
        decision = stored(url, decision_id)
        assert (decision["policy"], decision["model"]) == ("llm-router:auto", "strong")
        assert (decision["call"]["attempt"], decision["call"]["request_id"]) == (1, decision_id)
    assert loopback.get(url + "/v1/stats", timeout=10).json()["decisions"] == 3


def test_the_failed_try_is_committed_before_the_answer_after_it_and_says_whether_the_request_streamed(
    gateway: Callable[..., str], fake: ScriptedFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer after the policy's failed try was acknowledged before that try's call record and failure
    feedback were committed (3 requests of 21 in the review's loop; here every one, the record's write delayed by
    0.3 s): feedback on the failed try, or a read of it, could find neither. Now, when the reply arrives, the
    failed try's decision, record and feedback are all committed. Both records of a streamed request say it was
    streamed (the failed try's said `stream` false)."""
    import asyncio
    import contextlib
    import sqlite3

    from bandit_router.gateway.gateway import Gateway

    real = Gateway.store_call

    async def slow_store_call(self: Gateway, *args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.3)
        await real(self, *args, **kwargs)

    url = _failing_cheap(gateway, fake)
    monkeypatch.setattr(Gateway, "store_call", slow_store_call)
    with contextlib.closing(sqlite3.connect(tmp_path / "n0.db")) as conn:
        for i, stream in enumerate([False, True, False, True]):
            decision_id = _ask_auto(url, f"{MATH} #{i}", stream)
            first, attempt, streamed = conn.execute(
                "SELECT request_id, attempt, stream FROM calls WHERE decision_id = ?", (decision_id,)).fetchone()
            assert attempt == 2 and bool(streamed) == stream
            record = conn.execute("SELECT status, attempt, stream FROM calls WHERE decision_id = ?",
                                  (first,)).fetchone()
            assert record is not None and (record[0], record[1], bool(record[2])) == ("server_error", 1, stream)
            assert conn.execute("SELECT source FROM feedback WHERE decision_id = ?", (first,)).fetchall() == [
                ("gateway",)]


def test_a_routing_reply_naming_a_longer_model_is_not_read_as_the_shorter_candidate(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    """The routing LLM answers `strong:70b` or `cheap/8b`, models that are not candidates: the reply names none, so
    the policy decides (both were read as the candidates `strong` and `cheap` and logged with probability 1 as
    the LLM router's choice); `model: strong` and `openai/cheap` still name the candidates."""
    url = gateway()
    for reply, named in (("strong:70b", None), ("cheap/8b-instruct", None), ("model: strong", "strong"),
                         ("openai/cheap", "cheap")):
        fake.script["chooser"] = replying(completion(reply))
        answer, info, decision_id = ask(url, "auto", PROSE)
        assert info["named"] == named, (reply, info)
        decision = stored(url, decision_id)
        if named is None:  # the policy's own decision, learned by the bandit
            assert not decision["policy"].startswith("llm-router") and decision["model"] == answer.model, reply
        else:
            assert decision["policy"] == "llm-router:auto" and answer.model == named and decision["probability"] == 1


def test_the_policys_own_llm_router_decision_is_priced_by_its_answer_alone(gateway: Callable[..., str]) -> None:
    """No name in the routing LLM's reply: the policy decides and the bandit learns its choice, priced like a
    gateway call to that model (the routing LLM's tokens are not the chosen model's cost)."""
    url = gateway()
    completion, info, decision_id = ask(url, "auto", MATH)
    assert info["named"] is None
    answer = [c for c in info["calls"] if c["role"] == "answer"]
    assert len(answer) == 1 and answer[0]["model"] == completion.model
    assert info["calls"][0]["role"] == "router" and info["calls"][0]["cost_usd"] > 0
    assert feedback(url, decision_id, 0.8)["status"] == "applied"
    row = stored(url, decision_id, 1)["feedback"][0]
    assert row["cost_usd"] == pytest.approx(answer[0]["cost_usd"]) and row["cost_usd"] < info["cost_usd"]


def test_named_routers_calls_are_in_the_metrics_and_an_escalated_chain_is_one_request(
    gateway: Callable[..., str], tmp_path: Path
) -> None:
    """Every call a named router makes (answers, judge) is counted in `/metrics`; an escalated chain's decision
    is one request (`attempt` 1), not a fallback; the evaluation's log (shadows, replay) leaves it out as a named
    router's choice, not the bandit's (its feedback is never learned)."""
    url = gateway()
    _, chain, decision_id = ask(url, "cascade", CODE)
    assert chain["escalations"] == 1
    stored(url, decision_id)
    store = SQLiteStore(tmp_path / "n0.db")
    deadline = time.monotonic() + 10
    while True:
        with store.read() as reader:
            call = reader.calls_for_many([decision_id]).get(decision_id)
        if call is not None or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert call is not None and call.attempt == 1 and not call.routed
    with store.read() as reader:
        chosen = reader.decisions([decision_id])[decision_id]
        assert first_tries(reader, [chosen]) == [chosen]  # not taken for a fallback
    assert decision_id not in {r.decision.decision_id for r in recent_log(store, 50)}
    store.close()
    typical = loopback.get(url + "/v1/stats/live").json()["typical"]  # the bandit chose nothing yet
    assert typical["decisions"] == 0 and set(typical["probabilities"].values()) == {None}
    overall = loopback.get(url + "/v1/stats/timeseries?range=hour").json()["overall"]
    assert overall["decisions"] == 1 and overall["routed"] == 0 and overall["exploration"] is None
    metrics = loopback.get(url + "/metrics").text
    for model in ("cheap", JUDGE, "strong"):
        assert f'bandit_router_upstream_calls_total{{model="{model}",status="ok"}} 1.0' in metrics, model


def named_metrics(url: str) -> dict[str, dict[str, float]]:
    """Per named router, its `/metrics` series summed over their labels but `router` (`requests_by_model` keeps
    the model: "" is a request no model answered), with the names of `GET /v1/stats`'s counts."""
    families = {f.name: f for f in text_string_to_metric_families(loopback.get(url + "/metrics", timeout=10).text)}
    out: dict[str, dict[str, float]] = {}

    def add(router: str, key: str, value: float) -> None:
        entry = out.setdefault(router, {})
        entry[key] = entry.get(key, 0.0) + value

    names = {"requests": "requests", "escalations": "escalations", "escalated_requests": "escalated_requests",
             "failed_calls": "failed_calls", "fallbacks": "fallbacks", "cost_usd": "spend_usd"}
    for family, key in names.items():
        for sample in families[f"bandit_router_named_router_{family}"].samples:
            if sample.name.endswith("_total"):
                add(sample.labels["router"], key, sample.value)
                if family == "requests":
                    add(sample.labels["router"], f"requests_by:{sample.labels['model']}", sample.value)
    for sample in families["bandit_router_named_router_calls"].samples:
        if sample.name.endswith("_total"):
            add(sample.labels["router"], f"{sample.labels['role']}_calls", sample.value)
    for sample in families["bandit_router_named_router_request_duration_seconds"].samples:
        if sample.name.endswith("_count"):
            add(sample.labels["router"], "answered", sample.value)
    return out


def assert_named_metrics_are_the_stats(url: str) -> dict[str, dict[str, float]]:
    """Every count `/metrics` has of the named routers is `GET /v1/stats`'s (the database's); returns the metrics."""
    metrics = named_metrics(url)
    stats = loopback.get(url + "/v1/stats", timeout=10).json()["named_routers"]
    assert set(metrics) == set(stats)
    for name, counts in stats.items():
        mine = metrics[name]
        for key in ("requests", "escalations", "escalated_requests", "answer_calls", "judge_calls", "router_calls",
                    "failed_calls", "fallbacks"):
            assert mine.get(key, 0.0) == counts.get(key, 0), (name, key, mine, counts)
        assert mine["spend_usd"] == pytest.approx(counts["spend_usd"]), name
        assert mine["answered"] == counts["requests"] - counts["failed_requests"], (name, mine, counts)
        assert mine["requests_by:"] == counts["failed_requests"], (name, mine, counts)
        for model, n in counts["answered_by"].items():
            assert mine[f"requests_by:{model}"] == n, (name, model, mine, counts)
    return metrics


def test_named_routers_have_their_own_metrics_from_the_start_the_same_as_their_stats(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    """`/metrics` counts each named router's requests (by the model that answered, "" for none), escalations,
    calls by role, failed calls, an LLM router's fallbacks, its spend, and times its answers, as `GET /v1/stats`
    counts them; each configured router's series are there at 0 before its first request (only the bandit's alias
    had metrics: the gateway's calls by model, nothing by router)."""
    url = gateway()
    before = named_metrics(url)
    assert set(before) == {r.name for r in ROUTERS}
    assert before["cascade"] == {"requests": 0.0, "requests_by:cheap": 0.0, "requests_by:strong": 0.0,
                                 "requests_by:": 0.0, "escalations": 0.0, "escalated_requests": 0.0,
                                 "failed_calls": 0.0, "spend_usd": 0.0, "answer_calls": 0.0, "judge_calls": 0.0,
                                 "answered": 0.0}
    assert before["auto"]["fallbacks"] == 0.0 and before["auto"]["router_calls"] == 0.0
    assert "escalations" not in before["auto"] and "fallbacks" not in before["cascade"]
    ask(url, "cascade", PROSE)  # accepted: cheap
    ask(url, "cascade", CODE)  # escalated: strong
    ask(url, "learned", CODE)
    ask(url, "auto", MATH)  # the routing LLM names no model: the policy decides
    ask(url, "auto", CODE)  # it names strong
    fake.set("cheap", "fail")
    fake.set("strong", "fail")
    reply = loopback.post(url + "/v1/chat/completions",
                          json={"model": "cascade", "messages": [{"role": "user", "content": PROSE}]})
    assert reply.status_code == 502
    metrics = assert_named_metrics_are_the_stats(url)
    cascade = metrics["cascade"]
    assert (cascade["requests"], cascade["answered"], cascade["requests_by:"]) == (3, 2, 1)
    assert cascade["escalations"] >= 1 and cascade["escalated_requests"] >= 1 and cascade["failed_calls"] >= 2
    assert metrics["auto"]["requests"] == 2 and metrics["auto"]["fallbacks"] == 1
    assert metrics["auto"]["router_calls"] == 2 and metrics["learned"]["requests"] == 1


def test_with_two_workers_every_scrape_counts_every_workers_named_router_requests(
    fake: ScriptedFake, tmp_path: Path
) -> None:
    """`serve --workers 2` (prometheus-client's multiprocess mode): each scrape, whichever worker answers it, has
    every configured router's series and counts what both workers served, the same as `GET /v1/stats`."""
    fake.behaviour.clear()
    fake.script.clear()
    models = "".join(
        f'[[models]]\nname = "{name}"\ninput_usd_per_mtok = {inp}\noutput_usd_per_mtok = {out}\n'
        f'base_url = "{fake.url}/v1"\nroute = {"true" if name in ("cheap", "strong") else "false"}\n\n'
        for name, (inp, out) in PRICES.items()
    )
    routers = (f'[[routers]]\nname = "cascade"\nstrategy = "cascade"\nmodels = ["cheap", "strong"]\n'
               f'judge = "{JUDGE}"\nthreshold = 0.7\n\n[[routers]]\nname = "auto"\nstrategy = "llm-router"\n'
               'models = ["cheap", "strong"]\nrouter_model = "chooser"\n')
    config = tmp_path / "config.toml"
    config.write_text(f'db = "{tmp_path / "router.db"}"\nseed = 11\n\n{models}{routers}')
    server = ServeProcess(tmp_path, [sys.executable, "-m", "bandit_router.cli"],
                          ["--config", str(config), "--workers", "2"])
    try:
        server.wait_ready(60)
        assert set(named_metrics(server.url)) == {"cascade", "auto"}
        close = {"connection": "close"}  # a new connection each: both workers serve some

        def chat(i: int) -> int:
            model, prompt = [("cascade", PROSE), ("cascade", CODE), ("auto", CODE), ("auto", MATH)][i % 4]
            body = {"model": model, "messages": [{"role": "user", "content": f"{prompt} #{i}"}]}
            return loopback.post(server.url + "/v1/chat/completions", json=body, headers=close, timeout=30).status_code

        with ThreadPoolExecutor(4) as pool:
            assert set(pool.map(chat, range(24))) == {200}
        for _ in range(6):  # each scrape may reach either worker
            metrics = assert_named_metrics_are_the_stats(server.url)
            assert metrics["cascade"]["requests"] == 12 and metrics["auto"]["requests"] == 12
            assert metrics["cascade"]["escalations"] >= 1 and metrics["auto"]["fallbacks"] >= 1
    finally:
        server.stop()


def test_with_several_workers_the_reply_waits_for_the_call_record(gateway: Callable[..., str], tmp_path: Path) -> None:
    """With several workers feedback may reach another one first: the chain's call record (its cost) is stored
    before the reply, as the gateway's are."""
    url = gateway(workers=2)
    store = SQLiteStore(tmp_path / "n0.db")
    for i in range(5):
        _, chain, decision_id = ask(url, "cascade", f"{CODE} #{i}")
        with store.read() as reader:
            call = reader.calls_for_many([decision_id]).get(decision_id)
        assert call is not None and call.cost_usd == pytest.approx(chain["cost_usd"])
    store.close()


def test_an_llm_router_answers_when_a_budget_removes_one_of_its_models(gateway: Callable[..., str]) -> None:
    """`share:strong = 0` takes `strong` out of the policy's choice: the LLM router still answers (no 500), the
    bandit's decision never picks `strong`, and the routing LLM's own choice of `strong` is still honoured."""
    url = gateway(budgets=BudgetConfig.from_mapping({"share": {"strong": 0}}))
    for i in range(5):
        completion, info, decision_id = ask(url, "auto", f"{MATH} #{i}")  # no name: the bandit decides
        assert info["named"] is None and completion.model == "cheap"
        decision = stored(url, decision_id)
        assert decision["policy"] == "default" and decision["probabilities"].get("strong", 0.0) == 0.0
    completion, info, _ = ask(url, "auto", CODE)
    assert info["named"] == "strong" and completion.model == "strong"


def _retiring(url: str, model: str, body: bytes) -> Callable[[Any], tuple[int, str, list[bytes]]]:
    """A script that retires `model` (`DELETE /v1/models/…`) while the gateway waits for this call, then replies."""

    def script(request: Any) -> tuple[int, str, list[bytes]]:
        reply = loopback.delete(f"{url}/v1/models/{model}", timeout=10)
        assert reply.status_code == 200, reply.text
        return 200, "application/json", [body]

    return script


def test_a_cascades_model_retired_while_it_answers_still_answers_and_its_chain_is_stored_and_counted(
    gateway: Callable[..., str], fake: ScriptedFake
) -> None:
    """Code escalates from `cheap` to `strong`; `strong` is retired while its call is in flight: its answer is the
    reply (not a 500), the decision is stored (`strong`'s arm as the request found it), and the three paid calls
    (cheap, the judge, strong) are in the router's counts and spend."""
    url = gateway()
    fake.script["strong"] = _retiring(url, "strong", completion("strong answers"))
    reply = loopback.post(url + "/v1/chat/completions", timeout=30,
                          json={"model": "cascade", "messages": [{"role": "user", "content": CODE}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == "strong" and reply.json()["bandit_router"]["answered_by"] == "strong"
    decision = stored(url, reply.headers["x-decision-id"])
    assert decision["model"] == "strong" and decision["probability"] == 1.0
    counts = loopback.get(url + "/v1/stats").json()["named_routers"]["cascade"]
    assert counts["requests"] == 1 and counts["answered_by"] == {"strong": 1} and counts["escalations"] == 1
    assert counts["judge_calls"] == 1 and counts["spend_usd"] > 0


@pytest.mark.parametrize("choice", ["Hard to say.", "cheap"])
def test_an_llm_routers_candidate_retired_while_the_routing_llm_answers_is_left_out_of_the_policys_choice(
    gateway: Callable[..., str], fake: ScriptedFake, choice: str
) -> None:
    """`cheap` is retired while the routing LLM answers. Naming no candidate, the policy chooses among those still
    active (`strong`), not a 400 blaming the client's `bandit_router.models`; naming `cheap`, the active `strong`
    is asked first. Either way the routing call is counted with the request."""
    url = gateway()
    fake.script["chooser"] = _retiring(url, "cheap", completion(choice))
    asked = fake.calls["cheap"]
    reply = loopback.post(url + "/v1/chat/completions", timeout=30,
                          json={"model": "auto", "messages": [{"role": "user", "content": MATH}]})
    assert reply.status_code == 200, reply.text
    named = None if choice.startswith("Hard") else "cheap"
    assert reply.json()["model"] == "strong" and reply.json()["bandit_router"]["named"] == named
    decision = stored(url, reply.headers["x-decision-id"])
    assert decision["model"] == "strong" and decision["probability"] == 1.0
    assert fake.calls["cheap"] == asked  # the retired candidate was never asked
    counts = loopback.get(url + "/v1/stats").json()["named_routers"]["auto"]
    assert counts["requests"] == 1 and counts["router_calls"] == 1 and counts["fallbacks"] == (named is None)
    assert counts["spend_usd"] > 0


def test_an_llm_routers_candidate_retired_between_the_policys_listing_and_its_decision_is_listed_again(
    gateway: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The routing LLM names no candidate; the writer thread retires `cheap` (`Router.retire_model`) after the
    policy listed the active candidates and before the router decided among them: the policy decides again among
    those still active (its own decision, `strong` with probability 1), rather than leaving it to the alias's
    order (a decision of policy `llm-router:auto`)."""
    from bandit_router.router import Router

    decide, retired = Router.decide, []

    def retire_then_decide(router: Router, context: Any, **kwargs: Any) -> Any:
        if "cheap" in (kwargs.get("models") or ()) and not retired:
            retired.append("cheap")
            router.retire_model("cheap")
        return decide(router, context, **kwargs)

    url = gateway()
    monkeypatch.setattr(Router, "decide", retire_then_decide)
    completion, info, decision_id = ask(url, "auto", MATH)
    assert retired and info["named"] is None and completion.model == "strong"
    decision = stored(url, decision_id)
    assert decision["policy"] == "default" and decision["model"] == "strong" and decision["probability"] == 1.0


def test_a_named_routers_calls_are_counted_when_its_decision_cannot_be_stored(
    gateway: Callable[..., str], fake: ScriptedFake, tmp_path: Path
) -> None:
    """The counts of a request whose decision is not stored (the write transaction fails: here another connection
    holds SQLite's write lock past the busy timeout while the chain answers) were lost with the decision, though
    its calls were made and paid ("count the calls whatever happens"): the reply is a 503, and the counts are
    written with the next transaction that commits, once, here as soon as the lock is released."""
    import sqlite3

    url = gateway()
    db = tmp_path / "n0.db"
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)

    taken: list[float] = []

    def locking(request: Any) -> tuple[int, str, list[bytes]]:
        holder.execute("BEGIN IMMEDIATE")  # the write lock, taken while the gateway waits for this answer
        taken.append(time.monotonic())
        return 200, "application/json", [completion("cheap answers")]

    fake.script["cheap"] = locking
    try:
        reply = loopback.post(url + "/v1/chat/completions", timeout=60,
                              json={"model": "auto", "messages": [{"role": "user", "content": PROSE}]})
        assert reply.status_code == 503, reply.text  # the database did not answer for 5 s
        time.sleep(max(0.0, taken[0] + 11.0 - time.monotonic()))  # past the writer's busy timeout (10 s)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 0

    def counted() -> dict[str, Any]:
        reply = loopback.get(url + "/v1/stats")  # a 503 while the writer's round still waits for the lock
        return dict(reply.json()["named_routers"]["auto"]) if reply.status_code == 200 else {"requests": 0}

    deadline = time.monotonic() + 10
    while (counts := counted())["requests"] == 0:
        assert time.monotonic() < deadline, counts
        time.sleep(0.05)
    assert counts["requests"] == 1 and counts["router_calls"] == 1 and counts["answer_calls"] == 1
    assert counts["spend_usd"] > 0
    time.sleep(1.5)  # later writes (a retry of the counts alone) add nothing twice
    assert counted()["requests"] == 1


@pytest.mark.parametrize("alias", ["auto", "cascade"])
def test_a_request_cancelled_while_its_decision_is_stored_is_counted_and_booked_once(
    gateway: Callable[..., str], monkeypatch: pytest.MonkeyPatch, alias: str
) -> None:
    """A shutdown that cancels a named router's request after its chain answered, while it waits for the writer to
    store its decision (whose counts it carries), adds no second count: an LLM router's request was counted again
    as one no model answered (requests 2, failed 1 in `GET /v1/stats` and `/metrics`) and its spend booked twice
    in the budget pacer (`book_chain`, then `count_router`); a cascade's, once."""
    import asyncio

    from bandit_router.service.engine import Engine

    real = Engine.store_decision

    async def stored_then_cancelled(self: Engine, *args: Any, **kwargs: Any) -> Any:
        await real(self, *args, **kwargs)
        raise asyncio.CancelledError  # as the server's shutdown cancels a request awaiting the writer

    url = gateway()
    monkeypatch.setattr(Engine, "store_decision", stored_then_cancelled)
    try:  # the request is cut short: whatever the client gets (a dropped connection, a 500) is not an answer
        reply = loopback.post(url + "/v1/chat/completions", timeout=30,
                              json={"model": alias, "messages": [{"role": "user", "content": CODE}]})
        assert reply.status_code != 200, reply.text
    except httpx.HTTPError:
        pass
    monkeypatch.setattr(Engine, "store_decision", real)

    def counts() -> dict[str, Any]:
        return dict(loopback.get(url + "/v1/stats", timeout=10).json()["named_routers"][alias])

    deadline = time.monotonic() + 10
    while counts()["requests"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)  # a second count (kept by the gateway's task) would be written by now
    stats = counts()
    assert (stats["requests"], stats["failed_requests"]) == (1, 0), stats
    metrics = named_metrics(url)[alias]  # no answer time: the request was not answered
    assert (metrics["requests"], metrics["requests_by:"]) == (1, 0), metrics
    for key in ("answer_calls", "judge_calls", "router_calls", "failed_calls"):
        assert metrics.get(key, 0.0) == stats.get(key, 0), (key, metrics, stats)
    assert metrics["spend_usd"] == pytest.approx(stats["spend_usd"])
    booked = loopback.get(url + "/v1/budgets", timeout=10).json()["report"]["global"]["spend_usd"]
    assert booked == pytest.approx(stats["spend_usd"]) and booked > 0
