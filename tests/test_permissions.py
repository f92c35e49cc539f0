"""A server under another uid, against real permissions (no patched ``os``): one version and one
policy directory it cannot read are unavailable, and the rest of the repository serves."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from export_fixtures import export_test_policy

from safepolicy.server.policies import PolicyStore

NOBODY = 65534


@pytest.fixture
def shared_repo() -> Iterator[Path]:
    """A repository nobody can reach (pytest's tmp_path is 0700 under root)."""
    base = Path(tempfile.mkdtemp(prefix="safepolicy-perm-"))
    os.chmod(base, 0o755)
    previous = os.umask(0o022)
    try:
        yield base / "repo"
    finally:
        os.umask(previous)
        shutil.rmtree(base, ignore_errors=True)


def reload_as_nobody(repo: Path) -> dict[str, object]:
    """``PolicyStore(repo).reload()`` in a forked child switched to uid nobody (a fork, since
    the venv's interpreter under /root cannot be started by nobody)."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            store = PolicyStore(repo)
            report = store.reload()
            answer: dict[str, object] = {
                "loaded": sorted(report.loaded),
                "failed": [f"{name}/{version}" for name, version, _ in report.failed],
                "problems": {entry.name: entry.problem for entry in store.entries()},
            }
        except BaseException as error:  # reported to the parent
            answer = {"error": repr(error)}
        finally:
            os.write(write_end, json.dumps(answer).encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(child, 0)
    return json.loads(text)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a reader as another uid")
def test_a_repository_written_by_root_is_served_by_another_uid(shared_repo):
    export_test_policy(shared_repo, name="alpha")  # written under umask 022
    outcome = reload_as_nobody(shared_repo)
    assert "error" not in outcome, outcome
    assert outcome["loaded"] == ["alpha/1"] and outcome["failed"] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a reader as another uid")
def test_unreadable_version_and_policy_of_another_uid_leave_the_rest_serving(shared_repo):
    export_test_policy(shared_repo, name="alpha")
    newest = export_test_policy(shared_repo, name="alpha")  # alpha/2
    export_test_policy(shared_repo, name="beta")
    export_test_policy(shared_repo, name="gamma")
    os.chmod(newest, 0o700)  # what a job under another uid with umask 077 leaves
    os.chmod(shared_repo / "gamma", 0o700)
    outcome = reload_as_nobody(shared_repo)
    assert "error" not in outcome, outcome
    # latest-only serving falls back to alpha/1 while alpha/2 cannot be read
    assert outcome["loaded"] == ["alpha/1", "beta/1"]
    assert outcome["failed"] == ["alpha/2"]
    problems = outcome["problems"]
    assert isinstance(problems, dict)
    assert problems["alpha"] is None and problems["beta"] is None
    assert "Permission denied" in problems["gamma"]
