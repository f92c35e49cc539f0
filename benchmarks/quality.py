"""Quality benchmark: tasks x algorithms x cost limits x seeds -> JSON, Markdown table, plot.

For each task it collects a dataset with ``safepolicy collect`` (or reuses one), trains every
algorithm at every cost limit and seed, evaluates the final actor on the fixed seed list in the
real environment (the loop's evaluation, DSRL-normalised), and writes
``OUT/quality.json``, ``OUT/quality.md`` (mean +- std over seeds, unsafe cells marked, the
dataset's best safe episode and the published figures beside ours, wall time per run) and
``OUT/quality.png`` (normalised reward vs normalised cost, a panel per task). Each finished
run's result goes to ``OUT/results/<task>-<algorithm>-<limit>-s<seed>.json`` with the settings
that made it, and a later invocation on any machine reuses a result whose settings match
(commit them as they finish), so an interrupted benchmark continues where it stopped.
``--report-only`` redraws quality.md, quality.png and the README fragment from those kept
results without training.

Default size (fits about an hour on the 2-core CPU):
    python benchmarks/quality.py
The issue-18 table (five algorithms, five tasks, three limits each, three seeds; see PRESETS):
    python benchmarks/quality.py --table issue18
Paper-size settings are a flag away (the last --set restores the paper's target rate):
    python benchmarks/quality.py --steps 100000 --seeds 0 1 2 --eval-episodes 20 --precision fp32 \
        --set td3bc.tau=0.005

Cost limits: each task's three tightest default limits (safepolicy/tasks.py: 5/10/20 on Bullet,
20/40/80 on Safety-Gymnasium) unless ``--cost-limits`` names them for every task.

Any registered algorithm can be named (training/registry.py). ``--set NAME=VALUE`` applies to
every algorithm whose config has NAME; ``--set ALGORITHM:NAME=VALUE`` only to that algorithm
(``drcorl:tau=0.05`` leaves CPQ's own ``tau`` alone). ``--steps-for ALGORITHM=STEPS`` gives one
algorithm its own ``--steps``. A staged algorithm takes its step counts from its own config
(``--set behaviour_steps=...``), not from ``--steps``; with ``--reuse-stage ALGORITHM=STAGE``
the first cost limit's run of each task and seed trains every stage and the other limits start
after STAGE from its checkpoint (e.g. ``drcorl=critics``: one behaviour model and one set of
pretrained critics per task). Each run's wall time per stage (from its scalars.csv) goes into its
result; a reused stage is credited to the run that trained it.

``--readme README.md`` also writes the report (settings, command, table, plot link) between the
``<!-- quality-table:begin -->`` and ``<!-- quality-table:end -->`` lines of that file, leaving
everything outside them byte-identical; the issue-18 preset does this for the repository README.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
SAFE_THRESHOLD = 1.0  # DSRL: a policy is safe when its normalised cost is at most 1
# A cell whose mean is safe can hide one seed far over the limit; such seeds are named in the cell.
SEED_FLAG_THRESHOLD = 1.5
# The paper's target rate tau = 0.005 assumes 100k+ steps. At the default 10k the TD3+BC critics
# reached 10% of the dataset's Monte-Carlo reward-to-go with 0.005 and 91% with 0.05
# (benchmarks/critic_lag.py), and O3SRL's bandit read cost values that small as "safe".
SHORT_BUDGET_SETTINGS = ("td3bc.tau=0.05",)
# The literature's Bullet limits are 10/20/40 and O3SRL adds 5; tasks.py lists 5/10/20/40 for
# Bullet and 20/40/80 for Safety-Gymnasium. The benchmark takes the three tightest of each task.
LIMITS_PER_TASK = 3
PUBLISHED_FIGURES = ROOT / "benchmarks" / "published_figures.json"
README_BEGIN = "<!-- quality-table:begin -->"
README_END = "<!-- quality-table:end -->"

# Issue 18's table: --table issue18 sets these as defaults (any flag given explicitly wins;
# --set and --reuse-stage given on the command line are added after the preset's).
#
# Budget: under 6 hours on the 2-core CPU with --jobs 2, i.e. 2 x 21,600 = 43,200 run-seconds.
# Per-run times measured at --jobs 2 with 10 evaluation episodes on BallRun and CarCircle
# (benchmarks/results/quality*/: train_seconds and stage_seconds, evaluation included):
#   O3SRL 10k steps ~190 s; TD3+BC-Lag 10k 85-212 s (~190); BC-Safe 10k 21-30 s (30);
#   CPQ fp32 348 s per 4k steps (87 ms a step; that run was --jobs 1, but every run uses one
#   thread), so 2k ~174 s;
#   DRCORL behaviour 5k ~96 s, critics 8k ~420 s (52 ms a step), so 5k ~263 s, policy 2,050 ~160 s
#   (all at load); its 6,150-step extraction (issue 18) measured 250 s beside behaviour 35 s and
#   critics 5k 98 s in one --jobs 2 run on a quieter machine: 883 s per task-seed with 3 limits.
# Each algorithm has 5 tasks x 3 limits x 3 seeds = 45 runs:
#   o3srl      10,000 steps  45 x 190 =  8,550
#   td3bc-lag  10,000 steps  45 x 190 =  8,550
#   bc-safe    10,000 steps  45 x  30 =  1,350
#   cpq         2,000 steps  45 x 174 =  7,830  (fp32: bf16 matmuls are slower for CPQ here)
#   drcorl  5,000 / 5,000 / 6,150 (behaviour / critics / policy), the critics stage reused across
#           limits: 15 task-seeds x (35 + 98 + 3 x 250) = 15 x 883 = 13,245
#   training                                       39,525 run-seconds
# Evaluation with 20 episodes instead of 10: Safety-Gymnasium episodes are 1,000 steps and
# PointGoal1 steps at ~2 ms (measured 1.8 ms under load), HalfCheetahVelocity at ~0.35 ms with
# the policy: 45 x 40 s + 45 x 7 s, plus ~4 s more per Bullet run (135 runs): about 2,700.
#   total 42,225 run-seconds / 2 jobs = 21,113 s = 5.9 h, plus collecting the three new
#   datasets (200 episodes each, one process, about 10 minutes): about 6.0 h. DRCORL's figures
#   come from a quieter moment than the others', so this is the estimate's weakest part.
# TD3+BC-Lag has O3SRL's 10k steps: it is O3SRL's oracle at a fixed multiplier, so the two differ
# only in how the multiplier is chosen. CPQ and DRCORL's critics get fewer steps to fit.
PRESETS: dict[str, dict[str, Any]] = {
    "issue18": {
        "tasks": ["BallRun", "BallCircle", "CarCircle", "PointGoal1", "HalfCheetahVelocity"],
        "algorithms": ["o3srl", "drcorl", "cpq", "bc-safe", "td3bc-lag"],
        "seeds": [0, 1, 2],
        "eval_episodes": 20,
        "steps": 10_000,
        "steps_for": ["cpq=2000"],
        "precision": "bf16-mixed",
        "settings": [
            *SHORT_BUDGET_SETTINGS,
            "cpq:run.precision=fp32",
            "drcorl:behaviour_steps=5000",
            "drcorl:critics_steps=5000",
            "drcorl:tau=0.05",
        ],
        "reuse": ["drcorl=critics"],
        "data_dir": ROOT / "data" / "quality",
        "out": ROOT / "benchmarks" / "results" / "quality",
        "readme": ROOT / "README.md",
    },
}


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


def config_fields(algorithm: str) -> set[str]:
    """The ``--set`` names ``algorithm``'s config has (``run.`` ones apply to every algorithm)."""
    from safepolicy.training.config import describe
    from safepolicy.training.registry import algorithm_spec

    return {name for name, *_ in describe(algorithm_spec(algorithm).config_type())}


def settings_for(algorithm: str, settings: list[str]) -> dict[str, str]:
    """The ``--set`` pairs that apply to ``algorithm``: ``NAME=VALUE`` when its config has NAME
    (or NAME is a ``run.`` setting), ``ALGORITHM:NAME=VALUE`` when ALGORITHM is this one.
    Later settings win."""
    known = config_fields(algorithm)
    chosen: dict[str, str] = {}
    for setting in settings:
        name, value = setting.split("=", 1)
        scope, _, field = name.rpartition(":")
        if scope and scope != algorithm:
            continue
        if field in known or field.startswith("run."):
            chosen[field] = value
    return chosen


def steps_for(algorithm: str, steps: int, per_algorithm: dict[str, int]) -> int:
    """``--steps``, or the algorithm's own count from ``--steps-for``."""
    return per_algorithm.get(algorithm, steps)


def cost_limits_for(task: str, override: list[float] | None) -> list[float]:
    """``--cost-limits`` when given, else the task's three tightest default limits."""
    if override:
        return list(override)
    from safepolicy.tasks import get_task

    return sorted(get_task(task).default_cost_limits)[:LIMITS_PER_TASK]


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


def run_fingerprint(request: Any) -> dict:
    """What makes two runs the same run: the resolved configuration (defaults included, so a
    changed default is a different run), the data and the reused stage. A result file kept in
    the repository with this fingerprint is reused on any machine, so the table resumes where
    another machine stopped."""
    from safepolicy.training.loop import build_configs

    _, run_config, algorithm_config = build_configs(request)
    return {
        "algorithm": request.algorithm,
        "task": request.task,
        "dataset": request.dataset.name,
        "cost_limit": request.cost_limit,
        "seed": request.seed,
        "run_config": run_config.model_dump(mode="json"),
        "algorithm_config": algorithm_config.model_dump(mode="json"),
        "reused_stage": {stage: path.name for stage, path in request.reuse_stages.items()},
    }


def kept_result(result_file: Path, fingerprint: dict) -> dict | None:
    """The result kept in ``result_file`` if it was made with ``fingerprint``, else None."""
    if not result_file.exists():
        return None
    kept: dict = json.loads(result_file.read_text())
    return kept if kept.get("fingerprint") == fingerprint else None


class Job(NamedTuple):
    """One run of the benchmark."""

    algorithm: str
    task: str
    dataset: Path
    cost_limit: float
    seed: int
    steps: int
    eval_episodes: int
    precision: str
    settings: list[str]
    out: Path
    result_file: Path
    reuse: dict[str, Path] | None
    stage_for_others: str | None = None  # a later run starts from this run's stage

    def request(self) -> Any:
        """The ``TrainRequest`` this run makes."""
        from safepolicy.training.loop import TrainRequest

        return TrainRequest(
            algorithm=self.algorithm,
            task=self.task,
            dataset=self.dataset,
            cost_limit=self.cost_limit,
            out=self.out,
            seed=self.seed,
            steps=self.steps,
            overrides={
                "run.eval_episodes": str(self.eval_episodes),
                "run.precision": self.precision,
                **settings_for(self.algorithm, self.settings),
            },
            reuse_stages=self.reuse or {},
            progress=False,
        )


def train_once(job: Job) -> dict:
    """Train and evaluate one (algorithm, task, cost limit, seed) run, or return its kept result
    when ``job.result_file`` holds one made with the same settings. ``job.stage_for_others``
    names a stage whose checkpoint later runs will start from: a kept result is then reused only
    while this machine still has that checkpoint (a result file alone cannot seed another run)."""
    from safepolicy.training.loop import stage_checkpoint_path

    out = job.out
    request = job.request()
    fingerprint = run_fingerprint(request)
    kept = kept_result(job.result_file, fingerprint)
    if kept is not None and (
        job.stage_for_others is None or stage_checkpoint_path(out, job.stage_for_others).is_file()
    ):
        return kept

    import torch

    from safepolicy.training.loop import train

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
    if job.reuse:
        ((stage, source),) = job.reuse.items()
        result["reused_stage"] = {"stage": stage, "from": source.name}
    result.update(task=job.task, algorithm=job.algorithm, cost_limit=job.cost_limit, seed=job.seed)
    result["fingerprint"] = fingerprint
    from safepolicy.fileio import atomic_write_text

    atomic_write_text(job.result_file, json.dumps(result, indent=2) + "\n")
    return result


def summarise(results: list[dict]) -> dict[tuple[str, str, float], dict[str, Any]]:
    """Per (task, algorithm, cost limit): mean and std over seeds of the normalised reward and
    cost, the seeds whose cost is above SEED_FLAG_THRESHOLD, and the mean wall time per run."""
    cells: dict[tuple[str, str, float], list[dict]] = {}
    for row in results:
        cells.setdefault((row["task"], row["algorithm"], row["cost_limit"]), []).append(row)
    summary = {}
    for key, rows in cells.items():
        rewards = [r["normalized_reward"] for r in rows]
        costs = [r["normalized_cost"] for r in rows]
        seconds = [r["train_seconds"] for r in rows if r.get("train_seconds") is not None]
        summary[key] = {
            "reward_mean": statistics.fmean(rewards),
            "reward_std": statistics.pstdev(rewards),
            "cost_mean": statistics.fmean(costs),
            "cost_std": statistics.pstdev(costs),
            "seeds": len(rows),
            "high_cost_seeds": {
                r["seed"]: r["normalized_cost"]
                for r in sorted(rows, key=lambda r: r["seed"])
                if r["normalized_cost"] > SEED_FLAG_THRESHOLD
            },
            "seconds_mean": statistics.fmean(seconds) if seconds else None,
        }
    return summary


def best_safe_episodes(
    dataset: Path, task: str, cost_limits: list[float]
) -> dict[float, float | None]:
    """Per cost limit, the DSRL-normalised reward of the dataset's best episode whose cost is at
    most that limit (None when no episode is that safe): what the data's best safe behaviour
    scores, the reference beside a learned policy."""
    from safepolicy.datasets import load_dataset
    from safepolicy.tasks import get_task

    returns, costs = load_dataset(dataset).episode_returns_and_costs()
    best: dict[float, float | None] = {}
    for limit in cost_limits:
        safe = returns[costs <= limit]
        best[limit] = get_task(task).normalized_reward(float(safe.max())) if safe.size else None
    return best


def dataset_references(
    datasets: dict[str, Path], limits: dict[str, list[float]]
) -> dict[tuple[str, float], float | None]:
    """``best_safe_episodes`` by (task, limit) for every task whose dataset file is here (a
    report drawn on another machine may not have them all)."""
    return {
        (task, limit): best
        for task, path in datasets.items()
        if path.exists()
        for limit, best in best_safe_episodes(path, task, limits[task]).items()
    }


def load_published(path: Path) -> dict[tuple[str, str], dict]:
    """Published figures by (task, algorithm), from benchmarks/published_figures.json."""
    figures = json.loads(path.read_text())["figures"]
    return {(figure["task"], figure["algorithm"]): figure for figure in figures}


def format_cell(cell: dict) -> str:
    """``reward ± std / cost ± std``, marked **unsafe** when the mean cost is above 1 and naming
    every seed whose own cost is above SEED_FLAG_THRESHOLD."""
    text = (
        f"{cell['reward_mean']:.2f} ± {cell['reward_std']:.2f} / "
        f"{cell['cost_mean']:.2f} ± {cell['cost_std']:.2f}"
    )
    if cell["cost_mean"] > SAFE_THRESHOLD:
        text += " **unsafe**"
    if cell["high_cost_seeds"]:
        seeds = ", ".join(f"s{seed} {cost:.2f}" for seed, cost in cell["high_cost_seeds"].items())
        text += f" (cost > {SEED_FLAG_THRESHOLD:g}: {seeds})"
    return text


def markdown_table(
    summary: dict,
    tasks: list[str],
    algorithms: list[str],
    limits: dict[str, list[float]],
    references: dict[tuple[str, float], float | None] | None = None,
    published: dict[tuple[str, str], dict] | None = None,
) -> str:
    """Our cells per task and cost limit beside the dataset's best safe episode, then one row per
    task of published figures (``published`` given), then the legend."""
    references = references or {}
    header = "| task | cost limit | best safe episode in dataset | " + " | ".join(algorithms) + " |"
    lines = [header, "|" + "---|" * (len(algorithms) + 3)]
    for task in tasks:
        for limit in limits[task]:
            cells = []
            for algorithm in algorithms:
                cell = summary.get((task, algorithm, limit))
                cells.append("-" if cell is None else format_cell(cell))
            if (task, limit) not in references:
                best = "-"  # the dataset file is not on this machine
            else:
                reference = references[(task, limit)]
                best = "none safe" if reference is None else f"{reference:.2f}"
            lines.append(f"| {task} | {limit:g} | {best} | " + " | ".join(cells) + " |")
        if published is not None:
            figures = []
            for algorithm in algorithms:
                figure = published.get((task, algorithm))
                figures.append(
                    "not reported"
                    if figure is None
                    else f"{figure['normalized_reward']:.2f} / {figure['normalized_cost']:.2f}"
                )
            lines.append(f"| {task} | published¹ | | " + " | ".join(figures) + " |")
    lines.append("")
    lines.append(
        "Cells: DSRL-normalised reward / normalised cost (cost / limit), mean ± std over seeds; "
        f"**unsafe** marks mean normalised cost > {SAFE_THRESHOLD:g}, and seeds whose own cost "
        f"is above {SEED_FLAG_THRESHOLD:g} are named. Best safe episode in dataset: normalised "
        "reward of the dataset's best episode with cost ≤ the limit (- where the dataset file "
        "was not at hand)."
    )
    if published is not None:
        lines.append("")
        lines.append(
            "¹ Published: DRCORL paper, Table 1 (BC-Safe, CPQ and DRCORL columns; the cost limit "
            "is not stated in the text we have, so one figure per task); the O3SRL texts report "
            "no per-task figures and no seed paper reports TD3+BC-Lag. Sources: "
            "benchmarks/published_figures.json."
        )
    return "\n".join(lines)


def wall_time_table(
    summary: dict, tasks: list[str], algorithms: list[str], limits: dict[str, list[float]]
) -> str:
    """Mean wall seconds per run (training and evaluation) by task, cost limit and algorithm."""
    lines = [
        "| task | cost limit | " + " | ".join(algorithms) + " |",
        "|" + "---|" * (len(algorithms) + 2),
    ]
    for task in tasks:
        for limit in limits[task]:
            cells = []
            for algorithm in algorithms:
                cell = summary.get((task, algorithm, limit))
                seconds = None if cell is None else cell["seconds_mean"]
                cells.append("-" if seconds is None else f"{seconds:.0f}")
            lines.append(f"| {task} | {limit:g} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Wall seconds per run (mean over seeds, training and evaluation); a reused stage is "
        "counted in the run that trained it."
    )
    return "\n".join(lines)


def settings_line(args: argparse.Namespace, limits: dict[str, list[float]]) -> str:
    """One sentence of the settings a report was made with."""
    own_steps = "".join(f", {name} {steps}" for name, steps in args.steps_for.items())
    limit_text = "; ".join(
        f"{task} {'/'.join(f'{limit:g}' for limit in task_limits)}"
        for task, task_limits in limits.items()
    )
    return (
        f"Settings: {args.steps} gradient steps for one-stage algorithms{own_steps} (staged ones "
        f"take theirs from --set), {args.precision}, seeds {args.seeds}, cost limits "
        f"{limit_text}, settings {' '.join(args.settings) or 'none'}, "
        f"reused stages {' '.join(args.reuse) or 'none'}, "
        f"{args.eval_episodes} evaluation episodes on seeds 10000+, datasets of "
        f"{args.dataset_episodes} episodes from `safepolicy collect --seed 0`."
    )


def command_line(argv: list[str]) -> str:
    """The command that trains the table, whatever mode drew it."""
    kept = [arg for arg in argv if arg != "--report-only"]
    return shlex.join(["python", "benchmarks/quality.py", *kept])


def report_text(settings: str, command: str, table: str, wall_times: str, plot_link: str) -> str:
    """quality.md and the README fragment: settings, command, table, wall times, plot."""
    return (
        f"{settings}\n\n```bash\n{command}\n```\n\n{table}\n\n{wall_times}\n\n"
        f"![normalised reward vs cost]({plot_link})\n"
    )


def replace_between_markers(text: str, fragment: str) -> str:
    """``text`` with the lines between the README_BEGIN line and the README_END line replaced by
    ``fragment``; the marker lines and everything outside them are kept byte for byte."""
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
        raise ValueError(f"expected one {README_BEGIN} line and one {README_END} line")
    begin, end = text.index(README_BEGIN), text.index(README_END)
    inside_start = text.find("\n", begin) + 1  # the line after the begin marker
    inside_end = text.rfind("\n", 0, end) + 1  # the start of the end marker's line
    if end < begin or inside_start == 0 or inside_end < inside_start:
        raise ValueError(f"{README_END} must be on a line after the {README_BEGIN} line")
    body = fragment if fragment.endswith("\n") else fragment + "\n"
    return text[:inside_start] + body + text[inside_end:]


def plot(summary: dict, path: Path) -> None:
    """Normalised reward vs cost, one panel per task (75 cells in one axis are unreadable):
    colour = algorithm, label = cost limit, the safety line at normalised cost 1."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algorithms = sorted({algorithm for _, algorithm, _ in summary})
    tasks = sorted({task for task, _, _ in summary})
    columns = min(3, len(tasks)) or 1
    rows = max(1, math.ceil(len(tasks) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
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
    panels = {task: axes.flat[i] for i, task in enumerate(tasks)}
    for (task, algorithm, limit), cell in sorted(summary.items()):
        axis = panels[task]
        axis.errorbar(
            cell["cost_mean"],
            cell["reward_mean"],
            xerr=cell["cost_std"],
            yerr=cell["reward_std"],
            fmt="o",
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
    for task, axis in panels.items():
        axis.axvline(SAFE_THRESHOLD, color="red", linestyle="--")
        axis.set_title(task, fontsize=10)
        axis.set_xlabel("normalised cost (≤ 1 is safe)", fontsize=8)
        axis.set_ylabel("normalised reward", fontsize=8)
    for axis in list(axes.flat)[len(tasks) :]:
        axis.set_visible(False)
    handles = [
        plt.Line2D([], [], marker="o", linestyle="", color=colour, label=algorithm)
        for algorithm, colour in colours.items()
    ]
    handles.append(plt.Line2D([], [], color="red", linestyle="--", label="cost limit"))
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    figure.suptitle("safepolicy quality benchmark (mean ± std over seeds)")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(
    args: argparse.Namespace,
    results: list[dict],
    limits: dict[str, list[float]],
    references: dict[tuple[str, float], float | None],
    command: str,
    with_plot: bool,
) -> str:
    """Write quality.json, quality.md (and quality.png when ``with_plot``) into OUT and the
    fragment into ``--readme`` when given; returns quality.md's text."""
    summary = summarise(results)
    published = load_published(args.published) if args.published else None
    table = markdown_table(summary, args.tasks, args.algorithms, limits, references, published)
    wall_times = wall_time_table(summary, args.tasks, args.algorithms, limits)
    settings = settings_line(args, limits)
    recorded = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "quality.json").write_text(
        json.dumps(
            {
                "settings": recorded,
                "command": command,
                "cost_limits": limits,
                "dataset_best_safe": [
                    {"task": task, "cost_limit": limit, "normalized_reward": value}
                    for (task, limit), value in references.items()
                ],
                "runs": results,
            },
            indent=2,
        )
    )
    text = report_text(settings, command, table, wall_times, "quality.png")
    (args.out / "quality.md").write_text(text)
    if with_plot and results:
        plot(summary, args.out / "quality.png")
    if args.readme:
        link = Path(os.path.relpath(args.out / "quality.png", args.readme.resolve().parent))
        fragment = report_text(settings, command, table, wall_times, link.as_posix())
        args.readme.write_text(replace_between_markers(args.readme.read_text(), fragment))
    return text


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the command line, with ``--table``'s preset as the defaults."""
    from safepolicy.training.registry import algorithm_names

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--table",
        choices=sorted(PRESETS),
        default=None,
        help="a preset table (defaults for every setting below; explicit flags win)",
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
    parser.add_argument(
        "--cost-limits",
        nargs="+",
        type=float,
        default=None,
        help="the same limits for every task (default: each task's three tightest from "
        "safepolicy/tasks.py, 5/10/20 on Bullet and 20/40/80 on Safety-Gymnasium)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument(
        "--steps-for",
        dest="steps_for",
        action="append",
        default=[],
        metavar="ALGORITHM=STEPS",
        help="one algorithm's own --steps (repeatable)",
    )
    parser.add_argument("--precision", default="bf16-mixed", choices=["fp32", "bf16-mixed"])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one per core)")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=list(SHORT_BUDGET_SETTINGS),
        metavar="[ALGORITHM:]NAME=VALUE",
        help="a training setting (as `safepolicy train --set`), applied to "
        "every algorithm whose config has it, or only to ALGORITHM; repeatable, later ones win "
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
        "--published",
        type=Path,
        default=PUBLISHED_FIGURES,
        help="published figures to show beside ours (default: %(default)s)",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help=f"also write the report between the {README_BEGIN} / {README_END} lines of this "
        "file (the issue18 preset: README.md)",
    )
    parser.add_argument(
        "--no-readme",
        dest="readme",
        action="store_const",
        const=None,
        help="do not write the README fragment (overrides a preset's --readme)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="redraw quality.md, quality.png and the README fragment from the kept results in "
        "OUT/results whose settings match, without training",
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="redraw quality.png from OUT/quality.json without training",
    )
    preset = parser.parse_known_args(argv)[0].table
    if preset is not None:
        parser.set_defaults(**PRESETS[preset])
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Turn malformed settings into one-line parser errors; parse --steps-for and --reuse-stage
    into dicts (``args.steps_for``, ``args.reuse_stages``)."""
    from safepolicy.tasks import UnknownTaskError, get_task
    from safepolicy.training.registry import algorithm_names

    for task in args.tasks:
        try:
            get_task(task)
        except UnknownTaskError as error:
            parser.error(f"--tasks: {error}")
    for setting in args.settings:
        name = setting.split("=", 1)[0]
        scope, _, field = name.rpartition(":")
        if "=" not in setting or not field:
            parser.error(
                f"--set {setting!r}: expected [ALGORITHM:]NAME=VALUE, e.g. td3bc.tau=0.05 "
                "or drcorl:tau=0.05"
            )
        if scope and scope not in algorithm_names():
            parser.error(f"--set {setting!r}: {scope!r} is not a registered algorithm")
        if scope and not field.startswith("run.") and field not in config_fields(scope):
            parser.error(f"--set {setting!r}: {scope} has no setting {field!r}")
    per_algorithm: dict[str, int] = {}
    for item in args.steps_for:
        algorithm, _, steps = item.partition("=")
        if algorithm not in algorithm_names() or not steps.isdigit() or int(steps) < 1:
            parser.error(
                f"--steps-for {item!r}: expected ALGORITHM=STEPS with a registered algorithm "
                "and a positive whole number, e.g. cpq=4000"
            )
        per_algorithm[algorithm] = int(steps)
    args.steps_for = per_algorithm
    reuse = dict(item.split("=", 1) for item in args.reuse if "=" in item)
    if len(reuse) != len(args.reuse):
        parser.error("--reuse-stage expects ALGORITHM=STAGE, e.g. drcorl=critics")
    args.reuse_stages = reuse
    if args.readme is not None and not args.readme.is_file():
        parser.error(f"--readme {args.readme}: no such file")
    if args.readme is not None:
        try:
            replace_between_markers(args.readme.read_text(), "")
        except ValueError as error:
            # the preset names README.md before its markers are placed: say so once, go on
            print(f"{args.readme}: {error}; the README is left as it is", file=sys.stderr)
            args.readme = None
    if args.published is not None and not args.published.is_file():
        parser.error(f"--published {args.published}: no such file")
    if args.cost_limits is not None and any(limit < 0 for limit in args.cost_limits):
        parser.error("--cost-limits must be numbers >= 0")


def plan_jobs(args: argparse.Namespace, limits: dict[str, list[float]]) -> list[Job]:
    """Every run of the benchmark, tasks first, then limits, algorithms and seeds."""
    runs_dir = args.runs_dir or args.out / "runs"

    def job(algorithm: str, task: str, limit: float, seed: int) -> Job:
        first = limits[task][0]
        reused = (
            {args.reuse_stages[algorithm]: runs_dir / f"{task}-{algorithm}-{first:g}-s{seed}"}
            if algorithm in args.reuse_stages and limit != first
            else None
        )
        return Job(
            algorithm,
            task,
            args.data_dir / f"{task}.h5",
            limit,
            seed,
            steps_for(algorithm, args.steps, args.steps_for),
            args.eval_episodes,
            args.precision,
            args.settings,
            runs_dir / f"{task}-{algorithm}-{limit:g}-s{seed}",
            args.out / "results" / f"{task}-{algorithm}-{limit:g}-s{seed}.json",
            reused,
        )

    return [
        job(algorithm, task, limit, seed)
        for task in args.tasks
        for limit in limits[task]
        for algorithm in args.algorithms
        for seed in args.seeds
    ]


def report_only(args: argparse.Namespace, limits: dict[str, list[float]], command: str) -> int:
    """Draw the report from the kept results whose fingerprint matches what this command would
    train (the same test that reuses them), naming the runs that are missing or stale."""
    results, missing, stale = [], [], []
    for job in plan_jobs(args, limits):
        result_file = job.result_file
        kept = kept_result(result_file, run_fingerprint(job.request()))
        if kept is not None:
            results.append(kept)
        elif result_file.exists():
            stale.append(result_file.name)
        else:
            missing.append(result_file.name)
    datasets = {task: args.data_dir / f"{task}.h5" for task in args.tasks}
    text = write_report(
        args, results, limits, dataset_references(datasets, limits), command, with_plot=True
    )
    print(text)
    print(
        f"{len(results)} runs drawn, {len(missing)} missing, {len(stale)} kept with other "
        f"settings (not drawn){': ' + ' '.join(stale) if stale else ''}",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.replot:
        runs = json.loads((args.out / "quality.json").read_text())["runs"]
        plot(summarise(runs), args.out / "quality.png")
        return 0
    limits = {task: cost_limits_for(task, args.cost_limits) for task in args.tasks}
    command = command_line(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        return report_only(args, limits, command)

    datasets = {
        task: collect_if_missing(task, args.data_dir, args.dataset_episodes, seed=0)
        for task in args.tasks
    }
    references = dataset_references(datasets, limits)
    jobs = plan_jobs(args, limits)
    # A run whose stage checkpoint a run still to train will start from must have that checkpoint
    # here, even when its own result is kept (e.g. committed from another machine).
    sources = {
        source: stage
        for job in jobs
        if job.reuse is not None
        and kept_result(job.result_file, run_fingerprint(job.request())) is None
        for stage, source in job.reuse.items()
    }
    jobs = [job._replace(stage_for_others=sources.get(job.out)) for job in jobs]
    # runs that reuse another run's stage wait for the runs that train it
    waves = [[j for j in jobs if j.reuse is None], [j for j in jobs if j.reuse is not None]]
    results: list[dict] = []
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for row in (row for wave in waves for row in pool.map(train_once, wave)):
            results.append(row)
            print(
                f"{row['task']} {row['algorithm']} kappa={row['cost_limit']:g} "
                f"seed={row['seed']}: reward {row['normalized_reward']:.2f} "
                f"cost {row['normalized_cost']:.2f} ({row['train_seconds']} s; stages "
                f"{row['stage_seconds']})",
                flush=True,
            )
            write_report(args, results, limits, references, command, with_plot=False)
    print(write_report(args, results, limits, references, command, with_plot=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
