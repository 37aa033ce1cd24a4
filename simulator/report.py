"""Turn a `SimulationResult` into `summary.json`, `summary.md`, `curves.json` (and the plots, `plots.py`).

`summary.json` (schema `bandit-router-simulation/1`) — what other tools read:

    {"schema", "command", "commit", "created", "env": {...}, "scenarios": [...], "seeds": [...],
     "cost_weights": [...], "n_steps",
     "results": [record, ...],          # one per (policy, cost weight), in the order given
     "oracle":  [record, ...],          # one per cost weight
     "fixed":   [record, ...],          # one per (model, cost weight): "policy" = "fixed:<model>"
     "two_model": {...} | null,         # APGR, CPT(50%), CPT(80%), strong-call share at 95%, per policy
     "aiq": {...} | null}               # AIQ per policy (+ "fixed-hull", "oracle"); needs ≥ 2 cost weights

A record: policy, cost_weight, seeds, n_seeds, n_steps, mean_reward, ci95_reward (half-width of the 95%
Student-t interval over seeds; null for one seed), mean_quality, ci95_quality, mean_cost_usd, ci95_cost_usd,
mean_latency_s, regret_oracle and regret_best_fixed (cumulative over the run, with ci95_…), best_fixed,
regret_per_request and regret_per_request_second_half (regret against the best fixed model per request, over the
whole stream and over its second half, with ci95_…), break_even_step (the median over seeds of the step after
which the cumulative reward stays at or above the best fixed model's; a seed that never breaks even counts
as infinitely late, so null when half of the seeds or more never do) and break_even_never (how many seeds never
do), model_shares (model → share of the decisions), steps_per_s (steps per CPU-second of the run's loop: decide,
learn and, unless cached, featurize), reaction (scenario → steps, see
`runner.reaction_times`; with `n_period_shorter_than_window` and `period_steps` in the seeds where the period after
the event was shorter than the window, so that no reaction could be measured), plus the mean of every number a run
adds (`Trace.extra`, e.g. a pacer's).
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bandit_router.errors import BanditRouterError
from bandit_router.outputs import put_file

from . import metrics as M
from .runner import RunResult, SimulationResult
from .summary_md import markdown

SCHEMA = "bandit-router-simulation/1"


RESULT_FOLDERS = (":(top,exclude,glob)experiments/*/results/**", ":(top,exclude,glob)benchmarks/results/**")
"""Written by the runs themselves: a result being (re)written does not make the code that wrote it dirty."""


def git_commit() -> str:
    """The running code's commit as it was when the run started: `<short hash>` of the HEAD of the checkout this
    very file is in, `+dirty` when its tree has changes outside the result folders; `unknown` outside git, and
    when that checkout does not track this file (an installed copy in a venv inside another project's repository
    would otherwise report that project's commit). Read when this module is imported, before any run: a commit
    made (or a file edited) while a run goes on is not the code it ran, and a run that read the commit when it
    ended recorded such a commit. When the reading now differs, both: `<at start> (at the end: <now>)`, so that a
    run during which the code changed is never recorded as clean. What an experiment or benchmark records for the
    code it ran; for another checkout named on the command line (the benchmarks' `--base`, `--code`),
    `checkout_commit`."""
    here = Path(__file__).resolve()
    return _as_at_start("", lambda: _commit(here.parent, str(here)))


def checkout_commit(path: Path) -> str:
    """The commit of the checkout of this project at `path` (the benchmarks' `--base`, `--code`), as `git_commit`
    gives it: `unknown` unless that checkout tracks this module's path in the project (`simulator/report.py`
    at its top). The first reading of a path is its start: call it before the run (the benchmarks do, when they
    parse their arguments); a later call that reads something else gives `<at start> (at the end: <now>)`. Not the
    running code's commit: that is `git_commit()`."""
    here = Path(__file__).resolve()
    ours = f":(top,literal){here.parent.name}/{here.name}"
    return _as_at_start(str(Path(path).resolve()), lambda: _commit(path, ours))


_AT_START: dict[str, str] = {}
"""Each checkout's first reading in this process ("" for the running code's), against which later ones compare."""


def _as_at_start(key: str, read: Callable[[], str]) -> str:
    now = read()
    start = _AT_START.setdefault(key, now)
    return start if now == start else f"{start} (at the end: {now})"


def _commit(where: Path, ours_path: str) -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=where)
        ours = subprocess.run(["git", "ls-files", "--error-unmatch", "--", ours_path], capture_output=True, cwd=where)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", ":(top)", *RESULT_FOLDERS],
            capture_output=True,
            text=True,
            cwd=where,
        )
    except OSError:
        return "unknown"
    if head.returncode != 0 or ours.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


git_commit()  # the running code's commit at the start of the run: this module is imported before any run


def _ci(values: Iterable[float | None]) -> dict[str, Any]:
    raw = [math.nan if v is None else float(v) for v in values]
    mean, half = M.mean_ci(raw)
    missing = sum(1 for v in raw if not math.isfinite(v))
    return {"mean": _num(mean), "ci95": _num(half), "n_missing": missing}


def _num(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def _clean(tree: Any) -> Any:
    """JSON-safe: numpy → Python, NaN/inf → null."""
    if isinstance(tree, dict):
        return {str(k): _clean(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_clean(v) for v in tree]
    if isinstance(tree, np.ndarray):
        return _clean(tree.tolist())
    if isinstance(tree, np.integer):
        return int(tree)
    return _num(tree)


def record(runs: Sequence[RunResult]) -> dict[str, Any]:
    """One summary record from the runs of one (policy, λ) over its seeds."""
    first = runs[0]

    def ci(name: str) -> tuple[float, float | None]:
        return M.mean_ci([getattr(r, name) for r in runs])

    out: dict[str, Any] = {"policy": first.policy, "cost_weight": first.cost_weight}
    out["seeds"] = [r.seed for r in runs]
    out["n_seeds"] = len(runs)
    out["n_steps"] = first.n_steps
    for name, key in (("mean_reward", "reward"), ("mean_quality", "quality"), ("mean_cost_usd", "cost_usd")):
        out[name], out[f"ci95_{key}"] = ci(name)
    latencies = [r.mean_latency_s for r in runs if r.mean_latency_s is not None]
    out["mean_latency_s"] = float(np.mean(latencies)) if latencies else None
    for name in ("regret_oracle", "regret_best_fixed"):
        out[name], out[f"ci95_{name}"] = ci(name)
    out["best_fixed"] = Counter(r.best_fixed for r in runs).most_common(1)[0][0]
    for name in ("regret_per_request", "regret_per_request_second_half"):
        out[name], out[f"ci95_{name}"] = ci(name)
    steps = [math.inf if r.break_even_step is None else r.break_even_step for r in runs]
    median = float(np.median(steps))
    out["break_even_step"] = median if math.isfinite(median) else None
    out["break_even_never"] = sum(1 for r in runs if r.break_even_step is None)
    out["model_shares"] = {m: float(np.mean([r.model_shares[m] for r in runs])) for m in first.model_shares}
    speeds = [r.steps_per_s for r in runs if math.isfinite(r.steps_per_s)]
    out["steps_per_s"] = float(np.mean(speeds)) if speeds else None
    if first.reaction:
        out["reaction"] = {key: _ci(r.reaction.get(key) for r in runs) for key in first.reaction}
        for key, entry in out["reaction"].items():  # why a reaction was never measured, where the window says so
            periods = [r.short_periods[key] for r in runs if key in r.short_periods]
            if periods:
                entry["n_period_shorter_than_window"] = len(periods)
                entry["period_steps"] = min(periods)
    for key in first.extra:
        out[key], out[f"ci95_{key}"] = M.mean_ci([r.extra.get(key, math.nan) for r in runs])
    return _clean(out)


def _group(runs: Iterable[RunResult]) -> dict[tuple[str, float], list[RunResult]]:
    groups: dict[tuple[str, float], list[RunResult]] = {}
    for r in runs:
        groups.setdefault((r.policy, r.cost_weight), []).append(r)
    return groups


def two_model_metrics(result: SimulationResult) -> dict[str, Any] | None:
    """RouteLLM's metrics per policy (None unless the environment has exactly two models)."""
    names = result.model_names
    if len(names) != 2:
        return None
    lam0 = result.plan.cost_weights[0]
    fixed = {(r.policy, r.seed): r for r in result.baselines if r.cost_weight == lam0}
    if any((f"fixed:{m}", s) not in fixed for m in names for s in result.plan.seeds):
        return None
    q_mean = [np.mean([fixed[(f"fixed:{m}", s)].mean_quality for s in result.plan.seeds]) for m in names]
    strong, weak = (names[0], names[1]) if q_mean[0] >= q_mean[1] else (names[1], names[0])
    ks, kw = names.index(strong), names.index(weak)
    per_policy: dict[str, dict[str, list[float | None]]] = {}
    gaps = [fixed[(f"fixed:{strong}", s)].mean_quality - fixed[(f"fixed:{weak}", s)].mean_quality
            for s in result.plan.seeds]

    def add(
        policy: str,
        seed: int,
        shares: M.Floats,
        qualities: M.Floats,
        cost_points: tuple[M.Floats, M.Floats] | None = None,
    ) -> None:
        qs, qw = fixed[(f"fixed:{strong}", seed)].mean_quality, fixed[(f"fixed:{weak}", seed)].mean_quality
        cs, cw = fixed[(f"fixed:{strong}", seed)].mean_cost_usd, fixed[(f"fixed:{weak}", seed)].mean_cost_usd
        values = per_policy.setdefault(policy, {})
        values.setdefault("apgr", []).append(M.apgr(shares, qualities, qw, qs))
        values.setdefault("apgr_trapz", []).append(M.apgr_trapz(shares, qualities, qw, qs))
        values.setdefault("cpt50", []).append(M.cpt(shares, qualities, qw, qs, 0.5))
        values.setdefault("cpt80", []).append(M.cpt(shares, qualities, qw, qs, 0.8))
        values.setdefault("strong_share_at_95", []).append(M.strong_share_for_quality(shares, qualities, qw, qs))
        cost_share = None if cost_points is None else M.cost_share_for_quality(*cost_points, cw, cs, qw, qs)
        values.setdefault("cost_saving_at_95", []).append(None if cost_share is None else 1.0 - cost_share)

    for seed in result.plan.seeds:
        q = result.q_by_seed[seed]
        both = np.isfinite(q).all(axis=1)
        shares, qualities = M.oracle_share_curve(q[both, ks], q[both, kw])
        sweep = sorted(
            (r for r in result.baselines if r.policy == "oracle" and r.seed == seed), key=lambda r: r.cost_weight
        )
        add("oracle", seed, shares, qualities, ([r.mean_cost_usd for r in sweep], [r.mean_quality for r in sweep]))
        for policy in result.plan.policies:
            runs = sorted(
                (r for r in result.runs if r.policy == policy and r.seed == seed), key=lambda r: r.cost_weight
            )
            add(
                policy,
                seed,
                [r.model_shares[strong] for r in runs],
                [r.mean_quality for r in runs],
                ([r.mean_cost_usd for r in runs], [r.mean_quality for r in runs]),
            )
    return _clean(
        {
            "strong": strong,
            "weak": weak,
            "q_strong": float(q_mean[names.index(strong)]),
            "q_weak": float(q_mean[names.index(weak)]),
            "note": "points = one per cost weight, plus the anchors (0, q_weak) and (1, q_strong), joined "
            "linearly; apgr = mean PGR at 10%..100% strong calls, apgr_trapz = RouteLLM evaluate.py's "
            "trapezoid; cpt = smallest strong-call share reaching that PGR; cost_saving_at_95 = 1 − the cost "
            "(relative to always-strong) needed for 95% of the strong model's quality, on the curve of (cost, "
            "quality) points with the weak and strong models as anchors; oracle = RouteLLM's optimal curve "
            "(its cost saving: from its points over the cost weights)",
            "policies": {p: {k: _ci(v) for k, v in values.items()} for p, values in per_policy.items()},
            # the seeds where PGR, APGR and CPT are undefined (no gap to recover: `metrics.pgr`)
            "n_seeds_equal_quality": sum(1 for g in gaps if g == 0),
            "n_seeds_strong_worse": sum(1 for g in gaps if g < 0),
        }
    )


def aiq_metrics(result: SimulationResult) -> dict[str, Any]:
    """RouterBench's AIQ per policy over the cost weights, per seed, then mean and CI over seeds."""
    per: dict[str, list[float]] = {}
    families: dict[str, list[str]] = {}
    for p in result.plan.policies:
        families.setdefault(p.partition(":")[0], []).append(p)
    pooled = {f: specs for f, specs in families.items() if len(specs) > 1}
    c_maxes = []
    for seed in result.plan.seeds:
        fixed = [r for r in result.baselines if r.seed == seed and r.policy.startswith("fixed:")]
        c_max = max(r.mean_cost_usd for r in fixed)
        c_maxes.append(c_max)

        def points(policies: Sequence[str], pool: Iterable[RunResult] = result.runs, s: int = seed) -> np.ndarray:
            return np.array([[r.mean_cost_usd, r.mean_quality] for r in pool if r.policy in policies and r.seed == s])

        for p in result.plan.policies:
            per.setdefault(p, []).append(M.aiq(points([p]), c_max))
        for family, specs in pooled.items():
            per.setdefault(f"{family} (all settings)", []).append(M.aiq(points(specs), c_max))
        per.setdefault("oracle", []).append(M.aiq(points(["oracle"], result.baselines), c_max))
        per.setdefault("fixed-hull", []).append(M.aiq(points([r.policy for r in fixed], fixed), c_max))
    return _clean(
        {
            "normalisation": "RouterBench evaluation/AIQ.py: non-decreasing upper convex hull of a policy's "
            "(mean cost, mean quality) points over the cost weights, extended flat to c_max, area from the "
            "policy's cheapest point to c_max divided by c_max (c_min = 0); c_max = mean cost of the most "
            "expensive single model (points beyond it are cut at c_max); fixed-hull = the hull of all single models",
            "c_max": float(np.mean(c_maxes)),
            "policies": {p: _ci(v) for p, v in per.items()},
        }
    )


def summary(result: SimulationResult, *, command: str = "") -> dict[str, Any]:
    groups = _group(result.runs)
    base = _group(result.baselines)
    plan = result.plan
    return _clean(
        {
            "schema": SCHEMA,
            "command": command,
            "commit": git_commit(),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "env": result.env,
            "scenarios": result.scenarios,
            "seeds": list(plan.seeds),
            "cost_weights": list(plan.cost_weights),
            "n_steps": result.n_steps,
            "warmup": plan.warmup,
            "results": [record(groups[(p, lam)]) for p in plan.policies for lam in plan.cost_weights],
            "oracle": [record(base[("oracle", lam)]) for lam in plan.cost_weights],
            "fixed": [
                record(base[(f"fixed:{m}", lam)])
                for m in result.model_names
                for lam in plan.cost_weights
                if (f"fixed:{m}", lam) in base
            ],
            "two_model": two_model_metrics(result),
            "aiq": aiq_metrics(result) if len(plan.cost_weights) > 1 else None,
        }
    )


def curves(result: SimulationResult) -> dict[str, Any]:
    """Mean curves over seeds per (policy, λ): cumulative regret (with 95% bands) and model shares over time."""
    out = []
    for (policy, lam), runs in _group([*result.runs, *result.baselines]).items():
        if policy.startswith("fixed:"):
            continue
        entry: dict[str, Any] = {"policy": policy, "cost_weight": lam, "steps": runs[0].curve_steps}
        for name in ("regret_oracle_curve", "regret_best_fixed_curve"):
            stack = np.stack([getattr(r, name) for r in runs])
            mean = stack.mean(axis=0)
            if len(runs) > 1:
                from scipy import stats  # here: 0.7 s of imports that `serve` need not pay (performance.md)

                half = stats.t.ppf(0.975, len(runs) - 1) * stack.std(axis=0, ddof=1) / np.sqrt(len(runs))
            else:
                half = np.zeros_like(mean)
            entry[name.removesuffix("_curve")] = {"mean": mean, "lo": mean - half, "hi": mean + half}
        shares = np.stack([r.shares_over_time for r in runs]).mean(axis=0)
        entry["share_edges"] = runs[0].share_edges
        entry["shares"] = {m: shares[:, k] for k, m in enumerate(result.model_names)}
        out.append(entry)
    return _clean({"model_names": list(result.model_names), "runs": out})


REPORT_FILES = ("summary.md", "curves.json", "regret.png", "cost_quality.png", "shares.png", "strong_share.png",
                "summary.json")
"""What a report writes, summary.json last: a folder's report files are all of one run."""

STAGING = re.compile(r"\.report-[a-z0-9_]{8}\.partial")
"""The hidden folder a report is written into (`tempfile.mkdtemp`'s names), removed when the report is in place."""


def write_report(result: SimulationResult, out: str | Path, *, command: str = "", plots: bool = True) -> dict[str, Any]:
    """Write summary.json, summary.md, curves.json (and the PNG plots) to `out`; returns the summary.

    The files are written into a hidden folder inside `out` and moved into place only when all of them are: a
    report that fails halfway (a plot, a full disk, Ctrl-C) leaves a previous report in `out` as it was. summary.json
    lists the files its report wrote (`files`); a rerun removes those of the previous report's files that it does
    not write itself (a plot it does not draw, `--no-plots` or no two models), and no other file. A file is put in
    place as `bandit_router.outputs.writing_file` writes one (a symlink written through, permissions kept)."""
    folder = Path(out)
    data = summary(result, command=command)
    data["window"] = result.plan.window
    staging: Path | None = None
    moved: list[str] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        previous = _files_of_the_previous_report(folder)
        for stale in folder.iterdir():  # a report killed while writing (SIGKILL, a power cut) left its staging folder
            if STAGING.fullmatch(stale.name) and stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".report-", suffix=".partial", dir=folder))
        (staging / "summary.md").write_text(markdown(data) + "\n", encoding="utf-8")
        curve_data = curves(result)
        (staging / "curves.json").write_text(json.dumps(curve_data) + "\n", encoding="utf-8")
        if plots:
            from .plots import write_plots

            write_plots(data, curve_data, staging)
        data["files"] = [name for name in REPORT_FILES if name == "summary.json" or (staging / name).exists()]
        (staging / "summary.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        for name in data["files"]:  # a file written through that cannot be: before any file is moved, not halfway
            _check_written_through(folder / name)
        for name in data["files"]:
            put_file(staging / name, folder / name)
            moved.append(name)
        for name in previous - set(data["files"]):
            (folder / name).unlink(missing_ok=True)
    except OSError as exc:  # a read-only folder, a full disk: a message, not a traceback
        raise ReportNotWritten(folder, exc, moved) from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return data


def _check_written_through(path: Path) -> None:
    """Raise the `OSError` that putting a report file at `path` would raise when `path` is written through (a
    symlink, a folder: `put_file`) and that cannot be: the symlink's target is a folder, or not writable, or its
    folder is missing or not writable (a dangling link into a folder that is gone). A regular file or a new name is
    renamed over, which the staging folder beside it has shown to work. A symlink loop (`summary.json ->
    summary.json`) is refused too: it has no target to write through."""
    if not os.path.lexists(path) or (path.is_file() and not path.is_symlink()):
        return
    try:
        target = Path(os.path.realpath(path, strict=True))
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a loop of links
            raise OSError(exc.errno, f"{exc.strerror}: a symlink loop", path.name) from None
        # a dangling link, or one through a file or an unsearchable folder: is there a folder to create its target
        # in? (below, which names what is wrong)
        target = Path(os.path.realpath(path))
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path.name)
    if target.exists():
        if not os.access(target, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path.name)
        return
    if not target.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"{os.strerror(errno.ENOENT)}: {target.parent}, its target's folder",
                                path.name)
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"{os.strerror(errno.EACCES)}: {target.parent}, its target's folder",
                              path.name)


class ReportNotWritten(BanditRouterError):
    """The report could not be written into its folder (an `OSError`: no permission, no space); says what the
    folder holds now: the previous report as it was, unless the failure came while the files were put in place."""

    def __init__(self, folder: Path, error: OSError, moved: Sequence[str]) -> None:
        where = f" ({Path(error.filename).name})" if error.filename else ""
        reason = f"{error.strerror or error}{where}"
        if moved:
            state = (f"only {', '.join(moved)} of this report were put in place; the other files there are as they "
                     "were")
        else:
            state = "nothing in the folder was changed (a report there before is as it was)"
        super().__init__(f"{folder}: the report could not be written: {reason}; {state}")


def _files_of_the_previous_report(folder: Path) -> set[str]:
    """The report files the summary.json in `folder` says its run wrote (none when there is no such summary, or
    one from before summary.json listed them): a file of one of these names that no report wrote is the user's."""
    try:
        previous = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    files = previous.get("files") if isinstance(previous, dict) else None
    return {name for name in files if name in REPORT_FILES} if isinstance(files, list) else set()
