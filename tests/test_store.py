"""The store contract on both backends (SQLite and a real PostgreSQL server, `store` is parametrized): schema,
round trips, the feedback log's invariants, checkpoints. SQLite-only and PostgreSQL-only tests follow."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandit_router.catalog import ModelSpec
from bandit_router.log.escalations import chain_document
from bandit_router.router import Router
from bandit_router.store import (
    SCHEMA_VERSION,
    CallRecord,
    FeedbackRecord,
    JudgeCall,
    SQLiteStore,
    Store,
    StoreError,
    decode_features,
    encode_features,
    safe_text,
)
from bandit_router.store.location import DatabaseURL
from bandit_router.store.postgres import PostgresStore
from bandit_router.types import Decision, Request


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s: Store = SQLiteStore(tmp_path / "store.db")
    else:
        s = PostgresStore(DatabaseURL(request.getfixturevalue("pg_url")))
    s.prepare()
    yield s
    s.close()


def _raw(store: Store, sql: str) -> None:
    """Run `sql` on the store's database behind its back (as an operator or another program would)."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as conn:
            conn.execute(sql)
    else:
        assert isinstance(store, PostgresStore)
        with psycopg.connect(store.url.reveal(), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(seed=3)


def _decision(router: Router, prompt: str = "Explain SQLite WAL mode", **context: str | int) -> Decision:
    return router.route(Request(prompt=prompt, context=context))


def _record(
    decision: Decision, seq: int, *, quality: float = 0.5, learn: bool = True, status: str = "applied"
) -> FeedbackRecord:
    return FeedbackRecord(
        decision_id=decision.decision_id, received_at=time.time(), quality=quality, cost_usd=None, input_tokens=None,
        output_tokens=120, latency_s=0.8, source="test", status=status, learn=learn, reward=quality,
        realised_cost_usd=0.0001, model=decision.model, tenant=None, seq=seq,
    )


def test_prepare_creates_a_wal_database_once(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    s = SQLiteStore(path)
    s.prepare()
    s.prepare()  # idempotent
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"decisions", "feedback", "model_events", "checkpoints", "meta", "calls", "chains",
                "router_stats", "judge_calls"} <= tables
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        assert version == "9" == str(SCHEMA_VERSION)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match="schema version"):
        SQLiteStore(path).prepare()


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError):
        SQLiteStore(path).prepare()


def test_decisions_round_trip(store: Store, router: Router) -> None:
    decisions = [_decision(router, f"prompt {i} with some words", tenant="acme", n=i) for i in range(5)]
    with store.write() as tx:
        assert tx.insert_decisions([(d, "the prompt" if i == 0 else None, "acme") for i, d in enumerate(decisions)])
    with store.read() as reader:
        loaded = reader.decisions([d.decision_id for d in decisions] + ["missing"])
        one = reader.decision(decisions[0].decision_id)
        info = reader.decision_info(decisions[1].decision_id)
    assert set(loaded) == {d.decision_id for d in decisions}
    for original in decisions:
        back = loaded[original.decision_id].decision
        assert back.to_json() | {"context": None} == original.to_json() | {"context": None}
        assert back.context.same_features(original.context)
        assert dict(back.context.attributes) == dict(original.context.attributes)
    assert one is not None and one.prompt == "the prompt" and one.tenant == "acme"
    assert info is not None and info.model == decisions[1].model and info.input_tokens > 0


def test_taken_ids_are_not_written(store: Store, router: Router) -> None:
    a = router.route(Request(prompt="a", decision_id="same"))
    b = router.route(Request(prompt="b", decision_id="same"))
    c = router.route(Request(prompt="c", decision_id="other"))
    with store.write() as tx:
        assert tx.insert_decisions([(a, None, None), (b, None, None), (c, None, None)]) == [True, False, True]
    d = router.route(Request(prompt="d", decision_id="other"))
    e = router.route(Request(prompt="e"))
    with store.write() as tx:
        assert tx.insert_decisions([(d, None, None), (e, None, None)]) == [False, True]
    with store.read() as reader:
        stored = reader.decision("same")
    assert stored is not None and stored.decision.model == a.model and stored.decision.pmf == a.pmf
    with store.read() as reader:
        other = reader.decision("other")
    assert other is not None and other.decision.created_at == c.created_at


def test_feedback_seq_increases_and_only_one_row_per_decision_is_learned(store: Store, router: Router) -> None:
    decisions = [_decision(router, f"q{i}") for i in range(3)]
    with store.write() as tx:
        tx.insert_decisions([(d, None, None) for d in decisions])
        assert tx.head() == (0, 0)
        tx.insert_feedback([_record(d, i + 1) for i, d in enumerate(decisions)])
        tx.insert_feedback([_record(decisions[0], 4, quality=0.1, learn=False, status="late")])
        assert tx.head() == (4, 0)
    integrity = (sqlite3.IntegrityError, psycopg.IntegrityError)
    with pytest.raises(StoreError, match=r"(?i)unique") as error, store.write() as tx:  # a second learned row
        tx.insert_feedback([_record(decisions[0], 5, quality=0.9)])
    assert isinstance(error.value.__cause__, integrity)  # the driver's error, wrapped
    with pytest.raises(StoreError, match=r"(?i)unique|duplicate key") as error, store.write() as tx:  # a seq again
        tx.insert_feedback([_record(decisions[1], 4, learn=False, status="late")])
    assert isinstance(error.value.__cause__, integrity)
    with store.read() as reader:
        assert reader.head() == (4, 0)
        learned = reader.learned_after(0, 10)
        assert [r.seq for r, _ in learned] == [1, 2, 3]
        assert [d.decision_id for _, d in learned] == [d.decision_id for d in decisions]
        assert [r.seq for r, _ in reader.learned_after(1, 1)] == [2]
        many = reader.feedback_for_many([decisions[0].decision_id, decisions[1].decision_id])
        assert [r.status for r in many[decisions[0].decision_id]] == ["applied", "late"]
        assert reader.feedback_for(decisions[2].decision_id)[0].outcome().output_tokens == 120


def test_model_events_are_placed_after_the_feedback_before_them(store: Store, router: Router) -> None:
    d = _decision(router)
    spec = ModelSpec("added", 0.1, 0.2, tags={"tier": "small"})
    with store.write() as tx:
        first = tx.insert_model_event("add", spec.name, spec)
        tx.insert_decisions([(d, None, None)])
        tx.insert_feedback([_record(d, 1)])
        second = tx.insert_model_event("retire", spec.name, None)
    assert (first.after_seq, second.after_seq) == (0, 1)
    with store.read() as reader:
        events = reader.model_events_after(0)
    assert [(e.action, e.spec) for e in events] == [("add", spec), ("retire", None)]


def test_checkpoints_are_kept_newest_first_and_pruned(store: Store) -> None:
    with store.write() as tx:
        for seq in (10, 20, 30, 40):
            assert tx.insert_checkpoint(fingerprint="f", seq=seq, event_id=0, version=seq, sha256="x",
                                        state=bytes([seq]), keep=3)
        assert not tx.insert_checkpoint(fingerprint="f", seq=40, event_id=0, version=40, sha256="x", state=b"",
                                        keep=3)
    with store.read() as reader:
        kept = reader.checkpoints("f")
        assert [c.seq for c in kept] == [40, 30, 20]
        assert reader.checkpoint_state(kept[0].id) == bytes([40])


def test_a_checkpoint_in_parts_is_seen_only_with_its_row_and_its_parts_go_with_it(store: Store) -> None:
    """A state written in parts (`insert_checkpoint_part`, one transaction each) is read back whole once its row
    names them, and not listed before; a row whose parts are missing is refused (`StoreError`); a second row at
    the same position (another process's save) stores nothing and deletes its parts; pruning deletes the pruned
    checkpoints' parts; parts no row names are deleted only once older than `ABANDONED_AFTER_S`."""

    def parts(token: str, data: bytes, size: int = 4) -> int:
        pieces = [data[i : i + size] for i in range(0, len(data), size)]
        for n, piece in enumerate(pieces):
            with store.write() as tx:
                tx.insert_checkpoint_part(token, n, piece)
        return len(pieces)

    def row(seq: int, token: str, count: int, keep: int = 2) -> bool:
        with store.write() as tx:
            return tx.insert_checkpoint(fingerprint="f", seq=seq, event_id=0, version=seq, sha256="x", state=b"",
                                        keep=keep, parts=(token, count))

    def tokens() -> set[str]:
        if isinstance(store, SQLiteStore):
            with sqlite3.connect(store.path) as conn:
                return {r[0] for r in conn.execute("SELECT DISTINCT token FROM checkpoint_parts")}
        with store.read() as reader:
            return {r[0] for r in reader._rows("SELECT DISTINCT token FROM checkpoint_parts")}  # type: ignore[attr-defined]

    count = parts("a", b"the state of ten")
    with store.read() as reader:
        assert reader.checkpoints("f") == []  # its parts alone are no checkpoint
    with pytest.raises(StoreError, match="parts missing: 4 of 5"):
        row(10, "a", 5)
    assert row(10, "a", count)
    with store.read() as reader:
        assert reader.checkpoint_state(reader.checkpoints("f")[0].id) == b"the state of ten"
    assert not row(10, "b", parts("b", b"same position"))  # stored by another process first
    assert tokens() == {"a"}
    parts("abandoned", b"a save that died")
    assert row(20, "c", parts("c", b"twenty"))
    assert row(30, "d", parts("d", b"thirty"))  # keep = 2: ten goes, and its parts
    assert tokens() == {"c", "d", "abandoned"}  # too young to tell from a save under way
    with store.read() as reader:
        assert [reader.checkpoint_state(c.id) for c in reader.checkpoints("f")] == [b"thirty", b"twenty"]
    module = "bandit_router.store.sqlite" if isinstance(store, SQLiteStore) else "bandit_router.store.postgres"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(f"{module}.ABANDONED_AFTER_S", -1.0)
        assert row(40, "e", parts("e", b"forty"))
    assert tokens() == {"d", "e"}


def test_parts_a_row_does_not_keep_go_with_it_and_named_parts_are_never_deleted_as_given_up(store: Store) -> None:
    """A checkpoint in parts stored behind the newest `keep` (another process stored newer ones during its save) is
    pruned by its own insert: its parts go with it (they stayed until `ABANDONED_AFTER_S` had passed). Parts a row
    names are not deleted by `delete_checkpoint_parts` (a save given up on `CommitOutcomeUnknown` whose row had
    committed: deleting them broke the newest checkpoint)."""

    def saved(seq: int, token: str, keep: int = 1) -> bool:
        with store.write() as tx:
            tx.insert_checkpoint_part(token, 0, token.encode())
        with store.write() as tx:
            return tx.insert_checkpoint(fingerprint="f", seq=seq, event_id=0, version=seq, sha256="x", state=b"",
                                        keep=keep, parts=(token, 1))

    def tokens() -> set[str]:
        with store.write() as tx:
            return {str(r[0]) for r in tx.conn.execute("SELECT DISTINCT token FROM checkpoint_parts")}  # type: ignore[attr-defined]

    assert saved(30, "newer")
    assert saved(20, "older")  # stored, and pruned at once by keep = 1
    with store.read() as reader:
        assert [c.seq for c in reader.checkpoints("f")] == [30]
    assert tokens() == {"newer"}
    with store.write() as tx:
        tx.delete_checkpoint_parts("newer")  # named by the row at 30: kept
    with store.read() as reader:
        assert reader.checkpoint_state(reader.checkpoints("f")[0].id) == b"newer"
    with store.write() as tx:
        tx.insert_checkpoint_part("given-up", 0, b"x")
    with store.write() as tx:
        tx.delete_checkpoint_parts("given-up")
    assert tokens() == {"newer"}


def test_retention_deletes_the_parts_of_the_checkpoints_it_prunes(store: Store) -> None:
    """Retention prunes another configuration that stored no checkpoint since its cutoff to its newest checkpoint
    (`OTHER_CONFIGURATIONS_OLD`), and the pruned ones' parts go in the same transaction; the kept ones' parts, the
    running configuration's, and young parts no row names (a save under way) stay. Before, those parts stayed until
    the next checkpoint stored, for good while none was: a service idle or withholding checkpoints (at 100 models,
    21 MB for each pruned checkpoint)."""

    def saved(fingerprint: str, seq: int, token: str) -> None:
        with store.write() as tx:
            tx.insert_checkpoint_part(token, 0, token.encode())
            tx.insert_checkpoint_part(token, 1, b"!")
        with store.write() as tx:
            tx.insert_checkpoint(fingerprint=fingerprint, seq=seq, event_id=0, version=seq, sha256="x", state=b"",
                                 keep=3, parts=(token, 2))

    def tokens() -> set[str]:
        with store.write() as tx:
            return {str(r[0]) for r in tx.conn.execute("SELECT DISTINCT token FROM checkpoint_parts")}  # type: ignore[attr-defined]

    saved("other", 1, "other-1")
    saved("other", 2, "other-2")
    saved("running", 3, "running-3")
    with store.write() as tx:
        tx.insert_checkpoint_part("under-way", 0, b"a save of another process")
    store.delete_old(time.time() + 60, 1000, fingerprint="running")  # type: ignore[attr-defined]
    with store.read() as reader:
        assert [c.seq for c in reader.checkpoints("other")] == [2]
        assert reader.checkpoint_state(reader.checkpoints("other")[0].id) == b"other-2!"
        assert reader.checkpoint_state(reader.checkpoints("running")[0].id) == b"running-3!"
    assert tokens() == {"other-2", "running-3", "under-way"}


def test_postgres_ages_checkpoint_parts_on_the_servers_clock(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicas' clocks differ: a part's age is read on the database server's clock. Before, a replica whose clock was
    an hour ahead deleted another replica's save under way as abandoned with each checkpoint it stored (that save's
    row then refused: "checkpoint parts missing"), and a replica an hour behind kept abandoned parts an hour more."""
    import bandit_router.store.postgres as module

    class Skewed:
        def __init__(self, by: float) -> None:
            self.by = by

        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        def time(self) -> float:
            return time.time() + self.by

    store = PostgresStore(DatabaseURL(pg_url))
    store.prepare()
    try:
        with store.write() as tx:
            tx.insert_checkpoint_part("theirs", 0, b"a save under way")
        monkeypatch.setattr(module, "time", Skewed(3600.0))  # this replica's clock: an hour ahead
        with store.write() as tx:
            tx.insert_checkpoint(fingerprint="f", seq=1, event_id=0, version=1, sha256="x", state=b"1", keep=1)
        with store.read() as reader:
            assert [r[0] for r in reader._rows("SELECT token FROM checkpoint_parts")] == ["theirs"]  # type: ignore[attr-defined]
    finally:
        store.close()


def test_other_configurations_checkpoints_are_pruned_to_keep_then_by_retention_to_their_newest(
    store: Store, router: Router
) -> None:
    """Checkpoints of other configurations (another policy, settings or catalog: another fingerprint) are pruned to
    `keep` by a checkpoint stored, as the running one's are. They were pruned to their newest one: with replicas of
    two configurations side by side (a canary), each one's checkpoint left the other one checkpoint, no fallback for
    its starts and a retention bound (its oldest checkpoint's seq) at its newest. Retention prunes a configuration
    that stored none since its cutoff to its newest and never deletes that: it deleted a quiet configuration's only
    checkpoint. `checkpoint_count` counts every configuration's."""

    def store_checkpoints(fingerprint: str, seqs: tuple[int, ...], keep: int = 3) -> None:
        with store.write() as tx:
            for seq in seqs:
                tx.insert_checkpoint(fingerprint=fingerprint, seq=seq, event_id=0, version=seq, sha256="x",
                                     state=bytes([seq]), keep=keep)

    def kept(fingerprint: str) -> list[int]:
        with store.read() as reader:
            return [c.seq for c in reader.checkpoints(fingerprint)]

    with store.read() as reader:
        assert reader.checkpoint_count() == 0
    store_checkpoints("older", (3, 5, 7, 9))
    store_checkpoints("canary", (10, 20, 30))
    assert kept("older") == [9, 7, 5] and kept("canary") == [30, 20, 10]
    store_checkpoints("f", (35,))  # side by side: the canary keeps its three
    assert kept("canary") == [30, 20, 10] and kept("f") == [35]
    store_checkpoints("canary", (40,))
    store_checkpoints("f", (45, 50), keep=2)  # the others pruned to keep as well
    assert kept("f") == [50, 45] and kept("canary") == [40, 30] and kept("older") == [9, 7]
    with store.read() as reader:
        assert reader.checkpoint_state(reader.checkpoints("canary")[0].id) == bytes([40])
    _raw(store, f"UPDATE checkpoints SET created_at = {time.time() - 40 * 86400} WHERE fingerprint = 'older'")
    with store.write() as tx:
        tx.insert_decisions([(_decision(router, "the newest stays"), None, None)])
    store.delete_old(time.time() - 30 * 86400, 1000, fingerprint="f")  # type: ignore[attr-defined]
    assert kept("older") == [9] and kept("canary") == [40, 30] and kept("f") == [50, 45]
    _raw(store, f"UPDATE checkpoints SET created_at = {time.time() - 40 * 86400} WHERE seq = 30")
    store.delete_old(time.time() - 30 * 86400, 1000, fingerprint="f")  # type: ignore[attr-defined]
    assert kept("canary") == [40, 30]  # it stored one since the cutoff: still running
    _raw(store, f"UPDATE checkpoints SET created_at = {time.time() - 40 * 86400} WHERE fingerprint <> 'f'")
    store.delete_old(time.time() - 30 * 86400, 1000, fingerprint="f")  # type: ignore[attr-defined]
    assert kept("older") == [9] and kept("canary") == [40]  # a quiet configuration keeps its newest
    with store.read() as reader:
        assert reader.checkpoint_count() == 4  # every configuration's (what a start without one of its own says)


def test_stats_count_from_the_tables(store: Store, router: Router) -> None:
    decisions = [_decision(router, f"s{i}") for i in range(4)]
    with store.write() as tx:
        tx.insert_decisions([(d, None, None) for d in decisions])
        tx.insert_feedback([_record(decisions[0], 1, quality=0.4), _record(decisions[1], 2, quality=0.8),
                            _record(decisions[2], 3, learn=False, status="late")])
    with store.read() as reader:
        stats = reader.stats()
    assert sum(m.decisions for m in stats.models.values()) == 4
    assert sum(m.feedback for m in stats.models.values()) == 2
    assert stats.feedback_by_status == {"applied": 2, "late": 1}


def test_a_failed_transaction_writes_nothing(store: Store, router: Router) -> None:
    d = _decision(router)
    with pytest.raises(RuntimeError), store.write() as tx:
        tx.insert_decisions([(d, None, None)])
        raise RuntimeError("boom")
    with store.read() as reader:
        assert reader.decision(d.decision_id) is None


def test_maintain_checkpoints_the_wal(store: Store, router: Router) -> None:
    with store.write() as tx:
        tx.insert_decisions([(_decision(router, f"w{i}"), None, None) for i in range(50)])
    store.maintain()
    with store.read() as reader:
        assert reader.head() == (0, 0)


_WRITER_PROCESS = """
import sys, time
from pathlib import Path
from bandit_router.store import SQLiteStore, StoreError
path, name, start = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
store = SQLiteStore(path, busy_timeout_s=0.0)  # SQLite's busy handler never waits: a taken lock is an error
failed = 0
while time.time() < start:
    time.sleep(0.001)
for i in range(200):
    try:
        with store.write() as tx:
            tx.set_meta(name, str(i))
            time.sleep(0.0005)  # hold the lock a little, so that the two processes' transactions overlap
    except StoreError:
        failed += 1
store.close()
print(failed)
"""


def test_writers_of_two_processes_queue_for_the_write_lock(tmp_path: Path) -> None:
    """The writers of two processes take turns (`store/writelock.py`): with SQLite's busy timeout at 0, a
    transaction that found SQLite's write lock taken would fail at once; queued on the lock file, none does."""
    db = tmp_path / "shared.db"
    SQLiteStore(db).prepare()
    start = time.time() + 1.0
    children = [
        subprocess.Popen([sys.executable, "-c", _WRITER_PROCESS, str(db), name, str(start)], stdout=subprocess.PIPE,
                         text=True)
        for name in ("a", "b")
    ]
    failed = [int(child.communicate(timeout=120)[0]) for child in children]
    assert [child.returncode for child in children] == [0, 0]
    assert failed == [0, 0]
    with sqlite3.connect(db) as conn:
        assert dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('a', 'b')").fetchall()) == {
            "a": "199", "b": "199"}


_ARRAYS = st.lists(st.tuples(st.integers(0, 2**32 - 1), st.floats(-1e6, 1e6, width=32)), max_size=50)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from("wlmtc"), _ARRAYS, max_size=5))
def test_features_codec_round_trips(namespaces: dict[str, list[tuple[int, float]]]) -> None:
    features = {
        ns: (np.array([i for i, _ in pairs], dtype=np.uint32), np.array([v for _, v in pairs], dtype=np.float32))
        for ns, pairs in namespaces.items()
    }
    back = decode_features(encode_features(features))
    assert list(back) == list(features)
    for ns, (idx, val) in features.items():
        assert np.array_equal(back[ns][0], idx) and np.array_equal(back[ns][1], val)
        assert back[ns][0].dtype == np.uint32 and back[ns][1].dtype == np.float32


@settings(max_examples=60, deadline=None)
@given(st.text())
def test_any_text_can_be_stored(text: str) -> None:
    cleaned = safe_text(text)
    cleaned.encode("utf-8")  # never raises
    assert len(cleaned) == len(text) and "\x00" not in cleaned  # PostgreSQL's text refuses NUL
    if not any(0xD800 <= ord(c) <= 0xDFFF or c == "\x00" for c in text):
        assert cleaned == text


def test_a_tenant_no_store_can_hold_is_stored_as_u_fffd_in_decisions_and_judge_calls(
    store: Store, router: Router
) -> None:
    """A judge call's tenant is the scored decision's as the request gave it: a lone surrogate (SQLite cannot encode
    it) or a NUL (PostgreSQL's text refuses it) failed the write transaction, the judge call's and every other
    operation's of its batch. Both tables keep U+FFFD in their place, as `decisions` does."""
    tenants = ["a\ud800", "b\x00", "plain"]
    decisions = [_decision(router, f"judged {t}", tenant=t) for t in tenants]
    with store.write() as tx:
        tx.insert_decisions([(d, None, t) for d, t in zip(decisions, tenants, strict=True)])
        tx.insert_judge_calls([JudgeCall(d.decision_id, t, "judge", 10, 2, 1e-6, time.time())
                               for d, t in zip(decisions, tenants, strict=True)])
    expected = ["a\ufffd", "b\ufffd", "plain"]
    with store.read() as reader:
        assert [call.tenant for _, call in reader.judge_calls_after(0, 10)] == expected
        stored = reader.decisions([d.decision_id for d in decisions])
        assert [stored[d.decision_id].tenant for d in decisions] == expected


def test_head_remembers_seqs_of_deleted_rows(store: Store, router: Router) -> None:
    d = _decision(router)
    with store.write() as tx:
        tx.insert_decisions([(d, None, None)])
        tx.insert_feedback([_record(d, 1), _record(d, 2, learn=False, status="late")])
    _raw(store, "DELETE FROM feedback WHERE seq = 2")
    with store.read() as reader:
        assert reader.head() == (2, 0)  # a new row gets 3: a seq is never reused


def test_reward_window_walk_stops_at_the_first_open_decision(store: Store, router: Router) -> None:
    decisions = [_decision(router, f"walk {i}") for i in range(4)]
    with store.write() as tx:
        tx.insert_decisions([(d, None, None) for d in decisions])
        tx.insert_feedback([_record(decisions[1], 1)])
        closing, position = tx.decisions_closing(0, decisions[2].created_at, 100)
        assert [i.decision_id for i in closing] == [decisions[0].decision_id, decisions[2].decision_id]
        assert position == 3 and tx.last_decision_position() == 4
        assert tx.decisions_closing(position, time.time(), 100) == ([tx.decision_info(decisions[3].decision_id)], 4)


def test_a_version_1_database_without_shadow_pmfs_migrates(tmp_path: Path) -> None:
    """Databases written before the migration list existed (schema version 1, no `shadow_pmfs`) get migration 2."""
    from bandit_router.store import MIGRATIONS

    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        for statement in MIGRATIONS[0].statements:
            conn.execute(statement)
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
    SQLiteStore(path).prepare()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'shadow_pmfs'").fetchone() is not None


def test_a_newer_schema_is_refused(store: Store) -> None:
    _raw(store, f"UPDATE meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version"):
        store.prepare()


class _PrunedAfterListing:
    """`store`, whose readers call `meanwhile()` once, right after the first checkpoint listing: another process
    storing a checkpoint there, while the reading transaction is open."""

    def __init__(self, store: Store, meanwhile: Any) -> None:
        self.store, self.meanwhile = store, meanwhile

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    @contextmanager
    def read(self) -> Iterator[Any]:
        outer = self

        class Listing:
            def __getattr__(self, name: str) -> Any:
                return getattr(reader, name)

            def checkpoints(self, fingerprint: str) -> Any:
                found = reader.checkpoints(fingerprint)
                if outer.meanwhile is not None:
                    meanwhile, outer.meanwhile = outer.meanwhile, None
                    meanwhile()
                return found

        with self.store.read() as reader:
            yield Listing()


def test_a_checkpoint_pruned_by_another_process_after_listing_is_still_restored(
        store: Store, router: Router, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With `checkpoints_kept = 1`, a start (`restore_newest`) listed the checkpoints in one read and read each one's
    state in another: another replica storing a newer checkpoint in between pruned the listed one, whose state
    read as empty, so the start warned that it "fails its checksum" (a false alarm of corruption) and, no older
    one being kept, replayed the whole log. Listing and reading are one snapshot now: the listed checkpoint is
    restored. Two stores on one database (SQLite and PostgreSQL); the other replica writes right after the
    listing, inside the reading transaction."""
    from bandit_router.config import Settings
    from bandit_router.log import Checkpointer, LogFollower, PolicySet

    settings = Settings(db=tmp_path / "unused.db", seed=1, checkpoints_kept=1)  # the checkpoints' fingerprint
    decisions = [_decision(router, f"logged {i}") for i in range(5)]
    with store.write() as tx:  # a log that reaches both checkpoints' positions (one past its end is passed over)
        tx.insert_decisions([(d, None, None) for d in decisions])
        tx.insert_feedback([_record(d, i + 1) for i, d in enumerate(decisions)])
    other = SQLiteStore(store.path) if isinstance(store, SQLiteStore) else PostgresStore(store.url)
    try:
        def checkpoint_at(on: Store, seq: int) -> None:
            follower = LogFollower(PolicySet(settings))
            follower.applied_seq = follower.chain_seq = seq
            assert Checkpointer(on, settings, follower).maybe_checkpoint(force=True)

        checkpoint_at(store, 3)
        starting = LogFollower(PolicySet(settings))
        hooked = _PrunedAfterListing(store, lambda: checkpoint_at(other, 5))
        caplog.set_level(logging.WARNING, logger="bandit_router.log")
        restored = Checkpointer(hooked, settings, starting).restore_newest()  # type: ignore[arg-type]
        assert restored is not None and restored.seq == 3, caplog.text
        assert starting.applied_seq == 3 and "checksum" not in caplog.text
        with store.read() as reader:  # the other replica's checkpoint is the one kept
            assert [ck.seq for ck in reader.checkpoints(Checkpointer(store, settings, starting).fingerprint)] == [5]
    finally:
        other.close()


# -- PostgreSQL only -------------------------------------------------------------------------------------------
def _pg(pg_url: str) -> PostgresStore:
    s = PostgresStore(DatabaseURL(pg_url))
    s.prepare()
    return s


def test_a_url_with_an_unencoded_at_in_its_password_is_refused_without_showing_it() -> None:
    """libpq ends a URL's user info at its first '@': with `p@ss` as the password it tried the host `ss@db` and
    said so, and the mask (which stops at an '@' too) showed `u:***@ss@db`: part of the password was in the error and
    in the URL as shown. Refused, as a blank is, with how to write it (review of 41f7cfe)."""
    with pytest.raises(ValueError, match="percent-encode it") as refused:
        DatabaseURL("postgresql://router:p@ss@db.internal:5432/routing")
    assert "ss@" not in str(refused.value)
    encoded = DatabaseURL("postgresql://router:p%40ss@db.internal:5432/routing")
    assert str(encoded) == "postgresql://router:***@db.internal:5432/routing"


def test_postgres_records_its_migrations(pg_url: str) -> None:
    s = _pg(pg_url)
    try:
        s.prepare()  # idempotent
        assert s.schema_version() == SCHEMA_VERSION
        with psycopg.connect(pg_url) as conn:
            tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"decisions", "feedback", "model_events", "checkpoints", "meta", "shadow_pmfs", "log_head"} <= tables
    finally:
        s.close()


def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    stores = [PostgresStore(DatabaseURL(pg_url)) for _ in range(4)]
    errors: list[BaseException] = []

    def prepare(s: PostgresStore) -> None:
        try:
            s.prepare()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=prepare, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(s.schema_version() == SCHEMA_VERSION for s in stores)
    for s in stores:
        s.close()


def test_two_writers_number_one_log_and_a_rollback_leaves_no_gap(pg_url: str, router: Router) -> None:
    """Two stores (two replicas) on one database: the second writer waits for the first's lock; a transaction that
    rolls back gives its seqs to the next writer, and no reader ever sees a later seq before an earlier one."""
    a, b, reader_store = _pg(pg_url), _pg(pg_url), _pg(pg_url)
    decisions = [_decision(router, f"two writers {i}") for i in range(3)]
    with a.write() as tx:
        tx.insert_decisions([(d, None, None) for d in decisions])
    holding, release = threading.Event(), threading.Event()
    seen_by_b: list[int] = []

    def slow_writer_that_rolls_back() -> None:
        with pytest.raises(RuntimeError), a.write() as tx:
            head = tx.head()[0]
            tx.insert_feedback([_record(decisions[0], head + 1)])
            holding.set()
            release.wait(10)
            raise RuntimeError("rolled back")

    def second_writer() -> None:
        with b.write() as tx:
            head = tx.head()[0]
            seen_by_b.append(head)
            tx.insert_feedback([_record(decisions[1], head + 1)])

    slow = threading.Thread(target=slow_writer_that_rolls_back)
    slow.start()
    assert holding.wait(10)
    second = threading.Thread(target=second_writer)
    second.start()
    time.sleep(0.3)
    assert seen_by_b == []  # waiting for the lock
    with reader_store.read() as reader:
        assert reader.head() == (0, 0) and reader.learned_after(0, 10) == []
    release.set()
    slow.join(10)
    second.join(10)
    assert seen_by_b == [0]  # the rolled-back seq 1 is reused: no gap
    with b.write() as tx:
        tx.insert_feedback([_record(decisions[2], tx.head()[0] + 1)])
    with reader_store.read() as reader:
        learned = reader.learned_after(0, 10)
        assert [r.seq for r, _ in learned] == [1, 2]
        assert [d.decision_id for _, d in learned] == [decisions[1].decision_id, decisions[2].decision_id]
    for s in (a, b, reader_store):
        s.close()


def test_postgres_errors_are_store_errors_without_the_password(pg_server: Any) -> None:
    from tools.pg_server import PASSWORD

    wrong_port = pg_server.url("postgres").replace(f":{pg_server.port}/", ":1/")
    s = PostgresStore(DatabaseURL(wrong_port), timeout_s=1.0)
    with pytest.raises(StoreError) as error:
        s.prepare()
    assert PASSWORD not in str(error.value) and "***" in str(error.value)
    with pytest.raises(StoreError) as error, s.read() as reader:
        reader.head()
    assert PASSWORD not in str(error.value)
    with pytest.raises(StoreError) as error, s.write() as tx:
        tx.head()
    assert PASSWORD not in str(error.value)
    s.close()
    assert PASSWORD not in str(s) and PASSWORD not in repr(DatabaseURL(wrong_port))


def test_postgres_restart_is_a_store_error_then_recovers_by_itself(pg_server: Any, pg_url: str,
                                                                    router: Router) -> None:
    s = _pg(pg_url)
    d = _decision(router, "survives a restart")
    with s.write() as tx:
        tx.insert_decisions([(d, None, None)])
    with s.read() as reader:  # a pooled reader connection exists
        assert reader.decision(d.decision_id) is not None
    pg_server.restart()
    # the stale connections are replaced without an error reaching the caller
    with s.write() as tx:
        tx.insert_feedback([_record(d, tx.head()[0] + 1)])
    with s.read() as reader:
        assert reader.head() == (1, 0)
    s.close()


def test_without_postgres_a_developer_skips_and_ci_fails() -> None:
    from conftest import require_postgres

    require_postgres(True, {"CI": "true"})  # installed: nothing to say
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_postgres(False, {})
    with pytest.raises(pytest.fail.Exception, match="CI: PostgreSQL is not installed"):
        require_postgres(False, {"CI": "true"})


def test_a_replica_lost_while_holding_the_lock_stalls_the_others_only_briefly(pg_url: str, router: Router) -> None:
    """(Timeouts shortened from 10 s.) A writer waits `lock_timeout` at most, then gets a StoreError (503); the
    holder, idle in its transaction past `idle_in_transaction_session_timeout`, is cut off by PostgreSQL, its
    transaction rolled back (never acknowledged), and the others write again."""
    lost = PostgresStore(DatabaseURL(pg_url), idle_timeout_ms=1500)
    other = PostgresStore(DatabaseURL(pg_url), lock_timeout_ms=300)
    lost.prepare()
    d = _decision(router, "held by a lost replica")
    with pytest.raises(StoreError), lost.write() as tx:
        tx.insert_decisions([(d, None, None)])
        with pytest.raises(StoreError, match="lock"), other.write():
            pass  # waits 0.3 s for the lock, then gives up
        time.sleep(2.0)  # the lost replica stays silent inside its transaction
    with other.write() as tx:
        assert tx.decision(d.decision_id) is None  # rolled back
        tx.insert_decisions([(d, None, None)])
    with lost.write() as tx:  # the cut-off replica reconnects by itself
        assert tx.decision(d.decision_id) is not None
    lost.close()
    other.close()


def test_call_records_round_trip_and_a_second_replaces_the_first(store: Store, router: Router) -> None:
    decision = _decision(router, "call me", n=0)
    with store.write() as tx:
        tx.insert_decisions([(decision, None, None)])
    record = CallRecord(
        decision_id=decision.decision_id, request_id=decision.decision_id, attempt=1, model=decision.model,
        routed=True, stream=False, status="timeout", http_status=None, input_tokens=None, output_tokens=None,
        usage=None, cost_usd=None, ttft_s=None, latency_s=2.5, error="m: no answer within 2.5 s", created_at=1.0,
    )
    with store.write() as tx:
        tx.insert_calls([record])
    answered = dataclasses.replace(record, status="ok", input_tokens=12, output_tokens=30, usage="upstream",
                                   cost_usd=1e-5, ttft_s=0.1, latency_s=0.4, error=None, stream=True)
    with store.write() as tx:
        tx.insert_calls([answered])
    with store.read() as reader:
        assert reader.calls_for_many([decision.decision_id, "other"]) == {decision.decision_id: answered}
        assert reader.calls_for_many([]) == {}


def test_an_upstreams_words_no_store_can_hold_are_stored_as_u_fffd_in_call_records(
    store: Store, router: Router
) -> None:
    """A call record's `error` holds an upstream's words (the message of its mid-stream error event): a lone
    surrogate (SQLite cannot encode it) or a NUL (PostgreSQL's text refuses it) failed the write transaction, every
    request's writes batched with it. The record keeps U+FFFD in their place, the plain record beside it is stored,
    and a chain whose calls hold such words keeps them exactly (ASCII JSON, escaped)."""
    decisions = [_decision(router, f"words {i}", n=i) for i in range(3)]
    with store.write() as tx:
        tx.insert_decisions([(d, None, None) for d in decisions])
    chain = chain_document({"calls": [{"model": "cheap", "error": "cut \ud800 \x00 here"}]}, [])
    records = [CallRecord(
        decision_id=d.decision_id, request_id=d.decision_id, attempt=1, model=d.model, routed=True, stream=True,
        status="server_error", http_status=200, input_tokens=None, output_tokens=None, usage=None, cost_usd=None,
        ttft_s=0.1, latency_s=0.2, error=error, created_at=1.0, chain=chain,
    ) for d, error in zip(decisions, ["m: bad \ud800 half", "m: nul \x00 here", "m: plain"], strict=True)]
    with store.write() as tx:
        tx.insert_calls(records)
    with store.read() as reader:
        stored = reader.calls_for_many([d.decision_id for d in decisions])
    assert [stored[d.decision_id].error for d in decisions] == ["m: bad \ufffd half", "m: nul \ufffd here", "m: plain"]
    assert all(stored[d.decision_id].chain_json() == json.loads(chain) for d in decisions)
    assert json.loads(chain)["calls"][0]["error"] == "cut \ud800 \x00 here"


def _same_stored(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two `{id: StoredDecision}` maps hold the same values (the features compared as their encoded bytes)."""
    def flat(stored: Any) -> tuple[Any, ...]:
        d, c = stored.decision, stored.decision.context
        return (stored.prompt, stored.tenant, encode_features(c.features),
                *(getattr(d, f.name) for f in dataclasses.fields(d) if f.name != "context"),
                *(getattr(c, f.name) for f in dataclasses.fields(c) if f.name != "features"))
    return a.keys() == b.keys() and all(flat(a[k]) == flat(b[k]) for k in a)


def test_the_reads_of_a_feedback_batch_in_one_query_are_the_three_reads(store: Store, router: Router) -> None:
    """`decisions_for_feedback` (the writer's read before it judges a batch of feedback: one UNION ALL on SQLite)
    returns what `decisions`, `feedback_for_many` and `calls_for_many` return for the same ids: decisions with and
    without feedback, several feedback rows per decision (in seq order), call records with and without a chain,
    unknown and repeated ids, more ids than one statement takes (`_CHUNK`)."""
    decisions = [_decision(router, f"batch {i}", n=i) for i in range(230)]
    with store.write() as tx:
        tx.insert_decisions([(d, f"prompt {i}" if i % 2 else None, "acme" if i % 3 else None)
                             for i, d in enumerate(decisions)])
        tx.insert_calls([CallRecord(
            decision_id=d.decision_id, request_id=d.decision_id, attempt=1 + i % 2, model=d.model, routed=i % 2 == 0,
            stream=i % 4 == 0, status="ok", http_status=200, input_tokens=i, output_tokens=20, usage=None,
            cost_usd=1e-4 * i, ttft_s=None, latency_s=0.5, error=None, created_at=1.0 + i,
            chain=json.dumps({"n": i}) if i % 5 == 0 else None,
        ) for i, d in enumerate(decisions) if i % 3 == 0])  # fmt: skip
        order = [decisions[i % 40] for i in range(70)] + decisions[200:]  # 1 or 2 rows for some, none for others
        tx.insert_feedback([_record(d, seq, learn=False, status="late") for seq, d in enumerate(order, 1)])
    ids = [d.decision_id for d in decisions[::-1]] + ["unknown", decisions[7].decision_id]
    with store.write() as tx:
        together = tx.decisions_for_feedback(ids)
        assert _same_stored(together.decisions, tx.decisions(ids)) and len(together.decisions) == 230
        assert together.feedback == tx.feedback_for_many(ids)
        assert [r.seq for r in together.feedback[decisions[3].decision_id]] == [4, 44]
        assert together.calls == tx.calls_for_many(ids) and len(together.calls) == 77
        assert together.calls[decisions[0].decision_id].chain == '{"n": 0}'
        empty = tx.decisions_for_feedback([])
        assert (empty.decisions, empty.feedback, empty.calls) == ({}, {}, {})


def test_chains_are_stored_beside_their_call_and_learned_once_per_decision(store: Store, router: Router) -> None:
    """A named router's chain is stored with its call record (`calls_for_many` returns it); `chains_after` lists,
    in seq order within (seq, until], the first `unrouted` feedback of each `learned-cascade:` decision that has a
    chain: not a second one, not a fixed cascade's or an LLM router's, not a late one."""
    def named(prompt: str, policy: str) -> Decision:
        return dataclasses.replace(_decision(router, prompt), policy=policy)

    learned = [named(f"chain {i}", "learned-cascade:learned") for i in range(3)]
    fixed, llm = named("fixed", "cascade:fixed"), named("llm", "llm-router:auto")
    no_chain = named("no chain", "learned-cascade:learned")
    everything = [*learned, fixed, llm, no_chain]

    def call(d: Decision, chain: str | None) -> CallRecord:
        return CallRecord(
            decision_id=d.decision_id, request_id=d.decision_id, attempt=1, model=d.model, routed=False,
            stream=False, status="ok", http_status=200, input_tokens=10, output_tokens=20, usage="upstream",
            cost_usd=1e-4, ttft_s=0.5, latency_s=0.5, error=None, created_at=1.0, chain=chain,
        )  # fmt: skip

    chains = {d.decision_id: json.dumps({"steps": [], "extra_costs": [], "n": i}) for i, d in enumerate(everything)}
    with store.write() as tx:
        tx.insert_decisions([(d, None, None) for d in everything])
        tx.insert_calls([call(d, None if d is no_chain else chains[d.decision_id]) for d in everything])
        order = [learned[0], fixed, learned[1], learned[0], llm, no_chain, learned[2]]
        tx.insert_feedback([_record(d, seq, learn=False, status="unrouted") for seq, d in enumerate(order, 1)])
        tx.insert_feedback([_record(learned[2], 8, learn=False, status="late")])
    with store.read() as reader:
        calls = reader.calls_for_many([d.decision_id for d in everything])
        assert calls[learned[1].decision_id].chain == chains[learned[1].decision_id]
        assert calls[no_chain.decision_id].chain is None
        assert calls[learned[1].decision_id].chain_json() == {"steps": [], "extra_costs": [], "n": 1}
        got = reader.chains_after(0, 8, 100)
        assert [(c.record.seq, c.decision.decision_id) for c in got] == [
            (1, learned[0].decision_id), (3, learned[1].decision_id), (7, learned[2].decision_id)]
        assert got[0].chain == chains[learned[0].decision_id] and got[0].decision.policy == "learned-cascade:learned"
        assert [c.record.seq for c in reader.chains_after(1, 8, 1)] == [3]
        assert [c.record.seq for c in reader.chains_after(1, 6, 100)] == [3]
        assert reader.chains_after(7, 8, 100) == []


def test_a_database_at_schema_5_is_read_without_chains_then_migrates(store: Store, router: Router) -> None:
    """`bandit-router export` or `evaluate` may read a database an older service wrote and no service of this
    version has migrated yet (schema 5: no `chains` table): its call records read with no chain, and there is no
    learned chain, on PostgreSQL as on SQLite (not "relation chains does not exist"). Then migration 6 runs on it
    (twice: the second is a no-op), its rows are intact, and a chain is stored beside a new call record."""
    decision = dataclasses.replace(_decision(router, "before chains"), policy="learned-cascade:learned")
    with store.write() as tx:
        tx.insert_decisions([(decision, None, None)])
        tx.insert_calls([CallRecord(
            decision_id=decision.decision_id, request_id=decision.decision_id, attempt=1, model=decision.model,
            routed=False, stream=False, status="ok", http_status=200, input_tokens=10, output_tokens=20, usage=None,
            cost_usd=1e-4, ttft_s=0.5, latency_s=0.5, error=None, created_at=1.0,
        )])  # fmt: skip
        tx.insert_feedback([_record(decision, 1, learn=False, status="unrouted")])
    _raw(store, "DROP TABLE chains")
    _raw(store, "DROP INDEX feedback_unrouted")
    _raw(store, "UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    reopened = SQLiteStore(store.path) if isinstance(store, SQLiteStore) else PostgresStore(store.url)  # a new process
    try:
        with reopened.read() as reader:
            call = reader.calls_for_many([decision.decision_id])[decision.decision_id]
            assert call.chain is None and call.cost_usd == 1e-4
            assert reader.chains_after(0, 1, 100) == []
        reopened.prepare()
        reopened.prepare()
        later = dataclasses.replace(_decision(router, "after chains"), policy="learned-cascade:learned")
        with reopened.write() as tx:
            assert tx.get_meta("schema_version") == str(SCHEMA_VERSION)
            tx.insert_decisions([(later, None, None)])
            tx.insert_calls([dataclasses.replace(call, decision_id=later.decision_id, chain='{"steps": []}')])
            tx.insert_feedback([_record(later, 2, learn=False, status="unrouted")])
        with reopened.read() as reader:
            calls = reader.calls_for_many([decision.decision_id, later.decision_id])
            assert calls[decision.decision_id] == call and calls[later.decision_id].chain == '{"steps": []}'
            assert [r.seq for r in reader.feedback_for(decision.decision_id)] == [1]
            assert [c.decision.decision_id for c in reader.chains_after(0, 2, 100)] == [later.decision_id]
    finally:
        reopened.close()


def test_retention_keeps_what_every_checkpoint_of_the_running_configuration_needs(store: Store, router: Router) -> None:
    """Retention deletes old feedback only up to the oldest kept checkpoint of the configuration it is given: another
    configuration's checkpoint (a policy changed since; the running one relearned the log and has no checkpoint
    holding those rows yet) holds nothing for it, and a start whose newest checkpoint fails its checksum restores an
    older one and replays the log after it."""
    old = time.time() - 40 * 86400
    decisions = [_decision(router, f"retained {i}") for i in range(6)]
    with store.write() as tx:
        tx.insert_decisions([(dataclasses.replace(d, created_at=old), None, None) for d in decisions])
        tx.insert_feedback([dataclasses.replace(_record(d, n + 1), received_at=old) for n, d in enumerate(decisions)])
        tx.insert_checkpoint(fingerprint="before", seq=6, event_id=0, version=6, sha256="x", state=b"", keep=3)
    store.delete_old(time.time() - 30 * 86400, 1000, fingerprint="running")  # type: ignore[attr-defined]
    with store.read() as reader:
        assert [r.seq for r, _ in reader.learned_after(0, 100)] == [1, 2, 3, 4, 5, 6]
    with store.write() as tx:
        for seq in (2, 4):
            tx.insert_checkpoint(fingerprint="running", seq=seq, event_id=0, version=seq, sha256="x", state=b"", keep=3)
    store.delete_old(time.time() - 30 * 86400, 1000, fingerprint="running")  # type: ignore[attr-defined]
    with store.read() as reader:
        assert [r.seq for r, _ in reader.learned_after(0, 100)] == [3, 4, 5, 6]
        assert reader.decision(decisions[0].decision_id) is None


def test_retention_takes_a_decision_with_all_its_feedback_in_one_transaction(store: Store, router: Router) -> None:
    """Each retention transaction deletes whole decisions: all of a decision's feedback and the decision itself. It
    limited feedback rows and decisions separately, so a decision could lose only some of its feedback rows (the
    limit fell among them), or all of them while the decision stayed (the decisions' limit went to older ones that
    never had feedback): a feedback arriving then was judged against what was left, and learned a second time."""
    old = time.time() - 40 * 86400
    never = [_decision(router, f"never fed {i}") for i in range(3)]
    fed = _decision(router, "fed three times")
    newest = _decision(router, "today")
    with store.write() as tx:
        tx.insert_decisions([(dataclasses.replace(d, created_at=old), None, None) for d in (*never, fed)])
        tx.insert_decisions([(newest, None, None)])
        tx.insert_feedback([
            dataclasses.replace(_record(fed, 1), received_at=old),
            dataclasses.replace(_record(fed, 2, quality=0.7, learn=False, status="ignored"), received_at=old),
            dataclasses.replace(_record(fed, 3, quality=0.9, learn=False, status="ignored"), received_at=old),
        ])
        tx.insert_checkpoint(fingerprint="f", seq=3, event_id=0, version=1, sha256="x", state=b"", keep=3)
    rounds = 0
    while store.delete_old(time.time() - 30 * 86400, 2, fingerprint="f"):  # type: ignore[attr-defined]
        rounds += 1
        with store.read() as reader:
            left = [r.seq for r in reader.feedback_for(fed.decision_id)]
            assert (reader.decision(fed.decision_id) is None and left == []) or left == [1, 2, 3], (rounds, left)
    with store.read() as reader:
        assert [d.decision_id for d in (*never, fed, newest) if reader.decision(d.decision_id)] == [newest.decision_id]


def test_only_the_decoding_of_a_stored_decision_is_unreadable_not_a_bug_beside_it(
    store: Store, router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decision whose values do not decode is `UnreadableDecision` (its feedback skipped, counted); an error of
    the code that builds it from good values is raised as it is: the KeyError, IndexError and TypeError of any
    step were all turned into "cannot be read", so a bug would have skipped every feedback, quietly."""
    import bandit_router.store.sqlite as sqlite_module
    from bandit_router.store import UnreadableDecision

    decision = _decision(router, "decoded")
    with store.write() as tx:
        tx.insert_decisions([(decision, None, None)])
        tx.insert_feedback([_record(decision, 1)])
    with store.read() as reader:
        assert reader.decision(decision.decision_id) is not None

    def broken(**values: Any) -> Decision:
        raise TypeError("a bug")

    monkeypatch.setattr(sqlite_module, "Decision", broken)
    with store.read() as reader, pytest.raises(TypeError, match="a bug"):
        reader.decision(decision.decision_id)
    with store.read() as reader, pytest.raises(TypeError, match="a bug"):
        reader.learned_after(0, 10)
    monkeypatch.undo()
    with store.write() as tx:
        tx.conn.execute("UPDATE decisions SET pmf = 'not json'")  # type: ignore[attr-defined]
    with store.read() as reader, pytest.raises(UnreadableDecision, match="cannot be read"):
        reader.decision(decision.decision_id)
    with store.read() as reader:
        assert [d for _, d in reader.learned_after(0, 10)] == [None]


def test_retention_with_reward_windows_keeps_the_decisions_the_sweep_has_not_reached(store: Store,
                                                                                      router: Router) -> None:
    """With reward windows on, retention deletes only decisions at or before the sweep's mark (`swept`: the meta
    key of the position windows were closed up to), fed or not: it deleted old decisions past it, which then never
    learned their default reward (a restart after downtime with more closed windows than one sweep takes). Without
    the mark set (windows on, nothing swept yet) nothing goes; without windows (`swept=None`) the mark is not read."""
    old = time.time() - 40 * 86400
    decisions = [_decision(router, f"swept {i}") for i in range(6)]
    with store.write() as tx:
        tx.insert_decisions([(dataclasses.replace(d, created_at=old), None, None) for d in decisions])
        tx.insert_decisions([(_decision(router, "today"), None, None)])  # the newest decision always stays
        tx.insert_feedback([dataclasses.replace(_record(d, n + 1), received_at=old)
                            for n, d in enumerate(decisions[::2])])  # 0, 2 and 4 fed
        tx.insert_checkpoint(fingerprint="f", seq=3, event_id=0, version=3, sha256="x", state=b"", keep=3)
        positions = [tx.last_decision_position() - 6 + n for n in range(6)]
    cutoff = time.time() - 30 * 86400

    def kept() -> list[int]:
        with store.read() as reader:
            return [n for n, d in enumerate(decisions) if reader.decision(d.decision_id) is not None]

    assert store.delete_old(cutoff, 1000, fingerprint="f", swept="swept") == 0  # type: ignore[attr-defined]
    with store.write() as tx:
        tx.set_meta("swept", str(positions[2]))  # 0, 1 and 2 swept
    store.delete_old(cutoff, 1000, fingerprint="f", swept="swept")  # type: ignore[attr-defined]
    assert kept() == [3, 4, 5]
    with store.read() as reader:
        assert [r.seq for r in reader.feedback_for(decisions[4].decision_id)] == [3]
    store.delete_old(cutoff, 1000, fingerprint="f")  # type: ignore[attr-defined]
    assert kept() == []


def test_retention_walks_stop_where_the_rows_reach_the_cutoff() -> None:
    """`first_at_or_after`, where retention's walks of the old rows stop (they went on through every younger row,
    0.16–0.5 s per look under the write lock at 0.3–1.5 M rows, with nothing to delete): the first key whose row is
    key x whose first row at or after it is at or after the cutoff, across gaps of deleted rows (so keys below x
    hold every older row); 0 for an empty table, one past the last when all are old."""
    from bandit_router.store.sqlite import first_at_or_after

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, at REAL)")
    assert first_at_or_after(conn, "t", "k", "at", 5.0, "?") == 0
    # every 7th key deleted (49 and 70 among them)
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(k, k / 10) for k in range(3, 1000) if k % 7])
    for cutoff, first in [(0.0, 3), (5.0, 49), (5.05, 51), (7.0, 70), (50.0, 500), (500.0, 1000)]:
        bound = first_at_or_after(conn, "t", "k", "at", cutoff, "?")
        assert bound == first, cutoff
        assert conn.execute("SELECT COUNT(*) FROM t WHERE k >= ? AND at < ?", (bound, cutoff)).fetchone()[0] == 0


def test_retention_keeps_a_decisions_feedback_together(store: Store, router: Router) -> None:
    """`delete_old` deletes a decision's feedback only when none of it is kept: a learned cascade's decision whose
    first `unrouted` feedback (learned, 40 days old, held by the checkpoint) is followed by a second (today, after
    the checkpoint) keeps both, else `chains_after` would offer the second as the first and a restore from that
    checkpoint would learn the chain twice; a routed decision's learned feedback likewise stays beside an ignored
    one, so a third is not learned again. A decision whose feedback is all old goes, with its chain."""
    old, now = time.time() - 40 * 86400, time.time()

    def named(prompt: str) -> Decision:
        return dataclasses.replace(_decision(router, prompt), policy="learned-cascade:learned")

    def at(record: FeedbackRecord, received_at: float) -> FeedbackRecord:
        return dataclasses.replace(record, received_at=received_at)

    cascade, routed, gone = named("two feedbacks"), _decision(router, "routed twice"), named("all old")
    with store.write() as tx:
        tx.insert_decisions([(dataclasses.replace(d, created_at=old), None, None) for d in (cascade, routed, gone)])
        tx.insert_decisions([(_decision(router, "today"), None, None)])  # the newest decision always stays
        tx.insert_calls([CallRecord(
            decision_id=d.decision_id, request_id=d.decision_id, attempt=1, model=d.model, routed=False,
            stream=False, status="ok", http_status=200, input_tokens=10, output_tokens=20, usage=None,
            cost_usd=1e-4, ttft_s=0.5, latency_s=0.5, error=None, created_at=old, chain='{"steps": []}',
        ) for d in (cascade, gone)])  # fmt: skip
        tx.insert_feedback([
            at(_record(cascade, 1, learn=False, status="unrouted"), old),
            at(_record(routed, 2, learn=True, status="applied"), old),
            at(_record(gone, 3, learn=False, status="unrouted"), old),
        ])
        tx.insert_checkpoint(fingerprint="f", seq=3, event_id=0, version=1, sha256="x", state=b"", keep=3)
        tx.insert_feedback([
            at(_record(cascade, 4, quality=0.9, learn=False, status="unrouted"), now),
            at(_record(routed, 5, quality=0.9, learn=False, status="ignored"), now),
        ])
    store.delete_old(now - 30 * 86400, 1000, fingerprint="f")  # type: ignore[attr-defined]
    with store.read() as reader:
        assert reader.chains_after(3, 5, 100) == []  # the checkpoint at seq 3 learned the cascade's chain
        assert [r.seq for r in reader.feedback_for(cascade.decision_id)] == [1, 4]
        assert [r.seq for r in reader.feedback_for(routed.decision_id)] == [2, 5]
        assert reader.decision(gone.decision_id) is None and reader.calls_for_many([gone.decision_id]) == {}


def test_a_checkpoint_due_while_the_database_is_down_is_one_log_line(pg_server: Any, pg_url: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Drill (PostgreSQL restarted under load): a checkpoint fell due as the server went down; its first read
    (has another replica stored this position?) raised, and the writer logged the StoreError with a traceback.
    Now it is the same one line as a failed checkpoint write, and the next batch tries again."""
    from bandit_router.config import Settings
    from bandit_router.log import Checkpointer, LogFollower, PolicySet

    settings = Settings(db=DatabaseURL(pg_url), seed=1)
    store = _pg(pg_url)
    follower = LogFollower(PolicySet(settings))
    follower.applied_seq = follower.chain_seq = 3  # as if three feedbacks were learned since the last checkpoint
    checkpointer = Checkpointer(store, settings, follower)
    caplog.set_level(logging.ERROR)
    pg_server.down()
    try:
        assert checkpointer.maybe_checkpoint(force=True) is False
    finally:
        pg_server.up()
    failed = [r for r in caplog.records if "checkpoint failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is None
    deadline = time.monotonic() + 10
    while not checkpointer.maybe_checkpoint(force=True):  # the server is back: stored by a later try
        assert time.monotonic() < deadline
        time.sleep(0.1)
    store.close()


def test_decoded_features_are_aligned_read_only_and_truncation_is_refused() -> None:
    features = {
        "w": (np.array([3, 1, 4, 1, 5], dtype=np.uint32), np.array([0.5, 1, 2, 4, 8], dtype=np.float32)),
        "l": (np.array([], dtype=np.uint32), np.array([], dtype=np.float32)),
        "markers": (np.array([9], dtype=np.uint32), np.array([1.0], dtype=np.float32)),
    }
    blob = encode_features(features)
    back = decode_features(blob)
    assert list(back) == list(features)
    for ns, (idx, val) in back.items():
        assert np.array_equal(idx, features[ns][0]) and np.array_equal(val, features[ns][1])
        for array in (idx, val):  # views of one aligned copy each, shared like the extractor's own arrays
            assert array.flags.aligned and array.flags.c_contiguous and not array.flags.writeable
    with pytest.raises(StoreError, match="truncated"):
        decode_features(blob[:-2])
    with pytest.raises(StoreError, match="unknown"):
        decode_features(b"XXXX" + blob[4:])
    with pytest.raises(StoreError, match="UTF-8"):
        decode_features(blob[:5] + b"\xff" + blob[6:])  # "w" is the first name: one byte at offset 5


def test_every_truncated_features_blob_is_a_store_error_or_a_whole_prefix() -> None:
    """A blob cut anywhere (an empty last namespace, as a request without context gives, included) is refused
    with a StoreError, which the writer's log following survives, never a struct or index error, which ended
    its thread; a cut exactly between two namespaces cannot be told from fewer namespaces and decodes to them."""
    from bandit_router.features import FeatureExtractor

    for features in (FeatureExtractor().extract("hello world").features,
                     {"w": (np.array([7], dtype=np.uint32), np.array([1.0], dtype=np.float32)),
                      "c": (np.array([], dtype=np.uint32), np.array([], dtype=np.float32))}):
        blob = encode_features(features)
        names = list(features)
        for cut in range(4, len(blob)):
            try:
                back = decode_features(blob[:cut])
            except StoreError:
                continue
            assert list(back) == names[: len(back)]


def _store_binding_at_most(variables: int, path: Path, monkeypatch: pytest.MonkeyPatch) -> SQLiteStore:
    """A prepared SQLite store each of whose connections binds at most `variables` variables a statement (999: an
    SQLite before 3.32)."""
    connect = SQLiteStore._connect

    def limited(self: SQLiteStore) -> sqlite3.Connection:
        conn = connect(self)
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, variables)
        return conn

    monkeypatch.setattr(SQLiteStore, "_connect", limited)
    store = SQLiteStore(path)
    store.prepare()
    return store


def test_batches_fit_the_999_variables_of_sqlite_before_3_32(
    tmp_path: Path, router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite before 3.32 binds at most 999 variables a statement; a batch of 200 decisions (19 columns each) was
    one statement of 3,800, so the writer's first large batch failed there ("too many SQL variables"), and so did
    feedback (15 columns), call records, judge calls, the reads behind a feedback batch and retention (1,000 ids).
    Each statement now takes as many rows as the connection's limit allows: the limit is lowered here to 999 on
    every connection, as an old SQLite has it."""
    store = _store_binding_at_most(999, tmp_path / "old.db", monkeypatch)
    decisions = [_decision(router, f"old sqlite {i}", tenant=f"t{i % 3}") for i in range(250)]
    ids = [d.decision_id for d in decisions]
    now = time.time()
    calls = [CallRecord(d.decision_id, d.decision_id, 1, d.model, True, False, "ok", 200, 10, 20, "upstream", 1e-5,
                        0.1, 0.2, None, now, chain="{}") for d in decisions]
    with store.write() as tx:
        assert tx.insert_decisions([(d, None, f"t{i % 3}") for i, d in enumerate(decisions)]) == [True] * 250
        tx.insert_shadow_pmfs([(i, "{}") for i in ids])
        tx.insert_calls(calls)
        tx.insert_judge_calls([JudgeCall(i, "t0", "judge", 10, 2, 1e-6, now) for i in ids])
        tx.insert_feedback([_record(d, n + 1) for n, d in enumerate(decisions)])
    with store.read() as reader:
        context = reader.decisions_for_feedback(ids)
        assert len(context.decisions) == len(context.feedback) == len(context.calls) == 250
        assert len(reader.decisions(ids)) == 250 and len(reader.calls_for_many(ids)) == 250
    _raw(store, "DELETE FROM feedback")
    with store.write() as tx:
        tx.insert_decisions([(_decision(router, "newest"), None, None)])  # the newest always stays
    assert store.delete_old(time.time() + 1, 1000, fingerprint="f") == 250
    store.close()


def test_retention_deletes_its_ids_in_statements_the_variable_limit_allows(
    tmp_path: Path, router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review: the 999-variable test above retires 250 ids, fewer than 999, so it passes with retention's ids in one
    statement; here the limit (100) is below the ids retired (250). On a current SQLite retention binds all its
    ids (up to `RETENTION_BATCH`, 1,000) in one statement, as before the chunking, not 200 a statement."""
    store = _store_binding_at_most(100, tmp_path / "small.db", monkeypatch)
    decisions = [_decision(router, f"small limit {i}") for i in range(250)]
    newest = _decision(router, "newest")  # always stays
    with store.write() as tx:
        assert tx.insert_decisions([(d, None, None) for d in [*decisions, newest]]) == [True] * 251
        tx.insert_shadow_pmfs([(d.decision_id, "{}") for d in decisions])
    assert store.delete_old(time.time() + 1, 1000, fingerprint="f") == 250
    with store.read() as reader:
        assert reader.decisions([d.decision_id for d in decisions]) == {}
    store.close()
    monkeypatch.undo()
    current = SQLiteStore(tmp_path / "current.db")
    current.prepare()
    with current.write() as tx:
        tx.insert_decisions([(d, None, None) for d in [*decisions, newest]])
        conn = tx.conn  # type: ignore[attr-defined]
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    assert current.delete_old(time.time() + 1, 1000, fingerprint="f") == 250
    conn.set_trace_callback(None)
    current.close()
    assert len([s for s in statements if s.startswith("DELETE FROM decisions WHERE decision_id IN")]) == 1


def test_a_model_event_that_does_not_decode_names_its_row_and_the_repair(store: Store) -> None:
    """A model event's spec that no longer decodes (edited by hand, corrupted on disk) ended every start with a
    JSONDecodeError or a CatalogError traceback, and an action that is none of add, retire and promote was applied
    as a retirement: each is `UnreadableModelEvent` naming the row, the reason and the UPDATE that repairs it."""
    from bandit_router.catalog import ModelSpec
    from bandit_router.store import ModelAction, UnreadableModelEvent

    with store.write() as tx:
        tx.insert_model_event(ModelAction.ADD, "house", ModelSpec("house", 0.3, 0.6))
        tx.insert_model_event(ModelAction.RETIRE, "house", None)
    with store.read() as reader:
        assert [(e.action, e.name) for e in reader.model_events_after(0)] == [("add", "house"), ("retire", "house")]
    for sql, reason in (
        ("UPDATE model_events SET spec = '{\"name\": \"house\", \"input_usd_per_mtok\":' WHERE action = 'add'",
         "Expecting value"),
        ("UPDATE model_events SET spec = '{\"name\": \"house\", \"bogus\": 1}' WHERE action = 'add'",
         "unknown keys 'bogus'"),
        ("UPDATE model_events SET spec = '{\"name\": \"other\", \"input_usd_per_mtok\": 1, "
         "\"output_usd_per_mtok\": 1}' WHERE action = 'add'", "its spec names the model 'other'"),
    ):
        _raw(store, sql)
        with store.read() as reader, pytest.raises(UnreadableModelEvent) as raised:
            reader.model_events_after(0)
        said = str(raised.value)
        assert said.startswith("model event 1 (add 'house') cannot be read: ") and reason in said, said
        assert "UPDATE model_events SET spec = '{\"name\": \"house\", " in said and "WHERE id = 1" in said
    _raw(store, "UPDATE model_events SET spec = '{\"name\": \"house\", \"input_usd_per_mtok\": 0.3, "
                "\"output_usd_per_mtok\": 0.6}' WHERE action = 'add'")  # the repair it names
    _raw(store, "UPDATE model_events SET action = 'retrie' WHERE action = 'retire'")
    with store.read() as reader, pytest.raises(UnreadableModelEvent, match=re.escape(
            "model event 2 (retrie 'house') cannot be read: 'retrie' is not a valid ModelAction")) as raised:
        reader.model_events_after(0)
    assert "UPDATE model_events SET action = 'add' (or 'retire') WHERE id = 2" in str(raised.value)
    _raw(store, "UPDATE model_events SET action = 'retire' WHERE id = 2")
    with store.read() as reader:
        events = reader.model_events_after(0)
    assert [(e.action, e.spec) for e in events] == [("add", ModelSpec("house", 0.3, 0.6)), ("retire", None)]
