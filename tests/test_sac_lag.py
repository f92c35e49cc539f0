"""SAC-Lag online from scratch (training/algorithms/sac_lag.py) on BallRun, the fastest task."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from safepolicy.export.artifact import load_policy
from safepolicy.export.onnx_export import export_run
from safepolicy.tasks import get_task
from safepolicy.training.algorithms.sac_lag import (
    SACLag,
    SACLagConfig,
    UniformRandomActor,
    build_multiplier,
    lagrangian_actor_loss,
)
from safepolicy.training.checkpoint import load_actor
from safepolicy.training.cli import main as train_main
from safepolicy.training.config import RunConfig
from safepolicy.training.data import Batch
from safepolicy.training.loop import ScalarLog, TrainingError, TrainRequest, build_context, train
from safepolicy.training.multipliers import AdaptivePIDMultiplier, DualAscent, PIDMultiplier

# BallRun episodes are 100 steps: 4 envs x 250 vector steps = 2 rounds of 4 episodes each
SMALL = {
    "run.hidden_sizes": "32,32",
    "run.batch_size": "64",
    "run.eval_episodes": "0",
    "run.log_every": "25",
    "run.checkpoint_every": "100",
    "warmup_steps": "200",
    "num_envs": "4",
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Two threads on a shared 2-core machine make each small update 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def request(out: Path, **changes: object) -> TrainRequest:
    fields: dict = {
        "algorithm": "sac-lag",
        "task": "BallRun",
        "dataset": None,
        "cost_limit": 20.0,
        "out": out,
        "seed": 1,
        "steps": 250,
        "device": "cpu",
        "overrides": SMALL,
        "progress": False,
    }
    fields.update(changes)
    return TrainRequest(**fields)


def scalar_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "scalars.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(row[name]) for row in rows if row.get(name)]


def test_an_online_run_without_a_dataset_logs_cumulative_cost_and_exports(tmp_path: Path) -> None:
    run_dir = train(request(tmp_path / "run"))
    rows = scalar_rows(run_dir)
    cumulative = column(rows, "online/cumulative_cost")
    env_steps = column(rows, "online/env_steps")
    assert env_steps == [400.0, 800.0]  # two rounds of 4 finished 100-step episodes
    assert len(cumulative) == 2 and 0.0 < cumulative[0] < cumulative[1]
    # cumulative cost is the sum of the finished episodes' costs (4 envs per round)
    episode_costs = column(rows, "online/episode_cost")
    assert cumulative[1] == pytest.approx(4 * sum(episode_costs))
    assert column(rows, "loss/critic") and all(np.isfinite(column(rows, "loss/actor")))
    lambdas = column(rows, "multiplier/lambda")
    assert lambdas[0] == 0.0 and all(value >= 0.0 for value in lambdas)
    _, metadata = load_actor(run_dir)
    assert metadata.algorithm == "sac-lag" and metadata.dataset_sha256 is None
    policy = load_policy(export_run(run_dir, tmp_path / "repo", "sac-lag"))
    observations = np.linspace(-1, 1, 3 * 7, dtype=np.float32).reshape(3, 7)
    actor, _ = load_actor(run_dir)
    with torch.no_grad():
        expected = actor(torch.as_tensor(observations)).numpy()
    np.testing.assert_allclose(policy.act_unchecked(observations), expected, atol=1e-5)


def test_a_killed_online_run_resumes_to_the_same_counters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    original_add = ScalarLog.add

    def dying_add(self: ScalarLog, values: dict) -> None:
        calls["n"] += 1
        if calls["n"] == 150:  # killed after the step-100 checkpoint
            raise KeyboardInterrupt
        original_add(self, values)

    monkeypatch.setattr(ScalarLog, "add", dying_add)
    with pytest.raises(KeyboardInterrupt):
        train(request(tmp_path / "killed", steps=220))
    monkeypatch.setattr(ScalarLog, "add", original_add)
    checkpoint = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=False)
    saved = checkpoint["algorithm"]
    assert checkpoint["step"] == 100 and saved["replay"]["size"] == 400  # replay is saved
    assert saved["collector"]["env_steps"] == 400

    resumed = train(request(tmp_path / "killed", steps=220, resume=True))
    rows = scalar_rows(resumed)
    assert rows[-1]["step"].startswith("220")
    # the episode in progress at the kill restarts: 100 steps after step 100, another round
    assert column(rows, "online/env_steps") == [400.0, 800.0]
    final = torch.load(resumed / "checkpoints" / "last.pt", weights_only=False)["algorithm"]
    assert final["replay"]["size"] == 880 and final["collector"]["env_steps"] == 880


def test_offline_algorithms_still_need_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="o3srl learns from a dataset; pass --dataset"):
        train(request(tmp_path / "o3srl", algorithm="o3srl", overrides={}))
    assert (
        train_main(
            ["o3srl", "--task", "BallRun", "--cost-limit", "10", "--out", str(tmp_path / "cli")]
        )
        == 2
    )


@pytest.mark.parametrize(
    ("name", "kind"),
    [("apid", AdaptivePIDMultiplier), ("pid", PIDMultiplier), ("dual-ascent", DualAscent)],
)
def test_the_config_chooses_the_multiplier(name: str, kind: type) -> None:
    multiplier = build_multiplier(SACLagConfig(multiplier=name, initial_lambda=0.5))
    assert type(multiplier) is kind and multiplier.value == pytest.approx(0.5)
    multiplier.update(40.0, 20.0)
    assert multiplier.value > 0.5  # over the limit: lambda rises, whichever rule


def test_warmup_actions_are_uniform_in_the_bounds() -> None:
    context = build_context(
        None, get_task("BallRun"), RunConfig(), 20.0, torch.device("cpu"), seed=0
    )
    actor = UniformRandomActor(context)
    mean, log_std = actor.distribution(torch.zeros(20_000, context.obs_dim))
    actions = torch.tanh(mean)
    assert torch.all(log_std.exp() < 1e-10)
    assert actions.min() > -1.0 and actions.max() < 1.0
    histogram = torch.histc(actions[:, 0], bins=4, min=-1.0, max=1.0) / len(actions)
    assert torch.allclose(histogram, torch.full((4,), 0.25), atol=0.02)


def test_the_actor_loss_trades_reward_against_lambda_times_cost() -> None:
    reward_q, cost_q = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0])
    log_prob, temperature = torch.tensor([-1.0, -1.0]), torch.tensor(0.1)
    plain = lagrangian_actor_loss(reward_q, cost_q, log_prob, temperature, 0.0, rescale=True)
    assert plain.item() == pytest.approx(-0.1 - 2.0)
    penalised = lagrangian_actor_loss(reward_q, cost_q, log_prob, temperature, 1.0, rescale=False)
    assert penalised.item() == pytest.approx(-0.1 - 1.0)
    rescaled = lagrangian_actor_loss(reward_q, cost_q, log_prob, temperature, 1.0, rescale=True)
    assert rescaled.item() == pytest.approx(penalised.item() / 2.0)


def test_reward_and_cost_critics_step_at_their_own_learning_rates() -> None:
    context = build_context(
        None, get_task("BallRun"), RunConfig(hidden_sizes=[16]), 20.0, torch.device("cpu"), seed=0
    )
    config = SACLagConfig(critic_lr=1e-3, cost_critic_lr=1e-4)
    update = SACLag(config, context).learner.update
    batch = Batch(
        observations=torch.randn(32, 7),
        actions=torch.rand(32, 2) * 2 - 1,
        rewards=torch.randn(32),
        costs=torch.rand(32),
        next_observations=torch.randn(32, 7),
        terminals=torch.zeros(32),
    )
    before = update.critics.layers[0].weight.detach().clone()
    update.update(batch, lagrange_multiplier=0.0)
    moved = (update.critics.layers[0].weight.detach() - before).abs()
    reward_step = moved[update.critics.members("reward")].mean()
    cost_step = moved[update.critics.members("cost")].mean()
    # Adam's first step is about lr per weight: the cost group's is a tenth of the reward's
    assert cost_step / reward_step == pytest.approx(0.1, rel=0.05)


def test_the_same_seed_gives_the_same_actor(tmp_path: Path) -> None:
    def actor_output(run_dir: Path) -> torch.Tensor:
        actor, _ = load_actor(run_dir)
        with torch.no_grad():
            return actor(torch.linspace(-1, 1, 5 * 7).reshape(5, 7))

    first = train(request(tmp_path / "a", steps=120))
    second = train(request(tmp_path / "b", steps=120))
    other_seed = train(request(tmp_path / "c", steps=120, seed=2))
    assert torch.equal(actor_output(first), actor_output(second))
    assert not torch.equal(actor_output(first), actor_output(other_seed))
