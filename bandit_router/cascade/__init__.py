"""Cascades, learned escalation and an LLM as the router, independent of HTTP.

    escalation.py   accept or escalate: `ThresholdEscalation`, `LearnedEscalation` (a contextual bandit)
    signals.py      confidence signals: a judge's rubric score, the answer's token log-probs
    chain.py        `CascadeRun` (the chain's state machine), `run_cascade` (driven by an async model call)
    llm_router.py   the routing LLM's prompt and the robust parsing of its reply

The service and the simulator drive the same objects; see docs/cascades.md.
"""

from .chain import CallFailed, CallModel, CascadeRun, ChainCall, ChainResult, ModelAnswer, Signal, run_cascade
from .escalation import (
    Escalation,
    EscalationParams,
    EscalationStep,
    LearnedEscalation,
    ThresholdEscalation,
    confidence_features,
)
from .llm_router import describe_candidate, parse_choice, router_prompt
from .signals import JUDGE_RUBRIC, SIGNALS, judge_prompt, logprob_confidence, parse_judge_score

__all__ = [
    "JUDGE_RUBRIC",
    "SIGNALS",
    "CallFailed",
    "CallModel",
    "CascadeRun",
    "ChainCall",
    "ChainResult",
    "Escalation",
    "EscalationParams",
    "EscalationStep",
    "LearnedEscalation",
    "ModelAnswer",
    "Signal",
    "ThresholdEscalation",
    "confidence_features",
    "describe_candidate",
    "judge_prompt",
    "logprob_confidence",
    "parse_choice",
    "parse_judge_score",
    "router_prompt",
    "run_cascade",
]
