"""Train the behaviour zoo: SAC-Lag agents at several cost limits per task, into ``zoo/``.

For each task (default: every registered task without a scripted controller, i.e. those that
``safepolicy collect`` used to play with random actions), for each cost limit in ``--limits``
(default: the task's middle listed limit, plus an unconstrained agent), it runs::

    safepolicy train sac-lag --task T --cost-limit K --steps N --out RUNS/T/AGENT --seed S

exports the actor into ``ZOO/T/AGENT/<version>/`` (``safepolicy.zoo.add_agent``: the exporter's
verified ONNX artifact), evaluates it over ``--eval-episodes`` deterministic episodes and writes
its card (the command, the training wall time and env steps, the measured return and cost).
Resumable: an agent whose card exists is skipped; a finished run whose export is missing is
exported without retraining; an interrupted run is continued with ``--resume``. ``--commit``
commits each agent as it finishes (``git add ZOO/T/AGENT``).

The per-agent CPU budget is set in environment transitions (``--env-steps``); the card and the
printed line give the wall time it took. Unconstrained agents train with a cost limit of
``UNCONSTRAINED_LIMIT`` (the multiplier never rises) and get ``cost_limit: null`` on the card.

``--measure-cost`` instead measures, per task, the wall time of an environment transition and
of a SAC-Lag gradient update per transition (two short runs of the real trainer, one all
warm-up so that it never updates), which is how SAC-Lag was chosen over PPO-Lag (see the
report). ``--report`` collects a dataset per task from the zoo and prints, per task, the
DSRL-normalised reward of the best episode within each listed cost limit and the fraction of
episodes within it (a markdown table, also written to ``--out``), with a reward-cost plot per
task.

Run heavy modes only under the shared lock, e.g.
``flock /tmp/heavy.lock .venv/bin/python benchmarks/train_zoo.py --tasks DroneRun --commit``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from safepolicy.tasks import TaskSpec, get_task, make_env, registry

ROOT = Path(__file__).resolve().parent.parent
UNCONSTRAINED_LIMIT = 1e6
# Measured on the 2-core machine (random actions, one env, us per transition): Swimmer 134,
# Hopper 144, Walker2d 177, AntVelocity 377, DroneCircle 457, DroneRun 630, AntRun 1065,
# AntCircle 1289, PointCircle1 2533, CarCircle1 3291. Both families first, then by that cost.
DEFAULT_ORDER = (
    "DroneRun",
    "HopperVelocity",
    "DroneCircle",
    "Walker2dVelocity",
    "AntRun",
    "AntVelocity",
    "PointCircle1",
    "CarCircle1",
    "AntCircle",
    "SwimmerVelocity",
)


@dataclass(frozen=True)
class AgentPlan:
    task: str
    cost_limit: float | None  # None: unconstrained

    @property
    def name(self) -> str:
        return (
            "sac-lag-unconstrained"
            if self.cost_limit is None
            else f"sac-lag-limit{self.cost_limit:g}"
        )


def tasks_without_a_controller() -> list[str]:
    """Registered tasks that have no scripted controller (they fell back to random actions)."""
    from safepolicy.behavior import make_controller

    missing = []
    for name, spec in registry().items():
        env = make_env(spec)
        try:
            if make_controller(spec, env) is None:
                missing.append(name)
        finally:
            env.close()
    return sorted(missing, key=lambda n: DEFAULT_ORDER.index(n) if n in DEFAULT_ORDER else 99)


def middle_limit(spec: TaskSpec) -> float:
    """The middle of the task's listed cost limits (the issue's bar is measured there)."""
    limits = sorted(spec.default_cost_limits)
    return limits[len(limits) // 2]


def train_command(
    plan: AgentPlan, run_dir: Path, steps: int, seed: int, settings: list[str], resume: bool
) -> list[str]:
    limit = UNCONSTRAINED_LIMIT if plan.cost_limit is None else plan.cost_limit
    command = [
        sys.executable,
        "-m",
        "safepolicy",
        "train",
        "sac-lag",
        "--task",
        plan.task,
        "--cost-limit",
        f"{limit:g}",
        "--steps",
        str(steps),
        "--out",
        str(run_dir),
        "--seed",
        str(seed),
        "--device",
        "auto",
        "--no-progress",
        "--set",
        "run.eval_episodes=0",
    ]
    for setting in settings:
        command += ["--set", setting]
    return command + (["--resume"] if resume else [])


def num_envs_of(settings: list[str]) -> int:
    for setting in settings:
        name, _, value = setting.partition("=")
        if name.strip() == "num_envs":
            return int(value)
    return 4  # sac-lag's default


def seconds_per_transition(task: str, args: argparse.Namespace) -> float:
    """SAC-Lag's wall time per transition on ``task`` (environment step plus its share of the
    updates), from two short runs whose difference cancels the process start-up."""
    times = []
    transitions = []
    for steps in (100, 600):
        run_dir = args.runs_dir / "calibrate" / task / str(steps)
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        command = train_command(
            AgentPlan(task, None), run_dir, steps, 0, [*args.set, "warmup_steps=0"], resume=False
        )
        started = time.perf_counter()
        subprocess.run(
            command,
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        times.append(time.perf_counter() - started)
        transitions.append(steps * num_envs_of(args.set))
    return max((times[1] - times[0]) / (transitions[1] - transitions[0]), 1e-5)


def resolved_device() -> str:
    """What ``--device auto`` picks on this machine."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def train_agent(plan: AgentPlan, args: argparse.Namespace) -> None:
    from safepolicy.zoo import add_agent, carded_versions

    if plan.name in carded_versions(args.zoo, plan.task):
        print(f"{plan.task} {plan.name}: in the zoo already, skipped", flush=True)
        return
    run_dir = args.runs_dir / plan.task / plan.name
    num_envs = num_envs_of(args.set)
    env_steps = args.env_steps
    if args.budget_s is not None:
        # the budget fixes the env steps once, so a resumed run aims at the same total
        rate_file = run_dir.parent / "seconds_per_transition.json"
        if rate_file.exists():
            rate = float(json.loads(rate_file.read_text())["seconds_per_transition"])
        else:
            rate = seconds_per_transition(plan.task, args)
            rate_file.parent.mkdir(parents=True, exist_ok=True)
            rate_file.write_text(json.dumps({"seconds_per_transition": rate}) + "\n")
        env_steps = int(args.budget_s / rate)
        print(
            f"{plan.task} {plan.name}: {1e3 * rate:.2f} ms per transition -> {env_steps} "
            f"env steps in {args.budget_s:.0f} s",
            flush=True,
        )
    steps = max(1, env_steps // num_envs)
    command = train_command(
        plan,
        run_dir,
        steps,
        args.seed,
        args.set,
        resume=run_dir.exists() and not (run_dir / "actor.pt").exists(),
    )
    wall = 0.0
    if not (run_dir / "actor.pt").exists():
        started = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
    else:
        wall = (
            float(json.loads((run_dir / "train_wall.json").read_text())["wall_s"])
            if (run_dir / "train_wall.json").exists()
            else 0.0
        )
    (run_dir / "train_wall.json").write_text(json.dumps({"wall_s": wall}) + "\n")
    shown = ["safepolicy", *command[command.index("train") :]]
    shown[shown.index("--out") + 1] = f"runs/zoo/{plan.task}/{plan.name}"
    card = add_agent(
        run_dir,
        args.zoo,
        plan.task,
        plan.name,
        command=shlex.join(shown),
        algorithm="sac-lag",
        cost_limit=plan.cost_limit,
        train_env_steps=steps * num_envs,
        train_wall_s=wall,
        train_device=resolved_device(),
        eval_episodes=args.eval_episodes,
    )
    print(
        f"{plan.task} {plan.name}: {card.train_env_steps} env steps in {wall:.0f} s; eval "
        f"return {card.eval_return_mean:.1f} (normalised {card.eval_normalized_reward:.2f}) "
        f"cost {card.eval_cost_mean:.1f}",
        flush=True,
    )
    if args.commit:
        message = (
            f"zoo: {plan.task} {plan.name} ({card.train_env_steps} env steps, "
            f"{wall:.0f} s; eval return {card.eval_return_mean:.1f}, cost "
            f"{card.eval_cost_mean:.1f})"
        )
        commit_paths([args.zoo / plan.task / plan.name], message)


def commit_paths(paths: list[Path], message: str) -> None:
    """``git add`` and commit only ``paths``; retried, since another commit may hold the index
    lock, and never fatal (the files stay for a later commit)."""
    for attempt in range(5):
        added = subprocess.run(["git", "add", *map(str, paths)], cwd=ROOT)
        committed = subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", *map(str, paths)], cwd=ROOT
        )
        if added.returncode == 0 and committed.returncode == 0:
            return
        time.sleep(2 + 3 * attempt)
    print(f"could not commit {', '.join(map(str, paths))}; commit it by hand", flush=True)


def measure_env_steps(tasks: list[str], transitions: int = 2000) -> None:
    """Microseconds per transition of the tasks' vector envs (1 and 4 copies) with uniform
    random actions, the rollout module's wrappers included."""
    from safepolicy.rollout import make_vector_env

    for task in tasks:
        for num_envs in (1, 4):
            envs = make_vector_env(get_task(task), list(range(1000)), num_envs)
            envs.reset()
            rng = np.random.default_rng(0)
            shape = (num_envs, *(envs.single_action_space.shape or ()))
            steps = transitions // num_envs
            started = time.perf_counter()
            for _ in range(steps):
                envs.step(rng.uniform(-1, 1, shape).astype(np.float32))
            elapsed = time.perf_counter() - started
            envs.close()
            print(
                f"{task} num_envs={num_envs}: {1e6 * elapsed / (steps * num_envs):.0f} "
                "us/transition",
                flush=True,
            )


def measure_cost(tasks: list[str], args: argparse.Namespace) -> None:
    """Seconds per transition of stepping the environments and of SAC-Lag's updates."""
    steps = max(1, args.env_steps // num_envs_of(args.set))
    transitions = steps * num_envs_of(args.set)
    for task in tasks:
        times = {}
        for label, warmup in (("env only", transitions + 1), ("env + updates", 0)):
            run_dir = args.runs_dir / "measure" / task / label.replace(" ", "")
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            command = train_command(
                AgentPlan(task, None),
                run_dir,
                steps,
                0,
                [*args.set, f"warmup_steps={warmup}"],
                resume=False,
            )
            started = time.perf_counter()
            subprocess.run(
                command,
                check=True,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            times[label] = time.perf_counter() - started
        env_us = 1e6 * times["env only"] / transitions
        update_us = 1e6 * (times["env + updates"] - times["env only"]) / transitions
        print(
            f"{task}: {transitions} transitions; env only {times['env only']:.1f} s "
            f"({env_us:.0f} us/transition, process start included), with updates "
            f"{times['env + updates']:.1f} s: updates {update_us:.0f} us/transition",
            flush=True,
        )


def report_row(task: str, args: argparse.Namespace) -> str:
    """Collect from the task's zoo; the markdown row of the issue's bar for it."""
    from safepolicy.collect import DEFAULT_EPISODES, ZooOptions, collect, save
    from safepolicy.dataset_cli import plot_reward_cost
    from safepolicy.zoo import carded_versions

    spec = get_task(task)
    agents = carded_versions(args.zoo, task)
    if not agents:
        return f"| {task} | no zoo agents | | | | |"
    episodes = args.episodes or DEFAULT_EPISODES[spec.family]
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    dataset = collect(spec, episodes, seed=args.seed, progress=False, zoo=ZooOptions(args.zoo))
    wall = time.perf_counter() - started
    args.data_dir.mkdir(parents=True, exist_ok=True)
    save(dataset, args.data_dir / f"{task}.h5")
    plot_reward_cost(dataset, out_dir / f"{task}.png", spec)
    returns, costs = dataset.episode_returns_and_costs()
    normalised = np.array([spec.normalized_reward(r) for r in returns])
    cells = []
    for limit in spec.default_cost_limits:
        within = costs <= limit
        best = normalised[within].max() if within.any() else float("nan")
        cells.append(f"{limit:g}: {best:.2f} / {within.mean():.0%}")
    above = float(np.mean(costs > max(spec.default_cost_limits)))
    mid_best = normalised[costs <= middle_limit(spec)]
    bar = bool(mid_best.size and mid_best.max() >= 0.3)
    return (
        f"| {task} | {', '.join(sorted(agents))} | {episodes} ({wall:.0f} s) | "
        f"{' · '.join(cells)} | {above:.0%} | {'yes' if bar else 'no'} |"
    )


REPORT_HEADER = [
    "| task | zoo agents | episodes (collect time) | per listed limit: best normalised reward "
    "within it / fraction of episodes within it | above the largest limit | best within the "
    "middle limit >= 0.3 |",
    "|---|---|---|---|---|---|",
]


def report(tasks: list[str], args: argparse.Namespace) -> None:
    """Collect from the zoo per task and update the table in ``--out/report.md``."""
    rows_file = args.out / "rows.json"
    rows = json.loads(rows_file.read_text()) if rows_file.exists() else {}
    for task in tasks:
        rows[task] = report_row(task, args)
        print(rows[task], flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        rows_file.write_text(json.dumps(rows, indent=1) + "\n")
        table = "\n".join([*REPORT_HEADER, *rows.values()])
        (args.out / "report.md").write_text(table + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks",
        nargs="*",
        default=None,
        help="tasks (default: every task without a scripted controller)",
    )
    parser.add_argument(
        "--limits",
        nargs="*",
        default=None,
        help="cost limits ('none' = unconstrained; default: the task's middle "
        "listed limit and none)",
    )
    parser.add_argument(
        "--env-steps",
        type=int,
        default=20_000,
        help="environment transitions per agent (the CPU budget)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="CPU budget per agent in seconds: sets the env steps from a short "
        "calibration run per task (overrides --env-steps)",
    )
    parser.add_argument(
        "--report-each",
        action="store_true",
        help="after each task's agents, collect from its zoo and update the report (see --report)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="sac-lag setting NAME=VALUE")
    parser.add_argument("--zoo", type=Path, default=ROOT / "zoo")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "zoo")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--commit", action="store_true", help="git commit each agent")
    parser.add_argument("--measure-cost", action="store_true")
    parser.add_argument(
        "--measure-env",
        action="store_true",
        help="time the tasks' environment steps alone (random actions)",
    )
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--episodes", type=int, default=None, help="--report: episodes per task")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "zoo",
        help="report table and plots",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / "data" / "zoo",
        help="--report: where the collected datasets go",
    )
    args = parser.parse_args()
    tasks = args.tasks or tasks_without_a_controller()
    if args.measure_env:
        measure_env_steps(tasks)
        return 0
    if args.measure_cost:
        measure_cost(tasks, args)
        return 0
    if args.report:
        report(tasks, args)
        return 0
    for task in tasks:
        spec = get_task(task)
        limits: list[float | None] = [middle_limit(spec), None]
        if args.limits is not None:
            limits = [None if text == "none" else float(text) for text in args.limits]
        for limit in limits:
            train_agent(AgentPlan(task, limit), args)
        if args.report_each:
            report([task], args)
            if args.commit:
                commit_paths(
                    [args.out / name for name in ("rows.json", "report.md", f"{task}.png")],
                    f"benchmarks/results/zoo: {task} collected from its zoo",
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
