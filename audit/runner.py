"""Run an audit: open the policy (artifact or server), replay it, compute statistics, report.

:func:`audit_policy` is the whole batch audit behind ``safepolicy audit``. The pieces are usable
alone: :func:`open_artifact` and :func:`open_server` give an :class:`AuditTarget` (a batch policy
callable plus what is known about it), :func:`run_audit` replays a target and returns the
:class:`~audit.report.AuditReport` with the per-step cost traces for the plots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safepolicy.audit import stats
from safepolicy.audit.report import (
    AuditedEpisode,
    AuditReport,
    Lineage,
    PolicySource,
    Statistics,
    Summary,
    interval_model,
    utc_now,
    write_report,
)
from safepolicy.errors import SafepolicyError
from safepolicy.version import code_version

MIN_RECOMMENDED_EPISODES = 30


class AuditError(SafepolicyError):
    """An audit that cannot run as asked; the message says what is wrong and what to do."""


@dataclass
class AuditSettings:
    """What to audit against and how; ``task`` and ``cost_limit`` default from the metadata."""

    episodes: int
    task: str | None = None
    cost_limit: float | None = None
    seed: int = 0
    num_envs: int = 1
    confidence: float = 0.95
    cvar_alpha: float = 0.1  # CVaR is the mean cost of the worst 10 % of episodes
    bootstrap_resamples: int = stats.DEFAULT_RESAMPLES
    progress: bool = False

    def validate(self) -> None:
        if self.episodes < 1:
            raise AuditError(f"--episodes must be at least 1, got {self.episodes}")
        if self.num_envs < 1:
            raise AuditError(f"--envs must be at least 1, got {self.num_envs}")
        if not 0.0 < self.confidence < 1.0:
            raise AuditError(f"--confidence must be in (0, 1), e.g. 0.95; got {self.confidence}")
        if not 0.0 < self.cvar_alpha <= 1.0:
            raise AuditError(f"CVaR alpha must be in (0, 1], got {self.cvar_alpha}")
        if self.cost_limit is not None and (
            not math.isfinite(self.cost_limit) or self.cost_limit < 0
        ):
            raise AuditError(f"--cost-limit must be a finite number >= 0, got {self.cost_limit}")


@dataclass
class AuditTarget:
    """A policy to audit: the batch callable and what its artifact says about it."""

    policy: Callable[[np.ndarray], np.ndarray]
    source: PolicySource
    obs_dim: int
    action_dim: int
    task: str | None = None
    cost_limit: float | None = None
    lineage: Lineage = field(default_factory=Lineage)
    version_dir: Path | None = None
    close: Callable[[], None] = lambda: None


def _lineage(metadata: Any) -> Lineage:
    return Lineage(
        algorithm=metadata.algorithm,
        env_id=metadata.env_id,
        training_cost_limit=metadata.cost_limit,
        dataset_path=metadata.dataset_path,
        dataset_sha256=getattr(metadata, "dataset_sha256", None),
        code_version=metadata.code_version or None,
        training_seed=metadata.seed,
        trained_at=metadata.trained_at.isoformat() if metadata.trained_at else None,
        exported_at=metadata.created_at.isoformat() if metadata.created_at else None,
        training_config=dict(metadata.config),
        training_evaluation=metadata.evaluation,
    )


def open_artifact(version_dir: str | Path, threads: int = 1) -> AuditTarget:
    """An exported policy ``MODEL_REPO/NAME/VERSION`` run in-process with onnxruntime."""
    from safepolicy.export.artifact import ArtifactError, load_policy

    try:
        policy = load_policy(version_dir, providers=["CPUExecutionProvider"], threads=threads)
    except ArtifactError as error:
        raise AuditError(str(error)) from error
    metadata = policy.metadata
    return AuditTarget(
        policy=policy,
        source=PolicySource(
            name=metadata.name,
            version=metadata.version,
            source="artifact",
            location=str(Path(version_dir)),
        ),
        obs_dim=metadata.obs_dim,
        action_dim=metadata.action_dim,
        task=metadata.task,
        cost_limit=metadata.cost_limit,
        lineage=_lineage(metadata),
        version_dir=Path(version_dir),
    )


def open_server(
    address: str, name: str, version: int | None = None, timeout: float = 10.0
) -> AuditTarget:
    """A policy served by a running ``safepolicy serve`` at ``HOST:PORT``: what is deployed.

    The serving version is looked up once and pinned, so a reload during the audit cannot mix
    two versions into one report.
    """
    import grpc

    from safepolicy.export.artifact import PolicyMetadata
    from safepolicy.server.client import PolicyClient

    client = PolicyClient(address, timeout=timeout)
    try:
        info = client.get_policy(name, version)
    except grpc.RpcError as error:
        client.close()
        code = error.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            raise AuditError(
                f"cannot reach a safepolicy server at {address} ({error.details()}); "
                f"start one with `safepolicy serve` or fix --server HOST:PORT"
            ) from error
        if code == grpc.StatusCode.NOT_FOUND:
            raise AuditError(
                f"the server at {address} does not serve policy {name!r}"
                f"{'' if version is None else f' version {version}'}: "
                f"{error.details()}"
            ) from error
        raise AuditError(
            f"server at {address} refused GetPolicy({name!r}): {code.name} {error.details()}"
        ) from error
    pinned = int(info.version)
    lineage = Lineage()
    if info.metadata_json:
        try:
            lineage = _lineage(PolicyMetadata.model_validate_json(info.metadata_json))
        except ValueError:
            lineage = Lineage(algorithm=info.algorithm or None, env_id=info.env_id or None)

    def policy(observations: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(client.act(name, observations, version=pinned).actions)
        except grpc.RpcError as error:
            raise AuditError(
                f"the server at {address} failed Act for {name!r} version "
                f"{pinned}: {error.code().name} {error.details()}"
            ) from error

    return AuditTarget(
        policy=policy,
        source=PolicySource(name=name, version=pinned, source="server", location=address),
        obs_dim=int(info.obs_dim),
        action_dim=int(info.action_dim),
        task=info.task or None,
        cost_limit=float(info.cost_limit),
        lineage=lineage,
        close=client.close,
    )


def _summary(values: np.ndarray, confidence: float, resamples: int, seed: int) -> Summary:
    interval = stats.bootstrap_interval(
        values, stats.mean, confidence, "two-sided", resamples, seed
    )
    return Summary(
        mean=float(values.mean()),
        std=float(values.std(ddof=1)) if values.size > 1 else 0.0,
        min=float(values.min()),
        max=float(values.max()),
        mean_interval=interval_model(interval.low, interval.high, confidence),
    )


def run_audit(
    target: AuditTarget,
    settings: AuditSettings,
) -> tuple[AuditReport, list[np.ndarray]]:
    """Replay ``target`` as ``settings`` ask; the report and each episode's cumulative costs."""
    from safepolicy.rollout import rollout_episodes
    from safepolicy.tasks import UnknownTaskError, env_spaces, get_task

    settings.validate()
    task_name = settings.task or target.task
    if task_name is None:
        raise AuditError("no task: the policy's metadata names none; pass --task")
    try:
        spec = get_task(task_name)
    except UnknownTaskError as error:
        raise AuditError(f"{error}; pass one of them as --task") from error
    cost_limit = settings.cost_limit if settings.cost_limit is not None else target.cost_limit
    if cost_limit is None:
        raise AuditError("no cost limit: the policy's metadata has none; pass --cost-limit")
    spaces = env_spaces(spec)
    obs_dim, action_dim = spaces.obs_dim, spaces.action_dim
    if (obs_dim, action_dim) != (target.obs_dim, target.action_dim):
        raise AuditError(
            f"policy {target.source.name!r} takes {target.obs_dim} observations and gives "
            f"{target.action_dim} actions, but task {spec.name} has {obs_dim} and {action_dim}; "
            f"audit it in the task it was trained for"
            f"{f' ({target.task})' if target.task else ''}"
        )
    started = time.perf_counter()
    records = rollout_episodes(
        target.policy,
        spec,
        settings.episodes,
        seed=settings.seed,
        num_envs=settings.num_envs,
        progress=settings.progress,
        record_costs=True,
    )
    wall = time.perf_counter() - started

    costs = np.array([r.episode_cost for r in records])
    returns = np.array([r.episode_return for r in records])
    lengths = np.array([r.length for r in records], dtype=np.float64)
    norm_reward = np.array([spec.normalized_reward(r) for r in returns])
    norm_cost = np.array([spec.normalized_cost(c, cost_limit) for c in costs])
    conf, resamples, seed = settings.confidence, settings.bootstrap_resamples, settings.seed
    upper = stats.cost_upper_bound(costs, conf, resamples, seed)
    alpha = settings.cvar_alpha
    cvar_interval = stats.bootstrap_interval(
        costs, lambda v: stats.cvar(v, alpha), conf, "two-sided", resamples, seed
    )
    violation_interval = stats.bootstrap_interval(
        costs, lambda v: stats.violation_rate(v, cost_limit), conf, "two-sided", resamples, seed
    )
    statistics = Statistics(
        returns=_summary(returns, conf, resamples, seed),
        costs=_summary(costs, conf, resamples, seed),
        lengths=_summary(lengths, conf, resamples, seed),
        normalized_reward=_summary(norm_reward, conf, resamples, seed),
        normalized_cost=_summary(norm_cost, conf, resamples, seed),
        violation_rate=float(stats.violation_rate(costs, cost_limit)),
        violation_rate_interval=interval_model(
            violation_interval.low, violation_interval.high, conf
        ),
        cvar_alpha=alpha,
        cost_cvar=float(stats.cvar(costs, alpha)),
        cost_cvar_interval=interval_model(cvar_interval.low, cvar_interval.high, conf),
        cost_upper_bound=upper,
    )
    warnings = []
    if settings.episodes < MIN_RECOMMENDED_EPISODES:
        warnings.append(
            f"only {settings.episodes} episodes: the bootstrap bound is asymptotic "
            f"and covers less often than stated below about "
            f"{MIN_RECOMMENDED_EPISODES} episodes; audit more for a decision"
        )
    if np.ptp(costs) == 0:
        warnings.append(
            "every episode had the same cost, so the bound equals it: more episodes "
            "or other seeds may reveal costs these did not"
        )
    if target.task and target.task != spec.name:
        warnings.append(f"the policy was trained for {target.task}, audited in {spec.name}")
    report = AuditReport(
        created_at=utc_now(),
        policy=target.source,
        lineage=target.lineage,
        task=spec.name,
        env_id=spec.env_id,
        cost_limit=cost_limit,
        confidence=conf,
        episodes=settings.episodes,
        seed=settings.seed,
        num_envs=min(settings.num_envs, settings.episodes),
        bootstrap_resamples=resamples,
        verdict=stats.verdict(upper, cost_limit),
        rule=stats.verdict_rule(conf, cost_limit),
        method=(
            f"Expected episode cost bounded by a one-sided BCa bootstrap ({resamples} seeded "
            f"resamples, small-sample expanded level); intervals are two-sided BCa at "
            f"{conf:.0%}. See audit/stats.py for why this bound."
        ),
        warnings=warnings,
        statistics=statistics,
        episode_results=[
            AuditedEpisode(
                seed=r.seed,
                episode_return=r.episode_return,
                episode_cost=r.episode_cost,
                length=r.length,
                terminated=r.terminated,
                normalized_reward=float(nr),
                normalized_cost=float(nc),
                violated=bool(r.episode_cost > cost_limit),
            )
            for r, nr, nc in zip(records, norm_reward, norm_cost, strict=True)
        ],
        wall_seconds=wall,
        env_steps_per_second=float(lengths.sum() / wall) if wall > 0 else 0.0,
        audit_code_version=code_version(),
    )
    traces = [r.cost_trace for r in records if r.cost_trace is not None]
    return report, traces


def write_verdict(report: AuditReport, version_dir: Path, report_path: Path) -> Path:
    """``VERSION_DIR/audit.json`` for the server's gate."""
    from safepolicy.export.artifact import AuditVerdict, write_audit_verdict

    verdict = AuditVerdict(
        verdict=report.verdict,
        task=report.task,
        cost_limit=report.cost_limit,
        confidence=report.confidence,
        episodes=report.episodes,
        mean_cost=report.statistics.costs.mean,
        cost_upper_bound=report.statistics.cost_upper_bound,
        violation_rate=report.statistics.violation_rate,
        created_at=report.created_at,
        report_path=str(report_path.resolve()),
    )
    return write_audit_verdict(version_dir, verdict)


def audit_policy(
    target: AuditTarget, settings: AuditSettings, out_dir: str | Path, write_audit_json: bool = True
) -> AuditReport:
    """Run the audit, write the report into ``out_dir`` and, for an artifact, its audit.json.

    The verdict is written only when the audit ran in the task the policy was trained for,
    so that a passing audit in an easier task cannot unlock it on the server.
    """
    try:
        report, traces = run_audit(target, settings)
    finally:
        target.close()
    report_path = write_report(report, out_dir, traces)
    if write_audit_json and target.version_dir is not None and report.task == target.task:
        write_verdict(report, target.version_dir, report_path)
    return report
