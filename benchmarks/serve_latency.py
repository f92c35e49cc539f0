"""Serving latency and throughput of the policy server against two echo servers.

All servers are grpc.aio servers in their own processes, serving the same
``safepolicy.v1.PolicyService`` messages. The bare echo answers Act/ActStream with a zero
action of the right shape and does nothing else (no validation, inference or metrics); the
echo+onnxruntime server also runs one unchecked onnxruntime forward pass of the same policy
per call, the least any server of this kind that really runs the model can cost. Each path
is measured with the servers interleaved in short turns (``--chunk`` calls each, a few tens
of milliseconds; for ActStream one open stream per server), so load changes on a shared
machine fall on every server alike; samples are pooled per server, the measurement is
repeated ``--rounds`` times and the median round is reported. ``--variant same=`` adds a
second copy of this tree's server: its ratio to the first is the noise floor of the run.

    python benchmarks/serve_latency.py [--requests 2000] [--chunk 50] [--rounds 3]
        [--obs-dim 60] [--compare LABEL=GITREF ...] [--variant LABEL="--flag value ..."]

``--compare`` adds the server of another commit (exported with ``git archive``) to the same
alternating rounds, so the effect of each change is measured under the same conditions;
``--variant`` adds this tree's server started with extra ``serve`` flags.

Targets (issue 16), for this tree's server: Act and ActStream p50 <= 1.05x the
echo+onnxruntime server and <= 1.15x the bare echo; 8-client throughput >= 0.95x the
echo+onnxruntime server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safepolicy.server._generated import policy_pb2, policy_pb2_grpc  # noqa: E402
from safepolicy.server.client import act_request  # noqa: E402
from safepolicy.server.testing import free_port  # noqa: E402

POLICY = "bench"


class EchoServicer(policy_pb2_grpc.PolicyServiceServicer):
    """The floor: same messages, same server kind, no work.

    With ``model`` (a policy version directory) it is the second, diagnostic baseline: the
    echo plus one unchecked onnxruntime forward pass per observation and nothing else, i.e.
    the least any server of this kind that really runs the model can cost.
    """

    def __init__(self, action_dim: int, model: str | None = None) -> None:
        self.action = np.zeros(action_dim, dtype="<f4").tobytes()
        self.action_dim = action_dim
        self.policy = None
        if model is not None:
            from safepolicy.export.artifact import load_policy

            self.policy = load_policy(model)

    def _answer(self, request: Any) -> policy_pb2.ActResponse:
        action = self.action
        if self.policy is not None:
            observations = np.frombuffer(request.observations.data, dtype="<f4")
            if observations.size == self.policy.metadata.obs_dim:
                action = self.policy.act_unchecked(observations.reshape(1, -1))[0].tobytes()
        return policy_pb2.ActResponse(
            actions=policy_pb2.Tensor(shape=[self.action_dim], data=action),
            policy=POLICY,
            version=1,
        )

    async def Act(self, request: Any, context: Any) -> policy_pb2.ActResponse:
        return self._answer(request)

    async def ActStream(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[policy_pb2.ActResponse]:
        async for request in request_iterator:
            yield self._answer(request)


async def serve_echo(port: int, action_dim: int, model: str | None = None) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(EchoServicer(action_dim, model), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def wait_ready(target: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    request = act_request(POLICY, np.zeros(1, np.float32))
    with grpc.insecure_channel(target) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                stub.Act(request, timeout=1)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.INVALID_ARGUMENT:  # up, wrong shape: fine
                    return
                time.sleep(0.2)
                continue
            return
    raise TimeoutError(f"{target} did not come up")


class Pacer:
    """Hands out turns: each round visits every server once, in an order that alternates.

    Every measurement below interleaves the servers in short turns (``chunk`` calls, tens of
    milliseconds) instead of one long block per server, so a load change on the shared
    machine lands on all of them alike; the samples of all turns are pooled per server.
    """

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def rounds(self, count: int) -> Iterator[list[str]]:
        for index in range(count):
            yield self.names if index % 2 == 0 else self.names[::-1]


def unary(targets: dict[str, str], request: Any, count: int, chunk: int) -> dict[str, list[float]]:
    """Per server, ``count`` one-at-a-time Act latencies taken in interleaved turns."""
    channels = {name: grpc.insecure_channel(target) for name, target in targets.items()}
    try:
        stubs = {name: policy_pb2_grpc.PolicyServiceStub(c).Act for name, c in channels.items()}
        times: dict[str, list[float]] = {name: [] for name in targets}
        for act in stubs.values():
            for _ in range(200):
                act(request, timeout=10)
        for order in Pacer(list(targets)).rounds(max(1, count // chunk)):
            for name in order:
                act, local = stubs[name], times[name]
                for _ in range(chunk):
                    started = time.perf_counter()
                    act(request, timeout=10)
                    local.append(time.perf_counter() - started)
        return times
    finally:
        for channel in channels.values():
            channel.close()


def concurrent(
    targets: dict[str, str], request: Any, clients: int, count: int, chunk: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """``clients`` threads, each with a channel to every server, all calling the same server
    at once, turn by turn (``chunk`` calls each per turn). Per server: latencies, and the
    median over turns of the calls per second all clients together completed."""
    names = list(targets)
    turn: list[str] = [names[0]]
    times: dict[str, list[float]] = {name: [] for name in names}
    rates: dict[str, list[float]] = {name: [] for name in names}
    lock = threading.Lock()
    begin, done = threading.Barrier(clients + 1), threading.Barrier(clients + 1)
    turns = list(Pacer(names).rounds(max(1, count // chunk)))
    flat = [name for order in turns for name in order]

    def worker() -> None:
        channels = {name: grpc.insecure_channel(target) for name, target in targets.items()}
        try:
            stubs = {n: policy_pb2_grpc.PolicyServiceStub(c).Act for n, c in channels.items()}
            for act in stubs.values():
                for _ in range(50):
                    act(request, timeout=10)
            for _ in flat:
                begin.wait()
                act, local = stubs[turn[0]], []
                for _ in range(chunk):
                    started = time.perf_counter()
                    act(request, timeout=10)
                    local.append(time.perf_counter() - started)
                with lock:
                    times[turn[0]].extend(local)
                done.wait()
        finally:
            for channel in channels.values():
                channel.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for name in flat:
        turn[0] = name
        begin.wait()
        started = time.perf_counter()
        done.wait()
        rates[name].append(clients * chunk / (time.perf_counter() - started))
    for thread in threads:
        thread.join()
    return times, {name: statistics.median(values) for name, values in rates.items()}


def stream(targets: dict[str, str], request: Any, count: int, chunk: int) -> dict[str, list[float]]:
    """Per server, ``count`` ActStream message round trips on one open stream per server,
    the streams taking interleaved turns."""
    import queue

    def iterate(requests: queue.SimpleQueue[Any]) -> Iterator[Any]:
        while (item := requests.get()) is not None:
            yield item

    channels = {name: grpc.insecure_channel(target) for name, target in targets.items()}
    queues: dict[str, queue.SimpleQueue[Any]] = {name: queue.SimpleQueue() for name in targets}
    calls = {
        name: policy_pb2_grpc.PolicyServiceStub(channels[name]).ActStream(
            iterate(queues[name]), timeout=600
        )
        for name in targets
    }
    times: dict[str, list[float]] = {name: [] for name in targets}
    try:
        for name, call in calls.items():
            for _ in range(200):
                queues[name].put(request)
                next(call)
        for order in Pacer(list(targets)).rounds(max(1, count // chunk)):
            for name in order:
                requests, call, local = queues[name], calls[name], times[name]
                for _ in range(chunk):
                    started = time.perf_counter()
                    requests.put(request)
                    next(call)
                    local.append(time.perf_counter() - started)
        for name, call in calls.items():
            queues[name].put(None)
            for _ in call:
                pass
        return times
    finally:
        for channel in channels.values():
            channel.close()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q) * 1000.0)


def measure(
    targets: dict[str, str], request: Any, count: int, chunk: int
) -> dict[str, dict[str, float]]:
    """Every figure of every server, each path measured with the servers interleaved."""
    one = unary(targets, request, count, chunk)
    eight, throughput = concurrent(targets, request, 8, max(count // 4, 50), max(chunk // 4, 10))
    streamed = stream(targets, request, count, chunk)
    return {
        name: {
            "act1_p50": percentile(one[name], 50),
            "act1_p99": percentile(one[name], 99),
            "act1_rps": len(one[name]) / sum(one[name]),
            "act8_p50": percentile(eight[name], 50),
            "act8_p99": percentile(eight[name], 99),
            "act8_rps": throughput[name],
            "stream_p50": percentile(streamed[name], 50),
            "stream_p99": percentile(streamed[name], 99),
            "stream_rps": len(streamed[name]) / sum(streamed[name]),
        }
        for name in targets
    }


def start(command: list[str], root: Path = ROOT) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})


def export_tree(ref: str, into: Path) -> Path:
    """The source tree of git ``ref`` written under ``into`` (symlinks kept)."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def server_command(repo: Path, port: int, extra: list[str]) -> list[str]:
    return [
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
        "0",
        "--log-level",
        "WARNING",
        *extra,
    ]


TARGETS = {"act1": ("p50", 1.05, 1.15), "act8": ("rps", 0.95, None), "stream": ("p50", 1.05, 1.15)}
LABELS = {"act1": "Act, 1 client", "act8": "Act, 8 clients", "stream": "ActStream, per message"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="calls per server per path and round"
    )
    parser.add_argument(
        "--chunk", type=int, default=50, help="calls per turn before the next server's turn"
    )
    parser.add_argument("--rounds", type=int, default=3, help="repeats; the median is reported")
    parser.add_argument("--obs-dim", type=int, default=60)
    parser.add_argument("--action-dim", type=int, default=2)
    parser.add_argument(
        "--repo",
        type=Path,
        help="existing repository holding policy 'bench' "
        "(default: export an untrained 256x256 actor into a temporary one)",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=GITREF",
        help="also measure the server of this commit (repeatable)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=FLAGS",
        help="also measure this tree's server with these extra flags",
    )
    parser.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--echo-model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_echo is not None:
        asyncio.run(serve_echo(args.serve_echo, args.action_dim, args.echo_model))
        return 0

    scratch = tempfile.TemporaryDirectory(prefix="serve-latency-")
    repo = args.repo
    if repo is None:
        from safepolicy.server.testing import make_policy

        repo = Path(scratch.name) / "repo"
        make_policy(
            repo,
            POLICY,
            1,
            obs_dim=args.obs_dim,
            action_dim=args.action_dim,
            hidden_sizes=(256, 256),
        )
    # label -> (source tree, extra serve flags)
    trees: dict[str, tuple[Path, list[str]]] = {}
    for item in args.compare:
        label, sep, ref = item.partition("=")
        if not sep or not label or not ref:
            parser.error(f"--compare {item!r}: give LABEL=GITREF")
        trees[label] = (export_tree(ref, Path(scratch.name) / f"tree-{len(trees)}"), [])
    for item in args.variant:
        label, sep, flags = item.partition("=")
        if not sep or not label:
            parser.error(f"--variant {item!r}: give LABEL=FLAGS")
        trees[label] = (ROOT, flags.split())
    trees["safepolicy"] = (ROOT, [])
    echo_port, inference_port = free_port(), free_port()
    ports = {label: free_port() for label in trees}
    processes = [
        start(
            [
                sys.executable,
                __file__,
                "--serve-echo",
                str(echo_port),
                "--action-dim",
                str(args.action_dim),
            ]
        ),
        start(
            [
                sys.executable,
                __file__,
                "--serve-echo",
                str(inference_port),
                "--action-dim",
                str(args.action_dim),
                "--echo-model",
                str(repo / POLICY / "1"),
            ]
        ),
        *[
            start(server_command(repo, ports[label], extra), root)
            for label, (root, extra) in trees.items()
        ],
    ]
    try:
        targets = {
            "echo": f"127.0.0.1:{echo_port}",
            "echo+onnxruntime": f"127.0.0.1:{inference_port}",
            **{label: f"127.0.0.1:{port}" for label, port in ports.items()},
        }
        for target in targets.values():
            wait_ready(target)
        request = act_request(
            POLICY, np.random.default_rng(0).normal(size=args.obs_dim).astype(np.float32)
        )
        rounds = [measure(targets, request, args.requests, args.chunk) for _ in range(args.rounds)]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        scratch.cleanup()

    def median(name: str, key: str) -> float:
        return statistics.median(r[name][key] for r in rounds)

    print(
        f"obs_dim={args.obs_dim} action_dim={args.action_dim} MLP 256x256, "
        f"{args.requests} calls x {args.rounds} rounds (median round), servers interleaved "
        f"in turns of {args.chunk} calls, "
        f"{os.cpu_count()} CPUs; compared: "
        f"{', '.join(args.compare + args.variant) or 'none'}\n"
    )
    print(
        "| path | echo p50 / p99 (ms) | echo+onnxruntime p50 / p99 (ms) | echo / "
        "echo+onnxruntime req/s |"
    )
    print("|---|---|---|---|")
    for key, label in LABELS.items():
        print(
            f"| {label} | {median('echo', f'{key}_p50'):.3f} / "
            f"{median('echo', f'{key}_p99'):.3f} | "
            f"{median('echo+onnxruntime', f'{key}_p50'):.3f} / "
            f"{median('echo+onnxruntime', f'{key}_p99'):.3f} | "
            f"{median('echo', f'{key}_rps'):.0f} / "
            f"{median('echo+onnxruntime', f'{key}_rps'):.0f} |"
        )
    print("\n| server | path | p50 / p99 (ms) | req/s | vs echo+onnxruntime | vs echo |")
    print("|---|---|---|---|---|---|")
    verdicts = []
    for name in trees:
        for key, label in LABELS.items():
            metric, against_model, against_echo = TARGETS[key]
            value = median(name, f"{key}_{metric}")
            to_model = value / median("echo+onnxruntime", f"{key}_{metric}")
            to_echo = value / median("echo", f"{key}_{metric}")
            if metric == "p50":
                ok = to_model <= against_model and (against_echo is None or to_echo <= against_echo)
                wanted = f"p50 <= {against_model}x and <= {against_echo}x"
            else:
                ok = to_model >= against_model
                wanted = f"req/s >= {against_model}x echo+onnxruntime"
            verdict = ""
            if name == "safepolicy":
                verdicts.append(ok)
                verdict = f" ({wanted}: {'met' if ok else 'MISSED'})"
            print(
                f"| {name} | {label} | {median(name, f'{key}_p50'):.3f} / "
                f"{median(name, f'{key}_p99'):.3f} | {median(name, f'{key}_rps'):.0f} | "
                f"{to_model:.3f}x{verdict} | {to_echo:.3f}x |"
            )
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
