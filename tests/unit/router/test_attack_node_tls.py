"""Attack review of the router's node client (backends.py): a prompt and the node's
credentials go only to a node that proves, over TLS, that it is the node configured: its
certificate chains to the configured CA and names the host (or tls.server_name). A node
that cannot prove it gets nothing, not even the request line."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fdp_router.backends import BackendFailure, BackendPool
from fdp_router.config import HospitalNodeConfig, NodeMechanism, RoutingConfig
from fdp_router.metrics import Metrics
from fdp_router.node_contract import SentPrivacy

SENT = SentPrivacy(0.5, 0.0, NodeMechanism.PURE_DP)
PAYLOAD = {"messages": [{"role": "user", "content": "patient 4711 secret"}], "max_tokens": 8}
ANSWER = orjson.dumps({"choices": [{"message": {"role": "assistant", "content": "hello"}}]})
REPLY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-FDP-Privacy-Epsilon: 0.5\r\n"
    b"X-FDP-Privacy-Delta: 0\r\nX-FDP-Privacy-Mechanism: pure_dp\r\nContent-Length: %d\r\n\r\n%s"
    % (len(ANSWER), ANSWER)
)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    issuer: str | None,
    sans: list[x509.GeneralName],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer or subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
    )
    if issuer is None:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, b.sign(issuer_key or key, hashes.SHA256())


def _pem(path: Path, *items: object) -> str:
    out = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            out += item.public_bytes(serialization.Encoding.PEM)
        else:
            out += item.private_bytes(  # type: ignore[attr-defined]
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
    path.write_bytes(out)
    return str(path)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    ca_key, ca = _cert("node CA", None, None, [])
    _, other_ca = _cert("someone else's CA", None, None, [])
    key, cert = _cert("node.example", ca_key, "node CA", [x509.DNSName("node.example")])
    ip_key, ip_cert = _cert(
        "127.0.0.1", ca_key, "node CA", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    return {
        "ca": _pem(tmp_path / "ca.pem", ca),
        "other_ca": _pem(tmp_path / "other.pem", other_ca),
        "named": _pem(tmp_path / "named.pem", cert, key),
        "ip": _pem(tmp_path / "ip.pem", ip_cert, ip_key),
    }


@pytest.fixture
async def tls_node() -> AsyncIterator[Callable[..., object]]:
    closers: list[Callable[[], object]] = []

    async def start(server_pem: str, **tls: object) -> tuple[BackendPool, list[bytes]]:
        received: list[bytes] = []

        class P(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport

            def data_received(self, data: bytes) -> None:
                received.append(data)
                if b"\r\n\r\n" in b"".join(received):
                    self.t.write(REPLY)  # type: ignore[attr-defined]

        sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        sctx.load_cert_chain(server_pem)
        srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        routing = RoutingConfig()
        pool = BackendPool(routing, Metrics())
        await pool.start()
        cfg = HospitalNodeConfig(
            id="n1",
            hospital="h1",
            endpoint=f"https://127.0.0.1:{port}",
            privacy={"data_class": "phi", "mechanism": "pure_dp"},
            tls=tls,  # type: ignore[arg-type]
        )
        pool.configure((cfg,), routing)
        closers.append(srv.close)
        closers.append(pool.close)
        return pool, received

    yield start
    for close in reversed(closers):
        out = close()
        if asyncio.iscoroutine(out):
            await out


async def test_a_certificate_for_another_name_gets_no_prompt(tls_node, pki) -> None:
    pool, received = await tls_node(pki["named"], ca_file=pki["ca"])  # cert says node.example
    with pytest.raises(BackendFailure):
        await pool.chat("n1", PAYLOAD, SENT)
    assert b"patient" not in b"".join(received)


async def test_a_certificate_from_another_ca_gets_no_prompt(tls_node, pki) -> None:
    pool, received = await tls_node(pki["ip"], ca_file=pki["other_ca"])
    with pytest.raises(BackendFailure):
        await pool.chat("n1", PAYLOAD, SENT)
    assert b"patient" not in b"".join(received)


async def test_no_ca_file_means_the_system_store_not_no_verification(tls_node, pki) -> None:
    pool, received = await tls_node(pki["ip"])
    with pytest.raises(BackendFailure):
        await pool.chat("n1", PAYLOAD, SENT)
    assert b"patient" not in b"".join(received)


async def test_the_configured_node_is_reached(tls_node, pki) -> None:
    pool, received = await tls_node(pki["ip"], ca_file=pki["ca"])
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    pool2, _ = await tls_node(pki["named"], ca_file=pki["ca"], server_name="node.example")
    assert (await pool2.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert b"patient 4711" in b"".join(received)
