"""Checkpoints: the policy set's snapshot at a log position, stored with its sha256, so that a start loads the
newest valid one and replays only the log after it."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from ..dbguard import RateLimitedLog
from ..store import Checkpoint, Store, StoreError
from .escalations import EscalationLearners
from .follower import LogFollower

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("bandit_router.log")

REMIND_WITHHELD_S = 600.0
"""While checkpoints are withheld (`Checkpointer.withheld`), a reminder is logged at most this often, with what a
restart would replay by then."""


def fingerprint(settings: Settings) -> str:
    """What checkpoints are keyed by: a hash of the policy, its settings and the initial catalog."""
    raw = settings.fingerprint_source()
    if settings.routing.shadow_policies:  # checkpoints then hold every policy's state (a bundle)
        raw = {**raw, "shadow_policies": list(settings.routing.shadow_policies)}
    learned = EscalationLearners(settings).fingerprint_source()
    if learned:  # checkpoints then hold the learned cascades' escalation learners too
        raw = {**raw, "learned_cascades": learned}
    source = json.dumps(raw, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:32]


class Checkpointer:
    """Stores `follower.policies` every `interval` learned feedbacks (or when due), keeping the newest `keep`."""

    def __init__(self, store: Store, settings: Settings, follower: LogFollower) -> None:
        self.store = store
        self.follower = follower
        self.fingerprint = fingerprint(settings)
        self.interval = settings.storage.checkpoint_interval
        self.keep = settings.storage.checkpoints_kept
        self.version = 0
        """The live policy's version at the last checkpoint."""
        self.position = (0, 0)
        """The log position of the last checkpoint."""
        self._say = RateLimitedLog(log)
        self._said_unreadable = False
        self._next_reminder = 0.0

    def flush_log(self) -> None:
        """Log the failures the rate limit has not said yet (at the stop)."""
        self._say.flush()

    @property
    def withheld(self) -> bool:
        """No checkpoint is stored: the follower skipped learned feedback whose decision cannot be read."""
        return self.follower.unreadable > 0

    def report(self) -> dict[str, Any]:
        """`checkpoints` in `/readyz` and `/v1/stats` (and `/metrics`): `seq`, the feedback seq of the newest
        checkpoint this process restored or stored (None: none); `feedback_since`, the feedback seqs it applied
        after it (about what a restart replays); `withheld`, true while no checkpoint is stored because rows are
        skipped (`feedback_since` then grows, and retention keeps the log after `seq`, until they are repaired)."""
        seq = self.position[0]
        return {"withheld": self.withheld, "seq": seq if self.position != (0, 0) else None,
                "feedback_since": max(0, self.follower.applied_seq - seq)}

    def restore_newest(self) -> Checkpoint | None:
        """Load the newest checkpoint that passes its checksum and restores; the follower then stands at its
        position. None (nothing changed) when there is none. One past the log's end (its last model event deleted
        by hand) is not restored: the follower would stand past the head, and recovery waited forever to reach it.

        The list and the states are read in one transaction (one snapshot): another process that stores a newer
        checkpoint meanwhile and prunes the listed ones (`checkpoints_kept`) does not take a listed state away
        (it read as empty: a checksum failure, and with one kept, a replay of the whole log)."""
        with self.store.read() as reader:
            head = reader.head()
            for ck in reader.checkpoints(self.fingerprint):
                if ck.seq > head[0] or ck.event_id > head[1]:  # the log's position would never reach it
                    log.warning("checkpoint %d (feedback seq %d, model event %d) is past the log's end (%d, %d): "
                                "rows were deleted after it was taken; trying an older one", ck.id, ck.seq,
                                ck.event_id, *head)
                    continue
                state = reader.checkpoint_state(ck.id)
                if hashlib.sha256(state).hexdigest() != ck.sha256:
                    log.warning("checkpoint %d fails its checksum; trying an older one", ck.id)
                    continue
                try:
                    self.follower.policies.restore(state)
                except Exception as exc:  # a bad snapshot must not stop the service: replay more instead
                    log.warning("checkpoint %d cannot be restored (%s); trying an older one", ck.id, exc)
                    continue
                self.follower.applied_seq, self.follower.applied_event = ck.seq, ck.event_id
                self.follower.chain_seq = ck.seq
                self.version, self.position = self.follower.policies.live.version, (ck.seq, ck.event_id)
                return ck
        return None

    def _failed(self, exc: StoreError) -> None:
        """Say why a checkpoint failed (rate-limited), unless it failed on the store's fault (its file deleted,
        replaced or corrupt) and the store has told its listener that fault: the service said it once, as an error
        that names what to do, and a second error about the same file would only repeat it."""
        if getattr(self.store, "fault", None) is not None and getattr(self.store, "on_fault", None) is not None:
            log.debug("checkpoint failed on the store's fault: %s", exc)
            return
        self._say("checkpoint", logging.ERROR, "checkpoint failed (the log still has everything): %s", exc)

    def _say_withheld(self) -> None:
        """Say once that checkpoints are withheld, then remind every `REMIND_WITHHELD_S` of what grows meanwhile."""
        follower = self.follower
        if not self._said_unreadable:
            self._said_unreadable = True
            log.error("no checkpoints while learned feedback rows are skipped because their decisions cannot be "
                      "read (%d so far, first seqs %s): repair those rows, or delete those decisions to accept "
                      "the loss, and restart; until then every start replays the log from the last checkpoint",
                      follower.unreadable, follower.unreadable_seqs)
            self._next_reminder = time.monotonic() + REMIND_WITHHELD_S
            return
        if time.monotonic() < self._next_reminder:
            return
        self._next_reminder = time.monotonic() + REMIND_WITHHELD_S
        log.warning("still no checkpoints: %d learned feedback rows skipped (first seqs %s) because their decisions "
                    "cannot be read; %d feedback seqs since the last checkpoint, which every start replays and "
                    "retention keeps: repair those rows, or delete those decisions, and restart (`bandit-router "
                    "check`; the docs: service → durability)", follower.unreadable, follower.unreadable_seqs,
                    self.report()["feedback_since"])

    def maybe_checkpoint(self, *, force: bool = False) -> bool:
        """Store a checkpoint when `interval` feedbacks were learned since the last one, a promotion happened, or
        `force`; True when one was stored (or another process had stored this position already). Never while the
        follower skipped a learned feedback whose decision cannot be read (`LogFollower.unreadable`): the state
        lacks it, and a checkpoint would keep it lacking after the row is repaired."""
        live = self.follower.policies.live
        position = self.follower.position
        if self.withheld:  # a checkpoint would make the skip permanent: a start must replay those rows
            self._say_withheld()
            return False
        if position == self.position or self.follower.chain_seq != position[0]:
            return False  # nothing new, or the escalation learners are not at this position (a failed catch-up)
        if not force and not self.follower.promoted and live.version - self.version < self.interval:
            return False
        try:
            with self.store.read() as reader:  # another worker may have stored this position already
                latest = reader.checkpoints(self.fingerprint)[:1]
        except StoreError as exc:  # the database is unreachable: a line, not a traceback; the log has everything
            self._failed(exc)
            return False
        if latest and (latest[0].seq, latest[0].event_id) >= position:
            self.version, self.position = live.version, position
            self.follower.promoted = False
            return False
        state = self.follower.policies.snapshot()
        try:
            with self.store.write() as tx:
                tx.insert_checkpoint(
                    fingerprint=self.fingerprint,
                    seq=position[0],
                    event_id=position[1],
                    version=live.version,
                    sha256=hashlib.sha256(state).hexdigest(),
                    state=state,
                    keep=self.keep,
                )
        except StoreError as exc:
            self._failed(exc)
            return False
        self.version, self.position = live.version, position
        self.follower.promoted = False
        log.debug("checkpoint at seq %d, policy version %d", position[0], live.version)
        return True
