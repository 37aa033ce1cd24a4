"""The `Router`: the one object that the service, the simulator and the evaluator all drive.

    route(request)            → Decision   featurize, price, ask the policy for a pmf, sample, log p
    learn(decision, outcome)  → reward     price the outcome, update cost estimates and the policy

For each decision over the allowed models m with expected cost ĉ_m and latency ℓ̂_m, the policy receives the
penalty  λ·ĉ_m + μ·ℓ̂_m (+ a pacer's budget penalties), so the request's own λ changes the choice at once,
without relearning. A policy that learns sizes its own exploration floors (`Policy.cold_start_floors`; the
`default` policy by each new model's uncertainty) or leaves it to the fixed rule: models with fewer than
`cold_start_rounds` feedbacks get at least `cold_start_floor` probability, so a newly added model is explored
at once.

Thread-safe: one lock around the policy and the sampler. `snapshot()`/`restore()` round-trip everything
learned, the model list and the sampler's state; a snapshot records the policy's settings and is restored only
into a router whose policy has the same ones. Replaying the same outcomes in the same order rebuilds the same
weights.

Why one module: `route`, `route_many` and `learn` share the lock, the pricing of each request and the policy's
state; split apart, each would reach into the others' internals.
"""

from __future__ import annotations

import functools
import math
import numbers
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from . import exploration
from .catalog import Catalog, ModelSpec, default_catalog
from .errors import BanditRouterError, InvalidInput, UnknownModel
from .features import FeatureExtractor
from .hints import quoted, quoted_few
from .ids import new_decision_id
from .policies import Policy, check_models, make_policy, policy_settings, setting_defaults
from .reward import CostModel, RewardConfig, reward
from .state import SeededDraws, frozen, pack, rng_from_state, rng_state, unpack
from .types import Context, Decision, Outcome, Request

MAX_DECISION_ID_LENGTH = 64


class Pacer(Protocol):
    """A budget controller the router consults on every decision (see `bandit_router.budgets`)."""

    def adjust(self, context: Context, models: Sequence[ModelSpec], expected_cost: np.ndarray,
               cost_weight: float | None, default_cost_weight: float) -> tuple[float, np.ndarray, np.ndarray]:
        """(effective λ, extra penalty per model, allowed mask per model)."""
        ...

    def observe(self, decision: Decision, cost_usd: float | None, latency_s: float | None = None) -> None:
        """A decision was made (cost None) or its real cost (and reported latency, if any) became known."""
        ...


class Router:
    """Route requests to models with a policy, log the probability, learn from outcomes."""

    def __init__(
        self,
        models: Catalog | Iterable[ModelSpec] | None = None,
        policy: Policy | str = "default",
        *,
        reward_config: RewardConfig | None = None,
        seed: int | None = None,
        features: FeatureExtractor | None = None,
        cost_model: CostModel | None = None,
        cold_start_rounds: int = 20,
        cold_start_floor: float = 0.1,
        pacer: Pacer | None = None,
        policy_checked: bool = False,  # True: checked against every model it will hold (`log.build_router`)
    ) -> None:
        if isinstance(models, str | Mapping):  # iterated, a name gave its letters and a dict its keys
            raise InvalidInput(f"models must be a list of ModelSpecs (default_catalog(), load_catalog(path) or "
                               f"[ModelSpec(...), ...]), got {type(models).__name__}"
                               + (f" {models!r:.60}" if isinstance(models, str) else ""))
        specs = list(models) if models is not None else list(default_catalog())
        if not specs:
            raise InvalidInput("a router needs at least one model")
        for spec in specs:
            _check_spec(spec)
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise InvalidInput("model names must be unique")
        _check_settings(cold_start_rounds, cold_start_floor, seed)
        _check_policy_argument(policy)
        if reward_config is not None and not isinstance(reward_config, RewardConfig):
            raise InvalidInput(f"reward_config must be a RewardConfig (RewardConfig(cost_weight=20.0)), got "
                               f"{type(reward_config).__name__}")
        if pacer is not None and not all(callable(getattr(pacer, m, None)) for m in ("adjust", "observe")):
            raise InvalidInput(f"pacer must be a budget pacer (BudgetPacer(config)), got {type(pacer).__name__}")
        self._models: list[ModelSpec] = specs
        self._routable: tuple[tuple[ModelSpec, ...], tuple[str, ...], dict[str, int]] | None = None
        """`_allowed(None)`, its names and each active model's arm: computed once per change of the model list."""
        self._retired: dict[str, ModelSpec] = {}
        self.policy: Policy = make_policy(policy) if isinstance(policy, str) else policy
        if not policy_checked:
            check_models(self.policy, specs)
        warm_up = getattr(self.policy, "warm_up", None)  # optional: what the first route would load (the default
        if warm_up is not None:  # policy's compiled quadrature), loaded now
            warm_up()
        self.reward_config = reward_config or RewardConfig()
        self.features = features or FeatureExtractor()
        self.cost_model = cost_model or CostModel()
        self.cold_start_rounds = cold_start_rounds
        self.cold_start_floor = cold_start_floor
        self._pacer: Pacer | None = None
        self.pacer = pacer
        self.seed = seed
        self._rng, self._now = np.random.default_rng(seed), SeededDraws(0)  # `pmf_now` draws from `_now`
        self._counts: dict[str, int] = {}
        self._version = 0
        self._lock = threading.RLock()

    # -- catalog ----------------------------------------------------------------------------------------
    @property
    def models(self) -> tuple[ModelSpec, ...]:
        """The active models, in arm order."""
        return tuple(self._models)

    @property
    def version(self) -> int:
        """Number of outcomes learned so far (the policy version)."""
        return self._version

    def spec(self, name: str) -> ModelSpec:
        """The spec of an active or retired model. Under the lock: a retirement (or an addition back), which the
        writer thread applies at any moment, moves the model between the two lists, and a reader between them
        found it in neither."""
        with self._lock:
            for spec in self._models:
                if spec.name == name:
                    return spec
            retired = self._retired.get(name)
        if retired is not None:
            return retired
        raise UnknownModel(f"unknown model {quoted([name], [*(m.name for m in self._models), *self._retired])}")

    @property
    def pacer(self) -> Pacer | None:
        """The budget pacer consulted on every decision (None: no budgets)."""
        return self._pacer

    @pacer.setter
    def pacer(self, pacer: Pacer | None) -> None:
        """Set, it learns the tags of every model held, retired ones too (`_tell_pacer`)."""
        self._pacer = pacer
        self._tell_pacer([*self._models, *self._retired.values()])

    def _tell_pacer(self, specs: Sequence[ModelSpec]) -> None:
        """Give the pacer the models' tags (`BudgetPacer.know_models`): it books decisions it never priced (read
        from the log, a model the caller named, a named router's answer), and a tag share must count them."""
        know = getattr(self._pacer, "know_models", None)
        if know is not None:
            know(specs)

    def add_model(self, spec: ModelSpec) -> None:
        """Make `spec` routable now. It starts cold (explored at once) and, for policies with model features
        or priors, from what models of the same family or tier taught."""
        _check_spec(spec)
        with self._lock:
            if any(m.name == spec.name for m in self._models):
                raise InvalidInput(f"model {spec.name!r} is already in the catalog")
            similar = [m for m in self._models if (m.family and m.family == spec.family)] or [
                m for m in self._models if m.tier and m.tier == spec.tier
            ]
            self.policy.add_model(spec, similar)
            self._retired.pop(spec.name, None)
            self._models.append(spec)
            self._routable = None
            self._tell_pacer([spec])

    def retire_model(self, name: str) -> ModelSpec:
        """Stop routing to `name`. Feedback for its past decisions is still learned."""
        with self._lock:
            spec = self.spec(name)
            if spec.name in self._retired:
                raise UnknownModel(f"model {name!r} is already retired")
            if len(self._models) == 1:
                raise InvalidInput("cannot retire the last model")
            self._models = [m for m in self._models if m.name != name]
            self._routable = None
            self._retired[name] = spec
            self.policy.remove_model(name)
            return spec

    def _allowed(self, names: Sequence[str] | None) -> list[ModelSpec]:
        """The models a decision may choose: `names` (or all active ones) less those with `route = false`
        (`_UnknownNames` when `names` has one that is not active)."""
        if names is None:
            routable = [m for m in self._models if m.route]
        else:
            active = {m.name: m for m in self._models}
            unknown = [n for n in names if n not in active]
            if unknown:  # the refusal (its hints compare names) is worded after the lock is released
                raise _UnknownNames(unknown, [n for n, m in active.items() if m.route])  # a hint it can take
            seen: dict[str, ModelSpec] = {}
            for n in names:
                seen.setdefault(n, active[n])
            routable = [m for m in seen.values() if m.route]
        if not routable:
            raise UnknownModel("no routable model among these (route = false: a judge or router model only)")
        return routable

    # -- deciding ---------------------------------------------------------------------------------------
    def featurize(self, request: Request) -> Context:
        if not isinstance(request, Request):  # else "'str' object has no attribute 'text'" from the features
            raise InvalidInput(f"request must be a Request (Request(prompt=...) or Request(messages=...)), got "
                               f"{type(request).__name__}")
        return self.features(request)

    def route(self, request: Request, *, book: bool = True) -> Decision:
        """Choose a model for `request` and log the probability it was chosen with (`book`: as in `decide`)."""
        context = self.featurize(request)
        return self.decide(
            context, models=request.models, cost_weight=request.cost_weight, decision_id=request.decision_id,
            book=book,
        )

    def decide(
        self,
        context: Context,
        *,
        models: Sequence[str] | None = None,
        cost_weight: float | None = None,
        decision_id: str | None = None,
        book: bool = True,
    ) -> Decision:
        """`route` for an already featurized request (the simulator's and the evaluator's entry point). `book`:
        tell the pacer about the decision now (False: the caller books it, `pacer.observe(decision, None)`, only
        if it is used: an LLM router's fallback to the policy, whose model may not answer; a decision whose id the
        client chose, once it is stored)."""
        _check_context(context)
        _check_id(decision_id)
        try:
            with self._lock:
                priced = self._price(context, models, cost_weight)
                pmf = self.policy.pmf(context, priced.specs, priced.penalty, self._rng)
                made = self._choose(context, priced, pmf)
        except _UnknownNames as names:
            raise names.refusal() from None
        return self._decision(context, priced, made, decision_id, book=book)

    def route_many(self, requests: Sequence[Request], *, book_given_ids: bool = True) -> list[Decision | Exception]:
        """`route` for each of `requests`, in order: the same decisions as that many `route` calls one after the
        other with nothing learned in between (the same pmfs, and the draws in the same order), or the error that
        call would raise. `book_given_ids` False: a request that carries its own `decision_id` is not booked (as
        `route(..., book=False)`: the caller books it once it is stored, since that id may be taken). When the policy
        prices several requests at once (`stacks_pmfs` and `pmfs`, the `default` policy's quadratures in one call)
        and the pacer's prices do not depend on the decisions before (`passive`: no budget targets), the pmfs are
        computed together; otherwise this is one `route` after another."""
        stacks = getattr(self.policy, "pmfs", None) if getattr(self.policy, "stacks_pmfs", False) else None
        passive = self._pacer is None or getattr(self._pacer, "passive", False)
        if stacks is None or len(requests) < 2 or not passive:
            return [_attempt(functools.partial(self.route, book=book_given_ids or r.decision_id is None), r)
                    for r in requests]
        contexts = [self.featurize(r) for r in requests]
        out: list[Decision | Exception] = []
        with self._lock:
            priced: list[_Priced | Exception] = []
            for request, context in zip(requests, contexts, strict=True):
                try:
                    _check_id(request.decision_id)
                    priced.append(self._price(context, request.models, request.cost_weight))
                except Exception as exc:
                    priced.append(exc)
            ready = [(c, p) for c, p in zip(contexts, priced, strict=True) if isinstance(p, _Priced)]
            pmfs = iter(stacks([(c, p.specs, p.penalty) for c, p in ready]))
            chosen: list[_Choice | Exception] = []
            for context, p in zip(contexts, priced, strict=True):
                chosen.append(p if isinstance(p, Exception) else self._choose(context, p, next(pmfs)))
        for request, context, p, made in zip(requests, contexts, priced, chosen, strict=True):
            if isinstance(made, Exception):
                out.append(made.refusal() if isinstance(made, _UnknownNames) else made)
            elif isinstance(p, _Priced):
                book = book_given_ids or request.decision_id is None
                decide = functools.partial(self._decision, book=book)
                out.append(_attempt(decide, context, p, made, request.decision_id))
        return out

    def _price(self, context: Context, models: Sequence[str] | None, cost_weight: float | None) -> _Priced:
        """The allowed models, their expected costs, λ and the penalty per model (under the lock)."""
        if models is None:
            routable = self._routable
            if routable is None:
                found = tuple(self._allowed(None))
                arms_of = {s.name: i for i, s in reversed(list(enumerate(self._models)))}
                routable = self._routable = (found, tuple(s.name for s in found), arms_of)
            specs: Sequence[ModelSpec] = routable[0]
            names: tuple[str, ...] = routable[1]
            arms: dict[str, int] | None = routable[2]
        else:
            specs = self._allowed(models)
            names, arms = tuple(s.name for s in specs), None
        costs = self.cost_model.expected_costs(specs, context.input_tokens)
        lam = self.reward_config.cost_weight if cost_weight is None else float(cost_weight)
        allowed = None
        if self._pacer is None:
            penalty = lam * costs
        else:
            lam, extra, allowed = self._pacer.adjust(context, specs, costs, cost_weight, self.reward_config.cost_weight)
            penalty = lam * costs + extra
        if self.reward_config.latency_weight:
            penalty = penalty + self.reward_config.latency_weight * self.cost_model.expected_latencies(specs)
        if allowed is not None and not allowed.all():
            specs = [s for s, ok in zip(specs, allowed, strict=True) if ok]
            names = tuple(s.name for s in specs)
            costs, penalty = costs[allowed], penalty[allowed]
        return _Priced(specs, names, arms, costs, lam, penalty)

    def pmf_now(self, context: Context) -> dict[str, float]:
        """The probability `decide` would give each routable model for `context` now, with no `models` or
        `cost_weight` of the request's own (every active model, λ as configured or as the pacer sets it now, the
        cold-start floors), without drawing or booking: the router's own generator and what it learned are untouched
        (a policy that samples draws what a new `default_rng(0)` would, from a generator kept for it, `SeededDraws`)."""
        _check_context(context)
        with self._lock:
            priced = self._price(context, None, None)
            pmf = self.policy.pmf(context, priced.specs, priced.penalty, self._now.fresh())
            return dict(zip(priced.names, self._floored(context, priced, pmf), strict=True))

    def _floored(self, context: Context, priced: _Priced, pmf: np.ndarray) -> list[float]:
        """The policy's `pmf` with the cold-start floors, cleaned (under the lock)."""
        specs, penalty = priced.specs, priced.penalty
        if np.shape(pmf) != (len(specs),):  # a policy's bug, not the caller's: not InvalidInput (a 422)
            raise ValueError(f"policy {self.policy.name!r} gave a pmf of shape {np.shape(pmf)} for {len(specs)} models")
        if self.policy.explores:
            floors = self.policy.cold_start_floors(context, specs, penalty)
            if floors is not None:
                pmf = exploration.with_floors(pmf, floors)
            elif self.cold_start_rounds > 0:
                cold = [self._counts.get(s.name, 0) < self.cold_start_rounds for s in specs]
                pmf = exploration.with_floor(pmf, cold, self.cold_start_floor)
        return _clean(pmf)

    def _choose(self, context: Context, priced: _Priced, pmf: np.ndarray) -> _Choice:
        """The policy's `pmf` with the cold-start floors, cleaned, and one draw from it (under the lock)."""
        p = self._floored(context, priced, pmf)
        arm = _draw(p, self._rng)
        model = priced.names[arm]
        arm_of = self._arm_of(model) if priced.arms is None else priced.arms[model]
        return _Choice(arm, arm_of, p, model, self._version, self.policy.name)

    def _decision(
        self, context: Context, priced: _Priced, made: _Choice, decision_id: str | None, *, book: bool = True
    ) -> Decision:
        arm, arm_of, p, model, version, name = made
        decision = Decision(
            decision_id=decision_id or new_decision_id(),
            model=model,
            arm=arm_of,
            models=priced.names,
            pmf=tuple(p),
            probability=p[arm],
            policy=name,
            policy_version=version,
            cost_weight=priced.lam,
            context=context,
            expected_cost_usd=tuple(priced.costs.tolist()),
            created_at=time.time(),
        )
        if book and self._pacer is not None:
            self._pacer.observe(decision, None)
        return decision

    def _arm_of(self, name: str) -> int:
        for i, spec in enumerate(self._models):
            if spec.name == name:
                return i
        return -1

    # -- learning ---------------------------------------------------------------------------------------
    def outcome_cost(self, decision: Decision, outcome: Outcome) -> float:
        """The realised cost in USD: reported, or tokens × price (estimating what is missing)."""
        return self.cost_model.realised_cost(self.spec(decision.model), outcome, decision.context.input_tokens)

    def reward_of(self, decision: Decision, outcome: Outcome, cost_usd: float | None = None) -> float:
        """quality − λ·cost − μ·latency for this decision's λ, without learning (cost priced when not given)."""
        _check_learned(decision, outcome)
        cost = self.outcome_cost(decision, outcome) if cost_usd is None else cost_usd
        return reward(
            outcome.quality,
            cost,
            outcome.latency_s or 0.0,
            cost_weight=decision.cost_weight,
            latency_weight=self.reward_config.latency_weight,
        )

    def learn(self, decision: Decision, outcome: Outcome) -> float:
        """Learn from one outcome; returns its reward."""
        _check_learned(decision, outcome)
        with self._lock:
            spec = self.spec(decision.model)
            cost = self.cost_model.realised_cost(spec, outcome, decision.context.input_tokens)
            value = self.reward_of(decision, outcome, cost)
            self.cost_model.observe(spec, outcome)
            self.policy.update(decision.context, spec, float(outcome.quality), decision.probability)
            self._counts[spec.name] = self._counts.get(spec.name, 0) + 1
            self._version += 1
        if self._pacer is not None:
            self._pacer.observe(decision, cost, outcome.latency_s)
        return value

    # -- state ------------------------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Everything learned, the model list and the sampler's state, as bytes (no pickle)."""
        with self._lock:
            return pack(self._tree())

    def capture(self) -> Any:
        """`snapshot()`'s tree with its arrays copied (`state.frozen`), taken under the lock: `state.pack` of it gives
        the same bytes, later and on any thread, while this router learns on (checkpoints serialise it so)."""
        with self._lock:
            return frozen(self._tree())

    def _tree(self) -> dict[str, Any]:
        """What `snapshot()` packs (its arrays are the live ones: the caller holds the lock)."""
        tree: dict[str, Any] = {
            "policy_name": self.policy.name,
            "policy_settings": policy_settings(self.policy),
            "policy": self.policy.state(),
            "cost_model": self.cost_model.state(),
            "counts": dict(self._counts),
            "version": self._version,
            "models": [m.to_json() for m in self._models],
            "retired": [m.to_json() for m in self._retired.values()],
            "rng": rng_state(self._rng),
        }
        return tree

    def restore(self, data: bytes) -> None:
        """Load a `snapshot()`, its model list included, into a router whose policy is of the same kind with the
        same settings (however they were given: `linucb:alpha=3` or `make_policy("linucb", alpha=3)`); a snapshot
        taken before snapshots recorded the settings needs the same policy name, as it did then. Anything else, and
        bytes that are not such a snapshot, raise `InvalidInput` and leave the router as it was."""
        if not isinstance(data, bytes | bytearray | memoryview):  # a str: "string argument without an encoding"
            raise InvalidInput(f"restore takes the bytes snapshot() returned, got {type(data).__name__}")
        tree = unpack(bytes(data))
        with self._lock:
            if not isinstance(tree, dict) or "policy_name" not in tree:
                raise InvalidInput("not a router snapshot")
            self._check_policy(str(tree["policy_name"]), tree.get("policy_settings"))
            before = self.snapshot()
            try:
                self._load(tree)
            except Exception as exc:
                self._load(unpack(before))
                if isinstance(exc, BanditRouterError):
                    raise
                raise InvalidInput(f"not a snapshot of a {self.policy.name!r} router: {exc!r}") from exc

    def _check_policy(self, name: str, settings: Any) -> None:
        """`InvalidInput` unless a snapshot of policy `name` with `settings` (None: not recorded, or a policy without
        a params dataclass) fits this router's policy: the same kind and settings, or without settings the same name.
        A setting the snapshot does not record (added since) counts as its default; one this policy no longer has
        (removed since) is not compared: a new version still loads the snapshots and checkpoints of the one before."""
        mine = policy_settings(self.policy)
        if not isinstance(settings, dict) or mine is None:
            if name != self.policy.name:
                raise InvalidInput(f"snapshot is of policy {name!r}, this router runs {self.policy.name!r}")
            return
        kind = name.partition(":")[0]
        if kind != self.policy.name.partition(":")[0]:
            raise InvalidInput(f"snapshot is of policy {name!r}, this router runs {self.policy.name!r}")
        settings = {**{k: v for k, v in setting_defaults(self.policy).items() if k in mine}, **settings}
        differ = sorted(k for k in mine if settings.get(k) != mine[k])
        if differ:
            theirs = ", ".join(f"{k}={settings.get(k)!r}" for k in differ)
            ours = ", ".join(f"{k}={mine.get(k)!r}" for k in differ)
            raise InvalidInput(
                f"snapshot is of policy {kind!r} with {theirs}; this router's {self.policy.name!r} has {ours}: "
                f"build the router with the snapshot's settings (make_policy({kind!r}, {theirs}))"
            )

    def _load(self, tree: dict[str, Any]) -> None:
        """`restore` of an unpacked snapshot (under the lock)."""
        self.policy.load(tree["policy"])
        self.cost_model.load(tree["cost_model"])
        self._counts = {str(k): int(v) for k, v in tree["counts"].items()}
        self._version = int(tree["version"])
        configured = {m.name: m for m in (*self._retired.values(), *self._models)}  # how the catalog calls them now
        self._models = [_called(ModelSpec.from_json(m), configured) for m in tree["models"]]
        self._routable = None
        self._retired = {m["name"]: _called(ModelSpec.from_json(m), configured) for m in tree["retired"]}
        self._rng.bit_generator.state = rng_from_state(tree["rng"])
        self._tell_pacer([*self._models, *self._retired.values()])  # a snapshot may hold models added since

    def weights(self) -> np.ndarray:
        """The policy's learned parameters, flat (to compare two routers)."""
        with self._lock:
            return self.policy.weights()

    def feedback_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def _called(spec: ModelSpec, configured: Mapping[str, ModelSpec]) -> ModelSpec:
    """A restored model with the upstream keys and description the router had for it (`ModelSpec.called_as`): a
    checkpoint keeps what was learned, the catalog says where and how the model is called."""
    mine = configured.get(spec.name)
    return spec if mine is None else spec.called_as(mine)


class _Priced(NamedTuple):
    """What a decision's pmf is computed from (`Router._price`)."""

    specs: Sequence[ModelSpec]
    names: tuple[str, ...]
    arms: dict[str, int] | None
    """Each active model's arm (the routable models of the whole catalog), or None: look it up."""
    costs: np.ndarray
    lam: float
    penalty: np.ndarray


class _Choice(NamedTuple):
    """The draw (`Router._choose`): its index among the allowed models and among the active ones, the pmf."""

    arm: int
    arm_of: int
    pmf: list[float]
    model: str
    version: int
    policy: str


def _check_settings(cold_start_rounds: int, cold_start_floor: float, seed: int | None) -> None:
    """A router's own settings: `InvalidInput` naming the one that is wrong (a NaN floor made every pmf NaN,
    then uniform; a negative seed or a string reached numpy's ValueError or TypeError)."""
    rounds = cold_start_rounds
    if isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral) or rounds < 0:
        raise InvalidInput(f"cold_start_rounds must be an integer >= 0, got {rounds!r}")
    floor = cold_start_floor
    if isinstance(floor, bool) or not isinstance(floor, numbers.Real) or not 0.0 <= float(floor) <= 0.5:
        raise InvalidInput(f"cold_start_floor must be a number in [0, 0.5], got {floor!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise InvalidInput(f"seed must be None or an integer >= 0, got {seed!r}")


def _check_spec(spec: object) -> None:
    """A model name where a `ModelSpec` belongs (`Router(["gpt-4o"])`), or a catalog entry as a dict, is refused
    with what to pass instead."""
    if isinstance(spec, str):
        raise InvalidInput(
            "models must be ModelSpecs (default_catalog(), load_catalog(path) or ModelSpec(...)), "
            f"not the name {spec!r}"
        )
    if not isinstance(spec, ModelSpec):  # a dict got as far as "'dict' object has no attribute 'name'"
        raise InvalidInput(
            "models must be ModelSpecs (default_catalog(), load_catalog(path), ModelSpec(...) or, for a catalog "
            f"entry as a dict, ModelSpec.from_json(entry)), got {type(spec).__name__}"
        )


def _check_policy_argument(policy: object) -> None:
    """A policy spec or an object with the `Policy` methods the router calls; `None` or a number was taken, and the
    first `route` failed with "'NoneType' object has no attribute 'pmf'"."""
    if isinstance(policy, str):
        return
    if not all(callable(getattr(policy, method, None)) for method in ("pmf", "update")):
        raise InvalidInput(f"policy must be a policy spec (\"default\", \"linucb:alpha=0.5\") or a Policy "
                           f"(make_policy(...)), got {type(policy).__name__}")


def _check_context(context: object) -> None:
    """`decide` and `pmf_now` take a featurized request: a `Request` was "'Request' object has no attribute
    'input_tokens'"."""
    if not isinstance(context, Context):
        hint = " (router.featurize(request) makes one; route(request) decides for a Request)" \
            if isinstance(context, Request) else " (router.featurize(request))"
        raise InvalidInput(f"context must be a Context{hint}, got {type(context).__name__}")


def _check_learned(decision: object, outcome: object) -> None:
    """`learn`'s arguments: a decision kept as JSON or an outcome as a dict got an `AttributeError`."""
    if not isinstance(decision, Decision):
        raise InvalidInput(f"decision must be the Decision route() returned (Decision.from_json(data) reads one "
                           f"kept as JSON), got {type(decision).__name__}")
    if not isinstance(outcome, Outcome):
        raise InvalidInput(f"outcome must be an Outcome (Outcome(quality=0.9, ...)), got {type(outcome).__name__}")


class _UnknownNames(Exception):
    """Names a request allows that are not active models, raised under the router's lock; `refusal` is the
    `UnknownModel` the caller gets, worded once the lock is released (its did-you-mean hints compare the name with
    every routable name: about a millisecond on a catalog of thousands, which other decisions would wait for)."""

    def __init__(self, unknown: list[str], routable: list[str]) -> None:
        super().__init__(unknown)
        self.unknown, self.routable = unknown, routable

    def refusal(self) -> UnknownModel:
        return UnknownModel(f"unknown or retired models: {quoted_few(self.unknown, self.routable)}")


def _check_id(decision_id: str | None) -> None:
    if decision_id is not None and not 0 < len(decision_id) <= MAX_DECISION_ID_LENGTH:
        raise InvalidInput(f"decision_id must have 1 to {MAX_DECISION_ID_LENGTH} characters")


def _attempt(call: Callable[..., Decision], *args: Any) -> Decision | Exception:
    """`call(*args)`, or the exception it raised."""
    try:
        return call(*args)
    except Exception as exc:
        return exc


def sample(pmf: np.ndarray, rng: np.random.Generator) -> int:
    """Draw an index from `pmf` with one uniform number (inverse CDF); much faster than `rng.choice`."""
    return _draw(pmf.tolist(), rng)


def _draw(pmf: list[float], rng: np.random.Generator) -> int:
    """`sample` on the pmf as a list of floats."""
    u = rng.random()
    total = 0.0
    last = 0
    for i, p in enumerate(pmf):
        if p > 0:
            total += p
            last = i
            if u < total:
                return i
    return last  # u fell in the rounding gap at the top end


def _clean(pmf: np.ndarray) -> list[float]:
    """Clip rounding noise and renormalise, so the pmf sums to 1 and has no negative entries (a list of floats:
    what the draw and the `Decision` take)."""
    p = [x if x > 0 else 0.0 for x in np.asarray(pmf, dtype=np.float64).tolist()]
    total = sum(p)
    if not math.isfinite(total) or total <= 0:
        return [1.0 / len(p)] * len(p)
    return [x / total for x in p]

