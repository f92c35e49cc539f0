"""Staged training through the loop: stage order, mid-stage resume, stage reuse, the registry."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from test_training_runs import actor_output, request
from training_toys import at_log_row, interrupt

from safepolicy.training import registry
from safepolicy.training.loop import TrainingError, train

TOY = "toy-two-stage"


@pytest.fixture(autouse=True)
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.REGISTRY, TOY, "training_toys:TWO_STAGE_SPEC")


def toy_request(dataset: Path, out: Path, **changes: object):  # type: ignore[no-untyped-def]
    return request(dataset, out, TOY, steps=None, **changes)


def stages_logged(run_dir: Path) -> list[tuple[int, str]]:
    with (run_dir / "scalars.csv").open() as handle:
        return [(int(float(row["step"])), row["stage"]) for row in csv.DictReader(handle)]


def test_every_registered_algorithm_builds_and_names_itself() -> None:
    for name in registry.algorithm_names():
        spec = registry.algorithm_spec(name)
        assert spec.name == name and spec.summary
        assert registry.checked_stages(spec, spec.config_type(), registry_run_config())
    with pytest.raises(registry.UnknownAlgorithmError, match="known: "):
        registry.algorithm_spec("sac")


def registry_run_config():  # type: ignore[no-untyped-def]
    from safepolicy.training.config import RunConfig

    return RunConfig(steps=5)


def record_stage_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ``start_stage`` call the loop makes on the toy, in order."""
    from training_toys import TwoStageToy

    started: list[str] = []
    original = TwoStageToy.start_stage

    def recording(self: TwoStageToy, stage: str) -> None:
        started.append(stage)
        original(self, stage)

    monkeypatch.setattr(TwoStageToy, "start_stage", recording)
    return started


def test_stages_run_in_order_and_checkpoint_at_each_end(
    ballrun_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = record_stage_starts(monkeypatch)
    run = train(toy_request(ballrun_dataset, tmp_path / "run"))
    assert started == ["behaviour", "policy"]
    logged = stages_logged(run)
    assert logged == [
        (10, "behaviour"),
        (20, "behaviour"),
        (30, "behaviour"),
        (40, "policy"),
        (50, "policy"),
        (60, "policy"),
    ]
    for stage, step in (("behaviour", 30), ("policy", 60)):
        state = torch.load(run / "checkpoints" / f"stage-{stage}.pt", weights_only=False)
        assert state["stage"] == stage and state["step"] == step


def test_a_run_killed_mid_stage_resumes_to_the_same_result(
    ballrun_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = train(toy_request(ballrun_dataset, tmp_path / "whole"))
    at_log_row(monkeypatch, 47, interrupt)  # in the policy stage, after the step-40 checkpoint
    with pytest.raises(KeyboardInterrupt):
        train(toy_request(ballrun_dataset, tmp_path / "killed"))
    state = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 40  # mid-stage: 10 steps into "policy"
    started = record_stage_starts(monkeypatch)
    resumed = train(toy_request(ballrun_dataset, tmp_path / "killed", resume=True))
    assert torch.equal(actor_output(whole), actor_output(resumed))
    assert stages_logged(resumed)[-1] == (60, "policy")
    assert started == []  # "policy" had begun before the kill; it is not set up twice


def test_a_stage_checkpoint_is_reused_by_another_run(ballrun_dataset: Path, tmp_path: Path) -> None:
    whole = train(toy_request(ballrun_dataset, tmp_path / "whole"))
    same = train(toy_request(ballrun_dataset, tmp_path / "same", reuse_stages={"behaviour": whole}))
    assert torch.equal(actor_output(whole), actor_output(same))  # same seed: same stream
    assert [stage for _, stage in stages_logged(same)] == ["policy"] * 3

    other_limit = train(
        toy_request(
            ballrun_dataset,
            tmp_path / "limit20",
            cost_limit=20.0,
            reuse_stages={"behaviour": whole / "checkpoints" / "stage-behaviour.pt"},
        )
    )
    reused = torch.load(other_limit / "checkpoints" / "last.pt", weights_only=False)
    source = torch.load(whole / "checkpoints" / "stage-behaviour.pt", weights_only=False)
    for key, tensor in source["algorithm"]["behaviour"].items():
        assert torch.equal(reused["algorithm"]["behaviour"][key], tensor), key


def test_bad_reuse_and_changed_resume_are_refused_clearly(
    ballrun_dataset: Path, tmp_path: Path
) -> None:
    whole = train(toy_request(ballrun_dataset, tmp_path / "whole"))
    with pytest.raises(TrainingError, match="no stage 'critics'; its stages are behaviour, "):
        train(toy_request(ballrun_dataset, tmp_path / "a", reuse_stages={"critics": whole}))
    with pytest.raises(TrainingError, match="no stage checkpoint"):
        train(
            toy_request(
                ballrun_dataset, tmp_path / "b", reuse_stages={"behaviour": tmp_path / "nowhere"}
            )
        )
    bc = train(request(ballrun_dataset, tmp_path / "bc", "bc-safe"))
    with pytest.raises(TrainingError, match="has no stage 'behaviour'"):
        train(
            request(ballrun_dataset, tmp_path / "c", "bc-safe", reuse_stages={"behaviour": whole})
        )
    with pytest.raises(TrainingError, match="that run's algorithm is 'bc-safe'"):
        train(
            toy_request(
                ballrun_dataset,
                tmp_path / "d",
                reuse_stages={"behaviour": bc / "checkpoints" / "stage-train.pt"},
            )
        )
    with pytest.raises(TrainingError, match="end of stage 'policy', not 'behaviour'"):
        train(
            toy_request(
                ballrun_dataset,
                tmp_path / "e",
                reuse_stages={"behaviour": whole / "checkpoints" / "stage-policy.pt"},
            )
        )
    assert bc.exists()
    changed = {
        **dict(request(ballrun_dataset, tmp_path).overrides),
        "td3bc.tau": "0.01",
        "run.batch_size": "32",
    }
    with pytest.raises(
        TrainingError, match=r"differing: algorithm_config\.td3bc\.tau, run\.batch_size"
    ):
        train(toy_request(ballrun_dataset, whole, resume=True, overrides=changed))
