"""Drill 1: the upstream misbehaves in every way a provider does (slow, hanging, cutting the connection, 5xx, 429
with Retry-After, malformed JSON, a 200 that is not a chat completion, trickling bytes, stalling halfway, sending
only keep-alive blanks), for every kind of client: the bandit's `router` (streamed and not), a named catalog model,
a judge cascade (streamed and not), a log-prob cascade, a learned cascade, an LLM router. Per fault and client:
the status, the time, the error's code, and what was stored; afterwards, what the gateway still holds."""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gwdrills import Gateway, Upstream, short, show, wait

TIMEOUT_S, DEADLINE_S = 2.0, 6.0
ROUTABLE = ("fake-small", "fake-coder", "fake-writer")
FAULTS: list[tuple[str, float]] = [
    ("ok", 0.0), ("slow", 1.0), ("slow", 3.0), ("hang", 0.0), ("fail", 0.0), ("ratelimit", 7.0), ("cut", 0.0),
    ("malformed", 0.0), ("offshape", 0.0), ("garbage", 0.0), ("trickle", 0.4), ("stall", 0.0), ("keepalive", 0.5),
]
SCOPES = {"every routable model": ROUTABLE, "fake-small only": ("fake-small",),
          "the judge (and routing LLM) only": ("fake-judge",)}
CLIENTS: list[tuple[str, bool]] = [
    ("router", False), ("router", True), ("fake-coder", False), ("fake-coder", True), ("cascade", False),
    ("cascade", True), ("cascade-logprob", False), ("learned", False), ("auto", False),
]


def one(gateway: Gateway, model: str, stream: bool) -> dict[str, Any]:
    status, headers, text, seconds = gateway.chat(model, stream=stream)
    out: dict[str, Any] = {"status": status, "s": round(seconds, 2),
                           "attempts": headers.get("x-bandit-router-attempts")}
    if status != 200:
        try:
            error = json.loads(text)["error"]
            out["error"] = f"{error.get('code')}: {short(error.get('message', ''), 140)}"
        except (ValueError, KeyError, TypeError):
            out["error"] = short(text, 140)
        out["retry-after"] = headers.get("retry-after")
    elif stream:
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        errors = [e for e in events if e.startswith('{"error"')]
        out["events"] = len(events)
        out["ends with [DONE]"] = bool(events) and events[-1] == "[DONE]"
        if errors:
            out["error event"] = short(errors[0], 140)
    decision = headers.get("x-decision-id")
    if decision:  # a routed call's record is written off the reply path: wait for it (a chain's is already there)
        with contextlib.suppress(RuntimeError):  # none within 5 s: shown as stored, nothing
            wait(lambda: gateway.record(decision)["calls"], 5, "")
        out["stored"] = gateway.record(decision)
    return out


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="gw-drill1-"))
    upstream = Upstream(folder)
    gateway = Gateway(folder, upstream, timeout=TIMEOUT_S, deadline=DEADLINE_S)
    try:
        gateway.wait_ready()
        show("settings", {"upstream_timeout_s": TIMEOUT_S, "deadline_s": DEADLINE_S, "max_attempts": 3})
        baseline = gateway.held(upstream)
        show("held at start", baseline)
        for mode, delay in FAULTS:
            for scope in SCOPES if mode != "ok" else ("none",):
                upstream.reset()
                for model in SCOPES.get(scope, ()):
                    upstream.set(model, mode, delay)
                print(f"\n== {mode}{f' {delay:g} s' if delay else ''}, {scope}", flush=True)
                started, since = time.monotonic(), time.time()
                with ThreadPoolExecutor(len(CLIENTS)) as pool:
                    results = list(pool.map(lambda c: one(gateway, *c), CLIENTS))
                for (model, stream), result in zip(CLIENTS, results, strict=True):
                    show(f"  {model}{' stream' if stream else ''}", result)
                upstream.reset()  # a stalled or hanging reply is let go, as a provider's would be eventually
                time.sleep(0.5)
                show("  upstream afterwards", upstream.stats() | {"wall s": round(time.monotonic() - started, 1)})
                show("  gateway holds", gateway.held(upstream))
                show("  stored since", {
                    "call records by status": dict(gateway.rows(
                        "SELECT status, count(*) FROM calls WHERE created_at >= ? GROUP BY status", since)),
                    "feedback by source": dict(gateway.rows(
                        "SELECT source, count(*) FROM feedback WHERE received_at >= ? GROUP BY source", since))})
        print("\n== the upstream's process killed (connections refused), then started again on its port", flush=True)
        port = upstream.port
        upstream.stop()
        with ThreadPoolExecutor(len(CLIENTS)) as pool:
            results = list(pool.map(lambda c: one(gateway, *c), CLIENTS))
        for (model, stream), result in zip(CLIENTS, results, strict=True):
            show(f"  {model}{' stream' if stream else ''}", result)
        upstream = Upstream(folder, port)
        with ThreadPoolExecutor(len(CLIENTS)) as pool:
            results = list(pool.map(lambda c: one(gateway, *c), CLIENTS))
        show("  right after the restart", [r["status"] for r in results])
        show("  gateway holds", gateway.held(upstream))
        show("\nservice problems (log)", gateway.problems()[:10])
    finally:
        gateway.stop()
        upstream.stop()


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
