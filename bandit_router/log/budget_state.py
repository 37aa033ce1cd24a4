"""The budget pacer's durable state: its targets and spend, kept in the store's `meta` table, so that a restart
continues the same budget period and every worker follows targets set through any of them.

Why one module of ~770 lines: saving, loading and following the targets, and booking this process's and the other
processes' decisions, share one state (the stored rows as last read, the own decision ids, the positions in the
log) and one rule: every decision is booked once by every process.

Global budgets. When several processes share one log (worker processes on one SQLite file, replicas on one
PostgreSQL database) each process books the decisions the others made too: between batches it reads the
decisions stored after the last one it saw (`Reader.decisions_after`, in storage order) and books every one it
did not make itself (`BudgetPacer.observe(decision, None)`). Real costs need nothing extra: every process learns
every feedback from the log, and learning corrects the booking. So a spend or share target counts every
process's decisions, and a tenant's spend is one number wherever its requests land.
A saved state says where in the log it stands (`LOG_MARKS`), so a process that starts beside the others books
what was stored since that save (`start_following`), not only what is stored after its start.

Named routers (`[[routers]]`: cascades, LLM routers) pay for all their calls before their decision is stored, with
the decision's call record and chain (`cascade/live.py`), and their feedback is `unrouted`: `Router.learn`, which
corrects a booking, never runs for them. So such a request is booked at once at what its chain paid (`book_chain`,
one rule for the process that served it and for every process that reads it from the log): Σ the chain's calls
(`store.router_stats.of_chain`: answers, the judge's scores, the routing LLM's choice).

Models the caller names (the gateway's `model = "<catalog name>"`, policy `caller`) are stored before their call
and their feedback is `unrouted` too, so their call record corrects the booking instead of learning: booked at the
expected cost ĉ when stored, corrected by c_call − ĉ when the call is recorded (`book_call`: the record's cost, 0
for a call that failed or was refused). The process that served it does both as they happen; a process reading
the log books the decision when it sees it and corrects it when it finds its call record (it looks for the records
of the caller decisions it booked every time it reads the log, for up to `CALL_WAIT_S`).

The gateway's feedback judge (`gateway/judge.py`) pays for a call to score a routed answer: money spent beside
that decision's booking, not a request (its score is the decision's feedback, which corrects the booking to the
answer's cost as any feedback does). The process whose judge made the call spends its cost at once, in the scored
decision's tenant (`book_judge_call`), and stores it (`judge_calls`, `store.JudgeCall`); the others spend it when
they read it there, after the decisions (`Reader.judge_calls_after`, in storage order, skipping their own).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from ..budgets import BudgetConfig, BudgetPacer
from ..budgets.config import quietly
from ..budgets.pacer import STATE_FORMAT
from ..catalog import ModelSpec
from ..dbguard import RateLimitedLog
from ..errors import InvalidInput
from ..router import Router
from ..store import CallRecord, JudgeCall, Reader, Store, StoreError, WriteTx
from ..store.records import CALLER_POLICY, unrouted
from ..store.router_stats import of_chain
from ..types import Decision

log = logging.getLogger("bandit_router.log")

BUDGETS_STATE = "budgets_state"
"""Meta key: the budget pacer's `state()` (JSON), saved after each PUT /v1/budgets, with each checkpoint, every
`SAVE_EVERY_S` and on stop. After a restart it wins over the configuration's `[budgets]`."""
BUDGETS_CONFIG = "budgets_config"
"""Meta key: the targets set by the last PUT /v1/budgets (JSON); other workers pick them up within
`FOLLOW_EVERY_S`."""
BUDGETS_FILE = "budgets_file"
"""Meta key: the configuration's `[budgets]` (JSON) as the last start read it, so that a start whose stored targets
win over an edited `[budgets]` says so (`BudgetState.recover`), and one whose file did not change says nothing."""
UNLOADABLE = (InvalidInput, ValueError, OverflowError, RecursionError)
"""What loading a stored budget row raises when it does not load (its JSON, or what it holds: `Infinity`, which
JSON decoding takes, where an integer is stored; JSON nested too deep to decode)."""
SAVE_EVERY_S = 5.0
FOLLOW_EVERY_S = 1.0
DECISIONS_EVERY_S = 0.05
"""How often a process sharing the log books the other processes' decisions."""
DECISIONS_PAGE = 2000
OWN_FORGET_S = 120.0
"""A decision id this process booked (`mine`) is forgotten after this long if it was not seen in the log (its insert
failed, or no targets are set, so the log is not read)."""
CALL_WAIT_S = 900.0
"""How long a process looks for the call record of another process's caller-named decision (a stream lasts as long
as it streams); one never recorded (its process died mid-call) stays booked at its expected cost."""
LOG_MARKS = "log"
"""Key in the saved state: where in the shared log that state stands (`BudgetState._marks`): decisions booked through
`decisions` (a storage position) and, after it, this process's own (`own`, booked as they were made); judge calls
through `judge_calls` (and `own_judged`); learned feedback corrected through seq `feedback`; `saved_at`, the pacer's
time of the save; `awaiting`, the caller-named decisions it booked whose call record it has not read. A process
that loads the state books and corrects from there (`start_following`), not from the log's end as it starts: the
rows stored between the save and its start (up to `SAVE_EVERY_S` of every process's traffic) are booked once, by it
too, each at its own time, and the call records stored since of the decisions `awaiting` correct them. Other versions
ignore the key."""
OWN_MARKED = 10_000
"""At most this many ids (own, own judged, awaiting) are saved with the marks (a few hundred under load: the decisions
made since the last read of the log, the calls in flight); with more, the state is saved without marks (a start then
books from the log's end, as before)."""


class BudgetState:
    """Saves and loads `pacer` through `store`. Every method runs on the writer thread, except `book_chain(...,
    mine=True)`, `book_call` and `book_judge_call(mine=True)`, which the engine calls on the event loop (they touch
    only the pacer, which has its own lock, `_own` under `_own_lock`, and `_own_judged`, one dict operation at a
    time; a booking and its id together under `_booking`)."""

    def __init__(self, store: Store, pacer: BudgetPacer, *, shared: bool = False) -> None:
        self.store = store
        self.pacer = pacer
        self.shared = shared
        """Other processes write to the same log: book their decisions too (`follow_decisions`)."""
        self._own: OrderedDict[str, float] = OrderedDict()
        """The decision ids this process made and booked, not yet read back from the log, with when each was noted
        (in that order: `_forget` drops the oldest first; an OrderedDict finds its oldest entry at once after many
        were dropped, where a dict scans past every dropped slot). Each is a new id, or a client's id once stored
        (`book_given_id`): one stored decision each."""
        self._own_lock = threading.Lock()
        self._booking = threading.Lock()
        """Held by a booking on the event loop together with noting its id as this process's (`book_chain(...,
        mine=True)`, `book_judge_call(mine=True)`) and by `save` while it reads the state and its marks: a save between
        the two stored a spend without its id (a process started from it booked the decision again) or an id without
        its spend. The writer thread's own bookings (`book_given_id`, `book_own_stored`) are never beside a save."""
        self._own_judged: dict[str, float] = {}
        """The decisions whose judge call this process booked (`book_judge_call`), not yet read back from the log."""
        self._awaiting: dict[str, tuple[Decision, float]] = {}
        """Other processes' caller-named decisions booked at their expected cost, whose call record is not read yet."""
        self._uncalled: dict[str, float] = {}
        """This process's caller-named decisions booked at their expected cost, whose call is not recorded yet (saved
        with the marks, `awaiting`, beside `_awaiting`'s: a start corrects them when their call record is stored)."""
        self._position: int | None = None
        self._judge_position = 0
        self.applied_seq: Callable[[], int] | None = None
        """The seq of the last feedback this process learned (its pacer corrected), for the saved marks; set by the
        engine."""
        self._resume: dict[str, Any] | None = None
        """The marks of the state `recover` loaded, for `start_following`."""
        self._replaying: tuple[dict[str, Any], tuple[int, int, int]] | None = None
        """Those marks and the log's ends at the start, for `replay_since_save`."""
        self._next_decisions = 0.0
        self._next_forget = 0.0
        self._stored = bool(pacer.config.describe())
        self._config_json: str | None = None
        self._targets_seen: str | None = None
        """The targets row as this process last read or wrote it: the periodic save writes only while it is still
        so (another process's PUT or start stored other targets: this one follows them first)."""
        self._unfollowed = False
        """The stored targets did not load here (a newer version's, a damaged row): `save` then stores this process's
        state only while the state row is still of its own targets (no process that loaded them has saved since)."""
        self._next_save = 0.0
        self._next_follow = 0.0
        self._say = RateLimitedLog(log)
        self.unsaved: str | None = None
        """Why the pacer's state is not saved (the state row is another version's: `not_saved_over`), else None;
        shown by GET /v1/budgets and /readyz (`saving`)."""

    def saving(self) -> dict[str, Any]:
        """Whether the pacer's state is saved (`state_saved`), and why not (`state_unsaved_why`, else null)."""
        why = self.unsaved
        return {"state_saved": why is None, "state_unsaved_why": why}

    def configure(self, tx: WriteTx, config: BudgetConfig) -> None:
        """New targets (PUT /v1/budgets), stored in the transaction `tx`."""
        self.pacer.configure(config)
        config_json = json.dumps(config.to_mapping(), sort_keys=True)
        tx.set_meta(BUDGETS_CONFIG, config_json)
        tx.set_meta(BUDGETS_STATE, json.dumps(self.pacer.state()))
        self._config_json = self._targets_seen = config_json
        self._stored = True
        self.unsaved = None

    def mine(self, decision_id: str) -> None:
        """This process made `decision_id` (its pacer booked it already): call before the decision is stored, or on
        the writer thread as it is committed (`book_given_id`), before the log is read again."""
        if self.shared:
            with self._own_lock:
                self._own[decision_id] = time.monotonic()

    def book_given_id(self, decision: Decision) -> None:
        """`decision`, made by this process's live router for a request that carries its own `decision_id` and not
        booked then (`Router.route_many(..., book_given_ids=False)`), is stored: booked now, on the writer thread as it
        commits (`InsertDecision.on_stored`: before the request is answered and before the log is read again, which
        then skips it as this process's). A request whose id was taken (a retry: 409) stored nothing and books nothing:
        not its requests, spend or shares, nor the step of λ, μ or the arrival gap a booking makes; the stored decision
        of that id, another process's, is booked when read from the log, as any other of theirs."""
        self.mine(decision.decision_id)
        self.pacer.observe(decision, None)

    def _claim(self, decision_id: str) -> bool:
        """Whether `decision_id`, read from the log, is this process's (`mine`: booked already); it is forgotten."""
        with self._own_lock:
            return self._own.pop(decision_id, None) is not None

    def book_chain(self, decision: Decision, call: CallRecord, spend_usd: float, *, mine: bool = False,
                   at: float | None = None) -> None:
        """Book a named router's request stored as `decision` with `call` (its call record, carrying the chain),
        which paid `spend_usd` in all, every call of it made before the decision was stored (`mine`: this process's,
        booked before it is stored, its id noted with it; else another process's, read from the log):

        - the named router's own decision (`unrouted`: feedback never corrects it) is booked at `spend_usd`;
        - the policy's decision an LLM router used (a routed decision, made with `Router.decide(..., book=False)`:
          booked here, only once it is stored) is booked like any routed one, at its expected cost, corrected by
          its learned feedback; the rest of the chain, `spend_usd` − the answer's cost (`call.cost_usd`: the
          routing call), is spent at once beside it."""
        with self._booking if mine else contextlib.nullcontext():
            if mine:
                self.mine(decision.decision_id)
            if unrouted(decision.policy):
                self.pacer.book(decision, spend_usd, at=at)
                return
            self.pacer.observe(decision, None, at=at)
            self.pacer.spend(spend_usd - (call.cost_usd or 0.0), decision.context.attributes.get("tenant"), at=at)

    def book_own_stored(self, decision: Decision, *, booked: bool = True) -> None:
        """`decision`, made outside `Router.route` by this process, is stored: noted as this process's and booked
        (`book_stored`), on the writer thread as it commits (`InsertDecision.on_stored`), as `book_given_id`."""
        self.mine(decision.decision_id)
        self.book_stored(decision, booked=booked)
        if self.shared and decision.policy == CALLER_POLICY:
            self._uncalled[decision.decision_id] = time.monotonic()

    def book_stored(self, decision: Decision, *, booked: bool = True) -> None:
        """`decision`, made outside `Router.route` by this process, is stored: a caller-named model's is booked now at
        its expected cost (corrected by `book_call` when its call is recorded), and so is a routed decision the
        pacer has not booked (`booked=False`: a gateway fallback, or an LLM router's policy decision whose model
        failed, made with `Router.decide(..., book=False)`; its feedback corrects it). Any other: nothing (a named
        router's is booked by `book_chain`)."""
        if decision.policy == CALLER_POLICY or not booked:
            self.pacer.observe(decision, None)

    def book_call(self, decision: Decision, call: CallRecord, *, at: float | None = None) -> None:
        """`call`, the call record of `decision`, is stored: a caller-named decision's booking (its expected cost ĉ)
        is corrected by c_call − ĉ, c_call = the record's cost (0 when the call failed or was refused). Only money:
        latency targets see learned outcomes' latencies, as for named routers. Any other decision: nothing
        (learning corrects a routed one; a named router's is booked at its cost)."""
        if decision.policy == CALLER_POLICY:
            with self._booking:  # its correction and its id leaving `_uncalled` together (`save`)
                self._uncalled.pop(decision.decision_id, None)
                self.pacer.observe(decision, call.cost_usd or 0.0, at=at)

    def book_judge_call(self, call: JudgeCall, *, mine: bool, at: float | None = None) -> None:
        """The feedback judge paid `call.cost_usd` to score `call.decision_id`: spent in the global scope and the
        scored decision's tenant (not a request, nor in the shares). `mine`: this process's judge made the call
        (call before it is stored); else another process's, read from the log."""
        with self._booking if mine else contextlib.nullcontext():
            if mine and self.shared:
                self._own_judged[call.decision_id] = time.monotonic()
            self.pacer.spend(call.cost_usd, call.tenant, at=at)

    def start_following(self, tx: WriteTx, applied_seq: int | None = None) -> None:
        """Book other processes' decisions and judge calls stored from now on, or, when the loaded state was saved
        with its marks (`LOG_MARKS`) by a process of this log, from where it stood: `replay_since_save` then books what
        was stored between (called after `tx` commits: it reads without holding the log's lock). So a worker that
        replaces one killed, or a replica restarted while others serve, counts what every process stored meanwhile."""
        if not self.shared:
            return
        self._position = last = tx.last_decision_position()
        self._judge_position = last_judged = tx.last_judge_call_position()
        marks, self._resume = self._resume, None
        if (marks is None or marks["decisions"] > last or marks["judge_calls"] > last_judged
                or applied_seq is None or marks["feedback"] > applied_seq):
            return  # no marks, or marks past this log's end (a database restored from an older backup)
        self._replaying = (marks, (last, last_judged, applied_seq))

    def replay_since_save(self) -> None:
        """After `start_following`: book what was stored since the loaded state's save (`_replay`), before this
        process serves. A read that fails leaves it unbooked (logged), as a start without marks does."""
        replaying, self._replaying = self._replaying, None
        if replaying is None:
            return
        try:
            with self.store.read() as reader:
                self._replay(reader, *replaying)
        except StoreError as exc:
            log.warning("booking what other processes stored since the budget state was saved failed: %s", exc)

    def _replay(self, tx: Reader, marks: dict[str, Any], ends: tuple[int, int, int]) -> None:
        """Book what was stored after the saved `marks` up to `ends` (the log's end: decisions, judge calls): the
        decisions (but the saver's own, booked as it made them), the judge calls (but its own), and the corrections
        by the real cost of the feedback learned after its seq up to `ends[2]` (what this process's recovery learned,
        without its pacer), as learning does (`Router.learn`). Each at the time it happened (a decision's
        `created_at`, a feedback's `received_at`, a judge call's `created_at`), in that order: in the budget period
        it happened in, so that a state saved in the period before counts the rows of that period in it, not in
        this one (booked at the start's time, they were). A time before the save (`saved_at`: a row in flight as the
        state was saved) is taken as the save's: the pacer's periods only move forward with its bookings (a move back
        reads as the clock set back, `_SpendControl.roll`)."""
        since = marks["saved_at"]
        now = time.monotonic()
        with self._own_lock:
            self._own.update((decision_id, now) for decision_id in marks["own"])
        self._own_judged.update((decision_id, now) for decision_id in marks["own_judged"])
        due: list[tuple[float, int, Callable[[], None]]] = []
        position, end = marks["decisions"], ends[0]
        while position < end:
            rows = [(p, s) for p, s in tx.decisions_after(position, DECISIONS_PAGE) if p <= end]
            theirs = [s.decision.decision_id for _, s in rows if s is not None
                      and s.decision.decision_id not in self._own]
            calls = tx.calls_for_many(theirs) if theirs else {}
            for _, stored in rows:
                if stored is not None and not self._claim(stored.decision.decision_id):
                    decision = stored.decision
                    at = max(since, decision.created_at)
                    due.append((at, len(due), functools.partial(
                        self._book_theirs, decision, calls.get(decision.decision_id), at)))
            if len(rows) < DECISIONS_PAGE or not rows:
                break
            position = rows[-1][0]
        position, end = marks["judge_calls"], ends[1]
        while position < end:
            judged = [(p, c) for p, c in tx.judge_calls_after(position, DECISIONS_PAGE) if p <= end]
            for _, call in judged:
                if self._own_judged.pop(call.decision_id, None) is None:
                    at = max(since, call.created_at)
                    due.append((at, len(due), functools.partial(self.book_judge_call, call, mine=False, at=at)))
            if len(judged) < DECISIONS_PAGE or not judged:
                break
            position = judged[-1][0]
        seq, applied_seq = marks["feedback"], ends[2]
        while seq < applied_seq:
            learned = [row for row in tx.learned_after(seq, DECISIONS_PAGE) if row[0].seq <= applied_seq]
            for record, learned_decision in learned:
                if learned_decision is not None:
                    at = max(since, record.received_at)
                    due.append((at, len(due), functools.partial(
                        self.pacer.observe, learned_decision, record.realised_cost_usd, record.latency_s, at=at)))
                seq = record.seq
            if len(learned) < DECISIONS_PAGE:
                break
        awaiting = [d for d in marks.get("awaiting", []) if d not in self._awaiting]
        for start in range(0, len(awaiting), DECISIONS_PAGE):  # caller-named, booked by the state: their calls
            ids = awaiting[start:start + DECISIONS_PAGE]
            found, calls = tx.decisions(ids), tx.calls_for_many(ids)
            for decision_id, stored_caller in found.items():
                recorded = calls.get(decision_id)
                if recorded is None:
                    self._awaiting[decision_id] = (stored_caller.decision, now)
                else:
                    at = max(since, recorded.created_at)
                    due.append((at, len(due), functools.partial(self.book_call, stored_caller.decision, recorded,
                                                                at=at)))
        for _, _, book in sorted(due, key=lambda item: item[:2]):
            book()

    def _marks(self) -> dict[str, Any] | None:
        """Where this process's pacer stands in the shared log (`LOG_MARKS`), or None: not shared, not following
        yet (no targets), no feedback seq known, or too many own ids."""
        if not self.shared or self._position is None or self.applied_seq is None:
            return None
        with self._own_lock:
            own = list(self._own)
        if len(own) + len(self._own_judged) + len(self._uncalled) + len(self._awaiting) > OWN_MARKED:
            return None
        return {"decisions": self._position, "own": own, "judge_calls": self._judge_position,
                "own_judged": list(self._own_judged), "feedback": self.applied_seq(),
                "awaiting": [*self._uncalled, *self._awaiting], "saved_at": self.pacer.current_time()}

    def follow_decisions(self) -> int:
        """Book the decisions other processes stored since the last call; returns how many. Without targets
        nothing is read (the tail starts again from the newest decision when targets are set)."""
        now = time.monotonic()
        if not self.shared or now < self._next_decisions:
            return 0
        self._next_decisions = now + DECISIONS_EVERY_S
        self._forget(now)
        if not self.pacer.config.describe():  # nothing to book: `mine`'s ids are only forgotten
            self._position = None
            self._awaiting.clear()
            return 0
        booked = 0
        try:
            if self._position is None:
                with self.store.write() as tx:
                    self.start_following(tx)
            assert self._position is not None
            while True:
                with self.store.read() as reader:
                    rows = reader.decisions_after(self._position, DECISIONS_PAGE)
                    theirs = [s.decision.decision_id for _, s in rows
                              if s is not None and s.decision.decision_id not in self._own]
                    calls = reader.calls_for_many(theirs) if theirs else {}
                for position, stored in rows:
                    if stored is None:  # cannot be read (logged by the store): nothing to book; pass it by
                        self._position = position
                        continue
                    if not self._claim(stored.decision.decision_id):
                        self._book_theirs(stored.decision, calls.get(stored.decision.decision_id))
                        booked += 1
                    self._position = position
                if len(rows) < DECISIONS_PAGE:
                    break
            if self._awaiting:
                with self.store.read() as reader:
                    found = reader.calls_for_many(list(self._awaiting))
                for decision_id, call in found.items():
                    self.book_call(self._awaiting.pop(decision_id)[0], call)
            self._follow_judge_calls()
        except StoreError as exc:
            self._say("decisions", logging.WARNING, "reading other processes' decisions failed: %s", exc)
        return booked

    def _follow_judge_calls(self) -> None:
        """Spend the judge calls other processes stored since the last read (this process's own: skipped)."""
        while True:
            with self.store.read() as reader:
                rows = reader.judge_calls_after(self._judge_position, DECISIONS_PAGE)
            for position, call in rows:
                if self._own_judged.pop(call.decision_id, None) is None:
                    self.book_judge_call(call, mine=False)
                self._judge_position = position
            if len(rows) < DECISIONS_PAGE:
                return

    def _forget(self, now: float) -> None:
        """Drop this process's decision ids not seen in the log after `OWN_FORGET_S` (their insert failed, or no
        targets were set to read the log), and other processes' caller-named decisions whose call record did not
        appear within `CALL_WAIT_S`."""
        if now < self._next_forget:
            return
        self._next_forget = now + OWN_FORGET_S / 4
        while self._forget_oldest(now - OWN_FORGET_S):
            pass
        for decision_id, made in list(self._own_judged.items()):
            if now - made > OWN_FORGET_S:
                self._own_judged.pop(decision_id, None)
        for decision_id, (_, seen) in list(self._awaiting.items()):
            if now - seen > CALL_WAIT_S:
                del self._awaiting[decision_id]
        for decision_id, made in list(self._uncalled.items()):
            if now - made > CALL_WAIT_S:
                self._uncalled.pop(decision_id, None)

    def _forget_oldest(self, before: float, at_most: int = 1000) -> bool:
        """Drop up to `at_most` of this process's ids noted before `before`, oldest first (`_own` is in the order
        they were noted), taking `_own_lock` for only that many (`mine` waits on the event loop meanwhile); whether
        more may be left."""
        with self._own_lock:
            for _ in range(at_most):
                if not self._own or next(iter(self._own.values())) >= before:
                    return False
                self._own.popitem(last=False)
        return True

    def _book_theirs(self, decision: Decision, call: CallRecord | None, at: float | None = None) -> None:
        """Book a decision another process stored as that process did: a named router's (its call record carries a
        chain) by `book_chain`, any other at its expected cost; a caller-named one is corrected by its call record
        (`book_call`) now if it is stored, else when it is found."""
        spend = chain_spend(call)
        if call is not None and spend is not None:
            self.book_chain(decision, call, spend, at=at)
            return
        self.pacer.observe(decision, None, at=at)
        if decision.policy == CALLER_POLICY:
            if call is not None:
                self.book_call(decision, call, at=at)
            else:
                self._awaiting[decision.decision_id] = (decision, time.monotonic())

    def housekeeping(self) -> None:
        """Between batches: book other processes' decisions; pick up targets another worker stored; save the
        pacer's state."""
        self.follow_decisions()
        now = time.monotonic()
        if now >= self._next_follow:
            self._next_follow = now + FOLLOW_EVERY_S
            try:
                with self.store.read() as reader:
                    stored = reader.get_meta(BUDGETS_CONFIG)
                    state = reader.get_meta(BUDGETS_STATE) if stored != self._config_json else None
                if stored is not None and stored != self._config_json:
                    self.pacer.configure_stored(targets := json.loads(stored))
                    saved = _decoded(state)  # the PUT's: when it set the targets (`BudgetPacer.adopt_since`)
                    if isinstance(saved, dict) and saved.get("config") == targets:
                        self.pacer.adopt_since(saved)
                    self._config_json = stored
                    self._stored = True
                self._targets_seen = stored  # only once followed: `save` compares with it
                self._unfollowed = False
            except (StoreError, *UNLOADABLE) as exc:
                self._unfollowed = not isinstance(exc, StoreError)
                self._say("follow", logging.WARNING, "reading the stored budget targets failed: %s", exc)
        self.save()

    def save(self, *, force: bool = False) -> None:
        """Store the pacer's state (when there is anything to store), at most every `SAVE_EVERY_S`, as the start's
        rewrite does (`_store_as_loaded`): in one transaction that reads the targets row again first. If another
        process stored targets since this one last read them (a PUT, a start storing them as loaded), nothing is
        written: its state row is newer, and `housekeeping` follows the targets within `FOLLOW_EVERY_S`, then saves.
        Targets this process left out stay in the row with their state as stored now: read in the same transaction
        (`BudgetPacer.state(stored)`: a newer replica that paces them may have stored them since). Stored targets this
        process cannot load (`_unfollowed`) are not followed: it saves only while the state row is still of its own
        targets, so a process that loaded them (it stored the state row with them) is never written over, and
        targets no process can load do not stop every save."""
        now = time.monotonic()
        if not self._stored or (not force and now < self._next_save):
            return
        self._next_save = now + SAVE_EVERY_S
        try:
            with self.store.write() as tx:
                stored = _decoded(tx.get_meta(BUDGETS_STATE))
                if tx.get_meta(BUDGETS_CONFIG) != self._targets_seen:
                    if not (self._unfollowed and _of_config(stored, self.pacer.state(stored)["config"])):
                        self._say("save-stale", logging.INFO, "the stored budget targets changed since this process "
                                  "read them (another process stored them); its state is saved once it follows them")
                        return
                    self._say("save-unfollowed", logging.WARNING, "the stored budget targets changed and this process "
                              "has not followed them; no process that did has saved its state, so it saves its own")
                why = not_saved_over(stored)
                if why is not None:
                    self.unsaved = why
                    self._say("unsaved", logging.WARNING, "the budget state is not saved: %s", why)
                    return
                with self._booking:  # the state and its marks of one moment (`_booking`)
                    state, marks = self.pacer.state(stored), self._marks()
                if marks is not None:
                    state[LOG_MARKS] = marks
                tx.set_meta(BUDGETS_STATE, json.dumps(state))
            self.unsaved = None
        except StoreError as exc:
            self._say("save", logging.ERROR, "saving the budget state failed (will retry): %s", exc)

    def recover(self, router: Router) -> str:
        """Load the stored pacer state (it wins over the configuration), then pace `router`. Returns where the
        targets came from: `config` or `stored`.

        What this version drops on loading is said (`BudgetPacer.load`, `BudgetConfig.from_stored`), and the rows
        are then stored again as loaded only when nothing but a harmless normalisation was dropped (of tenants "5"
        and "5.0" stored apart, "5.0"), so that the next start has nothing to say. A stored target this version
        refuses (one a newer version stored: `spend_usd=900/1mo`) is never rewritten away: the rows stay as stored
        (a newer version, or this one after a downgrade, loads it again), and each start says it again until a
        PUT /v1/budgets replaces the targets; the pacer's `state()` stores such a target's text and state again as
        stored (`BudgetPacer.load`), so `save` keeps them too. A state row that does not load is saved over (with
        the state of what is paced: the targets row, else the configuration), unless it is another version's
        (`not_saved_over`: then nothing is saved until a PUT, and `saving` says so). The rows are stored again only
        if no other process stored them since this start read them (`_store_as_loaded`)."""
        source = "config"
        configured = self.pacer.config
        with self.store.read() as reader:
            state = reader.get_meta(BUDGETS_STATE)
            config = reader.get_meta(BUDGETS_CONFIG)
            file_before = reader.get_meta(BUDGETS_FILE)
        loaded_state: Any = None
        changed = False  # something stored did not load as stored (said by the loading)
        refused = False  # ... of which a target this version refuses: the rows are not rewritten
        not_loaded: str | None = None  # why the state row did not load
        if state is not None:
            try:
                saved = json.loads(state)
                with quietly() if _replaced(saved, _decoded(config)) else contextlib.nullcontext():
                    refused = bool(self.pacer.load(saved))
                loaded_state = saved
                self._resume = _marks_of(saved)
                changed = saved["config"] != self.pacer.config.to_mapping()
                source = "stored"
                self._stored = True
            except UNLOADABLE as exc:
                not_loaded = str(exc)
        if config is not None:
            try:
                targets = json.loads(config)
                if targets != self.pacer.config.to_mapping() and (  # a PUT after the last state save; the same
                        loaded_state is None or targets != loaded_state["config"]):  # as the state's: loaded once
                    refused = bool(self.pacer.configure_stored(targets))  # they replace the state's: only theirs
                    changed = changed or targets != self.pacer.config.to_mapping()
                self._config_json = self._targets_seen = config
                source = "stored"
                self._stored = True  # the targets row's targets are paced: their state is saved
            except UNLOADABLE as exc:
                self._unfollowed = True  # `save` then never writes over a state row of the targets it holds
                log.warning("stored budget targets not loaded: %s", exc)
        protected = None if state is None else not_saved_over(_decoded(state))
        self.unsaved = protected if self._stored else None
        if not_loaded is not None:
            log.warning("stored budget state not loaded (%s); pacing %s, %s", not_loaded,
                        "the stored targets (the row a PUT writes)" if source == "stored"
                        else "the configuration's [budgets]",
                        f"without saving the state: {protected}" if protected is not None
                        else "whose state is saved over the row (it holds nothing any version loads)")
        if refused:  # the state's saves store them again as stored (`BudgetPacer.state`)
            log.warning("stored budget targets this version refuses are left stored, not paced (the rows are not "
                        "rewritten; a PUT /v1/budgets replaces them)")
        elif changed and self._store_as_loaded(
                (state, config),
                state_row=json.dumps(self.pacer.state())  # not over another version's state row
                if protected is None else None,
                targets_row=json.dumps(self.pacer.config.to_mapping(), sort_keys=True)
                if config is not None and self._config_json == config else None):
            log.info("stored the budget targets as loaded: %s", ", ".join(self.pacer.config.describe()) or "none")
        self._note_file(configured, file_before, stored=source == "stored")
        router.pacer = self.pacer
        return source

    def say_models_gone(self, active: Sequence[ModelSpec]) -> None:
        """After a start that paces stored targets (`recover` returned `stored`), warn about those naming models no
        decision can choose any more among `active`: removed from the catalog file or retired since the PUT, or in
        the catalog with `route = false`. The start checks the file's `[budgets]` against the live catalog, not the
        stored ones that replace it, and these bind nothing as they were meant to."""
        config, routable = self.pacer.config, [m for m in active if m.route]
        unrouted = {m.name for m in active if not m.route}
        fallback = config.fallback_model
        if fallback is not None and fallback not in {m.name for m in routable}:
            log.warning("stored budgets: fallback_model %r %s: while a budget is exhausted the guard rails take the "
                        "request's cheapest model instead; PUT /v1/budgets to name another", fallback,
                        "has route = false in the catalog (no decision chooses it)" if fallback in unrouted
                        else "is not an active model (removed from the catalog or retired since it was set)")
        gone, unbound = set(config.shares_matching_nothing(active)), config.shares_matching_nothing(routable)
        for why, shares in (
            ("no active model is picked by that selector (removed from the catalog or retired since it was set)",
             [s for s in unbound if s in gone]),
            ("that selector picks only models with route = false in the catalog (no decision chooses them)",
             [s for s in unbound if s not in gone]),
        ):
            if shares:
                log.warning("stored budgets: %s: %s, so it never binds; PUT /v1/budgets to change it",
                            ", ".join(shares), why)

    def _note_file(self, configured: BudgetConfig, before: str | None, *, stored: bool) -> None:
        """Warn when the configuration's `[budgets]` changed since the last start (or was never noted: a database of
        an older version, where a file without targets says nothing) and the stored targets, which win, differ
        from it: an edit of the file (a budget cut, targets removed) is not what is paced, and nothing else says
        so. Then note the file as read, so that the next start with it unchanged says nothing. The warning comes
        from the process that notes it: of the workers of `serve --workers N`, which all read `before` first, only
        the first to write (the others find it noted in their write transaction)."""
        noted = json.dumps(configured.to_mapping(), sort_keys=True)
        if noted == before:
            return
        first = True
        try:
            with self.store.write() as tx:
                first = tx.get_meta(BUDGETS_FILE) != noted
                if first:
                    tx.set_meta(BUDGETS_FILE, noted)
        except StoreError as exc:
            log.warning("noting the configuration's [budgets] failed (the next start may say it again): %s", exc)
        paced = self.pacer.config
        if first and stored and paced.to_mapping() != configured.to_mapping() and (
                before is not None or configured.describe()):
            log.warning("the configuration's [budgets] changed and is not what is paced: the stored budgets (set by a "
                        "PUT /v1/budgets or an earlier start's configuration) win over the file at every start; file: "
                        "%s; paced: %s. To pace the file's, PUT them (GET /v1/budgets shows what is paced)",
                        ", ".join(configured.describe()) or "no targets", ", ".join(paced.describe()) or "no targets")

    def _store_as_loaded(self, read: tuple[str | None, str | None], *, state_row: str | None = None,
                         targets_row: str | None = None) -> bool:
        """Store `state_row` and `targets_row` (those not None) in place of the rows `read` (state, targets) at
        this start, in one transaction that reads them again first: if another process stored either since (its
        start, a PUT /v1/budgets), nothing is written (what it stored is newer; `housekeeping` follows it).
        Returns whether they were stored."""
        try:
            with self.store.write() as tx:
                if (tx.get_meta(BUDGETS_STATE), tx.get_meta(BUDGETS_CONFIG)) != read:
                    log.info("the stored budget rows changed since this start read them (another process stored "
                             "them); left as that process stored them")
                    return False
                if state_row is not None:
                    tx.set_meta(BUDGETS_STATE, state_row)
                if targets_row is not None:
                    tx.set_meta(BUDGETS_CONFIG, targets_row)
        except StoreError as exc:
            log.warning("storing the budget targets as loaded failed (the next start loads them again): %s", exc)
            return False
        if targets_row is not None:
            self._config_json = self._targets_seen = targets_row
        return True


def stored_budgets(store: Store) -> bool:
    """The store holds budget targets that a start loads in place of the configuration's `[budgets]`
    (`BudgetState.recover`): a state row or a PUT's targets row that loads as `recover` loads it (said nothing of:
    the start says it). A row that does not load leaves the start on `[budgets]`, as none does."""
    with store.read() as reader:
        state, targets = (reader.get_meta(key) for key in (BUDGETS_STATE, BUDGETS_CONFIG))
    with quietly():
        return _loads(state, lambda row: BudgetPacer().load(row)) or _loads(targets, BudgetConfig.from_stored)


def _loads(row: str | None, load: Callable[[Any], object]) -> bool:
    """Whether a stored budget row loads with `load` (after its JSON decoding), as `BudgetState.recover` loads it."""
    if row is None:
        return False
    try:
        load(json.loads(row))
    except UNLOADABLE:
        return False
    return True


def _replaced(saved: Any, targets: Any) -> bool:
    """The stored targets row `targets` (decoded) replaces the targets of the stored state `saved` at start (a PUT
    after the state's last save: neither its config as stored nor as this version loads it, `recover`): what the
    state's config leaves out is then not said (it is not kept)."""
    if not isinstance(saved, dict) or not isinstance(targets, dict) or targets == saved.get("config"):
        return False
    try:
        with quietly():
            return targets != BudgetConfig.from_stored(saved["config"])[0].to_mapping()
    except (*UNLOADABLE, KeyError, TypeError, AttributeError):
        return False


def not_saved_over(stored: Any) -> str | None:
    """Why the state row `stored` (decoded) must not be saved over: it is another version's, which a version that
    reads it loads again: a state in another format than this version's (a newer version's), or in this format with
    a config table this version refuses (`BudgetConfig.from_stored` raises InvalidInput: a setting beyond this
    version's range, `cost_step = 20`); else None (this version's format with targets it loads, none, or a row
    that is not a JSON object with a format text or whose config is not a table: a damaged one holds nothing any
    version loads)."""
    if not isinstance(stored, dict) or not isinstance(stored.get("format"), str):
        return None
    if stored["format"] == STATE_FORMAT:
        refused = _refused(stored.get("config"))
        if refused is None:
            return None
        return (f"the stored budget state holds targets this version refuses (another version's: {refused}), which "
                "this version does not save over (a PUT /v1/budgets replaces them); each start paces from no spend "
                "until then")
    return (f"the stored budget state is in another version's format ({stored['format']!r}), which this version "
            "does not save over (a PUT /v1/budgets replaces it); each start paces from no spend until then")


def _refused(config: Any) -> str | None:
    """Why this version refuses the stored config table `config` (`BudgetConfig.from_stored` raises InvalidInput),
    else None (it loads, or it is not a table: damaged)."""
    if not isinstance(config, dict):
        return None
    try:
        with quietly():
            BudgetConfig.from_stored(config)
    except InvalidInput as exc:
        return str(exc)
    except (ValueError, OverflowError, RecursionError, TypeError, KeyError, AttributeError):
        return None
    return None


def _of_config(state: Any, config: Any) -> bool:
    """Whether the decoded state row `state` is of the targets `config` (as `BudgetPacer.state` stores them)."""
    return isinstance(state, dict) and state.get("config") == config


def _marks_of(state: Any) -> dict[str, Any] | None:
    """The marks (`LOG_MARKS`) of a loaded state, or None when it has none or they are not of their form (a
    damaged row: the start then books from the log's end)."""
    marks = state.get(LOG_MARKS) if isinstance(state, dict) else None
    if not isinstance(marks, dict):
        return None
    counts = [marks.get(key) for key in ("decisions", "judge_calls", "feedback")]
    ids = [marks.get(key) for key in ("own", "own_judged")] + [marks.get("awaiting", [])]
    if not all(type(n) is int and n >= 0 for n in counts) or not all(
            isinstance(i, list) and all(isinstance(x, str) for x in i) for i in ids):
        return None
    saved_at = marks.get("saved_at")  # the wall time of the save (marks of 63fada9 have none: no bound)
    if not (isinstance(saved_at, (int, float)) and not isinstance(saved_at, bool) and math.isfinite(saved_at)):
        saved_at = -math.inf
    return {**marks, "saved_at": float(saved_at)}


def _decoded(row: str | None) -> Any:
    """A stored row's JSON, or None when there is none or it is not JSON (or nested too deep to decode)."""
    try:
        return None if row is None else json.loads(row)
    except (ValueError, RecursionError):
        return None


def chain_spend(call: CallRecord | None) -> float | None:
    """What a named router's request paid in all, from the chain stored with its call record (Σ its calls'
    costs, `of_chain`); None for a call record without a chain (or one that does not decode: then its cost)."""
    if call is None or call.chain is None:
        return None
    try:
        return of_chain(json.loads(call.chain), call.created_at).spend_usd
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        log.warning("decision %s: stored chain not read (%s); booked at its call's cost", call.decision_id, exc)
        return call.cost_usd or 0.0
