"""Cascades, learned escalation and the LLM router, independent of HTTP: signals, parsing, the chain's rules, the
learner (seeded, statistical), the simulator's agents and the `[[routers]]` configuration."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from bandit_router.cascade import (
    CallFailed,
    CascadeRun,
    Escalation,
    EscalationParams,
    EscalationStep,
    LearnedEscalation,
    ModelAnswer,
    Signal,
    ThresholdEscalation,
    judge_prompt,
    logprob_confidence,
    parse_choice,
    parse_judge_score,
    router_prompt,
    run_cascade,
)
from bandit_router.cascade.escalation import (
    CONFIDENCE_FEATURES,
    HISTORY,
    HISTORY_START,
    MAX_STEPS,
    antitonic,
    score_grid,
)
from bandit_router.cascade.live import chain_pmf
from bandit_router.cascade.signals import MAX_JUDGE_CHARS
from bandit_router.catalog import ModelSpec
from bandit_router.config import ConfigError, Settings, load_settings
from bandit_router.config.routers import RouterAlias, RoutersSettings
from bandit_router.errors import InvalidInput
from bandit_router.evaluation.escalations import decodes
from bandit_router.features import FeatureExtractor
from bandit_router.log import EscalationLearners
from bandit_router.log.checkpoints import fingerprint
from bandit_router.log.escalations import CHAIN_VERSION, chain_document, stored_earlier
from bandit_router.router import Router
from bandit_router.store.records import ChainFeedback
from bandit_router.types import Decision, Request
from simulator import EnvSpec, Plan, simulate
from simulator.agents import Agent, SimulatedJudge, make_agent
from simulator.environments import Environment, build_world, load_dataset

SAMPLE = Path(__file__).parent / "data" / "routellm_sample.csv.gz"
EXTRACTOR = FeatureExtractor()


# -- signals ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("8", 7 / 9),
        ("Score: 10/10. Correct.", 1.0),
        ("I'd say 7.5 out of 10", 6.5 / 9),
        ("0 - wrong", 0.0),  # clipped to 1
        ("15", 1.0),  # clipped to 10
        ("v2 is fine: 3", 2 / 9),  # a number glued to a word is not a score
        ("gpt-4 thinks: 7", 6 / 9),  # nor one glued to a name by a hyphen
        ("Score: -3", 0.0),  # a negative number, clipped to 1
        ("(+9)", 8 / 9),
        ("1" * 400, 1.0),  # too large for a float, still clipped to 10
        ("no idea", None),
        ("", None),
        (None, None),
    ],
)
def test_the_judge_score_is_the_first_number_scaled_to_0_1(reply: str | None, score: float | None) -> None:
    got = parse_judge_score(reply)
    assert got == (pytest.approx(score) if score is not None else None)


def test_logprob_confidence_is_the_geometric_mean_or_the_least_likely_token() -> None:
    lp = [-0.1, -0.2, -2.0]
    assert logprob_confidence(lp) == pytest.approx(np.exp(np.mean(lp)))
    assert logprob_confidence(lp, "logprob-min") == pytest.approx(np.exp(-2.0))
    assert logprob_confidence([]) is None and logprob_confidence(None) is None
    assert logprob_confidence([float("nan"), -0.5]) == pytest.approx(np.exp(-0.5))


# -- the routing LLM -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("I would pick **GPT-4o** for this.", "gpt-4o"),
        ("gpt-4o-mini, not gpt-4o", "gpt-4o-mini"),
        ("Use llama-3.1-8b. gpt-4o would be overkill", "llama-3.1-8b"),
        ("gpt-4o-2024 is best", None),  # glued to more of a name: another model
        ("none of them", None),
        ("", None),
        (None, None),
        # a name stands alone between boundaries: ':' and '/' (a label, a provider), quotes, brackets, markdown
        ("model:gpt-4o", "gpt-4o"),
        ("Model: gpt-4o-mini", "gpt-4o-mini"),
        ("model:gpt-4o-mini", "gpt-4o-mini"),
        ("openai/gpt-4o", "gpt-4o"),
        ('{"model": "llama-3.1-8b"}', "llama-3.1-8b"),
        ("'gpt-4o'", "gpt-4o"),
        ("`gpt-4o-mini`", "gpt-4o-mini"),
        ("(gpt-4o)", "gpt-4o"),
        ("[gpt-4o-mini]", "gpt-4o-mini"),
        ("**GPT-4O-MINI**", "gpt-4o-mini"),
        ("I pick gpt-4o.", "gpt-4o"),  # a full stop, not a version
        ("I pick gpt-4o...", "gpt-4o"),
        ("gpt-4o, then llama-3.1-8b", "gpt-4o"),
        ("gpt-4o\nllama-3.1-8b", "gpt-4o"),
        ("gpt-4o!", "gpt-4o"),
        # glued to more of a name ('-', '_' or '.' then a letter or digit, or a letter or digit): another model
        ("gpt-4o_mini", None),
        ("gpt-4o_mini or llama-3.1-8b", "llama-3.1-8b"),
        ("gpt-4o.1", None),
        ("gpt-4omni", None),
        ("xgpt-4o", None),
        ("my_gpt-4o", None),
        ("v2.gpt-4o", None),
        ("llama-3.1-8b-instruct", None),
        ("llama-3.1-8b_q4", None),
        ("gpt-4o--mini", None),
        ("gpt-4o-", "gpt-4o"),  # a joiner with no more name after it
        ("_gpt-4o_", "gpt-4o"),
        ("gpt-4o-mini-high, else gpt-4o", "gpt-4o"),  # the first name standing alone
    ],
)
def test_the_routing_llms_reply_is_matched_against_the_candidates(reply: str | None, expected: str | None) -> None:
    """The first candidate name standing alone in the reply wins, the longest at one position; a name glued to more
    of a name is another model's (`llm_router` module docstring)."""
    assert parse_choice(reply, ["gpt-4o", "gpt-4o-mini", "llama-3.1-8b"]) == expected


def test_at_one_position_the_longest_candidate_wins_in_any_order() -> None:
    for candidates in (["gpt-4o", "gpt-4o-mini"], ["gpt-4o-mini", "gpt-4o"]):
        assert parse_choice("model:gpt-4o-mini", candidates) == "gpt-4o-mini"
        assert parse_choice("model:gpt-4o", candidates) == "gpt-4o"
    assert parse_choice("claude-3:haiku", ["claude-3", "claude-3:haiku"]) == "claude-3:haiku"  # a name with ':'
    assert parse_choice("openai/gpt-4o", ["gpt-4o", "openai/gpt-4o"]) == "openai/gpt-4o"


@pytest.mark.parametrize(
    ("reply", "candidates", "expected"),
    [  # after a name, ':' or '/' then a letter or digit is a tag or a variant: another model than the candidate
        ("llama3:70b", ["llama3"], None),
        ("claude-3:sonnet", ["claude-3"], None),
        ("mistral/7b-instruct", ["mistral"], None),
        ("ollama/llama3:70b", ["llama3"], None),
        ("llama3:70b, else gpt-4o", ["llama3", "gpt-4o"], "gpt-4o"),
        ("llama3:70b", ["llama3", "llama3:70b"], "llama3:70b"),  # listed itself: read
        # before a name they are a label or a provider's prefix; after it, with no name following, a boundary
        ("model: llama3", ["llama3"], "llama3"),
        ("model:llama3", ["llama3"], "llama3"),
        ("Model: claude-3", ["claude-3"], "claude-3"),
        ("meta/llama3", ["llama3"], "llama3"),
        ("llama3: it is cheap and good enough", ["llama3"], "llama3"),
        ("llama3:", ["llama3"], "llama3"),
        ("llama3/ (the cheap one)", ["llama3"], "llama3"),
        ("llama3:\ngpt-4o", ["llama3", "gpt-4o"], "llama3"),
    ],
)
def test_a_colon_or_slash_after_a_name_continues_it_before_one_it_does_not(
    reply: str, candidates: list[str], expected: str | None
) -> None:
    """`llama3:70b` and `claude-3:sonnet` name other models than the candidates `llama3` and `claude-3` (they were read
    as them), while `model: llama3` and `openai/`-style prefixes still read the candidate (`llm_router` docstring)."""
    assert parse_choice(reply, candidates) == expected


def test_the_judges_prompt_shows_the_request_and_the_answer_as_they_are() -> None:
    """`{answer}` or `{request}` written in the request or the answer is text, not a place to fill in; a request
    longer than the judge is shown keeps its start and its end (the latest question)."""
    prompt = judge_prompt("Fill in {answer} and {request}", "It is {request}: 42")
    assert "[Request]\nFill in {answer} and {request}\n" in prompt and "[Answer]\nIt is {request}: 42\n" in prompt
    long = judge_prompt("START " + "x" * 30_000 + " END?", "fine")
    assert "START" in long and "END?" in long and len(long) < MAX_JUDGE_CHARS + 1_000


def test_the_routing_prompt_shows_each_candidate_and_the_request() -> None:
    specs = [ModelSpec("small", 0.1, 0.4, tags={"tier": "small"}), ModelSpec("big", 5.0, 15.0)]
    text = router_prompt("Prove Fermat's last theorem" + "x" * 20_000, specs, {"big": "strong at\nmath"})
    assert "- small (tier=small): $0.1 / $0.4" in text and "- big: $5 / $15; strong at math" in text
    assert "Prove Fermat" in text and len(text) < 9_500


# -- the chain's rules ---------------------------------------------------------------------------------------------
def _run(models: Sequence[str], threshold: float = 0.5) -> CascadeRun:
    ctx = EXTRACTOR.extract("hello")
    return CascadeRun(models, ThresholdEscalation(threshold), ctx, 10.0, np.random.default_rng(0), lambda m: 0.01)


def test_a_confident_first_answer_ends_the_chain_and_the_last_answer_is_never_judged() -> None:
    run = _run(["a", "b", "c"])
    run.answered(ModelAnswer("a", "x", 0.001, 0.1), 0.9)
    assert run.next_model() is None
    result = run.result()
    assert result.model == "a" and result.escalations == 0 and result.answer_calls == 1
    run = _run(["a", "b"])
    run.answered(ModelAnswer("a", "x", 0.001, 0.1), 0.2)
    assert run.next_model() == "b" and run.is_last
    assert run.answered(ModelAnswer("b", "y", 0.01, 0.5), None) is None  # no decision after the last model
    result = run.result()
    assert result.model == "b" and result.escalations == 1
    assert result.cost_usd == pytest.approx(0.011) and result.latency_s == pytest.approx(0.6)
    assert result.reward(1.0, 10.0) == pytest.approx(1.0 - 10.0 * 0.011)


def test_a_missing_confidence_escalates_and_a_failure_moves_on_and_keeps_the_last_answer() -> None:
    run = _run(["a", "b", "c"])
    run.answered(ModelAnswer("a", "x", 0.001, 0.1), None)  # no score: not confident
    assert run.next_model() == "b"
    run.failed("b", "timeout")
    assert run.next_model() == "c"
    run.failed("c", "HTTP 503")
    result = run.result()
    assert result.model == "a" and [c.error for c in result.calls] == [None, "timeout", "HTTP 503"]
    run = _run(["a", "b"])
    run.failed("a", "down")
    run.failed("b", "down")
    assert run.result().answer is None


def test_a_cascades_logged_probability_is_the_chance_of_the_answer_it_returned() -> None:
    """The decision's probability of the answer returned (`chain_pmf`), from a frozen learned escalation with
    propensities near ½ and fixed confidences: E[1{answer = m}/p(m)] = 1 for every model with no failure and when
    a model fails before the answer, and 1 + p_escalate·F for the answer returned after the models after it (here
    one) failed at random (probability F = ½), the gap `docs/cascades.md` states. 3,000 chains per case; margin 0.2
    (≈ 4 standard errors: the rarest answer has p ≈ 1/8, so 1{·}/p has variance ≈ 7; the gap, ≈ 0.24, is > 0.08
    by 3.4)."""
    learner = LearnedEscalation(EscalationParams(v=1.0, floor=0.05))
    models, confidence = ["a", "b", "c", "d"], {"a": 0.5, "b": 0.4, "c": 0.7}
    context = EXTRACTOR.extract("explain quicksort")
    p_escalate_c = learner.decide(context, 2, "c", 0.7, 0.001, 1.0, np.random.default_rng(0)).p_escalate
    assert 0.3 < p_escalate_c < 0.7

    def weights(failing: Mapping[str, float], seed: int, n: int = 3000) -> dict[str, float]:
        rng, failures = np.random.default_rng(seed), np.random.default_rng(seed + 1)
        total = dict.fromkeys(models, 0.0)
        for _ in range(n):
            run = CascadeRun(models, learner, context, 1.0, rng, lambda m: 0.001)
            while (model := run.next_model()) is not None:
                if failures.random() < failing.get(model, 0.0):
                    run.failed(model, "HTTP 503")
                    continue
                run.answered(ModelAnswer(model, "x", 0.001, 0.0), None if run.is_last else confidence[model])
            result = run.result()
            assert result.answer is not None
            total[result.answer.model] += 1.0 / chain_pmf(models, result)[models.index(result.answer.model)]
        return {m: w / n for m, w in total.items()}

    for m, mean in weights({}, 1).items():
        assert abs(mean - 1.0) < 0.2, (m, mean)
    for m, mean in weights({"b": 1.0}, 3).items():
        assert (m == "b" and mean == 0.0) or abs(mean - 1.0) < 0.2, (m, mean)
    gap = weights({"d": 0.5}, 5)
    assert abs(gap["a"] - 1.0) < 0.2 and abs(gap["b"] - 1.0) < 0.2
    assert abs(gap["c"] - (1.0 + 0.5 * p_escalate_c)) < 0.2 and gap["c"] > 1.08, gap


def test_run_cascade_pays_the_judge_and_falls_back_past_a_failing_model() -> None:
    calls: list[str] = []

    async def call(model: str, messages: Sequence[Mapping[str, str]], logprobs: bool) -> ModelAnswer:
        calls.append(model)
        if model == "judge":
            prompt = messages[0]["content"]
            return ModelAnswer("judge", "9" if "good answer" in prompt else "2 - wrong", 0.0001, 0.05)
        if model == "mid":
            raise CallFailed("HTTP 502")
        return ModelAnswer(model, "good answer" if model == "big" else "bad answer", 0.01, 0.2)

    run = _run(["small", "mid", "big"], threshold=0.7)
    result = asyncio.run(run_cascade(run, [{"role": "user", "content": "q"}], "q", call, Signal("judge", "judge")))
    assert calls == ["small", "judge", "mid", "big"]  # the last answer is not judged
    assert result.model == "big" and result.steps[0].confidence == pytest.approx(1 / 9)
    assert [c.role for c in result.calls] == ["answer", "judge", "answer", "answer"]
    assert result.cost_usd == pytest.approx(0.0201)
    with pytest.raises(InvalidInput, match="judge"):
        Signal("judge")
    with pytest.raises(InvalidInput, match="signal"):
        Signal("vibes")


@pytest.mark.parametrize("runs_out", ["small", "judge", "failed"])
def test_run_cascade_starts_no_call_once_out_of_time_and_returns_the_answer_it_has(runs_out: str) -> None:
    """Time runs out (`out_of_time`) during a call: no call is started after it. During `small`'s answer, the answer
    is returned unjudged with no step (nothing could follow it); during the judge's call, its step is kept and
    `small`'s answer returned; after `small` failed, nothing answered. The models not called are not in the chain,
    which says `out_of_time`."""
    calls: list[str] = []
    left = [True]

    async def call(model: str, messages: Sequence[Mapping[str, str]], logprobs: bool) -> ModelAnswer:
        calls.append(model)
        if model == runs_out or (runs_out == "failed" and model == "small"):
            left[0] = False
        if runs_out == "failed":
            raise CallFailed("no answer before the request's deadline")
        return ModelAnswer(model, "2 - wrong" if model == "judge" else "answer", 0.01, 0.2)

    run = _run(["small", "mid", "big"], threshold=0.7)
    result = asyncio.run(run_cascade(run, [{"role": "user", "content": "q"}], "q", call, Signal("judge", "judge"),
                                     out_of_time=lambda: not left[0]))
    assert result.out_of_time and result.to_json()["out_of_time"] is True
    if runs_out == "failed":
        assert calls == ["small"] and result.answer is None and [c.error is not None for c in result.calls] == [True]
        return
    assert result.model == "small" and chain_pmf(["small", "mid", "big"], result) == [1.0, 0.0, 0.0]
    if runs_out == "small":
        assert calls == ["small"] and result.steps == () and result.calls[0].confidence is None
    else:
        assert calls == ["small", "judge"] and [s.escalate for s in result.steps] == [True]
    run = _run(["small", "mid"], threshold=0.0)  # with time left: as before, and no `out_of_time` in its JSON
    result = asyncio.run(run_cascade(run, [{"role": "user", "content": "q"}], "q", call, Signal("logprob")))
    assert not result.out_of_time and "out_of_time" not in result.to_json()


# -- learned escalation -----------------------------------------------------------------------------------------
def test_learned_escalation_learns_which_kinds_of_prompt_to_escalate() -> None:
    """Cheap model right on 'easy' prompts 90% of the time, on 'hard' ones 10%; the strong one 95% and escalating
    costs λ·ĉ = 100 · 0.002 = 0.2 (accept: 0.9 / 0.1, escalate: 0.75). The judge's score says nothing (always
    0.5): only the prompt tells them apart. After 1,500 chains the learner escalates hard prompts and accepts easy
    ones (margins: ≥ 0.9 and ≤ 0.2 of 200 fresh prompts of each kind). A signal that says nothing leaves all the
    learning to exploration: v = 1 (the default 0.05 was tuned for informative judges). Over seeds 0–11
    (experiments/cascade/weak_signal.py, results/weak-signal.md) v = 1 escalates 0.97–1.00 of the hard prompts and
    0.03–0.12 of the easy ones (exploration) on every seed, while 0.5 locks in on escalating easy prompts too on 3
    of 12 seeds and 0.05 on 10 of 12: this test does not depend on its seed's luck."""
    rng = np.random.default_rng(7)
    learner = LearnedEscalation(EscalationParams(v=1.0))
    kinds = {"easy": EXTRACTOR.extract("translate this short greeting please"),
             "hard": EXTRACTOR.extract("prove the theorem about prime gaps rigorously")}
    p_cheap = {"easy": 0.9, "hard": 0.1}
    for t in range(1500):
        kind = "easy" if t % 2 else "hard"
        run = CascadeRun(["cheap", "strong"], learner, kinds[kind], 100.0, rng, lambda m: 0.002)
        run.answered(ModelAnswer("cheap", "", 0.0002, 0.1), 0.5)
        quality = float(rng.random() < p_cheap[kind])
        if run.next_model() == "strong":
            run.answered(ModelAnswer("strong", "", 0.002, 1.0), None)
            quality = float(rng.random() < 0.95)
        result = run.result()
        step = result.steps[0]
        floor = learner.params.floor * learner.params.decided_floor  # both actions stay possible (offline evaluation)
        assert floor <= step.probability <= 1.0 - floor
        result.learn(learner, quality)
    rates = {}
    for kind, ctx in kinds.items():
        steps = [learner.decide(ctx, 0, "cheap", 0.5, 0.002, 100.0, rng) for _ in range(200)]
        rates[kind] = np.mean([s.escalate for s in steps])
    assert rates["hard"] >= 0.9 and rates["easy"] <= 0.2, rates
    clone = LearnedEscalation(EscalationParams(v=1.0))
    clone.load(learner.state())
    z = learner.state_vector(kinds["hard"], 0, 0.5)
    assert clone.p_escalate(z, 0, 0.002, 100.0) == learner.p_escalate(z, 0, 0.002, 100.0)


def test_learned_escalation_reads_the_confidence_signal() -> None:
    """One kind of prompt; the cheap answer is right exactly when the judge's score is high; escalating costs 0.2
    (accept: 1 / 0, escalate: 0.8): the learner accepts high scores and escalates low ones."""
    rng = np.random.default_rng(3)
    learner = LearnedEscalation()
    ctx = EXTRACTOR.extract("what is the capital of France")
    for _ in range(1500):
        right = rng.random() < 0.5
        score = float(rng.uniform(0.7, 1.0) if right else rng.uniform(0.0, 0.3))
        run = CascadeRun(["cheap", "strong"], learner, ctx, 100.0, rng, lambda m: 0.002)
        run.answered(ModelAnswer("cheap", "", 0.0002, 0.1), score)
        quality = float(right)
        if run.next_model() == "strong":
            run.answered(ModelAnswer("strong", "", 0.002, 1.0), None)
            quality = 1.0
        run.result().learn(learner, quality)
    high = np.mean([learner.decide(ctx, 0, "cheap", 0.9, 0.002, 100.0, rng).escalate for _ in range(200)])
    low = np.mean([learner.decide(ctx, 0, "cheap", 0.1, 0.002, 100.0, rng).escalate for _ in range(200)])
    assert high <= 0.1 and low >= 0.9, (high, low)


def test_the_floor_shrinks_where_the_learner_has_decided_and_stays_where_it_has_not() -> None:
    """Scores 0.1 and 0.9 (400 labelled chains each): the cheap answer right 10% / 90% of the time, the strong one
    95%, escalating costs 0.2: the gain of escalating is +0.65 at 0.1 and −0.15 at 0.9, ≥ 2 posterior spreads
    from 0, so the wrong action keeps between decided_floor·floor and twice that (1.0–1.4× on seeds 1, 2, 3, 5).
    At score 0.5, never seen, the gain's spread is wide: the floor there stays above half of `floor`. Every logged
    probability stays ≥ decided_floor·floor > 0 (offline evaluation), and with decided_floor = 1 it is `floor`."""
    rng = np.random.default_rng(5)
    ctx = EXTRACTOR.extract("what is the capital of France")
    learners = {d: LearnedEscalation(EscalationParams(decided_floor=d)) for d in (0.1, 1.0)}
    for learner in learners.values():
        for score in [0.1, 0.9] * 400:
            step = learner.decide(ctx, 0, "cheap", score, 0.002, 100.0, rng)
            learner.learn_both(step, float(rng.random() < score), float(rng.random() < 0.95))
    shrinking, fixed = learners[0.1], learners[1.0]
    floor = shrinking.params.floor
    for score, wrong in ((0.1, "accept"), (0.9, "escalate")):
        p = shrinking.p_escalate(shrinking.state_vector(ctx, 0, score), 0, 0.002, 100.0)[0]
        p_wrong = 1.0 - p if wrong == "accept" else p
        assert 0.0999 * floor <= p_wrong <= 0.2 * floor, (score, p_wrong)
        p = fixed.p_escalate(fixed.state_vector(ctx, 0, score), 0, 0.002, 100.0)[0]
        assert (1.0 - p if wrong == "accept" else p) == pytest.approx(floor, rel=1e-6)
    p = shrinking.p_escalate(shrinking.state_vector(ctx, 0, 0.5), 0, 0.002, 100.0)[0]
    assert min(p, 1.0 - p) >= 0.5 * floor, p


def test_with_a_floor_the_logged_probability_stays_inside_0_1_however_decided() -> None:
    """floor > 0: both actions keep a positive probability however decided the posterior (scores 0.1 and 0.9 after
    300 labelled chains each, λ up to 1e6), with a tiny decided_floor (1e-6) too (0 is refused: its floor
    vanished where the posterior had decided, p_escalate was exactly 0 or 1 on these states)."""
    rng = np.random.default_rng(2)
    ctx = EXTRACTOR.extract("what is the capital of France")
    learner = LearnedEscalation(EscalationParams(decided_floor=1e-6))
    for score in [0.1, 0.9] * 300:
        step = learner.decide(ctx, 0, "cheap", score, 0.002, 100.0, rng)
        learner.learn_both(step, float(rng.random() < score), float(rng.random() < 0.95))
    for score in (0.1, 0.5, 0.9):
        for lam in (100.0, 1e6):
            p = learner.p_escalate(learner.state_vector(ctx, 0, score), 0, 0.002, lam)[0]
            assert 0.0 < p < 1.0 and min(p, 1.0 - p) >= 1e-6 * learner.params.floor * 0.999, (score, lam, p)


def test_antitonic_is_the_non_increasing_least_squares_fit() -> None:
    """Pool adjacent violators: a rising run becomes its weighted mean; a non-increasing input is returned as is."""
    assert antitonic(np.array([5.0, 3.0, 4.0, 1.0, 2.0, 0.0]), np.ones(6)).tolist() == [5, 3.5, 3.5, 1.5, 1.5, 0]
    assert antitonic(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 10.0])).tolist() == [2.75] * 3
    assert antitonic(np.array([3.0, 2.0, 2.0]), np.ones(3)).tolist() == [3, 2, 2]


def test_a_score_level_with_a_few_unlucky_outcomes_follows_its_well_known_neighbours() -> None:
    """Scores 4/9 and 6/9: the cheap answer is right 40% of the time, the strong one 95%, escalating costs 0.2, so
    escalating gains 0.35 there (400 labelled chains each, `learn_both`). Score 5/9 was seen 3 times, each time
    the cheap answer right and the strong one wrong. Its own level then says "accept"; every threshold rule, and
    the learner with `monotone` (the gain made non-increasing in the score, pooled with its neighbours by their
    precision), escalates it: P(escalate) ≥ 0.9 with `monotone`, ≤ 0.1 without (200 decisions each)."""
    rng = np.random.default_rng(11)
    ctx = EXTRACTOR.extract("what is the capital of France")
    learners = {m: LearnedEscalation(EscalationParams(monotone=m)) for m in (True, False)}
    for learner in learners.values():
        for score in [4 / 9, 6 / 9] * 400:
            step = learner.decide(ctx, 0, "cheap", score, 0.002, 100.0, rng)
            learner.learn_both(step, float(rng.random() < 0.4), float(rng.random() < 0.95))
        for _ in range(3):
            learner.learn_both(learner.decide(ctx, 0, "cheap", 5 / 9, 0.002, 100.0, rng), 1.0, 0.0)
    rates = {m: np.mean([lr.decide(ctx, 0, "cheap", 5 / 9, 0.002, 100.0, rng).escalate for _ in range(200)])
             for m, lr in learners.items()}  # fmt: skip
    assert rates[True] >= 0.9 and rates[False] <= 0.1, rates


def test_a_learner_state_of_another_layout_is_refused_not_misread() -> None:
    """`load` takes a state of its own layout only: another `dim`, a state saved before the confidence block had its
    smooth part (13 features per chain position), or with the history block where this learner has none (or the
    other way), is a ValueError naming the sizes (and, for the history block, which setting saved it)."""
    small, large = LearnedEscalation(EscalationParams(dim=32)), LearnedEscalation(EscalationParams(dim=64))
    with pytest.raises(ValueError, match="features"):
        large.load(small.state())
    old = {k: v for k, v in large.state().items()}
    size = large.size - MAX_STEPS
    old["accept"] = {k: np.eye(size) if k != "b" else np.zeros(size) for k in ("a", "a_inv", "b")}
    with pytest.raises(ValueError, match=f"{size} features"):
        large.load(old)
    large.load(large.state())  # its own round-trips
    history = LearnedEscalation(EscalationParams(history=True))  # the history block on one side only
    with pytest.raises(ValueError, match=r"no history\): a state saved with history = true"):
        large.load(history.state())
    with pytest.raises(ValueError, match=r"3 history features per position after the first\): a state saved with "
                                         "history = false"):  # fmt: skip
        history.load(large.state())
    history.load(history.state())


# -- the history block: an earlier step's score in the state of later steps --------------------------------------
HISTORY_COSTS = {"cheap": 0.0001, "mid": 0.0005, "strong": 0.002}
HISTORY_LAMBDA = 100.0
HISTORY_MARGIN = 0.02
"""How far above every fixed threshold the learner with `history` must be where the earlier score decides (on the
second half of 2,000 chains from nothing; expected +0.075 once learned, observed +0.030 … +0.052 on seeds 0–5)."""


def history_stream(seed: int, n: int) -> tuple[np.ndarray, ...]:
    """Per chain: the cheap model's score s₀ (U[0, 0.3] on hard prompts, U[0.35, 0.65] on easy ones: its judge reads
    the prompt's difficulty), the middle model's score s₁ (U[0.5, 0.95], says nothing), whether the middle model
    (hard 20%, easy 90%) and the strong one (95%) are right. Half the prompts are hard; all have the same text."""
    rng = np.random.default_rng(seed)
    hard = rng.random(n) < 0.5
    s0 = np.where(hard, rng.uniform(0.0, 0.3, n), rng.uniform(0.35, 0.65, n))
    s1 = rng.uniform(0.5, 0.95, n)
    mid = (rng.random(n) < np.where(hard, 0.2, 0.9)).astype(float)
    strong = (rng.random(n) < 0.95).astype(float)
    return s0, s1, mid, strong


def history_chain(rule: Escalation, s0: float, s1: float, mid: float, strong: float, rng: np.random.Generator,
                  learn: bool) -> float:
    """One chain cheap → mid → strong (the cheap answer is always wrong); its reward, learned by `rule` if `learn`."""
    run = CascadeRun(list(HISTORY_COSTS), rule, HISTORY_CONTEXT, HISTORY_LAMBDA, rng, HISTORY_COSTS.__getitem__)
    quality = 0.0
    for model, score, right in (("cheap", s0, 0.0), ("mid", s1, mid), ("strong", None, strong)):
        if run.next_model() != model:
            break
        run.answered(ModelAnswer(model, "", HISTORY_COSTS[model], 0.1), score)
        quality = right
    result = run.result()
    if learn:
        result.learn(rule, quality)
    return quality - HISTORY_LAMBDA * result.cost_usd


HISTORY_CONTEXT = EXTRACTOR.extract("solve this problem")


def test_with_history_an_earlier_low_score_teaches_the_learner_to_escalate_what_no_threshold_can_tell() -> None:
    """Cheap → mid → strong at λ = 100 (escalating from mid costs 0.2). The cheap answer is always wrong, but its
    judge's score reads the prompt's difficulty; the middle model is right on 90% of easy prompts and 20% of hard
    ones, and its own score says nothing. So after the middle answer escalating pays on hard prompts (+0.55) and
    not on easy ones (−0.15): only the *earlier* score tells them apart. Every fixed threshold's best is to escalate
    everything (reward ≈ 0.69; a rule that accepts some middle answers accepts as many hard as easy ones); the
    learner with `history` learns from the chains (bandit feedback, through `CascadeRun`, which hands `decide` the
    earlier confidences) to accept the middle answer after a high cheap score and escalate after a low one, and
    beats every threshold by HISTORY_MARGIN on the second half of 2,000 chains on each of 4 seeds; without
    `history` it cannot (≤ +0.005), and it decides alike whatever the earlier score. v = 0.5: the earlier score's
    effect is learned only where both actions are seen after it, and with the default v = 0.05 from nothing this
    stream is learned in 2 of 6 seeds (a labelled warm start, `learn_both`, sees both at every step)."""
    thresholds = [ThresholdEscalation(k / 10) for k in range(11)]
    for seed in range(4):
        n = 2000
        s0, s1, mid, strong = history_stream(seed, n)
        later = range(n // 2, n)
        best = max(
            np.mean([history_chain(rule, s0[t], s1[t], mid[t], strong[t], np.random.default_rng(0), False)
                     for t in later])
            for rule in thresholds
        )  # fmt: skip
        gains, rates = {}, {}
        for history in (True, False):
            learner = LearnedEscalation(EscalationParams(history=history, v=0.5))
            rng = np.random.default_rng([seed, 1])
            rewards = [history_chain(learner, s0[t], s1[t], mid[t], strong[t], rng, True) for t in range(n)]
            gains[history] = float(np.mean(rewards[n // 2 :])) - best
            rates[history] = [
                np.mean([learner.decide(HISTORY_CONTEXT, 1, "mid", 0.7, 0.002, HISTORY_LAMBDA, rng, [p]).escalate
                         for _ in range(200)])
                for p in (0.15, 0.5)  # after a hard prompt's cheap score, an easy one's
            ]  # fmt: skip
        assert gains[True] >= HISTORY_MARGIN and gains[False] <= 0.005, (seed, gains)
        assert rates[True][0] >= 0.9 and rates[True][1] <= 0.3, (seed, rates)
        assert abs(rates[False][0] - rates[False][1]) <= 0.1, (seed, rates)


def test_the_chain_hands_each_step_the_earlier_confidences_and_the_grid_keeps_them() -> None:
    """`CascadeRun` calls `decide` at the answering model's chain position with one score per earlier position (a
    failed model's None, as a missing confidence's: `earlier[-1]` is always the previous model's; it was the last
    answered step's, an older model's after a failure); with `history` the state of position 1 holds
    [1{p missing}, p, p·s] (p missing too when the previous model failed) and the monotone decision's score grid
    varies this step's score only (p·s follows it, p stays). A state for position k takes at most k earlier
    confidences."""
    seen: list[tuple[int, list[float | None]]] = []

    class Recording(ThresholdEscalation):
        def decide(self, context, step, model, confidence, next_cost_usd, cost_weight, rng, earlier=()):  # type: ignore[no-untyped-def]
            seen.append((step, list(earlier)))
            return super().decide(context, step, model, confidence, next_cost_usd, cost_weight, rng, earlier)

    run = CascadeRun(["a", "b", "c", "d"], Recording(0.9), HISTORY_CONTEXT, 1.0, np.random.default_rng(0),
                     lambda m: 0.001)  # fmt: skip
    run.answered(ModelAnswer("a", "", 0.0, 0.0), 0.3)
    run.failed("b", "timeout")
    run.answered(ModelAnswer("c", "", 0.0, 0.0), None)
    assert seen == [(0, []), (2, [0.3, None])] and run.next_model() == "d"  # c is the chain's third model
    del seen[:]
    run = CascadeRun(["a", "b", "c"], Recording(0.9), HISTORY_CONTEXT, 1.0, np.random.default_rng(0),
                     lambda m: 0.001)  # fmt: skip
    run.failed("a", "timeout")
    step = run.answered(ModelAnswer("b", "", 0.0, 0.0), 0.5)
    assert seen == [(1, [None])] and step is not None and step.step == 1 and step.to_json()["step"] == 1

    learner = LearnedEscalation(EscalationParams(history=True))
    dim = learner.params.dim
    z = learner.state_vector(HISTORY_CONTEXT, 1, 2 / 9, [0.25])
    h = 2 * dim + HISTORY_START  # position 1's history block
    assert z[h : h + HISTORY].tolist() == pytest.approx([0.0, 0.25, 0.25 * 2 / 9])
    assert learner.state_vector(HISTORY_CONTEXT, 1, 2 / 9, [None])[h : h + HISTORY].tolist() == [1.0, 0.0, 0.0]
    assert not learner.state_vector(HISTORY_CONTEXT, 0, 2 / 9)[h:].any()  # nothing before the first step
    grid, own = score_grid(z, 1, dim, history=True)
    assert grid is not None and own == 2
    assert np.all(grid[:, h + 1] == 0.25)
    assert grid[:, h + 2] == pytest.approx(0.25 * np.arange(10) / 9)
    assert np.array_equal(grid[own], z)
    assert learner.state_vector(HISTORY_CONTEXT, 1, 2 / 9)[h : h + HISTORY].tolist() == [1.0, 0.0, 0.0]  # a failed
    with pytest.raises(ValueError, match="earlier"):  # first model: no earlier score; more than one per position:
        learner.state_vector(HISTORY_CONTEXT, 1, 0.5, [0.1, 0.2])  # a caller's mistake
    plain = LearnedEscalation()
    assert plain.size == learner.size - (MAX_STEPS - 1) * HISTORY  # off: the layout of before
    without = plain.state_vector(HISTORY_CONTEXT, 1, 0.5)
    assert np.array_equal(plain.state_vector(HISTORY_CONTEXT, 1, 0.5, [0.1]), without)


def test_a_step_after_a_failed_model_is_decided_and_learned_at_its_chain_position() -> None:
    """A learned cascade whose first model failed decides on the second model's answer as the second model's: its
    state has the score in position 1's block (a score means something else for each model), escalating is priced
    with position 1's learned cost ratio and the realised cost teaches that ratio, not the first model's."""
    learner = LearnedEscalation()
    dim = learner.params.dim
    costs = {"a": 0.001, "b": 0.002, "c": 0.01}
    run = CascadeRun(list(costs), learner, HISTORY_CONTEXT, 10.0, np.random.default_rng(0), costs.__getitem__)
    run.failed("a", "timeout")
    step = run.answered(ModelAnswer("b", "", costs["b"], 0.0), 0.0)  # unsure: escalated
    assert step is not None and step.step == 1 and step.escalate and step.state is not None
    block = 2 * dim + CONFIDENCE_FEATURES  # position 1's confidence block
    assert step.state[block + 1] == 1.0 and not step.state[2 * dim : block].any()  # nothing in position 0's
    run.answered(ModelAnswer("c", "", 3 * costs["c"], 0.0), None)  # c's answer cost 3 times its expected cost
    run.result().learn(learner, 0.9)
    assert learner.cost_count.tolist() == [0.0, 1.0, 0.0, 0.0]  # position 1 learned what escalating from b cost:
    assert learner.cost_ratio.tolist() == pytest.approx([1.0, 2.0, 1.0, 1.0])  # ratio 3, with the prior 1 at weight 1


def golden_run(failure_rate: float) -> tuple[tuple[int, int, int], float, float, float]:
    """300 seeded chains of four models through `CascadeRun` (`failure_rate` of the calls failed, 10% missing
    scores, bandit feedback) with the default learner: (steps, escalations, steps at a position ≥ 1), Σ P(escalate),
    and the sums of the learned weights."""
    costs = {"a": 0.0001, "b": 0.0005, "c": 0.001, "d": 0.004}
    prompts = ["solve x^2=4", "write a poem about the sea", "fix this python bug: def f(x): return y"]
    rng = np.random.default_rng(7)
    learner = LearnedEscalation()
    steps: list[EscalationStep] = []
    for t in range(300):
        run = CascadeRun(list(costs), learner, EXTRACTOR.extract(f"{prompts[t % 3]} #{t}"), 100.0, rng,
                         costs.__getitem__)  # fmt: skip
        while (model := run.next_model()) is not None:
            if rng.random() < failure_rate:
                run.failed(model, "timeout")
                continue
            confidence = None if rng.random() < 0.1 else float(rng.integers(1, 11) - 1) / 9
            step = run.answered(ModelAnswer(model, "", costs[model], 0.1), confidence)
            steps += [] if step is None else [step]
        result = run.result()
        if result.answer is not None:
            result.learn(learner, float(rng.random() < 0.6))
    counts = (len(steps), sum(s.escalate for s in steps), sum(s.step >= 1 for s in steps))
    return counts, sum(s.p_escalate for s in steps), learner.escalate.theta.sum(), learner.accept.theta.sum()


def test_with_history_off_the_learner_decides_and_learns_as_before_it_existed() -> None:
    """Golden numbers from 96f34bed (before the history block; the same run at 96f34bed and after, compared bit for
    bit over 13,578 decisions including the simulator's RouterBench chain, in the review of session 9). Without
    failed calls they are still those of before; with 10% failed calls they are those of the fix that decides a
    step after a failed model at its chain position (before it, at the number of steps before it, which put the
    second model's answer in the first model's block): the run without failures is bit for bit the same before
    and after that fix."""
    counts, p_escalate, escalate, accept = golden_run(0.0)
    assert counts == (373, 77, 73)
    assert p_escalate == pytest.approx(78.06774703162034, rel=1e-9)
    assert escalate == pytest.approx(3.933490365159905, rel=1e-9)
    assert accept == pytest.approx(5.087868402348036, rel=1e-9)
    counts, p_escalate, escalate, accept = golden_run(0.1)
    assert counts == (488, 206, 218)
    assert p_escalate == pytest.approx(205.91116571769092, rel=1e-9)
    assert escalate == pytest.approx(4.430189284963299, rel=1e-9)
    assert accept == pytest.approx(5.56540659072658, rel=1e-9)


def test_a_rule_whose_decide_does_not_take_earlier_still_runs_in_a_chain() -> None:
    """A user's escalation rule written before `decide` had `earlier` (or one that has no use for it) runs in a
    chain as before, through `CascadeRun` and `run_cascade`: `earlier` is passed only to a `decide` that takes it,
    by name or as `**kwargs`."""
    seen: list[tuple[str, int, tuple[float | None, ...] | None]] = []

    class Old:
        name = "old"

        def decide(self, context: Any, step: int, model: str, confidence: float | None, next_cost_usd: float,
                   cost_weight: float, rng: np.random.Generator) -> EscalationStep:  # fmt: skip
            seen.append(("old", step, None))
            return EscalationStep(step, model, confidence, True, 1.0, next_cost_usd, next_cost_usd)

        def learn(self, steps: Sequence[EscalationStep], final_quality: float, extra_costs: Sequence[float]) -> None:
            return None

    class Keywords(Old):
        def decide(self, *args: Any, **kwargs: Any) -> EscalationStep:  # type: ignore[override]
            seen.append(("kwargs", args[1], tuple(kwargs["earlier"])))
            return super().decide(*args)

    async def call(model: str, messages: Any, logprobs: bool) -> ModelAnswer:
        if model == "judge":
            return ModelAnswer("judge", "4", 0.0, 0.0)
        return ModelAnswer(model, "an answer", 0.001, 0.0)

    for rule in (Old(), Keywords()):
        run = CascadeRun(["a", "b", "c"], rule, HISTORY_CONTEXT, 1.0, np.random.default_rng(0),  # type: ignore[arg-type]
                         lambda m: 0.001)  # fmt: skip
        result = asyncio.run(run_cascade(run, [{"role": "user", "content": "x"}], "x", call, Signal("judge", "judge")))
        assert result.model == "c" and [s.step for s in result.steps] == [0, 1]
    assert seen == [("old", 0, None), ("old", 1, None), ("kwargs", 0, ()), ("old", 0, None),
                    ("kwargs", 1, (1 / 3,)), ("old", 1, None)]  # fmt: skip


def test_a_stored_chain_is_learned_with_its_earlier_confidences_as_it_was_decided() -> None:
    """The log's learner (`EscalationLearners.learn`) recomputes each stored step's state from the decision's context
    and the stored steps before it: with `history` it holds exactly the state of a learner that learned the live
    chains' own steps (same A and b), over chains that reached the second step after various first scores. Its
    snapshot is refused by a router without `history`, with a message naming the setting."""
    models = tuple(ModelSpec(name, 1.0, 2.0) for name in HISTORY_COSTS)
    alias = RouterAlias("learned", "learned-cascade", tuple(HISTORY_COSTS), signal="logprob",
                        escalation={"history": True})  # fmt: skip
    learners = EscalationLearners(dataclasses.replace(Settings(models=models), named_routers=RoutersSettings((alias,))))
    live = LearnedEscalation(EscalationParams(history=True))
    decision = dataclasses.replace(Router(seed=1).route(Request(prompt="solve this problem")),
                                   policy="learned-cascade:learned")  # fmt: skip
    rng = np.random.default_rng(4)
    second_steps = 0
    for seq, (s0, s1) in enumerate(rng.uniform(0.0, 1.0, (60, 2)).tolist(), start=1):
        run = CascadeRun(list(HISTORY_COSTS), live, decision.context, 100.0, rng, HISTORY_COSTS.__getitem__)
        run.answered(ModelAnswer("cheap", "", 0.0001, 0.1), s0)
        if run.next_model() == "mid":
            run.answered(ModelAnswer("mid", "", 0.0005, 0.1), s1)
            if run.next_model() == "strong":
                run.answered(ModelAnswer("strong", "", 0.002, 0.1), None)
        result = run.result()
        second_steps += len(result.steps) == 2
        quality = float(rng.random() < 0.5)
        result.learn(live, quality)
        assert learners.learn(decision, chain_document(result.to_json(), result.extra_costs()), quality, seq)
    assert second_steps >= 10
    stored = learners.learners["learned"].state()
    for arm in ("accept", "escalate"):
        for key in ("a", "b"):
            assert np.allclose(stored[arm][key], live.state()[arm][key], rtol=0, atol=1e-12), (arm, key)
    # a checkpoint of these learners does not restore into a router without `history` (a checkpoint's restore
    # failing makes the service try an older one, then replay the log): the message says why
    plain = dataclasses.replace(alias, escalation={})
    without = EscalationLearners(dataclasses.replace(Settings(models=models), named_routers=RoutersSettings((plain,))))
    with pytest.raises(ValueError, match=r"escalation state of 'learned': .* a state saved with history = true"):
        without.restore(learners.snapshot())


def test_a_chain_stored_before_earlier_was_by_position_replays_as_it_was_decided() -> None:
    """A chain whose second model failed, its steps at positions 0 and 2: stored now (`"version": 2`), the step at
    position 2 was decided with `earlier` = [s₀, None] (p missing: the previous model failed) and replays so; stored
    without a version (before the fix), it was decided with [s₀] (the older model's score as p) and replays so. The
    two give different learners: the version is what keeps the old chain's replay equal to what was learned live."""
    models = tuple(ModelSpec(name, 1.0, 2.0) for name in HISTORY_COSTS)
    alias = RouterAlias("learned", "learned-cascade", tuple(HISTORY_COSTS), signal="logprob",
                        escalation={"history": True})  # fmt: skip
    settings = dataclasses.replace(Settings(models=models), named_routers=RoutersSettings((alias,)))
    decision = dataclasses.replace(Router(seed=1).route(Request(prompt="solve this problem")),
                                   policy="learned-cascade:learned")  # fmt: skip
    deciding, rng = LearnedEscalation(EscalationParams(history=True, floor=0.49)), np.random.default_rng(3)
    while True:  # until cheap's answer is escalated (floor 0.49: about every other try)
        run = CascadeRun(["cheap", "mid", "strong", "top"], deciding, decision.context, 1.0, rng, lambda m: 0.001)
        if run.answered(ModelAnswer("cheap", "", 0.0001, 0.1), 0.2) is not None and run.next_model() == "mid":
            break
    run.failed("mid", "timeout")
    run.answered(ModelAnswer("strong", "", 0.001, 0.1), 0.8)
    result = run.result()
    assert [s.step for s in result.steps] == [0, 2]
    document = json.loads(chain_document(result.to_json(), result.extra_costs()))
    assert document["version"] == CHAIN_VERSION == 2
    assert stored_earlier(document, 1) == [0.2, None]
    old = {k: v for k, v in document.items() if k != "version"}
    assert stored_earlier(old, 1) == [0.2]
    states = {}
    for name, chain, earlier in (("now", document, [0.2, None]), ("before", old, [0.2])):
        learners = EscalationLearners(settings)
        assert learners.learn(decision, json.dumps(chain), 0.7, 1)
        mirror = LearnedEscalation(EscalationParams(history=True))
        z0, z2 = mirror.state_vector(decision.context, 0, 0.2), mirror.state_vector(decision.context, 2, 0.8, earlier)
        steps = [dataclasses.replace(result.steps[0], state=z0), dataclasses.replace(result.steps[1], state=z2)]
        mirror.learn(steps, 0.7, result.extra_costs())
        states[name] = learners.learners["learned"].state()
        for arm in ("accept", "escalate"):
            assert np.array_equal(states[name][arm]["b"], mirror.state()[arm]["b"]), (name, arm)
    assert not np.array_equal(states["now"]["escalate"]["b"], states["before"]["escalate"]["b"]) or not np.array_equal(
        states["now"]["accept"]["b"], states["before"]["accept"]["b"])
    h = 2 * LearnedEscalation(EscalationParams(history=True)).params.dim + HISTORY_START + HISTORY  # position 2's
    assert result.steps[1].state is not None and result.steps[1].state[h : h + HISTORY].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(("settings", "match"), [({"floor": 0.5}, "floor"), ({"dim": 8}, "dim"), ({"v": -1}, "v"),
                                                ({"decided_floor": 0.0}, "decided_floor"),
                                                ({"history": "false"}, "history must be true or false"),
                                                ({"history_ridge": 0.0}, "history_ridge")])
def test_bad_escalation_settings_are_refused(settings: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EscalationParams(**settings)  # type: ignore[arg-type]


# -- the simulator drives the same code --------------------------------------------------------------------------
def test_the_simulated_judge_has_the_accuracy_it_was_given() -> None:
    rng = np.random.default_rng(0)
    judge = SimulatedJudge(noise=SimulatedJudge.noise_for(0.8), error=0.0)
    right = [((parse_judge_score(judge.reply(q, rng)) or 0.0) >= 0.5) == bool(q) for q in [0.0, 1.0] * 2000]
    assert 0.77 <= np.mean(right) <= 0.83
    with pytest.raises(InvalidInput, match="accuracy"):
        SimulatedJudge.noise_for(0.4)


STEP_MARGIN = 0.005
"""How far below the best threshold in hindsight learned escalation may be where a threshold is the best rule
(learning from nothing over 3,000 requests; observed while writing the test: −0.002 … +0.000 on 4-seed means,
−0.004 … +0.003 per seed)."""
THRESHOLDS = tuple(k / 10 for k in range(11))
"""Every distinct fixed rule on a 1–10 score (scores are k/9; 1.0 escalates every answer but a missing one)."""


def cascade_world(kinds: bool) -> Environment:
    """Two models, gpt-4o-mini → gpt-4o (catalog prices: escalating costs ≈ 0.0029 USD), 0/1 qualities, 3,000
    generated prompts. `kinds=False`: one kind of prompt, the cheap model right 62% of the time, the strong one
    95%: a step threshold on the judge's score is the best rule that reads the score alone (the generated text
    hints a little at a prompt's difficulty).
    `kinds=True`: math (cheap model right 28%, strong 95%) and chat (both 87%): escalating pays on math whatever
    the score and never on chat, which no threshold on the score can tell apart."""
    if kinds:
        domains = [{"name": "math", "weight": 0.5}, {"name": "chat", "weight": 0.5}]
        cheap, strong = {"math": -1.0, "chat": 2.0}, {"math": 3.0, "chat": 2.0}
    else:
        domains, cheap, strong = [{"name": "chat", "weight": 1.0}], {"chat": 0.5}, {"chat": 3.0}
    models = [{"name": "gpt-4o-mini", "skill": cheap, "slope": 0.5}, {"name": "gpt-4o", "skill": strong, "slope": 0.5}]
    world = {"name": "cascade", "seed": 3, "pool": 3000, "steps": 3000, "quality": "bernoulli"}
    return build_world({**world, "domains": domains, "models": models})


def learned_minus_thresholds(env: Environment, judge: float, cost_weight: float, seeds: Sequence[int]) -> np.ndarray:
    """Per seed, learned escalation's mean reward minus each fixed threshold's (learning from nothing, online),
    shape (len(seeds), len(THRESHOLDS)): the same stream and the same judge's scores for every strategy."""
    chain = f"judge={judge},models=gpt-4o-mini>gpt-4o"
    out = []

    agents: dict[str, Agent] = {}

    def reward(spec: str, seed: int) -> float:
        agent = agents.setdefault(spec, make_agent(spec, env))
        trace = agent.run(env.episode(seed), env, cost_weight, seed)
        return float(np.mean(trace.quality - cost_weight * trace.cost_usd))

    for seed in seeds:
        learned = reward(f"learned-cascade:{chain}", seed)
        out.append([learned - reward(f"cascade:threshold={t},{chain}", seed) for t in THRESHOLDS])
    return np.array(out)


def test_learned_escalation_matches_the_best_threshold_where_a_step_threshold_is_optimal() -> None:
    """One kind of prompt: the best rule is a threshold on the score (escalate below it, at λ = 50 where escalating
    costs ≈ 0.15 of quality and gains 0.95 − P(right | score)). Learning from nothing over 3,000 requests, learned
    escalation's mean reward is within MARGIN of the best fixed threshold chosen in hindsight (over 4 seeds),
    with judges of accuracy 0.7 and 0.9."""
    env = cascade_world(kinds=False)
    for judge in (0.7, 0.9):
        gaps = learned_minus_thresholds(env, judge, 50.0, seeds=range(4)).mean(axis=0)
        assert gaps.min() >= -STEP_MARGIN, (judge, gaps)


def test_learned_escalation_beats_every_threshold_where_the_prompt_kind_decides() -> None:
    """Math and chat prompts: escalating pays on math whatever the score says and never on chat, so every fixed
    threshold either escalates chat answers for nothing or accepts wrong math answers. Learned escalation reads
    the prompt and beats every threshold by at least 0.02 per request on each of 3 seeds (3,000 requests from
    nothing, judge accuracy 0.7, λ = 50)."""
    env = cascade_world(kinds=True)
    gaps = learned_minus_thresholds(env, 0.7, 50.0, seeds=range(3))
    assert gaps.min() >= 0.02, gaps


def test_learned_and_fixed_cascades_run_in_the_simulator_and_count_calls() -> None:
    env = load_dataset(SAMPLE)
    chain = "models=mixtral-8x7b-instruct-v0.1>gpt-4-1106-preview"
    for spec in (f"cascade:threshold=0.5,judge=0.8,judge_price=0.15,{chain}", f"learned-cascade:judge=0.8,{chain}"):
        agent = make_agent(spec, env)
        trace = agent.run(env.episode(0), env, 20.0, 0)
        assert (trace.chosen >= 0).all()
        assert 1.0 <= trace.extra["calls_per_request"] <= 2.0
        assert trace.extra["judge_calls_per_request"] == pytest.approx(1.0)  # only the cheap answer is judged
        assert trace.extra["escalations_per_request"] == pytest.approx(trace.extra["calls_per_request"] - 1.0)
    with pytest.raises(InvalidInput, match="unknown setting"):
        make_agent(f"learned-cascade:threshold=0.5,{chain}", env)
    with pytest.raises(InvalidInput, match="not both"):
        make_agent(f"cascade:judge=0.8,noise=0.2,{chain}", env)


def test_llm_router_falls_back_to_the_cheapest_model_when_its_reply_names_none() -> None:
    env = load_dataset(SAMPLE)
    result = simulate(
        Plan(env=EnvSpec.parse(f"dataset:{SAMPLE}"), policies=("llm-router:accuracy=1,garble=1",), seeds=(0,)),
        workers=1,
    )
    cheapest = min(env.model_names, key=lambda m: result.env["prices"][m]["output_usd_per_mtok"]
                   + result.env["prices"][m]["input_usd_per_mtok"])
    assert result.runs[0].model_shares[cheapest] == pytest.approx(1.0)
    assert result.runs[0].extra["router_fallbacks"] == pytest.approx(1.0)


# -- configuration -------------------------------------------------------------------------------------------------
CATALOG = """
[[models]]
name = "small"
input_usd_per_mtok = 0.1
output_usd_per_mtok = 0.2
[[models]]
name = "big"
input_usd_per_mtok = 5
output_usd_per_mtok = 15
[[models]]
name = "grader"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.6
"""


def _config(tmp_path: Path, routers: str) -> Path:
    path = tmp_path / "bandit-router.toml"
    path.write_text(CATALOG + routers, encoding="utf-8")
    return path


def test_routers_are_read_from_the_toml(tmp_path: Path) -> None:
    text = """
[[routers]]
name = "cascade"
strategy = "cascade"
models = ["small", "big"]
judge = "grader"
threshold = 0.7

[[routers]]
name = "learned"
strategy = "learned-cascade"
models = ["small", "big"]
signal = "logprob"
escalation = {v = 0.2, floor = 0.01}

[[routers]]
name = "auto"
strategy = "llm-router"
router_model = "grader"
models = ["small", "big"]
descriptions = {big = "strong at proofs"}
"""
    settings = load_settings(_config(tmp_path, text), env={})
    cascade, learned, auto = settings.routers
    assert (cascade.judge, cascade.threshold, cascade.called_models) == ("grader", 0.7, ("small", "big", "grader"))
    assert learned.signal == "logprob" and learned.escalation_params() == EscalationParams(v=0.2, floor=0.01)
    assert auto.router_model == "grader" and settings.named_routers.get("auto") is auto
    assert Settings().routers == ()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('name = "c"\nstrategy = "magic"\nmodels = ["small", "big"]', "strategy must be one of"),
        ('name = "c"\nstrategy = "cascade"\nmodels = ["small", "big"]', "judge"),
        ('name = "c"\nstrategy = "cascade"\nmodels = ["small"]\njudge = "grader"', "at least two"),
        ('name = "c"\nstrategy = "cascade"\nmodels = ["small", "big"]\njudge = "grader"\nthreshold = 7', "threshold"),
        ('name = "c"\nstrategy = "cascade"\nmodels = ["small", "big"]\njudge = "nope"', "not in the catalog"),
        ('name = "big"\nstrategy = "cascade"\nmodels = ["small", "big"]\njudge = "grader"', "catalog model's name"),
        ('name = "router"\nstrategy = "cascade"\nmodels = ["small", "big"]\njudge = "grader"', "bandit's alias"),
        ('name = "c"\nstrategy = "cascade"\nmodels = ["small", "big"]\njudge = "grader"\nrouter_model = "x"',
         "unknown keys"),
        ('name = "c"\nstrategy = "learned-cascade"\nmodels = ["small", "big"]\nsignal = "logprob"\n'
         "escalation = {floor = 0.9}", "floor"),
        ('name = "c"\nstrategy = "learned-cascade"\nmodels = ["small", "big"]\nsignal = "logprob"\n'
         'escalation = {monotone = "false"}', "monotone must be true or false"),
        ('name = "c"\nstrategy = "learned-cascade"\nmodels = ["small", "big"]\nsignal = "logprob"\n'
         "escalation = {decided_floor = true}", "decided_floor must be a finite number"),
        ('name = "c"\nstrategy = "learned-cascade"\nmodels = ["small", "big"]\nsignal = "logprob"\n'
         'escalation = {history = "yes"}', r"'c': escalation: history must be true or false, got 'yes'"),
        ('name = "c"\nstrategy = "learned-cascade"\nmodels = ["small", "big"]\nsignal = "logprob"\n'
         "escalation = {history = true, history_ridge = 0}", "history_ridge must be a finite number > 0, not 0"),
        ('name = "c"\nstrategy = "learned-cascade"\nmodels = ["small", "big"]\nsignal = "logprob"\n'
         'escalation = {history_ridge = "x"}', "history_ridge must be a finite number, got 'x'"),
        ('name = "c"\nstrategy = "learned-cascade"\nmodels = ["small", "big"]\nsignal = "logprob"\n'
         "escalation = {dim = 64.5}", r"'c': escalation: dim must be an integer, got 64.5"),
        ('name = "c"\nstrategy = "learned-cascade"\nmodels = ["small", "big"]\nsignal = "logprob"\n'
         'escalation = {dim = "64"}', r"'c': escalation: dim must be an integer, got '64'"),
        ('name = "c"\nstrategy = "learned-cascade"\nmodels = ["small", "big"]\nsignal = "logprob"\n'
         "escalation = {history_ridge = nan}", "history_ridge must be a finite number, got nan"),
        ('name = "c"\nstrategy = "learned-cascade"\nmodels = ["small", "big"]\nsignal = "logprob"\n'
         "escalation = {ridge = inf}", "ridge must be a finite number, got inf"),
        ('name = "c"\nstrategy = "learned-cascade"\nmodels = ["small", "big"]\nsignal = "logprob"\n'
         "escalation = {v = nan}", "v must be a finite number, got nan"),
        ('name = "c"\nstrategy = "learned-cascade"\nmodels = ["small", "big"]\nsignal = "logprob"\n'
         "escalation = {histroy = true}",
         r"'c': escalation: unknown settings 'histroy' \(did you mean history\?\); known: .*'history'"),
        ('name = "c"\nstrategy = "llm-router"\nmodels = ["small", "big"]', "router_model"),
        ('name = "c"\nstrategy = "cascade"\nmodels = ["small", "big"]\nsignal = "logprob"\njudge = "grader"',
         "only used"),
        ('name = "c"\nstrategy = "cascade"\nmodels = ["small", "big"]\njudge = "grader"\nrubric = "rate it"',
         "request"),
    ],
)
def test_bad_routers_are_refused_with_a_message_naming_them(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_settings(_config(tmp_path, "\n[[routers]]\n" + text + "\n"), env={})


@pytest.mark.parametrize("strategy", ["llm-router", "cascade"])
def test_a_router_answering_with_a_route_false_model_is_refused_at_load(tmp_path: Path, strategy: str) -> None:
    """A `route = false` model only judges or routes: the policy never gives it a probability, so a router that
    answers with it is refused when the settings load (not a 500 at its first request)."""
    catalog = CATALOG.replace('name = "grader"\n', 'name = "grader"\nroute = false\n')
    extra = 'router_model = "grader"' if strategy == "llm-router" else 'signal = "logprob"'
    bad = f'\n[[routers]]\nname = "c"\nstrategy = "{strategy}"\nmodels = ["small", "grader"]\n{extra}\n'
    path = tmp_path / "bandit-router.toml"
    path.write_text(catalog + bad, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'c'.*route = false models \['grader'\]"):
        load_settings(path, env={})
    path.write_text(catalog + bad.replace('"grader"]', '"big"]'), encoding="utf-8")
    assert load_settings(path, env={}).routers[0].models == ("small", "big")  # grader may still route or judge


def test_two_routers_may_not_share_a_name(tmp_path: Path) -> None:
    one = '\n[[routers]]\nname = "c"\nstrategy = "cascade"\nmodels = ["small", "big"]\njudge = "grader"\n'
    with pytest.raises(ConfigError, match="same name"):
        load_settings(_config(tmp_path, one + one), env={})


def test_catalog_entries_may_be_unroutable_and_carry_a_description() -> None:
    from bandit_router.catalog import CatalogError
    from bandit_router.errors import UnknownModel
    from bandit_router.router import Router

    judge = ModelSpec.from_json({"name": "grader", "input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.6,
                                 "route": False, "description": "grades answers"})
    assert judge.to_json()["route"] is False and ModelSpec.from_json(judge.to_json()) == judge
    assert "description" not in judge.learning_json()  # not what the policy learns from
    router = Router([ModelSpec("a", 0.1, 0.2), ModelSpec("b", 1.0, 2.0), judge], seed=0)
    ctx = EXTRACTOR.extract("hello")
    assert {router.decide(ctx).model for _ in range(50)} <= {"a", "b"}
    assert router.decide(ctx, models=["a", "grader"]).model == "a"
    with pytest.raises(UnknownModel, match="routable"):
        router.decide(ctx, models=["grader"])
    with pytest.raises(CatalogError, match="route"):
        ModelSpec("x", 0.0, 0.0, route="no")  # type: ignore[arg-type]


def test_decision_only_escalation_settings_keep_the_checkpoints() -> None:
    """`decided_floor` and `monotone` change how the learner decides, not what it learns from the log: a router
    whose settings differ only in them has the checkpoints' fingerprint of before they existed (checked against
    7c7aef41 for escalation = {v = 0.2}: 54e584fb…), so an upgrade or a change of them restores the newest
    checkpoint instead of replaying the whole log. A learning setting (`ridge`, `history` on) still changes it."""
    models = (ModelSpec("small", 1.0, 2.0), ModelSpec("big", 5.0, 10.0))

    def print_of(escalation: Mapping[str, float]) -> str:
        alias = RouterAlias("learned", "learned-cascade", ("small", "big"), signal="logprob", escalation=escalation)
        return fingerprint(dataclasses.replace(Settings(models=models), named_routers=RoutersSettings((alias,))))

    base = print_of({"v": 0.2})
    assert base == "54e584fb3c4cf319dd5beaa1e42ce533"
    assert print_of({"v": 0.2, "decided_floor": 1.0, "monotone": False}) == base
    assert print_of({"v": 0.2, "ridge": 50.0}) != base
    # `history` off (the default) keeps the layout and the fingerprint of before it existed; on, both change
    assert print_of({"v": 0.2, "history": False, "history_ridge": 50.0}) == base
    assert print_of({"v": 0.2, "history": True}) != base
    assert print_of({"v": 0.2, "history": True, "history_ridge": 50.0}) != print_of({"v": 0.2, "history": True})


@pytest.mark.parametrize("version", [3, "2", 2.0, True, None, 0])
def test_a_chain_version_this_release_does_not_write_is_refused_not_read_as_another(version: Any) -> None:
    """Only an int from 1 to `CHAIN_VERSION` (absent: 1) is a version: a newer chain (3) is not read as 2, nor
    "2", 2.0, True or null as 1 (their `earlier` would not be what the step was decided with). The learners log and
    skip such a chain, and the estimators' `decodes` leaves it out."""
    steps = [{"step": 0, "confidence": 0.3}, {"step": 2, "confidence": 0.6}]
    chain = {"calls": [{}] * 3, "steps": steps}
    assert stored_earlier(chain, 1) == [0.3] and stored_earlier({**chain, "version": 1}, 1) == [0.3]
    assert stored_earlier({**chain, "version": 2}, 1) == [0.3, None]
    with pytest.raises(ValueError, match=r"chain version .* is not one of 1\.\.2"):
        stored_earlier({**chain, "version": version}, 1)
    learners, decision, document = _corrupt_chain_fixture()
    document["version"] = version
    assert not learners.learn(decision, json.dumps(document), 0.5, 1)
    assert not decodes(ChainFeedback(cast(Any, None), decision, json.dumps(document)))


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("step", [10**12, 3, -1, -10**6, True, 1.0, "1"])
def test_a_step_outside_its_chain_is_refused_in_every_version_and_replay_goes_on(step: Any, version: int) -> None:
    """A corrupt row whose step is not a position of its chain (0 <= step < its calls, an int): a ValueError the
    learners log and skip (a version-2 step of 10**12 was a MemoryError, and an unversioned one of -10**6 an
    IndexError, that stopped the log's replay for good; an unversioned 1.0 or "1" was learned as 1), and one the
    estimators' `decodes` leaves out; the next chain is learned. Version 1's steps (the number of steps before)
    are such positions too."""
    learners, decision, document = _corrupt_chain_fixture()
    if version == 1:
        document.pop("version")  # stored before versions
    assert decodes(ChainFeedback(cast(Any, None), decision, json.dumps(document)))
    bad = {**document, "steps": [document["steps"][0], {**document["steps"][1], "step": step}]}
    with pytest.raises(ValueError, match="is not a position of a chain of 3 calls"):
        stored_earlier(bad, 1)
    assert not learners.learn(decision, json.dumps(bad), 0.5, 1)
    assert not decodes(ChainFeedback(cast(Any, None), decision, json.dumps(bad)))
    assert learners.learn(decision, json.dumps(document), 0.5, 2)


def _corrupt_chain_fixture() -> tuple[EscalationLearners, Decision, dict[str, Any]]:
    """Learners of one learned cascade, a decision of it, and a well-formed version-2 chain of three calls whose
    steps are at positions 0 and 1."""
    models = tuple(ModelSpec(n, 1.0, 2.0) for n in ("cheap", "mid", "strong"))
    alias = RouterAlias("learned", "learned-cascade", ("cheap", "mid", "strong"), signal="logprob")
    learners = EscalationLearners(dataclasses.replace(Settings(models=models), named_routers=RoutersSettings((alias,))))
    decision = dataclasses.replace(Router(seed=1).route(Request(prompt="x")), policy="learned-cascade:learned")

    def step(k: int, model: str) -> dict[str, Any]:
        return {"step": k, "model": model, "confidence": 0.5, "action": "escalate", "probability": 0.5,
                "p_escalate": 0.5, "escalate": True, "expected_extra_cost_usd": 0.1}  # fmt: skip

    calls = [{"model": m, "role": "answer", "cost_usd": 0.1, "latency_s": 0.1} for m in ("cheap", "mid", "strong")]
    document = {"calls": calls, "steps": [step(0, "cheap"), step(1, "mid")], "extra_costs": [0.1, 0.1],
                "cost_usd": 0.3, "version": CHAIN_VERSION}  # fmt: skip
    return learners, decision, document
