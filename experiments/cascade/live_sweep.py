"""Live, through the gateway: learned escalation against a sweep of fixed thresholds on one stream of requests.

The service is served in this process on 127.0.0.1 (uvicorn), its models by the test suite's fake upstream
(`benchmarks/fake_upstream.py`): `cheap` answers code, math and prose with mean quality 0.15, 0.55 and 0.9,
`strong` with 0.95 (each answer ±0.1), and the judge reads an answer's quality with uniform ±0.25 noise. The
reward is quality − λ·(cost of the whole chain) with λ = 400: escalating to `strong` costs ≈ 0.21 quality
points, so the best is to escalate code and math and to accept prose. The learned cascade answers the whole stream
and gets the answer's quality as feedback; the thresholds 0.3, 0.5, 0.7 and 0.9 answer the stream's second half.
Reported: each one's mean reward over the second half. `tests/test_cascade_durable.py` runs seed 3 and asserts
learned ≥ best threshold − 0.02.

With `--offline`: an exploring learned cascade (`explorer`, each action's probability ≥ 0.3) answers the stream
with feedback, every threshold answers it too, and each threshold's reward is estimated offline from the
explorer's stored chains (IPS, SNIPS: `bandit_router.evaluation.escalations`) and compared with its live mean.

    PYTHONPATH=. .venv/bin/python experiments/cascade/live_sweep.py --seeds 3 4 5 6 7 8 --n 360
    PYTHONPATH=. .venv/bin/python experiments/cascade/live_sweep.py --offline --seeds 3 4 5 6 7 8 --n 240
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bandit_router.catalog import ModelSpec  # noqa: E402
from bandit_router.config import RouterAlias, Settings  # noqa: E402
from bandit_router.evaluation.escalations import RuleEstimate, evaluate_escalations, iter_chains  # noqa: E402
from bandit_router.service import create_app  # noqa: E402
from bandit_router.store import open_store  # noqa: E402
from benchmarks.fake_upstream import JUDGE, FakeUpstream, ServerThread, quality_in  # noqa: E402
from tools.loopback import loopback  # noqa: E402

QUALITY = {
    "cheap": {"code": 0.15, "math": 0.55, "prose": 0.9},
    "strong": {"code": 0.95, "math": 0.95, "prose": 0.95},
    JUDGE: {"code": 0.5, "math": 0.5, "prose": 0.5},
}
PRICES = {"cheap": (0.1, 0.2), "strong": (5.0, 15.0), JUDGE: (0.15, 0.6)}
PROMPTS = {
    "code": "Fix the bug in this Python function: def mean(xs): return sum(xs) / len(x)",
    "math": "Solve the equation x^2 - 5x + 6 = 0",
    "prose": "Write a short poem about the sea at dawn",
}
JUDGE_NOISE = 0.25
THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
FIXED = tuple(RouterAlias(f"fixed-{round(t * 100)}", "cascade", ("cheap", "strong"), judge=JUDGE, threshold=t)
              for t in THRESHOLDS)
EXPLORER = RouterAlias("explorer", "learned-cascade", ("cheap", "strong"), judge=JUDGE,
                       escalation={"floor": 0.3, "decided_floor": 1.0})
"""A learned cascade that keeps each action's probability ≥ 0.3: a log other rules can be evaluated on offline."""
ROUTERS = (RouterAlias("learned", "learned-cascade", ("cheap", "strong"), judge=JUDGE), *FIXED, EXPLORER)
LAMBDA = 400.0
"""λ of the reward: escalating to `strong` costs ≈ 0.21 quality points, a judged `cheap` answer ≈ 0.01."""


def settings(upstream_url: str, db: str, **changes: Any) -> Settings:
    """The service's settings: the three fake models (the judge never routed) and the routers above."""
    specs = tuple(ModelSpec(n, *PRICES[n], tags={"family": "fake"}, base_url=upstream_url + "/v1",
                            route=n != JUDGE) for n in PRICES)
    return Settings(db=db, models=specs, routers=ROUTERS, seed=11, **changes)


def stream(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (kind, prompt) pairs, kinds drawn uniformly; every prompt distinct."""
    rng = np.random.default_rng(seed)
    kinds = [str(k) for k in rng.choice(sorted(PROMPTS), size=n)]
    return [(kind, f"{PROMPTS[kind]} #{i}") for i, kind in enumerate(kinds)]


def ask(url: str, model: str, prompt: str) -> tuple[dict[str, Any], str]:
    """(the reply body, its decision id) for `prompt` sent to `model`, with λ = `LAMBDA`."""
    reply = loopback.post(url + "/v1/chat/completions", timeout=30, json={
        "model": model, "messages": [{"role": "user", "content": prompt}],
        "bandit_router": {"cost_weight": LAMBDA}})
    if reply.status_code != 200:
        raise RuntimeError(f"{model}: {reply.status_code} {reply.text}")
    return reply.json(), reply.headers["x-decision-id"]


def quality(body: dict[str, Any]) -> float:
    """The quality the fake's answer states (the feedback a grader would give)."""
    return quality_in(body["choices"][0]["message"]["content"]) or 0.0


def reward(body: dict[str, Any]) -> float:
    """quality − λ·(the whole chain's cost)."""
    return quality(body) - LAMBDA * float(body["bandit_router"]["cost_usd"])


@dataclass(frozen=True)
class Sweep:
    """Per router, its rewards over the stream's second half (and the learned cascade's escalation rate there)."""

    rewards: dict[str, list[float]]
    escalated: dict[str, float]

    def means(self) -> dict[str, float]:
        return {name: float(np.mean(r)) for name, r in self.rewards.items()}


def sweep(url: str, prompts: list[tuple[str, str]]) -> Sweep:
    """Send `prompts` to the learned cascade (feedback: each answer's quality) and their second half to every
    fixed threshold too."""
    half = len(prompts) // 2
    rewards: dict[str, list[float]] = {r.name: [] for r in (ROUTERS[0], *FIXED)}
    escalations: dict[str, list[bool]] = {kind: [] for kind in PROMPTS}
    for i, (kind, prompt) in enumerate(prompts):
        body, decision_id = ask(url, "learned", prompt)
        feedback = loopback.post(url + "/v1/feedback", json={"decision_id": decision_id, "quality": quality(body)})
        if feedback.status_code != 200:
            raise RuntimeError(f"feedback: {feedback.status_code} {feedback.text}")
        if i < half:
            continue
        rewards["learned"].append(reward(body))
        escalations[kind].append(body["bandit_router"]["escalations"] > 0)
        for router in FIXED:
            rewards[router.name].append(reward(ask(url, router.name, prompt)[0]))
    return Sweep(rewards, {kind: float(np.mean(e)) for kind, e in escalations.items() if e})


@dataclass(frozen=True)
class OfflineCheck:
    """Per threshold: its live mean reward, and its IPS and SNIPS estimates from the explorer's log."""

    live: dict[str, float]
    estimates: dict[str, RuleEstimate]


def offline_check(url: str, db: str, prompts: list[tuple[str, str]], thresholds: tuple[float, ...]) -> OfflineCheck:
    """Send `prompts` to the explorer (feedback: each answer's quality) and to each fixed threshold; then estimate
    every threshold offline from the explorer's stored chains (`bandit-router evaluate --escalations`'s code)."""
    routers = {f"threshold:{t:g}": f"fixed-{round(t * 100)}" for t in thresholds}
    live: dict[str, list[float]] = {rule: [] for rule in routers}
    for _, prompt in prompts:
        body, decision_id = ask(url, "explorer", prompt)
        feedback = loopback.post(url + "/v1/feedback", json={"decision_id": decision_id, "quality": quality(body)})
        if feedback.status_code != 200:
            raise RuntimeError(f"feedback: {feedback.status_code} {feedback.text}")
        for rule, name in routers.items():
            live[rule].append(reward(ask(url, name, prompt)[0]))
    store = open_store(db)
    try:
        chains = [c for c in iter_chains(store) if c.decision.policy == "learned-cascade:explorer"]
    finally:
        store.close()
    estimates = {r.rule: r for r in evaluate_escalations(chains, list(routers))}
    return OfflineCheck({rule: float(np.mean(v)) for rule, v in live.items()}, estimates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    parser.add_argument("--n", type=int, default=360)
    parser.add_argument("--offline", action="store_true",
                        help="instead: estimate the thresholds offline from the explorer's log, against live")
    args = parser.parse_args(argv)
    upstream = FakeUpstream(quality=QUALITY, seed=5, judge_noise=JUDGE_NOISE)
    fake = ServerThread(upstream)
    upstream.url = fake.url
    if args.offline:
        try:
            offline_main(fake.url, args.seeds, args.n)
        finally:
            upstream.closing = True
            fake.stop()
        return
    names = ["learned", *(r.name for r in FIXED)]
    print("| seed | " + " | ".join(names) + " | learned − best threshold | learned escalates (code, math, prose) |")
    print("|---" * (len(names) + 3) + "|")
    try:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as folder:
                server = ServerThread(create_app(settings(fake.url, str(Path(folder) / "live.db"))))
                try:
                    result = sweep(server.wait_ready(30), stream(args.n, seed))
                finally:
                    server.stop()
            means = result.means()
            gap = means["learned"] - max(v for k, v in means.items() if k != "learned")
            rates = ", ".join(f"{result.escalated.get(k, float('nan')):.2f}" for k in ("code", "math", "prose"))
            print(f"| {seed} | " + " | ".join(f"{means[n]:.3f}" for n in names) + f" | {gap:+.3f} | {rates} |",
                  flush=True)
    finally:
        upstream.closing = True
        fake.stop()


def offline_main(upstream_url: str, seeds: list[int], n: int) -> None:
    print("| seed | threshold | live mean reward | IPS [95% CI] | SNIPS [95% CI] | SNIPS − live | ESS |")
    print("|---|---|---|---|---|---|---|")
    for seed in seeds:
        with tempfile.TemporaryDirectory() as folder:
            db = str(Path(folder) / "offline.db")
            server = ServerThread(create_app(settings(upstream_url, db)))
            try:
                check = offline_check(server.wait_ready(30), db, stream(n, seed), THRESHOLDS)
            finally:
                server.stop()
        for rule, live in check.live.items():
            ips, snips = check.estimates[rule].estimates
            print(f"| {seed} | {rule} | {live:.3f} | {ips.value:.3f} [{ips.ci_low:.3f}, {ips.ci_high:.3f}] | "
                  f"{snips.value:.3f} [{snips.ci_low:.3f}, {snips.ci_high:.3f}] | {snips.value - live:+.3f} | "
                  f"{ips.ess:.0f} |", flush=True)


if __name__ == "__main__":
    main()
