"""What a seeded router decides, pinned: a speed-up of the hot path must leave every decision as it was.

One mixed stream (plain prompts and chats, the caller's context, model subsets, per-request λ, a model added and one
retired at run time, a budget pacer in one variant) is routed and learned with a fixed seed. Pinned:

- the chosen arm of every decision, exactly (a different pmf or a different draw changes it within a few steps);
- a few pmfs, to 1e-12 (robust to another platform's last bit in `exp` or BLAS); VW's to 1e-3, since it learns in
  float32 and a last bit there compounds over its updates (relative 5.2e-6 at step 7, 1.2e-4 at step 263 on a
  Sapphire Rapids CPU against the recording one, the chosen arms the same);
- a SHA-256 of everything each decision carries (pmf, probability, λ, expected costs, version, the hashed
  features and the default policy's dense vector, as `float.hex`), the learned weights and the snapshot: the
  values bit for bit. A platform's numpy/scipy (SIMD `exp`, OpenBLAS kernels chosen by the CPU model), glibc's
  libm and VW's build may round a last bit differently, so the digest is checked on the platform it was recorded
  on (`PLATFORM`: the CPU's model and features included, since two AVX-512 CPUs gave different LinUCB and VW
  digests with the same packages); elsewhere the first two still hold.

The arms and pmfs were recorded at commit 7c7aef41 (before the fourth hot-path pass), Python 3.11.7, numpy 2.4.6,
scipy 1.17.1; the `default` entries re-recorded when that policy's prior variance and then its noise prior changed
(changes of behaviour, not of speed). The digests were re-recorded at commit 891a752f on the platform `PLATFORM`
names, when CI moved to it (the arms and pmfs held there; the default policy's digests were unchanged), and again
on that platform when snapshots began to record the policy's settings (`policy_settings`): only the snapshot's
bytes changed (the new digests without the snapshot, and with that one key removed from it, are the old ones).
The `default` digests were re-recorded when its priors became sums per group (`hierarchical._peer_sums`, O(K)
where a (3, K, K) matrix product was quadratic in the rows): the route-time prior means round their last bit
differently; the arms and pmfs held.
The `default` digests were re-recorded when the Thompson quadrature was compiled (`argmax_kernel`, numba: libm's
`erfc` and `exp` where numpy's SIMD `exp` and scipy's `log_ndtr` were, Φ multiplied where its logs were summed):
its pmfs differ from the numpy code's in the last bits, max |Δp| 2.8·10⁻¹⁶ on these streams and 4.4·10⁻¹⁶ on
20,000 seeded posteriors, and no chosen arm changed (`python -m benchmarks.pmf_jit --base CHECKOUT --label
perf12`, `benchmarks/results/profiles/pmf-jit-perf12.txt`). They were recorded on an AMD Zen 4 machine (Python
3.11.7, numpy 2.4.6, scipy 1.17.1, numba 0.68.1, glibc 2.36), where the previous `default` digests held as on
`PLATFORM`; the kernel is compiled without fast-math (no fused or reordered operations), so they should hold there,
but that was not seen: they are checked on the platform they were recorded on (`DEFAULT_PLATFORM`, numba's version
included), the other variants' on `PLATFORM`, and the arms and pmfs everywhere.
To re-record: run `run_stream(policy, budget=…)` for each variant on its platform's machine and paste its digest.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from typing import Any

import numpy as np
import pytest
import scipy

from bandit_router.budgets import BudgetConfig, BudgetPacer
from bandit_router.catalog import ModelSpec, default_catalog
from bandit_router.features import dense_vector
from bandit_router.router import Router
from bandit_router.types import Decision, Message, Outcome, Request

VOCABULARY = (
    "python function compile bug stack trace refactor class method loop array integral prove equation "
    "derivative matrix probability theorem solve weekend recipe holiday movie friend travel story advice "
    "music garden def return import lambda select 3 + 4 = 7 café 東京 résumé why how could should"
)
WORDS = VOCABULARY.split()


def _cpu_model() -> str:
    """'vendor family model flags-digest' of the first CPU in /proc/cpuinfo (what OpenBLAS and numpy choose their
    kernels by: a hypervisor may report one model with different features masked), or ''."""
    try:
        with open("/proc/cpuinfo") as f:
            pairs = [line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line]
    except OSError:
        return ""
    fields = {key.strip(): value.strip() for key, value in pairs}
    flags = hashlib.sha256(" ".join(sorted(fields.get("flags", "").split())).encode()).hexdigest()[:12]
    return " ".join([*(fields.get(key, "") for key in ("vendor_id", "cpu family", "model")), flags])


PLATFORM = ("x86_64", "GenuineIntel 6 167 fc7df03f53a7", "glibc 2.36", "2.4.6", "1.17.1", "0.7.0")
"""(machine, CPU model, libc, numpy, scipy, vowpal-wabbit-next) where `DIGESTS` of LinUCB and VW were recorded."""
DEFAULT_PLATFORM = ("x86_64", "AuthenticAMD 25 17 6a93d771884c", "glibc 2.36", "2.4.6", "1.17.1", "0.7.0", "0.68.1")
"""Where the `default` policy's `DIGESTS` were recorded: `PLATFORM`'s fields, and numba, which compiles its pmf."""


def _platform() -> tuple[str, ...]:
    libc, libc_version = platform.libc_ver()
    vw_version = importlib.metadata.version("vowpal-wabbit-next")
    return (
        platform.machine(), _cpu_model(), f"{libc} {libc_version}", np.__version__, scipy.__version__, vw_version
    )


def _request(rng: np.random.Generator, names: list[str], step: int) -> Request:
    words = list(rng.choice(WORDS, size=int(rng.integers(1, 90))))
    text = " ".join(words) + ("?" if rng.random() < 0.3 else "")
    kind = step % 6
    context: dict[str, Any] = {}
    if kind == 1:
        context = {"tenant": str(rng.choice(["acme", "globex"])), "tier": int(rng.integers(0, 3)), "vip": True}
    if kind == 2:
        messages = tuple(
            Message(role, text[: 40 * (i + 1)] or "x") for i, role in enumerate(("user", "assistant", "user"))
        )
        return Request(messages=messages, context=context)
    models = None
    if kind == 3:
        models = tuple(str(m) for m in rng.choice(names, size=int(rng.integers(1, len(names) + 1)), replace=False))
    cost_weight = float(rng.choice([0.0, 5.0, 200.0])) if kind == 4 else None
    decision_id = f"pin-{step}" if kind == 5 else None
    return Request(prompt=text, context=context, models=models, cost_weight=cost_weight, decision_id=decision_id)


def _hex(values: Any) -> tuple[str, ...]:
    return tuple(float(v).hex() for v in np.asarray(values, dtype=np.float64).ravel().tolist())


def _record(decision: Decision) -> tuple[Any, ...]:
    ctx = decision.context
    features = tuple((ns, tuple(idx.tolist()), _hex(val)) for ns, (idx, val) in ctx.features.items())
    return (
        decision.model, decision.arm, decision.models, _hex(decision.pmf), decision.probability.hex(),
        decision.policy, decision.policy_version, float(decision.cost_weight).hex(), _hex(decision.expected_cost_usd),
        ctx.input_tokens, ctx.n_chars, ctx.turns, tuple(sorted(ctx.markers)), features,
        _hex(dense_vector(ctx, 64)),
    )  # fmt: skip


def run_stream(policy: str, *, budget: bool = False, steps: int = 240) -> tuple[str, list[Decision], str]:
    """(the chosen arms as one string, the decisions, SHA-256 of everything) of a seeded stream."""
    models = list(default_catalog())[:5]
    pacer = None
    if budget:
        pacer = BudgetPacer(BudgetConfig.from_strings(["avg_cost_usd=0.0004"]), clock=lambda: 1.7e9)
    router = Router(models, policy, seed=11, pacer=pacer)
    rng = np.random.default_rng(2024)
    digest = hashlib.sha256()
    arms, decisions = [], []
    for step in range(steps):
        if step == 80:
            router.add_model(ModelSpec("newcomer", 0.3, 1.2, {"family": "llama", "tier": "small"}))
        if step == 160:
            router.retire_model(models[1].name)
        names = [m.name for m in router.models]
        if step % 40 == 39:  # a batch, as the service decides one event-loop iteration's requests
            made = router.route_many([_request(rng, names, step + i) for i in range(5)])
        else:
            made = [router.route(_request(rng, names, step))]
        for decision in made:
            assert isinstance(decision, Decision)
            decisions.append(decision)
            arms.append(str(decision.arm))
            digest.update(repr(_record(decision)).encode())
            if rng.random() < 0.8:
                latency = float(rng.uniform(0.1, 3.0)) if rng.random() < 0.5 else None
                outcome = Outcome(
                    quality=float(rng.random()), output_tokens=int(rng.integers(5, 900)), latency_s=latency
                )
                digest.update(float(router.learn(decision, outcome)).hex().encode())
    digest.update(repr(_hex(router.weights())).encode())
    digest.update(router.snapshot())
    return "".join(arms), decisions, digest.hexdigest()


ARMS = {
    "default": (
        "0333040043113002204043300103302000103043013344300244004011000430400040400114240004401220010555505503"
        "0455501250020440304500242010225204524054000545534001343313101423341501210553431314114221111013331400"
        "1022110211232300034043000004032000400003000220003302302000013300"
    ),
    "default+budget": (
        "0333040043113002204043300103302000103043002344300244004021000430400040400124240004400020050555505504"
        "0455502250020441404500342000225204524054050545435002343323202323301502210543311314114211111021211404"
        "1011110112232300034041000104022010400013001210013310311102012310"
    ),
    "linucb": (
        "1113140140231200423240401113300100013243000043301214004313010041410240410122142014431120052455143515"
        "1134504253351441524513254201355222523245340315555220134233402253004550314325423424410201333443110434"
        "3220312223032301134343200032011112333423231003110011234243131023"
    ),
    "vw-squarecb": (
        "0123040040012002213244110213403100004143012344200234004002010431410040301134342004421230010444414513"
        "0435402251200431303501333001315214523034110324343210442401400444402524312444430334034101130133330404"
        "3020320230030300024043220004030030400003023331033403430223223434"
    ),
}
PMFS: dict[str, dict[int, tuple[float, ...]]] = {
    "default": {
        0: (0.15104559534844977, 0.08807629737071601, 0.05037642774915888, 0.5867832809931557, 0.12371839853851971),
        7: (0.23448230640360984, 0.15899658271747197, 0.09312454616014798, 0.21881561627307305, 0.2945809484456971),
        45: (0.15822733171498657, 0.13375474353656783, 0.08896828308161309, 0.21483968146243618, 0.40420996020439637),
        100: (
            0.3224021273976947,
            0.07084781854802558,
            0.1434243196926976,
            0.13251312994548564,
            0.10542706102600417,
            0.2253855433900925,
        ),
        200: (0.1682809242425917, 0.4075229219379283, 0.20003036496512466, 0.13687916636753808, 0.08728662248681733),
        263: (0.05099429384023198, 0.6213812875539452, 0.07015219944326062, 0.18788005817450368, 0.06959216098805857),
    },
    "default+budget": {
        0: (0.15104559534844977, 0.08807629737071601, 0.05037642774915888, 0.5867832809931557, 0.12371839853851971),
        7: (0.23523483937786677, 0.15925827122407807, 0.09342589487508643, 0.21728935685835968, 0.29479163766460914),
        45: (0.23175415767470883, 0.05625423931729229, 0.03302858094327423, 0.27131209423538, 0.4076509278293447),
        100: (
            0.28607447362493693,
            0.01928996437969456,
            0.1155776616914403,
            0.11042597947878574,
            0.16884336188464708,
            0.2997885589404954,
        ),
        200: (0.10955226254150068, 0.4443962769317904, 0.26048990703349073, 0.10717225438601906, 0.07838929910719919),
        263: (0.0703118874167205, 0.19821853887275206, 0.5436147399974941, 0.08475334710671915, 0.10310148660631427),
    },
    "linucb": {
        0: (0.1, 0.1, 0.6, 0.1, 0.1),
        7: (0.1, 0.1, 0.1, 0.1, 0.6),
        45: (0.1, 0.1, 0.1, 0.6, 0.1),
        100: (
            0.08333333333333333,
            0.08333333333333333,
            0.08333333333333333,
            0.5833333333333334,
            0.08333333333333333,
            0.08333333333333333,
        ),
        200: (0.0, 0.0, 0.0, 1.0, 0.0),
        263: (0.0, 0.0, 0.0, 1.0, 0.0),
    },
    "vw-squarecb": {
        0: (0.1997919537348536, 0.19958604074582775, 0.20370034254676747, 0.19771610111193105, 0.19920556186062016),
        7: (0.1857325947225626, 0.17175557916999448, 0.16678260335566608, 0.18426736407190372, 0.2914618586798732),
        45: (0.13582843365412986, 0.1231549621759972, 0.12528645778541156, 0.12773147504159982, 0.48799867134286157),
        100: (
            0.27375826928206815,
            0.13974060823391202,
            0.13640728749100126,
            0.1625396326773656,
            0.15177554297684542,
            0.13577865933880756,
        ),
        200: (0.0744879938913228, 0.034300942818683525, 0.12798104974864388, 0.6188898400616364, 0.14434017347971348),
        263: (0.12829914295909375, 0.038783511366865815, 0.030520404396516283, 0.10650077924444616, 0.695896162033078),
    },
}
DIGESTS = {
    "default": "3216f314aa350f3838f6152de87b8e2c305bec8e86a868a742f198f24477734c",
    "default+budget": "f8824133760e59de87d58a2b37ba2c35076ab5c2ac2369f00b2604f4830cc8f9",
    "linucb": "389f3d934017a54c6eb5e20bf4c65e5fd8d01111b761edf85342296775a859f0",
    "vw-squarecb": "54cb578e5aab86f928afe749805922218df3879ddf40476192226713994f48e0",
}


@pytest.mark.parametrize("variant", list(ARMS))
def test_seeded_decisions_are_pinned(variant: str) -> None:
    policy, _, budget = variant.partition("+")
    arms, decisions, digest = run_stream(policy, budget=bool(budget))
    assert len(decisions) == 264 and len(set(arms)) >= 3
    assert arms == ARMS[variant]
    for i, pmf in PMFS[variant].items():
        rel = 1e-3 if policy.startswith("vw-") else 1e-12
        assert decisions[i].pmf == pytest.approx(pmf, rel=rel, abs=1e-15)
    recorded_on = (*_platform(), importlib.metadata.version("numba")) if policy == "default" else _platform()
    if recorded_on == (DEFAULT_PLATFORM if policy == "default" else PLATFORM):
        assert digest == DIGESTS[variant]
