"""Latency of the exported ONNX policy (onnxruntime) against the torch actor it came from.

One thread on each side (``torch.set_num_threads(1)``, onnxruntime ``intra_op_num_threads=1``),
an untrained actor of the default size (hidden 256x256) with obs_dim 60 and action_dim 2 (a
Safety-Gymnasium-sized task), batch 1 and batch 256. Torch runs eager under ``inference_mode``
computing the deterministic action; onnxruntime runs the exported graph through
``OnnxPolicy.__call__`` (input checks included), which is what the server calls.

    .venv/bin/python benchmarks/export_latency.py [--iterations 3000]

Prints a Markdown table and writes ``benchmarks/results/export_latency.json``. The target is
onnxruntime at most 0.4x torch eager at batch 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from safepolicy.export.artifact import load_policy
from safepolicy.export.onnx_export import export_actor
from safepolicy.training.checkpoint import ActorMetadata
from safepolicy.training.networks import SquashedGaussianActor

OBS_DIM = 60
ACTION_DIM = 2
BATCHES = (1, 256)
TARGET_RATIO_BATCH_1 = 0.4
RESULTS = Path(__file__).resolve().parent / "results" / "export_latency.json"


def time_calls(function: Callable[[], object], iterations: int, warmup: int) -> np.ndarray:
    """Per-call wall time in microseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        function()
    samples = np.empty(iterations)
    for index in range(iterations):
        start = time.perf_counter_ns()
        function()
        samples[index] = time.perf_counter_ns() - start
    return samples / 1e3


def interleaved(
    functions: Mapping[str, Callable[[], object]],
    iterations: int,
    rounds: int = 5,
) -> dict[str, np.ndarray]:
    """Alternate the contenders in rounds so a noisy neighbour on a shared machine hits both."""
    per_round = max(1, iterations // rounds)
    collected: dict[str, list[np.ndarray]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            warmup = max(20, per_round // 10)
            collected[name].append(time_calls(function, per_round, warmup=warmup))
    return {name: np.concatenate(parts) for name, parts in collected.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=3000, help="timed calls per case")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results path")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    actor = SquashedGaussianActor(OBS_DIM, ACTION_DIM).eval()
    actor.normalizer.set_statistics(torch.randn(OBS_DIM), torch.rand(OBS_DIM) + 0.5)
    lineage = ActorMetadata(
        task="benchmark", env_id="none", algorithm="none", cost_limit=0.0, seed=0
    )
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as repo:
        policy = load_policy(
            export_actor(actor, lineage, repo, "bench"),
            providers=["CPUExecutionProvider"],
            threads=1,
        )
        for batch in BATCHES:
            observations = rng.standard_normal((batch, OBS_DIM)).astype(np.float32)
            tensor = torch.from_numpy(observations)

            def run_torch(tensor: torch.Tensor = tensor) -> torch.Tensor:
                with torch.inference_mode():
                    return actor(tensor)

            def run_onnx(observations: np.ndarray = observations) -> np.ndarray:
                return policy(observations)

            np.testing.assert_allclose(run_onnx(), run_torch().numpy(), atol=1e-5)
            iterations = args.iterations if batch == 1 else max(200, args.iterations // 5)
            timings = interleaved({"torch": run_torch, "onnx": run_onnx}, iterations)
            row: dict[str, float] = {"batch": batch, "iterations": iterations}
            for name, samples in timings.items():
                row[f"{name}_p50_us"] = float(np.percentile(samples, 50))
                row[f"{name}_p99_us"] = float(np.percentile(samples, 99))
            row["ratio_p50"] = row["onnx_p50_us"] / row["torch_p50_us"]
            row["ratio_p99"] = row["onnx_p99_us"] / row["torch_p99_us"]
            rows.append(row)

    batch_1 = rows[0]["ratio_p50"]
    result = {
        "benchmark": "export_latency",
        "model": {
            "obs_dim": OBS_DIM,
            "action_dim": ACTION_DIM,
            "hidden_sizes": list(actor.hidden_sizes),
        },
        "threads": 1,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
        },
        "rows": rows,
        "target_ratio_batch_1": TARGET_RATIO_BATCH_1,
        "meets_target": bool(batch_1 <= TARGET_RATIO_BATCH_1),
    }
    print(
        "| batch | torch p50 (us) | torch p99 (us) | onnxruntime p50 (us) | onnxruntime p99 (us) "
        "| ratio p50 | ratio p99 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['batch']} | {row['torch_p50_us']:.1f} | {row['torch_p99_us']:.1f} | "
            f"{row['onnx_p50_us']:.1f} | {row['onnx_p99_us']:.1f} | {row['ratio_p50']:.2f} | "
            f"{row['ratio_p99']:.2f} |"
        )
    verdict = "meets" if result["meets_target"] else "MISSES"
    print(
        f"\nbatch 1: onnxruntime/torch p50 = {batch_1:.2f} ({verdict} the "
        f"<= {TARGET_RATIO_BATCH_1} target)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(temporary, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
