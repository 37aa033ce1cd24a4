"""The contract every registered policy keeps, run over the whole registry."""

from __future__ import annotations

import numpy as np
import pytest
from toy_world import MODELS, ToyWorld

from bandit_router.errors import UnknownPolicy
from bandit_router.policies import REGISTRY, make_params, make_policy, parse_spec, settings_of
from bandit_router.router import Router
from bandit_router.types import Outcome, Request


def spec_for(name: str) -> str:
    return {"fixed": "fixed:coder"}.get(name, name)


ALL = sorted(REGISTRY)


def trained_router(name: str, seed: int = 0, rounds: int = 60) -> tuple[Router, ToyWorld]:
    world = ToyWorld(seed=seed)
    router = Router(MODELS, spec_for(name), seed=seed)
    for _ in range(rounds):
        kind, request = world.request()
        decision = router.route(request)
        router.learn(decision, world.outcome(kind, decision.model, decision.context.input_tokens))
    return router, world


@pytest.mark.parametrize("name", ALL)
def test_pmf_is_a_distribution_over_the_allowed_models(name: str) -> None:
    router, world = trained_router(name)
    for allowed in (None, ("coder", "strong"), ("writer",), ("strong", "cheap", "writer")):
        for cost_weight in (0.0, 20.0, 5000.0):
            _, request = world.request(cost_weight)
            request = Request(prompt=request.prompt, models=allowed, cost_weight=cost_weight)
            decision = router.route(request)
            names = allowed or tuple(m.name for m in MODELS)
            assert decision.models == names
            pmf = np.array(decision.pmf)
            assert pmf.shape == (len(names),)
            assert (pmf >= 0).all()
            assert pmf.sum() == pytest.approx(1.0, abs=1e-9)
            assert decision.model in names
            assert decision.probability == decision.pmf[names.index(decision.model)]
            assert decision.probability > 0
            assert decision.arm == [m.name for m in router.models].index(decision.model)


@pytest.mark.parametrize("name", ALL)
def test_snapshot_round_trip_restores_weights_and_decisions(name: str) -> None:
    router, world = trained_router(name)
    blob = router.snapshot()
    other = Router(MODELS, spec_for(name), seed=123)
    other.restore(blob)
    assert np.array_equal(router.weights(), other.weights())
    assert other.version == router.version
    # Same sampler state and same learned state → the same next decisions and the same future weights.
    for _ in range(20):
        kind, request = world.request()
        a, b = router.route(request), other.route(request)
        assert (a.model, a.pmf) == (b.model, b.pmf)
        outcome = world.outcome(kind, a.model, a.context.input_tokens)
        router.learn(a, outcome)
        other.learn(b, outcome)
    assert np.array_equal(router.weights(), other.weights())


@pytest.mark.parametrize("name", ALL)
def test_replaying_the_same_outcomes_rebuilds_the_same_weights(name: str) -> None:
    router, world = trained_router(name, rounds=0)
    log = []
    for _ in range(80):
        kind, request = world.request()
        decision = router.route(request)
        outcome = world.outcome(kind, decision.model, decision.context.input_tokens)
        router.learn(decision, outcome)
        log.append((decision, outcome))
    replay = Router(MODELS, spec_for(name), seed=999)
    for decision, outcome in log:
        replay.learn(decision, outcome)
    assert np.array_equal(router.weights(), replay.weights())


@pytest.mark.parametrize("name", ALL)
def test_learn_returns_the_reward(name: str) -> None:
    router, world = trained_router(name, rounds=0)
    _, request = world.request(cost_weight=10.0)
    decision = router.route(request)
    reward = router.learn(decision, Outcome(quality=0.8, cost_usd=0.002))
    assert reward == pytest.approx(0.8 - 10.0 * 0.002)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown policy"),
        ("linucb:alpha=-1", "alpha"),
        ("linucb:colour=red", "no setting"),
        ("vw-squarecb:bits=abc", "setting bits must be an integer, got 'abc'"),
        ("default:dim=64.5", r"^policy 'default': setting dim must be an integer, got '64.5'$"),
        ("linucb:ridge=much", "setting ridge must be a finite number, got 'much'"),
        ("default:exploration=nan", "setting exploration must be a finite number, got 'nan'"),
        ("linucb:alpha=inf", "setting alpha must be a finite number, got 'inf'"),
        ("linucb:shared=yes", "setting shared must be true or false, got 'yes'"),
        ("linucb:alpha", "key=value"),
        ("linucb:alpha=1,alpha=2", r"^linucb:alpha=1,alpha=2: setting alpha is given twice$"),
        ("fixed", "needs a model"),
        ("egreedy:epsilon=2", "epsilon"),
        ("vw-greedy:temperature=5", r"does not use the setting \['temperature'\]"),
        ("vw-squarecb:exploration=softmax", "does not use the setting"),
        ("linucb:v=0.1", r"does not use the setting \['v'\]; it uses \['alpha'"),
        ("lints:alpha=0.3", "does not use the setting"),
        ("ucb1:epsilon=0.2", "does not use the setting"),
        ("thompson:c=2", "does not use the setting"),
    ],
)
def test_bad_specs_raise_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(UnknownPolicy, match=message):
        make_policy(spec)


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("default", {"dim": 64.5}, r"^policy 'default': setting dim must be an integer, got 64.5$"),
        ("default", {"dim": True}, "setting dim must be an integer, got True"),
        ("linucb", {"dim": "64"}, "setting dim must be an integer, got '64'"),
        ("linucb", {"alpha": "0.5"}, "setting alpha must be a finite number, got '0.5'"),
        ("linucb", {"alpha": False}, "setting alpha must be a finite number, got False"),
        ("default", {"exploration": float("nan")}, "setting exploration must be a finite number, got nan"),
        ("linucb", {"alpha": float("inf")}, "setting alpha must be a finite number, got inf"),
        ("linucb", {"shared": 1}, "setting shared must be true or false, got 1"),
        ("fixed", {"model": 4}, "setting model must be a string, got 4"),
    ],
)
def test_typed_settings_of_the_wrong_type_are_refused_not_truncated(
    name: str, settings: dict[str, object], message: str
) -> None:
    """Settings from TOML or JSON (`policy_settings`) arrive typed: each must be of its declared type (a float is
    not an integer: 64.5 was truncated to 64, or failed deep inside the policy)."""
    with pytest.raises(UnknownPolicy, match=message):
        make_policy(name, **settings)
    assert make_policy("default", dim=96, exploration=1).params.dim == 96  # type: ignore[attr-defined]


def test_spec_settings_reach_the_policy() -> None:
    assert parse_spec("vw-squarecb:gamma_scale=50,power_t=0") == ("vw-squarecb", {"gamma_scale": "50", "power_t": "0"})
    policy = make_policy("linucb:alpha=0.25,dim=128")
    assert policy.params.alpha == 0.25  # type: ignore[attr-defined]
    assert policy.params.dim == 128  # type: ignore[attr-defined]
    assert make_policy("fixed:gpt-4o").name == "fixed:gpt-4o"


@pytest.mark.parametrize(
    "spec", ["linucb:shared=true", "lints:shared=true", "linucb:decay=0.99", "vw-squarecb:power_t=0"]
)
def test_variants_keep_the_contract(spec: str) -> None:
    world = ToyWorld(seed=11)
    router = Router(MODELS, spec, seed=11)
    log = []
    for _ in range(80):
        kind, request = world.request()
        decision = router.route(request)
        assert sum(decision.pmf) == pytest.approx(1.0)
        outcome = world.outcome(kind, decision.model, decision.context.input_tokens)
        router.learn(decision, outcome)
        log.append((decision, outcome))
    replay = Router(MODELS, spec, seed=0)
    for decision, outcome in log:
        replay.learn(decision, outcome)
    assert np.array_equal(router.weights(), replay.weights())
    other = Router(MODELS, spec, seed=5)
    other.restore(router.snapshot())
    assert np.array_equal(router.weights(), other.weights())


def test_bandit_router_policies_lists_exactly_the_settings_each_spec_accepts() -> None:
    """A newcomer copies a setting from `bandit-router policies` into a spec: every listed one must work there,
    and one the policy ignores (LinUCB's Thompson scale `v`) must not be listed (it is refused in a spec)."""
    from typer.testing import CliRunner

    from bandit_router.cli import app

    reply = CliRunner().invoke(app, ["policies"])
    assert reply.exit_code == 0, reply.output
    listed: dict[str, set[str]] = {}
    name = ""
    for line in reply.output.splitlines():
        if line and not line[0].isspace():
            name = line.split()[0]
            listed[name] = set()
        elif "settings:" in line:
            listed[name] = {part.split("=")[0] for part in line.split("settings:")[1].strip().split(", ")}
    assert set(listed) == set(REGISTRY)
    assert "v" not in listed["linucb"] and "alpha" in listed["linucb"]
    assert "alpha" not in listed["lints"] and "v" in listed["lints"]
    assert "exploration" in listed["default"] and "epsilon" not in listed["vw-greedy"]
    for policy, keys in listed.items():
        defaults = settings_of(policy)
        assert keys == set(defaults)
        for key, value in defaults.items():
            if isinstance(value, (int, float)):  # as a spec's text: `linucb:alpha=0.5`, `lints:shared=False`
                make_params(policy, {}, {key: str(value)})
    for policy, ignored in (("linucb", "v"), ("lints", "alpha"), ("vw-greedy", "epsilon")):
        with pytest.raises(UnknownPolicy, match="does not use the setting"):
            make_policy(f"{policy}:{ignored}=0.3")
