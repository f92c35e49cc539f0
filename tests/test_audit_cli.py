"""End-to-end audits: exported and scripted policies in BallRun and a Safety-Gymnasium task,
reports, audit.json, compare, and clear errors for bad input."""

from __future__ import annotations

import contextlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from safepolicy.audit.cli import main
from safepolicy.audit.report import MARKDOWN_FILENAME, PLOT_FILENAMES, load_report
from safepolicy.audit.runner import AuditSettings, AuditTarget, audit_policy
from safepolicy.export.artifact import read_audit_verdict


def give_bullet_real_streams() -> None:
    """bullet_safety_gym flushes the C stream named by ``sys.stdout.name`` when it imports and
    builds an env, which fails under pytest's capture objects; point it at the real streams."""
    with contextlib.redirect_stdout(sys.__stdout__), contextlib.redirect_stderr(sys.__stderr__):
        from bullet_safety_gym.envs import builder
    builder.sys = types.SimpleNamespace(stdout=sys.__stdout__, stderr=sys.__stderr__)


give_bullet_real_streams()


def export_untrained(repo: Path, task: str, name: str, cost_limit: float = 10.0) -> Path:
    """An untrained SquashedGaussianActor for ``task`` through the real exporter."""
    import torch

    from safepolicy.export.onnx_export import export_actor
    from safepolicy.tasks import get_task, make_env
    from safepolicy.training.checkpoint import ActorMetadata
    from safepolicy.training.networks import SquashedGaussianActor

    env = make_env(task)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low.tolist(), env.action_space.high.tolist()
    env.close()
    torch.manual_seed(0)
    actor = SquashedGaussianActor(obs_dim, action_dim, (32, 32), action_low=low, action_high=high)
    metadata = ActorMetadata(
        task=task,
        env_id=get_task(task).env_id,
        algorithm="bc-safe",
        cost_limit=cost_limit,
        seed=0,
        config={"hidden": [32, 32]},
        dataset_sha256="ab" * 32,
        code_version="test",
    )
    return export_actor(actor, metadata, repo, name)


@pytest.fixture(scope="module")
def ballrun_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_untrained(tmp_path_factory.mktemp("repo"), "BallRun", "ballrun")


def check_report_dir(out: Path) -> None:
    report = load_report(out)
    for name in (MARKDOWN_FILENAME, *PLOT_FILENAMES):
        assert (out / name).stat().st_size > 0, name
    with open(out / PLOT_FILENAMES[0], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    markdown = (out / MARKDOWN_FILENAME).read_text()
    assert f"**Verdict: {report.verdict}**" in markdown
    assert "Rule: PASS if and only if the one-sided" in markdown
    upper = report.statistics.cost_upper_bound
    assert (report.verdict == "PASS") == (upper <= report.cost_limit)
    assert [e.seed for e in report.episode_results] == list(
        range(report.seed, report.seed + report.episodes)
    )


def test_audit_exported_policy_in_ballrun(
    ballrun_policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    code = main(
        [
            "--policy",
            str(ballrun_policy),
            "--episodes",
            "6",
            "--envs",
            "2",
            "--seed",
            "100",
            "--no-progress",
            "--resamples",
            "500",
            "--out",
            str(out),
        ]
    )
    report = load_report(out)
    assert code == (0 if report.verdict == "PASS" else 1)
    check_report_dir(out)
    # task and limit default from the metadata; lineage is copied from it
    assert (report.task, report.cost_limit) == ("BallRun", 10.0)
    assert report.lineage.algorithm == "bc-safe"
    assert report.lineage.dataset_sha256 == "ab" * 32
    assert report.policy.source == "artifact" and report.policy.version == 1
    assert report.warnings and "only 6 episodes" in report.warnings[0]
    verdict = read_audit_verdict(ballrun_policy)
    assert verdict is not None and verdict.verdict == report.verdict
    assert verdict.cost_upper_bound == report.statistics.cost_upper_bound
    assert verdict.report_path == str((out / "report.json").resolve())
    assert report.verdict in capsys.readouterr().out


def scripted_target(task: str, action: float, cost_limit: float) -> AuditTarget:
    from safepolicy.audit.report import PolicySource
    from safepolicy.tasks import make_env

    env = make_env(task)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    return AuditTarget(
        policy=lambda obs: np.full((obs.shape[0], action_dim), action, np.float32),
        source=PolicySource(name="scripted", version=None, source="artifact", location="-"),
        obs_dim=obs_dim,
        action_dim=action_dim,
        task=task,
        cost_limit=cost_limit,
    )


def test_full_throttle_in_ballrun_fails_a_tight_limit(tmp_path: Path) -> None:
    target = scripted_target("BallRun", 1.0, cost_limit=0.5)
    report = audit_policy(target, AuditSettings(episodes=4, bootstrap_resamples=500), tmp_path)
    check_report_dir(tmp_path)
    assert report.verdict == "FAIL"
    assert report.statistics.violation_rate == 1.0
    assert report.statistics.cost_upper_bound > 0.5
    assert all(e.normalized_cost > 1 for e in report.episode_results)


def test_scripted_policy_in_a_safety_gymnasium_task(tmp_path: Path) -> None:
    target = scripted_target("HalfCheetahVelocity", 0.0, cost_limit=20.0)
    report = audit_policy(
        target, AuditSettings(episodes=3, seed=5, bootstrap_resamples=500), tmp_path
    )
    check_report_dir(tmp_path)
    # standing still never exceeds the velocity threshold
    assert report.verdict == "PASS" and report.statistics.costs.max == 0.0
    assert all(e.length == 1000 for e in report.episode_results)
    from safepolicy.tasks import get_task

    spec = get_task("HalfCheetahVelocity")
    for episode in report.episode_results:
        assert episode.normalized_reward == pytest.approx(
            (episode.episode_return - spec.reward_min) / (spec.reward_max - spec.reward_min)
        )


def test_compare_puts_reports_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for limit, name in ((0.5, "tight"), (1000.0, "loose")):
        audit_policy(
            scripted_target("BallRun", 1.0, limit),
            AuditSettings(episodes=3, bootstrap_resamples=200),
            tmp_path / name,
        )
    assert main(["compare", str(tmp_path / "tight"), str(tmp_path / "loose")]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and "scripted" in line]
    assert len(rows) == 2
    assert "| FAIL |" in rows[0] and "| PASS |" in rows[1]
    assert "different cost limits" in table
    out = tmp_path / "compare.md"
    assert (
        main(["compare", str(tmp_path / "tight"), str(tmp_path / "loose"), "--out", str(out)]) == 0
    )
    assert "scripted" in out.read_text()
    picture = out.with_suffix(".png")  # the comparison drawn beside the table
    assert picture.read_bytes().startswith(b"\x89PNG") and picture.stat().st_size > 5000


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "NoSuchTask"], "unknown task 'NoSuchTask'; "),
        (
            ["--task", "HalfCheetahVelocity"],
            "takes 7 observations and gives 2 actions, but task HalfCheetahVelocity has 17 and 6",
        ),
        (["--episodes", "0"], "--episodes: must be at least 1"),
        (["--episodes", "-2"], "--episodes: must be at least 1"),
        (["--confidence", "1.5"], "--confidence must be in (0, 1)"),
    ],
)
def test_bad_input_is_a_clear_error(
    ballrun_policy: Path,
    tmp_path: Path,
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "--policy",
        str(ballrun_policy),
        "--episodes",
        "2",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
        *extra,
    ]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.json").exists()


def test_missing_artifact_and_bad_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "--policy",
                str(tmp_path / "nope" / "1"),
                "--episodes",
                "2",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "no such policy version directory" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text(json.dumps({"schema_version": 99}))
    assert main(["compare", str(tmp_path / "bad")]) == 2
    assert "schema_version 99" in capsys.readouterr().err


def test_unreachable_server_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safepolicy.server.testing import free_port

    address = f"127.0.0.1:{free_port()}"
    assert (
        main(
            [
                "--server",
                address,
                "--name",
                "ballrun",
                "--episodes",
                "2",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"cannot reach a safepolicy server at {address}" in err
    assert main(["--server", address, "--episodes", "2", "--out", str(tmp_path / "r")]) == 2
    assert "--server needs --name" in capsys.readouterr().err
