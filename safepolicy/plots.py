"""Pictures people look at: a training run's curves and an audit comparison (PNG, matplotlib).

matplotlib is imported inside each function (it costs about half a second), and figures are
drawn on the Agg canvas directly, so no GUI backend is touched and the process-wide pyplot state
is left alone. Every PNG goes through :func:`save_figure`, an atomic write.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safepolicy.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from safepolicy.audit.report import AuditReport

CURVES_FILENAME = "curves.png"


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Render ``figure`` as PNG and write it atomically to ``path``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return atomic_write_bytes(path, buffer.getvalue())


def read_scalars(path: str | os.PathLike[str]) -> dict[str, list[float]]:
    """``scalars.csv`` as columns of floats (an empty cell, a column a stage lacks, is NaN)."""
    columns: dict[str, list[float]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            for key, text in row.items():
                if key in (None, "stage"):
                    continue
                try:
                    value = float(text) if text not in (None, "") else math.nan
                except ValueError:
                    value = math.nan
                columns.setdefault(str(key), []).append(value)
    return columns


def _panels(columns: Mapping[str, list[float]]) -> dict[str, list[str]]:
    """Which logged values go in which panel: losses, multipliers, cost values and budgets."""
    panels: dict[str, list[str]] = {"losses": [], "multiplier": [], "cost value against budget": []}
    for name in columns:
        if name in ("step", "wall_seconds"):
            continue
        short = name.split("/")[-1]
        if name.startswith("loss/"):
            panels["losses"].append(name)
        elif "lambda" in short:
            panels["multiplier"].append(name)
        elif "cost" in short:
            panels["cost value against budget"].append(name)
    return panels


def plot_training_curves(
    scalars_csv: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    cost_limit: float | None = None,
    evaluation: Mapping[str, Any] | None = None,
) -> Path:
    """One PNG of a run: losses, the multiplier, cost values against their budget, evaluation.

    Columns are found by name (``loss/*``; ``*lambda*``; ``*cost*``, where names with
    ``budget`` are drawn dashed), so every algorithm's log fits without a list per algorithm.
    """
    columns = read_scalars(scalars_csv)
    steps = columns.get("step", [])
    panels = _panels(columns)
    figure = new_figure(11.0, 7.5)
    axes = figure.subplots(2, 2).ravel()
    for ax, (title, names) in zip(axes[:3], panels.items(), strict=True):
        for name in names:
            dashed = "budget" in name
            ax.plot(
                steps, columns[name], label=name, linestyle="--" if dashed else "-", linewidth=1.2
            )
        if not names:
            ax.text(
                0.5,
                0.5,
                "not logged by this algorithm",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="grey",
            )
        else:
            ax.legend(fontsize=7)
        ax.set(title=title, xlabel="gradient step")
    _evaluation_panel(axes[3], evaluation, cost_limit)
    figure.tight_layout()
    return save_figure(figure, out_png)


def _evaluation_panel(
    ax: Any, evaluation: Mapping[str, Any] | None, cost_limit: float | None
) -> None:
    ax.set(title="final evaluation (DSRL-normalised)")
    if not evaluation:
        ax.text(
            0.5,
            0.5,
            "no evaluation (run.eval_episodes = 0)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="grey",
        )
        return
    names = ["normalized_reward", "normalized_cost"]
    values = [float(evaluation[name]) for name in names]
    colors = ["#2e86c1", "#c0392b" if values[1] > 1.0 else "#27ae60"]
    ax.bar(["reward", "cost"], values, color=colors)
    ax.axhline(
        1.0,
        color="#c0392b",
        linestyle="--",
        linewidth=1,
        label=f"cost budget (limit {cost_limit:g})" if cost_limit is not None else "cost budget",
    )
    ax.legend(fontsize=7)
    ax.set(ylabel=f"mean over {evaluation.get('episodes', '?')} episodes")


def plot_audit_comparison(
    reports: Sequence[AuditReport], labels: Sequence[str], out_png: str | os.PathLike[str]
) -> Path:
    """Normalised reward and the cost bound against the limit for each report, side by side."""
    figure = new_figure(max(6.4, 1.6 * len(reports) + 2.0), 4.0)
    reward_ax, cost_ax = figure.subplots(1, 2)
    positions = list(range(len(reports)))
    rewards = [r.statistics.normalized_reward.mean for r in reports]
    reward_ax.bar(positions, rewards, color="#2e86c1")
    reward_ax.set(title="normalised reward (mean)", xticks=positions)
    reward_ax.set_xticklabels(labels, rotation=20, fontsize=8)
    # cost as a fraction of each report's own limit: reports on different limits stay comparable
    bounds = [
        r.statistics.cost_upper_bound / r.cost_limit if r.cost_limit > 0 else math.nan
        for r in reports
    ]
    means = [
        r.statistics.costs.mean / r.cost_limit if r.cost_limit > 0 else math.nan for r in reports
    ]
    colors = ["#27ae60" if r.verdict == "PASS" else "#c0392b" for r in reports]
    cost_ax.bar(positions, bounds, color=colors, alpha=0.6, label="upper bound / limit")
    cost_ax.scatter(positions, means, color="#2c3e50", zorder=3, label="mean cost / limit")
    cost_ax.axhline(1.0, color="#c0392b", linestyle="--", linewidth=1, label="cost limit")
    cost_ax.set(title="episode cost against the limit", xticks=positions)
    cost_ax.set_xticklabels(labels, rotation=20, fontsize=8)
    cost_ax.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, out_png)
