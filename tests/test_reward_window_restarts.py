"""Reward windows across restarts that turn them off and on (`service/writer.py` `init_sweeps`, `_sweep`): a sweep
transaction that rolls back, meta values that do not read, another worker starting meanwhile, an older version
running in between. The plain cases are in tests/test_api.py."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*install `httpx2`.*")
    from fastapi.testclient import TestClient

from service_client import client_factory

from bandit_router.service.writer import Writer
from bandit_router.store import StoreError
from bandit_router.store import sqlite as sqlite_store

WINDOWS = {"reward_window_s": 0.3, "default_reward": 0.25}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "windows.db"


@pytest.fixture
def make_client(db: Path) -> Iterator[Callable[..., TestClient]]:
    yield from client_factory(db, seed=7)


def _route(client: TestClient, prompt: str) -> str:
    reply = client.post("/v1/route", json={"prompt": prompt})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["decision_id"])


def _defaults(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [r[0] for r in conn.execute("SELECT decision_id FROM feedback WHERE status = 'default' ORDER BY seq")]


def _meta(db: Path, key: str) -> str | None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _set_meta(db: Path, key: str, value: str | None) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        if value is None:
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _wait(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _on_then_off(make_client: Callable[..., TestClient], db: Path, n_off: int = 4) -> tuple[str, list[str]]:
    """A run with windows (its decision's window closed: a default row), then one without; the decisions of each."""
    first = make_client(**WINDOWS)
    promised = _route(first, "made with windows")
    _wait(lambda: _defaults(db) == [promised])
    first.__exit__(None, None, None)
    without = make_client()
    unpromised = [_route(without, f"made without windows {i}") for i in range(n_off)]
    without.__exit__(None, None, None)
    time.sleep(0.6)  # their windows, had they had one, are closed
    return promised, unpromised


def test_a_sweep_whose_transaction_rolls_back_forgets_no_range_of_decisions_made_while_windows_were_off(
        make_client: Callable[..., TestClient], db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep that passes the end of the off-period range writes the shorter list of ranges; when its transaction
    fails (here that write: a full disk), nothing of it may stay. The range was dropped from memory before the
    commit, so the next sweep gave every decision of the off period the default reward."""
    promised, unpromised = _on_then_off(make_client, db)
    writes: list[str] = []
    set_meta = sqlite_store._SQLiteTx.set_meta

    def fail_the_first_sweeps(self: Any, key: str, value: str) -> None:
        if key == "reward_windows_unwindowed":
            writes.append(value)
            if len(writes) == 2:  # the first is the start's, noting the range; the second the first sweep's
                raise StoreError("database or disk is full (injected)")
        set_meta(self, key, value)

    monkeypatch.setattr(sqlite_store._SQLiteTx, "set_meta", fail_the_first_sweeps)
    again = make_client(**WINDOWS)
    _wait(lambda: len(writes) >= 3)  # a later sweep wrote what the failed one did not
    after = _route(again, "made with windows again")
    _wait(lambda: len(_defaults(db)) >= 2)
    time.sleep(0.6)
    assert _defaults(db) == [promised, after], set(_defaults(db)) & set(unpromised)


def test_the_closing_pass_of_a_start_without_windows_survives_a_transaction_that_rolls_back(
        make_client: Callable[..., TestClient], db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A start without windows closes those the previous run left open, so that its `pending` feedback is learned.
    When the transaction storing the average fails, a later sweep stores it: the pass had ended before the commit,
    so the average was never stored and the decision refused every later feedback (409)."""
    first = make_client(aggregation="average", reward_window_s=30.0)
    decision = _route(first, "averaged")
    for quality in (0.2, 0.6):
        assert first.post("/v1/feedback", json={"decision_id": decision, "quality": quality}).status_code == 200
    first.__exit__(None, None, None)
    failed: list[int] = []
    insert_feedback = sqlite_store._SQLiteTx.insert_feedback

    def fail_the_first_average(self: Any, records: Any, *args: Any, **kwargs: Any) -> Any:
        if not failed and any(r.status == "aggregate" for r in records):
            failed.append(len(records))
            raise StoreError("database is locked (injected)")
        return insert_feedback(self, records, *args, **kwargs)

    monkeypatch.setattr(sqlite_store._SQLiteTx, "insert_feedback", fail_the_first_average)
    again = make_client()
    _wait(lambda: again.get("/v1/stats").json()["policy_version"] == 1)
    assert failed
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT status, quality, learn FROM feedback ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == ["pending", "pending", "aggregate"] and rows[2][1] == pytest.approx(0.4)


@pytest.mark.parametrize(("key", "value"), [
    ("reward_windows_off", "\u00b2"),  # str.isdigit() takes it, int() does not
    ("reward_windows_off", "9" * 5000),  # more digits than int() reads
    ("reward_windows_off", "x"),
    ("reward_windows_unwindowed", "[[1e400, 5]]"),  # infinity: int() overflows
    ("reward_windows_unwindowed", "[" * 100_000),  # nested too deep to decode
    ("reward_windows_unwindowed", '{"ranges": [[1, 5]]}'),
    ("reward_windows_unwindowed", "[[1.9, 5.7]]"),
])
def test_a_reward_windows_meta_value_that_does_not_read_is_warned_about_and_invents_no_default_reward(
        make_client: Callable[..., TestClient], db: Path, caplog: pytest.LogCaptureFixture, key: str,
        value: str) -> None:
    """Every start reads both values: one that does not read (edited by hand, another version's) stopped the start
    (the service never ready) or was read as no range, and the decisions made while windows were off got the
    default reward. Now each start warns, and no decision not yet swept gets the default reward."""
    promised, unpromised = _on_then_off(make_client, db)
    _set_meta(db, key, value)
    caplog.set_level(logging.WARNING, logger="bandit_router")
    make_client().__exit__(None, None, None)  # without windows: ready
    assert any(key in r.getMessage() for r in caplog.records)
    _set_meta(db, key, value)
    caplog.clear()
    again = make_client(**WINDOWS)
    assert any(key in r.getMessage() for r in caplog.records)
    after = _route(again, "made with windows again")
    _wait(lambda: len(_defaults(db)) >= 2)
    time.sleep(0.6)
    assert _defaults(db) == [promised, after], set(_defaults(db)) & set(unpromised)


def test_a_start_without_windows_on_a_noted_position_past_the_last_decision_stops_sweeping(
        make_client: Callable[..., TestClient], db: Path) -> None:
    """`reward_windows_off` past the log's last decision (edited, another database's): the start without windows
    closed windows up to it, which it never reached, so it ran a write transaction four times a second for ever."""
    first = make_client(**WINDOWS)
    _route(first, "made with windows")
    _wait(lambda: len(_defaults(db)) == 1)
    first.__exit__(None, None, None)
    _set_meta(db, "reward_windows_off", "99999")
    make_client()
    time.sleep(0.6)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        before = conn.execute("PRAGMA data_version").fetchone()[0]
        time.sleep(1.0)
        assert conn.execute("PRAGMA data_version").fetchone()[0] == before  # no commit by the idle service


def test_a_noted_position_an_older_version_closed_windows_past_is_read_from_the_swept_position(
        make_client: Callable[..., TestClient], db: Path) -> None:
    """On, off (`reward_windows_off` noted), an older version with windows (it knows neither key, closes windows
    past it, leaves both as they were), then this version with windows. The noted position is behind where
    windows were closed up to; the decisions past that are read as made while windows were off (a replica without
    windows may have made them): the older version's whose windows were still open when it stopped get no default
    reward (never invented feedback, at the cost of a promised default); this version's decisions get theirs."""
    promised, _ = _on_then_off(make_client, db)
    left = {key: _meta(db, key) for key in ("reward_windows_off", "reward_windows_unwindowed")}
    older = make_client(**WINDOWS)  # as an older version: with windows, then the keys restored as it left them
    swept = _route(older, "made by the older version, swept")
    _wait(lambda: swept in _defaults(db))
    still_open = [_route(older, f"made by the older version, open {i}") for i in range(2)]
    older.__exit__(None, None, None)
    for key, value in left.items():
        _set_meta(db, key, value)
    again = make_client(**WINDOWS)
    after = _route(again, "made with windows again")
    _wait(lambda: after in _defaults(db))
    time.sleep(0.6)
    assert _defaults(db) == [promised, swept, after], set(_defaults(db)) & set(still_open)


def test_two_workers_starting_together_both_skip_the_decisions_made_while_windows_were_off(
        make_client: Callable[..., TestClient], db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve --workers N` with windows again: a worker that read the meta before another worker's start turned the
    noted position into a range, then found nothing to do in its write transaction, closed the windows of the off
    period with the default reward (the range was not in what it read). Here worker A reads, worker B starts and
    stops, then A goes on; the off-period decisions' windows (2 s) close after B stopped, in A."""
    windows = {"reward_window_s": 2.0, "default_reward": 0.25}
    first = make_client(**windows)
    first.__exit__(None, None, None)
    without = make_client()
    unpromised = [_route(without, f"made without windows {i}") for i in range(4)]
    without.__exit__(None, None, None)
    a_read, b_started = threading.Event(), threading.Event()
    init_sweeps = Writer.init_sweeps

    class ReadThenWait:
        """Worker A's store: after its first read, wait for worker B's start."""

        def __init__(self, store: Any) -> None:
            self.store = store

        @contextlib.contextmanager
        def read(self) -> Iterator[Any]:
            with self.store.read() as reader:
                yield reader
            a_read.set()
            assert b_started.wait(20)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.store, name)

    def paused_once(self: Writer) -> None:
        if a_read.is_set():
            init_sweeps(self)
            return
        store, self.store = self.store, ReadThenWait(self.store)  # type: ignore[assignment]
        try:
            init_sweeps(self)
        finally:
            self.store = store

    monkeypatch.setattr(Writer, "init_sweeps", paused_once)
    started: list[TestClient] = []
    a = threading.Thread(target=lambda: started.append(make_client(**windows)))
    a.start()
    assert a_read.wait(20)
    make_client(**windows).__exit__(None, None, None)  # worker B
    b_started.set()
    a.join(20)
    [worker_a] = started
    after = _route(worker_a, "made with windows again")
    _wait(lambda: after in _defaults(db), timeout=8.0)
    assert _defaults(db) == [after], set(_defaults(db)) & set(unpromised)


def test_a_replica_without_windows_while_another_sweeps_on_withholds_the_default_from_its_own_decisions(
        make_client: Callable[..., TestClient], db: Path) -> None:
    """A rolling change on one SQLite file: B restarts without windows (noting the last position) while A, with
    them, sweeps a decision of its own past it; A stops, B makes decisions, B restarts with windows. The noted
    position, behind the swept one, was dropped and B's decisions got the default reward (4 of 4).
    (PostgreSQL, and retention deleting every swept decision: tests/test_postgres_service.py.)"""
    a = make_client(**WINDOWS)
    promised = _route(a, "made with windows")
    _wait(lambda: _defaults(db) == [promised])
    b = make_client()
    own = _route(a, "made by A after B's change")
    _wait(lambda: _defaults(db) == [promised, own])
    a.__exit__(None, None, None)
    unpromised = [_route(b, f"made without windows {i}") for i in range(4)]
    b.__exit__(None, None, None)
    time.sleep(0.6)
    again = make_client(**WINDOWS)
    after = _route(again, "made with windows again")
    _wait(lambda: len(_defaults(db)) >= 3)
    time.sleep(0.6)
    assert _defaults(db) == [promised, own, after], set(_defaults(db)) & set(unpromised)
