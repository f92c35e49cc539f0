"""DRCORL on tiny problems: the diffusion behaviour model, gradient manipulation, gating, the
extraction's regularisation, and `train drcorl` through the loop (resume, stage reuse, export)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training_runs import actor_output, request
from training_toys import TOY_EPISODE_LENGTH, episode_cost_of, speed_cost_dataset, toy_context

from safepolicy.datasets import Dataset
from safepolicy.export.artifact import load_policy
from safepolicy.export.onnx_export import export_run
from safepolicy.training.algorithms.drcorl import DRCORL, DRCORLConfig, temperature_at
from safepolicy.training.checkpoint import load_actor
from safepolicy.training.diffusion import DiffusionBehaviourModel, VPSchedule, noise_prediction_loss
from safepolicy.training.gradients import (
    SafeStep,
    SlackBands,
    assign_flat_gradient,
    choose_step,
    flat_gradient,
    manipulate_gradients,
)
from safepolicy.training.loop import ScalarLog, train

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
    assert torch.equal(
        manipulate_gradients(torch.tensor([1.0, 0.0, 0.0]), orthogonal),
        torch.tensor([0.5, 1.5, 0.0]),
    )


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


# --- the algorithm on toys ---------------------------------------------------------------------

BEHAVIOUR_MODE = 0.6


def two_mode_dataset(transitions: int = 2000, seed: int = 0) -> Dataset:
    """Behaviour a = +-0.6 (+ 0.05 noise) with the sign of the first state coordinate, which is
    +-1; reward a (the critic would take a -> 1, off the data), no cost."""
    rng = np.random.default_rng(seed)
    observations = rng.uniform(-1, 1, size=(transitions, 2)).astype(np.float32)
    observations[:, 0] = np.sign(observations[:, 0])
    actions = (
        BEHAVIOUR_MODE * observations[:, :1] + 0.05 * rng.standard_normal((transitions, 1))
    ).astype(np.float32)
    timeouts = np.zeros(transitions, dtype=bool)
    timeouts[TOY_EPISODE_LENGTH - 1 :: TOY_EPISODE_LENGTH] = True
    return Dataset(
        observations=observations,
        next_observations=rng.uniform(-1, 1, size=(transitions, 2)).astype(np.float32),
        actions=actions,
        rewards=actions[:, 0].copy(),
        costs=np.zeros(transitions, dtype=np.float32),
        terminals=np.zeros(transitions, dtype=bool),
        timeouts=timeouts,
        attrs={"task": "toy-two-mode"},
    )


def run_stages(algorithm: DRCORL, behaviour: int, critics: int, policy: int) -> dict:
    logs: dict = {}
    for stage, steps in (("behaviour", behaviour), ("critics", critics), ("policy", policy)):
        for _ in range(steps):
            for key, value in algorithm.step(stage).items():
                logs.setdefault(key, []).append(float(value))
    return logs


def small_config(**changes: object) -> DRCORLConfig:
    fields: dict = {
        "diffusion_hidden_sizes": [64, 64],
        "diffusion_lr": 2e-3,
        "actor_lr": 3e-3,
        "critic_lr": 1e-3,
    }
    fields.update(changes)
    return DRCORLConfig(**fields)


@pytest.mark.parametrize(("temperature", "on_modes"), [(0.001, True), (30.0, False)])
def test_under_strong_regularisation_the_actor_stays_on_the_behaviour_modes(
    temperature: float, on_modes: bool
) -> None:
    torch.set_num_threads(1)
    data = two_mode_dataset()
    context = toy_context(data, cost_limit=5.0, total_steps=800, batch_size=128)
    algorithm = DRCORL(
        small_config(
            temperature_schedule="constant", temperature_start=temperature, policy_steps=200
        ),
        context,
    )
    run_stages(algorithm, behaviour=400, critics=150, policy=200)
    observations = torch.as_tensor(data.observations[:500])
    with torch.no_grad():
        actions = algorithm.actor(observations)[:, 0]
    distance = (actions - BEHAVIOUR_MODE * observations[:, 0]).abs()
    if on_modes:  # small beta: the reverse KL to the diffusion model dominates the critic
        assert distance.median() < 0.06 and distance.max() < 0.15, distance.quantile(0.9)
    else:  # the same run with a large beta follows Q_r = a off the data, to the action bound
        assert distance.median() > 0.3 and actions.min() > 0.95


@pytest.mark.parametrize("policy_std", ["fixed", "learned"])
def test_the_log_std_head_learns_only_with_a_learned_std(policy_std: str) -> None:
    """Fixed std: the entropy is a constant, nothing reaches the log-std outputs. Learned: the
    closed-form entropy and the score term move them."""
    data = two_mode_dataset(transitions=500)
    context = toy_context(
        data, cost_limit=5.0, total_steps=20, batch_size=64, hidden_sizes=(16, 16)
    )
    algorithm = DRCORL(
        small_config(diffusion_hidden_sizes=[16], policy_std=policy_std, policy_steps=10), context
    )
    output = algorithm.actor.trunk[-1]
    assert isinstance(output, torch.nn.Linear)
    before = output.weight.detach().clone()
    run_stages(algorithm, behaviour=5, critics=5, policy=10)
    mean_rows, log_std_rows = slice(0, 1), slice(1, 2)  # action_dim 1: [mean, log_std]
    assert not torch.equal(output.weight[mean_rows], before[mean_rows])
    moved = not torch.equal(output.weight[log_std_rows], before[log_std_rows])
    assert moved == (policy_std == "learned")
    if policy_std == "fixed":  # what is exported samples with the std it was trained with
        _, log_std = algorithm.actor.distribution(torch.as_tensor(data.observations[:32]))
        assert torch.allclose(log_std, torch.full_like(log_std, math.log(0.2)))


def test_temperature_schedules() -> None:
    linear = DRCORLConfig()
    assert temperature_at(linear, 0, 2050) == pytest.approx(0.04)
    assert temperature_at(linear, 2049, 2050) == pytest.approx(1.0)
    assert temperature_at(linear, 1024, 2049) == pytest.approx(0.52)
    constant = DRCORLConfig(temperature_schedule="constant", temperature_start=0.3)
    assert temperature_at(constant, 0, 10) == temperature_at(constant, 9, 10) == 0.3


def test_the_gate_holds_the_ucb_cost_estimate_at_the_limit() -> None:
    """Speed toy: cost rate (a + 1) / 2 per step, the data's episode cost about 5. A limit of 0.5
    starts with cost steps until the estimate reaches the limit, then alternates around it; a
    limit of 1000 takes only reward steps, and its actor ends faster and costlier."""
    torch.set_num_threads(1)
    data = speed_cost_dataset(transitions=2000)
    results = {}
    for limit in (0.5, 1000.0):
        context = toy_context(data, cost_limit=limit, total_steps=700, batch_size=128)
        algorithm = DRCORL(
            small_config(behaviour_steps=300, critics_steps=200, policy_steps=200), context
        )
        logs = run_stages(algorithm, behaviour=300, critics=200, policy=200)
        results[limit] = (logs, episode_cost_of(algorithm.actor, data))
    tight_logs, tight_cost = results[0.5]
    loose_logs, loose_cost = results[1000.0]
    assert tight_logs["drcorl/cost_estimate"][0] > 0.5 * 1.2
    assert tight_logs["drcorl/cost_step"][:5] == [1.0] * 5
    assert 0.4 < np.mean(tight_logs["drcorl/cost_estimate"][-100:]) < 0.65
    assert 0.0 < np.mean(tight_logs["drcorl/cost_step"][-100:]) < 1.0
    assert np.mean(loose_logs["drcorl/reward_step"]) == 1.0
    assert tight_cost < loose_cost - 5.0, (tight_cost, loose_cost)


# --- through the loop --------------------------------------------------------------------------

STAGE_STEPS = {
    "behaviour_steps": "20",
    "critics_steps": "20",
    "policy_steps": "20",
    "diffusion_hidden_sizes": "32,32",
    "run.checkpoint_every": "10",
}


def drcorl_request(dataset: Path, out: Path, **changes: object):  # type: ignore[no-untyped-def]
    from test_training_runs import SMALL

    overrides = {**SMALL, **STAGE_STEPS, **changes.pop("overrides", {})}  # type: ignore[dict-item]
    return request(dataset, out, "drcorl", steps=None, overrides=overrides, **changes)


def test_train_drcorl_is_deterministic_resumes_mid_stage_and_exports(
    ballrun_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = train(drcorl_request(ballrun_dataset, tmp_path / "whole"))
    again = train(drcorl_request(ballrun_dataset, tmp_path / "again"))
    assert torch.equal(actor_output(whole), actor_output(again))
    rows = (whole / "scalars.csv").read_text().splitlines()
    assert [row.split(",")[1] for row in rows[1:]] == (
        ["behaviour"] * 2 + ["critics"] * 2 + ["policy"] * 2
    )

    calls = {"n": 0}
    original_add = ScalarLog.add

    def dying_add(self: ScalarLog, values: dict) -> None:
        calls["n"] += 1
        if calls["n"] == 55:  # in the policy stage, after the step-50 checkpoint
            raise KeyboardInterrupt
        original_add(self, values)

    monkeypatch.setattr(ScalarLog, "add", dying_add)
    with pytest.raises(KeyboardInterrupt):
        train(drcorl_request(ballrun_dataset, tmp_path / "killed"))
    monkeypatch.setattr(ScalarLog, "add", original_add)
    state = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 50 and state["algorithm"]["policy_step"] == 10
    resumed = train(drcorl_request(ballrun_dataset, tmp_path / "killed", resume=True))
    assert torch.equal(actor_output(whole), actor_output(resumed))

    actor, _ = load_actor(whole)
    policy = load_policy(export_run(whole, tmp_path / "repo", "drcorl"))
    observations = np.linspace(-1, 1, 7 * 5, dtype=np.float32).reshape(5, 7)
    with torch.no_grad():
        expected = actor(torch.from_numpy(observations)).numpy()
    np.testing.assert_allclose(policy(observations), expected, atol=1e-5)
    assert policy.metadata.algorithm == "drcorl"


def test_the_critics_stage_serves_another_cost_limit(ballrun_dataset: Path, tmp_path: Path) -> None:
    limit10 = train(drcorl_request(ballrun_dataset, tmp_path / "limit10"))
    same = train(
        drcorl_request(ballrun_dataset, tmp_path / "same", reuse_stages={"critics": limit10})
    )
    assert torch.equal(actor_output(limit10), actor_output(same))  # same seed: same stream
    assert {row.split(",")[1] for row in (same / "scalars.csv").read_text().splitlines()[1:]} == {
        "policy"
    }

    limit20 = train(
        drcorl_request(
            ballrun_dataset,
            tmp_path / "limit20",
            cost_limit=20.0,
            reuse_stages={"critics": limit10},
        )
    )
    source = torch.load(limit10 / "checkpoints" / "stage-critics.pt", weights_only=False)
    reused = torch.load(limit20 / "checkpoints" / "stage-policy.pt", weights_only=False)
    # the behaviour model is frozen after its stage: the reused one is used as it was
    for key, tensor in source["algorithm"]["behaviour"].items():
        assert torch.equal(reused["algorithm"]["behaviour"][key], tensor), key
    assert reused["config"]["cost_limit"] == 20.0
    # the critics keep learning in the policy stage
    assert not torch.equal(
        reused["algorithm"]["reward_critic"]["layers.0.weight"],
        source["algorithm"]["reward_critic"]["layers.0.weight"],
    )

    # nothing before the policy stage reads the cost limit: a fresh run at limit 20 writes the
    # same critics-stage state, bit for bit
    fresh20 = train(drcorl_request(ballrun_dataset, tmp_path / "fresh20", cost_limit=20.0))
    other = torch.load(fresh20 / "checkpoints" / "stage-critics.pt", weights_only=False)
    for component, tensors in source["algorithm"].items():
        if isinstance(tensors, dict) and component.endswith(("critic", "value", "behaviour")):
            for key, tensor in tensors.items():
                assert torch.equal(other["algorithm"][component][key], tensor), (component, key)
