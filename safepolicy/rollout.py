"""Run a batch policy in the real environments of a task over a fixed list of seeds.

Training's evaluation and the audit both use :func:`rollout_episodes`. The policy is any callable
``observations[B, obs_dim] float32 -> actions[B, action_dim]``; one call acts for every
environment of a ``gymnasium.vector`` env at once, so inference is batched.

Seeds are honoured: episode ``i`` is reset with seed ``seed + i``, whatever ``num_envs`` is.
(DSRL's evaluation wrapper drops the seed passed to ``reset``; results there cannot be replayed.)
Episodes are dealt round-robin to the environments before the run starts (environment ``j``
plays episodes ``j, j + num_envs, ...``) by a wrapper inside each environment that resets it
with the next seed of its own list, so the assignment, and hence every record, does not depend
on which worker process happens to be faster. A deterministic policy whose output for a row does
not depend on the batch it came in gives the same records for any ``num_envs``. (A BLAS matmul
rounds differently for different batch sizes, and the MuJoCo tasks are chaotic enough to turn
that last-bit difference into visibly different episodes: compare runs at equal ``num_envs``.)
When ``num_envs`` does not divide ``episodes``, environments that have finished their list keep
stepping (the vector API steps all of them) until the rest are done; those spare episodes are
discarded.

``vectorization="auto"`` picks ``SyncVectorEnv``: measured with ``benchmarks/audit_throughput.py``
on the project's 2-core machines, ``AsyncVectorEnv`` (a worker process per environment) stepped
BallRun and HalfCheetahVelocity at about half the rate of ``SyncVectorEnv`` (the pipe round trip
costs more than the step), and gained nothing measurable on PointGoal1. Ask for ``"async"``
on machines with cores to spare and slow environments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from safepolicy.gymcompat import gym
from safepolicy.tasks import TaskSpec, get_task, make_env

BatchPolicy = Callable[[np.ndarray], np.ndarray]
Vectorization = Literal["auto", "sync", "async"]

_RECORD_KEY = "safepolicy_episode"


@dataclass(frozen=True)
class EpisodeRecord:
    """One finished episode: its reset seed, undiscounted return and cost, and length.

    ``cost_trace[t]`` is the cumulative cost after step ``t + 1`` (so ``cost_trace[-1] ==
    episode_cost``); it is ``None`` unless the rollout was asked to record costs.
    ``terminated`` is true when the environment ended the episode before its time limit.
    """

    seed: int
    episode_return: float
    episode_cost: float
    length: int
    terminated: bool
    cost_trace: np.ndarray | None = field(default=None, compare=False, repr=False)


class _ScheduledEpisodes(gym.Wrapper):  # type: ignore[misc]
    """Resets its env with the next seed of a fixed list and reports each finished episode.

    The vector env auto-resets without a seed; this wrapper supplies the seed instead, and puts
    an :class:`EpisodeRecord` into the last step's ``info`` (the vector env hands it back under
    ``final_info``). Resets past the end of the list are unseeded and their episodes unreported.
    """

    def __init__(self, env: gym.Env, seeds: Sequence[int], record_costs: bool) -> None:
        super().__init__(env)
        self._seeds = list(seeds)
        self._next = 0
        self._record_costs = record_costs
        self._seed: int | None = None
        self._return = 0.0
        self._cost = 0.0
        self._length = 0
        self._trace: list[float] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        del seed  # the schedule decides; see the class docstring
        self._seed = self._seeds[self._next] if self._next < len(self._seeds) else None
        self._next += 1
        self._return, self._cost, self._length, self._trace = 0.0, 0.0, 0, []
        return self.env.reset(seed=self._seed, options=options)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._return += float(reward)
        self._cost += float(info["cost"])
        self._length += 1
        if self._record_costs:
            self._trace.append(self._cost)
        if (terminated or truncated) and self._seed is not None:
            trace = np.asarray(self._trace, dtype=np.float64) if self._record_costs else None
            info[_RECORD_KEY] = EpisodeRecord(
                seed=self._seed,
                episode_return=self._return,
                episode_cost=self._cost,
                length=self._length,
                terminated=bool(terminated),
                cost_trace=trace,
            )
        return observation, float(reward), terminated, truncated, info


def _env_factory(spec: TaskSpec, seeds: list[int], record_costs: bool) -> Callable[[], gym.Env]:
    def build() -> gym.Env:
        return _ScheduledEpisodes(make_env(spec), seeds, record_costs)

    return build


def make_vector_env(
    task: str | TaskSpec,
    seeds: Sequence[int],
    num_envs: int = 1,
    vectorization: Vectorization = "auto",
    record_costs: bool = False,
) -> gym.vector.VectorEnv:
    """A vector env of ``num_envs`` copies of ``task`` that plays ``seeds`` round-robin."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}")
    if vectorization not in ("auto", "sync", "async"):
        raise ValueError(f"vectorization must be 'auto', 'sync' or 'async', got {vectorization!r}")
    factories = [
        _env_factory(spec, list(seeds[j::num_envs]), record_costs) for j in range(num_envs)
    ]
    if vectorization == "async":
        return gym.vector.AsyncVectorEnv(factories)
    return gym.vector.SyncVectorEnv(factories)


def step_costs(infos: dict[str, Any], done: np.ndarray) -> np.ndarray:
    """Each environment's cost of the vector step just taken (gymnasium 0.28 autoreset: a
    finished environment's step info, cost included, is under ``final_info``)."""
    costs = np.zeros(len(done), dtype=np.float32)
    if "cost" in infos:
        costs[:] = np.where(infos.get("_cost", np.ones(len(done), bool)), infos["cost"], 0.0)
    for index in np.flatnonzero(done):
        costs[index] = float(infos["final_info"][index]["cost"])
    return costs


def finished_episodes(infos: dict[str, Any], done: np.ndarray) -> list[EpisodeRecord]:
    """The scheduled episodes that ended in the vector step just taken, in env order."""
    records = []
    for index in np.flatnonzero(done):
        record = infos["final_info"][index].get(_RECORD_KEY)
        if record is not None:
            records.append(record)
    return records


def rollout_episodes(
    policy: BatchPolicy,
    task: str | TaskSpec,
    episodes: int,
    seed: int = 0,
    num_envs: int = 1,
    progress: bool = False,
    record_costs: bool = False,
    vectorization: Vectorization = "auto",
) -> list[EpisodeRecord]:
    """Play ``episodes`` episodes of ``task`` with ``policy``; episode ``i`` uses seed ``seed + i``.

    Args:
        policy: ``observations[B, obs_dim] float32 -> actions[B, action_dim]``, called once per
            vector step with ``B == num_envs`` (wrap a stochastic policy's own RNG inside it).
        task: a task name (``"BallRun"``) or its :class:`~safepolicy.tasks.TaskSpec`.
        episodes: how many episodes to play (at least 1).
        seed: the first reset seed.
        num_envs: environments stepped together; more than ``episodes`` is pointless and capped.
        progress: show a tqdm progress bar counting finished episodes.
        record_costs: keep each episode's per-step cumulative cost in ``cost_trace``.
        vectorization: ``"sync"`` (one process), ``"async"`` (a process per env) or ``"auto"``
            (currently sync; see the module docstring).

    Returns:
        One :class:`EpisodeRecord` per episode, ordered by seed.

    Raises:
        ValueError: ``episodes`` or ``num_envs`` below 1, or the policy returns actions of the
            wrong shape for the task.
        safepolicy.tasks.UnknownTaskError: the task name is not known.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}")
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    num_envs = min(num_envs, episodes)
    seeds = [seed + i for i in range(episodes)]
    envs = make_vector_env(spec, seeds, num_envs, vectorization, record_costs)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=episodes, desc=f"{spec.name} episodes", unit="ep")
    records: dict[int, EpisodeRecord] = {}
    try:
        action_space_shape: tuple[int, ...] = envs.single_action_space.shape or ()
        action_shape = (num_envs, *action_space_shape)
        observations, _ = envs.reset()
        while len(records) < episodes:
            actions = np.asarray(policy(observations), dtype=np.float32)
            if actions.shape != action_shape:
                raise ValueError(
                    f"the policy returned actions of shape {actions.shape} for observations of "
                    f"shape {observations.shape}; task {spec.name} needs {action_shape} "
                    f"(does the policy belong to this task?)"
                )
            observations, _, terminated, truncated, infos = envs.step(actions)
            for index in np.flatnonzero(terminated | truncated):
                record = infos["final_info"][index].get(_RECORD_KEY)
                if record is not None and record.seed not in records:
                    records[record.seed] = record
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        envs.close()
    return [records[s] for s in seeds]
