"""The dashboard's HTTP side: the page (`GET /dashboard`), its vendored assets, and the JSON endpoints it polls.
Translation only: the numbers come from `log.Monitor` (bounded reads of the store), in a thread pool.

With API keys configured every JSON endpoint here needs a key (`Authorization: Bearer`), like the other /v1
routes; the page itself holds no data (it asks for a key and keeps it in the tab's sessionStorage).
"""

from __future__ import annotations

import math
import time
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from ...log import RANGES, Monitor, Window
from ...log.timeseries import MAX_TIME
from ..auth import Role, authorize, bearer_token
from ..errors import ERROR_RESPONSES, json_response
from ..exceptions import InvalidField
from ..paths import CheckedRoute
from .schemas import LiveOut, RecentOut, ShadowsOut, TimeseriesOut

router = APIRouter(route_class=CheckedRoute)  # path parameters: no control characters
STATIC = resources.files(__package__) / "static"
STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86400)
"""Default steps (seconds): the smallest that gives at most `DEFAULT_BUCKETS` buckets."""
DEFAULT_BUCKETS = 400
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]
RESPONSES: dict[int | str, dict[str, Any]] = {s: ERROR_RESPONSES[s] for s in (401, 422, 503)}


def _monitor(request: Request) -> Monitor:
    """The app's monitor (built on first use), after checking the API key; 503 at once while the database does
    not answer, as the other reads (`Engine.require_readable`)."""
    services = request.app.state.services
    authorize(services.auth, request.headers.get("authorization"), action=f"{request.method} {request.url.path}")
    services.engine.require_readable()
    monitor: Monitor | None = getattr(request.app.state, "monitor", None)
    if monitor is None:
        engine = services.engine
        monitor = Monitor(engine.store, engine.policies, engine.pacer, engine.settings.load_catalog,
                          reward_window_s=engine.settings.feedback.reward_window_s,
                          default_reward=engine.settings.feedback.default_reward is not None)
        request.app.state.monitor = monitor
    return monitor


def window(
    now: float, range_: str | None, since: float | None, until: float | None, step: int | None
) -> Window:
    """The buckets a request asks for: a named `range` (hour, day, week: up to now), or `since` (Unix seconds;
    negative: seconds before now, `-0` now) to `until` (default now) in buckets of `step` seconds (default: the
    smallest of `STEPS` that gives at most `DEFAULT_BUCKETS` buckets); neither: the last hour. `range` with `since` or
    `until`, or `until` without `since`, is refused (422) rather than answered for another window."""
    if range_ is not None and (since is not None or until is not None):
        raise InvalidField("range", "give either `range` or `since` (with `until`), not both")
    if until is not None and since is None:
        raise InvalidField("until", "`until` needs `since` (the window's start)")
    if range_ is not None:
        if range_ not in RANGES:
            raise InvalidField("range", f"one of {', '.join(RANGES)} (got {range_[:20]!r})")
        seconds, default_step = RANGES[range_]
        return _checked(now - seconds, now, step or default_step)
    if since is None:
        return window(now, "hour", None, None, step)
    end = now if until is None else until
    start = now + since if math.copysign(1.0, since) < 0 else since  # -0: now (not the epoch, as 0 is)
    if step is None and math.isfinite(start) and math.isfinite(end):
        step = next((s for s in STEPS if (end - start) / s <= DEFAULT_BUCKETS), STEPS[-1])
    return _checked(start, end, step or 60)


def _checked(since: float, until: float, step: int) -> Window:
    try:
        return Window.of(since, until, step)
    except ValueError as exc:
        raise InvalidField("step" if "step" in str(exc) or "bucket" in str(exc) else "since", str(exc)) from None


@router.get("/dashboard", include_in_schema=False)
async def page() -> HTMLResponse:
    """The dashboard page (no data in it: it fetches the JSON endpoints below with the key it was given)."""
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"),
                        headers={"cache-control": "no-cache", "x-frame-options": "DENY",
                                 "content-security-policy": CSP, "referrer-policy": "no-referrer"})


CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
"""Everything the page loads comes from this service (no CDN, no inline script)."""


@router.get(
    "/v1/stats/timeseries", response_model=TimeseriesOut, responses=RESPONSES, openapi_extra={"security": SECURITY},
    tags=["dashboard"],
)
async def stats_timeseries(
    request: Request,
    range_: Annotated[Literal["hour", "day", "week"] | None,
                      Query(alias="range", description="the last hour, day or week (default: hour)")] = None,
    since: Annotated[float | None, Query(ge=-MAX_TIME, le=MAX_TIME, allow_inf_nan=False,
                                         description="Unix seconds; negative: seconds before now "
                                                     "(`-0`: now)")] = None,
    until: Annotated[float | None, Query(ge=0, le=MAX_TIME, allow_inf_nan=False,
                                         description="Unix seconds (default: now)")] = None,
    step: Annotated[int | None, Query(ge=60, le=7 * 86400, multiple_of=60,
                                      description="bucket width in seconds, a multiple of 60")] = None,
) -> Response:
    """Traffic, shares, quality, cost, reward, exploration and feedback per time bucket, with per-model totals
    and the best fixed model's estimated level, from the per-minute rollup. Either `range` or `since` (with
    `until` and `step`); neither: the last hour. Buckets are aligned on `step` (the first may start before the
    range, and a `step` longer than the range gives one or two buckets wider than it); `overall`, `models` and
    `best_fixed` count the range itself, to the minute. 422 when `since` is not before `until`, the range holds
    more than 2,000 buckets of `step`, `range` comes with `since` or `until`, or `until` without `since`."""
    monitor = _monitor(request)
    chosen = window(time.time(), range_, since, until, step)
    return json_response(await run_in_threadpool(monitor.timeseries, chosen))


@router.get("/v1/stats/live", response_model=LiveOut, responses=RESPONSES, openapi_extra={"security": SECURITY},
            tags=["dashboard"])
async def stats_live(request: Request) -> Response:
    """The live policy and its version, the mean probability it gave each model over the newest 200 decisions
    and the one it would give each model now (its current pmf on the newest 100 decisions' contexts), the
    budgets (each target against its realised value, per tenant), the named routers' counts (escalations), and
    whether this key may promote."""
    monitor = _monitor(request)
    services = request.app.state.services
    reply = await run_in_threadpool(monitor.live)
    role = services.auth.role(bearer_token(request.headers.get("authorization")))
    reply["can_promote"] = (not services.auth.enabled) or role is Role.ADMIN
    reply["store_prompts"] = services.engine.settings.storage.store_prompts
    named = getattr(request.app.state, "named_routers", None)
    reply["named_routers"] = await run_in_threadpool(named.report) if named is not None else {}
    return json_response(reply)


@router.get("/v1/stats/recent", response_model=RecentOut, responses=RESPONSES, openapi_extra={"security": SECURITY},
            tags=["dashboard"])
async def stats_recent(
    request: Request, limit: Annotated[int, Query(ge=1, le=500, description="how many, newest first")] = 50
) -> Response:
    """The newest decisions: time, model, probability, λ, tenant, and the learned quality when it arrived, else
    what became of the feedback (`expired`: none came before the reward window closed); the prompt only when
    `store_prompts = true`."""
    monitor = _monitor(request)
    prompts = request.app.state.services.engine.settings.storage.store_prompts
    return json_response({"decisions": await run_in_threadpool(monitor.recent, limit, prompts=prompts)})


@router.get("/v1/stats/shadows", response_model=ShadowsOut, responses=RESPONSES, openapi_extra={"security": SECURITY},
            tags=["dashboard"])
async def stats_shadows(request: Request) -> Response:
    """Each shadow policy's doubly robust estimate with its 95% interval against the live policy's, on the newest
    2,000 decisions that logged its pmf (the live policy's own), and whether that evidence would allow a promotion
    (recomputed at most every 15 s). `POST /v1/policies/promote` decides on the whole log."""
    monitor = _monitor(request)
    return json_response(await run_in_threadpool(monitor.shadows))
