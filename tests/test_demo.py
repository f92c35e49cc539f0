"""End to end: collect -> train -> export -> audit -> serve -> audit through the server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_whole_pipeline_and_audits_the_deployed_policy(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "safepolicy", "demo", "--workdir", str(tmp_path),
         "--episodes", "30", "--steps", "300"],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    artifact = tmp_path / "models" / "ballrun-bc-safe" / "1"
    assert (artifact / "policy.onnx").exists() and (artifact / "audit.json").exists()
    deployed = json.loads((tmp_path / "audit-deployed" / "report.json").read_text())
    artifact_report = json.loads((tmp_path / "audit-artifact" / "report.json").read_text())
    assert deployed["verdict"] in {"PASS", "FAIL"}
    # The deployed policy answered every step through gRPC: its episodes match the artifact's
    # for the shared seeds (both deterministic, same seed list start).
    served, direct = deployed["episode_results"][0], artifact_report["episode_results"][0]
    assert served["seed"] == direct["seed"]
    assert abs(served["episode_return"] - direct["episode_return"]) < 1e-3
    assert 'method="Act"' in result.stdout
