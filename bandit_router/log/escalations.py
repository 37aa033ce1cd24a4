"""Learned cascades' escalation, learned from the stored log like the policies: durable, and the same in every
process.

A `learned-cascade` router's decision is stored with its call record, and the record carries the whole chain
(table `chains`, JSON: the calls, each accept/escalate step with its confidence and propensity, and what the chain
paid after each step), in the transaction that stores the decision. Feedback on such a decision is `unrouted`
for the bandit; its *first* `unrouted` feedback is what the router's `LearnedEscalation` learns (`learns_chain`,
and `store.sqlite.CHAINS_SQL` for the rows other processes committed):

    steps  = the stored steps, each with its state z recomputed from the *stored* decision's context and the
             stored confidences (`LearnedEscalation.state_vector(context, step, confidence, earlier)`, `step` the
             stored step's chain position, `earlier` as the chain passed it, `stored_earlier`: the live z came from
             the same features)
    learn(steps, final quality, extra costs)

A step's `step` is read as stored, never recomputed from the models: the state it was decided with, which its
logged propensity belongs to. (Chains stored before the step became the chain position hold the number of
steps before it; the two differ only in a chain where a model failed before a step, and such a chain replays
with the state it was decided with, as every process learned it live.) Likewise `earlier`: a chain stored with
`"version": 2` (`CHAIN_VERSION`) was decided with one score per earlier chain position (None where the model failed),
one stored without a version with the confidences of the steps before it, whatever their positions (so after a
failed model the next step read an older model's score as the previous one's); each replays as it was decided.

in feedback `seq` order, by `LogFollower` (the rows a process commits itself right after its commit, the others'
when it follows the log). So every worker and replica holds the same learners, a replay of the log rebuilds them
(`rebuild_policies`), and they are part of the policy set's checkpoints (`PolicySet.snapshot`): a restart loads
the newest checkpoint and replays the chains after it.

`EscalationLearners` holds one learner per `learned-cascade` router, behind one lock: the event loop decides
(`rule(alias).decide`) while the writer thread learns.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cascade.escalation import EscalationParams, EscalationStep, LearnedEscalation
from ..state import frozen, pack, unpack
from ..store import FeedbackRecord, FeedbackStatus
from ..types import Context, Decision

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("bandit_router.log")

LEARNED_CASCADE = "learned-cascade:"
"""The policy prefix of a learned cascade's decisions (`learned-cascade:<alias>`)."""


def learns_chain(decision: Decision, earlier: Sequence[FeedbackRecord], status: str) -> bool:
    """Whether a feedback with `status`, after the feedback `earlier` of its decision, is the one a learned
    cascade's escalation learns: the first `unrouted` feedback of a `learned-cascade:` decision (the rule
    `Reader.chains_after` applies in SQL)."""
    return (
        status == FeedbackStatus.UNROUTED
        and decision.policy.startswith(LEARNED_CASCADE)
        and not any(r.status == FeedbackStatus.UNROUTED for r in earlier)
    )


CHAIN_VERSION = 2
"""The version of a stored chain (`"version"` in `chains.chain`; absent: 1): 2 when its steps were decided with
`earlier` by chain position (`stored_earlier`)."""


def chain_document(result_json: dict[str, Any], extra_costs: Sequence[float]) -> str:
    """The JSON stored in `chains.chain`: a chain's `to_json()` with what it paid after each step, and its
    `version`."""
    document = {**result_json, "extra_costs": [float(c) for c in extra_costs], "version": CHAIN_VERSION}
    return json.dumps(document, separators=(",", ":"))


def chain_version(chain: dict[str, Any]) -> int:
    """The `version` of a stored `chain` (decoded `chains.chain`): an int from 1 to `CHAIN_VERSION` (absent: 1). A
    chain from a newer release, or one whose version is not such an int, raises ValueError: it is not read as another
    version."""
    version = chain.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= CHAIN_VERSION:
        raise ValueError(f"chain version {version!r} is not one of 1..{CHAIN_VERSION}")
    return version


def chain_position(chain: dict[str, Any], step: dict[str, Any]) -> int:
    """The chain position of a stored `step` of `chain`: an int k with 0 <= k < len(calls) (a chain has no more
    positions than it made calls; each position was asked for an answer), else ValueError. Version 1's step (the
    number of steps before it, each on an answered call) is such an int too."""
    k, calls = step["step"], chain["calls"]
    if not isinstance(calls, list):
        raise ValueError("calls must be a list")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(calls):
        raise ValueError(f"step {k!r} is not a position of a chain of {len(calls)} calls")
    return k


def stored_earlier(chain: dict[str, Any], i: int) -> list[float | None]:
    """The `earlier` that step `i` of a stored `chain` (decoded `chains.chain`) was decided with: with version 2, per
    chain position before the step's, the confidence of the step stored at it (None where none was: the model
    failed; or its signal gave none); before it, the confidences of the steps stored before step `i`. A version, or
    a step `i` of any version, that cannot be (`chain_version`, `chain_position`) raises ValueError."""
    steps = chain["steps"]
    version, position = chain_version(chain), chain_position(chain, steps[i])
    if version < 2:
        return [s.get("confidence") for s in steps[:i]]
    out: list[float | None] = [None] * position
    for step in steps[:i]:
        k = chain_position(chain, step)
        if k < len(out):
            out[k] = step.get("confidence")
    return out


DECISION_ONLY = ("decided_floor", "monotone")
"""`EscalationParams` fields that the learned state does not depend on, left out of the checkpoints' fingerprint."""


HISTORY_SETTINGS = ("history", "history_ridge")
"""`EscalationParams` fields of the history block: part of the fingerprint only when `history` is on."""


def learned_settings(params: EscalationParams) -> dict[str, Any]:
    """The settings a learner's state depends on (see `EscalationLearners.fingerprint_source`)."""
    left_out = DECISION_ONLY + (() if params.history else HISTORY_SETTINGS)
    return {k: v for k, v in asdict(params).items() if k not in left_out}


class GuardedEscalation:
    """A `LearnedEscalation` used under its set's lock (the `Escalation` a live cascade runs with)."""

    def __init__(self, learner: LearnedEscalation, lock: threading.RLock) -> None:
        self.learner, self.lock = learner, lock
        self.name = learner.name

    def decide(
        self, context: Context, step: int, model: str, confidence: float | None, next_cost_usd: float,
        cost_weight: float, rng: np.random.Generator, earlier: Sequence[float | None] = (),
    ) -> EscalationStep:
        with self.lock:
            return self.learner.decide(context, step, model, confidence, next_cost_usd, cost_weight, rng, earlier)

    def learn(self, steps: Sequence[EscalationStep], final_quality: float, extra_costs: Sequence[float]) -> None:
        """Live chains are learned from the log (`EscalationLearners.learn`), never from here."""
        return None


class EscalationLearners:
    """One `LearnedEscalation` per `learned-cascade` router of `settings`, learned from the log."""

    def __init__(self, settings: Settings) -> None:
        self.params: dict[str, EscalationParams] = {
            r.name: r.escalation_params() for r in settings.named_routers.routers if r.strategy == "learned-cascade"
        }
        self.learners = {name: LearnedEscalation(p) for name, p in self.params.items()}
        self.lock = threading.RLock()

    def __bool__(self) -> bool:
        return bool(self.learners)

    def fingerprint_source(self) -> dict[str, Any]:
        """What the learners' state depends on (part of the checkpoints' fingerprint): not `decided_floor` and
        `monotone`, which change only the decisions, nor `history_ridge` without `history`, whose state has the
        layout of before it existed (so such a router keeps the fingerprint from before these settings)."""
        return {name: learned_settings(p) for name, p in sorted(self.params.items())}

    def rule(self, alias: str) -> GuardedEscalation:
        return GuardedEscalation(self.learners[alias], self.lock)

    def learned(self, alias: str) -> int:
        """Chains the learner of `alias` has learned."""
        with self.lock:
            return int(self.learners[alias].updates)

    def learn(self, decision: Decision, chain: str, quality: float, seq: int) -> bool:
        """Learn feedback `seq` (final quality `quality`) on `decision`'s stored `chain`; False when it is not a
        learner's (an alias no longer configured) or the chain does not decode (logged)."""
        if not decision.policy.startswith(LEARNED_CASCADE):
            return False
        learner = self.learners.get(decision.policy[len(LEARNED_CASCADE) :])
        if learner is None:
            return False
        try:
            data = json.loads(chain)
            extra = [float(c) for c in data["extra_costs"]]
            if not isinstance(data["steps"], list) or not all(isinstance(s, dict) for s in data["steps"]):
                raise ValueError("steps must be a list of objects")
            if len(extra) != len(data["steps"]):  # checked first: `learn` would stop half-way through the steps
                raise ValueError(f"{len(data['steps'])} steps but {len(extra)} extra costs")
            with self.lock:
                steps = [  # step i's state with the earlier scores it was decided with (`history`)
                    EscalationStep.from_json(
                        s, learner.state_vector(decision.context, chain_position(data, s), s.get("confidence"),
                                                stored_earlier(data, i))
                    )
                    for i, s in enumerate(data["steps"])
                ]
                if steps:
                    learner.learn(steps, float(quality), extra)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("feedback seq %d: the chain of %s cannot be learned (%s)", seq, decision.decision_id, exc)
            return False
        return True

    # -- snapshots ------------------------------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        with self.lock:
            return pack({name: learner.state() for name, learner in self.learners.items()})

    def capture(self) -> Any:
        """`snapshot()`'s tree with its arrays copied under the lock (`state.frozen`): `pack` it on any thread."""
        with self.lock:
            return frozen({name: learner.state() for name, learner in self.learners.items()})

    def restore(self, data: bytes | None) -> None:
        """Load `snapshot()` bytes (None: start afresh); a learner missing from them starts afresh. Nothing
        changes when they do not load (raises ValueError)."""
        fresh = {name: LearnedEscalation(p) for name, p in self.params.items()}
        if data is not None:
            states = unpack(data)
            if not isinstance(states, dict):
                raise ValueError("malformed escalation state")
            for name, state in states.items():
                if name in fresh:
                    try:
                        fresh[name].load(state)
                    except (KeyError, TypeError, ValueError) as exc:
                        raise ValueError(f"escalation state of {name!r}: {exc}") from exc
        with self.lock:
            self.learners = fresh
