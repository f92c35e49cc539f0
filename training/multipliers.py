"""Lagrange multipliers as objects of their own: fixed, EXP3 over arms, dual ascent, PID.

Every multiplier has ``value`` (the lambda >= 0 to use now), ``update(measured_cost,
cost_limit)`` (one step of the lambda-player after the cost was measured against its budget)
and ``state_dict``/``load_state_dict`` for checkpoints. Algorithms own a multiplier and pass
``multiplier.value`` to their oracle's update; no oracle stores lambda.

The measured cost and the limit may be in any consistent unit (an episode cost against kappa,
or a cost value Q_c against the budget in value units); each class says what it assumes.

- ``FixedMultiplier``: a constant (TD3+BC-Lag).
- ``Exp3Multiplier``: EXP3 over K arms on [0, C] (O3SRL; the derivation is in o3srl.py).
- ``DualAscent``: projected gradient ascent on the dual, lambda <- [lambda + lr (J_c - d)]_+.
- ``PIDMultiplier``: Stooke, Achiam & Abbeel 2020, "Responsive Safety in RL by PID Lagrangian
  Methods" (Algorithm 2): lambda = [K_p e + I + K_d [J_c - J_c,prev]_+]_+ with e = J_c - d and
  the integral I <- [I + K_i e]_+. Gains are attributes, and ``control`` is the one place
  the law is applied, so an adaptive PID can change the gains between updates (subclass and
  override ``update``) or call ``control`` with errors of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class Multiplier(Protocol):
    """A Lagrange multiplier lambda >= 0 with its own update rule."""

    @property
    def value(self) -> float: ...

    def update(self, measured_cost: float, cost_limit: float) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class FixedMultiplier:
    """A lambda that never changes."""

    def __init__(self, value: float) -> None:
        if not math.isfinite(value) or value < 0.0:
            raise ValueError(f"a Lagrange multiplier must be finite and >= 0, got {value}")
        self._value = float(value)

    @property
    def value(self) -> float:
        """The constant lambda."""
        return self._value

    def update(self, measured_cost: float, cost_limit: float) -> dict[str, float]:
        """Nothing to learn; returns the value for the log."""
        return {"multiplier/lambda": self._value}

    def state_dict(self) -> dict[str, Any]:
        """The constant, so a checkpoint says what it trained with."""
        return {"value": self._value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the constant."""
        self._value = float(state["value"])


class DualAscent:
    """lambda <- clip(lambda + lr * (measured_cost - cost_limit), 0, max_value)."""

    def __init__(self, learning_rate: float, initial: float = 0.0,
                 max_value: float = math.inf) -> None:
        if learning_rate <= 0.0:
            raise ValueError(f"dual ascent needs a learning rate > 0, got {learning_rate}")
        self.learning_rate = learning_rate
        self.max_value = max_value
        self._value = float(initial)

    @property
    def value(self) -> float:
        """The current lambda."""
        return self._value

    def update(self, measured_cost: float, cost_limit: float) -> dict[str, float]:
        """One projected ascent step on the dual (raise lambda while over budget)."""
        step = self.learning_rate * (measured_cost - cost_limit)
        self._value = min(max(self._value + step, 0.0), self.max_value)
        return {"multiplier/lambda": self._value}

    def state_dict(self) -> dict[str, Any]:
        """The current lambda."""
        return {"value": self._value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the current lambda."""
        self._value = float(state["value"])


@dataclass
class PIDGains:
    """Proportional, integral and derivative gains of the PID Lagrangian."""

    proportional: float
    integral: float
    derivative: float


class PIDMultiplier:
    """PID Lagrangian (Stooke et al. 2020): reacts to the violation, its sum and its rise."""

    def __init__(self, gains: PIDGains, max_value: float = math.inf,
                 initial_integral: float = 0.0) -> None:
        if min(gains.proportional, gains.integral, gains.derivative) < 0.0:
            raise ValueError(f"PID gains must be >= 0, got {gains}")
        self.gains = gains
        self.max_value = max_value
        self.integral = float(initial_integral)
        self.previous_cost: float | None = None
        self._value = max(0.0, min(self.integral, max_value))

    @property
    def value(self) -> float:
        """The current lambda."""
        return self._value

    def control(self, error: float, cost_rise: float) -> float:
        """Apply the PID law to one error e = J_c - d and rise J_c - J_c,prev; returns lambda."""
        self.integral = max(0.0, self.integral + self.gains.integral * error)
        raw = (self.gains.proportional * error + self.integral
               + self.gains.derivative * max(0.0, cost_rise))
        self._value = min(max(raw, 0.0), self.max_value)
        return self._value

    def update(self, measured_cost: float, cost_limit: float) -> dict[str, float]:
        """One PID step on the measured cost against the limit."""
        rise = 0.0 if self.previous_cost is None else measured_cost - self.previous_cost
        self.previous_cost = measured_cost
        self.control(measured_cost - cost_limit, rise)
        return {"multiplier/lambda": self._value, "multiplier/integral": self.integral}

    def state_dict(self) -> dict[str, Any]:
        """Integral, previous cost, lambda and gains."""
        return {"value": self._value, "integral": self.integral,
                "previous_cost": self.previous_cost,
                "gains": [self.gains.proportional, self.gains.integral, self.gains.derivative]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved."""
        self._value = float(state["value"])
        self.integral = float(state["integral"])
        previous = state["previous_cost"]
        self.previous_cost = None if previous is None else float(previous)
        self.gains = PIDGains(*(float(g) for g in state["gains"]))


def lambda_arms(num_arms: int, lambda_max: float, geometry: str) -> np.ndarray:
    """K multipliers on [0, C]: evenly spaced, or quadratically denser near zero."""
    if num_arms < 2:
        raise ValueError(f"O3SRL needs at least 2 arms, got num_arms={num_arms}")
    grid = np.linspace(0.0, 1.0, num_arms)
    if geometry == "uniform":
        return lambda_max * grid
    if geometry == "dense-near-zero":
        return lambda_max * grid**2
    raise ValueError(f"arm_geometry must be 'uniform' or 'dense-near-zero', got {geometry!r}")


def exp3_learning_rate(num_arms: int, rounds: int) -> float:
    """eta = sqrt(2 ln K / (K T)), the step size minimising EXP3's regret bound."""
    return math.sqrt(2.0 * math.log(num_arms) / (num_arms * max(rounds, 1)))


class Exp3:
    """EXP3 for losses in [0, 1] with importance-weighted loss estimates."""

    def __init__(self, num_arms: int, rounds: int, seed: int, exploration: float = 0.0,
                 learning_rate: float | None = None) -> None:
        self.num_arms = num_arms
        self.learning_rate = learning_rate or exp3_learning_rate(num_arms, rounds)
        self.exploration = exploration
        self.cumulative_loss_estimates = np.zeros(num_arms)
        self.rng = np.random.default_rng(seed)

    def probabilities(self) -> np.ndarray:
        """softmax(-eta * cumulative estimates), mixed with ``exploration`` uniform."""
        logits = -self.learning_rate * self.cumulative_loss_estimates
        weights = np.exp(logits - logits.max())
        probabilities = weights / weights.sum()
        return (1.0 - self.exploration) * probabilities + self.exploration / self.num_arms

    def sample(self) -> int:
        """Draw an arm from the current distribution."""
        return int(self.rng.choice(self.num_arms, p=self.probabilities()))

    def update(self, arm: int, loss: float) -> None:
        """Charge ``loss`` in [0, 1] to the pulled ``arm``, divided by its probability."""
        if not 0.0 <= loss <= 1.0:
            raise ValueError(f"EXP3 losses must lie in [0, 1], got {loss}")
        self.cumulative_loss_estimates[arm] += loss / self.probabilities()[arm]

    def state_dict(self) -> dict[str, Any]:
        """Cumulative estimates and the arm-drawing RNG."""
        return {"cumulative_loss_estimates": self.cumulative_loss_estimates.tolist(),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved."""
        self.cumulative_loss_estimates = np.asarray(state["cumulative_loss_estimates"])
        self.rng.bit_generator.state = state["rng"]


def lagrange_player_loss(lagrange_multiplier: float, cost_value: float, budget_value: float,
                         lambda_max: float, cost_value_bound: float) -> float:
    """l = -(lambda - C/2)(V_c - kappa_v), mapped to [0, 1] by its bound C G / 2."""
    gap = float(np.clip(cost_value - budget_value, -cost_value_bound, cost_value_bound))
    centred_multiplier = lagrange_multiplier - lambda_max / 2.0
    return 0.5 - centred_multiplier * gap / (lambda_max * cost_value_bound)


class Exp3Multiplier:
    """O3SRL's lambda-player: EXP3 over ``arms``; each update is one bandit round.

    ``update(cost_value, budget_value)`` takes the round's cost value estimate and the budget in
    the same (value) units; ``cost_value_bound`` G bounds |V_c - kappa_v| so the loss is in [0, 1].
    """

    def __init__(self, arms: np.ndarray, rounds: int, seed: int, cost_value_bound: float,
                 exploration: float = 0.0) -> None:
        self.arms = np.asarray(arms, dtype=float)
        self.lambda_max = float(self.arms.max())
        self.cost_value_bound = cost_value_bound
        self.bandit = Exp3(len(self.arms), rounds, seed=seed, exploration=exploration)
        self.arm = self.bandit.sample()

    @property
    def value(self) -> float:
        """The multiplier of the arm pulled this round."""
        return float(self.arms[self.arm])

    def expected_value(self) -> float:
        """E[lambda] under the bandit's current distribution."""
        return float(self.bandit.probabilities() @ self.arms)

    def update(self, measured_cost: float, cost_limit: float) -> dict[str, float]:
        """Charge the pulled arm its loss, then draw the next round's arm."""
        pulled = self.value
        loss = lagrange_player_loss(pulled, measured_cost, cost_limit, self.lambda_max,
                                    self.cost_value_bound)
        self.bandit.update(self.arm, loss)
        probabilities = self.bandit.probabilities()
        logs = {"multiplier/lambda": pulled, "multiplier/bandit_loss": loss,
                "multiplier/expected_lambda": float(probabilities @ self.arms)}
        logs.update({f"multiplier/p_arm{k}": float(p) for k, p in enumerate(probabilities)})
        self.arm = self.bandit.sample()
        return logs

    def state_dict(self) -> dict[str, Any]:
        """The bandit and the pulled arm."""
        return {"bandit": self.bandit.state_dict(), "arm": self.arm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved."""
        self.bandit.load_state_dict(state["bandit"])
        self.arm = int(state["arm"])
