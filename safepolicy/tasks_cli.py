"""``safepolicy tasks``: the task registry as a table."""

from __future__ import annotations

import argparse
import sys

from safepolicy.cli import HelpFormatter
from safepolicy.tasks import registry


def format_table() -> str:
    """One row per task: family, environment id, episode length, DSRL reference scores, limits."""
    header = (
        "task",
        "family",
        "env_id",
        "steps",
        "reward_min",
        "reward_max",
        "cost_max",
        "cost_limits",
    )
    rows = [header] + [
        (
            spec.name,
            spec.family,
            spec.env_id,
            str(spec.max_episode_steps),
            f"{spec.reward_min:.2f}",
            f"{spec.reward_max:.2f}",
            f"{spec.cost_max:g}",
            ",".join(f"{limit:g}" for limit in spec.default_cost_limits),
        )
        for spec in registry().values()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = {3, 4, 5, 6}
    lines = [
        "  ".join(
            cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``safepolicy tasks``."""
    parser = argparse.ArgumentParser(
        prog="safepolicy tasks",
        formatter_class=HelpFormatter,
        description="List the known tasks with their environments and DSRL reference scores.",
    )
    try:
        parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    print(format_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
