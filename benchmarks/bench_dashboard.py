"""The dashboard's time series over a database of 1 million decisions (issue 15).

A database of `DECISIONS` decisions spread over the past week (8 models, 30% with learned feedback) is written
through the store's bulk insert path (`WriteTx.insert_decisions` / `insert_feedback` in transactions of 10,000
rows: the per-minute rollup is kept in the same transactions, as the service keeps it). A real `bandit-router
serve` process then serves it on 127.0.0.1, and one client asks `GET /v1/stats/timeseries` for the last hour,
day and week, `REQUESTS` times each, sequentially: p50/p99 of the client-side latency.

The rollup's cost on the write path: one transaction of 32 decisions and 32 feedbacks (a writer batch under
load), with the rollup and with it switched off, in alternating blocks of the same run.

Baselines measured in the same run:

- `GET /healthz` over the same connection: the floor of any request (ratio = timeseries p50 ÷ healthz p50);
- the same week's series computed from the raw tables (one GROUP BY over the decisions joined with their
  feedback: what the endpoint would cost without the rollup), `RAW_REPEATS` times (ratio = raw ÷ rollup).

The rollup's read is bounded by buckets × minutes × models, not by the number of decisions: a week at 1,000
decisions a second (605 million decisions) has the same 10,080 minutes × 8 models of rollup rows as this one.

    python -m benchmarks.bench_dashboard            # or: python -m benchmarks.run --only bench_dashboard
"""

from __future__ import annotations

import argparse
import dataclasses
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bandit_router.ids import new_decision_id
from bandit_router.router import Router
from bandit_router.store import FeedbackRecord, SQLiteStore
from bandit_router.types import Request
from tools.dashboard_demo import Server

DECISIONS = 1_000_000
FEEDBACK_SHARE = 0.3
BATCH = 10_000
REQUESTS = 200
RAW_REPEATS = 3
DAYS = 7.0
RANGES = ("hour", "day", "week")


def build(db: Path, n: int, seed: int = 0) -> dict[str, float]:
    """Write `n` decisions over the past `DAYS` days and their feedback; returns timings."""
    router = Router(seed=seed)
    rng = np.random.default_rng(seed)
    templates = [router.route(Request(prompt=f"template prompt {i}: explain topic {i % 5}", cost_weight=float(i % 40)))
                 for i in range(64)]
    store = SQLiteStore(db)
    store.prepare()
    now = time.time()
    times = np.sort(rng.uniform(now - DAYS * 86400, now - 60, n))
    started = time.perf_counter()
    seq = 0
    for start in range(0, n, BATCH):
        decisions, records = [], []
        for t in times[start : start + BATCH]:
            template = templates[int(rng.integers(64))]
            d = dataclasses.replace(template, decision_id=new_decision_id(), created_at=float(t))
            decisions.append((d, None, "acme"))
            if rng.random() < FEEDBACK_SHARE:
                quality = float(rng.uniform(0.4, 1.0))
                cost = float(rng.uniform(1e-5, 2e-3))
                seq += 1
                records.append(FeedbackRecord(
                    decision_id=d.decision_id, received_at=float(t) + float(rng.exponential(30.0)), quality=quality,
                    cost_usd=cost, input_tokens=None, output_tokens=None, latency_s=None, source="bench",
                    status="applied", learn=True, reward=quality - d.cost_weight * cost, realised_cost_usd=cost,
                    model=d.model, tenant="acme", seq=seq,
                ))
        with store.write() as tx:
            tx.insert_decisions(decisions)
            tx.insert_feedback(records)
        store.bound_wal()  # as the service's writer does between batches (before 64 MiB: copy and restart)
    store.close()
    return {"build_s": time.perf_counter() - started, "feedback": float(seq)}


def write_overhead(folder: Path, batches: int = 300, size: int = 32, seed: int = 1) -> dict[str, float]:
    """Seconds per write transaction of `size` decisions and `size` feedbacks (the writer's batch under load),
    with the rollup and with it switched off (the same rows, the same run, alternating blocks of 20 batches)."""
    from bandit_router.store import sqlite as sqlite_store

    router = Router(seed=seed)
    templates = [router.route(Request(prompt=f"overhead prompt {i}")) for i in range(16)]
    timings: dict[bool, list[float]] = {True: [], False: []}
    stores = {on: SQLiteStore(folder / f"overhead-{on}.db") for on in (True, False)}
    for store in stores.values():
        store.prepare()
    original = sqlite_store._SQLiteTx._add_to_rollup
    seqs = {True: 0, False: 0}
    try:
        for block in range(batches // 20):
            for on in (True, False) if block % 2 else (False, True):
                sqlite_store._SQLiteTx._add_to_rollup = original if on else (lambda self, rows: None)  # type: ignore
                for _ in range(20):
                    now = time.time()
                    decisions = [dataclasses.replace(templates[i % 16], decision_id=new_decision_id(),
                                                     created_at=now) for i in range(size)]
                    records = []
                    for d in decisions:
                        seqs[on] += 1
                        records.append(FeedbackRecord(
                            decision_id=d.decision_id, received_at=now, quality=0.7, cost_usd=0.001,
                            input_tokens=None, output_tokens=None, latency_s=None, source=None, status="applied",
                            learn=True, reward=0.69, realised_cost_usd=0.001, model=d.model, tenant=None,
                            seq=seqs[on]))
                    started = time.perf_counter()
                    with stores[on].write() as tx:
                        tx.insert_decisions([(d, None, None) for d in decisions])
                        tx.insert_feedback(records)
                    timings[on].append(time.perf_counter() - started)
    finally:
        sqlite_store._SQLiteTx._add_to_rollup = original  # type: ignore[method-assign]
        for store in stores.values():
            store.close()
    return {"with": statistics.median(timings[True]), "without": statistics.median(timings[False])}


def raw_week(db: Path) -> float:
    """Seconds to compute the week's per-hour, per-model series from the raw tables (no rollup)."""
    since = time.time() - DAYS * 86400
    conn = sqlite3.connect(db)
    started = time.perf_counter()
    conn.execute(
        "SELECT CAST(d.created_at / 3600 AS INTEGER) AS bucket, d.model, COUNT(*), SUM(d.probability), "
        "SUM(d.cost_weight), COUNT(f.seq), SUM(f.quality), SUM(f.realised_cost_usd), SUM(f.reward), "
        "SUM(f.received_at - d.created_at), SUM(f.reward / d.probability), SUM(1.0 / d.probability) "
        "FROM decisions d LEFT JOIN feedback f ON f.decision_id = d.decision_id AND f.learn = 1 "
        "WHERE d.created_at >= ? GROUP BY bucket, d.model",
        (since,),
    ).fetchall()
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def run(n: int = DECISIONS, requests: int = REQUESTS) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    note = f"{n:,} decisions over 7 days, 8 models, {FEEDBACK_SHARE:.0%} with feedback; real server, 1 client"
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        folder = Path(tmp)
        db = folder / "dashboard.db"
        built = build(db, n)
        size_mib = db.stat().st_size / 2**20
        rows.append({"benchmark": "dashboard db build", "metric": "seconds", "value": round(built["build_s"], 1),
                     "unit": "s", "note": f"{n:,} decisions + {int(built['feedback']):,} feedbacks via the store's "
                     f"bulk insert (rollup included), {size_mib:,.0f} MiB"})
        raw = [raw_week(db) for _ in range(RAW_REPEATS)]
        overhead = write_overhead(folder)
        rows.append({"benchmark": "dashboard rollup write cost", "metric": "ms per batch",
                     "value": round(overhead["with"] * 1000, 3), "unit": "ms",
                     "note": "one transaction of 32 decisions + 32 feedbacks, with the rollup (median of 300)"})
        rows.append({"benchmark": "dashboard rollup write cost", "metric": "with / without", "unit": "×",
                     "value": round(overhead["with"] / overhead["without"], 2),
                     "note": f"without the rollup {overhead['without'] * 1000:.3f} ms, same rows, same run"})
        server = Server(folder, db, env={"BANDIT_ROUTER_SHADOW_POLICIES": "[]", "BANDIT_ROUTER_BUDGETS": "{}"})
        try:
            server.wait_ready(timeout=600)
            with httpx.Client(base_url=server.url, timeout=60) as client:
                floor: list[float] = []
                for _ in range(requests):
                    started = time.perf_counter()
                    assert client.get("/healthz").status_code == 200
                    floor.append(time.perf_counter() - started)
                healthz_p50 = _percentiles(floor)[0]
                rows.append({"benchmark": "dashboard GET /healthz", "metric": "p50_ms",
                             "value": round(healthz_p50 * 1000, 2), "unit": "ms", "note": "baseline: same client"})
                for name in RANGES:
                    samples: list[float] = []
                    for _ in range(requests):
                        started = time.perf_counter()
                        reply = client.get(f"/v1/stats/timeseries?range={name}")
                        samples.append(time.perf_counter() - started)
                        assert reply.status_code == 200, reply.text
                    p50, p99 = _percentiles(samples)
                    body = reply.json()
                    label = f"dashboard timeseries {name}"
                    rows.append({"benchmark": label, "metric": "p50_ms", "value": round(p50 * 1000, 2), "unit": "ms",
                                 "note": f"{len(body['time'])} buckets of {body['step']} s, "
                                         f"{body['overall']['decisions']:,} decisions; {note}"})
                    rows.append({"benchmark": label, "metric": "p99_ms", "value": round(p99 * 1000, 2), "unit": "ms",
                                 "target": "<= 250", "ok": p99 <= 0.25})
                    ratio = round(p50 / healthz_p50, 1)
                    rows.append({"benchmark": label, "metric": "p50 / healthz p50", "value": ratio, "unit": "×",
                                 "note": f"healthz p50 {healthz_p50 * 1000:.2f} ms"})
                    if name == "week":
                        week_p50 = p50
        finally:
            server.stop()
        raw_s = statistics.median(raw)
        rows.append({"benchmark": "dashboard week from raw tables", "metric": "seconds", "value": round(raw_s, 2),
                     "unit": "s", "note": "one GROUP BY over decisions ⋈ feedback (no rollup), median of "
                     f"{RAW_REPEATS}; the baseline the rollup replaces"})
        speedup = round(raw_s / week_p50, 1)
        rows.append({"benchmark": "dashboard week rollup vs raw", "metric": "speed-up", "value": speedup, "unit": "×",
                     "note": "raw-table query ÷ timeseries?range=week p50 (the whole HTTP request)"})
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("decisions", type=int, nargs="?", default=DECISIONS, help="decisions in the database")
    size = parser.parse_args().decisions
    for row in run(size, requests=50 if size < DECISIONS else REQUESTS):
        print(row)
