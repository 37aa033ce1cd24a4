"""One `bandit-router serve` per SQLite file (`store/serverlock.py`). Two independent servers on one file each
learned only their own feedback and booked only their own decisions against the budgets; a second `serve` is now
refused before it writes anything, naming the first, and so is `migrate`; the readers go on; a `kill -9` leaves no
lock behind; the workers of `serve --workers 2` share the file, and keep it when their parent is killed. The
process tests start real servers on 127.0.0.1; every command they run is bounded (`RUN_S`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from file_modes import under_file_modes
from typer.testing import CliRunner

from bandit_router.cli import app as cli_app
from bandit_router.service.metricsdir import PREFIX, default_parent
from bandit_router.store import SQLiteStore
from bandit_router.store.serverlock import SUFFIX as SERVER_LOCK_SUFFIX
from bandit_router.store.serverlock import DatabaseInUse, ServerLock
from tools.loopback import loopback
from tools.serve_process import ServeProcess, free_port

CLI = [sys.executable, "-m", "bandit_router.cli"]
RUN_S = 60
"""Seconds a command may take before it is killed and the test fails (a second `serve` that is not refused
serves until then)."""
ENV = {k: v for k, v in os.environ.items() if not k.startswith("BANDIT_ROUTER_")} | {
    "BANDIT_ROUTER_LOG_LEVEL": "warning", "BANDIT_ROUTER_SEED": "3"}


def run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`bandit-router args…` in `folder`, killed after `RUN_S` seconds."""
    return subprocess.run([*CLI, *args], cwd=folder, env=ENV, capture_output=True, text=True, timeout=RUN_S)


def second_serve(folder: Path, db: Path) -> subprocess.CompletedProcess[str]:
    return run(folder, "serve", "--db", str(db), "--port", str(free_port()))


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """`start(*args)`: `bandit-router serve --db tmp_path/router.db args…`; every one killed (its group) at the end."""
    started: list[ServeProcess] = []

    def start(*args: str) -> ServeProcess:
        server = ServeProcess(tmp_path, CLI, ["--db", str(tmp_path / "router.db"), *args], env=ENV)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def route(server: ServeProcess, n: int) -> None:
    for i in range(n):
        reply = loopback.post(server.url + "/v1/route", json={"prompt": f"Write a haiku about the sea #{i}"},
                              timeout=30)
        assert reply.status_code == 200, reply.text


def decisions(server: ServeProcess) -> int:
    return int(loopback.get(server.url + "/v1/stats", timeout=30).json()["decisions"])


@pytest.mark.slow
def test_a_second_serve_is_refused_and_a_killed_one_leaves_no_lock(servers: Callable[..., ServeProcess],
                                                                    tmp_path: Path) -> None:
    db = tmp_path / "router.db"
    first = servers()
    first.wait_ready()
    route(first, 3)
    refused = second_serve(tmp_path, db)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    message = " ".join(refused.stderr.split())
    assert f"{db} is already served by bandit-router serve (pid {first.process.pid})" in message
    assert "--workers N" in message and "PostgreSQL" in message
    migrate = run(tmp_path, "migrate", "--db", str(db))
    assert migrate.returncode == 2
    assert f"in use by bandit-router serve (pid {first.process.pid}): stop it first" in " ".join(migrate.stderr.split())
    check = run(tmp_path, "check", "--db", str(db))  # the readers go on
    assert check.returncode == 0 and "verdict: intact" in check.stdout, check.stdout + check.stderr
    export = run(tmp_path, "export", "--db", str(db), "--include-unlabeled")
    assert export.returncode == 0 and len(export.stdout.splitlines()) == 3, export.stderr
    assert decisions(first) == 3  # the first serves on, its state as it was

    first.kill9()  # a crash: the kernel releases its lock
    restarted = servers()
    restarted.wait_ready()
    assert decisions(restarted) == 3


@pytest.mark.slow
def test_workers_share_the_file_and_keep_it_when_their_parent_is_killed(servers: Callable[..., ServeProcess],
                                                                         tmp_path: Path) -> None:
    """`--workers 2` starts (each worker joins the lock of its parent). uvicorn's workers serve on when their
    parent is killed; a new `serve` beside them would be a second server, so it is refused, naming them."""
    db = tmp_path / "router.db"
    server = servers("--workers", "2")
    server.wait_ready(60)
    workers = set()
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:  # a new connection each: the kernel picks the worker
        reply = loopback.get(server.url + "/readyz", headers={"connection": "close"}, timeout=5)
        if reply.status_code == 200:
            workers.add(reply.json()["pid"])
    assert len(workers) == 2, "the second worker did not become ready"
    refused = second_serve(tmp_path, db)
    assert refused.returncode == 2
    assert f"already served by bandit-router serve (pid {server.process.pid})" in " ".join(refused.stderr.split())

    os.kill(server.process.pid, signal.SIGKILL)  # the parent alone
    server.process.wait(10)
    assert loopback.get(server.url + "/readyz", timeout=5).json()["pid"] in workers  # orphans, serving
    refused = second_serve(tmp_path, db)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    message = " ".join(refused.stderr.split())
    if sys.platform == "linux":  # /proc/locks names the processes holding the lock
        pids = ", ".join(map(str, sorted(workers)))
        assert (f"processes {pids}, the workers of a bandit-router serve whose main process (pid "
                f"{server.process.pid}) has exited") in message, message
    else:
        assert "already served" in message

    server.stop()  # SIGKILL to its process group: the workers too
    # and their metrics folder (3 MB in /dev/shm) removed: no later start here would (one worker makes none)
    assert not list(default_parent().glob(f"{PREFIX}{server.process.pid}-*"))
    restarted = servers()
    restarted.wait_ready(60)


@pytest.mark.slow
def test_the_files_make_run_leaves_in_the_repository_are_ignored_by_git(tmp_path: Path) -> None:
    """`make run` serves `./bandit-router.db` from the repository's root, and the files it leaves there (the
    database, its `-wal` and `-shm`, the writers' `-lock`, this lock's `-server`, which is never deleted) are
    ignored by git: `-server` was not, so after the quickstart `git status` showed it and every simulator report
    and experiment run from that clone recorded its commit as `+dirty`. The server is killed (`kill9`, a crash or
    a `kill -9`): a clean stop closes the database and removes `-wal` and `-shm`, which a crash leaves."""
    import shutil

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    server = ServeProcess(tmp_path, CLI, ["--db", "bandit-router.db"], env=ENV)
    try:
        server.wait_ready()
        route(server, 2)
        server.kill9()
    finally:
        server.stop()
    left = sorted(p.name for p in tmp_path.glob("bandit-router.db*"))
    crash = {f"bandit-router.db{suffix}" for suffix in ("", "-wal", "-shm", SERVER_LOCK_SUFFIX)}
    assert crash <= set(left), left
    checked = subprocess.run(["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *left],
                             cwd=root, capture_output=True, text=True, timeout=RUN_S)
    not_ignored = [line.split("\t")[-1] for line in checked.stdout.splitlines() if line.startswith("::")]
    assert not_ignored == [], checked.stdout


def test_a_serve_refused_by_the_lock_creates_and_migrates_nothing(tmp_path: Path) -> None:
    """The lock is claimed before the schema: a refused `serve` or `migrate` leaves no database behind. (This
    process holds the lock here; a second open file of the same process conflicts with it as another's would.)"""
    db = tmp_path / "router.db"
    holder = ServerLock(db)
    holder.claim("serve")
    try:
        for command in (["serve", "--port", str(free_port())], ["migrate"]):
            result = CliRunner().invoke(cli_app, [*command, "--db", str(db)])
            assert result.exit_code == 2, result.output
            assert f"(pid {os.getpid()})" in result.output
            assert not db.exists()
        with pytest.raises(DatabaseInUse, match="already served by bandit-router serve"):
            ServerLock(db).join()  # a worker, while its parent's lock is still exclusive (no such worker exists)
    finally:
        holder.close()
    assert CliRunner().invoke(cli_app, ["migrate", "--db", str(db)]).exit_code == 0  # released: it may


def test_the_shared_lock_lets_workers_join_and_keeps_servers_and_migrate_out(tmp_path: Path) -> None:
    db = tmp_path / "router.db"
    parent, worker = ServerLock(db), ServerLock(db)
    parent.claim("serve")
    parent.share()
    worker.join()
    try:
        for command in ("serve", "migrate"):
            with pytest.raises(DatabaseInUse, match=f"pid {os.getpid()}"):
                ServerLock(db).claim(command)
        parent.close()
        with pytest.raises(DatabaseInUse):  # the worker alone still holds the file
            ServerLock(db).claim("serve")
    finally:
        worker.close()
    again = ServerLock(db)
    again.claim("serve")
    again.close()



def test_a_lock_file_another_user_created_is_locked_read_only(tmp_path: Path) -> None:
    """Root's `migrate` (the upgrade step) created the lock file, 0644 and root's; the service's user may still read
    and write the database and its directory, but could no longer open the lock file for writing, so every later
    `serve` and `migrate` of that user was refused. `flock` needs no write access: it locks the file read-only (the
    holder's record then stays the earlier one). Here the file is read-only to its owner, and the commands run
    under file modes (as root too)."""
    db = tmp_path / "router.db"
    assert run(tmp_path, "migrate", "--db", str(db)).returncode == 0
    lock = tmp_path / "router.db-server"
    before = lock.read_bytes()
    lock.chmod(0o444)
    for command in (["migrate", "--db", str(db)], ["check", "--db", str(db)]):
        result = subprocess.run([*CLI, *command], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                                timeout=RUN_S, preexec_fn=under_file_modes())
        assert result.returncode == 0, result.stdout + result.stderr
    assert lock.read_bytes() == before  # the record of the claimer that could write it
    holder = ServeProcess(tmp_path, CLI, ["--db", str(db)], env=ENV,
                          preexec_fn=under_file_modes())  # locks read-only; its record stays migrate's
    try:
        holder.wait_ready(RUN_S)
        with pytest.raises(DatabaseInUse) as refused:  # named, never told to kill the server as an orphan
            ServerLock(db).claim("migrate")
        message = str(refused.value)
        assert f"processes {holder.process.pid} (the lock file's record" in message and "kill" not in message, message
    finally:
        holder.stop()


def test_a_lock_file_of_zeros_left_by_a_power_loss_is_claimed(tmp_path: Path) -> None:
    """After a power loss some file systems leave a file that was being written with its size and zeros for data:
    `<db>-server` full of NUL bytes was refused as "not bandit-router's lock file", and `serve` would not start
    until an operator deleted it. A file of zeros holds nothing to keep: it is claimed, and its record written."""
    db = tmp_path / "router.db"
    lock = tmp_path / "router.db-server"
    lock.write_bytes(b"\0" * 77)
    result = CliRunner().invoke(cli_app, ["migrate", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert json.loads(lock.read_bytes())["command"] == "migrate"
    lock.write_bytes(b"\0" * 76 + b"x")  # anything else in it is still refused, and kept
    refused = CliRunner().invoke(cli_app, ["migrate", "--db", str(db)])
    assert refused.exit_code == 2 and "is not bandit-router's lock file" in " ".join(refused.output.split())
    assert lock.read_bytes() == b"\0" * 76 + b"x"


@pytest.mark.parametrize("kind", ["database", "symlink"])
def test_a_file_of_the_lock_files_name_that_is_not_one_is_refused_untouched(tmp_path: Path, kind: str) -> None:
    """`<db>-server` was opened (following a symbolic link) and overwritten with the lock record whatever it was:
    `serve --db router` wiped a database called `router-server`, or a link's target. A file of that name that is not
    an empty or lock-record file, or a link, is refused now, naming it, and left as it was."""
    other = tmp_path / "router-server"
    SQLiteStore(other).prepare()  # a database of that name
    if kind == "symlink":
        victim = tmp_path / "victim.txt"
        victim.write_text("keep me\n", encoding="utf-8")
        other.unlink()
        other.symlink_to(victim)
    target = other.resolve()
    before = target.read_bytes()
    reason = "symbolic link" if kind == "symlink" else "is not bandit-router's lock file"
    migrated = CliRunner().invoke(cli_app, ["migrate", "--db", str(tmp_path / "router")])
    served = second_serve(tmp_path, tmp_path / "router")  # a process: unrefused, it would serve until RUN_S
    for code, output in ((migrated.exit_code, migrated.output), (served.returncode, served.stderr)):
        message = " ".join(output.split())
        assert code == 2 and str(other) in message and reason in message, message
    assert target.read_bytes() == before
