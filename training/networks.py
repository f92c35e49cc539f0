"""Networks shared by every algorithm: MLPs, the squashed Gaussian actor, critic ensembles.

The squashed Gaussian actor is the one policy form that every algorithm here ends in and that
the exporter turns into ONNX. It takes *raw* observations: normalisation statistics computed
from the dataset are buffers inside the module, so a checkpoint carries them and an export
cannot lose them. Actions are ``low + (tanh(u) + 1) / 2 * (high - low)`` with
``u ~ N(mean(obs), exp(log_std(obs)))``.

Critic ensembles hold N critics' weights as stacked tensors and evaluate all of them with one
batched matmul per layer (``torch.baddbmm``), instead of N modules in a Python loop: on a 2-core
CPU every update counts (platform-facts.md measured about 1.2x from this fusion alone).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

PRECISIONS = ("fp32", "bf16-mixed")
LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0


def mlp(
    in_dim: int, out_dim: int, hidden_sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    """A plain MLP: Linear-activation blocks, then a linear output layer."""
    layers: list[nn.Module] = []
    last = in_dim
    for size in hidden_sizes:
        layers += [nn.Linear(last, size), activation()]
        last = size
    layers.append(nn.Linear(last, out_dim))
    return nn.Sequential(*layers)


class ObservationNormalizer(nn.Module):
    """``(obs - mean) / std`` with the dataset's statistics held as buffers."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(obs_dim))
        self.register_buffer("std", torch.ones(obs_dim))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return (observations - self.mean) / self.std


class SquashedGaussianActor(nn.Module):
    """Gaussian policy squashed by tanh and scaled to the environment's action bounds."""

    action_low: torch.Tensor
    action_high: torch.Tensor

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (256, 256),
        action_low: Sequence[float] | None = None,
        action_high: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.hidden_sizes = tuple(hidden_sizes)
        self.normalizer = ObservationNormalizer(obs_dim)
        self.trunk = mlp(obs_dim, 2 * action_dim, hidden_sizes)
        low = torch.full((action_dim,), -1.0) if action_low is None else torch.tensor(action_low)
        high = torch.full((action_dim,), 1.0) if action_high is None else torch.tensor(action_high)
        self.register_buffer("action_low", low.float())
        self.register_buffer("action_high", high.float())

    def config(self) -> dict[str, object]:
        """Constructor arguments, enough to rebuild the module before loading its state."""
        return {
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "hidden_sizes": list(self.hidden_sizes),
            "action_low": self.action_low.tolist(),
            "action_high": self.action_high.tolist(),
        }

    @torch.no_grad()
    def set_constant_log_std(self, log_std: float) -> None:
        """Make the log-std head output ``log_std`` for every observation (zero weights, that
        bias). An algorithm that trains with a fixed std and never reads the head leaves it
        there (no gradient reaches those rows), so the exported policy carries that std."""
        last = [module for module in self.trunk.modules() if isinstance(module, nn.Linear)][-1]
        last.weight[self.action_dim :].zero_()
        last.bias[self.action_dim :].fill_(log_std)

    def distribution(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-squash mean and clamped log-std for raw observations."""
        mean, log_std = self.trunk(self.normalizer(observations)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def scale(self, squashed: torch.Tensor) -> torch.Tensor:
        """Map [-1, 1] to [low, high]."""
        return self.action_low + (squashed + 1.0) * 0.5 * (self.action_high - self.action_low)

    def unscale(self, actions: torch.Tensor) -> torch.Tensor:
        """Map [low, high] to [-1, 1]."""
        return 2.0 * (actions - self.action_low) / (self.action_high - self.action_low) - 1.0

    def deterministic_action(self, observations: torch.Tensor) -> torch.Tensor:
        mean, _ = self.distribution(observations)
        return self.scale(torch.tanh(mean))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """The deterministic action (what the exported graph's ``action`` output computes)."""
        return self.deterministic_action(observations)

    def sample(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action and its log-probability (tanh change of variables)."""
        mean, log_std = self.distribution(observations)
        pre_squash = mean + log_std.exp() * torch.randn_like(mean)
        log_prob = squashed_gaussian_log_prob(pre_squash, mean, log_std)
        return self.scale(torch.tanh(pre_squash)), log_prob

    def log_prob(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Log-likelihood of (dataset) actions, used for behaviour cloning."""
        mean, log_std = self.distribution(observations)
        squashed = self.unscale(actions).clamp(-1 + 1e-6, 1 - 1e-6)
        return squashed_gaussian_log_prob(torch.atanh(squashed), mean, log_std)


def squashed_gaussian_log_prob(
    pre_squash: torch.Tensor,
    mean: torch.Tensor,
    log_std: torch.Tensor,
) -> torch.Tensor:
    """log pi(tanh(u)) for u ~ N(mean, exp(log_std)), summed over action dimensions."""
    gaussian = -0.5 * (((pre_squash - mean) / log_std.exp()) ** 2) - log_std
    gaussian = gaussian - 0.5 * math.log(2 * math.pi)
    # log |d tanh(u) / du| = log(1 - tanh(u)^2), written stably; the affine scaling to the
    # bounds adds a constant that does not affect any gradient, so it is left out.
    jacobian = 2.0 * (math.log(2.0) - pre_squash - F.softplus(-2.0 * pre_squash))
    return (gaussian - jacobian).sum(dim=-1)


class EnsembleLinear(nn.Module):
    """N independent linear layers applied as one batched matmul: [N, B, in] -> [N, B, out]."""

    def __init__(self, ensemble_size: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(ensemble_size, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default initialisation, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(
        self,
        inputs: torch.Tensor,
        members: list[int] | slice | None = None,
    ) -> torch.Tensor:
        if members is None:
            return torch.baddbmm(self.bias, inputs, self.weight)
        return torch.baddbmm(self.bias[members], inputs, self.weight[members])


class CriticEnsemble(nn.Module):
    """N Q(s, a) critics in stacked weights; returns [N, batch] from one batched pass.

    The members may form named groups of any sizes, e.g. ``{"reward": 2, "cost": 5}``: the
    groups are contiguous in that order (members 0-1 reward, 2-6 cost), share the one fused
    pass, and are read back with ``group(q, name)`` / ``members(name)``; ``group_sizes`` is what
    the grouped losses (training/losses.py) take. An int ``ensemble_size`` is one group
    ``"q"``.

    ``precision="bf16-mixed"`` runs the hidden layers' matmuls in bfloat16 under autocast
    (weights, gradients and optimiser state stay float32; the output layer and every loss stay
    float32, so Q-values keep full precision). On CPUs with AVX512-BF16 this is where most of
    an update's floating-point work goes, at several times the float32 rate.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        ensemble_size: int | Mapping[str, int] = 2,
        hidden_sizes: Sequence[int] = (256, 256),
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        groups = {"q": ensemble_size} if isinstance(ensemble_size, int) else dict(ensemble_size)
        if not groups or any(size < 1 for size in groups.values()):
            raise ValueError(f"critic groups need at least one member each, got {groups}")
        self.groups = groups
        self.ensemble_size = sum(groups.values())
        starts = itertools.accumulate(groups.values(), initial=0)
        self.group_starts = dict(zip(groups, starts, strict=False))
        self.mixed_bf16 = precision == "bf16-mixed"
        self.normalizer = ObservationNormalizer(obs_dim)
        sizes = [obs_dim + action_dim, *hidden_sizes, 1]
        self.layers = nn.ModuleList(
            EnsembleLinear(self.ensemble_size, a, b) for a, b in itertools.pairwise(sizes)
        )

    def forward(
        self, observations: torch.Tensor, actions: torch.Tensor, members: list[int] | None = None
    ) -> torch.Tensor:
        """Q-values [len(members) or N, batch]; ``members`` evaluates only those critics."""
        inputs = torch.cat([self.normalizer(observations), actions], dim=-1)
        count = self.ensemble_size if members is None else len(members)
        hidden = inputs.unsqueeze(0).expand(count, -1, -1)
        # a run of consecutive members (a group) is a view of the stacked weights: no gather
        # of the weights forward, no scatter of their gradients backward
        chosen: list[int] | slice | None = members
        if members and members == list(range(members[0], members[0] + len(members))):
            chosen = slice(members[0], members[0] + len(members))
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=self.mixed_bf16):
            for layer in self.layers[:-1]:
                hidden = F.relu(layer(hidden, chosen))
        return self.layers[-1](hidden.float(), chosen).squeeze(-1)

    @property
    def group_sizes(self) -> list[int]:
        """Member counts of the groups, in order (``sizes`` of the grouped losses)."""
        return list(self.groups.values())

    def members(self, name: str) -> list[int]:
        """Member indices of group ``name``."""
        if name not in self.groups:
            raise KeyError(f"no critic group {name!r}; groups are {', '.join(self.groups)}")
        start = self.group_starts[name]
        return list(range(start, start + self.groups[name]))

    def group(self, q_values: torch.Tensor, name: str) -> torch.Tensor:
        """Rows of group ``name`` from a full ensemble output [N, batch]."""
        members = self.members(name)
        return q_values[members[0] : members[-1] + 1]


class ValueNetwork(nn.Module):
    """V(s) heads for IQL-style expectile value learning: [batch, outputs]."""

    def __init__(
        self,
        obs_dim: int,
        outputs: int = 1,
        hidden_sizes: Sequence[int] = (256, 256),
    ) -> None:
        super().__init__()
        self.normalizer = ObservationNormalizer(obs_dim)
        self.trunk = mlp(obs_dim, outputs, hidden_sizes)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.normalizer(observations))
