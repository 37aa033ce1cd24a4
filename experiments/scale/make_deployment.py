"""A large deployment's files: a catalog of K generated models (prices, tags, latency, priors; every one served by
the fake upstream) and a judge (`route = false`), and a `bandit-router.toml` with `[budgets]` holding a spend target
for each of T tenants and R named routers (cascade, learned-cascade, llm-router in turn).

usage, from the repository root: `.venv/bin/python experiments/scale/make_deployment.py K T R OUTDIR UPSTREAM_PORT`
(docs/service/performance.md: 100 1000 30; the fake upstream: `python -m benchmarks.fake_upstream --port 9311`, and
`FAKE_KEY=x` in the server's environment). Seeded: the same files every time.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path


def catalog(k: int, port: int, rng: random.Random) -> list[str]:
    lines: list[str] = []
    upstream = [f'base_url = "http://127.0.0.1:{port}/v1"', 'api_key_env = "FAKE_KEY"']
    for i in range(k):
        lines += ["[[models]]", f'name = "m-{i:03d}"',
                  f"input_usd_per_mtok = {rng.uniform(0.05, 15):.3f}",
                  f"output_usd_per_mtok = {rng.uniform(0.1, 60):.3f}",
                  f'tags = {{ family = "fam-{i % 9}", tier = "{("small", "medium", "large")[i % 3]}", '
                  f'region = "r{i % 4}" }}',
                  f"latency_s = {rng.uniform(0.3, 4):.2f}",
                  f"prior_quality = {rng.uniform(0.3, 0.9):.3f}",
                  *upstream, 'upstream_model = "strong"', ""]
    return [*lines, "[[models]]", 'name = "judge"', "input_usd_per_mtok = 0.15", "output_usd_per_mtok = 0.6",
            *upstream, 'upstream_model = "judge"', "route = false", ""]


def settings(k: int, tenants: int, routers: int, out: Path, rng: random.Random) -> list[str]:
    cfg = [f'db = "{out}/router.db"', 'catalog = "catalog.toml"', f"max_models = {max(128, k + 1)}", "port = 8765", ""]
    for r in range(routers):
        a, b = rng.sample(range(k), 2)
        strategy = ("cascade", "learned-cascade", "llm-router")[r % 3]
        cfg += ["[[routers]]", f'name = "rt-{r:02d}"', f'strategy = "{strategy}"',
                f'models = ["m-{a:03d}", "m-{b:03d}"]']
        if strategy == "llm-router":
            cfg.append('router_model = "judge"')
        else:
            cfg += ['judge = "judge"', *(["threshold = 0.6"] if strategy == "cascade" else [])]
        cfg.append("")
    cfg += ["[budgets]", "avg_cost_usd = 0.01", 'fallback_model = "m-000"']
    for t in range(tenants):
        cfg += [f"[budgets.tenants.t{t:04d}]", f'spend_usd = "{rng.uniform(1, 50):.2f}/1d"']
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description="a catalog of K generated models and a judge, and a "
                                     "bandit-router.toml with a spend target per tenant and named routers")
    parser.add_argument("k", type=int, help="models")
    parser.add_argument("tenants", type=int, help="tenants with a spend target")
    parser.add_argument("routers", type=int, help="named routers")
    parser.add_argument("outdir", type=Path, help="folder for catalog.toml and bandit-router.toml")
    parser.add_argument("port", type=int, help="the fake upstream's port")
    args = parser.parse_args()
    k, tenants, routers, port = args.k, args.tenants, args.routers, args.port
    out = args.outdir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    (out / "catalog.toml").write_text("\n".join(catalog(k, port, rng)))
    (out / "bandit-router.toml").write_text("\n".join(settings(k, tenants, routers, out, rng)) + "\n")
    print(f"wrote {out}/catalog.toml ({k} models and a judge) and {out}/bandit-router.toml")


if __name__ == "__main__":
    main()
