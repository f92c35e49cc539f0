"""Serving latency and throughput of the policy server against two echo servers.

All servers are grpc.aio servers in their own processes, serving the same
``safepolicy.v1.PolicyService`` messages. The bare echo answers Act/ActStream with a zero
action of the right shape and does nothing else (no validation, inference or metrics); the
echo+onnxruntime server also runs one unchecked onnxruntime forward pass of the same policy
per call, the least any server of this kind that really runs the model can cost. Runs
alternate between the servers, rounds are repeated and the median round is reported, so the
ratios hold on a busy machine even when the absolute figures drift.

    python benchmarks/serve_latency.py [--requests 2000] [--rounds 3] [--obs-dim 60]
        [--compare LABEL=GITREF ...] [--variant LABEL="--flag value ..."]

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
from collections.abc import AsyncIterator
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


def unary(target: str, request: Any, count: int) -> list[float]:
    with grpc.insecure_channel(target) as channel:
        act = policy_pb2_grpc.PolicyServiceStub(channel).Act
        for _ in range(200):
            act(request, timeout=10)
        times = []
        for _ in range(count):
            started = time.perf_counter()
            act(request, timeout=10)
            times.append(time.perf_counter() - started)
    return times


def concurrent(target: str, request: Any, clients: int, count: int) -> tuple[list[float], float]:
    """``clients`` threads, each with its own channel, ``count`` calls each."""
    times: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker() -> None:
        with grpc.insecure_channel(target) as channel:
            act = policy_pb2_grpc.PolicyServiceStub(channel).Act
            for _ in range(50):
                act(request, timeout=10)
            barrier.wait()
            local = []
            for _ in range(count):
                started = time.perf_counter()
                act(request, timeout=10)
                local.append(time.perf_counter() - started)
        with lock:
            times.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return times, clients * count / (time.perf_counter() - started)


def stream(target: str, request: Any, count: int) -> list[float]:
    import queue

    requests: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def iterate() -> Any:
        while (item := requests.get()) is not None:
            yield item

    with grpc.insecure_channel(target) as channel:
        call = policy_pb2_grpc.PolicyServiceStub(channel).ActStream(iterate(), timeout=600)
        for _ in range(200):
            requests.put(request)
            next(call)
        times = []
        for _ in range(count):
            started = time.perf_counter()
            requests.put(request)
            next(call)
            times.append(time.perf_counter() - started)
        requests.put(None)
        for _ in call:
            pass
    return times


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q) * 1000.0)


def measure(target: str, request: Any, count: int) -> dict[str, float]:
    one = unary(target, request, count)
    eight, throughput = concurrent(target, request, 8, max(count // 4, 50))
    streamed = stream(target, request, count)
    return {
        "act1_p50": percentile(one, 50),
        "act1_p99": percentile(one, 99),
        "act1_rps": len(one) / sum(one),
        "act8_p50": percentile(eight, 50),
        "act8_p99": percentile(eight, 99),
        "act8_rps": throughput,
        "stream_p50": percentile(streamed, 50),
        "stream_p99": percentile(streamed, 99),
        "stream_rps": len(streamed) / sum(streamed),
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
    parser.add_argument("--requests", type=int, default=2000, help="calls per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per server")
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
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for index in range(args.rounds):
            order = list(targets) if index % 2 == 0 else list(reversed(list(targets)))
            for name in order:
                rounds[name].append(measure(targets[name], request, args.requests))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        scratch.cleanup()

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[name])

    print(
        f"obs_dim={args.obs_dim} action_dim={args.action_dim} MLP 256x256, "
        f"{args.requests} calls x {args.rounds} alternating rounds (median round), "
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
