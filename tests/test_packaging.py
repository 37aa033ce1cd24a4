"""Installed outside the repository: what a wheel or sdist holds, and the provenance an installed copy records."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from simulator.report import git_commit

ROOT = Path(__file__).resolve().parents[1]


def test_an_installed_copy_in_another_projects_repository_records_no_commit(tmp_path: Path) -> None:
    """A wheel installed in a venv inside the user's own git repository (`myproject/.venv`) wrote that project's
    HEAD, `+dirty` when its tree had changes, as the commit of the code in every summary.json it made. A checkout
    that does not track this code gives `unknown`; this repository's own checkout still gives its commit."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    project = tmp_path / "myproject"
    project.mkdir()
    (project / "notes.txt").write_text("mine\n")
    git = ["git", "-c", "user.name=u", "-c", "user.email=u@example.com"]
    for args in (["init", "-q"], ["add", "notes.txt"], ["commit", "-qm", "the user's project"]):
        subprocess.run([*git, *args], cwd=project, check=True, capture_output=True)
    (project / "notes.txt").write_text("edited\n")
    assert git_commit(project) == "unknown"
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        assert git_commit(ROOT).removesuffix("+dirty") == head.stdout.strip()
