"""Prometheus metrics of the policy server, on their own registry and HTTP port.

Names follow Prometheus conventions: ``safepolicy_server_`` prefix, base units (seconds),
``_total`` on counters (added by prometheus_client). Labels that come from requests are only
ever names the server already knows (a resolved policy and version), never raw client input,
so a client cannot blow up the series count; an unresolved call is labelled ``policy=""``.

Label children are cached in plain dicts: ``metric.labels(...)`` validates its arguments on
every call, which is measurable at the request rates of the ``Act`` path. The inference path
goes one step further: :meth:`ServerMetrics.bound` hands out a :class:`BoundCall` holding the
children one method/policy/version writes on every successful call, so a call costs one dict
lookup plus the increments.
"""

from __future__ import annotations

from collections.abc import Iterable
from time import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)

PREFIX = "safepolicy_server"
# sub-millisecond resolution where unary calls live (about 0.5-1.5 ms on loopback)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
                   0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
EPISODE_COST_BUCKETS = (0, 1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 200, 500, 1000)
METHODS = ("Act", "ActStream", "ListPolicies", "GetPolicy", "ReportOutcome", "Reload",
           "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
           "ModelInfer", "RepositoryIndex", "ModelConfig", "ModelStatistics")


class ServerMetrics:
    """Every metric the server exports, registered on ``registry`` (a private one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "Calls (stream messages for ActStream) by "
                                "method, policy, version and gRPC status code",
                                ["method", "policy", "version", "code"], registry=r)
        self.latency = Histogram(f"{PREFIX}_request_duration_seconds",
                                 "Time from receiving a call (stream message) to its answer",
                                 ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge(f"{PREFIX}_in_flight_requests", "Calls being served now",
                               ["method"], registry=r)
        self.batch_size = Histogram(f"{PREFIX}_batch_size",
                                    "Observations per onnxruntime call (after micro-batching)",
                                    ["policy"], buckets=BATCH_BUCKETS, registry=r)
        self.loaded_versions = Gauge(f"{PREFIX}_loaded_versions",
                                     "Versions of a policy loaded and servable", ["policy"],
                                     registry=r)
        self.serving_version = Gauge(f"{PREFIX}_serving_version",
                                     "Version answering requests that name none", ["policy"],
                                     registry=r)
        self.ready = Gauge(f"{PREFIX}_ready", "1 when at least one policy is servable",
                           registry=r)
        self.reloads = Counter(f"{PREFIX}_reloads", "Repository scans by result (ok, failed)",
                               ["result"], registry=r)
        self.reload_failures = Counter(f"{PREFIX}_reload_failures",
                                       "Versions that failed to load (the previous one kept "
                                       "serving)", ["policy", "version"], registry=r)
        # from ReportOutcome: what clients observe in the field
        self.outcome_steps = Counter(f"{PREFIX}_outcome_steps",
                                     "Environment steps reported by clients",
                                     ["policy", "version"], registry=r)
        self.outcome_cost = Counter(f"{PREFIX}_outcome_cost", "Cost reported by clients",
                                    ["policy", "version"], registry=r)
        self.episodes = Counter(f"{PREFIX}_episodes", "Episodes reported finished",
                                ["policy", "version"], registry=r)
        self.episode_cost = Histogram(f"{PREFIX}_episode_cost", "Cost of finished episodes",
                                      ["policy", "version"], buckets=EPISODE_COST_BUCKETS,
                                      registry=r)
        self.last_episode_cost = Gauge(f"{PREFIX}_last_episode_cost",
                                       "Cost of the latest finished episode",
                                       ["policy", "version"], registry=r)
        self.last_episode_return = Gauge(f"{PREFIX}_last_episode_return",
                                         "Return of the latest finished episode",
                                         ["policy", "version"], registry=r)
        self.violations = Counter(f"{PREFIX}_cost_limit_violations",
                                  "Finished episodes whose cost exceeded the policy's cost_limit",
                                  ["policy", "version"], registry=r)
        self.cost_limit = Gauge(f"{PREFIX}_cost_limit", "The policy's episode cost budget",
                                ["policy", "version"], registry=r)
        self.cost_rate = Gauge(f"{PREFIX}_cost_rate",
                               "Cost per step over the most recent reported steps", ["policy"],
                               registry=r)
        self.rolling_episode_cost = Gauge(f"{PREFIX}_rolling_episode_cost",
                                          "Mean cost of the most recent finished episodes",
                                          ["policy"], registry=r)
        self.onnx_providers = Info(f"{PREFIX}_onnx_providers", "onnxruntime execution "
                                   "providers the server asks its sessions for, in order",
                                   registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}
        self._bound: dict[tuple[str, str, int], BoundCall] = {}
        for method in METHODS:
            self.latency.labels(method)
            self.in_flight.labels(method)
        self.reloads.labels("ok")
        self.reloads.labels("failed")

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def bound(self, method: str, policy: str, version: int) -> BoundCall:
        """The cached :class:`BoundCall` of ``method`` on ``policy``/``version``."""
        key = (method, policy, version)
        found = self._bound.get(key)
        if found is None:
            found = self._bound[key] = BoundCall(self, method, policy, str(version))
        return found

    def record_call(self, method: str, policy: str, version: str, code: str,
                    seconds: float) -> None:
        self.child(self.requests, method, policy, version, code).inc()
        self.child(self.latency, method).observe(seconds)

    def calls_of(self, policy: str, version: int) -> list[BoundCall]:
        """Every :class:`BoundCall` of ``policy``/``version`` so far (one per method that
        resolved it)."""
        return [bound for (_, name, number), bound in list(self._bound.items())
                if name == policy and number == version]

    def set_loaded(self, entries: Iterable[tuple[str, list[int]]]) -> None:
        """Loaded-version gauges for every policy (zero for policies with nothing servable)."""
        for name, versions in entries:
            self.child(self.loaded_versions, name).set(len(versions))
            self.child(self.serving_version, name).set(max(versions) if versions else 0)


class BoundCall:
    """The metric children a successful call of one method, policy and version updates,
    looked up once: ``requests{code="OK"}`` and the method's latency histogram; plus plain
    running totals (calls, seconds, the last call's wall-clock time) that the Open Inference
    Protocol's model statistics read."""

    __slots__ = ("count", "last_ms", "latency", "method", "ok", "policy", "rows", "seconds",
                 "version")

    def __init__(self, metrics: ServerMetrics, method: str, policy: str, version: str) -> None:
        self.method, self.policy, self.version = method, policy, version
        self.ok = metrics.child(metrics.requests, method, policy, version, "OK")
        self.latency = metrics.child(metrics.latency, method)
        self.count = 0
        self.seconds = 0.0
        self.rows = 0
        self.last_ms = 0

    def record_ok(self, seconds: float, rows: int = 0) -> None:
        """Count one successful call that took ``seconds`` and inferred ``rows`` observations."""
        self.ok.inc()
        self.latency.observe(seconds)
        self.count += 1
        self.seconds += seconds
        self.rows += rows
        self.last_ms = int(time() * 1000)


def start_metrics_server(metrics: ServerMetrics, port: int, host: str = "0.0.0.0") -> Any:
    """Serve ``/metrics`` over HTTP; returns the server object (``.shutdown()`` stops it)."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server
