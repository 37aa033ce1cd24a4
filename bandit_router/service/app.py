"""`create_app(settings)`: the FastAPI application. Nothing is built at import time: the lifespan creates the
store (schema), the engine (router, writer thread, recovery), the metrics and the authenticator.

Why one module of ~540 lines: `create_app` and its lifespan build and wire every part of the service, and the
middleware (Host policy, body limit), the OpenAPI additions and the start checks are the app's alone; a worker's
part in `serve --workers N` (readiness, a start again) is `workergate`."""

from __future__ import annotations

import asyncio
import functools
import gc
import ipaddress
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from .. import __version__
from ..cascade.live import NamedRouters
from ..catalog import ModelSpec
from ..config import Settings, load_settings
from ..dbguard import flush_rate_limited, rate_limit_logger
from ..errors import ConfigError
from ..gateway import Gateway, Judge
from ..log.budget_state import stored_budgets
from ..log.catalog import LiveCatalog, stored_catalog
from ..store import SCHEMA_VERSION, StoreError
from ..store.location import DatabaseURL, open_store
from ..store.serverlock import join_database
from . import dashboard, errors, redact
from .auth import Authenticator
from .dashboard.routes import router as dashboard_router
from .engine import Engine
from .exceptions import PayloadTooLarge
from .gateway_routes import CHAT_PATH, ERROR_CONTENT_OPENAI, openai_error
from .gateway_routes import router as gateway_router
from .hotpaths import HotPaths
from .logs import configure_logging
from .metrics import Metrics
from .paths import end_exactly
from .protocol import RECURRING
from .routes import Services, router
from .schemas import BODY_MODELS, BUDGET_SCHEMAS, ErrorOut
from .workergate import WorkerGate, start_again

log = logging.getLogger("bandit_router.service")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SERVE_ARGS = "BANDIT_ROUTER_SERVE_ARGS"
"""Environment variable through which `bandit-router serve --workers N` hands its options to the workers."""

DESCRIPTION = """Routes each LLM request to a model with a contextual-bandit policy and learns from feedback.

Round trip: `POST /v1/route` → call the chosen model → `POST /v1/feedback` with the same `decision_id`.
Every error reply is JSON: `{"error": code, "message": text, "field": name}`."""


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def is_loopback(host: str) -> bool:
    """True for `localhost`, `*.localhost`, 127.0.0.0/8 and ::1."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(value: bytes) -> str:
    """The name part of a `Host` header value (`[::1]:8000` → `::1`, `Example.com:80` → `example.com`)."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    return text.rpartition(":")[0] if text.count(":") == 1 else text


class HostPolicy:
    """Which `Host` header names a loopback-bound service accepts: loopback names, plus `allowed_hosts`
    (exact names, `*.example.com` for subdomains, `*` for any). A page on another site that resolves its own name
    to 127.0.0.1 (DNS rebinding) sends its own name as `Host` and is refused."""

    def __init__(self, allowed_hosts: tuple[str, ...]) -> None:
        self.any = "*" in allowed_hosts
        self.exact = frozenset(h.lower().rstrip(".") for h in allowed_hosts if not h.startswith("*"))
        self.suffixes = tuple(h[1:].lower() for h in allowed_hosts if h.startswith("*."))
        self._seen: dict[bytes, bool] = {}

    def allows(self, value: bytes) -> bool:
        if self.any:
            return True
        known = self._seen.get(value)
        if known is None:  # a server sees few distinct Host values: each is judged once (bounded)
            if len(self._seen) >= 256:
                self._seen.clear()
            name = _host_name(value).rstrip(".")
            known = self._seen[value] = is_loopback(name) or name in self.exact or name.endswith(self.suffixes)
        return known


def _on_loopback(scope: Scope) -> bool:
    """True when the connection arrived on a loopback address (uvicorn puts the socket's own address in
    `server`; an in-process test client puts its base URL's host name there)."""
    server = scope.get("server")
    return server is not None and isinstance(server[0], str) and _is_loopback_cached(server[0])


@functools.lru_cache(maxsize=64)
def _is_loopback_cached(host: str) -> bool:
    """`is_loopback` for the server's own addresses (a handful): parsed once, not on every request."""
    return is_loopback(host)


class ServiceMiddleware:
    """A pure ASGI layer in front of every route: a request with two `Host` headers refused (400), the `Host`
    check of a loopback-bound service (421), the body size limit (413), and HTTP replies counted by route and
    status code, when the reply's status goes out (before any of its bytes: a scrape the client makes after the
    reply, on any worker, counts it), or as a 500 when the app ends without starting one."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, hosts: HostPolicy | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counted = False
        limit = self.max_body_bytes

        def count(status: int) -> None:
            nonlocal counted
            counted = True
            metrics: Metrics | None = getattr(scope["app"].state, "metrics", None) if "app" in scope else None
            if metrics is not None:
                route = scope.get("route")
                metrics.request(getattr(route, "path", "other"), status)

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not counted:
                count(message["status"])
            await send(message)

        length = None
        host: bytes | None = None
        second_host = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"host":  # the first, as Starlette reads it (its URLs, redirects)
                second_host = host is not None
                host = value if host is None else host
        try:
            if second_host:  # which one the request means is anyone's guess (RFC 9112 §3.2: a 400)
                response = _refusal(scope, 400, "bad_request", "the request has more than one Host header")
                await response(scope, receive, counting_send)
                return
            if self.hosts is not None and host is not None and _on_loopback(scope) and not self.hosts.allows(host):
                shown = host.decode("latin-1")[:100]
                response = _refusal(
                    scope, 421, "misdirected_request",
                    f"Host {shown!r} is not served here: this service is bound to a loopback address and accepts "
                    "loopback host names only; add the name to `allowed_hosts` to serve it",
                )
                await response(scope, receive, counting_send)
                return
            if length is not None and length > limit:
                response = _refusal(
                    scope, 413, "payload_too_large",
                    f"the body has {length} bytes; the limit is {limit} (max_body_bytes)",
                )
                await response(scope, receive, counting_send)
                return
            if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                receive = _limited(receive, limit)
            await self.app(scope, receive, counting_send)
        finally:
            if not counted:
                count(500)


def on_gateway_path(path: str) -> bool:
    """Whether `path` is the gateway's (`/v1/chat/completions` or under it), where OpenAI clients read errors in
    OpenAI's shape."""
    return path == CHAT_PATH or path.startswith(CHAT_PATH + "/")


def _app_path(scope: Scope) -> str:
    """The request's path within the app: without the `root_path` it is mounted under (a proxy's prefix)."""
    path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
    return path[len(root):] if root and path.startswith(root) else path


def _refusal(scope: Scope, status: int, code: str, message: str) -> Response:
    """The middleware's error reply: in OpenAI's error shape on the gateway's path (its clients read that one),
    the service's own elsewhere."""
    if on_gateway_path(_app_path(scope)):
        return openai_error(status, message, code=code)
    return errors.error_response(status, code, message)


async def _routing_error(request: Request, exc: Exception) -> Response:
    """A routing error (an unknown path 404, a method a path does not take 405): in OpenAI's error shape on the
    gateway's path, as its other errors, with the same headers (a 405's `Allow`); the service's own elsewhere."""
    assert isinstance(exc, StarletteHTTPException)
    allow = _allow(request) if exc.status_code == 405 else ""
    if allow:  # else a mount's own 405 (the dashboard's static files: `GET, HEAD`), whose `Allow` is kept
        exc = StarletteHTTPException(405, exc.detail, headers={**(exc.headers or {}), "Allow": allow})
    if on_gateway_path(_app_path(request.scope)):
        return openai_error(exc.status_code, str(exc.detail), code=errors.http_code(exc.status_code),
                            headers=exc.headers)
    return errors.http_error(exc)


def _allow(request: Request) -> str:
    """A 405's `Allow`: the methods of every route on the request's path (Starlette's names those of the first
    route only: `GET` for `PUT /v1/models`, whose POST is another route); empty when only a mount matches."""
    methods: set[str] = set()
    for route in request.app.state.routes:
        if route.methods and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


def _limited(receive: Receive, limit: int) -> Receive:
    """`receive` for a body without Content-Length (chunked): raises `PayloadTooLarge` past `limit` bytes."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes (max_body_bytes)")
        return message

    return wrapped


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document, with the schemas of the bodies that the routes validate by hand."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            models: list[type[BaseModel]] = [*BODY_MODELS.values(), ErrorOut]
            template = "#/components/schemas/{model}"
            _, defs = models_json_schema([(m, "validation") for m in models], ref_template=template)
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(defs.get("$defs", {}))
            components["schemas"].update(BUDGET_SCHEMAS)
            components["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key, when keys are configured"}
            }
            _document_middleware_replies(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    return build


_OPERATIONS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_SERVICE_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}


def _document_middleware_replies(schema: dict[str, Any]) -> None:
    """What every path may answer before its route runs, written into each operation (`ServiceMiddleware`: 400
    for two `Host` headers, 421 for a `Host` a loopback-bound service does not serve; the router: 405, with
    `Allow`, for a method the path does not take, in the path's description, as OpenAPI has no operation for a
    method a path lacks). A HEAD reply has the status and headers of its GET, no body: its responses have no
    content."""
    for path, item in schema.get("paths", {}).items():
        error = ERROR_CONTENT_OPENAI if on_gateway_path(path) else _SERVICE_ERROR
        methods = [m for m in _OPERATIONS if m in item]
        allow = ", ".join(sorted(m.upper() for m in methods))
        note = f"Other methods: 405 (`method_not_allowed`, `Allow: {allow}`)."
        item["description"] = f"{item['description']} {note}" if item.get("description") else note
        for method in methods:
            responses = item[method].setdefault("responses", {})
            two_hosts = "more than one Host header"
            if "400" in responses:
                responses["400"] = {**responses["400"], "description": f"{responses['400']['description']}; or "
                                    f"{two_hosts}"}
            else:
                responses["400"] = {"description": f"the request has {two_hosts}", "content": error}
            responses["421"] = {"description": "a Host a loopback-bound service does not serve (`allowed_hosts`)",
                                "content": error}
            if method == "head":
                for response in responses.values():
                    response.pop("content", None)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service for `settings` (default: `load_settings()`: ./bandit-router.toml and the environment)."""
    if settings is None:
        settings = load_settings(stored_models=True)
    elif not settings.checked:
        settings = settings.check(stored_models=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # the catalog's models as the routers will hold them, with those added and retired at run time: before
        # the database is created or migrated, so that a refused start leaves it as it was
        workers = WorkerGate.of_this_worker(settings.server.workers)  # `serve --workers N`'s (`workergate`)
        try:
            live = await asyncio.to_thread(check_live_catalog, settings)
            store = open_store(settings.storage.db, synchronous=settings.storage.synchronous,
                               wal_max_bytes=settings.storage.wal_max_bytes)
            await asyncio.to_thread(store.prepare)
        except StoreError as exc:
            if workers is not None:  # not uvicorn's start-up failure, which stops every worker
                await asyncio.to_thread(start_again, exc)
            raise
        metrics = Metrics()
        engine = Engine(settings, store, observer=metrics)
        if workers is not None:
            workers.follow(engine)
        services = Services(engine, metrics, Authenticator(settings.auth.api_keys, settings.auth.admin_keys),
                            workers)
        metrics.bind(
            lambda: float(engine.router.version), lambda: float(engine.applied_seq), lambda: float(services.ready())
        )
        metrics.bind_budgets(engine.pacer.report)
        metrics.bind_checkpoints(engine.checkpointer.report, lambda: float(engine.follower.unreadable))
        app.state.settings = settings
        app.state.engine = engine
        app.state.metrics = metrics
        app.state.services = services
        engine.start()
        gateway: Gateway | None = None
        try:  # a start-up failure (a ConfigError) stops what has started, like a shutdown
            gateway = await start_gateway(settings, engine, live)
            gateway.observer = metrics.call_recorded
            if gateway.judge is not None:
                metrics.bind_judge(gateway.judge.report)
            app.state.gateway = gateway
            app.state.named_routers = start_named_routers(settings, engine, gateway)
            app.state.named_routers.observer = metrics
            metrics.declare_named_routers(settings.named_routers.routers)
            sqlite_only = "" if isinstance(settings.storage.db, DatabaseURL) else \
                f" synchronous={settings.storage.synchronous}"  # a SQLite setting: PostgreSQL does not read it
            log.info(
                "bandit-router: db=%s%s policy=%s models=%d auth=%s store_prompts=%s workers=%d version=%s",
                settings.storage.db, sqlite_only, settings.routing.policy,
                len(engine.router.models), "on" if settings.auth_enabled else "off", settings.storage.store_prompts,
                settings.server.workers, app.version,
            )
            if workers is not None:
                await workers.before_listening(engine)
            if getattr(app.state, "freeze_after_start", False):  # `tune_process`: what the start built, frozen too
                gc.collect()  # its garbage first (numba's compiles: 23,000-40,000 objects), else frozen for good
                gc.freeze()
            yield
        finally:
            if gateway is not None:
                await stop_gateway(gateway)
            await asyncio.to_thread(engine.stop)
            if workers is not None:
                workers.close()
            flush_rate_limited("uvicorn.error", "psycopg.pool")  # what their filters dropped since their last line

    app = FastAPI(
        title="bandit-router",
        version=__version__,  # `bandit-router --version`'s: 0+unknown from a source tree never installed
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by `dashboard.install` from vendored assets (no CDN)
        redoc_url=None,
        # FastAPI's native OpenTelemetry asks the global providers on every request; off unless configured.
        telemetry=None if settings.server.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    server = settings.server
    hosts = HostPolicy(server.allowed_hosts) if is_loopback(server.host) else None
    if not settings.server.opentelemetry:  # with tracing on, every request goes through FastAPI's telemetry
        app.add_middleware(HotPaths)  # inside ServiceMiddleware: Host check, body limits, metrics still apply
    app.add_middleware(ServiceMiddleware, max_body_bytes=settings.limits.max_body_bytes, hosts=hosts)
    redact.install()
    # a scanner's or a flood's line per connection; the logger is the process's (an embedding application's uvicorn
    # logs there too), so `only` these three templates are limited: every other record passes untouched
    rate_limit_logger("uvicorn.error", only=RECURRING)
    errors.install(app)
    app.add_exception_handler(StarletteHTTPException, _routing_error)  # the service's shape; OpenAI's on the gateway's
    app.include_router(router)
    app.include_router(gateway_router)
    dashboard.install(app)
    end_exactly(app.routes)  # `/openapi.json%0A`, `/docs%0A`: no route (the routers' own are `CheckedRoute`s)
    app.state.routes = [r for r in (*app.routes, *router.routes, *gateway_router.routes, *dashboard_router.routes)
                        if isinstance(r, Route)]  # `_allow`: the routers' own, as FastAPI nests included routers
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app


def check_live_catalog(settings: Settings, *, warn: bool = True) -> LiveCatalog:
    """`Settings.check_catalog` on the live catalog: the catalog with the model events stored in the database
    applied (`log.catalog`), since a model added or retired at run time stays so across restarts whatever the file
    says. A `ConfigError` when no model of it is routable, a fixed or rules policy names a model that is in
    neither the catalog nor the log, or the budgets' fallback model or a share selector, the judge model or a named
    router's model is in neither. One of those retired at run time is not refused (the service runs without it, as
    after the DELETE): `warn` logs a warning for each, saying what the service does without it. The file's
    `[budgets]` is checked only when the database stores no budget targets that load, which replace it at start
    (`BudgetState.recover`). Creates and migrates nothing (run it before `Store.prepare`): a SQLite file that does
    not exist, and a database that records no schema, hold no model event (the catalog file alone is checked); a
    schema of any earlier version is read as it is (the model events' table is schema 1's); a newer one is not
    read (`prepare` refuses it). `StoreError` when the database cannot be read. Returns the live catalog."""
    storage = settings.storage
    catalog = list(settings.load_catalog())
    if not isinstance(storage.db, DatabaseURL) and not Path(storage.db).exists():
        said = settings.check_catalog(catalog)  # opening the store would create the file
        live = LiveCatalog(tuple(catalog))
    else:
        store = open_store(storage.db, synchronous=storage.synchronous)
        try:
            version = store.schema_version()
            readable = 0 < version <= SCHEMA_VERSION
            live = stored_catalog(catalog, store) if readable else LiveCatalog(tuple(catalog))
            budgets_stored = readable and stored_budgets(store)
        finally:
            store.close()
        said = settings.check_catalog(live.active, live.retired, budgets=not budgets_stored)
    for line in said if warn else ():
        log.warning("%s", line)
    return live


def check_upstreams(settings: Settings, unreachable: Callable[[str], str | None] | None = None, *,
                    judge: bool = True, routers: bool = True, models: Iterable[ModelSpec] | None = None) -> None:
    """The feedback judge's model and every model a named router calls must be callable by the gateway: a
    `ConfigError` naming the first that is not, and why. `unreachable(model)` says why a model is not callable
    (default: from `models`, else the settings' catalog, and the environment, so that `serve` says it before the
    server starts, not as a traceback of the application's start-up; `serve` gives the live catalog's models,
    `check_live_catalog`, so that a model added at run time is checked too; the catalog file's entry of a model
    wins over them, as in `Gateway.build`)."""
    reason = unreachable if unreachable is not None else _unreachable_in_catalog(settings, models)
    judge_model = settings.judge.judge_model
    if judge and judge_model is not None and settings.judge.judge_sample_rate > 0:
        why = reason(judge_model)
        if why is not None:
            raise ConfigError(f"judge_model: {judge_model!r} {why}")
    for alias in settings.named_routers.routers if routers else ():
        missing = [f"{m!r} {why}" for m in alias.called_models if (why := reason(m)) is not None]
        if missing:
            raise ConfigError(f"routers: {alias.name!r}: {'; '.join(missing)}")


def _unreachable_in_catalog(settings: Settings, models: Iterable[ModelSpec] | None) -> Callable[[str], str | None]:
    """Why the gateway would not call a model, with the spec it calls it with: as `Gateway.build` picks it, the
    catalog file's entry, else the one of `models` (a model added at run time; one retired and added back by
    `POST /v1/models` has a live spec without the file's `base_url`, but the gateway calls it with the file's)."""
    catalog = {spec.name: spec for spec in models or ()}
    catalog.update({spec.name: spec for spec in settings.load_catalog()})

    def reason(model: str) -> str | None:  # a name outside the catalog: `Settings.check_catalog` refuses it
        return Gateway.unreachable(settings, catalog[model]) if model in catalog else None

    return reason


async def start_gateway(settings: Settings, engine: Engine, live: LiveCatalog | None = None) -> Gateway:
    """The gateway (`POST /v1/chat/completions`) and, with `judge_model`, its judge loop. `live`: the live catalog
    (`check_live_catalog`), whose models, added or retired at run time, the gateway can call before the recovery
    has applied the log (a judge or a named router the configuration names may call one)."""
    known = [] if live is None else [*live.active, *live.retired]
    gateway = Gateway.build(settings, engine, known)
    judge_model = settings.judge.judge_model
    if judge_model is not None and settings.judge.judge_sample_rate > 0:
        try:
            check_upstreams(settings, gateway.upstreams.unreachable, routers=False)
        except ConfigError:
            await gateway.close()
            raise
        spec = next((m for m in known if m.name == judge_model), None) or engine.router.spec(judge_model)
        async def answered(decision_id: str) -> bool:
            return await asyncio.to_thread(engine.has_feedback, decision_id)

        judge = Judge(settings, spec, gateway.upstreams, engine.feedback, engine.record_judge_call,
                      answered=None if settings.feedback.aggregation == "average" else answered,
                      seed=settings.routing.seed)
        judge.start()
        gateway.judge = judge
        gateway.on_answer = judge.offer
        engine.extra_stats["judge"] = lambda: judge.summary(engine.judge_totals())
    return gateway


def start_named_routers(settings: Settings, engine: Engine, gateway: Gateway) -> NamedRouters:
    """The `[[routers]]` aliases (cascades, learned cascades, LLM routers); every model they call needs an upstream."""
    check_upstreams(settings, gateway.upstreams.unreachable, judge=False)
    return NamedRouters(settings.named_routers.routers, engine, gateway, seed=settings.routing.seed)


async def stop_gateway(gateway: Gateway) -> None:
    if gateway.judge is not None:
        await gateway.judge.stop()
    await gateway.close()


def app_from_environment() -> FastAPI:
    """The app factory a worker process calls (`uvicorn --factory`): settings from `$BANDIT_ROUTER_SERVE_ARGS`."""
    raw = os.environ.get(SERVE_ARGS)
    args: dict[str, Any] = json.loads(raw) if raw else {}
    configure_logging(args.get("log_level") or "info")  # a worker is a fresh process: it has no handler yet
    settings = load_settings(args.get("config"), overrides=args.get("overrides") or {}, stored_models=True)
    lock = join_database(settings.storage.db)  # kept while this worker lives, its parent killed or not
    app = create_app(settings)
    app.state.server_lock = lock  # (store/serverlock.py)
    tune_process(app)
    return app


def tune_process(app: FastAPI | None = None) -> None:
    """Process-wide settings for a server process (`serve` calls this; an embedding application may not want it).

    - `gc.freeze()`: what the imports built lives forever; keep it out of the collector's full scans, which
      otherwise paused the event loop for 40-150 ms under load (measured). With `app`, again once its start-up
      is done: the engine, the policies, the budgets, the gateway, the named routers and the numba functions
      compiled for them (≈ 89,000 objects at 100 models and 30 named routers) were built after the first freeze,
      and each full collection scanned them all, holding the GIL (every thread, so every route in flight) for
      60-130 ms of a loaded 2-core machine's time, 0.3-0.4 s of wall time in a served run (load average 11).
      A full collection first: the start's garbage frozen would be kept for the life of the process (numba's
      compiles when its cache is cold or not writable: 23,000-40,000 objects of LLVM IR).
    - `sys.setswitchinterval(0.001)`: the writer thread needs the GIL back after each SQLite statement; with the
      default 5 ms a busy event loop made every statement wait up to 5 ms, so each commit (and every reply
      waiting for it) took 15-30 ms. At 1 ms a commit waits at most a few ms, and the loop rarely yields
      otherwise (only while the writer wants the GIL)."""
    gc.freeze()
    if app is not None:
        app.state.freeze_after_start = True
    sys.setswitchinterval(0.001)
