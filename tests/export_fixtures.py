"""Helpers that build small actors, runs and exported artifacts for tests (export, server, audit).

Every algorithm ends in the same ``SquashedGaussianActor`` checkpoint, so a test artifact needs
no training: an untrained actor with non-trivial normalizer statistics and asymmetric action
bounds exercises every step the graph must bake in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from safepolicy.training.checkpoint import ActorMetadata, save_actor
from safepolicy.training.networks import SquashedGaussianActor

LOW = (-2.0, 0.0)
HIGH = (1.0, 3.0)


def make_actor(
    obs_dim: int = 6,
    action_dim: int = 2,
    hidden_sizes: tuple[int, ...] = (32, 32),
    low: tuple[float, ...] = LOW,
    high: tuple[float, ...] = HIGH,
    seed: int = 0,
) -> SquashedGaussianActor:
    """An untrained actor whose normalizer is far from identity (mean 5..15, std 0.5..4)."""
    torch.manual_seed(seed)
    actor = SquashedGaussianActor(obs_dim, action_dim, hidden_sizes, list(low), list(high))
    actor.normalizer.set_statistics(
        torch.linspace(5.0, 15.0, obs_dim), torch.linspace(0.5, 4.0, obs_dim)
    )
    return actor.eval()


def make_metadata(
    algorithm: str = "o3srl",
    dataset_path: str | None = None,
    task: str = "BallRun",
    env_id: str = "SafetyBallRun-v0",
) -> ActorMetadata:
    """Lineage for a test actor."""
    return ActorMetadata(
        task=task,
        env_id=env_id,
        algorithm=algorithm,
        cost_limit=20.0,
        seed=7,
        config={"algorithm": algorithm, "steps": 10, "hidden": [32, 32]},
        dataset_path=dataset_path,
        dataset_sha256=None,
        code_version="test",
        evaluation={"normalized_return": 0.5, "normalized_cost": 0.8},
    )


def make_run(
    run_dir: Path, actor: SquashedGaussianActor | None = None, metadata: ActorMetadata | None = None
) -> Path:
    """A run directory with ``actor.pt`` as training writes it."""
    save_actor(
        run_dir,
        actor if actor is not None else make_actor(),
        metadata if metadata is not None else make_metadata(),
    )
    return run_dir


def observations_around(
    actor: SquashedGaussianActor, count: int = 64, spread: float = 4.0, seed: int = 1
) -> np.ndarray:
    """Raw observations spread around the actor's normalizer statistics."""
    rng = np.random.default_rng(seed)
    mean = actor.normalizer.mean.numpy()
    std = actor.normalizer.std.numpy()
    return (mean + spread * std * rng.standard_normal((count, actor.obs_dim))).astype(np.float32)


def export_test_policy(
    repo: Path, name: str = "policy", obs_dim: int = 6, action_dim: int = 2, **kwargs: object
) -> Path:
    """Export an untrained test actor into ``repo`` and return its version directory."""
    from safepolicy.export.onnx_export import export_actor

    bounds = (LOW, HIGH) if action_dim == 2 else ((-1.0,) * action_dim, (1.0,) * action_dim)
    actor = make_actor(obs_dim=obs_dim, action_dim=action_dim, low=bounds[0], high=bounds[1])
    return export_actor(actor, make_metadata(), repo, name, **kwargs)  # type: ignore[arg-type]
