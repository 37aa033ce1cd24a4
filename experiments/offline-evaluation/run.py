"""Offline evaluation against the truth: do the estimates of `bandit-router evaluate` on a real service database
match what each candidate earns when it runs online in the same world?

1. A synthetic routing world with known expected quality and cost per (prompt, model)
   (`bandit_router.evaluation.synthetic.make_world`).
2. The service (`create_app`, the real engine and SQLite store; live policy `vw-egreedy`, shadow `linucb`)
   routes N requests drawn from the world; each feedback is a Bernoulli quality and the exact cost.
3. `bandit-router evaluate --db service.db --candidates …` (the CLI, as a user runs it) estimates five
   candidates, plus the logged policy and the shadow.
4. Each candidate runs online in the same world (`simulate_log`: a Router learning from its own choices); its
   true value is the mean expected reward of its pmf at each step (exact for fixed and random policies).

Run: .venv/bin/python experiments/offline-evaluation/run.py   (writes results/ next to this file)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*install `httpx2`.*")
    from fastapi.testclient import TestClient

from bandit_router.config import Settings
from bandit_router.evaluation.synthetic import make_world, simulate_log
from bandit_router.service import create_app
from simulator.report import git_commit

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
N = 3000
LAMBDA = 100.0
WORLD_SEED = 1
SERVICE_SEED = 7
FEEDBACK_SEED = 11
ONLINE_SEED = 7
LOGGER = "vw-egreedy:epsilon=0.2"
SHADOW = "linucb"
CANDIDATES = ["fixed:gpt-4o-mini", "fixed:gpt-4.1-nano", "random", "linucb:alpha=0.5", "vw-greedy"]
ESTIMATORS = ("ips", "snips", "dr")


def log_through_service(world, db: Path) -> np.ndarray:  # type: ignore[no-untyped-def]
    """N route → feedback rounds through the service; returns the pool index of each request."""
    db.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    settings = Settings(db=db, seed=SERVICE_SEED, policy=LOGGER, models=tuple(world.models), cost_weight=LAMBDA,
                        shadow_policies=(SHADOW,), checkpoint_interval=10_000)
    rng = np.random.default_rng(FEEDBACK_SEED)
    names = world.model_names
    index = np.empty(N, dtype=np.intp)
    with TestClient(create_app(settings)) as client:
        while client.get("/readyz").status_code != 200:
            time.sleep(0.01)
        for t in range(N):
            j = int(rng.integers(len(world.prompts)))
            index[t] = j
            reply = client.post("/v1/route", json={"prompt": world.prompts[j], "context": {"task": world.tasks[j]},
                                                  "cost_weight": LAMBDA})
            reply.raise_for_status()
            decision = reply.json()
            outcome = world.outcome(j, names.index(decision["model"]), rng)
            fb = client.post("/v1/feedback", json={"decision_id": decision["decision_id"], "quality": outcome.quality,
                                                   "cost_usd": outcome.cost_usd})
            fb.raise_for_status()
    return index


def stored_pmfs(db: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The logged pmfs and the shadow's pmfs (N, K), in decision order, over `names`."""
    import sqlite3

    logged, shadow = [], []
    with sqlite3.connect(db) as conn:
        for models, pmf, shadows in conn.execute(
            "SELECT d.models, d.pmf, s.pmfs FROM decisions d JOIN shadow_pmfs s USING (decision_id) ORDER BY d.rowid"
        ):
            order = [json.loads(models).index(m) for m in names]
            logged.append(np.array(json.loads(pmf))[order])
            shadow.append(np.array(json.loads(shadows)[SHADOW])[order])
    return np.array(logged), np.array(shadow)


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    started = time.perf_counter()
    world = make_world(seed=WORLD_SEED)
    names = world.model_names
    reward = world.quality - LAMBDA * world.cost_usd  # (M, K) expected reward per pool prompt and model
    db = RESULTS / "service.db"
    index = log_through_service(world, db)
    logged_at = time.perf_counter() - started

    script = Path(sys.executable).with_name("bandit-router")
    command = [str(script), "evaluate", "--db", str(db.relative_to(HERE.parents[1])), "--out",
               str((RESULTS / "evaluation").relative_to(HERE.parents[1])), "--estimators", ",".join(ESTIMATORS),
               "--seed", "0", "--candidates", *CANDIDATES]
    done = subprocess.run(command, cwd=HERE.parents[1], capture_output=True, text=True, check=True)
    print(done.stdout)
    evaluation = json.loads((RESULTS / "evaluation" / "evaluation.json").read_text())

    # the truth: step-wise expected reward of each policy's pmf on the requests it saw
    truth: dict[str, float] = {}
    logged_pmf, shadow_pmf = stored_pmfs(db, names)
    truth["logged"] = float((logged_pmf * reward[index]).sum(axis=1).mean())
    truth[f"shadow:{SHADOW}"] = float((shadow_pmf * reward[index]).sum(axis=1).mean())
    online_kind: dict[str, str] = {"logged": "logged pmfs", f"shadow:{SHADOW}": "logged shadow pmfs"}
    for candidate in CANDIDATES:
        if candidate.startswith("fixed:") or candidate == "random":
            pool = np.zeros_like(reward)
            if candidate == "random":
                pool[:] = 1.0 / len(names)
            else:
                pool[:, names.index(candidate.split(":", 1)[1])] = 1.0
            truth[candidate] = world.value(pool, LAMBDA).reward
            online_kind[candidate] = "exact"
            continue
        sim = simulate_log(world, candidate, N, seed=ONLINE_SEED, cost_weight=LAMBDA)
        pmfs = np.array([[dict(zip(r.decision.models, r.decision.pmf, strict=True))[m] for m in names]
                         for r in sim.records])
        truth[candidate] = float((pmfs * reward[sim.context_index]).sum(axis=1).mean())
        online_kind[candidate] = f"online, {N} steps"

    rows = []
    for candidate in ["logged", f"shadow:{SHADOW}", *CANDIDATES]:
        row = {"candidate": candidate, "true_value": truth[candidate], "truth": online_kind[candidate]}
        for est in ESTIMATORS:
            r = next(x for x in evaluation["candidates"] if x["candidate"] == candidate and x["estimator"] == est)
            row[est] = {k: r[k] for k in ("value", "ci_low", "ci_high", "ess", "n")} | {"warnings": r["warnings"]}
        rows.append(row)
    summary = {
        "question": "do offline estimates from a service database match online values in the same world?",
        "n": N, "lambda": LAMBDA, "logger": LOGGER, "shadow": SHADOW,
        "seeds": {"world": WORLD_SEED, "service": SERVICE_SEED, "feedback": FEEDBACK_SEED, "online": ONLINE_SEED,
                  "evaluate": 0},
        "command": " ".join(["bandit-router", *command[1:]]),
        "commit": git_commit(),  # +dirty when code outside the result folders is uncommitted
        "rows": rows,
        "seconds": {"logging": round(logged_at, 1), "total": round(time.perf_counter() - started, 1)},
    }
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    lines = ["| candidate | true value | truth from | IPS [95% CI] | SNIPS [95% CI] | DR [95% CI] | ESS (DR) | "
             "truth in DR CI |", "|---|---:|---|---|---|---|---:|---|"]
    for row in rows:
        cells = [f"{row[e]['value']:.3f} [{row[e]['ci_low']:.3f}, {row[e]['ci_high']:.3f}]" for e in ESTIMATORS]
        inside = row["dr"]["ci_low"] <= row["true_value"] <= row["dr"]["ci_high"]
        warn = " ⚠" if row["dr"]["warnings"] else ""
        lines.append(f"| {row['candidate']} | {row['true_value']:.3f} | {row['truth']} | " + " | ".join(cells)
                     + f" | {row['dr']['ess']:.0f}{warn} | {'yes' if inside else 'no'} |")
    table = "\n".join(lines)
    (RESULTS / "table.md").write_text(table + "\n")
    print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = np.arange(len(rows))
    for offset, est, color in zip((-0.2, 0.0, 0.2), ESTIMATORS, ("tab:blue", "tab:orange", "tab:green"), strict=True):
        v = np.array([r[est]["value"] for r in rows])
        lo = np.array([r[est]["ci_low"] for r in rows])
        hi = np.array([r[est]["ci_high"] for r in rows])
        ax.errorbar(x + offset, v, yerr=[v - lo, hi - v], fmt="o", color=color, capsize=3, label=f"{est} (95% CI)")
    ax.scatter(x, [r["true_value"] for r in rows], marker="*", s=160, color="black", zorder=5, label="true value")
    ax.set_xticks(x, [r["candidate"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel(f"reward = quality − {LAMBDA:g}·cost")
    ax.set_title(f"Offline estimates from a service database vs. true value (n = {N}, logger {LOGGER})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "estimated_vs_true.png", dpi=120)
    print(f"done in {summary['seconds']['total']} s")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
