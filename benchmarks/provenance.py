"""What the diagnostic tools (`ab_http`, `route_ab`, `startup_ab`, `pmf_jit`, `profile_http`, `diagnose_http`,
`diagnose_tail`, `feedback_writer`) write at the top of a report and where they write it: one place for the
machine line, the load note, the shared `--label/--out` (and an A/B's `--base/--this/--rounds`) arguments and the
write, so that every report states the same facts the same way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROFILES = Path(__file__).resolve().parent / "results" / "profiles"


def machine() -> str:
    """`2026-11-27T10:00:00+00:00, x86_64, 2 cores (shared with other work), Python 3.11.7; fastapi 0.1, …`: when,
    on what, with which versions of the packages a served request runs through."""
    return (
        f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, {platform.machine()}, {os.cpu_count()} cores "
        f"(shared with other work), Python {platform.python_version()}; {versions()}"
    )


SERVING_PACKAGES = ("fastapi", "starlette", "uvicorn", "httptools", "uvloop", "pydantic", "numpy", "numba",
                    "vowpal-wabbit-next", "psycopg")


def versions() -> str:
    """`fastapi 0.1, starlette 1.0, …`: the installed versions of the packages the served hot path runs through (a
    /healthz that cost 120 µs one day and 170 µs another could not be told apart from a dependency's upgrade
    without them); a package not installed is left out."""
    from importlib import metadata

    found = []
    for name in SERVING_PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


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


def add_ab_arguments(parser: argparse.ArgumentParser, filename: str, *, base_help: str, rounds: int | None = 6,
                     ) -> None:
    """An A/B tool's `--base` (a checkout), `--this` (default: this repository), `--label/--out` and, with
    `rounds`, `--rounds` (each round runs both sides, in alternating order)."""
    parser.add_argument("--base", type=Path, required=True, help=base_help)
    parser.add_argument("--this", type=Path, default=PROFILES.parents[2], help="the checkout compared with the base")
    add_output_arguments(parser, filename)
    if rounds is not None:
        parser.add_argument("--rounds", type=int, default=rounds)


def sides_line(base: Path, this: Path) -> str:
    """`base PATH (commit C), this PATH (commit C)`: which code each side ran."""
    from simulator.report import checkout_commit

    return f"base {base} (commit {checkout_commit(base)}), this {this} (commit {checkout_commit(this)})"


def run_side(checkout: Path, code: str, pythonpath: str) -> Any:
    """Run `python -c code` in `checkout` with `PYTHONPATH=pythonpath`; the JSON of its last line of output."""
    env = {**os.environ, "PYTHONPATH": pythonpath}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=checkout)
    return json.loads(out.stdout.strip().splitlines()[-1])


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
