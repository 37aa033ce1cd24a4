"""Legitimate operations that interleave: the writer thread applies the log (learning, model events, promotions)
while the event loop decides. Each test makes the interleaving happen at the exact moment it names, so it does not
depend on thread scheduling."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from named_fakes import serving
from service_client import start_client

from bandit_router.budgets import BudgetConfig, BudgetPacer
from bandit_router.catalog import ModelSpec
from bandit_router.config import Settings
from bandit_router.errors import UnknownModel
from bandit_router.log import BudgetState, build_router
from bandit_router.service import create_app
from bandit_router.service.engine import Engine
from bandit_router.store.location import DatabaseURL, open_store
from bandit_router.store.postgres import LOG_LOCK
from bandit_router.types import Decision, Request
from benchmarks.fake_upstream import FakeUpstream, ServerThread

KEY_ENV = "BANDIT_ROUTER_TEST_UPSTREAM_KEY"
KEY = "sk-upstream-secret-0123456789abcdef"


def test_a_promotion_waits_for_the_decision_being_priced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A promotion hands the budget pacer from the live router to the shadow. Applied (by the writer thread) while
    the live router prices a decision, it left that decision unbooked: the old router priced it with the pacer, then
    found none to book it with (budgets then under-count, by every decision a promotion overlapped). The promotion
    now waits until the decision is made and booked."""
    shadow = "fixed:gpt-4o-mini"
    engine = Engine(Settings(db=tmp_path / "race.db", seed=3, shadow_policies=(shadow,)))
    try:
        pacer = BudgetPacer(BudgetConfig.from_mapping({"avg_cost_usd": 0.001}))
        live = engine.policies.live
        live.pacer = pacer  # as recovery attaches it
        promotion = threading.Thread(target=engine.policies.promote, args=(shadow,))
        adjust = pacer.adjust

        def adjust_during_a_promotion(*args: Any, **kwargs: Any) -> Any:
            promotion.start()  # the writer thread applies a `promote` event now
            promotion.join(0.5)  # it completes here unless it waits for this decision
            return adjust(*args, **kwargs)

        monkeypatch.setattr(pacer, "adjust", adjust_during_a_promotion)

        async def decide() -> Decision:
            return await engine._decide(Request(prompt="a decision priced while a promotion lands"))

        decision = asyncio.run(decide())
        promotion.join(5)
        assert not promotion.is_alive()
        assert decision.policy == live.policy.name
        assert pacer.report()["global"]["requests"] == 1  # booked, by the pacer that priced it
        assert engine.policies.live_name == shadow and engine.policies.live.pacer is pacer and live.pacer is None
    finally:
        engine.store.close()


def test_a_route_refused_for_a_taken_decision_id_is_not_booked(tmp_path: Path) -> None:
    """A client that retries `POST /v1/route` with its own `decision_id` (at once, or after a timeout) gets a 409 for
    every retry, and nothing is stored; the budget pacer had booked each of them anyway when it was decided, so the
    spend, the requests and the shares counted decisions that do not exist (five sends of one id: five times the
    spend). The refused decision's booking is now taken back."""
    budgets = {"avg_cost_usd": 0.001, "spend_usd": "1/1d", "share": {"tier=large": 0.3, "gpt-4o-mini": 0.5}}
    client = start_client(Settings(db=tmp_path / "race.db", seed=3, budgets=BudgetConfig.from_mapping(budgets)))
    try:
        body = {"prompt": "the same request, sent again " * 20, "decision_id": "client-chosen-1"}
        first = client.post("/v1/route", json=body)
        assert first.status_code == 200
        booked = client.get("/v1/stats").json()["budgets"]["global"]
        assert booked["requests"] == 1
        for _ in range(4):
            again = client.post("/v1/route", json=body)
            assert again.status_code == 409 and "already used" in again.json()["message"]
        after = client.get("/v1/stats").json()
        assert after["decisions"] == 1
        now = after["budgets"]["global"]
        assert now["requests"] == 1 and now["spend_usd"] == pytest.approx(booked["spend_usd"], rel=1e-12)
        realised = {t["target"]: t["realized"] for t in booked["targets"]}
        assert {t["target"]: t["realized"] for t in now["targets"]} == pytest.approx(realised, rel=1e-12)
        assert [t.get("requests") for t in now["targets"]] == [t.get("requests") for t in booked["targets"]]
    finally:
        client.__exit__(None, None, None)


def test_on_replicas_a_gateway_reply_waits_until_its_call_record_is_committed(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica (one worker on a shared PostgreSQL database) answered a chat completion before its call record was
    committed, as a single process may (its writer runs the record before any later feedback). A feedback that the
    load balancer sends to another replica right after the reply was then committed first, without the call's tokens,
    cost and latency (priced from estimated tokens, the record's real cost never learned). The reply now waits for
    the record's commit, as with `--workers N`. Here another replica's write holds the log's lock while the
    upstream answers: the reply comes only once the record could be committed."""
    monkeypatch.setenv(KEY_ENV, KEY)
    with serving(FakeUpstream(seed=3)) as fake:
        fake.set("fake-coder", "slow", 0.6)  # the call lasts 0.6 s: the lock is taken meanwhile
        spec = ModelSpec("fake-coder", 1.0, 2.0, tags={"family": "fake"}, base_url=fake.url + "/v1",
                         api_key_env=KEY_ENV)
        server = ServerThread(create_app(Settings(db=DatabaseURL(pg_url), models=(spec,), seed=7)))
        try:
            url = server.wait_ready()
            replied: list[tuple[float, httpx.Response]] = []

            def chat() -> None:
                reply = httpx.post(url + "/v1/chat/completions", timeout=30,
                                   json={"model": "router", "messages": [{"role": "user", "content": "hi"}]})
                replied.append((time.monotonic(), reply))

            asking = threading.Thread(target=chat)
            asking.start()
            with psycopg.connect(pg_url, autocommit=True) as other:
                _wait_for(lambda: other.execute("SELECT count(*) FROM decisions").fetchone() == (1,))
                other.execute("SELECT pg_advisory_lock(%s)", (LOG_LOCK,))  # another replica's write, for 1.2 s
                time.sleep(1.2)
                released = time.monotonic()
                other.execute("SELECT pg_advisory_unlock(%s)", (LOG_LOCK,))
                asking.join(30)
                (answered, reply), = replied
                assert reply.status_code == 200, reply.text
                assert answered >= released  # not while the record could not be committed
                calls = other.execute("SELECT status FROM calls").fetchall()
            assert calls == [("ok",)]
        finally:
            server.stop()


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_model_being_retired_or_added_back_is_always_found_by_its_name() -> None:
    """`Router.spec` (the gateway prices an answered call with it) runs on the event loop while the writer thread
    retires a model or adds it back: it read the active models, then the retired ones, without the router's lock,
    and a retirement landing between the two reads made it `UnknownModel` for a model that exists (the call was
    paid, its reply and call record lost). With the thread switch interval at 1 µs the writer lands there about once
    per 2,000 lookups (≈ 500 times in the second this runs, without the lock), never with it."""
    router = build_router(Settings(seed=1), seed=1)
    spec = router.models[-1]
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            router.retire_model(spec.name)
            router.add_model(spec)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    writer = threading.Thread(target=churn)
    writer.start()
    missed = looked = 0
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            looked += 1
            try:
                assert router.spec(spec.name) == spec
            except UnknownModel:
                missed += 1
    finally:
        stop.set()
        writer.join(10)
        sys.setswitchinterval(interval)
    assert looked > 10_000 and missed == 0


@pytest.mark.parametrize("read_first", [False, True], ids=["refused-then-read", "read-then-refused"])
@pytest.mark.parametrize("winner", ["this process", "another process"])
def test_a_decision_id_sent_twice_is_booked_once_by_a_process_sharing_the_log(
    tmp_path: Path, winner: str, read_first: bool
) -> None:
    """With workers or replicas each process books its own decisions when made and the others' when it reads them
    from the log (`mine`: skip its own there). A client's id sent twice at once: one request stored, the other
    refused (409) and taken back (`unbook`). The stored one is this process's or another's, and the process reads
    it from the log before or after the refusal comes back: in every order it is booked exactly once (taking back
    the refused one's use of the id dropped the winner's too, which was then booked again from the log)."""
    store = open_store(tmp_path / "shared.db")
    store.prepare()
    try:
        pacer = BudgetPacer(BudgetConfig.from_mapping({"avg_cost_usd": 0.001}))
        state = BudgetState(store, pacer, shared=True)
        with store.write() as tx:
            state.start_following(tx)
        router = build_router(Settings(seed=1), seed=1)
        router.pacer = pacer  # books each decision as it is made
        mine = [router.route(Request(prompt="one request, sent twice", decision_id="sent-twice"))]
        state.mine("sent-twice")
        if winner == "this process":
            mine.append(router.route(Request(prompt="one request, sent twice", decision_id="sent-twice")))
            state.mine("sent-twice")
            stored = mine[0]
        else:  # another worker's decision, booked by its own pacer
            stored = build_router(Settings(seed=2), seed=2).route(Request(prompt="the other", decision_id="sent-twice"))
        with store.write() as tx:
            tx.insert_decisions([(stored, None, None)])

        def read_the_log() -> None:
            state._next_decisions = 0.0
            state.follow_decisions()

        if read_first:
            read_the_log()
        state.unbook(mine[-1])  # the 409
        read_the_log()
        assert pacer.report()["global"]["requests"] == 1 and not state._own
    finally:
        store.close()
