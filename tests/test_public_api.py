"""The curated public API: `from bandit_router import …` gives a library user what they need, and no more."""

from __future__ import annotations

import subprocess
import sys

import bandit_router

PUBLIC = {
    "POLICIES", "BanditRouterError", "BudgetConfig", "BudgetPacer", "Catalog", "CatalogError", "ConfigError",
    "ConflictingFeedback", "Context", "Decision", "InvalidInput", "Message", "ModelSpec", "Outcome", "Policy",
    "Request", "RewardConfig", "Router", "Settings", "UnknownDecision", "UnknownModel", "UnknownPolicy",
    "__version__", "default_catalog", "load_catalog", "load_settings", "make_policy", "reward",
}  # fmt: skip


def test_the_public_names_are_pinned() -> None:
    assert set(bandit_router.__all__) == PUBLIC
    assert len(bandit_router.__all__) == len(PUBLIC)  # no name listed twice
    for name in PUBLIC:
        assert getattr(bandit_router, name) is not None, name


def test_the_public_names_are_the_modules_own_objects() -> None:
    from bandit_router.policies import make_policy
    from bandit_router.router import Router
    from bandit_router.types import Outcome, Request

    assert bandit_router.Router is Router and bandit_router.Request is Request
    assert bandit_router.Outcome is Outcome and bandit_router.make_policy is make_policy


def test_importing_the_package_starts_no_server_and_loads_no_plotting() -> None:
    heavy = "('fastapi', 'uvicorn', 'matplotlib')"
    code = f"import sys, bandit_router; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_command_prints_its_version() -> None:
    from typer.testing import CliRunner

    from bandit_router.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"bandit-router {bandit_router.__version__}"


def test_the_command_and_each_sub_command_answer_dash_h_as_help() -> None:
    """`bandit-router -h` and `bandit-router serve -h` (what many commands take for help) said "No such option:
    -h", exit status 2; they print the same help as `--help`."""
    import typer
    from typer.testing import CliRunner

    from bandit_router.cli import app

    names = list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert {"serve", "check", "migrate", "evaluate", "export", "policies"} <= set(names)
    for command in ([], *([name] for name in names)):
        short = CliRunner().invoke(app, [*command, "-h"], env={"COLUMNS": "120"})
        long = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
        assert short.exit_code == long.exit_code == 0, (command, short.output)
        assert short.stdout == long.stdout and "Usage:" in short.stdout
