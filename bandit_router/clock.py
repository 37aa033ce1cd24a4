"""The wall-clock time that decides what is old enough to delete (`retention_days`): it never runs ahead of the
time that actually elapsed.

    now = min(time.time(), t₀ + (b − b₀))

where t₀ and b₀ are the wall clock and a steady clock read when this clock was made (the process's start), and b
the steady clock now: CLOCK_BOOTTIME where the system has it (it counts a suspended host's sleep, as the wall
clock does), else `time.monotonic`. A forward step of the wall clock (a clock set wrong by hand or by a bad time
source, a correction of one that was behind) no longer makes retention delete, at once, every row younger than
`retention_days` of real time that the step passed: it goes on deleting at the pace real time passes. A backward
step is followed at once (retention deletes later, never sooner). What it cannot see is a step made while the
process was stopped: t₀ is the wall clock at the start.

Rows stored after a forward step carry the stepped times, so retention keeps them for the step's length longer
(the safe side); and after a correction forward of a clock that was behind at the start, it lags by the
correction until the process restarts.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def _wall() -> float:
    return time.time()  # looked up at each call: a test that steps `time.time` steps this clock's wall too


def _steady() -> float:
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)  # Linux: counts suspend
    except (AttributeError, OSError):
        return time.monotonic()


class SteadyWallClock:
    """`clock()`: Unix time, but never ahead of the first reading plus the steady time elapsed since (see the
    module docstring). `wall` and `steady` are injectable for tests."""

    def __init__(self, wall: Callable[[], float] = _wall, steady: Callable[[], float] = _steady) -> None:
        self._wall = wall
        self._steady = steady
        self._wall0 = wall()
        self._steady0 = steady()

    def __call__(self) -> float:
        return min(self._wall(), self._wall0 + (self._steady() - self._steady0))

    def ahead(self) -> float:
        """How far the wall clock is ahead of this clock now (0 unless it stepped forward since the start)."""
        return max(0.0, self._wall() - self())
