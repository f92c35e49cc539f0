"""CPQ update speed: safepolicy's CPQ against osrl-lib 0.1.0's, side by side in one run.

Both train on the same dataset (synthetic by default, BallRun's sizes: 7-d observations, 2-d
actions, 100-step episodes; or ``--dataset FILE.h5``) at OSRL's Bullet settings (batch 512,
actor and critics 2x256, VAE 400x400, 10 OOD draws per state, 2 reward and 2 cost critics),
each in its own subprocess with ``--threads`` torch threads (1 and 2 by default). A figure is
updates per second over ``--steps`` updates after ``--warmup`` updates, wall clock:
- OSRL: its ``TransitionDataset`` + ``DataLoader`` (``--osrl-workers``, 0 by default: the
  machine has two cores, and worker processes would compete with the update for them), the
  batch moved to the device, then ``CPQTrainer.train_one_step`` (as its train_cpq.py does);
- ours: ``CPQ.step`` (minibatch sampling from the device-resident buffer included), at
  ``run.precision`` fp32 and bf16-mixed.
The ratio ours / OSRL is per thread count, from the same run. Results go to ``--out`` (JSON).

Setup (osrl-lib is a measuring instrument, not a dependency; nothing goes into .venv):
    /work/main/.venv/bin/python -m venv /tmp/osrl-venv
    /tmp/osrl-venv/bin/pip install --no-deps osrl-lib==0.1.0 pyrallis "scipy<1.12"
osrl's modules import ``fsrl.utils`` for its loggers only, and fsrl is not on this machine's
package index: the OSRL worker puts a stand-in ``fsrl.utils`` (two no-op logger classes) into
``sys.modules`` before importing osrl. torch, numpy, gymnasium and tqdm come from the main
environment's site-packages, put on the scratch interpreter's PYTHONPATH (read only).
Run (under the shared lock, it is CPU-heavy):
    flock /tmp/heavy.lock env PYTHONPATH=$PWD /work/main/.venv/bin/python \\
        benchmarks/cpq_speed.py --osrl-python /tmp/osrl-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

BATCH = 512
EPISODE_LENGTH = 100
COST_LIMIT = 10.0


def synthetic_arrays(transitions: int, seed: int = 0) -> dict[str, np.ndarray]:
    """BallRun-sized random transitions; rewards and costs like the task's (sparse costs)."""
    rng = np.random.default_rng(seed)
    observations = rng.standard_normal((transitions, 7)).astype(np.float32)
    actions = rng.uniform(-1, 1, (transitions, 2)).astype(np.float32)
    timeouts = np.zeros(transitions, dtype=bool)
    timeouts[EPISODE_LENGTH - 1 :: EPISODE_LENGTH] = True
    return {
        "observations": observations,
        "next_observations": rng.standard_normal((transitions, 7)).astype(np.float32),
        "actions": actions,
        "rewards": rng.uniform(0, 13, transitions).astype(np.float32),
        "costs": (rng.uniform(size=transitions) < 0.1).astype(np.float32),
        "terminals": np.zeros(transitions, dtype=bool),
        "timeouts": timeouts,
    }


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    from safepolicy.datasets import load_dataset

    dataset = load_dataset(path)
    keys = (
        "observations",
        "next_observations",
        "actions",
        "rewards",
        "costs",
        "terminals",
        "timeouts",
    )
    return {key: np.asarray(getattr(dataset, key)) for key in keys}


def timed(step: object, warmup: int, steps: int) -> dict[str, float]:
    """Updates per second of ``step()`` over ``steps`` calls after ``warmup`` calls, and the
    matmul FLOPs of one update (``torch.utils.flop_counter``, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    for _ in range(warmup):
        step()  # type: ignore[operator]
    with FlopCounterMode(display=False) as counter:
        step()  # type: ignore[operator]
    gflop = counter.get_total_flops() / 1e9
    started = time.perf_counter()
    for _ in range(steps):
        step()  # type: ignore[operator]
    wall = time.perf_counter() - started
    return {
        "updates_per_s": steps / wall,
        "wall_s": wall,
        "steps": steps,
        "gflop_per_update": gflop,
        "gflop_per_s": gflop * steps / wall,
    }


def worker_matmul(threads: int) -> dict[str, float]:
    """The CPU's matmul rate at the VAE's largest shape (5120x400 @ 400x400), fp32 and bf16."""
    import torch

    torch.set_num_threads(threads)
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        left, right = torch.randn(5120, 400).to(dtype), torch.randn(400, 400).to(dtype)
        for _ in range(5):
            left @ right
        started = time.perf_counter()
        for _ in range(50):
            left @ right
        rates[f"{name}_gflop_per_s"] = (
            50 * 2 * 5120 * 400 * 400 / (time.perf_counter() - started) / 1e9
        )
    return rates


def worker_ours(
    arrays: dict[str, np.ndarray], threads: int, precision: str, warmup: int, steps: int
) -> dict[str, float]:
    import torch

    from safepolicy.datasets import Dataset
    from safepolicy.training.algorithms.base import TrainingContext
    from safepolicy.training.algorithms.cpq import CPQ, CPQConfig
    from safepolicy.training.data import OfflineBuffer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dataset = Dataset(**arrays, attrs={})  # type: ignore[arg-type]
    device = torch.device("cpu")
    buffer = OfflineBuffer(
        dataset, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), device, reward_scale=0.1
    )
    context = TrainingContext(
        buffer=buffer,
        obs_dim=7,
        action_dim=2,
        action_low=[-1.0, -1.0],
        action_high=[1.0, 1.0],
        hidden_sizes=[256, 256],
        gamma=0.99,
        batch_size=BATCH,
        cost_limit=COST_LIMIT,
        episode_length=EPISODE_LENGTH,
        total_steps=warmup + steps,
        device=device,
        generator=torch.Generator().manual_seed(0),
        seed=0,
        precision=precision,
    )
    algorithm = CPQ(CPQConfig(), context)
    logs: dict = {}

    def step() -> None:
        logs.update(algorithm.step("cpq"))

    result = timed(step, warmup, steps)
    result["final_critic_loss"] = float(logs["loss/critic"])  # waits for the last update
    return result


def worker_osrl(
    arrays: dict[str, np.ndarray], threads: int, workers: int, warmup: int, steps: int
) -> dict[str, float]:
    utils = types.ModuleType("fsrl.utils")

    class DummyLogger:  # the two names osrl imports from fsrl.utils; nothing else is used
        def __init__(self, *args: object, **kwargs: object) -> None: ...

        def store(self, *args: object, **kwargs: object) -> None: ...

    utils.DummyLogger = DummyLogger  # type: ignore[attr-defined]
    utils.WandbLogger = DummyLogger  # type: ignore[attr-defined]
    sys.modules.setdefault("fsrl", types.ModuleType("fsrl"))
    sys.modules["fsrl.utils"] = utils

    import torch
    from osrl.algorithms import CPQ, CPQTrainer
    from osrl.common import TransitionDataset
    from torch.utils.data import DataLoader

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    np.random.seed(0)
    device = "cpu"
    model = CPQ(
        state_dim=7,
        action_dim=2,
        max_action=1.0,
        a_hidden_sizes=[256, 256],
        c_hidden_sizes=[256, 256],
        vae_hidden_sizes=400,
        sample_action_num=10,
        gamma=0.99,
        tau=0.005,
        beta=0.5,
        num_q=2,
        num_qc=2,
        qc_scalar=1.5,
        cost_limit=int(COST_LIMIT),
        episode_len=EPISODE_LENGTH,
        device=device,
    )
    trainer = CPQTrainer(
        model,
        None,
        actor_lr=1e-4,
        critic_lr=1e-3,
        alpha_lr=1e-4,
        vae_lr=1e-3,
        reward_scale=0.1,
        cost_scale=1.0,
        device=device,
    )
    data = {key: value.copy() for key, value in arrays.items()}
    loader = DataLoader(
        TransitionDataset(data, reward_scale=0.1, cost_scale=1.0),
        batch_size=BATCH,
        pin_memory=False,
        num_workers=workers,
    )
    batches = iter(loader)

    def step() -> None:
        batch = next(batches)
        observations, next_observations, actions, rewards, costs, done = [
            b.to(device) for b in batch
        ]
        trainer.train_one_step(observations, next_observations, actions, rewards, costs, done)

    return timed(step, warmup, steps)


def run_worker(
    python: str,
    args: list[str],
    threads: int,
    extra_path: str = "",
) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if extra_path:  # the scratch interpreter reads torch & co. from the main environment
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), extra_path]))
    completed = subprocess.run(
        [python, __file__, *args], capture_output=True, text=True, env=env, check=False
    )
    if completed.returncode != 0:
        raise SystemExit(f"worker {' '.join(args[:2])} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--osrl-python",
        help="python of the scratch venv with osrl-lib 0.1.0 (leave out to time ours only)",
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=200, help="timed updates (ours)")
    parser.add_argument("--osrl-steps", type=int, default=40, help="timed updates (OSRL)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--osrl-workers", type=int, default=0)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16-mixed"])
    parser.add_argument("--transitions", type=int, default=100_000)
    parser.add_argument("--dataset", type=Path, help="a DSRL .h5 file instead of synthetic data")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpq_speed.json"))
    parser.add_argument("--worker", choices=["ours", "osrl", "matmul"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        with np.load(args.data) as loaded:
            arrays = {key: loaded[key] for key in loaded.files}
        threads = args.threads[0]
        if args.worker == "matmul":
            result = worker_matmul(threads)
        elif args.worker == "ours":
            result = worker_ours(arrays, threads, args.precision, args.warmup, args.steps)
        else:
            result = worker_osrl(arrays, threads, args.osrl_workers, args.warmup, args.osrl_steps)
        print(json.dumps(result))
        return 0

    import torch

    arrays = h5_arrays(args.dataset) if args.dataset else synthetic_arrays(args.transitions)
    fallback_site = str(Path(torch.__file__).resolve().parent.parent)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data.npz"
        np.savez(data, **arrays)
        common = ["--data", str(data), "--warmup", str(args.warmup)]
        for threads in args.threads:
            row: dict = {
                "threads": threads,
                "matmul": run_worker(
                    sys.executable,
                    ["--worker", "matmul", *common, "--threads", str(threads)],
                    threads,
                ),
            }
            if args.osrl_python:
                row["osrl"] = run_worker(
                    args.osrl_python,
                    [
                        "--worker",
                        "osrl",
                        *common,
                        "--threads",
                        str(threads),
                        "--osrl-steps",
                        str(args.osrl_steps),
                        "--osrl-workers",
                        str(args.osrl_workers),
                    ],
                    threads,
                    extra_path=fallback_site,
                )
            for precision in args.precisions:
                row[f"ours_{precision}"] = run_worker(
                    sys.executable,
                    [
                        "--worker",
                        "ours",
                        *common,
                        "--threads",
                        str(threads),
                        "--steps",
                        str(args.steps),
                        "--precision",
                        precision,
                    ],
                    threads,
                )
                if "osrl" in row:
                    row[f"ratio_{precision}"] = (
                        row[f"ours_{precision}"]["updates_per_s"] / row["osrl"]["updates_per_s"]
                    )
            rows.append(row)
            print(json.dumps(row), flush=True)

    from safepolicy.fileio import atomic_write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "batch_size": BATCH,
        "dataset": str(args.dataset or "synthetic BallRun-sized"),
        "transitions": len(arrays["rewards"]),
        "osrl_workers": args.osrl_workers,
        "rows": rows,
        "command": " ".join(sys.argv),
    }
    atomic_write_text(args.out, json.dumps(report, indent=2))
    print(
        "| threads | OSRL upd/s | "
        + " | ".join(f"ours {p} upd/s (x OSRL)" for p in args.precisions)
        + " |"
    )
    for row in rows:
        osrl = row.get("osrl", {}).get("updates_per_s")
        cells = [
            f"{row[f'ours_{p}']['updates_per_s']:.1f}"
            + (f" ({row[f'ratio_{p}']:.1f}x)" if osrl else "")
            for p in args.precisions
        ]
        print(
            f"| {row['threads']} | {osrl:.1f} | " if osrl else f"| {row['threads']} | - | ", end=""
        )
        print(" | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
