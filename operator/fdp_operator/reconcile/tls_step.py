"""The TLS step of a FederatedRouter's reconcile: make sure its serving Secret is valid.

Operator-managed mode keeps a CA in Secret ``<fr>-ca`` and (re)issues ``<fr>-tls`` when it
is missing, signed by another CA, has the wrong SANs, or has reached its renewal time
(``notAfter - renewBefore``). With ``spec.tls.secretName`` the operator only reads the
given Secret (cert-manager renews it), and only uses it if it carries the opt-in label
(security.py; cert-manager sets it with the Certificate's ``secretTemplate.labels``).
Returns what the status and pod template need.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fdp_operator import tls
from fdp_operator.apply import apply_all
from fdp_operator.kube import Kube
from fdp_operator.models import FederatedRouter
from fdp_operator.render import names
from fdp_operator.render.router import render_tls_secret
from fdp_operator.security import SecretUse, allows_mount, secret_refusal


@dataclass(frozen=True)
class TLSState:
    secret_name: str
    serial: str = ""
    not_after: datetime | None = None
    renewal_time: datetime | None = None
    error: str | None = None
    #: the existing Secret was refused (security.py): (reason, message)
    refused: tuple[str, str] | None = None


def _decode(secret: dict[str, Any] | None, key: str) -> str | None:
    if not secret:
        return None
    raw = (secret.get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if raw else None


def _owner(router: FederatedRouter) -> tuple[str, str, str]:
    return ("FederatedRouter", router.ref.name, router.ref.uid)


async def ensure_tls(kube: Kube, router: FederatedRouter, now: datetime) -> TLSState:
    ns, spec = router.ref.namespace, router.spec.tls
    if spec.secret_name:
        secret = await kube.get("Secret", ns, spec.secret_name)
        if secret is not None and not allows_mount(secret):
            use = SecretUse(spec.secret_name, "spec.tls.secretName", ("tls.crt", "tls.key"))
            refusal = secret_refusal(use, secret)
            assert refusal is not None
            return TLSState(spec.secret_name, refused=(refusal.reason, refusal.message))
        cert = _decode(secret, "tls.crt")
        if cert is None or _decode(secret, "tls.key") is None:
            return TLSState(
                spec.secret_name,
                error=f"TLS Secret '{spec.secret_name}' (spec.tls.secretName) is missing or has no tls.crt",
            )
        try:
            info = tls.inspect(cert)
        except ValueError as exc:
            return TLSState(spec.secret_name, error=f"TLS Secret '{spec.secret_name}': {exc}")
        return TLSState(spec.secret_name, serial=info.serial, not_after=info.not_after)

    ca_name, tls_name = names.ca_secret(router.ref.name), names.tls_secret(router.ref.name)
    ca_secret = await kube.get("Secret", ns, ca_name)
    ca_cert, ca_key = _decode(ca_secret, "tls.crt"), _decode(ca_secret, "tls.key")
    if ca_cert is None or ca_key is None:
        pair = tls.issue_ca(f"fdp-router-ca {ns}/{router.ref.name}", now)
        ca_cert, ca_key = pair.cert_pem, pair.key_pem
        ca_obj = render_tls_secret(router, ca_name, ca_cert, ca_key, ca_cert)
        ca_obj["metadata"]["labels"][names.COMPONENT_LABEL] = "ca"
        await apply_all(kube, [ca_obj], _owner(router))
    renew_before = timedelta(seconds=router.spec.tls.renew_before_seconds)
    dns = names.service_dns_names(router.ref.name, ns)
    serving = await kube.get("Secret", ns, tls_name)
    cert = _decode(serving, "tls.crt")
    why = tls.why_reissue(cert, ca_cert, dns, now, renew_before)
    if why is not None:
        pair = tls.issue_serving(
            tls.KeyPair(ca_cert, ca_key), dns, now, timedelta(seconds=router.spec.tls.duration_seconds)
        )
        cert = pair.cert_pem
        await apply_all(
            kube, [render_tls_secret(router, tls_name, cert, pair.key_pem, ca_cert)], _owner(router)
        )
    assert cert is not None
    info = tls.inspect(cert)
    return TLSState(
        tls_name,
        serial=info.serial,
        not_after=info.not_after,
        renewal_time=tls.renewal_time(info, renew_before),
    )
