"""Seeded bootstrap resampling shared by the estimators and the reward models."""

from __future__ import annotations

import functools

import numpy as np

_CACHE_CELLS = 4_000_000
"""Resampling counts of at most this many cells (n_bootstrap × n) are cached (32 MB), so every estimator and
candidate of one evaluation reuses the same resamples instead of drawing them again."""


def bootstrap_counts(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """Resampling counts of the nonparametric bootstrap, shape (n_bootstrap, n); each row sums to n.

    Seeded: the same (n, n_bootstrap, seed) always gives the same resamples. Do not modify the result.
    """
    if n_bootstrap * n <= _CACHE_CELLS:
        return _cached_counts(n, n_bootstrap, seed)
    return _draw_counts(n, n_bootstrap, seed)


def _draw_counts(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, n])
    picks = rng.integers(0, n, size=(n_bootstrap, n)) + (np.arange(n_bootstrap) * n)[:, None]
    return np.bincount(picks.ravel(), minlength=n_bootstrap * n).reshape(n_bootstrap, n).astype(np.float64)


@functools.lru_cache(maxsize=2)
def _cached_counts(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    counts = _draw_counts(n, n_bootstrap, seed)
    counts.flags.writeable = False
    return counts
