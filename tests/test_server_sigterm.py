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

from server.client import PolicyClient
from server.testing import free_port, make_policy, observations

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


def test_sigterm_drains_in_flight_calls_and_refuses_new_ones(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_policy(repo, "ballrun", 1)
    port = free_port()
    target = f"127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--repo", str(repo), "--host", "127.0.0.1",
         "--port", str(port), "--metrics-port", "0", "--poll-interval-s", "0",
         "--grace-s", "10", "--drain-delay-s", "0.5", "--log-level", "WARNING"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_serving(target, process)
        messages = 60
        stream_answers: list[int] = []
        stream_errors: list[BaseException] = []
        unary_ok: list[int] = []
        unary_codes: list[grpc.StatusCode] = []
        lock = threading.Lock()

        def control_loop() -> None:
            # a stream opened before SIGTERM is in flight: every message must be answered
            try:
                with PolicyClient(target) as client, client.stream("ballrun") as loop:
                    for row in observations(messages):
                        loop.act(row)
                        with lock:
                            stream_answers.append(1)
                        time.sleep(0.02)
            except BaseException as error:
                stream_errors.append(error)

        def unary_client() -> None:
            with PolicyClient(target) as client:
                for _ in range(10_000):
                    try:
                        client.act("ballrun", observations(1))
                        unary_ok.append(1)
                    except grpc.RpcError as error:
                        unary_codes.append(error.code())
                        return

        threads = [threading.Thread(target=control_loop) for _ in range(4)]
        threads += [threading.Thread(target=unary_client) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(0.4)
        assert len(stream_answers) > 0
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(30)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert stream_errors == []
    assert len(stream_answers) == 4 * messages  # none of the in-flight streams lost a message
    assert unary_ok, "unary clients never got an answer before the signal"
    # after SIGTERM new unary calls are refused as UNAVAILABLE, nothing else
    assert unary_codes and set(unary_codes) == {grpc.StatusCode.UNAVAILABLE}


@pytest.mark.parametrize("flag", [["--workers", "2", "--port", "0"], ["--port", "-1"]])
def test_serve_rejects_impossible_settings(tmp_path: Path, flag: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "server", "--repo", str(tmp_path), *flag],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid settings" in result.stderr
