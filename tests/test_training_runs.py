"""Training runs through the loop: determinism, kill-and-resume, checkpoints, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_toys import at_log_row, interrupt

from safepolicy.training.checkpoint import load_actor
from safepolicy.training.loop import TrainingError, TrainRequest, train

SMALL = {
    "run.hidden_sizes": "32,32",
    "run.batch_size": "64",
    "run.eval_episodes": "0",
    "run.checkpoint_every": "20",
    "run.log_every": "10",
}


def request(dataset: Path, out: Path, algorithm: str = "o3srl", **changes: object) -> TrainRequest:
    fields: dict = {
        "algorithm": algorithm,
        "task": "BallRun",
        "dataset": dataset,
        "cost_limit": 10.0,
        "out": out,
        "seed": 3,
        "steps": 60,
        "device": "cpu",
        "overrides": SMALL,
        "progress": False,
    }
    fields.update(changes)
    return TrainRequest(**fields)


def actor_output(run_dir: Path) -> torch.Tensor:
    actor, _ = load_actor(run_dir)
    with torch.no_grad():
        return actor(torch.linspace(-1, 1, 7 * 5).reshape(5, 7))


@pytest.mark.parametrize("algorithm", ["o3srl", "td3bc-lag", "bc-safe", "cpq"])
def test_same_seed_gives_the_same_actor(
    ballrun_dataset: Path, tmp_path: Path, algorithm: str
) -> None:
    first = train(request(ballrun_dataset, tmp_path / "a", algorithm))
    second = train(request(ballrun_dataset, tmp_path / "b", algorithm))
    other_seed = train(request(ballrun_dataset, tmp_path / "c", algorithm, seed=4))
    assert torch.equal(actor_output(first), actor_output(second))
    assert not torch.equal(actor_output(first), actor_output(other_seed))
    _, metadata = load_actor(first)
    assert metadata.algorithm == algorithm and metadata.cost_limit == 10.0
    assert metadata.dataset_sha256 and len(metadata.dataset_sha256) == 64


def test_a_killed_run_resumes_to_the_same_result(
    ballrun_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uninterrupted = train(request(ballrun_dataset, tmp_path / "whole"))
    at_log_row(monkeypatch, 47, interrupt)  # killed after the step-40 checkpoint
    with pytest.raises(KeyboardInterrupt):
        train(request(ballrun_dataset, tmp_path / "killed"))
    assert not (tmp_path / "killed" / "actor.pt").exists()
    resumed = train(request(ballrun_dataset, tmp_path / "killed", resume=True))
    assert torch.equal(actor_output(uninterrupted), actor_output(resumed))
    rows = (resumed / "scalars.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and rows[-1].startswith("60")


def test_bad_requests_are_refused_clearly(ballrun_dataset: Path, tmp_path: Path) -> None:
    train(request(ballrun_dataset, tmp_path / "run", "bc-safe"))
    with pytest.raises(TrainingError, match="not empty; pass --resume"):
        train(request(ballrun_dataset, tmp_path / "run", "bc-safe"))
    with pytest.raises(TrainingError, match="unknown algorithm"):
        train(request(ballrun_dataset, tmp_path / "x", "sac"))
    with pytest.raises(TrainingError, match="unknown setting"):
        train(request(ballrun_dataset, tmp_path / "y", overrides={"num_armz": "3"}))
    with pytest.raises(TrainingError, match="CarCircle"):
        train(request(ballrun_dataset, tmp_path / "z", task="CarCircle"))
