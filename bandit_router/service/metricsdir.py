"""The folder where `serve --workers N`'s workers write their metrics (prometheus-client's multiprocess mode).

prometheus-client writes each process's counters through a memory-mapped file it extends sparsely: on a full file
system the first write to a page not yet backed kills the process with SIGBUS, which no handler can catch, and a
worker that dies as it starts is restarted by uvicorn to die again (the port stops answering). So:

- the folder lives on `/dev/shm` when it exists (memory, not the data disk), else in the temporary directory, or
  under `[server] metrics_dir`;
- `serve` refuses to start when that file system has less than `required_bytes(workers)` free, and each worker
  allocates (`posix_fallocate`) the first `FILE_BYTES` of each of its files before prometheus-client maps them: a
  file system filled afterwards cannot take those pages back (only label values beyond about 3,000 per file
  would extend a file again);
- each folder holds `owner.lock`, which `serve` and each worker lock shared for as long as they live: a start
  removes the folders of servers that are gone (SIGKILL leaves its folder behind), never a live one's;
- a worker's files are named after its slot, not its pid: the first `slot-<k>.lock` it can lock exclusively,
  held while it lives. A worker uvicorn starts in place of a dead one takes the dead one's slot, and with it its
  files, whose counts it goes on from (prometheus-client reads a file's values when it opens it): the folder holds
  as many workers' files as ever ran at once. Named after pids, every replacement added 1.5 MiB and the dead
  workers' files stayed (their counts), until a replacement found the file system full and could not start
  (7 replacements on a 12 MiB tmpfs, then uvicorn stopped the server).

`MARKER` holds the folder `serve` made: `Metrics` takes `PROMETHEUS_MULTIPROC_DIR` only when it is that folder,
not when an operator set the variable for processes of their own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..config import ConfigError

MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's multiprocess folder: `serve --workers N` sets it for its workers."""
MARKER = "BANDIT_ROUTER_SERVE_METRICS"
"""The folder `serve` made for its workers (equal to `PROMETHEUS_MULTIPROC_DIR` in them)."""
PREFIX = "bandit-router-metrics-"
LOCK_NAME = "owner.lock"
FILE_KINDS = ("counter", "histogram", "gauge_sum")
"""The files a worker writes: `<kind>_w<slot>.db` (the gauge is the learned reward sum, multiprocess mode "sum")."""
SLOT_LOCK = "slot-{}.lock"
FILE_BYTES = 512 * 1024
"""Bytes allocated up front per file (prometheus-client's entries take about 100-200 bytes each)."""
HEADROOM_BYTES = 8 * 1024 * 1024
"""Free bytes required beyond the workers' files: for files that grow past `FILE_BYTES`, and workers added
(uvicorn's `SIGTTIN`: a slot more)."""


def default_parent() -> Path:
    """`/dev/shm` when it is a folder this process can write, else the temporary directory."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def required_bytes(workers: int) -> int:
    return workers * len(FILE_KINDS) * FILE_BYTES + HEADROOM_BYTES


@contextlib.contextmanager
def metrics_folder(parent: Path | None, workers: int) -> Iterator[Path]:
    """A new folder for this start's workers, in `parent` (`default_parent()` when None), set as
    `PROMETHEUS_MULTIPROC_DIR` and `MARKER` in this process's environment (the workers inherit it) until the block
    ends; then the variables are as they were and the folder is removed. `ConfigError` when `parent` cannot hold
    it."""
    parent = default_parent() if parent is None else parent
    if not parent.is_dir():
        raise ConfigError(f"metrics_dir: {parent} is not a folder")
    remove_stale(parent)
    free = shutil.disk_usage(parent).free
    needed = required_bytes(workers)
    if free < needed:
        raise ConfigError(
            f"metrics_dir: {parent} has {free / 2**20:.1f} MiB free; {workers} workers need {needed / 2**20:.1f} MiB "
            "for their metrics files (a worker that writes to a full file system dies with SIGBUS): free some room, "
            "or set [server] metrics_dir to a folder on another file system"
        )
    try:
        folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise ConfigError(f"metrics_dir: cannot create a folder in {parent}: {exc.strerror}") from None
    lock = _claim(folder)
    previous = {name: os.environ.get(name) for name in (MULTIPROCESS_VARIABLE, MARKER)}
    os.environ[MULTIPROCESS_VARIABLE] = os.environ[MARKER] = str(folder)
    try:
        yield folder
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(folder, ignore_errors=True)
        os.close(lock)


@contextlib.contextmanager
def operators_folder_hidden() -> Iterator[None]:
    """No `PROMETHEUS_MULTIPROC_DIR` in this process's environment until the block ends (then as it was): `serve`'s
    metrics are its own whatever an operator set for processes of their own. prometheus-client picks its
    multiprocess values when it is imported, so this comes first."""
    operators = os.environ.pop(MULTIPROCESS_VARIABLE, None)
    try:
        yield
    finally:
        if operators is not None:
            os.environ[MULTIPROCESS_VARIABLE] = operators


def _claim(folder: Path) -> int:
    """`folder/owner.lock`, locked shared: written under another name and renamed once locked, so that a start
    that looks for stale folders never finds it unlocked."""
    fresh = folder / f".{LOCK_NAME}.new"
    fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.rename(fresh, folder / LOCK_NAME)
    return fd


def remove_stale(parent: Path, made_by: int | None = None) -> list[Path]:
    """Remove the folders `serve` made in `parent` whose server and workers are all gone (their `owner.lock` can be
    locked exclusively), only those of the `serve` with pid `made_by` if given; the removed folders. A folder
    without a lock file (an older version's, or one being made) is left alone."""
    removed = []
    for folder in parent.glob(f"{PREFIX}{'' if made_by is None else f'{made_by}-'}*"):
        try:
            fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live server's (EWOULDBLOCK), or a lock this process cannot take: left alone
        else:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(fd)
    return removed


_joined: list[int] = []
"""This worker's descriptors of its folder's lock and of its slot's (held until the process exits)."""
_slot: list[str] = []
"""This worker's slot, `w<k>`, once taken."""


def join_folder(folder: Path) -> str:
    """In a worker: hold the folder's lock shared while this process lives (a start never removes it while a worker
    of a killed server still writes there), take a slot (the first free `slot-<k>.lock`, locked exclusively while
    this process lives), and allocate the slot's files (`FILE_BYTES` each; a dead worker's slot has them). The
    slot's name, `w<k>`: prometheus-client's process identifier for the file names. `OSError` when the file
    system cannot hold the files (ENOSPC): a message, not a SIGBUS later."""
    if not _joined:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_SH)
        _joined.append(fd)
    if not _slot:
        _slot.append(_take_slot(folder))
    for kind in FILE_KINDS:
        path = folder / f"{kind}_{_slot[0]}.db"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size < FILE_BYTES:
                try:
                    os.posix_fallocate(fd, 0, FILE_BYTES)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    os.pwrite(fd, bytes(FILE_BYTES - size), size)  # a file system without fallocate: zeros
        finally:
            os.close(fd)
    return _slot[0]


def _take_slot(folder: Path) -> str:
    """The first slot no live worker holds, locked exclusively until this process exits."""
    k = 0
    while True:
        fd = os.open(folder / SLOT_LOCK.format(k), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            k += 1
            continue
        _joined.append(fd)
        return f"w{k}"


def serves_this_process() -> Path | None:
    """The folder `serve` made, when this process is one of its workers (`PROMETHEUS_MULTIPROC_DIR` is the
    `MARKER`'s folder); None otherwise, an operator's own `PROMETHEUS_MULTIPROC_DIR` included."""
    folder = os.environ.get(MARKER)
    if folder and os.environ.get(MULTIPROCESS_VARIABLE) == folder:
        return Path(folder)
    return None
