"""`synthetic`: a configurable world (TOML) whose ground truth is known exactly.

Each prompt has a domain d (drawn with the domain weights) and a latent difficulty z ~ N(0, 1). Model m answers
it well with probability

    p_m(prompt) = σ(skill_m[d] − slope_m · z)          (σ the logistic function)

and the observed quality is a Bernoulli(p) draw (`quality = "bernoulli"`, 0/1 like a benchmark) or p itself
(`quality = "expected"`, like a calibrated judge score). Output tokens are log-normal around
`domain.output_tokens × model.verbosity × e^{0.2 z}`; latency = `ttft_s + tokens / tokens_per_s`, with
log-normal noise; cost = tokens × the model's list prices (from the default catalog unless the world gives
them). The prompt text is generated from per-domain phrase banks whose hard phrases and length grow with z,
so the real feature extractor sees text that tells domain and (partly) difficulty; or it is drawn from a
real prompt file (`prompts = { path = "…/sharegpt_v3_first_turns.csv.gz" }`), with the domain assigned by
the text's markers and the difficulty partly revealed by its length (`difficulty_visible`).

A world file (see `simulator/worlds/default.toml`)::

    name = "default"
    seed = 7                 # fixes the world: prompts, difficulties, tokens (run seeds vary the stream)
    pool = 20000             # prompts in the pool;  steps = 20000: default stream length
    quality = "bernoulli"
    [[domains]]
    name = "code"
    weight = 0.3
    output_tokens = 350
    [[models]]
    name = "gpt-4o-mini"
    skill = { default = 1.0, code = 0.4 }
    slope = 1.0
    [[models]]
    name = "claude-haiku-4-5"
    dormant = true           # in the world's truth, routable only once a `new-model` scenario brings it in
    [scenarios.drift]        # default settings of the scenarios in this world
    model = "gemini-2.5-flash"
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import sys
import zlib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from bandit_router.catalog import ModelSpec, default_catalog
from bandit_router.config import read_toml
from bandit_router.errors import ConfigError
from bandit_router.features import FeatureExtractor, estimate_tokens
from bandit_router.hints import quoted
from bandit_router.outcomes import NotUTF8, csv_text

from .base import Environment

WORLD_KEYS = {
    "name",
    "seed",
    "pool",
    "steps",
    "quality",
    "prompts",
    "difficulty_visible",
    "domains",
    "models",
    "scenarios",
    "description",
}
DOMAIN_KEYS = {"name", "weight", "output_tokens", "output_sigma"}
MODEL_KEYS = {
    "name",
    "skill",
    "slope",
    "verbosity",
    "ttft_s",
    "tokens_per_s",
    "input_usd_per_mtok",
    "output_usd_per_mtok",
    "tags",
    "dormant",
}

_BANKS: dict[str, dict[str, list[str]]] = {
    "code": {
        "open": [
            "Write a Python function that",
            "Fix the bug in this JavaScript code that",
            "Explain what this SQL query does when it",
            "Refactor the following class so that it",
            "How do I implement code that",
        ],
        "object": [
            "parses a CSV file",
            "reverses a linked list",
            "caches API responses",
            "validates an email",
            "merges two sorted arrays",
            "reads a config file",
            "retries failed requests",
            "sorts users by age",
        ],
        "hard": [
            "with lock-free concurrency",
            "in O(n log n) time and O(1) extra memory",
            "handling unicode edge cases",
            "as an async generator with backpressure",
            "using dynamic programming over a tree",
            "without recursion, for inputs of 10^7 elements",
        ],
        "filler": [
            "```python\ndef solve(items):\n    return sorted(items)\n```",
            "The tests must pass on CI.",
            "Use type hints.",
            "It currently raises a KeyError.",
            "Keep the public interface the same.",
        ],
    },
    "math": {
        "open": ["Solve for x:", "Calculate", "What is the probability that", "Prove that", "Find the derivative of"],
        "object": [
            "3x + 5 = 20",
            "the sum of the first 20 odd numbers",
            "two dice show the same number",
            "15% of 240",
            "x^2 - 4x + 3",
            "the area of a circle of radius 7",
        ],
        "hard": [
            "for every prime p > 3",
            "using the eigenvalues of the matrix",
            "as a closed-form integral",
            "with a combinatorial bijection",
            "for the recurrence a(n) = 3a(n-1) - 2a(n-2)",
            "and bound the error term",
        ],
        "filler": [
            "Show each step.",
            "Give the answer as a fraction.",
            "Explain your reasoning briefly.",
            "Assume all events are independent.",
        ],
    },
    "writing": {
        "open": [
            "Write a short poem about",
            "Draft an email to my manager about",
            "Write a story in which",
            "Summarize in three sentences an article about",
            "Write a product description for",
        ],
        "object": [
            "the ocean at night",
            "a delayed project",
            "a robot who learns to cook",
            "remote work",
            "a reusable water bottle",
            "the first day of autumn",
        ],
        "hard": [
            "in iambic pentameter",
            "in the voice of a 19th-century naturalist",
            "with an unreliable narrator",
            "in exactly 100 words without the letter e",
            "as a sestina",
            "mixing legal and comic registers",
        ],
        "filler": [
            "Keep it warm and friendly.",
            "Avoid clichés.",
            "The audience is teenagers.",
            "Make the ending surprising.",
        ],
    },
    "chat": {
        "open": ["What is", "Can you recommend", "Tell me about", "How do I", "Why do"],
        "object": [
            "a good book for a long flight",
            "the capital of Australia",
            "cats purr",
            "a healthy breakfast",
            "the difference between a virus and bacteria",
            "my houseplants keeping alive",
        ],
        "hard": [
            "and compare three schools of thought on it",
            "with the historical context in detail",
            "citing the trade-offs of each option",
            "for someone with conflicting constraints",
        ],
        "filler": ["Thanks!", "Keep it short.", "I'm a beginner.", "Please be specific."],
    },
}
_WRITING_WORDS = frozenset(["write", "poem", "story", "essay", "email", "letter", "draft", "rewrite", "summarize"])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _bank(domain: str) -> dict[str, list[str]]:
    return _BANKS.get(domain) or {
        "open": [f"Help me with this {domain} question:", f"I have a {domain} task:"],
        "object": [f"a routine {domain} request", f"an everyday {domain} problem"],
        "hard": [f"that needs expert {domain} knowledge", f"with several interacting {domain} constraints"],
        "filler": ["Please be precise.", "Thanks."],
    }


def generate_prompt(domain: str, z: float, rng: np.random.Generator) -> str:
    """A prompt of `domain` whose hard phrases and length grow with the difficulty `z`."""
    bank = _bank(domain)
    parts = [str(rng.choice(bank["open"])), str(rng.choice(bank["object"]))]
    n_hard = int(rng.binomial(2, float(_sigmoid(np.array(1.8 * z - 0.5)))))
    parts += [str(h) for h in rng.choice(bank["hard"], size=n_hard, replace=False)]
    text = " ".join(parts) + "."
    n_filler = int(rng.poisson(0.8 * math.exp(0.5 * z)))
    if n_filler:
        size = min(n_filler, 4, len(bank["filler"]))  # a domain without its own bank has 2 fillers
        text += " " + " ".join(str(f) for f in rng.choice(bank["filler"], size=size, replace=False))
    return text


def assign_domain(text: str, domains: Sequence[str], extractor: FeatureExtractor) -> int:
    """The domain of a real prompt, from the feature extractor's markers and a few words."""
    ctx = extractor.extract(text[:4000])
    if "code" in ctx.markers and "code" in domains:
        return domains.index("code")
    if "math" in ctx.markers and "math" in domains:
        return domains.index("math")
    if "writing" in domains and not _WRITING_WORDS.isdisjoint(text[:400].lower().split()):
        return domains.index("writing")
    return domains.index("chat") if "chat" in domains else len(domains) - 1


def _read_prompts(path: Path, column: str, source: str) -> list[dict[str, str]]:
    """The rows of a prompt file (CSV, optionally gzip) that has `column`; a folder, a cut gzip file or a file
    without the column is a `ConfigError` naming it (they were an IsADirectoryError traceback, click's "Aborted!"
    for the EOFError, and numpy's warnings before "no prompts to evaluate")."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"not a whole gzip file ({exc})"
        raise ConfigError(f"{source}: prompt file {path}: cannot read: {reason}") from None
    try:
        text = csv_text(raw)
    except NotUTF8 as exc:
        raise ConfigError(f"{source}: prompt file {path}: {exc}") from None
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if column not in (reader.fieldnames or []):
        columns = ", ".join(repr(c) for c in (reader.fieldnames or [])[:8])
        raise ConfigError(f"{source}: prompt file {path} has no column {column!r} (prompts.column); its columns: "
                          f"{columns or 'none'}")
    return list(reader)


def _check(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown keys {quoted(sorted(unknown), allowed)}; known: {sorted(allowed)}")


def _entries(config: Mapping[str, Any], key: str, allowed: set[str], source: str) -> list[Mapping[str, Any]]:
    """The `[[key]]` tables of a world, each with a unique string `name` and only `allowed` keys."""
    entries = config.get(key) or []
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise ConfigError(f"{source}: {key} must be a list of tables ([[{key}]])")
    names = []
    for entry in entries:
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source}: every entry of [[{key}]] needs a name (a string), got {name!r}")
        _check(entry, allowed, f"{source}: {key[:-1]} {name!r}")
        names.append(name)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{source}: [[{key}]] names {twice} more than once")
    return entries


def _number(
    table: Mapping[str, Any], key: str, default: float, where: str, *, low: float = -math.inf,
    high: float = math.inf, above: bool = False, integer: bool = False,
) -> float:
    """`table[key]` (or `default`) as a finite number in [low, high] (above `low` with `above`), an integer with
    `integer`; anything else is a `ConfigError` naming the key."""
    value = table.get(key, default)
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise ConfigError(f"{where}: {key} must be {kind}, got {value!r}")
    ok = math.isfinite(value) and (value > low if above else value >= low) and value <= high
    if not ok:
        bound = (f" > {low:g}" if above else f" >= {low:g}") if math.isfinite(low) else ""
        bound = f" in [{low:g}, {high:g}]" if math.isfinite(high) else bound
        raise ConfigError(f"{where}: {key} must be {'a finite number' if not bound else kind}{bound}, got {value!r}")
    return float(value)


def _skills(model: Mapping[str, Any], domains: Sequence[str], where: str) -> list[float]:
    """A model's skill per domain: `skill.<domain>`, else `skill.default`, else 0."""
    skill = model.get("skill", {})
    if not isinstance(skill, Mapping):
        raise ConfigError(f"{where}: skill must be a table (skill = {{ default = 1.0, code = 0.4 }}), got {skill!r}")
    unknown = set(skill) - {*domains, "default"}
    if unknown:
        raise ConfigError(f"{where}: skill names no domain {quoted(sorted(unknown), [*domains, 'default'])}; domains: "
                          f"{list(domains)}")
    fallback = _number(skill, "default", 0.0, f"{where}: skill")
    return [_number(skill, d, fallback, f"{where}: skill") for d in domains]


def world_path(name_or_path: str) -> Path | None:
    """`default` → the packaged world file; a path → itself (None when neither exists)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    packaged = resources.files("simulator").joinpath("worlds", f"{name_or_path}.toml")
    return Path(str(packaged)) if packaged.is_file() else None


def load_world(name_or_path: str, *, base_dir: Path | None = None) -> Environment:
    """Read a world TOML (a path, or the name of a packaged world such as `default`) and build it."""
    path = world_path(name_or_path)
    if path is None:
        raise ConfigError(f"no world file {name_or_path!r} (give a path or a packaged world name: default)")
    config = read_toml(path)  # a folder, an unreadable file, bad UTF-8 or TOML: a ConfigError naming the path
    return build_world(config, source=str(path), base_dir=base_dir or path.parent)


def _model_spec(entry: Mapping[str, Any], where: str) -> ModelSpec:
    catalog = default_catalog()
    name = str(entry["name"])
    if "input_usd_per_mtok" in entry or name not in catalog:
        if "input_usd_per_mtok" not in entry or "output_usd_per_mtok" not in entry:
            raise ConfigError(f"{where}: model {name!r} is not in the default catalog; give its prices")
        return ModelSpec(
            name=name,
            input_usd_per_mtok=entry["input_usd_per_mtok"],
            output_usd_per_mtok=entry["output_usd_per_mtok"],
            tags=entry.get("tags", {}),
        )
    spec = catalog[name]
    if "tags" in entry:
        spec = ModelSpec.from_json({**spec.to_json(), "tags": entry["tags"]})
    return spec


def build_world(config: Mapping[str, Any], *, source: str = "world", base_dir: Path | None = None) -> Environment:
    """Build the `Environment` a world config describes (see the module docstring)."""
    _check(config, WORLD_KEYS, source)
    domains_cfg = _entries(config, "domains", DOMAIN_KEYS, source)
    models_cfg = _entries(config, "models", MODEL_KEYS, source)
    if not domains_cfg or not models_cfg:
        raise ConfigError(f"{source}: a world needs [[domains]] and [[models]]")
    names = [str(d["name"]) for d in domains_cfg]
    weights = np.array([_number(d, "weight", 1.0, f"{source}: domain {d['name']!r}", low=0) for d in domains_cfg])
    if weights.sum() <= 0:
        raise ConfigError(f"{source}: domain weights must be >= 0 and not all 0")
    weights = weights / weights.sum()
    mode = str(config.get("quality", "bernoulli"))
    if mode not in ("bernoulli", "expected"):
        raise ConfigError(f"{source}: quality must be 'bernoulli' or 'expected'")
    seed = int(_number(config, "seed", 0, source, low=0, integer=True))
    pool = int(_number(config, "pool", 20_000, source, low=1, integer=True))
    if "steps" in config:
        _number(config, "steps", 1, source, low=1, integer=True)
    scenario_defaults = config.get("scenarios", {})
    tables = isinstance(scenario_defaults, Mapping) and all(isinstance(v, Mapping) for v in scenario_defaults.values())
    if not tables:
        raise ConfigError(f"{source}: scenarios must be tables of settings ([scenarios.drift] …)")
    for m in models_cfg:
        where = f"{source}: model {m['name']!r}"
        for key, low, above in (("verbosity", 0.0, True), ("ttft_s", 0.0, False), ("tokens_per_s", 0.0, True)):
            _number(m, key, 1.0, where, low=low, above=above)
        _number(m, "slope", 1.0, where)
        if not isinstance(m.get("dormant", False), bool):
            raise ConfigError(f"{where}: dormant must be true or false, got {m['dormant']!r}")
    for d in domains_cfg:
        _number(d, "output_tokens", 250, f"{source}: domain {d['name']!r}", low=0, above=True)
        _number(d, "output_sigma", 0.5, f"{source}: domain {d['name']!r}", low=0)
    rng = np.random.default_rng([seed, 1])
    extractor = FeatureExtractor()
    prompts_cfg = config.get("prompts", "generated")
    base_tokens: np.ndarray | None = None
    if prompts_cfg == "generated":
        domains = rng.choice(len(names), size=pool, p=weights)
        z = rng.standard_normal(pool)
        prompts = [generate_prompt(names[d], float(zi), rng) for d, zi in zip(domains.tolist(), z, strict=True)]
    else:
        if not isinstance(prompts_cfg, Mapping) or "path" not in prompts_cfg:
            raise ConfigError(f"{source}: prompts must be 'generated' or {{ path = '…' }}")
        path = Path(str(prompts_cfg["path"]))
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = base_dir / path
        if not path.exists():
            raise ConfigError(f"{source}: prompt file {path} not found")
        column = str(prompts_cfg.get("column", "prompt"))
        records = _read_prompts(path, column, source)
        order = rng.permutation(len(records))[:pool]
        rows = [records[i] for i in order if (records[i].get(column) or "").strip()]
        prompts = [r[column] for r in rows]
        domains = np.array([assign_domain(p, names, extractor) for p in prompts], dtype=np.int64)
        visible = _number(config, "difficulty_visible", 0.7, source, low=0, high=1)
        length = np.log1p([len(p) for p in prompts])
        z_text = (length - length.mean()) / (length.std() or 1.0)
        z = visible * z_text + math.sqrt(max(0.0, 1 - visible**2)) * rng.standard_normal(len(prompts))
        tokens_col = "chatgpt_response_tokens"
        if rows and tokens_col in rows[0]:
            base_tokens = np.array([float(r.get(tokens_col) or "nan") for r in rows])
    n = len(prompts)
    specs = [_model_spec(m, source) for m in models_cfg]
    skills = np.array([_skills(m, names, f"{source}: model {m['name']!r}") for m in models_cfg])
    slope = np.array([float(m.get("slope", 1.0)) for m in models_cfg])
    p = _sigmoid(skills[:, domains].T - z[:, None] * slope[None, :])
    out_median = np.array([float(d.get("output_tokens", 250)) for d in domains_cfg])[domains]
    if base_tokens is not None:
        out_median = np.where(np.isfinite(base_tokens) & (base_tokens > 0), base_tokens, out_median)
    sigma = np.array([float(d.get("output_sigma", 0.5)) for d in domains_cfg])[domains]
    verbosity = np.array([float(m.get("verbosity", 1.0)) for m in models_cfg])
    tokens = np.rint(
        out_median[:, None]
        * verbosity[None, :]
        * np.exp(0.2 * z)[:, None]
        * np.exp(sigma[:, None] * rng.standard_normal((n, len(specs))))
    ).clip(1, 16_000)
    ttft = np.array([float(m.get("ttft_s", 0.5)) for m in models_cfg])
    tps = np.array([float(m.get("tokens_per_s", 60.0)) for m in models_cfg])
    latency = (ttft[None, :] + tokens / tps[None, :]) * np.exp(0.2 * rng.standard_normal(tokens.shape))
    input_tokens = np.array([estimate_tokens(t) for t in prompts], dtype=np.float64)
    price_in = np.array([s.input_usd_per_mtok for s in specs])
    price_out = np.array([s.output_usd_per_mtok for s in specs])
    cost = (input_tokens[:, None] * price_in[None, :] + tokens * price_out[None, :]) / 1e6
    return Environment(
        kind="synthetic",
        name=str(config.get("name", Path(source).stem)),
        models=specs,
        prompts=prompts,
        domain_names=names,
        domains=domains,
        quality=p,
        cost_usd=cost,
        output_tokens=tokens,
        latency_s=latency,
        eval_rows=np.arange(n),
        stochastic=mode == "bernoulli",
        weights=weights,
        default_steps=int(config.get("steps", n)),
        scenario_defaults=scenario_defaults,
        dormant=[str(m["name"]) for m in models_cfg if m.get("dormant", False)],
        info={
            "source": source,
            "quality": mode,
            "prompts": "generated" if prompts_cfg == "generated" else str(prompts_cfg.get("path")),
            "world_seed": seed,
            "mean_p": {s.name: round(float(p[:, k].mean()), 4) for k, s in enumerate(specs)},
        },
    )
