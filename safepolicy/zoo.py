"""The behaviour-agent zoo: trained online agents per task that ``safepolicy collect`` plays.

DSRL recorded its datasets from many online safe-RL agents trained at different cost limits.
The zoo holds such agents, one model repository per task (``export/repository.py``)::

    zoo/<Task>/<agent>/<version>/policy.onnx     the exporter's artifact (torch-free loader)
    zoo/<Task>/<agent>/<version>/metadata.json
    zoo/<Task>/<agent>/<version>/card.json       :class:`AgentCard`: how it was trained, how
                                                 it scored

An agent version counts only once its card exists: the card is written last, after the export
is verified and the agent evaluated, so a half-made agent is never played. The latest carded
version of each agent name is the one played. The zoo lives in ``zoo/`` at the repository root
(shipped with the code, so collecting needs no training); ``SAFEPOLICY_ZOO`` or ``--zoo DIR``
point elsewhere.

Playing an agent needs only onnxruntime (``export.artifact``); adding one (:func:`add_agent`)
exports a training run and so imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from safepolicy.errors import SafepolicyError
from safepolicy.export.artifact import ArtifactError, OnnxPolicy, load_policy, utc_now
from safepolicy.export.repository import ModelRepository, RepositoryError
from safepolicy.fileio import atomic_write_text

ZOO_ENV = "SAFEPOLICY_ZOO"
CARD_FILENAME = "card.json"


class ZooError(SafepolicyError, ValueError):
    """A zoo, agent or card that cannot be used; the message says what to do."""


class AgentCard(BaseModel):
    """What a zoo agent is: how it was trained and how it scored (``card.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    task: str
    agent: str = Field(description="agent name in the task's zoo, e.g. sac-lag-limit20")
    algorithm: str = Field(description="online algorithm that trained it, e.g. sac-lag")
    cost_limit: float | None = Field(description="training cost limit; None = unconstrained")
    command: str = Field(description="the command that trained it")
    train_env_steps: int = Field(ge=0)
    train_wall_s: float = Field(ge=0.0, description="training wall time in seconds")
    train_device: str = ""
    eval_episodes: int = Field(ge=1)
    eval_seed: int
    eval_return_mean: float
    eval_cost_mean: float
    eval_normalized_reward: float = Field(description="DSRL-normalised mean return")
    created_at: datetime = Field(default_factory=utc_now)


def default_zoo_dir() -> Path:
    """``$SAFEPOLICY_ZOO``, else ``zoo/`` at the root of the checkout the code runs from."""
    configured = os.environ.get(ZOO_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent / "zoo"


def write_card(version_dir: str | os.PathLike[str], card: AgentCard) -> Path:
    """Write ``card.json`` into an exported version directory (atomically)."""
    path = Path(version_dir) / CARD_FILENAME
    atomic_write_text(path, card.model_dump_json(indent=2) + "\n")
    return path


def read_card(version_dir: str | os.PathLike[str]) -> AgentCard | None:
    """The version's card, or None if it has none yet; ZooError when it is unreadable."""
    path = Path(version_dir) / CARD_FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ZooError(f"{path}: cannot read the agent card ({error})") from error
    try:
        return AgentCard.model_validate_json(text)
    except ValidationError as error:
        raise ZooError(
            f"{path}: invalid agent card ({error}); delete the version directory "
            "and re-run benchmarks/train_zoo.py for it"
        ) from error


@dataclass(frozen=True)
class ZooAgent:
    """One playable agent: its card and its loaded ONNX policy."""

    card: AgentCard
    version_dir: Path
    policy: OnnxPolicy

    @property
    def name(self) -> str:
        return self.card.agent


def carded_versions(zoo_dir: Path, task: str) -> dict[str, Path]:
    """Agent name -> the directory of its latest version that has a card."""
    try:
        repository = ModelRepository(zoo_dir / task)
        found: dict[str, Path] = {}
        for name in repository.names():
            for version in reversed(repository.versions(name)):
                directory = repository.path_for(name, version)
                if (directory / CARD_FILENAME).is_file():
                    found[name] = directory
                    break
    except RepositoryError as error:
        raise ZooError(str(error)) from error
    return found


def has_zoo(task: str, zoo_dir: Path | None = None) -> bool:
    """Whether ``task`` has at least one carded agent in the zoo."""
    return bool(carded_versions(zoo_dir or default_zoo_dir(), task))


def load_agents(
    task: str, zoo_dir: Path | None = None, names: Sequence[str] | None = None
) -> list[ZooAgent]:
    """The task's agents (all, or those in ``names``), sorted by name, policies loaded."""
    directory = zoo_dir or default_zoo_dir()
    available = carded_versions(directory, task)
    if not available:
        raise ZooError(
            f"task {task} has no zoo agents in {directory}; train some with "
            "`benchmarks/train_zoo.py`, or collect with --behavior scripted/random"
        )
    wanted = sorted(available) if names is None else list(names)
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise ZooError(
            f"no zoo agent(s) {', '.join(unknown)} for {task} in {directory}; "
            f"it has {', '.join(sorted(available))}"
        )
    agents = []
    for name in wanted:
        version_dir = available[name]
        card = read_card(version_dir)
        if card is None:
            raise ZooError(f"{version_dir}: its card vanished while loading; retry")
        if card.task != task:
            raise ZooError(
                f"{version_dir}: the card is for task {card.task}, not {task}; "
                "move the agent to its task's folder"
            )
        try:
            policy = load_policy(version_dir)
        except ArtifactError as error:
            raise ZooError(str(error)) from error
        if policy.metadata.task != task:
            raise ZooError(
                f"{version_dir}: the policy was trained for {policy.metadata.task}, not {task}"
            )
        agents.append(ZooAgent(card, version_dir, policy))
    return agents


def parse_agent_weights(text: str | None, names: Sequence[str]) -> dict[str, float]:
    """``"a=2,b=1"`` -> weights over ``names`` summing to 1 (unnamed agents get 0; ``None`` or
    an empty text means equal weights); ZooError naming the bad part."""
    if not text:
        return {name: 1.0 / len(names) for name in names}
    weights = dict.fromkeys(names, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in weights:
            raise ZooError(
                f"unknown zoo agent {name!r} in --zoo-weights {text!r}; the task's "
                f"agents are {', '.join(names)}"
            )
        try:
            weight = float(value) if value else 1.0
        except ValueError as error:
            raise ZooError(f"weight {value!r} of zoo agent {name!r} is not a number") from error
        if not np.isfinite(weight) or weight < 0:
            raise ZooError(
                f"weight of zoo agent {name!r} must be a non-negative number, got {value!r}"
            )
        weights[name] += weight
    total = sum(weights.values())
    if total <= 0:
        raise ZooError(f"--zoo-weights {text!r} gives no agent a positive weight")
    return {name: weight / total for name, weight in weights.items()}


def add_agent(
    run_dir: Path,
    zoo_dir: Path,
    task: str,
    agent: str,
    *,
    command: str,
    algorithm: str,
    cost_limit: float | None,
    train_env_steps: int,
    train_wall_s: float,
    train_device: str = "",
    eval_episodes: int = 10,
    eval_seed: int = 50_000,
) -> AgentCard:
    """Export the run's actor into ``zoo_dir/task/agent``, evaluate it there (deterministic
    actions, ``eval_episodes`` episodes from ``eval_seed``) and write its card last."""
    from safepolicy.export.onnx_export import export_run
    from safepolicy.rollout import rollout_episodes
    from safepolicy.tasks import get_task

    spec = get_task(task)
    version_dir = export_run(run_dir, zoo_dir / task, agent)
    policy = load_policy(version_dir)
    records = rollout_episodes(policy, spec, eval_episodes, seed=eval_seed)
    returns = np.array([record.episode_return for record in records])
    costs = np.array([record.episode_cost for record in records])
    card = AgentCard(
        task=task,
        agent=agent,
        algorithm=algorithm,
        cost_limit=cost_limit,
        command=command,
        train_env_steps=train_env_steps,
        train_wall_s=round(train_wall_s, 1),
        train_device=train_device,
        eval_episodes=eval_episodes,
        eval_seed=eval_seed,
        eval_return_mean=float(returns.mean()),
        eval_cost_mean=float(costs.mean()),
        eval_normalized_reward=float(spec.normalized_reward(float(returns.mean()))),
    )
    write_card(version_dir, card)
    return card
