"""Atomic file writes that honour the process umask.

``tempfile.mkstemp`` creates files 0600 and ``mkdtemp`` directories 0700 whatever the umask,
so a server under another uid could not read what a training job wrote. Every writer in the
project goes through these helpers instead: files end up ``0666 & ~umask`` and directories
``0777 & ~umask`` (0644 / 0755 under the default umask 022), are fsynced, then renamed into
place, so readers see the old file or the whole new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "current_umask",
    "default_dir_mode",
    "default_file_mode",
    "fsync_directory",
    "make_staging_dir",
]


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def default_dir_mode() -> int:
    """The mode ``mkdir()`` would give a new directory: ``0o777 & ~umask``."""
    return 0o777 & ~current_umask()


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Flush a directory's entries, so a rename into it survives a crash."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Have ``write(temporary_path)`` fill a temporary file beside ``path``, then give it the
    umask's mode, fsync it and rename it over ``path``; on any failure the temporary is removed
    and ``path`` is untouched. Missing parent directories are created with the umask's mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    temporary = Path(name)
    try:
        write(temporary)
        os.chmod(temporary, default_file_mode())
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on a directory
        fsync_directory(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda temporary: temporary.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def make_staging_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """A fresh directory under ``parent`` with the umask's mode (``mkdtemp`` alone would make
    it 0700, unreadable by a server under another uid). The caller fills it and renames it
    into place, or removes it."""
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(staging, default_dir_mode())
    return staging
