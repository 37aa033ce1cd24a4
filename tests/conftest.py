"""Shared fixtures. Every test is seeded; nothing here touches the network."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import pytest

from bandit_router.catalog import Catalog, default_catalog
from tools.pg_server import PgServer, binaries


@pytest.fixture
def catalog() -> Catalog:
    return default_catalog()


# -- PostgreSQL: one real server on 127.0.0.1 for the session (tools/pg_server.py) ------------------------------
_databases = iter(range(1, 1_000_000))


def require_postgres(installed: bool, env: Mapping[str, str]) -> None:
    """Skip (a developer's machine) or fail (CI, `CI=true`) when PostgreSQL is not installed."""
    if installed:
        return
    reason = "PostgreSQL is not installed (apt-get install postgresql): PostgreSQL tests skipped"
    if env.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server in a temporary folder, stopped at the end. Without PostgreSQL installed the tests that
    need it are skipped, except on CI (`CI=true`, where `.ci/run` installs it): there they fail."""
    require_postgres(binaries() is not None, os.environ)
    server = PgServer.start(fsync=False)
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL of a new, empty database on the session's server."""
    return pg_server.create_database(f"test_{os.getpid()}_{next(_databases)}")
