"""The folder of `serve --workers N`'s metrics files (`bandit_router.service.metricsdir`) and which processes use
prometheus-client's multiprocess mode: real `serve` processes, and a small tmpfs for a full file system (root)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bandit_router.service.metricsdir import LOCK_NAME, PREFIX, remove_stale
from tools.loopback import loopback
from tools.serve_process import ServeProcess, free_port

SERVE = [sys.executable, "-m", "bandit_router.cli"]
CLOSE = {"connection": "close"}


def _decisions(text: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "bandit_router_decisions_total")


APPLICATION = """
import json
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from bandit_router.service.metrics import Metrics

class Decision:
    model = "m"

own = Counter("app_jobs", "the application's own counter")  # in its multiprocess folder
a, b = Metrics(), Metrics()
for _ in range(3):
    a.decision_stored(Decision())
for _ in range(2):
    b.decision_stored(Decision())
own.inc(7)
folder = CollectorRegistry()
MultiProcessCollector(folder)

def total(text, name):
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)

from prometheus_client import generate_latest
print(json.dumps([total(a.render().decode(), "bandit_router_decisions_total"),
                  total(b.render().decode(), "bandit_router_decisions_total"),
                  total(generate_latest(folder).decode(), "app_jobs_total"),
                  total(generate_latest(folder).decode(), "bandit_router_decisions_total")]))
"""


def test_an_operators_multiprocess_folder_does_not_make_two_apps_in_one_process_share_counts(tmp_path: Path) -> None:
    """An application that runs its own prometheus-client multiprocess setup (PROMETHEUS_MULTIPROC_DIR set before
    prometheus-client is imported) and embeds two apps: each `Metrics` took the variable for `serve`'s and rendered
    the folder's sums, and their values were the folder's, one key for both, so each new value started from the
    other's count (review: the second app showed 5 of its 2). Each app counts its own now, in memory, and the
    application's own metrics still go to its folder, which holds none of bandit-router's."""
    done = subprocess.run([sys.executable, "-c", APPLICATION], env={**os.environ, "PROMETHEUS_MULTIPROC_DIR":
                          str(tmp_path)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [3, 2, 7, 0]


def test_one_worker_serve_ignores_an_operators_multiprocess_folder(tmp_path: Path) -> None:
    """`serve` (one process) started with the operator's PROMETHEUS_MULTIPROC_DIR (set for processes of their
    own): it read and wrote that folder, so a restart's /metrics carried the earlier run's counts (review: 5
    decisions before any request). Its metrics are its own now, and it leaves the folder alone."""
    theirs = tmp_path / "operator-metrics"
    theirs.mkdir()
    counts = []
    for run in range(2):
        server = ServeProcess(tmp_path, SERVE, ["--db", str(tmp_path / "router.db")],
                              env={"PROMETHEUS_MULTIPROC_DIR": str(theirs)}, log_name=f"run{run}")
        try:
            server.wait_ready()
            for i in range(5 if run == 0 else 0):
                loopback.post(server.url + "/v1/route", json={"prompt": f"q{i}"}, timeout=10).raise_for_status()
            counts.append(_decisions(loopback.get(server.url + "/metrics", timeout=10).text))
        finally:
            server.stop()
    assert counts == [5, 0]
    assert list(theirs.iterdir()) == []


def _workers_folder(server: ServeProcess, parent: Path) -> Path:
    """The metrics folder `server` made in `parent` (named with its pid)."""
    found = list(parent.glob(f"{PREFIX}{server.process.pid}-*"))
    assert len(found) == 1, found
    return found[0]


def test_a_start_removes_the_metrics_folder_a_killed_server_left_and_never_a_live_ones(tmp_path: Path) -> None:
    """A `serve --workers 2` killed with SIGKILL left its metrics folder in /tmp for good (every test run left
    some). The next start removes the folders whose server and workers are gone (each holds `owner.lock`, locked
    while any of them lives); a running server's folder stays, and it goes on counting."""
    parent = tmp_path / "metrics"
    parent.mkdir()
    env = {"BANDIT_ROUTER_METRICS_DIR": str(parent)}
    killed = ServeProcess(tmp_path, SERVE, ["--db", str(tmp_path / "a.db"), "--workers", "2"], env=env,
                          log_name="killed")
    try:
        killed.wait_ready()
        left = _workers_folder(killed, parent)
        killed.kill9()
    finally:
        killed.stop()
    assert (left / LOCK_NAME).exists()
    live = ServeProcess(tmp_path, SERVE, ["--db", str(tmp_path / "b.db"), "--workers", "2"], env=env,
                        log_name="live")
    try:
        live.wait_ready()
        assert not left.exists()
        mine = _workers_folder(live, parent)
        assert remove_stale(parent) == [] and mine.exists()  # another start's look: the live folder stays
        loopback.post(live.url + "/v1/route", json={"prompt": "q"}, headers=CLOSE, timeout=10).raise_for_status()
        assert _decisions(loopback.get(live.url + "/metrics", headers=CLOSE, timeout=10).text) == 1
        assert live.terminate() == 0
    finally:
        live.stop()
    assert not mine.exists()


def test_the_tests_stop_of_a_workers_server_removes_its_metrics_folder(tmp_path: Path) -> None:
    """`ServeProcess.stop()` (every server-process test's end) killed the group with SIGKILL, so each `--workers`
    server a test stopped left its metrics folder (3 MB in /dev/shm) until the next such start. It stops the server
    as an operator does first (SIGTERM, then a wait): the server removes its folder. (A server killed first keeps
    its own: `test_a_start_removes_the_metrics_folder_a_killed_server_left_and_never_a_live_ones`.)"""
    parent = tmp_path / "metrics"
    parent.mkdir()
    server = ServeProcess(tmp_path, SERVE, ["--db", str(tmp_path / "a.db"), "--workers", "2"],
                          env={"BANDIT_ROUTER_METRICS_DIR": str(parent)})
    try:
        server.wait_ready(60)
        mine = _workers_folder(server, parent)
        loopback.post(server.url + "/v1/route", json={"prompt": "q"}, headers=CLOSE, timeout=10).raise_for_status()
    finally:
        server.stop()
    assert server.process.returncode == 0, server.log_tail()
    assert not mine.exists() and list(parent.iterdir()) == []


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")


@needs_root
def test_workers_keep_answering_when_the_metrics_file_system_fills_after_the_start(tmp_path: Path) -> None:
    """prometheus-client maps its files sparsely: on a full file system a worker's first write to a new page was a
    SIGBUS, uvicorn restarted the worker, which died again (review: every worker, in a loop; the port stopped
    answering). Each worker allocates its files' first 512 KiB as it starts now, so filling the file system
    afterwards takes no page from it: requests that add label values (new entries) are all answered, no worker
    dies."""
    with _tmpfs(tmp_path / "tiny", "12m") as tiny:
        server = ServeProcess(tmp_path, SERVE, ["--db", str(tmp_path / "router.db"), "--workers", "2"],
                              env={"BANDIT_ROUTER_METRICS_DIR": str(tiny)})
        try:
            server.wait_ready()
            deadline = time.monotonic() + 60  # both workers started (one answering is enough to be ready)
            while server.logpath.read_text(errors="replace").count("Application startup complete") < 2:
                assert time.monotonic() < deadline and server.process.poll() is None, server.log_tail()
                time.sleep(0.05)
            _fill(tiny)
            codes: dict[int, int] = {}
            with httpx.Client(base_url=server.url, timeout=10, headers=CLOSE) as client:
                for i in range(300):  # new label values: routes, codes
                    if i % 3 == 0:
                        reply = client.post("/v1/route", json={"prompt": f"q{i}"})
                    elif i % 3 == 1:
                        reply = client.get(f"/nope{i % 7}")
                    else:
                        reply = client.post("/v1/feedback", json={"decision_id": "x" * (i % 40 + 1), "quality": 1})
                    codes[reply.status_code] = codes.get(reply.status_code, 0) + 1
            scrape = loopback.get(server.url + "/metrics", headers=CLOSE, timeout=10).text
            assert _decisions(scrape) == 100
            assert codes.get(200) == 100 and sum(codes.values()) == 300
            assert "Child process" not in server.logpath.read_text(errors="replace")  # uvicorn: "... died"
            assert server.terminate() == 0
        finally:
            server.stop()


@needs_root
def test_serve_with_workers_refuses_to_start_when_the_metrics_folder_has_no_room(tmp_path: Path) -> None:
    """A metrics folder's file system too small for the workers' files: the workers died of SIGBUS as they started
    and were started again (review: 'died' over and over, never ready). `serve` refuses now, exit status 2,
    naming the folder, what is free and what it needs, before it creates the database."""
    with _tmpfs(tmp_path / "tiny", "4m") as tiny:
        start = subprocess.Popen([*SERVE, "serve", "--db", str(tmp_path / "router.db"), "--workers", "2"],
                                 cwd=tmp_path, env={**os.environ, "BANDIT_ROUTER_METRICS_DIR": str(tiny)},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, stderr = start.communicate(timeout=60)
        finally:
            with contextlib.suppress(OSError):
                os.killpg(start.pid, signal.SIGKILL)  # before the fix: its workers, dying again and again
            start.wait(10)
    assert start.returncode == 2, stderr
    assert f"metrics_dir: {tiny} has " in stderr and "MiB free; 2 workers need" in stderr
    assert not (tmp_path / "router.db").exists()


def test_serve_with_workers_refused_for_a_port_in_use_leaves_no_metrics_folder(tmp_path: Path) -> None:
    """A start refused because its port is taken (exit status 2, the port named) made its workers' metrics folder
    before the port check: it removes it on the way out, so refused starts do not pile folders up."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*SERVE, "serve", "--db", str(tmp_path / "router.db"), "--workers", "2", "--port",
                               str(port)], cwd=tmp_path, env={**os.environ, "BANDIT_ROUTER_METRICS_DIR": str(folder)},
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"port: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert list(folder.iterdir()) == []


def test_serve_exits_with_a_failure_status_when_its_workers_cannot_start(tmp_path: Path) -> None:
    """A worker whose start-up fails (here its metrics files find the file system full: a sitecustomize makes
    `posix_fallocate` fail with ENOSPC in spawned processes only) makes uvicorn stop every worker, and `serve` then
    exited with status 0, as after a SIGTERM: a supervisor that restarts on failure (systemd's `on-failure`,
    Docker's `on-failure`) took the stop for a clean one. Now `serve` exits with status 3, as one process whose
    start-up fails does."""
    site = tmp_path / "full"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import errno\nimport os\nimport sys\n\n"
        "if '--multiprocessing-fork' in sys.argv:  # a worker uvicorn spawned\n"
        "    def full(fd, offset, length):\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n\n"
        "    os.posix_fallocate = full\n", encoding="utf-8")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BANDIT_ROUTER_")}
    start = subprocess.Popen([*SERVE, "serve", "--db", str(tmp_path / "router.db"), "--workers", "2", "--port",
                              str(free_port())], cwd=tmp_path, env={**clean, "PYTHONPATH": path},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = start.communicate(timeout=120)
    finally:
        with contextlib.suppress(OSError):
            os.killpg(start.pid, signal.SIGKILL)
        start.wait(10)
    assert "cannot allocate this worker's metrics files" in stderr and "failed to start" in stderr, stderr
    assert start.returncode == 3, stderr


def _ready_workers(server: ServeProcess, timeout: float = 60.0) -> set[int]:
    """The pids of two workers that answered `/readyz` 200 (a new connection each), or fewer after `timeout`."""
    ready: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(ready) < 2 and time.monotonic() < deadline and server.process.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            reply = loopback.get(server.url + "/readyz", headers=CLOSE, timeout=5)
            if reply.status_code == 200:
                ready.add(reply.json()["pid"])
        time.sleep(0.05)
    return ready


@needs_root
def test_workers_started_in_place_of_dead_ones_take_their_metrics_files(tmp_path: Path) -> None:
    """Each worker uvicorn started in place of a dead one (killed: out of memory, a crash) had a new pid, so new
    metrics files (1.5 MiB), and the dead one's stayed for its counts: on a 12 MiB tmpfs the seventh replacement
    could not allocate its files, failed its start, and uvicorn stopped the server (/tmp/workers/
    replacements_fill.py). Files are named after a worker's slot now, which a replacement takes over with the
    files: after eight replacements the folder holds two workers' files, the server serves, and every decision
    is still counted."""
    with _tmpfs(tmp_path / "tiny", "12m") as tiny:
        server = ServeProcess(tmp_path, SERVE, ["--db", str(tmp_path / "router.db"), "--workers", "2"],
                              env={"BANDIT_ROUTER_METRICS_DIR": str(tiny)})
        try:
            server.wait_ready()
            routed = 0
            for _ in range(8):
                ready = _ready_workers(server)
                assert len(ready) == 2, server.log_tail()
                for i in range(5):
                    reply = loopback.post(server.url + "/v1/route", json={"prompt": f"q{i}"}, headers=CLOSE,
                                          timeout=10)
                    routed += reply.status_code == 200
                os.kill(min(ready), signal.SIGKILL)
            assert len(_ready_workers(server)) == 2, server.log_tail()
            assert routed == 40
            assert _decisions(loopback.get(server.url + "/metrics", headers=CLOSE, timeout=10).text) == 40
            (folder,) = tiny.iterdir()
            assert sorted(p.name for p in folder.glob("*.db")) == sorted(
                f"{kind}_w{slot}.db" for kind in ("counter", "histogram", "gauge_sum") for slot in (0, 1))
        finally:
            server.stop()
