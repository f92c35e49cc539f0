"""Diffusion behaviour model for DRCORL: a VP-SDE over actions conditioned on states.

The forward process is the variance-preserving SDE of Song et al. (2021) with a linear
beta(t) = beta_min + t * (beta_max - beta_min), beta_min 0.1, beta_max 20, t in [0, 1]:

    a_t = alpha_t * a_0 + sigma_t * eps,
    log alpha_t = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2,
    sigma_t = sqrt(1 - alpha_t^2),
    score(a_t | s, t) = -eps_theta(a_t, t, s) / sigma_t.

The network predicts the noise (the noise-prediction loss of DDPM); DRCORL's policy extraction
uses only its score. `sample` is a deterministic DDIM sampler (first-order DPM-solver, the same
update in the VP parametrisation) over a few uniform steps in t, kept for tests,
diagnostics and the inference-time benchmark.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from safepolicy.training.networks import ObservationNormalizer, mlp


@dataclass(frozen=True)
class VPSchedule:
    """Linear-beta variance-preserving SDE on t in [0, 1]."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log of the mean coefficient alpha_t of a_t given a_0."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Mean coefficient alpha_t."""
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Standard deviation sigma_t = sqrt(1 - alpha_t^2) of a_t given a_0."""
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def perturb(self, clean: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """a_t = alpha_t a_0 + sigma_t eps, with t of shape (batch,)."""
        return self.alpha(t)[:, None] * clean + self.sigma(t)[:, None] * noise


class SinusoidalTimeEmbedding(nn.Module):
    """Fixed sinusoidal features of t in [0, 1] (transformer-style frequencies)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding size must be even, got {dim}")
        frequencies = torch.exp(-math.log(1000.0) * torch.arange(dim // 2) / max(dim // 2 - 1, 1))
        self.register_buffer("frequencies", frequencies * 1000.0)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed t of shape (batch,) into (batch, dim)."""
        frequencies: torch.Tensor = self.frequencies  # type: ignore[assignment]
        angles = t[:, None] * frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class NoisePredictor(nn.Module):
    """eps_theta(a_t, t, s): an MLP over the noisy action, a time embedding and the state.

    The state is normalised inside (the dataset's statistics, set by ``TrainingContext.place``;
    identity until then), like every other network of the training core.
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        hidden_sizes: tuple[int, ...] = (256, 256, 256),
        time_dim: int = 32,
    ) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.normalizer = ObservationNormalizer(state_dim)
        self.time_embedding = SinusoidalTimeEmbedding(time_dim)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, time_dim * 2), nn.Mish(), nn.Linear(time_dim * 2, time_dim)
        )
        self.net = mlp(
            state_dim + action_dim + time_dim, action_dim, hidden_sizes, activation=nn.Mish
        )

    def forward(
        self, noisy_action: torch.Tensor, t: torch.Tensor, state: torch.Tensor
    ) -> torch.Tensor:
        """Predicted noise, shape like noisy_action."""
        features = self.time_mlp(self.time_embedding(t))
        return self.net(torch.cat([noisy_action, features, self.normalizer(state)], dim=-1))


class DiffusionBehaviourModel(nn.Module):
    """Conditional diffusion model of the dataset's actions given states."""

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        hidden_sizes: tuple[int, ...] = (256, 256, 256),
        schedule: VPSchedule | None = None,
        t_min: float = 1e-3,
    ) -> None:
        super().__init__()
        self.schedule = schedule or VPSchedule()
        self.t_min = t_min
        self.action_dim = action_dim
        self.noise_predictor = NoisePredictor(state_dim, action_dim, hidden_sizes)

    def predict_noise(
        self, noisy_action: torch.Tensor, t: torch.Tensor, state: torch.Tensor
    ) -> torch.Tensor:
        """eps_theta(a_t, t, s)."""
        return self.noise_predictor(noisy_action, t, state)

    def score(
        self, noisy_action: torch.Tensor, t: torch.Tensor, state: torch.Tensor
    ) -> torch.Tensor:
        """Score of the perturbed behaviour density: grad_a log p_t(a | s) = -eps / sigma_t."""
        return -self.predict_noise(noisy_action, t, state) / self.schedule.sigma(t)[:, None]

    def sample(
        self,
        state: torch.Tensor,
        steps: int = 10,
        clip: float | None = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw one action per state with `steps` deterministic DDIM steps from t=1 to t_min.

        clip bounds the predicted clean action each step (actions live in [-1, 1]); None for
        unbounded data such as the 2-D test mixture.
        """
        if steps < 1:
            raise ValueError(f"sampling needs at least one step, got {steps}")
        batch = state.shape[0]
        action = torch.randn(batch, self.action_dim, device=state.device, generator=generator)
        times = torch.linspace(1.0, self.t_min, steps + 1, device=state.device)
        for now, later in itertools.pairwise(times):
            t = now.expand(batch)
            noise = self.predict_noise(action, t, state)
            alpha, sigma = self.schedule.alpha(now), self.schedule.sigma(now)
            clean = (action - sigma * noise) / alpha
            if clip is not None:
                clean = clean.clamp(-clip, clip)
                noise = (action - alpha * clean) / sigma
            action = self.schedule.alpha(later) * clean + self.schedule.sigma(later) * noise
        final = (
            action
            - self.schedule.sigma(times[-1])
            * self.predict_noise(action, times[-1].expand(batch), state)
        ) / self.schedule.alpha(times[-1])
        return final.clamp(-clip, clip) if clip is not None else final


def noise_prediction_loss(
    model: DiffusionBehaviourModel,
    state: torch.Tensor,
    action: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DDPM loss: E_{t ~ U[t_min, 1], eps ~ N(0, I)} || eps_theta(a_t, t, s) - eps ||^2.

    ``generator`` (a CPU generator, e.g. the training context's) draws t and eps, so a run is
    replayable from its checkpoint; None uses torch's global generator.
    """
    batch = action.shape[0]
    t = torch.rand(batch, generator=generator).to(action.device) * (1.0 - model.t_min)
    t = t + model.t_min
    noise = torch.randn(action.shape, generator=generator).to(action.device)
    noisy = model.schedule.perturb(action, t, noise)
    return (model.predict_noise(noisy, t, state) - noise).pow(2).sum(-1).mean()
