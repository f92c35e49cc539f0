"""``safepolicy export --run RUN_DIR --repo MODEL_REPO --name NAME [--version V]``.

Reads ``RUN_DIR/actor.pt``, writes ``MODEL_REPO/NAME/V/{policy.onnx, metadata.json}`` after
verifying the ONNX graph against the torch actor, and prints the version directory.
"""

from __future__ import annotations

import argparse
import logging
import sys

from safepolicy.cli import HelpFormatter, report_error
from safepolicy.errors import SafepolicyError


def _version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer version") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive version (1, 2, ...)")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of ``safepolicy export``."""
    parser = argparse.ArgumentParser(
        prog="safepolicy export",
        formatter_class=HelpFormatter,
        description="Turn a trained actor (RUN_DIR/actor.pt) into a verified, versioned ONNX "
        "policy artifact MODEL_REPO/NAME/VERSION/{policy.onnx, metadata.json}.",
    )
    parser.add_argument(
        "--run", required=True, metavar="RUN_DIR", help="training run directory holding actor.pt"
    )
    parser.add_argument(
        "--repo",
        required=True,
        metavar="MODEL_REPO",
        help="model repository directory (created if missing)",
    )
    parser.add_argument("--name", required=True, help="policy name in the repository")
    parser.add_argument(
        "--version",
        type=_version,
        default=None,
        help="positive integer version (default: the next free one); "
        "an existing version is never overwritten",
    )
    parser.add_argument(
        "--print-path", action="store_true", help="print only the version directory (for scripts)"
    )
    # the old spelling; --quiet means "hide the progress bar" in every other command
    parser.add_argument("--quiet", dest="print_path", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the export; 0 on success, 1 when the export fails, 2 on bad arguments."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # torch is imported here, not at module level, so `safepolicy export --help` stays fast
    from safepolicy.export.onnx_export import export_run, max_abs

    try:
        version_dir = export_run(args.run, args.repo, args.name, version=args.version)
    except SafepolicyError as error:
        report_error("safepolicy export", error)
        return 1
    if args.print_path:
        print(version_dir)
        return 0
    from safepolicy.export.artifact import read_metadata

    metadata = read_metadata(version_dir)
    verification = metadata.verification or {}
    print(f"exported {metadata.name} version {metadata.version} -> {version_dir}")
    print(
        f"  task {metadata.task} ({metadata.env_id}), algorithm {metadata.algorithm}, "
        f"obs_dim {metadata.obs_dim}, action_dim {metadata.action_dim}, "
        f"opset {metadata.onnx_opset}"
    )
    print(
        f"  verified on {verification.get('observations')} {verification.get('source')} "
        f"observations: max |onnxruntime - torch| = "
        f"{max_abs(verification.get('max_abs_difference', {})):.2e}"
    )
    return 0
