"""The task registry: names, environments, DSRL episode lengths and normalised scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safepolicy.tasks import UnknownTaskError, env_spaces, get_task, make_env, registry, task_key

FAST_TASKS = ["BallRun", "CarCircle", "BallCircle", "CarRun", "DroneRun", "AntRun"]


def test_registry_has_the_benchmark_tasks_with_dsrl_scores() -> None:
    tasks = registry()
    for name in ("BallRun", "CarCircle", "PointGoal1", "HalfCheetahVelocity"):
        spec = tasks[name]
        assert spec.reward_max > spec.reward_min
    assert tasks["BallRun"].max_episode_steps == 100
    assert tasks["CarCircle"].max_episode_steps == 300
    assert tasks["PointGoal1"].max_episode_steps == 1000


def test_unknown_task_lists_known_names() -> None:
    with pytest.raises(UnknownTaskError) as error:
        get_task("BallRunn")
    message = str(error.value)
    assert "BallRunn" in message and "BallRun" in message and "PointGoal1" in message
    assert "did you mean BallRun?" in message


@pytest.mark.parametrize(
    ("spelling", "task"),
    [
        ("ballrun", "BallRun"),
        ("BALLRUN", "BallRun"),
        ("SafetyBallRun-v0", "BallRun"),
        ("OfflineBallRun-v0", "BallRun"),
        ("OfflinePointGoal1Gymnasium-v0", "PointGoal1"),
        ("OfflineHalfCheetahVelocityGymnasium-v1", "HalfCheetahVelocity"),
        ("SafetyCarCircle1-v0", "CarCircle1"),
        ("carcircle", "CarCircle"),
    ],
)
def test_task_names_accept_every_common_spelling(spelling: str, task: str) -> None:
    assert get_task(spelling).name == task


def test_every_task_has_its_own_spelling_key() -> None:
    keys = [task_key(name) for name in registry()]
    assert len(set(keys)) == len(keys)
    assert all(get_task(spec.env_id).name == name for name, spec in registry().items())


def test_env_spaces_are_probed_once_per_task() -> None:
    spec = get_task("BallRun")
    spaces = env_spaces(spec)
    assert (spaces.obs_dim, spaces.action_dim) == (7, 2)
    assert spaces.action_low == (-1.0, -1.0) and spaces.action_high == (1.0, 1.0)
    assert env_spaces(spec) is spaces  # cached: no second environment is built


def test_normalised_scores_follow_dsrl() -> None:
    spec = get_task("BallRun")
    assert spec.normalized_reward(spec.reward_min) == pytest.approx(0.0)
    assert spec.normalized_reward(spec.reward_max) == pytest.approx(1.0)
    assert spec.normalized_cost(10.0, 20.0) == pytest.approx(0.5)
    assert spec.normalized_cost(0.0, 0.0) == pytest.approx(1.0)  # eps = 1 for a zero limit
    assert spec.normalized_cost(3.0, 0.0) == pytest.approx(4.0)


def _run_episode(name: str, seed: int) -> tuple[int, list[float], np.ndarray]:
    env = make_env(name)
    try:
        observation, _ = env.reset(seed=seed)
        first = observation.copy()
        costs: list[float] = []
        steps, done = 0, False
        env.action_space.seed(seed)
        while not done:
            observation, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert isinstance(info["cost"], float)
            assert isinstance(reward, float)
            assert observation.dtype == np.float32
            costs.append(info["cost"])
            steps += 1
            done = terminated or truncated
        return steps, costs, first
    finally:
        env.close()


@pytest.mark.parametrize("name", ["BallRun", "CarCircle"])
def test_bullet_episode_has_dsrl_length_float_costs_and_seeded_reset(name: str) -> None:
    steps, costs, first = _run_episode(name, seed=3)
    assert steps == get_task(name).max_episode_steps
    assert all(math.isfinite(c) for c in costs)
    _, _, again = _run_episode(name, seed=3)
    _, _, other = _run_episode(name, seed=4)
    np.testing.assert_allclose(first, again, atol=1e-5)
    assert not np.allclose(first, other)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(registry()))
def test_every_task_builds_and_steps(name: str) -> None:
    spec = get_task(name)
    env = make_env(spec)
    try:
        observation, _ = env.reset(seed=0)
        assert observation.shape == env.observation_space.shape
        assert observation.dtype == np.float32
        _, reward, _, _, info = env.step(env.action_space.sample())
        assert isinstance(info["cost"], float) and isinstance(reward, float)
        assert env.spec is None or env.spec.max_episode_steps in (None, spec.max_episode_steps)
    finally:
        env.close()


@pytest.mark.slow
def test_safety_gymnasium_episode_length_is_dsrls() -> None:
    steps, costs, _ = _run_episode("HalfCheetahVelocity", seed=0)
    assert steps == get_task("HalfCheetahVelocity").max_episode_steps
    assert all(isinstance(c, float) for c in costs)
