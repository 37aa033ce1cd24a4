"""The service on PostgreSQL, in process: two replicas (two apps, two engines, one database) answer as one
service; a database outage is a 503, never a 500, and the service carries on by itself; the password is never
shown; `migrate`, `evaluate` and `export` take the URL (`check`, for SQLite files, refuses it clearly)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import psycopg
import pytest
from service_client import TestClient, start_client
from typer.testing import CliRunner

from bandit_router.cli import app as cli_app
from bandit_router.config import Settings
from bandit_router.log import rebuild_router
from bandit_router.service.writer import Writer
from bandit_router.store import SCHEMA_VERSION, RouterCounts, postgres
from bandit_router.store.location import DatabaseURL
from bandit_router.store.postgres import POOL_TIMEOUT_S, PostgresStore
from tools.pg_server import PASSWORD, PgServer

PAIR = ["gpt-4o-mini", "claude-haiku-4-5"]


@pytest.fixture
def replicas(pg_url: str) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**changes: Any) -> TestClient:
        client = start_client(Settings(db=DatabaseURL(pg_url), seed=7, **changes))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _route(client: TestClient, prompt: str = "Sort a list in Python", **body: Any) -> dict[str, Any]:
    reply = client.post("/v1/route", json={"prompt": prompt, "models": PAIR, **body})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _engine(client: TestClient) -> Any:
    return client.app.state.engine  # type: ignore[attr-defined]


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def test_a_decision_made_on_one_replica_takes_its_feedback_on_another(replicas: Callable[..., TestClient],
                                                                      pg_url: str) -> None:
    a, b = replicas(), replicas()
    decision = _route(a)
    first = b.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.8})
    assert first.status_code == 200 and first.json()["status"] == "applied"
    again = a.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.8})
    assert again.json()["status"] == "duplicate" and again.json()["seq"] == first.json()["seq"]
    conflict = a.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": 0.1})
    assert conflict.status_code == 409
    assert b.post("/v1/feedback", json={"decision_id": "nope", "quality": 0.5}).status_code == 404
    _wait(lambda: all(c.get("/v1/stats").json()["policy_version"] == 1 for c in (a, b)))
    assert b.get(f"/v1/decisions/{decision['decision_id']}").status_code == 200
    assert _rows(pg_url, "SELECT seq, status FROM feedback") == [(1, "applied")]


def test_model_changes_and_promotions_reach_every_replica_at_the_same_place(
    replicas: Callable[..., TestClient], pg_url: str
) -> None:
    a, b = replicas(shadow_policies=("linucb",)), replicas(shadow_policies=("linucb",))
    rng = np.random.default_rng(3)
    spec = {"name": "house-model", "input_usd_per_mtok": 0.2, "output_usd_per_mtok": 0.4}
    for i in range(60):
        if i == 20:
            assert a.post("/v1/models", json=spec).status_code == 201
            # b routes to it once it has followed the log (≤ 100 ms idle; at once when it writes)
            _wait(lambda: _engine(b).follower.applied_event >= 1)
        if i == 40:
            promoted = b.post("/v1/policies/promote", json={"shadow": "linucb", "force": True})
            assert promoted.status_code == 200, promoted.text
        route_on, rate_on = (a, b) if rng.random() < 0.5 else (b, a)
        models = [*PAIR, "house-model"] if i > 20 else PAIR
        decision = route_on.post("/v1/route", json={"prompt": f"question {i}", "models": models}).json()
        reply = rate_on.post("/v1/feedback", json={"decision_id": decision["decision_id"],
                                                   "quality": float(rng.random())})
        assert reply.status_code == 200, reply.text
    _wait(lambda: all(_engine(c).applied_seq == 60 for c in (a, b)))
    assert all(c.get("/v1/stats").json()["live_policy"] == "linucb" for c in (a, b))
    assert all("house-model" in [m["name"] for m in c.get("/v1/models").json()["models"]] for c in (a, b))
    events = _rows(pg_url, "SELECT action, name, after_seq FROM model_events ORDER BY id")
    assert events == [("add", "house-model", 20), ("promote", "linucb", 40)]
    settings = Settings(db=DatabaseURL(pg_url), seed=7, shadow_policies=("linucb",))
    store = PostgresStore(DatabaseURL(pg_url))
    try:
        replay = rebuild_router(settings, store)
    finally:
        store.close()
    for client in (a, b):
        assert np.array_equal(_engine(client).router.weights(), replay.weights())


def test_reward_windows_close_once_across_replicas(replicas: Callable[..., TestClient], pg_url: str) -> None:
    a, b = (replicas(reward_window_s=0.3, default_reward=0.25) for _ in range(2))
    silent = [_route(c, f"silent {i}")["decision_id"] for i, c in enumerate([a, b] * 5)]
    _wait(lambda: len(_rows(pg_url, "SELECT 1 FROM feedback WHERE status = 'default'")) == 10)
    time.sleep(0.6)  # both writers sweep again meanwhile: nothing is closed twice
    rows = _rows(pg_url, "SELECT decision_id, status, quality FROM feedback ORDER BY seq")
    assert sorted(r[0] for r in rows) == sorted(silent) and {(r[1], r[2]) for r in rows} == {("default", 0.25)}
    _wait(lambda: all(_engine(c).applied_seq == 10 for c in (a, b)))
    stats = a.get("/v1/stats").json()  # learned by both, but no caller sent feedback (as the dashboard says)
    assert stats["feedback_by_status"] == {"default": 10} and stats["feedback_learned"] == 0
    assert b.get("/v1/stats/timeseries").json()["overall"]["learned"] == 0


def test_a_database_outage_is_503_then_the_service_carries_on(
    replicas: Callable[..., TestClient], pg_server: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = replicas()
    before = _route(client)
    assert client.get("/readyz").status_code == 200
    pg_server.down()
    try:
        route = client.post("/v1/route", json={"prompt": "while the database is down", "models": PAIR})
        feedback = client.post("/v1/feedback", json={"decision_id": before["decision_id"], "quality": 0.5})
        stats = client.get("/v1/stats")
        _wait(lambda: client.get("/readyz").status_code == 503)  # a load balancer stops sending here
        ready = client.get("/readyz")
    finally:
        pg_server.up()
    for reply in (route, feedback, stats, ready):
        assert reply.status_code == 503, reply.text
        assert reply.json()["message"] and PASSWORD not in reply.text
    assert "database unreachable" in ready.json()["message"]
    _wait(lambda: client.post("/v1/route", json={"prompt": "back", "models": PAIR}).status_code == 200)
    _wait(lambda: client.get("/readyz").status_code == 200)
    reply = client.post("/v1/feedback", json={"decision_id": before["decision_id"], "quality": 0.5})
    assert reply.status_code == 200 and reply.json()["status"] == "applied"
    for path in ("/v1/stats", "/metrics", "/readyz", "/v1/budgets"):
        assert PASSWORD not in client.get(path).text
    assert PASSWORD not in caplog.text
    assert "***" in caplog.text  # the start-up line names the database, masked
    assert "synchronous=" not in caplog.text  # SQLite's setting, which PostgreSQL does not read, is not shown


def test_migrate_evaluate_and_export_take_the_url(replicas: Callable[..., TestClient], pg_url: str,
                                                  tmp_path: Path) -> None:
    runner = CliRunner()
    migrated = runner.invoke(cli_app, ["migrate", "--db", pg_url])
    assert migrated.exit_code == 0, migrated.output
    assert "schema version" in migrated.output and PASSWORD not in migrated.output
    checked = runner.invoke(cli_app, ["check", "--db", pg_url])
    assert checked.exit_code == 2 and "is PostgreSQL" in checked.output and PASSWORD not in checked.output
    client = replicas(policy="random")
    rng = np.random.default_rng(1)
    for i in range(40):
        decision = _route(client, f"evaluate me {i}")
        client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": float(rng.random())})
    out = tmp_path / "log.dsjson"
    exported = runner.invoke(cli_app, ["export", "--db", pg_url, "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert len(out.read_text().splitlines()) == 40
    evaluated = runner.invoke(cli_app, ["evaluate", "--db", pg_url, "-C", "fixed:gpt-4o-mini"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "40 decisions with feedback evaluated" in evaluated.output
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
        counted = "SELECT (SELECT COUNT(*) FROM decisions), (SELECT COUNT(*) FROM feedback)"
        rows = conn.execute(counted).fetchone()
    refused = runner.invoke(cli_app, ["migrate", "--db", pg_url])
    assert refused.exit_code == 2 and "schema version 999" in refused.output and PASSWORD not in refused.output
    # evaluate and export read a newer schema as if it were theirs: refused now, naming both versions
    for command in (["export"], ["evaluate", "-C", "random"], ["export", "--escalations"],
                    ["evaluate", "--escalations"]):
        newer = runner.invoke(cli_app, [*command, "--db", pg_url])
        assert newer.exit_code == 2, (command, newer.output)
        assert f"has schema version 999; this bandit-router knows {SCHEMA_VERSION}" in newer.output
        assert PASSWORD not in newer.output and "decisions with feedback evaluated" not in newer.output
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute(counted).fetchone() == rows
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("999",)


def test_evaluate_and_export_say_why_they_cannot_connect(pg_server: PgServer, pg_url: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A wrong password, database or port is the driver's reason, as `migrate` says it: it was a reader's
    "couldn't get a connection after 0.10 sec", the reason only in the connection pool's log lines."""
    runner = CliRunner()
    assert runner.invoke(cli_app, ["migrate", "--db", pg_url]).exit_code == 0
    bad = {
        "password authentication failed": pg_url.replace(PASSWORD, "not-the-password"),
        "does not exist": pg_server.url("no_such_database"),
        "Connection refused": pg_url.replace(f":{pg_server.port}/", ":1/"),
    }
    for reason, url in bad.items():
        for command in (["evaluate", "-C", "random"], ["export"]):
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                result = runner.invoke(cli_app, [*command, "--db", url])
            assert result.exit_code == 2, result.output
            assert reason in result.output and "cannot connect" in result.output, result.output
            assert "couldn't get a connection" not in result.output and PASSWORD not in result.output
            assert not [r for r in caplog.records if "error connecting" in r.getMessage()]


def test_serve_and_migrate_config_say_why_they_cannot_connect(pg_server: PgServer, pg_url: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The start's first read (the live catalog's check, before the schema) went through the connection pool, so
    a missing database or a refused connection was only "couldn't get a connection after 0.10 sec" (review of the
    start checks): the driver's reason, as `migrate --db` gives it."""
    import uvicorn

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("serve started")

    monkeypatch.setattr(uvicorn, "run", never)
    runner = CliRunner()
    bad = {
        "does not exist": pg_server.url("no_such_database"),
        "Connection refused": pg_url.replace(f":{pg_server.port}/", ":1/"),
    }
    for reason, url in bad.items():
        config = tmp_path / "bandit-router.toml"
        config.write_text(f"db = {url!r}\n", encoding="utf-8")
        for command in (["serve", "--db", url], ["migrate", "--config", str(config)]):
            result = runner.invoke(cli_app, command)
            assert result.exit_code == 2, result.output
            assert reason in result.output and "couldn't get a connection" not in result.output, result.output
            assert PASSWORD not in result.output


def test_evaluate_and_export_refuse_a_database_the_service_never_prepared(pg_url: str, tmp_path: Path) -> None:
    """A URL naming another database of the server (or an empty SQLite file) failed with the query's error:
    'relation "decisions" does not exist LINE 1: ...kers, attributes, features, prompt, position FROM ...'."""
    empty = tmp_path / "empty.db"
    empty.touch()
    for db in (pg_url, str(empty)):
        for command in (["evaluate", "-C", "random"], ["export"]):
            result = CliRunner().invoke(cli_app, [*command, "--db", db])
            assert result.exit_code == 2, result.output
            assert "is not a bandit-router database" in result.output and "LINE 1" not in result.output
            assert PASSWORD not in result.output
    assert not _rows(pg_url, "SELECT 1 FROM pg_tables WHERE tablename = 'decisions'")  # nothing was created


def test_a_url_is_read_and_shown_masked_however_its_scheme_is_written(pg_server: PgServer, pg_url: str) -> None:
    """`is_url` takes the scheme in any case, which the driver does not: `POSTGRESQL://…` was a connection error
    quoting the whole URL, and shown unmasked (the mask's pattern was for lower case). A URL with a blank (a
    space in the password) is refused without showing it: the driver's refusal quoted the password."""
    upper = DatabaseURL(" " + pg_url.replace("postgresql://", "POSTGRESQL://") + "\n")
    assert PASSWORD not in str(upper) and PASSWORD not in repr(upper) and "***" in str(upper)
    store = PostgresStore(upper)
    try:
        store.prepare()
        with store.read() as reader:
            assert reader.head() == (0, 0)
    finally:
        store.close()
    migrated = CliRunner().invoke(cli_app, ["migrate", "--db", pg_url.replace("postgresql://", "Postgres://")])
    assert migrated.exit_code == 0 and PASSWORD not in migrated.output, migrated.output
    spaced = pg_url.replace(PASSWORD, "a secret with spaces")
    for command in (["migrate"], ["evaluate", "-C", "random"], ["export"]):
        refused = CliRunner().invoke(cli_app, [*command, "--db", spaced])
        assert refused.exit_code == 2 and "percent-encode" in refused.output, refused.output
        assert "secret with" not in refused.output


def test_the_dashboard_counts_every_replicas_traffic(replicas: Callable[..., TestClient]) -> None:
    a, b = replicas(), replicas()
    for i in range(40):
        client = a if i % 2 else b
        decision = _route(client, f"Explain recursion to a child (#{i})")
        if i % 4 < 2:
            reply = (b if i % 2 else a).post("/v1/feedback", json={"decision_id": decision["decision_id"],
                                                                    "quality": 0.8})
            assert reply.status_code == 200
    for client in (a, b):  # the rollup is in the database: both replicas show the same numbers
        body = client.get("/v1/stats/timeseries?range=hour").json()
        assert body["overall"]["decisions"] == 40 and body["overall"]["learned"] == 20
        assert body["overall"]["quality"] == pytest.approx(0.8)
        recent = client.get("/v1/stats/recent")
        assert recent.status_code == 200, recent.text
        for path in ("/v1/stats/live", "/v1/stats/shadows"):
            assert client.get(path).status_code == 200


def test_while_the_database_refuses_connections_requests_answer_503_at_once_and_recover_at_once(
    replicas: Callable[..., TestClient], pg_server: PgServer
) -> None:
    """Drill: PostgreSQL stopped under a replica for 8 s, then started. While it is down every route, feedback and
    read answers 503 without waiting for a pooled connection (`POOL_TIMEOUT_S`, 5 s): before, the writer thread sat
    in that wait while following the log and reading the budget targets, so requests queued behind it got their
    503 after 5-15 s (a client with the documented 5 s timeout saw timeouts instead). Once it is back, reads work
    again at once: before, the pool's reconnection delays kept doubling through the outage (1, 2, 4, 8 s …), so
    readers stayed without a connection for about as long again."""
    client = replicas()
    before = _route(client)
    pg_server.down()
    waits: list[tuple[str, int, float]] = []
    try:
        started = time.monotonic()
        while time.monotonic() - started < 8.0:  # many of the writer's follow rounds (every 100 ms)
            for method, path, body in (("POST", "/v1/route", {"prompt": "down", "models": PAIR}),
                                       ("POST", "/v1/feedback", {"decision_id": before["decision_id"], "quality": 0.5}),
                                       ("GET", "/v1/stats", None)):
                sent = time.monotonic()
                reply = client.request(method, path, json=body)
                waits.append((path, reply.status_code, time.monotonic() - sent))
            time.sleep(0.05)
    finally:
        pg_server.up()
    assert {status for _, status, _ in waits} == {503}, waits
    slowest = max(waits, key=lambda w: w[2])
    assert slowest[2] < POOL_TIMEOUT_S / 2, slowest  # refused connections: milliseconds, not the pool's wait
    _wait(lambda: client.get("/v1/stats").status_code == 200, timeout=POOL_TIMEOUT_S - 1)
    reply = client.post("/v1/feedback", json={"decision_id": before["decision_id"], "quality": 0.5})
    assert reply.status_code == 200 and reply.json()["status"] == "applied"


def test_the_documented_backup_restores_a_database_that_serves_and_learns(
    replicas: Callable[..., TestClient], pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    """Drill: docs/service/replicas.md's backup block, run as written (pg_dump while a replica serves, pg_restore
    into an empty database); a replica on the restored database has the same policy as a replay of the backup's
    log, numbers new feedback after the backup's last seq and learns it; feedback acknowledged after the dump is not
    in it, and a decision made after it is unknown there."""
    import os
    import re
    import subprocess

    block = re.search(r"<!-- tested: pg-backup.*?-->\s*```sh\n(.*?)```",
                      (Path(__file__).parents[1] / "docs/service/replicas.md").read_text(), re.S)
    assert block is not None
    live = replicas()
    rated = [_route(live, f"Sort a list in Python #{i}") for i in range(12)]
    for i, decision in enumerate(rated):
        assert live.post("/v1/feedback", json={"decision_id": decision["decision_id"],
                                               "quality": (i % 5) / 5}).status_code == 200
    restored_url = pg_server.create_database(f"restored_{os.getpid()}")
    env = {**os.environ, "PATH": f"{pg_server.bin}:{os.environ['PATH']}", "BANDIT_ROUTER_DB": pg_url,
           "RESTORED_DB": restored_url}
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + block.group(1)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    later = _route(live, "made after the backup")
    assert live.post("/v1/feedback", json={"decision_id": later["decision_id"], "quality": 0.9}).status_code == 200

    restored = start_client(Settings(db=DatabaseURL(restored_url), seed=7))
    try:
        stats = restored.get("/v1/stats").json()
        assert stats["feedback_seq"] == 12 and stats["policy_version"] == 12
        store = PostgresStore(DatabaseURL(restored_url))
        try:
            replay = rebuild_router(Settings(db=DatabaseURL(restored_url), seed=7), store)
        finally:
            store.close()
        assert np.array_equal(_engine(restored).router.weights(), replay.weights())
        gone = restored.post("/v1/feedback", json={"decision_id": later["decision_id"], "quality": 0.9})
        assert gone.status_code == 404
        fresh = _route(restored, "after the restore")
        reply = restored.post("/v1/feedback", json={"decision_id": fresh["decision_id"], "quality": 0.7})
        assert reply.status_code == 200 and reply.json()["seq"] == 13 and reply.json()["status"] == "applied"
        assert restored.get("/v1/stats").json()["policy_version"] == 13
    finally:
        restored.__exit__(None, None, None)


def test_a_database_that_hangs_is_a_503_at_once_not_a_request_that_waits_as_long(
    replicas: Callable[..., TestClient], pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drill: every PostgreSQL process frozen (SIGSTOP: a hung server, a stalled disk; connections stay open and
    nothing answers, so no timeout of the driver or the server fires). Before, every route and feedback queued
    behind the writer's transaction for as long as the hang lasted (20 s in the drill) and `/readyz` said ready
    throughout. Now, once the writer has had no answer for `STALL_S`, new writes are refused at once with a 503
    (nothing stored) and `/readyz` is 503; the request caught in the hang is answered 503 too, saying it may still
    be stored: it is, once the server thaws, and sent again it is a `duplicate`."""
    from concurrent.futures import ThreadPoolExecutor

    from bandit_router.service import engine as engine_module

    monkeypatch.setattr(engine_module, "STALL_S", 1.0)
    client = replicas()
    before = _route(client)
    reads = ThreadPoolExecutor(4)  # shut down after the thaw: a read caught in the hang ends only then
    pg_server.pause()
    try:
        with ThreadPoolExecutor(1) as pool:
            caught = pool.submit(client.post, "/v1/feedback", json={"decision_id": before["decision_id"],
                                                                    "quality": 0.5})
            _wait(lambda: client.get("/readyz").status_code == 503, timeout=5.0)
            assert "not answered" in client.get("/readyz").json()["message"]
            for _ in range(3):
                sent = time.monotonic()
                reply = client.post("/v1/route", json={"prompt": "while it hangs", "models": PAIR})
                assert reply.status_code == 503 and "not answered" in reply.json()["message"], reply.text
                assert time.monotonic() - sent < 1.0  # refused at once, not queued behind the hang
            assert client.get("/v1/stats").status_code == 503
            for path in ("/v1/stats/timeseries", "/v1/stats/live", "/v1/stats/recent", "/v1/stats/shadows"):
                read = reads.submit(client.get, path)  # the dashboard's reads too: none waits behind the hang
                assert read.result(timeout=1.0).status_code == 503, path
            answered = caught.result(timeout=5)  # while the server is still frozen
            assert answered.status_code == 503 and "may still be stored" in answered.json()["message"]
    finally:
        pg_server.resume()
        reads.shutdown()
    _wait(lambda: client.get("/readyz").status_code == 200)
    again = client.post("/v1/feedback", json={"decision_id": before["decision_id"], "quality": 0.5})
    assert again.status_code == 200 and again.json()["status"] == "duplicate"  # the caught one was stored
    assert client.post("/v1/route", json={"prompt": "thawed", "models": PAIR}).status_code == 200


def test_a_writer_waiting_for_the_logs_lock_names_the_session_that_holds_it(
    replicas: Callable[..., TestClient], pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drill: `serve --workers 2` on PostgreSQL under load, one worker stopped (SIGSTOP) inside a write transaction
    for 15 s. The other's writer waited for the log's lock, and every request and `/readyz` said "database not
    answering: the database has not answered for 5 … 10 s", while PostgreSQL answered and a worker held the lock:
    an operator looked at the database. The stall now names the lock and the session holding it (its
    `application_name` carries the holder's pid)."""
    from bandit_router.service import engine as engine_module

    monkeypatch.setattr(engine_module, "STALL_S", 1.0)
    monkeypatch.setattr(postgres, "LOCK_LOOKUP_S", 0.2, raising=False)
    client = replicas()
    _route(client)
    with psycopg.connect(pg_url, autocommit=True, application_name="bandit-router[4242]") as stuck:
        stuck.execute("SELECT pg_advisory_lock(%s)", (postgres.LOG_LOCK,))  # a worker stopped mid-transaction
        try:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(1) as pool:
                caught = pool.submit(client.post, "/v1/route", json={"prompt": "behind the lock", "models": PAIR})
                # The holder is looked up at the maintenance thread's first look (every 0.5 s) after 0.2 s of waiting:
                # by design before the 1 s stall, but 0.93 s after the round began on a loaded machine (load average
                # 12), so the first 503 may still say "not answering". With the defaults (5 s, 1 s) it is 3.5 s ahead.
                # Before 10 s (the lock timeout, which ends the wait) /readyz names the holder:
                readyz: list[Any] = []

                def named() -> bool:
                    readyz.append(client.get("/readyz"))
                    return "bandit-router[4242]" in readyz[-1].text

                _wait(named, timeout=5.0)
                message = readyz[-1].json()["message"]
                assert readyz[-1].status_code == 503 and "log locked: this process has waited" in message, message
                reply = client.post("/v1/route", json={"prompt": "while locked", "models": PAIR})
                assert reply.status_code == 503 and "write lock" in reply.json()["message"], reply.text
                assert caught.result(timeout=5).status_code == 503
        finally:
            stuck.execute("SELECT pg_advisory_unlock(%s)", (postgres.LOG_LOCK,))
    _wait(lambda: client.get("/readyz").status_code == 200)
    _route(client)


def test_a_refused_start_leaves_a_new_database_empty(pg_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The start checks the catalog's models before it creates the schema (review of eac77b2: a start refused for
    `policy = 'fixed:nope'` left a new database with every table): `serve` and the app refuse it and the database
    stays empty."""
    import uvicorn

    from bandit_router.config import ConfigError

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("serve started")

    monkeypatch.setattr(uvicorn, "run", started)
    config = tmp_path / "br.toml"
    config.write_text("policy = 'fixed:nope'\n", encoding="utf-8")
    refusal = "policy: policy 'fixed:nope' names the model 'nope', which is not in the catalog"
    result = CliRunner().invoke(cli_app, ["serve", "--config", str(config), "--db", pg_url])
    assert result.exit_code == 2 and result.output.startswith(f"bandit-router serve: {refusal}"), result.output
    with pytest.raises(ConfigError, match=refusal):
        start_client(Settings(policy="fixed:nope", db=DatabaseURL(pg_url), seed=1))
    assert _rows(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'") == []


class _CommitCutter:
    """A TCP proxy to the PostgreSQL server on 127.0.0.1 that, once armed, passes the next COMMIT on to the server and
    then drops the connection before the server's answer reaches the client (the server has committed; the client
    cannot know); with `refuse` set it also closes every new connection at once (nobody can ask the outcome)."""

    def __init__(self, port: int) -> None:
        self.port_to = port
        self.armed = False
        self.refuse = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refuse:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.port_to))
            cut = threading.Event()
            threading.Thread(target=self._pump, args=(client, server, True, cut), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False, cut), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool, cut: threading.Event) -> None:
        try:
            while data := src.recv(65536):
                if upstream and self.armed and b"COMMIT" in data:
                    self.armed = False
                    cut.set()
                    dst.sendall(data)  # the server commits
                    time.sleep(0.3)
                    break
                if not cut.is_set():  # the server's answer to the COMMIT never arrives
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


def test_a_commit_whose_answer_is_lost_counts_a_named_routers_request_once(
    pg_server: PgServer, pg_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection drops after the server got COMMIT and before its answer arrives: the store said "commit
    failed", the writer kept the named router's counts and wrote them again, twice in router_stats. The store now
    asks `pg_xact_status` on a new connection: committed, the write succeeded (nothing kept); when it cannot learn it,
    it raises `CommitOutcomeUnknown` and the writer drops the counts with a warning ("may be lost"), never writing
    them twice."""
    direct = PostgresStore(DatabaseURL(pg_url))
    direct.prepare()
    proxy = _CommitCutter(pg_server.port)
    store = PostgresStore(DatabaseURL(pg_url.replace(f":{pg_server.port}/", f":{proxy.port}/")))
    follower = SimpleNamespace(policies=SimpleNamespace(live=SimpleNamespace(models=[])))
    writer = Writer(store, follower, budgets=None, rules=SimpleNamespace(sweeps=False))  # type: ignore[arg-type]

    def requests() -> int:
        with direct.read() as reader:
            return sum(c.requests for c in reader.router_counts())

    try:
        for refuse, expected in ((False, 1), (True, 2)):
            with store.write():
                pass  # the writer's connection is open
            writer.keep_counts([RouterCounts("auto", 20000, "cheap", requests=1, answer_calls=1, spend_usd=0.01)])
            proxy.armed, proxy.refuse = True, refuse
            monkeypatch.setattr(postgres, "COMMIT_OUTCOME_WAIT_S", 0.5, raising=False)
            with caplog.at_level(logging.WARNING, logger="bandit_router"):
                writer._write_unwritten()
            proxy.refuse = False
            assert requests() == expected
            assert writer.unwritten_counts == 0  # nothing kept to be written again
            writer._write_unwritten()
            assert requests() == expected
            if refuse:
                assert "1 rows of named routers' counts may be lost" in caplog.text
            else:
                assert "the transaction had committed" in caplog.text
        with store.write() as tx:  # the store carries on
            tx.add_router_counts([RouterCounts("auto", 20000, "cheap", requests=1)])
        assert requests() == 3
    finally:
        proxy.listener.close()
        store.close()
        direct.close()


WINDOWS = {"reward_window_s": 0.3, "default_reward": 0.25}


def _defaults(url: str) -> set[str]:
    return {row[0] for row in _rows(url, "SELECT decision_id FROM feedback WHERE status = 'default'")}


def test_decisions_made_without_windows_after_retention_deleted_every_swept_one_get_no_default_reward(
        replicas: Callable[..., TestClient], pg_url: str) -> None:
    """Retention deleted every decision up to the swept position, the newest too (an idle service): the next start
    without windows noted the last decision's position (0, behind the swept one), which the start with windows
    after it dropped as stale, so every decision of the run without windows got the default reward (4 of 4)."""
    first = replicas(**WINDOWS)
    promised = _route(first)["decision_id"]
    _wait(lambda: promised in _defaults(pg_url))
    first.__exit__(None, None, None)
    time.sleep(1.0)
    retention = replicas(retention_days=1e-5, **WINDOWS)  # the engine's own delete_old: everything swept is old
    _wait(lambda: _rows(pg_url, "SELECT count(*) FROM decisions")[0][0] == 0)
    retention.__exit__(None, None, None)
    without = replicas()
    unpromised = {_route(without, f"made without windows {i}")["decision_id"] for i in range(4)}
    without.__exit__(None, None, None)
    time.sleep(0.6)  # their windows, had they had one, are closed
    again = replicas(**WINDOWS)
    after = _route(again, "made with windows again")["decision_id"]
    _wait(lambda: after in _defaults(pg_url))
    time.sleep(0.6)
    assert not _defaults(pg_url) & unpromised


def test_decisions_made_without_windows_on_one_replica_while_another_swept_on_get_no_default_reward(
        replicas: Callable[..., TestClient], pg_url: str) -> None:
    """A rolling change: replica B restarts without windows while A (with them) still runs and sweeps one more
    decision past the position B noted; A stops, B makes decisions, B restarts with windows (rolled back). The
    noted position, behind the swept one, was dropped as stale and B's decisions got the default reward (4 of 4)."""
    a, b = replicas(**WINDOWS), replicas(**WINDOWS)
    first = _route(a, "made with windows")["decision_id"]
    _wait(lambda: first in _defaults(pg_url))
    b.__exit__(None, None, None)
    b = replicas()
    own = _route(a, "made by A after B's change")["decision_id"]
    _wait(lambda: own in _defaults(pg_url))
    a.__exit__(None, None, None)
    unpromised = {_route(b, f"made without windows {i}")["decision_id"] for i in range(4)}
    b.__exit__(None, None, None)
    time.sleep(0.6)
    again = replicas(**WINDOWS)
    after = _route(again, "made with windows again")["decision_id"]
    _wait(lambda: after in _defaults(pg_url))
    time.sleep(0.6)
    assert not _defaults(pg_url) & unpromised
