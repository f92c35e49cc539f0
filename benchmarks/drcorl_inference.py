"""DRCORL's fast-inference claim: the extracted actor (ONNX) against its diffusion model.

Batch 1, one thread on each side. The extracted actor is exported through the project's
exporter and run through ``OnnxPolicy.__call__`` (input checks included, what the server calls);
the diffusion behaviour model draws an action in torch eager (``inference_mode``) with its
deterministic DDIM sampler at its default 10 steps and at 50. The paper names no sampler step
count of its own; it says diffusion policies need "at least 10 steps" even with DPM-solver-style
samplers. The torch actor is timed too, as the baseline both are measured against in the run.

    python benchmarks/drcorl_inference.py [--run RUN_DIR] [--iterations 1000]

With ``--run`` (a finished ``safepolicy train drcorl`` run) the trained actor and the diffusion
model of its ``checkpoints/stage-behaviour.pt`` are timed; without it, untrained networks of the
default sizes (actor 256x256, noise predictor 3x256) at BallRun's sizes (obs 7, action 2): the
time of a forward pass does not depend on the weights. Prints a Markdown table and writes
``benchmarks/results/drcorl_inference.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from export_latency import interleaved

from safepolicy.export.artifact import load_policy
from safepolicy.export.onnx_export import export_actor
from safepolicy.fileio import atomic_write_text
from safepolicy.training.algorithms.drcorl import DRCORLConfig
from safepolicy.training.checkpoint import ActorMetadata, load_actor
from safepolicy.training.diffusion import DiffusionBehaviourModel
from safepolicy.training.networks import SquashedGaussianActor

RESULTS = Path(__file__).resolve().parent / "results" / "drcorl_inference.json"
SAMPLER_STEPS = (10, 50)
OBS_DIM, ACTION_DIM = 7, 2  # BallRun


def networks(run: Path | None) -> tuple[SquashedGaussianActor, DiffusionBehaviourModel, str]:
    """The actor and diffusion model to time, and where they came from."""
    if run is None:
        torch.manual_seed(0)
        sizes = tuple(DRCORLConfig().diffusion_hidden_sizes)
        return (
            SquashedGaussianActor(OBS_DIM, ACTION_DIM),
            DiffusionBehaviourModel(OBS_DIM, ACTION_DIM, sizes),
            "untrained, default sizes",
        )
    actor, _ = load_actor(run)
    state = torch.load(
        run / "checkpoints" / "stage-behaviour.pt", map_location="cpu", weights_only=False
    )
    sizes = tuple(state["config"]["algorithm_config"]["diffusion_hidden_sizes"])
    model = DiffusionBehaviourModel(actor.obs_dim, actor.action_dim, sizes)
    model.load_state_dict(state["algorithm"]["behaviour"])
    return actor, model, str(run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--run", type=Path, default=None, help="a finished drcorl run directory")
    parser.add_argument("--iterations", type=int, default=1000, help="timed calls per model")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results path")
    args = parser.parse_args(argv)
    if args.run is not None and not (args.run / "checkpoints" / "stage-behaviour.pt").is_file():
        parser.error(
            f"{args.run}: no checkpoints/stage-behaviour.pt; pass the --out directory "
            "of a `safepolicy train drcorl` run that finished its behaviour stage"
        )

    torch.set_num_threads(1)
    actor, model, source = networks(args.run)
    actor, model = actor.eval(), model.eval()
    lineage = ActorMetadata(
        task="benchmark", env_id="none", algorithm="drcorl", cost_limit=0.0, seed=0
    )
    observations = np.random.default_rng(0).standard_normal((1, actor.obs_dim)).astype(np.float32)
    state = torch.from_numpy(observations)
    generator = torch.Generator().manual_seed(0)

    with tempfile.TemporaryDirectory() as repo:
        policy = load_policy(
            export_actor(actor, lineage, repo, "drcorl"),
            providers=["CPUExecutionProvider"],
            threads=1,
        )

        def run_onnx() -> np.ndarray:
            return policy(observations)

        def run_actor() -> torch.Tensor:
            with torch.inference_mode():
                return actor(state)

        contenders = {"extracted actor, onnxruntime": run_onnx, "extracted actor, torch": run_actor}
        for steps in SAMPLER_STEPS:

            def run_diffusion(steps: int = steps) -> torch.Tensor:
                with torch.inference_mode():
                    return model.sample(state, steps=steps, generator=generator)

            contenders[f"diffusion, torch, {steps} DDIM steps"] = run_diffusion
        np.testing.assert_allclose(run_onnx(), run_actor().numpy(), atol=1e-5)
        # in rounds, alternating the contenders, so a noisy neighbour hits all of them
        timings = interleaved(contenders, args.iterations)

    onnx_p50 = float(np.percentile(timings["extracted actor, onnxruntime"], 50))
    rows = []
    for name, samples in timings.items():
        p50 = float(np.percentile(samples, 50))
        rows.append(
            {
                "model": name,
                "calls": len(samples),
                "p50_us": p50,
                "p99_us": float(np.percentile(samples, 99)),
                "vs_onnx_p50": p50 / onnx_p50,
            }
        )
    result = {
        "benchmark": "drcorl_inference",
        "networks": source,
        "batch": 1,
        "threads": 1,
        "actor_hidden_sizes": list(actor.hidden_sizes),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "rows": rows,
    }
    print(f"networks: {source}; batch 1, one thread\n")
    print("| model | p50 (us) | p99 (us) | p50 / onnx actor p50 |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['model']} | {row['p50_us']:.1f} | {row['p99_us']:.1f} | "
            f"{row['vs_onnx_p50']:.1f}x |"
        )
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
