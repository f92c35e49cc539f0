"""Packaging: the server runs without torch or the gyms, from the checkout and from a wheel.

The fast test starts the real server in a subprocess whose importer refuses torch, the gyms and
the other training-only packages, and calls Act on it. The slow ones build the wheel, install
``wheel[server]`` into a fresh virtual environment (pip, with the registries this machine
sees), and check that ``safepolicy serve`` from that environment answers Act, that neither torch
nor a gym got installed, and that nothing named training/export/server/audit lands at the top
of site-packages.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from safepolicy.server.client import PolicyClient
from safepolicy.server.testing import make_policy

ROOT = Path(__file__).resolve().parent.parent
TRAINING_ONLY = (
    "torch",
    "gymnasium",
    "gym",
    "safety_gymnasium",
    "bullet_safety_gym",
    "dsrl",
    "pybullet",
    "mujoco",
    "onnx",
    "h5py",
)
GENERIC_NAMES = ("training", "export", "server", "audit")
# The namespace rename (safepolicy/<name> links to the top-level folders) runs when the
# branches are merged; until then the wheel still installs the generic names, and this check
# must fail (strict), afterwards it must pass.
NAMESPACE_DONE = (ROOT / "safepolicy" / "server").exists()

BLOCKING_SERVER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the server must not import it")
            return None

    sys.meta_path.insert(0, Refuse())
    from safepolicy.server.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def act_through(
    command: list[str],
    repo: Path,
    env: dict[str, str] | None = None,
) -> np.ndarray:
    """Start a server with ``command`` on ``repo``, call Act once, stop it with SIGTERM."""
    port = _free_port()
    server = subprocess.Popen(
        [
            *command,
            "--repo",
            str(repo),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            "0",
            "--poll-interval-s",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise AssertionError(
                    f"server exited {server.returncode}: {server.stdout.read()}"  # type: ignore[union-attr]
                )
            try:
                with PolicyClient(f"127.0.0.1:{port}") as client:
                    result = client.act("ballrun", np.zeros((1, 8), dtype=np.float32))
                return np.asarray(result.actions)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
        assert server.returncode == 0, output


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    make_policy(root, "ballrun", 1, seed=1)
    return root


def test_the_server_answers_act_with_torch_and_the_gyms_blocked(repo: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    actions = act_through(
        [sys.executable, "-c", BLOCKING_SERVER, ",".join(TRAINING_ONLY)], repo, env
    )
    assert actions.shape == (1, 2) and np.all(np.abs(actions) <= 1.0)


# ---- from a built wheel, in a fresh virtual environment ----


@pytest.fixture(scope="module")
def server_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools writes build/ and *.egg-info into the tree it builds, and
    # an egg-info on PYTHONPATH would make pip think safepolicy is installed already
    source = work / "source"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
            "data",
            "runs",
            "models",
            "reports",
            "demo-output",
            "results",
        ),
    )
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(work / "dist"),
            str(source),
        ],
        check=True,
        timeout=300,
        env=clean,
    )
    (wheel,) = (work / "dist").glob("safepolicy-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=clean)
    subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "-q",
            "--disable-pip-version-check",
            f"{wheel}[server]",
        ],
        check=True,
        timeout=600,
        env=clean,
        cwd=work,
    )
    yield venv


def _site_packages(venv: Path) -> Path:
    (site,) = (venv / "lib").glob("python3*/site-packages")
    return site


@pytest.mark.slow
def test_the_wheel_with_the_server_extra_serves_without_torch_or_gyms(
    server_venv: Path, repo: Path
) -> None:
    freeze = subprocess.run(
        [str(server_venv / "bin" / "pip"), "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed = {entry["name"].lower().replace("_", "-") for entry in json.loads(freeze)}
    assert not installed & {
        "torch",
        "gymnasium",
        "gym",
        "safety-gymnasium",
        "bullet-safety-gym",
        "dsrl",
        "onnx",
        "h5py",
        "pybullet",
        "mujoco",
    }
    assert {"onnxruntime", "grpcio", "pydantic", "prometheus-client"} <= installed
    # a clean environment: no PYTHONPATH pointing back at the checkout
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{server_venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    actions = act_through([str(server_venv / "bin" / "safepolicy"), "serve"], repo, env)
    assert actions.shape == (1, 2)
    size = sum(p.stat().st_size for p in _site_packages(server_venv).rglob("*") if p.is_file())
    print(f"server extra site-packages: {size / 1e6:.0f} MB")
    assert size < 400e6


@pytest.mark.slow
@pytest.mark.xfail(
    not NAMESPACE_DONE, strict=True, reason="the namespace rename runs when the branches are merged"
)
def test_the_wheel_claims_no_generic_top_level_names(server_venv: Path) -> None:
    site = _site_packages(server_venv)
    claimed = [
        name for name in GENERIC_NAMES if (site / name).exists() or (site / f"{name}.py").exists()
    ]
    assert claimed == []
    assert (site / "safepolicy" / "server" / "app.py").is_file()
