"""Turn a service's database back into what the previous schema version left, to test a migration from it."""

from __future__ import annotations

import sqlite3

import psycopg

from bandit_router.store.location import DatabaseURL


def as_previous_schema(location: str, table: str, version: int) -> None:
    """Drop `table` (what migration `version` + 1 added) and set the schema version to `version`, in the SQLite file
    or PostgreSQL database at `location`."""
    statements = (f"DROP TABLE {table}", f"UPDATE meta SET value = '{version}' WHERE key = 'schema_version'")
    if location.startswith("postgresql"):
        with psycopg.connect(DatabaseURL(location).reveal(), autocommit=True) as pg:
            for sql in statements:
                pg.execute(sql)  # type: ignore[arg-type]
    else:
        with sqlite3.connect(location) as conn:
            for sql in statements:
                conn.execute(sql)
