"""Alert rules: promtool accepts them, their unit tests pass, and k8s carries the same rules."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "audit" / "rules" / "safepolicy-alerts.yml"
RULE_TESTS = ROOT / "audit" / "rules" / "safepolicy-alerts.test.yml"
K8S_RULE = ROOT / "k8s" / "prometheusrule.yaml"

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None,
    reason="promtool not installed (Debian package `prometheus`; "
    "CI installs it with .ci/install-system-deps)",
)


@needs_promtool
def test_promtool_check_rules() -> None:
    result = subprocess.run(
        [str(promtool), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


@needs_promtool
def test_promtool_rule_unit_tests_fire_and_stay_silent() -> None:
    result = subprocess.run(
        [str(promtool), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULE_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_rule_tests_can_fail(tmp_path: Path) -> None:
    """A broken threshold must make the unit tests fail, or they prove nothing."""
    broken = RULES.read_text().replace(
        "safepolicy_audit_violation_ratio > 0.1", "safepolicy_audit_violation_ratio > 0.5"
    )
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = subprocess.run(
        [str(promtool), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "SafepolicyAuditViolationRateHigh" in result.stdout + result.stderr


def test_prometheusrule_has_the_same_rules() -> None:
    plain = yaml.safe_load(RULES.read_text())
    resource = yaml.safe_load(K8S_RULE.read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"] == plain


def test_rules_use_only_exported_metric_names() -> None:
    from safepolicy.audit import metrics
    from safepolicy.server.metrics import ServerMetrics

    documented = metrics.__doc__ or ""
    server_metrics = ServerMetrics()
    # one call and one reload failure, so every labelled series exists
    server_metrics.record_call("Act", "x", "1", "OK", 0.001)
    counter = server_metrics.reload_failures
    counter.labels(*["x"] * len(counter._labelnames))
    served = {
        sample.name for family in server_metrics.registry.collect() for sample in family.samples
    }
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            words = rule["expr"].replace("(", " ").replace("[", " ").replace("{", " ").split()
            names = [word for word in words if word.startswith("safepolicy_")]
            assert names or rule["alert"] == "SafepolicyServerDown", rule["alert"]
            for name in names:
                if name.startswith("safepolicy_audit_"):
                    assert f"``{name}" in documented, f"{rule['alert']} uses unknown metric {name}"
                else:
                    assert name in served, f"{rule['alert']} uses unknown metric {name}"
