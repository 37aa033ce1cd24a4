"""What a seeded router decides, pinned: a speed-up of the hot path must leave every decision as it was.

One mixed stream (plain prompts and chats, the caller's context, model subsets, per-request λ, a model added and one
retired at run time, a budget pacer in one variant) is routed and learned with a fixed seed. Pinned:

- the chosen arm of every decision, exactly (a different pmf or a different draw changes it within a few steps);
- a few pmfs, to 1e-12 (robust to another platform's last bit in `exp` or BLAS);
- a SHA-256 of everything each decision carries (pmf, probability, λ, expected costs, version, the hashed
  features and the default policy's dense vector, as `float.hex`), the learned weights and the snapshot: the
  values bit for bit. A platform's numpy/scipy (SIMD `exp`, OpenBLAS kernels) may round a last bit differently,
  so the digest is checked on the platform it was recorded on (`PLATFORM`); elsewhere the first two still hold.

Recorded at commit 7c7aef41 (before the fourth hot-path pass), Python 3.11.7, numpy 2.4.6, scipy 1.17.1.
"""

from __future__ import annotations

import hashlib
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


def _cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512f" in f.read()
    except OSError:
        return False


PLATFORM = ("x86_64", "2.4.6", "1.17.1", True)
"""(machine, numpy, scipy, AVX-512) where `DIGESTS` were recorded."""


def _platform() -> tuple[str, str, str, bool]:
    return platform.machine(), np.__version__, scipy.__version__, _cpu_has_avx512()


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
        "0333040040113002104043300203303000003143023344302234104222220442410240410124240014402220012555505504"
        "0455502250020442404500342010225204524055000545535002344313100423400501310444331324214331122023332400"
        "1032210312231300034043000104032000400013001310013310312101013310"
    ),
    "default+budget": (
        "0333040040113002104043300203302000103043002344300244004032000430400040400034340004400020050555505504"
        "0455502250020440404500342020235204524054100545425002343313101422301501210542311114114121111013331400"
        "1021110212132400034043000104033000400003001320013310312102011310"
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
        0: (0.1484485493841478, 0.08174965396480598, 0.03776472926407751, 0.611629226650246, 0.1204078407367227),
        7: (0.2376087332410929, 0.16064603805577987, 0.0808711332305381, 0.2215674664753556, 0.2993066289972335),
        45: (0.08415847234937233, 0.05130206110115193, 0.3019596452357047, 0.18839416201691972, 0.3741856592968514),
        100: (
            0.32376956185738126,
            0.03387573590903492,
            0.13926374152245102,
            0.041530769885700196,
            0.228963958611624,
            0.23259623221380868,
        ),
        200: (0.1858059196351119, 0.2362238802717989, 0.17952774621828124, 0.33248670523195095, 0.06595574864285701),
        263: (0.02408986639124433, 0.18965023944006548, 0.5664182039038071, 0.18711470054700644, 0.03272698971787666),
    },
    "default+budget": {
        0: (0.1484485493841478, 0.08174965396480598, 0.03776472926407751, 0.611629226650246, 0.1204078407367227),
        7: (0.23840934087266172, 0.1609229354399461, 0.08117037602287681, 0.21995837041130686, 0.2995389772532086),
        45: (0.23717372323736877, 0.021565135980661905, 0.03278332425934051, 0.2909951400497156, 0.41748267647291315),
        100: (
            0.30528916027041963,
            0.012690159505905095,
            0.10018740367765018,
            0.09142568030292784,
            0.1811685896968252,
            0.30923900654627207,
        ),
        200: (0.11500768308903221, 0.38874172262853507, 0.21721272817785306, 0.1763985867211631, 0.10263927938341674),
        263: (0.0343579918126374, 0.16834433112121408, 0.5806412723576061, 0.18580135517751847, 0.030855049531023988),
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
    "default": "9586f9fe12ed41dad3d16160a67cb289dfb2a7c5225d55a235553665f8f0c395",
    "default+budget": "de193cadc068ae5d057029bf5990ef2a4eb46f7f7a252f583794b1ddcbb03202",
    "linucb": "c6bd75aea9212a0288e0f9357a48c09dfedc054207f46452af6e89ad54c48864",
    "vw-squarecb": "32eaa716cda08b827390754a248697ee81239157e9b11f2bb5e971dfcd5aad9a",
}


@pytest.mark.parametrize("variant", list(ARMS))
def test_seeded_decisions_are_pinned(variant: str) -> None:
    policy, _, budget = variant.partition("+")
    arms, decisions, digest = run_stream(policy, budget=bool(budget))
    assert len(decisions) == 264 and len(set(arms)) >= 3
    assert arms == ARMS[variant]
    for i, pmf in PMFS[variant].items():
        assert decisions[i].pmf == pytest.approx(pmf, rel=1e-12, abs=1e-15)
    if _platform() == PLATFORM:
        assert digest == DIGESTS[variant]
