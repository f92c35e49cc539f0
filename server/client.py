"""The project's Python client for ``safepolicy.v1.PolicyService`` (sync grpcio).

    with PolicyClient("127.0.0.1:50051") as client:
        result = client.act("ballrun", observations)        # [batch, obs_dim] or [obs_dim]
        with client.stream("ballrun") as loop:               # a control loop, in order
            action = loop.act(observation)

Errors are ``grpc.RpcError`` with the server's status code and message. Calls that come back
UNAVAILABLE (server draining, policy not loaded yet, connection refused) or RESOURCE_EXHAUSTED
(micro-batch queue full) are retried by gRPC itself with exponential backoff, as the server's
messages advise (:data:`RETRY_POLICY`, set through the channel's service config); the call's
timeout bounds all attempts together. Imports neither torch nor the gyms.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from safepolicy.server._generated import policy_pb2, policy_pb2_grpc
from safepolicy.server.tensors import decode_float32, encode_float32

SERVICE = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name
# gRPC's retry policy (grpc/proposal A6): up to 5 attempts, 50 ms, 100 ms, 200 ms, 400 ms
# apart on average (jittered), for the two codes the server uses for "try again"
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.05s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
}
# ReportOutcome is not idempotent (a report the server counted before the connection broke
# would count twice), so it is never retried; every other method is
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {"name": [{"service": SERVICE}], "retryPolicy": RETRY_POLICY},
            {"name": [{"service": SERVICE, "method": "ReportOutcome"}]},
        ]
    }
)


def channel_options(
    server_name: str | None = None,
    *,
    retries: bool = True,
) -> list[tuple[str, Any]]:
    """The client channel's options: the retry service config, and a TLS name override."""
    options: list[tuple[str, Any]] = [("grpc.enable_retries", 1 if retries else 0)]
    if retries:
        options.append(("grpc.service_config", SERVICE_CONFIG))
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


@dataclass(frozen=True)
class ActResult:
    """Actions and the policy version that computed them."""

    actions: np.ndarray
    policy: str
    version: int


def act_request(
    policy: str,
    observations: Any,
    *,
    version: int | None = None,
    sample: bool = False,
    seed: int | None = None,
) -> policy_pb2.ActRequest:
    """The ActRequest message for ``observations`` (float32-convertible)."""
    shape, data = encode_float32(np.asarray(observations, dtype=np.float32))
    request = policy_pb2.ActRequest(
        policy=policy, observations=policy_pb2.Tensor(shape=shape, data=data), sample=sample
    )
    if version is not None:
        request.version = version
    if seed is not None:
        request.seed = seed
    return request


def act_result(response: policy_pb2.ActResponse) -> ActResult:
    actions = decode_float32(response.actions.shape, response.actions.data, what="actions")
    return ActResult(actions, response.policy, response.version)


class PolicyClient:
    """A channel to one server; ``token`` adds ``authorization: Bearer``; TLS when given
    ``root_certificates`` (and a client key and certificate for mutual TLS); ``retries``
    (default on) retries UNAVAILABLE and RESOURCE_EXHAUSTED with backoff."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        server_name: str | None = None,
        timeout: float | None = 10.0,
        retries: bool = True,
    ) -> None:
        options = channel_options(server_name, retries=retries)
        if root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates, private_key, certificate_chain
            )
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def act(
        self,
        policy: str,
        observations: Any,
        *,
        version: int | None = None,
        sample: bool = False,
        seed: int | None = None,
        timeout: float | None = None,
    ) -> ActResult:
        """Actions for one observation ``[obs_dim]`` or a batch ``[batch, obs_dim]``."""
        request = act_request(policy, observations, version=version, sample=sample, seed=seed)
        response = self.stub.Act(request, timeout=timeout or self.timeout, metadata=self.metadata)
        return act_result(response)

    def stream(
        self,
        policy: str,
        *,
        version: int | None = None,
        sample: bool = False,
        timeout: float | None = None,
    ) -> ActionStream:
        """A bidirectional stream for a control loop (see :class:`ActionStream`)."""
        return ActionStream(self, policy, version=version, sample=sample, timeout=timeout)

    def list_policies(self) -> list[policy_pb2.PolicyInfo]:
        return list(
            self.stub.ListPolicies(
                policy_pb2.ListPoliciesRequest(), timeout=self.timeout, metadata=self.metadata
            ).policies
        )

    def get_policy(self, policy: str, version: int | None = None) -> policy_pb2.PolicyInfo:
        request = policy_pb2.GetPolicyRequest(policy=policy)
        if version is not None:
            request.version = version
        return self.stub.GetPolicy(request, timeout=self.timeout, metadata=self.metadata).policy

    def report_step(
        self,
        policy: str,
        episode_id: str,
        *,
        reward: float,
        cost: float,
        done: bool = False,
        steps: int = 1,
        version: int | None = None,
    ) -> policy_pb2.ReportOutcomeResponse:
        """Report reward and cost of ``steps`` steps of an open episode."""
        request = policy_pb2.ReportOutcomeRequest(
            policy=policy,
            granularity=policy_pb2.ReportOutcomeRequest.STEP,
            episode_id=episode_id,
            reward=reward,
            cost=cost,
            steps=steps,
            done=done,
        )
        if version is not None:
            request.version = version
        return self.stub.ReportOutcome(request, timeout=self.timeout, metadata=self.metadata)

    def report_episode(
        self, policy: str, *, reward: float, cost: float, steps: int, version: int | None = None
    ) -> policy_pb2.ReportOutcomeResponse:
        """Report a finished episode's totals."""
        request = policy_pb2.ReportOutcomeRequest(
            policy=policy,
            granularity=policy_pb2.ReportOutcomeRequest.EPISODE,
            reward=reward,
            cost=cost,
            steps=steps,
        )
        if version is not None:
            request.version = version
        return self.stub.ReportOutcome(request, timeout=self.timeout, metadata=self.metadata)

    def reload(self) -> policy_pb2.ReloadResponse:
        return self.stub.Reload(
            policy_pb2.ReloadRequest(), timeout=self.timeout, metadata=self.metadata
        )

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_END = object()


class ActionStream:
    """One ``ActStream`` call: ``act(observation)`` sends one request and waits for its answer."""

    def __init__(
        self,
        client: PolicyClient,
        policy: str,
        *,
        version: int | None,
        sample: bool,
        timeout: float | None,
    ) -> None:
        self.policy, self.version, self.sample = policy, version, sample
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._call = client.stub.ActStream(
            self._iterate(), timeout=timeout, metadata=client.metadata
        )
        self._lock = threading.Lock()

    def _iterate(self) -> Iterator[policy_pb2.ActRequest]:
        while (item := self._requests.get()) is not _END:
            yield item

    def act(self, observations: Any) -> ActResult:
        with self._lock:
            self._requests.put(
                act_request(self.policy, observations, version=self.version, sample=self.sample)
            )
            return act_result(next(self._call))

    def close(self) -> None:
        self._requests.put(_END)
        for _ in self._call:  # drain: the server ends the stream after our half-close
            pass

    def __enter__(self) -> ActionStream:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._call.cancel()
