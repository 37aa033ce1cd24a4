"""Budgets count what named routers pay: through the gateway against the fake upstream of the named-router tests,
with targets configured, every call a cascade, a learned cascade or an LLM router pays for (the answers, the
judge's scores, the routing LLM's choice) reaches the budget pacer once, at its real cost, whether or not
feedback arrives; a request no model answered counts what it paid; a restart keeps it; and a process sharing the
log books another process's named-router requests at the same amounts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bandit_router.budgets import BudgetConfig
from bandit_router.catalog import ModelSpec
from bandit_router.config import RouterAlias, Settings
from bandit_router.service import create_app
from bandit_router.store import JudgeCall
from benchmarks.fake_upstream import JUDGE, ServerThread
from tests.named_fakes import CODE, MATH, PRICES, PROSE, QUALITY, ChooserFake, serving
from tests.old_schema import as_previous_schema
from tests.test_cascade_live import ask, feedback, stored
from tools.loopback import loopback

ROUTERS = (
    RouterAlias("cascade", "cascade", ("cheap", "strong"), judge=JUDGE, threshold=0.7),
    RouterAlias("learned", "learned-cascade", ("cheap", "strong"), judge=JUDGE),
    RouterAlias("auto", "llm-router", ("cheap", "strong"), router_model="chooser"),
)
BUDGETS = {"spend_usd": "100/1d", "tenants": {"acme": {"avg_cost_usd": 0.01}}}
"""Targets that never bind here (the tests read what the pacer booked, not what it decided)."""
ACME = {"bandit_router": {"context": {"tenant": "acme"}}}


@pytest.fixture(scope="module")
def fake() -> Iterator[ChooserFake]:
    with serving(ChooserFake(quality=QUALITY, seed=5, judge_noise=0.1)) as upstream:
        yield upstream


class Gateways:
    """Gateways with the named routers and `BUDGETS` (`start`), served in this process, stopped at the end."""

    def __init__(self, fake: ChooserFake, folder: Path) -> None:
        self.fake, self.folder = fake, folder
        self.servers: dict[str, ServerThread] = {}

    def start(self, db: str = "router.db", budgets: dict[str, Any] | None = None, **changes: Any) -> str:
        """A gateway on `db` (a file name in the test's folder, or a PostgreSQL URL)."""
        specs = tuple(
            ModelSpec(
                n,
                *PRICES[n],
                tags={"family": "fake"},
                base_url=self.fake.url + "/v1",  # type: ignore[attr-defined]
                route=n in ("cheap", "strong"),
            )
            for n in PRICES
        )
        location = db if "://" in db else str(self.folder / db)
        settings = Settings(
            db=location,
            models=specs,
            routers=ROUTERS,
            seed=11,
            budgets=BudgetConfig.from_mapping(budgets or BUDGETS),
            **changes,
        )
        server = ServerThread(create_app(settings))
        url = server.wait_ready(30)
        self.servers[url] = server
        return url

    def stop(self, url: str) -> None:
        self.servers.pop(url).stop()


@pytest.fixture
def gateways(fake: ChooserFake, tmp_path: Path) -> Iterator[Gateways]:
    fake.behaviour.clear()
    g = Gateways(fake, tmp_path)
    yield g
    for server in g.servers.values():
        server.stop()


def report(url: str) -> dict[str, Any]:
    reply = loopback.get(url + "/v1/budgets")
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["report"])


def spent(url: str, tenant: str | None = None) -> float:
    scope = report(url)["global"] if tenant is None else report(url)["tenants"][tenant]
    return float(scope["spend_usd"])


def post(url: str, model: str, prompt: str) -> httpx.Response:
    return loopback.post(
        url + "/v1/chat/completions",
        timeout=30,
        json={"model": model, "messages": [{"role": "user", "content": prompt}]},
    )


def expected_cost(url: str, decision_id: str) -> float:
    """The expected cost the router booked for a decision it made (its chosen model's)."""
    decision = stored(url, decision_id)
    return float(decision["expected_cost_usd"][decision["model"]])


# -- cascades ----------------------------------------------------------------------------------------------------
def test_every_paid_call_of_a_cascade_is_booked_once_at_its_real_cost(gateways: Gateways) -> None:
    """A prose prompt pays the cheap answer and the judge; a code prompt also the escalation to the strong model.
    The pacer books each request's whole chain when it is answered; feedback (only quality for a named router)
    changes nothing; a tenant's targets see its own requests; a learned cascade is booked the same way."""
    url = gateways.start()
    total, ids = 0.0, []
    for prompt in (PROSE, CODE):
        _, chain, decision_id = ask(url, "cascade", prompt)
        assert [c["role"] for c in chain["calls"]][:2] == ["answer", "judge"]
        total += chain["cost_usd"]
        ids.append(decision_id)
    assert chain["escalations"] == 1 and len(chain["calls"]) == 3  # the code prompt: cheap, judge, strong
    scope = report(url)["global"]
    assert scope["requests"] == 2 and scope["spend_usd"] == pytest.approx(total, rel=1e-9)
    for decision_id in ids:
        assert feedback(url, decision_id, 0.8)["status"] == "unrouted"
    assert spent(url) == pytest.approx(total, rel=1e-9)  # no second booking when feedback arrives

    _, chain, _ = ask(url, "learned", CODE, extra_body=ACME)
    assert spent(url, "acme") == pytest.approx(chain["cost_usd"], rel=1e-9)
    assert spent(url) == pytest.approx(total + chain["cost_usd"], rel=1e-9)
    acme = report(url)["tenants"]["acme"]
    assert acme["requests"] == 1 and acme["targets"][0]["realized"] == pytest.approx(chain["cost_usd"], rel=1e-9)


def test_a_cascade_request_no_model_answered_books_what_it_paid(gateways: Gateways, fake: ChooserFake) -> None:
    """Failed calls cost nothing: a cascade whose every model fails (502) or refuses (400) books nothing; the
    answer it paid for before an escalation failed is booked."""
    url = gateways.start()
    fake.set("strong", "fail")
    _, chain, _ = ask(url, "cascade", CODE)  # cheap answered, judge, strong failed: cheap's answer
    assert chain["calls"][-1]["error"] and chain["cost_usd"] > 0
    assert spent(url) == pytest.approx(chain["cost_usd"], rel=1e-9)
    fake.set("cheap", "fail")
    assert post(url, "cascade", CODE).status_code == 502
    fake.set("cheap", "reject")
    assert post(url, "cascade", CODE).status_code == 400
    assert spent(url) == pytest.approx(chain["cost_usd"], rel=1e-9)


# -- LLM routers ---------------------------------------------------------------------------------------------------
def test_an_llm_routers_routing_call_and_answer_are_booked(gateways: Gateways) -> None:
    """The routing LLM names a model: its call and the answer are booked at once (the LLM router's decision).
    It names nobody: the policy decides and its decision is booked like any routed one (expected cost, corrected
    to the answer's real cost by the learned feedback); the routing call is booked at once beside it."""
    url = gateways.start()
    _, info, _ = ask(url, "auto", CODE)
    assert info["named"] == "strong" and info["calls"][0]["role"] == "router"
    named_cost = info["cost_usd"]
    assert spent(url) == pytest.approx(named_cost, rel=1e-9)

    _, info, decision_id = ask(url, "auto", MATH)  # "Hard to say.": the policy's choice
    assert info["named"] is None
    routing = info["calls"][0]["cost_usd"]
    assert routing > 0
    assert spent(url) == pytest.approx(named_cost + routing + expected_cost(url, decision_id), rel=1e-9)
    assert feedback(url, decision_id, 0.8)["status"] == "applied"
    assert spent(url) == pytest.approx(named_cost + info["cost_usd"], rel=1e-9)  # now the answer's real cost
    assert report(url)["global"]["requests"] == 2


def settled(url: str, spend_usd: float) -> float:
    """The pacer's global spend once it is `spend_usd` (a failure's feedback corrects a booking when it is learned,
    after the reply); fails after 10 s."""
    deadline = time.monotonic() + 10
    while (now := spent(url)) != pytest.approx(spend_usd, rel=1e-9):
        assert time.monotonic() < deadline, (now, spend_usd)
        time.sleep(0.02)
    return now


def test_an_llm_router_books_what_it_paid_when_the_policys_model_fails_or_nobody_answers(
    gateways: Gateways, fake: ChooserFake
) -> None:
    """`share:strong = 0` makes the policy pick `cheap`, which fails: `strong` answers. The failed try is booked as
    the gateway books one (a request at `cheap`'s expected cost, corrected to 0 by its failure feedback), and the
    request at the routing call plus `strong`'s answer: what was paid, over two requests. When every model fails
    (502) the failed try is booked the same way and the routing call spent beside it; when the named model refuses
    the request (400), only the routing call was paid, and only it is booked."""
    url = gateways.start(budgets={"share": {"strong": 0}, "spend_usd": "100/1d"})
    fake.set("cheap", "fail")
    _, info, _ = ask(url, "auto", MATH)
    assert info["named"] is None and [c["model"] for c in info["calls"]] == ["chooser", "cheap", "strong"]
    paid = info["cost_usd"]
    settled(url, paid)
    assert report(url)["global"]["requests"] == 2  # the policy's failed try, then the request's answer

    fake.set("strong", "fail")
    reply = post(url, "auto", MATH)
    assert reply.status_code == 502
    routing = float(loopback.get(url + "/v1/stats").json()["named_routers"]["auto"]["spend_usd"]) - paid
    assert routing > 0
    settled(url, paid + routing)
    assert report(url)["global"]["requests"] == 3  # the failed try; a request no model answered is none

    fake.set("strong", "reject")
    assert post(url, "auto", CODE).status_code == 400  # the routing LLM named strong, which refused
    routing_total = float(loopback.get(url + "/v1/stats").json()["named_routers"]["auto"]["spend_usd"])
    assert spent(url) == pytest.approx(routing_total, rel=1e-9)


# -- durability and processes sharing the log ---------------------------------------------------------------------
def test_named_routers_and_the_judges_spend_survive_a_restart(gateways: Gateways) -> None:
    url = gateways.start(**JUDGED)
    total = sum(ask(url, "cascade", f"{CODE} #{i}")[1]["cost_usd"] for i in range(3))
    total += ask(url, "auto", CODE)[1]["cost_usd"]
    total += call_cost(url, caller(url, "strong", CODE).headers["x-decision-id"])  # a model the caller names
    acme = routed(url, PROSE, tenant="acme") + judged(url, 1)  # a routed answer, and the judge's call scoring it
    total += acme
    assert spent(url) == pytest.approx(total, rel=1e-9)
    assert spent(url, "acme") == pytest.approx(acme, rel=1e-9)
    gateways.stop(url)
    url = gateways.start(**JUDGED)
    assert loopback.get(url + "/readyz").json()["recovery"]["budgets"] == "stored"
    assert spent(url) == pytest.approx(total, rel=1e-9)
    assert spent(url, "acme") == pytest.approx(acme, rel=1e-9)
    assert report(url)["global"]["requests"] == 6


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest) -> str:
    return "shared.db" if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


def test_processes_sharing_the_log_book_each_others_named_router_requests_once(gateways: Gateways, db: str) -> None:
    """Two processes on one log (SQLite workers, PostgreSQL replicas): each books its own requests when it makes
    them and the other's from the log, at the same amounts (a chain at its whole cost; the policy's LLM-router
    decision at its expected cost plus the routing call), and neither books its own twice."""
    a = gateways.start(db, workers=2)
    b = gateways.start(db, workers=2)
    total = 0.0
    for i, url in enumerate((a, b, a, b)):
        total += ask(url, "cascade", f"{CODE} #{i}")[1]["cost_usd"]
    _, info, decision_id = ask(a, "auto", MATH)  # the policy decides
    assert info["named"] is None
    total += info["calls"][0]["cost_usd"] + expected_cost(a, decision_id)

    def both_booked() -> bool:
        return all(report(u)["global"]["requests"] >= 5 for u in (a, b))

    deadline = time.monotonic() + 15
    while not both_booked():
        assert time.monotonic() < deadline, [report(u)["global"] for u in (a, b)]
        time.sleep(0.05)
    time.sleep(0.3)  # a second booking of anything would have happened by now (the log is read every 50 ms)
    for url in (a, b):
        scope = report(url)["global"]
        assert scope["requests"] == 5 and scope["spend_usd"] == pytest.approx(total, rel=1e-9), url


def test_a_gateway_fallback_is_booked_once_by_a_process_sharing_the_log(gateways: Gateways, fake: ChooserFake) -> None:
    """The routed gateway's fallback decision (`Router.decide` after a failed call) is booked when it is made; the
    process that made it does not book it again when it reads it back from the shared log."""
    url = gateways.start(workers=2)
    fake.set("cheap", "fail")
    for i in range(6):
        assert ask(url, "router", f"{PROSE} #{i}")[0].model == "strong"
    decisions = int(loopback.get(url + "/v1/stats").json()["decisions"])
    assert decisions > 6  # some first tries went to `cheap` and fell back
    time.sleep(0.3)  # the log is read every 50 ms
    assert report(url)["global"]["requests"] == decisions


# -- the pacer's side ---------------------------------------------------------------------------------------------
def test_the_pacer_books_a_known_cost_and_spends_beside_its_bookings() -> None:
    """`book` counts a decision at a known cost (a request, in the shares); `spend` adds money without a request;
    both are part of the saved state."""
    from bandit_router import BudgetPacer, Request, Router
    from bandit_router.catalog import default_catalog

    clock = [1000.0]
    pacer = BudgetPacer(
        BudgetConfig.from_strings(["avg_cost_usd=0.001", "share:gpt-4o=0.5", "@acme:spend_usd=1/1d"]),
        clock=lambda: clock[0],
    )
    router = Router(default_catalog(), "default", seed=0)
    decision = router.route(Request(prompt="Sort a list", context={"tenant": "acme"}, models=("gpt-4o",)))
    pacer.book(decision, 0.004)
    pacer.spend(0.002, "acme")
    pacer.spend(0.001)
    report = pacer.report()
    assert report["global"]["requests"] == 1 and report["global"]["spend_usd"] == pytest.approx(0.007)
    assert report["tenants"]["acme"]["spend_usd"] == pytest.approx(0.006)
    share = next(t for t in report["global"]["targets"] if t["kind"] == "share")
    assert share["realized"] == 1.0
    assert BudgetPacer.from_state(pacer.state(), clock=lambda: clock[0]).report() == report


def test_an_llm_routers_fallback_to_the_policy_is_priced_at_the_pacers_lambda(gateways: Gateways) -> None:
    """When the routing LLM names nobody the policy decides with the λ the pacer sets (a request's own
    `cost_weight` replaces it, as for any routed request), not with the configured default."""
    url = gateways.start(budgets={"avg_cost_usd": 0.00001})
    ask(url, "router", PROSE)  # the target starts at the default λ
    for i in range(3):  # cascades paying far more than the target: λ rises
        ask(url, "cascade", f"{CODE} #{i}")
    lam = report(url)["global"]["cost_weight"]
    default = Settings().routing.cost_weight
    assert lam > 2 * default
    _, info, decision_id = ask(url, "auto", MATH)
    assert info["named"] is None
    assert stored(url, decision_id)["cost_weight"] == pytest.approx(lam)
    _, info, decision_id = ask(url, "auto", f"{MATH} again", extra_body={"bandit_router": {"cost_weight": 3.0}})
    assert info["named"] is None and stored(url, decision_id)["cost_weight"] == pytest.approx(3.0)


def test_an_llm_routers_failed_policy_decision_is_booked_alike_by_every_process(
    gateways: Gateways, fake: ChooserFake
) -> None:
    """The policy's decision whose model failed is stored as a gateway try (then the model that answered, with
    probability 1): the process that served the request books it once stored, another process when it reads it,
    and both correct it by its learned failure feedback, so every process sharing the log counts the same
    requests, shares and spend (two requests, one on `strong`, at what was paid)."""
    budgets = {"share": {"strong": 0}, "spend_usd": "100/1d"}
    a = gateways.start("shared.db", budgets=budgets, workers=2)
    b = gateways.start("shared.db", budgets=budgets, workers=2)
    fake.set("cheap", "fail")
    _, info, _ = ask(a, "auto", MATH)  # the policy picks cheap (strong is excluded), which fails: strong answers
    assert info["named"] is None and [c["model"] for c in info["calls"]] == ["chooser", "cheap", "strong"]

    def booked(url: str) -> tuple[int, float, list[Any]]:
        scope = report(url)["global"]
        return (
            scope["requests"],
            scope["spend_usd"],
            [(t["requests"], t["realized"]) for t in scope["targets"] if t["kind"] == "share"],
        )

    expected = (2, pytest.approx(info["cost_usd"], rel=1e-9), [(2, 0.5)])
    deadline = time.monotonic() + 15
    while not booked(a) == booked(b) == expected:
        assert time.monotonic() < deadline, (booked(a), booked(b))
        time.sleep(0.05)
    time.sleep(0.3)  # a second booking of anything would have happened by now
    assert booked(a) == booked(b) == expected


# -- models the caller names ----------------------------------------------------------------------------------------
def call_cost(url: str, decision_id: str) -> float:
    """The cost on a decision's call record (0 for a call that failed or was refused), once it is stored."""
    deadline = time.monotonic() + 10
    while (call := stored(url, decision_id)["call"]) is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return float(call["cost_usd"] or 0.0)


def caller(url: str, model: str, prompt: str, *, stream: bool = False, tenant: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}
    if tenant is not None:
        body["bandit_router"] = {"context": {"tenant": tenant}}
    return loopback.post(url + "/v1/chat/completions", timeout=30, json=body)


def test_a_model_the_caller_names_is_booked_once_at_what_its_call_cost(gateways: Gateways, fake: ChooserFake) -> None:
    """`model = "<catalog name>"`: the request is booked when its decision is stored (the expected cost) and
    corrected to its call's cost once the call is recorded (its feedback is `unrouted`: learning never corrects
    it); a call that failed (502) or was refused (400) cost nothing; a stream costs what it streamed; a tenant's
    targets see its own calls; feedback changes nothing."""
    url = gateways.start()
    reply = caller(url, "strong", CODE)
    assert reply.status_code == 200, reply.text
    first = reply.headers["x-decision-id"]
    cost = call_cost(url, first)
    assert cost > 0 and cost != pytest.approx(expected_cost(url, first), rel=0.05)  # the fake answers briefly
    assert spent(url) == pytest.approx(cost, rel=1e-9)
    assert feedback(url, first, 0.9)["status"] == "unrouted"
    assert spent(url) == pytest.approx(cost, rel=1e-9)

    reply = caller(url, "strong", PROSE, stream=True, tenant="acme")
    assert reply.status_code == 200 and b"[DONE]" in reply.content
    streamed = call_cost(url, reply.headers["x-decision-id"])
    assert streamed > 0
    assert spent(url, "acme") == pytest.approx(streamed, rel=1e-9)
    fake.set("strong", "fail")
    failed = caller(url, "strong", CODE)
    assert failed.status_code == 502
    fake.set("strong", "reject")
    refused = caller(url, "strong", CODE)
    assert refused.status_code == 400
    assert call_cost(url, refused.headers["x-decision-id"]) == 0.0
    deadline = time.monotonic() + 10  # the failed call's record is stored off the reply path (no decision id in a 502)
    while spent(url) != pytest.approx(cost + streamed, rel=1e-9):
        assert time.monotonic() < deadline, report(url)["global"]
        time.sleep(0.02)
    time.sleep(0.2)
    assert report(url)["global"]["requests"] == 4  # one per stored decision
    assert spent(url) == pytest.approx(cost + streamed, rel=1e-9)


def test_processes_sharing_the_log_book_each_others_caller_named_calls_once(gateways: Gateways, db: str) -> None:
    """Every process books every caller-named call once, at its call record's cost: the one that served it and
    the others, which find the call record after the decision in the log."""
    a = gateways.start(db, workers=2)
    b = gateways.start(db, workers=2)
    total = acme = 0.0
    for i, url in enumerate((a, b, a, b)):
        reply = caller(url, "strong" if i % 2 else "cheap", f"{CODE} #{i}", tenant="acme" if i == 1 else None)
        assert reply.status_code == 200, reply.text
        cost = call_cost(url, reply.headers["x-decision-id"])
        total, acme = total + cost, acme + (cost if i == 1 else 0.0)

    _every_process_books((a, b), requests=4, spend=total, acme=acme)


# -- the gateway's feedback judge ----------------------------------------------------------------------------------
JUDGED = {"judge_model": JUDGE, "judge_sample_rate": 1.0, "judge_delay_s": 0.1}
"""The feedback judge scores every routed answer (after its call record is stored)."""


def judge_stats(url: str) -> dict[str, Any]:
    return dict(loopback.get(url + "/v1/stats").json()["judge"])


def judged(url: str, answers: int) -> float:
    """Wait until this process's judge scored `answers` answers; what its calls cost (`/v1/stats`' `judge.process`:
    this process's own; `judge.spend_usd` is every process's)."""
    deadline = time.monotonic() + 15
    while (stats := judge_stats(url))["scored"] < answers:
        assert time.monotonic() < deadline, stats
        time.sleep(0.02)
    assert stats["failed"] == stats["unreadable"] == stats["overridden"] == 0, stats
    return float(stats["process"]["spend_usd"])


def routed(url: str, prompt: str, tenant: str | None = None) -> float:
    """A routed request (the policy chooses; the judge scores its answer); what its answer's call cost."""
    reply = caller(url, "router", prompt, tenant=tenant)
    assert reply.status_code == 200, reply.text
    return call_cost(url, reply.headers["x-decision-id"])


def test_the_feedback_judges_calls_are_booked_once_in_the_tenant_of_the_answer_they_score(
    gateways: Gateways,
) -> None:
    """The judge's score is the routed decision's feedback, so learning corrects the decision's booking to its
    answer's cost; the judge's own call is money spent beside it, in the scopes of the request it scored (the
    global one and its tenant's): booked once, not a request."""
    url = gateways.start(**JUDGED)
    acme = sum(routed(url, f"{PROSE} #{i}", tenant="acme") for i in range(2))
    judge_acme = judged(url, 2)
    assert judge_acme > 0
    others = sum(routed(url, f"{CODE} #{i}") for i in range(3))
    judge_all = judged(url, 5)
    assert judge_all > judge_acme
    time.sleep(0.2)
    scopes = report(url)
    assert scopes["global"]["requests"] == 5 and scopes["tenants"]["acme"]["requests"] == 2
    assert scopes["global"]["spend_usd"] == pytest.approx(acme + others + judge_all, rel=1e-9)
    assert scopes["tenants"]["acme"]["spend_usd"] == pytest.approx(acme + judge_acme, rel=1e-9)


def test_processes_sharing_the_log_book_each_others_judge_calls_once(gateways: Gateways, db: str) -> None:
    """Each process's judge scores the answers it served; every process books every judge call once, in the
    scored request's tenant: its own when the call is made, the others' from the log."""
    a = gateways.start(db, workers=2, **JUDGED)
    b = gateways.start(db, workers=2, **JUDGED)
    total = acme = 0.0
    judges = {a: 0.0, b: 0.0}
    for i, url in enumerate((a, b, a, b)):
        cost = routed(url, f"{CODE} #{i}", tenant="acme" if i == 1 else None)
        so_far = judged(url, i // 2 + 1)  # this answer's judge call: what the serving process's judge paid since
        cost, judges[url] = cost + so_far - judges[url], so_far
        total, acme = total + cost, acme + (cost if i == 1 else 0.0)

    _every_process_books((a, b), requests=4, spend=total, acme=acme)
    # `/v1/stats` reports the judge's calls and spend of both processes, from either; each its own in `process`
    summaries = [judge_stats(url) for url in (a, b)]
    assert [s["process"]["spend_usd"] for s in summaries] == [judges[a], judges[b]]
    for summary in summaries:
        assert summary["calls"] == 4 and summary["scored"] == 2
        assert summary["spend_usd"] == pytest.approx(judges[a] + judges[b], rel=1e-9)
        assert summary["input_tokens"] == sum(s["process"]["input_tokens"] for s in summaries)


def _every_process_books(urls: tuple[str, ...], *, requests: int, spend: float, acme: float) -> None:
    """Wait (≤ 15 s) until every process reports these global requests and spend and acme's spend, then check
    that 0.3 s later (the log is read every 50 ms) none has booked or corrected anything twice."""

    def booked(url: str) -> tuple[int, float, float]:
        scopes = report(url)
        return scopes["global"]["requests"], scopes["global"]["spend_usd"], scopes["tenants"]["acme"]["spend_usd"]

    expected = (requests, pytest.approx(spend, rel=1e-9), pytest.approx(acme, rel=1e-9))
    deadline = time.monotonic() + 15
    while not all(booked(u) == expected for u in urls):
        assert time.monotonic() < deadline, [booked(u) for u in urls]
        time.sleep(0.05)
    time.sleep(0.3)
    assert all(booked(u) == expected for u in urls), [booked(u) for u in urls]  # summed in different orders


def test_migration_8_gives_a_schema_7_database_the_judge_calls(gateways: Gateways, db: str) -> None:
    """A schema-7 database (budget state stored, no `judge_calls`) upgrades when the service starts: the stored
    spend is kept, and from then on every process sharing the log books every judge call once."""
    url = gateways.start(db, **JUDGED)
    before = routed(url, PROSE) + judged(url, 1)
    assert spent(url) == pytest.approx(before, rel=1e-9)
    gateways.stop(url)
    as_previous_schema(db if "://" in db else str(gateways.folder / db), "judge_calls", 7)
    a = gateways.start(db, workers=2, **JUDGED)
    b = gateways.start(db, workers=2)
    for url in (a, b):
        assert spent(url) == pytest.approx(before, rel=1e-9)
    after = before + routed(a, CODE) + judged(a, 1)
    deadline = time.monotonic() + 15
    while not all(spent(u) == pytest.approx(after, rel=1e-9) for u in (a, b)):
        assert time.monotonic() < deadline, [spent(u) for u in (a, b)]
        time.sleep(0.05)
    time.sleep(0.3)
    assert spent(a) == pytest.approx(after, rel=1e-9) and spent(b) == pytest.approx(after, rel=1e-9)


def test_a_process_sharing_the_log_forgets_its_own_decision_ids_without_targets(tmp_path: Path) -> None:
    """A process sharing the log notes every decision (and judge call) it books (`mine`) so as not to book it again
    from the log. Without targets it reads no log, so nothing removes them as they appear: they are forgotten after
    `OWN_FORGET_S` all the same (a deployment without budgets kept every request's id in memory)."""
    from bandit_router.budgets import BudgetPacer
    from bandit_router.log import budget_state
    from bandit_router.store.location import open_store

    store = open_store(tmp_path / "shared.db")
    try:
        state = budget_state.BudgetState(store, BudgetPacer(), shared=True)
        for i in range(100):
            state.mine(f"d{i}")
            state.book_judge_call(JudgeCall(f"d{i}", None, JUDGE, 10, 2, 1e-6, 0.0), mine=True)
        # as if noted that long ago (the monotonic clock is left alone)
        for decision_id, made in list(state._own.items()):
            state._own[decision_id] = made - budget_state.OWN_FORGET_S - 1
        for decision_id in state._own_judged:
            state._own_judged[decision_id] -= budget_state.OWN_FORGET_S + 1
        state.mine("recent")
        state.follow_decisions()
        assert list(state._own) == ["recent"] and not state._own_judged
    finally:
        store.close()
