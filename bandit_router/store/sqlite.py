"""`SQLiteStore`: the embedded `Store`, on one SQLite file in WAL mode.

Tables (schema: `store/migrations.py`; hot-path statements on the raw `sqlite3` connection):

    decisions     one row per routed request: chosen model, probability, the pmf over the allowed models and
                  their expected costs (JSON), policy and version, λ, tenant (`context["tenant"]`), the context's
                  scalars and caller attributes (JSON), its hashed features (BLOB, `encode_features`), and the
                  prompt only when `store_prompts = true`
    feedback      `seq` INTEGER PRIMARY KEY AUTOINCREMENT (increasing in commit order, never reused), the
                  reported outcome, its status, its reward, and `learn` (1: the policy learns this row). A unique
                  partial index allows at most one `learn = 1` row per decision
    model_events  models added or retired at run time (and promotions), each placed after feedback `after_seq`
    checkpoints   the learned state after feedback `seq` and model event `event_id`, with its sha256
    shadow_pmfs   the shadow policies' pmfs per decision
    calls         the gateway's record of a decision's upstream call(s)
    chains        a named router's chain per decision (JSON, beside its call record)
    minute_stats  the per-minute rollup (`store/rollup.py`)
    router_stats  named routers' counts per (router, day, answering model) (`store/router_stats.py`)
    meta          schema version and the reward-window sweep position

Rows are read by column name (`sqlite3.Row`); every `sqlite3.Error` leaves this module as a `StoreError`.

Why one module of ~550 lines: it is one implementation of `store.interface`, one short method per query with the
row decoders next to them; split, a query and the columns it reads would live apart.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import operator
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..catalog import ModelSpec
from ..dbguard import FileGuard, is_integrity_error, wal_bytes
from ..types import Context, Decision
from . import rollup, router_stats
from .codec import decode_features, encode_features, floats_json, safe_text, to_json
from .interface import Reader, WriteTx
from .location import missing_directory
from .migrations import MIGRATIONS, SCHEMA_VERSION
from .records import (
    CallRecord,
    ChainFeedback,
    Checkpoint,
    DecisionInfo,
    FeedbackContext,
    FeedbackRecord,
    FeedbackStatus,
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
from .writelock import WriteLock

log = logging.getLogger("bandit_router.store")

WAL_MAX_BYTES = 64 * 1024 * 1024
"""Default `wal_max_bytes`: the WAL is restarted before it grows past it (`SQLiteStore.bound_wal`)."""
RESTART_WAIT_MS = 200
"""How long a restarting checkpoint waits for readers before giving up until the next try."""
WAL_FRAME_HEADER = 24
"""Bytes of a WAL frame besides its page (SQLite's file format)."""

DECISION_COLUMNS = (
    "decision_id", "created_at", "model", "arm", "probability", "models", "pmf", "expected_cost_usd", "policy",
    "policy_version", "cost_weight", "tenant", "input_tokens", "n_chars", "turns", "markers", "attributes",
    "features", "prompt",
)  # fmt: skip
FEEDBACK_COLUMNS = (
    "seq", "decision_id", "received_at", "quality", "cost_usd", "input_tokens", "output_tokens", "latency_s",
    "source", "status", "learn", "reward", "realised_cost_usd", "model", "tenant",
)  # fmt: skip
_CHUNK = 200
"""Rows (or ids) per statement, at most: fewer when SQLite's variable limit needs it (`_SQLiteTx.per_statement`)."""
_MODEL_LISTS_MAX = 256
"""Distinct model lists whose JSON the writer keeps (`_SQLiteTx._decision_row`); past it the cache starts over (a
request's `models` may be any subset of the catalog in any order: one entry each, without a bound)."""
_DECISIONS = ", ".join(DECISION_COLUMNS)
_FEEDBACK = ", ".join(FEEDBACK_COLUMNS)
_INSERT_DECISIONS = f"INSERT OR IGNORE INTO decisions ({_DECISIONS}) VALUES "
_DECISION_PLACEHOLDERS = f"({', '.join('?' * len(DECISION_COLUMNS))})"
_INSERT_FEEDBACK = f"INSERT INTO feedback ({_FEEDBACK}) VALUES "
_FEEDBACK_PLACEHOLDERS = f"({', '.join('?' * len(FEEDBACK_COLUMNS))})"
_JOINED = ", ".join([*(f"f.{c}" for c in FEEDBACK_COLUMNS), *(f"d.{c}" for c in DECISION_COLUMNS)])
# The hot queries (every decision and feedback row the log replays) select exactly `DECISION_COLUMNS` /
# `FEEDBACK_COLUMNS` and are decoded by name through these positions: `sqlite3.Row` finds a name by a linear,
# case-insensitive scan, which made reading the log about 10% slower.
_DI = {name: i for i, name in enumerate(DECISION_COLUMNS)}
_FI = {name: i for i, name in enumerate(FEEDBACK_COLUMNS)}


class SQLiteStore:
    """`Store` on one SQLite file in WAL mode. `synchronous` is `normal`, `full` or `extra` (see the docs:
    service → durability)."""

    def __init__(self, path: str | Path, *, synchronous: str = "normal", busy_timeout_s: float = 10.0,
                 wal_max_bytes: int = WAL_MAX_BYTES) -> None:
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout_s = busy_timeout_s
        self.wal_max_bytes = wal_max_bytes
        """The WAL is restarted before it grows past this size (`bound_wal`); 0: never."""
        self.guard = FileGuard(self.path)
        self.fault: str | None = None
        """Why this store refuses to write (the file was deleted, replaced, or is corrupt); None when healthy."""
        self.on_fault: Callable[[str], None] | None = None
        """Told the fault once, when it is found (the service says it stops acknowledging writes); without a
        listener the fault is logged at debug level only: every call that meets it raises `StoreError` with it."""
        self.wal_restarts = 0
        self.restart_busy = False
        """The last restarting checkpoint found readers in the way (the writer tries again a second later)."""
        self._restart_due = False
        self._wal_in_use = 0
        """Bytes of the WAL in use (frames since its last restart) at the last passive checkpoint."""
        self._frames_at_restart = -1
        self._size_at_restart = -1
        """The WAL's frames and file size when the writer last restarted it: SQLite rewrites the WAL's header with
        the next transaction only, so until then a passive checkpoint still counts those frames, and the file
        keeps its size, though none of it is in use."""
        self._wal_state = threading.Lock()
        """`maintain` (the maintenance thread) measures the WAL, `bound_wal` (the writer) restarts it: each reads
        and changes the attributes above, and `wal_restarts`, under this lock."""
        self._writer: sqlite3.Connection | None = None
        self._maintenance: sqlite3.Connection | None = None
        self._local = threading.local()
        self._readers: list[tuple[threading.Thread, sqlite3.Connection]] = []
        """Each reading thread's connection, with its thread: closed once the thread has ended (`_reader_conn`)."""
        self._lock = threading.Lock()
        self._models_json: dict[tuple[str, ...], str] = {}
        self._tables: set[str] = set()
        """Tables this process has seen in the database (tables are never dropped: asked until seen)."""
        self._page_bytes = 4096
        self._turn = WriteLock(self.path, busy_timeout_s)
        """Writers of every process queue here, woken as the holder commits (`store/writelock.py`)."""

    # -- connections ------------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=512,
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA temp_store = MEMORY")
            # A restarted WAL that grew past the bound (a long reader) shrinks back; without a bound, one that SQLite
            # restarted itself (the passive checkpoints caught up) shrinks back to the default bound.
            conn.execute(f"PRAGMA journal_size_limit = {self.wal_max_bytes or WAL_MAX_BYTES}")
        except sqlite3.Error as exc:
            self._note(exc)  # a corrupt file met while opening a connection is the store's fault too
            raise StoreError(f"{self.path}: {exc}{_file_system_reason(self.path, exc)}") from exc
        if self.guard.identity is None:
            self.guard.arm()
        return conn

    # -- faults: a deleted, replaced or corrupt file (bandit_router.dbguard) ------------------------------------
    def _set_fault(self, problem: str) -> None:
        if self.fault is None:
            self.fault = problem
            if self.on_fault is not None:
                self.on_fault(problem)
            else:  # a command (`evaluate`, `serve` before it starts) says it once, from the StoreError
                log.debug("%s: this store refuses every write from now on", problem)

    def _note(self, exc: BaseException) -> None:
        """Turn an integrity error into the store's fault (logged once)."""
        if is_integrity_error(exc):
            self._set_fault(f"the database {self.path} is corrupt ({exc})")

    def check_file(self) -> str | None:
        """The store's fault, after looking whether its file is still the one it opened."""
        if self.fault is None:
            problem = self.guard.problem()
            if problem is not None:
                self._set_fault(problem)
        return self.fault

    def prepare(self) -> None:
        """Switch to WAL and run the migrations this database has not run yet (`store/migrations.py`)."""
        missing = missing_directory(self.path)
        if missing is not None:
            raise StoreError(missing)
        conn = self._connect()
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = wal")
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._migrate(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            reason = _file_system_reason(self.path, exc)
            raise StoreError(f"{self.path}: cannot prepare the database: {exc}{reason}") from exc
        finally:
            conn.close()

    def schema_version(self) -> int:
        """The schema version the database records (0: none: an empty file, another application's database).
        Read-only; creates nothing. A file that is not SQLite at all raises `StoreError` ("file is not a
        database")."""
        conn = self._reader_conn()
        try:
            tables = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('meta', 'decisions')"
            if conn.execute(tables).fetchone()[0] != 2:
                return 0  # empty, or another application's (a `meta` table alone is common)
            if not {"key", "value"} <= {column[1] for column in conn.execute("PRAGMA table_info(meta)")}:
                return 0  # another application's `meta` table
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.Error as exc:
            self._note(exc)
            raise StoreError(f"{self.path}: {exc}{_file_system_reason(self.path, exc)}") from exc
        value = None if row is None else str(row[0])
        return int(value) if value is not None and value.isdigit() else 0

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = 0
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone():
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}; this bandit-router knows {SCHEMA_VERSION}")
        if version == SCHEMA_VERSION:
            return
        for migration in MIGRATIONS:
            if migration.version > version:
                for statement in migration.for_dialect("sqlite"):  # not executescript: it would commit the transaction
                    conn.execute(statement)
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?), ('created_at', "
            "COALESCE((SELECT value FROM meta WHERE key = 'created_at'), ?))",
            (str(SCHEMA_VERSION), str(time.time())),
        )

    def _writer_conn(self) -> sqlite3.Connection:
        if self._writer is None:
            self._writer = self._connect()
            self._writer.execute("PRAGMA wal_autocheckpoint = 0")  # `maintain` does it, off the commit path
        return self._writer

    def _reader_conn(self) -> sqlite3.Connection:
        """This thread's read connection, opened on its first read. Reads come from worker threads that end and are
        replaced (anyio's pool ends a thread idle for 10 s): opening one closes the connections of threads that
        have ended, so a long-running service holds one per live reading thread, not one per thread it ever had."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._lock:
                ended = [old for thread, old in self._readers if not thread.is_alive()]
                self._readers = [(t, c) for t, c in self._readers if t.is_alive()]
                self._readers.append((threading.current_thread(), conn))
            for old in ended:  # its thread is gone: nothing else uses it
                with contextlib.suppress(sqlite3.Error):
                    old.close()
        return conn

    @contextmanager
    def write(self) -> Iterator[WriteTx]:
        """A write transaction. Refused while the store has a fault; a commit that went to a file no longer at
        `path` raises `StoreError` (the rows are not where the next start will look: not acknowledged). The file is
        looked at after the commit only (the check that decides; one `stat` per transaction, not two: each is a
        trip through the GIL for the writer thread): a transaction that starts on a file already gone writes to
        the file it had open all along, and fails there."""
        if self.fault is not None:
            raise StoreError(f"the database is unusable: {self.fault}")
        held = self._turn.acquire()
        try:
            try:
                conn = self._writer_conn()
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._note(exc)
                raise StoreError(f"cannot start a write transaction: {exc}") from exc
            try:
                yield _SQLiteTx(conn, self._models_json, self._tables)
            except BaseException as exc:
                self._note(exc)
                with contextlib.suppress(StoreError):
                    _rollback(conn)
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(str(exc)) from exc
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._note(exc)
                _rollback(conn)
                raise StoreError(f"commit failed: {exc}") from exc
        finally:
            if held:
                self._turn.release()
        if self.check_file() is not None:
            raise StoreError(f"the database is unusable: {self.fault}")

    def delete_old(self, cutoff: float, limit: int, *, fingerprint: str, swept: str | None = None) -> int:
        """`retention_days`: delete (in one transaction) at most `limit` decisions made before `cutoff` (Unix time)
        with all their feedback, when every row of it was received before `cutoff` and every kept checkpoint of the
        running configuration holds it (`HELD_BY_CHECKPOINTS`), oldest feedback first; then, up to `limit`
        decisions in all, the decisions made before `cutoff` that never had feedback. Their shadow pmfs, call
        records and chains go with them. A decision and its feedback go together (`_NO_FEEDBACK_KEPT`): a decision
        left without its learned feedback, or with only some of its rows, would learn a later feedback again. The
        newest decision stays, with its feedback: SQLite numbers a new row max(rowid) + 1, so deleting the newest
        would hand its rowid, and those of the rows before it, to the next decisions, behind the positions that
        reward windows (`swept_decisions`), other workers' budget booking and the dashboard have read up to (a
        service idle for `retention_days` would never close the windows of its next decisions). Returns how many
        rows were deleted. The checkpoints it prunes (`OTHER_CONFIGURATIONS_OLD`) take their parts with them, in
        this transaction: left for the next checkpoint stored, they stayed for good while none was (a service idle,
        or withholding checkpoints). Feedback seqs are never reused (`sqlite_sequence` keeps the largest). `swept`:
        the meta key of the position reward windows were closed up to (`swept_decisions`), when they are on: only
        decisions at or before it go (`swept_limit`), so that every decision learns its default reward first."""
        with self.write() as tx:
            conn = tx.conn  # type: ignore[attr-defined]
            checkpoint_seq = int(conn.execute(HELD_BY_CHECKPOINTS.format(mark="?"), (fingerprint,)).fetchone()[0])
            newest = conn.execute("SELECT rowid, decision_id FROM decisions ORDER BY rowid DESC LIMIT 1").fetchone()
            newest_rowid, newest_id = (int(newest[0]), str(newest[1])) if newest is not None else (0, "")
            below = min(newest_rowid, swept_limit(tx, swept))  # rowid < below: never the newest, never unswept
            below = min(below, first_at_or_after(conn, "decisions", "rowid", "created_at", cutoff, "?"))
            walked = min(checkpoint_seq, first_at_or_after(conn, "feedback", "seq", "received_at", cutoff, "?") - 1)
            fed = [r[0] for r in conn.execute(RETIRED_WITH_FEEDBACK.format(mark="?", newest="AND decision_id != ? "),
                                              (walked, cutoff, newest_id, checkpoint_seq, cutoff, limit))]
            never_fed = (
                "SELECT decision_id FROM decisions d WHERE created_at < ? AND rowid < ? AND NOT EXISTS "
                "(SELECT 1 FROM feedback f WHERE f.decision_id = d.decision_id) ORDER BY rowid LIMIT ?"
            )
            # all the ids in one statement on a current SQLite, as before; as many as the variable limit allows
            step = tx.per_statement(1, max(1, limit))  # type: ignore[attr-defined]
            if swept is not None:  # feedback of decisions the sweep has not reached stays, as they do
                unswept: set[str] = set()
                for start in range(0, len(fed), step):
                    ids = fed[start : start + step]
                    marks = ",".join("?" * len(ids))
                    late = f"SELECT decision_id FROM decisions WHERE rowid >= ? AND decision_id IN ({marks})"
                    unswept.update(r[0] for r in conn.execute(late, (below, *ids)))
                fed = [i for i in fed if i not in unswept]
            deleted = 0
            for start in range(0, len(fed), step):
                ids = fed[start : start + step]
                marks = ",".join("?" * len(ids))
                deleted += conn.execute(f"DELETE FROM feedback WHERE decision_id IN ({marks})", ids).rowcount
            room = limit - len(fed)
            every = fed + [r[0] for r in conn.execute(never_fed, (cutoff, below, room)).fetchall()]
            for start in range(0, len(every), step):
                ids = every[start : start + step]
                marks = ",".join("?" * len(ids))
                conn.execute(f"DELETE FROM shadow_pmfs WHERE decision_id IN ({marks})", ids)
                conn.execute(f"DELETE FROM calls WHERE decision_id IN ({marks})", ids)
                conn.execute(f"DELETE FROM chains WHERE decision_id IN ({marks})", ids)
                conn.execute(f"DELETE FROM judge_calls WHERE decision_id IN ({marks})", ids)
                deleted += conn.execute(f"DELETE FROM decisions WHERE decision_id IN ({marks})", ids).rowcount
            named = parted_tokens(conn.execute(PARTED).fetchall())
            pruned = conn.execute(OTHER_CONFIGURATIONS_OLD.format(mark="?"), (fingerprint, cutoff)).rowcount
            for token in sorted(named - parted_tokens(conn.execute(PARTED).fetchall()) if pruned else ()):
                conn.execute("DELETE FROM checkpoint_parts WHERE token = ?", (token,))  # in this transaction
            deleted += pruned
        return int(deleted)

    def bound_wal(self) -> bool:
        """Restart the WAL when it is due (`maintain` saw it would pass `wal_max_bytes` before its next look, or
        the file is already past it): `wal_checkpoint(RESTART)` on the writer's connection copies the frames the
        passive checkpoints have not yet copied into the database, waits for readers (at most `RESTART_WAIT_MS`)
        and makes the next transaction write the WAL from its start again. The file is reused, not truncated: a
        truncation frees the file's blocks while the writer waits (≈ 17 ms for 64 MiB on a cloud disk), and
        `journal_size_limit` = `wal_max_bytes` shrinks a file that grew past the bound anyway. Passive
        checkpoints alone never restart a WAL that writers keep appending to (measured: 694 MiB after 60 s at
        full load). True when it restarted."""
        if self.wal_max_bytes <= 0 or self.fault is not None:
            return False
        if not self._restart_due:
            size = wal_bytes(self.path)
            if size <= self.wal_max_bytes or size == self._size_at_restart:
                return False  # under the bound, or nothing written since the last restart (it shrinks at the next)
        conn = self._writer_conn()
        held = self._turn.acquire()  # it holds SQLite's write lock while it waits for readers
        try:  # a long reader (an evaluation, a backup) must not stall the writer: wait for it briefly, retry later
            conn.execute(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")
            busy, frames, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error as exc:
            self._note(exc)
            raise StoreError(f"WAL checkpoint failed: {exc}") from exc
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            if held:
                self._turn.release()
        with self._wal_state:
            if not busy:
                self._restart_due = False
                self._wal_in_use = 0
                self._frames_at_restart, self._size_at_restart = int(frames), wal_bytes(self.path)
                self.wal_restarts += 1
            self.restart_busy = bool(busy)
        return not busy

    @contextmanager
    def read(self) -> Iterator[Reader]:
        try:
            conn = self._reader_conn()
            conn.execute("BEGIN")
        except sqlite3.Error as exc:
            self._note(exc)
            raise StoreError(f"cannot read the database: {exc}") from exc
        try:
            yield _SQLiteTx(conn, self._models_json, self._tables)
        except sqlite3.Error as exc:
            self._note(exc)
            raise StoreError(str(exc) if self.fault is None else f"the database is unusable: {self.fault}") from exc
        finally:
            if conn.in_transaction:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    raise StoreError(str(exc)) from exc

    def stats(self) -> StoreStats:
        """`Reader.stats()` of the whole log, read in transactions of `STATS_PAGE` decisions each rather than one: a
        read holds the WAL back from being reset while it lasts, and one scan of a long log lasts seconds, so
        `GET /v1/stats` polled back to back kept the WAL growing past `wal_max_bytes` for as long as it was polled.
        A page counts its decisions (rowids in (lo, hi]) and the feedback of those decisions, in one transaction, so
        a decision that retention deletes between two pages goes with its feedback: no model shows more learned
        feedback than decisions. The counts are those of the rows stored when the call started, less what retention
        deleted from the pages not read yet."""
        with self.read() as reader:
            assert isinstance(reader, _SQLiteTx)
            first, last = reader.stats_ends()
        sums = _StatsSums()
        for start in range(first, last, STATS_PAGE):
            with self.read() as reader:
                assert isinstance(reader, _SQLiteTx)
                sums.add(reader, (start, min(start + STATS_PAGE, last)))
        return sums.stats()

    def maintain(self) -> None:
        """A PASSIVE WAL checkpoint on its own connection (called twice a second): it never blocks the writer or
        the readers, and it copies most of the WAL into the database so that `bound_wal`'s restart has little
        left to copy. The writer connection does not checkpoint itself (`wal_autocheckpoint = 0`), so that no
        commit, and so no reply, waits for the database file to be written and synced.

        With u the WAL's bytes in use now and g their growth since the last call, the restart is due when
        u + g > `wal_max_bytes`: at the current write rate the WAL would pass its bound before the next call. A look
        while another checkpoint runs (SQLite answers -1 frames) or across one of the writer's restarts measures
        nothing; after a restart u is 0 until a transaction writes the WAL again (SQLite still reports the old
        frames until then)."""
        if self.check_file() is not None:
            return
        with self._wal_state:
            restarts = self.wal_restarts
        try:
            if self._maintenance is None:
                self._maintenance = self._connect()
                self._page_bytes = int(self._maintenance.execute("PRAGMA page_size").fetchone()[0])
            _, frames, _ = self._maintenance.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            self._note(exc)
            raise StoreError(f"maintenance failed: {exc}") from exc
        frames = int(frames)
        with self._wal_state:
            if frames < 0 or self.wal_restarts != restarts:
                return  # another checkpoint held the WAL (nothing measured), or the writer restarted it meanwhile
            if frames == self._frames_at_restart:
                frames = 0  # nothing written since the writer restarted it: the next transaction starts it over
            else:
                self._frames_at_restart = -1
            in_use = frames * (self._page_bytes + WAL_FRAME_HEADER)
            growth = max(in_use - self._wal_in_use, 0)
            self._wal_in_use = in_use
            if 0 < self.wal_max_bytes < in_use + growth:
                self._restart_due = True

    def close(self) -> None:
        for conn in (self._writer, self._maintenance):
            if conn is not None:
                conn.close()
        self._writer = self._maintenance = None
        self._turn.close()
        with self._lock:
            for _, conn in self._readers:
                conn.close()
            self._readers.clear()
        self._local = threading.local()


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StoreError(f"rollback failed: {exc}") from exc


class _SQLiteTx:
    """`WriteTx` (and `Reader`) on one connection inside one transaction."""

    _markers_json: dict[frozenset[str], str] = {}  # noqa: RUF012  (a cache shared by every transaction)

    def __init__(self, conn: sqlite3.Connection, models_json: dict[tuple[str, ...], str],
                 tables: set[str] | None = None) -> None:
        self.conn = conn
        self._models_json = models_json
        self._tables = set() if tables is None else tables
        self._variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        """The most `?` one statement may bind: 32766 since SQLite 3.32, 999 before (a build may set another)."""

    def per_statement(self, width: int, most: int = _CHUNK) -> int:
        """Rows of `width` values each that one statement may bind: `most` (`_CHUNK`), or fewer under SQLite's
        variable limit (999 before 3.32: 52 decisions of 19 columns). Read from the connection, so an old SQLite
        works."""
        return max(1, min(most, self._variables // width))

    def _has_tables(self, *names: str) -> bool:
        """Whether every table of `names` exists: False in a database no service with this version prepared yet
        (which `export` and `evaluate` may read). The database is asked until it has them, then never again in
        this process (tables are never dropped; each question is a statement, and a trip through the GIL)."""
        missing = [name for name in names if name not in self._tables]
        if missing:
            marks = ",".join("?" * len(missing))
            found = {row[0] for row in self._execute(
                f"SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ({marks})", missing, plain=True)}
            self._tables.update(found)
            return len(found) == len(missing)
        return True

    def _in_chunks(self, sql: str, ids: Sequence[str], *, plain: bool = False) -> Iterator[Any]:
        """Rows of `sql` (with `{marks}` for the placeholders) for `ids`, deduplicated, `per_statement(1)` ids a query
        (`plain`: tuples, for the decoders below; else `sqlite3.Row`)."""
        unique = list(dict.fromkeys(ids))
        step = self.per_statement(1)
        for start in range(0, len(unique), step):
            chunk = unique[start : start + step]
            yield from self._execute(sql.format(marks=",".join("?" * len(chunk))), chunk, plain=plain)

    def _execute(self, sql: str, params: Sequence[Any], *, plain: bool = False) -> sqlite3.Cursor:
        cursor = self.conn.cursor()
        if plain:
            cursor.row_factory = None
        return cursor.execute(sql, params)

    # -- writes -----------------------------------------------------------------------------------------------
    def insert_decisions(self, items: Sequence[tuple[Decision, str | None, str | None]]) -> list[bool]:
        # One statement per chunk, not one per row: the sqlite3 module releases the GIL around every statement,
        # and while the event loop is busy every release costs the writer thread a wait to get it back.
        stored: list[bool] = []
        rows: list[tuple[Any, ...]] = []
        seen: set[str] = set()
        for decision, prompt, tenant in items:
            fresh = decision.decision_id not in seen
            seen.add(decision.decision_id)
            stored.append(fresh)
            if fresh:
                rows.append(self._decision_row(decision, prompt, tenant))
        before = self.conn.total_changes
        step = self.per_statement(len(DECISION_COLUMNS))
        for start in range(0, len(rows), step):
            chunk_rows = rows[start : start + step]
            sql = _INSERT_DECISIONS + ",".join([_DECISION_PLACEHOLDERS] * len(chunk_rows))
            self.conn.execute(sql, list(itertools.chain.from_iterable(chunk_rows)))
        if self.conn.total_changes - before != len(rows):
            # Some ids were taken before this batch (rare: callers choose ids): ours are those with our timestamps.
            created = {row[0]: row[1] for row in rows}
            mine = {
                row["decision_id"]
                for row in self._in_chunks(
                    "SELECT decision_id, created_at FROM decisions WHERE decision_id IN ({marks})", list(created)
                )
                if row["created_at"] == created[row["decision_id"]]
            }
            stored = [ok and d.decision_id in mine for ok, (d, _, _) in zip(stored, items, strict=True)]
        self._add_to_rollup(rollup.decision_increments(d for ok, (d, _, _) in zip(stored, items, strict=True) if ok))
        return stored

    def _add_to_rollup(self, increments: Sequence[rollup.MinuteStats]) -> None:
        """Add to the per-minute rollup (`store/rollup.py`), in this transaction."""
        self._upsert(rollup.UPSERT, rollup.ROW_PLACEHOLDERS, rollup.upsert_rows(increments))

    def add_router_counts(self, increments: Sequence[router_stats.RouterCounts]) -> None:
        self._upsert(router_stats.UPSERT, router_stats.ROW_PLACEHOLDERS, router_stats.upsert_rows(increments))

    def _upsert(self, template: str, placeholders: str, rows: Sequence[Sequence[Any]]) -> None:
        """`template` (an upsert with `{values}`) for `rows`, `per_statement` rows per statement."""
        step = self.per_statement(placeholders.count("?"))
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            sql = template.format(values=",".join([placeholders] * len(chunk)))
            self.conn.execute(sql, list(itertools.chain.from_iterable(chunk)))

    def _decision_row(self, decision: Decision, prompt: str | None, tenant: str | None) -> tuple[Any, ...]:
        """The values of `DECISION_COLUMNS`, in that order."""
        ctx = decision.context
        models = self._models_json.get(decision.models)
        if models is None:
            if len(self._models_json) >= _MODEL_LISTS_MAX:  # the lists are the callers' (`models`, any subset)
                self._models_json.clear()
            models = self._models_json.setdefault(decision.models, to_json(list(decision.models)))
        attributes = "{}" if not ctx.attributes else json.dumps(dict(ctx.attributes))
        markers = self._markers_json.get(ctx.markers)
        if markers is None:
            markers = self._markers_json.setdefault(ctx.markers, to_json(sorted(ctx.markers)))
        return (
            decision.decision_id,
            decision.created_at,
            decision.model,
            decision.arm,
            decision.probability,
            models,
            floats_json(decision.pmf),
            floats_json(decision.expected_cost_usd),
            decision.policy,
            decision.policy_version,
            decision.cost_weight,
            None if tenant is None else safe_text(tenant),
            ctx.input_tokens,
            ctx.n_chars,
            ctx.turns,
            markers,
            attributes,
            encode_features(ctx.features),
            None if prompt is None else safe_text(prompt),
        )

    def insert_feedback(
        self, records: Sequence[FeedbackRecord], decided: Mapping[str, tuple[float, float]] | None = None
    ) -> None:
        step = self.per_statement(len(FEEDBACK_COLUMNS))
        for start in range(0, len(records), step):
            chunk = records[start : start + step]
            values = [
                value
                for r in chunk
                for value in (
                    r.seq,
                    r.decision_id,
                    r.received_at,
                    r.quality,
                    r.cost_usd,
                    r.input_tokens,
                    r.output_tokens,
                    r.latency_s,
                    r.source,
                    str(r.status),
                    int(r.learn),
                    r.reward,
                    r.realised_cost_usd,
                    r.model,
                    r.tenant,
                )
            ]
            self.conn.execute(_INSERT_FEEDBACK + ",".join([_FEEDBACK_PLACEHOLDERS] * len(chunk)), values)
        known = {} if decided is None else decided
        unknown = [r.decision_id for r in records if rollup.counts_as_learned(r) and r.decision_id not in known]
        if unknown:  # the decisions the caller did not pass (all of them, without `decided`): one query
            known = {**known, **{
                row[0]: (float(row[1]), float(row[2]))
                for row in self._in_chunks(
                    "SELECT decision_id, created_at, probability FROM decisions WHERE decision_id IN ({marks})",
                    unknown, plain=True,
                )
            }}
        self._add_to_rollup(rollup.feedback_increments(records, known))

    def insert_model_event(self, action: str, name: str, spec: ModelSpec | None) -> ModelEvent:
        after_seq = self.head()[0]
        now = time.time()
        cursor = self.conn.execute(
            "INSERT INTO model_events (after_seq, created_at, action, name, spec) VALUES (?, ?, ?, ?, ?)",
            (after_seq, now, str(action), name, None if spec is None else to_json(spec.to_json())),
        )
        assert cursor.lastrowid is not None
        return ModelEvent(int(cursor.lastrowid), after_seq, action, name, spec, now)

    def insert_checkpoint_part(self, token: str, n: int, data: bytes) -> None:
        self.conn.execute("INSERT INTO checkpoint_parts (token, n, created_at, data) VALUES (?, ?, ?, ?)",
                          (token, n, time.time(), data))

    def insert_checkpoint(
        self, *, fingerprint: str, seq: int, event_id: int, version: int, sha256: str, state: bytes, keep: int,
        parts: tuple[str, int] | None = None,
    ) -> bool:
        conn = self.conn
        if parts is not None:
            found = int(conn.execute(PARTS_FOUND.format(mark="?"), parts[:1]).fetchone()[0])
            if found != parts[1]:
                raise StoreError(f"checkpoint parts missing: {found} of {parts[1]} stored (deleted as abandoned?)")
            state = parts_marker(*parts)
        before = parted_tokens(conn.execute(PARTED).fetchall())
        cursor = conn.execute(
            "INSERT OR IGNORE INTO checkpoints (created_at, fingerprint, seq, event_id, version, sha256, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time(), fingerprint, seq, event_id, version, sha256, state),
        )
        conn.execute(
            "DELETE FROM checkpoints WHERE fingerprint = ? AND id NOT IN "
            "(SELECT id FROM checkpoints WHERE fingerprint = ? ORDER BY seq DESC, event_id DESC, id DESC LIMIT ?)",
            (fingerprint, fingerprint, keep),
        )
        conn.execute(OTHER_CONFIGURATIONS_KEPT.format(mark="?"), (fingerprint, keep))
        named = parted_tokens(conn.execute(PARTED).fetchall())
        old = {r[0] for r in conn.execute(PARTS_OLDER.format(mark="?"), (time.time() - ABANDONED_AFTER_S,))}
        gone = (before | old) - named
        if parts is not None and parts[0] not in named:
            gone.add(parts[0])  # another process stored this position first, or a newer `keep` pruned it at once
        for token in sorted(gone):
            conn.execute("DELETE FROM checkpoint_parts WHERE token = ?", (token,))
        return cursor.rowcount == 1

    def delete_checkpoint_parts(self, token: str) -> None:
        if token not in parted_tokens(self.conn.execute(PARTED).fetchall()):  # see `WriteTx.delete_checkpoint_parts`
            self.conn.execute("DELETE FROM checkpoint_parts WHERE token = ?", (token,))

    def decisions_closing(self, after: int, until: float, limit: int) -> tuple[list[DecisionInfo], int]:
        # By rowid (insertion order), not by an index on created_at: one index fewer on the hot insert path.
        rows = self.conn.execute(
            "SELECT rowid AS position, decision_id, model, created_at, input_tokens, cost_weight, tenant, EXISTS "
            "(SELECT 1 FROM feedback f WHERE f.decision_id = d.decision_id AND f.learn = 1) AS learned "
            "FROM decisions d WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (after, limit),
        ).fetchall()
        out: list[DecisionInfo] = []
        position = after
        for row in rows:
            if row["created_at"] > until:
                break
            position = int(row["position"])
            if not row["learned"]:
                out.append(replace(_info_from_row(row), position=position))
        return out, position

    def last_decision_position(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM decisions").fetchone()[0])

    def last_judge_call_position(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(position), 0) FROM judge_calls").fetchone()[0])

    def insert_judge_calls(self, records: Sequence[JudgeCall]) -> None:
        step = self.per_statement(len(JUDGE_CALL_COLUMNS))
        for start in range(0, len(records), step):
            chunk = records[start : start + step]
            marks = ",".join([f"({','.join('?' * len(JUDGE_CALL_COLUMNS))})"] * len(chunk))
            self.conn.execute(
                f"INSERT INTO judge_calls ({', '.join(JUDGE_CALL_COLUMNS)}) VALUES {marks}",
                judge_call_values(chunk),
            )

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def insert_shadow_pmfs(self, rows: Sequence[tuple[str, str]]) -> None:
        step = self.per_statement(2)
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            self.conn.execute(
                "INSERT OR IGNORE INTO shadow_pmfs (decision_id, pmfs) VALUES " + ",".join(["(?, ?)"] * len(chunk)),
                list(itertools.chain.from_iterable(chunk)),
            )

    def insert_calls(self, records: Sequence[CallRecord]) -> None:
        fallbacks = [r.decision_id for r in records if rollup.is_fallback(r)]
        known = {row[0] for row in self._in_chunks(
            "SELECT decision_id FROM calls WHERE decision_id IN ({marks})", fallbacks, plain=True)}
        decided = rollup.routed_decisions(self._in_chunks(
            rollup.FALLBACK_DECISIONS_SQL + " WHERE decision_id IN ({marks})", [d for d in fallbacks if d not in known],
            plain=True,
        ))  # fmt: skip
        step = self.per_statement(len(CALL_COLUMNS))
        for start in range(0, len(records), step):
            chunk = records[start : start + step]
            marks = ",".join([f"({','.join('?' * len(CALL_COLUMNS))})"] * len(chunk))
            self.conn.execute(
                f"INSERT OR REPLACE INTO calls ({', '.join(CALL_COLUMNS)}) VALUES {marks}",
                [_call_value(getattr(r, c)) for r in chunk for c in CALL_COLUMNS],
            )
        chains = [(r.decision_id, r.chain) for r in records if r.chain is not None]
        step = self.per_statement(2)
        for start in range(0, len(chains), step):
            pairs = chains[start : start + step]
            self.conn.execute(
                "INSERT OR REPLACE INTO chains (decision_id, chain) VALUES " + ",".join(["(?, ?)"] * len(pairs)),
                list(itertools.chain.from_iterable(pairs)),
            )
        self._add_to_rollup(rollup.fallback_increments(records, decided))

    # -- reads ------------------------------------------------------------------------------------------------
    def calls_for_many(self, decision_ids: Sequence[str]) -> dict[str, CallRecord]:
        if not decision_ids or not self._has_tables("calls"):
            return {}  # none asked, or a database no service with this version prepared yet
        select = CALLS_WITH_CHAINS if self._has_tables("chains") else CALLS_WITHOUT_CHAINS
        return {row[0]: _call_from_row(row)
                for row in self._in_chunks(select + " WHERE c.decision_id IN ({marks})", decision_ids, plain=True)}

    def decisions_for_feedback(self, decision_ids: Sequence[str]) -> FeedbackContext:
        """`decisions`, `feedback_for_many` and `calls_for_many` of `decision_ids` in one statement per `per_statement`
        ids (`FOR_FEEDBACK_SQL`): each statement is a trip through the GIL for the writer thread, as is each
        column of each row (the union adds none to a decision's row)."""
        context = FeedbackContext({}, {}, {})
        if not decision_ids:
            return context
        calls = self._has_tables("calls")
        sql = FOR_FEEDBACK_SQL[calls, calls and self._has_tables("chains")]
        arms = 3 if calls else 2
        unique = list(dict.fromkeys(decision_ids))
        step = self.per_statement(arms)
        for start in range(0, len(unique), step):
            chunk = unique[start : start + step]
            for row in self._execute(sql.format(marks=",".join("?" * len(chunk))), chunk * arms, plain=True):
                first = row[0]
                if first is None:
                    call = _call_from_row(row[1 : len(CALL_COLUMNS) + 2])
                    context.calls[call.decision_id] = call
                elif isinstance(first, str):
                    try:
                        context.decisions[first] = _stored_from_row(row)
                    except UnreadableDecision as exc:
                        context.unreadable[first] = str(exc)
                else:
                    record = _feedback_from_row(row)
                    context.feedback.setdefault(record.decision_id, []).append(record)
        for records in context.feedback.values():
            if len(records) > 1:
                records.sort(key=_SEQ)  # in seq order, as `feedback_for_many` returns them
        return context

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def decision_info(self, decision_id: str) -> DecisionInfo | None:
        row = self.conn.execute(
            "SELECT decision_id, model, created_at, input_tokens, cost_weight, tenant FROM decisions "
            "WHERE decision_id = ?",
            (decision_id,),
        ).fetchone()
        return None if row is None else _info_from_row(row)

    def decision(self, decision_id: str) -> StoredDecision | None:
        sql = f"SELECT {_DECISIONS} FROM decisions WHERE decision_id = ?"
        row = self._execute(sql, (decision_id,), plain=True).fetchone()
        return None if row is None else _stored_from_row(row)

    def decisions(self, decision_ids: Sequence[str]) -> dict[str, StoredDecision]:
        sql = f"SELECT {_DECISIONS} FROM decisions WHERE decision_id IN ({{marks}})"
        rows = self._in_chunks(sql, decision_ids, plain=True)
        return {row[_DI["decision_id"]]: _stored_from_row(row) for row in rows}

    def feedback_for_many(self, decision_ids: Sequence[str]) -> dict[str, list[FeedbackRecord]]:
        out: dict[str, list[FeedbackRecord]] = {}
        sql = f"SELECT {_FEEDBACK} FROM feedback WHERE decision_id IN ({{marks}}) ORDER BY seq"
        for row in self._in_chunks(sql, decision_ids, plain=True):
            out.setdefault(row[_FI["decision_id"]], []).append(_feedback_from_row(row))
        return out

    def feedback_for(self, decision_id: str) -> list[FeedbackRecord]:
        sql = f"SELECT {_FEEDBACK} FROM feedback WHERE decision_id = ? ORDER BY seq"
        return [_feedback_from_row(row) for row in self._execute(sql, (decision_id,), plain=True)]

    def learned_after(self, seq: int, limit: int) -> list[tuple[FeedbackRecord, Decision | None]]:
        rows = self._execute(
            f"SELECT {_JOINED} FROM feedback f JOIN decisions d ON d.decision_id = f.decision_id "
            "WHERE f.seq > ? AND f.learn = 1 ORDER BY f.seq LIMIT ?",
            (seq, limit),
            plain=True,
        ).fetchall()
        return learned_from_rows(rows)

    def chains_after(self, seq: int, until: int, limit: int) -> list[ChainFeedback]:
        if self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'chains'").fetchone() is None:
            return []  # a database no service with this version prepared yet: no chain stored
        rows = self._execute(CHAINS_SQL.format(mark="?"), (seq, until, limit), plain=True).fetchall()
        return _chains_from_rows(rows)

    def shadow_pmfs_for_many(self, decision_ids: Sequence[str]) -> dict[str, dict[str, list[float]]]:
        if self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'shadow_pmfs'").fetchone() is None:
            return {}  # a database no service with this version prepared yet
        sql = "SELECT decision_id, pmfs FROM shadow_pmfs WHERE decision_id IN ({marks})"
        return {row["decision_id"]: json.loads(row["pmfs"]) for row in self._in_chunks(sql, decision_ids)}

    def judge_calls_after(self, position: int, limit: int) -> list[tuple[int, JudgeCall]]:
        if self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'judge_calls'").fetchone() is None:
            return []  # a database no service with this version prepared yet
        rows = self._execute(JUDGE_CALLS_AFTER.format(mark="?"), (position, limit), plain=True).fetchall()
        return [(int(row[0]), JudgeCall(*row[1:])) for row in rows]

    def judge_totals(self) -> JudgeTotals:
        if self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'judge_calls'").fetchone() is None:
            return JudgeTotals()  # a database no service with this version prepared yet
        return judge_totals(self.conn.execute(JUDGE_TOTALS).fetchone())

    def decisions_after(self, position: int, limit: int) -> list[tuple[int, StoredDecision | None]]:
        rows = self._execute(
            f"SELECT {_DECISIONS}, rowid FROM decisions WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (position, limit),
            plain=True,
        ).fetchall()
        return [(int(row[-1]), stored_or_none(row)) for row in rows]

    def recent_decisions(self, limit: int) -> list[tuple[int, StoredDecision]]:
        rows = self._execute(
            f"SELECT {_DECISIONS}, rowid FROM decisions ORDER BY rowid DESC LIMIT ?", (limit,), plain=True
        ).fetchall()
        return [(int(row[-1]), stored) for row in rows if (stored := stored_or_none(row)) is not None]

    def minute_stats(self, first: int, end: int, step: int) -> list[rollup.MinuteStats]:
        if step < 1:
            raise ValueError("step must be at least one minute")
        rows = self._execute(rollup.SELECT, rollup.select_parameters(first, end, step), plain=True).fetchall()
        return [rollup.MinuteStats(*row) for row in rows]

    def router_counts(self) -> list[router_stats.RouterCounts]:
        rows = self._execute(router_stats.SELECT, (), plain=True).fetchall()
        return [router_stats.from_row(row) for row in rows]

    def model_events_after(self, event_id: int) -> list[ModelEvent]:
        rows = self.conn.execute(
            "SELECT id, after_seq, action, name, spec, created_at FROM model_events WHERE id > ? ORDER BY id",
            (event_id,),
        ).fetchall()
        return [model_event_from_row(*r) for r in rows]

    def head(self) -> tuple[int, int]:
        # sqlite_sequence holds the largest seq ever used, even if rows at the end were deleted.
        row = self.conn.execute(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'feedback'), 0) AS seq, "
            "(SELECT COALESCE(MAX(id), 0) FROM model_events) AS event_id"
        ).fetchone()
        return int(row["seq"]), int(row["event_id"])

    def checkpoints(self, fingerprint: str) -> list[Checkpoint]:
        rows = self.conn.execute(
            "SELECT id, fingerprint, seq, event_id, version, sha256, created_at FROM checkpoints "
            "WHERE fingerprint = ? ORDER BY seq DESC, event_id DESC, id DESC",
            (fingerprint,),
        ).fetchall()
        return [Checkpoint(**{key: row[key] for key in row.keys()}) for row in rows]  # noqa: SIM118

    def checkpoint_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0])

    def checkpoint_state(self, checkpoint_id: int) -> bytes:
        row = self.conn.execute("SELECT state FROM checkpoints WHERE id = ?", (checkpoint_id,)).fetchone()
        if row is None:
            return b""
        parts = parts_named(bytes(row["state"]))
        if parts is None:
            return bytes(row["state"])
        return b"".join(bytes(r[0]) for r in self.conn.execute(PARTS_OF.format(mark="?"), parts[:1]))

    def stats(self) -> StoreStats:
        """Per model: decisions, learned feedbacks, mean quality and reward, spend (of learned feedback); and
        feedback rows per status (in this transaction; `SQLiteStore.stats` reads a long log in pages)."""
        sums = _StatsSums()
        sums.add(self, None)
        return sums.stats()

    def stats_ends(self) -> tuple[int, int]:
        """The rowids of `decisions` as a range (first, last]: the smallest less one and the largest (0, 0 when
        empty), where `SQLiteStore.stats` starts and stops (retention deletes the oldest, so the rowids of a long
        kept log start far from 0)."""
        row = self._execute("SELECT (SELECT COALESCE(MIN(rowid) - 1, 0) FROM decisions), "
                            "(SELECT COALESCE(MAX(rowid), 0) FROM decisions)", (), plain=True).fetchone()
        return int(row[0]), int(row[1])


STATS_PAGE = 20_000
"""Rowids of `decisions` (with their feedback) that one read transaction of `SQLiteStore.stats` counts: a page short
enough that the writer's WAL restart, which waits at most `RESTART_WAIT_MS` for the readers to finish, finds a moment
between two pages (with pages five times longer, two clients polling `/v1/stats` still kept the WAL from a reset)."""
_RANGE = " AND {column} > ? AND {column} <= ?"


class _StatsSums:
    """`Reader.stats`' counts and sums, added up over pages of rows (one page: every row); the means at the end."""

    def __init__(self) -> None:
        self.decisions: dict[str, int] = {}
        self.learned: dict[str, list[float]] = {}  # n, Σquality, n(quality), Σreward, n(reward), Σspend, n(spend)
        self.by_status: dict[str, int] = {}

    def add(self, tx: _SQLiteTx, decisions: tuple[int, int] | None) -> None:
        """Count the decisions of rowids in (lo, hi] and the feedback of those decisions (None: every row)."""
        where = _RANGE.format(column="rowid") if decisions else ""
        for model, n in tx._execute(f"SELECT model, COUNT(*) FROM decisions WHERE 1 = 1{where} GROUP BY model",
                                    decisions or (), plain=True):
            self.decisions[model] = self.decisions.get(model, 0) + int(n)
        rows = ("FROM decisions d JOIN feedback f ON f.decision_id = d.decision_id WHERE d.rowid > ? AND d.rowid <= ?"
                if decisions else "FROM feedback f")  # a page's feedback: that of its decisions, in its transaction
        for model, status, learned, n, *values in tx._execute(
            f"SELECT f.model, status, {rollup.LEARNED_SQL}, COUNT(*), SUM(quality), COUNT(quality), SUM(reward), "
            f"COUNT(reward), SUM(realised_cost_usd), COUNT(realised_cost_usd) {rows} GROUP BY f.model, status, learn",
            decisions or (), plain=True,
        ):
            self.by_status[status] = self.by_status.get(status, 0) + int(n)
            if learned:
                total = self.learned.setdefault(model, [0.0] * 7)
                for i, value in enumerate((n, *values)):
                    total[i] += value or 0

    def stats(self) -> StoreStats:
        stats = StoreStats()
        for model in sorted(self.decisions):
            stats.models[model] = ModelStats(decisions=self.decisions[model])
        for model in sorted(self.learned):
            n, quality, n_quality, reward, n_reward, spend, n_spend = self.learned[model]
            entry = stats.models.setdefault(model, ModelStats())
            entry.feedback = int(n)
            entry.mean_quality = quality / n_quality if n_quality else None
            entry.mean_reward = reward / n_reward if n_reward else None
            entry.spend_usd = spend if n_spend else None  # type: ignore[assignment]  # SUM of no value: NULL
        stats.feedback_by_status = {status: self.by_status[status] for status in sorted(self.by_status)}
        return stats


_NEWER = (
    "SELECT {what} FROM checkpoints k WHERE k.fingerprint = checkpoints.fingerprint AND (k.seq > checkpoints.seq OR "
    "(k.seq = checkpoints.seq AND (k.event_id > checkpoints.event_id OR (k.event_id = checkpoints.event_id AND "
    "k.id > checkpoints.id))))"
)
"""The checkpoints of the same configuration newer than the row being deleted (the order `checkpoints` lists)."""
OTHER_CONFIGURATIONS_KEPT = (
    "DELETE FROM checkpoints WHERE fingerprint <> {mark} AND (" + _NEWER.format(what="COUNT(*)") + ") >= {mark}"
)
"""With a checkpoint stored, every other configuration (another policy, its settings, the catalog, the shadows:
`log.checkpoints.fingerprint`) is pruned to its newest `keep` too, as the running one is: a configuration no longer
running kept them all for good. Not fewer: replicas of two configurations side by side (a canary, a rolling change)
store checkpoints in turn, and each one's checkpoints are what its starts fall back on and what bounds its own
retention (`HELD_BY_CHECKPOINTS`)."""
PARTED = "SELECT state FROM checkpoints WHERE length(state) < 100"
"""The `state` of every checkpoint that may be written in parts (`parted_tokens` reads their tokens)."""
PARTS_FOUND = "SELECT COUNT(*) FROM checkpoint_parts WHERE token = {mark}"
PARTS_OF = "SELECT data FROM checkpoint_parts WHERE token = {mark} ORDER BY n"
"""A checkpoint's state, written in parts: their bytes in order."""
PARTS_OLDER = "SELECT DISTINCT token FROM checkpoint_parts WHERE created_at < {mark}"
"""Parts written before the cutoff (`time.time() - ABANDONED_AFTER_S`): those no checkpoint names are deleted with
the next checkpoint stored. They are a save that died (`kill -9`, the database gone) before its `checkpoints` row,
or a checkpoint deleted by hand (retention deletes a checkpoint's parts with it). Younger ones may be another
process's save under way (its row comes last), so they wait. (PostgreSQL reads both times on the server's clock:
`postgres.SERVER_NOW`.)"""
ABANDONED_AFTER_S = 600.0
OTHER_CONFIGURATIONS_OLD = (
    "DELETE FROM checkpoints WHERE fingerprint <> {mark} AND EXISTS (" + _NEWER.format(what="1") + ") AND NOT EXISTS "
    "(SELECT 1 FROM checkpoints n WHERE n.fingerprint = checkpoints.fingerprint AND n.created_at >= {mark})"
)
"""Retention (parameters: the running fingerprint, the cutoff): another configuration that stored no checkpoint
since the cutoff is pruned to its newest; its newest is never deleted (a configuration still running but quiet
restores it; one no longer running, a rollback to it), so each configuration ever run keeps one state at most."""

HELD_BY_CHECKPOINTS = "SELECT COALESCE(MIN(seq), 0) FROM checkpoints WHERE fingerprint = {mark}"
"""The feedback seq up to which retention may delete: what the oldest kept checkpoint of the running configuration
(`fingerprint`) holds. Not another configuration's (a policy or catalog changed since: the running one relearned
the log, and until its own checkpoint holds a row a restart replays that row), and not only the newest one's: a
start that finds the newest failing its checksum, or not loading, restores an older one and replays the log after
it, which must still be there."""

_NO_FEEDBACK_KEPT = (
    "NOT EXISTS (SELECT 1 FROM feedback g WHERE g.decision_id = f.decision_id AND (g.seq > {mark} "
    "OR g.received_at >= {mark}))"
)
"""Retention deletes feedback row f only when every feedback of its decision goes too (held by the checkpoint,
received before the cutoff): the rules that read a decision's earlier feedback (learned once: `judge`; a learned
cascade's chain learned at its first `unrouted` one: `CHAINS_SQL`) must still see it beside a later one, or a
third feedback, or a replay from the checkpoint, would learn the decision again."""

RETIRED_WITH_FEEDBACK = (
    "SELECT DISTINCT decision_id FROM (SELECT decision_id FROM feedback f WHERE seq <= {mark} AND received_at < {mark} "
    "{newest}AND " + _NO_FEEDBACK_KEPT + " ORDER BY seq LIMIT {mark}) AS oldest"
)
"""The decisions whose feedback retention deletes next: those of the oldest `limit` feedback rows it may delete (a
walk of the seq index that stops there, not an aggregate of every old row); all their rows go (`_NO_FEEDBACK_KEPT`:
one row of a decision may go only when every row of it may)."""
CALL_COLUMNS = (
    "decision_id", "request_id", "attempt", "model", "routed", "stream", "status", "http_status", "input_tokens",
    "output_tokens", "usage", "cost_usd", "ttft_s", "latency_s", "error", "created_at",
)  # fmt: skip
CALLS_WITH_CHAINS = (
    f"SELECT {', '.join('c.' + c for c in CALL_COLUMNS)}, h.chain FROM calls c "
    "LEFT JOIN chains h ON h.decision_id = c.decision_id"
)
"""A call record with its chain (the `chains` table: one JSON document per named router's decision, beside its
call record as `shadow_pmfs` is beside its decision: a chain is read whole, by the decision view and the
escalation learners, and its steps' shape belongs to `bandit_router.cascade`, not to the schema)."""
JUDGE_CALL_COLUMNS = ("decision_id", "tenant", "model", "input_tokens", "output_tokens", "cost_usd", "created_at")
"""The columns of `judge_calls` besides its storage position, in `JudgeCall`'s order."""


def judge_call_values(records: Sequence[JudgeCall]) -> list[Any]:
    """The values of `JUDGE_CALL_COLUMNS` of each record, in order; the tenant (the scored decision's, as the request
    gave it) as every store can hold it, as in `decisions` (`safe_text`): a lone surrogate or NUL in it failed the
    write transaction, and every operation of its batch."""
    values: list[Any] = []
    for r in records:
        values += [safe_text(v) if c == "tenant" and v is not None else v
                   for c in JUDGE_CALL_COLUMNS for v in (getattr(r, c),)]
    return values


JUDGE_CALLS_AFTER = (
    f"SELECT position, {', '.join(JUDGE_CALL_COLUMNS)} FROM judge_calls WHERE position > {{mark}} "
    "ORDER BY position LIMIT {mark}"
)
"""`Reader.judge_calls_after` for both dialects (`mark`: the driver's placeholder)."""
JUDGE_TOTALS = (
    "SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cost_usd), 0) "
    "FROM judge_calls"
)
"""`Reader.judge_totals` for both dialects."""


def first_at_or_after(conn: Any, table: str, key: str, column: str, cutoff: float, mark: str) -> int:
    """Where retention's walks of `table` in `key` order stop: the smallest x such that the first row with key ≥ x
    has `column` ≥ `cutoff` (or there is none), by binary search (≈ log2(rows) lookups of the key's index), so that
    a walk of the rows made before `cutoff` does not go on through every younger row (0.16–0.5 s at 0.3–1.5 M
    rows, under the write lock, at every look when nothing is old). `column` (a time) grows with `key` (the
    storage order) up to clock steps; a row out of that order past x is deleted by a later walk, and a walk
    bounded by x never deletes more than the whole walk would: the bound only shortens it."""
    first = conn.execute(f"SELECT MIN({key}) FROM {table}").fetchone()[0]  # one each: MIN and MAX together scan
    if first is None:
        return 0
    lo, hi = int(first), int(conn.execute(f"SELECT MAX({key}) FROM {table}").fetchone()[0]) + 1
    step = f"SELECT {column} FROM {table} WHERE {key} >= {mark} ORDER BY {key} LIMIT 1"
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute(step, (mid,)).fetchone()
        if row is None or float(row[0]) >= cutoff:
            hi = mid
        else:
            lo = mid + 1
    return lo


UNLIMITED = 2**62
"""`swept_limit` without reward windows: no storage position reaches it."""


def swept_limit(tx: Any, swept: str | None) -> int:
    """The storage position retention stops below: past the reward windows' sweep mark (meta key `swept`, a
    position closed up to) when windows are on (0 while it is unset: nothing goes), else `UNLIMITED`."""
    if swept is None:
        return UNLIMITED
    mark = tx.get_meta(swept)
    return int(mark) + 1 if mark is not None else 0


def judge_totals(row: Sequence[Any]) -> JudgeTotals:
    """`JUDGE_TOTALS`' row (PostgreSQL sums integers as `numeric`)."""
    return JudgeTotals(int(row[0]), int(row[1]), int(row[2]), float(row[3]))
CALLS_WITHOUT_CHAINS = f"SELECT {', '.join(CALL_COLUMNS)}, NULL FROM calls c"
"""`CALLS_WITH_CHAINS` on a database that has no `chains` table yet (schema 5: not yet migrated)."""
_PAD = len(DECISION_COLUMNS)
FOR_FEEDBACK_SQL = {
    (calls, chains): " UNION ALL ".join([
        f"SELECT {_DECISIONS} FROM decisions WHERE decision_id IN ({{marks}})",
        f"SELECT {_FEEDBACK}{', NULL' * (_PAD - len(FEEDBACK_COLUMNS))} FROM feedback WHERE decision_id IN ({{marks}})",
        *([f"SELECT NULL, {', '.join('c.' + c for c in CALL_COLUMNS)}, {'h.chain' if chains else 'NULL'}"
           f"{', NULL' * (_PAD - len(CALL_COLUMNS) - 2)} FROM calls c"
           + (" LEFT JOIN chains h ON h.decision_id = c.decision_id" if chains else "")
           + " WHERE c.decision_id IN ({marks})"] if calls else []),
    ])
    for calls, chains in ((True, True), (True, False), (False, False))
}
"""`_SQLiteTx.decisions_for_feedback`, by whether the `calls` and `chains` tables exist: the decisions, their
feedback and their call records as the arms of one UNION ALL (`{marks}`: one chunk's placeholders, bound once per
arm), padded with NULLs to a decision row's columns and told apart by the first value: a decision's id (text), a
feedback's seq (an integer), NULL before a call record's columns and chain."""
CHAINS_SQL = (
    f"SELECT {_JOINED}, c.chain FROM feedback f JOIN decisions d ON d.decision_id = f.decision_id "
    "JOIN chains c ON c.decision_id = f.decision_id "
    "WHERE f.seq > {mark} AND f.seq <= {mark} AND f.status = 'unrouted' "
    "AND substr(d.policy, 1, 16) = 'learned-cascade:' "
    "AND NOT EXISTS (SELECT 1 FROM feedback e WHERE e.decision_id = f.decision_id AND e.status = 'unrouted' "
    "AND e.seq < f.seq) ORDER BY f.seq LIMIT {mark}"
)
"""`Reader.chains_after` for both dialects (`mark`: the driver's placeholder); one learned per decision: its
first `unrouted` feedback (the rule `log.escalations.learns_chain` applies in the writer)."""


def _chains_from_rows(rows: Sequence[Sequence[Any]]) -> list[ChainFeedback]:
    """`chains_after`'s rows decoded; a decision that does not decode is None, logged, as in `learned_from_rows`
    (the row stays, so that a reader's position moves past it)."""
    after = len(FEEDBACK_COLUMNS)
    out: list[ChainFeedback] = []
    for row in rows:
        record = _feedback_from_row(row)
        out.append(ChainFeedback(record, _decision_or_none(row, after, f"chain of feedback seq {record.seq}"),
                                 str(row[-1])))
    return out


def _call_value(value: Any) -> Any:
    """A `CallRecord` field as both stores write it: a bool as 0/1, a text as every store can hold it (`safe_text`):
    the `error` holds an upstream's own words (its mid-stream error event's message), where a lone surrogate failed
    SQLite's whole write batch (every request's writes in it) and a NUL PostgreSQL's. A chain needs nothing: it is
    ASCII JSON (`chain_document`), any such character escaped."""
    if isinstance(value, str):
        return safe_text(value)
    return int(value) if isinstance(value, bool) else value


def _call_from_row(row: Sequence[Any]) -> CallRecord:
    """A call record from `CALLS_WITH_CHAINS`'s row (its columns, then its chain)."""
    values = dict(zip((*CALL_COLUMNS, "chain"), row, strict=True))
    values["routed"], values["stream"] = bool(values["routed"]), bool(values["stream"])
    return CallRecord(**values)


_SEQ = operator.attrgetter("seq")


def _info_from_row(row: sqlite3.Row) -> DecisionInfo:
    return DecisionInfo(
        decision_id=row["decision_id"],
        model=row["model"],
        created_at=row["created_at"],
        input_tokens=row["input_tokens"],
        cost_weight=row["cost_weight"],
        tenant=row["tenant"],
    )


def _stored_from_row(row: Sequence[Any]) -> StoredDecision:
    """A stored decision from a row whose first values are `DECISION_COLUMNS`."""
    return StoredDecision(_decision_from_row(row), prompt=row[_DI["prompt"]], tenant=row[_DI["tenant"]])


_SAID_UNREADABLE: dict[str, None] = {}
_SAID_LOCK = threading.Lock()
"""Decisions `stored_or_none` has logged as unreadable (this process; the oldest forgotten past `_PARSED_MAX`)."""


def stored_or_none(row: Sequence[Any]) -> StoredDecision | None:
    """`_stored_from_row`, or None (logged once per decision) when its values do not decode: the readers of many
    decisions (`decisions_after`, `recent_decisions`) pass it by, where one such row made every read fail."""
    try:
        return _stored_from_row(row)
    except UnreadableDecision as exc:
        decision_id = str(row[0])
        with _SAID_LOCK:
            said = decision_id in _SAID_UNREADABLE
            if not said:
                if len(_SAID_UNREADABLE) >= _PARSED_MAX:
                    del _SAID_UNREADABLE[next(iter(_SAID_UNREADABLE))]
                _SAID_UNREADABLE[decision_id] = None
        if not said:
            log.error("%s; passed by (see `bandit-router check`)", exc)
        return None


def _decision_from_row(row: Sequence[Any], at: int = 0) -> Decision:
    """A `Decision` from the values of `DECISION_COLUMNS` starting at position `at` of `row`; `UnreadableDecision`
    when they do not decode. Every feedback reads its decision back through this, so the columns that repeat from
    row to row (the model list, the markers, the caller's context) are parsed once per distinct text (`_parsed`:
    immutable values, shared). Only the decoding of the stored values and the decision's own checks of them are
    `UnreadableDecision`: any other error is a bug, raised as it is."""
    (decision_id, created_at, model, arm, probability, models, pmf, expected_cost_usd, policy, policy_version,
     cost_weight, _tenant, input_tokens, n_chars, turns, markers, attributes, features) = row[at : at + _UNPACKED]
    try:  # the stored values: the features codec's errors, a number's or a JSON text's
        context = Context(
            features=decode_features(bytes(features)),
            input_tokens=int(input_tokens),
            n_chars=int(n_chars or 0),
            turns=int(turns or 1),
            markers=_parsed(_MARKERS, markers or "[]", frozenset),
            attributes=_parsed(_ATTRIBUTES, attributes or "{}", MappingProxyType),
        )
        numbers = (int(arm if arm is not None else -1), _parsed(_MODELS, models, tuple),
                   tuple(map(float, json.loads(pmf))), float(probability), int(policy_version), float(cost_weight),
                   tuple(map(float, json.loads(expected_cost_usd or "[]"))), float(created_at))
    except (StoreError, ValueError, TypeError) as exc:
        raise UnreadableDecision(f"decision {decision_id!r} cannot be read: {exc}") from exc
    arm, models, pmf, probability, policy_version, cost_weight, expected_cost_usd, created_at = numbers
    try:  # its own checks of them (ValueError: the chosen model among the models, the pmf as long)
        return Decision(decision_id=decision_id, model=model, arm=arm, models=models, pmf=pmf,
                        probability=probability, policy=policy, policy_version=policy_version,
                        cost_weight=cost_weight, context=context, expected_cost_usd=expected_cost_usd,
                        created_at=created_at)
    except ValueError as exc:
        raise UnreadableDecision(f"decision {decision_id!r} cannot be read: {exc}") from exc


def learned_from_rows(rows: Sequence[Sequence[Any]]) -> list[tuple[FeedbackRecord, Decision | None]]:
    """`learned_after`'s rows (the feedback's columns, then its decision's) decoded. A decision whose stored values
    do not decode (a value corrupted on disk, which SQLite's integrity check does not look at, or edited by hand)
    is None, logged with the reason: the log follower skips that feedback, as every process and every replay does,
    where the exception ended every replay, so that the service never became ready again."""
    after = len(FEEDBACK_COLUMNS)  # the decision's columns follow the feedback's
    out: list[tuple[FeedbackRecord, Decision | None]] = []
    for row in rows:
        record = _feedback_from_row(row)
        out.append((record, _decision_or_none(row, after, f"feedback seq {record.seq}")))
    return out


def _decision_or_none(row: Sequence[Any], after: int, what: str) -> Decision | None:
    """The decision in `row`'s columns from `after` on; None, logged as `what`'s, when its values do not decode."""
    try:
        return _decision_from_row(row, after)
    except UnreadableDecision as exc:
        log.error("%s: %s", what, exc)
        return None


_UNPACKED = 18
if DECISION_COLUMNS[:_UNPACKED] != (
    "decision_id", "created_at", "model", "arm", "probability", "models", "pmf", "expected_cost_usd", "policy",
    "policy_version", "cost_weight", "tenant", "input_tokens", "n_chars", "turns", "markers", "attributes", "features",
):  # fmt: skip
    raise ImportError("DECISION_COLUMNS changed: update the positional unpack in _decision_from_row")

_MODELS: dict[str, Any] = {}
_MARKERS: dict[str, Any] = {}
_ATTRIBUTES: dict[str, Any] = {}
_PARSED_MAX = 256
"""Distinct texts kept per column (`_parsed`); past it the cache starts over."""


def _parsed(cache: dict[str, Any], text: str, make: Callable[[Any], Any]) -> Any:
    """`make(json.loads(text))`, kept per distinct `text` (the values are immutable: a tuple, a frozenset, a
    read-only mapping of scalars)."""
    value = cache.get(text)
    if value is None:
        if len(cache) >= _PARSED_MAX:
            cache.clear()
        value = cache[text] = make(json.loads(text))
    return value


_STATUS = {s.value: s for s in FeedbackStatus}


def _feedback_from_row(row: Sequence[Any]) -> FeedbackRecord:
    """A `FeedbackRecord` from a row whose first values are `FEEDBACK_COLUMNS`."""
    values = dict(zip(FEEDBACK_COLUMNS, row, strict=False))
    values["status"] = _STATUS.get(values["status"], values["status"])
    values["learn"] = bool(values["learn"])
    return FeedbackRecord(**values)


FULL_BELOW_BYTES = 1 << 20
"""Free bytes under which an I/O error of SQLite is put down to a full file system (`_file_system_reason`)."""


def _file_system_reason(path: Path, exc: sqlite3.Error) -> str:
    """What the file system says when SQLite could not open or use `path`, where SQLite's own words do not say it:
    "unable to open database file" for a directory this user cannot write, where SQLite creates the database and its
    `-wal` and `-shm` files, or a file it cannot read and write; "attempt to write a readonly database"
    (`SQLITE_READONLY_DIRECTORY`) for a WAL database in such a directory, which cannot even be read without its
    `-shm` file; "disk I/O error" for a full file system (a WAL database cannot even be read there: SQLite must
    first size its `-shm` file, `SQLITE_IOERR_SHMSIZE`)."""
    folder = path.parent
    if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_IOERR"):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return ""
        if free < FULL_BELOW_BYTES:
            return (f": the file system holding {folder} is full ({free} bytes free), and SQLite needs room for the "
                    "database's -wal and -shm files even to read it; free some space and start again")
        return ""
    read_only_folder = getattr(exc, "sqlite_errorname", "") == "SQLITE_READONLY_DIRECTORY"  # WAL: even to read
    if "unable to open" not in str(exc) and not read_only_folder:
        return ""
    if read_only_folder or not os.access(folder, os.W_OK | os.X_OK):
        return (f": the directory {folder} is not writable by this process (uid {os.geteuid()}) or is on a read-only "
                "file system, and SQLite creates the database and its -wal and -shm files there")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return f": the file is not readable and writable by this process (uid {os.geteuid()})"
    return ""

