"""Behaviour policies that stand in for DSRL's trained agents when collecting datasets.

DSRL's datasets hold trajectories from agents trained at many cost limits, so they span
cheap-and-safe to rewarding-and-unsafe. We have no trained agents, so we get that spread from
scripted controllers whose every episode draws an :class:`EpisodeStyle`:

- ``effort`` (0..1): how hard the controller chases reward while it respects the constraint
  (target speed, throttle).
- ``aggressiveness`` (0..1): the fraction of the episode spent in *aggressive windows*, a few
  stretches of steps during which the controller ignores the constraint and chases reward
  (runs past the speed limit, leaves the safe band, drives through hazards). Episode cost
  therefore grows roughly in proportion to it, and reward with it.
- ``noise``: the standard deviation of Gaussian noise added to every action.

A behaviour *mix* (``"scripted=0.6,cautious=0.3,random=0.1"``) says how often each kind of
episode occurs: ``scripted`` draws all three uniformly, ``cautious`` never opens an aggressive
window, ``random`` plays temporally correlated random actions, ``zoo`` plays trained agents
from the task's behaviour zoo (``safepolicy.zoo``, :class:`ZooController`). Tasks without a
scripted controller fall back to random actions for ``scripted`` and ``cautious``; a task with
a zoo is played by it by default (:func:`default_behavior`).

The scripted controllers read the observation layouts of the installed gyms:
Bullet-Safety-Gym's Ball (``0.1 x, 0.1 y, 0.2 vx, 0.2 vy, ...``) and RaceCar
(``0.1 x, 0.1 y, vx, vy, sin yaw, cos yaw, ...``) agents on the Run and Circle tasks, and
Safety-Gymnasium's Point and Car robots on the Goal and Button tasks through their lidars.
The Safety-Gymnasium Velocity tasks (cost 1 per step faster than a threshold) are played by
open-loop periodic gaits (``VelocityController``) fitted offline by ``scripts/fit_gaits.py``;
only HalfCheetahVelocity has one so far (see ``VELOCITY_GAITS``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from safepolicy.errors import SafepolicyError
from safepolicy.gymcompat import gym
from safepolicy.tasks import TaskSpec
from safepolicy.zoo import ZooAgent

BEHAVIOR_KINDS = ("scripted", "cautious", "random", "zoo")
DEFAULT_BEHAVIOR = "scripted=0.65,cautious=0.3,random=0.05"
# a few random episodes keep the cheap corner of the reward-cost plane covered
ZOO_BEHAVIOR = "zoo=0.95,random=0.05"


class BehaviorError(SafepolicyError, ValueError):
    """A behaviour mix that cannot be parsed."""


@dataclass(frozen=True)
class EpisodeStyle:
    """How one episode is played (see the module docstring)."""

    kind: str
    effort: float
    aggressiveness: float
    noise: float


def default_behavior(has_zoo: bool) -> str:
    """The mix a task is collected with unless ``--behavior`` says otherwise."""
    return ZOO_BEHAVIOR if has_zoo else DEFAULT_BEHAVIOR


def parse_behavior_mix(text: str) -> dict[str, float]:
    """Parse ``"scripted=0.6,cautious=0.3,random=0.1"`` (or one bare kind) into weights that sum
    to 1; raises BehaviorError naming the bad part."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in BEHAVIOR_KINDS:
            raise BehaviorError(
                f"unknown behaviour {name!r} in {text!r}; use a mix of "
                f"{', '.join(BEHAVIOR_KINDS)} such as {DEFAULT_BEHAVIOR!r}"
            )
        try:
            weight = float(value) if value else 1.0
        except ValueError as error:
            raise BehaviorError(f"weight {value!r} of {name!r} is not a number") from error
        if not math.isfinite(weight) or weight < 0:
            raise BehaviorError(f"weight of {name!r} must be a non-negative number, got {value!r}")
        weights[name] = weights.get(name, 0.0) + weight
    total = sum(weights.values())
    if total <= 0:
        raise BehaviorError(
            f"behaviour mix {text!r} has no positive weight; e.g. {DEFAULT_BEHAVIOR!r}"
        )
    return {name: weight / total for name, weight in weights.items()}


def aggressive_windows(rng: np.random.Generator, steps: int, aggressiveness: float) -> np.ndarray:
    """Mask over ``steps``: ``aggressiveness * steps`` True steps in 1-3 separate stretches."""
    mask = np.zeros(steps, dtype=bool)
    total = min(round(aggressiveness * steps), steps)
    if total <= 0:
        return mask
    pieces = int(rng.integers(1, 4))
    lengths = rng.multinomial(total, np.full(pieces, 1.0 / pieces))
    gaps = rng.multinomial(steps - total, np.full(pieces + 1, 1.0 / (pieces + 1)))
    start = 0
    for gap, length in zip(gaps, lengths, strict=False):
        start += int(gap)
        mask[start : start + int(length)] = True
        start += int(length)
    return mask


def _wrap_angle(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


class Controller(ABC):
    """A closed-loop policy for one task whose behaviour is set per episode by a style."""

    # multiplies the episode's action noise (an open-loop gait tolerates little of it)
    noise_scale = 1.0

    def __init__(self, spec: TaskSpec, action_space: gym.spaces.Box) -> None:
        self.spec = spec
        self.action_space = action_space
        self.style = EpisodeStyle("cautious", 1.0, 0.0, 0.0)
        self.aggressive = np.zeros(spec.max_episode_steps, dtype=bool)

    def begin_episode(self, style: EpisodeStyle, rng: np.random.Generator) -> None:
        """Start an episode played in ``style``; draws its aggressive windows."""
        self.style = style
        self.aggressive = aggressive_windows(rng, self.spec.max_episode_steps, style.aggressiveness)

    def is_aggressive(self, step: int) -> bool:
        return bool(step < self.aggressive.size and self.aggressive[step])

    @abstractmethod
    def act(self, observation: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
        """The action for ``observation`` at ``step`` of the episode (before noise and clipping)."""


class RandomController(Controller):
    """Temporally correlated random actions (Ornstein-Uhlenbeck) of a per-episode scale."""

    def begin_episode(self, style: EpisodeStyle, rng: np.random.Generator) -> None:
        super().begin_episode(style, rng)
        self._state = np.zeros(self.action_space.shape, dtype=np.float64)
        self._scale = 0.2 + 0.8 * style.effort

    def act(self, observation: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
        theta = 0.15
        self._state += -theta * self._state + 0.6 * rng.standard_normal(self._state.shape)
        return self._scale * np.tanh(self._state)


# Bullet-Safety-Gym constants (bullet_safety_gym/envs/agents.py and tasks.py).
_BULLET_VELOCITY_LIMIT = {"Ball": 2.5, "Car": 1.5}
_CIRCLE_RADIUS = 7.0  # CircleTask's CircleZone radius; reward peaks on it
_CIRCLE_X_LIMIT = 6.0  # CircleTask charges cost for |x| > 6
_RUN_Y_LIMIT = 2.0  # RunTask charges cost for |y| > 2


def _bullet_agent(spec: TaskSpec) -> str:
    return "Ball" if spec.name.startswith("Ball") else "Car"


def _planar_state(agent: str, observation: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Position, velocity and heading of a Ball or RaceCar from its observation."""
    position = 10.0 * observation[0:2].astype(np.float64)
    if agent == "Ball":
        velocity = 5.0 * observation[2:4].astype(np.float64)
        heading = math.atan2(velocity[1], velocity[0])
    else:
        velocity = observation[2:4].astype(np.float64)
        heading = math.atan2(float(observation[4]), float(observation[5]))
    return position, velocity, heading


class _PlanarTracker(Controller):
    """Drive a Ball (world-frame force) or a RaceCar (throttle, steering) at a target point."""

    def __init__(self, spec: TaskSpec, action_space: gym.spaces.Box) -> None:
        super().__init__(spec, action_space)
        self.agent = _bullet_agent(spec)

    def drive(
        self,
        observation: np.ndarray,
        target: np.ndarray,
        speed: float,
        turn_around: np.ndarray | None = None,
    ) -> np.ndarray:
        """Action that heads for ``target`` at ``speed``; a car facing away from the target
        turns on the side of ``turn_around`` (its turning circle is wide)."""
        position, velocity, heading = _planar_state(self.agent, observation)
        offset = target - position
        direction = offset / max(float(np.linalg.norm(offset)), 1e-6)
        if self.agent == "Ball":
            return 1.5 * (speed * direction - velocity)
        bearing = _wrap_angle(math.atan2(direction[1], direction[0]) - heading)
        if turn_around is not None and abs(bearing) > math.pi / 2:
            to_center = turn_around - position
            side = math.cos(heading) * to_center[1] - math.sin(heading) * to_center[0]
            bearing = math.copysign(abs(bearing), side)
        forward = float(np.dot(velocity, [math.cos(heading), math.sin(heading)]))
        # steering > 0 turns left; the RaceCar reaches about 2.6 m/s at full throttle
        throttle = speed / 2.6 + 0.8 * (speed - forward)
        return np.array([throttle, 2.0 * bearing])


class RunController(_PlanarTracker):
    """Bullet Run tasks: run along +x in the lane; the speed limit is the constraint.

    Outside aggressive windows it holds ``effort`` times just under the velocity limit; inside,
    it runs at a burst speed well above it (reward grows with distance covered).
    """

    def begin_episode(self, style: EpisodeStyle, rng: np.random.Generator) -> None:
        super().begin_episode(style, rng)
        limit = _BULLET_VELOCITY_LIMIT[self.agent]
        self.safe_speed = limit * (0.3 + 0.66 * style.effort)
        self.burst_speed = limit * float(rng.uniform(1.2, 3.6 if self.agent == "Ball" else 1.8))

    def act(self, observation: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
        position, _, _ = _planar_state(self.agent, observation)
        speed = self.burst_speed if self.is_aggressive(step) else self.safe_speed
        lookahead = max(2.0 * speed, 1.5)
        target = np.array([position[0] + lookahead, 0.0])
        return self.drive(observation, target, speed)


class CircleController(_PlanarTracker):
    """Bullet Circle tasks: circle clockwise on the reward circle (radius 7) with pure pursuit.

    The circle crosses the cost boundary |x| = 6, so outside aggressive windows the path is the
    circle with its sides flattened to |x| <= 6 - margin; inside, the whole circle.
    """

    def begin_episode(self, style: EpisodeStyle, rng: np.random.Generator) -> None:
        super().begin_episode(style, rng)
        self.margin = float(rng.uniform(0.4, 1.2))
        top_speed = 2.5 if self.agent == "Car" else 4.0
        self.speed = top_speed * (0.35 + 0.65 * style.effort)
        self.lookahead = 3.0 if self.agent == "Car" else max(1.2 * self.speed, 1.5)

    def act(self, observation: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
        position, velocity, _ = _planar_state(self.agent, observation)
        bound = math.inf if self.is_aggressive(step) else _CIRCLE_X_LIMIT - self.margin
        if self.agent == "Ball":
            # a velocity field: clockwise along the circle, pulled onto it, held inside the bound
            distance = max(float(np.linalg.norm(position)), 1e-6)
            radial = position / distance
            tangent = np.array([radial[1], -radial[0]])
            wanted = self.speed * tangent + (_CIRCLE_RADIUS - distance) * radial
            low, high = -2.0 * (bound + position[0]), 2.0 * (bound - position[0])
            wanted[0] = float(np.clip(wanted[0], low, high))
            return 1.5 * (wanted - velocity)
        # pure pursuit of a point a lookahead ahead (clockwise); the car cuts inside the path, so
        # its path is a little wider than the reward circle
        radius = _CIRCLE_RADIUS + (0.4 if self.agent == "Car" else 0.0)
        angle = math.atan2(position[1], position[0]) - self.lookahead / radius
        target = radius * np.array([math.cos(angle), math.sin(angle)])
        target[0] = float(np.clip(target[0], -bound, bound))
        return self.drive(observation, target, self.speed, turn_around=np.zeros(2))


class GoalController(Controller):
    """Safety-Gymnasium Goal and Button tasks: steer at the goal seen by the goal lidar.

    Outside aggressive windows it also steers away from what the hazard lidars see, more firmly
    the lower its effort; inside, it heads straight for the goal.
    """

    _HAZARD_LIDARS = ("hazards_lidar", "vases_lidar", "pillars_lidar", "gremlins_lidar")

    def __init__(
        self, spec: TaskSpec, action_space: gym.spaces.Box, layout: dict[str, slice]
    ) -> None:
        super().__init__(spec, action_space)
        self.layout = layout
        self.robot = "Point" if spec.name.startswith("Point") else "Car"
        bins = layout["goal_lidar"].stop - layout["goal_lidar"].start
        self._front = (np.cos((np.arange(bins) + 0.5) * 2 * math.pi / bins) > 0).astype(np.float64)

    def begin_episode(self, style: EpisodeStyle, rng: np.random.Generator) -> None:
        super().begin_episode(style, rng)
        self.throttle = 0.4 + 0.6 * style.effort
        self.avoidance = 2.0 - style.effort

    @staticmethod
    def _lidar_vector(lidar: np.ndarray) -> np.ndarray:
        """Sum of bin directions weighted by closeness (bins start at the robot's forward axis)."""
        angles = (np.arange(lidar.size) + 0.5) * 2 * math.pi / lidar.size
        return np.array([np.dot(lidar, np.cos(angles)), np.dot(lidar, np.sin(angles))])

    def act(self, observation: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
        goal = self._lidar_vector(observation[self.layout["goal_lidar"]])
        steer = goal / max(float(np.linalg.norm(goal)), 1e-6)
        if not self.is_aggressive(step):
            for name in self._HAZARD_LIDARS:
                if name in self.layout:
                    # only near things ahead matter: steer sideways around them
                    lidar = np.clip(observation[self.layout[name]] - 0.6, 0.0, None) / 0.4
                    repulsion = self._lidar_vector(lidar * self._front)
                    steer = steer - self.avoidance * repulsion
        bearing = math.atan2(steer[1], steer[0])
        forward = self.throttle * max(math.cos(bearing), 0.0)
        turn = float(np.clip(2.0 * bearing, -1.0, 1.0))
        if self.robot == "Point":
            return np.array([forward, turn])
        return np.array([forward - 0.5 * turn, forward + 0.5 * turn])


@dataclass(frozen=True)
class Gait:
    """An open-loop periodic gait: joint ``j`` plays
    ``bias[j] + scale * amplitude[j] * sin(2 pi frequency t + phase[j])`` (then clipped), with
    ``t`` the simulated time in seconds. ``scale`` 0 holds the bias posture (a brake), 1 is the
    fitted gait; ``speeds[i]`` is the mean forward speed measured at scale ``i / 10`` and
    ``unsafe[i]`` the fraction of steps over the task's velocity threshold there (the speed
    oscillates within a stride, so it is not zero just under the threshold)."""

    frequency: float  # Hz of simulated time
    amplitude: tuple[float, ...]
    phase: tuple[float, ...]
    bias: tuple[float, ...]
    speeds: tuple[float, ...] = ()
    unsafe: tuple[float, ...] = ()  # fraction of steps over the threshold at those scales

    def action(self, time: float, scale: float) -> np.ndarray:
        angle = 2 * math.pi * self.frequency * time + np.asarray(self.phase)
        return np.asarray(self.bias) + scale * np.asarray(self.amplitude) * np.sin(angle)

    def scale_for(self, speed: float) -> float:
        """The gait scale whose measured mean speed is ``speed`` (1 beyond the fastest)."""
        scales = np.linspace(0.0, 1.0, len(self.speeds))
        return float(np.interp(speed, np.maximum.accumulate(self.speeds), scales))


# Velocity thresholds of the v1 Safety-Gymnasium Velocity tasks
# (safety_gymnasium/tasks/safe_velocity/safety_*_velocity_v1.py): cost 1 per step whose forward
# speed (x velocity; the planar speed for Ant) is above it.
VELOCITY_THRESHOLDS = {
    "HalfCheetahVelocity": 3.2096,
    "HopperVelocity": 0.7402,
    "SwimmerVelocity": 0.2282,
    "Walker2dVelocity": 2.3415,
    "AntVelocity": 2.6222,
}

# Gaits found by ``scripts/fit_gaits.py`` (its docstring has the commands): a seeded
# cross-entropy search over frequency, amplitudes, phases and biases that maximises the 1000-step
# return in the real environment, then the speeds and unsafe step fractions measured at scales
# 0, 0.1, ..., 1 over two reset seeds. Only HalfCheetah has one. Searches with seeds 0 and 1 gave
# gaits that flip the cheetah at some scales; seed 2 is monotone in speed. Scales above 1 flip it.
# Not covered (they fall back to random actions), measured with the same search:
# - Swimmer: the best open-loop gait reaches 0.24 m/s, but the x velocity swings within every
#   stroke, so 15-55% of steps go over the 0.2282 threshold at any speed: no safe gait.
# - Hopper and Walker2d: open-loop gaits fall within ~50-230 steps (Walker2d's best just stands).
# - Ant: the best open-loop gait walks at ~0.2 m/s against a 2.6222 threshold.
# They need closed-loop behaviour policies (e.g. a linear policy fitted by random search).
VELOCITY_GAITS: dict[str, Gait] = {
    # scripts/fit_gaits.py --task HalfCheetahVelocity --seed 2 --iterations 35 (about a minute)
    "HalfCheetahVelocity": Gait(
        frequency=2.7313,
        amplitude=(0.5717, 1.1261, 1.0763, 0.5747, 0.4320, 0.3349),
        phase=(0.5076, 0.9086, -2.2371, 2.3344, -3.0512, 6.9366),
        bias=(-0.5091, -0.4302, 0.4284, -0.0576, -0.1972, -0.0852),
        speeds=(0.000, -0.000, 0.011, 0.123, 0.453, 0.886, 1.391, 1.887, 2.362, 2.846, 3.124),
        unsafe=(0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.09, 0.49),
    ),
}


class VelocityController(Controller):
    """Safety-Gymnasium Velocity tasks: a fitted periodic gait played at a target speed.

    Outside aggressive windows the target speed is ``0.1 + 0.9 * effort`` times the *safe top
    speed*, the fastest measured speed at which at most 2% of steps went over the threshold;
    inside, a burst of 1.1-1.5 times the threshold (or the gait's top speed, scale 1). The gait
    scale for a speed comes from the speeds measured when the gait was fitted (open loop, no
    feedback), and the scale ramps toward it. The aggressive windows cover at most twice DSRL's
    largest episode cost in steps (about half of their steps go over the threshold), so unsafe
    episodes span DSRL's cost range rather than running unsafe for all 1000 steps.
    """

    SAFE_STEP_FRACTION = 0.02
    # The gait scale moves toward its target at most this much per simulated second: jumping
    # from a slow stride to the full one mid-stride flips the cheetah.
    SCALE_RATE = 0.5
    # Action noise of 0.07 at full scale flips the cheetah in most episodes; 0.3 * 0.2 = 0.06 is
    # the most an episode gets.
    noise_scale = 0.2

    def __init__(self, spec: TaskSpec, action_space: gym.spaces.Box, gait: Gait, dt: float) -> None:
        super().__init__(spec, action_space)
        self.gait = gait
        self.dt = dt
        self.threshold = VELOCITY_THRESHOLDS[spec.name]
        cost_max = spec.cost_max if math.isfinite(spec.cost_max) else 250.0
        self.max_unsafe_fraction = min(1.0, 2.0 * cost_max / spec.max_episode_steps)
        safe = [
            v for v, u in zip(gait.speeds, gait.unsafe, strict=True) if u <= self.SAFE_STEP_FRACTION
        ]
        self.safe_top_speed = max(safe, default=0.5 * self.threshold)

    def begin_episode(self, style: EpisodeStyle, rng: np.random.Generator) -> None:
        self.style = style
        self.aggressive = aggressive_windows(
            rng, self.spec.max_episode_steps, style.aggressiveness * self.max_unsafe_fraction
        )
        self.safe_scale = self.gait.scale_for(self.safe_top_speed * (0.1 + 0.9 * style.effort))
        self.burst_scale = self.gait.scale_for(self.threshold * float(rng.uniform(1.1, 1.5)))
        self.time_offset = float(rng.uniform(0.0, 1.0 / self.gait.frequency))
        self.scale = 0.0

    def act(self, observation: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
        target = self.burst_scale if self.is_aggressive(step) else self.safe_scale
        limit = self.SCALE_RATE * self.dt
        self.scale += float(np.clip(target - self.scale, -limit, limit))
        return self.gait.action(self.time_offset + step * self.dt, self.scale)


def _safety_gymnasium_layout(env: gym.Env) -> dict[str, slice] | None:
    """Slices of the named observation parts of a Safety-Gymnasium builder env, if it has them."""
    task = getattr(env.unwrapped, "task", None)
    obs_info = getattr(task, "obs_info", None)
    space = getattr(obs_info, "obs_space_dict", None)
    if space is None:
        return None
    layout: dict[str, slice] = {}
    offset = 0
    for name, part in space.items():
        size = int(np.prod(part.shape))
        layout[name] = slice(offset, offset + size)
        offset += size
    return layout


def _box(env: gym.Env) -> gym.spaces.Box:
    space = env.action_space
    if not isinstance(space, gym.spaces.Box):
        raise BehaviorError(f"behaviour policies need a continuous (Box) action space, got {space}")
    return space


def make_controller(spec: TaskSpec, env: gym.Env) -> Controller | None:
    """The scripted controller for ``spec``, or None when the task has none."""
    space = _box(env)
    if spec.family == "bullet" and spec.name.startswith(("Ball", "Car")):
        if spec.name.endswith("Run"):
            return RunController(spec, space)
        return CircleController(spec, space)
    if spec.family == "safety_gymnasium" and ("Goal" in spec.name or "Button" in spec.name):
        layout = _safety_gymnasium_layout(env)
        if layout is not None and "goal_lidar" in layout:
            return GoalController(spec, space, layout)
    gait = VELOCITY_GAITS.get(spec.name)
    dt = getattr(env.unwrapped, "dt", None)
    if spec.family == "safety_gymnasium" and gait is not None and dt is not None:
        return VelocityController(spec, space, gait, float(dt))
    return None


@dataclass(frozen=True)
class ZooSettings:
    """How zoo episodes are played (see :class:`ZooController`)."""

    agents: tuple[ZooAgent, ...]
    weights: dict[str, float]  # agent name -> probability, summing to 1
    max_noise: float = 0.3  # an episode's action-noise std is drawn from U(0, max_noise)
    switch_probability: float = 0.3  # chance that an episode switches agent once


class ZooController(Controller):
    """Play the task's zoo agents: per episode one agent drawn by weight, with probability
    ``switch_probability`` replaced at a uniformly drawn step by another agent drawn by weight
    (a mode switch: DSRL's episodes also change character mid-way), deterministic actions
    (the episode's Gaussian noise is added by :class:`BehaviorMix`)."""

    def __init__(
        self, spec: TaskSpec, action_space: gym.spaces.Box, settings: ZooSettings, obs_dim: int
    ) -> None:
        super().__init__(spec, action_space)
        if not settings.agents:
            raise BehaviorError(f"task {spec.name} has no zoo agents to play")
        for agent in settings.agents:
            policy = agent.policy
            if policy.obs_dim != obs_dim or policy.action_dim != action_space.shape[0]:
                raise BehaviorError(
                    f"zoo agent {agent.version_dir} maps {policy.obs_dim} observations to "
                    f"{policy.action_dim} actions; {spec.name} has {obs_dim} and "
                    f"{action_space.shape[0]}: it belongs to another task"
                )
        self.settings = settings
        self.agents = {agent.name: agent for agent in settings.agents}
        self.names = [name for name in self.agents if settings.weights.get(name, 0.0) > 0]
        if not self.names:
            raise BehaviorError("no zoo agent has a positive weight")
        self.probabilities = np.array([settings.weights[name] for name in self.names])
        self.probabilities /= self.probabilities.sum()
        self.first = self.second = self.names[0]
        self.switch_step = spec.max_episode_steps

    def _draw(self, rng: np.random.Generator, exclude: str | None = None) -> str:
        p = self.probabilities.copy()
        if exclude is not None:
            p[self.names.index(exclude)] = 0.0
            p /= p.sum()
        return self.names[int(rng.choice(len(self.names), p=p))]

    def begin_episode(self, style: EpisodeStyle, rng: np.random.Generator) -> None:
        super().begin_episode(style, rng)
        self.first = self.second = self._draw(rng)
        self.switch_step = self.spec.max_episode_steps
        if len(self.names) > 1 and rng.uniform() < self.settings.switch_probability:
            self.switch_step = int(rng.integers(1, self.spec.max_episode_steps))
            self.second = self._draw(rng, exclude=self.first)

    def act(self, observation: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
        name = self.first if step < self.switch_step else self.second
        batch = np.ascontiguousarray(observation, dtype=np.float32)[None]
        return self.agents[name].policy(batch)[0]


class BehaviorMix:
    """Per episode, draw a style from the mix and act with the task's controller plus noise."""

    def __init__(
        self,
        spec: TaskSpec,
        env: gym.Env,
        mix: str = DEFAULT_BEHAVIOR,
        zoo: ZooSettings | None = None,
    ) -> None:
        self.spec = spec
        self.weights = parse_behavior_mix(mix)
        self.action_space = _box(env)
        self.random = RandomController(spec, self.action_space)
        self.scripted = make_controller(spec, env)
        self.zoo: ZooController | None = None
        if self.weights.get("zoo", 0.0) > 0:
            if zoo is None or not zoo.agents:
                raise BehaviorError(
                    f"the mix {mix!r} plays zoo agents but {spec.name} has none; train some "
                    "with benchmarks/train_zoo.py or use scripted, cautious and random"
                )
            obs_shape = env.observation_space.shape or (0,)
            self.zoo = ZooController(spec, self.action_space, zoo, int(np.prod(obs_shape)))
        self.controller: Controller = self.random
        self.style = EpisodeStyle("random", 0.5, 0.0, 0.0)
        # episodes begun per kind, and per first zoo agent ("zoo:NAME"), for the attributes
        self.episode_counts: dict[str, int] = {}

    @property
    def has_scripted_controller(self) -> bool:
        return self.scripted is not None

    def begin_episode(self, rng: np.random.Generator) -> EpisodeStyle:
        """Draw the next episode's style and prepare its controller."""
        kinds = list(self.weights)
        kind = kinds[int(rng.choice(len(kinds), p=[self.weights[k] for k in kinds]))]
        effort = float(rng.uniform(0.0, 1.0))
        if kind == "scripted":
            # squared: more mildly unsafe episodes than blatantly unsafe ones
            aggressiveness = float(rng.uniform()) ** 2
            style = EpisodeStyle(kind, effort, aggressiveness, float(rng.uniform(0.0, 0.3)))
        elif kind == "cautious":
            style = EpisodeStyle(kind, effort, 0.0, float(rng.uniform(0.0, 0.1)))
        elif kind == "zoo" and self.zoo is not None:
            noise = float(rng.uniform(0.0, self.zoo.settings.max_noise))
            style = EpisodeStyle(kind, effort, 0.0, noise)
        else:
            style = EpisodeStyle(kind, effort, 0.0, 0.0)
        if kind == "zoo" and self.zoo is not None:
            self.controller = self.zoo
        elif kind != "random" and self.scripted:
            self.controller = self.scripted
        else:
            self.controller = self.random
        self.controller.begin_episode(style, rng)
        self.style = style
        counted = f"zoo:{self.zoo.first}" if self.controller is self.zoo and self.zoo else kind
        self.episode_counts[counted] = self.episode_counts.get(counted, 0) + 1
        return style

    def act(self, observation: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
        """The action to take: the controller's, plus the episode's noise, clipped to the space."""
        action = np.asarray(self.controller.act(observation, step, rng), dtype=np.float64)
        noise = self.style.noise * self.controller.noise_scale
        if noise > 0:
            action = action + noise * rng.standard_normal(action.shape)
        low, high = self.action_space.low, self.action_space.high
        return np.clip(action, low, high).astype(self.action_space.dtype)

    def describe(self) -> dict[str, Any]:
        """What to record in the dataset's attributes."""
        description: dict[str, Any] = {
            "mix": self.weights,
            "controller": type(self.scripted).__name__ if self.scripted else "RandomController",
            "episode_counts": dict(sorted(self.episode_counts.items())),
        }
        if self.zoo is not None:
            settings = self.zoo.settings
            description["zoo"] = {
                "weights": settings.weights,
                "max_noise": settings.max_noise,
                "switch_probability": settings.switch_probability,
                "agents": {agent.name: str(agent.version_dir) for agent in settings.agents},
            }
        return description
