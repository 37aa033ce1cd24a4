"""A service database as an evaluation log: every stored decision joined with the feedback the service learned
for it and the shadow policies' pmfs logged next to it (`LoggedRecord`s), and the specs of its models."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from ..catalog import ModelSpec
from ..store import FeedbackStatus, ModelAction, Reader, Store, StoredDecision
from ..store.records import unrouted
from .log import LoggedRecord

PAGE = 2000


def iter_log(store: Store, *, page: int = PAGE, fallbacks: bool = False) -> Iterator[LoggedRecord]:
    """Every stored decision of the bandit in storage order with its learned feedback (the outcome the policy
    learned, its realised cost, when it arrived) and its shadow pmfs; `outcome` is None while no feedback was
    learned.

    Decisions the bandit did not make are left out: a model the caller named and a named router's choice
    (`unrouted`: their feedback is stored, never learned, so they would count as decisions without feedback).
    So are the gateway's fallbacks (a try after a failed one: a decision over the models not yet tried), unless
    `fallbacks`: they exist only because their request's first choice failed, and that first choice is already in
    the log with the failure as its outcome (docs: the gateway, "How fallbacks are logged")."""
    position = 0
    while True:
        with store.read() as reader:
            rows = reader.decisions_after(position, page)
            if not rows:
                return
            stored_rows = [stored for _, stored in rows if stored is not None and not unrouted(stored.decision.policy)]
            records = logged_records(reader, stored_rows if fallbacks else first_tries(reader, stored_rows))
        position = rows[-1][0]
        yield from records


def with_feedback(store: Store) -> tuple[list[LoggedRecord], int]:
    """`iter_log`'s records that have feedback, and how many had none: what `evaluate_log` keeps of a log (its
    `without_feedback`), read in one pass without holding the decisions that have no feedback (most of a log whose
    callers send feedback for a sample)."""
    kept: list[LoggedRecord] = []
    without = 0
    for record in iter_log(store):
        if record.outcome is None:
            without += 1
        else:
            kept.append(record)
    return kept, without


def recent_log(store: Store, limit: int) -> list[LoggedRecord]:
    """The bandit's decisions among the newest `limit` stored ones as `LoggedRecord`s, oldest first (one read:
    bounded work; see `iter_log` for what is left out)."""
    with store.read() as reader:
        rows = reader.recent_decisions(limit)
        mine = [stored for _, stored in reversed(rows) if not unrouted(stored.decision.policy)]
        return logged_records(reader, first_tries(reader, mine))


def first_tries(reader: Reader, rows: Sequence[StoredDecision]) -> list[StoredDecision]:
    """`rows` without the gateway's fallbacks (decisions whose call record says `attempt` > 1)."""
    calls = reader.calls_for_many([stored.decision.decision_id for stored in rows])
    return [s for s in rows if (c := calls.get(s.decision.decision_id)) is None or c.attempt == 1]


def logged_records(reader: Reader, rows: Sequence[StoredDecision]) -> list[LoggedRecord]:
    """`rows` joined with their learned feedback and shadow pmfs (two queries)."""
    ids = [stored.decision.decision_id for stored in rows]
    feedback = reader.feedback_for_many(ids)
    shadows = reader.shadow_pmfs_for_many(ids)
    out: list[LoggedRecord] = []
    for stored in rows:
        decision = stored.decision
        k = len(decision.models)
        shadow = {name: tuple(p) for name, p in shadows.get(decision.decision_id, {}).items() if len(p) == k}
        learned = [f for f in feedback.get(decision.decision_id, []) if f.learn]
        if not learned:
            out.append(LoggedRecord(decision, shadow_pmfs=shadow))
            continue
        last = learned[-1]
        out.append(LoggedRecord(
            decision,
            last.outcome(),
            cost_usd=last.realised_cost_usd,
            feedback_at=last.received_at,
            shadow_pmfs=shadow,
            default_reward=last.status == FeedbackStatus.DEFAULT,
        ))
    return out


def model_specs(store: Store, catalog: Iterable[ModelSpec]) -> dict[str, ModelSpec]:
    """The catalog's models and every model added at run time (their specs are in the model events), each with
    the spec the service routes it with: the model events applied in log order over the catalog, as the service
    applies them (an addition of a model that is active, a catalog entry among them, is not applied: the catalog's
    prices win; one after the model was retired replaces its spec)."""
    specs = {spec.name: spec for spec in catalog}
    active = set(specs)
    with store.read() as reader:
        for event in reader.model_events_after(0):
            if event.action == ModelAction.ADD and event.spec is not None and event.name not in active:
                specs[event.name] = event.spec
                active.add(event.name)
            elif event.action == ModelAction.RETIRE:
                active.discard(event.name)
    return specs


def retired_models(store: Store, catalog: Iterable[ModelSpec]) -> tuple[str, ...]:
    """The models retired at run time (`DELETE /v1/models/{name}`) and not added back, as the service restores its
    model list at a start (`log.catalog.stored_catalog`): `model_specs` keeps their specs to price their outcomes,
    and `evaluate_log(retired=…)` routes to none of them."""
    from ..log.catalog import stored_catalog  # not at import: bandit_router.log imports the evaluation

    return tuple(spec.name for spec in stored_catalog(catalog, store).retired)


def shadow_names(records: Iterable[LoggedRecord]) -> tuple[list[str], list[str]]:
    """Shadow names logged with every record that has feedback, and those logged with only some of them."""
    counts: dict[str, int] = {}
    n = 0
    for record in records:
        if record.outcome is None:
            continue
        n += 1
        for name in record.shadow_pmfs:
            counts[name] = counts.get(name, 0) + 1
    return [s for s, c in counts.items() if c == n], [s for s, c in counts.items() if c < n]
