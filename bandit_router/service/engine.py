"""The service's state behind HTTP: a `PolicySet` kept at the stored log's position, a `Store`, and the writer.

Route: the router decides on the caller's thread (the event loop: a few hundred µs of CPU, no I/O), for the route
requests of one loop iteration together (`Router.route_many`: the same decisions as one at a time); each decision
goes to the writer (`writer.py`), and the caller is answered once the transaction holding it has committed.

A feedback is committed before it is acknowledged and before it is learned, and every process learns the same
rows in the same order (`log.LogFollower`): the policy equals a replay of the stored log. Every
`checkpoint_interval` learned feedbacks the writer stores a snapshot (`log.Checkpointer`); on start the newest
valid snapshot is loaded and the log after it replayed, while `/readyz` answers 503.

Shadow policies (`shadow_policies`) are routers beside the live one (`log.PolicySet`): on each route their pmfs
are computed on the decision's context and stored with it (`shadow_pmfs`, same transaction); they learn every
learned feedback in the same order. A promotion is a `promote` model event, so every process and every replay
swaps at the same place in the log; with shadows, a checkpoint is a bundle of every router's snapshot. Learned
cascades' escalation learners (`log.escalations`) are part of the policy set too: they follow the same log and
checkpoints, from the chains stored with named routers' decisions (`store_decision(..., call)`).

Why one module of ~590 lines: the engine is the one facade the routes call, and its parts share one state (the
policy set, the writer, the readiness: recovering, a fault, an unreachable, hanging or newer-migrated database);
the work itself lives in `writer.py`, `log/` and `store/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from ..budgets import BudgetConfig, BudgetPacer
from ..catalog import ModelSpec
from ..clock import SteadyWallClock
from ..config import ConfigError, Settings, alias_clash
from ..dbguard import RateLimitedLog
from ..errors import BanditRouterError, UnknownDecision
from ..hints import quoted
from ..ids import new_decision_id
from ..log import BudgetState, Checkpointer, FeedbackRules, LogFollower, PolicySet, build_router, rebuild_router
from ..router import Router
from ..store import (
    CallRecord,
    Checkpoint,
    FeedbackRecord,
    JudgeCall,
    JudgeTotals,
    RouterCounts,
    Store,
    StoredDecision,
    StoreError,
    UnreadableDecision,
)
from ..store.location import open_store
from ..store.migrations import SCHEMA_VERSION
from ..store.sqlite import SQLiteStore
from ..types import Decision, Outcome, Request, tenant_of
from .exceptions import Conflict, Gone, NotFound, Unavailable
from .writer import (
    SWEPT,
    AddModel,
    CountRouter,
    Feedback,
    FeedbackResult,
    InsertDecision,
    Observer,
    Op,
    Promote,
    RecordCall,
    RecordJudgeCall,
    RetireModel,
    SetBudgets,
    Writer,
)

__all__ = ["Engine", "FeedbackResult", "Observer", "build_router", "new_decision_id", "rebuild_router"]

log = logging.getLogger("bandit_router.service")

MAINTAIN_EVERY_S = 0.5
WAL_CHECK_EVERY_S = 0.05
WAL_RETRY_BUSY_S = 1.0
RETENTION_EVERY_S = 60.0
RETENTION_BATCH = 1000
RETENTION_AGAIN_S = 0.2
CLOCK_STEP_SAID_S = 60.0
"""A wall clock this far ahead of the time elapsed since the start is logged (retention follows the elapsed time),
once per step: again only when how far ahead it is changes by as much (another step)."""
CLOCK_BACK_S = 30.0
"""A clock said to be ahead is said to be back once it is within this of the elapsed time: below
`CLOCK_STEP_SAID_S` (hysteresis), so a clock that hovers about the threshold (a 60 s pause of a virtual machine,
slewed by NTP) is not said ahead and back at every look of retention."""
STALL_S = 5.0
"""A writer round (a transaction, following the log, a checkpoint) without an answer for this long means the
database hangs (a frozen server, a stalled disk or network: nothing that a driver's or the server's timeout ends):
new writes and reads are then refused at once (503, nothing stored) and `/readyz` is 503, instead of queueing
behind the hang for as long as it lasts. Rounds take milliseconds; a lock wait ends at `lock_timeout` (10 s)."""
MIN_PROMOTION_EVIDENCE = 10
"""Decisions with feedback and the shadow's pmf below which a promotion is refused without evaluating."""


def _stop_acknowledging(problem: str) -> None:
    """What the store's fault means for the service (logged once, when the store finds it)."""
    log.error("%s: the service stops acknowledging writes (503, /readyz 503) until it is restarted on a good "
              "database; see `bandit-router check` and the docs (service → durability)", problem)


class Engine:
    """Policies + store + writer thread. `start()`, then `route`/`feedback`/`add_model`/`retire_model` from an
    event loop; `stop()` drains the queue and writes a final checkpoint."""

    def __init__(self, settings: Settings, store: Store | None = None, *, observer: Observer | None = None) -> None:
        self.settings = settings
        self.store: Store = store or open_store(
            settings.storage.db, synchronous=settings.storage.synchronous,
            wal_max_bytes=settings.storage.wal_max_bytes,
        )
        if isinstance(self.store, SQLiteStore):  # SQLite: a file deleted, replaced or corrupt under the service
            self.store.on_fault = _stop_acknowledging
        seed = settings.routing.seed
        if seed is not None and settings.server.workers > 1:  # each worker samples with its own stream
            seed = (seed * 1_000_003 + os.getpid()) % 2**63
        self.policies = PolicySet(settings, seed=seed)
        self.follower = LogFollower(self.policies)
        self.checkpointer = Checkpointer(self.store, settings, self.follower)
        self.pacer = BudgetPacer(settings.budgets)
        """The budget targets (`/v1/budgets`); attached to the router once the log is replayed."""
        shared = settings.server.workers > 1 or bool(getattr(self.store, "shared", False))
        self.shared = shared
        """Other processes write to the same log: worker processes on one SQLite file, or replicas on one server
        database (`Store.shared`); a request may reach any of them."""
        self.budgets = BudgetState(self.store, self.pacer, shared=shared)
        """With other processes on the same log (workers, replicas) the pacer books their decisions too."""
        self.budgets.applied_seq = lambda: self.follower.applied_seq
        self.writer = Writer(self.store, self.follower, self.budgets, FeedbackRules.from_settings(settings),
                             observer=observer)
        self.recovery: dict[str, Any] = {}
        self._maintainer: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._unreachable: str | None = None
        """Why a server database cannot be reached now (`_maintain` probes it), else None."""
        self._outage_since: float | None = None
        """When the database became unreachable or stopped answering (`_note_outage`), else None."""
        self._migrated: str | None = None
        """Set once a newer bandit-router migrated the database under this process (`_check_schema`): from then on
        it acknowledges nothing, as it would refuse that database at start."""
        self._stopped = threading.Event()
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._serving = False
        """True between a successful recovery and `stop()`: checked on every request, so a plain attribute."""
        self._checkpoint_on_stop = True
        self._say = RateLimitedLog(log)
        """Recurring failures (a checkpoint, the WAL, retention) are logged at most once a minute each."""
        self._next_wal_check = 0.0
        self._next_retention = 0.0
        self.retention_clock = SteadyWallClock()
        self._ahead_said: float | None = None
        """How far ahead the wall clock was when it was last said (None: not ahead)."""
        """What retention's cutoff is measured from: the wall clock, never ahead of the time elapsed since the start
        (`bandit_router.clock`), so that a forward step of the wall clock deletes nothing before its time."""
        self._routes: dict[asyncio.AbstractEventLoop, list[tuple[Request, asyncio.Future[Decision]]]] = {}
        """Route requests waiting for this event-loop iteration's `Router.route_many` (`_decide`)."""
        self.extra_stats: dict[str, Callable[[], Any]] = {}
        """More sections of `stats()` (the gateway's judge adds `judge`)."""
        self.on_recovered: Callable[[], None] | None = None
        """Called on the writer thread once the recovery has succeeded and requests are served (a worker of `serve
        --workers N` tells the others: `workergate`)."""
        self.on_recovery_failed: Callable[[BaseException], None] | None = None
        """Called on the writer thread when the recovery has failed (a worker of `serve --workers N` exits to be
        started again when the database did not answer: `app._start_again`)."""

    # -- what the routes and tests read -------------------------------------------------------------------------
    @property
    def router(self) -> Router:
        """The live router."""
        return self.policies.live

    def deciding(self) -> contextlib.AbstractContextManager[Router]:
        """The live router, kept live (with its budget pacer) by a promotion until the block ends: every decision of
        the live router is made in one (`PolicySet.deciding`)."""
        return self.policies.deciding()

    @property
    def live_name(self) -> str:
        """The live policy's name: the configured `policy`, or the shadow promoted last."""
        return self.policies.live_name

    @property
    def shadows(self) -> dict[str, Router]:
        """Shadow policies by name (their spec): they learn every feedback and log their pmfs, never choose."""
        return self.policies.shadows

    @property
    def fingerprint(self) -> str:
        return self.checkpointer.fingerprint

    @property
    def applied_seq(self) -> int:
        """The feedback seq up to which this process has applied the log."""
        return self.follower.applied_seq

    def retired_models(self) -> list[str]:
        """Models retired at run time (and not added back), oldest first."""
        return self.follower.retired_models()

    @property
    def ready(self) -> bool:
        return not self._refusing and self._unreachable is None and self.writer.write_failed is None

    @property
    def recovering(self) -> bool:
        """The recovery has not ended yet (`wait_ready` waits for its end)."""
        return not self._ready.is_set()

    @property
    def recovery_failed(self) -> bool:
        return self._failed is not None

    @property
    def _refusing(self) -> bool:
        """Requests are refused at once (503): not serving yet, or the database must not be written (`_sealed`) or
        does not answer (`stalled`). An unreachable server database is tried per request, and fails on its own."""
        return not self._serving or self._sealed or self.stalled is not None

    @property
    def _sealed(self) -> bool:
        """Nothing more is written: the file is gone or corrupt (`fault`), or a newer version migrated it."""
        return self.fault is not None or self._migrated is not None

    @property
    def stalled(self) -> str | None:
        """Why the database is taken not to answer (the writer's round has waited more than `STALL_S`), else None."""
        stall = self._stall()
        return None if stall is None else stall[1]

    def _stall(self) -> tuple[str, str] | None:
        """(what `fault` calls it, why: `stalled`), from one look at the lock's holder, else None."""
        since = self.writer.busy_since
        if since is None:
            return None
        waited = time.monotonic() - since
        if waited <= STALL_S:
            return None
        if (holder := self._lock_holder()) is not None:
            return "log locked", (
                f"this process has waited {waited:.0f} s for the log's write lock, which {holder} holds: a worker "
                "or replica stopped or cut off inside a write transaction (PostgreSQL ends such a session once it "
                "has been idle in its transaction for 10 s)")
        return "database not answering", f"the database has not answered for {waited:.0f} s"

    def _lock_holder(self) -> str | None:
        """Who holds the log's lock the writer waits for (PostgreSQL: `PostgresStore.lock_holder`), else None."""
        holder = getattr(self.store, "lock_holder", None)
        return None if holder is None else cast(str | None, holder())

    @property
    def fault(self) -> str | None:
        """Why the store refuses writes (its file deleted, replaced or corrupt), else None (`bandit_router.dbguard`)."""
        return getattr(self.store, "fault", None)

    @property
    def state(self) -> str:
        if self._failed is not None:
            return f"failed: {self._failed}"
        if self.fault is not None:
            return f"database unusable: {self.fault}"
        if self._migrated is not None:
            return self._migrated
        if self._unreachable is not None:
            return f"database unreachable: {self._unreachable}"
        if (stall := self._stall()) is not None:
            return f"{stall[0]}: {stall[1]}"
        if (failed := self.writer.write_failed) is not None and self._serving:
            return f"the last write failed: {failed}"
        if not self.writer.accepting:
            return "stopped"
        return "ready" if self._ready.is_set() else "recovering"

    # -- life cycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread; it recovers the learned state first (`ready` turns true when done)."""
        self.writer.start(self._prepare, self._between_batches, self._on_stop)
        listen = getattr(self.store, "listen", None)
        if listen is not None:  # PostgreSQL: wake the writer when another replica commits to the log
            listen(self.writer.wake)
        self._maintainer = threading.Thread(target=self._maintain, name="bandit-router-maintenance", daemon=True)
        self._maintainer.start()
        self._watchdog = threading.Thread(target=self._watch, name="bandit-router-watchdog", daemon=True)
        self._watchdog.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._ready.wait(timeout)
        return self.ready

    def stop(self, *, checkpoint: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting, finish every queued operation, write a final checkpoint (unless told not to)."""
        self._serving = False
        self._checkpoint_on_stop = checkpoint
        self.writer.stop(timeout)
        if self.writer.unwritten_counts:
            log.warning("named routers' counts (%d rows of router_stats) could not be written before the stop (the "
                        "database was unusable); /v1/stats and the dashboard lack them", self.writer.unwritten_counts)
        self._stopped.set()
        if self._maintainer is not None:
            self._maintainer.join(timeout)
        if self._watchdog is not None:
            self._watchdog.join(timeout)
        self._say.flush()  # the failures not said yet (the writer's: its stop)
        self.checkpointer.flush_log()
        self.store.close()

    def _maintain(self) -> None:
        """Store housekeeping twice a second (SQLite: WAL checkpoints), off the writer thread; a server database is
        probed as well (`PostgresStore.probe`): while it cannot be reached the process is not ready."""
        probe = getattr(self.store, "probe", None)
        while not self._stopped.wait(MAINTAIN_EVERY_S):
            try:
                self.store.maintain()
            except StoreError as exc:
                log.debug("maintenance skipped: %s", exc)
            if probe is not None:
                try:
                    probe()
                    self._unreachable = None
                except StoreError as exc:
                    self._unreachable = str(exc)
            self._check_schema()

    def _watch(self) -> None:
        """Twice a second, with no I/O of its own (the maintenance thread's probe may hang with the database): while
        the database does not answer (`stalled`), answer the requests waiting for the writer with a 503 now."""
        while not self._stopped.wait(MAINTAIN_EVERY_S):
            stalled = self.stalled
            self._note_outage(self._unreachable is not None or stalled is not None
                              or self.writer.write_failed is not None)
            if stalled is not None:
                self.writer.abandon(
                    Unavailable(f"the database is unavailable: {stalled}; this request may still be stored when it "
                                "answers (a feedback sent again is answered `duplicate`)"),
                    Unavailable(f"the database is unavailable: {stalled}; nothing of this request was stored"),
                )

    def _note_outage(self, out: bool) -> None:
        """Log the start of a database outage (unreachable, not answering, refusing writes: `/readyz` 503) and its
        end, once each, so that the log says when the service stopped and started serving again (the failures in
        between are logged at most once a minute)."""
        if out and self._outage_since is None and self._serving:
            self._outage_since = time.monotonic()
            log.error("not ready: %s (/readyz 503 until it is over)",
                      " ".join(self.state.split()))  # one line (libpq's messages hold a newline)
        elif not out and self._outage_since is not None:
            log.warning("ready again: the database answers and takes writes (after %.0f s)",
                        time.monotonic() - self._outage_since)
            self._outage_since = None

    def _check_schema(self) -> None:
        """A newer bandit-router migrated the database (an old replica left running beside new ones during an
        upgrade): stop acknowledging, as a start on that database would refuse it, rather than go on writing rows
        without what the newer schema keeps beside them. Twice a second, off the request path."""
        if self._migrated is not None or not self._serving:
            return
        try:
            with self.store.read() as reader:
                value = reader.get_meta("schema_version")
        except StoreError:
            return
        if value is not None and value.isdigit() and int(value) > SCHEMA_VERSION:
            self._migrated = (f"database migrated to schema {value} by a newer bandit-router (this one knows "
                              f"{SCHEMA_VERSION}): restart this process with the newer version")
            self.writer.halted = self._migrated
            _stop_acknowledging(self._migrated)

    # -- on the writer thread -----------------------------------------------------------------------------------
    def _prepare(self) -> None:
        try:
            self._recover()
        except BaseException as exc:
            self._failed = exc
            log.exception("recovery failed; the service stays unready")
            self._ready.set()
            if self.on_recovery_failed is not None:
                self.on_recovery_failed(exc)
            raise
        self._ready.set()
        self._serving = self.writer.accepting
        if self.on_recovered is not None:
            self.on_recovered()

    def _recover(self) -> None:
        """Load the newest valid checkpoint, replay the log after it, load the budget state."""
        started = time.perf_counter()
        with self.store.read() as reader:
            for event in reader.model_events_after(0):  # the retired list (a snapshot holds no history)
                self.follower.note(event)
        restored = self.checkpointer.restore_newest()
        self.writer.init_sweeps()
        replayed = 0
        while True:
            with self.store.read() as reader:
                head = reader.head()
                if head == self.follower.position:
                    break
                replayed += self.follower.catch_up(reader, head)
        self.recovery = {
            "checkpoint_seq": None if restored is None else restored.seq,
            "replayed": replayed,
            "seconds": round(time.perf_counter() - started, 3),
            "policy_version": self.router.version,
            "unreadable": self.follower.unreadable_report(),
            "budgets": self.budgets.recover(self.router),
        }
        if self.recovery["budgets"] == "stored":
            self.budgets.say_models_gone(self.router.models)
        if self.budgets.shared:
            with self.store.write() as tx:  # from the saved state's marks: what was stored since its save is booked
                self.budgets.start_following(tx, applied_seq=self.follower.applied_seq)
            self.budgets.replay_since_save()  # ... read without the log's lock, before serving
        log.info("recovered: %s, %d feedbacks replayed in %.2f s, policy version %d", self._restored_from(restored),
                 replayed, self.recovery["seconds"], self.router.version)
        self.policies.check_models()  # a policy naming a model neither the catalog nor the log holds
        if self.follower.unreadable:
            log.error("recovery skipped %d learned feedback rows whose decisions cannot be read (first seqs %s): "
                      "the learned state lacks them; run `bandit-router check`", self.follower.unreadable,
                      self.follower.unreadable_seqs)
        self.policies.warn_about_missing_models()
        self._refuse_alias_clashes()

    def _restored_from(self, restored: Checkpoint | None) -> str:
        """What recovery started from, for its log line: "checkpoint at seq None" read as a fault on a new
        database, and "no checkpoint yet" as a new database where checkpoints of other settings (another policy,
        other models: another fingerprint) are there."""
        if restored is not None:
            return f"checkpoint at seq {restored.seq}"
        with self.store.read() as reader:
            others = reader.checkpoint_count()
        return "no checkpoint yet" if others == 0 else f"no checkpoint for these settings ({others} of other settings)"

    def _refuse_alias_clashes(self) -> None:
        """A model added at run time whose name a later configuration made an alias (`router_alias`, a
        `[[routers]]` name) stops recovery, as that name in the catalog stops the start: the gateway could never
        reach the model, and `GET /v1/models` would list the name twice."""
        for model in self.router.models:
            clash = alias_clash(model.name, self.settings.gateway.router_alias, self.settings.named_routers.routers)
            if clash is not None:
                raise ConfigError(
                    f"model {model.name!r} (added at run time) clashes with the configuration: {clash}. Rename the "
                    f"router (or router_alias), or start without it and retire the model (DELETE "
                    f"/v1/models/{model.name})"
                )

    def _between_batches(self) -> None:
        if not self._sealed:
            try:
                if self.checkpointer.step():
                    self.budgets.save(force=True)
            except Exception as exc:  # the log still has everything; try again after the next batch
                self._say("checkpoint", logging.ERROR, "checkpoint failed: %s", exc, exc_info=exc)
            try:
                self.budgets.housekeeping()
            except Exception as exc:  # a bug in the budgets' bookkeeping must not end the writer thread
                self._say("budgets", logging.ERROR, "budget housekeeping failed (will retry): %s", exc, exc_info=exc)
        self._housekeeping()

    def _housekeeping(self) -> None:
        """Keep the WAL bounded (`SQLiteStore.bound_wal`: a restarting checkpoint before it passes
        `wal_max_bytes`; looked at every `WAL_CHECK_EVERY_S`) and delete what `retention_days` no longer keeps."""
        now = time.monotonic()
        bound_wal = getattr(self.store, "bound_wal", None)
        if bound_wal is not None and now >= self._next_wal_check:
            self._next_wal_check = now + WAL_CHECK_EVERY_S
            try:
                bound_wal()
                if getattr(self.store, "restart_busy", False) and time.monotonic() - now > WAL_CHECK_EVERY_S:
                    self._next_wal_check = now + WAL_RETRY_BUSY_S  # a long reader: do not stall every batch
            except StoreError as exc:
                self._say("wal", logging.WARNING, "restarting the WAL failed (will retry): %s", exc)
        days = self.settings.storage.retention_days
        delete_old = getattr(self.store, "delete_old", None)
        if days is not None and delete_old is not None and now >= self._next_retention and not self._sealed:
            self._next_retention = now + RETENTION_EVERY_S
            self._say_clock_step(self.retention_clock.ahead())
            try:
                deleted = delete_old(self.retention_clock() - days * 86400.0, RETENTION_BATCH,
                                     fingerprint=self.fingerprint, swept=SWEPT if self.writer.rules.sweeps else None)
            except StoreError as exc:
                self._say("retention", logging.WARNING, "deleting old rows failed (will retry): %s", exc)
                return
            if deleted >= RETENTION_BATCH:  # more to do: the next batch soon, between the requests' batches
                self._next_retention = time.monotonic() + RETENTION_AGAIN_S
            if deleted:
                log.info("retention: deleted %d rows older than %s days", deleted, days)

    def _say_clock_step(self, ahead: float) -> None:
        """Log a wall clock stepped forward since the start once, when retention first sees it, again only when it
        moves by over `CLOCK_STEP_SAID_S` (another step), and back once within `CLOCK_BACK_S`: it lasts until the
        next start, since a clock that was behind at the start and then corrected cannot be told from one set wrong
        now (it was said every minute until a restart)."""
        if ahead <= CLOCK_BACK_S:
            if self._ahead_said is not None:
                log.info("the wall clock is back within %.0f s of the time elapsed since the start", CLOCK_BACK_S)
                self._ahead_said = None
            return
        if self._ahead_said is None and ahead <= CLOCK_STEP_SAID_S:
            return
        if self._ahead_said is not None and abs(ahead - self._ahead_said) <= CLOCK_STEP_SAID_S:
            return  # (a step back from 1,000 s to 45 s ahead is a move: said, or the log would keep saying 1,000)
        self._ahead_said = ahead
        log.warning("the wall clock is %.0f s ahead of the time elapsed since the start (it was stepped forward: set "
                    "wrong, or it was behind at the start and was corrected): retention deletes by the elapsed time, "
                    "so it keeps rows that much longer until the next start (said again only if it steps again)", ahead)

    def _on_stop(self) -> None:
        if self._sealed:
            return
        self.budgets.save(force=True)
        if self._checkpoint_on_stop:
            try:
                if self.checkpointer.maybe_checkpoint(force=True):
                    self.budgets.save(force=True)
            except Exception:
                log.exception("final checkpoint failed")

    # -- requests (from an event loop) --------------------------------------------------------------------------
    def _require_ready(self, counts: RouterCounts | None = None) -> None:
        """Raise `Unavailable` (503) while requests are refused; a named router's `counts` (its calls were made
        and paid) are then kept to be written with a later transaction (`Writer.keep_counts`), not lost."""
        if self._refusing:
            if counts is not None:
                self.writer.keep_counts([counts])
            raise Unavailable(f"the service is not ready ({self.state})")

    def require_ready(self) -> None:
        """Raise `Unavailable` (503) while requests are refused, or while the server database is unreachable (the
        maintenance thread's probe, twice a second): a named router asks before it pays for any call, since it
        stores its decision only after its chain (`route` and `store_decision` ask themselves, and an unreachable
        database fails their first write before any call is made): `ready`, as `/readyz` reads it."""
        if not self.ready:
            raise Unavailable(f"the service is not ready ({self.state})")

    def require_readable(self) -> None:
        """Raise `Unavailable` (503) at once while the database does not answer (`stalled`): a read would wait
        behind the hang for as long as it lasts, holding a thread of the pool (the dashboard asks every 2 s); or
        once its file was deleted, replaced or found corrupt (`fault`): a read would answer from the file the
        service opened, which is no longer the database at its path."""
        if (stalled := self.stalled) is not None:
            raise Unavailable(f"the database is unavailable: {stalled}")
        if (fault := self.fault) is not None:
            raise Unavailable(f"the database is unusable: {fault}")

    async def _submit(self, op: Op, counts: RouterCounts | None = None) -> Any:
        """`op` to the writer, unless requests are refused; `counts`: the op's named router's, kept then (as
        `_require_ready`'s), since the state may have changed since the caller asked."""
        self._require_ready(counts)
        return await self.writer.submit(op)

    async def route(self, request: Request) -> Decision:
        """Decide, store the decision (with the prompt only when `store_prompts`), then return it. The decision is
        booked by the budget pacer only once stored (`BudgetState.book_given_id`, on the writer thread as it commits):
        an id the client chose may be taken (a retry: 409), and a refused request then books nothing; one without an
        id (the gateway's) is given a new one here, so that its booking and its id noted as this process's happen
        together, between two saves of the budget state (booked on the event loop, a save in between stored its
        spend without its id: a process started from it booked the decision again)."""
        self._require_ready()
        if request.decision_id is None:
            request = _with_new_id(request)
        decision = await self._decide(request)
        tenant = tenant_of(request.context.get("tenant"))
        prompt = request.text if self.settings.storage.store_prompts else None
        shadow = self.policies.shadow_pmfs(decision) if self.shadows else None
        on_stored = functools.partial(self.budgets.book_given_id, decision)
        await self._submit(InsertDecision(decision, prompt, tenant, shadow, on_stored=on_stored))
        return decision

    def _decide(self, request: Request) -> asyncio.Future[Decision]:
        """The live router's decision for `request`, made together with the other route requests that get here
        in the same iteration of the event loop: one `Router.route_many` call right after it (the same decisions
        as one `route` each in that order; the `default` policy evaluates their quadratures together)."""
        loop = asyncio.get_running_loop()
        pending = self._routes.get(loop)
        if pending is None:
            pending = self._routes[loop] = []
            loop.call_soon(self._decide_pending, loop)
        future: asyncio.Future[Decision] = loop.create_future()
        pending.append((request, future))
        return future

    def _decide_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = self._routes.pop(loop, [])
        results: list[Decision | Exception]
        try:
            with self.deciding() as router:  # not while a promotion swaps the live router
                results = router.route_many([request for request, _ in pending], book_given_ids=False)
        except Exception as exc:  # not one request's error (those come back in `results`): fail them all
            results = [exc] * len(pending)
        for (_, future), result in zip(pending, results, strict=True):
            if future.done():  # the caller left
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def store_decision(
        self, decision: Decision, request: Request, call: CallRecord | None = None, counts: RouterCounts | None = None,
        *, booked: bool = True,
    ) -> Decision:
        """Store a decision made outside `route` (the gateway's fallbacks and caller-named models; a named
        router's, with its call record, chain and what it adds to the router's counts in the same transaction).
        Each is booked by this process's budget pacer once (`BudgetState`), its id noted as this process's with its
        booking: a named router's request at once, at what its chain paid (`counts.spend_usd`, `book_chain`: those
        calls are made, whether or not the decision is stored or gets feedback); a caller-named model's once stored
        (on the writer thread as it commits), at its expected cost, corrected by its call record (`record_call`);
        a routed decision the pacer has not booked (`booked=False`: made with `Router.decide(..., book=False)`, a
        gateway fallback, an LLM router's policy decision whose model failed) once stored, at its expected cost."""
        on_stored = None
        if call is not None and counts is not None:
            self.budgets.book_chain(decision, call, counts.spend_usd, mine=True)
        else:  # on the writer thread as it commits, as `route`'s (`BudgetState.book_own_stored`)
            on_stored = functools.partial(self.budgets.book_own_stored, decision, booked=booked)
        self._require_ready(counts)
        tenant = tenant_of(request.context.get("tenant"))
        prompt = request.text if self.settings.storage.store_prompts else None
        shadow = self.policies.shadow_pmfs(decision) if self.shadows and decision.probability < 1.0 else None
        await self._submit(InsertDecision(decision, prompt, tenant, shadow, call, counts, on_stored=on_stored), counts)
        return decision

    async def count_router(self, counts: RouterCounts, request: Request) -> None:
        """Add a named router's request that stored no decision (no model answered) to the router's counts; what
        its calls paid (`counts.spend_usd`: a routing LLM's choice) is spent in the budget pacer at once."""
        self.pacer.spend(counts.spend_usd, request.context.get("tenant"))
        self._require_ready(counts)
        await self._submit(CountRouter(counts), counts)

    async def record_call(
        self, record: CallRecord, failure: Outcome | None = None, source: str | None = None,
        decision: Decision | None = None,
    ) -> None:
        """Store the gateway's record of a call; with `failure`, also the failure as the decision's feedback
        (learned like any feedback). Both reach the writer in one batch, the record first. With `decision` (the
        call's), the budget pacer is told what the call cost (`BudgetState.book_call`: a caller-named model's)."""
        if decision is not None:
            self.budgets.book_call(decision, record)
        ops: list[Any] = [self._submit(RecordCall(record))]
        if failure is not None:
            ops.append(self._submit(Feedback(record.decision_id, failure, source, time.time())))
        await asyncio.gather(*ops)

    async def record_judge_call(self, record: JudgeCall) -> None:
        """The feedback judge paid `record.cost_usd` to score a decision: spent in the budget pacer at once, in the
        scored decision's tenant (`BudgetState.book_judge_call`), then stored, so that every process sharing the
        log books it too."""
        self.budgets.book_judge_call(record, mine=True)
        await self._submit(RecordJudgeCall(record))

    async def feedback(self, decision_id: str, outcome: Outcome, source: str | None = None) -> FeedbackResult:
        result: FeedbackResult = await self._submit(Feedback(decision_id, outcome, source, time.time()))
        return result

    async def set_budgets(self, config: BudgetConfig) -> BudgetConfig:
        """Replace the budget targets (effective from the next request) and store them."""
        done: BudgetConfig = await self._submit(SetBudgets(config))
        return done

    async def add_model(self, spec: ModelSpec) -> ModelSpec:
        """Add a model at run time. A name the gateway reads as an alias (`router_alias`, a named router's) is a
        `Conflict`, as it is in the catalog at start: `model = <that name>` would never reach the model."""
        clash = alias_clash(spec.name, self.settings.gateway.router_alias, self.settings.named_routers.routers)
        if clash is not None:
            raise Conflict(f"model {spec.name!r}: {clash}; choose another name")
        added: ModelSpec = await self._submit(AddModel(spec, self.settings.limits.max_models))
        return added

    async def retire_model(self, name: str) -> str:
        retired: str = await self._submit(RetireModel(name))
        return retired

    async def promote(self, name: str, *, force: bool = False) -> dict[str, Any]:
        """Make the shadow policy `name` live, if its evidence says so (`promotion_check` on the live policy's
        decisions: DR lower bound of `shadow:NAME` above the live policy's DR estimate), or anyway with `force`. Raises
        `NotFound` for an unknown shadow and `Conflict` (with the reason) when the evidence is not there."""
        self._require_ready()
        if name not in self.shadows:
            shadows = ", ".join(self.shadows) or "none"
            raise NotFound(f"no shadow policy {quoted([name], self.shadows)}; shadows: {shadows}")
        previous = self.live_name
        check: dict[str, Any]
        try:
            check = await asyncio.to_thread(self.promotion_check, name)
        except BanditRouterError as exc:
            check = {"ok": False, "reason": str(exc)}
        if not check["ok"] and not force:
            raise Conflict(f"shadow {name!r} not promoted: {check['reason']}")
        await self._submit(Promote(name, previous))  # a Conflict if another process promoted a policy meanwhile
        return {"promoted": name, "previous": previous, "forced": bool(force and not check["ok"]), "check": check}

    # -- reads (blocking: call from a thread pool) ---------------------------------------------------------------
    def promotion_check(self, name: str) -> dict[str, Any]:
        """Evaluate `shadow:NAME` against the live policy on the decisions the live policy made that logged the
        shadow's pmf (blocking). Decisions an earlier live policy made (before a promotion) are left out: their
        logged value is that policy's, not the live one's; so are those where the live policy's or the shadow's
        pmf gave probability to a model this catalog no longer routes (`choices_routable_now`): a choice neither
        can make now."""
        from ..evaluation import evaluate_log, promotion_check
        from ..evaluation.removed import choices_routable_now, stale_choices_warning
        from ..evaluation.store_log import iter_log, model_specs

        live = self.router.policy.name  # what the live router writes into each decision's `policy`
        with _readable(self):
            logged = [r for r in iter_log(self.store) if r.outcome is not None and name in r.shadow_pmfs
                      and r.decision.policy == live]
            specs = model_specs(self.store, list(self.settings.load_catalog()))
        active = {m.name for m in self.router.models}  # not those retired at run time (their specs price outcomes)
        records = [r for r in logged if choices_routable_now(r, specs, (name,), active)]
        stale = stale_choices_warning(len(logged) - len(records), len(logged))
        if len(records) < MIN_PROMOTION_EVIDENCE:
            counted = f"{len(records)} decision{'' if len(records) == 1 else 's'}"
            reason = (f"only {counted} of the live policy with feedback logged the shadow's pmf "
                      f"(at least {MIN_PROMOTION_EVIDENCE} needed)")
            if stale:
                reason = (f"only {counted} of the live policy with feedback logged the shadow's pmf with neither pmf "
                          f"giving probability to a model this catalog no longer routes (at least "
                          f"{MIN_PROMOTION_EVIDENCE} needed; {len(logged) - len(records)} more gave one probability, "
                          "a choice neither can make now)")
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
            "n": evaluation.n_evaluated,  # as the shadows panel: the decisions scored
            "left_out": len(logged) - evaluation.n_evaluated,  # a pmf gave probability to a model not routed now
            "warnings": [*stale, *evaluation.warnings],  # e.g. how many outcomes are a closed window's default_reward
        }

    def decision(self, decision_id: str) -> tuple[StoredDecision, list[FeedbackRecord], CallRecord | None]:
        """A stored decision, its feedback, and the gateway's call record (None for a `/v1/route` decision)."""
        with _readable(self), self.store.read() as reader:
            stored = reader.decision(decision_id)
            if stored is None:
                raise UnknownDecision(f"no decision {decision_id!r}")
            return stored, reader.feedback_for(decision_id), reader.calls_for_many([decision_id]).get(decision_id)

    def has_feedback(self, decision_id: str) -> bool:
        """Whether any feedback of the decision is stored, the caller's or a closed window's `default_reward` (the
        judge leaves such a decision unjudged)."""
        with _readable(self), self.store.read() as reader:
            return bool(reader.feedback_for(decision_id))

    def router_counts(self) -> list[RouterCounts]:
        """Named routers' counts from the database (`store.router_stats`): the deployment's, whatever the process."""
        with _readable(self), self.store.read() as reader:
            return reader.router_counts()

    def judge_totals(self) -> JudgeTotals:
        """The feedback judge's stored calls summed (`store.JudgeTotals`): the deployment's, whatever the process."""
        with _readable(self), self.store.read() as reader:
            return reader.judge_totals()

    def stats(self) -> dict[str, Any]:
        """Counts from the database; the policy version and applied seq of this process (`pid`)."""
        paged = getattr(self.store, "stats", None)  # optional (`Store`): SQLite pages a long log's scan
        with _readable(self):
            raw = None if paged is None else paged()
            with self.store.read() as reader:
                if raw is None:
                    raw = reader.stats()
                head = reader.head()
        total = sum(m.decisions for m in raw.models.values())
        learned = sum(m.feedback for m in raw.models.values())
        active = {m.name for m in self.router.models}  # past decisions of a model no longer there still count
        models = [
            {"model": name, **m.to_json(), "share": m.decisions / total if total else 0.0, "in_catalog": name in active}
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
            "applied_seq": self.applied_seq,
            "decisions": total,
            "feedback_learned": learned,
            "feedback_rate": learned / total if total else 0.0,
            "feedback_by_status": raw.feedback_by_status,
            "unreadable": self.follower.unreadable_report(),
            "checkpoints": self.checkpointer.report(),
            "models": models,
            "budgets": self.pacer.report(),
            **{name: report() for name, report in self.extra_stats.items()},
        }


def _with_new_id(request: Request) -> Request:
    """`request` with a new decision id: a copy of its fields, checked when it was made. `dataclasses.replace` made it
    anew, checking every message and the context again (`Request.__post_init__`): 7–18 µs of each gateway route."""
    given: Request = object.__new__(Request)
    given.__dict__.update(request.__dict__)
    object.__setattr__(given, "decision_id", new_decision_id())
    return given


@contextlib.contextmanager
def _readable(engine: Engine | None = None) -> Iterator[None]:
    """Database errors of a read → `Unavailable` (503), a decision that cannot be read → `Gone` (410); with
    `engine`, refused at once while it is stalled."""
    if engine is not None:
        engine.require_readable()
    try:
        yield
    except UnreadableDecision as exc:  # that decision, for good: not a database to wait for
        raise Gone(f"{exc} (see `bandit-router check` and the docs: service → durability)") from exc
    except StoreError as exc:
        raise Unavailable(f"the database is unavailable: {exc}") from exc


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None
