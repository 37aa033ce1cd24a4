"""The feedback rules as a pure function: `judge` → `Verdict`, and what a closing reward window learns."""

from __future__ import annotations

import pytest

from bandit_router.log import FeedbackRules, Verdict, close_window, judge
from bandit_router.store import FeedbackRecord, FeedbackStatus


def _rec(quality: float, status: FeedbackStatus = FeedbackStatus.APPLIED, *, learn: bool = True) -> FeedbackRecord:
    return FeedbackRecord(
        decision_id="d", received_at=1.0, quality=quality, cost_usd=None, input_tokens=None, output_tokens=None,
        latency_s=None, source=None, status=status, learn=learn, reward=quality, realised_cost_usd=0.0, model="m",
        tenant=None, seq=1,
    )


def _report(quality: float) -> tuple[object, ...]:
    return (quality, None, None, None, None, None)


@pytest.mark.parametrize(
    ("existing", "quality", "received_at", "rules", "verdict"),
    [
        ([], 0.5, 1.0, FeedbackRules(), Verdict.APPLIED),
        ([_rec(0.5)], 0.5, 2.0, FeedbackRules(), Verdict.DUPLICATE),
        ([_rec(0.5)], 0.7, 2.0, FeedbackRules(), Verdict.CONFLICT),
        ([_rec(0.5)], 0.7, 2.0, FeedbackRules(aggregation="earliest"), Verdict.IGNORED),
        ([], 0.5, 100.0, FeedbackRules(reward_window_s=10.0), Verdict.LATE),
        ([], 0.5, 5.0, FeedbackRules(aggregation="average", reward_window_s=10.0), Verdict.PENDING),
        ([_rec(0.5, FeedbackStatus.DEFAULT)], 0.5, 2.0, FeedbackRules(), Verdict.IGNORED),  # not a caller's
    ],
)
def test_judge(
    existing: list[FeedbackRecord], quality: float, received_at: float, rules: FeedbackRules, verdict: Verdict
) -> None:
    assert judge(existing, _report(quality), received_at, 0.0, rules).verdict == verdict


def test_a_closing_window_averages_pending_feedback_else_learns_the_default() -> None:
    rules = FeedbackRules(aggregation="average", reward_window_s=1.0, default_reward=0.25)
    pending = [_rec(0.2, FeedbackStatus.PENDING, learn=False), _rec(0.6, FeedbackStatus.PENDING, learn=False)]
    outcome, status = close_window(pending, rules) or (None, None)
    assert outcome is not None and outcome.quality == pytest.approx(0.4)
    assert status == FeedbackStatus.AGGREGATE
    assert close_window([], rules) is not None
    assert close_window([], FeedbackRules(reward_window_s=1.0)) is None
