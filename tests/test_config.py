"""Bad settings are refused where they are set: one line naming the field and what it allows."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_training_runs import SMALL

from safepolicy.training.cli import main
from safepolicy.training.config import ConfigError, RunConfig, set_field


def train_cli(
    dataset: Path, out: Path, *extra: str, task: str = "BallRun", cost_limit: str = "10"
) -> list[str]:
    settings = [item for name, value in SMALL.items() for item in ("--set", f"{name}={value}")]
    return [
        "o3srl",
        "--task",
        task,
        "--dataset",
        str(dataset),
        "--cost-limit",
        cost_limit,
        "--out",
        str(out),
        "--steps",
        "20",
        "--device",
        "cpu",
        "--no-progress",
        *settings,
        *extra,
    ]


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "Traceback" not in error and len(error.splitlines()) == 1, error
    assert error.startswith("safepolicy train: error: ")
    return error


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("run.gamma=0", "run.gamma=0: gamma='0' is not allowed: gamma must be float in (0.0, 1.0]"),
        ("run.gamma=1.5", "gamma must be float in (0.0, 1.0]"),
        ("run.gamma=nan", "gamma must be float in (0.0, 1.0]"),
        ("td3bc.tau=0", "td3bc.tau must be float in (0.0, 1.0]"),
        ("td3bc.tau=1.01", "td3bc.tau must be float in (0.0, 1.0]"),
        ("td3bc.actor_lr=0", "td3bc.actor_lr must be float > 0.0"),
        ("iql.critic_lr=-1e-3", "iql.critic_lr must be float > 0.0"),
        ("oracle=sac", "oracle must be one of td3bc, iql"),
        ("run.precision=fp16", "precision must be one of fp32, bf16-mixed"),
        ("run.batch_size=0", "batch_size must be int > 0"),
        ("num_arms=two", "num_arms must be int >= 2"),
        ("run.hidden_sizes=64,x", "hidden_sizes must be a comma-separated list"),
        ("td3bc.alpah=2", "unknown setting 'td3bc.alpah'; known here: actor_lr, alpha,"),
    ],
)
def test_bad_set_values_name_the_field_and_its_range(
    ballrun_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    setting: str,
    expected: str,
) -> None:
    error = one_line_error(capsys, train_cli(ballrun_dataset, tmp_path / "run", "--set", setting))
    assert expected in error
    assert not (tmp_path / "run").exists()  # nothing written for a refused run


@pytest.mark.parametrize("limit", ["-1", "nan", "inf"])
def test_cost_limit_must_be_finite_and_non_negative(
    ballrun_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    error = one_line_error(capsys, train_cli(ballrun_dataset, tmp_path / "run", cost_limit=limit))
    assert "--cost-limit must be a finite number >= 0" in error


def test_a_dataset_of_another_task_is_refused(
    ballrun_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    error = one_line_error(capsys, train_cli(ballrun_dataset, tmp_path / "run", task="CarCircle"))
    assert "recorded for task 'BallRun', not 'CarCircle'; pass --task BallRun" in error


def test_config_file_sets_values_and_is_checked_like_set(
    ballrun_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("num_arms: 3\ntd3bc:\n  alpha: 2.0\nrun:\n  eval_episodes: 0\n")
    assert main(train_cli(ballrun_dataset, tmp_path / "a", "--config", str(good))) == 0
    config = (tmp_path / "a" / "config.json").read_text()
    assert '"num_arms": 3' in config and '"alpha": 2.0' in config
    bad = tmp_path / "bad.yaml"
    bad.write_text("td3bc:\n  tau: 0\n")
    error = one_line_error(capsys, train_cli(ballrun_dataset, tmp_path / "b", "--config", str(bad)))
    assert f"{bad}: td3bc.tau=0" in error and "td3bc.tau must be float in (0.0, 1.0]" in error
    broken = tmp_path / "broken.yaml"
    broken.write_text("td3bc: [\n")
    assert "not valid YAML at line" in one_line_error(
        capsys, train_cli(ballrun_dataset, tmp_path / "c", "--config", str(broken))
    )
    assert "cannot read it" in one_line_error(
        capsys, train_cli(ballrun_dataset, tmp_path / "d", "--config", str(tmp_path / "none"))
    )


def test_resume_with_changed_settings_names_the_differing_keys(
    ballrun_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    assert main(train_cli(ballrun_dataset, run)) == 0
    capsys.readouterr()
    error = one_line_error(
        capsys, train_cli(ballrun_dataset, run, "--resume", "--set", "num_arms=3", cost_limit="12")
    )
    assert "differing: algorithm_config.num_arms, cost_limit" in error


def test_set_field_checks_at_assignment() -> None:
    run = RunConfig()
    set_field(run, "gamma", "1")
    assert run.gamma == 1.0
    with pytest.raises(ConfigError, match=r"gamma must be float in \(0.0, 1.0\]"):
        set_field(run, "gamma", -0.5)
    assert run.gamma == 1.0  # a refused value leaves the old one
