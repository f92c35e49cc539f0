"""The onnx_providers setting: what auto picks, clear errors, and what GetPolicy/metrics show."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from safepolicy.server.client import PolicyClient
from safepolicy.server.providers import (
    CPU,
    CUDA,
    ProviderError,
    primary_provider,
    resolve_providers,
)
from safepolicy.server.settings import ServerSettings, SettingsError
from safepolicy.server.testing import ServerThread, make_policy


def test_auto_picks_cuda_when_the_build_has_it_and_cpu_otherwise() -> None:
    assert resolve_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert resolve_providers("AUTO", [CPU]) == [CPU]


def test_aliases_and_explicit_lists() -> None:
    assert resolve_providers("cpu", [CUDA, CPU]) == [CPU]
    assert resolve_providers("cuda", [CUDA, CPU]) == [CUDA, CPU]
    assert resolve_providers(f" {CUDA} , {CPU} ", [CUDA, CPU]) == [CUDA, CPU]


def test_a_missing_provider_is_a_settings_error_naming_what_is_there() -> None:
    with pytest.raises(ProviderError, match="server-gpu extra") as caught:
        resolve_providers("cuda", [CPU])
    assert isinstance(caught.value, SettingsError)
    assert CPU in str(caught.value)
    with pytest.raises(ProviderError, match="empty"):
        resolve_providers(" , ", [CPU])


def test_primary_provider_label() -> None:
    assert primary_provider([CUDA, CPU]) == "cuda"
    assert primary_provider([]) == "none"


def test_server_reports_its_providers_in_get_policy_and_metrics(tmp_path: Path) -> None:
    make_policy(tmp_path / "repo", "ballrun", 1, seed=1)
    values: dict[str, Any] = {
        "repo": tmp_path / "repo",
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "metrics_host": "127.0.0.1",
        "poll_interval_s": 0,
        "grace_s": 2,
        "onnx_providers": "cpu",
    }
    settings = ServerSettings(**values)
    with ServerThread(settings) as server, PolicyClient(server.target) as client:
        info = client.get_policy("ballrun")
        url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            metrics = response.read().decode()
    assert list(info.execution_providers) == [CPU]
    assert 'safepolicy_server_onnx_providers_info{providers="CPUExecutionProvider"} 1.0' in metrics


def test_an_unavailable_provider_stops_serve_with_a_clear_message(tmp_path: Path) -> None:
    make_policy(tmp_path / "repo", "ballrun", 1, seed=1)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "safepolicy.server",
            "--repo",
            str(tmp_path / "repo"),
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--onnx-providers",
            "NoSuchExecutionProvider",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "NoSuchExecutionProvider" in result.stderr and "Traceback" not in result.stderr
