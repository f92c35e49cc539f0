"""Fault drill: a real server on loopback under valid load while it is hot-reloaded, flooded
with client mistakes, and sent SIGTERM; reports every answer by status code.

The server runs as ``python -m safepolicy.server`` in its own process (polling the repository every
0.2 s, ``--drain-delay-s`` set). Valid clients call Act in a loop; meanwhile new versions are
exported into the repository (hot reload) and flood clients send bad input (random bytes, bad
shapes, NaN, unknown policies, a 100 KB name, an OIP model_version of "²"). At the end the
server gets SIGTERM; valid calls answered UNAVAILABLE after the drain delay are the expected
refusals of a draining replica and are counted apart.

    python benchmarks/fault_drill.py [--seconds 10] [--valid-clients 4] [--flood-clients 2]

Targets (issue 15): zero failed valid calls before the drain delay ends, refusals after it
only UNAVAILABLE, zero INTERNAL, UNKNOWN or OK answers to client mistakes, and the process
exits before the grace.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safepolicy.server._generated import grpc_predict_v2_pb2 as oip  # noqa: E402
from safepolicy.server._generated import policy_pb2  # noqa: E402
from safepolicy.server.client import PolicyClient, act_request  # noqa: E402
from safepolicy.server.testing import free_port, make_policy, observations  # noqa: E402

OBS_DIM = 8


def _wait_ready(target: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("fault_drill: the server exited during start-up")
        try:
            with PolicyClient(target) as client:
                client.act("drill", observations(1))
            return
        except grpc.RpcError:
            time.sleep(0.2)
    raise SystemExit(f"fault_drill: the server at {target} never answered")


def _bad_calls(target: str) -> list:
    """Callables that each send one client mistake."""
    channel = grpc.insecure_channel(target)
    raw_act = channel.unary_unary("/safepolicy.v1.PolicyService/Act")
    infer = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=oip.ModelInferRequest.SerializeToString,
        response_deserializer=oip.ModelInferResponse.FromString,
    )
    client = PolicyClient(target)
    rng = np.random.default_rng(0)
    return [
        lambda: raw_act(b"\xff" + rng.bytes(256), timeout=5),
        lambda: client.stub.Act(act_request("drill", np.zeros((1, 3))), timeout=5),
        lambda: client.stub.Act(act_request("drill", np.full((2, OBS_DIM), np.nan)), timeout=5),
        lambda: client.stub.Act(act_request("nope", observations(1)), timeout=5),
        lambda: client.stub.Act(act_request("x" * 100_000, observations(1)), timeout=5),
        lambda: client.stub.Act(policy_pb2.ActRequest(policy="drill"), timeout=5),
        lambda: infer(oip.ModelInferRequest(model_name="drill", model_version="²"), timeout=5),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the drill and print the counts; exit 1 if a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load before SIGTERM")
    parser.add_argument("--valid-clients", type=int, default=4)
    parser.add_argument("--flood-clients", type=int, default=2)
    parser.add_argument("--reloads", type=int, default=3, help="versions exported under load")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="fault-drill-"))
    repo = work / "repo"
    make_policy(repo, "drill", 1, seed=1)
    port = free_port()
    target = f"127.0.0.1:{port}"
    grace, drain_delay = 20.0, 1.0
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "safepolicy.server",
            "--repo",
            str(repo),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            "0",
            "--poll-interval-s",
            "0.2",
            "--grace-s",
            str(grace),
            "--drain-delay-s",
            str(drain_delay),
            "--log-level",
            "ERROR",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    valid: collections.Counter[str] = collections.Counter()
    refused_after_drain = collections.Counter[str]()
    mistakes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    stop = threading.Event()
    drain_ends = [float("inf")]

    def valid_client() -> None:
        with PolicyClient(target) as client:
            while not stop.is_set():
                try:
                    client.stub.Act(act_request("drill", observations(1)), timeout=5)
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                with lock:
                    late = time.monotonic() >= drain_ends[0]
                    (refused_after_drain if late else valid)[code] += 1
                if late and code != "OK":
                    return

    def flood_client() -> None:
        calls = _bad_calls(target)
        index = 0
        while not stop.is_set() and time.monotonic() < drain_ends[0]:
            try:
                calls[index % len(calls)]()
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            with lock:
                mistakes[code] += 1
            index += 1

    try:
        _wait_ready(target, process)
        threads = [threading.Thread(target=valid_client) for _ in range(args.valid_clients)]
        threads += [threading.Thread(target=flood_client) for _ in range(args.flood_clients)]
        for thread in threads:
            thread.start()
        for version in range(2, 2 + args.reloads):  # hot reload under load
            time.sleep(args.seconds / (args.reloads + 1))
            make_policy(repo, "drill", version, seed=version)
        time.sleep(args.seconds / (args.reloads + 1))
        signalled = time.monotonic()
        drain_ends[0] = signalled + drain_delay
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=grace + 30)
        exit_s = time.monotonic() - signalled
        stop.set()
        for thread in threads:
            thread.join(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    failed_valid = sum(count for code, count in valid.items() if code != "OK")
    bad_answers = mistakes.get("INTERNAL", 0) + mistakes.get("UNKNOWN", 0) + mistakes.get("OK", 0)
    print(f"valid calls: {sum(valid.values())} sent, by code {dict(valid)}")
    print(
        f"valid calls sent after the drain delay (each client stops at its first refusal): "
        f"{dict(refused_after_drain)}"
    )
    cut = sum(
        count for code, count in refused_after_drain.items() if code not in ("OK", "UNAVAILABLE")
    )
    if cut:
        print(
            f"  {cut} of them ended with a code other than UNAVAILABLE (clients do not retry those)"
        )
    print(f"client mistakes: {sum(mistakes.values())} sent, by code {dict(mistakes)}")
    print(
        f"hot reloads: {args.reloads}; SIGTERM to exit: {exit_s:.2f} s (drain delay "
        f"{drain_delay:g} s, grace {grace:g} s), exit code {returncode}"
    )
    ok = failed_valid == 0 and bad_answers == 0 and cut == 0 and returncode == 0 and exit_s < grace
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
