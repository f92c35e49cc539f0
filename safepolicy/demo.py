"""``safepolicy demo``: the whole path from data to a served, audited policy in a few minutes.

Each step runs the real command a user would type, in a subprocess, so the demo exercises the
same entry points as the README: collect a BallRun dataset, train BC-Safe (the fastest
algorithm; pass ``--algorithm o3srl`` for the paper's method), export it to a model repository,
audit the artifact, start ``safepolicy serve`` on a loopback port, audit the *deployed* policy
through the server, read its Prometheus metrics, and stop the server with SIGTERM.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(*args: str) -> None:
    command = [sys.executable, "-m", "safepolicy", *args]
    print(f"\n$ safepolicy {shlex.join(args)}", flush=True)
    subprocess.run(command, check=True)


def _wait_for_metrics(url: str, server: subprocess.Popen[bytes], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"safepolicy serve exited early with code {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return str(response.read().decode())
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"server metrics at {url} did not come up within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``safepolicy demo``."""
    parser = argparse.ArgumentParser(prog="safepolicy demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("demo-output"))
    parser.add_argument("--task", default="BallRun")
    parser.add_argument("--algorithm", default="bc-safe")
    parser.add_argument("--cost-limit", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--episodes", type=int, default=100, help="dataset episodes")
    args = parser.parse_args(argv)

    work = args.workdir
    dataset, run, repo = work / f"{args.task}.h5", work / "run", work / "models"
    name = f"{args.task.lower()}-{args.algorithm}"
    if not dataset.exists():
        _run("collect", "--task", args.task, "--episodes", str(args.episodes), "--out",
             str(dataset))
    if not (run / "actor.pt").exists():
        _run("train", args.algorithm, "--task", args.task, "--dataset", str(dataset),
             "--cost-limit", f"{args.cost_limit:g}", "--steps", str(args.steps), "--out",
             str(run), "--resume", "--no-progress")
    _run("export", "--run", str(run), "--repo", str(repo), "--name", name)
    version = max(int(p.name) for p in (repo / name).iterdir() if p.name.isdigit())
    _run("audit", "--policy", str(repo / name / str(version)), "--episodes", "20",
         "--out", str(work / "audit-artifact"), "--no-progress")

    port, metrics_port = _free_port(), _free_port()
    print(f"\n$ safepolicy serve --repo {repo} --port {port} --metrics-port {metrics_port}",
          flush=True)
    server = subprocess.Popen([sys.executable, "-m", "safepolicy", "serve", "--repo", str(repo),
                               "--host", "127.0.0.1", "--port", str(port),
                               "--metrics-port", str(metrics_port)])
    try:
        _wait_for_metrics(f"http://127.0.0.1:{metrics_port}/metrics", server, timeout_s=60)
        _run("audit", "--server", f"127.0.0.1:{port}", "--name", name, "--task", args.task,
             "--cost-limit", f"{args.cost_limit:g}", "--episodes", "10",
             "--out", str(work / "audit-deployed"), "--no-progress")
        metrics = _wait_for_metrics(f"http://127.0.0.1:{metrics_port}/metrics", server, 10)
        served = [line for line in metrics.splitlines()
                  if line.startswith("safepolicy_server_requests_total")]
        print("\nserver metrics after the deployed audit:")
        print("\n".join(served) or "(no request counters found)")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    print(f"\nDemo finished. Reports: {work / 'audit-artifact' / 'report.md'} and "
          f"{work / 'audit-deployed' / 'report.md'}")
    return 0
