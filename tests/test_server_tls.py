"""TLS and mutual TLS end to end, with throwaway certificates made by the openssl CLI.

Each test module run creates a private CA, a server certificate for ``localhost`` and
``127.0.0.1``, a client certificate from the same CA, and a second, unrelated CA with its own
client certificate (a client the server must not trust). Everything lives in a temporary
directory and is valid for one day.
"""

from __future__ import annotations

import http.client
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from safepolicy.server.client import PolicyClient
from safepolicy.server.settings import ServerSettings
from safepolicy.server.testing import ServerThread, make_policy, observations

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(
    OPENSSL is None, reason="the openssl command-line tool is needed to make test certificates"
)


def openssl(*args: str | Path, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> None:
    """``name.key`` and a self-signed CA certificate ``name.pem``."""
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        "-days",
        "1",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )


def make_leaf(directory: Path, ca: str, name: str, extensions: str) -> None:
    """``name.key`` and ``name.pem`` signed by ``ca`` with the given X.509v3 extensions."""
    (directory / f"{name}.ext").write_text(extensions + "\n")
    openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=directory,
    )
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "1",
        "-extfile",
        f"{name}.ext",
        cwd=directory,
    )


@dataclass(frozen=True)
class Pki:
    directory: Path

    def read(self, name: str) -> bytes:
        return (self.directory / name).read_bytes()

    def path(self, name: str) -> Path:
        return self.directory / name


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    make_ca(directory, "ca")
    make_leaf(
        directory,
        "ca",
        "server",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth",
    )
    make_leaf(directory, "ca", "client", "extendedKeyUsage=clientAuth")
    make_ca(directory, "stranger-ca")
    make_leaf(directory, "stranger-ca", "stranger", "extendedKeyUsage=clientAuth")
    return Pki(directory)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    make_policy(root, "ballrun", 1, seed=1)
    return root


def tls_settings(repo: Path, pki: Pki, *, mutual: bool) -> ServerSettings:
    return ServerSettings(
        repo=repo,
        host="127.0.0.1",
        port=0,
        metrics_port=None,
        poll_interval_s=0,
        grace_s=2,
        tls_cert_file=pki.path("server.pem"),
        tls_key_file=pki.path("server.key"),
        tls_client_ca_file=pki.path("ca.pem") if mutual else None,
    )


@pytest.fixture(scope="module")
def tls_server(repo: Path, pki: Pki) -> Iterator[ServerThread]:
    with ServerThread(tls_settings(repo, pki, mutual=False)) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(repo: Path, pki: Pki) -> Iterator[ServerThread]:
    with ServerThread(tls_settings(repo, pki, mutual=True)) as server:
        yield server


def refused(client: PolicyClient) -> grpc.StatusCode:
    """The status code of an Act call that is expected to fail at the transport."""
    with client, pytest.raises(grpc.RpcError) as caught:
        client.act("ballrun", observations(1), timeout=5)
    return caught.value.code()  # type: ignore[no-any-return]


def test_tls_client_trusting_the_ca_is_served(tls_server: ServerThread, pki: Pki) -> None:
    with PolicyClient(tls_server.target, root_certificates=pki.read("ca.pem")) as client:
        assert client.act("ballrun", observations(1)).version == 1
        with client.stream("ballrun") as loop:
            assert loop.act(observations(1)[0]).actions.shape == (2,)
    # by host name too: the certificate names localhost as well as 127.0.0.1
    with PolicyClient(
        f"localhost:{tls_server.port}", root_certificates=pki.read("ca.pem")
    ) as client:
        assert client.act("ballrun", observations(3)).actions.shape == (3, 2)


def test_tls_refuses_plaintext_and_untrusting_clients(tls_server: ServerThread, pki: Pki) -> None:
    assert refused(PolicyClient(tls_server.target)) == grpc.StatusCode.UNAVAILABLE
    # a client that trusts another CA cannot verify the server's certificate
    assert (
        refused(PolicyClient(tls_server.target, root_certificates=pki.read("stranger-ca.pem")))
        == grpc.StatusCode.UNAVAILABLE
    )


def test_mutual_tls_serves_a_client_with_a_certificate_from_the_ca(
    mtls_server: ServerThread, pki: Pki
) -> None:
    with PolicyClient(
        mtls_server.target,
        root_certificates=pki.read("ca.pem"),
        private_key=pki.read("client.key"),
        certificate_chain=pki.read("client.pem"),
    ) as client:
        assert client.act("ballrun", observations(1)).version == 1
        assert [info.name for info in client.list_policies()] == ["ballrun"]


def test_mutual_tls_refuses_clients_without_a_trusted_certificate(
    mtls_server: ServerThread, pki: Pki
) -> None:
    ca = pki.read("ca.pem")
    assert (
        refused(PolicyClient(mtls_server.target, root_certificates=ca))
        == grpc.StatusCode.UNAVAILABLE
    )  # TLS without a client certificate
    assert (
        refused(
            PolicyClient(
                mtls_server.target,
                root_certificates=ca,
                private_key=pki.read("stranger.key"),
                certificate_chain=pki.read("stranger.pem"),
            )
        )
        == grpc.StatusCode.UNAVAILABLE
    )  # a certificate from a CA the server does not trust
    assert refused(PolicyClient(mtls_server.target)) == grpc.StatusCode.UNAVAILABLE


def _https_live(port: int, context: ssl.SSLContext) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        conn.request("GET", "/v2/health/live")
        return conn.getresponse().status
    finally:
        conn.close()


def test_the_http_port_uses_the_same_tls_and_client_ca(repo: Path, pki: Pki) -> None:
    """``--http-port`` with TLS settings serves HTTPS, with the same mutual-TLS rule."""
    settings = tls_settings(repo, pki, mutual=True).model_copy(update={"http_port": 0})
    with ServerThread(settings) as server:
        port = server.server.http_port
        assert port is not None
        trusted = ssl.create_default_context(cafile=str(pki.path("ca.pem")))
        trusted.load_cert_chain(str(pki.path("client.pem")), str(pki.path("client.key")))
        assert _https_live(port, trusted) == 200
        no_certificate = ssl.create_default_context(cafile=str(pki.path("ca.pem")))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _https_live(port, no_certificate)
        plaintext = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plaintext.request("GET", "/v2/health/live")
            plaintext.getresponse()
        plaintext.close()
