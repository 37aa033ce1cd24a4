"""Replay a candidate policy on a log: its pmf on every logged context, as it would have been at that point.

A candidate (see `candidates`) is rebuilt as a `Router` with the log's models; its pmf on logged decision i is
`router.decide(context_i, models=models_i, cost_weight=λ)`, over the same allowed models. What it learned
before deciding depends on the mode, and so does what the resulting estimate means:

`learning` (default): the candidate walks the log in order and learns each logged outcome when that feedback
    arrived (`LoggedRecord.arrival`; a decision never sees its own feedback), with the logged propensity, as
    an off-policy learner would. The pmf of round i is π_i, the candidate trained on the log up to i. IPS/DR
    then estimate (1/n) Σ_i V(π_i): the average value of the candidate *as it would have learned from this
    log* (progressive validation on the logger's data). It is not the value of deploying it, which would
    learn from its own choices; for the logged policy itself the two coincide.
`frozen`: the candidate learns from the first `train_fraction` of the log, then stops learning; the estimates
    on the remaining rounds are of that one fixed policy on traffic like the held-out part (the classical
    off-policy evaluation setting, with i.i.d. guarantees).
`replay`: Li, Chu, Langford & Wang (2011), "Unbiased offline evaluation of contextual-bandit-based news article
    recommendation algorithms", generalised to a non-uniform logger by rejection sampling (Dudík, Erhan,
    Langford & Li 2012). Round i is accepted with probability π_i(a_i) / (M·μ_i(a_i)), M = max_i max_a
    1/μ_i(a) (a bound on π/μ); accepted rounds are exactly distributed as if the candidate had chosen, and
    the candidate learns only from them, with its own propensity. The mean reward of the accepted rounds
    estimates the online value of the learning candidate over that many requests: the faithful answer for a
    learning policy, at the price of keeping only about n/M rounds.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..catalog import ModelSpec
from ..errors import InvalidInput
from ..hints import quoted
from ..policies import parse_spec
from ..policies.baselines import cheapest
from ..reward import RewardConfig
from ..router import Router
from ..types import Decision
from .candidates import Candidate, parse_candidate
from .log import LoggedRecord, model_list, specs_by_name
from .scope import Scope

MODES = ("learning", "frozen", "replay")


@dataclass(frozen=True, eq=False)
class ReplayResult:
    """A candidate's pmfs on a log.

    `target_pmf` (n, K) over `models`, one row per record (rows that are not `evaluated` hold the logged pmf).
    `evaluated` (n,) bool: rows the estimates use (with feedback; frozen: the held-out part; replay: accepted).
    `router`: the candidate's router after the replay (frozen: as trained), None for logged, shadow and fixed
    (`fixed:<model>` is read from the log).
    `acceptance_bound`: M of the `replay` mode; `bound_exceeded`: rounds where π/μ > M (then biased).
    `left_out` (n,) bool: rows that would be evaluated but are left out for every candidate (`left_out_rows`).
    """

    candidate: Candidate
    mode: str
    models: tuple[str, ...]
    target_pmf: np.ndarray
    evaluated: np.ndarray
    router: Router | None = None
    acceptance_bound: float = math.nan
    bound_exceeded: int = 0
    left_out: np.ndarray | None = None


def _row(models: tuple[str, ...], allowed: Sequence[str], pmf: Sequence[float]) -> np.ndarray:
    index = {m: i for i, m in enumerate(models)}
    row = np.zeros(len(models))
    for m, p in zip(allowed, pmf, strict=True):
        row[index[m]] += p
    return row


def left_out_rows(
    records: Sequence[LoggedRecord], specs: Iterable[ModelSpec] | Mapping[str, ModelSpec], *, mode: str = "learning",
    train_fraction: float = 0.5,
) -> np.ndarray:
    """The rows of `records` with feedback that `mode` would evaluate (frozen: the held-out part) whose decision
    allowed no model a router may choose with this catalog, only models without a catalog entry (a client named
    removed models) or marked `route = false` since: no candidate routing with this catalog could decide them, so
    every candidate, `logged` and `fixed:<such a model>` too, is evaluated without them, on the same rounds."""
    by_name = specs_by_name(specs, "specs")
    routable = {name for name, spec in by_name.items() if spec.route}
    out = np.array([r.outcome is not None and routable.isdisjoint(r.decision.models) for r in records], dtype=bool)
    if mode == "frozen":
        out[: math.floor(train_fraction * len(records))] = False  # the candidate never decides there
    return out


def candidate_router(
    candidate: Candidate, specs: Iterable[ModelSpec], *, seed: int = 0, latency_weight: float = 0.0
) -> Router:
    """A fresh `Router` for a `policy` candidate over `specs`, with the candidate's router settings."""
    return Router(
        list(specs),
        policy=candidate.policy,
        seed=candidate.seed if candidate.seed is not None else seed,
        reward_config=RewardConfig(latency_weight=latency_weight),
        cold_start_rounds=candidate.cold_start_rounds,
        cold_start_floor=candidate.cold_start_floor,
    )


def _no_shadow(decisions: int) -> str:
    """Why no shadow was logged: there were no decisions, or they were made without `shadow_policies`."""
    return "none (the service ran without shadow_policies when they were made)" if decisions else "none (no decisions)"


def replay(
    records: Sequence[LoggedRecord],
    candidate: Candidate | str,
    *,
    specs: Iterable[ModelSpec] | Mapping[str, ModelSpec],
    mode: str = "learning",
    train_fraction: float = 0.5,
    seed: int = 0,
    latency_weight: float = 0.0,
    models: Sequence[str] | None = None,
    policy: str | None = None,
    scope: Scope | None = None,
) -> ReplayResult:
    """The pmfs of `candidate` on `records` (in decision order) under `mode` (see the module docstring).

    `specs`: the catalog entries of the log's models (the candidate's router routes among them and prices their
    outcomes). A model of the log without one (removed from the catalog since) is one the candidate cannot
    route to: its router has the other models, decides among those a decision allowed and learns nothing from
    the removed model's outcomes, as it would be deployed with this catalog; `fixed:<removed model>` is read
    from the log (1 on that model where a decision allowed it, else the cheapest allowed model, as the fixed
    policy chooses). A decision that allowed no model with an entry is one no candidate decides: it keeps its
    logged row, with feedback or without, and is left out of the evaluated rows (`left_out_rows`). `models` fixes
    the column order of `target_pmf` (default: order of first appearance). `scope` (or `policy`, a live policy's
    name, as `Scope(policy)`): only the decisions in it are evaluated (the others are left out, `left_out`, but still
    teach the candidate: in `replay` it decides them too and learns the ones it accepts, so its pmfs are those of the
    whole log's replay; a shadow's pmf is needed only on the evaluated ones).
    """
    if mode not in MODES:
        raise InvalidInput(f"unknown mode {quoted([mode], MODES)}; known: {', '.join(MODES)}")
    if not 0.0 < train_fraction < 1.0:
        raise InvalidInput("train_fraction must be in (0, 1)")
    cand = parse_candidate(candidate) if isinstance(candidate, str) else candidate
    names = tuple(models) if models is not None else model_list(records)
    n = len(records)
    target = np.zeros((n, len(names)))
    has_feedback = np.array([r.outcome is not None for r in records], dtype=bool)
    column = {m: j for j, m in enumerate(names)}
    for i, record in enumerate(records):
        d = record.decision
        if d.models == names:  # the common case: every model of the log allowed, in its order
            target[i] = d.pmf
        else:
            for m, p in zip(d.models, d.pmf, strict=True):
                target[i, column[m]] += p
    split = math.floor(train_fraction * n) if mode == "frozen" else 0
    by_name = specs_by_name(specs, "specs")
    left_out = left_out_rows(records, by_name, mode=mode, train_fraction=train_fraction)
    decided = has_feedback & ~left_out  # replay: the rounds a candidate may accept (and learn from)
    bound = _acceptance_bound(records, left_out) if mode == "replay" else math.nan  # M, whatever `policy`
    if policy is not None and scope is not None:
        raise InvalidInput("give policy or scope, not both (scope=Scope(policy=…, …) names the policy too)")
    scope = scope if scope is not None else Scope(policy=policy)
    if not scope.everything:  # decisions out of the scope: evaluated for no candidate
        left_out |= has_feedback & ~scope.mask(records)
        if mode == "frozen":
            left_out[:split] = False
    has_feedback &= ~left_out  # from here on: the rows a candidate may be evaluated on
    evaluated = has_feedback.copy()
    evaluated[:split] = False

    if cand.kind == "logged":
        return ReplayResult(cand, mode, names, target, evaluated, left_out=left_out)
    if cand.kind == "shadow":
        logged = sorted({name for record in records for name in record.shadow_pmfs})
        if cand.shadow not in logged:  # a misspelt name: not the first decision's id, as if that one lacked it
            raise InvalidInput(f"no shadow {quoted([cand.shadow], logged)} was logged with these decisions; logged: "
                               f"{', '.join(logged) or _no_shadow(len(records))}")
        for i, record in enumerate(records):
            pmf = record.shadow_pmfs.get(cand.shadow)
            if pmf is None and not evaluated[i]:
                continue  # keeps its logged row, never evaluated
            if pmf is None:
                raise InvalidInput(f"decision {record.decision.decision_id!r} has no pmf of shadow {cand.shadow!r}")
            target[i] = _row(names, record.decision.models, pmf)
        if mode == "replay":  # a fixed policy as `fixed:…` is: its rounds were all taken, so it scored `logged`'s value
            return _rejection_sample(records, cand, names, target, decided, has_feedback, seed, left_out, bound)
        return ReplayResult(cand, mode, names, target, evaluated, left_out=left_out)

    known = [by_name[m] for m in names if m in by_name]
    policy, settings = parse_spec(cand.policy)
    fixed = settings.get("model")
    if policy == "fixed" and fixed in names:  # read from the log (a model removed or made `route = false` since too)
        _fixed_from_log(records, str(fixed), by_name, names, target, start=split)
        if mode != "replay":
            return ReplayResult(cand, mode, names, target, evaluated, left_out=left_out)
        return _rejection_sample(records, cand, names, target, decided, has_feedback, seed, left_out, bound)
    router = candidate_router(cand, known, seed=seed, latency_weight=latency_weight)
    if mode == "replay":
        return _rejection_replay(records, cand, router, names, target, decided, has_feedback, seed, by_name, left_out,
                                 bound)

    def decide(i: int) -> None:
        d = records[i].decision
        allowed = _allowed(d, by_name)
        if not allowed:
            return  # no model it allowed may be routed to: evaluated for no candidate (with feedback: left out)
        lam = cand.cost_weight if cand.cost_weight is not None else d.cost_weight
        mine = router.decide(d.context, models=allowed, cost_weight=lam, decision_id=d.decision_id)
        target[i] = _row(names, mine.models, mine.pmf)

    pending: list[tuple[float, int]] = []

    def learn_until(time: float) -> None:
        while pending and pending[0][0] <= time:
            _, j = heapq.heappop(pending)
            outcome = records[j].outcome
            assert outcome is not None
            if records[j].decision.model in by_name:  # the removed model's outcomes teach a router without it nothing
                router.learn(records[j].decision, outcome)

    for i, record in enumerate(records):
        if i >= split:
            if mode == "frozen":
                if i == split:
                    learn_until(math.inf)
                decide(i)
                continue
            learn_until(record.decision.created_at)
            decide(i)
        if record.outcome is not None:
            heapq.heappush(pending, (record.arrival, i))
    if mode == "learning":
        learn_until(math.inf)
    return ReplayResult(cand, mode, names, target, evaluated, router, left_out=left_out)


def _allowed(decision: Decision, by_name: Mapping[str, ModelSpec]) -> tuple[str, ...]:
    """The models `decision` allowed that have a catalog entry; none (a row no candidate decides) when no such
    model may be routed to (`route = false` since it was logged: `left_out_rows`)."""
    models = decision.models
    allowed = models if all(m in by_name for m in models) else tuple(m for m in models if m in by_name)
    return allowed if any(by_name[m].route for m in allowed) else ()


def _fixed_from_log(
    records: Sequence[LoggedRecord],
    model: str,
    by_name: Mapping[str, ModelSpec],
    names: tuple[str, ...],
    target: np.ndarray,
    *,
    start: int = 0,
) -> None:
    """`fixed:<model>` for a model of the log into `target` from row `start` on (frozen: the held-out part; the rows
    before keep their logged pmf, as a replayed router leaves them): what `FixedPolicy` chooses (it neither learns
    nor explores), from the log alone (the model where a decision allowed it, else the cheapest allowed model a
    router could choose: with a catalog entry and `route`; a decision that allowed neither keeps its logged row,
    which is never evaluated). `model` may also have no catalog entry or be marked `route = false` since it was
    logged (a router refuses such a one: `FixedPolicy.check_models`): "always that model", as the log tells it.
    O(n·K) for n records of K models; a router replayed it in O(n·K) Python
    steps, so the baselines (`fixed:<model>` for each of K models) cost O(n·K²): at 100 models, 125 s on 8,000
    decisions with feedback."""
    column = {m: j for j, m in enumerate(names)}
    j = column[model]
    for i in range(start, len(records)):
        record = records[i]
        if model in record.decision.models:
            target[i] = 0.0
            target[i, j] = 1.0
            continue
        allowed = [by_name[m] for m in _allowed(record.decision, by_name) if by_name[m].route]
        if allowed:
            target[i] = 0.0
            target[i, column[allowed[cheapest(allowed)].name]] = 1.0


def _acceptance_bound(records: Sequence[LoggedRecord], left_out: np.ndarray) -> float:
    """M = max_i max_a 1/μ_i(a) of the replay mode, over the rows not left out."""
    return max((1.0 / min(p for p in r.decision.pmf if p > 0) for r, out in zip(records, left_out, strict=True)
                if not out), default=1.0)


def _rejection_sample(
    records: Sequence[LoggedRecord],
    cand: Candidate,
    names: tuple[str, ...],
    target: np.ndarray,
    decided: np.ndarray,
    has_feedback: np.ndarray,
    seed: int,
    left_out: np.ndarray,
    bound: float,
) -> ReplayResult:
    """The replay mode's acceptance for a candidate whose pmfs `target` are known and learn nothing (the same
    draws as `_rejection_replay`: on every `decided` row, the accepted ones scored where `has_feedback`)."""
    rng = np.random.default_rng([seed, 11])
    accepted = np.zeros(len(records), dtype=bool)
    exceeded = 0
    index = {m: k for k, m in enumerate(names)}
    for i, record in enumerate(records):
        d = record.decision
        if not decided[i]:
            continue
        pi = float(target[i, index[d.model]])
        ratio = pi / d.probability
        if ratio > bound * (1.0 + 1e-9):
            exceeded += 1
        if pi > 0 and rng.random() < ratio / bound:
            accepted[i] = True
    return ReplayResult(cand, "replay", names, target, accepted & has_feedback, None, bound, exceeded, left_out)


def _rejection_replay(
    records: Sequence[LoggedRecord],
    cand: Candidate,
    router: Router,
    names: tuple[str, ...],
    target: np.ndarray,
    decided: np.ndarray,
    has_feedback: np.ndarray,
    seed: int,
    by_name: Mapping[str, ModelSpec],
    left_out: np.ndarray,
    bound: float,
) -> ReplayResult:
    """Li et al.'s replay with rejection sampling (see the module docstring): the candidate decides every `decided`
    row and learns the accepted ones; those `has_feedback` marks (with `policy`: that policy's) are scored."""
    rng = np.random.default_rng([seed, 11])
    accepted = np.zeros(len(records), dtype=bool)
    exceeded = 0
    pending: list[tuple[float, int, Decision]] = []  # (arrival, index, the candidate's own decision)
    for i, record in enumerate(records):
        d = record.decision
        while pending and pending[0][0] <= d.created_at:
            _, j, mine_j = heapq.heappop(pending)
            outcome = records[j].outcome
            assert outcome is not None
            router.learn(mine_j, outcome)
        if not decided[i]:  # no feedback, or a decision no candidate decides
            continue
        lam = cand.cost_weight if cand.cost_weight is not None else d.cost_weight
        mine = router.decide(d.context, models=_allowed(d, by_name), cost_weight=lam, decision_id=d.decision_id)
        target[i] = _row(names, mine.models, mine.pmf)
        pi = mine.pmf[mine.models.index(d.model)] if d.model in mine.models else 0.0
        ratio = pi / d.probability
        if ratio > bound * (1.0 + 1e-9):
            exceeded += 1
        if pi > 0 and rng.random() < ratio / bound:
            accepted[i] = True
            # The candidate chose d.model itself (with its own probability π): learn it that way.
            chosen = dataclasses.replace(mine, model=d.model, arm=d.arm, probability=pi)
            heapq.heappush(pending, (record.arrival, i, chosen))
    return ReplayResult(cand, "replay", names, target, accepted & has_feedback, router, bound, exceeded, left_out)
