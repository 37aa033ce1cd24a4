"""Drill 5: databases written by the service at older commits of this repository (`git archive` of each, served
with the same virtual environment), opened by this checkout: does it serve, keep what was learned, take feedback
for the old decisions, count the old rows on the dashboard? Does its policy equal a replay of the log with this
code? And a rolling upgrade on PostgreSQL: an old replica left running while a new one migrates and serves.

    .venv/bin/python experiments/ops-drills/d5_upgrade.py        # ~3 min
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import httpx
import psycopg
from drills import ROOT, Load, Serve, wait

from tools.pg_server import PgServer

OLD = {"6162c558": "schema 1", "94179555": "schema 2", "871211d6": "schema 6"}
PG_OLD = "7cf3c1d2"  # the first commit with PostgreSQL (schema 2 there)


def checkout(commit: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f"drill5-code-{commit}-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def replay_difference(db: Path, url: str) -> float:
    from bandit_router.config import Settings
    from bandit_router.log import rebuild_router
    from bandit_router.store.location import open_store
    from bandit_router.types import Request

    store = open_store(db)
    try:
        replay = rebuild_router(Settings(db=db, seed=5), store)
    finally:
        store.close()
    worst = 0.0
    for prompt in ("Fix this SQL join", "Write a poem about the moon", "Summarise the meeting notes"):
        for cost_weight in (0.0, 50.0):
            got = httpx.post(url + "/v1/route", json={"prompt": prompt, "cost_weight": cost_weight}).json()
            mine = replay.route(Request(prompt=prompt, cost_weight=cost_weight))
            worst = max(worst, *(abs(got["probabilities"][m] - p) for m, p in zip(mine.models, mine.pmf, strict=True)))
    return worst


def sqlite_upgrade(commit: str) -> dict[str, object]:
    folder = Path(tempfile.mkdtemp(prefix=f"drill5-{commit}-"))
    db = folder / "router.db"
    env = {"BANDIT_ROUTER_SEED": "5", "BANDIT_ROUTER_CHECKPOINT_INTERVAL": "100"}
    old = Serve(folder, env, "old", code=checkout(commit), args=("--db", str(db)))
    old.wait_ready()
    load = Load([old.url], threads=3).start()
    wait(lambda: len(load.rated) >= 500, 300, "traffic on the old version")
    load.finish()
    unrated = [httpx.post(old.url + "/v1/route", json={"prompt": f"unrated {i}"}).json()["decision_id"]
               for i in range(20)]
    old_stats = httpx.get(old.url + "/v1/stats").json()
    old.terminate()
    old.stop()
    new = Serve(folder, env, "new", args=("--db", str(db)))
    try:
        new.wait_ready()
        stats = httpx.get(new.url + "/v1/stats").json()
        late = [httpx.post(new.url + "/v1/feedback", json={"decision_id": d, "quality": 0.8}).json()["status"]
                for d in unrated]
        conflict = httpx.post(new.url + "/v1/feedback", json={"decision_id": next(iter(load.rated)), "quality": 0.01})
        series = httpx.get(new.url + "/v1/stats/timeseries?range=hour").json()
        report = {
            "old version: decisions, feedback seq, policy version":
                (old_stats["decisions"], old_stats["feedback_seq"], old_stats["policy_version"]),
            "new version: decisions, feedback seq, policy version":
                (stats["decisions"], stats["feedback_seq"], stats["policy_version"]),
            "recovery": httpx.get(new.url + "/readyz").json()["recovery"],
            "feedback for 20 decisions the old version made": dict.fromkeys(late, len(late)),
            "a different second feedback for an old rated decision": conflict.status_code,
            "dashboard decisions in the last hour": sum(m["decisions"] for m in series["models"]),
            "largest |pmf(upgraded) - pmf(replay with this code)|": replay_difference(db, new.url),
            "problems": new.problems(),
        }
    finally:
        new.stop()
    return report


def rolling_upgrade_on_postgres() -> dict[str, object]:
    folder = Path(tempfile.mkdtemp(prefix="drill5-pg-"))
    pg = PgServer.start(fsync=True)
    servers: list[Serve] = []
    try:
        url = pg.create_database("d")
        env = {"BANDIT_ROUTER_SEED": "5"}
        servers.append(Serve(folder, env, "old", code=checkout(PG_OLD), args=("--db", url)))
        servers[0].wait_ready()
        load = Load([servers[0].url], threads=3).start()
        wait(lambda: len(load.rated) >= 400, 300, "traffic on the old replica")
        servers.append(Serve(folder, env, "new", args=("--db", url)))
        servers[1].wait_ready()
        load.urls.append(servers[1].url)
        rated = len(load.rated)
        wait(lambda: len(load.rated) >= rated + 600, 300, "traffic on both")
        load.finish()
        with psycopg.connect(url) as conn:
            schema = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
            decisions = conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        series = httpx.get(servers[1].url + "/v1/stats/timeseries?range=hour").json()
        old_ready = httpx.get(servers[0].url + "/readyz")
        return {"schema after the new replica started": schema, "replies": dict(load.codes),
                "decisions stored": decisions,
                "decisions on the new dashboard": sum(m["decisions"] for m in series["models"]),
                "the old replica's /readyz": (old_ready.status_code, old_ready.text[:200])}
    finally:
        for server in servers:
            server.stop()
        pg.stop()


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    for commit, schema in OLD.items():
        print(f"SQLite written at {commit} ({schema}):", json.dumps(sqlite_upgrade(commit), default=str), flush=True)
    print(f"PostgreSQL, an old replica ({PG_OLD}) left running beside a new one:",
          json.dumps(rolling_upgrade_on_postgres(), default=str))
