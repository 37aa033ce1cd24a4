"""Drill 1: two replicas on one PostgreSQL under load (route + feedback from 6 client threads, each sent to a random
replica). In turn: `kill -9` of one replica and a new one in its place; PostgreSQL stopped for DOWN_S seconds and
started again (`pg_ctl stop -m fast` / `start`); every PostgreSQL process frozen for HANG_S seconds (SIGSTOP), then
thawed; the log's write lock held by another session for LOCK_S seconds. The replicas are never restarted for
the database's faults. Then the database against what clients were told (acknowledged rows exactly once, seqs
without a gap) and each replica's policy against a replay of the log.

    .venv/bin/python experiments/ops-drills/d1_replicas.py      # DOWN_S=15 HANG_S=20 LOCK_S=12 by default; ~2 min
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
from drills import Load, Serve, check_postgres_log, wait

from bandit_router.store.postgres import LOG_LOCK
from tools.pg_server import PgServer

DOWN_S = float(os.environ.get("DOWN_S", "15"))
HANG_S = float(os.environ.get("HANG_S", "20"))
LOCK_S = float(os.environ.get("LOCK_S", "12"))
SEED = 5


def phase(load: Load, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in load.codes.items() if v - before.get(k, 0)}


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="drill1-"))
    pg = PgServer.start(fsync=True)
    servers: list[Serve] = []
    try:
        url = pg.create_database("drill1")
        env = {"BANDIT_ROUTER_DB": url, "BANDIT_ROUTER_SEED": str(SEED), "BANDIT_ROUTER_CHECKPOINT_INTERVAL": "300"}
        servers += [Serve(folder, env, "a"), Serve(folder, env, "b")]
        for s in servers:
            s.wait_ready()
        urls = [s.url for s in servers]
        load = Load(urls, threads=6).start()
        wait(lambda: len(load.rated) >= 800, 120, "traffic")

        before = dict(load.codes)
        servers[1].kill9()
        rated = len(load.rated)
        wait(lambda: len(load.rated) >= rated + 500, 120, "the other replica carries on")
        servers.append(Serve(folder, env, "b2"))
        joined_s = servers[-1].wait_ready()
        urls[1] = servers[-1].url
        print(f"kill -9 of replica b: {phase(load, before)}; its replacement ready in {joined_s:.1f} s", flush=True)

        before = dict(load.codes)
        pg.down()
        time.sleep(DOWN_S / 2)
        ready = [httpx.get(u + "/readyz", timeout=10).status_code for u in urls]
        time.sleep(DOWN_S / 2)
        pg.up()
        up = time.monotonic()
        rated = len(load.rated)
        first = wait(lambda: len(load.rated) > rated, 60, "an acknowledgement after the restart")
        wait(lambda: all(httpx.get(u + "/v1/stats", timeout=10).status_code == 200 for u in urls), 60, "reads")
        reads = time.monotonic() - up
        print(f"PostgreSQL down {DOWN_S:.0f} s: {phase(load, before)}; /readyz while down {ready}; first "
              f"acknowledgement {first:.2f} s after the restart, /v1/stats on both {reads:.2f} s after", flush=True)

        before, longest = dict(load.codes), dict(load.longest)
        pg.pause()
        time.sleep(HANG_S / 2)
        ready = [httpx.get(u + "/readyz", timeout=10).status_code for u in urls]
        time.sleep(HANG_S / 2)
        pg.resume()
        rated = len(load.rated)
        first = wait(lambda: len(load.rated) > rated, 60, "an acknowledgement after the thaw")
        hang_longest = {k: v for k, v in load.longest.items() if v != longest.get(k)}
        print(f"PostgreSQL frozen {HANG_S:.0f} s: {phase(load, before)}; /readyz while frozen {ready}; longest "
              f"waits that grew {hang_longest}; first acknowledgement {first:.2f} s after the thaw", flush=True)

        before, longest = dict(load.codes), dict(load.longest)
        with psycopg.connect(url) as conn:  # another session holds the log's write lock (a replica cut off with it)
            conn.execute("BEGIN")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOG_LOCK,))
            time.sleep(LOCK_S / 2)
            ready = [httpx.get(u + "/readyz", timeout=10).status_code for u in urls]
            time.sleep(LOCK_S / 2)
            conn.execute("ROLLBACK")
        rated = len(load.rated)
        first = wait(lambda: len(load.rated) > rated, 60, "an acknowledgement after the lock's release")
        lock_longest = {k: v for k, v in load.longest.items() if v != longest.get(k)}
        print(f"the log's lock held by another session {LOCK_S:.0f} s: {phase(load, before)}; /readyz meanwhile "
              f"{ready}; longest waits that grew {lock_longest}; first acknowledgement {first:.2f} s after the release",
              flush=True)

        rated = len(load.rated)
        wait(lambda: len(load.rated) >= rated + 500, 120, "traffic after the faults")
        load.finish()
        print(json.dumps(load.summary(), indent=1))
        print(json.dumps(check_postgres_log(url, load, urls, SEED), indent=1))
        for s in servers:
            print(f"{s.logpath.name}: {len(s.problems())} warnings or errors, "
                  f"{sum('Traceback' in p for p in s.problems())} tracebacks")
    finally:
        for s in servers:
            s.stop()
        pg.stop()


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
