"""What the operator's failure drills share: `bandit-router serve` processes on 127.0.0.1 (this checkout's code, or
an older commit's), a load client that routes and rates on random replicas and records every reply, and the
integrity check of a database against what clients were told (acknowledged rows present exactly once, one order,
each replica's policy a replay of the log)."""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tools.serve_process import NotReady, ServeProcess  # noqa: E402

PROMPTS = ["Fix this Python function: def mean(xs): return sum(xs) / len(x)",
           "Write a SQL query joining orders and customers, grouped by month",
           "Write a short poem about the sea at dawn",
           "Compose a haiku about autumn leaves falling in the rain",
           "Summarise this contract clause in one sentence",
           "Translate 'good morning' into French and German"]


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"timed out: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


class Serve(ServeProcess):
    """`python -m bandit_router.cli serve` in its own process group, with `code` (a checkout) first on the path."""

    def __init__(self, folder: Path, env: dict[str, str], name: str, *, code: Path = ROOT,
                 args: tuple[str, ...] = ()) -> None:
        super().__init__(folder, [sys.executable, "-m", "bandit_router.cli"], args, log_name=name,
                         env={"PYTHONPATH": str(code), "BANDIT_ROUTER_LOG_LEVEL": "info", **env})

    def wait_ready(self, timeout: float = 60.0) -> float:
        return super().wait_ready(timeout)

    def outcome(self, timeout: float = 20.0) -> str:
        """'ready', or why it is not (its exit and last output)."""
        try:
            self.wait_ready(timeout)
            return "ready"
        except NotReady as exc:
            return str(exc).strip()

    def problems(self) -> list[str]:
        """The service's own warnings, errors and tracebacks (not the gateway's note about unset keys)."""
        lines = self.logpath.read_text(errors="replace").splitlines()
        return [line[:300] for line in lines
                if ("WARNING" in line or "ERROR" in line or "Traceback" in line) and "bandit_router.gateway" not in line
                and "psycopg.pool" not in line]


def quality(model: str, rng: random.Random) -> float:
    base = {"gpt-4o-mini": 0.7, "claude-haiku-4-5": 0.5}.get(model, 0.4)
    return min(1.0, max(0.0, base + rng.gauss(0, 0.1)))


class Load:
    """Client threads: route on a random replica of `urls` (the list may be changed meanwhile), then rate the
    decision, sent again (to any replica) until acknowledged or `finish` is called (a retry loop left to run on
    would add its 503s after the drill's measured windows). Records what every request got, and how long it took."""

    def __init__(self, urls: list[str], threads: int = 4, seed: int = 1, timeout: float = 60.0) -> None:
        self.urls, self.timeout = urls, timeout
        self.routed: dict[str, str] = {}
        self.rated: dict[str, tuple[int, str]] = {}
        self.codes: Counter[str] = Counter()
        self.longest: dict[str, float] = {}
        self.bad: list[str] = []
        """Replies that are neither 2xx nor a 503 with a message (a 500, a traceback, a 503 without a reason)."""
        self.sample: dict[str, str] = {}
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(seed * 100 + i,), daemon=True)
                         for i in range(threads)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def finish(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(120)

    def _post(self, client: httpx.Client, rng: random.Random, path: str, body: dict[str, Any]) -> httpx.Response | None:
        url = rng.choice(self.urls)
        sent = time.monotonic()
        try:
            reply = client.post(url + path, json=body)
        except httpx.HTTPError as exc:
            self._note(type(exc).__name__, time.monotonic() - sent)
            return None
        key = str(reply.status_code)
        self._note(key, time.monotonic() - sent)
        if reply.status_code >= 400:
            with self._lock:
                self.sample.setdefault(key, reply.text[:300])
        if reply.status_code >= 500:
            try:
                fine = reply.status_code == 503 and bool(reply.json().get("message"))
            except ValueError:
                fine = False
            if not fine:
                with self._lock:
                    self.bad.append(f"{path} {reply.status_code} {reply.text[:300]}")
        return reply

    def _note(self, key: str, seconds: float) -> None:
        with self._lock:
            self.codes[key] += 1
            self.longest[key] = round(max(self.longest.get(key, 0.0), seconds), 2)

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=self.timeout) as client:
            i = 0
            while not self.stopping.is_set():
                i += 1
                route = self._post(client, rng, "/v1/route", {"prompt": rng.choice(PROMPTS) + f" #{seed}.{i}"})
                if route is None or route.status_code != 200:
                    time.sleep(0.05)
                    continue
                decision = route.json()
                with self._lock:
                    self.routed[decision["decision_id"]] = decision["model"]
                body = {"decision_id": decision["decision_id"], "quality": quality(decision["model"], rng)}
                for _ in range(1200):
                    if self.stopping.is_set():
                        break
                    reply = self._post(client, rng, "/v1/feedback", body)
                    if reply is not None and reply.status_code == 200:
                        answer = reply.json()
                        with self._lock:
                            self.rated[decision["decision_id"]] = (answer["seq"], answer["status"])
                        break
                    time.sleep(0.05)

    def summary(self) -> dict[str, Any]:
        return {"routes acknowledged": len(self.routed), "feedback acknowledged": len(self.rated),
                "replies": dict(self.codes), "longest wait (s)": self.longest, "bad replies": self.bad[:5],
                "sample error": self.sample}


def check_postgres_log(url: str, load: Load, replicas: list[str], seed: int) -> dict[str, Any]:
    """The database against what clients were told, and each replica's policy against a replay of the log."""
    import psycopg

    from bandit_router.config import Settings
    from bandit_router.log import rebuild_router
    from bandit_router.store.location import DatabaseURL
    from bandit_router.store.postgres import PostgresStore
    from bandit_router.types import Request

    with psycopg.connect(url) as conn:
        models = dict(conn.execute("SELECT decision_id, model FROM decisions").fetchall())
        rows = conn.execute("SELECT decision_id, seq, learn FROM feedback ORDER BY seq").fetchall()
        head = conn.execute("SELECT seq FROM log_head").fetchone()[0]
    by_decision: dict[str, list[tuple[int, bool]]] = {}
    for decision_id, seq, learn in rows:
        by_decision.setdefault(decision_id, []).append((seq, bool(learn)))
    report: dict[str, Any] = {
        "acknowledged decisions missing": sum(1 for d in load.routed if d not in models),
        "acknowledged decisions with another model": sum(1 for d, m in load.routed.items() if models.get(d, m) != m),
        "acknowledged feedback missing": sum(1 for d, (seq, _) in load.rated.items()
                                             if seq not in [s for s, _ in by_decision.get(d, [])]),
        "decisions with more than one learned row": sum(1 for v in by_decision.values()
                                                        if sum(learned for _, learned in v) > 1),
        "seqs 1..head without a gap": [r[1] for r in rows] == list(range(1, head + 1)),
        "decisions stored but not acknowledged": len(set(models) - set(load.routed)),
    }
    wait(lambda: _caught_up(replicas), 60, "the replicas did not catch up")
    store = PostgresStore(DatabaseURL(url))
    try:
        replay = rebuild_router(Settings(db=DatabaseURL(url), seed=seed), store)
    finally:
        store.close()
    worst = 0.0
    for replica in replicas:
        for prompt in ("Fix this SQL join", "Write a poem about the moon", "Summarise the meeting"):
            for cost_weight in (0.0, 100.0):
                got = httpx.post(replica + "/v1/route", json={"prompt": prompt, "cost_weight": cost_weight},
                                 timeout=10).json()["probabilities"]
                mine = replay.route(Request(prompt=prompt, cost_weight=cost_weight))
                worst = max(worst, *(abs(got[m] - p) for m, p in zip(mine.models, mine.pmf, strict=True)))
    report["learned rows / replay's policy version"] = (sum(1 for r in rows if r[2]), replay.version)
    report["largest |pmf(replica) - pmf(replay)|"] = worst
    return report


def _caught_up(urls: list[str]) -> bool:
    stats = [httpx.get(u + "/v1/stats", timeout=10).json() for u in urls]
    return len({s["feedback_seq"] for s in stats}) == 1 and all(s["applied_seq"] == s["feedback_seq"] for s in stats)
