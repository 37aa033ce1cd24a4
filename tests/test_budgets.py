"""Budget targets and the pacer: grammar, config, and seeded simulations with a real `Router`.

The synthetic world: three models whose quality depends on the prompt's topic (the small one is as good as the
large one on greetings, far worse on maths and code), prices 0.15/0.60, 1/4 and 10/30 USD per 1M tokens
(≈ 1.3e-4, 8.5e-4 and 6.5e-3 USD per request), latency log-normal around 0.5, 1.5 and 4 s. Outcomes report the
real cost (list price × sampled output tokens) and latency; the router only learns from the chosen model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bandit_router.budgets import (
    AvgCost,
    BudgetConfig,
    BudgetPacer,
    Latency,
    Share,
    Spend,
    format_duration,
    parse_duration,
    parse_scoped_target,
    parse_target,
)
from bandit_router.catalog import ModelSpec
from bandit_router.errors import InvalidInput
from bandit_router.reward import RewardConfig
from bandit_router.router import Router
from bandit_router.types import Decision, Outcome, Request

MODELS = (
    ModelSpec("small", 0.15, 0.60, {"family": "a", "tier": "small"}, latency_s=0.5, output_tokens=200),
    ModelSpec("medium", 1.0, 4.0, {"family": "b", "tier": "medium"}, latency_s=1.5, output_tokens=200),
    ModelSpec("large", 10.0, 30.0, {"family": "c", "tier": "large"}, latency_s=4.0, output_tokens=200),
)
NAMES = tuple(m.name for m in MODELS)
QUALITY = {  # mean quality of small, medium, large per topic
    "greeting": (0.85, 0.88, 0.90),
    "math": (0.30, 0.65, 0.90),
    "code": (0.40, 0.80, 0.92),
    "trivia": (0.70, 0.80, 0.88),
}
WORDS = {
    "greeting": ["hello", "thanks", "please", "nice", "day", "chat", "friend"],
    "math": ["prove", "integral", "equation", "solve", "derivative", "theorem", "matrix"],
    "code": ["python", "function", "bug", "compile", "loop", "class", "refactor"],
    "trivia": ["capital", "country", "river", "year", "who", "famous", "history"],
}
TOPICS = tuple(QUALITY)
MIX = (0.4, 0.2, 0.2, 0.2)
SHIFTED_MIX = (0.1, 0.4, 0.4, 0.1)  # more maths and code: the large model gets worth more
LATENCY_S = (0.5, 1.5, 4.0)


@dataclass
class Clock:
    """A settable clock for the pacer (seconds)."""

    t: float = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Trace:
    """One row per decision."""

    tenants: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    cost_weight: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)

    def array(self, name: str, tenant: str | None = None) -> np.ndarray:
        values = getattr(self, name)
        if tenant is None:
            return np.asarray(values)
        return np.asarray([v for v, t in zip(values, self.tenants, strict=True) if t == tenant])

    def share(self, model: str, tenant: str | None = None) -> float:
        return float(np.mean(self.array("models", tenant) == model))


def make_router(config: BudgetConfig, *, seed: int, clock: Clock, cost_weight: float = 20.0) -> Router:
    pacer = BudgetPacer(config, clock=clock)
    return Router(MODELS, "vw-squarecb", seed=seed, pacer=pacer, reward_config=RewardConfig(cost_weight=cost_weight))


def simulate(
    router: Router,
    n: int,
    *,
    seed: int,
    clock: Clock,
    tenants: Sequence[str] = ("",),
    shift_at: int | None = None,
    mean_gap_s: float = 1.0,
    trace: Trace | None = None,
    before: Callable[[int], None] | None = None,
    learn_from: Sequence[str] | None = None,
) -> Trace:
    """`n` requests, round-robin over `tenants` ("" = no tenant), feedback at once (only for the tenants in
    `learn_from` when given); the clock advances by exponential gaps of mean `mean_gap_s`; the topic mix changes
    to SHIFTED_MIX from request `shift_at`."""
    rng = np.random.default_rng(seed)
    trace = trace or Trace()
    for i in range(n):
        if before is not None:
            before(i)
        clock.t += float(rng.exponential(mean_gap_s))
        mix = SHIFTED_MIX if shift_at is not None and i >= shift_at else MIX
        topic = TOPICS[int(rng.choice(len(TOPICS), p=mix))]
        text = " ".join(rng.choice(WORDS[topic], size=int(rng.integers(5, 15))))
        tenant = tenants[i % len(tenants)]
        decision = router.route(Request(prompt=text, context={"tenant": tenant} if tenant else {}))
        k = NAMES.index(decision.model)
        quality = float(np.clip(QUALITY[topic][k] + rng.normal(0.0, 0.1), 0.0, 1.0))
        output_tokens = int(rng.integers(100, 300))
        cost = MODELS[k].cost_usd(decision.context.input_tokens, output_tokens)
        latency = float(LATENCY_S[k] * rng.lognormal(-0.125, 0.5))
        if learn_from is None or tenant in learn_from:
            outcome = Outcome(quality=quality, cost_usd=cost, output_tokens=output_tokens, latency_s=latency)
            router.learn(decision, outcome)
        trace.tenants.append(tenant)
        trace.models.append(decision.model)
        trace.cost.append(cost)
        trace.cost_weight.append(decision.cost_weight)
        trace.time.append(clock.t)
        trace.latency.append(latency)
    return trace


def pacer_of(router: Router) -> BudgetPacer:
    assert isinstance(router.pacer, BudgetPacer)
    return router.pacer


def target_report(report: dict[str, Any], target: str, tenant: str | None = None) -> dict[str, Any]:
    scope = report["global"] if tenant is None else report["tenants"][tenant]
    return next(t for t in scope["targets"] if t["target"] == target)


# -- grammar ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("avg_cost_usd=0.0005", AvgCost(0.0005)),
        (" avg_cost_usd=5e-4 ", AvgCost(0.0005)),
        ("spend_usd=200/86400", Spend(200, 86400)),
        ("spend_usd=200/1d", Spend(200, 86400)),
        ("spend_usd=12.5/90m", Spend(12.5, 5400)),
        ("spend_usd=3/1w", Spend(3, 604800)),
        ("share:gpt-4o=0.3", Share("gpt-4o", 0.3)),
        ("share:gpt-4o=30%", Share("gpt-4o", 0.3)),
        ("share:gpt-4-1106-preview=0.3", Share("gpt-4-1106-preview", 0.3)),
        ("share:tier=large=0.3", Share("tag:tier=large", 0.3)),
        ("share:tag:tier=large=0.3", Share("tag:tier=large", 0.3)),
        ("share:org/model:v1=0", Share("org/model:v1", 0.0)),
        ("latency_p95_s=3", Latency(95, 3)),
        ("latency_p99.9_s=0.5", Latency(99.9, 0.5)),
    ],
)
def test_parse_target(text: str, expected: object) -> None:
    target = parse_target(text)
    assert target == expected
    assert parse_target(str(target)) == target


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("avg_cost_usd=0", "must be a finite number > 0"),
        ("avg_cost_usd=-1", "must be a finite number > 0"),
        ("avg_cost_usd=nan", "must be finite"),
        ("avg_cost_usd=cheap", "must be a number"),
        ("avg_cost_usd", "expected key=value"),
        ("spend_usd=200", "expected spend_usd=<USD>/<period>"),
        ("spend_usd=200/0d", "period must be a finite number > 0"),
        # a period of 1e-300 s was accepted, and every request then failed: floor(t / P) overflowed
        ("spend_usd=200/1e-300s", "period must be at least 0.001 s"),
        ("spend_usd=200/0.0005", "period must be at least 0.001 s"),
        ("spend_usd=200/1y", "period .1y. must be seconds or a number with s, m, h, d or w"),
        # read as 4,000 USD a minute (units were case-blind), a monthly budget that never binds
        ("spend_usd=4000/1M", r"period '1M': M is ambiguous .* m for minutes, 30d for a month"),
        ("share:gpt-4o=1.5", r"must be in \[0, 1\]"),
        ("share:gpt-4o=150%", r"must be in \[0, 1\]"),
        ("share:=0.3", "expected share:"),
        ("share:tag:tier=0.3", "a model name .* or tag:key=value"),
        ("share:tag:=large=0.3", "a tag selector is tag:key=value"),
        ("latency_p100_s=3", r"must be in \(0, 100\)"),
        ("latency_p95_s=0", "must be a finite number > 0"),
        ("latency_p95=3", "unknown target"),
        ("budget=5", "unknown target 'budget'"),
        # B/P overflowed to inf: every route then failed (NaN scores) and GET /v1/budgets could not encode λ
        ("spend_usd=1e308/0.001", r"the rate B/P \(USD a second\) overflows a float"),
        # B/P or B·10⁻⁶ underflowed to 0: the pacer's request scale max(r·τ̂, B·10⁻⁶) was 0, a ZeroDivisionError
        ("spend_usd=1e-320/1d", r"spend_usd=1e-320 is too small for a float"),
        ("spend_usd=5e-324/1s", r"spend_usd=5e-324 is too small for a float"),
    ],
)
def test_parse_target_rejects(text: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        parse_target(text)


def test_a_stored_state_with_a_sub_second_spend_period_still_loads() -> None:
    """An older version took any positive period: a state it stored with a half-second period (beside a daily one)
    loads, its spend kept, rather than the whole state being refused and every target's spend reset."""
    pacer = BudgetPacer(BudgetConfig.from_strings(["spend_usd=0.01/0.5s", "spend_usd=100/1d"]), clock=lambda: 1e9)
    state = json.loads(json.dumps(pacer.state()))
    restored = BudgetPacer.from_state(state, clock=lambda: 1e9)
    assert restored.state() == pacer.state()


def test_parse_scoped_target() -> None:
    assert parse_scoped_target("@acme:spend_usd=50/1d") == ("acme", Spend(50, 86400))
    assert parse_scoped_target("share:gpt-4o=0.3") == (None, Share("gpt-4o", 0.3))
    for bad in ("@:avg_cost_usd=1", "@acme", "@acme:"):
        with pytest.raises(InvalidInput):
            parse_scoped_target(bad)


def test_a_tenant_written_as_an_integral_float_is_that_numbers_tenant() -> None:
    """A request's tenant 5.0 is tenant "5" (`types.tenant_of`), so `@5.0:` (how that tenant was named before)
    must be tenant "5" too: it was the string tenant "5.0", and numeric 5.0 escaped its targets. Other texts stay
    as they are; a saved state that calls the tenant "5.0" loads into tenant "5"."""
    config = BudgetConfig.from_strings(["@5.0:avg_cost_usd=0.001", "@-3.0:share:large=0.1", "@05:avg_cost_usd=1",
                                        "@5.5:avg_cost_usd=1", "@1e+16:avg_cost_usd=1"])
    assert sorted(config.tenants) == ["-3", "05", "1e+16", "5", "5.5"]
    assert BudgetConfig.from_mapping({"tenants": {"5.0": {"avg_cost_usd": 0.001}}}).tenants == {"5": (AvgCost(0.001),)}
    pacer = BudgetPacer(config, clock=lambda: 1e9)
    for tenant in (5, 5.0, "5", -3.0):
        assert len(pacer._scopes(tenant)) == 2, tenant  # the global scope and the tenant's
    assert len(pacer._scopes("5.0")) == 1  # a string is the tenant it spells
    saved = pacer.state()
    saved["config"]["tenants"] = {("5.0" if k == "5" else k): v for k, v in saved["config"]["tenants"].items()}
    saved["tenants"] = {("5.0" if k == "5" else k): v for k, v in saved["tenants"].items()}
    assert BudgetPacer.from_state(json.loads(json.dumps(saved)), clock=lambda: 1e9).state() == pacer.state()


def test_a_state_saved_with_tenants_5_and_5_0_apart_loads_tenant_5_and_everything_else() -> None:
    """Before `@5.0:` meant tenant 5, a config could hold tenants "5" and "5.0" and its state was saved so. Loading
    it refused the whole state (they are one tenant now), losing the global and every other tenant's targets and
    spend. Stored data loads: tenant "5" keeps its own targets and state, "5.0"'s are dropped; new input (no
    `stored`) is still refused."""
    config = BudgetConfig.from_mapping({"avg_cost_usd": 0.004, "tenants": {
        "5": {"avg_cost_usd": 0.001}, "was-5.0": {"avg_cost_usd": 0.002}, "acme": {"spend_usd": "50/1d"}}})
    pacer = BudgetPacer(config, clock=lambda: 1e9)
    pacer.spend(3.0, "acme")
    saved = json.loads(json.dumps(pacer.state()).replace('"was-5.0"', '"5.0"'))  # as the code before wrote it
    with pytest.raises(InvalidInput, match=r"'5' and '5\.0' are one tenant"):
        BudgetConfig.from_mapping(saved["config"])
    loaded = BudgetPacer.from_state(saved, clock=lambda: 1e9)
    assert loaded.config.describe() == ["avg_cost_usd=0.004", "@5:avg_cost_usd=0.001", "@acme:spend_usd=50/1d"]
    assert loaded.report()["tenants"]["acme"]["spend_usd"] == pytest.approx(3.0)
    assert loaded.state()["tenants"]["5"] == pacer.state()["tenants"]["5"]
    config_reversed = {**saved["config"], "tenants": dict(reversed(saved["config"]["tenants"].items()))}
    reversed_order = {**saved, "config": config_reversed, "tenants": dict(reversed(saved["tenants"].items()))}
    assert BudgetPacer.from_state(reversed_order, clock=lambda: 1e9).state() == loaded.state()


def test_a_stored_target_this_version_refuses_drops_only_that_target(caplog: pytest.LogCaptureFixture) -> None:
    """`Spend` now refuses an amount whose rate underflows (`spend_usd=1e-320/1d`), which an older version stored:
    loading the state refused all of it, so every other target restarted from the configuration, without its
    spend and λ. Stored data leaves out only that target (and a tenant left without targets), with a warning
    naming it, and the rest loads as saved; what was left out is stored again as stored (`state()`: its text, its
    state, its tenant's scope) until a new config replaces it; new input is still refused, and so is a state whose
    targets its config lacks for any other reason."""
    config = BudgetConfig.from_mapping({"avg_cost_usd": 0.004, "tenants": {
        "acme": {"spend_usd": ["50/1d", "2/1w"]}, "beta": {"spend_usd": "3/1d"}}})
    pacer = BudgetPacer(config, clock=lambda: 1e9)
    pacer.spend(3.0, "acme")
    pacer.spend(1.0, "beta")
    saved = json.loads(json.dumps(pacer.state()).replace('"2/1w"', '"1e-320/1w"').replace('"3/1d"', '"1e-320/1d"'))
    with pytest.raises(InvalidInput, match="too small for a float"):
        BudgetConfig.from_mapping(saved["config"])
    with caplog.at_level(logging.WARNING, logger="bandit_router.budgets"):
        loaded = BudgetPacer.from_state(saved, clock=lambda: 1e9)
    assert loaded.config.describe() == ["avg_cost_usd=0.004", "@acme:spend_usd=50/1d"]
    assert loaded.state()["global"] == pacer.state()["global"]
    assert [t["target"] for t in loaded.report()["tenants"]["acme"]["targets"]] == ["spend_usd=50/1d"]
    assert loaded.report()["tenants"]["acme"]["spend_usd"] == pytest.approx(3.0)
    assert loaded.state() == saved  # the left-out targets' texts and states, and tenant beta, as stored
    loaded.configure_stored(saved["config"])  # another worker follows the same stored targets: all kept
    assert loaded.state() == saved
    loaded.configure_stored({**saved["config"], "avg_cost_usd": 0.005})  # other stored targets: their texts kept
    assert loaded.state()["config"]["tenants"]["beta"] == {"spend_usd": "1e-320/1d"}
    assert "beta" not in loaded.state()["tenants"]
    loaded.configure(loaded.config)  # a new config (a PUT) replaces them
    assert "1e-320" not in json.dumps(loaded.state()) and list(loaded.state()["tenants"]) == ["acme"]
    assert "budgets.tenants.acme: left out the stored target 'spend_usd=1e-320/1w'" in caplog.text
    assert "budgets.tenants.beta: left out the stored target 'spend_usd=1e-320/1d'" in caplog.text
    corrupt = pacer.state()
    corrupt["global"]["targets"]["spend_usd/1d"] = {}
    with pytest.raises(InvalidInput, match="targets its config does not"):
        BudgetPacer.from_state(corrupt)


def test_a_left_out_latency_target_takes_its_exceedance_statistics_with_it() -> None:
    """A stored latency target this version refuses (`latency_p100_s`) was left out of the loaded targets but its
    threshold's exceedance statistics loaded, used by no target; they are left out with it (and stored again as
    stored, for a version that takes it). `load` returns what it left out, per scope."""
    pacer = BudgetPacer(BudgetConfig.from_strings(["avg_cost_usd=0.01", "latency_p95_s=3"]))
    pacer._observe_latency("m", 5.0)
    kept = BudgetPacer(BudgetConfig.from_strings(["latency_p95_s=3"]))
    assert kept.load(pacer.state()) == {} and list(kept.state()["exceedance"]) == ["3.0"]
    saved = json.loads(json.dumps(pacer.state()).replace("latency_p95_s", "latency_p100_s"))
    loaded = BudgetPacer()
    assert loaded.load(saved) == {None: ["latency_p100_s=3.0"]}
    assert loaded.config.describe() == ["avg_cost_usd=0.01"] and loaded._exceedance == {}
    assert loaded.state() == saved


def test_one_refused_element_of_a_stored_list_or_share_table_leaves_out_only_itself() -> None:
    """A stored `spend_usd` list or `share` table with one element in a form this version refuses (a newer
    version's `{"usd": 900, "period": "1mo"}`) was left out whole: its valid siblings were not paced either, while
    the same refusal in text form (`"900/1mo"`) left out only itself. Each element loads or is left out alone; the
    stored config is kept as stored (`state()`)."""
    stored = {"spend_usd": ["5/1d", {"usd": 900, "period": "1mo"}], "share": {"gpt-4o": 0.3, "claude*": True},
              "tenants": {"acme": {"spend_usd": ["7/1d", "900/1mo"]}}}
    config, dropped = BudgetConfig.from_stored(stored)
    assert config.describe() == ["spend_usd=5/1d", "share:gpt-4o=0.3", "@acme:spend_usd=7/1d"]
    assert dropped == {None: ['spend_usd={"usd": 900, "period": "1mo"}', "share:claude*=true"],
                       "acme": ["spend_usd=900/1mo"]}
    pacer = BudgetPacer()
    pacer.configure_stored(stored)
    assert pacer.state()["config"] == stored


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -1.0])
def test_a_stored_multiplier_that_is_not_a_positive_finite_number_is_reset(
        bad: float, caplog: pytest.LogCaptureFixture) -> None:
    """A stored λ of NaN or ±inf (or ≤ 0, whose log the step takes) was loaded as it was: every later λ was NaN (or
    the step raised), every decision's cost weighed NaN. It is reset, with a warning naming the target: λ starts
    again at the router's default on the next request, as for a new target; a non-finite floor is forgotten (the
    decisions' costs set it again); everything else loads as saved."""
    pacer = BudgetPacer(BudgetConfig.from_strings(["avg_cost_usd=0.001", "spend_usd=5/1d"]), clock=lambda: 1e9)
    context = make_router(BudgetConfig(), seed=1, clock=Clock()).featurize(Request(prompt="hi"))
    pacer.adjust(context, MODELS, np.zeros(3), None, 20.0)
    pacer.observe(_decision(context, "large", cost=6e-3), None)
    saved = json.loads(json.dumps(pacer.state()))
    saved["global"]["targets"]["avg_cost_usd"]["lam"] = bad
    saved["global"]["targets"]["spend_usd/1d"]["log_floor"] = bad if not math.isfinite(bad) else None
    with caplog.at_level(logging.WARNING, logger="bandit_router.budgets"):
        loaded = BudgetPacer.from_state(saved, clock=lambda: 1e9)
    state = loaded.state()["global"]["targets"]
    assert state["avg_cost_usd"]["lam"] is None and state["avg_cost_usd"]["spend_usd"] > 0
    assert state["spend_usd/1d"]["lam"] == pacer.state()["global"]["targets"]["spend_usd/1d"]["lam"]
    assert "avg_cost_usd=0.001: the stored multiplier λ" in caplog.text
    if not math.isfinite(bad):
        assert state["spend_usd/1d"]["log_floor"] is None
        assert "spend_usd=5/1d: the stored floor" in caplog.text
    lam, _, _ = loaded.adjust(context, MODELS, np.array([1e-4, 9e-4, 6e-3]), None, 20.0)
    assert math.isfinite(lam) and lam > 0


def _state_after_four_routes(config: BudgetConfig, clock: Clock) -> dict[str, Any]:
    """The pacer's state, as stored (through JSON), after four routes a second apart on `clock`."""
    router = make_router(config, seed=1, clock=clock)
    for i in range(4):
        router.route(Request(prompt=f"hi {i}"))
        clock.t += 1.0
    return dict(json.loads(json.dumps(router.pacer.state())))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0])
def test_a_stored_penalty_multiplier_or_gap_that_is_not_a_finite_number_is_reset(
        bad: float, caplog: pytest.LogCaptureFixture) -> None:
    """A stored μ of a share or latency target that was NaN or ±inf loaded as it was: every later route failed
    (NaN or -inf scores) until the state was repaired by hand. A stored mean gap or last request time that was not
    finite froze λ (its step's scale was NaN for good). They are reset with a warning, as a stored λ is: μ to 0,
    the gap and the time to be measured again; everything else loads as saved."""
    config = BudgetConfig.from_strings(["share:large=0.2", "latency_p95_s=2", "spend_usd=5/1d"])
    clock = Clock()
    saved = _state_after_four_routes(config, clock)
    saved["global"]["targets"]["share:large"]["mu"] = bad
    saved["global"]["targets"]["latency_p95_s"]["mu"] = bad
    saved["global"]["gap_s"] = bad
    saved["global"]["last_time"] = bad if not math.isfinite(bad) else saved["global"]["last_time"]
    loaded = make_router(config, seed=1, clock=clock)
    with caplog.at_level(logging.WARNING, logger="bandit_router.budgets"):
        loaded.pacer.load(saved)
    state = loaded.pacer.state()["global"]
    assert state["targets"]["share:large"]["mu"] == state["targets"]["latency_p95_s"]["mu"] == 0.0
    assert state["gap_s"] is None and state["targets"]["share:large"]["hits"] == saved["global"]["targets"][
        "share:large"]["hits"]
    assert "share:large=0.2: the stored multiplier μ" in caplog.text
    assert "latency_p95_s=2: the stored multiplier μ" in caplog.text
    assert "the stored mean gap between requests" in caplog.text
    if not math.isfinite(bad):
        assert state["last_time"] is None and "the stored time of the last request" in caplog.text
    for i in range(3):
        decision = loaded.route(Request(prompt=f"hello {i}"))
        assert all(math.isfinite(p) for p in decision.pmf)
        clock.t += 2.0
    assert 1.0 <= loaded.pacer.state()["global"]["gap_s"] <= 2.0  # measured again: the gaps were 1 or 2 s


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_a_stored_spend_or_time_that_is_not_usable_is_reset_and_a_spend_target_fails_closed(
        bad: float, caplog: pytest.LogCaptureFixture) -> None:
    """A stored period spend of NaN loaded as it was: `NaN >= limit` is false, so the hard budget never bound for the
    rest of its period, the NaN was saved again, and GET /v1/budgets and /v1/stats could not encode the report
    (a 500). Every stored amount in USD that is not a finite number ≥ 0, and every time that is not finite, is reset
    with a warning: a spend target's period spend counts as its whole budget (exhausted until its next period:
    unknown spend binds early, never late), the scope's and an average target's spend to 0, the plan's times to None."""
    config = BudgetConfig.from_strings(["spend_usd=5/1d", "avg_cost_usd=0.01"])
    clock = Clock()
    saved = _state_after_four_routes(config, clock)
    targets = saved["global"]["targets"]
    spend_key = next(k for k in targets if k.startswith("spend_usd"))
    targets[spend_key]["spend_usd"] = bad
    targets[spend_key]["plan_time"] = math.nan
    targets["avg_cost_usd"]["spend_usd"] = bad
    saved["global"]["spend_usd"] = bad
    loaded = make_router(config, seed=1, clock=clock)
    with caplog.at_level(logging.WARNING, logger="bandit_router.budgets"):
        loaded.pacer.load(saved)
    state = loaded.pacer.state()["global"]
    assert state["targets"][spend_key]["spend_usd"] == 5.0 and state["targets"][spend_key]["plan_time"] is None
    assert state["targets"]["avg_cost_usd"]["spend_usd"] == 0.0 and state["spend_usd"] == 0.0
    assert "the stored spend of the period" in caplog.text and "counted as the whole budget" in caplog.text
    assert "the stored spend_usd" in caplog.text and "the stored plan_time" in caplog.text
    report = loaded.pacer.report()
    json.dumps(report, allow_nan=False)  # what GET /v1/budgets encodes
    spend = next(t for t in report["global"]["targets"] if t["kind"] == "spend")
    assert spend["exhausted"] is True
    json.dumps(loaded.pacer.state(), allow_nan=False)  # and what the next save stores




def test_an_unusable_spend_of_the_period_left_counts_as_the_whole_budget_when_the_clock_returns_there(
        caplog: pytest.LogCaptureFixture) -> None:
    """A spend target left day 10 for day 11 (its clock ran ahead) with 4.9 of 5 USD spent there, stored as NaN
    (damaged): reset to 0, the day's spend counted as 0 when the clock was set right, back in day 10, and the target
    bound late. It counts as the whole budget, as an unusable spend of the current period does. A state stored
    before `entered_usd` was (none in the row) whose spend is NaN is said once, not again for `entered_usd`."""
    day = 86400.0
    config = BudgetConfig.from_strings(["spend_usd=5/1d"])
    state = json.loads(json.dumps(BudgetPacer(config).state()))
    control = state["global"]["targets"]["spend_usd/1d"]
    control.update({"period": 11, "spend_usd": 0.0, "entered_usd": 0.0, "left_period": 10, "left_usd": math.nan,
                    "origin": 10 * day, "plan_time": 11 * day})
    router = make_router(config, seed=1, clock=Clock(t=10 * day + 3600))  # set right: back in day 10
    with caplog.at_level(logging.WARNING, logger="bandit_router.budgets"):
        router.pacer.load(state)
    assert "the stored spend of the period it left nan" in caplog.text
    router.route(Request(prompt="hi"))
    spend = next(t for t in router.pacer.report()["global"]["targets"] if t["kind"] == "spend")
    assert spend["exhausted"] is True and spend["realized"] >= 5.0
    caplog.clear()
    for key in ("left_period", "left_usd", "entered_usd"):
        del control[key]
    control["spend_usd"] = math.nan
    with caplog.at_level(logging.WARNING, logger="bandit_router.budgets"):
        BudgetPacer(config).load(state)
    assert len(caplog.records) == 1 and "entered_usd" not in caplog.text, caplog.text


def _damaged_state_cases() -> list[tuple[str, Callable[[dict[str, Any]], None], bool]]:
    """(what, damage, refused): `refused` rows do not load (InvalidInput); the others load with the value reset."""
    def at(*path: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
        def damage(state: dict[str, Any]) -> None:
            node: Any = state
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        return damage

    def every_exceedance(value: Any) -> Callable[[dict[str, Any]], None]:
        def damage(state: dict[str, Any]) -> None:
            for stats in state["exceedance"].values():
                for model in stats:
                    stats[model] = value
        return damage

    g = ("global", "targets")
    return [
        ("spend period 10**400", at(*g, "spend_usd/1d", "period", value=10**400), True),
        ("spend period -10**20", at(*g, "spend_usd/1d", "period", value=-10**20), True),
        ("spend left_period 10**400", at(*g, "spend_usd/1d", "left_period", value=10**400), True),
        ("tenant spend period 10**400",
         at("tenants", "acme", "targets", "spend_usd/1h", "period", value=10**400), True),
        ("avg requests 10**400", at(*g, "avg_cost_usd", "requests", value=10**400), True),
        ("scope requests 10**400", at("global", "requests", value=10**400), True),
        ("share hits 10**400", at(*g, "share:large", "hits", value=10**400), True),
        ("latency over 10**400", at(*g, "latency_p90_s", "over", value=-10**400), True),
        ("exceedance NaN", every_exceedance([math.nan, 1.0]), False),
        ("exceedance inf", every_exceedance([3.0, math.inf]), False),
        ("exceedance negative", every_exceedance([3.0, -1.0]), False),
        ("exceedance of 3 numbers", every_exceedance([3.0, 1.0, 1.0]), False),
        ("exceedance of 1 number", every_exceedance([3.0]), False),
        ("latency recent NaN", at(*g, "latency_p90_s", "recent", 0, value=math.nan), False),
        ("latency recent -inf", at(*g, "latency_p90_s", "recent", 1, value=-math.inf), False),
        # review of spend24: a `since` that is no number refused the whole row (its spend lost with it)
        ("tenant since string", at("tenants", "acme", "since", value="yesterday"), False),
        ("tenant since NaN", at("tenants", "acme", "since", value=math.nan), False),
        ("spend since string", at(*g, "spend_usd/1d", "since", value="0"), False),
        ("avg since 10**400", at(*g, "avg_cost_usd", "since", value=10**400), False),
        ("tenant spend since list", at("tenants", "acme", "targets", "spend_usd/1h", "since", value=[1]), False),
    ]


@pytest.mark.parametrize(("what", "damage", "refused"), _damaged_state_cases(), ids=[
    case[0] for case in _damaged_state_cases()])
def test_a_stored_value_that_would_break_every_request_later_is_refused_or_reset(
        what: str, damage: Callable[[dict[str, Any]], None], refused: bool, caplog: pytest.LogCaptureFixture) -> None:
    """These loaded as stored and broke later: a spend period of 10**400 made every route raise OverflowError
    (`period_start`), exceedance statistics with NaN or inf (or not two numbers) every route of a latency target,
    recent latencies with NaN or inf, or counts of 10**400, every GET /v1/budgets and /v1/stats. A count or period
    beyond ±2**53 now refuses the row (a damaged state); statistics and recent latencies that are not finite numbers
    ≥ 0 (pairs, for the statistics) are reset with a warning, and then routing, the report and the state work."""
    config = BudgetConfig.from_strings(["spend_usd=5/1d", "avg_cost_usd=0.01", "share:large=0.3", "latency_p90_s=2",
                                        "@acme:spend_usd=1/1h"])
    clock = Clock()
    router = make_router(config, seed=1, clock=clock)
    for i in range(6):
        decision = router.route(Request(prompt=f"hi {i}", context={"tenant": "acme"} if i % 2 else {}))
        router.pacer.observe(decision, 0.001, 1.0 + i)
        clock.t += 1.0
    saved = json.loads(json.dumps(router.pacer.state()))
    assert saved["exceedance"]["2.0"] and len(saved["global"]["targets"]["latency_p90_s"]["recent"]) == 6
    damage(saved)
    loaded = make_router(config, seed=1, clock=clock)
    if refused:
        with pytest.raises(InvalidInput, match="beyond"):
            loaded.pacer.load(saved)
        return
    with caplog.at_level(logging.WARNING, logger="bandit_router.budgets"):
        loaded.pacer.load(saved)
    assert "reset" in caplog.text
    for i in range(3):
        decision = loaded.route(Request(prompt=f"again {i}", context={"tenant": "acme"}))
        assert all(math.isfinite(p) for p in decision.pmf)
        loaded.pacer.observe(decision, 0.001, 1.5)
    json.dumps(loaded.pacer.report(), allow_nan=False)  # what GET /v1/budgets encodes
    json.dumps(loaded.pacer.state(), allow_nan=False)  # what the next save stores


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "1.5m", "24h", "1d", "2w")] == [90, 90, 90, 86400, 86400, 1209600]
    assert [format_duration(s) for s in (86400, 3600 * 36, 90, 0.5, 604800)] == ["1d", "36h", "90s", "0.5s", "1w"]


positive = st.floats(min_value=1e-9, max_value=1e9, allow_nan=False, allow_infinity=False)
targets = st.one_of(
    st.builds(AvgCost, positive),
    st.builds(Spend, positive, st.floats(min_value=0.001, max_value=1e9)),  # a period of at least 1 ms
    st.builds(Share, st.sampled_from(["gpt-4o", "tag:tier=large", "a.b/c:d"]), st.floats(0, 1)),
    st.builds(Latency, st.floats(0, 100, exclude_min=True, exclude_max=True), positive),
)


@given(targets)
def test_every_target_round_trips_through_its_text(target: object) -> None:
    assert parse_target(str(target)) == target


# -- config -------------------------------------------------------------------------------------------------
CONFIG_TOML = """
[budgets]
avg_cost_usd = 0.0005
spend_usd = ["200/1d", "4000/30d"]
share = { "gpt-4o" = 0.3, "tag:tier=large" = "25%" }
latency_p95_s = 3
fallback_model = "gpt-4o-mini"
guard_max_usd_per_mtok = 1.0
cost_step = 0.1

[budgets.tenants.acme]
spend_usd = "50/1d"
share = { "tier=large" = 0.1 }
"""


def test_config_from_toml_and_back() -> None:
    config = BudgetConfig.from_mapping(tomllib.loads(CONFIG_TOML)["budgets"])
    assert set(config.targets) == {
        AvgCost(0.0005),
        Spend(200, 86400),
        Spend(4000, 30 * 86400),
        Share("gpt-4o", 0.3),
        Share("tag:tier=large", 0.25),
        Latency(95, 3),
    }
    assert config.tenants["acme"] == (Spend(50, 86400), Share("tag:tier=large", 0.1))
    assert (config.fallback_model, config.guard_max_usd_per_mtok, config.cost_step) == ("gpt-4o-mini", 1.0, 0.1)
    assert BudgetConfig.from_mapping(json.loads(json.dumps(config.to_mapping()))) == config
    assert sorted(BudgetConfig.from_strings(config.describe(), cost_step=0.1).describe()) == sorted(config.describe())
    assert "@acme:spend_usd=50/1d" in config.describe()


@pytest.mark.parametrize("percentile", ["0.00001", "1e-7", "99.99999"])
def test_a_latency_target_of_any_accepted_percentile_reads_back(percentile: str) -> None:
    """The stored form of a config (`to_mapping`, kept by PUT /v1/budgets) reads back: a percentile below 1e-4 was
    written `latency_p1e-05_s`, which the key's pattern refused, so a restart dropped the stored targets and state."""
    config = BudgetConfig.from_mapping({f"latency_p{percentile}_s": 2, "avg_cost_usd": 0.001})
    assert BudgetConfig.from_mapping(json.loads(json.dumps(config.to_mapping()))) == config
    pacer = BudgetPacer(config)
    assert BudgetPacer.from_state(json.loads(json.dumps(pacer.state()))).config == config


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"avg_cost": 1}, "unknown target 'avg_cost'"),
        ({"avg_cost_usd": True}, "must be a number or a string"),
        ({"spend_usd": ["1/1d", "2/24h"]}, r"^budgets: more than one target for \['spend_usd/1d'\]"),  # said once
        ({"share": 0.3}, "share must be a table"),
        ({"tenants": {"acme": {"avg_cost_usd": -1}}}, "budgets.tenants.acme"),
        ({"tenants": ["acme"]}, "tenants must be a table"),
        ({"cost_step": -0.1}, r"cost_step must be a number in \[0, 10\]"),
        ({"min_cost_weight": 10, "max_cost_weight": 5}, "min_cost_weight must be below"),
        ({"guard_max_usd_per_mtok": -1}, "guard_max_usd_per_mtok"),
        ([1, 2], "budgets must be a table"),
        # an integer too large for a float was an OverflowError (a 500 on PUT /v1/budgets), not a refusal
        ({"min_cost_weight": 10**400}, "min_cost_weight must be a finite number > 0"),
        ({"max_cost_weight": 10**400}, "max_cost_weight must be a finite number > 0"),
        ({"guard_max_usd_per_mtok": 10**400}, "guard_max_usd_per_mtok must be a finite number"),
        # one tenant's two tables: the second replaced the first, silently
        ({"tenants": {"5": {"avg_cost_usd": 1}, "5.0": {"spend_usd": "1/1d"}}}, "'5' and '5.0' are one tenant, '5'"),
    ],
)
def test_config_rejects(data: Any, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        BudgetConfig.from_mapping(data)


def test_targets_given_as_one_string_are_refused_saying_how_to_read_text() -> None:
    """`BudgetConfig(targets="spend_usd=5/1d")` was read letter by letter: "global targets: not a target: 's'"."""
    with pytest.raises(InvalidInput, match=r"global targets: must be a list of targets, not one string "
                       r"'spend_usd=5/1d' \(BudgetConfig.from_strings"):
        BudgetConfig(targets="spend_usd=5/1d")  # type: ignore[arg-type]


def test_a_pacer_of_a_table_says_to_build_a_budget_config() -> None:
    """`BudgetPacer({"avg_cost_usd": 0.1})` said "configure needs a BudgetConfig", a name the caller never used."""
    with pytest.raises(InvalidInput, match=r"^config must be a BudgetConfig \(BudgetConfig.from_mapping\(\{...\}\) "
                       r"reads a \[budgets\] table, .*\), got dict$"):
        BudgetPacer({"avg_cost_usd": 0.1})  # type: ignore[arg-type]


def test_with_targets_replaces_one_scope() -> None:
    config = BudgetConfig.from_strings(["avg_cost_usd=0.001", "@acme:share:large=0.1"])
    changed = config.with_targets([Spend(5, 3600)], tenant="beta")
    assert changed.targets == (AvgCost(0.001),)
    assert changed.tenants == {"acme": (Share("large", 0.1),), "beta": (Spend(5, 3600),)}
    assert "acme" not in changed.with_targets([], tenant="acme").tenants


# -- convergence --------------------------------------------------------------------------------------------
def test_without_a_pacer_the_shift_moves_spend() -> None:
    """The baseline the convergence test is measured against: λ = 20 alone, same world and shift."""
    clock = Clock()
    cost = simulate(make_router(BudgetConfig(), seed=0, clock=clock), 4000, seed=0, clock=clock, shift_at=2000).cost
    assert 2.2e-3 < np.mean(cost[:2000]) < 3.0e-3 and np.mean(cost[2000:]) > 3.5e-3


@pytest.mark.parametrize("target", [0.0005, 0.001, 0.0025])
@pytest.mark.parametrize("seed", [0, 1])
def test_average_cost_converges_to_its_target(target: float, seed: int) -> None:
    """4,000 requests; halfway, traffic shifts to maths and code, where the large model is worth more (λ = 20
    alone spends ≈ 2.6e-3 per request before the shift, ≈ 3.9e-3 after). Mean cost within ±5 % of the target,
    every tenth within ±15 %, except the first tenth of the tightest target, within ±20 %: the router's
    cold-start exploration (each model ≥ 10 % of the draws until it has 20 feedbacks) alone costs ≈ 0.1 USD
    there, half of that tenth's budget. (Worst over seeds 0–7: 1.7 %, 11 %, and 18 % for that first tenth.)"""
    clock = Clock()
    router = make_router(BudgetConfig.from_strings([f"avg_cost_usd={target}"]), seed=seed, clock=clock)
    trace = simulate(router, 4000, seed=seed, clock=clock, shift_at=2000)
    cost = trace.array("cost")
    assert abs(cost.mean() / target - 1) <= 0.05
    tenths = cost.reshape(10, -1).mean(axis=1) / target
    first_tolerance = 0.20 if target == 0.0005 else 0.15
    assert abs(tenths[0] - 1) <= first_tolerance and np.all(np.abs(tenths[1:] - 1) <= 0.15), tenths
    report = target_report(pacer_of(router).report(), f"avg_cost_usd={target}")
    assert report["realized"] == pytest.approx(cost.mean(), rel=1e-9)  # booked and corrected = real spend
    assert report["multiplier"] == pytest.approx(pacer_of(router).cost_weight())


def _period_spend(trace: Trace, period: int, length: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    """(cost, seconds since the period's start) of the decisions in one period."""
    time, cost = trace.array("time"), trace.array("cost")
    inside = (time >= period * length) & (time < (period + 1) * length)
    return cost[inside], time[inside] - period * length


def test_spend_per_period_is_paced_over_each_period() -> None:
    """1 USD per 1,000 s. At ≈ 1 request/s (≈ 1e-3 per request) each full period spends within ±5 % of the budget,
    each fifth within ±20 % of a fifth, its first and last tenths within ±25 % of a tenth (neither the start nor
    the end is starved), and the budget lasts past 95 % of the period. Then traffic halves: the plan is in time,
    not in requests, so each request may spend twice as much and the periods still spend their budget (±8 %).
    (Worst over seeds 0–7: 2.8 %, 12 %, 14 %, 6 %; a tenth's cost sum alone has ≈ 20 % sampling noise.)"""
    clock = Clock()
    config = BudgetConfig.from_strings(["spend_usd=1/1000s"], fallback_model="small")
    router = make_router(config, seed=3, clock=clock)
    trace = simulate(router, 3000, seed=3, clock=clock)
    steady = int(clock.t // 1000)
    for period in range(1, steady):  # period 0 is the warm-up (λ starts at the default)
        spent, offset = _period_spend(trace, period)
        assert abs(spent.sum() - 1.0) <= 0.05, (period, spent.sum())
        fifths = np.array([spent[(offset >= 200 * k) & (offset < 200 * (k + 1))].sum() for k in range(5)])
        assert np.all(np.abs(fifths / 0.2 - 1) <= 0.20), (period, fifths)
        first_tenth, last_tenth = spent[offset < 100].sum(), spent[offset >= 900].sum()
        assert abs(first_tenth / 0.1 - 1) <= 0.25, (period, first_tenth)
        assert abs(last_tenth / 0.1 - 1) <= 0.25, (period, last_tenth)
        assert spent[offset < 950].sum() < 1.0
    simulate(router, 1500, seed=103, clock=clock, mean_gap_s=2.0, trace=trace)
    last = int(clock.t // 1000)
    assert last - steady >= 2
    for period in range(steady, last):
        spent, _ = _period_spend(trace, period)
        assert abs(spent.sum() - 1.0) <= 0.08, (period, spent.sum())
    report = target_report(pacer_of(router).report(), "spend_usd=1/1000s")
    assert report["period_start"] == last * 1000 and report["period_end"] == (last + 1) * 1000
    assert report["realized"] == pytest.approx(_period_spend(trace, last)[0].sum(), rel=1e-9)
    assert report["plan_usd"] == pytest.approx(1.0 * (clock.t - last * 1000) / 1000)


def test_share_target_holds() -> None:
    """λ = 1 alone sends ≈ 40 % of traffic to the large model; share:tag:tier=large=0.15 holds it at 15 % (+2)."""
    clock = Clock()
    free = simulate(make_router(BudgetConfig(), seed=4, clock=clock, cost_weight=1.0), 3000, seed=4, clock=clock)
    router = make_router(BudgetConfig.from_strings(["share:tag:tier=large=0.15"]), seed=4, clock=clock, cost_weight=1.0)
    trace = simulate(router, 3000, seed=4, clock=clock)
    assert free.share("large") > 0.3
    assert 0.12 <= trace.share("large") <= 0.17
    assert 0.12 <= trace.share("large") <= 0.17
    report = target_report(pacer_of(router).report(), "share:tag:tier=large=0.15")
    assert report["realized"] == pytest.approx(trace.share("large")) and report["holds"] is not None
    assert report["multiplier"] > 0


def test_latency_target_holds() -> None:
    """λ = 1 sends much traffic to the slow large model (p90 ≈ 5 s); latency_p90_s=3 brings p90 to ≈ 3 s."""
    clock = Clock()
    free = simulate(make_router(BudgetConfig(), seed=5, clock=clock, cost_weight=1.0), 3000, seed=5, clock=clock)
    router = make_router(BudgetConfig.from_strings(["latency_p90_s=3"]), seed=5, clock=clock, cost_weight=1.0)
    trace = simulate(router, 3000, seed=5, clock=clock)
    assert np.percentile(free.latency, 90) > 4.0
    assert np.mean(trace.array("latency") > 3.0) <= 0.12
    report = target_report(pacer_of(router).report(), "latency_p90_s=3")
    assert report["realized"] == pytest.approx(np.percentile(trace.latency[-2048:], 90))
    assert report["realized"] <= 3.3 and report["fraction_over"] <= 0.12


# -- tenants, changes, guard rails, explicit λ ---------------------------------------------------------------
def test_a_tenants_target_does_not_move_another_tenants_traffic() -> None:
    """Tenant a gets a tight cost target, tenant b (interleaved) none. The router learns from b's feedback only,
    so both runs' policies see the same data: then b's decisions are exactly those of a run without a's target,
    while a's spend is held (booked at the expected cost, as for feedback that never arrives)."""

    def run(config: BudgetConfig) -> tuple[Trace, Router]:
        clock = Clock()
        router = make_router(config, seed=6, clock=clock)
        return simulate(router, 3000, seed=6, clock=clock, tenants=("a", "b"), learn_from=("b",)), router

    trace, router = run(BudgetConfig.from_strings(["@a:avg_cost_usd=0.0004"]))
    baseline, _ = run(BudgetConfig())
    assert trace.array("models", "b").tolist() == baseline.array("models", "b").tolist()
    assert np.all(trace.array("cost_weight", "b") == 20.0)
    pacer = pacer_of(router)
    booked = pacer.report()["tenants"]["a"]
    assert booked["requests"] == 1500
    assert abs(booked["spend_usd"] / 1500 / 0.0004 - 1) <= 0.05
    assert trace.share("large", "a") < 0.2 * baseline.share("large", "a")
    assert pacer.cost_weight("a") is not None and pacer.cost_weight("b") is None
    context = router.featurize(Request(prompt="prove the theorem", context={"tenant": "b"}))
    lam, extra, allowed = pacer.adjust(context, MODELS, np.ones(3), None, 20.0)
    assert lam == 20.0 and not extra.any() and allowed.all()


def test_tenant_and_global_targets_hold_together() -> None:
    """A global cost target and tenant a's share target, with full learning: both hold; b, with no target of
    its own, is paced by the global λ only."""
    clock = Clock()
    config = BudgetConfig.from_strings(["avg_cost_usd=0.0015", "@a:share:large=0.05"])
    router = make_router(config, seed=13, clock=clock)
    trace = simulate(router, 4000, seed=13, clock=clock, tenants=("a", "b"))
    assert abs(trace.array("cost").mean() / 0.0015 - 1) <= 0.05
    assert trace.share("large", "a") <= 0.07
    assert trace.share("large", "b") > 2 * trace.share("large", "a")
    report = pacer_of(router).report()
    assert report["tenants"]["a"]["cost_weight"] == report["global"]["cost_weight"]


def test_a_changed_target_takes_effect_on_the_next_request() -> None:
    clock = Clock()
    config = BudgetConfig.from_strings(["avg_cost_usd=0.002", "spend_usd=10000/1w"])  # the weekly one is slack
    router = make_router(config, seed=7, clock=clock)
    simulate(router, 300, seed=7, clock=clock)
    pacer = pacer_of(router)
    before = pacer.cost_weight()
    assert before is not None
    pacer.set_targets(["avg_cost_usd=0.001", "spend_usd=10000/1w"])  # halved: λ doubles at once, the dual corrects
    assert router.route(Request(prompt="hello friend")).cost_weight == pytest.approx(2 * before)
    pacer.set_targets(["avg_cost_usd=0.001", "spend_usd=10000/1w", "share:large=0"])
    assert all("large" not in router.route(Request(prompt=f"prove theorem {i}")).models for i in range(20))
    spent = target_report(pacer.report(), "spend_usd=10000/1w")["realized"]
    pacer.set_targets([f"spend_usd={spent / 2}/1w"])  # below this period's spend: exhausted at once
    assert router.route(Request(prompt="prove the integral theorem")).models == ("small",)  # the cheapest
    assert pacer.report()["global"]["exhausted"] is True
    pacer.set_targets([])
    assert router.route(Request(prompt="prove the integral theorem")).models == NAMES


def test_exhausted_budget_uses_the_guard_rails_until_the_next_period() -> None:
    clock = Clock()
    config = BudgetConfig.from_strings(["spend_usd=0.05/1000s"], guard_max_usd_per_mtok=5.0, fallback_model="small")
    router = make_router(config, seed=8, clock=clock, cost_weight=1.0)
    exhausted_at: list[float] = []

    def check(i: int) -> None:
        if pacer_of(router).report()["global"]["exhausted"]:
            exhausted_at.append(clock.t)

    trace = simulate(router, 1400, seed=8, clock=clock, mean_gap_s=1.0, before=check)
    time, models = trace.array("time"), trace.array("models")
    assert exhausted_at and exhausted_at[0] < 1000  # 0.05 USD is ~50 requests' worth: it runs out
    after = (time > exhausted_at[0] + 1) & (time < 1000)
    assert after.any() and set(models[after]) <= {"small", "medium"}  # priced ≤ 5 USD per 1M tokens
    assert "large" in set(models[time >= 1000][:100])  # a new period: every model again
    # with no model under the price limit, the fallback; with no usable fallback, the cheapest
    pacer = BudgetPacer(BudgetConfig.from_strings(["spend_usd=0.001/1d"], guard_max_usd_per_mtok=0.1,
                                                  fallback_model="medium"), clock=Clock(10.0))
    context = router.featurize(Request(prompt="hi"))
    pacer.observe(_decision(context, "large", cost=0.002), None)
    costs = np.array([3.0, 2.0, 1.0])
    assert pacer.adjust(context, MODELS, costs, None, 20.0)[2].tolist() == [False, True, False]
    assert pacer.adjust(context, MODELS[::2], costs[::2], None, 20.0)[2].tolist() == [False, True]


def test_cost_step_zero_is_the_hard_cap_baseline() -> None:
    """λ stays at the default; when the period's budget is gone, only the cheapest model until the period ends."""
    clock = Clock()
    router = make_router(BudgetConfig.from_strings(["spend_usd=0.5/1000s"], cost_step=0.0), seed=9, clock=clock)
    trace = simulate(router, 1500, seed=9, clock=clock)
    assert np.all(trace.array("cost_weight") == 20.0)
    time, models, cost = trace.array("time"), trace.array("models"), trace.array("cost")
    first = time < 1000
    limit = 0.5 * (1000 - time[0]) / 1000  # the target starts with the first request: pro rata
    spent = np.cumsum(cost[first])
    gone = int(np.argmax(spent >= limit))
    assert 0 < gone < first.sum() - 100  # λ = 20 spends ≈ 3e-3 per request: the money is gone early
    assert set(models[first][gone + 1 :]) == {"small"}
    assert "large" in set(models[~first])


def test_cost_step_zero_set_on_running_targets_holds_lambda_at_the_default() -> None:
    """`cost_step = 0` (the hard cap) set on targets that had paced kept the λ they had reached (10⁶ after a burst:
    every request to the cheapest model, a hard cap of nothing), also across a retarget and a saved state. The
    docs say it freezes λ at the router's default: it does now, from the PUT on."""
    clock = Clock(1000.0)
    pacer = BudgetPacer(BudgetConfig.from_strings(["spend_usd=0.001/1d", "avg_cost_usd=1e-6"]), clock=clock)
    context = Router(MODELS, "vw-squarecb", seed=0).featurize(Request(prompt="hi"))
    costs = np.array([0.001, 0.01, 0.1])
    for _ in range(20):
        clock.t += 1.0
        pacer.adjust(context, MODELS, costs, None, 20.0)
        pacer.observe(_decision(context, "large", cost=0.1), None)
    assert pacer.cost_weight() == 1e6
    stored = pacer.state()
    pacer.configure(dataclasses.replace(pacer.config, cost_step=0.0))  # PUT the same targets with cost_step = 0
    assert pacer.cost_weight() is None  # no λ of its own: the router's default, set by the next request
    assert pacer.adjust(context, MODELS, costs, None, 20.0)[0] == 20.0
    pacer.observe(_decision(context, "large", cost=0.1), None)
    assert pacer.cost_weight() == 20.0
    pacer.set_targets(["spend_usd=0.002/1d", "avg_cost_usd=1e-6"])  # a retarget does not move it either
    assert pacer.adjust(context, MODELS, costs, None, 20.0)[0] == 20.0
    # a state saved with cost_step = 0 and the λ of before (an older version's) paces at the default too
    stored["config"]["cost_step"] = 0.0
    loaded = BudgetPacer.from_state(stored, clock=clock)
    assert loaded.cost_weight() is None  # its report before a request: the default, not the stored 10⁶
    assert loaded.report()["global"]["targets"][0]["multiplier"] is None
    assert loaded.adjust(context, MODELS, costs, None, 20.0)[0] == 20.0


def test_explicit_cost_weight_wins_and_its_spend_counts() -> None:
    clock = Clock()
    router = make_router(BudgetConfig.from_strings(["avg_cost_usd=0.0005"]), seed=10, clock=clock)
    simulate(router, 300, seed=10, clock=clock)
    pacer = pacer_of(router)
    paced = pacer.cost_weight()
    assert paced is not None and paced != pytest.approx(0.5)
    before = pacer.report()["global"]
    context = router.featurize(Request(prompt="prove the integral theorem"))
    decision = router.decide(context, cost_weight=0.5)
    assert decision.cost_weight == 0.5
    router.learn(decision, Outcome(quality=0.9, cost_usd=0.01))
    after = pacer.report()["global"]
    assert after["requests"] == before["requests"] + 1
    assert after["spend_usd"] == pytest.approx(before["spend_usd"] + 0.01)
    lam = pacer.cost_weight()
    assert lam is not None and lam > paced  # its overspend moved λ for the requests that follow
    assert router.route(Request(prompt="hello")).cost_weight == lam


# -- state --------------------------------------------------------------------------------------------------
def test_state_round_trips_and_continues_identically() -> None:
    clock = Clock()
    config = BudgetConfig.from_strings(
        ["avg_cost_usd=0.002", "share:large=0.3", "latency_p95_s=5", "@a:spend_usd=1/1000s", "@b:share:tier=medium=0.2"]
    )
    router = make_router(config, seed=11, clock=clock)
    simulate(router, 600, seed=11, clock=clock, tenants=("a", "b", ""))
    pacer = pacer_of(router)
    state = json.loads(json.dumps(pacer.state(), allow_nan=False))
    restored = BudgetPacer.from_state(state, clock=clock)
    assert restored.report() == pacer.report()
    assert restored.config == pacer.config
    assert json.dumps(restored.state(), sort_keys=True) == json.dumps(pacer.state(), sort_keys=True)
    # the same calls from here on give the same answers
    context = router.featurize(Request(prompt="prove the theorem", context={"tenant": "a"}))
    for step in range(50):
        clock.t += 0.7
        costs = np.array([1e-4, 9e-4, 6e-3])
        outputs = [p.adjust(context, MODELS, costs, None, 20.0) for p in (pacer, restored)]
        assert outputs[0][0] == outputs[1][0]
        assert np.array_equal(outputs[0][1], outputs[1][1]) and np.array_equal(outputs[0][2], outputs[1][2])
        decision = _decision(context, NAMES[step % 3], cost=float(costs[step % 3]))
        for p in (pacer, restored):
            p.observe(decision, None)
            p.observe(decision, 1.2 * float(costs[step % 3]), latency_s=float(step % 7))
    assert restored.report() == pacer.report()


def test_summary_is_flat_numbers_for_a_simulation_record() -> None:
    clock = Clock()
    config = BudgetConfig.from_strings(["avg_cost_usd=0.002", "@a:share:large=0.2", "@a:latency_p90_s=3"])
    router = make_router(config, seed=14, clock=clock)
    trace = simulate(router, 200, seed=14, clock=clock, tenants=("a", ""))
    summary = pacer_of(router).summary()
    assert summary["budget:avg_cost_usd=0.002:value"] == 0.002
    assert summary["budget:avg_cost_usd=0.002:realized"] == pytest.approx(trace.array("cost").mean())
    assert summary["budget:cost_weight"] == summary["budget:avg_cost_usd=0.002:multiplier"] > 0
    assert summary["budget:@a:share:large=0.2:realized"] == pytest.approx(trace.share("large", "a"))
    assert summary["budget:@a:cost_weight"] == summary["budget:cost_weight"]
    assert set(summary) >= {"budget:@a:latency_p90_s=3:realized", "budget:@a:latency_p90_s=3:multiplier"}
    assert all(isinstance(v, float) for v in summary.values())
    assert math.isnan(BudgetPacer(config).summary()["budget:avg_cost_usd=0.002:realized"])


def test_load_rejects_foreign_or_corrupt_state() -> None:
    pacer = BudgetPacer(BudgetConfig.from_strings(["avg_cost_usd=0.001"]))
    with pytest.raises(InvalidInput, match="not a budget pacer state"):
        pacer.load({"format": "something else"})
    state = pacer.state()
    state["global"]["targets"]["spend_usd/1d"] = {}
    with pytest.raises(InvalidInput, match="targets its config does not"):
        pacer.load(state)
    state = pacer.state()
    del state["global"]["requests"]
    with pytest.raises(InvalidInput, match="corrupt"):
        pacer.load(state)
    state = pacer.state()
    state["global"]["targets"]["avg_cost_usd"]["requests"] = "many"
    state["config"]["avg_cost_usd"] = 0.5
    with pytest.raises(InvalidInput, match="corrupt"):
        pacer.load(state)
    assert pacer.config.targets == (AvgCost(0.001),)  # all or nothing


def test_same_calls_give_the_same_multipliers() -> None:
    def run() -> list[float]:
        clock = Clock()
        router = make_router(BudgetConfig.from_strings(["avg_cost_usd=0.001", "share:large=0.1"]), seed=12, clock=clock)
        return simulate(router, 500, seed=12, clock=clock).cost_weight

    assert run() == run()


def test_late_feedback_corrects_the_booked_spend() -> None:
    """Spend is booked at the expected cost when a decision is made and corrected when the real cost arrives."""
    pacer = BudgetPacer(BudgetConfig.from_strings(["avg_cost_usd=0.001"]), clock=Clock())
    context = Router(MODELS, "random", seed=0).featurize(Request(prompt="hi"))
    pacer.adjust(context, MODELS, np.array([1e-4, 1e-3, 5e-3]), None, 20.0)
    decision = _decision(context, "large", cost=0.005)
    pacer.observe(decision, None)
    assert pacer.report()["global"]["spend_usd"] == pytest.approx(0.005)
    lam = pacer.cost_weight()
    assert lam == pytest.approx(20.0 * math.exp(0.05 * (0.005 - 0.001) / 0.001))
    pacer.observe(decision, 0.003)
    assert pacer.report()["global"]["spend_usd"] == pytest.approx(0.003)
    assert pacer.cost_weight() == pytest.approx(20.0 * math.exp(0.05 * (0.003 - 0.001) / 0.001))


def _made(context: Any, model: str, at: float, *, cost: float) -> Decision:
    """`_decision` made at `at` on the pacer's clock (`created_at`, Unix time in the service)."""
    return dataclasses.replace(_decision(context, model, cost=cost), decision_id=f"d-{at}", created_at=at)


def test_a_refund_of_a_booking_made_before_the_period_grants_the_new_period_nothing() -> None:
    """Booked at 23:59:55 at ĉ = 0.8, its real cost 0.05 arrives at 00:00:30: the −0.75 belongs to the day that
    booked the 0.8, not to the new one (was: the new day's spend −0.75, 1.75 USD spendable against a limit of 1).
    Money paid beyond a booking still counts where it arrives, and a refund of the period's own booking counts."""
    clock = Clock(86400 - 5)
    pacer = BudgetPacer(BudgetConfig.from_strings(["spend_usd=1/1d"]), clock=clock)
    context = Router(MODELS, "random", seed=0).featurize(Request(prompt="hi"))
    late, over = _made(context, "large", 86400 - 5, cost=0.8), _made(context, "large", 86400 - 4, cost=0.1)
    pacer.observe(late, None)
    pacer.observe(over, None)
    clock.t = 86400 + 30
    pacer.observe(late, 0.05)
    report = target_report(pacer.report(), "spend_usd=1/1d")
    assert report["period_start"] == 86400 and report["realized"] == 0.0 and report["limit_usd"] == 1.0
    pacer.observe(over, 0.3)  # 0.2 paid beyond its booking: charged to the day it was paid in
    assert target_report(pacer.report(), "spend_usd=1/1d")["realized"] == pytest.approx(0.2)
    own = _made(context, "large", clock.t - 0.001, cost=0.5)  # made an instant before its booking
    pacer.observe(own, None)
    pacer.observe(own, 0.1)
    assert target_report(pacer.report(), "spend_usd=1/1d")["realized"] == pytest.approx(0.3)


def test_a_refund_of_a_booking_made_before_a_tenant_had_targets_is_not_the_tenants() -> None:
    """A decision booked before `@acme` had a target, a PUT adding one, then its feedback: acme's spend stays 0
    (was −0.75: a budget granted from a refund of a booking it never made); the global scope, which booked it,
    gets the refund. Likewise an average cost target whose value changed: its average restarts with it."""
    clock = Clock(1000.0)
    pacer = BudgetPacer(BudgetConfig.from_strings(["avg_cost_usd=0.5"]), clock=clock)
    context = Router(MODELS, "random", seed=0).featurize(Request(prompt="hi", context={"tenant": "acme"}))
    decision = _made(context, "large", 1000.0, cost=0.8)
    pacer.observe(decision, None)
    clock.t += 5
    pacer.set_targets(["spend_usd=0.5/1d"], tenant="acme")
    pacer.set_targets(["avg_cost_usd=0.4"])
    clock.t += 5
    newer = _made(context, "small", clock.t, cost=0.1)
    pacer.observe(newer, None)
    pacer.observe(decision, 0.05)
    report = pacer.report()
    assert report["global"]["spend_usd"] == pytest.approx(0.15)
    assert report["tenants"]["acme"]["spend_usd"] == pytest.approx(0.1)
    assert target_report(report, "spend_usd=0.5/1d", "acme")["realized"] == pytest.approx(0.1)
    assert target_report(report, "avg_cost_usd=0.4")["realized"] == pytest.approx(0.1)
    restored = BudgetPacer.from_state(json.loads(json.dumps(pacer.state())), clock=clock)
    restored.observe(newer, 0.04)  # its own booking, also after a restart: refunded
    assert target_report(restored.report(), "spend_usd=0.5/1d", "acme")["realized"] == pytest.approx(0.04)
    assert target_report(restored.report(), "avg_cost_usd=0.4")["realized"] == pytest.approx(0.04)



def test_adopting_when_the_targets_were_set_skips_a_stored_time_that_is_no_finite_number() -> None:
    """`adopt_since` (a process following a PUT takes when its targets were set from the stored state) leaves a
    `since` stored as no finite number as it is, an int beyond a float's range included (it raised OverflowError,
    which the follower would have met again at every retry), and takes a finite one."""
    pacer = BudgetPacer(BudgetConfig.from_strings(["spend_usd=0.5/1d"]), clock=Clock(1000.0))
    pacer.set_targets(["spend_usd=0.5/1d"], tenant="acme")
    state = pacer.state()
    for bad in (10**400, "soon", True, math.nan):
        state["tenants"]["acme"]["since"] = bad
        state["tenants"]["acme"]["targets"]["spend_usd/1d"]["since"] = bad
        pacer.adopt_since(state)
        assert pacer.state()["tenants"]["acme"]["since"] == 1000.0
        assert pacer.state()["tenants"]["acme"]["targets"]["spend_usd/1d"]["since"] == 1000.0
    state["tenants"]["acme"]["since"] = 990
    pacer.adopt_since(state)
    assert pacer.state()["tenants"]["acme"]["since"] == 990.0

def test_a_slack_cost_target_stops_lowering_lambda_where_decisions_stop_changing() -> None:
    """Far under its target, λ falls only to ε / (ĉ_max − ĉ_min) (ε = 0.01 quality points), not to
    min_cost_weight: below that no decision changes, and λ would take long to climb back."""
    pacer = BudgetPacer(BudgetConfig.from_strings(["avg_cost_usd=1"]), clock=Clock())
    context = Router(MODELS, "random", seed=0).featurize(Request(prompt="hi"))
    costs = (1e-4, 1e-3, 1e-2)
    for _ in range(2000):
        pacer.adjust(context, MODELS, np.array(costs), None, 20.0)
        pacer.observe(_decision(context, "small", cost=1e-4, expected=costs), None)
    assert pacer.cost_weight() == pytest.approx(0.01 / (1e-2 - 1e-4))
    assert pacer.config.min_cost_weight < 0.02


def test_a_spend_target_set_mid_period_gets_the_rest_of_the_period_pro_rata() -> None:
    clock = Clock(2500.0)  # half-way through the period [2000, 3000)
    pacer = BudgetPacer(BudgetConfig.from_strings(["spend_usd=1/1000s"]), clock=clock)
    context = Router(MODELS, "random", seed=0).featurize(Request(prompt="hi"))
    pacer.adjust(context, MODELS, np.ones(3), None, 20.0)
    pacer.observe(_decision(context, "large", cost=0.49), None)
    report = target_report(pacer.report(), "spend_usd=1/1000s")
    assert report["limit_usd"] == pytest.approx(0.5) and not report["exhausted"]
    pacer.observe(_decision(context, "large", cost=0.02), None)
    assert target_report(pacer.report(), "spend_usd=1/1000s")["exhausted"]
    clock.t = 3000.0  # the next period: the whole budget
    pacer.adjust(context, MODELS, np.ones(3), None, 20.0)
    report = target_report(pacer.report(), "spend_usd=1/1000s")
    assert report["limit_usd"] == 1.0 and report["realized"] == 0.0 and not report["exhausted"]


def _decision(context: Any, model: str, *, cost: float, expected: Sequence[float] | None = None) -> Decision:
    """A decision for `model` whose expected cost is `cost` (the others' `expected`, or 0)."""
    return Decision(
        decision_id=f"d-{model}",
        model=model,
        arm=NAMES.index(model),
        models=NAMES,
        pmf=tuple(1.0 if n == model else 0.0 for n in NAMES),
        probability=1.0,
        policy="test",
        policy_version=0,
        cost_weight=20.0,
        context=context,
        expected_cost_usd=tuple(
            cost if n == model else (0.0 if expected is None else expected[i]) for i, n in enumerate(NAMES)
        ),
    )


def test_a_spend_report_before_the_first_request_names_no_period() -> None:
    from bandit_router.budgets import BudgetConfig, BudgetPacer

    pacer = BudgetPacer(BudgetConfig.from_strings(["spend_usd=5/1d"]), clock=lambda: 1_000_000.0)
    target = pacer.report()["global"]["targets"][0]
    assert target["period_start"] is None and target["period_end"] is None


def test_a_spend_report_after_its_period_ended_reads_the_new_period() -> None:
    """A day's budget spent, then no request after midnight: the report (`GET /v1/budgets`, the dashboard, the
    metrics) still read yesterday: its spend as this period's, `exhausted` and `holds: false`, yesterday's bounds,
    until the next request rolled the period. It reads the period of the clock, as the next request will find it,
    without changing the pacer's state."""
    midnight = 1_000_080_000.0  # a multiple of 86400
    clock = Clock(midnight - 600)
    pacer = BudgetPacer(BudgetConfig.from_strings(["spend_usd=1/1d", "@acme:spend_usd=0.5/1d"]), clock=clock)
    context = Router(MODELS, "vw-squarecb", seed=0).featurize(Request(prompt="hi", context={"tenant": "acme"}))
    pacer.observe(_decision(context, "large", cost=1.5), None)
    assert pacer.report()["global"]["exhausted"] is True
    saved = pacer.state()
    clock.t = midnight + 60
    report = pacer.report()
    for scope, budget in ((report["global"], 1.0), (report["tenants"]["acme"], 0.5)):
        assert scope["exhausted"] is False
        day = scope["targets"][0]
        assert (day["period_start"], day["period_end"]) == (midnight, midnight + 86400)
        assert day["realized"] == 0.0 and day["holds"] is True and day["exhausted"] is False
        assert day["limit_usd"] == budget and day["plan_usd"] == pytest.approx(budget * 60 / 86400)
    assert pacer.state() == saved  # reading moved nothing


def test_a_tag_share_counts_decisions_of_models_the_pacer_never_priced() -> None:
    """The pacer learnt a model's tags only when it priced a request offering it, so a decision it booked without
    that (another process's, read from the log by a worker that had served nothing yet or after a restart; a model
    the caller named; a named router's answer) counted as a request but not as a hit of `share:tag:tier=large`:
    realised 0 where every decision went to `large`, and μ fell. The router tells its pacer every model's tags:
    those it holds when the pacer is given or attached, each model added later, and those a restored snapshot
    holds."""
    config = BudgetConfig.from_strings(["share:tag:tier=large=0.3"])
    context = Router(MODELS, "vw-squarecb", seed=0).featurize(Request(prompt="hi"))
    given = BudgetPacer(config, clock=Clock(10.0))
    Router(MODELS, "vw-squarecb", seed=1, pacer=given)
    attached = BudgetPacer(config, clock=Clock(10.0))
    router = Router(MODELS[:2], "vw-squarecb", seed=2)
    router.pacer = attached  # as the service's start attaches it
    router.add_model(MODELS[2])  # POST /v1/models, or another process's, followed
    restored = BudgetPacer(config, clock=Clock(10.0))  # a snapshot holding a model the router was built without
    router = Router(MODELS[:2], "vw-squarecb", seed=2, pacer=restored)
    grown = Router(MODELS[:2], "vw-squarecb", seed=2)
    grown.add_model(MODELS[2])
    router.restore(grown.snapshot())
    for pacer in (given, attached, restored):
        pacer.observe(_decision(context, "large", cost=0.01), None)
        share = target_report(pacer.report(), "share:tag:tier=large=0.3")
        assert share["realized"] == 1.0 and share["holds"] is False
        assert share["multiplier"] == pytest.approx(0.02 * 0.7)  # μ rose by η_s·(1 − s)


def test_a_spend_period_entered_while_the_clock_ran_ahead_gives_way_once_it_is_set_back() -> None:
    """A clock stepped a year ahead, then set right: the spend period the pacer entered meanwhile (a year ahead)
    stayed current until real time reached it (a year of one period's budget, exhausted long before), and every
    gap between requests read 0 until then (the plan credited nothing, the gap estimate fell to 0). Set back by
    more than a minute, the pacer moves to the period of the clock's reading, keeping what was booked meanwhile,
    and measures the gaps from the new reading."""
    start = 1_000_000_000.0
    clock = Clock(start)
    pacer = BudgetPacer(BudgetConfig.from_strings(["spend_usd=1/1d"]), clock=clock)
    context = Router(MODELS, "vw-squarecb", seed=0).featurize(Request(prompt="hi"))
    for step in (0.0, 365 * 86400.0, 3600.0, 3660.0, 3720.0):
        clock.t = start + step
        pacer.observe(_decision(context, "small", cost=0.01), None)
    spend = pacer.report()["global"]["targets"][0]
    assert spend["period_start"] == math.floor((start + 3720.0) / 86400) * 86400.0  # not a year ahead
    # the day's booking before the step (lost without the return to the period left: 0.04), the year-ahead
    # period's, then three more
    assert spend["realized"] == pytest.approx(0.05)
    assert pacer.state()["global"]["last_time"] == start + 3720.0  # gaps measured from now on, not read as 0


def test_a_clock_run_ahead_then_set_right_starts_the_real_next_day_afresh() -> None:
    """A clock 10 minutes fast entered the next day early (0.10 booked there), then was set right: the pacer went
    back to the day it left, with that day's spend plus the 0.10. It still remembered the early next day as the
    period it left, so the real midnight "returned" to it and the new day started with the 0.10 and all spent since
    the correction (0.41 where 0.01 was booked). A period returned to is forgotten: the new day counts 0.01."""
    midnight = 1_000_080_000.0  # a multiple of 86400
    clock = Clock(midnight - 1800)
    pacer = BudgetPacer(BudgetConfig.from_strings(["spend_usd=1/1d"]), clock=clock)
    context = Router(MODELS, "vw-squarecb", seed=0).featurize(Request(prompt="hi"))
    pacer.observe(_decision(context, "small", cost=0.20), None)
    clock.t = midnight + 60  # 10 minutes fast: "after midnight" at 23:51
    pacer.observe(_decision(context, "small", cost=0.10), None)
    clock.t = midnight - 480  # set right
    for _ in range(3):
        pacer.observe(_decision(context, "small", cost=0.10), None)
    day = pacer.report()["global"]["targets"][0]
    assert day["period_start"] == midnight - 86400 and day["realized"] == pytest.approx(0.60)
    clock.t = midnight + 60  # the real midnight
    pacer.observe(_decision(context, "small", cost=0.01), None)
    day = pacer.report()["global"]["targets"][0]
    assert day["period_start"] == midnight and day["realized"] == pytest.approx(0.01)


def test_a_clock_set_back_wrongly_then_set_right_keeps_the_days_spend() -> None:
    """A clock set back a day by mistake, then set right a minute later: the pacer moved to the earlier period
    carrying the day's spend, then entered the day's period again as a new one with spend 0, and a whole budget
    more could be spent that day (0.90 of 1 USD spent, then 0.05 counted after the correction). Entering the period
    it left last, the pacer counts what was spent there plus what was booked meanwhile: 1.00, exhausted."""
    start = 1_000_000_000.0 - 1_000_000_000.0 % 86400 + 3600.0  # 01:00 of a day
    clock = Clock(start)
    pacer = BudgetPacer(BudgetConfig.from_strings(["spend_usd=1/1d"]), clock=clock)
    context = Router(MODELS, "vw-squarecb", seed=0).featurize(Request(prompt="hi"))
    for i in range(9):
        clock.t = start + 60 * i
        pacer.observe(_decision(context, "small", cost=0.10), None)
    clock.t = start + 600 - 86400  # set back a day
    pacer.observe(_decision(context, "small", cost=0.05), None)
    assert pacer.report()["global"]["targets"][0]["realized"] == pytest.approx(0.95)  # carried into the day before
    clock.t = start + 660  # set right
    pacer.observe(_decision(context, "small", cost=0.05), None)
    spend = pacer.report()["global"]["targets"][0]
    assert spend["period_start"] == start - 3600.0
    assert spend["realized"] == pytest.approx(1.00)
    assert spend["exhausted"] is True
    clock.t = start + 86400  # the next day, in real time: a new period
    pacer.observe(_decision(context, "small", cost=0.05), None)
    assert pacer.report()["global"]["targets"][0]["realized"] == pytest.approx(0.05)
    restored = BudgetPacer(BudgetConfig.from_strings(["spend_usd=1/1d"]), clock=clock)
    restored.load(pacer.state())
    assert restored.state() == pacer.state()


def test_reconfiguring_unchanged_targets_keeps_when_they_were_set() -> None:
    """Review of spend24: a worker re-reads the stored targets (`configure_stored`) and a PUT may change only other
    targets or tenants; neither moves `since` of the targets it leaves as they were (else refunds of their own
    bookings would be dropped): a refund of a decision booked between counts."""
    clock = Clock(1000.0)
    pacer = BudgetPacer(BudgetConfig.from_strings(["avg_cost_usd=0.5", "spend_usd=1/1d"]), clock=clock)
    pacer.set_targets(["spend_usd=1/1d"], tenant="acme")
    context = Router(MODELS, "random", seed=0).featurize(Request(prompt="hi", context={"tenant": "acme"}))
    decision = _made(context, "large", 1001.0, cost=0.8)
    pacer.observe(decision, None)
    clock.t = 1002.0
    pacer.configure_stored(json.loads(json.dumps(pacer.config.to_mapping())))
    pacer.set_targets(["spend_usd=2/1d"], tenant="bob")
    pacer.set_targets(["avg_cost_usd=0.5", "spend_usd=1/1d", "share:large=0.5"])
    pacer.observe(decision, 0.1)
    report = pacer.report()
    assert report["tenants"]["acme"]["spend_usd"] == pytest.approx(0.1)
    assert target_report(report, "spend_usd=1/1d", "acme")["realized"] == pytest.approx(0.1)
    assert target_report(report, "spend_usd=1/1d")["realized"] == pytest.approx(0.1)
    assert target_report(report, "avg_cost_usd=0.5")["realized"] == pytest.approx(0.1)
