"""How far the TD3+BC critics get in a short run, against the dataset's Monte-Carlo returns.

O3SRL's bandit reads the cost critic's value of the current policy and compares it with the
budget; a critic that has not yet propagated values over the discount horizon reads far too
low, and the bandit then sees every policy as safe. This script trains the oracle alone
(fixed lambda) on a dataset for each target rate tau and prints, at a few checkpoints, the
critics' mean Q(s, a) over the first 100 steps of every dataset episode divided by the
discounted Monte-Carlo return-to-go from the same states (1.0 = caught up; reward uses the
training reward scale). Runs are on one thread each.

    python benchmarks/critic_lag.py --dataset data/quality/CarCircle.h5 --taus 0.005 0.05
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def discounted_returns(values: np.ndarray, slices: list[slice], gamma: float) -> np.ndarray:
    """Return-to-go of ``values`` within each episode (no bootstrap past its end)."""
    returns = np.zeros(len(values))
    for episode in slices:
        running = 0.0
        for index in range(episode.stop - 1, episode.start - 1, -1):
            running = values[index] + gamma * running
            returns[index] = running
    return returns


def probe(
    dataset_path: Path,
    task: str | None,
    tau: float,
    steps: int,
    checkpoints: int,
    precision: str,
    seed: int,
) -> dict:
    import torch

    from safepolicy.datasets import load_dataset
    from safepolicy.tasks import get_task
    from safepolicy.training.algorithms.td3bc import TD3BCConfig, TD3BCOracle
    from safepolicy.training.config import RunConfig, set_field
    from safepolicy.training.loop import build_context

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    dataset = load_dataset(dataset_path)
    run = RunConfig(steps=steps)
    set_field(run, "precision", precision)
    # The cost limit only sets the budget term, which a fixed-lambda actor loss does not use.
    task = task or dataset.attrs.get("task")
    if not task:
        raise SystemExit(f"{dataset_path} does not name its task; pass --task")
    context = build_context(
        dataset, get_task(task), run, cost_limit=10.0, device=torch.device("cpu"), seed=seed
    )
    buffer = context.offline
    oracle = TD3BCOracle(TD3BCConfig(tau=tau), context, "episode")
    slices = list(dataset.episode_slices())
    early = np.concatenate([np.arange(s.start, min(s.start + 100, s.stop)) for s in slices])
    reward_to_go = discounted_returns(dataset.rewards * run.reward_scale, slices, run.gamma)
    cost_to_go = discounted_returns(dataset.costs, slices, run.gamma)
    per_signal = oracle.config.critics_per_signal
    rows = []
    for step in range(1, steps + 1):
        oracle.step(1.0)
        if step % (steps // checkpoints) == 0:
            with torch.no_grad():
                q = oracle.critic(buffer.observations[early], buffer.actions[early])
            rows.append(
                {
                    "step": step,
                    "reward_fraction": q[:per_signal].mean().item() / reward_to_go[early].mean(),
                    "cost_fraction": q[per_signal:].mean().item() / cost_to_go[early].mean(),
                }
            )
    return {"tau": tau, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--task", help="the dataset's task (default: the file's 'task' attribute)")
    parser.add_argument("--taus", nargs="+", type=float, default=[0.005, 0.05])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--precision", default="bf16-mixed", choices=["fp32", "bf16-mixed"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "critic_lag.json"
    )
    args = parser.parse_args()
    jobs = [
        (args.dataset, args.task, tau, args.steps, args.checkpoints, args.precision, args.seed)
        for tau in args.taus
    ]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(probe, *zip(*jobs, strict=True)))
    print("tau     step    Q_r / MC reward-to-go   Q_c / MC cost-to-go")
    for result in results:
        for row in result["rows"]:
            print(
                f"{result['tau']:<7g} {row['step']:<7d} {row['reward_fraction']:>10.2f} "
                f"{row['cost_fraction']:>22.2f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"settings": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
