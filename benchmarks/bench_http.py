"""HTTP benchmark: real `bandit-router serve` processes on loopback, loaded by `wrk`.

Measures requests/s, p50/p99 latency and the server's CPU per request of `POST /v1/route` (decide + durable
SQLite log, WAL, synchronous = normal) and `POST /v1/feedback` (commit with seq, then learn) at 8 and 64
connections, next to `GET /healthz`, a trivial JSON endpoint of the same FastAPI app served the same way (same
process, middleware and uvicorn settings), and `/v1/route` on a second server with `--workers 2`.

Targets (issue 12), each a ratio measured in this run: route ≥ 0.6 × healthz's requests/s, feedback ≥ 0.5 ×,
two workers ≥ 1.6 × one on `/v1/route`; route p99 ≤ 25 ms at 64 connections and ≤ 5 ms at 8. The targets are
checked on the routes of a fresh service (no feedback yet: the `default` policy keeps every model in play, its
most expensive state); `/v1/route` is measured again at the end, by the policy that learned the feedback runs'
outcomes (as `bench_core` measures a trained policy), next to `/healthz` in interleaved rounds.

Both servers run the `default` policy on the shipped catalog (8 models), uvloop, httptools, no access log.
`wrk` runs with one thread (`-t1`): on a 2-core machine a second wrk thread competes with the server and the
tail latency then measures the scheduler, not the server; wrk's own CPU per request is reported, to show the
load generator is not the bottleneck. Each measurement is repeated in `ROUNDS` interleaved rounds (healthz,
route, …, then again), and a ratio is that of the rounds' totals, so a neighbour's load on a shared machine
weighs on both sides alike; a p99 is the worst round's.

`wrk` is installed with apt-get when it is missing and this runs as root; otherwise the rows say it was skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DURATION_S = int(os.environ.get("BENCH_HTTP_DURATION", "4"))
ROUNDS = int(os.environ.get("BENCH_HTTP_ROUNDS", "3"))
CONNECTIONS = (8, 64)
SCALING_CONNECTIONS = 64

_PROMPTS = [
    "What is the capital of Australia?",
    "Write a haiku about databases that never lose a row.",
    "Summarise the following support ticket in one sentence: the customer cannot log in after resetting the "
    "password twice, the reset email arrives but the link says it has expired, and they need access today.",
    "def fib(n):\\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\\n\\nWhy is this slow and how do I fix it?",
    "Solve for x: 3x + 7 = 22. Show each step.",
    "Translate to French: The meeting has been moved to Thursday afternoon because the room is being painted.",
    "Explain the difference between a process and a thread to a new engineer, with one example of when each is "
    "the better choice, and mention what the global interpreter lock changes in Python.",
    "List five ways to reduce the latency of an HTTP service written in Python.",
    "Draft a polite reply declining a meeting invitation for next Monday and proposing two other times.",
    "Write a SQL query that returns the ten customers with the highest total order value in 2024, with their "
    "names and totals, from tables customers(id, name) and orders(id, customer_id, total, created_at).",
    "Is it safe to take ibuprofen with coffee?",
    "Give me a regular expression that matches ISO 8601 dates like 2024-03-15 and explain each part of it. "
    "Then list three strings that look like dates but must not match, and say why each one fails.",
]

_SUMMARY = r"""
done = function(summary, latency, requests)
  io.write(string.format('\n{"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n', summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _scripts(folder: Path) -> dict[str, Path]:
    prompts = ",\n  ".join(_lua_string(json.dumps({"prompt": p.replace("\\n", "\n")})[:-1]) for p in _PROMPTS)
    route = f"""
local bodies = {{
  {prompts}
}}
local tenants = {{"acme", "globex", "initech", "umbrella"}}
local n = 0
request = function()
  n = n + 1
  local body = bodies[(n % #bodies) + 1] .. ', "context": {{"tenant": "' .. tenants[(n % 4) + 1] .. '"}}}}'
  return wrk.format("POST", "/v1/route", {{["Content-Type"] = "application/json"}}, body)
end
""" + _SUMMARY
    feedback = r"""
local ids = {}
local n = 0
init = function(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
end
request = function()
  n = n + 1
  local id = ids[((n - 1) % #ids) + 1]
  local body = string.format('{"decision_id": "%s", "quality": %.2f, "output_tokens": %d, "latency_ms": %d}',
    id, (n % 100) / 100, 50 + n % 400, 300 + n % 2000)
  return wrk.format("POST", "/v1/feedback", {["Content-Type"] = "application/json"}, body)
end
""" + _SUMMARY
    paths = {"route": folder / "route.lua", "feedback": folder / "feedback.lua", "healthz": folder / "healthz.lua"}
    paths["route"].write_text(route)
    paths["feedback"].write_text(feedback)
    paths["healthz"].write_text(_SUMMARY)
    return paths


PATHS = {"healthz": "/healthz", "route": "/v1/route", "feedback": "/v1/feedback"}


def wrk_path() -> str | None:
    """`wrk`, installed with apt-get when missing and running as root."""
    found = shutil.which("wrk")
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("   installing wrk with apt-get ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True, env=env, check=False)
        found = shutil.which("wrk")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc): uvicorn's worker processes are children of the supervisor."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` and its live descendants (Linux /proc), or NaN elsewhere."""
    total = 0.0
    for p in _process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            if p == pid:
                return float("nan")
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class Server:
    """A running `bandit-router serve` (the `default` policy, shipped catalog) on a free loopback port."""

    def __init__(self, folder: Path, workers: int = 1, code: Path | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.scripts = _scripts(folder)
        self.db = folder / "bench.db"
        self.workers = workers
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.used_ids = 0
        env = {**os.environ, "BANDIT_ROUTER_SEED": "1", "BANDIT_ROUTER_LOG_LEVEL": "warning"}
        for key in ("BANDIT_ROUTER_API_KEYS", "BANDIT_ROUTER_ADMIN_KEYS", "BANDIT_ROUTER_POLICY"):
            env.pop(key, None)
        # Serve this checkout's package (or another's: a profile of an earlier commit), whatever the interpreter's
        # environment would import: a virtual environment shared by several worktrees imports the one it was
        # installed from, and the servers would silently run that code.
        code = code if code is not None else Path(__file__).resolve().parent.parent
        env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [env.get("PYTHONPATH")])])
        command = [sys.executable, "-m", "bandit_router.cli", "serve", "--port", self.url.rsplit(":", 1)[1],
                   "--db", str(self.db), "--workers", str(workers)]
        self.process = subprocess.Popen(command, env=env, cwd=folder, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self.pid = self.process.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every worker answers `/readyz` (each reply names its pid)."""
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as reply:
                    if reply.status == 200:
                        seen.add(json.load(reply)["pid"])
                        if len(seen) >= self.workers:
                            return
                        continue
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the server did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def count(self, sql: str) -> int:
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as conn:
            return int(conn.execute(sql).fetchone()[0])

    def fresh_ids(self, n: int, name: str) -> Path:
        """A file of `n` decision ids that no feedback run used yet, routing more first when there are too few."""
        wrk = wrk_path()
        assert wrk is not None
        while self.count("SELECT COUNT(*) FROM decisions") < self.used_ids + n:
            load(wrk, self, "route", 64, 2)
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as conn:
            ids = [r[0] for r in conn.execute("SELECT decision_id FROM decisions ORDER BY rowid LIMIT ? OFFSET ?",
                                              (n, self.used_ids))]
        self.used_ids += n
        path = self.folder / f"ids-{name}.txt"
        path.write_text("\n".join(ids) + "\n")
        return path


@contextlib.contextmanager
def serving(folder: Path, workers: int = 1, code: Path | None = None) -> Iterator[Server]:
    server = Server(folder, workers, code)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def load(wrk: str, server: Server, name: str, connections: int, duration: int, *args: str) -> dict[str, Any]:
    """One `wrk -t1` run against `name` (healthz, route, feedback): wrk's summary, requests/s, and the server's
    and wrk's CPU µs per request."""
    command = [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "-s",
               str(server.scripts[name]), server.url + PATHS[name]]
    if args:
        command += ["--", *args]
    cpu = _cpu_seconds(server.pid)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = _cpu_seconds(server.pid) - cpu
    summary: dict[str, Any] = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    requests = max(summary["requests"], 1)
    summary["rps"] = summary["requests"] / (summary["duration_us"] / 1e6)
    summary["cpu_us"] = cpu / requests * 1e6
    summary["load_cpu_us"] = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / requests * 1e6
    summary["errors"] = summary["status_errors"] + summary["socket_errors"]
    return summary


def warm_up(server: Server) -> None:
    wrk = wrk_path()
    assert wrk is not None
    load(wrk, server, "healthz", 16, 2)
    load(wrk, server, "route", 16, 3)


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one measurement as one: totals for rates and CPU, the worst round's latencies."""
    requests = sum(r["requests"] for r in runs)
    seconds = sum(r["duration_us"] for r in runs) / 1e6
    return {
        "requests": requests,
        "rps": requests / seconds,
        "p50_us": max(r["p50_us"] for r in runs),
        "p99_us": max(r["p99_us"] for r in runs),
        "cpu_us": sum(r["cpu_us"] * r["requests"] for r in runs) / max(requests, 1),
        "load_cpu_us": sum(r["load_cpu_us"] * r["requests"] for r in runs) / max(requests, 1),
        "errors": sum(r["errors"] for r in runs),
    }


def _rows(label: str, m: dict[str, Any], note: str, p99_target: float | None) -> list[dict[str, Any]]:
    rows = [
        {"benchmark": label, "metric": "requests_per_s", "value": round(m["rps"], 1), "unit": "req/s", "note": note},
        {"benchmark": label, "metric": "p50_ms", "value": m["p50_us"] / 1000, "unit": "ms",
         "note": "worst round"},
    ]
    p99: dict[str, Any] = {"benchmark": label, "metric": "p99_ms", "value": m["p99_us"] / 1000, "unit": "ms",
                           "note": "worst round"}
    if p99_target is not None:
        p99.update(target=f"<= {p99_target:g}", ok=m["p99_us"] / 1000 <= p99_target)
    rows += [
        p99,
        {"benchmark": label, "metric": "server_cpu_per_request", "value": round(m["cpu_us"], 1), "unit": "µs",
         "note": "server processes' CPU time / requests (robust to a busy machine)"},
        {"benchmark": label, "metric": "wrk_cpu_per_request", "value": round(m["load_cpu_us"], 1), "unit": "µs",
         "note": "the load generator's CPU time / requests"},
        {"benchmark": label, "metric": "errors", "value": m["errors"], "unit": "", "target": "== 0",
         "ok": m["errors"] == 0},
    ]
    return rows


def _ratio(label: str, metric: str, value: float, target: float | None, note: str) -> dict[str, Any]:
    row: dict[str, Any] = {"benchmark": label, "metric": metric, "value": round(value, 2), "unit": "×", "note": note}
    if target is not None:
        row.update(target=f">= {target:g}", ok=value >= target)
    return row


def run() -> list[dict[str, Any]]:
    wrk = wrk_path()
    if wrk is None:
        return [{"benchmark": "http", "metric": "skipped", "value": 0, "unit": "",
                 "note": "wrk not found and not installable (apt-get as root); install wrk to run this benchmark"}]
    runs: dict[tuple[str, int, int], list[dict[str, Any]]] = {}

    def measure(server: Server, name: str, connections: int, *args: str) -> dict[str, Any]:
        m = load(wrk, server, name, connections, DURATION_S, *args)
        runs.setdefault((name, server.workers, connections), []).append(m)
        return m

    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        folder = Path(tmp)
        with serving(folder / "one", 1) as one, serving(folder / "two", 2) as two:
            warm_up(one)
            warm_up(two)
            for _ in range(ROUNDS):  # healthz and route interleaved, one worker and two
                for connections in CONNECTIONS:
                    measure(one, "healthz", connections)
                    measure(one, "route", connections)
                measure(two, "healthz", SCALING_CONNECTIONS)
                measure(two, "route", SCALING_CONNECTIONS)
            two.stop()
            # Feedback needs one fresh decision per request (feedback assumed at most 3× as fast as routing).
            route_rps = _combine(runs["route", 1, CONNECTIONS[-1]])["rps"]
            per_run = math.ceil(3 * route_rps * DURATION_S) + 1000
            short = 0
            for i in range(ROUNDS):
                for connections in CONNECTIONS:
                    ids = one.fresh_ids(per_run, f"{i}-{connections}")
                    measure(one, "healthz", connections).setdefault("phase", "feedback")
                    m = measure(one, "feedback", connections, str(ids))
                    short += max(0, m["requests"] - per_run)
            trained: dict[str, list[dict[str, Any]]] = {"healthz": [], "route": []}
            for _ in range(ROUNDS):  # routing again, by the policy that learned the feedback (as bench_core does)
                for name in ("healthz", "route"):
                    trained[name].append(load(wrk, one, name, SCALING_CONNECTIONS, DURATION_S))
            time.sleep(1.0)  # requests wrk had in flight when it stopped are still answered
            with urllib.request.urlopen(one.url + "/v1/stats", timeout=5) as reply:
                policy_version = json.load(reply)["policy_version"]
            n_decisions = one.count("SELECT COUNT(*) FROM decisions")
            applied = one.count("SELECT COUNT(*) FROM feedback WHERE learn = 1")
    note = "default policy, 8 models, WAL synchronous=normal, wrk -t1, loopback"
    rows: list[dict[str, Any]] = []
    healthz: dict[int, dict[str, Any]] = {}
    healthz_fb: dict[int, dict[str, Any]] = {}
    for connections in CONNECTIONS:
        all_healthz = runs["healthz", 1, connections]
        healthz[connections] = _combine([r for r in all_healthz if "phase" not in r])
        healthz_fb[connections] = _combine([r for r in all_healthz if "phase" in r])
        route = _combine(runs["route", 1, connections])
        feedback = _combine(runs["feedback", 1, connections])
        rows += _rows(f"http GET /healthz c={connections}", _combine(all_healthz), "1 worker, " + note, None)
        rows += _rows(f"http POST /v1/route c={connections}", route, "1 worker, " + note,
                      25.0 if connections == 64 else 5.0)
        rows += _rows(f"http POST /v1/feedback c={connections}", feedback, "1 worker, " + note, None)
        rows.append(_ratio(f"http route/healthz c={connections}", "throughput_ratio",
                           route["rps"] / healthz[connections]["rps"], 0.6,
                           "POST /v1/route (durable) ÷ GET /healthz requests/s, same server, interleaved rounds"))
        rows.append(_ratio(f"http route/healthz c={connections}", "cpu_ratio",
                           healthz[connections]["cpu_us"] / route["cpu_us"], None,
                           "server CPU per /healthz ÷ per /v1/route: the throughput ratio on an idle machine"))
        rows.append(_ratio(f"http feedback/healthz c={connections}", "throughput_ratio",
                           feedback["rps"] / healthz_fb[connections]["rps"], 0.5,
                           "POST /v1/feedback (commit, learn) ÷ GET /healthz requests/s, interleaved rounds"))
        rows.append(_ratio(f"http feedback/healthz c={connections}", "cpu_ratio",
                           healthz_fb[connections]["cpu_us"] / feedback["cpu_us"], None,
                           "server CPU per /healthz ÷ per /v1/feedback"))
    c = SCALING_CONNECTIONS
    trained_healthz, trained_route = _combine(trained["healthz"]), _combine(trained["route"])
    rows += _rows(f"http POST /v1/route c={c}, trained policy", trained_route,
                  f"1 worker, after learning {policy_version} feedbacks, " + note, None)
    rows.append(_ratio(f"http route/healthz c={c}, trained policy", "throughput_ratio",
                       trained_route["rps"] / trained_healthz["rps"], None,
                       "the same, once the policy has learned the feedback runs' outcomes (interleaved rounds)"))
    rows.append(_ratio(f"http route/healthz c={c}, trained policy", "cpu_ratio",
                       trained_healthz["cpu_us"] / trained_route["cpu_us"], None,
                       "server CPU per /healthz ÷ per /v1/route, trained policy"))
    two_healthz, two_route = _combine(runs["healthz", 2, c]), _combine(runs["route", 2, c])
    rows += _rows(f"http GET /healthz 2 workers c={c}", two_healthz, "2 workers, " + note, None)
    rows += _rows(f"http POST /v1/route 2 workers c={c}", two_route, "2 workers, " + note, None)
    one_route = _combine(runs["route", 1, c])
    rows.append(_ratio(f"http route 2 workers/1 c={c}", "throughput_ratio", two_route["rps"] / one_route["rps"], 1.6,
                       "/v1/route requests/s with --workers 2 ÷ with 1, interleaved rounds, 2 cores shared with wrk"))
    rows.append(_ratio(f"http healthz 2 workers/1 c={c}", "throughput_ratio", two_healthz["rps"] / healthz[c]["rps"],
                       None, "the same for /healthz: what the machine allows this run"))
    routed = sum(m["requests"] for (name, workers, _), ms in runs.items() if name == "route" and workers == 1
                 for m in ms) + trained_route["requests"]
    rows.append({"benchmark": "http durability", "metric": "decisions_stored", "value": n_decisions, "unit": "",
                 "target": ">= routed", "ok": n_decisions >= routed,
                 "note": f"{routed} route replies measured (+ warm-up); every 200 had its row committed first"})
    rows.append({"benchmark": "http durability", "metric": "feedback_learned", "value": applied, "unit": "",
                 "target": "== policy version", "ok": applied == policy_version,
                 "note": f"learned rows in the database; the served policy's version is {policy_version}"})
    rows.append({"benchmark": "http feedback ids", "metric": "reused", "value": short, "unit": "", "target": "== 0",
                 "ok": short == 0, "note": "feedback requests beyond the fresh decision ids (would be duplicates)"})
    return rows


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    for row in run():
        print(row)
