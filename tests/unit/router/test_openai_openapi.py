"""The OpenAPI document validates (openapi-spec-validator), and schemathesis runs a bounded
number of generated cases against a live router: no response is a 500 and every response
matches the document (status, content type, schema)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from fdp_router.openapi import document
from openapi_spec_validator import validate

from .conftest import Cluster, RouterFactory, token

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
OFF = {"rate_per_second": 0, "burst": 0}


def test_the_openapi_document_validates() -> None:
    doc = document()
    validate(doc)  # raises on an invalid OpenAPI 3.1 document
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert chat["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("OpenAIError")
    props = chat["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"stream", "stream_options", "logprobs", "privacy_budget"} <= set(props)
    assert "/v1/models" in doc["paths"] and "/v1/models/{model}" in doc["paths"]


@pytest.mark.integration  # a subprocess CLI: make test runs it, make test-unit not
@pytest.mark.timeout(300)
async def test_schemathesis_finds_no_500_and_no_schema_violation(
    router: RouterFactory, demo_cluster: Cluster, tmp_path: Path
) -> None:
    demo_cluster.nodes[2].state.data_class = "public"  # answers any text: generated prompts get 200s
    nodes = [n.model_dump() for n in demo_cluster.config().nodes]
    nodes[2].update(model="medical-guidelines", privacy={"data_class": "public", "mechanism": "none"})
    cfg = demo_cluster.config(
        nodes=nodes,
        rate_limits={
            k: OFF
            for k in ("per_user", "per_department", "failed_auth_per_client", "failed_auth_per_subject")
        },
        overload={"max_concurrency": 64, "max_queue": 256},
    )
    client = await router(cfg)
    base = str(client.make_url("")).rstrip("/")
    env: dict[str, Any] = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    # 503 is the router's documented "no node serves this request" (e.g. a generated
    # specialization no node lists): a refusal, not a server error. 500, 502 and 504 still fail.
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        '[checks.not_a_server_error]\nexpected-statuses = ["1XX", "2XX", "3XX", "4XX", "503"]\n'
    )
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "run",
        f"{base}/openapi.json",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        "--include-path-regex",
        "^/v1/(chat/completions|models|inference)",
        "--header",
        f"Authorization: Bearer {token(user='fuzzer')}",
        "--max-examples",
        "30",
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        "14",
        "--workers",
        "1",
        "--no-shrink",
        "--request-timeout",
        "10",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=280)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "No issues found" in text or "passed" in text, text[-3000:]
