"""The policy server end to end: a real server on a free loopback port, real clients.

Policies are small untrained actors exported through the real exporter (torch in the test
process only). Every loop is bounded and every server stops by itself.
"""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from safepolicy.export.artifact import AuditVerdict, load_policy, write_audit_verdict
from safepolicy.server._generated import policy_pb2
from safepolicy.server.client import PolicyClient, act_request
from safepolicy.server.settings import ServerSettings
from safepolicy.server.testing import ServerThread, add_version, make_policy, observations

OBS_DIM = 8
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ballrun versions 1 and 2 (different weights) and an audited 'audited/1', exported once."""
    root = tmp_path_factory.mktemp("pool")
    make_policy(root, "ballrun", 1, seed=1)
    make_policy(root, "ballrun", 2, seed=2)
    make_policy(root, "audited", 1, seed=3, audit="PASS")
    make_policy(root, "audited", 2, seed=4, audit="FAIL")
    return root


@pytest.fixture
def repo(pool: Path, tmp_path: Path) -> Path:
    """A repository serving ballrun/1."""
    root = tmp_path / "repo"
    add_version(pool / "ballrun" / "1", root, "ballrun", 1)
    return root


def settings(repo: Path, **overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {
        "repo": repo,
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "metrics_host": "127.0.0.1",
        "poll_interval_s": 0,
        "grace_s": 2,
    }
    values.update(overrides)
    return ServerSettings(**values)


@pytest.fixture
def running(repo: Path) -> Iterator[ServerThread]:
    with ServerThread(settings(repo)) as server:
        yield server


def expected_actions(pool: Path, version: int, obs: np.ndarray) -> np.ndarray:
    return load_policy(pool / "ballrun" / str(version))(obs)


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()  # type: ignore[no-any-return]


def metrics_of(server: ServerThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def health_status(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


# ---- the project's client ----


def test_act_matches_the_artifact_for_one_and_many_observations(
    running: ServerThread, pool: Path
) -> None:
    obs = observations(5)
    with PolicyClient(running.target) as client:
        many = client.act("ballrun", obs)
        one = client.act("ballrun", obs[0])
        sampled = client.act("ballrun", obs, sample=True, seed=7)
        again = client.act("ballrun", obs, sample=True, seed=7)
    assert many.version == 1 and many.policy == "ballrun"
    np.testing.assert_allclose(many.actions, expected_actions(pool, 1, obs), atol=1e-6)
    assert one.actions.shape == (2,)
    np.testing.assert_allclose(one.actions, many.actions[0], atol=1e-6)
    np.testing.assert_array_equal(sampled.actions, again.actions)  # seeded sampling repeats
    assert not np.allclose(sampled.actions, many.actions)
    assert np.all(sampled.actions >= -1) and np.all(sampled.actions <= 1)


def test_stream_answers_in_order(running: ServerThread, pool: Path) -> None:
    obs = observations(20)
    with PolicyClient(running.target) as client, client.stream("ballrun") as loop:
        answers = [loop.act(row).actions for row in obs]
    np.testing.assert_allclose(np.stack(answers), expected_actions(pool, 1, obs), atol=1e-6)


def test_list_and_get_policy_with_audit_verdict(pool: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    add_version(pool / "ballrun" / "1", root, "ballrun", 1)
    add_version(pool / "audited" / "1", root, "audited", 1)
    with ServerThread(settings(root)) as server, PolicyClient(server.target) as client:
        listed = {info.name: info for info in client.list_policies()}
        info = client.get_policy("audited")
        plain = client.get_policy("ballrun", version=1)
    assert set(listed) == {"ballrun", "audited"}
    assert info.audit.verdict == policy_pb2.AuditInfo.PASS and '"PASS"' in info.audit.audit_json
    assert plain.audit.verdict == policy_pb2.AuditInfo.NOT_AUDITED
    assert (plain.obs_dim, plain.action_dim, plain.cost_limit) == (OBS_DIM, 2, 10.0)
    assert plain.task == "BallRun" and list(plain.versions) == [1]
    assert '"obs_dim": 8' in plain.metadata_json


def test_require_audit_serves_only_pass_versions(pool: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    add_version(pool / "audited" / "1", root, "audited", 1)
    add_version(pool / "audited" / "2", root, "audited", 2)  # FAIL: newer but not servable
    add_version(pool / "ballrun" / "1", root, "ballrun", 1)  # not audited
    with (
        ServerThread(settings(root, require_audit=True)) as server,
        PolicyClient(server.target) as client,
    ):
        assert client.act("audited", observations(1)).version == 1
        assert (
            code_of(lambda: client.act("ballrun", observations(1))) == grpc.StatusCode.UNAVAILABLE
        )
        assert (
            code_of(lambda: client.act("audited", observations(1), version=2))
            == grpc.StatusCode.NOT_FOUND
        )


@pytest.mark.parametrize(("audit_limit", "served"), [(10.0, True), (5.0, True), (20.0, False)])
def test_require_audit_refuses_a_pass_against_a_looser_cost_limit(
    pool: Path, tmp_path: Path, audit_limit: float, served: bool
) -> None:
    """The policy's metadata says cost_limit 10: a PASS at 10 or stricter unlocks it, a PASS
    at 20 does not (it vouches for a budget twice as large), and the reason says so."""
    root = tmp_path / "repo"
    version_dir = add_version(pool / "ballrun" / "1", root, "ballrun", 1)
    write_audit_verdict(
        version_dir,
        AuditVerdict(
            verdict="PASS",
            task="BallRun",
            cost_limit=audit_limit,
            confidence=0.95,
            episodes=10,
            mean_cost=1.0,
            cost_upper_bound=2.0,
            violation_rate=0.0,
        ),
    )
    with (
        ServerThread(settings(root, require_audit=True)) as server,
        PolicyClient(server.target) as client,
    ):
        if served:
            assert client.act("ballrun", observations(1)).version == 1
        else:
            with pytest.raises(grpc.RpcError) as caught:
                client.act("ballrun", observations(1))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "looser than the policy's cost_limit 10" in caught.value.details()
    with ServerThread(settings(root)) as server, PolicyClient(server.target) as client:
        assert client.act("ballrun", observations(1)).version == 1  # without the flag: served


def test_version_policy_all_and_pins(pool: Path, repo: Path) -> None:
    add_version(pool / "ballrun" / "2", repo, "ballrun", 2)
    with (
        ServerThread(settings(repo, version_policy="all")) as server,
        PolicyClient(server.target) as client,
    ):
        assert client.act("ballrun", observations(1)).version == 2
        assert client.act("ballrun", observations(1), version=1).version == 1
    with (
        ServerThread(settings(repo, pins={"ballrun": [1]})) as server,
        PolicyClient(server.target) as client,
    ):
        assert client.act("ballrun", observations(1)).version == 1
        assert (
            code_of(lambda: client.act("ballrun", observations(1), version=2))
            == grpc.StatusCode.NOT_FOUND
        )


# ---- every bad input gets its code ----


def raw_act(target: str, request: policy_pb2.ActRequest, timeout: float = 5) -> Any:
    with PolicyClient(target) as client:
        return client.stub.Act(request, timeout=timeout)


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (act_request("nope", observations(1)), grpc.StatusCode.NOT_FOUND, "unknown policy"),
        (
            act_request("ballrun", observations(1), version=9),
            grpc.StatusCode.NOT_FOUND,
            "version 9",
        ),
        (act_request("ballrun", np.zeros((1, 3))), grpc.StatusCode.INVALID_ARGUMENT, "[batch, 8]"),
        (
            act_request("ballrun", np.full((2, OBS_DIM), np.nan)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN",
        ),
        (
            act_request("ballrun", np.array([[np.inf] * OBS_DIM])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "infinity",
        ),
        (act_request("ballrun", np.zeros((0, OBS_DIM))), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (
            act_request("ballrun", np.zeros((1025, OBS_DIM))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "limit of 1024",
        ),
        (
            policy_pb2.ActRequest(
                policy="ballrun", observations=policy_pb2.Tensor(shape=[1, OBS_DIM], data=b"\0" * 5)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "bytes",
        ),
        (
            policy_pb2.ActRequest(
                policy="ballrun", observations=policy_pb2.Tensor(shape=[1, 2, 4], data=b"\0" * 32)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "dimensions",
        ),
        (policy_pb2.ActRequest(policy="ballrun"), grpc.StatusCode.INVALID_ARGUMENT, "dimensions"),
    ],
)
def test_bad_requests_get_their_status_code(
    running: ServerThread, request_: Any, code: grpc.StatusCode, words: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        raw_act(running.target, request_)
    assert caught.value.code() == code
    assert words in caught.value.details()
    assert raw_act(running.target, act_request("ballrun", observations(1))).version == 1


def test_bad_stream_message_ends_the_stream_with_its_code(running: ServerThread) -> None:
    with PolicyClient(running.target) as client:
        requests = [act_request("ballrun", observations(1)), act_request("ballrun", np.zeros(3))]
        responses = client.stub.ActStream(iter(requests), timeout=5)
        assert next(responses).version == 1
        with pytest.raises(grpc.RpcError) as caught:
            next(responses)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unservable_policy_is_unavailable(pool: Path, repo: Path) -> None:
    broken = add_version(pool / "ballrun" / "2", repo, "broken", 1)
    (broken / "policy.onnx").write_bytes(b"not a model")
    with (
        ServerThread(settings(repo)) as server,
        PolicyClient(server.target) as client,
        pytest.raises(grpc.RpcError) as caught,
    ):
        client.act("broken", observations(1))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no servable version" in caught.value.details()


def test_deadline_is_respected_while_waiting_for_a_batch(repo: Path) -> None:
    slow_batches = settings(repo, batching=True, batch_max_size=1000, batch_max_delay_ms=3000)
    with ServerThread(slow_batches) as server, PolicyClient(server.target) as client:
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as caught:
            client.act("ballrun", observations(1), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.perf_counter() - started < 2.0
        assert client.act("ballrun", observations(1), sample=True).version == 1  # still serving


def test_micro_batching_gives_the_same_actions_and_counts_batches(repo: Path, pool: Path) -> None:
    obs = observations(32)
    batched = settings(repo, batching=True, batch_max_size=8, batch_max_delay_ms=5)
    with ServerThread(batched) as server:
        results: list[np.ndarray | None] = [None] * len(obs)

        def worker(start: int) -> None:
            with PolicyClient(server.target) as client:
                for index in range(start, len(obs), 8):
                    results[index] = client.act("ballrun", obs[index]).actions

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        samples = metrics_of(server)
    np.testing.assert_allclose(
        np.stack(results),
        expected_actions(pool, 1, obs),  # type: ignore[arg-type]
        atol=1e-6,
    )
    count = samples[("safepolicy_server_batch_size_count", (("policy", "ballrun"),))]
    total = samples[("safepolicy_server_batch_size_sum", (("policy", "ballrun"),))]
    assert total == len(obs) and 1 <= count <= len(obs)


# ---- reloads ----


def test_hot_reload_under_load_fails_no_request(pool: Path, repo: Path) -> None:
    with ServerThread(settings(repo)) as server:
        stop = threading.Event()
        seen: list[int] = []
        failures: list[BaseException] = []

        def load() -> None:
            with PolicyClient(server.target) as client:
                while not stop.is_set():
                    try:
                        seen.append(client.act("ballrun", observations(1)).version)
                    except BaseException as error:
                        failures.append(error)

        threads = [threading.Thread(target=load) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        add_version(pool / "ballrun" / "2", repo, "ballrun", 2)
        with PolicyClient(server.target) as admin:
            reply = admin.reload()
        time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join(10)
    assert list(reply.loaded) == ["ballrun/2"] and list(reply.unloaded) == ["ballrun/1"]
    assert failures == []
    assert seen[0] == 1 and seen[-1] == 2
    switch = seen.index(2)
    assert all(v == 2 for v in seen[switch + 10 :])  # after the swap only v2 answers (+ in flight)


def test_polling_picks_up_a_new_version(pool: Path, repo: Path) -> None:
    with (
        ServerThread(settings(repo, poll_interval_s=0.1)) as server,
        PolicyClient(server.target) as client,
    ):
        assert client.act("ballrun", observations(1)).version == 1
        add_version(pool / "ballrun" / "2", repo, "ballrun", 2)
        deadline = time.monotonic() + 10
        while client.act("ballrun", observations(1)).version != 2:
            assert time.monotonic() < deadline, "the poller never loaded version 2"
            time.sleep(0.05)


def test_corrupt_version_keeps_the_old_one_serving_and_is_counted(pool: Path, repo: Path) -> None:
    with ServerThread(settings(repo)) as server, PolicyClient(server.target) as client:
        staging = repo / "ballrun" / ".tmp-corrupt"
        shutil.copytree(pool / "ballrun" / "2", staging)
        (staging / "policy.onnx").write_bytes(b"\x08\x07garbage")
        staging.rename(repo / "ballrun" / "2")
        reply = client.reload()
        assert [f.split(":")[0] for f in reply.failed] == ["ballrun/2"]
        assert "onnxruntime cannot load" in reply.failed[0]
        assert client.act("ballrun", observations(1)).version == 1
        assert list(client.reload().failed) == []  # unchanged files: reported once
        samples = metrics_of(server)
        # a fixed version replaces the broken one
        shutil.copy(pool / "ballrun" / "2" / "policy.onnx", repo / "ballrun" / "2")
        assert list(client.reload().loaded) == ["ballrun/2"]
        assert client.act("ballrun", observations(1)).version == 2
    key = ("safepolicy_server_reload_failures_total", (("policy", "ballrun"), ("version", "2")))
    assert samples[key] == 1
    assert samples[("safepolicy_server_serving_version", (("policy", "ballrun"),))] == 1
    assert samples[("safepolicy_server_reloads_total", (("result", "failed"),))] == 1


# ---- health, shutdown, auth ----


def test_health_transitions(pool: Path, tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with ServerThread(settings(root, drain_delay_s=1.0)) as server:
        for service in ("", "safepolicy.v1.PolicyService", "inference.GRPCInferenceService"):
            assert health_status(server.target, service) == NOT_SERVING
        add_version(pool / "ballrun" / "1", root, "ballrun", 1)
        server.reload()
        for service in ("", "safepolicy.v1.PolicyService", "inference.GRPCInferenceService"):
            assert health_status(server.target, service) == SERVING
        server.loop.call_soon_threadsafe(server.server.shutdown)
        time.sleep(0.3)  # inside the drain delay: NOT_SERVING, yet still answering calls
        assert health_status(server.target) == health_pb2.HealthCheckResponse.NOT_SERVING
        with PolicyClient(server.target) as client:
            assert client.act("ballrun", observations(1)).version == 1
            time.sleep(1.0)  # past the drain delay: new calls are refused
            assert (
                code_of(lambda: client.act("ballrun", observations(1)))
                == grpc.StatusCode.UNAVAILABLE
            )


def test_auth_refuses_unauthenticated_calls_but_not_health(repo: Path) -> None:
    with ServerThread(settings(repo, auth_token="s3cret")) as server:
        with PolicyClient(server.target) as anonymous:
            assert (
                code_of(lambda: anonymous.act("ballrun", observations(1)))
                == grpc.StatusCode.UNAUTHENTICATED
            )
            assert code_of(anonymous.list_policies) == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as caught, anonymous.stream("ballrun") as loop:
                loop.act(observations(1)[0])
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with PolicyClient(server.target, token="wrong") as wrong:
            assert (
                code_of(lambda: wrong.act("ballrun", observations(1)))
                == grpc.StatusCode.UNAUTHENTICATED
            )
        with PolicyClient(server.target, token="s3cret") as client:
            assert client.act("ballrun", observations(1)).version == 1
        assert health_status(server.target) == health_pb2.HealthCheckResponse.SERVING


def test_auth_token_from_file(repo: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    with ServerThread(settings(repo, auth_token_file=token_file)) as server:
        with PolicyClient(server.target, token="from-a-file") as client:
            assert client.act("ballrun", observations(1)).version == 1
        with PolicyClient(server.target) as anonymous:
            assert (
                code_of(lambda: anonymous.act("ballrun", observations(1)))
                == grpc.StatusCode.UNAUTHENTICATED
            )


# ---- metrics ----


def test_metrics_count_calls_codes_latency_and_outcomes(running: ServerThread) -> None:
    before = metrics_of(running)
    act_ok = (
        "safepolicy_server_requests_total",
        (("code", "OK"), ("method", "Act"), ("policy", "ballrun"), ("version", "1")),
    )
    with PolicyClient(running.target) as client:
        for _ in range(5):
            client.act("ballrun", observations(2))
        code_of(lambda: client.act("ballrun", np.zeros((1, 3))))
        client.report_step("ballrun", "ep-1", reward=1.0, cost=4.0)
        client.report_step("ballrun", "ep-1", reward=1.0, cost=4.0, steps=2)
        done = client.report_step("ballrun", "ep-1", reward=1.0, cost=4.0, done=True)
        within = client.report_episode("ballrun", reward=10.0, cost=3.0, steps=100)
    after = metrics_of(running)
    assert after[act_ok] - before.get(act_ok, 0) == 5
    bad = (
        "safepolicy_server_requests_total",
        (("code", "INVALID_ARGUMENT"), ("method", "Act"), ("policy", "ballrun"), ("version", "1")),
    )
    assert after[bad] == 1
    assert after[("safepolicy_server_request_duration_seconds_count", (("method", "Act"),))] >= 6
    assert (
        after[
            (
                "safepolicy_server_request_duration_seconds_bucket",
                (("le", "0.0005"), ("method", "Act")),
            )
        ]
        >= 0
    )  # sub-millisecond buckets exist
    assert after[("safepolicy_server_in_flight_requests", (("method", "Act"),))] == 0
    assert after[("safepolicy_server_loaded_versions", (("policy", "ballrun"),))] == 1
    assert after[("safepolicy_server_batch_size_sum", (("policy", "ballrun"),))] >= 10
    labels = (("policy", "ballrun"), ("version", "1"))
    assert done.episode_done and done.violation and done.episode_cost == 12.0
    assert within.episode_done and not within.violation
    assert after[("safepolicy_server_cost_limit_violations_total", labels)] == 1
    assert after[("safepolicy_server_episodes_total", labels)] == 2
    assert after[("safepolicy_server_last_episode_cost", labels)] == 3.0
    assert after[("safepolicy_server_cost_limit", labels)] == 10.0
    assert after[("safepolicy_server_outcome_steps_total", labels)] == 104
    assert after[("safepolicy_server_outcome_cost_total", labels)] == 15.0
    assert after[("safepolicy_server_cost_rate", (("policy", "ballrun"),))] == pytest.approx(
        15.0 / 104
    )
    assert after[("safepolicy_server_rolling_episode_cost", (("policy", "ballrun"),))] == 7.5


def test_bad_outcome_reports_are_invalid_argument(running: ServerThread) -> None:
    with PolicyClient(running.target) as client:
        assert (
            code_of(lambda: client.report_step("ballrun", "", reward=0, cost=1))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        assert (
            code_of(lambda: client.report_episode("ballrun", reward=0, cost=-1, steps=3))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        assert (
            code_of(lambda: client.report_episode("ballrun", reward=float("nan"), cost=1, steps=3))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        assert (
            code_of(lambda: client.report_episode("nope", reward=0, cost=1, steps=3))
            == grpc.StatusCode.NOT_FOUND
        )
        no_granularity = policy_pb2.ReportOutcomeRequest(policy="ballrun", cost=1)
        assert (
            code_of(lambda: client.stub.ReportOutcome(no_granularity, timeout=5))
            == grpc.StatusCode.INVALID_ARGUMENT
        )


def test_reflection_lists_the_services(running: ServerThread) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(running.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {service.name for service in reply.list_services_response.service}
    assert {
        "safepolicy.v1.PolicyService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    } <= names
