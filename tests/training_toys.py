"""Small constructed problems for training tests (no environment needed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import Field
from torch.nn import functional as F

from safepolicy.datasets import Dataset
from safepolicy.training.algorithms.base import Logs, TrainingContext, adam
from safepolicy.training.algorithms.td3bc import TD3BCConfig, TD3BCOracle
from safepolicy.training.config import Config, param
from safepolicy.training.data import OfflineBuffer
from safepolicy.training.loop import ScalarLog
from safepolicy.training.multipliers import FixedMultiplier
from safepolicy.training.networks import SquashedGaussianActor
from safepolicy.training.registry import AlgorithmSpec, Stage

TOY_EPISODE_LENGTH = 10


def at_log_row(monkeypatch: pytest.MonkeyPatch, call: int, action: Callable[[], None]) -> None:
    """Run ``action`` inside the loop's ``call``-th ``ScalarLog.add`` (1-based), once.

    Every update logs through ``ScalarLog.add``, so this lands a kill (``interrupt``) or an
    operator's interference between two updates at a known step. Later calls pass through, so a
    resumed run in the same test is not affected.
    """
    original_add = ScalarLog.add
    calls = 0

    def add(self: ScalarLog, values: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == call:
            action()
        original_add(self, values)

    monkeypatch.setattr(ScalarLog, "add", add)


def interrupt() -> None:
    """What Ctrl-C or a SIGTERM turned into KeyboardInterrupt does to the loop."""
    raise KeyboardInterrupt


def speed_cost_dataset(transitions: int = 4000, seed: int = 0) -> Dataset:
    """One action 'speed' a in [-1, 1]: reward a, cost (a + 1) / 2; behaviour uniform.

    Going faster always pays more and costs more, so an unconstrained learner drives a -> 1
    (cost rate about 1 per step), while a budget of b per step requires a <= 2b - 1.
    Episodes never terminate (they time out), so values bootstrap like a long task's.
    """
    rng = np.random.default_rng(seed)
    observations = rng.uniform(-1, 1, size=(transitions, 2)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(transitions, 1)).astype(np.float32)
    timeouts = np.zeros(transitions, dtype=bool)
    timeouts[TOY_EPISODE_LENGTH - 1 :: TOY_EPISODE_LENGTH] = True
    return Dataset(
        observations=observations,
        next_observations=rng.uniform(-1, 1, size=(transitions, 2)).astype(np.float32),
        actions=actions,
        rewards=actions[:, 0].copy(),
        costs=(actions[:, 0] + 1.0) / 2.0,
        terminals=np.zeros(transitions, dtype=bool),
        timeouts=timeouts,
        attrs={"task": "toy-speed"},
    )


def toy_context(
    dataset: Dataset,
    cost_limit: float,
    total_steps: int,
    seed: int = 0,
    gamma: float = 0.9,
    hidden_sizes: tuple[int, ...] = (64, 64),
    batch_size: int = 128,
    reward_scale: float = 1.0,
) -> TrainingContext:
    torch.manual_seed(seed)
    buffer = OfflineBuffer(
        dataset, np.array([-1.0]), np.array([1.0]), torch.device("cpu"), reward_scale=reward_scale
    )
    return TrainingContext(
        buffer=buffer,
        obs_dim=2,
        action_dim=1,
        action_low=[-1.0],
        action_high=[1.0],
        hidden_sizes=list(hidden_sizes),
        gamma=gamma,
        batch_size=batch_size,
        cost_limit=cost_limit,
        episode_length=TOY_EPISODE_LENGTH,
        total_steps=total_steps,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        seed=seed,
    )


def episode_cost_of(actor: torch.nn.Module, dataset: Dataset) -> float:
    """The toy's exact episode cost of the deterministic actor, averaged over dataset states."""
    with torch.no_grad():
        actions = actor(torch.as_tensor(dataset.observations))[:, 0].numpy()
    return float(((actions + 1.0) / 2.0).mean() * TOY_EPISODE_LENGTH)


class TwoStageToyConfig(Config):
    """A two-stage toy: clone the behaviour, then TD3+BC-Lag from the clone."""

    behaviour_steps: int = param(30, "behaviour-cloning updates", gt=0)
    policy_steps: int = param(30, "TD3+BC updates started from the clone", gt=0)
    actor_lr: float = param(1e-3, "behaviour-cloning learning rate", gt=0.0)
    lagrange_multiplier: float = param(1.0, "fixed lambda of the policy stage", ge=0.0)
    td3bc: TD3BCConfig = Field(default_factory=TD3BCConfig)


class TwoStageToy:
    """Stage ``behaviour`` fits a behaviour actor; ``policy`` starts TD3+BC's actor from it."""

    def __init__(self, config: TwoStageToyConfig, context: TrainingContext) -> None:
        self.config = config
        self.context = context
        self.behaviour = context.new_actor()
        self.behaviour_optimizer = adam(self.behaviour.parameters(), lr=config.actor_lr)
        self.multiplier = FixedMultiplier(config.lagrange_multiplier)
        self.oracle = TD3BCOracle(config.td3bc, context, "episode")

    @property
    def actor(self) -> SquashedGaussianActor:
        return self.oracle.actor

    def start_stage(self, stage: str) -> None:
        if stage == "policy":
            self.oracle.actor.load_state_dict(self.behaviour.state_dict())
            self.oracle.target_actor.load_state_dict(self.behaviour.state_dict())

    def step(self, stage: str) -> Logs:
        if stage == "behaviour":
            batch = self.context.offline.sample(self.context.batch_size, self.context.generator)
            mean, _ = self.behaviour.distribution(batch.observations)
            loss = F.mse_loss(torch.tanh(mean), batch.actions)  # buffer actions are in [-1, 1]
            self.behaviour_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.behaviour_optimizer.step()
            return {"loss/behaviour": loss.detach()}
        return self.oracle.step(self.multiplier.value)

    def state_dict(self) -> dict[str, Any]:
        return {
            "behaviour": self.behaviour.state_dict(),
            "behaviour_optimizer": self.behaviour_optimizer.state_dict(),
            "oracle": self.oracle.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.behaviour.load_state_dict(state["behaviour"])
        self.behaviour_optimizer.load_state_dict(state["behaviour_optimizer"])
        self.oracle.load_state_dict(state["oracle"])


TWO_STAGE_SPEC = AlgorithmSpec(
    name="toy-two-stage",
    config_type=TwoStageToyConfig,
    build=TwoStageToy,
    summary="test toy: behaviour cloning, then TD3+BC-Lag from the clone",
    stages=lambda config, run: [
        Stage("behaviour", config.behaviour_steps),
        Stage("policy", config.policy_steps),
    ],
)
