"""A real `bandit-router serve` with traffic flowing, for the dashboard's browser test and its screenshot.

    python -m tools.dashboard_demo --out docs/service/img/dashboard.png      # the screenshot in the docs

What it does: writes an hour of seeded history through the library (a `Router` and the `SQLiteStore`: the same
rows the service writes, with the decisions' times spread over the past hour), starts `bandit-router serve` on a
free 127.0.0.1 port over that database (it replays the log at start), then sends live seeded route → feedback
traffic over HTTP from two tenants while headless Chromium (Debian's `chromium`, driven by Playwright) opens
`/dashboard`. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bandit_router.config import Settings
from bandit_router.log import PolicySet, feedback_record
from bandit_router.store import FeedbackStatus, SQLiteStore
from bandit_router.types import Outcome, Request
from tools.loopback import loopback

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking"]
MODELS = ["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"]
SHADOW = "linucb"
PROMPTS = {
    "code": ["Fix this Python function: def mean(xs): return sum(xs) / len(x)",
             "Write a SQL query joining orders and customers, grouped by month",
             "Explain the segfault in this C code: char *p = NULL; strcpy(p, buf);"],
    "chat": ["Write a short poem about the sea at dawn", "Suggest a name for a bakery in Lyon",
             "Summarise the plot of Hamlet in three sentences"],
}
QUALITY = {  # mean quality per (kind, model): the cheap model is good at chat, the frontier one at code
    "code": {"gpt-4o-mini": 0.55, "claude-haiku-4-5": 0.6, "gpt-4o": 0.85},
    "chat": {"gpt-4o-mini": 0.8, "claude-haiku-4-5": 0.75, "gpt-4o": 0.82},
}
ENV = {
    "BANDIT_ROUTER_SHADOW_POLICIES": f'["{SHADOW}"]',
    "BANDIT_ROUTER_BUDGETS": '{"avg_cost_usd": 0.002, "tenants": {"acme": {"spend_usd": "2000/1d"}, '
                             '"globex": {"share": {"gpt-4o": 0.3}}}}',
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chromium_available() -> bool:
    return Path(CHROMIUM).exists()


def _quality(kind: str, model: str, rng: np.random.Generator) -> float:
    return float(np.clip(QUALITY[kind].get(model, 0.6) + rng.normal(0, 0.1), 0, 1))


def _request(i: int, rng: np.random.Generator) -> tuple[str, dict[str, Any], str]:
    kind = "code" if rng.random() < 0.5 else "chat"
    prompt = PROMPTS[kind][int(rng.integers(len(PROMPTS[kind])))] + f" (#{i})"
    tenant = "acme" if rng.random() < 0.6 else "globex"
    return prompt, {"tenant": tenant, "task": kind}, kind


def write_history(db: Path, *, n: int = 3000, minutes: float = 60.0, seed: int = 0) -> None:
    """`n` decisions over the past `minutes`, 85% with feedback a few seconds to minutes later, learned in order,
    written with the store's bulk insert path (the rollup included)."""
    settings = Settings(db=db, seed=seed, shadow_policies=(SHADOW,))
    policies = PolicySet(settings, seed=seed)
    router = policies.live
    rng = np.random.default_rng(seed)
    store = SQLiteStore(db)
    store.prepare()
    start = time.time() - minutes * 60
    times = np.sort(rng.uniform(start, time.time() - 90, n))
    decisions, records = [], []
    for i, t in enumerate(times):
        prompt, context, kind = _request(i, rng)
        d = router.route(Request(prompt=prompt, context=context, models=tuple(MODELS)))
        d = dataclasses.replace(d, created_at=float(t))
        decisions.append((d, None, context["tenant"]))
        if rng.random() < 0.85:
            outcome = Outcome(quality=_quality(kind, d.model, rng), input_tokens=40, output_tokens=200)
            received = float(t + rng.exponential(20.0))
            records.append(feedback_record(router, d, context["tenant"], outcome, received_at=received,
                                           source="demo", status=FeedbackStatus.APPLIED))
            policies.learn(d, outcome, len(records))
    with store.write() as tx:
        tx.insert_decisions(decisions)
        tx.insert_feedback([dataclasses.replace(r, seq=i + 1) for i, r in enumerate(records)])
    store.close()


class Server:
    """`bandit-router serve` in its own process group on a free port; `stop()` kills the group."""

    def __init__(self, folder: Path, db: Path, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.folder, self.db, self.env = folder, db, env
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        script = Path(sys.executable).with_name("bandit-router")
        serve = [str(script)] if script.exists() else [sys.executable, "-m", "bandit_router.cli"]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BANDIT_ROUTER_")}
        full = {**clean, **ENV, "BANDIT_ROUTER_SEED": "1", "BANDIT_ROUTER_LOG_LEVEL": "warning", **(env or {})}
        self.log_path = folder / f"server-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*serve, "serve", "--port", str(self.port), "--db", str(db)], cwd=folder, env=full, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if loopback.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("the server did not become ready")

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self._log.close()

    def again(self) -> Server:
        """Another server on this one's port, database and environment (after `stop()`: a restart)."""
        return Server(self.folder, self.db, self.env, port=self.port)


class Traffic:
    """Seeded route → feedback rounds over HTTP in a thread, about `rate` a second, bounded by `limit` rounds;
    `stop()` ends it. `sent` counts the decisions."""

    def __init__(self, url: str, *, key: str | None = None, rate: float = 40.0, limit: int = 20_000,
                 seed: int = 7) -> None:
        self.url, self.key, self.rate, self.limit, self.seed = url, key, rate, limit, seed
        self.sent = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-traffic", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def burst(self, n: int) -> None:
        """`n` rounds now, on the caller's thread."""
        with self._client() as client:
            rng = np.random.default_rng(self.seed + 1000 + self.sent)
            for _ in range(n):
                self._round(client, rng)

    def _client(self) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.key}"} if self.key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def _round(self, client: httpx.Client, rng: np.random.Generator) -> None:
        prompt, context, kind = _request(self.sent, rng)
        reply = client.post("/v1/route", json={"prompt": prompt, "context": context, "models": MODELS})
        if reply.status_code != 200:
            self.errors.append(reply.text)
            return
        decision = reply.json()
        self.sent += 1
        if rng.random() < 0.85:
            quality = _quality(kind, decision["model"], rng)
            client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": quality,
                                              "input_tokens": 40, "output_tokens": 200})

    def _run(self) -> None:
        rng = np.random.default_rng(self.seed)
        with self._client() as client:
            while not self._stop.is_set() and self.sent < self.limit:
                started = time.monotonic()
                self._round(client, rng)
                self._stop.wait(max(0.0, 1.0 / self.rate - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@contextlib.contextmanager
def running(folder: Path, *, env: dict[str, str] | None = None, history: int = 3000) -> Iterator[Server]:
    """A ready server over a database with `history` decisions of the past hour."""
    folder = folder.resolve()  # the server runs in `folder`: a relative path would name another file there
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "dashboard.db"
    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)  # a fresh database each run
    if history:
        write_history(db, n=history)
    server = Server(folder, db, env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def wait_until(page: Any, predicate: str, timeout: float = 60.0) -> Any:
    """Poll `predicate` (a JavaScript function's source) in `page` until it returns a truthy value. Not
    `page.wait_for_function`: that evaluates strings with `eval`, which the dashboard's CSP forbids."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout} s: {predicate}")
        time.sleep(0.1)


def screenshot(out: Path, folder: Path, *, width: int = 1400, height: int = 2000) -> None:
    """The docs' screenshot: history, then 20 s of live traffic, then the page at `width` × `height`."""
    from playwright.sync_api import sync_playwright

    with running(folder) as server:
        traffic = Traffic(server.url, rate=30).start()
        try:
            time.sleep(20)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(server.url + "/dashboard")
                wait_until(page, "() => window.banditDashboard && window.banditDashboard.renders >= 2 && "
                           "document.querySelector('[data-panel=shadows]').dataset.ready === '1'")
                time.sleep(2.5)
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out), full_page=True)
                browser.close()
        finally:
            traffic.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/service/img/dashboard.png",
                        help="the screenshot (default: %(default)s, the docs' image: give another path to try it)")
    parser.add_argument("--folder", default="tmp/artifacts/dashboard-demo", help="database and server log")
    args = parser.parse_args(argv)
    screenshot(Path(args.out), Path(args.folder))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
