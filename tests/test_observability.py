"""What an operator watching a real `bandit-router serve` process sees (its log, `/metrics`, `/readyz`) when
something goes wrong: said once, when it starts and when it ends, not once per retry."""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tools.pg_server import PgServer
from tools.serve_process import ServeProcess

SERVE = [sys.executable, "-m", "bandit_router.cli"]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(*args: str) -> ServeProcess:
        server = ServeProcess(tmp_path, SERVE, args)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _ready(server: ServeProcess) -> int:
    return httpx.get(server.url + "/readyz", timeout=5).status_code


def test_a_postgresql_outage_is_logged_when_it_starts_and_ends_not_at_every_reconnection(
    serve: Callable[..., ServeProcess], pg_server: PgServer, pg_url: str
) -> None:
    """Drill: PostgreSQL stopped under `serve` for 6 s. Before, the log said nothing of the service's own about
    readiness (neither that it stopped serving nor that it started again), while psycopg's pool logged every failed
    reconnection, two to four records a second (about 8,000 an hour of outage, drowning everything else). Now the
    service logs the outage once when `/readyz` turns 503 (with the reason) and once when it is ready again, and
    each of the pool's messages at most once a minute."""
    server = serve("--db", pg_url)
    httpx.post(server.url + "/v1/route", json={"prompt": "before"}, timeout=5).raise_for_status()
    pg_server.down()
    try:
        _wait(lambda: _ready(server) == 503)
        time.sleep(6.0)  # many of the pool's reconnection attempts (several a second)
    finally:
        pg_server.up()
    _wait(lambda: _ready(server) == 200)
    httpx.post(server.url + "/v1/route", json={"prompt": "after"}, timeout=5).raise_for_status()
    _wait(lambda: "ready again" in server.logpath.read_text())  # the watchdog's next round (0.5 s)
    log = server.logpath.read_text()
    pool = Counter(re.sub(r"\d+", "N", line.split(" psycopg.pool: ", 1)[1][:40])
                   for line in log.splitlines() if " psycopg.pool: " in line)
    assert pool and max(pool.values()) == 1, pool
    down = [line for line in log.splitlines() if "bandit_router.service: not ready: database unreachable" in line]
    assert len(down) == 1 and "ERROR" in down[0] and "/readyz 503" in down[0], log
    assert len(re.findall(r"WARNING bandit_router\.service: ready again: the database answers", log)) == 1, log
    assert "pg-test-secret" not in log  # tools.pg_server.PASSWORD: never in the log
