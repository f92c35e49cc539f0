"""The Open Inference Protocol service, queried by tritonclient.grpc (a client nobody here wrote).

tritonclient registers its own copy of the ``inference`` proto package, which cannot live in
one process with the server's (duplicate symbols), so the client runs in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from safepolicy.export.artifact import load_policy
from safepolicy.server._generated import grpc_predict_v2_pb2 as pb
from safepolicy.server._generated import grpc_predict_v2_pb2_grpc
from safepolicy.server.settings import ServerSettings
from safepolicy.server.testing import ServerThread, make_policy, observations

TRITON_SCRIPT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

url, obs = sys.argv[1], np.array(json.loads(sys.argv[2]), dtype=np.float32)
client = tc.InferenceServerClient(url)

def status(call):
    try:
        call()
        return "OK"
    except InferenceServerException as error:
        return error.status()

def tensor(array, name="obs"):
    item = tc.InferInput(name, list(array.shape), "FP32")
    item.set_data_from_numpy(array)
    return item

result = client.infer("ballrun", [tensor(obs)], outputs=[tc.InferRequestedOutput("action")],
                      request_id="req-1")
response = result.get_response()
nan = obs.copy()
nan[0, 0] = np.nan
print(json.dumps({
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready("ballrun"),
    "model_ready_v1": client.is_model_ready("ballrun", "1"),
    "model_ready_v5": client.is_model_ready("ballrun", "5"),
    "server_metadata": client.get_server_metadata(as_json=True),
    "metadata": client.get_model_metadata("ballrun", as_json=True),
    "actions": result.as_numpy("action").tolist(),
    "version": response.model_version,
    "id": response.id,
    "sampled": client.infer("ballrun", [tensor(obs)], parameters={"sample": True, "seed": 3})
        .as_numpy("action").tolist(),
    "bad_shape": status(lambda: client.infer("ballrun", [tensor(np.zeros((1, 3), np.float32))])),
    "nan": status(lambda: client.infer("ballrun", [tensor(nan)])),
    "unknown_model": status(lambda: client.infer("nope", [tensor(obs)])),
    "unknown_version": status(lambda: client.infer("ballrun", [tensor(obs)], model_version="7")),
    "wrong_input": status(lambda: client.infer("ballrun", [tensor(obs, "x")])),
    "unknown_metadata": status(lambda: client.get_model_metadata("nope")),
    "index": client.get_model_repository_index(as_json=True),
    "config": client.get_model_config("ballrun", as_json=True),
    "unknown_config": status(lambda: client.get_model_config("nope")),
    "stats": client.get_inference_statistics("ballrun", as_json=True),
    "all_stats": client.get_inference_statistics(as_json=True),
    "extras": {name: array.tolist() for name, array in zip(
        ("action", "log_std", "mean"), (lambda r: [r.as_numpy(n) for n in
        ("action", "log_std", "mean")])(client.infer("ballrun", [tensor(obs)], outputs=[
            tc.InferRequestedOutput(n) for n in ("action", "log_std", "mean")])))},
    "unknown_output": status(lambda: client.infer("ballrun", [tensor(obs)], outputs=[
        tc.InferRequestedOutput("nope")])),
}))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Path]]:
    repo = tmp_path_factory.mktemp("repo")
    version_dir = make_policy(repo, "ballrun", 1)
    broken = make_policy(repo, "broken", 1, seed=2)
    (broken / "policy.onnx").write_bytes(b"not a model")
    settings = ServerSettings(
        repo=repo, host="127.0.0.1", port=0, metrics_port=None, poll_interval_s=0, grace_s=1
    )
    with ServerThread(settings) as server:
        yield server, version_dir


def test_tritonclient_works_unchanged(served: tuple[ServerThread, Path]) -> None:
    server, version_dir = served
    obs = observations(3)
    result = subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT, server.target, json.dumps(obs.tolist())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["live"] and reply["ready"] and reply["model_ready"] and reply["model_ready_v1"]
    assert not reply["model_ready_v5"]
    assert reply["server_metadata"]["name"] == "safepolicy"
    metadata = reply["metadata"]
    assert metadata["name"] == "ballrun" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "obs", "datatype": "FP32", "shape": ["-1", "8"]}]
    assert metadata["outputs"] == [
        {"name": name, "datatype": "FP32", "shape": ["-1", "2"]}
        for name in ("action", "mean", "log_std")
    ]
    expected = load_policy(version_dir)(obs)
    np.testing.assert_allclose(np.array(reply["actions"]), expected, atol=1e-6)
    assert reply["version"] == "1" and reply["id"] == "req-1"
    assert not np.allclose(np.array(reply["sampled"]), expected)
    assert reply["bad_shape"] == "StatusCode.INVALID_ARGUMENT"
    assert reply["nan"] == "StatusCode.INVALID_ARGUMENT"
    assert reply["wrong_input"] == "StatusCode.INVALID_ARGUMENT"
    assert reply["unknown_model"] == "StatusCode.NOT_FOUND"
    assert reply["unknown_version"] == "StatusCode.NOT_FOUND"
    assert reply["unknown_metadata"] == "StatusCode.NOT_FOUND"
    assert reply["unknown_config"] == "StatusCode.NOT_FOUND"
    assert reply["unknown_output"] == "StatusCode.INVALID_ARGUMENT"
    # the broken policy is listed UNAVAILABLE with its reason, ballrun/1 READY
    index = {(m["name"], m.get("version", "")): m for m in reply["index"]["models"]}
    assert index[("ballrun", "1")]["state"] == "READY"
    assert index[("broken", "")]["state"] == "UNAVAILABLE"
    assert "MODEL_REPO" in index[("broken", "")]["reason"]
    config = reply["config"]["config"]
    assert config["name"] == "ballrun" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 1024 and config["version_policy"] == {
        "latest": {"num_versions": 1}
    }
    assert config["input"] == [{"name": "obs", "data_type": "TYPE_FP32", "dims": ["8"]}]
    assert [o["name"] for o in config["output"]] == ["action", "mean", "log_std"]
    assert all(o["dims"] == ["2"] for o in config["output"])
    # extra outputs by name, in any order, agree with the graph's own outputs
    graph = load_policy(version_dir).outputs(obs)
    extras = reply["extras"]
    np.testing.assert_allclose(np.array(extras["action"]), graph.action, atol=1e-6)
    np.testing.assert_allclose(np.array(extras["mean"]), graph.mean, atol=1e-6)
    np.testing.assert_allclose(np.array(extras["log_std"]), graph.log_std, atol=1e-6)
    (stats,) = reply["stats"]["model_stats"]
    assert stats["name"] == "ballrun" and stats["version"] == "1"
    # when the statistics were asked for: one deterministic and one sampled inference of 3
    # rows had succeeded, and three had failed on ballrun/1 (bad shape, NaN, wrong input;
    # the unknown version never resolved to a loaded version, so it counts against none)
    assert int(stats["execution_count"]) == 2 and int(stats["inference_count"]) == 6
    success = stats["inference_stats"]["success"]
    assert int(success["count"]) == 2 and int(success["ns"]) > 0
    assert int(stats["inference_stats"]["fail"]["count"]) == 3
    assert int(stats["last_inference"]) > 0
    assert reply["all_stats"]["model_stats"][0]["name"] == "ballrun"


def test_typed_contents_are_accepted(served: tuple[ServerThread, Path]) -> None:
    server, version_dir = served
    obs = observations(2)
    request = pb.ModelInferRequest(
        model_name="ballrun",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="obs",
                datatype="FP32",
                shape=[2, 8],
                contents=pb.InferTensorContents(fp32_contents=obs.ravel().tolist()),
            )
        ],
    )
    with grpc.insecure_channel(server.target) as channel:
        stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, timeout=5)
        with pytest.raises(grpc.RpcError) as caught:
            request.inputs[0].datatype = "FP64"
            stub.ModelInfer(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    actions = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 2)
    np.testing.assert_allclose(actions, load_policy(version_dir)(obs), atol=1e-6)
