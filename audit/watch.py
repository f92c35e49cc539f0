"""``safepolicy audit watch``: re-audit the deployed versions of a model repository on a schedule.

Each round audits the latest version of every policy in the repository (every version with
``all_versions``), writes its report under ``REPORTS/NAME/VERSION/`` and its ``audit.json``
beside the artifact, and updates the gauges served on ``/metrics`` (see :mod:`audit.metrics`).
An audit that cannot run counts in ``safepolicy_audit_errors_total`` and does not stop the
others.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, start_http_server

from safepolicy.audit.metrics import LABELS, PREFIX, ReportCollector
from safepolicy.audit.runner import AuditError, AuditSettings, audit_policy, open_artifact


class Watcher:
    """The state of a watch: its registry, collector and counters, and one audit round."""

    def __init__(
        self,
        repo: str | Path,
        reports_dir: str | Path,
        settings: AuditSettings,
        all_versions: bool = False,
        registry: CollectorRegistry | None = None,
    ) -> None:
        from safepolicy.export.repository import ModelRepository

        self.repository = ModelRepository(repo)
        self.reports_dir = Path(reports_dir)
        self.settings = settings
        self.all_versions = all_versions
        self.registry = registry if registry is not None else CollectorRegistry()
        self.collector = ReportCollector()
        self.registry.register(self.collector)
        self.runs = Counter(
            PREFIX.removesuffix("_") + "_runs",
            "audits completed, by verdict",
            [*LABELS, "verdict"],
            registry=self.registry,
        )
        self.errors = Counter(
            PREFIX.removesuffix("_") + "_errors",
            "audits that could not run",
            ["policy", "version"],
            registry=self.registry,
        )

    def targets(self) -> list[tuple[str, int]]:
        found = []
        for name in self.repository.names():
            versions = self.repository.versions(name)
            found += [(name, v) for v in (versions if self.all_versions else versions[-1:])]
        return found

    def audit_round(self) -> int:
        """Audit every target once; returns how many audits failed to run."""
        failures = 0
        for name, version in self.targets():
            # task and limit come from each artifact's metadata
            settings = dataclasses.replace(self.settings, task=None, cost_limit=None)
            # the error counter exists at 0 from the first round, so the first error is an
            # increase the alert rules see (a counter born at 1 has none)
            errors = self.errors.labels(name, str(version))
            try:
                target = open_artifact(self.repository.path_for(name, version))
                report = audit_policy(target, settings, self.reports_dir / name / str(version))
            except (AuditError, ValueError, OSError) as error:
                failures += 1
                errors.inc()
                print(f"audit watch: {name} version {version}: {error}", file=sys.stderr)
                continue
            self.collector.update(report)
            self.runs.labels(name, str(version), report.task, report.verdict).inc()
        return failures


def watch(
    repo: str | Path,
    reports_dir: str | Path,
    settings: AuditSettings,
    interval: float,
    metrics_port: int,
    metrics_address: str = "0.0.0.0",
    rounds: int | None = None,
    all_versions: bool = False,
    stop: threading.Event | None = None,
) -> Watcher:
    """Serve ``/metrics`` on ``metrics_port`` and audit every ``interval`` seconds.

    Runs ``rounds`` rounds (forever when ``None``) or until ``stop`` is set; the metrics server
    keeps running in its daemon thread for the life of the process.
    """
    watcher = Watcher(repo, reports_dir, settings, all_versions)
    start_http_server(metrics_port, metrics_address, registry=watcher.registry)
    stop = stop or threading.Event()
    done = 0
    while not stop.is_set():
        started = time.monotonic()
        watcher.audit_round()
        done += 1
        if rounds is not None and done >= rounds:
            break
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
    return watcher
