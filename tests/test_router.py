"""Router behaviour: models at run time, cold start, thread safety, errors."""

from __future__ import annotations

import contextlib
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from toy_world import MODELS, ToyWorld

from bandit_router.budgets import BudgetConfig
from bandit_router.catalog import ModelSpec
from bandit_router.errors import InvalidInput, UnknownModel
from bandit_router.policies import CONTEXTUAL, make_policy
from bandit_router.router import Router
from bandit_router.state import pack, unpack
from bandit_router.types import Decision, Outcome, Request


def train(router: Router, world: ToyWorld, rounds: int) -> None:
    for _ in range(rounds):
        kind, request = world.request()
        decision = router.route(request)
        router.learn(decision, world.outcome(kind, decision.model, decision.context.input_tokens))


def test_unknown_and_retired_models_are_rejected() -> None:
    router = Router(MODELS, "random", seed=0)
    with pytest.raises(UnknownModel, match="nope"):
        router.route(Request(prompt="x", models=("nope",)))
    router.retire_model("cheap")
    assert "cheap" not in [m.name for m in router.models]
    with pytest.raises(UnknownModel, match="cheap"):
        router.route(Request(prompt="x", models=("cheap",)))
    with pytest.raises(UnknownModel):
        router.retire_model("cheap")
    with pytest.raises(InvalidInput, match="already"):
        router.add_model(MODELS[1])
    with pytest.raises(InvalidInput, match="decision_id"):
        router.route(Request(prompt="x", decision_id="x" * 65))


def test_feedback_for_a_retired_model_is_still_learned() -> None:
    router = Router(MODELS, "linucb", seed=0)
    decision = router.route(Request(prompt="hello", models=("writer",)))
    router.retire_model("writer")
    router.learn(decision, Outcome(quality=1.0))
    assert router.feedback_counts()["writer"] == 1


@pytest.mark.parametrize("policy", ["vw-squarecb", "linucb", "thompson"])
def test_new_model_is_explored_at_once(policy: str) -> None:
    world = ToyWorld(seed=1)
    router = Router(MODELS, policy, seed=1)
    train(router, world, 1500)
    router.add_model(ModelSpec("coder-2", 1.0, 4.0, {"family": "code", "tier": "medium"}))
    chosen = [router.route(world.request()[1]) for _ in range(200)]
    probabilities = [d.probabilities["coder-2"] for d in chosen]
    assert min(probabilities) >= router.cold_start_floor / 2  # the floor is capped at 0.5 / (number of cold models)
    assert sum(d.model == "coder-2" for d in chosen) >= 10


def test_new_model_starts_from_what_similar_models_taught() -> None:
    """VW shares weights through family/tier features: a new 'code' model inherits coder's strength on code."""
    world = ToyWorld(seed=2)
    router = Router(MODELS, "vw-greedy", seed=2)
    train(router, world, 3000)
    twin = ModelSpec("coder-2", 1.0, 4.0, {"family": "code", "tier": "medium"})
    stranger = ModelSpec("other", 1.0, 4.0, {"family": "unknown", "tier": "unknown"})
    router.add_model(twin)
    router.add_model(stranger)
    policy = router.policy
    q_twin, q_stranger = [], []
    for _ in range(100):
        kind, request = world.request()
        if kind != "code":
            continue
        q = policy.quality(router.featurize(request), [twin, stranger])  # type: ignore[attr-defined]
        q_twin.append(q[0])
        q_stranger.append(q[1])
    assert np.mean(q_twin) > np.mean(q_stranger) + 0.2


def test_linear_policy_new_model_gets_family_prior() -> None:
    world = ToyWorld(seed=4)
    router = Router(MODELS, "linucb", seed=4)
    train(router, world, 2000)
    router.add_model(ModelSpec("coder-2", 1.0, 4.0, {"family": "code", "tier": "medium"}))
    context = router.featurize(Request(prompt="python def sort list loop bug return"))
    mean, _ = router.policy.mean_and_width(context, [router.spec("coder"), router.spec("coder-2")])  # type: ignore[attr-defined]
    assert mean[1] == pytest.approx(mean[0], abs=1e-9)


@pytest.mark.parametrize("policy", [*CONTEXTUAL, "thompson"])
def test_concurrent_route_and_learn_lose_nothing(policy: str) -> None:
    router = Router(MODELS, make_policy(policy), seed=5)
    errors: list[BaseException] = []

    def client(seed: int) -> None:
        world = ToyWorld(seed=seed)
        try:
            for _ in range(150):
                kind, request = world.request()
                decision = router.route(request)
                router.learn(decision, world.outcome(kind, decision.model, decision.context.input_tokens))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert router.version == 600
    assert sum(router.feedback_counts().values()) == 600


@pytest.mark.parametrize("policy", ["thompson", "default:sampler=ids"])
def test_pmf_now_draws_as_a_fresh_seed_0_generator_would_without_making_one_per_call(
    policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A policy whose pmf samples gets, on every `pmf_now`, the draws of `np.random.default_rng(0)` (the same
    context, the same pmf, asked twice or after other contexts), from one generator the router keeps: no
    generator is made per call (it was, one per context of every dashboard poll)."""
    world = ToyWorld(seed=3)
    router = Router(MODELS, policy, seed=5)
    train(router, ToyWorld(seed=3), 200)
    contexts = [router.featurize(world.request()[1]) for _ in range(5)]
    with router._lock:  # what pmf_now gave before: the policy's pmf on a fresh default_rng(0), floored
        expected = []
        for context in contexts:
            priced = router._price(context, None, None)
            pmf = router.policy.pmf(context, priced.specs, priced.penalty, np.random.default_rng(0))
            expected.append(dict(zip(priced.names, router._floored(context, priced, pmf), strict=True)))
    made = []
    generator = np.random.Generator
    monkeypatch.setattr(np.random, "Generator", lambda *a: made.append(a) or generator(*a))
    monkeypatch.setattr(np.random, "default_rng", lambda *a: made.append(a) or generator(np.random.PCG64(*a)))
    for _ in range(2):
        assert [router.pmf_now(c) for c in contexts] == expected
    assert made == []


@pytest.mark.parametrize("policy", ["default", "default:sampler=ids", "linucb", "thompson", "vw-squarecb"])
def test_pmf_now_is_the_pmf_decide_would_draw_from_and_leaves_the_draws_alone(policy: str) -> None:
    """`pmf_now` (the dashboard's "probability now") gives a model added a moment ago its cold-start floor, as
    `route` does; where the policy's pmf does not sample, the very pmf `route` draws from; and asking it between
    two routes changes no decision (the router's generator is not drawn from)."""
    world = ToyWorld(seed=2)
    asked, control = Router(MODELS, policy, seed=5), Router(MODELS, policy, seed=5)
    for router in (asked, control):
        train(router, ToyWorld(seed=2), 300)
        router.add_model(ModelSpec("coder-2", 1.0, 4.0, {"family": "code", "tier": "medium"}))
    for _ in range(50):
        request = world.request()[1]
        now = asked.pmf_now(asked.featurize(request))
        assert set(now) == {m.name for m in asked.models} and sum(now.values()) == pytest.approx(1.0)
        assert now["coder-2"] >= asked.cold_start_floor / 2
        mine, theirs = asked.route(request), control.route(request)
        assert (mine.model, mine.pmf) == (theirs.model, theirs.pmf)
        if policy in ("default", "linucb", "vw-squarecb"):
            assert now == pytest.approx(mine.probabilities, abs=1e-12)


def test_router_sampling_is_seeded() -> None:
    a = Router(MODELS, "random", seed=42)
    b = Router(MODELS, "random", seed=42)
    picks_a = [a.route(Request(prompt="x")).model for _ in range(50)]
    picks_b = [b.route(Request(prompt="x")).model for _ in range(50)]
    assert picks_a == picks_b
    assert len(set(picks_a)) == len(MODELS)


def test_rules_policy_routes_by_markers_regex_and_context() -> None:
    rules = make_policy(
        "rules",
        rules=(
            {"model": "strong", "markers": ["code"]},
            {"model": "writer", "regex": "(?i)poem"},
            {"model": "coder", "context": {"task": "support"}},
            {"model": "strong", "min_tokens": 500},
        ),
        default="cheap",
    )
    router = Router(MODELS, rules, seed=0)
    assert router.route(Request(prompt="def f(): return 1")).model == "strong"
    assert router.route(Request(prompt="Write a POEM")).model == "writer"
    assert router.route(Request(prompt="hello", context={"task": "support"})).model == "coder"
    assert router.route(Request(prompt="word " * 1000)).model == "strong"
    assert router.route(Request(prompt="hello")).model == "cheap"
    # A rule whose model is not allowed is skipped.
    assert router.route(Request(prompt="def f(): pass", models=("writer", "coder"))).model in ("writer", "coder")


def test_a_rules_context_value_matches_only_a_value_of_its_type() -> None:
    """`context = { priority = 1 }` matched `"priority": true` (Python's `True == 1`), which the features keep
    apart; a number still matches the equal number of the other kind (JSON does not tell 1 from 1.0)."""
    rules = make_policy("rules", rules=({"model": "strong", "context": {"priority": 1}},
                                        {"model": "writer", "context": {"urgent": True}}), default="cheap")
    router = Router(MODELS, rules, seed=0)
    routed = {repr(context): router.route(Request(prompt="hi", context=context)).model
              for context in ({"priority": 1}, {"priority": 1.0}, {"priority": True}, {"priority": "1"},
                              {"urgent": True}, {"urgent": 1}, {"urgent": 1.0})}
    assert routed == {"{'priority': 1}": "strong", "{'priority': 1.0}": "strong", "{'priority': True}": "cheap",
                      "{'priority': '1'}": "cheap", "{'urgent': True}": "writer", "{'urgent': 1}": "cheap",
                      "{'urgent': 1.0}": "cheap"}


def test_supervised_policy_learns_offline_and_routes_by_prompt() -> None:
    from bandit_router.features import FeatureExtractor
    from bandit_router.policies.supervised import SupervisedPolicy

    world = ToyWorld(seed=9)
    fx = FeatureExtractor()
    contexts, qualities = [], []
    for _ in range(600):
        kind, request = world.request()
        contexts.append(fx(request))
        qualities.append([world.expected_quality(kind, m.name) for m in MODELS])
    policy = SupervisedPolicy().fit(contexts, [m.name for m in MODELS], np.array(qualities))
    router = Router(MODELS, policy, seed=0)
    assert router.route(Request(prompt="python def sort list loop bug", cost_weight=20)).model == "coder"
    assert router.route(Request(prompt="poem story ocean love summer", cost_weight=20)).model == "writer"


@pytest.mark.parametrize("spec", ["lints:v=0", "lints:v=0,shared=true,dim=32"])
def test_thompson_pmf_splits_exact_ties_evenly(spec: str) -> None:
    """With no posterior spread and equal penalties, every model ties: the pmf must not favour the first one."""
    router = Router(MODELS, spec, seed=0, cold_start_rounds=0)
    decision = router.route(Request(prompt="hello", cost_weight=0.0, models=("coder", "writer")))
    assert decision.pmf == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize("policy", ["default", "default:sampler=ids", "linucb", "thompson"])
@pytest.mark.parametrize("targets", [None, [], ["avg_cost_usd=0.0005"]])
def test_route_many_decides_as_route_one_after_the_other(policy: str, targets: list[str] | None) -> None:
    """`route_many` (the service decides an event-loop iteration's requests with it) gives the decisions, pmfs bit
    for bit, and the errors of one `route` per request in order, and leaves the router in the same state; the
    `default` policy with no or target-less budgets takes the stacked quadrature, the others (and its `ids`
    sampler, whose pmf draws from the router's generator) one route each."""
    from bandit_router.budgets import BudgetConfig, BudgetPacer

    def make() -> Router:
        pacer = None if targets is None else BudgetPacer(BudgetConfig.from_strings(targets), clock=lambda: 1.7e9)
        return Router(MODELS, policy, seed=5, pacer=pacer)

    batched, one_by_one = make(), make()
    world = ToyWorld(seed=3)
    rng = np.random.default_rng(0)
    compared = errors = 0
    for step in range(40):
        if step == 20:  # a model added at run time: the default policy's cold-start floors apply
            for router in (batched, one_by_one):
                router.add_model(ModelSpec(name="newcomer", input_usd_per_mtok=1.0, output_usd_per_mtok=2.0))
        requests = []
        for i in range(int(rng.integers(1, 12))):
            _, request = world.request()
            if i % 5 == 1:
                request = Request(prompt=request.prompt, models=[MODELS[0].name, MODELS[2].name], cost_weight=3.0)
            elif i % 7 == 2:
                request = Request(prompt="x", models=["no-such-model"])
            elif i % 11 == 3:
                request = Request(prompt="x", decision_id="d" * 65)
            requests.append(request)
        made = []
        for request, got in zip(requests, batched.route_many(requests), strict=True):
            try:
                expected = one_by_one.route(request)
            except (InvalidInput, UnknownModel) as exc:
                assert type(got) is type(exc) and str(got) == str(exc)
                errors += 1
                continue
            assert not isinstance(got, Exception)
            assert (got.model, got.arm, got.models, got.pmf, got.probability, got.cost_weight, got.policy_version,
                    got.expected_cost_usd) == (expected.model, expected.arm, expected.models, expected.pmf,
                                               expected.probability, expected.cost_weight, expected.policy_version,
                                               expected.expected_cost_usd)
            made.append((got, expected))
            compared += 1
        for got, expected in made[::2]:  # learned between batches, in the same order
            outcome = Outcome(quality=float(rng.random()), output_tokens=int(rng.integers(10, 400)))
            batched.learn(got, outcome)
            one_by_one.learn(expected, outcome)
    assert compared > 100 and errors > 5
    assert batched.snapshot() == one_by_one.snapshot()


def test_stacked_quadrature_equals_one_evaluation_per_pmf() -> None:
    """`gaussian_argmax_pmfs` returns each `gaussian_argmax_pmf` bit for bit (it stacked them in numpy; now one
    compiled call each): every model in play, some dominated, exact ties, zero and huge sds (an infinite one is
    refused by both: `test_exploration.py`), one model, several sizes and node counts."""
    from bandit_router.exploration import gaussian_argmax_pmf, gaussian_argmax_pmfs

    rng = np.random.default_rng(1)
    compared = 0
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(300):
            nodes, dominance = int(rng.choice([3, 5, 16])), float(rng.choice([1.0, 3.0]))
            means, sds = [], []
            for _ in range(int(rng.integers(1, 20))):
                k = int(rng.choice([1, 2, 3, 5, 8]))
                mean, sd = rng.uniform(0.2, 0.6, k), rng.uniform(0.0, 0.4, k)
                case = rng.random()
                if case < 0.1:
                    sd[rng.integers(k)] = 0.0
                elif case < 0.15:
                    sd[rng.integers(k)] = 1e300
                elif case < 0.3:
                    mean[:], sd[:] = mean[0], sd[0]
                elif case < 0.4:
                    mean[rng.integers(k)] += 2.0
                means.append(mean)
                sds.append(sd)
            for mean, sd, got in zip(means, sds, gaussian_argmax_pmfs(means, sds, dominance, nodes), strict=True):
                assert got.tobytes() == gaussian_argmax_pmf(mean, sd, dominance, nodes).tobytes()
                compared += 1
    assert compared > 2000


def test_the_service_decides_requests_that_arrive_together_as_one_by_one(tmp_path: Path) -> None:
    """Route requests that reach the engine in one event-loop iteration are decided together
    (`Engine._decide` → `Router.route_many`): each gets the decision that routing them one at a time, in the
    order they arrived, gives on an identical service (same seed, same models), a request with unknown models
    its own error and no other's, and every acknowledged decision is stored."""
    import asyncio

    from bandit_router.config import Settings
    from bandit_router.errors import BanditRouterError
    from bandit_router.service.engine import Engine
    from bandit_router.store import SQLiteStore

    prompts = [f"question {i}: " + "why is the sky blue " * (i % 7) for i in range(24)]
    requests = [Request(prompt=p, decision_id=f"d-{i}", models=["no-such-model"] if i == 5 else None)
                for i, p in enumerate(prompts)]

    def serve(name: str, together: bool) -> list[tuple[str, tuple[float, ...]] | str]:
        settings = Settings(db=tmp_path / f"{name}.db", models=MODELS, seed=7)
        store = SQLiteStore(settings.storage.db)
        store.prepare()
        engine = Engine(settings, store)
        engine.start()
        try:
            assert engine.wait_ready(10)

            async def route(request: Request) -> tuple[str, tuple[float, ...]] | str:
                try:
                    d = await engine.route(request)
                except BanditRouterError as exc:
                    return type(exc).__name__
                assert engine.decision(d.decision_id)[0].decision.pmf == d.pmf  # stored before the reply
                return d.model, d.pmf

            async def all_of_them() -> list[tuple[str, tuple[float, ...]] | str]:
                if together:
                    return list(await asyncio.gather(*(route(r) for r in requests)))
                return [await route(r) for r in requests]

            return asyncio.run(all_of_them())
        finally:
            engine.stop()

    together, one_by_one = serve("together", True), serve("one-by-one", False)
    assert together == one_by_one
    assert together[5] == "UnknownModel" and len({m for m in together if isinstance(m, tuple)}) > 1


@pytest.mark.parametrize("policy", ["default", "linucb", "thompson"])
def test_a_snapshot_that_does_not_load_is_refused_and_changes_nothing(policy: str) -> None:
    """Bytes that are not a snapshot, or a snapshot whose parts are damaged, raise `InvalidInput` (they raised
    KeyError or TypeError, and a damaged cost model left the policy restored and the counts not: half a router)."""
    def trained(seed: int) -> Router:
        router = Router(list(MODELS), policy=policy, seed=seed)
        for i in range(40):
            router.learn(router.route(Request(prompt=f"question {i}")), Outcome(quality=(i % 5) / 4))
        return router

    other = unpack(trained(2).snapshot())
    router, twin = trained(1), trained(1)
    damaged = [
        b"garbage",
        pack({"x": 1}),
        pack({**other, "cost_model": "nonsense"}),
        pack({**other, "rng": {"bit_generator": "PCG64"}}),
        pack({**other, "policy": {"arms": "nonsense"}}),
    ]
    for data in damaged:
        with pytest.raises(InvalidInput):
            router.restore(data)
    assert np.array_equal(router.weights(), twin.weights()) and router.version == twin.version
    assert router.snapshot() == twin.snapshot()
    prompts = [Request(prompt=f"after {i}") for i in range(20)]
    assert [router.route(r).pmf for r in prompts] == [twin.route(r).pmf for r in prompts]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"cold_start_floor": float("nan")}, "cold_start_floor must be a number in [0, 0.5], got nan"),
        ({"cold_start_floor": 2.0}, "cold_start_floor must be a number in [0, 0.5], got 2.0"),
        ({"cold_start_floor": -0.1}, "cold_start_floor must be a number in [0, 0.5], got -0.1"),
        ({"cold_start_rounds": -5}, "cold_start_rounds must be an integer >= 0, got -5"),
        ({"cold_start_rounds": 2.5}, "cold_start_rounds must be an integer >= 0, got 2.5"),
        ({"seed": -1}, "seed must be None or an integer >= 0, got -1"),
        ({"seed": "abc"}, "seed must be None or an integer >= 0, got 'abc'"),
    ],
)
def test_a_router_refuses_bad_settings_naming_them(settings: dict[str, object], message: str) -> None:
    """A NaN cold-start floor made every pmf NaN, which the router's clean-up silently turned uniform (linucb routed
    at random); a floor of 2 or a negative count was taken; a negative seed was numpy's ValueError."""
    with pytest.raises(InvalidInput) as raised:
        Router(list(MODELS), policy="linucb", **settings)  # type: ignore[arg-type]
    assert str(raised.value) == message
    edges = Router(list(MODELS), "linucb", seed=np.int64(3), cold_start_rounds=np.int64(0), cold_start_floor=0.5)
    assert sum(edges.route(Request(prompt="hello")).pmf) == pytest.approx(1.0)


def test_learn_keeps_no_record_of_decisions_as_documented() -> None:
    """docs/library.md: learning one decision twice counts it twice, a decision whose model was retired since is
    still learned, and one whose model is not in the catalog raises UnknownModel and changes nothing."""
    router = Router(list(MODELS), policy="linucb", seed=1)
    decision = router.route(Request(prompt="hello"))
    router.learn(decision, Outcome(quality=1.0))
    router.learn(decision, Outcome(quality=1.0))
    assert router.version == 2 and router.feedback_counts() == {decision.model: 2}
    router.retire_model(decision.model)
    router.learn(decision, Outcome(quality=0.0))
    assert router.version == 3 and router.feedback_counts() == {decision.model: 3}
    stranger = Router([ModelSpec("elsewhere", 1.0, 1.0)], seed=1).route(Request(prompt="hello"))
    before = router.snapshot()
    with pytest.raises(UnknownModel, match="elsewhere"):
        router.learn(stranger, Outcome(quality=1.0))
    assert router.snapshot() == before


@pytest.mark.parametrize(("size", "shape"), [(-1, "(2,)"), (1, "(4,)"), (0, "(3, 1)")])
def test_a_policy_pmf_of_the_wrong_shape_is_the_policy_s_error_not_the_caller_s(size: int, shape: str) -> None:
    """A custom policy (docs/add-a-policy.md) whose pmf has the wrong number of entries failed in `Decision` with
    `InvalidInput` (which the service answers with 422, blaming the caller) or, 2-d, a TypeError deep in the
    clean-up; it is a ValueError naming the policy and the shapes."""
    from bandit_router.policies.base import BasePolicy

    class Broken(BasePolicy):
        name = "broken"
        explores = False

        def pmf(self, context: object, models: object, penalty: np.ndarray, rng: object) -> np.ndarray:
            k = len(penalty)
            return np.full((k, 1), 1 / k) if size == 0 else np.full(k + size, 1 / (k + size))

    router = Router(list(MODELS)[:3], policy=Broken(), seed=1)
    with pytest.raises(ValueError) as raised:
        router.route(Request(prompt="hello"))
    assert not isinstance(raised.value, InvalidInput)
    assert str(raised.value) == f"policy 'broken' gave a pmf of shape {shape} for 3 models"


def test_a_model_name_where_a_spec_belongs_is_invalid_input() -> None:
    """`Router(["gpt-4o"])` and `add_model("gpt-4o")` failed with AttributeError ('str' has no 'name')."""
    with pytest.raises(InvalidInput, match=r"models must be ModelSpecs .* not the name 'gpt-4o'"):
        Router(["gpt-4o"])  # type: ignore[list-item]
    router = Router(list(MODELS), seed=1)
    with pytest.raises(InvalidInput, match="not the name 'gpt-4o'"):
        router.add_model("gpt-4o")  # type: ignore[arg-type]
    assert [m.name for m in router.models] == [m.name for m in MODELS]


@pytest.mark.parametrize(("kwargs", "message"), [
    # taken, and the first route failed: "'NoneType' object has no attribute 'pmf'"
    ({"policy": None}, r"policy must be a policy spec .* or a Policy \(make_policy\(...\)\), got NoneType"),
    ({"policy": 3}, "policy must be a policy spec .* got int"),
    # taken, and the first learn failed: "'dict' object has no attribute 'latency_weight'"
    ({"reward_config": {"cost_weight": 5.0}}, r"reward_config must be a RewardConfig \(RewardConfig\(cost_weight"),
    # taken, and the first route failed: "'BudgetConfig' object has no attribute 'adjust'"
    ({"pacer": BudgetConfig()}, r"pacer must be a budget pacer \(BudgetPacer\(config\)\), got BudgetConfig"),
    # read letter by letter ("not the name 'g'") or key by key
    ({"models": "gpt-4o"}, "models must be a list of ModelSpecs .* got str 'gpt-4o'"),
    ({"models": {"a": MODELS[0]}}, "models must be a list of ModelSpecs .* got dict$"),
    # "'dict' object has no attribute 'name'"
    ({"models": [{"name": "a", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}]},
     r"ModelSpec.from_json\(entry\)\), got dict"),
])
def test_a_router_argument_of_the_wrong_type_is_invalid_input(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Router(**{"models": list(MODELS), **kwargs})


def test_one_absurd_output_token_count_does_not_price_a_model_out_for_good() -> None:
    """One feedback of 10¹⁵ output tokens made the strong model's expected cost $10¹⁰ per request: it was never
    chosen again, so the estimate was never corrected. A feedback's tokens now count at most 10× the estimate in the
    learned mean (`reward.OUTLIER_FACTOR`): the estimate rises ≤ (w + 10)/(w + 1)-fold, the model keeps being
    chosen, and normal answers bring the estimate back. Seeded; the margins are wide (it wins ≈ all rounds)."""
    strong, weak = ModelSpec("strong", 2.5, 10.0), ModelSpec("weak", 0.15, 0.6)
    quality = {"strong": 0.9, "weak": 0.4}
    router = Router([strong, weak], "default", seed=5)
    rng = np.random.default_rng(5)

    def rounds(n: int) -> int:
        chosen = 0
        for _ in range(n):
            decision = router.route(Request(prompt="Refactor this Python class"))
            chosen += decision.model == "strong"
            q = float(np.clip(quality[decision.model] + rng.normal(0, 0.05), 0, 1))
            router.learn(decision, Outcome(quality=q, output_tokens=int(rng.integers(200, 300))))
        return chosen

    assert rounds(100) > 80
    before = router.cost_model.output_tokens.estimate(strong)
    absurd = router.route(Request(prompt="Refactor this Python class", models=("strong",)))
    reward = router.learn(absurd, Outcome(quality=0.9, output_tokens=10**15))
    assert reward == pytest.approx(0.9 - 20 * 10**15 * 10.0 / 1e6, rel=1e-6)  # the realised cost is what was reported
    w = 5 + router.feedback_counts()["strong"] - 1
    after = router.cost_model.output_tokens.estimate(strong)
    assert before < after <= before * (w + 10) / (w + 1) * (1 + 1e-12)
    assert rounds(200) > 160
    assert router.cost_model.output_tokens.estimate(strong) < 1.5 * before


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("fixed:nope",
         "policy 'fixed:nope' names the model 'nope', which is not in the catalog; its models: a, b, judge"),
        (make_policy("fixed", model="nope"), "policy 'fixed:nope' names the model 'nope', which is not in the catalog"),
        ("fixed:judge", "policy 'fixed:judge' names the model 'judge', which has route = false"),
    ],
)
def test_a_fixed_policy_naming_no_routable_catalog_model_is_refused_where_the_router_is_built(
    policy: object, message: str
) -> None:
    """`Router(models, "fixed:nope")` routed every request to the cheapest model without a word; it raises
    (`UnknownModel`, a `ValueError`) naming the model and the catalog's models. A fixed model that a request does
    not allow, or that was retired since, still gives the cheapest allowed model (documented). The library's
    message says nothing of the service (it told a library user that a model added by POST /v1/models must also be
    in the catalog file: the service's start adds that)."""
    models = [ModelSpec("a", 1.0, 1.0), ModelSpec("b", 5.0, 5.0), ModelSpec("judge", 0.1, 0.1, route=False)]
    with pytest.raises(InvalidInput, match=f"^{re.escape(message)}") as refused:
        Router(models, policy)  # type: ignore[arg-type]
    assert "POST" not in str(refused.value) and "catalog file" not in str(refused.value)
    router = Router(models, "fixed:b", seed=0)
    assert router.route(Request(prompt="x")).model == "b"
    assert router.route(Request(prompt="x", models=("a",))).model == "a"
    router.retire_model("b")
    assert router.route(Request(prompt="x")).model == "a"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rules": ({"model": "a", "max_chars": 100}, {"model": "nope", "markers": ["code"], "min_tokens": 5})},
         "policy 'rules': rule 2 (min_tokens = 5, markers = ['code']) names the model 'nope', which is not in the "
         "catalog; its models: a, b, judge"),
        ({"rules": ({"model": "judge", "context": {"task": "x"}},)},
         "policy 'rules': rule 1 (context = {'task': 'x'}) names the model 'judge', which has route = false"),
        ({"default": "bb"}, "policy 'rules': default names the model 'bb', which is not in the catalog"),
        ({"default": "judge"}, "policy 'rules': default names the model 'judge', which has route = false"),
    ],
)
def test_a_rules_policy_naming_no_routable_catalog_model_is_refused_where_the_router_is_built(
    settings: dict[str, Any], message: str
) -> None:
    """A rule whose model is not a routable catalog model never decided (it was skipped), and a default outside
    the catalog gave the cheapest model, without a word; `Router` raises naming the rule (its number and
    conditions) and the model, as for a fixed policy. A rule whose model a request does not allow, or that was
    retired since, is skipped: the next rule, then the default, then the cheapest allowed model decides."""
    models = [ModelSpec("a", 1.0, 1.0), ModelSpec("b", 5.0, 5.0), ModelSpec("judge", 0.1, 0.1, route=False)]
    with pytest.raises(InvalidInput, match=f"^{re.escape(message)}"):
        Router(models, make_policy("rules", **settings))
    rules = ({"model": "b", "markers": ["code"]}, {"model": "a", "markers": ["code"]})
    router = Router(models, make_policy("rules", rules=rules, default="b"), seed=0)
    code = "Fix this Python function: def mean(xs): return sum(xs) / len(x)"
    assert [router.route(Request(prompt=p)).model for p in (code, "hi")] == ["b", "b"]
    assert router.route(Request(prompt=code, models=("a",))).model == "a"
    router.retire_model("b")
    assert [router.route(Request(prompt=p)).model for p in (code, "hi")] == ["a", "a"]


_EVENTS = st.lists(st.tuples(st.sampled_from(["add", "retire"]), st.sampled_from("abcde"), st.integers(1, 9)),
                   max_size=30)


@settings(max_examples=200, deadline=None)
@given(_EVENTS)
def test_the_live_catalog_holds_the_models_a_router_holds_after_the_same_model_events(
    events: list[tuple[str, str, int]],
) -> None:
    """The service checks its configuration against `live_catalog(catalog, stored events)` before it builds its
    routers, which start from the catalog and apply the same events (`PolicySet.apply`, an event a router refuses
    is not applied): both must end with the same active models, in the same order with the same specs, and the
    same retired ones."""
    from bandit_router.log.catalog import live_catalog
    from bandit_router.store import ModelAction, ModelEvent

    catalog = [ModelSpec("a", 1.0, 1.0), ModelSpec("b", 2.0, 2.0, route=False)]
    stored = [ModelEvent(i, 0, ModelAction(action), name, ModelSpec(name, price, price) if action == "add" else None,
                         0.0) for i, (action, name, price) in enumerate(events, 1)]
    router = Router(catalog, "random", seed=0)
    for event in stored:
        with contextlib.suppress(InvalidInput):  # not applied, as `PolicySet.apply` does not apply it
            router.add_model(event.spec) if event.spec is not None else router.retire_model(event.name)
    live = live_catalog(catalog, stored)
    assert live.active == router.models
    assert live.retired == tuple(ModelSpec.from_json(m) for m in unpack(router.snapshot())["retired"])


def test_a_snapshot_records_the_policy_settings_and_refuses_other_ones() -> None:
    """`Router(models, make_policy("linucb", alpha=3))` snapshotted under the name `linucb`, and restoring it into a
    plain `linucb` router (alpha 0.5) succeeded silently: the restored router explored with another alpha. A
    snapshot records the policy's settings; a router whose policy has other ones refuses it naming them, and the
    same settings given either way (spec string or keywords) restore."""
    models = [ModelSpec("a", 1.0, 1.0), ModelSpec("b", 5.0, 5.0)]
    trained = Router(models, make_policy("linucb", alpha=3), seed=2)
    for i in range(10):
        decision = trained.route(Request(prompt=f"question {i}"))
        trained.learn(decision, Outcome(quality=0.1 * i))
    snapshot = trained.snapshot()
    assert unpack(snapshot)["policy_settings"]["alpha"] == 3
    plain = Router(models, "linucb")
    before = plain.snapshot()
    with pytest.raises(InvalidInput, match=re.escape(
        "snapshot is of policy 'linucb' with alpha=3; this router's 'linucb' has alpha=0.5: build the router with "
        "the snapshot's settings (make_policy('linucb', alpha=3))"
    )):
        plain.restore(snapshot)
    assert plain.snapshot() == before
    with pytest.raises(InvalidInput, match="this router runs 'lints'"):
        Router(models, make_policy("lints")).restore(snapshot)
    for same in ("linucb:alpha=3", make_policy("linucb", alpha=3.0)):
        twin = Router(models, same)  # type: ignore[arg-type]
        twin.restore(snapshot)
        assert np.array_equal(twin.weights(), trained.weights()) and twin.version == 10


def test_a_snapshot_from_before_settings_were_recorded_loads_as_before() -> None:
    """`tests/data/egreedy_snapshot_before_settings.npz` was made at commit b25d2f1 (no `policy_settings`): it
    restores into a router whose policy has the same name, whatever its settings, as it did, and is refused by
    another policy."""
    from bandit_router.catalog import default_catalog

    data = (Path(__file__).parent / "data" / "egreedy_snapshot_before_settings.npz").read_bytes()
    assert "policy_settings" not in unpack(data)
    for policy in ("egreedy", make_policy("egreedy", epsilon=0.3)):
        router = Router(list(default_catalog())[:1], policy)  # type: ignore[arg-type]
        router.restore(data)
        assert router.version == 12 and [m.name for m in router.models] == [
            "gpt-4.1-nano", "gpt-4o-mini", "llama-3.1-8b-instruct"
        ]
        assert router.feedback_counts() == {"llama-3.1-8b-instruct": 8, "gpt-4.1-nano": 3, "gpt-4o-mini": 1}
        assert router.weights().tolist() == [3.0, 0.75, 0.3125, 1.0, 0.25, 0.0625, 8.0, 3.5, 2.25]
        assert "policy_settings" in unpack(router.snapshot())  # a new snapshot records them
    with pytest.raises(InvalidInput, match="snapshot is of policy 'egreedy', this router runs 'ucb1'"):
        Router(list(default_catalog())[:1], "ucb1").restore(data)


def test_a_snapshot_from_before_a_setting_was_added_or_removed_still_restores() -> None:
    """A snapshot records every setting of its policy's params; a later version that adds a setting (with a default
    that keeps the earlier behaviour) or removes one must still load the snapshots, and the service's checkpoints,
    of the version before (their fingerprint covers only the configured settings: refused, they cost a full replay
    at each such upgrade). A setting the snapshot does not record counts as its default; one the policy no longer
    has is not compared; a recorded setting that differs is still refused. Simulated by editing the recorded keys."""
    models = [ModelSpec("a", 1.0, 1.0), ModelSpec("b", 5.0, 5.0)]
    trained = Router(models, "default", seed=2)
    for i in range(10):
        decision = trained.route(Request(prompt=f"question {i}"))
        trained.learn(decision, Outcome(quality=0.1 * i))
    tree = unpack(trained.snapshot())
    del tree["policy_settings"]["mix"]  # taken before `mix` existed
    tree["policy_settings"]["retired_setting"] = 7  # taken while a setting since removed existed
    older = pack(tree)
    twin = Router(models, "default")
    twin.restore(older)
    assert twin.version == 10 and np.array_equal(twin.weights(), trained.weights())
    with pytest.raises(InvalidInput, match=re.escape("with mix=0.02; this router's 'default' has mix=0.5")):
        Router(models, make_policy("default", mix=0.5)).restore(older)  # not the default the snapshot had


@pytest.mark.parametrize(
    "policy",
    ["default", "default:sampler=ids", "lints", "thompson", "egreedy", "vw-squarecb", "vw-softmax:temperature=0.2"],
)
def test_each_model_is_chosen_as_often_as_its_logged_probabilities_say(policy: str) -> None:
    """The logged probability is the one the model was drawn with: over 3,006 decisions from a frozen state (trained,
    a model added at run time under its cold-start floor, requests that restrict the models or set their own λ), the
    number of times each model was chosen minus the sum of the probabilities it was logged with is within 4.5
    standard deviations, √Σ p(1 − p) (a martingale: valid for pmfs that differ per decision, Monte-Carlo ones too);
    a model whose Σ p(1 − p) is below 1 is chosen at most Σ p + 4 times. And `probability` is `pmf` at the model.
    Half the batches go through `route_many`, the service's path (the default policy's stacked quadrature)."""
    world = ToyWorld(seed=4)
    router = Router(MODELS, policy, seed=5)
    train(router, world, 200)
    router.add_model(ModelSpec("coder-2", 1.0, 4.0, {"family": "code", "tier": "medium"}))
    requests = [world.request()[1] for _ in range(6)]
    requests += [Request(prompt="sort a python list", models=("cheap", "coder", "coder-2")),
                 Request(prompt="a poem about the ocean", cost_weight=0.0),
                 Request(prompt="fix this bug", models=("writer", "strong"), cost_weight=1000.0)]  # fmt: skip
    chosen: dict[str, int] = {}
    mass: dict[str, float] = {}
    spread: dict[str, float] = {}
    decisions: list[Decision | Exception] = []
    for batch in range(334):  # 3,006 decisions, every other batch through the service's batched path
        decisions += router.route_many(requests) if batch % 2 else [router.route(r) for r in requests]
    for decision in decisions:
        assert isinstance(decision, Decision), decision
        assert decision.probability == decision.pmf[decision.models.index(decision.model)]
        chosen[decision.model] = chosen.get(decision.model, 0) + 1
        for model, p in zip(decision.models, decision.pmf, strict=True):
            mass[model] = mass.get(model, 0.0) + p
            spread[model] = spread.get(model, 0.0) + p * (1.0 - p)
    assert set(chosen) <= set(mass)
    for model in mass:
        count = chosen.get(model, 0)
        if spread[model] >= 1.0:
            assert abs(count - mass[model]) < 4.5 * spread[model] ** 0.5, (model, count, mass[model])
        else:
            assert count <= mass[model] + 4, (model, count, mass[model])


def test_a_restored_snapshot_calls_its_models_as_the_routers_catalog_says() -> None:
    """A snapshot keeps what was learned; where and how a model is called (the upstream keys, `judge_params`) and
    its description come from the catalog the restoring router was built with, so that an edited catalog file
    reaches the named routers' judge and routing LLM after a restart (they read `Router.spec`)."""
    old = [ModelSpec("a", 1.0, 2.0, base_url="http://127.0.0.1:1/v1", description="old",
                     judge_params={"max_tokens": 111}), ModelSpec("b", 1.0, 2.0)]
    router = Router(old, "default", seed=0)
    for _ in range(20):
        router.learn(router.route(Request(prompt="hi")), Outcome(quality=0.5))
    new = [ModelSpec("a", 1.0, 2.0, base_url="http://127.0.0.1:2/v1", description="new",
                     judge_params={"max_completion_tokens": 999}), ModelSpec("b", 1.0, 2.0)]
    restored = Router(new, "default", seed=0)
    restored.restore(router.snapshot())
    spec = restored.spec("a")
    assert (spec.base_url, spec.description, dict(spec.judge_params or {})) == (
        "http://127.0.0.1:2/v1", "new", {"max_completion_tokens": 999})
    assert restored.version == router.version and restored.feedback_counts() == router.feedback_counts()
    np.testing.assert_array_equal(restored.weights(), router.weights())
