"""HTTP of the OpenAI-compatible gateway: `POST /v1/chat/completions` ⇄ `bandit_router.gateway.Gateway`.

Only translation: the body is parsed (`gateway.parse_chat`), the gateway answers, and every error becomes OpenAI's
error shape, `{"error": {"message", "type", "param", "code"}}`:

| what                                                       | status | type / code                          |
|------------------------------------------------------------|--------|--------------------------------------|
| malformed body, a bad knob, an unknown model in `models`   | 400    | invalid_request_error                |
| a named model that `models` does not allow (`param`: where) | 400    | invalid_request_error                |
| a `model` that is neither the alias nor a catalog model    | 404    | invalid_request_error / model_not_found |
| a `model` with `route = false` (a judge or routing LLM)    | 404    | invalid_request_error / model_not_found |
| a path under this one                                      | 404    | invalid_request_error / not_found    |
| a method other than POST (`Allow: POST`)                   | 405    | invalid_request_error / method_not_allowed |
| missing or wrong API key                                   | 401    | authentication_error                 |
| body or messages too large                                 | 413    | invalid_request_error                |
| not sent as JSON                                           | 415    | invalid_request_error                |
| a Host a loopback-bound service does not serve             | 421    | invalid_request_error                |
| the upstream refused the request (4xx), any alias         | same   | the upstream's own error body        |
| no model answered (failures, or out of tries)              | 502    | upstream_error / the last failure    |
| every model tried answered 429 (its soonest `Retry-After`) | 429    | requests / rate_limit_exceeded       |
| the deadline passed, or the last try timed out             | 504    | upstream_error / timeout             |
| not ready, database unavailable, no model has an upstream  | 503    | service_unavailable                  |
| an unexpected error (a bug: logged, its text not shown)    | 500    | server_error / internal              |

The service's middleware answers a body over `max_body_bytes` (by its Content-Length) and a Host it does not serve
before the route runs, and FastAPI's routing a path under this one or a method but POST: on this path (and under
it) in the same shape (`app._refusal`, `app._routing_error`).

A stream answers with `text/event-stream`; its headers carry `x-decision-id` like a plain reply. Writing one event
to a caller that stopped reading may take `STREAM_WRITE_TIMEOUT_S`; then the stream ends and the call is recorded
as `cancelled`, so a slow reader holds no more than its own connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.parse
from collections.abc import Mapping, MutableMapping
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from ..cascade.live import NamedRouterFailed, NamedRouters, sse_events
from ..errors import InvalidInput, UnknownModel
from ..finitejson import finite_loads
from ..gateway import (
    BadChatRequest,
    Gateway,
    GatewayFailed,
    ModelNotFound,
    NoUpstream,
    PromptTooLarge,
    Rejected,
    StreamAnswer,
    parse_chat,
)
from ..gateway.chat import KNOB_RULES, knob_headers
from ..gateway.gateway import SERVER_STOPPED
from ..gateway.upstreams import UpstreamRejected, rate_limited
from ..jsonkeys import DuplicateKey, once_each
from .errors import ERROR_RESPONSES, status_of
from .exceptions import InvalidField, PayloadTooLarge, UnsupportedMediaType
from .paths import CheckedRoute
from .routes import SECURITY, _require_json, _services, openai_models

log = logging.getLogger("bandit_router.service")
router = APIRouter(route_class=CheckedRoute)  # path parameters: no control characters
STREAM_WRITE_TIMEOUT_S = 30.0

CHAT_PATH = "/v1/chat/completions"

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
          415: "invalid_request_error", 421: "invalid_request_error", 422: "invalid_request_error", 429: "requests",
          500: "server_error", 502: "upstream_error", 503: "service_unavailable", 504: "upstream_error"}


def openai_error(status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": _TYPES.get(status, "api_error"), "param": param, "code": code}}
    return Response(json.dumps(body).encode(), status_code=status, media_type="application/json", headers=headers)


def _error(exc: BaseException) -> Response:
    """Any error of a chat request → OpenAI's error shape."""
    if isinstance(exc, GatewayFailed | NamedRouterFailed):
        limited, wait = rate_limited(exc.failures)
        if limited:  # every model tried is rate limited: the caller's client backs off (OpenAI's honours it)
            return openai_error(429, str(exc), code="rate_limit_exceeded",
                                headers=None if wait is None else {"retry-after": str(wait)})
        status = 504 if exc.timed_out else 502
        return openai_error(status, str(exc), code=str(exc.failures[-1].status) if exc.failures else None)
    if isinstance(exc, UpstreamRejected):  # a named router's upstream refused the request (4xx): passed through
        return _passed_through(exc, exc.headers)
    if isinstance(exc, Rejected):
        return _passed_through(exc.error, {**exc.error.headers, **_decision_headers(exc.decision.decision_id)})
    if isinstance(exc, ModelNotFound):
        return openai_error(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, NoUpstream):
        if str(exc).startswith("model:"):
            return openai_error(404, str(exc), param="model", code="model_not_found")
        return openai_error(503, str(exc), code="no_upstream")
    if isinstance(exc, BadChatRequest | InvalidField):
        return openai_error(400, str(exc), param=exc.field)
    if isinstance(exc, PromptTooLarge | PayloadTooLarge):
        return openai_error(413, str(exc), code="payload_too_large")
    if isinstance(exc, UnsupportedMediaType):
        return openai_error(415, str(exc))
    if isinstance(exc, UnknownModel):
        return openai_error(400, str(exc), param="bandit_router.models")
    if isinstance(exc, InvalidInput):
        return openai_error(400, str(exc))
    status, code = status_of(exc)
    if status == 500:
        log.error("unexpected error in the gateway: %s", type(exc).__name__, exc_info=exc)
        return openai_error(500, "internal error", code="internal")  # type server_error, as OpenAI's 500s
    headers = {"www-authenticate": "Bearer"} if status == 401 else {"retry-after": "1"} if status == 503 else {}
    return openai_error(status, str(exc), code=code, headers=headers)


def _passed_through(error: UpstreamRejected, headers: Mapping[str, str]) -> Response:
    """An upstream's 4xx for the caller, whichever alias called it (the bandit's, a named router's, a model the
    caller named): its status, and its own error body when that is in OpenAI's shape, so that the client reads
    the upstream's `code` and `param` (`context_length_exceeded`, `messages`); else OpenAI's shape naming the
    model and the status (`upstream_rejected`), with the upstream's own words when its body has some in a shape
    other servers use (`_upstream_words`)."""
    status = error.http_status or 400
    try:
        upstream = finite_loads(error.body)
    except (ValueError, RecursionError):
        upstream = None
    if isinstance(upstream, dict) and isinstance(upstream.get("error"), dict):
        return Response(json.dumps(upstream).encode(), status_code=status, media_type="application/json",
                        headers=headers)
    words = _upstream_words(upstream)
    if words is None:
        return openai_error(status, str(error), code="upstream_rejected", headers=headers)
    message, param, code = words
    return openai_error(status, f"{error.model}: {message}", param=param, code=code or "upstream_rejected",
                        headers=headers)


def _upstream_words(body: Any) -> tuple[str, str | None, str | None] | None:
    """(message, param, code) of an upstream's error body in a shape other than OpenAI's: flat, as vLLM answered
    until mid-2025 (vllm-project/vllm#22099; `{"object": "error", "message", "type", "param", "code": 400}`), or
    a bare text (`{"error": "…"}`, as Ollama's native API and KServe answer; `{"detail": "…"}`, FastAPI's); None
    when it has no text (blank text is none). A `param` or `code` that is not text is left out (vLLM's `code` is the
    HTTP status)."""
    if not isinstance(body, dict):
        return None
    texts = {k: v for k, v in body.items() if isinstance(v, str) and v.strip()}
    if "message" in texts:
        return texts["message"][:1000], texts.get("param"), texts.get("code")
    bare = texts.get("error") or texts.get("detail")
    return None if bare is None else (bare[:1000], None, None)


def _headers(decision_id: str, model: str, attempts: int) -> dict[str, str]:
    """The reply's headers. `x-request-id` repeats the decision id: the OpenAI client reads that header as the
    answer's `_request_id` (and an error's `request_id`), so an SDK user has the id feedback needs without
    `with_raw_response`. A header holds Latin-1 only (Starlette encodes it so): a catalog name outside ASCII
    (`名前`, which the name grammar allows in the catalog) is percent-encoded as UTF-8, where it made every
    non-streamed answer of that model a 500 after its upstream call. So is a name with a `%` (the grammar allows
    it), else the ASCII name `%E5%90%8D%E5%89%8D` would give `名前`'s header: each header decodes to its name."""
    shown = model if model.isascii() and "%" not in model else urllib.parse.quote(model, safe="/:@+")
    return {**_decision_headers(decision_id), "x-bandit-router-model": shown, "x-bandit-router-attempts": str(attempts)}


def _decision_headers(decision_id: str) -> dict[str, str]:
    """The decision's id, as `x-decision-id` and as `x-request-id` (the OpenAI client's `_request_id`)."""
    return {"x-decision-id": decision_id, "x-request-id": decision_id}


class EventStream(Response):
    """An ASGI reply that relays a `StreamAnswer` as server-sent events, ends it when the caller leaves or stops
    reading for `STREAM_WRITE_TIMEOUT_S`, and always closes the upstream stream."""

    def __init__(self, answer: StreamAnswer, headers: Mapping[str, str]) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        self.answer, self.extra = answer, dict(headers)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        raw = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               *((k.encode(), v.encode()) for k, v in self.extra.items())]
        events = self.answer.relay()
        begun = False

        async def relay() -> None:
            # A send to a caller that left is dropped without an error: each event checks first whether the
            # watcher saw it leave (else a buffered upstream stream would be read to its end, and recorded `ok`,
            # before the watcher's turn came).
            nonlocal begun
            begun = True
            await send({"type": "http.response.start", "status": 200, "headers": raw})
            async for data in events:
                if watching.done():
                    return  # `events.aclose()` below records the stream as cancelled
                async with asyncio.timeout(STREAM_WRITE_TIMEOUT_S):  # no task per event, unlike wait_for
                    await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        watching = asyncio.ensure_future(disconnected())
        sending: asyncio.Future[None] = asyncio.ensure_future(asyncio.sleep(0))
        stopped = False
        try:
            await sending  # the watcher's first `receive()`: a caller already gone is seen before the relay starts
            sending = asyncio.ensure_future(relay())
            await asyncio.wait((sending, watching), return_when=asyncio.FIRST_COMPLETED)
            failed = sending.exception() if sending.done() and not sending.cancelled() else None
            if failed is not None and not isinstance(failed, TimeoutError | OSError):
                log.error("relaying a stream failed: %s", type(failed).__name__, exc_info=failed)
        except asyncio.CancelledError:  # the server stops: its grace for requests in flight ran out
            stopped = _stopping()
            self.answer.ended_by = SERVER_STOPPED
        finally:
            for task in (sending, watching):
                task.cancel()
            await asyncio.gather(sending, watching, return_exceptions=True)
            await events.aclose()
            await self.answer.abandon()  # the relay's own `finally` did this, unless it never started
        if stopped and watching.cancelled():  # the caller is still there: an error event, and the stream's end
            with contextlib.suppress(OSError, RuntimeError):
                if not begun:
                    await send({"type": "http.response.start", "status": 200, "headers": raw})
                message = f"the stream broke: {SERVER_STOPPED} (the server is stopping)"
                await send({"type": "http.response.body", "body": _error_event(message), "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})


def _stopping() -> bool:
    """A cancelled request handler finishes anyway (a shutdown's only way to end it, past its grace): True, with
    the cancellation taken back so that the handler's remaining awaits (its reply) run."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return True


def _error_event(message: str) -> bytes:
    body = {"error": {"message": message, "type": "service_unavailable", "param": None, "code": "shutting_down"}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


CHAT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1,
                  "description": "`router` (the alias: route it) or a catalog model's name (send it there)"},
        "messages": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["role"],
            "properties": {"role": {"type": "string", "minLength": 1},
                           "content": {"anyOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]}},
        }},
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {"type": ["object", "null"]},
        "bandit_router": {
            "type": "object", "additionalProperties": False,
            "description": "routing knobs (the OpenAI client's `extra_body`); also as x-bandit-router-* headers",
            "properties": {knob: {"anyOf": [rule.json_schema(), {"type": "null"}]}
                           for knob, rule in KNOB_RULES.items()},  # /v1/route's rules
        },
    },
    "description": "OpenAI's chat-completion request; other fields go to the upstream unchanged",
}
ERROR_CONTENT_OPENAI = {"application/json": {"schema": {"type": "object", "required": ["error"], "properties": {
    "error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "a chat completion (JSON), or server-sent events when `stream` is true",
          "content": {"application/json": {"schema": {"type": "object"}},
                      "text/event-stream": {"schema": {"type": "string"}}}},
    **{s: {"description": d, "content": ERROR_CONTENT_OPENAI} for s, d in (
        (400, "invalid request"), (401, "missing or wrong API key"), (404, "unknown model"),
        (413, "body or messages too large"), (415, "not sent as JSON"), (422, "the upstream refused the request"),
        (429, "every model tried is rate limited (Retry-After: the soonest they gave)"),
        (502, "no model answered"), (503, "not ready, or no model has an upstream"), (504, "out of time"))},
}


NO_CONTROL_CHARACTER = r"^[^\u0000-\u001f\u007f-\u009f]+$"
"""A path parameter's schema: what `paths.CheckedRoute` lets through (no C0, DEL or C1 character)."""
MODEL_OBJECT = {"type": "object", "required": ["id", "object", "created", "owned_by"], "properties": {
    "id": {"type": "string"}, "object": {"type": "string", "const": "model"}, "created": {"type": "integer"},
    "owned_by": {"type": "string"}}}


@router.get(
    "/v1/models/{name:fullpath}", tags=["gateway"], openapi_extra={"security": SECURITY}, responses={
        200: {"description": "the model, as OpenAI's model object (one of `GET /v1/models`' `data`)",
              "content": {"application/json": {"schema": MODEL_OBJECT}}},
        404: {"description": "not a model a request may name", "content": ERROR_CONTENT_OPENAI},
        **{s: ERROR_RESPONSES[s] for s in (401, 422)}},
)
async def retrieve_model(request: Request, name: Annotated[str, Path(pattern=NO_CONTROL_CHARACTER)]) -> Response:
    """OpenAI's "retrieve model" (`client.models.retrieve(name)`): one of the model objects `GET /v1/models` lists
    in `data` (the router alias, a named router, an active model a request may name); any other name, a
    `route = false` or retired model's too, is OpenAI's 404 `model_not_found`."""
    services = _services(request)
    for model in openai_models(services.engine):
        if model["id"] == name:
            return Response(json.dumps(model).encode(), media_type="application/json")
    return openai_error(404, f"model: {name[:200]!r} is not a model requests may name here (GET /v1/models lists "
                        "them)", param="model", code="model_not_found")


@router.post(
    CHAT_PATH, tags=["gateway"], responses=_RESPONSES,
    openapi_extra={"security": SECURITY, "requestBody": {"required": True, "content": {
        "application/json": {"schema": CHAT_SCHEMA}}}},
)
async def chat_completions(request: Request) -> Any:
    """OpenAI's chat completions: `model = "router"` routes (and learns from feedback on `x-decision-id`), a
    catalog model's name sends it there. The answer's `model` is the model that answered."""
    try:
        services = _services(request)
        gateway: Gateway = request.app.state.gateway
        gateway.track()  # a shutdown waits for its records (streams included: this task relays them)
        _require_json(request)
        raw = await request.body()
        try:
            body = json.loads(raw, object_pairs_hook=once_each)  # a key given twice is refused, as by the service
        except DuplicateKey as exc:
            raise BadChatRequest("body", str(exc)) from None
        except (ValueError, RecursionError) as exc:
            raise BadChatRequest("body", f"not valid JSON ({type(exc).__name__})") from None
        chat = parse_chat(body, knob_headers(request.headers.raw), alias=gateway.config.router_alias,
                          max_prompt_chars=services.engine.settings.limits.max_prompt_chars)
        named: NamedRouters | None = getattr(request.app.state, "named_routers", None)
        if named is not None and named.handles(chat.model):  # a [[routers]] alias: its answer, buffered
            done = await named.complete(chat)
            headers = _headers(done.decision.decision_id, done.decision.model, done.calls)
            if chat.stream:
                return Response(sse_events(done.body, chat.include_usage), media_type="text/event-stream",
                                headers=headers)
            return Response(json.dumps(done.body, separators=(",", ":")).encode("utf-8"),
                            media_type="application/json", headers=headers)
        if chat.stream:
            answer = await gateway.open_stream(chat)
            return EventStream(answer, _headers(answer.decision.decision_id, answer.decision.model,
                                                answer.attempts))
        reply = await gateway.complete(chat)
        return Response(json.dumps(reply.body, separators=(",", ":")).encode("utf-8"),
                        media_type="application/json",
                        headers=_headers(reply.decision.decision_id, reply.decision.model, reply.attempts))
    except ClientDisconnect:
        raise  # the client left while sending its body: nobody reads a reply (the app's handler)
    except asyncio.CancelledError:  # the server stops: its grace for requests in flight ran out
        _stopping()
        return openai_error(503, f"{SERVER_STOPPED}: the server is stopping; send the request again",
                            code="shutting_down", headers={"retry-after": "1"})
    except Exception as exc:  # every error in OpenAI's shape; an unexpected one is logged, a 500
        return _error(exc)
