"""Quality benchmark: tasks x algorithms x cost limits x seeds -> JSON, Markdown table, plot.

For each task it collects a dataset with ``safepolicy collect`` (or reuses one), trains every
algorithm at every cost limit and seed, evaluates the final actor on the fixed seed list in the
real environment (the loop's evaluation, DSRL-normalised), and writes
``OUT/quality.json``, ``OUT/quality.md`` (mean +- std over seeds, unsafe cells marked) and
``OUT/quality.png`` (normalised reward vs normalised cost). Each finished run's result goes to
``OUT/results/<task>-<algorithm>-<limit>-s<seed>.json`` with the settings that made it, and a
later invocation on any machine reuses a result whose settings match (commit them as they
finish), so an interrupted benchmark continues where it stopped.

Default size (fits about an hour on the 2-core CPU):
    python benchmarks/quality.py
Paper-size settings are a flag away (the last --set restores the paper's target rate):
    python benchmarks/quality.py --steps 100000 --seeds 0 1 2 --eval-episodes 20 --precision fp32 \
        --set td3bc.tau=0.005

Any registered algorithm can be named (training/registry.py). A staged algorithm takes its step
counts from its own config (``--set behaviour_steps=...``), not from ``--steps``; with
``--reuse-stage ALGORITHM=STAGE`` the first cost limit's run of each task and seed trains every
stage and the other limits start after STAGE from its checkpoint (e.g. ``drcorl=critics``: one
behaviour model and one set of pretrained critics per task). Each run's wall time per stage (from
its scalars.csv) goes into its result; a reused stage is credited to the run that trained it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAFE_THRESHOLD = 1.0  # DSRL: a policy is safe when its normalised cost is at most 1
# The paper's target rate tau = 0.005 assumes 100k+ steps. At the default 10k the TD3+BC critics
# reached 10% of the dataset's Monte-Carlo reward-to-go with 0.005 and 91% with 0.05
# (benchmarks/critic_lag.py), and O3SRL's bandit read cost values that small as "safe".
SHORT_BUDGET_SETTINGS = ("td3bc.tau=0.05",)


def collect_if_missing(task: str, data_dir: Path, episodes: int, seed: int) -> Path:
    path = data_dir / f"{task}.h5"
    if not path.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "safepolicy",
                "collect",
                "--task",
                task,
                "--episodes",
                str(episodes),
                "--seed",
                str(seed),
                "--out",
                str(path),
            ],
            check=True,
        )
    return path


def settings_for(algorithm: str, settings: list[str]) -> dict[str, str]:
    """The ``--set NAME=VALUE`` pairs that name a field of ``algorithm``'s config."""
    from safepolicy.training.config import describe
    from safepolicy.training.registry import algorithm_spec

    known = {name for name, *_ in describe(algorithm_spec(algorithm).config_type())}
    pairs = dict(setting.split("=", 1) for setting in settings)
    return {
        name: value for name, value in pairs.items() if name in known or name.startswith("run.")
    }


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Wall seconds of each stage this run trained, from its scalars.csv (rows carry the stage
    and the seconds since the run's loop started)."""
    import csv

    ends: dict[str, float] = {}
    with (run_dir / "scalars.csv").open() as handle:
        for row in csv.DictReader(handle):
            ends[row["stage"]] = float(row["wall_seconds"])
    seconds, previous = {}, 0.0
    for stage, end in ends.items():
        seconds[stage] = round(end - previous, 1)
        previous = end
    return seconds


def train_once(
    algorithm: str,
    task: str,
    dataset: Path,
    cost_limit: float,
    seed: int,
    steps: int,
    eval_episodes: int,
    precision: str,
    settings: list[str],
    out: Path,
    result_file: Path,
    reuse: dict[str, Path] | None = None,
) -> dict:
    """Train and evaluate one (algorithm, task, cost limit, seed) run, or return its kept result
    when ``result_file`` holds one made with the same settings."""
    overrides = {
        "run.eval_episodes": str(eval_episodes),
        "run.precision": precision,
        **settings_for(algorithm, settings),
    }
    import torch

    from safepolicy.training.loop import TrainRequest, build_configs, train

    request = TrainRequest(
        algorithm=algorithm,
        task=task,
        dataset=dataset,
        cost_limit=cost_limit,
        out=out,
        seed=seed,
        steps=steps,
        overrides=overrides,
        reuse_stages=reuse or {},
        progress=False,
    )
    # What makes two runs the same run: the resolved configuration (defaults included, so a
    # changed default is a different run), the data and the reused stage. A result file kept in
    # the repository with this fingerprint is reused on any machine, so the table resumes where
    # another machine stopped.
    _, run_config, algorithm_config = build_configs(request)
    fingerprint = {
        "algorithm": algorithm,
        "task": task,
        "dataset": dataset.name,
        "cost_limit": cost_limit,
        "seed": seed,
        "run_config": run_config.model_dump(mode="json"),
        "algorithm_config": algorithm_config.model_dump(mode="json"),
        "reused_stage": {stage: path.name for stage, path in (reuse or {}).items()},
    }
    if result_file.exists():
        kept = json.loads(result_file.read_text())
        if kept.get("fingerprint") == fingerprint:
            return kept

    torch.set_num_threads(1)  # one run per core; --jobs sets how many run at once
    evaluation, made_with = out / "evaluation.json", out / "fingerprint.json"
    finished_here = (
        evaluation.exists()
        and made_with.exists()
        and json.loads(made_with.read_text()) == fingerprint
    )
    if not finished_here:
        if out.exists():
            import shutil

            shutil.rmtree(out)  # an interrupted or differently-configured run restarts cleanly
        started = time.perf_counter()
        train(request)
        (out / "train_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
        made_with.write_text(json.dumps(fingerprint))
    result: dict = json.loads(evaluation.read_text())
    seconds = out / "train_seconds.txt"
    result["train_seconds"] = float(seconds.read_text()) if seconds.exists() else None
    result["stage_seconds"] = stage_seconds(out)
    if reuse:
        ((stage, source),) = reuse.items()
        result["reused_stage"] = {"stage": stage, "from": source.name}
    result.update(task=task, algorithm=algorithm, cost_limit=cost_limit, seed=seed)
    result["fingerprint"] = fingerprint
    from safepolicy.fileio import atomic_write_text

    atomic_write_text(result_file, json.dumps(result, indent=2) + "\n")
    return result


def train_once_star(job: tuple) -> dict:
    return train_once(*job)


def summarise(results: list[dict]) -> dict[tuple[str, str, float], dict[str, float]]:
    cells: dict[tuple[str, str, float], list[dict]] = {}
    for row in results:
        cells.setdefault((row["task"], row["algorithm"], row["cost_limit"]), []).append(row)
    summary = {}
    for key, rows in cells.items():
        rewards = [r["normalized_reward"] for r in rows]
        costs = [r["normalized_cost"] for r in rows]
        summary[key] = {
            "reward_mean": statistics.fmean(rewards),
            "reward_std": statistics.pstdev(rewards),
            "cost_mean": statistics.fmean(costs),
            "cost_std": statistics.pstdev(costs),
            "seeds": len(rows),
        }
    return summary


def markdown_table(
    summary: dict, tasks: list[str], algorithms: list[str], cost_limits: list[float]
) -> str:
    header = "| task | cost limit | " + " | ".join(algorithms) + " |"
    lines = [header, "|" + "---|" * (len(algorithms) + 2)]
    for task in tasks:
        for limit in cost_limits:
            cells = []
            for algorithm in algorithms:
                cell = summary.get((task, algorithm, limit))
                if cell is None:
                    cells.append("-")
                    continue
                marker = " **unsafe**" if cell["cost_mean"] > SAFE_THRESHOLD else ""
                cells.append(
                    f"{cell['reward_mean']:.2f} ± {cell['reward_std']:.2f} / "
                    f"{cell['cost_mean']:.2f} ± {cell['cost_std']:.2f}{marker}"
                )
            lines.append(f"| {task} | {limit:g} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Cells: normalised reward / normalised cost (mean ± std over seeds); "
        "**unsafe** marks mean normalised cost > 1."
    )
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """Normalised reward vs cost: colour = algorithm, marker = task, label = cost limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 5))
    algorithms = sorted({algorithm for _, algorithm, _ in summary})
    tasks = sorted({task for task, _, _ in summary})
    palette = [
        f"tab:{name}"
        for name in (
            "blue",
            "orange",
            "green",
            "red",
            "purple",
            "brown",
            "pink",
            "olive",
            "cyan",
            "gray",
        )
    ]
    colours = {algorithm: palette[i % len(palette)] for i, algorithm in enumerate(algorithms)}
    markers = dict(zip(tasks, ["o", "s", "^", "D"], strict=False))
    for (task, algorithm, limit), cell in sorted(summary.items()):
        axis.errorbar(
            cell["cost_mean"],
            cell["reward_mean"],
            xerr=cell["cost_std"],
            yerr=cell["reward_std"],
            fmt=markers[task],
            color=colours[algorithm],
            alpha=0.85,
            capsize=2,
        )
        axis.annotate(
            f"κ={limit:g}",
            (cell["cost_mean"], cell["reward_mean"]),
            fontsize=6,
            xytext=(4, 3),
            textcoords="offset points",
        )
    for algorithm, colour in colours.items():
        axis.plot([], [], "s", color=colour, label=algorithm)
    for task, marker in markers.items():
        axis.plot([], [], marker, color="grey", label=task)
    axis.axvline(SAFE_THRESHOLD, color="red", linestyle="--", label="cost limit")
    axis.set_xlabel("normalised cost (≤ 1 is safe)")
    axis.set_ylabel("normalised reward")
    axis.set_title("safepolicy quality benchmark (mean ± std over seeds)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> int:
    from safepolicy.training.registry import algorithm_names

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=["BallRun", "CarCircle"])
    parser.add_argument(
        "--algorithms",
        nargs="+",
        default=["o3srl", "bc-safe", "td3bc-lag"],
        choices=algorithm_names(),
        metavar="ALGORITHM",
        help=f"registered algorithms: {', '.join(algorithm_names())}",
    )
    parser.add_argument(
        "--reuse-stage",
        dest="reuse",
        action="append",
        default=[],
        metavar="ALGORITHM=STAGE",
        help="the first cost limit's run trains every stage, the other limits "
        "start after STAGE from it (repeatable, one per algorithm)",
    )
    parser.add_argument("--cost-limits", nargs="+", type=float, default=[5.0, 10.0, 20.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--precision", default="bf16-mixed", choices=["fp32", "bf16-mixed"])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one per core)")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=list(SHORT_BUDGET_SETTINGS),
        metavar="NAME=VALUE",
        help="a training setting (as `safepolicy train --set`), applied to "
        "every algorithm whose config has it; repeatable, later ones win "
        f"(default: {' '.join(SHORT_BUDGET_SETTINGS)})",
    )
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--dataset-episodes", type=int, default=200)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality")
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="where the run directories go (default: OUT/runs)",
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="redraw quality.png from OUT/quality.json without training",
    )
    args = parser.parse_args()
    if args.replot:
        runs = json.loads((args.out / "quality.json").read_text())["runs"]
        plot(summarise(runs), args.out / "quality.png")
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    datasets = {
        task: collect_if_missing(task, args.data_dir, args.dataset_episodes, seed=0)
        for task in args.tasks
    }
    for setting in args.settings:
        if "=" not in setting:
            parser.error(f"--set {setting!r}: expected NAME=VALUE, e.g. td3bc.tau=0.05")
    reuse = dict(item.split("=", 1) for item in args.reuse if "=" in item)
    if len(reuse) != len(args.reuse):
        parser.error("--reuse-stage expects ALGORITHM=STAGE, e.g. drcorl=critics")
    runs_dir = args.runs_dir or args.out / "runs"

    def job(algorithm: str, task: str, limit: float, seed: int) -> tuple:
        first = args.cost_limits[0]
        reused = (
            {reuse[algorithm]: runs_dir / f"{task}-{algorithm}-{first:g}-s{seed}"}
            if algorithm in reuse and limit != first
            else None
        )
        return (
            algorithm,
            task,
            datasets[task],
            limit,
            seed,
            args.steps,
            args.eval_episodes,
            args.precision,
            args.settings,
            runs_dir / f"{task}-{algorithm}-{limit:g}-s{seed}",
            args.out / "results" / f"{task}-{algorithm}-{limit:g}-s{seed}.json",
            reused,
        )

    jobs = [
        job(algorithm, task, limit, seed)
        for task in args.tasks
        for limit in args.cost_limits
        for algorithm in args.algorithms
        for seed in args.seeds
    ]
    # runs that reuse another run's stage wait for the runs that train it
    waves = [[j for j in jobs if j[-1] is None], [j for j in jobs if j[-1] is not None]]
    results: list[dict] = []
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for row in (row for wave in waves for row in pool.map(train_once_star, wave)):
            results.append(row)
            print(
                f"{row['task']} {row['algorithm']} kappa={row['cost_limit']:g} "
                f"seed={row['seed']}: reward {row['normalized_reward']:.2f} "
                f"cost {row['normalized_cost']:.2f} ({row['train_seconds']} s; stages "
                f"{row['stage_seconds']})",
                flush=True,
            )
            table = markdown_table(
                summarise(results), args.tasks, args.algorithms, args.cost_limits
            )
            (args.out / "quality.json").write_text(
                json.dumps({"settings": settings, "runs": results}, indent=2)
            )
            (args.out / "quality.md").write_text(
                f"Settings: {args.steps} gradient steps for one-stage algorithms (staged ones "
                f"take theirs from --set), {args.precision}, seeds {args.seeds}, "
                f"settings {' '.join(args.settings) or 'none'}, "
                f"{args.eval_episodes} evaluation episodes on seeds 10000+, datasets of "
                f"{args.dataset_episodes} episodes from `safepolicy collect --seed 0`.\n\n"
                f"{table}\n"
            )
    plot(summarise(results), args.out / "quality.png")
    print((args.out / "quality.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
