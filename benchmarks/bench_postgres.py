"""PostgreSQL benchmark: 1, 2 and 3 `bandit-router serve` replicas on one PostgreSQL server, against one SQLite
process in the same run; and the learning lag across three replicas.

- Throughput: `POST /v1/route`, then `POST /v1/feedback` (one fresh decision per request, decided on any
  replica), `CONNECTIONS` connections in all, split evenly over one `wrk -t1` per replica running at the same
  time; requests/s summed. Each ratio is against the single SQLite process measured the same way in the same
  round; `ROUNDS` rounds (SQLite, 1, 2, 3 replicas each), and the rows give the median over the rounds with
  the range of the ratio (a shared machine's load moves single runs by a factor of two).
- Learning lag: a client routes and sends feedback to random replicas of three, one at a time, with a route
  load on the replicas meanwhile; from the feedback's acknowledgement until every replica's
  `bandit_router_applied_seq` (`/metrics`) reached its seq. p50 and p99 over `LAG_SAMPLES` feedbacks.

The PostgreSQL server is a throwaway one (`tools/pg_server.py`, fsync on, loopback) on the same machine: on
2 cores the replicas, PostgreSQL and wrk share them, so the ratios say how the design behaves when the machine
is the limit, not how it scales on separate hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.bench_http import _free_port, _scripts, wrk_path

DURATION_S = int(os.environ.get("BENCH_PG_DURATION", "5"))
ROUNDS = int(os.environ.get("BENCH_PG_ROUNDS", "3"))
CONNECTIONS = 24
LAG_SAMPLES = 200
REPLICAS = (1, 2, 3)


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not become ready")


def _load(wrk: str, url: str, script: Path, path: str, connections: int, duration: int, *args: str) -> dict[str, Any]:
    """One `wrk -t1` run (the Lua scripts of `bench_http`): its summary and requests/s."""
    command = [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "-s", str(script), url + path]
    if args:
        command += ["--", *args]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    summary: dict[str, Any] = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    summary["rps"] = summary["requests"] / (summary["duration_us"] / 1e6)
    return summary


def _serve(db: str, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "BANDIT_ROUTER_SEED": "1", "BANDIT_ROUTER_LOG_LEVEL": "warning"}
    for name in ("BANDIT_ROUTER_API_KEYS", "BANDIT_ROUTER_ADMIN_KEYS", "BANDIT_ROUTER_DB"):
        env.pop(name, None)
    command = [sys.executable, "-m", "bandit_router.cli", "serve", "--port", str(port), "--db", db]
    process = subprocess.Popen(command, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, process)
    return process, url


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for p in processes:
        p.terminate()
    for p in processes:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _parallel(wrk: str, urls: list[str], script: Path, path: str, args: list[list[str]]) -> dict[str, float]:
    """One wrk per replica at the same time; summed requests/s, errors, the worst p99."""
    results: list[dict[str, Any]] = [{} for _ in urls]
    per = max(1, CONNECTIONS // len(urls))

    def one(i: int) -> None:
        results[i] = _load(wrk, urls[i], script, path, per, DURATION_S, *args[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(urls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "rps": sum(r["rps"] for r in results),
        "errors": sum(r["status_errors"] + r["socket_errors"] for r in results),
        "p99_ms": max(r["p99_us"] for r in results) / 1000,
    }


def _decision_ids(db: str) -> list[str]:
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            return [r[0] for r in conn.execute("SELECT decision_id FROM decisions ORDER BY position")]
    import sqlite3

    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT decision_id FROM decisions ORDER BY rowid")]


def _measure(wrk: str, scripts: dict[str, Path], db: str, n: int, folder: Path) -> dict[str, dict[str, float]]:
    """Route, then feedback throughput with `n` processes on `db`."""
    started = [_serve(db, folder) for _ in range(n)]
    processes, urls = [p for p, _ in started], [u for _, u in started]
    try:
        _parallel(wrk, urls, scripts["route"], "/v1/route", [[] for _ in urls])  # warm up (and decisions)
        route = _parallel(wrk, urls, scripts["route"], "/v1/route", [[] for _ in urls])
        ids = _decision_ids(db)
        random.Random(n).shuffle(ids)  # a decision's feedback goes to any replica
        files = []
        for i in range(n):
            path = folder / f"ids-{n}-{i}.txt"
            path.write_text("\n".join(ids[i::n]) + "\n")
            files.append([str(path)])
        feedback = _parallel(wrk, urls, scripts["feedback"], "/v1/feedback", files)
    finally:
        _stop(processes)
    return {"route": route, "feedback": feedback}


def _applied(url: str) -> int:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("bandit_router_applied_seq "):
                return int(float(line.split()[1]))
    raise RuntimeError("no applied_seq in /metrics")


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        answer: dict[str, Any] = json.load(reply)
        return answer


def _lag(wrk: str, scripts: dict[str, Path], db: str, folder: Path) -> list[float]:
    """Seconds from each feedback's acknowledgement until every one of three replicas applied it."""
    started = [_serve(db, folder) for _ in range(3)]
    processes, urls = [p for p, _ in started], [u for _, u in started]
    stop = threading.Event()

    def background() -> None:  # a light route load on every replica while the lag is measured
        while not stop.is_set():
            for url in urls:
                _load(wrk, url, scripts["route"], "/v1/route", 2, 1)

    load = threading.Thread(target=background)
    lags: list[float] = []
    rng = random.Random(7)
    try:
        load.start()
        for i in range(LAG_SAMPLES):
            decision = _post(rng.choice(urls) + "/v1/route", {"prompt": f"lag probe {i}: summarise this ticket"})
            ack = _post(rng.choice(urls) + "/v1/feedback", {"decision_id": decision["decision_id"], "quality": 0.7})
            acked = time.perf_counter()
            pending = list(urls)
            while pending:
                pending = [u for u in pending if _applied(u) < ack["seq"]]
            lags.append(time.perf_counter() - acked)
    finally:
        stop.set()
        load.join()
        _stop(processes)
    return lags


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run() -> list[dict[str, Any]]:
    from tools.pg_server import PgServer, binaries

    wrk = wrk_path()
    if wrk is None or binaries() is None:
        return [{"benchmark": "postgres", "metric": "skipped", "value": 0, "unit": "",
                 "note": "needs wrk and PostgreSQL (apt-get install wrk postgresql)"}]
    rows: list[dict[str, Any]] = []
    server = PgServer.start(fsync=True)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
            folder = Path(tmp)
            scripts = _scripts(folder)
            rounds = []
            for r in range(ROUNDS):
                measured = {0: _measure(wrk, scripts, str(folder / f"baseline-{r}.db"), 1, folder)}
                for n in REPLICAS:
                    measured[n] = _measure(wrk, scripts, server.create_database(f"bench_{r}_{n}"), n, folder)
                rounds.append(measured)
            lags = _lag(wrk, scripts, server.create_database("bench_lag"), folder)
    finally:
        server.stop()
    note = (f"{CONNECTIONS} connections over the processes (one wrk -t1 each), {DURATION_S} s, shipped catalog, "
            "default policy, loopback; PostgreSQL 1 server fsync=on on the same 2 cores")
    for kind in ("route", "feedback"):
        base = [m[0][kind]["rps"] for m in rounds]
        rows.append({"benchmark": f"pg {kind} sqlite 1 process", "metric": "requests_per_s",
                     "value": round(_percentile(base, 50), 1), "unit": "req/s",
                     "note": f"the baseline: one SQLite process; median of {ROUNDS} rounds "
                             f"({min(base):,.0f}–{max(base):,.0f})"})
        for n in REPLICAS:
            rps = [m[n][kind]["rps"] for m in rounds]
            ratios = [100 * m[n][kind]["rps"] / m[0][kind]["rps"] for m in rounds]
            errors = sum(int(m[n][kind]["errors"]) for m in rounds)
            bench = f"pg {kind} {n} replica{'s' if n > 1 else ''}"
            rows.append({"benchmark": bench, "metric": "requests_per_s", "value": round(_percentile(rps, 50), 1),
                         "unit": "req/s", "note": note})
            rows.append({"benchmark": bench, "metric": "ratio_vs_sqlite", "value": round(_percentile(ratios, 50), 1),
                         "unit": "%", "note": f"summed over the replicas ÷ one SQLite process in the same round; "
                                              f"rounds {min(ratios):.0f}–{max(ratios):.0f}%"})
            p99 = [m[n][kind]["p99_ms"] for m in rounds]
            rows.append({"benchmark": bench, "metric": "p99_ms", "value": round(_percentile(p99, 50), 1),
                         "unit": "ms", "note": "the slowest replica's p99, median over the rounds"})
            rows.append({"benchmark": bench, "metric": "errors", "value": errors, "unit": "", "target": "== 0",
                         "ok": errors == 0})
    for q in (50, 99):
        rows.append({"benchmark": "pg learning lag 3 replicas", "metric": f"p{q}_ms",
                     "value": round(1000 * _percentile(lags, q), 1), "unit": "ms",
                     "note": f"feedback ack → every replica applied it; {len(lags)} feedbacks, light route load"})
    return rows


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    for row in run():
        print(row)
