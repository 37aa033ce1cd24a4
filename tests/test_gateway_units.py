"""The gateway's pieces without a server: catalog upstream keys, settings, the feedback rules it relies on,
pricing, the chat-request parser, deciding among models that may retire meanwhile, the reward-window sweep of its
calls and the time series' arithmetic."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import pytest

from bandit_router.catalog import ModelSpec, load_catalog
from bandit_router.config import ConfigError, Settings
from bandit_router.errors import CatalogError, UnknownModel
from bandit_router.gateway import BadChatRequest, PromptTooLarge, parse_chat
from bandit_router.gateway.active import decide_among_active
from bandit_router.gateway.gateway import CALL_MARGIN_S, Gateway, no_time_left
from bandit_router.gateway.judge import Judge, late_scores_warning
from bandit_router.gateway.pricing import Usage, estimate_input, estimated, usage_of
from bandit_router.log import FeedbackRules, Verdict, judge, with_call
from bandit_router.log.timeseries import Window, timeseries
from bandit_router.router import Router
from bandit_router.service.engine import Engine
from bandit_router.store import CallRecord, CallStatus, FeedbackRecord, MinuteStats, SQLiteStore, StoreError
from bandit_router.types import Outcome, Request

BASE = {"name": "m", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}


def test_a_catalog_entry_carries_its_upstream() -> None:
    spec = ModelSpec.from_json({**BASE, "base_url": "https://api.together.xyz/v1", "api_key_env": "TOGETHER_KEY",
                                "upstream_model": "meta-llama/Llama-3.1-8B", "timeout_s": 30, "max_concurrency": 8})
    assert spec.upstream_name == "meta-llama/Llama-3.1-8B" and spec.timeout_s == 30.0
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert "base_url" not in spec.learning_json() and spec.learning_json() == ModelSpec.from_json(BASE).to_json()
    assert ModelSpec.from_json(BASE).upstream_name == "m"


@pytest.mark.parametrize(("key", "value", "match"), [
    ("base_url", "ftp://x/v1", "base_url"),
    ("base_url", "https://user:secret@api.example.com/v1", "credentials"),
    ("base_url", "https://api.example.com/v1?key=secret", "query"),
    ("api_key_env", "sk-live-0123456789abcdef/=", "NAME of an environment variable"),
    ("upstream_model", "", "upstream_model"),
    ("timeout_s", 0, "timeout_s"),
    ("connect_timeout_s", float("inf"), "connect_timeout_s"),
    ("max_concurrency", 0, "max_concurrency"),
    ("max_concurrency", 2.5, "max_concurrency"),
    ("judge_params", {"messages": []}, r"may not set \['messages'\]"),
    ("judge_params", {"max_tokens": float("nan")}, "JSON values"),
    ("judge_params", "max_tokens=5", "table of request fields"),
    ("judge_params", {"x": "y" * 5000}, "too large"),
])
def test_bad_upstream_keys_are_refused(key: str, value: object, match: str) -> None:
    with pytest.raises(CatalogError, match=match):
        ModelSpec.from_json({**BASE, key: value})


def test_judge_params_load_from_toml_as_a_copy_and_round_trip(tmp_path: Path) -> None:
    """A catalog file's inline table; the spec keeps its own copy (a caller's later change does not reach it)."""
    path = tmp_path / "catalog.toml"
    path.write_text('[[models]]\nname = "o4-mini"\ninput_usd_per_mtok = 1.1\noutput_usd_per_mtok = 4.4\n'
                    'judge_params = { max_completion_tokens = 500, reasoning_effort = "low" }\n')
    spec = load_catalog(path)["o4-mini"]
    assert spec.judge_request({"temperature": 0}) == {"max_completion_tokens": 500, "reasoning_effort": "low"}
    assert ModelSpec("m", 1, 2).judge_request({"temperature": 0}) == {"temperature": 0}
    assert ModelSpec.from_json(spec.to_json()) == spec and "judge_params" not in spec.learning_json()
    given = {"stop": ["\n"]}
    copied = ModelSpec("m", 1, 2, judge_params=given)
    given["stop"].append("x")
    assert copied.judge_request({}) == {"stop": ["\n"]}


def test_upstream_keys_do_not_change_the_learned_states_fingerprint() -> None:
    plain = Settings(models=(ModelSpec("m", 1.0, 2.0),))
    called = Settings(models=(ModelSpec("m", 1.0, 2.0, base_url="http://127.0.0.1:1/v1", api_key_env="K"),))
    assert plain.fingerprint_source() == called.fingerprint_source()


def test_gateway_and_judge_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="router_alias"):
        Settings(models=(ModelSpec("router", 1.0, 2.0),)).check()
    with pytest.raises(ConfigError, match="judge_model"):
        Settings(judge_model="nope").check()
    with pytest.raises(ConfigError, match="judge_sample_rate"):
        Settings(judge_sample_rate=0.5)
    with pytest.raises(ConfigError, match="max_attempts"):
        Settings(max_attempts=0)
    with pytest.raises(ConfigError, match="default_base_url"):
        Settings(default_base_url="not a url")
    assert Settings(default_base_url="http://127.0.0.1:11434/v1").gateway.max_attempts == 3


def test_a_judge_whose_every_score_comes_after_the_reward_window_is_warned_of_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`judge_delay_s` ≥ `reward_window_s` without a `default_reward`: every score is stored late and never learned
    while every call is paid. Not refused (an evaluation-only judge is a use): the start says so, once."""
    models = (ModelSpec("m", 1.0, 2.0), ModelSpec("j", 1.0, 2.0))
    judged = {"judge_model": "j", "judge_sample_rate": 0.5}
    late = Settings(models=models, **judged, judge_delay_s=60.0, reward_window_s=60.0)
    message = late_scores_warning(late)
    assert message is not None and "judge_delay_s (60 s) is not shorter than reward_window_s (60 s)" in message
    assert late_scores_warning(Settings(models=models, **judged, judge_delay_s=59.0, reward_window_s=60.0)) is None
    assert late_scores_warning(Settings(models=models, **judged, judge_delay_s=90.0, reward_window_s=60.0,
                                        default_reward=0.5)) is None  # every job finds the default: no call
    assert late_scores_warning(Settings(models=models, judge_model="j", judge_delay_s=90.0,
                                        reward_window_s=60.0)) is None  # samples nothing
    assert late_scores_warning(Settings(models=models, **judged, judge_delay_s=90.0)) is None  # no window

    async def start_and_stop() -> None:
        judge = Judge(late, models[1], None, None)  # type: ignore[arg-type]  # neither is used by start/stop
        judge.start()
        await judge.stop()

    with caplog.at_level(logging.WARNING, logger="bandit_router.gateway"):
        asyncio.run(start_and_stop())
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [message]


def test_no_call_is_started_in_the_last_milliseconds_before_the_deadline() -> None:
    """A wait cut at the request's deadline can end up to about a millisecond before `time.monotonic()` reaches it
    (uvloop's timers; the review of the LLM router's deadline check saw a test fail 1 time in 11 so): inside
    `CALL_MARGIN_S` of the deadline there is no time left to start a call, for the gateway's tries and the LLM
    router's answer calls alike."""
    assert CALL_MARGIN_S >= 0.002  # twice uvloop's timer step
    now = time.monotonic()
    assert no_time_left(now) and no_time_left(now - 1.0)
    assert no_time_left(time.monotonic() + 0.001)  # a timer that fired 1 ms early
    assert not no_time_left(time.monotonic() + 1.0)


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "America/St_Johns", "Pacific/Kiritimati", "Etc/GMT+12"])
def test_an_http_date_in_retry_after_is_read_as_utc_in_every_format_whatever_the_hosts_zone(
    zone: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upstream's 429 may give `Retry-After` as an HTTP date, in UTC in all its formats (RFC 9110 §5.6.7); the
    asctime one names no zone and a `-0000` one says none, and both were read as the host's local time: under
    TZ=America/St_Johns a date two minutes ahead read as 3 h 32 min (the gateway's caller was told to wait that
    long), under TZ=Asia/Kolkata as already past (0). Each format now reads two minutes in every zone."""
    from bandit_router.gateway.upstreams import _retry_after

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        at = time.time() + 120
        dates = [email.utils.formatdate(at, usegmt=True), email.utils.formatdate(at),  # GMT, -0000
                 time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(at)),  # asctime: Sun Nov  6 08:49:37 1994
                 time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(at))]  # RFC 850
        waits = [_retry_after(date) for date in dates]
    finally:
        monkeypatch.undo()  # the process's own TZ again
        time.tzset()
    assert all(wait is not None and 115 <= wait <= 121 for wait in waits), list(zip(dates, waits, strict=True))


def _row(source: str | None, quality: float = 0.5) -> FeedbackRecord:
    return FeedbackRecord("d", 1.0, quality, None, None, None, None, source, "applied", True, quality, 0.0, "m", None,
                          seq=1)


def test_a_callers_feedback_after_the_judges_is_kept_and_never_a_conflict() -> None:
    rules = FeedbackRules()  # aggregation = reject
    judged = [_row("judge")]
    assert judge(judged, (0.9, None, None, None, None, None), 2.0, 0.0, rules).verdict == Verdict.IGNORED
    assert judge(judged, (0.9, None, None, None, None, "judge"), 2.0, 0.0, rules).verdict == Verdict.CONFLICT
    assert judge([_row(None)], (0.9, None, None, None, None, "judge"), 2.0, 0.0, rules).verdict == Verdict.CONFLICT


def test_feedback_is_completed_from_the_call_record_and_the_callers_values_win() -> None:
    call = CallRecord("d", "d", 1, "m", True, False, "ok", 200, 12, 30, "upstream", 7e-5, 0.1, 0.4, None, 1.0)
    assert with_call(Outcome(quality=0.8), call) == Outcome(0.8, 7e-5, 12, 30, 0.4)
    mine = with_call(Outcome(quality=0.8, output_tokens=50, latency_s=1.0), call)
    assert mine == Outcome(0.8, None, 12, 50, 1.0)  # tokens given: the cost is priced from them, not the call's
    failed = CallRecord("d", "d", 1, "m", True, False, "timeout", None, None, None, None, None, None, 5.0, "x", 1.0)
    assert with_call(Outcome(quality=0.8), failed) == Outcome(quality=0.8)


@pytest.mark.parametrize(("reply", "quality"), [
    ("8", 0.8), ("7.5/10", 0.75), ("Score: 10/10", 1.0), ("12", 1.0), ("-2", 0.0), ("1" * 400, 1.0),
    ("As a GPT-4 based grader: 8", 0.8),  # a number glued to a name is not the score, as for a cascade's judge
    ("v2 of the answer: 6", 0.6), ("no idea", None),
    ("评分8分", 0.8), ("Note : 7", 0.7),  # other scripts may touch it: only ASCII words and names glue
])
def test_the_feedback_judges_quality_is_the_first_number_over_the_scale(reply: str, quality: float | None) -> None:
    from bandit_router.gateway import Judge, Upstreams

    judge = Judge(Settings(models=(ModelSpec("j", 1.0, 2.0),)), ModelSpec("j", 1.0, 2.0),
                  Upstreams([], max_response_bytes=1024), post=lambda *args: asyncio.sleep(0))
    assert judge.quality(reply) == (None if quality is None else pytest.approx(quality))


def test_usage_is_read_or_counted() -> None:
    assert usage_of({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}) == Usage(3, 4)
    assert usage_of({"usage": {"prompt_tokens": -1, "completion_tokens": 4}}) is None
    assert usage_of({"usage": None}) is None
    counted = estimated([{"role": "user", "content": "x" * 400}], "y" * 40)
    assert counted == Usage(3 + 4 + 100, 10, "estimated")
    assert estimate_input([{"role": "user", "content": [{"type": "text", "text": "abcd"}]}]) == 3 + 4 + 1
    assert Usage(1_000_000, 500_000).cost_usd(ModelSpec("m", 1.0, 2.0)) == pytest.approx(2.0)


def test_chat_requests_are_parsed_with_their_knobs() -> None:
    body = {"model": "router", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2, "stream": True,
            "bandit_router": {"cost_weight": 4, "context": {"tenant": "acme"}}}
    chat = parse_chat(body, {"x-bandit-router-cost-weight": "9", "x-bandit-router-models": "a, b"}, alias="router",
                      max_prompt_chars=100)
    assert chat.routed and chat.stream and chat.cost_weight == 4.0 and chat.models == ("a", "b")
    assert "bandit_router" not in chat.payload and chat.payload["temperature"] == 0.2
    assert chat.upstream_payload()["stream_options"] == {"include_usage": True} and not chat.include_usage
    assert chat.core_request().context == {"tenant": "acme"}
    assert chat.models_param == "x-bandit-router-models"  # where the knob came from: a 400 about it names it
    body["bandit_router"] = {"models": ["c"]}
    assert parse_chat(body, {"x-bandit-router-models": "a"}, alias="router", max_prompt_chars=100).models_param == \
        "bandit_router.models"  # the body's knob wins, and is the one named
    with pytest.raises(PromptTooLarge):
        parse_chat({**body, "messages": [{"role": "user", "content": "x" * 101}]}, {}, alias="router",
                   max_prompt_chars=100)
    with pytest.raises(BadChatRequest, match="x-bandit-router-context"):
        parse_chat(body, {"x-bandit-router-context": "{"}, alias="router", max_prompt_chars=100)


def test_the_gateway_benchmark_compares_added_latency_with_litellms() -> None:
    """`benchmarks/bench_gateway.py` imports (it is not type-checked) and judges the target on added latency."""
    from benchmarks.bench_gateway import _median_run, _rows

    def run(p50: float, p99: float) -> dict[str, float]:
        return {"p50_us": p50 * 1000, "p99_us": p99 * 1000, "rps": 1.0, "status_errors": 0, "socket_errors": 0}

    measured = {}
    for stream in (False, True):
        for c in (1, 64):
            measured["direct", stream, c] = run(1, 5)
            measured["bandit-router", stream, c] = _median_run([run(3, 9), run(2, 8), run(30, 90)])
            measured["litellm", stream, c] = run(11, 40)
    ttft = {"direct": {"p50": 1.0, "p99": 2.0}, "bandit-router": {"p50": 2.0, "p99": 4.0},
            "litellm": {"p50": 9.0, "p99": 30.0}}
    rows = {(r["benchmark"], r["metric"]): r for r in _rows(measured, ttft, True)}
    ours = rows["gateway added latency json c=64", "bandit_router_p50_ms"]
    assert ours["value"] == 2.0 and ours["ok"] and ours["target"] == "< litellm 10.00"  # the median round: 3 ms
    assert rows["gateway added time to first token c=1", "bandit_router_p99_ms"]["value"] == 2.0


@pytest.mark.parametrize(("extension", "headers", "field"), [
    ({"cost_weight": 10**400}, {}, "bandit_router.cost_weight"),
    ({"cost_weight": 1.7e308}, {}, "bandit_router.cost_weight"),
    ({}, {"x-bandit-router-cost-weight": "1e400"}, "x-bandit-router-cost-weight"),
    ({}, {"x-bandit-router-cost-weight": "2e9"}, "x-bandit-router-cost-weight"),
    ({"models": ["a", "b c"]}, {}, "bandit_router.models[1]"),
    ({}, {"x-bandit-router-models": ",".join(f"m{i}" for i in range(1025))}, "x-bandit-router-models"),
    ({"context": {"n": 10**200}}, {}, "bandit_router.context.n"),
    ({}, {"x-bandit-router-context": json.dumps({"n": 2**53 + 1})}, "x-bandit-router-context.n"),
    ({"context": {"k": "v" * 257}}, {}, "bandit_router.context.k"),
    ({"context": {"k" * 65: 1}}, {}, "bandit_router.context." + "k" * 65 + ".[key]"),  # as /v1/route names it
    ({"context": {"a": {"b": 1}}}, {}, "bandit_router.context.a"),
])
def test_the_knobs_follow_the_rules_of_v1_route(extension: dict[str, object], headers: dict[str, str],
                                                 field: str) -> None:
    """λ in [0, 10⁹]; at most 1,024 model names; context: at most 32 keys that are names of at most 64 characters,
    strings of at most 256 characters, numbers within ±2⁵³ (`service/schemas.py`); the error names the field."""
    body = {"model": "router", "messages": [{"role": "user", "content": "hi"}], "bandit_router": extension}
    with pytest.raises(BadChatRequest) as caught:
        parse_chat(body, headers, alias="router", max_prompt_chars=100)
    assert caught.value.field == field
    assert "Value error" not in str(caught.value)  # the validator's own words, without pydantic's prefix


@pytest.mark.parametrize(("extension", "headers", "field", "where"), [
    ({"context": {"a\ud800": 1}}, {}, "bandit_router.context.a\\ud800.[key]", "\\ud800 after 1 code point"),
    ({"models": ["gpt-4o", "gpt-4o\ud800"]}, {}, "bandit_router.models[1]", "\\ud800 after 6 code points"),
    ({}, {"x-bandit-router-context": '{"tier\\ud800": "x"}'}, "x-bandit-router-context.tier\\ud800.[key]",
     "\\ud800 after 4 code points"),
    ({"context": {"k" * 300 + "\ud800": 1}}, {}, ("bandit_router.context." + "k" * 300)[:200], "after 300 code"),
])
def test_a_lone_surrogate_in_a_knob_is_said_as_v1_route_says_it(extension: dict[str, object],
                                                                 headers: dict[str, str], field: str,
                                                                 where: str) -> None:
    """Half of a UTF-16 pair (a JSON escape `\\ud800` in the body or in the context header) in a context key or
    a model name: the error says which surrogate and where, and names a key by its escape, as the
    service's 422 does, not pydantic's "unable to parse raw data as a unicode string" with U+FFFD in the field
    (cut at 200 characters)."""
    body = {"model": "router", "messages": [{"role": "user", "content": "hi"}], "bandit_router": extension}
    with pytest.raises(BadChatRequest) as caught:
        parse_chat(body, headers, alias="router", max_prompt_chars=100)
    assert caught.value.field == field
    assert "lone surrogate" in str(caught.value) and where in str(caught.value), str(caught.value)
    assert "unable to parse" not in str(caught.value) and "\ufffd" not in caught.value.field


@pytest.mark.parametrize(("extension", "message"), [
    ({"cost_wieght": 3},
     "unknown keys 'cost_wieght' (did you mean cost_weight?); known: cost_weight, models, context"),
    ({"model": ["a"], "contexts": {}},
     "unknown keys 'contexts' (did you mean context?), 'model' (did you mean models?); known:"),
    ({"temperature": 0.2}, "unknown keys 'temperature'; known: cost_weight, models, context"),
])
def test_an_unknown_knob_gets_a_did_you_mean_hint(extension: dict[str, object], message: str) -> None:
    body = {"model": "router", "messages": [{"role": "user", "content": "hi"}], "bandit_router": extension}
    with pytest.raises(BadChatRequest) as caught:
        parse_chat(body, {}, alias="router", max_prompt_chars=100)
    assert caught.value.field == "bandit_router" and message in str(caught.value)


def test_knobs_at_the_limits_are_accepted() -> None:
    edge = {"cost_weight": 1e9, "models": [f"m{i}" for i in range(64)],
            "context": {"n": 2**53, "s": "v" * 256, **{f"k{i}": i for i in range(30)}}}
    body = {"model": "router", "messages": [{"role": "user", "content": "hi"}], "bandit_router": edge}
    chat = parse_chat(body, {}, alias="router", max_prompt_chars=100)
    assert chat.cost_weight == 1e9 and len(chat.models or ()) == 64 and chat.context["n"] == 2**53
    assert len(chat.context) == 32 and chat.core_request().cost_weight == 1e9


def test_a_decision_among_active_models_lists_them_again_after_a_retirement_and_raises_anything_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A retirement between listing and deciding: decided again among the rest. A `route = false` or retired
    candidate is never passed to the router; none left is None. An `UnknownModel` after which the list is the same
    (a policy's own) is raised, once, not retried for ever."""
    specs = [ModelSpec(n, 1.0, 2.0) for n in ("a", "b", "c")] + [ModelSpec("judge", 1.0, 2.0, route=False)]
    router = Router(specs, seed=0)
    context = router.featurize(Request(messages=[{"role": "user", "content": "hi"}]))
    decide, asked = router.decide, []

    def retire_then_decide(context: Any, **kwargs: Any) -> Any:
        asked.append(kwargs["models"])
        if router.spec("a") in router.models:
            router.retire_model("a")
        return decide(context, **kwargs)

    monkeypatch.setattr(router, "decide", retire_then_decide)
    decision = decide_among_active(router, context, ["a", "judge", "b", "gone"], None)
    assert decision is not None and decision.models == ("b",) and asked == [["a", "b"], ["b"]]
    assert decide_among_active(router, context, ["a", "judge"], None) is None

    def refuse(context: Any, **kwargs: Any) -> Any:
        asked.append(kwargs["models"])
        raise UnknownModel("a policy's own")

    asked.clear()
    monkeypatch.setattr(router, "decide", refuse)
    with pytest.raises(UnknownModel, match="a policy's own"):
        decide_among_active(router, context, ["b", "c"], None)
    assert asked == [["b", "c"]]


def test_a_rollup_sum_that_overflowed_reads_as_none() -> None:
    """A non-finite sum in the per-minute rollup (a λ of 1e308, accepted before the gateway capped it) makes its
    means None instead of a reply JSON cannot carry (a 500 for every range covering that minute)."""

    class Rollup:
        def minute_stats(self, first: int, end: int, step: int) -> list[MinuteStats]:
            return [MinuteStats(first, "m", decisions=2, learned=2, cost_weight_sum=math.inf, quality_sum=1.0,
                                reward_sum=-math.inf, ips_weight_sum=2.0, ips_reward_sum=math.nan)]

    series = timeseries(Rollup(), Window.of(600.0, 660.0, 60))  # type: ignore[arg-type]
    json.dumps(series, allow_nan=False)
    assert series["cost_weight"][0] is None and series["reward"][0] is None and series["quality"][0] == 0.5
    assert series["models"][0]["fixed_reward"] is None


def test_calls_without_an_answer_never_learn_the_default_reward(tmp_path: Path) -> None:
    """With `default_reward`, a routed decision whose window closes without feedback learns it, unless its gateway
    call was refused by the upstream (4xx, `rejected`) or left by the caller (`cancelled`)."""
    settings = Settings(db=tmp_path / "window.db", models=(ModelSpec("a", 1.0, 2.0), ModelSpec("b", 1.0, 2.0)),
                        seed=1, reward_window_s=0.2, default_reward=0.25)
    store = SQLiteStore(settings.storage.db)
    store.prepare()
    engine = Engine(settings, store)
    engine.start()
    try:
        assert engine.wait_ready(10)

        async def calls() -> dict[str, str]:
            ids = {}
            for status in (CallStatus.REJECTED, CallStatus.CANCELLED, CallStatus.OK):
                d = await engine.route(Request(prompt="hi"))
                await engine.record_call(CallRecord(
                    decision_id=d.decision_id, request_id=d.decision_id, attempt=1, model=d.model, routed=True,
                    stream=status == CallStatus.CANCELLED, status=str(status),
                    http_status=400 if status == CallStatus.REJECTED else 200, input_tokens=None,
                    output_tokens=None, usage=None, cost_usd=None, ttft_s=None, latency_s=0.1, error=None,
                    created_at=time.time()))
                ids[status] = d.decision_id
            return ids

        ids = asyncio.run(calls())
        deadline = time.monotonic() + 10
        while not engine.decision(ids[CallStatus.OK])[1] and time.monotonic() < deadline:
            time.sleep(0.05)
        answered = engine.decision(ids[CallStatus.OK])[1]
        assert [(r.status, r.quality, r.learn) for r in answered] == [("default", 0.25, True)]
        for unanswered in (CallStatus.REJECTED, CallStatus.CANCELLED):
            assert engine.decision(ids[unanswered])[1] == []
    finally:
        engine.stop()


_UNCALLABLE = {
    "judge": ('[judge]\njudge_model = "keyed"\njudge_sample_rate = 0.5\n',
              "judge_model: 'keyed' is called with the key in BR_TEST_UNSET_KEY, which is not set"),
    "router": ('[[routers]]\nname = "pair"\nstrategy = "cascade"\nmodels = ["keyed", "local"]\nsignal = "logprob"\n',
               "routers: 'pair': 'keyed' is called with the key in BR_TEST_UNSET_KEY, which is not set; "
               "'local' has no upstream: give it a base_url, or set default_base_url"),
}


@pytest.mark.parametrize("case", sorted(_UNCALLABLE))
def test_serve_names_a_model_the_judge_or_a_router_cannot_call_before_it_starts(tmp_path: Path, case: str) -> None:
    """`bandit-router serve` with a judge or a named router whose model cannot be called (its key variable is
    unset, or it has no base_url) stops with exit status 2 and a message naming the model and what to set, not
    with a traceback of the application's start-up."""
    import os
    import subprocess
    import sys

    table, message = _UNCALLABLE[case]
    catalog = ('[[models]]\nname = "keyed"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 2\n'
               'base_url = "http://127.0.0.1:9/v1"\napi_key_env = "BR_TEST_UNSET_KEY"\n'
               '[[models]]\nname = "local"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 2\n')
    config = tmp_path / "bandit-router.toml"
    config.write_text(catalog + table, encoding="utf-8")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANDIT_ROUTER_") and k != "BR_TEST_UNSET_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "bandit_router.cli", "serve", "--config", str(config), "--port", "9",
         "--db", str(tmp_path / "router.db")],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == f"bandit-router serve: {message}"
    assert not (tmp_path / "router.db").exists()  # stopped before anything was created


def test_a_deltas_tool_call_pieces_are_what_the_answer_and_the_count_read() -> None:
    """`tool_call_pieces` (read once per streamed delta) gives `tool_calls` with each piece's key: the `index`, else
    the call's place, `function_call` for the older single call; non-text names count as '', entries that are not
    calls are skipped; `StreamedAnswer` joins the same pieces whether it reads them itself or is handed them."""
    from bandit_router.gateway.pricing import StreamedAnswer, tool_call_pieces, tool_calls

    deltas = [
        {"content": "a", "tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{"}}, "junk",
                                        {"function": {"name": 7, "arguments": "x"}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}, {"index": 2, "function": None}]},
        {"function_call": {"name": "g", "arguments": "()"}, "tool_calls": "not a list"},
    ]
    assert tool_call_pieces(deltas[0]) == [(0, "f", "{"), (2, "", "x")]
    assert tool_call_pieces(deltas[1]) == [(0, "", "}")]
    assert tool_call_pieces(deltas[2]) == [("function_call", "g", "()")]
    assert [tool_calls(d) for d in deltas] == [[("f", "{"), ("", "x")], [("", "}")], [("g", "()")]]
    reading, handed = StreamedAnswer(), StreamedAnswer()
    for delta in deltas:
        reading.add(delta)
        handed.add(delta, tool_call_pieces(delta))
    assert reading.text() == handed.text() == "a\nf({})\n(x)\ng(())"


def test_failed_call_records_are_said_per_kind_of_failure_and_the_unsaid_ones_at_close(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A call record not stored is logged at most once a minute: before, under one key, so a second kind of failure
    within the minute was never said, and the count of those not logged was said only by the next one after the
    minute, never when the failures stopped (review). The key is the exception's type now, and `close()` says the
    latest of each kind not logged with its count."""
    settings = Settings(db=tmp_path / "records.db", models=(ModelSpec("a", 1.0, 2.0),), seed=1)
    store = SQLiteStore(settings.storage.db)
    store.prepare()
    engine = Engine(settings, store)
    engine.start()
    try:
        gateway = Gateway.build(settings, engine)

        async def fail(exc: Exception) -> None:
            raise exc

        async def run() -> None:
            for exc in (StoreError("database down 1"), StoreError("database down 2"), StoreError("database down 3"),
                        KeyError("x")):
                gateway.keep(fail(exc))
            await gateway.close()

        with caplog.at_level(logging.WARNING, logger="bandit_router.gateway"):
            asyncio.run(run())
    finally:
        engine.stop()
    assert [r.getMessage() for r in caplog.records if "recording a call failed" in r.getMessage()] == [
        "recording a call failed: database down 1",
        "recording a call failed: 'x'",
        "recording a call failed: database down 3 (the latest of 2 like this that were not logged)",
    ]


def test_a_message_without_content_adds_nothing_to_the_features_and_every_other_message_is_read_as_before() -> None:
    """A message whose `content` is null (an assistant's that only calls tools) or absent added an empty line to
    the text the features read ("hi\\n\\n42"), so a tool-calling conversation featurized unlike the same words
    without it. It is left out now; a message whose content is empty text still gives its empty line (features of
    every request without a null content are as before), and a request of null contents only is one empty text."""
    from bandit_router.features import FeatureExtractor

    def request(messages: list[dict[str, Any]]) -> Any:
        return parse_chat({"model": "router", "messages": messages}, {}, alias="router",
                          max_prompt_chars=100).core_request()

    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
    with_tools = request([{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": None, "tool_calls": [call]},
                          {"role": "tool", "tool_call_id": "c1", "content": "42"}, {"role": "user", "content": "ok"}])
    plain = request([{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "c1", "content": "42"},
                     {"role": "user", "content": "ok"}])
    assert with_tools.text == plain.text == "hi\n42\nok" and with_tools.turns == plain.turns == 2
    extractor = FeatureExtractor()
    assert extractor.extract(with_tools.text).same_features(extractor.extract(plain.text))
    absent = request([{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [call]}])
    assert absent.text == "hi"
    empty = request([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""},
                     {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    assert empty.text == "hi\n\n" and empty.turns == 2  # empty text, and parts without text: read as before
    only = request([{"role": "assistant", "content": None, "tool_calls": [call]}])
    assert only.text == "" and [m.role for m in only.messages or ()] == ["assistant"]
