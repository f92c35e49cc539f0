"""A run directory that goes away, or a resume with nothing to resume: clear errors, no restart."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from test_stages import toy_registered, toy_request  # noqa: F401
from training_toys import at_log_row

from safepolicy.training.loop import TrainingError, train


def test_resume_without_a_checkpoint_is_refused_not_restarted(
    ballrun_dataset: Path, tmp_path: Path
) -> None:
    run = train(toy_request(ballrun_dataset, tmp_path / "run"))
    (run / "checkpoints" / "last.pt").unlink()
    with pytest.raises(TrainingError, match="no checkpoint to resume from"):
        train(toy_request(ballrun_dataset, run, resume=True))


def test_deleting_the_run_directory_mid_run_stops_with_a_clear_error(
    ballrun_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "doomed"
    at_log_row(monkeypatch, 5, lambda: shutil.rmtree(out))  # an operator removes it mid-run
    with pytest.raises(TrainingError, match="doomed"):
        train(toy_request(ballrun_dataset, out))
    assert not out.exists()  # nothing quietly recreated it


def test_checkpoints_and_actor_honour_the_umask(ballrun_dataset: Path, tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        run = train(toy_request(ballrun_dataset, tmp_path / "run"))
    finally:
        os.umask(previous)
    for path in (run / "actor.pt", run / "checkpoints" / "last.pt", run / "config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
