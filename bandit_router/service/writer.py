"""The writer: one thread per process that runs every operation that writes, in group-committed transactions.

The requests of one event-loop iteration reach the writer together, and the writer runs everything it finds
queued in one write transaction:

    BEGIN IMMEDIATE                  the database's single write lock (shared by every worker process)
      insert the decisions           one statement for all of them (named routers': with their call records,
                                     chains and one upsert of their routers' counts)
      catch up with the log          (unless the batch holds only decisions) rows and model events that other
                                     processes committed, in order
      read what the feedback needs   its decisions, their earlier feedback and call records: one statement
      run each operation             checks (404, duplicate, 409, late); feedback is numbered seq = head + 1, …
      insert the feedback            one statement for all of it, one for the rollup (which takes the decisions'
                                     times and probabilities from the batch, not from another query)
    COMMIT                           now the rows are durable (as far as `synchronous` promises)
    learn                            the rows this batch committed, in seq order (`LogFollower.apply`)
    acknowledge                      resolve each caller's future

Few statements per batch matter: the sqlite3 module releases the GIL around each (and around each column of each
row it fetches), and a release that a waiting event loop takes makes the writer wait to get it back (see
`app.tune_process`; measured rare at 8 connections: docs/service/performance.md, sixth pass).

Why one module: the operations (one small class each) live here with the writer because each runs inside its
transaction and shares its `Batch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..budgets import BudgetConfig
from ..catalog import ModelSpec
from ..dbguard import RateLimitedLog
from ..errors import BanditRouterError, ConflictingFeedback, InvalidInput, UnknownDecision
from ..hints import quoted
from ..log import BudgetState, FeedbackRules, LogEntry, LogFollower, Verdict, close_window, feedback_record, judge
from ..log.escalations import learns_chain
from ..log.feedback import unrouted, with_call
from ..store import (
    CallRecord,
    CallStatus,
    CommitOutcomeUnknown,
    FeedbackRecord,
    FeedbackStatus,
    JudgeCall,
    ModelAction,
    RouterCounts,
    Store,
    StoredDecision,
    StoreError,
    UnreadableDecision,
    WriteTx,
)
from ..store.rollup import counts_as_learned
from ..types import Decision, Outcome
from .exceptions import Conflict, Gone, NotFound, Unavailable

log = logging.getLogger("bandit_router.service")

MAX_BATCH = 512
FLUSH_AT = 32
"""Hand a loop iteration's operations to the writer in slices of this many, so that it commits the first ones
while the loop still decides the rest, rather than the loop waiting idle for one commit of the whole iteration."""
IDLE_POLL_S = 0.1
SWEEP_EVERY_S = 0.25
SWEEP_GRACE_S = 0.25
SWEEP_LIMIT = 2000
NO_DEFAULT_REWARD = frozenset({CallStatus.REJECTED, CallStatus.CANCELLED})
"""Gateway calls whose decision never learns `default_reward` (neither the model's answer nor its failure)."""
SWEPT = "swept_decisions"
"""Meta key: the storage position up to which reward windows were closed."""
WINDOWS_OFF = "reward_windows_off"
"""Meta key: the last decision position when a start without closing windows (no `reward_window_s`, or neither
`default_reward` nor averaging) followed one with them (`SWEPT` set): the decisions after it were promised no window.
Empty while windows close."""
UNWINDOWED = "reward_windows_unwindowed"
"""Meta key: JSON list of [after, up to] decision position ranges made while windows were off, not yet swept past:
their windows close without the default reward (a start with windows after `WINDOWS_OFF` adds one)."""
UNWRITTEN_RETRY_S = 1.0
"""While named routers' counts wait to be written (`Writer.keep_counts`), a transaction of them alone is tried at
most this often, between batches."""
WRITE_PROBE_S = 1.0
"""While write transactions fail (`Writer.write_failed`) and none is asked for, a one-row write is tried this often."""


class Observer(Protocol):
    """Told about what the writer stored (metrics); called on the writer thread."""

    def decision_stored(self, decision: Decision) -> None: ...

    def feedback_stored(self, model: str, status: str, reward: float, cost_usd: float, learned: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    decision_id: str
    status: str
    reward: float
    seq: int
    learned: bool


@dataclass(slots=True)
class Batch:
    """What the operations of one transaction share: the entries to apply after the commit, the active models as
    they will be, and the decisions, feedback and call records that the batch's feedback refers to (read together,
    `WriteTx.decisions_for_feedback`, then kept up to date as the batch adds feedback)."""

    writer: Writer
    tx: WriteTx
    entries: list[LogEntry] = field(default_factory=list)
    active: set[str] = field(default_factory=set)
    after_commit: list[Decision] = field(default_factory=list)
    stored_hooks: list[Callable[[], None]] = field(default_factory=list)
    """The stored decisions' `InsertDecision.on_stored`, run after the commit."""
    feedback_seen: list[tuple[str, str, float, float, bool]] = field(default_factory=list)
    """(model, status, reward, cost, learned) of each feedback stored or recognised, for the observer after the
    commit (a batch rolled back stored nothing, so `/metrics` counts nothing of it)."""
    decisions: dict[str, StoredDecision] = field(default_factory=dict)
    feedback: dict[str, list[FeedbackRecord]] = field(default_factory=dict)
    calls: dict[str, CallRecord] = field(default_factory=dict)
    """The gateway's call records of the decisions the batch's feedback refers to."""
    unreadable: dict[str, str] = field(default_factory=dict)
    """Decisions the batch's feedback refers to that are stored but do not decode, with the reason."""
    next_seq: int = 1
    pending: list[FeedbackRecord] = field(default_factory=list)
    decided: dict[str, tuple[float, float]] = field(default_factory=dict)
    """(created_at, probability) of the stored decision of each numbered record, for the rollup."""
    promoted: list[str] = field(default_factory=list)
    """The policies this batch's promotions made live: their events are applied only after the commit, so a later
    promotion in the batch weighs these, not the follower's live policy."""

    def number(self, record: FeedbackRecord, decision: Decision) -> FeedbackRecord:
        """`record` (feedback for `decision`, as read in this transaction) with the next seq, queued for `flush`."""
        numbered = dataclasses.replace(record, seq=self.next_seq)
        self.next_seq += 1
        self.pending.append(numbered)
        self.decided[decision.decision_id] = (decision.created_at, decision.probability)
        return numbered

    def flush(self) -> None:
        """Write the queued feedback rows (one statement for all of them, one for the rollup)."""
        if self.pending:
            self.tx.insert_feedback(self.pending, self.decided)
            self.pending = []

    def log_feedback(self, record: FeedbackRecord, decision: Decision | None, chain: str | None = None) -> None:
        """Apply the numbered `record` after the commit (with the chain a learned cascade learns from it)."""
        self.entries.append(LogEntry(seq=record.seq, record=record, decision=decision, chain=chain))
        self.feedback_seen.append((record.model, record.status, record.reward, record.realised_cost_usd,
                                   counts_as_learned(record)))  # as /v1/stats and the dashboard count

    def log_event(self, action: ModelAction, name: str, spec: ModelSpec | None = None) -> None:
        self.flush()  # the event goes after the feedback before it
        self.entries.append(LogEntry(event=self.tx.insert_model_event(action, name, spec)))


class Op:
    """An operation for the writer. `run` may raise a `BanditRouterError` only before it writes anything."""

    __slots__ = ("error", "future", "loop", "result")

    def __init__(self) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.future: asyncio.Future[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def run(self, batch: Batch) -> Any:
        raise NotImplementedError


class InsertDecision(Op):
    """Store a decision (with `call`, its call record, in the same transaction: a named router's, which carries
    its chain, and `counts`, what the request adds to its router's counts). A batch's decisions are written
    together, first (`Writer._transact`). `on_stored` runs on the writer thread once the decision is committed,
    before the caller hears of it and before the writer reads the log again (never if it was not stored)."""

    __slots__ = ("call", "counts", "decision", "on_stored", "prompt", "shadow_pmfs", "tenant")

    def __init__(
        self, decision: Decision, prompt: str | None, tenant: str | None, shadow_pmfs: str | None = None,
        call: CallRecord | None = None, counts: RouterCounts | None = None,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.decision, self.prompt, self.tenant, self.shadow_pmfs = decision, prompt, tenant, shadow_pmfs
        self.call, self.counts, self.on_stored = call, counts, on_stored


class CountRouter(Op):
    """Add a named router's request that stored no decision (no model answered) to its counts."""

    __slots__ = ("counts",)

    def __init__(self, counts: RouterCounts) -> None:
        super().__init__()
        self.counts = counts


class RecordCall(Op):
    """Store the gateway's record of one upstream call (usage, cost, latency, status) next to its decision. A
    batch's records are written together, after its decisions and before its feedback (`Writer._transact`)."""

    __slots__ = ("record",)

    def __init__(self, record: CallRecord) -> None:
        super().__init__()
        self.record = record


class RecordJudgeCall(Op):
    """Store one call of the feedback judge (what it cost, for every process's budgets). Not part of the log:
    written with the batch's call records."""

    __slots__ = ("record",)

    def __init__(self, record: JudgeCall) -> None:
        super().__init__()
        self.record = record


class Feedback(Op):
    """Judge a feedback by the rules (`log.judge`), then store it numbered (or answer a duplicate). What the
    caller left out (tokens, cost, latency) comes from the gateway's call record (`log.with_call`); feedback for
    a decision whose model the caller named is stored as `unrouted`, never learned."""

    __slots__ = ("decision_id", "outcome", "received_at", "source")

    def __init__(self, decision_id: str, outcome: Outcome, source: str | None, received_at: float) -> None:
        super().__init__()
        self.decision_id, self.outcome, self.source, self.received_at = decision_id, outcome, source, received_at

    def run(self, batch: Batch) -> FeedbackResult:
        stored = batch.decisions.get(self.decision_id)
        if stored is None:
            if self.decision_id in batch.unreadable:  # this feedback fails, the rest of the batch goes on
                raise Gone(f"{batch.unreadable[self.decision_id]}; this feedback was not stored (a retry meets "
                           "the same: see `bandit-router check` and the docs: service → durability)")
            raise UnknownDecision(f"no decision {self.decision_id!r}")
        decision, o = stored.decision, with_call(self.outcome, batch.calls.get(self.decision_id))
        report = (o.quality, o.cost_usd, o.input_tokens, o.output_tokens, o.latency_s, self.source)
        existing = batch.feedback.get(self.decision_id, [])
        ruling = judge(existing, report, self.received_at, decision.created_at, batch.writer.rules)
        if ruling.verdict == Verdict.DUPLICATE:
            rec = ruling.earlier
            assert rec is not None
            batch.feedback_seen.append((decision.model, "duplicate", rec.reward, rec.realised_cost_usd, False))
            return FeedbackResult(self.decision_id, "duplicate", rec.reward, rec.seq, False)
        if ruling.verdict == Verdict.CONFLICT:
            assert ruling.earlier is not None
            raise ConflictingFeedback(
                f"decision {self.decision_id!r} already has a different feedback (seq {ruling.earlier.seq}); "
                "aggregation = reject"
            )
        router = batch.writer.follower.policies.live
        status = ruling.verdict.status
        if unrouted(decision.policy) and status in (FeedbackStatus.APPLIED, FeedbackStatus.PENDING):
            status = FeedbackStatus.UNROUTED
        record = batch.number(
            feedback_record(router, decision, stored.tenant, o, received_at=self.received_at, source=self.source,
                            status=status),
            decision,
        )
        chain = None
        if learns_chain(decision, existing, record.status):
            call = batch.calls.get(self.decision_id)
            chain = None if call is None else call.chain
        batch.feedback.setdefault(self.decision_id, []).append(record)
        batch.log_feedback(record, decision, chain)
        return FeedbackResult(self.decision_id, str(record.status), record.reward, record.seq, record.learn)


class AddModel(Op):
    __slots__ = ("max_models", "spec")

    def __init__(self, spec: ModelSpec, max_models: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.max_models = max_models

    def run(self, batch: Batch) -> ModelSpec:
        if self.spec.name in batch.active:
            raise Conflict(f"model {self.spec.name!r} is already in the catalog")
        limit = self.max_models
        if limit is not None and len(batch.active) >= limit:
            raise Conflict(f"there are {len(batch.active)} active models; max_models is {limit} (retire one first)")
        batch.log_event(ModelAction.ADD, self.spec.name, self.spec)
        batch.active.add(self.spec.name)
        return self.spec


class RetireModel(Op):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def run(self, batch: Batch) -> str:
        if self.name not in batch.active:
            raise NotFound(f"model {quoted([self.name], sorted(batch.active))} is not an active model")
        if len(batch.active) == 1:
            raise Conflict("cannot retire the last model")
        # models added at run time are routable; route = false ones come only from the catalog, so live knows them
        unroutable = {m.name for m in batch.writer.follower.policies.live.models if not m.route}
        if self.name not in unroutable and batch.active - unroutable == {self.name}:
            raise Conflict(f"cannot retire the last routable model (the others have route = false): {self.name!r}")
        batch.log_event(ModelAction.RETIRE, self.name)
        batch.active.discard(self.name)
        return self.name


class SetBudgets(Op):
    __slots__ = ("config",)

    def __init__(self, config: BudgetConfig) -> None:
        super().__init__()
        self.config = config

    def run(self, batch: Batch) -> BudgetConfig:
        fallback = self.config.fallback_model
        if fallback is not None and fallback not in batch.active:
            raise InvalidInput(f"budgets: fallback_model {fallback!r} is not an active model")
        live = batch.writer.follower.policies.live.models  # a model another process added just now may lag here
        if fallback is not None and any(m.name == fallback and not m.route for m in live):
            raise InvalidInput(f"budgets: fallback_model {fallback!r} has route = false: it is never chosen")
        routable = [m for m in live if m.route]  # what a decision can choose
        unmatched = self.config.shares_matching_nothing(routable)
        if unmatched:
            raise InvalidInput(f"budgets: {', '.join(unmatched)}: no active model is picked by that selector; "
                               f"active models: {', '.join(sorted(m.name for m in routable))}")
        batch.writer.budgets.configure(batch.tx, self.config)
        return self.config


class Promote(Op):
    """Make a shadow policy the live one: a `promote` event in the log, applied in log order by every process
    (and by a replay), so the swap is as durable as the feedback around it.

    `replacing` is the live policy the promotion was checked against. The batch has caught up with the log under
    its lock, so the live policy here is the deployment's, or the one an earlier promotion of this batch made live
    (its event is applied only after the commit): when another promotion, of another process or of this one, was
    written since (two promotions at once), this one is a `Conflict` and writes nothing, rather than replacing a
    policy its evidence never weighed. Returns the policy it replaced."""

    __slots__ = ("name", "replacing")

    def __init__(self, name: str, replacing: str) -> None:
        super().__init__()
        self.name = name
        self.replacing = replacing

    def run(self, batch: Batch) -> str:
        policies = batch.writer.follower.policies
        live = batch.promoted[-1] if batch.promoted else policies.live_name
        if self.name == live:
            raise Conflict(f"shadow {self.name!r} not promoted: it is live already (another promotion of it was "
                           "written while this one was checked)")
        if live != self.replacing:
            raise Conflict(f"shadow {self.name!r} not promoted: the live policy changed from {self.replacing!r} to "
                           f"{live!r} (another promotion was written) while the promotion was checked against "
                           f"{self.replacing!r}; ask again to check it against {live!r}")
        if self.name not in policies.shadows:
            raise NotFound(f"no shadow policy {quoted([self.name], policies.shadows)}")
        batch.log_event(ModelAction.PROMOTE, self.name)
        batch.promoted.append(self.name)
        return self.replacing


_OUTSIDE_THE_LOG = (InsertDecision, RecordCall, RecordJudgeCall, CountRouter)
"""Operations that write rows outside the log: a batch of them alone neither reads nor numbers it."""


class Writer:
    """The writer thread: `start(prepare)` runs `prepare` (recovery) on the thread, then serves `submit`ted
    operations until `stop`. Between batches it follows the log, and calls `between_batches` (checkpoints,
    budget housekeeping); `on_stop` runs last on the thread."""

    def __init__(
        self, store: Store, follower: LogFollower, budgets: BudgetState, rules: FeedbackRules, *,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.follower = follower
        self.budgets = budgets
        self.rules = rules
        self.observer = observer
        self._sweeps = rules.sweeps
        self._queue: queue.SimpleQueue[list[Op] | None] = queue.SimpleQueue()
        self._pending: dict[asyncio.AbstractEventLoop, list[Op]] = {}
        self._thread: threading.Thread | None = None
        self._next_sweep = 0.0
        self._closing_up_to: int | None = None
        """While a start without closing windows closes those the previous run left open (`init_sweeps`): the
        position noted in `WINDOWS_OFF` (at most the last decision's at the start). The pass ends when a sweep reads
        `SWEPT` there, as committed: a transaction that rolls back leaves it going."""
        self._last_follow = 0.0
        self._say = RateLimitedLog(log)
        """Recurring failures (a write, following the log) are logged at most once a minute each."""
        self.accepting = False
        self.halted: str | None = None
        """Why this process must write nothing more (a newer version migrated the database), else None: every
        operation then fails with it and no reward window is closed."""
        self.busy_since: float | None = None
        """`time.monotonic()` when the current round (a transaction, following the log, the work between batches)
        began, None while the writer waits for work: the engine reads it to tell a database that does not answer."""
        self._current: Sequence[Op] = ()
        """The operations of the round in progress (`abandon` answers them when the database hangs)."""
        self._unwritten: dict[tuple[str, int, str], RouterCounts] = {}
        """Named routers' counts whose write failed or never ran (`keep_counts`), summed per row of `router_stats`
        (so an outage holds a few rows, not one per request), written by `_write_unwritten`."""
        self._unwritten_lock = threading.Lock()
        self._next_unwritten = 0.0
        self.write_failed: str | None = None
        """Why the last write transaction failed (the database's error: a full disk, a read-only file), until one
        commits: the engine is not ready meanwhile (`/readyz` 503). Requests are still tried; without any, the
        writer tries a one-row write every `WRITE_PROBE_S` (`_probe_write`)."""
        self._next_probe = 0.0

    # -- life cycle -------------------------------------------------------------------------------------------
    def start(self, prepare: Callable[[], None], between_batches: Callable[[], None],
              on_stop: Callable[[], None]) -> None:
        self.accepting = True
        self._thread = threading.Thread(
            target=self._run, args=(prepare, between_batches, on_stop), name="bandit-router-writer", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop accepting; finish every queued operation; fail what is left."""
        self.accepting = False
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        self.fail_queued(Unavailable("the service is stopping"))
        self._say.flush()  # the failures not said yet

    # -- from an event loop -----------------------------------------------------------------------------------
    async def submit(self, op: Op) -> Any:
        """Hand `op` to the writer and wait for its result. Operations submitted during one iteration of the event
        loop reach the writer together (one queue item), so the writer wakes once per batch, not per request."""
        loop = asyncio.get_running_loop()
        op.loop = loop
        op.future = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._flush, loop)
        pending.append(op)
        if len(pending) >= FLUSH_AT:
            self._pending[loop] = []  # hand over now: the writer commits these while the loop decides the next
            self._queue.put(pending)
        return await op.future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        ops = self._pending.pop(loop, None)
        if not ops:
            return
        if self.accepting:
            self._queue.put(ops)
            return
        for op in ops:  # stopped meanwhile: the writer is gone
            op.error = Unavailable("the service is stopping")
        self.keep_counts(_counts_of(ops))
        _settle_all(ops)

    # -- the thread -------------------------------------------------------------------------------------------
    def _run(self, prepare: Callable[[], None], between_batches: Callable[[], None],
             on_stop: Callable[[], None]) -> None:
        try:
            prepare()
        except BaseException as exc:
            self.fail_queued(Unavailable(f"recovery failed: {exc}"))
            return
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=IDLE_POLL_S)
            except queue.Empty:
                first = _IDLE
            ops: list[Op] = []
            item = first
            while True:
                if item is None:
                    stopping = True
                elif item is not _IDLE:
                    ops.extend(item)
                if len(ops) >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            sweep = self._sweeps and time.monotonic() >= self._next_sweep
            self._current = ops
            self.busy_since = time.monotonic()
            try:
                if ops or sweep:
                    self._transact(ops, sweep)
                elif self.write_failed is not None and time.monotonic() >= self._next_probe:
                    self._probe_write()
                if self._unwritten and time.monotonic() >= self._next_unwritten and self.halted is None:
                    self._write_unwritten()
                if time.monotonic() - self._last_follow >= IDLE_POLL_S:
                    self._follow()  # also under a stream of decisions only: learn what other workers committed
            finally:
                self._resolve(ops)
            between_batches()
            self.busy_since = None
            self._current = ()
        if self._unwritten and self.halted is None:  # counts a failed write left: one more try before the end
            self._write_unwritten()
        on_stop()

    def _transact(self, ops: Sequence[Op], sweep: bool) -> None:
        if self.halted is not None:
            for op in ops:
                op.result, op.error = None, Unavailable(f"the service is not ready ({self.halted})")
            self.keep_counts(_counts_of(ops))
            return
        follower = self.follower
        # Decisions, call records and judge calls are not part of the log: a batch of them alone neither reads nor
        # numbers it (BEGIN, one INSERT each, COMMIT). Anything else first catches up with the log, under the lock.
        touches_log = sweep or any(not isinstance(op, _OUTSIDE_THE_LOG) for op in ops)
        try:
            with self.store.write() as tx:
                batch = Batch(self, tx, active={m.name for m in follower.policies.live.models})
                if touches_log:
                    head = tx.head()
                    if head != follower.position:
                        follower.catch_up(tx, head, progress=self._progress)
                        batch.active = {m.name for m in follower.policies.live.models}
                    batch.next_seq = head[0] + 1
                    self._last_follow = time.monotonic()
                inserts = [op for op in ops if isinstance(op, InsertDecision)]
                if inserts:
                    self._insert_decisions(batch, inserts)
                calls = [op.record for op in ops if isinstance(op, RecordCall)]
                if calls:  # before the feedback below reads them
                    tx.insert_calls(calls)
                judged = [op.record for op in ops if isinstance(op, RecordJudgeCall)]
                if judged:
                    tx.insert_judge_calls(judged)
                failed = [op.counts for op in ops if isinstance(op, CountRouter)]
                if failed:
                    tx.add_router_counts(failed)
                asked = [op.decision_id for op in ops if isinstance(op, Feedback)]
                if asked:
                    read = tx.decisions_for_feedback(asked)
                    batch.decisions, batch.feedback, batch.calls = read.decisions, read.feedback, read.calls
                    batch.unreadable = read.unreadable
                for op in ops:
                    if isinstance(op, _OUTSIDE_THE_LOG):
                        continue
                    try:
                        op.result = op.run(batch)
                    except BanditRouterError as exc:
                        op.error = exc
                if sweep:
                    self._sweep(batch)
                batch.flush()
        except Exception as exc:  # rolled back, nothing of it stored (`CommitOutcomeUnknown`: perhaps stored)
            if isinstance(exc, StoreError):
                if getattr(self.store, "fault", None) is None:  # a fault was logged once by the store
                    self._say("write", logging.ERROR, "write transaction failed: %s", exc)
                self._write_failed(exc)
                error = Unavailable(f"the database is unavailable: {exc}")
            else:
                self._say("write", logging.ERROR, "write transaction failed", exc_info=exc)
                error = Unavailable("internal error while storing; nothing was stored")
            for op in ops:
                op.result, op.error = None, error
            self._keep_unless_unknown(_counts_of(ops), exc)  # the calls were made: counted by a later write
            self._next_unwritten = time.monotonic() + UNWRITTEN_RETRY_S
            return
        self.write_failed = None
        for hook in batch.stored_hooks:
            try:
                hook()
            except Exception:  # committed, so acknowledged
                log.exception("booking a stored decision failed")
        try:
            if self.observer is not None:
                for decision in batch.after_commit:
                    self.observer.decision_stored(decision)
                for seen in batch.feedback_seen:
                    self.observer.feedback_stored(*seen)
            follower.apply(batch.entries)
        except Exception:  # committed, so acknowledged; a restart replays the log
            log.exception("applying committed entries failed")

    def _write_failed(self, exc: StoreError) -> None:
        self.write_failed = " ".join(str(exc).split())  # one line (a driver's message may hold newlines)
        self._next_probe = time.monotonic() + WRITE_PROBE_S

    def _probe_write(self) -> None:
        """While writes fail and no request comes (a load balancer stopped sending them on `/readyz` 503): one
        row written (`meta.write_probe`), to tell when the database takes writes again."""
        try:
            with self.store.write() as tx:
                tx.set_meta("write_probe", repr(time.time()))
        except StoreError as exc:
            self._write_failed(exc)
            return
        self.write_failed = None

    @staticmethod
    def _insert_decisions(batch: Batch, inserts: Sequence[InsertDecision]) -> None:
        stored = batch.tx.insert_decisions([(i.decision, i.prompt, i.tenant) for i in inserts])
        for insert, ok in zip(inserts, stored, strict=True):
            if ok:
                batch.after_commit.append(insert.decision)
                if insert.on_stored is not None:
                    batch.stored_hooks.append(insert.on_stored)
            else:
                insert.error = Conflict(f"decision_id {insert.decision.decision_id!r} is already used")
        shadow_rows = [
            (i.decision.decision_id, i.shadow_pmfs)
            for i, ok in zip(inserts, stored, strict=True)
            if ok and i.shadow_pmfs is not None
        ]
        if shadow_rows:
            batch.tx.insert_shadow_pmfs(shadow_rows)
        calls = [i.call for i, ok in zip(inserts, stored, strict=True) if ok and i.call is not None]
        if calls:
            batch.tx.insert_calls(calls)
        counts = [i.counts for i in inserts if i.counts is not None]  # stored or not: the calls were made
        if counts:  # named routers' requests only: a plain route's batch adds no statement
            batch.tx.add_router_counts(counts)

    def keep_counts(self, counts: Sequence[RouterCounts]) -> None:
        """Named routers' counts that were not written (a write failed, or was refused or abandoned before it ran):
        their calls were made and paid, so they are written later (`_write_unwritten`), not lost. Any thread."""
        with self._unwritten_lock:
            for c in counts:
                key = (c.router, c.day, c.model)
                held = self._unwritten.get(key)
                if held is None:
                    self._unwritten[key] = dataclasses.replace(c)
                else:
                    held.add(c)

    def _write_unwritten(self) -> None:
        """The counts `keep_counts` holds, in a transaction of their own (whatever is wrong with them fails only
        it, never a batch of requests); kept again, and tried `UNWRITTEN_RETRY_S` later, when it fails."""
        with self._unwritten_lock:
            held, self._unwritten = list(self._unwritten.values()), {}
        try:
            with self.store.write() as tx:
                tx.add_router_counts(held)
        except Exception as exc:  # StoreError, or a bug: the counts wait; the writer thread must not end
            self._next_unwritten = time.monotonic() + UNWRITTEN_RETRY_S
            if self._keep_unless_unknown(held, exc):
                self._say("counts", logging.WARNING, "writing named routers' counts failed (will retry): %s", exc)

    def _keep_unless_unknown(self, counts: Sequence[RouterCounts], exc: BaseException) -> bool:
        """`keep_counts` after a failed write, unless the database may have committed it (`CommitOutcomeUnknown`: the
        connection was lost at COMMIT and the outcome could not be read): written again they might count twice, so
        they are dropped, logged with their number as "may be lost". Whether they were kept."""
        if not counts:
            return True
        if isinstance(exc, CommitOutcomeUnknown):
            log.warning("%d rows of named routers' counts may be lost (not written again, or they might count "
                        "twice): %s", len(counts), exc)  # every time, not rate-limited: each is a loss
            return False
        self.keep_counts(counts)
        return True

    @property
    def unwritten_counts(self) -> int:
        """How many rows of named routers' counts wait to be written (`keep_counts`)."""
        return len(self._unwritten)

    def wake(self) -> None:
        """Another process committed to the log (PostgreSQL's NOTIFY): follow it after this batch. Any thread."""
        self._last_follow = 0.0
        self._queue.put([])

    def _follow(self) -> None:
        """Between batches: learn what other processes committed."""
        self._last_follow = time.monotonic()
        try:
            with self.store.read() as reader:
                self.follower.catch_up(reader, progress=self._progress)
        except StoreError as exc:
            self._say("follow", logging.WARNING, "following the log failed (will retry): %s", exc)
        except Exception as exc:  # as a write transaction's: logged, retried; the writer thread must not end
            self._say("follow", logging.ERROR, "following the log failed (will retry)", exc_info=exc)

    def _progress(self) -> None:
        """A page of the log learned: the round is working, not waiting for the database (`busy_since`)."""
        if self.busy_since is not None:
            self.busy_since = time.monotonic()

    def init_sweeps(self) -> None:
        """The first start with closing reward windows closes windows of decisions made from now on. A start without
        them after one with them notes where they went off (`WINDOWS_OFF`) and first closes the windows that run left
        open, up to the decisions it had made: `pending` feedback (`aggregation = "average"`) was acknowledged to be
        learned then, and would otherwise never be (its decision refusing any other feedback); they close
        `reward_window_s` (as now configured) after their decision, at once without it, with the average of the
        pending feedback and never a default reward. The next start with windows closes the windows of the decisions
        made meanwhile without the default reward (`UNWINDOWED`): they were promised no window, and learning each
        silent one the default reward at once would invent feedback for a whole period. A stored value that does not
        read is warned about and read the way that invents no feedback."""
        with self.store.read() as reader:  # most starts change nothing: no write transaction for them
            mark, off, ranges = (reader.get_meta(key) for key in (SWEPT, WINDOWS_OFF, UNWINDOWED))
        _warn_unreadable(mark, off, ranges)
        if self._sweeps:
            if _position(mark) is None or off or _ranges(ranges) is None:
                with self.store.write() as tx:
                    self._windows_on(tx)
        elif _position(mark) is not None and _position(off) != _position(mark):  # windows perhaps left open
            with self.store.write() as tx:
                self._windows_off(tx)

    def _windows_off(self, tx: WriteTx) -> None:
        """A start without closing windows, after one with them (`SWEPT` set): note where they went off, unless a
        position between the swept one and the log's last decision is noted, and close the windows left open up to
        it. Another value (none, one that does not read, one past the last decision, one behind the swept position:
        noted before an older version closed windows past it) is replaced by max(last decision, swept position):
        never a position behind the swept one, which the next start with windows would drop as stale (the swept
        position is past the last decision when retention deleted the newest swept decisions, or when a replica
        with windows swept on after this one noted)."""
        mark, off = _position(tx.get_meta(SWEPT)), _position(tx.get_meta(WINDOWS_OFF))
        last = tx.last_decision_position()
        if mark is None:
            return
        if off is None or not mark <= off <= max(last, mark):
            off = max(last, mark)
            tx.set_meta(WINDOWS_OFF, str(off))
        if mark < off:
            self._closing_up_to, self._sweeps = off, True

    def _windows_on(self, tx: WriteTx) -> None:
        """A start with closing windows: note the swept position on the first; turn a noted `WINDOWS_OFF` into a
        range of `UNWINDOWED` (a value that does not read, past the last decision, or behind the swept position,
        from the swept position: no decision not yet swept gets the default reward; behind it, another replica with
        windows swept on since, or an older version that knows no `WINDOWS_OFF` closed windows past it, whose
        windows still open then close without the default reward); replace `UNWINDOWED` when it does not read by
        the range of every decision not yet swept."""
        mark, off, last = _position(tx.get_meta(SWEPT)), tx.get_meta(WINDOWS_OFF), tx.last_decision_position()
        stored = tx.get_meta(UNWINDOWED)
        ranges = _ranges(stored)
        if mark is None:
            mark = last
            tx.set_meta(SWEPT, str(mark))
        if ranges is None:
            ranges = [(mark, last)] if mark < last else []
        if off:
            start = _position(off)
            if start is None or start > last:
                start = mark
            elif start < mark:
                log.info("meta %s (%s) is behind the position reward windows were closed up to (%s): windows were "
                         "closed past it since; read from there", WINDOWS_OFF, start, mark)
                start = mark
            if start < last and (start, last) not in ranges:
                ranges.append((start, last))
                log.info("reward windows close again: the decisions made while they were off (positions %s to %s) "
                         "get no default reward", start + 1, last)
            tx.set_meta(WINDOWS_OFF, "")
        if json.dumps(ranges) != stored and (ranges or stored):
            tx.set_meta(UNWINDOWED, json.dumps(ranges))

    def _sweep(self, batch: Batch) -> None:
        """Close reward windows: learn the default reward, or the average of the feedback, once per decision. What
        to skip (`UNWINDOWED`) and where to go on (`SWEPT`) are read in this transaction, never kept in memory: a
        transaction that rolls back changes nothing of them (another worker's start may have, too)."""
        tx = batch.tx
        self._next_sweep = time.monotonic() + SWEEP_EVERY_S
        mark = _position(tx.get_meta(SWEPT))
        after = mark if mark is not None else tx.last_decision_position()
        closing = self._closing_up_to
        if closing is not None and after >= closing:  # the previous run's windows closed, as committed
            self._closing_up_to, self._sweeps = None, False
            return
        batch.flush()  # the walk below must see this batch's feedback
        until = time.time() - (self.rules.reward_window_s or 0.0) - SWEEP_GRACE_S
        infos, position = tx.decisions_closing(after, until, SWEEP_LIMIT)
        if position - after >= SWEEP_LIMIT:
            self._next_sweep = 0.0  # more to close: again right after the next batch
        if closing is not None and position > closing:  # the previous run's decisions only, not this run's
            infos, position = [info for info in infos if info.position <= closing], closing
        ranges = [] if closing is not None else (_ranges(tx.get_meta(UNWINDOWED)) or [])
        now = time.time()
        router = self.follower.policies.live
        calls = tx.calls_for_many([info.decision_id for info in infos])
        for info in infos:
            rules = self.rules
            if any(start < info.position <= end for start, end in ranges):  # made while windows were off
                rules = dataclasses.replace(rules, default_reward=None)
            closing_with = close_window(tx.feedback_for(info.decision_id), rules)
            if closing_with is None:
                continue
            call = calls.get(info.decision_id)
            if closing_with[1] == FeedbackStatus.DEFAULT and call is not None and call.status in NO_DEFAULT_REWARD:
                continue  # no answer to reward: the upstream refused the request, or the caller left
            try:
                stored = tx.decision(info.decision_id)
            except UnreadableDecision as exc:  # its window cannot close; the others' do
                self._say(f"unreadable {info.decision_id}", logging.ERROR, "reward window not closed: %s", exc)
                continue
            if stored is None:  # cannot happen: `info` came from the decisions table in this transaction
                log.error("decision %s vanished while closing its reward window", info.decision_id)
                continue
            if unrouted(stored.decision.policy):  # the bandit did not choose its model: nothing to learn
                continue
            outcome, status = closing_with
            record = batch.number(
                feedback_record(router, stored.decision, stored.tenant, outcome, received_at=now, source=status.value,
                                status=status),
                stored.decision,
            )
            batch.log_feedback(record, stored.decision)
        tx.set_meta(SWEPT, str(position))
        if any(end <= position for _, end in ranges):  # swept past: forgotten
            tx.set_meta(UNWINDOWED, json.dumps([(start, end) for start, end in ranges if end > position]))

    # -- acknowledging ----------------------------------------------------------------------------------------
    def _resolve(self, ops: Sequence[Op]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Op]] = {}
        for op in ops:
            if op.loop is not None:
                by_loop.setdefault(op.loop, []).append(op)
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these any more
                loop.call_soon_threadsafe(_settle_all, items)

    def abandon(self, in_flight: BaseException, queued: BaseException) -> None:
        """The database hangs: answer the callers now instead of when (if ever) it answers. Operations still queued
        are taken off the queue and fail with `queued` (they will not be written); those of the round in progress
        fail with `in_flight` (their transaction may still commit). Any thread; the round in progress, when it ends,
        settles nothing twice (`_settle` skips answered futures)."""
        taken = self._take_queued(keep_stop=True)
        self.keep_counts(_counts_of(taken))  # never written; the round in progress counts its own if it rolls back
        for ops, error in ((list(self._current), in_flight), (taken, queued)):
            for op in ops:
                if op.loop is not None and op.future is not None:
                    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                        op.loop.call_soon_threadsafe(_fail, op.future, error)

    def fail_queued(self, error: BaseException) -> None:
        pending = self._take_queued(keep_stop=False)
        for op in pending:
            op.error = error
        for loop, ops in list(self._pending.items()):
            self._pending.pop(loop, None)
            for op in ops:
                op.error = error
            pending.extend(ops)
        self.keep_counts(_counts_of(pending))
        self._resolve(pending)

    def _take_queued(self, keep_stop: bool) -> list[Op]:
        """Every operation still queued, taken off the queue. A stop request met on the way is put back for the
        writer (and the taking ends there) when `keep_stop`, else dropped."""
        taken: list[Op] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                if keep_stop:
                    self._queue.put(None)
                    break
                continue
            taken.extend(item)
        return taken


_IDLE: Any = object()

def _settle(op: Op) -> None:
    future = op.future
    if future is None or future.done():
        return
    if op.error is not None:
        future.set_exception(op.error)
    else:
        future.set_result(op.result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _settle_all(ops: Sequence[Op]) -> None:
    for op in ops:
        _settle(op)


def _counts_of(ops: Sequence[Op]) -> list[RouterCounts]:
    """The named routers' counts the operations `ops` carry (their decisions', or requests no model answered)."""
    return [op.counts for op in ops if isinstance(op, InsertDecision | CountRouter) and op.counts is not None]


def _ranges(stored: str | None) -> list[tuple[int, int]] | None:
    """The `UNWINDOWED` ranges as stored (none when unset), None when the value is not a list of pairs of
    positions (edited by hand, another version's)."""
    if not stored:
        return []
    try:
        value = json.loads(stored)
    except (ValueError, RecursionError):  # not JSON, an integer of too many digits, nested too deep
        return None
    if not isinstance(value, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(type(p) is int and 0 <= p < 2**63 for p in pair)
            for pair in value):
        return None
    return [(start, end) for start, end in value]


def _position(stored: str | None) -> int | None:
    """A position as stored (`SWEPT`, `WINDOWS_OFF`), None when unset, empty (windows close) or not a position:
    ASCII digits only (`str.isdigit` takes '²', which `int` refuses), at most 18 of them (a 64-bit rowid)."""
    if stored is None or not (stored.isascii() and stored.isdigit()) or len(stored) > 18:
        return None
    return int(stored)


def _warn_unreadable(mark: str | None, off: str | None, ranges: str | None) -> None:
    """Warn about the reward windows' meta values that do not read (`Writer.init_sweeps` says what it does instead)."""
    for key, value, instead in (
        (SWEPT, mark, "read as unset: a start with reward windows closes those of the decisions made from then on"),
        (WINDOWS_OFF, off, "read as noted at the position windows were closed up to, so that no decision made since "
                           "gets the default reward"),
    ):
        if value and _position(value) is None:
            log.warning("meta %s is not a position (%r): %s", key, value[:40], instead)
    if _ranges(ranges) is None:
        log.warning("meta %s is not a list of position ranges (%r): read as one range, from the position windows "
                    "were closed up to, so no decision made since gets the default reward", UNWINDOWED,
                    (ranges or "")[:40])
