"""Start the service in-process for API tests: `TestClient(create_app(settings))`, waited until ready."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

with warnings.catch_warnings():  # Starlette 1.10 asks for `httpx2`; the plain httpx of the dev extras still works
    warnings.filterwarnings("ignore", message=".*install `httpx2`.*")
    from fastapi.testclient import TestClient

from bandit_router.config import Settings
from bandit_router.service import create_app


def start_client(settings: Settings, base_url: str = "http://testserver") -> TestClient:
    """A started client (lifespan entered) whose `/readyz` answers 200; the caller exits it. With `base_url`
    `http://127.0.0.1:…` the app sees a loopback connection (and checks `Host`, as a loopback-bound server does)."""
    client = TestClient(create_app(settings), base_url=base_url)
    client.__enter__()
    deadline = time.monotonic() + 10
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the service did not become ready"
        time.sleep(0.01)
    return client


def client_factory(db: Path, seed: int) -> Iterator[Callable[..., TestClient]]:
    """A fixture body: `make(base_url=…, **settings)` starts a client on `db`; all are closed at the end."""
    clients: list[TestClient] = []

    def make(base_url: str = "http://testserver", **changes: Any) -> TestClient:
        client = start_client(Settings(db=db, seed=seed, **changes), base_url)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
