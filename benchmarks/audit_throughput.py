"""Audit throughput: env steps/s with the policy in the loop vs the raw vectorised step rate.

For each task and vectorisation, in the same process and back to back:

- raw: the vector env that the audit uses (``safepolicy.rollout.make_vector_env``: same seeds,
  same wrappers), stepped with pre-drawn uniform random actions until the same episodes finish;
- audit: ``safepolicy.rollout.rollout_episodes`` with an exported policy (an untrained
  ``SquashedGaussianActor``, 256x256, through the real exporter and onnxruntime, one thread)
  and per-step cost recording, exactly as ``safepolicy audit`` runs it.

Both include creating and closing the environments. The ratio audit/raw is the target
(>= 0.7). Run: ``.venv/bin/python benchmarks/audit_throughput.py [--episodes N] [--envs E]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from safepolicy.rollout import make_vector_env, rollout_episodes
from safepolicy.tasks import get_task, make_env


def export_policy(task: str, repo: Path):  # type: ignore[no-untyped-def]
    import torch

    from safepolicy.export.artifact import load_policy
    from safepolicy.export.onnx_export import export_actor
    from safepolicy.training.checkpoint import ActorMetadata
    from safepolicy.training.networks import SquashedGaussianActor

    env = make_env(task)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    torch.manual_seed(0)
    actor = SquashedGaussianActor(obs_dim, action_dim, (256, 256))
    metadata = ActorMetadata(
        task=task, env_id=get_task(task).env_id, algorithm="untrained", cost_limit=20.0, seed=0
    )
    return load_policy(
        export_actor(actor, metadata, repo, task.lower()),
        providers=["CPUExecutionProvider"],
        threads=1,
    )


def raw_rate(task: str, episodes: int, num_envs: int, vectorization: str) -> float:
    spec = get_task(task)
    num_envs = min(num_envs, episodes)  # as rollout_episodes does
    started = time.perf_counter()
    envs = make_vector_env(spec, list(range(episodes)), num_envs, vectorization)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    space = envs.action_space
    actions = rng.uniform(space.low, space.high, size=(256, *space.shape)).astype(np.float32)
    finished, index = 0, 0
    envs.reset()
    while finished < episodes:
        _, _, terminated, truncated, infos = envs.step(actions[index % 256])
        index += 1
        for i in np.flatnonzero(terminated | truncated):
            finished += infos["final_info"][i].get("safepolicy_episode") is not None
    envs.close()
    return episodes * spec.max_episode_steps / (time.perf_counter() - started)


def audit_rate(
    policy,
    task: str,
    episodes: int,
    num_envs: int,  # type: ignore[no-untyped-def]
    vectorization: str,
) -> float:
    started = time.perf_counter()
    records = rollout_episodes(
        policy, task, episodes, num_envs=num_envs, record_costs=True, vectorization=vectorization
    )  # type: ignore[arg-type]
    return sum(r.length for r in records) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks", nargs="+", default=["BallRun", "HalfCheetahVelocity", "PointGoal1"]
    )
    parser.add_argument("--episodes", type=int, default=8, help="per measurement (PointGoal1: /4)")
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--vectorizations", nargs="+", default=["sync", "async"])
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="alternate raw and audit runs this often; medians are reported "
        "(the machines are shared and noisy)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as repo:
        for task in args.tasks:
            policy = export_policy(task, Path(repo))
            episodes = max(2, args.episodes // 4) if task == "PointGoal1" else args.episodes
            for num_envs in args.envs:
                for vectorization in ["sync"] if num_envs == 1 else args.vectorizations:
                    raws, audits = [], []
                    for _ in range(args.repeats):
                        raws.append(raw_rate(task, episodes, num_envs, vectorization))
                        audits.append(audit_rate(policy, task, episodes, num_envs, vectorization))
                    raw, audit = float(np.median(raws)), float(np.median(audits))
                    row = {
                        "task": task,
                        "vectorization": vectorization,
                        "envs": num_envs,
                        "episodes": episodes,
                        "raw_steps_per_s": round(raw),
                        "audit_steps_per_s": round(audit),
                        "ratio": round(audit / raw, 3),
                    }
                    rows.append(row)
                    print(
                        f"{task:20s} {vectorization:5s} envs={num_envs} raw {raw:8.0f}/s "
                        f"audit {audit:8.0f}/s ratio {audit / raw:.2f}",
                        flush=True,
                    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
