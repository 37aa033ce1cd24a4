"""The per-minute rollup: rows per (span, minute, model) that the store keeps up to date in the same write
transaction as the decisions and feedback they count, so that a time series over an hour, a day or a week reads
at most a few thousand small rows instead of millions of decisions (`Reader.minute_stats`).

Each increment is written at every span of `SPANS` (1, 15 and 60 minutes; `minute` is the span's first minute),
and a read uses the longest span that divides its step: a week in hours reads 168 × models rows, not 10,080 ×
models (measured: `benchmarks/bench_dashboard.py`).

What a row of `minute_stats` adds up over its span (minute = ⌊unix time / 60⌋):

    decisions          decisions stored in the minute whose chosen model is `model`: all traffic, including
                       models callers named, named routers' choices and the gateway's fallbacks
    routed             of those, the bandit's own choices for a request's first try (not `unrouted`, not a
                       fallback: a fallback's call record, `attempt` ≥ 2, takes it back out when it is stored)
    greedy             of the routed ones, those whose chosen model had the largest probability of its pmf (the
                       rest are exploration)
    probability_sum    Σ p(chosen) of the routed decisions
    cost_weight_sum    Σ λ of all the decisions
    policy_version     the largest policy version among them
    feedback           feedback rows that callers sent in the minute for decisions of `model` (receipt time;
                       the rows the service writes itself when a reward window closes are not counted)
    learned            learned feedbacks with an observed quality (not a window's default reward) of the
                       decisions made in the minute (decision time); the sums below are over these
    quality_sum, cost_sum, reward_sum, lag_sum (received − decided, seconds)
    ips_weight_sum, ips_quality_sum, ips_cost_sum, ips_reward_sum
                       Σ 1/p, Σ q/p, Σ c/p, Σ r/p: the self-normalised IPS estimate of "always `model`" over
                       any range is Σ r/p ÷ Σ 1/p (Swaminathan & Joachims 2015); `log.monitor` uses it for the
                       best fixed model's level

The functions here turn a transaction's rows into increments (pure Python); `UPSERT` adds them with one
`INSERT … ON CONFLICT … DO UPDATE` statement, written in SQL that SQLite (3.24+) and PostgreSQL both accept.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ..types import Decision
from .records import CALLER_POLICY, NAMED_ROUTER_POLICIES, CallRecord, FeedbackRecord, FeedbackStatus, unrouted

GREEDY_TOLERANCE = 1e-9
"""A chosen model whose probability is within this of the pmf's largest is the greedy choice."""

SUMS = (
    "decisions", "routed", "greedy", "probability_sum", "cost_weight_sum", "feedback", "learned", "quality_sum",
    "cost_sum", "reward_sum", "lag_sum", "ips_weight_sum", "ips_quality_sum", "ips_cost_sum", "ips_reward_sum",
)  # fmt: skip
"""The columns that increments add to (`policy_version` keeps its largest value instead)."""
COLUMNS = ("minute", "model", *SUMS, "policy_version")
SPANS = (1, 15, 60)
"""The spans (minutes) at which the rollup is kept."""

TABLE = """CREATE TABLE IF NOT EXISTS minute_stats (
    span INTEGER NOT NULL,
    minute INTEGER NOT NULL,
    model TEXT NOT NULL,
    decisions INTEGER NOT NULL DEFAULT 0,
    greedy INTEGER NOT NULL DEFAULT 0,
    probability_sum REAL NOT NULL DEFAULT 0,
    cost_weight_sum REAL NOT NULL DEFAULT 0,
    feedback INTEGER NOT NULL DEFAULT 0,
    learned INTEGER NOT NULL DEFAULT 0,
    quality_sum REAL NOT NULL DEFAULT 0,
    cost_sum REAL NOT NULL DEFAULT 0,
    reward_sum REAL NOT NULL DEFAULT 0,
    lag_sum REAL NOT NULL DEFAULT 0,
    ips_weight_sum REAL NOT NULL DEFAULT 0,
    ips_quality_sum REAL NOT NULL DEFAULT 0,
    ips_cost_sum REAL NOT NULL DEFAULT 0,
    ips_reward_sum REAL NOT NULL DEFAULT 0,
    policy_version INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (span, minute, model)
) WITHOUT ROWID"""
"""SQLite: WITHOUT ROWID stores the rows in primary-key order, so a range of one span is read from contiguous
pages (with a rowid table the spans' rows interleave and a week's read touched a page per row). PostgreSQL:
drop the clause (its primary-key index serves the same range scan)."""

ADD_ROUTED = "ALTER TABLE minute_stats ADD COLUMN routed INTEGER NOT NULL DEFAULT 0"
"""`TABLE` is the table as migration 3 created it; migration 5 adds `routed` (after `policy_version`: every
statement here names its columns)."""

UPSERT = (
    f"INSERT INTO minute_stats (span, {', '.join(COLUMNS)}) VALUES {{values}} ON CONFLICT (span, minute, model) "
    "DO UPDATE SET "
    + ", ".join(f"{c} = minute_stats.{c} + excluded.{c}" for c in SUMS)
    + ", policy_version = CASE WHEN excluded.policy_version > minute_stats.policy_version "
    "THEN excluded.policy_version ELSE minute_stats.policy_version END"
)
"""Add increments (`{values}`: one `(?, …)` group per row; (span, minute, model) unique within one statement, as
PostgreSQL requires)."""
ROW_PLACEHOLDERS = "(" + ", ".join("?" * (len(COLUMNS) + 1)) + ")"

SELECT = (
    "SELECT (minute / ?) * ? AS minute, model, "
    + ", ".join(f"SUM({c}) AS {c}" for c in SUMS)
    + ", MAX(policy_version) AS policy_version FROM minute_stats WHERE span = ? AND minute >= ? AND minute < ? "
    "GROUP BY (minute / ?) * ?, model ORDER BY 1, 2"
)
"""Rows summed into buckets of `step` minutes: parameters (step, step, span, first minute, end minute, step,
step). Integer division on an INTEGER column: the same in SQLite and PostgreSQL."""


def span_for(step: int) -> int:
    """The longest span of `SPANS` that divides `step` (minutes)."""
    return max(s for s in SPANS if step % s == 0)


def select_parameters(first: int, end: int, step: int) -> tuple[int, ...]:
    """The parameters of `SELECT` for the minutes `first` ≤ m < `end` in buckets of `step` minutes."""
    return (step, step, span_for(step), first, end, step, step)


def cover(first: int, end: int, spans: Sequence[int] = SPANS) -> list[tuple[int, int, int]]:
    """Reads `(first, end, span)` of one span each, aligned on it, whose minutes together are exactly
    `first` ≤ m < `end`: the longest span in the middle, shorter ones at the edges. Read with
    `minute_stats(lo, hi, span)`, a week is 168 hours and at most 2 × (3 + 14) edge rows per model."""
    if first >= end:
        return []
    span, shorter = spans[-1], spans[:-1]
    lo, hi = -(-first // span) * span, end // span * span
    if not shorter:  # one minute: every range is aligned on it
        return [(first, end, span)]
    if lo >= hi:
        return cover(first, end, shorter)
    return [*cover(first, lo, shorter), (lo, hi, span), *cover(hi, end, shorter)]


def upsert_rows(increments: Sequence[MinuteStats]) -> list[tuple[object, ...]]:
    """`increments` (per minute) as the `UPSERT` rows of every span: (span, *values), keys unique."""
    out: list[tuple[object, ...]] = []
    for span in SPANS:
        if span == 1:
            out.extend((1, *row.values()) for row in increments)
            continue
        merged: dict[tuple[int, str], MinuteStats] = {}
        for row in increments:
            key = (row.minute - row.minute % span, row.model)
            entry = merged.get(key)
            if entry is None:
                entry = merged[key] = MinuteStats(*key)
            entry.add(row)
        out.extend((span, *row.values()) for row in merged.values())
    return out


@dataclass(slots=True)
class MinuteStats:
    """One (bucket, model) row of `Reader.minute_stats`: the sums of the `minute_stats` rows in the bucket.
    `minute` is the bucket's first minute (⌊unix time / 60⌋)."""

    minute: int
    model: str
    decisions: int = 0
    routed: int = 0
    greedy: int = 0
    probability_sum: float = 0.0
    cost_weight_sum: float = 0.0
    feedback: int = 0
    learned: int = 0
    quality_sum: float = 0.0
    cost_sum: float = 0.0
    reward_sum: float = 0.0
    lag_sum: float = 0.0
    ips_weight_sum: float = 0.0
    ips_quality_sum: float = 0.0
    ips_cost_sum: float = 0.0
    ips_reward_sum: float = 0.0
    policy_version: int = 0

    def values(self) -> tuple[object, ...]:
        """The values of `COLUMNS`, in that order (written out: the writer calls this for every row it adds, and a
        `getattr` per column was a third of a small batch's rollup work; checked against `COLUMNS` below)."""
        return (
            self.minute, self.model, self.decisions, self.routed, self.greedy, self.probability_sum,
            self.cost_weight_sum, self.feedback, self.learned, self.quality_sum, self.cost_sum, self.reward_sum,
            self.lag_sum, self.ips_weight_sum, self.ips_quality_sum, self.ips_cost_sum, self.ips_reward_sum,
            self.policy_version,
        )  # fmt: skip

    def add(self, other: MinuteStats) -> None:
        """Add `other`'s sums (and keep the larger policy version); written out like `values`."""
        self.decisions += other.decisions
        self.routed += other.routed
        self.greedy += other.greedy
        self.probability_sum += other.probability_sum
        self.cost_weight_sum += other.cost_weight_sum
        self.feedback += other.feedback
        self.learned += other.learned
        self.quality_sum += other.quality_sum
        self.cost_sum += other.cost_sum
        self.reward_sum += other.reward_sum
        self.lag_sum += other.lag_sum
        self.ips_weight_sum += other.ips_weight_sum
        self.ips_quality_sum += other.ips_quality_sum
        self.ips_cost_sum += other.ips_cost_sum
        self.ips_reward_sum += other.ips_reward_sum
        self.policy_version = max(self.policy_version, other.policy_version)


def _check_written_out() -> None:
    """`values` and `add` name every column of `COLUMNS` / `SUMS`, in order (run once, at import)."""
    if tuple(f.name for f in fields(MinuteStats)) != COLUMNS:
        raise AssertionError("MinuteStats' fields are not COLUMNS")
    probe = MinuteStats(*range(len(COLUMNS)))
    if probe.values() != tuple(getattr(probe, c) for c in COLUMNS):
        raise AssertionError("MinuteStats.values does not follow COLUMNS")
    total = MinuteStats(*range(len(COLUMNS)))
    total.add(MinuteStats(*range(100, 100 + len(COLUMNS))))
    for i, name in enumerate(COLUMNS):
        expected = {"minute": 0, "model": 1, "policy_version": 100 + i}.get(name, i + 100 + i)
        if getattr(total, name) != expected:
            raise AssertionError(f"MinuteStats.add does not add {name}")


_check_written_out()


def minute_of(t: float) -> int:
    """⌊t / 60⌋ for a Unix time `t` in seconds."""
    return math.floor(t / 60.0)


def decision_increments(decisions: Iterable[Decision]) -> list[MinuteStats]:
    """What storing `decisions` adds to the rollup."""
    out: dict[tuple[int, str], MinuteStats] = {}
    for d in decisions:
        key = (minute_of(d.created_at), d.model)
        row = out.get(key)
        if row is None:
            row = out[key] = MinuteStats(*key)
        row.decisions += 1
        row.cost_weight_sum += d.cost_weight
        if not unrouted(d.policy):
            row.routed += 1
            row.greedy += is_greedy(d.probability, d.pmf)
            row.probability_sum += d.probability
        row.policy_version = max(row.policy_version, d.policy_version)
    return list(out.values())


def is_greedy(probability: float, pmf: Sequence[float]) -> bool:
    """Whether the chosen model had the pmf's largest probability (within `GREEDY_TOLERANCE`)."""
    return probability >= max(pmf) - GREEDY_TOLERANCE


def fallback_increments(
    records: Iterable[CallRecord], decided: Mapping[str, tuple[float, str, float, bool]]
) -> list[MinuteStats]:
    """What storing the call records `records` takes back out of the routed figures: each gateway fallback's
    decision (a routed call with `attempt` ≥ 2) was counted as routed when it was stored. `decided` maps the
    decision id of each such record, stored for the first time, to its decision's (created_at, model,
    probability, greedy) — only decisions that `decision_increments` counted as routed."""
    out: dict[tuple[int, str], MinuteStats] = {}
    seen: set[str] = set()
    for r in records:
        if not is_fallback(r) or r.decision_id not in decided or r.decision_id in seen:
            continue
        seen.add(r.decision_id)
        created_at, model, probability, greedy = decided[r.decision_id]
        key = (minute_of(created_at), model)
        row = out.get(key)
        if row is None:
            row = out[key] = MinuteStats(*key)
        row.routed -= 1
        row.greedy -= greedy
        row.probability_sum -= probability
    return list(out.values())


FALLBACK_DECISIONS_SQL = "SELECT decision_id, created_at, model, probability, pmf, policy FROM decisions"
"""The columns `routed_decisions` reads, for each backend's `WHERE decision_id IN …`."""


def routed_decisions(rows: Iterable[Sequence[Any]]) -> dict[str, tuple[float, str, float, bool]]:
    """`fallback_increments`' `decided` from rows of `FALLBACK_DECISIONS_SQL`: per routed decision id its
    (created_at, model, probability, greedy); unrouted decisions (never counted as routed) left out."""
    return {
        str(row[0]): (float(row[1]), str(row[2]), float(row[3]), is_greedy(float(row[3]), json.loads(row[4])))
        for row in rows
        if not unrouted(str(row[5]))
    }


def is_fallback(record: CallRecord) -> bool:
    """A routed call after its request's first try failed (the gateway's fallback decision)."""
    return record.routed and record.attempt > 1


def counts_as_learned(record: FeedbackRecord) -> bool:
    """A learned feedback with an observed quality (a closed window's default reward is not one)."""
    return record.learn and record.status != FeedbackStatus.DEFAULT


LEARNED_SQL = f"learn = 1 AND status <> '{FeedbackStatus.DEFAULT.value}'"
"""`counts_as_learned` as a condition on `feedback` rows (`Reader.stats`: `/v1/stats` counts what the dashboard
counts)."""


def feedback_increments(
    records: Sequence[FeedbackRecord], decided: Mapping[str, tuple[float, float]]
) -> list[MinuteStats]:
    """What storing `records` adds to the rollup; `decided` maps the decision id of each record that
    `counts_as_learned` to its decision's (created_at, probability)."""
    out: dict[tuple[int, str], MinuteStats] = {}

    def row(minute: int, model: str) -> MinuteStats:
        found = out.get((minute, model))
        if found is None:
            found = out[(minute, model)] = MinuteStats(minute, model)
        return found

    for r in records:
        if r.status not in _SYSTEM:
            row(minute_of(r.received_at), r.model).feedback += 1
        if not counts_as_learned(r) or r.decision_id not in decided:
            continue
        created_at, probability = decided[r.decision_id]
        entry = row(minute_of(created_at), r.model)
        entry.learned += 1
        entry.quality_sum += r.quality
        entry.cost_sum += r.realised_cost_usd
        entry.reward_sum += r.reward
        entry.lag_sum += max(0.0, r.received_at - created_at)
        w = 1.0 / probability if probability > 0 else 0.0
        entry.ips_weight_sum += w
        entry.ips_quality_sum += w * r.quality
        entry.ips_cost_sum += w * r.realised_cost_usd
        entry.ips_reward_sum += w * r.reward
    return list(out.values())


_SYSTEM = frozenset({FeedbackStatus.DEFAULT.value, FeedbackStatus.AGGREGATE.value})

_ROUTED_FIRST_TRY = " AND ".join(
    [f"d.policy != '{CALLER_POLICY}'", *(f"substr(d.policy, 1, {len(p)}) != '{p}'" for p in NAMED_ROUTER_POLICIES),
     "NOT (COALESCE(c.routed, 0) = 1 AND c.attempt > 1)"]
)
"""SQL: the decision `d` (with its call record `c`, if any) is the bandit's first try (`unrouted`, `is_fallback`)."""

BACKFILL = (
    # Every decision stored (pmf is a JSON array: its largest value via json_each), the routed ones apart.
    f"INSERT INTO minute_stats (span, {', '.join(COLUMNS)}) "
    f"SELECT 1, CAST(d.created_at / 60 AS INTEGER), d.model, COUNT(*), "
    f"SUM(CASE WHEN {_ROUTED_FIRST_TRY} THEN 1 ELSE 0 END), "
    f"SUM(CASE WHEN {_ROUTED_FIRST_TRY} AND d.probability >= "
    f"(SELECT MAX(CAST(value AS REAL)) FROM json_each(d.pmf)) - {GREEDY_TOLERANCE} THEN 1 ELSE 0 END), "
    f"SUM(CASE WHEN {_ROUTED_FIRST_TRY} THEN d.probability ELSE 0 END), SUM(d.cost_weight), "
    "0, 0, 0, 0, 0, 0, 0, 0, 0, 0, MAX(d.policy_version) "
    "FROM decisions d LEFT JOIN calls c ON c.decision_id = d.decision_id WHERE true GROUP BY 2, 3 "
    "ON CONFLICT (span, minute, model) DO NOTHING",
    # Feedback callers sent, by minute received.
    f"INSERT INTO minute_stats (span, {', '.join(COLUMNS)}) "
    "SELECT 1, CAST(received_at / 60 AS INTEGER), model, 0, 0, 0, 0, 0, COUNT(*), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 "
    "FROM feedback WHERE status NOT IN ('default', 'aggregate') GROUP BY 2, 3 "
    "ON CONFLICT (span, minute, model) DO UPDATE SET feedback = minute_stats.feedback + excluded.feedback",
    # Learned feedback with an observed quality, by the minute its decision was made.
    f"INSERT INTO minute_stats (span, {', '.join(COLUMNS)}) "
    "SELECT 1, CAST(d.created_at / 60 AS INTEGER), f.model, 0, 0, 0, 0, 0, 0, COUNT(*), SUM(f.quality), "
    "SUM(f.realised_cost_usd), SUM(f.reward), SUM(MAX(0.0, f.received_at - d.created_at)), "
    "SUM(1.0 / d.probability), SUM(f.quality / d.probability), SUM(f.realised_cost_usd / d.probability), "
    "SUM(f.reward / d.probability), 0 "
    "FROM feedback f JOIN decisions d ON d.decision_id = f.decision_id "
    "WHERE f.learn = 1 AND f.status != 'default' AND d.probability > 0 GROUP BY 2, 3 "
    "ON CONFLICT (span, minute, model) DO UPDATE SET "
    + ", ".join(f"{c} = minute_stats.{c} + excluded.{c}" for c in SUMS[SUMS.index("learned") :]),
    # The longer spans, from the minutes.
    *(
        f"INSERT INTO minute_stats (span, {', '.join(COLUMNS)}) SELECT {span}, (minute / {span}) * {span}, model, "
        + ", ".join(f"SUM({c})" for c in SUMS)
        + ", MAX(policy_version) FROM minute_stats WHERE span = 1 GROUP BY 2, 3 "
        "ON CONFLICT (span, minute, model) DO NOTHING"
        for span in SPANS[1:]
    ),
)
"""SQLite statements that fill the rollup from the stored rows (an empty `minute_stats`; migration 5 rebuilds it
with `routed`, so that a database migrated from before counts only the bandit's own first tries as routed)."""

_V3_SUMS = (
    "decisions", "greedy", "probability_sum", "cost_weight_sum", "feedback", "learned", "quality_sum", "cost_sum",
    "reward_sum", "lag_sum", "ips_weight_sum", "ips_quality_sum", "ips_cost_sum", "ips_reward_sum",
)  # fmt: skip
_V3_COLUMNS = ("minute", "model", *_V3_SUMS, "policy_version")

BACKFILL_V3 = (
    # Decisions stored before the rollup existed (pmf is a JSON array: its largest value via json_each).
    f"INSERT INTO minute_stats (span, {', '.join(_V3_COLUMNS)}) "
    "SELECT 1, CAST(created_at / 60 AS INTEGER), model, COUNT(*), "
    f"SUM(CASE WHEN probability >= (SELECT MAX(CAST(value AS REAL)) FROM json_each(pmf)) - {GREEDY_TOLERANCE} "
    "THEN 1 ELSE 0 END), SUM(probability), SUM(cost_weight), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, MAX(policy_version) "
    "FROM decisions WHERE true GROUP BY 2, 3 ON CONFLICT (span, minute, model) DO NOTHING",
    # Feedback callers sent, by minute received.
    f"INSERT INTO minute_stats (span, {', '.join(_V3_COLUMNS)}) "
    "SELECT 1, CAST(received_at / 60 AS INTEGER), model, 0, 0, 0, 0, COUNT(*), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 "
    "FROM feedback WHERE status NOT IN ('default', 'aggregate') GROUP BY 2, 3 "
    "ON CONFLICT (span, minute, model) DO UPDATE SET feedback = minute_stats.feedback + excluded.feedback",
    # Learned feedback with an observed quality, by the minute its decision was made.
    f"INSERT INTO minute_stats (span, {', '.join(_V3_COLUMNS)}) "
    "SELECT 1, CAST(d.created_at / 60 AS INTEGER), f.model, 0, 0, 0, 0, 0, COUNT(*), SUM(f.quality), "
    "SUM(f.realised_cost_usd), SUM(f.reward), SUM(MAX(0.0, f.received_at - d.created_at)), "
    "SUM(1.0 / d.probability), SUM(f.quality / d.probability), SUM(f.realised_cost_usd / d.probability), "
    "SUM(f.reward / d.probability), 0 "
    "FROM feedback f JOIN decisions d ON d.decision_id = f.decision_id "
    "WHERE f.learn = 1 AND f.status != 'default' AND d.probability > 0 GROUP BY 2, 3 "
    "ON CONFLICT (span, minute, model) DO UPDATE SET "
    + ", ".join(f"{c} = minute_stats.{c} + excluded.{c}" for c in _V3_SUMS[5:]),
    # The longer spans, from the minutes.
    *(
        f"INSERT INTO minute_stats (span, {', '.join(_V3_COLUMNS)}) SELECT {span}, (minute / {span}) * {span}, "
        "model, "
        + ", ".join(f"SUM({c})" for c in _V3_SUMS)
        + ", MAX(policy_version) FROM minute_stats WHERE span = 1 GROUP BY 2, 3 "
        "ON CONFLICT (span, minute, model) DO NOTHING"
        for span in SPANS[1:]
    ),
)
"""SQLite statements that filled the rollup from the rows of a database created before it (migration 3; kept as
shipped: its columns are those of migration 3, `routed` came with migration 5)."""

# -- PostgreSQL (`store/postgres.py`): the same table, upsert and read in its dialect ---------------------------
TABLE_POSTGRES = (
    TABLE.replace(") WITHOUT ROWID", ")").replace(" REAL ", " DOUBLE PRECISION ")
    .replace("policy_version INTEGER", "policy_version BIGINT")
)
"""`TABLE` for PostgreSQL: no WITHOUT ROWID (its primary-key index serves the range scan) and DOUBLE PRECISION
sums (PostgreSQL's REAL is 4 bytes)."""
ROW_PLACEHOLDERS_POSTGRES = "(" + ", ".join(["%s"] * (len(COLUMNS) + 1)) + ")"
SELECT_POSTGRES = SELECT.replace("GROUP BY (minute / ?) * ?, model", "GROUP BY 1, 2").replace("?", "%s")
"""`SELECT` for PostgreSQL, which does not see two parameters of the same value as the same GROUP BY
expression: grouped by output position, with the first five parameters of `select_parameters`."""
_MINUTE_PG = "FLOOR({t} / 60)::INTEGER"
BACKFILL_POSTGRES_V3 = (
    f"INSERT INTO minute_stats (span, {', '.join(_V3_COLUMNS)}) "
    f"SELECT 1, {_MINUTE_PG.format(t='created_at')}, model, COUNT(*), "
    "SUM(CASE WHEN probability >= (SELECT MAX(v::DOUBLE PRECISION) FROM json_array_elements_text(pmf::json) v) "
    f"- {GREEDY_TOLERANCE} THEN 1 ELSE 0 END), SUM(probability), SUM(cost_weight), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "
    "MAX(policy_version) FROM decisions GROUP BY 2, 3 ON CONFLICT (span, minute, model) DO NOTHING",
    f"INSERT INTO minute_stats (span, {', '.join(_V3_COLUMNS)}) "
    f"SELECT 1, {_MINUTE_PG.format(t='received_at')}, model, 0, 0, 0, 0, COUNT(*), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 "
    "FROM feedback WHERE status NOT IN ('default', 'aggregate') GROUP BY 2, 3 "
    "ON CONFLICT (span, minute, model) DO UPDATE SET feedback = minute_stats.feedback + excluded.feedback",
    f"INSERT INTO minute_stats (span, {', '.join(_V3_COLUMNS)}) "
    f"SELECT 1, {_MINUTE_PG.format(t='d.created_at')}, f.model, 0, 0, 0, 0, 0, COUNT(*), SUM(f.quality), "
    "SUM(f.realised_cost_usd), SUM(f.reward), SUM(GREATEST(0.0, f.received_at - d.created_at)), "
    "SUM(1.0 / d.probability), SUM(f.quality / d.probability), SUM(f.realised_cost_usd / d.probability), "
    "SUM(f.reward / d.probability), 0 "
    "FROM feedback f JOIN decisions d ON d.decision_id = f.decision_id "
    "WHERE f.learn = 1 AND f.status != 'default' AND d.probability > 0 GROUP BY 2, 3 "
    "ON CONFLICT (span, minute, model) DO UPDATE SET "
    + ", ".join(f"{c} = minute_stats.{c} + excluded.{c}" for c in _V3_SUMS[5:]),
    *BACKFILL_V3[3:],  # the longer spans from the minutes: the same SQL
)
"""`BACKFILL_V3` for PostgreSQL (a database prepared at schema version 2 by a PostgreSQL store; migration 3, kept
as shipped)."""


def _postgres(sql: str) -> str:
    """A `BACKFILL` statement in PostgreSQL's dialect (minutes, the pmf's JSON array, the larger of two values)."""
    for sqlite, postgres in (
        ("CAST(d.created_at / 60 AS INTEGER)", _MINUTE_PG.format(t="d.created_at")),
        ("CAST(received_at / 60 AS INTEGER)", _MINUTE_PG.format(t="received_at")),
        ("(SELECT MAX(CAST(value AS REAL)) FROM json_each(d.pmf))",
         "(SELECT MAX(v::DOUBLE PRECISION) FROM json_array_elements_text(d.pmf::json) v)"),
        ("SUM(MAX(0.0, ", "SUM(GREATEST(0.0, "),
    ):  # fmt: skip
        sql = sql.replace(sqlite, postgres)
    return sql


BACKFILL_POSTGRES = tuple(_postgres(sql) for sql in BACKFILL)
"""`BACKFILL` for PostgreSQL (migration 5)."""


def from_row(row: Sequence[object]) -> MinuteStats:
    """A `SELECT` row as `MinuteStats`, with Python ints and floats whatever the driver returned."""
    values = dict(zip(COLUMNS, row, strict=True))
    out = MinuteStats(int(values["minute"]), str(values["model"]))  # type: ignore[call-overload]
    for name in (*SUMS, "policy_version"):
        kind = type(getattr(out, name))
        setattr(out, name, kind(values[name]))
    return out
