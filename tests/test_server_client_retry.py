"""The client's retry policy: UNAVAILABLE and RESOURCE_EXHAUSTED are retried with backoff.

The server here is a real gRPC server on loopback whose ``Act`` refuses the first attempt of
each call with the code under test and answers the retry (grpc marks it with the
``grpc-previous-rpc-attempts`` header), so the test sees the retry on the wire.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest

from safepolicy.server._generated import policy_pb2, policy_pb2_grpc
from safepolicy.server.client import PolicyClient


class RefusesFirstAttempt(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self) -> None:
        self.code = grpc.StatusCode.UNAVAILABLE
        self.attempts: list[int] = []  # grpc-previous-rpc-attempts of each attempt received
        self.lock = threading.Lock()

    def _refuse_first(self, context: Any) -> None:
        previous = int(dict(context.invocation_metadata()).get("grpc-previous-rpc-attempts", 0))
        with self.lock:
            self.attempts.append(previous)
        if previous == 0:
            context.abort(self.code, "try again")

    def Act(self, request: Any, context: Any) -> policy_pb2.ActResponse:
        self._refuse_first(context)
        return policy_pb2.ActResponse(
            actions=policy_pb2.Tensor(shape=[2], data=np.zeros(2, "<f4").tobytes()),
            policy=request.policy,
            version=1,
        )

    def ReportOutcome(self, request: Any, context: Any) -> policy_pb2.ReportOutcomeResponse:
        self._refuse_first(context)
        return policy_pb2.ReportOutcomeResponse()


@pytest.fixture
def refusing() -> Iterator[tuple[str, RefusesFirstAttempt]]:
    servicer = RefusesFirstAttempt()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(0)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_a_refused_first_attempt_is_retried_and_succeeds(
    refusing: tuple[str, RefusesFirstAttempt], code: grpc.StatusCode
) -> None:
    target, servicer = refusing
    servicer.code = code
    with PolicyClient(target, timeout=5) as client:
        result = client.act("ballrun", np.zeros(8, np.float32))
    assert result.version == 1 and result.actions.shape == (2,)
    assert servicer.attempts == [0, 1]  # refused, then retried once


def test_without_retries_the_refusal_reaches_the_caller(
    refusing: tuple[str, RefusesFirstAttempt],
) -> None:
    """The control: the same server, a client with retries off, sees the refusal."""
    target, servicer = refusing
    with (
        PolicyClient(target, timeout=5, retries=False) as client,
        pytest.raises(grpc.RpcError) as caught,
    ):
        client.act("ballrun", np.zeros(8, np.float32))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts == [0]


def test_report_outcome_is_not_retried(refusing: tuple[str, RefusesFirstAttempt]) -> None:
    """Not idempotent: a retried report could count twice."""
    target, servicer = refusing
    with PolicyClient(target, timeout=5) as client, pytest.raises(grpc.RpcError) as caught:
        client.report_episode("ballrun", reward=1.0, cost=0.0, steps=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts == [0]
