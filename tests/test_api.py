"""The HTTP API on `TestClient(create_app(settings))`: every status code, bad inputs as tables, nothing stored
by a rejected request."""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():  # Starlette 1.10 asks for `httpx2`; the plain httpx of the dev extras still works
    warnings.filterwarnings("ignore", message=".*install `httpx2`.*")
    from fastapi.testclient import TestClient

from service_client import client_factory, start_client

from bandit_router.catalog import ModelSpec
from bandit_router.config import ConfigError, Secrets, Settings
from bandit_router.config.routers import RouterAlias
from bandit_router.service.app import create_app

CLIENT_KEY = "client-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
SECRET_PROMPT = "my secret prompt: the launch code is 0000"

JSON = {"content-type": "application/json"}


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    yield from client_factory(tmp_path / "api.db", seed=7)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def _db(client: TestClient) -> sqlite3.Connection:
    return sqlite3.connect(client.app.state.settings.db)  # type: ignore[attr-defined]


def _count(client: TestClient, sql: str) -> int:
    with _db(client) as conn:
        return int(conn.execute(sql).fetchone()[0])


def _route(client: TestClient, **body: Any) -> dict[str, Any]:
    reply = client.post("/v1/route", json={"prompt": "Sort a list in Python", **body})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _post_raw(client: TestClient, path: str, text: str, **headers: str) -> Any:
    return client.post(path, content=text.encode("utf-8"), headers={"content-type": "application/json", **headers})


# -- route ------------------------------------------------------------------------------------------------------
def test_route_replies_with_a_stored_decision(client: TestClient) -> None:
    reply = client.post("/v1/route", json={"prompt": "Write a haiku", "context": {"tenant": "acme", "n": 3}})
    assert reply.status_code == 200
    body = reply.json()
    assert reply.headers["x-decision-id"] == body["decision_id"]
    assert set(body) == {"decision_id", "model", "probability", "probabilities", "policy", "policy_version"}
    assert body["probability"] == body["probabilities"][body["model"]]
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)
    with _db(client) as conn:
        row = conn.execute(
            "SELECT model, probability, tenant, prompt, pmf, models FROM decisions WHERE decision_id = ?",
            (body["decision_id"],),
        ).fetchone()
    assert row[0] == body["model"] and row[1] == body["probability"] and row[2] == "acme"
    assert row[3] is None  # store_prompts is off by default
    assert dict(zip(json.loads(row[5]), json.loads(row[4]), strict=True)) == body["probabilities"]
    stored = client.get(f"/v1/decisions/{body['decision_id']}").json()
    assert stored["context"]["attributes"] == {"tenant": "acme", "n": 3} and stored["feedback"] == []


def test_route_options(client: TestClient) -> None:
    chat = _route(client, prompt=None, messages=[{"role": "system", "content": "Be brief"},
                                                 {"role": "user", "content": "Hi"}])
    assert chat["model"]
    subset = _route(client, models=["gpt-4o-mini", "gpt-4o"], cost_weight=0.0)
    assert set(subset["probabilities"]) == {"gpt-4o-mini", "gpt-4o"}
    chosen = _route(client, decision_id="my-id:1")
    assert chosen["decision_id"] == "my-id:1"
    again = client.post("/v1/route", json={"prompt": "again", "decision_id": "my-id:1"})
    assert again.status_code == 409 and again.json()["error"] == "conflict"
    assert _count(client, "SELECT COUNT(*) FROM decisions") == 3


def test_store_prompts_keeps_the_text(make_client: Callable[..., TestClient]) -> None:
    client = make_client(store_prompts=True)
    reply = _post_raw(client, "/v1/route", json.dumps({"prompt": "Keep me \ud800 please"}))  # valid JSON, not UTF-8
    assert reply.status_code == 200
    body = reply.json()
    assert client.get(f"/v1/decisions/{body['decision_id']}").json()["prompt"] == "Keep me \ufffd please"


_ROUTE_BAD = [
    ('{"prompt": "x", "cost_weight": NaN}', "cost_weight"),
    ('{"prompt": "x", "cost_weight": Infinity}', "cost_weight"),
    ('{"prompt": "x", "cost_weight": -Infinity}', "cost_weight"),
    ('{"prompt": "x", "cost_weight": "nan"}', "cost_weight"),
    ('{"prompt": "x", "cost_weight": 1e999}', "cost_weight"),
    ('{"prompt": "x", "cost_weight": true}', "cost_weight"),
    ('{"prompt": "x", "cost_weight": "3"}', "cost_weight"),
    ('{"prompt": "x", "cost_weight": -1}', "cost_weight"),
    ('{"prompt": "x", "models": ["no-such-model"]}', "models"),
    ('{"prompt": "x", "models": []}', "models"),
    ('{"prompt": "x", "models": ["bad name"]}', "models[0]"),
    ('{"prompt": "x", "models": "gpt-4o"}', "models"),
    ('{"prompt": "x", "messages": [{"role": "user", "content": "y"}]}', "prompt"),
    ("{}", "prompt"),
    ('{"prompt": null}', "prompt"),
    ('{"prompt": 42}', "prompt"),
    ('{"prompt": "x", "decision_id": "' + "a" * 65 + '"}', "decision_id"),
    ('{"prompt": "x", "decision_id": ""}', "decision_id"),
    ('{"prompt": "x", "decision_id": "has space"}', "decision_id"),
    ('{"prompt": "x", "decision_id": "line\\r\\nbreak"}', "decision_id"),
    ('{"prompt": "x", "context": {"tenant": {"nested": 1}}}', "context.tenant"),
    ('{"prompt": "x", "context": {"n": NaN}}', "context.n"),
    ('{"prompt": "x", "context": {"n": 1e999}}', "context.n"),
    ('{"prompt": "x", "context": {"n": 1' + "0" * 400 + "}}", "context.n"),
    ('{"prompt": "x", "context": {"k": [1]}}', "context.k"),
    ('{"prompt": "x", "context": ["tenant"]}', "context"),
    ('{"prompt": "x", "context": {"": 1}}', "context"),
    ('{"prompt": "x", "cost_wieght": 3}', "cost_wieght"),
    ('{"messages": []}', "messages"),
    ('{"messages": [{"content": "y"}]}', "messages[0].role"),
    ('{"messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
    ("not json", "body"),
    ('{"prompt": "x"', "body"),
    ("[1, 2]", "body"),
    ("", "body"),
    ('{"prompt": "x", "n": 1' + "0" * 5000 + "}", "body"),
    ("[" * 100_000 + "]" * 100_000, "body"),
]


@pytest.mark.parametrize(("body", "field"), _ROUTE_BAD, ids=[f"route-{i}" for i in range(len(_ROUTE_BAD))])
def test_route_rejects_bad_input_with_422_naming_the_field(client: TestClient, body: str, field: str) -> None:
    reply = _post_raw(client, "/v1/route", body)
    assert reply.status_code == 422, reply.text
    error = reply.json()
    assert error["error"] in ("invalid_input", "unknown_model")
    assert error["field"] == field or error["field"].startswith(field), error
    assert field.split("[")[0].split(".")[0] in error["message"] or field == "body"
    assert _count(client, "SELECT COUNT(*) FROM decisions") == 0


# -- feedback ---------------------------------------------------------------------------------------------------
def test_feedback_applied_then_duplicate_is_learned_once(client: TestClient) -> None:
    decision = _route(client)
    feedback = {"decision_id": decision["decision_id"], "quality": 0.8, "output_tokens": 120, "latency_ms": 900,
                "source": "judge"}
    first = client.post("/v1/feedback", json=feedback)
    assert first.status_code == 200
    assert first.json()["status"] == "applied" and first.json()["seq"] == 1
    second = client.post("/v1/feedback", json=feedback)
    assert second.status_code == 200
    assert second.json() == {**first.json(), "status": "duplicate"}
    assert _count(client, "SELECT COUNT(*) FROM feedback") == 1
    assert client.get("/v1/stats").json()["policy_version"] == 1
    stored = client.get(f"/v1/decisions/{decision['decision_id']}").json()
    assert [f["status"] for f in stored["feedback"]] == ["applied"]
    assert stored["feedback"][0]["latency_ms"] == pytest.approx(900)


def test_feedback_reward_is_quality_minus_priced_cost(client: TestClient) -> None:
    decision = _route(client, cost_weight=100.0)
    reply = client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.9,
                                              "cost_usd": 0.002})
    assert reply.json()["reward"] == pytest.approx(0.9 - 100.0 * 0.002)


def test_the_largest_feedback_the_api_takes_has_a_finite_reward(client: TestClient) -> None:
    """The schema's bounds (λ ≤ 1e9, cost ≤ 1e6 USD, tokens ≤ 1e9, latency ≤ a day) keep quality − λ·cost − μ·latency
    finite, so the reward `reward()` refuses when it is not (−inf for λ·1e308) is never met from a request."""
    decision = _route(client, cost_weight=1e9)
    reply = client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 1.0, "cost_usd": 1e6,
                                              "input_tokens": 10**9, "output_tokens": 10**9, "latency_ms": 86_400_000})
    assert reply.status_code == 200, reply.text
    assert reply.json()["reward"] == pytest.approx(1.0 - 1e9 * 1e6)
    other = _route(client, cost_weight=1e9)
    reply = client.post("/v1/feedback", json={"decision_id": other["decision_id"], "quality": 1.0,
                                              "input_tokens": 10**9, "output_tokens": 10**9})
    assert reply.status_code == 200 and math.isfinite(reply.json()["reward"]), reply.text


def test_a_different_second_feedback_conflicts(client: TestClient) -> None:
    decision = _route(client)
    assert client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.8}).status_code == 200
    reply = client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.1})
    assert reply.status_code == 409 and reply.json()["error"] == "conflict"
    assert _count(client, "SELECT COUNT(*) FROM feedback") == 1


def test_feedback_for_an_unknown_decision_is_404_and_stores_nothing(client: TestClient) -> None:
    reply = client.post("/v1/feedback", json={"decision_id": "never-made", "quality": 0.5})
    assert reply.status_code == 404 and reply.json()["error"] == "not_found"
    assert "never-made" in reply.json()["message"]
    assert _count(client, "SELECT COUNT(*) FROM feedback") == 0


def test_earliest_aggregation_keeps_but_ignores_a_second_feedback(make_client: Callable[..., TestClient]) -> None:
    client = make_client(aggregation="earliest")
    decision = _route(client)
    client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.8})
    reply = client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.2})
    assert reply.status_code == 200 and reply.json()["status"] == "ignored"
    assert _count(client, "SELECT COUNT(*) FROM feedback") == 2
    assert _count(client, "SELECT COUNT(*) FROM feedback WHERE learn = 1") == 1
    assert client.get("/v1/stats").json()["policy_version"] == 1


def _wait(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_average_aggregation_learns_the_mean_when_the_window_closes(make_client: Callable[..., TestClient]) -> None:
    client = make_client(aggregation="average", reward_window_s=0.6)
    decision = _route(client)
    for quality in (0.2, 0.6):
        reply = client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": quality})
        assert reply.json()["status"] == "pending"
    assert client.get("/v1/stats").json()["policy_version"] == 0
    _wait(lambda: client.get("/v1/stats").json()["policy_version"] == 1)
    with _db(client) as conn:
        rows = conn.execute("SELECT status, quality, learn FROM feedback ORDER BY seq").fetchall()
    assert rows[:2] == [("pending", 0.2, 0), ("pending", 0.6, 0)]
    assert rows[2][0] == "aggregate" and rows[2][1] == pytest.approx(0.4) and rows[2][2] == 1


def test_late_feedback_is_stored_not_learned(make_client: Callable[..., TestClient]) -> None:
    client = make_client(reward_window_s=0.2)
    decision = _route(client)
    time.sleep(0.3)
    reply = client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.9})
    assert reply.status_code == 200 and reply.json()["status"] == "late"
    assert _count(client, "SELECT COUNT(*) FROM feedback WHERE learn = 0 AND status = 'late'") == 1
    assert client.get("/v1/stats").json()["policy_version"] == 0


def test_default_reward_is_learned_for_silent_decisions(make_client: Callable[..., TestClient]) -> None:
    client = make_client(reward_window_s=0.3, default_reward=0.25)
    silent = _route(client)
    answered = _route(client)
    client.post("/v1/feedback", json={"decision_id": answered["decision_id"], "quality": 1.0})
    _wait(lambda: client.get("/v1/stats").json()["feedback_by_status"].get("default") == 1)
    with _db(client) as conn:
        rows = conn.execute("SELECT decision_id, status, quality, learn FROM feedback ORDER BY seq").fetchall()
    assert rows == [(answered["decision_id"], "applied", 1.0, 1), (silent["decision_id"], "default", 0.25, 1)]
    assert client.get("/v1/stats").json()["policy_version"] == 2
    late = client.post("/v1/feedback", json={"decision_id": silent["decision_id"], "quality": 0.9})
    assert late.json()["status"] == "late"


def test_decisions_made_while_reward_windows_were_off_get_no_default_reward(
        make_client: Callable[..., TestClient]) -> None:
    """Windows on, a restart without them, then on again: the decisions of the period without windows were promised
    none, so the start that turns them on again closes only the windows of decisions made from then on (each silent
    decision of the whole period was learned as `default_reward` at once)."""
    first = make_client(reward_window_s=0.3, default_reward=0.25)
    _route(first)
    _wait(lambda: first.get("/v1/stats").json()["feedback_by_status"].get("default") == 1)
    first.__exit__(None, None, None)
    without = make_client()
    unwindowed = [_route(without, prompt=f"no window {i}")["decision_id"] for i in range(4)]
    without.__exit__(None, None, None)
    time.sleep(0.6)  # their windows, had they had one, are closed
    again = make_client(reward_window_s=0.3, default_reward=0.25)
    after = _route(again, prompt="with a window again")
    _wait(lambda: again.get("/v1/stats").json()["feedback_by_status"].get("default", 0) >= 2)
    time.sleep(0.6)  # sweeps after it close nothing more
    with _db(again) as conn:
        rows = conn.execute("SELECT decision_id FROM feedback WHERE status = 'default' ORDER BY seq").fetchall()
    defaults = [r[0] for r in rows]
    assert defaults[1:] == [after["decision_id"]] and not set(defaults) & set(unwindowed)
    assert again.get("/v1/stats").json()["policy_version"] == 2


def test_a_run_without_default_rewards_stopped_before_closing_the_previous_windows_still_counts_as_off(
        make_client: Callable[..., TestClient]) -> None:
    """On, then a short run without `default_reward` (its window of 30 s: the previous run's windows still open when
    it stopped), then on again: the decision of the first run learns its default reward, the decisions of the run
    without it do not (they got them: the position of windows closed had not reached where they went off)."""
    first = make_client(reward_window_s=30.0, default_reward=0.25)
    promised = _route(first, prompt="made with a default reward")["decision_id"]
    first.__exit__(None, None, None)
    without = make_client(reward_window_s=30.0)
    unpromised = [_route(without, prompt=f"made without {i}")["decision_id"] for i in range(3)]
    without.__exit__(None, None, None)
    again = make_client(reward_window_s=0.3, default_reward=0.25)
    _wait(lambda: again.get("/v1/stats").json()["feedback_by_status"].get("default", 0) >= 1)
    time.sleep(0.8)
    with _db(again) as conn:
        rows = conn.execute("SELECT decision_id FROM feedback WHERE status = 'default' ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == [promised], (len(rows), set(r[0] for r in rows) & set(unpromised))


@pytest.mark.parametrize("second", [{}, {"reward_window_s": 0.3}], ids=["no windows", "reject"])
def test_pending_feedback_is_learned_after_a_restart_that_no_longer_averages(
        make_client: Callable[..., TestClient], second: dict[str, Any]) -> None:
    """Feedback acknowledged `pending` under `aggregation = "average"` is learned when its window closes. A restart
    without averaging (and without `default_reward`) closed no window any more: the feedback was never learned, and
    its decision refused every other feedback (409). That start first closes the windows the previous run left open:
    at their end with `reward_window_s` still set, at once without it."""
    first = make_client(aggregation="average", reward_window_s=30.0)
    decision = _route(first)
    for quality in (0.2, 0.6):
        reply = first.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": quality})
        assert reply.json()["status"] == "pending"
    first.__exit__(None, None, None)
    again = make_client(**second)
    _wait(lambda: again.get("/v1/stats").json()["policy_version"] == 1)
    with _db(again) as conn:
        rows = conn.execute("SELECT status, quality, learn FROM feedback ORDER BY seq").fetchall()
    assert rows[2][0] == "aggregate" and rows[2][1] == pytest.approx(0.4) and rows[2][2] == 1
    _route(again)  # the windows of the decisions it makes are not closed: no default, nothing more learned
    time.sleep(0.8)
    assert again.get("/v1/stats").json()["policy_version"] == 1 and _count(again, "SELECT COUNT(*) FROM feedback") == 3


def test_stats_count_the_feedback_callers_sent_as_the_dashboard_does(make_client: Callable[..., TestClient]) -> None:
    """A closed window's default reward is learned, but it is no feedback: `/v1/stats`' learned counts, feedback
    rate, means and spend are those of the dashboard (`/v1/stats/timeseries`), not 100% with invented qualities."""
    client = make_client(reward_window_s=0.3, default_reward=0.25)
    silent = [_route(client, prompt=f"silent {i}") for i in range(3)]
    answered = _route(client)
    client.post("/v1/feedback", json={"decision_id": answered["decision_id"], "quality": 1.0, "cost_usd": 0.01})
    _wait(lambda: client.get("/v1/stats").json()["feedback_by_status"].get("default") == len(silent))
    stats = client.get("/v1/stats").json()
    overall = client.get("/v1/stats/timeseries?range=hour").json()["overall"]
    assert stats["policy_version"] == 4 and stats["feedback_by_status"] == {"applied": 1, "default": 3}
    assert stats["feedback_learned"] == overall["learned"] == 1
    assert stats["feedback_rate"] == pytest.approx(overall["coverage"]) == pytest.approx(1 / 4)
    (row,) = [m for m in stats["models"] if m["feedback"]]
    assert (row["model"], row["mean_quality"], row["spend_usd"]) == (answered["model"], 1.0, 0.01)
    assert sum(m["spend_usd"] or 0 for m in stats["models"]) == pytest.approx(overall["cost_usd"]) == 0.01
    learned = [line.split()[-1] for line in client.get("/metrics").text.splitlines()
               if line.startswith(("bandit_router_learned_cost_usd_total", "bandit_router_learned_reward_sum"))]
    assert len(learned) == 2 and float(learned[1]) == 0.01  # only the answered decision's model: the caller's


_FEEDBACK_BAD = [
    ("quality", "NaN"),
    ("quality", "Infinity"),
    ("quality", "-Infinity"),
    ("quality", '"nan"'),
    ("quality", "1e999"),
    ("quality", "true"),
    ("quality", '"0.5"'),
    ("quality", "1.5"),
    ("quality", "-0.1"),
    ("quality", "null"),
    ("cost_usd", "-0.01"),
    ("cost_usd", "NaN"),
    ("cost_usd", "1e999"),
    ("cost_usd", "1e308"),  # finite, but above the 1e6 bound that keeps λ·cost finite
    ("cost_usd", "false"),
    ("input_tokens", "-1"),
    ("input_tokens", "12.5"),
    ("output_tokens", "true"),
    ("output_tokens", "1" + "0" * 30),
    ("latency_ms", "-5"),
    ("latency_ms", '"fast"'),
    ("source", '"' + "s" * 65 + '"'),
    ("decision_id", '"' + "d" * 65 + '"'),
    ("decision_id", "17"),
    ("extra_field", "1"),
]


@pytest.mark.parametrize(("field", "value"), _FEEDBACK_BAD, ids=[f"{f}={v[:12]}" for f, v in _FEEDBACK_BAD])
def test_feedback_rejects_bad_input_with_422_naming_the_field(client: TestClient, field: str, value: str) -> None:
    decision = _route(client)
    fields = {"decision_id": json.dumps(decision["decision_id"]), "quality": "0.5", field: value}
    body = "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"
    reply = _post_raw(client, "/v1/feedback", body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["field"] == field and field in reply.json()["message"]
    assert _count(client, "SELECT COUNT(*) FROM feedback") == 0


_TYPOS = [  # (path, body, the unknown field, the hint); `{decision}` is a routed decision's id
    ("/v1/feedback", {"decision_id": "{decision}", "quality": 0.5, "latency_s": 3}, "latency_s", "latency_ms"),
    ("/v1/feedback", {"decision_id": "{decision}", "quality": 0.5, "input_token": 3}, "input_token", "input_tokens"),
    ("/v1/route", {"prompt": "x", "cost_wieght": 3}, "cost_wieght", "cost_weight"),
    ("/v1/route", {"messages": [{"role": "user", "content": "x", "rol": "user"}]}, "messages[0].rol", "role"),
    ("/v1/models", {"name": "m", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1, "tag": {}}, "tag", "tags"),
    ("/v1/policies/promote", {"shadow": "greedy", "froce": True}, "froce", "force"),
    ("/v1/feedback", {"decision_id": "{decision}", "quality": 0.5, "colour": "red"}, "colour", None),
]


@pytest.mark.parametrize(("path", "body", "field", "hint"), _TYPOS, ids=[f"{p}-{f}" for p, _, f, _ in _TYPOS])
def test_an_unknown_field_gets_a_did_you_mean_hint(
    client: TestClient, path: str, body: dict[str, Any], field: str, hint: str | None
) -> None:
    """A misspelt field of any body the API refuses extra fields in (the hot lane's /v1/route and /v1/feedback,
    FastAPI's admin routes) is a 422 naming it, with the known field it is closest to (none when none is)."""
    if body.get("decision_id") == "{decision}":
        body = {**body, "decision_id": _route(client)["decision_id"]}
    reply = client.post(path, json=body)
    assert reply.status_code == 422, reply.text
    error = reply.json()
    assert set(error) == {"error", "message", "field"} and error["error"] == "invalid_input"
    assert error["field"] == field
    expected = f"{field}: Extra inputs are not permitted" + ("" if hint is None else f" (did you mean {hint}?)")
    assert expected in error["message"]
    assert "did you mean" not in error["message"] or hint is not None
    assert _count(client, "SELECT COUNT(*) FROM feedback") == 0


@pytest.mark.parametrize("path", ["/v1/route", "/v1/feedback", "/v1/models"])
def test_a_body_of_many_errors_names_its_first_five_in_order(client: TestClient, path: str) -> None:
    """A 1 MB body of 90,000 unknown keys names the first five (the 422 builds only those: pydantic's `errors()`
    made a dict of every one, twice, 0.5-0.8 s of the event loop each); a body with a hint and a wrong type keeps
    both, in the body's order."""
    base = {"/v1/route": {"prompt": "x"}, "/v1/feedback": {"decision_id": "d", "quality": 0.5},
            "/v1/models": {"name": "m", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}}[path]
    many = {**base, **{f"k{i:x}": 1 for i in range(90_000)}}
    reply = client.post(path, content=json.dumps(many, separators=(",", ":")).encode(), headers=JSON)
    assert reply.status_code == 422, reply.text[:300]
    error = reply.json()
    assert error["field"] == "k0"
    assert error["message"] == "; ".join(f"k{i:x}: Extra inputs are not permitted" for i in range(5))
    mixed = {**base, "zz": 1, "k1": 2, "k2": 3, "k3": 4, "k4": 5, "k5": 6}
    mixed["prompt" if path == "/v1/route" else "name" if path == "/v1/models" else "quality"] = [1]
    error = client.post(path, json=mixed).json()
    assert error["message"].count(";") == 4 and "zz: Extra inputs are not permitted" in error["message"]
    assert "k5" not in error["message"]


def test_a_context_of_too_many_keys_is_refused_before_its_values_are_checked(client: TestClient) -> None:
    """A context over 32 keys is a 422 about its size, whatever its values: pydantic checked a dict's length only
    after every value, and 80,000 invalid values (a 1 MB body) were 80,000 Python exceptions, 4-7 s of the event
    loop, for a 422 about the first one. The gateway's knob reads the same rule."""
    many = {f"k{i:x}": [1] for i in range(80_000)}  # 970 KB
    body = json.dumps({"prompt": "x", "context": many}, separators=(",", ":")).encode()
    reply = client.post("/v1/route", content=body, headers=JSON)
    assert reply.status_code == 422, reply.text[:300]
    assert reply.json()["field"] == "context"
    assert "at most 32 items" in reply.json()["message"] and "not 80000" in reply.json()["message"]
    assert client.post("/v1/route", json={"prompt": "x", "context": {"k": [1]}}).json()["field"] == "context.k"
    assert client.post("/v1/route", json={"prompt": "x", "context": {f"k{i}": i for i in range(32)}}
                       ).status_code == 200


def test_a_huge_unknown_field_name_gets_no_hint(client: TestClient) -> None:
    """A field name far longer than any known one cannot be close to one: it is not compared (difflib's cost grows
    with its length, on the event loop), and the 422 still names it."""
    from bandit_router.hints import closest

    name = "cost_weight" * 80_000  # 880 kB: within the default 1 MiB body limit
    assert closest(name, ("cost_weight", "prompt")) is None
    assert closest("cost_weightt", ("cost_weight", "prompt")) == "cost_weight"  # a near miss is still hinted
    reply = client.post("/v1/route", json={"prompt": "x", name: 1})
    assert reply.status_code == 422 and reply.json()["field"] == name
    assert "did you mean" not in reply.json()["message"]


@pytest.mark.parametrize(("path", "field"), [
    ("/v1/stats/recent?limit=0", "limit"),
    ("/v1/stats/recent?limit=x", "limit"),
    ("/v1/stats/timeseries?since=-3600&step=90", "step"),
    ("/v1/stats/timeseries?since=-604800&step=60", "step"),  # the route's own check: it said "step" already
    ("/v1/stats/timeseries?range=year", "range"),
    ("/v1/decisions/" + "d" * 65, "decision_id"),
])
def test_a_bad_query_or_path_parameter_is_named_as_it_is_written(client: TestClient, path: str, field: str) -> None:
    """A query or path parameter's 422 names it as the request writes it, as a body field's names the field and a
    control character in a path parameter names the parameter (`"field": "name"`): pydantic's refusals said
    `query.step` and `path.decision_id`, while the route's own check of the same parameter said `step`."""
    reply = client.get(path)
    assert reply.status_code == 422, reply.text
    assert reply.json()["field"] == field and reply.json()["message"].startswith(f"{field}: "), reply.text


def test_a_validators_message_is_its_own_words(client: TestClient) -> None:
    """A refusal by the schemas' own validators read "context.a: Value error, context values must be …": pydantic's
    prefix for a ValueError, which tells a caller nothing."""
    reply = client.post("/v1/route", json={"prompt": "x", "context": {"a": {"b": 1}}})
    assert reply.status_code == 422 and reply.json() == {
        "error": "invalid_input", "field": "context.a",
        "message": "context.a: context values must be strings, numbers or booleans"}


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/route", {"prompt": "x", "path": 1}, "path"),
    ("/v1/route", {"prompt": "x", "query": 1}, "query"),
    ("/v1/route", {"prompt": "x", "body": 1}, "body"),
    ("/v1/feedback", {"decision_id": "d1", "quality": 1, "path": 1}, "path"),
    ("/v1/models", {"name": "m", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1, "query": 2}, "query"),
])
def test_a_body_field_named_like_a_location_is_named_as_it_is_written(
    client: TestClient, path: str, body: dict[str, object], field: str
) -> None:
    """The body models are validated directly, so their errors' locations start with the field itself: an unknown
    field called `path`, `query` or `body` is named so, not dropped as FastAPI's location of a parameter is (the
    test above) and named `body`."""
    reply = client.post(path, json=body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["field"] == field and reply.json()["message"].startswith(f"{field}: "), reply.text


def test_feedback_without_quality_is_422(client: TestClient) -> None:
    reply = client.post("/v1/feedback", json={"decision_id": "x"})
    assert reply.status_code == 422 and reply.json()["field"] == "quality"


# -- limits -----------------------------------------------------------------------------------------------------
def test_bodies_and_prompts_over_the_limits_are_413(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_body_bytes=2048, max_prompt_chars=100)
    big = client.post("/v1/route", json={"prompt": "x" * 5000})
    assert big.status_code == 413 and big.json()["error"] == "payload_too_large"
    chunked = client.post(
        "/v1/route", content=(b'{"prompt": "' + b"y" * 1000 + b'"}' for _ in range(5)),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 413
    prompt = client.post("/v1/route", json={"prompt": "z" * 101})
    assert prompt.status_code == 413 and "max_prompt_chars" in prompt.json()["message"]
    messages = client.post("/v1/route", json={"messages": [{"role": "user", "content": "a" * 60}] * 2})
    assert messages.status_code == 413
    assert client.post("/v1/route", json={"prompt": "z" * 100}).status_code == 200
    assert _count(client, "SELECT COUNT(*) FROM decisions") == 1


# -- models -----------------------------------------------------------------------------------------------------
def test_models_can_be_added_and_retired(client: TestClient) -> None:
    spec = {"name": "house-model", "input_usd_per_mtok": 0.2, "output_usd_per_mtok": 0.4,
            "tags": {"family": "openai", "tier": "small"}}
    added = client.post("/v1/models", json=spec)
    assert added.status_code == 201 and added.json()["name"] == "house-model"
    assert client.post("/v1/models", json=spec).status_code == 409
    listed = client.get("/v1/models").json()
    assert "house-model" in [m["name"] for m in listed["models"]]
    assert set(_route(client, models=["house-model", "gpt-4o"])["probabilities"]) == {"house-model", "gpt-4o"}
    retired = client.delete("/v1/models/house-model")
    assert retired.status_code == 200
    assert client.get("/v1/models").json()["retired"] == ["house-model"]
    assert client.delete("/v1/models/house-model").status_code == 404
    assert client.post("/v1/route", json={"prompt": "x", "models": ["house-model"]}).status_code == 422
    with _db(client) as conn:
        assert conn.execute("SELECT action, name FROM model_events ORDER BY id").fetchall() == [
            ("add", "house-model"), ("retire", "house-model")]


def test_a_model_named_like_a_gateway_alias_is_409_and_stores_nothing(
    make_client: Callable[..., TestClient],
) -> None:
    """The catalog refuses such a name at start; at run time it would be a model `model = <name>` never reaches
    (the alias wins) and a second entry of that id in the OpenAI list."""
    upstream = "http://127.0.0.1:9/v1"  # never called: the app only starts
    models = (ModelSpec("a", 1.0, 2.0, base_url=upstream), ModelSpec("b", 1.0, 2.0, base_url=upstream))
    client = make_client(models=models, routers=(RouterAlias("cheap-first", "cascade", ("a", "b"), signal="logprob"),))
    for name, said in (("router", "router_alias"), ("cheap-first", "named router")):
        reply = client.post("/v1/models", json={"name": name, "input_usd_per_mtok": 1, "output_usd_per_mtok": 1})
        assert reply.status_code == 409 and said in reply.json()["message"], reply.text
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["router", "cheap-first", "a", "b"]
    assert _count(client, "SELECT COUNT(*) FROM model_events") == 0


def test_a_model_added_before_a_router_of_its_name_was_configured_stops_recovery(tmp_path: Path) -> None:
    """The other way round: the model was added at run time, then a `[[routers]]` entry (or `router_alias`) took
    its name. The service does not become ready, and says why and what to do; the stored model is kept."""
    upstream = "http://127.0.0.1:9/v1"  # never called
    models = (ModelSpec("a", 1.0, 2.0, base_url=upstream), ModelSpec("b", 1.0, 2.0, base_url=upstream))
    db = tmp_path / "clash.db"
    first = start_client(Settings(db=db, seed=7, models=models))  # entered: its `__exit__` stops it
    try:
        added = first.post("/v1/models", json={"name": "cheap-first", "input_usd_per_mtok": 1,
                                               "output_usd_per_mtok": 1})
        assert added.status_code == 201, added.text
    finally:
        first.__exit__(None, None, None)
    clashing = (
        {"routers": (RouterAlias("cheap-first", "cascade", ("a", "b"), signal="logprob"),)},
        {"router_alias": "cheap-first"},
    )
    for changes in clashing:
        with TestClient(create_app(Settings(db=db, seed=7, models=models, **changes))) as client:
            deadline = time.monotonic() + 10
            while "failed" not in (reply := client.get("/readyz")).text:
                assert reply.status_code == 503 and time.monotonic() < deadline, reply.text
                time.sleep(0.01)
            message = reply.json()["message"]
            assert reply.status_code == 503 and "'cheap-first' (added at run time)" in message, message
            assert "DELETE /v1/models/cheap-first" in message
    again = start_client(Settings(db=db, seed=7, models=models))
    try:
        assert "cheap-first" in [m["id"] for m in again.get("/v1/models").json()["data"]]
    finally:
        again.__exit__(None, None, None)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"name": "m", "input_usd_per_mtok": -1, "output_usd_per_mtok": 1}, "input_usd_per_mtok"),
        ({"name": "m", "input_usd_per_mtok": 1}, "output_usd_per_mtok"),
        ({"name": "has space", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}, "name"),
        ({"name": "m", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1, "tags": {"a": 1}}, "tags.a"),
        ({"name": "m", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1, "colour": "red"}, "colour"),
    ],
)
def test_bad_models_are_422(client: TestClient, spec: dict[str, Any], field: str) -> None:
    reply = client.post("/v1/models", json=spec)
    assert reply.status_code == 422 and reply.json()["field"] == field


def test_the_last_model_cannot_be_retired(make_client: Callable[..., TestClient]) -> None:
    models = (ModelSpec("a", 1.0, 2.0), ModelSpec("b", 1.0, 2.0))
    client = make_client(models=models)
    assert client.delete("/v1/models/a").status_code == 200
    last = client.delete("/v1/models/b")
    assert last.status_code == 409 and "last model" in last.json()["message"]


def test_the_last_routable_model_cannot_be_retired(make_client: Callable[..., TestClient]) -> None:
    """Retiring every model but a judge's (route = false) was accepted: every POST /v1/route then answered 422
    blaming the request's models, and so after every restart, since retirements are stored."""
    models = (ModelSpec("cheap", 0.1, 0.4), ModelSpec("dear", 2.5, 10.0), ModelSpec("judge", 0.05, 0.1, route=False))
    client = make_client(models=models)
    assert client.delete("/v1/models/dear").status_code == 200
    last = client.delete("/v1/models/cheap")
    assert last.status_code == 409 and "last routable model" in last.json()["message"], last.text
    assert client.post("/v1/route", json={"prompt": "hi"}).json()["model"] == "cheap"
    assert client.delete("/v1/models/judge").status_code == 200  # a route = false model may go


# -- auth -------------------------------------------------------------------------------------------------------
@pytest.fixture
def secured(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(api_keys=Secrets((CLIENT_KEY,)), admin_keys=Secrets((ADMIN_KEY,)))


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/v1/route"), ("post", "/v1/feedback"), ("get", "/v1/decisions/x"), ("get", "/v1/models"),
     ("post", "/v1/models"), ("delete", "/v1/models/gpt-4o"), ("get", "/v1/stats")],
)
@pytest.mark.parametrize("header", [None, "Bearer wrong-key-0123456789abcdef", f"Basic {CLIENT_KEY}", "Bearer "])
def test_v1_routes_need_a_valid_key(secured: TestClient, method: str, path: str, header: str | None) -> None:
    headers = {} if header is None else {"authorization": header}
    reply = secured.request(method, path, headers=headers, json={"prompt": "x"})
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert reply.json()["error"] == "unauthorized"
    assert "wrong-key" not in reply.text and CLIENT_KEY not in reply.text


def test_keys_grant_their_roles(secured: TestClient) -> None:
    decision = secured.post("/v1/route", json={"prompt": "x"}, headers=_auth(CLIENT_KEY))
    assert decision.status_code == 200
    feedback = {"decision_id": decision.json()["decision_id"], "quality": 0.5}
    assert secured.post("/v1/feedback", json=feedback, headers=_auth(CLIENT_KEY)).status_code == 200
    spec = {"name": "new-model", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 1.0}
    forbidden = secured.post("/v1/models", json=spec, headers=_auth(CLIENT_KEY))
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
    assert "needs an admin key" in forbidden.json()["message"] and "/v1/models" in forbidden.json()["message"]
    assert secured.delete("/v1/models/gpt-4o", headers=_auth(CLIENT_KEY)).status_code == 403
    assert secured.post("/v1/models", json=spec, headers=_auth(ADMIN_KEY)).status_code == 201
    assert secured.get("/v1/stats", headers=_auth(ADMIN_KEY)).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert secured.get(path).status_code == 200


def test_client_keys_without_admin_keys_cannot_change_models(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_keys=Secrets((CLIENT_KEY,)))
    assert client.delete("/v1/models/gpt-4o", headers=_auth(CLIENT_KEY)).status_code == 403


def test_prompts_and_keys_are_never_logged(secured: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secured.post("/v1/route", json={"prompt": SECRET_PROMPT}, headers=_auth(CLIENT_KEY))
    secured.post("/v1/route", json={"prompt": SECRET_PROMPT, "models": ["nope"]}, headers=_auth(CLIENT_KEY))
    secured.post("/v1/route", json={"prompt": SECRET_PROMPT}, headers=_auth("not-a-key-0123456789abcdef"))
    text = caplog.text + repr(secured.app.state.settings)  # type: ignore[attr-defined]
    assert SECRET_PROMPT not in text and "launch code" not in text
    assert CLIENT_KEY not in text and ADMIN_KEY not in text


# -- reads, ops and errors --------------------------------------------------------------------------------------
def test_stats_agree_with_the_database(client: TestClient) -> None:
    ids = [_route(client, prompt=f"question {i}")["decision_id"] for i in range(6)]
    for i, decision_id in enumerate(ids[:4]):
        client.post("/v1/feedback", json={"decision_id": decision_id, "quality": i / 4, "cost_usd": 0.001})
    stats = client.get("/v1/stats").json()
    assert stats["decisions"] == 6 and stats["feedback_learned"] == 4 and stats["policy_version"] == 4
    assert stats["feedback_rate"] == pytest.approx(4 / 6)
    with _db(client) as conn:
        per_model = dict(conn.execute("SELECT model, COUNT(*) FROM decisions GROUP BY model").fetchall())
    assert {m["model"]: m["decisions"] for m in stats["models"]} == per_model
    assert sum(m["share"] for m in stats["models"]) == pytest.approx(1.0)
    assert sum(m["spend_usd"] or 0 for m in stats["models"]) == pytest.approx(0.004)


def test_metrics_count_decisions_and_feedback(client: TestClient) -> None:
    decision = _route(client)
    client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.5})
    client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.5})
    text = client.get("/metrics").text
    model = decision["model"]
    assert f'bandit_router_decisions_total{{model="{model}"}} 1.0' in text
    assert f'bandit_router_feedback_total{{model="{model}",status="applied"}} 1.0' in text
    assert f'bandit_router_feedback_total{{model="{model}",status="duplicate"}} 1.0' in text
    assert "bandit_router_route_latency_seconds_count 1.0" in text
    assert "bandit_router_policy_version 1.0" in text
    assert 'bandit_router_http_requests_total{code="200",route="/v1/feedback"} 2.0' in text
    assert f'bandit_router_learned_reward_sum{{model="{model}"}}' in text


@pytest.mark.parametrize(("method", "path", "body", "code"), [
    ("POST", "/v1/route", b'{"prompt": "Sort a list in Python"}', 200),  # the plain-ASGI lane (`hotpaths`)
    ("POST", "/v1/route", b"{", 422),
    ("GET", "/v1/models", b"", 200),  # FastAPI's routing
])
def test_a_reply_is_counted_before_it_leaves(client: TestClient, method: str, path: str, body: bytes,
                                             code: int) -> None:
    """`/metrics` as it reads at the moment the reply's status goes out: it counts that reply already. Before, the
    HTTP reply and the route's latency were counted after the reply was sent; with `serve --workers 2` a client's
    scrape that reached the other worker in between missed it (7 of 8 answered 422s, once in a fresh-clone CI; 32
    of 100 scrapes right after a reply when a worker is descheduled 5 ms at that point, as a loaded CPU does)."""
    seen: list[str] = []

    async def ask() -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                assert message["status"] == code
                seen.append(client.app.state.metrics.render().decode())  # type: ignore[attr-defined]

        await client.app({  # type: ignore[arg-type]
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
            "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
            "client": ("testclient", 50000), "server": ("testserver", 80), "state": dict(client.app_state),
        }, receive, send)

    assert client.portal is not None
    client.portal.call(ask)
    counted = [line for line in seen[0].splitlines() if line.startswith("bandit_router_http_requests_total")]
    assert f'bandit_router_http_requests_total{{code="{code}",route="{path}"}} 1.0' in counted, counted
    if path == "/v1/route" and code == 200:
        assert "bandit_router_route_latency_seconds_count 1.0" in seen[0]


def test_metrics_count_no_feedback_of_a_transaction_that_rolled_back(client: TestClient) -> None:
    """The database refuses the feedback row (a trigger: the write transaction rolls back, the reply is 503):
    `/metrics` counts no feedback, learned reward or cost for it, as `/v1/stats` counts none."""
    decision = _route(client)
    with _db(client) as conn:
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON feedback BEGIN SELECT RAISE(ABORT, 'refused'); END")
    reply = client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.5})
    assert reply.status_code == 503
    assert client.get("/v1/stats").json()["feedback_learned"] == 0
    samples = [line for line in client.get("/metrics").text.splitlines() if not line.startswith("#")]
    assert not [s for s in samples if s.startswith(("bandit_router_feedback_", "bandit_router_learned_"))]
    with _db(client) as conn:
        conn.execute("DROP TRIGGER refuse")
    for _ in range(2):  # stored, then recognised as a duplicate: counted once each
        assert client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.5}).is_success
    text = client.get("/metrics").text
    assert f'bandit_router_feedback_total{{model="{decision["model"]}",status="applied"}} 1.0' in text
    assert f'bandit_router_feedback_total{{model="{decision["model"]}",status="duplicate"}} 1.0' in text


def test_openapi_documents_the_bodies(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    route = schema["paths"]["/v1/route"]["post"]
    assert route["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/RouteIn")
    assert {"RouteIn", "FeedbackIn", "ModelIn", "MessageIn", "ErrorOut"} <= set(schema["components"]["schemas"])
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("get", "/nope", 404), ("put", "/v1/route", 405), ("get", "/v1/decisions/unknown", 404),
     ("get", "/v1/decisions/" + "x" * 65, 422), ("delete", "/v1/models/unknown", 404)],
)
def test_every_error_is_json_with_a_message(client: TestClient, method: str, path: str, status: int) -> None:
    reply = client.request(method, path)
    assert reply.status_code == status
    assert reply.headers["content-type"] == "application/json"
    assert reply.json()["message"]


def test_health_readiness_and_unavailable(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    assert client.head("/healthz").status_code == 200 and client.head("/readyz").status_code == 200  # HEAD probes
    client.app.state.engine.stop()  # type: ignore[attr-defined]
    assert client.get("/healthz").status_code == 200 and client.head("/healthz").status_code == 200
    assert client.head("/readyz").status_code == 503
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.headers["retry-after"] == "1"
    route = client.post("/v1/route", json={"prompt": "x"})
    assert route.status_code == 503 and route.json()["error"] == "unavailable"


def test_a_fixed_policy_naming_no_catalog_model_does_not_start_and_a_retired_one_is_warned_about(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    """`policy = "fixed:gpt-5"` (no such model) served, sending every request to the cheapest model with only a
    warning in the log; it is a `ConfigError` at start naming the model and the catalog, for a shadow too. A fixed
    model retired at run time (DELETE /v1/models) is still warned about at the next start: the cheapest allowed
    model until a model of that name is added again. A fixed policy on an active model says nothing, whether the
    model is in the spec or in `policy_settings`."""
    caplog.set_level(logging.WARNING)
    make_client(policy="fixed:gpt-4o", shadow_policies=("fixed:gpt-4o-mini",)).__exit__(None, None, None)
    make_client(policy="fixed", policy_settings={"model": "gpt-4o"}).__exit__(None, None, None)
    assert "is not an active model" not in caplog.text
    for settings in ({"policy": "fixed:gpt-5"}, {"shadow_policies": ("fixed:gpt-5",)}):
        with pytest.raises(ConfigError, match=re.escape("policy 'fixed:gpt-5' names the model 'gpt-5', which is not "
                                                        "in the catalog; its models: gpt-4.1-nano, gpt-4o-mini, ")):
            make_client(**settings)
    client = make_client(policy="fixed:gpt-4o")
    assert client.delete("/v1/models/gpt-4o").status_code == 200
    client.__exit__(None, None, None)
    client = make_client(policy="fixed:gpt-4o")
    assert "policy 'fixed:gpt-4o': 'gpt-4o' is not an active model, so it chooses the cheapest allowed model for " \
           "every request until a model of that name is added (POST /v1/models)" in caplog.text
    assert _route(client, prompt="hi")["model"] == "llama-3.1-8b-instruct"
    added = client.post("/v1/models", json={"name": "gpt-4o", "input_usd_per_mtok": 2.5, "output_usd_per_mtok": 10})
    assert added.status_code == 201, added.text
    assert _route(client, prompt="hi")["model"] == "gpt-4o"


def test_a_fixed_policy_on_a_model_added_at_run_time_starts_and_one_named_nowhere_is_refused(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    """A model added with POST /v1/models stays across restarts; a configuration that then pins traffic to it
    (`policy = "fixed:<it>"`) served it at b25d2f1, and was refused once fixed models were checked against the
    catalog file alone. The start checks the live catalog (the file with the stored model events): it serves the
    model, live or as a shadow's; a model named nowhere is still refused, with the live catalog's models; an added
    model retired since starts with the warning a retired catalog model gets."""
    client = make_client()
    added = client.post("/v1/models", json={"name": "gpt-5", "input_usd_per_mtok": 1.25, "output_usd_per_mtok": 10})
    assert added.status_code == 201, added.text
    client.__exit__(None, None, None)
    client = make_client(policy="fixed:gpt-5")
    assert _route(client, prompt="hi")["model"] == "gpt-5"
    client.__exit__(None, None, None)
    make_client(shadow_policies=("fixed:gpt-5",)).__exit__(None, None, None)
    for settings, key in (({"policy": "fixed:gpt-6"}, "policy"), ({"shadow_policies": ("fixed:gpt-6",)},
                                                                   "shadow_policies")):
        with pytest.raises(ConfigError, match=f"^{key}: policy 'fixed:gpt-6' names the model 'gpt-6' \\(did you mean "
                           r"gpt-5\?\), which is not in the catalog; its models: gpt-4.1-nano, .*, claude-sonnet-4-5, "
                           "gpt-5$"):
            make_client(**settings)
    client = make_client()
    assert client.delete("/v1/models/gpt-5").status_code == 200
    client.__exit__(None, None, None)
    caplog.set_level(logging.WARNING)
    client = make_client(policy="fixed:gpt-5")
    assert "policy 'fixed:gpt-5': 'gpt-5' is not an active model, so it chooses the cheapest allowed model" \
           in caplog.text
    assert _route(client, prompt="hi")["model"] == "llama-3.1-8b-instruct"


CODE_PROMPT = "Fix this Python function: def mean(xs): return sum(xs) / len(x)"  # markers code and math


def test_a_rules_policy_may_name_a_model_added_at_run_time_and_skips_a_retired_one(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    """A rule or default of a `rules` policy may name a model added at run time (the live catalog is checked at
    start, as for a fixed policy). A rule whose model is retired at run time is skipped (the next rule decides),
    a retired default leaves the cheapest allowed model; nothing fails, and the next start says so in the log. A
    rule naming a model that is nowhere does not start, naming the rule."""
    client = make_client()
    added = client.post("/v1/models", json={"name": "gpt-5", "input_usd_per_mtok": 1.25, "output_usd_per_mtok": 10})
    assert added.status_code == 201, added.text
    client.__exit__(None, None, None)
    rules = {"default": "gpt-4o-mini", "rules": [{"model": "gpt-5", "markers": ["code"]},
                                                  {"model": "gpt-4o", "markers": ["code"]}]}
    client = make_client(policy="rules", policy_settings=rules)
    assert _route(client, prompt=CODE_PROMPT)["model"] == "gpt-5"
    assert _route(client, prompt="Write a short poem about the sea")["model"] == "gpt-4o-mini"
    for model in ("gpt-5", "gpt-4o-mini"):
        assert client.delete(f"/v1/models/{model}").status_code == 200
    assert _route(client, prompt=CODE_PROMPT)["model"] == "gpt-4o"
    assert _route(client, prompt="Write a short poem about the sea")["model"] == "llama-3.1-8b-instruct"
    client.__exit__(None, None, None)
    caplog.set_level(logging.WARNING)
    client = make_client(policy="rules", policy_settings=rules)
    assert "rule 1 (markers = ['code']): 'gpt-5' is not an active model, so the rule is skipped" in caplog.text
    assert "default: 'gpt-4o-mini' is not an active model, so a request that no rule decides gets the cheapest" \
           in caplog.text
    assert _route(client, prompt=CODE_PROMPT)["model"] == "gpt-4o"
    client.__exit__(None, None, None)
    misspelt = {"rules": [{"model": "gpt-4o", "min_chars": 10}, {"model": "gpt-4o-minii", "regex": "(?i)^translate"}]}
    with pytest.raises(ConfigError, match=r"^policy: policy 'rules:rules=sha256-\w+': rule 2 \(regex = "
                       r"'\(\?i\)\^translate'\) names the model 'gpt-4o-minii' \(did you mean gpt-4o-mini\?\), "
                       r"which is not in the catalog; its models: .*gpt-5"):
        make_client(policy="rules", policy_settings=misspelt)


def test_a_request_may_allow_more_than_64_models_of_a_large_catalog(make_client: Callable[..., TestClient]) -> None:
    """A request's `models` was held to 64 names while a catalog may hold 128 by default (`max_models`): a request
    allowing 70 of a 70-model catalog was a 422 (found by hunt-scale on a 100-model catalog). It may name up to
    1,024; beyond, a 422 names the field and the limit."""
    from bandit_router.catalog import ModelSpec

    names = [f"m-{i:02d}" for i in range(70)]
    client = make_client(models=tuple(ModelSpec(n, 1.0 + i / 10, 2.0) for i, n in enumerate(names)))
    reply = client.post("/v1/route", json={"prompt": "hi", "models": names[::-1]})
    assert reply.status_code == 200, reply.text
    assert set(reply.json()["probabilities"]) == set(names)
    refused = client.post("/v1/route", json={"prompt": "hi", "models": names * 15})
    assert refused.status_code == 422 and refused.json()["field"] == "models"
    assert "at most 1024" in refused.json()["message"]


def test_a_refusal_of_many_unknown_models_names_each_once_and_the_first_few(client: TestClient) -> None:
    """A request may list 1,024 names (of up to 128 characters): the 422 of unknown ones repeated every name back,
    131 KB for 1,024 of them and a name sent 1,023 times as often (found by review22scale). Each unknown name is
    named once, the first five, then how many more."""
    names = [f"nope-{i:04d}-" + "x" * 110 for i in range(1024)]
    reply = client.post("/v1/route", json={"prompt": "hi", "models": names})
    message = reply.json()["message"]
    assert reply.status_code == 422 and reply.json()["field"] == "models", reply.text
    assert len(reply.content) < 2000 and message.endswith("and 1019 more"), message[-200:]
    assert "'nope-0004-" in message and "'nope-0005-" not in message
    again = client.post("/v1/route", json={"prompt": "hi", "models": ["gpt-4o-mni"] * 1024}).json()["message"]
    assert again == "unknown or retired models: 'gpt-4o-mni' (did you mean gpt-4o-mini?)", again
