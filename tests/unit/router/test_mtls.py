"""mTLS to a hospital node, for real: the demo node requires a client certificate signed by
its CA; the router presents the one the node config names and verifies the node's cert."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fdp_router.demo_node import DemoState, create_demo_app, server_ssl_context

from .conftest import Cluster, RouterFactory, auth, q


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(ca_key: Any, ca_cert: x509.Certificate, cn: str, server: bool) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName(cn)]
            ),
            critical=False,
        )
    return key, b.sign(ca_key, hashes.SHA256())


def _write(dirpath: Path, name: str, key: Any, cert: x509.Certificate) -> tuple[str, str]:
    c, k = dirpath / f"{name}.crt", dirpath / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(c), str(k)


async def test_router_reaches_an_mtls_node_only_with_the_right_client_certificate(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any, tmp_path: Path
) -> None:
    server_ca_key, server_ca = _ca("hospital-ca")
    client_ca_key, client_ca = _ca("router-client-ca")
    rogue_ca_key, rogue_ca = _ca("rogue-ca")
    node_key, node_cert = _leaf(server_ca_key, server_ca, "node.hospital.test", server=True)
    cli_key, cli_cert = _leaf(client_ca_key, client_ca, "fdp-router", server=False)
    rogue_key, rogue_cert = _leaf(rogue_ca_key, rogue_ca, "fdp-router", server=False)
    server_ca_file = tmp_path / "server-ca.crt"
    server_ca_file.write_bytes(server_ca.public_bytes(serialization.Encoding.PEM))
    client_ca_file = tmp_path / "client-ca.crt"
    client_ca_file.write_bytes(client_ca.public_bytes(serialization.Encoding.PEM))
    node_crt, node_k = _write(tmp_path, "node", node_key, node_cert)
    cli_crt, cli_k = _write(tmp_path, "client", cli_key, cli_cert)
    rogue_crt, rogue_k = _write(tmp_path, "rogue", rogue_key, rogue_cert)

    state = DemoState(name="secure")
    srv = await aiohttp_server(
        create_demo_app(state), ssl=server_ssl_context(node_crt, node_k, str(client_ca_file))
    )
    endpoint = f"https://127.0.0.1:{srv.port}"

    def cfg(cert: str | None, key: str | None, ca: str | None) -> Any:
        node = {
            "id": "secure",
            "hospital": "secure-hospital",
            "endpoint": endpoint,
            "tls": {"ca_file": ca, "client_cert_file": cert, "client_key_file": key},
            "model": "patient-stats",
            "privacy": {"data_class": "phi", "mechanism": "pure_dp"},
        }
        return demo_cluster.config(nodes=[node], routing={"max_attempts": 1}, cache={"enabled": False})

    good = await router(cfg(cli_crt, cli_k, str(server_ca_file)))
    r = await good.post("/v1/inference", json={"prompt": q("asthma control?")}, headers=auth())
    assert r.status == 200, await r.text()
    assert "first-line treatment for hypertension" in (await r.json())["response"]
    assert state.completions == 1

    # A client certificate from another CA: the node refuses the handshake.
    rogue = await router(cfg(rogue_crt, rogue_k, str(server_ca_file)))
    r = await rogue.post("/v1/inference", json={"prompt": q("asthma")}, headers=auth())
    assert r.status == 502
    # No client certificate at all.
    bare = await router(cfg(None, None, str(server_ca_file)))
    r = await bare.post("/v1/inference", json={"prompt": q("asthma")}, headers=auth())
    assert r.status == 502
    # The node's certificate is not trusted without its CA.
    untrusted = await router(cfg(cli_crt, cli_k, None))
    r = await untrusted.post("/v1/inference", json={"prompt": q("asthma")}, headers=auth())
    assert r.status == 502
    assert state.completions == 1  # none of the failed handshakes reached the handler
    budget = await (await good.get("/v1/privacy/budget/alice", headers=auth())).json()
    assert budget["details"]["queries"] == 1  # only the successful request was charged
