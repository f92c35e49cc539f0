"""What every algorithm shares: the training context, the Algorithm protocol, small helpers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from safepolicy.datasets import Dataset
from training.data import OfflineBuffer
from training.networks import CriticEnsemble, SquashedGaussianActor, ValueNetwork

Network = TypeVar("Network", SquashedGaussianActor, CriticEnsemble, ValueNetwork)
Logs = Mapping[str, "float | torch.Tensor"]


@dataclass
class TrainingContext:
    """The problem an algorithm is given: data, dimensions, budget, device and randomness."""

    buffer: OfflineBuffer
    obs_dim: int
    action_dim: int
    action_low: list[float]
    action_high: list[float]
    hidden_sizes: list[int]
    gamma: float
    batch_size: int
    cost_limit: float
    episode_length: int
    total_steps: int
    device: torch.device
    generator: torch.Generator  # CPU generator: minibatch indices and noise, replayable
    seed: int
    precision: str = "fp32"
    dataset: Dataset | None = None  # the file the buffer was built from (BC-Safe filters it)

    def new_actor(self) -> SquashedGaussianActor:
        """A squashed Gaussian actor with the dataset's observation statistics."""
        actor = SquashedGaussianActor(self.obs_dim, self.action_dim, self.hidden_sizes,
                                      self.action_low, self.action_high)
        return self._with_statistics(actor)

    def new_critics(self, ensemble_size: int) -> CriticEnsemble:
        """``ensemble_size`` Q networks as one batched ensemble, at the run's precision."""
        critics = CriticEnsemble(self.obs_dim, self.action_dim, ensemble_size,
                                 self.hidden_sizes, self.precision)
        return self._with_statistics(critics)

    def new_value(self, outputs: int) -> ValueNetwork:
        """A state-value network with ``outputs`` heads."""
        return self._with_statistics(ValueNetwork(self.obs_dim, outputs, self.hidden_sizes))

    def _with_statistics(self, network: Network) -> Network:
        """``network`` with the dataset's observation statistics, on the training device."""
        network.normalizer.set_statistics(self.buffer.obs_mean.cpu(), self.buffer.obs_std.cpu())
        return network.to(self.device)


class Algorithm(Protocol):
    """One algorithm as the loop drives it, stage by stage (training/registry.py).

    ``start_stage(name)`` is called once when a stage begins (also when a resumed run stands at a
    stage's first step, never in the middle of one): whatever it sets up must be in
    ``state_dict``. ``step(name)`` does one update of that stage and returns its log values
    (device tensors or floats; the loop reads them back only when it writes a log row).
    """

    @property
    def actor(self) -> SquashedGaussianActor: ...

    def start_stage(self, stage: str) -> None: ...

    def step(self, stage: str) -> Logs: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def adam(parameters: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel (one pass over all parameters; CPU and CUDA in torch >= 2.4)."""
    return torch.optim.Adam(parameters, lr=lr, fused=True)


def component_states(owner: object, names: tuple[str, ...]) -> dict[str, Any]:
    """``state_dict()`` of each named module or optimiser of ``owner``."""
    return {name: getattr(owner, name).state_dict() for name in names}


def load_component_states(owner: object, names: tuple[str, ...], state: dict[str, Any]) -> None:
    """Inverse of ``component_states``."""
    for name in names:
        getattr(owner, name).load_state_dict(state[name])


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging ``target <- (1 - tau) target + tau source`` (parameters only)."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def per_step_budget(cost_limit: float, gamma: float, episode_length: int, mode: str) -> float:
    """The cost budget per step b in the Lagrangian reward r - lambda * (c - b).

    ``"paper"``: b = (1 - gamma) * kappa, so that the discounted sum of b over an infinite horizon
    is kappa. ``"episode"``: b = kappa / T, the average per-step cost an episode of DSRL's length T
    may incur; DSRL's limit is on the undiscounted episode cost, and the two agree only when
    T = 1 / (1 - gamma).
    """
    if mode == "paper":
        return (1.0 - gamma) * cost_limit
    if mode == "episode":
        return cost_limit / episode_length
    raise ValueError(f"per_step_budget must be 'paper' or 'episode', got {mode!r}")


def lagrangian_reward(rewards: torch.Tensor, costs: torch.Tensor, lagrange_multiplier: float,
                      budget_per_step: float) -> torch.Tensor:
    """O3SRL's modified reward r' = r - lambda * (c - b)."""
    return rewards - lagrange_multiplier * (costs - budget_per_step)
