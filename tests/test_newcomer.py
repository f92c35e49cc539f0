"""A newcomer's first hour, scripted: the README's commands with small numbers, and the usual
mistakes.

Each command runs as a real subprocess (``python -m safepolicy ...``), so what is checked is
what a person sees: stderr carries only the commands' own messages, progress bars and server log
lines (no third-party notices, no Python warnings), and every bad input exits non-zero with one
line that names the problem and the fix, and no traceback.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

# what the commands themselves write to stderr
TQDM_LINE = re.compile(r"^[^|]*\d+%\|[^|]*\|")  # "collect BallRun: 100%|####| 4/4 [...]"
LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d [\d:,]+ (DEBUG|INFO|WARNING) (safepolicy|server)\S*\[\d+\]: "
)
OWN_PREFIXES = ("warning: ", "safepolicy ")


def safepolicy(
    *args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m safepolicy ARGS`` from ``cwd`` with this checkout on the path."""
    return subprocess.run(
        [sys.executable, "-m", "safepolicy", *args],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("SAFEPOLICY_SERVER_REPO", None)
    env["COLUMNS"] = "100"  # argparse wraps help to the terminal; keep it the same everywhere
    return env


def foreign_stderr(stderr: str) -> list[str]:
    """The stderr lines that are not the commands' own output (tqdm redraws split on \\r)."""
    lines = [part.strip() for line in stderr.splitlines() for part in line.split("\r")]
    return [
        line
        for line in lines
        if line
        and not (TQDM_LINE.match(line) or LOG_LINE.match(line) or line.startswith(OWN_PREFIXES))
    ]


def one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The single stderr line of a failed command, checked for the expected words."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


# --- bad input: one line naming the problem and the fix, non-zero, no traceback ---------------


def test_importing_gymnasium_through_the_project_prints_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import safepolicy.tasks, gymnasium"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # the gymnasium-robotics "AdroitHand..." notice is gone


def test_safepolicy_alone_prints_usage_and_exits_2(tmp_path: Path) -> None:
    result = safepolicy(cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: safepolicy") and result.stdout == ""


def test_version_names_the_package_and_the_commit(tmp_path: Path) -> None:
    result = safepolicy("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert re.fullmatch(r"safepolicy \S+ \(code \S+\)\n", result.stdout), result.stdout


def test_help_shows_defaults_and_required_flags_without_rest_markup(tmp_path: Path) -> None:
    train = safepolicy("train", "--help", cwd=tmp_path)
    assert train.returncode == 0 and train.stderr == ""
    # --dataset is optional: sac-lag learns online without one
    assert re.search(
        r"usage: safepolicy train \[-h\] --task TASK \[--dataset FILE.h5\]"
        r"\s+--cost-limit",
        train.stdout,
    )
    assert "(default: 0)" in train.stdout and "``" not in train.stdout
    serve = safepolicy("serve", "--help", cwd=tmp_path)
    assert "(default: 9464)" in serve.stdout and "``" not in serve.stdout
    config = safepolicy("train", "o3srl", "--print-config", cwd=tmp_path)
    assert config.returncode == 0 and "paper: paper" not in config.stdout


def test_an_unknown_task_suggests_the_closest(tmp_path: Path) -> None:
    result = safepolicy("collect", "--task", "ballrn", "--out", "x.h5", "--quiet", cwd=tmp_path)
    one_line_error(result, "unknown task 'ballrn'", "did you mean BallRun?", "safepolicy tasks")
    assert not (tmp_path / "x.h5").exists()


def test_train_on_a_missing_dataset_says_how_to_make_one(tmp_path: Path) -> None:
    result = safepolicy(
        "train",
        "bc-safe",
        "--task",
        "BallRun",
        "--dataset",
        "nope.h5",
        "--cost-limit",
        "10",
        "--out",
        "run",
        cwd=tmp_path,
    )
    one_line_error(result, "nope.h5", "safepolicy collect")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ["--repo is required", "SAFEPOLICY_SERVER_REPO"]),
        (
            ["--repo", "nowhere"],
            ["nowhere does not exist", "safepolicy export", "--allow-empty-repo"],
        ),
        (["--repo", "empty"], ["empty holds no policy", "--allow-empty-repo"]),
        (
            ["--repo", "empty", "--allow-empty-repo", "--log-level", "foo"],
            ["--log-level", "'foo' is not a logging level", "INFO"],
        ),
        (
            [
                "--repo",
                "empty",
                "--allow-empty-repo",
                "--tls-cert-file",
                "bad.pem",
                "--tls-key-file",
                "bad.pem",
            ],
            ["bad.pem", "not a PEM certificate", "--tls-cert-file"],
        ),
    ],
    ids=["no-repo", "missing-repo", "empty-repo", "log-level", "bad-pem"],
)
def test_serve_refuses_bad_settings_in_one_line(
    tmp_path: Path, args: list[str], expected: list[str]
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    one_line_error(safepolicy("serve", *args, cwd=tmp_path, timeout=60), *expected)


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_serve_names_a_taken_port(tmp_path: Path, listening: int, flag: str) -> None:
    (tmp_path / "empty").mkdir()
    other = "--metrics-port" if flag == "--port" else "--port"
    result = safepolicy(
        "serve",
        "--repo",
        "empty",
        "--allow-empty-repo",
        flag,
        str(listening),
        other,
        "0",
        cwd=tmp_path,
        timeout=60,
    )
    one_line_error(result, f"port {listening}", "already in use", flag)


# --- the walk: README commands with small numbers (about 17 s; under the ~20 s slow mark) ----


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_newcomer_walks_the_readme_with_clean_stderr(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = safepolicy(*args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
        assert foreign_stderr(result.stderr) == [], (args, result.stderr)
        return result

    run("--version")
    assert "SafetyBallRun-v0" in run("tasks").stdout
    run("collect", "--task", "BallRun", "--episodes", "4", "--out", "data/BallRun.h5")
    train = run(
        "train",
        "bc-safe",
        "--task",
        "OfflineBallRun-v0",
        "--dataset",
        "data/BallRun.h5",
        "--cost-limit",
        "10",
        "--steps",
        "40",
        "--out",
        "runs/ballrun",
        "--device",
        "cpu",
        "--set",
        "run.hidden_sizes=32,32",
        "--set",
        "run.batch_size=64",
        "--set",
        "run.eval_episodes=2",
        "--set",
        "run.log_every=10",
    )
    summary = train.stdout.strip().splitlines()
    assert len(summary) == 1 and "evaluation over 2 episodes" in summary[0], train.stdout
    assert "BallRun episodes" in train.stderr  # the final evaluation's progress bar
    assert (tmp_path / "runs/ballrun/curves.png").stat().st_size > 0
    steps = (tmp_path / "runs/ballrun/scalars.csv").read_text().splitlines()[1].split(",")[0]
    assert steps == "10"
    export = run(
        "export", "--run", "runs/ballrun", "--repo", "models", "--name", "ballrun", "--print-path"
    )
    assert export.stdout.strip() == "models/ballrun/1"
    audit = safepolicy(
        "audit",
        "--policy",
        "models/ballrun/1",
        "--episodes",
        "4",
        "--out",
        "reports/ballrun-1",
        cwd=tmp_path,
    )
    assert audit.returncode in (0, 1), audit.stderr  # PASS or FAIL: both are results
    assert foreign_stderr(audit.stderr) == [], audit.stderr
    assert (tmp_path / "models/ballrun/1/audit.json").exists()  # what --require-audit reads

    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "safepolicy",
            "serve",
            "--repo",
            "models",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            "0",
            "--poll-interval-s",
            "0",
        ],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        from safepolicy.server.client import PolicyClient

        deadline = time.monotonic() + 60
        with PolicyClient(f"127.0.0.1:{port}", timeout=2) as client:
            while True:
                assert server.poll() is None, server.communicate()
                try:
                    result = client.act("ballrun", np.zeros(7, np.float32))
                    break
                except Exception:
                    assert time.monotonic() < deadline, "the server did not come up in 60 s"
                    time.sleep(0.3)
        assert result.actions.shape == (2,) and result.version == 1
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=60)
    assert server.returncode == 0, stderr
    assert foreign_stderr(stderr) == [], stderr
