"""A `bandit-router serve` process on a free 127.0.0.1 port, in its own process group, waited for until `/readyz`
answers 200: what the server-process tests (`tests/test_server_process.py`) and the operator's drills
(`experiments/ops-drills/drills.py`) start, each with its own command and environment.

    server = ServeProcess(folder, [sys.executable, "-m", "bandit_router.cli"], ["--db", "router.db"], log_name="a")
    server.wait_ready()      # seconds until ready; NotReady with the log's tail if it exits or times out
    ...
    server.stop()            # SIGTERM and a wait, then SIGKILL to the whole group (the workers too); always call it

The child's environment is this process's without any `BANDIT_ROUTER_*` variable, plus `env`; its output goes to
`folder/<log_name>-<port>.log`; `preexec_fn` runs in the child before the command (as `subprocess.Popen`'s).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from bandit_router.service.metricsdir import PREFIX, default_parent, remove_stale
from tools.loopback import loopback

LOG_TAIL = 2000
"""Characters of the server's log quoted when it is not ready."""
STOP_GRACE_S = 20.0
"""How long `stop()` waits for a running server to shut down after SIGTERM before it kills the group (`serve`'s own
grace for requests in flight is 10 s)."""


class NotReady(RuntimeError):
    """The server exited, or `/readyz` did not answer 200 in time (the message quotes the log's tail)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """`command serve --port PORT args…` started in `folder` (see the module docstring)."""

    def __init__(self, folder: Path, command: Sequence[str], args: Sequence[str] = (), *,
                 env: Mapping[str, str] | None = None, log_name: str = "server",
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BANDIT_ROUTER_")}
        self.logpath = folder / f"{log_name}-{self.port}.log"
        self._log = self.logpath.open("wb")
        self._default_metrics = "BANDIT_ROUTER_METRICS_DIR" not in (env or {})
        self.process = subprocess.Popen([*command, "serve", "--port", str(self.port), *args], cwd=folder,
                                        env={**clean, **(env or {})}, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=preexec_fn)

    def log_tail(self) -> str:
        return self.logpath.read_text(errors="replace")[-LOG_TAIL:]

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Seconds until `/readyz` answered 200; `NotReady` when the process exits first or `timeout` passes."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise NotReady(f"exited {self.process.returncode}: {self.log_tail()}")
            try:
                if loopback.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise NotReady(f"not ready after {timeout:g} s: {self.log_tail()}")

    def kill9(self) -> None:
        """SIGKILL to the whole group: a crash, nothing finished."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM: a clean shutdown (queued work finished, final checkpoint); the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the server as an operator does, then make sure: a server still running gets SIGTERM and up to
        `grace_s` to shut down (its workers with it; a `--workers` server removes its metrics folder, 3 MB in
        /dev/shm, which a kill leaves until the next such start); then SIGKILL to the whole group (workers whose
        parent was killed alone, a server that did not stop in time); then close the log. A server already dead
        (`kill9`: a crash) is left as it died, and so is its metrics folder when the test chose the folder's
        parent (`BANDIT_ROUTER_METRICS_DIR`); in the default parent (/dev/shm) the folder of a server killed here
        or before is removed: nothing else would (only a later `--workers` start removes stale folders), and a
        parallel suite's last ones stayed after it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace_s)
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        self._log.close()
        if self._default_metrics:
            self._remove_metrics_folder()

    def _remove_metrics_folder(self, timeout: float = 10.0) -> None:
        """Remove this server's metrics folder in the default parent once its last process is gone: the workers
        of a killed group exit on their own time, holding the folder's lock until they do."""
        parent, deadline = default_parent(), time.monotonic() + timeout
        while True:
            remove_stale(parent, made_by=self.process.pid)
            if not list(parent.glob(f"{PREFIX}{self.process.pid}-*")) or time.monotonic() > deadline:
                return
            time.sleep(0.05)
