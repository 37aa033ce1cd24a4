"""The budget pacer's durable state: its targets and spend, kept in the store's `meta` table, so that a restart
continues the same budget period and every worker follows targets set through any of them."""

from __future__ import annotations

import json
import logging
import time

from ..budgets import BudgetConfig, BudgetPacer
from ..dbguard import RateLimitedLog
from ..errors import InvalidInput
from ..router import Router
from ..store import Store, StoreError, WriteTx

log = logging.getLogger("bandit_router.log")

BUDGETS_STATE = "budgets_state"
"""Meta key: the budget pacer's `state()` (JSON), saved after each PUT /v1/budgets, with each checkpoint, every
`SAVE_EVERY_S` and on stop. After a restart it wins over the configuration's `[budgets]`."""
BUDGETS_CONFIG = "budgets_config"
"""Meta key: the targets set by the last PUT /v1/budgets (JSON); other workers pick them up within
`FOLLOW_EVERY_S`."""
SAVE_EVERY_S = 5.0
FOLLOW_EVERY_S = 1.0


class BudgetState:
    """Saves and loads `pacer` through `store`; every method runs on the writer thread."""

    def __init__(self, store: Store, pacer: BudgetPacer) -> None:
        self.store = store
        self.pacer = pacer
        self._stored = bool(pacer.config.describe())
        self._config_json: str | None = None
        self._next_save = 0.0
        self._next_follow = 0.0
        self._say = RateLimitedLog(log)

    def configure(self, tx: WriteTx, config: BudgetConfig) -> None:
        """New targets (PUT /v1/budgets), stored in the transaction `tx`."""
        self.pacer.configure(config)
        config_json = json.dumps(config.to_mapping(), sort_keys=True)
        tx.set_meta(BUDGETS_CONFIG, config_json)
        tx.set_meta(BUDGETS_STATE, json.dumps(self.pacer.state()))
        self._config_json = config_json
        self._stored = True

    def housekeeping(self) -> None:
        """Between batches: pick up targets another worker stored; save the pacer's state."""
        now = time.monotonic()
        if now >= self._next_follow:
            self._next_follow = now + FOLLOW_EVERY_S
            try:
                with self.store.read() as reader:
                    stored = reader.get_meta(BUDGETS_CONFIG)
                if stored is not None and stored != self._config_json:
                    self.pacer.configure(BudgetConfig.from_mapping(json.loads(stored)))
                    self._config_json = stored
                    self._stored = True
            except (StoreError, InvalidInput, ValueError) as exc:
                self._say("follow", logging.WARNING, "reading the stored budget targets failed: %s", exc)
        self.save()

    def save(self, *, force: bool = False) -> None:
        """Store the pacer's state (when there is anything to store), at most every `SAVE_EVERY_S`."""
        now = time.monotonic()
        if not self._stored or (not force and now < self._next_save):
            return
        self._next_save = now + SAVE_EVERY_S
        try:
            state = json.dumps(self.pacer.state())
            with self.store.write() as tx:
                tx.set_meta(BUDGETS_STATE, state)
        except StoreError as exc:
            self._say("save", logging.ERROR, "saving the budget state failed (will retry): %s", exc)

    def recover(self, router: Router) -> str:
        """Load the stored pacer state (it wins over the configuration), then pace `router`. Returns where the
        targets came from: `config` or `stored`."""
        source = "config"
        with self.store.read() as reader:
            state = reader.get_meta(BUDGETS_STATE)
            config = reader.get_meta(BUDGETS_CONFIG)
        if state is not None:
            try:
                self.pacer.load(json.loads(state))
                source = "stored"
                self._stored = True
            except (InvalidInput, ValueError) as exc:
                log.warning("stored budget state not loaded (%s); using the configuration", exc)
        if config is not None:
            try:
                if json.loads(config) != self.pacer.config.to_mapping():  # a PUT after the last state save
                    self.pacer.configure(BudgetConfig.from_mapping(json.loads(config)))
                self._config_json = config
                source = "stored"
            except (InvalidInput, ValueError) as exc:
                log.warning("stored budget targets not loaded: %s", exc)
        router.pacer = self.pacer
        return source
