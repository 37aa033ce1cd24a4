"""`PostgresStore`: the `Store` on a PostgreSQL server, for any number of service replicas sharing one log.

The same tables as SQLite (`store/migrations.py`, PostgreSQL dialect) and the same row decoders
(`store/sqlite.py`). What makes one log out of many processes:

    write()     BEGIN; SELECT pg_advisory_xact_lock(LOG_LOCK)      the database's single write lock, held until
                                                                   COMMIT/ROLLBACK, as SQLite's BEGIN IMMEDIATE;
                       , pg_current_xact_id()                      the transaction's id: a COMMIT whose answer is
                                                                   lost asks pg_xact_status on a new connection
    head()      log_head.seq (largest feedback seq ever used), MAX(model_events.id)
    insert_feedback()   rows numbered head + 1, + 2, … by the writer, and log_head moved in the same statement

Under the lock every writer reads the head its predecessor committed (READ COMMITTED: each statement sees what
committed before it started, and the lock is granted only after the previous holder's commit is visible), so
seqs are allocated in commit order with no gap that a later row could overtake: a transaction that rolls back
leaves log_head where it was, and the next writer reuses its numbers. A reader (`read()`, REPEATABLE READ) sees
a prefix of the log: writers commit one after the other, so a snapshot that sees a transaction sees every one
committed before it. Decisions get their storage `position` (an identity) under the same lock, so positions
also become visible in order (the reward-window sweep and the budget tail walk them).

Followers are told: a transaction that wrote to the log ends with `NOTIFY bandit_router_log`, and every process
`listen()`s on its own connection, so a replica learns another's rows milliseconds after their commit instead
of at its next poll (the poll stays, every 100 ms, in case a notification is missed while reconnecting). Under
load a writer catches up under the lock before every log write anyway, so notifications are passed on only once
it has not done so for `NOTIFY_QUIET_S` (a follow per notification cost ~30% of the feedback throughput).

Connections: the writer owns one connection (reopened after a failure; a failure before anything was sent, as
after a server restart, is retried once on a fresh connection); readers borrow from a `psycopg_pool` pool that
checks a connection before lending it. Every driver error leaves as `StoreError`, with any password masked.

Why one module of ~590 lines: like `sqlite.py`, it is one implementation of `store.interface`, one short method
per query; the connection handling (writer, pool, listener) is the rest, and each query sits next to its decoder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ..catalog import ModelSpec
from ..dbguard import rate_limit_logger
from ..types import Decision
from . import rollup, router_stats
from .interface import Reader, WriteTx
from .location import DatabaseURL, redact_urls
from .migrations import MIGRATIONS, SCHEMA_VERSION
from .records import (
    CallRecord,
    ChainFeedback,
    Checkpoint,
    CommitOutcomeUnknown,
    DecisionInfo,
    FeedbackContext,
    FeedbackRecord,
    JudgeCall,
    JudgeTotals,
    ModelEvent,
    ModelStats,
    StoredDecision,
    StoreError,
    StoreStats,
    UnreadableDecision,
    model_event_from_row,
    parted_tokens,
    parts_marker,
    parts_named,
)
from .sqlite import (
    _DECISIONS,
    _DI,
    _FEEDBACK,
    _FI,
    _JOINED,
    ABANDONED_AFTER_S,
    CALL_COLUMNS,
    CALLS_WITH_CHAINS,
    CALLS_WITHOUT_CHAINS,
    CHAINS_SQL,
    DECISION_COLUMNS,
    FEEDBACK_COLUMNS,
    HELD_BY_CHECKPOINTS,
    JUDGE_CALL_COLUMNS,
    JUDGE_CALLS_AFTER,
    JUDGE_TOTALS,
    OTHER_CONFIGURATIONS_KEPT,
    OTHER_CONFIGURATIONS_OLD,
    PARTED,
    PARTS_FOUND,
    PARTS_OF,
    PARTS_OLDER,
    RETIRED_WITH_FEEDBACK,
    _call_from_row,
    _call_value,
    _chains_from_rows,
    _feedback_from_row,
    _SQLiteTx,
    _stored_from_row,
    first_at_or_after,
    judge_call_values,
    judge_totals,
    learned_from_rows,
    stored_or_none,
    swept_limit,
)

log = logging.getLogger("bandit_router.store")

CHANNEL = "bandit_router_log"
"""The NOTIFY channel of log writes."""
NOTIFY_QUIET_S = 0.01
"""Notifications are passed on once this process's writer has not caught up under the lock for this long."""
LOG_LOCK = 0x62616E6469740001
"""The advisory lock key of the log's single writer (per database)."""
COMMIT_OUTCOME_WAIT_S = 5.0
"""How long a write whose COMMIT lost its answer waits for the transaction to end ('in progress': the server may still
be committing it, or not yet have seen that its client is gone) before it reports the outcome unknown."""
MIGRATE_LOCK = 0x62616E6469740002
"""The advisory lock key under which `prepare()` migrates (replicas starting together migrate once)."""
CONNECT_TIMEOUT_S = 3
POOL_NAME = "bandit-router"
"""The connection pool's name: psycopg's pool names it in its log records, and only those are rate limited."""
POOL_TIMEOUT_S = 5.0
"""How long a reader waits for a pooled connection while the server is reachable (all of them busy)."""
POOL_SLICE_S = 0.1
"""A reader waits for a pooled connection in slices of this length, and gives up after a slice that ended while this
process knew the server to be down (`PostgresStore.down`): a request answers 503 then, not after `POOL_TIMEOUT_S`."""
POOL_RECONNECT_S = 2.0
"""The pool retries a failed connection with doubling delays for at most this long, then leaves the next reader's
demand to start again from a prompt attempt: with a long give-up (it was 24 h) the delays kept doubling through an
outage, and readers (following the log, `/v1/stats`) stayed without connections for about as long again after
the server was back."""
STATEMENT_TIMEOUT_MS = 60_000
LOCK_TIMEOUT_MS = 10_000
"""A writer waits at most this long for the log's lock (then 503): a replica cut off from the network while it
holds the lock must not stall the others for longer."""
LOCK_LOOKUP_S = 1.0
"""Once the writer has waited this long for the log's lock, the probe asks PostgreSQL which session holds it
(`lock_holder`), so that a stall says who (a worker or replica stopped or cut off inside a write transaction)."""
_LOCK_HOLDER = (
    "SELECT a.pid, a.application_name, host(a.client_addr), a.state, EXTRACT(EPOCH FROM now() - a.state_change) "
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
    "AND l.classid = %s::oid AND l.objid = %s::oid AND l.objsubid = 1 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
IDLE_IN_TRANSACTION_MS = 10_000
"""PostgreSQL ends a session idle this long inside a transaction (releasing the lock a lost replica held); the
service's transactions never pause between statements for more than milliseconds."""
_CHUNK = 200
_INSERT_DECISIONS = f"INSERT INTO decisions ({_DECISIONS}) VALUES "
_DECISION_PLACEHOLDERS = f"({', '.join(['%s'] * len(DECISION_COLUMNS))})"
_INSERT_FEEDBACK = (
    "WITH moved AS (UPDATE log_head SET seq = GREATEST(seq, %s)) "
    f"INSERT INTO feedback ({_FEEDBACK}) VALUES "
)
_FEEDBACK_PLACEHOLDERS = f"({', '.join(['%s'] * len(FEEDBACK_COLUMNS))})"


class PostgresStore:
    """`Store` on PostgreSQL at `url`. `pool_size`: the most reader connections this process opens."""

    def __init__(self, url: DatabaseURL, *, pool_size: int = 6, timeout_s: float = POOL_TIMEOUT_S,
                 lock_timeout_ms: int = LOCK_TIMEOUT_MS, idle_timeout_ms: int = IDLE_IN_TRANSACTION_MS) -> None:
        self.url = url
        self.fault: str | None = None
        """Always None: a server that is down is a transient `StoreError` (503), not a fault of the store."""
        self.shared = True
        """Other processes (replicas) write to this database too."""
        self.timeout_s = timeout_s
        self._secret = url.password
        self._connect_options: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": f"bandit-router[{os.getpid()}]",  # which process, in pg_stat_activity
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={lock_timeout_ms} "
                       f"-c idle_in_transaction_session_timeout={idle_timeout_ms}",
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
        }
        # the pool's every failed reconnection, a few a second while the server is down: this pool's records only
        # (they name it), not those of an embedding application's own pools
        rate_limit_logger("psycopg.pool", about=POOL_NAME)
        self._pool = ConnectionPool(
            url.reveal(), min_size=1, max_size=pool_size, kwargs=self._connect_options, open=False,
            timeout=timeout_s, check=ConnectionPool.check_connection, name=POOL_NAME,
            reconnect_timeout=POOL_RECONNECT_S,
        )
        self._pool_open = False
        self._probe: psycopg.Connection[Any] | None = None
        self.down = False
        """True from a failed connection to the server (the writer's, the probe's) until one succeeds: readers then
        do not wait for the pool, which cannot connect either (`_borrow`)."""
        self._writer: psycopg.Connection[Any] | None = None
        self._writer_pid = 0
        """The server process of the writer's connection: its own notifications are not news to this process."""
        self.lock_waiting_since: float | None = None
        """While the writer waits for the log's lock: since when (monotonic)."""
        self._holder: tuple[float, str] | None = None
        """(the wait it was found for, who holds the lock), found by `probe`."""
        self._write_lock = threading.Lock()
        self._closing = threading.Event()
        self._listener: threading.Thread | None = None
        self._head_read_at = 0.0
        """When this process's writer last committed a transaction that read the head (and caught up there)."""
        self._lock = threading.Lock()
        self._models_json: dict[tuple[str, ...], str] = {}
        self._tables: set[str] = set()
        """Tables a later migration added that this process has seen exist (`_PostgresTx.has_table`)."""

    def __str__(self) -> str:
        return str(self.url)

    def _error(self, exc: BaseException, what: str = "") -> StoreError:
        text = redact_urls(str(exc).strip(), self._secret)
        return StoreError(f"PostgreSQL {str(self.url)!r}: {what}{text}")

    # -- connections ----------------------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.Connection.connect(self.url.reveal(), **self._connect_options)
        except psycopg.Error as exc:  # not chained: a driver's message about a connection string may quote it
            self.down = True
            raise self._error(exc, "cannot connect: ") from None
        self.down = False
        return conn

    def _writer_conn(self) -> psycopg.Connection[Any]:
        if self._writer is None or self._writer.closed:
            self._writer = self._connect()
            self._writer_pid = self._writer.info.backend_pid
        return self._writer

    def _drop_writer(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self._writer = None

    def _readers(self) -> ConnectionPool:
        if not self._pool_open:
            with self._lock:
                if not self._pool_open:
                    self._pool.open(wait=False)
                    self._pool_open = True
        return self._pool

    def prepare(self) -> None:
        """Run the migrations this database has not run yet, under an advisory lock (replicas that start together
        migrate once); refuse a database whose schema is newer than this code's."""
        conn = self._connect()
        try:
            conn.execute("SET lock_timeout = 0; SET statement_timeout = 0")  # a backfill may take its time
            conn.execute("BEGIN")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            version = 0
            row = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
            if row is not None and row[0]:
                found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                version = int(found[0]) if found else 0
            if version > SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                raise StoreError(f"{self.url} has schema version {version}; this bandit-router knows {SCHEMA_VERSION}")
            if version < SCHEMA_VERSION:
                for migration in MIGRATIONS:
                    if migration.version > version:
                        for statement in migration.for_dialect("postgres"):
                            conn.execute(statement)
                        log.info("%s: migration %d applied (%s)", self.url, migration.version, migration.description)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', %s), ('created_at', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = CASE WHEN meta.key = 'created_at' THEN meta.value "
                    "ELSE EXCLUDED.value END",
                    (str(SCHEMA_VERSION), str(time.time())),
                )
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            raise self._error(exc, "cannot prepare the database: ") from exc
        finally:
            conn.close()

    def schema_version(self) -> int:
        """The schema version the database records (0: none: not prepared, or not a bandit-router database). On a
        connection of its own, not the pool's: this is the first read of a start (`check_live_catalog`), and a
        refused connection should say why (the pool only says it got none in time)."""
        conn = self._connect()
        try:
            conn.execute("BEGIN READ ONLY")
            reader = _PostgresTx(conn, self._models_json, self._tables)
            ours = reader.has_table("meta") and reader.has_table("decisions")  # not another application's `meta`
            value = reader.get_meta("schema_version") if ours else None
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        finally:
            conn.close()
        return int(value) if value is not None and value.isdigit() else 0

    @contextmanager
    def write(self) -> Iterator[WriteTx]:
        """A write transaction holding the log's advisory lock (`LOG_LOCK`) until it commits or rolls back."""
        with self._write_lock:
            conn, xid = self._begin_write()
            tx = _PostgresTx(conn, self._models_json, self._tables)
            try:
                yield tx
            except BaseException as exc:
                self._abort(conn)
                if isinstance(exc, psycopg.Error):
                    raise self._error(exc) from exc
                raise
            try:
                conn.execute(f"NOTIFY {CHANNEL}; COMMIT" if tx.logged else "COMMIT")
            except psycopg.Error as exc:
                lost = conn.broken or conn.closed  # the answer never came: the server may have committed
                self._abort(conn)
                if not lost:
                    raise self._error(exc, "commit failed: ") from exc
                outcome = self._outcome(xid)
                if outcome == "aborted":
                    raise self._error(exc, "commit failed: ") from exc
                if outcome != "committed":
                    raise CommitOutcomeUnknown(
                        f"PostgreSQL {str(self.url)!r}: the connection was lost at COMMIT and whether the transaction "
                        f"committed could not be learned ({outcome}): "
                        f"{redact_urls(str(exc).strip(), self._secret)}") from exc
                log.warning("PostgreSQL: the connection was lost at COMMIT, and the transaction had committed: "
                            "written (%s)", redact_urls(str(exc).strip(), self._secret))
            if tx.read_head:
                self._head_read_at = time.monotonic()

    def _outcome(self, xid: str) -> str:
        """Whether transaction `xid` committed: `pg_xact_status` ('committed', 'aborted') on a new connection, waiting
        up to `COMMIT_OUTCOME_WAIT_S` while it is 'in progress'; else why it is not known."""
        deadline = time.monotonic() + COMMIT_OUTCOME_WAIT_S
        while True:
            try:
                conn = self._connect()
            except StoreError as exc:
                status = f"cannot connect to ask: {exc}"
            else:
                try:
                    row = conn.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
                    status = "no longer known" if row is None or row[0] is None else str(row[0])
                except psycopg.Error as exc:
                    status = f"cannot ask: {redact_urls(str(exc).strip(), self._secret)}"
                finally:
                    conn.close()
            if status in ("committed", "aborted") or time.monotonic() >= deadline:
                return status
            time.sleep(0.05)

    def _begin_write(self) -> tuple[psycopg.Connection[Any], str]:
        """The writer's connection in a transaction holding the log's lock, and the transaction's id."""
        begin = f"BEGIN; SELECT pg_advisory_xact_lock({LOG_LOCK}), pg_current_xact_id()::text"
        for attempt in (1, 2):
            conn = self._writer_conn()
            try:
                self.lock_waiting_since = time.monotonic()
                try:
                    cursor = conn.execute(begin)
                finally:
                    self.lock_waiting_since = None
                cursor.nextset()
                row = cursor.fetchone()
                assert row is not None
                return conn, str(row[1])
            except psycopg.Error as exc:
                broken = conn.broken or conn.closed
                self._abort(conn)
                if not broken or attempt == 2:  # a stale connection (server restarted): once more, fresh
                    raise self._error(exc, "cannot start a write transaction: ") from exc
        raise AssertionError("unreachable")

    def _abort(self, conn: psycopg.Connection[Any]) -> None:
        if conn.broken or conn.closed:
            self._drop_writer()
            return
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            self._drop_writer()

    @contextmanager
    def read(self) -> Iterator[Reader]:
        """A REPEATABLE READ, READ ONLY transaction on a pooled connection: one snapshot for every query."""
        try:
            conn = self._borrow()
        except psycopg.Error as exc:
            raise self._error(exc, "cannot read the database: ") from exc
        failure: BaseException | None = None
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield _PostgresTx(conn, self._models_json, self._tables)
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            failure = exc
            raise self._error(exc) from exc
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if failure is not None and not conn.closed and not conn.broken:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
            self._readers().putconn(conn)

    def _borrow(self) -> psycopg.Connection[Any]:
        """A pooled connection: waited for up to `timeout_s` while the server is reachable, but no longer than the
        current `POOL_SLICE_S` once this process knows it is down, from its own connections or from a failed
        attempt of the pool's meanwhile (a refused connection is news within milliseconds; the pool, retrying with
        back-off, would hold the caller for the whole `timeout_s`)."""
        pool = self._readers()
        deadline = time.monotonic() + self.timeout_s
        failed = pool.get_stats().get("connections_errors", 0)
        while True:
            try:
                conn = pool.getconn(timeout=max(0.0, min(POOL_SLICE_S, deadline - time.monotonic())))
                self.down = False
                return conn
            except PoolTimeout:
                if pool.get_stats().get("connections_errors", 0) > failed:  # the pool's own attempt failed meanwhile
                    self.down = True
                if self.down or time.monotonic() >= deadline:
                    raise

    def delete_old(self, cutoff: float, limit: int, *, fingerprint: str, swept: str | None = None) -> int:
        """`retention_days`, as `SQLiteStore.delete_old`: at most `limit` decisions before `cutoff` with all their
        feedback, when every kept checkpoint of the configuration `fingerprint` holds it (`HELD_BY_CHECKPOINTS`) and
        it was all received before `cutoff`, then (up to `limit` decisions in all) decisions before `cutoff` that
        never had feedback. Decision positions and seqs are never reused (an identity, `log_head`). `swept`: as
        `SQLiteStore.delete_old`'s (only decisions the reward windows' sweep has reached go)."""
        with self.write() as tx:
            conn = tx.conn  # type: ignore[attr-defined]
            held = conn.execute(HELD_BY_CHECKPOINTS.format(mark="%s"), (fingerprint,)).fetchone()
            checkpoint_seq = int(held[0])
            below = min(swept_limit(tx, swept),
                        first_at_or_after(conn, "decisions", "position", "created_at", cutoff, "%s"))
            walked = min(checkpoint_seq, first_at_or_after(conn, "feedback", "seq", "received_at", cutoff, "%s") - 1)
            fed = [r[0] for r in conn.execute(RETIRED_WITH_FEEDBACK.format(mark="%s", newest=""),
                                              (walked, cutoff, checkpoint_seq, cutoff, limit))]
            if swept is not None and fed:  # feedback of decisions the sweep has not reached stays, as they do
                unswept = {r[0] for r in conn.execute(
                    "SELECT decision_id FROM decisions WHERE position >= %s AND decision_id = ANY(%s)", (below, fed))}
                fed = [i for i in fed if i not in unswept]
            deleted = conn.execute("DELETE FROM feedback WHERE decision_id = ANY(%s)", (fed,)).rowcount if fed else 0
            ids = fed + [r[0] for r in conn.execute(
                "SELECT decision_id FROM decisions d WHERE created_at < %s AND position < %s AND NOT EXISTS "
                "(SELECT 1 FROM feedback f WHERE f.decision_id = d.decision_id) ORDER BY position LIMIT %s",
                (cutoff, below, limit - len(fed)),
            ).fetchall()]
            if ids:
                conn.execute("DELETE FROM shadow_pmfs WHERE decision_id = ANY(%s)", (ids,))
                conn.execute("DELETE FROM calls WHERE decision_id = ANY(%s)", (ids,))
                conn.execute("DELETE FROM chains WHERE decision_id = ANY(%s)", (ids,))
                conn.execute("DELETE FROM judge_calls WHERE decision_id = ANY(%s)", (ids,))
                deleted += conn.execute("DELETE FROM decisions WHERE decision_id = ANY(%s)", (ids,)).rowcount
            named = parted_tokens(conn.execute(PARTED).fetchall())
            pruned = conn.execute(OTHER_CONFIGURATIONS_OLD.format(mark="%s"), (fingerprint, cutoff)).rowcount
            gone = named - parted_tokens(conn.execute(PARTED).fetchall()) if pruned else set()
            if gone:  # their parts, in this transaction (`SQLiteStore.delete_old`)
                conn.execute("DELETE FROM checkpoint_parts WHERE token = ANY(%s)", (sorted(gone),))
            deleted += pruned
        return int(deleted)

    def stats(self) -> StoreStats:
        """`Reader.stats()` in one read transaction (PostgreSQL's readers do not hold back a write-ahead log)."""
        with self.read() as reader:
            return reader.stats()

    def maintain(self) -> None:
        """Nothing to do: PostgreSQL vacuums and checkpoints itself."""

    def probe(self) -> None:
        """`SELECT 1` on a connection of its own (so the pool's reconnection back-off does not delay it), opened
        again after a failure: `StoreError` while the server cannot be reached (the engine's readiness follows
        it; route and feedback answer 503 meanwhile). Called from one thread (the engine's maintenance)."""
        try:
            if self._probe is None or self._probe.closed or self._probe.broken:
                self._probe = self._connect()
            self._probe.execute("SELECT 1")
            self.down = False
            since = self.lock_waiting_since
            if since is not None and time.monotonic() - since >= LOCK_LOOKUP_S:
                holder = self._probe.execute(_LOCK_HOLDER, (LOG_LOCK >> 32, LOG_LOCK & 0xFFFFFFFF)).fetchone()
                if holder is not None:
                    pid, name, host, state, seconds = holder
                    self._holder = (since, f"PostgreSQL session {pid} ({name or 'no application name'}"
                                           f"{f' at {host}' if host else ''}, {state} for {float(seconds or 0):.0f} s)")
        except psycopg.Error as exc:
            self.down = True
            self._close_probe()
            raise self._error(exc, "cannot reach the database: ") from None
        except StoreError:
            self._close_probe()
            raise

    def lock_holder(self) -> str | None:
        """Who holds the log's lock that the writer waits for now (found by `probe` once it has waited
        `LOCK_LOOKUP_S`), else None: not waiting for it, not looked up yet, or the database does not answer."""
        holder, since = self._holder, self.lock_waiting_since
        return holder[1] if holder is not None and since is not None and holder[0] == since else None

    def _close_probe(self) -> None:
        if self._probe is not None:
            with contextlib.suppress(psycopg.Error):
                self._probe.close()
            self._probe = None

    def listen(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from a thread of this store's) whenever another process commits to the log, and once
        after every (re)connection of the listener, for what may have been missed meanwhile."""
        self._listener = threading.Thread(target=self._listen, args=(callback,), name="bandit-router-listen",
                                          daemon=True)
        self._listener.start()

    def _listen(self, callback: Callable[[], None]) -> None:
        while not self._closing.is_set():
            try:
                with psycopg.Connection.connect(self.url.reveal(), **self._connect_options) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    callback()
                    pending = False
                    while not self._closing.is_set():
                        for note in conn.notifies(timeout=NOTIFY_QUIET_S):
                            pending = pending or note.pid != self._writer_pid
                        # While this process's writer keeps reading the head under the lock, it catches up there
                        # anyway: a follow per notification would only add work under load.
                        if pending and time.monotonic() - self._head_read_at >= NOTIFY_QUIET_S:
                            pending = False
                            callback()
            except psycopg.Error as exc:
                log.debug("log listener: %s", redact_urls(str(exc), self._secret))
                self._closing.wait(0.5)

    def close(self) -> None:
        self._closing.set()
        if self._listener is not None:
            self._listener.join(2.0)
            self._listener = None
        with self._write_lock:
            self._drop_writer()
        self._close_probe()
        if self._pool_open:
            with contextlib.suppress(Exception):
                self._pool.close(timeout=2.0)
            self._pool_open = False


SERVER_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION"
"""The database server's Unix time: what a checkpoint part's `created_at` and the cutoff that deletes abandoned
parts (`ABANDONED_AFTER_S`) are both read on, so that a replica whose clock is ahead by more than that does not delete
another replica's save under way (its row then refused: "checkpoint parts missing", the save given up), nor one
behind keep abandoned parts that much longer."""


class _PostgresTx(_SQLiteTx):
    """`WriteTx` (and `Reader`) on one PostgreSQL connection inside one transaction. The row decoders and the
    decision row builder are SQLite's (`_SQLiteTx`); every query is rewritten for PostgreSQL here."""

    conn: Any

    def __init__(self, conn: psycopg.Connection[Any], models_json: dict[tuple[str, ...], str],
                 tables: set[str] | None = None) -> None:
        self.conn = conn
        self._models_json = models_json
        self._tables = set() if tables is None else tables
        self.logged = False
        self.read_head = False
        """This transaction wrote to the log (feedback, a model event): its commit notifies the followers."""

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()  # type: ignore[no-any-return]

    def has_table(self, name: str) -> bool:
        """Whether table `name` exists: False in a database no service with this version prepared yet (which
        `export` and `evaluate` may read). Asked once per process when it does (tables are never dropped)."""
        if name not in self._tables:
            row = self._one("SELECT to_regclass(%s) IS NOT NULL", (name,))
            if row is None or not row[0]:
                return False
            self._tables.add(name)
        return True

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        return self.conn.execute(sql, params).fetchone()  # type: ignore[no-any-return]

    # -- writes -----------------------------------------------------------------------------------------------
    def insert_decisions(self, items: Sequence[tuple[Decision, str | None, str | None]]) -> list[bool]:
        fresh: list[bool] = []
        rows: list[tuple[Any, ...]] = []
        seen: set[str] = set()
        for decision, prompt, tenant in items:
            first = decision.decision_id not in seen
            seen.add(decision.decision_id)
            fresh.append(first)
            if first:
                rows.append(self._decision_row(decision, prompt, tenant))
        written: set[str] = set()
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            sql = (_INSERT_DECISIONS + ",".join([_DECISION_PLACEHOLDERS] * len(chunk))
                   + " ON CONFLICT (decision_id) DO NOTHING RETURNING decision_id")
            values = [v for row in chunk for v in row]
            written.update(r[0] for r in self._rows(sql, values))
        stored = [ok and d.decision_id in written for ok, (d, _, _) in zip(fresh, items, strict=True)]
        self._add_to_rollup(rollup.decision_increments(d for ok, (d, _, _) in zip(stored, items, strict=True) if ok))
        return stored

    def _add_to_rollup(self, increments: Sequence[rollup.MinuteStats]) -> None:
        """Add to the per-minute rollup (`store/rollup.py`), in this transaction."""
        self._upsert(rollup.UPSERT, rollup.ROW_PLACEHOLDERS_POSTGRES, rollup.upsert_rows(increments))

    def add_router_counts(self, increments: Sequence[router_stats.RouterCounts]) -> None:
        self._upsert(router_stats.UPSERT, router_stats.ROW_PLACEHOLDERS_POSTGRES, router_stats.upsert_rows(increments))

    def _upsert(self, template: str, placeholders: str, rows: Sequence[Sequence[Any]]) -> None:
        """`template` (an upsert with `{values}`) for `rows`, `_CHUNK` rows per statement."""
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            sql = template.format(values=",".join([placeholders] * len(chunk)))
            self.conn.execute(sql, [v for row in chunk for v in row])

    def insert_feedback(
        self, records: Sequence[FeedbackRecord], decided: Mapping[str, tuple[float, float]] | None = None
    ) -> None:
        self.logged = self.logged or bool(records)
        for start in range(0, len(records), _CHUNK):
            chunk = records[start : start + _CHUNK]
            values: list[Any] = [max(r.seq for r in chunk)]
            for r in chunk:
                values += (r.seq, r.decision_id, r.received_at, r.quality, r.cost_usd, r.input_tokens,
                           r.output_tokens, r.latency_s, r.source, str(r.status), int(r.learn), r.reward,
                           r.realised_cost_usd, r.model, r.tenant)
            self.conn.execute(_INSERT_FEEDBACK + ",".join([_FEEDBACK_PLACEHOLDERS] * len(chunk)), values)
        known = {} if decided is None else decided
        unknown = [r.decision_id for r in records if rollup.counts_as_learned(r) and r.decision_id not in known]
        if unknown:  # the decisions the caller did not pass (all of them, without `decided`): one query
            known = {**known, **{
                row[0]: (float(row[1]), float(row[2]))
                for row in self._rows("SELECT decision_id, created_at, probability FROM decisions "
                                      "WHERE decision_id = ANY(%s)", (unknown,))
            }}
        self._add_to_rollup(rollup.feedback_increments(records, known))

    def insert_model_event(self, action: str, name: str, spec: ModelSpec | None) -> ModelEvent:
        self.logged = True
        after_seq = self.head()[0]
        now = time.time()
        row = self._one(
            "INSERT INTO model_events (after_seq, created_at, action, name, spec) VALUES (%s, %s, %s, %s, %s) "
            "RETURNING id",
            (after_seq, now, str(action), name, None if spec is None else json.dumps(spec.to_json())),
        )
        assert row is not None
        return ModelEvent(int(row[0]), after_seq, action, name, spec, now)

    def insert_checkpoint_part(self, token: str, n: int, data: bytes) -> None:
        self.conn.execute("INSERT INTO checkpoint_parts (token, n, created_at, data) VALUES (%s, %s, " + SERVER_NOW
                          + ", %s)", (token, n, data))  # the server's clock, as the cutoff below: replicas' differ

    def insert_checkpoint(
        self, *, fingerprint: str, seq: int, event_id: int, version: int, sha256: str, state: bytes, keep: int,
        parts: tuple[str, int] | None = None,
    ) -> bool:
        if parts is not None:
            found = self._one(PARTS_FOUND.format(mark="%s"), parts[:1])
            if found is None or int(found[0]) != parts[1]:
                raise StoreError(f"checkpoint parts missing: {found[0] if found else 0} of {parts[1]} stored "
                                 "(deleted as abandoned?)")
            state = parts_marker(*parts)
        before = parted_tokens(self._rows(PARTED))
        inserted = self._rows(
            "INSERT INTO checkpoints (created_at, fingerprint, seq, event_id, version, sha256, state) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
            (time.time(), fingerprint, seq, event_id, version, sha256, state),
        )
        self.conn.execute(
            "DELETE FROM checkpoints WHERE fingerprint = %s AND id NOT IN (SELECT id FROM checkpoints "
            "WHERE fingerprint = %s ORDER BY seq DESC, event_id DESC, id DESC LIMIT %s)",
            (fingerprint, fingerprint, keep),
        )
        self.conn.execute(OTHER_CONFIGURATIONS_KEPT.format(mark="%s"), (fingerprint, keep))
        named = parted_tokens(self._rows(PARTED))
        old = {r[0] for r in self._rows(PARTS_OLDER.format(mark=SERVER_NOW + " - %s"), (ABANDONED_AFTER_S,))}
        gone = (before | old) - named
        if parts is not None and parts[0] not in named:
            gone.add(parts[0])  # another process stored this position first, or a newer `keep` pruned it at once
        if gone:
            self.conn.execute("DELETE FROM checkpoint_parts WHERE token = ANY(%s)", (sorted(gone),))
        return len(inserted) == 1

    def delete_checkpoint_parts(self, token: str) -> None:
        if token not in parted_tokens(self._rows(PARTED)):  # see `WriteTx.delete_checkpoint_parts`
            self.conn.execute("DELETE FROM checkpoint_parts WHERE token = %s", (token,))

    def decisions_closing(self, after: int, until: float, limit: int) -> tuple[list[DecisionInfo], int]:
        rows = self._rows(
            "SELECT position, decision_id, model, created_at, input_tokens, cost_weight, tenant, EXISTS "
            "(SELECT 1 FROM feedback f WHERE f.decision_id = d.decision_id AND f.learn = 1) "
            "FROM decisions d WHERE position > %s ORDER BY position LIMIT %s",
            (after, limit),
        )
        out: list[DecisionInfo] = []
        position = after
        for row in rows:
            if row[3] > until:
                break
            position = int(row[0])
            if not row[7]:
                out.append(replace(_info(row[1:7]), position=position))
        return out, position

    def last_decision_position(self) -> int:
        row = self._one("SELECT COALESCE(MAX(position), 0) FROM decisions")
        return int(row[0]) if row else 0

    def last_judge_call_position(self) -> int:
        row = self._one("SELECT COALESCE(MAX(position), 0) FROM judge_calls")
        return int(row[0]) if row else 0

    def insert_judge_calls(self, records: Sequence[JudgeCall]) -> None:
        for start in range(0, len(records), _CHUNK):
            chunk = records[start : start + _CHUNK]
            marks = ",".join(["(" + ", ".join(["%s"] * len(JUDGE_CALL_COLUMNS)) + ")"] * len(chunk))
            self.conn.execute(
                f"INSERT INTO judge_calls ({', '.join(JUDGE_CALL_COLUMNS)}) VALUES {marks}",
                judge_call_values(chunk),
            )

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (key, value),
        )

    def _insert_pairs(self, into: str, rows: Sequence[tuple[str, str]], on_conflict: str) -> None:
        """`INSERT INTO {into} VALUES (%s, %s), … {on_conflict}`, `_CHUNK` rows per statement."""
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            self.conn.execute(
                f"INSERT INTO {into} VALUES " + ",".join(["(%s, %s)"] * len(chunk)) + f" {on_conflict}",
                [v for row in chunk for v in row],
            )

    def insert_shadow_pmfs(self, rows: Sequence[tuple[str, str]]) -> None:
        self._insert_pairs("shadow_pmfs (decision_id, pmfs)", rows, "ON CONFLICT DO NOTHING")

    def insert_calls(self, records: Sequence[CallRecord]) -> None:
        fallbacks = list(dict.fromkeys(r.decision_id for r in records if rollup.is_fallback(r)))
        decided: dict[str, tuple[float, str, float, bool]] = {}
        if fallbacks:  # the rollup's routed figures lose each fallback's decision, once (see `rollup`)
            known = {row[0] for row in self._rows("SELECT decision_id FROM calls WHERE decision_id = ANY(%s)",
                                                  (fallbacks,))}
            fresh = [d for d in fallbacks if d not in known]
            decided = rollup.routed_decisions(
                self._rows(rollup.FALLBACK_DECISIONS_SQL + " WHERE decision_id = ANY(%s)", (fresh,))
            )
        columns = ", ".join(CALL_COLUMNS)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in CALL_COLUMNS[1:])
        for start in range(0, len(records), _CHUNK):
            chunk = records[start : start + _CHUNK]
            marks = ",".join(["(" + ", ".join(["%s"] * len(CALL_COLUMNS)) + ")"] * len(chunk))
            self.conn.execute(
                f"INSERT INTO calls ({columns}) VALUES {marks} ON CONFLICT (decision_id) DO UPDATE SET {updates}",
                [_call_value(getattr(r, c)) for r in chunk for c in CALL_COLUMNS],
            )
        chains = [(r.decision_id, r.chain) for r in records if r.chain is not None]
        self._insert_pairs("chains (decision_id, chain)", chains,
                           "ON CONFLICT (decision_id) DO UPDATE SET chain = EXCLUDED.chain")
        self._add_to_rollup(rollup.fallback_increments(records, decided))

    # -- reads ------------------------------------------------------------------------------------------------
    def calls_for_many(self, decision_ids: Sequence[str]) -> dict[str, CallRecord]:
        if not decision_ids:
            return {}
        select = CALLS_WITH_CHAINS if self.has_table("chains") else CALLS_WITHOUT_CHAINS
        rows = self._rows(select + " WHERE c.decision_id = ANY(%s)", (list(decision_ids),))
        return {row[0]: _call_from_row(row) for row in rows}

    def decisions_for_feedback(self, decision_ids: Sequence[str]) -> FeedbackContext:
        """The three queries, as before (one round trip each)."""
        context = FeedbackContext({}, self.feedback_for_many(decision_ids), self.calls_for_many(decision_ids))
        rows = self._rows(f"SELECT {_DECISIONS} FROM decisions WHERE decision_id = ANY(%s)", (list(decision_ids),))
        for row in rows:
            try:
                context.decisions[row[_DI["decision_id"]]] = _stored_from_row(row)
            except UnreadableDecision as exc:
                context.unreadable[row[_DI["decision_id"]]] = str(exc)
        return context

    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = %s", (key,))
        return None if row is None else str(row[0])

    def decision_info(self, decision_id: str) -> DecisionInfo | None:
        row = self._one(
            "SELECT decision_id, model, created_at, input_tokens, cost_weight, tenant FROM decisions "
            "WHERE decision_id = %s",
            (decision_id,),
        )
        return None if row is None else _info(row)

    def decision(self, decision_id: str) -> StoredDecision | None:
        row = self._one(f"SELECT {_DECISIONS} FROM decisions WHERE decision_id = %s", (decision_id,))
        return None if row is None else _stored_from_row(row)

    def decisions(self, decision_ids: Sequence[str]) -> dict[str, StoredDecision]:
        rows = self._rows(f"SELECT {_DECISIONS} FROM decisions WHERE decision_id = ANY(%s)", (list(decision_ids),))
        return {row[_DI["decision_id"]]: _stored_from_row(row) for row in rows}

    def feedback_for_many(self, decision_ids: Sequence[str]) -> dict[str, list[FeedbackRecord]]:
        out: dict[str, list[FeedbackRecord]] = {}
        rows = self._rows(
            f"SELECT {_FEEDBACK} FROM feedback WHERE decision_id = ANY(%s) ORDER BY seq", (list(decision_ids),)
        )
        for row in rows:
            out.setdefault(row[_FI["decision_id"]], []).append(_feedback_from_row(row))
        return out

    def feedback_for(self, decision_id: str) -> list[FeedbackRecord]:
        rows = self._rows(f"SELECT {_FEEDBACK} FROM feedback WHERE decision_id = %s ORDER BY seq", (decision_id,))
        return [_feedback_from_row(row) for row in rows]

    def learned_after(self, seq: int, limit: int) -> list[tuple[FeedbackRecord, Decision | None]]:
        rows = self._rows(
            f"SELECT {_JOINED} FROM feedback f JOIN decisions d ON d.decision_id = f.decision_id "
            "WHERE f.seq > %s AND f.learn = 1 ORDER BY f.seq LIMIT %s",
            (seq, limit),
        )
        return learned_from_rows(rows)

    def chains_after(self, seq: int, until: int, limit: int) -> list[ChainFeedback]:
        if not self.has_table("chains"):
            return []
        return _chains_from_rows(self._rows(CHAINS_SQL.format(mark="%s"), (seq, until, limit)))

    def shadow_pmfs_for_many(self, decision_ids: Sequence[str]) -> dict[str, dict[str, list[float]]]:
        rows = self._rows("SELECT decision_id, pmfs FROM shadow_pmfs WHERE decision_id = ANY(%s)",
                          (list(decision_ids),))
        return {row[0]: json.loads(row[1]) for row in rows}

    def judge_calls_after(self, position: int, limit: int) -> list[tuple[int, JudgeCall]]:
        rows = self._rows(JUDGE_CALLS_AFTER.format(mark="%s"), (position, limit))
        return [(int(row[0]), JudgeCall(*row[1:])) for row in rows]

    def judge_totals(self) -> JudgeTotals:
        if not self.has_table("judge_calls"):
            return JudgeTotals()  # a database no service with this version prepared yet
        return judge_totals(self._rows(JUDGE_TOTALS)[0])

    def decisions_after(self, position: int, limit: int) -> list[tuple[int, StoredDecision | None]]:
        rows = self._rows(
            f"SELECT {_DECISIONS}, position FROM decisions WHERE position > %s ORDER BY position LIMIT %s",
            (position, limit),
        )
        return [(int(row[-1]), stored_or_none(row)) for row in rows]

    def recent_decisions(self, limit: int) -> list[tuple[int, StoredDecision]]:
        rows = self._rows(f"SELECT {_DECISIONS}, position FROM decisions ORDER BY position DESC LIMIT %s", (limit,))
        return [(int(row[-1]), stored) for row in rows if (stored := stored_or_none(row)) is not None]

    def minute_stats(self, first: int, end: int, step: int) -> list[rollup.MinuteStats]:
        if step < 1:
            raise ValueError("step must be at least one minute")
        rows = self._rows(rollup.SELECT_POSTGRES, rollup.select_parameters(first, end, step)[:5])
        return [rollup.from_row(row) for row in rows]

    def router_counts(self) -> list[router_stats.RouterCounts]:
        return [router_stats.from_row(row) for row in self._rows(router_stats.SELECT)]

    def model_events_after(self, event_id: int) -> list[ModelEvent]:
        rows = self._rows(
            "SELECT id, after_seq, action, name, spec, created_at FROM model_events WHERE id > %s ORDER BY id",
            (event_id,),
        )
        return [model_event_from_row(*r) for r in rows]

    def head(self) -> tuple[int, int]:
        self.read_head = True
        row = self._one("SELECT (SELECT seq FROM log_head), (SELECT COALESCE(MAX(id), 0) FROM model_events)")
        assert row is not None
        return int(row[0] or 0), int(row[1])

    def checkpoints(self, fingerprint: str) -> list[Checkpoint]:
        rows = self._rows(
            "SELECT id, fingerprint, seq, event_id, version, sha256, created_at FROM checkpoints "
            "WHERE fingerprint = %s ORDER BY seq DESC, event_id DESC, id DESC",
            (fingerprint,),
        )
        return [Checkpoint(int(r[0]), r[1], int(r[2]), int(r[3]), int(r[4]), r[5], float(r[6])) for r in rows]

    def checkpoint_count(self) -> int:
        row = self._one("SELECT COUNT(*) FROM checkpoints")
        assert row is not None
        return int(row[0])

    def checkpoint_state(self, checkpoint_id: int) -> bytes:
        row = self._one("SELECT state FROM checkpoints WHERE id = %s", (checkpoint_id,))
        if row is None:
            return b""
        parts = parts_named(bytes(row[0]))
        if parts is None:
            return bytes(row[0])
        return b"".join(bytes(r[0]) for r in self._rows(PARTS_OF.format(mark="%s"), parts[:1]))

    def stats(self) -> StoreStats:
        stats = StoreStats()
        for model, n in self._rows("SELECT model, COUNT(*) FROM decisions GROUP BY model"):
            stats.models[model] = ModelStats(decisions=int(n))
        for model, n, quality, reward, spend in self._rows(
            "SELECT model, COUNT(*), AVG(quality), AVG(reward), SUM(realised_cost_usd) FROM feedback "
            "WHERE " + rollup.LEARNED_SQL + " GROUP BY model"
        ):
            entry = stats.models.setdefault(model, ModelStats())
            entry.feedback, entry.mean_quality, entry.mean_reward, entry.spend_usd = int(n), quality, reward, spend
        for status, n in self._rows("SELECT status, COUNT(*) FROM feedback GROUP BY status"):
            stats.feedback_by_status[status] = int(n)
        return stats


def _info(row: Sequence[Any]) -> DecisionInfo:
    """(decision_id, model, created_at, input_tokens, cost_weight, tenant) → `DecisionInfo`."""
    return DecisionInfo(decision_id=row[0], model=row[1], created_at=float(row[2]), input_tokens=int(row[3]),
                        cost_weight=float(row[4]), tenant=row[5])
