"""Offline safe RL algorithms; each ends in a squashed Gaussian actor."""

from __future__ import annotations

from typing import Any

from safepolicy.datasets import Dataset
from training.algorithms.base import Algorithm, TrainingContext
from training.config import BCSafeConfig, O3SRLConfig, TD3BCLagConfig


def build_algorithm(name: str, config: Any, context: TrainingContext, dataset: Dataset,
                    ) -> Algorithm:
    """Construct algorithm ``name`` with its config on ``context``."""
    from training.algorithms.baselines import BCSafe, TD3BCLag
    from training.algorithms.o3srl import O3SRL

    if name == "o3srl" and isinstance(config, O3SRLConfig):
        return O3SRL(config, context)
    if name == "bc-safe" and isinstance(config, BCSafeConfig):
        return BCSafe(config, context, dataset)
    if name == "td3bc-lag" and isinstance(config, TD3BCLagConfig):
        return TD3BCLag(config, context)
    raise ValueError(f"unknown algorithm {name!r} or config {type(config).__name__}")
