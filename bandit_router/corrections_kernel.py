"""The `default` policy's prompt corrections in one compiled call (numba): φ = `features.dense_vector(context, d)`
and, per model k, q̂_k(φ) = μ̂_k + Σ_l ω_kl·clip(w_kl·φ, −1, 1) (`HierarchicalThompsonPolicy.predict`).

In numpy these were ≈ 12 calls on arrays of 3 to 64 values (`bincount`, a Python loop over the small namespaces,
`w @ φ`, two clips, `einsum`), each 0.5–1.5 µs of dispatch for a few hundred flops. The same values bit for bit, in
the same order of operations (no fast-math, no fused multiply-add):

- φ: slot 0 the bias 1; each word's value (float32, widened) added to slot 16 + h mod (d − 16) in feature order, as
  `bincount` sums; the small namespaces' values to slot 1 + h mod 15 in namespace, then feature order, as the loop.
- w_kl·φ: `np.dot` of each model's (L, d) block with φ, which numba hands to BLAS `dgemv` (scipy's OpenBLAS), where
  numpy's `w @ φ` hands the same (L, d) blocks to `dgemv` (numpy's OpenBLAS). A sum in another order differs in the
  last bits for almost every input, so nothing else can be bit for bit;
- clip as `np.minimum` then `np.maximum` (NaN stays NaN); Σ_l for L = 3 as numpy's `einsum("kl,kl->k")` sums three
  products, (p₀ + p₂) + p₁.

Two BLAS builds, and numpy's `einsum` on another CPU, may round otherwise, so `checked(dim)` compares this with
the numpy formulation `predict` runs otherwise (`hierarchical.q_hat` itself, not a copy) on seeded inputs, at the
policy's dim among others, when the policy warms up, and the policy uses it only where every value is the same
(`tests/test_corrections_kernel.py`). Compiled and cached like `argmax_kernel` (its `_jit`: the signature given,
`cache=True`); imported by `HierarchicalThompsonPolicy.warm_up` only, never by `import bandit_router`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping

import numpy as np
from numba import types

from .argmax_kernel import _jit
from .features import dense_vector
from .policies import hierarchical
from .types import Context

OK, UNSUPPORTED = 0, 1
"""`corrections`' answers: φ and the means are written; the shapes are not the policy's (nothing written)."""
NAMESPACES = ("w", "l", "m", "t", "c")
"""`FeatureExtractor`'s namespaces in its order: the words, then the small ones (a context with others: numpy)."""

_U32, _F32 = (types.Array(t, 1, "C", readonly=True) for t in (types.uint32, types.float32))
_F64 = [types.Array(types.float64, n, "C", readonly=True) for n in (1, 2, 3)]
_SIGNATURE = types.int64(
    _U32, _F32, _U32, _F32, _U32, _F32, _U32, _F32, _U32, _F32,  # (indices, values) of w, l, m, t, c
    _F64[0], _F64[1], _F64[2], types.float64[::1], types.float64[::1],  # μ̂ (K), ω (K, L), w (K, L, d); φ, q̂ out
)  # fmt: skip
_Sparse = tuple[np.ndarray, np.ndarray]
_UINT32, _FLOAT32 = np.dtype(np.uint32), np.dtype(np.float32)
log = logging.getLogger("bandit_router.policies")


@_jit(_SIGNATURE)  # type: ignore[arg-type]  # a numba signature object, where `_jit`'s type says str
def corrections(
    wi: np.ndarray, wv: np.ndarray, li: np.ndarray, lv: np.ndarray, mi: np.ndarray, mv: np.ndarray,
    ti: np.ndarray, tv: np.ndarray, ci: np.ndarray, cv: np.ndarray,
    base: np.ndarray, omega: np.ndarray, w: np.ndarray, phi: np.ndarray, mean: np.ndarray,
) -> int:
    """Write φ into `phi` (d ≥ 32 values) and q̂ into `mean` (K), and return `OK`; `UNSUPPORTED` (nothing written)
    unless the shapes are K, (K, 3), (K, 3, d), d ≥ 32 and K (no bounds checks here: checked first)."""
    k, d = base.shape[0], phi.shape[0]
    if (d < 32 or omega.shape[0] != k or omega.shape[1] != 3 or w.shape[0] != k or w.shape[1] != 3
            or w.shape[2] != d or mean.shape[0] != k or wi.shape[0] != wv.shape[0] or li.shape[0] != lv.shape[0]
            or mi.shape[0] != mv.shape[0] or ti.shape[0] != tv.shape[0] or ci.shape[0] != cv.shape[0]):
        return UNSUPPORTED
    n_words = d - 16
    for j in range(d):
        phi[j] = 0.0
    phi[0] = 1.0
    for i in range(wi.shape[0]):
        phi[16 + wi[i] % n_words] += np.float64(wv[i])
    for idx, val in ((li, lv), (mi, mv), (ti, tv), (ci, cv)):
        for i in range(idx.shape[0]):
            phi[1 + idx[i] % 15] += np.float64(val[i])
    c = np.empty(3)
    for a in range(k):
        np.dot(w[a], phi, c)
        for level in range(3):
            x = c[level]
            if x > 1.0:  # np.minimum(c, 1) then np.maximum(c, −1): a NaN stays NaN
                x = 1.0
            if x < -1.0:
                x = -1.0
            c[level] = x
        mean[a] = base[a] + ((omega[a, 0] * c[0] + omega[a, 2] * c[2]) + omega[a, 1] * c[1])
    return OK


def corrected_means(
    features: Mapping[str, _Sparse], base: np.ndarray, omega: np.ndarray, w: np.ndarray, dim: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(φ, q̂) by `corrections`, or None where it does not apply (other namespaces, dtypes or shapes): the caller
    computes them in numpy."""
    if tuple(features) != NAMESPACES:
        return None
    (wi, wv), (li, lv), (mi, mv), (ti, tv), (ci, cv) = features.values()
    phi, mean = np.empty(dim), np.empty(len(base))
    try:  # a context built by hand (int64 indices, float64 values) is refused here: numba's own refusal (its
        if wi.dtype != _UINT32 or wv.dtype != _FLOAT32:  # TypeError, which types every argument) costs ≈ 0.3 ms
            return None
        status = corrections(wi, wv, li, lv, mi, mv, ti, tv, ci, cv, base, omega, w, phi, mean)
    except (TypeError, AttributeError):  # other dtypes or layouts elsewhere (numba's signature), or not arrays
        return None
    return (phi, mean) if status == OK else None


@functools.cache
def checked(dim: int, seed: int = 12, cases: int = 64) -> bool:
    """Whether `corrected_means` gives `dense_vector`'s φ and `predict`'s q̂ (`q_hat`) bit for bit on `cases` seeded
    random inputs: words and small namespaces with hash collisions, corrections beyond ±1; 1–12 models, half of
    them at `dim` (the policy's: BLAS `dgemv` takes other paths for other lengths, its blocks and the tail of
    d mod 4, so d 32, 64 and 128 alone say nothing of d = 100) and half at d 32–128, three of those with 64, 256
    and 1,024 models at d 32 (numpy's matmul calls `dgemv` per model, its `einsum` loops over all of them). Once per
    process and dim (≈ 8 ms at d = 64, 14 ms at 1,024: corrections-check-review23perf.txt)."""
    rng = np.random.default_rng(seed)
    for case in range(cases):
        many = case in (1, 3, 5)
        k = (64, 256, 1024)[case // 2] if many else int(rng.integers(1, 13))
        d = dim if case % 2 == 0 else 32 if many else int(rng.choice([32, 64, 128]))
        features = {}
        for ns, most in zip(NAMESPACES, (60, 3, 3, 2, 4), strict=True):
            n = int(rng.integers(0, most))
            features[ns] = (rng.integers(0, 2**32, size=n, dtype=np.uint32), rng.normal(size=n).astype(np.float32))
        context = Context(features=features, input_tokens=1, n_chars=1, turns=1, markers=frozenset(), attributes={},
                          text="")
        base, omega = rng.uniform(size=k), rng.dirichlet(np.ones(4), size=k)[:, :3].copy()
        w = rng.normal(scale=0.3 if case % 2 else 0.05, size=(k, 3, d))
        found = corrected_means(features, base, omega, w, d)
        phi = dense_vector(context, d)
        if found is None or found[0].tobytes() != phi.tobytes() \
                or found[1].tobytes() != hierarchical.q_hat(phi, base, omega, w).tobytes():
            log.warning("the compiled prompt corrections differ from numpy's here (K = %d, d = %d): the default "
                        "policy computes them in numpy, ≈ 14 µs more per route (performance.md, eighth pass)", k, d)
            return False
    return True
