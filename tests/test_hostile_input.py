"""Hostile input at the service's edges (issue 11): one name grammar for every label, key and path; `/metrics`
that cannot fail; model names with `/`; JSON bodies only as `application/json`; `Host` names of a loopback-bound
service; API keys only in the `Authorization` header."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*install `httpx2`.*")
    from fastapi.testclient import TestClient

from service_client import client_factory, start_client

from bandit_router.budgets import BudgetConfig
from bandit_router.catalog import ModelSpec
from bandit_router.config import Secrets, Settings
from bandit_router.errors import CatalogError, InvalidInput
from bandit_router.names import check_name, is_name, safe_text
from bandit_router.service.metrics import Metrics
from bandit_router.service.redact import redact_query
from bandit_router.store.location import DatabaseURL

JSON = {"content-type": "application/json"}
ADMIN_KEY = "admin-key-0123456789abcdef"
SLASHED = "meta-llama/Llama-3.1-8B"
SPEC = {"name": SLASHED, "input_usd_per_mtok": 0.18, "output_usd_per_mtok": 0.18}


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    yield from client_factory(tmp_path / "hostile.db", seed=3)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


# -- the name grammar -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["gpt-4o-mini", SLASHED, "openrouter/anthropic/claude-3.5", "acme", "tier", "名前", "a.b",
     "x" * 128],
)
def test_names_that_follow_the_grammar(name: str) -> None:
    assert is_name(name)
    assert check_name(name, "model") == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("x" * 129, "at most 128"),
        ("\ud800", "U\\+D800"),
        ("a\udc80b", "U\\+DC80"),
        ("a\x00b", "U\\+0000"),
        ("a\nb", "U\\+000A"),
        ("a\x7fb", "U\\+007F"),
        ("a\u200bb", "U\\+200B"),
        ("a b", "no spaces"),
        ("a\\b", "U\\+005C"),
        ("..", "`.` or `..`"),
        (".", "`.` or `..`"),
        ("../../etc/passwd", "segment"),
        ("a/../b", "segment"),
        ("a/./b", "segment"),
        ("/abs", "segment"),
        ("a//b", "segment"),
        ("a/", "segment"),
    ],
)
def test_names_outside_the_grammar_are_refused_with_the_reason(name: str, problem: str) -> None:
    assert not is_name(name)
    with pytest.raises(InvalidInput, match=problem):
        check_name(name, "tenant")


def test_every_kind_of_name_uses_the_grammar() -> None:
    with pytest.raises(CatalogError, match="segment"):
        ModelSpec("../../etc/passwd", 1, 1)
    with pytest.raises(CatalogError, match="tag value"):
        ModelSpec("m", 1, 1, tags={"tier": "\udc80"})
    with pytest.raises(InvalidInput, match="tenant"):
        BudgetConfig.from_mapping({"tenants": {"\ud800": {"spend_usd": "50/1d"}}})
    with pytest.raises(InvalidInput, match="tag key"):
        BudgetConfig.from_mapping({"share:\udc80=0.5": 1})
    with pytest.raises(InvalidInput, match="model name"):
        BudgetConfig.from_mapping({"share": {"a\x00b": 0.5}})
    assert ModelSpec(SLASHED, 1, 1).name == SLASHED


# -- defect 1: /metrics after a budgets PUT with a surrogate ------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    ['{"tenants": {"\\ud800": {"spend_usd": "50/1d"}}}', '{"share:\\udc80=0.5": 1}',
     '{"share": {"\\udc80": 0.5}}', '{"tenants": {"a\\u0000b": {"spend_usd": "50/1d"}}}',
     '{"tenants": {"../x": {"spend_usd": "50/1d"}}}'],
)
def test_budgets_put_refuses_bad_names_and_metrics_keep_working(client: TestClient, body: str) -> None:
    reply = client.put("/v1/budgets", content=body.encode(), headers=JSON)
    assert reply.status_code == 422, reply.text
    assert reply.json()["field"] == "budgets"
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")


def test_metrics_export_cannot_fail_on_a_stored_bad_name() -> None:
    """A name stored by an older version (here: handed straight to the collectors) still exports."""
    metrics = Metrics()
    scope = {"spend_usd": 1.0, "cost_weight": 2.0,
             "targets": [{"target": "share:\udc80", "value": 0.5, "realized": 0.1}]}
    metrics.bind_budgets(lambda: {"global": scope, "tenants": {"\ud800": scope}})
    metrics.feedback_stored("m\udfff", "applied", 0.5, 0.001, learned=True)
    metrics.request("/v1/\udc80", 200)
    text = metrics.render().decode("utf-8")
    assert 'tenant="\\\\ud800"' in text
    assert "m\\\\udfff" in text
    assert safe_text("ok") == "ok"


# -- defect 2: model names with `/` ---------------------------------------------------------------------------------
def test_a_model_with_a_slash_is_added_routed_learned_and_retired(client: TestClient) -> None:
    assert client.post("/v1/models", json=SPEC).status_code == 201
    decision = client.post("/v1/route", json={"prompt": "hi", "models": [SLASHED]}).json()
    assert decision["model"] == SLASHED
    feedback = client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.7})
    assert feedback.json()["status"] == "applied"
    assert client.post("/v1/budgets", json={}).status_code == 405
    assert client.put("/v1/budgets", json={"share": {SLASHED: 0.5}}).status_code == 200
    reply = client.delete(f"/v1/models/{SLASHED}")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"retired": SLASHED}
    models = client.get("/v1/models").json()
    assert SLASHED in models["retired"]
    assert SLASHED not in [m["name"] for m in models["models"]]


def test_a_model_with_a_slash_is_retired_by_its_percent_encoded_name(client: TestClient) -> None:
    assert client.post("/v1/models", json={**SPEC, "name": "together/llama-3"}).status_code == 201
    reply = client.delete("/v1/models/together%2Fllama-3")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"retired": "together/llama-3"}
    assert client.delete("/v1/models/together%2Fllama-3").status_code == 404


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/../b", "/abs", "a//b", "a/", ".", ".."])
def test_path_like_model_names_are_refused(client: TestClient, name: str) -> None:
    reply = client.post("/v1/models", json={**SPEC, "name": name})
    assert reply.status_code == 422, reply.text
    assert reply.json()["field"] == "name"
    assert name not in [m["name"] for m in client.get("/v1/models").json()["models"]]


def test_retiring_a_path_like_name_is_a_422_not_a_404(client: TestClient) -> None:
    for path in ("..%2F..%2Fetc%2Fpasswd", "a%2F..%2Fb", "a%2F%2Fb"):
        reply = client.delete(f"/v1/models/{path}")
        assert reply.status_code == 422, reply.text
        assert reply.json()["field"].endswith("name")


def test_a_name_with_a_trailing_line_feed_retires_nothing(client: TestClient) -> None:
    """`/v1/models/gpt-4o%0A` is not `gpt-4o` (the path route's regex ends with `$`, which matches before a final
    line feed, so the name it read had lost it): a 422, and gpt-4o stays active."""
    reply = client.delete("/v1/models/gpt-4o%0A")
    assert reply.status_code == 422, reply.text
    assert reply.json()["field"].endswith("name")
    assert "gpt-4o" in [m["name"] for m in client.get("/v1/models").json()["models"]]


@pytest.mark.parametrize("path", ["/v1/models/gpt-4o%0A", "/v1/models/gpt%0A4o", "/v1/models/gpt-4o%0D%0A",
                                  "/v1/models/%00gpt-4o", "/v1/models/gpt-4o%7F", "/v1/models/gpt-4o%C2%85",
                                  "/v1/models/meta-llama%2F%0A", "/v1/decisions/abc%0A", "/v1/decisions/a%09b"])
def test_a_control_character_in_a_path_parameter_is_a_422_naming_it(client: TestClient, path: str) -> None:
    """Refused by the route class (`service/paths.py`) for every route with path parameters: a line feed inside a
    model name matched no route (a 404), and one at its end was read off by the route's `$` (the retire handler
    had its own fix for that one case)."""
    reply = client.delete(path) if "/models/" in path else client.get(path)
    assert reply.status_code == 422, reply.text
    body = reply.json()
    assert body["error"] == "invalid_input" and body["field"] == ("name" if "/models/" in path else "decision_id")
    assert "holds the control character U+" in body["message"]
    assert "gpt-4o" in [m["name"] for m in client.get("/v1/models").json()["models"]]


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("DELETE", "/v1/models/%20", None, "name"),
    ("DELETE", "/v1/models/a%20b", None, "name"),
    ("DELETE", "/v1/models/%C3%A9t%C3%A9", None, "name"),
    ("POST", "/v1/route", {"prompt": "x", "models": ["gpt 4o"]}, "models[0]"),
    ("POST", "/v1/route", {"prompt": "x", "context": {"a b": 1}}, "context.a b.[key]"),
    ("POST", "/v1/models", {**SPEC, "name": "été"}, "name"),
    ("GET", "/v1/decisions/a%20b", None, "decision_id"),
    ("POST", "/v1/feedback", {"decision_id": "a b", "quality": 1}, "decision_id"),
])
def test_a_name_or_id_outside_the_http_pattern_is_a_422_in_words(
    client: TestClient, method: str, path: str, body: Any, field: str
) -> None:
    """A name or a decision id that its pattern refuses is explained in words, not with the pattern's regular
    expression (which the message was)."""
    reply = client.request(method, path, json=body)
    assert reply.status_code == 422, reply.text
    said = reply.json()
    assert said["field"] == field and "^" not in said["message"] and "ASCII letters, digits and" in said["message"]
    assert "gpt-4o" in [m["name"] for m in client.get("/v1/models").json()["models"]]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_an_empty_model_name_in_the_path_is_a_422_in_words(client: TestClient, method: str) -> None:
    """`/v1/models/` (retrieve, retire) has an empty name, which `{name:fullpath}` takes: a 422 naming the field in
    words. Its message was the route's pattern, a regex."""
    reply = client.request(method, "/v1/models/")
    assert reply.status_code == 422, reply.text
    assert reply.json() == {"error": "invalid_input", "message": "name: is empty: a path parameter has a value",
                            "field": "name"}


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/route%0A"), ("POST", "/v1/feedback%0A"), ("GET", "/v1/stats%0A"), ("GET", "/healthz%0A"),
    ("PUT", "/v1/budgets%0A"), ("GET", "/v1/models%0A"), ("POST", "/v1/chat/completions%0A"),
    ("GET", "/openapi.json%0A"), ("GET", "/docs%0A"), ("GET", "/dashboard%0A"),
    pytest.param("GET", "/v1/stats%0D%0A", id="guard-crlf-was-a-404-before-too"),
])
def test_a_path_without_parameters_and_a_final_line_feed_is_a_404(client: TestClient, method: str,
                                                                   path: str) -> None:
    """The route's `$` matched before a final line feed: `POST /v1/route%0A` routed and stored a decision,
    `GET /v1/stats%0A` was `/v1/stats`. No route has that path: a 404, nothing stored. The CR LF case is a guard,
    not the regression: `$` does not match before `\r\n`, so it was a 404 before the fix too, and stays one."""
    reply = client.request(method, path, json={"prompt": "x"} if method != "GET" else None)
    assert reply.status_code == 404, reply.text
    assert reply.json()["error"] == "not_found"
    assert client.get("/v1/stats").json()["decisions"] == 0


def test_every_route_with_path_parameters_checks_them() -> None:
    """The service's routers build their routes with `CheckedRoute`; a `{…:path}` parameter (whose convertor stops
    at a line feed) is refused when the route is declared; a route without parameters keeps FastAPI's handler
    (the hot paths do no more work), only its match refuses a final line feed."""
    from fastapi.routing import APIRoute

    from bandit_router.service.dashboard.routes import router as dashboard_router
    from bandit_router.service.gateway_routes import router as gateway_router
    from bandit_router.service.paths import CheckedRoute
    from bandit_router.service.routes import router as api_router

    routes = [r for router in (api_router, gateway_router, dashboard_router) for r in router.routes]
    with_parameters = [r for r in routes if isinstance(r, APIRoute) and r.param_convertors]
    assert {r.path for r in with_parameters} >= {"/v1/models/{name:fullpath}", "/v1/decisions/{decision_id}"}
    assert all(isinstance(r, CheckedRoute) for r in routes if isinstance(r, APIRoute))
    hot = [r for r in routes if isinstance(r, APIRoute) and r.path in ("/v1/route", "/v1/feedback")]
    assert len(hot) == 2 and all(r.get_route_handler().__name__ == "app" for r in hot)  # FastAPI's own handler
    with pytest.raises(ValueError, match=r"fullpath"):
        CheckedRoute("/v1/things/{name:path}", lambda name: name)


def test_context_keys_follow_the_grammar(client: TestClient) -> None:
    reply = client.post("/v1/route", json={"prompt": "x", "context": {"..": "a"}})
    assert reply.status_code == 422
    assert reply.json()["field"].startswith("context")


# -- text no store can hold as it is (NUL, lone surrogates) in prompts and tenants ------------------------------------
@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_nul_and_lone_surrogates_in_a_prompt_and_tenant_are_stored_as_u_fffd_on_every_store(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL's `text` refuses NUL: a prompt or tenant holding one failed the whole write transaction (a 503
    "the database is unavailable" for every request in the batch). Every store keeps U+FFFD in their place, as it
    did for lone surrogates; the features are the text's as sent."""
    db = tmp_path / "text.db" if store == "sqlite" else DatabaseURL(request.getfixturevalue("pg_url"))
    client = start_client(Settings(db=db, seed=3, store_prompts=True))
    try:
        bodies = {
            b'{"prompt": "a\\u0000b\\ud800c", "context": {"tenant": "t\\u0000\\udfff"}}':
                ("a\ufffdb\ufffdc", "t\ufffd\ufffd"),
            b'{"messages": [{"role": "user", "content": "x\\u0000"}]}': ("x\ufffd", None),
        }
        for body, (prompt, tenant) in bodies.items():
            reply = client.post("/v1/route", content=body, headers=JSON)
            assert reply.status_code == 200, reply.text
            decision_id = reply.json()["decision_id"]
            assert client.post("/v1/feedback", json={"decision_id": decision_id, "quality": 0.5}).status_code == 200
            stored = client.get(f"/v1/decisions/{decision_id}").json()
            assert (stored["prompt"], stored["tenant"], len(stored["feedback"])) == (prompt, tenant, 1)
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/stats/recent").status_code == 200
    finally:
        client.__exit__(None, None, None)


# -- JSON bodies only as application/json (no cross-site form or text/plain posts) --------------------------------
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
@pytest.mark.parametrize("path", ["/v1/route", "/v1/feedback", "/v1/models", "/v1/policies/promote"])
def test_bodies_that_are_not_declared_json_get_415(client: TestClient, path: str, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    reply = client.post(path, content=b'{"prompt": "hi"}', headers=headers)
    assert reply.status_code == 415, reply.text
    assert reply.json()["error"] == "unsupported_media_type"
    assert "application/json" in reply.json()["message"]


@pytest.mark.parametrize(("path", "body", "key"), [
    ("/v1/route", b'{"prompt": "a", "prompt": "b"}', "prompt"),
    ("/v1/route", b'{"prompt": "a", "context": {"tenant": "acme", "\\u0074enant": "beta"}}', "tenant"),
    ("/v1/feedback", b'{"decision_id": "DECISION", "quality": 0.9, "decision_id": "OTHER"}', "decision_id"),
    ("/v1/models", b'{"name": "m1", "input_usd_per_mtok": 1, "output_usd_per_mtok": 2, "name": "m2"}', "name"),
    ("/v1/route", b'{"prompt": "\\ud800", "prompt": "b"}', "prompt"),  # a lone surrogate: read by `json` instead
    ("/v1/route", b'{"prompt": "a", "cost_weight": NaN, "cost_weight": 1}', "cost_weight"),
    # an integer of 5,000 digits: `json` cannot read the body again, so the key is read from jiter's message
    ("/v1/feedback", b'{"decision_id": "DECISION", "decision_id": "OTHER", "quality": ' + b"9" * 5000 + b"}",
     "decision_id"),
    ("/v1/route", b'{"a\\"\\u00e9\\n": 1, "a\\"\\u00e9\\n": 2, "prompt": ' + b"9" * 5000 + b"}", 'a"\u00e9\n'),
])
def test_a_key_given_twice_in_a_body_is_a_422_naming_it(client: TestClient, path: str, body: bytes, key: str) -> None:
    """The hot paths (`hotpaths.py`, pydantic's JSON parser) and the other routes kept the last of a key given
    twice: feedback with two `decision_id`s went to the second, silently, and a route to a tenant nobody read
    twice. Every body is refused now, naming the key, as `PUT /v1/budgets` already was; nothing is stored."""
    decision = client.post("/v1/route", json={"prompt": "first"}).json()["decision_id"]
    stored = client.get("/v1/stats").json()["decisions"]
    reply = client.post(path, content=body.replace(b"DECISION", decision.encode()),
                        headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert reply.json() == {"error": "invalid_input", "field": "body", "message": f"body: gives the key {key!r} twice"}
    assert client.get("/v1/stats").json()["decisions"] == stored
    assert client.get(f"/v1/decisions/{decision}").json()["feedback"] == []
    assert "m1" not in client.get("/v1/models").text and "m2" not in client.get("/v1/models").text


def test_budgets_put_needs_json_too(client: TestClient) -> None:
    reply = client.put("/v1/budgets", content=b"{}", headers={"content-type": "text/plain"})
    assert reply.status_code == 415


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/vnd.route+json"])
def test_json_media_types_are_accepted(client: TestClient, content_type: str) -> None:
    reply = client.post("/v1/route", content=b'{"prompt": "hi"}', headers={"content-type": content_type})
    assert reply.status_code == 200, reply.text


# -- Host names of a loopback-bound service (DNS rebinding) --------------------------------------------------------
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "10.0.0.1"])
def test_a_loopback_bound_service_refuses_other_host_names(make_client: Callable[..., TestClient],
                                                           host: str) -> None:
    client = make_client("http://127.0.0.1:8000")
    reply = client.post("/v1/route", json={"prompt": "hi"}, headers={"host": host})
    assert reply.status_code == 421, reply.text
    assert "allowed_hosts" in reply.json()["message"]
    assert client.get("/readyz", headers={"host": host}).status_code == 421


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "LOCALHOST:8000", "[::1]:8000", "127.0.0.2",
                                  "app.localhost"])
def test_a_loopback_bound_service_accepts_loopback_host_names(make_client: Callable[..., TestClient],
                                                              host: str) -> None:
    client = make_client("http://127.0.0.1:8000")
    assert client.post("/v1/route", json={"prompt": "hi"}, headers={"host": host}).status_code == 200


def test_two_host_headers_are_a_400_whichever_comes_first(make_client: Callable[..., TestClient]) -> None:
    """The `Host` check read the last `Host` header, Starlette (its URLs, the trailing-slash redirect) the first:
    `Host: evil.example` then `Host: localhost` passed the check and was redirected to evil.example. Two are a
    400 (RFC 9112 §3.2), on the hot paths too."""
    client = make_client("http://127.0.0.1:8000")
    for hosts in (("evil.example", "localhost"), ("localhost", "evil.example"), ("localhost", "localhost")):
        headers = [("host", h) for h in hosts] + [("content-type", "application/json")]
        for method, path in (("POST", "/v1/route"), ("POST", "/v1/route/"), ("GET", "/readyz")):
            reply = client.request(method, path, content=b'{"prompt": "hi"}', headers=headers,
                                   follow_redirects=False)
            assert reply.status_code == 400, (hosts, path, reply.status_code, reply.headers.get("location"))
            assert reply.json()["error"] == "bad_request" and "Host" in reply.json()["message"]
    assert client.post("/v1/route", json={"prompt": "hi"}, headers={"host": "localhost"}).status_code == 200


def test_the_first_authorization_header_counts_on_every_route(make_client: Callable[..., TestClient]) -> None:
    """The hot paths (`/v1/route`, `/v1/feedback`) read the last `Authorization` header where every other route reads
    the first: a wrong key then the right one was a 200 on `/v1/route` and a 401 on `/v1/stats`. Now the first
    counts everywhere (a proxy that adds its own key after the client's gets the same answer on every route)."""
    client = make_client(api_keys=Secrets(("client-key-0123456789abcdef",)))
    right, wrong = "Bearer client-key-0123456789abcdef", "Bearer not-the-key-0123456789"
    for first, second, status in ((wrong, right, 401), (right, wrong, 200)):
        headers = [("authorization", first), ("authorization", second), ("content-type", "application/json")]
        replies = {
            "route": client.post("/v1/route", content=b'{"prompt": "hi"}', headers=headers),
            "feedback": client.post("/v1/feedback", content=b'{"decision_id": "nope", "quality": 1}',
                                    headers=headers),
            "stats": client.get("/v1/stats", headers=headers),
        }
        expected = {"route": status, "feedback": 404 if status == 200 else 401, "stats": status}
        assert {k: r.status_code for k, r in replies.items()} == expected, (first, second)
    content_types = [("authorization", right), ("content-type", "text/plain"), ("content-type", "application/json")]
    assert client.post("/v1/route", content=b'{"prompt": "hi"}', headers=content_types).status_code == 415


def test_allowed_hosts_adds_names(make_client: Callable[..., TestClient]) -> None:
    client = make_client("http://127.0.0.1:8000", allowed_hosts=("router.internal", "*.example.com"))
    for host, status in (("router.internal", 200), ("a.example.com:443", 200), ("example.com", 421),
                         ("router.internal.evil", 421)):
        assert client.get("/readyz", headers={"host": host}).status_code == status, host


def test_any_host_when_bound_elsewhere_or_allowed(make_client: Callable[..., TestClient]) -> None:
    client = make_client("http://127.0.0.1:8000", allowed_hosts=("*",))
    assert client.get("/readyz", headers={"host": "evil.example"}).status_code == 200


def test_a_service_bound_to_all_interfaces_does_not_check_host(tmp_path: Path) -> None:
    settings = Settings(db=tmp_path / "any.db", seed=3, host="0.0.0.0",
                        api_keys=Secrets(("client-key-0123456789abcdef",)))
    client = start_client(settings, "http://127.0.0.1:8000")
    try:
        assert client.get("/readyz", headers={"host": "router.example.com"}).status_code == 200
    finally:
        client.__exit__(None, None, None)


# -- API keys only from the Authorization header -------------------------------------------------------------------
@pytest.mark.parametrize("query", ["api_key", "key", "token", "access_token", "authorization"])
def test_a_key_in_the_query_string_is_not_accepted(make_client: Callable[..., TestClient], query: str) -> None:
    client = make_client(admin_keys=Secrets((ADMIN_KEY,)))
    reply = client.get(f"/v1/stats?{query}={ADMIN_KEY}")
    assert reply.status_code == 401
    assert ADMIN_KEY not in reply.text
    assert client.get("/v1/stats", headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('"GET /v1/stats?api_key=abc HTTP/1.1" 401', '"GET /v1/stats?api_key=[REDACTED] HTTP/1.1" 401'),
        ("/x?a=1&Access_Token=t&b=2", "/x?a=1&Access_Token=[REDACTED]&b=2"),
        ("/x?client_secret=s;password=p", "/x?client_secret=[REDACTED];password=[REDACTED]"),
        ("/x?api%5Fkey=abc", "/x?api%5Fkey=[REDACTED]"),
        ("/x?MYKEY=abc#frag", "/x?MYKEY=[REDACTED]#frag"),
        ("/x?model=gpt&n=1", "/x?model=gpt&n=1"),
    ],
)
def test_query_strings_are_redacted(line: str, expected: str) -> None:
    assert redact_query(line) == expected
    assert json.dumps(redact_query(line))


# -- the OpenAPI document ------------------------------------------------------------------------------------------
def test_openapi_documents_budgets_body_prompt_rule_and_metrics_type(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    put = doc["paths"]["/v1/budgets"]["put"]
    assert put["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/BudgetsIn"}
    budgets = doc["components"]["schemas"]["BudgetsIn"]
    assert {"avg_cost_usd", "spend_usd", "share", "tenants", "fallback_model"} <= set(budgets["properties"])
    assert budgets["additionalProperties"] is False
    route = doc["components"]["schemas"]["RouteIn"]
    assert [branch["required"] for branch in route["oneOf"]] == [["prompt"], ["messages"]]
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert any(media.startswith("text/plain") for media in metrics)
    for path in ("/v1/route", "/v1/feedback", "/v1/models", "/v1/budgets"):
        operation = doc["paths"][path]["put" if path == "/v1/budgets" else "post"]
        assert "415" in operation["responses"], path


_SIX_ERRORS = b', "x1": 1, "x2": 1, "x3": 1, "x4": 1, "x5": 1}'  # more than SHOWN_ERRORS: read without inputs


@pytest.mark.parametrize(("path", "body", "field", "where"), [
    ("/v1/models", b'{"name": "a\\ud800b", "input_usd_per_mtok": 1, "output_usd_per_mtok": 2}', "name",
     "\\ud800 after 1 code point"),
    ("/v1/route", b'{"prompt": "hi", "models": ["gpt-4o\\udc00"]}', "models[0]", "\\udc00 after 6 code points"),
    ("/v1/route", b'{"prompt": "hi", "context": {"a\\ud800": "x"}}', "context.a\\ud800.[key]",
     "\\ud800 after 1 code point"),
    ("/v1/feedback", b'{"decision_id": "\\udfff", "quality": 1}', "decision_id", "\\udfff after 0 code points"),
    ("/v1/route", b'{"prompt": "hi", "context": {"a\\ud800": 1}' + _SIX_ERRORS, "context.a\\ud800.[key]",
     "\\ud800 after 1 code point"),
    ("/v1/route", b'{"prompt": "hi", "models": ["gpt-4o\\udc00"]' + _SIX_ERRORS, "models[0]",
     "\\udc00 after 6 code points"),
    ("/v1/route", b'{"messages": [{"ro\\ud800le": "user", "content": "x"}]}', "messages[0].ro\\ud800le.[key]",
     "\\ud800 after 2 code points"),
    ("/v1/route", b'{"prompt": "hi", "pr\\ud800ompt": 1}', "pr\\ud800ompt.[key]", "\\ud800 after 2 code points"),
    ("/v1/route", b'{"prompt": "hi", "pr\\ud800ompt": 1' + _SIX_ERRORS, "pr\\ud800ompt.[key]",
     "\\ud800 after 2 code points"),
])
def test_a_lone_surrogate_in_a_name_is_a_422_that_says_what_and_where(client: TestClient, path: str, body: bytes,
                                                                      field: str, where: str) -> None:
    """Half of a UTF-16 pair sent as a JSON escape (`\\ud800`) in a name, an id or a key got pydantic's "Input
    should be a valid string, unable to parse raw data as a unicode string" (a key's field with U+FFFD for its
    bytes); the 422 says it is a lone surrogate, which and where, and the field names it as sent: a key of a model
    too (pydantic reports the object), and with more errors than a 422 shows (read without their inputs). Nothing
    is stored."""
    stored = client.get("/v1/stats").json()["decisions"]
    reply = client.post(path, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert reply.json()["field"] == field
    message = reply.json()["message"]
    assert message.startswith(f"{field}: not Unicode text: it holds a lone surrogate ({where})"), message
    assert "unable to parse" not in message and "\ufffd" not in reply.text
    assert client.get("/v1/stats").json()["decisions"] == stored


def test_keys_written_alike_are_each_named_as_sent_when_the_errors_come_without_inputs(client: TestClient) -> None:
    """More errors than a 422 shows are read without their inputs, so a surrogate key is found again by the form
    pydantic writes it in (three U+FFFD): a key that holds U+FFFD itself is no match, and two surrogate keys written
    alike are each named once (review of a4267b7: the first named the U+FFFD key, the second one key twice)."""
    fffd = b'"a\\ufffd\\ufffd\\ufffd": 1, "a\\ud800": "x"'
    twins = b'"a\\ud800": 1, "a\\udbff": 1'
    cases = ((fffd, ["context.a\\ud800.[key]"]), (twins, ["context.a\\ud800.[key]", "context.a\\udbff.[key]"]))
    for keys, named in cases:
        body = b'{"prompt": "hi", "context": {' + keys + b"}" + _SIX_ERRORS
        reply = client.post("/v1/route", content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 422, reply.text
        message = reply.json()["message"]  # (the U+FFFD key is refused too, by the keys' pattern)
        for field in named:
            assert message.count(f"{field}: not Unicode text: it holds a lone surrogate (") == 1, (field, message)


_MODEL = b'{"name": "m", "input_usd_per_mtok": 1, "output_usd_per_mtok": 2, "tags": {'


@pytest.mark.parametrize(("tags", "rest", "named"), [
    (b'"a\\ufffd\\ufffd\\ufffd": "ok", "a\\ud800": "x\\ud800"', _SIX_ERRORS, [("tags.a\\ud800", "\\ud800")]),
    (b'"a\\ufffd\\ufffd\\ufffd": {"k\\ud800": "v"}, "a\\ud800": "x\\ud800"', b"}", [("tags.a\\ud800", "\\ud800")]),
    (b'"a\\ud800": "x\\ud800", "a\\udbff": "y\\udbff"', _SIX_ERRORS,
     [("tags.a\\ud800", "\\ud800"), ("tags.a\\udbff", "\\udbff")]),
])
def test_a_surrogate_in_a_value_under_a_key_written_alike_is_located_at_its_own_key(
    client: TestClient, tags: bytes, rest: bytes, named: list[tuple[str, str]]
) -> None:
    """A value pydantic reports under a key written with a surrogate (its location holds the key's bytes as
    U+FFFD×3) was looked up by that lossy form, taking the first key written alike: the key that holds U+FFFD
    itself (its value "ok" named as the text, so no position; or its object, whose keys then gained the value as a
    key, `tags.a���.x\\ud800.[key]`), and for two such keys the first twice. The value is found at its own key now,
    named as sent (`tags.a\\ud800`, never U+FFFD), with its surrogate's position."""
    import re

    reply = client.post("/v1/models", content=_MODEL + tags + b"}" + rest, headers=JSON)
    assert reply.status_code == 422, reply.text
    message = reply.json()["message"]
    found = re.findall(r"(?:^|; )(tags\.[^:;]*): not Unicode text: it holds a lone surrogate(?: \((\\u[0-9a-f]{4}) "
                       r"after 1 code point\))?", message)
    assert [f for f in found if not f[0].endswith("[key]")] == named, message


@pytest.mark.parametrize("inputs", [True, False])
def test_a_nested_object_under_a_key_written_alike_is_read_at_its_own_key(inputs: bool) -> None:
    """An intermediate part of a location written lossily (an object under a key that holds a surrogate) was
    matched to the first key written alike: a key holding U+FFFD itself, so the error named that object's text
    ("fine": no surrogate, no position), or, for two keys written alike, the first one's twice. Every part is now
    matched to a key through which the location leads to text holding a surrogate, that no earlier error took, and
    the location names the keys as sent. (No body of the service nests objects under free keys; `with_text` is
    general: here a mapping of mappings of text, with and without pydantic's inputs, as with more than five errors.)"""
    import re
    from typing import Annotated

    from pydantic import Field, TypeAdapter, ValidationError

    from bandit_router.service.errors import error_loc, field_path, first_errors, said

    text = Annotated[str, Field(pattern="^.")]  # (pydantic reads text as Unicode for a pattern)
    junk = {f"z{i}": 1 for i in range(6)} if not inputs else {}  # more errors than read with their inputs
    cases = [
        ({"a\ufffd\ufffd\ufffd": {"k": "fine"}, "a\ud800": {"k": "x\ud800"}}, [("a\\ud800.k", "\\ud800 after 1")]),
        ({"a\ud800": {"k": "x\ud800"}, "a" + chr(0xDBFF): {"k": "yy\udbff"}},  # (ruff reads the keys as one)
         [("a\\ud800.k", "\\ud800 after 1"), ("a\\udbff.k", "\\udbff after 2")]),
    ]
    for body, named in cases:
        with pytest.raises(ValidationError) as raised:
            TypeAdapter(dict[text, dict[text, text]]).validate_python({**body, **junk})
        errors = [e for e in first_errors(raised.value, 5, {**body, **junk}) if e["type"] == "string_unicode"
                  and e["loc"][-1] != "[key]"]
        where = [re.search(r"surrogate \((\\u[0-9a-f]{4} after \d+) code point", said(e)) for e in errors]
        assert [(field_path(error_loc(e)), w and w[1]) for e, w in zip(errors, where, strict=True)] == named, errors
