"""`serve --workers N`: `/readyz` 200 from one worker means that a request reaches a worker that can route it; a
worker whose start fails on the database is started again (`start_again`).

Every worker takes connections on one socket, and the kernel hands each new connection to any worker that
listens, whichever one answered `/readyz`. uvicorn listens in a worker once its lifespan has started, and the
engine recovers after that (`/readyz` 503 "recovering" meanwhile): so one worker said ready while another one
already took connections and answered them 503 (a route 503 after the service said it was ready). Now:

- a worker that starts while another one is ready (uvicorn's replacement of a worker that died, a `SIGHUP`
  restart, a `SIGTTIN` worker more) recovers before it takes connections: its lifespan waits for the recovery,
  and the ready workers serve meanwhile;
- workers that start while none is ready (the server's start) take connections at once, as one process does
  (`/healthz` answers, `/readyz` 503 "recovering", however long the replay), and no worker says ready while any
  of them has not recovered (a worker whose recovery failed never has: the service stays 503, as one process
  whose recovery failed does).

Two files in the workers' folder (`metricsdir`), each `flock`ed shared: `ready.lock` by every worker that has
recovered, for as long as it lives; `recovering.lock` by every worker that takes connections before it has
recovered, until it has. A worker tries either one exclusively, without waiting, to learn whether another holds it
(and lets go at once; another worker trying at that instant is refused too, so a refusal is tried again twice,
0.5 ms apart: holders keep their lock for far longer). The kernel releases a killed worker's locks. Invariant: a
worker that listens holds one of the two, and `ready.lock` only once it has recovered; so when no worker holds
`recovering.lock`, every worker that listens can route."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..store import StoreError
from .metricsdir import serves_this_process

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("bandit_router.service")

READY = "ready.lock"
RECOVERING = "recovering.lock"
NOT_READY = ("another worker of this server takes connections and has not recovered (or its recovery failed: see "
             "the log)")
"""What `/readyz` says on a recovered worker while another one is not."""


class WorkerGate:
    """This worker's side of the two locks in `folder` (see the module docstring)."""

    @classmethod
    def of_this_worker(cls, workers: int) -> WorkerGate | None:
        """In a worker of `serve --workers N` (the folder `serve` made for its workers is in the environment), this
        worker's gate; None in one process and in an application's own `create_app`."""
        folder = serves_this_process()
        return cls(folder) if folder is not None and workers > 1 else None

    def follow(self, engine: Engine) -> None:
        """Tell the others once `engine` has recovered; start again when its recovery fails on the database."""
        engine.on_recovered = self.recovered
        engine.on_recovery_failed = start_again

    async def before_listening(self, engine: Engine) -> None:
        """At the end of the lifespan's start-up (uvicorn listens next): while `engine` recovers and another worker
        is ready, wait for the recovery (logged). A recovery that failed takes connections to say why, and no
        worker says ready."""
        if not engine.recovering or self.listen_before_recovered():
            return
        log.info("another worker serves: this one (pid %d) recovers before it takes connections", os.getpid())
        await asyncio.to_thread(engine.wait_ready)
        if engine.recovery_failed:
            self.must_not_listen_yet()

    def __init__(self, folder: Path) -> None:
        self._ready = _open(folder / READY)
        self._recovering = _open(folder / RECOVERING)
        self._probe_ready = _open(folder / READY)  # another open file: a lock of its own, which this process's
        self._probe_recovering = _open(folder / RECOVERING)  # held one conflicts with too

    def listen_before_recovered(self) -> bool:
        """Called before the worker takes connections and before it has recovered: True when it may take them now
        (no other worker is ready: this one then holds `recovering.lock` until `recovered`), False when it must
        recover first (another worker serves meanwhile). Checked again once the lock is held: a worker that turned
        ready in between sees it, or is seen by this one."""
        if _held(self._probe_ready):
            return False
        fcntl.flock(self._recovering, fcntl.LOCK_SH)
        if _held(self._probe_ready):
            fcntl.flock(self._recovering, fcntl.LOCK_UN)
            return False
        return True

    def must_not_listen_yet(self) -> None:
        """A worker that recovered without success listens anyway, holding `recovering.lock` for good: no worker
        says ready (its own `/readyz` says why)."""
        fcntl.flock(self._recovering, fcntl.LOCK_SH)

    def recovered(self) -> None:
        """This worker has recovered: it holds `ready.lock`, then lets go of `recovering.lock`."""
        fcntl.flock(self._ready, fcntl.LOCK_SH)
        fcntl.flock(self._recovering, fcntl.LOCK_UN)

    def others_recovering(self) -> bool:
        """Whether a worker that takes connections has not recovered (this one must have: it would see itself)."""
        return _held(self._probe_recovering)

    def close(self) -> None:
        for fd in (self._ready, self._recovering, self._probe_ready, self._probe_recovering):
            os.close(fd)


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


PROBES = 3
PROBE_PAUSE_S = 0.0005


def _held(probe: int) -> bool:
    """Whether another open file holds a lock on the file `probe` opens: an exclusive lock is refused `PROBES`
    times (a refusal once may be another worker's probe, held for two system calls)."""
    for attempt in range(PROBES):
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if attempt + 1 < PROBES:
                time.sleep(PROBE_PAUSE_S)
            continue
        fcntl.flock(probe, fcntl.LOCK_UN)
        return False
    return True


RESTART_PAUSE_S = 5.0
"""How long a worker whose start found the database unanswering waits before it exits to be started again."""


def start_again(failure: BaseException) -> None:
    """In a worker of `serve --workers N` whose start (`Store.prepare`, the recovery) failed on the database (a
    `StoreError`: PostgreSQL unreachable, say, as uvicorn replaces a worker that died): exit with status 1 after
    `RESTART_PAUSE_S`, so that uvicorn starts another worker, again until the database answers. A failure of the
    lifespan's start-up is uvicorn's sign of a broken application: it stopped every worker and exited with status 0,
    the workers that served and would have served again included. Other failures are left as they are."""
    if not isinstance(failure, StoreError):
        return
    log.error("this worker (pid %d) could not start: %s; it exits in %.0f s and another one is started (the other "
              "workers serve meanwhile)", os.getpid(), " ".join(str(failure).split()), RESTART_PAUSE_S)
    time.sleep(RESTART_PAUSE_S)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
