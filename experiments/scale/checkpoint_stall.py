"""Route latency around checkpoint saves at 100 models, old code and new in turn (A/B in the same minutes).

A deployment (`make_deployment.py`), checkpoints every `--interval` learned feedbacks, all kept (so each save's
time is in the table), route → feedback load for `--seconds` from `--connections` connections, served by the code
of each `--code` tree in turn (`PYTHONPATH`; default: this repository), `--rounds` times. Per run: route p50, p99
and max, and the slowest route in flight during the second before each checkpoint's row was stored (a save held
every route then: the row's commit ended it; a save in parts is written during that second). Unseeded timings on a
shared machine: the load average is printed with each run. usage, from the repository root: `.venv/bin/python
experiments/scale/checkpoint_stall.py --code /path/to/old/checkout --code . --rounds 2`."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def q(values: list[float], f: float) -> float:
    return values[min(len(values) - 1, int(len(values) * f))] * 1000 if values else float("nan")


async def drive(base: str, seconds: float, connections: int) -> list[tuple[float, float]]:
    spans: list[tuple[float, float]] = []
    stop = time.time() + seconds

    async def one(rng: random.Random, client: httpx.AsyncClient) -> None:
        while time.time() < stop:
            body = {"prompt": f"question {rng.randrange(10**6)} about {rng.choice(['code', 'math', 'prose'])} " * 5,
                    "context": {"tenant": f"t{rng.randrange(1000):04d}", "task": rng.choice("abcd")}}
            t0 = time.time()
            reply = await client.post(base + "/v1/route", json=body)
            spans.append((t0, time.time()))
            if reply.status_code == 200 and rng.random() < 0.8:
                await client.post(base + "/v1/feedback", json={
                    "decision_id": reply.json()["decision_id"], "quality": rng.random(), "input_tokens": 500,
                    "output_tokens": rng.randrange(50, 500), "latency_ms": 500})

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=connections + 4)) as client:
        await asyncio.gather(*(one(random.Random(i), client) for i in range(connections)))
    return spans


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--code", action="append", help="a checkout whose bandit_router serves (repeat: A/B)")
    p.add_argument("--rounds", type=int, default=1, help="runs of each --code, in turn")
    p.add_argument("--models", type=int, default=100)
    p.add_argument("--seconds", type=float, default=40)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--interval", type=int, default=1000, help="checkpoint_interval")
    p.add_argument("--out", default="/tmp/scale-ckpt/deploy")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--upstream-port", type=int, default=9311)
    p.add_argument("--postgres", help="a PostgreSQL URL to use instead of the SQLite file")
    args = p.parse_args()
    for _ in range(args.rounds):
        for code in args.code or [str(ROOT)]:
            run(args, Path(code).resolve())


def run(args: argparse.Namespace, code: Path) -> None:
    out = Path(args.out)
    py = str(ROOT / ".venv/bin/python")
    subprocess.run([py, str(ROOT / "experiments/scale/make_deployment.py"), str(args.models), "1000", "30", str(out),
                    str(args.upstream_port)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    cfg = out / "bandit-router.toml"
    text = cfg.read_text().replace("port = 8765", f"port = {args.port}")
    db = out / "router.db"
    for f in out.glob("router.db*"):
        f.unlink()
    if args.postgres:
        text = text.replace(f'db = "{db}"', f'db = "{args.postgres}"')
    cfg.write_text(text + f"\n[storage]\ncheckpoint_interval = {args.interval}\ncheckpoints_kept = 1000\n")
    env = {**os.environ, "FAKE_KEY": "x", "PYTHONPATH": str(code)}
    up = subprocess.Popen([py, "-m", "benchmarks.fake_upstream", "--port", str(args.upstream_port)], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with (out / "serve.log").open("w") as log:
        srv = subprocess.Popen([py, "-m", "bandit_router", "serve", "--config", str(cfg)], cwd=out, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{args.port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(base + "/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            print(f"server pid {srv.pid}, code {code}", flush=True)
            load = os.getloadavg()
            spans = asyncio.run(drive(base, args.seconds, args.connections))
        finally:
            srv.terminate()
            srv.wait(30)
            up.terminate()
            up.wait(10)
    if args.postgres:
        import psycopg
        with psycopg.connect(args.postgres) as conn:
            rows = conn.execute("SELECT created_at FROM checkpoints ORDER BY id").fetchall()
    else:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT created_at FROM checkpoints ORDER BY id").fetchall()
    marks = [r[0] for r in rows[:-1]]  # the last: the clean stop's
    lat = sorted(e - s for s, e in spans)
    worst = [max((e - s for s, e in spans if s <= m and e >= m - 1.0), default=0.0) * 1000 for m in marks]
    print(f"  load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {len(marks)} checkpoints during the "
          f"load; routes {len(lat)} ({len(lat) / args.seconds:.0f}/s): p50 {q(lat, .5):.1f} p99 {q(lat, .99):.1f} "
          f"max {q(lat, 1):.0f} ms", flush=True)
    slowest = sorted(spans, key=lambda span: span[0] - span[1])[:5]
    print("  the 5 slowest routes (ms, and s from their start to the next checkpoint's row): " + ", ".join(
        f"{(e - s) * 1000:.0f} ({min((m - s for m in marks if m >= s), default=float('nan')):.1f})"
        for s, e in slowest), flush=True)
    print(f"  slowest route in flight in the second before each checkpoint's row: "
          f"{' '.join(f'{w:.0f}' for w in worst)} ms (median {sorted(worst)[len(worst) // 2] if worst else 0:.0f})",
          flush=True)


if __name__ == "__main__":
    main()
