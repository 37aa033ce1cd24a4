"""`bandit-router simulate`: compare routing policies on a dataset or a synthetic world before going live.

Heavy imports (VW, matplotlib) happen inside the command, so `bandit-router --help` stays fast.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

CONFIG_KEYS = {
    "env",
    "scenarios",
    "policies",
    "cost_weights",
    "seeds",
    "first_seed",
    "out",
    "steps",
    "passes",
    "split",
    "train_value",
    "eval_value",
    "tasks",
    "drop_flag",
    "context_columns",
    "prices",
    "warmup",
    "window",
    "workers",
    "targets",
    "plots",
    "quiet",
}


DEFAULTS: dict[str, Any] = {
    "policies": "vw-squarecb",
    "cost_weights": "20",
    "seeds": 1,
    "first_seed": 0,
    "passes": 1,
    "warmup": "none",
    "window": 200,
    "plots": True,
    "quiet": False,
}
"""What an option left out (on the command line and in --config) means; `--help` shows these."""
REQUIRED = "(required: here or in --config)"


def _default(name: str) -> str:
    return f"(default: {DEFAULTS[name]})"


def _progress_bar() -> Any:
    """A rich progress bar on stderr (runs done, elapsed, time left), as a `progress(done, total)` callback."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(
        "runs", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), "left", TimeRemainingColumn(),
        console=Console(stderr=True), transient=False,
    )
    task = None

    def show(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("runs", total=total)
        bar.update(task, completed=done)
        if done == total:
            bar.stop()

    return show


def _listify(value: Any, key: str) -> list[str]:
    """A config file's string or list (of `key`) as a list of strings; anything else is a message naming the key."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list | tuple):
        raise typer.BadParameter(f"{key} must be a string or a list, got {value!r}", param_hint="--config")
    return [str(v) for v in value]


def simulate(
    env: Annotated[
        str | None,
        typer.Option(
            help="dataset:PATH (an outcome table) or synthetic:CONFIG (a world "
            "TOML, or a packaged world name such as 'default'). " + REQUIRED
        ),
    ] = None,
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            "--scenario",
            help="A scenario, repeatable: drift, new-model, "
            "outage, price-change, traffic-shift, delayed-feedback, noisy-feedback, each optionally "
            "with settings, e.g. drift:model=gpt-4o,delta=-0.3,at=0.5.",
        ),
    ] = None,
    policies: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated policies and strategies, e.g. "
            "vw-squarecb,linucb:alpha=0.5,random,classifier,cascade:error=0.1,llm-router, "
            "fixed:<model>. The oracle and every fixed model are always reported. " + _default("policies")
        ),
    ] = None,
    cost_weights: Annotated[
        str | None,
        typer.Option(
            "--cost-weights", help="Comma-separated λ values (quality points per USD) to sweep, e.g. 0,10,40. "
            + _default("cost_weights")
        ),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(help="Number of seeds (runs per policy and λ). " + _default("seeds"))
    ] = None,
    first_seed: Annotated[
        int | None, typer.Option("--first-seed", help="First seed. " + _default("first_seed"))
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for summary.json, summary.md, curves.json and plots. " + REQUIRED)
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="A TOML file with any of these options (snake_case keys); options given on the command line win."
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(help="Steps per run (default: one pass over the evaluated prompts, or the world's `steps`)."),
    ] = None,
    passes: Annotated[
        int | None, typer.Option(help="Passes over a dataset's evaluated prompts. " + _default("passes"))
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="Split column of a dataset, e.g. split_routerdc; 'task' (by task); random:0.5 (a seeded "
                     "random half for training)."),
    ] = None,
    train_value: Annotated[
        str | None,
        typer.Option("--train-value", help="Split value of the training part, with --split COLUMN or task. (default: "
                     "train)"),
    ] = None,
    eval_value: Annotated[
        str | None,
        typer.Option("--eval-value", help="Split value of the evaluated part, with --split COLUMN or task. (default: "
                     "test)"),
    ] = None,
    task: Annotated[list[str] | None, typer.Option("--task", help="Keep only this task (repeatable).")] = None,
    drop_flag: Annotated[
        str | None, typer.Option("--drop-flag", help="Drop rows where this column is true, e.g. routellm_contaminated.")
    ] = None,
    context_column: Annotated[
        list[str] | None,
        typer.Option(
            "--context-column",
            help="Send this column as the request's context dict (repeatable); default: prompt text only.",
        ),
    ] = None,
    prices: Annotated[
        str | None,
        typer.Option(
            help="How the router prices a dataset's models: 'fit' (cost ≈ a·tokens + b, per prompt) or 'flat' "
            "(each model's mean cost per request, so λ trades quality against calls). (default: fit)",
        ),
    ] = None,
    warmup: Annotated[
        str | None,
        typer.Option(
            help="Before the scored stream, learning policies use the training part: 'none', 'bandit' "
            "(stream it once with bandit feedback) or 'full' (pre-train on every model's outcome, as the "
            "classifier-based router is trained); both need --split. " + _default("warmup"),
        ),
    ] = None,
    window: Annotated[
        int | None, typer.Option(help="Window (steps) of the reaction-time metrics. " + _default("window"))
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: one per core).")] = None,
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            help="A budget target the learning routers hold (repeatable), as in the service: avg_cost_usd=0.0005, "
            "spend_usd=5/1000s (one simulated second per step), share:gpt-4o=0.3, share:tier=large=0.2, "
            "latency_p95_s=2, @tenant:… for a tenant's (with --context-column tenant). The run's λ is the pacer's "
            "starting point. Every record reports target:<t>:realized.",
        ),
    ] = None,
    plots: Annotated[
        bool | None, typer.Option("--plots/--no-plots", metavar="", help="Write the PNG plots. (default: --plots)")
    ] = None,
    quiet: Annotated[
        bool | None,
        typer.Option("--quiet/--no-quiet", metavar="", help="No progress bar, no summary table. (default: --no-quiet)"),
    ] = None,
) -> None:
    """Simulate routing policies on a dataset or a synthetic world and report quality, cost, reward, regret.

    Example: bandit-router simulate --env dataset:../shared/data/routellm/routellm.csv.gz --task gsm8k
    --policies vw-squarecb,linucb,random,classifier --cost-weights 0,20,40 --seeds 5 --out runs/gsm8k
    """
    from bandit_router.config import ConfigError, layered, read_toml
    from bandit_router.errors import BanditRouterError, InvalidInput
    from bandit_router.hints import quoted
    from bandit_router.outputs import writing

    from .budgets import TargetPacers
    from .environments import EnvSpec
    from .environments.dataset import check_split_values
    from .report import write_report
    from .runner import Plan
    from .runner import simulate as run_simulation
    from .specs import parse_floats, split_specs
    from .summary_md import break_even_text

    from_file: dict[str, Any] = {}
    if config is not None:
        try:
            from_file = read_toml(config)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), param_hint="--config") from exc
        unknown = set(from_file) - CONFIG_KEYS
        if unknown:
            known = ", ".join(sorted(CONFIG_KEYS))
            raise typer.BadParameter(f"{config}: unknown keys {quoted(sorted(unknown), CONFIG_KEYS)}; known: {known}",
                                     param_hint="--config")
    given = {
        "env": env,
        "scenarios": scenario or None,
        "policies": policies,
        "cost_weights": cost_weights,
        "seeds": seeds,
        "first_seed": first_seed,
        "out": out,
        "steps": steps,
        "passes": passes,
        "split": split,
        "train_value": train_value,
        "eval_value": eval_value,
        "tasks": task or None,
        "drop_flag": drop_flag,
        "context_columns": context_column or None,
        "prices": prices,
        "warmup": warmup,
        "window": window,
        "workers": workers,
        "targets": target or None,
        "plots": plots,
        "quiet": quiet,
    }
    settings = layered(DEFAULTS, from_file, given)  # the same layering as the service's settings (flags win)
    missing = [f"--{key}" for key in ("env", "out") if key not in settings]
    if missing:
        raise typer.BadParameter(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required (on the "
                                 "command line or in --config): --env dataset:PATH or synthetic:default, --out a "
                                 "folder for the results")
    for key in _INTEGER_KEYS:  # a config file's values arrive as written: "x" is a message, not a traceback
        if settings.get(key) is not None:
            settings[key] = _integer(key, settings[key])
    for key in ("plots", "quiet"):
        if not isinstance(settings[key], bool):
            raise typer.BadParameter(f"{key} must be true or false, got {settings[key]!r}", param_hint="--config")
    plots, quiet = settings["plots"], settings["quiet"]
    for key in _STRING_KEYS:  # `split = 5`, `out = ["runs"]`: a message, not an AttributeError or TypeError
        if settings.get(key) is not None and not isinstance(settings[key], str | Path):
            raise typer.BadParameter(f"{key} must be a string, got {settings[key]!r}", param_hint="--config")
    policy_list = settings["policies"]
    policy_specs = split_specs(policy_list) if isinstance(policy_list, str) else _listify(policy_list, "policies")
    weights = settings["cost_weights"]
    n_seeds = settings["seeds"]
    start = settings["first_seed"]
    keys = ("split", "train_value", "eval_value", "drop_flag", "prices")
    options: dict[str, Any] = {k: settings[k] for k in keys if k in settings}
    if "tasks" in settings:
        options["tasks"] = tuple(_listify(settings["tasks"], "tasks"))
    if "context_columns" in settings:
        options["context_columns"] = tuple(_listify(settings["context_columns"], "context_columns"))
    try:
        targets = tuple(_listify(settings.get("targets"), "targets"))
        if any(t.strip().startswith("@") for t in targets) and "tenant" not in options.get("context_columns", ()):
            raise typer.BadParameter("a tenant's target (@tenant:…) would never bind: a simulated request has a "
                                     "tenant only from a dataset's tenant column (--context-column tenant)",
                                     param_hint="--target")
        pacers = TargetPacers(targets) if targets else None
        if str(settings["env"]).startswith("synthetic:") and options:  # named as given: flags or config keys
            named = [_as_given(key, options[key], from_config=key in from_file and given[key] is None)
                     for key in DATASET_FLAGS if options.get(key) not in (None, (), [])]
            if named:
                raise InvalidInput(f"{', '.join(named)}: options of a dataset (--env dataset:PATH); {settings['env']} "
                                   "is a synthetic world, which takes none")
        if str(settings["env"]).startswith("dataset:"):  # values refused, named as given: flags or config keys
            check_split_values(str(settings["env"])[len("dataset:") :], options.get("split"),
                               options.get("train_value"), options.get("eval_value"),
                               from_config={k for k in keys if k in from_file and given[k] is None})
        try:  # named as given: "expected … got '-1'" did not say which option
            lambdas = parse_floats(weights if isinstance(weights, str) else _weights(weights))
        except InvalidInput as exc:
            in_file = "cost_weights" in from_file and given["cost_weights"] is None
            raise InvalidInput(f"{'cost_weights in --config' if in_file else '--cost-weights'}: {exc}") from exc
        plan = Plan(
            env=EnvSpec.parse(str(settings["env"]), **options),
            policies=tuple(policy_specs),
            cost_weights=lambdas,
            seeds=tuple(range(start, start + n_seeds)),
            scenarios=tuple(_listify(settings.get("scenarios"), "scenarios")),
            steps=settings.get("steps"),
            passes=settings["passes"],
            warmup=str(settings["warmup"]),
            window=settings["window"],
            pacer_factory=pacers,
        )
        _check_out(Path(settings["out"]))  # before the runs, not after them; created when the report is written
        show = _progress_bar() if sys.stderr.isatty() and not quiet else None
        started = time.perf_counter()
        result = run_simulation(plan, workers=settings.get("workers"), progress=show)
        command = "bandit-router simulate " + shlex.join(sys.argv[2:] if len(sys.argv) > 1 else [])
        with _sigterm_as_exit(), writing(Path(settings["out"])):  # a report that fails half-written (an error,
            # Ctrl-C, `kill`) leaves nothing it created: its staging folder, a folder made for it
            data = write_report(result, settings["out"], command=command.strip(), plots=plots)
    except BanditRouterError as exc:
        typer.echo(f"bandit-router simulate: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not quiet:
        typer.echo(
            f"{len(result.runs)} runs of {result.n_steps} steps in {time.perf_counter() - started:.1f} s; "
            f"written to {settings['out']}/summary.md"
        )
        typer.echo("  regret = the best fixed model's reward − the policy's, per request (whole stream / second half)")
        for r in data["results"]:
            typer.echo(
                f"  {r['policy']:<28} λ={r['cost_weight']:<8g} reward {r['mean_reward']:.4f}  "
                f"quality {r['mean_quality']:.4f}  cost {r['mean_cost_usd']:.3g}  "
                f"regret {_signed(r['regret_per_request'])} / {_signed(r['regret_per_request_second_half'])}  "
                f"break-even {break_even_text(r)}"
            )
            for line in _details(r, data["window"]):
                typer.echo(f"      {line}")


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (`kill`, a CI job's timeout) raises SystemExit(143) in the block, as Ctrl-C raises KeyboardInterrupt,
    so that its clean-ups run: the signal's default action ended the process without them."""
    import signal

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set a handler
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_out(folder: Path) -> None:
    """Say now why the output folder could not be created or written (a file there, no permission); nothing is
    created before the report is written (`bandit_router.outputs`)."""
    from bandit_router.outputs import out_problem

    problem = out_problem(folder)
    if problem is not None:
        raise typer.BadParameter(f"{folder}: {problem}", param_hint="--out")


def _weights(value: Any) -> list[Any]:
    """`cost_weights` from a config file: a list, or one number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list | tuple) and not any(isinstance(v, bool) for v in value):  # float(True) is 1.0
        return list(value)
    raise typer.BadParameter(f"cost_weights must be a number, a list or a string, got {value!r}", param_hint="--config")


DATASET_FLAGS = {"train_value": "--train-value", "eval_value": "--eval-value", "split": "--split", "tasks": "--task",
                 "drop_flag": "--drop-flag", "context_columns": "--context-column", "prices": "--prices"}
"""A dataset's options (`EnvSpec.options`), by their settings' keys, with the flags that give them."""


def _as_given(key: str, value: Any, *, from_config: bool) -> str:
    """A dataset option as the user gave it: `--task 'math' --task 'code'`, or `tasks = ['math'] in --config`."""
    if from_config:
        return f"{key} = {list(value) if isinstance(value, tuple) else value!r} in --config"
    values = value if isinstance(value, tuple | list) else (value,)
    return " ".join(f"{DATASET_FLAGS[key]} {v!r}" for v in values)


_INTEGER_KEYS = ("seeds", "first_seed", "steps", "passes", "window", "workers")
_STRING_KEYS = ("env", "out", "split", "train_value", "eval_value", "drop_flag", "prices", "warmup")


def _integer(key: str, value: Any) -> int:
    """`value` of the option `key` as an integer (a command-line value is one already; a config file's may not be)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # "--5", "²": not integers, though str.isdigit says yes to "²"
            return int(value)
    raise typer.BadParameter(f"{key} must be an integer, got {value!r}", param_hint="--config")


def _details(record: dict[str, Any], window: int) -> list[str]:
    """A result's reaction times (scenario runs) and budget targets with their realised values, one per line."""
    from .summary_md import short_period_text

    out = []
    for key, v in (record.get("reaction") or {}).items():
        if key.endswith("_final_share") or not isinstance(v, dict):
            continue
        mean = v.get("mean")
        short = short_period_text(v, window)
        if short and v["period_steps"] > 0:  # never measured in those seeds, whatever the policy did: say so, and
            # what measures it (no window does at the end of the run)
            short += f" (a --window of {v['period_steps']} or less measures it)"
        if mean is None:
            out.append(f"reaction to {key}: never" + (f": {short}" if short else ""))
        else:
            why = f"; in {v['n_period_shorter_than_window']}: {short}" if short else ""
            never = f" (never in {v['n_missing']} seed(s){why})" if v.get("n_missing") else ""
            out.append(f"reaction to {key}: {mean:.0f} steps{never}")
    for key, value in record.items():
        if key.startswith("target:") and key.endswith(":realized"):
            name = key[len("target:") : -len(":realized")]
            realized = "–" if value is None else f"{value:.4g}"
            out.append(f"target {name}: realised {realized}")
    return out


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.4f}"
