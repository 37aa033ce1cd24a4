"""Installed outside the repository: what a wheel or sdist holds, and the provenance an installed copy records."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.report import checkout_commit, git_commit

ROOT = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=u", "-c", "user.email=u@example.com", "-c", "commit.gpgsign=false"]  # not yours


def _run_git_commit(code: Path, script_dir: Path) -> str:
    """`git_commit()` as a script in `script_dir` calls it (its cwd there) with `simulator` imported from `code`."""
    script_dir.mkdir(parents=True, exist_ok=True)
    script = script_dir / "zz_record_commit.py"
    script.write_text("from simulator.report import git_commit\nprint(git_commit())\n")
    try:
        done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(code)!r}); "
                               f"exec(open({str(script)!r}).read())"], cwd=script_dir, capture_output=True,
                              text=True, check=True, timeout=60)
    finally:
        script.unlink()
    return done.stdout.strip()


def _copy_packages(to: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("bandit_router", "simulator"):
        shutil.copytree(ROOT / folder, to / folder, ignore=ignore)


def test_an_installed_copy_in_another_projects_repository_records_no_commit(tmp_path: Path) -> None:
    """`simulate` (`simulator.report.git_commit`) records the HEAD of the checkout the running code comes from,
    `+dirty` when its tree had changes, as the commit of the code in every summary.json it made. An installed copy
    that the repository around it does not track gives `unknown`; this repository's own checkout gives its commit."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    project = tmp_path / "myproject"
    project.mkdir()
    (project / "notes.txt").write_text("mine\n")
    for args in (["init", "-q"], ["add", "notes.txt"], ["commit", "-qm", "the user's project"]):
        subprocess.run([*GIT, *args], cwd=project, check=True, capture_output=True)
    (project / "notes.txt").write_text("edited\n")
    installed = project / ".venv" / "lib" / "site-packages"
    _copy_packages(installed)
    assert _run_git_commit(installed, project) == "unknown"
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if (ROOT / ".git").exists() and head.returncode == 0:  # not when git refuses the checkout (another owner's)
        assert git_commit().removesuffix("+dirty") == head.stdout.strip()


def test_a_script_in_a_worktree_records_the_commit_of_the_code_it_imports(tmp_path: Path) -> None:
    """An experiment run from a git worktree whose venv imports the packages from another checkout (an editable
    install of it) ran that checkout's code: it records that checkout's commit, or `unknown`, never the worktree's.
    `git_commit(HERE)`, asked about the script's folder, recorded the worktree's HEAD for code it did not run."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    clone, worktree, elsewhere = tmp_path / "clone", tmp_path / "worktree", tmp_path / "elsewhere"
    _copy_packages(clone)
    for args in (["init", "-q"], ["add", "bandit_router", "simulator"], ["commit", "-qm", "a checkout"],
                 ["worktree", "add", "-q", "--detach", str(worktree)]):
        subprocess.run([*GIT, *args], cwd=clone, check=True, capture_output=True)
    worktree_head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=worktree, capture_output=True,
                                   text=True, check=True).stdout.strip()
    recorded = _run_git_commit(ROOT, worktree / "experiments" / "offline-evaluation")
    assert recorded == git_commit() and not recorded.startswith(worktree_head)
    _copy_packages(elsewhere)  # an installed copy no checkout tracks
    assert _run_git_commit(elsewhere, worktree / "experiments" / "offline-evaluation") == "unknown"
    assert _run_git_commit(worktree, worktree / "experiments").removesuffix("+dirty") == worktree_head


def test_a_run_records_the_commit_it_started_from_and_a_change_during_it(tmp_path: Path) -> None:
    """A run records the commit of the code it ran: the HEAD, and whether the tree was dirty, when it started
    (when `simulator.report` was imported), not when it ended; a commit made or a file edited while it ran is
    recorded beside it, `<start> (at the end: <now>)`, never as the clean commit of the run. The simulator read
    the commit when it wrote the report, so a results-only commit made during a long run was recorded as the
    commit the run came from (experiments/routellm's mmlu_tuned)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    clone = tmp_path / "clone"
    _copy_packages(clone)
    for args in (["init", "-q"], ["add", "bandit_router", "simulator"], ["commit", "-qm", "a checkout"]):
        subprocess.run([*GIT, *args], cwd=clone, check=True, capture_output=True)

    def head() -> str:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True,
                              check=True).stdout.strip()

    def run(during: str) -> str:
        """`git_commit()` at the end of a script that does `during` (shell, in the clone) while it runs."""
        script = (f"import subprocess, sys; sys.path.insert(0, {str(clone)!r})\n"
                  "from simulator.report import git_commit\n"
                  f"subprocess.run({during!r}, shell=True, cwd={str(clone)!r}, check=True)\n"
                  "print(git_commit())\n")
        return subprocess.run([sys.executable, "-I", "-B", "-c", script], cwd=clone, capture_output=True, text=True,
                              check=True, timeout=60).stdout.strip()

    start = head()
    assert run("true") == start
    git = " ".join(GIT)
    assert run(f"{git} commit -q --allow-empty -m results-only") == f"{start} (at the end: {head()})" != start
    edited = head()
    assert run("echo '# edited' >> simulator/runner.py") == f"{edited} (at the end: {edited}+dirty)"
    assert run(f"{git} commit -qam edited") == f"{edited}+dirty (at the end: {head()})"


def test_the_scripts_record_the_running_codes_commit() -> None:
    """Every experiment and benchmark records its own code's commit with `git_commit()` and names another checkout
    (`--base`, `--code`) with `checkout_commit(path)`: `git_commit` takes no path, so none can ask a folder of its
    own about code imported from elsewhere. None asks git itself (`git rev-parse`): two did, and outside git
    wrote an empty commit where `git_commit()` says `unknown`."""
    import ast
    import inspect

    from simulator import report

    assert not inspect.signature(report.git_commit).parameters
    for script in sorted([*(ROOT / "experiments").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]):
        for node in ast.walk(ast.parse(script.read_text(), str(script))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "git_commit":
                assert not node.args and not node.keywords, f"{script.relative_to(ROOT)}:{node.lineno}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert "rev-parse" not in node.value, f"{script.relative_to(ROOT)}:{node.lineno} asks git itself"


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
    assert checkout_commit(clone) == head(clone) and checkout_commit(worktree) == head(worktree) != ""
    (worktree / "simulator" / "report.py").write_text("changed\n")
    assert checkout_commit(worktree / "simulator") == head(worktree) + "+dirty"  # first read after the change
    assert checkout_commit(worktree) == f"{head(worktree)} (at the end: {head(worktree)}+dirty)"  # read before it
    assert checkout_commit(clone) == head(clone)
    other.mkdir()
    (other / "notes.txt").write_text("mine\n")
    for args in (["init", "-q"], ["add", "notes.txt"], ["commit", "-qm", "the user's project"]):
        subprocess.run([*GIT, *args], cwd=other, check=True, capture_output=True)
    export = subprocess.run([*GIT, "archive", "HEAD", "simulator"], cwd=clone, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(other)], input=export.stdout, check=True)
    assert (other / "simulator" / "report.py").is_file()
    assert checkout_commit(other) == "unknown" and checkout_commit(other / "simulator") == "unknown"


def _source_files(root: Path = ROOT) -> set[str]:
    """The files of the two packages: git's list in a checkout, tracked or new and not ignored (an editor's swap
    file or a stray output is not one; a module not yet `git add`ed is, as the build copies it), else (no git, or
    git refusing the checkout, e.g. another user's) the files on disk less hidden, backup and compiled ones."""
    if shutil.which("git") is not None and (root / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                                 "bandit_router", "simulator"], cwd=root, capture_output=True, text=True)
        tracked = subprocess.run(["git", "ls-files", "-z", "--", "bandit_router", "simulator"], cwd=root,
                                 capture_output=True, text=True)
        if listed.returncode == 0 and tracked.returncode == 0:
            names = set(listed.stdout.split("\0")) - {""}
            kept = set(tracked.stdout.split("\0")) | {name for name in names if _not_stray(Path(name))}
            return {name for name in names & kept if (root / name).is_file()}
    return {
        path.relative_to(root).as_posix()
        for folder in ("bandit_router", "simulator")
        for path in (root / folder).rglob("*")
        if path.is_file() and _not_stray(path.relative_to(root))
    }


def _not_stray(path: Path) -> bool:
    """Not compiled, hidden (an editor's swap file) or a backup: what a build leaves out of an untracked tree."""
    return ("__pycache__" not in path.parts and not any(part.startswith(".") for part in path.parts)
            and not path.name.endswith(("~", ".swp", ".swo", ".orig", ".rej", ".bak", ".pyc")))


def test_the_source_list_holds_a_new_module_and_needs_no_git_that_answers(tmp_path: Path) -> None:
    """The list the wheel is checked against holds a module not yet `git add`ed (the build copies it; git's list of
    tracked files did not, so the wheel test failed during normal development) but no ignored file, swap file or
    compiled one; and where git refuses the checkout (another user's: "dubious ownership", as root in a container
    sees a bind-mounted checkout) it is the files on disk, where `git ls-files` raised."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    for name in ("bandit_router/__init__.py", "simulator/__init__.py", ".gitignore"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("*.db\n" if name == ".gitignore" else "")
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "a checkout"]):
        subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True)
    for name in ("bandit_router/newmod.py", "bandit_router/x.db", "bandit_router/.newmod.py.swp",
                 "bandit_router/__pycache__/newmod.cpython-311.pyc"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("")
    ours = {"bandit_router/__init__.py", "simulator/__init__.py", "bandit_router/newmod.py"}
    assert _source_files(repo) == ours
    (repo / "bandit_router" / "x.db").unlink()
    if os.geteuid() == 0:  # git refuses a checkout another user owns
        subprocess.run(["chown", "-R", "12345:12345", str(repo)], check=True)
        assert subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True).returncode != 0
        assert _source_files(repo) == ours
    shutil.move(repo / ".git", tmp_path / "moved.git")
    (repo / ".git").write_text(f"gitdir: {tmp_path / 'nowhere'}\n")  # a worktree whose repository is gone
    assert _source_files(repo) == ours


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
    assert {"bandit_router/py.typed", "simulator/py.typed", "bandit_router/__main__.py"} <= wheel
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


def test_python_dash_m_bandit_router_is_the_command() -> None:
    """`python -m bandit_router` (no console script on PATH: a venv not activated) runs the same command as
    `bandit-router`: it said "No module named bandit_router.__main__". Importing the module runs nothing (it ran
    the command, with the importer's arguments)."""
    from typer.testing import CliRunner

    import bandit_router
    from bandit_router.cli import app

    for args, expected in ((["--version"], f"bandit-router {bandit_router.__version__}\n"),
                           (["policies"], CliRunner().invoke(app, ["policies"]).stdout)):
        done = subprocess.run([sys.executable, "-m", "bandit_router", *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout == expected != ""
    importing = [sys.executable, "-c", "import bandit_router.__main__; print('imported')", "--version"]
    done = subprocess.run(importing, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert (done.returncode, done.stdout) == (0, "imported\n"), done.stderr  # importing it runs no command
