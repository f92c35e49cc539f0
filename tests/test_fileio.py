"""Files the project writes honour the umask, and a repository written by one uid is
served by another; one unreadable version does not stop the rest of the repository."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from export_fixtures import export_test_policy

from safepolicy.datasets import Dataset, write_dataset
from safepolicy.fileio import atomic_write_text
from safepolicy.server import policies
from safepolicy.server.policies import PolicyStore


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_atomic_write_honours_the_umask_and_leaves_no_temporary(tmp_path):
    previous = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "sub" / "a.txt", "hello")
    finally:
        os.umask(previous)
    assert path.read_text() == "hello"
    assert _mode(path) == 0o640
    assert _mode(path.parent) == 0o750
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_atomic_write_failure_leaves_the_old_file(tmp_path):
    from safepolicy.fileio import atomic_write

    path = atomic_write_text(tmp_path / "a.txt", "old")

    def explode(temporary: Path) -> None:
        temporary.write_text("half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(path, explode)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_export_and_dataset_get_0644_and_0755_under_the_default_umask(tmp_path, umask_022):
    version_dir = export_test_policy(tmp_path / "repo")
    assert _mode(version_dir) == 0o755
    for path in version_dir.iterdir():
        assert _mode(path) == 0o644, path.name
    arrays: dict[str, Any] = {
        "observations": np.zeros((4, 3), np.float32),
        "actions": np.zeros((4, 2), np.float32),
        "rewards": np.zeros(4, np.float32),
        "costs": np.zeros(4, np.float32),
        "next_observations": np.zeros((4, 3), np.float32),
        "terminals": np.zeros(4, np.float32),
        "timeouts": np.array([0, 1, 0, 1], np.float32),
    }
    dataset_path = write_dataset(tmp_path / "d.hdf5", Dataset(**arrays, attrs={}))
    assert _mode(dataset_path) == 0o644


def test_one_unreadable_version_is_unavailable_and_the_rest_serves(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    export_test_policy(repo, name="alpha")
    export_test_policy(repo, name="beta")
    store = PolicyStore(repo)
    real_stat = os.stat

    def stat_as_another_uid(path, *args, **kwargs):  # what a 0700 dir of another uid does
        if "alpha" in str(path) and str(path).endswith((".onnx", ".json")):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat_as_another_uid)
    real_verdict = policies.read_audit_verdict

    def verdict(directory):
        if "alpha" in str(directory):
            raise PermissionError(13, "Permission denied", str(directory))
        return real_verdict(directory)

    monkeypatch.setattr(policies, "read_audit_verdict", verdict)
    report = store.reload()
    assert report.loaded == ["beta/1"]
    assert [(name, version) for name, version, _ in report.failed] == [("alpha", 1)]
    assert "cannot read the version" in report.failed[0][2]
    assert store.ready
    entries = {entry.name: entry for entry in store.entries()}
    assert entries["beta"].serving is not None
    assert not entries["alpha"].versions and "cannot read" in (entries["alpha"].problem or "")


def test_an_unlistable_policy_directory_does_not_fail_the_scan(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    export_test_policy(repo, name="alpha")
    export_test_policy(repo, name="beta")
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self.name == "alpha":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    store = PolicyStore(repo)
    report = store.reload()
    assert report.loaded == ["beta/1"]
    entries = {entry.name: entry for entry in store.entries()}
    assert "cannot list the versions" in (entries["alpha"].problem or "")
