"""Named routers' counts (`[[routers]]`: cascades, learned cascades, LLM routers), kept by the store in the write
transaction that stores each request's decision and chain, so that `GET /v1/stats` and the dashboard show the
deployment's totals: the same from every worker and replica, surviving restarts (migration 7).

One row of `router_stats` per (router, day, model), `day` = ⌊unix time / 86400⌋ (UTC) of the request's call
record, `model` the model whose answer the request returned ('' for a request no model answered). What a row adds
up, per request of the router (one chain, `of_chain`):

    requests             requests answered or failed by the router (a request the upstream refused as the
                         client's fault, 4xx, is neither: nothing is stored for it)
    failed_requests      requests no model answered (502/504): no decision is stored, only this count
    escalations          accept/escalate steps whose action was `escalate` (a chain of n models escalates at
                         most n − 1 times; a failed call moving on to the next model is not an escalation)
    escalated_requests   requests with at least one escalation (`escalation_rate` = this ÷ requests)
    answer_calls, judge_calls, router_calls
                         the chain's calls by role (failed ones included)
    failed_calls         the chain's calls that failed (any role)
    parsed, fallbacks    LLM routers: the routing LLM's reply named a candidate, or it did not (or failed)
    spend_usd            Σ every call's cost in the chain: answers, the judge's scores, the routing LLM's choice

Rows are added to, never deleted: `retention_days` deletes old decisions and chains and leaves these counts, as
it leaves the per-minute rollup (`rollup.py`): they are history. A database from before migration 7 gets them
from its stored chains (`BACKFILL`), which hold every stored request; requests no model answered were not stored
then, so `failed_requests` starts at 0, and chains retention had deleted are not counted.

Why a rollup rather than an aggregate over `chains` when asked: a chain is a JSON document, so the aggregate
parses every stored chain on every read (measured in `benchmarks/bench_router_stats.py`), the dashboard asks
every 2 seconds, retention would make the totals shrink, and failed requests store no chain.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

SECONDS_PER_DAY = 86400

COUNTS = (
    "requests", "failed_requests", "escalations", "escalated_requests", "answer_calls", "judge_calls",
    "router_calls", "failed_calls", "parsed", "fallbacks", "spend_usd",
)  # fmt: skip
"""The columns that increments add to."""
KEY = ("router", "day", "model")
COLUMNS = (*KEY, *COUNTS)
FAILED = ""
"""The `model` of a request that no model answered."""

TABLE = (
    "CREATE TABLE IF NOT EXISTS router_stats (router TEXT NOT NULL, day INTEGER NOT NULL, model TEXT NOT NULL, "
    + ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in COUNTS[:-1])
    + ", spend_usd REAL NOT NULL DEFAULT 0, PRIMARY KEY (router, day, model)) WITHOUT ROWID"
)
"""SQLite (WITHOUT ROWID: the rows live in key order, a router's days together)."""
TABLE_POSTGRES = TABLE.replace(" WITHOUT ROWID", "").replace(" INTEGER ", " BIGINT ").replace(" REAL ",
                                                                                            " DOUBLE PRECISION ")
UPSERT = (
    f"INSERT INTO router_stats ({', '.join(COLUMNS)}) VALUES {{values}} ON CONFLICT (router, day, model) DO UPDATE "
    "SET " + ", ".join(f"{c} = router_stats.{c} + excluded.{c}" for c in COUNTS)
)
"""Add increments (`{values}`: one placeholder group per row, keys unique within the statement); SQL that SQLite
(3.24+) and PostgreSQL both accept."""
ROW_PLACEHOLDERS = "(" + ", ".join("?" * len(COLUMNS)) + ")"
ROW_PLACEHOLDERS_POSTGRES = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
SELECT = (
    "SELECT router, model, " + ", ".join(f"SUM({c})" for c in COUNTS)
    + " FROM router_stats GROUP BY router, model ORDER BY router, model"
)
"""Totals per (router, answering model) over every day: at most routers × models × days rows read."""


@dataclass(slots=True)
class RouterCounts:
    """One (router, day, model) increment, or (with `day` = -1) a total of `Reader.router_counts`."""

    router: str
    day: int
    model: str
    requests: int = 0
    failed_requests: int = 0
    escalations: int = 0
    escalated_requests: int = 0
    answer_calls: int = 0
    judge_calls: int = 0
    router_calls: int = 0
    failed_calls: int = 0
    parsed: int = 0
    fallbacks: int = 0
    spend_usd: float = 0.0

    def values(self) -> tuple[object, ...]:
        """The values of `COLUMNS`, in that order."""
        return tuple(getattr(self, c) for c in COLUMNS)

    def add(self, other: RouterCounts) -> None:
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


assert tuple(f.name for f in fields(RouterCounts)) == COLUMNS


def day_of(t: float) -> int:
    """⌊t / 86400⌋ for a Unix time `t` in seconds (UTC days)."""
    return math.floor(t / SECONDS_PER_DAY)


def of_chain(chain: Mapping[str, Any], at: float) -> RouterCounts:
    """What one request of a named router adds, from its chain document (as stored in `chains`, or the same
    shape for a request that failed: `answered_by` None): `router`, `strategy`, `calls` (each with `role`,
    `cost_usd`, `error`), `steps` (each with `action`), `answered_by`, and `named` for an LLM router. `at`: the
    request's time (its call record's `created_at`). `BACKFILL` is the same rule in SQL."""
    calls: Sequence[Mapping[str, Any]] = chain.get("calls") or ()
    steps: Sequence[Mapping[str, Any]] = chain.get("steps") or ()
    answered = chain.get("answered_by")
    escalations = sum(1 for s in steps if s.get("action") == "escalate")
    roles = [c.get("role") for c in calls]
    llm_router = chain.get("strategy") == "llm-router"
    return RouterCounts(
        router=str(chain["router"]), day=day_of(at), model=FAILED if answered is None else str(answered),
        requests=1, failed_requests=int(answered is None), escalations=escalations,
        escalated_requests=int(escalations > 0), answer_calls=roles.count("answer"), judge_calls=roles.count("judge"),
        router_calls=roles.count("router"), failed_calls=sum(1 for c in calls if c.get("error") is not None),
        parsed=int(llm_router and chain.get("named") is not None),
        fallbacks=int(llm_router and chain.get("named") is None),
        spend_usd=float(sum(float(c.get("cost_usd") or 0.0) for c in calls)),
    )  # fmt: skip


def upsert_rows(increments: Iterable[RouterCounts]) -> list[tuple[object, ...]]:
    """`increments` merged per key (PostgreSQL refuses one statement that updates a row twice), as `UPSERT` rows."""
    merged: dict[tuple[str, int, str], RouterCounts] = {}
    for row in increments:
        key = (row.router, row.day, row.model)
        entry = merged.get(key)
        if entry is None:
            merged[key] = RouterCounts(*key)
            entry = merged[key]
        entry.add(row)
    return [row.values() for row in merged.values()]


def from_row(row: Sequence[object]) -> RouterCounts:
    """A `SELECT` row (router, model, the sums) as a total (`day` = -1), with Python ints and floats."""
    out = RouterCounts(str(row[0]), -1, str(row[1]))
    for name, value in zip(COUNTS, row[2:], strict=True):
        setattr(out, name, type(getattr(out, name))(value or 0))
    return out


# -- filling the table from the stored chains (migration 7) -----------------------------------------------------
MAX_COST = "1e300"
"""The largest call cost (USD) the backfill adds: a larger one, or one beyond a float's range, is no cost the
service wrote (it counts 0), and the totals stay finite (`/v1/stats` refuses to say an infinity)."""


def _backfill(source: str, each: str, field: str, element: str, number: str, day: str, where: str) -> str:
    """`BACKFILL` in a dialect: `source` the chains with their call records (`c.created_at`, `c.model`), `each`
    the elements of the chain's array `{path}` (as `e`), `field` the chain's member `{key}` as text, `element` an
    element's member `{key}` as text (NULL when the element is not an object), `number` an element's member as a
    float (0 when not a number, or above `MAX_COST`), `day` the call's day, `where` the filter."""
    calls, steps = each.format(path="calls"), each.format(path="steps")
    per_chain = (
        f"SELECT {field.format(key='router')} AS router, {day} AS day, "
        f"COALESCE({field.format(key='answered_by')}, c.model) AS model, "
        f"(SELECT COUNT(*) FROM {steps} WHERE {element.format(key='action')} = 'escalate') AS escalations, "
        f"(SELECT COUNT(*) FROM {calls} WHERE {element.format(key='role')} = 'answer') AS answer_calls, "
        f"(SELECT COUNT(*) FROM {calls} WHERE {element.format(key='role')} = 'judge') AS judge_calls, "
        f"(SELECT COUNT(*) FROM {calls} WHERE {element.format(key='role')} = 'router') AS router_calls, "
        f"(SELECT COUNT(*) FROM {calls} WHERE {element.format(key='error')} IS NOT NULL) AS failed_calls, "
        f"CASE WHEN {field.format(key='strategy')} = 'llm-router' THEN 1 ELSE 0 END AS llm_router, "
        f"CASE WHEN {field.format(key='named')} IS NULL THEN 0 ELSE 1 END AS named, "
        f"(SELECT COALESCE(SUM({number.format(key='cost_usd')}), 0) FROM {calls}) AS spend "
        f"FROM {source} WHERE {where}"
    )
    return (
        f"INSERT INTO router_stats ({', '.join(COLUMNS)}) SELECT router, day, model, COUNT(*), 0, SUM(escalations), "
        "SUM(CASE WHEN escalations > 0 THEN 1 ELSE 0 END), SUM(answer_calls), SUM(judge_calls), SUM(router_calls), "
        "SUM(failed_calls), SUM(llm_router * named), SUM(llm_router * (1 - named)), SUM(spend) "
        f"FROM ({per_chain}) AS per_chain WHERE true GROUP BY router, day, model "
        "ON CONFLICT (router, day, model) DO NOTHING"
    )


BACKFILL = _backfill(
    source="chains h JOIN calls c ON c.decision_id = h.decision_id",
    each="json_each(h.chain, '$.{path}') AS e",
    field="json_extract(h.chain, '$.{key}')",
    element="json_extract(h.chain, e.fullkey || '.{key}')",  # by path: NULL, not an error, for a non-object
    number=f"CASE WHEN json_type(h.chain, e.fullkey || '.{{key}}') IN ('integer', 'real') AND "
           f"abs(json_extract(h.chain, e.fullkey || '.{{key}}')) <= {MAX_COST} "
           "THEN json_extract(h.chain, e.fullkey || '.{key}') ELSE 0 END",
    day=f"CAST(c.created_at / {SECONDS_PER_DAY} AS INTEGER)",
    where="CASE WHEN json_valid(h.chain) THEN json_type(h.chain) = 'object' AND json_type(h.chain, '$.router') = "
          "'text' ELSE 0 END",
)
"""SQLite: the counts of every stored chain (`of_chain` in SQL), into an empty `router_stats`. A chain that is not
a JSON object naming its router (none the service wrote) is left out."""
JSON_OR_NULL = "bandit_router_json_or_null"
"""A function that migration 7 creates for its backfill on PostgreSQL, and drops: text → jsonb, NULL when it cannot
be read (not JSON; or JSON that `json` accepts but no operator can read: a `\\u0000` or a lone surrogate in a
string, a nesting deeper than the parser's stack). PostgreSQL 15 has no `IS JSON`; a plain cast, or `->` on a
`json` value, would fail the migration, and the service's start, on one bad row."""
BACKFILL_POSTGRES = (
    f"CREATE OR REPLACE FUNCTION {JSON_OR_NULL}(doc TEXT) RETURNS jsonb LANGUAGE plpgsql AS "
    "$$ BEGIN RETURN doc::jsonb; EXCEPTION WHEN OTHERS THEN RETURN NULL; END $$",
    _backfill(
        source=f"(SELECT c.created_at, c.model, {JSON_OR_NULL}(h.chain) AS doc FROM chains h "
               "JOIN calls c ON c.decision_id = h.decision_id OFFSET 0) AS c",  # OFFSET 0: parsed once per row
        each="jsonb_array_elements(CASE WHEN jsonb_typeof(c.doc -> '{path}') = 'array' THEN c.doc -> '{path}' END) "
             "AS e(value)",
        field="(c.doc ->> '{key}')",
        element="CASE WHEN jsonb_typeof(e.value) = 'object' THEN e.value ->> '{key}' END",
        number="CASE WHEN jsonb_typeof(e.value) = 'object' AND jsonb_typeof(e.value -> '{key}') = 'number' "
               f"THEN CASE WHEN abs((e.value ->> '{{key}}')::NUMERIC) <= {MAX_COST} "
               "THEN (e.value ->> '{key}')::DOUBLE PRECISION ELSE 0 END ELSE 0 END",
        day=f"FLOOR(c.created_at / {SECONDS_PER_DAY})::INTEGER",
        where="jsonb_typeof(c.doc) = 'object' AND jsonb_typeof(c.doc -> 'router') = 'string'",
    ),
    f"DROP FUNCTION {JSON_OR_NULL}(TEXT)",
)
"""`BACKFILL` for PostgreSQL, with its helper function created before and dropped after."""
