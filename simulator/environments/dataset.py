"""`dataset`: replay an outcome table (the format of `../shared/data`) as a stream.

Table format: `prompt_id, prompt, task, quality_<model>, cost_<model>` (USD per request), extra columns kept.

- **Holes.** A model whose quality or cost is missing (an empty cell, or one that is not a number) for a prompt
  is *unavailable* for that prompt (a quality outside [0, 1] or a negative cost is refused, naming the cell): the
  router is asked to choose among the other models only, the oracle and the fixed baselines skip it (a fixed model
  falls back to the cheapest available one, as `fixed:<model>` does in the router). Nothing crashes; the
  number of missing cells is reported (`missing_cells`, per model in `missing_by_model`). Prompts with no
  available model at all are dropped and counted (`dropped_prompts`).
- **Split.** `split="random:0.5"` makes a seeded random half the training part (tables without a split column);
  `split="split_routerdc"` separates the training part (`train_value`, for offline-trained
  baselines and optional bandit warm-up) from the evaluated part (`eval_value`); `split="task"` splits by
  task. Rows with any other value are left out. Without a split, every kept prompt is evaluated.
- **Prices.** Tables have real per-request costs but no price table. The router prices a decision as
  ĉ = input_tokens × p_in + ô × p_out with its own token estimate, so each model gets the *implied* prices that
  make ĉ match the table: a least-squares fit, per model, of  cost ≈ a · estimated_input_tokens + b  on the
  training part (on all kept prompts when there is no split: prices are public knowledge, not outcomes), with
  a, b ≥ 0. The model spec then has p_in = a·10⁶ and a fixed per-call part b, stored as p_out = b·10⁶ with
  ô = 1 "token": the router's output-token estimate stays at that prior because dataset outcomes are
  reported with their real cost and without token counts. With `prices="flat"` the fit is a = 0,
  b = the mean cost per request: the router then expects every request to a model to cost the same, so λ
  trades quality against *calls* — the axis of RouteLLM's metrics and what its threshold routers assume.
  The realised cost the router learns from, and the metrics use, is always the table's own cost.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from bandit_router.catalog import ModelSpec
from bandit_router.errors import InvalidInput
from bandit_router.features import estimate_tokens
from bandit_router.hints import quoted
from bandit_router.outcomes import OutcomeTable, load_table

from .base import Environment

_TRUE = frozenset({"true", "1", "yes"})
_FAMILIES = (
    ("gpt", "openai"),
    ("claude", "anthropic"),
    ("gemini", "google"),
    ("llama", "meta"),
    ("mixtral", "mistral"),
    ("mistral", "mistral"),
    ("yi-", "01-ai"),
    ("wizardlm", "wizardlm"),
    ("qwen", "qwen"),
    ("deepseek", "deepseek"),
)


def model_family(name: str) -> str:
    """A family tag from a model name (`gpt-4-1106-preview` → openai), else the name's first word."""
    low = name.lower()
    for key, family in _FAMILIES:
        if key in low:
            return family
    return re.split(r"[-_/ .]", low)[0] or low


def implied_prices(cost: np.ndarray, input_tokens: np.ndarray) -> tuple[float, float]:
    """Least squares cost ≈ a·tokens + b with a, b ≥ 0 over the finite cells; returns (a, b) in USD."""
    keep = np.isfinite(cost)
    y, x = cost[keep], input_tokens[keep].astype(np.float64)
    if len(y) == 0:
        return 0.0, 0.0
    if len(y) >= 2 and np.ptp(x) > 0:
        a, b = np.linalg.lstsq(np.column_stack([x, np.ones_like(x)]), y, rcond=None)[0]
    else:
        a, b = 0.0, float(y.mean())
    if a < 0:
        a, b = 0.0, float(y.mean())
    if b < 0:
        a, b = float((x @ y) / max(x @ x, 1e-12)), 0.0
    return max(float(a), 0.0), max(float(b), 0.0)


def dataset_models(
    table: OutcomeTable, rows: np.ndarray, tokens: np.ndarray, prices: str = "fit"
) -> tuple[ModelSpec, ...]:
    """Model specs with implied prices fitted on `rows` (`fit`: a·tokens + b; `flat`: the mean cost per request),
    tags `family` (from the name) and `tier` (price terciles)."""
    if prices not in ("fit", "flat"):
        raise InvalidInput(f"prices must be 'fit' or 'flat', not {prices!r}")
    if prices == "flat":
        fits = [
            (0.0, float(np.nanmean(table.cost_usd[rows, k])) if rows.size else 0.0) for k in range(len(table.models))
        ]
    else:
        fits = [implied_prices(table.cost_usd[rows, k], tokens[rows]) for k in range(len(table.models))]
    mean_cost = np.array([np.nanmean(table.cost_usd[rows, k]) if rows.size else 0.0 for k in range(len(fits))])
    mean_cost = np.nan_to_num(mean_cost)
    rank = mean_cost.argsort().argsort() / max(len(fits) - 1, 1)
    specs = []
    for k, name in enumerate(table.models):
        a, b = fits[k]
        tier = "small" if rank[k] < 1 / 3 else ("medium" if rank[k] < 2 / 3 else "large")
        if len(fits) == 2:
            tier = "large" if rank[k] > 0.5 else "small"
        specs.append(
            ModelSpec(
                name=name.replace(" ", "_"),
                input_usd_per_mtok=a * 1e6,
                output_usd_per_mtok=b * 1e6,
                tags={"family": model_family(name), "tier": tier},
                output_tokens=1.0,
            )
        )
    return tuple(specs)


def random_split(n: int, spec: str) -> tuple[np.ndarray, np.ndarray]:
    """`random:<share>[:<seed>]`: a seeded random `share` of the rows is the training part, the rest evaluated
    (for tables without a split column; the seed defaults to 0 and is independent of the runs' seeds)."""
    parts = spec.split(":")
    try:
        share = float(parts[1])
        seed = int(parts[2]) if len(parts) > 2 else 0
    except (IndexError, ValueError):
        raise InvalidInput(f"split {spec!r}: expected random:<share>[:<seed>], e.g. random:0.5") from None
    if not 0.0 < share < 1.0 or len(parts) > 3:
        raise InvalidInput(f"split {spec!r}: the training share must be in (0, 1)")
    order = np.random.default_rng([seed, 0x5A17]).permutation(n)
    cut = round(share * n)
    return np.sort(order[:cut]), np.sort(order[cut:])


def check_split_values(
    path: str | Path,
    split: str | None,
    train_value: str | None,
    eval_value: str | None,
    from_config: Collection[str] = (),
) -> None:
    """Refuse `train_value`/`eval_value` where no split column is read: a random split (`random:<share>`) draws its
    parts, and without a split every prompt is evaluated, so the values were ignored without a word. The message
    names each setting as it was given: a flag (`--train-value 't'`), or the key of a config file (`train_value =
    't'` in --config) for those in `from_config` (`split`, `train_value`, `eval_value`)."""

    def named(key: str, value: str) -> str:
        return f"{key} = {value!r} in --config" if key in from_config else f"--{key.replace('_', '-')} {value!r}"

    given = [named(key, value) for key, value in (("train_value", train_value), ("eval_value", eval_value))
             if value is not None]
    if not given or (split and not split.startswith("random:")):
        return
    if split:
        how = f"split = {split!r} in --config" if "split" in from_config else f"--split {split}"
        why = f"{how} draws a seeded random share of the prompts as the training part and reads no split column"
    else:
        why = "without --split there is no training part and every prompt is evaluated"
    name = "name values" if len(given) > 1 else "names a value"
    where = "" if not {"train_value", "eval_value"} & set(from_config) else " (of the config file)"
    raise InvalidInput(f"{path}: {' and '.join(given)} {name} of a split column (--split split_routerdc, or "
                       f"--split task), but {why}: leave them out{where}, or give the column with --split")


def load_dataset(
    path: str | Path,
    *,
    split: str | None = None,
    train_value: str | None = None,
    eval_value: str | None = None,
    tasks: Sequence[str] | None = None,
    drop_flag: str | None = None,
    context_columns: Sequence[str] = (),
    models: Sequence[str] | None = None,
    prices: str = "fit",
) -> Environment:
    """An `Environment` replaying the table at `path` (see the module docstring for holes, split and prices).

    `train_value` and `eval_value` (default `train` and `test`) are values of the split column (or tasks, with
    `split="task"`); with a random split or none they are refused, not ignored.

    `tasks` keeps only those tasks; `drop_flag` drops the rows whose column of that name is true (e.g.
    `routellm_contaminated`, as RouteLLM does); `context_columns` are passed to the router as the request's
    context dict (`task`, `subtask`, …: metadata a caller could send), by default none: the prompt text only.
    """
    table = load_table(path, models=models)
    keep = np.ones(len(table), dtype=bool)
    if tasks:
        unknown = set(tasks) - set(table.tasks)
        if unknown:
            raise InvalidInput(f"{path}: no task(s) {quoted(sorted(unknown), set(table.tasks))}; it has "
                               f"{sorted(set(table.tasks))}")
        keep &= np.isin(np.array(table.tasks), list(tasks))
    for column in [drop_flag] if drop_flag else []:
        if column not in table.columns:
            raise InvalidInput(f"{path}: no column {column!r} to drop rows by")
        keep &= ~np.array([v.strip().lower() in _TRUE for v in table.columns[column]])
    none_available = ~table.available.any(axis=1)
    dropped = int((keep & none_available).sum())
    if dropped and not (keep & ~none_available).any():
        raise InvalidInput(
            f"{path}: none of its {dropped} prompt(s) has a model with both a quality and a cost (an empty cell, "
            "or one that is not a number, counts as missing)"
        )
    keep &= ~none_available
    table = table.subset(keep)
    for column in context_columns:
        if column != "task" and column not in table.columns:
            raise InvalidInput(f"{path}: no column {column!r} for the context")
    check_split_values(path, split, train_value, eval_value)
    if split and split.startswith("random:"):
        train_rows, eval_rows = random_split(len(table), split)
    elif split:
        train_value = "train" if train_value is None else train_value
        eval_value = "test" if eval_value is None else eval_value
        if split != "task" and split not in table.columns:
            raise InvalidInput(f"{path}: no split column {split!r}; columns: {sorted(table.columns)}")
        if train_value == eval_value:  # the classifier and a warm-up would learn from the prompts that are scored
            raise InvalidInput(f"{path}: the training part and the evaluated part are both {split} = {eval_value!r}: "
                               "give --train-value and --eval-value two different values")
        values = np.array(table.tasks if split == "task" else table.columns[split])
        train_rows, eval_rows = np.flatnonzero(values == train_value), np.flatnonzero(values == eval_value)
        if len(eval_rows) == 0:
            raise InvalidInput(f"{path}: no rows with {split} = {eval_value!r}")
    else:
        train_rows, eval_rows = np.zeros(0, dtype=np.int64), np.arange(len(table))
    tokens = np.array([estimate_tokens(p) for p in table.prompts], dtype=np.float64)
    specs = dataset_models(table, train_rows if len(train_rows) else np.arange(len(table)), tokens, prices)
    task_names = tuple(sorted(set(table.tasks)))
    domains = np.array([task_names.index(t) for t in table.tasks], dtype=np.int64)
    attributes = None
    if context_columns:
        attributes = [
            {c: (table.tasks[i] if c == "task" else table.columns[c][i]) for c in context_columns}
            for i in range(len(table))
        ]
    return Environment(
        kind="dataset",
        name=Path(path).name,
        models=specs,
        prompts=table.prompts,
        domain_names=task_names,
        domains=domains,
        quality=table.quality,
        cost_usd=table.cost_usd,
        output_tokens=table.output_tokens,
        eval_rows=eval_rows,
        train_rows=train_rows,
        attributes=attributes,
        info={
            "path": str(path),
            "split": split or "",
            "tasks": list(tasks or []),
            "dropped_prompts": dropped,
            "dropped_by_flag": drop_flag or "",
            "context_columns": list(context_columns),
            "price_fit": (
                "cost ≈ a·estimated_input_tokens + b per model, least squares, a,b ≥ 0"
                if prices == "fit"
                else "flat: each model's mean cost per request"
            )
            + (", on the training part" if len(train_rows) else ", on all kept prompts"),
        },
    )
