"""The `default` policy's compiled corrections (`bandit_router.corrections_kernel`, behind
`HierarchicalThompsonPolicy.predict` once `warm_up` has checked them): φ and q̂ bit for bit what the numpy code
computes (`features.dense_vector`, w·φ, the clip, `einsum`), on real extracted contexts (an empty prompt, one past
`max_chars`, other scripts, a caller's context) and random posteriors of 1 to 64 models, corrections beyond ±1
included; and the numpy code wherever the kernel does not apply."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest

from bandit_router import corrections_kernel
from bandit_router.catalog import ModelSpec
from bandit_router.features import FeatureExtractor, dense_vector
from bandit_router.policies import hierarchical
from bandit_router.policies.hierarchical import HierarchicalParams, HierarchicalThompsonPolicy, q_hat
from bandit_router.types import Context

_WORDS = ["select", "def", "why", "the", "1 + 2", "https://x.org", "- item\n", "?", "договор", "注文", "🙂", "x" * 40]


def _prompts(rng: np.random.Generator, n: int) -> list[str]:
    """An empty prompt, a huge one (past the extractor's `max_chars`), then random mixes of words and scripts."""
    out = ["", " ".join(rng.choice(_WORDS, 9000).tolist())]
    out += [" ".join(rng.choice(_WORDS, int(rng.integers(1, 120))).tolist()) for _ in range(n - 2)]
    return out


def _contexts(n: int, seed: int = 3) -> list[Context]:
    rng = np.random.default_rng(seed)
    fx = FeatureExtractor()
    attrs = [{}, {"tenant": "acme"}, {"tenant": "b", "size": 12.5, "vip": True}, {"n": -3e12}]
    return [fx.extract(p, turns=1 + i % 3, attributes=attrs[i % 4]) for i, p in enumerate(_prompts(rng, n))]


def _posterior(rng: np.random.Generator, k: int, d: int, scale: float) -> tuple[np.ndarray, ...]:
    base, omega = rng.uniform(size=k), rng.dirichlet(np.ones(4), size=k)[:, :3].copy()
    w = rng.normal(scale=scale, size=(k, 3, d))
    for array in (base, omega, w):
        array.setflags(write=False)  # as the policy shares them (`_posterior_of`)
    return base, omega, w


def test_the_kernel_equals_numpy_bit_for_bit_on_extracted_contexts() -> None:
    """1,200 (context, posterior) pairs: 1, 2, 5, 8 or 64 models, d 32, 64 or 200, corrections small or mostly
    clipped; φ equals `dense_vector`'s bytes and q̂ the numpy formulation's bytes."""
    rng = np.random.default_rng(11)
    contexts = _contexts(120)
    assert contexts[0].features["w"][0].size == 0 and contexts[1].n_chars > FeatureExtractor().max_chars
    clipped = 0
    for i in range(1200):
        context = contexts[i % len(contexts)]
        k, d = [1, 2, 5, 8, 64][i % 5], [32, 64, 200][i % 3]
        base, omega, w = _posterior(rng, k, d, [0.01, 0.2, 5.0][i % 3 if i % 7 else 2])
        found = corrections_kernel.corrected_means(context.features, base, omega, w, d)
        assert found is not None
        phi = dense_vector(context, d)
        assert found[0].tobytes() == phi.tobytes()
        assert found[1].tobytes() == q_hat(phi, base, omega, w).tobytes()
        clipped += int((np.abs(w @ phi) > 1).any())
    assert clipped > 300  # the clip was exercised


def test_infinite_and_huge_corrections_clip_as_numpy_does() -> None:
    """w·φ of ±inf and of 10³⁰⁰-sized terms: clipped to ±1 as `np.minimum`/`np.maximum` do; a NaN stays NaN."""
    context = _contexts(3)[2]
    base, omega = np.array([0.5, 0.4, 0.3]), np.full((3, 3), 0.25)
    w = np.zeros((3, 3, 64))
    w[0, 0, 0], w[1, 1, 0], w[2, 2, 0] = np.inf, -1e300, np.nan
    found = corrections_kernel.corrected_means(context.features, base, omega, w, 64)
    assert found is not None
    want = q_hat(dense_vector(context, 64), base, omega, w)
    assert found[1][:2].tobytes() == want[:2].tobytes() and np.isnan(found[1][2]) and np.isnan(want[2])


def test_what_the_kernel_does_not_take_is_left_to_numpy() -> None:
    """Other namespaces or their order, int64 indices or float64 values (a context built by hand), and shapes that
    are not the policy's: None, and the policy computes the same values in numpy."""
    context = _contexts(3)[2]
    base, omega, w = _posterior(np.random.default_rng(1), 3, 64, 0.1)
    reordered = dict(reversed(list(context.features.items())))
    by_hand = {ns: (i.astype(np.int64), v.astype(np.float64)) for ns, (i, v) in context.features.items()}
    assert corrections_kernel.corrected_means(reordered, base, omega, w, 64) is None
    assert corrections_kernel.corrected_means(by_hand, base, omega, w, 64) is None
    assert corrections_kernel.corrected_means(context.features, base, omega, w[:, :2].copy(), 64) is None  # L ≠ 3
    assert corrections_kernel.corrected_means(context.features, base[:2].copy(), omega, w, 64) is None
    assert corrections_kernel.corrected_means(context.features, base, omega, w, 32) is None  # d ≠ w's


def _trained(warm: bool, models: tuple[ModelSpec, ...], contexts: list[Context]) -> HierarchicalThompsonPolicy:
    policy = HierarchicalThompsonPolicy(HierarchicalParams())
    if warm:
        policy.warm_up()
    rng = np.random.default_rng(5)
    for i in range(300):
        policy.update(contexts[i % len(contexts)], models[i % len(models)], float(rng.uniform() < 0.6), 0.2)
    return policy


@pytest.mark.parametrize("n_models", [1, 5, 40])
def test_the_policy_predicts_and_learns_the_same_with_and_without_the_kernel(n_models: int) -> None:
    """A warmed policy (the kernel checked and used) and one that never warmed up (numpy), trained on the same 300
    feedbacks: the same q̂ bytes on every context (one built by hand, which the warmed policy computes in numpy),
    and the same learned state after predicting then learning."""
    models = tuple(ModelSpec(f"m{i}", 1.0, 2.0, tags={"family": f"f{i % 3}"}) for i in range(n_models))
    contexts = _contexts(40, seed=8)
    fused, plain = _trained(True, models, contexts), _trained(False, models, contexts)
    assert fused._fused is not None and plain._fused is None
    by_hand = {ns: (i.astype(np.int64), v.astype(np.float64)) for ns, (i, v) in contexts[5].features.items()}
    base, _, omega, w = fused._posterior_of(models)
    assert fused._fused(by_hand, base, omega, w, 64) is None  # int64 indices: the kernel does not take them
    hand = Context(features=by_hand, input_tokens=1, n_chars=1, turns=1, markers=frozenset(), attributes={}, text="")
    for context in [*contexts, hand]:  # the last one through numpy's path in the warmed policy too
        (a, sd_a), (b, sd_b) = fused.predict(context, models), plain.predict(context, models)
        assert a.tobytes() == b.tobytes() and sd_a.tobytes() == sd_b.tobytes()
        for policy in (fused, plain):
            policy.update(context, models[0], 0.7, 0.5)  # φ kept from predict (`_phi_of`) and learned from
    assert fused.weights().tobytes() == plain.weights().tobytes()


def test_only_the_thompson_sampler_loads_it() -> None:
    """`sampler=ids` routes without numba, as before; `checked` holds on this machine (else the route is slower)."""
    ids = HierarchicalThompsonPolicy(HierarchicalParams(sampler="ids"))
    ids.warm_up()
    assert ids._fused is None
    assert corrections_kernel.checked(64) and corrections_kernel.checked(64, seed=13)


def test_a_machine_where_the_kernel_rounds_otherwise_routes_with_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where `checked` finds a byte that differs (another BLAS, another `einsum` loop), `warm_up` leaves `predict` to
    numpy: the decisions stay numpy's wherever the kernel would not give them."""
    monkeypatch.setattr(corrections_kernel, "checked", lambda dim: False)
    policy = HierarchicalThompsonPolicy(HierarchicalParams())
    policy.warm_up()
    assert policy._fused is None


@pytest.fixture
def fresh_check() -> Iterator[None]:
    """`checked`'s once-per-process answers forgotten before and after (a test that makes the kernel round
    otherwise must not leave its answer to the others)."""
    corrections_kernel.checked.cache_clear()
    yield
    corrections_kernel.checked.cache_clear()


@pytest.mark.usefixtures("fresh_check")
def test_the_check_covers_the_policys_own_dim(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A BLAS may take another path for some lengths only (its blocks, the tail of d mod 4); a kernel whose sums
    differ only at d = 100 (a `dim` the policy allows) must leave a dim = 100 policy to numpy, while a dim = 64
    policy keeps it, and the process says so in a warning. The check once tried d 32, 64 and 128 only, and the
    dim = 100 policy routed with the kernel's other bits, silently."""
    real = corrections_kernel.corrections

    def rounds_otherwise_at_100(*args: np.ndarray) -> int:
        status = int(real(*args))
        if args[13].shape[0] == 100:
            args[14][:] = np.nextafter(args[14], np.inf)  # q̂ one ulp up, as another summation order may give
        return status

    monkeypatch.setattr(corrections_kernel, "corrections", rounds_otherwise_at_100)
    odd, usual = (HierarchicalThompsonPolicy(HierarchicalParams(dim=d)) for d in (100, 64))
    with caplog.at_level(logging.WARNING, logger="bandit_router.policies"):
        odd.warm_up()
        usual.warm_up()
    assert odd._fused is None and usual._fused is not None
    said = [r.getMessage() for r in caplog.records]  # once, not left for a slower route to show
    assert len(said) == 1 and "d = 100)" in said[0] and "the default policy computes them in numpy" in said[0]


@pytest.mark.usefixtures("fresh_check")
def test_the_check_compares_with_what_predict_computes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check's reference is `predict`'s own numpy formulation (`hierarchical.q_hat`), not a copy of it: where
    `predict` sums Σ_l in another order, (p₀ + p₁) + p₂, the kernel no longer gives its values and is not used.
    It was compared with a copy (`_numpy_means`), which a change of `predict` would have left behind."""
    def in_another_order(phi: np.ndarray, base: np.ndarray, omega: np.ndarray, w: np.ndarray) -> np.ndarray:
        c = np.maximum(np.minimum(w @ phi, 1.0), -1.0)
        return np.asarray(base + ((omega[:, 0] * c[:, 0] + omega[:, 1] * c[:, 1]) + omega[:, 2] * c[:, 2]))

    monkeypatch.setattr(hierarchical, "q_hat", in_another_order, raising=False)
    assert not corrections_kernel.checked(64)


def test_a_context_built_by_hand_is_left_to_numpy_before_numbas_dispatcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Indices or values of other dtypes in the words namespace (a context built by hand, a caller's own extractor)
    go to numpy without calling the kernel: numba's refusal of the arguments (its TypeError, the message listing
    every argument's type) cost 0.24–0.51 ms per route, five to ten times the route it meant to speed up."""
    context = _contexts(3)[2]
    base, omega, w = _posterior(np.random.default_rng(1), 3, 64, 0.1)
    calls: list[int] = []
    real = corrections_kernel.corrections

    def counted(*args: np.ndarray) -> int:
        calls.append(1)
        return int(real(*args))

    monkeypatch.setattr(corrections_kernel, "corrections", counted)
    for indices, values in [(np.int64, np.float32), (np.uint32, np.float64), (np.int64, np.float64)]:
        by_hand = {ns: (i.astype(indices), v.astype(values)) for ns, (i, v) in context.features.items()}
        assert corrections_kernel.corrected_means(by_hand, base, omega, w, 64) is None
    assert not calls
    assert corrections_kernel.corrected_means(context.features, base, omega, w, 64) is not None and calls == [1]
