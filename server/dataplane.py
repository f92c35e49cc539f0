"""The data plane: the one request path every inference call takes, whatever its protocol.

The servicers (``safepolicy.v1`` in :mod:`server.policy_service`, the Open Inference Protocol
over gRPC in :mod:`server.oip` and over HTTP in :mod:`server.rest`) turn their messages into
a policy name, a version and packed float32 observations and call :meth:`DataPlane.act`, which
resolves the version, decodes and checks the observations once, picks where they run, runs
them and returns the actions. The call scope (:mod:`server.calls`) reports each call's outcome
here (:meth:`DataPlane.record_ok`, :meth:`DataPlane.record_failure`), so every metric a call
updates is written in this module.

Where a batch runs: small batches (``inline_max_rows``) run right on the event loop, since
onnxruntime on a small MLP costs less than the hop to a thread (about 15 us in a warm loop,
about 45 us under the benchmark's load); deterministic requests go to the micro-batcher when
batching is on; everything else goes to a worker thread so it does not stall other calls.
Nothing here knows about gRPC or HTTP: errors are :mod:`server.errors` types.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from time import perf_counter

import numpy as np

from safepolicy.export.artifact import PolicyOutputs
from safepolicy.server.batching import MicroBatcher
from safepolicy.server.calls import Call
from safepolicy.server.errors import DeadlineExceeded, ShuttingDown
from safepolicy.server.metrics import InFlight, ServerMetrics
from safepolicy.server.policies import LoadedVersion, PolicyStore
from safepolicy.server.settings import ServerSettings
from safepolicy.server.tensors import decode_float32


class DataPlane:
    """Decode, check, route, run and count inference calls for one :class:`PolicyStore`."""

    def __init__(
        self, store: PolicyStore, metrics: ServerMetrics, settings: ServerSettings
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.inline_max_rows = settings.inline_max_rows
        # set by the lifecycle once a shutdown has passed its drain delay
        self.draining = False
        self.batcher: MicroBatcher | None = None
        if settings.batching:
            self.batcher = MicroBatcher(
                self._run_batch,
                max_rows=settings.batch_max_size,
                max_delay_s=settings.batch_max_delay_ms / 1000.0,
                max_queue_rows=settings.batch_max_queue,
            )
        # failed calls by (policy, version), for the Open Inference Protocol's statistics
        self.failures: dict[tuple[str, int], int] = {}

    # ---- admission ----

    def check_accepting(self) -> None:
        """Raise :class:`ShuttingDown` once the server is draining."""
        if self.draining:
            raise ShuttingDown(
                "server is shutting down and takes no new calls or stream "
                "messages; retry or reopen the stream (another "
                "replica will answer)"
            )

    def resolve(self, call: Call, name: str, version: int | None) -> LoadedVersion:
        """The loaded version answering ``name``/``version``; labels ``call`` with it."""
        return call.resolved(self.store.resolve(name, version))

    # ---- the inference path ----

    async def act(
        self,
        call: Call,
        name: str,
        version: int | None,
        shape: Sequence[int],
        data: bytes,
        *,
        sample: bool = False,
        seed: int | None = None,
        time_remaining: float | None = None,
    ) -> tuple[np.ndarray, bool]:
        """Actions float32 ``[batch, action_dim]`` for packed observations, and True when the
        observations came as one vector ``[obs_dim]`` (the caller answers with one action).

        ``time_remaining``: seconds left before the call's deadline (None: no deadline).
        """
        self.check_accepting()
        loaded = self.resolve(call, name, version)
        observations, single = self.observations(call, loaded, shape, data)
        # the per-step path stays synchronous: no coroutine of its own for inline batches
        if self.runs_inline(observations, sample):
            return self.run_inline(
                loaded, observations, sample=sample, seed=seed, time_remaining=time_remaining
            ), single
        return await self.run_elsewhere(
            loaded, observations, sample=sample, seed=seed, time_remaining=time_remaining
        ), single

    def observations(
        self, call: Call, loaded: LoadedVersion, shape: Sequence[int], data: bytes
    ) -> tuple[np.ndarray, bool]:
        """Checked float32 ``[batch, obs_dim]`` observations; True when sent as one vector.
        The call counts their rows (inferred once it succeeds)."""
        observations = decode_float32(shape, data)
        checked = self.store.check_observations(loaded, observations)
        call.rows = checked.shape[0]
        return checked, observations.ndim == 1

    def runs_inline(self, observations: np.ndarray, sample: bool) -> bool:
        """True when these observations run right here on the event loop: no micro-batching
        applies (off, or a sampled request) and the batch is small (``inline_max_rows``)."""
        return (self.batcher is None or sample) and observations.shape[0] <= self.inline_max_rows

    async def run(
        self,
        loaded: LoadedVersion,
        observations: np.ndarray,
        *,
        sample: bool,
        seed: int | None,
        time_remaining: float | None,
    ) -> np.ndarray:
        """Actions for checked observations, by the cheapest route that keeps the loop free."""
        if self.runs_inline(observations, sample):
            return self.run_inline(
                loaded, observations, sample=sample, seed=seed, time_remaining=time_remaining
            )
        return await self.run_elsewhere(
            loaded, observations, sample=sample, seed=seed, time_remaining=time_remaining
        )

    def run_inline(
        self,
        loaded: LoadedVersion,
        observations: np.ndarray,
        *,
        sample: bool,
        seed: int | None,
        time_remaining: float | None,
    ) -> np.ndarray:
        """Actions computed now, on the event loop (small batches, see :meth:`runs_inline`)."""
        _check_deadline(time_remaining)
        self.metrics.batch_size_of(loaded.name).observe(observations.shape[0])
        return self.store.run(loaded, observations, deterministic=not sample, seed=seed)

    async def run_elsewhere(
        self,
        loaded: LoadedVersion,
        observations: np.ndarray,
        *,
        sample: bool,
        seed: int | None,
        time_remaining: float | None,
    ) -> np.ndarray:
        """Actions from the micro-batcher (deterministic requests, batching on) or from a
        worker thread (everything else that does not run inline)."""
        _check_deadline(time_remaining)
        if self.batcher is not None and not sample:
            try:
                return await asyncio.wait_for(
                    self.batcher.submit(loaded, observations), time_remaining
                )
            except TimeoutError as error:
                raise DeadlineExceeded(
                    "the call's deadline passed while waiting for a micro-batch"
                ) from error
        self.metrics.batch_size_of(loaded.name).observe(observations.shape[0])
        return await asyncio.get_running_loop().run_in_executor(
            None,
            functools.partial(
                self.store.run, loaded, observations, deterministic=not sample, seed=seed
            ),
        )

    async def run_outputs(
        self,
        loaded: LoadedVersion,
        observations: np.ndarray,
    ) -> PolicyOutputs:
        """All three graph outputs for checked observations (on the loop when small)."""
        if observations.shape[0] <= self.inline_max_rows:
            return self.store.outputs(loaded, observations)
        return await asyncio.get_running_loop().run_in_executor(
            None, self.store.outputs, loaded, observations
        )

    def _run_batch(self, loaded: LoadedVersion, observations: np.ndarray) -> np.ndarray:
        self.metrics.batch_size_of(loaded.name).observe(observations.shape[0])
        return self.store.run(loaded, observations, deterministic=True)

    # ---- what the call scope reports ----

    def record_ok(self, call: Call) -> None:
        """Count a successful call (stream message) with its latency."""
        loaded = call.loaded
        if loaded is None:
            self.metrics.record_call(call.method, "", "", "OK", perf_counter() - call.started)
        else:
            self.metrics.bound(call.method, loaded.name, loaded.version).record_ok(
                perf_counter() - call.started, call.rows
            )

    def record_failure(self, call: Call, code: str) -> None:
        """Count a failed call (stream message) with its status code's name and latency."""
        loaded = call.loaded
        policy, version = ("", "") if loaded is None else (loaded.name, str(loaded.version))
        if loaded is not None:
            key = (loaded.name, loaded.version)
            self.failures[key] = self.failures.get(key, 0) + 1
        self.metrics.record_call(call.method, policy, version, code, perf_counter() - call.started)

    def call_totals(self, loaded: LoadedVersion) -> tuple[int, int, float, int]:
        """Successful inference calls on ``loaded`` (any method): (calls, rows, seconds,
        wall-clock milliseconds of the last one, 0 for none)."""
        bound = [b for b in self.metrics.calls_of(loaded.name, loaded.version) if b.rows]
        return (
            sum(b.count for b in bound),
            sum(b.rows for b in bound),
            sum(b.seconds for b in bound),
            max((b.last_ms for b in bound), default=0),
        )

    def in_flight(self, method: str) -> InFlight:
        """The in-flight gauge of ``method``."""
        return self.metrics.in_flight_of(method)


def _check_deadline(time_remaining: float | None) -> None:
    if time_remaining is not None and time_remaining <= 0:
        raise DeadlineExceeded("the call's deadline passed before inference started")
