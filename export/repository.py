"""The model repository: ``MODEL_REPO/NAME/VERSION/`` directories of policy artifacts.

Versions are positive integers written as plain decimals (``1``, ``2``, ...). The exporter
builds a version in a hidden temporary directory inside ``MODEL_REPO/NAME`` and renames it into
place, so a directory with an integer name is always complete; hidden directories, temporary
directories and anything not named by an integer are ignored here.

This module imports neither torch nor the gyms: the server imports it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from safepolicy.export.artifact import ArtifactError, OnnxPolicy, load_policy

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
TEMP_PREFIX = ".tmp-export-"


class RepositoryError(ArtifactError):
    """A model repository, policy name or version that cannot be used."""


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid policy name (letters, digits, ``.``, ``_``, ``-``)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise RepositoryError(
            f"invalid policy name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_version(version: int) -> int:
    """Return ``version`` if it is a positive integer, else :class:`RepositoryError`."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RepositoryError(
            f"invalid version {version!r}: versions are positive integers (1, 2, ...)"
        )
    return version


def parse_version(text: str) -> int | None:
    """The version a directory name stands for, or ``None`` if it is not a version directory."""
    if not text.isdigit() or not text.isascii() or text != str(int(text)) or int(text) < 1:
        return None
    return int(text)


class ModelRepository:
    """A directory of named, integer-versioned policy artifacts (read side).

    The root need not exist yet (it then holds no policies), but it must not be a file.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise RepositoryError(
                f"{self.root}: model repository path is a file; pass a "
                "directory (it is created on first export)"
            )

    def __repr__(self) -> str:
        return f"ModelRepository({str(self.root)!r})"

    def names(self) -> list[str]:
        """Policy names that have at least one version, sorted."""
        if not self.root.is_dir():
            return []
        try:
            entries = list(self.root.iterdir())
        except OSError as error:
            raise RepositoryError(
                f"{self.root}: cannot list the model repository "
                f"({error.strerror or error}); make it readable by this "
                "user"
            ) from error
        return sorted(
            entry.name
            for entry in entries
            if entry.is_dir()
            and NAME_PATTERN.fullmatch(entry.name)
            and self._listable_with_versions(entry.name)
        )

    def _listable_with_versions(self, name: str) -> bool:
        # a directory this user cannot list is still a policy: it shows as unavailable, with
        # the reason, instead of vanishing or failing the whole scan
        try:
            return bool(self.versions(name))
        except RepositoryError:
            return True

    def versions(self, name: str) -> list[int]:
        """Integer versions of ``name``, ascending (empty if the name is unknown)."""
        directory = self.root / check_name(name)
        if not directory.is_dir():
            return []
        try:
            entries = list(directory.iterdir())
        except OSError as error:
            raise RepositoryError(
                f"{directory}: cannot list the versions of {name!r} "
                f"({error.strerror or error}); make it readable by the "
                "server's user"
            ) from error
        found = (parse_version(entry.name) for entry in entries if entry.is_dir())
        return sorted(version for version in found if version is not None)

    def latest_version(self, name: str) -> int | None:
        """The highest version of ``name``, or ``None`` when it has none."""
        versions = self.versions(name)
        return versions[-1] if versions else None

    def next_version(self, name: str) -> int:
        """The version a new export of ``name`` gets by default: one past the highest."""
        latest = self.latest_version(name)
        return 1 if latest is None else latest + 1

    def version_dir(self, name: str, version: int | None = None) -> Path:
        """The directory of ``name`` at ``version`` (latest when ``None``); it must exist."""
        if version is None:
            version = self.latest_version(name)
            if version is None:
                known = ", ".join(self.names()) or "none"
                raise RepositoryError(
                    f"{self.root}: no versions of policy {name!r} (policies: "
                    f"{known}); export one with `safepolicy export`"
                )
        path = self.path_for(name, version)
        if not path.is_dir():
            raise RepositoryError(
                f"{path}: no version {version} of policy {name!r} (versions: "
                f"{self.versions(name) or 'none'})"
            )
        return path

    def path_for(self, name: str, version: int) -> Path:
        """Where ``name`` at ``version`` lives, whether or not it exists yet."""
        return self.root / check_name(name) / str(check_version(version))

    def load(self, name: str, version: int | None = None, **kwargs: object) -> OnnxPolicy:
        """:func:`export.artifact.load_policy` on ``version_dir(name, version)``."""
        return load_policy(self.version_dir(name, version), **kwargs)  # type: ignore[arg-type]
