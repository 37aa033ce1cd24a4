"""What a route costs inside the server, measured from inside it (the numbers behind docs/service/performance.md).

    python -m benchmarks.diagnose_http --label after   # → benchmarks/results/profiles/diagnose-after.txt

py-spy's line attributions are blurred where threads hand work to each other (a thread waiting for the GIL or a
futex is sometimes sampled as running), so this measures with the servers' own clocks instead. The servers are
real `bandit-router serve` processes loaded by `wrk -t1` (`bench_http`'s scripts); a `sitecustomize` module put on
their `PYTHONPATH` instruments them (this tool only; nothing of it is in the package):

1. **Router.route in the server**: per route request, the event-loop thread's CPU time (`time.thread_time`) in
   `Router.route_many` (the service decides a loop iteration's requests with it; `Router.route` in a checkout
   from before it), its features, the policy's pmf (its quadrature), the budget pacer's `adjust` + `observe`;
   how many route requests one iteration of the event loop starts (requests of one iteration decide
   together, and their decisions reach the writer together); and the writer's transactions: how many, of how
   many operations, and its thread's CPU time in each (the batch's fixed cost shows as the difference between
   8 and 64 connections).
2. **Everything but the decision**: the server CPU per request of `/v1/route` when `Router.route` returns a copy
   of one decision made earlier (a new id, stored and committed as usual) next to `/healthz`, same server: what
   parsing, validation, the durable group commit and the reply cost without the routing decision itself.
   A diagnostic only: the service never does this.
3. **Two workers on one SQLite file**: per write transaction, whether `BEGIN IMMEDIATE` found SQLite's write
   lock taken (tried first with a busy timeout of 0; SQLite's busy handler would then have slept 1, 2, 5 … ms),
   and the wait for the write lock (`store/writelock.py`) plus `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import bench_http, provenance
from simulator.report import checkout_commit, git_commit

HERE = Path(__file__).resolve().parent

_SITECUSTOMIZE = textwrap.dedent('''
    import asyncio, dataclasses, json, os, sqlite3, threading, time
    OUT, MODE = os.environ["DIAG_OUT"], os.environ.get("DIAG_MODE", "")
    stats = {}

    def add(key, value=1):
        stats[key] = stats.get(key, 0) + value

    def timed(owner, name, key, main_only=False):
        original = getattr(owner, name)
        def wrapper(*args, **kwargs):
            started = time.thread_time_ns()
            try:
                return original(*args, **kwargs)
            finally:
                if not main_only or threading.current_thread() is threading.main_thread():
                    add(key, time.thread_time_ns() - started)
        setattr(owner, name, wrapper)

    def dump():
        while True:
            time.sleep(1.0)
            with open(os.path.join(OUT, f"{os.getpid()}.jsonl"), "a") as f:
                f.write(json.dumps({k: v for k, v in dict(stats).items() if not k.startswith("_")}) + "\\n")

    if MODE == "inside":
        from bandit_router import exploration, router
        from bandit_router.budgets import pacer
        from bandit_router.policies import hierarchical
        from bandit_router.service import engine
        # the service decides a loop iteration's routes with Router.route_many (which calls route when it
        # decides one by one); a checkout from before it (`--code`) calls route
        timed(router.Router, "route_many" if hasattr(router.Router, "route_many") else "route", "route_ns")
        timed(router.Router, "featurize", "features_ns")
        timed(hierarchical.HierarchicalThompsonPolicy, "pmf", "pmf_ns")
        if hasattr(hierarchical.HierarchicalThompsonPolicy, "pmfs"):
            timed(hierarchical.HierarchicalThompsonPolicy, "pmfs", "pmf_ns")
        timed(pacer.BudgetPacer, "adjust", "pacer_ns")
        timed(pacer.BudgetPacer, "observe", "pacer_ns", main_only=True)
        depth = {"in": 0}
        def quadrature_of(original):
            def quadrature(*args):
                depth["in"] += 1
                started = time.thread_time_ns()
                try:
                    return original(*args)
                finally:
                    depth["in"] -= 1
                    if depth["in"] == 0:  # the stacked one calls the single one for some pmfs: counted once
                        add("quadrature_ns", time.thread_time_ns() - started)
            return quadrature
        exploration.gaussian_argmax_pmf = quadrature_of(exploration.gaussian_argmax_pmf)
        if hasattr(exploration, "gaussian_argmax_pmfs"):
            exploration.gaussian_argmax_pmfs = quadrature_of(exploration.gaussian_argmax_pmfs)
        from bandit_router.service import writer
        original_transact = writer.Writer._transact
        def transact(self, ops, sweep):
            started = time.thread_time_ns()
            try:
                return original_transact(self, ops, sweep)
            finally:
                add("batches")
                add("batched_ops", len(ops))
                add("batch_ns", time.thread_time_ns() - started)
        writer.Writer._transact = transact
        original_route = engine.Engine.route
        group = {"open": False}
        def close_group():
            group["open"] = False
        async def route(self, request):
            add("routes")
            if not group["open"]:
                group["open"] = True
                add("iterations")
                asyncio.get_running_loop().call_soon(close_group)
            return await original_route(self, request)
        engine.Engine.route = route
    elif MODE == "stub":
        from bandit_router import router
        from bandit_router.ids import new_decision_id
        original_route = router.Router.route
        made = {}
        def route(self, request):
            decision = made.get(id(self))
            if decision is None:
                decision = made[id(self)] = original_route(self, request)
            return dataclasses.replace(decision, decision_id=request.decision_id or new_decision_id())
        router.Router.route = route
        router.Router.route_many = lambda self, requests: [route(self, r) for r in requests]
    elif MODE == "lock":
        from bandit_router.store import sqlite as store_sqlite
        original_conn = store_sqlite.SQLiteStore._writer_conn
        try:
            from bandit_router.store import writelock
        except ImportError:  # a checkout from before the write lock (`--code`): BEGIN IMMEDIATE's wait alone
            writelock = None
        if writelock is not None:
            original_acquire = writelock.WriteLock.acquire
            def acquire(self):
                started = time.perf_counter_ns()
                try:
                    return original_acquire(self)
                finally:
                    stats["_lock_started"] = started
            writelock.WriteLock.acquire = acquire
        class Probe:
            def __init__(self, conn, timeout_ms):
                self.conn, self.timeout_ms = conn, timeout_ms
            def execute(self, sql, *args):
                if sql != "BEGIN IMMEDIATE":
                    return self.conn.execute(sql, *args)
                if writelock is None:
                    stats["_lock_started"] = time.perf_counter_ns()
                self.conn.execute("PRAGMA busy_timeout = 0")
                try:
                    result = self.conn.execute(sql, *args)
                except sqlite3.OperationalError:
                    add("busy")
                    self.conn.execute(f"PRAGMA busy_timeout = {self.timeout_ms}")
                    result = self.conn.execute(sql, *args)
                self.conn.execute(f"PRAGMA busy_timeout = {self.timeout_ms}")
                waited = (time.perf_counter_ns() - stats.pop("_lock_started", time.perf_counter_ns())) / 1e6
                add("transactions")
                add("wait_over_1ms", waited > 1.0)
                stats["wait_max_ms"] = max(stats.get("wait_max_ms", 0.0), waited)
                return result
            def __getattr__(self, name):
                return getattr(self.conn, name)
        def writer_conn(self):
            return Probe(original_conn(self), int(self.busy_timeout_s * 1000))
        store_sqlite.SQLiteStore._writer_conn = writer_conn
    threading.Thread(target=dump, daemon=True).start()
''')


def _totals(folder: Path) -> dict[int, dict[str, float]]:
    """The last snapshot each server process wrote (cumulative counters)."""
    out: dict[int, dict[str, float]] = {}
    for path in folder.glob("*.jsonl"):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if lines:
            out[int(path.stem)] = json.loads(lines[-1])
    return out


def _delta(before: dict[int, dict[str, float]], after: dict[int, dict[str, float]]) -> dict[int, dict[str, float]]:
    return {pid: {k: v - before.get(pid, {}).get(k, 0) if k != "wait_max_ms" else v for k, v in s.items()}
            for pid, s in after.items()}


@contextlib.contextmanager
def _served(mode: str, workers: int, folder: Path, code: Path | None) -> Iterator[tuple[Any, Path]]:
    """A `bench_http` server whose processes import the instrumentation (`DIAG_MODE`), and its stats folder."""
    site = folder / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    stats = folder / "stats"
    stats.mkdir(exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("DIAG_OUT", "DIAG_MODE", "PYTHONPATH")}
    os.environ["DIAG_OUT"], os.environ["DIAG_MODE"] = str(stats), mode
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [saved["PYTHONPATH"]])])
    try:
        context = bench_http.serving(folder / "server", workers, code)
        server = context.__enter__()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield server, stats
    finally:
        context.__exit__(None, None, None)


def _load(wrk: str, server: Any, stats: Path, name: str, connections: int, duration: int) -> tuple[Any, Any]:
    before = _totals(stats)
    m = bench_http.load(wrk, server, name, connections, duration)
    time.sleep(1.2)  # the servers' next snapshot
    return m, _delta(before, _totals(stats))


def _inside(wrk: str, folder: Path, duration: int, code: Path | None) -> list[str]:
    lines = ["## 1. Router.route in the server (event-loop thread CPU per call)", ""]
    with _served("inside", 1, folder, code) as (server, stats):
        bench_http.warm_up(server)
        for c in (64, 8):
            m, d = _load(wrk, server, stats, "route", c, duration)
            s = next(iter(d.values()), {})
            n = max(s.get("routes", 0), 1)
            us = {k: s.get(f"{k}_ns", 0) / n / 1e3 for k in ("route", "features", "pmf", "quadrature", "pacer")}
            lines.append(
                f"c={c}: {m['rps']:,.0f} req/s, server CPU {m['cpu_us']:.0f} µs per request; Router.route "
                f"{us['route']:.1f} µs: features {us['features']:.1f}, policy pmf {us['pmf']:.1f} (its quadrature "
                f"{us['quadrature']:.1f}), budget pacer adjust + observe {us['pacer']:.1f}; "
                f"{s.get('routes', 0) / max(s.get('iterations', 0), 1):.1f} route requests per event-loop iteration; "
                f"the writer: {s.get('batches', 0):.0f} write transactions of "
                f"{s.get('batched_ops', 0) / max(s.get('batches', 0), 1):.1f} operations, "
                f"{s.get('batch_ns', 0) / max(s.get('batches', 0), 1) / 1e3:.0f} µs of its thread's CPU each"
            )
    return [*lines, ""]


def _stub(wrk: str, folder: Path, duration: int, code: Path | None) -> list[str]:
    lines = ["## 2. /v1/route with a stored copy of one decision instead of Router.route (diagnostic)", ""]
    with _served("stub", 1, folder, code) as (server, stats):
        bench_http.warm_up(server)
        for _ in range(2):
            for name in ("healthz", "route"):
                m, _ = _load(wrk, server, stats, name, 64, duration)
                lines.append(f"{name} c=64: {m['rps']:,.0f} req/s, server CPU {m['cpu_us']:.0f} µs per request")
    return [*lines, ""]


def _lock(wrk: str, folder: Path, duration: int, code: Path | None) -> list[str]:
    lines = ["## 3. Two workers on one SQLite file: the write lock", ""]
    with _served("lock", 2, folder, code) as (server, stats):
        bench_http.warm_up(server)
        m, d = _load(wrk, server, stats, "route", 64, duration)
        lines.append(f"route c=64, 2 workers: {m['rps']:,.0f} req/s, server CPU {m['cpu_us']:.0f} µs per request")
        for pid, s in sorted(d.items()):
            if s.get("transactions"):
                lines.append(
                    f"worker {pid}: {s['transactions']:.0f} write transactions, BEGIN IMMEDIATE found SQLite's "
                    f"lock taken {s.get('busy', 0):.0f} times, lock + BEGIN waits over 1 ms: "
                    f"{s.get('wait_over_1ms', 0):.0f}, longest {s.get('wait_max_ms', 0):.1f} ms"
                )
    return [*lines, ""]


def diagnose(label: str, out: Path, duration: int, code: Path | None = None, only: str | None = None) -> Path:
    wrk = bench_http.wrk_path()
    if wrk is None:
        raise SystemExit("needs wrk")
    lines = [
        f"# Inside the server: {label}",
        "",
        f"server code at commit {checkout_commit(code) if code else git_commit()} (tool at {git_commit()}), "
        f"{provenance.machine()}",
        f"command: python -m benchmarks.diagnose_http --label {label} --duration {duration}"
        + (f" --only {only}" if only else "") + (" --code <checkout>" if code else ""),
        "server: bandit-router serve (default policy, shipped 8-model catalog, durable SQLite), wrk -t1, "
        f"{duration} s per measurement; see the module docstring for what is instrumented",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="diagnose-http-") as tmp:
        for name, part in (("inside", _inside), ("stub", _stub), ("lock", _lock)):
            if only in (None, name):
                lines += part(wrk, Path(tmp) / name, duration, code)
    return provenance.write_report(out, f"diagnose-{label}.txt", lines, echo=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    provenance.add_output_arguments(parser, "diagnose-LABEL.txt", duration=6)
    parser.add_argument("--code", type=Path, default=None, help="serve bandit_router from this checkout")
    parser.add_argument("--only", choices=("inside", "stub", "lock"), default=None, help="one of the three")
    args = parser.parse_args(argv)
    print(diagnose(args.label, Path(args.out), args.duration, args.code, args.only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
