"""The policy server: gRPC transport (grpc.aio) around :class:`server.policies.PolicyStore`.

Layers, top to bottom: servicers convert protobuf messages to domain calls and back
(:class:`PolicyServicer` here, :class:`server.oip.InferenceServicer` for the Open Inference
Protocol); :class:`PolicyServer` owns the store, metrics, health, reloads and shutdown; the
store and :mod:`server.errors` know nothing about transport beyond each error's status code.

Why grpc.aio: on the project's 2-core machines running onnxruntime inside a thread-pool
handler (sync grpcio) added about 0.1-0.15 ms p50 over a bare sync echo, no less than inside
an aio handler (docs: platform-facts; scratch re-measurements noted in README's Serving
section). Small batches therefore run on the event loop (about 15 us in a warm loop, about
45 us under the benchmark's load); batches above ``inline_max_rows`` go to a worker thread so
they do not stall other calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
from collections.abc import AsyncIterator
from time import perf_counter
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from safepolicy.server._generated import (
    grpc_predict_v2_pb2,
    grpc_predict_v2_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
)
from safepolicy.server.auth import BearerTokenInterceptor
from safepolicy.server.batching import MicroBatcher
from safepolicy.server.errors import DeadlineExceeded, InvalidRequest, ShuttingDown, status_of
from safepolicy.server.guard import add_guarded
from safepolicy.server.metrics import ServerMetrics, start_metrics_server
from safepolicy.server.outcomes import OutcomeTracker
from safepolicy.server.policies import LoadedVersion, PolicyStore, ReloadReport
from safepolicy.server.providers import resolve_providers, session_providers
from safepolicy.server.settings import ServerSettings
from safepolicy.server.tensors import FLOAT32, decode_float32

log = logging.getLogger(__name__)

POLICY_SERVICE = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name
INFERENCE_SERVICE = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name[
    "GRPCInferenceService"].full_name
HEALTH_SERVICES = ("", POLICY_SERVICE, INFERENCE_SERVICE)
# SERVING from the moment the gRPC server runs until shutdown, whatever the repository holds:
# the Kubernetes liveness probe (readiness uses "", SERVING only with a policy loaded)
LIVENESS_SERVICE = "liveness"
UNRESOLVED = ("", "")


class PolicyServer:
    """One server process: the store, its gRPC server, metrics endpoint, reloads, shutdown."""

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics | None = None) -> None:
        self.settings = settings
        self.store = PolicyStore(
            settings.repo, version_policy=settings.version_policy, pins=settings.pins,
            require_audit=settings.require_audit, max_batch_size=settings.max_batch_size,
            threads=settings.onnx_threads, providers=resolve_providers(settings.onnx_providers))
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self.metrics.onnx_providers.info({"providers": ",".join(self.store.providers)})
        self.outcomes = OutcomeTracker()
        self.health = health_aio.HealthServicer()
        self.draining = False
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._token = settings.token()
        self._tls = settings.read_tls()
        self._server: grpc.aio.Server | None = None
        self._metrics_http: Any = None
        self._poller: asyncio.Task[None] | None = None
        self._reload_lock: asyncio.Lock | None = None
        self._stopping: asyncio.Task[None] | None = None
        self.batcher: MicroBatcher | None = None
        if settings.batching:
            self.batcher = MicroBatcher(
                self._run_batch, max_rows=settings.batch_max_size,
                max_delay_s=settings.batch_max_delay_ms / 1000.0,
                max_queue_rows=settings.batch_max_queue)

    # ---- lifecycle ----

    async def start(self) -> int:
        """Load the repository, bind, start serving; returns the bound gRPC port."""
        from safepolicy.server.oip import InferenceServicer  # import cycle: oip uses this module

        self._reload_lock = asyncio.Lock()
        for service in HEALTH_SERVICES:
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.reload()
        options = [
            ("grpc.max_receive_message_length", self.settings.max_message_bytes),
            ("grpc.max_send_message_length", self.settings.max_message_bytes),
            # several workers share the port on purpose; a single one must fail loudly when
            # the port is taken instead of silently splitting traffic with a stranger
            ("grpc.so_reuseport", 1 if self.settings.workers > 1 else 0),
        ]
        interceptors = [BearerTokenInterceptor(self._token)] if self._token else []
        server = grpc.aio.server(interceptors=interceptors, options=options)
        add_guarded(policy_pb2_grpc.add_PolicyServiceServicer_to_server,
                    PolicyServicer(self), server, self._count_malformed)
        add_guarded(grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
                    InferenceServicer(self), server, self._count_malformed)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (POLICY_SERVICE, INFERENCE_SERVICE, health_pb2.DESCRIPTOR.services_by_name[
                "Health"].full_name, reflection.SERVICE_NAME), server)
        address = f"{self.settings.host}:{self.settings.port}"
        if self._tls is not None:
            cert, key, client_ca = self._tls
            credentials = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=client_ca,
                require_client_auth=client_ca is not None)
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on {address}: the port is taken or the address is "
                          "not local; choose another --port")
        await server.start()
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._server, self.port = server, port
        if self.settings.metrics_port is not None:
            self._metrics_http = start_metrics_server(
                self.metrics, self.settings.metrics_port, self.settings.metrics_host)
            self.metrics_port = int(self._metrics_http.server_port)
        if self.settings.poll_interval_s > 0:
            self._poller = asyncio.create_task(self._poll(), name="repository-poller")
        log.info("serving %s on %s (metrics on %s), onnxruntime providers %s", self.settings.repo,
                 port, self.metrics_port, ",".join(self.store.providers))
        return port

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.reload()
            except Exception:  # a scan must never kill the poller
                log.exception("repository scan failed; retrying at the next poll")
                self.metrics.reloads.labels("failed").inc()

    async def reload(self) -> ReloadReport:
        """Scan the repository on a worker thread, then publish health and metrics."""
        assert self._reload_lock is not None, "start() first"
        async with self._reload_lock:
            report = await asyncio.to_thread(self.store.reload)
            self.metrics.reloads.labels("failed" if report.failed else "ok").inc()
            for name, version, _reason in report.failed:
                self.metrics.child(self.metrics.reload_failures, name, str(version)).inc()
            self.metrics.set_loaded((entry.name, sorted(entry.versions))
                                    for entry in self.store.entries())
            self.metrics.ready.set(1 if self.store.ready else 0)
            if not self.draining:
                status = (health_pb2.HealthCheckResponse.SERVING if self.store.ready
                          else health_pb2.HealthCheckResponse.NOT_SERVING)
                for service in HEALTH_SERVICES:
                    await self.health.set(service, status)
            return report

    def shutdown(self, grace: float | None = None) -> asyncio.Task[None]:
        """Begin the graceful stop (idempotent): NOT_SERVING while still serving for
        ``drain_delay_s``, then refuse new calls, end open streams, and stop once drained."""
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._shutdown(grace), name="shutdown")
        return self._stopping

    async def _shutdown(self, grace: float | None) -> None:
        grace = self.settings.grace_s if grace is None else grace
        # Kubernetes order: report NOT_SERVING first but keep answering through the drain
        # delay (load balancers need that window to move traffic), then refuse new calls and
        # end open streams at their next message, then stop as soon as in-flight calls finish
        log.info("shutting down: NOT_SERVING, still serving for %.1f s, then draining for up "
                 "to %.1f s", self.settings.drain_delay_s, grace)
        await self.health.enter_graceful_shutdown()
        self.metrics.ready.set(0)
        if self.settings.drain_delay_s > 0:
            await asyncio.sleep(self.settings.drain_delay_s)
        self.draining = True
        # refuse with UNAVAILABLE for a moment before grpc's own stop: calls that reach a
        # stopping grpc server come back CANCELLED, which clients do not retry
        await asyncio.sleep(min(REFUSAL_PERIOD_S, grace))
        if self._poller is not None:
            self._poller.cancel()
        if self._server is not None:
            await self._server.stop(grace)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()

    async def wait(self) -> None:
        """Until the server has stopped."""
        assert self._server is not None, "start() first"
        await self._server.wait_for_termination()
        if self._stopping is not None:
            await self._stopping

    async def run(self) -> None:
        """Start, stop gracefully on SIGTERM or SIGINT, return when stopped."""
        await self.start()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.shutdown)
        await self.wait()

    # ---- the shared request path ----

    def check_accepting(self) -> None:
        if self.draining:
            raise ShuttingDown("server is shutting down and takes no new calls or stream "
                               "messages; retry or reopen the stream (another "
                               "replica will answer)")

    def decode_observations(self, loaded: LoadedVersion, shape: Any, data: bytes,
                            ) -> tuple[np.ndarray, bool]:
        """Checked float32 ``[batch, obs_dim]`` observations; True when sent as one vector."""
        observations = decode_float32(shape, data)
        return self.store.check_observations(loaded, observations), observations.ndim == 1

    def runs_inline(self, observations: np.ndarray, sample: bool) -> bool:
        """True when these observations run right here on the event loop: no micro-batching
        applies (off, or a sampled request) and the batch is small (``inline_max_rows``)."""
        return ((self.batcher is None or sample)
                and observations.shape[0] <= self.settings.inline_max_rows)

    def compute_inline(self, loaded: LoadedVersion, observations: np.ndarray, *, sample: bool,
                       seed: int | None, context: grpc.aio.ServicerContext) -> np.ndarray:
        """Actions for a small checked batch, computed now on the loop (the per-step path:
        no coroutine, no executor hop)."""
        _check_deadline(context)
        return self.store.run(loaded, observations, deterministic=not sample, seed=seed)

    async def compute(self, loaded: LoadedVersion, observations: np.ndarray, *, sample: bool,
                      seed: int | None, context: grpc.aio.ServicerContext) -> np.ndarray:
        """Actions for checked observations, by the cheapest route that keeps the loop free."""
        if self.runs_inline(observations, sample):
            self.metrics.child(self.metrics.batch_size, loaded.name).observe(
                observations.shape[0])
            return self.compute_inline(loaded, observations, sample=sample, seed=seed,
                                       context=context)
        remaining = _check_deadline(context)
        if self.batcher is not None and not sample:
            try:
                return await asyncio.wait_for(self.batcher.submit(loaded, observations), remaining)
            except TimeoutError as error:
                raise DeadlineExceeded("the call's deadline passed while waiting for a "
                                       "micro-batch") from error
        self.metrics.child(self.metrics.batch_size, loaded.name).observe(observations.shape[0])
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(
            self.store.run, loaded, observations, deterministic=not sample, seed=seed))

    def _run_batch(self, loaded: LoadedVersion, observations: np.ndarray) -> np.ndarray:
        self.metrics.child(self.metrics.batch_size, loaded.name).observe(observations.shape[0])
        return self.store.run(loaded, observations, deterministic=True)

    async def fail(self, method: str, labels: tuple[str, str], started: float,
                   error: Exception, context: grpc.aio.ServicerContext) -> None:
        """Record a failed call and abort it with its mapped status (never returns)."""
        code, message = status_of(error)
        self.metrics.record_call(method, *labels, code.name, perf_counter() - started)
        await context.abort(code, message)

    def _count_malformed(self, method: str) -> None:
        self.metrics.record_call(method, "", "", "INVALID_ARGUMENT", 0.0)

    def record_ok(self, method: str, labels: tuple[str, str], started: float) -> None:
        self.metrics.record_call(method, *labels, "OK", perf_counter() - started)


REFUSAL_PERIOD_S = 0.5


def _check_deadline(context: grpc.aio.ServicerContext) -> float | None:
    """Seconds left before the call's deadline (None: no deadline); raises once it has passed."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded("the call's deadline passed before inference started")
    return remaining


def labels_of(loaded: LoadedVersion) -> tuple[str, str]:
    return loaded.name, str(loaded.version)


def _optional_version(request: Any) -> int | None:
    return request.version if request.HasField("version") else None


def _response(loaded: LoadedVersion, actions: np.ndarray) -> policy_pb2.ActResponse:
    """The ActResponse carrying ``actions`` (float32, any shape) from ``loaded``."""
    packed = np.ascontiguousarray(actions, dtype=FLOAT32)
    return policy_pb2.ActResponse(
        actions=policy_pb2.Tensor(shape=packed.shape, data=packed.tobytes()),
        policy=loaded.name, version=loaded.version)


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    """``safepolicy.v1.PolicyService``: converts messages, nothing more."""

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self.store = server.store
        self.metrics = server.metrics
        self._act_in_flight = server.metrics.child(server.metrics.in_flight, "Act")
        self._stream_in_flight = server.metrics.child(server.metrics.in_flight, "ActStream")

    async def Act(self, request: policy_pb2.ActRequest, context: grpc.aio.ServicerContext,
                  ) -> policy_pb2.ActResponse:
        started = perf_counter()
        in_flight = self._act_in_flight
        in_flight.inc()
        loaded: LoadedVersion | None = None
        try:
            self.server.check_accepting()
            loaded = self.store.resolve(request.policy, _optional_version(request))
            observations, single = self.server.decode_observations(
                loaded, request.observations.shape, request.observations.data)
            response = self._act_inline(loaded, observations, single, request, context, "Act",
                                        started)
            if response is None:
                response = await self._act(loaded, observations, single, request, context)
                self.server.record_ok("Act", labels_of(loaded), started)
            return response
        except Exception as error:
            labels = UNRESOLVED if loaded is None else labels_of(loaded)
            await self.server.fail("Act", labels, started, error, context)
            raise  # not reached: abort raises
        finally:
            in_flight.dec()

    def _act_inline(self, loaded: LoadedVersion, observations: np.ndarray, single: bool,
                    request: policy_pb2.ActRequest, context: grpc.aio.ServicerContext,
                    method: str, started: float) -> policy_pb2.ActResponse | None:
        """The answer computed synchronously, with its metrics recorded, when the request can
        run on the loop (:meth:`PolicyServer.runs_inline`); ``None`` otherwise.

        This is the per-step path of a control loop, so it does the least work per call:
        the observations were decoded and checked once by the caller, inference is
        :meth:`OnnxPolicy.act_unchecked <export.artifact.OnnxPolicy.act_unchecked>`, and the
        metric children are bound once per method, policy and version
        (:meth:`ServerMetrics.bound`).
        """
        sample = request.sample
        if not self.server.runs_inline(observations, sample):
            return None
        bound = self.metrics.bound(method, loaded.name, loaded.version)
        bound.batch_size.observe(observations.shape[0])
        actions = self.server.compute_inline(
            loaded, observations, sample=sample,
            seed=request.seed if sample and request.HasField("seed") else None, context=context)
        response = _response(loaded, actions[0] if single else actions)
        bound.record_ok(perf_counter() - started)
        return response

    async def _act(self, loaded: LoadedVersion, observations: np.ndarray, single: bool,
                   request: policy_pb2.ActRequest, context: grpc.aio.ServicerContext,
                   ) -> policy_pb2.ActResponse:
        """The answer by :meth:`PolicyServer.compute` (micro-batched or on a worker thread)."""
        actions = await self.server.compute(
            loaded, observations, sample=request.sample,
            seed=request.seed if request.HasField("seed") else None, context=context)
        return _response(loaded, actions[0] if single else actions)

    async def ActStream(self, request_iterator: AsyncIterator[policy_pb2.ActRequest],
                        context: grpc.aio.ServicerContext) -> AsyncIterator[policy_pb2.ActResponse]:
        in_flight = self._stream_in_flight
        in_flight.inc()
        try:
            try:
                self.server.check_accepting()
            except ShuttingDown as error:
                await self.server.fail("ActStream", UNRESOLVED, perf_counter(), error, context)
            async for request in request_iterator:
                started = perf_counter()
                loaded: LoadedVersion | None = None
                try:
                    self.server.check_accepting()  # a draining server ends open streams
                    loaded = self.store.resolve(request.policy, _optional_version(request))
                    observations, single = self.server.decode_observations(
                        loaded, request.observations.shape, request.observations.data)
                    response = self._act_inline(loaded, observations, single, request, context,
                                                "ActStream", started)
                    if response is None:
                        response = await self._act(loaded, observations, single, request,
                                                   context)
                        self.server.record_ok("ActStream", labels_of(loaded), started)
                except Exception as error:
                    labels = UNRESOLVED if loaded is None else labels_of(loaded)
                    await self.server.fail("ActStream", labels, started, error, context)
                    return
                yield response
        finally:
            in_flight.dec()

    async def ListPolicies(self, request: policy_pb2.ListPoliciesRequest,
                           context: grpc.aio.ServicerContext) -> policy_pb2.ListPoliciesResponse:
        started = perf_counter()
        response = policy_pb2.ListPoliciesResponse()
        for entry in self.store.entries():
            serving = entry.serving
            if serving is not None:
                response.policies.append(policy_info(serving, sorted(entry.versions)))
            else:
                response.policies.append(policy_pb2.PolicyInfo(name=entry.name))
        self.server.record_ok("ListPolicies", UNRESOLVED, started)
        return response

    async def GetPolicy(self, request: policy_pb2.GetPolicyRequest,
                        context: grpc.aio.ServicerContext) -> policy_pb2.GetPolicyResponse:
        started = perf_counter()
        labels = UNRESOLVED
        try:
            loaded = self.store.resolve(request.policy, _optional_version(request))
            labels = labels_of(loaded)
            entry = next(e for e in self.store.entries() if e.name == loaded.name)
            response = policy_pb2.GetPolicyResponse(
                policy=policy_info(loaded, sorted(entry.versions)))
        except Exception as error:
            await self.server.fail("GetPolicy", labels, started, error, context)
            raise
        self.server.record_ok("GetPolicy", labels, started)
        return response

    async def ReportOutcome(self, request: policy_pb2.ReportOutcomeRequest,
                            context: grpc.aio.ServicerContext,
                            ) -> policy_pb2.ReportOutcomeResponse:
        started = perf_counter()
        labels = UNRESOLVED
        try:
            loaded = self.store.resolve(request.policy, _optional_version(request))
            labels = labels_of(loaded)
            granularity = {policy_pb2.ReportOutcomeRequest.STEP: "step",
                           policy_pb2.ReportOutcomeRequest.EPISODE: "episode"}.get(
                request.granularity)
            if granularity is None:
                raise InvalidRequest("granularity must be STEP (per-step reports with an "
                                     "episode_id) or EPISODE (episode totals)")
            cost_limit = loaded.metadata.cost_limit
            result = self.server.outcomes.report(
                loaded.name, loaded.version, cost_limit, granularity=granularity,  # type: ignore[arg-type]
                reward=request.reward, cost=request.cost, steps=request.steps,
                done=request.done, episode_id=request.episode_id)
        except Exception as error:
            await self.server.fail("ReportOutcome", labels, started, error, context)
            raise
        m = self.metrics
        m.child(m.outcome_steps, *labels).inc(request.steps or 1)
        m.child(m.outcome_cost, *labels).inc(request.cost)
        m.child(m.cost_limit, *labels).set(cost_limit)
        m.child(m.cost_rate, loaded.name).set(self.server.outcomes.cost_rate(loaded.name))
        if result.done:
            m.child(m.episodes, *labels).inc()
            m.child(m.episode_cost, *labels).observe(result.episode_cost)
            m.child(m.last_episode_cost, *labels).set(result.episode_cost)
            m.child(m.last_episode_return, *labels).set(result.episode_return)
            m.child(m.rolling_episode_cost, loaded.name).set(
                self.server.outcomes.rolling_episode_cost(loaded.name))
            if result.violation:
                m.child(m.violations, *labels).inc()
        self.server.record_ok("ReportOutcome", labels, started)
        return policy_pb2.ReportOutcomeResponse(episode_cost=result.episode_cost,
                                                violation=result.violation,
                                                episode_done=result.done)

    async def Reload(self, request: policy_pb2.ReloadRequest, context: grpc.aio.ServicerContext,
                     ) -> policy_pb2.ReloadResponse:
        started = perf_counter()
        try:
            self.server.check_accepting()
            report = await self.server.reload()
        except Exception as error:
            await self.server.fail("Reload", UNRESOLVED, started, error, context)
            raise
        self.server.record_ok("Reload", UNRESOLVED, started)
        return policy_pb2.ReloadResponse(
            loaded=report.loaded, unloaded=report.unloaded,
            failed=[f"{name}/{version}: {reason}" for name, version, reason in report.failed])


def policy_info(loaded: LoadedVersion, versions: list[int]) -> policy_pb2.PolicyInfo:
    """The PolicyInfo message of a loaded version."""
    metadata = loaded.metadata
    audit = loaded.audit
    verdict = (policy_pb2.AuditInfo.NOT_AUDITED if audit is None
               else policy_pb2.AuditInfo.PASS if audit.verdict == "PASS"
               else policy_pb2.AuditInfo.FAIL)
    return policy_pb2.PolicyInfo(
        name=loaded.name, version=loaded.version, versions=versions,
        serving_version=max(versions), task=metadata.task, env_id=metadata.env_id,
        algorithm=metadata.algorithm, obs_dim=metadata.obs_dim,
        action_dim=metadata.action_dim, action_low=metadata.action_low,
        action_high=metadata.action_high, cost_limit=metadata.cost_limit,
        metadata_json=metadata.to_json(),
        execution_providers=session_providers(loaded.policy.session),
        audit=policy_pb2.AuditInfo(verdict=verdict,
                                   audit_json="" if audit is None
                                   else audit.model_dump_json(indent=2)))


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
