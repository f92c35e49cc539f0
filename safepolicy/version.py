"""Which code is running: the installed package version and the git commit of the checkout.

``code_version()`` is what run directories, exported artifacts and audit reports record, so the
same checkout gives the same answer everywhere: the short commit, ``+dirty`` when tracked files
are modified, or ``safepolicy X.Y.Z`` outside a git checkout (an installed wheel).
"""

from __future__ import annotations

import functools
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def package_version() -> str:
    """The installed distribution's version, or ``0+unknown`` when it is not installed."""
    try:
        return version("safepolicy")
    except PackageNotFoundError:
        return "0+unknown"


@functools.cache
def code_version() -> str:
    """The checkout's short commit (``+dirty`` when modified), else ``safepolicy VERSION``."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=_ROOT, capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return f"safepolicy {package_version()}"
    return commit + ("+dirty" if dirty else "")
