"""Installed outside the repository: what a wheel or sdist holds, and the provenance an installed copy records."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.report import git_commit

ROOT = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=u", "-c", "user.email=u@example.com", "-c", "commit.gpgsign=false"]  # not yours


def test_an_installed_copy_in_another_projects_repository_records_no_commit(tmp_path: Path) -> None:
    """A wheel installed in a venv inside the user's own git repository (`myproject/.venv`) wrote that project's
    HEAD, `+dirty` when its tree had changes, as the commit of the code in every summary.json it made. A checkout
    that does not track this code gives `unknown`; this repository's own checkout still gives its commit."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    project = tmp_path / "myproject"
    project.mkdir()
    (project / "notes.txt").write_text("mine\n")
    for args in (["init", "-q"], ["add", "notes.txt"], ["commit", "-qm", "the user's project"]):
        subprocess.run([*GIT, *args], cwd=project, check=True, capture_output=True)
    (project / "notes.txt").write_text("edited\n")
    assert git_commit(project) == "unknown"
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        assert git_commit(ROOT).removesuffix("+dirty") == head.stdout.strip()



def test_another_checkout_of_this_project_records_its_own_commit(tmp_path: Path) -> None:
    """The benchmarks record the commit of another checkout (`ab_http --base`, `route_ab`, `--code`): a clone, or a
    git worktree (whose `.git` is a file), that tracks `simulator/report.py` gives its HEAD, `+dirty` with changes,
    whatever the path of the running copy; a `git archive` export inside another project's repository gives
    `unknown`. Asking that checkout about the running file's absolute path gave `unknown` for every other checkout."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    clone, worktree, other = tmp_path / "clone", tmp_path / "worktree", tmp_path / "other"
    (clone / "simulator").mkdir(parents=True)
    shutil.copy2(ROOT / "simulator" / "report.py", clone / "simulator" / "report.py")
    for args in (["init", "-q"], ["add", "simulator"], ["commit", "-qm", "a checkout"],
                 ["worktree", "add", "-q", "--detach", str(worktree)]):
        subprocess.run([*GIT, *args], cwd=clone, check=True, capture_output=True)

    def head(where: Path) -> str:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True)
        return done.stdout.strip()

    assert (worktree / ".git").is_file()
    assert git_commit(clone) == head(clone) and git_commit(worktree) == head(worktree) != ""
    (worktree / "simulator" / "report.py").write_text("changed\n")
    assert git_commit(worktree) == head(worktree) + "+dirty" and git_commit(clone) == head(clone)
    other.mkdir()
    (other / "notes.txt").write_text("mine\n")
    for args in (["init", "-q"], ["add", "notes.txt"], ["commit", "-qm", "the user's project"]):
        subprocess.run([*GIT, *args], cwd=other, check=True, capture_output=True)
    export = subprocess.run([*GIT, "archive", "HEAD", "simulator"], cwd=clone, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(other)], input=export.stdout, check=True)
    assert (other / "simulator" / "report.py").is_file()
    assert git_commit(other) == "unknown" and git_commit(other / "simulator") == "unknown"


def _source_files() -> set[str]:
    """The files of the two packages: git's list in a checkout (an editor's swap file or a stray output is not
    one), else the files on disk less hidden, backup and compiled ones."""
    if shutil.which("git") is not None and (ROOT / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z", "--", "bandit_router", "simulator"], cwd=ROOT,
                                capture_output=True, text=True, check=True)
        return {name for name in listed.stdout.split("\0") if name and (ROOT / name).is_file()}
    return {
        path.relative_to(ROOT).as_posix()
        for folder in ("bandit_router", "simulator")
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
        and not any(part.startswith(".") for part in path.relative_to(ROOT).parts)
        and not path.name.endswith(("~", ".swp", ".swo", ".orig", ".rej", ".bak", ".pyc"))
    }


def _build(tmp_path: Path) -> tuple[set[str], set[str], str]:
    """The wheel's and the sdist's file lists and the wheel's METADATA and entry points, built from a copy of the
    source as `python -m build` builds them (setuptools' backend, in a subprocess)."""
    import tarfile
    import zipfile

    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} cannot build this pyproject.toml (the dev extra needs 77)")
    source, out = tmp_path / "source", tmp_path / "dist"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("bandit_router", "simulator", "tests"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, source / name)
    script = ("import sys; from setuptools import build_meta as b; out = sys.argv[1]; "  # the backend rewrites argv
              "b.build_sdist(out); b.build_wheel(out)")
    subprocess.run([sys.executable, "-c", script, str(out)], cwd=source, check=True, capture_output=True, timeout=120)
    (wheel,), (sdist,) = out.glob("*.whl"), out.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as z:
        wheel_files = set(z.namelist())
        metadata = "".join(z.read(f"bandit_router-0.1.0.dist-info/{name}").decode()
                           for name in ("METADATA", "entry_points.txt"))
    with tarfile.open(sdist) as t:
        sdist_files = {m.name.partition("/")[2] for m in t.getmembers() if m.isfile()}
    return wheel_files, sdist_files, metadata


def test_the_wheel_and_sdist_hold_what_an_install_runs_and_nothing_else(tmp_path: Path) -> None:
    """Every file of the two packages (code, the catalog, the worlds, the dashboard's static files, py.typed) is in
    the wheel, with the licence and the console script, and nothing else is. The sdist had no LICENSE (there was
    none) and carried tests/test_*.py without the helpers, fixtures and data they import."""
    wheel, sdist, metadata = _build(tmp_path)
    source = _source_files()
    info = "bandit_router-0.1.0.dist-info/"
    assert {name for name in wheel if not name.startswith(info)} == source
    assert f"{info}licenses/LICENSE" in wheel
    assert "License-Expression: Apache-2.0" in metadata and "Requires-Python: <3.13,>=3.11" in metadata
    assert "bandit-router = bandit_router.cli:main" in metadata
    assert source <= sdist and "LICENSE" in sdist
    assert not [name for name in sdist if name.startswith("tests/")]
    assert not [name for name in sdist | wheel if name.endswith((".csv", ".csv.gz", ".parquet", ".jsonl", ".db"))]


def test_a_source_tree_never_installed_reports_one_version_everywhere(tmp_path: Path) -> None:
    """Run from a source tree with no installed metadata (a `git archive` export on PYTHONPATH), `--version` said
    0+unknown and the service "0" (its OpenAPI document and its start line): one version, the package's."""
    script = (
        "import importlib.metadata as m\n"
        "def missing(name): raise m.PackageNotFoundError(name)\n"
        "m.version = missing  # as in a tree that pip never installed\n"
        "import sys, bandit_router\n"
        "from bandit_router.config import Settings\n"
        "from bandit_router.service.app import create_app\n"
        "print(bandit_router.__version__, create_app(Settings(db=sys.argv[1])).version)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "r.db")], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0+unknown", "0+unknown"]
