"""A cascade's chain, independent of HTTP: ask the models in order (cheapest first) until an answer is accepted.

`CascadeRun` is the chain's state machine; both the service (through `run_cascade`, with an async "call this
model" function) and the simulator (with the table's outcomes and a simulated judge) drive the same object:

    run = CascadeRun(models, escalation, context, cost_weight, rng, next_cost)
    while (model := run.next_model()) is not None:
        answer = call(model) … or run.failed(model, error)
        run.answered(answer, confidence)      # asks the escalation rule unless it is the last model
    result = run.result()

Rules: every call is paid and recorded (the answers, the judge's calls, the failures); the last model's answer is
never judged (nothing to escalate to); a failed call moves on to the next model (a failure is not an escalation);
each accept/escalate step is decided at the chain position of the model that answered (`step`: 1 for the second
model, also when the first failed and this is the chain's first decision), told the scores of the earlier positions
(`earlier`, one per position: None where that model failed or its signal gave none); when a later model fails, the
last answer
obtained is returned; when no model answered, `result().answer` is None and the caller reports the failure; once
the request has no time left (`run_cascade`'s `out_of_time`), no call is started (a model's, the judge's): the chain
stops (`stop`, `out_of_time` in its result), the models after it are neither called nor recorded, and an answer
got with no time left is returned unjudged, with no step decided on it (nothing could follow it). The escalation
rule is told the final quality once feedback arrives (`learn`), with what the chain paid after each of its steps.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..types import Context
from .escalation import Escalation, EscalationStep
from .signals import SIGNALS, judge_prompt, logprob_confidence, parse_judge_score


class CallFailed(Exception):
    """A model call failed (timeout, connection error, 5xx, unusable reply): the chain moves on."""


@dataclass(frozen=True)
class ModelAnswer:
    """One upstream answer: its text, what it cost and took, its token log-probs when asked for and returned.

    `payload` is whatever the caller needs to hand this answer back to its client (never logged)."""

    model: str
    text: str
    cost_usd: float
    latency_s: float
    input_tokens: int | None = None
    output_tokens: int | None = None
    logprobs: tuple[float, ...] | None = None
    payload: Any = field(default=None, compare=False, repr=False)


CallModel = Callable[[str, Sequence[Mapping[str, str]], bool], Awaitable[ModelAnswer]]
"""`call(model, messages, want_logprobs)` → the model's answer, or raises `CallFailed`."""


@dataclass(frozen=True)
class ChainCall:
    """One paid call of a chain: an answer (`role="answer"`), a judge's score (`"judge"`) or the routing LLM's
    choice (`"router"`); `error` is set when it failed."""

    model: str
    role: str
    cost_usd: float = 0.0
    latency_s: float = 0.0
    confidence: float | None = None
    error: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "role": self.role,
            "cost_usd": self.cost_usd,
            "latency_s": self.latency_s,
        }
        for key in ("confidence", "error", "input_tokens", "output_tokens"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class ChainResult:
    """What a chain did: its calls in order, its accept/escalate steps, and the answer it returns."""

    calls: tuple[ChainCall, ...]
    steps: tuple[EscalationStep, ...]
    answer: ModelAnswer | None
    paid_before: tuple[int, ...] = ()
    """Per step, how many calls had been made when it was decided (its extra cost is what came after)."""
    out_of_time: bool = False
    """The chain stopped at the request's deadline: the models after its last call were not called."""

    @property
    def model(self) -> str | None:
        return None if self.answer is None else self.answer.model

    @property
    def cost_usd(self) -> float:
        return sum(c.cost_usd for c in self.calls)

    @property
    def latency_s(self) -> float:
        return sum(c.latency_s for c in self.calls)

    @property
    def escalations(self) -> int:
        return sum(1 for s in self.steps if s.escalate)

    @property
    def answer_calls(self) -> int:
        return sum(1 for c in self.calls if c.role == "answer")

    def extra_costs(self) -> list[float]:
        """Per step, what the chain paid after that step was decided."""
        return [sum(c.cost_usd for c in self.calls[n:]) for n in self.paid_before]

    def reward(self, quality: float, cost_weight: float) -> float:
        """final quality − λ·(total cost of the chain)."""
        return quality - cost_weight * self.cost_usd

    def learn(self, escalation: Escalation, quality: float) -> None:
        """Tell the escalation rule the final answer's quality."""
        if self.steps:
            escalation.learn(self.steps, quality, self.extra_costs())

    def to_json(self) -> dict[str, Any]:
        """The chain as the answer's `bandit_router` field and the stored chain show it (`out_of_time` only when
        set)."""
        out: dict[str, Any] = {
            "calls": [c.to_json() for c in self.calls],
            "steps": [s.to_json() for s in self.steps],
            "answered_by": self.model,
            "escalations": self.escalations,
            "cost_usd": self.cost_usd,
            "latency_s": self.latency_s,
        }
        if self.out_of_time:
            out["out_of_time"] = True
        return out


def takes_earlier(decide: Callable[..., EscalationStep]) -> bool:
    """Whether an escalation rule's `decide` accepts `earlier` (by name or as `**kwargs`): a rule written before
    `Escalation.decide` had it does not, and is called without it."""
    function = getattr(decide, "__func__", decide)
    try:
        return _takes_earlier(function)
    except TypeError:  # not hashable: read its signature every time
        return _takes_earlier.__wrapped__(function)


@functools.lru_cache(maxsize=256)
def _takes_earlier(function: Callable[..., EscalationStep]) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): pass it, as the protocol says
        return True
    return any(p.name == "earlier" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class CascadeRun:
    """The state of one chain (see the module docstring). `next_cost(model)` is a model's expected cost (USD)."""

    def __init__(
        self,
        models: Sequence[str],
        escalation: Escalation,
        context: Context,
        cost_weight: float,
        rng: np.random.Generator,
        next_cost: Callable[[str], float],
    ) -> None:
        if not models:
            raise InvalidInput("a cascade needs at least one model")
        self.models = list(models)
        self.escalation = escalation
        self.context = context
        self.cost_weight = cost_weight
        self.rng = rng
        self.next_cost = next_cost
        self.position = 0
        self.done = False
        self.calls: list[ChainCall] = []
        self.steps: list[EscalationStep] = []
        self.paid_before: list[int] = []
        self.answer: ModelAnswer | None = None
        self.out_of_time = False
        self.scores: list[float | None] = []
        """Per chain position passed, its answer's confidence (None: the model failed, or its signal gave none)."""

    def next_model(self) -> str | None:
        """The model to call now, or None when the chain is over."""
        if self.done or self.position >= len(self.models):
            return None
        return self.models[self.position]

    @property
    def is_last(self) -> bool:
        """True when the model to call now is the chain's last (its answer is returned without a judge)."""
        return self.position >= len(self.models) - 1

    def failed(self, model: str, error: str, cost_usd: float = 0.0, latency_s: float = 0.0) -> None:
        """The current model's call failed: record it and move on to the next model."""
        self.calls.append(ChainCall(model, "answer", cost_usd, latency_s, error=error))
        self.scores.append(None)
        self.position += 1

    def stop(self) -> None:
        """The request has no time left: no further call; the chain returns the last answer it got (if any)."""
        self.done = self.out_of_time = True

    def answered(
        self, answer: ModelAnswer, confidence: float | None, judge: ChainCall | None = None
    ) -> EscalationStep | None:
        """Record the current model's answer with its confidence (and the judge's call that gave it); ask the
        escalation rule unless it is the last model or the chain was stopped (`stop`)."""
        self.calls.append(
            ChainCall(
                answer.model,
                "answer",
                answer.cost_usd,
                answer.latency_s,
                confidence,
                input_tokens=answer.input_tokens,
                output_tokens=answer.output_tokens,
            )
        )
        if judge is not None:
            self.calls.append(judge)
        self.answer = answer
        if self.is_last or self.out_of_time:
            self.done = True
            return None
        # the step is the answering model's chain position (not the number of steps before it: a model after one
        # that failed decides as what it is, the chain's next model); `earlier`: the earlier positions' scores (a
        # failed model's None, so that `earlier[-1]` is always the previous model's)
        history = {"earlier": list(self.scores)} if takes_earlier(self.escalation.decide) else {}
        step = self.escalation.decide(
            self.context, self.position, answer.model, confidence,
            self.next_cost(self.models[self.position + 1]), self.cost_weight, self.rng, **history,
        )  # fmt: skip
        self.steps.append(step)
        self.paid_before.append(len(self.calls))
        self.scores.append(confidence)
        if step.escalate:
            self.position += 1
        else:
            self.done = True
        return step

    def result(self) -> ChainResult:
        return ChainResult(tuple(self.calls), tuple(self.steps), self.answer, tuple(self.paid_before), self.out_of_time)


@dataclass(frozen=True)
class Signal:
    """How a live cascade measures confidence: `judge` (with `judge_model` and a rubric) or `logprob[-min]`."""

    kind: str
    judge_model: str | None = None
    rubric: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SIGNALS:
            raise InvalidInput(f"signal must be one of {', '.join(SIGNALS)}, not {self.kind!r}")
        if (self.kind == "judge") != (self.judge_model is not None):
            raise InvalidInput("the judge signal needs a judge model, and only it")

    @property
    def wants_logprobs(self) -> bool:
        return self.kind != "judge"

    async def measure(
        self, call: CallModel, request: str, answer: ModelAnswer
    ) -> tuple[float | None, ChainCall | None]:
        """(confidence, the judge's call or None). A failed judge call gives None: not confident."""
        if self.kind != "judge":
            return logprob_confidence(answer.logprobs, self.kind), None
        assert self.judge_model is not None
        content = (
            judge_prompt(request, answer.text)
            if self.rubric is None
            else judge_prompt(request, answer.text, self.rubric)
        )
        try:
            verdict = await call(self.judge_model, [{"role": "user", "content": content}], False)
        except CallFailed as exc:
            return None, ChainCall(self.judge_model, "judge", error=str(exc)[:200])
        score = parse_judge_score(verdict.text)
        return score, ChainCall(
            self.judge_model,
            "judge",
            verdict.cost_usd,
            verdict.latency_s,
            score,
            input_tokens=verdict.input_tokens,
            output_tokens=verdict.output_tokens,
        )


def _never() -> bool:
    return False


async def run_cascade(
    run: CascadeRun,
    messages: Sequence[Mapping[str, str]],
    request: str,
    call: CallModel,
    signal: Signal,
    out_of_time: Callable[[], bool] = _never,
) -> ChainResult:
    """Drive `run` with live calls: each model in turn, its confidence by `signal`, until one is accepted. Before
    each call, `out_of_time()` says whether the request has time left for one: if not, the chain stops there
    (`CascadeRun.stop`) with the last answer it got; one got with no time left is returned unjudged, with no step."""
    while (model := run.next_model()) is not None:
        if out_of_time():
            run.stop()
            break
        try:
            answer = await call(model, messages, signal.wants_logprobs)
        except CallFailed as exc:
            run.failed(model, str(exc)[:200])
            continue
        if not run.is_last and out_of_time():  # no time to judge it, nor to call the next model
            run.stop()
        confidence, judge_call = None, None
        if not run.is_last and not run.out_of_time:
            confidence, judge_call = await signal.measure(call, request, answer)
        run.answered(answer, confidence, judge_call)
    return run.result()
