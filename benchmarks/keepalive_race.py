"""The keep-alive race: clients built on httpx (the OpenAI SDK's too) drop a pooled connection after 5 s idle
(`keepalive_expiry`); a server that closes idle connections after the same 5 s can close one just as such a client
sends a request on it, which the client sees as a connection error (`ReadError`, `RemoteProtocolError`).

For each `timeout_keep_alive_s` given, a `bandit-router serve` on a new database and `--threads` clients (each an
`httpx.Client` with httpx's default limits) that send `--rounds` requests each, every one after an idle time drawn
uniformly from [`--low`, `--high`] seconds; prints the connection errors per setting.

    python -m benchmarks.keepalive_race --keep-alive 5 8 --threads 40 --rounds 40    # about 3.5 minutes
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tools.serve_process import ServeProcess


def clients(url: str, threads: int, rounds: int, low: float, high: float) -> tuple[Counter[str], list[float]]:
    """Run the clients against `url`; the connection errors by kind and the idle times before each."""
    errors: Counter[str] = Counter()
    idles: list[float] = []
    lock = threading.Lock()

    def run(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=10) as client:
            client.get("/healthz")
            for _ in range(rounds):
                idle = rng.uniform(low, high)
                time.sleep(idle)
                try:
                    client.get("/healthz")
                except httpx.TransportError as exc:
                    with lock:
                        errors[type(exc).__name__] += 1
                        idles.append(round(idle, 4))

    workers = [threading.Thread(target=run, args=(seed,)) for seed in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return errors, sorted(idles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-alive", type=float, nargs="+", default=[5.0, 8.0])
    parser.add_argument("--threads", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--low", type=float, default=4.97)
    parser.add_argument("--high", type=float, default=5.03)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="keepalive-"))
    servers = [ServeProcess(folder, [sys.executable, "-m", "bandit_router.cli"], ["--db", f"k{i}.db"],
                            env={"BANDIT_ROUTER_TIMEOUT_KEEP_ALIVE_S": str(seconds)}, log_name=f"k{i}")
               for i, seconds in enumerate(args.keep_alive)]
    try:
        for server in servers:
            server.wait_ready()
        results: dict[float, tuple[Counter[str], list[float]]] = {}
        runs = [threading.Thread(target=lambda s=server, k=seconds: results.__setitem__(
            k, clients(s.url, args.threads, args.rounds, args.low, args.high)))
            for server, seconds in zip(servers, args.keep_alive, strict=True)]
        for run in runs:  # the settings side by side, under the same load of the machine
            run.start()
        for run in runs:
            run.join()
    finally:
        for server in servers:
            server.stop()
    sent = args.threads * args.rounds
    for seconds in args.keep_alive:
        errors, idles = results[seconds]
        print(f"timeout_keep_alive_s={seconds:g}: {sum(errors.values())} connection errors in {sent} requests sent "
              f"after {args.low:g}-{args.high:g} s idle {dict(errors)}; their idle times {idles}")


if __name__ == "__main__":
    main()
