"""Server-sent events exactly as OpenAI streams chat completions. Pure: no I/O.

Used by the chat handler (``handlers.py``) for ``stream: true``. A node's stream is parsed
(`SseDecoder`) and re-framed (`Reframer`): every chunk the client sees is the router's own
(its id, model and fingerprint; only the fields OpenAI defines for a chunk: the assistant
role, content, ``finish_reason``, ``logprobs`` when asked and allowed), so nothing else a
node puts in its stream reaches the client. What OpenAI sends, and so what this sends::

    data: {"id": "chatcmpl-…", "object": "chat.completion.chunk", "created": …, "model": …,
           "system_fingerprint": …, "choices": [{"index": 0, "delta": {"role": "assistant",
           "content": ""}, "logprobs": null, "finish_reason": null}]}
    data: {… "choices": [{"index": 0, "delta": {"content": "…"}, …}]}
    data: {… "choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]}
    data: {… "choices": [], "usage": {…}}          (only with stream_options.include_usage)
    data: [DONE]

each event one ``data:`` line and a blank line; with ``include_usage`` every chunk has
``"usage": null`` but the last. The router adds its privacy summary (the ``privacy`` object
of a non-streamed answer) to the final chunk, and repeats it in an SSE comment
(``: fdp-privacy {…}``, which SSE clients ignore) just before ``data: [DONE]``. A stream that
breaks after it started ends with ``data: {"error": {…}}`` (the OpenAI SDK raises
``APIError`` on it) and no ``[DONE]``; so does one that outlasts ``stream_timeout_seconds``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from fdp_router.node_contract import MAX_ANSWER_BYTES

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx and friends: do not buffer the stream
}
MAX_EVENT_BYTES = 1 << 20  # a node's event larger than this is a broken node, not an answer
_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
FINISH_REASONS = frozenset({"stop", "length", "content_filter", "tool_calls", "function_call"})


class StreamBroken(Exception):
    """A node's stream cannot be relayed further (malformed, an error event, too large)."""


class StreamTimedOut(StreamBroken):
    """A node's stream outlasted its total limit (``stream_timeout_seconds``, counted from the
    first read of its body): the per-read timeout alone never ends a node that keeps sending."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the stream passed its time limit (stream_timeout_seconds: {seconds:g} s)")
        self.seconds = seconds


class ReportContradicted(StreamBroken):
    """A ``privacy`` object in a node's stream does not match the report its headers cleared
    the answer on: nothing more of it is relayed. `reason` is the violation's label."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"privacy contract violation in the stream ({reason})")
        self.reason = reason


class SseDecoder:
    """Incremental SSE parser (the WHATWG event-stream format): feed bytes as they arrive,
    get the ``data`` of each complete event. Comments, ``event:``, ``id:`` and ``retry:``
    lines are ignored; multi-line data is joined with newlines."""

    __slots__ = ("_buf", "_data", "_held")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._held = 0  # bytes in `_data`: one event's, bounded by MAX_EVENT_BYTES too

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        if not self._data and b"\r" not in buf:
            # The common case, as OpenAI-compatible servers send it: events of one `data: `
            # line each, LF line ends, split in one step. That is what the complete events
            # are when every LF in them is one of the separators (`\n\ndata: `, and the last
            # blank line); anything else goes through the line parser.
            end = buf.rfind(b"\n\n")
            out: list[bytes] = []
            tail = buf
            if end >= 0:
                if buf[:6] != b"data: " or buf.count(b"\n", 0, end) != 2 * buf.count(b"\n\ndata: ", 0, end):
                    return self._lines(buf)
                out = buf[6:end].split(b"\n\ndata: ")
                tail = buf[end + 2 :]
            if len(tail) > MAX_EVENT_BYTES:
                raise StreamBroken(f"an event longer than {MAX_EVENT_BYTES} bytes")
            self._buf = tail
            return out
        return self._lines(buf)

    def _lines(self, buf: bytes) -> list[bytes]:
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        if len(self._buf) > MAX_EVENT_BYTES:
            raise StreamBroken(f"an event line longer than {MAX_EVENT_BYTES} bytes")
        out: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    out.append(b"\n".join(self._data))
                    self._data = []
                    self._held = 0
                continue
            if line[:1] == b":":
                continue
            name, _, value = line.partition(b":")
            if name == b"data":
                self._held += len(value)
                if self._held > MAX_EVENT_BYTES:
                    raise StreamBroken(f"an event longer than {MAX_EVENT_BYTES} bytes")
                self._data.append(value[1:] if value[:1] == b" " else value)
        return out

    def close(self) -> list[bytes]:
        """The last event of a stream that ended without its blank line."""
        rest = self.feed(b"\n\n") if (self._buf or self._data) else []
        self._buf = b""
        return rest


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def comment(name: str, payload: dict[str, Any]) -> bytes:
    """An SSE comment line (ignored by SSE clients): ``: name {json}``."""
    return b": " + name.encode() + b" " + orjson.dumps(payload) + b"\n\n"


def error_event(message: str, code: str) -> bytes:
    return event({"error": {"message": message, "type": "server_error", "param": None, "code": code}})


def broken_reason(exc: Exception) -> str:
    """The ``reason`` label of ``fdp_streams_broken_total`` for what ended a stream."""
    if isinstance(exc, StreamTimedOut):
        return "time_limit"
    if isinstance(exc, ReportContradicted):
        return "contract_violation"
    if isinstance(exc, StreamBroken):
        return "invalid"
    return "node_failure"


def broken_event(exc: Exception) -> bytes:
    """The error event that ends a stream broken after its first byte (``stream_broken``: the
    client's code does not change with the cause); a time limit is named, so the client and
    whoever reads its logs know which setting ended the answer."""
    if isinstance(exc, StreamTimedOut):
        message = (
            f"the hospital node's stream hit its time limit (stream_timeout_seconds: {exc.seconds:g} s); "
            "the part sent stays charged"
        )
    else:
        message = "the hospital node's stream broke off; the part sent stays charged"
    return error_event(message, "stream_broken")


def estimate_usage(messages: Iterable[dict[str, str]], text: str) -> dict[str, int]:
    """Usage in words when the node's token counts are not passed on (documented as such)."""
    prompt = sum(len(m["content"].split()) for m in messages)
    completion = len(text.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def node_usage(usage: Any) -> dict[str, Any] | None:
    """A node's ``usage`` as OpenAI defines it: the three counts (total = prompt + completion
    when the node left it out or got it wrong) and its ``*_details`` objects; None when
    it has no usable counts."""
    if not isinstance(usage, dict):
        return None
    counts = {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens")}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()):
        return None
    out: dict[str, Any] = dict(counts)
    total = usage.get("total_tokens")
    out["total_tokens"] = (
        total
        if isinstance(total, int) and not isinstance(total, bool) and total >= out["prompt_tokens"]
        else out["prompt_tokens"] + out["completion_tokens"]
    )
    for k in ("prompt_tokens_details", "completion_tokens_details"):
        if isinstance(usage.get(k), dict):
            out[k] = usage[k]
    return out


def finish_reason(value: Any) -> str | None:
    return value if isinstance(value, str) and value in FINISH_REASONS else None


@dataclass
class Reframer:
    """Turns a node's chunks (or a whole answer) into the router's chunks, and remembers what
    was released: the text, the finish reason, the node's usage.

    `pass_usage` / `pass_logprobs`: whether the node's token counts and logprobs may go to
    the client (a Public node's; a PHI node's answer is released as text only).
    `check_privacy`: given a ``privacy`` object in the node's stream, the violation label
    if it contradicts the report the answer was cleared on (`ReportContradicted`, raised
    before anything of that event is relayed)."""

    id: str
    model: str
    fingerprint: str
    include_usage: bool = False
    pass_usage: bool = False
    pass_logprobs: bool = False
    check_privacy: Callable[[Any], str | None] | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    parts: list[str] = field(default_factory=list)
    finish: str | None = None
    usage: dict[str, Any] | None = None
    node_done: bool = False
    _role_sent: bool = False
    _held: dict[str, Any] | None = None  # the chunk with finish_reason, sent last
    _chars: int = 0  # of `parts`, bounded by MAX_ANSWER_BYTES
    # A content chunk is `_head` + its delta + `_tail` (`_rest` after logprobs that are not
    # null): the parts every chunk shares, serialised once.
    _head: bytes = b""  # `data: {"id": …, "choices":[{"index":0,"delta":`
    _rest: bytes = b""  # `,"finish_reason":null}]` (`,"usage":null`) `}` and the blank line
    _tail: bytes = b""  # `,"logprobs":null` + `_rest`

    def __post_init__(self) -> None:
        doc = orjson.dumps(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": self.fingerprint,
            }
        )
        self._head = b"data: " + doc[:-1] + b',"choices":[{"index":0,"delta":'
        self._rest = b',"finish_reason":null}]' + (b',"usage":null}\n\n' if self.include_usage else b"}\n\n")
        self._tail = b',"logprobs":null' + self._rest

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def _chunk(self, choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        }
        if self.include_usage:
            doc["usage"] = usage
        return doc

    def _choice(self, delta: dict[str, Any], finish: str | None, logprobs: Any) -> dict[str, Any]:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        return {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    def node_event(self, data: bytes) -> bytes:
        """One ``data`` payload of the node's stream -> the bytes to send now (maybe none)."""
        if data == b"[DONE]":
            self.node_done = True
            return b""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise StreamBroken("an event that is not JSON") from None
        if not isinstance(obj, dict):
            raise StreamBroken("an event that is not a JSON object")
        if obj.get("error") is not None:
            err = obj["error"]
            code = err.get("code") if isinstance(err, dict) else None
            # Only a short code: a node's error text may echo the prompt.
            code = code if isinstance(code, str) and _CODE.fullmatch(code) else "no code"
            raise StreamBroken(f"the node sent an error event ({code})")
        if "privacy" in obj and self.check_privacy is not None:
            reason = self.check_privacy(obj["privacy"])
            if reason is not None:
                raise ReportContradicted(reason)
        usage = obj.get("usage")
        if usage is not None:
            self.usage = node_usage(usage) or self.usage
        out = b""
        choices = obj.get("choices")
        for ch in choices if isinstance(choices, list) else ():
            if not isinstance(ch, dict) or ch.get("index", 0) != 0:
                continue  # n = 1 only: other choices are never relayed
            delta = ch.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            d: dict[str, Any] = {}
            if isinstance(content, str):
                d["content"] = content
                if content:  # an empty one keeps no slot: a node may send them forever
                    self.parts.append(content)
                    self._chars += len(content)
                if self._chars > MAX_ANSWER_BYTES:
                    raise StreamBroken(f"an answer of over {MAX_ANSWER_BYTES:,} characters")
            logprobs = ch.get("logprobs") if self.pass_logprobs else None
            finish = ch.get("finish_reason")
            if finish is not None and (finish := finish_reason(finish)) is not None:
                self.finish = finish
                self._held = self._chunk([self._choice(d, finish, logprobs)])
            elif d or logprobs is not None or not self._role_sent:
                # What event(self._chunk([self._choice(d, None, logprobs)])) would give.
                if not self._role_sent:
                    d = {"role": "assistant", **d}
                    self._role_sent = True
                tail = self._tail
                if logprobs is not None:
                    tail = b',"logprobs":' + orjson.dumps(logprobs) + self._rest
                out += self._head + orjson.dumps(d) + tail
        return out

    def whole(self, text: str, finish: str | None, logprobs: Any = None, usage: Any = None) -> bytes:
        """A whole answer (a cache hit, a node that does not stream) as a stream: the role
        with empty content, the text, then (held for `close`) the finish chunk."""
        if usage is not None:
            self.usage = node_usage(usage)
        self.parts.append(text)
        self.finish = finish or "stop"
        out = event(self._chunk([self._choice({"content": ""}, None, None)]))
        logprobs = logprobs if self.pass_logprobs else None
        out += event(self._chunk([self._choice({"content": text}, None, logprobs)]))
        self._held = self._chunk([self._choice({}, self.finish, None)])
        return out

    def close(self, privacy: dict[str, Any], estimated: Callable[[], dict[str, Any]]) -> bytes:
        """The final chunk(s) with the privacy summary, the trailing comment, ``[DONE]``.
        A node that ended without a finish reason is taken to have stopped. `estimated` (the
        usage in words) is called only when usage is asked for and the node's is not passed on."""
        held = self._held or self._chunk([self._choice({}, self.finish or "stop", None)])
        self.finish = self.finish or "stop"
        if self.include_usage:
            usage = self.usage if self.pass_usage and self.usage is not None else estimated()
            final = self._chunk([], usage)
            final["privacy"] = privacy
            out = event(held) + event(final)
        else:
            held["privacy"] = privacy
            out = event(held)
        return out + comment("fdp-privacy", privacy) + DONE
