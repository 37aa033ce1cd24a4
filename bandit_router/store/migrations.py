"""The schema, as one numbered list of migrations for both backends. A database records the number of the last
one it ran (`meta.schema_version`); `prepare()` (or `bandit-router migrate`) runs the ones after it, in one
transaction, and refuses a database whose number is larger than this code's.

Each migration holds its SQLite statements (`statements`) and its PostgreSQL statements (`postgres`): the same
tables and columns in each dialect. PostgreSQL differences: `BIGINT`/`DOUBLE PRECISION`/`BYTEA`; decisions get a
`position` identity column where SQLite uses its `rowid`; feedback `seq` is numbered by the writer (under the
store's write lock, like SQLite) and the largest seq ever used lives in the single-row table `log_head`, updated
in the transaction that inserts the rows (what `sqlite_sequence` does on SQLite).

To change the schema, append a migration; never edit one that shipped. Statements use `IF NOT EXISTS`, so a
database created before this list existed (by version 1 of the code, with or without `shadow_pmfs`) migrates.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import rollup, router_stats


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]
    postgres: tuple[str, ...] = ()

    def for_dialect(self, dialect: str) -> tuple[str, ...]:
        """The statements for `sqlite` or `postgres`."""
        return self.postgres if dialect == "postgres" else self.statements


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
        (
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
            """CREATE TABLE IF NOT EXISTS decisions (
                position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                decision_id TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                model TEXT NOT NULL,
                arm INTEGER,
                probability DOUBLE PRECISION NOT NULL,
                models TEXT NOT NULL,
                pmf TEXT NOT NULL,
                expected_cost_usd TEXT,
                policy TEXT NOT NULL,
                policy_version BIGINT NOT NULL,
                cost_weight DOUBLE PRECISION NOT NULL,
                tenant TEXT,
                input_tokens BIGINT NOT NULL,
                n_chars BIGINT,
                turns INTEGER,
                markers TEXT,
                attributes TEXT,
                features BYTEA NOT NULL,
                prompt TEXT
            )""",
            "CREATE UNIQUE INDEX IF NOT EXISTS decisions_id ON decisions (decision_id)",
            """CREATE TABLE IF NOT EXISTS feedback (
                seq BIGINT PRIMARY KEY,
                decision_id TEXT NOT NULL REFERENCES decisions(decision_id),
                received_at DOUBLE PRECISION NOT NULL,
                quality DOUBLE PRECISION NOT NULL,
                cost_usd DOUBLE PRECISION,
                input_tokens BIGINT,
                output_tokens BIGINT,
                latency_s DOUBLE PRECISION,
                source TEXT,
                status TEXT NOT NULL,
                learn SMALLINT NOT NULL,
                reward DOUBLE PRECISION NOT NULL,
                realised_cost_usd DOUBLE PRECISION NOT NULL,
                model TEXT NOT NULL,
                tenant TEXT
            )""",
            "CREATE INDEX IF NOT EXISTS feedback_decision ON feedback(decision_id)",
            "CREATE UNIQUE INDEX IF NOT EXISTS feedback_learned_once ON feedback(decision_id) WHERE learn = 1",
            "CREATE TABLE IF NOT EXISTS log_head (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), "
            "seq BIGINT NOT NULL)",
            "INSERT INTO log_head (one, seq) VALUES (TRUE, 0) ON CONFLICT DO NOTHING",
            """CREATE TABLE IF NOT EXISTS model_events (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                after_seq BIGINT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                action TEXT NOT NULL,
                name TEXT NOT NULL,
                spec TEXT
            )""",
            """CREATE TABLE IF NOT EXISTS checkpoints (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                created_at DOUBLE PRECISION,
                fingerprint TEXT NOT NULL,
                seq BIGINT NOT NULL,
                event_id BIGINT NOT NULL,
                version BIGINT NOT NULL,
                sha256 TEXT NOT NULL,
                state BYTEA NOT NULL
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
        (
            "CREATE TABLE IF NOT EXISTS shadow_pmfs (decision_id TEXT PRIMARY KEY REFERENCES decisions(decision_id), "
            "pmfs TEXT NOT NULL)",
        ),
    ),
    Migration(
        3,
        "the per-minute rollup `minute_stats` (store/rollup.py), filled from the rows already stored",
        (rollup.TABLE, *rollup.BACKFILL_V3),
        (rollup.TABLE_POSTGRES, *rollup.BACKFILL_POSTGRES_V3),
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
        (
            """CREATE TABLE IF NOT EXISTS calls (
                decision_id TEXT PRIMARY KEY REFERENCES decisions(decision_id),
                request_id TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                model TEXT NOT NULL,
                routed SMALLINT NOT NULL,
                stream SMALLINT NOT NULL,
                status TEXT NOT NULL,
                http_status INTEGER,
                input_tokens BIGINT,
                output_tokens BIGINT,
                usage TEXT,
                cost_usd DOUBLE PRECISION,
                ttft_s DOUBLE PRECISION,
                latency_s DOUBLE PRECISION,
                error TEXT,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS calls_request ON calls (request_id)",
        ),
    ),
    Migration(
        5,
        "the rollup's `routed` count: exploration and mean probability over the bandit's own first tries only "
        "(not models callers named, named routers' choices or the gateway's fallbacks); rebuilt from the rows",
        (rollup.ADD_ROUTED, "DELETE FROM minute_stats", *rollup.BACKFILL),
        (rollup.ADD_ROUTED, "DELETE FROM minute_stats", *rollup.BACKFILL_POSTGRES),
    ),
    Migration(
        6,
        "named routers' chains: one JSON document per decision next to its call record (`chains`: every call, every "
        "accept/escalate step with its propensity, what the chain paid after each step), and an index of the "
        "`unrouted` feedback a learned cascade's escalation learns from",
        (
            "CREATE TABLE IF NOT EXISTS chains (decision_id TEXT PRIMARY KEY REFERENCES decisions(decision_id), "
            "chain TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS feedback_unrouted ON feedback (seq) WHERE status = 'unrouted'",
        ),
        (
            "CREATE TABLE IF NOT EXISTS chains (decision_id TEXT PRIMARY KEY REFERENCES decisions(decision_id), "
            "chain TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS feedback_unrouted ON feedback (seq) WHERE status = 'unrouted'",
        ),
    ),
    Migration(
        7,
        "named routers' counts per (router, day, answering model) (`router_stats`, store/router_stats.py), kept in "
        "the transaction that stores each request's decision and chain; filled from the chains already stored",
        (router_stats.TABLE, router_stats.BACKFILL),
        (router_stats.TABLE_POSTGRES, *router_stats.BACKFILL_POSTGRES),
    ),
    Migration(
        8,
        "the feedback judge's calls (`judge_calls`: the scored decision, its tenant, tokens, cost), in storage "
        "order, so that every process sharing the log books them in its budgets",
        (
            """CREATE TABLE IF NOT EXISTS judge_calls (
                position INTEGER PRIMARY KEY AUTOINCREMENT,
                decision_id TEXT NOT NULL,
                tenant TEXT,
                model TEXT NOT NULL,
                input_tokens INTEGER NOT NULL,
                output_tokens INTEGER NOT NULL,
                cost_usd REAL NOT NULL,
                created_at REAL NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS judge_calls_decision ON judge_calls (decision_id)",
        ),
        (
            """CREATE TABLE IF NOT EXISTS judge_calls (
                position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                decision_id TEXT NOT NULL,
                tenant TEXT,
                model TEXT NOT NULL,
                input_tokens BIGINT NOT NULL,
                output_tokens BIGINT NOT NULL,
                cost_usd DOUBLE PRECISION NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS judge_calls_decision ON judge_calls (decision_id)",
        ),
    ),
    Migration(
        9,
        "a large checkpoint written in parts over several short transactions (`checkpoint_parts`, 256 KiB each), its "
        "`checkpoints` row last, whose `state` then names them (`records.parts_marker`)",
        (
            "CREATE TABLE IF NOT EXISTS checkpoint_parts (token TEXT NOT NULL, n INTEGER NOT NULL, "
            "created_at REAL NOT NULL, data BLOB NOT NULL, PRIMARY KEY (token, n))",
        ),
        (
            "CREATE TABLE IF NOT EXISTS checkpoint_parts (token TEXT NOT NULL, n INTEGER NOT NULL, "
            "created_at DOUBLE PRECISION NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (token, n))",
        ),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version
"""The schema this code writes and reads: the last migration's number."""

assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1)), "migrations are numbered 1, 2, …"
assert all(m.postgres for m in MIGRATIONS), "every migration has its PostgreSQL statements"
