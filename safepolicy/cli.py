"""The ``safepolicy`` console script: one entry point that dispatches to each package.

Each subcommand lives in its own package's ``cli`` module as ``main(argv) -> int`` and is
imported only when called, so ``safepolicy serve`` never imports torch or the gyms. This module
also holds what every subcommand's parser shares: the help formatter (defaults shown, plain
text), the ``--quiet`` flag, and the one-line report of a ``SafepolicyError``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from safepolicy.errors import SafepolicyError

COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("safepolicy.collect", "roll out behaviour policies into a DSRL-format dataset"),
    "dataset": ("safepolicy.dataset_cli", "validate a DSRL-format file and print its summary"),
    "tasks": ("safepolicy.tasks_cli", "list the known tasks with their environments and scores"),
    "train": ("safepolicy.training.cli", "train a policy offline (o3srl, bc-safe, td3bc-lag, ...)"),
    "export": (
        "safepolicy.export.cli",
        "turn a trained actor into a versioned ONNX policy artifact",
    ),
    "serve": ("safepolicy.server.cli", "serve policies over gRPC with Prometheus metrics"),
    "audit": (
        "safepolicy.audit.cli",
        "replay a policy in the safety gyms: does it keep its budget?",
    ),
    "demo": ("safepolicy.demo", "collect, train, export, audit and serve a policy end to end"),
}


class _ShowDefaults:
    """Append ``(default: X)`` to an option's help when X says something (not None/False/[]).

    Docstrings are reST, help is plain text: ````name```` is printed as ```name```.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if (
            help_text == argparse.SUPPRESS
            or "%(default)" in help_text
            or not action.option_strings
            or default is argparse.SUPPRESS
            or default is None
            or default is False
            or default == []
        ):
            return action.help
        return f"{help_text} (default: %(default)s)"

    def format_help(self) -> str:
        return super().format_help().replace("``", "`")  # type: ignore[misc]


class HelpFormatter(_ShowDefaults, argparse.HelpFormatter):
    """The help formatter of every ``safepolicy`` subcommand."""


class RawDescriptionHelpFormatter(_ShowDefaults, argparse.RawDescriptionHelpFormatter):
    """Like HelpFormatter, but keeps the description's own line breaks (a module docstring)."""


def add_quiet_flag(parser: argparse.ArgumentParser) -> None:
    """``--quiet``: hide progress bars (``--no-progress`` is kept as a hidden alias)."""
    parser.add_argument("--quiet", action="store_true", help="hide the progress bar")
    parser.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def report_error(prog: str, error: BaseException | str) -> None:
    """Print ``prog: error: message`` as one line on stderr (no traceback)."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: safepolicy [--version] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "Run `safepolicy COMMAND --help` for a command's options."]
    return "\n".join(lines)


def version_line() -> str:
    """``safepolicy X.Y.Z (code COMMIT)``."""
    from safepolicy.version import code_version, package_version

    return f"safepolicy {package_version()} (code {code_version()})"


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``safepolicy COMMAND ...`` to ``<package>.cli.main(rest)``."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(usage(), file=sys.stderr)
        return 2
    if args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    if args[0] in {"-V", "--version"}:
        print(version_line())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"safepolicy: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module: Any = importlib.import_module(COMMANDS[command][0])
    try:
        return int(module.main(rest) or 0)
    except SafepolicyError as error:  # a subcommand that did not catch its own
        report_error(f"safepolicy {command}", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
