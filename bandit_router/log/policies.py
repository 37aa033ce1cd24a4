"""The live-and-shadow policy set: the router that decides, and the shadow routers that learn the same log and
log their pmfs without ever choosing. A promotion swaps one shadow with the live router. The learned cascades'
escalation learners (`escalations.py`) follow the same log and are part of the set's snapshots."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BanditRouterError, ConfigError, InvalidInput, UnknownModel
from ..policies import check_models, missing_models
from ..router import Router
from ..state import WRITE_CHUNK, pack_in_steps, size_of
from ..store import ModelAction, ModelEvent
from ..types import Decision, Outcome
from .escalations import EscalationLearners

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("bandit_router.log")

BUNDLE_MAGIC = b"BRBUNDLE1\n"
"""Snapshot of a set with shadow policies or learned cascades: this, a JSON header line, then each router's
snapshot, then the escalation learners' (`escalations`: its size in the header)."""


def build_router(settings: Settings, *, seed: int | None = None, policy: str | None = None) -> Router:
    """A router that has learned nothing, as `settings` describe it (with the policy spec `policy` instead of the
    configured policy and its settings, for a shadow). It holds the catalog file's models and is not checked
    against them: the models the log adds come later (`PolicySet.apply`), and a fixed or rules policy may name
    one of those; the service checks the policies against the live catalog (`log.catalog`) before it builds
    routers, `Settings.check()` against the catalog file, and `PolicySet.check_models` once the log is applied."""
    routing = settings.routing
    return Router(
        settings.load_catalog(),
        settings.build_policy(policy),
        reward_config=settings.reward_config(),
        seed=seed,
        cold_start_rounds=routing.cold_start_rounds,
        policy_checked=True,
    )


def _bundle_head(live: str, states: dict[str, bytes], escalations: bytes) -> bytes:
    """`BUNDLE_MAGIC` and the header line: the live router's name, each snapshot's size."""
    header: dict[str, object] = {"live": live, "sizes": [[name, len(state)] for name, state in states.items()]}
    if escalations:
        header["escalations"] = len(escalations)
    return BUNDLE_MAGIC + json.dumps(header).encode("utf-8") + b"\n"


def _bundle(live: str, states: dict[str, bytes], escalations: bytes) -> bytes:
    """`_bundle_head`, then the snapshots."""
    return _bundle_head(live, states, escalations) + b"".join(states.values()) + escalations


@dataclass(frozen=True, slots=True)
class Captured:
    """`PolicySet.capture()`: each router's snapshot tree (arrays copied), `live` None for a lone live router."""

    live: str | None
    trees: dict[str, Any]
    escalations: Any | None

    @property
    def size(self) -> int:
        """About the bytes `pack()` gives (`state.size_of`)."""
        return sum(size_of(tree) for tree in self.trees.values()) + size_of(self.escalations)

    def pack(self) -> bytes:
        """The bytes `PolicySet.snapshot()` gave when this was captured."""
        steps = self.pack_in_steps()
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return bytes(done.value)

    def pack_in_steps(self) -> Generator[None, None, bytes | bytearray]:
        """`pack()` one `state.WRITE_CHUNK` at a time (`state.pack_in_steps`), returning the bytes (a bundle's in a
        `bytearray`: copying them into `bytes` would take one more step of 21 MB)."""
        states: dict[str, bytes] = {}
        for name, tree in self.trees.items():
            states[name] = yield from pack_in_steps(tree)
        if self.live is None:
            return states[""]
        escalations = (yield from pack_in_steps(self.escalations)) if self.escalations is not None else b""
        head = _bundle_head(self.live, states, escalations)
        out = bytearray(len(head) + sum(len(state) for state in states.values()) + len(escalations))
        out[: len(head)] = head
        at = len(head)
        for piece in (*states.values(), escalations):  # copied a chunk a step: 21 MB at once held the writer
            view = memoryview(piece)
            for start in range(0, len(piece), WRITE_CHUNK):
                chunk = view[start : start + WRITE_CHUNK]
                out[at : at + len(chunk)] = chunk
                at += len(chunk)
                yield
        return out


class PolicySet:
    """`live` (named `live_name`: the configured policy, or the shadow promoted last) and `shadows` by spec."""

    def __init__(self, settings: Settings, *, seed: int | None = None) -> None:
        self.settings = settings
        self.seed = seed
        self.live = self.fresh(settings.routing.policy)
        self.live_name = settings.routing.policy
        self.shadows: dict[str, Router] = {spec: self.fresh(spec) for spec in settings.routing.shadow_policies}
        self.escalations = EscalationLearners(settings)
        self._warned: set[tuple[str, str]] = set()
        """(shadow name or "", model) whose unlearnable feedback was warned about (`learn`)."""
        self._swapping = threading.Lock()
        """Held by a promotion (the writer thread) and by each decision of the live router (`deciding`, the event
        loop): a decision is priced and booked wholly by the router that is live, with its pacer, never by one whose
        pacer a promotion handed over meanwhile (it would go unpaced and unbooked, or fail on the missing pacer)."""

    @contextlib.contextmanager
    def deciding(self) -> Iterator[Router]:
        """The live router, which stays live (and keeps its pacer) until the block ends: decide with it in there."""
        with self._swapping:
            yield self.live

    def fresh(self, name: str) -> Router:
        """A router that has learned nothing for the policy `name` (the configured live policy or a shadow)."""
        if name == self.settings.routing.policy:
            return build_router(self.settings, seed=self.seed)
        return build_router(self.settings, seed=self.seed, policy=name)

    # -- the log -------------------------------------------------------------------------------------------------
    def learn(self, decision: Decision, outcome: Outcome, seq: int) -> None:
        """Every router learns feedback `seq`. Feedback a router cannot learn (its model was removed from the
        catalog, or is otherwise unknown to it) is skipped, with one warning per router and model: a catalog edit
        that removes a model would otherwise log one line per stored row of that model at every full replay."""
        try:
            self.live.learn(decision, outcome)
        except (UnknownModel, InvalidInput) as exc:
            self._skipped("", decision.model, seq, exc)
        for name, shadow in self.shadows.items():
            try:
                shadow.learn(decision, outcome)
            except (UnknownModel, InvalidInput) as exc:
                self._skipped(name, decision.model, seq, exc)

    def _skipped(self, shadow: str, model: str, seq: int, exc: Exception) -> None:
        if (shadow, model) in self._warned:
            return
        self._warned.add((shadow, model))
        by = f" by shadow {shadow}" if shadow else ""
        log.warning("feedback seq %d not learned%s: %s (later feedback of model %r is skipped without a message)",
                    seq, by, exc, model)

    def learn_chain(self, decision: Decision, chain: str, quality: float, seq: int) -> None:
        """A learned cascade's escalation learns feedback `seq` on its stored chain (`escalations.py`)."""
        self.escalations.learn(decision, chain, quality, seq)

    def apply(self, event: ModelEvent) -> bool:
        """Apply a model event to every router; True when it swapped the live policy (a promotion)."""
        if event.action == ModelAction.PROMOTE:
            return self.promote(event.name)
        for router in (self.live, *self.shadows.values()):
            try:
                if event.action == ModelAction.ADD:
                    assert event.spec is not None
                    router.add_model(event.spec)
                else:
                    router.retire_model(event.name)
            except InvalidInput as exc:
                log.warning("model event %d (%s %s) not applied: %s", event.id, event.action, event.name, exc)
        return False

    def promote(self, name: str) -> bool:
        """The shadow `name` decides from now on; the live policy becomes a shadow (and hands over its pacer)."""
        with self._swapping:  # no decision is being made (`deciding`)
            shadow = self.shadows.pop(name, None)
            if shadow is None:
                if name == self.live_name:
                    log.info("promote %s: the live policy already", name)
                else:  # a shadow taken out of the configuration since: the promotion is undone, say so
                    log.warning("promote %s: no such shadow policy here (not in this configuration's "
                                "shadow_policies); not applied: the live policy stays %r (to keep %s live after a "
                                "restart without it as a shadow, set policy = %r)", name, self.live_name, name, name)
                return False
            shadow.pacer, self.live.pacer = self.live.pacer, None
            self.shadows[self.live_name] = self.live
            self.live, self.live_name = shadow, name
        log.info("policy %s promoted to live", name)
        return True

    def check_models(self) -> None:
        """`ConfigError` when a live or shadow policy names a model (`fixed:<model>`, a `rules` policy's rule or
        default) that its router holds neither as an active model nor as one retired at run time: the routers are
        built unchecked (`build_router`), since the log may add that model, so this runs once the log has been
        applied (`rebuild_policies`, the service's recovery)."""
        for router in (self.live, *self.shadows.values()):
            try:
                check_models(router.policy, [*router.models, *router._retired.values()])  # retired at run time
            except InvalidInput as exc:
                where = "policy" if router is self.live else "shadow_policies"
                raise ConfigError(f"{where}: {exc}") from exc

    def warn_about_missing_models(self) -> None:
        """A live or shadow policy that names a model that is no longer active (retired at run time: one named
        nowhere, neither in the catalog nor added at run time, does not start, `Settings.check_catalog`) routes
        without it until a model of that name is added: a fixed policy sends every request to the cheapest
        allowed model, a rules policy skips the rule (or its default): said at start, once per such model."""
        for router in (self.live, *self.shadows.values()):
            active = sorted(m.name for m in router.models)
            for missing in missing_models(router.policy, router.models):
                log.warning("policy %r: %s until a model of that name is added (POST /v1/models); active: %s",
                            router.policy.name, missing, ", ".join(active))

    # -- shadows' pmfs -------------------------------------------------------------------------------------------
    def shadow_pmfs(self, decision: Decision) -> str:
        """Each shadow policy's pmf over the decision's models on its context and λ (JSON); they never choose."""
        out: dict[str, list[float]] = {}
        for name, router in list(self.shadows.items()):
            try:
                mine = router.decide(decision.context, models=decision.models, cost_weight=decision.cost_weight,
                                     book=False)  # outside the lock: a promotion may make it live meanwhile
            except BanditRouterError as exc:
                log.warning("shadow %s could not decide: %s", name, exc)
                continue
            by_model = dict(zip(mine.models, mine.pmf, strict=True))
            out[name] = [float(by_model.get(m, 0.0)) for m in decision.models]
        return json.dumps(out, separators=(",", ":"))

    # -- snapshots -----------------------------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The live router's snapshot; with shadow policies or learned cascades a bundle of every router, naming
        the live one, and the escalation learners."""
        if not self.shadows and self.live_name == self.settings.routing.policy and not self.escalations:
            return self.live.snapshot()
        routers = {self.live_name: self.live, **self.shadows}
        states = {name: router.snapshot() for name, router in routers.items()}
        return _bundle(self.live_name, states, self.escalations.snapshot() if self.escalations else b"")

    def capture(self) -> Captured:
        """`snapshot()` taken now (each router's arrays copied under its lock) and serialised later, on any thread
        (`Captured.pack`): what a checkpoint saves without holding the writer for `np.savez`."""
        if not self.shadows and self.live_name == self.settings.routing.policy and not self.escalations:
            return Captured(None, {"": self.live.capture()}, None)
        routers = {self.live_name: self.live, **self.shadows}
        trees = {name: router.capture() for name, router in routers.items()}
        return Captured(self.live_name, trees, self.escalations.capture() if self.escalations else None)

    def restore(self, state: bytes) -> None:
        """Replace every router with the ones in `snapshot()` bytes (nothing changes when they do not load)."""
        if not state.startswith(BUNDLE_MAGIC):
            router = self.fresh(self.settings.routing.policy)
            router.restore(state)
            shadows = {spec: self.fresh(spec) for spec in self.settings.routing.shadow_policies}
            self.escalations.restore(None)
            self.live, self.live_name, self.shadows = router, self.settings.routing.policy, shadows
            return
        line, _, body = state[len(BUNDLE_MAGIC) :].partition(b"\n")
        header = json.loads(line)
        routers: dict[str, Router] = {}
        offset = 0
        for name, size in header["sizes"]:
            router = self.fresh(name)
            router.restore(body[offset : offset + size])
            routers[name] = router
            offset += size
        escalations = int(header.get("escalations", 0))
        if offset + escalations != len(body) or header["live"] not in routers:
            raise ValueError("malformed checkpoint bundle")
        self.escalations.restore(body[offset:] if escalations else None)
        live = routers.pop(header["live"])
        self.live, self.live_name, self.shadows = live, header["live"], routers
