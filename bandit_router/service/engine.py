"""The service's state behind HTTP: a `Router`, a `Store`, and one writer thread per process.

Route: the router decides on the caller's thread (the event loop: a few hundred µs of CPU, no I/O); the decision
goes to the writer, and the caller is answered once the transaction holding it has committed.

Decisions, feedback, model changes and reward-window sweeps are *operations*. The requests of one event-loop
iteration reach the writer together, and the writer runs everything it finds queued in one write transaction
(group commit):

    BEGIN IMMEDIATE                  the database's single write lock (shared by every worker process)
      insert the decisions           one statement for all of them
      catch up with the log          (unless the batch holds only decisions) rows and model events that other
                                     processes committed, in order
      run each operation             checks (404, duplicate, 409, late); feedback is numbered seq = head + 1, …
      insert the feedback            one statement for all of it
    COMMIT                           now the rows are durable (as far as `synchronous` promises)
    learn                            the rows this batch committed, in seq order
    acknowledge                      resolve each caller's future

Few statements per batch matter: the sqlite3 module releases the GIL around each, and the writer must wait for
the busy event loop to give it back every time (see `app.tune_process`).

So a feedback is committed before it is acknowledged and before it is learned, and every process learns the
same rows in the same order: the policy equals a replay of the stored log. Every `checkpoint_interval` learned
feedbacks the writer stores a snapshot (one row, one transaction, with its sha256); on start the newest valid
snapshot is loaded and the log after it replayed, while `/readyz` answers 503.

Shadow policies (`shadow_policies`) are routers beside the live one: on each route their pmfs are computed on the
decision's context and stored with it (`shadow_pmfs`, same transaction); they learn every learned feedback in
the same order. A promotion is a `promote` model event, so every process and every replay swaps at the same
place in the log; with shadows, a checkpoint is a bundle of every router's snapshot naming the live one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..budgets import BudgetConfig, BudgetPacer
from ..catalog import ModelSpec
from ..config import Settings
from ..errors import BanditRouterError, ConflictingFeedback, InvalidInput, UnknownDecision, UnknownModel
from ..policies import make_policy
from ..reward import reward as reward_value
from ..router import Router
from ..store import (
    DecisionInfo,
    FeedbackRecord,
    ModelEvent,
    Reader,
    SQLiteStore,
    Store,
    StoredDecision,
    StoreError,
    WriteTx,
)
from ..types import Decision, Outcome, Request
from .exceptions import Conflict, NotFound, Unavailable

log = logging.getLogger("bandit_router.service")

MAX_BATCH = 512
FLUSH_AT = 32
"""Hand a loop iteration's operations to the writer in slices of this many, so that it commits the first ones
while the loop still decides the rest, rather than the loop waiting idle for one commit of the whole iteration."""
REPLAY_PAGE = 2000
IDLE_POLL_S = 0.1
SWEEP_EVERY_S = 0.25
SWEEP_GRACE_S = 0.25
SWEEP_LIMIT = 2000
MAINTAIN_EVERY_S = 0.5
SWEPT = "swept_decisions"
"""Meta key: the storage position up to which reward windows were closed."""
BUDGETS_STATE = "budgets_state"
"""Meta key: the budget pacer's `state()` (JSON), saved after each PUT /v1/budgets, with each checkpoint, every
`BUDGETS_SAVE_EVERY_S` and on stop. After a restart it wins over the configuration's `[budgets]`."""
BUDGETS_CONFIG = "budgets_config"
"""Meta key: the targets set by the last PUT /v1/budgets (JSON); other workers pick them up within
`BUDGETS_FOLLOW_EVERY_S`."""
BUDGETS_SAVE_EVERY_S = 5.0
BUDGETS_FOLLOW_EVERY_S = 1.0
PROMOTE = "promote"
MIN_PROMOTION_EVIDENCE = 10
"""Decisions with feedback and the shadow's pmf below which a promotion is refused without evaluating."""
"""Model-event action: the shadow policy `name` becomes the live one (the live one becomes a shadow)."""
BUNDLE_MAGIC = b"BRBUNDLE1\n"
"""Checkpoint state of a service with shadow policies: this, a JSON header line, then each router's snapshot."""
SYSTEM_STATUSES = frozenset({"default", "aggregate"})
"""Feedback rows the service writes itself when a reward window closes."""


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
class _Entry:
    """One log entry committed by this process's batch, applied after the commit in this order."""

    seq: int = 0
    record: FeedbackRecord | None = None
    decision: Decision | None = None
    event: ModelEvent | None = None


@dataclass(slots=True)
class _Batch:
    """What the operations of one transaction share: the entries to apply after the commit, the active models as
    they will be, and the decisions and feedback that the batch's feedback refers to (read with one query each,
    then kept up to date as the batch adds feedback)."""

    entries: list[_Entry] = field(default_factory=list)
    active: set[str] = field(default_factory=set)
    after_commit: list[Decision] = field(default_factory=list)
    decisions: dict[str, StoredDecision] = field(default_factory=dict)
    feedback: dict[str, list[FeedbackRecord]] = field(default_factory=dict)
    next_seq: int = 1
    pending: list[FeedbackRecord] = field(default_factory=list)

    def number(self, record: FeedbackRecord) -> FeedbackRecord:
        """`record` with the next seq, queued for `flush`."""
        numbered = dataclasses.replace(record, seq=self.next_seq)
        self.next_seq += 1
        self.pending.append(numbered)
        return numbered

    def flush(self, tx: WriteTx) -> None:
        """Write the queued feedback rows (one statement for all of them)."""
        if self.pending:
            tx.insert_feedback(self.pending)
            self.pending = []


class _Op:
    """An operation for the writer. `run` may raise a `BanditRouterError` only before it writes anything."""

    __slots__ = ("error", "future", "loop", "result")

    def __init__(self) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.future: asyncio.Future[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def run(self, engine: Engine, tx: WriteTx, batch: _Batch) -> Any:
        raise NotImplementedError


class _InsertDecision(_Op):
    """Store a decision. A batch's decisions are written together, first (`Engine._transact`)."""

    __slots__ = ("decision", "prompt", "shadow_pmfs", "tenant")

    def __init__(
        self, decision: Decision, prompt: str | None, tenant: str | None, shadow_pmfs: str | None = None
    ) -> None:
        super().__init__()
        self.decision, self.prompt, self.tenant, self.shadow_pmfs = decision, prompt, tenant, shadow_pmfs


class _Feedback(_Op):
    __slots__ = ("decision_id", "outcome", "received_at", "source")

    def __init__(self, decision_id: str, outcome: Outcome, source: str | None, received_at: float) -> None:
        super().__init__()
        self.decision_id, self.outcome, self.source, self.received_at = decision_id, outcome, source, received_at

    def run(self, engine: Engine, tx: WriteTx, batch: _Batch) -> FeedbackResult:
        return engine._record_feedback(tx, batch, self)


class _AddModel(_Op):
    __slots__ = ("spec",)

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec

    def run(self, engine: Engine, tx: WriteTx, batch: _Batch) -> ModelSpec:
        batch.flush(tx)  # the event goes after the feedback before it
        if self.spec.name in batch.active:
            raise Conflict(f"model {self.spec.name!r} is already in the catalog")
        batch.entries.append(_Entry(event=tx.insert_model_event("add", self.spec.name, self.spec)))
        batch.active.add(self.spec.name)
        return self.spec


class _RetireModel(_Op):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def run(self, engine: Engine, tx: WriteTx, batch: _Batch) -> str:
        batch.flush(tx)
        if self.name not in batch.active:
            raise NotFound(f"model {self.name!r} is not an active model")
        if len(batch.active) == 1:
            raise Conflict("cannot retire the last model")
        batch.entries.append(_Entry(event=tx.insert_model_event("retire", self.name, None)))
        batch.active.discard(self.name)
        return self.name


class _SetBudgets(_Op):
    __slots__ = ("config",)

    def __init__(self, config: BudgetConfig) -> None:
        super().__init__()
        self.config = config

    def run(self, engine: Engine, tx: WriteTx, batch: _Batch) -> BudgetConfig:
        fallback = self.config.fallback_model
        if fallback is not None and fallback not in batch.active:
            raise InvalidInput(f"budgets: fallback_model {fallback!r} is not an active model")
        engine.pacer.configure(self.config)
        config_json = json.dumps(self.config.to_mapping(), sort_keys=True)
        tx.set_meta(BUDGETS_CONFIG, config_json)
        tx.set_meta(BUDGETS_STATE, json.dumps(engine.pacer.state()))
        engine._budgets_config_json = config_json
        engine._budgets_stored = True
        return self.config


class _Promote(_Op):
    """Make a shadow policy the live one: a `promote` event in the log, applied in log order by every process
    (and by a replay), so the swap is as durable as the feedback around it."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def run(self, engine: Engine, tx: WriteTx, batch: _Batch) -> str:
        batch.flush(tx)
        if self.name not in engine.shadows:
            raise NotFound(f"no shadow policy {self.name!r}")
        batch.entries.append(_Entry(event=tx.insert_model_event(PROMOTE, self.name, None)))
        return self.name


class _IdSource:
    """Time-ordered decision ids in the router's layout (48-bit milliseconds, then 80 random bits, 32 hex digits),
    drawing the random bits from a buffered `os.urandom`: one system call per 1,024 ids instead of one per id,
    which matters on the event loop thread, where every GIL release can wait for the writer."""

    def __init__(self) -> None:
        self._pool = b""
        self._next = 0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            start = self._next
            if start + 10 > len(self._pool):
                self._pool, start = os.urandom(10 * 1024), 0
            self._next = start + 10
            chunk = self._pool[start : start + 10]
        return f"{time.time_ns() // 1_000_000:012x}{chunk.hex()}"


new_decision_id = _IdSource()


def fingerprint(settings: Settings) -> str:
    """What checkpoints are keyed by: a hash of the policy, its settings and the initial catalog."""
    raw = settings.fingerprint_source()
    if settings.shadow_policies:  # checkpoints then hold every policy's state (a bundle)
        raw = {**raw, "shadow_policies": list(settings.shadow_policies)}
    source = json.dumps(raw, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:32]


class Engine:
    """Router + store + writer thread. `start()`, then `route`/`feedback`/`add_model`/`retire_model` from an
    event loop; `stop()` drains the queue and writes a final checkpoint."""

    def __init__(self, settings: Settings, store: Store | None = None, *, observer: Observer | None = None) -> None:
        self.settings = settings
        self.store: Store = store or SQLiteStore(settings.db, synchronous=settings.synchronous)
        self.observer = observer
        self.fingerprint = fingerprint(settings)
        self.seed = settings.seed
        if self.seed is not None and settings.workers > 1:  # each worker samples with its own stream
            self.seed = (self.seed * 1_000_003 + os.getpid()) % 2**63
        self.router = self._new_router()
        self.live_name = settings.policy
        """The live policy's name: the configured `policy`, or the shadow promoted last."""
        self.shadows: dict[str, Router] = {spec: self._policy_router(spec) for spec in settings.shadow_policies}
        """Shadow policies by name (their spec): they learn every feedback and log their pmfs, never choose."""
        self._checkpoint_due = False
        self.pacer = BudgetPacer(settings.budgets)
        """The budget targets (`/v1/budgets`); attached to the router once the log is replayed."""
        self._budgets_stored = bool(settings.budgets.describe())
        self._budgets_config_json: str | None = None
        self._next_budgets_save = 0.0
        self._next_budgets_follow = 0.0
        self.recovery: dict[str, Any] = {}
        self._queue: queue.SimpleQueue[list[_Op] | None] = queue.SimpleQueue()
        self._pending: dict[asyncio.AbstractEventLoop, list[_Op]] = {}
        self._thread: threading.Thread | None = None
        self._maintainer: threading.Thread | None = None
        self._stopped = threading.Event()
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._accepting = False
        self._serving = False
        """True between a successful recovery and `stop()`: checked on every request, so a plain attribute."""
        self._checkpoint_on_stop = True
        self._applied_seq = 0
        self._applied_event = 0
        self._checkpoint_version = 0
        self._checkpoint_position = (0, 0)
        self._retired: dict[str, None] = {}
        self._next_sweep = 0.0
        self._last_follow = 0.0
        self._sweeps = settings.reward_window_s is not None and (
            settings.default_reward is not None or settings.aggregation == "average"
        )

    def _new_router(self) -> Router:
        return build_router(self.settings, seed=self.seed)

    def _policy_router(self, name: str) -> Router:
        """A fresh router for the policy `name` (the configured live policy or a shadow spec)."""
        if name == self.settings.policy:
            return self._new_router()
        return build_router(self.settings, seed=self.seed, policy=name)

    # -- life cycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread; it recovers the learned state first (`ready` turns true when done)."""
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="bandit-router-writer", daemon=True)
        self._thread.start()
        self._maintainer = threading.Thread(target=self._maintain, name="bandit-router-maintenance", daemon=True)
        self._maintainer.start()

    def _maintain(self) -> None:
        """Store housekeeping twice a second (SQLite: WAL checkpoints), off the writer thread."""
        while not self._stopped.wait(MAINTAIN_EVERY_S):
            try:
                self.store.maintain()
            except StoreError as exc:
                log.debug("maintenance skipped: %s", exc)

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._ready.wait(timeout)
        return self.ready

    @property
    def ready(self) -> bool:
        return self._serving

    @property
    def applied_seq(self) -> int:
        """The feedback seq up to which this process has applied the log."""
        return self._applied_seq

    def retired_models(self) -> list[str]:
        """Models retired at run time (and not added back), oldest first."""
        return list(self._retired)

    @property
    def state(self) -> str:
        if self._failed is not None:
            return f"failed: {self._failed}"
        if not self._accepting:
            return "stopped"
        return "ready" if self._ready.is_set() else "recovering"

    def stop(self, *, checkpoint: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting, finish every queued operation, write a final checkpoint (unless told not to)."""
        self._accepting = self._serving = False
        self._checkpoint_on_stop = checkpoint
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        self._stopped.set()
        if self._maintainer is not None:
            self._maintainer.join(timeout)
        self._fail_queued(Unavailable("the service is stopping"))
        self.store.close()

    # -- requests (from an event loop) --------------------------------------------------------------------------
    def _require_ready(self) -> None:
        if not self._serving:
            raise Unavailable(f"the service is not ready ({self.state})")

    async def _submit(self, op: _Op) -> Any:
        """Hand `op` to the writer and wait for its result. Operations submitted during one iteration of the event
        loop reach the writer together (one queue item), so the writer wakes once per batch, not per request."""
        self._require_ready()
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
        if self._accepting:
            self._queue.put(ops)
            return
        for op in ops:  # stopped meanwhile: the writer is gone
            op.error = Unavailable("the service is stopping")
        _settle_all(ops)

    async def route(self, request: Request) -> Decision:
        """Decide, store the decision (with the prompt only when `store_prompts`), then return it."""
        self._require_ready()
        decision = self.router.route(request)
        tenant = request.context.get("tenant")
        prompt = request.text if self.settings.store_prompts else None
        shadow = self._shadow_pmfs(decision) if self.shadows else None
        await self._submit(_InsertDecision(decision, prompt, None if tenant is None else str(tenant), shadow))
        return decision

    def _shadow_pmfs(self, decision: Decision) -> str:
        """Each shadow policy's pmf over the decision's models on its context and λ (JSON); they never choose."""
        out: dict[str, list[float]] = {}
        for name, router in list(self.shadows.items()):
            try:
                mine = router.decide(decision.context, models=decision.models, cost_weight=decision.cost_weight)
            except BanditRouterError as exc:
                log.warning("shadow %s could not decide: %s", name, exc)
                continue
            by_model = dict(zip(mine.models, mine.pmf, strict=True))
            out[name] = [float(by_model.get(m, 0.0)) for m in decision.models]
        return json.dumps(out, separators=(",", ":"))

    async def promote(self, name: str, *, force: bool = False) -> dict[str, Any]:
        """Make the shadow policy `name` live, if its evidence says so (`promotion_check` on the log: DR lower
        bound of `shadow:NAME` above the logged policy's DR estimate), or anyway with `force`. Raises
        `NotFound` for an unknown shadow and `Conflict` (with the reason) when the evidence is not there."""
        self._require_ready()
        if name not in self.shadows:
            raise NotFound(f"no shadow policy {name!r}; shadows: {', '.join(self.shadows) or 'none'}")
        previous = self.live_name
        check: dict[str, Any]
        try:
            check = await asyncio.to_thread(self.promotion_check, name)
        except BanditRouterError as exc:
            check = {"ok": False, "reason": str(exc)}
        if not check["ok"] and not force:
            raise Conflict(f"shadow {name!r} not promoted: {check['reason']}")
        await self._submit(_Promote(name))
        return {"promoted": name, "previous": previous, "forced": bool(force and not check["ok"]), "check": check}

    def promotion_check(self, name: str) -> dict[str, Any]:
        """Evaluate `shadow:NAME` against the logged policy on the decisions that logged its pmf (blocking)."""
        from ..evaluation import evaluate_log, promotion_check
        from ..evaluation.store_log import iter_log, model_specs

        with _readable():
            records = [r for r in iter_log(self.store) if r.outcome is not None and name in r.shadow_pmfs]
            specs = model_specs(self.store, list(self.settings.load_catalog()))
        if len(records) < MIN_PROMOTION_EVIDENCE:
            reason = (f"only {len(records)} decisions with feedback logged the shadow's pmf "
                      f"(at least {MIN_PROMOTION_EVIDENCE} needed)")
            return {"ok": False, "reason": reason, "n": len(records)}
        evaluation = evaluate_log(
            records, ["logged", f"shadow:{name}"], models=specs, estimators=("dr",), baselines=False, seed=0
        )
        result = promotion_check(evaluation, f"shadow:{name}", estimator="dr", live="logged")
        return {
            "ok": result.ok,
            "reason": result.reason,
            "estimator": result.estimator,
            "shadow_ci_low": _finite(result.candidate_low),
            "live_value": _finite(result.live_value),
            "n": len(records),
        }

    async def feedback(self, decision_id: str, outcome: Outcome, source: str | None = None) -> FeedbackResult:
        result: FeedbackResult = await self._submit(_Feedback(decision_id, outcome, source, time.time()))
        return result

    async def set_budgets(self, config: BudgetConfig) -> BudgetConfig:
        """Replace the budget targets (effective from the next request) and store them."""
        done: BudgetConfig = await self._submit(_SetBudgets(config))
        return done

    async def add_model(self, spec: ModelSpec) -> ModelSpec:
        added: ModelSpec = await self._submit(_AddModel(spec))
        return added

    async def retire_model(self, name: str) -> str:
        retired: str = await self._submit(_RetireModel(name))
        return retired

    # -- reads (blocking: call from a thread pool) ---------------------------------------------------------------
    def decision(self, decision_id: str) -> tuple[StoredDecision, list[FeedbackRecord]]:
        with _readable(), self.store.read() as reader:
            stored = reader.decision(decision_id)
            if stored is None:
                raise UnknownDecision(f"no decision {decision_id!r}")
            return stored, reader.feedback_for(decision_id)

    def stats(self) -> dict[str, Any]:
        """Counts from the database; the policy version and applied seq of this process (`pid`)."""
        with _readable(), self.store.read() as reader:
            raw = reader.stats()
            head = reader.head()
        total = sum(m.decisions for m in raw.models.values())
        learned = sum(m.feedback for m in raw.models.values())
        models = [
            {"model": name, **m.to_json(), "share": m.decisions / total if total else 0.0}
            for name, m in sorted(raw.models.items())
        ]
        return {
            "pid": os.getpid(),
            "policy": self.router.policy.name,
            "live_policy": self.live_name,
            "shadows": [
                {"name": name, "candidate": f"shadow:{name}", "policy": r.policy.name, "policy_version": r.version}
                for name, r in list(self.shadows.items())  # the writer may swap them meanwhile
            ],
            "policy_version": self.router.version,
            "feedback_seq": head[0],
            "applied_seq": self._applied_seq,
            "decisions": total,
            "feedback_learned": learned,
            "feedback_rate": learned / total if total else 0.0,
            "feedback_by_status": raw.feedback_by_status,
            "models": models,
            "budgets": self.pacer.report(),
        }

    # -- the writer thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._recover()
        except BaseException as exc:
            self._failed = exc
            log.exception("recovery failed; the service stays unready")
            self._ready.set()
            self._fail_queued(Unavailable(f"recovery failed: {exc}"))
            return
        self._ready.set()
        self._serving = self._accepting
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=IDLE_POLL_S)
            except queue.Empty:
                first = _IDLE
            ops: list[_Op] = []
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
            try:
                if ops or sweep:
                    self._transact(ops, sweep)
                if time.monotonic() - self._last_follow >= IDLE_POLL_S:
                    self._follow()  # also under a stream of decisions only: learn what other workers committed
            finally:
                self._resolve(ops)
            try:
                self._maybe_checkpoint()
            except Exception:  # the log still has everything; try again after the next batch
                log.exception("checkpoint failed")
            self._budgets_housekeeping()
        self._save_budgets(force=True)
        if self._checkpoint_on_stop:
            try:
                self._maybe_checkpoint(force=True)
            except Exception:
                log.exception("final checkpoint failed")

    def _transact(self, ops: Sequence[_Op], sweep: bool) -> None:
        batch = _Batch(active={m.name for m in self.router.models})
        # Decisions are not part of the log: a batch of decisions alone neither reads nor numbers it (three
        # statements: BEGIN, one INSERT, COMMIT). Anything else first catches up with the log, under the lock.
        touches_log = sweep or any(not isinstance(op, _InsertDecision) for op in ops)
        try:
            with self.store.write() as tx:
                if touches_log:
                    head = tx.head()
                    if head != (self._applied_seq, self._applied_event):
                        self._catch_up(tx, head)
                        batch.active = {m.name for m in self.router.models}
                    batch.next_seq = head[0] + 1
                    self._last_follow = time.monotonic()
                inserts = [op for op in ops if isinstance(op, _InsertDecision)]
                if inserts:
                    stored = tx.insert_decisions([(i.decision, i.prompt, i.tenant) for i in inserts])
                    for insert, ok in zip(inserts, stored, strict=True):
                        if ok:
                            batch.after_commit.append(insert.decision)
                        else:
                            insert.error = Conflict(f"decision_id {insert.decision.decision_id!r} is already used")
                    shadow_rows = [
                        (i.decision.decision_id, i.shadow_pmfs)
                        for i, ok in zip(inserts, stored, strict=True)
                        if ok and i.shadow_pmfs is not None
                    ]
                    if shadow_rows:
                        tx.insert_shadow_pmfs(shadow_rows)
                asked = [op.decision_id for op in ops if isinstance(op, _Feedback)]
                if asked:
                    batch.decisions = tx.decisions(asked)
                    batch.feedback = tx.feedback_for_many(asked)
                for op in ops:
                    if isinstance(op, _InsertDecision):
                        continue
                    try:
                        op.result = op.run(self, tx, batch)
                    except BanditRouterError as exc:
                        op.error = exc
                if sweep:
                    self._sweep(tx, batch)
                batch.flush(tx)
        except Exception as exc:  # rolled back: nothing of this batch is stored
            if isinstance(exc, StoreError):
                log.error("write transaction failed: %s", exc)
                error = Unavailable(f"the database is unavailable: {exc}")
            else:
                log.exception("write transaction failed")
                error = Unavailable("internal error while storing; nothing was stored")
            for op in ops:
                op.result, op.error = None, error
            return
        try:
            if self.observer is not None:
                for decision in batch.after_commit:
                    self.observer.decision_stored(decision)
            self._apply(batch.entries)
        except Exception:  # committed, so acknowledged; a restart replays the log
            log.exception("applying committed entries failed")

    def _follow(self) -> None:
        """Between batches: learn what other processes committed."""
        self._last_follow = time.monotonic()
        try:
            with self.store.read() as reader:
                head = reader.head()
                if head != (self._applied_seq, self._applied_event):
                    self._catch_up(reader, head)
        except StoreError as exc:
            log.warning("following the log failed (will retry): %s", exc)

    def _resolve(self, ops: Sequence[_Op]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Op]] = {}
        for op in ops:
            if op.loop is not None:
                by_loop.setdefault(op.loop, []).append(op)
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these any more
                loop.call_soon_threadsafe(_settle_all, items)

    def _fail_queued(self, error: BaseException) -> None:
        pending: list[_Op] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                for op in item:
                    op.error = error
                pending.extend(item)
        for loop, ops in list(self._pending.items()):
            self._pending.pop(loop, None)
            for op in ops:
                op.error = error
            pending.extend(ops)
        self._resolve(pending)

    # -- feedback ---------------------------------------------------------------------------------------------
    def _reward(self, info: DecisionInfo, outcome: Outcome) -> tuple[float, float]:
        """(reward, realised cost) of `outcome` for the decision `info`, priced with this router's estimates."""
        try:
            spec = self.router.spec(info.model)
            cost = self.router.cost_model.realised_cost(spec, outcome, info.input_tokens)
        except UnknownModel:
            cost = outcome.cost_usd or 0.0
        value = reward_value(
            outcome.quality,
            cost,
            outcome.latency_s or 0.0,
            cost_weight=info.cost_weight,
            latency_weight=self.router.reward_config.latency_weight,
        )
        return value, cost

    def _record_feedback(self, tx: WriteTx, batch: _Batch, op: _Feedback) -> FeedbackResult:
        s = self.settings
        stored = batch.decisions.get(op.decision_id)
        if stored is None:
            raise UnknownDecision(f"no decision {op.decision_id!r}")
        info = _info(stored)
        o = op.outcome
        report = (o.quality, o.cost_usd, o.input_tokens, o.output_tokens, o.latency_s, op.source)
        existing = batch.feedback.get(op.decision_id, [])
        for rec in existing:
            if rec.status not in SYSTEM_STATUSES and rec.report() == report:
                if self.observer is not None:
                    self.observer.feedback_stored(info.model, "duplicate", rec.reward, rec.realised_cost_usd, False)
                return FeedbackResult(op.decision_id, "duplicate", rec.reward, rec.seq, False)
        from_callers = [r for r in existing if r.status not in SYSTEM_STATUSES]
        if from_callers and s.aggregation == "reject":
            raise ConflictingFeedback(
                f"decision {op.decision_id!r} already has a different feedback (seq {from_callers[0].seq}); "
                "aggregation = reject"
            )
        if s.reward_window_s is not None and op.received_at > info.created_at + s.reward_window_s:
            status = "late"
        elif s.aggregation == "average":
            status = "pending"
        elif any(r.learn for r in existing):
            status = "ignored"
        else:
            status = "applied"
        learn = status == "applied"
        record = batch.number(self._feedback_record(info, o, op.received_at, op.source, status, learn))
        batch.feedback.setdefault(op.decision_id, []).append(record)
        self._log_entry(batch, record, stored.decision)
        return FeedbackResult(op.decision_id, status, record.reward, record.seq, learn)

    def _feedback_record(
        self, info: DecisionInfo, outcome: Outcome, received_at: float, source: str | None, status: str, learn: bool
    ) -> FeedbackRecord:
        """A feedback row for the decision `info`, with its reward and realised cost (not yet numbered)."""
        value, cost = self._reward(info, outcome)
        return FeedbackRecord(
            decision_id=info.decision_id,
            received_at=received_at,
            quality=float(outcome.quality),
            cost_usd=outcome.cost_usd,
            input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens,
            latency_s=outcome.latency_s,
            source=source,
            status=status,
            learn=learn,
            reward=value,
            realised_cost_usd=cost,
            model=info.model,
            tenant=info.tenant,
        )

    def _log_entry(self, batch: _Batch, record: FeedbackRecord, decision: Decision | None) -> None:
        batch.entries.append(_Entry(seq=record.seq, record=record, decision=decision))
        if self.observer is not None:
            self.observer.feedback_stored(
                record.model, record.status, record.reward, record.realised_cost_usd, record.learn
            )

    def _sweep(self, tx: WriteTx, batch: _Batch) -> None:
        """Close reward windows: learn the default reward, or the average of the feedback, once per decision."""
        s = self.settings
        assert s.reward_window_s is not None
        batch.flush(tx)  # the walk below must see this batch's feedback
        self._next_sweep = time.monotonic() + SWEEP_EVERY_S
        until = time.time() - s.reward_window_s - SWEEP_GRACE_S
        mark = tx.get_meta(SWEPT)
        after = int(mark) if mark is not None else tx.last_decision_position()
        infos, position = tx.decisions_closing(after, until, SWEEP_LIMIT)
        if position - after >= SWEEP_LIMIT:
            self._next_sweep = 0.0  # more to close: again right after the next batch
        now = time.time()
        for info in infos:
            existing = tx.feedback_for(info.decision_id)
            pending = [r for r in existing if r.status == "pending"]
            if pending:
                outcome = _average(pending)
                status = "aggregate"
            elif s.default_reward is not None:
                outcome = Outcome(quality=s.default_reward)
                status = "default"
            else:
                continue
            record = batch.number(self._feedback_record(info, outcome, now, status, status, True))
            stored = tx.decision(info.decision_id)
            self._log_entry(batch, record, None if stored is None else stored.decision)
        tx.set_meta(SWEPT, str(position))

    # -- learning ----------------------------------------------------------------------------------------------
    def _learn(self, record: FeedbackRecord, decision: Decision | None) -> None:
        if decision is None:
            log.error("feedback seq %d has no decision; skipped", record.seq)
            return
        try:
            self.router.learn(decision, record.outcome())
        except (UnknownModel, InvalidInput) as exc:
            log.warning("feedback seq %d not learned: %s", record.seq, exc)
        for name, shadow in self.shadows.items():
            try:
                shadow.learn(decision, record.outcome())
            except (UnknownModel, InvalidInput) as exc:
                log.warning("feedback seq %d not learned by shadow %s: %s", record.seq, name, exc)

    def _apply_event(self, event: ModelEvent) -> None:
        if event.action == PROMOTE:
            self._swap_live(event.name)
            self._applied_event = max(self._applied_event, event.id)
            return
        for router in (self.router, *self.shadows.values()):
            try:
                if event.action == "add":
                    assert event.spec is not None
                    router.add_model(event.spec)
                else:
                    router.retire_model(event.name)
            except InvalidInput as exc:
                log.warning("model event %d (%s %s) not applied: %s", event.id, event.action, event.name, exc)
        self._note_event(event)
        self._applied_event = max(self._applied_event, event.id)

    def _note_event(self, event: ModelEvent) -> None:
        if event.action == "retire":
            self._retired[event.name] = None
        elif event.action == "add":
            self._retired.pop(event.name, None)

    def _swap_live(self, name: str) -> None:
        """Apply a `promote` event: the shadow `name` decides from now on; the live policy becomes a shadow."""
        shadow = self.shadows.pop(name, None)
        if shadow is None:
            log.warning("promote %s: no such shadow policy here; not applied", name)
            return
        shadow.pacer, self.router.pacer = self.router.pacer, None
        self.shadows[self.live_name] = self.router
        self.router, self.live_name = shadow, name
        self._checkpoint_due = True
        log.info("policy %s promoted to live", name)

    def _apply(self, entries: Sequence[_Entry]) -> None:
        """Apply this process's newly committed entries, in log order."""
        for entry in entries:
            if entry.event is not None:
                self._apply_event(entry.event)
                continue
            assert entry.record is not None
            if entry.record.learn:
                self._learn(entry.record, entry.decision)
            self._applied_seq = max(self._applied_seq, entry.seq)

    def _catch_up(self, reader: Reader, head: tuple[int, int]) -> int:
        """Apply the log between what this process applied and `head` (rows and events, in log order)."""
        events = [e for e in reader.model_events_after(self._applied_event) if e.id <= head[1]]
        applied = 0
        while True:
            rows = [r for r in reader.learned_after(self._applied_seq, REPLAY_PAGE) if r[0].seq <= head[0]]
            for record, decision in rows:
                while events and events[0].after_seq < record.seq:
                    self._apply_event(events.pop(0))
                self._learn(record, decision)
                self._applied_seq = record.seq
                applied += 1
            if len(rows) < REPLAY_PAGE:
                break
        for event in events:
            self._apply_event(event)
        self._applied_seq, self._applied_event = max(self._applied_seq, head[0]), max(self._applied_event, head[1])
        return applied

    # -- budgets ----------------------------------------------------------------------------------------------
    def _budgets_housekeeping(self) -> None:
        """On the writer thread between batches: pick up targets another worker stored; save the pacer's state."""
        now = time.monotonic()
        if now >= self._next_budgets_follow:
            self._next_budgets_follow = now + BUDGETS_FOLLOW_EVERY_S
            try:
                with self.store.read() as reader:
                    stored = reader.get_meta(BUDGETS_CONFIG)
                if stored is not None and stored != self._budgets_config_json:
                    self.pacer.configure(BudgetConfig.from_mapping(json.loads(stored)))
                    self._budgets_config_json = stored
                    self._budgets_stored = True
            except (StoreError, InvalidInput, ValueError) as exc:
                log.warning("reading the stored budget targets failed: %s", exc)
        self._save_budgets()

    def _save_budgets(self, *, force: bool = False) -> None:
        """Store the pacer's state (when there is anything to store), at most every `BUDGETS_SAVE_EVERY_S`."""
        now = time.monotonic()
        if not self._budgets_stored or (not force and now < self._next_budgets_save):
            return
        self._next_budgets_save = now + BUDGETS_SAVE_EVERY_S
        try:
            state = json.dumps(self.pacer.state())
            with self.store.write() as tx:
                tx.set_meta(BUDGETS_STATE, state)
        except StoreError as exc:
            log.error("saving the budget state failed (will retry): %s", exc)

    def _recover_budgets(self) -> str:
        """Load the stored pacer state (it wins over the configuration), then pace this router."""
        source = "config"
        with self.store.read() as reader:
            state = reader.get_meta(BUDGETS_STATE)
            config = reader.get_meta(BUDGETS_CONFIG)
        if state is not None:
            try:
                self.pacer.load(json.loads(state))
                source = "stored"
                self._budgets_stored = True
            except (InvalidInput, ValueError) as exc:
                log.warning("stored budget state not loaded (%s); using the configuration", exc)
        if config is not None:
            try:
                if json.loads(config) != self.pacer.config.to_mapping():  # a PUT after the last state save
                    self.pacer.configure(BudgetConfig.from_mapping(json.loads(config)))
                self._budgets_config_json = config
                source = "stored"
            except (InvalidInput, ValueError) as exc:
                log.warning("stored budget targets not loaded: %s", exc)
        self.router.pacer = self.pacer
        return source

    # -- checkpoints ------------------------------------------------------------------------------------------
    def _snapshot_state(self) -> bytes:
        """The live router's snapshot; with shadow policies a bundle of every router, naming the live one."""
        if not self.shadows and self.live_name == self.settings.policy:
            return self.router.snapshot()
        routers = {self.live_name: self.router, **self.shadows}
        states = {name: router.snapshot() for name, router in routers.items()}
        header = {"live": self.live_name, "sizes": [[name, len(state)] for name, state in states.items()]}
        return BUNDLE_MAGIC + json.dumps(header).encode("utf-8") + b"\n" + b"".join(states.values())

    def _restore_state(self, state: bytes) -> tuple[str, Router, dict[str, Router]]:
        """(live name, live router, shadows) from `_snapshot_state` bytes."""
        if not state.startswith(BUNDLE_MAGIC):
            router = self._new_router()
            router.restore(state)
            shadows = {spec: self._policy_router(spec) for spec in self.settings.shadow_policies}
            return self.settings.policy, router, shadows
        rest = state[len(BUNDLE_MAGIC) :]
        line, _, body = rest.partition(b"\n")
        header = json.loads(line)
        routers: dict[str, Router] = {}
        offset = 0
        for name, size in header["sizes"]:
            router = self._policy_router(name)
            router.restore(body[offset : offset + size])
            routers[name] = router
            offset += size
        if offset != len(body) or header["live"] not in routers:
            raise ValueError("malformed checkpoint bundle")
        live = routers.pop(header["live"])
        return header["live"], live, routers

    def _recover(self) -> None:
        started = time.perf_counter()
        with self.store.read() as reader:
            checkpoints = reader.checkpoints(self.fingerprint)
            for event in reader.model_events_after(0):  # the retired list (a snapshot holds no history)
                self._note_event(event)
        restored = None
        for ck in checkpoints:
            with self.store.read() as reader:
                state = reader.checkpoint_state(ck.id)
            if hashlib.sha256(state).hexdigest() != ck.sha256:
                log.warning("checkpoint %d fails its checksum; trying an older one", ck.id)
                continue
            try:
                live_name, router, shadows = self._restore_state(state)
            except Exception as exc:  # a bad snapshot must not stop the service: replay more instead
                log.warning("checkpoint %d cannot be restored (%s); trying an older one", ck.id, exc)
                continue
            self.router, self.live_name, self.shadows = router, live_name, shadows
            self._applied_seq, self._applied_event = ck.seq, ck.event_id
            self._checkpoint_version, self._checkpoint_position = router.version, (ck.seq, ck.event_id)
            restored = ck
            break
        if self._sweeps:  # the first start with a reward window closes windows of decisions made from now on
            with self.store.write() as tx:
                if tx.get_meta(SWEPT) is None:
                    tx.set_meta(SWEPT, str(tx.last_decision_position()))
        replayed = 0
        while True:
            with self.store.read() as reader:
                head = reader.head()
                if head == (self._applied_seq, self._applied_event):
                    break
                replayed += self._catch_up(reader, head)
        self.recovery = {
            "checkpoint_seq": None if restored is None else restored.seq,
            "replayed": replayed,
            "seconds": round(time.perf_counter() - started, 3),
            "policy_version": self.router.version,
            "budgets": self._recover_budgets(),
        }
        log.info(
            "recovered: checkpoint at seq %s, %d feedbacks replayed in %.2f s, policy version %d",
            self.recovery["checkpoint_seq"], replayed, self.recovery["seconds"], self.router.version,
        )

    def _maybe_checkpoint(self, *, force: bool = False) -> None:
        learned = self.router.version - self._checkpoint_version
        position = (self._applied_seq, self._applied_event)
        if position == self._checkpoint_position:
            return
        if not force and not self._checkpoint_due and learned < self.settings.checkpoint_interval:
            return
        with self.store.read() as reader:  # another worker may have stored this position already
            latest = reader.checkpoints(self.fingerprint)[:1]
        if latest and (latest[0].seq, latest[0].event_id) >= position:
            self._checkpoint_version, self._checkpoint_position = self.router.version, position
            self._checkpoint_due = False
            return
        state = self._snapshot_state()
        digest = hashlib.sha256(state).hexdigest()
        try:
            with self.store.write() as tx:
                tx.insert_checkpoint(
                    fingerprint=self.fingerprint,
                    seq=position[0],
                    event_id=position[1],
                    version=self.router.version,
                    sha256=digest,
                    state=state,
                    keep=self.settings.checkpoints_kept,
                )
        except StoreError as exc:
            log.error("checkpoint failed (the log still has everything): %s", exc)
            return
        self._checkpoint_version, self._checkpoint_position = self.router.version, position
        self._save_budgets(force=True)
        self._checkpoint_due = False
        log.debug("checkpoint at seq %d, policy version %d", position[0], self.router.version)


_IDLE: Any = object()


def _info(stored: StoredDecision) -> DecisionInfo:
    d = stored.decision
    return DecisionInfo(d.decision_id, d.model, d.created_at, d.context.input_tokens, d.cost_weight, stored.tenant)


def _average(records: Sequence[FeedbackRecord]) -> Outcome:
    """The mean of several feedbacks for one decision (a field is averaged over the feedbacks that have it)."""

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    def mean_int(values: list[int | None]) -> int | None:
        m = mean([None if v is None else float(v) for v in values])
        return None if m is None else round(m)

    return Outcome(
        quality=min(1.0, max(0.0, sum(r.quality for r in records) / len(records))),
        cost_usd=mean([r.cost_usd for r in records]),
        input_tokens=mean_int([r.input_tokens for r in records]),
        output_tokens=mean_int([r.output_tokens for r in records]),
        latency_s=mean([r.latency_s for r in records]),
    )


@contextlib.contextmanager
def _readable() -> Iterator[None]:
    """Database errors of a read → `Unavailable` (503)."""
    try:
        yield
    except StoreError as exc:
        raise Unavailable(f"the database is unavailable: {exc}") from exc


def build_router(settings: Settings, *, seed: int | None = None, policy: str | None = None) -> Router:
    """A router that has learned nothing, as `settings` describe it (with the policy spec `policy` instead of the
    configured policy and its settings, for a shadow)."""
    return Router(
        settings.load_catalog(),
        make_policy(settings.policy, **dict(settings.policy_settings)) if policy is None else make_policy(policy),
        reward_config=settings.reward_config(),
        seed=seed,
        cold_start_rounds=settings.cold_start_rounds,
    )


def rebuild_router(settings: Settings, store: Store, *, seed: int | None = None) -> Router:
    """A fresh router that learned the whole stored log, from scratch: every learned feedback in seq order, with
    the model events in their places. What a restored or live policy must equal (compare `weights()`). With shadow
    policies every one learns too, and a `promote` event makes that shadow the one returned."""
    routers = {settings.policy: build_router(settings, seed=seed)}
    routers.update({spec: build_router(settings, seed=seed, policy=spec) for spec in settings.shadow_policies})
    live = settings.policy
    with store.read() as reader:
        events = reader.model_events_after(0)
        rows: list[tuple[FeedbackRecord, Decision]] = []
        while True:
            page = reader.learned_after(rows[-1][0].seq if rows else 0, REPLAY_PAGE)
            rows.extend(page)
            if len(page) < REPLAY_PAGE:
                break

    def apply(event: ModelEvent) -> None:
        nonlocal live
        if event.action == PROMOTE:
            live = event.name if event.name in routers else live
            return
        for router in routers.values():
            with contextlib.suppress(InvalidInput):
                if event.spec is not None:
                    router.add_model(event.spec)
                else:
                    router.retire_model(event.name)

    position = 0
    for record, decision in rows:
        while position < len(events) and events[position].after_seq < record.seq:
            apply(events[position])
            position += 1
        for router in routers.values():
            with contextlib.suppress(UnknownModel, InvalidInput):
                router.learn(decision, record.outcome())
    for event in events[position:]:
        apply(event)
    return routers[live]


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def _settle(op: _Op) -> None:
    future = op.future
    if future is None or future.done():
        return
    if op.error is not None:
        future.set_exception(op.error)
    else:
        future.set_result(op.result)


def _settle_all(ops: Sequence[_Op]) -> None:
    for op in ops:
        _settle(op)
