"""Attack (session 8 review): a client that hangs up while sending an admin body
(`POST /v1/admin/nodes`, `PUT /v1/admin/config`, both through handlers._json_body) got a 500
and an "unhandled error" traceback: only the two query routes caught ClientGone. The
middleware now answers ClientGone with 499 for every route."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import (
    Cluster,
    RouterFactory,
    assert_no_internal_error,
    auth,
    production_serving,
    settled,
    token,
)
from .test_security_admin import _standalone

ADMIN = auth(token(user="root", department="it", roles=["admin"]))


@production_serving
@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/admin/nodes"), ("PUT", "/v1/admin/config")])
async def test_a_client_gone_mid_admin_body_is_not_an_internal_error(
    router: RouterFactory, demo_cluster: Cluster, caplog: pytest.LogCaptureFixture, method: str, path: str
) -> None:
    client, _ = await _standalone(router, demo_cluster)
    _reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
        + f"Authorization: {ADMIN['Authorization']}\r\nContent-Length: 1000\r\n\r\n".encode()
        + b'{"id": "'
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await settled(client)
    await assert_no_internal_error(client, caplog)
