"""What a feedback costs the writer thread, in process (no event loop competing for the GIL, no HTTP).

    python -m benchmarks.feedback_writer --label NAME [--code CHECKOUT]
    # → benchmarks/results/profiles/feedback-writer-NAME.txt

The package measured is this checkout's, or `--code`'s (a checkout of another commit for a before/after). An
`Engine` on a fresh SQLite file (the `default` policy, the shipped catalog, seed 1) stores decisions routed in
batches of 40; then, on the calling thread, the writer's own transaction (`Writer._transact`, then the work
between batches) runs batches of 1, 7 and 40 feedbacks, each on fresh decisions: thread CPU per transaction and
per feedback, in alternating blocks, the median of the blocks. Then the parts: reading a batch's decisions back
(`WriteTx.decisions`: the query and decoding the rows), and decoding alone (`_stored_from_row` on fetched rows),
the best of 7 repeats.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPTS = [
    "What is the capital of Australia?",
    "Write a SQL query that returns the ten customers with the highest total order value in 2024, with their names.",
    "Solve for x: 3x + 7 = 22. Show each step.",
    "Translate to French: The meeting has been moved to Thursday afternoon because the room is being painted.",
]


def measure(rounds: int) -> list[str]:
    from bandit_router.config.loader import load_settings
    from bandit_router.service.engine import Engine
    from bandit_router.service.writer import Feedback, InsertDecision
    from bandit_router.store import sqlite as store_sqlite
    from bandit_router.types import Outcome, Request

    folder = Path(tempfile.mkdtemp(prefix="feedback-writer-"))
    settings = load_settings(None, env={}, overrides={"db": str(folder / "bench.db"), "seed": 1})
    engine = Engine(settings)
    engine.store.prepare()
    engine._prepare()  # recovery, on this thread: the writer thread is not started, this thread is the writer
    sizes = (1, 7, 40)
    blocks = {1: 200, 7: 60, 40: 12}
    needed = sum(size * blocks[size] for size in sizes) * rounds + 40 * 20 + 4000
    ids: list[str] = []
    while len(ids) < needed:
        decisions = engine.router.route_many(
            [Request(prompt=PROMPTS[j % len(PROMPTS)], context={"tenant": "acme"}) for j in range(40)]
        )
        engine.writer._transact([InsertDecision(d, None, "acme") for d in decisions], False)
        ids += [d.decision_id for d in decisions]
    at = 0

    def run(size: int, count: int) -> float:
        nonlocal at
        started = time.thread_time()
        for _ in range(count):
            ops = [Feedback(ids[k], Outcome(quality=(k % 100) / 100, output_tokens=100, latency_s=0.5), None,
                            time.time()) for k in range(at, at + size)]
            at += size
            engine.writer._transact(ops, False)
            engine._between_batches()
        return (time.thread_time() - started) / count

    run(40, 20)  # warm up
    per_tx: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(rounds):
        for size in sizes:
            per_tx[size].append(run(size, blocks[size]))
    lines = ["| feedbacks per transaction | writer CPU per transaction | per feedback |", "|---|---|---|"]
    for size in sizes:
        median = statistics.median(per_tx[size])
        lines.append(f"| {size} | {median * 1e6:.0f} µs | {median / size * 1e6:.1f} µs |")
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
    from simulator.report import git_commit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="names the output file: feedback-writer-LABEL.txt")
    parser.add_argument("--out", default=str(HERE / "results" / "profiles"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--code", type=Path, default=HERE.parent, help="measure bandit_router from this checkout")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.code.resolve()))
    for name in [m for m in sys.modules if m == "bandit_router" or m.startswith("bandit_router.")]:
        del sys.modules[name]
    import bandit_router

    code = Path(bandit_router.__file__).resolve().parent.parent
    load = os.getloadavg()
    table = measure(args.rounds)
    header = [
        f"# The writer's CPU per feedback: {args.label}",
        "",
        f"bandit_router from {code} (commit {git_commit(code)}), tool at {git_commit(HERE)}; "
        f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, {platform.machine()}, {os.cpu_count()} cores "
        f"(shared with other work), Python {platform.python_version()}; load average {load[0]:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end",
        f"command: python -m benchmarks.feedback_writer --label {args.label} --rounds {args.rounds}"
        + ("" if code == HERE.parent else " --code <checkout>"),
        "",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"feedback-writer-{args.label}.txt"
    path.write_text("\n".join(header + table) + "\n")
    print("\n".join(header + table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
