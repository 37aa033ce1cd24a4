"""Reply models of the dashboard's JSON endpoints, for the OpenAPI document (the handlers return the monitor's
dicts as they are; `tests/test_dashboard_api.py` validates replies against these models)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class RangeSummary(BaseModel):
    decisions: int = Field(description="all decisions stored: also models callers named, named routers' choices "
                           "and the gateway's fallbacks")
    routed: int = Field(description="the bandit's own choices for a request's first try (exploration and "
                        "mean_probability are over these)")
    feedback: int = Field(description="feedback rows callers sent in the range (receipt time)")
    learned: int = Field(description="learned feedbacks with an observed quality, of the range's decisions")
    coverage: float | None = Field(description="learned ÷ decisions")
    lag_s: float | None = Field(description="mean seconds from a decision to its learned feedback")
    exploration: float | None = Field(description="share of routed decisions whose model was not the most "
                                      "probable one")
    mean_probability: float | None = Field(description="mean probability of the chosen model, over routed decisions")
    quality: float | None
    cost_usd: float | None
    reward: float | None
    policy_version: int | None


class ModelSummary(RangeSummary):
    model: str
    in_catalog: bool = Field(description="whether the model is in the catalog now (false: removed from the catalog "
                             "file or retired at run time; its decisions in the range are still counted)")
    share: float | None
    fixed_quality: float | None = Field(description="SNIPS estimate of quality if every request went to this model")
    fixed_cost_usd: float | None
    fixed_reward: float | None


class BestFixed(BaseModel):
    model: str | None
    estimator: str
    reason: str | None = None
    n: int | None = None
    fixed_quality: float | None = None
    fixed_cost_usd: float | None = None
    fixed_reward: float | None = None


class TimeseriesOut(BaseModel):
    """Buckets of `step` seconds; every list has one value per bucket (`time`: the bucket's start, Unix s)."""

    since: float
    until: float
    step: int
    time: list[int]
    decisions: list[int]
    routed: list[int]
    decisions_per_minute: list[float]
    feedback_per_minute: list[float]
    coverage: list[float | None]
    lag_s: list[float | None]
    exploration: list[float | None]
    quality: list[float | None]
    cost_usd: list[float | None]
    reward: list[float | None]
    cost_weight: list[float | None]
    policy_version: list[int | None]
    shares: dict[str, list[float]] = Field(description="model → its share of each bucket's decisions")
    overall: RangeSummary
    models: list[ModelSummary]
    best_fixed: BestFixed


class Typical(BaseModel):
    decisions: int = Field(description="how many of the newest decisions were averaged (the bandit's own first "
                           "tries among them)")
    since: float | None
    probabilities: dict[str, float | None] = Field(description="model → mean probability the live policy gave it "
                                                   "(as logged in those decisions)")
    allowed: dict[str, int] = Field(description="model → how many of those decisions allowed it (it was among "
                                    "their models); 0: none did (they named their own models without it, a hard "
                                    "budget left it out: a share of 0, an exhausted spend target's guard; or it was "
                                    "added since)")
    now: dict[str, float | None] = Field(description="model → mean probability the live policy would give it now "
                                         "(its pmf with the cold-start floors at the current λ, over every active "
                                         "model), on the contexts of the newest 100 of those decisions, as many as "
                                         "0.2 s of pricing reaches (now_decisions): a model added at run time shows "
                                         "its exploration floor before any traffic; null without recent decisions")
    now_decisions: int = Field(description="how many decisions' contexts `now` averages: the newest 100 of them at "
                                           "most, fewer when pricing them would take more than 0.2 s (a large "
                                           "catalog, a busy host: a few dozen at 100 models, a few at 300); at least "
                                           "one when there are any")


class LiveOut(BaseModel):
    time: float
    policy: str
    policy_version: int
    feedback_seq: int
    models: list[str]
    shadows: list[str]
    typical: Typical
    budgets: dict[str, Any] = Field(description="the budget pacer's report (`GET /v1/budgets`' `report`)")
    can_promote: bool = Field(description="the caller's key may promote a shadow (an admin key, or no keys)")
    store_prompts: bool
    named_routers: dict[str, Any] = Field(default_factory=dict, description="per `[[routers]]` alias: requests, "
                                          "escalations, calls, failures, spend (as in `GET /v1/stats`: the "
                                          "deployment's totals, from the database)")


class RecentDecision(BaseModel):
    decision_id: str
    time: float
    model: str
    probability: float
    cost_weight: float
    policy_version: int
    tenant: str | None
    quality: float | None
    reward: float | None
    feedback_status: str | None = Field(description="the learned feedback's status (`applied`, `aggregate`, "
                                        "`default`: a closed window's default reward); with none learned, the "
                                        "newest feedback's (`late`, `unrouted`, `pending`); without feedback, "
                                        "`expired` once the decision's reward window (`reward_window_s`) has "
                                        "closed (a feedback sent now would be late: never learned), else null "
                                        "(it may still come)")
    prompt: str | None = Field(None, description="only when `store_prompts = true`: its first 1,000 characters "
                               "(then `…`; the whole prompt is in `GET /v1/decisions/{id}`)")


class RecentOut(BaseModel):
    decisions: list[RecentDecision]


class ShadowEstimate(BaseModel):
    name: str
    role: str = Field(description="`live` or `shadow`")
    value: float | None = Field(description="doubly robust estimate of the mean reward")
    ci_low: float | None
    ci_high: float | None
    quality: float | None
    cost_usd: float | None
    ess: float | None
    warnings: list[str]
    n: int | None = Field(None, description="the live policy's decisions with feedback it was estimated on: "
                          "those that logged its pmf (a shadow added at a restart, those since), without those left "
                          "out (see `left_out`); a shadow without an estimate: those that logged its pmf")
    promotable: bool | None = None
    reason: str | None = None


class ShadowsOut(BaseModel):
    computed_at: float
    live: str
    window: int = Field(description="the newest decisions looked at")
    estimator: str
    n: int = Field(description="decisions of the live policy with feedback that logged a shadow's pmf that the "
                   "estimates are on (the live estimate's; each shadow's own `n` is those that logged its pmf); "
                   "with fewer than 20 that logged a shadow's pmf (no estimates): those; with fewer than 20 left "
                   "once `left_out` is taken off: those left (no estimates either)")
    left_out: int = Field(description="more such decisions, left out of the live estimate: the live policy's pmf "
                          "gave probability to a model no candidate may route to now (removed from the catalog file, "
                          "`route = false` or retired at run time since; as the promotion check, each shadow's "
                          "estimate leaves out those where its own pmf did too)")
    warnings: list[str] = Field(description="the evaluation's warnings about its evidence (e.g. outcomes that are "
                                "a closed window's `default_reward`, models of the log no longer routable), each "
                                "once: notes on the data, unlike an estimate's `warnings` (poor overlap: that "
                                "estimate is not to be trusted)")
    estimates: list[ShadowEstimate]
    reason: str | None = None
