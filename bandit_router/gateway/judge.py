"""Feedback without a human: a catalog model scores a sample of the gateway's routed answers, off the request path.

    answer ──(sampled at judge_sample_rate, seeded)──► bounded queue ──► judge_concurrency workers
        worker: wait until judge_delay_s after the answer, ask the judge model (rubric as the system message, the
        conversation and the answer as the user message), read the first number of its reply (signed, not glued
        to a word or a name: `cascade.signals.first_number`), quality = clip(number / judge_scale, 0, 1), post it
        as feedback with source = "judge".

Never delays a reply: `offer()` only puts a job in the queue (a full queue drops it: counted in `dropped`).
Precedence: the caller's own feedback wins. A caller's feedback that arrives before the judge's makes the judge's
a conflict, which the judge drops (`overridden`): without calling its model when the decision has any stored
feedback as the delay ends (`answered`: the caller's, or the `default_reward` row of a reward window that closed
first, so with `judge_delay_s` > `reward_window_s` and `default_reward` set every job is dropped so; under
`aggregation = "average"` the judge is called and both are averaged); one that
arrives after the judge's is stored and answered
(status `ignored`: the judge's was already learned; no 409), so set `judge_delay_s` to the time callers usually
take. The judge's calls go through the same `Upstreams` (its model's limits and timeouts) and are priced with the
catalog: `stats()` reports them (calls, failures, tokens, spend). Each call the judge model answered is handed to
`record` (a `JudgeCall`: the scored decision, its tenant, tokens, cost), which the service books in the budgets
and stores, whatever becomes of the score; a failed call costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..cascade.signals import first_number
from ..catalog import ModelSpec
from ..config import Settings
from ..errors import BanditRouterError
from ..log.feedback import JUDGE_SOURCE
from ..store import JudgeCall, JudgeTotals
from ..types import Decision, Outcome, tenant_of
from .pricing import answer_text, estimated, message_text
from .upstreams import UpstreamError, Upstreams

log = logging.getLogger("bandit_router.gateway")

MAX_SHOWN_CHARS = 20_000
"""Characters of the conversation and of the answer shown to the judge (each)."""
JUDGE_DEFAULTS = {"temperature": 0}
"""The judge's request fields unless its catalog entry gives `judge_params`."""

_CUT_SHORT_SAID: set[str] = set()
"""The models `say_if_cut_short` has warned of (once per process each)."""


def say_if_cut_short(model: str, body: Mapping[str, Any]) -> None:
    """Warn, once per model, when a judge's or routing LLM's reply is empty because it hit its token limit
    (`finish_reason = "length"`): a reasoning model spends `max_tokens` thinking, so every such reply reads as
    "not confident" or "no choice". Its catalog entry's `judge_params` sets the fields its calls take."""
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else {}
    if first.get("finish_reason") != "length" or answer_text(body).strip() or model in _CUT_SHORT_SAID:
        return
    _CUT_SHORT_SAID.add(model)
    log.warning("%s answered a judge's or routing LLM's call with nothing but its token limit (finish_reason "
                "'length'): a reasoning model spends max_tokens thinking; give its catalog entry judge_params with "
                "room for the reply (e.g. judge_params = { max_completion_tokens = 2000 }; docs/service/gateway.md)",
                model)


PostFeedback = Callable[[str, Outcome, str], Awaitable[Any]]
RecordJudgeCall = Callable[[JudgeCall], Awaitable[Any]]
HasFeedback = Callable[[str], Awaitable[bool]]


@dataclass(slots=True)
class JudgeStats:
    sampled: int = 0
    dropped: int = 0
    scored: int = 0
    overridden: int = 0
    failed: int = 0
    unreadable: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    spend_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Job:
    decision_id: str
    messages: tuple[Mapping[str, Any], ...]
    answer: str
    ready_at: float
    tenant: str | None = None


def late_scores_warning(settings: Settings) -> str | None:
    """What to say at start when the judge samples answers but every score it gives comes too late to be learned:
    the reward window runs from the decision and the judge's delay from the answer, so with `judge_delay_s` ≥
    `reward_window_s` and no `default_reward` each score is stored `late` (for evaluation), while every call is
    paid. Not refused: a judge kept for evaluation only is a use, and a slow answer is late with a shorter delay
    too. None when nothing is wrong."""
    judge, feedback = settings.judge, settings.feedback
    window = feedback.reward_window_s
    if judge.judge_sample_rate <= 0 or window is None or feedback.default_reward is not None:
        return None
    if judge.judge_delay_s < window:
        return None
    return (f"judge_delay_s ({judge.judge_delay_s:g} s) is not shorter than reward_window_s ({window:g} s): every "
            "score the judge gives arrives after its decision's reward window has closed and is stored late, never "
            "learned, while each of its calls is paid; make judge_delay_s shorter than reward_window_s to learn "
            "from the judge (the docs: service → gateway, the judge)")


@dataclass
class Judge:
    """The judge loop. `start()` in the app's lifespan, `offer()` per answer, `stop()` at shutdown."""

    settings: Settings
    spec: ModelSpec
    upstreams: Upstreams
    post: PostFeedback
    record: RecordJudgeCall | None = None
    """Told of every call the judge model answered (the service: budgets and the `judge_calls` table)."""
    answered: HasFeedback | None = None
    """Whether the decision has feedback already, any stored row: the caller's or a closed window's `default_reward`
    (the service: a store read). A job whose decision has it when its delay is over is dropped as `overridden`
    without a call, whose score could only be a conflict or never learned;
    None (always called) under `aggregation = "average"`, which averages the judge's score with the caller's."""
    seed: int | None = None
    stats: JudgeStats = field(default_factory=JudgeStats)

    def __post_init__(self) -> None:
        config = self.settings.judge
        self.rate = config.judge_sample_rate
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=config.judge_queue)
        self._rng = random.Random(self.seed)
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        warning = late_scores_warning(self.settings)
        if warning is not None:
            log.warning("%s", warning)
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(self.settings.judge.judge_concurrency)]

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    def offer(self, decision: Decision, messages: Sequence[Mapping[str, Any]], answer: str) -> None:
        """Maybe queue `answer` for scoring (never blocks)."""
        if self.rate <= 0 or self._rng.random() >= self.rate:
            return
        self.stats.sampled += 1
        tenant = tenant_of(decision.context.attributes.get("tenant"))
        job = Job(decision.decision_id, tuple(messages), answer,
                  time.monotonic() + self.settings.judge.judge_delay_s, tenant)
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.stats.dropped += 1

    def prompt(self, job: Job) -> list[dict[str, str]]:
        """The judge's messages: the rubric, then the conversation and the answer to grade."""
        conversation = "\n".join(f"{m.get('role')}: {message_text(m.get('content'))}" for m in job.messages)
        return [
            {"role": "system", "content": self.settings.judge.judge_rubric},
            {"role": "user", "content": f"Conversation:\n{conversation[-MAX_SHOWN_CHARS:]}\n\n"
                                        f"Answer to grade:\n{job.answer[:MAX_SHOWN_CHARS]}"},
        ]

    def quality(self, reply: str) -> float | None:
        """The first number of the judge's reply (signed, not one glued to a word or a name: `cascade.signals.
        first_number`, a cascade's judge's rule) over `judge_scale`, clipped to [0, 1]; None without a number."""
        number = first_number(reply)
        return None if number is None else min(1.0, max(0.0, number / self.settings.judge.judge_scale))

    async def score(self, job: Job) -> float | None:
        messages = self.prompt(job)
        deadline = time.monotonic() + self.settings.gateway.deadline_s
        try:
            request = {"messages": messages, **self.spec.judge_request(JUDGE_DEFAULTS)}
            reply = await self.upstreams.complete(self.spec.name, request, deadline)
        except UpstreamError as exc:
            self.stats.failed += 1
            log.info("judge call failed: %s", exc)
            return None
        text = answer_text(reply.body)
        say_if_cut_short(self.spec.name, reply.body)
        usage = reply.usage or estimated(messages, text)
        cost = usage.cost_usd(self.spec)
        self.stats.input_tokens += usage.input_tokens
        self.stats.output_tokens += usage.output_tokens
        self.stats.spend_usd += cost
        if self.record is not None:
            try:
                await self.record(JudgeCall(job.decision_id, job.tenant, self.spec.name, usage.input_tokens,
                                            usage.output_tokens, cost, time.time()))
            except BanditRouterError as exc:  # the database is unavailable: booked here, not stored
                log.warning("judge call for %s not stored: %s", job.decision_id, exc)
        quality = self.quality(text)
        if quality is None:
            self.stats.unreadable += 1
        return quality

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                wait = job.ready_at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if await self._answered(job.decision_id):  # the caller's feedback came first: nothing to pay for
                    self.stats.overridden += 1
                    continue
                quality = await self.score(job)
                if quality is None:
                    continue
                try:
                    await self.post(job.decision_id, Outcome(quality=quality), JUDGE_SOURCE)
                    self.stats.scored += 1
                except BanditRouterError as exc:  # the caller's feedback came first (409), or a late window
                    self.stats.overridden += 1
                    log.debug("judge feedback for %s not stored: %s", job.decision_id, exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.failed += 1
                log.exception("judge job failed")
            finally:
                self.queue.task_done()

    async def _answered(self, decision_id: str) -> bool:
        if self.answered is None:
            return False
        try:
            return await self.answered(decision_id)
        except BanditRouterError:  # not readable now: judged, and the post finds out
            return False

    def report(self) -> dict[str, Any]:
        """This process's counters since it started (and its queue): what `/metrics` exports."""
        return {"model": self.spec.name, "sample_rate": self.rate, "queued": self.queue.qsize(),
                **{k: getattr(self.stats, k) for k in JudgeStats.__dataclass_fields__}}

    def summary(self, stored: JudgeTotals) -> dict[str, Any]:
        """`GET /v1/stats`' `judge`: `calls`, tokens and `spend_usd` are the deployment's (`stored`: the calls
        every process and replica stored in `judge_calls`, as long as retention keeps them); the jobs (sampled,
        dropped, scored, overridden, failed, unreadable, queued) are this process's, and so is `process` (its own
        tokens and spend since it started)."""
        report = self.report()
        own = {k: report.pop(k) for k in ("input_tokens", "output_tokens", "spend_usd")}
        return {**report, "calls": stored.calls, "input_tokens": stored.input_tokens,
                "output_tokens": stored.output_tokens, "spend_usd": stored.spend_usd, "process": own}
