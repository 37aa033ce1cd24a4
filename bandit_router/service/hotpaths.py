"""The two hot endpoints, `POST /v1/route` and `POST /v1/feedback`, answered in plain ASGI.

Every request of a busy service is one of these two. Through FastAPI a request walks the routing table, gets a
`Request` object, an exception middleware, an exit stack and a response object: on a trivial endpoint that was
about half of the server's CPU per request (`benchmarks/results/profiles/`). `HotPaths` sits in front of
FastAPI's routing (inside `ServiceMiddleware`, so the `Host` check, the body limits and the request metrics still
apply) and answers these two with the very functions their FastAPI routes call (`routes.route_call`,
`routes.feedback_call`): the same key check, the same 415, the same validation and 422s, the same error bodies
(`errors.to_response`). Everything else, including other methods on these paths, goes on to FastAPI. The routes
stay declared there, so the OpenAPI document does not change.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from . import errors
from .routes import Services, check_key, feedback_call, require_json, route_call, router

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ROUTE, FEEDBACK = "/v1/route", "/v1/feedback"
_JSON = (b"content-type", b"application/json")


class HotPaths:
    """Plain-ASGI handling of `POST /v1/route` and `POST /v1/feedback`; anything else goes to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes = {r.path: r for r in router.routes if isinstance(r, APIRoute) and r.path in (ROUTE, FEEDBACK)}
        """FastAPI's route objects: `ServiceMiddleware` labels the request metrics with their path."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            path = scope["path"]
            if path in (ROUTE, FEEDBACK):
                await self._serve(path, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        scope["route"] = self._routes[path]
        try:
            services: Services = scope["app"].state.services
            content_type = authorization = None
            for name, value in scope["headers"]:  # the first of each, as `request.headers.get` on FastAPI's side
                if name == b"content-type" and content_type is None:
                    content_type = value.decode("latin-1")
                elif name == b"authorization" and authorization is None:
                    authorization = value.decode("latin-1")
            check_key(services, authorization, "POST " + path)
            require_json(content_type)
            raw = await _read_body(receive)
            if path == ROUTE:
                reply, decision_id = await route_call(services, raw)
                headers = [(b"content-length", str(len(reply)).encode()), _JSON,
                           (b"x-decision-id", decision_id.encode())]
            else:
                reply = await feedback_call(services, raw)
                headers = [(b"content-length", str(len(reply)).encode()), _JSON]
        except ClientDisconnect:  # the client left while sending its body: nobody reads this reply
            await Response(status_code=400)(scope, receive, send)
            return
        except Exception as exc:  # what FastAPI's exception handlers would answer (`errors.install`)
            await errors.to_response(exc)(scope, receive, send)
            return
        if path == ROUTE:  # before the reply leaves, as `ServiceMiddleware` counts it: a later scrape has it
            services.metrics.route_latency.observe(time.perf_counter() - started)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply})


async def _read_body(receive: Receive) -> bytes:
    """The whole request body (`ClientDisconnect` if the client leaves first), as Starlette's `Request.body`."""
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")
        return body
    chunks: list[bytes] = []
    while True:
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()
