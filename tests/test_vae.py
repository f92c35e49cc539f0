"""The conditional VAE that marks out-of-distribution actions (training.vae)."""

from __future__ import annotations

import pytest
import torch

from safepolicy.training.vae import ConditionalVAE, elbo_loss, gaussian_kl_to_standard_normal


def toy_data(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D states; the data's action is a narrow function of the state, a = 0.5 tanh(s)."""
    states = torch.randn(count, 2, generator=generator)
    actions = 0.5 * torch.tanh(states) + 0.02 * torch.randn(count, 2, generator=generator)
    return states, actions


def test_kl_is_zero_at_the_prior_and_positive_elsewhere() -> None:
    zeros = torch.zeros(3, 4)
    assert torch.allclose(gaussian_kl_to_standard_normal(zeros, zeros), torch.zeros(3))
    assert (gaussian_kl_to_standard_normal(zeros + 1.0, zeros - 1.0) > 0.0).all()


def test_actions_far_from_the_data_score_higher_after_training() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    vae = ConditionalVAE(state_dim=2, action_dim=2, hidden_sizes=(64, 64))
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    states, actions = toy_data(2048, generator)
    first_loss = None
    for step in range(600):
        index = torch.randint(0, 2048, (256,), generator=generator)
        loss = elbo_loss(vae, states[index], actions[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first_loss = float(loss.detach()) if step == 0 else first_loss
    assert first_loss is not None and float(loss.detach()) < 0.5 * first_loss
    test_states, data_actions = toy_data(512, generator)
    far_actions = -data_actions  # as large as the data's action, but mirrored: far from it
    with torch.no_grad():
        data_score = vae.reconstruction_error(test_states, data_actions)
        far_score = vae.reconstruction_error(test_states, far_actions)
    assert float(far_score.mean()) > 5.0 * float(data_score.mean())
    assert float((far_score > data_score).float().mean()) > 0.9


def test_decoded_actions_stay_in_the_action_box() -> None:
    vae = ConditionalVAE(state_dim=3, action_dim=2, hidden_sizes=(16,), max_action=2.0)
    with torch.no_grad():
        actions = vae.decode(100.0 * torch.randn(64, 3))
    assert actions.shape == (64, 2)
    assert float(actions.abs().max()) <= 2.0


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="state and action sizes"):
        ConditionalVAE(state_dim=0, action_dim=2)
