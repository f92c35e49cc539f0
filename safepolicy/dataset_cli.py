"""``safepolicy dataset FILE.h5 [--json]``: validate a DSRL-format file and print its summary.

Works on the project's own files and on real DSRL downloads (a task name is looked up under
``DSRL_DATASET_DIR``). A file that cannot be used exits non-zero with the file and the problem.
"""

from __future__ import annotations

import argparse
import sys

from safepolicy.cli import HelpFormatter, report_error
from safepolicy.datasets import load_dataset, resolve_dataset, summarize
from safepolicy.errors import SafepolicyError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safepolicy dataset", formatter_class=HelpFormatter,
        description="Validate a DSRL-format HDF5 dataset and print its summary.",
    )
    parser.add_argument("file", help="a .h5/.hdf5 file, or a task name whose DSRL download is in "
                        "DSRL_DATASET_DIR (default ~/.dsrl/datasets, as dsrl)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
