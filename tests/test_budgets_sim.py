"""Budget targets in the simulator: a seeded run whose spend converges to the target, `--target` on the command
line, and the realised value of every target in every `summary.json` record."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bandit_router.cli import app
from simulator.budgets import TargetPacers
from simulator.environments import EnvSpec
from simulator.runner import Plan, simulate

STEPS = 3000


def test_seeded_spend_converges_to_the_target() -> None:
    target = "spend_usd=1/1000s"  # 0.001 USD per step on average
    plan = Plan(
        env=EnvSpec.parse("synthetic:default"),
        policies=("vw-squarecb",),
        seeds=(3,),
        steps=STEPS,
        pacer_factory=TargetPacers((target,)),
    )
    result = simulate(plan, workers=1)
    run = result.runs[0]
    realized = run.extra[f"target:{target}:realized"]
    assert realized == pytest.approx(1.0, rel=0.05)  # within ±5 % over the run
    assert run.extra[f"target:{target}:max_period"] <= 1.15  # and no 1,000-step period above +15 %
    # the unpaced router at the same starting λ spends far more: the pacer did the work
    free = simulate(Plan(env=plan.env, policies=plan.policies, seeds=plan.seeds, steps=STEPS), workers=1).runs[0]
    assert free.mean_cost_usd > 1.3 * run.mean_cost_usd
    # every baseline record reports the target too
    assert all(not math.isnan(b.extra[f"target:{target}:realized"]) for b in result.baselines)


def test_target_option_reports_realized_values(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    reply = CliRunner().invoke(app, [
        "simulate", "--env", "synthetic:default", "--policies", "vw-squarecb", "--steps", "600", "--seeds", "1",
        "--workers", "1", "--no-plots", "--quiet", "--out", str(out),
        "--target", "avg_cost_usd=0.001", "--target", "share:gpt-4o=0.3",
    ])
    assert reply.exit_code == 0, reply.output
    data = json.loads((out / "summary.json").read_text())
    records = data["results"] + data["oracle"] + data["fixed"]
    for record in records:
        for t in ("avg_cost_usd=0.001", "share:gpt-4o=0.3"):
            assert f"target:{t}:realized" in record and f"target:{t}:value" in record
    router = data["results"][0]
    assert router["budget:avg_cost_usd=0.001:value"] == 0.001
    assert router["target:share:gpt-4o=0.3:realized"] <= 0.3 + 0.05
    bad = CliRunner().invoke(app, ["simulate", "--env", "synthetic:default", "--out", str(out), "--target", "x=1"])
    assert bad.exit_code != 0


def test_a_share_target_that_picks_no_model_of_the_run_is_refused(tmp_path: Path) -> None:
    """`--target share:gpt-4o-mni=0.1` (a typo) ran to the end as a target that never binds; the service refuses such
    a share, and so does the simulator now, naming the run's models."""
    reply = CliRunner().invoke(app, [
        "simulate", "--env", "synthetic:default", "--policies", "random", "--steps", "50", "--seeds", "1",
        "--workers", "1", "--no-plots", "--quiet", "--out", str(tmp_path / "sim"), "--target", "share:gpt-4o-mni=0.1",
    ])
    assert reply.exit_code == 2, reply.output
    assert "share:gpt-4o-mni=0.1: no model of the run is picked by that selector; models: " in reply.output
    # a model a scenario brings in later is a model of the run: a share target may name it
    later = CliRunner().invoke(app, [
        "simulate", "--env", "synthetic:default", "--scenario", "new-model", "--policies", "default", "--steps",
        "300", "--seeds", "1", "--workers", "1", "--no-plots", "--quiet", "--out", str(tmp_path / "later"),
        "--target", "share:claude-haiku-4-5=0.1",
    ])
    assert later.exit_code == 0, later.output


def test_a_tenants_target_without_a_tenant_column_is_refused(tmp_path: Path) -> None:
    """`--target @acme:avg_cost_usd=0.001` ran to the end as a target that never binds: simulated requests carry a
    tenant only from a dataset's `tenant` column given as a context column."""
    reply = CliRunner().invoke(app, [
        "simulate", "--env", "synthetic:default", "--policies", "random", "--steps", "50", "--seeds", "1",
        "--workers", "1", "--no-plots", "--quiet", "--out", str(tmp_path / "sim"),
        "--target", "@acme:avg_cost_usd=0.001",
    ])
    assert reply.exit_code == 2, reply.output
    assert "would never bind" in " ".join(reply.output.replace("│", " ").split())


def test_a_latency_target_on_a_table_without_latencies_is_refused() -> None:
    """A dataset carries no latencies: the target never bound, and every record reported its realised value as
    null after the whole run."""
    from bandit_router.errors import InvalidInput

    sample = Path(__file__).parent / "data" / "routellm_sample.csv.gz"
    plan = Plan(env=EnvSpec.parse(f"dataset:{sample}"), policies=("default",), steps=20,
                pacer_factory=TargetPacers(("latency_p95_s=2",)))
    with pytest.raises(InvalidInput, match=r"latency_p95_s=2: .* has no latencies, so a latency target never binds"):
        simulate(plan, workers=1)


def test_a_spend_period_that_is_not_a_whole_number_of_steps_is_measured_per_period() -> None:
    """`realized_values` rounded the period to whole steps: `spend_usd=…/0.5s` read USD per step (twice USD per
    period) and `…/1.5s` USD per 2 steps (a third too high), `:max_period` summed the same rounded windows. Each
    step is at `step × seconds_per_step` on the pacer's clock, whose periods start at multiples of P: realised is
    total × P / run length, and `:max_period` the most paid in one period the run covers whole."""
    from bandit_router.budgets import BudgetConfig
    from bandit_router.catalog import default_catalog
    from simulator.budgets import realized_values

    models = list(default_catalog())[:1]
    cost = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # steps 0..5, one second each: 21 USD over 6 s
    chosen = np.zeros(len(cost), dtype=np.int64)
    texts = ["spend_usd=1/0.5s", "spend_usd=1/1.5s", "spend_usd=1/2s", "spend_usd=1/4s"]
    out = realized_values(BudgetConfig.from_strings(texts), models, chosen, cost, None)
    assert out["target:spend_usd=1/0.5s:realized"] == pytest.approx(21 * 0.5 / 6)
    assert out["target:spend_usd=1/0.5s:max_period"] == 6.0  # each step alone in its half-second period
    assert out["target:spend_usd=1/1.5s:realized"] == pytest.approx(21 * 1.5 / 6)
    assert out["target:spend_usd=1/1.5s:max_period"] == 9.0  # periods [0, 1.5) [1.5, 3) [3, 4.5) [4.5, 6): 3 3 9 6
    assert out["target:spend_usd=1/2s:realized"] == pytest.approx(7.0)  # whole steps: as before
    assert out["target:spend_usd=1/2s:max_period"] == 11.0
    assert out["target:spend_usd=1/4s:max_period"] == 10.0  # [0, 4) is whole, [4, 8) is not


def test_a_simulated_refund_counts_in_the_simulated_period_its_booking_was_made_in() -> None:
    """A decision's `created_at` is wall time, the simulated pacer's clock the step: the pacer notes each booking's
    simulated time, so a refund arriving in the next period is dropped there and one in the booking's own period
    counts (compared with wall time, a refund from the period before counted: the new period's spend −0.75)."""
    import dataclasses
    import time

    from bandit_router import BudgetConfig, Request, Router
    from simulator.budgets import SimulatedPacer
    from tests.test_budgets import MODELS, _decision, target_report

    pacer = SimulatedPacer(BudgetConfig.from_strings(["spend_usd=1/1000s"]))
    context = Router(MODELS, "random", seed=0).featurize(Request(prompt="hi"))
    late, own = (dataclasses.replace(_decision(context, "large", cost=0.8), decision_id=name, created_at=time.time())
                 for name in ("late", "own"))
    pacer.tick(995)
    pacer.observe(late, None)
    pacer.tick(1010)
    pacer.observe(own, None)
    pacer.tick(1030)
    pacer.observe(late, 0.05)
    pacer.observe(own, 0.1)
    assert target_report(pacer.report(), "spend_usd=1/1000s")["realized"] == pytest.approx(0.1)


def test_the_simulated_pacer_forgets_the_booking_of_a_decision_whose_feedback_is_lost() -> None:
    """Review of spend24: the simulated pacer noted every booking's time by decision id until its feedback came, so
    a run whose feedback is lost (`delayed-feedback`: 10 %) kept one note per lost decision for the whole run (20000
    here; ≈ 13 MB per 100k). It notes them by the decision object now: a lost one, dropped by the simulation, is
    forgotten with it; a refund of a held decision booked in the current period still counts."""
    import dataclasses

    from bandit_router import BudgetConfig, Request, Router
    from simulator.budgets import SimulatedPacer
    from tests.test_budgets import MODELS, _decision, target_report

    pacer = SimulatedPacer(BudgetConfig.from_strings(["spend_usd=1000/100s"]))
    context = Router(MODELS, "random", seed=0).featurize(Request(prompt="hi"))
    base = _decision(context, "large", cost=0.8)
    held = []
    for step in range(20000):
        pacer.tick(step)
        decision = dataclasses.replace(base, decision_id=f"d{step}")
        pacer.observe(decision, None)
        if step in (5, 19950):
            held.append(decision)
    del decision  # the loop's last one: its feedback lost too
    assert len(pacer._booked_times) == 2
    for decision in held:  # the first booked in a period long gone (dropped there), the other in this one
        pacer.observe(decision, 0.1)
    assert target_report(pacer.report(), "spend_usd=1000/100s")["realized"] == pytest.approx(100 * 0.8 - 0.7)
