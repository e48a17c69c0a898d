"""A real third-party OpenAI-compatible server as a hospital node: the LiteLLM proxy from PyPI
(hack/ensure-litellm.sh installs the pinned version in its own virtualenv), with a master key
and a `mock_response` model, started as a subprocess on 127.0.0.1 and reached with its API key,
whole and streaming.

LiteLLM does not implement the FDP privacy report, so it is configured as a Public node (no
patient data, 0 epsilon): a PHI node must report its spend, and the router would refuse it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fdp_router.runtime import POOL

from .conftest import Cluster, RouterFactory, token

pytestmark = pytest.mark.integration  # a subprocess server: make test runs it, make test-unit not

VERSION = "1.108.7"  # as hack/ensure-litellm.sh
CACHE = Path(os.environ.get("FDP_CACHE_DIR", Path.home() / ".cache" / "federated-dp-llm"))
LITELLM = CACHE / f"litellm-{VERSION}"
MASTER_KEY = "sk-fdp-test-" + "m" * 24
ANSWER = "Suspected sepsis: take cultures, give broad-spectrum antibiotics within an hour, and fluids."
CONFIG = f"""
model_list:
  - model_name: hospital-gw
    litellm_params:
      model: openai/hospital-gw
      api_key: unused-the-mock-calls-nobody
      mock_response: "{ANSWER}"
general_settings:
  master_key: {MASTER_KEY}
litellm_settings:
  drop_params: true
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def litellm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The LiteLLM proxy on a free loopback port; its base URL."""
    if not (LITELLM / ".complete").exists():
        why = f"LiteLLM proxy {VERSION} is not installed: run hack/ensure-litellm.sh (make deps does)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("litellm")
    (tmp / "config.yaml").write_text(CONFIG)
    port = _free_port()
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # never fetch the cost map from the internet
        "LITELLM_TELEMETRY": "False",
        "NO_DOCS": "True",
    }
    log = (tmp / "litellm.log").open("wb")
    proc = subprocess.Popen(
        [
            str(LITELLM / "bin" / "litellm"),
            "--config",
            "config.yaml",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"LiteLLM exited: {(tmp / 'litellm.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health/liveliness", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"LiteLLM did not start: {(tmp / 'litellm.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _node(url: str, tmp: Path, key: str = MASTER_KEY, node_id: str = "litellm") -> dict[str, Any]:
    (tmp / f"{node_id}.key").write_text(key)
    return {
        "id": node_id,
        "hospital": f"hospital-{node_id}",
        "endpoint": url,
        "model": "hospital-gw",
        "auth": {"api_key_file": str(tmp / f"{node_id}.key")},
        # LiteLLM's /health calls every model (and wants the key): probe the model list instead.
        "health_check": {"path": "/v1/models", "interval_seconds": 1.0, "timeout_seconds": 1.0},
        "privacy": {"data_class": "public", "mechanism": "none"},
    }


async def test_litellm_as_a_hospital_node_whole_and_streaming(
    litellm: str, router: RouterFactory, demo_cluster: Cluster, tmp_path: Path
) -> None:
    client = await router(demo_cluster.config(nodes=[_node(litellm, tmp_path)]), probes=True)
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=token(), max_retries=0)
    try:
        whole = await sdk.chat.completions.create(
            model="hospital-gw", messages=[{"role": "user", "content": "How is sepsis managed?"}]
        )
        assert whole.choices[0].message.content == ANSWER
        assert whole.choices[0].finish_reason == "stop"
        privacy = whole.model_extra["privacy"]
        assert privacy["epsilon"] == 0 and privacy["basis"].startswith("public data")
        # LiteLLM's own token counts pass through (a Public node), not the router's word count.
        assert whole.usage is not None and whole.usage.completion_tokens != len(ANSWER.split())

        stream = await sdk.chat.completions.create(
            model="hospital-gw",
            messages=[{"role": "user", "content": "How is sepsis managed, step by step?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert len(chunks) > 5  # LiteLLM's mock streams a few characters per chunk
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
        assert chunks[-1].model_extra["privacy"]["nodes"] == ["litellm"]
        assert client.app[POOL].describe()[0]["healthy"] is True  # probed with the key
    finally:
        await sdk.close()


async def test_litellm_without_its_key_fails_as_the_issue_saw_it(
    litellm: str, router: RouterFactory, demo_cluster: Cluster, tmp_path: Path
) -> None:
    """Without `auth`, LiteLLM answers 500: a backend failure (502), nothing released."""
    node = {k: v for k, v in _node(litellm, tmp_path).items() if k != "auth"}
    client = await router(demo_cluster.config(nodes=[node], routing={"max_attempts": 1}))
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=token(), max_retries=0)
    try:
        with pytest.raises(openai.InternalServerError) as exc:
            await sdk.chat.completions.create(
                model="hospital-gw", messages=[{"role": "user", "content": "x"}]
            )
        assert exc.value.status_code == 502 and exc.value.code == "backend_error"
    finally:
        await sdk.close()
