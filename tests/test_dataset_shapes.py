"""Well-formed HDF5 files with odd shapes or types get a clear error from `safepolicy dataset`
(and from every other reader of ``load_dataset``), never a traceback."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from safepolicy.dataset_cli import main as dataset_main
from safepolicy.datasets import load_dataset

ROWS = 6


def dsrl_arrays() -> dict[str, np.ndarray]:
    return {
        "observations": np.zeros((ROWS, 3), np.float32),
        "next_observations": np.zeros((ROWS, 3), np.float32),
        "actions": np.zeros((ROWS, 2), np.float32),
        "rewards": np.zeros(ROWS, np.float32),
        "costs": np.zeros(ROWS, np.float32),
        "terminals": np.zeros(ROWS, bool),
        "timeouts": np.zeros(ROWS, bool),
    }


def write_file(path: Path, changes: dict[str, object]) -> Path:
    arrays: dict[str, object] = {**dsrl_arrays(), **changes}
    with h5py.File(path, "w") as handle:
        for key, values in arrays.items():
            if isinstance(values, str):
                handle.create_group(key)
            else:
                handle[key] = values
    return path


ODD_FILES: dict[str, tuple[dict[str, object], str]] = {
    "scalar rewards": ({"rewards": np.float32(1.0)}, "'rewards' has a single value"),
    "rewards with 3 columns": (
        {"rewards": np.zeros((ROWS, 3), np.float32)},
        "'rewards' must hold one value per transition",
    ),
    "3-D costs": ({"costs": np.zeros((ROWS, 1, 1), np.float32)}, "'costs' must hold one value"),
    "terminals with 2 columns": (
        {"terminals": np.zeros((ROWS, 2), bool)},
        "'terminals' must hold one value",
    ),
    "zero-width actions": (
        {"actions": np.zeros((ROWS, 0), np.float32)},
        "'actions' must be 2-D [transitions, dim] with dim >= 1",
    ),
    "text rewards": ({"rewards": np.array([b"a"] * ROWS)}, "'rewards' must be a numeric array"),
    "text terminals": (
        {"terminals": np.array([b"x"] * ROWS)},
        "'terminals' must be a numeric array",
    ),
    "complex rewards": (
        {"rewards": np.zeros(ROWS, np.complex64)},
        "'rewards' must be a numeric array",
    ),
    "record costs": (
        {"costs": np.zeros(ROWS, dtype=[("a", "f4"), ("b", "f4")])},
        "'costs' must be a numeric array",
    ),
    "a group for rewards": ({"rewards": "group"}, "'rewards' is an HDF5 group"),
    "rewards beyond float32": (
        {"rewards": np.full(ROWS, 1e300)},
        "'rewards' contains NaN or Inf, or values beyond float32 range",
    ),
}


@pytest.mark.parametrize("case", sorted(ODD_FILES))
def test_odd_shapes_and_types_get_a_clear_error(tmp_path, capsys, case):
    changes, message = ODD_FILES[case]
    path = write_file(tmp_path / "odd.hdf5", changes)
    assert dataset_main([str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"safepolicy dataset: error: {path}: ")
    assert message in err
    assert "Traceback" not in err


def test_column_vectors_and_integer_columns_still_load(tmp_path):
    path = write_file(
        tmp_path / "ok.hdf5",
        {
            "rewards": np.ones((ROWS, 1), np.float64),
            "observations": np.ones((ROWS, 3), np.int64),
            "next_observations": np.ones((ROWS, 3), np.int64),
            "terminals": np.zeros((ROWS, 1), np.int8),
        },
    )
    dataset = load_dataset(path)
    assert dataset.rewards.shape == (ROWS,) and dataset.rewards.dtype == np.float32
    assert dataset.observations.dtype == np.float32
    assert dataset.terminals.shape == (ROWS,) and dataset.terminals.dtype == bool
