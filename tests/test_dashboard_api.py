"""The dashboard's JSON endpoints, page and offline Swagger UI, in process (`TestClient(create_app(...))`):
replies match their documented models, bad parameters get a 422 that names them, keys are required when
configured, and every asset ships in the package."""

from __future__ import annotations

import fnmatch
import time
import tomllib
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from service_client import client_factory

from bandit_router.config import Secrets
from bandit_router.service.dashboard.schemas import LiveOut, RecentOut, ShadowsOut, TimeseriesOut

ROOT = Path(__file__).resolve().parents[1]
CLIENT_KEY = "client-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
ENDPOINTS = ("/v1/stats/timeseries?range=hour", "/v1/stats/live", "/v1/stats/recent", "/v1/stats/shadows")


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    yield from client_factory(tmp_path / "router.db", seed=3)


def _traffic(client: Any, n: int, *, headers: dict[str, str] | None = None, feedback_every: int = 2) -> None:
    for i in range(n):
        reply = client.post("/v1/route", json={"prompt": f"Explain recursion to a child (#{i})",
                                               "context": {"tenant": "acme" if i % 2 else "globex"}},
                            headers=headers or {})
        assert reply.status_code == 200, reply.text
        if i % feedback_every == 0:
            client.post("/v1/feedback", json={"decision_id": reply.json()["decision_id"], "quality": 0.8,
                                              "input_tokens": 20, "output_tokens": 100}, headers=headers or {})


def test_timeseries_counts_this_hours_traffic(make: Callable[..., Any]) -> None:
    client = make()
    _traffic(client, 40)
    body = client.get("/v1/stats/timeseries?range=hour").json()
    TimeseriesOut.model_validate(body)
    assert body["step"] == 60 and 60 <= len(body["time"]) <= 61
    assert all(len(body[k]) == len(body["time"]) for k in ("decisions", "coverage", "quality", "exploration"))
    assert body["overall"]["decisions"] == sum(body["decisions"]) == 40
    assert body["overall"]["learned"] == 20 and body["overall"]["coverage"] == pytest.approx(0.5)
    assert body["overall"]["quality"] == pytest.approx(0.8)
    assert sum(m["decisions"] for m in body["models"]) == 40
    for share in zip(*body["shares"].values(), strict=True):
        assert sum(share) == pytest.approx(1.0) or sum(share) == 0.0


def test_since_until_and_the_default_step(make: Callable[..., Any]) -> None:
    client = make()
    _traffic(client, 5)
    now = time.time()
    body = client.get(f"/v1/stats/timeseries?since={now - 86400}&until={now}").json()
    assert body["step"] == 300  # the smallest step with at most 400 buckets over a day
    relative = client.get("/v1/stats/timeseries?since=-600&step=120").json()
    assert relative["step"] == 120 and relative["overall"]["decisions"] == 5
    assert client.get("/v1/stats/timeseries").json()["step"] == 60  # neither range nor since: the last hour
    past = client.get(f"/v1/stats/timeseries?since={now - 7200}&until={now - 3600}").json()
    assert past["overall"]["decisions"] == 0 and set(past["quality"]) == {None}


def test_an_until_on_a_bucket_boundary_adds_no_bucket_after_the_range(make: Callable[..., Any]) -> None:
    """`until` on a multiple of `step` gave one more bucket, wholly after [since, until): the hour before this
    minute was charted with this minute's traffic at its end (its totals, right, said 0). Found probing the
    time filters' edges (hunt-ope)."""
    client = make()
    while True:  # the three decisions in one minute (a minute that ends meanwhile: send them again in the next)
        minute = int(time.time() // 60) * 60
        _traffic(client, 3)
        if int(time.time() // 60) * 60 == minute:
            break
    before = client.get(f"/v1/stats/timeseries?since={minute - 3600}&until={minute}").json()
    assert before["step"] == 60 and len(before["time"]) == 60 and before["time"][-1] == minute - 60
    assert sum(before["decisions"]) == before["overall"]["decisions"] == 0
    this = client.get(f"/v1/stats/timeseries?since={minute}&until={minute + 60}").json()
    assert this["time"] == [minute] and this["decisions"][0] == this["overall"]["decisions"] >= 3


def test_a_step_longer_than_the_range_does_not_widen_its_totals(make: Callable[..., Any]) -> None:
    """`overall` and `models` count the range asked for, not the bucket of `step` that holds it: five minutes
    that ended two minutes ago hold none of the traffic just sent, though their one bucket (a day) does."""
    client = make()
    _traffic(client, 6)
    now = time.time()
    body = client.get(f"/v1/stats/timeseries?since={now - 420}&until={now - 120}&step=86400").json()
    TimeseriesOut.model_validate(body)
    assert body["overall"]["decisions"] == 0 and body["overall"]["learned"] == 0 and body["models"] == []
    assert body["best_fixed"]["model"] is None
    hour = client.get("/v1/stats/timeseries?range=hour&step=86400").json()
    assert hour["overall"]["decisions"] == 6 and sum(m["decisions"] for m in hour["models"]) == 6


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("range=month", "range"),
        ("since=-3600&step=90", "step"),
        ("since=-3600&step=30", "step"),
        ("since=0&step=60", "step"),  # 29 million buckets
        ("since=nan", "since"),
        ("since=inf", "since"),
        ("since=100&until=50", "since"),
        ("since=abc", "since"),
        ("since=5e20&until=5.1e20", "since"),  # minutes past a 64-bit integer
        ("since=-1e12", "since"),
        ("until=1700000000", "until"),  # alone: it was ignored (the last hour)
        ("range=day&since=-60", "range"),  # both: `since` was ignored
        ("range=hour&until=1700000000", "range"),
    ],
)
def test_bad_parameters_get_a_422_naming_them(make: Callable[..., Any], query: str, field: str) -> None:
    reply = make().get(f"/v1/stats/timeseries?{query}")
    assert reply.status_code == 422, reply.text
    assert field in reply.text


@pytest.mark.parametrize("since", ["-0", "-0.0", "-0e0"])
def test_since_minus_zero_is_now_not_the_epoch(make: Callable[..., Any], since: str) -> None:
    """`since=-0` ("negative: seconds before now") read as 0, the epoch: a window of 56 years, refused for its
    buckets (with an `until`, answered from 1970). It is now − 0 = now, and a window ending now that starts
    now is refused as an empty one. Found reviewing the time filters (session 23)."""
    reply = make().get(f"/v1/stats/timeseries?since={since}&step=604800")
    assert reply.status_code == 422, reply.text
    assert "must be before until" in reply.text


@pytest.mark.parametrize(("query", "message"), [
    ("since=2026-11-28T10:00:00Z", "since: a Unix time in seconds is asked, not a date: '2026-11-28T10:00:00Z' is "
     "1795860000"),
    ("since=2026-11-28T15:30:00%2B05:30", "since: a Unix time in seconds is asked, not a date: "
     "'2026-11-28T15:30:00+05:30' is 1795860000"),
    ("since=0&until=2028-02-29", "until: a Unix time in seconds is asked, not a date; '2028-02-29' gives no offset "
     "(if it is UTC: 1835395200)"),
    ("since=yesterday", "since: not a number: a Unix time in seconds is asked"),
    ("since=nan", "since: Input should be a finite number"),
    ("since=1795860000000", "since: Input should be less than or equal to 100000000000 (Unix seconds: "
     "1795860000000 looks like milliseconds, 1795860000 s)"),
    ("since=0&until=1e20", "until: Input should be less than or equal to 100000000000"),
])
def test_a_date_where_unix_seconds_are_asked_is_answered_with_its_number(
    make: Callable[..., Any], query: str, message: str,
) -> None:
    """`since` and `until` are Unix seconds; an ISO 8601 date there got pydantic's "Input should be a valid number,
    unable to parse string as a number", which did not say what number, `nan` "less than or equal to
    100000000000", and milliseconds (`Date.now()`) that bare bound. The 422 now says a Unix time is asked and, for a
    date with its offset or `Z`, the number it is, and for milliseconds the seconds they are."""
    reply = make().get(f"/v1/stats/timeseries?{query}")
    assert reply.status_code == 422 and reply.json()["message"].startswith(message), reply.text


def test_recent_decisions_show_prompts_only_when_stored(make: Callable[..., Any]) -> None:
    plain = make()
    _traffic(plain, 6)
    body = plain.get("/v1/stats/recent?limit=4").json()
    RecentOut.model_validate(body)
    assert len(body["decisions"]) == 4 and all("prompt" not in d for d in body["decisions"])
    assert [d["time"] for d in body["decisions"]] == sorted((d["time"] for d in body["decisions"]), reverse=True)
    assert body["decisions"][0]["quality"] is None and body["decisions"][1]["quality"] == 0.8  # i=5 none, i=4 some
    assert plain.get("/v1/stats/recent?limit=0").status_code == 422
    assert plain.get("/v1/stats/recent?limit=501").status_code == 422


def test_recent_decisions_say_what_became_of_feedback_that_is_not_learned(make: Callable[..., Any]) -> None:
    """A decision whose only feedback came after its reward window is not pending (it never will be learned):
    its `feedback_status` is `late` (the page shows that instead of "pending"); one without feedback has none."""
    client = make(reward_window_s=0.3)
    late = client.post("/v1/route", json={"prompt": "late"}).json()["decision_id"]
    time.sleep(0.35)
    assert client.post("/v1/feedback", json={"decision_id": late, "quality": 0.9}).json()["status"] == "late"
    fresh = client.post("/v1/route", json={"prompt": "fresh"}).json()["decision_id"]
    shown = {d["decision_id"]: d for d in client.get("/v1/stats/recent").json()["decisions"]}
    assert (shown[late]["quality"], shown[late]["feedback_status"]) == (None, "late")
    assert (shown[fresh]["quality"], shown[fresh]["feedback_status"]) == (None, None)


def test_a_decision_whose_window_closed_without_feedback_is_expired_not_pending(make: Callable[..., Any]) -> None:
    """Without `default_reward` nothing is written when a reward window closes: such a decision was shown
    "pending" for ever. Its `feedback_status` is `expired` once its window has closed (null before: feedback may
    still come); with `default_reward`, the default that the service learns then takes its place, with no
    `expired` on the way (the service writes it within about half a second; `expired` waits 5 s more)."""
    client = make(reward_window_s=0.3)
    closed = client.post("/v1/route", json={"prompt": "nobody answers"}).json()["decision_id"]
    time.sleep(0.35)
    fresh = client.post("/v1/route", json={"prompt": "fresh"}).json()["decision_id"]
    body = client.get("/v1/stats/recent").json()
    RecentOut.model_validate(body)
    shown = {d["decision_id"]: d for d in body["decisions"]}
    assert (shown[closed]["quality"], shown[closed]["feedback_status"]) == (None, "expired")
    assert (shown[fresh]["quality"], shown[fresh]["feedback_status"]) == (None, None)
    client.__exit__(None, None, None)

    client = make(reward_window_s=0.3, default_reward=0.4)
    defaulted = client.post("/v1/route", json={"prompt": "nobody answers either"}).json()["decision_id"]
    deadline, seen = time.monotonic() + 10, set()
    while (d := client.get("/v1/stats/recent?limit=1").json()["decisions"][0])["feedback_status"] != "default":
        seen.add(d["feedback_status"])
        assert time.monotonic() < deadline, d
        time.sleep(0.05)
    assert (d["decision_id"], d["quality"]) == (defaulted, 0.4)
    assert seen == {None}


def test_recent_decisions_with_store_prompts(tmp_path: Path) -> None:
    for make in client_factory(tmp_path / "prompts.db", seed=1):
        client = make(store_prompts=True)
        _traffic(client, 2)
        newest = client.get("/v1/stats/recent").json()["decisions"][0]
        assert newest["prompt"] == "Explain recursion to a child (#1)"
        assert client.get("/v1/stats/live").json()["store_prompts"] is True


def test_recent_decisions_show_the_first_thousand_characters_of_a_prompt(tmp_path: Path) -> None:
    """A stored prompt of 170,000 control characters (a 1 MB body) was a 1 MB row of `/v1/stats/recent` (51 MB
    for its default 50 rows): the list shows the first 1,000 characters and `…`; the decision has the whole one."""
    for make in client_factory(tmp_path / "long.db", seed=1):
        client = make(store_prompts=True)
        long = "\x01" * 170_000
        decision_id = client.post("/v1/route", json={"prompt": long}).json()["decision_id"]
        client.post("/v1/route", json={"prompt": "short"})
        rows = {row["decision_id"]: row["prompt"] for row in client.get("/v1/stats/recent").json()["decisions"]}
        assert rows[decision_id] == "\x01" * 1000 + "…"
        assert "short" in rows.values()
        assert client.get(f"/v1/decisions/{decision_id}").json()["prompt"] == long


def test_live_shows_the_typical_pmf_and_the_budgets(make: Callable[..., Any]) -> None:
    client = make()
    _traffic(client, 10)
    body = client.get("/v1/stats/live").json()
    LiveOut.model_validate(body)
    typical = body["typical"]
    assert typical["decisions"] == 10
    assert sum(p for p in typical["probabilities"].values() if p is not None) == pytest.approx(1.0)
    assert body["can_promote"] is True  # no keys configured
    assert body["budgets"]["global"]["targets"] == []


def test_a_model_added_at_run_time_has_its_exploration_floor_now_before_any_traffic(
    make: Callable[..., Any],
) -> None:
    """`typical.now` is what the live policy would do now: a model added a moment ago gets its cold-start floor
    there (the policy explores it at once), where the logged pmfs of the recent decisions (`probabilities`) could
    not include it; every active model is priced, and the probabilities of one context sum to 1."""
    from bandit_router.catalog import ModelSpec

    client = make(models=(ModelSpec("a", 1.0, 2.0), ModelSpec("b", 3.0, 6.0)))
    _traffic(client, 12)
    added = {"name": "c", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}
    assert client.post("/v1/models", json=added).status_code == 201
    body = client.get("/v1/stats/live").json()
    LiveOut.model_validate(body)
    typical = body["typical"]
    assert typical["probabilities"]["c"] == 0.0 and typical["decisions"] == 12
    assert set(typical["now"]) == {"a", "b", "c"} and sum(typical["now"].values()) == pytest.approx(1.0)
    assert typical["now"]["c"] >= 0.05  # the router's floor (0.1), or the default policy's for an added model
    routed = [client.post("/v1/route", json={"prompt": f"Explain recursion (#{i})"}).json()["model"]
              for i in range(60)]
    assert "c" in routed  # and the policy does route to it (p ≥ 0.05 each: missed 60 times with p < 0.05)


def test_live_counts_the_requests_that_allowed_each_model(make: Callable[..., Any]) -> None:
    """`typical.allowed`: how many of the averaged decisions allowed each model, what the dashboard's *if allowed*
    marker reads; a logged probability of 0 is not that (a model every request allowed can average 0: requests
    with their own `cost_weight`, pmfs logged by the live policy before a promotion)."""
    from bandit_router.catalog import ModelSpec

    client = make(models=(ModelSpec("a", 1.0, 2.0), ModelSpec("b", 3.0, 6.0), ModelSpec("c", 2.0, 4.0)))
    for i in range(10):
        body = {"prompt": f"Explain recursion (#{i})", **({"models": ["a", "b"]} if i < 6 else {})}
        assert client.post("/v1/route", json=body).status_code == 200
    assert client.post("/v1/models", json={"name": "d", "input_usd_per_mtok": 1.0,
                                           "output_usd_per_mtok": 2.0}).status_code == 201
    typical = client.get("/v1/stats/live").json()["typical"]
    assert typical["decisions"] == 10
    assert typical["allowed"] == {"a": 10, "b": 10, "c": 4, "d": 0}


def test_probability_now_is_reused_for_a_while_and_priced_again_when_the_models_change(
    make: Callable[..., Any],
) -> None:
    """`typical.now` costs a policy pmf per recent context, so polls within `NOW_TTL_S` reuse it; a model added (or
    retired) is priced at once."""
    from bandit_router.catalog import ModelSpec
    from bandit_router.log import monitor as monitor_module

    client = make(models=(ModelSpec("a", 1.0, 2.0), ModelSpec("b", 3.0, 6.0)))
    _traffic(client, 12)
    client.get("/v1/stats/live")  # builds the app's monitor
    monitor = client.app.state.monitor
    monitor._now_cache = None
    calls = _count_pmf_now(monitor)
    first = client.get("/v1/stats/live").json()["typical"]["now"]
    _traffic(client, 3)
    assert client.get("/v1/stats/live").json()["typical"]["now"] == first and len(calls) == 1
    assert client.post("/v1/models", json={"name": "c", "input_usd_per_mtok": 1.0,
                                           "output_usd_per_mtok": 2.0}).status_code == 201
    assert set(client.get("/v1/stats/live").json()["typical"]["now"]) == {"a", "b", "c"} and len(calls) == 2
    cached = monitor._now_cache
    monitor._now_cache = (cached[0] - monitor_module.NOW_TTL_S, *cached[1:])  # the reuse has run out
    client.get("/v1/stats/live")
    assert len(calls) == 3 and calls[-1] == 15


def test_probability_now_prices_only_the_contexts_its_time_budget_reaches(make: Callable[..., Any]) -> None:
    """`typical.now` priced the newest 100 contexts whatever a pmf cost: ∝ K² with the `default` policy, ≈ 1 s a
    computation at 100 models and ≈ 10 s at 300, past the dashboard's 10 s wait (found by hunt-scale: the page said
    "no answer within 10 s" for its first 25 s at 300 models). It stops once `NOW_BUDGET_S` has passed, newest
    first, and says how many it averaged (`now_decisions`); a steady clock that never advances prices them all."""
    from bandit_router.log import monitor as monitor_module

    client = make()
    _traffic(client, 12)
    client.get("/v1/stats/live")  # builds the app's monitor
    monitor = client.app.state.monitor
    ticks = [0.0]

    def slow() -> float:  # each reading a whole budget later: the first context priced uses it up
        ticks[0] += monitor_module.NOW_BUDGET_S
        return ticks[0]

    monitor._now_cache, monitor.steady = None, slow
    typical = client.get("/v1/stats/live").json()["typical"]
    LiveOut.model_validate(client.get("/v1/stats/live").json())
    assert typical["decisions"] == 12 and typical["now_decisions"] == 1
    assert sum(typical["now"].values()) == pytest.approx(1.0)
    monitor._now_cache, monitor.steady = None, (lambda: 0.0)
    assert client.get("/v1/stats/live").json()["typical"]["now_decisions"] == 12


def test_probability_now_is_priced_again_at_once_after_a_budget_put_or_a_promotion(
    make: Callable[..., Any],
) -> None:
    """A hard budget (`share:b=0`) leaves b out now; an operator lifts it (PUT): the next poll, within `NOW_TTL_S`,
    shows what the live policy would give b now, not the reused 0 of before the PUT (the dashboard showed the
    budget's 0 for up to 10 s); a PUT that brings the budget back shows 0 again at once, and so does a promotion
    (here of `fixed:a`, which would give b nothing)."""
    from bandit_router.budgets import BudgetConfig
    from bandit_router.catalog import ModelSpec

    client = make(models=(ModelSpec("a", 1.0, 2.0), ModelSpec("b", 3.0, 6.0)), shadow_policies=("fixed:a",),
                  budgets=BudgetConfig.from_mapping({"share": {"b": 0}}))
    _traffic(client, 12)

    def now() -> dict[str, float | None]:
        reply: dict[str, float | None] = client.get("/v1/stats/live").json()["typical"]["now"]
        return reply

    assert now() == {"a": 1.0, "b": 0.0}
    assert client.put("/v1/budgets", json={}).status_code == 200
    assert now()["b"] > 0.05  # the default policy, without the budget: about half
    assert client.put("/v1/budgets", json={"share": {"b": 0}}).status_code == 200
    assert now() == {"a": 1.0, "b": 0.0}
    assert client.put("/v1/budgets", json={}).status_code == 200
    assert now()["b"] > 0.05
    promoted = client.post("/v1/policies/promote", json={"shadow": "fixed:a", "force": True})
    assert promoted.status_code == 200, promoted.text
    assert now() == {"a": 1.0, "b": 0.0}


def test_a_wall_clock_set_back_keeps_neither_the_shadows_nor_probability_now_cached(
    make: Callable[..., Any],
) -> None:
    """The monitor's reuse of its shadow estimates (`SHADOW_TTL_S`) and of `typical.now` (`NOW_TTL_S`) was measured
    by the wall clock: set back an hour (NTP stepping it), the dashboard showed the same estimates for that hour,
    however much traffic came. The reuse is measured by a steady clock now; the times shown stay the wall clock's."""
    from bandit_router.log import monitor as monitor_module

    client = make(shadow_policies=("linucb",))
    _traffic(client, 10, feedback_every=1)
    client.get("/v1/stats/live")  # builds the app's monitor
    monitor = client.app.state.monitor
    wall, steady = [time.time()], [0.0]
    monitor.clock, monitor.steady = (lambda: wall[0]), (lambda: steady[0])
    monitor._shadow_cache = monitor._now_cache = None
    calls = _count_pmf_now(monitor)
    assert client.get("/v1/stats/shadows").json()["n"] == 10
    client.get("/v1/stats/live")
    wall[0] -= 3600.0  # the wall clock is set back an hour
    _traffic(client, 20, feedback_every=1)
    assert client.get("/v1/stats/shadows").json()["n"] == 10 and len(calls) == 1  # reused, within the TTLs
    client.get("/v1/stats/live")
    assert len(calls) == 1
    steady[0] += max(monitor_module.SHADOW_TTL_S, monitor_module.NOW_TTL_S)
    shadows = client.get("/v1/stats/shadows").json()
    assert shadows["n"] == 30 and shadows["computed_at"] == wall[0]
    assert client.get("/v1/stats/live").json()["time"] == wall[0] and calls == [10, 30]


def test_shadows_without_enough_evidence_say_why(make: Callable[..., Any]) -> None:
    client = make(shadow_policies=("linucb",))
    _traffic(client, 6)
    body = client.get("/v1/stats/shadows").json()
    ShadowsOut.model_validate(body)
    assert body["estimates"] == [] and "at least 20" in body["reason"]


def test_shadows_are_estimated_with_intervals(make: Callable[..., Any]) -> None:
    client = make(shadow_policies=("linucb",))
    _traffic(client, 80, feedback_every=1)
    body = client.get("/v1/stats/shadows").json()
    ShadowsOut.model_validate(body)
    assert body["n"] == 80
    live, shadow = body["estimates"]
    assert live["role"] == "live" and shadow["name"] == "linucb"
    for e in (live, shadow):
        assert e["ci_low"] <= e["value"] <= e["ci_high"]
    assert isinstance(shadow["promotable"], bool) and shadow["reason"]


def test_keys_guard_every_endpoint_and_only_admins_may_promote(make: Callable[..., Any]) -> None:
    client = make(api_keys=Secrets((CLIENT_KEY,)), admin_keys=Secrets((ADMIN_KEY,)))
    _traffic(client, 4, headers={"authorization": f"Bearer {CLIENT_KEY}"})
    for path in ENDPOINTS:
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"authorization": "Bearer wrong-key-0123456789"}).status_code == 401
        assert client.get(path, headers={"authorization": f"Bearer {CLIENT_KEY}"}).status_code == 200, path
    as_client = client.get("/v1/stats/live", headers={"authorization": f"Bearer {CLIENT_KEY}"}).json()
    as_admin = client.get("/v1/stats/live", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert (as_client["can_promote"], as_admin["can_promote"]) == (False, True)
    page = client.get("/dashboard")  # the page itself carries no data: it asks for a key
    assert page.status_code == 200 and "acme" not in page.text and "gpt-4o" not in page.text


def test_the_endpoints_are_in_the_openapi_document(make: Callable[..., Any]) -> None:
    paths = make().get("/openapi.json").json()["paths"]
    for path in ("/v1/stats/timeseries", "/v1/stats/live", "/v1/stats/recent", "/v1/stats/shadows"):
        assert path in paths and paths[path]["get"]["security"] == [{"bearer": []}]
        assert "200" in paths[path]["get"]["responses"] and "401" in paths[path]["get"]["responses"]
    params = {p["name"] for p in paths["/v1/stats/timeseries"]["get"]["parameters"]}
    assert params == {"range", "since", "until", "step"}
    assert "/dashboard" not in paths


def test_the_page_loads_only_its_own_assets(make: Callable[..., Any]) -> None:
    client = make()
    page = client.get("/dashboard")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assets = [part.split('"')[0] for part in page.text.split('="/dashboard/static/')[1:]]
    assert {"vendor/uplot/uPlot.iife.min.js", "dashboard.js", "dashboard.css"} <= set(assets)
    for asset in assets:
        assert client.get(f"/dashboard/static/{asset}").status_code == 200, asset
    assert "http://" not in page.text and "https://" not in page.text


def test_swagger_ui_is_served_from_the_package(make: Callable[..., Any]) -> None:
    client = make()
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "cdn." not in docs.text and "https://" not in docs.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        assert f"/dashboard/static/vendor/swagger-ui/{asset}" in docs.text
        assert client.get(f"/dashboard/static/vendor/swagger-ui/{asset}").status_code == 200


def test_every_static_file_is_package_data_with_its_licence() -> None:
    """The wheel (and an editable install) carries every file under static/: each matches a package-data glob."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["bandit_router"]
    static = resources.files("bandit_router.service.dashboard") / "static"
    base = ROOT / "bandit_router"
    files = [p for p in Path(str(static)).rglob("*") if p.is_file()]
    assert len(files) >= 10
    for path in files:
        relative = path.relative_to(base).as_posix()
        assert any(fnmatch.fnmatch(relative, g) and relative.count("/") == g.count("/") for g in globs), relative
    for vendored in ("uplot", "swagger-ui"):
        assert (Path(str(static)) / "vendor" / vendored / "LICENSE").is_file()


def test_a_model_no_longer_in_the_catalog_is_listed_for_its_past_decisions_and_marked(
    make: Callable[..., Any],
) -> None:
    """`/v1/stats` and the dashboard's model table (timeseries) count a model's past decisions after it left the
    catalog (removed from the catalog file, then a restart; or retired at run time) and say so: `in_catalog`
    false; it was listed like an active model."""
    from bandit_router.catalog import ModelSpec
    from bandit_router.service.schemas import StatsOut

    three = (ModelSpec("a", 1.0, 2.0), ModelSpec("b", 1.0, 2.0), ModelSpec("c", 1.0, 2.0))
    client = make(models=three)
    for name in ("a", "b", "c", "c"):
        reply = client.post("/v1/route", json={"prompt": f"Say hello ({name})", "models": [name]})
        assert reply.status_code == 200 and reply.json()["model"] == name, reply.text
    client.__exit__(None, None, None)

    client = make(models=three[:2])  # the catalog file lost `c`; the service restarts
    assert client.delete("/v1/models/b").status_code == 200  # and `b` is retired at run time
    stats = client.get("/v1/stats").json()
    StatsOut.model_validate(stats)
    listed = {m["model"]: (m["decisions"], m["in_catalog"]) for m in stats["models"]}
    assert listed == {"a": (1, True), "b": (1, False), "c": (2, False)}
    body = client.get("/v1/stats/timeseries?range=hour").json()
    TimeseriesOut.model_validate(body)
    assert {m["model"]: (m["decisions"], m["in_catalog"]) for m in body["models"]} == listed
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("ModelStats", "ModelSummary"):
        assert "in_catalog" in schema[name]["required"] and schema[name]["properties"]["in_catalog"]["description"]


def _count_pmf_now(monitor: Any) -> list[int]:
    """Make `monitor` note how many contexts each computation of `typical.now` was given (the list returned; it prices
    the newest of them for at most `NOW_BUDGET_S`)."""
    calls: list[int] = []
    priced = monitor._pmf_now

    def counting(live: Any, contexts: Any) -> Any:
        calls.append(len(contexts))
        return priced(live, contexts)

    monitor._pmf_now = counting
    return calls


def test_shadows_weigh_only_the_live_policys_decisions_as_the_promotion_does(make: Callable[..., Any]) -> None:
    """A restart with another live policy and the same shadow: the shadow's pmf was logged with the decisions of both
    policies, and the dashboard estimated "the live policy" on all of them (its row named the new policy, its value
    was the mix's) where the promotion check takes only the live policy's own, so the two could disagree. Found
    driving `serve` through a policy change (hunt-ope)."""
    first = make(shadow_policies=("linucb",))
    _traffic(first, 30, feedback_every=1)
    first.__exit__(None, None, None)
    client = make(policy="random", shadow_policies=("linucb",))
    _traffic(client, 24, feedback_every=1)
    body = client.get("/v1/stats/shadows").json()
    ShadowsOut.model_validate(body)
    assert body["live"] == "random" and body["n"] == 24
    check = client.app.state.engine.promotion_check("linucb")
    assert check["n"] == 24
    live = body["estimates"][0]
    assert live["role"] == "live" and live["value"] == pytest.approx(check["live_value"])


def test_shadows_are_estimated_after_a_model_left_the_catalog_file(make: Callable[..., Any]) -> None:
    """A restart whose catalog file no longer has a model the recent decisions allowed: the panel said only "the
    shadows could not be evaluated: unknown model 'c'" (until 2,000 newer decisions), while the promotion check
    evaluates such a log (the candidates route among the other models, `evaluation/removed.py`). It estimates them
    too now. Found driving `serve` through a catalog change (hunt-ope). Since eval24 the decisions whose pmfs gave
    the removed model probability are left out, as the promotion check leaves them out: the panel says so until
    enough decisions made since are there, then estimates on those."""
    from bandit_router.catalog import ModelSpec

    three = (ModelSpec("a", 1.0, 2.0), ModelSpec("b", 1.0, 2.0), ModelSpec("c", 1.0, 2.0))
    first = make(models=three, shadow_policies=("linucb",))
    _traffic(first, 24, feedback_every=1)
    first.__exit__(None, None, None)
    client = make(models=three[:2], shadow_policies=("linucb",))
    body = client.get("/v1/stats/shadows").json()
    ShadowsOut.model_validate(body)
    assert body["n"] == 0 and body["left_out"] == 24 and body.get("reason") is None, body
    assert [e["value"] for e in body["estimates"]] == [None, None]
    assert "24 more gave one probability, a choice neither can make now" in body["estimates"][1]["reason"]
    _traffic(client, 24, feedback_every=1)
    client.app.state.monitor._shadow_cache = None  # not the 15 s reuse: the new decisions now
    body = client.get("/v1/stats/shadows").json()
    ShadowsOut.model_validate(body)
    assert body["n"] == 24 and body["left_out"] == 24 and body.get("reason") is None, body
    assert [e["role"] for e in body["estimates"]] == ["live", "shadow"]
    assert all(e["value"] is not None for e in body["estimates"]), body


def test_shadows_are_estimated_anew_after_a_promotion(make: Callable[..., Any]) -> None:
    """The shadow estimates were reused for 15 s whatever happened: right after a promotion the page (which asks at
    once) was told the previous policy was live and offered to promote the policy now live (a 404). The reuse
    holds while the live policy and the shadows are the same. Found promoting from the dashboard (hunt-ope)."""
    client = make(shadow_policies=("linucb",))
    _traffic(client, 24, feedback_every=1)
    before = client.get("/v1/stats/shadows").json()
    assert before["live"] == "default" and [e["name"] for e in before["estimates"]] == ["default", "linucb"]
    assert client.post("/v1/policies/promote", json={"shadow": "linucb", "force": True}).status_code == 200
    after = client.get("/v1/stats/shadows").json()
    assert after["live"] == "linucb" and after["n"] == 0 and after["estimates"] == []
    assert "0 recent decisions of the live policy" in after["reason"]


def test_a_shadow_added_at_a_restart_does_not_blank_the_others(make: Callable[..., Any]) -> None:
    """A restart that added a shadow: the panel weighed only the decisions that logged every shadow's pmf, those
    since the restart, so the shadow that had run all along was shown without an estimate ("5 recent decisions …
    logged every shadow's pmf; at least 20 are needed") while the promotion check weighs it on all 45 decisions
    that logged it. Each shadow is estimated on the decisions that logged its pmf, as the promotion check does.
    Found reviewing hunt-ope (review22ope)."""
    first = make(shadow_policies=("linucb",))
    _traffic(first, 40, feedback_every=1)
    first.__exit__(None, None, None)
    client = make(shadow_policies=("linucb", "lints"))
    _traffic(client, 5, feedback_every=1)
    body = client.get("/v1/stats/shadows").json()
    ShadowsOut.model_validate(body)
    live, old, new = body["estimates"]
    check = client.app.state.engine.promotion_check("linucb")
    assert body["n"] == live["n"] == old["n"] == check["n"] == 45
    assert live["value"] == pytest.approx(check["live_value"])
    assert old["ci_low"] == pytest.approx(check["shadow_ci_low"])
    assert old["promotable"] == check["ok"] and old["reason"] == check["reason"]
    assert new["name"] == "lints" and new["n"] == 5 and new["value"] is None and new["promotable"] is False
    assert "only 5 of the live policy's recent decisions with feedback logged its pmf" in new["reason"]


def test_shadows_count_the_decisions_scored_and_carry_the_evaluations_warnings(make: Callable[..., Any]) -> None:
    """A restart whose catalog file dropped a model some recent decisions were limited to: the evaluation left those
    out of every estimate, yet the panel said its estimates were on all of them (`n`: 30 where 24 were scored), and
    it did not show the evaluation's warnings (here: the decisions left out) that the promotion check carries. `n`
    is what was scored, `left_out` the rest, and `warnings` the evaluation's own. Found reviewing the dashboard's
    evidence (session 23). Since eval24 every decision whose pmfs gave the removed model probability is left out
    (those limited to it too), and the decisions made since are the evidence."""
    from bandit_router.catalog import ModelSpec

    three = (ModelSpec("a", 1.0, 2.0), ModelSpec("b", 1.0, 2.0), ModelSpec("c", 1.0, 2.0))
    first = make(models=three, shadow_policies=("linucb",))
    _traffic(first, 24, feedback_every=1)
    for i in range(6):  # limited to the model about to leave the catalog file
        reply = first.post("/v1/route", json={"prompt": f"Only c (#{i})", "models": ["c"]})
        assert reply.status_code == 200 and reply.json()["model"] == "c", reply.text
        first.post("/v1/feedback", json={"decision_id": reply.json()["decision_id"], "quality": 0.5})
    first.__exit__(None, None, None)
    client = make(models=three[:2], shadow_policies=("linucb",))
    _traffic(client, 24, feedback_every=1)  # since the change
    body = client.get("/v1/stats/shadows").json()
    ShadowsOut.model_validate(body)
    live, shadow = body["estimates"]
    assert body["n"] == live["n"] == shadow["n"] == 24 and body["left_out"] == 30, body
    check = client.app.state.engine.promotion_check("linucb")
    assert body["warnings"] == check["warnings"], body
    assert (check["n"], check["left_out"]) == (24, 30), check  # the promotion check counts as the panel does
    assert body["warnings"][0].startswith("30 of the 54 decisions with feedback that logged the pmfs compared are "
                                          "left out"), body
    assert not live["warnings"]  # the evaluation's notes are not an estimate's overlap warnings


def test_a_model_retired_at_run_time_is_not_credited_by_the_promotion_check(make: Callable[..., Any]) -> None:
    """eval24 left out of the promotion check and the shadows panel the decisions whose logged pmfs gave probability
    to a model the catalog file no longer routes (removed, or `route = false` since), but not to a model retired at run
    time (`DELETE /v1/models/{name}`): its spec stays for pricing, so both weighed every decision logged while it was
    routable, crediting choices neither policy can make now. Found reviewing eval24 (review24eval)."""
    from bandit_router.catalog import ModelSpec

    three = (ModelSpec("a", 1.0, 2.0), ModelSpec("b", 1.0, 2.0), ModelSpec("c", 1.0, 2.0))
    client = make(models=three, shadow_policies=("linucb",))
    _traffic(client, 24, feedback_every=1)  # the cold start gives every model, c too, probability
    assert client.delete("/v1/models/c").status_code == 200
    check = client.app.state.engine.promotion_check("linucb")
    assert not check["ok"] and check["n"] == 0, check
    assert "24 more gave one probability, a choice neither can make now" in check["reason"], check
    body = client.get("/v1/stats/shadows").json()
    ShadowsOut.model_validate(body)
    assert (body["n"], body["left_out"]) == (0, 24), body
    assert body["warnings"][0].startswith("24 of the 24 decisions with feedback that logged the pmfs compared are "
                                          "left out"), body
    assert "retired" in body["warnings"][0], body
