"""Request and response bodies of the HTTP API (v1). Strict: no type coercion, no NaN or infinities, no unknown
fields, bounded lengths, so that anything a client can send is either valid or a 422 that names the field."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from ..budgets.config import MAX_SHARES, MAX_SPENDS, MAX_TENANTS
from ..catalog import MAX_LATENCY_S, MAX_OUTPUT_TOKENS, MAX_PRIOR_STRENGTH, MAX_USD_PER_MTOK
from ..names import name_problem
from ..reward import MAX_COST_WEIGHT
from ..router import MAX_DECISION_ID_LENGTH

ID_PATTERN = r"^[A-Za-z0-9_.:\-]+$"
_SEGMENT = r"(?:\.*[A-Za-z0-9_:@+\-][A-Za-z0-9_.:@+\-]*|\.{3,})"
NAME_PATTERN = rf"^{_SEGMENT}(?:/{_SEGMENT})*$"
"""A name sent over HTTP: ASCII letters, digits and `_.:@+-`, in segments separated by `/` that are neither
empty nor `.` or `..` (`bandit_router.names`' grammar, restricted to ASCII; no lookarounds, so that the OpenAPI
document's pattern is the one the service applies)."""
PATTERN_WORDS = {
    NAME_PATTERN: "not a name the HTTP API takes: ASCII letters, digits and _.:@+- in segments separated by /, "
                  "none of them empty, . or .. (no spaces)",
    ID_PATTERN: "not a decision id: ASCII letters, digits and _.:- only",
}
"""What a pattern means, in words, for a 422 (`errors.said`) instead of the regular expression."""
MAX_TOKENS = 10**9
MAX_CONTEXT_ITEMS = 32



def _name(value: str) -> str:
    """The grammar of `bandit_router.names` (no `.`/`..` or empty segments between `/`)."""
    problem = name_problem(value)
    if problem is not None:
        raise ValueError(f"not a valid name: {problem}")
    return value


Name = AfterValidator(_name)
DecisionId = Annotated[str, Field(min_length=1, max_length=MAX_DECISION_ID_LENGTH, pattern=ID_PATTERN)]
ModelName = Annotated[str, Field(min_length=1, max_length=128, pattern=NAME_PATTERN), Name]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _tokens(value: Any) -> int:
    """A token count: an integer in [0, 10⁹]; `143.0` counts as 143 (JSON does not tell 143 from 143.0)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    if not 0 <= value <= MAX_TOKENS:
        raise ValueError(f"must be in [0, {MAX_TOKENS}]")
    return value


Tokens = Annotated[int, PlainValidator(_tokens),
                   WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_TOKENS})]


MAX_CONTEXT_NUMBER = 2**53


def _context_value(value: Any) -> str | bool | int | float:
    """A context value: a string (≤ 256 characters), a boolean, or a finite number within ±2⁵³."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if len(value) > 256:
            raise ValueError("context strings have at most 256 characters")
        return value
    if isinstance(value, int):
        if abs(value) > 2**53:
            raise ValueError("context integers must be within ±2^53")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) > MAX_CONTEXT_NUMBER:
            raise ValueError("context numbers must be finite and within ±2^53")
        return value
    raise ValueError("context values must be strings, numbers or booleans")


ContextValue = Annotated[
    str | bool | int | float,
    PlainValidator(_context_value),
    WithJsonSchema({"anyOf": [{"type": "string", "maxLength": 256}, {"type": "boolean"},
                              {"type": "number", "minimum": -MAX_CONTEXT_NUMBER, "maximum": MAX_CONTEXT_NUMBER}]}),
]
ContextKey = Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN), Name]


def _few_enough(value: Any) -> Any:
    """A context of more than `MAX_CONTEXT_ITEMS` keys is refused before its keys and values are validated, with
    the error pydantic's `max_length` gives: pydantic checks a dict's length after its items, and 80,000 invalid
    values (a 1 MB body) were 80,000 Python exceptions, seconds of the event loop, for a 422 about the first."""
    if isinstance(value, dict) and len(value) > MAX_CONTEXT_ITEMS:
        raise PydanticCustomError(
            "too_long", "Dictionary should have at most {max_length} items after validation, not {actual_length}",
            {"field_type": "Dictionary", "max_length": MAX_CONTEXT_ITEMS, "actual_length": len(value)},
        )
    return value


Context = Annotated[
    dict[ContextKey, ContextValue],
    Field(max_length=MAX_CONTEXT_ITEMS),
    BeforeValidator(_few_enough),
    WithJsonSchema({"type": "object", "maxProperties": MAX_CONTEXT_ITEMS,
                    "propertyNames": {"minLength": 1, "maxLength": 64, "pattern": NAME_PATTERN},
                    "additionalProperties": ContextValue.__metadata__[1].json_schema}),
]
"""Caller attributes of a request (`/v1/route`'s `context`, the gateway's `bandit_router.context`)."""
CostWeight = Annotated[float, Field(ge=0, le=MAX_COST_WEIGHT, allow_inf_nan=False)]
"""λ for one request: finite, in [0, 10⁹] (sums of it in the rollup stay finite)."""
MAX_ALLOWED_MODELS = 1024
"""The most names a request's `models` may list. It was 64, fewer than the 128 models `max_models` lets a catalog
hold by default, so a request allowing 65 of a 100-model catalog was a 422 (found by hunt-scale); a route among
1,024 models costs seconds (the `default` policy's pmf grows with the square of the models in play)."""
AllowedModels = Annotated[list[ModelName], Field(min_length=1, max_length=MAX_ALLOWED_MODELS)]
"""A request's allowed subset of the active models."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class MessageIn(_Strict):
    role: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z_]+$")]
    content: str


class RouteIn(_Strict):
    """`POST /v1/route`: exactly one of `prompt` or `messages`."""

    prompt: str | None = None
    messages: Annotated[list[MessageIn], Field(min_length=1, max_length=1000)] | None = None
    decision_id: DecisionId | None = Field(None, description="caller-chosen id for the feedback to use")
    models: AllowedModels | None = Field(
        None, description="allowed subset of the active models"
    )
    cost_weight: CostWeight | None = Field(
        None, description="λ: quality points worth 1 USD, for this request"
    )
    context: Context | None = Field(
        None, description='caller attributes, e.g. {"tenant": "acme", "task": "support"}'
    )

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"prompt": "Summarise this ticket in one line.", "context": {"tenant": "acme"}}],
            # exactly one of `prompt` / `messages` (null counts as absent)
            "oneOf": [
                {"required": ["prompt"], "properties": {"prompt": {"type": "string"}, "messages": {"type": "null"}}},
                {"required": ["messages"], "properties": {"messages": {"type": "array"}, "prompt": {"type": "null"}}},
            ],
        },
    )


class RouteOut(BaseModel):
    decision_id: str
    model: str
    probability: float
    probabilities: dict[str, float]
    policy: str
    policy_version: int


class FeedbackIn(_Strict):
    """`POST /v1/feedback`: `quality` in [0, 1] is required; the rest is optional and non-negative."""

    decision_id: DecisionId
    quality: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    cost_usd: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] | None = None
    input_tokens: Tokens | None = None
    output_tokens: Tokens | None = None
    latency_ms: Annotated[float, Field(ge=0, le=86_400_000, allow_inf_nan=False)] | None = None
    source: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/@+ \-]+$")] | None = None

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"decision_id": "0194c1d2e3f4a5b6c7d8e9f0a1b2c3d4", "quality": 0.8,
                                         "output_tokens": 143, "latency_ms": 930}]},
    )


class FeedbackOut(BaseModel):
    decision_id: str
    status: str = Field(description="applied | duplicate | late | ignored | pending | unrouted")
    reward: float
    seq: int


class PromoteIn(_Strict):
    """Make a shadow policy the live one (admin key)."""

    shadow: Annotated[str, Field(min_length=1, max_length=256, description="the shadow's name (its policy spec)")]
    force: bool = Field(default=False, description="promote even if its lower bound does not beat the live policy")


class BudgetsOut(BaseModel):
    budgets: dict[str, Any] = Field(description="the targets and settings paced, as the `[budgets]` table")
    targets: list[str] = Field(description="the targets paced, in the text grammar (`@acme:spend_usd=50/1d`)")
    report: dict[str, Any] = Field(description="per scope (`global`, `tenants`): requests, booked spend, λ, and "
                                   "per target its value, realised value and multiplier")
    left_out: list[str] = Field(description="stored targets this version refuses (a newer version's, "
                                "`spend_usd=900/1mo`): not paced, not in `budgets`, kept stored as stored until a "
                                "PUT replaces the targets (a PUT of `budgets` as read drops them)")
    state_saved: bool = Field(description="false while the pacer's state is not saved (the stored state row is "
                              "another version's, which is not saved over until a PUT)")
    state_unsaved_why: str | None = Field(description="why the state is not saved, else null")


class PromoteOut(BaseModel):
    promoted: str
    previous: str = Field(description="the policy that was live; it keeps running as a shadow")
    forced: bool = Field(description="true when promoted by `force` against the evidence")
    check: dict[str, Any] = Field(description="promotion_check: ok, reason, estimator, shadow_ci_low, "
                                                "live_value, n (the decisions scored), left_out (those where "
                                                "the live policy's or the shadow's logged pmf gave probability to "
                                                "a model no policy may route to now), warnings (the "
                                                "evaluation's: how many outcomes are "
                                                "a closed window's default_reward, models no longer routable) "
                                                "(only ok, reason, n with fewer than 10 decisions)")


class ModelIn(_Strict):
    """A model to add at run time (the fields of a catalog entry)."""

    name: ModelName
    input_usd_per_mtok: Annotated[float, Field(ge=0, le=MAX_USD_PER_MTOK, allow_inf_nan=False)]
    output_usd_per_mtok: Annotated[float, Field(ge=0, le=MAX_USD_PER_MTOK, allow_inf_nan=False)]
    tags: Annotated[
        dict[Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN), Name],
             Annotated[str, Field(min_length=1, max_length=128, pattern=NAME_PATTERN), Name]],
        Field(max_length=32),
        WithJsonSchema({"type": "object", "maxProperties": 32,
                        "propertyNames": {"minLength": 1, "maxLength": 64, "pattern": NAME_PATTERN},
                        "additionalProperties": {"type": "string", "minLength": 1, "maxLength": 128,
                                                 "pattern": NAME_PATTERN}}),
    ] = Field(default_factory=dict)
    latency_s: Annotated[float, Field(ge=0, le=MAX_LATENCY_S, allow_inf_nan=False)] | None = None
    output_tokens: Annotated[float, Field(ge=0, le=MAX_OUTPUT_TOKENS, allow_inf_nan=False)] | None = None
    prior_quality: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = Field(
        None, description="prior mean quality in [0, 1] (the `default` policy starts the model from it)"
    )
    prior_strength: Annotated[float, Field(gt=0, le=MAX_PRIOR_STRENGTH, allow_inf_nan=False)] | None = Field(
        None, description="how many feedbacks the prior is worth (default 2; needs prior_quality)"
    )

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={  # prior_strength needs prior_quality (null counts as absent)
            "anyOf": [
                {"properties": {"prior_strength": {"type": "null"}}},
                {"required": ["prior_quality"], "properties": {"prior_quality": {"type": "number"}}},
            ],
        },
    )


class ModelOut(BaseModel):
    name: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    tags: dict[str, str]
    latency_s: float | None = None
    output_tokens: float | None = None
    prior_quality: float | None = None
    prior_strength: float | None = None
    feedback: int = 0


class OpenAIModel(BaseModel):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str


class ModelsOut(BaseModel):
    """The router's own listing (`models`, `retired`) and OpenAI's list shape (`object`, `data`) in one reply: an
    OpenAI client reads `data` (the router alias first, then the named routers, then the active models a request
    may name, with an upstream or not: not those with `route = false`, a judge or routing LLM only)."""

    object: str = "list"
    data: list[OpenAIModel] = Field(default_factory=list)
    models: list[ModelOut]
    retired: list[str]


BODY_MODELS: dict[str, type[BaseModel]] = {m.__name__: m for m in (RouteIn, FeedbackIn, ModelIn, PromoteIn)}
"""The request bodies, by name (a pydantic `ValidationError`'s `title`); `routes.py` validates them by hand."""


def known_fields(body: type[BaseModel], loc: Sequence[str | int]) -> tuple[str, ...]:
    """The fields of the (nested) model that holds the last part of `loc`: `RouteIn, ("messages", 0, "contnet")`
    → `("role", "content")`; `()` when the path leaves the models."""
    model = body
    for part in loc[:-1]:
        if isinstance(part, int):  # a list index: the list's item model is already `model`
            continue
        field = model.model_fields.get(part)
        nested = None if field is None else _model_in(field.annotation)
        if nested is None:
            return ()
        model = nested
    return tuple(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model inside an annotation (`list[MessageIn] | None` → `MessageIn`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


class ErrorOut(BaseModel):
    error: str = Field(description="a short code, e.g. invalid_input")
    message: str
    field: str | None = Field(None, description="the request field at fault, when there is one")


class HealthOut(BaseModel):
    status: str = Field(description='"ok"')


class RecoveryOut(BaseModel):
    checkpoint_seq: int | None = Field(description="the feedback seq of the checkpoint restored (null: none)")
    replayed: int = Field(description="feedback replayed from the log after it")
    seconds: float = Field(description="how long recovery took")
    policy_version: int
    unreadable: dict[str, Any] = Field(description="learned feedback skipped because its decision cannot be read: "
                                       "`skipped`, `first_seqs`")
    budgets: str = Field(description="what the budget pacer recovered")


class CheckpointsOut(BaseModel):
    withheld: bool = Field(description="true while no checkpoint is stored because learned feedback is skipped")
    seq: int | None = Field(description="the feedback seq of the newest checkpoint restored or stored (null: none)")
    feedback_since: int = Field(description="the feedback seqs applied after it (about what a restart replays)")


class BudgetStateOut(BaseModel):
    state_saved: bool
    state_unsaved_why: str | None


class ReadyOut(BaseModel):
    status: str = Field(description='"ready"')
    pid: int = Field(description="the process that answered")
    recovery: RecoveryOut
    checkpoints: CheckpointsOut
    budget_state: BudgetStateOut = Field(description="whether the pacer's state is saved, as in `GET /v1/budgets`")


class ModelStats(BaseModel):
    model: str
    decisions: int
    share: float
    feedback: int = Field(description="learned feedbacks that callers sent (not a closed window's default reward; "
                          "mean_quality, mean_reward and spend_usd are over these)")
    mean_quality: float | None
    mean_reward: float | None
    spend_usd: float | None
    in_catalog: bool = Field(description="whether the model is in the catalog now; false: removed from the catalog "
                             "file or retired at run time (`DELETE /v1/models/NAME`), listed for its past decisions")


class StatsOut(BaseModel):
    pid: int = Field(description="the process that answered: policy_version and applied_seq are its own")
    policy: str
    policy_version: int
    live_policy: str = Field(description="the live policy's name: the configured policy, or the shadow promoted last")
    shadows: list[dict[str, Any]] = Field(
        default_factory=list, description="shadow policies (name, candidate `shadow:NAME`, policy, policy_version)"
    )
    feedback_seq: int
    applied_seq: int
    decisions: int
    feedback_learned: int = Field(description="learned feedbacks that callers sent (the dashboard's `learned`; a "
                                  "closed window's default reward is learned too, counted in feedback_by_status)")
    feedback_rate: float = Field(description="feedback_learned ÷ decisions (the dashboard's coverage)")
    feedback_by_status: dict[str, int]
    unreadable: dict[str, Any] = Field(
        default_factory=dict, description="learned feedback rows this process skipped because their decision cannot "
        "be read (a value corrupted on disk or edited by hand): `skipped`, and the `first_seqs`; while any is "
        "skipped it stores no checkpoint (a start replays them once repaired)",
    )
    checkpoints: dict[str, Any] = Field(
        default_factory=dict, description="this process's checkpoints: `seq`, the feedback seq of the newest it "
        "restored or stored (null: none); `feedback_since`, the feedback seqs it applied after it (about what a "
        "restart replays); `withheld`, true while it stores none because learned feedback is skipped (`unreadable`: "
        "replay and the log retention keeps then grow until the rows are repaired)",
    )
    models: list[ModelStats]
    budgets: dict[str, Any] | None = Field(
        default=None, description="the budget pacer: per scope (global, tenants) spend, λ and every target"
    )
    named_routers: dict[str, Any] | None = Field(
        default=None, description="with `[[routers]]`: per alias its requests, who answered, escalations, escalated "
        "requests and their rate, answer/judge/router calls, failed calls and requests, spend (every call's cost), "
        "parsed/fallbacks (LLM routers), learned chains (learned cascades): the deployment's totals, from the "
        "database (the same from every worker and replica, kept across restarts)",
    )
    judge: dict[str, Any] | None = Field(
        default=None, description="with `judge_model`: the feedback judge's model and sample rate; `calls`, "
        "`input_tokens`, `output_tokens`, `spend_usd`: the deployment's (its stored calls, the same from every worker "
        "and replica); this process's jobs (`queued`, `sampled`, `dropped`, `scored`, `overridden`, `failed`, "
        "`unreadable`) and its own tokens and spend (`process`)",
    )


class DecisionOut(BaseModel):
    decision_id: str
    created_at: float
    model: str
    probability: float
    probabilities: dict[str, float]
    expected_cost_usd: dict[str, float]
    policy: str
    policy_version: int
    cost_weight: float
    tenant: str | None
    context: dict[str, Any]
    prompt: str | None
    feedback: list[dict[str, Any]]
    call: dict[str, Any] | None = Field(
        default=None, description="the gateway's upstream call for this decision (null for /v1/route decisions)"
    )
    chain: dict[str, Any] | None = Field(
        default=None,
        description="a named router's chain: its calls (model, role, cost, latency, confidence, error), its "
        "accept/escalate steps (confidence, action, probability, p_escalate), extra_costs (what the chain paid "
        "after each step) and version (2: a learned cascade's `earlier` is one score per chain position; absent in "
        "chains stored before, 1); null for other decisions",
    )


def _budget_scope_schema(*, settings: bool) -> dict[str, Any]:
    """JSON schema of one scope's `[budgets]` table (`settings`: the global one, with the guard rails, the
    controller's steps and `tenants`). Values are numbers or strings in the target grammar
    (`bandit_router.budgets.config`); what the schema cannot say (a duplicate target, a `fallback_model` that
    is not an active model, a share target that picks no active model, `min_cost_weight` ≥ `max_cost_weight`,
    more than `MAX_SHARES` shares in the `share` table and `share:` keys together) is a 422 that names it, as is
    a limit the schema states (`MAX_TENANTS`, `MAX_SPENDS`, `MAX_SHARES`: the PUT enforces them)."""
    number_or_text: dict[str, Any] = {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string"}]}
    share_value: dict[str, Any] = {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "string"}]}
    properties: dict[str, Any] = {
        "avg_cost_usd": {**number_or_text, "description": "mean cost per request ≤ this many USD"},
        "spend_usd": {
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": MAX_SPENDS}],
            "description": 'spend ≤ USD per period, e.g. "200/1d" (period: seconds, or a number with s|m|h|d|w)',
        },
        "share": {
            "type": "object", "additionalProperties": share_value, "maxProperties": MAX_SHARES,
            "description": 'at most this share of the decisions per selector (a model or "tag:key=value"), e.g. '
                           '{"gpt-4o": 0.3, "tag:tier=large": "30%"}; at most 256 shares in a scope, its `share:` keys '
                           'included',
        },
    }
    pattern_properties: dict[str, Any] = {
        r"^latency_p[0-9]+(\.[0-9]+)?_s$": {**number_or_text, "description": "latency percentile ≤ seconds"},
        r"^share:": share_value,
    }
    if settings:
        step = {"type": "number", "minimum": 0, "maximum": 10}
        properties.update({
            "fallback_model": {"type": "string", "minLength": 1, "maxLength": 128,
                               "description": "an active model, used when a spend budget is exhausted"},
            "guard_max_usd_per_mtok": {"type": "number", "minimum": 0},
            "cost_step": step, "share_step": step, "latency_step": step, "negligible_penalty": step,
            "min_cost_weight": {"type": "number", "exclusiveMinimum": 0},
            "max_cost_weight": {"type": "number", "exclusiveMinimum": 0},
            "tenants": {"type": "object", "maxProperties": MAX_TENANTS,
                        "additionalProperties": {"$ref": "#/components/schemas/BudgetScopeIn"},
                        "description": "per tenant (the request context's `tenant`), its own targets"},
        })
    return {
        "title": "BudgetsIn" if settings else "BudgetScopeIn",
        "type": "object",
        "properties": properties,
        "patternProperties": pattern_properties,
        "additionalProperties": False,
        "examples": [{"avg_cost_usd": 0.0005, "tenants": {"acme": {"spend_usd": "50/1d"}}}] if settings else [],
    }


BUDGET_SCHEMAS: dict[str, dict[str, Any]] = {
    "BudgetsIn": _budget_scope_schema(settings=True),
    "BudgetScopeIn": _budget_scope_schema(settings=False),
}
"""`PUT /v1/budgets` bodies, for the OpenAPI document (the route validates with `BudgetConfig.from_mapping`)."""
