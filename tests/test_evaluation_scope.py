"""`evaluate` on part of a log: a time range (`since`, `until`) and a tenant, besides one live policy (`Scope`).
Every decision still teaches the replayed candidates; only those in the scope are scored."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*install `httpx2`.*")
    from fastapi.testclient import TestClient

from bandit_router.cli import app as cli_app
from bandit_router.config import Settings
from bandit_router.errors import InvalidInput
from bandit_router.evaluation import LoggedRecord, Scope, evaluate_log, format_markdown, parse_time
from bandit_router.evaluation.synthetic import make_world, simulate_log
from bandit_router.service import create_app

PAIR = ["gpt-4o-mini", "gpt-4o"]


def _with_tenants(records: Sequence[LoggedRecord], tenant: Any) -> list[LoggedRecord]:
    """`records` with the context's `tenant` set by `tenant(i)` (None: no tenant)."""
    out = []
    for i, r in enumerate(records):
        context = r.decision.context
        attributes = {**context.attributes, "tenant": tenant(i)} if tenant(i) is not None else context.attributes
        decision = dataclasses.replace(r.decision, context=dataclasses.replace(context, attributes=attributes))
        out.append(dataclasses.replace(r, decision=decision))
    return out


@pytest.fixture(scope="module")
def log() -> tuple[Any, list[LoggedRecord]]:
    world = make_world(seed=5)
    records = simulate_log(world, "random", 300, seed=5, cost_weight=20.0).records  # decision t made at time t
    return world, _with_tenants(records, lambda i: ("acme", 5.0, None)[i % 3])


@pytest.mark.parametrize("mode", ["learning", "replay"])
def test_a_time_range_scores_its_decisions_and_every_decision_still_teaches(log: Any, mode: str) -> None:
    """Decisions made in [since, until) are scored, and there the candidate's pmfs (in the replay mode also its
    accepted rounds) are exactly the whole log's replay's: the decisions before the range taught it as they taught
    the live policy."""
    world, records = log
    kwargs: dict[str, Any] = {"models": world.models, "estimators": ("snips",), "baselines": False, "mode": mode,
                              "n_bootstrap": 0}
    whole = evaluate_log(records, ["linucb"], **kwargs)
    part = evaluate_log(records, ["linucb"], since=200, until=260, **kwargs)
    a, b = whole.replays["linucb"], part.replays["linucb"]
    inside = np.zeros(len(records), dtype=bool)
    inside[200:260] = True
    assert not b.evaluated[~inside].any()
    assert b.evaluated[inside].tolist() == a.evaluated[inside].tolist()
    assert np.array_equal(a.target_pmf[inside], b.target_pmf[inside])
    if mode == "learning":
        assert part.n_evaluated == 60
    assert part.settings["since"] == 200.0 and part.settings["until"] == 260.0 and part.settings["tenant"] is None
    assert "the decisions in the scope: since 1970-01-01T00:03:20Z, until 1970-01-01T00:04:20Z" in format_markdown(part)


def test_a_tenant_is_read_as_the_service_reads_it(log: Any) -> None:
    """tenant 5, "5" and "5.0" all name the tenant of the contexts whose `tenant` was 5.0 (JSON does not tell 5 from
    5.0); the scope combines with a time range."""
    world, records = log
    kwargs: dict[str, Any] = {"models": world.models, "estimators": ("snips",), "baselines": False, "n_bootstrap": 0}
    for tenant in (5, "5", "5.0"):
        assert evaluate_log(records, ["logged"], tenant=tenant, **kwargs).n_evaluated == 100
    assert evaluate_log(records, ["logged"], tenant="acme", since=150, **kwargs).n_evaluated == 50
    scoped = evaluate_log(records, ["logged"], tenant="acme", **kwargs)
    assert scoped.settings["tenant"] == "acme"
    logged = scoped.record("logged", "snips")
    rewards = [r.outcome.quality - 20.0 * r.outcome.cost_usd for r in records[::3] if r.outcome is not None]
    assert logged.value == pytest.approx(np.mean(rewards), abs=1e-9)  # the logged policy on acme's decisions


def test_a_scope_no_decision_is_in_is_refused_with_what_the_log_holds(log: Any) -> None:
    world, records = log
    kwargs: dict[str, Any] = {"models": world.models, "estimators": ("snips",), "baselines": False}
    with pytest.raises(InvalidInput, match=r"none of the 300 decisions with feedback is in the scope \(since "
                                           r"1970-01-01T00:16:40Z\); they were made from 1970-01-01T00:00:00Z to "
                                           r"1970-01-01T00:04:59Z"):
        evaluate_log(records, ["logged"], since=1000, **kwargs)
    with pytest.raises(InvalidInput, match=r"their tenants: 'acme' \(100\), '5' \(100\), \(none\) \(100\)"):
        evaluate_log(records, ["logged"], tenant="globex", **kwargs)
    with pytest.raises(InvalidInput, match=r"scope \(until 1970-01-01T00:01:40Z\): none of its 100 decisions with "
                                           r"feedback is in the part of the log the frozen mode evaluates"):
        evaluate_log(records, ["logged"], until=100, mode="frozen", **kwargs)


def _pinned(record: LoggedRecord, model: str) -> LoggedRecord:
    """`record` as if its client had allowed `model` only (and got it)."""
    decision = dataclasses.replace(record.decision, models=(model,), pmf=(1.0,), probability=1.0, model=model, arm=0)
    return dataclasses.replace(record, decision=decision, shadow_pmfs={})


@pytest.mark.parametrize("mode", ["learning", "frozen", "replay"])
def test_decisions_no_candidate_can_decide_are_counted_and_refused_within_the_scope(log: Any, mode: str) -> None:
    """The decisions that allowed only a model the catalog no longer routes to (or has no entry for) were counted
    over the whole log, whatever the scope ("3 of the 300 decisions … to evaluate on" when 60 were), and a scope all
    of whose decisions were such refused nothing: "no logged decision with feedback to evaluate on" (learning), a
    table of 0 rounds with exit status 0 (replay), "none of its 1 decisions … is in the part of the log the frozen
    mode evaluates" (frozen, of a decision that was). Both count the decisions in the scope now; a removed model's
    rounds without a cost are asked only there. Found reviewing `--since`/`--until` on a service log."""
    world, records = log
    judge = world.models[-1].name
    demoted = [*world.models[:-1], dataclasses.replace(world.models[-1], route=False)]
    pins = {5, 205, 210, 255}
    odd = [_pinned(r, judge) if i in pins else r for i, r in enumerate(records)]
    kwargs: dict[str, Any] = {"models": demoted, "estimators": ("snips",), "baselines": False, "mode": mode,
                              "n_bootstrap": 0}
    part = evaluate_log(odd, ["linucb"], since=200, until=260, **kwargs)
    assert (f"3 of the 60 decisions with feedback to evaluate on in the scope allowed only models the catalog marks "
            f"route = false ({judge}): no candidate can decide them") in "\n".join(part.warnings)
    with pytest.raises(InvalidInput, match=r"^nothing to evaluate on: 1 of the 1 decision with feedback to evaluate "
                                           r"on in the scope allowed only models the catalog marks route = false"):
        evaluate_log(odd, ["linucb"], since=255, until=256, **kwargs)
    unpriced = [dataclasses.replace(r, cost_usd=None, outcome=dataclasses.replace(r.outcome, cost_usd=None))
                if r.decision.model == judge and r.outcome is not None else r for r in records[:200]] + records[200:]
    kept = world.models[:-1]  # its rounds before the scope are scored by no estimate: not asked
    assert evaluate_log(unpriced, ["linucb"], **{**kwargs, "models": kept}, since=200).n_evaluated > 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"since": 10, "until": 10}, r"since \(1970-01-01T00:00:10Z\) must be before until"),
        ({"since": -1}, r"since: a Unix time in seconds from 0 to"),
        ({"until": float("nan")}, r"until: a Unix time in seconds"),
        ({"since": "2026-11-20"}, r"since must be a Unix time in seconds or None, got '2026-11-20'"),
        ({"since": True}, r"since must be a Unix time"),
        ({"tenant": ""}, r"tenant must not be empty"),
        ({"tenant": ["acme"]}, r"tenant must be a tenant's name"),
    ],
)
def test_bad_scopes_are_refused_with_a_message(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Scope(**settings)


def test_times_are_read_as_unix_seconds_or_iso_8601() -> None:
    assert parse_time("1764547200") == 1764547200.0
    assert parse_time("2025-12-01") == 1764547200.0  # a date: midnight, UTC
    assert parse_time("2025-12-01T01:30Z") == parse_time("2025-12-01T02:30:00+01:00") == 1764552600.0
    assert parse_time("2025-12-01T01:30") == 1764552600.0  # no offset: UTC
    for bad in ("yesterday", "2025-13-01", "-5", "inf", ""):
        with pytest.raises(InvalidInput, match="--since"):
            parse_time(bad, "--since")


def test_a_number_out_of_range_is_said_as_such_and_a_fraction_of_a_second_is_kept_in_words() -> None:
    """A number of seconds out of range ("-5", "1e12", "nan") was refused as "expected Unix seconds or an ISO 8601
    date or time", which it is: the range error was lost (`InvalidInput` is a `ValueError`, caught to try ISO 8601).
    And a scope's words showed its bounds to the second, so `since` 10.7 and `until` 10.2 were refused as "since
    (…:10Z) must be before until (…:10Z)". Found reviewing `parse_time`."""
    for bad, shown in (("-5", "'-5' (-5.0 s)"), ("1e12", "'1e12' (1000000000000.0 s)"), ("nan", "nan"),
                       ("1969-12-31", "'1969-12-31' (-86400.0 s)")):
        with pytest.raises(InvalidInput, match=rf"^--since: a Unix time in seconds from 0 to 100000000000 \(year "
                                               rf"5138\), not {re.escape(shown)}$"):
            parse_time(bad, "--since")
    assert Scope(since=10.25, until=12).describe() == "since 1970-01-01T00:00:10.250000Z, until 1970-01-01T00:00:12Z"
    with pytest.raises(InvalidInput, match=r"since \(1970-01-01T00:00:10.700000Z\) must be before until "
                                           r"\(1970-01-01T00:00:10.200000Z\)"):
        Scope(since=10.7, until=10.2)


def test_eight_digits_that_are_also_a_basic_iso_date_are_refused_as_ambiguous() -> None:
    """`--since 20261120` (ISO 8601's basic format of 2026-11-20, which Python's `fromisoformat` reads) was read as
    Unix seconds, 1970-08-23: the whole log evaluated without a word but the scope's words. It is refused as
    ambiguous, saying both readings; other numbers are seconds as before. Found reviewing `parse_time`."""
    with pytest.raises(InvalidInput, match=r"^--since: '20261120' is ambiguous: Unix seconds \(1970-08-23T12:05:20Z\) "
                                           r"or the date 2026-11-20; write the date as 2026-11-20, or the seconds as "
                                           r"20261120.0$"):
        parse_time("20261120", "--since")
    assert parse_time("20261120.0") == parse_time("12345678") + 7915442 == 20261120.0  # not a date: seconds
    assert parse_time("2026-11-20") == parse_time("20261120T00:00Z")


def _route(client: TestClient, n: int, tenant: str, rng: np.random.Generator) -> None:
    for i in range(n):
        body = {"prompt": f"write a short poem about the sea #{tenant} {i}", "models": PAIR, "cost_weight": 0.0,
                "context": {"tenant": tenant}}
        reply = client.post("/v1/route", json=body)
        assert reply.status_code == 200, reply.text
        decision = reply.json()
        quality = 0.8 if decision["model"] == "gpt-4o" else 0.5 + 0.1 * rng.random()
        assert client.post("/v1/feedback", json={"decision_id": decision["decision_id"],
                                                 "quality": quality}).status_code == 200


def test_evaluate_since_until_and_tenant_on_a_service_log(tmp_path: Path) -> None:
    """On a database the service wrote: `--since` (ISO 8601 or Unix seconds), `--until` and `--tenant` choose the
    decisions evaluated, the first line says which, and bad values get exit status 2 with a message."""
    db = tmp_path / "service.db"
    rng = np.random.default_rng(3)
    with TestClient(create_app(Settings(db=db, seed=3, policy="random"))) as client:
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.01)
        _route(client, 8, "acme", rng)
        time.sleep(0.01)
        boundary = time.time()
        time.sleep(0.01)
        _route(client, 6, "acme", rng)
        _route(client, 5, "globex", rng)
    runner = CliRunner()
    base = ["evaluate", "--db", str(db), "--no-baselines", "--estimators", "snips", "-C", "random"]
    later = runner.invoke(cli_app, [*base, "--since", f"{boundary:.6f}"])
    assert later.exit_code == 0, later.output
    assert "11 decisions with feedback evaluated (19 logged; those in the scope: since " in later.output
    acme = runner.invoke(cli_app, [*base, "--since", f"{boundary:.6f}", "--tenant", "acme"])
    assert acme.exit_code == 0, acme.output
    assert "6 decisions with feedback evaluated (19 logged; those in the scope: since" in acme.output
    assert "tenant 'acme'" in acme.output
    early = runner.invoke(cli_app, [*base, "--until", f"{boundary:.6f}", "--tenant", "acme"])
    assert early.exit_code == 0 and "8 decisions with feedback evaluated" in early.output, early.output
    iso = runner.invoke(cli_app, [*base, "--since", "2000-01-01", "--until", "2999-01-01T00:00Z"])
    assert iso.exit_code == 0 and "19 decisions with feedback evaluated" in iso.output, iso.output
    for args, message in (
        (["--since", "last tuesday"], "--since: expected Unix seconds or an ISO 8601 date or time"),
        (["--since", "2030-01-01", "--until", "2020-01-01"], "must be before until"),
        (["--tenant", "initech"], "none of the 19 decisions with feedback is in the scope (tenant 'initech'); their "
                                  "tenants: 'acme' (14), 'globex' (5)"),
    ):
        result = runner.invoke(cli_app, [*base, *args])
        assert result.exit_code == 2, result.output
        assert message in result.output
    refused = runner.invoke(cli_app, ["evaluate", "--db", str(db), "--escalations", "--tenant", "acme"])
    assert refused.exit_code == 2 and "--escalations takes no --tenant" in refused.output
    # a log written before `tenant_of` refused a float beyond 2^53: such a tenant was its text ("1e+17"), as stored
    with sqlite3.connect(db) as con:
        con.execute("""UPDATE decisions SET attributes = '{"tenant": 1e17}', tenant = '1e+17'
                       WHERE rowid = (SELECT min(rowid) FROM decisions WHERE tenant = 'globex')""")
    con.close()
    for args, evaluated, said in (
        (["--tenant", "globex"], 4, "none is tenant 'globex' in the scope"),
        (["--tenant", "1e+17"], 1, "1 of them is tenant '1e+17', in the scope"),
    ):
        result = runner.invoke(cli_app, [*base, *args])
        assert result.exit_code == 0, result.output
        assert f"{evaluated} decision{'' if evaluated == 1 else 's'} with feedback evaluated" in result.output
        assert "warning: 1 decision with feedback has a tenant stored as a float beyond ±2^53" in result.output
        assert said in result.output
    # one more such row, made before `boundary`: the warning counted it "in the scope" of --since boundary (found
    # reviewing eval24: the tenant alone was compared, not the scope)
    with sqlite3.connect(db) as con:
        con.execute("""UPDATE decisions SET attributes = '{"tenant": 1e17}', tenant = '1e+17'
                       WHERE rowid = (SELECT min(rowid) FROM decisions WHERE tenant = 'acme')""")
    con.close()
    for args, evaluated, said in (
        (["--since", f"{boundary:.6f}"], 1, "2 decisions with feedback have a tenant stored as a float beyond ±2^53"),
        (["--until", f"{boundary:.6f}"], 1, "2 decisions with feedback have a tenant stored as a float beyond ±2^53"),
    ):
        result = runner.invoke(cli_app, [*base, "--tenant", "1e+17", *args])
        assert result.exit_code == 0, result.output
        assert f"{evaluated} decision with feedback evaluated" in result.output, result.output
        assert said in result.output and "1 of them is tenant '1e+17', in the scope" in result.output, result.output
