"""The Open Inference Protocol v2 over gRPC (KServe's API plus Triton's repository index,
model configuration and statistics): converts messages, nothing more.

What a model, its inputs, outputs and parameters are is :mod:`server.inference_protocol`.
Inputs come in ``raw_input_contents`` (what tritonclient sends) or in typed
``contents.fp32_contents``; outputs always go back in ``raw_output_contents``, as Triton does.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from safepolicy.server._generated import grpc_predict_v2_pb2 as pb
from safepolicy.server._generated import grpc_predict_v2_pb2_grpc
from safepolicy.server.calls import Call, unary
from safepolicy.server.dataplane import DataPlane
from safepolicy.server.errors import InvalidRequest
from safepolicy.server.inference_protocol import (
    DATATYPE,
    EXTENSIONS,
    SERVER_NAME,
    InferRequest,
    infer,
    model_config,
    model_metadata,
    model_ready,
    model_statistics,
    parse_version,
    repository_index,
)
from safepolicy.server.tensors import encode_float32
from safepolicy.version import package_version

# Triton's DataType enum value of TYPE_FP32 (model_config.proto)
DATA_TYPES = {"TYPE_FP32": pb.TYPE_FP32}


def _parameter(parameters: Any, name: str) -> Any:
    if name not in parameters:
        return None
    parameter = parameters[name]
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def _infer_request(request: pb.ModelInferRequest) -> InferRequest:
    """The transport-free request; the observations' bytes from either encoding."""
    names = [tensor.name for tensor in request.inputs]
    tensor = request.inputs[0] if request.inputs else pb.ModelInferRequest.InferInputTensor()
    if request.raw_input_contents:
        if len(request.raw_input_contents) != len(request.inputs):
            raise InvalidRequest(
                f"raw_input_contents must hold one entry per input ({len(request.inputs)})"
            )
        data = request.raw_input_contents[0]
    else:
        data = encode_float32(np.asarray(tensor.contents.fp32_contents, dtype=np.float32))[1]
    return InferRequest(
        model=request.model_name,
        version=request.model_version,
        input_names=names,
        datatype=tensor.datatype,
        shape=list(tensor.shape),
        data=data,
        outputs=[output.name for output in request.outputs],
        sample=_parameter(request.parameters, "sample"),
        seed=_parameter(request.parameters, "seed"),
    )


class InferenceServicer(grpc_predict_v2_pb2_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` for tritonclient, kserve and other OIP clients."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.store = plane.store
        self._version = package_version()

    @unary("ServerLive")
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @unary("ServerReady")
    async def ServerReady(
        self,
        request: pb.ServerReadyRequest,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.store.ready and not self.plane.draining)

    @unary("ModelReady")
    async def ModelReady(
        self,
        request: pb.ModelReadyRequest,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=model_ready(self.plane, request.name, request.version))

    @unary("ServerMetadata")
    async def ServerMetadata(
        self,
        request: pb.ServerMetadataRequest,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=self._version, extensions=list(EXTENSIONS)
        )

    @unary("ModelMetadata")
    async def ModelMetadata(
        self,
        request: pb.ModelMetadataRequest,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> pb.ModelMetadataResponse:
        loaded = self.plane.resolve(call, request.name, parse_version(request.version))
        metadata = model_metadata(self.plane, loaded)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[tensor(**item) for item in metadata["inputs"]],
            outputs=[tensor(**item) for item in metadata["outputs"]],
        )

    @unary("ModelInfer", track_in_flight=True)
    async def ModelInfer(
        self,
        request: pb.ModelInferRequest,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> pb.ModelInferResponse:
        outputs = await infer(
            self.plane, call, _infer_request(request), time_remaining=context.time_remaining()
        )
        assert call.loaded is not None
        response = pb.ModelInferResponse(
            model_name=call.loaded.name, model_version=str(call.loaded.version), id=request.id
        )
        for name, values in outputs.items():
            shape, raw = encode_float32(values)
            response.outputs.add(name=name, datatype=DATATYPE, shape=shape)
            response.raw_output_contents.append(raw)
        return response

    @unary("RepositoryIndex")
    async def RepositoryIndex(
        self,
        request: pb.RepositoryIndexRequest,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> pb.RepositoryIndexResponse:
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[index(**model) for model in repository_index(self.plane, request.ready)]
        )

    @unary("ModelConfig")
    async def ModelConfig(
        self,
        request: pb.ModelConfigRequest,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> pb.ModelConfigResponse:
        loaded = self.plane.resolve(call, request.name, parse_version(request.version))
        config = model_config(self.plane, loaded)
        policy = config["version_policy"]
        return pb.ModelConfigResponse(
            config=pb.ModelConfig(
                name=config["name"],
                platform=config["platform"],
                backend=config["backend"],
                max_batch_size=config["max_batch_size"],
                version_policy=pb.ModelVersionPolicy(
                    latest=pb.ModelVersionPolicy.Latest(**policy["latest"])
                    if "latest" in policy
                    else None,
                    all=pb.ModelVersionPolicy.All() if "all" in policy else None,
                    specific=pb.ModelVersionPolicy.Specific(**policy["specific"])
                    if "specific" in policy
                    else None,
                ),
                input=[
                    pb.ModelInput(
                        name=item["name"],
                        data_type=DATA_TYPES[item["data_type"]],
                        dims=item["dims"],
                    )
                    for item in config["input"]
                ],
                output=[
                    pb.ModelOutput(
                        name=item["name"],
                        data_type=DATA_TYPES[item["data_type"]],
                        dims=item["dims"],
                    )
                    for item in config["output"]
                ],
            )
        )

    @unary("ModelStatistics")
    async def ModelStatistics(
        self,
        request: pb.ModelStatisticsRequest,
        context: grpc.aio.ServicerContext,
        call: Call,
    ) -> pb.ModelStatisticsResponse:
        duration = pb.StatisticDuration
        response = pb.ModelStatisticsResponse()
        for stats in model_statistics(self.plane, request.name, request.version):
            inference = stats["inference_stats"]
            response.model_stats.add(
                name=stats["name"],
                version=stats["version"],
                last_inference=stats["last_inference"],
                inference_count=stats["inference_count"],
                execution_count=stats["execution_count"],
                inference_stats=pb.InferStatistics(
                    success=duration(**inference["success"]), fail=duration(**inference["fail"])
                ),
            )
        return response
