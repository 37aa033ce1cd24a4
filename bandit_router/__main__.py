"""`python -m bandit_router`: the `bandit-router` command (where the console script is not on PATH)."""

from .cli import main

main()
