"""The Open Inference Protocol's meaning, shared by its gRPC (:mod:`server.oip`) and HTTP
(:mod:`server.rest`) transports: how a policy looks as a model, what an inference request
may ask for, and the model's configuration and statistics.

A model is a policy; its versions are the policy's integer versions written as strings. One
FP32 input ``obs`` ``[batch, obs_dim]``; outputs, FP32 ``[batch, action_dim]`` each: ``action``
(always available, the default when a request names no output) and, when a request asks for
them by name, ``mean`` and ``log_std``, the pre-tanh Gaussian the action is squashed from.
Request parameters: ``sample`` (bool, default false: deterministic) and ``seed`` (int >= 0).
The answers are plain Python values (dicts, lists); each transport writes them in its own
encoding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from safepolicy.server.calls import Call
from safepolicy.server.dataplane import DataPlane
from safepolicy.server.errors import InvalidRequest, NotReady, VersionNotFound
from safepolicy.server.policies import LoadedVersion

INPUT_NAME = "obs"
OUTPUT_NAME = "action"
EXTRA_OUTPUTS = ("mean", "log_std")
OUTPUT_NAMES = (OUTPUT_NAME, *EXTRA_OUTPUTS)
DATATYPE = "FP32"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
SERVER_NAME = "safepolicy"
EXTENSIONS = ("model_repository", "statistics", "model_configuration")


def parse_version(text: str) -> int | None:
    """A model version string as the policy's integer version; empty: the serving one."""
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):  # "²".isdigit() is True, int("²") fails
        raise InvalidRequest(
            f"model_version {text!r} is not an integer version; leave it empty "
            "for the serving version"
        )
    return int(text)


def model_ready(plane: DataPlane, name: str, version_text: str) -> bool:
    """Whether ``name`` (``version_text``) can answer inference now; an unknown model is an
    error (NOT_FOUND), a known one with nothing servable is simply not ready."""
    version = parse_version(version_text)
    try:
        plane.store.resolve(name, version)
    except (NotReady, VersionNotFound):
        return False
    return not plane.draining


def check_parameters(sample: Any, seed: Any) -> tuple[bool, int | None]:
    """The ``sample`` and ``seed`` request parameters (``None`` when absent), checked."""
    if sample is not None and not isinstance(sample, bool):
        raise InvalidRequest("parameter 'sample' must be a bool")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise InvalidRequest("parameter 'seed' must be a non-negative integer")
    return bool(sample), seed


def check_input(
    loaded: LoadedVersion, names: Sequence[str], datatype: str, shape: Sequence[int]
) -> None:
    """The request's inputs are the one ``obs`` tensor, FP32 ``[batch, obs_dim]``."""
    obs_dim = loaded.metadata.obs_dim
    if len(names) != 1 or names[0] != INPUT_NAME:
        raise InvalidRequest(
            f"model {loaded.name!r} takes exactly one input named "
            f"{INPUT_NAME!r} ({DATATYPE} [batch, {obs_dim}]), got {list(names)}"
        )
    if datatype != DATATYPE:
        raise InvalidRequest(f"input {INPUT_NAME!r} must be {DATATYPE}, got {datatype!r}")
    if len(shape) != 2:
        raise InvalidRequest(
            f"input {INPUT_NAME!r} needs shape [batch, {obs_dim}], got {list(shape)}"
        )


def requested_outputs(loaded: LoadedVersion, names: Sequence[str]) -> tuple[str, ...]:
    """The outputs a request names, in its order (``action`` alone when it names none)."""
    for name in names:
        if name not in OUTPUT_NAMES:
            raise InvalidRequest(
                f"unknown output {name!r}; model {loaded.name!r} has outputs {list(OUTPUT_NAMES)}"
            )
    if len(set(names)) != len(names):
        raise InvalidRequest(f"output names repeat in {list(names)}; name each at most once")
    return tuple(names) if names else (OUTPUT_NAME,)


@dataclass(frozen=True)
class InferRequest:
    """One inference request, transport-free."""

    model: str
    version: str
    input_names: Sequence[str]
    datatype: str
    shape: Sequence[int]
    data: bytes
    outputs: Sequence[str] = ()
    sample: Any = None
    seed: Any = None


async def infer(
    plane: DataPlane, call: Call, request: InferRequest, time_remaining: float | None = None
) -> dict[str, np.ndarray]:
    """The requested outputs (name -> float32 ``[batch, action_dim]``) of one request."""
    plane.check_accepting()
    loaded = plane.resolve(call, request.model, parse_version(request.version))
    check_input(loaded, request.input_names, request.datatype, request.shape)
    names = requested_outputs(loaded, request.outputs)
    sample, seed = check_parameters(request.sample, request.seed)
    observations, _ = plane.observations(call, loaded, request.shape, request.data)
    results: dict[str, np.ndarray] = {}
    if OUTPUT_NAME in names:
        results[OUTPUT_NAME] = await plane.run(
            loaded, observations, sample=sample, seed=seed, time_remaining=time_remaining
        )
    if any(name in EXTRA_OUTPUTS for name in names):
        outputs = await plane.run_outputs(loaded, observations)
        results["mean"], results["log_std"] = outputs.mean, outputs.log_std
    return {name: results[name] for name in names}


def model_metadata(plane: DataPlane, loaded: LoadedVersion) -> dict[str, Any]:
    """The model metadata response (the protocol's JSON form)."""
    metadata = loaded.metadata
    return {
        "name": loaded.name,
        "versions": [str(v) for v in plane.store.versions_of(loaded)],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": DATATYPE, "shape": [-1, metadata.obs_dim]}],
        "outputs": [
            {"name": name, "datatype": DATATYPE, "shape": [-1, metadata.action_dim]}
            for name in OUTPUT_NAMES
        ],
    }


def model_config(plane: DataPlane, loaded: LoadedVersion) -> dict[str, Any]:
    """Triton's model configuration of ``loaded`` (its JSON field names; dims without the
    batch dimension, which ``max_batch_size`` bounds)."""
    store = plane.store
    if loaded.name in store.pins:
        version_policy: dict[str, Any] = {"specific": {"versions": store.pins[loaded.name]}}
    elif store.version_policy == "all":
        version_policy = {"all": {}}
    else:
        version_policy = {"latest": {"num_versions": 1}}
    action_dim = loaded.metadata.action_dim
    return {
        "name": loaded.name,
        "platform": PLATFORM,
        "backend": BACKEND,
        "version_policy": version_policy,
        "max_batch_size": store.max_batch_size,
        "input": [
            {"name": INPUT_NAME, "data_type": "TYPE_FP32", "dims": [loaded.metadata.obs_dim]}
        ],
        "output": [
            {"name": name, "data_type": "TYPE_FP32", "dims": [action_dim]} for name in OUTPUT_NAMES
        ],
    }


def repository_index(plane: DataPlane, ready_only: bool = False) -> list[dict[str, str]]:
    """Every policy in the repository: one entry per loaded version (READY), or one entry
    saying why nothing is servable (UNAVAILABLE, with the reason)."""
    root = str(plane.store.repository.root)
    models: list[dict[str, str]] = []
    for entry in plane.store.entries():
        for version in sorted(entry.versions):
            models.append(
                {"name": entry.name, "version": str(version), "state": "READY", "reason": ""}
            )
        if not entry.versions and not ready_only:
            models.append(
                {
                    "name": entry.name,
                    "version": "",
                    "state": "UNAVAILABLE",
                    "reason": (entry.problem or "").replace(root, "MODEL_REPO"),
                }
            )
    return models


def model_statistics(
    plane: DataPlane,
    name: str,
    version_text: str,
) -> list[dict[str, Any]]:
    """Per loaded version: last inference (ms since the epoch), inferred rows, requests that
    ran the model, and successful and failed request counts with their total nanoseconds
    (failures' durations are not kept: ``fail.ns`` is 0). Empty ``name``: every model."""
    store = plane.store
    if name:
        version = parse_version(version_text)
        if version is None:  # every loaded version of the model
            serving = store.resolve(name)
            versions = [store.resolve(name, v) for v in store.versions_of(serving)]
        else:
            versions = [store.resolve(name, version)]
    else:
        versions = [entry.versions[v] for entry in store.entries() for v in sorted(entry.versions)]
    stats = []
    for loaded in versions:
        count, rows, seconds, last_ms = plane.call_totals(loaded)
        stats.append(
            {
                "name": loaded.name,
                "version": str(loaded.version),
                "last_inference": last_ms,
                "inference_count": rows,
                "execution_count": count,
                "inference_stats": {
                    "success": {"count": count, "ns": int(seconds * 1e9)},
                    "fail": {
                        "count": plane.failures.get((loaded.name, loaded.version), 0),
                        "ns": 0,
                    },
                },
            }
        )
    return stats


def parameter_values(parameters: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(sample, seed)`` from a request's already-decoded parameters."""
    return parameters.get("sample"), parameters.get("seed")
