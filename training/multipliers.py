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
- ``AdaptivePIDMultiplier`` (alias ``AdaptivePID``): Marvel's aPID, a PID on smoothed signals
  whose gains adapt from a buffer of smoothed costs (departures in its docstring).
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

    def __init__(
        self, learning_rate: float, initial: float = 0.0, max_value: float = math.inf
    ) -> None:
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

    def __init__(
        self, gains: PIDGains, max_value: float = math.inf, initial_integral: float = 0.0
    ) -> None:
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
        raw = (
            self.gains.proportional * error
            + self.integral
            + self.gains.derivative * max(0.0, cost_rise)
        )
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
        return {
            "value": self._value,
            "integral": self.integral,
            "previous_cost": self.previous_cost,
            "gains": [self.gains.proportional, self.gains.integral, self.gains.derivative],
        }

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

    def __init__(
        self,
        num_arms: int,
        rounds: int,
        seed: int,
        exploration: float = 0.0,
        learning_rate: float | None = None,
    ) -> None:
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
        return {
            "cumulative_loss_estimates": self.cumulative_loss_estimates.tolist(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved."""
        self.cumulative_loss_estimates = np.asarray(state["cumulative_loss_estimates"])
        self.rng.bit_generator.state = state["rng"]


def lagrange_player_loss(
    lagrange_multiplier: float,
    cost_value: float,
    budget_value: float,
    lambda_max: float,
    cost_value_bound: float,
) -> float:
    """l = -(lambda - C/2)(V_c - kappa_v), mapped to [0, 1] by its bound C G / 2."""
    gap = float(np.clip(cost_value - budget_value, -cost_value_bound, cost_value_bound))
    centred_multiplier = lagrange_multiplier - lambda_max / 2.0
    return 0.5 - centred_multiplier * gap / (lambda_max * cost_value_bound)


class Exp3Multiplier:
    """O3SRL's lambda-player: EXP3 over ``arms``; each update is one bandit round.

    ``update(cost_value, budget_value)`` takes the round's cost value estimate and the budget in
    the same (value) units; ``cost_value_bound`` G bounds |V_c - kappa_v| so the loss is in [0, 1].
    With ``observed_bound`` G starts there and grows to the largest |V_c - kappa_v| met so far
    (a round's gap is taken into G before its loss is computed, so every loss stays in [0, 1]).
    """

    def __init__(
        self,
        arms: np.ndarray,
        rounds: int,
        seed: int,
        cost_value_bound: float,
        exploration: float = 0.0,
        observed_bound: bool = False,
    ) -> None:
        self.arms = np.asarray(arms, dtype=float)
        self.lambda_max = float(self.arms.max())
        self.cost_value_bound = cost_value_bound
        self.observed_bound = observed_bound
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
        if self.observed_bound:
            self.cost_value_bound = max(self.cost_value_bound, abs(measured_cost - cost_limit))
        loss = lagrange_player_loss(
            pulled, measured_cost, cost_limit, self.lambda_max, self.cost_value_bound
        )
        self.bandit.update(self.arm, loss)
        probabilities = self.bandit.probabilities()
        logs = {
            "multiplier/lambda": pulled,
            "multiplier/bandit_loss": loss,
            "multiplier/expected_lambda": float(probabilities @ self.arms),
            "multiplier/cost_value_bound": self.cost_value_bound,
        }
        logs.update({f"multiplier/p_arm{k}": float(p) for k, p in enumerate(probabilities)})
        self.arm = self.bandit.sample()
        return logs

    def state_dict(self) -> dict[str, Any]:
        """The bandit, the pulled arm and the loss bound G (it grows with ``observed_bound``)."""
        return {
            "bandit": self.bandit.state_dict(),
            "arm": self.arm,
            "cost_value_bound": self.cost_value_bound,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved."""
        self.bandit.load_state_dict(state["bandit"])
        self.arm = int(state["arm"])
        self.cost_value_bound = float(state.get("cost_value_bound", self.cost_value_bound))


class AdaptivePIDMultiplier(PIDMultiplier):
    """Marvel's aPID (Chen et al., seed 002, Section 3.2 and Appendix F).

    Position form: lambda = [K_p e_bar + I + K_d D]_+ with the raw violation e = J_c - d, its
    EMA e_bar (factor ``smoothing``), the anti-windup integral I <- [I + K_i e]_+, and the
    lagged derivative D = [c_bar_t - c_bar_{t - delay}]_+ of the EMA-smoothed cost c_bar.
    Before each law the gains adapt from the buffer of the last ``delay`` smoothed costs, with
    mean m and std s: over the limit K_p, K_i grow by 1 + eta (m - d) / m, under it they
    shrink by 1 - eta (d - m) / m; K_d grows by 1 + eta_d s / m; each gain is clamped to
    [``gain_floor``, ``gain_ceiling``] times its initial value.

    Departures from the paper, and why:
    - The EMAs start at the first measurement instead of 0, so the first updates are not
      biased towards zero violation (the paper does not say how they start).
    - m in the adaptation is floored at ``min_mean_cost`` (default 1e-6): the paper divides
      by m, which is undefined when the smoothed cost is 0 (a common value for safe policies).
    - The derivative is clipped at 0 as in Stooke et al.'s PID (the paper's Eq. 12 does not
      show the clip); before ``delay`` updates exist it uses the oldest smoothed cost held.
    - Gains adapt once the buffer holds at least 2 smoothed costs (s needs two values).
    - The integral state accumulates K_i e (in lambda units, as OmniSafe's PID Lagrangian whose
      EMA/delay structure the paper's Appendix F describes), so adapting K_i changes how fast
      I moves, not I itself. Stooke et al.'s K_i * sum(e) is the same for fixed gains; with
      adapted gains it rescales the whole accumulated integral and overshot more in the
      lagged test process (tests/test_apid.py: 4.56 vs 3.17 on seed 0).
    """

    def __init__(
        self,
        gains: PIDGains,
        max_value: float = math.inf,
        initial_integral: float = 0.0,
        smoothing: float = 0.9,
        delay: int = 10,
        proportional_rate: float = 0.05,
        integral_rate: float = 0.05,
        derivative_rate: float = 0.05,
        gain_floor: float = 0.1,
        gain_ceiling: float = 10.0,
        min_mean_cost: float = 1e-6,
    ) -> None:
        super().__init__(gains, max_value=max_value, initial_integral=initial_integral)
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"aPID smoothing must lie in [0, 1), got {smoothing}")
        if delay < 1:
            raise ValueError(f"aPID delay must be >= 1 update, got {delay}")
        if min(proportional_rate, integral_rate, derivative_rate) < 0.0:
            raise ValueError("aPID adaptation rates must be >= 0")
        if not 0.0 < gain_floor <= 1.0 <= gain_ceiling:
            raise ValueError(
                f"aPID gain clamps need 0 < floor <= 1 <= ceiling, got "
                f"[{gain_floor}, {gain_ceiling}]"
            )
        self.initial_gains = PIDGains(gains.proportional, gains.integral, gains.derivative)
        self.gains = PIDGains(gains.proportional, gains.integral, gains.derivative)
        self.smoothing = smoothing
        self.delay = delay
        self.proportional_rate = proportional_rate
        self.integral_rate = integral_rate
        self.derivative_rate = derivative_rate
        self.gain_floor = gain_floor
        self.gain_ceiling = gain_ceiling
        self.min_mean_cost = min_mean_cost
        self.smoothed_violation: float | None = None
        self.smoothed_cost: float | None = None
        self.smoothed_costs: list[float] = []  # the last delay + 1 smoothed costs, oldest first

    def _clamp(self, gain: float, initial: float) -> float:
        return min(max(gain, self.gain_floor * initial), self.gain_ceiling * initial)

    def adapt_gains(self, cost_limit: float) -> None:
        """Scale the gains from the mean and std of the buffered smoothed costs, then clamp."""
        window = np.asarray(self.smoothed_costs[-self.delay :])
        if len(window) < 2:
            return
        mean = max(float(window.mean()), self.min_mean_cost)
        spread = float(window.std())
        if mean > cost_limit:
            pi_factor_p = 1.0 + self.proportional_rate * (mean - cost_limit) / mean
            pi_factor_i = 1.0 + self.integral_rate * (mean - cost_limit) / mean
        else:
            pi_factor_p = 1.0 - self.proportional_rate * (cost_limit - mean) / mean
            pi_factor_i = 1.0 - self.integral_rate * (cost_limit - mean) / mean
        d_factor = 1.0 + self.derivative_rate * spread / mean
        initial = self.initial_gains
        self.gains = PIDGains(
            self._clamp(self.gains.proportional * pi_factor_p, initial.proportional),
            self._clamp(self.gains.integral * pi_factor_i, initial.integral),
            self._clamp(self.gains.derivative * d_factor, initial.derivative),
        )

    def update(self, measured_cost: float, cost_limit: float) -> dict[str, float]:
        """Smooth, buffer, adapt the gains, then apply the position-form law."""
        violation = measured_cost - cost_limit
        a = self.smoothing
        self.smoothed_violation = (
            violation
            if self.smoothed_violation is None
            else (a * self.smoothed_violation + (1.0 - a) * violation)
        )
        self.smoothed_cost = (
            measured_cost
            if self.smoothed_cost is None
            else (a * self.smoothed_cost + (1.0 - a) * measured_cost)
        )
        self.smoothed_costs = [*self.smoothed_costs, self.smoothed_cost][-(self.delay + 1) :]
        self.previous_cost = measured_cost
        self.adapt_gains(cost_limit)
        self.integral = max(0.0, self.integral + self.gains.integral * violation)
        lagged_rise = max(0.0, self.smoothed_cost - self.smoothed_costs[0])
        raw = (
            self.gains.proportional * self.smoothed_violation
            + self.integral
            + self.gains.derivative * lagged_rise
        )
        self._value = min(max(raw, 0.0), self.max_value)
        return {
            "multiplier/lambda": self._value,
            "multiplier/integral": self.integral,
            "multiplier/kp": self.gains.proportional,
            "multiplier/ki": self.gains.integral,
            "multiplier/kd": self.gains.derivative,
            "multiplier/smoothed_cost": self.smoothed_cost,
        }

    def state_dict(self) -> dict[str, Any]:
        """PID state plus the EMAs, the smoothed-cost buffer and the adapted gains."""
        state = super().state_dict()
        state.update(
            {
                "smoothed_violation": self.smoothed_violation,
                "smoothed_cost": self.smoothed_cost,
                "smoothed_costs": list(self.smoothed_costs),
                "initial_gains": [
                    self.initial_gains.proportional,
                    self.initial_gains.integral,
                    self.initial_gains.derivative,
                ],
            }
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved."""
        super().load_state_dict(state)
        for name in ("smoothed_violation", "smoothed_cost"):
            saved = state[name]
            setattr(self, name, None if saved is None else float(saved))
        self.smoothed_costs = [float(c) for c in state["smoothed_costs"]]
        self.initial_gains = PIDGains(*(float(g) for g in state["initial_gains"]))


AdaptivePID = AdaptivePIDMultiplier  # the name issue 12 uses
