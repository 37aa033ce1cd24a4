"""`bandit-router`: the command line. Each sub-command lives beside the code it drives and is registered here."""

from __future__ import annotations

from typing import Annotated

import typer

from .evaluation.cli import register as register_evaluation
from .policies import REGISTRY, settings_of
from .service.cli import register as register_serve

app = typer.Typer(
    name="bandit-router",
    help="Route each LLM request to the model that answers it best for its cost, and learn from feedback.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"bandit-router {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    """Route each LLM request to the model that answers it best for its cost, and learn from feedback."""


@app.command("policies")
def list_policies() -> None:
    """List the registered routing policies and the settings each takes (`name:key=value,…`)."""
    for name, entry in REGISTRY.items():
        fields = ", ".join(f"{key}={default!r}" for key, default in settings_of(name).items())
        typer.echo(f"{name:<12} {entry.summary}" + (f"\n{'':<12} settings: {fields}" if fields else ""))


def _add_simulate() -> None:
    """`simulate` lives in the `simulator` package; it is optional, so the core does not import it."""
    try:
        from simulator.cli import simulate
    except ImportError:  # pragma: no cover - the simulator is not installed
        return
    app.command("simulate")(simulate)


_add_simulate()


register_serve(app)
register_evaluation(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
