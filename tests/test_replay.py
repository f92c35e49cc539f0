"""Online data: replay buffer checkpoints, the offline/online mix, the environment collector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from training_toys import speed_cost_dataset, toy_context

from safepolicy.rollout import EpisodeRecord, rollout_episodes
from safepolicy.tasks import get_task
from safepolicy.training.networks import SquashedGaussianActor
from safepolicy.training.replay import EnvironmentCollector, MixedSampler, ReplayBuffer


def filled_replay(capacity: int, rows: int) -> ReplayBuffer:
    replay = ReplayBuffer(
        capacity, obs_dim=2, action_dim=1, device=torch.device("cpu"), reward_scale=0.5
    )
    values = torch.arange(rows, dtype=torch.float32)
    replay.add(
        values[:, None].expand(-1, 2),
        values[:, None] / rows,
        values,
        values + 1,
        values[:, None].expand(-1, 2) + 1,
        torch.zeros(rows),
    )
    return replay


def test_replay_ring_overwrites_the_oldest_and_round_trips_a_checkpoint(tmp_path: Path) -> None:
    replay = filled_replay(capacity=8, rows=11)  # rows 0-10: 0, 1, 2 overwritten by 8, 9, 10
    assert replay.size == 8 and replay.position == 3
    assert sorted(replay.storage["costs"].tolist()) == [float(v + 1) for v in range(3, 11)]
    assert replay.storage["rewards"][0].item() == 8 * 0.5  # reward scale applied on add
    torch.save(replay.state_dict(), tmp_path / "replay.pt")
    restored = ReplayBuffer(8, 2, 1, torch.device("cpu"), reward_scale=0.5)
    restored.load_state_dict(torch.load(tmp_path / "replay.pt"))
    first = replay.sample(16, torch.Generator().manual_seed(1))
    second = restored.sample(16, torch.Generator().manual_seed(1))
    assert torch.equal(first.observations, second.observations)
    assert torch.equal(first.costs, second.costs) and restored.position == 3
    with pytest.raises(ValueError, match="capacity 8, this buffer 4"):
        ReplayBuffer(4, 2, 1, torch.device("cpu")).load_state_dict(replay.state_dict())
    with pytest.raises(ValueError, match="replay buffer is empty"):
        ReplayBuffer(4, 2, 1, torch.device("cpu")).sample(2, torch.Generator())


def test_mixed_sampler_draws_the_online_share_exactly() -> None:
    context = toy_context(speed_cost_dataset(transitions=200), 3.0, 10)
    replay = ReplayBuffer(64, 2, 1, torch.device("cpu"))
    sampler = MixedSampler(context.offline, replay, online_fraction=0.25)
    generator = torch.Generator().manual_seed(0)
    assert sampler.sample(40, generator).observations.shape == (40, 2)  # empty: all offline
    replay.add(
        torch.full((10, 2), 99.0),
        torch.zeros(10, 1),
        torch.zeros(10),
        torch.zeros(10),
        torch.full((10, 2), 99.0),
        torch.zeros(10),
    )
    batch = sampler.sample(40, generator)
    assert int((batch.observations[:, 0] == 99.0).sum()) == 10  # toy observations are < 2
    with pytest.raises(ValueError, match="online_fraction to 1"):
        MixedSampler(None, replay, online_fraction=0.5)
    only_online = MixedSampler(None, replay, online_fraction=1.0).sample(8, generator)
    assert torch.all(only_online.observations == 99.0)


def test_collector_episodes_equal_a_rollout_with_the_same_seeds() -> None:
    task = get_task("BallRun")
    torch.manual_seed(0)
    actor = SquashedGaussianActor(7, 2, [16])  # BallRun: 7-dimensional observations, 2 actions
    collector = EnvironmentCollector(task, num_envs=2, seed=40, device=torch.device("cpu"))
    replay = ReplayBuffer(10_000, 7, 2, torch.device("cpu"))
    episodes: list[EpisodeRecord] = []
    while len(episodes) < 4:
        episodes += collector.collect(actor, 50, replay, deterministic=True)
    collector.close()

    def policy(observations: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return actor(torch.as_tensor(observations, dtype=torch.float32)).numpy()

    expected = rollout_episodes(policy, task, episodes=4, seed=40, num_envs=2)
    by_seed = {record.seed: record for record in episodes}
    for record in expected:
        got = by_seed[record.seed]
        assert got.episode_return == pytest.approx(record.episode_return, rel=1e-6)
        assert got.episode_cost == record.episode_cost and got.length == record.length
    # every step's cost is counted once: finished episodes plus those still running
    assert collector.cumulative_cost >= sum(record.episode_cost for record in episodes)
    assert collector.cumulative_cost == pytest.approx(
        float(replay.storage["costs"][: replay.size].sum())
    )
    assert replay.size == collector.env_steps
