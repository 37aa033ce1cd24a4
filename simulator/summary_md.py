"""`summary.md`, the readable report, from a summary dict (`report.summary`): one table of the runs per λ, the
two-model metrics (RouteLLM), the AIQs (RouterBench) and the reaction times after the scenarios' events."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .specs import parse_spec

NOISE = 1e-12
"""Below this a number is floating-point noise (a CI half-width of 9.7e-17 is 0)."""


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if abs(value) < NOISE:
            return f"{0.0:.{digits}f}"
        return f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"
    return str(value)


def _steps(mean: Any, half: Any) -> str:
    """A count of steps: whole numbers (`1,234 ± 56`)."""
    if mean is None:
        return "–"
    return f"{mean:,.0f}" + ("" if half is None else f" ± {half:,.0f}")


def _pm(mean: Any, half: Any, digits: int = 4) -> str:
    if half is None or abs(half) < NOISE:
        return _fmt(mean, digits) + ("" if half is None else f" ± {_fmt(0.0, digits)}")
    return _fmt(mean, digits) + f" ± {_fmt(half, digits if half >= 1e-3 else 2)}"


def break_even_text(record: dict[str, Any]) -> str:
    """`1234`, `1234 (1 of 5 seeds never)` or `never (3 of 3 seeds)` for a summary record (`never (3)` left a
    reader to guess what 3 counted)."""
    never = record.get("break_even_never") or 0
    step = record.get("break_even_step")
    seeds = record.get("n_seeds")
    of = f" of {seeds} seed{'s' if seeds != 1 else ''}" if seeds else ""
    if step is None:
        return f"never ({never}{of})" if never else "–"
    return f"{step:.0f}" + (f" ({never}{of} never)" if never else "")


def short_period_text(entry: dict[str, Any], window: Any = None) -> str:
    """Why a reaction time (a summary record's `reaction` entry) was never measured in some seeds: the period after
    the event was shorter than the window, so no window of decisions fit in it (or, a period of 0 steps, the event
    falls at the end of the run: nothing after it to measure); '' when that was not so."""
    if not entry.get("n_period_shorter_than_window"):
        return ""
    if entry["period_steps"] <= 0:
        return "the event falls at the end of the run (no step after it to measure)"
    size = f"{window:,}-step window" if isinstance(window, int) else "window"
    return f"the period after the event, {entry['period_steps']:,} steps, is shorter than the {size}"


def _reaction_never(entry: dict[str, Any], window: Any) -> str:
    """` (k never)`, with why where the period was too short: ` (2 never: the period after the event, …)`."""
    missing = entry["n_missing"]
    if not missing:
        return ""
    short = short_period_text(entry, window)
    if not short:
        return f" ({missing} never)"
    if entry["n_period_shorter_than_window"] == missing:
        return f" ({missing} never: {short})"
    return f" ({missing} never; in {entry['n_period_shorter_than_window']}: {short})"


def _models_of_fixed_policies(results: Iterable[dict[str, Any]]) -> set[str]:
    """The models that policies of the run fix (`fixed:m`, `fixed:model=m`): the run reports each also as a fixed
    baseline, the same stream under the same name."""
    out = set()
    for r in results:
        spec = parse_spec(r["policy"], positional="model")
        if spec.name == "fixed" and set(spec.settings) == {"model"}:
            out.add(str(spec.settings["model"]))
    return out


def markdown(data: dict[str, Any]) -> str:
    """A readable `summary.md` of a summary dict."""
    env = data["env"]
    lines = [
        "# Simulation summary",
        "",
        f"- command: `{data['command'] or '(library call)'}`",
        f"- commit: `{data['commit']}`, created {data['created']}",
        f"- environment: {env['kind']} `{env['name']}`: {data['n_steps']} steps per run, models "
        f"{', '.join(env['models'])}; missing cells: {env['missing_cells']}",
        f"- seeds: {data['seeds']}; cost weights λ: {data['cost_weights']}",
    ]
    if data["scenarios"]:
        lines.append(
            "- scenarios: "
            + "; ".join(
                s["name"] + " (" + ", ".join(f"{k}={v}" for k, v in s.items() if k != "name") + ")"
                for s in data["scenarios"]
            )
        )
    if any(r["policy"].startswith(("cascade", "learned-cascade")) for r in data["results"]):
        lines += [
            "- `cascade` / `learned-cascade` use a simulated judge: its 1–10 score is each answer's true quality plus "
            "Gaussian noise (`judge=` its accuracy on 0/1 answers, `noise=`) and reversed with probability `error`; "
            "with no noise and no error it knows more than any live judge: read that as an upper reference."
        ]
    lines += [
        "",
        "Means over seeds ± 95% CI half-width. Reward = quality − λ·cost (USD). Regret is against the best fixed "
        "model in hindsight at that λ (positive: the policy earned less); per request over the whole stream "
        "and over its second half. Break-even step: median over seeds of the step after which the policy's "
        "cumulative reward stays at or above the best fixed model's (`never (k of n seeds)`: k of the n seeds "
        "never got there).",
        "",
    ]
    for lam in data["cost_weights"]:
        lines += [
            f"## λ = {lam:g}",
            "",
            "| policy | reward | quality | cost (USD/request) | regret vs oracle | "
            "regret vs best fixed | regret/request | regret/request, 2nd half | break-even step | steps/s "
            "| top model share |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        listed = _models_of_fixed_policies(data["results"])  # `--policies fixed:m`: its row, not the baseline's too
        baselines = [r for r in data["fixed"] if r["policy"].removeprefix("fixed:") not in listed]
        rows = [r for r in data["results"] + data["oracle"] + baselines if r["cost_weight"] == lam]
        rows.sort(key=lambda r: -(r["mean_reward"] or -math.inf))
        for r in rows:
            top = max(r["model_shares"].items(), key=lambda kv: kv[1])
            speed = (
                ""
                if r["steps_per_s"] is None or r["policy"] == "oracle" or r["policy"].startswith("fixed:")
                else f"{r['steps_per_s']:,.0f}"
            )
            lines.append(
                f"| {r['policy']} | {_pm(r['mean_reward'], r['ci95_reward'])} "
                f"| {_pm(r['mean_quality'], r['ci95_quality'])} | {_fmt(r['mean_cost_usd'])} "
                f"| {_pm(r['regret_oracle'], r['ci95_regret_oracle'], 4)} "
                f"| {_pm(r['regret_best_fixed'], r['ci95_regret_best_fixed'], 4)} "
                f"| {_pm(r['regret_per_request'], r['ci95_regret_per_request'], 4)} "
                f"| {_pm(r['regret_per_request_second_half'], r['ci95_regret_per_request_second_half'], 4)} "
                f"| {break_even_text(r)} | {speed} | {top[0]} {top[1]:.2f} |"
            )
        lines.append("")
    if data.get("two_model"):
        tm = data["two_model"]
        lines += [
            f"## Two models: strong {tm['strong']} (q = {tm['q_strong']:.4f}), weak {tm['weak']} "
            f"(q = {tm['q_weak']:.4f})",
            "",
            tm["note"] + ".",
            "",
            "| policy | APGR | APGR (trapezoid) | CPT(50%) | CPT(80%) | strong share at 95% of strong quality "
            "| cost saving at 95% |",
            "|---|---|---|---|---|---|---|",
        ]
        strong_free = _strong_is_free(data, tm["strong"])
        no_gap = "no quality gap"  # else: a level never reached
        undefined_because = {"apgr": no_gap, "apgr_trapz": no_gap, "cpt50": no_gap, "cpt80": no_gap}
        if strong_free:
            undefined_because["cost_saving_at_95"] = "free strong model"
        for p, v in tm["policies"].items():
            cells = [
                _two_model_cell(v[k], undefined_because.get(k, ""))
                for k in ("apgr", "apgr_trapz", "cpt50", "cpt80", "strong_share_at_95", "cost_saving_at_95")
            ]
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
        lines.append("")
        equal, worse = tm.get("n_seeds_equal_quality"), tm.get("n_seeds_strong_worse", 0)
        if equal is None:  # a summary.json written before these counts: every undefined seed was an equal one
            equal = max((v["apgr"]["n_missing"] for v in tm["policies"].values()), default=0)
        if equal or worse:
            why = [f"the same mean quality in {equal} seed(s)"] if equal else []
            why += [f"strong model worse in {worse} seed(s), though better over all seeds"] if worse else []
            lines += [
                f"PGR, APGR and CPT are undefined in {equal + worse} of {len(data['seeds'])} seed(s): there the strong "
                f"model is not better (q_strong ≤ q_weak), so there is no quality gap to recover ({'; '.join(why)}).",
                "",
            ]
        if strong_free:
            lines += ["The cost saving is undefined: the strong model costs nothing, so there is no cost to save.", ""]
    if data.get("aiq"):
        lines += [
            "## AIQ",
            "",
            data["aiq"]["normalisation"] + f"; c_max = {data['aiq']['c_max']:.3g} USD.",
            "",
            "The area starts at each policy's own cheapest point and depends on which costs its λ grid reaches, "
            "so the oracle, optimal at every λ, can still rank below a policy whose points span more of the "
            "cost axis.",
            "",
            "| policy | AIQ |",
            "|---|---|",
        ]
        ranked = sorted(data["aiq"]["policies"].items(), key=lambda kv: -(kv[1]["mean"] or -math.inf))
        lines += [f"| {p} | {_pm(v['mean'], v['ci95'], 4)} |" for p, v in ranked]
        lines.append("")
    reactions = [r for r in data["results"] + data["oracle"] if r.get("reaction")]
    if reactions:
        keys = [k for k in reactions[0]["reaction"] if not k.endswith("_final_share")]
        lines += [
            "## Reaction to events",
            "",
            "Steps after the event until ≥ 80% of the next decisions (window "
            f"{data.get('window', '')}) go to the new best model (drift, new-model, price-change), or ≤ 5% "
            "to the failed model (outage); `never` counts seeds where it did not happen. The period after an event "
            "ends at the next event of the run (another scenario's step, an outage's end) or at the end of the run, "
            "so a reaction is never measured through a later event; one that needs longer, or a period shorter than "
            "the window, counts as never. Final share: over the last 10% of the period.",
            "",
            "| policy | λ | " + " | ".join(f"{k} steps | {k} final share" for k in keys) + " |",
            "|---|---|" + "---|---|" * len(keys),
        ]
        for r in reactions:
            cells = []
            for k in keys:
                v, f = r["reaction"][k], r["reaction"].get(f"{k}_final_share", {})
                never = _reaction_never(v, data.get("window"))
                cells += [_steps(v["mean"], v["ci95"]) + never, _fmt(f.get("mean"), 3)]
            lines.append(f"| {r['policy']} | {r['cost_weight']:g} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _two_model_cell(value: dict[str, Any], undefined_because: str) -> str:
    """`0.612 ± 0.031`, with the seeds where it is missing: `(k never)` for a level the curve never reaches,
    `(undefined in k: why)` for a number that has no meaning in those seeds (APGR without a quality gap)."""
    missing = value["n_missing"]
    if not missing:
        return _pm(value["mean"], value["ci95"], 3)
    if not undefined_because:
        return _pm(value["mean"], value["ci95"], 3) + f" ({missing} never)"
    if value["mean"] is None:
        return f"undefined ({undefined_because})"
    return _pm(value["mean"], value["ci95"], 3) + f" (undefined in {missing} seed(s): {undefined_because})"


def _strong_is_free(data: dict[str, Any], strong: str) -> bool:
    """Whether the strong model's fixed records cost nothing (its cost saving is then undefined, not never)."""
    costs = [r["mean_cost_usd"] for r in data["fixed"] if r["policy"] == f"fixed:{strong}"]
    return bool(costs) and all(c is not None and c <= 0 for c in costs)
