"""The training loop every algorithm shares: data to device, updates, logs, checkpoints, resume.

A run directory holds:
- ``config.json``: the resolved run and algorithm configs, task, dataset and its hash;
- ``scalars.csv``: one row every ``log_every`` steps (step, wall time, averaged log values);
- ``checkpoints/last.pt``: everything needed to continue (networks, optimisers, bandit,
  RNG states), written atomically every ``checkpoint_every`` steps;
- ``actor.pt``: the final squashed Gaussian actor with its lineage and evaluation (the exporter's
  input), and ``evaluation.json``.

Determinism: minibatch indices and noise come from one CPU ``torch.Generator`` seeded with the
run's seed and saved in every checkpoint, so the same seed on the same device gives the same
actor, and a resumed run continues exactly where the killed one stood.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from safepolicy.datasets import Dataset, load_dataset
from safepolicy.tasks import TaskSpec, get_task
from training.algorithms import build_algorithm
from training.algorithms.base import Algorithm, TrainingContext
from training.checkpoint import (
    ActorMetadata,
    atomic_torch_save,
    code_version,
    file_sha256,
    save_actor,
)
from training.config import ALGORITHM_CONFIGS, TASK_OVERRIDES, RunConfig, set_field
from training.networks import SquashedGaussianActor

CHECKPOINT_FORMAT = "safepolicy.run-checkpoint/v1"


class TrainingError(ValueError):
    """A run that cannot start or continue, with what to do about it."""


@dataclass
class TrainRequest:
    """Everything ``safepolicy train`` was asked for."""

    algorithm: str
    task: str
    dataset: Path
    cost_limit: float
    out: Path
    seed: int = 0
    steps: int | None = None
    device: str = "auto"
    resume: bool = False
    overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)
    progress: bool = True


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but no CUDA device is visible; "
                            "use --device cpu or auto")
    return torch.device(name)


def build_configs(request: TrainRequest) -> tuple[RunConfig, Any]:
    """Defaults, then per-task overrides, then ``--set`` overrides (``run.`` for RunConfig)."""
    if request.algorithm not in ALGORITHM_CONFIGS:
        known = ", ".join(sorted(ALGORITHM_CONFIGS))
        raise TrainingError(f"unknown algorithm {request.algorithm!r}; known: {known}")
    run_config = RunConfig()
    algorithm_config = ALGORITHM_CONFIGS[request.algorithm]()
    layered = {**TASK_OVERRIDES.get(request.algorithm, {}).get(request.task, {}),
               **request.overrides}
    for name, value in layered.items():
        try:
            if name.startswith("run."):
                set_field(run_config, name.removeprefix("run."), str(value))
            else:
                set_field(algorithm_config, name, str(value))
        except (ValueError, AttributeError) as error:
            raise TrainingError(f"--set {name}={value}: {error}") from error
    if request.steps is not None:
        run_config.steps = request.steps
    if run_config.steps <= 0:
        raise TrainingError(f"--steps must be positive, got {run_config.steps}")
    return run_config, algorithm_config


def check_dataset_matches_task(dataset: Dataset, spec: TaskSpec) -> tuple[list[float], list[float]]:
    """The task's action bounds, after checking the dataset's dimensions agree with its env."""
    from safepolicy.tasks import make_env

    env = make_env(spec)
    try:
        observation_space, action_space = env.observation_space, env.action_space
        assert isinstance(action_space, gym.spaces.Box)  # every registered task is continuous
        obs_dim = int(np.prod(observation_space.shape or ()))
        action_dim = int(np.prod(action_space.shape))
        low = action_space.low.astype(float).tolist()
        high = action_space.high.astype(float).tolist()
    finally:
        env.close()
    if dataset.obs_dim != obs_dim or dataset.action_dim != action_dim:
        raise TrainingError(
            f"{dataset.path}: observations/actions are {dataset.obs_dim}/{dataset.action_dim}-"
            f"dimensional but {spec.name} ({spec.env_id}) has {obs_dim}/{action_dim}; "
            "pass the dataset collected for this task")
    return low, high


class ScalarLog:
    """Averages log values between rows and appends them to ``scalars.csv``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.columns: list[str] | None = None
        if path.exists():
            with path.open() as handle:
                header = handle.readline().strip()
            self.columns = header.split(",") if header else None

    def add(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] += value
            self.counts[key] += 1

    def write_row(self, step: int, wall_seconds: float) -> dict[str, float]:
        row = {"step": float(step), "wall_seconds": wall_seconds}
        row.update({k: self.sums[k] / self.counts[k] for k in sorted(self.sums)})
        if self.columns is None:
            self.columns = list(row)
            with self.path.open("w", newline="") as handle:
                csv.writer(handle).writerow(self.columns)
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow([row.get(c, "") for c in self.columns])
        self.sums.clear()
        self.counts.clear()
        return row


def evaluate_actor(actor: SquashedGaussianActor, spec: TaskSpec, cost_limit: float,
                   run_config: RunConfig) -> dict[str, Any]:
    """Deterministic actor in the real environment on the fixed seed list, DSRL-normalised."""
    from safepolicy.rollout import rollout_episodes

    device = next(actor.parameters()).device

    @torch.no_grad()
    def policy(observations: np.ndarray) -> np.ndarray:
        batch = torch.as_tensor(observations, dtype=torch.float32, device=device)
        return actor(batch).cpu().numpy()

    records = rollout_episodes(policy, spec, run_config.eval_episodes, seed=run_config.eval_seed,
                               num_envs=min(run_config.eval_envs, run_config.eval_episodes))
    returns = np.array([r.episode_return for r in records])
    costs = np.array([r.episode_cost for r in records])
    return {
        "episodes": len(records),
        "seeds": [r.seed for r in records],
        "cost_limit": cost_limit,
        "return_mean": float(returns.mean()),
        "cost_mean": float(costs.mean()),
        "normalized_reward": float(np.mean([spec.normalized_reward(r) for r in returns])),
        "normalized_cost": float(np.mean([spec.normalized_cost(c, cost_limit) for c in costs])),
        "violation_rate": float(np.mean(costs > cost_limit)),
    }


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    return {"generator": generator.get_state(), "torch": torch.get_rng_state()}


def build_context(dataset: Dataset, spec: TaskSpec, run_config: RunConfig, cost_limit: float,
                  device: torch.device, seed: int) -> TrainingContext:
    """The problem an algorithm is given: ``dataset`` (checked against ``spec``'s env) on
    ``device``, with the run's sizes and a minibatch generator seeded with ``seed``."""
    from training.data import OfflineBuffer

    action_low, action_high = check_dataset_matches_task(dataset, spec)
    buffer = OfflineBuffer(dataset, np.asarray(action_low), np.asarray(action_high), device,
                           reward_scale=run_config.reward_scale)
    return TrainingContext(
        buffer=buffer, obs_dim=dataset.obs_dim, action_dim=dataset.action_dim,
        action_low=action_low, action_high=action_high, hidden_sizes=run_config.hidden_sizes,
        gamma=run_config.gamma, batch_size=run_config.batch_size, cost_limit=cost_limit,
        episode_length=spec.max_episode_steps, total_steps=run_config.steps, device=device,
        generator=torch.Generator().manual_seed(seed), seed=seed,
        precision=run_config.precision)


def train(request: TrainRequest) -> Path:
    """Run (or resume) one training job and return the run directory with ``actor.pt``."""
    spec = get_task(request.task)
    run_config, algorithm_config = build_configs(request)
    dataset = load_dataset(request.dataset)
    device = resolve_device(request.device)
    context = build_context(dataset, spec, run_config, request.cost_limit, device, request.seed)
    generator = context.generator
    out = Path(request.out)
    checkpoint_path = out / "checkpoints" / "last.pt"
    if out.exists() and any(out.iterdir()) and not request.resume:
        raise TrainingError(f"{out}: run directory is not empty; pass --resume to continue it "
                            "or choose a new --out")
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(request.seed)
    algorithm: Algorithm = build_algorithm(request.algorithm, algorithm_config, context, dataset)

    dataset_hash = file_sha256(request.dataset)
    resolved = {
        "algorithm": request.algorithm, "task": spec.name, "env_id": spec.env_id,
        "cost_limit": request.cost_limit, "seed": request.seed, "device": str(device),
        "dataset": str(request.dataset), "dataset_sha256": dataset_hash,
        "run": dataclasses.asdict(run_config),
        "algorithm_config": dataclasses.asdict(algorithm_config),
    }
    start_step = 0
    if request.resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state.get("format") != CHECKPOINT_FORMAT or state.get("config") != resolved:
            raise TrainingError(f"{checkpoint_path}: checkpoint belongs to a different run "
                                "configuration; resume with the same arguments or a new --out")
        algorithm.load_state_dict(state["algorithm"])
        generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        start_step = int(state["step"])
    else:
        (out / "config.json").write_text(json.dumps(resolved, indent=2))
        (out / "scalars.csv").unlink(missing_ok=True)

    log = ScalarLog(out / "scalars.csv")
    started = time.perf_counter()
    bar = tqdm(total=run_config.steps, initial=start_step, disable=not request.progress,
               desc=f"{request.algorithm} {spec.name}", unit="step", dynamic_ncols=True)
    for step in range(start_step + 1, run_config.steps + 1):
        log.add(algorithm.step())
        bar.update(1)
        if step % run_config.log_every == 0 or step == run_config.steps:
            row = log.write_row(step, time.perf_counter() - started)
            bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in row.items()
                             if k in ("loss/critic", "loss/actor", "o3srl/expected_lambda")})
        if step % run_config.checkpoint_every == 0 or step == run_config.steps:
            atomic_torch_save({"format": CHECKPOINT_FORMAT, "config": resolved, "step": step,
                               "algorithm": algorithm.state_dict(), "rng": _rng_state(generator)},
                              checkpoint_path)
    bar.close()

    actor = algorithm.actor
    actor.eval()
    evaluation = (evaluate_actor(actor, spec, request.cost_limit, run_config)
                  if run_config.eval_episodes > 0 else None)
    if evaluation is not None:
        (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    metadata = ActorMetadata(
        task=spec.name, env_id=spec.env_id, algorithm=request.algorithm,
        cost_limit=request.cost_limit, seed=request.seed,
        config={"run": resolved["run"], "algorithm": resolved["algorithm_config"]},
        dataset_path=str(Path(request.dataset).resolve()), dataset_sha256=dataset_hash,
        code_version=code_version(), evaluation=evaluation)
    save_actor(out, actor.cpu(), metadata)
    return out
