"""Shared fixtures. Every test is seeded; nothing here touches the network."""

from __future__ import annotations

import pytest

from bandit_router.catalog import Catalog, default_catalog


@pytest.fixture
def catalog() -> Catalog:
    return default_catalog()
