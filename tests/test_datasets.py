"""DSRL-format dataset IO, validation and the `safepolicy dataset` command, bad input included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from safepolicy import dataset_cli
from safepolicy.datasets import DSRL_KEYS, Dataset, DatasetError, load_dataset, write_dataset


def toy_dataset(episodes: int = 3, length: int = 5, obs_dim: int = 4) -> Dataset:
    n = episodes * length
    rng = np.random.default_rng(0)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[length - 1 :: length] = True
    return Dataset(
        observations=rng.normal(size=(n, obs_dim)).astype(np.float32),
        next_observations=rng.normal(size=(n, obs_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        rewards=np.ones(n, dtype=np.float32),
        costs=np.tile(np.arange(length, dtype=np.float32), episodes),
        terminals=np.zeros(n, dtype=bool),
        timeouts=timeouts,
        attrs={"task": "BallRun", "behavior": {"mix": {"scripted": 1.0}}},
    )


def write_raw(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as handle:
        for key, values in arrays.items():
            handle.create_dataset(key, data=values)
    return path


def test_round_trip(tmp_path: Path) -> None:
    original = toy_dataset()
    path = write_dataset(tmp_path / "toy.h5", original)
    loaded = load_dataset(path)
    for key in DSRL_KEYS:
        np.testing.assert_array_equal(getattr(loaded, key), getattr(original, key))
    assert loaded.attrs["task"] == "BallRun"
    assert loaded.attrs["behavior"] == {"mix": {"scripted": 1.0}}
    returns, costs = loaded.episode_returns_and_costs()
    np.testing.assert_array_equal(returns, [5, 5, 5])
    np.testing.assert_array_equal(costs, [10, 10, 10])


def test_dsrl_offline_env_loads_our_file(tmp_path: Path) -> None:
    """dsrl's own loader accepts the file (run in a subprocess: importing dsrl registers gyms)."""
    path = write_dataset(tmp_path / "toy.h5", toy_dataset(obs_dim=7))
    script = f"""
import gymnasium as gym, numpy as np
from safepolicy.gymcompat import import_safety_gymnasium
import_safety_gymnasium()  # dsrl's __init__ imports it, which fails on 3.11 without the shim
from dsrl.offline_env import OfflineEnv
class Toy(OfflineEnv):
    observation_space = gym.spaces.Box(-np.inf, np.inf, (7,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
data = Toy().get_dataset(h5path={str(path)!r})
print(data["observations"].shape[0], data["costs"].sum())
"""
    env = {**os.environ, "DSRL_SUPPRESS_IMPORT_ERROR": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["15", "30.0"]


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = toy_dataset().arrays()
    truncated = write_dataset(tmp_path / "truncated.h5", toy_dataset())
    truncated.write_bytes(truncated.read_bytes()[:300])
    mismatched = dict(good, rewards=good["rewards"][:-1])
    nan = dict(good, observations=good["observations"].copy())
    nan["observations"][3, 1] = np.nan
    missing = {k: v for k, v in good.items() if k != "costs"}
    return {
        "missing file": (tmp_path / "nope.h5", "no such dataset file"),
        "truncated": (truncated, "not a readable HDF5 file"),
        "missing key": (write_raw(tmp_path / "missing.h5", missing), "missing DSRL key(s) costs"),
        "mismatched": (write_raw(tmp_path / "mismatch.h5", mismatched), "'rewards' has 14 rows"),
        "nan": (write_raw(tmp_path / "nan.h5", nan), "'observations' contains NaN"),
        "directory": (tmp_path, "is a directory"),
    }


@pytest.mark.parametrize(
    "case", ["missing file", "truncated", "missing key", "mismatched", "nan", "directory"]
)
def test_bad_input_library_and_cli(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path, problem = _bad_files(tmp_path)[case]
    with pytest.raises(DatasetError) as error:
        load_dataset(path)
    assert str(path) in str(error.value) and problem in str(error.value)
    assert dataset_cli.main([str(path)]) != 0
    err = capsys.readouterr().err
    assert str(path) in err and problem in err


def test_write_refuses_bad_arrays_and_leaves_no_file(tmp_path: Path) -> None:
    bad = toy_dataset()
    bad.observations[0, 0] = np.inf
    with pytest.raises(DatasetError, match="NaN or Inf"):
        write_dataset(tmp_path / "bad.h5", bad)
    assert list(tmp_path.iterdir()) == []


def test_cli_prints_summary_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_dataset(tmp_path / "toy.h5", toy_dataset())
    assert dataset_cli.main([str(path)]) == 0
    text = capsys.readouterr().out
    assert "episodes 3" in text and "BallRun" in text
    assert dataset_cli.main([str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 3 and summary["transitions"] == 15
    assert summary["fraction_under_cost_limit"]["10"] == 1.0
    assert summary["fraction_under_cost_limit"]["5"] == 0.0


def test_dsrl_downloads_are_looked_up_where_dsrl_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safepolicy.datasets import dsrl_dataset_dir, resolve_dataset

    monkeypatch.delenv("DSRL_DATASET_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert dsrl_dataset_dir() == tmp_path / ".dsrl" / "datasets"  # dsrl's own default
    download = tmp_path / ".dsrl" / "datasets" / "SafetyBallRun-v0-80-940.hdf5"
    download.parent.mkdir(parents=True)
    download.write_bytes(b"")
    assert resolve_dataset("OfflineBallRun-v0") == download
    monkeypatch.setenv("DSRL_DATASET_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetError, match="elsewhere"):
        resolve_dataset("BallRun")
