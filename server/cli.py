"""``safepolicy serve``: run the gRPC policy server.

    safepolicy serve --repo REPO --port 50051 --metrics-port 9464 [--workers W]

Every flag also reads from ``SAFEPOLICY_SERVER_<NAME>`` (e.g. ``SAFEPOLICY_SERVER_PORT``);
flags win. A missing or empty REPO is refused (usually a mistyped path) unless
``--allow-empty-repo`` is given, which starts and serves policies as they appear. With
``--workers W > 1`` this process starts W server processes that share the gRPC port through
SO_REUSEPORT (the kernel spreads connections across them) and forwards SIGTERM/SIGINT to them;
worker i serves metrics on ``metrics_port + i``.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from safepolicy.cli import RawDescriptionHelpFormatter, report_error
from safepolicy.errors import SafepolicyError
from safepolicy.server.settings import ServerSettings, SettingsError

PROG = "safepolicy serve"

log = logging.getLogger("server")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=RawDescriptionHelpFormatter,
        argument_default=None,
    )
    fields = ServerSettings.model_fields

    def add(flag: str, **kwargs: Any) -> None:
        name = flag.lstrip("-").replace("-", "_")
        description = fields[name].description or ""
        env = f"SAFEPOLICY_SERVER_{name.upper()}"
        default = fields[name].default
        shown = (
            ""
            if default in (None, False) or not isinstance(default, str | int | float)
            else f" (default: {default})"
        )
        parser.add_argument(
            flag, help=f"{description}{shown} [env {env}]".replace("%", "%%"), **kwargs
        )

    add("--repo", type=Path)
    add("--allow-empty-repo", action="store_const", const=True)
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
    given = {
        key: value
        for key, value in vars(args).items()
        if value is not None and key != "worker_index"
    }
    return ServerSettings(**given)


def settings_error_line(error: ValidationError) -> str:
    """pydantic's multi-line dump as one line naming each flag and what it needs."""
    problems = []
    for item in error.errors():
        name = "_".join(str(part) for part in item["loc"][:1])
        flag = f"--{name.replace('_', '-')}" if name else ""
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "missing":
            problems.append(f"{flag} is required (or set SAFEPOLICY_SERVER_{name.upper()})")
        else:
            problems.append(f"{flag}: {message}" if flag else message)
    return "invalid settings: " + "; ".join(problems)


def check_free(host: str, port: int, what: str, flag: str) -> None:
    """Refuse a port that something else already listens on, naming it and the way out."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise SettingsError(
            f"{what} address {host!r} cannot be resolved ({error.strerror}); "
            "pass an address of this machine, e.g. 0.0.0.0 or 127.0.0.1"
        ) from error
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc and http.server
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise SettingsError(
                    f"{what} port {port} on {host} is already in use; stop "
                    f"what holds it or pass another {flag} (0 picks a free one)"
                ) from error
            raise SettingsError(
                f"cannot listen on {host}:{port} for the {what} "
                f"({error.strerror}); pass another {flag} or address"
            ) from error


def check_repository(settings: ServerSettings) -> None:
    """A missing or policy-less repository is refused unless --allow-empty-repo."""
    repo = settings.repo
    if settings.allow_empty_repo:
        return
    if not repo.is_dir():
        problem = "does not exist" if not repo.exists() else "is not a directory"
    elif not any(path.parent.name.isdigit() for path in repo.glob("*/*/policy.onnx")):
        problem = "holds no policy (no NAME/VERSION/policy.onnx)"
    else:
        return
    raise SettingsError(
        f"model repository {repo} {problem}; export one with `safepolicy export "
        f"--repo {repo} ...`, or pass --allow-empty-repo to start anyway and "
        "serve policies as they appear"
    )


def preflight(settings: ServerSettings, worker_index: int | None) -> None:
    """What a newcomer gets wrong, checked before any thread starts, each as one line."""
    check_repository(settings)
    settings.token()
    settings.read_tls()
    if settings.workers == 1 or worker_index is None:  # workers share the port on purpose
        check_free(settings.host, settings.port, "gRPC", "--port")
    if settings.metrics_port:
        count = settings.workers if worker_index is None else 1
        for offset in range(count):
            check_free(
                settings.metrics_host, settings.metrics_port + offset, "metrics", "--metrics-port"
            )
    if settings.http_port:
        check_free(settings.host, settings.http_port, "HTTP", "--http-port")


def run_workers(argv: list[str], settings: ServerSettings) -> int:
    """Start ``settings.workers`` server processes on the shared port and supervise them."""
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "safepolicy.server", *argv, "--worker-index", str(index)]
        )
        for index in range(settings.workers)
    ]

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
        print(f"{PROG}: error: {settings_error_line(error)}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    if args.worker_index is not None and settings.metrics_port:
        settings = settings.model_copy(
            update={"metrics_port": settings.metrics_port + args.worker_index}
        )
    try:
        preflight(settings, args.worker_index)
    except SafepolicyError as error:
        report_error(PROG, error)
        return 2
    if settings.workers > 1 and args.worker_index is None:
        return run_workers(argv, settings)
    if not any(settings.repo.glob("*/*/policy.onnx")):
        log.warning(
            "model repository %s holds no policy yet (--allow-empty-repo): serving "
            "nothing until one is exported into it",
            settings.repo,
        )
    from safepolicy.server.app import PolicyServer  # after settings: `--help` stays fast

    # onnxruntime releases the GIL for each run; with grpc's poller thread busy, getting it
    # back waits up to the switch interval (5 ms by default): p99 5.8 ms and 0.3x the echo's
    # 8-client throughput in benchmarks/serve_latency.py, 0.7 ms and 0.67x at 0.2 ms
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000.0)

    try:
        server = PolicyServer(settings)
        asyncio.run(server.run())
    except (SafepolicyError, OSError) as error:
        report_error(PROG, error)
        return 1
    except RuntimeError as error:  # grpc's "Failed to bind" when a port was taken meanwhile
        if "bind" not in str(error).lower():
            raise
        report_error(
            PROG, f"cannot listen on {settings.host}:{settings.port} ({error}); pass another --port"
        )
        return 1
    log.info("stopped (pid %d)", os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
