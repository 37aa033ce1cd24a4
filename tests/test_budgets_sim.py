"""Budget targets in the simulator: a seeded run whose spend converges to the target, `--target` on the command
line, and the realised value of every target in every `summary.json` record."""

from __future__ import annotations

import json
import math
from pathlib import Path

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
