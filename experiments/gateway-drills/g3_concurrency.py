"""Drill 3: many callers at once. (a) Two models answer after 3 s for 150 concurrent callers while a third model
is healthy: do the healthy model's callers, `/healthz` and `/v1/route` wait behind the slow ones? (b) One model
limited to `max_concurrency` 8 and answering after 1 s, for 60 and then 120 concurrent callers: never more than
8 calls at the upstream, the rest waiting for a slot within `deadline_s` (10 s), then 504. (c) 3,000 streamed
requests, 48 at a time: resident memory, file descriptors and connections before, during and after."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from gwdrills import MESSAGES, Gateway, Upstream, show


class Sampler:
    """What the gateway holds, every 0.2 s, while a load runs: the largest of each."""

    def __init__(self, gateway: Gateway, upstream: Upstream) -> None:
        self.gateway, self.upstream = gateway, upstream
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in self.gateway.held(self.upstream).items():
                self.peak[key] = max(self.peak.get(key, 0), value)
            time.sleep(0.2)


def post(client: httpx.Client, gateway: Gateway, model: str, *, stream: bool = False,
         models: list[str] | None = None) -> tuple[str, float]:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "stream": stream}
    if models is not None:
        body["bandit_router"] = {"models": models}
    started = time.monotonic()
    try:
        reply = client.post(gateway.url + "/v1/chat/completions", json=body)
    except httpx.HTTPError as exc:
        return type(exc).__name__, time.monotonic() - started
    outcome = str(reply.status_code)
    if reply.status_code >= 400:
        outcome += " " + str(reply.json()["error"].get("code"))
    elif stream and not reply.text.rstrip().endswith("[DONE]"):
        outcome += " without [DONE]"
    return outcome, time.monotonic() - started


def crowd(gateway: Gateway, n: int, threads: int, model: str, **options: Any) -> tuple[Counter[str], list[float]]:
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=threads)) as client, \
            ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda _: post(client, gateway, model, **options), range(n)))
    return Counter(r for r, _ in results), [s for _, s in results]


def spread(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"n": len(ordered), "median s": round(statistics.median(ordered), 3),
            "p95 s": round(ordered[int(0.95 * (len(ordered) - 1))], 3), "max s": round(ordered[-1], 3)}


def probe(gateway: Gateway, stop: threading.Event, out: dict[str, list[float]]) -> None:
    """While the slow crowd waits: the healthy model, `/healthz`, `/v1/route`, one after another."""
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            for name, call in (
                ("healthy model (fake-writer)", lambda: client.post(
                    gateway.url + "/v1/chat/completions", json={"model": "fake-writer", "messages": MESSAGES})),
                ("/healthz", lambda: client.get(gateway.url + "/healthz")),
                ("/v1/route", lambda: client.post(gateway.url + "/v1/route", json={"prompt": "hello"})),
            ):
                started = time.monotonic()
                reply = call()
                assert reply.status_code == 200, reply.text
                out.setdefault(name, []).append(time.monotonic() - started)
            time.sleep(0.05)


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="gw-drill3-"))
    upstream = Upstream(folder)
    gateway = Gateway(folder, upstream, timeout=5.0, deadline=10.0)
    try:
        gateway.wait_ready()
        show("settings", {"upstream_timeout_s": 5.0, "deadline_s": 10.0, "upstream_max_concurrency": 64})
        show("held at start", gateway.held(upstream))

        print("\n== (a) 150 callers on two models answering after 3 s; a healthy third model meanwhile", flush=True)
        upstream.set("fake-small", "slow", 3.0)
        upstream.set("fake-coder", "slow", 3.0)
        probes: dict[str, list[float]] = {}
        stop = threading.Event()
        prober = threading.Thread(target=probe, args=(gateway, stop, probes), daemon=True)
        baseline: dict[str, list[float]] = {}
        idle = threading.Event()
        quiet = threading.Thread(target=probe, args=(gateway, idle, baseline), daemon=True)
        quiet.start()
        time.sleep(3)
        idle.set()
        quiet.join(10)
        with Sampler(gateway, upstream) as sampler:
            prober.start()
            outcomes, seconds = crowd(gateway, 150, 150, "router", models=["fake-small", "fake-coder"])
            stop.set()
            prober.join(30)
        show("  slow crowd", {"outcomes": dict(outcomes), **spread(seconds)})
        for name in baseline:
            show(f"  {name}", {"idle": spread(baseline[name]), "during the crowd": spread(probes[name])})
        show("  upstream peak calls at once", upstream.stats()["peak"])
        show("  gateway peak", sampler.peak)
        upstream.reset()

        gateway.stop()
        folder_b = Path(tempfile.mkdtemp(prefix="gw-drill3b-"))
        gateway = Gateway(folder_b, upstream, timeout=5.0, deadline=10.0, concurrency=8)
        gateway.wait_ready()
        upstream.set("fake-coder", "slow", 1.0)
        upstream.stats()  # resets the peak
        for n in (60, 120):
            print(f"\n== (b) {n} callers on fake-coder (max_concurrency 8, answers after 1 s, deadline_s 10)",
                  flush=True)
            with Sampler(gateway, upstream) as sampler:
                outcomes, seconds = crowd(gateway, n, n, "fake-coder")
            show("  outcomes", {"outcomes": dict(outcomes), **spread(seconds)})
            show("  upstream peak calls at once", upstream.stats()["peak"])
            show("  gateway peak", sampler.peak)
            show("  stored call records", dict(gateway.rows("SELECT status, count(*) FROM calls GROUP BY status")))
        upstream.reset()

        print("\n== (c) 3,000 streamed requests, 48 at a time (chunks 10 ms apart)", flush=True)
        for model in ("fake-small", "fake-coder", "fake-writer"):
            upstream.set(model, "trickle", 0.01)
        crowd(gateway, 200, 48, "router", stream=True)  # warm: pools, caches, the allocator
        before = gateway.held(upstream)
        rss = []
        with Sampler(gateway, upstream) as sampler:
            totals: Counter[str] = Counter()
            for _ in range(5):
                outcomes, seconds = crowd(gateway, 600, 48, "router", stream=True)
                totals.update(outcomes)
                rss.append(gateway.held(upstream)["rss KiB"])
        show("  outcomes", dict(totals))
        show("  held before (after 200 warm-up requests)", before)
        show("  resident KiB after each 600", rss)
        show("  gateway peak", sampler.peak)
        show("  held 6 s later", gateway.held_when_idle(upstream))
        show("service problems (log)", gateway.problems()[:10])
    finally:
        gateway.stop()
        upstream.stop()


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
