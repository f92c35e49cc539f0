"""Training speed: O3SRL's TD3+BC oracle update rate and FLOP rate vs two same-run baselines.

Baselines, measured in the same process on the same threads:
- roofline: a large fp32 matmul (1024 x 1024), the most this CPU does per second in fp32;
- plain: the same TD3+BC update with the critics as separate modules called in a Python loop
  (everything else identical: same losses, optimiser, batch, widths).
Contenders: the project's batched critic ensemble (one batched matmul per layer) in fp32, and in
``bf16-mixed`` precision (bf16 hidden-layer matmuls, fp32 weights/outputs/losses).

FLOPs are counted analytically per update (2 * batch * in * out per linear layer forward,
backward twice that, the actor step every ``policy_delay`` updates), so every variant is credited
with the same work and GFLOP/s compares like with like.

    python benchmarks/train_throughput.py [--threads 1] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safepolicy.datasets import Dataset  # noqa: E402
from safepolicy.training.algorithms.base import TrainingContext, adam  # noqa: E402
from safepolicy.training.algorithms.td3bc import TD3BCConfig, TD3BCOracle  # noqa: E402
from safepolicy.training.data import OfflineBuffer  # noqa: E402
from safepolicy.training.networks import ObservationNormalizer, mlp  # noqa: E402


class LoopedCritics(nn.Module):
    """The plain way: N separate critic MLPs, evaluated one after another (same named groups
    as the ``CriticEnsemble`` it replaces)."""

    def __init__(
        self, obs_dim: int, action_dim: int, groups: dict[str, int], hidden: list[int]
    ) -> None:
        super().__init__()
        self.normalizer = ObservationNormalizer(obs_dim)
        self.groups = dict(groups)
        self.nets = nn.ModuleList(
            mlp(obs_dim + action_dim, 1, hidden) for _ in range(sum(groups.values()))
        )

    @property
    def group_sizes(self) -> list[int]:
        return list(self.groups.values())

    def members(self, name: str) -> list[int]:
        start = sum(
            size
            for group, size in self.groups.items()
            if list(self.groups).index(group) < list(self.groups).index(name)
        )
        return list(range(start, start + self.groups[name]))

    def group(self, q_values: torch.Tensor, name: str) -> torch.Tensor:
        members = self.members(name)
        return q_values[members[0] : members[-1] + 1]

    def forward(
        self, observations: torch.Tensor, actions: torch.Tensor, members: list[int] | None = None
    ) -> torch.Tensor:
        inputs = torch.cat([self.normalizer(observations), actions], dim=-1)
        chosen = range(len(self.nets)) if members is None else members
        return torch.stack([self.nets[i](inputs).squeeze(-1) for i in chosen])


def synthetic_dataset(obs_dim: int, action_dim: int, size: int = 20_000) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(
        observations=rng.standard_normal((size, obs_dim), dtype=np.float32),
        next_observations=rng.standard_normal((size, obs_dim), dtype=np.float32),
        actions=rng.uniform(-1, 1, (size, action_dim)).astype(np.float32),
        rewards=rng.standard_normal(size, dtype=np.float32),
        costs=(rng.random(size) < 0.1).astype(np.float32),
        terminals=np.zeros(size, dtype=bool),
        timeouts=np.zeros(size, dtype=bool),
        attrs={},
    )


def make_oracle(
    variant: str, obs_dim: int, action_dim: int, hidden: list[int], batch: int
) -> TD3BCOracle:
    dataset = synthetic_dataset(obs_dim, action_dim)
    buffer = OfflineBuffer(dataset, -np.ones(action_dim), np.ones(action_dim), torch.device("cpu"))
    context = TrainingContext(
        buffer=buffer,
        obs_dim=obs_dim,
        action_dim=action_dim,
        action_low=[-1.0] * action_dim,
        action_high=[1.0] * action_dim,
        hidden_sizes=hidden,
        gamma=0.99,
        batch_size=batch,
        cost_limit=10.0,
        episode_length=100,
        total_steps=10_000,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        seed=0,
        precision="bf16-mixed" if variant == "ensemble-bf16" else "fp32",
    )
    torch.manual_seed(0)
    oracle = TD3BCOracle(TD3BCConfig(), context, "episode")
    if variant == "plain":
        import copy

        oracle.critic = LoopedCritics(  # type: ignore[assignment]
            obs_dim, action_dim, oracle.critic.groups, hidden
        )
        oracle.target_critic = copy.deepcopy(oracle.critic).requires_grad_(False)
        oracle.critic_optimizer = adam(oracle.critic.parameters(), lr=oracle.config.critic_lr)
    return oracle


def flops_per_update(
    obs_dim: int, action_dim: int, hidden: list[int], batch: int, critics: int, policy_delay: int
) -> float:
    """The algorithm's matmul FLOPs per update (the actor step amortised over the delay).

    Counted as the minimum the algorithm needs, whatever an implementation does on top:
    critic step = target actor forward + target critics forward + critics forward and backward
    (backward ~ 2x forward); actor step = actor forward and backward + forward and input-backward
    of the two critics the actor loss reads (one per signal).
    """

    def forward(sizes: list[int]) -> float:
        return sum(2.0 * batch * a * b for a, b in itertools.pairwise(sizes))

    actor = forward([obs_dim, *hidden, 2 * action_dim])
    one_critic = forward([obs_dim + action_dim, *hidden, 1])
    critic_step = actor + critics * one_critic + 3 * critics * one_critic
    actor_step = 3 * actor + 2 * (2 * one_critic)
    return critic_step + actor_step / policy_delay


def roofline_gflops(seconds: float) -> dict[str, float]:
    result = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        for _ in range(3):
            a @ b
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            count += 1
        result[name] = 2 * 1024**3 * count / (time.perf_counter() - started) / 1e9
    return result


def updates_per_second(oracle: TD3BCOracle, seconds: float) -> float:
    for _ in range(20):
        oracle.step(1.0)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        oracle.step(1.0)
        count += 1
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=8.0, help="per variant per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--obs-dim", type=int, default=60)
    parser.add_argument("--action-dim", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_throughput.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    variants = ["plain", "ensemble-fp32", "ensemble-bf16"]
    oracles = {
        v: make_oracle(v, args.obs_dim, args.action_dim, args.hidden, args.batch) for v in variants
    }
    flops = flops_per_update(
        args.obs_dim, args.action_dim, args.hidden, args.batch, critics=4, policy_delay=2
    )
    samples: dict[str, list[float]] = {v: [] for v in [*variants, "roofline-fp32", "roofline-bf16"]}
    for _ in range(args.rounds):  # alternate so that background load hits every variant alike
        roof = roofline_gflops(args.seconds / 2)
        samples["roofline-fp32"].append(roof["fp32"])
        samples["roofline-bf16"].append(roof["bf16"])
        for variant in variants:
            samples[variant].append(updates_per_second(oracles[variant], args.seconds))

    median = {k: statistics.median(v) for k, v in samples.items()}
    roofline = median["roofline-fp32"]
    rows = []
    for variant in variants:
        gflops = median[variant] * flops / 1e9
        rows.append(
            {
                "variant": variant,
                "updates_per_s": median[variant],
                "gflops": gflops,
                "fraction_of_fp32_roofline": gflops / roofline,
                "speedup_vs_plain": median[variant] / median["plain"],
            }
        )
    print(
        f"threads {args.threads}, batch {args.batch}, hidden {args.hidden}, obs {args.obs_dim},"
        f" 4 critics; {flops / 1e6:.0f} MFLOP per update"
    )
    print(
        f"roofline (1024^3 matmul): fp32 {roofline:.0f} GFLOP/s, "
        f"bf16 {median['roofline-bf16']:.0f} GFLOP/s\n"
    )
    print("| update | updates/s | GFLOP/s | of fp32 roofline | vs plain |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['variant']} | {row['updates_per_s']:.0f} | {row['gflops']:.0f} | "
            f"{row['fraction_of_fp32_roofline']:.0%} | {row['speedup_vs_plain']:.2f}x |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "settings": {
                    k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                },
                "flops_per_update": flops,
                "roofline_gflops": {"fp32": roofline, "bf16": median["roofline-bf16"]},
                "rows": rows,
                "samples": samples,
                "torch": torch.__version__,
                "machine": {
                    "cpu_count": __import__("os").cpu_count(),
                    "platform": platform.platform(),
                },
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
