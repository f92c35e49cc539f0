"""The Open Inference Protocol over HTTP/REST (``--http-port``), against a live server.

Most tests speak the protocol's JSON with the standard library's ``http.client``, as curl
would; ``test_tritonclient_http_works_unchanged`` runs tritonclient.http (a client nobody here
wrote) in a subprocess, so gevent never shares a process with the server's event loop.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from safepolicy.export.artifact import load_policy
from safepolicy.server.settings import ServerSettings
from safepolicy.server.testing import ServerThread, make_policy, observations

OBS_DIM = 8


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Path]]:
    repo = tmp_path_factory.mktemp("http") / "repo"
    version_dir = make_policy(repo, "ballrun", 1, seed=1)
    broken = make_policy(repo, "broken", 1, seed=2)
    (broken / "policy.onnx").write_bytes(b"not a model")
    settings = ServerSettings(
        repo=repo,
        host="127.0.0.1",
        port=0,
        http_port=0,
        metrics_port=None,
        poll_interval_s=0,
        grace_s=1,
        max_message_bytes=1 << 16,
    )
    with ServerThread(settings) as server:
        yield server, version_dir


def call(
    server: ServerThread,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request."""
    conn = connection or http.client.HTTPConnection(
        "127.0.0.1", server.server.http_port, timeout=10
    )
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers or {})
    response = conn.getresponse()
    payload = json.loads(response.read())
    if connection is None:
        conn.close()
    return response.status, payload


def infer_body(obs: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "obs", "shape": list(obs.shape), "datatype": "FP32", "data": obs.tolist()}
        ],
        **extra,
    }


TRITON_HTTP_SCRIPT = r"""
import json, sys
import numpy as np
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

url, obs = sys.argv[1], np.array(json.loads(sys.argv[2]), dtype=np.float32)
client = th.InferenceServerClient(url)

def status(call):
    try:
        call()
        return "OK"
    except InferenceServerException as error:
        return error.status()

def tensor(array, name="obs", binary=False):
    item = th.InferInput(name, list(array.shape), "FP32")
    item.set_data_from_numpy(array, binary_data=binary)
    return item

json_result = client.infer("ballrun", [tensor(obs)],
                           outputs=[th.InferRequestedOutput("action", binary_data=False)])
print(json.dumps({
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready("ballrun"),
    "server_metadata": client.get_server_metadata(),
    "metadata": client.get_model_metadata("ballrun"),
    "config": client.get_model_config("ballrun"),
    "actions": json_result.as_numpy("action").tolist(),
    "binary_in_actions": client.infer(
        "ballrun", [tensor(obs, binary=True)],
        outputs=[th.InferRequestedOutput("action", binary_data=False)]).as_numpy("action").tolist(),
    "unknown_model": status(lambda: client.infer("nope", [tensor(obs)])),
    "bad_shape": status(lambda: client.infer("ballrun", [tensor(np.zeros((1, 3), np.float32))])),
    "stats": client.get_inference_statistics("ballrun"),
}))
"""


def test_tritonclient_http_works_unchanged(served: tuple[ServerThread, Path]) -> None:
    server, version_dir = served
    obs = observations(3, OBS_DIM)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            TRITON_HTTP_SCRIPT,
            f"127.0.0.1:{server.server.http_port}",
            json.dumps(obs.tolist()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["live"] and reply["ready"] and reply["model_ready"]
    assert reply["server_metadata"]["name"] == "safepolicy"
    assert reply["metadata"]["name"] == "ballrun" and reply["metadata"]["versions"] == ["1"]
    assert reply["config"]["platform"] == "onnxruntime_onnx"
    expected = load_policy(version_dir)(obs)
    np.testing.assert_allclose(np.array(reply["actions"]), expected, atol=1e-6)
    np.testing.assert_allclose(np.array(reply["binary_in_actions"]), expected, atol=1e-6)
    assert reply["unknown_model"] == "404" and reply["bad_shape"] == "400"
    (model_stats,) = reply["stats"]["model_stats"]
    assert (
        model_stats["name"] == "ballrun" and model_stats["inference_stats"]["success"]["count"] >= 2
    )


def test_health_metadata_ready_config_and_index(served: tuple[ServerThread, Path]) -> None:
    server, _ = served
    assert call(server, "GET", "/v2/health/live") == (200, {"live": True})
    assert call(server, "GET", "/v2/health/ready") == (200, {"ready": True})
    status, metadata = call(server, "GET", "/v2")
    assert status == 200 and metadata["name"] == "safepolicy"
    status, model = call(server, "GET", "/v2/models/ballrun")
    assert status == 200 and model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "obs", "datatype": "FP32", "shape": [-1, OBS_DIM]}]
    assert [o["name"] for o in model["outputs"]] == ["action", "mean", "log_std"]
    assert call(server, "GET", "/v2/models/ballrun/ready")[0] == 200
    assert call(server, "GET", "/v2/models/ballrun/versions/1/ready")[0] == 200
    assert call(server, "GET", "/v2/models/ballrun/versions/5/ready")[0] == 400  # not ready
    assert call(server, "GET", "/v2/models/broken/ready")[0] == 400
    assert call(server, "GET", "/v2/models/nope/ready")[0] == 404
    status, config = call(server, "GET", "/v2/models/ballrun/config")
    assert status == 200 and config["input"] == [
        {"name": "obs", "data_type": "TYPE_FP32", "dims": [OBS_DIM]}
    ]
    status, index = call(server, "POST", "/v2/repository/index", {})
    assert status == 200
    assert {(m["name"], m["state"]) for m in index} == {
        ("ballrun", "READY"),
        ("broken", "UNAVAILABLE"),
    }
    status, ready_only = call(server, "POST", "/v2/repository/index", {"ready": True})
    assert [m["name"] for m in ready_only] == ["ballrun"]


def test_infer_matches_the_artifact_with_extra_outputs(
    served: tuple[ServerThread, Path],
) -> None:
    server, version_dir = served
    obs = observations(3)
    graph = load_policy(version_dir).outputs(obs)
    status, reply = call(server, "POST", "/v2/models/ballrun/infer", infer_body(obs, id="req-7"))
    assert status == 200 and reply["id"] == "req-7" and reply["model_version"] == "1"
    (action,) = reply["outputs"]
    assert action["name"] == "action" and action["shape"] == [3, 2]
    np.testing.assert_allclose(np.array(action["data"]).reshape(3, 2), graph.action, atol=1e-6)
    status, reply = call(
        server,
        "POST",
        "/v2/models/ballrun/versions/1/infer",
        infer_body(obs, outputs=[{"name": "log_std"}, {"name": "mean"}]),
    )
    assert status == 200 and [o["name"] for o in reply["outputs"]] == ["log_std", "mean"]
    np.testing.assert_allclose(
        np.array(reply["outputs"][1]["data"]).reshape(3, 2), graph.mean, atol=1e-6
    )
    # sampled, seeded: repeats, differs from the deterministic action
    sampled = [
        call(
            server,
            "POST",
            "/v2/models/ballrun/infer",
            infer_body(obs, parameters={"sample": True, "seed": 3}),
        )[1]["outputs"][0]["data"]
        for _ in "ab"
    ]
    assert sampled[0] == sampled[1]
    assert not np.allclose(np.array(sampled[0]).reshape(3, 2), graph.action)


def test_binary_input_and_one_persistent_connection(served: tuple[ServerThread, Path]) -> None:
    """The binary tensor extension for inputs, several requests on one keep-alive connection
    and a body large enough that curl would send ``Expect: 100-continue``."""
    server, version_dir = served
    obs = observations(40)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "obs",
                    "shape": [40, OBS_DIM],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": obs.nbytes},
                }
            ]
        }
    ).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.server.http_port, timeout=10)
    try:
        for _ in range(3):
            status, reply = call(
                server,
                "POST",
                "/v2/models/ballrun/infer",
                header + obs.tobytes(),
                {"Inference-Header-Content-Length": str(len(header)), "Expect": "100-continue"},
                connection=conn,
            )
            assert status == 200
        assert call(server, "GET", "/v2/health/live", connection=conn)[0] == 200
    finally:
        conn.close()
    np.testing.assert_allclose(
        np.array(reply["outputs"][0]["data"]).reshape(40, 2),
        load_policy(version_dir)(obs),
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("POST", "/v2/models/ballrun/infer", b"{not json", 400, "not valid JSON"),
        ("POST", "/v2/models/ballrun/infer", {"inputs": "obs"}, 400, '"inputs" list'),
        (
            "POST",
            "/v2/models/ballrun/infer",
            infer_body(np.zeros((1, 3), np.float32)),
            400,
            "[batch, 8]",
        ),
        (
            "POST",
            "/v2/models/ballrun/infer",
            b'{"inputs": [{"name": "obs", "shape": [1, 8], '
            b'"datatype": "FP32", "data": [NaN, 0, 0, 0, 0, 0, 0, 0]}]}',
            400,
            "NaN",
        ),
        (
            "POST",
            "/v2/models/ballrun/infer",
            infer_body(observations(1), outputs=[{"name": "x"}]),
            400,
            "unknown output",
        ),
        (
            "POST",
            "/v2/models/ballrun/infer",
            {"inputs": [{"name": "obs", "shape": [1, 8], "datatype": "FP64", "data": [0] * 8}]},
            400,
            "must be FP32",
        ),
        (
            "POST",
            "/v2/models/ballrun/infer",
            infer_body(observations(1), parameters={"sample": "yes"}),
            400,
            "'sample' must be a bool",
        ),
        (
            "POST",
            "/v2/models/ballrun/versions/x/infer",
            infer_body(observations(1)),
            400,
            "not an integer version",
        ),
        ("POST", "/v2/models/nope/infer", infer_body(observations(1)), 404, "unknown policy"),
        (
            "POST",
            "/v2/models/ballrun/versions/9/infer",
            infer_body(observations(1)),
            404,
            "not served",
        ),
        (
            "POST",
            "/v2/models/broken/infer",
            infer_body(observations(1)),
            503,
            "no servable version",
        ),
        ("GET", "/v2/models/ballrun/infer", None, 405, "takes POST"),
        ("POST", "/v2/health/live", None, 405, "takes GET"),
        ("GET", "/v2/models/ballrun/explode", None, 404, "no such path"),
        ("GET", "/metrics", None, 404, "under /v2"),
    ],
)
def test_bad_requests_get_their_4xx_with_a_json_error(
    served: tuple[ServerThread, Path],
    method: str,
    path: str,
    body: Any,
    status: int,
    words: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, _ = served
    with caplog.at_level(logging.WARNING):
        got, reply = call(server, method, path, body)
    assert (got, list(reply)) == (status, ["error"])
    assert words in reply["error"]
    assert not [r for r in caplog.records if r.exc_info], "a client mistake logged a traceback"
    assert call(server, "GET", "/v2/health/live")[0] == 200


def test_chunked_oversized_and_garbage_requests_are_refused(
    served: tuple[ServerThread, Path],
) -> None:
    server, _ = served

    def raw(data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", server.server.http_port), timeout=5) as sock:
            sock.sendall(data)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    chunked = raw(
        b"POST /v2/models/ballrun/infer HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    assert chunked.startswith(b"HTTP/1.1 411 ") and b'"error"' in chunked
    # refused on its Content-Length, before a byte of the body is read
    oversized = raw(
        b"POST /v2/models/ballrun/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
    )
    assert oversized.startswith(b"HTTP/1.1 413 ") and b"exceeds the server's limit" in oversized
    garbage = raw(b"\x16\x03\x01 hello\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 ") and b'"error"' in garbage


def test_statistics_count_http_inference(served: tuple[ServerThread, Path]) -> None:
    server, _ = served
    before = call(server, "GET", "/v2/models/ballrun/stats")[1]["model_stats"][0]
    for _ in range(2):
        assert (
            call(server, "POST", "/v2/models/ballrun/infer", infer_body(observations(4)))[0] == 200
        )
    assert (
        call(server, "POST", "/v2/models/ballrun/infer", infer_body(np.zeros((1, 3), np.float32)))[
            0
        ]
        == 400
    )
    status, stats = call(server, "GET", "/v2/models/ballrun/versions/1/stats")
    (after,) = stats["model_stats"]
    assert status == 200
    assert after["execution_count"] - before["execution_count"] == 2
    assert after["inference_count"] - before["inference_count"] == 8
    assert (
        after["inference_stats"]["fail"]["count"] - before["inference_stats"]["fail"]["count"]
    ) == 1
    assert call(server, "GET", "/v2/models/stats")[1]["model_stats"][0]["name"] == "ballrun"


def test_the_bearer_token_guards_every_path_but_health(tmp_path: Path) -> None:
    make_policy(tmp_path / "repo", "ballrun", 1)
    settings = ServerSettings(
        repo=tmp_path / "repo",
        host="127.0.0.1",
        port=0,
        http_port=0,
        metrics_port=None,
        poll_interval_s=0,
        grace_s=1,
        auth_token="s3cret",
    )
    with ServerThread(settings) as server:
        assert call(server, "GET", "/v2/health/ready")[0] == 200
        status, reply = call(server, "GET", "/v2/models/ballrun")
        assert status == 401 and "Bearer" in reply["error"]
        assert (
            call(server, "GET", "/v2/models/ballrun", headers={"Authorization": "Bearer wrong"})[0]
            == 401
        )
        assert (
            call(server, "GET", "/v2/models/ballrun", headers={"Authorization": "Bearer s3cret"})[0]
            == 200
        )
