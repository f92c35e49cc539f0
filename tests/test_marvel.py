"""Marvel (training/algorithms/marvel.py): offline CPQ, then SAC-Lag finetuning online."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from safepolicy.training.algorithms.marvel import ONLINE, Marvel, MarvelConfig
from safepolicy.training.loop import TrainingError, TrainRequest, train
from safepolicy.training.multipliers import DualAscent

SMALL = {
    "run.hidden_sizes": "32,32",
    "run.batch_size": "64",
    "run.eval_episodes": "0",
    "run.log_every": "20",
    "run.checkpoint_every": "1000",
    "cpq.vae_hidden_sizes": "32,32",
    "cpq.sample_actions": "2",
    "num_envs": "2",
    "offline_steps": "40",
    "vpa": "false",
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Two threads on a shared 2-core machine make each small update 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def request(
    dataset: Path,
    out: Path,
    algorithm: str = "marvel",
    **changes: object,
) -> TrainRequest:
    overrides = {**SMALL, "online_steps": "210"}
    if algorithm != "marvel":  # the run settings, and CPQ's own under their plain names
        overrides = {
            key.removeprefix(f"{algorithm}."): value
            for key, value in SMALL.items()
            if key.startswith(("run.", f"{algorithm}."))
        }
    fields: dict = {
        "algorithm": algorithm,
        "task": "BallRun",
        "dataset": dataset,
        "cost_limit": 20.0,
        "out": out,
        "seed": 2,
        "steps": 40,
        "device": "cpu",
        "overrides": overrides,
        "progress": False,
    }
    fields.update(changes)
    return TrainRequest(**fields)


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "scalars.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_offline_vpa_then_online_finetune_logs_the_cumulative_cost(
    ballrun_dataset: Path, tmp_path: Path
) -> None:
    run_dir = train(
        request(
            ballrun_dataset,
            tmp_path / "marvel",
            overrides={**SMALL, "online_steps": "210", "vpa": "true", "alignment.steps": "20"},
        )
    )
    log = rows(run_dir)
    assert [row["stage"] for row in log if row["step"] in ("40", "60", "80")] == [
        "offline",
        "vpa",
        "online",
    ]
    online = [row for row in log if row["stage"] == "online"]
    cumulative = [
        float(row["online/cumulative_cost"]) for row in online if row["online/cumulative_cost"]
    ]
    env_steps = [float(row["online/env_steps"]) for row in online if row["online/env_steps"]]
    assert env_steps == [200.0, 400.0]  # 2 envs, 100-step episodes, 210 vector steps
    assert len(cumulative) == 2 and cumulative[0] <= cumulative[1]
    # VPA moves the critics and keeps the offline actor; the online stage finetunes that actor
    offline, aligned, final = (
        torch.load(run_dir / "checkpoints" / f"{name}.pt", weights_only=False)["algorithm"]
        for name in ("stage-offline", "stage-vpa", "last")
    )
    before = offline["cpq"]["actor"]["trunk.0.weight"]
    assert torch.equal(before, aligned["cpq"]["actor"]["trunk.0.weight"])
    critic_weight = "layers.0.weight"
    assert not torch.equal(
        offline["cpq"]["critic"][critic_weight], aligned["cpq"]["critic"][critic_weight]
    )
    after = final["online"]["update"]["actor"]["trunk.0.weight"]
    assert not torch.equal(before, after)
    assert torch.equal(after, final["cpq"]["actor"]["trunk.0.weight"])


def test_the_online_stage_starts_from_cpqs_targets_and_temperature(
    ballrun_dataset: Path, tmp_path: Path
) -> None:
    from safepolicy.datasets import load_dataset
    from safepolicy.tasks import get_task
    from safepolicy.training.config import RunConfig
    from safepolicy.training.loop import build_context

    run = RunConfig(hidden_sizes=[16], batch_size=32)
    context = build_context(
        load_dataset(ballrun_dataset), get_task("BallRun"), run, 20.0, torch.device("cpu"), seed=0
    )
    marvel = Marvel(
        MarvelConfig(cpq={"vae_hidden_sizes": [16], "sample_actions": 2}, multiplier="dual-ascent"),
        context,
    )
    assert isinstance(marvel.learner.multiplier, DualAscent)  # the ablation's switch
    for _ in range(5):
        marvel.step("offline")
    assert marvel.update.actor is marvel.cpq.actor and marvel.update.critics is marvel.cpq.critic
    marvel.start_stage(ONLINE)
    for ours, theirs in zip(
        marvel.update.target_critics.parameters(),
        marvel.cpq.target_critic.parameters(),
        strict=True,
    ):
        assert torch.equal(ours, theirs)
    assert torch.equal(marvel.update.log_temperature.detach(), marvel.cpq.log_temperature.detach())


def test_a_cpq_run_is_reused_as_the_offline_stage(ballrun_dataset: Path, tmp_path: Path) -> None:
    cpq_run = train(request(ballrun_dataset, tmp_path / "cpq", algorithm="cpq"))
    marvel_run = train(
        request(
            ballrun_dataset,
            tmp_path / "marvel",
            reuse_stages={"offline": cpq_run},
            overrides={**SMALL, "online_steps": "30"},
        )
    )
    assert {row["stage"] for row in rows(marvel_run)} == {"online"}
    cpq_state = torch.load(cpq_run / "checkpoints" / "stage-cpq.pt", weights_only=False)
    marvel_state = torch.load(marvel_run / "checkpoints" / "last.pt", weights_only=False)
    for name, value in cpq_state["algorithm"]["vae"].items():  # the VAE is not finetuned
        assert torch.equal(value, marvel_state["algorithm"]["cpq"]["vae"][name])
    other = train(request(ballrun_dataset, tmp_path / "bc", algorithm="bc-safe"))
    with pytest.raises(TrainingError, match="'bc-safe', this run's is 'marvel' \\(or cpq\\)"):
        train(
            request(
                ballrun_dataset,
                tmp_path / "refused",
                overrides={**SMALL},
                reuse_stages={"offline": other / "checkpoints" / "stage-train.pt"},
            )
        )


def test_marvel_needs_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="marvel learns from a dataset"):
        train(
            TrainRequest(
                algorithm="marvel",
                task="BallRun",
                dataset=None,
                cost_limit=20.0,
                out=tmp_path / "run",
                progress=False,
            )
        )


def test_a_run_killed_mid_finetune_resumes(
    ballrun_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safepolicy.training.loop import ScalarLog

    overrides = {**SMALL, "online_steps": "210", "run.checkpoint_every": "50"}
    calls = {"n": 0}
    original_add = ScalarLog.add

    def dying_add(self: ScalarLog, values: dict) -> None:
        calls["n"] += 1
        if calls["n"] == 120:  # in the online stage (steps 41-250), after the step-100 save
            raise KeyboardInterrupt
        original_add(self, values)

    monkeypatch.setattr(ScalarLog, "add", dying_add)
    with pytest.raises(KeyboardInterrupt):
        train(request(ballrun_dataset, tmp_path / "run", overrides=overrides))
    monkeypatch.setattr(ScalarLog, "add", original_add)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert saved["step"] == 100 and saved["algorithm"]["online"]["replay"]["size"] == 120
    resumed = train(request(ballrun_dataset, tmp_path / "run", overrides=overrides, resume=True))
    final = torch.load(resumed / "checkpoints" / "last.pt", weights_only=False)["algorithm"]
    assert final["online"]["collector"]["env_steps"] == 2 * 210
    assert final["online"]["replay"]["size"] == 2 * 210
