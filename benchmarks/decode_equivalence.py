"""A stored decision decodes to the same values with this checkout's store as with another's (fifth pass).

    python -m benchmarks.decode_equivalence --base CHECKOUT

An `Engine` (the `default` policy, the shipped catalog, seed 7) on a fresh SQLite file routes `--decisions`
random prompts (ASCII, accented, CJK, emoji, code, arithmetic) with random contexts in batches of 40, stores them
through the writer's transaction, then learns one random feedback for each. Printed: the SHA-256 of the learned
policy state, computed once with this checkout's package and once, in a subprocess, with the base's (the feedback
path reads every decision back through the decoder, so a decoder that changed a value changes the hash); then
every stored row decoded by both packages' `_stored_from_row`, compared field by field (values, types, the
arrays' dtype, shape and bytes; the new arrays aligned and C-contiguous), and the time each takes per row (best
of 15 alternating passes). Exit status 1 on any difference.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def learned_hash(db: Path, n: int) -> str:
    """Route, store and learn a seeded stream with the imported `bandit_router`; the learned state's SHA-256."""
    from bandit_router.config.loader import load_settings
    from bandit_router.service.engine import Engine
    from bandit_router.service.writer import Feedback, InsertDecision
    from bandit_router.types import Outcome, Request

    engine = Engine(load_settings(None, env={}, overrides={"db": str(db), "seed": 7}))
    engine.store.prepare()
    engine._prepare()  # recovery, on this thread: the writer thread is not started, this thread is the writer
    rng = np.random.default_rng(3)
    words = ["the", "a", "database", "SQL", "solve", "3x+7=22", "def", "fib(n):", "translate", "français", "北京",
             "😀", "haiku", "latency", "python"]
    ids: list[str] = []
    for _ in range(0, n, 40):
        requests = [
            Request(prompt=" ".join(rng.choice(words, size=int(rng.integers(1, 60)))),
                    context={"tenant": str(rng.choice(["acme", "globex"])), "tier": int(rng.integers(0, 3))})
            for _ in range(40)
        ]
        decisions = engine.router.route_many(requests)
        engine.writer._transact([InsertDecision(d, None, str(r.context["tenant"]))
                                 for d, r in zip(decisions, requests, strict=True)], False)
        ids += [d.decision_id for d in decisions]
    for i in range(0, len(ids), 40):
        engine.writer._transact([
            Feedback(ids[k], Outcome(quality=float(rng.random()), output_tokens=int(rng.integers(1, 500)),
                                     latency_s=float(rng.random())), None, time.time())
            for k in range(i, i + 40)
        ], False)
    state = engine.router.policy.state()
    engine.store.close()
    text = json.dumps(state, sort_keys=True, default=lambda a: np.asarray(a).tolist())
    return hashlib.sha256(text.encode()).hexdigest()


def _same(a: Any, b: Any, where: str) -> None:
    assert type(a).__name__ == type(b).__name__, f"{where}: {type(a)} against {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), where
        assert a.flags.aligned and a.flags.c_contiguous, f"{where}: not aligned or not contiguous"
    elif isinstance(a, dict) or type(a).__name__ == "mappingproxy":
        assert list(a) == list(b), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, tuple | list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif hasattr(a, "__dict__") and not isinstance(a, str | bytes):
        assert vars(a).keys() == vars(b).keys(), where
        for key in vars(a):
            _same(vars(a)[key], vars(b)[key], f"{where}.{key}")
    elif isinstance(a, float):
        assert repr(a) == repr(b), f"{where}: {a!r} against {b!r}"
    else:
        assert a == b, f"{where}: {a!r} against {b!r}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="a checkout whose bandit_router is the baseline")
    parser.add_argument("--decisions", type=int, default=6000)
    parser.add_argument("--hash-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hash_only is not None:  # the subprocess: the base's package first on the path
        print(learned_hash(args.hash_only, args.decisions))
        return 0
    from bandit_router.store import sqlite as this_store

    folder = Path(tempfile.mkdtemp(prefix="decode-equivalence-"))
    mine = learned_hash(folder / "this.db", args.decisions)
    # this tool from this checkout, then the base's bandit_router first on the path (a checkout has both)
    code = (f"import sys; sys.path.insert(0, {str(HERE.parent)!r}); from benchmarks.decode_equivalence import main; "
            f"sys.path.insert(0, {str(args.base.resolve())!r}); sys.exit(main(sys.argv[1:]))")
    base = subprocess.run([sys.executable, "-c", code, "--base", str(args.base), "--decisions", str(args.decisions),
                           "--hash-only", str(folder / "base.db")], capture_output=True, text=True, check=True)
    theirs = base.stdout.split()[-1]
    print(f"learned state after {args.decisions} decisions and feedbacks: this {mine}, base {theirs}")
    sys.path.insert(0, str(args.base.resolve()))
    for name in [m for m in sys.modules if m == "bandit_router" or m.startswith("bandit_router.")]:
        del sys.modules[name]
    base_store = importlib.import_module("bandit_router.store.sqlite")
    assert Path(base_store.__file__).resolve().is_relative_to(args.base.resolve()), base_store.__file__
    conn = sqlite3.connect(folder / "this.db")
    rows = conn.execute(f"SELECT {this_store._DECISIONS} FROM decisions").fetchall()
    conn.close()
    for row in rows:
        new, old = this_store._stored_from_row(row), base_store._stored_from_row(row)
        _same(new.decision, old.decision, row[0])
        assert (new.prompt, new.tenant) == (old.prompt, old.tenant), row[0]
    print(f"decoders agree on {len(rows)} rows")
    best = {"this": float("inf"), "base": float("inf")}
    for _ in range(15):  # alternating, the best of each: robust to a machine shared with other work
        for side, store in (("this", this_store), ("base", base_store)):
            started = time.perf_counter()
            for row in rows:
                store._stored_from_row(row)
            best[side] = min(best[side], (time.perf_counter() - started) / len(rows))
    print(f"decoding a row (_stored_from_row, best of 15 alternating passes over the {len(rows)} rows): "
          f"this {best['this'] * 1e6:.1f} µs, base {best['base'] * 1e6:.1f} µs")
    return 0 if mine == theirs else 1


if __name__ == "__main__":
    sys.exit(main())
