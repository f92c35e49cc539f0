"""Staging directories a killed export left behind are removed by the next export of that
policy; a fresh one (a concurrent export still writing) is left alone."""

from __future__ import annotations

import os
import time

from export_fixtures import export_test_policy

from safepolicy.export.onnx_export import STALE_STAGING_S
from safepolicy.export.repository import TEMP_PREFIX, ModelRepository


def test_next_export_removes_stale_staging_and_keeps_fresh_staging(tmp_path):
    repo = tmp_path / "repo"
    export_test_policy(repo, name="alpha")
    stale = repo / "alpha" / f"{TEMP_PREFIX}killed"
    fresh = repo / "alpha" / f"{TEMP_PREFIX}running"
    for directory in (stale, fresh):
        directory.mkdir()
        (directory / "policy.onnx").write_bytes(b"half a model")
    long_ago = time.time() - STALE_STAGING_S - 60
    os.utime(stale, (long_ago, long_ago))
    export_test_policy(repo, name="alpha")
    assert not stale.exists()
    assert fresh.exists()
    assert ModelRepository(repo).versions("alpha") == [1, 2]
