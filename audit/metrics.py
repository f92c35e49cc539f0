"""Prometheus metrics of audits: pushed by a batch audit, exposed by ``safepolicy audit watch``.

Every series is labelled ``policy``, ``version`` and ``task``. Gauges describe the latest audit
of a version (read from its report by a custom collector); counters count what ``watch`` did.

=====================================================  =====================================
``safepolicy_audit_passed``                            1 when the latest audit passed, else 0
``safepolicy_audit_episode_cost_upper_bound``          upper confidence bound on E[episode cost]
``safepolicy_audit_cost_limit``                        the limit the audit judged against
``safepolicy_audit_confidence_ratio``                  confidence of the bound (0.95)
``safepolicy_audit_episode_cost_mean``                 mean episode cost
``safepolicy_audit_episode_cost_cvar``                 CVaR of episode cost (worst alpha fraction)
``safepolicy_audit_episode_return_mean``               mean episode return
``safepolicy_audit_violation_ratio``                   fraction of episodes over the limit
``safepolicy_audit_episodes``                          episodes in the latest audit
``safepolicy_audit_last_run_timestamp_seconds``        Unix time the latest audit finished
``safepolicy_audit_duration_seconds``                  wall time of the latest audit's rollouts
``safepolicy_audit_runs_total{verdict}`` (watch)       audits completed, by verdict
``safepolicy_audit_errors_total`` (watch)              audits that could not run
=====================================================  =====================================

The alert rules in ``audit/rules/safepolicy-alerts.yml`` are written against these names.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, push_to_gateway
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from safepolicy.audit.report import AuditReport
from safepolicy.errors import SafepolicyError

PREFIX = "safepolicy_audit_"
LABELS = ("policy", "version", "task")
PUSH_JOB = "safepolicy_audit"


class PushError(SafepolicyError):
    """The Pushgateway could not be reached or refused the push."""


def report_labels(report: AuditReport) -> tuple[str, str, str]:
    version = "" if report.policy.version is None else str(report.policy.version)
    return report.policy.name, version, report.task


def _gauges(reports: Iterable[AuditReport]) -> list[GaugeMetricFamily]:
    specs = [
        (
            "passed",
            "1 when the latest audit of this version passed, 0 when it failed",
            lambda r: 1.0 if r.verdict == "PASS" else 0.0,
        ),
        (
            "episode_cost_upper_bound",
            "one-sided upper confidence bound on expected episode cost",
            lambda r: r.statistics.cost_upper_bound,
        ),
        ("cost_limit", "episode cost limit the audit judged against", lambda r: r.cost_limit),
        ("confidence_ratio", "confidence level of the upper bound", lambda r: r.confidence),
        ("episode_cost_mean", "mean episode cost", lambda r: r.statistics.costs.mean),
        (
            "episode_cost_cvar",
            "mean cost of the worst cvar_alpha fraction of episodes",
            lambda r: r.statistics.cost_cvar,
        ),
        ("episode_return_mean", "mean episode return", lambda r: r.statistics.returns.mean),
        (
            "violation_ratio",
            "fraction of episodes whose cost exceeded the limit",
            lambda r: r.statistics.violation_rate,
        ),
        ("episodes", "episodes in the latest audit", lambda r: float(r.episodes)),
        (
            "last_run_timestamp_seconds",
            "Unix time the latest audit finished",
            lambda r: r.created_at.timestamp(),
        ),
        ("duration_seconds", "wall time of the latest audit's rollouts", lambda r: r.wall_seconds),
    ]
    reports = list(reports)
    families = []
    for suffix, documentation, value in specs:
        family = GaugeMetricFamily(PREFIX + suffix, documentation, labels=LABELS)
        for report in reports:
            family.add_metric(report_labels(report), value(report))
        families.append(family)
    return families


class ReportCollector(Collector):  # type: ignore[misc]
    """Gauges read from the latest report of each (policy, version, task)."""

    def __init__(self, reports: Iterable[AuditReport] = ()) -> None:
        self._lock = threading.Lock()
        self._reports: dict[tuple[str, str, str], AuditReport] = {}
        for report in reports:
            self.update(report)

    def update(self, report: AuditReport) -> None:
        with self._lock:
            self._reports[report_labels(report)] = report

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            reports = list(self._reports.values())
        yield from _gauges(reports)


def push_report(report: AuditReport, gateway: str, timeout: float = 10.0) -> None:
    """Push the report's gauges to a Pushgateway, grouped by job, policy, version and task.

    A later audit of the same version replaces its group, so the gateway holds the latest.
    """
    registry = CollectorRegistry()
    registry.register(ReportCollector([report]))
    policy, version, task = report_labels(report)
    try:
        push_to_gateway(
            gateway,
            job=PUSH_JOB,
            registry=registry,
            timeout=timeout,
            grouping_key={"policy": policy, "version": version, "task": task},
        )
    except OSError as error:  # URLError and HTTPError are OSErrors
        raise PushError(
            f"cannot push audit metrics to the Pushgateway at {gateway} ({error}); "
            f"check --pushgateway (e.g. http://localhost:9091) and that it runs"
        ) from error
