"""Conditional VAE over dataset actions given states, as CPQ (Xu et al. 2022) uses it.

The encoder maps (s, a) to a diagonal Gaussian over a latent z; the decoder maps (s, z) back to
an action in the action box. Trained on the ELBO (reconstruction MSE + beta * KL to N(0, I)),
its reconstruction error is small on actions like the data's and large on actions far from
them, which is the out-of-distribution score CPQ pushes the cost Q up on.

Choices, following the public OSRL CPQ/BCQ-Lag code (no departure from the CPQ paper, which
does not fix them): latent size 2 x action size, log std clamped to [-4, 15], beta 0.5, and
prior samples for ``sample`` clipped to [-0.5, 0.5] as in BCQ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from safepolicy.training.networks import mlp


def gaussian_kl_to_standard_normal(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_std)^2) || N(0, I)) summed over the latent, one value per row."""
    return 0.5 * (mean.pow(2) + torch.exp(2.0 * log_std) - 1.0 - 2.0 * log_std).sum(-1)


class ConditionalVAE(nn.Module):
    """p(a | s) as a conditional VAE; actions live in [-max_action, max_action]."""

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (750, 750),
        latent_dim: int | None = None,
        max_action: float = 1.0,
    ) -> None:
        super().__init__()
        if state_dim < 1 or action_dim < 1:
            raise ValueError(
                f"the VAE needs state and action sizes >= 1, got {state_dim}, {action_dim}"
            )
        self.action_dim = action_dim
        self.latent_dim = latent_dim or 2 * action_dim
        self.max_action = max_action
        self.encoder = mlp(state_dim + action_dim, 2 * self.latent_dim, hidden_sizes)
        self.decoder = mlp(state_dim + self.latent_dim, action_dim, hidden_sizes)

    def encode(
        self, states: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clamped log std of q(z | s, a)."""
        mean, log_std = self.encoder(torch.cat([states, actions], -1)).chunk(2, -1)
        return mean, log_std.clamp(-4.0, 15.0)

    def decode(self, states: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        """An action for each state; without latents, from clipped prior samples."""
        if latents is None:
            latents = torch.randn(
                states.shape[0], self.latent_dim, device=states.device, dtype=states.dtype
            ).clamp(-0.5, 0.5)
        return self.max_action * torch.tanh(self.decoder(torch.cat([states, latents], -1)))

    def forward(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction through a reparameterised latent, with the posterior's mean, log std.

        ``noise`` (standard normal, [batch, latent]) lets a caller draw it from its own
        generator (replayable runs); without it, it comes from torch's global generator.
        """
        mean, log_std = self.encode(states, actions)
        noise = torch.randn_like(mean) if noise is None else noise
        latents = mean + torch.exp(log_std) * noise
        return self.decode(states, latents), mean, log_std

    def reconstruction_error(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """OOD score: squared error of the reconstruction through the posterior mean, per row."""
        mean, _ = self.encode(states, actions)
        return (self.decode(states, mean) - actions).pow(2).sum(-1)


def elbo_loss(
    vae: ConditionalVAE,
    states: torch.Tensor,
    actions: torch.Tensor,
    kl_weight: float = 0.5,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Negative ELBO: mean reconstruction MSE + kl_weight * mean KL to the prior (``noise``:
    the reparameterisation's standard normal draws, as in ``ConditionalVAE.forward``)."""
    reconstruction, mean, log_std = vae(states, actions, noise)
    reconstruction_loss = (reconstruction - actions).pow(2).sum(-1).mean()
    return reconstruction_loss + kl_weight * gaussian_kl_to_standard_normal(mean, log_std).mean()
