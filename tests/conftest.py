"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from safepolicy.collect import main as collect_main


@pytest.fixture(scope="session")
def ballrun_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six scripted BallRun episodes (600 transitions), collected once per test session."""
    path = tmp_path_factory.mktemp("data") / "BallRun.h5"
    assert (
        collect_main(["--task", "BallRun", "--episodes", "6", "--out", str(path), "--quiet"]) == 0
    )
    return path
