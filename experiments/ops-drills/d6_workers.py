"""Drill 6: `serve --workers 2` as an operator meets it. Real `serve` processes on 127.0.0.1 (`tools/serve_process.py`),
a throwaway PostgreSQL (`tools/pg_server.py`); the code is whatever `bandit_router` the environment imports (run
it with `PYTHONPATH=<a checkout>` to drill another commit's code). In turn:

1. readiness at the start: a SQLite log of 20,000 feedbacks without a checkpoint (each start replays all of it),
   served STARTS times; after the first `/readyz` 200, 20 routes on new connections: how many 503?
2. a worker killed (SIGKILL) while both serve, its replacement replaying that log: routes and `/readyz` on new
   connections for 25 s: how many 503?
3. 8 client threads (route, then feedback, new connections), on SQLite and on PostgreSQL: a worker killed
   mid-stream, then SIGTERM to the server: what clients saw, the exit status, and every acknowledged decision
   and feedback looked up in the database;
4. PostgreSQL stopped while a worker is killed, started again 15 s later: does the server outlive it?
5. (root only: mounts a 12 MiB tmpfs as the metrics folder) a worker killed nine times, each time once both answer:
   does a replacement find room for its metrics files, and does a scrape count every decision?

    PYTHONPATH=$PWD .venv/bin/python experiments/ops-drills/d6_workers.py      # STARTS=5; ~6 min on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg

from tools.loopback import loopback
from tools.pg_server import PgServer
from tools.serve_process import ServeProcess

STARTS = int(os.environ.get("STARTS", "5"))
LOG_FEEDBACKS = 20_000
CLOSE = {"connection": "close"}
SERVE = [sys.executable, "-m", "bandit_router.cli"]


def populate(db: Path, n: int) -> None:
    """`n` decisions with feedback and no checkpoint (checkpoint_interval above n): every start replays them."""
    from bandit_router.config import Settings
    from bandit_router.service.engine import Engine
    from bandit_router.store.location import open_store
    from bandit_router.types import Outcome, Request

    store = open_store(db)
    store.prepare()
    store.close()
    engine = Engine(Settings(db=db, seed=1, checkpoint_interval=10**9))
    engine.start()
    assert engine.wait_ready(60)

    async def run() -> None:
        for start in range(0, n, 200):
            decisions = await asyncio.gather(*(engine.route(Request(prompt=f"question {i} " * 5))
                                               for i in range(start, min(n, start + 200))))
            await asyncio.gather(*(engine.feedback(d.decision_id, Outcome(quality=0.5)) for d in decisions))

    asyncio.run(run())
    engine.stop(checkpoint=False)


def route(url: str) -> int | str:
    try:
        return loopback.post(url + "/v1/route", json={"prompt": "is every worker ready?"}, headers=CLOSE,
                             timeout=10).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def ready_pids(server: ServeProcess, timeout: float = 90.0) -> set[int]:
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(pids) < 2 and time.monotonic() < deadline and server.process.poll() is None:
        try:
            reply = loopback.get(server.url + "/readyz", headers=CLOSE, timeout=5)
            if reply.status_code == 200:
                pids.add(reply.json()["pid"])
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return pids


def worker_pids(server: ServeProcess) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(server.process.pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if "multiprocessing-fork" in Path(f"/proc/{p}/cmdline").read_text()]


def readiness_at_start(template: Path, folder: Path) -> None:
    bad = []
    for run in range(STARTS):
        db = folder / f"start{run}.db"
        shutil.copy(template, db)
        server = ServeProcess(folder, SERVE, ["--db", str(db), "--workers", "2"], log_name=f"start{run}")
        try:
            server.wait_ready(120)
            statuses = [route(server.url) for _ in range(20)]
        finally:
            server.stop()
        bad.append(statuses.count(503))
    print(f"1. readiness at the start ({LOG_FEEDBACKS} feedbacks replayed): 503s among 20 routes after the first "
          f"/readyz 200, per start: {bad}")


def replacement(template: Path, folder: Path) -> None:
    db = folder / "replacement.db"
    shutil.copy(template, db)
    server = ServeProcess(folder, SERVE, ["--db", str(db), "--workers", "2"], log_name="replacement",
                          env={"BANDIT_ROUTER_CHECKPOINT_INTERVAL": str(10**9)})
    try:
        server.wait_ready(120)
        before = ready_pids(server)
        os.kill(min(before), signal.SIGKILL)
        routes: Counter[int | str] = Counter()
        readyz: Counter[int | str] = Counter()
        end = time.monotonic() + 25
        while time.monotonic() < end:
            routes[route(server.url)] += 1
            try:
                readyz[loopback.get(server.url + "/readyz", headers=CLOSE, timeout=5).status_code] += 1
            except httpx.HTTPError as exc:
                readyz[type(exc).__name__] += 1
            time.sleep(0.01)
        after = ready_pids(server)
    finally:
        server.stop()
    print(f"2. a worker killed, its replacement replaying the log: routes {dict(routes)}, /readyz {dict(readyz)}; "
          f"a new worker serving after 25 s: {bool(after - before)}")


def under_load(folder: Path, db: str, name: str, database: Callable[[], tuple[set[str], set[str]]]) -> None:
    server = ServeProcess(folder, SERVE, ["--db", db, "--workers", "2"], log_name=name)
    server.wait_ready(60)
    ready_pids(server)
    routed: list[str] = []
    rated: list[str] = []
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        i = 0
        with httpx.Client(timeout=15, headers=CLOSE) as c:
            while not stop.is_set():
                i += 1
                try:
                    r = c.post(server.url + "/v1/route", json={"prompt": f"client {k} question {i} " * 10})
                except httpx.HTTPError as exc:
                    with lock:
                        seen["route " + type(exc).__name__] += 1
                    time.sleep(0.01)
                    continue
                with lock:
                    seen[f"route {r.status_code}"] += 1
                if r.status_code != 200:
                    continue
                decision = r.json()["decision_id"]
                with lock:
                    routed.append(decision)
                try:
                    f = c.post(server.url + "/v1/feedback", json={"decision_id": decision, "quality": 0.7})
                except httpx.HTTPError as exc:
                    with lock:
                        seen["feedback " + type(exc).__name__] += 1
                    continue
                with lock:
                    seen[f"feedback {f.status_code}"] += 1
                    if f.status_code == 200:
                        rated.append(decision)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(3)
        os.kill(worker_pids(server)[0], signal.SIGKILL)
        time.sleep(8)
        with lock:
            killed = dict(seen)
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        status = server.process.wait(90)
        took = time.monotonic() - sent
    finally:
        stop.set()
        for t in threads:
            t.join()
        server.stop()
    decisions, feedback = database()
    stopping = {k: v - killed.get(k, 0) for k, v in seen.items() if v - killed.get(k, 0)}
    print(f"3. {name}: until 8 s after a worker was killed {killed}; from the SIGTERM on {stopping}; exit status "
          f"{status} after {took:.1f} s; acknowledged decisions {len(routed)}, missing from the database "
          f"{len(set(routed) - decisions)}; acknowledged feedback {len(rated)}, missing {len(set(rated) - feedback)}")


def outage(pg: PgServer, folder: Path) -> None:
    url = pg.create_database("outage")
    server = ServeProcess(folder, SERVE, ["--db", url, "--workers", "2"], log_name="outage")
    try:
        server.wait_ready(60)
        ready_pids(server)
        pg.down()
        try:
            os.kill(worker_pids(server)[0], signal.SIGKILL)
            end = time.monotonic() + 15
            while time.monotonic() < end and server.process.poll() is None:
                time.sleep(0.2)
            during = server.process.poll()
        finally:
            pg.up()
        after = ready_pids(server) if server.process.poll() is None else set()
        statuses = Counter(route(server.url) for _ in range(20)) if server.process.poll() is None else Counter()
    finally:
        server.stop()
    print(f"4. PostgreSQL down 15 s, a worker killed meanwhile: the server "
          f"{'exited with status ' + str(during) if during is not None else 'ran throughout'}; after the outage "
          f"workers ready {len(after)}, 20 routes {dict(statuses)}")


def replacements(folder: Path) -> None:
    if os.geteuid() != 0:
        print("5. skipped (mounting a tmpfs needs root)")
        return
    tiny = folder / "tiny"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(tiny)], check=True)
    try:
        server = ServeProcess(folder, SERVE, ["--db", str(folder / "fill.db"), "--workers", "2"], log_name="fill",
                              env={"BANDIT_ROUTER_METRICS_DIR": str(tiny)})
        try:
            server.wait_ready(60)
            routed = kills = 0
            for kills in range(10):
                ready = ready_pids(server)
                if len(ready) < 2 or kills == 9:
                    break
                routed += sum(route(server.url) == 200 for _ in range(10))
                os.kill(min(ready), signal.SIGKILL)
            files = len(list(tiny.glob("*/*.db")))
            alive = server.process.poll() is None
            counted = None
            if alive:
                scrape = loopback.get(server.url + "/metrics", headers=CLOSE, timeout=10).text
                counted = sum(float(line.split()[-1]) for line in scrape.splitlines()
                              if line.startswith("bandit_router_decisions_total"))
            print(f"5. workers killed {kills} times on a 12 MiB metrics tmpfs: "
                  f"{'serving' if alive else f'exited with status {server.process.returncode}'}; metrics files "
                  f"{files}; decisions routed {routed}, counted in a scrape {counted}")
        finally:
            server.stop()
    finally:
        subprocess.run(["umount", "-l", str(tiny)], check=False)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    folder = Path(tempfile.mkdtemp(prefix="drill6-"))
    template = folder / "log.db"
    populate(template, LOG_FEEDBACKS)
    readiness_at_start(template, folder)
    replacement(template, folder)

    def sqlite_rows() -> tuple[set[str], set[str]]:
        with sqlite3.connect(folder / "load.db") as conn:
            return ({r[0] for r in conn.execute("SELECT decision_id FROM decisions")},
                    {r[0] for r in conn.execute("SELECT decision_id FROM feedback")})

    under_load(folder, str(folder / "load.db"), "SQLite", sqlite_rows)
    pg = PgServer.start(fsync=True)
    try:
        url = pg.create_database("load")

        def pg_rows() -> tuple[set[str], set[str]]:
            with psycopg.connect(url) as conn:
                return ({r[0] for r in conn.execute("SELECT decision_id FROM decisions")},
                        {r[0] for r in conn.execute("SELECT decision_id FROM feedback")})

        under_load(folder, url, "PostgreSQL", pg_rows)
        outage(pg, folder)
    finally:
        pg.stop()
    replacements(folder)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
