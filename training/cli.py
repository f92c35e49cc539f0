"""``safepolicy train ALGO --task T --dataset FILE.h5 --cost-limit K --out RUN_DIR``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safepolicy.datasets import DatasetError
from safepolicy.tasks import UnknownTaskError
from safepolicy.training.checkpoint import CheckpointError
from safepolicy.training.config import ConfigError, RunConfig, describe
from safepolicy.training.registry import algorithm_names, algorithm_spec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safepolicy train",
        description="Train a policy offline from a DSRL-format dataset. Ends in RUN_DIR/actor.pt.")
    parser.add_argument("algorithm", choices=algorithm_names())
    parser.add_argument("--task", help="DSRL task name, e.g. BallRun (see `safepolicy tasks`)")
    parser.add_argument("--dataset", type=Path, help="DSRL-format HDF5 file")
    parser.add_argument("--cost-limit", type=float, help="episode cost budget kappa")
    parser.add_argument("--out", type=Path, help="run directory to create (or resume)")
    parser.add_argument("--steps", type=int, help="gradient updates (default: the config's)")
    parser.add_argument("--online-steps", type=int,
                        help="online finetuning length in vector env steps (marvel; the same as "
                             "--set online_steps=N)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--resume", action="store_true",
                        help="continue RUN_DIR from its last checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="NAME=VALUE",
                        help="override a hyperparameter, e.g. num_arms=3, td3bc.alpha=2.5, "
                             "run.batch_size=512 (see --print-config)")
    parser.add_argument("--config", dest="config_file", type=Path, metavar="FILE.yaml",
                        help="settings from a YAML file (nested or dotted names, run settings "
                             "under run:); --set overrides them")
    parser.add_argument("--reuse-stage", dest="reuse_stages", action="append", default=[],
                        metavar="STAGE=RUN_DIR",
                        help="start from the end-of-stage checkpoint of another run of the same "
                             "algorithm, task and dataset, skipping STAGE and the stages before "
                             "it (RUN_DIR or RUN_DIR/checkpoints/stage-STAGE.pt)")
    parser.add_argument("--print-config", action="store_true",
                        help="print every hyperparameter with its meaning and paper value")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def print_config(algorithm: str) -> None:
    spec = algorithm_spec(algorithm)
    stages = ", ".join(f"{stage.name} ({stage.steps} steps)"
                       for stage in spec.stages(spec.config_type(), RunConfig()))
    print(f"{algorithm}: {spec.summary}\nstages: {stages}")
    rows = describe(RunConfig(), "run.") + describe(spec.config_type())
    width = max(len(name) for name, *_ in rows)
    for name, value, help_text, paper in rows:
        paper_note = f"  [paper: {paper}]" if paper else ""
        print(f"{name:<{width}}  {value!s:<12}  {help_text}{paper_note}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``safepolicy train`` and ``python -m safepolicy.training``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.print_config:
        print_config(args.algorithm)
        return 0
    # --dataset is checked by the loop: an online algorithm (sac-lag) runs without one
    missing = [flag for flag, value in (("--task", args.task), ("--cost-limit", args.cost_limit),
                                        ("--out", args.out)) if value is None]
    if missing:
        parser.error(f"missing {', '.join(missing)}")
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

    from safepolicy.training.loop import TrainingError, TrainRequest, train

    request = TrainRequest(
        algorithm=args.algorithm, task=args.task, dataset=args.dataset,
        cost_limit=args.cost_limit, out=args.out, seed=args.seed, steps=args.steps,
        device=args.device, resume=args.resume, overrides=overrides,
        progress=not args.no_progress, reuse_stages=reuse_stages, config_file=args.config_file)
    try:
        run_dir = train(request)
    except (TrainingError, DatasetError, UnknownTaskError, CheckpointError, ConfigError,
            ValueError) as error:
        print(f"safepolicy train: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {run_dir / 'actor.pt'}")
    evaluation = run_dir / "evaluation.json"
    if evaluation.exists():
        print(evaluation.read_text())
    return 0
