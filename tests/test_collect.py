"""`safepolicy collect`: valid DSRL files, reproducible from the seed, a spread of behaviours."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from safepolicy import collect as collect_module
from safepolicy.behavior import BehaviorError, aggressive_windows, parse_behavior_mix
from safepolicy.collect import collect, main
from safepolicy.datasets import DSRL_KEYS, load_dataset


def test_collect_ballrun_writes_a_valid_reproducible_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "BallRun.h5"
    args = ["--task", "BallRun", "--episodes", "30", "--seed", "7", "--out", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "episodes 30" in printed and str(out) in printed
    dataset = load_dataset(out)
    assert len(dataset) == 30 * 100
    assert dataset.attrs["task"] == "BallRun" and dataset.attrs["seed"] == 7
    assert dataset.attrs["behavior"]["controller"] == "RunController"
    summary = json.loads((tmp_path / "BallRun.summary.json").read_text())
    assert summary["episodes"] == 30

    again = tmp_path / "again.h5"
    assert main([*args[:-2], str(again), "--quiet"]) == 0
    repeat = load_dataset(again)
    for key in DSRL_KEYS:
        np.testing.assert_array_equal(getattr(repeat, key), getattr(dataset, key))

    returns, costs = dataset.episode_returns_and_costs()
    safe, unsafe = costs <= 5, costs > 20
    assert safe.sum() >= 5 and unsafe.sum() >= 5, costs
    assert returns[unsafe].max() > returns[safe].max() + 100  # breaking the limit pays


def test_other_seed_gives_other_data() -> None:
    first = collect("BallRun", 2, seed=0, progress=False)
    other = collect("BallRun", 2, seed=1, progress=False)
    assert not np.array_equal(first.observations, other.observations)


def test_carcircle_has_safe_and_unsafe_episodes() -> None:
    dataset = collect("CarCircle", 12, seed=0, progress=False)
    _, costs = dataset.episode_returns_and_costs()
    assert (costs <= 5).sum() >= 2 and (costs > 20).sum() >= 2, costs
    assert len(dataset) == 12 * 300


@pytest.mark.slow
@pytest.mark.parametrize("task", ["PointGoal1", "HalfCheetahVelocity"])
def test_safety_gymnasium_tasks_collect(task: str) -> None:
    dataset = collect(task, 1, seed=0, progress=False)
    assert len(dataset) == 1000
    assert dataset.timeouts[-1] and not dataset.terminals.any()


def test_halfcheetah_velocity_gait_runs_forward_safe_and_unsafe() -> None:
    dataset = collect("HalfCheetahVelocity", 6, seed=0, behavior="scripted", progress=False)
    assert dataset.attrs["behavior"]["controller"] == "VelocityController"
    returns, costs = dataset.episode_returns_and_costs()
    assert (returns > 200).all(), returns  # every episode runs forward (random play: ~ -50)
    safe, unsafe = costs <= 20, costs > 40  # DSRL's cost limits for the Velocity tasks
    assert safe.sum() >= 2 and unsafe.sum() >= 2, costs
    assert returns[unsafe].max() > 1500, returns  # the bursts over the speed limit pay


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--task", "BallRunn"], "did you mean BallRun?"),
        (["--task", "BallRun", "--episodes", "0"], "must be a positive integer"),
        (["--task", "BallRun", "--episodes", "-3"], "must be a positive integer"),
        (["--task", "BallRun", "--behavior", "greedy=1"], "unknown behaviour 'greedy'"),
    ],
)
def test_bad_arguments(
    tmp_path: Path, argv: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.h5"
    assert main([*argv, "--out", str(out), "--quiet"]) != 0
    assert problem in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_output_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--task", "BallRun", "--episodes", "1", "--out", str(tmp_path), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "is a directory" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_output_unwritable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["--task", "BallRun", "--episodes", "1", "--out", str(locked / "x.h5")]) != 0
    assert "cannot write" in capsys.readouterr().err


def test_output_parent_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = blocker / "x.h5"
    assert main(["--task", "BallRun", "--episodes", "1", "--out", str(out), "--quiet"]) != 0
    assert "is a file, not a directory" in capsys.readouterr().err


def test_interrupted_collection_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_collect = collect_module.collect

    def interrupted(*args: object, **kwargs: object) -> object:
        real_collect("BallRun", 1, progress=False)
        raise KeyboardInterrupt

    monkeypatch.setattr(collect_module, "collect", interrupted)
    out = tmp_path / "x.h5"
    assert main(["--task", "BallRun", "--episodes", "3", "--out", str(out), "--quiet"]) == 130
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(collect_module, "atomic_write_text", broken)
    out = tmp_path / "x.h5"
    assert main(["--task", "BallRun", "--episodes", "1", "--out", str(out), "--quiet"]) == 1
    assert list(tmp_path.iterdir()) == []


def test_behavior_mix_parsing() -> None:
    assert parse_behavior_mix("scripted=3,random=1") == {"scripted": 0.75, "random": 0.25}
    assert parse_behavior_mix("cautious") == {"cautious": 1.0}
    for bad in ("scripted=-1", "scripted=x", "scripted=0", "fast=1"):
        with pytest.raises(BehaviorError):
            parse_behavior_mix(bad)


def test_aggressive_windows_cover_the_requested_fraction() -> None:
    rng = np.random.default_rng(0)
    for aggressiveness in (0.0, 0.1, 0.5, 1.0):
        mask = aggressive_windows(rng, 200, aggressiveness)
        assert mask.sum() == round(aggressiveness * 200)
    assert aggressive_windows(rng, 200, 1.0).all()


def test_an_existing_dataset_is_not_overwritten_without_asking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.h5"
    args = ["--task", "BallRun", "--episodes", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main([*args[:4], "--seed", "5", *args[4:]]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main([*args, "--seed", "5", "--overwrite"]) == 0
    assert out.read_bytes() != before
