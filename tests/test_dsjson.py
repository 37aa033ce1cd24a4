"""DSJSON export, read back with vowpal-wabbit-next's own DSJSON parser and reader."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from typing import cast

import numpy as np
import pytest
import vowpal_wabbit_next as vw

from bandit_router.errors import InvalidInput
from bandit_router.evaluation import LoggedRecord, export_dsjson, to_dsjson
from bandit_router.evaluation.dsjson import SHARED_PREFIX
from bandit_router.evaluation.synthetic import SimulatedLog, SyntheticWorld, make_world, simulate_log
from bandit_router.features import FeatureExtractor
from bandit_router.router import Router
from bandit_router.types import Request

LAM = 100.0


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return make_world(seed=21)


@pytest.fixture(scope="module")
def log(world: SyntheticWorld) -> SimulatedLog:
    return simulate_log(world, "vw-squarecb", 300, seed=21, cost_weight=LAM, delay=2)


def _workspace() -> vw.Workspace:
    return vw.Workspace(["--cb_explore_adf", "--quiet", "-q", "sa"])


def _export(log: SimulatedLog, world: SyntheticWorld, **kwargs: object) -> list[str]:
    buffer = io.StringIO()
    written = export_dsjson(log.records, buffer, specs=world.models, **kwargs)  # type: ignore[arg-type]
    lines = buffer.getvalue().splitlines()
    assert written == len(lines)
    return lines


def test_every_line_round_trips_through_vw_dsjson_parser(world: SyntheticWorld, log: SimulatedLog) -> None:
    lines = _export(log, world)
    assert len(lines) == len(log.records)
    workspace = _workspace()
    parser = vw.DSJsonFormatParser(workspace)
    for line, record in zip(lines, log.records, strict=True):
        d, outcome = record.decision, record.outcome
        assert outcome is not None and record.cost_usd is not None
        examples = parser.parse_json(line)
        assert len(examples) == 1 + len(d.models)  # shared + one per allowed model
        shared = examples[0].get_label()
        assert isinstance(shared, vw.CBLabel) and shared.shared
        labelled = [i for i, ex in enumerate(examples[1:]) if ex.get_label().label is not None]  # type: ignore[union-attr]
        chosen = d.models.index(d.model)
        assert labelled == [chosen]
        action, cost, probability = examples[1 + chosen].get_label().label  # type: ignore[union-attr, misc]
        assert action == chosen + 1
        assert cost == pytest.approx(-(outcome.quality - LAM * record.cost_usd), abs=1e-6)
        assert probability == pytest.approx(d.probability, rel=1e-6)
        event = json.loads(line)
        assert event["EventId"] == d.decision_id
        assert event["a"][0] == chosen + 1 and sorted(event["a"]) == list(range(1, len(d.models) + 1))
        assert [event["p"][event["a"].index(i + 1)] for i in range(len(d.models))] == pytest.approx(list(d.pmf))
        workspace.learn_one(examples)  # VW can learn from every event


def test_shared_features_are_the_stored_hashed_features(world: SyntheticWorld, log: SimulatedLog) -> None:
    workspace = _workspace()
    parser = vw.DSJsonFormatParser(workspace)
    record = log.records[0]
    examples = parser.parse_json(_export(log, world)[0])
    n_unique = sum(len(np.unique(idx)) for idx, _ in record.decision.context.features.values())
    shared = examples[0]
    assert sum(len(group.indices) for group in shared) == n_unique
    assert [group.feat_group_index for group in shared] == [ord("s")]  # every shared namespace starts with s
    event = json.loads(_export(log, world)[0])
    for ns, (idx, val) in record.decision.context.features.items():
        if len(idx):
            got = event["c"][SHARED_PREFIX + ns]
            assert {str(i) for i in idx.tolist()} == set(got)
            assert sum(got.values()) == pytest.approx(float(val.sum()), rel=1e-6)
    for ex in examples[1:]:
        assert [g.feat_group_index for g in ex] == [ord("a")]
    model = event["c"]["_multi"][0]["a"]
    assert model["model"] == record.decision.models[0] and model["family"] and "price" in model


def test_reader_reads_an_exported_file(tmp_path, world: SyntheticWorld, log: SimulatedLog) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "log.dsjson"
    with path.open("w", encoding="utf-8") as fp:
        export_dsjson(log.records, fp, specs=world.models)
    workspace = _workspace()
    with vw.DSJsonFormatReader(workspace, path.open("r", encoding="utf-8")) as reader:
        events = list(reader)
    assert len(events) == len(log.records)
    for examples in events:
        workspace.learn_one(examples)
    pmf = cast(list[tuple[int, float]], workspace.predict_one(events[-1]))
    assert len(pmf) == len(world.models) and sum(p for _, p in pmf) == pytest.approx(1.0, abs=1e-5)


def test_quality_label_and_a_fixed_lambda(world: SyntheticWorld, log: SimulatedLog) -> None:
    record = log.records[3]
    assert record.outcome is not None and record.cost_usd is not None
    assert to_dsjson(record, label="quality")["_label_cost"] == -record.outcome.quality
    assert to_dsjson(record, cost_weight=0.0)["_label_cost"] == -record.outcome.quality
    lam = to_dsjson(record, cost_weight=5.0)["_label_cost"]
    assert lam == pytest.approx(-(record.outcome.quality - 5.0 * record.cost_usd))
    with pytest.raises(InvalidInput, match="label must be"):
        to_dsjson(record, label="cost")


def test_unlabelled_decisions_are_skipped_or_written_without_labels(world: SyntheticWorld) -> None:
    router = Router(world.models, policy="random", seed=0)
    ctx = FeatureExtractor()(Request(prompt="hello there, how are you?", context={"tenant": "acme", "n": 3}))
    records = [LoggedRecord(router.decide(ctx, cost_weight=LAM, decision_id=f"u{i}")) for i in range(3)]
    buffer = io.StringIO()
    assert export_dsjson(records, buffer) == 0 and buffer.getvalue() == ""
    assert export_dsjson(records, buffer, include_unlabeled=True) == 3
    parser = vw.DSJsonFormatParser(_workspace())
    for line in buffer.getvalue().splitlines():
        event = json.loads(line)
        assert "_label_cost" not in event and "_labelIndex" not in event
        examples = parser.parse_json(line)
        assert all(ex.get_label().label is None for ex in examples[1:])  # type: ignore[union-attr]
        assert event["c"]["_multi"][0]["a"] == {"model": world.models[0].name}  # no catalog: the name only


def test_timestamp_is_iso_utc_with_milliseconds(world: SyntheticWorld, log: SimulatedLog) -> None:
    event = to_dsjson(log.records[1])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["Timestamp"])
    assert event["Version"] == "1"
    assert event["_bandit_router"]["policy"] == "vw-squarecb"


@pytest.mark.parametrize(("created_at", "timestamp"), [
    (951782400.0, "2000-02-29T00:00:00.000Z"), (1798761599.9996, "2026-12-31T23:59:59.999Z"),
    (-5.0, "1970-01-01T00:00:00.000Z"), (253402300799.0, "9999-12-31T23:59:59.000Z"),
    (1.7e12, None), (float("nan"), None), (float("inf"), None),
])
def test_the_timestamp_is_utc_cut_to_the_millisecond_and_a_time_that_is_none_is_refused_naming_the_decision(
    log: SimulatedLog, created_at: float, timestamp: str | None,
) -> None:
    """A leap day and the last millisecond of a year read as such, whatever the host's zone; a `created_at` past the
    year 9999 (milliseconds given for seconds) or not a number was a bare `ValueError: year 55840 is out of range`
    (or `OverflowError`) from deep in the export; it is `InvalidInput` naming the decision and the value."""
    import dataclasses

    record = log.records[1]
    moved = dataclasses.replace(record, decision=dataclasses.replace(record.decision, created_at=created_at))
    if timestamp is not None:
        assert to_dsjson(moved)["Timestamp"] == timestamp
        return
    with pytest.raises(InvalidInput, match=f"decision {record.decision.decision_id!r}: created_at .* not a Unix time"):
        to_dsjson(moved)


def test_an_outcome_of_the_default_reward_is_marked(log: SimulatedLog) -> None:
    """A label that is the service's `default_reward` (a window closed without feedback) was exported as a caller's
    report, with nothing to tell them apart. `_bandit_router.default_reward` marks it (hunt-ope)."""
    record = log.records[0]
    assert "default_reward" not in to_dsjson(record)["_bandit_router"]
    marked = to_dsjson(dataclasses.replace(record, default_reward=True))
    assert marked["_bandit_router"]["default_reward"] is True
    examples = vw.DSJsonFormatParser(_workspace()).parse_json(json.dumps(marked))  # VW still reads the event
    assert len(examples) == 1 + len(record.decision.models)
