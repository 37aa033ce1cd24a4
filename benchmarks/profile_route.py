"""Where `Router.route`'s time goes: py-spy (`--native`) samples a tight loop of `bench_core`'s `route[default]`
(5 models, the 500-character prompt, a policy trained on 500 feedbacks, garbage collection off) and this prints the
share of the samples inside `Router.route` spent in each function (inclusive) and on each innermost Python line.

    python -m benchmarks.profile_route [--source DIR] [--calls N] [--out FILE]

`--source` profiles the `bandit_router` package of another checkout (before/after comparisons); shares, not
times, so a busy machine changes them little. In the loop the features and the decision alternate and evict each
other's caches: a part timed alone costs less than its share here.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LOOP = """
import gc
from benchmarks.bench_core import PROMPT
from bandit_router.catalog import default_catalog
from bandit_router.router import Router
from bandit_router.types import Outcome, Request

router = Router(list(default_catalog())[:5], "default", seed=0)
request = Request(prompt=PROMPT, context={"tenant": "acme"})
for i in range(500):
    router.learn(router.route(request), Outcome(quality=float(i % 3 == 0), output_tokens=200))
gc.disable()
route = router.route
for _ in range(CALLS):
    route(request)
"""


def shares(raw: str, top: int = 30) -> str:
    """The report of py-spy's raw (collapsed stacks) output: inclusive shares by function, then by line."""
    functions: collections.Counter[str] = collections.Counter()
    lines: collections.Counter[str] = collections.Counter()
    total = 0
    for row in raw.splitlines():
        stack, _, count = row.rpartition(" ")
        frames = stack.split(";")
        if not count.isdigit() or not any(f.startswith("Router.route ") for f in frames):
            continue
        n = int(count)
        total += n
        python = [f for f in frames if ".py:" in f]
        if python:
            lines[python[-1]] += n
        for name in {f.split(" (")[0] for f in frames}:
            functions[name] += n
    out = [f"{total} samples inside Router.route", "", "inclusive, by function:"]
    out += [f"{100 * n / total:5.1f}%  {name}" for name, n in functions.most_common(top)]
    out += ["", "innermost Python line:"]
    out += [f"{100 * n / total:5.1f}%  {name}" for name, n in lines.most_common(top)]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path.cwd(), help="checkout whose bandit_router is profiled")
    parser.add_argument("--calls", type=int, default=300_000)
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(args.source.resolve()), str(here)])}
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "route.raw"
        command = [sys.executable, "-c", LOOP.replace("CALLS", str(args.calls))]
        spy = [str(Path(sys.executable).with_name("py-spy")), "record", "--native", "-r", "1000", "-f", "raw"]
        # run in the temporary folder: `python -c` puts its working directory first on sys.path
        subprocess.run([*spy, "-o", str(raw), "--", *command], env=env, cwd=folder, check=True, capture_output=True)
        report = shares(raw.read_text())
    header = f"python -m benchmarks.profile_route --source {args.source} --calls {args.calls}\n"
    print(header + report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(header + report)


if __name__ == "__main__":
    main()
