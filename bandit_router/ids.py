"""Decision ids: the one place they are made."""

from __future__ import annotations

import os
import threading
import time


class _IdSource:
    """Time-ordered decision ids (UUIDv7 layout: 48-bit milliseconds, then 80 random bits, 32 hex digits), drawing
    the random bits from a buffered `os.urandom`: one system call per 1,024 ids instead of one per id, which
    matters on the event loop thread, where every GIL release can wait for the writer. The buffer is kept as hex
    digits, 20 per id. A forked process starts with an empty buffer (it would otherwise draw its parent's next
    digits: equal ids within a millisecond)."""

    def __init__(self) -> None:
        self._empty()
        if hasattr(os, "register_at_fork"):  # POSIX
            os.register_at_fork(after_in_child=self._empty)

    def _empty(self) -> None:
        self._pool = ""
        self._next = 0
        self._lock = threading.Lock()  # a new one: another thread may have held it at the fork

    def __call__(self) -> str:
        with self._lock:
            start = self._next
            if start + 20 > len(self._pool):
                self._pool, start = os.urandom(10 * 1024).hex(), 0
            self._next = start + 20
            chunk = self._pool[start : start + 20]
        return f"{time.time_ns() // 1_000_000:012x}{chunk}"


new_decision_id = _IdSource()
"""`new_decision_id()` → a fresh, time-ordered decision id (thread-safe)."""
