"""Named routers in the gateway: a client sends a `[[routers]]` alias as `model` and gets a cascade's accepted
answer, or the model an LLM chose. HTTP stays in `service/gateway_routes.py`; the chain's rules in `chain.py`.

Why one module: answering a named request, recording its decision and counting what it paid share one snapshot of
the request (its models, their arms, the calls made so far); split, each part would take that state as arguments.

Every call is made through the gateway's pooled upstream clients (`gateway.upstreams`) and priced from its usage
(counted when the upstream gives none). One decision is stored per request (two when an LLM router's policy
decision failed, below), before the reply, with one call record whose cost and latency are the *whole* chain's
(every answer, the judge's or the routing LLM's calls), so feedback on `x-decision-id` prices the reward as final
quality − λ·(total cost of the chain). The answer's `bandit_router` field lists every call (model, role, cost,
latency, confidence, error) and every accept/escalate step with its probability. As in the gateway, no call (a
model's, a judge's) is started once the request's deadline leaves no time (`gateway.no_time_left`): a cascade stops
there (`out_of_time` in its field), returns the last answer it got, unjudged and with no step if it came too late
for a judge, or is a 504 when none came. A model never called is neither recorded nor counted as a failed call; for
the logged probabilities below it is as a model after the answer that failed.

**Logged probabilities.** A cascade's decision is logged over its models: `pmf[m]` is the probability that the chain
returned `m`'s answer *given the confidences it observed* (the product of the steps' action probabilities along the
path); the mass of escalating past the last model reached is put on the next one. For a fixed threshold this is 1 on
the answering model. Over all requests, E[1{answer = m}/p(m)] = 1 (IPS over answered models is unbiased) when no
model after m can fail; a failure before m's answer leaves it so. A chain that escalated past m and whose later
models all failed returns m's answer, logged with m's accepting and escalating mass together (given the failures it
saw), while the requests where m accepted saw no failure: where every model after m fails at random with probability
F (the product of their failure probabilities), E[1{answer = m}/p(m)] = 1 + p_escalate(m)·F, a mean over the
requests, not a factor on each (`tests/test_cascade.py`). The steps' own propensities have no such gap: evaluate
escalation on them (`bandit-router evaluate --escalations`, the product of the steps' probabilities). An LLM
router's parsed choice is logged with probability 1 (asked at temperature 0, its choice is a function of the
request; see `llm_router.py`), and so is the model that answered after it failed. Only when the reply names no
candidate does the policy decide; if the policy's model answers, its decision (its pmf, its probability) is stored
and learned by the bandit as usual, with the answer's own cost and latency on its call record (as for the gateway's
routed call); if it fails, its decision is stored as the gateway stores a failed try (`Gateway.store_call`: a call
record of that status, `attempt` 1, and the failure as its feedback, quality `failure_quality`, source "gateway",
learned), and the model that answered after it is logged with probability 1, its call record `attempt` 2 with the
failed try's id as `request_id` (the answer waits for the failed try's writes; if they failed, it is the request's
first try, `attempt` 1). So every policy decision whose model was called is stored, answered or failed: E[Σ
1{stored, A = m}/p(m)] = N for each candidate m over N requests the policy decided (storing only the answered ones
gave N·(1 − f_m), f_m the model's failure rate, and the bandit never learned those failures); a call cut at the
request's deadline is that model's timeout, as a gateway try's. No model is called once the deadline passed (a 504,
as the gateway starts no try after it), and a decision whose model was never called is not stored. A named router's
own decisions are `unrouted` for the bandit (`log.feedback.unrouted`); a learned cascade learns them itself.

**Budgets.** Every call is paid before the decision is stored, so the budget pacer books a request at once at
what its chain paid (`Engine.store_decision` → `log.BudgetState.book_chain`): a named router's own decision at the
chain's whole cost (its `unrouted` feedback never corrects it); the policy's decision an LLM router used like any
routed decision (its expected cost, corrected by its learned feedback) plus the routing call beside it. The
policy's decision is made with `Router.decide(..., book=False)` and booked only once stored: answered, as above;
failed, as a gateway try is (its expected cost, `Engine.store_decision(..., booked=False)`, corrected by its
failure feedback to 0), beside the request's own booking; one whose model was never called (a request refused as
the client's, a shutdown, the request's deadline passed, a retired model not reached) is not stored, and no
process books it, nor one whose write failed. A request no model answered spends what its calls paid
(`Engine.count_router`).

**The chain is stored.** The call record carries the whole chain (`CallRecord.chain`: every call with its model,
role, cost, latency, confidence or error, every accept/escalate step with its propensity, what the chain paid
after each step; no answer text) and is written in the transaction that stores the decision, so any process that
sees the decision sees its chain (`GET /v1/decisions/{id}` shows it).

**Counts** (`GET /v1/stats`, the dashboard): what each request adds to its router's counts (requests, escalations,
calls, failures, spend: `store.router_stats.of_chain` of its chain) is written in the transaction that stores its
decision and chain; a request no model answered stores only its count (an LLM router's failed policy decision is
stored without counts: its call is counted with its request's). A write that fails or is refused keeps the
counts its requests carry and writes them later (`Writer.keep_counts`): the calls were made and paid, whatever
became of the decision. They are read from the database: the deployment's totals, the same from
every worker and replica, kept across restarts. The same counts go to `/metrics` as each request makes them
(`RouterObserver`: this process's, from its start), with the time to answer.

**Learned escalation** learns from the log, not from this process's memory: the first `unrouted` feedback of a
learned cascade's decision, with its stored chain, in feedback `seq` order (`log.escalations`), in every worker
and replica alike; its learners are part of the policy set's checkpoints, so a restart restores them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..config import RouterAlias
from ..errors import BanditRouterError, UnknownModel
from ..gateway.active import decide_among_active
from ..gateway.chat import BadChatRequest
from ..gateway.gateway import Attempt, no_time_left
from ..gateway.judge import say_if_cut_short
from ..gateway.pricing import answer_text, estimated
from ..gateway.upstreams import UpstreamError, UpstreamFailure, UpstreamRejected
from ..hints import quoted_few
from ..ids import new_decision_id
from ..log.escalations import chain_document
from ..log.feedback import unrouted
from ..store import CallRecord, CallStatus, RouterCounts
from ..store.router_stats import FAILED, of_chain
from ..types import Context, Decision, Request
from .chain import CallFailed, CascadeRun, ChainCall, ChainResult, ModelAnswer, Signal, run_cascade
from .escalation import Escalation, ThresholdEscalation
from .llm_router import parse_choice, router_prompt

if TYPE_CHECKING:
    from ..gateway import ChatRequest, Gateway
    from ..service.engine import Engine

log = logging.getLogger("bandit_router.gateway")

OWN_MAX_TOKENS = 20
"""`max_tokens` of a judge's or the routing LLM's call (a score, a model name)."""
OWN_DEFAULTS = {"temperature": 0, "max_tokens": OWN_MAX_TOKENS}
"""A judge's or the routing LLM's request fields unless its catalog entry gives `judge_params`."""


class RouterObserver(Protocol):
    """Told about the named routers' requests (`service.metrics.Metrics`); called on the event loop."""

    def named_request(self, counts: RouterCounts) -> None: ...

    def named_answer(self, router: str, seconds: float) -> None: ...


class UpstreamCallFailed(CallFailed):
    """A call through the gateway's upstreams failed: `error` (its status and HTTP status) after `latency_s`, what a
    gateway call record of it holds."""

    def __init__(self, error: UpstreamError, latency_s: float) -> None:
        super().__init__(str(error))
        self.error, self.latency_s = error, latency_s


class NamedRouterFailed(Exception):
    """No model of a named router answered: `failures` are the upstream errors (502, or 504 on a timeout or when
    the request's deadline passed before a model could be called, `out_of_time`)."""

    def __init__(self, alias: str, failures: Sequence[UpstreamError], *, out_of_time: bool = False) -> None:
        tried = "; ".join(str(f) for f in failures) or "no model could be called"
        late = "; the request's deadline passed before the next model could be called" if out_of_time else ""
        super().__init__(f"{alias}: no model answered: {tried}{late}")
        self.failures = list(failures)
        self.timed_out = out_of_time or (bool(failures) and failures[-1].status == CallStatus.TIMEOUT)


@dataclass(slots=True)
class FailedTry:
    """An LLM router's policy decision whose model failed, being stored (`NamedRouters._store_failed_try`):
    `written` ends once its writes did (or failed); `stored` says whether the decision itself was."""

    decision: Decision
    written: asyncio.Future[Any]
    stored: bool = False


@dataclass(slots=True)
class NamedAnswer:
    """The reply body (OpenAI's shape, `model` = the model that answered), its decision, and the calls made."""

    body: dict[str, Any]
    decision: Decision
    calls: int


class NamedRouters:
    """The `[[routers]]` of the settings, answering through `gateway`'s upstreams and storing through `engine`."""

    def __init__(self, routers: Sequence[RouterAlias], engine: Engine, gateway: Gateway, seed: int | None = None):
        self.routers = {r.name: r for r in routers}
        self.engine, self.gateway = engine, gateway
        self.rng = np.random.default_rng(seed)
        engine.extra_stats["named_routers"] = self.report
        self.observer: RouterObserver | None = None
        """Told of every request (`/metrics`), answered or not, as its counts are made (`_counts`)."""

    def handles(self, model: str) -> bool:
        return model in self.routers

    # -- calling a model ------------------------------------------------------------------------------------------
    def _call(self, chat: ChatRequest, deadline: float, failures: list[UpstreamError]) -> Any:
        """The chain's `call(model, messages, want_logprobs)` over the gateway's upstreams (`UpstreamCallFailed` on
        a failure). A 4xx that blames the request is re-raised for the caller while no model has answered; after an
        answer it is that model's failure (its context window, a parameter it does not take), and the chain keeps
        the answer it has paid for."""
        router = self.engine.router
        answered = False

        async def call(model: str, messages: Sequence[Mapping[str, str]], logprobs: bool) -> ModelAnswer:
            nonlocal answered
            own = messages is not chat.messages  # a judge's or the routing LLM's own prompt
            payload: dict[str, Any] = dict(chat.payload) if not own else {"messages": list(messages)}
            payload.pop("stream", None)
            payload.pop("stream_options", None)
            if own:  # the judge's score or the routing LLM's choice: short, and as deterministic as it gets
                payload.update(router.spec(model).judge_request(OWN_DEFAULTS))
            if logprobs:
                payload["logprobs"] = True
            if not self.gateway.upstreams.has(model):
                failure = UpstreamFailure(model, CallStatus.CONNECTION_ERROR, "no upstream (base_url)")
                failures.append(failure)
                raise UpstreamCallFailed(failure, 0.0)
            started = time.perf_counter()
            try:
                reply = await self.gateway.upstreams.complete(model, payload, deadline)
            except UpstreamRejected as exc:
                latency = time.perf_counter() - started
                self._observe(model, exc.status, latency)
                if exc.blame_request and not own and not answered:
                    raise
                failures.append(exc)
                raise UpstreamCallFailed(exc, latency) from None
            except UpstreamFailure as exc:
                latency = time.perf_counter() - started
                self._observe(model, exc.status, latency)
                failures.append(exc)
                raise UpstreamCallFailed(exc, latency) from None
            text = answer_text(reply.body)
            if own:
                say_if_cut_short(model, reply.body)
            usage = reply.usage or estimated(messages, text)
            cost = usage.cost_usd(router.spec(model))
            self._observe(model, CallStatus.OK, reply.latency_s, cost)
            answered = answered or not own
            return ModelAnswer(
                model, text, cost, reply.latency_s, usage.input_tokens,
                usage.output_tokens, _logprobs(reply.body), payload=(reply.body, usage.source),
            )  # fmt: skip

        return call

    def _observe(self, model: str, status: CallStatus, latency: float, cost: float | None = None) -> None:
        """Count one upstream call (an answer, a judge's score, the routing LLM's choice) in the gateway's
        `/metrics`, like the gateway's own calls (not stored: the request's call record is `_record`'s)."""
        if self.gateway.observer is not None:
            self.gateway.observer(CallRecord(
                decision_id="", request_id="", attempt=1, model=model, routed=False, stream=False,
                status=str(status), http_status=None, input_tokens=None, output_tokens=None, usage=None,
                cost_usd=cost, ttft_s=None, latency_s=latency, error=None, created_at=time.time(),
            ))  # fmt: skip

    # -- answering --------------------------------------------------------------------------------------------------
    async def complete(self, chat: ChatRequest) -> NamedAnswer:
        """Answer `chat` (whose `model` is a named router) and store its decision. A 503 before any call while the
        service refuses requests: the chain is paid before its decision is stored, and could then be neither."""
        started = time.perf_counter()
        answer = await self._complete(chat)
        if self.observer is not None:
            self.observer.named_answer(chat.model, time.perf_counter() - started)
        return answer

    async def _complete(self, chat: ChatRequest) -> NamedAnswer:
        self.engine.require_ready()
        alias = self.routers[chat.model]
        started = time.monotonic()
        deadline = started + self.gateway.config.deadline_s
        request = chat.core_request()
        router = self.engine.router
        arms = {m.name: i for i, m in enumerate(router.models)}  # each arm as of now: a model may retire mid-chain
        active = set(arms)
        models = [m for m in alias.models if m in active]
        _check_allowed(alias, chat, active, models)
        if not models:  # every model of the router retired: a request no model answered, counted as such
            await self._count_unanswered(alias, request, [])
            raise NamedRouterFailed(alias.name, [])
        context = router.featurize(request)
        cost_weight = chat.cost_weight if chat.cost_weight is not None else router.reward_config.cost_weight
        failures: list[UpstreamError] = []
        call = self._call(chat, deadline, failures)
        if alias.strategy == "llm-router":
            return await self._llm_router(alias, chat, request, context, models, arms, cost_weight, call, failures,
                                          deadline)
        escalation: Escalation = (
            self.engine.policies.escalations.rule(alias.name) if alias.strategy == "learned-cascade"
            else ThresholdEscalation(alias.threshold)
        )
        signal = Signal(alias.signal, alias.judge, alias.rubric)

        def next_cost(model: str) -> float:
            """The next model priced for this prompt: the answer just given tells how long an answer is."""
            spec, last = router.spec(model), run.answer
            inp = last.input_tokens if last is not None and last.input_tokens else context.input_tokens
            out = last.output_tokens if last is not None and last.output_tokens else spec.output_tokens or 250.0
            return spec.cost_usd(inp, out)

        run = CascadeRun(models, escalation, context, cost_weight, self.rng, next_cost)
        try:
            result = await run_cascade(run, chat.messages, request.text, call, signal,
                                       out_of_time=lambda: no_time_left(deadline))
        except UpstreamRejected as exc:  # refused before any model answered: the client's 4xx, every call counted
            await self._count_unanswered(
                alias, request, [*run.calls, ChainCall(exc.model, "answer", error=str(exc)[:200])]
            )
            raise
        except asyncio.CancelledError:  # the server stops mid-chain: what was paid so far is counted
            self._count_stopped(alias, request, run.calls)
            raise
        extension = {"router": alias.name, "strategy": alias.strategy, **result.to_json()}
        if result.answer is None:
            await self._count_failed(extension, request)
            raise NamedRouterFailed(alias.name, failures, out_of_time=result.out_of_time)
        pmf = chain_pmf(models, result)
        decision = self._decision(alias, models, arms, pmf, result.answer.model, context, cost_weight)
        chain = chain_document(extension, result.extra_costs())
        record = self._call_record(decision, result.answer, result.cost_usd, result.latency_s, chain, chat.stream)
        await self.engine.store_decision(decision, request, record, self._counts(extension, record.created_at))
        return NamedAnswer(_body(result.answer, extension), decision, result.answer_calls)

    async def _llm_router(
        self,
        alias: RouterAlias,
        chat: ChatRequest,
        request: Request,
        context: Context,
        models: list[str],
        arms: Mapping[str, int],
        cost_weight: float,
        call: Any,
        failures: list[UpstreamError],
        deadline: float,
    ) -> NamedAnswer:
        """The routing LLM's choice, then the models in order until one answers, none started once the request's
        `deadline` (`time.monotonic()`) has passed (a 504: as the gateway, which starts no try after it; a model
        never called is neither stored nor blamed). A shutdown is counted (with the calls made so far) only while
        the upstream calls run, as a cascade's: once `_counts` made the request's counts (stored with its decision,
        or as a request no model answered), a cancellation adds none. The policy's decision whose model failed is
        stored as it fails (`_store_failed_try`), whatever comes after; an answer after it waits for those writes,
        and links to it (`attempt` 2) only if its decision was stored."""
        router = self.engine.router
        specs = [router.spec(m) for m in models]
        descriptions = {s.name: s.description for s in specs if s.description} | dict(alias.descriptions)
        prompt = router_prompt(request.text, specs, descriptions)
        assert alias.router_model is not None
        calls: list[ChainCall] = []
        named: str | None = None
        answer = None
        failed_try: FailedTry | None = None
        out_of_time = False  # a model was left uncalled: the deadline had passed
        try:
            try:
                routing = await call(alias.router_model, [{"role": "user", "content": prompt}], False)
                calls.append(
                    ChainCall(
                        routing.model,
                        "router",
                        routing.cost_usd,
                        routing.latency_s,
                        input_tokens=routing.input_tokens,
                        output_tokens=routing.output_tokens,
                    )
                )
                named, reply = parse_choice(routing.text, models), routing.text
            except CallFailed as exc:
                calls.append(ChainCall(alias.router_model, "router", error=str(exc)[:200]))
                named, reply = None, ""
            # The policy decides only when the routing LLM named no candidate, as a routed request would: with the
            # request's own `cost_weight`, else the budget pacer's λ; the pacer books its decision only once it is
            # stored (its model answered, or failed: `Engine.store_decision`). A model the policy excluded (a
            # budget) has probability 0 and comes last. A candidate may retire while the routing LLM answers: the policy
            # chooses among those still active (none left: the alias's order), and a retired one is tried only
            # after every active one.
            policy = self._policy_choice(context, models, chat.cost_weight) if named is None else None
            if policy is not None:
                p = policy.probabilities
                order = [policy.model,
                         *sorted((m for m in models if m != policy.model), key=lambda m: -p.get(m, 0.0))]
            else:
                order = [m for m in (named, *models) if m is not None]
                order = list(dict.fromkeys(order))  # the named model, then the others in the alias's order
            active = {m.name for m in router.models}
            order.sort(key=lambda m: m not in active)  # stable: the active ones first, in their order
            for model in order:
                if no_time_left(deadline):  # no time left: the model is not called, nor blamed
                    out_of_time = True
                    break
                try:
                    answer = await call(model, chat.messages, False)
                except UpstreamCallFailed as exc:
                    calls.append(ChainCall(model, "answer", error=str(exc)[:200]))
                    if policy is not None and model == policy.model:  # the bandit's try failed: stored as such
                        failed_try = self._store_failed_try(policy, request, exc, chat.stream)
                    continue
                calls.append(
                    ChainCall(
                        model,
                        "answer",
                        answer.cost_usd,
                        answer.latency_s,
                        input_tokens=answer.input_tokens,
                        output_tokens=answer.output_tokens,
                    )
                )
                break
            if failed_try is not None and answer is not None:  # its writes end before the answer's is stored (a
                await asyncio.wait([failed_try.written])  # shutdown meanwhile is counted below; they carry on)
        except UpstreamRejected as exc:  # the request's own fault: the client's 4xx, the routing call counted
            calls.append(ChainCall(exc.model, "answer", error=str(exc)[:200]))
            await self._count_unanswered(alias, request, calls, named)
            raise
        except asyncio.CancelledError:  # the server stops mid-request: what was paid so far is counted
            self._count_stopped(alias, request, calls)
            raise
        if answer is None:
            await self._count_unanswered(alias, request, calls, named)
            raise NamedRouterFailed(alias.name, failures, out_of_time=out_of_time)
        after = failed_try.decision if failed_try is not None and failed_try.stored else None
        total_cost = sum(c.cost_usd for c in calls)
        total_latency = sum(c.latency_s for c in calls)
        if policy is not None and answer.model == policy.model:
            # The policy's own choice, with its own pmf: the bandit learns it as usual, priced like the gateway's
            # routed call (the answer's cost, not the routing LLM's failed or unparsed reply).
            decision, cost, latency = policy, answer.cost_usd, answer.latency_s
        else:  # the named model, or the first that answered after it (or after the policy's pick) failed
            pmf = [1.0 if m == answer.model else 0.0 for m in models]
            decision = self._decision(alias, models, arms, pmf, answer.model, context, cost_weight)
            cost, latency = total_cost, total_latency
        stored = {
            "router": alias.name,
            "strategy": alias.strategy,
            "named": named,
            "calls": [c.to_json() for c in calls],
            "steps": [],
            "answered_by": answer.model,
            "cost_usd": total_cost,
            "latency_s": total_latency,
        }  # the routing LLM's reply text is not stored (it is model output, like an answer)
        record = self._call_record(decision, answer, cost, latency, chain_document(stored, []), chat.stream,
                                   after=after)
        await self.engine.store_decision(decision, request, record, self._counts(stored, record.created_at))
        extension = {
            "router": alias.name,
            "strategy": alias.strategy,
            "named": named,
            "reply": reply[:200],
            "calls": [c.to_json() for c in calls],
            "cost_usd": total_cost,
            "latency_s": total_latency,
        }
        return NamedAnswer(_body(answer, extension), decision, sum(1 for c in calls if c.role == "answer"))

    def _policy_choice(self, context: Context, models: Sequence[str], cost_weight: float | None) -> Decision | None:
        """The policy's decision over those of `models` still active and routable (`decide_among_active`), or None
        when none is left or the router refuses them without a retirement: the routing call is paid, and the
        alias's order still answers."""
        try:
            with self.engine.deciding() as router:  # not while a promotion swaps the live router
                return decide_among_active(router, context, models, cost_weight, book=False)
        except UnknownModel:
            return None

    # -- recording --------------------------------------------------------------------------------------------------
    def _store_failed_try(
        self, decision: Decision, request: Request, failed: UpstreamCallFailed, stream: bool
    ) -> FailedTry:
        """Store the policy's decision whose model failed as the gateway stores a failed try: the decision
        (`Engine.store_decision`), then its call record (`attempt` 1, `routed`, `stream` as the request;
        `Gateway.store_call`) with the failure as its feedback (quality `failure_quality`, source "gateway"),
        learned by the bandit, so the log keeps the policy's failures as well as its answers. A call cut at the
        request's deadline is a timeout learned like any, as the gateway's tries are (only a model never called,
        the deadline passed, is not stored). The pacer books it once stored (it was made with `book=False`), at its
        expected cost, corrected by that feedback to the failed call's cost, 0. Written in a task `Gateway.close()`
        waits for, so a shutdown during the fallback still stores it; the answer after it waits for it too. The
        call is in the request's chain and counts (stored with its answer, or alone), and in `/metrics` already
        (`_call`): the record adds to neither."""
        attempt = Attempt(decision, decision.decision_id, 1, routed=True, stream=stream)
        error = failed.error
        record = self.gateway.call_record(attempt, error.status, None, latency=failed.latency_s, error=str(error),
                                          http_status=error.http_status)

        async def store() -> None:
            await self.engine.store_decision(decision, request, booked=False)
            kept.stored = True
            await self.gateway.store_call(record, decision)

        kept = FailedTry(decision, self.gateway.keep(store()))  # the task runs once this returns
        return kept

    def _decision(
        self,
        alias: RouterAlias,
        models: Sequence[str],
        arms: Mapping[str, int],
        pmf: Sequence[float],
        model: str,
        context: Context,
        cost_weight: float,
    ) -> Decision:
        """The chain's decision: `model` answered with probability `pmf` over `models`. Its arm is the one it had
        when the request came (`arms`): a model retired while its call was in flight still answered and is stored."""
        router = self.engine.router
        costs = tuple(
            router.spec(m).cost_usd(context.input_tokens, router.spec(m).output_tokens or 250.0) for m in models
        )
        return Decision(
            decision_id=new_decision_id(), model=model, arm=arms.get(model, -1), models=tuple(models),
            pmf=tuple(float(p) for p in pmf), probability=float(pmf[list(models).index(model)]),
            policy=f"{alias.strategy}:{alias.name}", policy_version=router.version, cost_weight=cost_weight,
            context=context, expected_cost_usd=costs, created_at=time.time(),
        )  # fmt: skip

    def _call_record(
        self, decision: Decision, answer: ModelAnswer, cost: float, latency: float, chain: str, stream: bool,
        after: Decision | None = None,
    ) -> CallRecord:
        """The request's call record (`attempt` 1: a chain is one request, not a gateway fallback; `attempt` 2
        `after` an LLM router's policy decision whose model failed, stored as the request's first try, whose id is
        then the `request_id`): the answering model, the cost and latency given, whether the request was streamed
        (the upstream calls are not: its answer is relayed as a stream), and the chain. It is stored with
        the decision, in one transaction (`Engine.store_decision`), before the reply: feedback on any worker finds
        both."""
        usage_source = answer.payload[1] if isinstance(answer.payload, tuple) else None
        first = decision if after is None else after
        return CallRecord(
            decision_id=decision.decision_id, request_id=first.decision_id, attempt=1 if after is None else 2,
            model=answer.model, routed=not unrouted(decision.policy),
            stream=stream, status=str(CallStatus.OK), http_status=200, input_tokens=answer.input_tokens,
            output_tokens=answer.output_tokens, usage=usage_source, cost_usd=cost, ttft_s=latency, latency_s=latency,
            error=None, created_at=time.time(), chain=chain,
        )  # fmt: skip

    # -- counting -------------------------------------------------------------------------------------------------
    def _counts(self, chain: dict[str, Any], at: float) -> RouterCounts:
        """What a request adds to its router's counts (`of_chain`), told to the `observer` once: each request makes
        its counts once, answered, failed, refused by an upstream or cut short by a shutdown."""
        counts = of_chain(chain, at)
        if self.observer is not None:
            self.observer.named_request(counts)
        return counts

    async def _count_failed(self, chain: dict[str, Any], request: Request) -> None:
        """Count a request that no model answered (no decision is stored for it; what it paid is spent in the
        budget pacer); a database that cannot take the count now leaves the reply a 502, and the count is written
        later (`Writer.keep_counts`)."""
        try:
            await self.engine.count_router(self._counts(chain, time.time()), request)
        except BanditRouterError as exc:
            log.warning("%s: a failed request's count waits for the database: %s", chain["router"], exc)

    def _count_stopped(self, alias: RouterAlias, request: Request, calls: Sequence[ChainCall]) -> None:
        """Count a request a shutdown cut short, with the calls it made (the answers and scores already paid),
        in a write the gateway's `close()` waits for (the engine stops after it)."""
        self.gateway.keep(self._count_unanswered(alias, request, list(calls)))

    async def _count_unanswered(
        self, alias: RouterAlias, request: Request, calls: Sequence[ChainCall], named: str | None = None
    ) -> None:
        """Count a request no model answered, with the calls it made (paid or failed): every model failed or was
        retired, or an upstream refused the request as its own fault (a 4xx: the client gets it). `named`: an LLM
        router's choice."""
        chain: dict[str, Any] = {"router": alias.name, "strategy": alias.strategy,
                                 "calls": [c.to_json() for c in calls], "steps": [], "answered_by": None}
        if alias.strategy == "llm-router":
            chain["named"] = named
        await self._count_failed(chain, request)

    def report(self) -> dict[str, Any]:
        """Per named router: requests, who answered, escalations, calls, failures, spend (for `GET /v1/stats` and
        the dashboard), from the database (`store.router_stats`): the deployment's totals, the same from every
        worker and replica, kept across restarts and retention. Blocking: call it from a thread pool."""
        totals = {name: RouterCounts(name, -1, FAILED) for name in self.routers}
        answered: dict[str, dict[str, int]] = {name: {} for name in self.routers}
        for row in self.engine.router_counts():
            if row.router in totals:  # not a router configured before and removed since
                totals[row.router].add(row)
                if row.model != FAILED:
                    answered[row.router][row.model] = row.requests
        out: dict[str, Any] = {}
        for name, alias in self.routers.items():
            t = totals[name]
            entry: dict[str, Any] = {
                "strategy": alias.strategy,
                "requests": t.requests,
                "answered_by": answered[name],
                "escalations": t.escalations,
                "escalated_requests": t.escalated_requests,
                "escalation_rate": t.escalated_requests / t.requests if t.requests else 0.0,
                "answer_calls": t.answer_calls,
                "judge_calls": t.judge_calls,
                "router_calls": t.router_calls,
                "failed_calls": t.failed_calls,
                "failed_requests": t.failed_requests,
                "spend_usd": t.spend_usd,
            }
            if alias.strategy == "llm-router":
                entry["parsed"], entry["fallbacks"] = t.parsed, t.fallbacks
            if alias.strategy == "learned-cascade":  # from the log: the same in every worker and replica
                entry["learned_chains"] = self.engine.policies.escalations.learned(name)
            out[name] = entry
        return out


def _check_allowed(alias: RouterAlias, chat: ChatRequest, active: set[str], models: Sequence[str]) -> None:
    """The `models` knob (`chat.models_param`: its field or header) against the router's active `models`: leaving one
    out is a 400 (a named router calls all of its models: a chain's positions, an LLM router's candidates), as is an
    unknown name. The judge and the routing model are the deployment's, not candidates: not the knob's to allow."""
    allowed, param = chat.models, chat.models_param
    if allowed is None:
        return
    unknown = [m for m in allowed if m not in active]
    if unknown:
        raise BadChatRequest(param, f"unknown or retired models {quoted_few(unknown, models)}")
    left_out = [m for m in models if m not in allowed]
    if left_out:
        raise BadChatRequest(param, f"leaves out {', '.join(left_out)}, which the named router {alias.name!r} calls: a "
                             "named router calls all of its models; route among some with the bandit's alias")


def chain_pmf(models: Sequence[str], result: ChainResult) -> list[float]:
    """The logged pmf of a chain over `models` (see the module docstring): the product of the steps' action
    probabilities along the path to each model whose answer it could have returned, the rest on the next model."""
    pmf = dict.fromkeys(models, 0.0)
    mass = 1.0
    for step in result.steps:
        pmf[step.model] += mass * (1.0 - step.p_escalate)  # accepted here
        mass *= step.p_escalate
        if not step.escalate:  # escalating would have gone to the next model
            later = models[models.index(step.model) + 1 :]
            pmf[later[0] if later else step.model] += mass
            mass = 0.0
            break
    if mass > 0 and result.answer is not None:  # escalated at every step: the answer returned (the last, or the
        pmf[result.answer.model] += mass  # last that answered when later models failed)
    total = sum(pmf.values())
    return [pmf[m] / total for m in models]


def _logprobs(body: Mapping[str, Any]) -> tuple[float, ...] | None:
    """The first choice's token log-probabilities (`choices[0].logprobs.content[*].logprob`), None when absent or
    not numbers (an integer too large for a float included: the upstream's JSON is not ours to trust)."""
    try:
        content = body["choices"][0]["logprobs"]["content"]
        values = tuple(float(t["logprob"]) for t in content)
    except (KeyError, IndexError, TypeError, ValueError, OverflowError):
        return None
    return values or None


def _body(answer: ModelAnswer, extension: dict[str, Any]) -> dict[str, Any]:
    body = dict(answer.payload[0]) if isinstance(answer.payload, tuple) else {}
    body["model"] = answer.model
    body["bandit_router"] = extension
    return body


_NOT_COPIED = frozenset({"object", "model", "choices", "usage", "bandit_router", "error"})
"""A completion's top-level fields that `sse_events` does not copy into chunks: set per chunk, or sent in one; and
`error`, which in a chunk is a stream's failure (the openai client raises `APIError`), while the completion was
accepted as an answer."""
_SMALL_TEXT = 256
"""The longest text field of a completion that `sse_events` copies into every chunk (longer: the first only)."""
_OPENAI_SCALARS = frozenset({"id", "created", "system_fingerprint", "service_tier"})
"""OpenAI's own scalar fields of a chunk, on every chunk whatever their length (the openai client reads `id` from
each chunk)."""


def _in_every_chunk(key: str, value: Any) -> bool:
    """Whether a top-level field of a completion goes on every chunk of its stream: OpenAI's own scalars
    (`_OPENAI_SCALARS`) and a provider's short scalar, as OpenAI's stream sends them; an object, an array or another
    text longer than `_SMALL_TEXT` (vLLM's `prompt_logprobs`, `prompt_token_ids`) goes on the first chunk only, as
    vLLM sends it once, so that the stream is not the field times the number of chunks."""
    if isinstance(value, str):
        return key in _OPENAI_SCALARS or len(value) <= _SMALL_TEXT
    return value is None or isinstance(value, (bool, int, float))


def sse_events(body: Mapping[str, Any], include_usage: bool) -> bytes:
    """A buffered completion as OpenAI's stream, every choice of it (a cascade streams only the completion it
    accepted): per choice, one chunk whose delta is its whole message (`tool_calls` numbered by `index`, as streamed
    tool calls are) with its `logprobs`; then the chunk with every choice's `finish_reason` and the `bandit_router`
    field; the usage chunk when the caller asked for it; `[DONE]`. The completion's own top-level fields are
    copied as an upstream's stream of it would send them (`_in_every_chunk`): scalars on every chunk, larger ones on
    the first; never `error`."""
    fields = {k: v for k, v in body.items() if k not in _NOT_COPIED}
    base = {k: v for k, v in fields.items() if _in_every_chunk(k, v)}
    once = {k: v for k, v in fields.items() if k not in base}
    base.update(object="chat.completion.chunk", model=body.get("model"))
    listed = body.get("choices")
    choices = [c for c in listed if isinstance(c, Mapping)] if isinstance(listed, list) else []
    chunks: list[dict[str, Any]] = []
    finishes: list[dict[str, Any]] = []
    for i, choice in enumerate(choices or [{}]):
        index = choice.get("index", i)
        message = choice.get("message")
        message = message if isinstance(message, Mapping) else {}
        delta = {"role": message.get("role", "assistant"), "content": message.get("content", ""),
                 **{k: v for k, v in message.items() if k not in ("role", "content")}}
        if isinstance(delta.get("tool_calls"), list):
            delta["tool_calls"] = [{"index": n, **call} if isinstance(call, Mapping) else call
                                   for n, call in enumerate(delta["tool_calls"])]
        first: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": None}
        if choice.get("logprobs") is not None:
            first["logprobs"] = choice["logprobs"]
        chunks.append({**base, "choices": [first]})
        finishes.append({"index": index, "delta": {}, "finish_reason": choice.get("finish_reason", "stop")})
    chunks[0].update(once)
    chunks.append({**base, "choices": finishes, "bandit_router": body.get("bandit_router")})
    if include_usage and isinstance(body.get("usage"), Mapping):
        chunks.append({**base, "choices": [], "usage": body["usage"]})
    # ASCII-escaped, as the gateway relays chunks: an upstream's JSON may hold half a surrogate pair, not UTF-8
    events = [b"data: " + json.dumps(c, separators=(",", ":")).encode("ascii") + b"\n\n" for c in chunks]
    return b"".join(events) + b"data: [DONE]\n\n"
