"""The scoped Python 3.11 shim that lets safety_gymnasium import."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from safepolicy.gymcompat import array_dataclass_defaults, import_safety_gymnasium


def test_plain_import_fails_on_this_python_without_the_shim() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import safety_gymnasium"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "mutable default" in result.stderr


def test_import_works_with_the_shim_and_restores_dataclass() -> None:
    original = dataclasses.dataclass
    module = import_safety_gymnasium()
    assert hasattr(module, "make")
    assert dataclasses.dataclass is original


def test_array_defaults_raise_outside_the_shim() -> None:
    with pytest.raises(ValueError, match="mutable default"):

        @dataclasses.dataclass
        class Outside:
            color: np.ndarray = np.zeros(3)  # noqa: RUF009


def test_instances_get_independent_array_copies_inside_the_shim() -> None:
    with array_dataclass_defaults():

        @dataclasses.dataclass
        class Inside:
            color: np.ndarray = np.array([1.0, 2.0, 3.0])  # noqa: RUF009

    first, second = Inside(), Inside()
    first.color[0] = 99.0
    assert second.color[0] == 1.0
    assert first.color is not second.color


def test_shim_restores_dataclass_after_an_exception() -> None:
    original = dataclasses.dataclass
    with pytest.raises(RuntimeError), array_dataclass_defaults():
        raise RuntimeError("boom")
    assert dataclasses.dataclass is original
