"""Drill 3: SQLite's disk and permission faults, as root (tmpfs mounts stand in for a read-only volume and a full
disk): the database directory read-only at start (empty, and with a database in it), a directory that cannot be
created, the disk filling up under load (then grown past the WAL's bound), the database file deleted while serving.

    sudo .venv/bin/python experiments/ops-drills/d3_disk.py     # ~30 s
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from drills import Load, Serve, wait

GROWN_MIB = 96
"""The full-disk drill's tmpfs after it is grown: past the WAL's bound (`wal_max_bytes`, 64 MiB) and the database."""


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def env(db: Path) -> dict[str, str]:
    return {"BANDIT_ROUTER_DB": str(db), "BANDIT_ROUTER_SEED": "5"}


def stored_against_acknowledged(db: Path, load: Load) -> dict[str, object]:
    with sqlite3.connect(db) as conn:
        decisions = {row[0] for row in conn.execute("SELECT decision_id FROM decisions")}
        feedback = dict(conn.execute("SELECT decision_id, seq FROM feedback").fetchall())
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    return {"acknowledged decisions missing": sum(1 for d in load.routed if d not in decisions),
            "acknowledged feedback missing": sum(1 for d, (seq, _) in load.rated.items() if feedback.get(d) != seq),
            "integrity": integrity}


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="drill3-"))
    with tmpfs(base / "ro", "size=1m,ro") as ro:
        for where in ("router.db", "sub/router.db"):
            server = Serve(base, env(ro / where), "read-only")
            print(f"read-only directory, --db {where}: {server.outcome()}", flush=True)
            server.stop()
    with tmpfs(base / "rw", "size=8m") as rw:
        server = Serve(base, env(rw / "router.db"), "made")
        server.wait_ready()
        httpx.post(server.url + "/v1/route", json={"prompt": "hello"})
        server.terminate()
        server.stop()
        subprocess.run(["mount", "-o", "remount,ro", str(rw)], check=True)
        server = Serve(base, env(rw / "router.db"), "existing-read-only")
        print(f"existing database, directory remounted read-only: {server.outcome()}", flush=True)
        server.stop()
    with tmpfs(base / "small", "size=3m") as small:
        server = Serve(base, env(small / "router.db"), "full")
        server.wait_ready()
        load = Load([server.url], threads=3).start()
        started = time.monotonic()
        wait(lambda: load.codes["503"] >= 20, 120, "a full disk")
        print(f"disk full after {time.monotonic() - started:.1f} s: {dict(load.codes)}; "
              f"/readyz {httpx.get(server.url + '/readyz').status_code}", flush=True)
        time.sleep(2)
        print(f"until the disk was grown ({time.monotonic() - started:.1f} s): {dict(load.codes)}", flush=True)
        # Past `wal_max_bytes` (64 MiB) and the database: the WAL is restarted only when it would pass that bound,
        # so a disk grown by less fills up again (durability.md).
        subprocess.run(["mount", "-o", f"remount,size={GROWN_MIB}m", str(small)], check=True)
        for window in range(1, 4):
            before = dict(load.codes)
            time.sleep(4)
            grown = {k: v - before.get(k, 0) for k, v in load.codes.items()}
            usage = os.statvfs(small)
            wal = small / "router.db-wal"
            print(f"{4 * (window - 1)}-{4 * window} s after growing the disk to {GROWN_MIB} MiB: {grown}; "
                  f"WAL {wal.stat().st_size / 2**20:.1f} MiB, "
                  f"disk {(usage.f_blocks - usage.f_bfree) * usage.f_frsize / 2**20:.1f} MiB used", flush=True)
        measured = dict(load.codes)
        load.finish()
        print(f"replies while the load stopped (after the windows above): "
              f"{ {k: v - measured.get(k, 0) for k, v in load.codes.items()} }")
        print(json.dumps(load.summary()))
        server.terminate()
        server.stop()
        print(json.dumps(stored_against_acknowledged(small / "router.db", load)), "problems:", server.problems())
    folder = base / "deleted"
    folder.mkdir()
    server = Serve(folder, env(folder / "router.db"), "deleted")
    server.wait_ready()
    load = Load([server.url], threads=3).start()
    time.sleep(2)
    acknowledged = len(load.rated)
    os.unlink(folder / "router.db")
    time.sleep(1)
    after_1s = len(load.rated) - acknowledged
    time.sleep(2)
    ready = httpx.get(server.url + "/readyz")
    load.finish()
    print(f"database file deleted while serving: {after_1s} feedbacks acknowledged in the second after, "
          f"{len(load.rated) - acknowledged} in the 3 s after; /readyz {ready.status_code} {ready.json()['message']}; "
          f"{json.dumps(load.summary()['replies'])}")
    server.stop()


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the drill mounts tmpfs file systems")
    main()
