"""What the gateway drills share, on top of the operator's drills' helpers (`experiments/ops-drills/drills.py`:
`Serve`, `wait`; `free_port` from `tools/serve_process.py`): the fake upstream as its own process
(`benchmarks/fake_upstream.py`, told how to misbehave through `/_control`), a gateway configuration with every
kind of alias (the bandit's `router`, a judge cascade, a log-prob cascade, a learned cascade, an LLM router), what
the gateway process holds (file descriptors, connections to the upstream, resident memory), and what the database
says about a request."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "ops-drills"))

from drills import ROOT, Serve, wait  # noqa: E402

from tools.serve_process import free_port  # noqa: E402  (drills put the repository's root on the path)

__all__ = ["CONFIG", "MESSAGES", "ROOT", "Gateway", "Serve", "Upstream", "free_port", "wait"]

MESSAGES = [{"role": "user", "content": "Fix this Python function: def mean(xs): return sum(xs) / len(x)"}]

CONFIG = """
seed = 1
policy = "linucb"

[gateway]
upstream_timeout_s = {timeout}
upstream_connect_timeout_s = 2
deadline_s = {deadline}
max_attempts = 3
upstream_max_concurrency = {concurrency}

[[models]]
name = "fake-small"
input_usd_per_mtok = 0.1
output_usd_per_mtok = 0.4
base_url = "{url}/v1"

[[models]]
name = "fake-coder"
input_usd_per_mtok = 2.0
output_usd_per_mtok = 8.0
base_url = "{url}/v1"

[[models]]
name = "fake-writer"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 4.0
base_url = "{url}/v1"

[[models]]
name = "fake-judge"
input_usd_per_mtok = 0.1
output_usd_per_mtok = 0.4
base_url = "{url}/v1"
route = false

[[routers]]
name = "cascade"
strategy = "cascade"
models = ["fake-small", "fake-coder"]
judge = "fake-judge"
threshold = 0.7

[[routers]]
name = "cascade-logprob"
strategy = "cascade"
models = ["fake-small", "fake-coder"]
signal = "logprob"
threshold = 0.7

[[routers]]
name = "learned"
strategy = "learned-cascade"
models = ["fake-small", "fake-coder"]
judge = "fake-judge"

[[routers]]
name = "auto"
strategy = "llm-router"
router_model = "fake-judge"
models = ["fake-small", "fake-coder"]
"""


class Upstream:
    """`python -m benchmarks.fake_upstream` in its own process group on 127.0.0.1."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (folder / f"upstream-{self.port}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.fake_upstream", "--port", str(self.port)], cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        wait(self._up, 30, "the fake upstream did not start")

    def _up(self) -> bool:
        try:
            return httpx.get(self.url + "/_stats", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def set(self, model: str, mode: str = "ok", delay_s: float = 0.0) -> None:
        httpx.post(self.url + "/_control", json={"model": model, "mode": mode, "delay_s": delay_s},
                   timeout=5).raise_for_status()

    def reset(self) -> None:
        for model in ("fake-small", "fake-coder", "fake-writer", "fake-judge"):
            self.set(model)

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/_stats", timeout=5).json())

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self._log.close()


class Gateway(Serve):
    """`bandit-router serve` with `CONFIG` (the fake upstream's models and every kind of alias) in `folder`."""

    def __init__(self, folder: Path, upstream: Upstream, *, timeout: float = 2.0, deadline: float = 6.0,
                 concurrency: int = 64, name: str = "gateway", env: dict[str, str] | None = None) -> None:
        config = folder / "bandit-router.toml"
        config.write_text(CONFIG.format(url=upstream.url, timeout=timeout, deadline=deadline,
                                        concurrency=concurrency))
        self.db = folder / "router.db"
        super().__init__(folder, {"BANDIT_ROUTER_DB": str(self.db), **(env or {})}, name,
                         args=("--config", str(config)))

    def chat(self, model: str = "router", *, stream: bool = False, timeout: float = 30.0,
             **extra: Any) -> tuple[int, dict[str, str], str, float]:
        """One request: status, headers, body text, seconds."""
        body = {"model": model, "messages": MESSAGES, "stream": stream, **extra}
        started = time.monotonic()
        try:
            reply = httpx.post(self.url + "/v1/chat/completions", json=body, timeout=timeout)
        except httpx.HTTPError as exc:
            return -1, {}, type(exc).__name__, time.monotonic() - started
        return reply.status_code, dict(reply.headers), reply.text, time.monotonic() - started

    def held_when_idle(self, upstream: Upstream) -> dict[str, int]:
        """`held` once idle: 6 s after the upstream's counters are reset, past httpx's keep-alive expiry (5 s), and
        one more request (which lets httpx drop the pooled connections idle past their expiry)."""
        upstream.reset()
        time.sleep(6)
        self.chat("fake-writer")
        return self.held(upstream)

    def held(self, upstream: Upstream) -> dict[str, int]:
        """What this process holds now: open file descriptors, TCP connections to the upstream (established
        or closing), resident memory (KiB)."""
        pid = self.process.pid
        sockets = set()
        fds = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            fds += 1
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    sockets.add(target[8:-1])
        to_upstream = 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            remote_port = int(parts[2].split(":")[1], 16)
            if parts[9] in sockets and remote_port == upstream.port:
                to_upstream += 1
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        return {"fds": fds, "upstream connections": to_upstream, "rss KiB": rss}

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """A read of the gateway's SQLite database (WAL: a reader beside the running writer)."""
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)) as conn:
            return conn.execute(sql, args).fetchall()

    def record(self, decision_id: str) -> dict[str, Any]:
        """What is stored for the request whose answer's `x-decision-id` is `decision_id` (a fallback's decision,
        when the first try failed): the call records of all its tries (attempt, model, status), and their
        feedback (source, quality)."""
        request = self.rows("SELECT request_id FROM calls WHERE decision_id = ?", decision_id)
        if not request:
            return {"calls": [], "feedback": []}
        calls = self.rows("SELECT attempt, model, status FROM calls WHERE request_id = ? ORDER BY attempt",
                          request[0][0])
        feedback = self.rows(
            "SELECT f.source, round(f.quality, 3) FROM feedback f JOIN calls c ON c.decision_id = f.decision_id "
            "WHERE c.request_id = ?", request[0][0])
        return {"calls": [list(c) for c in calls], "feedback": [list(f) for f in feedback]}


def short(text: str, n: int = 160) -> str:
    return " ".join(text.split())[:n]


def show(title: str, value: Any) -> None:
    print(f"{title}: {json.dumps(value, default=str) if not isinstance(value, str) else value}", flush=True)
