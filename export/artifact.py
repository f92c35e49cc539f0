"""Policy artifacts: their metadata, their audit verdict, and running them with onnxruntime.

A policy artifact is one directory ``MODEL_REPO/NAME/VERSION/`` (see docs/contracts.md):

- ``policy.onnx``: input ``obs`` float32 ``[batch, obs_dim]`` (raw observations, dynamic batch
  axis); outputs

  - ``action`` float32 ``[batch, action_dim]``: the deterministic action
    ``low + (tanh(mean) + 1) / 2 * (high - low)``; observation normalisation, tanh and the
    scaling to the action bounds are baked into the graph;
  - ``mean`` and ``log_std`` float32 ``[batch, action_dim]``: the pre-tanh Gaussian, for sampling
    ``low + (tanh(mean + exp(log_std) * eps) + 1) / 2 * (high - low)`` with ``eps ~ N(0, I)``.

  The model's ``metadata_props`` hold the metadata JSON under the key ``safepolicy.metadata``.
- ``metadata.json``: :class:`PolicyMetadata`.
- ``audit.json`` (optional, written by the audit, read by the server): :class:`AuditVerdict`.

This module imports neither torch nor the gyms: the server imports it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from safepolicy.errors import SafepolicyError
from safepolicy.fileio import atomic_write_text

METADATA_FILENAME = "metadata.json"
ONNX_FILENAME = "policy.onnx"
AUDIT_FILENAME = "audit.json"
ONNX_METADATA_KEY = "safepolicy.metadata"
METADATA_SCHEMA_VERSION = 1
AUDIT_SCHEMA_VERSION = 1
INPUT_NAME = "obs"
OUTPUT_NAMES = ("action", "mean", "log_std")
SIGNATURE = (
    "obs float32 [batch, obs_dim] (raw observations) -> "
    "action float32 [batch, action_dim] "
    "(deterministic: low + (tanh(mean) + 1) / 2 * (high - low)), "
    "mean float32 [batch, action_dim] and log_std float32 [batch, action_dim] (pre-tanh Gaussian; "
    "sample low + (tanh(mean + exp(log_std) * eps) + 1) / 2 * (high - low), eps ~ N(0, I)); "
    "observation normalisation, tanh and scaling to the action bounds are inside the graph"
)


class ArtifactError(SafepolicyError):
    """A policy artifact or audit file that cannot be opened or used; the message says why."""


class ObservationError(SafepolicyError, ValueError):
    """Observations a policy cannot act on (wrong shape, wrong type, NaN or infinity)."""


def validate_observations(
    observations: Any, obs_dim: int, *, accept_vector: bool = False
) -> np.ndarray:
    """The one observation check (local policies and the server): a C-contiguous float32
    ``[batch, obs_dim]`` array of finite values, or :class:`ObservationError` saying what is
    wrong. ``accept_vector``: a single ``[obs_dim]`` observation becomes a batch of one (the
    server's API allows it; a local caller gets the shape it passed, so it must say ``[None]``).
    An empty batch passes; whether it is allowed is the caller's rule."""
    try:
        array = np.ascontiguousarray(observations, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ObservationError(
            f"observations must be numeric, float32-convertible ({error})"
        ) from error
    if accept_vector and array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.shape[1] != obs_dim:
        allowed = f"[batch, {obs_dim}] or [{obs_dim}]" if accept_vector else f"[batch, {obs_dim}]"
        hint = (
            " (for one observation pass observations[None])"
            if array.ndim == 1 and not accept_vector
            else ""
        )
        raise ObservationError(
            f"observations must have shape {allowed}, got {list(array.shape)}{hint}"
        )
    # x.x is finite exactly when every x is, unless the float32 sum of squares overflows
    # (|x| above about 1e19): one BLAS dot (about 0.4 us against 1.2 us for
    # isfinite().all() on a server request), and the exact check only when it is not finite
    flat = array.reshape(-1)
    if not math.isfinite(flat.dot(flat)):
        finite = np.isfinite(array)
        if not finite.all():
            rows = np.flatnonzero(~finite.all(axis=1))
            raise ObservationError(
                f"observations contain NaN or infinity in row(s) "
                f"{rows[:10].tolist()}{' ...' if rows.size > 10 else ''}; "
                "send finite values"
            )
    return array


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (every timestamp in artifacts is UTC)."""
    return datetime.now(UTC)


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must carry a timezone (ISO 8601 with Z or +00:00)")
    return value.astimezone(UTC)


class PolicyMetadata(BaseModel):
    """Everything a reader needs to know about a policy artifact: shapes, bounds and lineage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    name: str = Field(min_length=1, description="policy name in the model repository")
    version: int = Field(ge=1, description="integer version in the model repository")
    task: str = Field(description="safepolicy task name the actor was trained for")
    env_id: str = Field(description="environment id of the task")
    obs_dim: int = Field(ge=1)
    action_dim: int = Field(ge=1)
    action_low: list[float]
    action_high: list[float]
    algorithm: str = Field(description="training algorithm, e.g. o3srl, bc-safe, td3bc-lag")
    cost_limit: float
    config: dict[str, Any] = Field(default_factory=dict, description="training configuration")
    dataset_path: str | None = None
    dataset_sha256: str | None = None
    code_version: str = ""
    seed: int
    trained_at: datetime | None = Field(default=None, description="when the checkpoint was saved")
    created_at: datetime = Field(default_factory=utc_now, description="when the export ran (UTC)")
    evaluation: dict[str, Any] | None = Field(
        default=None, description="evaluation figures the training run recorded, if any"
    )
    hidden_sizes: list[int] = Field(default_factory=list)
    log_std_min: float | None = None
    log_std_max: float | None = None
    onnx_opset: int = Field(ge=1)
    input_name: Literal["obs"] = "obs"
    output_names: tuple[Literal["action"], Literal["mean"], Literal["log_std"]] = (
        "action",
        "mean",
        "log_std",
    )
    signature: str = SIGNATURE
    verification: dict[str, Any] | None = Field(
        default=None, description="how the export was checked against torch (source, max diffs)"
    )

    @field_validator("created_at", "trained_at")
    @classmethod
    def _utc_timestamps(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _require_utc(value)

    @model_validator(mode="after")
    def _check_bounds(self) -> PolicyMetadata:
        if len(self.action_low) != self.action_dim or len(self.action_high) != self.action_dim:
            raise ValueError(
                f"action_low/action_high need action_dim={self.action_dim} entries, got "
                f"{len(self.action_low)} and {len(self.action_high)}"
            )
        for low, high in zip(self.action_low, self.action_high, strict=True):
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(
                    f"action bounds must be finite with low < high, got [{low}, {high}]"
                )
        return self

    def to_json(self) -> str:
        """The JSON text stored in metadata.json and in the ONNX metadata_props."""
        return self.model_dump_json(indent=2)


class AuditVerdict(BaseModel):
    """The audit's decision about one policy version, stored as ``VERSION_DIR/audit.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    verdict: Literal["PASS", "FAIL"]
    task: str
    cost_limit: float
    confidence: float = Field(gt=0.0, lt=1.0, description="confidence of cost_upper_bound")
    episodes: int = Field(ge=1)
    mean_cost: float
    cost_upper_bound: float
    violation_rate: float = Field(ge=0.0, le=1.0, description="fraction of episodes over the limit")
    created_at: datetime = Field(default_factory=utc_now)
    report_path: str | None = None

    @field_validator("created_at")
    @classmethod
    def _utc_timestamp(cls, value: datetime) -> datetime:
        return _require_utc(value)


def write_metadata(version_dir: str | os.PathLike[str], metadata: PolicyMetadata) -> Path:
    """Write ``metadata.json`` into a version directory atomically."""
    path = Path(version_dir) / METADATA_FILENAME
    atomic_write_text(path, metadata.to_json() + "\n")
    return path


def read_metadata(version_dir: str | os.PathLike[str]) -> PolicyMetadata:
    """Read and validate ``metadata.json``; :class:`ArtifactError` when absent or invalid."""
    path = Path(version_dir) / METADATA_FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ArtifactError(
            f"{path}: cannot read policy metadata ({error.strerror or error}); "
            "is this a version directory written by `safepolicy export`?"
        ) from error
    try:
        return PolicyMetadata.model_validate_json(text)
    except ValidationError as error:
        raise ArtifactError(
            f"{path}: invalid policy metadata ({error}); re-export the policy "
            "with `safepolicy export`"
        ) from error


def write_audit_verdict(version_dir: str | os.PathLike[str], verdict: AuditVerdict) -> Path:
    """Write ``audit.json`` into an existing version directory atomically (readers never see
    a half-written file) and return its path."""
    directory = Path(version_dir)
    if not directory.is_dir():
        raise ArtifactError(
            f"{directory}: not a policy version directory; audit an exported "
            "policy (MODEL_REPO/NAME/VERSION)"
        )
    path = directory / AUDIT_FILENAME
    atomic_write_text(path, verdict.model_dump_json(indent=2) + "\n")
    return path


def read_audit_verdict(version_dir: str | os.PathLike[str]) -> AuditVerdict | None:
    """The version's audit verdict, or ``None`` if it has not been audited.

    Raises :class:`ArtifactError` when ``audit.json`` exists but is unreadable or invalid.
    """
    path = Path(version_dir) / AUDIT_FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ArtifactError(f"{path}: cannot read audit verdict ({error})") from error
    try:
        return AuditVerdict.model_validate_json(text)
    except ValidationError as error:
        raise ArtifactError(
            f"{path}: invalid audit verdict ({error}); re-run `safepolicy audit` on this version"
        ) from error


class PolicyOutputs(NamedTuple):
    """All three graph outputs for a batch, float32 ``[batch, action_dim]`` each."""

    action: np.ndarray
    mean: np.ndarray
    log_std: np.ndarray


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build has it, otherwise the CPU provider."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxPolicy:
    """A loaded policy artifact: ``policy(observations, deterministic=True, rng=None)``.

    Use :func:`load_policy` to build one. Calls are safe from several threads (onnxruntime
    sessions are), and ``rng`` should then be per thread.
    """

    def __init__(self, session: Any, metadata: PolicyMetadata, version_dir: Path) -> None:
        self.session = session
        self.metadata = metadata
        self.version_dir = version_dir
        self.action_low = np.asarray(metadata.action_low, dtype=np.float32)
        self.action_high = np.asarray(metadata.action_high, dtype=np.float32)
        # output-name lists built once: the per-call path should not allocate them
        self._action_output = [OUTPUT_NAMES[0]]
        self._all_outputs = list(OUTPUT_NAMES)

    @property
    def obs_dim(self) -> int:
        return self.metadata.obs_dim

    @property
    def action_dim(self) -> int:
        return self.metadata.action_dim

    def __repr__(self) -> str:
        return (
            f"OnnxPolicy({self.metadata.name!r}, version={self.metadata.version}, "
            f"obs_dim={self.obs_dim}, action_dim={self.action_dim})"
        )

    def check_observations(self, observations: Any) -> np.ndarray:
        """Observations as a C-contiguous float32 ``[batch, obs_dim]`` array, or
        :class:`ObservationError` saying what is wrong (see :func:`validate_observations`)."""
        return validate_observations(observations, self.obs_dim)

    def outputs(self, observations: Any) -> PolicyOutputs:
        """Run the graph: deterministic action and the pre-tanh mean and log-std."""
        array = self.check_observations(observations)
        if array.shape[0] == 0:
            empty = np.empty((0, self.action_dim), dtype=np.float32)
            return PolicyOutputs(empty, empty.copy(), empty.copy())
        action, mean, log_std = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: array})
        return PolicyOutputs(action, mean, log_std)

    def __call__(
        self, observations: Any, deterministic: bool = True, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """Actions float32 ``[batch, action_dim]`` within the action bounds.

        Deterministic actions are the graph's ``action`` output; stochastic ones sample the
        squashed Gaussian in numpy with ``rng`` (a fresh unseeded generator when ``None``).
        """
        array = self.check_observations(observations)
        if array.shape[0] == 0:
            return np.empty((0, self.action_dim), dtype=np.float32)
        return self.act_unchecked(array, deterministic, rng)

    def act_unchecked(
        self,
        observations: np.ndarray,
        deterministic: bool = True,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """:meth:`__call__` without checking its input: the fast path for callers that have.

        ``observations`` must already be what :meth:`check_observations` returns, a
        C-contiguous float32 ``[batch, obs_dim]`` array of finite values, and ``batch >= 1``
        (the policy server validates every request once, on decoding, and calls this). Nothing
        here re-checks it: a wrong shape surfaces as an onnxruntime error, and NaN or infinity
        yield NaN actions, so only pass arrays that came through a check.
        """
        if deterministic:
            (action,) = self.session.run(self._action_output, {INPUT_NAME: observations})
            return action  # type: ignore[no-any-return]  # float32 [batch, action_dim]
        _, mean, log_std = self.session.run(self._all_outputs, {INPUT_NAME: observations})
        generator = rng if rng is not None else np.random.default_rng()
        noise = generator.standard_normal(mean.shape, dtype=np.float32)
        squashed = np.tanh(mean + np.exp(log_std) * noise)
        actions = self.action_low + (squashed + 1.0) * 0.5 * (self.action_high - self.action_low)
        # float32 rounding at |tanh| = 1 must not step outside the bounds
        return np.clip(actions, self.action_low, self.action_high).astype(np.float32, copy=False)


def _graph_dims(value_info: Any) -> list[int | str | None]:
    shape = value_info.shape
    return list(shape) if isinstance(shape, Sequence) and not isinstance(shape, str) else []


def _check_signature(session: Any, metadata: PolicyMetadata, path: Path) -> None:
    inputs = session.get_inputs()
    outputs = {output.name: output for output in session.get_outputs()}
    problems: list[str] = []
    if [i.name for i in inputs] != [INPUT_NAME]:
        problems.append(f"inputs {[i.name for i in inputs]}, expected ['{INPUT_NAME}']")
    else:
        dims = _graph_dims(inputs[0])
        if len(dims) != 2 or dims[1] != metadata.obs_dim or isinstance(dims[0], int):
            problems.append(f"input shape {dims}, expected [batch, {metadata.obs_dim}]")
        if inputs[0].type != "tensor(float)":
            problems.append(f"input type {inputs[0].type}, expected tensor(float)")
    for name in OUTPUT_NAMES:
        if name not in outputs:
            problems.append(f"missing output {name!r}")
            continue
        dims = _graph_dims(outputs[name])
        if len(dims) != 2 or dims[1] != metadata.action_dim:
            problems.append(
                f"output {name!r} shape {dims}, expected [batch, {metadata.action_dim}]"
            )
    if problems:
        raise ArtifactError(
            f"{path}: ONNX graph does not match metadata.json: "
            f"{'; '.join(problems)}; re-export the policy with `safepolicy export`"
        )


def load_policy(
    version_dir: str | os.PathLike[str], providers: Sequence[str] | None = None, threads: int = 1
) -> OnnxPolicy:
    """Open the policy artifact in ``version_dir`` for inference.

    Validates ``metadata.json`` (pydantic), that the ONNX model carries the same metadata, and
    that the graph's input and output shapes match ``obs_dim`` and ``action_dim``. ``providers``
    defaults to :func:`default_providers`; ``threads`` sets onnxruntime's intra-op threads.
    Raises :class:`ArtifactError` naming the path when anything is missing or inconsistent.
    """
    import onnxruntime

    directory = Path(version_dir)
    if not directory.is_dir():
        raise ArtifactError(
            f"{directory}: no such policy version directory; export one with "
            "`safepolicy export --run RUN_DIR --repo MODEL_REPO --name NAME`"
        )
    metadata = read_metadata(directory)
    model_path = directory / ONNX_FILENAME
    if not model_path.is_file():
        raise ArtifactError(f"{model_path}: missing ONNX model; re-export the policy")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = onnxruntime.InferenceSession(
            str(model_path),
            sess_options=options,
            providers=list(providers) if providers is not None else default_providers(),
        )
    except Exception as error:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        raise ArtifactError(
            f"{model_path}: onnxruntime cannot load the model ({error}); re-export the policy"
        ) from error
    embedded = session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
    if embedded is None:
        raise ArtifactError(
            f"{model_path}: no {ONNX_METADATA_KEY!r} in the model's "
            "metadata_props; not a safepolicy export, re-export the policy"
        )
    try:
        embedded_metadata = PolicyMetadata.model_validate(json.loads(embedded))
    except (ValueError, ValidationError) as error:
        raise ArtifactError(f"{model_path}: invalid embedded metadata ({error})") from error
    if embedded_metadata != metadata:
        raise ArtifactError(
            f"{directory}: metadata.json and the metadata inside policy.onnx "
            "differ; the files come from different exports, re-export the policy"
        )
    _check_signature(session, metadata, model_path)
    return OnnxPolicy(session, metadata, directory)
