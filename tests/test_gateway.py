"""The OpenAI-compatible gateway end to end: the official `openai` client → `POST /v1/chat/completions` on a real
uvicorn server on 127.0.0.1 → a fake OpenAI-compatible upstream, itself a real HTTP server on 127.0.0.1
(`benchmarks.fake_upstream`): routed calls with and without streaming, usage and cost recorded with the decision,
caller-named models never learned, fallbacks, failures learned, 4xx passed through, the judge loop, keys absent
from logs, and no 500 for any malformed body."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bandit_router.catalog import ModelSpec
from bandit_router.config import Settings
from bandit_router.router import Router
from bandit_router.service import create_app
from benchmarks.fake_upstream import JUDGE, FakeUpstream, ServerThread, quality_in
from tools.loopback import loopback, openai_client

KEY_ENV = "BANDIT_ROUTER_TEST_UPSTREAM_KEY"
KEY = "sk-upstream-secret-0123456789abcdef"
MODELS = ("fake-coder", "fake-writer", "fake-small")
PRICES = {"fake-coder": (2.0, 8.0), "fake-writer": (1.0, 4.0), "fake-small": (0.5, 1.0), JUDGE: (0.1, 0.2)}
CODE = "Fix the bug in this Python function: def mean(xs): return sum(xs) / len(x)"
PROSE = "Write a short poem about the sea at dawn"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(seed=3)
    server = ServerThread(upstream)
    upstream.url = server.url
    try:
        yield upstream
    finally:
        upstream.closing = True  # ends the requests a `hang` holds
        server.stop()


@pytest.fixture
def gateway(fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """`start(models, not_routed, **settings)` serves a fresh gateway (its own database) whose catalog calls the
    fake upstream (`not_routed`: catalog models with `route = false`); returns its base URL. Every fake model starts
    healthy."""
    monkeypatch.setenv(KEY_ENV, KEY)
    servers: list[ServerThread] = []
    fake.behaviour.clear()

    def start(models: tuple[str, ...] = MODELS, not_routed: tuple[str, ...] = (), **changes: Any) -> str:
        specs = tuple(
            ModelSpec(name, *PRICES[name], tags={"family": "fake"}, base_url=fake.url + "/v1", api_key_env=KEY_ENV,
                      route=name not in not_routed)
            for name in models
        )
        changes.setdefault("seed", 7)
        settings = Settings(db=tmp_path / f"gw{len(servers)}.db", models=specs, **changes)
        server = ServerThread(create_app(settings))
        servers.append(server)
        return server.wait_ready()

    yield start
    for server in servers:
        server.stop()


def client(url: str) -> openai.OpenAI:
    return openai_client(url + "/v1", api_key="unused", max_retries=0, timeout=30)


def decision(url: str, decision_id: str) -> dict[str, Any]:
    reply = loopback.get(f"{url}/v1/decisions/{decision_id}")
    assert reply.status_code == 200, reply.text
    return reply.json()


def settle(url: str, decision_id: str, n: int = 1) -> list[dict[str, Any]]:
    """The decision's feedback rows once there are `n` (the gateway records calls off the reply path)."""
    deadline = time.monotonic() + 10
    while True:
        rows = decision(url, decision_id)["feedback"]
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)


def feedback(url: str, decision_id: str, quality: float, *, http: httpx.Client | None = None,
             **extra: Any) -> dict[str, Any]:
    """POST /v1/feedback, through `http` when given (a loop of thousands keeps its connection alive), else through
    `loopback` (a connection per call)."""
    body = {"decision_id": decision_id, "quality": quality, **extra}
    reply = (http or loopback).post(url + "/v1/feedback", json=body)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


# -- routed calls ----------------------------------------------------------------------------------------------
def test_a_routed_call_answers_in_openai_shape_and_feedback_needs_only_quality(
    gateway: Callable[..., str], fake: FakeUpstream
) -> None:
    url = gateway()
    raw = client(url).chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": CODE}], extra_body={"bandit_router": {"cost_weight": 5}}
    )
    completion = raw.parse()
    decision_id = raw.headers["x-decision-id"]
    assert completion.model in MODELS and completion.model == raw.headers["x-bandit-router-model"]
    assert completion.choices[0].message.content.startswith(f"{completion.model} answers a code prompt")
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    stored = decision(url, decision_id)
    assert stored["model"] == completion.model and stored["cost_weight"] == 5.0 and 0 < stored["probability"] <= 1
    assert fake.authorizations[-1] == f"Bearer {KEY}"  # the key went to the upstream, in its header

    result = feedback(url, decision_id, 0.8)
    assert result["status"] == "applied"
    row = decision(url, decision_id)["feedback"][0]
    price_in, price_out = PRICES[completion.model]
    usage = completion.usage
    assert row["input_tokens"] == usage.prompt_tokens and row["output_tokens"] == usage.completion_tokens
    expected = (usage.prompt_tokens * price_in + usage.completion_tokens * price_out) / 1e6
    assert row["cost_usd"] == pytest.approx(expected)
    assert row["latency_ms"] is not None and row["latency_ms"] > 0
    assert row["reward"] == pytest.approx(0.8 - 5 * row["cost_usd"])


def test_a_routed_stream_carries_the_decision_in_its_headers_and_records_usage(gateway: Callable[..., str]) -> None:
    url = gateway()
    with client(url).chat.completions.with_streaming_response.create(
        model="router", messages=[{"role": "user", "content": PROSE}], stream=True
    ) as raw:
        decision_id = raw.headers["x-decision-id"]
        assert raw.headers["content-type"].startswith("text/event-stream")
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    models = {c.model for c in chunks}
    assert len(models) == 1 and models <= set(MODELS)
    assert all(c.choices for c in chunks)  # usage was not asked for: no usage-only chunk reaches the caller
    assert quality_in(text) is not None
    feedback(url, decision_id, 0.7)
    row = decision(url, decision_id)["feedback"][0]
    assert row["output_tokens"] == len(text.split())  # the upstream's usage (asked for with include_usage)
    assert row["latency_ms"] > 0

    stream = client(url).chat.completions.create(
        model="router", messages=[{"role": "user", "content": PROSE}], stream=True,
        stream_options={"include_usage": True},
    )
    last = list(stream)[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_without_usage_is_counted_here(gateway: Callable[..., str], fake: FakeUpstream,
                                                   stream: bool) -> None:
    url = gateway(models=("fake-small",))
    fake.set("fake-small", "omit_usage")
    raw = client(url).chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": PROSE}], stream=stream)
    decision_id = raw.headers["x-decision-id"]
    body = raw.parse()
    if stream:
        list(body)  # type: ignore[call-overload]
    feedback(url, decision_id, 0.5)
    row = decision(url, decision_id)["feedback"][0]
    assert row["input_tokens"] > 0 and row["output_tokens"] > 10 and row["cost_usd"] > 0


def test_a_named_model_is_called_and_stored_but_never_learned(gateway: Callable[..., str]) -> None:
    url = gateway()
    before = loopback.get(url + "/v1/stats").json()["policy_version"]
    raw = client(url).chat.completions.with_raw_response.create(
        model="fake-writer", messages=[{"role": "user", "content": CODE}])
    assert raw.parse().model == "fake-writer"
    decision_id = raw.headers["x-decision-id"]
    stored = decision(url, decision_id)
    assert stored["policy"] == "caller" and stored["probability"] == 1.0
    assert feedback(url, decision_id, 0.9)["status"] == "unrouted"
    assert loopback.get(url + "/v1/stats").json()["policy_version"] == before


def test_a_route_false_model_named_directly_is_a_404_and_not_listed_for_openai_clients(
    gateway: Callable[..., str], fake: FakeUpstream
) -> None:
    """A `route = false` model (a judge or routing LLM only) is the deployment's helper, not a model a request may
    answer with: named as `model` it is a 404 `model_not_found` in OpenAI's shape (`param` "model", a message
    saying why), with the `models` knob listing it or not, streamed or not; nothing is called or stored; OpenAI's
    model list leaves it out (the router's own listing still shows it). It was called and stored as a `caller`
    decision."""
    url = gateway(models=(*MODELS, JUDGE), not_routed=(JUDGE,))
    before, decisions = sum(fake.calls.values()), loopback.get(url + "/v1/stats").json()["decisions"]
    for extra in ({}, {"stream": True}, {"bandit_router": {"models": [JUDGE]}}):
        reply = loopback.post(url + "/v1/chat/completions", timeout=30,
                              json={"model": JUDGE, "messages": [{"role": "user", "content": CODE}], **extra})
        assert reply.status_code == 404, (extra, reply.text)
        error = reply.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model", error
        assert "route = false" in error["message"] and JUDGE in error["message"], error
    with pytest.raises(openai.NotFoundError, match="route = false"):
        client(url).chat.completions.create(model=JUDGE, messages=[{"role": "user", "content": CODE}])
    assert sum(fake.calls.values()) == before and loopback.get(url + "/v1/stats").json()["decisions"] == decisions
    assert [m.id for m in client(url).models.list().data] == ["router", *MODELS]
    assert JUDGE in [m["name"] for m in loopback.get(url + "/v1/models").json()["models"]]


def test_models_are_listed_in_openai_shape_and_in_the_routers_own(gateway: Callable[..., str]) -> None:
    url = gateway()
    ids = [m.id for m in client(url).models.list().data]
    assert ids == ["router", *MODELS]
    own = loopback.get(url + "/v1/models").json()
    assert [m["name"] for m in own["models"]] == list(MODELS) and own["retired"] == []
    assert "base_url" not in own["models"][0]


def test_openai_clients_retrieve_each_listed_model_and_get_a_404_for_any_other(gateway: Callable[..., str]) -> None:
    """`client.models.retrieve(name)` (`GET /v1/models/{name}`) answers each model object `GET /v1/models` lists in
    `data`, the alias included; a `route = false` model, a retired one and an unknown name are OpenAI's 404
    `model_not_found` (the client's `NotFoundError`). It was a 405 in the service's own shape for every name."""
    url = gateway(models=(*MODELS, JUDGE), not_routed=(JUDGE,))
    openai_client = client(url)
    listed = openai_client.models.list().data
    assert [openai_client.models.retrieve(m.id) for m in listed] == listed
    assert loopback.delete(f"{url}/v1/models/fake-small").status_code == 200
    for name in (JUDGE, "fake-small", "nope"):
        with pytest.raises(openai.NotFoundError) as missing:
            openai_client.models.retrieve(name)
        assert missing.value.code == "model_not_found" and missing.value.param == "model", name
        assert missing.value.type == "invalid_request_error" and repr(name) in missing.value.message
    assert [m.id for m in openai_client.models.list().data] == ["router", "fake-coder", "fake-writer"]


def test_knobs_ride_in_headers_too_and_the_body_wins(gateway: Callable[..., str]) -> None:
    url = gateway()
    raw = client(url).chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": CODE}],
        extra_headers={"x-bandit-router-models": "fake-small", "x-bandit-router-cost-weight": "3",
                       "x-bandit-router-context": json.dumps({"tenant": "acme"})},
    )
    stored = decision(url, raw.headers["x-decision-id"])
    assert stored["model"] == "fake-small" and stored["cost_weight"] == 3.0 and stored["tenant"] == "acme"
    raw = client(url).chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": CODE}],
        extra_headers={"x-bandit-router-models": "fake-small"},
        extra_body={"bandit_router": {"models": ["fake-coder"]}},
    )
    assert raw.parse().model == "fake-coder"


def test_a_named_model_outside_the_models_knob_is_refused_naming_where_the_knob_came_from(
    gateway: Callable[..., str], fake: FakeUpstream
) -> None:
    """The `models` knob restricts the models a request may go to, a model the caller names included: one it does not
    list is a 400 (no call, no decision stored) whose `param` is where the knob came from (the body's
    `bandit_router.models` or the header `x-bandit-router-models`), as for every knob error; one it lists is called.
    The routed alias's knob errors name the header too."""
    url = gateway()
    before = sum(fake.calls.values())
    decisions = loopback.get(url + "/v1/stats").json()["decisions"]

    def post(model: str, body_models: list[str] | None = None, header: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": CODE}]}
        if body_models is not None:
            body["bandit_router"] = {"models": body_models}
        headers = {} if header is None else {"x-bandit-router-models": header}
        return loopback.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30)

    for model, body_models, header, param, said in (
        ("fake-writer", ["fake-small"], None, "bandit_router.models", "'fake-writer'"),
        ("fake-writer", None, "fake-small,fake-coder", "x-bandit-router-models", "'fake-writer'"),
        ("fake-writer", ["fake-small"], "fake-writer", "bandit_router.models", "'fake-writer'"),  # the body wins
        ("fake-writer", None, "fake-writer,nope", "x-bandit-router-models", "nope"),
        ("router", None, "nope", "x-bandit-router-models", "nope"),
        ("router", ["nope"], None, "bandit_router.models", "nope"),
    ):
        reply = post(model, body_models, header)
        assert reply.status_code == 400, (model, body_models, header, reply.text)
        error = reply.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", reply.text
        assert said in error["message"] and error["message"].startswith(param + ":"), reply.text
    many = post("router", ["nope"] * 7 + [f"zz{i}" for i in range(8)], None).json()["error"]["message"]
    assert many.count("'nope'") == 1 and many.endswith("and 4 more"), many  # each once, the first five (review22scale)
    assert sum(fake.calls.values()) == before  # nothing was called
    assert loopback.get(url + "/v1/stats").json()["decisions"] == decisions  # nor stored
    with pytest.raises(openai.BadRequestError, match="does not allow 'fake-writer'"):
        client(url).chat.completions.create(model="fake-writer", messages=[{"role": "user", "content": CODE}],
                                            extra_headers={"x-bandit-router-models": "fake-small"})
    for body_models, header in ((["fake-small", "fake-writer"], None), (None, "fake-writer")):
        reply = post("fake-writer", body_models, header)
        assert reply.status_code == 200 and reply.json()["model"] == "fake-writer", reply.text


def test_upstream_calls_are_counted_in_the_metrics(gateway: Callable[..., str], fake: FakeUpstream) -> None:
    url = gateway(models=("fake-coder", "fake-writer"))
    client(url).chat.completions.create(model="fake-writer", messages=[{"role": "user", "content": PROSE}])
    list(client(url).chat.completions.create(model="fake-writer", messages=[{"role": "user", "content": PROSE}],
                                             stream=True))
    fake.set("fake-coder", "fail")
    with pytest.raises(openai.APIStatusError):
        client(url).chat.completions.create(model="fake-coder", messages=[{"role": "user", "content": PROSE}])
    metrics = loopback.get(url + "/metrics").text
    assert 'bandit_router_upstream_calls_total{model="fake-writer",status="ok"} 2.0' in metrics
    assert 'bandit_router_upstream_calls_total{model="fake-coder",status="server_error"} 1.0' in metrics
    assert 'bandit_router_upstream_seconds_count{model="fake-writer"} 2.0' in metrics
    assert 'bandit_router_upstream_ttft_seconds_count{model="fake-writer"} 1.0' in metrics
    assert 'bandit_router_upstream_cost_usd_total{model="fake-writer"}' in metrics


def test_upstream_model_names_the_providers_id_and_default_base_url_serves_the_rest(
    gateway: Callable[..., str], fake: FakeUpstream, tmp_path: Path
) -> None:
    models = (
        ModelSpec("house-coder", 1.0, 2.0, base_url=fake.url + "/v1", upstream_model="fake-coder"),
        ModelSpec("fake-writer", 1.0, 2.0),  # no base_url: default_base_url
    )
    server = ServerThread(create_app(Settings(db=tmp_path / "named.db", models=models, seed=1,
                                              default_base_url=fake.url + "/v1")))
    try:
        c = client(server.url)
        before = fake.calls["fake-coder"]
        assert c.chat.completions.create(model="house-coder", messages=[{"role": "user", "content": CODE}]
                                         ).model == "house-coder"
        assert fake.calls["fake-coder"] == before + 1  # the provider's id went upstream
        assert c.chat.completions.create(model="fake-writer", messages=[{"role": "user", "content": CODE}]
                                         ).model == "fake-writer"
        # a model added at run time is called through default_base_url too
        added = loopback.post(server.url + "/v1/models", json={"name": "fake-small", "input_usd_per_mtok": 0.5,
                                                               "output_usd_per_mtok": 1.0})
        assert added.status_code == 201, added.text
        assert c.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": CODE}]
                                         ).model == "fake-small"
        assert "fake-small" in [m.id for m in c.models.list().data]
    finally:
        server.stop()


def test_a_catalog_name_outside_ascii_or_with_a_percent_is_percent_encoded_in_the_model_header(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    """The name grammar allows `名前` in the catalog; a reply header holds Latin-1 only, and every non-streamed answer
    of that model was a 500 after its upstream call. The header carries it percent-encoded; the body as it is.
    The grammar allows `%` too, and the ASCII name `%E5%90%8D%E5%89%8D` was sent as it is, the same header as
    `名前`'s: a name with a `%` is percent-encoded as well, so every header decodes to its own name."""
    encoded = "%E5%90%8D%E5%89%8D"
    models = (ModelSpec("名前", 1.0, 2.0, base_url=fake.url + "/v1", upstream_model="fake-coder"),
              ModelSpec(encoded, 1.0, 2.0, base_url=fake.url + "/v1", upstream_model="fake-coder"),
              ModelSpec("fake-writer", 1.0, 2.0, base_url=fake.url + "/v1"))
    server = ServerThread(create_app(Settings(db=tmp_path / "names.db", models=models, seed=1)))
    try:
        for stream in (False, True):
            shown = {}
            for name in ("名前", encoded, "fake-writer"):
                reply = loopback.post(server.url + "/v1/chat/completions", timeout=30, json={
                    "model": name, "messages": [{"role": "user", "content": CODE}], "stream": stream})
                assert reply.status_code == 200, (stream, name, reply.text)
                shown[name] = reply.headers["x-bandit-router-model"]
                assert urllib.parse.unquote(shown[name]) == name
                if name == "名前":  # the body as it is
                    assert "\\u540d\\u524d" in reply.text or "名前" in reply.text
            assert shown == {"名前": encoded, encoded: "%25E5%2590%258D%25E5%2589%258D", "fake-writer": "fake-writer"}
    finally:
        server.stop()


def test_a_hanging_judge_never_delays_a_reply_and_its_queue_is_bounded(
    gateway: Callable[..., str], fake: FakeUpstream
) -> None:
    url = gateway(models=(*MODELS, JUDGE), judge_model=JUDGE, judge_sample_rate=1.0, judge_queue=2,
                  judge_concurrency=1)
    fake.set(JUDGE, "hang")
    c = client(url).with_options(timeout=5)
    for _ in range(8):
        c.chat.completions.create(model="router", messages=[{"role": "user", "content": CODE}],
                                  extra_body={"bandit_router": {"models": list(MODELS)}})
    judge = loopback.get(url + "/v1/stats").json()["judge"]
    assert judge["sampled"] == 8 and judge["scored"] == 0
    assert judge["queued"] <= 2 and judge["dropped"] >= 5  # one in the judge's hands, at most 2 waiting


def test_the_shipped_catalog_says_which_key_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default catalog names each provider's endpoint and key variable; with none of them set nothing is
    called, and the reply says which variables to set."""
    for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "TOGETHER_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    server = ServerThread(create_app(Settings(db=tmp_path / "default.db", seed=1)))
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            client(server.url).chat.completions.create(model="router", messages=[{"role": "user", "content": "hi"}])
        assert caught.value.status_code == 503
        assert "OPENAI_API_KEY" in caught.value.message and "ANTHROPIC_API_KEY" in caught.value.message
        with pytest.raises(openai.NotFoundError, match="OPENAI_API_KEY"):
            client(server.url).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    finally:
        server.stop()


def test_a_failed_start_stops_the_judge_the_upstream_clients_and_the_engine(
    fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `[[routers]]` alias naming a model that cannot be called (its key variable is unset) stops the start-up
    with a ConfigError after the gateway and its judge started: they and the engine are stopped like at a
    shutdown (no judge task left running, every upstream client closed, the writer stopped)."""
    from bandit_router.config import ConfigError, RouterAlias

    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.delenv("BANDIT_ROUTER_TEST_UNSET_KEY", raising=False)
    specs = (
        ModelSpec("fake-coder", *PRICES["fake-coder"], base_url=fake.url + "/v1", api_key_env=KEY_ENV),
        ModelSpec("fake-writer", *PRICES["fake-writer"], base_url=fake.url + "/v1",
                  api_key_env="BANDIT_ROUTER_TEST_UNSET_KEY"),
        ModelSpec(JUDGE, *PRICES[JUDGE], base_url=fake.url + "/v1", api_key_env=KEY_ENV, route=False),
    )
    settings = Settings(db=tmp_path / "failed.db", models=specs, seed=1, judge_model=JUDGE, judge_sample_rate=1.0,
                        routers=(RouterAlias("pair", "cascade", ("fake-coder", "fake-writer"), signal="logprob"),))
    app = create_app(settings)

    async def start() -> list[asyncio.Task[Any]]:
        with pytest.raises(ConfigError, match="fake-writer"):
            async with app.router.lifespan_context(app):
                pass
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(start()) == []
    assert app.state.engine.state == "stopped"
    assert all(c.is_closed for c in app.state.gateway.upstreams._clients.values())


# -- failures ---------------------------------------------------------------------------------------------------
def test_a_failing_model_is_answered_by_a_fallback_and_then_avoided(
    gateway: Callable[..., str], fake: FakeUpstream
) -> None:
    """fake-coder, the best model for code, fails with 500 on every call: every request is still answered (by
    a fallback), each failure is learned as quality 0, and within 60 requests the router stops choosing it
    first: over the last 20, at most 3 first choices (it started at ≈ 1/3 or more)."""
    url = gateway(max_attempts=3)
    fake.set("fake-coder", "fail")
    openai_client = client(url)
    first_choices: list[str] = []
    for _ in range(60):
        raw = openai_client.chat.completions.with_raw_response.create(
            model="router", messages=[{"role": "user", "content": CODE}])
        answer = raw.parse()
        assert answer.model in ("fake-writer", "fake-small")
        attempts = int(raw.headers["x-bandit-router-attempts"])
        first_choices.append("fake-coder" if attempts > 1 else answer.model)
        feedback(url, raw.headers["x-decision-id"], quality_in(answer.choices[0].message.content) or 0.0)
    assert first_choices.count("fake-coder") >= 3  # it was tried
    assert first_choices[-20:].count("fake-coder") <= 3
    stats = loopback.get(url + "/v1/stats").json()
    coder = next(m for m in stats["models"] if m["model"] == "fake-coder")
    assert coder["feedback"] == first_choices.count("fake-coder") and coder["mean_quality"] == 0.0


def test_a_fallback_is_its_own_logged_decision_over_the_models_not_yet_tried(
    gateway: Callable[..., str], fake: FakeUpstream
) -> None:
    """Each try is a decision sampled from the pmf it logs: the answering decision of a request that took k tries
    logged a pmf over the 3 − (k − 1) models not yet tried (with probability 1 when one was left)."""
    url = gateway(max_attempts=3)
    fake.set("fake-coder", "fail")
    fake.set("fake-writer", "fail")
    tries = Counter()
    for _ in range(12):
        raw = client(url).chat.completions.with_raw_response.create(
            model="router", messages=[{"role": "user", "content": CODE}],
            extra_body={"bandit_router": {"models": ["fake-coder", "fake-writer", "fake-small"]}})
        assert raw.parse().model == "fake-small"
        attempts = int(raw.headers["x-bandit-router-attempts"])
        tries[attempts] += 1
        last = decision(url, raw.headers["x-decision-id"])
        assert "fake-small" in last["probabilities"] and len(last["probabilities"]) == 4 - attempts
        if attempts == 3:
            assert last["probability"] == 1.0
    assert tries[1] + tries[2] + tries[3] == 12 and tries[1] < 12


def test_a_hanging_model_times_out_into_a_fallback_and_all_hanging_is_a_504(
    gateway: Callable[..., str], fake: FakeUpstream
) -> None:
    url = gateway(models=("fake-coder", "fake-writer"), upstream_timeout_s=0.3, max_attempts=2, deadline_s=5)
    fake.set("fake-coder", "hang")
    for _ in range(5):
        answer = client(url).chat.completions.create(model="router", messages=[{"role": "user", "content": CODE}])
        assert answer.model == "fake-writer"
    fake.set("fake-writer", "hang")
    with pytest.raises(openai.APIStatusError) as caught:
        client(url).chat.completions.create(model="router", messages=[{"role": "user", "content": CODE}])
    assert caught.value.status_code == 504
    assert "timeout" in str(caught.value.body) or "no answer" in caught.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_when_every_model_fails_the_client_gets_a_502_naming_them(
    gateway: Callable[..., str], fake: FakeUpstream, stream: bool
) -> None:
    """The judge model (`route = false`, with an upstream) is left after both routable models failed: it is never a
    fallback, so the third try does not happen and the caller gets the 502, not a 400 about `models`."""
    url = gateway(models=("fake-coder", "fake-writer", JUDGE), not_routed=(JUDGE,), max_attempts=3)
    judged = fake.calls[JUDGE]
    fake.set("fake-coder", "fail")
    fake.set("fake-writer", "fail")
    with pytest.raises(openai.APIStatusError) as caught:
        client(url).chat.completions.create(model="router", messages=[{"role": "user", "content": CODE}],
                                            stream=stream)
    error = caught.value
    assert error.status_code == 502
    assert isinstance(error.body, dict) and error.body["type"] == "upstream_error"
    assert "fake-coder" in error.message and "fake-writer" in error.message and "2 tried" in error.message
    assert fake.calls[JUDGE] == judged


def test_the_openai_client_reads_the_decision_id_as_its_request_id(gateway: Callable[..., str]) -> None:
    """`x-request-id` repeats `x-decision-id`, so the OpenAI client's `completion._request_id` (and a stream's,
    and a passed-through 4xx's `request_id`) is the id feedback takes, without `with_raw_response`."""
    url = gateway()
    completion = client(url).chat.completions.create(model="router", messages=[{"role": "user", "content": CODE}])
    assert completion._request_id is not None
    assert decision(url, completion._request_id)["model"] == completion.model
    assert feedback(url, completion._request_id, 0.7)["status"] == "applied"
    stream = client(url).chat.completions.create(model="router", messages=[{"role": "user", "content": CODE}],
                                                 stream=True)
    with stream:
        chunks = list(stream)
    assert chunks and stream.response.headers["x-request-id"] == stream.response.headers["x-decision-id"]
    with pytest.raises(openai.BadRequestError) as caught:
        client(url).chat.completions.create(model="router", messages=[{"role": "user", "content": CODE}],
                                            temperature=3)
    assert caught.value.request_id == caught.value.response.headers["x-decision-id"]
    deadline = time.monotonic() + 10  # the call record is written after the reply
    while (call := decision(url, caught.value.request_id)["call"]) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert call is not None and call["status"] == "rejected"


def test_an_upstream_4xx_is_passed_through_and_not_blamed_on_the_model(
    gateway: Callable[..., str], fake: FakeUpstream
) -> None:
    url = gateway()
    with pytest.raises(openai.BadRequestError) as caught:
        client(url).chat.completions.create(model="router", messages=[{"role": "user", "content": CODE}],
                                            temperature=3)
    assert "temperature must be at most 2" in caught.value.message
    decision_id = caught.value.response.headers["x-decision-id"]
    time.sleep(0.2)
    assert decision(url, decision_id)["feedback"] == []
    assert loopback.get(url + "/v1/stats").json()["policy_version"] == 0


def test_a_rejected_call_never_learns_the_default_reward(gateway: Callable[..., str]) -> None:
    """With `default_reward`, a decision whose reward window closes without feedback learns it; one whose upstream
    refused the request (4xx: the request's fault) never does. The refused call is made first, so its window
    has closed by the time the silent answer's has."""
    url = gateway(reward_window_s=0.3, default_reward=0.25)
    with pytest.raises(openai.BadRequestError) as caught:
        client(url).chat.completions.create(model="router", messages=[{"role": "user", "content": CODE}],
                                            temperature=3)
    rejected = caught.value.response.headers["x-decision-id"]
    raw = client(url).chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": CODE}])
    silent = raw.headers["x-decision-id"]
    rows = settle(url, silent)
    assert [(r["source"], r["quality"]) for r in rows] == [("default", 0.25)]
    assert decision(url, rejected)["call"]["status"] == "rejected"
    assert decision(url, rejected)["feedback"] == []
    assert loopback.get(url + "/v1/stats").json()["policy_version"] == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_reply_that_is_not_a_chat_completion_is_the_models_failure(
    gateway: Callable[..., str], fake: FakeUpstream, stream: bool
) -> None:
    """An HTML page for a JSON call, or a stream without a single event: `invalid_response`, a 502 for a named
    model, a fallback for a routed call."""
    url = gateway(models=("fake-coder", "fake-writer"))
    fake.set("fake-coder", "garbage")
    with pytest.raises(openai.APIStatusError) as caught:
        client(url).chat.completions.create(model="fake-coder", messages=[{"role": "user", "content": CODE}],
                                            stream=stream)
    assert caught.value.status_code == 502 and "invalid_response" in str(caught.value.body)
    for _ in range(6):
        answer = client(url).chat.completions.create(model="router", messages=[{"role": "user", "content": CODE}],
                                                     stream=stream)
        models = {c.model for c in answer} if stream else {answer.model}  # type: ignore[union-attr]
        assert models == {"fake-writer"}


def test_a_stream_cancelled_while_it_connects_gives_its_call_slot_back(fake: FakeUpstream) -> None:
    """A model with one call slot: a stream cancelled while its upstream has not answered yet (the caller left,
    the server stops) releases the slot, so the next call gets it instead of "no free call slot"."""
    from bandit_router.gateway import Endpoint, UpstreamFailure, Upstreams

    spec = ModelSpec("fake-small", *PRICES["fake-small"], base_url=fake.url + "/v1", max_concurrency=1)
    endpoint = Endpoint.of(spec, default_base_url=None, default_api_key_env=None, timeout_s=10,
                           connect_timeout_s=5, max_concurrency=1)
    assert endpoint is not None
    payload = {"messages": [{"role": "user", "content": PROSE}], "stream": True}

    async def scenario() -> None:
        upstreams = Upstreams([endpoint], max_response_bytes=1_000_000)
        try:
            fake.set("fake-small", "hang")
            before = fake.calls["fake-small"]
            opening = asyncio.ensure_future(upstreams.stream("fake-small", payload, time.monotonic() + 30))
            while fake.calls["fake-small"] == before:  # until the request is at the upstream: inside send()
                await asyncio.sleep(0.01)
            opening.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opening
            fake.set("fake-small", "ok")
            stream = await upstreams.stream("fake-small", payload, time.monotonic() + 0.5)
            try:
                assert (await stream.first())["model"] == "fake-small"
            finally:
                await stream.close()
        except UpstreamFailure as exc:
            pytest.fail(f"the slot was not given back: {exc}")
        finally:
            fake.behaviour.clear()
            await upstreams.aclose()

    asyncio.run(scenario())


def test_the_call_record_keeps_latency_and_time_to_first_token(gateway: Callable[..., str],
                                                               fake: FakeUpstream) -> None:
    url = gateway(models=("fake-small",))
    fake.set("fake-small", "slow", delay_s=0.2)
    ids = []
    for stream in (False, True):
        raw = client(url).chat.completions.with_raw_response.create(
            model="router", messages=[{"role": "user", "content": PROSE}], stream=stream)
        if stream:
            list(raw.parse())  # type: ignore[call-overload]
        ids.append(raw.headers["x-decision-id"])
    time.sleep(0.2)
    plain, streamed = (decision(url, i)["call"] for i in ids)
    assert plain["status"] == "ok" and plain["latency_s"] >= 0.2 and plain["usage"] == "upstream"
    assert streamed["stream"] and 0.2 <= streamed["ttft_s"] <= streamed["latency_s"]
    assert streamed["attempt"] == 1 and streamed["request_id"] == ids[1] and streamed["input_tokens"] > 0
    assert decision(url, ids[0])["call"]["cost_usd"] == pytest.approx(
        (plain["input_tokens"] * 0.5 + plain["output_tokens"] * 1.0) / 1e6)


def test_a_caller_that_leaves_a_stream_is_recorded_as_cancelled_and_not_blamed(
    gateway: Callable[..., str], fake: FakeUpstream
) -> None:
    url = gateway(models=("fake-small",))
    fake.set("fake-small", "slow", delay_s=0.3)
    body = {"model": "router", "stream": True, "messages": [{"role": "user", "content": PROSE}]}
    with httpx.Client(timeout=5) as c, c.stream("POST", url + "/v1/chat/completions", json=body) as reply:
        decision_id = reply.headers["x-decision-id"]
    # the connection is closed before a single event was read
    deadline = time.monotonic() + 10
    while (call := decision(url, decision_id)["call"]) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert call is not None and call["status"] in ("cancelled", "ok")  # "ok" when the stream fit the buffers
    assert decision(url, decision_id)["feedback"] == []  # never learned as the model's failure


# -- hostile input ------------------------------------------------------------------------------------------------
BAD_BODIES: list[tuple[Any, int]] = [
    (b"{not json", 400),
    (b"NaN", 400),
    (b"[1, 2]", 400),
    (b"{}", 400),
    ({"model": "router"}, 400),
    ({"model": "router", "messages": []}, 400),
    ({"model": "router", "messages": "hi"}, 400),
    ({"model": "router", "messages": [1]}, 400),
    ({"model": "router", "messages": [{"content": "x"}]}, 400),
    ({"model": "router", "messages": [{"role": "user", "content": 5}]}, 400),
    ({"model": 5, "messages": [{"role": "user", "content": "x"}]}, 400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}], "bandit_router": 3}, 400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}], "bandit_router": {"x": 1}}, 400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}], "bandit_router": {"cost_weight": -1}}, 400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}], "bandit_router": {"models": []}}, 400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}], "bandit_router": {"models": ["nope"]}},
     400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}], "bandit_router": {"context": [1]}}, 400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}],
      "bandit_router": {"context": {"a": {"b": 1}}}}, 400),
    # the knobs follow /v1/route's rules: λ ≤ 1e9; ≤ 1,024 model names; ≤ 32 context keys of ≤ 64 characters, values
    # within ±2^53 or strings of ≤ 256 characters
    ({"model": "router", "messages": [{"role": "user", "content": "x"}], "bandit_router": {"cost_weight": 10**400}},
     400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}], "bandit_router": {"cost_weight": 1.7e308}},
     400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}], "bandit_router": {"cost_weight": 1e9 + 1}},
     400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}], "bandit_router": {"cost_weight": True}}, 400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}],
      "bandit_router": {"models": ["fake-small"] * 1025}}, 400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}],
      "bandit_router": {"models": ["fake-small", "../x"]}}, 400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}], "bandit_router": {"context": {"": 1}}}, 400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}],
      "bandit_router": {"context": {"k" * 100_000: 1}}}, 400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}],
      "bandit_router": {"context": {"k": "v" * 100_000}}}, 400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}],
      "bandit_router": {"context": {f"k{i}": i for i in range(33)}}}, 400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}], "bandit_router": {"context": {"n": 10**200}}},
     400),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}], "bandit_router": {"context": {"n": 2**53}}},
     200),
    ({"model": "router", "messages": [{"role": "user", "content": "x"}], "bandit_router": {"cost_weight": 1e9}}, 200),
    ({"model": "gpt-nope", "messages": [{"role": "user", "content": "x"}]}, 404),
    ({"model": "router", "messages": [{"role": "user", "content": "\ud800" * 3}]}, 200),
    ({"model": "router", "messages": [{"role": "user", "content": "x" * 300_000}]}, 413),
]


@pytest.mark.parametrize(("body", "status"), BAD_BODIES)
def test_no_malformed_body_gets_a_500(gateway: Callable[..., str], body: Any, status: int) -> None:
    url = gateway()
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = loopback.post(url + "/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert reply.status_code == status, reply.text
    if status != 200:
        error = reply.json()["error"]
        assert isinstance(error, dict) and error["message"] and error["type"]


def test_a_body_nested_too_deep_or_with_a_non_finite_number_is_a_400_before_anything_is_stored(
    gateway: Callable[..., str],
) -> None:
    """The body is forwarded as JSON: nesting that Python's parser reads but its encoder, deeper in the call stack,
    gave up on (about 930-950 levels: a 500 after the decision was stored), and `NaN`, `Infinity` or `1e999` (sent
    on as `NaN`, which is not JSON), are refused first, naming the field. The limit is 100 levels, the body's own
    object the first: a field holding 99 nested arrays is forwarded, one holding 100 is refused."""
    url = gateway()
    head = b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], '
    bodies = {f"depth {d}": head + b'"x": ' + b"[" * d + b"]" * d + b"}" for d in range(900, 990, 5)}
    bodies["101 levels"] = head + b'"x": ' + b"[" * 100 + b"]" * 100 + b"}"
    bodies["NaN"] = head + b'"temperature": NaN}'
    bodies["1e999"] = head + b'"temperature": 1e999}'
    bodies["deep in a message"] = (b'{"model": "router", "messages": [{"role": "user", "content": [{"type": "text", '
                                   b'"text": "hi", "x": ' + b"[" * 120 + b"]" * 120 + b"}]}]}")
    for name, body in bodies.items():
        reply = loopback.post(url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 400, (name, reply.text)
        error = reply.json()["error"]
        assert error["type"] == "invalid_request_error", (name, reply.text)
        if not name.startswith("depth") or error["param"] != "body":  # the deepest are beyond the parser itself
            assert error["param"] in ("x", "temperature", "messages"), (name, reply.text)
        if name == "101 levels":
            assert "nested deeper than 100 levels" in error["message"], reply.text
    assert loopback.get(url + "/v1/stats").json()["decisions"] == 0  # nothing routed, nothing stored
    fine = head + b'"x": ' + b"[" * 99 + b"]" * 99 + b"}"  # 100 levels with the body itself: the deepest allowed
    assert loopback.post(url + "/v1/chat/completions", content=fine,
                         headers={"content-type": "application/json"}).status_code == 200


def test_an_unexpected_error_is_a_logged_500_in_openais_shape(
    gateway: Callable[..., str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug anywhere below the route (here: the gateway's `complete` raises a RuntimeError) still answers in
    OpenAI's error shape, without the exception's text, and the traceback goes to the log."""
    from bandit_router.gateway import Gateway

    async def broken(self: Gateway, chat: Any) -> Any:
        raise RuntimeError("secret detail of a bug")

    url = gateway()
    monkeypatch.setattr(Gateway, "complete", broken)
    with caplog.at_level(logging.ERROR, logger="bandit_router.service"):
        reply = loopback.post(url + "/v1/chat/completions",
                              json={"model": "router", "messages": [{"role": "user", "content": CODE}]})
    assert reply.status_code == 500
    assert reply.json() == {"error": {"message": "internal error", "type": "server_error", "param": None,
                                      "code": "internal"}}
    assert "unexpected error in the gateway" in caplog.text and "secret detail of a bug" in caplog.text


def test_not_json_is_a_415_and_a_huge_body_a_413_in_openais_shape(gateway: Callable[..., str]) -> None:
    """Also the replies the service's middleware gives before the route runs (a body whose Content-Length is over
    `max_body_bytes`, a Host a loopback-bound service does not serve) are in OpenAI's error shape on this path."""
    url = gateway()
    replies = {
        415: loopback.post(url + "/v1/chat/completions", content=b"x", headers={"content-type": "text/plain"}),
        413: loopback.post(url + "/v1/chat/completions", content=b"x" * 2_000_000,
                           headers={"content-type": "application/json"}),
        421: loopback.post(url + "/v1/chat/completions", json={"model": "router", "messages": []},
                           headers={"host": "attacker.example"}),
    }
    for status, reply in replies.items():
        assert reply.status_code == status, reply.text
        error = reply.json()["error"]
        assert isinstance(error, dict) and error["message"] and error["type"] == "invalid_request_error", reply.text
    assert replies[413].json()["error"]["code"] == "payload_too_large"
    with pytest.raises(openai.APIStatusError, match="max_body_bytes"):  # the OpenAI client shows the message
        client(url).chat.completions.create(model="router", messages=[{"role": "user", "content": "x" * 2_000_000}])


def test_a_key_given_twice_is_a_400_naming_it_in_openais_shape(gateway: Callable[..., str]) -> None:
    """`json.loads` kept the last of a key given twice: `"model": "router"` then `"model": "gpt-4o"` sent the
    request to gpt-4o, unrouted. Refused, naming the key, as the service's own bodies are (a 400 here: the
    gateway answers every body it cannot forward so, in OpenAI's shape); nothing is stored."""
    url = gateway()
    body = b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"}'
    reply = loopback.post(url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] == {"message": "body: gives the key 'model' twice", "type": "invalid_request_error",
                                     "param": "body", "code": None}
    assert loopback.get(url + "/v1/stats").json()["decisions"] == 0


def test_a_key_given_twice_in_the_context_header_is_a_400_naming_it(gateway: Callable[..., str]) -> None:
    """The context knob as a header was read with plain `json.loads`, which keeps the last of a key given twice:
    `{"tenant": "acme", "tenant": "beta"}` routed and booked to tenant beta (the tenant decides which budget pays).
    Refused as the same context in the body is, naming the key and the header (at any depth); nothing is stored."""
    url = gateway()
    body = {"model": "router", "messages": [{"role": "user", "content": "hi"}]}
    for context in ('{"tenant": "acme", "tenant": "beta"}', '{"tenant": "acme", "t\\u0065nant": "beta"}'):
        reply = loopback.post(url + "/v1/chat/completions", json=body, headers={"x-bandit-router-context": context})
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"] == {
            "message": "x-bandit-router-context: gives the key 'tenant' twice", "type": "invalid_request_error",
            "param": "x-bandit-router-context", "code": None}
    assert loopback.get(url + "/v1/stats").json()["decisions"] == 0


def test_the_cost_weight_header_is_a_number_as_json_writes_it_or_a_400(gateway: Callable[..., str]) -> None:
    """The header was read with `float()`, which also takes `1_0` (10), full-width digits (`４０`, reachable since
    headers are read as UTF-8) and `+3`: each routed with a λ written as no JSON number is. A number as JSON writes
    it (ASCII digits, `-`, a fraction, an exponent) is the λ; anything else is a 400 naming the header (`nan` and
    `infinity` were one already, as not finite), and nothing is stored."""
    url = gateway()
    body = {"model": "router", "messages": [{"role": "user", "content": "hi"}]}
    header = "x-bandit-router-cost-weight"
    for value in ("1_0", "４０".encode(), "nan", "infinity", "+3", ".5", "0x10", "1.", "", "3 4"):
        reply = loopback.post(url + "/v1/chat/completions", json=body, headers={header: value})
        assert reply.status_code == 400, (value, reply.text)
        assert reply.json()["error"] == {"message": f"{header}: must be a number as JSON writes it, such as 2.5",
                                         "type": "invalid_request_error", "param": header, "code": None}, value
    assert loopback.get(url + "/v1/stats").json()["decisions"] == 0
    for value, weight in (("40", 40.0), ("2.5", 2.5), ("1e1", 10.0), ("0", 0.0)):
        reply = loopback.post(url + "/v1/chat/completions", json=body, headers={header: value})
        assert reply.status_code == 200, (value, reply.text)
        assert decision(url, reply.headers["x-decision-id"])["cost_weight"] == weight


def test_the_context_header_is_read_as_utf8_or_else_latin1_and_other_headers_are_not_read(
    gateway: Callable[..., str],
) -> None:
    """A context header `{"tenant": "café"}` is tenant `café` whether the client wrote it in UTF-8 (curl; read as
    Latin-1 it was `cafÃ©`) or in Latin-1 (Python's urllib and requests, browsers' fetch; refused as not UTF-8 for a
    while). An `x-bandit-router-*` header that is no knob is not read, whatever its bytes."""
    url = gateway()
    body = {"model": "router", "messages": [{"role": "user", "content": "hi"}]}
    header = "x-bandit-router-context"
    reply = loopback.post(url + "/v1/chat/completions", json=body, headers={header: '{"tenant": "café"}'.encode()})
    assert reply.status_code == 200, reply.text
    assert decision(url, reply.headers["x-decision-id"])["tenant"] == "café"
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json", header: '{"tenant": "café"}'})
    with urllib.request.urlopen(request, timeout=30) as answer:  # http.client sends the value as Latin-1
        assert decision(url, answer.headers["x-decision-id"])["tenant"] == "café"
    reply = loopback.post(url + "/v1/chat/completions", json=body, headers={"x-bandit-router-note": b"caf\xe9 \xff"})
    assert reply.status_code == 200, reply.text
    assert loopback.get(url + "/v1/stats").json()["decisions"] == 3


def test_a_wrong_method_or_a_path_under_the_gateways_is_refused_in_openais_shape(gateway: Callable[..., str]) -> None:
    """A GET on `/v1/chat/completions` (405, with `Allow: POST`) and a path under it (404) answer in OpenAI's error
    shape, as every other error of the gateway does (the OpenAI client reads `error.message`); the service's other
    paths keep the service's own shape."""
    url = gateway()
    replies = {
        405: loopback.get(url + "/v1/chat/completions"),
        404: loopback.post(url + "/v1/chat/completions/x", json={"model": "router", "messages": []}),
    }
    for status, reply in replies.items():
        assert reply.status_code == status, reply.text
        error = reply.json()["error"]
        assert isinstance(error, dict) and error["message"] and error["type"] == "invalid_request_error", reply.text
        assert set(error) == {"message", "type", "param", "code"}
    assert replies[405].json()["error"]["code"] == "method_not_allowed" and replies[405].headers["allow"] == "POST"
    assert replies[404].json()["error"]["code"] == "not_found"
    with pytest.raises(openai.NotFoundError) as caught:  # the OpenAI client's own exception, with the message
        client(url).post("/chat/completions/x", body={}, cast_to=object)
    assert caught.value.body == replies[404].json()["error"]
    elsewhere = loopback.get(url + "/v1/nope")
    assert elsewhere.status_code == 404 and elsewhere.json() == {"error": "not_found", "message": "Not Found"}
    assert loopback.get(url + "/v1/chat").json()["error"] == "not_found"  # not the gateway's path


def test_when_only_route_false_models_have_an_upstream_a_routed_request_is_a_503_not_a_knob_error(
    fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The routable models have no upstream and only a judge (`route = false`) has one: that is the deployment's
    setup, a 503 `no_upstream` saying so; it was a 400 naming `bandit_router.models`, a knob the caller never sent."""
    monkeypatch.setenv(KEY_ENV, KEY)
    specs = (ModelSpec("unreachable", 1.0, 2.0),
             ModelSpec(JUDGE, *PRICES[JUDGE], base_url=fake.url + "/v1", api_key_env=KEY_ENV, route=False))
    server = ServerThread(create_app(Settings(db=tmp_path / "j.db", seed=7, models=specs)))
    try:
        url = server.wait_ready()
        reply = loopback.post(url + "/v1/chat/completions",
                              json={"model": "router", "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 503, reply.text
        error = reply.json()["error"]
        assert error["code"] == "no_upstream" and error["param"] is None, error
        assert "only route = false models do: " + JUDGE in error["message"]
    finally:
        server.stop()


def test_a_model_retired_while_a_request_is_routed_is_left_out_never_blamed_on_a_knob(
    fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retirement (`DELETE /v1/models/{name}`, stored through the engine) lands after the gateway listed a
    request's models and before the router decides (routing waits for the event loop's next turn), or before a
    fallback: the request routes among the models still active and answers. Without a knob it was a 400 naming
    `bandit_router.models`, a knob the caller never sent (`offline` has no upstream, so the gateway passes the
    callable models as the allowed set); with a knob, a 400 blaming it for a model that was active when the request
    arrived, also after a failed first try had been stored."""
    monkeypatch.setenv(KEY_ENV, KEY)
    names = ("fake-coder", "fake-writer", "fake-small")
    specs = (*(ModelSpec(n, *PRICES[n], base_url=fake.url + "/v1", api_key_env=KEY_ENV) for n in names),
             ModelSpec("offline", 1.0, 2.0))  # fmt: skip
    body: dict[str, Any] = {"model": "router", "messages": [{"role": "user", "content": CODE}]}
    knob = {**body, "bandit_router": {"models": list(names)}}
    for n, (request, when) in enumerate(((body, "before"), (knob, "before"), (knob, "after"))):
        app = create_app(Settings(db=tmp_path / f"r{n}.db", seed=7, models=specs))
        server = ServerThread(app)
        try:
            url = server.wait_ready()
            engine = app.state.engine
            route, retired = engine.route, []

            async def retire_then_route(routed: Any, when: str = when, engine: Any = engine, route: Any = route,
                                        retired: list[str] = retired) -> Any:  # fmt: skip
                if when == "before" and not retired:  # stored between the gateway's listing and the router's decision
                    retired.append("fake-writer")
                    await engine.retire_model("fake-writer")
                decision = await route(routed)
                if when == "after" and not retired:  # the first choice fails; another is retired before the fallback
                    fake.set(decision.model, "fail")
                    retired.append(next(m for m in names if m != decision.model))
                    await engine.retire_model(retired[0])
                return decision

            monkeypatch.setattr(engine, "route", retire_then_route)
            reply = loopback.post(url + "/v1/chat/completions", json=request, timeout=30)
            assert reply.status_code == 200, (n, reply.text)
            answered = reply.json()["model"]
            assert answered in names and answered not in retired, (n, answered, retired)
            assert retired and retired[0] in loopback.get(url + "/v1/models").json()["retired"]
            assert reply.headers["x-bandit-router-attempts"] == ("2" if when == "after" else "1")
        finally:
            fake.behaviour.clear()
            server.stop()


def test_behind_a_path_prefix_the_gateways_routing_errors_keep_openais_shape(tmp_path: Path) -> None:
    """Mounted under a proxy's prefix (`root_path`), the gateway's path is still recognised for a routing error (it
    was read from the full path, prefix included, and answered in the service's shape)."""
    from fastapi.testclient import TestClient

    from bandit_router.config import Settings
    from bandit_router.service import create_app

    with TestClient(create_app(Settings(db=tmp_path / "p.db", seed=1)), root_path="/api") as prefixed:
        reply = prefixed.get("/api/v1/chat/completions")
        assert reply.status_code == 405 and reply.json()["error"]["code"] == "method_not_allowed", reply.text
        elsewhere = prefixed.get("/api/v1/nope")
        assert elsewhere.status_code == 404 and elsewhere.json()["error"] == "not_found", elsewhere.text


def test_the_services_own_api_keys_guard_the_gateway(gateway: Callable[..., str]) -> None:
    from bandit_router.config import Secrets

    service_key = "client-key-0123456789abcdef"
    url = gateway(api_keys=Secrets((service_key,)))
    with pytest.raises(openai.AuthenticationError) as caught:
        client(url).chat.completions.create(model="router", messages=[{"role": "user", "content": CODE}])
    assert caught.value.status_code == 401 and caught.value.body["type"] == "authentication_error"  # type: ignore[index]
    keyed = openai.OpenAI(base_url=url + "/v1", api_key=service_key, max_retries=0)
    assert keyed.chat.completions.create(model="router", messages=[{"role": "user", "content": CODE}]).model in MODELS
    assert keyed.models.list().data[0].id == "router"


# -- secrets ------------------------------------------------------------------------------------------------------
def test_the_upstream_key_never_reaches_logs_replies_metrics_or_the_database(
    gateway: Callable[..., str], fake: FakeUpstream, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    url = gateway(access_log=True, log_level="debug")
    texts: list[str] = []
    c = client(url)
    c.chat.completions.create(model="router", messages=[{"role": "user", "content": CODE}])
    list(c.chat.completions.create(model="router", messages=[{"role": "user", "content": PROSE}], stream=True))
    fake.set("fake-coder", "fail")
    fake.set("fake-writer", "hang")
    fake.set("fake-small", "fail")
    for model in ("fake-coder", "router"):
        with pytest.raises(openai.APIStatusError) as caught:
            client(url).with_options(timeout=10).chat.completions.create(
                model=model, messages=[{"role": "user", "content": CODE}],
                extra_body={"bandit_router": {"models": ["fake-coder", "fake-small"]}} if model == "router" else None)
        texts.append(caught.value.response.text)
    with pytest.raises(openai.BadRequestError) as rejected:
        c.chat.completions.create(model="fake-coder", messages=[{"role": "user", "content": CODE}], temperature=3)
    texts.append(rejected.value.response.text)
    for path in ("/v1/stats", "/v1/models", "/metrics", "/openapi.json"):
        texts.append(loopback.get(url + path).text)
    assert f"Bearer {KEY}" in fake.authorizations
    assert KEY not in caplog.text and all(KEY not in t for t in texts)
    time.sleep(0.3)
    for file in tmp_path.glob("gw*.db*"):
        assert KEY.encode() not in file.read_bytes()


# -- learning -----------------------------------------------------------------------------------------------------
def test_feedback_through_the_gateway_teaches_the_better_model_per_prompt_kind(
    gateway: Callable[..., str],
) -> None:
    """2,400 routed calls through the `openai` client, half code and half prose prompts, each answered by the fake
    upstream (fake-coder: code 0.9, prose 0.3; fake-writer: the reverse; fake-small 0.5 on both; ±0.1 noise) and
    fed back with the quality the answer states. Over the last 600 calls the better model of each kind takes at
    least 75% of that kind's traffic (seed 7; a router that had not learned the kinds apart would give each model
    about a third)."""
    url = gateway(cost_weight=0.0)
    c = client(url)
    codes = ["Fix the bug in this Python function: def f(x): return x +",
             "Write a SQL query that lists the ten largest orders",
             "Why does this code not compile: int main() { return 0 }",
             "Refactor this Python function to remove the global variable"]
    proses = ["Write a short poem about the sea at dawn", "Describe an autumn morning in a small village",
              "Write a friendly note thanking a colleague for their help", "Tell a story about a lighthouse keeper"]
    chosen: list[tuple[str, str]] = []
    with httpx.Client() as http:
        for i in range(2400):
            kind = "code" if i % 2 == 0 else "prose"
            prompt = (codes if kind == "code" else proses)[(i // 2) % 4]
            raw = c.chat.completions.with_raw_response.create(model="router",
                                                              messages=[{"role": "user", "content": prompt}])
            answer = raw.parse()
            chosen.append((kind, answer.model))
            feedback(url, raw.headers["x-decision-id"], quality_in(answer.choices[0].message.content) or 0.0,
                     http=http)
    last = chosen[-600:]
    code = Counter(m for k, m in last if k == "code")
    prose = Counter(m for k, m in last if k == "prose")
    assert code["fake-coder"] / code.total() >= 0.75, code
    assert prose["fake-writer"] / prose.total() >= 0.75, prose


# -- the judge ----------------------------------------------------------------------------------------------------
def test_the_judge_scores_sampled_answers_and_the_callers_feedback_takes_precedence(
    gateway: Callable[..., str],
) -> None:
    url = gateway(models=(*MODELS, JUDGE), judge_model=JUDGE, judge_sample_rate=1.0, judge_delay_s=0.3)
    c = client(url)
    ids = []
    for _ in range(6):
        raw = c.chat.completions.with_raw_response.create(model="router", messages=[{"role": "user", "content": CODE}],
                                                          extra_body={"bandit_router": {"models": list(MODELS)}})
        ids.append((raw.headers["x-decision-id"], quality_in(raw.parse().choices[0].message.content)))
    # the caller answers the first one before the judge: the caller's feedback is learned, the judge's dropped
    first_id = ids[0][0]
    assert feedback(url, first_id, 0.05)["status"] == "applied"
    for decision_id, shown in ids[1:]:
        rows = settle(url, decision_id)
        assert rows and rows[0]["source"] == "judge" and rows[0]["learned"]
        assert rows[0]["quality"] == pytest.approx(round(10 * shown) / 10)  # type: ignore[operator]
        assert rows[0]["cost_usd"] is not None  # completed from the call record
    # a caller after the judge: accepted (stored, not learned), never a 409
    late = feedback(url, ids[1][0], 0.99)
    assert late["status"] == "ignored"
    time.sleep(0.5)
    assert [r["source"] for r in decision(url, first_id)["feedback"]] == [None]
    judge = loopback.get(url + "/v1/stats").json()["judge"]
    assert judge["model"] == JUDGE and judge["scored"] == 5 and judge["overridden"] == 1
    assert judge["spend_usd"] > 0 and judge["input_tokens"] > 0
    metrics = loopback.get(url + "/metrics").text
    assert 'bandit_router_judge_jobs{state="scored"} 5.0' in metrics and "bandit_router_judge_spend_usd" in metrics


@pytest.mark.parametrize("aggregation", ["reject", "earliest", "average"])
def test_a_judge_job_whose_decision_the_caller_rated_during_the_delay_calls_no_judge(
    gateway: Callable[..., str], fake: FakeUpstream, aggregation: str
) -> None:
    """`judge_delay_s` is the time the caller's own feedback has to win. A caller who answered within it made the
    judge's score a conflict (`reject`) or a feedback never learned (`earliest`), yet the judge called its model
    anyway, paid for it (`judge.spend_usd`, booked in the budgets) and dropped the score. It drops the job without a
    call now (`overridden`); under `aggregation = "average"` the judge's score is averaged with the caller's, so it
    is still called. The delay, 2 s, leaves a loaded machine time to post the feedback over HTTP first (with 0.5 s
    a slow feedback let the judge run, and the test failed); each feedback's time after its reply is checked."""
    delay_s = 2.0
    settings: dict[str, Any] = {"reward_window_s": 30.0} if aggregation == "average" else {}
    url = gateway(models=(*MODELS, JUDGE), judge_model=JUDGE, judge_sample_rate=1.0, judge_delay_s=delay_s,
                  aggregation=aggregation, **settings)
    judge_calls = fake.calls[JUDGE]
    c = client(url)
    for _ in range(3):
        raw = c.chat.completions.with_raw_response.create(model="router", messages=[{"role": "user", "content": CODE}],
                                                          extra_body={"bandit_router": {"models": list(MODELS)}})
        replied = time.monotonic()
        feedback(url, raw.headers["x-decision-id"], 0.7)
        took = time.monotonic() - replied
        assert took < delay_s, f"the feedback took {took:.2f} s, past judge_delay_s: the machine is too slow to test"
    deadline = time.monotonic() + 10
    while (judge := loopback.get(url + "/v1/stats").json()["judge"])["queued"] or \
            judge["overridden"] + judge["scored"] + judge["failed"] < 3:
        assert time.monotonic() < deadline, judge
        time.sleep(0.05)
    if aggregation == "average":
        assert judge["scored"] == 3 and judge["calls"] == 3 and fake.calls[JUDGE] - judge_calls == 3, judge
    else:
        assert judge["overridden"] == 3 and judge["calls"] == 0 and judge["spend_usd"] == 0, judge
        assert fake.calls[JUDGE] == judge_calls


def test_a_judge_delayed_past_the_reward_window_with_a_default_reward_calls_no_judge(
    gateway: Callable[..., str], fake: FakeUpstream
) -> None:
    """The judge skips a decision with any stored feedback, and a closed reward window's `default_reward` is one: with
    `judge_delay_s` longer than `reward_window_s` every sampled job finds it and is dropped without a call, as the
    gateway page says."""
    url = gateway(models=(*MODELS, JUDGE), judge_model=JUDGE, judge_sample_rate=1.0, judge_delay_s=3.0,
                  reward_window_s=0.5, default_reward=0.5)
    judge_calls = fake.calls[JUDGE]
    c = client(url)
    ids = [c.chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": CODE}],
        extra_body={"bandit_router": {"models": list(MODELS)}}).headers["x-decision-id"] for _ in range(3)]
    deadline = time.monotonic() + 15
    while (judge := loopback.get(url + "/v1/stats").json()["judge"])["queued"] or \
            judge["overridden"] + judge["scored"] + judge["failed"] < 3:
        assert time.monotonic() < deadline, judge
        time.sleep(0.05)
    assert judge["overridden"] == 3 and judge["calls"] == 0 and fake.calls[JUDGE] == judge_calls, judge
    assert all([r["status"] for r in decision(url, i)["feedback"]] == ["default"] for i in ids)


@pytest.mark.parametrize("judge_from", ["file", "added"])
def test_a_judge_model_retired_at_run_time_still_judges_after_a_restart(
    fake: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture, judge_from: str
) -> None:
    """`DELETE /v1/models/<judge_model>` was taken (200) and the judge went on calling the model, but the next start
    of the unchanged configuration was refused ("judge_model: … was retired at run time"); it restarted before
    the live catalog was checked. It starts, saying so, and the judge goes on calling it, as it did after the
    DELETE: a catalog file model (`file`), or one `POST /v1/models` added (`added`, called through
    `default_base_url`: the gateway has the live catalog's retired models' upstreams before the recovery)."""
    in_file = (JUDGE,) if judge_from == "file" else ()
    specs = tuple(ModelSpec(name, *PRICES[name], base_url=fake.url + "/v1") for name in (*MODELS, *in_file))

    def serve(**changes: Any) -> ServerThread:
        server = ServerThread(create_app(Settings(db=tmp_path / "judge.db", models=specs, seed=7,
                                                  default_base_url=fake.url + "/v1", **changes)))
        server.wait_ready()
        return server

    server = serve(**({"judge_model": JUDGE, "judge_sample_rate": 1.0} if judge_from == "file" else {}))
    try:
        if judge_from == "added":
            added = loopback.post(server.url + "/v1/models", json={"name": JUDGE, "input_usd_per_mtok": 0.1,
                                                                   "output_usd_per_mtok": 0.2})
            assert added.status_code == 201, added.text
        assert loopback.delete(f"{server.url}/v1/models/{JUDGE}").status_code == 200
    finally:
        server.stop()
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        server = serve(judge_model=JUDGE, judge_sample_rate=1.0)
    try:
        assert f"judge_model: {JUDGE!r} was retired at run time" in caplog.text
        assert "the judge goes on calling it" in caplog.text
        raw = client(server.url).chat.completions.with_raw_response.create(
            model="router", messages=[{"role": "user", "content": CODE}])
        rows = settle(server.url, raw.headers["x-decision-id"])
        assert rows and rows[0]["source"] == "judge", rows
        assert loopback.get(server.url + "/v1/stats").json()["judge"]["scored"] == 1
        assert JUDGE not in [m.id for m in client(server.url).models.list().data]
    finally:
        server.stop()


def test_counterfactual_evaluation_reads_first_tries_and_leaves_fallbacks_out(
    gateway: Callable[..., str], fake: FakeUpstream, tmp_path: Path
) -> None:
    from bandit_router.evaluation.store_log import iter_log
    from bandit_router.store import SQLiteStore

    url = gateway(max_attempts=3)
    fake.set("fake-coder", "fail")
    answered = []
    for _ in range(15):
        raw = client(url).chat.completions.with_raw_response.create(
            model="router", messages=[{"role": "user", "content": CODE}])
        answered.append((raw.headers["x-decision-id"], int(raw.headers["x-bandit-router-attempts"])))
        feedback(url, raw.headers["x-decision-id"], 0.5)
    time.sleep(0.3)
    fallbacks = {d for d, attempts in answered if attempts > 1}
    assert fallbacks  # fake-coder was tried first at least once
    store = SQLiteStore(tmp_path / "gw0.db")
    first_tries = [r.decision.decision_id for r in iter_log(store)]
    everything = [r.decision.decision_id for r in iter_log(store, fallbacks=True)]
    store.close()
    assert len(everything) == 15 + len(fallbacks) and len(first_tries) == 15
    assert not fallbacks & set(first_tries) and fallbacks <= set(everything)


@pytest.mark.parametrize("stream", [False, True])
def test_with_several_workers_the_reply_waits_for_its_call_record(
    gateway: Callable[..., str], stream: bool
) -> None:
    """With `workers > 1` the feedback may reach another process: the reply is sent only once the call record is
    committed, so a feedback right after it (read from the database) finds the tokens and the cost."""
    url = gateway(workers=2)
    raw = client(url).chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": PROSE}], stream=stream)
    body = raw.parse()
    if stream:
        list(body)  # type: ignore[call-overload]
    feedback(url, raw.headers["x-decision-id"], 0.6)
    row = decision(url, raw.headers["x-decision-id"])["feedback"][0]
    assert row["output_tokens"] is not None and row["cost_usd"] is not None


def test_call_slots_are_all_given_back_when_waits_time_out_as_slots_free_up() -> None:
    """Many callers wait for one model's two call slots with deadlines that expire while holders release theirs
    (a timeout racing a wake-up must not keep the slot): every caller either gets a slot or a TIMEOUT failure,
    and afterwards both slots are free again."""
    from bandit_router.gateway import Endpoint, UpstreamFailure, Upstreams
    from bandit_router.gateway.upstreams import CallStatus

    spec = ModelSpec("fake-small", *PRICES["fake-small"], base_url="http://127.0.0.1:9/v1", max_concurrency=2)
    endpoint = Endpoint.of(spec, default_base_url=None, default_api_key_env=None, timeout_s=10,
                           connect_timeout_s=5, max_concurrency=2)
    assert endpoint is not None

    async def scenario() -> tuple[int, int]:
        upstreams = Upstreams([endpoint], max_response_bytes=1_000)
        got = timed_out = 0

        async def caller(i: int) -> None:
            nonlocal got, timed_out
            await asyncio.sleep((i % 7) * 0.0005)
            try:
                await upstreams._acquire("fake-small", time.monotonic() + (i % 5) * 0.001)
            except UpstreamFailure as exc:
                assert exc.status is CallStatus.TIMEOUT
                timed_out += 1
                return
            got += 1
            await asyncio.sleep(0.001)
            upstreams._slots["fake-small"].release()

        try:
            await asyncio.gather(*(caller(i) for i in range(400)))
            for _ in range(2):  # both slots free: two immediate acquisitions succeed
                await upstreams._acquire("fake-small", time.monotonic() + 0.01)
            with pytest.raises(UpstreamFailure):
                await upstreams._acquire("fake-small", time.monotonic() + 0.01)
        finally:
            await upstreams.aclose()
        return got, timed_out

    got, timed_out = asyncio.run(scenario())
    assert got + timed_out == 400 and got > 0 and timed_out > 0


def _fallback_with_a_catalog_change(
    fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...],
    change: Callable[[Router, str], None],
) -> tuple[httpx.Response, list[str], list[str]]:
    """A chat completion allowing `names` whose first choice fails (stored); `change(router, model)` is applied,
    as the writer thread would, to the first model the fallback's decision is asked about, after the gateway listed
    them and before the router decided. (The reply, the failed model, the changed model.)"""
    monkeypatch.setenv(KEY_ENV, KEY)
    specs = tuple(ModelSpec(n, *PRICES[n], base_url=fake.url + "/v1", api_key_env=KEY_ENV) for n in names)
    body: dict[str, Any] = {"model": "router", "messages": [{"role": "user", "content": CODE}],
                            "bandit_router": {"models": list(names)}}  # fmt: skip
    app = create_app(Settings(db=tmp_path / "r.db", seed=7, models=specs))
    server = ServerThread(app)
    try:
        url = server.wait_ready()
        engine = app.state.engine
        router, route, decide = engine.router, engine.route, engine.router.decide
        failed: list[str] = []
        changed: list[str] = []

        async def route_then_fail(routed: Any) -> Any:
            decision = await route(routed)
            fake.set(decision.model, "fail")  # the first choice fails: a fallback is decided
            failed.append(decision.model)
            return decision

        def change_then_decide(context: Any, **kwargs: Any) -> Any:
            if failed and not changed:  # the fallback's: applied on the writer thread after the gateway listed them
                changed.append(kwargs["models"][0])
                change(router, changed[0])
            return decide(context, **kwargs)

        monkeypatch.setattr(engine, "route", route_then_fail)
        monkeypatch.setattr(router, "decide", change_then_decide)
        return loopback.post(url + "/v1/chat/completions", json=body, timeout=30), failed, changed
    finally:
        fake.behaviour.clear()
        server.stop()


def test_a_retirement_landing_between_a_fallbacks_listing_and_its_decision_is_listed_again_not_a_400(
    fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first choice fails and is stored; the writer thread applies a retirement (`Router.retire_model`, what
    it does for `DELETE /v1/models/{name}`) after the gateway listed the fallback's remaining models and before
    the router decided among them: the gateway lists them again and falls back to a model still active. It was a
    400 (`UnknownModel`) after the failed first try had been stored."""
    names = ("fake-coder", "fake-writer", "fake-small")

    def retire(router: Router, model: str) -> None:
        router.retire_model(model)

    reply, failed, retired = _fallback_with_a_catalog_change(fake, tmp_path, monkeypatch, names, retire)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-bandit-router-attempts"] == "2"
    answered = reply.json()["model"]
    assert answered in names and answered not in (*failed, *retired), (answered, failed, retired)
    assert retired and retired[0] != failed[0]


def test_a_fallback_model_added_back_with_route_false_between_listing_and_deciding_is_no_fallback_not_a_400(
    fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first choice fails and is stored; the writer thread retires the other allowed model and adds it back
    with `route = false` (DELETE then POST /v1/models: now a judge's model) after the gateway listed the fallback's
    models and before the router decided among them: no model is left to fall back to, so the caller gets the 502
    naming the failed try. It was a 400 (`UnknownModel`: no routable model among these) blaming
    `bandit_router.models`, read as "not a retirement" because the name was still active."""
    names = ("fake-coder", "fake-writer")

    def readd(router: Router, model: str) -> None:
        spec = router.retire_model(model)
        router.add_model(ModelSpec(spec.name, *PRICES[spec.name], base_url=spec.base_url, api_key_env=KEY_ENV,
                                   route=False))

    reply, failed, readded = _fallback_with_a_catalog_change(fake, tmp_path, monkeypatch, names, readd)
    assert reply.status_code == 502, reply.text
    assert failed[0] in reply.json()["error"]["message"] and "1 tried" in reply.json()["error"]["message"]
    assert readded == [m for m in names if m != failed[0]]


def test_a_model_added_back_with_route_false_while_a_request_is_routed_is_never_blamed_on_a_knob(
    fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The only routable model with an upstream is retired and added back with `route = false` (DELETE then POST
    /v1/models) after the gateway listed a request's models and before the router decided: the request gets what a
    request after it gets, the 503 saying no routable model has an upstream. It was a 400 naming
    `bandit_router.models`, a knob the caller never sent (`offline` has no upstream, so the gateway passes the
    callable models as the allowed set), read as "not a retirement" because the name was still active."""
    monkeypatch.setenv(KEY_ENV, KEY)
    specs = (ModelSpec("fake-coder", *PRICES["fake-coder"], base_url=fake.url + "/v1", api_key_env=KEY_ENV),
             ModelSpec("offline", 1.0, 2.0))  # fmt: skip
    app = create_app(Settings(db=tmp_path / "r.db", seed=7, models=specs))
    server = ServerThread(app)
    try:
        url = server.wait_ready()
        engine = app.state.engine
        router, route = engine.router, engine.route

        async def readd_then_route(routed: Any) -> Any:  # applied on the writer thread after the gateway listed it
            spec = router.retire_model("fake-coder")
            router.add_model(ModelSpec(spec.name, *PRICES[spec.name], base_url=spec.base_url, api_key_env=KEY_ENV,
                                       route=False))  # fmt: skip
            return await route(routed)

        monkeypatch.setattr(engine, "route", readd_then_route)
        body = {"model": "router", "messages": [{"role": "user", "content": CODE}]}
        reply = loopback.post(url + "/v1/chat/completions", json=body, timeout=30)
        assert reply.status_code == 503, reply.text
        error = reply.json()["error"]
        assert error["code"] == "no_upstream" and error["param"] is None, error
        assert "only route = false models do: fake-coder" in error["message"]
    finally:
        server.stop()


def test_a_named_model_retired_before_its_decision_is_a_404_not_a_500(
    fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread applies a retirement (`Router.retire_model`, what it does for `DELETE /v1/models/{name}`)
    of the model a request names after the gateway checked the name and before its `caller` decision was made
    (here while the request is featurized): the decision looked the model's arm up among the models left, a
    ValueError and a 500. It is the 404 `model_not_found` of a request that came after the retirement, nothing
    called or stored; the next request naming it is the usual 404."""
    monkeypatch.setenv(KEY_ENV, KEY)
    names = ("fake-coder", "fake-writer", "fake-small")
    specs = tuple(ModelSpec(n, *PRICES[n], base_url=fake.url + "/v1", api_key_env=KEY_ENV) for n in names)
    app = create_app(Settings(db=tmp_path / "r.db", seed=7, models=specs))
    server = ServerThread(app)
    try:
        url = server.wait_ready()
        router = app.state.engine.router
        featurize = router.featurize
        retired: list[str] = []

        def retire_then_featurize(request: Any) -> Any:
            if not retired:
                retired.append("fake-writer")
                router.retire_model("fake-writer")
            return featurize(request)

        monkeypatch.setattr(router, "featurize", retire_then_featurize)
        body = {"model": "fake-writer", "messages": [{"role": "user", "content": CODE}]}
        calls = sum(fake.calls.values())
        reply = loopback.post(url + "/v1/chat/completions", json=body, timeout=30)
        assert retired and reply.status_code == 404, reply.text
        error = reply.json()["error"]
        assert (error["code"], error["param"]) == ("model_not_found", "model"), error
        assert error["message"] == ("model: 'fake-writer' was retired (DELETE /v1/models) while this request was in "
                                    "flight: name an active catalog model or 'router'")
        assert sum(fake.calls.values()) == calls and loopback.get(url + "/v1/stats").json()["decisions"] == 0
        again = loopback.post(url + "/v1/chat/completions", json=body, timeout=30)
        assert again.status_code == 404 and "is neither 'router' nor a catalog model" in again.text, again.text
    finally:
        server.stop()


def test_an_upstream_refusing_the_key_is_logged_once_a_minute_not_on_every_request(
    gateway: Callable[..., str], fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """A model whose upstream refuses the gateway's key (401) is tried by every request sent to it (here named by
    the caller: a 502 naming the refusal). Before, each such try logged the same WARNING (a wrong key under load: a
    line per request); now it is logged once a minute per model, saying how many were left out."""
    url = gateway()
    fake.set("fake-coder", "unauthorized")
    called = fake.calls["fake-coder"]  # the fake serves the whole module
    with caplog.at_level(logging.WARNING, logger="bandit_router.gateway"):
        for _ in range(8):
            reply = loopback.post(url + "/v1/chat/completions", timeout=30, json={
                "model": "fake-coder", "messages": [{"role": "user", "content": CODE}]})
            assert reply.status_code == 502 and "refused the request (401)" in reply.text, reply.text
    said = [r.getMessage() for r in caplog.records if "check the model's api_key_env" in r.getMessage()]
    assert len(said) == 1 and "fake-coder" in said[0], said
    assert fake.calls["fake-coder"] - called == 8  # tried each time: only the log line is spared
