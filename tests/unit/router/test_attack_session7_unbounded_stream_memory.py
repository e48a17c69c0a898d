"""Attack (session 7): a node's stream whose text stays under the answer cap must not grow the
router's memory anyway. Found by the review, fixed in streaming.py:

1. Reframer.node_event kept every `content` string, empty ones included, counting only
   characters: a node sending `{"delta":{"content":""}}` forever added a list slot per event.
2. SseDecoder._lines bounded only the partial line, not the data lines of one event: a node
   sending `data: x\r\n` lines and never the blank line grew `_data` without bound.
"""

from __future__ import annotations

import sys

import pytest
from fdp_router import streaming
from fdp_router.streaming import Reframer, SseDecoder, StreamBroken


def test_empty_content_events_do_not_grow_the_framer_without_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "MAX_ANSWER_BYTES", 1024)
    r = Reframer(id="x", model="m", fingerprint="f")
    ev = b'{"choices":[{"index":0,"delta":{"content":""}}]}'
    try:
        for _ in range(200_000):
            r.node_event(ev)
    except StreamBroken:
        return  # refused: fine
    held = sys.getsizeof(r.parts)
    # 200k events of ~50 bytes (10 MB from the node) and no text: what the framer keeps
    # should not depend on how many events came.
    assert held < 64 * 1024, f"{len(r.parts)} entries, {held} bytes held for an empty answer"


def test_one_event_of_endless_crlf_data_lines_is_refused_past_max_event_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streaming, "MAX_EVENT_BYTES", 4096)
    d = SseDecoder()
    with pytest.raises(StreamBroken):
        for _ in range(10_000):  # 10k lines of ~1 KB, one event never ended: 10 MB held
            d.feed(b"data: " + b"x" * 1000 + b"\r\n")
    assert sum(map(len, d._data)) <= 4096
