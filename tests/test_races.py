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
from bandit_router.config.sections import ServerSettings
from bandit_router.errors import UnknownModel
from bandit_router.log import build_router
from bandit_router.service import create_app
from bandit_router.service.engine import Engine
from bandit_router.service.exceptions import Conflict
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


def test_a_route_refused_for_a_taken_decision_id_moves_nothing_in_the_pacer(tmp_path: Path) -> None:
    """Taking a refused decision's booking back (the previous fix) left the step it made to λ and μ and its arrival
    in the gap estimate, and it subtracted from whatever period and target were current when the 409 came back: a
    period rolled over, a PUT or a new tenant scope in between made the spend negative (and a restart then read the
    budget as used up). A decision whose id the client chose is now booked only once stored: the pacer's whole state
    is the same after four refused retries as before them."""
    budgets = {"avg_cost_usd": 0.001, "spend_usd": "1/1d", "share": {"tier=large": 0.3}}
    prepared = open_store(tmp_path / "race.db")
    prepared.prepare()
    prepared.close()
    engine = Engine(Settings(db=tmp_path / "race.db", seed=3, budgets=BudgetConfig.from_mapping(budgets)))
    try:
        engine.start()
        _wait_for(lambda: engine.ready)
        request = Request(prompt="the same request, sent again " * 20, decision_id="client-chosen-2")

        async def send(times: int) -> None:
            for _ in range(times):
                with pytest.raises(Conflict):
                    await engine.route(request)

        asyncio.run(engine.route(request))
        before = engine.pacer.state()
        assert engine.pacer.report()["global"]["requests"] == 1
        asyncio.run(send(4))
        assert engine.pacer.state() == before
    finally:
        engine.stop()


def test_a_shadows_pmf_books_nothing_when_a_promotion_made_it_live(tmp_path: Path) -> None:
    """Each stored decision gets its shadows' pmfs (`PolicySet.shadow_pmfs`, outside the promotion lock). A promotion
    landing meanwhile hands the shadow the budget pacer, and its `decide` then booked a decision nobody made (two
    booked for one). The shadows' pmfs are computed without booking."""
    shadow = "fixed:gpt-4o-mini"
    engine = Engine(Settings(db=tmp_path / "race.db", seed=3, shadow_policies=(shadow,)))
    try:
        pacer = BudgetPacer(BudgetConfig.from_mapping({"avg_cost_usd": 0.001}))
        decision = engine.policies.live.route(Request(prompt="a decision with a shadow"))
        engine.policies.shadows[shadow].pacer = pacer  # as the promotion hands it over, while the pmfs are computed
        assert shadow in engine.policies.shadow_pmfs(decision)
        assert pacer.report()["global"]["requests"] == 0
    finally:
        engine.store.close()


def test_on_replicas_a_gateway_reply_waits_until_its_call_record_is_committed(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica (one worker on a shared PostgreSQL database) answered a chat completion before its call record was
    committed, as a single process may (its writer runs the record before any later feedback). A feedback that the
    load balancer sends to another replica right after the reply was then committed first, without the call's tokens,
    cost and latency (priced from estimated tokens, the record's real cost never learned). The reply now waits for
    the record's commit, as with `--workers N`. Here another replica's write holds the log's lock while the
    upstream answers (it answers only once the lock is taken): the reply comes only once the record could be
    committed."""
    monkeypatch.setenv(KEY_ENV, KEY)
    locked = threading.Event()
    with serving(FakeUpstream(seed=3)) as fake:
        answer = fake.complete

        async def answer_once_locked(*args: Any) -> None:  # the upstream answers only once the lock is taken
            while not locked.is_set():
                await asyncio.sleep(0.01)
            await answer(*args)

        monkeypatch.setattr(fake, "complete", answer_once_locked)
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
                locked.set()
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
    churned = [0]

    def churn() -> None:
        while not stop.is_set():
            router.retire_model(spec.name)
            router.add_model(spec)
            churned[0] += 1

    interval = sys.getswitchinterval()
    writer = threading.Thread(target=churn)
    missed = looked = 0
    try:
        sys.setswitchinterval(1e-6)
        writer.start()
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
    assert looked > 10_000 and churned[0] > 1_000 and missed == 0  # (the churn ran throughout, not dead)


@pytest.mark.parametrize("read_first", [False, True], ids=["refused-then-read", "read-then-refused"])
@pytest.mark.parametrize("winner", ["this process", "another process"])
def test_a_decision_id_sent_twice_is_booked_once_as_stored_by_every_process_sharing_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, winner: str, read_first: bool
) -> None:
    """Two workers on one log, each booking its own decisions and the other's when it reads them from the log. A
    client's id sent twice at once: one request stored, the other refused (409). The refused one was booked when
    decided, then taken back; but when its process read the stored decision (another's) from the log before its
    409 came back, it took that decision for its own and kept the refused one's booking in its place: another
    model, another cost, so its spend then differed from the other worker's for good (a real cost corrects the
    stored decision's booking). A decision whose id the client chose is now booked only once stored, so every
    order books the stored decision, once, in both processes."""
    budgets = BudgetConfig.from_mapping({"avg_cost_usd": 0.001, "spend_usd": "1/1d", "share": {"gpt-4o": 0.3}})
    settings = Settings(db=tmp_path / "shared.db", seed=3, budgets=budgets, server=ServerSettings(workers=2))
    prepared = open_store(tmp_path / "shared.db")
    prepared.prepare()  # the schema, once, before workers (as `serve` does)
    prepared.close()
    engines: list[Engine] = []
    try:
        for _ in range(2):
            engines.append(Engine(settings))
            engines[-1].start()
            _wait_for(lambda: engines[-1].ready)
        me = engines[0]
        other = me if winner == "this process" else engines[1]
        prompt = "one request, sent twice " * 40
        _wait_for(lambda: me.budgets._position is not None)  # it follows the log from here on
        me.budgets._next_decisions = float("inf")  # ... but not before this test says so
        inserts: list[Any] = []
        submit = me.writer.submit

        async def noted(op: Any) -> Any:
            inserts.append(op)
            return await submit(op)

        monkeypatch.setattr(me.writer, "submit", noted)

        def read_the_log() -> None:
            me.budgets._next_decisions = 0.0  # the writer reads the log between its next batches
            _wait_for(lambda: me.budgets._position == 1)

        async def send_twice() -> None:
            stored = await other.route(Request(prompt=prompt, decision_id="sent-twice", models=["gpt-4o-mini"]))
            refused = asyncio.ensure_future(me.route(Request(prompt=prompt, decision_id="sent-twice",
                                                             models=["gpt-4o"])))
            while len(inserts) < (2 if me is other else 1):
                await asyncio.sleep(0)
            await asyncio.sleep(0)  # the loop hands it to the writer (`Writer._flush`)
            if read_first:  # the writer reads the log before the event loop hears of the 409 (held here)
                _wait_for(lambda: inserts[-1].error is not None)  # blocks the loop
                read_the_log()
            with pytest.raises(Conflict):
                await refused
            read_the_log()
            assert stored.model == "gpt-4o-mini"

        asyncio.run(send_twice())
        for engine in engines:
            _wait_for(lambda e=engine: e.budgets._position == 1 and not e.budgets._own)  # type: ignore[misc]
        reports = [engine.pacer.report()["global"] for engine in engines]
        assert [r["requests"] for r in reports] == [1, 1]
        assert reports[0]["spend_usd"] == pytest.approx(reports[1]["spend_usd"], rel=1e-12)
        realised = [[t["realized"] for t in report["targets"]] for report in reports]
        assert realised[0] == pytest.approx(realised[1], rel=1e-12)
        assert [t["realized"] for t in reports[0]["targets"] if t["kind"] == "share"] == [0.0]  # gpt-4o-mini's
    finally:
        for engine in engines:
            engine.stop()
