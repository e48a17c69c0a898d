"""HTTP(S) health probes of HospitalNodes, with the node's mTLS settings.

Called by ``reconcile/node.py`` from the node's probe daemon. The TLS context is built from the
Secrets the HospitalNode references (``ca.crt`` of ``tls.caSecretRef``; ``tls.crt`` and
``tls.key`` of ``tls.clientCertSecretRef``), and the request carries the node's credentials
(``spec.auth``), exactly what the router pods mount and send.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    latency_ms: float | None
    error: str | None = None


def ssl_context(
    ca_pem: str | None, client_cert_pem: str | None, client_key_pem: str | None, insecure: bool
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if client_cert_pem and client_key_pem:
        # load_cert_chain only reads files: write them to a private directory, then remove them.
        with tempfile.TemporaryDirectory(prefix="fdp-probe-") as tmp:
            cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
            for path, data in ((cert, client_cert_pem), (key, client_key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(data)
            ctx.load_cert_chain(cert, key)
    return ctx


async def probe(
    session: aiohttp.ClientSession,
    url: str,
    *,
    timeout_s: float,
    ctx: ssl.SSLContext,
    server_name: str | None = None,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
) -> ProbeResult:
    """``method`` ``url`` (with the node's credentials in ``headers``); healthy means a 2xx
    answer within ``timeout_s`` seconds."""
    start = time.perf_counter()
    try:
        async with session.request(
            method,
            url,
            headers=dict(headers or {}),
            ssl=ctx,
            server_hostname=server_name,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as resp:
            await resp.read()
            latency = (time.perf_counter() - start) * 1000
            if 200 <= resp.status < 300:
                return ProbeResult(True, round(latency, 2))
            return ProbeResult(False, None, f"HTTP {resp.status} from {url}")
    except TimeoutError:
        return ProbeResult(False, None, f"timed out after {timeout_s:g}s: {url}")
    except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
        return ProbeResult(False, None, f"{type(exc).__name__}: {exc}"[:300])
