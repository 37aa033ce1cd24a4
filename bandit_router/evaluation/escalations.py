"""Learned cascades' escalation decisions as a bandit log: one DSJSON event per accept/escalate step, with the
propensity it was logged with, so the escalation policy can be evaluated (or trained) offline like any other
(`bandit-router export --escalations`).

The log is what the escalation learners learn (`Reader.chains_after`: the first `unrouted` feedback of each
`learned-cascade:` decision, with the chain stored beside its call record), read in feedback order. Per step k of
a chain, an event over two actions, `accept` and `escalate`:

    {"_label_cost": −reward, "_label_probability": p(action taken), "_label_Action": 1|2, "_labelIndex": 0|1,
     "a": [taken, other], "p": [p(taken), p(other)],
     "c": {"s_w": {…}, … the prompt's stored hashed features (as `dsjson.to_dsjson`),
           "s_k": {"step": k, "confidence": s, "missing": 1 when the signal gave none,
                   "previous": p, "previous_missing": 1 when that step's signal gave none},
           "_multi": [{"a": {"action": "accept"}}, {"a": {"action": "escalate"}}]},
     "EventId": "<decision id>/<k>", "_bandit_router": {router, model, next_model, confidence, earlier, p_escalate,
                                                        quality, chain_cost_usd, cost_weight, reward,
                                                        chain_version, …}}

k is the step's chain position, the position of the model whose answer it decided on (`step` as stored: after a
failed model it is more than the number of steps before it; chains stored before the step became the chain
position hold that number instead, which differs only where a model failed before the step), so `EventId` and
`s_k.step` name the position. The reward is final quality − λ·(total cost of the chain), λ the decision's
`cost_weight`: the quantity the learner's two actions estimate (up to the sunk cost before step k, common to both
actions). p is the previous position's score, what `EscalationParams.history` reads (`history_features`:
[1{p missing}, p, p·s]): at positions after the first only (`previous`, or `previous_missing` when that model's
signal gave none or it failed; neither at position 0). `earlier` is the `earlier` the step was decided with and the
learner's `state_vector` takes (`log.escalations.stored_earlier`): one score per earlier chain position (null where
the signal gave none or the model failed; [] at step 0), or, for a chain stored before that (no `version`), the
confidences of the steps before it; `chain_version` is the stored chain's version (1 or 2: which of the two
`earlier` is). A chain this release cannot read (a version other than an int from 1 to `CHAIN_VERSION`, a
version-2 step that is not a position of its chain) is not exported (`decodes`). Exports written before these
fields existed lack them (their steps after the first cannot feed a learner with `history`; re-export from the
database).

`evaluate_escalations` estimates, from the same log, what another escalation rule would have earned per request
(`bandit-router evaluate --escalations`). A chain is one round; its logged propensity is the product of its
steps' probabilities, μ = Π_k p(a_k). A deterministic rule π (`threshold:T` escalates when the step's confidence
is missing or below T; `accept`, `escalate`; `logged` is the log's own policy) reproduces the logged trajectory or
not: the round's weight is w = 1{π took every logged action}/μ (a rule that leaves the logged path would have
seen confidences the log does not hold, and has weight 0 there, as in any IPS). IPS = (1/n) Σ w·r and SNIPS =
Σ w·r / Σ w (`estimators.py`), with their normal intervals and the effective sample size of the weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from ..errors import InvalidInput
from ..log.escalations import LEARNED_CASCADE, chain_version, stored_earlier
from ..store import ChainFeedback, Store
from .dsjson import SHARED_PREFIX, _namespace, _timestamp, check_label
from .estimators import IPS, SNIPS, Estimate

PAGE = 2000
ACTIONS = ("accept", "escalate")


def decodes(item: ChainFeedback) -> bool:
    """Whether `item`'s stored chain is one the estimators can read: JSON with well-formed steps (an action, its
    probability in (0, 1], p_escalate in [0, 1], a number or null as confidence), a finite cost, a version this
    release reads and, in every version, each step at a position of the chain (`log.escalations.stored_earlier`).
    The learners skip one that does not decode."""
    if item.decision is None:  # its decision's stored values do not decode
        return False
    try:
        chain = json.loads(item.chain)
        steps = chain["steps"]
        return isinstance(steps, list) and math.isfinite(float(chain.get("cost_usd", 0.0))) and all(
            s["action"] in ACTIONS and 0.0 < float(s["probability"]) <= 1.0 and 0.0 <= float(s["p_escalate"]) <= 1.0
            and isinstance(s["model"], str) and isinstance(s["step"], int)
            and (s.get("confidence") is None or math.isfinite(float(s["confidence"])))
            for s in steps
        ) and all(stored_earlier(chain, i) is not None for i in range(len(steps)))  # its version and positions
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def iter_chains(store: Store, *, page: int = PAGE, skipped: list[ChainFeedback] | None = None
                ) -> Iterator[ChainFeedback]:
    """Every learned chain in the store, in feedback order (what the escalation learners learned); a chain that
    does not decode (`decodes`) is left out, and added to `skipped` when given."""
    seq = 0
    while True:
        with store.read() as reader:
            head = reader.head()[0]
            rows = reader.chains_after(seq, head, page)
        if not rows:
            return
        for item in rows:
            if decodes(item):
                yield item
            elif skipped is not None:
                skipped.append(item)
        seq = rows[-1].record.seq


def escalation_events(item: ChainFeedback, *, label: str = "reward") -> list[dict[str, Any]]:
    """The DSJSON events of one learned chain's steps (see the module docstring)."""
    check_label(label)
    d = item.decision
    if d is None:
        raise InvalidInput(f"feedback seq {item.record.seq}: its learned chain's decision cannot be read")
    chain = json.loads(item.chain)
    quality = float(item.record.quality)
    cost = float(chain.get("cost_usd", 0.0))
    reward = quality if label == "quality" else quality - d.cost_weight * cost
    prompt: dict[str, Any] = {
        SHARED_PREFIX + ns: _namespace(idx, val) for ns, (idx, val) in d.context.features.items() if len(idx)
    }
    models = list(d.models)
    events = []
    steps, version = chain.get("steps", []), chain_version(chain)
    for i, step in enumerate(steps):
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
        earlier = stored_earlier(chain, i)  # as the step was decided, and as the log's learner reads them
        if int(step["step"]) >= 1:  # what `history_features` reads at this position
            if not earlier or earlier[-1] is None:
                state["previous_missing"] = 1.0
            else:
                state["previous"] = float(earlier[-1])
        events.append({
            "_label_cost": -reward,
            "_label_probability": probabilities[taken],
            "_label_Action": taken + 1,
            "_labelIndex": taken,
            "a": [taken + 1, 2 - taken],
            "p": [probabilities[taken], probabilities[1 - taken]],
            "c": {**prompt, SHARED_PREFIX + "k": state, "_multi": [{"a": {"action": a}} for a in ACTIONS]},
            "EventId": f"{d.decision_id}/{step['step']}",
            "Timestamp": _timestamp(d.created_at, d.decision_id),
            "Version": "1",
            "_bandit_router": {
                "router": d.policy[len(LEARNED_CASCADE):],
                "model": step["model"],
                "next_model": models[position + 1] if position + 1 < len(models) else None,
                "confidence": confidence,
                "earlier": [None if c is None else float(c) for c in earlier],
                "p_escalate": p_escalate,
                "expected_extra_cost_usd": step.get("expected_extra_cost_usd"),
                "answered_by": d.model,
                "quality": quality,
                "chain_cost_usd": cost,
                "cost_weight": d.cost_weight,
                "reward": reward,
                "feedback_seq": item.record.seq,
                "chain_version": version,
            },
        })  # fmt: skip
    return events


def export_escalations(
    store: Store, fp: TextIO, *, label: str = "reward", skipped: list[ChainFeedback] | None = None
) -> int:
    """Write every learned chain's steps to `fp` as DSJSON lines (the chains that do not decode go to `skipped`);
    returns the number of lines written."""
    check_label(label)
    written = 0
    for item in iter_chains(store, skipped=skipped):
        for event in escalation_events(item, label=label):
            fp.write(json.dumps(event, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n")
            written += 1
    return written


@dataclass(frozen=True)
class EscalationRule:
    """A deterministic escalation rule to evaluate: `threshold:T`, `accept`, `escalate`, or `logged`."""

    spec: str

    def __post_init__(self) -> None:
        if self.spec in ("logged", "accept", "escalate"):
            return
        kind, _, value = self.spec.partition(":")
        try:
            threshold = float(value)
        except ValueError:
            threshold = math.nan
        if kind != "threshold" or not 0.0 <= threshold <= 1.0:
            raise InvalidInput(f"escalation rule {self.spec!r}: expected logged, accept, escalate or threshold:T "
                               "with T in [0, 1]")

    def escalates(self, step: dict[str, Any]) -> bool:
        """What the rule does at a logged step (not for `logged`)."""
        if self.spec in ("accept", "escalate"):
            return self.spec == "escalate"
        confidence = step.get("confidence")
        return confidence is None or float(confidence) < float(self.spec.split(":", 1)[1])


@dataclass(frozen=True)
class RuleEstimate:
    """A rule's estimated reward per request, and how many chains it agrees with the log on."""

    rule: str
    estimates: tuple[Estimate, ...]
    agreeing: int
    n: int

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "agreeing": self.agreeing, "n": self.n,
                "estimates": [e.to_json() for e in self.estimates]}


def evaluate_escalations(
    chains: Sequence[ChainFeedback], rules: Sequence[str], *, confidence: float = 0.95
) -> list[RuleEstimate]:
    """IPS and SNIPS of each rule's reward per request on the learned chains (see the module docstring)."""
    parsed = [EscalationRule(r) for r in rules]
    if not chains:
        raise InvalidInput("no learned chain with feedback: nothing to evaluate")
    rewards, propensities, steps = [], [], []
    for item in chains:
        chain = json.loads(item.chain)
        logged = list(chain.get("steps", []))
        if item.decision is None:
            raise InvalidInput(f"feedback seq {item.record.seq}: its learned chain's decision cannot be read")
        rewards.append(float(item.record.quality) - item.decision.cost_weight * float(chain.get("cost_usd", 0.0)))
        propensities.append(math.prod(float(s["probability"]) for s in logged))
        steps.append(logged)
    r, mu = np.array(rewards), np.array(propensities)
    actions = np.zeros(len(r), dtype=np.intp)  # the logged trajectory is action 0 of {logged path, any other}
    out = []
    for rule in parsed:
        if rule.spec == "logged":
            agree = np.ones(len(r), dtype=bool)
            target = np.column_stack([mu, 1.0 - mu])
        else:
            agree = np.array([all(rule.escalates(s) == (s["action"] == "escalate") for s in logged)
                              for logged in steps])
            target = np.column_stack([agree.astype(float), (~agree).astype(float)])
        estimates = tuple(
            estimator.estimate(rewards=r, actions=actions, logged_probability=mu, target_pmf=target)
            for estimator in (IPS(confidence=confidence), SNIPS(confidence=confidence))
        )
        out.append(RuleEstimate(rule.spec, estimates, int(agree.sum()), len(r)))
    return out


def _number(x: float) -> str:
    """A table's number, or `–` where there is none (an interval from one chain: ±inf), as `evaluate` shows it."""
    return f"{x:.4f}" if math.isfinite(x) else "–"


def format_rule_estimates(results: Sequence[RuleEstimate]) -> str:
    """A Markdown table: per rule, IPS and SNIPS with their intervals, the ESS, the chains it agrees on."""
    lines = ["| rule | IPS | SNIPS | ESS | agrees with the log |", "|---|---|---|---|---|"]
    for result in results:
        ips, snips = result.estimates
        cells = [f"{_number(e.value)} [{_number(e.ci_low)}, {_number(e.ci_high)}]" if math.isfinite(e.value) else "–"
                 for e in (ips, snips)]
        lines.append(f"| {result.rule} | {cells[0]} | {cells[1]} | {ips.ess:.1f} | {result.agreeing}/{result.n} |")
    return "\n".join(lines)
