"""What a feedback (and a routed decision) costs the writer thread, in process (no event loop competing for the
GIL, no HTTP).

    python -m benchmarks.feedback_writer --label NAME [--code CHECKOUT] [--gil]
    # → benchmarks/results/profiles/feedback-writer-NAME.txt

The package measured is this checkout's, or `--code`'s (a checkout of another commit for a before/after). An
`Engine` on a fresh SQLite file (the `default` policy, the shipped catalog, seed 1) stores decisions routed in
batches of 40; then, on the calling thread, the writer's own transaction (`Writer._transact`, then the work
between batches) runs batches of 1, 7 and 40 feedbacks, each on fresh decisions, and batches of 1, 7 and 40
decisions (routed beforehand, outside the measurement): thread CPU per transaction and per feedback or decision,
in alternating blocks, the median of the blocks. Then what one transaction of each kind asks of SQLite: its
statements (the writer connection's trace callback), and with `--gil` how many times the thread released the GIL
(`perf stat` on the uprobe `probe_libpython3:PyEval_SaveThread`, which must exist: `perf probe -x
<libpython3.11.so> PyEval_SaveThread`, as root). Every release is a chance for a busy event loop to take the GIL
and for the writer to wait for it back; Python 3.11's sqlite3 releases it around each statement's step, reset
and parameter count and around *every column of every row fetched*. Then the parts: reading a batch's decisions
back (`WriteTx.decisions`: the query and decoding the rows), and decoding alone (`_stored_from_row` on fetched
rows), the best of 7 repeats.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import provenance

HERE = Path(__file__).resolve().parent
PROMPTS = [
    "What is the capital of Australia?",
    "Write a SQL query that returns the ten customers with the highest total order value in 2024, with their names.",
    "Solve for x: 3x + 7 = 22. Show each step.",
    "Translate to French: The meeting has been moved to Thursday afternoon because the room is being painted.",
]


GIL_PROBE = "probe_libpython3:PyEval_SaveThread"


def _releases(run: Callable[[], None]) -> int | None:
    """How many times this process released the GIL during `run()` (`perf stat` on `GIL_PROBE`), or None."""
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", GIL_PROBE, "-p", str(os.getpid())],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # perf attaches
    run()
    perf.send_signal(signal.SIGINT)
    for line in perf.communicate()[1].splitlines():
        if GIL_PROBE in line and line.split(",")[0].isdigit():
            return int(line.split(",")[0])
    return None


def measure(rounds: int, gil: bool) -> list[str]:
    """The report's lines, measured on a database of ≈ 50 MB in a folder of its own, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="feedback-writer-"))
    try:
        return _measure(folder, rounds, gil)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _measure(folder: Path, rounds: int, gil: bool) -> list[str]:
    from bandit_router.config.loader import load_settings
    from bandit_router.service.engine import Engine
    from bandit_router.service.writer import Feedback, InsertDecision, Op
    from bandit_router.store import sqlite as store_sqlite
    from bandit_router.types import Decision, Outcome, Request

    settings = load_settings(None, env={}, overrides={"db": str(folder / "bench.db"), "seed": 1})
    engine = Engine(settings)
    engine.store.prepare()
    engine._prepare()  # recovery, on this thread: the writer thread is not started, this thread is the writer
    sizes = (1, 7, 40)
    blocks = {1: 200, 7: 60, 40: 12}
    probes = 20  # transactions of each kind and size whose statements and GIL releases are counted
    needed = sum(size * blocks[size] for size in sizes) * rounds + 40 * 20 + 4000 + probes * (7 + 40)
    ids: list[str] = []

    def routed(count: int) -> list[Decision]:
        out: list[Decision] = []
        while len(out) < count:
            out += engine.router.route_many(
                [Request(prompt=PROMPTS[j % len(PROMPTS)], context={"tenant": "acme"}) for j in range(40)]
            )
        return out[:count]

    while len(ids) < needed:
        decisions = routed(40)
        engine.writer._transact([InsertDecision(d, None, "acme") for d in decisions], False)
        ids += [d.decision_id for d in decisions]
    fresh = iter(routed(sum(size * blocks[size] for size in sizes) * rounds + 40 * 4 + probes * (7 + 40)))
    at = 0

    def feedbacks(size: int) -> list[Feedback]:
        nonlocal at
        ops = [Feedback(ids[k], Outcome(quality=(k % 100) / 100, output_tokens=100, latency_s=0.5), None,
                        time.time()) for k in range(at, at + size)]
        at += size
        return ops

    def inserts(size: int) -> list[InsertDecision]:
        return [InsertDecision(next(fresh), None, "acme") for _ in range(size)]

    def run(make: Callable[[int], Sequence[Op]], size: int, count: int) -> float:
        batches = [make(size) for _ in range(count)]  # made (and routed) outside the measurement
        started = time.thread_time()
        for ops in batches:
            engine.writer._transact(ops, False)
            engine._between_batches()
        return (time.thread_time() - started) / count

    kinds: dict[str, Callable[[int], Sequence[Op]]] = {"feedbacks": feedbacks, "decisions": inserts}
    run(feedbacks, 40, 20)  # warm up
    run(inserts, 40, 4)
    per_tx: dict[tuple[str, int], list[float]] = {(kind, size): [] for kind in kinds for size in sizes}
    for _ in range(rounds):
        for kind, make in kinds.items():
            for size in sizes:
                per_tx[kind, size].append(run(make, size, blocks[size]))
    lines = ["| per transaction | writer CPU per transaction | per feedback or decision |", "|---|---|---|"]
    for kind, size in per_tx:
        median = statistics.median(per_tx[kind, size])
        lines.append(f"| {size} {kind} | {median * 1e6:.0f} µs | {median / size * 1e6:.1f} µs |")
    lines += ["", "| per transaction | SQL statements | kinds | GIL releases (`--gil`) |", "|---|---|---|---|"]
    conn = engine.store._writer_conn()
    for kind, make in kinds.items():
        for size in (7, 40):
            batches = [make(size) for _ in range(probes)]
            statements: list[str] = []
            conn.set_trace_callback(statements.append)

            def transact(batches: list[Sequence[Op]] = batches) -> None:
                for ops in batches:
                    engine.writer._transact(ops, False)
            released = _releases(transact) if gil else (transact(), None)[1]
            conn.set_trace_callback(None)
            words = [" ".join(sql.split()[:2]) for sql in statements]
            counted = ", ".join(f"{w} ×{words.count(w) / probes:g}" for w in dict.fromkeys(words))
            lines.append(f"| {size} {kind} | {len(statements) / probes:g} | {counted} | "
                         f"{'—' if released is None else f'{released / probes:.0f}'} |")
    read_ids = ids[-4000:]
    with engine.store.read() as reader:
        def read() -> None:
            for i in range(0, len(read_ids), 40):
                reader.decisions(read_ids[i : i + 40])
        read_s = min(timeit.repeat(read, number=1, repeat=7)) / len(read_ids)
    engine.store.close()
    conn = sqlite3.connect(folder / "bench.db")
    sql = f"SELECT {store_sqlite._DECISIONS} FROM decisions WHERE decision_id IN ({','.join('?' * 40)})"
    rows = [row for i in range(0, len(read_ids), 40) for row in conn.execute(sql, read_ids[i : i + 40]).fetchall()]
    conn.close()

    def decode() -> None:
        for row in rows:
            store_sqlite._stored_from_row(row)
    decode_s = min(timeit.repeat(decode, number=1, repeat=7)) / len(rows)
    lines += [
        "",
        f"reading decisions back (WriteTx.decisions, 40 per call): {read_s * 1e6:.1f} µs per decision, of it "
        f"decoding the row (_stored_from_row): {decode_s * 1e6:.1f} µs",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    from simulator.report import checkout_commit, git_commit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    provenance.add_output_arguments(parser, "feedback-writer-LABEL.txt")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--code", type=Path, default=HERE.parent, help="measure bandit_router from this checkout")
    parser.add_argument("--gil", action="store_true", help=f"count GIL releases per transaction ({GIL_PROBE})")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.code.resolve()))
    for name in [m for m in sys.modules if m == "bandit_router" or m.startswith("bandit_router.")]:
        del sys.modules[name]
    import bandit_router

    code = Path(bandit_router.__file__).resolve().parent.parent
    checkout_commit(code)  # read before the run: the commit the header records is the one it started from
    load = os.getloadavg()
    table = measure(args.rounds, args.gil)
    header = [
        f"# The writer's CPU per feedback: {args.label}",
        "",
        f"bandit_router from {code} (commit {checkout_commit(code)}), tool at {git_commit()}; "
        f"{provenance.machine()}; {provenance.load_note(load[0], os.getloadavg()[0])}",
        f"command: python -m benchmarks.feedback_writer --label {args.label} --rounds {args.rounds}"
        + ("" if code == HERE.parent else " --code <checkout>") + (" --gil" if args.gil else ""),
        "",
    ]
    provenance.write_report(args.out, f"feedback-writer-{args.label}.txt", header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
