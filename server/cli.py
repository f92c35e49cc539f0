"""``safepolicy serve``: run the gRPC policy server.

    safepolicy serve --repo REPO --port 50051 --metrics-port 9090 [--workers W]

Every flag also reads from ``SAFEPOLICY_SERVER_<NAME>`` (e.g. ``SAFEPOLICY_SERVER_PORT``);
flags win. With ``--workers W > 1`` this process starts W server processes that share the
gRPC port through SO_REUSEPORT (the kernel spreads connections across them) and forwards
SIGTERM/SIGINT to them; worker i serves metrics on ``metrics_port + i``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from safepolicy.server.settings import ServerSettings, SettingsError

log = logging.getLogger("server")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safepolicy serve", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=None)
    fields = ServerSettings.model_fields

    def add(flag: str, **kwargs: Any) -> None:
        name = flag.lstrip("-").replace("-", "_")
        description = fields[name].description or ""
        env = f"SAFEPOLICY_SERVER_{name.upper()}"
        parser.add_argument(flag, help=f"{description} [env {env}]", **kwargs)

    add("--repo", type=Path)
    add("--host")
    add("--port", type=int)
    add("--metrics-port", type=int)
    add("--metrics-host")
    add("--http-port", type=int)
    add("--workers", type=int)
    add("--version-policy", choices=["latest", "all"])
    add("--pins", metavar="NAME=V[,V];...")
    add("--require-audit", action="store_const", const=True)
    add("--poll-interval-s", type=float)
    add("--max-batch-size", type=int)
    add("--max-message-bytes", type=int)
    add("--inline-max-rows", type=int)
    add("--onnx-threads", type=int)
    add("--onnx-providers")
    add("--batching", action="store_const", const=True)
    add("--batch-max-size", type=int)
    add("--batch-max-delay-ms", type=float)
    add("--batch-max-queue", type=int)
    add("--auth-token-file", type=Path)
    add("--tls-cert-file", type=Path)
    add("--tls-key-file", type=Path)
    add("--tls-client-ca-file", type=Path)
    add("--grace-s", type=float)
    add("--drain-delay-s", type=float)
    add("--gil-switch-interval-ms", type=float)
    add("--log-level")
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def settings_from(args: argparse.Namespace) -> ServerSettings:
    """Flags that were given, over the environment, over the defaults."""
    given = {key: value for key, value in vars(args).items()
             if value is not None and key != "worker_index"}
    return ServerSettings(**given)


def run_workers(argv: list[str], settings: ServerSettings) -> int:
    """Start ``settings.workers`` server processes on the shared port and supervise them."""
    children = [subprocess.Popen([sys.executable, "-m", "safepolicy.server", *argv,
                                  "--worker-index", str(index)])
                for index in range(settings.workers)]

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    failed = [code for code in codes if code != 0]
    return failed[0] if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ValidationError as error:
        print(f"safepolicy serve: invalid settings:\n{error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    if settings.workers > 1 and args.worker_index is None:
        return run_workers(argv, settings)
    if args.worker_index is not None and settings.metrics_port:
        settings = settings.model_copy(update={
            "metrics_port": settings.metrics_port + args.worker_index})
    from safepolicy.server.app import PolicyServer  # after settings: `--help` stays fast

    # onnxruntime releases the GIL for each run; with grpc's poller thread busy, getting it
    # back waits up to the switch interval (5 ms by default): p99 5.8 ms and 0.3x the echo's
    # 8-client throughput in benchmarks/serve_latency.py, 0.7 ms and 0.67x at 0.2 ms
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000.0)

    try:
        server = PolicyServer(settings)
        asyncio.run(server.run())
    except (SettingsError, OSError) as error:
        print(f"safepolicy serve: {error}", file=sys.stderr)
        return 1
    log.info("stopped (pid %d)", os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
