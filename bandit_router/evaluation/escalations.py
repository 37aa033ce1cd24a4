"""Learned cascades' escalation decisions as a bandit log: one DSJSON event per accept/escalate step, with the
propensity it was logged with, so the escalation policy can be evaluated (or trained) offline like any other
(`bandit-router export --escalations`).

The log is what the escalation learners learn (`Reader.chains_after`: the first `unrouted` feedback of each
`learned-cascade:` decision, with the chain stored beside its call record), read in feedback order. Per step k of
a chain, an event over two actions, `accept` and `escalate`:

    {"_label_cost": −reward, "_label_probability": p(action taken), "_label_Action": 1|2, "_labelIndex": 0|1,
     "a": [taken, other], "p": [p(taken), p(other)],
     "c": {"s_w": {…}, … the prompt's stored hashed features (as `dsjson.to_dsjson`),
           "s_k": {"step": k, "confidence": s, "missing": 1 when the signal gave none},
           "_multi": [{"a": {"action": "accept"}}, {"a": {"action": "escalate"}}]},
     "EventId": "<decision id>/<k>", "_bandit_router": {router, model, next_model, confidence, p_escalate,
                                                        quality, chain_cost_usd, cost_weight, reward, …}}

with reward = final quality − λ·(total cost of the chain), λ the decision's `cost_weight`: the quantity the
learner's two actions estimate (up to the sunk cost before step k, common to both actions).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, TextIO

from ..errors import InvalidInput
from ..log.escalations import LEARNED_CASCADE
from ..store import ChainFeedback, Store
from .dsjson import SHARED_PREFIX, _namespace, _timestamp

PAGE = 2000
ACTIONS = ("accept", "escalate")


def iter_chains(store: Store, *, page: int = PAGE) -> Iterator[ChainFeedback]:
    """Every learned chain in the store, in feedback order (what the escalation learners learned)."""
    seq = 0
    while True:
        with store.read() as reader:
            head = reader.head()[0]
            rows = reader.chains_after(seq, head, page)
        if not rows:
            return
        yield from rows
        seq = rows[-1].record.seq


def escalation_events(item: ChainFeedback, *, label: str = "reward") -> list[dict[str, Any]]:
    """The DSJSON events of one learned chain's steps (see the module docstring)."""
    if label not in ("reward", "quality"):
        raise InvalidInput("label must be 'reward' or 'quality'")
    d = item.decision
    chain = json.loads(item.chain)
    quality = float(item.record.quality)
    cost = float(chain.get("cost_usd", 0.0))
    reward = quality if label == "quality" else quality - d.cost_weight * cost
    prompt: dict[str, Any] = {
        SHARED_PREFIX + ns: _namespace(idx, val) for ns, (idx, val) in d.context.features.items() if len(idx)
    }
    models = list(d.models)
    events = []
    for step in chain.get("steps", []):
        taken = ACTIONS.index(step["action"])
        p_escalate = float(step["p_escalate"])
        probabilities = (1.0 - p_escalate, p_escalate)
        confidence = step.get("confidence")
        position = models.index(step["model"]) if step["model"] in models else int(step["step"])
        state: dict[str, float] = {"step": float(step["step"])}
        if confidence is None:
            state["missing"] = 1.0
        else:
            state["confidence"] = float(confidence)
        events.append({
            "_label_cost": -reward,
            "_label_probability": probabilities[taken],
            "_label_Action": taken + 1,
            "_labelIndex": taken,
            "a": [taken + 1, 2 - taken],
            "p": [probabilities[taken], probabilities[1 - taken]],
            "c": {**prompt, SHARED_PREFIX + "k": state, "_multi": [{"a": {"action": a}} for a in ACTIONS]},
            "EventId": f"{d.decision_id}/{step['step']}",
            "Timestamp": _timestamp(d.created_at),
            "Version": "1",
            "_bandit_router": {
                "router": d.policy[len(LEARNED_CASCADE):],
                "model": step["model"],
                "next_model": models[position + 1] if position + 1 < len(models) else None,
                "confidence": confidence,
                "p_escalate": p_escalate,
                "expected_extra_cost_usd": step.get("expected_extra_cost_usd"),
                "answered_by": d.model,
                "quality": quality,
                "chain_cost_usd": cost,
                "cost_weight": d.cost_weight,
                "reward": reward,
                "feedback_seq": item.record.seq,
            },
        })  # fmt: skip
    return events


def export_escalations(store: Store, fp: TextIO, *, label: str = "reward") -> int:
    """Write every learned chain's steps to `fp` as DSJSON lines; returns the number of lines written."""
    written = 0
    for item in iter_chains(store):
        for event in escalation_events(item, label=label):
            fp.write(json.dumps(event, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n")
            written += 1
    return written
