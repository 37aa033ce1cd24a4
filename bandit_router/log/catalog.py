"""The live catalog: the configured catalog with the model events of the stored log applied in order, as every
router of the service applies them (`PolicySet.apply`). Models added at run time (`POST /v1/models`) and
retirements stay across restarts whatever the file says, so a start checks the configuration's catalog
(a routable model, the models a fixed or rules policy names: `Settings.check_catalog`) against this one."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..catalog import ModelSpec
from ..store import ModelAction, ModelEvent, Store


@dataclass(frozen=True)
class LiveCatalog:
    """`active`: the models routed with, in arm order; `retired`: retired at run time and not added back."""

    active: tuple[ModelSpec, ...]
    retired: tuple[ModelSpec, ...] = ()


def live_catalog(catalog: Iterable[ModelSpec], events: Iterable[ModelEvent]) -> LiveCatalog:
    """`catalog` with `events` applied in order, as `Router.add_model` and `Router.retire_model` apply them: an
    addition of an active model is not applied (a catalog entry's prices win), one of a retired model replaces
    its spec; a retirement of a model that is not active, or of the last active model, is not applied."""
    active = {spec.name: spec for spec in catalog}
    retired: dict[str, ModelSpec] = {}
    for event in events:
        if event.action == ModelAction.ADD and event.spec is not None and event.name not in active:
            retired.pop(event.name, None)
            active[event.name] = event.spec
        elif event.action == ModelAction.RETIRE and event.name in active and len(active) > 1:
            retired[event.name] = active.pop(event.name)
    return LiveCatalog(tuple(active.values()), tuple(retired.values()))


def stored_catalog(catalog: Iterable[ModelSpec], store: Store) -> LiveCatalog:
    """`catalog` with the model events stored in `store` applied (`live_catalog`)."""
    with store.read() as reader:
        return live_catalog(catalog, reader.model_events_after(0))
