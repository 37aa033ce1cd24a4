"""PNG plots of a simulation, drawn from `summary.json` and `curves.json` data (matplotlib, Agg backend).

- `regret.png`: cumulative regret against the oracle (top) and the best fixed model (bottom), per λ,
  mean over seeds with 95% bands.
- `cost_quality.png`: every policy's (mean cost, mean quality) points over λ with its non-decreasing hull;
  single models as labelled points; the oracle.
- `shares.png`: each policy's model shares over time at one λ.
- `strong_share.png` (two models only): quality against the share of strong-model calls, as RouteLLM plots it.

Every plot of a run gives a policy the same colour (`_colours`); the scenarios' event steps are dotted vertical
lines on the plots over time; each cost–quality point is labelled with its λ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as M
from .specs import step_of

MAX_PANELS = 4


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(data: dict[str, Any]) -> dict[str, Any]:
    """One colour per policy (the oracle last), the same in every plot of the run."""
    plt = _pyplot()
    policies = list(dict.fromkeys(r["policy"] for r in data["results"] + data.get("oracle", [])))
    palette = [*plt.cm.tab10.colors, *plt.cm.tab20.colors[1::2]]  # ten distinct colours first, then their tints
    return {p: palette[i % len(palette)] for i, p in enumerate(policies)}


def _event_steps(data: dict[str, Any]) -> list[tuple[int, str]]:
    """(step, label) of every scenario event of the run: its `at` and, for an outage, its `until`."""
    out = []
    n = int(data.get("n_steps") or 0)
    for scenario in data.get("scenarios") or []:
        for key in ("at", "until"):
            if isinstance(scenario.get(key), int | float) and n:
                out.append((step_of(float(scenario[key]), n), f"{scenario.get('name', '')} {key}"))
    return out


def _mark_events(ax: Any, events: list[tuple[int, str]]) -> None:
    for step, label in events:
        ax.axvline(step, color="black", ls=":", lw=0.8)
        ax.annotate(label, (step, 1.0), xycoords=("data", "axes fraction"), fontsize=6, rotation=90,
                    va="top", ha="right")


def _lambdas(data: dict[str, Any]) -> list[float]:
    lams = list(data["cost_weights"])
    if len(lams) <= MAX_PANELS:
        return lams
    picks = np.unique(np.linspace(0, len(lams) - 1, MAX_PANELS).round().astype(int))
    return [lams[i] for i in picks]


def plot_regret(curves: dict[str, Any], data: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    lams = _lambdas(data)
    fig, axes = plt.subplots(2, len(lams), figsize=(4.2 * len(lams), 6.5), squeeze=False)
    colours, events = _colours(data), _event_steps(data)
    for j, lam in enumerate(lams):
        for i, key in enumerate(("regret_oracle", "regret_best_fixed")):
            ax = axes[i][j]
            for run in curves["runs"]:
                if run["cost_weight"] != lam or run["policy"] == "oracle":
                    continue
                c = run[key]
                label = run["policy"] if i == 0 else _per_request_label(data, run["policy"], lam)
                colour = colours.get(run["policy"])
                ax.plot(run["steps"], c["mean"], label=label, lw=1.2, color=colour)
                ax.fill_between(run["steps"], c["lo"], c["hi"], alpha=0.15, color=colour)
            ax.axhline(0, color="grey", lw=0.6)
            _mark_events(ax, events)
            ax.set_title(f"λ = {lam:g}: regret vs {'oracle' if i == 0 else 'best fixed model'}", fontsize=9)
            ax.set_xlabel("step")
            ax.locator_params(axis="x", nbins=4)
    axes[0][0].set_ylabel("cumulative regret (reward)")
    axes[1][0].set_ylabel("cumulative regret (reward)")
    for j in range(len(lams)):
        axes[1][j].legend(fontsize=6, loc="upper left", title="per request: whole / 2nd half", title_fontsize=6)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, max(1, len(labels))), fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _per_request_label(data: dict[str, Any], policy: str, lam: float) -> str:
    """`policy  +0.012 / −0.003` (regret per request vs the best fixed model, whole stream / second half)."""
    for r in data["results"]:
        if r["policy"] == policy and r["cost_weight"] == lam and r.get("regret_per_request") is not None:
            return f"{policy}  {r['regret_per_request']:+.3f} / {r['regret_per_request_second_half']:+.3f}"
    return policy


def plot_cost_quality(data: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 5.5))
    colours = _colours(data)
    groups: dict[str, list[tuple[float, float, float]]] = {}
    for r in data["results"] + data["oracle"]:
        groups.setdefault(r["policy"], []).append((r["mean_cost_usd"], r["mean_quality"], r["cost_weight"]))
    for policy, pts in groups.items():
        p = np.array(pts, dtype=float)
        colour = colours.get(policy)
        ax.scatter(p[:, 0], p[:, 1], s=14, label=policy, marker="*" if policy == "oracle" else "o", color=colour)
        hull = M.upper_hull(p[:, :2])
        ax.plot(hull[:, 0], hull[:, 1], lw=1, color=colour)
        for cost, quality, lam in pts:
            if np.isfinite(cost) and np.isfinite(quality):
                ax.annotate(f"λ={lam:g}", (cost, quality), fontsize=5, color=colour, xytext=(2, -6),
                            textcoords="offset points")
    seen = set()
    for r in data["fixed"]:
        if r["policy"] in seen:
            continue
        seen.add(r["policy"])
        ax.scatter([r["mean_cost_usd"]], [r["mean_quality"]], color="black", marker="x", s=20)
        ax.annotate(
            r["policy"].removeprefix("fixed:"),
            (r["mean_cost_usd"], r["mean_quality"]),
            fontsize=6,
            xytext=(3, 2),
            textcoords="offset points",
        )
    costs = np.array([r["mean_cost_usd"] for r in data["results"] + data["oracle"] + data["fixed"]], dtype=float)
    if (costs[np.isfinite(costs)] > 0).all():  # a free model (cost 0) has no place on a log axis
        ax.set_xscale("log")
        ax.set_xlabel("mean cost per request (USD, log scale)")
    else:
        ax.set_xlabel("mean cost per request (USD)")
    ax.set_ylabel("mean quality")
    ax.set_title("cost–quality over λ, with non-decreasing hulls (× = single models)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_shares(curves: dict[str, Any], data: dict[str, Any], path: Path, cost_weight: float | None = None) -> None:
    plt = _pyplot()
    lams = data["cost_weights"]
    lam = cost_weight if cost_weight is not None else lams[len(lams) // 2]
    runs = [r for r in curves["runs"] if r["cost_weight"] == lam]
    cols = min(4, len(runs))
    rows = (len(runs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows + 0.8), squeeze=False)
    names = curves["model_names"]
    events = _event_steps(data)
    for i, run in enumerate(runs):
        ax = axes[i // cols][i % cols]
        edges = np.array(run["share_edges"])
        mid = (edges[:-1] + edges[1:]) / 2
        ax.stackplot(mid, *[np.array(run["shares"][m]) for m in names], labels=names)
        ax.set_ylim(0, 1)
        _mark_events(ax, events)
        ax.set_title(run["policy"], fontsize=8)
    for j in range(len(runs), rows * cols):
        axes[j // cols][j % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7)
    fig.suptitle(f"model share over time (λ = {lam:g}, mean over seeds)", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_strong_share(data: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    tm = data["two_model"]
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    colours = _colours(data)
    for policy in dict.fromkeys(r["policy"] for r in data["results"]):
        pts = sorted(
            (r["model_shares"][tm["strong"]], r["mean_quality"]) for r in data["results"] if r["policy"] == policy
        )
        p = np.array(pts)
        ax.plot(p[:, 0] * 100, p[:, 1], marker=".", label=policy, lw=1, color=colours.get(policy))
    ax.axhline(tm["q_weak"], color="grey", ls="--", lw=0.8, label=tm["weak"])
    ax.axhline(tm["q_strong"], color="red", ls="--", lw=0.8, label=tm["strong"])
    ax.axhline(0.95 * tm["q_strong"], color="red", ls=":", lw=0.8, label="95% of strong")
    ax.set_xlabel("strong model calls (%)")
    ax.set_ylabel("mean quality")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def redraw_cost_quality(folder: Path) -> Path:
    """Draw `cost_quality.png` again from a run's `summary.json` (the numbers are not recomputed)."""
    import json

    path = folder / "cost_quality.png"
    plot_cost_quality(json.loads((folder / "summary.json").read_text()), path)
    return path


def write_plots(data: dict[str, Any], curves: dict[str, Any], folder: Path) -> list[Path]:
    paths = [folder / "regret.png", folder / "cost_quality.png", folder / "shares.png"]
    plot_regret(curves, data, paths[0])
    plot_cost_quality(data, paths[1])
    plot_shares(curves, data, paths[2])
    if data.get("two_model"):
        paths.append(folder / "strong_share.png")
        plot_strong_share(data, paths[-1])
    return paths
