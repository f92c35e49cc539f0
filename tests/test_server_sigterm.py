"""SIGTERM during load: a server subprocess drains in-flight calls and exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from safepolicy.server.client import PolicyClient
from safepolicy.server.testing import free_port, make_policy, observations

ROOT = Path(__file__).resolve().parent.parent


def wait_serving(target: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, "the server process exited during start-up"
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"server at {target} never became SERVING")


def test_sigterm_serves_through_the_drain_delay_then_refuses_and_exits_when_drained(
    tmp_path: Path,
) -> None:
    """Kubernetes order: NOT_SERVING at once while calls are still answered for the drain
    delay, then new calls UNAVAILABLE and open streams ended with UNAVAILABLE, and the process
    exits as soon as that is done, long before the grace."""
    repo = tmp_path / "repo"
    make_policy(repo, "ballrun", 1)
    port = free_port()
    target = f"127.0.0.1:{port}"
    grace, drain_delay = 20.0, 1.0
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "safepolicy.server",
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
            "--grace-s",
            str(grace),
            "--drain-delay-s",
            str(drain_delay),
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    signalled = 0.0
    stream_answers: list[float] = []
    stream_codes: list[grpc.StatusCode] = []
    unary_ok: list[float] = []
    unary_codes: list[grpc.StatusCode] = []
    health_after: list[int] = []
    try:
        wait_serving(target, process)

        def control_loop() -> None:
            try:
                with PolicyClient(target) as client, client.stream("ballrun") as loop:
                    for row in observations(10_000):
                        loop.act(row)
                        stream_answers.append(time.monotonic())
                        time.sleep(0.02)
            except grpc.RpcError as error:
                stream_codes.append(error.code())

        def unary_client() -> None:
            with PolicyClient(target) as client:
                for _ in range(100_000):
                    try:
                        client.act("ballrun", observations(1))
                        unary_ok.append(time.monotonic())
                    except grpc.RpcError as error:
                        unary_codes.append(error.code())
                        return
                    time.sleep(0.005)

        threads = [threading.Thread(target=control_loop) for _ in range(3)]
        threads += [threading.Thread(target=unary_client) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        assert stream_answers and unary_ok
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(drain_delay / 3)
        with grpc.insecure_channel(target) as channel:
            health_after.append(
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(), timeout=2)
                .status
            )
        for thread in threads:
            thread.join(30)
        assert process.wait(timeout=30) == 0
        exited = time.monotonic()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert health_after == [health_pb2.HealthCheckResponse.NOT_SERVING]
    # calls kept being answered during the drain delay, refused only after it
    assert max(unary_ok) - signalled > drain_delay * 0.7
    assert max(stream_answers) - signalled > drain_delay * 0.7
    assert unary_codes and set(unary_codes) == {grpc.StatusCode.UNAVAILABLE}
    # every open stream was ended with a status, not cut at the grace
    assert stream_codes == [grpc.StatusCode.UNAVAILABLE] * 3
    assert exited - signalled < drain_delay + 5 < grace


@pytest.mark.parametrize("flag", [["--workers", "2", "--port", "0"], ["--port", "-1"]])
def test_serve_rejects_impossible_settings(tmp_path: Path, flag: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "safepolicy.server", "--repo", str(tmp_path), *flag],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "invalid settings" in result.stderr
