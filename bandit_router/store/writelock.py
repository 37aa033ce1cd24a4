"""The turn to write an SQLite database, handed from process to process without sleeping.

SQLite lets one connection write at a time. A connection that finds the write lock taken waits in SQLite's busy
handler, which *sleeps* between tries: 1, 2, 5, 10, 15, 20, 25 … ms (`sqliteDefaultBusyCallback`), however soon
the other writer commits. With `--workers 2` each worker's writer commits a batch every millisecond or so, and
about 7% of them found the lock taken (`benchmarks/diagnose_http.py` under `wrk`): the batch then slept
milliseconds after the other had long committed, with every reply in it waiting too (the longest wait: 179 ms).

`WriteLock` queues the writers of every process in the kernel instead: an exclusive `flock` on a file beside the
database (`<db>-lock`), taken before `BEGIN IMMEDIATE` and released after `COMMIT` or `ROLLBACK`. A waiting
process is woken the moment the holder releases it. SQLite's own lock still decides who writes (a connection that
does not take this lock, the `sqlite3` shell say, is waited for by the busy timeout as before), so the lock adds no
state to lose: a process that dies holding it releases it with its file descriptors (`kill -9` included).
One difference remains: the wait for another process has no timeout (`flock` has none), so a worker that is
stopped (not killed) inside a write transaction holds the others' writers until it goes on or dies, where
SQLite's busy timeout had failed their transactions (503) after `busy_timeout_s`.

Taking and releasing the lock costs the writer no trip through the GIL when nobody else holds it: the first try
(`LOCK_EX | LOCK_NB`) and the release are plain `flock` calls made through `ctypes.PyDLL`, which keeps the GIL
(`fcntl.flock` releases it around every call, and on a busy event loop each release costs the writer a wait for
the GIL and both threads a futex wake-up); only when the lock is taken does the writer wait in the blocking
`fcntl.flock`, GIL released, queued in the kernel as before. One try before blocking is how any lock's fast path
works: a writer never polls, so the order in which waiters get the lock is the blocking `flock`'s.

Within one process, stores opened on the same file (tests, tools) first take a thread lock per file, with the
store's busy timeout, so that a thread never waits in the kernel for a lock its own process holds; past that
timeout, or where the lock file cannot be opened (a read-only directory, a platform without `flock`), the
transaction goes on under SQLite's lock alone, as it did before this lock existed.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: SQLite's own lock alone
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("bandit_router.store")


def _flock_keeping_the_gil() -> Callable[[int, int], int] | None:
    """libc's `flock` called with the GIL held (`ctypes.PyDLL`): returns 0, or −1 with `ctypes.get_errno()`."""
    if fcntl is None:
        return None
    try:
        call = ctypes.PyDLL(None, use_errno=True).flock
    except (OSError, AttributeError, TypeError):  # no C library symbols to find (some platforms)
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int)
    call.restype = ctypes.c_int
    return call


_FLOCK = _flock_keeping_the_gil()

_IN_PROCESS: dict[str, threading.Lock] = {}
_IN_PROCESS_GUARD = threading.Lock()


class WriteLock:
    """Exclusive, cross-process turn to write the database at `db_path` (`acquire` … `release`)."""

    def __init__(self, db_path: Path, timeout_s: float) -> None:
        self.path = Path(f"{db_path}-lock")
        self.timeout_s = timeout_s
        self._fd: int | None = None
        self._thread_lock: threading.Lock | None = None
        self._unusable = fcntl is None

    def acquire(self) -> bool:
        """Wait for the turn; True when held (then call `release`), False when going on under SQLite's lock
        alone (see the module docstring)."""
        if self._unusable:
            return False
        if self._thread_lock is None:
            key = os.path.realpath(self.path)
            with _IN_PROCESS_GUARD:
                self._thread_lock = _IN_PROCESS.setdefault(key, threading.Lock())
        if not self._thread_lock.acquire(timeout=self.timeout_s):
            return False
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            if not self._try_lock(self._fd):
                fcntl.flock(self._fd, fcntl.LOCK_EX)  # taken: wait for it, the GIL released meanwhile
        except OSError as exc:
            self._unusable = True
            self._thread_lock.release()
            log.warning("cannot use the write lock file %s (%s): writers of other processes wait in SQLite's "
                        "busy handler instead", self.path, exc)
            return False
        return True

    @staticmethod
    def _try_lock(fd: int) -> bool:
        """One try without waiting and without releasing the GIL: True when the lock is now held."""
        if _FLOCK is None:
            return False
        if _FLOCK(fd, fcntl.LOCK_EX | fcntl.LOCK_NB) == 0:
            return True
        code = ctypes.get_errno()
        if code in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
            return False
        raise OSError(code, os.strerror(code))

    def release(self) -> None:
        assert self._fd is not None and self._thread_lock is not None
        try:
            if _FLOCK is None or _FLOCK(self._fd, fcntl.LOCK_UN) != 0:
                fcntl.flock(self._fd, fcntl.LOCK_UN)  # (raises what the first call failed with)
        finally:
            self._thread_lock.release()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
