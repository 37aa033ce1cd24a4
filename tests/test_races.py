"""Legitimate operations that interleave: the writer thread applies the log (learning, model events, promotions)
while the event loop decides. Each test makes the interleaving happen at the exact moment it names, so it does not
depend on thread scheduling."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

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
