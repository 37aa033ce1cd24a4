"""Feedback rules, as pure functions: what a new feedback becomes given the ones its decision already has, what
a closing reward window learns, and how an outcome is priced into a reward (the one place the service does it).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UnknownModel
from ..store import SYSTEM_STATUSES, CallRecord, CallStatus, FeedbackRecord, FeedbackStatus
from ..store.records import CALLER_POLICY as CALLER_POLICY  # re-exported: the policies of unrouted decisions
from ..store.records import NAMED_ROUTER_POLICIES as NAMED_ROUTER_POLICIES
from ..store.records import unrouted as unrouted
from ..types import Decision, Outcome

if TYPE_CHECKING:
    from ..config import Settings
    from ..router import Router


def with_call(outcome: Outcome, call: CallRecord | None) -> Outcome:
    """`outcome` completed from the gateway's record of the call (tokens, cost, latency), for the fields the caller
    left out; the caller's own values win. Only a call that answered (`ok`) completes anything. When the caller
    reports tokens but no cost, the cost is priced from the caller's tokens, not from the call's."""
    if call is None or call.status != CallStatus.OK:
        return outcome
    tokens_given = outcome.input_tokens is not None or outcome.output_tokens is not None
    return Outcome(
        quality=outcome.quality,
        cost_usd=outcome.cost_usd if outcome.cost_usd is not None or tokens_given else call.cost_usd,
        input_tokens=outcome.input_tokens if outcome.input_tokens is not None else call.input_tokens,
        output_tokens=outcome.output_tokens if outcome.output_tokens is not None else call.output_tokens,
        latency_s=outcome.latency_s if outcome.latency_s is not None else call.latency_s,
    )


JUDGE_SOURCE = "judge"
"""The `source` of the LLM judge's feedback (`bandit_router.gateway.judge`). A caller's own feedback after the
judge's is never a conflict: stored (`ignored` once the judge's was learned), answered 200."""


class Verdict(enum.StrEnum):
    """What to do with a new feedback. The first five are stored with that status; the last two are not stored."""

    APPLIED = "applied"
    IGNORED = "ignored"
    LATE = "late"
    PENDING = "pending"
    DUPLICATE = "duplicate"
    """The same report as an earlier feedback: answer with the earlier one."""
    CONFLICT = "conflict"
    """A different report after one, with `aggregation = "reject"`: 409."""

    @property
    def status(self) -> FeedbackStatus:
        return FeedbackStatus(self.value)


@dataclass(frozen=True, slots=True)
class FeedbackRules:
    """The configuration the rules read (`[feedback]` settings)."""

    aggregation: str = "reject"
    """A second, different feedback: `reject` (409), `earliest` (kept, not learned) or `average`."""
    reward_window_s: float | None = None
    default_reward: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> FeedbackRules:
        return cls(settings.feedback.aggregation, settings.feedback.reward_window_s, settings.feedback.default_reward)

    @property
    def sweeps(self) -> bool:
        """Whether closing reward windows writes anything (a default reward, or averages)."""
        return self.reward_window_s is not None and (self.default_reward is not None or self.aggregation == "average")


@dataclass(frozen=True, slots=True)
class Ruling:
    verdict: Verdict
    earlier: FeedbackRecord | None = None
    """The feedback this one duplicates, or the one it conflicts with."""


def judge(
    existing: Sequence[FeedbackRecord], report: tuple[Any, ...], received_at: float, created_at: float,
    rules: FeedbackRules,
) -> Ruling:
    """The verdict on a feedback reporting `report` (`FeedbackRecord.report()`), received at `received_at` for a
    decision made at `created_at` that already has the feedback `existing` (in seq order)."""
    from_callers = [r for r in existing if r.status not in SYSTEM_STATUSES]
    for rec in from_callers:
        if rec.report() == report:
            return Ruling(Verdict.DUPLICATE, rec)
    after_judge = report[-1] != JUDGE_SOURCE and all(r.source == JUDGE_SOURCE for r in from_callers)
    if from_callers and rules.aggregation == "reject" and not after_judge:
        return Ruling(Verdict.CONFLICT, from_callers[0])
    if rules.reward_window_s is not None and received_at > created_at + rules.reward_window_s:
        return Ruling(Verdict.LATE)
    if rules.aggregation == "average":
        return Ruling(Verdict.PENDING)
    if any(r.learn for r in existing):
        return Ruling(Verdict.IGNORED)
    return Ruling(Verdict.APPLIED)


def close_window(existing: Sequence[FeedbackRecord], rules: FeedbackRules) -> tuple[Outcome, FeedbackStatus] | None:
    """What a decision without learned feedback learns when its reward window closes: the average of its pending
    feedback, else the default reward, else nothing."""
    pending = [r for r in existing if r.status == FeedbackStatus.PENDING]
    if pending:
        return average(pending), FeedbackStatus.AGGREGATE
    if rules.default_reward is not None:
        return Outcome(quality=rules.default_reward), FeedbackStatus.DEFAULT
    return None


def average(records: Sequence[FeedbackRecord]) -> Outcome:
    """The mean of several feedbacks for one decision (a field is averaged over the feedbacks that have it)."""

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    def mean_int(values: list[int | None]) -> int | None:
        m = mean([None if v is None else float(v) for v in values])
        return None if m is None else round(m)

    return Outcome(
        quality=min(1.0, max(0.0, sum(r.quality for r in records) / len(records))),
        cost_usd=mean([r.cost_usd for r in records]),
        input_tokens=mean_int([r.input_tokens for r in records]),
        output_tokens=mean_int([r.output_tokens for r in records]),
        latency_s=mean([r.latency_s for r in records]),
    )


def priced(router: Router, decision: Decision, outcome: Outcome) -> tuple[float, float]:
    """(reward, realised cost) of `outcome` for `decision`, with the router's prices and estimates
    (`Router.reward_of`); a model the router no longer has (removed from the catalog file since the decision) costs
    what was reported, else what the decision estimated for it (`expected_cost_usd`), its prices being gone."""
    try:
        cost = router.outcome_cost(decision, outcome)
    except UnknownModel:
        cost = outcome.cost_usd if outcome.cost_usd is not None else estimated_cost(decision)
    return router.reward_of(decision, outcome, cost), cost


def estimated_cost(decision: Decision) -> float:
    """What `decision` estimated its own model would cost when it decided (0 for a decision stored without the
    estimates)."""
    costs = dict(zip(decision.models, decision.expected_cost_usd, strict=False))
    return float(costs.get(decision.model, 0.0))


def feedback_record(
    router: Router, decision: Decision, tenant: str | None, outcome: Outcome, *, received_at: float,
    source: str | None, status: FeedbackStatus,
) -> FeedbackRecord:
    """A feedback row for `decision`, with its reward and realised cost (not yet numbered: `seq` 0)."""
    value, cost = priced(router, decision, outcome)
    return FeedbackRecord(
        decision_id=decision.decision_id,
        received_at=received_at,
        quality=float(outcome.quality),
        cost_usd=outcome.cost_usd,
        input_tokens=outcome.input_tokens,
        output_tokens=outcome.output_tokens,
        latency_s=outcome.latency_s,
        source=source,
        status=status,
        learn=status in (FeedbackStatus.APPLIED, *SYSTEM_STATUSES),
        reward=value,
        realised_cost_usd=cost,
        model=decision.model,
        tenant=tenant,
    )
