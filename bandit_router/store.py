"""The durable log of the service: decisions, feedback, model changes and checkpoints of the learned state.

Tables (SQLite in WAL mode; schema created through sqlite-utils, hot-path statements on its connection):

    decisions     one row per routed request: chosen model, probability, the pmf over the allowed models and
                  their expected costs (JSON), policy and version, λ, tenant (`context["tenant"]`), the context's
                  scalars and caller attributes (JSON), its hashed features (BLOB, `encode_features`), and the
                  prompt only when `store_prompts = true`
    feedback      `seq` INTEGER PRIMARY KEY AUTOINCREMENT (increasing in commit order, never reused), the
                  reported outcome, its status, its reward, and `learn` (1: the policy learns this row). A unique
                  partial index allows at most one `learn = 1` row per decision
    model_events  models added or retired at run time, each placed after feedback `after_seq`
    checkpoints   the learned state after feedback `seq` and model event `event_id`, with its sha256
    meta          schema version and the reward-window sweep position

The log, feedback rows with `learn = 1` in `seq` order interleaved with model events (an event goes after every
row with `seq <= after_seq`), is the source of truth: a checkpoint plus the log after it rebuilds the policy.

`Store` is the small interface the service uses; `SQLiteStore` is the embedded implementation. A server
database (PostgreSQL: `BIGSERIAL` for seq, `SELECT … FOR UPDATE` or an advisory lock for the writer) can
take its place by implementing the same methods.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import sqlite_utils

from .catalog import ModelSpec
from .dbguard import FileGuard, is_integrity_error, wal_bytes
from .errors import BanditRouterError
from .types import Context, Decision, Outcome

log = logging.getLogger("bandit_router.store")

SCHEMA_VERSION = 1
WAL_MAX_BYTES = 64 * 1024 * 1024
"""Default `wal_max_bytes`: past it the writer truncates the WAL (`SQLiteStore.bound_wal`)."""
TRUNCATE_WAIT_MS = 200
"""How long a truncating checkpoint waits for readers before giving up until the next try."""
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
"""SQLite's `journal_size_limit`: a WAL that was reset is truncated back to at most this size."""
_FEATURES_MAGIC = b"BRF1"
_SURROGATE = re.compile("[\ud800-\udfff]")


class StoreError(BanditRouterError):
    """The database cannot be used (locked for too long, full, corrupt, or of a newer schema)."""


# -- values ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DecisionInfo:
    """The columns of a decision that feedback handling needs (no features)."""

    decision_id: str
    model: str
    created_at: float
    input_tokens: int
    cost_weight: float
    tenant: str | None


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
            "status": self.status,
            "learned": self.learn,
            "reward": self.reward,
            "realised_cost_usd": self.realised_cost_usd,
        }


@dataclass(frozen=True, slots=True)
class ModelEvent:
    """A model added (`spec` set) or retired at run time, applied after feedback `after_seq`."""

    id: int
    after_seq: int
    action: str
    name: str
    spec: ModelSpec | None
    created_at: float


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


# -- features codec -----------------------------------------------------------------------------------------
def encode_features(features: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """Hashed features → bytes: `BRF1`, then per namespace: name length (u8), name (UTF-8), count n (u32 LE),
    n indices (u32 LE), n values (f32 LE)."""
    parts = [_FEATURES_MAGIC]
    for ns, (idx, val) in features.items():
        name = ns.encode("utf-8")
        parts.append(struct.pack("<B", len(name)) + name + struct.pack("<I", len(idx)))
        parts.append(np.asarray(idx, dtype="<u4").tobytes())
        parts.append(np.asarray(val, dtype="<f4").tobytes())
    return b"".join(parts)


def decode_features(blob: bytes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Inverse of `encode_features`."""
    if blob[:4] != _FEATURES_MAGIC:
        raise StoreError("unknown features encoding")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    pos = 4
    while pos < len(blob):
        (size,) = struct.unpack_from("<B", blob, pos)
        name = blob[pos + 1 : pos + 1 + size].decode("utf-8")
        pos += 1 + size
        (n,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        idx = np.frombuffer(blob, dtype="<u4", count=n, offset=pos).astype(np.uint32)
        pos += 4 * n
        val = np.frombuffer(blob, dtype="<f4", count=n, offset=pos).astype(np.float32)
        pos += 4 * n
        out[name] = (idx, val)
    return out


def safe_text(text: str) -> str:
    """`text` as SQLite can store it: lone surrogates (valid in JSON strings, not in UTF-8) become U+FFFD."""
    if text.isascii():
        return text
    return _SURROGATE.sub("\ufffd", text)


# -- interface --------------------------------------------------------------------------------------------------
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

    def learned_after(self, seq: int, limit: int) -> list[tuple[FeedbackRecord, Decision]]:
        """Feedback rows with learn = 1 and `seq` greater than `seq`, in seq order, with their decisions."""
        ...

    def shadow_pmfs_for_many(self, decision_ids: Sequence[str]) -> dict[str, dict[str, list[float]]]:
        """The shadow policies' pmfs logged with each of `decision_ids` (those that have any)."""
        ...

    def decisions_after(self, position: int, limit: int) -> list[tuple[int, StoredDecision]]:
        """Up to `limit` decisions stored after storage position `position`, in storage order, each with its
        position (pass the last one back to page on). For reading the whole log (evaluation, export)."""
        ...

    def model_events_after(self, event_id: int) -> list[ModelEvent]: ...

    def head(self) -> tuple[int, int]:
        """(largest feedback seq ever used, largest model event id), 0 when none."""
        ...

    def checkpoints(self, fingerprint: str) -> list[Checkpoint]:
        """Checkpoints taken under `fingerprint`, newest first."""
        ...

    def checkpoint_state(self, checkpoint_id: int) -> bytes: ...

    def stats(self) -> dict[str, Any]: ...

    def get_meta(self, key: str) -> str | None: ...


class WriteTx(Reader, Protocol):
    """Writes, inside one transaction that holds the database's single write lock."""

    def insert_decisions(self, items: Sequence[tuple[Decision, str | None, str | None]]) -> list[bool]:
        """Store (decision, prompt, tenant) items; False for an item whose id another decision already has (not
        written; within `items`, the first use of an id wins)."""
        ...

    def insert_feedback(self, records: Sequence[FeedbackRecord]) -> None:
        """Store `records`, numbered by the caller: `seq` = `head()[0]` + 1, + 2, … within this transaction."""
        ...

    def insert_model_event(self, action: str, name: str, spec: ModelSpec | None) -> ModelEvent: ...

    def insert_shadow_pmfs(self, rows: Sequence[tuple[str, str]]) -> None:
        """(decision_id, JSON object {shadow name: pmf}) rows, next to their decisions."""
        ...

    def insert_checkpoint(
        self, *, fingerprint: str, seq: int, event_id: int, version: int, sha256: str, state: bytes, keep: int
    ) -> bool:
        """Store a checkpoint (False when one for the same position exists) and keep the newest `keep`."""
        ...

    def decisions_closing(self, after: int, until: float, limit: int) -> tuple[list[DecisionInfo], int]:
        """Walk the decisions stored after position `after` in storage order, up to the first one created after
        `until` (at most `limit`): those without a learned feedback, and the position to continue from."""
        ...

    def last_decision_position(self) -> int:
        """The storage position of the newest decision (0 when none)."""
        ...

    def set_meta(self, key: str, value: str) -> None: ...


class Store(Protocol):
    """The service's storage. One writer per process (a thread) uses `write()`; any thread may `read()`."""

    def prepare(self) -> None:
        """Create or migrate the schema. Call once before worker processes start."""
        ...

    def write(self) -> AbstractContextManager[WriteTx]: ...

    def read(self) -> AbstractContextManager[Reader]: ...

    def maintain(self) -> None:
        """Housekeeping that must not run on the writer's commit path (SQLite: copy the WAL into the database)."""
        ...

    def close(self) -> None: ...


# -- SQLite -----------------------------------------------------------------------------------------------------
_DECISION_COLUMNS = (
    "decision_id, created_at, model, arm, probability, models, pmf, expected_cost_usd, policy, policy_version, "
    "cost_weight, tenant, input_tokens, n_chars, turns, markers, attributes, features, prompt"
)
_INSERT_DECISIONS = f"INSERT OR IGNORE INTO decisions ({_DECISION_COLUMNS}) VALUES "
_DECISION_PLACEHOLDERS = f"({', '.join('?' * 19)})"
_CHUNK = 200
_FEEDBACK_COLUMNS = (
    "seq, decision_id, received_at, quality, cost_usd, input_tokens, output_tokens, latency_s, source, status, "
    "learn, reward, realised_cost_usd, model, tenant"
)
_INSERT_FEEDBACK = f"INSERT INTO feedback ({_FEEDBACK_COLUMNS}) VALUES "
_FEEDBACK_PLACEHOLDERS = f"({', '.join('?' * 15)})"

_SHADOW_SQL = (
    "CREATE TABLE IF NOT EXISTS shadow_pmfs (decision_id TEXT PRIMARY KEY REFERENCES decisions(decision_id), "
    "pmfs TEXT NOT NULL)"
)
"""Shadow policies' pmfs per decision: a JSON object {shadow name: [p over the decision's models]}."""

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    decision_id TEXT NOT NULL REFERENCES decisions(decision_id),
    received_at REAL NOT NULL,
    quality REAL NOT NULL,
    cost_usd REAL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    latency_s REAL,
    source TEXT,
    status TEXT NOT NULL,
    learn INTEGER NOT NULL,
    reward REAL NOT NULL,
    realised_cost_usd REAL NOT NULL,
    model TEXT NOT NULL,
    tenant TEXT
);
CREATE INDEX IF NOT EXISTS feedback_decision ON feedback(decision_id);
CREATE UNIQUE INDEX IF NOT EXISTS feedback_learned_once ON feedback(decision_id) WHERE learn = 1;
CREATE TABLE IF NOT EXISTS model_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    after_seq INTEGER NOT NULL,
    created_at REAL NOT NULL,
    action TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT
);
"""


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _floats(values: Sequence[float]) -> str:
    """A JSON array of finite floats (`repr` is valid JSON for them), several times faster than `json.dumps`."""
    return "[" + ",".join(map(repr, values)) + "]"


class SQLiteStore:
    """`Store` on one SQLite file in WAL mode. `synchronous` is `normal`, `full` or `extra` (see the README)."""

    def __init__(self, path: str | Path, *, synchronous: str = "normal", busy_timeout_s: float = 10.0,
                 wal_max_bytes: int = WAL_MAX_BYTES) -> None:
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout_s = busy_timeout_s
        self.wal_max_bytes = wal_max_bytes
        """Past this WAL size the writer runs a truncating checkpoint (`bound_wal`); 0: never."""
        self.guard = FileGuard(self.path)
        self.fault: str | None = None
        """Why this store refuses to write (the file was deleted, replaced, or is corrupt); None when healthy."""
        self.truncations = 0
        self.truncate_busy = False
        """The last truncating checkpoint found readers in the way (the writer tries again a second later)."""
        self._writer: sqlite3.Connection | None = None
        self._maintenance: sqlite3.Connection | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._models_json: dict[tuple[str, ...], str] = {}

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
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")  # a reset WAL shrinks back
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        if self.guard.identity is None:
            self.guard.arm()
        return conn

    # -- faults: a deleted, replaced or corrupt file (bandit_router.dbguard) ------------------------------------
    def _set_fault(self, problem: str) -> None:
        if self.fault is None:
            self.fault = problem
            log.error("%s: the service stops acknowledging writes (503, /readyz 503) until it is restarted on a "
                      "good database; see `bandit-router check` and the README (Durability)", problem)

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            db = sqlite_utils.Database(conn)
            if db.journal_mode != "wal":
                db.enable_wal()
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._create(db, conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot prepare the database: {exc}") from exc
        finally:
            conn.close()

    def _create(self, db: sqlite_utils.Database, conn: sqlite3.Connection) -> None:
        conn.execute(_SHADOW_SQL)  # added after schema version 1 shipped: created in every version-1 database
        if "meta" in db.table_names():
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema version {version}; this bandit-router knows {SCHEMA_VERSION}")
            if version == SCHEMA_VERSION:
                return
        db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
        db.table("decisions").create(
            {
                "decision_id": str,
                "created_at": float,
                "model": str,
                "arm": int,
                "probability": float,
                "models": str,
                "pmf": str,
                "expected_cost_usd": str,
                "policy": str,
                "policy_version": int,
                "cost_weight": float,
                "tenant": str,
                "input_tokens": int,
                "n_chars": int,
                "turns": int,
                "markers": str,
                "attributes": str,
                "features": bytes,
                "prompt": str,
            },
            not_null={
                "decision_id",
                "created_at",
                "model",
                "probability",
                "models",
                "pmf",
                "policy",
                "policy_version",
                "cost_weight",
                "input_tokens",
                "features",
            },
            if_not_exists=True,
        )
        db.table("decisions").create_index(["decision_id"], index_name="decisions_id", unique=True, if_not_exists=True)
        for statement in _SCHEMA_SQL.split(";"):  # not executescript: it would commit the open transaction
            if statement.strip():
                db.execute(statement)
        db.table("checkpoints").create(
            {
                "id": int,
                "created_at": float,
                "fingerprint": str,
                "seq": int,
                "event_id": int,
                "version": int,
                "sha256": str,
                "state": bytes,
            },
            pk="id",
            not_null={"fingerprint", "seq", "event_id", "version", "sha256", "state"},
            if_not_exists=True,
        )
        db.table("checkpoints").create_index(
            ["fingerprint", "seq", "event_id"], index_name="checkpoints_position", unique=True, if_not_exists=True
        )
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
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    @contextmanager
    def write(self) -> Iterator[WriteTx]:
        """A write transaction. Refused while the store has a fault; a commit that went to a file no longer at
        `path` raises `StoreError` (the rows are not where the next start will look: not acknowledged)."""
        if self.check_file() is not None:
            raise StoreError(f"the database is unusable: {self.fault}")
        conn = self._writer_conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._note(exc)
            raise StoreError(f"cannot start a write transaction: {exc}") from exc
        try:
            yield _SQLiteTx(conn, self._models_json)
        except BaseException as exc:
            self._note(exc)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._note(exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"commit failed: {exc}") from exc
        if self.check_file() is not None:
            raise StoreError(f"the database is unusable: {self.fault}")

    def delete_old(self, cutoff: float, limit: int) -> int:
        """`retention_days`: delete (in one transaction, at most `limit` rows of each table) the feedback received
        before `cutoff` (Unix time) whose seq the newest checkpoint holds, then the decisions made before `cutoff`
        that no feedback row refers to any more (with their shadow pmfs). Returns how many rows were deleted.
        Feedback seqs are never reused (`sqlite_sequence` keeps the largest)."""
        with self.write() as tx:
            conn = tx.conn  # type: ignore[attr-defined]
            row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM checkpoints").fetchone()
            checkpoint_seq = int(row[0])
            deleted = conn.execute(
                "DELETE FROM feedback WHERE seq IN (SELECT seq FROM feedback WHERE seq <= ? AND received_at < ? "
                "ORDER BY seq LIMIT ?)", (checkpoint_seq, cutoff, limit),
            ).rowcount
            old = (
                "SELECT decision_id FROM decisions d WHERE created_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM feedback f WHERE f.decision_id = d.decision_id) ORDER BY rowid LIMIT ?"
            )
            ids = [r[0] for r in conn.execute(old, (cutoff, limit)).fetchall()]
            if ids:
                marks = ",".join("?" * len(ids))
                conn.execute(f"DELETE FROM shadow_pmfs WHERE decision_id IN ({marks})", ids)
                deleted += conn.execute(f"DELETE FROM decisions WHERE decision_id IN ({marks})", ids).rowcount
        return int(deleted)

    def bound_wal(self) -> bool:
        """When the WAL has grown past `wal_max_bytes`, copy it into the database and truncate it to zero bytes
        (`wal_checkpoint(TRUNCATE)` on the writer's connection: it waits for readers, up to the busy timeout, and
        holds the write lock meanwhile). Passive checkpoints alone never restart a WAL that writers keep
        appending to (measured: 726 MiB after 60 s at full load). True when it truncated."""
        if self.wal_max_bytes <= 0 or self.fault is not None or wal_bytes(self.path) <= self.wal_max_bytes:
            return False
        conn = self._writer_conn()
        try:  # a long reader (an evaluation, a backup) must not stall the writer: wait for it briefly, retry later
            conn.execute(f"PRAGMA busy_timeout = {TRUNCATE_WAIT_MS}")
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            self._note(exc)
            raise StoreError(f"WAL checkpoint failed: {exc}") from exc
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        self.truncations += not busy
        self.truncate_busy = bool(busy)
        return not busy

    @contextmanager
    def read(self) -> Iterator[Reader]:
        conn = self._reader_conn()
        try:
            conn.execute("BEGIN")
            try:
                yield _SQLiteTx(conn, self._models_json)
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._note(exc)
            if self.fault is not None:
                raise StoreError(f"the database is unusable: {self.fault}") from exc
            raise

    def maintain(self) -> None:
        """A PASSIVE WAL checkpoint on its own connection: it never blocks the writer or the readers. The writer
        connection does not checkpoint itself (`wal_autocheckpoint = 0`), so that no commit, and so no reply,
        waits for the database file to be written and synced."""
        if self.check_file() is not None:
            return
        if 0 < self.wal_max_bytes < wal_bytes(self.path):
            return  # the writer truncates it next (`bound_wal`); a passive checkpoint now would only be in its way
        if self._maintenance is None:
            self._maintenance = self._connect()
        try:
            self._maintenance.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            self._note(exc)
            raise

    def close(self) -> None:
        for conn in (self._writer, self._maintenance):
            if conn is not None:
                conn.close()
        self._writer = self._maintenance = None
        with self._lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._local = threading.local()


class _SQLiteTx:
    """`WriteTx` (and `Reader`) on one connection inside one transaction."""

    _markers_json: dict[frozenset[str], str] = {}  # noqa: RUF012  (a cache shared by every transaction)

    def __init__(self, conn: sqlite3.Connection, models_json: dict[tuple[str, ...], str]) -> None:
        self.conn = conn
        self._models_json = models_json

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
        for start in range(0, len(rows), _CHUNK):
            chunk_rows = rows[start : start + _CHUNK]
            sql = _INSERT_DECISIONS + ",".join([_DECISION_PLACEHOLDERS] * len(chunk_rows))
            self.conn.execute(sql, list(itertools.chain.from_iterable(chunk_rows)))
        if self.conn.total_changes - before == len(rows):
            return stored
        # Some ids were taken before this batch (rare: callers choose ids): ours are those with our timestamps.
        created = {row[0]: row[1] for row in rows}
        mine: set[str] = set()
        ids = list(created)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for decision_id, created_at in self.conn.execute(
                f"SELECT decision_id, created_at FROM decisions WHERE decision_id IN ({marks})", chunk
            ):
                if created_at == created[decision_id]:
                    mine.add(decision_id)
        return [ok and d.decision_id in mine for ok, (d, _, _) in zip(stored, items, strict=True)]

    def _decision_row(self, decision: Decision, prompt: str | None, tenant: str | None) -> tuple[Any, ...]:
        ctx = decision.context
        models = self._models_json.get(decision.models)
        if models is None:
            models = self._models_json.setdefault(decision.models, _json(list(decision.models)))
        attributes = "{}" if not ctx.attributes else json.dumps(dict(ctx.attributes))
        markers = self._markers_json.get(ctx.markers)
        if markers is None:
            markers = self._markers_json.setdefault(ctx.markers, _json(sorted(ctx.markers)))
        return (
            decision.decision_id,
            decision.created_at,
            decision.model,
            decision.arm,
            decision.probability,
            models,
            _floats(decision.pmf),
            _floats(decision.expected_cost_usd),
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

    def insert_feedback(self, records: Sequence[FeedbackRecord]) -> None:
        for start in range(0, len(records), _CHUNK):
            chunk = records[start : start + _CHUNK]
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
                    r.status,
                    int(r.learn),
                    r.reward,
                    r.realised_cost_usd,
                    r.model,
                    r.tenant,
                )
            ]
            self.conn.execute(_INSERT_FEEDBACK + ",".join([_FEEDBACK_PLACEHOLDERS] * len(chunk)), values)

    def insert_model_event(self, action: str, name: str, spec: ModelSpec | None) -> ModelEvent:
        after_seq = self.head()[0]
        now = time.time()
        cursor = self.conn.execute(
            "INSERT INTO model_events (after_seq, created_at, action, name, spec) VALUES (?, ?, ?, ?, ?)",
            (after_seq, now, action, name, None if spec is None else _json(spec.to_json())),
        )
        assert cursor.lastrowid is not None
        return ModelEvent(int(cursor.lastrowid), after_seq, action, name, spec, now)

    def insert_checkpoint(
        self, *, fingerprint: str, seq: int, event_id: int, version: int, sha256: str, state: bytes, keep: int
    ) -> bool:
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO checkpoints (created_at, fingerprint, seq, event_id, version, sha256, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time(), fingerprint, seq, event_id, version, sha256, state),
        )
        self.conn.execute(
            "DELETE FROM checkpoints WHERE fingerprint = ? AND id NOT IN "
            "(SELECT id FROM checkpoints WHERE fingerprint = ? ORDER BY seq DESC, event_id DESC, id DESC LIMIT ?)",
            (fingerprint, fingerprint, keep),
        )
        return cursor.rowcount == 1

    def decisions_closing(self, after: int, until: float, limit: int) -> tuple[list[DecisionInfo], int]:
        # By rowid (insertion order), not by an index on created_at: one index fewer on the hot insert path.
        rows = self.conn.execute(
            "SELECT rowid, decision_id, model, created_at, input_tokens, cost_weight, tenant, EXISTS "
            "(SELECT 1 FROM feedback f WHERE f.decision_id = d.decision_id AND f.learn = 1) "
            "FROM decisions d WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (after, limit),
        ).fetchall()
        out: list[DecisionInfo] = []
        position = after
        for row in rows:
            if row[3] > until:
                break
            position = int(row[0])
            if not row[7]:
                out.append(DecisionInfo(*row[1:7]))
        return out, position

    def last_decision_position(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM decisions").fetchone()[0])

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- reads ------------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def decision_info(self, decision_id: str) -> DecisionInfo | None:
        row = self.conn.execute(
            "SELECT decision_id, model, created_at, input_tokens, cost_weight, tenant FROM decisions "
            "WHERE decision_id = ?",
            (decision_id,),
        ).fetchone()
        return None if row is None else DecisionInfo(*row)

    def decision(self, decision_id: str) -> StoredDecision | None:
        row = self.conn.execute(
            f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE decision_id = ?", (decision_id,)
        ).fetchone()
        if row is None:
            return None
        return StoredDecision(_decision_from_row(row), row[18], row[11])

    def decisions(self, decision_ids: Sequence[str]) -> dict[str, StoredDecision]:
        out: dict[str, StoredDecision] = {}
        ids = list(dict.fromkeys(decision_ids))
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE decision_id IN ({marks})", chunk
            ):
                out[row[0]] = StoredDecision(_decision_from_row(row), row[18], row[11])
        return out

    def feedback_for_many(self, decision_ids: Sequence[str]) -> dict[str, list[FeedbackRecord]]:
        out: dict[str, list[FeedbackRecord]] = {}
        ids = list(dict.fromkeys(decision_ids))
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE decision_id IN ({marks}) ORDER BY seq", chunk
            ):
                out.setdefault(row[1], []).append(_feedback_from_row(row))
        return out

    def feedback_for(self, decision_id: str) -> list[FeedbackRecord]:
        rows = self.conn.execute(
            f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE decision_id = ? ORDER BY seq", (decision_id,)
        ).fetchall()
        return [_feedback_from_row(row) for row in rows]

    def learned_after(self, seq: int, limit: int) -> list[tuple[FeedbackRecord, Decision]]:
        columns = ", ".join(f"f.{c.strip()}" for c in _FEEDBACK_COLUMNS.split(","))
        dcolumns = ", ".join(f"d.{c.strip()}" for c in _DECISION_COLUMNS.split(","))
        rows = self.conn.execute(
            f"SELECT {columns}, {dcolumns} FROM feedback f JOIN decisions d ON d.decision_id = f.decision_id "
            "WHERE f.seq > ? AND f.learn = 1 ORDER BY f.seq LIMIT ?",
            (seq, limit),
        ).fetchall()
        return [(_feedback_from_row(row[:15]), _decision_from_row(row[15:])) for row in rows]

    def insert_shadow_pmfs(self, rows: Sequence[tuple[str, str]]) -> None:
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            self.conn.execute(
                "INSERT OR IGNORE INTO shadow_pmfs (decision_id, pmfs) VALUES " + ",".join(["(?, ?)"] * len(chunk)),
                list(itertools.chain.from_iterable(chunk)),
            )

    def shadow_pmfs_for_many(self, decision_ids: Sequence[str]) -> dict[str, dict[str, list[float]]]:
        if self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'shadow_pmfs'").fetchone() is None:
            return {}  # a database no service with this version prepared yet
        out: dict[str, dict[str, list[float]]] = {}
        ids = list(dict.fromkeys(decision_ids))
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for decision_id, pmfs in self.conn.execute(
                f"SELECT decision_id, pmfs FROM shadow_pmfs WHERE decision_id IN ({marks})", chunk
            ):
                out[decision_id] = json.loads(pmfs)
        return out

    def decisions_after(self, position: int, limit: int) -> list[tuple[int, StoredDecision]]:
        rows = self.conn.execute(
            f"SELECT rowid, {_DECISION_COLUMNS} FROM decisions WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (position, limit),
        ).fetchall()
        return [(int(row[0]), StoredDecision(_decision_from_row(row[1:]), row[19], row[12])) for row in rows]

    def model_events_after(self, event_id: int) -> list[ModelEvent]:
        rows = self.conn.execute(
            "SELECT id, after_seq, action, name, spec, created_at FROM model_events WHERE id > ? ORDER BY id",
            (event_id,),
        ).fetchall()
        return [
            ModelEvent(r[0], r[1], r[2], r[3], None if r[4] is None else ModelSpec.from_json(json.loads(r[4])), r[5])
            for r in rows
        ]

    def head(self) -> tuple[int, int]:
        # sqlite_sequence holds the largest seq ever used, even if rows at the end were deleted.
        row = self.conn.execute(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'feedback'), 0), "
            "(SELECT COALESCE(MAX(id), 0) FROM model_events)"
        ).fetchone()
        return int(row[0]), int(row[1])

    def checkpoints(self, fingerprint: str) -> list[Checkpoint]:
        rows = self.conn.execute(
            "SELECT id, fingerprint, seq, event_id, version, sha256, created_at FROM checkpoints "
            "WHERE fingerprint = ? ORDER BY seq DESC, event_id DESC, id DESC",
            (fingerprint,),
        ).fetchall()
        return [Checkpoint(*row) for row in rows]

    def checkpoint_state(self, checkpoint_id: int) -> bytes:
        row = self.conn.execute("SELECT state FROM checkpoints WHERE id = ?", (checkpoint_id,)).fetchone()
        return b"" if row is None else bytes(row[0])

    def stats(self) -> dict[str, Any]:
        """Per model: decisions, learned feedbacks, mean quality and reward, spend (of learned feedback); and
        feedback rows per status."""
        models: dict[str, dict[str, Any]] = {}
        for model, n in self.conn.execute("SELECT model, COUNT(*) FROM decisions GROUP BY model"):
            models[model] = {"decisions": n, "feedback": 0, "mean_quality": None, "mean_reward": None, "spend_usd": 0.0}
        for model, n, quality, reward, spend in self.conn.execute(
            "SELECT model, COUNT(*), AVG(quality), AVG(reward), SUM(realised_cost_usd) FROM feedback "
            "WHERE learn = 1 GROUP BY model"
        ):
            entry = models.setdefault(model, {"decisions": 0})
            entry.update(feedback=n, mean_quality=quality, mean_reward=reward, spend_usd=spend)
        statuses = dict(self.conn.execute("SELECT status, COUNT(*) FROM feedback GROUP BY status").fetchall())
        return {"models": models, "feedback_by_status": statuses}


def _decision_from_row(row: Sequence[Any]) -> Decision:
    (
        decision_id,
        created_at,
        model,
        arm,
        probability,
        models,
        pmf,
        expected,
        policy,
        version,
        cost_weight,
        _tenant,
        input_tokens,
        n_chars,
        turns,
        markers,
        attributes,
        features,
        _prompt,
    ) = row
    context = Context(
        features=decode_features(bytes(features)),
        input_tokens=int(input_tokens),
        n_chars=int(n_chars or 0),
        turns=int(turns or 1),
        markers=frozenset(json.loads(markers or "[]")),
        attributes=MappingProxyType(json.loads(attributes or "{}")),
    )
    return Decision(
        decision_id=decision_id,
        model=model,
        arm=int(arm if arm is not None else -1),
        models=tuple(json.loads(models)),
        pmf=tuple(float(p) for p in json.loads(pmf)),
        probability=float(probability),
        policy=policy,
        policy_version=int(version),
        cost_weight=float(cost_weight),
        context=context,
        expected_cost_usd=tuple(float(c) for c in json.loads(expected or "[]")),
        created_at=float(created_at),
    )


def _feedback_from_row(row: Sequence[Any]) -> FeedbackRecord:
    (
        seq,
        decision_id,
        received_at,
        quality,
        cost_usd,
        input_tokens,
        output_tokens,
        latency_s,
        source,
        status,
        learn,
        reward,
        realised,
        model,
        tenant,
    ) = row
    return FeedbackRecord(
        decision_id=decision_id,
        received_at=received_at,
        quality=quality,
        cost_usd=cost_usd,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        latency_s=latency_s,
        source=source,
        status=status,
        learn=bool(learn),
        reward=reward,
        realised_cost_usd=realised,
        model=model,
        tenant=tenant,
        seq=seq,
    )
