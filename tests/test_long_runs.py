"""What a long-running service keeps must not grow with the requests it served: per reading thread it ever had, per
distinct value a caller chose. Each test makes many of them and asserts the bound (counts, never time)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from service_client import start_client

from bandit_router.config import Settings
from bandit_router.ids import new_decision_id
from bandit_router.router import Router
from bandit_router.store import FeedbackRecord, SQLiteStore
from bandit_router.store import sqlite as sqlite_store
from bandit_router.store.sqlite import _MODEL_LISTS_MAX
from bandit_router.types import Request


def _open_on(path: Path) -> int:
    """File descriptors of this process open on `path` (Linux: /proc/self/fd)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:  # closed since the listing
            continue
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc (Linux)")
def test_reader_connections_of_ended_threads_are_closed(tmp_path: Path) -> None:
    """The service reads from worker threads that end and are replaced (anyio ends one idle for 10 s): each opened
    a connection that was kept open forever, two descriptors a thread, until the process ran out of them."""
    path = tmp_path / "store.db"
    store = SQLiteStore(path)
    store.prepare()
    try:
        seen: list[int] = []

        def read() -> None:
            with store.read() as reader:
                seen.append(reader.decision("none") is None)

        for _ in range(60):
            thread = threading.Thread(target=read)
            thread.start()
            thread.join()
        assert seen == [True] * 60
        assert _open_on(path) <= 2  # the last reader's connection (its thread ended; closed by the next), at most
        read()  # the main thread reads too: still served, on a connection of its own
        assert _open_on(path) <= 2
    finally:
        store.close()
    assert _open_on(path) == 0


def test_the_model_lists_kept_for_writing_decisions_are_bounded(tmp_path: Path) -> None:
    """A request's `models` may be any subset of the catalog in any order; the writer kept the JSON of every list
    it wrote, one entry per distinct list for the life of the process. Past the bound it starts over, and every
    decision is still stored with its own list."""
    store = SQLiteStore(tmp_path / "store.db")
    store.prepare()
    router = Router(seed=5)
    names = [m.name for m in router.models]
    rnd = random.Random(7)
    lists = list(dict.fromkeys(tuple(rnd.sample(names, rnd.randrange(2, len(names) + 1))) for _ in range(1200)))
    assert len(lists) > 2 * _MODEL_LISTS_MAX
    decisions = [router.route(Request(prompt="a question", models=list(models))) for models in lists]
    try:
        for start in range(0, len(decisions), 100):
            with store.write() as tx:
                tx.insert_decisions([(d, None, None) for d in decisions[start : start + 100]])
        assert len(store._models_json) <= _MODEL_LISTS_MAX
        with store.read() as reader:
            stored = reader.decisions([d.decision_id for d in decisions])
        assert [stored[d.decision_id].decision.models for d in decisions] == lists
    finally:
        store.close()


def test_the_stats_of_a_long_log_are_read_in_short_transactions(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`GET /v1/stats` counted the whole log in one read transaction (seconds on a long log): while a read lasts the
    WAL cannot be reset, so two clients polling it back to back kept the WAL growing past `wal_max_bytes` (as long
    as they polled, reproduced). `SQLiteStore.stats` reads pages of `STATS_PAGE` rows, each in its own transaction,
    and between two of them the WAL can be reset; the counts are those of one transaction's."""
    monkeypatch.setattr(sqlite_store, "STATS_PAGE", 16)
    path = tmp_path / "store.db"
    store = SQLiteStore(path)
    store.prepare()
    router = Router(seed=9)
    rnd = random.Random(9)
    decisions = [router.route(Request(prompt=f"question {i}", context={"tenant": "acme"})) for i in range(100)]
    with store.write() as tx:
        tx.insert_decisions([(d, None, None) for d in decisions])
        records = []
        for seq, d in enumerate(rnd.sample(decisions, 60), start=1):
            learn = seq % 4 != 0
            quality = round(rnd.random(), 3)
            records.append(FeedbackRecord(
                decision_id=d.decision_id, received_at=d.created_at + 1, quality=quality, cost_usd=None,
                input_tokens=None, output_tokens=100, latency_s=None, source="test",
                status="applied" if learn else "late", learn=learn, reward=quality - 0.5,
                realised_cost_usd=0.001 * seq, model=d.model, tenant="acme", seq=seq))
        tx.insert_feedback(records)
    with store.read() as reader:
        whole = reader.stats()
    resets: list[tuple[int, int, int]] = []
    read = SQLiteStore.read

    @contextmanager
    def read_then_reset(self: SQLiteStore) -> Iterator[Any]:
        with read(self) as reader:
            yield reader
        with contextlib.closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as other:  # another writer
            other.execute("INSERT INTO meta (key, value) VALUES ('x', 'y') ON CONFLICT (key) DO UPDATE SET value = 'z'")
            resets.append(other.execute("PRAGMA wal_checkpoint(RESTART)").fetchone())

    monkeypatch.setattr(SQLiteStore, "read", read_then_reset)
    try:
        paged = store.stats()
    finally:
        store.close()
    assert paged.feedback_by_status == whole.feedback_by_status and list(paged.models) == list(whole.models)
    for name, model in paged.models.items():  # sums over pages: the same to rounding
        expected = whole.models[name]
        assert (model.decisions, model.feedback) == (expected.decisions, expected.feedback)
        assert (model.mean_quality, model.mean_reward, model.spend_usd) == pytest.approx(
            (expected.mean_quality, expected.mean_reward, expected.spend_usd), rel=1e-12)
    assert sum(m.decisions for m in paged.models.values()) == 100
    assert sum(paged.feedback_by_status.values()) == 60 and paged.feedback_by_status["late"] == 15
    assert len(resets) == 1 + 100 // 16 + 1  # the ends, then one read per page


def _fed_log(store: SQLiteStore, n: int, fed_every: int, seed: int) -> int:
    """`n` decisions (64 routes repeated under new ids), every `fed_every`-th with learned feedback; the last seq."""
    router = Router(seed=seed)
    routes = [router.route(Request(prompt=f"question {i}", context={"tenant": "acme"})) for i in range(64)]
    seq = 0
    with store.write() as tx:
        for start in range(0, n, 64):
            batch = [dataclasses.replace(d, decision_id=new_decision_id()) for d in routes[: n - start]]
            tx.insert_decisions([(d, None, "acme") for d in batch])
            records = []
            for d in batch[::fed_every]:
                seq += 1
                records.append(FeedbackRecord(
                    decision_id=d.decision_id, received_at=d.created_at + 1, quality=0.5, cost_usd=None,
                    input_tokens=None, output_tokens=None, latency_s=None, source="test", status="applied", learn=True,
                    reward=0.5, realised_cost_usd=0.001, model=d.model, tenant="acme", seq=seq))
            tx.insert_feedback(records)
    return seq


def test_polling_stats_back_to_back_lets_the_wal_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads poll `SQLiteStore.stats` back to back while the writer commits and calls `bound_wal`, as the
    service's writer does: the restarts go through, since no read lasts longer than one page. A scan's time is made
    proportional to its rows (0.1 ms a decision, inside the transaction) so that a log of 5,000 decisions stands for
    a long one: read in one transaction (0.5 s, past `RESTART_WAIT_MS`) no restart went through (0 of 100, and
    `restart_busy` at the end); in pages of 200 (20 ms each) they do."""
    monkeypatch.setattr(sqlite_store, "STATS_PAGE", 200)
    store = SQLiteStore(tmp_path / "store.db", wal_max_bytes=32 << 10)
    store.prepare()
    n = 5000
    _fed_log(store, n, 3, seed=3)
    add = sqlite_store._StatsSums.add

    def slow_add(self: Any, tx: Any, decisions: tuple[int, int] | None) -> None:
        add(self, tx, decisions)
        time.sleep(1e-4 * (decisions[1] - decisions[0] if decisions else n))

    monkeypatch.setattr(sqlite_store._StatsSums, "add", slow_add)
    router = Router(seed=4)
    routes = [router.route(Request(prompt=f"new {i}")) for i in range(8)]
    stop = threading.Event()
    polls = [0, 0]

    def poll(i: int) -> None:
        while not stop.is_set():
            store.stats()
            polls[i] += 1

    pollers = [threading.Thread(target=poll, args=(i,)) for i in range(2)]
    try:
        store.bound_wal()  # the log's own WAL
        before = store.wal_restarts
        for thread in pollers:
            thread.start()
        attempts = 0
        for _ in range(100):
            with store.write() as tx:
                tx.insert_decisions([(dataclasses.replace(d, decision_id=new_decision_id()), None, "acme")
                                     for d in routes])
            store.bound_wal()
            attempts += 1
        restarts, busy = store.wal_restarts - before, store.restart_busy
    finally:
        stop.set()
        for thread in pollers:
            thread.join()
        store.close()
    assert min(polls) >= 1  # both polled meanwhile
    assert restarts >= attempts // 4, (restarts, attempts)  # a restart each ~2 batches (8 decisions > 32 KiB / 2)
    assert not busy


def test_v1_stats_reads_the_log_in_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`GET /v1/stats` counts through `SQLiteStore.stats` (pages of `STATS_PAGE` decisions, each its own read), not
    one reader's `stats()` (one transaction for the whole log): every page is counted once, and the counts add up."""
    client = start_client(Settings(db=tmp_path / "api.db", seed=7))
    try:
        for i in range(40):
            assert client.post("/v1/route", json={"prompt": f"question {i}"}).status_code == 200
        pages: list[tuple[int, int] | None] = []
        add = sqlite_store._StatsSums.add

        def counted_add(self: Any, tx: Any, decisions: tuple[int, int] | None) -> None:
            pages.append(decisions)
            add(self, tx, decisions)

        monkeypatch.setattr(sqlite_store, "STATS_PAGE", 8)
        monkeypatch.setattr(sqlite_store._StatsSums, "add", counted_add)
        reply = client.get("/v1/stats")
    finally:
        client.__exit__(None, None, None)
    assert reply.status_code == 200, reply.text
    assert pages == [(start, start + 8) for start in range(0, 40, 8)]
    assert sum(m["decisions"] for m in reply.json()["models"]) == 40


def test_v1_stats_of_a_store_without_paged_stats_counts_in_one_read(tmp_path: Path) -> None:
    """`Store.stats` is optional, like `bound_wal` and `delete_old`: a store without it (another implementation of
    the interface) is counted by one reader's `stats()`; `GET /v1/stats` was a 500 (AttributeError) for it."""

    class WithoutStats:
        def __init__(self, store: Any) -> None:
            self._store = store

        def __getattr__(self, name: str) -> Any:
            if name == "stats":
                raise AttributeError(name)
            return getattr(self._store, name)

    client = start_client(Settings(db=tmp_path / "api.db", seed=7))
    try:
        for i in range(5):
            assert client.post("/v1/route", json={"prompt": f"question {i}"}).status_code == 200
        engine = client.app.state.engine  # type: ignore[attr-defined]
        store, engine.store = engine.store, WithoutStats(engine.store)
        try:
            reply = client.get("/v1/stats")
        finally:
            engine.store = store
    finally:
        client.__exit__(None, None, None)
    assert reply.status_code == 200, reply.text
    assert sum(m["decisions"] for m in reply.json()["models"]) == 5


def test_retention_between_two_stats_pages_takes_a_decisions_feedback_with_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention deleting between two pages of `SQLiteStore.stats`: feedback was paged by seq, decisions by rowid,
    and when fewer than all decisions have feedback the feedback pages run ahead, so a model whose few decisions
    retention deleted after the first page showed learned feedback and no decision (5 learned, 0 decisions). A page
    now counts its decisions and their feedback together: every model's learned feedback is at most its decisions,
    and the counts are those of the log's two states, page by page."""
    monkeypatch.setattr(sqlite_store, "STATS_PAGE", 100)
    store = SQLiteStore(tmp_path / "store.db")
    store.prepare()
    router = Router(seed=1)
    seq = 0

    def learned(d: Any) -> FeedbackRecord:
        nonlocal seq
        seq += 1
        return FeedbackRecord(
            decision_id=d.decision_id, received_at=d.created_at + 1, quality=0.8, cost_usd=None, input_tokens=None,
            output_tokens=None, latency_s=None, source="test", status="applied", learn=True, reward=0.8,
            realised_cost_usd=0.001, model=d.model, tenant="acme", seq=seq)

    try:
        with store.write() as tx:
            for i in range(150):  # rowids 1..150, one in 7 with feedback (seqs 1..22)
                d = router.route(Request(prompt=f"q {i}", models=["gpt-4o-mini", "gpt-4.1-nano"]))
                tx.insert_decisions([(d, None, "acme")])
                if i % 7 == 0:
                    tx.insert_feedback([learned(d)])
            for i in range(5):  # gpt-4o: rowids 151..155, seqs 23..27 (the first page of seqs)
                d = router.route(Request(prompt=f"x {i}", models=["gpt-4o"]))
                tx.insert_decisions([(d, None, "acme")])
                tx.insert_feedback([learned(d)])
            for i in range(300):
                d = router.route(Request(prompt=f"r {i}", models=["gpt-4o-mini", "gpt-4.1-nano"]))
                tx.insert_decisions([(d, None, "acme")])
            tx.insert_checkpoint(fingerprint="fp", seq=seq, event_id=0, version=1, sha256="x", state=b"", keep=3)
        read = SQLiteStore.read
        reads: list[int] = []
        deleted: list[int] = []

        @contextmanager
        def read_then_retention(self: SQLiteStore) -> Iterator[Any]:
            with read(self) as reader:
                yield reader
            reads.append(1)
            if len(reads) == 2:  # after the first page: one retention batch (the oldest fed decisions first)
                deleted.append(self.delete_old(time.time() + 60, 30, fingerprint="fp"))

        monkeypatch.setattr(SQLiteStore, "read", read_then_retention)
        paged = store.stats()
        monkeypatch.setattr(SQLiteStore, "read", read)
        with store.read() as reader:
            after = reader.stats()
    finally:
        store.close()
    assert deleted and deleted[0] > 0
    assert after.models.get("gpt-4o") is None  # retention took gpt-4o's decisions
    for name, model in paged.models.items():
        assert model.feedback <= model.decisions, (name, model)
    assert sum(paged.feedback_by_status.values()) == sum(m.feedback for m in paged.models.values())


def test_a_served_app_freezes_what_its_start_built(tmp_path: Path) -> None:
    """`serve` (`tune_process(app)`) freezes the collector's generations again once the start-up is done: the
    engine, the policies, the gateway and the named routers are kept out of every full collection for the life of
    the process (at 100 models and 30 named routers ≈ 89,000 objects, 50–130 ms a collection holding the GIL on the
    loaded 2-core machine). Before, the only freeze came before the start-up (found by ckpt24). The start's garbage
    is collected first, not frozen with it: frozen, it was kept for good (numba's compiles with a cold or read-only
    cache: 23,000–40,000 objects; found by review24ckpt)."""
    import gc
    import sys
    import weakref

    from fastapi.testclient import TestClient

    from bandit_router.service.app import create_app, tune_process

    class Cycle:
        me: object = None

    switch, enabled = sys.getswitchinterval(), gc.isenabled()
    app = create_app(Settings(db=tmp_path / "frozen.db", seed=7))
    try:
        tune_process(app)
        gc.disable()  # no collection of its own meanwhile: only the start's can free the garbage below
        garbage = Cycle()
        garbage.me = garbage  # start-up garbage: unreachable, freed only by a full collection
        dead = weakref.ref(garbage)
        del garbage
        with TestClient(app):
            engine = app.state.engine  # type: ignore[attr-defined]
            assert gc.is_tracked(engine) and not any(o is engine or o is engine.router for o in gc.get_objects())
            gc.collect()
            assert dead() is None, "the start's garbage was frozen for the life of the process"
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()
        sys.setswitchinterval(switch)
