"""Models of the log without a catalog entry (removed from the catalog file since): what an evaluation says
about them, leaves out and refuses.

The candidates route among the models that have an entry, as they would be deployed with this catalog
(`replay`); here: the warning naming the removed models; a candidate whose policy names one (a `rules` rule or
default) cannot be deployed with this catalog and is left out (`removed_models_named`); the decisions that allowed
only removed models are left out for every candidate (`replay.left_out_rows`), with one warning; and rounds of a
removed model that carry no cost are refused (`check_priced`) where an estimate uses them, since nothing prices
their tokens; and the candidates whose estimates credit choices of a model this catalog does not route (`logged`,
a shadow or `fixed:<model>`, read from the log) are named (`unroutable_choices`), left out of any recommendation
and refused by the promotion check. A model retired at run time (`DELETE /v1/models/{name}`) keeps its spec, which
prices its outcomes, and is not routable (`with_retired`): the same rules, and the warnings name it as retired.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from ..catalog import ModelSpec
from ..errors import InvalidInput, UnknownModel
from ..policies import check_models as check_policy_models
from ..policies import make_policy, parse_spec
from .candidates import Candidate
from .log import LoggedRecord
from .replay import ReplayResult, left_out_rows
from .scope import Scope

REMOVED_SINCE = " (removed from the catalog since?)"
CLIENT_NAMED = "; a client named them"
"""The causes the messages below guess for a model of the log without a catalog entry, true when the catalog read is
the service's: `without_guessed_cause` drops them where it may not be (`evaluate` without `--config`)."""


class CatalogLacksModels(InvalidInput):
    """A refusal caused by models of the log without a catalog entry (`models`): nothing left to evaluate on, no
    candidate left, rounds nothing prices."""

    def __init__(self, message: str, models: Sequence[str]) -> None:
        super().__init__(message)
        self.models = tuple(models)


def without_guessed_cause(message: str) -> str:
    """`message` without the cause it guesses for models without a catalog entry (`REMOVED_SINCE`, `CLIENT_NAMED`).

    >>> without_guessed_cause("allowed only models without a catalog entry (alpha; a client named them)")
    'allowed only models without a catalog entry (alpha)'
    """
    return message.replace(REMOVED_SINCE, "").replace(CLIENT_NAMED, "")


def with_retired(specs: Mapping[str, ModelSpec], retired: Collection[str]) -> dict[str, ModelSpec]:
    """`specs` with each model `retired` at run time marked `route = false`: it keeps its spec, which prices its
    logged outcomes, but no router of the service routes to it now, so no candidate may either (the same rules as
    for a model marked `route = false` in the catalog: `replay`, `unroutable_choices`)."""
    return {name: dataclasses.replace(spec, route=False) if name in retired else spec for name, spec in specs.items()}


def removed_model_warnings(
    logged: Sequence[LoggedRecord], specs: Mapping[str, ModelSpec], models: Sequence[str], wanted: list[Candidate],
    *, mode: str, train_fraction: float, scope: Scope | None = None, retired: Collection[str] = (),
) -> tuple[list[Candidate], list[str]]:
    """The candidates left to evaluate (`wanted` without those naming a removed model) and the warnings about the
    removed models among the log's `models`; `InvalidInput` when no candidate, or no decision (of `scope`, the
    decisions scored), is left. `retired`: the models retired at run time (`DELETE /v1/models/{name}`), whose
    `specs` say `route = false` here (`with_retired`) but which the warnings name as retired."""
    warnings: list[str] = []
    removed = [m for m in models if m not in specs]
    if removed:
        warnings.append(
            f"models of the log without a catalog entry{REMOVED_SINCE}: {', '.join(removed)}; the "
            f"candidates route among the other models, as they would with this catalog, and learn nothing from "
            f"those models' outcomes; fixed:<model> of such a model is read from the log, and it and logged or a "
            "shadow that gave such a model probability are never recommended (✗)"
        )
    judges = [m for m in models if m in specs and not specs[m].route and m not in retired]
    gone = [m for m in models if m in specs and m in retired]
    if gone:
        warnings.append(
            f"models of the log retired at run time (DELETE /v1/models; their specs still price their outcomes): "
            f"{', '.join(gone)}; the replayed candidates never route to them, as the service does not now; logged "
            "and the shadows keep the pmfs logged while they were routable, and fixed:<model> of such a model is "
            "read from the log: where those gave a retired model probability they are never recommended (✗)"
        )
    if judges:
        warnings.append(
            f"models of the log the catalog marks route = false (a judge or router model only): {', '.join(judges)}; "
            "the replayed candidates never route to them, as they would not with this catalog; logged and the "
            "shadows keep the pmfs logged while they were routable, and fixed:<model> of such a model is read from "
            "the log: none of these three can be deployed as they are with this catalog, and where they gave those "
            "models probability they are never recommended (✗)"
        )
    undeployable = {c.label: removed_models_named(c, specs, models) for c in wanted}
    not_evaluated = [f"candidate {label!r} not evaluated: its policy names {_unroutable(named, specs, retired)}, so it "
                     "cannot be deployed with this catalog" for label, named in undeployable.items() if named]
    wanted = [c for c in wanted if not undeployable[c.label]]
    if not wanted:
        raise CatalogLacksModels("no candidate to evaluate: " + "; ".join(not_evaluated),
                                 sorted({m for named in undeployable.values() for m in named}))
    warnings.extend(not_evaluated)
    warnings.extend(_left_out_warning(logged, specs, mode=mode, train_fraction=train_fraction, scope=scope,
                                      retired=retired))
    return wanted, warnings


def _unroutable(named: Sequence[str], specs: Mapping[str, ModelSpec], retired: Collection[str] = ()) -> str:
    """`named` in words: models of the log without a catalog entry, models the catalog marks `route = false`, and
    models `retired` at run time."""
    parts = []
    for group, what in (([m for m in named if m not in specs], "of the log without a catalog entry"),
                        ([m for m in named if m in specs and m not in retired],
                         "of the log the catalog marks route = false"),
                        ([m for m in named if m in specs and m in retired], "of the log retired at run time")):
        if group:
            parts.append(f"{', '.join(map(repr, group))}, {'a model' if len(group) == 1 else 'models'} {what}")
    return " and ".join(parts)


def removed_models_named(candidate: Candidate, specs: Mapping[str, ModelSpec], models: Sequence[str]) -> list[str]:
    """The models of the log without a catalog entry (`specs`), or marked `route = false` since, that a `policy`
    candidate other than `fixed` names (a `rules` policy's rule or default): its router is built on the log's models
    a router may choose, so it cannot be deployed with this catalog, and is left out. `InvalidInput` when it names
    a model the log does not have (a catalog model never logged: no round tells what it would get; or no model of
    the catalog at all), as `check_models` refuses such a `fixed:<model>`. `fixed:<removed model>` is read from the
    log instead."""
    if candidate.kind != "policy" or parse_spec(candidate.policy)[0] == "fixed":
        return []
    policy = make_policy(candidate.policy)
    known = [specs[m] for m in models if m in specs and specs[m].route]
    # stand-ins for the others (only their names are asked): removed, or marked `route = false` since they were logged
    removed = [ModelSpec(m, 0.0, 0.0) for m in models if m not in specs or not specs[m].route]

    def works(with_models: list[ModelSpec]) -> bool:
        try:
            check_policy_models(policy, with_models)
        except UnknownModel:
            return False
        return True

    if works(known):
        return []
    if works(known + removed):
        return [r.name for r in removed if not works(known + [o for o in removed if o is not r])]
    try:
        check_policy_models(policy, list(specs.values()))
    except UnknownModel as exc:
        raise InvalidInput(f"candidate {candidate.label!r}: {exc}") from None
    raise InvalidInput(f"candidate {candidate.label!r}: its policy names a model of the catalog that the log does not "
                       f"have, so no logged round tells what it would get; the log's models: {', '.join(models)}")


def unroutable_choices(
    replays: Mapping[str, ReplayResult], specs: Mapping[str, ModelSpec], *, mode: str, train_fraction: float,
) -> dict[str, tuple[str, ...]]:
    """Each candidate whose pmf gives probability to a model this catalog does not route (no entry, or `route =
    false`) on a decision it is evaluated on, with those models: `logged` and the shadows keep the pmfs logged while
    the model was routable, and `fixed:<such a model>` is read from the log; their estimates credit choices that
    cannot be made now, so no such candidate is one to deploy (the replayed candidates never route there).

        unroutable(c) = {a ∉ routable : Σ_{i evaluated} π_c(a | x_i) > 0}

    with the rows evaluated those with feedback not left out (frozen: of the held-out part; replay: every one the
    candidate may accept)."""
    found: dict[str, tuple[str, ...]] = {}
    for label, result in replays.items():
        columns = [j for j, m in enumerate(result.models) if m not in specs or not specs[m].route]
        if not columns:
            continue
        rows = ~result.left_out if result.left_out is not None else np.ones(len(result.target_pmf), dtype=bool)
        if mode == "frozen":
            rows[: math.floor(train_fraction * len(rows))] = False
        mass = result.target_pmf[rows][:, columns].sum(axis=0)
        named = tuple(result.models[j] for j, p in zip(columns, mass, strict=True) if p > 0)
        if named:
            found[label] = named
    return found


def choices_routable_now(record: LoggedRecord, specs: Mapping[str, ModelSpec], shadows: Sequence[str] = (),
                         active: Collection[str] | None = None) -> bool:
    """Whether the pmfs logged with `record`, the live policy's and those of `shadows`, give no probability to a
    model this catalog does not route (no entry in `specs`, `route = false`, or, with `active` (the live router's
    models now), retired at run time: its spec stays in `specs` to price its outcomes): there they are what the
    policies would do with this catalog. The promotion check and the shadows panel compare the live policy and a
    shadow on such decisions only (`stale_choices_warning`); `evaluate` marks the candidates instead
    (`unroutable_choices`)."""
    models = record.decision.models
    for pmf in (record.decision.pmf, *(record.shadow_pmfs[name] for name in shadows)):
        for model, p in zip(models, pmf, strict=True):
            if p > 0 and (model not in specs or not specs[model].route
                          or (active is not None and model not in active)):
                return False
    return True


def stale_choices_warning(k: int, total: int) -> list[str]:
    """The warning for the `k` of `total` decisions the promotion check and the shadows panel left out because a
    pmf logged with them gave probability to a model this catalog no longer routes (`choices_routable_now`)."""
    if not k:
        return []
    return [f"{k} of the {total} decisions with feedback that logged the pmfs compared are left out: there the live "
            "policy or the shadow gave probability to a model this catalog no longer routes (removed, route = false "
            "or retired since), a choice neither can make now"]


def unroutable_reason(models: Sequence[str]) -> str:
    """Why a candidate of `unroutable_choices` (with its `models`) is neither recommended nor promoted."""
    one = len(models) == 1
    return (f"its estimate credits choices of {', '.join(map(repr, models))}, {'a model' if one else 'models'} this "
            f"catalog does not route (removed from it, route = false or retired since), as logged while "
            f"{'it was' if one else 'they were'} routable: choices that cannot be made now")


def check_priced(logged: Sequence[LoggedRecord], specs: Mapping[str, ModelSpec], *, mode: str,
                 train_fraction: float, scope: Scope | None = None) -> None:
    """`InvalidInput` when rounds of a model without a catalog entry carry no cost (stored or reported): nothing
    prices their tokens, and a cost of 0 would flatter `logged` and `fixed:<that model>`. Rounds no estimate uses
    are not asked: those left out of the evaluation (`left_out_rows`), those out of `scope` and, frozen, the
    training part (the first ⌊train_fraction·n⌋): never evaluated, and a removed model's outcomes teach the
    candidates nothing."""
    left_out = left_out_rows(logged, specs, mode=mode, train_fraction=train_fraction)
    if scope is not None and not scope.everything:
        left_out |= ~scope.mask(logged)
    split = math.floor(train_fraction * len(logged)) if mode == "frozen" else 0
    unpriced: dict[str, int] = {}
    for i, (record, out) in enumerate(zip(logged, left_out, strict=True)):
        model = record.decision.model
        if i < split or out or model in specs or record.cost_usd is not None:
            continue
        if record.outcome is not None and record.outcome.cost_usd is None:
            unpriced[model] = unpriced.get(model, 0) + 1
    if unpriced:
        said = ", ".join(f"{k} round{'' if k == 1 else 's'} of {m!r}" for m, k in sorted(unpriced.items()))
        raise CatalogLacksModels(f"no cost (stored or reported) for {said}, a model without a catalog entry to price "
                                 "its tokens: give its catalog entry, or the rounds' costs, to evaluate this log",
                                 sorted(unpriced))


def _left_out_warning(logged: Sequence[LoggedRecord], specs: Mapping[str, ModelSpec], *, mode: str,
                      train_fraction: float, scope: Scope | None = None, retired: Collection[str] = ()) -> list[str]:
    """The warning for the decisions to evaluate on (those of `scope`; frozen: in the held-out part) that allowed no
    model a router may choose, only models without a catalog entry or marked `route = false` (`left_out_rows`), or
    `InvalidInput` when that leaves none (none to evaluate on at all, frozen: said by `evaluate_log` after)."""
    left_out = left_out_rows(logged, specs, mode=mode, train_fraction=train_fraction)
    to_evaluate = np.ones(len(logged), dtype=bool)
    to_evaluate[: math.floor(train_fraction * len(logged)) if mode == "frozen" else 0] = False
    scope = scope or Scope()
    scoped = not scope.everything
    if scoped:
        to_evaluate &= scope.mask(logged)
        left_out &= to_evaluate
    k = int(left_out.sum())
    if not k:
        return []
    total = int(to_evaluate.sum())
    names = sorted({m for r, out in zip(logged, left_out, strict=True) if out for m in r.decision.models})
    removed = [m for m in names if m not in specs]
    judges = [m for m in names if m in specs and m not in retired]  # `route = false` (`left_out_rows`)
    gone = [m for m in names if m in specs and m in retired]
    said = (f"{k} of the {total} decision{'' if total == 1 else 's'} with feedback to evaluate on"
            f"{' in the scope' if scoped else ''} allowed only "
            + " and ".join([*([f"models without a catalog entry ({', '.join(removed)}{CLIENT_NAMED})"] if removed
                              else []),
                            *([f"models the catalog marks route = false ({', '.join(judges)})"] if judges else []),
                            *([f"models retired at run time ({', '.join(gone)})"] if gone else [])]))
    if k == total:
        raise CatalogLacksModels(f"nothing to evaluate on: {said}, and no candidate can decide such a decision with "
                                 "this catalog", names)
    return [f"{said}: no candidate can decide them with this catalog, so every candidate is evaluated without them, "
            "logged and fixed:<model> of those models too, all on the same rounds; the estimates are about the other "
            "decisions"]
