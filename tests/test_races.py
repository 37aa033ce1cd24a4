"""Legitimate operations that interleave: the writer thread applies the log (learning, model events, promotions)
while the event loop decides. Each test makes the interleaving happen at the exact moment it names, so it does not
depend on thread scheduling."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from service_client import start_client

from bandit_router.budgets import BudgetConfig, BudgetPacer
from bandit_router.config import Settings
from bandit_router.service.engine import Engine
from bandit_router.types import Decision, Request


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

