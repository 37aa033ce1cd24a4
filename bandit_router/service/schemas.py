"""Request and response bodies of the HTTP API (v1). Strict: no type coercion, no NaN or infinities, no unknown
fields, bounded lengths, so that anything a client can send is either valid or a 422 that names the field."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

from ..router import MAX_DECISION_ID_LENGTH

ID_PATTERN = r"^[A-Za-z0-9_.:\-]+$"
NAME_PATTERN = r"^[A-Za-z0-9_.:/@+\-]+$"
MAX_TOKENS = 10**9
MAX_CONTEXT_ITEMS = 32

DecisionId = Annotated[str, Field(min_length=1, max_length=MAX_DECISION_ID_LENGTH, pattern=ID_PATTERN)]
ModelName = Annotated[str, Field(min_length=1, max_length=128, pattern=NAME_PATTERN)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]


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
        if not math.isfinite(value):
            raise ValueError("context numbers must be finite")
        return value
    raise ValueError("context values must be strings, numbers or booleans")


ContextValue = Annotated[
    str | bool | int | float,
    PlainValidator(_context_value),
    WithJsonSchema({"anyOf": [{"type": "string", "maxLength": 256}, {"type": "boolean"}, {"type": "number"}]}),
]
ContextKey = Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN)]


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
    models: Annotated[list[ModelName], Field(min_length=1, max_length=64)] | None = Field(
        None, description="allowed subset of the active models"
    )
    cost_weight: Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)] | None = Field(
        None, description="λ: quality points worth 1 USD, for this request"
    )
    context: Annotated[dict[ContextKey, ContextValue], Field(max_length=MAX_CONTEXT_ITEMS)] | None = Field(
        None, description='caller attributes, e.g. {"tenant": "acme", "task": "support"}'
    )

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"prompt": "Summarise this ticket in one line.", "context": {"tenant": "acme"}}]
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
    status: str = Field(description="applied | duplicate | late | ignored | pending")
    reward: float
    seq: int


class PromoteIn(_Strict):
    """Make a shadow policy the live one (admin key)."""

    shadow: Annotated[str, Field(min_length=1, max_length=256, description="the shadow's name (its policy spec)")]
    force: bool = Field(default=False, description="promote even if its lower bound does not beat the live policy")


class PromoteOut(BaseModel):
    promoted: str
    previous: str = Field(description="the policy that was live; it keeps running as a shadow")
    forced: bool = Field(description="true when promoted by `force` against the evidence")
    check: dict[str, Any] = Field(description="promotion_check: ok, reason, shadow_ci_low, live_value, n")


class ModelIn(_Strict):
    """A model to add at run time (the fields of a catalog entry)."""

    name: ModelName
    input_usd_per_mtok: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
    output_usd_per_mtok: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
    tags: Annotated[
        dict[Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN)],
             Annotated[str, Field(max_length=128, pattern=NAME_PATTERN)]],
        Field(max_length=32),
    ] = Field(default_factory=dict)
    latency_s: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] | None = None
    output_tokens: Annotated[float, Field(ge=0, le=1e7, allow_inf_nan=False)] | None = None
    prior_quality: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = Field(
        None, description="prior mean quality in [0, 1] (the `default` policy starts the model from it)"
    )
    prior_strength: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] | None = Field(
        None, description="how many feedbacks the prior is worth (default 2; needs prior_quality)"
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


class ModelsOut(BaseModel):
    models: list[ModelOut]
    retired: list[str]


class ErrorOut(BaseModel):
    error: str = Field(description="a short code, e.g. invalid_input")
    message: str
    field: str | None = Field(None, description="the request field at fault, when there is one")


class ModelStats(BaseModel):
    model: str
    decisions: int
    share: float
    feedback: int = Field(description="learned feedbacks")
    mean_quality: float | None
    mean_reward: float | None
    spend_usd: float | None


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
    feedback_learned: int
    feedback_rate: float
    feedback_by_status: dict[str, int]
    models: list[ModelStats]
    budgets: dict[str, Any] | None = Field(
        default=None, description="the budget pacer: per scope (global, tenants) spend, λ and every target"
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
