"""End to end: collect -> train O3SRL -> export -> audit -> serve -> audit through the server.

Small numbers: 30 dataset episodes and a handful of O3SRL updates. The FAIL path (in the
default run) trains 10 updates against a cost limit of 1, which an almost untrained actor
does not keep on BallRun: the demo must report FAIL and still serve and audit the policy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def run_demo(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "safepolicy",
            "demo",
            "--workdir",
            str(workdir),
            "--episodes",
            "30",
            "--audit-episodes",
            "10",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def reports(workdir: Path) -> tuple[dict, dict]:  # type: ignore[type-arg]
    return (
        json.loads((workdir / "audit-artifact" / "report.json").read_text()),
        json.loads((workdir / "audit-deployed" / "report.json").read_text()),
    )


def check_deployed_matches_artifact(
    workdir: Path,
    result: subprocess.CompletedProcess[str],
) -> tuple[str, str]:
    artifact, deployed = reports(workdir)
    # the deployed policy answered every step through gRPC: its episodes match the artifact's
    # for the shared seeds (both deterministic, same seed list start)
    served, direct = deployed["episode_results"][0], artifact["episode_results"][0]
    assert served["seed"] == direct["seed"]
    assert abs(served["episode_return"] - direct["episode_return"]) < 1e-3
    assert 'method="Act"' in result.stdout
    return artifact["verdict"], deployed["verdict"]


@pytest.mark.slow  # the whole demo in subprocesses: 24 s on the shared 2-core machine
@pytest.mark.timeout(600)
def test_a_fail_verdict_is_reported_and_the_policy_is_still_served(tmp_path: Path) -> None:
    result = run_demo(tmp_path, "--steps", "10", "--cost-limit", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert "o3srl" in json.dumps(config).lower()
    artifact_verdict, deployed_verdict = check_deployed_matches_artifact(tmp_path, result)
    assert artifact_verdict == deployed_verdict == "FAIL"
    assert "audit verdict FAIL" in result.stdout and "deployed audit FAIL" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_trains_o3srl_and_audits_the_deployed_policy(tmp_path: Path) -> None:
    result = run_demo(tmp_path, "--steps", "300")
    assert result.returncode == 0, result.stderr[-3000:]
    artifact = tmp_path / "models" / "ballrun-o3srl" / "1"
    assert (artifact / "policy.onnx").exists() and (artifact / "audit.json").exists()
    artifact_verdict, deployed_verdict = check_deployed_matches_artifact(tmp_path, result)
    assert artifact_verdict in {"PASS", "FAIL"} and deployed_verdict in {"PASS", "FAIL"}


def test_a_failing_step_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    result = run_demo(tmp_path, "--task", "NoSuchTask")
    assert result.returncode == 1
    assert "safepolicy demo: error: `safepolicy collect` failed" in result.stderr
    assert "Traceback" not in result.stderr
