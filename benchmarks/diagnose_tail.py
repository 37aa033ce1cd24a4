"""What the slowest 1% of requests waited for, measured inside a loaded `bandit-router serve` (issue 12's p99).

    python -m benchmarks.diagnose_tail --label NAME   # → benchmarks/results/profiles/tail-NAME.txt

A real server (`bench_http`'s: the `default` policy, the shipped 8-model catalog, durable SQLite) is loaded by
`wrk -t1` at 64 and at 8 connections on `POST /v1/route` (and `POST /v1/feedback` with `--feedback`). A
`sitecustomize` module put on the server's `PYTHONPATH` (this tool only: nothing of it is in the package, so it
costs the service nothing) records, with the server's own `perf_counter`:

- per request (`HotPaths._serve`): when the ASGI call began and ended; when the route asked for its decision
  (`Engine._decide`) and when the event loop's batch decision (`Engine._decide_pending`) made it; when it was
  handed to the writer (`Engine._submit`) and when the writer's acknowledgement reached it; the write
  transaction that held it (its start and end on the writer thread, how many operations);
- per event-loop iteration that decided routes: how many, and the decision's wall time;
- the event loop's stalls: a 1 ms `call_later` chain on the loop; a tick later than 3 ms marks the loop busy
  (or descheduled) for that long;
- every garbage collection (`gc.callbacks`: generation, duration, thread);
- the writer thread: each transaction (`Writer._transact`: BEGIN … COMMIT and learning what it committed), its
  learning alone (`LogFollower.apply`), the WAL restarts (`SQLiteStore.bound_wal`), the policy checkpoints
  (`Checkpointer.maybe_checkpoint` when it stores one); the maintenance thread's passive WAL checkpoints
  (`SQLiteStore.maintain`).

Reported per connection count: wrk's p50/p99 next to the server-side ones (the difference is time before the
ASGI call: the request waiting in the socket for a busy loop, and the reply's way back); the server-side time of
the slowest 1% split into phases (mean, and the share of their total), against the same split for the median
request; the loop's stalls split by its thread's scheduler statistics; and the share of the slowest 1%'s time
spent inside each kind of event, against the share of the whole run's time (an event that explains the tail
covers far more of the slowest requests' time than of the run's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import ab_http, bench_http, provenance
from simulator.report import checkout_commit, git_commit

HERE = Path(__file__).resolve().parent

_SITECUSTOMIZE = textwrap.dedent('''
    import asyncio, gc, json, os, threading, time
    OUT = os.environ["DIAG_OUT"]
    now = time.perf_counter
    requests, iterations, events, tx_of = [], [], [], {}
    by_task = {}
    lock = threading.Lock()

    def event(kind, start, end, **extra):
        events.append({"kind": kind, "start": start, "end": end, **extra})

    gc_started = {}
    def on_gc(phase, info):
        key = threading.get_ident()
        if phase == "start":
            gc_started[key] = now()
        else:
            start = gc_started.pop(key, None)
            if start is not None:
                event(f"gc{info['generation']}", start, now(),
                      thread="loop" if threading.current_thread() is threading.main_thread() else "other")
    gc.callbacks.append(on_gc)

    def dump():
        sent = {"r": 0, "i": 0, "e": 0}
        path = os.path.join(OUT, f"{os.getpid()}.jsonl")
        while True:
            time.sleep(0.5)
            with open(path, "a") as f:
                for key, items in (("r", requests), ("i", iterations), ("e", events)):
                    n = len(items)
                    for item in items[sent[key]:n]:
                        f.write(json.dumps({"t": key, **item}) + "\\n")
                    sent[key] = n
    threading.Thread(target=dump, daemon=True).start()

    def instrument():
        from bandit_router.service import engine, hotpaths, writer
        from bandit_router.store import sqlite as store_sqlite
        from bandit_router.log import follower, checkpoints

        original_serve = hotpaths.HotPaths._serve
        async def serve(self, path, scope, receive, send):
            rec = {"path": path, "t0": now()}
            task = asyncio.current_task()
            by_task[task] = rec
            try:
                await original_serve(self, path, scope, receive, send)
            finally:
                rec["t1"] = now()
                by_task.pop(task, None)
                requests.append(rec)
        hotpaths.HotPaths._serve = serve

        pending = []
        original_decide = engine.Engine._decide
        def decide(self, request):
            rec = by_task.get(asyncio.current_task())
            if rec is not None:
                rec["asked"] = now()
                pending.append(rec)
            return original_decide(self, request)
        engine.Engine._decide = decide

        original_decide_pending = engine.Engine._decide_pending
        def decide_pending(self, loop):
            start = now()
            try:
                return original_decide_pending(self, loop)
            finally:
                end = now()
                iterations.append({"start": start, "end": end, "n": len(pending)})
                for rec in pending:
                    rec["decided"] = end
                pending.clear()
        engine.Engine._decide_pending = decide_pending

        original_submit = engine.Engine._submit
        async def submit(self, op):
            rec = by_task.get(asyncio.current_task())
            if rec is not None:
                rec["submitted"] = now()
            try:
                return await original_submit(self, op)
            finally:
                if rec is not None:
                    rec["acked"] = now()
                    tx = tx_of.pop(id(op), None)
                    if tx is not None:
                        rec["tx_start"], rec["tx_end"], rec["tx_ops"] = tx
        engine.Engine._submit = submit

        original_transact = writer.Writer._transact
        def transact(self, ops, sweep):
            start = now()
            cpu = time.thread_time()
            try:
                return original_transact(self, ops, sweep)
            finally:
                end = now()
                for op in ops:
                    tx_of[id(op)] = (start, end, len(ops))
                event("transaction", start, end, ops=len(ops), cpu=time.thread_time() - cpu)
        writer.Writer._transact = transact

        def timed(owner, name, kind, keep=lambda result: True):
            original = getattr(owner, name)
            def wrapper(*args, **kwargs):
                start, cpu = now(), time.thread_time()
                result = original(*args, **kwargs)
                if keep(result):
                    event(kind, start, now(), cpu=time.thread_time() - cpu)
                return result
            setattr(owner, name, wrapper)
        timed(follower.LogFollower, "apply", "learn")
        timed(store_sqlite._SQLiteTx, "decisions", "read_decisions")
        timed(store_sqlite.SQLiteStore, "bound_wal", "wal_restart", keep=bool)
        timed(store_sqlite.SQLiteStore, "maintain", "passive_checkpoint")
        timed(checkpoints.Checkpointer, "maybe_checkpoint", "policy_checkpoint", keep=bool)

    def tick_on(loop):
        due = [now() + 0.001]
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        def schedstat():  # ns on a CPU, ns runnable waiting for a CPU (Linux)
            run, wait, _ = os.pread(fd, 100, 0).split()
            return int(run), int(wait)
        last = [schedstat()]
        def tick():
            t = now()
            stat = schedstat()
            if t - due[0] > 0.003:
                ran, waited = (stat[0] - last[0][0]) / 1e9, (stat[1] - last[0][1]) / 1e9
                event("loop_stall", due[0], t, ran=ran, runnable=waited)
            last[0] = stat
            due[0] = t + 0.001
            loop.call_later(0.001, tick)
        loop.call_later(0.001, tick)

    instrument()
    import uvicorn.server
    original_startup = uvicorn.server.Server.startup
    async def startup(self, *args, **kwargs):
        tick_on(asyncio.get_running_loop())
        return await original_startup(self, *args, **kwargs)
    uvicorn.server.Server.startup = startup
''')

PHASES = [
    ("read + validate", "t0", "asked"),
    ("wait for the loop's batch decision", "asked", "decided"),
    ("decided → writer starts its transaction", "decided", "tx_start"),
    ("the transaction (BEGIN … COMMIT, learning)", "tx_start", "tx_end"),
    ("committed → acknowledged on the loop", "tx_end", "acked"),
    ("reply", "acked", "t1"),
]
FEEDBACK_PHASES = [
    ("read + validate", "t0", "submitted"),
    ("submitted → writer starts its transaction", "submitted", "tx_start"),
    ("the transaction (BEGIN … COMMIT, learning)", "tx_start", "tx_end"),
    ("committed → acknowledged on the loop", "tx_end", "acked"),
    ("reply", "acked", "t1"),
]
LONG_TX_S = 0.005
EVENT_KINDS = ["gc0", "gc1", "gc2", "loop_stall", "wal_restart", "passive_checkpoint", "policy_checkpoint"]


def _read(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    requests, iterations, events = [], [], []
    for path in folder.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                item = json.loads(line)
                {"r": requests, "i": iterations, "e": events}[item.pop("t")].append(item)
    return requests, iterations, events


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _covered(start: float, end: float, events: list[dict[str, Any]]) -> float:
    """Seconds of [start, end] inside the union of `events` (sorted by start). A share of a request's time, not
    whether it overlaps: a long request overlaps more events by its length alone."""
    covered, reach = 0.0, start
    for e in events:
        a, b = max(e["start"], reach), min(e["end"], end)
        if b > a:
            covered += b - a
            reach = b
    return covered


def _analyse(name: str, connections: int, wrk: dict[str, Any], requests: list[dict[str, Any]],
             iterations: list[dict[str, Any]], events: list[dict[str, Any]], window: tuple[float, float]) -> list[str]:
    path = bench_http.PATHS[name]
    mine = [r for r in requests if r["path"] == path and window[0] <= r["t0"] <= window[1] and "tx_end" in r]
    inside = [e for e in events if window[0] <= e["start"] <= window[1]]
    lines = [f"## {path}, {connections} connections", ""]
    if not mine:
        return [*lines, "no requests recorded", ""]
    total = [(r["t1"] - r["t0"]) * 1e3 for r in mine]
    lines.append(
        f"wrk: {wrk['rps']:,.0f} req/s, p50 {wrk['p50_us'] / 1e3:.2f} ms, p99 {wrk['p99_us'] / 1e3:.2f} ms, server "
        f"CPU {wrk['cpu_us']:.0f} µs per request (event loop {wrk['loop_us']:.0f}, writer and other threads "
        f"{wrk['other_us']:.0f}); inside the server (ASGI call to reply, {len(mine):,} requests): "
        f"p50 {_quantile(total, 0.5):.2f} ms, p99 {_quantile(total, 0.99):.2f} ms, max {max(total):.1f} ms"
    )
    ordered = sorted(mine, key=lambda r: r["t1"] - r["t0"])
    slow = ordered[int(0.99 * len(ordered)):]
    middle = ordered[int(0.45 * len(ordered)):int(0.55 * len(ordered))]
    phases = PHASES if name == "route" else FEEDBACK_PHASES
    lines += ["", "| phase | slowest 1%: mean ms | share | median 10%: mean ms | share |", "|---|---|---|---|---|"]
    for label, a, b in phases:
        s, m = (statistics.fmean((r[b] - r[a]) * 1e3 for r in group) for group in (slow, middle))
        ts = statistics.fmean((r["t1"] - r["t0"]) * 1e3 for r in slow)
        tm = statistics.fmean((r["t1"] - r["t0"]) * 1e3 for r in middle)
        lines.append(f"| {label} | {s:.2f} | {s / ts:.0%} | {m:.2f} | {m / tm:.0%} |")
    ops = [r["tx_ops"] for r in slow]
    lines += ["", f"operations in the transaction that held a request: slowest 1% mean {statistics.fmean(ops):.1f}, "
                  f"median 10% {statistics.fmean(r['tx_ops'] for r in middle):.1f}"]
    tx = [e for e in inside if e["kind"] == "transaction"]
    if tx:
        durations = [(e["end"] - e["start"]) * 1e3 for e in tx]
        cpu = [e["cpu"] * 1e3 for e in tx]
        lines.append(
            f"write transactions: {len(tx):,}, {statistics.fmean(e['ops'] for e in tx):.1f} operations each; wall "
            f"p50 {_quantile(durations, 0.5):.2f} ms, p99 {_quantile(durations, 0.99):.2f} ms, max "
            f"{max(durations):.1f} ms; writer CPU p50 {_quantile(cpu, 0.5):.2f} ms (the rest of the wall time: waiting "
            f"for the GIL and the disk)"
        )
    long_tx = [e for e in tx if e["end"] - e["start"] > LONG_TX_S]
    if long_tx:
        causes = []
        for kind in ("passive_checkpoint", "wal_restart", "policy_checkpoint", "gc0", "gc1", "gc2", "loop_stall"):
            of_kind = [e for e in inside if e["kind"] == kind]
            if of_kind:
                shares = [sum(any(k["start"] < t["end"] and k["end"] > t["start"] for k in of_kind)
                              for t in group) / len(group) for group in (long_tx, tx)]
                causes.append(f"{kind} {shares[0]:.0%} (all transactions {shares[1]:.0%})")
        lines.append(f"transactions longer than {LONG_TX_S * 1e3:g} ms: {len(long_tx)}, writer CPU mean "
                     f"{statistics.fmean(e['cpu'] for e in long_tx) * 1e3:.2f} ms; overlapping: " + ", ".join(causes))
    if name == "feedback":
        for kind, label in (("learn", "learning them (LogFollower.apply)"),
                            ("read_decisions", "reading their decisions back (WriteTx.decisions)")):
            of_kind = [e for e in inside if e["kind"] == kind]
            if of_kind:
                lines.append(f"{label}: writer CPU {sum(e['cpu'] for e in of_kind) / len(mine) * 1e6:.1f} µs per "
                             f"feedback; wall per transaction p50 "
                             f"{_quantile([(e['end'] - e['start']) * 1e3 for e in of_kind], 0.5):.2f} ms")
    its = [i for i in iterations if window[0] <= i["start"] <= window[1]]
    if its and name == "route":
        decide = [(i["end"] - i["start"]) * 1e3 for i in its]
        lines.append(
            f"loop iterations that decided routes: {len(its):,}, {statistics.fmean(i['n'] for i in its):.1f} routes "
            f"each (max {max(i['n'] for i in its)}); the batch decision p50 {_quantile(decide, 0.5):.2f} ms, p99 "
            f"{_quantile(decide, 0.99):.2f} ms"
        )
    stalls = [e for e in inside if e["kind"] == "loop_stall" and "ran" in e]
    if stalls:
        slow_stalls = [e for e in stalls if any(e["start"] < r["t1"] and e["end"] > r["t0"] for r in slow)]
        for label, group in (("all loop stalls", stalls), ("the stalls within the slowest 1%", slow_stalls)):
            if not group:
                continue
            wall = sum(e["end"] - e["start"] + 0.001 for e in group)  # since the last tick
            ran = sum(e["ran"] for e in group)
            runnable = sum(e["runnable"] for e in group)
            lines.append(
                f"{label} ({len(group)}, {wall * 1e3:.0f} ms since the tick before each): the loop thread ran "
                f"{ran / wall:.0%} of it (long iterations), waited for a CPU {runnable / wall:.0%} (the machine), "
                f"was blocked {max(0.0, 1 - (ran + runnable) / wall):.0%} (the GIL held by another thread)"
            )
    lines += ["", "| event | count | total ms | its thread's CPU ms | longest ms | share of the slowest 1%'s time | "
              "share of the run's time |", "|---|---|---|---|---|---|---|"]
    for kind in EVENT_KINDS:
        of_kind = [e for e in inside if e["kind"] == kind]
        if not of_kind:
            lines.append(f"| {kind} | 0 | | | | | |")
            continue
        lengths = [(e["end"] - e["start"]) * 1e3 for e in of_kind]
        of_kind.sort(key=lambda e: e["start"])
        share_slow = sum(_covered(r["t0"], r["t1"], of_kind) for r in slow) / sum(r["t1"] - r["t0"] for r in slow)
        share_all = _covered(window[0], window[1], of_kind) / (window[1] - window[0])
        cpu = f"{sum(e['cpu'] for e in of_kind) * 1e3:.1f}" if "cpu" in of_kind[0] else ""
        lines.append(f"| {kind} | {len(of_kind)} | {sum(lengths):.1f} | {cpu} | {max(lengths):.1f} | {share_slow:.0%} "
                     f"| {share_all:.0%} |")
    return [*lines, ""]


@contextlib.contextmanager
def _served(folder: Path, code: Path | None) -> Iterator[tuple[bench_http.Server, Path]]:
    site = folder / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    stats = folder / "stats"
    stats.mkdir(exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("DIAG_OUT", "PYTHONPATH")}
    os.environ["DIAG_OUT"] = str(stats)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [saved["PYTHONPATH"]])])
    try:
        context = bench_http.serving(folder / "server", 1, code)
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


def diagnose(label: str, out: Path, duration: int, code: Path | None, feedback: bool) -> Path:
    wrk = bench_http.wrk_path()
    if wrk is None:
        raise SystemExit("needs wrk")
    load = os.getloadavg()
    lines = [
        f"# What the slowest requests waited for: {label}",
        "",
        f"server code at commit {checkout_commit(code) if code else git_commit()} (tool at {git_commit()}), "
        f"{provenance.machine()}; "
        f"{provenance.load_note(load[0])}",
        f"command: python -m benchmarks.diagnose_tail --label {label} --duration {duration}"
        + (" --feedback" if feedback else "") + (" --code <checkout>" if code else ""),
        "server: bandit-router serve (default policy, shipped 8-model catalog, durable SQLite), wrk -t1, "
        f"{duration} s per measurement; see the module docstring for what is recorded and how",
        "",
    ]
    runs: list[tuple[str, int, dict[str, Any], tuple[float, float]]] = []
    with tempfile.TemporaryDirectory(prefix="diagnose-tail-") as tmp, _served(Path(tmp), code) as (server, stats):
        bench_http.warm_up(server)
        names = ["route", "feedback"] if feedback else ["route"]
        for name in names:
            for connections in (64, 8):
                args = []
                if name == "feedback":
                    args = [str(server.fresh_ids(int(4000 * duration), f"tail-{connections}"))]
                started = time.perf_counter()  # the server's perf_counter: the same clock (CLOCK_MONOTONIC)
                cpu = ab_http._thread_cpu(server.pid)
                m = bench_http.load(wrk, server, name, connections, duration, *args)
                after_cpu = ab_http._thread_cpu(server.pid)
                for role in ("loop", "other"):
                    m[f"{role}_us"] = (after_cpu[role] - cpu[role]) / max(m["requests"], 1) * 1e6
                runs.append((name, connections, m, (started, time.perf_counter())))
        time.sleep(1.5)  # the servers' last dump
        requests, iterations, events = _read(stats)
    after = os.getloadavg()
    for name, connections, m, window in runs:
        lines += _analyse(name, connections, m, requests, iterations, events, window)
    lines.append(f"load average {after[0]:.2f} at the end")
    return provenance.write_report(out, f"tail-{label}.txt", lines, echo=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    provenance.add_output_arguments(parser, "tail-LABEL.txt", duration=6)
    parser.add_argument("--code", type=Path, default=None, help="serve bandit_router from this checkout")
    parser.add_argument("--feedback", action="store_true", help="also /v1/feedback at 64 and 8 connections")
    args = parser.parse_args(argv)
    print(diagnose(args.label, Path(args.out), args.duration, args.code, args.feedback))
    return 0


if __name__ == "__main__":
    sys.exit(main())
