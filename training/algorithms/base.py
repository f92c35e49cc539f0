"""What every algorithm shares: the training context, the Algorithm protocol, small helpers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from safepolicy.datasets import Dataset
from safepolicy.tasks import TaskSpec
from safepolicy.training.data import OfflineBuffer
from safepolicy.training.networks import (
    CriticEnsemble,
    ObservationNormalizer,
    SquashedGaussianActor,
    ValueNetwork,
)

Module = TypeVar("Module", bound=nn.Module)
Logs = Mapping[str, "float | torch.Tensor"]


@dataclass
class TrainingContext:
    """The problem an algorithm is given: data, dimensions, budget, device and randomness."""

    buffer: OfflineBuffer | None  # None: a run without a dataset (online algorithms)
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
    # hidden sizes per network role ("actor", "critic", "value"); a role not named here uses
    # ``hidden_sizes``
    network_sizes: dict[str, list[int]] = field(default_factory=dict)

    # observation statistics when there is no dataset (e.g. measured in the environment);
    # None with no dataset: identity normalisation
    observation_statistics: tuple[torch.Tensor, torch.Tensor] | None = None
    # the task whose environment an online algorithm steps (None in toy contexts), and the
    # factor rewards are multiplied by before learning (online replay applies it on add)
    task: TaskSpec | None = None
    reward_scale: float = 1.0

    @property
    def offline(self) -> OfflineBuffer:
        """The dataset's buffer; a clear error for an offline algorithm run without data."""
        if self.buffer is None:
            raise ValueError(
                "this algorithm learns from a dataset but the run has none; pass --dataset"
            )
        return self.buffer

    def obs_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) for every normaliser: the dataset's, else the given ones, else identity."""
        if self.buffer is not None:
            return self.buffer.obs_mean.cpu(), self.buffer.obs_std.cpu()
        if self.observation_statistics is not None:
            mean, std = self.observation_statistics
            return mean.cpu(), std.cpu()
        return torch.zeros(self.obs_dim), torch.ones(self.obs_dim)

    def sizes_for(self, role: str) -> list[int]:
        """Hidden layer widths of the ``role`` network (its own, else the run's default)."""
        return list(self.network_sizes.get(role) or self.hidden_sizes)

    def new_actor(self, hidden_sizes: Sequence[int] | None = None) -> SquashedGaussianActor:
        """A squashed Gaussian actor with the dataset's observation statistics."""
        actor = SquashedGaussianActor(
            self.obs_dim,
            self.action_dim,
            hidden_sizes or self.sizes_for("actor"),
            self.action_low,
            self.action_high,
        )
        return self.place(actor)

    def new_critics(
        self, groups: int | Mapping[str, int], hidden_sizes: Sequence[int] | None = None
    ) -> CriticEnsemble:
        """Q networks as one batched ensemble at the run's precision; ``groups`` is a member
        count or named groups of any sizes, e.g. ``{"reward": 2, "cost": 5}``."""
        critics = CriticEnsemble(
            self.obs_dim,
            self.action_dim,
            groups,
            hidden_sizes or self.sizes_for("critic"),
            self.precision,
        )
        return self.place(critics)

    def new_value(
        self,
        outputs: int,
        hidden_sizes: Sequence[int] | None = None,
    ) -> ValueNetwork:
        """A state-value network with ``outputs`` heads."""
        return self.place(
            ValueNetwork(self.obs_dim, outputs, hidden_sizes or self.sizes_for("value"))
        )

    def place(self, module: Module) -> Module:
        """Any network on the training device, every ``ObservationNormalizer`` inside it set
        to the data's observation statistics (a diffusion or CVAE model goes through here too).
        """
        mean, std = self.obs_statistics()
        for part in module.modules():
            if isinstance(part, ObservationNormalizer):
                part.set_statistics(mean, std)
        return module.to(self.device)


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
    """``state_dict()`` of each named attribute of ``owner``: any ``nn.Module``, optimiser,
    multiplier or other object with ``state_dict``/``load_state_dict``."""
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
