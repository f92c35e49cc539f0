"""DSRL-format offline datasets: read, validate, write atomically, summarise.

The on-disk layout is DSRL's HDF5: top-level arrays ``observations, next_observations, actions,
rewards, costs, terminals, timeouts`` with one row per transition, so the files this project
writes load with dsrl's own ``OfflineEnv.get_dataset(h5path=...)`` and real DSRL files load here.
Nothing is ever downloaded: a real DSRL file is found by path, or by task name in dsrl's download
directory (``DSRL_DATASET_DIR``, default ``~/.dsrl/datasets`` as in dsrl itself).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from pydantic import BaseModel

from safepolicy.errors import SafepolicyError
from safepolicy.fileio import atomic_write

DSRL_KEYS = (
    "observations",
    "next_observations",
    "actions",
    "rewards",
    "costs",
    "terminals",
    "timeouts",
)
COMMON_COST_LIMITS = (5.0, 10.0, 20.0, 40.0, 80.0)


class DatasetError(SafepolicyError, ValueError):
    """A dataset file that cannot be used, with the file and the problem in the message."""


@dataclass(frozen=True)
class Dataset:
    """One offline dataset in memory, DSRL keys as numpy arrays (one row per transition)."""

    observations: np.ndarray
    next_observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    costs: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    attrs: dict[str, Any]
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.observations.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    def episode_slices(self) -> Iterator[slice]:
        """Row ranges of whole episodes (ending at a terminal or a timeout, or at the end)."""
        ends = np.flatnonzero(np.logical_or(self.terminals, self.timeouts))
        start = 0
        for end in ends:
            yield slice(start, int(end) + 1)
            start = int(end) + 1
        if start < len(self):
            yield slice(start, len(self))

    def episode_returns_and_costs(self) -> tuple[np.ndarray, np.ndarray]:
        """Undiscounted return and cost of every episode."""
        slices = list(self.episode_slices())
        returns = np.array([self.rewards[s].sum() for s in slices], dtype=np.float64)
        costs = np.array([self.costs[s].sum() for s in slices], dtype=np.float64)
        return returns, costs

    def arrays(self) -> dict[str, np.ndarray]:
        return {key: getattr(self, key) for key in DSRL_KEYS}


class DatasetSummary(BaseModel):
    """What a user wants to know about a dataset before training on it."""

    path: str | None
    task: str | None
    transitions: int
    episodes: int
    obs_dim: int
    action_dim: int
    return_quantiles: dict[str, float]
    cost_quantiles: dict[str, float]
    fraction_under_cost_limit: dict[str, float]

    def to_text(self) -> str:
        def row(values: dict[str, float]) -> str:
            return "  ".join(f"{k}={v:.2f}" for k, v in values.items())

        lines = [
            f"dataset      {self.path or '(in memory)'}",
            f"task         {self.task or 'unknown'}",
            f"transitions  {self.transitions}   episodes {self.episodes}   "
            f"obs_dim {self.obs_dim}   action_dim {self.action_dim}",
            f"return       {row(self.return_quantiles)}",
            f"cost         {row(self.cost_quantiles)}",
            "episodes with cost <= limit   "
            + "  ".join(f"{k}: {v:.0%}" for k, v in self.fraction_under_cost_limit.items()),
        ]
        return "\n".join(lines)


def summarize(
    dataset: Dataset, cost_limits: Sequence[float] = COMMON_COST_LIMITS
) -> DatasetSummary:
    """Episode count, return and cost quantiles, and the fraction of episodes under each limit."""
    returns, costs = dataset.episode_returns_and_costs()
    quantiles = (0.0, 0.25, 0.5, 0.75, 1.0)

    def q(values: np.ndarray) -> dict[str, float]:
        if values.size == 0:
            return {}
        return {f"q{int(p * 100)}": float(np.quantile(values, p)) for p in quantiles}

    return DatasetSummary(
        path=str(dataset.path) if dataset.path else None,
        task=dataset.attrs.get("task"),
        transitions=len(dataset),
        episodes=int(returns.size),
        obs_dim=dataset.obs_dim,
        action_dim=dataset.action_dim,
        return_quantiles=q(returns),
        cost_quantiles=q(costs),
        fraction_under_cost_limit={
            f"{limit:g}": float(np.mean(costs <= limit)) if costs.size else 0.0
            for limit in cost_limits
        },
    )


def validate_arrays(arrays: dict[str, np.ndarray], source: str) -> None:
    """Raise DatasetError naming ``source`` if the arrays do not form a usable DSRL dataset."""
    missing = [key for key in DSRL_KEYS if key not in arrays]
    if missing:
        raise DatasetError(
            f"{source}: missing DSRL key(s) {', '.join(missing)}; a DSRL dataset needs "
            f"{', '.join(DSRL_KEYS)}"
        )
    for key in DSRL_KEYS:
        _check_column_type(arrays[key], key, source)
    n = arrays["observations"].shape[0] if arrays["observations"].ndim else 0
    if n == 0:
        raise DatasetError(f"{source}: the dataset has no transitions")
    for key in DSRL_KEYS:
        rows = arrays[key].shape[0] if arrays[key].ndim else None
        if rows != n:
            got = "a single value" if rows is None else f"{rows} rows"
            raise DatasetError(
                f"{source}: '{key}' has {got} but 'observations' has {n} rows; "
                "every DSRL array needs one row per transition"
            )
    for key in VECTOR_KEYS:
        if arrays[key].ndim != 2 or arrays[key].shape[1] == 0:
            raise DatasetError(
                f"{source}: '{key}' must be 2-D [transitions, dim] with dim >= 1, "
                f"got shape {arrays[key].shape}"
            )
    for key in SCALAR_KEYS:
        if arrays[key].ndim > 2 or (arrays[key].ndim == 2 and arrays[key].shape[1] != 1):
            raise DatasetError(
                f"{source}: '{key}' must hold one value per transition, shape "
                f"[transitions] or [transitions, 1], got {arrays[key].shape}"
            )
    if arrays["next_observations"].shape != arrays["observations"].shape:
        raise DatasetError(
            f"{source}: 'next_observations' shape {arrays['next_observations'].shape}"
            f" differs from 'observations' {arrays['observations'].shape}"
        )
    for key in ("observations", "next_observations", "actions", "rewards", "costs"):
        with np.errstate(over="ignore", invalid="ignore"):  # out of float32 range -> Inf
            bad = ~np.isfinite(np.asarray(arrays[key]).astype(np.float32))
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DatasetError(
                f"{source}: '{key}' contains NaN or Inf, or values beyond float32 range "
                f"({int(bad.sum())} values, first at row {row}); clean or regenerate the dataset"
            )


VECTOR_KEYS = ("observations", "next_observations", "actions")
SCALAR_KEYS = ("rewards", "costs", "terminals", "timeouts")


def _check_column_type(values: object, key: str, source: str) -> None:
    """Every column must be a real-valued (or boolean) array: no text, records or complex."""
    dtype = getattr(values, "dtype", None)
    if (
        not isinstance(values, np.ndarray)
        or dtype is None
        or not (
            np.issubdtype(dtype, np.bool_)
            or np.issubdtype(dtype, np.integer)
            or np.issubdtype(dtype, np.floating)
        )
    ):
        kind = type(values).__name__ if dtype is None else f"dtype {dtype}"
        raise DatasetError(
            f"{source}: '{key}' must be a numeric array, got {kind}; a DSRL "
            "dataset stores numbers (float, int or bool) in every column"
        )


def _flatten_scalar_column(values: np.ndarray) -> np.ndarray:
    return values[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values


def load_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Read and validate a DSRL-format HDF5 file (the project's own or a real DSRL one)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(
            f"{path}: no such dataset file; make one with `safepolicy collect` "
            "or pass the path of a DSRL download"
        )
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, expected a DSRL .h5/.hdf5 file")
    try:
        with h5py.File(path, "r") as handle:
            arrays = {key: _read_column(handle, key, path) for key in DSRL_KEYS if key in handle}
            attrs = {key: _attr_value(value) for key, value in handle.attrs.items()}
    except (OSError, KeyError) as error:
        raise DatasetError(
            f"{path}: not a readable HDF5 file ({error}); the file may be "
            "truncated or not a dataset: regenerate or re-download it"
        ) from error
    validate_arrays(arrays, str(path))
    return Dataset(
        observations=arrays["observations"].astype(np.float32, copy=False),
        next_observations=arrays["next_observations"].astype(np.float32, copy=False),
        actions=arrays["actions"].astype(np.float32, copy=False),
        rewards=_flatten_scalar_column(arrays["rewards"]).astype(np.float32, copy=False),
        costs=_flatten_scalar_column(arrays["costs"]).astype(np.float32, copy=False),
        terminals=_flatten_scalar_column(arrays["terminals"]).astype(bool, copy=False),
        timeouts=_flatten_scalar_column(arrays["timeouts"]).astype(bool, copy=False),
        attrs=attrs,
        path=path,
    )


def _read_column(handle: h5py.File, key: str, path: Path) -> np.ndarray:
    item = handle[key]
    if not isinstance(item, h5py.Dataset):
        raise DatasetError(
            f"{path}: '{key}' is an HDF5 {type(item).__name__.lower()}, not an "
            "array; a DSRL dataset stores each key as one array"
        )
    return np.asarray(item[()])


def _attr_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def write_dataset(path: str | os.PathLike[str], dataset: Dataset) -> Path:
    """Write ``dataset`` as DSRL HDF5 atomically: readers see the old file or the whole new one."""
    path = Path(path)
    validate_arrays(dataset.arrays(), str(path))

    def fill(temporary: Path) -> None:
        with h5py.File(temporary, "w") as handle:
            for key, values in dataset.arrays().items():
                handle.create_dataset(key, data=values, compression="gzip", compression_opts=4)
            for key, value in dataset.attrs.items():
                handle.attrs[key] = json.dumps(value) if isinstance(value, dict | list) else value

    return atomic_write(path, fill)


def dsrl_dataset_dir() -> Path:
    """Where DSRL keeps its downloads: ``$DSRL_DATASET_DIR``, else ``~/.dsrl/datasets`` (dsrl's
    own default, dsrl/offline_env.py)."""
    return Path(os.environ.get("DSRL_DATASET_DIR") or "~/.dsrl/datasets").expanduser()


def dsrl_dataset_path(task: str) -> Path | None:
    """Where a real DSRL download of ``task`` (any spelling ``get_task`` accepts) would sit under
    :func:`dsrl_dataset_dir`, if it is there."""
    from safepolicy.tasks import UnknownTaskError, _dsrl_infos, get_task

    try:
        name = get_task(task).name
    except UnknownTaskError:
        return None
    url = _dsrl_infos()["DATASET_URLS"].get(name)
    if url is None:
        return None
    candidate = dsrl_dataset_dir() / url.rsplit("/", 1)[-1]
    return candidate if candidate.exists() else None


def resolve_dataset(path_or_task: str) -> Path:
    """An explicit file path, or a task name whose real DSRL file is in :func:`dsrl_dataset_dir`."""
    candidate = Path(path_or_task)
    if candidate.suffix in {".h5", ".hdf5"} or candidate.exists():
        return candidate
    found = dsrl_dataset_path(path_or_task)
    if found is None:
        raise DatasetError(
            f"{path_or_task}: not a dataset file, and no DSRL download for that task in "
            f"{dsrl_dataset_dir()} (DSRL_DATASET_DIR); pass a .h5 path or run `safepolicy collect`"
        )
    return found
