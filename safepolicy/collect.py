"""``safepolicy collect``: roll out behaviour policies and write a DSRL-format dataset.

Episodes are played in the real environment (``safepolicy.tasks.make_env``) by the behaviour
mix of ``safepolicy.behavior``; the transitions are written atomically with
``safepolicy.datasets.write_dataset`` and the summary is printed and saved as
``FILE.summary.json`` beside the file. Everything is drawn from ``--seed``: the episodes' reset
seeds, their styles and the action noise, so the same command writes the same arrays.
Nothing is written until every episode is done: an interrupted run leaves no file behind.

A task with a behaviour zoo (``safepolicy.zoo``) is played by its zoo agents by default
(``--zoo-weights``, ``--zoo-noise`` and ``--zoo-switch`` shape the mixture). ``--density-filter``
thins the episodes as DSRL's density filter does (:func:`density_filter`), so that the
reward-cost plane is covered evenly instead of piling up where the agents like to be.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from safepolicy.behavior import (
    DEFAULT_BEHAVIOR,
    ZOO_BEHAVIOR,
    BehaviorError,
    BehaviorMix,
    ZooSettings,
    default_behavior,
    parse_behavior_mix,
)
from safepolicy.cli import HelpFormatter, add_quiet_flag, report_error
from safepolicy.datasets import DSRL_KEYS, Dataset, summarize, write_dataset
from safepolicy.errors import SafepolicyError
from safepolicy.fileio import atomic_write_text
from safepolicy.tasks import TaskSpec, get_task, make_env
from safepolicy.zoo import default_zoo_dir, has_zoo, load_agents, parse_agent_weights

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
        raise CollectError(
            f"{out}: exists (runs trained on it refer to it by path); choose "
            "another --out, or pass --overwrite to replace it"
        )
    if out.exists() and not os.access(out, os.W_OK):
        raise CollectError(f"{out}: exists and is not writable; remove it or choose another --out")


@dataclass(frozen=True)
class ZooOptions:
    """Where the zoo is and how its agents are mixed (see ``behavior.ZooController``)."""

    zoo_dir: Path | None = None  # default: safepolicy.zoo.default_zoo_dir()
    weights: str | None = None  # "agent=w,..." (default: equal weights)
    max_noise: float = 0.3
    switch_probability: float = 0.3


def zoo_settings(spec: TaskSpec, options: ZooOptions) -> ZooSettings | None:
    """The task's zoo agents with their weights, or None when the task has no zoo."""
    zoo_dir = options.zoo_dir or default_zoo_dir()
    if not has_zoo(spec.name, zoo_dir):
        return None
    agents = load_agents(spec.name, zoo_dir)
    weights = parse_agent_weights(options.weights, [agent.name for agent in agents])
    return ZooSettings(tuple(agents), weights, options.max_noise, options.switch_probability)


def collect(
    task: str | TaskSpec,
    episodes: int,
    seed: int = 0,
    behavior: str | None = None,
    progress: bool = True,
    zoo: ZooOptions | None = None,
) -> Dataset:
    """Play ``episodes`` episodes of ``task`` with the behaviour mix; return them as a Dataset.

    ``behavior`` defaults to the zoo's mix when the task has a zoo, else the scripted mix.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if episodes <= 0:
        raise CollectError(f"episodes must be a positive number, got {episodes}")
    options = zoo or ZooOptions()
    if not 0.0 <= options.switch_probability <= 1.0 or options.max_noise < 0:
        raise CollectError("--zoo-switch must be in [0, 1] and --zoo-noise non-negative")
    settings = zoo_settings(spec, options)  # fail before building the environment
    behavior = behavior or default_behavior(settings is not None)
    if parse_behavior_mix(behavior).get("zoo", 0.0) > 0 and settings is None:
        raise BehaviorError(
            f"the mix {behavior!r} plays zoo agents but {spec.name} has none in "
            f"{options.zoo_dir or default_zoo_dir()}; train some with benchmarks/train_zoo.py "
            "or use scripted, cautious and random"
        )
    rng = np.random.default_rng(seed)
    reset_seeds = rng.integers(0, 2**31 - 1, size=episodes)
    columns: dict[str, list[Any]] = {key: [] for key in DSRL_KEYS}
    env = make_env(spec)
    try:
        env.action_space.seed(seed)
        mix = BehaviorMix(spec, env, behavior, zoo=settings)
        for reset_seed in tqdm(
            reset_seeds, desc=f"collect {spec.name}", unit="episode", disable=not progress
        ):
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


def density_filter(
    returns: np.ndarray,
    costs: np.ndarray,
    cost_bins: int = 10,
    reward_bins: int = 50,
    max_per_bin: int = 5,
    min_per_bin: int = 0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """DSRL's density filter: the sorted indices of the episodes kept.

    Episodes are binned on a ``cost_bins`` x ``reward_bins`` grid spanning their (cost, return)
    range; a bin holding more than ``max_per_bin`` keeps a random ``max_per_bin`` of them, and
    a bin holding ``min_per_bin`` or fewer is dropped (DSRL uses 2 to drop stray outliers;
    the default 0 keeps them).
    """
    if max_per_bin < 1 or min_per_bin < 0 or cost_bins < 1 or reward_bins < 1:
        raise CollectError(
            "the density filter needs at least one bin each way, a per-bin cap "
            "of at least 1 and a non-negative minimum"
        )
    rng = rng or np.random.default_rng(0)

    def bin_index(values: np.ndarray, bins: int) -> np.ndarray:
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.zeros(values.size, dtype=np.int64)
        # the largest value belongs to the last bin, not one past it
        return np.minimum(((values - low) / (high - low) * bins).astype(np.int64), bins - 1)

    if returns.size == 0:
        return np.zeros(0, dtype=np.int64)
    cells = bin_index(costs, cost_bins) * reward_bins + bin_index(returns, reward_bins)
    kept: list[np.ndarray] = []
    for cell in np.unique(cells):
        members = np.flatnonzero(cells == cell)
        if members.size <= min_per_bin:
            continue
        if members.size > max_per_bin:
            members = rng.choice(members, size=max_per_bin, replace=False)
        kept.append(members)
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)


def select_episodes(dataset: Dataset, indices: np.ndarray) -> Dataset:
    """The dataset restricted to the episodes numbered ``indices`` (in episode order)."""
    slices = list(dataset.episode_slices())
    rows = (
        np.concatenate([np.arange(len(dataset))[slices[int(i)]] for i in indices])
        if len(indices)
        else np.zeros(0, dtype=np.int64)
    )
    arrays = {key: getattr(dataset, key)[rows] for key in DSRL_KEYS}
    return Dataset(**arrays, attrs=dict(dataset.attrs), path=dataset.path)


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


def _bins(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(
            f"must be COST_BINS,REWARD_BINS such as 10,50, got {text!r}"
        )
    cost_bins, reward_bins = (_positive_int(part) for part in parts)
    return cost_bins, reward_bins


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safepolicy collect",
        formatter_class=HelpFormatter,
        description="Roll out behaviour policies in a task's environment and write a "
        "DSRL-format HDF5 dataset (plus FILE.summary.json).",
    )
    parser.add_argument("--task", required=True, help="task name, see `safepolicy tasks`")
    parser.add_argument("--out", required=True, type=Path, help="output file, e.g. data/BallRun.h5")
    parser.add_argument(
        "--episodes",
        type=_positive_int,
        default=None,
        help="episodes to collect (default: 200 for Bullet tasks, 100 otherwise)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of everything random")
    parser.add_argument(
        "--behavior",
        default=None,
        help="behaviour mix, kind=weight,... of scripted, cautious, random, zoo "
        f"(default {ZOO_BEHAVIOR!r} for a task with a zoo, else "
        f"{DEFAULT_BEHAVIOR!r})",
    )
    parser.add_argument(
        "--zoo",
        type=Path,
        default=None,
        metavar="DIR",
        help="behaviour zoo directory (default $SAFEPOLICY_ZOO or the checkout's zoo/)",
    )
    parser.add_argument(
        "--zoo-weights",
        default=None,
        metavar="AGENT=W,...",
        help="mixture weights of the task's zoo agents (equal when not given)",
    )
    parser.add_argument(
        "--zoo-noise",
        type=float,
        default=0.3,
        help="largest per-episode action-noise std of zoo episodes",
    )
    parser.add_argument(
        "--zoo-switch",
        type=float,
        default=0.3,
        help="probability that a zoo episode switches agent once",
    )
    parser.add_argument(
        "--density-filter",
        type=_positive_int,
        default=None,
        metavar="MAX_PER_BIN",
        help="thin the episodes as DSRL's density filter: keep at most this "
        "many per (cost, reward) bin",
    )
    parser.add_argument(
        "--density-bins",
        type=_bins,
        default=(10, 50),
        metavar="COST_BINS,REWARD_BINS",
        help="grid of the density filter (DSRL's is 10,50)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (refused by default)"
    )
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
        if args.behavior is not None:
            parse_behavior_mix(args.behavior)
        out: Path = args.out
        check_output_path(out, overwrite=args.overwrite)
        episodes = args.episodes or DEFAULT_EPISODES[spec.family]
        zoo = ZooOptions(args.zoo, args.zoo_weights, args.zoo_noise, args.zoo_switch)
        started = time.perf_counter()
        dataset = collect(
            spec, episodes, args.seed, args.behavior, progress=not args.quiet, zoo=zoo
        )
        if args.density_filter is not None:
            returns, costs = dataset.episode_returns_and_costs()
            cost_bins, reward_bins = args.density_bins
            kept = density_filter(
                returns,
                costs,
                cost_bins,
                reward_bins,
                args.density_filter,
                rng=np.random.default_rng(args.seed),
            )
            dataset = select_episodes(dataset, kept)
            dataset.attrs["density_filter"] = {
                "cost_bins": cost_bins,
                "reward_bins": reward_bins,
                "max_per_bin": args.density_filter,
                "episodes_kept": int(kept.size),
                "episodes_collected": int(returns.size),
            }
            print(f"density filter kept {kept.size} of {returns.size} episodes")
        text = save(dataset, out)
    except SafepolicyError as error:
        report_error("safepolicy collect", error)
        return 2
    except OSError as error:
        print(
            f"safepolicy collect: error: {args.out}: could not write the dataset ({error})",
            file=sys.stderr,
        )
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
