"""The schema, as one numbered list of migrations. A database records the number of the last one it ran
(`meta.schema_version`); `prepare()` runs the ones after it, in one transaction.

To change the schema, append a migration; never edit one that shipped. Statements use `IF NOT EXISTS`, so a
database created before this list existed (by version 1 of the code, with or without `shadow_pmfs`) migrates.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import rollup


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "decisions, feedback, model events, checkpoints, meta",
        (
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
            """CREATE TABLE IF NOT EXISTS decisions (
                decision_id TEXT NOT NULL,
                created_at FLOAT NOT NULL,
                model TEXT NOT NULL,
                arm INTEGER,
                probability FLOAT NOT NULL,
                models TEXT NOT NULL,
                pmf TEXT NOT NULL,
                expected_cost_usd TEXT,
                policy TEXT NOT NULL,
                policy_version INTEGER NOT NULL,
                cost_weight FLOAT NOT NULL,
                tenant TEXT,
                input_tokens INTEGER NOT NULL,
                n_chars INTEGER,
                turns INTEGER,
                markers TEXT,
                attributes TEXT,
                features BLOB NOT NULL,
                prompt TEXT
            )""",
            "CREATE UNIQUE INDEX IF NOT EXISTS decisions_id ON decisions (decision_id)",
            """CREATE TABLE IF NOT EXISTS feedback (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                decision_id TEXT NOT NULL REFERENCES decisions(decision_id),
                received_at REAL NOT NULL,
                quality REAL NOT NULL,
                cost_usd REAL,
                input_tokens INTEGER,
                output_tokens INTEGER,
                latency_s REAL,
                source TEXT,
                status TEXT NOT NULL,
                learn INTEGER NOT NULL,
                reward REAL NOT NULL,
                realised_cost_usd REAL NOT NULL,
                model TEXT NOT NULL,
                tenant TEXT
            )""",
            "CREATE INDEX IF NOT EXISTS feedback_decision ON feedback(decision_id)",
            "CREATE UNIQUE INDEX IF NOT EXISTS feedback_learned_once ON feedback(decision_id) WHERE learn = 1",
            """CREATE TABLE IF NOT EXISTS model_events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                after_seq INTEGER NOT NULL,
                created_at REAL NOT NULL,
                action TEXT NOT NULL,
                name TEXT NOT NULL,
                spec TEXT
            )""",
            """CREATE TABLE IF NOT EXISTS checkpoints (
                id INTEGER PRIMARY KEY,
                created_at FLOAT,
                fingerprint TEXT NOT NULL,
                seq INTEGER NOT NULL,
                event_id INTEGER NOT NULL,
                version INTEGER NOT NULL,
                sha256 TEXT NOT NULL,
                state BLOB NOT NULL
            )""",
            "CREATE UNIQUE INDEX IF NOT EXISTS checkpoints_position ON checkpoints (fingerprint, seq, event_id)",
        ),
    ),
    Migration(
        2,
        "shadow policies' pmfs per decision: a JSON object {shadow name: [p over the decision's models]}",
        (
            "CREATE TABLE IF NOT EXISTS shadow_pmfs (decision_id TEXT PRIMARY KEY REFERENCES decisions(decision_id), "
            "pmfs TEXT NOT NULL)",
        ),
    ),
    Migration(
        3,
        "the per-minute rollup `minute_stats` (store/rollup.py), filled from the rows already stored",
        (rollup.TABLE, *rollup.BACKFILL_V3),
    ),
    Migration(
        4,
        "the gateway's upstream calls: one row per decision it called a model for (usage, cost, latency, status)",
        (
            """CREATE TABLE IF NOT EXISTS calls (
                decision_id TEXT PRIMARY KEY REFERENCES decisions(decision_id),
                request_id TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                model TEXT NOT NULL,
                routed INTEGER NOT NULL,
                stream INTEGER NOT NULL,
                status TEXT NOT NULL,
                http_status INTEGER,
                input_tokens INTEGER,
                output_tokens INTEGER,
                usage TEXT,
                cost_usd REAL,
                ttft_s REAL,
                latency_s REAL,
                error TEXT,
                created_at REAL NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS calls_request ON calls (request_id)",
        ),
    ),
    Migration(
        5,
        "the rollup's `routed` count: exploration and mean probability over the bandit's own first tries only "
        "(not models callers named, named routers' choices or the gateway's fallbacks); rebuilt from the rows",
        (rollup.ADD_ROUTED, "DELETE FROM minute_stats", *rollup.BACKFILL),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version
"""The schema this code writes and reads: the last migration's number."""

assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1)), "migrations are numbered 1, 2, …"
