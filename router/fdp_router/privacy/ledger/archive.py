"""Archived audit segments: what `ledger.retention` moves out of the live database.

A segment is one gzip-compressed JSON-lines file in the archive directory,
``segment-<first>-<last>.jsonl.gz`` (sequence numbers, 12 digits):

1. a header: ``{"segment": 1, "ledger_id": ..., "first": F, "prev_seq": F-1, "prev_hash": ...}``;
2. the audit records F..L exactly as the database stored them (sealed: the same bytes the
   chain hashes cover, so nothing is re-encrypted and nothing needs the key to be copied);
3. a signed checkpoint of record L (``{"checkpoint": {...}}``, audit.Checkpoint).

Segments chain: each one's ``prev_hash`` is the previous one's last hash, the first one's is
the genesis. ``fdp-router ledger verify --archive DIR`` checks every record's chain, hash and
tag, every segment's end checkpoint, and that the live database continues where the archive
ends. A segment left by an interrupted prune may overlap the next one (same records, same
hashes): that is checked, not refused.

Written by maintenance.py (prune), read by verify.py. Files only: an S3-compatible store is
reached by syncing or mounting this directory (docs/ledger-operations.md).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fdp_router.privacy.audit import Checkpoint, parse_checkpoint

SEGMENT_RE = re.compile(r"^segment-(\d{12})-(\d{12})\.jsonl\.gz$")


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    path: Path
    first: int
    last: int


def segment_name(first: int, last: int) -> str:
    return f"segment-{first:012d}-{last:012d}.jsonl.gz"


def list_segments(directory: str | Path) -> list[SegmentInfo]:
    """The segments in `directory`, by first record (then longest first)."""
    out = []
    for entry in Path(directory).iterdir():
        m = SEGMENT_RE.match(entry.name)
        if m:
            out.append(SegmentInfo(entry, int(m.group(1)), int(m.group(2))))
    return sorted(out, key=lambda s: (s.first, -s.last))


def write_segment(
    directory: str | Path,
    *,
    ledger_id: str,
    prev: tuple[int, str],
    records: Sequence[Mapping[str, Any]],
    checkpoint: Checkpoint,
) -> Path:
    """Write one segment durably (temp file, fsync, rename, fsync of the directory)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    first, last = int(records[0]["seq"]), int(records[-1]["seq"])
    path = directory / segment_name(first, last)
    tmp = directory / (path.name + ".partial")
    header = {"segment": 1, "ledger_id": ledger_id, "first": first, "prev_seq": prev[0], "prev_hash": prev[1]}
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
            gz.write(json.dumps(header, sort_keys=True).encode() + b"\n")
            for rec in records:
                gz.write(json.dumps(dict(rec), sort_keys=True).encode() + b"\n")
            gz.write(
                json.dumps({"checkpoint": json.loads(checkpoint.to_json())}, sort_keys=True).encode() + b"\n"
            )
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


@dataclass(slots=True)
class Segment:
    """One segment being read: `header`, then iterate `records()`, then `checkpoint`."""

    info: SegmentInfo
    header: dict[str, Any]
    checkpoint: Checkpoint | None = None

    def records(self) -> Iterator[dict[str, Any]]:
        with gzip.open(self.info.path, "rb") as fh:
            fh.readline()
            for line in fh:
                data = json.loads(line)
                if "checkpoint" in data:
                    self.checkpoint = parse_checkpoint(json.dumps(data["checkpoint"]), str(self.info.path))
                    return
                yield data


def open_segment(info: SegmentInfo) -> Segment:
    with gzip.open(info.path, "rb") as fh:
        header = json.loads(fh.readline())
    if not isinstance(header, dict) or header.get("segment") != 1:
        raise ValueError(f"{info.path.name}: not an audit segment (bad header)")
    return Segment(info, header)
