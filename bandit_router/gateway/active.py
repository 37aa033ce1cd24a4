"""Deciding among models that may retire meanwhile. The writer thread applies `DELETE /v1/models/{name}`
(`Router.retire_model`) whenever it commits, so a model listed as active a moment ago may be gone when the router
decides, and `Router.decide` raises `UnknownModel`. The decision is then made again among those still active,
as if the request had come after the retirement."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UnknownModel
from ..router import Router
from ..types import Context, Decision


def active_routable(router: Router, candidates: Sequence[str]) -> list[str]:
    """Those of `candidates` the router may choose now: active and routable (not `route = false`), in their order."""
    active = {m.name: m for m in router.models}
    return [m for m in candidates if m in active and active[m].route]


def decide_among_active(
    router: Router, context: Context, candidates: Sequence[str], cost_weight: float | None, *, book: bool = True
) -> Decision | None:
    """`router.decide` among `active_routable(router, candidates)`, listed again when a retirement (or a model
    added back with `route = false`) lands between listing and deciding; None when none is left. An `UnknownModel`
    after which the list is the same is not a retirement: it is raised."""
    live = active_routable(router, candidates)
    while live:
        try:
            return router.decide(context, models=live, cost_weight=cost_weight, book=book)
        except UnknownModel:
            again = active_routable(router, candidates)
            if again == live:
                raise
            live = again
    return None
