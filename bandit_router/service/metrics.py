"""Prometheus metrics of one app, in its own registry (several apps can live in one process, as in tests).

With `--workers N` the counters and histograms are the workers' sums, whichever worker answers the scrape:
`serve` gives the workers a shared folder (`PROMETHEUS_MULTIPROC_DIR`, prometheus-client's multiprocess mode:
each process writes its values to a memory-mapped file there, and a scrape adds them up; `metricsdir`); the gauges
read at scrape time (readiness, policy version, budgets, checkpoints, the judge) are the answering worker's. A
`PROMETHEUS_MULTIPROC_DIR` that `serve` did not set (an operator's, for processes of their own) is not used: an
app's metrics are then its own and in memory, as in one process (`_ValuesOfThisProcess`).

Export cannot fail on a name: names are validated when they come in (`bandit_router.names`), and every label
value also passes through `safe_text` here (a name stored by an older version may hold a lone surrogate, which
prometheus-client cannot encode); should rendering still raise, the reply is a comment line saying so (logged),
never a 500.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client import Counter as _Counter
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from ..config import RouterAlias
from ..names import safe_text
from ..store import CallRecord, RouterCounts
from ..types import Decision
from .metricsdir import join_folder, serves_this_process

log = logging.getLogger("bandit_router.service")
ROUTE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


_local = threading.local()


class _ValuesOfThisProcess:
    """prometheus-client's `values.ValueClass` where it picked its multiprocess values (the environment had
    `PROMETHEUS_MULTIPROC_DIR` when it was imported: an application's own multiprocess setup): the values of the
    metrics `Metrics` makes outside `serve`'s workers (`_Local*`, on this thread) are kept in memory, every other
    metric's as prometheus-client picked. Without it two apps in one process wrote one key of the folder's files
    and each new value started from the other's count."""

    def __init__(self, picked: Any) -> None:
        self.picked = picked

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kind = values.MutexValue if getattr(_local, "in_memory", False) else self.picked
        return kind(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.picked, name)


@contextlib.contextmanager
def _in_memory() -> Iterator[None]:
    if values.ValueClass is not values.MutexValue and not isinstance(values.ValueClass, _ValuesOfThisProcess):
        values.ValueClass = _ValuesOfThisProcess(values.ValueClass)
    _local.in_memory = True
    try:
        yield
    finally:
        _local.in_memory = False


def _name_files_after(slot: str) -> None:
    """prometheus-client's multiprocess values named after this worker's slot (`metricsdir.join_folder`), not its
    pid: a worker started in place of a dead one writes the dead one's files and goes on from its counts. Set
    before this process makes any metric (once: later calls see it set)."""
    current = getattr(values.ValueClass, "slot", None)
    if current == slot:
        return
    value_class = values.MultiProcessValue(process_identifier=lambda: slot)  # type: ignore[no-untyped-call]
    value_class.slot = slot
    values.ValueClass = value_class


class _LocalCounter(_Counter):
    def _metric_init(self) -> None:
        with _in_memory():
            super()._metric_init()


class _LocalGauge(_Gauge):
    def _metric_init(self) -> None:
        with _in_memory():
            super()._metric_init()


class _LocalHistogram(_Histogram):
    def _metric_init(self) -> None:
        with _in_memory():
            super()._metric_init()


class Metrics:
    """Decisions and feedback by model and status, learned reward and cost sums, route latency, policy version,
    HTTP replies by route and status code, the gateway's upstream calls, the named routers' requests."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        """This process's values read at scrape time (and, in one process, every metric)."""
        self.shared: CollectorRegistry | None = None
        """In a worker of `serve --workers N` (`metricsdir.serves_this_process`): the counters and histograms of
        every worker, summed from their files at scrape time; they are then in no registry of their own."""
        folder = serves_this_process()
        if folder is not None:
            try:
                slot = join_folder(folder)
            except OSError as exc:
                raise RuntimeError(f"cannot allocate this worker's metrics files in {folder}: {exc.strerror} (free "
                                   "some room on its file system, or set [server] metrics_dir)") from None
            _name_files_after(slot)
            self.shared = CollectorRegistry()
            MultiProcessCollector(self.shared)  # type: ignore[no-untyped-call]
        r = None if self.shared is not None else self.registry
        # in one process, values in memory whatever prometheus-client picked (`_ValuesOfThisProcess`)
        Counter, Gauge, Histogram = (_Counter, _Gauge, _Histogram) if self.shared is not None \
            else (_LocalCounter, _LocalGauge, _LocalHistogram)
        self.decisions = Counter("bandit_router_decisions", "Decisions stored, by chosen model", ["model"], registry=r)
        self.feedback = Counter(
            "bandit_router_feedback", "Feedback stored (or recognised as duplicate), by model and status",
            ["model", "status"], registry=r,
        )
        self.reward_sum = Gauge(
            "bandit_router_learned_reward_sum",
            "Sum of the rewards of learned feedback (not a closed window's default reward), by model", ["model"],
            registry=r, multiprocess_mode="sum",
        )
        self.cost_sum = Counter(
            "bandit_router_learned_cost_usd",
            "Sum of the realised cost (USD) of learned feedback (not a default reward's), by model", ["model"],
            registry=r,
        )
        self.route_latency = Histogram(
            "bandit_router_route_latency_seconds", "Time to answer POST /v1/route (decide + durable log)",
            buckets=ROUTE_BUCKETS, registry=r,
        )
        self.requests = Counter(
            "bandit_router_http_requests", "HTTP replies by route and status code", ["route", "code"], registry=r
        )
        self.upstream_calls = Counter(
            "bandit_router_upstream_calls", "The gateway's upstream calls, by model and how they ended (ok, timeout, "
            "connection_error, server_error, invalid_response, rejected, cancelled)", ["model", "status"], registry=r,
        )
        self.upstream_seconds = Histogram(
            "bandit_router_upstream_seconds", "Duration of the gateway's answered upstream calls, by model",
            ["model"], buckets=UPSTREAM_BUCKETS, registry=r,
        )
        self.upstream_ttft = Histogram(
            "bandit_router_upstream_ttft_seconds", "Time to the first streamed chunk of answered calls, by model",
            ["model"], buckets=UPSTREAM_BUCKETS, registry=r,
        )
        self.upstream_cost = Counter(
            "bandit_router_upstream_cost_usd", "Cost (USD, usage × catalog prices) of the gateway's calls, by model",
            ["model"], registry=r,
        )
        self.named_requests = Counter(
            "bandit_router_named_router_requests", "A named router's requests ([[routers]] aliases), by router and "
            "the model that answered (\"\": none did)", ["router", "model"], registry=r,
        )
        self.named_escalations = Counter(
            "bandit_router_named_router_escalations", "A cascade's escalations (steps that called the next model), "
            "by router", ["router"], registry=r,
        )
        self.named_escalated = Counter(
            "bandit_router_named_router_escalated_requests", "A cascade's requests that escalated at least once, by "
            "router", ["router"], registry=r,
        )
        self.named_calls = Counter(
            "bandit_router_named_router_calls", "A named router's upstream calls, by router and role (answer, judge, "
            "router: the routing LLM's)", ["router", "role"], registry=r,
        )
        self.named_failed_calls = Counter(
            "bandit_router_named_router_failed_calls", "A named router's upstream calls that failed, by router",
            ["router"], registry=r,
        )
        self.named_fallbacks = Counter(
            "bandit_router_named_router_fallbacks", "An LLM router's requests whose routing reply named no candidate "
            "(the policy decided), by router", ["router"], registry=r,
        )
        self.named_cost = Counter(
            "bandit_router_named_router_cost_usd", "Cost (USD) of a named router's calls (answers, judge, routing "
            "LLM), by router", ["router"], registry=r,
        )
        self.named_seconds = Histogram(
            "bandit_router_named_router_request_duration_seconds",
            "Time to answer a named router's request (its whole chain, the decision stored), by router", ["router"],
            buckets=UPSTREAM_BUCKETS, registry=r,
        )
        self._children: dict[tuple[str, ...], object] = {}
        self._declared = [m for m in vars(self).values() if isinstance(m, MetricWrapperBase)]
        """Every counter, gauge and histogram above (`render`: their families are listed before their first
        sample with workers too)."""

    def bind(self, policy_version: Callable[[], float], applied_seq: Callable[[], float],
             ready: Callable[[], float]) -> None:
        """Read the process's gauges from the engine at scrape time (a collector, not `Gauge`s: in multiprocess
        mode a `Gauge` writes a file that every worker's scrape would read too)."""
        self.registry.register(_ProcessCollector(policy_version, applied_seq, ready))

    def bind_budgets(self, report: Callable[[], Mapping[str, Any]]) -> None:
        """Export the budget pacer's `report()` at scrape time (spend, λ, and per target its value and realised
        value), by tenant (`""` for the global scope)."""
        self.registry.register(_BudgetCollector(report))

    def decision_stored(self, decision: Decision) -> None:
        key = ("d", decision.model)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.decisions.labels(safe_text(decision.model))
        child.inc()  # type: ignore[attr-defined]

    def feedback_stored(self, model: str, status: str, reward: float, cost_usd: float, learned: bool) -> None:
        model = safe_text(model)
        self.feedback.labels(model, safe_text(status)).inc()
        if learned:
            self.reward_sum.labels(model).inc(reward)
            self.cost_sum.labels(model).inc(cost_usd)

    def call_recorded(self, record: CallRecord) -> None:
        """One upstream call of the gateway ended (called on the event loop)."""
        model = safe_text(record.model)
        self.upstream_calls.labels(model, safe_text(record.status)).inc()
        if record.status == "ok" and record.latency_s is not None:
            self.upstream_seconds.labels(model).observe(record.latency_s)
            if record.stream and record.ttft_s is not None:
                self.upstream_ttft.labels(model).observe(record.ttft_s)
        if record.cost_usd:
            self.upstream_cost.labels(model).inc(record.cost_usd)

    def declare_named_routers(self, routers: Iterable[RouterAlias]) -> None:
        """Every configured named router's series at 0 from the start (each of its models' and the unanswered
        requests, its calls by the roles it makes), so that a first request is an increase, not a new series."""
        for alias in routers:
            name = safe_text(alias.name)
            for model in (*alias.models, ""):
                self.named_requests.labels(name, safe_text(model))
            roles = ["answer"] + (["router"] if alias.strategy == "llm-router" else []) + (
                ["judge"] if alias.strategy != "llm-router" and alias.signal == "judge" else [])
            for role in roles:
                self.named_calls.labels(name, role)
            for family in (self.named_failed_calls, self.named_cost, self.named_seconds):
                family.labels(name)
            if alias.strategy == "llm-router":
                self.named_fallbacks.labels(name)
            else:
                self.named_escalations.labels(name)
                self.named_escalated.labels(name)

    def named_request(self, counts: RouterCounts) -> None:
        """One request of a named router ended, answered or not (`store.router_stats.of_chain` of its chain: what it
        adds to `GET /v1/stats`'s counts); called on the event loop."""
        router = safe_text(counts.router)
        self.named_requests.labels(router, safe_text(counts.model)).inc(counts.requests)
        for role, calls in (("answer", counts.answer_calls), ("judge", counts.judge_calls),
                            ("router", counts.router_calls)):
            if calls:
                self.named_calls.labels(router, role).inc(calls)
        if counts.failed_calls:
            self.named_failed_calls.labels(router).inc(counts.failed_calls)
        if counts.escalations:
            self.named_escalations.labels(router).inc(counts.escalations)
            self.named_escalated.labels(router).inc(counts.escalated_requests)
        if counts.fallbacks:
            self.named_fallbacks.labels(router).inc(counts.fallbacks)
        if counts.spend_usd:
            self.named_cost.labels(router).inc(counts.spend_usd)

    def named_answer(self, router: str, seconds: float) -> None:
        """A named router answered a request in `seconds`."""
        self.named_seconds.labels(safe_text(router)).observe(seconds)

    def bind_checkpoints(self, report: Callable[[], Mapping[str, Any]], unreadable: Callable[[], float]) -> None:
        """Export the checkpointer's `report()` (`Checkpointer.report`) and the learned feedback rows skipped
        because their decisions cannot be read, at scrape time."""
        self.registry.register(_CheckpointCollector(report, unreadable))

    def bind_judge(self, report: Callable[[], Mapping[str, Any]]) -> None:
        """Export the judge's counters and spend at scrape time."""
        self.registry.register(_JudgeCollector(report))

    def request(self, route: str, code: int) -> None:
        key = (route, str(code))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(safe_text(route), str(code))
        child.inc()  # type: ignore[attr-defined]

    def render(self) -> bytes:
        try:
            own = generate_latest(self.registry)
            return own if self.shared is None else generate_latest(_Listed(self.shared, self._declared)) + own
        except Exception as exc:  # a collector that raised: say so, and still export what can be exported
            log.error("rendering /metrics failed: %s", type(exc).__name__, exc_info=exc)
            return b"# bandit_router: rendering the metrics failed; see the service log\n"


class _Listed:
    """The workers' families summed from their files (`shared`), then every `declared` family that has no value in
    them yet, without samples: in one process prometheus-client lists such a family (its `# HELP` and `# TYPE`),
    while its multiprocess collector reads only the files, where a family is written with its first labels. A
    label-less family has its value from the start in both."""

    def __init__(self, shared: CollectorRegistry, declared: Iterable[MetricWrapperBase]) -> None:
        self.shared, self.declared = shared, declared

    def collect(self) -> Iterator[Metric]:
        found = set()
        for family in self.shared.collect():
            found.add(family.name)
            yield family
        for metric in self.declared:
            for family in metric.describe():
                if family.name not in found:
                    yield family


class _ProcessCollector(Collector):
    def __init__(self, policy_version: Callable[[], float], applied_seq: Callable[[], float],
                 ready: Callable[[], float]) -> None:
        self._read = (policy_version, applied_seq, ready)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        policy_version, applied_seq, ready = self._read
        yield GaugeMetricFamily("bandit_router_policy_version", "Feedbacks learned by this process",
                                value=float(policy_version()))
        yield GaugeMetricFamily("bandit_router_applied_seq", "Last feedback seq applied by this process",
                                value=float(applied_seq()))
        yield GaugeMetricFamily("bandit_router_ready", "1 when the service is ready", value=float(ready()))

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class _BudgetCollector(Collector):
    def __init__(self, report: Callable[[], Mapping[str, Any]]) -> None:
        self._report = report

    def collect(self) -> Iterator[GaugeMetricFamily]:
        spend = GaugeMetricFamily(
            "bandit_router_budget_spend_usd", "Spend booked by the budget pacer (expected, corrected by feedback)",
            labels=["tenant"],
        )
        lam = GaugeMetricFamily(
            "bandit_router_budget_cost_weight", "λ (quality points per USD) the pacer gives the next request",
            labels=["tenant"],
        )
        target = GaugeMetricFamily(
            "bandit_router_budget_target", "A budget target's value", labels=["tenant", "target"]
        )
        realized = GaugeMetricFamily(
            "bandit_router_budget_realized", "A budget target's realised value (spend targets: this period)",
            labels=["tenant", "target"],
        )
        report = self._report()
        scopes = [("", report["global"]), *report["tenants"].items()]
        for name, scope in scopes:
            tenant = safe_text(name)
            spend.add_metric([tenant], float(scope["spend_usd"]))
            if scope["cost_weight"] is not None:
                lam.add_metric([tenant], float(scope["cost_weight"]))
            for t in scope["targets"]:
                label = safe_text(t["target"])
                target.add_metric([tenant, label], float(t["value"]))
                if t["realized"] is not None:
                    realized.add_metric([tenant, label], float(t["realized"]))
        yield from (spend, lam, target, realized)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class _CheckpointCollector(Collector):
    def __init__(self, report: Callable[[], Mapping[str, Any]], unreadable: Callable[[], float]) -> None:
        self._report = report
        self._unreadable = unreadable

    def collect(self) -> Iterator[GaugeMetricFamily]:
        report = self._report()
        yield GaugeMetricFamily(
            "bandit_router_unreadable_skipped", "Learned feedback rows (and learned cascades' chains) this process "
            "skipped because their decisions cannot be read", value=float(self._unreadable()),
        )
        yield GaugeMetricFamily(
            "bandit_router_checkpoints_withheld", "1 while this process stores no checkpoint because rows are skipped "
            "(replay and retention's log grow until they are repaired)", value=float(report["withheld"]),
        )
        yield GaugeMetricFamily(
            "bandit_router_seqs_since_checkpoint", "Feedback seqs this process applied after the newest "
            "checkpoint it restored or stored (about what a restart replays)", value=float(report["feedback_since"]),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class _JudgeCollector(Collector):
    FIELDS = ("sampled", "dropped", "scored", "overridden", "failed", "unreadable", "queued")

    def __init__(self, report: Callable[[], Mapping[str, Any]]) -> None:
        self._report = report

    def collect(self) -> Iterator[GaugeMetricFamily]:
        report = self._report()
        jobs = GaugeMetricFamily("bandit_router_judge_jobs", "The judge's jobs by what became of them (and queued)",
                                 labels=["state"])
        for name in self.FIELDS:
            jobs.add_metric([name], float(report[name]))
        spend = GaugeMetricFamily("bandit_router_judge_spend_usd", "Cost of the judge's calls (USD)")
        spend.add_metric([], float(report["spend_usd"]))
        yield from (jobs, spend)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
