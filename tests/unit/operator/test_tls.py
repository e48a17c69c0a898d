"""The per-router CA: SANs, chains, cert-manager renewal times, reissue reasons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from fdp_operator import tls
from fdp_operator.render.names import service_dns_names

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DNS = service_dns_names("fr1", "ns")


def _pair():
    ca = tls.issue_ca("test-ca", NOW)
    return ca, tls.issue_serving(ca, DNS, NOW, timedelta(hours=1))


def test_serving_cert_has_the_service_dns_names_and_chains_to_the_ca() -> None:
    ca, srv = _pair()
    info = tls.inspect(srv.cert_pem)
    assert set(info.dns_names) == set(DNS)
    assert "fr1.ns.svc" in info.dns_names and "fr1-preview.ns.svc.cluster.local" in info.dns_names
    cert = x509.load_pem_x509_certificate(srv.cert_pem.encode())
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    cert.verify_directly_issued_by(ca_cert)  # raises if the signature or issuer is wrong
    assert info.not_after == NOW + timedelta(hours=1)


def test_renewal_time_is_not_after_minus_renew_before() -> None:
    _, srv = _pair()
    info = tls.inspect(srv.cert_pem)
    assert tls.renewal_time(info, timedelta(minutes=20)) == NOW + timedelta(minutes=40)


def test_why_reissue_gives_a_reason_only_when_needed() -> None:
    ca, srv = _pair()
    other_ca = tls.issue_ca("other", NOW)
    rb = timedelta(minutes=20)
    assert tls.why_reissue(srv.cert_pem, ca.cert_pem, DNS, NOW, rb) is None
    assert tls.why_reissue(None, ca.cert_pem, DNS, NOW, rb) == "no certificate yet"
    assert "not issued by" in tls.why_reissue(srv.cert_pem, other_ca.cert_pem, DNS, NOW, rb)
    assert "DNS names" in tls.why_reissue(srv.cert_pem, ca.cert_pem, [*DNS, "x"], NOW, rb)
    assert "due" in tls.why_reissue(srv.cert_pem, ca.cert_pem, DNS, NOW + timedelta(minutes=41), rb)


def test_every_issue_uses_a_fresh_key_and_serial() -> None:
    ca = tls.issue_ca("ca", NOW)
    a = tls.issue_serving(ca, DNS, NOW, timedelta(hours=1))
    b = tls.issue_serving(ca, DNS, NOW, timedelta(hours=1))
    assert a.key_pem != b.key_pem
    assert tls.inspect(a.cert_pem).serial != tls.inspect(b.cert_pem).serial
