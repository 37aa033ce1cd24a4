"""The compiled Thompson quadrature (`bandit_router.argmax_kernel`, behind `exploration.gaussian_argmax_pmf`): the
same rule as a plain numpy transcription to rounding level, the same answers on the inputs the Python checks decide
(non-finite, degenerate, one arm in play), any array it is given, and a graceful start where numba cannot cache."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.special import log_ndtr

from bandit_router import argmax_kernel, exploration


def _numpy_rule(mean: np.ndarray, sd: np.ndarray, dominance: float = 3.0, nodes: int = 16) -> np.ndarray:
    """The union-grid trapezoid rule written plainly in numpy with scipy's `log_ndtr` (what the kernel replaced)."""
    alive = exploration._alive(mean.tolist(), sd.tolist(), dominance)
    out = np.zeros(len(mean))
    if len(alive) == 1:
        out[alive[0]] = 1.0
        return out
    m, s = mean[alive][:, None], sd[alive][:, None]
    t = np.sort((m + s * exploration._hermite(nodes)).ravel())
    z = (t - m) / s
    logs = log_ndtr(z)
    integrand = np.exp(logs.sum(axis=0) - logs - 0.5 * z * z) / s
    p = ((integrand[:, 1:] + integrand[:, :-1]) * np.diff(t)).sum(axis=1)
    out[alive] = p / p.sum()
    return out


def test_the_kernel_computes_the_numpy_rule_to_rounding() -> None:
    """4,000 seeded posteriors of 2–8 arms (means and sds from 10⁻³ to 10 apart, ties, dominated arms, 3 or 16
    nodes): |Δp| ≤ 10⁻¹⁴ (measured 4.4·10⁻¹⁶ over 20,000 against the numpy code it replaced:
    `python -m benchmarks.pmf_jit`)."""
    rng = np.random.default_rng(7)
    worst, dominated = 0.0, 0
    for i in range(4000):
        k = int(rng.integers(2, 9))
        mean = rng.normal(0.5, [0.001, 0.1, 1.0, 10.0][i % 4], k)
        sd = rng.uniform(0.001, [0.01, 0.1, 1.0, 3.0][i % 3], k)
        if i % 5 == 0:
            mean[1], sd[1] = mean[0], sd[0]
        nodes = 3 if i % 7 == 0 else 16
        got, want = exploration.gaussian_argmax_pmf(mean, sd, 3.0, nodes), _numpy_rule(mean, sd, 3.0, nodes)
        worst = max(worst, float(np.abs(got - want).max()))
        dominated += int((want == 0).any())
        if i % 5 == 0:
            assert got[0] == got[1]  # an exact tie shares
    assert worst <= 1e-14
    assert dominated > 500  # the dominance cut was exercised


def test_the_python_checks_still_decide_what_the_kernel_hands_back() -> None:
    """A degenerate arm in play (sd 0, or 10⁻⁹ of another's) goes to the per-arm integration as before; one arm
    in play is a one-hot; no arms is a ValueError, and so is a negative dominance (it leaves no arm with an sd in
    play: a ZeroDivisionError before); NaN still names the function."""
    point = exploration.gaussian_argmax_pmf(np.array([0.5, 0.4]), np.array([0.0, 0.1]))
    assert point.tolist() == exploration._argmax_pmf_per_arm([0.5, 0.4], [0.0, 0.1], [0, 1]).tolist()
    assert point.tolist() == pytest.approx([0.841344746, 0.158655254], abs=1e-3)  # Φ(1), Φ(−1)
    narrow = exploration.gaussian_argmax_pmf(np.array([0.5, 0.5]), np.array([1e-9, 0.1]))
    assert narrow.tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    assert exploration.gaussian_argmax_pmf(np.array([0.5, 0.1, 0.2]), np.array([0.01, 0.01, 0.01])).tolist() == [
        1.0, 0.0, 0.0,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="no arm is in play"):  # a ZeroDivisionError before
        exploration.gaussian_argmax_pmf(np.array([0.5, 0.4]), np.array([0.1, 0.1]), -1.0)
    with pytest.raises(ValueError):
        exploration.gaussian_argmax_pmf(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="gaussian_argmax_pmf: scores, means and sds must be finite"):
        exploration.gaussian_argmax_pmf(np.array([0.5, np.nan]), np.array([0.1, 0.1]))


def test_any_array_is_taken_as_float64() -> None:
    """The kernel's signature is contiguous, writable float64 vectors; integers, float32, a strided view and a
    read-only array are converted first (never a compilation at call time), with the same pmf."""
    mean, sd = np.array([0.5, 0.25, 0.5, 0.75]), np.array([0.25, 0.5, 0.25, 0.5])
    want = exploration.gaussian_argmax_pmf(mean, sd)
    frozen = mean.copy()
    frozen.setflags(write=False)
    for m, s in [
        (np.array([2, 1, 2, 3]) / 4, sd.astype(np.float32)),
        (np.repeat(mean, 2)[::2], sd),
        (frozen, sd),
        (mean.tolist(), sd.tolist()),
    ]:
        assert exploration.gaussian_argmax_pmf(m, s).tobytes() == want.tobytes()  # type: ignore[arg-type]
    assert len(argmax_kernel.argmax_pmf.signatures) == 1


def test_without_a_writable_cache_the_kernel_compiles_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """numba refuses `cache=True` (RuntimeError) when neither the package's folder nor its user-wide cache folder
    is writable; `_jit` then compiles without the cache instead of failing at import."""
    calls: list[dict[str, Any]] = []

    def fake_njit(signature: str, **options: Any) -> Any:
        calls.append(options)
        if options.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'f.py'")
        return lambda function: function

    monkeypatch.setattr(argmax_kernel, "njit", fake_njit)

    def f() -> int:
        return 1

    assert argmax_kernel._jit("int64()")(f) is f
    assert calls == [{"cache": True}, {}]


def test_means_and_sds_of_different_lengths_are_refused() -> None:
    """The kernel has no bounds checks: with more means than sds it read the sds' memory past their end (a pmf from
    whatever followed: from a view of a longer array, that array's next value), and with more sds it ignored the
    extra ones, where the numpy code raised `ValueError`. It raises again, both ways."""
    longer = np.array([0.1, 0.1, 0.2])
    for mean, sd in [(np.array([0.5, 0.4, 0.45]), longer[:2]), (np.array([0.5, 0.4]), longer)]:
        with pytest.raises(ValueError, match="zip"):
            exploration.gaussian_argmax_pmf(mean, sd)
        with pytest.raises(ValueError, match="zip"):
            exploration.gaussian_argmax_pmfs([mean], [sd])


def test_the_kernel_uses_explorations_thresholds() -> None:
    """The kernel repeats three of `exploration`'s constants (a compiled function freezes the globals it reads, and
    its cache is keyed on its own file only, so it cannot read them from there): they must stay equal, or its quick
    proof and `_degenerate` would disagree about which inputs are degenerate."""
    assert argmax_kernel._TIE_TOLERANCE == exploration.TIE_TOLERANCE
    assert argmax_kernel._DEGENERATE_RATIO == exploration.DEGENERATE_RATIO
    assert argmax_kernel._DEGENERATE_PRECISION == exploration.DEGENERATE_PRECISION


def test_checking_the_settings_does_not_load_numba(tmp_path: Path) -> None:
    """`Settings.check` builds the policy to check it; the default policy loaded its compiled quadrature when built
    (≈ 140 MB of numba and LLVM, ≈ 0.4 s of CPU), so `check` and the parent of `serve --workers N`, which
    route nothing, held it too (the parent for the server's life). A `Router` loads it, before its first route."""
    code = (
        "import sys\n"
        "from bandit_router.config import load_settings\n"
        f"load_settings(None, overrides={{'db': {str(tmp_path / 'r.db')!r}}}, stored_models=True)\n"
        "print('numba' in sys.modules)\n"
        "from bandit_router import Router, default_catalog\n"
        "Router(list(default_catalog())[:3], 'default', seed=0)\n"
        "print('bandit_router.argmax_kernel' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


def test_the_kernels_quick_proof_answers_as_the_python_checks() -> None:
    """Where the kernel settles a pmf itself (`OK` without `checked`), `exploration._degenerate` says no arm in play
    is degenerate and every arm it gives mass is one `_alive` keeps; `NOT_FINITE` only for NaN or infinite values.
    On 30,000 seeded inputs (`exploration._in_play`'s test before the proof moved into the kernel): ordinary
    posteriors, sds and means at and around both thresholds (sd ratio 10⁻⁶, sd ÷ |mean| 10⁻¹³), zeros, subnormal,
    huge, infinite and NaN values, negative sds, ties, and dominances of 0, 3, negative, infinite and NaN."""
    rng = np.random.default_rng(12)
    special = [0.0, -0.0, 5e-324, 1e-310, 1e-300, 1e-14, 1e-13, 1e-7, 1e-6, 0.1, 1.0, 1e6, 1e13, 1e15, 1e300,
               1.7e308, math.inf, -math.inf, math.nan, -1e-13, -0.1, -1.0, -1e15]
    u = exploration._hermite(16)
    counts = dict.fromkeys((argmax_kernel.OK, argmax_kernel.NOT_FINITE, argmax_kernel.UNCHECKED), 0)
    for case in range(30_000):
        k = int(rng.integers(1, 9))
        kind = case % 6
        if kind == 0:  # ordinary posteriors
            means, sds = rng.normal(0, 1, k), rng.uniform(0.01, 0.3, k)
        elif kind == 1:  # an sd around 10⁻⁶ × the widest
            sds = rng.uniform(0.05, 0.2, k)
            sds[rng.integers(k)] = sds.max() * 1e-6 * (1 + float(rng.choice([-1, 1])) * 10.0 ** -rng.integers(8, 17))
            means = rng.normal(0, 1, k)
        elif kind == 2:  # an sd around 10⁻¹³ × the largest |mean|
            scale = 10.0 ** rng.integers(-3, 16)
            means = rng.normal(0, scale, k)
            sds = rng.uniform(0.5, 1.0, k) * np.abs(means).max() * 1e-13 * (1 + rng.normal(0, 1e-9, k))
        elif kind == 3:  # special values anywhere
            means, sds = rng.choice(special, k), rng.choice(special, k)
        elif kind == 4:  # ties and point masses
            means, sds = np.full(k, float(rng.normal())), rng.choice([0.0, 1e-13, 0.1], k)
        else:  # huge λ·cost shifts with small sds
            means = -6e6 + rng.uniform(-0.002, 0.002, k)
            sds = rng.uniform(1e-3, 1.2e-3, k) * 10.0 ** -rng.integers(0, 12)
        dominance = float(rng.choice([3.0, 3.0, 1.5, 0.0, -1.0, math.inf, math.nan]))
        mean, sd = np.array(means, dtype=np.float64), np.array(sds, dtype=np.float64)
        out = np.zeros(k)
        status = argmax_kernel.argmax_pmf(mean, sd, u, dominance, out, False)
        counts[status] += 1
        listed = mean.tolist(), sd.tolist()
        finite = all(map(math.isfinite, listed[0] + listed[1]))
        if status == argmax_kernel.OK:
            alive = exploration._alive(*listed, dominance)
            assert finite and alive and not exploration._degenerate(*listed, alive), (listed, dominance)
            assert set(np.flatnonzero(out).tolist()) <= set(alive), (listed, dominance, out)
        else:
            assert (status == argmax_kernel.NOT_FINITE) == (not finite), (listed, dominance, status)
    assert counts[argmax_kernel.OK] > 5_000 and counts[argmax_kernel.UNCHECKED] > 5_000  # both answers were met


def test_negative_sds_are_named_in_the_error() -> None:
    """Negative sds leave no arm in play as a negative dominance does; the `ValueError` said "with dominance 3.0 (it
    must be ≥ 0)", blaming a valid dominance. It names the sds too."""
    with pytest.raises(ValueError, match=r"dominance 3.0 and sds \[-0.1, -0.2\] \(the dominance and every sd must"):
        exploration.gaussian_argmax_pmf(np.array([0.5, 0.4]), np.array([-0.1, -0.2]))
