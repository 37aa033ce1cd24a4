"""Drill 4: SIGTERM once every request is in flight at the upstream (`bandit-router serve` waits up to 10 s for
them, then cancels what is left). (a) Requests that end within those 10 s: routed calls (streamed and not), cascades, a
named model's stream. (b) Requests that would outlast them: a 16 s stream, a model that never answers (named and
routed), a cascade whose second model never answers. Per request: what its caller got; then the database
(decisions, call records, named routers' counts), the restart on the same database, and feedback for every
decision a caller was told about."""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from gwdrills import MESSAGES, Gateway, Upstream, show, wait


def request(gateway: Gateway, model: str, stream: bool, models: list[str] | None, out: list[dict[str, Any]]) -> None:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "stream": stream}
    if models is not None:
        body["bandit_router"] = {"models": models}
    result: dict[str, Any] = {"model": model, "stream": stream}
    started = time.monotonic()
    try:
        with httpx.Client(timeout=60) as client, client.stream(
                "POST", gateway.url + "/v1/chat/completions", json=body) as reply:
            result["status"] = reply.status_code
            result["decision"] = reply.headers.get("x-decision-id")
            text = "".join(reply.iter_text())
            if stream and reply.status_code == 200:
                events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
                result["ending"] = events[-1][:90] if events else "(no event)"
            elif reply.status_code != 200:
                result["ending"] = text[:160]
            else:
                result["ending"] = "a chat completion"
    except httpx.HTTPError as exc:
        result["status"] = type(exc).__name__
    result["s"] = round(time.monotonic() - started, 2)
    out.append(result)


def phase(title: str, folder: Path, upstream: Upstream, modes: dict[str, tuple[str, float]],
          requests: list[tuple[str, bool, list[str] | None]]) -> None:
    print(f"\n== {title}", flush=True)
    gateway = Gateway(folder, upstream, timeout=20.0, deadline=30.0, name=f"gateway-{len(list(folder.iterdir()))}")
    try:
        gateway.wait_ready()
        upstream.reset()
        for model, (mode, delay) in modes.items():
            upstream.set(model, mode, delay)
        since = time.time()
        results: list[dict[str, Any]] = []
        threads = [threading.Thread(target=request, args=(gateway, *r, results)) for r in requests]
        for thread in threads:
            thread.start()
        wait(lambda: upstream.stats()["active"] >= len(requests), 30, "the requests did not all reach the upstream")
        signalled = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        code = gateway.process.wait(60)
        show("  exit", {"code": code, "s after SIGTERM": round(time.monotonic() - signalled, 2)})
        for thread in threads:
            thread.join(60)
        for result in sorted(results, key=lambda r: (r["model"], r["stream"])):
            shown = {k: v for k, v in result.items() if k != "decision"}
            show("  caller", shown)
        upstream.reset()
        stored = {
            "decisions by policy": dict(gateway.rows(
                "SELECT policy, count(*) FROM decisions WHERE created_at >= ? GROUP BY policy", since)),
            "decisions without a call record": gateway.rows(
                "SELECT count(*) FROM decisions d LEFT JOIN calls c ON c.decision_id = d.decision_id "
                "WHERE d.created_at >= ? AND c.decision_id IS NULL", since)[0][0],
            "call records by status": dict(gateway.rows(
                "SELECT status, count(*) FROM calls WHERE created_at >= ? GROUP BY status", since)),
            "named routers' requests (router_stats)": dict(gateway.rows(
                "SELECT router, sum(requests) FROM router_stats GROUP BY router")),
            "feedback by source": dict(gateway.rows(
                "SELECT source, count(*) FROM feedback WHERE received_at >= ? GROUP BY source", since)),
        }
        show("  stored", stored)
        lines = gateway.logpath.read_text(errors="replace").splitlines()
        show("  shutdown log", [line[:200] for line in lines if "shutdown" in line.lower() or "cancel" in line.lower()
                                or "ERROR" in line or "Traceback" in line][:8])
        told = [r["decision"] for r in results if r.get("decision")]
        again = Gateway(folder, upstream, timeout=20.0, deadline=30.0, name="restarted")
        try:
            show("  restart ready after (s)", round(again.wait_ready(), 2))
            answers: Counter[str] = Counter()
            for decision in told:
                reply = httpx.post(again.url + "/v1/feedback", json={"decision_id": decision, "quality": 0.8},
                                   timeout=10)
                answers[f"{reply.status_code} {reply.json().get('status', reply.json().get('error'))}"] += 1
            show("  feedback for the decisions callers were told about", dict(answers))
        finally:
            again.stop()
    finally:
        gateway.stop()


def main() -> None:
    upstream_folder = Path(tempfile.mkdtemp(prefix="gw-drill4-up-"))
    upstream = Upstream(upstream_folder)
    try:
        quick = [("router", False, ["fake-small", "fake-coder"])] * 4 + \
            [("router", True, ["fake-small", "fake-coder"])] * 4 + [("cascade", False, None)] * 2 + \
            [("learned", True, None)] * 2 + [("fake-writer", True, None)] * 2
        phase("(a) in flight, each ending within the 10 s grace (upstream 3 s, 5 s streams)",
              Path(tempfile.mkdtemp(prefix="gw-drill4a-")), upstream,
              {"fake-small": ("slow", 3.0), "fake-coder": ("slow", 3.0), "fake-writer": ("trickle", 0.15)},
              quick)
        slow = [("fake-writer", True, None)] * 2 + [("fake-coder", False, None)] * 2 + \
            [("router", False, ["fake-coder"])] * 2 + [("cascade", False, None)] * 2 + \
            [("router", True, ["fake-writer"])] * 2
        phase("(b) in flight, outlasting the 10 s grace (16 s streams, a model that never answers)",
              Path(tempfile.mkdtemp(prefix="gw-drill4b-")), upstream,
              {"fake-writer": ("trickle", 0.5), "fake-coder": ("hang", 0.0), "fake-small": ("slow", 1.0)},
              slow)
    finally:
        upstream.stop()


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
