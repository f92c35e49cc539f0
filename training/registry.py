"""The one list of algorithms: the CLI, the loop, the tests and the benchmarks read it.

Each algorithm module defines an ``AlgorithmSpec`` (its config class, how to build it on a
``TrainingContext``, and its stages) and is named here as ``"module:ATTRIBUTE"``; modules are
imported only when asked for, so listing the names (``safepolicy train --help``) stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from safepolicy.errors import SafepolicyError

if TYPE_CHECKING:
    from safepolicy.training.algorithms.base import Algorithm, TrainingContext
    from safepolicy.training.config import Config, RunConfig

REGISTRY: dict[str, str] = {
    "o3srl": "safepolicy.training.algorithms.o3srl:SPEC",
    "td3bc-lag": "safepolicy.training.algorithms.baselines:TD3BC_LAG_SPEC",
    "bc-safe": "safepolicy.training.algorithms.baselines:BC_SAFE_SPEC",
    "sac-lag": "safepolicy.training.algorithms.sac_lag:SPEC",
    "cpq": "safepolicy.training.algorithms.cpq:SPEC",
    "drcorl": "safepolicy.training.algorithms.drcorl:SPEC",
    "marvel": "safepolicy.training.algorithms.marvel:SPEC",
}


class UnknownAlgorithmError(SafepolicyError, ValueError):
    """An algorithm name that is not in the registry."""


@dataclass(frozen=True)
class Stage:
    """A named phase of training with its own number of gradient steps."""

    name: str
    steps: int


def single_stage(config: Any, run_config: RunConfig) -> list[Stage]:
    """One stage, ``train``, of ``run.steps`` updates (every offline one-phase algorithm)."""
    return [Stage("train", run_config.steps)]


@dataclass(frozen=True)
class StageSource:
    """Another algorithm's end-of-stage checkpoint that can stand in for one of this
    algorithm's stages (e.g. Marvel's ``offline`` stage from a ``train cpq`` run)."""

    algorithm: str  # the other algorithm's registry name
    stage: str  # its stage whose checkpoint is read
    load: Callable[[Any, dict[str, Any]], None]  # (this algorithm, that run's algorithm state)


@dataclass(frozen=True)
class AlgorithmSpec:
    """What the loop needs to know about one algorithm."""

    name: str
    config_type: type[Config]
    build: Callable[[Any, TrainingContext], Algorithm]
    summary: str
    stages: Callable[[Any, RunConfig], list[Stage]] = single_stage
    # {task: {dotted field: value}}, layered under --config and --set
    task_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # False for an online algorithm that can run without --dataset (context.buffer is None)
    needs_dataset: bool = True
    # {this algorithm's stage: another algorithm's stage checkpoint --reuse-stage accepts}
    stage_sources: dict[str, StageSource] = field(default_factory=dict)


def algorithm_names() -> list[str]:
    """Every registered name, sorted."""
    return sorted(REGISTRY)


def algorithm_spec(name: str) -> AlgorithmSpec:
    """The spec of algorithm ``name`` (imports its module)."""
    if name not in REGISTRY:
        raise UnknownAlgorithmError(
            f"unknown algorithm {name!r}; known: {', '.join(algorithm_names())}"
        )
    module_name, _, attribute = REGISTRY[name].partition(":")
    spec = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(spec, AlgorithmSpec) or spec.name != name:
        raise TypeError(f"{REGISTRY[name]} is not the AlgorithmSpec of {name!r}")
    return spec


def checked_stages(spec: AlgorithmSpec, config: Any, run_config: RunConfig) -> list[Stage]:
    """The algorithm's stages, refused when a name repeats or a step count is not positive."""
    stages = spec.stages(config, run_config)
    names = [stage.name for stage in stages]
    if not stages or len(set(names)) != len(names):
        raise ValueError(f"{spec.name}: stages must be non-empty with unique names, got {names}")
    for stage in stages:
        if stage.steps <= 0:
            raise ValueError(
                f"{spec.name}: stage {stage.name!r} has {stage.steps} steps; "
                "set its step count to a positive number"
            )
    return stages
