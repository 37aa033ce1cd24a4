"""The gateway's pieces without a server: catalog upstream keys, settings, the feedback rules it relies on,
pricing and the chat-request parser."""

from __future__ import annotations

import pytest

from bandit_router.catalog import ModelSpec
from bandit_router.config import ConfigError, Settings
from bandit_router.errors import CatalogError
from bandit_router.gateway import BadChatRequest, PromptTooLarge, parse_chat
from bandit_router.gateway.pricing import Usage, estimate_input, estimated, usage_of
from bandit_router.log import FeedbackRules, Verdict, judge, with_call
from bandit_router.store import CallRecord, FeedbackRecord
from bandit_router.types import Outcome

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
])
def test_bad_upstream_keys_are_refused(key: str, value: object, match: str) -> None:
    with pytest.raises(CatalogError, match=match):
        ModelSpec.from_json({**BASE, key: value})


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
