"""The training loop every algorithm shares: data to device, updates, logs, checkpoints, resume.

A run directory holds:
- ``config.json``: the resolved run and algorithm configs, task, dataset and its hash;
- ``scalars.csv``: one row every ``log_every`` steps (step, wall time, averaged log values);
- ``checkpoints/last.pt``: everything needed to continue (networks, optimisers, multipliers,
  RNG states, the stage and step), written atomically every ``checkpoint_every`` steps and at
  the end of every stage;
- ``checkpoints/stage-NAME.pt``: the same at the end of stage NAME; another run of the same
  algorithm on the same task and dataset can start from it (``--reuse-stage NAME=PATH``) and
  skip that stage and those before it (e.g. one behaviour model for several cost limits);
- ``actor.pt``: the final squashed Gaussian actor with its lineage and evaluation (the exporter's
  input), and ``evaluation.json``;
- ``curves.png``: losses, multiplier, cost values against their budget, final evaluation.

Stages: the algorithm's spec (training/registry.py) lists named stages with their step counts;
the loop runs them in order on one global step counter, calls ``start_stage`` when a stage
begins, and writes the stage's name in every log row.

Determinism: minibatch indices and noise come from one CPU ``torch.Generator`` seeded with the
run's seed and saved in every checkpoint, so the same seed on the same device gives the same
actor, and a resumed run continues exactly where the killed one stood.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from safepolicy.datasets import Dataset, load_dataset
from safepolicy.errors import SafepolicyError
from safepolicy.fileio import atomic_write, atomic_write_text
from safepolicy.plots import CURVES_FILENAME, plot_training_curves
from safepolicy.tasks import TaskSpec, env_spaces, get_task
from safepolicy.training.algorithms.base import Algorithm, Logs, TrainingContext
from safepolicy.training.checkpoint import (
    ActorMetadata,
    atomic_torch_save,
    file_sha256,
    save_actor,
)
from safepolicy.training.config import Config, ConfigError, RunConfig, differing_keys, set_field
from safepolicy.training.networks import SquashedGaussianActor
from safepolicy.training.registry import (
    AlgorithmSpec,
    Stage,
    StageSource,
    UnknownAlgorithmError,
    algorithm_spec,
    checked_stages,
)
from safepolicy.version import code_version

CHECKPOINT_FORMAT = "safepolicy.run-checkpoint/v2"


class TrainingError(SafepolicyError, ValueError):
    """A run that cannot start or continue, with what to do about it."""


@dataclass
class TrainRequest:
    """Everything ``safepolicy train`` was asked for."""

    algorithm: str
    task: str
    dataset: Path | None  # None: an online algorithm that needs no data (spec.needs_dataset)
    cost_limit: float
    out: Path
    seed: int = 0
    steps: int | None = None
    device: str = "auto"
    resume: bool = False
    overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)
    progress: bool = True
    reuse_stages: Mapping[str, Path] = dataclasses.field(default_factory=dict)
    config_file: Path | None = None  # YAML or JSON settings, layered under ``overrides``


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(
            "--device cuda was asked for but no CUDA device is visible; use --device cpu or auto"
        )
    return torch.device(name)


def build_configs(request: TrainRequest) -> tuple[AlgorithmSpec, RunConfig, Config]:
    """Defaults, then per-task overrides, then ``--set`` overrides (``run.`` for RunConfig)."""
    try:
        spec = algorithm_spec(request.algorithm)
    except UnknownAlgorithmError as error:
        raise TrainingError(str(error)) from None
    if not math.isfinite(request.cost_limit) or request.cost_limit < 0:
        raise TrainingError(f"--cost-limit must be a finite number >= 0, got {request.cost_limit}")
    run_config = RunConfig()
    algorithm_config = spec.config_type()
    from_file = read_config_file(request.config_file) if request.config_file else {}
    layered = {**spec.task_overrides.get(request.task, {}), **from_file, **request.overrides}
    for name, value in layered.items():
        try:
            if name.startswith("run."):
                set_field(run_config, name.removeprefix("run."), value)
            else:
                set_field(algorithm_config, name, value)
        except ConfigError as error:
            where = (
                "--set"
                if name in request.overrides
                else f"{request.config_file}:"
                if name in from_file
                else "task default"
            )
            raise TrainingError(f"{where} {name}={value}: {error}") from None
    if request.steps is not None:
        try:
            set_field(run_config, "steps", request.steps)
        except ConfigError:
            raise TrainingError(
                f"--steps must be a positive integer, got {request.steps}"
            ) from None
    return spec, run_config, algorithm_config


def read_config_file(path: Path) -> dict[str, Any]:
    """``--config FILE``: a YAML (or JSON) mapping of settings, nested or dotted, with the run's
    settings under ``run:``; returned as dotted names (``td3bc.alpha``, ``run.batch_size``)."""
    import yaml

    try:
        settings = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise TrainingError(f"--config {path}: cannot read it ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise TrainingError(
            f"--config {path}: not valid YAML{where}; write one NAME: VALUE per "
            "line, nested or dotted (e.g. td3bc.alpha: 2.5)"
        ) from None
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise TrainingError(
            f"--config {path}: expected a mapping of settings, got a {type(settings).__name__}"
        )

    def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key, value in mapping.items():
            if isinstance(value, Mapping):
                flat.update(flatten(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = (
                    ",".join(str(v) for v in value) if isinstance(value, list) else value
                )
        return flat

    return flatten(settings)


def check_dataset_matches_task(dataset: Dataset, spec: TaskSpec) -> tuple[list[float], list[float]]:
    """The task's action bounds, after checking the dataset was recorded for this task (when
    it says) and its dimensions agree with the task's env."""
    recorded = dataset.attrs.get("task")
    if isinstance(recorded, bytes):
        recorded = recorded.decode()
    if recorded and str(recorded) != spec.name:
        raise TrainingError(
            f"{dataset.path}: the dataset was recorded for task {recorded!r}, not {spec.name!r}; "
            f"pass --task {recorded} or the dataset collected for {spec.name}"
        )

    spaces = env_spaces(spec)
    obs_dim, action_dim = spaces.obs_dim, spaces.action_dim
    if dataset.obs_dim != obs_dim or dataset.action_dim != action_dim:
        raise TrainingError(
            f"{dataset.path}: observations/actions are {dataset.obs_dim}/{dataset.action_dim}-"
            f"dimensional but {spec.name} ({spec.env_id}) has {obs_dim}/{action_dim}; "
            "pass the dataset collected for this task"
        )
    return list(spaces.action_low), list(spaces.action_high)


class ScalarLog:
    """Averages log values between rows and appends them to ``scalars.csv``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sums: dict[str, Any] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.columns: list[str] | None = None
        if path.exists():
            with path.open() as handle:
                header = handle.readline().strip()
            self.columns = header.split(",") if header else None

    def add(self, values: Logs) -> None:
        """Accumulate one update's values; device tensors stay on the device until a row."""
        for key, value in values.items():
            self.sums[key] = self.sums[key] + (
                value.detach() if isinstance(value, torch.Tensor) else value
            )
            self.counts[key] += 1

    def write_row(self, step: int, wall_seconds: float, stage: str) -> dict[str, float | str]:
        """Append the averages since the last row (the one host read-back per row)."""
        row: dict[str, float | str] = {"step": step, "stage": stage, "wall_seconds": wall_seconds}
        row.update({k: float(self.sums[k]) / self.counts[k] for k in sorted(self.sums)})
        known = self.columns or []
        if not known or not set(row) <= set(known):
            self._widen([*known, *(k for k in row if k not in known)])
        columns = self.columns or list(row)
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow([row.get(c, "") for c in columns])
        self.sums.clear()
        self.counts.clear()
        return row

    def _widen(self, columns: list[str]) -> None:
        """Rewrite the file under a header with new columns (a later stage logs new values)."""
        rows: list[dict[str, str]] = []
        if self.path.exists() and self.columns is not None:
            with self.path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        self.columns = columns

        def rewrite(temporary: Path) -> None:
            with temporary.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns, restval="")
                writer.writeheader()
                writer.writerows(rows)

        if not self.path.parent.is_dir():  # deleted mid-run: fail, never quietly recreate it
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self.path))
        atomic_write(self.path, rewrite)  # a crash mid-rewrite must not lose the earlier rows


def evaluate_actor(
    actor: SquashedGaussianActor,
    spec: TaskSpec,
    cost_limit: float,
    run_config: RunConfig,
    progress: bool = False,
) -> dict[str, Any]:
    """Deterministic actor in the real environment on the fixed seed list, DSRL-normalised."""
    from safepolicy.rollout import rollout_episodes

    device = next(actor.parameters()).device

    @torch.no_grad()
    def policy(observations: np.ndarray) -> np.ndarray:
        batch = torch.as_tensor(observations, dtype=torch.float32, device=device)
        return actor(batch).cpu().numpy()

    records = rollout_episodes(
        policy,
        spec,
        run_config.eval_episodes,
        seed=run_config.eval_seed,
        num_envs=min(run_config.eval_envs, run_config.eval_episodes),
        progress=progress,
    )
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


def build_context(
    dataset: Dataset | None,
    spec: TaskSpec,
    run_config: RunConfig,
    cost_limit: float,
    device: torch.device,
    seed: int,
    total_steps: int | None = None,
) -> TrainingContext:
    """The problem an algorithm is given: ``dataset`` (checked against ``spec``'s env) on
    ``device``, with the run's sizes and a minibatch generator seeded with ``seed``. Without a
    dataset (an online algorithm) the sizes come from the task's env and ``buffer`` is None."""
    from safepolicy.training.data import OfflineBuffer

    buffer = None
    if dataset is None:
        spaces = env_spaces(spec)
        obs_dim, action_dim = spaces.obs_dim, spaces.action_dim
        action_low, action_high = list(spaces.action_low), list(spaces.action_high)
    else:
        action_low, action_high = check_dataset_matches_task(dataset, spec)
        obs_dim, action_dim = dataset.obs_dim, dataset.action_dim
        buffer = OfflineBuffer(
            dataset,
            np.asarray(action_low),
            np.asarray(action_high),
            device,
            reward_scale=run_config.reward_scale,
        )
    return TrainingContext(
        buffer=buffer,
        obs_dim=obs_dim,
        action_dim=action_dim,
        action_low=action_low,
        action_high=action_high,
        hidden_sizes=run_config.hidden_sizes,
        gamma=run_config.gamma,
        batch_size=run_config.batch_size,
        cost_limit=cost_limit,
        episode_length=spec.max_episode_steps,
        total_steps=run_config.steps if total_steps is None else total_steps,
        device=device,
        generator=torch.Generator().manual_seed(seed),
        seed=seed,
        precision=run_config.precision,
        dataset=dataset,
        network_sizes={
            role: sizes
            for role, sizes in (
                ("actor", run_config.actor_hidden_sizes),
                ("critic", run_config.critic_hidden_sizes),
                ("value", run_config.value_hidden_sizes),
            )
            if sizes
        },
        task=spec,
        reward_scale=run_config.reward_scale,
    )


def stage_checkpoint_path(run_dir: Path, stage: str) -> Path:
    """Where a run keeps the checkpoint written at the end of ``stage``."""
    return run_dir / "checkpoints" / f"stage-{stage}.pt"


def stage_bounds(stages: list[Stage]) -> list[tuple[Stage, int, int]]:
    """(stage, first global step - 1, last global step) for each stage in order."""
    bounds, end = [], 0
    for stage in stages:
        bounds.append((stage, end, end + stage.steps))
        end += stage.steps
    return bounds


def load_reused_stage(
    reuse: Mapping[str, Path],
    spec: AlgorithmSpec,
    stages: list[Stage],
    resolved: dict[str, Any],
    device: torch.device,
) -> tuple[str, dict[str, Any], int, StageSource | None] | None:
    """The stage checkpoint named by ``--reuse-stage``: (stage, state, global step after it,
    the other algorithm it came from when ``spec.stage_sources`` allows one, else None)."""
    if not reuse:
        return None
    if len(reuse) > 1:
        raise TrainingError(
            f"--reuse-stage names one stage (the last one to skip); got {', '.join(reuse)}"
        )
    ((stage_name, source),) = reuse.items()
    ends = {stage.name: end for stage, _, end in stage_bounds(stages)}
    if stage_name not in ends:
        raise TrainingError(
            f"--reuse-stage {stage_name}: {resolved['algorithm']} has no stage "
            f"{stage_name!r}; its stages are {', '.join(ends)}"
        )
    other = spec.stage_sources.get(stage_name)
    path = Path(source)
    if path.is_dir():
        path = stage_checkpoint_path(Path(source), stage_name)
        if not path.is_file() and other is not None:
            path = stage_checkpoint_path(Path(source), other.stage)
    if not path.is_file():
        raise TrainingError(
            f"--reuse-stage {stage_name}={source}: no stage checkpoint at "
            f"{path}; name a run directory that finished that stage or its "
            f"checkpoints/stage-{stage_name}.pt"
        )
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as error:
        raise TrainingError(
            f"--reuse-stage {stage_name}={source}: {path} is not a readable "
            f"checkpoint ({error.__class__.__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(
            f"--reuse-stage {stage_name}={source}: {path} is not a run checkpoint of this version"
        )
    saved = state["config"]
    foreign = other if other is not None and saved.get("algorithm") == other.algorithm else None
    for key in ("algorithm", "task", "dataset_sha256"):
        if key == "algorithm" and foreign is not None:
            continue
        if saved.get(key) != resolved[key]:
            allowed = f" (or {other.algorithm})" if other is not None else ""
            raise TrainingError(
                f"--reuse-stage {stage_name}={source}: that run's {key} is "
                f"{saved.get(key)!r}, this run's is {resolved[key]!r}{allowed}; "
                "a stage can only be reused by the same algorithm on the same "
                "data"
            )
    expected_stage = foreign.stage if foreign is not None else stage_name
    if state.get("stage") != expected_stage:
        raise TrainingError(
            f"--reuse-stage {stage_name}={source}: {path} was written at the "
            f"end of stage {state.get('stage')!r}, not {expected_stage!r}"
        )
    return stage_name, state, ends[stage_name], foreign


def train(request: TrainRequest) -> Path:
    """Run (or resume) one training job and return the run directory with ``actor.pt``."""
    task = get_task(request.task)
    spec, run_config, algorithm_config = build_configs(request)
    try:
        stages = checked_stages(spec, algorithm_config, run_config)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    total_steps = sum(stage.steps for stage in stages)
    if request.dataset is None and spec.needs_dataset:
        raise TrainingError(f"{request.algorithm} learns from a dataset; pass --dataset FILE.h5")
    dataset = None if request.dataset is None else load_dataset(request.dataset)
    device = resolve_device(request.device)
    context = build_context(
        dataset, task, run_config, request.cost_limit, device, request.seed, total_steps=total_steps
    )
    generator = context.generator
    out = Path(request.out)
    checkpoint_path = out / "checkpoints" / "last.pt"
    if out.exists() and any(out.iterdir()) and not request.resume:
        raise TrainingError(
            f"{out}: run directory is not empty; pass --resume to continue it or choose a new --out"
        )

    torch.manual_seed(request.seed)
    algorithm: Algorithm = spec.build(algorithm_config, context)

    dataset_hash = None if request.dataset is None else file_sha256(request.dataset)
    resolved: dict[str, Any] = {
        "algorithm": request.algorithm,
        "task": task.name,
        "env_id": task.env_id,
        "cost_limit": request.cost_limit,
        "seed": request.seed,
        "device": str(device),
        "dataset": None if request.dataset is None else str(request.dataset),
        "dataset_sha256": dataset_hash,
        "run": run_config.model_dump(),
        "algorithm_config": algorithm_config.model_dump(),
        "stages": {stage.name: stage.steps for stage in stages},
        "reused_stages": {name: str(path) for name, path in request.reuse_stages.items()},
    }
    start_step = 0
    if request.resume and not checkpoint_path.exists() and out.exists() and any(out.iterdir()):
        raise TrainingError(
            f"{checkpoint_path}: no checkpoint to resume from (the run stopped "
            "before its first checkpoint, or it was deleted); start a new --out "
            "without --resume"
        )
    if request.resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(
                f"{checkpoint_path}: not a checkpoint of this version "
                f"({state.get('format')!r}); start a new --out"
            )
        changed = differing_keys(state.get("config"), resolved)
        if changed:
            raise TrainingError(
                f"{checkpoint_path}: this run was started with other settings; "
                f"differing: {', '.join(changed)}. Resume with the same "
                "arguments or choose a new --out"
            )
        algorithm.load_state_dict(state["algorithm"])
        generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        start_step = int(state["step"])
    else:
        reused = load_reused_stage(request.reuse_stages, spec, stages, resolved, device)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(resolved, indent=2))
        (out / "scalars.csv").unlink(missing_ok=True)
        if reused is not None:
            _, state, start_step, foreign = reused
            if foreign is not None:  # another algorithm's stage, e.g. a `train cpq` run's
                foreign.load(algorithm, state["algorithm"])
            else:
                algorithm.load_state_dict(state["algorithm"])
            if state["config"]["seed"] == request.seed:  # same stream as the reused run
                generator.set_state(state["rng"]["generator"])
                torch.set_rng_state(state["rng"]["torch"])

    def save_checkpoint(step: int, stage: str | None) -> None:
        if not out.is_dir():  # saving would quietly recreate a run directory someone deleted
            raise TrainingError(
                f"{out}: the run directory disappeared at step {step}; "
                "nothing was saved. Start a new --out"
            )
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": resolved,
            "step": step,
            "stage": stage,
            "algorithm": algorithm.state_dict(),
            "rng": _rng_state(generator),
        }
        atomic_torch_save(payload, checkpoint_path)
        if stage is not None:
            atomic_torch_save(payload, stage_checkpoint_path(out, stage))

    log = ScalarLog(out / "scalars.csv")
    started = time.perf_counter()
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        disable=not request.progress,
        desc=f"{request.algorithm} {task.name}",
        unit="step",
        dynamic_ncols=True,
    )
    for stage, before, end in stage_bounds(stages):
        if start_step >= end:
            continue
        if start_step <= before:  # the stage begins here, not mid-way through it
            algorithm.start_stage(stage.name)
        bar.set_description(f"{request.algorithm} {task.name} [{stage.name}]")
        for step in range(max(before, start_step) + 1, end + 1):
            log.add(algorithm.step(stage.name))
            bar.update(1)
            if step % run_config.log_every == 0 or step == end:
                try:
                    row = log.write_row(step, time.perf_counter() - started, stage.name)
                except OSError as error:  # e.g. the run directory was deleted mid-run
                    raise TrainingError(
                        f"{out}: cannot write the training log at step {step} "
                        f"({error.strerror}); start a new --out"
                    ) from None
                bar.set_postfix(
                    {
                        k.split("/")[-1]: f"{v:.3g}"
                        for k, v in row.items()
                        if k in ("loss/critic", "loss/actor", "o3srl/expected_lambda")
                        and isinstance(v, float)
                    }
                )
            if step == end:
                save_checkpoint(step, stage.name)
            elif step % run_config.checkpoint_every == 0:
                save_checkpoint(step, None)
    bar.close()

    actor = algorithm.actor
    actor.eval()
    evaluation = (
        evaluate_actor(actor, task, request.cost_limit, run_config, progress=request.progress)
        if run_config.eval_episodes > 0
        else None
    )
    if evaluation is not None:
        atomic_write_text(out / "evaluation.json", json.dumps(evaluation, indent=2))
    if (out / "scalars.csv").exists():  # absent when reused stages left nothing to train
        plot_training_curves(
            out / "scalars.csv", out / CURVES_FILENAME, request.cost_limit, evaluation
        )
    metadata = ActorMetadata(
        task=task.name,
        env_id=task.env_id,
        algorithm=request.algorithm,
        cost_limit=request.cost_limit,
        seed=request.seed,
        config={
            "run": resolved["run"],
            "algorithm": resolved["algorithm_config"],
            "stages": resolved["stages"],
            "reused_stages": resolved["reused_stages"],
        },
        dataset_path=None if request.dataset is None else str(Path(request.dataset).resolve()),
        dataset_sha256=dataset_hash,
        code_version=code_version(),
        evaluation=evaluation,
    )
    save_actor(out, actor.cpu(), metadata)
    return out
