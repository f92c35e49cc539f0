"""Client mistakes against a real server on loopback: each gets INVALID_ARGUMENT, NOT_FOUND or
RESOURCE_EXHAUSTED with a short message that names no server path, never INTERNAL or
UNKNOWN, and no traceback in the log; the server keeps answering valid calls."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from safepolicy.server._generated import grpc_predict_v2_pb2 as oip
from safepolicy.server._generated import policy_pb2
from safepolicy.server.client import PolicyClient, act_request
from safepolicy.server.errors import MAX_MESSAGE_CHARS, clip_message
from safepolicy.server.settings import ServerSettings
from safepolicy.server.testing import ServerThread, make_policy, observations

OBS_DIM = 8


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    repo = tmp_path_factory.mktemp("faults") / "repo"
    make_policy(repo, "ballrun", 1, seed=1)
    broken = make_policy(repo, "broken", 1, seed=2)
    (broken / "policy.onnx").write_bytes(b"not a model")
    values: dict[str, Any] = {
        "repo": repo,
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": None,
        "poll_interval_s": 0,
        "grace_s": 1,
    }
    settings = ServerSettings(**values)
    with ServerThread(settings) as server:
        yield server


def _status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details() or ""


def _still_serves(target: str) -> None:
    with PolicyClient(target) as client:
        assert client.stub.Act(act_request("ballrun", observations(1)), timeout=5).version == 1


def _raw_unary(target: str, method: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        return _status(lambda: call(payload, timeout=5))


def _unary_methods() -> list[str]:
    """Every unary-request method of both services: each runs in the call scope, which
    answers undecodable bytes (a servicer method outside it would crash on them)."""
    services = [
        service
        for module in (policy_pb2, oip)
        for service in module.DESCRIPTOR.services_by_name.values()
    ]
    return [
        f"/{service.full_name}/{method.name}"
        for service in services
        for method in service.methods
        if not method.client_streaming
    ]


@pytest.mark.parametrize("method", _unary_methods())
def test_random_bytes_are_invalid_argument_without_a_traceback(running, method, caplog):
    payload = np.random.default_rng(0).bytes(512)
    with caplog.at_level(logging.DEBUG):
        code, details = _raw_unary(running.target, method, b"\xff" + payload)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in details
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    _still_serves(running.target)


def test_a_non_ascii_digit_model_version_is_invalid_argument(running, caplog):
    request = oip.ModelInferRequest(model_name="ballrun", model_version="²")
    with grpc.insecure_channel(running.target) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=oip.ModelInferRequest.SerializeToString,
            response_deserializer=oip.ModelInferResponse.FromString,
        )
        with caplog.at_level(logging.DEBUG):
            code, details = _status(lambda: infer(request, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not an integer version" in details
    assert not [r for r in caplog.records if r.exc_info]


def test_a_huge_policy_name_is_not_echoed_back_in_full(running):
    with PolicyClient(running.target) as client:
        code, details = _status(
            lambda: client.stub.Act(act_request("x" * 100_000, observations(1)), timeout=5)
        )
    assert code == grpc.StatusCode.NOT_FOUND
    assert len(details) <= MAX_MESSAGE_CHARS
    assert details.startswith("unknown policy") and "served policies" in details


def test_an_unservable_policy_names_no_server_path(running):
    with PolicyClient(running.target) as client:
        code, details = _status(
            lambda: client.stub.Act(act_request("broken", observations(1)), timeout=5)
        )
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "MODEL_REPO/broken/1" in details
    assert str(running.server.settings.repo) not in details


def test_an_oversized_request_is_refused_before_it_is_parsed(running):
    big = policy_pb2.ActRequest(
        policy="ballrun", observations=policy_pb2.Tensor(shape=[1, OBS_DIM], data=b"\0" * (5 << 20))
    )
    with PolicyClient(running.target) as client:
        code, _ = _status(lambda: client.stub.Act(big, timeout=5))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    _still_serves(running.target)


def test_clip_message_keeps_what_is_wrong_and_what_to_do():
    message = "unknown policy '" + "y" * 5000 + "'; export one"
    clipped = clip_message(message)
    assert len(clipped) <= MAX_MESSAGE_CHARS
    assert clipped.startswith("unknown policy") and clipped.endswith("export one")
    assert clip_message("short") == "short"
