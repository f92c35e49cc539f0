"""k8s/: every overlay renders with kustomize and what it renders is valid.

Built-in kinds are checked by kubernetes-validate in strict mode (unknown fields are errors).
The operator kinds (PrometheusRule, ServiceMonitor, KServe's ServingRuntime and
InferenceService) are not in its schemas; they are checked here against schemas of their own,
written from those CRDs' API references for the fields these manifests use, with unknown fields
refused, and with their containers checked against Kubernetes' own Container schema.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
RENDERED = ("overlays/cpu", "overlays/gpu", "kserve")
K8S_DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/"

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (for kustomize) is not installed"
)


def _strict(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"}
METADATA = {"$ref": K8S_DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
LABEL_SELECTOR = {"$ref": K8S_DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"}
CONTAINER = {"$ref": K8S_DEFS + "io.k8s.api.core.v1.Container"}


def _crd(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _strict(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
        ("apiVersion", "kind", "metadata", "spec"),
    )


RULE = {
    **_strict(
        {
            "alert": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
            "record": {"type": "string"},
            "expr": {"type": "string", "minLength": 1},
            "for": DURATION,
            "keep_firing_for": DURATION,
            "labels": STRING_MAP,
            "annotations": STRING_MAP,
        },
        ("expr",),
    ),
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}
ENDPOINT = _strict(
    {
        "port": {"type": "string"},
        "targetPort": {"type": ["string", "integer"]},
        "path": {"type": "string"},
        "scheme": {"enum": ["http", "https"]},
        "interval": DURATION,
        "scrapeTimeout": DURATION,
        "honorLabels": {"type": "boolean"},
    }
)
MODEL_FORMAT = _strict(
    {"name": {"type": "string", "minLength": 1}, "version": {"type": "string"}}, ("name",)
)
PROTOCOLS = {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): _crd(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        _strict(
            {
                "groups": {
                    "type": "array",
                    "items": _strict(
                        {
                            "name": {"type": "string", "minLength": 1},
                            "interval": DURATION,
                            "rules": {"type": "array", "items": RULE},
                        },
                        ("name",),
                    ),
                }
            }
        ),
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _crd(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        _strict(
            {
                "selector": LABEL_SELECTOR,
                "endpoints": {"type": "array", "items": ENDPOINT, "minItems": 1},
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
            },
            ("selector",),
        ),
    ),
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): _crd(
        "serving.kserve.io/v1alpha1",
        "ServingRuntime",
        _strict(
            {
                "supportedModelFormats": {
                    "type": "array",
                    "items": _strict(
                        {
                            "name": {"type": "string", "minLength": 1},
                            "version": {"type": "string"},
                            "autoSelect": {"type": "boolean"},
                            "priority": {"type": "integer"},
                        },
                        ("name",),
                    ),
                },
                "protocolVersions": {"type": "array", "items": PROTOCOLS},
                "multiModel": {"type": "boolean"},
                "disabled": {"type": "boolean"},
                "containers": {"type": "array", "items": CONTAINER, "minItems": 1},
            },
            ("containers",),
        ),
    ),
    ("serving.kserve.io/v1beta1", "InferenceService"): _crd(
        "serving.kserve.io/v1beta1",
        "InferenceService",
        _strict(
            {
                "predictor": _strict(
                    {
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "maxReplicas": {"type": "integer", "minimum": 1},
                        "model": _strict(
                            {
                                "modelFormat": MODEL_FORMAT,
                                "runtime": {"type": "string"},
                                "protocolVersion": PROTOCOLS,
                                "storageUri": {
                                    "type": "string",
                                    "pattern": "^(pvc|s3|gs|https?)://",
                                },
                            },
                            ("modelFormat",),
                        ),
                    }
                )
            },
            ("predictor",),
        ),
    ),
}


def render(directory: str) -> list[dict[str, Any]]:
    """``kubectl kustomize k8s/DIRECTORY`` as a list of objects."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S / directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def validate(obj: dict[str, Any]) -> None:
    """Raise when ``obj`` breaks its kind's schema (strict: unknown fields are errors)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    key = (obj["apiVersion"], obj["kind"])
    if key not in CRD_SCHEMAS:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
        return
    import jsonschema
    from referencing import Registry, Resource

    definitions = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{kubernetes_validate.latest_version()}-local-strict/"
        "_definitions.json",
        kubernetes_validate.latest_version(),
    )
    registry: Registry[Any] = Resource.from_contents(definitions) @ Registry()
    jsonschema.Draft202012Validator(CRD_SCHEMAS[key], registry=registry).validate(obj)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {directory: render(directory) for directory in RENDERED}


def by_kind(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"{len(matches)} {kind} {name or ''} objects"
    return matches[0]


def server_config(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The data of the ConfigMap holding the server's settings."""
    (data,) = [
        o["data"]
        for o in objects
        if o["kind"] == "ConfigMap" and "SAFEPOLICY_SERVER_REPO" in o.get("data", {})
    ]
    return dict(data)


def test_every_overlay_renders_and_validates(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for directory, objects in rendered.items():
        for obj in objects:
            try:
                validate(obj)
            except Exception as error:
                raise AssertionError(
                    f"{directory}: {obj['kind']}/{obj['metadata']['name']}: {error!r}"
                ) from error
    kinds = {o["kind"] for o in rendered["overlays/cpu"]}
    assert kinds >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Job",
        "CronJob",
        "ServiceMonitor",
        "PrometheusRule",
    }
    assert {o["kind"] for o in rendered["kserve"]} == {"ServingRuntime", "InferenceService"}


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("Deployment", ("spec", "template", "spec", "containers", 0, "readinesProbe"), {}),
        ("Deployment", ("spec", "replicas"), "two"),
        ("ServiceMonitor", ("spec", "endpoints", 0, "intervall"), "15s"),
        ("ServiceMonitor", ("spec", "endpoints", 0, "interval"), "15 seconds"),
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "expr"), ""),
    ],
)
def test_a_broken_manifest_is_caught(
    rendered: dict[str, list[dict[str, Any]]], kind: str, path: tuple[Any, ...], value: Any
) -> None:
    obj = copy.deepcopy(by_kind(rendered["overlays/cpu"], kind))
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(Exception, match=r"(?i)valid|additional|pattern|short|type"):
        validate(obj)


def test_kserve_runtime_container_is_checked_against_the_container_schema(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    runtime = copy.deepcopy(by_kind(rendered["kserve"], "ServingRuntime"))
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "8081"
    with pytest.raises(Exception, match="not of type"):
        validate(runtime)


def test_server_deployment_probes_security_and_volumes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    from safepolicy.server.app import LIVENESS_SERVICE

    deployment = by_kind(rendered["overlays/cpu"], "Deployment", "safepolicy-server")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    assert container["readinessProbe"]["grpc"] == {"port": grpc_port}
    assert container["livenessProbe"]["grpc"] == {"port": grpc_port, "service": LIVENESS_SERVICE}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    models = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert models["readOnly"] is True
    config = next(
        o
        for o in rendered["overlays/cpu"]
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("safepolicy-server")
    )
    assert container["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    assert config["data"]["SAFEPOLICY_SERVER_REPO"] == models["mountPath"]
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_gpu_overlay_requests_gpus_and_cuda(rendered: dict[str, list[dict[str, Any]]]) -> None:
    gpu, cpu = rendered["overlays/gpu"], rendered["overlays/cpu"]
    server = by_kind(gpu, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server["image"].startswith("ghcr.io/safepolicy/server-gpu:")
    for job in (by_kind(gpu, "Job", "safepolicy-train"), by_kind(gpu, "Job", "safepolicy-sweep")):
        assert (
            job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
                "nvidia.com/gpu"
            ]
            == 1
        )
    providers = {
        name: server_config(objects)["SAFEPOLICY_SERVER_ONNX_PROVIDERS"]
        for name, objects in (("gpu", gpu), ("cpu", cpu))
    }
    assert providers == {"gpu": "cuda", "cpu": "cpu"}
    assert "nvidia.com/gpu" not in str(by_kind(cpu, "Deployment"))


def test_sweep_indices_cover_tasks_x_seeds_x_limits_once(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    script = K8S / "base" / "sweep" / "sweep.sh"
    listed = subprocess.run(
        ["sh", str(script), "--list"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    combos = [line.split(" ", 1)[1] for line in listed]
    assert [int(line.split()[0]) for line in listed] == list(range(len(listed)))
    assert len(set(combos)) == len(combos) == 2 * 3 * 2
    sweep = by_kind(rendered["overlays/cpu"], "Job", "safepolicy-sweep")
    assert sweep["spec"]["completionMode"] == "Indexed"
    assert sweep["spec"]["completions"] == len(combos)
    assert "JOB_COMPLETION_INDEX" in " ".join(
        sweep["spec"]["template"]["spec"]["containers"][0]["command"]
    )
    outside = subprocess.run(["sh", str(script), str(len(combos))], capture_output=True, text=True)
    assert outside.returncode == 2 and "outside 0..11" in outside.stderr
    custom = subprocess.run(
        ["sh", str(script), "--list"],
        capture_output=True,
        text=True,
        check=True,
        env={
            "PATH": "/usr/bin:/bin",
            "SWEEP_TASKS": "A B",
            "SWEEP_SEEDS": "7",
            "SWEEP_COST_LIMITS": "1 2",
        },
    )
    assert custom.stdout.splitlines() == [
        "0 task=A seed=7 cost_limit=1",
        "1 task=A seed=7 cost_limit=2",
        "2 task=B seed=7 cost_limit=1",
        "3 task=B seed=7 cost_limit=2",
    ]


def test_the_probed_health_services_exist_on_the_server(tmp_path: Path) -> None:
    """Liveness answers SERVING with nothing loaded; readiness ("") waits for a policy."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from safepolicy.server.app import LIVENESS_SERVICE
    from safepolicy.server.settings import ServerSettings
    from safepolicy.server.testing import ServerThread

    values: dict[str, Any] = {
        "repo": tmp_path,
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": None,
        "poll_interval_s": 0,
        "grace_s": 1,
    }
    with (
        ServerThread(ServerSettings(**values)) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = health_pb2_grpc.HealthStub(channel)
        live = stub.Check(health_pb2.HealthCheckRequest(service=LIVENESS_SERVICE), timeout=5)
        ready = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert live.status == health_pb2.HealthCheckResponse.SERVING
    assert ready.status == health_pb2.HealthCheckResponse.NOT_SERVING
