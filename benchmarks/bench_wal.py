"""Sustained-write benchmark: the SQLite WAL's size over time, with and without its bound (issue 11, defect 3).

The service's own write path at full load, in-process: the `Engine` (writer thread with group commit, the
maintenance thread's passive checkpoints every 0.5 s) driven by 64 concurrent route → feedback loops on one
event loop, for `BENCH_WAL_DURATION` seconds (`make bench`: 600; `--wal-duration` of `benchmarks.run`, or
`python -m benchmarks.bench_wal --duration 60`). The WAL's size is sampled every second.

- **bounded**: the default `wal_max_bytes` (64 MiB): before the WAL passes it the writer runs a restarting
  checkpoint.
- **unbounded** (the behaviour before the fix: passive checkpoints only), for min(duration, 60 s) so the run
  cannot fill the disk; its WAL grows for as long as writes keep coming.

Throughput cost = bounded pairs/s ÷ unbounded pairs/s over the same first seconds of each run (a restarting
checkpoint holds the write lock while it copies what the passive checkpoints left into the database; the
longest and the median of these holds are reported). The series goes to
`wal_over_time.csv` beside the results (`benchmarks/results/`; the committed one is from a 120 s run).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bandit_router.config import Settings
from bandit_router.dbguard import wal_bytes
from bandit_router.service.engine import Engine
from bandit_router.store import WAL_MAX_BYTES, SQLiteStore
from bandit_router.types import Outcome, Request

DURATION_S = float(os.environ.get("BENCH_WAL_DURATION", "600"))
UNBOUNDED_MAX_S = 60.0
CONCURRENCY = 64
MIB = 1024 * 1024
HERE = Path(__file__).resolve().parent

_PROMPTS = [
    "Summarise the following support ticket in one sentence: the customer cannot log in after resetting the "
    "password twice, the reset email arrives but the link says it has expired, and they need access today.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\nWhy is this slow and how do I fix it?",
    "Write a haiku about databases that never lose a row.",
    "Translate to French: The meeting has been moved to Thursday afternoon because the room is being painted.",
]


def sustained(duration_s: float, wal_max_bytes: int, folder: Path) -> dict[str, Any]:
    """Run the load for `duration_s`; returns the WAL series [(t, bytes, pairs so far)], pairs/s and counts."""
    db = folder / f"wal-{wal_max_bytes}.db"
    settings = Settings(db=db, seed=1, wal_max_bytes=wal_max_bytes, checkpoint_interval=10_000)
    store = SQLiteStore(db, synchronous=settings.synchronous, wal_max_bytes=wal_max_bytes)
    store.prepare()
    holds: list[float] = []  # seconds the writer spent in each restart of the WAL (timed here, so that this
    # script measures an older checkout's truncating checkpoints too: PYTHONPATH=<checkout> python <this file>)
    bound_wal = store.bound_wal

    def timed_bound_wal() -> bool:
        started = time.perf_counter()
        restarted = bound_wal()
        if restarted:
            holds.append(time.perf_counter() - started)
        return restarted

    store.bound_wal = timed_bound_wal  # type: ignore[method-assign]
    engine = Engine(settings, store)
    engine.start()
    assert engine.wait_ready(60), engine.state
    pairs = 0
    series: list[tuple[float, int, int]] = []
    stop = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not stop.wait(1.0):
            t = time.monotonic() - started
            if t <= duration_s:  # while the load runs (after it, an idle checkpoint shrinks the WAL)
                series.append((round(t, 1), wal_bytes(db), pairs))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    async def client(i: int) -> None:
        nonlocal pairs
        n = 0
        while time.monotonic() - started < duration_s:
            prompt = f"{_PROMPTS[(i + n) % len(_PROMPTS)]} ({i}-{n})"
            decision = await engine.route(Request(prompt=prompt))
            await engine.feedback(decision.decision_id, Outcome(quality=0.5 + 0.4 * ((i + n) % 2)))
            pairs += 1
            n += 1

    async def load() -> None:
        await asyncio.gather(*(client(i) for i in range(CONCURRENCY)))

    try:
        asyncio.run(load())
    finally:
        stop.set()
        sampler.join()
        elapsed = time.monotonic() - started
        engine.stop(checkpoint=False)
    largest = max((b for _, b, _ in series), default=0)
    for path in folder.glob(f"{db.name}*"):
        path.unlink()
    return {"series": series, "pairs": pairs, "seconds": elapsed, "pairs_per_s": pairs / elapsed,
            "largest": largest, "restarts": len(holds), "holds": holds}


def _rate_until(series: list[tuple[float, int, int]], t: float) -> float:
    """Pairs/s over the first `t` seconds of a series."""
    points = [(s, p) for s, _, p in series if s <= t + 0.05]
    if not points:
        return 0.0
    s, p = points[-1]
    return p / s if s else 0.0


def run(duration_s: float | None = None) -> list[dict[str, Any]]:
    duration = float(os.environ.get("BENCH_WAL_DURATION", DURATION_S)) if duration_s is None else duration_s
    baseline_s = min(duration, UNBOUNDED_MAX_S)
    with tempfile.TemporaryDirectory(prefix="bench-wal-") as tmp:
        folder = Path(tmp)
        unbounded = sustained(baseline_s, 0, folder)
        bounded = sustained(duration, WAL_MAX_BYTES, folder)
    window = min(baseline_s, bounded["seconds"]) - 1
    cost = _rate_until(bounded["series"], window) / max(_rate_until(unbounded["series"], window), 1e-9)
    out = Path(os.environ.get("BENCH_OUT", HERE / "results"))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "wal_over_time.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "t_s", "wal_mib", "pairs"])
        for name, result in (("unbounded", unbounded), ("bounded", bounded)):
            for t, size, done in result["series"]:
                writer.writerow([name, t, round(size / MIB, 2), done])
    bound_mib = WAL_MAX_BYTES / MIB
    note = f"{CONCURRENCY} concurrent route+feedback loops, in-process engine; {duration:.0f} s bounded run"
    rows: list[dict[str, Any]] = [
        {"benchmark": "wal bounded", "metric": "largest_wal_mib", "value": bounded["largest"] / MIB, "unit": "MiB",
         "target": f"<= {bound_mib + 8:.0f}", "ok": bounded["largest"] <= WAL_MAX_BYTES + 8 * MIB,
         "note": f"wal_max_bytes = {bound_mib:.0f} MiB; {note}"},
        {"benchmark": "wal bounded", "metric": "restarts", "value": bounded["restarts"], "unit": "",
         "note": "restarting checkpoints the writer ran"},
        {"benchmark": "wal bounded", "metric": "restart_hold_max_ms", "value": 1000 * max(bounded["holds"], default=0),
         "unit": "ms", "note": "the longest time one restart held the writer (every reply waits meanwhile)"},
        {"benchmark": "wal bounded", "metric": "restart_hold_p50_ms",
         "value": 1000 * float(np.median(bounded["holds"])) if bounded["holds"] else 0.0, "unit": "ms",
         "note": "median time a restart held the writer"},
        {"benchmark": "wal bounded", "metric": "pairs_per_s", "value": bounded["pairs_per_s"], "unit": "1/s",
         "note": "route + feedback pairs over the whole run"},
        {"benchmark": "wal unbounded", "metric": "largest_wal_mib", "value": unbounded["largest"] / MIB,
         "unit": "MiB", "note": f"passive checkpoints only (before the fix), {baseline_s:.0f} s"},
        {"benchmark": "wal unbounded", "metric": "pairs_per_s", "value": unbounded["pairs_per_s"], "unit": "1/s",
         "note": f"{baseline_s:.0f} s"},
        {"benchmark": "wal bound cost", "metric": "throughput_ratio", "value": round(cost, 3), "unit": "x",
         "note": f"bounded ÷ unbounded pairs/s over the first {window:.0f} s of each run"},
    ]
    for minute in range(1, int(duration // 60) + 1):  # the bounded WAL over time, once a minute
        points = [(t, b) for t, b, _ in bounded["series"] if t <= minute * 60 + 0.5]
        if points:
            rows.append({"benchmark": "wal bounded", "metric": f"wal_mib_at_{minute}min",
                         "value": points[-1][1] / MIB, "unit": "MiB", "note": "sampled once a second"})
    for t in (10, 30, 60):
        points = [(s, b) for s, b, _ in unbounded["series"] if s <= t + 0.5]
        if points and points[-1][0] >= t - 1:
            rows.append({"benchmark": "wal unbounded", "metric": f"wal_mib_at_{t}s", "value": points[-1][1] / MIB,
                         "unit": "MiB", "note": "sampled once a second"})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=DURATION_S, help="seconds of the bounded run")
    args = parser.parse_args(argv)
    for row in run(args.duration):
        print(f"{row['benchmark']:<16} {row['metric']:<20} {row['value']!s:>14} {row.get('unit', ''):<4} "
              f"{row.get('target') or ''} {row.get('ok', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
