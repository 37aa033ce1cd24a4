"""Budgets in the HTTP service: `GET/PUT /v1/budgets` (keys, 403, 422), targets in `/v1/stats` and `/metrics`,
a changed target effective on the next request, tenants paced apart, and the state surviving the restart of a
real server process."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from tools.loopback import loopback

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*install `httpx2`.*")
    from fastapi.testclient import TestClient

from service_client import start_client

import bandit_router.budgets.config as budget_config
from bandit_router.budgets import BudgetConfig, BudgetPacer
from bandit_router.budgets.config import MAX_SHARES, MAX_SPENDS, MAX_TENANTS
from bandit_router.catalog import ModelSpec
from bandit_router.config import Secrets, Settings, load_settings
from bandit_router.errors import ConfigError, InvalidInput
from bandit_router.jsonkeys import DuplicateKey, once_each
from bandit_router.log.budget_state import BUDGETS_CONFIG, BUDGETS_FILE, BUDGETS_STATE, BudgetState, stored_budgets
from bandit_router.store import open_store
from tools.serve_process import NotReady, ServeProcess

CLIENT_KEY = "client-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**changes: Any) -> TestClient:
        client = start_client(Settings(db=tmp_path / "budgets.db", seed=7, **changes))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _route(client: TestClient, tenant: str | float | None = None, **headers: str) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": "Sort a list in Python"}
    if tenant is not None:
        body["context"] = {"tenant": tenant}
    reply = client.post("/v1/route", json=body, headers=headers)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _cost_weight(client: TestClient, decision_id: str, **headers: str) -> float:
    reply = client.get(f"/v1/decisions/{decision_id}", headers=headers)
    assert reply.status_code == 200, reply.text
    return float(reply.json()["cost_weight"])


def test_get_and_put_need_keys_and_validate(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_keys=Secrets((CLIENT_KEY,)), admin_keys=Secrets((ADMIN_KEY,)))
    assert client.get("/v1/budgets").status_code == 401
    got = client.get("/v1/budgets", headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert got.status_code == 200 and got.json()["targets"] == []
    body = {"avg_cost_usd": 0.0005, "tenants": {"acme": {"spend_usd": "50/1d", "share:gpt-4o": 0.3}}}
    assert client.put("/v1/budgets", json=body).status_code == 401
    assert client.put("/v1/budgets", json=body, headers={"authorization": f"Bearer {CLIENT_KEY}"}).status_code == 403
    put = client.put("/v1/budgets", json=body, headers=ADMIN)
    assert put.status_code == 200, put.text
    assert sorted(put.json()["targets"]) == ["@acme:share:gpt-4o=0.3", "@acme:spend_usd=50/1d", "avg_cost_usd=0.0005"]
    again = client.get("/v1/budgets", headers=ADMIN).json()
    assert again["budgets"] == put.json()["budgets"]
    for bad in ({"avg_cost_usd": -1}, {"no_such_target": 1}, {"spend_usd": "50/fortnight"}, [1, 2],
                {"fallback_model": "no-such-model", "avg_cost_usd": 0.001}, {"cost_step": "fast"},
                {"tenants": {"acme": 3}}):
        reply = client.put("/v1/budgets", json=bad, headers=ADMIN)
        assert reply.status_code == 422, (bad, reply.text)
        assert reply.json()["error"] == "invalid_input"
    raw = client.put("/v1/budgets", content=b"{not json", headers={**ADMIN, "content-type": "application/json"})
    assert raw.status_code == 422
    assert client.get("/v1/budgets", headers=ADMIN).json()["budgets"] == put.json()["budgets"]  # unchanged


def test_a_share_target_that_picks_no_active_model_is_a_422_naming_it(make_client: Callable[..., TestClient]) -> None:
    """A misspelt model or tag in a share target would be a target that never binds: refused, nothing changes;
    the message says it once (`budgets: …`, not `budgets: budgets: …`) and tells the period's units."""
    client = make_client()
    assert client.put("/v1/budgets", json={"share": {"gpt-4o": 0.3, "tier=large": 0.2}}).status_code == 200
    for bad, named in (({"share": {"gpt4o": 0.3}}, "share:gpt4o=0.3"),
                       ({"tenants": {"acme": {"share": {"tier=lage": 0.1}}}}, "@acme:share:tag:tier=lage=0.1")):
        reply = client.put("/v1/budgets", json=bad)
        assert reply.status_code == 422, reply.text
        message = reply.json()["message"]
        assert named in message and "no active model" in message and "gpt-4o-mini" in message, message
    assert client.get("/v1/budgets").json()["targets"] == ["share:gpt-4o=0.3", "share:tag:tier=large=0.2"]
    period = client.put("/v1/budgets", json={"spend_usd": "50/1x"}).json()["message"]
    assert period.startswith("budgets: target 'spend_usd=50/1x': period '1x' must be seconds or a number with"), period


@pytest.mark.parametrize(("bad", "hint"), [
    ({"avg_cost_usdd": 0.001}, "avg_cost_usd"),
    ({"cost_stpe": 0.1}, "cost_step"),
    ({"tenants": {"acme": {"spend_usdd": "5/1d"}}}, "spend_usd"),
    ({"tenant": {"acme": {"spend_usd": "5/1d"}}}, "tenants"),  # a table under a misspelt key: no "must be a number"
])
def test_a_misspelt_budget_key_gets_a_did_you_mean_hint(make_client: Callable[..., TestClient],
                                                         bad: dict[str, object], hint: str) -> None:
    reply = make_client().put("/v1/budgets", json=bad)
    assert reply.status_code == 422 and reply.json()["field"] == "budgets", reply.text
    assert f"(did you mean {hint}?)" in reply.json()["message"], reply.text
    assert not reply.json()["message"].startswith("budgets: budgets"), reply.text  # the scope said once


def test_stats_and_metrics_show_spend_target_and_lambda(make_client: Callable[..., TestClient]) -> None:
    client = make_client(budgets=load_settings(env={"BANDIT_ROUTER_BUDGETS": '{"avg_cost_usd": 0.0002}'}).budgets)
    for _ in range(3):
        decision = _route(client, "acme")
        client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.8,
                                          "cost_usd": 0.001})
    stats = client.get("/v1/stats").json()
    scope = stats["budgets"]["global"]
    assert scope["requests"] == 3 and scope["spend_usd"] > 0 and scope["cost_weight"] > 0
    assert scope["targets"][0]["target"] == "avg_cost_usd=0.0002" and scope["targets"][0]["value"] == 0.0002
    text = client.get("/metrics").text
    assert 'bandit_router_budget_spend_usd{tenant=""}' in text
    assert 'bandit_router_budget_cost_weight{tenant=""}' in text
    assert 'bandit_router_budget_target{target="avg_cost_usd=0.0002",tenant=""} 0.0002' in text
    assert 'bandit_router_budget_realized{target="avg_cost_usd=0.0002",tenant=""}' in text


def test_a_changed_target_takes_effect_on_the_next_request(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    assert _cost_weight(client, _route(client)["decision_id"]) == 20.0  # the default λ
    assert client.put("/v1/budgets", json={"avg_cost_usd": 0.001, "min_cost_weight": 500}).status_code == 200
    assert _cost_weight(client, _route(client)["decision_id"]) >= 500.0  # the very next request
    # a target far below every model's cost: λ climbs to its cap after one decision
    assert client.put("/v1/budgets", json={"avg_cost_usd": 1e-9}).status_code == 200
    _route(client)
    tight = _cost_weight(client, _route(client)["decision_id"])
    assert tight == pytest.approx(1e6)
    # loosened by 10⁹: λ is rescaled by old/new at once, the next request gets it
    assert client.put("/v1/budgets", json={"avg_cost_usd": 1.0}).status_code == 200
    assert _cost_weight(client, _route(client)["decision_id"]) < 20.0  # down to the floor of the cost spread
    assert client.put("/v1/budgets", json={}).status_code == 200  # no targets: the default again
    assert _cost_weight(client, _route(client)["decision_id"]) == 20.0


def test_a_tenant_target_does_not_move_another_tenants_traffic(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    assert client.put("/v1/budgets", json={"tenants": {"acme": {"avg_cost_usd": 1e-9}}}).status_code == 200
    for _ in range(3):
        _route(client, "acme")
    assert _cost_weight(client, _route(client, "acme")["decision_id"]) == pytest.approx(1e6)
    other = [_route(client, "beta") for _ in range(20)]
    assert {_cost_weight(client, d["decision_id"]) for d in other} == {20.0}
    untagged = _route(client)
    assert _cost_weight(client, untagged["decision_id"]) == 20.0
    report = client.get("/v1/budgets").json()["report"]
    assert report["tenants"]["acme"]["requests"] == 4
    assert report["global"]["requests"] == 25


def test_a_refund_of_a_decision_made_before_a_tenant_had_targets_is_not_the_tenants(
    make_client: Callable[..., TestClient],
) -> None:
    """A decision routed before `@acme` had a target, a PUT giving it one, then the decision's feedback (cost 0):
    acme's spend stays 0 (was minus the decision's expected cost, a budget granted from a refund of a booking the
    tenant never made); the global scope, which booked it, gets the refund."""
    client = make_client()
    decision = _route(client, "acme")
    put = client.put("/v1/budgets", json={"tenants": {"acme": {"spend_usd": "50/1d"}}}, headers=ADMIN)
    assert put.status_code == 200, put.text
    feedback = {"decision_id": decision["decision_id"], "quality": 0.7, "cost_usd": 0.0}
    assert client.post("/v1/feedback", json=feedback).status_code == 200
    report = client.get("/v1/budgets", headers=ADMIN).json()["report"]
    assert report["global"]["spend_usd"] == pytest.approx(0.0, abs=1e-12)
    acme = report["tenants"]["acme"]
    assert acme["spend_usd"] == 0.0 and acme["targets"][0]["realized"] == 0.0


def test_fallback_model_in_the_config_must_be_in_the_catalog(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fallback_model"):
        load_settings(env={"BANDIT_ROUTER_BUDGETS": '{"fallback_model": "nope", "avg_cost_usd": 0.001}'})
    settings = load_settings(env={"BANDIT_ROUTER_BUDGETS": '{"fallback_model": "gpt-4o-mini", "avg_cost_usd": 1}'})
    assert settings.budgets.fallback_model == "gpt-4o-mini"


JUDGE_ONLY = (ModelSpec("cheap", 0.1, 0.4), ModelSpec("dear", 2.5, 10.0), ModelSpec("judge", 0.05, 0.1, route=False))


@pytest.mark.parametrize(("budgets", "message"), [
    ({"fallback_model": "judge", "spend_usd": "5/1d"}, "fallback_model 'judge' has route = false"),
    ({"share": {"judge": 0.1}}, "share:judge=0.1: no"),
])
def test_a_budget_on_a_model_that_is_never_routed_to_is_refused(make_client: Callable[..., TestClient],
                                                                 budgets: dict[str, Any], message: str) -> None:
    """A route = false model (a judge's, a routing LLM's) is never chosen, so a fallback or a share on it can never
    act; both were accepted, by PUT and at start, while a share on no model at all is refused."""
    with pytest.raises(ConfigError, match=message):
        Settings(models=JUDGE_ONLY, budgets=BudgetConfig.from_mapping(budgets)).check()
    client = make_client(models=JUDGE_ONLY)
    reply = client.put("/v1/budgets", json=budgets)
    assert reply.status_code == 422, reply.text
    assert message in reply.json()["message"]
    assert client.get("/v1/budgets").json()["targets"] == []


# -- a real server process ------------------------------------------------------------------------------------
def _serve_command() -> list[str]:
    script = Path(sys.executable).with_name("bandit-router")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bandit_router.cli"]


@pytest.mark.slow
def test_budget_state_survives_a_restart_of_a_real_server(tmp_path: Path) -> None:
    db = tmp_path / "router.db"
    started: list[ServeProcess] = []

    def start(env: dict[str, str] | None = None) -> ServeProcess:
        quiet = {"BANDIT_ROUTER_SEED": "5", "BANDIT_ROUTER_LOG_LEVEL": "warning", **(env or {})}
        server = ServeProcess(tmp_path, _serve_command(), ["--db", str(db)], env=quiet)
        started.append(server)
        server.wait_ready()
        return server

    try:
        first = start()
        body = {"avg_cost_usd": 0.002, "tenants": {"acme": {"spend_usd": "10/1d"}}}
        assert loopback.put(first.url + "/v1/budgets", json=body).status_code == 200
        with httpx.Client(base_url=first.url) as http:
            for i in range(30):
                decision = http.post("/v1/route", json={"prompt": f"Sort list {i}", "context": {"tenant": "acme"}})
                assert decision.status_code == 200, decision.text
                http.post("/v1/feedback", json={"decision_id": decision.json()["decision_id"], "quality": 0.7,
                                                "cost_usd": 0.003})
            before = http.get("/v1/budgets").json()
        acme = before["report"]["tenants"]["acme"]
        assert acme["requests"] == 30 and acme["spend_usd"] == pytest.approx(0.09)
        first.terminate()

        # the configuration now says otherwise: the stored state wins after a restart
        second = start({"BANDIT_ROUTER_BUDGETS": '{"avg_cost_usd": 0.5}'})
        after = loopback.get(second.url + "/v1/budgets").json()
        assert after["budgets"] == before["budgets"]
        assert after["report"]["tenants"]["acme"]["spend_usd"] == pytest.approx(0.09)
        assert after["report"]["tenants"]["acme"]["requests"] == 30
        assert after["report"]["global"]["cost_weight"] == pytest.approx(before["report"]["global"]["cost_weight"])
        assert loopback.get(second.url + "/readyz").json()["recovery"]["budgets"] == "stored"

        # a PUT is stored at once: it survives kill -9
        assert loopback.put(second.url + "/v1/budgets", json={"avg_cost_usd": 0.001}).status_code == 200
        second.kill9()
        third = start()
        assert loopback.get(third.url + "/v1/budgets").json()["targets"] == ["avg_cost_usd=0.001"]
    finally:
        for server in started:
            server.stop()


def test_an_edited_budgets_table_that_the_stored_targets_win_over_is_said_once_per_edit(
        make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture) -> None:
    """The stored targets win over the configuration's [budgets] at every start (a PUT is not undone by a restart),
    so a budget cut in the file, or its targets removed, was not paced and nothing said so. A start whose file
    changed since the last start, and differs from what it paces, warns naming both; the next start with the same
    file says nothing, and neither does a PUT's target with a file that never had any."""
    def warned() -> list[str]:
        return [m for m in _budget_warnings(caplog) if "[budgets] changed" in m]

    def start(budgets: dict[str, Any]) -> TestClient:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            return make_client(budgets=BudgetConfig.from_mapping(budgets))

    first = start({"spend_usd": "100/1d"})
    _route(first)
    first.__exit__(None, None, None)  # stores the state: its targets win from now on
    assert warned() == []
    cut = start({"spend_usd": "1/1d"})
    assert cut.get("/v1/budgets").json()["targets"] == ["spend_usd=100/1d"]  # as documented: the stored win
    (said,) = warned()
    assert "file: spend_usd=1/1d; paced: spend_usd=100/1d" in said and "PUT" in said
    cut.__exit__(None, None, None)
    again = start({"spend_usd": "1/1d"})
    assert warned() == []
    again.__exit__(None, None, None)
    removed = start({})
    assert "file: no targets; paced: spend_usd=100/1d" in warned()[0]
    assert removed.put("/v1/budgets", json={"avg_cost_usd": 0.01}).status_code == 200
    removed.__exit__(None, None, None)
    put_only = start({})
    assert put_only.get("/v1/budgets").json()["targets"] == ["avg_cost_usd=0.01"] and warned() == []


def test_an_edited_budgets_table_is_said_by_one_worker_not_by_each(
        make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve --workers N`: each worker reads the file as last noted, then notes it; every worker that read before
    the first noted it warned. The warning comes from the worker that notes the edit; here the second worker is
    handed what its read would have found before the first worker's start noted it."""
    first = make_client(budgets=BudgetConfig.from_mapping({"spend_usd": "100/1d"}))
    _route(first)
    first.__exit__(None, None, None)  # stores the state: its targets win from now on
    store = open_store(tmp_path / "budgets.db")
    with store.read() as reader:
        read_before = reader.get_meta(BUDGETS_FILE)
    store.close()
    note_file = BudgetState._note_file

    def as_read_before(self: BudgetState, configured: BudgetConfig, before: str | None, *, stored: bool) -> None:
        note_file(self, configured, read_before, stored=stored)

    monkeypatch.setattr(BudgetState, "_note_file", as_read_before)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        for _worker in range(2):
            make_client(budgets=BudgetConfig.from_mapping({"spend_usd": "1/1d"}))
    said = [m for m in _budget_warnings(caplog) if "[budgets] changed" in m]
    assert len(said) == 1 and "file: spend_usd=1/1d; paced: spend_usd=100/1d" in said[0], said


@pytest.mark.parametrize(("route_false", "why"), [
    (False, "removed from the catalog or retired"),
    (True, "route = false in the catalog"),
], ids=["removed", "route = false"])
def test_stored_budgets_naming_a_model_removed_from_the_catalog_file_are_warned_about(
        make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture, route_false: bool,
        why: str) -> None:
    """A PUT's fallback_model and share name a model that the catalog file then drops, or keeps with
    `route = false`: the start checks only the file's [budgets] (the stored ones replace it), so nothing said that
    the fallback is gone (the guard rails take the cheapest model) and the share never binds. The start warns about
    each, saying which of the two is the case (a model kept with route = false was said to be removed or retired),
    and routes as documented."""
    specs = (ModelSpec(name="a", input_usd_per_mtok=1.0, output_usd_per_mtok=2.0),
             ModelSpec(name="b", input_usd_per_mtok=3.0, output_usd_per_mtok=6.0),
             ModelSpec(name="c", input_usd_per_mtok=0.05, output_usd_per_mtok=0.1))
    first = make_client(models=specs)
    body = {"spend_usd": "0.00001/1d", "fallback_model": "c", "guard_max_usd_per_mtok": 0.01, "share": {"c": 0.5}}
    assert first.put("/v1/budgets", json=body).status_code == 200
    first.__exit__(None, None, None)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        second = make_client(models=(*specs[:2], *[dataclasses.replace(specs[2], route=False)][:route_false]))
    said = [m for m in _budget_warnings(caplog) if m.startswith("stored budgets")]
    assert len(said) == 2 and "fallback_model 'c'" in said[0] and "share:c=0.5" in said[1], said
    assert all(why in m for m in said), said
    assert second.get("/v1/budgets").json()["targets"] == ["spend_usd=1e-05/1d", "share:c=0.5"]
    assert _route(second)["model"] in ("a", "b")


def test_tenant_5_and_5_0_are_one_tenant(make_client: Callable[..., TestClient]) -> None:
    """A tenant was `str(value)`: tenant 5 and tenant 5.0 (one JSON number: a Python client sends 5.0) were "5" and
    "5.0", stored apart and paced apart (5.0 escaped tenant "5"'s budget). Both are tenant "5" now, as the string
    "5" is; 5.5 stays a tenant of its own."""
    client = make_client()
    assert client.put("/v1/budgets", json={"tenants": {"5": {"avg_cost_usd": 1e-9}}}).status_code == 200
    decisions = [_route(client, tenant) for tenant in (5, 5.0, "5", -0.0, 5.5)]
    stored = [client.get(f"/v1/decisions/{d['decision_id']}").json()["tenant"] for d in decisions]
    assert stored == ["5", "5", "5", "0", "5.5"]
    report = client.get("/v1/budgets").json()["report"]
    assert report["tenants"]["5"]["requests"] == 3
    assert report["global"]["requests"] == 5


def test_a_target_written_for_tenant_5_0_paces_the_number_5_0(make_client: Callable[..., TestClient]) -> None:
    """`@5.0:` (a `tenants."5.0"` table) was the string tenant "5.0" while requests with tenant 5.0 are tenant "5":
    the target bound nobody. It is tenant "5" now, and a body that gives tenant 5 two tables is a 422 naming both."""
    client = make_client()
    put = client.put("/v1/budgets", json={"tenants": {"5.0": {"avg_cost_usd": 1e-9}}})
    assert put.status_code == 200, put.text
    assert put.json()["targets"] == ["@5:avg_cost_usd=1e-09"]
    for tenant in (5.0, 5, "5.0"):
        _route(client, tenant)
    assert client.get("/v1/budgets").json()["report"]["tenants"]["5"]["requests"] == 2  # not the string "5.0"
    both = client.put("/v1/budgets", json={"tenants": {"5": {"avg_cost_usd": 1}, "5.0": {"avg_cost_usd": 2}}})
    assert both.status_code == 422, both.text
    assert "'5' and '5.0' are one tenant" in both.json()["message"]
    assert client.get("/v1/budgets").json()["targets"] == ["@5:avg_cost_usd=1e-09"]  # nothing changed


def test_a_state_stored_with_tenants_5_and_5_0_apart_loads_keeping_the_rest(
        make_client: Callable[..., TestClient], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before tenant 5.0 was tenant "5", `{"tenants": {"5": …, "5.0": …}}` was two tenants and a PUT stored it. The
    strict refusal of such a body (a 422 now) refused the stored state at the next start, which fell back to the
    configuration: the global target, acme's spend target and acme's spend were lost. The stored state loads: tenant
    "5" keeps its own targets, "5.0"'s are dropped with a warning naming both, and nothing else changes."""
    first = make_client()
    body = {"avg_cost_usd": 0.004, "tenants": {"5": {"avg_cost_usd": 0.001}, "was-5.0": {"avg_cost_usd": 0.002},
                                               "acme": {"spend_usd": "50/1d"}}}
    assert first.put("/v1/budgets", json=body).status_code == 200
    for i in range(4):
        decision = first.post("/v1/route", json={"prompt": f"Sort list {i}", "context": {"tenant": "acme"}}).json()
        first.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.7, "cost_usd": 0.5})
    before = first.get("/v1/budgets").json()["report"]["tenants"]["acme"]
    assert before["spend_usd"] == pytest.approx(2.0)
    first.__exit__(None, None, None)  # saves the state on stop

    _store_as_before(tmp_path / "budgets.db", {'"was-5.0"': '"5.0"'})  # the second tenant named "5.0"

    with caplog.at_level(logging.INFO, logger="bandit_router"):
        second = make_client()
    got = second.get("/v1/budgets").json()
    assert "stored the budget targets as loaded" in caplog.text
    assert got["targets"] == ["avg_cost_usd=0.004", "@5:avg_cost_usd=0.001", "@acme:spend_usd=50/1d"]
    assert got["report"]["tenants"]["acme"]["spend_usd"] == pytest.approx(before["spend_usd"])
    assert got["report"]["tenants"]["acme"]["requests"] == before["requests"] == 4
    assert second.get("/readyz").json()["recovery"]["budgets"] == "stored"
    said = [r.getMessage() for r in caplog.records if "were stored as two tenants" in r.getMessage()]
    assert len(said) == 1, said  # the state and the targets stored beside it both hold the tenants: said once
    assert "'5' and '5.0' were stored as two tenants" in said[0] and "dropped those of '5.0'" in said[0]

    # the start stored what it loaded: the next start loads the same and has nothing to say (it warned each time)
    second.__exit__(None, None, None)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bandit_router"):
        third = make_client()
    assert third.get("/v1/budgets").json()["targets"] == got["targets"]
    assert third.get("/v1/budgets").json()["report"]["tenants"]["acme"]["requests"] == 4
    assert _budget_warnings(caplog) == [] and "stored the budget targets as loaded" not in caplog.text
    assert '"5.0"' not in "".join(_stored_rows(tmp_path / "budgets.db").values())


def _rows_stored_with_tenants_5_and_5_0_apart(db: Path | str) -> None:
    """The budget rows as a version that kept tenants "5" and "5.0" apart stored them (a start stores them again)."""
    old = BudgetConfig.from_mapping({"avg_cost_usd": 0.004, "tenants": {"5": {"avg_cost_usd": 0.001},
                                                                       "x": {"avg_cost_usd": 0.002}}})
    store = open_store(db)
    try:
        store.prepare()
        with store.write() as tx:
            tx.set_meta(BUDGETS_STATE, json.dumps(BudgetPacer(old).state()).replace('"x"', '"5.0"'))
            tx.set_meta(BUDGETS_CONFIG, json.dumps(old.to_mapping(), sort_keys=True).replace('"x"', '"5.0"'))
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_refused_target_stays_stored_when_a_newer_replica_saves_during_the_start(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A newer replica's targets came from its configuration file, so only its state row held them, `900/1w`
    among them. A replica that refuses `/1w` (played by this code with `/1w` refused) started and copied the
    state's targets into the targets row to keep them from its periodic save, but gave the copy up when the newer
    replica's save (every 5 s) landed between its read and its write, and nothing retried it: its own save then
    stripped the target from the state row, and the newer replica's restart lost it for good. No copy is needed:
    its saves store the refused target (text and state) as stored."""
    db: Path | str = tmp_path / "replicas.db" if backend == "sqlite" else str(request.getfixturevalue("pg_url"))
    file = {"avg_cost_usd": 0.004, "spend_usd": ["50/1d", "900/1w"]}  # the newer replica's [budgets]
    newer_store, older_store = open_store(db), open_store(db)
    newer_store.prepare()
    try:
        newer = BudgetState(newer_store, BudgetPacer(BudgetConfig.from_mapping(file)))
        newer.recover(cast(Any, SimpleNamespace()))
        newer.pacer.spend(600.0)
        newer.save(force=True)  # the state row only: the targets came from the file
        real = budget_config.parse_target

        def older_parse(text: str, **kw: Any) -> Any:
            if text.strip().endswith("/1w"):
                raise InvalidInput(f"target {text!r}: unknown period '1w'")
            return real(text, **kw)

        older = BudgetState(older_store, BudgetPacer())
        load = older.pacer.load

        def load_while_the_newer_replica_saves(saved: Any) -> Any:
            dropped = load(saved)
            newer.pacer.spend(1.0)  # it keeps serving
            newer.save(force=True)  # its periodic save, in the window
            return dropped

        older.pacer.load = load_while_the_newer_replica_saves  # type: ignore[method-assign]
        with monkeypatch.context() as older_version:
            older_version.setattr(budget_config, "parse_target", older_parse)
            older.recover(cast(Any, SimpleNamespace()))
            assert older.pacer.config.describe() == ["avg_cost_usd=0.004", "spend_usd=50/1d"]
            older.save(force=True)  # its periodic save
        restarted = BudgetState(newer_store, BudgetPacer(BudgetConfig.from_mapping(file)))
        restarted.recover(cast(Any, SimpleNamespace()))
        assert restarted.pacer.config.describe() == ["avg_cost_usd=0.004", "spend_usd=50/1d", "spend_usd=900/1w"]
        week = next(t for t in restarted.pacer.report()["global"]["targets"] if t["target"].endswith("/1w"))
        assert week["realized"] == pytest.approx(601.0)  # as the newer replica stored it last (`save` reads it)
    finally:
        newer_store.close()
        older_store.close()


def _older_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """This code as a version that refuses the period `1w` (a newer version's `900/1w`)."""
    real = budget_config.parse_target

    def older_parse(text: str, **kw: Any) -> Any:
        if text.strip().endswith("/1w"):
            raise InvalidInput(f"target {text!r}: unknown period '1w'")
        return real(text, **kw)

    monkeypatch.setattr(budget_config, "parse_target", older_parse)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("older_joins", ["following a PUT", "starting after the PUT"])
def test_an_older_replica_saves_a_refused_target_as_the_newer_replica_stored_it_last(
        tmp_path: Path, backend: str, older_joins: str, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicas of two versions on one database; a PUT on the newer sets `900/1w`, which the older refuses. The
    older replica's saves stored that target's state as it had it: none when it had followed the PUT's targets
    (its next save wrote the target without its state, and the newer replica's restart paced it from 0), and as it
    loaded it when it started after the newer stored 600 USD (it wrote 600 back every 5 s over the newer's growing
    spend). Its save reads the state row in its transaction and keeps the left-out target's state as stored then."""
    db: Path | str = tmp_path / "mixed.db" if backend == "sqlite" else str(request.getfixturevalue("pg_url"))
    newer_store, older_store = open_store(db), open_store(db)
    newer_store.prepare()
    try:
        newer = BudgetState(newer_store, BudgetPacer(), shared=True)
        newer.recover(cast(Any, SimpleNamespace()))
        older = BudgetState(older_store, BudgetPacer(), shared=True)
        with monkeypatch.context() as older_version:
            _older_version(older_version)
            older.recover(cast(Any, SimpleNamespace()))
        with newer_store.write() as tx:  # PUT on the newer replica
            newer.configure(tx, BudgetConfig.from_mapping({"tenants": {"acme": {"spend_usd": ["50/1d", "900/1w"]}}}))
        newer.pacer.spend(600.0, "acme")
        newer.save(force=True)
        with monkeypatch.context() as older_version:
            _older_version(older_version)
            if older_joins == "following a PUT":
                older._next_follow = 0.0
                older.housekeeping()
            else:
                older = BudgetState(older_store, BudgetPacer(), shared=True)
                older.recover(cast(Any, SimpleNamespace()))
            assert older.pacer.config.describe() == ["@acme:spend_usd=50/1d"]
            newer.pacer.spend(200.0, "acme")
            newer.save(force=True)
            older.save(force=True)  # its periodic save
        restarted = BudgetState(newer_store, BudgetPacer(), shared=True)
        restarted.recover(cast(Any, SimpleNamespace()))
        week = next(t for t in restarted.pacer.report()["tenants"]["acme"]["targets"] if t["target"].endswith("/1w"))
        assert week["realized"] == pytest.approx(800.0)
    finally:
        newer_store.close()
        older_store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_start_does_not_store_its_rows_over_a_put_made_since_it_read_them(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """Two processes start on rows an older version stored (tenants "5" and "5.0" apart: each start stores them
    again as loaded). B reads them; meanwhile A starts and a PUT /v1/budgets on A is acknowledged; then B stored the
    rows as it had loaded them, from its stale read, undoing the PUT (and A followed B's row). B's write now reads
    the rows again in its transaction and writes nothing when they changed; B follows the PUT."""
    db: Path | str = tmp_path / "race.db" if backend == "sqlite" else str(request.getfixturevalue("pg_url"))
    _rows_stored_with_tenants_5_and_5_0_apart(db)
    a = BudgetState(open_store(db), BudgetPacer())
    b = BudgetState(open_store(db), BudgetPacer())
    load = b.pacer.load

    def load_while_a_starts_and_takes_a_put(saved: Any) -> Any:
        dropped = load(saved)  # B has read the rows
        a.recover(cast(Any, SimpleNamespace()))
        with a.store.write() as tx:
            a.configure(tx, BudgetConfig.from_mapping({"avg_cost_usd": 0.5}))
        return dropped

    try:
        b.pacer.load = load_while_a_starts_and_takes_a_put  # type: ignore[method-assign]
        b.recover(cast(Any, SimpleNamespace()))
        with a.store.read() as reader:
            targets = reader.get_meta(BUDGETS_CONFIG)
        assert targets is not None and BudgetConfig.from_mapping(json.loads(targets)).describe() == [
            "avg_cost_usd=0.5"]
        a._next_follow = b._next_follow = 0.0
        a.housekeeping()
        b.housekeeping()
        assert a.pacer.config.describe() == b.pacer.config.describe() == ["avg_cost_usd=0.5"]
    finally:
        a.store.close()
        b.store.close()


def test_a_process_following_a_put_later_drops_the_same_refunds_as_the_one_that_took_it(tmp_path: Path) -> None:
    """Review of spend24: a PUT on A adds `@acme`'s target at t = 1000 (its `since`); B follows it a second later
    (it polls every `FOLLOW_EVERY_S`). B set `since` to its own 1001, so a refund of an acme decision made at 1000.5
    counted on A (acme's spend 0.1) and was dropped on B (0.8): the processes paced acme apart. B now takes when the
    targets were set from the state row the PUT stored with them; a later unrelated follow does not move it."""
    clock = [1000.0]
    db = tmp_path / "since.db"
    a = BudgetState(open_store(db), BudgetPacer(clock=lambda: clock[0]), shared=True)
    b = BudgetState(open_store(db), BudgetPacer(clock=lambda: clock[0]), shared=True)
    a.store.prepare()
    try:
        for state in (a, b):
            state.recover(cast(Any, SimpleNamespace()))
        with a.store.write() as tx:
            a.configure(tx, BudgetConfig.from_mapping({"tenants": {"acme": {"spend_usd": "1/1d"}}}))
        clock[0] = 1001.0
        b._next_follow = 0.0
        b.housekeeping()
        from bandit_router import Request, Router
        from tests.test_budgets import MODELS, _made
        context = Router(MODELS, "random", seed=0).featurize(Request(prompt="hi", context={"tenant": "acme"}))
        decision = _made(context, "large", 1000.5, cost=0.8)
        for state in (a, b):
            state.pacer.observe(decision, None)
            state.pacer.observe(decision, 0.1)
        assert a.pacer.report()["tenants"]["acme"]["spend_usd"] == pytest.approx(0.1)
        assert b.pacer.report()["tenants"]["acme"]["spend_usd"] == pytest.approx(0.1)
        clock[0] = 1010.0
        with a.store.write() as tx:  # a PUT that leaves acme's target as it was
            a.configure(tx, BudgetConfig.from_mapping({"avg_cost_usd": 0.5,
                                                       "tenants": {"acme": {"spend_usd": "1/1d"}}}))
        b._next_follow = 0.0
        b.housekeeping()
        assert a.pacer.state()["tenants"]["acme"]["since"] == b.pacer.state()["tenants"]["acme"]["since"] == 1000.0
        assert b.pacer.state()["global"]["targets"]["avg_cost_usd"]["since"] == 1010.0
    finally:
        a.store.close()
        b.store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_periodic_save_does_not_store_targets_over_a_put_it_has_not_followed(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """A PUT /v1/budgets on A stores its targets and A's state; B, which had not yet followed it (it polls every
    second), then saved its state with the old targets over the PUT's state row (no compare, unlike a start's
    rewrite). B's save now reads the targets row again in its transaction and writes nothing while it holds
    targets B has not read; B follows them, then saves."""
    db: Path | str = tmp_path / "save.db" if backend == "sqlite" else str(request.getfixturevalue("pg_url"))
    first = open_store(db)
    first.prepare()
    with first.write() as tx:
        BudgetState(first, BudgetPacer()).configure(tx, BudgetConfig.from_mapping({"avg_cost_usd": 0.004}))
    first.close()
    a = BudgetState(open_store(db), BudgetPacer())
    b = BudgetState(open_store(db), BudgetPacer())
    try:
        for process in (a, b):
            process.recover(cast(Any, SimpleNamespace()))
        with a.store.write() as tx:
            a.configure(tx, BudgetConfig.from_mapping({"avg_cost_usd": 0.5}))
        b.save(force=True)
        with b.store.read() as reader:
            state = json.loads(reader.get_meta(BUDGETS_STATE) or "{}")
        assert state["config"]["avg_cost_usd"] == 0.5
        b._next_follow = b._next_save = 0.0
        b.housekeeping()
        assert b.pacer.config.describe() == ["avg_cost_usd=0.5"]
        b.pacer.spend(0.25)
        b.save(force=True)
        with b.store.read() as reader:
            state = json.loads(reader.get_meta(BUDGETS_STATE) or "{}")
        assert state["config"]["avg_cost_usd"] == 0.5 and state["global"]["spend_usd"] == 0.25
    finally:
        a.store.close()
        b.store.close()


def test_a_process_that_cannot_load_the_stored_targets_does_not_save_over_the_state_of_one_that_did(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """B cannot load the targets a PUT on A stored (a newer version's row: here its `configure_stored` refuses it).
    B's housekeeping marked the row as read before following it, so its save's compare passed and B stored its state,
    with its old targets, over A's every 5 s: a restart then found A's new daily target in the targets row only and
    began its day again at 0 spent. B now saves only while the state row is still of its own targets: not over A's
    state; and, with targets no process could load (the state row still B's own), it goes on saving."""
    db = tmp_path / "unfollowed.db"
    first = open_store(db)
    first.prepare()
    with first.write() as tx:
        BudgetState(first, BudgetPacer()).configure(tx, BudgetConfig.from_mapping({"avg_cost_usd": 0.004}))
    first.close()
    a, b = BudgetState(open_store(db), BudgetPacer()), BudgetState(open_store(db), BudgetPacer())
    try:
        for process in (a, b):
            process.recover(cast(Any, SimpleNamespace()))

        def refused(data: Any) -> None:
            raise InvalidInput("cost_step must be a number in [0, 10], got 20")

        monkeypatch.setattr(b.pacer, "configure_stored", refused)
        with a.store.write() as tx:  # the PUT on A
            a.configure(tx, BudgetConfig.from_mapping({"avg_cost_usd": 0.004, "spend_usd": "5/1d"}))
        a.pacer.spend(3.0)
        a.save(force=True)
        b._next_follow = b._next_save = 0.0
        b.housekeeping()  # fails to follow, then saves
        with b.store.read() as reader:
            state = json.loads(reader.get_meta(BUDGETS_STATE) or "{}")
        assert state["config"].get("spend_usd") == "5/1d" and state["global"]["spend_usd"] == 3.0  # A's, untouched
        restarted = BudgetState(open_store(db), BudgetPacer())
        try:
            restarted.recover(cast(Any, SimpleNamespace()))
            spend = next(t for t in restarted.pacer.report()["global"]["targets"] if t["kind"] == "spend")
            assert spend["realized"] == pytest.approx(3.0)
        finally:
            restarted.store.close()
        with b.store.write() as tx:  # targets no process can load; the state row is B's own again
            tx.set_meta(BUDGETS_STATE, json.dumps(b.pacer.state()))
        b.pacer.spend(0.5)
        b._next_follow = b._next_save = 0.0
        with caplog.at_level(logging.WARNING, logger="bandit_router.log.budget_state"):
            b.housekeeping()
        with b.store.read() as reader:
            state = json.loads(reader.get_meta(BUDGETS_STATE) or "{}")
        assert state["global"]["spend_usd"] == 0.5 and "has not followed them" in caplog.text
    finally:
        a.store.close()
        b.store.close()



def test_a_process_started_after_a_newer_versions_put_does_not_save_over_its_state(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A newer version stored targets this one refuses whole (`cost_step = 20`, beyond this version's [0, 10]) in
    both rows, with 4 of its 5 USD/day spent. A process of this version that starts after (its file's `[budgets]`
    paced) took the state row for a damaged one (its config in this format did not load) and said it held nothing
    any version loads, and marked the targets row as read although it did not load it: its periodic save wrote its
    own state over the newer version's, whose day then began again at 0 spent. The row is now another version's (not
    saved over, `state_saved` false), and the save never writes it."""
    db = tmp_path / "newer-put.db"
    newer_config = {"spend_usd": "5/1d", "cost_step": 20.0}
    state = BudgetPacer(BudgetConfig.from_mapping({"spend_usd": "5/1d"})).state()
    state["config"] = newer_config
    state["global"]["spend_usd"] = state["global"]["targets"]["spend_usd/1d"]["spend_usd"] = 4.0
    store = open_store(db)
    store.prepare()
    with store.write() as tx:
        tx.set_meta(BUDGETS_STATE, json.dumps(state))
        tx.set_meta(BUDGETS_CONFIG, json.dumps(newer_config, sort_keys=True))
    this = BudgetState(store, BudgetPacer(BudgetConfig.from_mapping({"avg_cost_usd": 0.01})))
    try:
        with caplog.at_level(logging.WARNING, logger="bandit_router.log"):
            assert this.recover(cast(Any, SimpleNamespace())) == "config"
        assert "holds nothing any version loads" not in caplog.text
        assert "targets this version refuses" in caplog.text and not this.saving()["state_saved"]
        this.pacer.spend(0.5)
        for _ in range(2):
            this._next_follow = this._next_save = 0.0
            this.housekeeping()
        this.save(force=True)
        with store.read() as reader:
            assert json.loads(reader.get_meta(BUDGETS_STATE) or "{}") == state  # the newer version's, untouched
    finally:
        store.close()



@pytest.mark.parametrize("damage", [{"exceedance": [[1, 2, 3]]}, {"exceedance": [["ab"]]}, "deep"])
def test_a_damaged_state_row_of_the_same_config_does_not_stop_the_save(tmp_path: Path, damage: Any) -> None:
    """The state row holds a target this version left out, and another writer stored it again damaged: a row of the
    same config whose `exceedance` `dict()` refuses with ValueError, or JSON nested too deep to decode
    (RecursionError). The save raised out of the writer's housekeeping and ended the writer thread (every request
    503 until a restart); it now saves this process's state, with what it left out as loaded."""
    db = tmp_path / "damaged.db"
    newer = BudgetPacer(BudgetConfig.from_mapping({"avg_cost_usd": 0.004, "spend_usd": ["50/1d", "90/1w"]}))
    row = json.dumps(newer.state()).replace('"90/1w"', '"900/1mo"').replace('"spend_usd/1w"', '"spend_usd/1mo"')
    store = open_store(db)
    store.prepare()
    with store.write() as tx:
        tx.set_meta(BUDGETS_STATE, row)
    this = BudgetState(store, BudgetPacer())
    try:
        this.recover(cast(Any, SimpleNamespace()))
        assert this.pacer.left_out() == ["spend_usd=900/1mo"]
        with store.write() as tx:
            tx.set_meta(BUDGETS_STATE, "[" * 100_000 + "]" * 100_000 if damage == "deep"
                        else json.dumps({**json.loads(row), **damage}))
        this.pacer.spend(1.0)
        this.save(force=True)
        with store.read() as reader:
            saved = json.loads(reader.get_meta(BUDGETS_STATE) or "{}")
        assert saved["global"]["spend_usd"] == pytest.approx(1.0) and "spend_usd/1mo" in saved["global"]["targets"]
    finally:
        store.close()


def test_a_failing_budget_housekeeping_does_not_end_the_writer_thread(
        make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch) -> None:
    """Any error out of the budgets' housekeeping (run between the writer's batches) ended the writer thread: every
    request after it was 503 until a restart. It is logged (at most once a minute) and the writer goes on."""
    client = make_client(budgets=BudgetConfig.from_mapping({"avg_cost_usd": 0.01}))
    engine = client.app.state.engine  # type: ignore[attr-defined]

    def broken() -> None:
        raise ValueError("dictionary update sequence element #0 has length 3; 2 is required")

    monkeypatch.setattr(engine.budgets, "housekeeping", broken)
    for _ in range(5):
        decision = _route(client)
        assert client.get(f"/v1/decisions/{decision['decision_id']}").status_code == 200



@pytest.mark.parametrize("key", [BUDGETS_STATE, BUDGETS_CONFIG])
def test_a_stored_row_nested_too_deep_to_decode_does_not_load(tmp_path: Path, key: str) -> None:
    """JSON nested too deep in a stored budget row raised RecursionError (not a ValueError) out of every loading:
    serve's start and `check --config` ended with a traceback. Such a row does not load, as any other damaged one:
    the configuration's targets are paced, and housekeeping and the save go on."""
    store = open_store(tmp_path / "nested.db")
    store.prepare()
    with store.write() as tx:
        tx.set_meta(key, "[" * 100_000 + "]" * 100_000)
    try:
        assert not stored_budgets(store)
        this = BudgetState(store, BudgetPacer(BudgetConfig.from_mapping({"avg_cost_usd": 0.01})))
        assert this.recover(cast(Any, SimpleNamespace())) == "config"
        assert this.pacer.config.describe() == ["avg_cost_usd=0.01"]
        this._next_follow = this._next_save = 0.0
        this.housekeeping()
    finally:
        store.close()



def test_the_quiet_check_of_the_stored_budgets_says_no_reset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A stored mean gap, last request time or μ that is not finite was reset with a warning the quiet check
    (`stored_budgets`, run by serve's start and `check --config`) said too: each warning twice at a start, and
    `check` not quiet. The check says nothing; the start's loading says each once."""
    state = json.loads(json.dumps(BudgetPacer(BudgetConfig.from_strings(["spend_usd=5/1d", "share:gpt-4o=0.3"]))
                                  .state()))
    state["global"]["gap_s"] = state["global"]["targets"]["share:gpt-4o"]["mu"] = math.nan
    state["global"]["last_time"] = math.inf
    store = open_store(tmp_path / "quiet.db")
    store.prepare()
    with store.write() as tx:
        tx.set_meta(BUDGETS_STATE, json.dumps(state))
    try:
        with caplog.at_level(logging.WARNING, logger="bandit_router.budgets"):
            assert stored_budgets(store)
            assert caplog.records == []
            BudgetState(store, BudgetPacer()).recover(cast(Any, SimpleNamespace()))
        for said in ("the stored mean gap", "the stored time of the last request", "the stored multiplier μ"):
            assert caplog.text.count(said) == 1, said
    finally:
        store.close()


def test_the_periodic_save_keeps_the_state_of_a_target_this_version_left_out(tmp_path: Path) -> None:
    """A newer version stored a spend target this one refuses (`900/1mo`) with its month's spend. The rows were
    not rewritten at the start, but the periodic save stored this version's state, without the target: the newer
    version's next start found its target in the targets row only and started its month again at 0 spent (up to
    one more budget spent). The save keeps the left-out target, and its state as stored, in the state row."""
    db = tmp_path / "left-out.db"
    newer = BudgetPacer(BudgetConfig.from_mapping({"avg_cost_usd": 0.004, "spend_usd": ["50/1d", "90/1w"]}))
    newer.spend(3.0)
    store = open_store(db)
    store.prepare()
    with store.write() as tx:
        tx.set_meta(BUDGETS_STATE, json.dumps(newer.state()).replace('"90/1w"', '"900/1mo"').replace(
            '"spend_usd/1w"', '"spend_usd/1mo"'))
        tx.set_meta(BUDGETS_CONFIG, json.dumps(newer.config.to_mapping(), sort_keys=True).replace(
            '"90/1w"', '"900/1mo"'))
    with store.read() as reader:
        stored = json.loads(reader.get_meta(BUDGETS_STATE) or "{}")
    this = BudgetState(store, BudgetPacer())
    try:
        this.recover(cast(Any, SimpleNamespace()))
        assert this.pacer.config.describe() == ["avg_cost_usd=0.004", "spend_usd=50/1d"]
        this.pacer.spend(1.0)
        this.save(force=True)
        with store.read() as reader:
            saved = json.loads(reader.get_meta(BUDGETS_STATE) or "{}")
        assert saved["config"] == stored["config"]
        assert saved["global"]["targets"]["spend_usd/1mo"] == stored["global"]["targets"]["spend_usd/1mo"]
        assert saved["global"]["targets"]["spend_usd/1d"]["spend_usd"] == pytest.approx(4.0)
        again = BudgetPacer()
        assert again.load(saved) == {None: ["spend_usd=900/1mo"]}  # this version loads it again as it did
        assert again.state()["global"]["spend_usd"] == pytest.approx(4.0)
    finally:
        store.close()


def _stored_rows(db: Path) -> dict[str, str]:
    """The budget rows of the store's `meta` table (the pacer's state, the targets of the last PUT)."""
    store = open_store(db)
    try:
        with store.read() as reader:
            rows = {key: reader.get_meta(key) for key in (BUDGETS_STATE, BUDGETS_CONFIG)}
    finally:
        store.close()
    assert all(value is not None for value in rows.values()), rows
    return {key: value for key, value in rows.items() if value is not None}


def _store_as_before(db: Path, replace: dict[str, str]) -> None:
    """Rewrite both budget rows as an older version stored them: each `replace` key by its value (found in both)."""
    rows = _stored_rows(db)
    store = open_store(db)
    try:
        with store.write() as tx:
            for key, value in rows.items():
                for old, new in replace.items():
                    assert old in value, (key, old)
                    value = value.replace(old, new)
                tx.set_meta(key, value)
    finally:
        store.close()


def test_a_stored_target_this_version_refuses_drops_only_that_target(
        make_client: Callable[..., TestClient], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An older version stored `spend_usd=1e-320/1d` (its rate underflows, refused now): the whole stored set was
    refused at the next start ("stored budget targets not loaded"), so every other target restarted from the
    configuration, spend and λ lost. Only that target is left out, with a warning naming it and its tenant; the
    others keep their state and pace. The stored targets row keeps it (a start rewrote the rows without it, so it
    was gone for good): each start says it again."""
    first = make_client()
    body = {"avg_cost_usd": 0.004, "tenants": {"acme": {"spend_usd": ["50/1d", "2/1w"]}, "beta": {"spend_usd": "3/1d"}}}
    assert first.put("/v1/budgets", json=body).status_code == 200
    for i in range(3):
        decision = first.post("/v1/route", json={"prompt": f"Sort list {i}", "context": {"tenant": "acme"}}).json()
        first.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.7, "cost_usd": 0.5})
    before = first.get("/v1/budgets").json()["report"]
    first.__exit__(None, None, None)
    _store_as_before(tmp_path / "budgets.db", {'"2/1w"': '"1e-320/1w"', '"3/1d"': '"1e-320/1d"'})

    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        second = make_client()
    got = second.get("/v1/budgets").json()
    assert got["targets"] == ["avg_cost_usd=0.004", "@acme:spend_usd=50/1d"]
    assert second.get("/readyz").json()["recovery"]["budgets"] == "stored"
    assert got["report"]["tenants"]["acme"]["spend_usd"] == pytest.approx(before["tenants"]["acme"]["spend_usd"])
    assert got["report"]["global"]["targets"] == before["global"]["targets"]
    for tenant, target in (("acme", "spend_usd=1e-320/1w"), ("beta", "spend_usd=1e-320/1d")):
        said = [r.getMessage() for r in caplog.records if f"left out the stored target {target!r}" in r.getMessage()]
        assert len(said) == 1 and said[0].startswith(f"budgets.tenants.{tenant}: "), said
    assert "not loaded" not in caplog.text
    decision = _route(second, "acme")
    assert _cost_weight(second, decision["decision_id"]) == pytest.approx(
        got["report"]["tenants"]["acme"]["cost_weight"])

    second.__exit__(None, None, None)
    assert "1e-320/1w" in _stored_rows(tmp_path / "budgets.db")[BUDGETS_CONFIG]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bandit_router"):
        third = make_client()
    assert third.get("/v1/budgets").json()["targets"] == got["targets"]
    assert "left out the stored target 'spend_usd=1e-320/1d'" in caplog.text
    assert "stored the budget targets as loaded" not in caplog.text


def test_a_target_a_newer_version_stored_stays_stored_across_starts(
        make_client: Callable[..., TestClient], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A newer version (a downgrade, or replicas of two versions on one database) stored targets this one refuses:
    a period unit it lacks (`900/1mo`) and a target key it does not know (`max_request_usd`). A start paced the
    rest and rewrote both rows without them, so they were lost for good. Now the targets row stays as stored
    across starts of this version (each says what it leaves out), while the other targets pace; a PUT replaces
    it."""
    first = make_client()
    assert first.put("/v1/budgets", json={"avg_cost_usd": 0.004, "tenants": {"acme": {"spend_usd": "50/1d"}}}
                     ).status_code == 200
    first.__exit__(None, None, None)
    _store_as_before(tmp_path / "budgets.db", {
        '"spend_usd": "50/1d"': '"spend_usd": ["50/1d", "900/1mo"]',
        '"avg_cost_usd": 0.004': '"avg_cost_usd": 0.004, "max_request_usd": 0.25'})
    stored = _stored_rows(tmp_path / "budgets.db")[BUDGETS_CONFIG]
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            client = make_client()
        assert client.get("/v1/budgets").json()["targets"] == ["avg_cost_usd=0.004", "@acme:spend_usd=50/1d"]
        assert "left out the stored target 'spend_usd=900/1mo'" in caplog.text
        assert "left out the stored target 'max_request_usd=0.25'" in caplog.text
        _route(client, "acme")
        client.__exit__(None, None, None)
        assert _stored_rows(tmp_path / "budgets.db")[BUDGETS_CONFIG] == stored
    client = make_client()
    assert client.put("/v1/budgets", json={"avg_cost_usd": 0.005}).status_code == 200
    client.__exit__(None, None, None)
    assert "900/1mo" not in "".join(_stored_rows(tmp_path / "budgets.db").values())


def test_a_stored_target_with_a_period_in_capital_m_is_left_out_and_the_start_goes_on(
        make_client: Callable[..., TestClient], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`M` is refused now (4,000 USD a minute where a month was meant). A database holding a target written with it
    (by hand, or a version that reads `M` as months) must not stop a start, nor every start after it: it is left out
    with a warning saying why, the other targets pace, the row stays as stored; a PUT of it is a 422 naming it."""
    first = make_client()
    assert first.put("/v1/budgets", json={"avg_cost_usd": 0.004, "tenants": {"acme": {"spend_usd": "50/1d"}}}
                     ).status_code == 200
    put = first.put("/v1/budgets", json={"spend_usd": "4000/1M"})
    assert put.status_code == 422 and "M is ambiguous" in put.json()["message"], put.text
    first.__exit__(None, None, None)
    _store_as_before(tmp_path / "budgets.db", {'"spend_usd": "50/1d"': '"spend_usd": ["50/1d", "4000/1M"]'})
    with caplog.at_level(logging.WARNING, logger="bandit_router"):
        client = make_client()
    assert client.get("/readyz").status_code == 200
    got = client.get("/v1/budgets").json()
    assert got["targets"] == ["avg_cost_usd=0.004", "@acme:spend_usd=50/1d"]
    assert got["left_out"] == ["@acme:spend_usd=4000/1M"]
    assert "left out the stored target 'spend_usd=4000/1M'" in caplog.text and "M is ambiguous" in caplog.text
    _route(client, "acme")


def _started(store: Any) -> BudgetState:
    """A start on `store`: its budget state recovered (`recover` on a router that needs nothing else)."""
    state = BudgetState(store, BudgetPacer())
    state.recover(cast(Any, SimpleNamespace()))
    return state


def _week_spend(state: BudgetState, tenant: str) -> float | None:
    """The spend booked in the current period of `tenant`'s weekly spend target (None: it has none)."""
    return next((float(t["realized"]) for t in state.pacer.report()["tenants"][tenant]["targets"]
                 if t["target"].endswith("/1w")), None)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_refused_target_keeps_its_spend_through_a_start_of_a_version_that_refuses_it(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A newer version set `spend_usd=900/1w` for acme and booked 600 USD in its week; a version that refuses
    `/1w` (played by this code with `/1w` refused) started on the database: it kept the target's text, but its
    periodic save (every 5 s, and on stop) rewrote the state row from its pacer, which held no state for it, so the
    newer version's next start paced it from 0 USD spent. The refused target's state is stored again as stored."""
    db: Path | str = tmp_path / "versions.db" if backend == "sqlite" else str(request.getfixturevalue("pg_url"))
    store = open_store(db)
    store.prepare()
    try:
        newer = _started(store)
        with store.write() as tx:  # PUT /v1/budgets on the newer version
            newer.configure(tx, BudgetConfig.from_mapping({"tenants": {"acme": {"spend_usd": ["50/1d", "900/1w"]}}}))
        newer.pacer.spend(600.0, "acme")
        newer.save(force=True)
        real = budget_config.parse_target

        def older_parse(text: str, **kw: Any) -> Any:
            if text.strip().endswith("/1w"):
                raise InvalidInput(f"target {text!r}: unknown period '1w'")
            return real(text, **kw)

        with monkeypatch.context() as older_version:
            older_version.setattr(budget_config, "parse_target", older_parse)
            older = _started(store)
            assert older.pacer.config.describe() == ["@acme:spend_usd=50/1d"]
            older.pacer.spend(10.0, "acme")
            older.save(force=True)  # its periodic save
        with store.read() as reader:
            saved = json.loads(reader.get_meta(BUDGETS_STATE) or "{}")
        assert saved["tenants"]["acme"]["targets"]["spend_usd/1w"]["spend_usd"] == pytest.approx(600.0)
        assert saved["tenants"]["acme"]["targets"]["spend_usd/1d"]["spend_usd"] == pytest.approx(610.0)
        restarted = _started(store)  # the newer version again
        assert restarted.pacer.config.describe() == ["@acme:spend_usd=50/1d", "@acme:spend_usd=900/1w"]
        assert _week_spend(restarted, "acme") == pytest.approx(600.0)
    finally:
        store.close()


@pytest.mark.parametrize("setting", [True, {"per_request_usd": 0.25}])
def test_a_stored_setting_this_version_does_not_know_is_left_out_alone(
        tmp_path: Path, setting: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A newer version stored a setting this one does not know whose value is a boolean or a table (`"hard_cap":
    true`): both rows were refused whole ("must be a number or a string"), the start paced the file's `[budgets]`,
    and its first save wrote the file's state over the stored one (acme's 40 USD spent today gone). The setting is
    left out like a refused target, with a warning; the rest loads and the rows keep it."""
    store = open_store(tmp_path / "setting.db")
    store.prepare()
    try:
        newer = BudgetPacer(BudgetConfig.from_mapping({"avg_cost_usd": 0.004,
                                                       "tenants": {"acme": {"spend_usd": "50/1d"}}}))
        newer.spend(40.0, "acme")
        state = newer.state()
        state["config"]["hard_cap"] = setting
        with store.write() as tx:
            tx.set_meta(BUDGETS_STATE, json.dumps(state))
            tx.set_meta(BUDGETS_CONFIG, json.dumps(state["config"], sort_keys=True))
        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            started = BudgetState(store, BudgetPacer(BudgetConfig.from_mapping({"spend_usd": "100/1d"})))
            assert started.recover(cast(Any, SimpleNamespace())) == "stored"
        assert started.pacer.config.describe() == ["avg_cost_usd=0.004", "@acme:spend_usd=50/1d"]
        assert started.pacer.report()["tenants"]["acme"]["spend_usd"] == pytest.approx(40.0)
        assert f"left out the stored target 'hard_cap={json.dumps(setting)}'" in caplog.text
        assert "not loaded" not in caplog.text
        started.save(force=True)
        with store.read() as reader:
            saved = json.loads(reader.get_meta(BUDGETS_STATE) or "{}")
        assert saved["config"]["hard_cap"] == setting
        assert saved["tenants"]["acme"]["spend_usd"] == pytest.approx(40.0)
    finally:
        store.close()


def test_get_budgets_lists_the_stored_targets_this_version_leaves_out(
        tmp_path: Path, make_client: Callable[..., TestClient]) -> None:
    """GET /v1/budgets showed only the targets paced, so a stored target this version refuses (a newer version's
    `spend_usd=900/1mo`) was invisible and a GET-then-PUT of `budgets` dropped it unawares. `left_out` lists such
    targets (documented in the OpenAPI schema); a PUT replacing the targets empties it."""
    store = open_store(tmp_path / "budgets.db")
    store.prepare()
    try:
        with store.write() as tx:
            tx.set_meta(BUDGETS_CONFIG, json.dumps({"spend_usd": ["5/1d", "900/1mo"],
                                                    "tenants": {"acme": {"spend_usd": "9/1mo"}}}))
    finally:
        store.close()
    client = make_client()
    reply = client.get("/v1/budgets").json()
    assert reply["targets"] == ["spend_usd=5/1d"]
    assert reply["left_out"] == ["spend_usd=900/1mo", "@acme:spend_usd=9/1mo"]
    schema = client.get("/openapi.json").json()
    assert "left_out" in schema["components"]["schemas"]["BudgetsOut"]["properties"]
    put = client.put("/v1/budgets", json=reply["budgets"])
    assert put.status_code == 200 and put.json()["left_out"] == []


def test_no_refused_target_is_said_left_stored_when_a_put_replaced_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The state row holds targets with one this version refuses (`spend_usd=9/1mo`), the targets row a later PUT's
    targets without it (the PUT came after the last save). The start paces the PUT's targets, and said that stored
    targets it refuses are left stored until a PUT replaces them, which one already had (and the state's loading
    said the target was left out and stays stored). It says nothing of the kind now, and stores the rows as it
    loaded them (the refused target went with the PUT)."""
    store = open_store(tmp_path / "replaced.db")
    store.prepare()
    before_put = BudgetPacer(BudgetConfig.from_mapping({"spend_usd": ["5/1d", "9/1w"]}))
    try:
        with store.write() as tx:
            tx.set_meta(BUDGETS_STATE, json.dumps(before_put.state()).replace("/1w", "/1mo"))
            tx.set_meta(BUDGETS_CONFIG, json.dumps({"spend_usd": "6/1d"}, sort_keys=True))
        started = BudgetState(store, BudgetPacer())
        with caplog.at_level(logging.INFO, logger="bandit_router"):
            assert started.recover(cast(Any, SimpleNamespace())) == "stored"
        assert started.pacer.config.describe() == ["spend_usd=6/1d"]
        assert "left stored" not in caplog.text and "stored the budget targets as loaded" in caplog.text
        assert "left out the stored target" not in caplog.text  # the state's targets, which the PUT replaced
        with store.read() as reader:
            assert json.loads(reader.get_meta(BUDGETS_STATE) or "{}")["config"]["spend_usd"] == "6/1d"
    finally:
        store.close()


NEWER_FORMAT_ROW = '{"format": "bandit-router-budgets/2", "config": {"spend_usd": "10/1d"}}'


@pytest.mark.parametrize("row", ["{not json", "[1, 2]", '{"format": "bandit-router-budgets/1", "config": {}}'])
@pytest.mark.parametrize("targets_row", [False, True])
def test_a_stored_state_that_does_not_load_is_saved_over(
        tmp_path: Path, row: str, targets_row: bool, caplog: pytest.LogCaptureFixture) -> None:
    """A state row this start cannot load (not JSON, not an object, a damaged state) left the start without saving
    its state until a PUT, even when the stored targets row loaded and was paced: every restart paced from 0 spent,
    and the warning said "using the configuration". Such a row holds nothing any version loads: the state of what
    is paced (the targets row, else the configuration's) is saved over it, and the next start goes on from it."""
    store = open_store(tmp_path / "unloaded.db")
    store.prepare()
    try:
        with store.write() as tx:
            tx.set_meta(BUDGETS_STATE, row)
            if targets_row:
                tx.set_meta(BUDGETS_CONFIG, json.dumps(BudgetConfig.from_mapping({"spend_usd": "10/1d"}).to_mapping(),
                                                       sort_keys=True))
        file = BudgetConfig.from_mapping({"spend_usd": "5/1d"})
        started = BudgetState(store, BudgetPacer(file))
        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            started.recover(cast(Any, SimpleNamespace()))
        paced = "the stored targets" if targets_row else "the configuration's [budgets]"
        assert "stored budget state not loaded" in caplog.text and f"pacing {paced}" in caplog.text
        assert started.saving() == {"state_saved": True, "state_unsaved_why": None}
        started.pacer.spend(7.0)
        started.save(force=True)
        again = BudgetState(store, BudgetPacer(file))
        assert again.recover(cast(Any, SimpleNamespace())) == "stored"
        assert again.pacer.config.describe() == ["spend_usd=10/1d" if targets_row else "spend_usd=5/1d"]
        assert again.pacer.report()["global"]["spend_usd"] == pytest.approx(7.0)
    finally:
        store.close()


def test_a_start_on_a_stored_targets_row_alone_saves_its_state(tmp_path: Path) -> None:
    """No state row, a PUT's targets row, no `[budgets]` in the file: the start paced the targets row but never
    saved its state (only a loaded state row or the file's targets let it), so each restart paced from 0 spent."""
    store = open_store(tmp_path / "targets-only.db")
    store.prepare()
    try:
        with store.write() as tx:
            tx.set_meta(BUDGETS_CONFIG, json.dumps(BudgetConfig.from_mapping({"spend_usd": "10/1d"}).to_mapping(),
                                                   sort_keys=True))
        for spent in (0.0, 7.0):
            started = BudgetState(store, BudgetPacer())
            assert started.recover(cast(Any, SimpleNamespace())) == "stored"
            assert started.pacer.report()["global"]["spend_usd"] == pytest.approx(spent)
            started.pacer.spend(7.0)
            started.save(force=True)
    finally:
        store.close()


def test_another_versions_state_row_is_not_saved_over_and_that_is_shown(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A state row in another version's format (a newer one's) is not saved over until a PUT replaces it, so the
    state of what is paced is not saved meanwhile: `saving` says so (GET /v1/budgets, /readyz), and each save warns
    at most once a minute."""
    store = open_store(tmp_path / "newer.db")
    store.prepare()
    try:
        with store.write() as tx:
            tx.set_meta(BUDGETS_STATE, NEWER_FORMAT_ROW)
        started = BudgetState(store, BudgetPacer(BudgetConfig.from_mapping({"spend_usd": "5/1d"})))
        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            assert started.recover(cast(Any, SimpleNamespace())) == "config"
            for _ in range(3):
                started.pacer.spend(1.0)
                started.save(force=True)
        saving = started.saving()
        assert saving["state_saved"] is False and "'bandit-router-budgets/2'" in saving["state_unsaved_why"]
        assert "pacing the configuration's [budgets], without saving the state" in caplog.text
        assert caplog.text.count("the budget state is not saved") == 1
        with store.read() as reader:
            assert reader.get_meta(BUDGETS_STATE) == NEWER_FORMAT_ROW
        with store.write() as tx:  # a PUT replaces it
            started.configure(tx, BudgetConfig.from_mapping({"spend_usd": "7/1d"}))
        assert started.saving()["state_saved"] is True
        with store.read() as reader:
            assert json.loads(reader.get_meta(BUDGETS_STATE) or "{}")["config"]["spend_usd"] == "7/1d"
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("row", ["{not json", NEWER_FORMAT_ROW])
def test_a_real_server_on_a_state_row_that_does_not_load(tmp_path: Path, row: str) -> None:
    """serve on a state row that does not load and a PUT's targets row: it paced the targets row, saved nothing
    (not even on stop), and said nothing of it: two runs each spent what a target allowed a day. A damaged row is
    saved over, so the second run goes on from the first's spend; another version's row is not, and GET
    /v1/budgets and /readyz say so."""
    db = tmp_path / "router.db"
    store = open_store(db)
    store.prepare()
    try:
        with store.write() as tx:
            tx.set_meta(BUDGETS_STATE, row)
            tx.set_meta(BUDGETS_CONFIG, json.dumps({"tenants": {"acme": {"spend_usd": "10/1d"}}}))
    finally:
        store.close()
    spent: list[float] = []
    for run in ("first", "second"):
        server = ServeProcess(tmp_path, _serve_command(), ["--db", str(db)], env={"BANDIT_ROUTER_SEED": "5"},
                              log_name=run)
        try:
            server.wait_ready()
            with httpx.Client(base_url=server.url) as http:
                budgets = http.get("/v1/budgets").json()
                ready = http.get("/readyz").json()
                assert budgets["state_saved"] is (row != NEWER_FORMAT_ROW)
                assert ready["budget_state"] == {key: budgets[key] for key in ("state_saved", "state_unsaved_why")}
                assert budgets["report"]["tenants"]["acme"]["spend_usd"] == pytest.approx(spent[-1] if spent else 0.0)
                for i in range(5):
                    decision = http.post("/v1/route", json={"prompt": f"Sort list {i}", "context": {"tenant": "acme"}})
                    http.post("/v1/feedback", json={"decision_id": decision.json()["decision_id"], "quality": 0.7,
                                                    "cost_usd": 0.3})
                spent.append(http.get("/v1/budgets").json()["report"]["tenants"]["acme"]["spend_usd"])
            assert server.terminate() in (0, -15)
        finally:
            server.stop()
        if row == NEWER_FORMAT_ROW:
            spent.pop()  # nothing saved: the next run starts from none
    assert spent == ([] if row == NEWER_FORMAT_ROW else [pytest.approx(1.5), pytest.approx(3.0)])


@pytest.mark.parametrize("row", [
    {BUDGETS_STATE: '{"format": "bandit-router-budgets/2", "config": {}}'},  # another version's format
    {BUDGETS_CONFIG: '{"spend_usd": '},  # a damaged targets row
    {BUDGETS_STATE: json.dumps({**BudgetPacer(BudgetConfig.from_mapping({"spend_usd": "5/1d"})).state(),
                                "global": {"requests": math.inf, "spend_usd": 0.0, "last_time": None,
                                           "gap_s": None, "targets": {}}})},  # Infinity requests: not a traceback
])
def test_serve_checks_the_files_budgets_when_the_stored_rows_do_not_load(tmp_path: Path, row: dict[str, str]) -> None:
    """The start checks the file's `[budgets]` only while no budget targets are stored, since stored ones replace
    it; but it skipped the check whenever a budget row was there, and a row that does not load leaves the start on
    the file's `[budgets]`: a typo'd `fallback_model` started unchecked and was the pacer's fallback. A stored row
    counts only when it loads (as the start loads it), so `serve` refuses the typo: one line, exit status 2. A
    damaged state row holding `Infinity` where an integer is stored raised OverflowError, which neither loading
    caught: `serve` (and `check --config`) died with a traceback; it is a row that does not load now."""
    db = tmp_path / "router.db"
    store = open_store(db)
    store.prepare()
    try:
        with store.write() as tx:
            for key, value in row.items():
                tx.set_meta(key, value)
    finally:
        store.close()
    config = tmp_path / "br.toml"
    config.write_text(f'db = "{db}"\n[budgets]\nspend_usd = "5/1d"\nfallback_model = "gpt-4o-minii"\n')
    server = ServeProcess(tmp_path, _serve_command(), ["--config", str(config)])
    try:
        with pytest.raises(NotReady) as refused:
            server.wait_ready()
    finally:
        server.stop()
    assert "exited 2" in str(refused.value) and (
        "bandit-router serve: budgets: fallback_model 'gpt-4o-minii' is not in the catalog") in str(refused.value)


def test_checking_whether_stored_budgets_load_says_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The start's check loads the stored rows to learn whether they replace the file's `[budgets]`; what their
    loading leaves out is said once, by the start that loads them (`BudgetState.recover`), not by the check."""
    store = open_store(tmp_path / "quiet.db")
    store.prepare()
    try:
        stored = BudgetPacer(BudgetConfig.from_mapping({"spend_usd": ["5/1d", "9/1w"]}))
        with store.write() as tx:
            tx.set_meta(BUDGETS_STATE, json.dumps(stored.state()).replace("/1w", "/1mo"))
        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            assert stored_budgets(store)
        assert caplog.text == ""
        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            _started(store)
        assert caplog.text.count("left out the stored target 'spend_usd=9/1mo'") == 1
    finally:
        store.close()


def test_a_start_that_stores_the_targets_as_loaded_leaves_a_state_row_it_could_not_load(tmp_path: Path) -> None:
    """A start whose targets row loaded with a normalisation (tenants "5" and "5.0" stored apart) stores the rows as
    loaded; it also wrote its pacer's state over a state row it had not loaded (another format). It writes the
    targets row alone then."""
    db = tmp_path / "normalised.db"
    _rows_stored_with_tenants_5_and_5_0_apart(db)
    row = '{"format": "bandit-router-budgets/2", "config": {}}'
    store = open_store(db)
    try:
        with store.write() as tx:
            tx.set_meta(BUDGETS_STATE, row)
        started = _started(store)
        assert started.pacer.config.describe() == ["avg_cost_usd=0.004", "@5:avg_cost_usd=0.001"]
        with store.read() as reader:
            assert reader.get_meta(BUDGETS_STATE) == row
            assert "5.0" not in (reader.get_meta(BUDGETS_CONFIG) or "")  # stored as loaded
    finally:
        store.close()


def _budget_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and r.name in ("bandit_router.budgets", "bandit_router.log")]


def test_put_holds_the_limits_its_openapi_document_states(make_client: Callable[..., TestClient]) -> None:
    """The OpenAPI document of PUT /v1/budgets says at most 1,024 tenants, 16 spend targets and 256 shares, and the
    PUT took any number (1,025 tenants, or 17 spend targets, answered 200 and were stored). Past a limit it is a 422
    naming the limit, nothing changes; at the limit it is taken. A scope's shares count its `share` table and its
    `share:` keys."""
    client = make_client()
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert schema["BudgetsIn"]["properties"]["tenants"]["maxProperties"] == MAX_TENANTS == 1024
    assert schema["BudgetScopeIn"]["properties"]["spend_usd"]["anyOf"][1]["maxItems"] == MAX_SPENDS == 16
    assert schema["BudgetScopeIn"]["properties"]["share"]["maxProperties"] == MAX_SHARES == 256
    assert client.put("/v1/budgets", json={"avg_cost_usd": 0.005}).status_code == 200
    shares = {"share": {f"m{i}": 0.5 for i in range(200)}, **{f"share:n{i}": 0.5 for i in range(57)}}
    for body, message in (
        ({"tenants": {f"t{i}": {"avg_cost_usd": 1} for i in range(1025)}},
         "budgets: tenants: 1025 tenants; at most 1024 may have targets"),
        ({"spend_usd": [f"1/{i + 1}d" for i in range(17)]}, "budgets: 17 spend_usd targets; at most 16 per scope"),
        ({"tenants": {"acme": shares}}, "budgets: tenants.acme: 257 share targets; at most 256 per scope"),
    ):
        reply = client.put("/v1/budgets", json=body, headers=ADMIN)
        assert reply.status_code == 422, reply.text
        assert reply.json() == {"error": "invalid_input", "field": "budgets", "message": message}
    assert client.get("/v1/budgets").json()["targets"] == ["avg_cost_usd=0.005"]
    at_most = {"spend_usd": [f"1/{i + 1}d" for i in range(16)],
               "tenants": {f"t{i}": {"avg_cost_usd": 1} for i in range(1024)}}
    reply = client.put("/v1/budgets", json=at_most, headers=ADMIN)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["targets"]) == 16 + 1024
    table = {"share": {f"m{i}": 0.5 for i in range(200)}, **{f"share:n{i}": 0.5 for i in range(56)}}
    assert len(BudgetConfig.from_mapping({"tenants": {"acme": table}}).tenants["acme"]) == 256


@pytest.mark.parametrize(("body", "key"), [
    (b'{"avg_cost_usd": 0.001, "avg_cost_usd": 0.002}', "avg_cost_usd"),
    (b'{"tenants": {"acme": {"spend_usd": "1/1d"}, "acme": {"spend_usd": "9/1d"}}}', "acme"),
    (b'{"share": {"gpt-4o": 0.3, "gpt-4o": 0.9}}', "gpt-4o"),
])
def test_a_key_given_twice_is_a_422_naming_it(make_client: Callable[..., TestClient], body: bytes, key: str) -> None:
    """`json.loads` kept the last of a repeated key: the PUT answered 200 with a target nobody read twice. The
    environment's `BANDIT_ROUTER_BUDGETS` refuses that already; the PUT refuses it the same way, changing nothing."""
    client = make_client()
    assert client.put("/v1/budgets", json={"avg_cost_usd": 0.005}).status_code == 200
    reply = client.put("/v1/budgets", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert reply.json() == {"error": "invalid_input", "field": "budgets",
                            "message": f"budgets: gives the key {key!r} twice"}
    assert client.get("/v1/budgets").json()["targets"] == ["avg_cost_usd=0.005"]


def test_a_large_body_with_a_key_given_twice_is_a_422_naming_it(make_client: Callable[..., TestClient]) -> None:
    """The message naming the repeated key was built comparing each key with every key before it, O(n²) on the
    event loop: 20,000 tenants with one given twice held every request for about 40 s. It is one pass now."""
    client = make_client()
    tables = ", ".join(f'"t{i}": {{"avg_cost_usd": 1}}' for i in range(20_000))
    body = '{"tenants": {' + tables + ', "t123": {"avg_cost_usd": 2}}}'
    reply = client.put("/v1/budgets", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert reply.json()["message"] == "budgets: gives the key 't123' twice"
    assert client.get("/v1/budgets").json()["targets"] == []


def test_naming_a_repeated_key_compares_each_key_a_bounded_number_of_times() -> None:
    """The work `once_each` does, counted as key comparisons rather than timed: with n keys it is a few times n
    (one pass with a set), where comparing each key with every key before it was n²/2."""
    comparisons = [0]

    class Key(str):
        def __eq__(self, other: object) -> bool:
            comparisons[0] += 1
            return str.__eq__(self, other)

        __hash__ = str.__hash__

    n = 2000
    pairs = [(Key(f"k{i}"), i) for i in range(n)] + [(Key("k7"), -1), (Key("k1999"), -2)]
    comparisons[0] = 0
    with pytest.raises(DuplicateKey, match=r"^gives the key 'k1999', 'k7' twice$"):
        once_each(pairs)
    assert comparisons[0] <= 10 * n, comparisons[0]


@pytest.mark.parametrize("body", [
    '{"spend_usd": "1e308/0.001"}', '{"tenants": {"acme": {"spend_usd": "1.5e308/0.5"}}}',
    '{"min_cost_weight": 1%s}' % ("0" * 400), '{"guard_max_usd_per_mtok": 1%s}' % ("0" * 400),
])
def test_budgets_that_overflow_a_float_are_a_422_and_routing_goes_on(make_client: Callable[..., TestClient],
                                                                     body: str) -> None:
    """A spend target whose rate B/P overflows was stored and then every request was a 500 (its λ became NaN),
    GET /v1/budgets and /v1/stats too; an integer too large for a float was a 500 on the PUT itself."""
    client = make_client()
    reply = client.put("/v1/budgets", content=body.encode(), headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"] == "invalid_input"
    for _ in range(3):
        _route(client, "acme")
    assert client.get("/v1/budgets").status_code == 200 and client.get("/v1/stats").status_code == 200


@pytest.mark.parametrize("body", ['{"spend_usd": "1e-320/1d"}', '{"tenants": {"acme": {"spend_usd": "5e-324/1s"}}}'])
def test_a_spend_target_too_small_for_a_float_is_a_422_and_routing_goes_on(make_client: Callable[..., TestClient],
                                                                           body: str) -> None:
    """A spend amount whose rate B/P (or B·10⁻⁶) underflows to 0 was stored, and the next request was a 500: the
    pacer divided by its request scale max(r·τ̂, B·10⁻⁶), which was 0."""
    client = make_client()
    reply = client.put("/v1/budgets", content=body.encode(), headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert "too small for a float" in reply.json()["message"]
    assert client.get("/v1/budgets").json()["targets"] == []
    for _ in range(3):
        _route(client, "acme")


def test_a_huge_spend_target_keeps_every_read_working(make_client: Callable[..., TestClient]) -> None:
    """A target that starts mid-period has the pro rata limit B·(rest of the period)/P, computed as B·rest first:
    1.7e308 USD a week overflowed there, and GET /v1/budgets and /v1/stats were 500s (inf is no JSON)."""
    client = make_client()
    assert client.put("/v1/budgets", json={"tenants": {"acme": {"spend_usd": "1.7e308/1w"}}}).status_code == 200
    for _ in range(3):
        _route(client, "acme")
    reply = client.get("/v1/budgets")
    assert reply.status_code == 200, reply.text
    target = reply.json()["report"]["tenants"]["acme"]["targets"][0]
    assert 0 < target["limit_usd"] <= 1.7e308 and target["holds"]
    assert client.get("/v1/stats").status_code == 200


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_process_started_beside_others_books_what_they_stored_since_the_last_save(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """Drilled with `serve --workers 2` on PostgreSQL: a worker killed under load, its replacement loaded the state
    row saved up to 5 s before by either worker and booked only what was stored after its start. Its pacer then
    counted 1,116 of 1,161 decisions ($0.554 of $0.574), its saves replaced the survivor's exact state, and after a
    clean restart every worker paced from the short one. The saved state now says where in the log it stands, and a
    start books (and corrects by their feedback) the decisions stored since then."""
    db: Path | str = tmp_path / "workers.db" if backend == "sqlite" else str(request.getfixturevalue("pg_url"))
    settings = {"db": db, "budgets": BudgetConfig.from_mapping({"spend_usd": "100/1d"}), "workers": 2}
    survivor = start_client(Settings(seed=1, **settings))
    killed = start_client(Settings(seed=2, **settings))
    replacement = None
    try:
        def rated(client: TestClient, i: int) -> None:
            decision = _route(client)
            reply = client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.5,
                                                      "cost_usd": 0.001 * (i % 7 + 1)})
            assert reply.status_code == 200, reply.text

        for i in range(10):
            rated(survivor if i % 2 else killed, i)
        victim: Any = killed.app.state.engine  # type: ignore[attr-defined]
        victim.budgets.save(force=True)
        for i in range(10, 25):  # stored after the last save: the replacement must book them from the log
            rated(survivor, i)
        victim.budgets.save = lambda **_: None  # killed: nothing saved at its end
        killed.__exit__(None, None, None)
        replacement = start_client(Settings(seed=3, **settings))
        store = open_store(db)
        with store.read() as reader:
            stored, spent = len(reader.decisions_after(0, 1000)), reader.stats().models
        store.close()
        real = sum(m.spend_usd or 0.0 for m in spent.values())
        deadline = time.monotonic() + 5
        while True:  # each process books the others' decisions every 50 ms
            reports = [c.get("/v1/budgets").json()["report"]["global"] for c in (survivor, replacement)]
            if all(r["requests"] == stored for r in reports) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [r["requests"] for r in reports] == [stored, stored] == [25, 25]
        assert [r["spend_usd"] for r in reports] == [pytest.approx(real, abs=1e-9)] * 2
    finally:
        _close(survivor, killed, replacement)


def test_a_tenant_stored_as_an_inexact_float_neither_stops_a_start_nor_a_follower(tmp_path: Path) -> None:
    """A decision whose tenant a version before `tenant_of` refused floats beyond 2^53 stored as 1e17 (tenant
    "1e+17"): a process booking it from the log raised `InvalidInput` in `BudgetPacer._scopes`, so a follower
    retried the same row forever (booking no other process's decision after it) and a start from a save before it
    never became ready. The pacer reads it by its stored text (`types.logged_tenant`), as `evaluate` does. Found
    reviewing eval24."""
    import dataclasses
    from types import MappingProxyType

    db = tmp_path / "workers.db"
    budgets = BudgetConfig.from_mapping({"spend_usd": "100/1d", "tenants": {"1e+17": {"spend_usd": "50/1d"}}})
    settings = {"db": db, "budgets": budgets, "workers": 2}
    first = start_client(Settings(seed=1, **settings))
    second = None
    try:
        engine: Any = first.app.state.engine  # type: ignore[attr-defined]
        engine.budgets.save(force=True)
        engine.budgets.save = lambda **_: None  # nothing saved after: a start books what follows from the log
        made = _route(first, "x")
        store = open_store(db)
        try:  # the row as the old version wrote it, by another process: the float in the context, its text stored
            with store.read() as reader:
                stored = reader.decision(made["decision_id"])
            assert stored is not None
            context = dataclasses.replace(stored.decision.context, attributes=MappingProxyType({"tenant": 1e17}))
            old = dataclasses.replace(stored.decision, decision_id="old-" + made["decision_id"], context=context)
            with store.write() as tx:
                assert tx.insert_decisions([(old, None, "1e+17")]) == [True]
        finally:
            store.close()
        _route(first)  # the follower must go on past the old row (it reads the log every 50 ms)

        def report(client: TestClient) -> dict[str, Any]:
            return dict(client.get("/v1/budgets").json()["report"])

        deadline = time.monotonic() + 3
        while report(first)["global"]["requests"] != 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert report(first)["global"]["requests"] == 3
        assert report(first)["tenants"]["1e+17"]["requests"] == 1
        first.__exit__(None, None, None)
        second = start_client(Settings(seed=2, **settings))  # books the three stored since the save
        deadline = time.monotonic() + 3
        while report(second)["global"]["requests"] != 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert report(second)["global"]["requests"] == 3
        assert report(second)["tenants"]["1e+17"]["requests"] == 1
    finally:
        _close(first, second)


@pytest.mark.parametrize("path", ["gateway_route", "caller_named"])
def test_a_save_between_a_booking_and_its_id_leaves_a_later_start_counting_it_once(tmp_path: Path, path: str) -> None:
    """Review of 63fada9: the saved state's marks list this process's decisions booked after its log position
    (`own`), which a start skips. The gateway's routed decision was booked on the event loop (`Router.route_many`) and
    noted as this process's a loop iteration later (`Engine.route`), and a caller-named model's noted before it was
    stored and booked after (`Engine.store_decision`): a save in between stored the spend without the id (the
    replacement booked the decision again: 2 requests for 1) or the id without the spend (it never booked it: 0).
    Both are booked with their id on the writer thread as they are committed now, so no save falls in between."""
    from bandit_router.types import Request as CoreRequest

    db = tmp_path / "workers.db"
    settings = {"db": db, "budgets": BudgetConfig.from_mapping({"spend_usd": "100/1d"}), "workers": 2}
    killed = start_client(Settings(seed=2, **settings))
    replacement = None
    try:
        engine: Any = killed.app.state.engine  # type: ignore[attr-defined]
        request = CoreRequest(prompt="Sort a list in Python")
        if path == "gateway_route":  # the writer's save lands between the booking and `mine`
            mine = engine.budgets.mine
            engine.budgets.mine = lambda decision_id: (engine.budgets.save(force=True), mine(decision_id))
            killed.portal.call(engine.route, request)
        else:  # ... right after the commit, before the event loop hears of it
            stored = engine.writer.observer.decision_stored
            engine.writer.observer.decision_stored = lambda d: (engine.budgets.save(force=True), stored(d))
            decision = killed.app.state.gateway.caller_decision(request, "gpt-4o-mini")  # type: ignore[attr-defined]
            killed.portal.call(engine.store_decision, decision, request)
        engine.budgets.save = lambda **_: None  # killed: nothing saved at its end
        killed.__exit__(None, None, None)
        replacement = start_client(Settings(seed=3, **settings))

        def requests() -> int:
            return int(replacement.get("/v1/budgets").json()["report"]["global"]["requests"])

        deadline = time.monotonic() + 2
        while requests() != 1 and time.monotonic() < deadline:  # the log is read every 50 ms
            time.sleep(0.05)
        time.sleep(0.2)
        assert requests() == 1
    finally:
        _close(killed, replacement)


def test_a_route_without_an_id_is_given_one_without_checking_the_request_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of b524cb4: `Engine.route` gives a request without an id a new one (booked with it as it is stored),
    by `dataclasses.replace`, which made the request anew: every message and the context checked again, 7 µs for a
    prompt and 18 µs for 50 messages for each request the gateway routes (a route: 110–260 µs). It copies them."""
    from bandit_router.types import Request as CoreRequest

    client = start_client(Settings(seed=2, db=tmp_path / "log.db"))
    try:
        engine: Any = client.app.state.engine  # type: ignore[attr-defined]
        request = CoreRequest(messages=[{"role": "user", "content": f"turn {i}"} for i in range(3)],
                              context={"tenant": "acme"})
        checks = 0
        post_init = CoreRequest.__post_init__

        def counted(self: Any) -> None:
            nonlocal checks
            checks += 1
            post_init(self)

        monkeypatch.setattr(CoreRequest, "__post_init__", counted)
        first, second = (client.portal.call(engine.route, request) for _ in range(2))  # type: ignore[union-attr]
        assert checks == 0
        assert request.decision_id is None and first.decision_id != second.decision_id
        stored = client.get(f"/v1/decisions/{first.decision_id}").json()
        assert stored["decision_id"] == first.decision_id and first.context.attributes["tenant"] == "acme", stored
    finally:
        client.__exit__(None, None, None)


def test_a_start_in_the_next_budget_period_books_what_was_stored_since_the_save_in_the_period_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of 63fada9: a start books the decisions stored since the state it loads was saved (its marks), and it
    booked them at its own time: a state saved on the day before, a start the next day (a server killed before
    midnight and started after it, a worker replaced in the first seconds of an hour's target) counted the day
    before's last decisions in the new day's spend (here all 10, $0.01, where the day holds one request). They are
    booked at the time they were made, in the period they were made in: the new day counts its own requests."""
    db = tmp_path / "workers.db"
    settings = {"db": db, "budgets": BudgetConfig.from_mapping({"spend_usd": "100/1d"}), "workers": 2}
    killed = start_client(Settings(seed=2, **settings))
    replacement = None
    try:
        engine: Any = killed.app.state.engine  # type: ignore[attr-defined]
        engine.budgets.save(force=True)
        for _ in range(10):  # stored after the last save, the day before
            _route(killed)
        day_before = killed.get("/v1/budgets").json()["report"]["global"]["spend_usd"]
        engine.budgets.save = lambda **_: None  # killed: nothing saved at its end
        killed.__exit__(None, None, None)
        monkeypatch.setitem(BudgetPacer.__init__.__kwdefaults__, "clock", lambda: time.time() + 86_400)
        replacement = start_client(Settings(seed=3, **settings))
        _route(replacement)  # the new day's first request
        deadline = time.monotonic() + 2
        while replacement.get("/v1/budgets").json()["report"]["global"]["requests"] != 11:
            assert time.monotonic() < deadline, "the replacement did not book the 11 stored decisions"
            time.sleep(0.05)
        store = open_store(db)
        with store.read() as reader:
            ((_, stored),) = reader.decisions_after(10, 10)
        store.close()
        assert stored is not None
        decision = stored.decision
        booked = decision.expected_cost_usd[decision.models.index(decision.model)]
        target = replacement.app.state.engine.pacer.state()["global"]["targets"]["spend_usd/1d"]  # type: ignore[attr-defined]
        assert target["spend_usd"] == pytest.approx(booked, abs=1e-12)  # the new day's: its own request
        assert target["left_usd"] == pytest.approx(day_before, abs=1e-12)  # the day before's: its 10
    finally:
        _close(killed, replacement)


def test_a_start_corrects_the_caller_named_decisions_the_saved_state_booked_when_their_call_is_recorded(
        tmp_path: Path) -> None:
    """Review of 63fada9: a caller-named model's decision is booked at its expected cost when stored and corrected
    by its call record when the call ends (a stream: as long as it streams). A process started from a state saved
    in between (the decision before its marks, the call recorded after) never read that record: its spend kept the
    expected cost ($0.00015 here, for a call that cost $0.05), for every call in flight at the save. The marks
    list such decisions (`awaiting`) and a start corrects each by its call record, now or once it is stored."""
    from bandit_router.store import CallRecord
    from bandit_router.types import Request as CoreRequest

    db = tmp_path / "workers.db"
    settings = {"db": db, "budgets": BudgetConfig.from_mapping({"spend_usd": "100/1d"}), "workers": 2}
    killed = start_client(Settings(seed=2, **settings))
    replacement = None
    try:
        engine: Any = killed.app.state.engine  # type: ignore[attr-defined]
        request = CoreRequest(prompt="Sort a list in Python")
        decision = killed.app.state.gateway.caller_decision(request, "gpt-4o-mini")  # type: ignore[attr-defined]
        killed.portal.call(engine.store_decision, decision, request)
        deadline = time.monotonic() + 2
        while (engine.budgets._position or 0) < 1:  # read back from the log: before the marks
            assert time.monotonic() < deadline
            time.sleep(0.02)
        engine.budgets.save(force=True)
        record = CallRecord(decision.decision_id, decision.decision_id, 1, decision.model, False, True, "ok", 200, 7,
                            900, "upstream", 0.05, 0.1, 2.0, None, time.time())
        killed.portal.call(engine.record_call, record, None, None, decision)
        engine.budgets.save = lambda **_: None  # killed: nothing saved at its end
        killed.__exit__(None, None, None)
        replacement = start_client(Settings(seed=3, **settings))
        deadline = time.monotonic() + 2
        while (spent := replacement.get("/v1/budgets").json()["report"]["global"]["spend_usd"]) < 0.05:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert spent == pytest.approx(0.05, abs=1e-12)
    finally:
        _close(killed, replacement)


def _close(*clients: Any) -> None:
    """Stop each test client started (None: not started), whatever a stop before it raised."""
    for client in clients:
        if client is not None:
            with contextlib.suppress(Exception):
                client.__exit__(None, None, None)
