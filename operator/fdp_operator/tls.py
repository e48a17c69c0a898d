"""A per-router CA and its serving certificates, with cert-manager's duration semantics.

Called by the TLS step of ``reconcile/router.py``: the CA (kept in Secret ``<fr>-ca``)
signs a serving certificate whose SANs are the router Services' DNS names (Secret
``<fr>-tls`` with ``tls.crt``, ``tls.key``, ``ca.crt``). ``renewal_time`` is
``notAfter - renewBefore`` as in cert-manager; ``why_reissue`` says when a certificate must
be replaced (missing, wrong SANs, other CA, due). Key generation uses the OS CSPRNG via
``cryptography``; the functions take ``now`` instead of reading the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = timedelta(days=3650)
BACKDATE = timedelta(minutes=5)  # tolerate small clock skew between nodes


@dataclass(frozen=True)
class CertInfo:
    serial: str
    not_before: datetime
    not_after: datetime
    dns_names: tuple[str, ...]
    issuer: str
    subject: str


@dataclass(frozen=True)
class KeyPair:
    cert_pem: str
    key_pem: str


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def issue_ca(common_name: str, now: datetime) -> KeyPair:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))


def issue_serving(ca: KeyPair, dns_names: Sequence[str], now: datetime, duration: timedelta) -> KeyPair:
    """A serving (and client) certificate for ``dns_names``, signed by ``ca``."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + duration)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns_names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))


def inspect(cert_pem: str) -> CertInfo:
    """Parse a PEM certificate; raises ValueError when it is not one."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns = ()
    return CertInfo(
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns_names=dns,
        issuer=cert.issuer.rfc4514_string(),
        subject=cert.subject.rfc4514_string(),
    )


def renewal_time(info: CertInfo, renew_before: timedelta) -> datetime:
    """cert-manager: renew at notAfter - renewBefore (2/3 of the lifetime if that is earlier than issue)."""
    at = info.not_after - renew_before
    if at <= info.not_before:
        at = info.not_before + (info.not_after - info.not_before) * 2 / 3
    return at


def why_reissue(
    cert_pem: str | None, ca_pem: str, dns_names: Sequence[str], now: datetime, renew_before: timedelta
) -> str | None:
    """None when the certificate is fine; otherwise the reason to issue a new one."""
    if not cert_pem:
        return "no certificate yet"
    try:
        info = inspect(cert_pem)
        ca = inspect(ca_pem)
    except ValueError as exc:
        return f"unreadable certificate: {exc}"
    if info.issuer != ca.subject:
        return "certificate was not issued by the router CA"
    if sorted(info.dns_names) != sorted(dns_names):
        return "certificate DNS names differ from the Services"
    if now >= renewal_time(info, renew_before):
        return "certificate is due for renewal"
    return None
