"""The layout keeps its promises: no import cycles between modules (module-level imports, outside
`if TYPE_CHECKING:`), and no module over ~500 lines without a reason written at its top ("Why one module …")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bandit_router", "simulator")
MAX_LINES = 520


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules `name` imports when it is imported (module level only)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:
                        found.add(sub)
                    elif target in modules:
                        found.add(target)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    found.discard(name)
    return found


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # a package's __init__ re-exporting its own submodules is not a cycle: drop edges from a submodule to an
    # ancestor package (importing a submodule runs its parent package first anyway)
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_long_modules_say_why_at_their_top() -> None:
    long = []
    for name, path in _modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_LINES:
            head = "\n".join(lines[:40]).lower()
            if "why one module" not in head:
                long.append(f"{name}: {len(lines)} lines")
    assert not long, long


def test_make_says_which_python_it_needs_before_it_installs(tmp_path: Path) -> None:
    """`make install` (and so `make run`, `make test`) with a Python other than 3.11 or 3.12 stops at once with
    what it needs and how to give it, instead of a pip failure deep in vowpal-wabbit-next's build."""
    import shutil
    import subprocess
    import sys

    import pytest

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    fake = tmp_path / "python3.13"  # this interpreter, reporting itself as 3.13 to the check
    fake.write_text("#!/bin/sh\nexec " + sys.executable + " -c 'import sys; sys.version_info = (3, 13, 0, \"final\", "
                    "0); exec(sys.argv[1])' \"$2\"\n")
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    done = subprocess.run(["make", "-C", str(ROOT), f"VENV={venv}", f"PYTHON={fake}", "install"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert ("bandit-router needs CPython 3.11 or 3.12 (the code needs 3.11, and vowpal-wabbit-next 0.7.0 has no wheels "
            f"past 3.12); {fake} is 3.13: run make PYTHON=/path/to/python3.12") in done.stderr
    assert not venv.exists()


def test_make_run_installs_what_serving_needs_and_the_other_targets_the_extras(tmp_path: Path) -> None:
    """`make run` installed the dev and docs extras too (pytest, playwright, schemathesis, mkdocs, …: what a
    newcomer who only wants to serve does not need). It installs the package alone; `make install` (so `make test`,
    `make lint`, `make docs`) the extras, and leaves `make run` nothing more to install, also in a virtualenv made by
    `make install` before `make run` had its own stamp (only `.installed`: `make run` reinstalled, and failed
    offline), unless pyproject.toml changed since. `make -j2 lint run` installs once: each stamp's recipe created
    the virtualenv and ran pip in it, at the same time. Read from make's dry run."""
    import os
    import shutil
    import subprocess

    import pytest

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "venv"

    def planned(*targets: str) -> str:
        done = subprocess.run(["make", "-n", "-C", str(ROOT), f"VENV={venv}", *targets], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    run = planned("run")
    assert "pip install --quiet -e '.'" in run and "[dev" not in run and "bandit-router serve" in run
    # with --host 127.0.0.1 --port 8000 (serve's defaults), ./bandit-router.toml's and BANDIT_ROUTER_PORT's lost
    assert f"{venv}/bin/bandit-router serve\n" in run, run
    for target in ("install", "test", "lint", "docs"):
        assert "pip install --quiet -e '.[dev,docs]'" in planned(target), target
    for targets in (("lint", "run"), ("run", "test")):
        both = planned(*targets)
        assert both.count(" -m venv ") == 1 and both.count("pip install --quiet -e") == 1, both
        assert "pip install --quiet -e '.[dev,docs]'" in both and "bandit-router serve" in both
    venv.mkdir()
    (venv / ".installed").touch()  # as `make install` left it before `make run` had its own stamp
    assert "pip install" not in planned("run") and "pip install" not in planned("lint")
    changed = (ROOT / "pyproject.toml").stat().st_mtime
    os.utime(venv / ".installed", (changed - 60, changed - 60))  # installed before pyproject.toml changed
    assert "pip install --quiet -e '.'" in planned("run")
    assert "pip install --quiet -e '.[dev,docs]'" in planned("lint")
    for stamp in (".installed", ".installed-serve"):  # as `make install` leaves them
        (venv / stamp).touch()
    assert "pip install" not in planned("run") and "pip install" not in planned("lint")
