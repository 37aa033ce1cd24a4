"""A long service log without a server: N decisions of the `default` policy over the routable models of OUTDIR's
catalog (64 routed templates, each decision a copy with its own id and time over the last 2 days), 2,000 tenant
values, 80 % with feedback, written through the store's bulk path into OUTDIR/router.db (SQLite).

usage, from the repository root, after `make_deployment.py`: `.venv/bin/python experiments/scale/build_log.py OUTDIR
N` (docs/service/performance.md: N = 200,000 for `check`, `export` and `evaluate` on a 100-model log; seeded).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from bandit_router.catalog import load_catalog
from bandit_router.ids import new_decision_id
from bandit_router.router import Router
from bandit_router.store import FeedbackRecord, SQLiteStore
from bandit_router.types import Request

BATCH = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description="N decisions (80 % with feedback) of make_deployment.py's catalog "
                                     "written into OUTDIR/router.db without a server (seeded)")
    parser.add_argument("outdir", type=Path, help="the folder make_deployment.py wrote")
    parser.add_argument("n", type=int, help="decisions to write")
    args = parser.parse_args()
    out, n = args.outdir, args.n
    models = [m for m in load_catalog(out / "catalog.toml") if m.route]
    router = Router(models, "default", seed=0)
    rng = np.random.default_rng(0)
    templates = [router.route(Request(prompt=f"template prompt {i}: explain topic {i % 5}" * 8,
                                      context={"tenant": f"t{i:04d}", "task": "abc"[i % 3]})) for i in range(64)]
    store = SQLiteStore(out / "router.db")
    store.prepare()
    now = time.time()
    times = np.sort(rng.uniform(now - 2 * 86400, now - 60, n))
    seq, started = 0, time.perf_counter()
    for start in range(0, n, BATCH):
        decisions, feedback = [], []
        for t in times[start:start + BATCH]:
            template = templates[int(rng.integers(64))]
            d = dataclasses.replace(template, decision_id=new_decision_id(), created_at=float(t))
            tenant = f"t{int(rng.integers(2000)):04d}"
            decisions.append((d, None, tenant))
            if rng.random() < 0.8:
                q, c = float(rng.uniform(0.2, 1.0)), float(rng.uniform(1e-5, 2e-2))
                seq += 1
                feedback.append(FeedbackRecord(
                    decision_id=d.decision_id, received_at=float(t) + 5, quality=q, cost_usd=c, input_tokens=None,
                    output_tokens=None, latency_s=None, source="bench", status="applied", learn=True,
                    reward=q - d.cost_weight * c, realised_cost_usd=c, model=d.model, tenant=tenant, seq=seq))
        with store.write() as tx:
            tx.insert_decisions(decisions)
            tx.insert_feedback(feedback)
        store.bound_wal()
    store.close()
    print(f"built {n} decisions, {seq} with feedback, in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
