"""Checkpoints: the policy set's snapshot at a log position, stored with its sha256, so that a start loads the
newest valid one and replays only the log after it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..dbguard import RateLimitedLog
from ..store import Checkpoint, Store, StoreError
from .escalations import EscalationLearners
from .follower import LogFollower
from .policies import Captured

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("bandit_router.log")

REMIND_WITHHELD_S = 600.0
"""While checkpoints are withheld (`Checkpointer.withheld`), a reminder is logged at most this often, with what a
restart would replay by then."""


PART_BYTES = 256 * 1024
"""A checkpoint's state of this size or more is written in parts of this size, one short transaction each between
the writer's batches, instead of one transaction that held every decision's commit (0.2–1 s at 100 models). On
PostgreSQL a part's transaction takes about 30 ms at this size on the shared 2-core machine (60 ms at 1 MiB)."""

STEP_S = 0.005
"""`Checkpointer.step` takes pieces of a save (packing, hashing, a part) until it has worked this long: one piece
when pieces are slow, several when the writer is idle (a save of 21 MB is ~170 pieces)."""

RETRY_S = 1.0
"""After a failed save, the next one waits this long (a large state is not captured again every batch)."""


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
        self._saving: _Save | None = None
        """A checkpoint written in parts, under way (`step`)."""
        self._retry_at = 0.0
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

    def _due(self, force: bool) -> tuple[tuple[int, int], int] | None:
        """(position, live version) when a checkpoint is due: `interval` feedbacks learned since the last one, a
        promotion, or `force`; None when not, or when another worker stored this position already."""
        live = self.follower.policies.live
        position = self.follower.position
        if self.withheld:  # a checkpoint would make the skip permanent: a start must replay those rows
            self._say_withheld()
            return None
        if position == self.position or self.follower.chain_seq != position[0]:
            return None  # nothing new, or the escalation learners are not at this position (a failed catch-up)
        if not force and not self.follower.promoted and live.version - self.version < self.interval:
            return None
        try:
            with self.store.read() as reader:  # another worker may have stored this position already
                latest = reader.checkpoints(self.fingerprint)[:1]
        except StoreError as exc:  # the database is unreachable: a line, not a traceback; the log has everything
            self._failed(exc)
            return None
        if latest and (latest[0].seq, latest[0].event_id) >= position:
            self.version, self.position = live.version, position
            self.follower.promoted = False
            return None
        return position, live.version

    def maybe_checkpoint(self, *, force: bool = False) -> bool:
        """Store a checkpoint now, in the caller's time, when one is due (`_due`); True when one was stored (or
        another process had stored this position already). A save under way (`step`) is finished first, unless
        `force` finds the follower past its position: it is dropped then, and the state saved once as it stands
        (the stop wrote the old save's parts, then all of the new one's). Never while the follower skipped a
        learned feedback whose decision cannot be read (`LogFollower.unreadable`): the state lacks it, and a
        checkpoint would keep it lacking after the row is repaired."""
        stored = False
        follower = self.follower
        if (force and self._saving is not None and self._saving.position != follower.position
                and not self.withheld and follower.chain_seq == follower.position[0]):
            self._drop(self._saving)
        if self._saving is not None:
            while self._saving is not None and self._saving.state is None:
                self._saving.work()
            while self._saving is not None and not stored:
                stored = self._advance(self._saving)
        due = self._due(force)
        if due is None:
            return stored
        save, captured = self._begin(due)
        if captured.size < PART_BYTES:
            return self._store_inline(save, captured) or stored
        while save.state is None:  # here, all at once: the caller waits anyway
            save.work()
        self._saving = save
        while self._saving is not None:
            if self._advance(save):
                return True
        return stored

    def _begin(self, due: tuple[tuple[int, int], int]) -> tuple[_Save, Captured]:
        """A save of the state at `due` (its log position and version), its arrays captured now under the routers'
        locks; the promotion flag goes with it."""
        captured = self.follower.policies.capture()
        save = _Save(*due, captured, promoted=self.follower.promoted)
        self.follower.promoted = False
        return save, captured

    def step(self) -> bool:
        """Between the writer's batches: start a due checkpoint, or take its next step; True when one was stored.
        A state under `PART_BYTES` is packed and stored at once (one short transaction). A larger one is captured
        now (its arrays copied under the routers' locks: consistent with the log position), then packed and hashed
        (`_Save.work`) and written in parts (a transaction of `PART_BYTES` each), a few pieces per call (`STEP_S`),
        so that decisions commit in between; its `checkpoints` row comes last and makes it visible."""
        save = self._saving
        if save is None:
            if time.monotonic() < self._retry_at:
                return False
            due = self._due(False)
            if due is None:
                return False
            save, captured = self._begin(due)
            if captured.size < PART_BYTES:
                return self._store_inline(save, captured)
            self._saving = save
            return False
        started = time.monotonic()
        while True:  # pieces while they take under STEP_S (more of them while the writer has little else to do)
            if save.state is None:
                save.work()
            elif self._advance(save):
                return True
            if self._saving is not save or time.monotonic() - started >= STEP_S:
                return False

    def _store_inline(self, save: _Save, captured: Captured) -> bool:
        """Pack `save` here and store it in one transaction (a small state: as every checkpoint was before parts)."""
        state = captured.pack()
        try:
            with self.store.write() as tx:
                tx.insert_checkpoint(fingerprint=self.fingerprint, seq=save.position[0], event_id=save.position[1],
                                     version=save.version, sha256=hashlib.sha256(state).hexdigest(), state=state,
                                     keep=self.keep)
        except StoreError as exc:
            self._give_up(save, exc)
            return False
        self._stored(save)
        return True

    def _advance(self, save: _Save) -> bool:
        """Write `save`'s next part, or, with every part written, its row (the checkpoint is then visible)."""
        if save.error is not None or save.state is None:
            self._give_up(save, save.error)
            return False
        count = -(-len(save.state) // PART_BYTES)
        try:
            with self.store.write() as tx:
                if save.next_part < count:
                    start = save.next_part * PART_BYTES
                    tx.insert_checkpoint_part(save.token, save.next_part, bytes(save.state[start : start + PART_BYTES]))
                else:
                    tx.insert_checkpoint(fingerprint=self.fingerprint, seq=save.position[0],
                                         event_id=save.position[1], version=save.version, sha256=save.sha256,
                                         state=b"", keep=self.keep, parts=(save.token, count))
        except StoreError as exc:
            self._give_up(save, exc)
            return False
        if save.next_part < count:
            save.next_part += 1
            return False
        self._stored(save)
        return True

    def _stored(self, save: _Save) -> None:
        self._saving = None
        self.version, self.position = save.version, save.position
        log.debug("checkpoint at seq %d, policy version %d", save.position[0], save.version)

    def _drop(self, save: _Save) -> None:
        """Leave `save` unfinished: its parts are deleted (else the next save's cleanup takes them after
        `ABANDONED_AFTER_S`), and the promotion it carried is due again."""
        self._saving = None
        self.follower.promoted = self.follower.promoted or save.promoted
        if save.next_part:
            with contextlib.suppress(StoreError), self.store.write() as tx:
                tx.delete_checkpoint_parts(save.token)

    def _give_up(self, save: _Save, exc: BaseException | None) -> None:
        """A save failed: dropped (`_drop`), and the next try waits `RETRY_S`."""
        self._drop(save)
        self._retry_at = time.monotonic() + RETRY_S
        if isinstance(exc, StoreError):
            self._failed(exc)
        else:
            self._say("checkpoint", logging.ERROR, "checkpoint failed (the log still has everything): %r", exc)


class _Save:
    """A checkpoint under way: the state captured at `position`, packed and hashed a piece per `work()` (on the
    writer thread: on a thread of its own, packing 21 MB made the writer wait for the GIL at every release, 40–70 ms
    a round on the shared 2-core machine), then written in parts (`next_part`: the next to write) under `token`."""

    def __init__(self, position: tuple[int, int], version: int, captured: Captured, *, promoted: bool) -> None:
        self.position, self.version, self.promoted = position, version, promoted
        self.token = uuid.uuid4().hex
        self.state: bytes | bytearray | None = None
        """The packed state, once `work()` has packed and hashed all of it."""
        self.sha256 = ""
        self.error: BaseException | None = None
        self.next_part = 0
        self._steps = self._pack_and_hash(captured)

    def work(self) -> None:
        """The next piece of packing (`state.WRITE_CHUNK` of array data) or hashing (`PART_BYTES`); sets `state`
        after the last, `error` (and an empty `state`) when packing fails."""
        try:
            next(self._steps)
        except StopIteration:
            pass
        except Exception as exc:  # said by `Checkpointer._give_up`
            self.error, self.state = exc, b""

    def _pack_and_hash(self, captured: Captured) -> Iterator[None]:
        state = yield from captured.pack_in_steps()
        digest = hashlib.sha256()
        view = memoryview(state)
        for start in range(0, len(state), PART_BYTES):
            digest.update(view[start : start + PART_BYTES])
            yield
        self.sha256, self.state = digest.hexdigest(), state
