"""``safepolicy.v1.PolicyService``: converts messages to data-plane calls and back, nothing more.

Every method runs in the call scope (:mod:`server.calls`), which maps errors to status codes
and counts the call; inference goes through :meth:`server.dataplane.DataPlane.act`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from safepolicy.server._generated import policy_pb2, policy_pb2_grpc
from safepolicy.server.calls import Call, streaming, unary
from safepolicy.server.dataplane import DataPlane
from safepolicy.server.errors import InvalidRequest
from safepolicy.server.metrics import ServerMetrics
from safepolicy.server.outcomes import OutcomeTracker
from safepolicy.server.policies import LoadedVersion, ReloadReport
from safepolicy.server.providers import session_providers
from safepolicy.server.tensors import FLOAT32

GRANULARITIES = {
    policy_pb2.ReportOutcomeRequest.STEP: "step",
    policy_pb2.ReportOutcomeRequest.EPISODE: "episode",
}


def _optional_version(request: Any) -> int | None:
    return request.version if request.HasField("version") else None


def act_response(loaded: LoadedVersion, actions: np.ndarray) -> policy_pb2.ActResponse:
    """The ActResponse carrying ``actions`` (float32, any shape) from ``loaded``.

    The submessage is given as a dict: protobuf then fills it in place instead of building a
    Tensor and copying it in (``tobytes`` is row-major whatever the array's memory layout, so
    no ``ascontiguousarray`` either); the README's serving section has what it gained.
    """
    if actions.dtype != FLOAT32:
        actions = actions.astype(FLOAT32)
    return policy_pb2.ActResponse(
        actions={"shape": list(actions.shape), "data": actions.tobytes()},
        policy=loaded.name,
        version=loaded.version,
    )


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    """``safepolicy.v1.PolicyService`` over a :class:`DataPlane`.

    ``reload`` is the lifecycle's repository reload (the ``Reload`` method calls it).
    """

    def __init__(
        self,
        plane: DataPlane,
        outcomes: OutcomeTracker,
        reload: Callable[[], Awaitable[ReloadReport]],
    ) -> None:
        self.plane = plane
        self.store = plane.store
        self.metrics: ServerMetrics = plane.metrics
        self.outcomes = outcomes
        self._reload = reload

    async def _act(
        self, request: policy_pb2.ActRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> policy_pb2.ActResponse:
        sample = request.sample
        observations = request.observations
        actions, single = await self.plane.act(
            call,
            request.policy,
            _optional_version(request),
            observations.shape,
            observations.data,
            sample=sample,
            seed=request.seed if sample and request.HasField("seed") else None,
            time_remaining=context.time_remaining(),
        )
        assert call.loaded is not None
        return act_response(call.loaded, actions[0] if single else actions)

    Act = unary("Act", track_in_flight=True)(_act)
    ActStream = streaming("ActStream")(_act)

    @unary("ListPolicies")
    async def ListPolicies(
        self,
        request: policy_pb2.ListPoliciesRequest,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> policy_pb2.ListPoliciesResponse:
        response = policy_pb2.ListPoliciesResponse()
        for entry in self.store.entries():
            serving = entry.serving
            if serving is not None:
                response.policies.append(policy_info(serving, sorted(entry.versions)))
            else:
                response.policies.append(policy_pb2.PolicyInfo(name=entry.name))
        return response

    @unary("GetPolicy")
    async def GetPolicy(
        self,
        request: policy_pb2.GetPolicyRequest,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> policy_pb2.GetPolicyResponse:
        loaded = self.plane.resolve(call, request.policy, _optional_version(request))
        return policy_pb2.GetPolicyResponse(
            policy=policy_info(loaded, self.store.versions_of(loaded))
        )

    @unary("ReportOutcome")
    async def ReportOutcome(
        self,
        request: policy_pb2.ReportOutcomeRequest,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> policy_pb2.ReportOutcomeResponse:
        loaded = self.plane.resolve(call, request.policy, _optional_version(request))
        granularity = GRANULARITIES.get(request.granularity)
        if granularity is None:
            raise InvalidRequest(
                "granularity must be STEP (per-step reports with an "
                "episode_id) or EPISODE (episode totals)"
            )
        cost_limit = loaded.metadata.cost_limit
        result = self.outcomes.report(
            loaded.name,
            loaded.version,
            cost_limit,
            granularity=granularity,  # type: ignore[arg-type]
            reward=request.reward,
            cost=request.cost,
            steps=request.steps,
            done=request.done,
            episode_id=request.episode_id,
        )
        m = self.metrics
        labels = (loaded.name, str(loaded.version))
        m.child(m.outcome_steps, *labels).inc(request.steps or 1)
        m.child(m.outcome_cost, *labels).inc(request.cost)
        m.child(m.cost_limit, *labels).set(cost_limit)
        m.child(m.cost_rate, loaded.name).set(self.outcomes.cost_rate(loaded.name))
        if result.done:
            m.child(m.episodes, *labels).inc()
            m.child(m.episode_cost, *labels).observe(result.episode_cost)
            m.child(m.last_episode_cost, *labels).set(result.episode_cost)
            m.child(m.last_episode_return, *labels).set(result.episode_return)
            m.child(m.rolling_episode_cost, loaded.name).set(
                self.outcomes.rolling_episode_cost(loaded.name)
            )
            if result.violation:
                m.child(m.violations, *labels).inc()
        return policy_pb2.ReportOutcomeResponse(
            episode_cost=result.episode_cost, violation=result.violation, episode_done=result.done
        )

    @unary("Reload")
    async def Reload(
        self, request: policy_pb2.ReloadRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> policy_pb2.ReloadResponse:
        self.plane.check_accepting()
        report = await self._reload()
        return policy_pb2.ReloadResponse(
            loaded=report.loaded,
            unloaded=report.unloaded,
            failed=[f"{name}/{version}: {reason}" for name, version, reason in report.failed],
        )


def policy_info(loaded: LoadedVersion, versions: list[int]) -> policy_pb2.PolicyInfo:
    """The PolicyInfo message of a loaded version."""
    metadata = loaded.metadata
    audit = loaded.audit
    verdict = (
        policy_pb2.AuditInfo.NOT_AUDITED
        if audit is None
        else policy_pb2.AuditInfo.PASS
        if audit.verdict == "PASS"
        else policy_pb2.AuditInfo.FAIL
    )
    return policy_pb2.PolicyInfo(
        name=loaded.name,
        version=loaded.version,
        versions=versions,
        serving_version=max(versions),
        task=metadata.task,
        env_id=metadata.env_id,
        algorithm=metadata.algorithm,
        obs_dim=metadata.obs_dim,
        action_dim=metadata.action_dim,
        action_low=metadata.action_low,
        action_high=metadata.action_high,
        cost_limit=metadata.cost_limit,
        metadata_json=metadata.to_json(),
        execution_providers=session_providers(loaded.policy.session),
        audit=policy_pb2.AuditInfo(
            verdict=verdict, audit_json="" if audit is None else audit.model_dump_json(indent=2)
        ),
    )
