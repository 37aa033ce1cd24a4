"""What an operator watching a real `bandit-router serve` process sees (its log, `/metrics`, `/readyz`) when
something goes wrong: said once, when it starts and when it ends, not once per retry."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import ConnectionPool

from bandit_router.store.location import DatabaseURL
from bandit_router.store.postgres import POOL_NAME, PostgresStore
from tools.loopback import loopback
from tools.pg_server import PgServer
from tools.serve_process import ServeProcess

SERVE = [sys.executable, "-m", "bandit_router.cli"]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServeProcess:
        server = ServeProcess(tmp_path, SERVE, args, env=env)
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
    return loopback.get(server.url + "/readyz", timeout=5).status_code


LOG_ZONES = ("UTC", "Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns", "Pacific/Kiritimati", "Etc/GMT+12",
             "America/New_York", "Australia/Lord_Howe")


def test_log_lines_carry_their_time_in_utc_whatever_the_hosts_zone() -> None:
    """The server's log lines (`configure_logging`, what `serve` and each worker install) wrote the host's local
    time without its offset (`2026-11-28 15:26:32,146` under TZ=Asia/Kolkata for 09:56 UTC): unlike every other time
    of the service, two hosts in other zones could not be matched, and the hour a daylight-saving change repeats
    wrote two times alike; uvicorn's own lines had no time. Now ISO 8601 in UTC with `Z` on both: the same line in
    every zone, for a leap day and for the two 01:30s of New York's fall-back night (one process; `TZ` changed with
    `time.tzset`)."""
    code = (
        "import logging, logging.config, os, sys, time\n"
        "from bandit_router.service.logs import configure_logging, uvicorn_log_config\n"
        "configure_logging('info')\n"
        "logging.config.dictConfig(uvicorn_log_config())  # as serve passes it to uvicorn\n"
        "for zone in sys.argv[1:]:\n"
        "    os.environ['TZ'] = zone\n"
        "    time.tzset()\n"
        "    for name in ('bandit_router.service', 'uvicorn.error'):\n"
        "        for created in (951825600.25, 1793511000.5, 1793514600.75):\n"
        "            logging.getLogger(name).handle(logging.makeLogRecord({'name': name, 'levelno': 20,\n"
        "                'levelname': 'INFO', 'msg': zone, 'created': created, 'msecs': created % 1 * 1000}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *LOG_ZONES], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TZ": "Asia/Kolkata"})
    assert done.returncode == 0, done.stderr
    stamps = ("2000-02-29T12:00:00.250Z", "2026-11-01T05:30:00.500Z", "2026-11-01T06:30:00.750Z")
    expected = [line for zone in LOG_ZONES for line in (
        *(f"{stamp} INFO bandit_router.service: {zone}" for stamp in stamps),
        *(f"{stamp} INFO:     {zone}" for stamp in stamps))]  # uvicorn's own lines: they had no time
    assert done.stderr.splitlines() == expected


def test_a_postgresql_outage_is_logged_when_it_starts_and_ends_not_at_every_reconnection(
    serve: Callable[..., ServeProcess], pg_server: PgServer, pg_url: str
) -> None:
    """Drill: PostgreSQL stopped under `serve` for 6 s. Before, the log said nothing of the service's own about
    readiness (neither that it stopped serving nor that it started again), while psycopg's pool logged every failed
    reconnection, two to four records a second (about 8,000 an hour of outage, drowning everything else). Now the
    service logs the outage once when `/readyz` turns 503 (with the reason) and once when it is ready again, and
    each of the pool's messages at most once a minute."""
    server = serve("--db", pg_url)
    loopback.post(server.url + "/v1/route", json={"prompt": "before"}, timeout=5).raise_for_status()
    pg_server.down()
    try:
        _wait(lambda: _ready(server) == 503)
        time.sleep(6.0)  # many of the pool's reconnection attempts (several a second)
    finally:
        pg_server.up()
    _wait(lambda: _ready(server) == 200)
    loopback.post(server.url + "/v1/route", json={"prompt": "after"}, timeout=5).raise_for_status()
    _wait(lambda: "ready again" in server.logpath.read_text())  # the watchdog's next round (0.5 s)
    log = server.logpath.read_text()
    pool = Counter(re.sub(r"\d+", "N", line.split(" psycopg.pool: ", 1)[1][:40])
                   for line in log.splitlines() if " psycopg.pool: " in line)
    assert pool and max(pool.values()) == 1, pool
    down = [line for line in log.splitlines() if "bandit_router.service: not ready: database unreachable" in line]
    assert len(down) == 1 and "ERROR" in down[0] and "/readyz 503" in down[0], log
    assert len(re.findall(r"WARNING bandit_router\.service: ready again: the database answers", log)) == 1, log
    assert "pg-test-secret" not in log  # tools.pg_server.PASSWORD: never in the log


def _ready_pids(server: ServeProcess, workers: int, timeout: float = 60.0) -> set[int]:
    """The pids of the workers that answered `/readyz` 200 (a new connection each, to a worker at random) until
    `workers` of them had, or `timeout` passed."""
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(pids) < workers and time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            reply = loopback.get(server.url + "/readyz", headers={"connection": "close"}, timeout=5)
            if reply.status_code == 200:
                pids.add(reply.json()["pid"])
        time.sleep(0.05)
    return pids


def test_a_worker_that_cannot_start_during_a_postgresql_outage_does_not_stop_the_server(
    serve: Callable[..., ServeProcess], pg_server: PgServer, pg_url: str
) -> None:
    """`serve --workers 2` on PostgreSQL: a worker dies (SIGKILL) while the database is down, and uvicorn starts
    another, whose start-up cannot reach the database. uvicorn reads a failed start-up as a broken application: it
    stopped the other worker too and exited with status 0 (a drill, /tmp/workers/pg_outage_restart.py: the server
    gone 6 s into the outage, and a supervisor restarting on failure would not restart it). Now such a worker says
    why and exits with status 1 after 5 s, and uvicorn starts another, until the database answers: the server
    outlives the outage and both workers serve after it."""
    server = serve("--db", pg_url, "--workers", "2", "--log-level", "info")
    before = _ready_pids(server, 2)
    assert len(before) == 2, server.log_tail()
    pg_server.down()
    try:
        os.kill(min(before), signal.SIGKILL)
        _wait(lambda: server.process.poll() is not None or "could not start" in server.logpath.read_text()
              or "Application startup failed" in server.logpath.read_text(), timeout=60)
        time.sleep(1.0)  # what uvicorn's parent does after it (it looks every 0.5 s)
        assert server.process.poll() is None, server.log_tail()
    finally:
        pg_server.up()
    after = _ready_pids(server, 2, timeout=90)  # the other worker ready again, and a new one started
    assert len(after) == 2 and after != before, (after, before, server.log_tail())
    assert server.process.poll() is None
    log = server.logpath.read_text()
    assert re.search(r"ERROR bandit_router\.service: this worker \(pid \d+\) could not start: PostgreSQL .* "
                     r"cannot connect: .*; it exits in 5 s and another one is started", log), log


def test_the_log_says_why_a_worker_ended_at_warning(serve: Callable[..., ServeProcess], tmp_path: Path) -> None:
    """`serve --workers 2`: a worker killed (SIGKILL, as the kernel's out-of-memory killer does) and one hung
    (SIGSTOP) until uvicorn kills it after its health check (`worker_healthcheck_s`, 8 s here: 30 s by default).
    uvicorn logged each as `Child process [pid] died` at INFO, without why, below the WARNING an operator watches.
    Now the server logs a WARNING with the signal, or the health check, before uvicorn starts another."""
    server = serve("--db", str(tmp_path / "router.db"), "--workers", "2",
                   env={"BANDIT_ROUTER_WORKER_HEALTHCHECK_S": "8"})
    first = _ready_pids(server, 2)
    assert len(first) == 2, server.log_tail()
    killed = min(first)
    os.kill(killed, signal.SIGKILL)
    said = (f"WARNING bandit_router.service: worker {killed} was killed by SIGKILL (the kernel's out-of-memory "
            "killer, or a kill -9: see the kernel log); uvicorn starts another")
    _wait(lambda: said in server.logpath.read_text(), timeout=30)
    second = _ready_pids(server, 2)
    assert len(second) == 2 and killed not in second, server.log_tail()
    hung = max(second - first)  # the new worker
    os.kill(hung, signal.SIGSTOP)
    said = (f"WARNING bandit_router.service: worker {hung} left uvicorn's health check unanswered for 8 s (hung, or "
            "stopped): killed; uvicorn starts another")
    _wait(lambda: said in server.logpath.read_text(), timeout=90)
    assert len(_ready_pids(server, 2)) == 2, server.log_tail()


def test_a_worker_that_dies_while_its_health_check_waits_is_replaced_at_once(
    serve: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    """`serve --workers 2`: a worker stopped (SIGSTOP) long enough for uvicorn's parent to ping it, then killed while
    that ping waits for its pong. The parent kept its own copy of the worker's end of the pipe, so the pipe stayed
    open and the parent waited out the whole health check (30 s by default) before it started another worker; a
    worker exiting on its own (its start-up failed on the database, `workergate.start_again`) met the same wait
    when a ping was under way (once in a drill: a replacement 35 s after "it exits in 5 s"). Now the worker's death
    ends the wait (the parent closes its copy once the worker has started): replaced within 10 s, and the log says
    how it ended, not that it was hung."""
    server = serve("--db", str(tmp_path / "router.db"), "--workers", "2")
    first = _ready_pids(server, 2)
    assert len(first) == 2, server.log_tail()
    victim = min(first)
    os.kill(victim, signal.SIGSTOP)
    time.sleep(1.5)  # the parent pings every 0.5 s: its ping to the stopped worker waits now
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    said = f"WARNING bandit_router.service: worker {victim} was killed by SIGKILL"
    _wait(lambda: said in server.logpath.read_text(), timeout=40)
    assert time.monotonic() - killed < 10, server.log_tail()
    second = _ready_pids(server, 2)
    assert len(second) == 2 and victim not in second, server.log_tail()
    assert "health check unanswered" not in server.logpath.read_text()


def _families(text: str) -> dict[str, Any]:
    """The scrape parsed as Prometheus does (a malformed line, a family given twice: an error)."""
    families: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in families, f"{family.name} twice"
        families[family.name] = family
    return families


def _total(families: dict[str, Any], name: str, sample: str, **labels: str) -> float:
    return sum(s.value for s in families[name].samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def test_with_two_workers_every_scrape_counts_every_workers_requests(serve: Callable[..., ServeProcess],
                                                                     tmp_path: Path) -> None:
    """`serve --workers 2`: both workers listen on one port, so a scrape reaches one of them, at random. Before,
    each counted only what it served itself (a drill: 31 of 40 decisions on every scrape), with no way to reach
    the other: `/metrics` undercounted, and a Prometheus scraping it saw counters jump between the workers' values
    (read as resets). Now the workers share prometheus-client's multiprocess folder and every scrape sums them.
    The requests go from 8 clients at once, each on a new connection, so that both workers serve some."""
    server = serve("--db", str(tmp_path / "router.db"), "--workers", "2")
    close = {"connection": "close"}

    def route(i: int) -> str:
        reply = loopback.post(server.url + "/v1/route", json={"prompt": f"question {i}"}, headers=close, timeout=10)
        reply.raise_for_status()
        return str(reply.json()["decision_id"])

    def feedback(decision_id: str) -> None:
        loopback.post(server.url + "/v1/feedback", json={"decision_id": decision_id, "quality": 0.5, "cost_usd": 0.01},
                      headers=close, timeout=10).raise_for_status()

    def bad(i: int) -> int:
        return loopback.post(server.url + "/v1/route", content=b"{",
                             headers={**close, "content-type": "application/json"}, timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(route, range(80)))
        list(pool.map(feedback, ids[:30]))
        assert set(pool.map(bad, range(8))) == {422}
    for _ in range(6):  # each scrape may reach either worker
        families = _families(loopback.get(server.url + "/metrics", headers=close, timeout=10).text)
        assert _total(families, "bandit_router_decisions", "bandit_router_decisions_total") == 80
        assert _total(families, "bandit_router_feedback", "bandit_router_feedback_total", status="applied") == 30
        assert _total(families, "bandit_router_learned_cost_usd", "bandit_router_learned_cost_usd_total") \
            == pytest.approx(0.3)
        assert _total(families, "bandit_router_route_latency_seconds", "bandit_router_route_latency_seconds_count") \
            == 80
        requests = "bandit_router_http_requests", "bandit_router_http_requests_total"
        assert _total(families, *requests, route="/v1/route", code="200") == 80
        assert _total(families, *requests, route="/v1/route", code="422") == 8
        assert _total(families, *requests, route="/v1/feedback", code="200") == 30
        assert families["bandit_router_ready"].samples[0].value == 1.0


def test_with_two_workers_a_family_without_samples_yet_is_listed_as_in_one_process(
    serve: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    """Before any request, one process lists every family (`# HELP`, `# TYPE`; a label-less one with its zero
    values); with workers, prometheus-client's multiprocess collector read only the files, where a labelled family
    is written with its first sample: `bandit_router_decisions_total`, the feedback, the gateway's and the named
    routers' families were missing from the scrape until then. They are listed alike now (the `_created` series
    are one process's only: the multiprocess mode has none), and still once each, which the parser checks."""
    one = serve("--db", str(tmp_path / "one.db"))
    two = serve("--db", str(tmp_path / "two.db"), "--workers", "2")
    close = {"connection": "close"}
    alone = _families(loopback.get(one.url + "/metrics", headers=close, timeout=10).text)
    assert alone["bandit_router_decisions"].samples == [] and alone["bandit_router_upstream_seconds"].samples == []
    for _ in range(4):  # each scrape may reach either worker
        workers = _families(loopback.get(two.url + "/metrics", headers=close, timeout=10).text)
        listed = {name: {s.name for s in family.samples} for name, family in workers.items()}
        expected = {name: {s.name for s in family.samples if not s.name.endswith("_created")}
                    for name, family in alone.items() if not name.endswith("_created")}
        assert listed.keys() == expected.keys(), (expected.keys() - listed.keys(), listed.keys() - expected.keys())
        assert workers["bandit_router_decisions"].type == "counter"
        assert workers["bandit_router_upstream_seconds"].type == "histogram"
        assert listed["bandit_router_route_latency_seconds"] == expected["bandit_router_route_latency_seconds"]


def _limit_file_size() -> None:
    """(In the server's process) files may not grow past `FILE_LIMIT` bytes: a full disk, as SQLite sees it."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, resource.RLIM_INFINITY))


FILE_LIMIT = 400_000


def test_a_database_that_refuses_writes_turns_readyz_503_with_the_reason_until_it_takes_them_again(
    tmp_path: Path
) -> None:
    """Drill: the SQLite files may not grow past 400 kB (`RLIMIT_FSIZE`: a full disk as the database sees it).
    Before, once the WAL and the file were full every route answered 503 while `/readyz` said ready and
    `bandit_router_ready` was 1, for as long as it lasted: a load balancer kept sending traffic to a process that
    could store nothing, and the operator's readiness alert stayed quiet. Now `/readyz` is 503 ("database refuses
    writes" and the database's error) from the first failed write transaction until one commits; with no request
    coming, the writer tries a one-row write every second, so the process turns ready again by itself once the
    limit is lifted, and the log says both."""
    server = ServeProcess(tmp_path, SERVE, ["--db", str(tmp_path / "router.db")], preexec_fn=_limit_file_size)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=10) as client:
            failed_in_a_row = 0
            for i in range(5000):  # until the checkpoints cannot free the WAL either: every write fails
                reply = client.post("/v1/route", json={"prompt": "a question that takes some room " * 20 + str(i)})
                failed_in_a_row = failed_in_a_row + 1 if reply.status_code == 503 else 0
                if failed_in_a_row == 50:
                    break
            assert failed_in_a_row == 50
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "the last write failed: " in ready.json()["message"], ready.text
            assert "bandit_router_ready 0.0" in client.get("/metrics").text
            resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE,
                             (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # space again
            _wait(lambda: client.get("/readyz").status_code == 200)  # no request needed
            assert client.post("/v1/route", json={"prompt": "stored again"}).status_code == 200
            assert "bandit_router_ready 1.0" in client.get("/metrics").text
        _wait(lambda: "ready again" in server.logpath.read_text())
        log = server.logpath.read_text()
        assert log.count("not ready: the last write failed: ") == 1, log
    finally:
        server.stop()


def test_malformed_requests_are_logged_once_a_minute_not_once_each(serve: Callable[..., ServeProcess],
                                                                   tmp_path: Path) -> None:
    """A scanner (or a broken client) sending requests that are not HTTP: each gets its 400, and before, each
    also logged uvicorn's WARNING "Invalid HTTP request received." (a line per request, at whatever rate it
    sends). Now the message is logged once a minute, and the replies are unchanged."""
    server = serve("--db", str(tmp_path / "router.db"))
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
            conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.1 400 ")
    assert loopback.get(server.url + "/healthz", timeout=5).status_code == 200  # served after them, so logged before
    assert server.logpath.read_text().count("Invalid HTTP request received.") == 1


def test_the_malformed_requests_not_logged_are_counted_at_the_stop(serve: Callable[..., ServeProcess],
                                                                   tmp_path: Path) -> None:
    """The count of the records a rate limit dropped was said only by the next one after its minute: when a scanner
    stopped within the minute, the log never said how many came (review). The stop says it now."""
    server = serve("--db", str(tmp_path / "router.db"))
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
            conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.1 400 ")
    server.terminate()  # uvicorn exits by the signal once it has shut down (status -15)
    log = server.logpath.read_text()
    assert "Application shutdown complete" in log, log
    assert log.count("Invalid HTTP request received.") == 2, log
    assert "19 more like this were not logged after the last one: Invalid HTTP request received." in log


def test_the_pool_filter_limits_bandit_routers_pool_not_an_embedding_applications(
        caplog: pytest.LogCaptureFixture) -> None:
    """The rate limit on psycopg's pool log (installed by a `PostgresStore`) is on the process's `psycopg.pool`
    logger: before, it also limited an embedding application's own pool, whose failed connections were said once a
    minute, merged by template with bandit-router's (review, reproduced). Only the records naming bandit-router's
    pool are limited now. Both pools try a server that is down (port 1) until each has failed twice."""
    caplog.set_level(logging.WARNING, logger="psycopg.pool")
    PostgresStore(DatabaseURL("postgresql://router:pw@127.0.0.1:1/router"))  # installs the filter; not opened
    pools = [ConnectionPool("postgresql://app:pw@127.0.0.1:1/app", min_size=1, open=False, name=name,
                            reconnect_timeout=30) for name in ("the-apps-pool", POOL_NAME)]
    try:
        for pool in pools:
            pool.open(wait=False)
        _wait(lambda: all(pool.get_stats().get("connections_errors", 0) >= 2 for pool in pools), timeout=30)
    finally:
        for pool in pools:
            pool.close()
    said = Counter(record.args[0] for record in caplog.records
                   if record.name == "psycopg.pool" and str(record.msg).startswith("error connecting in")
                   and isinstance(record.args, tuple))
    assert said["the-apps-pool"] >= 2, said
    assert said[POOL_NAME] <= 1, said
