"""Attacks on the streaming fast paths (56090cd): the one-step split of a node's one-line SSE
events, and content chunks assembled from pre-serialised bytes. Each test is a control that
held: the client must receive exactly what the code before the change sent.

- SseDecoder: adversarial node streams (multi-line data, CR / CRLF line ends, `data:` without
  its space, comments, `event:`/`id:` lines, blank events, `[DONE]` inside content, stray
  blank lines, an event split across reads at every byte) decode to the same events as the
  previous decoder and as the plain line parser, and leave the same state for what follows.
- Reframer: every content chunk built from `_head` + delta + `_tail` is byte-for-byte what
  `event(_chunk([_choice(...)]))` (the previous code) gives, with and without usage,
  logprobs (null, absent, objects, false, 0, empty list), roles and odd content.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from fdp_router import streaming
from fdp_router.streaming import Reframer, SseDecoder, StreamBroken, event


class OldSseDecoder(SseDecoder):
    """SseDecoder.feed as it was at d747923 (the reference); _lines and close are unchanged."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        if not self._data and b"\r" not in buf:
            blocks = buf.split(b"\n\n")
            tail = blocks.pop()
            out: list[bytes] = []
            for i, block in enumerate(blocks):
                if block[:6] == b"data: " and b"\n" not in block:
                    out.append(block[6:])
                else:
                    self._buf = b""
                    return out + self._lines(b"\n\n".join([*blocks[i:], tail]))
            if len(tail) > streaming.MAX_EVENT_BYTES:  # looked up late: the test below patches it
                raise StreamBroken("an event too long")
            self._buf = tail
            return out
        return self._lines(buf)


class LinesOnly(SseDecoder):
    """The WHATWG line parser alone (no fast path)."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> list[bytes]:
        return self._lines(self._buf + chunk)


STREAMS: list[bytes] = [
    b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n',
    b"data: one\ndata: two\n\ndata: three\n\n",
    b"data: a\r\n\r\ndata: b\r\n\r\n",
    b"data: a\r\rdata: b\n\n",
    b"data:nospace\n\ndata: x\n\n",
    b"data:  two spaces\n\n",
    b": comment\n\ndata: x\n\n: ping\n\n",
    b"data: x\n\n: ping\n\ndata: y\n\n",
    b"event: message\ndata: x\n\nid: 3\ndata: y\n\n",
    b"data: \n\ndata: \n\n",
    b"data:\n\ndata\n\n",
    b'data: {"c":"[DONE]"}\n\ndata: [DONE] \n\ndata: [DONE]\n\n',
    b'data: {"c":"a\\n\\ndata: b"}\n\n',
    b"data: x\n\n\n\ndata: y\n\n\n",
    b"\n\ndata: x\n\n",
    b"data: x\n\ndata: y\ndata: z\n\ndata: w\n\n",
    b"data: x\n\ndata: y",
    b"data: x\n\ndata: y\n",
    b"data: x\ndata: y",
    b"retry: 10\ndata: x\n\n",
    b"data: x\n\ndata:y\n\ndata: z\n\n",
    b"data: \xe2\x82\xac\n\ndata: \xff\n\n",
    b"DATA: x\n\ndata : y\n\ndata: z\n\n",
    b"data: a\n\r\ndata: b\n\n",
    b"data: a\n \ndata: b\n\n",
]


def _run(decoder: SseDecoder, pieces: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    out: list[bytes] = []
    for p in pieces:
        out += decoder.feed(p)
    return out, decoder.close()


def _splits(data: bytes, rng: random.Random) -> list[list[bytes]]:
    ways = [[data]]
    ways += [[data[:i], data[i:]] for i in range(1, len(data))]
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
        ways.append([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)])
    ways.append([bytes([b]) for b in data])
    return ways


@pytest.mark.parametrize("stream", STREAMS, ids=range(len(STREAMS)))
def test_fast_split_decodes_exactly_as_before(stream: bytes) -> None:
    """Every way of cutting the stream into reads: new == previous == line parser."""
    rng = random.Random(stream)
    for pieces in _splits(stream, rng):
        new = _run(SseDecoder(), pieces)
        old = _run(OldSseDecoder(), pieces)
        lines = _run(LinesOnly(), pieces)
        assert new == old == lines, pieces


def test_fast_split_random_streams_match_the_previous_decoder() -> None:
    """Random streams over the SSE alphabet, cut at random: the same events as before."""
    rng = random.Random(20261130)
    atoms = [b"data: ", b"data:", b"data", b"\n", b"\n\n", b"\r", b": c", b"x", b"[DONE]", b"event: e", b" "]
    for _ in range(3000):
        stream = b"".join(rng.choice(atoms) for _ in range(rng.randint(1, 14)))
        cuts = sorted(rng.sample(range(len(stream) + 1), min(len(stream) + 1, rng.randint(0, 4))))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert _run(SseDecoder(), pieces) == _run(OldSseDecoder(), pieces) == _run(LinesOnly(), pieces), (
            pieces
        )


def test_an_oversized_event_is_refused_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that never ends its event: the fast path refuses it at the same point."""
    monkeypatch.setattr(streaming, "MAX_EVENT_BYTES", 64)
    for stream in (
        b"data: " + b"x" * 80,
        b"data: ok\n\ndata: " + b"y" * 80,
        b"data: a\ndata: " + b"z" * 30 * 3,
    ):
        for cut in range(1, len(stream)):
            outcomes = []
            for cls in (SseDecoder, OldSseDecoder):
                try:
                    outcomes.append(("ok", _run(cls(), [stream[:cut], stream[cut:]])))
                except StreamBroken:
                    outcomes.append(("broken", None))
            assert outcomes[0][0] == outcomes[1][0], (stream, cut)


class OldReframer(Reframer):
    """Reframer.node_event with the content chunk built as at d747923."""

    def node_event(self, data: bytes) -> bytes:
        obj = orjson.loads(data)
        out = b""
        for ch in obj.get("choices") or ():
            delta = ch.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            d: dict[str, Any] = {}
            if isinstance(content, str):
                d["content"] = content
                self.parts.append(content)
            logprobs = ch.get("logprobs") if self.pass_logprobs else None
            finish = ch.get("finish_reason")
            if finish is not None and (finish := streaming.finish_reason(finish)) is not None:
                self.finish = finish
                self._held = self._chunk([self._choice(d, finish, logprobs)])
            elif d or logprobs is not None or not self._role_sent:
                out += event(self._chunk([self._choice(d, None, logprobs)]))
        return out


CONTENTS = [
    "",
    "hi",
    'quo"te',
    "back\\slash",
    "new\nline",
    "\u2028\u2029",
    "é€😀",
    "\x00\x1f",
    "[DONE]",
    "data: x\n\n",
]
LOGPROBS: list[Any] = [
    None,
    {"content": [{"token": "a", "logprob": -0.1}]},
    False,
    0,
    [],
    {},
    "s",
]


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("pass_logprobs", [False, True])
def test_content_chunks_are_byte_identical(include_usage: bool, pass_logprobs: bool) -> None:
    rng = random.Random(int(include_usage) * 2 + int(pass_logprobs))
    for trial in range(200):
        kw = dict(
            id=f'chatcmpl-"{trial}\u00e9',
            model="m\\odel",
            fingerprint="fp",
            include_usage=include_usage,
            pass_logprobs=pass_logprobs,
            created=1_700_000_000 + trial,
        )
        new, old = Reframer(**kw), OldReframer(**kw)
        for _ in range(rng.randint(1, 6)):
            choice: dict[str, Any] = {"index": 0}
            r = rng.random()
            if r < 0.7:
                choice["delta"] = {"content": rng.choice(CONTENTS)}
            elif r < 0.8:
                choice["delta"] = {"role": "assistant"}
            elif r < 0.9:
                choice["delta"] = {"content": None}
            if rng.random() < 0.5:
                choice["logprobs"] = rng.choice(LOGPROBS)
            if rng.random() < 0.1:
                choice["finish_reason"] = rng.choice(["stop", "bogus", None])
            data = orjson.dumps({"choices": [choice]})
            assert new.node_event(data) == old.node_event(data), data
        assert new.text == old.text
        assert new._held == old._held
