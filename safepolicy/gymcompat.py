"""Import gymnasium without the gymnasium-robotics notice, and safety-gymnasium 1.0.0 on 3.11.

Every module of the project takes gymnasium from here (``from safepolicy.gymcompat import gym``).
gymnasium-robotics is installed only because ``safety_gymnasium/__init__`` imports it (its
multi-agent MuJoCo tasks); the project never uses it. Its distribution registers a gymnasium
entry-point plugin, so ``import gymnasium`` imports it (twice: as ``gymnasium_robotics`` and as
``gymnasium_robotics.__init__``), and each time it prints farama_notifications' "AdroitHand...
v1.2.1" notice to stderr, ``--help`` included. That one notice is removed from the
notification table before gymnasium is first imported; nothing else is silenced.

Every published safety-gymnasium declares dataclass fields with numpy-array defaults
(``color: np.array = COLOR['goal']``). Python 3.11 rejects unhashable dataclass defaults
("mutable default ... use default_factory"), so ``import safety_gymnasium`` fails as released.

The fix is scoped to that one import: while it runs, ``dataclasses.dataclass`` rewrites any
numpy-array class default into ``field(default_factory=...)`` returning a copy, which is the
semantics the authors meant (every instance gets its own array). Outside the import nothing is
patched, so no other dataclass in the process is affected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import sys
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np


def _drop_gymnasium_robotics_notice() -> None:
    """Remove gymnasium-robotics' entry from farama_notifications (printed on every import)."""
    try:
        from farama_notifications import notifications
    except ImportError:  # gymnasium without the notifications package: nothing to drop
        return
    notifications.pop("gymnasium_robotics", None)


_drop_gymnasium_robotics_notice()

import gymnasium as gym  # noqa: E402  (after the notice is dropped, on purpose)

__all__ = ["array_dataclass_defaults", "gym", "import_safety_gymnasium"]

_lock = threading.Lock()


def _array_defaults_to_factories(cls: type) -> None:
    """Replace numpy-array class attributes named in annotations by default_factory fields."""
    for name in getattr(cls, "__annotations__", {}):
        value = cls.__dict__.get(name)
        if isinstance(value, np.ndarray):
            setattr(cls, name, dataclasses.field(default_factory=_copier(value)))


def _copier(value: np.ndarray) -> Callable[[], np.ndarray]:
    """A default factory that gives every instance its own copy of ``value``."""
    return lambda: value.copy()


@contextlib.contextmanager
def array_dataclass_defaults() -> Iterator[None]:
    """Within the block, dataclasses accept numpy-array defaults (copied per instance)."""
    original = dataclasses.dataclass

    def patched(cls: Any = None, /, **kwargs: Any) -> Any:
        def wrap(klass: type) -> Any:
            _array_defaults_to_factories(klass)
            return original(klass, **kwargs)

        return wrap if cls is None else wrap(cls)

    with _lock:
        dataclasses.dataclass = patched  # type: ignore[assignment]
        try:
            yield
        finally:
            dataclasses.dataclass = original  # type: ignore[assignment]


def import_safety_gymnasium() -> ModuleType:
    """Import and return ``safety_gymnasium``, applying the Python 3.11 fix for that import only."""
    if "safety_gymnasium" in sys.modules:
        return sys.modules["safety_gymnasium"]
    with array_dataclass_defaults():
        return importlib.import_module("safety_gymnasium")
