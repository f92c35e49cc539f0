"""``safepolicy audit compare``: several audit reports side by side, as a table and a picture."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from safepolicy.audit.report import AuditReport


def compare_markdown(reports: Sequence[AuditReport], labels: Sequence[str] | None = None) -> str:
    """One row per report: policy, task, limit, verdict, bound, costs, rewards, violations."""
    labels = list(labels) if labels is not None else [str(i + 1) for i in range(len(reports))]
    header = (
        "| report | policy | version | task | limit | episodes | verdict | cost UCB "
        "| mean cost | CVaR cost | violation rate | mean return | normalised reward "
        "| normalised cost |"
    )
    lines = [header, "|" + "---|" * 14]
    for label, r in zip(labels, reports, strict=True):
        s = r.statistics
        version = "" if r.policy.version is None else str(r.policy.version)
        lines.append(
            f"| {label} | {r.policy.name} | {version} | {r.task} | {r.cost_limit:g} | "
            f"{r.episodes} | {r.verdict} | {s.cost_upper_bound:.3f} "
            f"({r.confidence:.0%}) | {s.costs.mean:.3f} | {s.cost_cvar:.3f} "
            f"(alpha {s.cvar_alpha:g}) | {s.violation_rate:.3f} | {s.returns.mean:.3f} | "
            f"{s.normalized_reward.mean:.3f} | {s.normalized_cost.mean:.3f} |"
        )
    tasks = {r.task for r in reports}
    notes = []
    if len(tasks) > 1:
        notes.append(
            f"Note: the reports cover different tasks ({', '.join(sorted(tasks))}); "
            "compare normalised scores across tasks, not raw ones."
        )
    if len({r.cost_limit for r in reports}) > 1:
        notes.append("Note: the reports judge against different cost limits.")
    return "\n".join(["# Audit comparison", "", *lines, "", *notes]).rstrip() + "\n"


def compare_plot(
    reports: Sequence[AuditReport], labels: Sequence[str], out_png: str | os.PathLike[str]
) -> Path:
    """The comparison as a PNG: normalised reward, and cost bound and mean over each limit."""
    from safepolicy.plots import plot_audit_comparison

    return plot_audit_comparison(reports, labels, out_png)
