"""The Open Inference Protocol v2 (KServe/Triton gRPC API) over the same policy store.

A model is a policy, its versions are the policy's integer versions written as strings.
Inputs: one FP32 tensor ``obs`` of shape ``[batch, obs_dim]``, in ``raw_input_contents`` (what
tritonclient sends) or in typed ``contents.fp32_contents``. Output: FP32 ``action``
``[batch, action_dim]``, always returned in ``raw_output_contents`` as Triton does.
Request parameters: ``sample`` (bool, default false: deterministic) and ``seed`` (int64).
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

import grpc
import numpy as np

from safepolicy.server._generated import grpc_predict_v2_pb2 as pb
from safepolicy.server._generated import grpc_predict_v2_pb2_grpc
from safepolicy.server.app import UNRESOLVED, PolicyServer, labels_of
from safepolicy.server.errors import InvalidRequest, NotReady, VersionNotFound
from safepolicy.server.policies import LoadedVersion
from safepolicy.server.tensors import encode_float32

INPUT_NAME = "obs"
OUTPUT_NAME = "action"
PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "safepolicy"


def server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("safepolicy")
    except PackageNotFoundError:
        return "0+unknown"


def _parse_version(text: str) -> int | None:
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):  # "²".isdigit() is True, int("²") fails
        raise InvalidRequest(f"model_version {text!r} is not an integer version; leave it empty "
                             "for the serving version")
    return int(text)


def _parameter(parameters: Any, name: str) -> Any:
    if name not in parameters:
        return None
    parameter = parameters[name]
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


class InferenceServicer(grpc_predict_v2_pb2_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` for tritonclient, kserve and other OIP clients."""

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self.store = server.store
        self._version = server_version()

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext,
                         ) -> pb.ServerLiveResponse:
        self.server.record_ok("ServerLive", UNRESOLVED, perf_counter())
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        self.server.record_ok("ServerReady", UNRESOLVED, perf_counter())
        return pb.ServerReadyResponse(ready=self.store.ready and not self.server.draining)

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        started = perf_counter()
        try:
            version = _parse_version(request.version)
            try:
                self.store.resolve(request.name, version)
                ready = not self.server.draining
            except (NotReady, VersionNotFound):
                ready = False  # known model, not servable: an answer, not an error
        except Exception as error:
            await self.server.fail("ModelReady", UNRESOLVED, started, error, context)
            raise
        self.server.record_ok("ModelReady", UNRESOLVED, started)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        self.server.record_ok("ServerMetadata", UNRESOLVED, perf_counter())
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=[])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        started = perf_counter()
        labels = UNRESOLVED
        try:
            loaded = self.store.resolve(request.name, _parse_version(request.version))
            labels = labels_of(loaded)
            entry = next(e for e in self.store.entries() if e.name == loaded.name)
        except Exception as error:
            await self.server.fail("ModelMetadata", labels, started, error, context)
            raise
        tensor = pb.ModelMetadataResponse.TensorMetadata
        response = pb.ModelMetadataResponse(
            name=loaded.name, versions=[str(v) for v in sorted(entry.versions)],
            platform=PLATFORM,
            inputs=[tensor(name=INPUT_NAME, datatype="FP32", shape=[-1, loaded.metadata.obs_dim])],
            outputs=[tensor(name=OUTPUT_NAME, datatype="FP32",
                            shape=[-1, loaded.metadata.action_dim])])
        self.server.record_ok("ModelMetadata", labels, started)
        return response

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        started = perf_counter()
        in_flight = self.server.metrics.child(self.server.metrics.in_flight, "ModelInfer")
        in_flight.inc()
        loaded: LoadedVersion | None = None
        try:
            self.server.check_accepting()
            loaded = self.store.resolve(request.model_name, _parse_version(request.model_version))
            response = await self._infer(loaded, request, context)
            self.server.record_ok("ModelInfer", labels_of(loaded), started)
            return response
        except Exception as error:
            labels = UNRESOLVED if loaded is None else labels_of(loaded)
            await self.server.fail("ModelInfer", labels, started, error, context)
            raise
        finally:
            in_flight.dec()

    async def _infer(self, loaded: LoadedVersion, request: pb.ModelInferRequest,
                     context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
            names = [tensor.name for tensor in request.inputs]
            raise InvalidRequest(f"model {loaded.name!r} takes exactly one input named "
                                 f"{INPUT_NAME!r} (FP32 [batch, {loaded.metadata.obs_dim}]), "
                                 f"got {names}")
        tensor = request.inputs[0]
        if tensor.datatype != "FP32":
            raise InvalidRequest(f"input {INPUT_NAME!r} must be FP32, got {tensor.datatype!r}")
        for output in request.outputs:
            if output.name != OUTPUT_NAME:
                raise InvalidRequest(f"unknown output {output.name!r}; model {loaded.name!r} "
                                     f"has one output, {OUTPUT_NAME!r}")
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise InvalidRequest("raw_input_contents must hold one entry per input (1)")
            data = request.raw_input_contents[0]
        else:
            data = encode_float32(np.asarray(tensor.contents.fp32_contents, dtype=np.float32))[1]
        if len(tensor.shape) != 2:
            raise InvalidRequest(f"input {INPUT_NAME!r} needs shape [batch, "
                                 f"{loaded.metadata.obs_dim}], got {list(tensor.shape)}")
        observations, _ = self.server.decode_observations(loaded, tensor.shape, data)
        sample = _parameter(request.parameters, "sample")
        seed = _parameter(request.parameters, "seed")
        if sample is not None and not isinstance(sample, bool):
            raise InvalidRequest("parameter 'sample' must be a bool")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise InvalidRequest("parameter 'seed' must be a non-negative integer")
        actions = await self.server.compute(loaded, observations, sample=bool(sample), seed=seed,
                                            context=context)
        shape, raw = encode_float32(actions)
        return pb.ModelInferResponse(
            model_name=loaded.name, model_version=str(loaded.version), id=request.id,
            outputs=[pb.ModelInferResponse.InferOutputTensor(name=OUTPUT_NAME, datatype="FP32",
                                                             shape=shape)],
            raw_output_contents=[raw])

