"""Write an `Evaluation` as `evaluation.json`, `evaluation.md` and `evaluation.png` (and format it as text).

`evaluation.json` holds `candidates`, a list with one flat record per (candidate, estimator): `candidate`,
`estimator`, `value` (reward), `ci_low`, `ci_high`, `ess`, `n`, then quality and cost with their intervals,
the overlap numbers and warnings; plus the log's size, global warnings and the settings. Non-finite numbers
are written as null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from .evaluate import EstimateRecord, Evaluation
from .scope import Scope


def _num(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "–"


def _interval(lo: float, hi: float, digits: int = 3) -> str:
    return f"[{_num(lo, digits)}, {_num(hi, digits)}]"


PREFERRED = ("dr", "snips", "clipped-ips", "ips", "dm", "replay")
"""The estimator that ranks candidates: the first of these the evaluation has (DR: lowest variance of the
unbiased ones when the reward model helps, still unbiased when it does not)."""


def ranking_estimator(evaluation: Evaluation) -> str:
    """The estimator candidates are ranked by (`PREFERRED`)."""
    have = {r.estimator for r in evaluation.records}
    return next((e for e in PREFERRED if e in have), evaluation.records[0].estimator if evaluation.records else "")


def ranked_candidates(evaluation: Evaluation) -> list[str]:
    """Candidates by their `ranking_estimator` value, best first (non-finite values last)."""
    by = ranking_estimator(evaluation)
    value = {r.candidate: r.value for r in evaluation.records if r.estimator == by}
    return sorted(
        evaluation.candidates, key=lambda c: -value[c] if math.isfinite(value.get(c, math.nan)) else math.inf
    )


def on_own_scale(evaluation: Evaluation, record: EstimateRecord) -> bool:
    """Whether `record`'s reward was measured with its candidate's own λ (`reward_lambda="candidate"` and an
    `@lambda=`): on another scale than the logged policy's, so it compares with no other candidate's reward."""
    return evaluation.settings.get("reward_lambda") == "candidate" and record.cost_weight is not None


def _trusted(evaluation: Evaluation) -> list[EstimateRecord]:
    by = ranking_estimator(evaluation)
    return [
        r for r in evaluation.records
        if r.estimator == by and not r.warnings and math.isfinite(r.ci_low) and math.isfinite(r.value)
    ]


def best_trusted(evaluation: Evaluation) -> EstimateRecord | None:
    """The candidate to believe in: under the ranking estimator, among the estimates whose overlap raised no
    warning and whose interval is finite, the one with the highest lower bound. A candidate whose reward was
    measured with its own λ (`on_own_scale`) is not compared, nor one whose estimate credits choices of a model this
    catalog does not route (`Evaluation.unroutable`: it cannot be deployed). None when none qualifies."""
    trusted = [r for r in _trusted(evaluation)
               if not on_own_scale(evaluation, r) and r.candidate not in evaluation.unroutable]
    return max(trusted, key=lambda r: (r.ci_low, r.value), default=None)


def format_best(evaluation: Evaluation) -> str:
    """One sentence: the best candidate whose interval is trusted, and how it compares with the logged policy."""
    best = best_trusted(evaluation)
    own = sorted({r.candidate for r in evaluation.records if on_own_scale(evaluation, r)})
    note = (
        f" Not compared: {', '.join(own)}, whose reward is measured with its own λ (another scale: compare quality "
        "and cost)." if own else ""
    )
    if evaluation.unroutable:
        spelt = "; ".join(f"{c} ({', '.join(models)})" for c, models in evaluation.unroutable.items())
        note += (f" Not recommended ({UNROUTABLE_MARK} in the table): {spelt}: each estimate credits choices of models "
                 "this catalog does not route (removed, route = false or retired since), as logged while they were "
                 "routable; they cannot be made now. To compare them on what they do now, evaluate the decisions "
                 "made since the change (--since), or replay the policy (-C linucb, not shadow:linucb).")
    if best is None:
        trusted = _trusted(evaluation)
        if not trusted:
            by = ranking_estimator(evaluation)
            warned = all(r.warnings for r in evaluation.records if r.estimator == by)
            why = ("every one has an overlap warning" if warned
                   else "each has an overlap warning or no finite interval: too few rounds")
            return f"No candidate's estimate can be trusted ({why}): log more, or explore more." + note
        if any(not on_own_scale(evaluation, r) for r in trusted):  # each one credits choices that cannot be made
            return "No candidate this catalog can deploy has a trusted estimate." + note
        return "No candidate measured with the logged λ has a trusted estimate." + note
    text = (
        f"Best candidate with a trusted interval ({best.estimator}): {best.candidate}, reward {_num(best.value)} "
        f"{_interval(best.ci_low, best.ci_high)}"
    )
    try:
        logged = evaluation.record("logged", best.estimator)
    except KeyError:
        return text + "." + note
    if best.candidate == "logged":
        return text + ": the logged policy itself." + note
    if best.ci_low > logged.value:
        return text + f": its lower bound beats the logged policy's {_num(logged.value)}." + note
    return text + f": not yet distinguishable from the logged policy's {_num(logged.value)}." + note


UNROUTABLE_MARK = "✗"
"""The table's mark of a candidate whose estimate credits choices of a model this catalog does not route."""


def format_table(evaluation: Evaluation, *, estimators: Sequence[str] | None = None) -> str:
    """A Markdown table: one row per (candidate, estimator), candidates best first (`ranked_candidates`); cost in
    USD per 1000 requests; ⚠ marks warnings, ✗ a candidate that credits choices of a model this catalog does not
    route (`Evaluation.unroutable`: never recommended)."""
    keep = set(estimators) if estimators is not None else None
    order = {c: i for i, c in enumerate(ranked_candidates(evaluation))}
    conf = round(100 * float(evaluation.settings.get("confidence", 0.95)))
    lines = [
        f"| candidate | estimator | reward | {conf}% interval | quality | cost $/1k req | ESS | n | |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in sorted(evaluation.records, key=lambda r: order[r.candidate]):  # stable: estimators keep their order
        if keep is not None and r.estimator not in keep:
            continue
        lines.append(
            f"| {r.candidate} | {r.estimator} | {_num(r.value)} | {_interval(r.ci_low, r.ci_high)} | "
            f"{_num(r.quality.value)} {_interval(r.quality.ci_low, r.quality.ci_high)} | "
            f"{_num(1000 * r.cost.value, 3)} | {_num(r.ess, 0)} | {r.n} | {_marks(evaluation, r)} |"
        )
    return "\n".join(lines)


def _marks(evaluation: Evaluation, record: EstimateRecord) -> str:
    return ("⚠" if record.warnings else "") + (UNROUTABLE_MARK if record.candidate in evaluation.unroutable else "")


def _warnings(evaluation: Evaluation) -> list[str]:
    out = list(evaluation.warnings)
    seen: set[tuple[str, str]] = set()
    for r in evaluation.records:
        for w in r.warnings:
            if (r.candidate, w) not in seen:
                seen.add((r.candidate, w))
                out.append(f"{r.candidate}: {w}")
    return out


def _of_policy(evaluation: Evaluation) -> str:
    """Whose decisions were evaluated, when a scope chose some: one live policy's (`logged` is then that policy), a
    time range's, a tenant's."""
    s = evaluation.settings
    scope = Scope(s.get("policy"), s.get("since"), s.get("until"), s.get("tenant"))
    if scope.policy_only:
        return f"; the decisions of the live policy {scope.policy!r} alone" if scope.policy else ""
    return f"; the decisions in the scope: {scope.describe()}"


def format_markdown(evaluation: Evaluation, *, title: str = "Offline evaluation") -> str:
    """The whole `evaluation.md`: what was evaluated, the table, the warnings."""
    s = evaluation.settings
    lam = s.get("reward_lambda", "logged")
    lam_text = (
        "each request's logged λ" if lam == "logged" else ("each candidate's λ" if lam == "candidate" else f"λ = {lam}")
    )
    parts = [
        f"# {title}",
        "",
        f"{evaluation.n_logged} logged decisions, {evaluation.n_with_feedback} with feedback, "
        f"{evaluation.n_evaluated} evaluated ({evaluation.mode} mode{_of_policy(evaluation)}). "
        f"Models: {', '.join(evaluation.models)}.",
        f"Reward = quality − λ·cost with {lam_text}. Estimators: {', '.join(s.get('estimators', []))}.",
        "",
        format_table(evaluation),
        "",
        format_best(evaluation),
        "",
    ]
    warnings = _warnings(evaluation)
    if warnings:
        parts += ["## Warnings", "", *(f"- {w}" for w in warnings), ""]
    return "\n".join(parts)


def plot_evaluation(
    evaluation: Evaluation, path: str | Path, *, truth: Mapping[str, float] | None = None, title: str = ""
) -> Path:
    """A forest plot: one row per candidate, the reward estimate and interval of every estimator, and the true
    value (black ×) where `truth` gives one. Candidates with overlap warnings are labelled with ⚠."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    candidates = list(evaluation.candidates)
    estimators = list(dict.fromkeys(r.estimator for r in evaluation.records))
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(candidates) + 1.6))
    step = 0.7 / max(len(estimators), 1)
    for k, est in enumerate(estimators):
        ys, xs, lo, hi = [], [], [], []
        for i, c in enumerate(candidates):
            try:
                r: EstimateRecord = evaluation.record(c, est)
            except KeyError:
                continue
            if not math.isfinite(r.value):
                continue
            ys.append(i - 0.35 + step * (k + 0.5))
            xs.append(r.value)
            lo.append(r.value - r.ci_low if math.isfinite(r.ci_low) else 0.0)
            hi.append(r.ci_high - r.value if math.isfinite(r.ci_high) else 0.0)
        ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", ms=4, capsize=2, label=est)
    if truth:
        pts = [(truth[c], i) for i, c in enumerate(candidates) if c in truth]
        if pts:
            ax.scatter(
                [p[0] for p in pts], [p[1] for p in pts], marker="x", color="black", s=50, zorder=5, label="true"
            )
    warned = {r.candidate for r in evaluation.records if r.warnings}
    ax.set_yticks(range(len(candidates)))
    ax.set_yticklabels([f"⚠ {c}" if c in warned else c for c in candidates])
    ax.invert_yaxis()
    conf = round(100 * float(evaluation.settings.get("confidence", 0.95)))
    ax.set_xlabel(f"estimated reward per request ({conf}% interval)")
    ax.set_title(title or f"Offline evaluation ({evaluation.mode}, n = {evaluation.n_evaluated})")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_evaluation(
    out_dir: str | Path,
    evaluation: Evaluation,
    *,
    truth: Mapping[str, float] | None = None,
    title: str = "Offline evaluation",
    extra: Mapping[str, object] | None = None,
) -> dict[str, Path]:
    """Write `evaluation.json`, `evaluation.md` and `evaluation.png` into `out_dir` (created if needed).

    `truth` (candidate → true reward) is drawn on the plot and stored in the JSON; `extra` is stored as is
    (e.g. the command, the commit, the database path).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = evaluation.to_json()
    if truth is not None:
        data["truth"] = dict(truth)
    if extra is not None:
        data["meta"] = dict(extra)
    paths = {
        "json": out / "evaluation.json",
        "md": out / "evaluation.md",
        "png": out / "evaluation.png",
    }
    paths["json"].write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    paths["md"].write_text(format_markdown(evaluation, title=title), encoding="utf-8")
    plot_evaluation(evaluation, paths["png"], truth=truth, title=title)
    return paths
