"""Export logged decisions in Vowpal Wabbit's decision-service JSON (DSJSON), one event per line.

VW's own tools read it (`vw --cb_explore_adf --dsjson -d log.json`, `vowpal_wabbit_next.DSJsonFormatReader`),
so a log can be replayed, or a policy trained or evaluated, outside bandit-router. One line per decision:

    {"_label_cost": -0.79, "_label_probability": 0.85, "_label_Action": 2, "_labelIndex": 1,
     "a": [2, 1, 3], "p": [0.85, 0.05, 0.10],
     "c": {"s_w": {"2734918811": 0.35, …}, "s_l": {…}, "s_m": {…}, "s_t": {…}, "s_c": {…},
           "_multi": [{"a": {"model": "gpt-4.1-nano", "family": "openai", "tier": "small", "price": 0.3}}, …]},
     "EventId": "…", "Timestamp": "2025-01-01T12:00:00.000Z", "Version": "1",
     "_bandit_router": {"quality": 0.8, "cost_usd": 0.0004, "cost_weight": 20.0, "policy": "vw-squarecb", …}}

- `_multi` holds one action per allowed model, in the decision's model order; `_labelIndex` is the chosen
  model's 0-based position in it and `_label_Action` the same as a 1-based action id. `a` lists the action ids
  with the chosen one first and `p` their logged probabilities, in the same order.
- `_label_cost` is VW's cost: −reward = −(quality − λ·cost_usd) with the decision's λ (or `cost_weight`), or
  −quality with `label="quality"` (what bandit-router's VW policy learns).
- Shared features are the stored hashed features: namespace `s_<ns>` for each of bandit-router's namespaces
  (`w` words, `l` length, `m` markers, `t` turns, `c` caller context); the names are the 32-bit hashes as
  decimal strings, which VW's default hashing maps to that integer plus the namespace's seed, and repeated
  hashes are summed. All namespaces start with `s` and the action namespace is `a`, so `-q sa` gives the same
  shared × action interactions as the live policy (the indices differ from the live model's, the data do not).
- Action features: the model name and every catalog tag as string features, and `price`, log10 of the blended
  USD per 1M tokens + 2 (as `policies.vw.action_features`), when a catalog entry is given.
- Top-level keys starting with `_` other than the labels are ignored by VW; `_bandit_router` keeps the raw
  outcome so nothing is lost (`"default_reward": true` when the label is the service's `default_reward` for a
  decision whose window closed without feedback, not a caller's report).
- Decisions without feedback are skipped, or written without label fields (`include_unlabeled=True`), which
  VW reads as prediction-only events.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import numpy as np

from ..catalog import ModelSpec
from ..errors import InvalidInput
from .log import LoggedRecord, realised_cost, specs_by_name

SHARED_PREFIX = "s_"
ACTION_NAMESPACE = "a"


def _timestamp(seconds: float, decision_id: str) -> str:
    """`Timestamp`: Unix time `seconds` as ISO 8601 in UTC, milliseconds (cut, not rounded) and `Z`; a time before
    1970 as 1970's start. `InvalidInput` naming the decision for one that is not a number of seconds before the
    year 10000 (NaN, or milliseconds given for seconds: 1.7e12 is the year 55840)."""
    try:
        moment = datetime.fromtimestamp(max(seconds, 0.0), tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidInput(f"decision {decision_id!r}: created_at {seconds!r} is not a Unix time in seconds before "
                           "the year 10000 (milliseconds?)") from None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _namespace(indices: np.ndarray, values: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, v in zip(np.asarray(indices).tolist(), np.asarray(values, dtype=np.float64).tolist(), strict=True):
        key = str(int(i))
        out[key] = out.get(key, 0.0) + float(v)
    return out


def action_features(model: str, spec: ModelSpec | None) -> dict[str, Any]:
    """The `_multi` entry of one model: its name, tags and (with a spec) log price, in namespace `a`."""
    feats: dict[str, Any] = {"model": model}
    if spec is not None:
        for key, value in sorted(spec.tags.items()):
            if key not in ("model", "price"):
                feats[key] = value
        blended = (spec.input_usd_per_mtok + 3 * spec.output_usd_per_mtok) / 4
        feats["price"] = math.log10(blended + 0.01) + 2.0
    return {ACTION_NAMESPACE: feats}


LABELS = ("reward", "quality")
"""What `_label_cost` can be the negative of."""


def check_label(label: str) -> None:
    """`InvalidInput` unless `label` is one of `LABELS`: asked before anything is written, so that a bogus label is
    refused also when there is nothing to export."""
    if label not in LABELS:
        raise InvalidInput(f"label must be 'reward' or 'quality', not {label!r}")


def to_dsjson(
    record: LoggedRecord,
    *,
    specs: Mapping[str, ModelSpec] | None = None,
    label: str = "reward",
    cost_weight: float | None = None,
) -> dict[str, Any]:
    """One DSJSON event (a dict ready for `json.dumps`) for `record`; see the module docstring."""
    check_label(label)
    specs = specs or {}
    d = record.decision
    chosen = d.models.index(d.model)
    order = [chosen, *(i for i in range(len(d.models)) if i != chosen)]
    shared: dict[str, Any] = {}
    for ns, (idx, val) in d.context.features.items():
        if len(idx):
            shared[SHARED_PREFIX + ns] = _namespace(idx, val)
    shared["_multi"] = [action_features(m, specs.get(m)) for m in d.models]
    event: dict[str, Any] = {}
    extra: dict[str, Any] = {
        "model": d.model,
        "models": list(d.models),
        "policy": d.policy,
        "policy_version": d.policy_version,
        "cost_weight": d.cost_weight,
    }
    if record.outcome is not None:
        quality = float(record.outcome.quality)
        cost = realised_cost(record, specs.get(d.model))
        lam = d.cost_weight if cost_weight is None else cost_weight
        reward = quality if label == "quality" else quality - lam * cost
        event.update(
            {
                "_label_cost": -reward,
                "_label_probability": d.probability,
                "_label_Action": chosen + 1,
                "_labelIndex": chosen,
            }
        )
        extra.update(quality=quality, cost_usd=cost, reward=reward)
        if record.outcome.latency_s is not None:
            extra["latency_s"] = record.outcome.latency_s
        if record.default_reward:  # the service's default for a window that closed without feedback
            extra["default_reward"] = True
    event.update(
        {
            "a": [i + 1 for i in order],
            "p": [d.pmf[i] for i in order],
            "c": shared,
            "EventId": d.decision_id,
            "Timestamp": _timestamp(d.created_at, d.decision_id),
            "Version": "1",
            "_bandit_router": extra,
        }
    )
    if record.shadow_pmfs:
        extra["shadow_pmfs"] = {k: list(v) for k, v in record.shadow_pmfs.items()}
    return event


def export_dsjson(
    records: Iterable[LoggedRecord],
    fp: TextIO,
    *,
    specs: Iterable[ModelSpec] | Mapping[str, ModelSpec] | None = None,
    label: str = "reward",
    cost_weight: float | None = None,
    include_unlabeled: bool = False,
) -> int:
    """Write `records` to `fp` as DSJSON lines; returns the number of lines written."""
    check_label(label)
    by_name = specs_by_name(specs, "specs") if specs else {}
    written = 0
    for record in records:
        if not isinstance(record, LoggedRecord):  # "'dict' object has no attribute 'outcome'"
            raise InvalidInput(f"records must be LoggedRecords, got {type(record).__name__}")
        if record.outcome is None and not include_unlabeled:
            continue
        event = to_dsjson(record, specs=by_name, label=label, cost_weight=cost_weight)
        fp.write(json.dumps(event, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n")
        written += 1
    return written
