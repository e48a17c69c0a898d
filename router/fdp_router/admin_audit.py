"""The admin audit log: one hash-chained JSON line per admin API change, with its actor.

Written by ``admin.py`` for every change made (or refused) through ``/v1/admin/*``; read by
`verify_log` (tests, and an operator who wants to check a copy). The file sits next to the
config file the admin API rewrites (``<config>.admin-audit.jsonl``), is only ever appended
to, and each line is fsynced before the change it records is applied.

Each record carries ``prev`` (the previous record's ``hash``) and ``hash`` = SHA-256 of
``prev`` and the record's canonical JSON, so that an edited, reordered or deleted line in the
middle breaks the chain. A cut at the end is not detectable from the file alone: keep a copy
of the last ``hash`` elsewhere (docs/security.md). Not in the privacy ledger on purpose: that
ledger's audit trail records budget charges under its own key and schema, and an admin
change has neither a charge nor a privacy unit.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _hash(prev: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(prev.encode() + b"\n" + _canonical(body)).hexdigest()


class AdminAuditLog:
    """Append-only, hash-chained, fsynced. `path` None: kept in memory only (a router
    without a config file: its admin changes do not outlive the process either)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []  # this process's appends (tests, GET views)
        self._lock = threading.Lock()
        self._head: tuple[int, str] | None = None  # (last seq, last hash)

    @classmethod
    def beside(cls, config_path: Path | None) -> AdminAuditLog:
        if config_path is None:
            return cls(None)
        return cls(config_path.with_name(config_path.name + ".admin-audit.jsonl"))

    def _read_head(self) -> tuple[int, str]:
        if self._head is not None:
            return self._head
        seq, head = 0, GENESIS
        if self.path is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    seq, head = int(rec["seq"]), str(rec["hash"])
        self._head = (seq, head)
        return self._head

    def append(self, **fields: Any) -> dict[str, Any]:
        """Write one record (durably, when there is a file) and return it. Safe across the
        worker processes of `serve --workers N`: the file is locked (flock) and its head re-read
        under the lock, so two workers never write the same sequence number."""
        with self._lock:
            if self.path is None:
                return self._append_record(self._read_head(), fields, None)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._head = None  # another process may have appended since
                return self._append_record(self._read_head(), fields, fd)
            finally:
                os.close(fd)  # closing releases the lock

    def _append_record(self, head: tuple[int, str], fields: dict[str, Any], fd: int | None) -> dict[str, Any]:
        seq, prev = head
        body = {
            "seq": seq + 1,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            **fields,
            "prev": prev,
        }
        record = {**body, "hash": _hash(prev, body)}
        if fd is not None:
            os.write(fd, _canonical(record) + b"\n")
            os.fsync(fd)
        self._head = (record["seq"], record["hash"])
        self.records.append(record)
        return record


def verify_log(path: Path) -> tuple[int, str]:
    """(records, head hash) of an intact log; ValueError naming the first broken line."""
    prev, seq = GENESIS, 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            body = {k: v for k, v in rec.items() if k != "hash"}
            ok = rec["prev"] == prev and rec["seq"] == seq + 1 and rec["hash"] == _hash(prev, body)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ValueError(f"{path}:{n}: the admin audit chain is broken here")
        prev, seq = rec["hash"], rec["seq"]
    return seq, prev
