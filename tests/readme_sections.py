"""Read one section of the README, so that tests can run the examples it shows."""

from __future__ import annotations

from pathlib import Path


def section(root: Path, heading: str) -> str:
    """The README's text from the `## <heading>` line to the next `## ` heading."""
    text = (root / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 4)
    return text[start : end if end != -1 else len(text)]


def service_section(root: Path) -> str:
    return section(root, "The routing service")
