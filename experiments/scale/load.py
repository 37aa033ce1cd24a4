"""Route → feedback load on a running service from many tenants, with a probe of the read endpoints every 15 s.

usage, from the repository root: `.venv/bin/python experiments/scale/load.py BASE SECONDS CONNECTIONS TENANTS [PID]`
(e.g. `http://127.0.0.1:8765 60 16 2000`; PID: the server's, whose resident memory each probe reports). Each
connection routes a prompt for a random tenant and sends feedback for 80 % of the decisions; the probe prints, per
read endpoint, (status, bytes, ms) as a JSON line; at the end: routes, routes a second, p50, p99 and max latency,
the statuses and the most frequent errors. Unseeded timings: say the load average (`uptime`) with any figure.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import time

import httpx

PROBED = ("/v1/stats", "/v1/stats/live", "/v1/stats/recent", "/v1/stats/timeseries?range=hour", "/v1/budgets",
          "/metrics", "/v1/models")


def rss_mb(pid: int | None) -> int:
    if pid is None:
        return 0
    with open(f"/proc/{pid}/status") as status:
        return next((int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS")), 0)


async def worker(client: httpx.AsyncClient, base: str, stop: float, tenants: int, rng: random.Random,
                 latencies: list[float], counts: collections.Counter[str]) -> None:
    while time.time() < stop:
        body = {"prompt": f"question {rng.randrange(10**6)} about {rng.choice(['code', 'math', 'prose'])} " * 5,
                "context": {"tenant": f"t{rng.randrange(tenants):04d}", "task": rng.choice("abcd")}}
        started = time.perf_counter()
        try:
            reply = await client.post(base + "/v1/route", json=body)
        except httpx.HTTPError as exc:
            counts[type(exc).__name__] += 1
            continue
        latencies.append(time.perf_counter() - started)
        counts[f"route {reply.status_code}"] += 1
        if reply.status_code == 200 and rng.random() < 0.8:
            feedback = {"decision_id": reply.json()["decision_id"], "quality": rng.random(), "input_tokens": 500,
                        "output_tokens": rng.randrange(50, 500), "latency_ms": rng.randrange(100, 3000)}
            counts[f"feedback {(await client.post(base + '/v1/feedback', json=feedback)).status_code}"] += 1


async def probe(client: httpx.AsyncClient, base: str, stop: float, pid: int | None) -> None:
    while time.time() < stop:
        row: dict[str, object] = {"t": round(time.time()), "rss_mb": rss_mb(pid)}
        for path in PROBED:
            started = time.perf_counter()
            reply = await client.get(base + path)
            row[path] = (reply.status_code, len(reply.content), round((time.perf_counter() - started) * 1000))
        print(json.dumps(row), flush=True)
        await asyncio.sleep(15)


async def main() -> None:
    parser = argparse.ArgumentParser(description="route → feedback load on a running service from many tenants, "
                                     "with a probe of the read endpoints every 15 s")
    parser.add_argument("base", help="the service's URL, e.g. http://127.0.0.1:8765")
    parser.add_argument("seconds", type=float, help="how long the load runs")
    parser.add_argument("connections", type=int, help="concurrent connections")
    parser.add_argument("tenants", type=int, help="distinct tenant values")
    parser.add_argument("pid", type=int, nargs="?", help="the server's pid, whose resident memory each probe reports")
    args = parser.parse_args()
    base, seconds, connections, tenants, pid = args.base, args.seconds, args.connections, args.tenants, args.pid
    latencies: list[float] = []
    counts: collections.Counter[str] = collections.Counter()
    stop = time.time() + seconds
    limits = httpx.Limits(max_connections=connections + 4)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(probe(client, base, stop, pid), *(
            worker(client, base, stop, tenants, random.Random(i), latencies, counts) for i in range(connections)))
    latencies.sort()
    n = len(latencies)
    if n:
        print(f"routes {n}, {n / seconds:.1f}/s, p50 {latencies[n // 2] * 1000:.1f} ms, "
              f"p99 {latencies[int(n * 0.99)] * 1000:.1f} ms, max {latencies[-1] * 1000:.0f} ms")
    print(dict(counts))


if __name__ == "__main__":
    asyncio.run(main())
