"""What a long-running service keeps must not grow with the requests it served: per reading thread it ever had, per
distinct value a caller chose. Each test makes many of them and asserts the bound (counts, never time)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from bandit_router.store import SQLiteStore


def _open_on(path: Path) -> int:
    """File descriptors of this process open on `path` (Linux: /proc/self/fd)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:  # closed since the listing
            continue
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc (Linux)")
def test_reader_connections_of_ended_threads_are_closed(tmp_path: Path) -> None:
    """The service reads from worker threads that end and are replaced (anyio ends one idle for 10 s): each opened
    a connection that was kept open forever, two descriptors a thread, until the process ran out of them."""
    path = tmp_path / "store.db"
    store = SQLiteStore(path)
    store.prepare()
    try:
        seen: list[int] = []

        def read() -> None:
            with store.read() as reader:
                seen.append(reader.decision("none") is None)

        for _ in range(60):
            thread = threading.Thread(target=read)
            thread.start()
            thread.join()
        assert seen == [True] * 60
        assert _open_on(path) <= 2  # the last reader's connection (its thread ended; closed by the next), at most
        read()  # the main thread reads too: still served, on a connection of its own
        assert _open_on(path) <= 2
    finally:
        store.close()
    assert _open_on(path) == 0

