"""A throwaway PostgreSQL server on 127.0.0.1 for the tests and the benchmarks: Debian's binaries
(`/usr/lib/postgresql/*/bin/initdb`, `pg_ctl`), a data directory in a fresh temporary folder, a free port.

PostgreSQL refuses to run as root (CI runs as root): then every server command runs as an unprivileged user
(`postgres` when the Debian package created it, else `bandit-pg`, created with `useradd`) through `runuser`, and
the temporary folder belongs to that user. The server trusts local connections (it listens on loopback only) and
is started with `fsync` on, as a production server would be (the benchmarks), or off (the tests: a clean
restart still writes everything; only a crash of the machine would lose data, and no test crashes it).

    server = PgServer.start()
    url = server.create_database("t1")      # postgresql://bandit:…@127.0.0.1:PORT/t1
    server.restart()                        # fast shutdown, then start: clients see their connections drop
    server.pause(); server.resume()         # every server process frozen, then thawed: nothing answers meanwhile
    server.stop()
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

USER = "bandit"
PASSWORD = "pg-test-secret-9d2f"
"""The test role's password: tests check it never reaches a log line, an error or a response."""


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> str | None:
    """The user to run the server as: None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "bandit-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "bandit-pg"],
                   check=True)
    return "bandit-pg"


@dataclass
class PgServer:
    bin: Path
    folder: Path
    port: int
    user: str | None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *args] if self.user else list(args)

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        subprocess.run(self._cmd(*args), check=True, timeout=timeout, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, cwd=self.folder)

    @classmethod
    def start(cls, *, fsync: bool = True) -> PgServer:
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        folder = Path(tempfile.mkdtemp(prefix="bandit-pg-"))
        user = _run_as()
        if user is not None:
            shutil.chown(folder, user)
        server = cls(bin_dir, folder, _free_port(), user)
        pwfile = folder / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if user is not None:
            shutil.chown(pwfile, user)
        server._run(str(bin_dir / "initdb"), "-D", str(server.data), "-U", USER, f"--pwfile={pwfile}",
                    "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C")
        pwfile.unlink()
        with (server.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {server.port}\n"
                       f"unix_socket_directories = '{folder}'\nmax_connections = 200\nshared_buffers = 64MB\n"
                       f"fsync = {'on' if fsync else 'off'}\n")
        server._start()
        return server

    def _start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w",
                  "-t", "60", "start")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return self.url(name)

    def down(self) -> None:
        """Stop (fast: sessions are cut); `up()` starts it again."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def up(self) -> None:
        self._start()

    def _processes(self) -> list[int]:
        """The postmaster and its children (every backend, the checkpointer, …)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
        return [postmaster, *(int(pid) for pid in children)]

    def pause(self) -> None:
        """Freeze every server process (SIGSTOP): connections stay open and the kernel still accepts and
        acknowledges, but nothing answers, as a hung server or a stalled disk would; `resume()` thaws them."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        """`signum` to every server process; one that exited since it was listed is passed by (a child forked after
        `pgrep` listed the others and before the postmaster stopped is never frozen, and may exit meanwhile: an
        autovacuum worker; `resume` failed on such a one once, a fresh-clone CI)."""
        for pid in self._processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down `down_s` seconds, start again."""
        self.down()
        time.sleep(down_s)
        self.up()

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
