"""Before/after on one machine in one run: two `bandit-router serve` processes, one serving the package of another
checkout (`--base`), one this checkout's, loaded in interleaved rounds so that a neighbour's load weighs on both.

    git worktree add /tmp/base <commit>   # or: git archive <commit> bandit_router | tar -x -C /tmp/base
    python -m benchmarks.ab_http --base /tmp/base --label issue-12-hotpath3

For each connection count, each round runs `GET /healthz` and `POST /v1/route` on the base server, then on this
checkout's (the order alternates between rounds), with `bench_http`'s scripts and `wrk -t1`. Reported per
server: requests/s, the server's CPU µs per request (from /proc: robust to a busy machine), the event-loop and
writer threads' share of it, their voluntary context switches per request (a thread that blocks: the loop in
epoll or waiting for the GIL, the writer waiting for work or for the GIL back after a statement), and the route ÷
healthz ratios of requests/s and of CPU. `--workers 2` compares
two-worker servers instead, and adds each one's `/v1/route` with one worker for the scaling ratio. `--feedback`
adds `POST /v1/feedback` to each round, on decisions routed just before the run (one fresh id per request, as
`bench_http` does).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import bench_http, provenance
from simulator.report import checkout_commit

HERE = Path(__file__).resolve().parent


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread role of the server (and its workers): `loop` (each process's main thread) and
    `other` (the writer, the maintenance thread); and their voluntary context switches (`loop_switches`,
    `other_switches`: a thread that blocks, in epoll, on a lock, or waiting for the GIL)."""
    out = {"loop": 0.0, "other": 0.0, "loop_switches": 0.0, "other_switches": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    for p in bench_http._process_tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    role = "loop" if int(task.name) == p else "other"
                    out[role] += (int(fields[11]) + int(fields[12])) / tick
                    for line in (task / "status").read_text().splitlines():
                        if line.startswith("voluntary_ctxt_switches:"):
                            out[f"{role}_switches"] += int(line.split()[1])
    return out


FEEDBACK_IDS_PER_S = 6000
"""Fresh decision ids handed to one feedback run, per second of it (more than a server here answers)."""


def _measure(wrk: str, server: bench_http.Server, name: str, connections: int, duration: int) -> dict[str, Any]:
    args = []
    if name == "feedback":  # one fresh decision per request, routed before the measured run (as bench_http)
        args = [str(server.fresh_ids(FEEDBACK_IDS_PER_S * duration, f"ab-{server.used_ids}"))]
    before = _thread_cpu(server.pid)
    m = bench_http.load(wrk, server, name, connections, duration, *args)
    after = _thread_cpu(server.pid)
    n = max(m["requests"], 1)
    m["loop_us"] = (after["loop"] - before["loop"]) / n * 1e6
    m["other_us"] = (after["other"] - before["other"]) / n * 1e6
    m["loop_switches"] = (after["loop_switches"] - before["loop_switches"]) / n
    m["other_switches"] = (after["other_switches"] - before["other_switches"]) / n
    return m


def _total(runs: list[dict[str, Any]]) -> dict[str, float]:
    n = sum(r["requests"] for r in runs)
    seconds = sum(r["duration_us"] for r in runs) / 1e6
    return {
        "rps": n / seconds,
        "cpu_us": sum(r["cpu_us"] * r["requests"] for r in runs) / n,
        "loop_us": sum(r["loop_us"] * r["requests"] for r in runs) / n,
        "other_us": sum(r["other_us"] * r["requests"] for r in runs) / n,
        "loop_switches": sum(r["loop_switches"] * r["requests"] for r in runs) / n,
        "other_switches": sum(r["other_switches"] * r["requests"] for r in runs) / n,
        "p50_ms": max(r["p50_us"] for r in runs) / 1000,
        "p99_ms": max(r["p99_us"] for r in runs) / 1000,
        "errors": sum(r["errors"] for r in runs),
    }


def compare(base: Path, connections: list[int], rounds: int, duration: int, workers: int,
            this: Path = HERE.parent, feedback: bool = False) -> list[str]:
    wrk = bench_http.wrk_path()
    if wrk is None:
        raise SystemExit("needs wrk")
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    names = ["healthz", "route", *(["feedback"] if feedback else [])]
    with tempfile.TemporaryDirectory(prefix="ab-http-") as tmp, contextlib.ExitStack() as stack:
        servers = {
            "base": stack.enter_context(bench_http.serving(Path(tmp) / "base", workers, base)),
            "this": stack.enter_context(bench_http.serving(Path(tmp) / "this", workers, this)),
        }
        singles = {}
        if workers > 1:
            singles = {
                "base": stack.enter_context(bench_http.serving(Path(tmp) / "base1", 1, base)),
                "this": stack.enter_context(bench_http.serving(Path(tmp) / "this1", 1, this)),
            }
        for server in [*servers.values(), *singles.values()]:
            bench_http.warm_up(server)
        for i in range(rounds):
            order = ["base", "this"] if i % 2 == 0 else ["this", "base"]
            for c in connections:
                for side in order:
                    for name in names:
                        runs.setdefault((side, name, c), []).append(_measure(wrk, servers[side], name, c, duration))
                    if singles:
                        runs.setdefault((side, "route-1", c), []).append(
                            _measure(wrk, singles[side], "route", c, duration))
    lines = [
        "| server | connections | endpoint | req/s | p50 ms | p99 ms | server CPU µs/req | event loop | other threads "
        "| voluntary switches/req: loop, others | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = ["", "| server | connections | route ÷ healthz req/s | CPU ratio (healthz ÷ route) |"
              + (" feedback ÷ healthz req/s | CPU ratio (healthz ÷ feedback) |" if feedback else ""),
              "|---|---|---|---|" + ("---|---|" if feedback else "")]
    for c in connections:
        for side in ("base", "this"):
            totals = {name: _total(runs[side, name, c]) for name in [*names, *(["route-1"] if singles else [])]}
            for name, t in totals.items():
                lines.append(
                    f"| {side} | {c} | {name} | {t['rps']:,.0f} | {t['p50_ms']:.2f} | {t['p99_ms']:.1f} | "
                    f"{t['cpu_us']:.0f} | {t['loop_us']:.0f} | {t['other_us']:.0f} | "
                    f"{t['loop_switches']:.2f}, {t['other_switches']:.2f} | {t['errors']} |"
                )
            h, r = totals["healthz"], totals["route"]
            row = f"| {side} | {c} | {r['rps'] / h['rps']:.2f} | {h['cpu_us'] / r['cpu_us']:.2f} |"
            if feedback:
                f = totals["feedback"]
                row += f" {f['rps'] / h['rps']:.2f} | {h['cpu_us'] / f['cpu_us']:.2f} |"
            if singles:
                row += f" {workers} workers ÷ 1 on route: {r['rps'] / totals['route-1']['rps']:.2f} |"
            ratios.append(row)
    return lines + ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="a checkout whose bandit_router is the baseline")
    parser.add_argument("--base-commit", default=None, help="the base's commit, when --base is not a git checkout")
    parser.add_argument("--this", type=Path, default=HERE.parent, help="the checkout compared with the base")
    provenance.add_output_arguments(parser, "ab-LABEL.md", duration=4)
    parser.add_argument("--connections", default="8,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--feedback", action="store_true", help="also POST /v1/feedback (fresh decision ids)")
    args = parser.parse_args(argv)
    for side in (args.base, args.this):  # read before the run: the header records the commits it started from
        checkout_commit(side)
    load = os.getloadavg()
    table = compare(args.base, [int(c) for c in args.connections.split(",")], args.rounds, args.duration,
                    args.workers, args.this, args.feedback)
    after = os.getloadavg()
    header = [
        f"# Before/after: {args.label}",
        "",
        f"base: bandit_router at commit {args.base_commit or checkout_commit(args.base)}; "
        f"this: {checkout_commit(args.this)}; "
        f"{provenance.machine()}; {provenance.load_note(load[0], after[0])}",
        f"command: python -m benchmarks.ab_http --base <checkout of the base> --label {args.label} --connections "
        f"{args.connections} --rounds {args.rounds} --duration {args.duration} --workers {args.workers}"
        + (" --feedback" if args.feedback else ""),
        "",
    ]
    provenance.write_report(args.out, f"ab-{args.label}.md", header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
