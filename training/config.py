"""How training hyperparameters are declared, validated, overridden and described.

Every config is a pydantic model (``Config``) whose fields are declared with ``param``: a
default, a one-line ``help``, the ``paper``'s value, and the allowed range or choices
(``gt``/``ge``/``lt``/``le``, or a ``Literal`` type). Values are checked when they are set:
at construction, by ``--set name=value`` (``set_field``) and by a ``--config FILE.yaml``
(``apply_settings``); a bad value is a ``ConfigError`` naming the field and what it allows.

``RunConfig`` (what every run shares) lives here; each algorithm's config lives beside its code
in training/algorithms/ and is found through the registry (training/registry.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from safepolicy.errors import SafepolicyError


class ConfigError(SafepolicyError, ValueError):
    """A setting that does not fit its field, with what the field allows."""


class Config(BaseModel):
    """Base of every training config: unknown keys refused, every assignment validated."""

    model_config = ConfigDict(validate_assignment=True, extra="forbid")


def param(default: Any, help: str, paper: str = "", **constraints: Any) -> Any:
    """A config field with its one-line meaning, the paper's value and its allowed range."""
    extra: dict[str, Any] = {"paper": paper}
    if isinstance(default, list | dict):
        return Field(
            default_factory=lambda: type(default)(default),
            description=help,
            json_schema_extra=cast(Any, extra),
            **constraints,
        )
    return Field(
        default=default, description=help, json_schema_extra=cast(Any, extra), **constraints
    )


PositiveInt = Annotated[int, Field(gt=0)]


class RunConfig(Config):
    """What every algorithm's run shares: budget, batching, logging, evaluation."""

    steps: int = param(
        100_000, "gradient updates in total (single-stage algorithms)", "O3SRL: T about 100k", gt=0
    )
    batch_size: int = param(256, "transitions per minibatch", "TD3+BC/IQL: 256; OSRL: 512", gt=0)
    hidden_sizes: list[PositiveInt] = param(
        [256, 256],
        "hidden layer widths of every MLP without sizes of its own",
        "OSRL/TD3+BC: 2x256",
        min_length=1,
    )
    actor_hidden_sizes: list[PositiveInt] | None = param(
        None, "hidden widths of the actor (none: hidden_sizes)", min_length=1
    )
    critic_hidden_sizes: list[PositiveInt] | None = param(
        None, "hidden widths of every critic ensemble (none: hidden_sizes)", min_length=1
    )
    value_hidden_sizes: list[PositiveInt] | None = param(
        None, "hidden widths of state-value networks (none: hidden_sizes)", min_length=1
    )
    gamma: float = param(0.99, "discount factor", "0.99 everywhere", gt=0.0, le=1.0)
    reward_scale: float = param(
        0.1,
        "rewards are multiplied by this before learning; sets "
        "the reward/cost trade-off that the lambda range [0, C] spans",
        "OSRL (BCQ-Lag, CPQ, BC): 0.1",
        gt=0.0,
    )
    precision: Literal["fp32", "bf16-mixed"] = param(
        "fp32",
        "critic matmuls: fp32, or bf16-mixed (bf16 hidden layers, fp32 weights/outputs/"
        "losses; several times faster on AVX512-BF16)",
        "fp32",
    )
    log_every: int = param(500, "steps between scalar log rows (CSV)", gt=0)
    checkpoint_every: int = param(5_000, "steps between resumable checkpoints", gt=0)
    eval_episodes: int = param(10, "episodes in the final evaluation (0 disables it)", ge=0)
    eval_seed: int = param(10_000, "first environment seed of the fixed evaluation seed list", ge=0)
    eval_envs: int = param(5, "vectorised environments used by evaluation", gt=0)

    @field_validator("gamma", "reward_scale")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value


def allowed(info: FieldInfo) -> str:
    """What a field accepts, e.g. 'a number in (0, 1]' or 'one of fp32, bf16-mixed'."""
    choices = getattr(info.annotation, "__args__", None)
    if getattr(info.annotation, "__origin__", None) is Literal and choices:
        return "one of " + ", ".join(str(c) for c in choices)
    bounds: dict[str, Any] = {}
    for item in info.metadata:
        for name in ("gt", "ge", "lt", "le", "min_length"):
            if getattr(item, name, None) is not None:
                bounds[name] = getattr(item, name)
    kind = getattr(info.annotation, "__name__", "value")
    if "min_length" in bounds:
        listed = f"a comma-separated list of at least {bounds['min_length']} positive integers"
        return listed + (" or none" if _is_optional(info) else "")
    low = f"({bounds['gt']}" if "gt" in bounds else f"[{bounds['ge']}" if "ge" in bounds else ""
    high = f"{bounds['lt']})" if "lt" in bounds else f"{bounds['le']}]" if "le" in bounds else ""
    if low and high:
        return f"{kind} in {low}, {high}"
    if low:
        return f"{kind} {'>' if 'gt' in bounds else '>='} {low[1:]}"
    if high:
        return f"{kind} {'<' if 'lt' in bounds else '<='} {high[:-1]}"
    return kind


def _is_list_field(info: FieldInfo) -> bool:
    options = getattr(info.annotation, "__args__", None) or ()
    return any(
        getattr(option, "__origin__", None) is list for option in (info.annotation, *options)
    )


def _is_optional(info: FieldInfo) -> bool:
    return type(None) in (getattr(info.annotation, "__args__", None) or ())


def _leaf(config: Config, dotted_name: str) -> tuple[Config, str]:
    target = config
    *parents, name = dotted_name.split(".")
    for parent in parents:
        child = getattr(target, parent, None)
        if not isinstance(child, Config):
            raise ConfigError(f"unknown setting {dotted_name!r}: {parent!r} is not a group")
        target = child
    if name not in type(target).model_fields:
        known = ", ".join(sorted(type(target).model_fields))
        raise ConfigError(f"unknown setting {dotted_name!r}; known here: {known}")
    return target, name


def set_field(config: Config, dotted_name: str, value: Any) -> None:
    """Set ``a.b=value`` on a nested config, validated against the field's type and range.

    Strings are converted as ``--set`` gives them ("0.5", "true", "256,256").
    """
    target, name = _leaf(config, dotted_name)
    info = type(target).model_fields[name]
    shown = value
    if isinstance(value, str) and _is_list_field(info):
        value = (
            None
            if value.strip().lower() in ("", "none") and _is_optional(info)
            else [item.strip() for item in value.split(",") if item.strip()]
        )
    try:
        setattr(target, name, value)
    except ValidationError as error:
        raise ConfigError(
            f"{dotted_name}={shown!r} is not allowed: {dotted_name} must be "
            f"{allowed(info)} ({error.errors()[0]['msg']})"
        ) from None


def apply_settings(config: Config, settings: Mapping[str, Any], prefix: str = "") -> None:
    """Apply a nested mapping (a parsed YAML file) or dotted names to ``config``."""
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            apply_settings(config, value, prefix=f"{name}.")
        else:
            set_field(config, name, value)


def describe(config: Config, prefix: str = "") -> list[tuple[str, Any, str, str]]:
    """(name, value, help with its allowed range, paper value) for every field, flattened."""
    rows: list[tuple[str, Any, str, str]] = []
    for name, info in type(config).model_fields.items():
        value = getattr(config, name)
        if isinstance(value, Config):
            rows += describe(value, prefix=f"{prefix}{name}.")
        else:
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            help_text = f"{info.description or ''} [{allowed(info)}]"
            rows.append((prefix + name, value, help_text, str(extra.get("paper", ""))))
    return rows


def differing_keys(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (for ``--resume``)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        keys: list[str] = []
        for key in sorted(set(saved) | set(current)):
            keys += differing_keys(saved.get(key), current.get(key), f"{prefix}{key}.")
        return keys
    return [] if saved == current else [prefix.rstrip(".")]
