"""Audit metrics: pushed to a real Pushgateway, and served by `audit watch` on /metrics."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from safepolicy.audit.cli import main
from safepolicy.audit.metrics import PushError, push_report
from safepolicy.audit.report import load_report
from safepolicy.audit.runner import AuditSettings
from safepolicy.server.testing import free_port


def give_bullet_real_streams() -> None:
    """bullet_safety_gym flushes the C stream named by ``sys.stdout.name`` when it imports and
    builds an env, which fails under pytest's capture objects; point it at the real streams."""
    with contextlib.redirect_stdout(sys.__stdout__), contextlib.redirect_stderr(sys.__stderr__):
        from bullet_safety_gym.envs import builder
    builder.sys = types.SimpleNamespace(stdout=sys.__stdout__, stderr=sys.__stderr__)


give_bullet_real_streams()

PUSHGATEWAY = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def ballrun_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_audit_cli import export_untrained

    repo = tmp_path_factory.mktemp("repo")
    export_untrained(repo, "BallRun", "ballrun", cost_limit=10.0)
    export_untrained(repo, "BallRun", "ballrun", cost_limit=10.0)  # version 2
    return repo


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    if PUSHGATEWAY is None:
        pytest.skip(
            "prometheus-pushgateway not installed (Debian package "
            "`prometheus-pushgateway`; CI installs it with .ci/install-system-deps)"
        )
    port = free_port()
    process = subprocess.Popen(
        [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                get(url + "/-/ready")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the pushgateway did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_audit_pushes_its_results_to_a_real_pushgateway(
    ballrun_repo: Path, tmp_path: Path, pushgateway: str
) -> None:
    out = tmp_path / "report"
    code = main(
        [
            "--policy",
            str(ballrun_repo / "ballrun" / "1"),
            "--episodes",
            "4",
            "--resamples",
            "300",
            "--no-progress",
            "--pushgateway",
            pushgateway,
            "--out",
            str(out),
        ]
    )
    report = load_report(out)
    assert code in (0, 1)
    found = samples(get(pushgateway + "/metrics"))
    labels = (
        ("instance", ""),
        ("job", "safepolicy_audit"),
        ("policy", "ballrun"),
        ("task", "BallRun"),
        ("version", "1"),
    )
    assert found[("safepolicy_audit_passed", labels)] == (1.0 if report.verdict == "PASS" else 0.0)
    assert found[("safepolicy_audit_cost_limit", labels)] == 10.0
    assert found[("safepolicy_audit_episodes", labels)] == 4.0
    assert found[("safepolicy_audit_episode_cost_upper_bound", labels)] == pytest.approx(
        report.statistics.cost_upper_bound
    )
    assert found[("safepolicy_audit_last_run_timestamp_seconds", labels)] == pytest.approx(
        report.created_at.timestamp()
    )


def test_unreachable_pushgateway_is_a_clear_error(
    ballrun_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code = main(
        [
            "--policy",
            str(ballrun_repo / "ballrun" / "1"),
            "--episodes",
            "2",
            "--resamples",
            "200",
            "--no-progress",
            "--pushgateway",
            url,
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2
    assert f"cannot push audit metrics to the Pushgateway at {url}" in capsys.readouterr().err
    with pytest.raises(PushError):
        push_report(load_report(tmp_path / "r"), url, timeout=2)


def test_watch_audits_the_latest_versions_and_serves_metrics(
    ballrun_repo: Path, tmp_path: Path
) -> None:
    from safepolicy.audit.watch import watch

    (ballrun_repo / "broken" / "1").mkdir(parents=True)  # a version without an artifact
    port = free_port()
    watcher = watch(
        ballrun_repo,
        tmp_path / "reports",
        AuditSettings(episodes=3, bootstrap_resamples=200),
        interval=0.1,
        metrics_port=port,
        metrics_address="127.0.0.1",
        rounds=2,
    )
    assert watcher.targets() == [("ballrun", 2), ("broken", 1)]
    found = samples(get(f"http://127.0.0.1:{port}/metrics"))
    labels = (("policy", "ballrun"), ("task", "BallRun"), ("version", "2"))
    report = load_report(tmp_path / "reports" / "ballrun" / "2")
    passed = 1.0 if report.verdict == "PASS" else 0.0
    assert found[("safepolicy_audit_passed", labels)] == passed
    assert found[("safepolicy_audit_violation_ratio", labels)] == report.statistics.violation_rate
    assert (
        found[
            ("safepolicy_audit_runs_total", (*labels[:2], ("verdict", report.verdict), labels[2]))
        ]
        == 2.0
    )
    assert found[("safepolicy_audit_errors_total", (("policy", "broken"), ("version", "1")))] == 2.0
    # a version whose audits succeed still has its error counter, at 0
    assert (
        found[("safepolicy_audit_errors_total", (("policy", "ballrun"), ("version", "2")))] == 0.0
    )
    # version 1 is not the latest, so watch leaves it alone; version 2 got its audit.json
    assert not any(
        key[1] == (("policy", "ballrun"), ("task", "BallRun"), ("version", "1")) for key in found
    )
    assert (ballrun_repo / "ballrun" / "2" / "audit.json").exists()
