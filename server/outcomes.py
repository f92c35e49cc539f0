"""Field outcomes reported by clients (``ReportOutcome``), turned into safety figures.

A client reports either per step (reward and cost of one or more steps of an open episode,
named by ``episode_id``, the last one with ``done``) or per episode (the totals). A finished
episode whose cost exceeds the policy's ``cost_limit`` is a violation: the DSRL budget is a
cumulative episode cost. Recent steps and episodes are kept in bounded windows for the
rolling cost rate and the rolling episode cost; open episodes are bounded too (the oldest is
dropped) and so are their ids, so clients that never send ``done`` cannot grow the server's
memory.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Literal

from safepolicy.server.errors import InvalidRequest

Granularity = Literal["step", "episode"]
# one report's |reward| and cost: far above any real per-step or per-episode figure, and low
# enough that the windows' running sums (10,000 entries) stay finite (two costs of 1e308
# overflowed them and left the cost-rate gauge at +Inf until restart)
MAX_OUTCOME_VALUE = 1e12
# an episode_id is a key held in memory until the episode ends: bounded in size as in count
MAX_EPISODE_ID_CHARS = 128


@dataclass
class OutcomeUpdate:
    """What one report did: the episode's cost so far, and whether it ended in violation."""

    episode_cost: float
    episode_return: float
    steps: int
    done: bool
    violation: bool


@dataclass
class _OpenEpisode:
    cost: float = 0.0
    reward: float = 0.0
    steps: int = 0


@dataclass
class _PolicyWindow:
    steps: deque[tuple[int, float]] = field(default_factory=deque)
    step_total: int = 0
    cost_total: float = 0.0
    episode_costs: deque[float] = field(default_factory=deque)


class OutcomeTracker:
    """Open episodes and rolling windows, per policy."""

    def __init__(
        self, window_steps: int = 10_000, window_episodes: int = 20, max_open_episodes: int = 10_000
    ) -> None:
        self.window_steps = window_steps
        self.window_episodes = window_episodes
        self.max_open_episodes = max_open_episodes
        self._open: OrderedDict[tuple[str, int, str], _OpenEpisode] = OrderedDict()
        self._windows: dict[str, _PolicyWindow] = {}

    def report(
        self,
        policy: str,
        version: int,
        cost_limit: float,
        *,
        granularity: Granularity,
        reward: float,
        cost: float,
        steps: int = 1,
        done: bool = False,
        episode_id: str = "",
    ) -> OutcomeUpdate:
        """Record one report; :class:`InvalidRequest` says what is wrong with a bad one."""
        if not (math.isfinite(reward) and math.isfinite(cost)):
            raise InvalidRequest("reward and cost must be finite numbers")
        if cost < 0:
            raise InvalidRequest(f"cost must be >= 0 (got {cost}); safety costs are non-negative")
        if abs(reward) > MAX_OUTCOME_VALUE or cost > MAX_OUTCOME_VALUE:
            raise InvalidRequest(
                f"reward and cost must lie within +-{MAX_OUTCOME_VALUE:g} (got "
                f"reward {reward:g}, cost {cost:g}); report real figures"
            )
        if len(episode_id) > MAX_EPISODE_ID_CHARS:
            raise InvalidRequest(
                f"episode_id is {len(episode_id)} characters long; use at most "
                f"{MAX_EPISODE_ID_CHARS} (a UUID is 36)"
            )
        if steps < 0:
            raise InvalidRequest(f"steps must be >= 1 (got {steps}); 0 means 1")
        steps = steps or 1
        self._add_steps(policy, steps, cost)
        if granularity == "episode":
            return self._finish(policy, cost_limit, cost, reward, steps)
        if not episode_id:
            raise InvalidRequest(
                "a STEP report needs an episode_id naming the episode it belongs to"
            )
        key = (policy, version, episode_id)
        episode = self._open.pop(key, None) or _OpenEpisode()
        episode.cost += cost
        episode.reward += reward
        episode.steps += steps
        if done:
            return self._finish(policy, cost_limit, episode.cost, episode.reward, episode.steps)
        self._open[key] = episode
        while len(self._open) > self.max_open_episodes:
            self._open.popitem(last=False)
        return OutcomeUpdate(episode.cost, episode.reward, episode.steps, False, False)

    def _add_steps(self, policy: str, steps: int, cost: float) -> None:
        window = self._windows.setdefault(policy, _PolicyWindow())
        window.steps.append((steps, cost))
        window.step_total += steps
        window.cost_total += cost
        while window.step_total - window.steps[0][0] >= self.window_steps:
            old_steps, old_cost = window.steps.popleft()
            window.step_total -= old_steps
            window.cost_total -= old_cost

    def _finish(
        self, policy: str, cost_limit: float, cost: float, reward: float, steps: int
    ) -> OutcomeUpdate:
        window = self._windows.setdefault(policy, _PolicyWindow())
        window.episode_costs.append(cost)
        if len(window.episode_costs) > self.window_episodes:
            window.episode_costs.popleft()
        return OutcomeUpdate(cost, reward, steps, True, cost > cost_limit)

    def cost_rate(self, policy: str) -> float:
        """Cost per step over the most recent ``window_steps`` reported steps."""
        window = self._windows.get(policy)
        if window is None or window.step_total == 0:
            return 0.0
        return max(window.cost_total, 0.0) / window.step_total

    def rolling_episode_cost(self, policy: str) -> float:
        """Mean cost of the most recent ``window_episodes`` finished episodes."""
        window = self._windows.get(policy)
        if window is None or not window.episode_costs:
            return 0.0
        return sum(window.episode_costs) / len(window.episode_costs)
