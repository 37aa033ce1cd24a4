"""The gateway's request logic: route (or take the caller's model), store the decision, call the upstream, fall
back on failure, and record usage, cost and latency with each decision. HTTP lives in
`service/gateway_routes.py`; calling upstreams in `upstreams.py`.

Why one module: routing, the fallbacks and the recording of one request share its attempts and what they stored;
split, each step would pass that state across modules.

One request, routed (`model = "router"`):

    decision₁ = route(request)            stored before the call (the writer commits it)
    call model₁ ──ok──► answer; the call record (tokens, cost, TTFT, latency) stored with decision₁
        │ failure (timeout, connection error, 5xx/429, invalid reply)
        ▼
    stored: call record (status) + feedback for decision₁: quality = failure_quality (0), source "gateway"
    decision₂ = route(same context, models = the allowed models not yet tried)   its own pmf and probability
    call model₂ …   up to `max_attempts` tries within `deadline_s`, then 502 (or 504 when time ran out)

Every try is a decision sampled from the pmf it logs, so each logged probability is the true probability of its
choice given its allowed set: the failed first choice is an ordinary bandit sample whose reward is the failure's,
and a fallback is a sample over the models not yet tried (linked by `calls.request_id`, `attempt` ≥ 2). A 4xx
from the upstream is the request's fault: passed through, recorded as `rejected`, never learned. A model named by
the caller (`model = "<catalog name>"`) is stored as a decision of policy `caller` (probability 1), never learned,
and gets no fallback (the caller asked for that model); a `models` knob that does not allow it refuses the request,
and so does a `route = false` model (`ModelNotFound`: a judge's or routing LLM's, never an answer to a request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..catalog import ModelSpec
from ..config import Settings
from ..dbguard import RateLimitedLog
from ..errors import InvalidInput, UnknownModel
from ..hints import quoted_few
from ..ids import new_decision_id
from ..log import CALLER_POLICY
from ..router import Router
from ..store import CallRecord, CallStatus
from ..types import Decision, Outcome, Request
from .active import decide_among_active
from .chat import BadChatRequest, ChatRequest
from .judge import Judge
from .pricing import Usage, answer_text, estimated
from .upstreams import (
    Endpoint,
    Reply,
    Stream,
    UpstreamError,
    UpstreamFailure,
    UpstreamRejected,
    Upstreams,
    unreachable,
)

log = logging.getLogger("bandit_router.gateway")

CALL_MARGIN_S = 0.005
"""No call is started with less time than this before the request's deadline (`no_time_left`). The event loop's
timers can end a wait at the deadline a little before `time.monotonic()` reaches it (uvloop's count milliseconds
from the time it cached when the loop's iteration began; a review measured up to 0.95 ms early), and a call
started in that sliver could only time out at once, stored and learned as its model's failure."""


def no_time_left(deadline: float) -> bool:
    """Whether the request's `deadline` (`time.monotonic()`) leaves no time to start another call:
    now ≥ deadline − `CALL_MARGIN_S`."""
    return time.monotonic() >= deadline - CALL_MARGIN_S


FAILURE_SOURCE = "gateway"
"""The `source` of the feedback the gateway stores for a failed call."""
CLOSE_WAIT_S = 5.0
"""How long `Gateway.close()` waits for cancelled requests to unwind and record their calls."""
SERVER_STOPPED = "the server stopped before the call ended"
"""The error of a call cut short by a shutdown (recorded `cancelled`: not the model's failure)."""


class DecisionLog(Protocol):
    """What the gateway needs from the service's engine (`service.engine.Engine`)."""

    settings: Settings
    shared: bool
    """Other processes (workers, replicas) write to the same log."""

    @property
    def router(self) -> Router: ...

    def deciding(self) -> contextlib.AbstractContextManager[Router]: ...

    async def route(self, request: Request) -> Decision: ...

    async def store_decision(self, decision: Decision, request: Request, *, booked: bool = True) -> Decision: ...

    async def record_call(self, record: CallRecord, failure: Outcome | None = None,
                          source: str | None = None, decision: Decision | None = None) -> None: ...


class NoUpstream(InvalidInput):
    """No allowed model has an upstream (`base_url` in the catalog, or `default_base_url`)."""


class ModelNotFound(InvalidInput):
    """The model a request names is not one it may name: neither an alias nor a catalog model with an upstream, or a
    `route = false` model (a judge's or a routing LLM's, the deployment's helpers, never an answer to a request)."""


class GatewayFailed(Exception):
    """Every try failed: 504 when the deadline passed or the last try timed out, else 502."""

    def __init__(self, failures: Sequence[UpstreamError], *, out_of_time: bool) -> None:
        tried = "; ".join(str(f) for f in failures) or "no model was tried"
        super().__init__(f"no model answered ({len(failures)} tried): {tried}")
        self.failures = list(failures)
        self.timed_out = out_of_time or (bool(failures) and failures[-1].status == CallStatus.TIMEOUT)


class Rejected(Exception):
    """The upstream refused the request (4xx): `error` is what the caller gets back."""

    def __init__(self, error: UpstreamRejected, decision: Decision) -> None:
        super().__init__(str(error))
        self.error, self.decision = error, decision


@dataclass(slots=True)
class Attempt:
    """One try: its decision, when it started, and the request it belongs to."""

    decision: Decision
    request_id: str
    number: int
    routed: bool
    stream: bool


@dataclass(slots=True)
class Answer:
    """A non-streamed answer: the body to return (its `model` is the catalog name that answered)."""

    body: dict[str, Any]
    decision: Decision
    attempts: int
    usage: Usage
    cost_usd: float


@dataclass(slots=True)
class StreamAnswer:
    """An open stream whose first chunk arrived: `relay()` yields the SSE bytes and records the call at the end."""

    gateway: Gateway
    attempt: Attempt
    stream: Stream
    first: dict[str, Any]
    chat: ChatRequest
    attempts: int
    finished: bool = field(default=False)
    ended_by: str = "the caller closed the stream"
    """Why a stream that did not reach its end ended (recorded as its `cancelled` call's error)."""

    @property
    def decision(self) -> Decision:
        return self.attempt.decision

    async def abandon(self) -> None:
        """Close and record a stream whose relay never ran to its end (the caller left before it started)."""
        if not self.finished:
            await self._end(CallStatus.CANCELLED, "the caller left before the stream started")

    async def relay(self) -> AsyncGenerator[bytes, None]:
        """The SSE events for the caller: each upstream chunk with `model` set to the catalog name (the usage-only
        chunk only when the caller asked for usage), then `[DONE]`; a failure mid-stream ends the stream with
        an OpenAI error event and is recorded as the model's failure."""
        gw, model = self.gateway, self.decision.model
        try:
            out = gw.chunk_bytes(self.first, model, self.chat.include_usage)
            if out:
                yield out
            async for chunk in self.stream.rest():
                out = gw.chunk_bytes(chunk, model, self.chat.include_usage)
                if out:
                    yield out
            await self._finish(CallStatus.OK, "")  # recorded before the caller sees the end
            yield b"data: [DONE]\n\n"
        except UpstreamFailure as exc:
            await self._finish(exc.status, str(exc))
            body = {"error": {"message": f"the stream broke: {exc}", "type": "upstream_error", "param": None,
                              "code": str(exc.status)}}
            yield b"data: " + json.dumps(body).encode() + b"\n\n"
        finally:
            if not self.finished:  # the caller left, or the server stops
                await self._end(CallStatus.CANCELLED, self.ended_by)

    async def _finish(self, status: CallStatus, error: str) -> None:
        recorded = await self._end(status, error)
        if self.gateway.await_records:
            await asyncio.wait([recorded])

    async def _end(self, status: CallStatus, error: str) -> asyncio.Future[Any]:
        """Record the call, then close the stream. In this order: a caller that leaves while the stream closes
        cancels the relay there (the close itself still runs to its end, `Stream.close`), and the record is
        already on its way."""
        self.finished = True
        self.stream.stop_clock()
        recorded = self.gateway.finish_stream(self, status, error)
        await self.stream.close()
        return recorded


class Gateway:
    """Route, call, fall back, record. Build with `Gateway.build(settings, engine)`; `close()` at shutdown."""

    def __init__(self, engine: DecisionLog, settings: Settings, upstreams: Upstreams) -> None:
        self.engine = engine
        self.settings = settings
        self.config = settings.gateway
        self.upstreams = upstreams
        self._tasks: set[asyncio.Task[Any]] = set()
        self._requests: set[asyncio.Task[Any]] = set()
        self.on_answer: Callable[[Decision, Sequence[Mapping[str, Any]], str], None] | None = None
        """Called with each routed answer (the judge samples from these)."""
        self.judge: Judge | None = None
        self.observer: Callable[[CallRecord], None] | None = None
        """Told about every call record (the service's metrics)."""
        self.await_records = engine.shared
        """Whether a reply waits until its call record is committed (several workers or replicas: see `_record`)."""
        self._say = RateLimitedLog(log)
        """An upstream refusing the gateway's key, or call records not stored (the database down), happen on every
        request until fixed: logged at most once a minute each (per model for a key)."""

    @classmethod
    def build(cls, settings: Settings, engine: DecisionLog, models: Iterable[ModelSpec] = ()) -> Gateway:
        """Endpoints for every catalog model (the settings' catalog: the upstream keys of today's file, not of a
        checkpoint) and for models added at run time (with `default_base_url`): the router's, and `models` (the
        live catalog's, known before the recovery has applied the log), retired ones too: never routed to, but a
        judge or a named router the configuration names may still call one (`Settings.check_catalog`)."""
        specs: dict[str, ModelSpec] = {m.name: m for m in (*models, *engine.router.models)}
        specs.update({m.name: m for m in settings.load_catalog()})
        endpoints = [e for e in (cls._endpoint(settings, s) for s in specs.values()) if e is not None]
        limit = settings.gateway.max_upstream_response_bytes
        return cls(engine, settings, Upstreams(endpoints, max_response_bytes=limit))

    @staticmethod
    def _endpoint(settings: Settings, spec: ModelSpec) -> Endpoint | None:
        g = settings.gateway
        return Endpoint.of(spec, default_base_url=g.default_base_url, default_api_key_env=g.default_api_key_env,
                           timeout_s=g.upstream_timeout_s, connect_timeout_s=g.upstream_connect_timeout_s,
                           max_concurrency=g.upstream_max_concurrency)

    @classmethod
    def unreachable(cls, settings: Settings, spec: ModelSpec, environ: Mapping[str, str] | None = None) -> str | None:
        """Why a gateway built with `settings` in this environment would not call `spec` (None: it would),
        known before it is built: `bandit-router serve` checks the judge's and named routers' models with it."""
        return unreachable(cls._endpoint(settings, spec), os.environ if environ is None else environ)

    def _no_upstream(self) -> str:
        keyless = self.upstreams.keyless
        if keyless:
            needed = sorted(set(keyless.values()))
            return (f"no catalog model can be called: set {' or '.join(needed)} (the api_key_env of "
                    f"{', '.join(keyless)}), or give models a base_url")
        return "no catalog model has an upstream: give models a base_url, or set default_base_url"

    async def close(self) -> None:
        """Wait (at most `CLOSE_WAIT_S`) for the requests still in flight, which a shutdown has cancelled: they
        record their calls as they unwind; then for every record being written; then close the upstream clients."""
        requests = [t for t in self._requests if t is not asyncio.current_task()]
        if requests:
            await asyncio.wait(requests, timeout=CLOSE_WAIT_S)
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._say.flush()
        await self.upstreams.aclose()

    def track(self) -> None:
        """Count the current task (a chat request's) as in flight until it ends: `close()` waits for it."""
        task = asyncio.current_task()
        if task is not None and task not in self._requests:
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)

    def keep(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        """Run `coroutine` (a write) in a task that `close()` waits for."""
        return self._spawn(coroutine)

    # -- which models can be called ---------------------------------------------------------------------------
    def callable_models(self) -> list[str]:
        """The active models with an upstream, in arm order (a model added at run time gets one from
        `default_base_url` when it is first needed)."""
        out = []
        for spec in self.engine.router.models:
            if (not self.upstreams.has(spec.name) and spec.name not in self.upstreams.keyless
                    and self.config.default_base_url is not None):
                endpoint = self._endpoint(self.settings, spec)
                if endpoint is not None:
                    self.upstreams.add(endpoint)
            if self.upstreams.has(spec.name):
                out.append(spec.name)
        return out

    def _allowed(self, chat: ChatRequest) -> tuple[str, ...] | None:
        """The models a routed request may go to: its `models` knob (or all), less those without an upstream;
        None when that is every active model (the router's own default). A knob that names an unknown model, or
        no model with an upstream, is a `BadChatRequest` naming where the knob came from."""
        callable_ = self.callable_models()
        if chat.models is None:
            routable = [m.name for m in self.engine.router.models if m.route]
            reachable = [m for m in callable_ if m in routable]
            if not reachable:  # the deployment's setup, not the request: a 503, as with no upstream at all
                only = sorted(set(callable_) - set(reachable))
                raise NoUpstream(self._no_upstream() if not only else
                                 f"no routable catalog model has an upstream (only route = false models do: "
                                 f"{', '.join(only[:5])}): give a routable model a base_url, or set default_base_url")
            return None if len(reachable) == len(routable) else tuple(reachable)
        self._check_knob(chat)
        allowed = tuple(m for m in chat.models if m in callable_)
        if not allowed:
            raise BadChatRequest(chat.models_param, "none of these models has an upstream (base_url)")
        return allowed

    def _check_knob(self, chat: ChatRequest) -> None:
        """The request's `models` knob names only active models (else a 400 naming where it came from)."""
        models = self.engine.router.models
        active = {m.name for m in models}
        unknown = [m for m in chat.models or () if m not in active]
        if unknown:
            routable = [m.name for m in models if m.route]  # a hint the request can take
            raise BadChatRequest(chat.models_param, f"unknown or retired models {quoted_few(unknown, routable)}")

    # -- the first decision -----------------------------------------------------------------------------------
    async def _first(self, chat: ChatRequest) -> tuple[Attempt, Request]:
        if chat.routed:
            request = chat.core_request()
            allowed = self._allowed(chat)
            if allowed is not None:
                request = Request(messages=request.messages, context=request.context, models=allowed,
                                  cost_weight=request.cost_weight)
            decision = await self._route(chat, request)
        else:
            if chat.model in self.upstreams.keyless:
                raise NoUpstream(f"model: {chat.model!r} is called with the key in "
                                 f"{self.upstreams.keyless[chat.model]}, which is not set")
            if chat.model not in [m.name for m in self.engine.router.models] or chat.model not in \
                    self.callable_models():
                raise ModelNotFound(f"model: {chat.model[:200]!r} is neither {self.config.router_alias!r} nor a "
                                    "catalog model with an upstream")
            if not self.engine.router.spec(chat.model).route:  # what `route = false` means: never an answer
                raise ModelNotFound(f"model: {chat.model!r} has route = false in the catalog (a judge or routing "
                                    "model of this deployment only): requests cannot name it; name a routable model "
                                    f"or {self.config.router_alias!r}")
            if chat.models is not None:  # the knob restricts the models a request may go to: the named one too
                self._check_knob(chat)
                if chat.model not in chat.models:
                    raise BadChatRequest(chat.models_param, f"does not allow {chat.model!r}, the model this request "
                                         f"names (model); name an allowed one, or route among them with "
                                         f"{self.config.router_alias!r}")
            request = chat.core_request()
            decision = self.caller_decision(request, chat.model)
            await self.engine.store_decision(decision, request)
        return Attempt(decision, decision.decision_id, 1, chat.routed, chat.stream), request

    async def _route(self, chat: ChatRequest, request: Request) -> Decision:
        """The first decision for a routed request whose allowed models `_allowed` listed. The router decides a moment
        later (`Engine.route` batches a loop iteration's requests), so a model retired in between is left out and
        the request routed again among the rest, as if it had come after the retirement minus that model: never
        a 400 blaming a knob the caller did not send, or one that named only active models when it arrived. A knob
        whose models are none routable (`route = false`), or were all retired, is the knob's 400. As in
        `decide_among_active`, the models are listed again, and the same list means the error is not a retirement."""
        while True:
            try:
                return await self.engine.route(request)
            except UnknownModel as exc:
                if chat.models is None:  # the gateway's own list (the routable models with an upstream)
                    allowed = self._allowed(chat)
                else:  # the knob's models still active (the router refuses those with route = false)
                    active = {m.name for m in self.engine.router.models}
                    allowed = tuple(m for m in request.models or () if m in active)
                    if not allowed:
                        raise BadChatRequest(chat.models_param, f"every model it allows was retired: {exc}") from None
                if allowed == request.models:  # not a retirement
                    if chat.models is None:
                        raise
                    raise BadChatRequest(chat.models_param, str(exc)) from None
                request = Request(messages=request.messages, context=request.context, models=allowed,
                                  cost_weight=request.cost_weight)

    def caller_decision(self, request: Request, model: str) -> Decision:
        """The stored record of a call to a model the caller named: probability 1, policy `caller`. A model retired
        since `_first` checked it (the writer thread applies a retirement at any moment) is a 404 `ModelNotFound`,
        as for a request that came after the retirement."""
        router = self.engine.router
        spec = router.spec(model)
        context = router.featurize(request)
        arm = {m.name: i for i, m in enumerate(router.models)}.get(model)  # one snapshot of the active models
        if arm is None:
            raise ModelNotFound(f"model: {model!r} was retired (DELETE /v1/models) while this request was in flight: "
                                f"name an active catalog model or {self.config.router_alias!r}")
        cost = spec.cost_usd(context.input_tokens, spec.output_tokens or 250.0)
        return Decision(
            decision_id=new_decision_id(), model=model, arm=arm, models=(model,), pmf=(1.0,), probability=1.0,
            policy=CALLER_POLICY, policy_version=router.version,
            cost_weight=request.cost_weight if request.cost_weight is not None else router.reward_config.cost_weight,
            context=context, expected_cost_usd=(cost,), created_at=time.time(),
        )

    async def _next(self, attempt: Attempt, request: Request, tried: list[str]) -> Attempt | None:
        """The fallback after `attempt` failed: a new decision over the allowed routable models not yet tried and
        still active, listed again if a retirement lands before the decision (`decide_among_active`); None when
        there is none (a judge or router model, `route = false`, is never a fallback)."""
        if not attempt.routed:
            return None
        pool = request.models if request.models is not None else tuple(self.callable_models())
        untried = [m for m in pool if m not in tried and self.upstreams.has(m)]
        with self.engine.deciding() as router:  # not while a promotion swaps the live router
            decision = decide_among_active(router, attempt.decision.context, untried, request.cost_weight, book=False)
        if decision is None:
            return None
        await self.engine.store_decision(decision, request, booked=False)  # booked as it is stored
        return Attempt(decision, attempt.request_id, attempt.number + 1, True, attempt.stream)

    # -- tries ------------------------------------------------------------------------------------------------
    async def _tries(
        self, chat: ChatRequest, call: Callable[[Attempt, float], Coroutine[Any, Any, Any]]
    ) -> tuple[Attempt, Any]:
        deadline = time.monotonic() + self.config.deadline_s
        attempt: Attempt | None
        attempt, request = await self._first(chat)
        failures: list[UpstreamError] = []
        tried: list[str] = []
        while attempt is not None:
            started = time.perf_counter()
            try:
                return attempt, await call(attempt, deadline)
            except UpstreamRejected as exc:
                self._record(attempt, exc.status, started, error=str(exc), http_status=exc.http_status)
                if exc.blame_request:
                    raise Rejected(exc, attempt.decision) from None
                self._say(f"key {exc.model}", logging.WARNING, "%s (check the model's api_key_env)", exc)
                failures.append(exc)
            except UpstreamFailure as exc:
                self._record(attempt, exc.status, started, error=str(exc), http_status=exc.http_status)
                failures.append(exc)
            except asyncio.CancelledError:  # the server stops: its grace for requests in flight ran out
                self._record(attempt, CallStatus.CANCELLED, started, error=SERVER_STOPPED)
                raise
            tried.append(attempt.decision.model)
            if attempt.number >= self.config.max_attempts or no_time_left(deadline):
                break
            attempt = await self._next(attempt, request, tried)
        raise GatewayFailed(failures, out_of_time=no_time_left(deadline))

    async def complete(self, chat: ChatRequest) -> Answer:
        """A non-streamed answer (raises `GatewayFailed`, `Rejected`, `NoUpstream`)."""

        async def call(attempt: Attempt, deadline: float) -> Reply:
            return await self.upstreams.complete(attempt.decision.model, chat.payload, deadline)

        attempt, reply = await self._tries(chat, call)
        decision = attempt.decision
        body = reply.body
        answer = answer_text(body)
        usage = reply.usage or estimated(chat.messages, answer)
        cost = usage.cost_usd(self.engine.router.spec(decision.model))
        body["model"] = decision.model
        recorded = self._record(attempt, CallStatus.OK, None, usage=usage, cost=cost, latency=reply.latency_s,
                                ttft=reply.latency_s)
        if self.await_records:
            await asyncio.wait([recorded])  # neither raises nor cancels the record
        if chat.routed and self.on_answer is not None:
            self.on_answer(decision, chat.messages, answer)
        return Answer(body, decision, attempt.number, usage, cost)

    async def open_stream(self, chat: ChatRequest) -> StreamAnswer:
        """A stream whose first chunk has arrived (failures before it fall back like a non-streamed call)."""
        payload = chat.upstream_payload()

        async def call(attempt: Attempt, deadline: float) -> tuple[Stream, dict[str, Any]]:
            stream = await self.upstreams.stream(attempt.decision.model, payload, deadline)
            try:
                return stream, await stream.first()
            except BaseException:
                await stream.close()
                raise

        attempt, (stream, first) = await self._tries(chat, call)
        return StreamAnswer(self, attempt, stream, first, chat, attempt.number)

    @staticmethod
    def chunk_bytes(chunk: dict[str, Any], model: str, include_usage: bool) -> bytes:
        """One SSE event for the caller; b"" for the usage-only chunk the caller did not ask for."""
        if not include_usage and "usage" in chunk:
            if not chunk.get("choices"):
                return b""
            chunk = {k: v for k, v in chunk.items() if k != "usage"}
        chunk["model"] = model
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode("utf-8") + b"\n\n"

    def finish_stream(self, answer: StreamAnswer, status: CallStatus, error: str) -> asyncio.Future[Any]:
        """Record a stream that ended (answered, failed mid-stream, or closed by the caller)."""
        stream = answer.stream
        text = "".join(stream.text)
        usage = stream.usage or estimated(answer.chat.messages, text)
        decision = answer.decision
        cost = usage.cost_usd(self.engine.router.spec(decision.model))
        recorded = self._record(answer.attempt, status, None, usage=usage, cost=cost, latency=stream.latency_s,
                                ttft=stream.ttft_s, error=error or None)
        if status == CallStatus.OK and answer.chat.routed and self.on_answer is not None:
            self.on_answer(decision, answer.chat.messages, stream.answer())
        return recorded

    # -- recording --------------------------------------------------------------------------------------------
    def _record(self, attempt: Attempt, status: CallStatus, started: float | None, *, usage: Usage | None = None,
                cost: float | None = None, latency: float | None = None, ttft: float | None = None,
                error: str | None = None, http_status: int | None = None) -> asyncio.Future[Any]:
        """Store the call record (and, for a failure, the failure as feedback) without delaying the reply: the
        writer runs operations in the order they were submitted, so a feedback the caller sends to this process
        after this reply finds the record. With several workers or replicas a feedback may reach another one first, so
        there the reply waits for the commit (`await_records`)."""
        record = self.call_record(attempt, status, started, usage=usage, cost=cost, latency=latency, ttft=ttft,
                                  error=error, http_status=http_status)
        if self.observer is not None:
            self.observer(record)
        return self._spawn(self.store_call(record, attempt.decision))

    @staticmethod
    def call_record(attempt: Attempt, status: CallStatus, started: float | None, *, usage: Usage | None = None,
                    cost: float | None = None, latency: float | None = None, ttft: float | None = None,
                    error: str | None = None, http_status: int | None = None) -> CallRecord:
        """The record of `attempt`'s call, ended with `status` (its latency since `started` unless given)."""
        if latency is None and started is not None:
            latency = time.perf_counter() - started
        decision = attempt.decision
        return CallRecord(
            decision_id=decision.decision_id, request_id=attempt.request_id, attempt=attempt.number,
            model=decision.model, routed=attempt.routed, stream=attempt.stream, status=str(status),
            http_status=http_status if http_status is not None else (200 if status == CallStatus.OK else None),
            input_tokens=None if usage is None else usage.input_tokens,
            output_tokens=None if usage is None else usage.output_tokens,
            usage=None if usage is None else usage.source, cost_usd=cost, ttft_s=ttft, latency_s=latency,
            error=None if error is None else error[:500], created_at=time.time(),
        )

    async def store_call(self, record: CallRecord, decision: Decision) -> None:
        """Store `record`, the call of `decision` (stored before it); a failure that blames the model
        (`CallStatus.is_failure`) also as the decision's feedback, learned like any feedback: quality =
        `failure_quality`, cost 0, source "gateway". An LLM router stores its policy's failed try with it too."""
        failure = None
        if CallStatus(record.status).is_failure:
            failure = Outcome(quality=self.config.failure_quality, cost_usd=0.0, input_tokens=0, output_tokens=0,
                              latency_s=record.latency_s)
        source = FAILURE_SOURCE if failure is not None else None
        await self.engine.record_call(record, failure, source, decision)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()  # keyed by its type: one kind of failure does not hide another
            self._say(f"record {type(exc).__name__}", logging.WARNING, "recording a call failed: %s", exc)
