"""HTTP benchmark: a real `bandit-router serve` on loopback, loaded by `wrk`.

Measures requests/s and p50/p99 latency of `POST /v1/route` (decide + durable SQLite log, WAL,
synchronous = normal) and `POST /v1/feedback` (commit with seq, then learn) at 16 and 64 connections, next to
`GET /healthz`, a trivial JSON endpoint of the same app served the same way (same process, middleware and
uvicorn settings). Targets (issue 3): route ≥ 35% of the trivial endpoint's requests/s, route p99 ≤ 30 ms at
64 connections.

One uvicorn worker (uvloop, httptools, no access log), the shipped catalog (8 models), vw-squarecb. `wrk` runs
with one thread (`-t1`), so on a 2-core machine the load generator and the server each have a core; with two
wrk threads the generator competes with the server and the tail latency measures the scheduler, not the server.

`wrk` is installed with apt-get when it is missing and this runs as root; otherwise the rows say it was skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

DURATION_S = int(os.environ.get("BENCH_HTTP_DURATION", "5"))
CONNECTIONS = (16, 64)

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


def _wrk() -> str | None:
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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (Linux /proc), or NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(
    wrk: str, url: str, script: Path, path: str, connections: int, duration: int, *args: str, pid: int = 0
) -> dict[str, Any]:
    command = [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "-s", str(script), url + path]
    if args:
        command += ["--", *args]
    cpu = _cpu_seconds(pid) if pid else float("nan")
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cpu = _cpu_seconds(pid) - cpu if pid else float("nan")
    summary: dict[str, Any] = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    summary["rps"] = summary["requests"] / (summary["duration_us"] / 1e6)
    summary["cpu_us"] = cpu / max(summary["requests"], 1) * 1e6
    return summary


def run() -> list[dict[str, Any]]:
    wrk = _wrk()
    if wrk is None:
        return [{"benchmark": "http", "metric": "skipped", "value": 0, "unit": "",
                 "note": "wrk not found and not installable (apt-get as root); install wrk to run this benchmark"}]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        folder = Path(tmp)
        scripts = _scripts(folder)
        db = folder / "bench.db"
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "BANDIT_ROUTER_SEED": "1", "BANDIT_ROUTER_LOG_LEVEL": "warning"}
        env.pop("BANDIT_ROUTER_API_KEYS", None)
        env.pop("BANDIT_ROUTER_ADMIN_KEYS", None)
        command = [sys.executable, "-m", "bandit_router.cli", "serve", "--port", str(port), "--db", str(db)]
        server = subprocess.Popen(command, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_ready(url, server)
            pid = server.pid
            _load(wrk, url, scripts["healthz"], "/healthz", 16, 2)  # warm up
            _load(wrk, url, scripts["route"], "/v1/route", 16, 3)
            measured: dict[tuple[str, int], dict[str, Any]] = {}
            for connections in CONNECTIONS:
                measured["healthz", connections] = _load(wrk, url, scripts["healthz"], "/healthz", connections,
                                                         DURATION_S, pid=pid)
                measured["route", connections] = _load(wrk, url, scripts["route"], "/v1/route", connections,
                                                       DURATION_S, pid=pid)
            # Feedback needs one fresh decision per request: route more until there are enough for both runs
            # (feedback is assumed at most 2.5× as fast as routing).
            route_rps = measured["route", CONNECTIONS[-1]]["rps"]
            with sqlite3.connect(db) as conn:
                have = conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
            missing = 2.5 * route_rps * DURATION_S * len(CONNECTIONS) - have
            if missing > 0:
                _load(wrk, url, scripts["route"], "/v1/route", 64, max(1, round(missing / route_rps)))
            with sqlite3.connect(db) as conn:
                ids = [row[0] for row in conn.execute("SELECT decision_id FROM decisions ORDER BY rowid")]
                n_decisions = len(ids)
            half = len(ids) // 2
            for connections, chunk in zip(CONNECTIONS, (ids[:half], ids[half:]), strict=True):
                id_file = folder / f"ids-{connections}.txt"
                id_file.write_text("\n".join(chunk) + "\n")
                measured["feedback", connections] = _load(wrk, url, scripts["feedback"], "/v1/feedback", connections,
                                                          DURATION_S, str(id_file), pid=pid)
            time.sleep(1.0)  # requests wrk had in flight when it stopped are still answered
            with urllib.request.urlopen(url + "/v1/stats", timeout=5) as reply:
                policy_version = json.load(reply)["policy_version"]
            with sqlite3.connect(db) as conn:
                applied = conn.execute("SELECT COUNT(*) FROM feedback WHERE learn = 1").fetchone()[0]
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    routed = sum(m["requests"] for (name, _), m in measured.items() if name == "route")
    note = "1 worker, WAL synchronous=normal, 8 models, vw-squarecb, wrk -t1, loopback"
    for (name, connections), m in measured.items():
        label = {"healthz": "http GET /healthz", "route": "http POST /v1/route", "feedback": "http POST /v1/feedback"}
        bench = f"{label[name]} c={connections}"
        rows.append({"benchmark": bench, "metric": "requests_per_s", "value": round(m["rps"], 1), "unit": "req/s",
                     "note": note})
        rows.append({"benchmark": bench, "metric": "p50_ms", "value": m["p50_us"] / 1000, "unit": "ms"})
        rows.append({"benchmark": bench, "metric": "server_cpu_per_request", "value": round(m["cpu_us"], 1),
                     "unit": "µs", "note": "server process CPU time / requests (robust to a busy machine)"})
        p99 = {"benchmark": bench, "metric": "p99_ms", "value": m["p99_us"] / 1000, "unit": "ms"}
        if name == "route" and connections == 64:
            p99.update(target="<= 30", ok=m["p99_us"] / 1000 <= 30)
        rows.append(p99)
        errors = m["status_errors"] + m["socket_errors"]
        rows.append({"benchmark": bench, "metric": "errors", "value": errors, "unit": "", "target": "== 0",
                     "ok": errors == 0})
    for connections in CONNECTIONS:
        ratio = measured["route", connections]["rps"] / measured["healthz", connections]["rps"]
        rows.append({"benchmark": f"http route/healthz c={connections}", "metric": "throughput_ratio",
                     "value": round(100 * ratio, 1), "unit": "%", "target": ">= 35", "ok": ratio >= 0.35,
                     "note": "POST /v1/route with durable logging vs GET /healthz, same server, same run"})
        cpu_ratio = measured["healthz", connections]["cpu_us"] / measured["route", connections]["cpu_us"]
        rows.append({"benchmark": f"http route/healthz c={connections}", "metric": "cpu_ratio",
                     "value": round(100 * cpu_ratio, 1), "unit": "%",
                     "note": "server CPU per /healthz ÷ per /v1/route: the throughput ratio on an idle machine"})
    rows.append({"benchmark": "http durability", "metric": "decisions_stored", "value": n_decisions, "unit": "",
                 "target": ">= routed", "ok": n_decisions >= routed,
                 "note": f"{routed} route replies measured (+ warm-up); every 200 had its row committed first"})
    rows.append({"benchmark": "http durability", "metric": "feedback_learned", "value": applied, "unit": "",
                 "target": "== policy version", "ok": applied == policy_version,
                 "note": f"learned rows in the database; the served policy's version is {policy_version}"})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
