"""What a long-running service keeps must not grow with the requests it served: per reading thread it ever had, per
distinct value a caller chose. Each test makes many of them and asserts the bound (counts, never time)."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from bandit_router.router import Router
from bandit_router.store import SQLiteStore
from bandit_router.store.sqlite import _MODEL_LISTS_MAX
from bandit_router.types import Request


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


def test_the_model_lists_kept_for_writing_decisions_are_bounded(tmp_path: Path) -> None:
    """A request's `models` may be any subset of the catalog in any order; the writer kept the JSON of every list
    it wrote, one entry per distinct list for the life of the process. Past the bound it starts over, and every
    decision is still stored with its own list."""
    store = SQLiteStore(tmp_path / "store.db")
    store.prepare()
    router = Router(seed=5)
    names = [m.name for m in router.models]
    rnd = random.Random(7)
    lists = list(dict.fromkeys(tuple(rnd.sample(names, rnd.randrange(2, len(names) + 1))) for _ in range(1200)))
    assert len(lists) > 2 * _MODEL_LISTS_MAX
    decisions = [router.route(Request(prompt="a question", models=list(models))) for models in lists]
    try:
        for start in range(0, len(decisions), 100):
            with store.write() as tx:
                tx.insert_decisions([(d, None, None) for d in decisions[start : start + 100]])
        assert len(store._models_json) <= _MODEL_LISTS_MAX
        with store.read() as reader:
            stored = reader.decisions([d.decision_id for d in decisions])
        assert [stored[d.decision_id].decision.models for d in decisions] == lists
    finally:
        store.close()
