"""Run every benchmark module (`benchmarks/bench_*.py`) and write the results.

Each module exposes `run() -> list[dict]`; every dict is one measurement:

    {"benchmark": "route", "metric": "p50_us", "value": 71.3, "unit": "µs",
     "target": "<= 100", "ok": True, "note": "vw-squarecb, 5 models, 500-char prompt"}

`target` and `ok` are optional (only for measurements that an issue sets a target for). Speed targets are
stated as ratios against a baseline measured in the same run wherever the issue asks for one.
Results go to `benchmarks/results/results.json` (with the commit, machine and date) and `results.md`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import provenance
from simulator.report import git_commit

HERE = Path(__file__).resolve().parent


def _commit() -> str:
    return git_commit()


def _markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Commit `{meta['commit']}`, {meta['date']}, {meta['machine']}.",
        f"Packages: {meta['packages']}.",
        f"Command: `{meta['command']}` (`make bench` runs every module).",
        "",
        "| benchmark | metric | value | unit | target | ok | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        value = r["value"]
        if isinstance(value, float):
            shown = f"{value:,.2f}" if r.get("unit") == "×" else f"{value:,.1f}"
        else:
            shown = str(value)
        ok = {True: "yes", False: "**no**", None: ""}[r.get("ok")]
        lines.append(
            f"| {r['benchmark']} | {r['metric']} | {shown} | {r.get('unit', '')} | {r.get('target') or ''} "
            f"| {ok} | {r.get('note', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for results.json and results.md")
    parser.add_argument("--only", nargs="*", default=None, help="module names to run, e.g. bench_core")
    parser.add_argument("--wal-duration", type=float, default=None,
                        help="seconds of bench_wal's sustained bounded run (default 600; make bench: 600)")
    args = parser.parse_args(argv)
    if args.wal_duration is not None:
        os.environ["BENCH_WAL_DURATION"] = str(args.wal_duration)
    os.environ["BENCH_OUT"] = args.out  # for series a module writes beside the results (bench_wal)
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if args.only:
        modules = [m for m in modules if m in args.only]
    rows: list[dict[str, Any]] = []
    for name in modules:
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        results = module.run()
        for r in results:
            r.setdefault("module", name)
            print(
                f"   {r['benchmark']:<28} {r['metric']:<22} {r['value']!s:>14} {r.get('unit', ''):<6} "
                f"{r.get('target') or '':<12} {r.get('ok', '')}",
                flush=True,
            )
        rows.extend(results)
        print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)
    meta = {
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": _commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "packages": provenance.versions(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({**meta, "results": rows}, indent=2) + "\n")
    (out / "results.md").write_text(_markdown(meta, rows))
    failed = [r for r in rows if r.get("ok") is False]
    print(f"{len(rows)} measurements, {len(failed)} below target; written to {out}/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
