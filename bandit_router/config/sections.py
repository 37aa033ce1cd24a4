"""The settings' sections: one frozen dataclass per idea, each field with its default and its help text.

The help text is what `bandit-router serve --help`, `describe_keys()` and the docs' configuration page show.
A section checks its own fields when it is built (cheap: no file is read, no policy is built); `Settings.check()`
does the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np

from ..catalog import ModelSpec
from ..errors import ConfigError
from ..hints import quoted
from ..reward import MAX_COST_WEIGHT
from ..store.location import Database, parse_database

SYNCHRONOUS = ("normal", "full", "extra")
AGGREGATIONS = ("reject", "earliest", "average")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
MIN_KEY_LENGTH = 16


def setting(default: Any = None, *, help: str, lower: bool = False, factory: Any = None) -> Any:
    """A settings field: its default, its help text, and whether its value is lower-cased when read."""
    metadata = {"help": help, "lower": lower}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _check(ok: bool, name: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {problem}")


def check_types(section: Any) -> None:
    """Each field of `section` has its annotated type, else `ConfigError` naming the key and what it takes: a
    section built in Python (`Settings(port="9000")`) got no further than a `TypeError` of its first comparison
    (`'<=' not supported between instances of 'int' and 'str'`), or was accepted and failed later. Any iterable but
    a string or a mapping is taken for a tuple (a list, a `Catalog`, a set) and a string for a path (both
    converted); an integer for a float, numpy's numbers and booleans as Python's."""
    cls: type = type(section)
    for name, hint in _hints(cls).items():
        given = value = getattr(section, name)
        if get_origin(hint) is tuple and isinstance(value, Iterable) \
                and not isinstance(value, str | bytes | Mapping | tuple | list):
            value = tuple(value)  # a `Catalog`, a generator, a set of hosts: their items, as before the check
        ok, converted = _typed(value, hint)
        if not ok:
            bad = value
            if isinstance(value, tuple | list) and get_origin(hint) is tuple:  # name the item that is not
                bad = next(v for v in value if not _typed(v, get_args(hint)[0])[0])
            shown = type(bad).__name__ if hint is Secrets else f"{type(bad).__name__} {bad!r:.80}"  # keys unshown
            shown += " in the list" if bad is not value else ""
            raise ConfigError(f"{name}: must be {_described(hint)}, got {shown}")
        if converted is not given:
            object.__setattr__(section, name, converted)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _members(hint: Any) -> tuple[Any, ...]:
    return get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)


def _typed(value: Any, hint: Any) -> tuple[bool, Any]:
    """(whether `value` is of type `hint`, `value` converted: a list to a tuple, a string to a `Path`)."""
    for member in _members(hint):
        origin = get_origin(member)
        if member is Any or (member is type(None) and value is None):
            return True, value
        if member is bool and isinstance(value, bool | np.bool_):
            return True, bool(value)  # numpy's booleans too
        if member is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return True, int(value)  # numpy's integers too
        if member is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
            try:
                return True, float(value)  # an integer too large for a float was an OverflowError of `isfinite`
            except OverflowError:
                continue
        if member is str and isinstance(value, str):
            return True, value
        if member is Path and isinstance(value, str | os.PathLike):
            only_path = all(m in (Path, type(None)) for m in _members(hint))  # `db` reads a URL from a string
            return True, value if isinstance(value, Path) or not only_path else Path(value)
        if origin is tuple and isinstance(value, tuple | list):
            item = get_args(member)[0]
            if all(_typed(v, item)[0] for v in value):
                return True, tuple(value)
        if origin is not None and isinstance(origin, type) and origin is not tuple and isinstance(value, origin):
            return True, value
        if origin is None and isinstance(member, type) and member not in (bool, int, float, str, Path) \
                and isinstance(value, member):
            return True, value
    return False, value


def _described(hint: Any) -> str:
    """What a field of type `hint` takes, in words: "an integer", "a list of ModelSpec or None"."""
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path",
             type(None): "None"}
    said = []
    for member in _members(hint):
        origin = get_origin(member)
        if member in words:
            said.append(words[member])
        elif origin is tuple:
            said.append(f"a list of {_described(get_args(member)[0]).removeprefix('a ').removeprefix('an ')}s")
        elif origin is not None:
            said.append(f"a {getattr(origin, '__name__', str(origin))}")
        else:
            said.append(getattr(member, "__name__", str(member)))
    return " or ".join(said)


class Secrets:
    """A set of API keys. Never printed: `repr` and `str` show only how many keys there are."""

    __slots__ = ("_keys",)

    def __init__(self, keys: tuple[str, ...] = ()) -> None:
        self._keys = tuple(keys)

    def reveal(self) -> tuple[str, ...]:
        """The keys themselves (for the authenticator only)."""
        return self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secrets) and set(self._keys) == set(other._keys)

    def __hash__(self) -> int:
        return hash(len(self._keys))

    def __repr__(self) -> str:
        return f"Secrets(<{len(self._keys)} keys>)"

    __str__ = __repr__


@dataclass(frozen=True)
class ServerSettings:
    """The HTTP server."""

    host: str = setting("127.0.0.1", help="address to bind; keep 127.0.0.1 unless API keys are set and a proxy "
                        "terminates TLS")
    port: int = setting(8000, help="TCP port")
    workers: int = setting(1, help="server processes sharing the database (each follows the feedback log)")
    worker_healthcheck_s: int = setting(30, help="with workers > 1: seconds a worker may leave uvicorn's "
                                          "health check unanswered before it is killed as hung and another started "
                                          "(uvicorn's own 5 s killed workers as they started on a busy machine)")
    log_level: str = setting("info", help="critical, error, warning, info or debug", lower=True)
    access_log: bool = setting(False, help="log every request line (costs about a third of a cheap endpoint's "
                               "throughput)")
    opentelemetry: bool = setting(False, help="let FastAPI's OpenTelemetry instrumentation report to the global "
                                  "providers")
    allowed_hosts: tuple[str, ...] = setting((), help="Host header names accepted besides loopback ones when bound "
                                             "to a loopback address (421 otherwise), e.g. [\"router.internal\", "
                                             "\"*.example.com\"], or [\"*\"] for any; environment: a JSON list")
    timeout_keep_alive_s: float = setting(8.0, help="seconds an idle keep-alive connection stays open after a "
                                          "reply: longer than httpx's 5 s (the OpenAI SDK's client), so that such a "
                                          "client drops it first rather than sending on a connection being closed")
    header_timeout_s: float = setting(10.0, help="seconds a connection has to send a complete request line and "
                                      "headers (from its opening or its previous reply); then it is closed")
    body_timeout_s: float = setting(30.0, help="seconds a request has to send its whole body once its headers are "
                                    "in; then the connection is closed")
    write_timeout_s: float = setting(30.0, help="seconds a full send buffer may go without the client reading any "
                                     "of it; then the connection is closed (a client that keeps reading, slowly or "
                                     "not, keeps it)")
    max_connections: int = setting(1000, help="open connections per process; one more gets 503 and is closed")
    metrics_dir: Path | None = setting(help="folder where the workers of `workers` > 1 write their metrics files "
                                       "(a folder per start inside it; default /dev/shm, else the temporary "
                                       "directory); a start needs a few MiB free there")
    max_header_bytes: int = setting(65_536, help="bytes a request line and its headers may take; more get 431 and "
                                    "the connection is closed")

    def __post_init__(self) -> None:
        check_types(self)
        _check(bool(self.host) and " " not in self.host, "host", "must be a host name or address")
        for name in ("timeout_keep_alive_s", "header_timeout_s", "body_timeout_s", "write_timeout_s"):
            value = getattr(self, name)
            _check(math.isfinite(value) and 0 < value <= 3600, name, f"must be in (0, 3600] seconds, got {value}")
        _check(1 <= self.worker_healthcheck_s <= 3600, "worker_healthcheck_s", "must be in 1..3600 seconds")
        _check(1 <= self.max_connections <= 1_000_000, "max_connections", "must be in 1..1000000")
        _check(1024 <= self.max_header_bytes <= 16_777_216, "max_header_bytes", "must be in 1024..16777216")
        for host in self.allowed_hosts:
            _check(isinstance(host, str) and bool(host) and host.isascii() and " " not in host and "/" not in host,
                   "allowed_hosts", f"must be host names, got {host!r}")
        _check(1 <= self.port <= 65535, "port", f"must be in 1..65535, got {self.port}")
        _check(1 <= self.workers <= 64, "workers", f"must be in 1..64, got {self.workers}")
        _check(self.log_level in LOG_LEVELS, "log_level",
               f"unknown {quoted([self.log_level], LOG_LEVELS)}; one of {', '.join(LOG_LEVELS)}")


@dataclass(frozen=True)
class StorageSettings:
    """The database and the checkpoints of the learned state."""

    db: Database = setting(Path("bandit-router.db"), help="SQLite database file (created on first start, in a "
                           "directory that must exist), or a PostgreSQL URL "
                           "postgresql://user:password@host:port/dbname shared by every replica")
    synchronous: str = setting("normal", help="SQLite synchronous: normal (survives an application crash) or "
                               "full/extra (also power loss)", lower=True)
    store_prompts: bool = setting(False, help="store the prompt text with each decision (the hashed features "
                                  "always are)")
    checkpoint_interval: int = setting(1000, help="learned feedbacks between two checkpoints of the learned state")
    checkpoints_kept: int = setting(3, help="how many checkpoints to keep")
    wal_max_bytes: int = setting(64 * 1024 * 1024, help="the writer restarts the SQLite WAL before it grows past this "
                                 "size (0: never; SQLite's passive checkpoints alone let it grow without bound)")
    retention_days: float | None = setting(help="delete decisions and feedback older than this many days once the "
                                           "checkpoints hold them (unset: keep everything; see Durability)")

    def __post_init__(self) -> None:
        check_types(self)
        if isinstance(self.db, str):  # `Settings(db="postgresql://…")`
            try:
                object.__setattr__(self, "db", parse_database(self.db))
            except ValueError as exc:
                raise ConfigError(f"db: {exc}") from None
        _check(str(self.db) != ":memory:", "db", "':memory:' is SQLite's in-memory database, which each connection "
               "sees empty and which is lost at exit; give a database file (or a postgresql:// URL)")
        _check(self.wal_max_bytes >= 0, "wal_max_bytes", "must be >= 0 (0: never restart the WAL)")
        if self.retention_days is not None:
            _check(math.isfinite(self.retention_days) and self.retention_days > 0, "retention_days",
                   "must be > 0 days")
        _check(self.synchronous in SYNCHRONOUS, "synchronous", f"must be one of {', '.join(SYNCHRONOUS)}")
        _check(self.checkpoint_interval >= 1, "checkpoint_interval", "must be >= 1")
        _check(self.checkpoints_kept >= 1, "checkpoints_kept", "must be >= 1")


@dataclass(frozen=True)
class RoutingSettings:
    """The catalog, the policy and the reward's weights."""

    catalog: Path | None = setting(help="model catalog TOML file (default: the catalog shipped with the package)")
    models: tuple[ModelSpec, ...] = setting((), help="inline catalog: [[models]] tables (instead of `catalog`)")
    policy: str = setting("default", help="policy spec, e.g. default, vw-squarecb or linucb:alpha=0.5 "
                          "(`bandit-router policies`)")
    policy_settings: Mapping[str, Any] = setting(factory=dict, help="the policy's settings, e.g. {floor = 0.05} for "
                                                 "`default`, {gamma_scale = 20} for vw-squarecb "
                                                 "(`bandit-router policies` lists each one's)")
    shadow_policies: tuple[str, ...] = setting((), help="policy specs run next to the live one (they learn, their "
                                               "pmfs are logged, they never choose), e.g. [\"linucb:alpha=0.5\"]; "
                                               "environment: a JSON list")
    seed: int | None = setting(help="seed of the router's sampler (random when unset)")
    cold_start_rounds: int = setting(20, help="feedbacks before a model loses its exploration floor (policies "
                                     "other than `default`, which sizes the floor by uncertainty)")
    cost_weight: float = setting(20.0, help="default λ: quality points worth 1 USD, at most 1e9 (a request may "
                                 "override it)")
    latency_weight: float = setting(0.0, help="μ: quality points per second of latency, at most 1e9")
    folders: Mapping[str, Path] = field(default_factory=dict, metadata={"internal": True})
    """Not a key: where a file named by a relative path in `policy`, `policy_settings` or `shadow_policies` (a
    rules file, a supervised table) is read from, by key: the configuration file's folder for a key written in it
    (set by the loader); the working directory for the others."""

    def __post_init__(self) -> None:
        check_types(self)
        _check(not (self.catalog is not None and self.models), "catalog",
               "give either `catalog` or [[models]], not both")
        for name in ("cost_weight", "latency_weight"):
            value = getattr(self, name)
            _check(math.isfinite(value) and 0 <= value <= MAX_COST_WEIGHT, name,
                   f"must be a finite number in [0, 1e9] (as a request's cost_weight), got {value:g}")
        _check(self.cold_start_rounds >= 0, "cold_start_rounds", "must be >= 0")
        if self.seed is not None:
            _check(0 <= self.seed < 2**63, "seed", "must be a non-negative integer")
        shadows = self.shadow_policies
        _check(len(set(shadows)) == len(shadows), "shadow_policies", "names a policy twice")
        _check(self.policy not in shadows, "shadow_policies", f"{self.policy!r} is already the live policy")
        for spec in shadows:
            _check(isinstance(spec, str) and bool(spec), "shadow_policies", f"must be policy specs, got {spec!r}")


@dataclass(frozen=True)
class FeedbackSettings:
    """What the service does with feedback: reward windows and a second feedback for one decision."""

    reward_window_s: float | None = setting(help="seconds after a decision during which its feedback is learned")
    default_reward: float | None = setting(help="quality learned for a decision without feedback when its window "
                                           "closes")
    aggregation: str = setting("reject", help="a second, different feedback: reject (409), earliest (kept, not "
                               "learned) or average (learned as the mean when the window closes)", lower=True)

    def __post_init__(self) -> None:
        check_types(self)
        if self.reward_window_s is not None:
            _check(math.isfinite(self.reward_window_s) and self.reward_window_s > 0, "reward_window_s", "must be > 0")
        if self.default_reward is not None:
            _check(self.reward_window_s is not None, "default_reward", "needs reward_window_s (when does it apply?)")
            _check(0.0 <= self.default_reward <= 1.0, "default_reward", "is a quality: must be in [0, 1]")
        _check(self.aggregation in AGGREGATIONS, "aggregation", f"must be one of {', '.join(AGGREGATIONS)}")
        if self.aggregation == "average":
            _check(self.reward_window_s is not None, "aggregation", "average needs reward_window_s")


@dataclass(frozen=True)
class LimitsSettings:
    """Sizes beyond which a request is refused with 413."""

    max_body_bytes: int = setting(1_048_576, help="largest request body (413 beyond)")
    max_prompt_chars: int = setting(200_000, help="largest prompt or sum of message contents, in characters "
                                    "(413 beyond)")
    max_models: int = setting(128, help="most active models (the catalog, and POST /v1/models: 409 beyond)")

    def __post_init__(self) -> None:
        check_types(self)
        _check(1 <= self.max_models <= 100_000, "max_models", "must be in 1..100000")
        _check(self.max_body_bytes >= 1024, "max_body_bytes", "must be >= 1024")
        _check(self.max_prompt_chars >= 1, "max_prompt_chars", "must be >= 1")


@dataclass(frozen=True)
class AuthSettings:
    """API keys. The keys themselves never live in the file: `BANDIT_ROUTER_API_KEYS` / `BANDIT_ROUTER_ADMIN_KEYS`
    (comma-separated) or the key files."""

    api_keys_file: Path | None = setting(help="file with client API keys, one per line")
    admin_keys_file: Path | None = setting(help="file with admin API keys (model changes), one per line")
    api_keys: Secrets = setting(factory=Secrets, help="client API keys (environment only)")
    admin_keys: Secrets = setting(factory=Secrets, help="admin API keys (environment only)")

    def __post_init__(self) -> None:
        check_types(self)
        for keys, name in ((self.api_keys, "api_keys"), (self.admin_keys, "admin_keys")):
            for key in keys.reveal():
                _check(len(key) >= MIN_KEY_LENGTH, name, f"every key needs at least {MIN_KEY_LENGTH} characters")
                _check(key.isascii() and key.isprintable() and " " not in key, name,
                       "keys must be printable ASCII without spaces")

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys) or bool(self.admin_keys)


@dataclass(frozen=True)
class GatewaySettings:
    """The OpenAI-compatible gateway (`POST /v1/chat/completions`): where models are called, tries, limits."""

    router_alias: str = setting("router", help="the `model` value that means \"route it\" (any catalog name means "
                                "\"send it there\")")
    default_base_url: str | None = setting(help="OpenAI-compatible base URL for catalog models without their own "
                                           "`base_url`")
    default_api_key_env: str | None = setting(help="environment variable holding the key for `default_base_url`")
    max_attempts: int = setting(3, help="models tried per request: the first choice and up to N-1 fallbacks")
    deadline_s: float = setting(120.0, help="seconds a request may take over all its tries (504 beyond)")
    upstream_timeout_s: float = setting(60.0, help="seconds one upstream call may take, or wait between two "
                                        "streamed chunks (a model's `timeout_s` overrides)")
    upstream_connect_timeout_s: float = setting(5.0, help="seconds to connect to an upstream (a model's "
                                                "`connect_timeout_s` overrides)")
    upstream_max_concurrency: int = setting(64, help="concurrent calls per model (a model's `max_concurrency` "
                                            "overrides); more wait for a slot within the deadline")
    max_upstream_response_bytes: int = setting(8 * 1024 * 1024, help="largest upstream reply, or streamed "
                                               "reply in total (a larger one is that model's failure)")
    failure_quality: float = setting(0.0, help="quality learned for a model whose call failed (timeout, "
                                     "connection error, 5xx): the worst answer, since the caller got none")

    def __post_init__(self) -> None:
        check_types(self)
        from ..catalog import ModelSpec  # the same checks as a catalog entry's upstream keys

        _check(bool(self.router_alias) and len(self.router_alias) <= 128 and self.router_alias.isprintable(),
               "router_alias", "must be 1 to 128 printable characters")
        try:
            ModelSpec("x", 0.0, 0.0, base_url=self.default_base_url, api_key_env=self.default_api_key_env)
        except Exception as exc:
            raise ConfigError(f"default_base_url / default_api_key_env: {str(exc).split(': ', 1)[-1]}") from None
        _check(1 <= self.max_attempts <= 16, "max_attempts", "must be in 1..16")
        for name in ("deadline_s", "upstream_timeout_s", "upstream_connect_timeout_s"):
            value = getattr(self, name)
            _check(math.isfinite(value) and value > 0, name, "must be a finite number > 0")
        _check(self.upstream_max_concurrency >= 1, "upstream_max_concurrency", "must be >= 1")
        _check(self.max_upstream_response_bytes >= 1024, "max_upstream_response_bytes", "must be >= 1024")
        _check(0.0 <= self.failure_quality <= 1.0, "failure_quality", "is a quality: must be in [0, 1]")


DEFAULT_RUBRIC = (
    "You grade an assistant's answer. Reply with one number from 0 to 10 and nothing else: 10 for a correct, "
    "complete and helpful answer, 0 for a wrong or useless one."
)


@dataclass(frozen=True)
class JudgeSettings:
    """Feedback without a human: a catalog model scores a sample of the gateway's answers off the request path."""

    judge_model: str | None = setting(help="catalog model that scores answers (unset: no judge)")
    judge_rubric: str = setting(DEFAULT_RUBRIC, help="the judge's system prompt; its reply's first number, "
                                "divided by `judge_scale`, is the quality")
    judge_scale: float = setting(10.0, help="the largest score the rubric asks for (quality = score / scale)")
    judge_sample_rate: float = setting(0.0, help="share of routed answers the judge scores (0..1)")
    judge_queue: int = setting(1000, help="answers waiting for the judge at most (more are not judged: counted "
                                          "as dropped)")
    judge_delay_s: float = setting(0.0, help="seconds after the reply before the judge is asked: a decision with "
                                   "stored feedback by then, the caller's or a closed reward window's "
                                   "default_reward, is not judged (but under aggregation = average); a score "
                                   "after reward_window_s is stored late, never learned")
    judge_concurrency: int = setting(4, help="judge calls in flight at most")

    def __post_init__(self) -> None:
        check_types(self)
        _check(0.0 <= self.judge_sample_rate <= 1.0, "judge_sample_rate", "must be in [0, 1]")
        _check(math.isfinite(self.judge_scale) and self.judge_scale > 0, "judge_scale", "must be > 0")
        _check(1 <= self.judge_queue <= 1_000_000, "judge_queue", "must be in 1..1000000")
        _check(math.isfinite(self.judge_delay_s) and self.judge_delay_s >= 0, "judge_delay_s", "must be >= 0")
        _check(1 <= self.judge_concurrency <= 256, "judge_concurrency", "must be in 1..256")
        _check(bool(self.judge_rubric.strip()), "judge_rubric", "must not be empty")
        if self.judge_sample_rate > 0:
            _check(self.judge_model is not None, "judge_sample_rate", "needs judge_model")
