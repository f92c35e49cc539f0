"""Task registry: short DSRL task names -> environments and DSRL reference scores.

A task is what a user names on the command line (``BallRun``, ``PointGoal1``). It knows the
gymnasium id of the real environment, the episode length DSRL used, and DSRL's reference
minimum and maximum episode reward for normalised scores. ``make_env`` returns a plain
gymnasium env whose ``step`` gives the 5-tuple with the cost in ``info["cost"]`` for both gyms,
float32 observations, and the DSRL episode length as its time limit.

Reference scores are read from dsrl's own ``infos.py`` (loaded as a file, without running the
dsrl package's ``__init__``, which imports gyms and prints warnings), so the numbers are DSRL's.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib.util
import math
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from safepolicy.errors import SafepolicyError
from safepolicy.gymcompat import gym, import_safety_gymnasium

Family = Literal["bullet", "safety_gymnasium"]


class UnknownTaskError(SafepolicyError, ValueError):
    """A task name that the registry does not know."""


@dataclass(frozen=True)
class TaskSpec:
    """One DSRL task: its environment and reference scores."""

    name: str
    family: Family
    env_id: str
    max_episode_steps: int
    reward_min: float
    reward_max: float
    cost_max: float  # the largest episode cost in DSRL's dataset, for context in reports
    default_cost_limits: tuple[float, ...]

    def normalized_reward(self, episode_return: float) -> float:
        """DSRL normalised reward: (R - R_min) / (R_max - R_min)."""
        return (episode_return - self.reward_min) / (self.reward_max - self.reward_min)

    def normalized_cost(self, episode_cost: float, cost_limit: float) -> float:
        """DSRL normalised cost: (C + eps) / (limit + eps), eps = 1 only for a zero limit."""
        eps = 1.0 if cost_limit == 0 else 0.0
        return (episode_cost + eps) / (cost_limit + eps)


_BULLET = {
    "BallRun": "SafetyBallRun-v0",
    "BallCircle": "SafetyBallCircle-v0",
    "CarRun": "SafetyCarRun-v0",
    "CarCircle": "SafetyCarCircle-v0",
    "DroneRun": "SafetyDroneRun-v0",
    "DroneCircle": "SafetyDroneCircle-v0",
    "AntRun": "SafetyAntRun-v0",
    "AntCircle": "SafetyAntCircle-v0",
}
_SAFETY_GYMNASIUM = {
    "PointGoal1": "SafetyPointGoal1-v0",
    "PointGoal2": "SafetyPointGoal2-v0",
    "PointButton1": "SafetyPointButton1-v0",
    "PointCircle1": "SafetyPointCircle1-v0",
    "CarGoal1": "SafetyCarGoal1-v0",
    "CarCircle1": "SafetyCarCircle1-v0",
    "HalfCheetahVelocity": "SafetyHalfCheetahVelocity-v1",
    "HopperVelocity": "SafetyHopperVelocity-v1",
    "SwimmerVelocity": "SafetySwimmerVelocity-v1",
    "Walker2dVelocity": "SafetyWalker2dVelocity-v1",
    "AntVelocity": "SafetyAntVelocity-v1",
}
# Cost limits used in the literature (algorithm-facts.md): Bullet (10, 20, 40), Safety-Gymnasium
# (20, 40, 80); O3SRL also reports 5 on Bullet tasks.
_BULLET_LIMITS = (5.0, 10.0, 20.0, 40.0)
_SG_LIMITS = (20.0, 40.0, 80.0)


@functools.cache
def _dsrl_infos() -> dict[str, Any]:
    spec = importlib.util.find_spec("dsrl")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("dsrl is not installed; run `make venv` to build the environment")
    source = Path(next(iter(spec.submodule_search_locations))) / "infos.py"
    namespace: dict[str, Any] = {}
    exec(compile(source.read_text(), str(source), "exec"), namespace)
    return namespace


@functools.cache
def registry() -> dict[str, TaskSpec]:
    """All known tasks by short name."""
    infos = _dsrl_infos()
    tasks: dict[str, TaskSpec] = {}
    for family, table, limits in (
        ("bullet", _BULLET, _BULLET_LIMITS),
        ("safety_gymnasium", _SAFETY_GYMNASIUM, _SG_LIMITS),
    ):
        for name, env_id in table.items():
            tasks[name] = TaskSpec(
                name=name,
                family=family,  # type: ignore[arg-type]
                env_id=env_id,
                max_episode_steps=int(infos["DEFAULT_MAX_EPISODE_STEPS"][name]),
                reward_min=float(infos["MIN_EPISODE_REWARD"][name]),
                reward_max=float(infos["MAX_EPISODE_REWARD"][name]),
                cost_max=float(infos["MAX_EPISODE_COST"].get(name, math.nan)),
                default_cost_limits=limits,
            )
    return tasks


def task_key(name: str) -> str:
    """The spelling-insensitive key of a task name, env id or DSRL offline env id.

    ``BallRun``, ``ballrun``, ``SafetyBallRun-v0`` (the env id ``safepolicy tasks`` prints) and
    ``OfflineBallRun-v0`` (DSRL's name) all give ``ballrun``; ``OfflinePointGoal1Gymnasium-v0``
    gives ``pointgoal1``.
    """
    key = re.sub(r"-v\d+$", "", name.strip()).lower()
    for prefix in ("offline", "safety"):
        key = key.removeprefix(prefix)
    return key.removesuffix("gymnasium")


def get_task(name: str) -> TaskSpec:
    """The task ``name`` names (any spelling :func:`task_key` accepts).

    Raises UnknownTaskError with the closest known name, if any, and where to find them all.
    """
    tasks = registry()
    by_key = {task_key(task): spec for task, spec in tasks.items()}
    spec = by_key.get(task_key(name))
    if spec is not None:
        return spec
    close = difflib.get_close_matches(task_key(name), list(by_key), n=1, cutoff=0.6)
    hint = f"did you mean {by_key[close[0]].name}? " if close else ""
    raise UnknownTaskError(
        f"unknown task {name!r}; {hint}`safepolicy tasks` lists the "
        f"{len(tasks)} known tasks ({', '.join(sorted(tasks))})"
    )


class Float32Observation(gym.ObservationWrapper):  # type: ignore[misc]
    """Safety-Gymnasium emits float64 observations; the rest of the project speaks float32."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box):
            raise TypeError(f"expected a Box observation space, got {space}")
        self.observation_space = gym.spaces.Box(
            low=space.low.astype(np.float32),
            high=space.high.astype(np.float32),
            shape=space.shape,
            dtype=np.float32,
        )

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.asarray(observation, dtype=np.float32)


class SeedGlobalNumpyOnReset(gym.Wrapper):  # type: ignore[misc]
    """Make ``reset(seed=...)`` reproducible for Bullet-Safety-Gym.

    Its environments ignore the ``seed`` argument and draw initial positions and joint angles
    from numpy's global generator, so the seed is applied there (this reseeds the global RNG).
    """

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        if seed is not None:
            np.random.seed(seed)
        return self.env.reset(seed=seed, options=options)


class CostAsFloat(gym.Wrapper):  # type: ignore[misc]
    """Guarantee ``info["cost"]`` is a float on every step (Bullet gives ints)."""

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        info["cost"] = float(info.get("cost", 0.0))
        return observation, float(reward), bool(terminated), bool(truncated), info


@functools.cache
def _import_bullet_safety_gym() -> None:
    """Import bullet_safety_gym (registering its Safety*-v0 ids) whatever sys.stdout/stderr are.

    Its builder silences PyBullet by flushing the C stream named after ``sys.stderr.name`` on
    import and on every env build; with the streams replaced (pytest's capture, a notebook)
    that name is no C symbol and it raises. It is given the process's real streams instead.
    """
    with contextlib.redirect_stdout(sys.__stdout__), contextlib.redirect_stderr(sys.__stderr__):
        import bullet_safety_gym  # noqa: F401
        from bullet_safety_gym.envs import builder
    builder.sys = types.SimpleNamespace(stdout=sys.__stdout__, stderr=sys.__stderr__)


def make_env(task: str | TaskSpec, **kwargs: Any) -> gym.Env:
    """A fresh environment for ``task`` with the unified step API and DSRL's episode length."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if spec.family == "bullet":
        _import_bullet_safety_gym()
        env = gym.make(spec.env_id, max_episode_steps=spec.max_episode_steps, **kwargs)
        env = SeedGlobalNumpyOnReset(env)
    else:
        safety_gymnasium = import_safety_gymnasium()
        env = safety_gymnasium.make(spec.env_id, max_episode_steps=spec.max_episode_steps, **kwargs)
        env = safety_gymnasium.wrappers.SafetyGymnasium2Gymnasium(env)
    return CostAsFloat(Float32Observation(env))


@dataclass(frozen=True)
class EnvSpaces:
    """A task's observation and action sizes and action bounds, as its environment reports."""

    obs_dim: int
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]


@functools.cache
def env_spaces(spec: TaskSpec) -> EnvSpaces:
    """Build ``spec``'s environment once per process, read its spaces and close it (training
    checks a dataset against them, the audit a policy)."""
    env = make_env(spec)
    try:
        observation_space, action_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(action_space, gym.spaces.Box):  # every registered task is continuous
        raise TypeError(f"{spec.env_id}: expected a Box action space, got {action_space}")
    return EnvSpaces(
        obs_dim=int(np.prod(observation_space.shape or ())),
        action_dim=int(np.prod(action_space.shape)),
        action_low=tuple(float(x) for x in action_space.low.reshape(-1)),
        action_high=tuple(float(x) for x in action_space.high.reshape(-1)),
    )
