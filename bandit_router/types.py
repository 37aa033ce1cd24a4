"""The values that cross a boundary: `Request` → `Context` → `Decision`, and `Outcome` back.

All are frozen dataclasses. A `Decision` cannot exist without the probability with which its model was
chosen: that number is what makes counterfactual evaluation of other policies possible later.

Why one module: each value is built from the one before (a `Context` from a `Request`, a `Decision` holds its
`Context`), and `Decision.from_json` reads the context's JSON with the same key-naming readers; split, the
readers and the pickling of the read-only mappings (`reduce_frozen`) would be shared across modules that import
each other.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from .errors import InvalidInput

Scalar = str | int | float | bool
"""A value of the caller's context dict."""

_EXACT = 2**53
"""Integers up to this size are exact as floats (the service's context numbers are within it); beyond it a float
names no one integer (the JSON texts 9007199254740993 and 9007199254740993.0 are two numbers in Python)."""


def inexact_tenant(value: Any) -> bool:
    """A float tenant beyond ±2⁵³, which names no one integer: `tenant_of` refuses it (`logged_tenant` reads one a
    log written before holds)."""
    return isinstance(value, float) and abs(value) > _EXACT


def _inexact_problem(value: Any) -> str:
    return (f"tenant {value!r} is a float beyond ±2^53 ({_EXACT}), where a float names no one integer: "
            "send the tenant as an integer or a string")


def tenant_of(value: Any) -> str | None:
    """The tenant a context's `tenant` value names (None: no tenant): a string as it is; a number by its decimal
    text, an integral one without a fraction part, since JSON does not tell 5 from 5.0 (both are tenant "5",
    as 5 always was); a boolean by Python's text ("True"), as stored before. One rule for every reader: the stored
    `tenant` column, the budget pacer's scopes, the judge's calls. A float beyond ±2⁵³ is refused (`InvalidInput`):
    it names no one integer, so 1e17 and 100000000000000000 could not be one tenant."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if inexact_tenant(value):
            raise InvalidInput(_inexact_problem(value))
        if value.is_integer():
            return str(int(value))
    return str(value)


def logged_tenant(value: Any) -> str | None:
    """The tenant a stored context's `tenant` value names: `tenant_of`'s, or for a float beyond ±2⁵³ (which
    `tenant_of` refuses since; a log written before can hold one) its text, the tenant the service read it as then
    and stored in the decision's `tenant` column (1e17: "1e+17"). For every reader of stored decisions: `evaluate`'s
    scope, the budget pacer booking them at a start or from other processes (refused, such a row stopped both)."""
    return str(value) if inexact_tenant(value) else tenant_of(value)


def tenant_named(text: str) -> str:
    """The tenant a written tenant name means (a budget's `@5.0:`, its `[budgets.tenants."5.0"]` table): the text
    as it is, except an integral number within ±2⁵³ written as Python writes a float (`5.0`, `-3.0`,
    `9007199254740992.0`: how such a number's tenant was named before `tenant_of`), which names that number's tenant
    (`5`). Python writes a float from 1e16 on with an exponent (`1e+16`), beyond 2⁵³: such a text stays as it is."""
    if not text[-1:].isdigit() or text[:1] not in "-0123456789":  # "acme": one look, no float()
        return text
    try:
        number = float(text)
    except ValueError:
        return text
    if repr(number) != text or not number.is_integer() or abs(number) > _EXACT:
        return text
    return str(int(number))


@dataclass(frozen=True, slots=True)
class Message:
    """One chat turn."""

    role: str
    content: str


def reduce_frozen(value: Any) -> tuple[Any, tuple[Any, ...]]:
    """`__reduce__` of a frozen dataclass that holds read-only mappings (`MappingProxyType`, which neither pickle nor
    `copy.deepcopy` can copy: "cannot pickle 'mappingproxy' object"): rebuilt by its constructor from its fields,
    each such mapping as a dict, which the constructor checks and makes read-only again."""
    given = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
    return _rebuilt, (type(value), {k: dict(v) if isinstance(v, MappingProxyType) else v for k, v in given.items()})


def _rebuilt(cls: type, fields: dict[str, Any]) -> Any:
    return cls(**fields)


def _context_from(features: Mapping[str, tuple[np.ndarray, np.ndarray]], input_tokens: int, n_chars: int, turns: int,
                  markers: frozenset[str], attributes: dict[str, Scalar], text: str) -> Context:
    """A `Context` unpickled (`Context.__reduce__`), its attributes read-only again."""
    return Context(features, input_tokens, n_chars, turns, markers, MappingProxyType(attributes), text)


def _freeze_context(context: Mapping[str, Scalar] | None) -> Mapping[str, Scalar]:
    if not context:
        return MappingProxyType({})
    if not isinstance(context, Mapping):
        raise InvalidInput(f"context must be a mapping of names to values, got {type(context).__name__}")
    for key, value in context.items():
        if not isinstance(key, str):
            raise InvalidInput(f"context keys must be strings, got {key!r}")
        if not isinstance(value, str | int | float | bool):
            raise InvalidInput(f"context[{key!r}] must be a string, number or boolean")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(f"context[{key!r}] must be finite")
        if key == "tenant" and inexact_tenant(value):
            raise InvalidInput(f"context['tenant']: {_inexact_problem(value)}")  # as `tenant_of` would, sooner
    return MappingProxyType(dict(context))


def _messages(messages: object) -> tuple[Message, ...]:
    """`Request.messages` as `Message`s: each one a `Message` or a mapping with exactly `role` and `content`,
    both strings (anything else is an `InvalidInput` naming `messages[i]`, not a `TypeError` from deeper down)."""
    if isinstance(messages, str | bytes | Mapping | Message) or not isinstance(messages, Iterable):
        raise InvalidInput(f"messages must be a list of messages, got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Message):
            if not isinstance(m, Mapping):
                raise InvalidInput(f"messages[{i}] must be a Message or a mapping with role and content, "
                                   f"got {type(m).__name__}")
            if set(m) != {"role", "content"}:
                raise InvalidInput(f"messages[{i}] must have exactly the keys role and content, "
                                   f"got {sorted(map(str, m))}")
            m = Message(m["role"], m["content"])
        if not (isinstance(m.role, str) and isinstance(m.content, str)):
            raise InvalidInput(f"messages[{i}]: role and content must be strings")
        out.append(m)
    return tuple(out)


@dataclass(frozen=True)
class Request:
    """What the caller asks to route: a prompt or chat messages (exactly one), and optional settings.

    `models` restricts the choice to a subset of the catalog; `cost_weight` (λ) overrides the default trade-off
    for this request only; `decision_id` lets the caller choose the id that feedback will use.
    """

    prompt: str | None = None
    messages: tuple[Message, ...] | None = None
    context: Mapping[str, Scalar] = field(default_factory=dict)
    models: tuple[str, ...] | None = None
    cost_weight: float | None = None
    decision_id: str | None = None

    __reduce__ = reduce_frozen  # picklable and deep-copyable: `context` is read-only

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidInput("give exactly one of prompt or messages")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise InvalidInput(f"prompt must be a string, got {type(self.prompt).__name__}")
        if self.messages is not None:
            msgs = _messages(self.messages)
            if not msgs:
                raise InvalidInput("messages must not be empty")
            object.__setattr__(self, "messages", msgs)
        if self.models is not None:
            if isinstance(self.models, str | bytes):
                raise InvalidInput("models must be a list of model names, not one string")
            object.__setattr__(self, "models", tuple(self.models))
            if not all(isinstance(m, str) for m in self.models):
                raise InvalidInput("models must be a list of model names (strings)")
            if not self.models:
                raise InvalidInput("models must not be empty when given")
        if self.cost_weight is not None:
            try:
                valid = not isinstance(self.cost_weight, bool) and math.isfinite(self.cost_weight) \
                    and self.cost_weight >= 0
            except (TypeError, OverflowError):  # a string, an int too large for a float, …
                valid = False
            if not valid:
                raise InvalidInput("cost_weight must be a finite number >= 0")
        if self.decision_id is not None and not isinstance(self.decision_id, str):
            raise InvalidInput(f"decision_id must be a string, got {type(self.decision_id).__name__}")
        object.__setattr__(self, "context", _freeze_context(self.context))

    @property
    def text(self) -> str:
        """The text the features are computed from: the prompt, or every message's content, in order."""
        if self.prompt is not None:
            return self.prompt
        assert self.messages is not None
        return "\n".join(m.content for m in self.messages)

    @property
    def turns(self) -> int:
        """Number of user turns (1 for a plain prompt)."""
        if self.messages is None:
            return 1
        return max(1, sum(1 for m in self.messages if m.role == "user"))


@dataclass(frozen=True, eq=False, init=False, repr=False)
class Context:
    """A featurized request.

    `features` maps a namespace to hashed sparse features (`indices` uint32, `values` float32, same length).
    The scalar fields are what pricing and rules need; `text` is kept in memory only (never stored unless the
    service is configured with `store_prompts = true`).
    """

    features: Mapping[str, tuple[np.ndarray, np.ndarray]]
    input_tokens: int
    n_chars: int
    turns: int
    markers: frozenset[str]
    attributes: Mapping[str, Scalar]
    text: str = ""
    _flat: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def __init__(
        self,
        features: Mapping[str, tuple[np.ndarray, np.ndarray]],
        input_tokens: int,
        n_chars: int,
        turns: int,
        markers: frozenset[str],
        attributes: Mapping[str, Scalar],
        text: str = "",
    ) -> None:
        # The dataclass's own __init__, as one update of the instance's dict instead of one `object.__setattr__` per
        # field (what a frozen dataclass does): a featurized request is made on every route.
        self.__dict__.update(
            features=features,
            input_tokens=input_tokens,
            n_chars=n_chars,
            turns=turns,
            markers=markers,
            attributes=attributes,
            text=text,
            _flat=None,
        )

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled and deep-copied (a process pool, `copy.deepcopy(decision)`) without its read-only attributes'
        `MappingProxyType`, which neither can copy."""
        return _context_from, (dict(self.features), self.input_tokens, self.n_chars, self.turns, self.markers,
                               dict(self.attributes), self.text)

    def __repr__(self) -> str:
        """The sizes, not the contents: the dataclass's own repr held the whole prompt and every hashed feature (a
        100 KB prompt's `Decision` printed 101 KB, the prompt in full, into a log line or a traceback)."""
        counts = ", ".join(f"{ns!r}: {len(pair[0])}" for ns, pair in self.features.items())
        return (f"Context(features={{{counts}}}, input_tokens={self.input_tokens}, n_chars={self.n_chars}, "
                f"turns={self.turns}, markers={sorted(self.markers)}, attributes={dict(self.attributes)!r:.200}, "
                f"text=<{len(self.text)} characters>)")

    @property
    def flat(self) -> tuple[np.ndarray, np.ndarray]:
        """Every namespace's features in one pair (indices as uint64, values as float32), computed once."""
        if self._flat is None:
            parts = [p for p in self.features.values() if len(p[0])]
            if not parts:
                flat = np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.float32)
            else:
                flat = (
                    np.concatenate([p[0] for p in parts]).astype(np.uint64),
                    np.concatenate([p[1] for p in parts]).astype(np.float32),
                )
            object.__setattr__(self, "_flat", flat)
        return self._flat  # type: ignore[return-value]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form that `from_json` turns back into an equal context (without the text)."""
        return {
            "features": {ns: [idx.tolist(), [float(v) for v in val]] for ns, (idx, val) in self.features.items()},
            "input_tokens": self.input_tokens,
            "n_chars": self.n_chars,
            "turns": self.turns,
            "markers": sorted(self.markers),
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], text: str = "") -> Context:
        """The context `to_json` made; `InvalidInput` for features that are not (indices, values) pairs of one
        length, of numbers (not strings), indices whole numbers in [0, 2³²) (`5.0` is 5, `1.7` is refused)."""
        features = {}
        for ns, pair in data["features"].items():
            if not isinstance(pair, list | tuple) or len(pair) != 2:  # `[[1, 2]]` was an IndexError
                raise InvalidInput(f"features {ns!r} must be a pair of lists of one length: indices and values")
            raw, values = np.asarray(pair[0]), np.asarray(pair[1])
            if raw.ndim != 1 or raw.shape != values.shape:
                raise InvalidInput(f"features {ns!r} must be a pair of lists of one length: indices and values")
            if raw.size and (raw.dtype.kind not in "iuf" or values.dtype.kind not in "iuf"):  # "0.5" was 0.5
                raise InvalidInput(f"features {ns!r} must be lists of numbers, indices in [0, 2^32)")
            if raw.dtype.kind == "f" and not np.all(np.trunc(raw) == raw):  # 1.7 was index 1
                raise InvalidInput(f"features {ns!r}: indices must be whole numbers")
            if raw.size and (raw.min() < 0 or raw.max() >= 2**32):
                raise InvalidInput(f"features {ns!r}: indices must be in [0, 2^32)")
            features[ns] = (raw.astype(np.uint32), values.astype(np.float32))
        return cls(
            features=features,
            input_tokens=_read_key(data, "input_tokens", _integer, "an integer"),  # not `int()`: 1.7 was 1
            n_chars=_read_key(data, "n_chars", _integer, "an integer"),
            turns=_read_key(data, "turns", _integer, "an integer"),
            markers=_read_key(data, "markers", lambda v: frozenset(_text(m) for m in _listed(v)),  # not letters
                              "a list of strings"),
            attributes=_freeze_context(data.get("attributes")),  # a request's context: scalars by name
            text=text,
        )

    def same_features(self, other: Context) -> bool:
        """True when both contexts carry the same hashed features (what learning sees)."""
        if self.features.keys() != other.features.keys():
            return False
        return all(
            np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
            for a, b in ((self.features[k], other.features[k]) for k in self.features)
        )


@dataclass(frozen=True, eq=False, init=False)
class Decision:
    """The router's answer: the chosen model, its arm index, and the pmf it was sampled from.

    `pmf[i]` is the probability of `models[i]`; `probability == pmf[models.index(model)]` always.
    `expected_cost_usd` is the router's cost estimate per allowed model when it decided (for pacing and audit).
    """

    decision_id: str
    model: str
    arm: int
    models: tuple[str, ...]
    pmf: tuple[float, ...]
    probability: float
    policy: str
    policy_version: int
    cost_weight: float
    context: Context
    expected_cost_usd: tuple[float, ...] = ()
    created_at: float = 0.0

    def __init__(
        self,
        decision_id: str,
        model: str,
        arm: int,
        models: tuple[str, ...],
        pmf: tuple[float, ...],
        probability: float,
        policy: str,
        policy_version: int,
        cost_weight: float,
        context: Context,
        expected_cost_usd: tuple[float, ...] = (),
        created_at: float = 0.0,
    ) -> None:
        # The dataclass's own __init__ (then the same checks), as one update of the instance's dict instead of one
        # `object.__setattr__` per field (what a frozen dataclass does): ≈ 1 µs of every route.
        self.__dict__.update(
            decision_id=decision_id,
            model=model,
            arm=arm,
            models=models,
            pmf=pmf,
            probability=probability,
            policy=policy,
            policy_version=policy_version,
            cost_weight=cost_weight,
            context=context,
            expected_cost_usd=expected_cost_usd,
            created_at=created_at,
        )
        self.__post_init__()

    def __post_init__(self) -> None:
        # ValueError, not InvalidInput: the router and the gateway build decisions, so a failure here is their bug
        # (a 500), not the caller's; `from_json`, which reads a caller's data, turns it into InvalidInput.
        if len(self.models) != len(self.pmf):
            raise ValueError("pmf and models differ in length")
        if self.model not in self.models:
            raise ValueError(f"chosen model {self.model!r} is not among the allowed models")
        if abs(self.pmf[self.models.index(self.model)] - self.probability) > 1e-12:
            raise ValueError("probability must equal the pmf entry of the chosen model")
        if not 0.0 < self.probability <= 1.0:
            raise ValueError("probability must be in (0, 1]")

    @property
    def probabilities(self) -> dict[str, float]:
        """The pmf as model → probability."""
        return dict(zip(self.models, self.pmf, strict=True))

    def to_json(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "model": self.model,
            "arm": self.arm,
            "models": list(self.models),
            "pmf": list(self.pmf),
            "probability": self.probability,
            "policy": self.policy,
            "policy_version": self.policy_version,
            "cost_weight": self.cost_weight,
            "context": self.context.to_json(),
            "expected_cost_usd": list(self.expected_cost_usd),
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        """The decision `to_json` made (its context without the text); `InvalidInput` for anything else, saying
        which key is missing or wrong ("not a decision: missing key 'pmf'", "… arm must be an integer, got float
        1.7")."""
        if not isinstance(data, Mapping):
            raise InvalidInput(f"not a decision: expected the JSON object Decision.to_json() gives, got "
                               f"{type(data).__name__}")
        _check_keys(data, DECISION_KEYS, "")
        if not isinstance(data["context"], Mapping):
            raise InvalidInput(f"not a decision: context must be the JSON object Context.to_json() gives, got "
                               f"{type(data['context']).__name__}")
        _check_keys(data["context"], CONTEXT_KEYS, "context: ")
        try:
            return cls._from_json(data)
        except InvalidInput:
            raise
        except (TypeError, ValueError, OverflowError) as exc:  # Decision's own checks: pmf, model, probability
            raise InvalidInput(f"not a decision: {exc}") from None

    @classmethod
    def _from_json(cls, data: Mapping[str, Any]) -> Decision:
        models = _read(data, "models", lambda v: tuple(_text(m) for m in _listed(v)), "a list of model names")
        pmf = _read(data, "pmf", lambda v: tuple(_number(p) for p in _listed(v)), "a list of numbers")
        if not all(0.0 <= p <= 1.0 for p in pmf):  # NaN fails too
            raise InvalidInput("not a decision: every pmf entry must be in [0, 1]")
        cost_weight = _read(data, "cost_weight", _number, "a number")
        if not 0.0 <= cost_weight < math.inf:
            raise InvalidInput("not a decision: cost_weight must be a finite number >= 0")
        expected = _read(data, "expected_cost_usd", lambda v: tuple(_number(c) for c in _listed(v)),
                         "a list of numbers", ())
        if expected and (len(expected) != len(models) or not all(0.0 <= c < math.inf for c in expected)):
            raise InvalidInput("not a decision: expected_cost_usd must hold one finite number >= 0 per model of "
                               "models")
        created_at = _read(data, "created_at", _number, "a number", 0.0)
        if not math.isfinite(created_at):
            raise InvalidInput("not a decision: created_at must be a finite number (Unix time)")
        return cls(
            decision_id=_read(data, "decision_id", _text, "a string"),
            model=_read(data, "model", _text, "a model name"),
            arm=_read(data, "arm", _integer, "an integer"),
            models=models,
            pmf=pmf,
            probability=_read(data, "probability", _number, "a number"),
            policy=_read(data, "policy", _text, "a string"),
            policy_version=_read(data, "policy_version", _integer, "an integer"),
            cost_weight=cost_weight,
            context=_read(data, "context", Context.from_json, "the JSON object Context.to_json() gives"),
            expected_cost_usd=expected,
            created_at=created_at,
        )


DECISION_KEYS = ("decision_id", "model", "arm", "models", "pmf", "probability", "policy", "policy_version",
                 "cost_weight", "context")
"""The keys `Decision.from_json` needs (`expected_cost_usd` and `created_at` may be left out)."""
CONTEXT_KEYS = ("features", "input_tokens", "n_chars", "turns", "markers")
"""The keys `Context.from_json` needs (`attributes` may be left out)."""


def _check_keys(data: Mapping[str, Any], keys: Iterable[str], where: str) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise InvalidInput(f"not a decision: {where}missing key{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(map(repr, missing))}")


def _read_key(data: Mapping[str, Any], key: str, convert: Any, what: str) -> Any:
    """`convert(data[key])`, else `InvalidInput` saying what `key` must be."""
    value = data[key]
    try:
        return convert(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{key} must be {what}, got {type(value).__name__} {value!r:.60}") from exc


def _read(data: Mapping[str, Any], key: str, convert: Any, what: str, default: Any = None) -> Any:
    """`convert(data[key])` (`default` when the key is left out); `InvalidInput` naming the key otherwise."""
    if default is not None and key not in data:
        return default
    value = data[key]
    try:
        return convert(value)
    except InvalidInput as exc:
        raise InvalidInput(f"not a decision: {key}: {str(exc).removeprefix('not a decision: ')}") from None
    except (TypeError, ValueError, OverflowError, KeyError, AttributeError) as exc:
        detail = f" ({exc})" if key == "context" else ""
        raise InvalidInput(f"not a decision: {key} must be {what}, got {type(value).__name__} {value!r:.60}"
                           f"{detail}") from None


def _listed(value: Any) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple):  # a string would be read letter by letter
        raise TypeError("not a list")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _integer(value: Any) -> int:
    """An integer, or a float that is one (`3.0`, what a JSON tool that keeps numbers as floats writes, as an
    `Outcome`'s token counts are read); not `1.7`, which `int()` made 1, nor a boolean or a string."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral | bool) \
            and float(value).is_integer():
        return int(float(value))
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError("not an integer")
    return int(value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # `float("1")` would take a string
        raise TypeError("not a number")
    return float(value)


def _check_non_negative(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{name} must be a number")
    if not _finite(value) or value < 0:
        raise InvalidInput(f"{name} must be a finite number >= 0")


def _finite(value: float) -> bool:
    """`math.isfinite`, False for an int too large for a float (where it raises OverflowError)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


@dataclass(frozen=True, slots=True)
class Outcome:
    """What feedback reports about one decision. Only `quality` is required.

    `cost_usd` missing → computed from the tokens and the catalog's prices (or estimated).
    """

    quality: float
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_s: float | None = None

    def __post_init__(self) -> None:
        q = self.quality
        if isinstance(q, bool) or not isinstance(q, int | float) or not _finite(q) or not 0.0 <= q <= 1.0:
            raise InvalidInput("quality must be a finite number in [0, 1]")
        _check_non_negative("cost_usd", self.cost_usd)
        for name in ("input_tokens", "output_tokens"):
            tokens = getattr(self, name)
            _check_non_negative(name, tokens)
            if isinstance(tokens, float) and not tokens.is_integer():  # 143.0 is 143, as in the service's JSON
                raise InvalidInput(f"{name} must be a whole number >= 0, got {tokens!r}")
        _check_non_negative("latency_s", self.latency_s)
