"""The test harness (tests and benchmarks): a server on a background thread, small real
policy artifacts, free ports. No production module imports this one.

:func:`make_policy` exports an untrained ``SquashedGaussianActor`` through the real exporter,
so it imports torch; it is imported lazily and never by the server runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np

from safepolicy.export.artifact import AuditVerdict, write_audit_verdict
from safepolicy.server.app import PolicyServer
from safepolicy.server.metrics import ServerMetrics
from safepolicy.server.policies import ReloadReport
from safepolicy.server.settings import ServerSettings


def make_policy(
    repo: Path,
    name: str = "ballrun",
    version: int | None = None,
    *,
    obs_dim: int = 8,
    action_dim: int = 2,
    hidden_sizes: tuple[int, ...] = (32, 32),
    cost_limit: float = 10.0,
    seed: int = 0,
    audit: Literal["PASS", "FAIL"] | None = None,
) -> Path:
    """Export a small untrained actor as ``repo/name/version``; optionally write an audit."""
    import torch  # lazily: the server never imports this module

    from safepolicy.export.onnx_export import export_actor
    from safepolicy.training.checkpoint import ActorMetadata
    from safepolicy.training.networks import SquashedGaussianActor

    torch.manual_seed(seed)
    # default bounds [-1, 1]: at the time of writing the exporter's verification rejected
    # actors with other bounds (reported to its owner)
    actor = SquashedGaussianActor(obs_dim, action_dim, hidden_sizes)
    metadata = ActorMetadata(
        task="BallRun",
        env_id="SafetyBallRun-v0",
        algorithm="bc-safe",
        cost_limit=cost_limit,
        seed=seed,
    )
    version_dir = export_actor(actor, metadata, repo, name, version)
    if audit is not None:
        write_audit_verdict(
            version_dir,
            AuditVerdict(
                verdict=audit,
                task="BallRun",
                cost_limit=cost_limit,
                confidence=0.95,
                episodes=10,
                mean_cost=1.0,
                cost_upper_bound=2.0,
                violation_rate=0.0,
            ),
        )
    return version_dir


def observations(batch: int, obs_dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, obs_dim)).astype(np.float32)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for metrics and subprocess servers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def add_version(source: Path, repo: Path, name: str, version: int) -> Path:
    """Copy a version directory into ``repo/name/version`` atomically (copy, then rename)."""
    import shutil

    target = repo / name / str(version)
    staging = repo / name / f".tmp-copy-{version}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, staging)
    staging.rename(target)
    return target


class ServerThread:
    """A :class:`PolicyServer` on its own event loop in a background thread (tests, benchmarks).

    ``with ServerThread(settings) as running: ... running.port ...``; leaving the block stops
    the server gracefully.
    """

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics | None = None) -> None:
        self.server = PolicyServer(settings, metrics)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="policy-server", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as error:
            self._error = error
            self._started.set()
            return
        self._started.set()
        self.loop.run_until_complete(self.server.wait())

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"server did not start within {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def call(self, coroutine: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def reload(self) -> ReloadReport:
        return self.call(self.server.reload())  # type: ignore[no-any-return]

    def stop(self, grace: float = 5.0) -> None:
        if not self._thread.is_alive():
            return

        async def stop() -> None:
            await self.server.shutdown(grace)

        with contextlib.suppress(Exception):
            self.call(stop(), timeout=grace + 30)
        self._thread.join(grace + 30)
        if not self._thread.is_alive():
            self.loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
