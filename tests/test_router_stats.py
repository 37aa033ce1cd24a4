"""Named routers' counts are the deployment's: stored in the transaction that stores each request's decision and
chain (`store/router_stats.py`, migration 7), so `GET /v1/stats` shows the same totals from every worker or
replica, after a restart, and after retention; a schema-6 database gets them from its stored chains. Through the
gateway against the fake upstream on 127.0.0.1, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from bandit_router.catalog import ModelSpec
from bandit_router.config import RouterAlias, Settings
from bandit_router.router import Router
from bandit_router.service import create_app
from bandit_router.store import SCHEMA_VERSION, CallRecord, RouterCounts, SQLiteStore, Store, open_store
from bandit_router.store.location import DatabaseURL
from bandit_router.store.postgres import PostgresStore
from bandit_router.store.router_stats import day_of, of_chain
from bandit_router.types import Request
from benchmarks.fake_upstream import JUDGE, ServerThread
from tests.named_fakes import CODE, MATH, PRICES, PROSE, QUALITY, ChooserFake, serving
from tests.old_schema import as_previous_schema
from tools.loopback import loopback

ROUTERS = (
    RouterAlias("cascade", "cascade", ("cheap", "strong"), judge=JUDGE, threshold=0.7),
    RouterAlias("auto", "llm-router", ("cheap", "strong"), router_model="chooser"),
)


@pytest.fixture(scope="module")
def fake() -> Iterator[ChooserFake]:
    with serving(ChooserFake(quality=QUALITY, seed=5, judge_noise=0.1)) as upstream:
        yield upstream


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "router.db") if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


def settings(fake: ChooserFake, db: str, **changes: Any) -> Settings:
    specs = tuple(ModelSpec(n, *PRICES[n], tags={"family": "fake"}, base_url=fake.url + "/v1",
                            route=n in ("cheap", "strong")) for n in PRICES)
    return Settings(db=db, models=specs, routers=ROUTERS, seed=11, **changes)


@pytest.fixture
def serve(fake: ChooserFake) -> Iterator[Callable[..., tuple[str, ServerThread]]]:
    """`serve(db, **settings)`: a bandit-router app on 127.0.0.1 over `db` (its URL and server); all stopped at the
    end. Every fake model starts healthy."""
    fake.behaviour.clear()
    servers: list[ServerThread] = []

    def start(db: str, **changes: Any) -> tuple[str, ServerThread]:
        server = ServerThread(create_app(settings(fake, db, **changes)))
        servers.append(server)
        return server.wait_ready(30), server

    yield start
    for server in servers:
        server.stop()


def ask(url: str, model: str, prompt: str) -> httpx.Response:
    return loopback.post(url + "/v1/chat/completions", timeout=30,
                         json={"model": model, "messages": [{"role": "user", "content": prompt}]})


def named_stats(url: str) -> dict[str, Any]:
    reply = loopback.get(url + "/v1/stats")
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["named_routers"])


def traffic(urls: list[str], fake: ChooserFake) -> dict[str, dict[str, Any]]:
    """Requests to both routers, alternating between `urls`, and one that no model answers; what the replies say
    each router should count (requests, escalations, calls, spend, who answered)."""
    expected: dict[str, dict[str, Any]] = {
        name: {"requests": 0, "escalations": 0, "escalated_requests": 0, "judge_calls": 0, "router_calls": 0,
               "answer_calls": 0, "failed_requests": 0, "spend_usd": 0.0, "answered_by": {}}
        for name in ("cascade", "auto")
    }  # fmt: skip
    prompts = [PROSE, CODE, MATH, CODE, PROSE, CODE]
    for i, prompt in enumerate(prompts * 2):
        router = "cascade" if i < len(prompts) else "auto"
        reply = ask(urls[i % len(urls)], router, f"{prompt} #{i}")
        assert reply.status_code == 200, reply.text
        chain = reply.json()["bandit_router"]
        counts = expected[router]
        counts["requests"] += 1
        escalations = sum(1 for s in chain.get("steps", []) if s["action"] == "escalate")
        counts["escalations"] += escalations
        counts["escalated_requests"] += escalations > 0
        for role in ("judge", "router", "answer"):
            counts[f"{role}_calls"] += sum(1 for c in chain["calls"] if c["role"] == role)
        counts["spend_usd"] += sum(c["cost_usd"] for c in chain["calls"])
        model = reply.json()["model"]
        counts["answered_by"][model] = counts["answered_by"].get(model, 0) + 1
    fake.set("cheap", "fail")
    fake.set("strong", "fail")
    assert ask(urls[-1], "cascade", PROSE).status_code == 502  # no model answered: counted, nothing stored
    fake.set("cheap")
    fake.set("strong")
    expected["cascade"]["requests"] += 1
    expected["cascade"]["failed_requests"] += 1
    expected["cascade"]["answer_calls"] += 2
    return expected


def assert_counts(stats: dict[str, Any], expected: dict[str, dict[str, Any]]) -> None:
    for router, counts in expected.items():
        got = stats[router]
        for key, value in counts.items():
            if key == "spend_usd":
                assert got[key] == pytest.approx(value, rel=1e-9), (router, key)
            else:
                assert got[key] == value, (router, key, got)
        assert got["escalation_rate"] == pytest.approx(counts["escalated_requests"] / counts["requests"])


# -- what one request counts ------------------------------------------------------------------------------------------
def test_a_chain_counts_its_escalation_steps_its_calls_and_every_calls_cost() -> None:
    """Three models, escalated twice: two escalations, one escalated request; the judge's calls and a failed call
    counted and paid for; an LLM router's parsed and unparsed replies; a request no model answered."""
    chain = {
        "router": "deep", "strategy": "cascade", "answered_by": "large",
        "calls": [{"model": "small", "role": "answer", "cost_usd": 0.001},
                  {"model": "judge", "role": "judge", "cost_usd": 0.0002, "confidence": 0.3},
                  {"model": "mid", "role": "answer", "cost_usd": 0.004},
                  {"model": "judge", "role": "judge", "cost_usd": 0.0003, "confidence": 0.4},
                  {"model": "large", "role": "answer", "cost_usd": 0.0, "error": "upstream (500)"},
                  {"model": "large", "role": "answer", "cost_usd": 0.02}],
        "steps": [{"action": "escalate"}, {"action": "escalate"}],
    }  # fmt: skip
    got = of_chain(chain, 86400 * 3 + 5)
    assert got == RouterCounts(
        "deep", 3, "large", requests=1, escalations=2, escalated_requests=1, answer_calls=4, judge_calls=2,
        failed_calls=1, spend_usd=pytest.approx(0.0255),
    )  # fmt: skip
    routed = of_chain({"router": "auto", "strategy": "llm-router", "named": "cheap", "answered_by": "cheap",
                       "calls": [{"role": "router", "cost_usd": 1e-5}, {"role": "answer", "cost_usd": 1e-3}],
                       "steps": []}, 0.0)
    assert (routed.parsed, routed.fallbacks, routed.router_calls, routed.escalations) == (1, 0, 1, 0)
    assert routed.spend_usd == pytest.approx(1.01e-3)  # the routing LLM's call is paid for too
    failed = of_chain({"router": "auto", "strategy": "llm-router", "named": None, "answered_by": None,
                       "calls": [{"role": "router", "cost_usd": 1e-5},
                                 {"role": "answer", "cost_usd": 0.0, "error": "timeout"}], "steps": []}, 0.0)
    assert (failed.model, failed.failed_requests, failed.fallbacks, failed.failed_calls) == ("", 1, 1, 1)
    assert failed.spend_usd == pytest.approx(1e-5)


# -- the store ------------------------------------------------------------------------------------------------------
def _open(db: str) -> Store:
    return SQLiteStore(db) if not db.startswith("postgresql") else PostgresStore(DatabaseURL(db))


def test_two_stores_on_one_database_add_to_the_same_counts_which_retention_keeps(db: str) -> None:
    """Two processes' stores on one database each add requests of a router (in the transactions that store their
    decisions and chains): each reads the sum. Retention deletes the decisions and their chains, not the counts."""
    first, second = _open(db), _open(db)
    first.prepare()
    router = Router(seed=3)
    old = time.time() - 40 * 86400
    try:
        for i, store in enumerate((first, second, first)):
            decision = dataclasses.replace(router.route(Request(prompt=f"request {i}")), policy="cascade:cascade",
                                           created_at=old)
            chain = {"router": "cascade", "strategy": "cascade", "answered_by": "strong", "steps": [
                {"action": "escalate" if i else "accept"}], "calls": [{"role": "answer", "cost_usd": 0.25}]}
            record = CallRecord(
                decision_id=decision.decision_id, request_id=decision.decision_id, attempt=1, model=decision.model,
                routed=False, stream=False, status="ok", http_status=200, input_tokens=1, output_tokens=1,
                usage=None, cost_usd=0.25, ttft_s=0.1, latency_s=0.1, error=None, created_at=old, chain="{}",
            )  # fmt: skip
            with store.write() as tx:
                tx.insert_decisions([(decision, None, None)])
                tx.insert_calls([record])
                tx.add_router_counts([of_chain(chain, old)])
        for store in (first, second):
            with store.read() as reader:
                (total,) = reader.router_counts()
            assert (total.router, total.requests, total.escalations, total.spend_usd) == ("cascade", 3, 2, 0.75)
        with first.write() as tx:  # a decision of today: SQLite's retention keeps the newest decision
            tx.insert_decisions([(router.route(Request(prompt="today")), None, None)])
        assert first.delete_old(time.time() - 30 * 86400, 1000, fingerprint="f") == 3  # type: ignore[attr-defined]
        with second.read() as reader:
            assert sum(m.decisions for m in reader.stats().models.values()) == 1  # the old decisions are gone
            (total,) = reader.router_counts()
        assert (total.requests, total.escalations, total.day) == (3, 2, -1)  # history: kept, like the rollup
    finally:
        first.close()
        second.close()


# -- the service: two processes, a restart -------------------------------------------------------------------------
def test_two_processes_show_the_deployments_counts_and_a_restart_keeps_them(
    serve: Callable[..., tuple[str, ServerThread]], fake: ChooserFake, db: str
) -> None:
    """Two bandit-router processes on one database (SQLite workers, PostgreSQL replicas) answer the named routers'
    requests in turn: `/v1/stats` of either shows every request of both (requests, escalations, calls, failures,
    spend, who answered), as does the dashboard's `/v1/stats/live`. Both stop; a new process shows the same."""
    (a, server_a), (b, server_b) = serve(db, workers=2), serve(db, workers=2)
    expected = traffic([a, b], fake)
    assert expected["cascade"]["escalations"] == 3 and expected["cascade"]["answered_by"] == {"cheap": 3,
                                                                                              "strong": 3}
    assert expected["auto"]["answered_by"]["strong"] >= 3  # the routing LLM named strong for code
    for url in (a, b):
        stats = named_stats(url)
        assert_counts(stats, expected)
        assert stats["auto"]["parsed"] == 5 and stats["auto"]["fallbacks"] == 1  # math: no name in the reply
        live = loopback.get(url + "/v1/stats/live").json()["named_routers"]
        assert live == stats
    before = named_stats(a)
    server_a.stop()
    server_b.stop()
    c, _ = serve(db)
    assert named_stats(c) == before


# -- migration 7 --------------------------------------------------------------------------------------------------
def test_migration_7_counts_the_chains_a_schema_6_database_stored(
    serve: Callable[..., tuple[str, ServerThread]], fake: ChooserFake, db: str
) -> None:
    """A database at schema 6 with named routers' traffic (its chains stored) upgrades: migration 7 counts every
    stored chain as the service counts it live (the same totals, except the request no model answered, of which
    schema 6 stored nothing), the rows are intact, a second prepare changes nothing, and the service serves on."""
    url, server = serve(db)
    expected = traffic([url], fake)
    live = named_stats(url)
    decisions = loopback.get(url + "/v1/stats").json()["decisions"]
    server.stop()
    as_previous_schema(db, "router_stats", 6)
    expected["cascade"]["requests"] -= 1
    expected["cascade"]["failed_requests"] = 0
    expected["cascade"]["answer_calls"] -= 2
    store = open_store(db)
    try:
        store.prepare()
        store.prepare()
        with store.read() as reader:
            assert reader.get_meta("schema_version") == str(SCHEMA_VERSION)  # 7, and the ones after it
            counts = reader.router_counts()
            assert sum(m.decisions for m in reader.stats().models.values()) == decisions
        assert sum(c.requests for c in counts) == 12 and {c.router for c in counts} == {"cascade", "auto"}
    finally:
        store.close()
    url, _ = serve(db)
    stats = named_stats(url)
    assert_counts(stats, expected)
    assert stats["auto"]["parsed"] == live["auto"]["parsed"] and stats["auto"]["fallbacks"] == live["auto"]["fallbacks"]
    assert stats["cascade"]["judge_calls"] == live["cascade"]["judge_calls"]
    assert stats["cascade"]["spend_usd"] == pytest.approx(live["cascade"]["spend_usd"], rel=1e-9)
    assert ask(url, "cascade", CODE).status_code == 200  # and counts on from there
    assert named_stats(url)["cascade"]["requests"] == expected["cascade"]["requests"] + 1 == 7


def _schema_6_with_chains(db: str, chains: Sequence[str]) -> None:
    """A schema-6 database holding one named-router decision per stored `chains` text (as written, unchecked)."""
    store = _open(db)
    store.prepare()
    router = Router(seed=3)
    try:
        with store.write() as tx:
            for i, chain in enumerate(chains):
                decision = dataclasses.replace(router.route(Request(prompt=f"chain {i}")), policy="cascade:cascade")
                tx.insert_decisions([(decision, None, None)])
                tx.insert_calls([CallRecord(
                    decision_id=decision.decision_id, request_id=decision.decision_id, attempt=1,
                    model=decision.model, routed=False, stream=False, status="ok", http_status=200, input_tokens=1,
                    output_tokens=1, usage=None, cost_usd=0.5, ttft_s=0.1, latency_s=0.1, error=None,
                    created_at=86400.0 * 20_000, chain=chain,
                )])  # fmt: skip
    finally:
        store.close()
    as_previous_schema(db, "router_stats", 6)


def test_migration_7_leaves_out_what_is_not_a_named_routers_chain(db: str) -> None:
    """Chains no service wrote (not JSON, not an object, no router; elements that are not objects, a cost that is
    not a number) neither fail the migration, which would keep the service from starting, nor count."""
    good = ('{"router": "cascade", "strategy": "cascade", "answered_by": "strong", "steps": [{"action": "escalate"}, '
            '7], "calls": [{"role": "answer", "cost_usd": 0.5}, "junk", {"role": "judge", "cost_usd": "free"}]}')
    _schema_6_with_chains(db, (good, "not json", "[1, 2]", '{"steps": []}', '{"router": 5}', '"text"'))
    store = _open(db)
    try:
        store.prepare()
        with store.read() as reader:
            assert reader.router_counts() == [RouterCounts(
                "cascade", -1, "strong", requests=1, escalations=1, escalated_requests=1, answer_calls=1,
                judge_calls=1, spend_usd=0.5)]
    finally:
        store.close()


def test_a_day_is_the_utc_day_of_the_request() -> None:
    assert day_of(0.0) == 0 and day_of(86399.9) == 0 and day_of(86400.0) == 1 and day_of(-1.0) == -1


def test_a_request_whose_router_has_no_active_model_is_counted_as_failed(
    serve: Callable[..., tuple[str, ServerThread]], db: str
) -> None:
    """Every model of a router retired at run time: its requests are 502s that no model answered, so they count
    as requests and failed requests (the documented `failed_requests`)."""
    url, _ = serve(db)
    added = loopback.post(url + "/v1/models", json={"name": "other", "input_usd_per_mtok": 1.0,
                                                "output_usd_per_mtok": 2.0})
    assert added.status_code in (200, 201), added.text
    for name in ("cheap", "strong"):
        assert loopback.delete(url + f"/v1/models/{name}").status_code == 200
    reply = ask(url, "cascade", PROSE)
    assert reply.status_code == 502, reply.text
    stats = named_stats(url)["cascade"]
    assert (stats["requests"], stats["failed_requests"], stats["answer_calls"], stats["spend_usd"]) == (1, 1, 0, 0)


def test_migration_7_survives_chains_that_parse_as_json_but_cannot_be_read(db: str) -> None:
    """Chains no service wrote that PostgreSQL's `json` accepts but cannot read as text (a `\\u0000`, a lone
    surrogate), nested deeper than its parser's stack, or with a cost beyond a float's range: the migration, and
    with it the service's start, does not fail on them; they are left out (no router) or their cost counts 0
    (the totals stay finite, so `/v1/stats` can say them)."""
    huge = ('{"router": "cascade", "strategy": "cascade", "answered_by": "strong", "steps": [], '
            '"calls": [{"role": "answer", "cost_usd": 1e400}, {"role": "judge", "cost_usd": 0.25}]}')
    odd = ('{"note": "a\\u0000b"}', '{"note": "\\ud800"}', '{"note": ' + "[" * 100_000 + "]" * 100_000 + "}", huge)
    _schema_6_with_chains(db, odd)
    store = _open(db)
    try:
        store.prepare()
        with store.read() as reader:
            assert reader.router_counts() == [RouterCounts(
                "cascade", -1, "strong", requests=1, answer_calls=1, judge_calls=1, spend_usd=0.25)]
    finally:
        store.close()
