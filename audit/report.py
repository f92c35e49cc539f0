"""The audit report: ``report.json`` (pydantic, schema-versioned), ``report.md`` and PNG plots.

``REPORT_DIR/`` after an audit:

- ``report.json``: :class:`AuditReport`, the machine-readable record (``schema_version`` 1);
- ``report.md``: the same for a reviewer, with the verdict rule spelled out and the lineage;
- ``cost_distribution.png``: histogram of episode costs with the limit, mean and upper bound;
- ``reward_vs_cost.png``: one point per episode, the limit as a vertical line;
- ``cumulative_cost.png``: cumulative cost over the steps of every episode, with the limit.
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from safepolicy.errors import SafepolicyError
from safepolicy.fileio import atomic_write_text

REPORT_SCHEMA_VERSION = 1
REPORT_FILENAME = "report.json"
MARKDOWN_FILENAME = "report.md"
PLOT_FILENAMES = ("cost_distribution.png", "reward_vs_cost.png", "cumulative_cost.png")


class ReportError(SafepolicyError, ValueError):
    """A report directory or file that cannot be read as an audit report."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Interval(_Model):
    """A confidence interval (``null`` bound = unbounded on that side)."""

    low: float | None
    high: float | None
    confidence: float


class Summary(_Model):
    """One per-episode quantity over all episodes, with a bootstrap interval for its mean."""

    mean: float
    std: float
    min: float
    max: float
    mean_interval: Interval


class AuditedEpisode(_Model):
    """One episode the audit played: a row of ``episode_results`` in report.json."""

    seed: int
    episode_return: float
    episode_cost: float
    length: int
    terminated: bool
    normalized_reward: float
    normalized_cost: float
    violated: bool = Field(description="episode cost over the cost limit")


class PolicySource(_Model):
    """Which policy was audited and how it was reached."""

    name: str
    version: int | None
    source: Literal["artifact", "server"]
    location: str = Field(description="version directory, or HOST:PORT of the server")


class Lineage(_Model):
    """Where the policy came from, copied from its artifact metadata."""

    algorithm: str | None = None
    env_id: str | None = None
    training_cost_limit: float | None = None
    dataset_path: str | None = None
    dataset_sha256: str | None = None
    code_version: str | None = None
    training_seed: int | None = None
    trained_at: str | None = None
    exported_at: str | None = None
    training_config: dict[str, Any] = Field(default_factory=dict)
    training_evaluation: dict[str, Any] | None = None


class Statistics(_Model):
    returns: Summary
    costs: Summary
    lengths: Summary
    normalized_reward: Summary
    normalized_cost: Summary
    violation_rate: float
    violation_rate_interval: Interval
    cvar_alpha: float = Field(
        description="tail fraction: CVaR is the mean cost of the worst "
        "cvar_alpha fraction of episodes"
    )
    cost_cvar: float
    cost_cvar_interval: Interval
    cost_upper_bound: float = Field(
        description="one-sided upper confidence bound on the expected episode cost at `confidence`"
    )


class AuditReport(_Model):
    """Everything one audit found; ``report.json``."""

    schema_version: Literal[1] = 1  # REPORT_SCHEMA_VERSION
    created_at: datetime
    policy: PolicySource
    lineage: Lineage
    task: str
    env_id: str
    cost_limit: float
    confidence: float
    episodes: int
    seed: int = Field(description="episode i was reset with seed + i")
    num_envs: int
    bootstrap_resamples: int
    verdict: Literal["PASS", "FAIL"]
    rule: str
    method: str
    warnings: list[str] = Field(default_factory=list)
    statistics: Statistics
    episode_results: list[AuditedEpisode]
    wall_seconds: float
    env_steps_per_second: float
    audit_code_version: str

    def interval_text(self, interval: Interval) -> str:
        low = "-inf" if interval.low is None else f"{interval.low:.3g}"
        high = "inf" if interval.high is None else f"{interval.high:.3g}"
        return f"[{low}, {high}]"


def interval_model(low: float, high: float, confidence: float) -> Interval:
    """An :class:`Interval` with infinite bounds stored as ``None`` (JSON has no infinity)."""
    return Interval(
        low=None if math.isinf(low) else low,
        high=None if math.isinf(high) else high,
        confidence=confidence,
    )


def utc_now() -> datetime:
    return datetime.now(UTC)


def load_report(path: str | os.PathLike[str]) -> AuditReport:
    """Read ``report.json`` (or the directory holding it) and validate it."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ReportError(
            f"{path}: cannot read an audit report ({error.strerror}); pass a "
            f"REPORT_DIR written by `safepolicy audit --out REPORT_DIR`"
        ) from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not JSON ({error})") from error
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != REPORT_SCHEMA_VERSION:
        raise ReportError(
            f"{path}: report schema_version {version!r}, this safepolicy reads "
            f"{REPORT_SCHEMA_VERSION}; re-run the audit with this version"
        )
    try:
        return AuditReport.model_validate(data)
    except ValidationError as error:
        raise ReportError(f"{path}: invalid audit report ({error})") from error


def _markdown(report: AuditReport) -> str:
    s = report.statistics
    policy = report.policy
    version = "serving version" if policy.version is None else f"version {policy.version}"
    lines = [
        f"# Safety audit: {policy.name} {version} on {report.task}",
        "",
        f"**Verdict: {report.verdict}** (cost limit {report.cost_limit:g}, "
        f"confidence {report.confidence:.0%}, {report.episodes} episodes)",
        "",
        f"Rule: {report.rule}",
        "",
        f"Upper bound on expected episode cost: **{s.cost_upper_bound:.3f}** "
        f"against the limit {report.cost_limit:g}.",
        "",
        f"Method: {report.method}",
        "",
    ]
    if report.warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in report.warnings], ""]
    lines += [
        "## Results",
        "",
        f"| quantity | mean | {report.confidence:.0%} CI of mean | std | min | max |",
        "|---|---|---|---|---|---|",
    ]
    for label, summary in (
        ("return", s.returns),
        ("cost", s.costs),
        ("length", s.lengths),
        ("normalised reward", s.normalized_reward),
        ("normalised cost", s.normalized_cost),
    ):
        interval = report.interval_text(summary.mean_interval)
        lines.append(
            f"| {label} | {summary.mean:.3f} | {interval} | {summary.std:.3f} | "
            f"{summary.min:.3f} | {summary.max:.3f} |"
        )
    lines += [
        "",
        f"- Violation rate (episodes with cost > {report.cost_limit:g}): {s.violation_rate:.3f} "
        f"{report.interval_text(s.violation_rate_interval)}",
        f"- CVaR of cost at alpha {s.cvar_alpha:g} (mean of the worst {s.cvar_alpha:.0%} of "
        f"episodes): {s.cost_cvar:.3f} {report.interval_text(s.cost_cvar_interval)}",
        "- Normalised cost is DSRL's (cost + eps) / (limit + eps); a policy is safe when it is "
        "at most 1.",
        "",
        "## Plots",
        "",
        "![Episode cost distribution](cost_distribution.png)",
        "",
        "![Reward against cost per episode](reward_vs_cost.png)",
        "",
        "![Cumulative cost over steps](cumulative_cost.png)",
        "",
        "## Policy and lineage",
        "",
        f"- Audited from: {policy.source} `{policy.location}`",
        f"- Environment: `{report.env_id}`; episode i reset with seed {report.seed} + i; "
        f"{report.num_envs} environment(s) in parallel",
    ]
    for key, value in report.lineage.model_dump().items():
        if value not in (None, {}, ""):
            lines.append(f"- {key.replace('_', ' ')}: `{json.dumps(value, default=str)}`")
    lines += [
        "",
        f"Audit run {report.created_at.isoformat()} by safepolicy {report.audit_code_version}; "
        f"{report.wall_seconds:.1f} s, {report.env_steps_per_second:.0f} env steps/s.",
        "",
        "## Episodes",
        "",
        "| seed | return | cost | length | normalised reward | normalised cost | over limit |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in report.episode_results:
        lines.append(
            f"| {e.seed} | {e.episode_return:.3f} | {e.episode_cost:.3f} | {e.length} | "
            f"{e.normalized_reward:.3f} | {e.normalized_cost:.3f} | "
            f"{'yes' if e.violated else ''} |"
        )
    return "\n".join(lines) + "\n"


def _plots(report: AuditReport, cost_traces: list[np.ndarray] | None, directory: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from safepolicy.plots import save_figure

    costs = np.array([e.episode_cost for e in report.episode_results])
    returns = np.array([e.episode_return for e in report.episode_results])
    limit = report.cost_limit
    s = report.statistics

    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    bins = min(40, max(5, int(np.sqrt(costs.size)) * 2))
    axes.hist(costs, bins=bins, color="#6b8fb3", edgecolor="white")
    axes.axvline(limit, color="#c0392b", linewidth=2, label=f"cost limit {limit:g}")
    axes.axvline(s.costs.mean, color="#2c3e50", linestyle="--", label=f"mean {s.costs.mean:.2f}")
    axes.axvline(
        s.cost_upper_bound,
        color="#e67e22",
        linestyle=":",
        linewidth=2,
        label=f"{report.confidence:.0%} upper bound {s.cost_upper_bound:.2f}",
    )
    axes.set(
        xlabel="episode cost",
        ylabel="episodes",
        title=f"{report.policy.name}: episode costs ({report.verdict})",
    )
    axes.legend()
    figure.tight_layout()
    save_figure(figure, directory / PLOT_FILENAMES[0])
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    over = costs > limit
    axes.scatter(costs[~over], returns[~over], s=18, color="#2e86c1", label="within limit")
    axes.scatter(costs[over], returns[over], s=18, color="#c0392b", label="over limit")
    axes.axvline(limit, color="#c0392b", linewidth=1, linestyle="--")
    axes.set(
        xlabel="episode cost", ylabel="episode return", title="reward against cost per episode"
    )
    axes.legend()
    figure.tight_layout()
    save_figure(figure, directory / PLOT_FILENAMES[1])
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    if cost_traces:
        for trace in cost_traces:
            axes.plot(np.arange(1, trace.size + 1), trace, linewidth=0.8, alpha=0.5)
    else:
        axes.text(
            0.5, 0.5, "per-step costs were not recorded", ha="center", transform=axes.transAxes
        )
    axes.axhline(limit, color="#c0392b", linewidth=2, label=f"cost limit {limit:g}")
    axes.set(xlabel="step", ylabel="cumulative cost", title="cumulative cost over each episode")
    axes.legend()
    figure.tight_layout()
    save_figure(figure, directory / PLOT_FILENAMES[2])
    plt.close(figure)


def write_report(
    report: AuditReport,
    out_dir: str | os.PathLike[str],
    cost_traces: list[np.ndarray] | None = None,
) -> Path:
    """Write report.json, report.md and the plots into ``out_dir``; returns report.json."""
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    _plots(report, cost_traces, directory)
    atomic_write_text(directory / MARKDOWN_FILENAME, _markdown(report))
    path = directory / REPORT_FILENAME
    atomic_write_text(path, report.model_dump_json(indent=2) + "\n")
    return path
