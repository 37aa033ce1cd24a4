"""How far the compiled quadrature's pmfs (`bandit_router.argmax_kernel`) are from those of another checkout's
`exploration.gaussian_argmax_pmf` (the numpy transcription it replaced), and whether any seeded decision changes.

    python -m benchmarks.pmf_jit --base CHECKOUT --label NAME [--cases 20000] [--seed 0]
    # → benchmarks/results/profiles/pmf-jit-NAME.txt

Two comparisons, each checkout's code in a process of its own (this one's package and the base's):

- the pmfs of `--cases` seeded posteriors of 2–8 arms (means spread from 0.01 to 5, sds from 10⁻⁵ to 3, every
  11th with an exact tie, dominated arms), 16 nodes: how many are identical bit for bit, max and median |Δp|;
- `tests/test_router_pinned.py`'s seeded streams of the `default` policy (with and without a budget pacer): the
  chosen arm of every decision, the max |Δp| over their pmfs, and the stream's SHA-256.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks import provenance

HERE = Path(__file__).resolve().parent

_SIDE = """
import json, sys
import numpy as np
from bandit_router.exploration import gaussian_argmax_pmf
sys.path.insert(0, TESTS)
import test_router_pinned as pinned
rng = np.random.default_rng(SEED)
pmfs = []
for i in range(CASES):
    k = int(rng.integers(2, 9))
    mean = rng.normal(0.5, [0.01, 0.1, 0.3, 1.0, 5.0][i % 5], k)
    sd = rng.uniform(0.001, [0.02, 0.1, 0.3, 1.0, 3.0][i % 5 if i % 7 else 2], k)
    if i % 3 == 0:
        sd *= 10.0 ** rng.uniform(-2, 0, k)
    if i % 11 == 0:
        mean[1], sd[1] = mean[0], sd[0]
    pmfs.append(gaussian_argmax_pmf(mean, sd).tolist())
streams = {}
for variant in ("default", "default+budget"):
    policy, _, budget = variant.partition("+")
    arms, decisions, digest = pinned.run_stream(policy, budget=bool(budget))
    streams[variant] = {"arms": arms, "pmfs": [list(d.pmf) for d in decisions], "digest": digest}
print(json.dumps({"pmfs": pmfs, "streams": streams}))
"""


def _side(checkout: Path, cases: int, seed: int) -> dict[str, object]:
    code = (_SIDE.replace("TESTS", repr(str(HERE.parent / "tests"))).replace("SEED", str(seed))
            .replace("CASES", str(cases)))
    result: dict[str, object] = provenance.run_side(checkout, code, str(checkout))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    provenance.add_ab_arguments(parser, "pmf-jit-LABEL.txt", base_help="a checkout whose pmfs are the reference",
                                rounds=None)
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    base, this = (_side(side.resolve(), args.cases, args.seed) for side in (args.base, args.this))
    lines = [
        f"python -m benchmarks.pmf_jit --base <checkout> --label {args.label} --cases {args.cases} --seed {args.seed}",
        f"{provenance.sides_line(args.base.resolve(), args.this.resolve())}; {provenance.machine()}",
        "",
    ]
    pairs = list(zip(base["pmfs"], this["pmfs"], strict=True))  # type: ignore[call-overload]
    delta = np.array([float(np.max(np.abs(np.subtract(a, b)))) for a, b in pairs])
    same = sum(a == b for a, b in pairs)
    lines.append(f"{len(pairs)} seeded posteriors: {same} pmfs identical bit for bit, max |delta p| {delta.max():.3g}, "
                 f"median {np.median(delta):.3g}, 99th percentile {np.percentile(delta, 99):.3g}")
    for variant, b in base["streams"].items():  # type: ignore[attr-defined]
        t = this["streams"][variant]  # type: ignore[index]
        d = max(float(np.max(np.abs(np.subtract(x, y)))) for x, y in zip(b["pmfs"], t["pmfs"], strict=True))
        changed = sum(x != y for x, y in zip(b["arms"], t["arms"], strict=True))
        lines.append(f"pinned stream {variant}: {len(b['arms'])} decisions, {changed} chosen arms changed, "
                     f"max |delta p| {d:.3g}; SHA-256 base {b['digest']}, this {t['digest']}")
    provenance.write_report(args.out, f"pmf-jit-{args.label}.txt", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
