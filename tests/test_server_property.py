"""Random requests (hypothesis) never crash or wedge the server."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safepolicy.server._generated import policy_pb2
from safepolicy.server.client import PolicyClient
from safepolicy.server.settings import ServerSettings
from safepolicy.server.testing import ServerThread, make_policy, observations

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyClient]:
    repo = tmp_path_factory.mktemp("repo")
    make_policy(repo, "ballrun", 1)
    config = ServerSettings(
        repo=repo,
        host="127.0.0.1",
        port=0,
        metrics_port=None,
        poll_interval_s=0,
        grace_s=1,
        max_batch_size=64,
    )
    with ServerThread(config) as server, PolicyClient(server.target) as policy_client:
        yield policy_client


floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
shapes = st.lists(st.integers(min_value=-3, max_value=2**40), min_size=0, max_size=4)


@st.composite
def act_requests(draw: st.DrawFn) -> policy_pb2.ActRequest:
    policy = draw(st.sampled_from(["ballrun", "", "nope"]) | st.text(max_size=20))
    if draw(st.booleans()):  # well-formed data of a random (often valid) shape
        rows = draw(st.integers(min_value=0, max_value=70))
        cols = draw(st.sampled_from([8, 8, 8, 7, 0]))
        values = draw(st.lists(floats, min_size=rows * cols, max_size=rows * cols))
        shape = [rows, cols] if draw(st.booleans()) or rows != 1 else [cols]
        data = np.asarray(values, dtype="<f4").tobytes()
    else:  # arbitrary shape and bytes
        shape = draw(shapes)
        data = draw(st.binary(max_size=300))
    request = policy_pb2.ActRequest(
        policy=policy,
        observations=policy_pb2.Tensor(shape=shape, data=data),
        sample=draw(st.booleans()),
    )
    if draw(st.booleans()):
        request.version = draw(st.integers(min_value=-(2**63), max_value=2**63 - 1))
    if draw(st.booleans()):
        request.seed = draw(st.integers(min_value=0, max_value=2**64 - 1))
    return request


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=act_requests())
def test_random_requests_get_a_proper_status(
    client: PolicyClient, request: policy_pb2.ActRequest
) -> None:
    try:
        response = client.stub.Act(request, timeout=5)
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
        assert error.details(), "every error says what is wrong"
    assert code in ALLOWED, f"{code} for {request}"
    if code == grpc.StatusCode.OK:
        actions = np.frombuffer(response.actions.data, dtype="<f4")
        assert np.all(np.isfinite(actions)) and np.all(np.abs(actions) <= 1.0)
    # the server is still up and answers a good request
    assert client.act("ballrun", observations(1), timeout=5).version == 1


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(act_requests(), min_size=1, max_size=5))
def test_random_streams_end_with_a_proper_status(
    client: PolicyClient, requests: list[policy_pb2.ActRequest]
) -> None:
    try:
        for _ in client.stub.ActStream(iter(requests), timeout=5):
            pass
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
    assert code in ALLOWED
    assert client.act("ballrun", observations(1), timeout=5).version == 1
