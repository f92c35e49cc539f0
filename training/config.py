"""Every training hyperparameter in one place, with its meaning and the paper's value.

Each field's ``metadata`` carries ``help`` (one line) and ``paper`` (the value the source paper or
reference code uses, and where from). ``safepolicy train ALGO --print-config`` prints them;
``--set name=value`` overrides any field; ``TASK_OVERRIDES`` holds per-task defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


def param(default: Any, help: str, paper: str = "") -> Any:
    """A dataclass field with its one-line meaning and the paper's value."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default),
                     metadata={"help": help, "paper": paper})
    return field(default=default, metadata={"help": help, "paper": paper})


@dataclass
class RunConfig:
    """What every algorithm's run shares: budget, batching, logging, evaluation."""

    steps: int = param(100_000, "gradient updates in total", "O3SRL: T about 100k")
    batch_size: int = param(256, "transitions per minibatch", "TD3+BC/IQL: 256; OSRL: 512")
    hidden_sizes: list[int] = param(  # noqa: RUF009 (param returns a default_factory field)
        [256, 256], "hidden layer widths of every MLP", "OSRL/TD3+BC: 2x256")
    gamma: float = param(0.99, "discount factor", "0.99 everywhere")
    reward_scale: float = param(0.1, "rewards are multiplied by this before learning; sets "
                                "the reward/cost trade-off that the lambda range [0, C] spans",
                                "OSRL (BCQ-Lag, CPQ, BC): 0.1")
    precision: str = param("fp32", "critic matmuls: fp32, or bf16-mixed (bf16 hidden layers, "
                           "fp32 weights/outputs/losses; several times faster on AVX512-BF16)",
                           "fp32")
    log_every: int = param(500, "steps between scalar log rows (CSV)")
    checkpoint_every: int = param(5_000, "steps between resumable checkpoints")
    eval_episodes: int = param(10, "episodes in the final evaluation (0 disables it)")
    eval_seed: int = param(10_000, "first environment seed of the fixed evaluation seed list")
    eval_envs: int = param(5, "vectorised environments used by evaluation")


@dataclass
class TD3BCConfig:
    """TD3+BC (Fujimoto & Gu 2021) as an oracle for the Lagrangian reward."""

    actor_lr: float = param(3e-4, "actor learning rate", "TD3+BC: 3e-4")
    critic_lr: float = param(3e-4, "critic learning rate", "TD3+BC: 3e-4")
    tau: float = param(0.005, "target network EMA rate", "TD3+BC: 0.005")
    policy_noise: float = param(0.2, "target policy smoothing noise (unit actions)", "TD3: 0.2")
    noise_clip: float = param(0.5, "clip of the smoothing noise", "TD3: 0.5")
    policy_delay: int = param(2, "critic updates per actor update", "TD3: 2")
    alpha: float = param(2.5, "Q weight against BC: lambda_bc = alpha / mean|Q|", "TD3+BC: 2.5")
    critics_per_signal: int = param(2, "critics for reward and for cost (clipped double Q)",
                                    "TD3: 2")
    q_scale_ema: float = param(0.0, "0: lambda_bc from this batch's mean|Q| (TD3+BC); > 0: "
                               "from its running average at this rate, one scale for all arms",
                               "TD3+BC: per batch")


@dataclass
class IQLConfig:
    """IQL (Kostrikov et al. 2022) as an oracle for the Lagrangian reward."""

    actor_lr: float = param(3e-4, "actor learning rate", "IQL: 3e-4")
    critic_lr: float = param(3e-4, "Q and V learning rate", "IQL: 3e-4")
    tau: float = param(0.005, "target network EMA rate", "IQL: 0.005")
    expectile: float = param(0.7, "expectile of the reward value (cost uses 1 - expectile)",
                             "IQL: 0.7 (locomotion)")
    beta: float = param(3.0, "inverse temperature of advantage-weighted regression", "IQL: 3.0")
    max_weight: float = param(100.0, "clip of the exp-advantage weights", "IQL: 100")
    critics_per_signal: int = param(2, "critics for reward and for cost", "IQL: 2")


@dataclass
class O3SRLConfig:
    """O3SRL: EXP3 over K Lagrange multipliers around an offline RL oracle."""

    oracle: Literal["td3bc", "iql"] = param("td3bc", "offline RL oracle",
                                            "paper: TD3+BC; IQL works")
    num_arms: int = param(5, "K, number of lambda arms", "paper: K=5 (K=2 already good)")
    lambda_max: float = param(5.0, "C, the largest lambda", "paper: C=5")
    arm_geometry: Literal["uniform", "dense-near-zero"] = param(
        "uniform", "arm spacing on [0, C]; dense-near-zero helps loose budgets", "paper: both")
    oracle_steps_per_round: int = param(10, "M, oracle gradient steps per bandit round",
                                        "paper: M=10")
    exploration: float = param(0.0, "uniform mixing into the arm distribution (0 = pure EXP3)",
                               "derived; see o3srl.py")
    value_batch: int = param(1024, "dataset states averaged for the round's value estimate",
                             "not stated")
    per_step_budget: Literal["episode", "paper"] = param(
        "episode", "per-step cost budget: kappa / T (episode) or (1 - gamma) kappa (paper)",
        "paper: (1 - gamma) kappa")
    td3bc: TD3BCConfig = field(default_factory=lambda: TD3BCConfig(q_scale_ema=0.01))
    iql: IQLConfig = field(default_factory=IQLConfig)


@dataclass
class TD3BCLagConfig:
    """Baseline: TD3+BC on the Lagrangian reward with one fixed multiplier."""

    lagrange_multiplier: float = param(1.0, "the fixed lambda", "baseline, no paper value")
    per_step_budget: Literal["episode", "paper"] = param("episode", "as in O3SRL")
    td3bc: TD3BCConfig = field(default_factory=TD3BCConfig)


@dataclass
class BCSafeConfig:
    """Baseline: behaviour cloning of the episodes within the cost limit."""

    actor_lr: float = param(1e-3, "actor learning rate", "OSRL BC-Safe: 1e-3")


ALGORITHM_CONFIGS: dict[str, type] = {
    "o3srl": O3SRLConfig,
    "td3bc-lag": TD3BCLagConfig,
    "bc-safe": BCSafeConfig,
}

# Per-task defaults layered under command-line overrides: {algorithm: {task: {field: value}}}.
# Empty so far: no per-task value has been measured to beat the defaults here.
TASK_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {}


def set_field(config: Any, dotted_name: str, raw_value: str) -> None:
    """Set ``a.b=value`` on a nested config, converting ``raw_value`` to the field's type."""
    target = config
    *parents, name = dotted_name.split(".")
    for parent in parents:
        target = getattr(target, parent)
    fields = {f.name: f for f in dataclasses.fields(target)}
    if name not in fields:
        known = ", ".join(sorted(fields))
        raise ValueError(f"unknown setting {dotted_name!r}; known here: {known}")
    current = getattr(target, name)
    value: Any
    if isinstance(current, bool):
        value = raw_value.lower() in {"1", "true", "yes", "on"}
    elif isinstance(current, int):
        value = int(raw_value)
    elif isinstance(current, float):
        value = float(raw_value)
    elif isinstance(current, list):
        value = [int(v) for v in raw_value.split(",") if v]
    else:
        value = raw_value
    setattr(target, name, value)


def describe(config: Any, prefix: str = "") -> list[tuple[str, Any, str, str]]:
    """(name, value, help, paper value) for every field, nested configs flattened."""
    rows: list[tuple[str, Any, str, str]] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe(value, prefix=f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, value, f.metadata.get("help", ""),
                         f.metadata.get("paper", "")))
    return rows
