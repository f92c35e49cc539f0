"""``safepolicy demo``: the whole path from data to a served, audited policy in a few minutes.

Each step runs the real command a user would type, in a subprocess, so the demo exercises the
same entry points as the README: collect a BallRun dataset, train O3SRL (the seed paper's
method: EXP3 over Lagrange multipliers with a TD3+BC oracle), export it to a model repository,
audit the artifact, start ``safepolicy serve`` on a loopback port, audit the *deployed* policy
through the server, read its Prometheus metrics, and stop the server with SIGTERM.

A FAIL verdict is a result, not a crash: the demo reports it and goes on to serving, so the
deployed audit shows the same verdict through gRPC (a production server would refuse the
version with ``--require-audit``). The default budget (1,000 updates, ``td3bc.tau=0.05`` as in
the short-budget benchmarks) is sized for a few minutes on two CPU cores; O3SRL's paper runs
about 100k updates.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from safepolicy.cli import RawDescriptionHelpFormatter, report_error
from safepolicy.errors import SafepolicyError


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# `safepolicy audit` exits 0 on PASS and 1 on FAIL; both are verdicts, 2 is an error
AUDIT_VERDICT_CODES = (0, 1)


def _run(*args: str, ok_codes: tuple[int, ...] = (0,)) -> int:
    command = [sys.executable, "-m", "safepolicy", *args]
    print(f"\n$ safepolicy {shlex.join(args)}", flush=True)
    code = subprocess.run(command).returncode
    if code not in ok_codes:
        raise DemoError(
            f"`safepolicy {args[0]}` failed with exit code {code} (see its message above)"
        )
    return code


class DemoError(SafepolicyError, RuntimeError):
    """A demo step that failed; the message names the step."""


def _verdict(report_dir: Path) -> str:
    """The verdict in an audit's report.json."""
    return str(json.loads((report_dir / "report.json").read_text())["verdict"])


def _wait_for_metrics(url: str, server: subprocess.Popen[bytes], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise DemoError(f"safepolicy serve exited early with code {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return str(response.read().decode())
        except OSError:
            time.sleep(0.2)
    raise DemoError(f"server metrics at {url} did not come up within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``safepolicy demo``."""
    parser = argparse.ArgumentParser(
        prog="safepolicy demo", description=__doc__, formatter_class=RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo-output"),
        help="where the dataset, run, models and reports go",
    )
    parser.add_argument("--task", default="BallRun", help="task (see `safepolicy tasks`)")
    parser.add_argument(
        "--algorithm", default="o3srl", help="training algorithm (o3srl is the seed paper's method)"
    )
    parser.add_argument("--cost-limit", type=float, default=10.0, help="episode cost budget")
    parser.add_argument("--steps", type=int, default=1000, help="gradient updates")
    parser.add_argument("--episodes", type=int, default=100, help="dataset episodes")
    parser.add_argument(
        "--audit-episodes",
        type=int,
        default=20,
        help="episodes of the artifact audit (the deployed audit runs half)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="training config override (default: "
        "td3bc.tau=0.05 for o3srl, the short-budget setting)",
    )
    args = parser.parse_args(argv)
    try:
        return run_demo(args)
    except SafepolicyError as error:
        report_error("safepolicy demo", error)
        return 1


def run_demo(args: argparse.Namespace) -> int:
    """collect -> train -> export -> audit -> serve -> audit through the server -> stop."""
    work = args.workdir
    dataset, run, repo = work / f"{args.task}.h5", work / "run", work / "models"
    name = f"{args.task.lower()}-{args.algorithm}"
    overrides = args.overrides
    if overrides is None:
        overrides = ["td3bc.tau=0.05"] if args.algorithm == "o3srl" else []
    started = time.monotonic()
    if not dataset.exists():
        _run(
            "collect", "--task", args.task, "--episodes", str(args.episodes), "--out", str(dataset)
        )
    if not (run / "actor.pt").exists():
        _run(
            "train",
            args.algorithm,
            "--task",
            args.task,
            "--dataset",
            str(dataset),
            "--cost-limit",
            f"{args.cost_limit:g}",
            "--steps",
            str(args.steps),
            "--out",
            str(run),
            "--resume",
            "--quiet",
            *[part for override in overrides for part in ("--set", override)],
        )
    _run("export", "--run", str(run), "--repo", str(repo), "--name", name)
    version = max(int(p.name) for p in (repo / name).iterdir() if p.name.isdigit())
    _run(
        "audit",
        "--policy",
        str(repo / name / str(version)),
        "--episodes",
        str(args.audit_episodes),
        "--out",
        str(work / "audit-artifact"),
        "--quiet",
        ok_codes=AUDIT_VERDICT_CODES,
    )
    verdict = _verdict(work / "audit-artifact")
    if verdict != "PASS":
        print(
            f"\naudit verdict {verdict}: the artifact did not show that it keeps its cost "
            f"limit {args.cost_limit:g}. That is a result, not an error: serving it anyway "
            "to audit it through the server (production servers refuse it with "
            "--require-audit).",
            flush=True,
        )

    port, metrics_port = _free_port(), _free_port()
    print(
        f"\n$ safepolicy serve --repo {repo} --port {port} --metrics-port {metrics_port}",
        flush=True,
    )
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "safepolicy",
            "serve",
            "--repo",
            str(repo),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
        ]
    )
    try:
        _wait_for_metrics(f"http://127.0.0.1:{metrics_port}/metrics", server, timeout_s=60)
        _run(
            "audit",
            "--server",
            f"127.0.0.1:{port}",
            "--name",
            name,
            "--task",
            args.task,
            "--cost-limit",
            f"{args.cost_limit:g}",
            "--episodes",
            str(max(1, args.audit_episodes // 2)),
            "--out",
            str(work / "audit-deployed"),
            "--quiet",
            ok_codes=AUDIT_VERDICT_CODES,
        )
        metrics = _wait_for_metrics(f"http://127.0.0.1:{metrics_port}/metrics", server, 10)
        served = [
            line
            for line in metrics.splitlines()
            if line.startswith("safepolicy_server_requests_total")
        ]
        print("\nserver metrics after the deployed audit:")
        print("\n".join(served) or "(no request counters found)")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    deployed = _verdict(work / "audit-deployed")
    print(
        f"\nDemo finished in {time.monotonic() - started:.0f} s. {args.algorithm} on "
        f"{args.task}, cost limit {args.cost_limit:g}: artifact audit {verdict}, deployed "
        f"audit {deployed}.\nReports: {work / 'audit-artifact' / 'report.md'} and "
        f"{work / 'audit-deployed' / 'report.md'}"
    )
    return 0
