"""Server settings: flags, environment variables (``SAFEPOLICY_SERVER_*``) and defaults.

Kubernetes sets the environment; a person types flags; flags win over the environment. The
bearer token is deliberately not a flag (flags show up in ``ps``): it comes from
``SAFEPOLICY_SERVER_AUTH_TOKEN`` or from the file named by ``--auth-token-file``.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from safepolicy.errors import SafepolicyError


class SettingsError(SafepolicyError, ValueError):
    """Settings that cannot work together; the message says which and why."""


class ServerSettings(BaseSettings):
    """Everything the policy server can be told."""

    model_config = SettingsConfigDict(env_prefix="SAFEPOLICY_SERVER_", extra="forbid")

    repo: Path = Field(description="model repository REPO/NAME/VERSION/policy.onnx")
    allow_empty_repo: bool = Field(
        False,
        description="start even when the repository is "
        "missing or holds no policy, and serve what appears in it "
        "later (refused by default: a mistyped --repo is the usual "
        "cause)",
    )
    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    metrics_port: int | None = Field(
        9464,
        ge=0,
        le=65535,
        description="Prometheus /metrics port (0 picks a free one; with "
        "several workers, worker i uses metrics_port + i)",
    )
    metrics_host: str = Field("0.0.0.0", description="address of the metrics endpoint")
    http_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Open Inference Protocol over HTTP/REST on this port "
        "(same address, process and event loop as gRPC; 0 picks a free one; unset: off)",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="server processes sharing the port (SO_REUSEPORT) for multi-core throughput",
    )
    version_policy: Literal["latest", "all"] = Field(
        "latest", description="serve only the newest loadable version, or all of them"
    )
    # NoDecode: the env form is NAME=1,2;OTHER=3 (parsed below), not JSON
    pins: Annotated[dict[str, list[int]], NoDecode] = Field(
        default_factory=dict, description="policy -> versions to serve, overriding the policy"
    )
    require_audit: bool = Field(
        False,
        description="serve only versions whose audit.json "
        "says PASS against a cost_limit at most the policy's own",
    )
    poll_interval_s: float = Field(
        10.0,
        ge=0.0,
        description="seconds between repository scans (0: only at start and on the Reload call)",
    )
    max_batch_size: int = Field(1024, ge=1, description="most observations in one request")
    max_message_bytes: int = Field(
        4 << 20,
        ge=1 << 16,
        description="largest gRPC message (one 60 MB request stalled every caller under 64 MiB)",
    )
    inline_max_rows: int = Field(
        64,
        ge=0,
        description="batches up to this size run on the event loop; larger ones on a worker thread",
    )
    onnx_threads: int = Field(1, ge=1, description="onnxruntime intra-op threads per session")
    onnx_providers: str = Field(
        "auto",
        description="onnxruntime execution providers: auto "
        "(CUDA when available, else CPU), cpu, cuda, or a comma list",
    )
    batching: bool = Field(False, description="dynamic micro-batching of concurrent requests")
    batch_max_size: int = Field(64, ge=1, description="micro-batching: most rows per batch")
    batch_max_delay_ms: float = Field(
        1.0, ge=0.0, description="micro-batching: longest wait for a batch to fill"
    )
    batch_max_queue: int = Field(4096, ge=1, description="micro-batching: most rows waiting")
    auth_token: SecretStr | None = Field(None, description="bearer token clients must send")
    auth_token_file: Path | None = Field(None, description="file holding the bearer token")
    tls_cert_file: Path | None = Field(None, description="PEM server certificate (TLS)")
    tls_key_file: Path | None = Field(None, description="PEM server private key (TLS)")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA that client certificates must chain to (mutual TLS)"
    )
    grace_s: float = Field(
        10.0, ge=0.0, description="on SIGTERM: how long in-flight calls get to finish"
    )
    drain_delay_s: float = Field(
        0.0,
        ge=0.0,
        description="on SIGTERM: how long to report "
        "NOT_SERVING while still answering every call, so load "
        "balancers move traffic before calls are refused",
    )
    gil_switch_interval_ms: float = Field(
        0.2,
        gt=0.0,
        description="Python's thread switch interval in the server process; "
        "small values stop inference threads waiting for the GIL (sys.setswitchinterval)",
    )
    log_level: str = Field(
        "INFO", description="logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(
                f"{value!r} is not a logging level; use DEBUG, INFO, WARNING, ERROR or CRITICAL"
            )
        return level

    @field_validator("pins", mode="before")
    @classmethod
    def _parse_pins(cls, value: object) -> object:
        """Accept ``name=1,2;other=3`` (the flag and env form) as well as a mapping."""
        if not isinstance(value, str):
            return value
        pins: dict[str, list[int]] = {}
        for part in filter(None, (p.strip() for p in value.split(";"))):
            name, sep, versions = part.partition("=")
            if not sep or not name:
                raise ValueError(f"pin {part!r} is not NAME=VERSION[,VERSION...]")
            try:
                pins[name.strip()] = [int(v) for v in versions.split(",") if v.strip()]
            except ValueError as error:
                raise ValueError(f"pin {part!r}: versions must be integers") from error
        return pins

    @model_validator(mode="after")
    def _check(self) -> ServerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "mutual TLS (tls_client_ca_file) needs tls_cert_file and tls_key_file too"
            )
        if self.auth_token is not None and self.auth_token_file is not None:
            raise ValueError(
                "give the bearer token either in SAFEPOLICY_SERVER_AUTH_TOKEN or "
                "in auth_token_file, not both"
            )
        if self.workers > 1 and self.port == 0:
            raise ValueError("several workers share one fixed port; give --port")
        if self.workers > 1 and self.http_port is not None:
            raise ValueError(
                "--http-port serves from one process; use it with --workers 1 "
                "(or put the workers behind one HTTP load balancer each)"
            )
        return self

    def token(self) -> str | None:
        """The bearer token, read from its file when one is named; ``None``: auth off."""
        if self.auth_token_file is not None:
            try:
                text = self.auth_token_file.read_text(encoding="utf-8").strip()
            except OSError as error:
                raise SettingsError(
                    f"{self.auth_token_file}: cannot read the auth token "
                    f"file ({error.strerror or error})"
                ) from error
            if not text:
                raise SettingsError(f"{self.auth_token_file}: the auth token file is empty")
            return text
        if self.auth_token is not None:
            value = self.auth_token.get_secret_value()
            if not value:
                raise SettingsError("SAFEPOLICY_SERVER_AUTH_TOKEN is set but empty")
            return value
        return None

    def read_tls(self) -> tuple[bytes, bytes, bytes | None] | None:
        """(certificate, key, client CA) PEM bytes, or ``None`` when TLS is off."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        paths = [self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file]
        contents: list[bytes | None] = []
        for path in paths:
            if path is None:
                contents.append(None)
                continue
            try:
                contents.append(path.read_bytes())
            except OSError as error:
                raise SettingsError(
                    f"{path}: cannot read TLS file ({error.strerror or error})"
                ) from error
        cert, key, ca = contents
        assert cert is not None and key is not None
        check_pem(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)
        return cert, key, ca


def check_pem(cert_file: Path, key_file: Path, client_ca_file: Path | None) -> None:
    """Refuse a certificate, key or CA that is not PEM, or a key that does not match the
    certificate, naming the file (grpc would only say "Failed to bind")."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file, password=lambda: b"")  # never prompt
    except ssl.SSLError as error:
        reason = f" ({error.reason.lower()})" if error.reason else ""
        raise SettingsError(
            f"{cert_file} and {key_file}: not a PEM certificate and its matching private "
            f"key{reason}; pass the server's certificate to --tls-cert-file and its key to "
            "--tls-key-file"
        ) from error
    if client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except ssl.SSLError as error:
            reason = f" ({error.reason.lower()})" if error.reason else ""
            raise SettingsError(
                f"{client_ca_file}: not a PEM CA certificate{reason}; pass "
                "the CA that signs client certificates to "
                "--tls-client-ca-file"
            ) from error
