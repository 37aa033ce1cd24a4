"""Drill 2: the documented backups, taken under load, restored, served: does the restored database serve and keep
learning? SQLite: `sqlite3 .backup` and `VACUUM INTO` (docs/service/durability.md) while one service routes and
rates; PostgreSQL: `pg_dump` while two replicas do, `pg_restore` into an empty database (docs/service/replicas.md).

    .venv/bin/python experiments/ops-drills/d2_backup.py        # needs the sqlite3 shell; ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import psycopg
from drills import Load, Serve, wait

from tools.pg_server import PASSWORD, PgServer


def restored_serves(folder: Path, env: dict[str, str], name: str, acknowledged_before: set[str],
                    stored: set[str]) -> dict[str, object]:
    server = Serve(folder, env, name)
    try:
        ready_s = server.wait_ready()
        stats = httpx.get(server.url + "/v1/stats").json()
        load = Load([server.url], threads=2, seed=9).start()
        wait(lambda: len(load.rated) >= 200, 120, "traffic on the restored database")
        load.finish()
        after = httpx.get(server.url + "/v1/stats").json()
        return {"ready in (s)": round(ready_s, 2),
                "acknowledged before the backup began, missing": len(acknowledged_before - stored),
                "restored: feedback seq, policy version": (stats["feedback_seq"], stats["policy_version"]),
                "after 200 more rated requests": (after["feedback_seq"], after["policy_version"]),
                "replies": dict(load.codes), "problems": server.problems()}
    finally:
        server.stop()


def sqlite_drill() -> None:
    folder = Path(tempfile.mkdtemp(prefix="drill2-sqlite-"))
    db = folder / "bandit-router.db"
    env = {"BANDIT_ROUTER_DB": str(db), "BANDIT_ROUTER_SEED": "5", "BANDIT_ROUTER_CHECKPOINT_INTERVAL": "200"}
    server = Serve(folder, env, "live")
    server.wait_ready()
    load = Load([server.url], threads=4).start()
    wait(lambda: len(load.rated) >= 700, 120, "traffic")
    before = set(load.rated)
    for command in (".backup 'backup.db'", "VACUUM INTO 'compact.db'"):
        subprocess.run(["sqlite3", str(db), command], check=True, cwd=folder)
    wait(lambda: len(load.rated) >= len(before) + 300, 120, "traffic after the backup")
    load.finish()
    server.terminate()
    server.stop()
    for name in ("backup.db", "compact.db"):  # restore: replace the file, delete -wal and -shm, start
        shutil.copy(folder / name, db)
        for suffix in ("-wal", "-shm"):
            (folder / f"bandit-router.db{suffix}").unlink(missing_ok=True)
        with sqlite3.connect(db) as conn:
            stored = {row[0] for row in conn.execute("SELECT decision_id FROM feedback")}
        print(f"SQLite {name}:", json.dumps(restored_serves(folder, env, name, before, stored)), flush=True)


def postgres_drill() -> None:
    folder = Path(tempfile.mkdtemp(prefix="drill2-pg-"))
    pg = PgServer.start(fsync=True)
    try:
        url = pg.create_database("live")
        env = {"BANDIT_ROUTER_DB": url, "BANDIT_ROUTER_SEED": "5", "BANDIT_ROUTER_CHECKPOINT_INTERVAL": "200"}
        replicas = [Serve(folder, env, "a"), Serve(folder, env, "b")]
        for replica in replicas:
            replica.wait_ready()
        load = Load([r.url for r in replicas], threads=4).start()
        wait(lambda: len(load.rated) >= 600, 120, "traffic")
        before = set(load.rated)
        restored = pg.create_database("restored")
        tools = {**os.environ, "PATH": f"{pg.bin}:{os.environ['PATH']}", "PGPASSWORD": PASSWORD}
        subprocess.run(["pg_dump", "--format=custom", "--file=routing.dump", url], check=True, cwd=folder, env=tools)
        wait(lambda: len(load.rated) >= len(before) + 200, 120, "traffic after the dump")
        load.finish()
        for replica in replicas:
            replica.stop()
        subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", f"--dbname={restored}", "routing.dump"],
                       check=True, cwd=folder, env=tools)
        with psycopg.connect(restored) as conn:
            stored = {row[0] for row in conn.execute("SELECT decision_id FROM feedback").fetchall()}
        print("PostgreSQL pg_dump/pg_restore:",
              json.dumps(restored_serves(folder, {**env, "BANDIT_ROUTER_DB": restored}, "restored", before, stored)))
    finally:
        pg.stop()


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    if shutil.which("sqlite3") is None:
        sys.exit("the sqlite3 shell is not installed (apt-get install sqlite3)")
    sqlite_drill()
    postgres_drill()
