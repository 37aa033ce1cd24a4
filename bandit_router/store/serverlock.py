"""One `bandit-router serve` per SQLite file.

Two independent `serve` processes on one file each run their own policy and budget pacer: each learns only the
feedback it receives and books only its own decisions (of 80 decisions made, each counted its own 40), and
with one seed both choose alike. `serve --workers N` is how several processes share a file (each worker follows
the stored log and books the others' decisions: the docs' service → workers), and a PostgreSQL database is how
replicas share one (service → replicas).

`ServerLock` keeps a second `serve` off a file that one already serves: a `flock` on a file beside the database,
`<db>-server` (the path with symlinks resolved, so that two names of one file find one lock). Not on the database
file itself: SQLite locks it with POSIX record locks, which a process loses when it closes *any* descriptor of that
file (a descriptor of our own, closed, would drop SQLite's locks), and where `flock` is emulated with record
locks (NFS) the two would collide.

- `claim` (`serve` as it starts, `migrate`): exclusive, without waiting; `DatabaseInUse` when any process holds
  the lock, naming it (the file holds the claimer's command, pid and host; on Linux `/proc/locks` tells which
  processes hold the lock now). Held while the schema is created or migrated: a `migrate` and a `serve` exclude
  each other.
- `share` (`serve`, once the schema is ready): exclusive → shared, held until the server exits.
- `join` (each worker of `serve --workers N`): shared, without waiting, held for the worker's life. Workers go on
  serving when their parent is killed (`kill -9`); their locks keep a new `serve` off the file meanwhile.

The kernel releases a `flock` when its holder dies, `kill -9` included: a crash leaves no stale lock (the file
stays with the last claimer's pid; only the lock counts, the file is never deleted). `evaluate`, `export`
and `check` only read, and take no lock. Converting exclusive to shared is not atomic (`flock(2)`): a second
`claim` can get the lock in between, and the first's `share` then fails (`DatabaseInUse`), so at most one of two
starting servers serves. Without `flock` (not POSIX) there is no lock and no check.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

from .location import Database, DatabaseURL, missing_directory
from .records import StoreError

try:
    import fcntl
except ImportError:  # not POSIX: no check
    fcntl = None  # type: ignore[assignment]

SUFFIX = "-server"
ADVICE = ("One `serve` per SQLite file: a second would learn only from the feedback it receives and book only its own "
          "decisions against the budgets. Stop it first; for more processes on this file start that one with "
          "`serve --workers N`, and for replicas use a PostgreSQL database (the docs: service → workers, replicas).")


class DatabaseInUse(StoreError):
    """Another `bandit-router serve` (or `migrate`) holds the database's server lock."""


def claim_database(db: Database, command: str) -> ServerLock | None:
    """`ServerLock.claim` on a SQLite file, for `command`; None for PostgreSQL (replicas share it)."""
    if isinstance(db, DatabaseURL):
        return None
    lock = ServerLock(db)
    lock.claim(command)
    return lock


def join_database(db: Database) -> ServerLock | None:
    """`ServerLock.join` on a SQLite file (a worker of `serve --workers N`); None for PostgreSQL."""
    if isinstance(db, DatabaseURL):
        return None
    lock = ServerLock(db)
    lock.join()
    return lock


class ServerLock:
    """The server lock of the SQLite file `db_path` (see the module docstring): `claim`, then `share`; or `join`.
    `close` releases it (so does the process's exit)."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = Path(os.path.realpath(db_path) + SUFFIX)
        self._fd: int | None = None
        self._writable = False

    def claim(self, command: str) -> None:
        """Take the lock exclusively for `command` ("serve", "migrate"), or raise `DatabaseInUse`, or `StoreError`
        when the lock file cannot be created."""
        fd = self._open()
        if fd is None:
            return
        if not self._try(fcntl.LOCK_EX):
            raise DatabaseInUse(self._refusal(command))
        if not self._writable:  # another user's lock file (root's `migrate` before the service's `serve`): the
            return  # lock holds without the record; a refused process names the holder from /proc/locks
        record = json.dumps({"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                             "since": round(time.time())})
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode() + b"\n", 0)
        except OSError:  # a full disk: the lock holds; a refused process names the holder less well
            pass

    def share(self) -> None:
        """Exclusive → shared, once the schema is ready: the workers then `join`. `DatabaseInUse` when another
        `claim` took the lock in between (see the module docstring)."""
        if self._fd is not None and not self._try(fcntl.LOCK_SH):
            raise DatabaseInUse(self._refusal("serve"))

    def join(self) -> None:
        """A worker's shared lock beside its parent's; `DatabaseInUse` when someone holds it exclusively."""
        if self._open() is not None and not self._try(fcntl.LOCK_SH):
            raise DatabaseInUse(self._refusal("serve"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int | None:
        """The lock file's descriptor (created if need be, never its directory); None without `flock`."""
        if fcntl is None:
            return None
        if self.db_path.is_dir():
            example = self.db_path / "bandit-router.db"
            raise StoreError(f"{self.db_path} is a directory; `db` is the database file (e.g. {example})")
        missing = missing_directory(self.db_path)
        if missing is not None:
            raise StoreError(missing)
        folder = self.path.parent
        flags = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)  # never write through a symbolic link
        try:
            try:  # 0o666 less the umask: a group-shared deployment's umask 002 lets its operators share the file
                self._fd, self._writable = os.open(self.path, os.O_RDWR | os.O_CREAT | flags, 0o666), True
            except PermissionError:  # another user's file (`flock` needs no write access)
                if not self.path.is_file() or self.path.is_symlink():
                    raise
                self._fd, self._writable = os.open(self.path, os.O_RDONLY | flags), False
        except OSError as exc:
            reason = ""
            if exc.errno == errno.ELOOP or self.path.is_symlink():
                reason = ": it is a symbolic link, and the lock file must be a plain file (remove the link)"
            elif exc.errno in (errno.EACCES, errno.EPERM) and self.path.exists():
                reason = f": it is not readable by this process (uid {os.geteuid()})"
            elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                reason = (f": the directory {folder} is not writable by this process (uid {os.geteuid()}) or is on a "
                          "read-only file system, and the service keeps this file there, and SQLite the database's "
                          "-wal and -shm files")
            raise StoreError(f"{self.db_path}: cannot create the lock file {self.path}: {exc.strerror}{reason}") \
                from None
        if not _is_lock_file(self._fd):  # another file of that name (a database called `router-server`)
            self.close()
            raise StoreError(f"{self.db_path}: {self.path} exists and is not bandit-router's lock file (not a regular "
                             "file holding a lock record, or empty): rename it, or give the database another name")
        return self._fd

    def _try(self, kind: int) -> bool:
        """Take the lock of `kind` without waiting; False (and the file closed) when another process holds it in a
        conflicting way."""
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, kind | fcntl.LOCK_NB)
        except OSError as exc:
            self.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise StoreError(f"cannot lock {self.path}: {exc.strerror}") from None
        return True

    def _refusal(self, command: str) -> str:
        """Why `command` cannot have the lock: who holds it, and what to do instead."""
        holder = _holder(_read_record(self.path), _holding_pids(self.path))
        if command == "migrate":
            return f"{self.db_path} is in use by {holder}: stop it first (`serve` migrates the database as it starts)"
        if holder.startswith("bandit-router migrate"):
            return f"{self.db_path} is being migrated by {holder}: start `serve` once it has finished"
        return f"{self.db_path} is already served by {holder}. {ADVICE}"


def _is_lock_file(fd: int) -> bool:
    """Whether the open file is a regular file that is empty, holds only NUL bytes, or holds a lock record (what
    `claim` writes), so that `claim` may overwrite it. NULs: after a power loss some file systems (ext4 with delayed
    allocation, XFS) leave a file its size with zeros for data; such a file holds nothing to keep."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return False
    head = os.pread(fd, 4097, 0)
    if not head.strip(b"\0") or head.startswith(b'{"command": "'):  # empty or zeros, or a (half-written) record
        return True
    try:
        record = json.loads(head) if len(head) <= 4096 else None
    except ValueError:
        return False
    return isinstance(record, dict) and "pid" in record


def _read_record(path: Path) -> dict[str, Any]:
    """What the last claimer wrote (command, pid, host, since); {} when unreadable or half-written."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _holding_pids(path: Path) -> list[int]:
    """The processes holding a `flock` on `path` now, from Linux's `/proc/locks` (lines such as
    `1: FLOCK  ADVISORY  READ 1234 fe:00:2375748 0 EOF`: pid, then device major:minor (hex) and inode); [] where
    it cannot tell (another system, a process in another PID namespace)."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = set()
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where and fields[4].isdigit():
            pids.add(int(fields[4]))
    pids.discard(0)
    return sorted(pids)


def _holder(record: dict[str, Any], holding: list[int]) -> str:
    """Who holds the lock, in words: the claimer the file names, or the processes `/proc/locks` names (the
    workers of a server whose parent was killed)."""
    pid, command = record.get("pid"), record.get("command", "serve")
    here = record.get("host") in (None, socket.gethostname())
    named = f"bandit-router {command} (pid {pid}" + ("" if here else f" on host {record['host']}") + ")"
    if isinstance(pid, int) and (not holding or pid in holding):
        return named
    if not holding:
        return "another process"
    pids = ", ".join(map(str, holding))
    if isinstance(pid, int) and here and not _alive(pid) and all(map(_is_worker, holding)):
        return (f"processes {pids}, the workers of a bandit-router serve whose main process (pid {pid}) has exited "
                f"(stop them: kill {' '.join(map(str, holding))})")
    if isinstance(pid, int):  # a claimer that could not write its record (another user's lock file)
        return f"processes {pids} (the lock file's record, {named}, is older)"
    return f"processes {pids}"


def _is_worker(pid: int) -> bool:
    """Whether `pid` is a worker uvicorn spawned (`multiprocessing`'s spawn: `spawn_main` in its command line), not
    a `serve` of its own (Linux's `/proc`; False where it cannot tell)."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's
        return True
    return True

