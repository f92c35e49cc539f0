"""Marvel finetuning benchmark: return and cost against environment steps, per variant.

For each task it collects a dataset (``safepolicy collect``, reused when present), trains one
``train cpq`` run (the shared offline stage), then finetunes it online with each variant:

    marvel       VPA + aPID (the paper's method)
    warm-start   no VPA, dual ascent (the paper's "Warm Start")
    apid-only    no VPA, aPID (the paper's aPID-only ablation)
    vpa-dual     VPA + dual ascent (the paper's VPA-only ablation)
    scratch      SAC-Lag from scratch, no dataset (the paper's "From Scratch")

Every finished run leaves ``OUT/TASK-VARIANT-seedS.json`` (its online curve read from
``scalars.csv`` and its final deterministic evaluation), so an interrupted benchmark continues
where it stopped; a variant this build cannot run (VPA before vpa.py is merged) leaves a
``skipped`` file with the reason. ``OUT/marvel.md`` (table) and ``OUT/marvel.png`` (return and
cost per episode against environment steps) are rebuilt from the result files at the end.

Default size, for this 2-core CPU (about 5-10 minutes per task, one thread per run):
    flock /tmp/heavy.lock python benchmarks/marvel_finetune.py --tasks BallRun
Paper-size settings (its Table 6: 500 online steps after a 5e5-step CPQ) are flags away:
    python benchmarks/marvel_finetune.py --tasks BallRun CarCircle --offline-steps 500000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS: dict[str, list[str]] = {
    "marvel": ["vpa=true", "multiplier=apid"],
    "warm-start": ["vpa=false", "multiplier=dual-ascent"],
    "apid-only": ["vpa=false", "multiplier=apid"],
    "vpa-dual": ["vpa=true", "multiplier=dual-ascent"],
    "scratch": [],
}
PAPER = {"BallCircle": "603.9 / 19.8", "CarCircle": "341.3 / 19.5"}  # Marvel, limit 20


def run_command(command: list[str], log: Path) -> tuple[int, str]:
    """Run one ``safepolicy`` command on one thread; returns its exit status and last error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with log.open("w") as handle:
        status = subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT, check=False
        ).returncode
    lines = [line for line in log.read_text().splitlines() if "error" in line.lower()]
    return status, lines[-1] if lines else ""


def collect_if_missing(task: str, data_dir: Path, episodes: int) -> Path:
    path = data_dir / f"{task}.h5"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        status, error = run_command(
            [
                sys.executable,
                "-m",
                "safepolicy",
                "collect",
                "--task",
                task,
                "--episodes",
                str(episodes),
                "--out",
                str(path),
                "--quiet",
            ],
            data_dir / f"{task}.collect.log",
        )
        if status != 0:
            raise SystemExit(f"collect {task} failed: {error}")
    return path


def online_curve(run_dir: Path) -> list[dict[str, float]]:
    """The online rows of ``scalars.csv`` that saw finished episodes."""
    with (run_dir / "scalars.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    keys = (
        "online/env_steps",
        "online/episode_return",
        "online/episode_cost",
        "online/cumulative_cost",
        "multiplier/lambda",
    )
    return [
        {key.split("/")[-1]: float(row[key]) for key in keys if row.get(key)}
        for row in rows
        if row.get("online/env_steps")
    ]


def train_variant(
    task: str,
    variant: str,
    dataset: Path,
    cpq_run: Path,
    args: argparse.Namespace,
    seed: int,
    out: Path,
) -> dict:
    run_dir = out / "runs" / f"{task}-{variant}-seed{seed}"
    common = [
        "--task",
        task,
        "--cost-limit",
        str(args.cost_limit),
        "--seed",
        str(seed),
        "--out",
        str(run_dir),
        "--no-progress",
        "--device",
        "cpu",
        "--set",
        f"num_envs={args.num_envs}",
        "--set",
        f"run.log_every={args.log_every}",
        "--set",
        f"run.eval_episodes={args.eval_episodes}",
        "--set",
        f"run.checkpoint_every={args.log_every * 20}",
    ]
    if variant == "scratch":
        command = [
            sys.executable,
            "-m",
            "safepolicy",
            "train",
            "sac-lag",
            *common,
            "--steps",
            str(args.online_steps),
        ]
    else:
        command = [
            sys.executable,
            "-m",
            "safepolicy",
            "train",
            "marvel",
            *common,
            "--dataset",
            str(dataset),
            "--online-steps",
            str(args.online_steps),
            "--reuse-stage",
            f"offline={cpq_run}",
            "--set",
            f"offline_steps={args.offline_steps}",
        ]
        for setting in VARIANTS[variant]:
            command += ["--set", setting]
    resume = ["--resume"] if (run_dir / "checkpoints" / "last.pt").exists() else []
    if run_dir.exists() and not resume:  # a run that died before its first checkpoint
        shutil.rmtree(run_dir)
    started = time.perf_counter()
    status, error = run_command(command + resume, out / "runs" / f"{task}-{variant}-seed{seed}.log")
    seconds = time.perf_counter() - started
    if status != 0:
        return {
            "task": task,
            "variant": variant,
            "seed": seed,
            "skipped": error or f"exit status {status}",
            "command": " ".join(command[2:]),
        }
    evaluation = (
        json.loads((run_dir / "evaluation.json").read_text())
        if (run_dir / "evaluation.json").exists()
        else None
    )
    return {
        "task": task,
        "variant": variant,
        "seed": seed,
        "wall_seconds": seconds,
        "command": " ".join(command[2:]),
        "curve": online_curve(run_dir),
        "evaluation": evaluation,
    }


def tail_mean(rows: list[dict[str, float]], key: str) -> float:
    return sum(row[key] for row in rows) / len(rows) if rows else float("nan")


def write_report(out: Path, results: list[dict], args: argparse.Namespace) -> None:
    """marvel.md (one row per task and variant) and marvel.png (curves)."""
    lines = [
        "| task | variant | last online episodes: return | cost | cumulative cost | "
        "env steps | final lambda | eval return | eval cost | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        name = f"| {result['task']} | {result['variant']} |"
        if "skipped" in result:
            lines.append(f"{name} skipped: {result['skipped']} | | | | | | | |")
            continue
        curve = result["curve"]
        tail = curve[-args.tail_rows :]
        tail_return, tail_cost = (
            tail_mean(tail, key) for key in ("episode_return", "episode_cost")
        )
        evaluation = result["evaluation"] or {}
        last = curve[-1] if curve else {}
        lines.append(
            f"{name} {tail_return:.1f} | {tail_cost:.1f} | "
            f"{last.get('cumulative_cost', float('nan')):.0f} | "
            f"{last.get('env_steps', float('nan')):.0f} | {last.get('lambda', float('nan')):.3f} | "
            f"{evaluation.get('return_mean', float('nan')):.1f} | "
            f"{evaluation.get('cost_mean', float('nan')):.1f} | {result['wall_seconds']:.0f} |"
        )
    notes = [
        f"Cost limit {args.cost_limit:g}; {args.online_steps} online vector steps x "
        f"{args.num_envs} envs; CPQ offline {args.offline_steps} updates on "
        f"{args.dataset_episodes} collected episodes; 'last online episodes' averages the "
        f"last {args.tail_rows} log rows with finished episodes (stochastic policy); eval: "
        f"{args.eval_episodes} deterministic episodes on the fixed seed list.",
        "Paper (Marvel, limit 20, reward / cost within 500 online steps): "
        + ", ".join(f"{task} {value}" for task, value in PAPER.items()),
    ]
    (out / "marvel.md").write_text("\n".join([*lines, "", *notes]) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({result["task"] for result in results})
    figure, axes = plt.subplots(2, len(tasks), figsize=(6 * len(tasks), 7), squeeze=False)
    for column, task in enumerate(tasks):
        for result in results:
            if result["task"] != task or "skipped" in result or not result["curve"]:
                continue
            steps = [row["env_steps"] for row in result["curve"]]
            axes[0][column].plot(
                steps, [row["episode_return"] for row in result["curve"]], label=result["variant"]
            )
            axes[1][column].plot(
                steps, [row["episode_cost"] for row in result["curve"]], label=result["variant"]
            )
        axes[1][column].axhline(args.cost_limit, color="black", linestyle="--", linewidth=1)
        axes[0][column].set_title(f"{task}, cost limit {args.cost_limit:g}")
        axes[0][column].set_ylabel("episode return")
        axes[1][column].set_ylabel("episode cost")
        axes[1][column].set_xlabel("environment steps (online)")
        axes[0][column].legend()
    figure.tight_layout()
    figure.savefig(out / "marvel.png", dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["BallRun"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--cost-limit", type=float, default=20.0)
    parser.add_argument(
        "--online-steps", type=int, default=2500, help="vector environment steps of each online run"
    )
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--offline-steps", type=int, default=3000, help="CPQ updates")
    parser.add_argument("--dataset-episodes", type=int, default=200)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--tail-rows", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "marvel")
    args = parser.parse_args(argv)
    out: Path = args.out
    (out / "runs").mkdir(parents=True, exist_ok=True)
    results = []
    for task in args.tasks:
        dataset = collect_if_missing(task, out / "data", args.dataset_episodes)
        for seed in args.seeds:
            cpq_run = out / "runs" / f"{task}-cpq-seed{seed}"
            if not (cpq_run / "checkpoints" / "stage-cpq.pt").exists():
                resume = ["--resume"] if (cpq_run / "checkpoints" / "last.pt").exists() else []
                status, error = run_command(
                    [
                        sys.executable,
                        "-m",
                        "safepolicy",
                        "train",
                        "cpq",
                        "--task",
                        task,
                        "--dataset",
                        str(dataset),
                        "--cost-limit",
                        str(args.cost_limit),
                        "--seed",
                        str(seed),
                        "--steps",
                        str(args.offline_steps),
                        "--out",
                        str(cpq_run),
                        "--no-progress",
                        "--device",
                        "cpu",
                        "--set",
                        "run.eval_episodes=0",
                        *resume,
                    ],
                    out / "runs" / f"{task}-cpq.log",
                )
                if status != 0:
                    raise SystemExit(f"train cpq {task} failed: {error}")
            for variant in args.variants:
                result_path = out / f"{task}-{variant}-seed{seed}.json"
                if not result_path.exists():
                    result = train_variant(task, variant, dataset, cpq_run, args, seed, out)
                    result_path.write_text(json.dumps(result, indent=1))
                    outcome = result.get("skipped") or f"done in {result['wall_seconds']:.0f} s"
                    print(f"{task} {variant} seed {seed}: {outcome}", flush=True)
                results.append(json.loads(result_path.read_text()))
    write_report(out, results, args)
    print((out / "marvel.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
