"""The per-minute rollup (`store/rollup.py`): kept in the write transaction, equal to what the raw tables say,
summed into buckets, filled by the migration for a database that existed before it; on SQLite and on a real
PostgreSQL server (`store` is parametrized)."""

from __future__ import annotations

import dataclasses
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from bandit_router.router import Router
from bandit_router.store import (
    CallRecord,
    DatabaseURL,
    FeedbackRecord,
    MinuteStats,
    SQLiteStore,
    Store,
    StoreError,
    rollup,
)
from bandit_router.store.migrations import MIGRATIONS
from bandit_router.store.postgres import PostgresStore
from bandit_router.store.rollup import SUMS, minute_of
from bandit_router.types import Decision, Request

T0 = 1_700_000_000.0  # a fixed Unix time, 20 s into a minute


def _open(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if backend == "sqlite":
        return SQLiteStore(tmp_path / "store.db")
    return PostgresStore(DatabaseURL(request.getfixturevalue("pg_url")))


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = _open(request.param, request, tmp_path)
    s.prepare()
    yield s
    s.close()


def _traffic(n: int, seed: int) -> tuple[list[Decision], list[FeedbackRecord], list[CallRecord]]:
    """`n` decisions spread over 10 minutes from T0, and feedback for about 70% of them (some arriving minutes
    later, some late or defaulted), from a seeded router; a tenth are models callers named, a tenth named routers'
    choices, a tenth the gateway's fallbacks (call records with `attempt` 2) and a tenth first tries with a call."""
    router = Router(seed=seed)
    rng = np.random.default_rng(seed)
    decisions, records, calls = [], [], []
    for i in range(n):
        lam = float(rng.integers(1, 50))
        d = router.route(Request(prompt=f"question {i % 7}: explain topic {i % 3}", cost_weight=lam))
        d = dataclasses.replace(d, created_at=T0 + float(rng.uniform(0, 600)))
        if i % 10 in (0, 1):  # not the bandit's choice: probability 1 on the model named
            d = dataclasses.replace(d, policy="caller" if i % 10 == 0 else "llm-router:auto", models=(d.model,),
                                    pmf=(1.0,), probability=1.0)
        if i % 10 in (0, 1, 2, 3):
            calls.append(CallRecord(
                decision_id=d.decision_id, request_id=d.decision_id, attempt=2 if i % 10 == 2 else 1, model=d.model,
                routed=i % 10 in (2, 3), stream=False, status="ok", http_status=200, input_tokens=10,
                output_tokens=20, usage="upstream", cost_usd=1e-5, ttft_s=0.1, latency_s=0.2, error=None,
                created_at=d.created_at,
            ))
        decisions.append(d)
        if rng.random() < 0.7:
            status = str(rng.choice(["applied", "applied", "applied", "late", "default"]))
            quality = float(rng.uniform())
            records.append(FeedbackRecord(
                decision_id=d.decision_id, received_at=d.created_at + float(rng.uniform(0, 300)), quality=quality,
                cost_usd=None, input_tokens=None, output_tokens=100, latency_s=None, source=None, status=status,
                learn=status != "late", reward=quality - 0.01, realised_cost_usd=float(rng.uniform(0, 0.01)),
                model=d.model, tenant=None,
            ))
    return decisions, records, calls


def _store_all(
    store: Store, decisions: list[Decision], records: list[FeedbackRecord], calls: list[CallRecord]
) -> None:
    for start in range(0, len(decisions), 50):  # several transactions, as the writer's batches
        with store.write() as tx:
            tx.insert_decisions([(d, None, None) for d in decisions[start : start + 50]])
    for start in range(0, len(calls), 30):  # in later transactions, and one of them twice (a replaced record)
        with store.write() as tx:
            tx.insert_calls(calls[start : start + 30])
    if calls:
        with store.write() as tx:
            tx.insert_calls(calls[:5])
    with store.write() as tx:
        seq = tx.head()[0]
        tx.insert_feedback([dataclasses.replace(r, seq=seq + i + 1) for i, r in enumerate(records)])


def _expected(
    decisions: list[Decision], records: list[FeedbackRecord], calls: list[CallRecord]
) -> dict[tuple[int, str], MinuteStats]:
    """The rollup computed from scratch, the slow way."""
    out: dict[tuple[int, str], MinuteStats] = {}
    by_id = {d.decision_id: d for d in decisions}
    attempts = {c.decision_id: c.attempt for c in calls}

    def row(t: float, model: str) -> MinuteStats:
        return out.setdefault((minute_of(t), model), MinuteStats(minute_of(t), model))

    for d in decisions:
        r = row(d.created_at, d.model)
        r.decisions += 1
        r.cost_weight_sum += d.cost_weight
        if d.policy not in ("caller", "llm-router:auto") and attempts.get(d.decision_id, 1) == 1:
            r.routed += 1
            r.greedy += int(d.probability == max(d.pmf))
            r.probability_sum += d.probability
        r.policy_version = max(r.policy_version, d.policy_version)
    for f in records:
        if f.status not in ("default", "aggregate"):
            row(f.received_at, f.model).feedback += 1
        if f.learn and f.status != "default":
            d = by_id[f.decision_id]
            r = row(d.created_at, f.model)
            r.learned += 1
            r.quality_sum += f.quality
            r.cost_sum += f.realised_cost_usd
            r.reward_sum += f.reward
            r.lag_sum += f.received_at - d.created_at
            r.ips_weight_sum += 1 / d.probability
            r.ips_quality_sum += f.quality / d.probability
            r.ips_cost_sum += f.realised_cost_usd / d.probability
            r.ips_reward_sum += f.reward / d.probability
    return out


def _assert_equal(got: list[MinuteStats], want: dict[tuple[int, str], MinuteStats]) -> None:
    assert {(r.minute, r.model) for r in got} == set(want)
    for r in got:
        w = want[(r.minute, r.model)]
        assert r.policy_version == w.policy_version
        for name in SUMS:
            assert math.isclose(getattr(r, name), getattr(w, name), rel_tol=1e-9, abs_tol=1e-9), (r, name)


def test_the_rollup_equals_the_raw_tables(store: Store) -> None:
    decisions, records, calls = _traffic(400, seed=1)
    _store_all(store, decisions, records, calls)
    with store.read() as reader:
        got = reader.minute_stats(minute_of(T0) - 10, minute_of(T0) + 30, 1)
    _assert_equal(got, _expected(decisions, records, calls))
    assert sum(r.decisions for r in got) == 400


class _Undone(Exception):
    """Raised to roll a write transaction back after reading inside it."""


def test_the_decisions_given_to_insert_feedback_give_the_rollup_of_the_stored_ones(store: Store) -> None:
    """The writer passes `insert_feedback` the (created_at, probability) of the decisions it read in the
    transaction (no query); all of them, some of them or none (the store reads the rest) give the same rollup rows,
    bit for bit, as reading them all."""
    decisions, records, _ = _traffic(120, seed=6)
    _store_all(store, decisions, [], [])
    by_id = {d.decision_id: (d.created_at, d.probability) for d in decisions}
    given: list[dict[str, tuple[float, float]] | None] = [None, by_id, dict(list(by_id.items())[::3]), {}]
    seen = []
    for decided in given:
        with pytest.raises(_Undone), store.write() as tx:
            tx.insert_feedback([dataclasses.replace(r, seq=i + 1) for i, r in enumerate(records)], decided)
            seen.append(tx.minute_stats(0, 2**40, 1))
            raise _Undone
    assert seen[0] and sum(r.learned for r in seen[0]) > 50
    assert all(rows == seen[0] for rows in seen[1:])


@pytest.mark.parametrize("step", [5, 15, 30, 60, 120])
def test_buckets_sum_the_minutes_and_the_range_is_half_open(store: Store, step: int) -> None:
    """Steps of 15 and 60 minutes read the longer spans (30 and 120 too): the same sums as the minutes."""
    decisions, records, calls = _traffic(300, seed=2)
    _store_all(store, decisions, records, calls)
    first = minute_of(T0)
    lo, hi = first - first % 120 - 120, first - first % 120 + 240
    with store.read() as reader:
        minutes = reader.minute_stats(lo, hi, 1)
        buckets = reader.minute_stats(lo, hi, step)
        window = reader.minute_stats(first + 2, first + 4, 1)
    assert all(b.minute % step == 0 for b in buckets)
    summed: dict[tuple[int, str], MinuteStats] = {}
    for m in minutes:
        key = (m.minute - m.minute % step, m.model)
        summed.setdefault(key, MinuteStats(*key)).add(m)
    _assert_equal(buckets, summed)
    assert {r.minute for r in window} <= {first + 2, first + 3}
    assert sum(r.decisions for r in window) == sum(1 for d in decisions if minute_of(d.created_at) in (first + 2,
                                                                                                        first + 3))


def test_a_rolled_back_transaction_leaves_the_rollup_alone(store: Store) -> None:
    decisions, _, _ = _traffic(20, seed=3)
    with pytest.raises(RuntimeError), store.write() as tx:
        tx.insert_decisions([(d, None, None) for d in decisions])
        raise RuntimeError("the batch fails after inserting")
    with store.read() as reader:
        assert reader.minute_stats(0, 2**40, 60 * 24) == []


def test_a_taken_id_is_not_counted_twice(store: Store) -> None:
    decisions, _, _ = _traffic(10, seed=4)
    with store.write() as tx:
        tx.insert_decisions([(d, None, None) for d in decisions])
    with store.write() as tx:
        again = dataclasses.replace(decisions[0], created_at=decisions[0].created_at + 1.0)  # another request
        assert tx.insert_decisions([(again, None, None)]) == [False]
    with store.read() as reader:
        assert sum(r.decisions for r in reader.minute_stats(0, 2**40, 60 * 24)) == 10


def test_recent_decisions_are_newest_first(store: Store) -> None:
    decisions, _, _ = _traffic(30, seed=5)
    _store_all(store, decisions, [], [])
    with store.read() as reader:
        recent = reader.recent_decisions(5)
    assert [s.decision.decision_id for _, s in recent] == [d.decision_id for d in decisions[::-1][:5]]
    assert [p for p, _ in recent] == sorted((p for p, _ in recent), reverse=True)


def test_a_step_below_one_minute_is_refused(store: Store) -> None:
    with pytest.raises((ValueError, StoreError)), store.read() as reader:
        reader.minute_stats(0, 10, 0)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_database_from_before_the_rollup_is_filled_by_the_migration(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    decisions, records, calls = _traffic(200, seed=6)
    store = _open(backend, request, tmp_path)
    store.prepare()
    _store_all(store, decisions, records, calls)
    store.close()
    drop = ("DROP TABLE minute_stats", "UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    if isinstance(store, SQLiteStore):  # as version 2 of the schema left it: no rollup
        conn = sqlite3.connect(store.path)
        for sql in drop:
            conn.execute(sql)
        conn.commit()
        conn.close()
    else:
        assert isinstance(store, PostgresStore)
        with psycopg.connect(store.url.reveal(), autocommit=True) as pg:
            for sql in drop:
                pg.execute(sql)  # type: ignore[arg-type]
    assert MIGRATIONS[-1].version >= 3
    store = _open(backend, request, tmp_path)
    store.prepare()
    with store.read() as reader:
        got = reader.minute_stats(minute_of(T0) - 10, minute_of(T0) + 30, 1)
        hours = reader.minute_stats(0, 2**40, 60)
    store.close()
    _assert_equal(got, _expected(decisions, records, calls))
    hourly: dict[tuple[int, str], MinuteStats] = {}
    for m in _expected(decisions, records, calls).values():
        key = (m.minute - m.minute % 60, m.model)
        hourly.setdefault(key, MinuteStats(*key)).add(m)
    _assert_equal(hours, hourly)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_rollup_that_counted_every_decision_as_routed_is_rebuilt_by_the_migration(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A database at schema 4 has the rollup of migration 3 (no `routed`; exploration and probability over every
    decision, fallbacks and models callers named included): migration 5 rebuilds it from the rows."""
    decisions, records, calls = _traffic(200, seed=7)
    store = _open(backend, request, tmp_path)
    store.prepare()
    _store_all(store, decisions, records, calls)
    store.close()
    old_sum = "SELECT SUM(probability_sum) FROM minute_stats WHERE span = 1"
    version = "UPDATE meta SET value = '4' WHERE key = 'schema_version'"
    if isinstance(store, SQLiteStore):
        conn = sqlite3.connect(store.path)
        for sql in ("DROP TABLE minute_stats", rollup.TABLE, *rollup.BACKFILL_V3, version):  # as migration 3 left it
            conn.execute(sql)
        conn.commit()
        old = conn.execute(old_sum).fetchone()[0]
        conn.close()
    else:
        assert isinstance(store, PostgresStore)
        with psycopg.connect(store.url.reveal(), autocommit=True) as pg:
            for sql in ("DROP TABLE minute_stats", rollup.TABLE_POSTGRES, *rollup.BACKFILL_POSTGRES_V3, version):
                pg.execute(sql)  # type: ignore[arg-type]
            row = pg.execute(old_sum).fetchone()  # type: ignore[arg-type]
            assert row is not None
            old = row[0]
    assert old == pytest.approx(sum(d.probability for d in decisions))  # every decision, as it was
    store = _open(backend, request, tmp_path)
    store.prepare()
    with store.read() as reader:
        got = reader.minute_stats(minute_of(T0) - 10, minute_of(T0) + 30, 1)
        hours = reader.minute_stats(0, 2**40, 60)
    store.close()
    want = _expected(decisions, records, calls)
    _assert_equal(got, want)
    assert sum(r.routed for r in got) == 140 and sum(r.decisions for r in got) == 200
    hourly: dict[tuple[int, str], MinuteStats] = {}
    for m in want.values():
        key = (m.minute - m.minute % 60, m.model)
        hourly.setdefault(key, MinuteStats(*key)).add(m)
    _assert_equal(hours, hourly)


def test_the_best_fixed_model_is_estimated_by_snips_from_a_skewed_log() -> None:
    """A logging policy that sends easy prompts (high reward for everyone) to the cheap model and hard ones to
    the strong model makes the on-policy means lie; the SNIPS estimate of "always m" recovers each model's true
    mean (seeded; margin 0.03 at n = 20,000, about 4 standard errors)."""
    from bandit_router.log.timeseries import best_fixed
    from bandit_router.store.rollup import feedback_increments

    rng = np.random.default_rng(11)
    true_mean = {"cheap": {"easy": 0.9, "hard": 0.2}, "strong": {"easy": 0.8, "hard": 0.7}}
    records, decided = [], {}
    for i in range(20_000):
        kind = "easy" if rng.random() < 0.5 else "hard"
        p_cheap = 0.9 if kind == "easy" else 0.1
        model = "cheap" if rng.random() < p_cheap else "strong"
        p = p_cheap if model == "cheap" else 1 - p_cheap
        reward = float(np.clip(true_mean[model][kind] + rng.normal(0, 0.1), 0, 1))
        decided[f"d{i}"] = (T0, p)
        records.append(FeedbackRecord(
            decision_id=f"d{i}", received_at=T0 + 1, quality=reward, cost_usd=0.0, input_tokens=None,
            output_tokens=None, latency_s=None, source=None, status="applied", learn=True, reward=reward,
            realised_cost_usd=0.0, model=model, tenant=None,
        ))
    rows = {r.model: r for r in feedback_increments(records, decided)}
    on_policy = {m: r.reward_sum / r.learned for m, r in rows.items()}
    assert on_policy["cheap"] > on_policy["strong"]  # the skew: the cheap model mostly saw easy prompts
    best = best_fixed(list(rows.values()))
    assert best["model"] == "strong"
    assert best["fixed_reward"] == pytest.approx(0.75, abs=0.03)
    cheap = rows["cheap"]
    assert cheap.ips_reward_sum / cheap.ips_weight_sum == pytest.approx(0.55, abs=0.03)


@pytest.mark.parametrize("step", [60, 120, 300, 900, 3600, 86400])
def test_the_range_totals_count_exactly_the_minutes_of_the_range_whatever_the_step(store: Store, step: int) -> None:
    """`overall` and the per-model totals of a time series count the minutes that overlap [since, until), also
    when the buckets (aligned on `step`) reach past it: with a day's step the one bucket holds all ten minutes of
    traffic, where the range holds under five of them (the totals counted the whole bucket). Steps of 2 and 5
    minutes take buckets inside the range and minutes at one or both of its edges."""
    from bandit_router.log.timeseries import Window, timeseries

    decisions, records, calls = _traffic(300, seed=4)
    _store_all(store, decisions, records, calls)
    since, until = T0 + 130.0, T0 + 410.0  # minutes 2 to 6 of the traffic, neither edge on a minute
    first, end = minute_of(since), minute_of(until) + 1
    with store.read() as reader:
        got = timeseries(reader, Window.of(since, until, step))
        minutes = reader.minute_stats(first, end, 1)
    want: dict[str, MinuteStats] = {}
    for m in minutes:
        want.setdefault(m.model, MinuteStats(0, m.model)).add(m)
    inside = sum(1 for d in decisions if first <= minute_of(d.created_at) < end)
    assert 0 < inside < 300 and sum(r.decisions for r in want.values()) == inside
    overall = got["overall"]
    assert overall["decisions"] == inside
    assert overall["routed"] == sum(r.routed for r in want.values())
    assert overall["learned"] == sum(r.learned for r in want.values())
    assert overall["feedback"] == sum(r.feedback for r in want.values())
    assert {m["model"]: m["decisions"] for m in got["models"]} == {k: r.decisions for k, r in want.items()}
    for m in got["models"]:
        assert m["quality"] == pytest.approx(want[m["model"]].quality_sum / want[m["model"]].learned
                                             if want[m["model"]].learned else None)
    if step == 86400:
        assert sum(got["decisions"]) == 300  # the series' one bucket is the whole day, as documented


def test_cover_reads_each_minute_once_with_the_longest_spans() -> None:
    for first, end in [(0, 1), (7, 8), (14, 16), (59, 121), (13, 10_093), (60, 120), (100, 100), (61, 74)]:
        parts = rollup.cover(first, end)
        minutes = [m for lo, hi, _ in parts for m in range(lo, hi)]
        assert minutes == list(range(first, end))
        assert all(lo % span == 0 and hi % span == 0 and span in rollup.SPANS for lo, hi, span in parts)
        assert sum((hi - lo) // span for lo, hi, span in parts) <= (end - first) // 60 + 2 * (3 + 14)
