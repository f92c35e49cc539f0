"""Export a trained :class:`~training.networks.SquashedGaussianActor` to a policy artifact.

The exported graph (see :mod:`export.artifact` for the full contract) is::

    obs    float32 [batch, obs_dim]      raw observations
    action float32 [batch, action_dim]   low + (tanh(mean) + 1) / 2 * (high - low)
    mean   float32 [batch, action_dim]   pre-tanh Gaussian mean
    log_std float32 [batch, action_dim]  pre-tanh Gaussian log-std (clamped as in training)

Observation normalisation, tanh and scaling to the action bounds live inside the graph, so a
server feeds environment observations as they are and gets actions in the environment's units.

Every export is verified before it becomes visible: ``onnx.checker``, the artifact opened with
the server's own loader (:func:`export.artifact.load_policy`), and onnxruntime's outputs against
the torch actor's on a batch of observations (max abs difference at most ``TOLERANCE``). The
version is built in a hidden temporary directory inside ``MODEL_REPO/NAME`` and renamed into
place only after that; any failure removes the temporary directory and raises
:class:`ExportError`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from safepolicy.errors import SafepolicyError
from safepolicy.export.artifact import (
    INPUT_NAME,
    ONNX_FILENAME,
    ONNX_METADATA_KEY,
    OUTPUT_NAMES,
    SIGNATURE,
    ArtifactError,
    PolicyMetadata,
    load_policy,
    utc_now,
    write_metadata,
)
from safepolicy.export.repository import (
    TEMP_PREFIX,
    ModelRepository,
    RepositoryError,
    check_name,
    check_version,
)
from safepolicy.fileio import fsync_directory, make_staging_dir
from safepolicy.training.checkpoint import ActorMetadata, CheckpointError, load_actor
from safepolicy.training.networks import LOG_STD_MAX, LOG_STD_MIN, SquashedGaussianActor

log = logging.getLogger(__name__)

# onnxruntime 1.31 runs opsets up to 23; the legacy TorchScript exporter writes up to 20.
# 17 is the oldest opset with everything this graph needs and is read by every recent runtime.
OPSET = 17
TOLERANCE = 1e-5
STALE_STAGING_S = 3600.0  # staging untouched this long was left by a killed export
VERIFICATION_BATCH = 256
VERIFICATION_SEED = 0


class ExportError(SafepolicyError):
    """An export that cannot be done; the message names the input and says what to do."""


class _PolicyGraph(nn.Module):
    """What the ONNX graph computes: the actor's deterministic action and its Gaussian."""

    def __init__(self, actor: SquashedGaussianActor) -> None:
        super().__init__()
        self.actor = actor

    def forward(
        self,
        observations: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_std = self.actor.distribution(observations)
        return self.actor.scale(torch.tanh(mean)), mean, log_std


@dataclass(frozen=True)
class VerificationObservations:
    """The observations an export is checked on, and where they came from."""

    observations: np.ndarray
    source: str


def default_verification_observations(
    actor: SquashedGaussianActor, metadata: ActorMetadata, count: int = VERIFICATION_BATCH
) -> VerificationObservations:
    """Observations from the run's dataset when it is readable, else random ones around the
    actor's normalizer statistics (mean +- 3 std, so the tails are exercised too)."""
    if metadata.dataset_path:
        from safepolicy.datasets import DatasetError, load_dataset

        try:
            dataset = load_dataset(metadata.dataset_path)
        except (DatasetError, OSError) as error:
            log.info("verifying on random observations: dataset unreadable (%s)", error)
        else:
            if dataset.obs_dim == actor.obs_dim and len(dataset) > 0:
                rows = np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).astype(int)
                return VerificationObservations(dataset.observations[rows], "dataset")
            log.warning(
                "verifying on random observations: dataset %s has obs_dim %d, actor %d",
                metadata.dataset_path,
                dataset.obs_dim,
                actor.obs_dim,
            )
    rng = np.random.default_rng(VERIFICATION_SEED)
    mean = actor.normalizer.mean.detach().cpu().numpy()
    std = actor.normalizer.std.detach().cpu().numpy()
    observations = mean + 3.0 * std * rng.uniform(-1.0, 1.0, size=(count, actor.obs_dim))
    return VerificationObservations(observations.astype(np.float32), "random")


def _json_safe(value: Any) -> Any:
    """A JSON round-trip; values JSON cannot hold (paths, numpy scalars) become strings."""
    return json.loads(json.dumps(value, default=str))


def build_metadata(
    actor: SquashedGaussianActor, actor_metadata: ActorMetadata, name: str, version: int
) -> PolicyMetadata:
    """The artifact metadata for ``actor``: its shapes and bounds plus the run's lineage."""
    trained_at = (
        datetime.fromtimestamp(actor_metadata.created_at, UTC)
        if actor_metadata.created_at
        else None
    )
    return PolicyMetadata(
        name=name,
        version=version,
        task=actor_metadata.task,
        env_id=actor_metadata.env_id,
        obs_dim=actor.obs_dim,
        action_dim=actor.action_dim,
        action_low=actor.action_low.tolist(),
        action_high=actor.action_high.tolist(),
        algorithm=actor_metadata.algorithm,
        cost_limit=actor_metadata.cost_limit,
        config=_json_safe(actor_metadata.config),
        dataset_path=actor_metadata.dataset_path,
        dataset_sha256=actor_metadata.dataset_sha256,
        code_version=actor_metadata.code_version,
        seed=actor_metadata.seed,
        trained_at=trained_at,
        created_at=utc_now(),
        evaluation=_json_safe(actor_metadata.evaluation),
        hidden_sizes=list(actor.hidden_sizes),
        log_std_min=LOG_STD_MIN,
        log_std_max=LOG_STD_MAX,
        onnx_opset=OPSET,
        signature=SIGNATURE,
    )


def _to_onnx(actor: SquashedGaussianActor, example: np.ndarray, path: Path) -> onnx.ModelProto:
    """Trace the actor with the legacy exporter into ``path``; return it with fixed output dims."""
    with warnings.catch_warnings():
        # the TorchScript exporter warns that it is legacy on every call; it is what works here
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            _PolicyGraph(actor),
            (torch.from_numpy(example),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={key: {0: "batch"} for key in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(path))
    # chunk() leaves the mean/log_std widths symbolic; pin them so readers can check shapes
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        dims[0].dim_param = "batch"
        dims[1].dim_value = actor.action_dim
    return model


def _torch_reference(
    actor: SquashedGaussianActor,
    observations: np.ndarray,
) -> dict[str, np.ndarray]:
    # computed through the actor's own methods, not _PolicyGraph, so a graph that drops a step
    # fails verification instead of agreeing with itself
    with torch.no_grad():
        tensor = torch.from_numpy(observations)
        mean, log_std = actor.distribution(tensor)
        action = actor(tensor)
    return {"action": action.numpy(), "mean": mean.numpy(), "log_std": log_std.numpy()}


def verify_artifact(
    version_dir: Path, actor: SquashedGaussianActor, observations: np.ndarray
) -> dict[str, float]:
    """Check the artifact in ``version_dir`` and compare it with ``actor``; return max abs diffs.

    Raises :class:`ExportError` when ``onnx.checker`` rejects the model, the server's loader
    cannot open it, or any output differs from torch by more than ``TOLERANCE``.
    """
    model_path = version_dir / ONNX_FILENAME
    try:
        onnx.checker.check_model(str(model_path), full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"exported model fails onnx.checker: {error}") from error
    try:
        policy = load_policy(version_dir, providers=["CPUExecutionProvider"], threads=1)
    except ArtifactError as error:
        raise ExportError(f"exported artifact does not load: {error}") from error
    reference = _torch_reference(actor, observations)
    outputs = policy.outputs(observations)._asdict()
    differences: dict[str, float] = {}
    for key in OUTPUT_NAMES:
        expected = reference[key]
        if not np.isfinite(expected).all():
            raise ExportError(
                f"the torch actor itself produces non-finite {key!r} on the "
                "verification observations; check its normalizer std for zeros"
            )
        if outputs[key].shape != expected.shape:
            raise ExportError(
                f"onnxruntime {key!r} has shape {outputs[key].shape}, torch {expected.shape}"
            )
        difference = float(np.max(np.abs(outputs[key].astype(np.float64) - expected)))
        if not difference <= TOLERANCE:  # also catches NaN
            raise ExportError(
                f"onnxruntime and torch disagree on {key!r}: max abs difference {difference:.3g} "
                f"> {TOLERANCE:g}; the exported graph does not compute what the actor does"
            )
        differences[key] = difference
    return differences


def _resolve_version(repository: ModelRepository, name: str, version: int | None) -> int:
    if version is None:
        return repository.next_version(name)
    try:
        check_version(version)
    except RepositoryError as error:
        raise ExportError(str(error)) from error
    if repository.path_for(name, version).exists():
        raise ExportError(
            f"{repository.path_for(name, version)}: version {version} of {name!r} already exists; "
            f"versions are immutable, omit --version to get {repository.next_version(name)}"
        )
    return version


def export_actor(
    actor: SquashedGaussianActor,
    actor_metadata: ActorMetadata,
    repo: str | os.PathLike[str],
    name: str,
    version: int | None = None,
    verification_observations: np.ndarray | None = None,
) -> Path:
    """Export ``actor`` as ``repo/name/version`` and return that version directory.

    ``version`` defaults to the next free one. ``verification_observations`` (float32
    ``[n, obs_dim]``) overrides the observations the export is checked on (default:
    :func:`default_verification_observations`). The version appears atomically and verified,
    or not at all.
    """
    try:
        repository = ModelRepository(repo)
        check_name(name)
    except RepositoryError as error:
        raise ExportError(str(error)) from error
    if not isinstance(actor, SquashedGaussianActor):
        raise ExportError(f"expected a SquashedGaussianActor, got {type(actor).__name__}")
    version = _resolve_version(repository, name, version)
    actor = copy.deepcopy(actor).cpu().float().eval()

    if verification_observations is None:
        checked = default_verification_observations(actor, actor_metadata)
    else:
        observations = np.asarray(verification_observations, dtype=np.float32)
        if (
            observations.ndim != 2
            or observations.shape[1] != actor.obs_dim
            or not len(observations)
        ):
            raise ExportError(
                f"verification observations must have shape [n >= 1, "
                f"{actor.obs_dim}], got {list(observations.shape)}"
            )
        checked = VerificationObservations(observations, "given")
    observations = np.ascontiguousarray(checked.observations, dtype=np.float32)

    name_dir = repository.root / name
    created_name_dir = not name_dir.exists()
    try:
        name_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"{name_dir}: cannot create the policy directory ({error})") from error
    remove_stale_staging(name_dir)
    staging = make_staging_dir(name_dir, TEMP_PREFIX)
    try:
        metadata = build_metadata(actor, actor_metadata, name, version)
        model = _to_onnx(actor, observations[: min(len(observations), 2)], staging / ONNX_FILENAME)
        # the metadata's verification figures are only known after verifying, but both copies
        # must match: verify a first build, then write the figures and re-check the final files
        differences = _write_and_verify(staging, model, metadata, actor, observations)
        metadata = metadata.model_copy(
            update={
                "verification": {
                    "source": checked.source,
                    "observations": len(observations),
                    "tolerance": TOLERANCE,
                    "max_abs_difference": differences,
                }
            }
        )
        _write_and_verify(staging, model, metadata, actor, observations)
        target = repository.path_for(name, version)
        if target.exists():
            raise ExportError(
                f"{target}: version {version} of {name!r} appeared during the "
                "export (a concurrent export?); export again"
            )
        _fsync_tree(staging)
        os.rename(staging, target)
        fsync_directory(name_dir)  # make the rename itself durable
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if created_name_dir:
            with contextlib.suppress(OSError):  # another export put something there meanwhile
                name_dir.rmdir()
        if isinstance(error, ExportError | KeyboardInterrupt | SystemExit):
            raise
        raise ExportError(f"export of {name!r} version {version} failed: {error}") from error
    log.info("exported %s version %d to %s", name, version, target)
    return target


def remove_stale_staging(name_dir: Path, older_than_s: float = STALE_STAGING_S) -> list[Path]:
    """Remove staging directories an export killed mid-way left in ``name_dir`` (untouched for
    ``older_than_s``; a live export finishes in seconds, so its staging is never that old);
    return what was removed. Ones that cannot be removed are left and logged."""
    removed = []
    cutoff = datetime.now(UTC).timestamp() - older_than_s
    for entry in name_dir.iterdir():
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        try:
            if entry.lstat().st_mtime >= cutoff or not entry.is_dir():
                continue
            shutil.rmtree(entry)
        except OSError as error:
            log.warning("cannot remove stale export staging %s: %s", entry, error)
            continue
        log.info("removed stale export staging %s", entry)
        removed.append(entry)
    return removed


def _fsync_tree(directory: Path) -> None:
    """Flush the files of a staged version to disk, so a crash cannot leave a renamed version
    directory with truncated files."""
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    fsync_directory(directory)


def _write_and_verify(
    staging: Path,
    model: onnx.ModelProto,
    metadata: PolicyMetadata,
    actor: SquashedGaussianActor,
    observations: np.ndarray,
) -> dict[str, float]:
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {ONNX_METADATA_KEY: metadata.model_dump_json()})
    model.producer_name = "safepolicy"
    model.doc_string = SIGNATURE
    onnx.save_model(model, str(staging / ONNX_FILENAME))
    write_metadata(staging, metadata)
    return verify_artifact(staging, actor, observations)


def export_run(
    run_dir: str | os.PathLike[str],
    repo: str | os.PathLike[str],
    name: str,
    version: int | None = None,
) -> Path:
    """Export ``RUN_DIR/actor.pt`` (see :func:`export_actor`) and return the version directory."""
    run_path = Path(run_dir)
    if not run_path.is_dir():
        raise ExportError(
            f"{run_path}: no such run directory; pass the --out directory of `safepolicy train`"
        )
    try:
        actor, actor_metadata = load_actor(run_path)
    except CheckpointError as error:
        raise ExportError(str(error)) from error
    return export_actor(actor, actor_metadata, repo, name, version=version)


def max_abs(values: dict[str, float]) -> float:
    """The largest of the per-output differences (for one-line reports)."""
    return max(values.values()) if values else math.nan


__all__ = [
    "OPSET",
    "TOLERANCE",
    "ExportError",
    "build_metadata",
    "default_verification_observations",
    "export_actor",
    "export_run",
    "verify_artifact",
]
