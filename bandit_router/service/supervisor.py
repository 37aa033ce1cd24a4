"""uvicorn's supervisor of `serve --workers N`'s workers, saying why a worker stopped and how the server stopped.

uvicorn starts a worker in place of one that died, or that left its health check unanswered (killed as hung), and
logs only `Child process [pid] died`, at INFO: a worker the kernel killed for want of memory, one that crashed and
one that exited were all that line, below the WARNING an operator watches. `Supervisor` logs a WARNING first,
with the exit status or the signal. It also tells whether uvicorn stopped the server because a worker's start-up
failed (`failed_to_start`): uvicorn then returns as after a SIGTERM."""

from __future__ import annotations

import logging
import signal
import time

from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

log = logging.getLogger("bandit_router.service")


def how_it_ended(exitcode: int) -> str:
    """A worker's end, from `multiprocessing`'s exit code (a negative one is the signal that killed it)."""
    if exitcode >= 0:
        said = f"exited with status {exitcode}"
        return said + " (its start-up failed)" if exitcode == STARTUP_FAILURE else said
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    hint = " (the kernel's out-of-memory killer, or a kill -9: see the kernel log)" if -exitcode == signal.SIGKILL \
        else ""
    return f"was killed by {name}{hint}"


class Supervisor(Multiprocess):
    """`uvicorn.supervisors.Multiprocess`, saying each worker's end (see the module docstring), and closing its own
    copy of each started worker's end of the health-check pipe (`_release_child_ends`)."""

    def init_processes(self) -> None:
        super().init_processes()
        self._release_child_ends()

    def restart_all(self) -> None:
        super().restart_all()
        self._release_child_ends()

    def _release_child_ends(self) -> None:
        """uvicorn keeps both ends of each worker's health-check pipe in the parent, so a worker that dies while a
        ping waits for its pong (a worker exiting on its own, `workergate.start_again`; or killed) leaves the pipe
        open: the parent waited the whole `worker_healthcheck_s` (30 s) before it started another worker. With the
        parent's copy of the worker's end closed once the worker has started (it has its own), a dead worker's end
        is closed, the wait ends at once (EOF), and uvicorn replaces it."""
        for process in self.processes:
            if process.process.pid is not None and not process.child_conn.closed:
                process.child_conn.close()

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        before = list(self.processes)
        dead = {id(p) for p in before if not p.process.is_alive()}
        for process in before:
            if id(process) in dead:
                process.process.join()  # it has ended: its exit code
                code = process.exitcode if process.exitcode is not None else 0
                then = "uvicorn stops the server" if code == STARTUP_FAILURE else "uvicorn starts another"
                log.warning("worker %s %s; %s", process.pid, how_it_ended(code), then)
        started = time.monotonic()
        super().keep_subprocess_alive()
        waited = time.monotonic() - started
        self._release_child_ends()
        for process in before:
            if id(process) not in dead and process not in self.processes:
                if waited < self.config.timeout_worker_healthcheck:  # it ended while its health check waited
                    code = process.exitcode if process.exitcode is not None else 0
                    log.warning("worker %s %s; uvicorn starts another", process.pid, how_it_ended(code))
                else:
                    log.warning("worker %s left uvicorn's health check unanswered for %d s (hung, or stopped): "
                                "killed; uvicorn starts another", process.pid, self.config.timeout_worker_healthcheck)

    @property
    def failed_to_start(self) -> bool:
        """uvicorn stopped the server because a worker's start-up failed (it stops every worker then)."""
        return any(process.exitcode == STARTUP_FAILURE for process in self.processes)
