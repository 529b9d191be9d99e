"""TLS for ``headwater serve``: HTTPS and ``wss://`` on one port, the certificate
reloaded on SIGHUP, the rule that requires it, and tokens kept out of the logs.

Certificates are made for each test (self-signed, for ``localhost`` and 127.0.0.1) with
the ``cryptography`` package when it is installed, else the ``openssl`` command; the
tests are skipped when neither is there. Clients trust exactly the certificates the test
made. The SIGHUP test runs a real ``headwater serve`` subprocess.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import anyio
import pytest
from websockets.asyncio.client import connect as ws_connect

from headwater.client import connect
from headwater.server import Server, ServerConfig
from headwater.server.base import ServerError
from headwater.server.config import TlsConfig
from headwater.server.tls import tls_requirement
from test_server_cli import Lines, headwater
from test_server_helpers import WAIT, make_plugins

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _cryptography_available() -> bool:
    try:
        import cryptography  # noqa: F401 - only whether it is there
    except ImportError:
        return False
    return True


needs_certificates = pytest.mark.skipif(
    not _cryptography_available() and shutil.which("openssl") is None,
    reason="making a certificate needs the cryptography package or the openssl command",
)


def make_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost`` and 127.0.0.1: ``(cert, key)`` files
    ``NAME.pem`` and ``NAME.key`` in ``folder``."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    if _cryptography_available():
        _make_with_cryptography(cert, key, name)
        return cert, key
    command = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ]
    subprocess.run(
        [*command, "-subj", f"/CN=localhost/O={name}", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=WAIT,
    )
    return cert, key


def _make_with_cryptography(cert: Path, key: Path, name: str) -> None:  # pragma: no cover
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    built = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def trusting(*certs: Path) -> ssl.SSLContext:
    """A client context that trusts exactly ``certs``."""
    context = ssl.create_default_context()
    for cert in certs:
        context.load_verify_locations(cert)
    return context


def der(cert: Path) -> bytes:
    """The DER bytes of a PEM certificate file."""
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


async def peer_certificate(port: int, context: ssl.SSLContext) -> bytes:
    """The certificate a new TLS connection to 127.0.0.1:``port`` is shown (DER)."""

    def handshake() -> bytes:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            found = tls.getpeercert(binary_form=True)
            assert found is not None
            return found

    return await anyio.to_thread.run_sync(handshake)


async def https_get(url: str, context: ssl.SSLContext, read: int = -1) -> tuple[int, bytes]:
    """``GET url`` over HTTPS; the status and (up to ``read`` bytes of) the body."""
    import urllib.request

    def fetch() -> tuple[int, bytes]:
        with urllib.request.urlopen(url, timeout=WAIT, context=context) as response:
            return response.status, response.read(read) if read >= 0 else response.read()

    return await anyio.to_thread.run_sync(fetch)


COUNT = {
    "pipeline": {
        "name": "count",
        "sources": {"n": {"action": "range", "params": {"stop": 3}}},
        "sinks": [{"sink": "websocket"}],
    },
    "params": {"stop": "sources.n.params.stop"},
}


@needs_certificates
async def test_wss_and_https_with_certificate_files_relative_to_the_configuration(
    tmp_path: Path,
) -> None:
    (tmp_path / "certs").mkdir()
    cert, _ = make_certificate(tmp_path / "certs", "first")
    config = ServerConfig(
        port=0,
        pipelines={"count": COUNT},
        tls={"cert_file": "certs/first.pem", "key_file": "certs/first.key"},
    )
    context = trusting(cert)
    async with Server(config, plugins=make_plugins(), environ={}, base_dir=tmp_path) as server:
        assert server.tls
        assert server.url == f"wss://127.0.0.1:{server.port}/"
        assert server.http_url == f"https://127.0.0.1:{server.port}"
        https = f"https://localhost:{server.port}"
        status, body = await https_get(f"{https}/healthz", context)
        assert (status, json.loads(body)["status"]) == (200, "ok")

        async with connect(f"wss://localhost:{server.port}/", ssl=context) as client:
            started = await client.run("count", {"stop": 3})
            chunks = []
            with anyio.fail_after(WAIT):
                async for message in client:
                    if message.type == "stream_update":
                        chunks.append(message.data)
                    elif message.type == "stream_complete":
                        break
            assert (started.pipeline, chunks) == ("count", [0, 1, 2])

        # event streams take the server's own HTTP path: over TLS too
        await server.manager.create_stream("news")
        await server.manager.push("news", {"n": 1})
        status, head = await https_get(f"{https}/api/streams/news/events?since=0", context, 9)
        assert (status, head) == (200, b"event: su")

        # a client that does not trust the certificate is refused by its own TLS check
        with pytest.raises(ssl.SSLCertVerificationError):
            await peer_certificate(server.port, ssl.create_default_context())


@needs_certificates
async def test_sighup_reloads_the_certificate_for_new_connections(tmp_path: Path) -> None:
    first_cert, first_key = make_certificate(tmp_path, "first")
    second_cert, second_key = make_certificate(tmp_path, "second")
    (tmp_path / "live.pem").write_bytes(first_cert.read_bytes())
    (tmp_path / "live.key").write_bytes(first_key.read_bytes())
    (tmp_path / "serve.yaml").write_text(
        "port: 0\ntls: {cert_file: live.pem, key_file: live.key}\n"
    )
    context = trusting(first_cert, second_cert)
    async with headwater("serve", "--config", "serve.yaml", cwd=tmp_path) as server:
        err = Lines(server.stderr)
        port = int((await err.until(r"serving on https://127\.0\.0\.1:(\d+)")).group(1))
        assert any(f"WebSocket wss://127.0.0.1:{port}/" in line for line in err.lines)
        assert await peer_certificate(port, context) == der(first_cert)

        async with ws_connect(f"wss://localhost:{port}/", ssl=context) as before:
            (tmp_path / "live.pem").write_bytes(second_cert.read_bytes())
            (tmp_path / "live.key").write_bytes(second_key.read_bytes())
            server.send_signal(signal.SIGHUP)
            await err.until(r"SIGHUP: TLS certificate reloaded")
            assert await peer_certificate(port, context) == der(second_cert)
            # an open connection keeps going with its own
            await before.send(json.dumps({"type": "ping", "id": 1}))
            with anyio.fail_after(WAIT):
                assert json.loads(await before.recv())["type"] == "pong"

        # files that do not load change nothing
        (tmp_path / "live.key").write_bytes(first_key.read_bytes())  # not the pair
        server.send_signal(signal.SIGHUP)
        await err.until(r"SIGHUP: tls: cannot load the certificate .*; the current certificate")
        assert await peer_certificate(port, context) == der(second_cert)
        status, _ = await https_get(f"https://localhost:{port}/healthz", context)
        assert status == 200

        server.send_signal(signal.SIGINT)
        with anyio.fail_after(WAIT):
            assert await server.wait() == 130
        assert "Traceback" not in await err.rest()


async def test_tokens_beyond_loopback_need_tls(tmp_path: Path) -> None:
    (tmp_path / "serve.yaml").write_text("port: 0\nauth: {tokens: {s3cret: ada}}\n")
    async with headwater(
        "serve", "--config", "serve.yaml", "--host", "0.0.0.0", cwd=tmp_path
    ) as server:
        text = await Lines(server.stderr).rest()
        with anyio.fail_after(WAIT):
            assert await server.wait() == 2
    assert "refusing to serve on 0.0.0.0 with authentication but without TLS" in text
    assert "tls.cert_file" in text
    assert "Traceback" not in text

    (tmp_path / "missing.yaml").write_text("port: 0\ntls: {cert_file: nope.pem}\n")
    async with headwater("serve", "--config", "missing.yaml", cwd=tmp_path) as server:
        text = await Lines(server.stderr).rest()
        with anyio.fail_after(WAIT):
            assert await server.wait() == 2
    assert "headwater: error: tls: no such file: nope.pem" in text  # beside serve.yaml


def test_the_tls_rule() -> None:
    none, cert = TlsConfig(), TlsConfig(cert_file="c.pem")
    waived, demanded = TlsConfig(required=False), TlsConfig(required=True)
    # beyond loopback with authentication: a certificate, or an explicit waiver (warned)
    assert tls_requirement("0.0.0.0", True, none).error is not None
    assert tls_requirement("192.0.2.1", True, cert) == tls_requirement("::1", True, none)
    assert tls_requirement("0.0.0.0", True, cert).error is None
    waiver = tls_requirement("0.0.0.0", True, waived)
    assert waiver.error is None
    assert waiver.warning is not None
    assert "without TLS (tls.required: false)" in waiver.warning
    # loopback, or no authentication (then the server binds loopback only anyway)
    assert tls_requirement("127.0.0.1", True, none).error is None
    assert tls_requirement("localhost", True, waived).warning is None
    # required: true needs a certificate wherever the server binds
    assert tls_requirement("127.0.0.1", False, demanded).error is not None
    with_cert = TlsConfig(cert_file="c.pem", required=True)
    assert tls_requirement("127.0.0.1", False, with_cert).error is None


async def test_required_tls_without_a_certificate_refuses_to_start() -> None:
    config = ServerConfig(port=0, tls={"required": True})
    with pytest.raises(ServerError, match=r"tls\.required is true but tls\.cert_file is not set"):
        async with Server(config, plugins=make_plugins(), environ={}):
            pass  # pragma: no cover - refused


async def test_tokens_never_reach_the_log(tmp_path: Path) -> None:
    token, wrong = "tok-3e8f7a1c", "bad-91d4c2e0"
    (tmp_path / "serve.yaml").write_text(f"port: 0\nauth: {{tokens: {{{token}: ada}}}}\n")
    async with headwater("serve", "--config", "serve.yaml", "-vv", cwd=tmp_path) as server:
        err = Lines(server.stderr)
        port = int((await err.until(r"serving on http://127\.0\.0\.1:(\d+)")).group(1))
        base = f"127.0.0.1:{port}"
        async with connect(f"ws://{base}/?token={token}") as client:
            await client.ping()
        headers = {"Authorization": f"Bearer {token}", "Cookie": f"headwater_token={token}"}
        async with ws_connect(f"ws://{base}/", additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "ping", "id": 1}))
            with anyio.fail_after(WAIT):
                await ws.recv()
        with pytest.raises(Exception, match="401"):
            async with connect(f"ws://{base}/?token={wrong}"):
                pass  # pragma: no cover - refused

        def plain_requests() -> None:
            import urllib.error
            import urllib.request

            for url, header in (
                (f"http://{base}/api/streams?token={token}", None),
                (f"http://{base}/api/streams", f"Bearer {token}"),
                (f"http://{base}/api/streams/none/events?token={token}", None),
                (f"http://{base}/api/streams?token={wrong}", None),
            ):
                request = urllib.request.Request(url)
                if header is not None:
                    request.add_header("Authorization", header)
                with contextlib.suppress(urllib.error.HTTPError):
                    urllib.request.urlopen(request, timeout=WAIT).close()

        await anyio.to_thread.run_sync(plain_requests)
        await err.until(r"< GET /\?token=\*\*\* HTTP/1\.1")  # websockets' debug log, redacted
        server.send_signal(signal.SIGINT)
        with anyio.fail_after(WAIT):
            assert await server.wait() == 130
        text = await err.rest()
    assert "< Authorization: ***" in text  # the header lines are there, without values
    assert "< Cookie: headwater_token=***" in text
    assert token not in text
    assert wrong not in text
