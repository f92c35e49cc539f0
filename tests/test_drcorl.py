"""DRCORL pieces on tiny problems: the diffusion behaviour model, gradient manipulation, gating."""
from __future__ import annotations

import pytest
import torch

from safepolicy.training.diffusion import DiffusionBehaviourModel, VPSchedule, noise_prediction_loss
from safepolicy.training.gradients import (
    SafeStep,
    SlackBands,
    assign_flat_gradient,
    choose_step,
    flat_gradient,
    manipulate_gradients,
)

MODES = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [2.0, -2.0], [-2.0, -2.0]])


def fit(model: DiffusionBehaviourModel, draw, steps: int, lr: float = 2e-3) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        state, action = draw()
        loss = noise_prediction_loss(model, state, action)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def test_schedule_is_variance_preserving_and_matches_the_linear_beta_integral() -> None:
    schedule = VPSchedule()
    t = torch.linspace(0.01, 1.0, 50)
    assert torch.allclose(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, torch.ones_like(t))
    integral = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2
    assert torch.allclose(schedule.alpha(t), torch.exp(-0.5 * integral))
    assert schedule.sigma(torch.tensor([1.0])).item() > 0.99


@pytest.mark.slow
def test_diffusion_fits_a_two_dimensional_mixture_and_samples_land_on_its_modes() -> None:
    torch.manual_seed(0)
    model = DiffusionBehaviourModel(state_dim=1, action_dim=2, hidden_sizes=(64, 64))

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        which = torch.randint(0, 4, (128,))
        return torch.zeros(128, 1), MODES[which] + 0.1 * torch.randn(128, 2)

    fit(model, draw, steps=800)
    with torch.no_grad():
        samples = model.sample(torch.zeros(1000, 1), steps=20, clip=None)
    distance, nearest = torch.cdist(samples, MODES).min(dim=1)
    assert (distance < 0.5).float().mean() > 0.7
    assert distance.median() < 0.3
    share = torch.bincount(nearest, minlength=4).float() / 1000
    assert share.min() > 0.1, f"a mode is missed: shares {share.tolist()}"


@pytest.mark.slow
def test_score_on_a_known_gaussian_matches_the_analytic_score() -> None:
    torch.manual_seed(1)
    mean, std = torch.tensor([0.5, -0.3]), 0.3
    model = DiffusionBehaviourModel(state_dim=1, action_dim=2, hidden_sizes=(64, 64))
    fit(model, lambda: (torch.zeros(128, 1), mean + std * torch.randn(128, 2)), steps=600)
    schedule = model.schedule
    t = torch.rand(2000) * 0.8 + 0.1
    alpha, sigma = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    variance = alpha**2 * std**2 + sigma**2
    noisy = alpha * mean + variance.sqrt() * torch.randn(2000, 2)
    analytic = -(noisy - alpha * mean) / variance
    with torch.no_grad():
        learned = model.score(noisy, t, torch.zeros(2000, 1))
    relative = (learned - analytic).norm(dim=1) / analytic.norm(dim=1).clamp_min(1e-3)
    assert relative.median() < 0.1
    # an untrained model is far from it, so the bound above is not vacuous
    with torch.no_grad():
        untrained = DiffusionBehaviourModel(1, 2, (64, 64)).score(noisy, t, torch.zeros(2000, 1))
    assert ((untrained - analytic).norm(dim=1) / analytic.norm(dim=1)).median() > 0.3


def test_sampler_refuses_zero_steps() -> None:
    with pytest.raises(ValueError, match="at least one step"):
        DiffusionBehaviourModel(1, 2, (8,)).sample(torch.zeros(3, 1), steps=0)


def test_aligned_gradients_are_averaged() -> None:
    reward, cost = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    assert torch.equal(manipulate_gradients(reward, cost), torch.tensor([1.0, 0.5, 1.0]))
    orthogonal = torch.tensor([0.0, 3.0, 0.0])
    assert torch.equal(manipulate_gradients(torch.tensor([1.0, 0.0, 0.0]), orthogonal),
                       torch.tensor([0.5, 1.5, 0.0]))


def test_conflicting_gradients_are_each_projected_onto_the_normal_plane_of_the_other() -> None:
    reward, cost = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # reward - (-1 / 2) cost = (0.5, 0.5); cost - (-1 / 1) reward = (0, 1); half their sum
    combined = manipulate_gradients(reward, cost)
    assert torch.allclose(combined, torch.tensor([0.25, 0.75]))
    reward_projected = reward + 0.5 * cost
    cost_projected = cost + reward
    assert reward_projected.dot(cost).abs() < 1e-6 and cost_projected.dot(reward).abs() < 1e-6
    # the combination no longer increases either loss to first order
    assert combined.dot(reward) >= 0 and combined.dot(cost) >= 0


def test_gate_picks_the_branch_at_the_band_edges() -> None:
    limit, upper, lower = 10.0, 0.2, 0.2
    assert choose_step(7.99, limit, upper, lower) is SafeStep.REWARD
    assert choose_step(8.0, limit, upper, lower) is SafeStep.MANIPULATED
    assert choose_step(10.0, limit, upper, lower) is SafeStep.MANIPULATED
    assert choose_step(12.0, limit, upper, lower) is SafeStep.MANIPULATED
    assert choose_step(12.01, limit, upper, lower) is SafeStep.COST
    # with the bands decayed to 0 the gate is a plain threshold at the limit
    assert choose_step(9.99, limit, 0.0, 0.0) is SafeStep.REWARD
    assert choose_step(10.01, limit, 0.0, 0.0) is SafeStep.COST
    assert choose_step(0.0, 0.0, 0.2, 0.2) is SafeStep.MANIPULATED
    assert choose_step(0.5, 0.0, 0.2, 0.2) is SafeStep.COST


def test_slack_bands_decay_linearly_to_zero() -> None:
    bands = SlackBands(start_upper=0.2, start_lower=0.1, decay_steps=100)
    assert bands.at(0) == (0.2, 0.1)
    assert bands.at(50) == pytest.approx((0.1, 0.05))
    assert bands.at(100) == (0.0, 0.0)
    assert bands.at(150) == (0.0, 0.0)


def test_flat_gradient_round_trips_into_parameter_grads() -> None:
    layer = torch.nn.Linear(3, 2)
    loss = layer(torch.ones(4, 3)).sum()
    flat = flat_gradient(loss, list(layer.parameters()))
    assert flat.shape == (3 * 2 + 2,)
    assign_flat_gradient(list(layer.parameters()), flat * 2)
    assert layer.weight.grad is not None
    assert torch.allclose(layer.weight.grad, torch.full((2, 3), 8.0))
    with pytest.raises(ValueError, match="flat gradient has"):
        assign_flat_gradient(list(layer.parameters()), torch.zeros(5))
