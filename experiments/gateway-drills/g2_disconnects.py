"""Drill 2: callers that leave. A streaming caller that closes the connection mid-stream, or before the first
chunk; a non-streamed caller that gives up while the upstream is still answering; a caller that leaves while a
cascade buffers its answer (streamed and not). Per case: what was stored (the call record's status, feedback),
whether the upstream call was let go (the fake sees its caller leave) or ran to its end (paid), and whether the
gateway is back to what it held before (file descriptors, connections to the upstream, calls in flight) after
many such callers."""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from gwdrills import MESSAGES, Gateway, Upstream, show, wait

ROUTABLE = ("fake-small", "fake-coder", "fake-writer")


def stream_and_leave(gateway: Gateway, model: str, after_events: int, timeout: float = 30.0) -> dict[str, Any]:
    """Read `after_events` SSE events (0: only the headers), then close the connection."""
    body = {"model": model, "messages": MESSAGES, "stream": True}
    with httpx.Client(timeout=timeout) as client, client.stream("POST", gateway.url + "/v1/chat/completions",
                                                                 json=body) as reply:
        decision = reply.headers.get("x-decision-id")
        seen = 0
        if after_events:
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    seen += 1
                    if seen >= after_events:
                        break
    return {"status": reply.status_code, "decision": decision, "events read": seen}


def give_up(gateway: Gateway, model: str, after_s: float, stream: bool = False) -> dict[str, Any]:
    """Send a request and close the connection after `after_s` seconds without an answer."""
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    try:
        reply = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=after_s)
        return {"status": reply.status_code}
    except httpx.TimeoutException:
        return {"status": "left"}


def since(gateway: Gateway, t0: float) -> dict[str, Any]:
    return {"decisions": dict(gateway.rows("SELECT policy, count(*) FROM decisions WHERE created_at >= ? "
                                           "GROUP BY policy", t0)),
            "call records": dict(gateway.rows("SELECT status, count(*) FROM calls WHERE created_at >= ? "
                                              "GROUP BY status", t0)),
            "feedback": dict(gateway.rows("SELECT source, count(*) FROM feedback WHERE received_at >= ? "
                                          "GROUP BY source", t0))}


def settle(gateway: Gateway, upstream: Upstream) -> None:
    """Wait until nothing is in flight at the upstream (at most 20 s), and a moment for the records."""
    wait(lambda: upstream.stats()["active"] == 0, 20, "calls still in flight at the upstream")
    time.sleep(0.5)


def case(title: str, gateway: Gateway, upstream: Upstream, run: Any, n: int = 1) -> None:
    before = upstream.stats()
    t0 = time.time()
    started = time.monotonic()
    with ThreadPoolExecutor(min(n, 16)) as pool:
        results = list(pool.map(lambda _: run(), range(n)))
    left_at = time.monotonic() - started
    settle(gateway, upstream)
    after = upstream.stats()
    print(f"\n== {title} (x{n})", flush=True)
    show("  clients", results[:2] if n > 2 else results)
    show("  clients took (s)", round(left_at, 2))
    show("  upstream", {k: after[k] - before[k] for k in ("finished", "abandoned")}
         | {"upstream calls": sum(after["calls"].values()) - sum(before["calls"].values())})
    show("  stored", since(gateway, t0))
    show("  gateway holds", gateway.held(upstream))


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="gw-drill2-"))
    upstream = Upstream(folder)
    gateway = Gateway(folder, upstream, timeout=5.0, deadline=10.0)
    try:
        gateway.wait_ready()
        show("settings", {"upstream_timeout_s": 5.0, "deadline_s": 10.0})
        show("held at start", gateway.held(upstream))
        for model in ROUTABLE:
            upstream.set(model, "trickle", 0.2)  # 33 chunks 0.2 s apart: a 6.6 s stream
        case("router stream, the caller leaves after 5 events", gateway, upstream,
             lambda: stream_and_leave(gateway, "router", 5))
        case("named model stream, the caller leaves after 5 events", gateway, upstream,
             lambda: stream_and_leave(gateway, "fake-coder", 5))
        for model in ROUTABLE:
            upstream.set(model, "slow", 2.0)
        case("router stream, the caller leaves before the first chunk (upstream 2 s)", gateway, upstream,
             lambda: give_up(gateway, "router", 0.5, stream=True))
        case("router, not streamed, the caller leaves after 0.5 s (upstream 2 s)", gateway, upstream,
             lambda: give_up(gateway, "router", 0.5))
        for model in ("fake-small", "fake-coder", "fake-judge"):
            upstream.set(model, "slow", 1.0)
        case("cascade, not streamed, the caller leaves after 0.5 s (each call 1 s)", gateway, upstream,
             lambda: give_up(gateway, "cascade", 0.5))
        case("cascade, streamed, the caller leaves after 0.5 s", gateway, upstream,
             lambda: give_up(gateway, "cascade", 0.5, stream=True))
        case("learned cascade, the caller leaves after 0.5 s", gateway, upstream,
             lambda: give_up(gateway, "learned", 0.5))
        case("llm router, the caller leaves after 0.5 s", gateway, upstream, lambda: give_up(gateway, "auto", 0.5))
        for model in ROUTABLE:
            upstream.set(model, "trickle", 0.05)
        case("200 streaming callers leaving after 3 events, 16 at a time", gateway, upstream,
             lambda: stream_and_leave(gateway, "router", 3), n=200)
        case("200 non-streamed callers leaving after 0.1 s, 16 at a time", gateway, upstream,
             lambda: give_up(gateway, "router", 0.1), n=200)
        show("\nheld at the end, 6 s later (after one more request)", gateway.held_when_idle(upstream))
        show("service problems (log)", gateway.problems()[:10])
    finally:
        gateway.stop()
        upstream.stop()


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
