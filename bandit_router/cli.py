"""`bandit-router`: the command line. Each sub-command lives beside the code it drives and is registered here."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from .evaluation.cli import register as register_evaluation
from .policies import REGISTRY, settings_of
from .service.cli import register as register_serve

app = typer.Typer(
    name="bandit-router",
    help="Route each LLM request to the model that answers it best for its cost, and learn from feedback.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # `-h` too: it was "No such option: -h"
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


def describe_commands() -> str:
    """Markdown for the docs' command-line page: every command, its help and every option, read from the commands
    themselves when the docs are built (`tools/mkdocs_hooks.py`), so the page cannot go stale."""
    commands: dict[str, Any] = getattr(typer.main.get_command(app), "commands", {})  # in registration order
    out: list[str] = []
    for name, command in commands.items():
        out += [f"## `bandit-router {name}`", ""]
        for paragraph in (command.help or "").replace("\\[", "[").split("\n\n"):
            out += [*_help_paragraph(paragraph.strip()), ""]
        rows = [_option_row(param) for param in command.params if not getattr(param, "hidden", False)]
        if rows:
            out += ["| option | default | meaning |", "|---|---|---|", *rows, ""]
    return "\n".join(out)


def _help_paragraph(paragraph: str) -> list[str]:
    """One paragraph of a command's help as Markdown: an `Example:` as a shell block, a grammar (`:=`) as text
    as written, prose as prose (`<model>` escaped, so that it is not read as an HTML tag)."""
    if paragraph.startswith("Example:"):
        return ["Example:", "", "```sh", " ".join(paragraph.removeprefix("Example:").split()), "```"]
    if ":=" in paragraph:
        return ["```text", paragraph, "```"]
    return [_escape(" ".join(paragraph.split()))]


def _escape(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _option_row(param: Any) -> str:
    """One table row: the option's spellings, its default, its help (pipes escaped for the table)."""
    if param.param_type_name == "argument":
        names = f"`{param.name.upper()}…` (arguments)"
    else:
        names = ", ".join(f"`{opt}`" for opt in (*param.opts, *param.secondary_opts))
    default = param.default
    help_text = " ".join((param.help or "").split())
    stated = _STATED_DEFAULT.search(help_text)  # `simulate`'s options: None here, so that --config can layer
    if param.required:
        shown = "required"
    elif stated is not None:
        kind, value = stated.groups()
        shown = f"required ({value})" if kind == "required" else f"`{value}`" if " " not in value else value
        help_text = help_text[: stated.start()] + ("." if not help_text[: stated.start()].endswith(".") else "")
    elif default is None or default == () or (getattr(param, "is_flag", False) and default is False):
        shown = ""
    elif getattr(param, "is_flag", False):
        shown = f"`{param.opts[0]}`"
    else:
        shown = f"`{default}`"
    meaning = _escape(help_text.replace("|", "\\|"))
    return f"| {names} | {_escape(shown)} | {meaning} |"


_STATED_DEFAULT = re.compile(r"\s*\((default|required): ([^()]+)\)\.?$")
"""A default (or a requirement) an option's help states in its last words, `(default: 20)`."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
