"""Named routers' counts (`store/router_stats.py`): a rollup written with each decision, or an aggregate over the
stored chains on every read? Measured on SQLite.

A database of `CHAINS` named-router requests (three routers: a judged two-model cascade escalating a third of its
requests, a learned cascade, an LLM router) spread over `DAYS` days is written through the store's write path as
the service writes it: decisions, call records with their chains, and the counts, in transactions of 1,000.

- **Read**: `Reader.router_counts()` (what `/v1/stats` and the dashboard read, every 2 s) against the same
  totals computed from the stored chains (the SELECT of migration 7's backfill: every chain's JSON parsed), each
  repeated; ratio = aggregate ÷ rollup read.
- **Write**: one transaction of 32 named-router decisions with their call records and chains (a writer batch
  under load), with the counts' upsert and without it (the same rows, alternating blocks of 20 in one run);
  ratio = with ÷ without; and what counting one chain (`of_chain`) costs. A plain `/v1/route` batch has no named
  router's request, so no upsert at all.
- **Migration 7** on a schema-6 database of `MIGRATED` stored chains (SQLite; PostgreSQL too when its binaries
  are installed, `tools/pg_server.py`): seconds, and whether the backfilled totals equal the counts written live.

    python -m benchmarks.bench_router_stats [CHAINS]     # or: python -m benchmarks.run --only bench_router_stats
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bandit_router.ids import new_decision_id
from bandit_router.router import Router
from bandit_router.store import CallRecord, SQLiteStore, Store
from bandit_router.store import router_stats as rs
from bandit_router.store.location import DatabaseURL
from bandit_router.store.postgres import PostgresStore
from bandit_router.types import Decision, Request

CHAINS = 200_000
DAYS = 90.0
BATCH = 1000
READS = 200
AGGREGATES = 3
MIGRATED = 100_000


def _chain(router: str, rng: np.random.Generator) -> dict[str, Any]:
    """A chain document like the service's (`cascade.live`): calls with costs, steps, who answered."""
    if router == "auto":
        named = None if rng.random() < 0.1 else ("cheap" if rng.random() < 0.6 else "strong")
        answered = named or "cheap"
        return {"router": router, "strategy": "llm-router", "named": named, "answered_by": answered, "steps": [],
                "calls": [{"model": "chooser", "role": "router", "cost_usd": 2e-5, "latency_s": 0.3},
                          {"model": answered, "role": "answer", "cost_usd": 1e-3, "latency_s": 0.8}],
                "cost_usd": 1.02e-3, "latency_s": 1.1}  # fmt: skip
    escalate = rng.random() < 0.33
    calls = [{"model": "cheap", "role": "answer", "cost_usd": 1e-4, "latency_s": 0.5, "confidence": 0.4},
             {"model": "judge", "role": "judge", "cost_usd": 5e-5, "latency_s": 0.2, "confidence": 0.4}]
    if escalate:
        calls.append({"model": "strong", "role": "answer", "cost_usd": 4e-3, "latency_s": 1.5})
    step = {"step": 0, "model": "cheap", "confidence": 0.4, "action": "escalate" if escalate else "accept",
            "probability": 0.9, "p_escalate": 0.9 if escalate else 0.1, "expected_extra_cost_usd": 4e-3,
            "next_cost_usd": 4e-3}
    return {"router": router, "strategy": "cascade" if router == "cascade" else "learned-cascade", "calls": calls,
            "steps": [step], "answered_by": "strong" if escalate else "cheap", "escalations": int(escalate),
            "cost_usd": sum(c["cost_usd"] for c in calls), "latency_s": 2.0, "extra_costs": [4e-3 if escalate else 0]}


def _rows(template: Decision, router: str, at: float, rng: np.random.Generator
          ) -> tuple[Decision, CallRecord, rs.RouterCounts]:
    chain = _chain(router, rng)
    decision = dataclasses.replace(
        template, decision_id=new_decision_id(), created_at=at, model=chain["answered_by"], models=("cheap", "strong"),
        pmf=(0.5, 0.5), probability=0.5, expected_cost_usd=(1e-4, 4e-3), policy=f"{chain['strategy']}:{router}",
    )
    record = CallRecord(
        decision_id=decision.decision_id, request_id=decision.decision_id, attempt=1, model=decision.model,
        routed=False, stream=False, status="ok", http_status=200, input_tokens=40, output_tokens=200, usage="upstream",
        cost_usd=chain["cost_usd"], ttft_s=1.0, latency_s=1.0, error=None, created_at=at,
        chain=json.dumps(chain, separators=(",", ":")),
    )  # fmt: skip
    return decision, record, rs.of_chain(chain, at)


def build(db: Path, n: int, seed: int = 0) -> float:
    """Write `n` named-router requests over the past `DAYS` days; seconds taken."""
    rng = np.random.default_rng(seed)
    template = Router(seed=seed).route(Request(prompt="a named router's request"))
    store = SQLiteStore(db)
    store.prepare()
    times = np.sort(rng.uniform(time.time() - DAYS * 86400, time.time(), n))
    routers = ("cascade", "learned", "auto")
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        rows = [_rows(template, routers[int(rng.integers(3))], float(t), rng) for t in times[start : start + BATCH]]
        with store.write() as tx:
            tx.insert_decisions([(d, None, None) for d, _, _ in rows])
            tx.insert_calls([r for _, r, _ in rows])
            tx.add_router_counts([c for _, _, c in rows])
        store.bound_wal()
    store.close()
    return time.perf_counter() - started


def aggregate_from_chains(db: Path) -> tuple[float, int]:
    """Seconds to compute the totals from the stored chains (migration 7's backfill SELECT), and its row count."""
    select = rs.BACKFILL[rs.BACKFILL.index(" SELECT ") + 1 : rs.BACKFILL.index(" ON CONFLICT")]
    conn = sqlite3.connect(db)
    started = time.perf_counter()
    rows = conn.execute(select).fetchall()
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed, len(rows)


def migration_seconds(store: Store, n: int, reopen: Callable[[], Store], seed: int = 3) -> tuple[float, bool]:
    """Write `n` named-router requests into `store` (prepared), make it a schema-6 database (no `router_stats`),
    and time migration 7 on it; whether the backfilled totals equal the counts written live."""
    rng = np.random.default_rng(seed)
    template = Router(seed=seed).route(Request(prompt="a named router's request"))
    for start in range(0, n, BATCH):
        times = time.time() - rng.uniform(0, DAYS * 86400, min(n, start + BATCH) - start)
        rows = [_rows(template, ("cascade", "learned", "auto")[i % 3], float(t), rng) for i, t in enumerate(times)]
        with store.write() as tx:
            tx.insert_decisions([(d, None, None) for d, _, _ in rows])
            tx.insert_calls([r for _, r, _ in rows])
            tx.add_router_counts([c for _, _, c in rows])
    with store.write() as tx:
        live = tx.router_counts()
        tx.conn.execute("DROP TABLE router_stats")  # type: ignore[attr-defined]
        tx.conn.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")  # type: ignore[attr-defined]
    store.close()
    store = reopen()
    try:
        started = time.perf_counter()
        store.prepare()
        elapsed = time.perf_counter() - started
        with store.read() as reader:
            backfilled = reader.router_counts()
    finally:
        store.close()

    def key(rows: list[rs.RouterCounts]) -> list[tuple[Any, ...]]:
        return [(*r.values()[:-1], round(r.spend_usd, 9)) for r in rows]

    return elapsed, key(live) == key(backfilled)


def migrations(folder: Path, n: int) -> list[dict[str, Any]]:
    """Migration 7 on a schema-6 database of `n` chains: SQLite, and PostgreSQL when its binaries are installed."""
    rows: list[dict[str, Any]] = []
    path = folder / "schema6.db"
    first = SQLiteStore(path)
    first.prepare()
    seconds, same = migration_seconds(first, n, lambda: SQLiteStore(path))
    rows.append({"benchmark": "router stats migration 7 (SQLite)", "metric": "seconds", "value": round(seconds, 2),
                 "unit": "s", "note": f"{n:,} stored chains counted; backfilled totals equal the live counts: {same}"})
    from tools.pg_server import PgServer, binaries

    if binaries() is None:
        return rows
    server = PgServer.start(fsync=False)
    try:
        url = DatabaseURL(server.create_database("router_stats_bench"))
        store = PostgresStore(url)
        store.prepare()
        seconds, same = migration_seconds(store, n, lambda: PostgresStore(url))
        rows.append({"benchmark": "router stats migration 7 (PostgreSQL)", "metric": "seconds",
                     "value": round(seconds, 2), "unit": "s",
                     "note": f"{n:,} stored chains counted (fsync off); backfilled totals equal the live counts: "
                             f"{same}"})
    finally:
        server.stop()
    return rows


def write_cost(folder: Path, batches: int = 400, size: int = 32, seed: int = 1) -> dict[str, float]:
    """Median seconds per transaction of `size` named-router decisions + call records + chains, with the counts'
    upsert and without (same rows, same run, alternating blocks of 20 batches)."""
    rng = np.random.default_rng(seed)
    template = Router(seed=seed).route(Request(prompt="a named router's request"))
    stores = {on: SQLiteStore(folder / f"write-{on}.db") for on in (True, False)}
    timings: dict[bool, list[float]] = {True: [], False: []}
    for store in stores.values():
        store.prepare()
    try:
        for block in range(batches // 20):
            for on in (True, False) if block % 2 else (False, True):
                for _ in range(20):
                    rows = [_rows(template, ("cascade", "learned", "auto")[i % 3], time.time(), rng)
                            for i in range(size)]
                    started = time.perf_counter()
                    with stores[on].write() as tx:
                        tx.insert_decisions([(d, None, None) for d, _, _ in rows])
                        tx.insert_calls([r for _, r, _ in rows])
                        if on:
                            tx.add_router_counts([c for _, _, c in rows])
                    timings[on].append(time.perf_counter() - started)
    finally:
        for store in stores.values():
            store.close()
    return {"with": statistics.median(timings[True]), "without": statistics.median(timings[False])}


def run(n: int = CHAINS) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-router-stats-") as tmp:
        folder = Path(tmp)
        db = folder / "routers.db"
        built = build(db, n)
        rows.append({"benchmark": "router stats db build", "metric": "seconds", "value": round(built, 1), "unit": "s",
                     "note": f"{n:,} named-router requests over {DAYS:.0f} days (decisions, call records, chains, "
                             f"counts), {db.stat().st_size / 2**20:,.0f} MiB"})
        store = SQLiteStore(db)
        reads: list[float] = []
        try:
            for _ in range(READS):
                started = time.perf_counter()
                with store.read() as reader:
                    totals = reader.router_counts()
                reads.append(time.perf_counter() - started)
        finally:
            store.close()
        assert sum(t.requests for t in totals) == n
        with sqlite3.connect(db) as conn:
            stored_rows = int(conn.execute("SELECT COUNT(*) FROM router_stats").fetchone()[0])
        aggregates = [aggregate_from_chains(db) for _ in range(AGGREGATES)]
        read_s = statistics.median(reads)
        aggregate_s = statistics.median(a for a, _ in aggregates)
        rows.append({"benchmark": "router stats read (rollup)", "metric": "ms", "value": round(read_s * 1000, 3),
                     "unit": "ms", "note": f"Reader.router_counts(): {len(totals)} totals from {stored_rows:,} rows "
                                           f"(router × day × answering model), median of {READS}"})
        rows.append({"benchmark": "router stats read (aggregate over chains)", "metric": "ms",
                     "value": round(aggregate_s * 1000, 1), "unit": "ms",
                     "note": f"the same totals from the {n:,} stored chains' JSON (migration 7's SELECT, "
                             f"{aggregates[0][1]} groups), median of {AGGREGATES}"})
        rows.append({"benchmark": "router stats aggregate ÷ rollup read", "metric": "ratio", "unit": "×",
                     "value": round(aggregate_s / read_s, 1), "note": "same database, same run"})
        chain = _chain("cascade", np.random.default_rng(2))
        started = time.perf_counter()
        for _ in range(10_000):
            rs.of_chain(chain, 0.0)
        counting_us = (time.perf_counter() - started) / 10_000 * 1e6
        rows.append({"benchmark": "router stats of_chain", "metric": "µs per request", "unit": "µs",
                     "value": round(counting_us, 2), "note": "counting one cascade chain (on the event loop)"})
        cost = write_cost(folder)
        rows.append({"benchmark": "router stats write cost", "metric": "ms per batch",
                     "value": round(cost["with"] * 1000, 3), "unit": "ms",
                     "note": "one transaction of 32 named-router decisions + call records + chains, with the "
                             "counts' upsert (median of 200)"})
        rows.append({"benchmark": "router stats write cost", "metric": "with / without", "unit": "×",
                     "value": round(cost["with"] / cost["without"], 3),
                     "note": f"without the upsert {cost['without'] * 1000:.3f} ms, same rows, same run"})
        rows.extend(migrations(folder, MIGRATED))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chains", type=int, nargs="?", default=CHAINS, help="gateway chains in the database")
    for row in run(parser.parse_args().chains):
        print(row)
