"""Online data: a replay buffer of device tensors, an offline/online mixing sampler, and an
environment collector that steps the task's vectorised envs with the actor.

The replay buffer is a ring of preallocated device tensors (actions in the actor's [-1, 1]
units, like ``OfflineBuffer``); it is resumable through ``state_dict``. ``MixedSampler`` draws
``round(online_fraction * batch_size)`` rows from the replay buffer and the rest from the
dataset, so a staged algorithm can fine-tune online on a fixed mix (a run without a dataset
samples the replay buffer only).

``EnvironmentCollector`` plays episodes on ``safepolicy.rollout.make_vector_env`` with the seeds
``seed, seed + 1, ...`` dealt round-robin, as ``rollout_episodes`` does, so a deterministic
actor's collected episodes equal a rollout's with the same seeds. It tracks each finished
episode's return and cost and the cumulative cost spent in the environment. Its counters are
checkpointed; the environments themselves are not (a resumed run restarts the episode that was
in progress, with the next unused seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from safepolicy.rollout import EpisodeRecord, finished_episodes, make_vector_env, step_costs
from safepolicy.tasks import TaskSpec
from safepolicy.training.data import Batch, OfflineBuffer
from safepolicy.training.networks import SquashedGaussianActor

KEYS = ("observations", "actions", "rewards", "costs", "next_observations", "terminals")


class ReplayBuffer:
    """A fixed-capacity ring of transitions on ``device``; the oldest are overwritten."""

    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        action_dim: int,
        device: torch.device,
        reward_scale: float = 1.0,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be at least 1, got {capacity}")
        self.capacity, self.device, self.reward_scale = capacity, device, reward_scale
        shapes = {
            "observations": (obs_dim,),
            "actions": (action_dim,),
            "rewards": (),
            "costs": (),
            "next_observations": (obs_dim,),
            "terminals": (),
        }
        self.storage = {
            key: torch.zeros((capacity, *shape), device=device) for key, shape in shapes.items()
        }
        self.size = 0
        self.position = 0  # the next row written

    def add(
        self,
        observations: Any,
        unit_actions: Any,
        rewards: Any,
        costs: Any,
        next_observations: Any,
        terminals: Any,
    ) -> None:
        """Append a batch of transitions (rows along dim 0; rewards unscaled, as the env gives)."""
        values = {
            "observations": observations,
            "actions": unit_actions,
            "rewards": rewards,
            "costs": costs,
            "next_observations": next_observations,
            "terminals": terminals,
        }
        tensors = {
            key: torch.as_tensor(
                np.asarray(value) if not isinstance(value, torch.Tensor) else value,
                dtype=torch.float32,
            ).to(self.device)
            for key, value in values.items()
        }
        tensors["rewards"] = tensors["rewards"] * self.reward_scale
        count = tensors["observations"].shape[0]
        rows = (self.position + torch.arange(count)) % self.capacity
        rows = rows.to(self.device)
        for key in KEYS:
            self.storage[key][rows] = tensors[key]
        self.position = (self.position + count) % self.capacity
        self.size = min(self.size + count, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A uniform minibatch of the stored rows (``generator`` on the CPU, for replay)."""
        if self.size == 0:
            raise ValueError("the replay buffer is empty; collect transitions before sampling")
        index = torch.randint(self.size, (batch_size,), generator=generator).to(self.device)
        return Batch(**{key: self.storage[key][index] for key in KEYS})

    def state_dict(self) -> dict[str, Any]:
        """The stored rows, the write position and the capacity."""
        return {
            "capacity": self.capacity,
            "size": self.size,
            "position": self.position,
            "rows": {key: self.storage[key][: self.size].clone() for key in KEYS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(
                f"replay checkpoint has capacity {state['capacity']}, this buffer "
                f"{self.capacity}; resume with the same replay capacity"
            )
        self.size, self.position = int(state["size"]), int(state["position"])
        for key in KEYS:
            self.storage[key][: self.size] = state["rows"][key].to(self.device)


def concatenate(batches: Sequence[Batch]) -> Batch:
    """Rows of several batches as one batch, in order."""
    return Batch(**{key: torch.cat([getattr(batch, key) for batch in batches]) for key in KEYS})


class MixedSampler:
    """Minibatches with a fixed share of online rows: ``round(online_fraction * batch)``."""

    def __init__(
        self, offline: OfflineBuffer | None, online: ReplayBuffer, online_fraction: float
    ) -> None:
        if not 0.0 <= online_fraction <= 1.0:
            raise ValueError(f"online_fraction must be in [0, 1], got {online_fraction}")
        if offline is None and online_fraction < 1.0:
            raise ValueError("without a dataset every row is online; set online_fraction to 1")
        self.offline, self.online, self.online_fraction = offline, online, online_fraction

    def online_rows(self, batch_size: int) -> int:
        """How many of ``batch_size`` rows come from the replay buffer now (all offline while
        it is empty)."""
        if self.online.size == 0:
            return 0
        return round(self.online_fraction * batch_size)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        online = self.online_rows(batch_size)
        if online == batch_size or self.offline is None:
            return self.online.sample(batch_size, generator)
        if online == 0:
            return self.offline.sample(batch_size, generator)
        return concatenate(
            [
                self.offline.sample(batch_size - online, generator),
                self.online.sample(online, generator),
            ]
        )


class EnvironmentCollector:
    """Steps the task's vector envs with an actor into a replay buffer; tracks costs spent."""

    def __init__(
        self,
        task: TaskSpec,
        num_envs: int,
        seed: int,
        device: torch.device,
        scheduled_episodes: int = 1_000_000,
    ) -> None:
        self.task, self.num_envs, self.seed, self.device = task, num_envs, seed, device
        self.scheduled_episodes = scheduled_episodes
        self.episodes: list[EpisodeRecord] = []
        self.cumulative_cost = 0.0
        self.env_steps = 0
        self._open(first_seed=seed)

    def _open(self, first_seed: int) -> None:
        seeds = list(range(first_seed, first_seed + self.scheduled_episodes))
        self.envs = make_vector_env(self.task, seeds, self.num_envs)
        self.next_seed = first_seed + self.scheduled_episodes
        self.observations, _ = self.envs.reset()

    @torch.no_grad()
    def collect(
        self,
        actor: SquashedGaussianActor,
        steps: int,
        replay: ReplayBuffer,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
    ) -> list[EpisodeRecord]:
        """``steps`` vector steps (``steps * num_envs`` transitions) with ``actor``'s sampled
        actions (noise from ``generator``) or its deterministic ones; returns the episodes that
        finished."""
        finished: list[EpisodeRecord] = []
        for _ in range(steps):
            observations = torch.as_tensor(
                self.observations, dtype=torch.float32, device=self.device
            )
            mean, log_std = actor.distribution(observations)
            if not deterministic:
                noise = torch.randn(mean.shape, generator=generator).to(self.device)
                mean = mean + log_std.exp() * noise
            unit_actions = torch.tanh(mean)
            actions = actor.scale(unit_actions).cpu().numpy()
            next_observations, rewards, terminated, truncated, infos = self.envs.step(actions)
            done = terminated | truncated
            costs = step_costs(infos, done)
            stored_next = np.array(next_observations, dtype=np.float32, copy=True)
            for index in np.flatnonzero(done):
                stored_next[index] = infos["final_observation"][index]
            replay.add(
                self.observations,
                unit_actions,
                rewards,
                costs,
                stored_next,
                terminated.astype(np.float32),
            )
            self.cumulative_cost += float(costs.sum())
            self.env_steps += self.num_envs
            finished += finished_episodes(infos, done)
            self.observations = next_observations
        self.episodes += finished
        return finished

    def state_dict(self) -> dict[str, Any]:
        """Counters and finished episodes (the environments restart on load)."""
        return {
            "cumulative_cost": self.cumulative_cost,
            "env_steps": self.env_steps,
            "episodes": [
                (r.seed, r.episode_return, r.episode_cost, r.length, r.terminated)
                for r in self.episodes
            ],
            "next_seed": self.next_seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cumulative_cost = float(state["cumulative_cost"])
        self.env_steps = int(state["env_steps"])
        self.episodes = [EpisodeRecord(*row) for row in state["episodes"]]
        self.close()
        self._open(first_seed=int(state["next_seed"]))

    def close(self) -> None:
        self.envs.close()
