"""The `default` policy against a slow transcription of its documented math (`tests/default_reference.py`).

Seeded random streams (models with families, tiers, catalog priors and prices; per-request λ and model subsets;
models added at run time; prompts with and without the caller's context) drive the real policy, the real
`Router` around it, and the simulator's `RouterAgent` as `simulate` runs it. Checked after every update and at
every decision:

- every model's posterior (μ̂, σ², sd, the corrections w and their weights ω) and q̂(φ), to 1e-9: the fast code
  (Sherman–Morrison, recursive least squares, cached rows) is the documented math;
- the pmf: exactly (1e-12) the Gauss–Hermite quadrature of the reference's scores with the draws' sd s·sd and
  the dominance cut at β·s·sd, with the floors and the router's expected costs; within 0.012 of the exact
  Thompson probabilities (an independent integral: the quadrature's own error, measured ≤ 0.0113 on 300
  random configurations, is largest for a wide arm next to a narrow one); the chosen model is the inverse-CDF
  draw of the logged pmf;
- the simulator's regret per request (whole stream, second half) and break-even step against loops over the
  trace, and the summary record's mean and median over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from default_reference import ReferenceDefault, dense, draw, expected_cost, thompson_pmf, with_floors

from bandit_router import exploration
from bandit_router.catalog import ModelSpec
from bandit_router.features import FeatureExtractor, dense_vector
from bandit_router.policies.hierarchical import HierarchicalParams, HierarchicalThompsonPolicy
from bandit_router.router import Router
from bandit_router.types import Context, Outcome, Request
from simulator import metrics as M
from simulator.agents.router_agent import RouterAgent
from simulator.environments import EnvSpec
from simulator.report import record
from simulator.runner import Plan, Task, Workspace, summarize_run

EXACT = 1e-9
"""Posteriors, scores and the quadrature of the reference's scores: the same math, float rounding apart."""
THOMPSON = 0.012
"""The pmf against exact Thompson probabilities: the 16-node quadrature's error (≤ 0.0113 measured)."""

WORDS = (
    *("python", "function", "compile", "bug", "class", "loop"),
    *("integral", "prove", "equation", "theorem", "matrix", "solve"),
    *("recipe", "holiday", "movie", "story", "garden", "music"),
    *("3", "+", "4", "=", "7", "why", "how"),
)
MODELS = (
    ModelSpec("a-small", 1.0, 2.0, tags={"family": "a", "tier": "small"}),
    ModelSpec("a-large", 3.0, 6.0, tags={"family": "a", "tier": "large"}),
    ModelSpec("b-small", 0.5, 1.0, tags={"family": "b", "tier": "small"}),
    ModelSpec("c-large", 10.0, 30.0, tags={"tier": "large"}, prior_quality=0.8, prior_strength=3),
    ModelSpec("plain", 0.2, 0.2),
    ModelSpec("b-prior", 2.0, 2.0, tags={"family": "b"}, prior_quality=0.3),
)
LATE = (
    ModelSpec("a-new", 2.0, 4.0, tags={"family": "a"}),
    ModelSpec("cheap-new", 0.1, 0.1, output_tokens=100),
    ModelSpec("dear-new", 200.0, 600.0, tags={"tier": "large"}),  # dominated by its price at λ = 100: no floor
)
SETTINGS = (
    HierarchicalParams(),
    HierarchicalParams(noise_prior=0.0, shrinkage=0.5, evidence=0.0, dim=32, exploration=1.2, dominance=2.0),
)


def prompt(rng: np.random.Generator) -> tuple[int, str]:
    kind = int(rng.integers(0, 3))
    words = list(WORDS[6 * kind : 6 * kind + 6] + WORDS[18:])
    return kind, " ".join(rng.choice(words, size=int(rng.integers(1, 14))))


def assert_posteriors_match(policy: HierarchicalThompsonPolicy, reference: ReferenceDefault) -> None:
    mean, noise, sd, omega = policy._summary()
    for name, row in policy._arms.row.items():
        post = reference.posterior(name)
        assert mean[row] == pytest.approx(post.mean, rel=EXACT, abs=EXACT), name
        assert noise[row] == pytest.approx(post.noise, rel=EXACT), name
        assert sd[row] == pytest.approx(post.sd, rel=EXACT), name
        assert np.allclose(omega[row], post.omega, rtol=EXACT, atol=EXACT), name
        assert np.allclose(policy._arms.w[row], post.weights, rtol=1e-7, atol=EXACT), name


def assert_pmf_matches(
    params: HierarchicalParams,
    reference: ReferenceDefault,
    context: Context,
    specs: Sequence[ModelSpec],
    penalty: np.ndarray,
    pmf: np.ndarray,
    floors: np.ndarray | None = None,
) -> None:
    """`pmf` is the documented one: the quadrature of the reference's scores, exactly; exact Thompson, closely."""
    score, sd = reference.scores(context, specs, penalty)
    floors = np.zeros(len(specs)) if floors is None else floors
    quadrature = exploration.gaussian_argmax_pmf(score, params.exploration * sd, params.dominance, params.nodes)
    assert np.allclose(pmf, with_floors(quadrature, floors), rtol=0, atol=1e-12)
    thompson = reference.pmf(context, specs, penalty, dominance_sd_scale=params.exploration)
    assert np.abs(pmf - with_floors(thompson, floors)).max() <= THOMPSON


@pytest.mark.parametrize("params", SETTINGS, ids=["defaults", "other-settings"])
def test_the_policy_is_its_documented_math(params: HierarchicalParams) -> None:
    """The policy alone, 120 decisions and updates; qualities 0/1 mostly, some in between."""
    rng = np.random.default_rng(7)
    extractor = FeatureExtractor()
    policy = HierarchicalThompsonPolicy(params)
    reference = ReferenceDefault(params)
    truth = {s.name: rng.uniform(0.1, 0.95, 3) for s in MODELS}
    for _ in range(120):
        kind, text = prompt(rng)
        attributes = {"tenant": str(rng.choice(["x", "y"])), "size": float(rng.integers(0, 9))}
        context = extractor.extract(text, attributes=attributes if rng.random() < 0.3 else None)
        assert np.allclose(dense(context, params.dim), dense_vector(context, params.dim), rtol=0, atol=1e-12)
        specs = [s for s in MODELS if rng.random() < 0.7] or [MODELS[0]]
        costs = np.array([s.cost_usd(context.input_tokens, 250.0) for s in specs])
        penalty = float(rng.choice([0.0, 10.0, 100.0])) * costs
        pmf = policy.pmf(context, specs, penalty, rng)
        mean, sd = policy.predict(context, specs)
        ref_score, ref_sd = reference.scores(context, specs, penalty)
        assert np.allclose(mean - penalty, ref_score, rtol=EXACT, atol=EXACT)
        assert np.allclose(sd, ref_sd, rtol=EXACT, atol=0)
        assert_pmf_matches(params, reference, context, specs, penalty, pmf)
        arm = int(rng.choice(len(specs), p=pmf / pmf.sum()))
        model = specs[arm]
        quality = float(rng.random() < truth[model.name][kind]) if rng.random() < 0.8 else float(rng.random())
        policy.update(context, model, quality, float(pmf[arm]))
        reference.update(context, model, quality)
        assert_posteriors_match(policy, reference)


def test_the_router_routes_and_learns_as_documented() -> None:
    """The `Router` with the default policy: expected costs and λ, model subsets, three models added at run time
    (floors, and none for a new model its price dominates), `route` and `route_many`, output tokens learned, a
    snapshot restored into a new router halfway; the chosen model is the draw of the logged pmf."""
    params = HierarchicalParams()
    rng = np.random.default_rng(11)
    router = Router(MODELS[:4], HierarchicalThompsonPolicy(params), seed=3)
    uniforms = np.random.default_rng(3)  # the router's generator: one uniform per decision (Thompson sampler)
    reference = ReferenceDefault(params)
    truth = {s.name: rng.uniform(0.1, 0.95, 3) for s in MODELS + LATE}
    tokens: dict[str, list[float]] = {}
    floored = cut = 0
    for step in range(90):
        if step == 50:  # what a restart does: a new router loads the snapshot (the policy's caches start empty)
            restored = Router(MODELS[:1], HierarchicalThompsonPolicy(params), seed=0)
            restored.restore(router.snapshot())
            router = restored
        if step in (20, 45, 60):
            spec = LATE[(20, 45, 60).index(step)]
            router.add_model(spec)
            reference.see(spec, added=True)
        batch = []
        for _ in range(2 if step % 5 == 0 else 1):
            kind, text = prompt(rng)
            names = [m.name for m in router.models]
            subset = None if rng.random() < 0.6 else ([n for n in names if rng.random() < 0.7] or names[:1])
            batch.append((kind, Request(prompt=text, models=subset, cost_weight=float(rng.choice([0.0, 10.0, 100.0])))))
        requests = [r for _, r in batch]
        decisions = router.route_many(requests) if len(batch) > 1 else [router.route(requests[0])]
        for (_, request), decision in zip(batch, decisions, strict=True):
            assert not isinstance(decision, Exception)
            specs = [router.spec(n) for n in decision.models]
            context = decision.context
            costs = np.array([expected_cost(s, context.input_tokens, tokens.get(s.name, [])) for s in specs])
            assert np.allclose(decision.expected_cost_usd, costs, rtol=1e-12, atol=0)
            assert decision.cost_weight == request.cost_weight
            penalty = float(request.cost_weight or 0.0) * costs
            floors = reference.floors(context, specs, penalty)
            floored += int(floors.any())
            new = [i for i, s in enumerate(specs) if s.name == "dear-new"]
            cut += int(bool(new) and floors[new[0]] == 0.0 and reference.posterior("dear-new").sd > 0.3 * 0.5)
            assert_pmf_matches(params, reference, context, specs, penalty, np.array(decision.pmf), floors)
            assert decision.model == decision.models[draw(decision.pmf, float(uniforms.random()))]
        for (kind, _), decision in zip(batch, decisions, strict=True):
            assert not isinstance(decision, Exception)
            spec = router.spec(decision.model)
            quality = float(rng.random() < truth[spec.name][kind])
            output_tokens = int(rng.integers(10, 500))
            router.learn(decision, Outcome(quality=quality, output_tokens=output_tokens))
            tokens.setdefault(spec.name, []).append(output_tokens)
            reference.update(decision.context, spec, quality)
            assert isinstance(router.policy, HierarchicalThompsonPolicy)
            assert_posteriors_match(router.policy, reference)
    assert floored >= 5 and cut >= 3  # the floors were exercised, and the dominance that ends them


class Checked(HierarchicalThompsonPolicy):
    """The default policy, checking each pmf and update against the reference as the simulator calls it."""

    def __init__(self, params: HierarchicalParams) -> None:
        super().__init__(params)
        self.reference = ReferenceDefault(params)
        self.checked = 0

    def pmf(self, context: Context, models: Sequence[ModelSpec], penalty: np.ndarray, rng: Any) -> np.ndarray:
        out = super().pmf(context, models, penalty, rng)
        assert_pmf_matches(self.params, self.reference, context, models, penalty, out)
        self.checked += 1
        return out

    def update(self, context: Context, model: ModelSpec, quality: float, probability: float) -> None:
        super().update(context, model, quality, probability)
        self.reference.update(context, model, quality)
        assert_posteriors_match(self, self.reference)


@pytest.fixture(scope="module")
def small_world() -> Workspace:
    """The synthetic tuning world (16 models, Bernoulli qualities), 100 steps, two seeds, λ = 10."""
    env = EnvSpec.parse("synthetic:experiments/learning-efficiency/worlds/tuning.toml")
    workspace = Workspace(Plan(env=env, policies=("default",), cost_weights=(10.0,), seeds=(0, 1), steps=100))
    workspace.prepare()
    return workspace


def test_the_simulator_drives_the_documented_math(small_world: Workspace) -> None:
    """`RouterAgent.run` (what `simulate` runs) with the default policy, checked at every pmf and update."""
    policies: list[Checked] = []

    def factory(seed: int) -> Checked:
        policies.append(Checked(HierarchicalParams()))
        return policies[-1]

    episode = small_world.episode(0)
    trace = RouterAgent("default", factory).run(episode, small_world.env, 10.0, 0)
    assert policies[0].checked == episode.n_steps
    assert len(np.unique(trace.chosen)) >= 3


def test_the_simulators_regret_metrics_are_their_definitions(small_world: Workspace) -> None:
    """Regret per request against the best fixed model in hindsight (whole stream, second half) and the break-even
    step of `summarize_run`, computed again with loops over the trace; the summary record's mean and median."""
    plan = small_world.plan
    runs = []
    lam = plan.cost_weights[0]
    for seed in plan.seeds:
        episode = small_world.episode(seed)
        trace = small_world.agent("default").run(episode, small_world.env, lam, seed)
        run = summarize_run(Task("default", lam, seed), episode, trace, plan, small_world.blended)
        runs.append(run)
        n, k = episode.quality.shape
        assert episode.available.all()
        got = []
        for t in range(n):
            chosen = int(trace.chosen[t])
            assert trace.quality[t] == episode.quality[t, chosen] and trace.cost_usd[t] == episode.cost_usd[t, chosen]
            got.append(trace.quality[t] - lam * trace.cost_usd[t])
        totals = [math.fsum(episode.quality[t, m] - lam * episode.cost_usd[t, m] for t in range(n)) for m in range(k)]
        best = max(range(k), key=totals.__getitem__)
        fixed = [episode.quality[t, best] - lam * episode.cost_usd[t, best] for t in range(n)]
        assert run.best_fixed == episode.model_names[best]
        half = n // 2
        assert run.regret_per_request == pytest.approx((math.fsum(fixed) - math.fsum(got)) / n, abs=1e-12)
        second = (math.fsum(fixed[half:]) - math.fsum(got[half:])) / (n - half)
        assert run.regret_per_request_second_half == pytest.approx(second, abs=1e-12)
        behind = [math.fsum(fixed[: t + 1]) - math.fsum(got[: t + 1]) > 1e-9 for t in range(n)]
        expected = next((t + 1 for t in range(n) if not any(behind[t:])), None)
        assert run.break_even_step == expected
    summary = record(runs)
    assert summary["regret_per_request"] == pytest.approx(float(np.mean([r.regret_per_request for r in runs])))
    steps = [math.inf if r.break_even_step is None else r.break_even_step for r in runs]
    median = float(np.median(steps))
    assert summary["break_even_step"] == (median if math.isfinite(median) else None)


def test_break_even_is_the_first_step_from_which_the_policy_is_never_behind() -> None:
    rng = np.random.default_rng(5)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        curve = np.cumsum(rng.choice([-1.0, 0.0, 1.0], size=n))
        expected = next((t + 1 for t in range(n) if all(x <= 0 for x in curve[t:])), None)
        assert M.break_even_step(curve) == expected
        assert M.regret_per_step(curve, start=n // 2) == pytest.approx(
            (curve[-1] - (curve[n // 2 - 1] if n // 2 else 0.0)) / (n - n // 2)
        )


def test_the_quadrature_is_within_its_stated_error_of_thompson_sampling() -> None:
    """`gaussian_argmax_pmf` (16 nodes) against an accurate integral and Monte Carlo draws, on random arms whose
    sds span 0.003–0.5: within 0.012 of the integral (measured ≤ 0.0113 on 300 configurations), and within that
    plus 5 Monte Carlo standard errors of the share of 200,000 draws; arms cut by the dominance rule have a
    Thompson probability below Φ(−β) = 0.00135 against their dominator."""
    rng = np.random.default_rng(1)
    for _ in range(12):
        k = int(rng.integers(2, 10))
        mean = rng.uniform(0.2, 0.9, k)
        sd = np.exp(rng.uniform(math.log(0.003), math.log(0.5), k))
        pmf = exploration.gaussian_argmax_pmf(mean, sd)
        alive = pmf > 0
        exact = np.zeros(k)
        exact[alive] = thompson_pmf(mean[alive], sd[alive])
        assert np.abs(pmf - exact).max() <= THOMPSON
        draws = mean + sd * rng.standard_normal((200_000, k))
        shares = np.bincount(draws.argmax(axis=1), minlength=k) / len(draws)
        assert np.abs(pmf - shares).max() <= THOMPSON + 5 * math.sqrt(0.25 / len(draws))
        assert shares[~alive].sum() <= 0.00135 * k + 5 * math.sqrt(0.00135 / len(draws))
