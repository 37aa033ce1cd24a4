"""What can go wrong with the database file under a running service, and how it is noticed.

- **Deleted or replaced** (`rm`, a `mv` over it): the service's connections keep writing to
  the old inode, so every acknowledged row after that is lost at the next start. `FileGuard` remembers the
  file's device and inode when the store opens it and compares them with the path's (`os.stat`, about a µs):
  the writer checks after every commit (a batch committed to a file that is no longer at its path is *not*
  acknowledged) and the maintenance thread every 0.5 s. What keeps the inode is not seen: a `cp` onto the file
  (it writes into the same inode) or a deleted `-wal`.
- **Corrupt** (a disk or a copy that went wrong): SQLite answers `SQLITE_CORRUPT` ("database disk image is
  malformed") or `SQLITE_NOTADB`. `is_integrity_error` recognises them; the store then refuses every further
  write (503, `/readyz` 503) instead of acknowledging rows it may not be able to read back.

Either is a *fault*: logged once, never repaired by the service; recover from a backup (`bandit-router check`
tells which checkpoint is still good). `RateLimitedLog` keeps repeated failures from flooding the log
(`RateLimitedRecords`: a library's).
`check_database` is what `bandit-router check` runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CORRUPT_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes)
_CORRUPT_TEXT = ("malformed", "not a database", "database corrupt")


def is_integrity_error(exc: BaseException | None) -> bool:
    """True when `exc` (or an exception it was raised from) is SQLite reporting a corrupt database file."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, sqlite3.DatabaseError):
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _CORRUPT_CODES:
                return True
            if any(text in str(exc).lower() for text in _CORRUPT_TEXT):
                return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class FileGuard:
    """Notices that the file at `path` is no longer the one that was opened (deleted, or another inode)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.identity: tuple[int, int] | None = None

    def arm(self) -> None:
        """Remember the file now at `path` (call once the store has opened it)."""
        st = os.stat(self.path)
        self.identity = (st.st_dev, st.st_ino)

    def problem(self) -> str | None:
        """None while the path still holds the opened file; else what happened, as a sentence."""
        if self.identity is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"the database file {self.path} was deleted while the service was running"
        except OSError as exc:
            return f"the database file {self.path} cannot be examined: {exc.strerror}"
        if (st.st_dev, st.st_ino) != self.identity:
            return f"the database file {self.path} was replaced by another file while the service was running"
        return None


class RateLimitedLog:
    """Log a recurring failure at most once per `every_s` seconds per key, saying how many were suppressed: with
    the key's next record after the window, or, when the failures stopped before that, at `flush()` (the stop)."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self._last: dict[str, tuple[float, int]] = {}
        self._latest: dict[str, tuple[int, str, tuple[Any, ...]]] = {}
        """Per key, the latest suppressed record (level, message, arguments)."""

    def __call__(self, key: str, level: int, message: str, *args: Any, exc_info: Any = None) -> bool:
        now = time.monotonic()
        last, suppressed = self._last.get(key, (-1e18, 0))
        if now - last < self.every_s:
            self._last[key] = (last, suppressed + 1)
            self._latest[key] = (level, message, args)
            return False
        if suppressed:
            message += f" ({suppressed} more like this in the last {self.every_s:.0f} s were not logged)"
        self._latest.pop(key, None)
        self.logger.log(level, message, *args, exc_info=exc_info)
        self._last[key] = (now, 0)
        return True

    def flush(self) -> None:
        """Log each key's latest suppressed record with how many were suppressed since the key's last logged one
        (at a stop: they are said nowhere else when the failures stopped within the window)."""
        for key, (level, message, args) in list(self._latest.items()):
            last, suppressed = self._last[key]
            self.logger.log(level, message + f" (the latest of {suppressed} like this that were not logged)", *args)
            self._last[key] = (last, 0)
            del self._latest[key]


FLUSHED = "%d more like this were not logged after the last one: %s"
"""`RateLimitedRecords.flush`'s message (its filter lets it pass)."""


class RateLimitedRecords(logging.Filter):
    """A logging filter for a library's recurring messages (psycopg's pool says every failed reconnection, a few
    times a second while PostgreSQL is down; uvicorn every malformed request): a record passes at most once per
    `every_s` seconds per message template (of `only`'s, when given: the others always pass), saying how many were
    dropped since the last that passed. With `about`, only the records one of whose arguments is `about` or names
    it (`repr(about)` in its text: psycopg's pool and its tasks by the pool's name) are limited; the others, an
    embedding application's own pool's, always pass."""

    def __init__(self, every_s: float = 60.0, only: Iterable[str] | None = None, about: str | None = None) -> None:
        super().__init__()
        self.every_s = every_s
        self.only = None if only is None else frozenset(only)
        self.about = about
        self._last: dict[str, tuple[float, int]] = {}

    def _concerns(self, record: logging.LogRecord) -> bool:
        if self.only is not None and record.msg not in self.only:
            return False
        if self.about is None:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        return any(arg == self.about or repr(self.about) in str(arg) for arg in args)

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)[:200]
        if record.msg is FLUSHED or not self._concerns(record):
            return True
        now = time.monotonic()
        last, dropped = self._last.get(key, (-1e18, 0))
        if now - last < self.every_s:
            self._last[key] = (last, dropped + 1)
            return False
        if len(self._last) >= 256:  # a library has few templates; bounded whatever it logs
            self._last.clear()
        self._last[key] = (now, 0)
        if dropped and isinstance(record.msg, str):
            record.msg += f" ({dropped} more like this in the last {self.every_s:.0f} s were not logged)"
        return True

    def flush(self, logger: logging.Logger) -> None:
        """Log, on `logger`, how many records of each template were dropped since its last that passed (at a stop:
        they are said nowhere else when the records stopped within the window)."""
        for key, (last, dropped) in list(self._last.items()):
            if dropped:
                self._last[key] = (last, 0)
                logger.warning(FLUSHED, dropped, key)


def rate_limit_logger(name: str, every_s: float = 60.0, only: Iterable[str] | None = None,
                      about: str | None = None) -> None:
    """Attach a `RateLimitedRecords` filter to the logger `name` (idempotent). The logger is the process's, shared
    with any application that embeds the library: give `only` or `about` so that its own records pass."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RateLimitedRecords) for f in logger.filters):
        logger.addFilter(RateLimitedRecords(every_s, only, about))


def flush_rate_limited(*names: str) -> None:
    """`RateLimitedRecords.flush` on the filters `rate_limit_logger` attached to the loggers `names`."""
    for name in names:
        logger = logging.getLogger(name)
        for f in logger.filters:
            if isinstance(f, RateLimitedRecords):
                f.flush(logger)


def wal_bytes(path: Path) -> int:
    """The size of the database's write-ahead log (`<path>-wal`), 0 when there is none."""
    try:
        return os.stat(f"{path}-wal").st_size
    except OSError:
        return 0


@dataclass
class CheckReport:
    """What `bandit-router check` found."""

    path: str
    ok: bool
    integrity: list[str] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    last_good_checkpoint: dict[str, Any] | None = None
    counts: dict[str, int | None] = field(default_factory=dict)
    error: str | None = None
    decisions: dict[str, Any] = field(default_factory=dict)
    """The decisions with feedback decoded (`check_decisions`): `checked`, `with_feedback`, `unreadable` (how
    many), `first_unreadable` (decision id and reason)."""
    model_events: dict[str, Any] = field(default_factory=dict)
    """The model events decoded (`check_model_events`): `checked`, `unreadable` (each row's id and reason)."""

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "integrity": self.integrity, "counts": self.counts,
                "decisions": self.decisions, "model_events": self.model_events,
                "last_good_checkpoint": self.last_good_checkpoint, "checkpoints": self.checkpoints, "error": self.error}


CHECKED_DECISIONS = 200_000
"""Decisions with feedback that `check` decodes at most, newest first (≈ 10 s at 20 µs each)."""
UNREADABLE_LISTED = 20
"""Unreadable decisions `check` names at most (it counts them all)."""


def check_decisions(conn: sqlite3.Connection, most: int = CHECKED_DECISIONS) -> dict[str, Any]:
    """Decode the newest `most` decisions that have feedback as a replay does: a value corrupted on disk (which
    SQLite's integrity check does not look at) or edited by hand makes the replay skip that decision's feedback."""
    from .store.records import UnreadableDecision
    from .store.sqlite import DECISION_COLUMNS, _decision_from_row

    fed = "FROM decisions d WHERE EXISTS (SELECT 1 FROM feedback f WHERE f.decision_id = d.decision_id)"
    total = int(conn.execute(f"SELECT COUNT(*) {fed}").fetchone()[0])
    columns = ", ".join(f"d.{c}" for c in DECISION_COLUMNS)
    checked, unreadable = 0, 0
    listed: list[dict[str, str]] = []
    for row in conn.execute(f"SELECT {columns} {fed} ORDER BY d.rowid DESC LIMIT ?", (most,)):
        checked += 1
        try:
            _decision_from_row(row)
        except UnreadableDecision as exc:
            unreadable += 1
            if len(listed) < UNREADABLE_LISTED:
                listed.append({"decision_id": row[0], "reason": str(exc)})
    return {"checked": checked, "with_feedback": total, "unreadable": unreadable, "first_unreadable": listed}


def check_model_events(conn: sqlite3.Connection) -> dict[str, Any]:
    """Decode every model event as a start does (`model_event_from_row`): one that does not decode stops every
    start, so each is named with the repair."""
    from .store.records import UnreadableModelEvent, model_event_from_row

    checked = 0
    unreadable: list[dict[str, Any]] = []
    for row in conn.execute("SELECT id, after_seq, action, name, spec, created_at FROM model_events ORDER BY id"):
        checked += 1
        try:
            model_event_from_row(*row)
        except UnreadableModelEvent as exc:
            unreadable.append({"id": row[0], "reason": str(exc)})
    return {"checked": checked, "unreadable": unreadable}


SERVICE_TABLES = ("meta", "decisions", "feedback", "checkpoints")
"""Tables every bandit-router database has: a sound file with none of them is not one (`check_database`)."""


def _has_a_table(conn: sqlite3.Connection, names: tuple[str, ...]) -> bool:
    query = f"SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ({', '.join('?' * len(names))})"
    return bool(conn.execute(query, names).fetchone()[0])


def _first_feedback_seq(conn: sqlite3.Connection) -> int | None:
    """The oldest feedback seq stored (with none, the next one: `sqlite_sequence` keeps the largest ever used);
    None when it cannot be read."""
    try:
        first = conn.execute("SELECT MIN(seq) FROM feedback").fetchone()[0]
        if first is None:
            used = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'feedback'").fetchone()
            first = int(used[0]) + 1 if used is not None else 1
        return int(first)
    except (sqlite3.Error, TypeError, ValueError):
        return None


def check_checkpoints(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every stored checkpoint read back as a start reads it (its parts in order, when written in parts) and
    compared with its sha256, in a start's order (newest first) and in one read transaction: a service that stores
    a checkpoint meanwhile and prunes an older one with its parts does not make a listed one read back incomplete.
    Each entry: `id`, `created_at`, `fingerprint`, `seq`, `event_id`, `version`, `good`. A bad one also has
    `error` (its parts missing, or its state not matching its sha256) and `fallback`: what a start of its settings
    that reaches it restores instead (the next good checkpoint of its fingerprint: `id` and `seq`; None: the whole
    log replayed), with `lacks_seqs` when the log that replay needs was deleted (retention, or by hand): the first
    and last feedback seq missing, whose learning a start then loses."""
    from .store.records import parts_named  # (the store imports this module)
    from .store.sqlite import PARTS_OF

    entries: list[dict[str, Any]] = []
    conn.execute("BEGIN")
    try:
        listed = conn.execute("SELECT id, created_at, fingerprint, seq, event_id, version FROM checkpoints "
                              "ORDER BY seq DESC, event_id DESC, id DESC").fetchall()
        first = _first_feedback_seq(conn)
        for checkpoint_id, created_at, fingerprint, seq, event_id, version in listed:
            entry: dict[str, Any] = {"id": checkpoint_id, "created_at": created_at, "fingerprint": fingerprint,
                                     "seq": seq, "event_id": event_id, "version": version}
            try:  # one at a time: a state is up to 21 MB (100 models), and a damaged row spoils only its entry
                sha256, state = conn.execute("SELECT sha256, state FROM checkpoints WHERE id = ?",
                                             (checkpoint_id,)).fetchone()
                state = bytes(state)
                parts = parts_named(state)
                if parts is not None:  # written in parts (migration 9): their bytes, in order
                    found = conn.execute(PARTS_OF.format(mark="?"), parts[:1]).fetchall()
                    state = b"".join(bytes(r[0]) for r in found)
                    if len(found) != parts[1]:
                        entry["error"] = f"{len(found)} of its {parts[1]} parts stored"
                if "error" not in entry and hashlib.sha256(state).hexdigest() != sha256:
                    entry["error"] = "its state does not match its sha256"
            except (sqlite3.Error, TypeError, ValueError) as exc:
                entry["error"] = str(exc)
            entry["good"] = "error" not in entry
            entries.append(entry)
    finally:
        conn.rollback()
    for n, entry in enumerate(entries):
        if entry["good"]:
            continue
        fallback = next((c for c in entries[n + 1 :] if c["good"] and c["fingerprint"] == entry["fingerprint"]),
                        None)
        entry["fallback"] = None if fallback is None else {"id": fallback["id"], "seq": fallback["seq"]}
        after = 0 if fallback is None else int(fallback["seq"])
        if first is not None and first > after + 1:
            entry["lacks_seqs"] = [after + 1, int(first) - 1]
    return entries


def check_database(path: Path, *, max_errors: int = 20) -> CheckReport:
    """SQLite's `PRAGMA integrity_check` on `path` (read-only), the decisions with feedback decoded
    (`check_decisions`), and every stored checkpoint verified against its sha256, newest first: the newest one that
    reads back and matches is the last good checkpoint (`check_checkpoints`). `ok` only when all of them pass."""
    report = CheckReport(path=str(path), ok=False)
    if not path.is_file():
        report.error = f"{path}: {'not a file' if path.exists() else 'no such file'}"
        return report
    try:
        # as_uri() percent-encodes `#`, `?` and `%`: spliced in raw, `a#1.db` opened `a` (created, read-write)
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        report.error = f"cannot open {path}: {exc}"
        return report
    try:
        try:
            rows = conn.execute(f"PRAGMA integrity_check({int(max_errors)})").fetchall()
            report.integrity = [str(r[0]) for r in rows]
        except sqlite3.Error as exc:
            report.integrity = [f"integrity_check failed: {exc}"]
        if report.integrity == ["ok"] and not _has_a_table(conn, SERVICE_TABLES):  # no verdict: nothing to check
            report.error = (f"{path} is not a bandit-router database (a sound SQLite file without any of its tables: "
                            "empty, or another application's); `bandit-router serve` or `migrate` creates one")
            return report
        for table in ("decisions", "feedback", "checkpoints"):
            try:
                report.counts[table] = int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            except sqlite3.Error:
                report.counts[table] = None
        try:
            report.decisions = check_decisions(conn)
        except sqlite3.Error as exc:
            report.error = f"the decisions cannot be read: {exc}"
        try:
            report.model_events = check_model_events(conn)
        except sqlite3.Error as exc:
            report.error = f"the model events cannot be read: {exc}"
        try:
            report.checkpoints = check_checkpoints(conn)
        except sqlite3.Error as exc:
            report.error = f"the checkpoints cannot be read: {exc}"
        report.last_good_checkpoint = next((c for c in report.checkpoints if c["good"]), None)
    finally:
        conn.close()
    report.ok = (report.integrity == ["ok"] and report.error is None and not report.decisions.get("unreadable")
                 and not report.model_events.get("unreadable") and all(c["good"] for c in report.checkpoints))
    return report
