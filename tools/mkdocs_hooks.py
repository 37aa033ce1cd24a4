"""MkDocs hooks: pages that are generated from the code, so that they cannot go stale.

`{{ settings_table }}` in a page becomes `bandit_router.config.describe_keys()`: every key, its section, its
default and its help text, read from the settings' own fields. `{{ cli_reference }}` becomes
`bandit_router.cli.describe_commands()`: every command of `bandit-router`, its help and its options.
"""

from __future__ import annotations

from typing import Any

PLACEHOLDERS = {
    "{{ settings_table }}": "bandit_router.config:describe_keys",
    "{{ cli_reference }}": "bandit_router.cli:describe_commands",
}


def render(markdown: str) -> str:
    """`markdown` with every placeholder replaced by what generates it."""
    import importlib

    for placeholder, target in PLACEHOLDERS.items():
        if placeholder in markdown:
            module, _, name = target.partition(":")
            markdown = markdown.replace(placeholder, getattr(importlib.import_module(module), name)())
    return markdown


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return render(markdown)
