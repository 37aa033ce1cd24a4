"""The values that cross the store's interface: typed records, the feedback statuses, the stats record, and
`StoreError`, the one exception a store raises for anything its database driver reports."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..catalog import ModelSpec
from ..errors import BanditRouterError
from ..types import Decision, Outcome


class StoreError(BanditRouterError):
    """The database cannot be used (locked for too long, full, corrupt, or of a newer schema)."""


class CommitOutcomeUnknown(StoreError):
    """A write transaction's COMMIT was sent and its answer never came (the connection dropped), and whether the
    database committed it could not be learned: its writes may be stored or not. Whoever would write them again
    (named routers' counts) must not, or they may be stored twice."""


class UnreadableDecision(StoreError):
    """A stored decision whose values do not decode (a value corrupted on disk, which SQLite's integrity check does
    not look at, or edited by hand): that decision cannot be used, the rest of the database can."""


class UnreadableModelEvent(StoreError):
    """A stored model event whose values do not decode (a spec edited by hand or corrupted on disk). Unlike an
    unreadable decision it is not skipped: skipping an addition or a retirement would change the catalog that every
    process routes with and learns over (a model gone, or back), so no start applies the log past it until the row is
    repaired (`model_event_from_row` says how)."""


class FeedbackStatus(enum.StrEnum):
    """What became of a stored feedback (the `status` column; a `str`, so it compares and serialises as one)."""

    APPLIED = "applied"
    """The policy learns it (the first feedback of its decision)."""
    DUPLICATE = "duplicate"
    """The same report again: answered, never stored twice."""
    IGNORED = "ignored"
    """A different feedback after one was learned, where the aggregation allows it: stored, not learned."""
    LATE = "late"
    """Received after the decision's reward window closed: stored, not learned."""
    PENDING = "pending"
    """Waiting for its reward window to close (`aggregation = "average"`)."""
    DEFAULT = "default"
    """Written by the service: the default reward of a decision whose window closed without feedback."""
    AGGREGATE = "aggregate"
    """Written by the service: the average of a decision's pending feedbacks when its window closed."""
    UNROUTED = "unrouted"
    """Feedback for a call to a model the caller named (the policy did not choose it): stored, never learned."""


SYSTEM_STATUSES = frozenset({FeedbackStatus.DEFAULT, FeedbackStatus.AGGREGATE})
"""Feedback rows the service writes itself when a reward window closes."""


CALLER_POLICY = "caller"
"""The `policy` of a decision whose model the caller named (the gateway's `model = "<catalog name>"`): stored so
its call and feedback are on record, never learned as a routed decision (its feedback is `unrouted`)."""
NAMED_ROUTER_POLICIES = ("cascade:", "learned-cascade:", "llm-router:")
"""Policy prefixes of the decisions of named routers (`[[routers]]`, `bandit_router.cascade.live`): the bandit did
not choose their model, so their feedback is `unrouted` too (a learned cascade learns it itself)."""


def unrouted(policy: str) -> bool:
    """Whether a decision's feedback is kept out of the bandit's learning: a model the caller named, or a named
    router's choice."""
    return policy == CALLER_POLICY or policy.startswith(NAMED_ROUTER_POLICIES)


class ModelAction(enum.StrEnum):
    """The `action` of a model event."""

    ADD = "add"
    RETIRE = "retire"
    PROMOTE = "promote"
    """The shadow policy `name` becomes the live one (the live one becomes a shadow)."""


@dataclass(frozen=True, slots=True)
class DecisionInfo:
    """The columns of a decision that feedback handling needs (no features)."""

    decision_id: str
    model: str
    created_at: float
    input_tokens: int
    cost_weight: float
    tenant: str | None
    position: int = field(default=0, compare=False)
    """Its storage position, where the walk of closing reward windows read it (`decisions_closing`); 0 elsewhere
    (not compared: the same decision read elsewhere is equal)."""


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """One stored feedback. `cost_usd` is as reported (None when missing); `realised_cost_usd` is what the reward
    used (reported, or tokens × price). `seq` is 0 until stored."""

    decision_id: str
    received_at: float
    quality: float
    cost_usd: float | None
    input_tokens: int | None
    output_tokens: int | None
    latency_s: float | None
    source: str | None
    status: str
    learn: bool
    reward: float
    realised_cost_usd: float
    model: str
    tenant: str | None
    seq: int = 0

    def outcome(self) -> Outcome:
        return Outcome(
            quality=self.quality,
            cost_usd=self.cost_usd,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            latency_s=self.latency_s,
        )

    def report(self) -> tuple[Any, ...]:
        """What the caller reported: two feedbacks with equal reports are the same feedback."""
        return (self.quality, self.cost_usd, self.input_tokens, self.output_tokens, self.latency_s, self.source)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "received_at": self.received_at,
            "quality": self.quality,
            "cost_usd": self.cost_usd,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "latency_ms": None if self.latency_s is None else self.latency_s * 1000.0,
            "source": self.source,
            "status": str(self.status),
            "learned": self.learn,
            "reward": self.reward,
            "realised_cost_usd": self.realised_cost_usd,
        }


class CallStatus(enum.StrEnum):
    """How one upstream call of the gateway ended (the `status` of a `CallRecord`)."""

    OK = "ok"
    TIMEOUT = "timeout"
    """No answer (or no next streamed chunk) within the timeout or the request's deadline."""
    CONNECTION_ERROR = "connection_error"
    SERVER_ERROR = "server_error"
    """The upstream answered 5xx (or 429 rate limited: the model could not answer now)."""
    INVALID_RESPONSE = "invalid_response"
    """Not an OpenAI chat completion, or larger than `max_upstream_response_bytes`."""
    REJECTED = "rejected"
    """The upstream answered 4xx: the request's fault, passed through to the caller, not the model's failure."""
    CANCELLED = "cancelled"
    """The caller went away (a stream closed early); not the model's failure."""

    @property
    def is_failure(self) -> bool:
        """Whether the model is blamed (learned as a failure, and the request falls back)."""
        return self in (CallStatus.TIMEOUT, CallStatus.CONNECTION_ERROR, CallStatus.SERVER_ERROR,
                        CallStatus.INVALID_RESPONSE)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One upstream call the gateway made for a decision: what it cost and how long it took, so that a later
    feedback with only a quality needs nothing else. `request_id` is the decision id of the request's first try
    (`attempt` 1); a fallback is a decision of its own, `attempt` 2, 3, … with the same `request_id`.
    `usage` says where the token counts came from: `upstream` (its `usage`) or `estimated` (counted here)."""

    decision_id: str
    request_id: str
    attempt: int
    model: str
    routed: bool
    stream: bool
    status: str
    http_status: int | None
    input_tokens: int | None
    output_tokens: int | None
    usage: str | None
    cost_usd: float | None
    ttft_s: float | None
    latency_s: float | None
    error: str | None
    created_at: float
    chain: str | None = None
    """A named router's whole chain (JSON: every call, every accept/escalate step with its propensity, what the
    chain paid after each step; `bandit_router.cascade.live`), None for the gateway's own calls."""

    def to_json(self) -> dict[str, Any]:
        """The record without its chain (`chain_json()` decodes that)."""
        out = asdict(self)
        out.pop("chain", None)
        return out

    def chain_json(self) -> dict[str, Any] | None:
        """The stored chain, decoded (None when there is none or it does not decode)."""
        if self.chain is None:
            return None
        try:
            value = json.loads(self.chain)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None



@dataclass(frozen=True, slots=True)
class JudgeCall:
    """One call of the gateway's feedback judge (`bandit_router.gateway.judge`) that the judge model answered:
    what it cost, for the budget pacer of every process sharing the log. `decision_id` is the answer it scored,
    `tenant` that decision's tenant (the scope its cost counts in). A failed call costs nothing and is not stored."""

    decision_id: str
    tenant: str | None
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    created_at: float

@dataclass(frozen=True, slots=True)
class JudgeTotals:
    """The feedback judge's stored calls, summed (`Reader.judge_totals`): every process's and every replica's, as
    long as retention keeps them (a judge call is deleted with the decision it scored)."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    spend_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class ChainFeedback:
    """A learned cascade's chain with the feedback its escalation learns (`Reader.chains_after`): the first
    `unrouted` feedback of a `learned-cascade:` decision, its decision (None when its stored values do not decode:
    the learners and the estimators pass it by, counted), and the chain stored with its call."""

    record: FeedbackRecord
    decision: Decision | None
    chain: str


@dataclass(frozen=True, slots=True)
class ModelEvent:
    """A model added (`spec` set) or retired at run time, or a promotion, applied after feedback `after_seq`."""

    id: int
    after_seq: int
    action: str
    name: str
    spec: ModelSpec | None
    created_at: float


def model_event_from_row(
    event_id: Any, after_seq: Any, action: Any, name: Any, spec: Any, created_at: Any
) -> ModelEvent:
    """A `ModelEvent` from a `model_events` row; `UnreadableModelEvent` naming the row, why, and how to repair it,
    when its action is none of `ModelAction`'s, an addition's spec does not decode to a `ModelSpec` of that name,
    or a number does not read. An unknown action was applied as a retirement, and a spec that did not decode ended
    every start with a traceback."""
    try:
        number, position, when = int(event_id), int(after_seq), float(created_at)
    except (TypeError, ValueError) as exc:
        raise UnreadableModelEvent(f"model event {event_id!r} cannot be read: {exc}") from exc
    try:
        kind = ModelAction(action)
        decoded = None if spec is None else ModelSpec.from_json(json.loads(spec))
        if kind == ModelAction.ADD and decoded is None:
            raise ValueError("an addition without a spec")
        if decoded is not None and decoded.name != name:
            raise ValueError(f"its spec names the model {decoded.name!r}")
    except (BanditRouterError, TypeError, ValueError) as exc:  # CatalogError; JSONDecodeError is a ValueError
        raise UnreadableModelEvent(_unreadable_event(number, action, name, exc)) from exc
    return ModelEvent(number, position, kind, str(name), decoded, when)


def _unreadable_event(event_id: int, action: Any, name: Any, reason: BaseException) -> str:
    """What `UnreadableModelEvent` says: the row, why, and the repair (a spec, or an action, set right)."""
    if action in tuple(ModelAction):
        example = json.dumps({"name": name, "input_usd_per_mtok": 0.5, "output_usd_per_mtok": 1.5}).replace("'", "''")
        repair = (f"UPDATE model_events SET spec = '{example}' WHERE id = {event_id} (with the model's prices and "
                  f"the other keys POST /v1/models took; to drop the model, retire it once the service runs: "
                  f"DELETE /v1/models/{name})")
    else:
        repair = f"UPDATE model_events SET action = 'add' (or 'retire') WHERE id = {event_id}"
    return (f"model event {event_id} ({action} {name!r}) cannot be read: {reason}. No start applies the log "
            f"without it (skipping it would change the catalog): repair the row, e.g. {repair}; do not delete it "
            "(the checkpoints after it hold its change). See `bandit-router check` and the docs: service → "
            "durability")


PARTS_MAGIC = b"BRPARTS1 "
"""How the `state` of a checkpoint written in parts begins: then its token and its number of parts
(`checkpoint_parts` rows, migration 9); no snapshot begins so (a zip archive, or a bundle's `BRBUNDLE1`)."""


def parts_marker(token: str, count: int) -> bytes:
    """The `state` of a checkpoint whose bytes are the `count` parts stored under `token`."""
    return PARTS_MAGIC + f"{token} {count}".encode("ascii")


def parts_named(state: bytes) -> tuple[str, int] | None:
    """(token, count) when `state` is a `parts_marker`, else None (the state itself)."""
    if not state.startswith(PARTS_MAGIC) or len(state) > 100:
        return None
    token, _, count = state[len(PARTS_MAGIC) :].decode("ascii", "replace").partition(" ")
    return (token, int(count)) if count.isdigit() else None


def parted_tokens(rows: Iterable[Sequence[Any]]) -> set[str]:
    """The tokens the checkpoints' `state`s in `rows` (one column) name (`parts_named`)."""
    return {named[0] for row in rows if (named := parts_named(bytes(row[0]))) is not None}


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A stored snapshot's metadata; its bytes come from `Reader.checkpoint_state`."""

    id: int
    fingerprint: str
    seq: int
    event_id: int
    version: int
    sha256: str
    created_at: float


@dataclass(frozen=True, slots=True)
class StoredDecision:
    decision: Decision
    prompt: str | None
    tenant: str | None


@dataclass(frozen=True, slots=True)
class FeedbackContext:
    """What a batch of feedback reads before it is judged (`WriteTx.decisions_for_feedback`): the stored decisions
    it refers to, their stored feedback (each decision's in seq order) and their call records, by decision id."""

    decisions: dict[str, StoredDecision]
    feedback: dict[str, list[FeedbackRecord]]
    calls: dict[str, CallRecord]
    unreadable: dict[str, str] = field(default_factory=dict)
    """Decisions stored but not decodable (`UnreadableDecision`), with the reason: their feedback is refused alone."""


@dataclass(slots=True)
class ModelStats:
    """One model's counts: decisions; learned feedbacks with an observed quality (`rollup.counts_as_learned`: not a
    closed window's default reward) and their mean quality, mean reward and spend."""

    decisions: int = 0
    feedback: int = 0
    mean_quality: float | None = None
    mean_reward: float | None = None
    spend_usd: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class StoreStats:
    """`Reader.stats()`: per model counts, and feedback rows per status."""

    models: dict[str, ModelStats] = field(default_factory=dict)
    feedback_by_status: dict[str, int] = field(default_factory=dict)
