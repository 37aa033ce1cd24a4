"""Read the documentation pages as the docs site renders them, so that tests can run the examples they show."""

from __future__ import annotations

import sys
from pathlib import Path

SERVICE_PAGES = ("index.md", "api.md", "configuration.md", "durability.md", "security.md", "workers.md",
                 "performance.md", "gateway.md")


def page(root: Path, name: str) -> str:
    """The page `docs/<name>`, with its generated parts filled in (`tools/mkdocs_hooks.py`)."""
    sys.path.insert(0, str(root / "tools"))
    try:
        from mkdocs_hooks import render
    finally:
        sys.path.remove(str(root / "tools"))
    return render((root / "docs" / name).read_text(encoding="utf-8"))


def service_section(root: Path) -> str:
    """Every page of the service's documentation (`docs/service/`), in the order of the site's navigation."""
    return "\n".join(page(root, f"service/{name}") for name in SERVICE_PAGES)
