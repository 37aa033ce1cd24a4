"""The HTTP routes: translate JSON ⇄ core values and nothing else.

Bodies are read and validated here (not by FastAPI's body parameters) so that every malformed body, including
invalid JSON, NaN literals and 10⁴⁰⁰-digit numbers, gets the same 422 that names the field. The handlers take
the raw `Request` and no FastAPI dependencies (their resolution was a measurable share of a route request, and
plain `def` dependencies even ran in the thread pool): the app's services come from `app.state` via `_services`,
and the key check is one call (`authorize`). The OpenAPI document still declares bodies, replies and the bearer
scheme.
"""

from __future__ import annotations

import json
import os
import time
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from ..budgets import BudgetConfig
from ..catalog import ModelSpec
from ..errors import InvalidInput
from ..ids import new_decision_id
from ..jsonkeys import DuplicateKey, keys_once, once_each
from ..names import name_problem
from ..types import Decision, Message, Outcome
from ..types import Request as CoreRequest
from .auth import Authenticator, authorize
from .engine import Engine
from .errors import ERROR_RESPONSES, encode_json, error_response, json_response
from .exceptions import InvalidBody, InvalidField, PayloadTooLarge, UnsupportedMediaType
from .metrics import CONTENT_TYPE, Metrics
from .paths import CheckedRoute
from .schemas import (
    ID_PATTERN,
    NAME_PATTERN,
    BudgetsOut,
    DecisionOut,
    FeedbackIn,
    FeedbackOut,
    HealthOut,
    ModelIn,
    ModelOut,
    ModelsOut,
    PromoteIn,
    PromoteOut,
    ReadyOut,
    RouteIn,
    RouteOut,
    StatsOut,
)
from .workergate import NOT_READY, WorkerGate

Body = TypeVar("Body", bound=BaseModel)
router = APIRouter(route_class=CheckedRoute)  # path parameters: no control characters


SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]


class Services:
    """What the lifespan put on `app.state`."""

    __slots__ = ("auth", "engine", "metrics", "workers")

    def __init__(self, engine: Engine, metrics: Metrics, auth: Authenticator,
                 workers: WorkerGate | None = None) -> None:
        self.engine, self.metrics, self.auth = engine, metrics, auth
        self.workers = workers
        """The other workers' readiness, in a worker of `serve --workers N` (`workergate`); else None."""

    def ready(self) -> bool:
        """`/readyz` 200: this process is (`Engine.ready`), and so is every other worker that takes connections."""
        return self.engine.ready and (self.workers is None or not self.workers.others_recovering())


def _services(request: Request, *, client: bool = True, admin: bool = False) -> Services:
    """The app's services, after checking the API key (`client`: any key; `admin`: an admin key)."""
    services: Services = request.app.state.services
    if (client or admin) and services.auth.enabled:
        check_key(services, request.headers.get("authorization"), f"{request.method} {request.url.path}", admin=admin)
    return services


def check_key(services: Services, authorization: str | None, action: str, *, admin: bool = False) -> None:
    """401 without a valid key (403 for a client key where `admin`); a no-op when no keys are configured."""
    if services.auth.enabled:
        authorize(services.auth, authorization, admin=admin, action=action)


def _body(model: type[BaseModel] | str | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {"security": SECURITY}
    if model is not None:
        name = model if isinstance(model, str) else model.__name__
        schema = {"$ref": f"#/components/schemas/{name}"}
        extra["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    return extra


def _responses(*statuses: int, body: bool = False) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {s: ERROR_RESPONSES[s] for s in (401, 422, 503)}
    if body:
        out[413] = ERROR_RESPONSES[413]
        out[415] = ERROR_RESPONSES[415]
    for status in statuses:
        out[status] = {
            "description": {404: "not found", 409: "conflict", 403: "needs an admin key", 413: "too large",
                            410: "the stored decision cannot be read (see service → durability)"}[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
        }
    return out


def _require_json(request: Request) -> None:
    require_json(request.headers.get("content-type"))


def require_json(content_type: str | None) -> None:
    """415 unless the body is declared JSON (`application/json`, or `application/<x>+json`), with or without
    parameters: a web page can post `text/plain` to any address without a CORS preflight, never JSON."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    shown = "none" if content_type is None else repr(content_type[:100])
    raise UnsupportedMediaType(f"send the body as JSON with Content-Type: application/json (got {shown})")


async def _parse(request: Request, model: type[Body]) -> Body:
    _require_json(request)
    return validate(await request.body(), model)


def validate(raw: bytes, model: type[Body]) -> Body:
    """The body as `model`. A key given twice is refused, naming it (`jsonkeys.keys_once`: both parsers would keep
    the last). pydantic's own JSON parser first (fast); when it calls the body invalid JSON, Python's `json`
    decides, so that `NaN` or a lone surrogate escape is judged by the field it is in."""
    try:
        keys_once(raw)
    except DuplicateKey as exc:
        raise InvalidField("body", str(exc)) from None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:  # invalid JSON is the one error (not `errors()`: one dict per error)
        if exc.error_count() != 1 or exc.errors(include_url=False)[0]["type"] != "json_invalid":
            raise
    try:
        data = json.loads(raw, object_pairs_hook=once_each)  # a body jiter could not read (a lone surrogate escape)
    except DuplicateKey as exc:
        raise InvalidField("body", str(exc)) from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and int-size errors are ValueErrors
        raise InvalidField("body", f"not valid JSON ({type(exc).__name__})") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidBody(exc, data) from None


def core_request(body: RouteIn, max_prompt_chars: int) -> CoreRequest:
    """A validated `RouteIn` → the core's `Request` (413 for a prompt over the limit)."""
    if (body.prompt is None) == (body.messages is None):
        raise InvalidField("prompt", "give exactly one of `prompt` or `messages`")
    if body.prompt is not None:
        size = len(body.prompt)
        messages = None
    else:
        assert body.messages is not None
        size = sum(len(m.content) for m in body.messages)
        messages = tuple(Message(m.role, m.content) for m in body.messages)
    if size > max_prompt_chars:
        raise PayloadTooLarge(f"the prompt has {size} characters; the limit is {max_prompt_chars} (max_prompt_chars)")
    return CoreRequest(
        prompt=body.prompt,
        messages=messages,
        context=body.context or {},
        models=tuple(body.models) if body.models is not None else None,
        cost_weight=body.cost_weight,
        decision_id=body.decision_id if body.decision_id is not None else new_decision_id(),
    )


def route_reply(decision: Decision) -> dict[str, Any]:
    return {
        "decision_id": decision.decision_id,
        "model": decision.model,
        "probability": decision.probability,
        "probabilities": decision.probabilities,
        "policy": decision.policy,
        "policy_version": decision.policy_version,
    }


@router.post(
    "/v1/route", response_model=RouteOut, responses=_responses(409, body=True), openapi_extra=_body(RouteIn),
    tags=["v1"],
)
async def route(request: Request) -> Response:
    """Choose a model for a prompt (or chat messages). The decision is stored before the reply; the reply's
    `decision_id` (also in the `x-decision-id` header) is what feedback refers to."""
    started = time.perf_counter()
    services = _services(request)
    _require_json(request)
    reply, decision_id = await route_call(services, await request.body())
    response = Response(reply, media_type="application/json", headers={"x-decision-id": decision_id})
    services.metrics.route_latency.observe(time.perf_counter() - started)
    return response


async def route_call(services: Services, raw: bytes) -> tuple[bytes, str]:
    """`POST /v1/route` after the key and media type checks: the JSON reply and the decision id (shared with the
    plain-ASGI lane, `hotpaths.py`)."""
    engine = services.engine
    body = validate(raw, RouteIn)
    decision = await engine.route(core_request(body, engine.settings.limits.max_prompt_chars))
    return encode_json(route_reply(decision)), decision.decision_id


@router.post(
    "/v1/feedback",
    response_model=FeedbackOut,
    responses=_responses(404, 409, 410, body=True),
    openapi_extra=_body(FeedbackIn),
    tags=["v1"],
)
async def feedback(request: Request) -> Response:
    """Report the outcome of a decision. Committed (with a seq) before the reply and before it is learned.

    `status`: `applied` (learned), `duplicate` (the same feedback again: learned once), `late` (after the reward
    window: stored, not learned), `ignored` (a different second feedback under `aggregation = earliest`),
    `pending` (`aggregation = average`: learned as the mean when the window closes)."""
    services = _services(request)
    _require_json(request)
    return Response(await feedback_call(services, await request.body()), media_type="application/json")


async def feedback_call(services: Services, raw: bytes) -> bytes:
    """`POST /v1/feedback` after the key and media type checks: the JSON reply (shared with `hotpaths.py`)."""
    body = validate(raw, FeedbackIn)
    outcome = Outcome(
        quality=body.quality,
        cost_usd=body.cost_usd,
        input_tokens=body.input_tokens,
        output_tokens=body.output_tokens,
        latency_s=None if body.latency_ms is None else body.latency_ms / 1000.0,
    )
    result = await services.engine.feedback(body.decision_id, outcome, body.source)
    return encode_json(
        {"decision_id": result.decision_id, "status": result.status, "reward": result.reward, "seq": result.seq}
    )


@router.get(
    "/v1/decisions/{decision_id}",
    response_model=DecisionOut,
    responses=_responses(404, 410),
    openapi_extra=_body(),
    tags=["v1"],
)
async def get_decision(
    request: Request, decision_id: Annotated[str, Path(max_length=64, pattern=ID_PATTERN)]
) -> Response:
    """A stored decision joined with its feedback (the prompt only when `store_prompts = true`), and the gateway's
    record of its upstream call (`call`: tokens, cost, time to first token, latency, status, try; null for a
    decision made by `/v1/route`); for a named router's decision its whole chain (`chain`: every call, every
    accept/escalate step with its confidence and propensity, what the chain paid after each step)."""
    engine = _services(request).engine
    stored, feedback_rows, call = await run_in_threadpool(engine.decision, decision_id)
    d = stored.decision
    ctx = d.context
    return json_response(
        {
            "decision_id": d.decision_id,
            "created_at": d.created_at,
            "model": d.model,
            "probability": d.probability,
            "probabilities": d.probabilities,
            "expected_cost_usd": dict(zip(d.models, d.expected_cost_usd, strict=False)),
            "policy": d.policy,
            "policy_version": d.policy_version,
            "cost_weight": d.cost_weight,
            "tenant": stored.tenant,
            "context": {
                "input_tokens": ctx.input_tokens,
                "n_chars": ctx.n_chars,
                "turns": ctx.turns,
                "markers": sorted(ctx.markers),
                "attributes": dict(ctx.attributes),
                "features": {ns: len(idx) for ns, (idx, _) in ctx.features.items()},
            },
            "prompt": stored.prompt,
            "feedback": [r.to_json() for r in feedback_rows],
            "call": None if call is None else call.to_json(),
            "chain": None if call is None else call.chain_json(),
        }
    )


def _model_json(spec: ModelSpec, feedback_count: int) -> dict[str, Any]:
    return {**spec.learning_json(), "feedback": feedback_count}


def openai_models(engine: Engine) -> list[dict[str, Any]]:
    """What a request may name as `model`, as OpenAI's model objects: the gateway's router alias, the named routers,
    then the active models that are not `route = false` (a judge's or routing LLM's), in arm order."""
    alias = engine.settings.gateway.router_alias
    return (
        [{"id": alias, "object": "model", "created": 0, "owned_by": "bandit-router"}]
        + [{"id": r.name, "object": "model", "created": 0, "owned_by": "bandit-router"}
           for r in engine.settings.named_routers.routers]
        + [{"id": m.name, "object": "model", "created": 0, "owned_by": m.family or "bandit-router"}
           for m in engine.router.models if m.route]
    )


@router.get("/v1/models", response_model=ModelsOut, responses=_responses(), openapi_extra=_body(), tags=["v1"])
async def list_models(request: Request) -> Response:
    """The active models (in arm order) with their learned feedback counts, and the retired ones; also in OpenAI's
    list shape (`object`, `data`: the gateway's router alias first, then the named routers, then the active models a
    request may name: not the `route = false` ones, a judge's or routing LLM's), for OpenAI clients."""
    engine = _services(request).engine
    counts = engine.router.feedback_counts()
    return json_response(
        {
            "object": "list",
            "data": openai_models(engine),
            "models": [_model_json(m, counts.get(m.name, 0)) for m in engine.router.models],
            "retired": engine.retired_models(),
        }
    )


@router.post(
    "/v1/models",
    response_model=ModelOut,
    status_code=201,
    responses=_responses(403, 409, body=True),
    openapi_extra=_body(ModelIn),
    tags=["v1"],
)
async def add_model(request: Request) -> Response:
    """Add a model at run time (admin key). It starts cold and is explored at once."""
    engine = _services(request, admin=True).engine
    body = await _parse(request, ModelIn)
    spec = await engine.add_model(ModelSpec(**body.model_dump()))
    return json_response(_model_json(spec, 0), status=201)


@router.delete("/v1/models/{name:fullpath}", responses=_responses(403, 404, 409), openapi_extra=_body(), tags=["v1"])
async def retire_model(request: Request, name: Annotated[str, Path(max_length=128, pattern=NAME_PATTERN)]) -> Response:
    """Stop routing to a model (admin key). Feedback for its past decisions is still learned. A name with `/`
    (`meta-llama/Llama-3.1-8B`) goes in the path as is or with `%2F`."""
    engine = _services(request, admin=True).engine
    problem = name_problem(name)  # a control character was refused before (`paths.CheckedRoute`)
    if problem is not None:
        raise InvalidField("name", f"not a valid model name: {problem}")
    await engine.retire_model(name)
    return json_response({"retired": name})


@router.post(
    "/v1/policies/promote",
    response_model=PromoteOut,
    responses=_responses(403, 404, 409, body=True),
    openapi_extra=_body(PromoteIn),
    tags=["v1"],
)
async def promote_policy(request: Request) -> Response:
    """Make a shadow policy the live one (admin key). Refused (409, with the reason) unless the shadow's DR lower
    bound on the logged decisions beats the live policy's estimate, or `force` is true. Durable: a log event."""
    engine = _services(request, admin=True).engine
    body = await _parse(request, PromoteIn)
    return json_response(await engine.promote(body.shadow, force=body.force))


@router.get("/v1/stats", response_model=StatsOut, responses=_responses(), openapi_extra=_body(), tags=["v1"])
async def stats(request: Request) -> Response:
    """Per model: decisions, share, learned feedbacks, mean quality, mean reward, spend; from the database."""
    engine = _services(request).engine
    return json_response(await run_in_threadpool(engine.stats))


def _budgets_reply(engine: Engine) -> dict[str, Any]:
    return {"budgets": engine.pacer.config.to_mapping(), "targets": engine.pacer.config.describe(),
            "report": engine.pacer.report(), "left_out": engine.pacer.left_out(), **engine.budgets.saving()}


@router.get("/v1/budgets", response_model=BudgetsOut, responses=_responses(), openapi_extra=_body(), tags=["v1"])
async def get_budgets(request: Request) -> Response:
    """The budget targets (`budgets`: the `[budgets]` table form; `targets`: the text grammar), the pacer's
    report (spend so far, λ, realised value of every target, per tenant), and whether its state is saved
    (`state_saved`; `state_unsaved_why`: why not, else null). `left_out`: stored targets this version refuses (a
    newer version's), kept stored but not in `budgets`: a PUT of `budgets` drops them."""
    return json_response(_budgets_reply(_services(request).engine))


@router.put("/v1/budgets", response_model=BudgetsOut, responses=_responses(403, body=True),
            openapi_extra=_body("BudgetsIn"), tags=["v1"])
async def put_budgets(request: Request) -> Response:
    """Replace all budget targets (admin key); the body is the `[budgets]` table as JSON, e.g.
    `{"avg_cost_usd": 0.0005, "tenants": {"acme": {"spend_usd": "50/1d"}}}`. Effective from the next request,
    stored, and kept across restarts. A target whose value changed keeps its multiplier and its period's spend."""
    engine = _services(request, admin=True).engine
    _require_json(request)
    raw = await request.body()
    try:
        data = json.loads(raw, object_pairs_hook=once_each)  # a key given twice is refused, as in the environment
    except DuplicateKey as exc:
        raise InvalidField("budgets", str(exc)) from None
    except (ValueError, RecursionError) as exc:
        raise InvalidField("body", f"not valid JSON ({type(exc).__name__})") from None
    try:
        config = BudgetConfig.from_mapping(data)
    except (InvalidInput, TypeError, ValueError) as exc:
        # the field says it once: "budgets: tenants.acme: …", not "budgets: budgets.tenants.acme: …"
        raise InvalidField("budgets", str(exc).removeprefix("budgets: ").removeprefix("budgets.")) from None
    await engine.set_budgets(config)
    return json_response(_budgets_reply(engine))


@router.get("/healthz", tags=["ops"], response_model=HealthOut)
@router.head("/healthz", tags=["ops"])  # HEAD probes (HAProxy's `httpchk HEAD`, `curl -I`): no 405
async def healthz() -> Response:
    """Liveness: 200 while the process serves HTTP (also to HEAD)."""
    return json_response({"status": "ok"})


@router.get("/readyz", tags=["ops"], response_model=ReadyOut, responses={503: ERROR_RESPONSES[503]})
@router.head("/readyz", tags=["ops"], responses={503: ERROR_RESPONSES[503]})
async def readyz(request: Request) -> Response:
    """Readiness: 200 once the learned state is recovered and the database is usable, else 503 (also to HEAD).
    The reply names the process (`pid`), what its recovery did, and its checkpoints now (withheld while learned
    feedback is skipped: `Checkpointer.report`), and whether the budget pacer's state is saved (`budget_state`)."""
    services = _services(request, client=False)
    engine = services.engine
    if services.ready():
        return json_response({"status": "ready", "pid": os.getpid(), "recovery": engine.recovery,
                              "checkpoints": engine.checkpointer.report(), "budget_state": engine.budgets.saving()})
    return error_response(503, "unavailable", f"not ready: {NOT_READY if engine.ready else engine.state}")


@router.get(
    "/metrics",
    tags=["ops"],
    response_class=Response,
    responses={200: {"description": "Prometheus text exposition format",
                     "content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
async def metrics_text(request: Request) -> Response:
    """Prometheus text format."""
    return Response(_services(request, client=False).metrics.render(), media_type=CONTENT_TYPE)
