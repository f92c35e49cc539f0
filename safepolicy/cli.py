"""The ``safepolicy`` console script: one entry point that dispatches to each package.

Each subcommand lives in its own package's ``cli`` module as ``main(argv) -> int`` and is
imported only when called, so ``safepolicy serve`` never imports torch or the gyms.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("safepolicy.collect", "roll out behaviour policies into a DSRL-format dataset"),
    "dataset": ("safepolicy.dataset_cli", "validate a DSRL-format file and print its summary"),
    "tasks": ("safepolicy.tasks_cli", "list the known tasks with their environments and scores"),
    "train": ("safepolicy.training.cli", "train a policy offline (o3srl, bc-safe, td3bc-lag, ...)"),
    "export": ("safepolicy.export.cli",
               "turn a trained actor into a versioned ONNX policy artifact"),
    "serve": ("safepolicy.server.cli", "serve policies over gRPC with Prometheus metrics"),
    "audit": ("safepolicy.audit.cli",
              "replay a policy in the safety gyms: does it keep its budget?"),
    "demo": ("safepolicy.demo", "collect, train, export, audit and serve a policy end to end"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: safepolicy COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "Run `safepolicy COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``safepolicy COMMAND ...`` to ``<package>.cli.main(rest)``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"safepolicy: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
