"""The SQLite store: schema, round trips, the feedback log's invariants, checkpoints."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandit_router.catalog import ModelSpec
from bandit_router.router import Router
from bandit_router.store import (
    SCHEMA_VERSION,
    CallRecord,
    FeedbackRecord,
    SQLiteStore,
    StoreError,
    decode_features,
    encode_features,
    safe_text,
)
from bandit_router.types import Decision, Request


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "store.db")
    s.prepare()
    yield s
    s.close()


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
        assert {"decisions", "feedback", "model_events", "checkpoints", "meta", "calls"} <= tables
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        assert version == "5" == str(SCHEMA_VERSION)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match="schema version"):
        SQLiteStore(path).prepare()


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError):
        SQLiteStore(path).prepare()


def test_decisions_round_trip(store: SQLiteStore, router: Router) -> None:
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


def test_taken_ids_are_not_written(store: SQLiteStore, router: Router) -> None:
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


def test_feedback_seq_increases_and_only_one_row_per_decision_is_learned(store: SQLiteStore, router: Router) -> None:
    decisions = [_decision(router, f"q{i}") for i in range(3)]
    with store.write() as tx:
        tx.insert_decisions([(d, None, None) for d in decisions])
        assert tx.head() == (0, 0)
        tx.insert_feedback([_record(d, i + 1) for i, d in enumerate(decisions)])
        tx.insert_feedback([_record(decisions[0], 4, quality=0.1, learn=False, status="late")])
        assert tx.head() == (4, 0)
    with pytest.raises(StoreError, match="UNIQUE") as error, store.write() as tx:  # a second learned row
        tx.insert_feedback([_record(decisions[0], 5, quality=0.9)])
    assert isinstance(error.value.__cause__, sqlite3.IntegrityError)  # the driver's error, wrapped
    with pytest.raises(StoreError, match="UNIQUE") as error, store.write() as tx:  # a seq used before
        tx.insert_feedback([_record(decisions[1], 4, learn=False, status="late")])
    assert isinstance(error.value.__cause__, sqlite3.IntegrityError)
    with store.read() as reader:
        assert reader.head() == (4, 0)
        learned = reader.learned_after(0, 10)
        assert [r.seq for r, _ in learned] == [1, 2, 3]
        assert [d.decision_id for _, d in learned] == [d.decision_id for d in decisions]
        assert [r.seq for r, _ in reader.learned_after(1, 1)] == [2]
        many = reader.feedback_for_many([decisions[0].decision_id, decisions[1].decision_id])
        assert [r.status for r in many[decisions[0].decision_id]] == ["applied", "late"]
        assert reader.feedback_for(decisions[2].decision_id)[0].outcome().output_tokens == 120


def test_model_events_are_placed_after_the_feedback_before_them(store: SQLiteStore, router: Router) -> None:
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


def test_checkpoints_are_kept_newest_first_and_pruned(store: SQLiteStore) -> None:
    with store.write() as tx:
        for seq in (10, 20, 30, 40):
            assert tx.insert_checkpoint(fingerprint="f", seq=seq, event_id=0, version=seq, sha256="x",
                                        state=bytes([seq]), keep=3)
        assert not tx.insert_checkpoint(fingerprint="f", seq=40, event_id=0, version=40, sha256="x", state=b"",
                                        keep=3)
        tx.insert_checkpoint(fingerprint="other", seq=5, event_id=0, version=5, sha256="y", state=b"o", keep=3)
    with store.read() as reader:
        kept = reader.checkpoints("f")
        assert [c.seq for c in kept] == [40, 30, 20]
        assert reader.checkpoint_state(kept[0].id) == bytes([40])
        assert [c.seq for c in reader.checkpoints("other")] == [5]


def test_stats_count_from_the_tables(store: SQLiteStore, router: Router) -> None:
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


def test_a_failed_transaction_writes_nothing(store: SQLiteStore, router: Router) -> None:
    d = _decision(router)
    with pytest.raises(RuntimeError), store.write() as tx:
        tx.insert_decisions([(d, None, None)])
        raise RuntimeError("boom")
    with store.read() as reader:
        assert reader.decision(d.decision_id) is None


def test_maintain_checkpoints_the_wal(store: SQLiteStore, router: Router) -> None:
    with store.write() as tx:
        tx.insert_decisions([(_decision(router, f"w{i}"), None, None) for i in range(50)])
    store.maintain()
    with store.read() as reader:
        assert reader.head() == (0, 0)


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
    assert len(cleaned) == len(text)
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert cleaned == text


def test_head_remembers_seqs_of_deleted_rows(store: SQLiteStore, router: Router) -> None:
    d = _decision(router)
    with store.write() as tx:
        tx.insert_decisions([(d, None, None)])
        tx.insert_feedback([_record(d, 1), _record(d, 2, learn=False, status="late")])
    with sqlite3.connect(store.path) as conn:
        conn.execute("DELETE FROM feedback WHERE seq = 2")
    with store.read() as reader:
        assert reader.head() == (2, 0)  # a new row gets 3: a seq is never reused


def test_reward_window_walk_stops_at_the_first_open_decision(store: SQLiteStore, router: Router) -> None:
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


def test_call_records_round_trip_and_a_second_replaces_the_first(store: SQLiteStore, router: Router) -> None:
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
