"""The log follower: applies the stored log (learned feedback in `seq` order, model events in their places) to a
`PolicySet`. The service's writer, its recovery, its idle polling and `rebuild_router` all use this one class, so
every process learns the same rows in the same order and a live policy equals a replay of its log."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..router import Router
from ..store import FeedbackRecord, ModelAction, ModelEvent, Reader, Store
from ..types import Decision
from .policies import PolicySet

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("bandit_router.log")

REPLAY_PAGE = 2000
"""Learned feedback rows read per query while catching up."""
UNREADABLE_NAMED = 10
"""Seqs of skipped feedback rows kept to name (`LogFollower.unreadable_seqs`); the count goes on."""


@dataclass(slots=True)
class LogEntry:
    """One log entry a process committed itself: a feedback row (with its decision) or a model event."""

    seq: int = 0
    record: FeedbackRecord | None = None
    decision: Decision | None = None
    event: ModelEvent | None = None
    chain: str | None = None
    """The stored chain a learned cascade's escalation learns from this feedback (`escalations.learns_chain`)."""


class LogFollower:
    """Keeps `policies` at the log's position (`applied_seq`, `applied_event`)."""

    def __init__(self, policies: PolicySet) -> None:
        self.policies = policies
        self.applied_seq = 0
        self.applied_event = 0
        self.chain_seq = 0
        """The feedback seq up to which the learned cascades' escalation learners have learned (`applied_seq`
        once a catch-up is complete)."""
        self.promoted = False
        """Set when a promotion was applied (a checkpoint is due); the caller clears it."""
        self.unreadable = 0
        """Learned feedback rows skipped since this follower started (their decision does not decode): the policies
        lack them, so no checkpoint may hold this state (`Checkpointer.maybe_checkpoint`) until a start replays
        them, repaired, from an earlier one."""
        self.unreadable_seqs: list[int] = []
        """The first `UNREADABLE_NAMED` of them."""
        self._retired: dict[str, None] = {}

    @property
    def position(self) -> tuple[int, int]:
        return self.applied_seq, self.applied_event

    def retired_models(self) -> list[str]:
        """Models retired at run time (and not added back), oldest first."""
        return list(self._retired)

    def note(self, event: ModelEvent) -> None:
        """Keep the retired list (a snapshot holds no history, so recovery notes every event)."""
        if event.action == ModelAction.RETIRE:
            self._retired[event.name] = None
        elif event.action == ModelAction.ADD:
            self._retired.pop(event.name, None)

    def apply_event(self, event: ModelEvent) -> None:
        if self.policies.apply(event):
            self.promoted = True
        self.note(event)
        self.applied_event = max(self.applied_event, event.id)

    def learn(self, record: FeedbackRecord, decision: Decision | None) -> None:
        """Learn one feedback; counted in `unreadable` instead when its decision does not decode (None: the store
        logged why, naming the seq)."""
        if decision is None:
            self._skipped(record.seq)
        else:
            self.policies.learn(decision, record.outcome(), record.seq)

    def _skipped(self, seq: int) -> None:
        self.unreadable += 1
        if len(self.unreadable_seqs) < UNREADABLE_NAMED:
            self.unreadable_seqs.append(seq)

    def unreadable_report(self) -> dict[str, object]:
        """`unreadable`, for `/readyz` and `/v1/stats`: how many learned feedback rows were skipped, the first seqs."""
        return {"skipped": self.unreadable, "first_seqs": list(self.unreadable_seqs)}

    def apply(self, entries: Sequence[LogEntry]) -> None:
        """Apply entries this process committed itself, in log order."""
        for entry in entries:
            if entry.event is not None:
                self.apply_event(entry.event)
                continue
            assert entry.record is not None
            if entry.record.learn:
                self.learn(entry.record, entry.decision)
            if entry.chain is not None and entry.decision is not None and entry.seq > self.chain_seq:
                self.policies.learn_chain(entry.decision, entry.chain, entry.record.quality, entry.seq)
            self.applied_seq = max(self.applied_seq, entry.seq)
            self.chain_seq = max(self.chain_seq, entry.seq)

    def catch_up(self, reader: Reader, head: tuple[int, int] | None = None,
                 progress: Callable[[], None] | None = None) -> int:
        """Apply the log between this position and `head` (default: the reader's head), rows and events in log
        order; returns the number of feedback rows learned (not those skipped: `unreadable`). `progress` is called
        after each page read (a long catch-up is work, not a database that does not answer: `Engine.stalled`)."""
        if head is None:
            head = reader.head()
        if head == self.position and self.chain_seq >= head[0]:
            return 0
        if self.policies.escalations:  # the learned cascades' chains first (they share nothing with the policies)
            while self.chain_seq < head[0]:
                chains = reader.chains_after(self.chain_seq, head[0], REPLAY_PAGE)
                for item in chains:
                    if item.decision is None:  # its decision does not decode: counted, as a skipped feedback is
                        self._skipped(item.record.seq)
                    else:
                        self.policies.learn_chain(item.decision, item.chain, item.record.quality, item.record.seq)
                    self.chain_seq = item.record.seq
                if progress is not None:
                    progress()
                if len(chains) < REPLAY_PAGE:
                    break
        self.chain_seq = max(self.chain_seq, head[0])
        events = [e for e in reader.model_events_after(self.applied_event) if e.id <= head[1]]
        applied = 0
        while True:
            rows = [r for r in reader.learned_after(self.applied_seq, REPLAY_PAGE) if r[0].seq <= head[0]]
            for record, decision in rows:
                while events and events[0].after_seq < record.seq:
                    self.apply_event(events.pop(0))
                self.learn(record, decision)
                self.applied_seq = record.seq
                applied += decision is not None
            if progress is not None:
                progress()
            if len(rows) < REPLAY_PAGE:
                break
        for event in events:
            self.apply_event(event)
        self.applied_seq, self.applied_event = max(self.applied_seq, head[0]), max(self.applied_event, head[1])
        return applied


def rebuild_policies(settings: Settings, store: Store, *, seed: int | None = None) -> PolicySet:
    """A fresh policy set (live router, shadows, escalation learners) that learned the whole stored log. A
    `ConfigError` when a policy names a model that neither the catalog nor the log holds (`PolicySet.check_models`)."""
    follower = LogFollower(PolicySet(settings, seed=seed))
    with store.read() as reader:
        follower.catch_up(reader)
    follower.policies.check_models()
    return follower.policies


def rebuild_router(settings: Settings, store: Store, *, seed: int | None = None) -> Router:
    """A fresh router that learned the whole stored log, from scratch: every learned feedback in seq order, with
    the model events in their places. What a restored or live policy must equal (compare `weights()`). With shadow
    policies every one learns too, and a `promote` event makes that shadow the one returned. A `ConfigError` as
    `rebuild_policies` raises it."""
    return rebuild_policies(settings, store, seed=seed).live
