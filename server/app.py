"""The policy server's lifecycle: start, reload, graceful stop, signals.

:class:`PolicyServer` owns the store, the metrics, health and the gRPC server; it builds the
data plane (:mod:`server.dataplane`, the one request path) and registers the thin servicers
(:mod:`server.policy_service`, :mod:`server.oip`) and, with ``http_port``, the Open Inference
Protocol over HTTP (:mod:`server.rest`) on the same event loop. Modules import downwards only:
this one imports the servicers, they import the data plane and the call scope, which import
the store; nothing imports this module but the CLI and the test harness
(:mod:`server.testing`).

Why grpc.aio: on the project's 2-core machines running onnxruntime inside a thread-pool
handler (sync grpcio) added about 0.1-0.15 ms p50 over a bare sync echo, no less than inside
an aio handler (docs: platform-facts; scratch re-measurements noted in README's Serving
section), so small batches run on the event loop (see :mod:`server.dataplane`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import grpc
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
from safepolicy.server.dataplane import DataPlane
from safepolicy.server.guard import add_guarded
from safepolicy.server.metrics import ServerMetrics, start_metrics_server
from safepolicy.server.oip import InferenceServicer
from safepolicy.server.outcomes import OutcomeTracker
from safepolicy.server.policies import PolicyStore, ReloadReport
from safepolicy.server.policy_service import PolicyServicer
from safepolicy.server.providers import resolve_providers
from safepolicy.server.rest import RestServer, server_ssl_context
from safepolicy.server.settings import ServerSettings

log = logging.getLogger(__name__)

POLICY_SERVICE = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name
INFERENCE_SERVICE = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name[
    "GRPCInferenceService"
].full_name
HEALTH_SERVICES = ("", POLICY_SERVICE, INFERENCE_SERVICE)
# SERVING from the moment the gRPC server runs until shutdown, whatever the repository holds:
# the Kubernetes liveness probe (readiness uses "", SERVING only with a policy loaded)
LIVENESS_SERVICE = "liveness"


class PolicyServer:
    """One server process: the store, its gRPC server, metrics endpoint, reloads, shutdown."""

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics | None = None) -> None:
        self.settings = settings
        self.store = PolicyStore(
            settings.repo,
            version_policy=settings.version_policy,
            pins=settings.pins,
            require_audit=settings.require_audit,
            max_batch_size=settings.max_batch_size,
            threads=settings.onnx_threads,
            providers=resolve_providers(settings.onnx_providers),
        )
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self.metrics.onnx_providers.info({"providers": ",".join(self.store.providers)})
        self.outcomes = OutcomeTracker()
        self.plane = DataPlane(self.store, self.metrics, settings)
        self.health = health_aio.HealthServicer()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.http_port: int | None = None
        self._token = settings.token()
        self._tls = settings.read_tls()
        self._server: grpc.aio.Server | None = None
        self._metrics_http: Any = None
        self._rest: RestServer | None = None
        self._poller: asyncio.Task[None] | None = None
        self._reload_lock: asyncio.Lock | None = None
        self._stopping: asyncio.Task[None] | None = None

    @property
    def draining(self) -> bool:
        """True once a shutdown has passed its drain delay: new calls are refused."""
        return self.plane.draining

    # ---- lifecycle ----

    async def start(self) -> int:
        """Load the repository, bind, start serving; returns the bound gRPC port."""
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
        add_guarded(
            policy_pb2_grpc.add_PolicyServiceServicer_to_server,
            PolicyServicer(self.plane, self.outcomes, self.reload),
            server,
        )
        add_guarded(
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
            InferenceServicer(self.plane),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                POLICY_SERVICE,
                INFERENCE_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        address = f"{self.settings.host}:{self.settings.port}"
        if self._tls is not None:
            cert, key, client_ca = self._tls
            credentials = grpc.ssl_server_credentials(
                [(key, cert)],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(
                f"cannot listen on {address}: the port is taken or the address is "
                "not local; choose another --port"
            )
        await server.start()
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._server, self.port = server, port
        if self.settings.metrics_port is not None:
            self._metrics_http = start_metrics_server(
                self.metrics, self.settings.metrics_port, self.settings.metrics_host
            )
            self.metrics_port = int(self._metrics_http.server_port)
        if self.settings.http_port is not None:
            self._rest = RestServer(
                self.plane, token=self._token, max_body_bytes=self.settings.max_message_bytes
            )
            ssl_context = (
                None
                if self._tls is None
                else server_ssl_context(
                    str(self.settings.tls_cert_file),
                    str(self.settings.tls_key_file),
                    None
                    if self.settings.tls_client_ca_file is None
                    else str(self.settings.tls_client_ca_file),
                )
            )
            self.http_port = await self._rest.start(
                self.settings.host, self.settings.http_port, ssl_context
            )
        if self.settings.poll_interval_s > 0:
            self._poller = asyncio.create_task(self._poll(), name="repository-poller")
        log.info(
            "serving %s on %s (HTTP on %s, metrics on %s), onnxruntime providers %s",
            self.settings.repo,
            port,
            self.http_port,
            self.metrics_port,
            ",".join(self.store.providers),
        )
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
            self.metrics.set_loaded(
                (entry.name, sorted(entry.versions)) for entry in self.store.entries()
            )
            self.metrics.ready.set(1 if self.store.ready else 0)
            if not self.draining:
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if self.store.ready
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
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
        log.info(
            "shutting down: NOT_SERVING, still serving for %.1f s, then draining for up to %.1f s",
            self.settings.drain_delay_s,
            grace,
        )
        await self.health.enter_graceful_shutdown()
        self.metrics.ready.set(0)
        if self.settings.drain_delay_s > 0:
            await asyncio.sleep(self.settings.drain_delay_s)
        self.plane.draining = True
        # refuse with UNAVAILABLE for a moment before grpc's own stop: calls that reach a
        # stopping grpc server come back CANCELLED, which clients do not retry
        await asyncio.sleep(min(REFUSAL_PERIOD_S, grace))
        if self._poller is not None:
            self._poller.cancel()
        if self._server is not None:
            await self._server.stop(grace)
        if self._rest is not None:
            await self._rest.stop()
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


REFUSAL_PERIOD_S = 0.5
