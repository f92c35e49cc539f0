"""The final actor checkpoint: the contract between every training algorithm and the exporter.

A run directory holds ``actor.pt`` when training finishes. It is a ``torch.save`` of a plain
dict (loadable with ``weights_only=True``):

- ``format``: ``"safepolicy.actor/v1"``; anything else is rejected as the wrong kind of file.
- ``actor_config``: ``SquashedGaussianActor.config()``, the constructor arguments.
- ``actor_state``: the actor's state dict (observation statistics and bounds included).
- ``metadata``: ``ActorMetadata`` below as a dict: task, algorithm, cost limit, config, dataset
  hash, seed, code version, creation time, evaluation figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from safepolicy.errors import SafepolicyError
from safepolicy.fileio import atomic_write
from safepolicy.training.networks import SquashedGaussianActor

ACTOR_FORMAT = "safepolicy.actor/v1"
ACTOR_FILENAME = "actor.pt"


class CheckpointError(SafepolicyError, ValueError):
    """A checkpoint that is missing, of the wrong kind, or damaged."""


@dataclass
class ActorMetadata:
    """Lineage of a trained actor; the exporter copies it into the artifact's metadata."""

    task: str
    env_id: str
    algorithm: str
    cost_limit: float
    seed: int
    config: dict[str, Any] = field(default_factory=dict)
    dataset_path: str | None = None
    dataset_sha256: str | None = None
    code_version: str = ""
    created_at: float = field(default_factory=time.time)
    evaluation: dict[str, Any] | None = None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (dataset lineage)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_torch_save(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: never half-written, and
    with the umask's mode (readable by a server under another uid), see safepolicy.fileio."""
    return atomic_write(path, lambda temporary: torch.save(payload, temporary))


def save_actor(
    run_dir: str | os.PathLike[str], actor: SquashedGaussianActor, metadata: ActorMetadata
) -> Path:
    """Write the final actor checkpoint ``RUN_DIR/actor.pt``."""
    payload = {
        "format": ACTOR_FORMAT,
        "actor_config": actor.config(),
        "actor_state": {k: v.detach().cpu() for k, v in actor.state_dict().items()},
        # Only plain JSON types load under weights_only=True (a Path in a config would not).
        "metadata": json.loads(json.dumps(asdict(metadata), default=str)),
    }
    return atomic_torch_save(payload, Path(run_dir) / ACTOR_FILENAME)


def load_actor(path: str | os.PathLike[str]) -> tuple[SquashedGaussianActor, ActorMetadata]:
    """Read a final actor checkpoint (a run directory or the ``actor.pt`` file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / ACTOR_FILENAME
    if not path.exists():
        raise CheckpointError(
            f"{path}: no final actor checkpoint; train a run first "
            f"(`safepolicy train ... --out RUN_DIR`) and pass that RUN_DIR"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for damaged files
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({error})") from error
    if not isinstance(payload, dict) or payload.get("format") != ACTOR_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path}: not a safepolicy actor checkpoint (format {found!r}, expected "
            f"{ACTOR_FORMAT!r}); export reads RUN_DIR/{ACTOR_FILENAME}, written at the end "
            "of training"
        )
    try:
        actor = SquashedGaussianActor(**payload["actor_config"])
        actor.load_state_dict(payload["actor_state"])
        metadata = ActorMetadata(**payload["metadata"])
    except (KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{path}: actor checkpoint is damaged ({error})") from error
    actor.eval()
    return actor, metadata
