"""Calling OpenAI-compatible upstreams: one pooled `httpx.AsyncClient` per base URL, per-model concurrency
limits, bounded replies, and every way a call can end sorted into a `CallStatus`.

    Upstreams.complete(model, payload, deadline)  → Reply            (a non-streamed chat completion)
    Upstreams.stream(model, payload, deadline)    → Stream           (open it, then `first()`, then `rest()`)

Failures raise `UpstreamFailure` (timeout, connection error, 5xx/429, a reply that is not a chat completion or is
too large: the model's failure) or `UpstreamRejected` (4xx: the request's fault, passed through to the caller;
401/403: the gateway's credentials, never the model's). An API key is read from the environment variable the
catalog names, sent only in the `Authorization` header, and never appears in a message, a log line or a repr.
This module knows nothing of routing or storage: the cascade and the judge call models through it too.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..catalog import ModelSpec
from ..errors import BanditRouterError
from ..finitejson import finite_loads
from ..store import CallStatus
from .pricing import StreamedAnswer, Usage, tool_call_pieces, usage_of
from .sse import error_event_text, sse_lines

log = logging.getLogger("bandit_router.gateway")

_PASSED_THROUGH_HEADERS = ("retry-after",)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how one catalog model is called."""

    model: str
    """The catalog name."""
    url: str
    """`base_url` + `/chat/completions`."""
    upstream_model: str
    api_key_env: str | None
    timeout_s: float
    connect_timeout_s: float
    max_concurrency: int

    @classmethod
    def of(cls, spec: ModelSpec, *, default_base_url: str | None, default_api_key_env: str | None,
           timeout_s: float, connect_timeout_s: float, max_concurrency: int) -> Endpoint | None:
        """The endpoint of `spec` (its own upstream keys, else the defaults); None without any base URL."""
        base = spec.base_url or default_base_url
        if base is None:
            return None
        return cls(
            model=spec.name, url=base.rstrip("/") + "/chat/completions", upstream_model=spec.upstream_name,
            api_key_env=spec.api_key_env if spec.base_url else (spec.api_key_env or default_api_key_env),
            timeout_s=spec.timeout_s or timeout_s,
            connect_timeout_s=spec.connect_timeout_s or connect_timeout_s,
            max_concurrency=spec.max_concurrency or max_concurrency,
        )

    @property
    def base_url(self) -> str:
        return self.url.removesuffix("/chat/completions")


NO_UPSTREAM = "has no upstream: give it a base_url, or set default_base_url"


def key_not_set(variable: str) -> str:
    return f"is called with the key in {variable}, which is not set"


def unreachable(endpoint: Endpoint | None, environ: Mapping[str, str]) -> str | None:
    """Why the gateway cannot call a model whose endpoint is `endpoint` (None: it can), as the end of a sentence
    that starts with the model's name."""
    if endpoint is None:
        return NO_UPSTREAM
    if endpoint.api_key_env is not None and not environ.get(endpoint.api_key_env):
        return key_not_set(endpoint.api_key_env)
    return None


class UpstreamError(BanditRouterError):
    """A call did not produce an answer. The message names the model and what happened, never a key or URL."""

    def __init__(self, model: str, status: CallStatus, message: str, http_status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"{model}: {message}")
        self.model, self.status, self.http_status = model, status, http_status
        self.retry_after_s = retry_after_s
        """A 429's `Retry-After`, in seconds (None when it gave none)."""


class UpstreamFailure(UpstreamError):
    """The model failed (timeout, connection error, 5xx or 429, an invalid or too large reply): learned as its
    failure, and the request falls back to another model."""


class UpstreamRejected(UpstreamError):
    """The upstream refused the request with a 4xx: `body` (its JSON error, bounded) goes back to the caller.
    `blame_request` is False for 401/403 (the gateway's credentials): then the request falls back instead."""

    def __init__(self, model: str, http_status: int, body: bytes, headers: Mapping[str, str]) -> None:
        super().__init__(model, CallStatus.REJECTED, f"the upstream refused the request ({http_status})", http_status)
        self.body, self.headers = body, dict(headers)

    @property
    def blame_request(self) -> bool:
        return self.http_status not in (401, 403)


@dataclass(slots=True)
class Reply:
    """A non-streamed answer: the upstream's JSON body, its usage (None when it gave none), and timings."""

    body: dict[str, Any]
    usage: Usage | None
    latency_s: float
    http_status: int = 200


class Upstreams:
    """The gateway's HTTP clients: one pooled `httpx.AsyncClient` per base URL, a semaphore per model."""

    def __init__(self, endpoints: Iterable[Endpoint], *, max_response_bytes: int,
                 environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.endpoints: dict[str, Endpoint] = {}
        self.keyless: dict[str, str] = {}
        """Models left out because the variable their `api_key_env` names is not set: model → variable."""
        self.max_response_bytes = max_response_bytes
        self._keys: dict[str, str] = {}
        for e in endpoints:
            value = env.get(e.api_key_env) if e.api_key_env is not None else None
            if e.api_key_env is not None and not value:
                self.keyless[e.model] = e.api_key_env
                continue
            self.endpoints[e.model] = e
            if value:
                self._keys[e.model] = value
        if self.keyless:
            log.warning("not called by the gateway until their key variables are set: %s",
                        ", ".join(f"{m} ({v})" for m, v in self.keyless.items()))
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._closing: set[asyncio.Future[None]] = set()
        self._slots = {e.model: asyncio.Semaphore(e.max_concurrency) for e in self.endpoints.values()}
        for e in self.endpoints.values():
            if e.base_url not in self._clients:
                limit = sum(x.max_concurrency for x in self.endpoints.values() if x.base_url == e.base_url)
                self._clients[e.base_url] = httpx.AsyncClient(
                    limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
                    follow_redirects=False, trust_env=False,
                )

    def __repr__(self) -> str:  # never the keys
        return f"Upstreams(<{len(self.endpoints)} models, {len(self._clients)} base URLs>)"

    def has(self, model: str) -> bool:
        return model in self.endpoints

    def unreachable(self, model: str) -> str | None:
        """Why `model` is not called (see the module function `unreachable`); None when it is."""
        if model in self.endpoints:
            return None
        return key_not_set(self.keyless[model]) if model in self.keyless else NO_UPSTREAM

    def add(self, endpoint: Endpoint, environ: Mapping[str, str] | None = None) -> None:
        """Call `endpoint.model` from now on (a model added at run time)."""
        env = os.environ if environ is None else environ
        key = env.get(endpoint.api_key_env) if endpoint.api_key_env is not None else None
        if endpoint.api_key_env is not None and not key:
            self.keyless[endpoint.model] = endpoint.api_key_env
            return
        self.endpoints[endpoint.model] = endpoint
        self._slots[endpoint.model] = asyncio.Semaphore(endpoint.max_concurrency)
        if key:
            self._keys[endpoint.model] = key
        if endpoint.base_url not in self._clients:
            self._clients[endpoint.base_url] = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=endpoint.max_concurrency), follow_redirects=False, trust_env=False
            )

    async def aclose(self) -> None:
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        for client in self._clients.values():
            await client.aclose()

    async def let_go(self, response: httpx.Response, model: str) -> None:
        """Close a streamed `response` and then free `model`'s slot, in a task that a cancellation of the caller
        does not interrupt (the caller's await is cancelled, the close goes on)."""
        closing = asyncio.ensure_future(response.aclose())
        self._closing.add(closing)

        def closed(task: asyncio.Future[None]) -> None:
            self._closing.discard(task)
            self._slots[model].release()
            if not task.cancelled() and task.exception() is not None:
                log.debug("closing a stream failed: %s", type(task.exception()).__name__)

        closing.add_done_callback(closed)
        await asyncio.shield(closing)

    def _request(self, model: str, payload: Mapping[str, Any], stream: bool) -> tuple[Endpoint, httpx.Request]:
        endpoint = self.endpoints[model]
        headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
        key = self._keys.get(model)
        if key is not None:
            headers["authorization"] = "Bearer " + key
        body = dict(payload)
        body["model"] = endpoint.upstream_model
        client = self._clients[endpoint.base_url]
        timeout = httpx.Timeout(endpoint.timeout_s, connect=endpoint.connect_timeout_s)
        content = json.dumps(body, separators=(",", ":")).encode("utf-8")
        return endpoint, client.build_request("POST", endpoint.url, content=content, headers=headers,
                                              timeout=timeout)

    async def _acquire(self, model: str, deadline: float) -> None:
        # A timed-out `Semaphore.acquire` hands a wake-up it already received on to the next waiter (tested).
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._slots[model].acquire()
        except TimeoutError:
            raise UpstreamFailure(model, CallStatus.TIMEOUT, "no free call slot before the deadline "
                                  "(max_concurrency)") from None

    async def complete(self, model: str, payload: Mapping[str, Any], deadline: float) -> Reply:
        """One non-streamed call, within `timeout_s` of its start and `deadline` (a `time.monotonic()` instant).
        httpx's own read timeout bounds each wait for bytes, not the call: an upstream that trickles its reply (or
        keeps the connection alive with blanks, as some providers do) would take as long as it likes."""
        endpoint, request = self._request(model, payload, stream=False)
        await self._acquire(model, deadline)
        started = time.perf_counter()
        ends = _ends(endpoint, deadline)
        client = self._clients[endpoint.base_url]
        try:
            async with asyncio.timeout_at(_loop_time(ends)):
                response = await client.send(request, stream=True)
                try:
                    raw = await _read_bounded(response, self.max_response_bytes, model)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise _out_of_time(model, endpoint, deadline, ends, "no answer") from None
        except httpx.TimeoutException:
            raise UpstreamFailure(model, CallStatus.TIMEOUT, f"no answer within {endpoint.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise UpstreamFailure(model, CallStatus.CONNECTION_ERROR, _transport(exc)) from None
        finally:
            self._slots[model].release()
        latency = time.perf_counter() - started
        _check_status(model, response, raw)
        try:
            body = finite_loads(raw)
        except (ValueError, RecursionError):
            raise UpstreamFailure(model, CallStatus.INVALID_RESPONSE, "the reply is not JSON", 200) from None
        if not isinstance(body, dict) or not _choices(body.get("choices"), empty_ok=False):
            raise UpstreamFailure(model, CallStatus.INVALID_RESPONSE, "the reply is not a chat completion", 200)
        return Reply(body, usage_of(body), latency, response.status_code)

    async def stream(self, model: str, payload: Mapping[str, Any], deadline: float) -> Stream:
        """Open a streamed call: the status is checked (failures raise here); read it with `first()`/`rest()`."""
        endpoint, request = self._request(model, payload, stream=True)
        await self._acquire(model, deadline)
        started = time.perf_counter()
        ends = _ends(endpoint, deadline)
        client = self._clients[endpoint.base_url]
        try:  # the slot goes with the stream once it is open; released on any failure before (a cancellation too)
            try:
                async with asyncio.timeout_at(_loop_time(ends)):
                    response = await client.send(request, stream=True)
            except TimeoutError:
                raise _out_of_time(model, endpoint, deadline, ends, "no answer") from None
            except httpx.TimeoutException:
                raise UpstreamFailure(model, CallStatus.TIMEOUT,
                                      f"no answer within {endpoint.timeout_s:g} s") from None
            except httpx.HTTPError as exc:
                raise UpstreamFailure(model, CallStatus.CONNECTION_ERROR, _transport(exc)) from None
        except BaseException:
            self._slots[model].release()
            raise
        if response.status_code != 200:
            try:
                raw = await _read_bounded(response, self.max_response_bytes, model)
            except (httpx.HTTPError, UpstreamError):
                raw = b""
            finally:
                await response.aclose()
                self._slots[model].release()
            _check_status(model, response, raw)
            raise UpstreamFailure(model, CallStatus.INVALID_RESPONSE, f"status {response.status_code}",
                                  response.status_code)
        return Stream(self, endpoint, response, started, deadline, ends)


class Stream:
    """An open streamed call. `first()` waits for the first chunk (a failure there still allows a fallback);
    `rest()` yields the following chunks; `close()` releases the connection and the model's slot (always call
    it). Each chunk is the parsed JSON of one `data:` event; `[DONE]` ends the stream. A body that ends after a
    chunk without `[DONE]` or any `finish_reason` was cut on the way (a proxy that gave up, an upstream that
    stopped): `connection_error`, never half an answer passed off as whole."""

    def __init__(self, owner: Upstreams, endpoint: Endpoint, response: httpx.Response, started: float,
                 deadline: float, first_by: float) -> None:
        self._owner, self.model, self._response = owner, endpoint.model, response
        self._endpoint, self._deadline, self._first_by = endpoint, deadline, first_by
        self.started = started
        self.ttft_s: float | None = None
        self.latency_s: float | None = None
        self.usage: Usage | None = None
        self.text: list[str] = []
        """Every choice's streamed content and tool-call pieces, for counting tokens when the upstream gives none."""
        self._first = StreamedAnswer()  # the first choice, for `answer`
        self._lines = sse_lines(self._bounded(response.aiter_bytes()))
        self._size = 0
        self._timeout_s = endpoint.timeout_s
        self._closed = False
        self._chunks = 0
        self._finished = False
        """Whether a chunk gave a `finish_reason` (the answer is whole even if `[DONE]` never comes)."""
        self.done = False

    async def _bounded(self, parts: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`parts` counted as they arrive: past `max_response_bytes` the model's `invalid_response`, whether or not
        a line has ended (a line is held whole until it does)."""
        limit = self._owner.max_response_bytes
        async for part in parts:
            self._size += len(part)
            if self._size > limit:
                raise UpstreamFailure(self.model, CallStatus.INVALID_RESPONSE,
                                      f"the stream is larger than {limit} bytes")
            yield part

    async def _next(self) -> dict[str, Any] | None:
        """The next `data:` event's JSON; None at the end."""
        while True:
            try:
                line = await anext(self._lines)
            except StopAsyncIteration:
                self.done = True
                if self._chunks and not self._finished:
                    raise UpstreamFailure(self.model, CallStatus.CONNECTION_ERROR, "the stream ended before its "
                                          "answer did (no finish_reason, no [DONE])") from None
                return None
            except httpx.TimeoutException:
                raise UpstreamFailure(self.model, CallStatus.TIMEOUT,
                                      f"no chunk within {self._timeout_s:g} s") from None
            except httpx.HTTPError as exc:
                raise UpstreamFailure(self.model, CallStatus.CONNECTION_ERROR, _transport(exc)) from None
            if not line.startswith("data:"):
                continue  # blank separators, comments, `event:` lines
            data = line[5:].strip()
            if data == "[DONE]":
                self.done = True
                return None
            try:
                chunk = finite_loads(data)
            except (ValueError, RecursionError):
                raise UpstreamFailure(self.model, CallStatus.INVALID_RESPONSE, "a streamed chunk is not JSON") from None
            if not isinstance(chunk, dict):
                raise UpstreamFailure(self.model, CallStatus.INVALID_RESPONSE, "a streamed chunk is not an object")
            if "error" in chunk:
                raise UpstreamFailure(self.model, CallStatus.SERVER_ERROR, error_event_text(chunk))
            usage = usage_of(chunk)
            if usage is not None:
                self.usage = usage
            choices = chunk.get("choices")
            if not _choices(choices, empty_ok=True) and not (choices is None and usage is not None):
                raise UpstreamFailure(self.model, CallStatus.INVALID_RESPONSE,
                                      "a streamed chunk is not a chat completion chunk")
            for choice in choices if isinstance(choices, list) else ():
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict):  # its content and tool calls' pieces count as the answer's tokens
                    if isinstance(content := delta.get("content"), str):
                        self.text.append(content)
                    pieces = tool_call_pieces(delta)  # read once: for the count and the first choice's answer
                    self.text.extend(name + arguments for _, name, arguments in pieces)
                    if choice.get("index", 0) == 0:
                        self._first.add(delta, pieces)
                self._finished = self._finished or bool(choice.get("finish_reason"))
            self._chunks += 1
            return chunk

    def answer(self) -> str:
        """The first choice so far, as `pricing.answer_text` reads it unstreamed (what a judge is shown)."""
        return self._first.text()

    async def first(self) -> dict[str, Any]:
        """The first chunk, within `timeout_s` of the call's start and the request's deadline (SSE comments, which
        some providers send while a model thinks, do not count); sets `ttft_s`."""
        try:
            async with asyncio.timeout_at(_loop_time(self._first_by)):
                chunk = await self._next()
        except TimeoutError:
            raise _out_of_time(self.model, self._endpoint, self._deadline, self._first_by, "no first chunk") \
                from None
        if chunk is None:
            raise UpstreamFailure(self.model, CallStatus.INVALID_RESPONSE, "the stream ended before its first chunk")
        self.ttft_s = time.perf_counter() - self.started
        return chunk

    async def rest(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            chunk = await self._next()
            if chunk is None:
                self.latency_s = time.perf_counter() - self.started
                return
            yield chunk

    def stop_clock(self) -> None:
        """Set `latency_s` (seconds from the call's start to now) unless the stream's end already set it."""
        if self.latency_s is None:
            self.latency_s = time.perf_counter() - self.started

    async def close(self) -> None:
        """Let the upstream connection go and free the model's slot. The close runs in a task of its own, to its
        end even when the caller is cancelled while awaiting it (a relay whose caller left): an interrupted
        `aclose` would keep the connection checked out of the pool for good."""
        if self._closed:
            return
        self._closed = True
        self.stop_clock()
        await self._owner.let_go(self._response, self.model)


@dataclass(slots=True)
class _Sink:
    parts: list[bytes] = field(default_factory=list)
    size: int = 0


async def _read_bounded(response: httpx.Response, limit: int, model: str) -> bytes:
    sink = _Sink()
    async for part in response.aiter_bytes():
        sink.size += len(part)
        if sink.size > limit:
            raise UpstreamFailure(model, CallStatus.INVALID_RESPONSE, f"the reply is larger than {limit} bytes",
                                  response.status_code)
        sink.parts.append(part)
    return b"".join(sink.parts)


def _choices(value: Any, *, empty_ok: bool) -> bool:
    """Whether `value` is a chat completion's `choices`: a list of objects (a reply has at least one; a streamed
    chunk may have none, the usage-only chunk)."""
    return isinstance(value, list) and (empty_ok or bool(value)) and all(isinstance(c, dict) for c in value)


def _ends(endpoint: Endpoint, deadline: float) -> float:
    """When a call started now must have answered (`time.monotonic()`): `timeout_s` on, or the request's deadline."""
    return min(deadline, time.monotonic() + endpoint.timeout_s)


def _loop_time(instant: float) -> float:
    """A `time.monotonic()` instant on the running loop's clock (for `asyncio.timeout_at`)."""
    return asyncio.get_running_loop().time() + (instant - time.monotonic())


def _out_of_time(model: str, endpoint: Endpoint, deadline: float, ends: float, what: str) -> UpstreamFailure:
    if ends < deadline:
        return UpstreamFailure(model, CallStatus.TIMEOUT, f"{what} within {endpoint.timeout_s:g} s")
    return UpstreamFailure(model, CallStatus.TIMEOUT, f"{what} before the request's deadline")


def _check_status(model: str, response: httpx.Response, raw: bytes) -> None:
    status = response.status_code
    if status == 200:
        return
    if status in (408, 504):
        raise UpstreamFailure(model, CallStatus.TIMEOUT, f"the upstream timed out ({status})", status)
    if status == 429:
        raise UpstreamFailure(model, CallStatus.SERVER_ERROR, "rate limited (429)", status,
                              _retry_after(response.headers.get("retry-after")))
    if status >= 500:
        raise UpstreamFailure(model, CallStatus.SERVER_ERROR, f"the upstream failed ({status})", status)
    if 400 <= status < 500:
        headers = {k: v for k in _PASSED_THROUGH_HEADERS if (v := response.headers.get(k)) is not None}
        raise UpstreamRejected(model, status, raw[:65536], headers)
    raise UpstreamFailure(model, CallStatus.INVALID_RESPONSE, f"unexpected status {status}", status)


def _retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds from now: delta-seconds, or an HTTP date (UTC); None when absent or unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_tz(value)  # offset None: asctime's or -0000, UTC too (RFC 9110 5.6.7)
            seconds = email.utils.mktime_tz((*parsed[:9], parsed[9] or 0)) - time.time()  # type: ignore[index]
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(seconds, 0.0), 86400.0) if math.isfinite(seconds) else None


def rate_limited(failures: Sequence[UpstreamError]) -> tuple[bool, int | None]:
    """Whether every failure of a request was a 429, and then the `Retry-After` to give its caller: the soonest
    any of the models said it would answer again (whole seconds), None when none of them said."""
    if not failures or any(f.http_status != 429 for f in failures):
        return False, None
    waits = [f.retry_after_s for f in failures if f.retry_after_s is not None]
    return True, math.ceil(min(waits)) if waits else None


def _transport(exc: httpx.HTTPError) -> str:
    """What went wrong on the wire, by kind only (an httpx message may hold the URL)."""
    kind = type(exc).__name__
    return {"ConnectError": "cannot connect", "RemoteProtocolError": "the connection broke",
            "ReadError": "the connection broke while reading", "WriteError": "the connection broke while sending"}.get(
        kind, f"transport error ({kind})")
