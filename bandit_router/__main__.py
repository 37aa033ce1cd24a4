"""`python -m bandit_router`: the `bandit-router` command (where the console script is not on PATH)."""

from .cli import main

if __name__ == "__main__":  # imported (a tool listing the package's modules): nothing runs
    main()
