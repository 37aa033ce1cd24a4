"""How long a checkpoint save holds the writer: the learned state of a deployment's newest checkpoint, saved again
and again into a copy of its database by a loop that stands in for the writer thread (each round: one small
write transaction, as a batch of decisions, then the work between batches), alternating the two ways a save can
hold it, in the same minutes:

- `one transaction`: the save before 2026-11-28 (snapshot, sha256 and the insert of the whole blob, in one round);
- `in parts`: `Checkpointer.step` (capture, then a piece of packing, of hashing, or a part of `PART_BYTES`, a round).

Prints per way: the longest round (what a decision waiting for its commit waits at most), the rounds the save
took, and the median round without a save. usage, from the repository root, after a run of `ckpt_stall.py` or
`load.py` stored a checkpoint: `.venv/bin/python experiments/scale/checkpoint_hold.py /tmp/scale [--saves 6]
[--postgres]`.
Unseeded timings on a shared machine: say the load average (`uptime`) with any figure.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bandit_router.config.loader import load_settings
from bandit_router.log.checkpoints import PART_BYTES, Checkpointer, fingerprint
from bandit_router.log.follower import LogFollower
from bandit_router.log.policies import PolicySet
from bandit_router.store.location import DatabaseURL, open_store


def batch(store: object, i: int) -> None:
    """A small write transaction: what a batch of decisions costs the writer, about."""
    with store.write() as tx:  # type: ignore[attr-defined]
        tx.set_meta("checkpoint_hold", str(i))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("deployment", help="folder with bandit-router.toml and router.db holding a checkpoint")
    parser.add_argument("--saves", type=int, default=6, help="saves of each way, alternating")
    parser.add_argument("--postgres", action="store_true",
                        help="save into a throwaway PostgreSQL server (tools/pg_server.py) instead of a copy of the "
                             "SQLite file")
    args = parser.parse_args()
    out = Path(args.deployment)
    settings = load_settings(out / "bandit-router.toml")
    work = Path(tempfile.mkdtemp(prefix="checkpoint-hold-"))
    server = None
    try:
        shutil.copy(out / "router.db", work / "router.db")
        source = open_store(work / "router.db")
        source.prepare()  # a database of the code before parts: migrated
        policies = PolicySet(settings)
        follower = LogFollower(policies)
        with source.read() as reader:
            newest = reader.checkpoints(fingerprint(settings))[0]
            policies.restore(reader.checkpoint_state(newest.id))
        store = source
        if args.postgres:
            sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's tools/
            from tools.pg_server import PgServer

            server = PgServer.start()
            store = open_store(DatabaseURL(server.create_database("hold")))
            store.prepare()
        checkpointer = Checkpointer(store, settings, follower)
        follower.applied_seq = follower.chain_seq = newest.seq
        follower.applied_event = newest.event_id
        size = 0
        rounds: dict[str, list[float]] = {"one transaction": [], "in parts": []}
        saves: dict[str, list[int]] = {"one transaction": [], "in parts": []}
        idle: list[float] = []
        steps: dict[str, float] = {}
        position = newest.seq
        for i in range(2 * args.saves):
            way = ("one transaction", "in parts")[i % 2]
            position += 1  # a new position for each save (as if feedback had been learned)
            follower.applied_seq = follower.chain_seq = position
            for _ in range(20):  # rounds without a save
                started = time.perf_counter()
                batch(store, i)
                idle.append(time.perf_counter() - started)
            took = 0
            longest = 0.0
            if way == "one transaction":
                started = time.perf_counter()
                batch(store, i)
                state = policies.snapshot()
                size = len(state)
                with store.write() as tx:
                    tx.insert_checkpoint(fingerprint=checkpointer.fingerprint, seq=position, event_id=newest.event_id,
                                         version=position, sha256=hashlib.sha256(state).hexdigest(), state=state,
                                         keep=3)
                longest, took = time.perf_counter() - started, 1
            else:
                checkpointer.version = -(10**9)  # due at once
                while True:
                    saving = checkpointer._saving
                    kind = ("capture" if saving is None else "packing" if saving.state is None
                            else "part" if saving.next_part * PART_BYTES < len(saving.state) else "row")
                    started = time.perf_counter()
                    batch(store, i)
                    done = checkpointer.step()
                    elapsed = time.perf_counter() - started
                    longest = max(longest, elapsed)
                    steps[kind] = max(steps.get(kind, 0.0), elapsed)
                    took += 1
                    if done:
                        break
            rounds[way].append(longest)
            saves[way].append(took)
        backend = "PostgreSQL" if args.postgres else "SQLite"
        print(f"{backend}: state {size / 1e6:.1f} MB, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
              f"round without a save: median {statistics.median(idle) * 1000:.1f} ms")
        for way in rounds:
            print(f"{way}: longest round per save {' '.join(f'{x * 1000:.0f}' for x in rounds[way])} ms "
                  f"(median {statistics.median(rounds[way]) * 1000:.0f}); rounds per save {saves[way]}")
        print("in parts, the longest round of each step: "
              + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in steps.items()))
        store.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
