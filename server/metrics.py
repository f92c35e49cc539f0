"""Prometheus metrics of the policy server, on their own registry and HTTP port.

Names follow Prometheus conventions: ``safepolicy_server_`` prefix, base units (seconds),
``_total`` on counters (added by prometheus_client). Labels that come from requests are only
ever names the server already knows (a resolved policy and version), never raw client input,
so a client cannot blow up the series count; an unresolved call is labelled ``policy=""``.

Label children are cached in plain dicts: ``metric.labels(...)`` validates its arguments on
every call, which is measurable at the request rates of the ``Act`` path. The four metrics
every call writes (requests, request duration, in-flight, batch size) go one step further:
they are plain Python numbers (:class:`RunningHistogram`, :class:`BoundCall`) updated on the
event loop and turned into Prometheus families only when scraped (:class:`CallCollector`).
prometheus_client's own Counter, Gauge and Histogram take a lock and walk their buckets on
every update (the README's serving section has what replacing them gained). Every
update of them happens on the event loop thread; the scrape runs on the metrics thread and
copies each dict before walking it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
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
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

PREFIX = "safepolicy_server"
# sub-millisecond resolution where unary calls live (about 0.5-1.5 ms on loopback)
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
EPISODE_COST_BUCKETS = (0, 1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 200, 500, 1000)
METHODS = (
    "Act",
    "ActStream",
    "ListPolicies",
    "GetPolicy",
    "ReportOutcome",
    "Reload",
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "RepositoryIndex",
    "ModelConfig",
    "ModelStatistics",
)


class ServerMetrics:
    """Every metric the server exports, registered on ``registry`` (a private one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # the four per-call metrics: plain numbers, exported by CallCollector at scrape time
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.latency: dict[str, RunningHistogram] = {}
        self.in_flight: dict[str, InFlight] = {}
        self.batch_size: dict[str, RunningHistogram] = {}
        self._bound: dict[tuple[str, str, int], BoundCall] = {}
        r.register(CallCollector(self))
        self.loaded_versions = Gauge(
            f"{PREFIX}_loaded_versions",
            "Versions of a policy loaded and servable",
            ["policy"],
            registry=r,
        )
        self.serving_version = Gauge(
            f"{PREFIX}_serving_version",
            "Version answering requests that name none",
            ["policy"],
            registry=r,
        )
        self.ready = Gauge(f"{PREFIX}_ready", "1 when at least one policy is servable", registry=r)
        self.reloads = Counter(
            f"{PREFIX}_reloads", "Repository scans by result (ok, failed)", ["result"], registry=r
        )
        self.reload_failures = Counter(
            f"{PREFIX}_reload_failures",
            "Versions that failed to load (the previous one kept serving)",
            ["policy", "version"],
            registry=r,
        )
        # from ReportOutcome: what clients observe in the field
        self.outcome_steps = Counter(
            f"{PREFIX}_outcome_steps",
            "Environment steps reported by clients",
            ["policy", "version"],
            registry=r,
        )
        self.outcome_cost = Counter(
            f"{PREFIX}_outcome_cost", "Cost reported by clients", ["policy", "version"], registry=r
        )
        self.episodes = Counter(
            f"{PREFIX}_episodes", "Episodes reported finished", ["policy", "version"], registry=r
        )
        self.episode_cost = Histogram(
            f"{PREFIX}_episode_cost",
            "Cost of finished episodes",
            ["policy", "version"],
            buckets=EPISODE_COST_BUCKETS,
            registry=r,
        )
        self.last_episode_cost = Gauge(
            f"{PREFIX}_last_episode_cost",
            "Cost of the latest finished episode",
            ["policy", "version"],
            registry=r,
        )
        self.last_episode_return = Gauge(
            f"{PREFIX}_last_episode_return",
            "Return of the latest finished episode",
            ["policy", "version"],
            registry=r,
        )
        self.violations = Counter(
            f"{PREFIX}_cost_limit_violations",
            "Finished episodes whose cost exceeded the policy's cost_limit",
            ["policy", "version"],
            registry=r,
        )
        self.cost_limit = Gauge(
            f"{PREFIX}_cost_limit",
            "The policy's episode cost budget",
            ["policy", "version"],
            registry=r,
        )
        self.cost_rate = Gauge(
            f"{PREFIX}_cost_rate",
            "Cost per step over the most recent reported steps",
            ["policy"],
            registry=r,
        )
        self.rolling_episode_cost = Gauge(
            f"{PREFIX}_rolling_episode_cost",
            "Mean cost of the most recent finished episodes",
            ["policy"],
            registry=r,
        )
        self.onnx_providers = Info(
            f"{PREFIX}_onnx_providers",
            "onnxruntime execution providers the server asks its sessions for, in order",
            registry=r,
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        for method in METHODS:
            self.latency_of(method)
            self.in_flight_of(method)
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

    def latency_of(self, method: str) -> RunningHistogram:
        """The request-duration histogram of ``method``."""
        found = self.latency.get(method)
        if found is None:
            found = self.latency[method] = RunningHistogram(LATENCY_BUCKETS)
        return found

    def in_flight_of(self, method: str) -> InFlight:
        """The in-flight gauge of ``method``."""
        found = self.in_flight.get(method)
        if found is None:
            found = self.in_flight[method] = InFlight()
        return found

    def batch_size_of(self, policy: str) -> RunningHistogram:
        """The batch-size histogram of ``policy`` (observations per onnxruntime call)."""
        found = self.batch_size.get(policy)
        if found is None:
            found = self.batch_size[policy] = RunningHistogram(BATCH_BUCKETS)
        return found

    def record_call(
        self, method: str, policy: str, version: str, code: str, seconds: float
    ) -> None:
        """Count one call outside the :class:`BoundCall` path (failures, unlabelled calls)."""
        key = (method, policy, version, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency_of(method).observe(seconds)

    def calls_of(self, policy: str, version: int) -> list[BoundCall]:
        """Every :class:`BoundCall` of ``policy``/``version`` so far (one per method that
        resolved it)."""
        return [
            bound
            for (_, name, number), bound in list(self._bound.items())
            if name == policy and number == version
        ]

    def set_loaded(self, entries: Iterable[tuple[str, list[int]]]) -> None:
        """Loaded-version gauges for every policy (zero for policies with nothing servable)."""
        for name, versions in entries:
            self.child(self.loaded_versions, name).set(len(versions))
            self.child(self.serving_version, name).set(max(versions) if versions else 0)


class RunningHistogram:
    """A histogram as plain numbers: per-bucket counts (not cumulative) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, Prometheus' "le"
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs as Prometheus exposes them, +Inf last."""
        counts = list(self.counts)
        total = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return buckets


class InFlight:
    """A gauge as one plain number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


class BoundCall:
    """The running totals one method on one policy version updates on every successful call,
    looked up once: ``requests{code="OK"}`` (``count``), the method's latency histogram, and
    the rows, seconds and last wall-clock time that the Open Inference Protocol's model
    statistics read."""

    __slots__ = ("count", "last_ms", "latency", "method", "policy", "rows", "seconds", "version")

    def __init__(self, metrics: ServerMetrics, method: str, policy: str, version: str) -> None:
        self.method, self.policy, self.version = method, policy, version
        self.latency = metrics.latency_of(method)
        self.count = 0
        self.seconds = 0.0
        self.rows = 0
        self.last_ms = 0

    def record_ok(self, seconds: float, rows: int = 0) -> None:
        """Count one successful call that took ``seconds`` and inferred ``rows`` observations."""
        self.latency.observe(seconds)
        self.count += 1
        self.seconds += seconds
        self.rows += rows
        self.last_ms = int(time() * 1000)


class CallCollector:
    """Exports the per-call numbers of a :class:`ServerMetrics` as Prometheus families."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: the names are fixed and do not clash

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        requests = CounterMetricFamily(
            f"{PREFIX}_requests",
            "Calls (stream messages for ActStream) by method, policy, version and gRPC status code",
            labels=["method", "policy", "version", "code"],
        )
        counts = dict(m.requests)
        for bound in list(m._bound.values()):
            if bound.count:
                key = (bound.method, bound.policy, bound.version, "OK")
                counts[key] = counts.get(key, 0) + bound.count
        for labels, value in sorted(counts.items()):
            requests.add_metric(list(labels), value)
        yield requests
        latency = HistogramMetricFamily(
            f"{PREFIX}_request_duration_seconds",
            "Time from receiving a call (stream message) to its answer",
            labels=["method"],
        )
        for method, histogram in sorted(m.latency.items()):
            latency.add_metric([method], histogram.cumulative(), histogram.sum)
        yield latency
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_in_flight_requests", "Calls being served now", labels=["method"]
        )
        for method, gauge in sorted(m.in_flight.items()):
            in_flight.add_metric([method], gauge.value)
        yield in_flight
        batch = HistogramMetricFamily(
            f"{PREFIX}_batch_size",
            "Observations per onnxruntime call (after micro-batching)",
            labels=["policy"],
        )
        for policy, histogram in sorted(m.batch_size.items()):
            batch.add_metric([policy], histogram.cumulative(), histogram.sum)
        yield batch


def start_metrics_server(metrics: ServerMetrics, port: int, host: str = "0.0.0.0") -> Any:
    """Serve ``/metrics`` over HTTP; returns the server object (``.shutdown()`` stops it)."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server
