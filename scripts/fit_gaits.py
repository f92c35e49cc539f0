"""Fit the open-loop gaits of ``safepolicy.behavior.VELOCITY_GAITS`` (offline, reproducible).

For a Safety-Gymnasium Velocity task, a seeded cross-entropy search looks for the periodic gait
(one frequency; per joint an amplitude, phase and bias, see ``safepolicy.behavior.Gait``) with
the highest 1000-step return in the real environment. It then measures the gait's mean forward
speed (the speed the cost is charged on) at scales 0, 0.1, ..., 1 over two reset seeds, and
prints a ``Gait(...)`` literal to paste into ``VELOCITY_GAITS``.

    .venv/bin/python scripts/fit_gaits.py --task HalfCheetahVelocity   # about a minute
    .venv/bin/python scripts/fit_gaits.py --task SwimmerVelocity
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from safepolicy.behavior import VELOCITY_THRESHOLDS, Gait
from safepolicy.tasks import get_task, make_env

# Initial search distribution per task: frequency (Hz), amplitude, phase and bias as (mean, std).
# HalfCheetah starts from a broad guess. Swimmer starts near the best point of a coarse grid
# (0.6 Hz, square-ish waves of amplitude 3 clipped to +-1, the tail 0.8 rad behind): from a broad
# guess the search settles on a slow drift of 0.04 m/s.
INITIAL = {
    "HalfCheetahVelocity": dict(
        frequency=(2.0, 1.0), amplitude=(0.6, 0.3), phase=(0.0, math.pi), bias=(0.0, 0.3)
    ),
    "SwimmerVelocity": dict(
        frequency=(0.6, 0.15), amplitude=(3.0, 0.5), phase=([0.0, -0.8], 0.4), bias=(0.0, 0.1)
    ),
}
DEFAULT_INITIAL = dict(
    frequency=(2.0, 1.0), amplitude=(0.6, 0.3), phase=(0.0, math.pi), bias=(0.0, 0.3)
)
MAX_AMPLITUDE = 3.0


def to_gait(
    x: np.ndarray, joints: int, speeds: tuple[float, ...] = (), unsafe: tuple[float, ...] = ()
) -> Gait:
    return Gait(
        frequency=float(x[0]),
        amplitude=tuple(float(v) for v in x[1 : 1 + joints]),
        phase=tuple(float(v) for v in x[1 + joints : 1 + 2 * joints]),
        bias=tuple(float(v) for v in x[1 + 2 * joints : 1 + 3 * joints]),
        speeds=speeds,
        unsafe=unsafe,
    )


def rollout(env, gait: Gait, scale: float, seed: int, planar: bool) -> tuple[float, list[float]]:
    """Return and per-step speeds of one episode of ``gait`` at ``scale``."""
    env.reset(seed=seed)
    dt = float(env.unwrapped.dt)
    total, speeds = 0.0, []
    for step in range(1000):
        action = np.clip(gait.action(step * dt, scale), -1.0, 1.0).astype(np.float32)
        _, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        vx, vy = float(info["x_velocity"]), float(info.get("y_velocity", 0.0))
        speeds.append(math.hypot(vx, vy) if planar else vx)
        if terminated or truncated:
            break
    return total, speeds


def fit(task: str, iterations: int, population: int, elites: int, seed: int) -> Gait:
    spec = get_task(task)
    env = make_env(spec)
    joints = int(env.action_space.shape[0])
    planar = task == "AntVelocity"
    init = INITIAL.get(task, DEFAULT_INITIAL)
    mean = np.concatenate(
        [
            np.broadcast_to(np.asarray(init[k][0], dtype=float), (n,))
            for k, n in (
                ("frequency", 1),
                ("amplitude", joints),
                ("phase", joints),
                ("bias", joints),
            )
        ]
    )
    std = np.concatenate(
        [
            np.broadcast_to(np.asarray(init[k][1], dtype=float), (n,))
            for k, n in (
                ("frequency", 1),
                ("amplitude", joints),
                ("phase", joints),
                ("bias", joints),
            )
        ]
    )
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for iteration in range(iterations):
        candidates = mean + std * rng.standard_normal((population, mean.size))
        candidates[:, 0] = np.clip(np.abs(candidates[:, 0]), 0.05, None)
        candidates[:, 1 : 1 + joints] = np.clip(candidates[:, 1 : 1 + joints], 0.0, MAX_AMPLITUDE)
        returns = np.array(
            [rollout(env, to_gait(x, joints), 1.0, 1000 + iteration, planar)[0] for x in candidates]
        )
        best = candidates[np.argsort(returns)[-elites:]]
        mean, std = best.mean(axis=0), best.std(axis=0) + 0.02
        print(
            f"iteration {iteration:2d}: best return {returns.max():8.1f}, "
            f"elite mean {np.sort(returns)[-elites:].mean():8.1f} "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    threshold = VELOCITY_THRESHOLDS[task]
    speeds, unsafe = [], []
    for scale in np.linspace(0.0, 1.0, 11):
        results = [rollout(env, to_gait(mean, joints), float(scale), s, planar) for s in (1, 2)]
        per_step = np.concatenate([r[1] for r in results])
        speeds.append(float(per_step.mean()))
        unsafe.append(float((per_step > threshold).mean()))
        print(
            f"scale {scale:.1f}: return {np.mean([r[0] for r in results]):8.1f}, "
            f"mean speed {per_step.mean():.3f}, steps over threshold "
            f"{(per_step > threshold).mean():.2f}, episode length {len(per_step) / 2:.0f}"
        )
    env.close()
    return to_gait(mean, joints, tuple(speeds), tuple(unsafe))


def literal(gait: Gait) -> str:
    def numbers(values: tuple[float, ...], digits: int) -> str:
        return "(" + ", ".join(f"{v:.{digits}f}" for v in values) + ")"

    return (
        f"Gait(\n    frequency={gait.frequency:.4f},\n"
        f"    amplitude={numbers(gait.amplitude, 4)},\n"
        f"    phase={numbers(gait.phase, 4)},\n"
        f"    bias={numbers(gait.bias, 4)},\n"
        f"    speeds={numbers(gait.speeds, 3)},\n"
        f"    unsafe={numbers(gait.unsafe, 2)},\n)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=sorted(VELOCITY_THRESHOLDS))
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--elites", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gait = fit(args.task, args.iterations, args.population, args.elites, args.seed)
    print(f"\n# {args.task}: threshold {VELOCITY_THRESHOLDS[args.task]}")
    print(literal(gait))


if __name__ == "__main__":
    main()
