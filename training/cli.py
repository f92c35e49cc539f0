"""``safepolicy train ALGO --task T --dataset FILE.h5 --cost-limit K --out RUN_DIR``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safepolicy.cli import HelpFormatter, add_quiet_flag, report_error
from safepolicy.errors import SafepolicyError
from safepolicy.training.config import RunConfig, describe
from safepolicy.training.registry import algorithm_names, algorithm_spec

# torch, the gyms and h5py are imported in main() after parsing: `train --help` stays fast
REQUIRED = ("--task", "--cost-limit", "--out")  # --dataset: offline algorithms only


def build_parser(require_run_flags: bool = True) -> argparse.ArgumentParser:
    """The options of ``safepolicy train``; ``--print-config`` alone needs none of REQUIRED."""
    parser = argparse.ArgumentParser(
        prog="safepolicy train",
        formatter_class=HelpFormatter,
        description="Train a policy from a DSRL-format dataset (offline), online in the task's "
        "environment (sac-lag), or both (marvel). Ends in RUN_DIR/actor.pt.",
    )
    parser.add_argument("algorithm", choices=algorithm_names())
    run = parser.add_argument_group("required arguments")
    run.add_argument(
        "--task",
        required=require_run_flags,
        help="task name, e.g. BallRun (see `safepolicy tasks`)",
    )
    parser.add_argument(
        "--dataset",
        type=Path,
        metavar="FILE.h5",
        help="DSRL-format HDF5 file (every offline algorithm needs one; sac-lag "
        "learns online without)",
    )
    run.add_argument(
        "--cost-limit",
        type=float,
        required=require_run_flags,
        metavar="KAPPA",
        help="episode cost budget kappa",
    )
    run.add_argument(
        "--out",
        type=Path,
        required=require_run_flags,
        metavar="RUN_DIR",
        help="run directory to create (or resume)",
    )
    parser.add_argument("--steps", type=int, help="gradient updates (default: the config's)")
    parser.add_argument(
        "--online-steps",
        type=int,
        help="online finetuning length in vector env steps (marvel; the same as "
        "--set online_steps=N)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of everything random")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument(
        "--resume", action="store_true", help="continue RUN_DIR from its last checkpoint"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a hyperparameter, e.g. num_arms=3, td3bc.alpha=2.5, "
        "run.batch_size=512 (see --print-config)",
    )
    parser.add_argument(
        "--config",
        dest="config_file",
        type=Path,
        metavar="FILE.yaml",
        help="settings from a YAML file (nested or dotted names, run settings "
        "under run:); --set overrides them",
    )
    parser.add_argument(
        "--reuse-stage",
        dest="reuse_stages",
        action="append",
        default=[],
        metavar="STAGE=RUN_DIR",
        help="start from the end-of-stage checkpoint of another run of the same "
        "algorithm, task and dataset, skipping STAGE and the stages before "
        "it (RUN_DIR or RUN_DIR/checkpoints/stage-STAGE.pt)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print every hyperparameter with its meaning and paper value",
    )
    add_quiet_flag(parser)
    return parser


def print_config(algorithm: str) -> None:
    spec = algorithm_spec(algorithm)
    stages = ", ".join(
        f"{stage.name} ({stage.steps} steps)"
        for stage in spec.stages(spec.config_type(), RunConfig())
    )
    print(f"{algorithm}: {spec.summary}\nstages: {stages}")
    rows = describe(RunConfig(), "run.") + describe(spec.config_type())
    width = max(len(name) for name, *_ in rows)
    for name, value, help_text, paper in rows:
        paper = paper.removeprefix("paper:").strip()  # some configs write "paper: K=5"
        paper_note = f"  [paper: {paper}]" if paper else ""
        print(f"{name:<{width}}  {value!s:<12}  {help_text}{paper_note}")


def summary_line(run_dir: Path) -> str:
    """The one line ``train`` ends with: where the actor is and how its evaluation went."""
    line = f"wrote {run_dir / 'actor.pt'}"
    evaluation_path = run_dir / "evaluation.json"
    if evaluation_path.exists():
        e = json.loads(evaluation_path.read_text())
        line += (
            f"; evaluation over {e['episodes']} episodes: normalised reward "
            f"{e['normalized_reward']:.3f}, normalised cost {e['normalized_cost']:.3f} "
            f"(mean cost {e['cost_mean']:.2f}, limit {e['cost_limit']:g}, violation rate "
            f"{e['violation_rate']:.2f})"
        )
    if (run_dir / "curves.png").exists():
        line += f"; curves {run_dir / 'curves.png'}"
    return line


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``safepolicy train`` and ``python -m safepolicy.training``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(require_run_flags="--print-config" not in argv)
    args = parser.parse_args(argv)
    if args.print_config:
        print_config(args.algorithm)
        return 0
    overrides: dict[str, str] = {}
    for item in args.overrides:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects NAME=VALUE, got {item!r}")
        overrides[name.strip()] = value.strip()
    if args.online_steps is not None:
        overrides["online_steps"] = str(args.online_steps)
    reuse_stages: dict[str, Path] = {}
    for item in args.reuse_stages:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            parser.error(f"--reuse-stage expects STAGE=RUN_DIR, got {item!r}")
        reuse_stages[name.strip()] = Path(value.strip())

    from safepolicy.training.loop import TrainRequest, train

    request = TrainRequest(
        algorithm=args.algorithm,
        task=args.task,
        dataset=args.dataset,
        cost_limit=args.cost_limit,
        out=args.out,
        seed=args.seed,
        steps=args.steps,
        device=args.device,
        resume=args.resume,
        overrides=overrides,
        progress=not args.quiet,
        reuse_stages=reuse_stages,
        config_file=args.config_file,
    )
    try:
        run_dir = train(request)
    except (SafepolicyError, ValueError) as error:
        report_error("safepolicy train", error)
        return 2
    print(summary_line(run_dir))
    return 0
