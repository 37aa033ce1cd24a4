"""The store's interface: what the service and the log need from a database, whatever the database.

`SQLiteStore` (`store/sqlite.py`) is the embedded implementation; `PostgresStore` (`store/postgres.py`) serves
replicas sharing one database: its write transactions hold an advisory lock, as SQLite's hold its write lock.
Every method raises `StoreError` (never a driver's own exception) when the database cannot answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from ..catalog import ModelSpec
from ..types import Decision
from .records import (
    CallRecord,
    ChainFeedback,
    Checkpoint,
    DecisionInfo,
    FeedbackContext,
    FeedbackRecord,
    JudgeCall,
    JudgeTotals,
    ModelEvent,
    StoredDecision,
    StoreStats,
)
from .rollup import MinuteStats
from .router_stats import RouterCounts


class Reader(Protocol):
    """Queries; every method sees one consistent snapshot of the database."""

    def decision(self, decision_id: str) -> StoredDecision | None: ...

    def decision_info(self, decision_id: str) -> DecisionInfo | None: ...

    def decisions(self, decision_ids: Sequence[str]) -> dict[str, StoredDecision]:
        """The stored decisions among `decision_ids` (one query)."""
        ...

    def feedback_for(self, decision_id: str) -> list[FeedbackRecord]: ...

    def feedback_for_many(self, decision_ids: Sequence[str]) -> dict[str, list[FeedbackRecord]]:
        """Every stored feedback of each of `decision_ids`, in seq order (one query)."""
        ...

    def learned_after(self, seq: int, limit: int) -> list[tuple[FeedbackRecord, Decision | None]]:
        """Feedback rows with learn = 1 and `seq` greater than `seq`, in seq order, with their decisions (None, logged,
        for a decision whose stored values cannot be decoded)."""
        ...

    def chains_after(self, seq: int, until: int, limit: int) -> list[ChainFeedback]:
        """What learned cascades' escalation learns, in seq order: for `seq` < f.seq ≤ `until`, each feedback
        that is the first `unrouted` one of a `learned-cascade:` decision whose call record has a chain, with its
        decision and chain (at most `limit`)."""
        ...

    def shadow_pmfs_for_many(self, decision_ids: Sequence[str]) -> dict[str, dict[str, list[float]]]:
        """The shadow policies' pmfs logged with each of `decision_ids` (those that have any)."""
        ...

    def decisions_after(self, position: int, limit: int) -> list[tuple[int, StoredDecision | None]]:
        """Up to `limit` decisions stored after storage position `position`, in storage order, each with its
        position (pass the last one back to page on). For reading the whole log (evaluation, export, other
        workers' budget booking). None for a decision that cannot be read (`UnreadableDecision`, logged once per
        process): its position still moves the reader on."""
        ...

    def recent_decisions(self, limit: int) -> list[tuple[int, StoredDecision]]:
        """The newest `limit` decisions, newest first, each with its storage position (the dashboard's recent
        decisions, the mean pmf of recent traffic, the tail a shadow policy is evaluated on); without those that
        cannot be read (logged once per process)."""
        ...

    def minute_stats(self, first: int, end: int, step: int) -> list[MinuteStats]:
        """The per-minute rollup (`store/rollup.py`) for the minutes `first` ≤ m < `end` (m = ⌊unix time / 60⌋),
        summed per model into buckets of `step` minutes aligned on multiples of `step` (each row's `minute` is its
        bucket's first minute); ordered by bucket, then model. Reads at most (end − first) × models rows of the
        rollup, whatever the number of decisions."""
        ...

    def router_counts(self) -> list[RouterCounts]:
        """Named routers' counts (`store/router_stats.py`) summed over every day: one total per (router, answering
        model, '' for requests no model answered), ordered by router, then model."""
        ...

    def model_events_after(self, event_id: int) -> list[ModelEvent]: ...

    def head(self) -> tuple[int, int]:
        """(largest feedback seq ever used, largest model event id), 0 when none."""
        ...

    def checkpoints(self, fingerprint: str) -> list[Checkpoint]:
        """Checkpoints taken under `fingerprint`, newest first."""
        ...

    def checkpoint_count(self) -> int:
        """How many checkpoints there are, under every fingerprint."""
        ...

    def checkpoint_state(self, checkpoint_id: int) -> bytes: ...

    def stats(self) -> StoreStats: ...

    def calls_for_many(self, decision_ids: Sequence[str]) -> dict[str, CallRecord]:
        """The gateway's call record of each of `decision_ids` that has one (one query)."""
        ...

    def judge_calls_after(self, position: int, limit: int) -> list[tuple[int, JudgeCall]]:
        """Up to `limit` of the feedback judge's calls stored after storage position `position`, in storage order,
        each with its position (pass the last one back to page on)."""
        ...

    def judge_totals(self) -> JudgeTotals:
        """The feedback judge's stored calls summed: count, tokens, cost (every process's, within retention)."""
        ...

    def get_meta(self, key: str) -> str | None: ...


class WriteTx(Reader, Protocol):
    """Writes, inside one transaction that holds the database's single write lock."""

    def insert_decisions(self, items: Sequence[tuple[Decision, str | None, str | None]]) -> list[bool]:
        """Store (decision, prompt, tenant) items; False for an item whose id another decision already has (not
        written; within `items`, the first use of an id wins). Adds the stored ones to the per-minute rollup
        (`store/rollup.py`: `decision_increments`) in the same transaction."""
        ...

    def insert_feedback(
        self, records: Sequence[FeedbackRecord], decided: Mapping[str, tuple[float, float]] | None = None
    ) -> None:
        """Store `records`, numbered by the caller: `seq` = `head()[0]` + 1, + 2, … within this transaction; add
        them to the per-minute rollup (`rollup.feedback_increments`) in the same transaction. The rollup needs
        each learned record's decision's (created_at, probability): `decided` maps decision ids to them as the
        caller read them in this transaction, and the store reads those it does not give (all without it)."""
        ...

    def decisions_for_feedback(self, decision_ids: Sequence[str]) -> FeedbackContext:
        """What a batch of feedback for `decision_ids` reads before it is judged: `decisions`, `feedback_for_many`
        and `calls_for_many` of the ids, the same values (in one query where the backend can)."""
        ...

    def insert_model_event(self, action: str, name: str, spec: ModelSpec | None) -> ModelEvent: ...

    def add_router_counts(self, increments: Sequence[RouterCounts]) -> None:
        """Add named routers' per-request counts (`router_stats.of_chain`) to `router_stats`, in this transaction
        (the one that stores the requests' decisions and chains)."""
        ...

    def insert_shadow_pmfs(self, rows: Sequence[tuple[str, str]]) -> None:
        """(decision_id, JSON object {shadow name: pmf}) rows, next to their decisions."""
        ...

    def insert_calls(self, records: Sequence[CallRecord]) -> None:
        """Store the gateway's call records (a decision has at most one: a second one replaces it)."""
        ...

    def insert_judge_calls(self, records: Sequence[JudgeCall]) -> None:
        """Store the feedback judge's calls, each at the next storage position."""
        ...

    def insert_checkpoint_part(self, token: str, n: int, data: bytes) -> None:
        """Store part `n` (0, 1, …) of a checkpoint's state, which `insert_checkpoint(parts=(token, count))` names
        once every part is stored: until then no reader sees it."""
        ...

    def insert_checkpoint(
        self, *, fingerprint: str, seq: int, event_id: int, version: int, sha256: str, state: bytes, keep: int,
        parts: tuple[str, int] | None = None,
    ) -> bool:
        """Store a checkpoint (False when one for the same position exists) and keep the newest `keep`, deleting
        the parts of those pruned and of abandoned saves. With `parts` (token, count) its state is the `count`
        parts stored under `token` (`state` is then empty): `StoreError` when any is missing; its parts are deleted
        when no row names them after (another process stored this position first, or it is older than the newest
        `keep`)."""
        ...

    def delete_checkpoint_parts(self, token: str) -> None:
        """Delete the parts of a save given up, unless a checkpoint names them: its row may have committed though
        the commit raised (`CommitOutcomeUnknown`: the connection lost at COMMIT), and deleting them then broke the
        newest checkpoint (with `checkpoints_kept = 1` the only one, whose seq retention had already deleted up to)."""
        ...

    def decisions_closing(self, after: int, until: float, limit: int) -> tuple[list[DecisionInfo], int]:
        """Walk the decisions stored after position `after` in storage order, up to the first one created after
        `until` (at most `limit`): those without a learned feedback, and the position to continue from."""
        ...

    def last_decision_position(self) -> int:
        """The storage position of the newest decision (0 when none)."""
        ...

    def last_judge_call_position(self) -> int:
        """The storage position of the feedback judge's newest call (0 when none)."""
        ...

    def set_meta(self, key: str, value: str) -> None: ...


class Store(Protocol):
    """The service's storage. One writer per process (a thread) uses `write()`; any thread may `read()`.

    Optional methods, called when a store has them: `stats()` (`Reader.stats()` of the whole log in several
    short read transactions, as `SQLiteStore.stats`; without it the engine counts in one `read()`), `bound_wal()`
    and `delete_old(...)` (as `SQLiteStore`'s)."""

    def prepare(self) -> None:
        """Create or migrate the schema. Call once before worker processes start."""
        ...

    def write(self) -> AbstractContextManager[WriteTx]: ...

    def read(self) -> AbstractContextManager[Reader]: ...

    def schema_version(self) -> int:
        """The schema version the database records; 0 when it records none (not prepared yet, or not a
        bandit-router database). Creates nothing."""
        ...

    def maintain(self) -> None:
        """Housekeeping that must not run on the writer's commit path (SQLite: copy the WAL into the database)."""
        ...

    def close(self) -> None: ...
