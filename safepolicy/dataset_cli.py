"""``safepolicy dataset FILE.h5 [--json] [--plot OUT.png]``: validate a DSRL-format file, print
its summary, and optionally draw its episodes on the reward-cost plane.

Works on the project's own files and on real DSRL downloads (a task name is looked up under
``DSRL_DATASET_DIR``). A file that cannot be used exits non-zero with the file and the problem.
The plot marks the task's listed cost limits (the task comes from the file's ``task``
attribute or ``--task``) and, when the task is known, gives DSRL-normalised rewards on a
second axis.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from safepolicy.cli import HelpFormatter, report_error
from safepolicy.datasets import Dataset, load_dataset, resolve_dataset, summarize
from safepolicy.errors import SafepolicyError
from safepolicy.plots import new_figure, save_figure
from safepolicy.tasks import TaskSpec, UnknownTaskError, get_task


def plot_reward_cost(
    dataset: Dataset, out: Path, spec: TaskSpec | None = None, title: str | None = None
) -> Path:
    """Write a PNG scatter of the dataset's episodes (cost on x, return on y) to ``out``, with
    the task's cost limits as vertical lines; written atomically."""
    returns, costs = dataset.episode_returns_and_costs()
    figure = new_figure(6.0, 4.5)
    axes = figure.add_subplot()
    axes.scatter(costs, returns, s=10, alpha=0.6, edgecolors="none")
    if spec is not None:
        for limit in spec.default_cost_limits:
            axes.axvline(limit, color="tab:red", linestyle="--", linewidth=0.8)
            axes.annotate(
                f"{limit:g}",
                (limit, 1.0),
                xycoords=("data", "axes fraction"),
                ha="left",
                va="top",
                fontsize=8,
                color="tab:red",
            )
        low, span = spec.reward_min, spec.reward_max - spec.reward_min

        def to_normalised(values: ArrayLike) -> np.ndarray:
            return (np.asarray(values) - low) / span

        def from_normalised(values: ArrayLike) -> np.ndarray:
            return low + np.asarray(values) * span

        normalised = axes.secondary_yaxis("right", functions=(to_normalised, from_normalised))
        normalised.set_ylabel("DSRL-normalised reward")
    axes.set_xlabel("episode cost")
    axes.set_ylabel("episode return")
    name = spec.name if spec else dataset.attrs.get("task", "unknown task")
    axes.set_title(title or f"{name}: {returns.size} episodes")
    figure.tight_layout()
    return save_figure(figure, out, dpi=120)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safepolicy dataset",
        formatter_class=HelpFormatter,
        description="Validate a DSRL-format HDF5 dataset and print its summary.",
    )
    parser.add_argument(
        "file",
        help="a .h5/.hdf5 file, or a task name whose DSRL download is in "
        "DSRL_DATASET_DIR (default ~/.dsrl/datasets, as dsrl)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="OUT.png",
        help="also draw the episodes' reward-cost scatter into this PNG",
    )
    parser.add_argument(
        "--task", default=None, help="task whose cost limits the plot marks (default: the file's)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``safepolicy dataset``."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        dataset = load_dataset(resolve_dataset(args.file))
    except SafepolicyError as error:
        report_error("safepolicy dataset", error)
        return 1
    summary = summarize(dataset)
    print(summary.model_dump_json(indent=2) if args.json else summary.to_text())
    if args.plot is not None:
        out: Path = args.plot
        if out.suffix.lower() != ".png":
            print(
                f"safepolicy dataset: error: {out}: the plot is a PNG; name it *.png",
                file=sys.stderr,
            )
            return 2
        task = args.task or dataset.attrs.get("task")
        try:
            spec = get_task(task) if isinstance(task, str) else None
        except UnknownTaskError as error:
            if args.task:
                print(f"safepolicy dataset: error: {error}", file=sys.stderr)
                return 2
            spec = None  # a file from elsewhere may name a task we do not know
        try:
            plot_reward_cost(dataset, out, spec)
        except OSError as error:
            print(
                f"safepolicy dataset: error: {out}: could not write the plot ({error})",
                file=sys.stderr,
            )
            return 1
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
