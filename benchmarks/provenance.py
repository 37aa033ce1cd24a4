"""What the diagnostic tools (`ab_http`, `route_ab`, `profile_http`, `diagnose_http`, `diagnose_tail`,
`feedback_writer`) write at the top of a report and where they write it: one place for the machine line, the load
note, the shared `--label/--out` arguments and the write, so that every report states the same facts the same way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
from collections.abc import Sequence
from pathlib import Path

PROFILES = Path(__file__).resolve().parent / "results" / "profiles"


def machine() -> str:
    """`2026-11-27T10:00:00+00:00, x86_64, 2 cores (shared with other work), Python 3.11.7`: when and on what."""
    return (
        f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, {platform.machine()}, {os.cpu_count()} cores "
        f"(shared with other work), Python {platform.python_version()}"
    )


def load_note(start: float, end: float | None = None) -> str:
    """`load average 0.52 at the start[, 1.10 at the end]`: how busy the machine was around the measurement."""
    return f"load average {start:.2f} at the start" + ("" if end is None else f", {end:.2f} at the end")


def add_output_arguments(parser: argparse.ArgumentParser, filename: str, *, duration: int | None = None) -> None:
    """`--label` (names the file: `filename` with LABEL in it), `--out` (its folder, `results/profiles` by
    default) and, when the tool loads a server for a time, `--duration` (seconds per measurement)."""
    parser.add_argument("--label", required=True, help=f"names the output file: {filename}")
    parser.add_argument("--out", default=str(PROFILES), help="the folder the report is written to")
    if duration is not None:
        parser.add_argument("--duration", type=int, default=duration, help="seconds of load per measurement")


def write_report(out: str | Path, name: str, lines: Sequence[str], *, echo: bool = True) -> Path:
    """Write `lines` to `out/name` (creating `out`), print them when `echo`, and return the path."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    if echo:
        print(text, end="")
    return path
