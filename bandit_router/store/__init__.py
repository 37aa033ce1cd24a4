"""The durable log of the service: decisions, feedback, the gateway's calls, model changes and checkpoints of the
learned state.

    records.py     the typed values that cross the interface, `FeedbackStatus`, `StoreStats`, `StoreError`
    interface.py   `Store`, `Reader`, `WriteTx`: what any database must implement
    codec.py       features ⇄ bytes, JSON columns, text SQLite can hold
    migrations.py  the schema as one numbered list of migrations, for both backends
    rollup.py      the per-minute rollup (`minute_stats`) kept in the write transaction, for time series
    router_stats.py  named routers' counts (`router_stats`) kept in the write transaction, for `/v1/stats`
    sqlite.py      `SQLiteStore`, the embedded implementation
    postgres.py    `PostgresStore`, for replicas sharing one PostgreSQL database (imported when used)
    location.py    `db`: a path (SQLite) or a `postgresql://` URL (`DatabaseURL`, shown without its password)
    serverlock.py  one `bandit-router serve` per SQLite file (`ServerLock`: an `flock` beside the database)

The log, feedback rows with `learn = 1` in `seq` order interleaved with model events (an event goes after every
row with `seq <= after_seq`), is the source of truth: a checkpoint plus the log after it rebuilds the policy
(`bandit_router.log`).
"""

from .codec import decode_features, encode_features, safe_text
from .interface import Reader, Store, WriteTx
from .location import DatabaseURL, open_store
from .migrations import MIGRATIONS, SCHEMA_VERSION, Migration
from .records import (
    SYSTEM_STATUSES,
    CallRecord,
    CallStatus,
    ChainFeedback,
    Checkpoint,
    CommitOutcomeUnknown,
    DecisionInfo,
    FeedbackRecord,
    FeedbackStatus,
    JudgeCall,
    JudgeTotals,
    ModelAction,
    ModelEvent,
    ModelStats,
    StoredDecision,
    StoreError,
    StoreStats,
    UnreadableDecision,
    UnreadableModelEvent,
    model_event_from_row,
)
from .rollup import MinuteStats
from .router_stats import RouterCounts
from .sqlite import WAL_MAX_BYTES, SQLiteStore

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SYSTEM_STATUSES",
    "WAL_MAX_BYTES",
    "CallRecord",
    "CallStatus",
    "ChainFeedback",
    "Checkpoint",
    "CommitOutcomeUnknown",
    "DatabaseURL",
    "DecisionInfo",
    "FeedbackRecord",
    "FeedbackStatus",
    "JudgeCall",
    "JudgeTotals",
    "Migration",
    "MinuteStats",
    "ModelAction",
    "ModelEvent",
    "ModelStats",
    "Reader",
    "RouterCounts",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoreStats",
    "StoredDecision",
    "UnreadableDecision",
    "UnreadableModelEvent",
    "WriteTx",
    "decode_features",
    "encode_features",
    "model_event_from_row",
    "open_store",
    "safe_text",
]
