"""`Monitor`: what the dashboard shows about a running router, read from the store with bounded queries.

- `timeseries(window)`: `log.timeseries` over the per-minute rollup.
- `recent(limit)`: the newest decisions with their learned quality, else what became of their feedback (`late`,
  `unrouted`, `pending`, or `expired`: none came and the reward window has closed); the prompt only when stored.
- `live()`: the live policy and its version; `typical.probabilities`: the probability the live policy gave each
  model (as logged), averaged over the bandit's own first tries among the newest `TYPICAL_DECISIONS` decisions
  (real traffic; not models callers named, named routers' choices or the gateway's fallbacks); `typical.allowed`:
  how many of those decisions allowed each model (0: they named their own models without it, a hard budget left it
  out, or it was added since; a request naming no models would be the first to allow it; a model
  every request allowed can still average a logged probability of 0); `typical.now`:
  the probability the live policy would give each model *now* (`Router.pmf_now`: its pmf with the cold-start
  floors at today's λ, nothing drawn or booked), averaged over the contexts of the newest `NOW_DECISIONS` of
  those decisions, newest first, as many as `NOW_BUDGET_S` of pricing reaches (at least one; `typical.now_decisions`
  says how many), so a model added a moment ago shows its exploration floor; and the budget pacer's report
  (each target against its realised value, per tenant).
- `shadows()`: each shadow policy's doubly robust estimate (with its confidence interval) against the live
  policy's, on the live policy's decisions with feedback among the newest `SHADOW_DECISIONS` that logged the
  shadow's pmf (its `n`; the live row: those that logged any; without those where a logged pmf, the live
  policy's or the shadow's, gave probability to a model no candidate may route to now: `left_out`), whether that
  evidence would allow a promotion (`evaluation.promotion_check`), and the evaluation's `warnings` (as the
  promotion check's). Recomputed at most every `SHADOW_TTL_S` seconds.

Every method blocks (a database read, maybe an evaluation): call it from a thread pool.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .. import graphemes
from ..budgets import BudgetConfig, BudgetPacer
from ..catalog import ModelSpec
from ..errors import BanditRouterError, UnknownModel
from ..router import Router
from ..store import Store
from ..store.records import unrouted
from ..store.rollup import is_fallback
from ..types import Context
from .policies import PolicySet
from .timeseries import Window, timeseries

if TYPE_CHECKING:
    from ..evaluation import Evaluation

TYPICAL_DECISIONS = 200
NOW_DECISIONS = 100
"""The newest routed decisions whose contexts `live()` prices again with the live policy ("probability now")."""
NOW_BUDGET_S = 0.2
"""How long `live()` prices contexts for "probability now" before it averages what it has (measured by `steady`;
at least one context is priced). A pmf of the `default` policy costs ∝ K² for K models in play: ≈ 0.1 ms at 5
models, ≈ 10 ms at 100 and ≈ 80 ms at 300, so 100 contexts took ≈ 1 s a computation at 100 models and ≈ 10 s at
300, past the dashboard's 10 s wait for an answer (it showed "no answer within 10 s" for the first 25 s)."""
NOW_TTL_S = 10.0
"""How long `live()` reuses its "probability now" (at most ≈ `NOW_BUDGET_S` of policy pmfs) while the live router,
its models and the budget targets stay the same: a dashboard polls every 2 s, and a model added or retired, a
promotion, or a budget PUT (here or on another replica) shows at once."""
SHADOW_DECISIONS = 2000
SHADOW_TTL_S = 15.0
MIN_SHADOW_EVIDENCE = 20
"""Recent decisions of the live policy with feedback that logged a shadow's pmf below which it is not estimated."""
MAX_RECENT = 500
RECENT_PROMPT_CHARS = 1000
"""`recent()` shows a stored prompt's first this many characters (then `…`); the whole one is in the decision
(`GET /v1/decisions/{id}`). Whole prompts made one request of `/v1/stats/recent` (any key) a reply of up to
500 × 200,000 characters, 6 bytes each once JSON escapes a control character: 51 MB for the default 50 rows."""
EXPIRED = "expired"
"""`recent()`'s `feedback_status` of a decision without feedback whose reward window has closed: a feedback sent
now would be `late` (never learned). With `default_reward`, only `DEFAULT_GRACE_S` later: the service writes the
default's row (`default`) within about half a second of the window's end (`writer.SWEEP_GRACE_S` +
`SWEEP_EVERY_S`), except for decisions that get none (a model the caller named, an upstream that refused)."""
DEFAULT_GRACE_S = 5.0


_NowKey = tuple[Router, tuple[ModelSpec, ...], BudgetConfig]
"""What `typical.now` was priced for: the live router (the object: an id can be reused), its models, the budgets."""


class Monitor:
    """Bounded reads of the log for the dashboard; `catalog` gives the configured models (for pricing),
    `reward_window_s` the feedback's reward window (`[feedback]`; None: feedback is learned whenever it comes) and
    `default_reward` whether a closed window without feedback learns a default. `clock` is the wall clock (the
    times shown, and whether a window has closed: decisions carry wall-clock times); `steady` measures how long a
    cached result has been reused (`NOW_TTL_S`, `SHADOW_TTL_S`), so that a wall clock set back does not keep it for
    the length of the step."""

    def __init__(
        self, store: Store, policies: PolicySet, pacer: BudgetPacer, catalog: Callable[[], Iterable[ModelSpec]],
        *, reward_window_s: float | None = None, default_reward: bool = False, clock: Callable[[], float] = time.time,
        steady: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.expires_after_s = None if reward_window_s is None else reward_window_s + (
            DEFAULT_GRACE_S if default_reward else 0.0)
        """Seconds after which a decision without feedback is `EXPIRED` (None: never)."""
        self.policies = policies
        self.pacer = pacer
        self.catalog = catalog
        self.clock = clock
        self.steady = steady
        self._shadow_lock = threading.Lock()
        self._shadow_cache: tuple[float, tuple[str, ...], dict[str, Any]] | None = None
        """(when (`steady`), (live policy, its shadows), the estimates): `SHADOW_TTL_S`, while the policies stay."""
        self._now_cache: tuple[float, _NowKey, tuple[dict[str, float | None], int]] | None = None
        """(when (`steady`), (live router, its models, the budget targets), `typical.now`): `NOW_TTL_S`."""

    def timeseries(self, window: Window) -> dict[str, Any]:
        """`timeseries` over `window`, each model marked `in_catalog` (false: no longer an active model)."""
        with self.store.read() as reader:
            out = timeseries(reader, window)
        active = {m.name for m in self.policies.live.models}
        out["models"] = [{**row, "in_catalog": row["model"] in active} for row in out["models"]]
        return out

    def recent(self, limit: int, *, prompts: bool) -> list[dict[str, Any]]:
        """The newest `limit` (≤ `MAX_RECENT`) decisions, newest first; `prompts`: include stored prompts."""
        with self.store.read() as reader:
            rows = reader.recent_decisions(min(limit, MAX_RECENT))
            feedback = reader.feedback_for_many([s.decision.decision_id for _, s in rows])
        now, expires = self.clock(), self.expires_after_s
        out = []
        for _, stored in rows:
            d = stored.decision
            rows_of = feedback.get(d.decision_id, [])
            learned = [f for f in rows_of if f.learn]
            last = learned[-1] if learned else None
            newest = last if last is not None else (rows_of[-1] if rows_of else None)  # late, unrouted, pending…
            status = None if newest is None else str(newest.status)
            if status is None and expires is not None and now > d.created_at + expires:
                status = EXPIRED
            item: dict[str, Any] = {
                "decision_id": d.decision_id,
                "time": d.created_at,
                "model": d.model,
                "probability": d.probability,
                "cost_weight": d.cost_weight,
                "policy_version": d.policy_version,
                "tenant": stored.tenant,
                "quality": None if last is None else last.quality,
                "reward": None if last is None else last.reward,
                "feedback_status": status,
            }
            if prompts:
                item["prompt"] = _preview(stored.prompt)
            out.append(item)
        return out

    def live(self) -> dict[str, Any]:
        """The live policy now, the typical pmf of recent traffic, the budgets."""
        with self.store.read() as reader:
            recent = reader.recent_decisions(TYPICAL_DECISIONS)
            calls = reader.calls_for_many([s.decision.decision_id for _, s in recent])
            head = reader.head()
        rows = [
            (seq, stored) for seq, stored in recent
            if not unrouted(stored.decision.policy)
            and not ((c := calls.get(stored.decision.decision_id)) is not None and is_fallback(c))
        ]  # fmt: skip
        live = self.policies.live
        totals = {m.name: 0.0 for m in live.models}
        allowed = {m.name: 0 for m in live.models}
        for _, stored in rows:
            d = stored.decision
            for name, p in zip(d.models, d.pmf, strict=False):
                totals[name] = totals.get(name, 0.0) + p
                allowed[name] = allowed.get(name, 0) + 1
        n = len(rows)
        key: _NowKey = (live, tuple(live.models), self.pacer.config)
        cached = self._now_cache
        if cached is not None and cached[1] == key and 0.0 <= self.steady() - cached[0] < NOW_TTL_S:
            now, priced = cached[2]
        else:
            now, priced = self._pmf_now(live, [stored.decision.context for _, stored in rows[:NOW_DECISIONS]])
            self._now_cache = (self.steady(), key, (now, priced))
        return {
            "time": self.clock(),
            "policy": self.policies.live_name,
            "policy_version": live.version,
            "feedback_seq": head[0],
            "models": [m.name for m in live.models],
            "shadows": list(self.policies.shadows),
            "typical": {
                "decisions": n,
                "since": rows[-1][1].decision.created_at if rows else None,
                "probabilities": {name: (p / n if n else None) for name, p in sorted(totals.items())},
                "allowed": dict(sorted(allowed.items())),
                "now": now,
                "now_decisions": priced,
            },
            "budgets": self.pacer.report(),
        }

    def _pmf_now(self, live: Router, contexts: list[Context]) -> tuple[dict[str, float | None], int]:
        """Per active model, the mean probability `live` would give it now over `contexts`, newest first, until
        `NOW_BUDGET_S` has passed on `steady` (`Router.pmf_now`; None without contexts, 0 for a model it would not
        route to); and how many contexts were averaged."""
        sums = {m.name: 0.0 for m in live.models}
        n = 0
        deadline = self.steady() + NOW_BUDGET_S
        for context in contexts:
            if n and self.steady() >= deadline:
                break
            try:
                pmf = live.pmf_now(context)
            except BanditRouterError:  # e.g. no model allowed for this request's tenant now
                continue
            n += 1
            for name, p in pmf.items():
                sums[name] = sums.get(name, 0.0) + p
        return {name: (p / n if n else None) for name, p in sorted(sums.items())}, n

    def shadows(self) -> dict[str, Any]:
        """Off-policy estimates of the shadows against the live policy (cached for `SHADOW_TTL_S`)."""
        with self._shadow_lock:
            now, since = self.clock(), self.steady()
            key = (self.policies.live_name, *self.policies.shadows)  # a promotion changes them: estimate anew
            cached = self._shadow_cache
            if cached is not None and cached[1] == key and 0.0 <= since - cached[0] < SHADOW_TTL_S:
                return cached[2]
            try:
                found = self._evaluate_shadows()
            except BanditRouterError as exc:  # e.g. every recent decision allowed only models the catalog no longer has
                found = {"live": self.policies.live_name, "window": SHADOW_DECISIONS, "estimator": "dr", "n": 0,
                         "left_out": 0, "warnings": [], "estimates": [],
                         "reason": f"the shadows could not be evaluated: {exc}"}
            result = {"computed_at": now, **found}
            self._shadow_cache = (since, key, result)
            return result

    def _evaluate_shadows(self) -> dict[str, Any]:
        from ..evaluation import evaluate_log, promotion_check
        from ..evaluation.removed import choices_routable_now, stale_choices_warning
        from ..evaluation.store_log import recent_log

        names = list(self.policies.shadows)
        out: dict[str, Any] = {"live": self.policies.live_name, "window": SHADOW_DECISIONS, "estimator": "dr",
                               "left_out": 0, "warnings": []}
        if not names:
            return {**out, "n": 0, "estimates": [], "reason": "no shadow policies are configured"}
        live = self.policies.live.policy.name  # what the live router writes into each decision's `policy`
        records = [  # the live policy's own, as the promotion check weighs them: not a policy live before it
            r for r in recent_log(self.store, SHADOW_DECISIONS)
            if r.outcome is not None and r.decision.policy == live and any(name in r.shadow_pmfs for name in names)
        ]
        out["n"] = len(records)
        if len(records) < MIN_SHADOW_EVIDENCE:
            counted = f"{len(records)} recent decision{'' if len(records) == 1 else 's'}"
            return {**out, "estimates": [], "reason": f"{counted} of the live policy with feedback logged a shadow's "
                    f"pmf; at least {MIN_SHADOW_EVIDENCE} are needed"}
        specs = {s.name: s for s in self.catalog()}
        for logged in records:
            for name in logged.decision.models:
                if name not in specs:
                    try:
                        specs[name] = self.policies.live.spec(name)  # added at run time, or retired
                    except UnknownModel:  # left the catalog file: evaluated as such (`evaluation.removed`)
                        continue
        # as the promotion check: only the decisions where neither the live policy's pmf nor the shadow's gave
        # probability to a model this catalog no longer routes (a choice neither can make now)
        active = {m.name for m in self.policies.live.models}  # not those retired at run time (`specs` prices them)
        live_rows = tuple(i for i, r in enumerate(records) if choices_routable_now(r, specs, (), active))
        # Each shadow on the decisions that logged its pmf, as the promotion check: a shadow added at a restart
        # must not shrink the others' evidence to its own (shadows logged with the same decisions: one evaluation).
        groups: dict[tuple[int, ...], list[str]] = {}
        logged_with: dict[str, int] = {}
        for name in names:
            logged_with[name] = sum(name in r.shadow_pmfs for r in records)
            rows = tuple(i for i in live_rows if name in records[i].shadow_pmfs
                         and choices_routable_now(records[i], specs, (name,), active))
            groups.setdefault(rows, []).append(name)
        shadow_entries: dict[str, dict[str, Any]] = {}
        live_entry: dict[str, Any] | None = None
        warnings: dict[str, None] = {}  # the evaluations' own (not an estimate's overlap), each once, in order
        for rows, group in groups.items():
            if len(rows) < MIN_SHADOW_EVIDENCE:
                for name in group:
                    stale = logged_with[name] - len(rows)
                    why = (f"only {len(rows)} of the live policy's recent decisions with feedback logged its pmf"
                           if not stale else
                           f"only {len(rows)} of the live policy's recent decisions with feedback logged its pmf with "
                           f"neither pmf giving probability to a model this catalog no longer routes ({stale} more "
                           "gave one probability, a choice neither can make now)")
                    shadow_entries[name] = {
                        "name": name, "role": "shadow", "value": None, "ci_low": None, "ci_high": None,
                        "quality": None, "cost_usd": None, "ess": None, "warnings": [], "n": len(rows),
                        "promotable": False, "reason": f"{why}; at least {MIN_SHADOW_EVIDENCE} are needed"}
                continue
            candidates = ["logged", *(f"shadow:{name}" for name in group)]
            evaluation = evaluate_log([records[i] for i in rows], candidates, models=specs, estimators=("dr",),
                                      baselines=False, seed=0)
            for name in group:
                warnings.update(dict.fromkeys(stale_choices_warning(logged_with[name] - len(rows), logged_with[name])))
            warnings.update(dict.fromkeys(evaluation.warnings))
            for name in group:
                check = promotion_check(evaluation, f"shadow:{name}", estimator="dr", live="logged")
                shadow_entries[name] = {**_entry(evaluation, f"shadow:{name}", name, "shadow"),
                                        "promotable": check.ok, "reason": check.reason}
            if rows == live_rows:
                live_entry = _entry(evaluation, "logged", self.policies.live_name, "live")
        if live_entry is None and len(live_rows) >= MIN_SHADOW_EVIDENCE:  # no shadow was logged with all of them
            evaluation = evaluate_log([records[i] for i in live_rows], ["logged"], models=specs, estimators=("dr",),
                                      baselines=False, seed=0)
            warnings.update(dict.fromkeys(evaluation.warnings))
            live_entry = _entry(evaluation, "logged", self.policies.live_name, "live")
        if live_entry is None:  # too few where the live policy gave no probability to a model not routed now
            live_entry = {"name": self.policies.live_name, "role": "live", "value": None, "ci_low": None,
                          "ci_high": None, "quality": None, "cost_usd": None, "ess": None, "warnings": [],
                          "n": len(live_rows)}
            warnings.update(dict.fromkeys(stale_choices_warning(len(records) - len(live_rows), len(records))))
        # `n`: the decisions the live estimate is on; those with feedback that allowed only models no candidate may
        # route to now (`replay.left_out_rows`), or where a pmf gave one probability, are left out, and counted apart
        return {**out, "n": live_entry["n"], "left_out": len(records) - live_entry["n"], "warnings": list(warnings),
                "estimates": [live_entry, *(shadow_entries[name] for name in names)]}

def _entry(evaluation: Evaluation, candidate: str, name: str, role: str) -> dict[str, Any]:
    """One row of the shadows panel: `candidate`'s DR estimate in `evaluation`, on the decisions it scored
    (`n_evaluated`: not those left out, that allowed only models no candidate may route to now)."""
    estimate = evaluation.record(candidate, "dr")
    return {
        "name": name,
        "role": role,
        "value": _finite(estimate.value),
        "ci_low": _finite(estimate.ci_low),
        "ci_high": _finite(estimate.ci_high),
        "quality": _finite(estimate.quality.value),
        "cost_usd": _finite(estimate.cost.value),
        "ess": _finite(estimate.ess),
        "warnings": list(estimate.warnings),
        "n": evaluation.n_evaluated,
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _preview(prompt: str | None) -> str | None:
    """`prompt` cut to at most `RECENT_PROMPT_CHARS` code points, at the start of the character a reader sees
    there (`graphemes.cut`: never inside a combining sequence, an emoji joined by ZWJ, a flag), with `…` when
    cut."""
    if prompt is None or len(prompt) <= RECENT_PROMPT_CHARS:
        return prompt
    return graphemes.cut(prompt, RECENT_PROMPT_CHARS) + "…"
