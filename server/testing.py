"""Helpers for tests and benchmarks: small real policy artifacts and free ports.

:func:`make_policy` exports an untrained ``SquashedGaussianActor`` through the real exporter,
so it imports torch; it is imported lazily and never by the server runtime.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

import numpy as np

from safepolicy.export.artifact import AuditVerdict, write_audit_verdict


def make_policy(repo: Path, name: str = "ballrun", version: int | None = None, *,
                obs_dim: int = 8, action_dim: int = 2, hidden_sizes: tuple[int, ...] = (32, 32),
                cost_limit: float = 10.0, seed: int = 0,
                audit: Literal["PASS", "FAIL"] | None = None) -> Path:
    """Export a small untrained actor as ``repo/name/version``; optionally write an audit."""
    import torch  # lazily: the server never imports this module

    from safepolicy.export.onnx_export import export_actor
    from safepolicy.training.checkpoint import ActorMetadata
    from safepolicy.training.networks import SquashedGaussianActor

    torch.manual_seed(seed)
    # default bounds [-1, 1]: at the time of writing the exporter's verification rejected
    # actors with other bounds (reported to its owner)
    actor = SquashedGaussianActor(obs_dim, action_dim, hidden_sizes)
    metadata = ActorMetadata(task="BallRun", env_id="SafetyBallRun-v0", algorithm="bc-safe",
                             cost_limit=cost_limit, seed=seed)
    version_dir = export_actor(actor, metadata, repo, name, version)
    if audit is not None:
        write_audit_verdict(version_dir, AuditVerdict(
            verdict=audit, task="BallRun", cost_limit=cost_limit, confidence=0.95, episodes=10,
            mean_cost=1.0, cost_upper_bound=2.0, violation_rate=0.0))
    return version_dir


def observations(batch: int, obs_dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, obs_dim)).astype(np.float32)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for metrics and subprocess servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def add_version(source: Path, repo: Path, name: str, version: int) -> Path:
    """Copy a version directory into ``repo/name/version`` atomically (copy, then rename)."""
    import shutil

    target = repo / name / str(version)
    staging = repo / name / f".tmp-copy-{version}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, staging)
    staging.rename(target)
    return target
