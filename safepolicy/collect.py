"""``safepolicy collect``: roll out behaviour policies and write a DSRL-format dataset.

Episodes are played in the real environment (``safepolicy.tasks.make_env``) by the behaviour
mix of ``safepolicy.behavior``; the transitions are written atomically with
``safepolicy.datasets.write_dataset`` and the summary is printed and saved as
``FILE.summary.json`` beside the file. Everything is drawn from ``--seed``: the episodes' reset
seeds, their styles and the action noise, so the same command writes the same arrays.
Nothing is written until every episode is done: an interrupted run leaves no file behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from safepolicy.behavior import DEFAULT_BEHAVIOR, BehaviorMix, parse_behavior_mix
from safepolicy.cli import HelpFormatter, add_quiet_flag, report_error
from safepolicy.datasets import Dataset, summarize, write_dataset
from safepolicy.errors import SafepolicyError
from safepolicy.fileio import atomic_write_text
from safepolicy.tasks import TaskSpec, get_task, make_env

DEFAULT_EPISODES = {"bullet": 200, "safety_gymnasium": 100}


class CollectError(SafepolicyError, ValueError):
    """A collection request that cannot be carried out (bad output path, bad episode count)."""


def summary_path(out: Path) -> Path:
    """Where the JSON summary of dataset ``out`` is written: ``FILE.summary.json``."""
    return out.with_suffix(".summary.json")


def check_output_path(out: Path, overwrite: bool = False) -> None:
    """Fail before collecting if ``out`` cannot become a dataset file, or already is one and
    ``overwrite`` was not asked for (a run trained on it would lose its data)."""
    if out.is_dir():
        raise CollectError(f"{out}: is a directory; pass a file path such as {out / 'data.h5'}")
    if out.suffix not in {".h5", ".hdf5"}:
        raise CollectError(f"{out}: a DSRL dataset file must end in .h5 or .hdf5")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CollectError(f"{out}: cannot create it, {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CollectError(
            f"{out}: cannot write in {ancestor} (permission denied); choose another --out"
        )
    if out.exists() and not overwrite:
        raise CollectError(f"{out}: exists (runs trained on it refer to it by path); choose "
                           "another --out, or pass --overwrite to replace it")
    if out.exists() and not os.access(out, os.W_OK):
        raise CollectError(f"{out}: exists and is not writable; remove it or choose another --out")


def collect(
    task: str | TaskSpec,
    episodes: int,
    seed: int = 0,
    behavior: str = DEFAULT_BEHAVIOR,
    progress: bool = True,
) -> Dataset:
    """Play ``episodes`` episodes of ``task`` with the behaviour mix; return them as a Dataset."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if episodes <= 0:
        raise CollectError(f"episodes must be a positive number, got {episodes}")
    parse_behavior_mix(behavior)  # fail before building the environment
    rng = np.random.default_rng(seed)
    reset_seeds = rng.integers(0, 2**31 - 1, size=episodes)
    columns: dict[str, list[Any]] = {
        "observations": [], "next_observations": [], "actions": [],
        "rewards": [], "costs": [], "terminals": [], "timeouts": [],
    }
    env = make_env(spec)
    try:
        env.action_space.seed(seed)
        mix = BehaviorMix(spec, env, behavior)
        for reset_seed in tqdm(reset_seeds, desc=f"collect {spec.name}", unit="episode",
                               disable=not progress):
            observation, _ = env.reset(seed=int(reset_seed))
            mix.begin_episode(rng)
            step, done = 0, False
            while not done:
                action = mix.act(observation, step, rng)
                next_observation, reward, terminated, truncated, info = env.step(action)
                done = terminated or truncated or step + 1 >= spec.max_episode_steps
                columns["observations"].append(observation)
                columns["next_observations"].append(next_observation)
                columns["actions"].append(action)
                columns["rewards"].append(np.float32(reward))
                columns["costs"].append(np.float32(info["cost"]))
                columns["terminals"].append(np.bool_(terminated))
                columns["timeouts"].append(np.bool_(done and not terminated))
                observation, step = next_observation, step + 1
    finally:
        env.close()
    arrays = {key: np.stack(values) for key, values in columns.items()}
    return Dataset(
        observations=arrays["observations"].astype(np.float32),
        next_observations=arrays["next_observations"].astype(np.float32),
        actions=arrays["actions"].astype(np.float32),
        rewards=arrays["rewards"],
        costs=arrays["costs"],
        terminals=arrays["terminals"],
        timeouts=arrays["timeouts"],
        attrs={
            "task": spec.name,
            "env_id": spec.env_id,
            "max_episode_steps": spec.max_episode_steps,
            "seed": seed,
            "episodes": episodes,
            "behavior": {"spec": behavior, **mix.describe()},
            "creator": "safepolicy collect",
        },
    )


def save(dataset: Dataset, out: Path) -> str:
    """Write the dataset and its JSON summary beside it; return the summary as text."""
    summary = summarize(Dataset(**{**dataset.__dict__, "path": out}))
    write_dataset(out, dataset)
    try:
        atomic_write_text(summary_path(out), summary.model_dump_json(indent=2) + "\n")
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return summary.to_text()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from error
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safepolicy collect", formatter_class=HelpFormatter,
        description="Roll out behaviour policies in a task's environment and write a "
        "DSRL-format HDF5 dataset (plus FILE.summary.json).",
    )
    parser.add_argument("--task", required=True, help="task name, see `safepolicy tasks`")
    parser.add_argument("--out", required=True, type=Path, help="output file, e.g. data/BallRun.h5")
    parser.add_argument("--episodes", type=_positive_int, default=None,
                        help="episodes to collect (default: 200 for Bullet tasks, 100 otherwise)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything random")
    parser.add_argument("--behavior", default=DEFAULT_BEHAVIOR,
                        help="behaviour mix, kind=weight,... of scripted, cautious, random")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it exists (refused by default)")
    add_quiet_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``safepolicy collect``."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        spec = get_task(args.task)
        parse_behavior_mix(args.behavior)
        out: Path = args.out
        check_output_path(out, overwrite=args.overwrite)
        episodes = args.episodes or DEFAULT_EPISODES[spec.family]
        started = time.perf_counter()
        dataset = collect(spec, episodes, args.seed, args.behavior, progress=not args.quiet)
        text = save(dataset, out)
    except SafepolicyError as error:
        report_error("safepolicy collect", error)
        return 2
    except OSError as error:
        print(f"safepolicy collect: error: {args.out}: could not write the dataset ({error})",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("safepolicy collect: interrupted; nothing was written", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - started
    print(text)
    print(f"wrote {out} and {summary_path(out)} ({len(dataset)} transitions in {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
