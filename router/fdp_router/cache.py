"""Answer cache scoped to one department: re-releasing a released answer costs no epsilon.

Used by ``service.py``. A cached answer is post-processing of something the department
already paid for, so a hit is free; but it must never cross an authorization scope, so the
department is part of every key (and of nothing else's). Policies, as the original design
sketched: ``lru``, ``lfu``, ``ttl`` (LRU plus expiry) and ``adaptive`` (evicts by
frequency x recency, a cheap GreedyDual-like score). All expire at ``ttl_seconds``.
Pure: the clock is injected.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fdp_router.config import CacheConfig


def cache_key(department: str, canonical_request: str) -> tuple[str, str]:
    """(department, digest of the exact request). `canonical_request` is the canonical JSON
    of the messages and parameters (``request_path.canonical_request``): two conversations,
    or the same words in another case, never share an entry. Hashed, never stored."""
    return department, hashlib.sha256(canonical_request.encode()).hexdigest()


@dataclass
class _Entry:
    value: dict[str, Any]
    stored_at: float
    last_used: float
    hits: int = 0


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass
class AnswerCache:
    cfg: CacheConfig
    clock: Callable[[], float] = time.monotonic
    stats: CacheStats = field(default_factory=CacheStats)
    _data: OrderedDict[tuple[str, str], _Entry] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: tuple[str, str]) -> dict[str, Any] | None:
        if not self.cfg.enabled:
            return None
        now = self.clock()
        entry = self._data.get(key)
        if entry is not None and now - entry.stored_at > self.cfg.ttl_seconds:
            del self._data[key]
            entry = None
        if entry is None:
            self.stats.misses += 1
            return None
        entry.hits += 1
        entry.last_used = now
        self._data.move_to_end(key)
        self.stats.hits += 1
        return entry.value

    def put(self, key: tuple[str, str], value: dict[str, Any]) -> None:
        if not self.cfg.enabled:
            return
        now = self.clock()
        if key in self._data:
            self._data[key].value = value
            self._data.move_to_end(key)
            return
        while len(self._data) >= self.cfg.max_entries:
            self._evict(now)
        self._data[key] = _Entry(value=value, stored_at=now, last_used=now)

    def _evict(self, now: float) -> None:
        self.stats.evictions += 1
        policy = self.cfg.policy
        if policy == "lru":
            self._data.popitem(last=False)
            return
        if policy == "ttl":
            # The oldest-stored entry (expires first); expired ones also go lazily on get().
            victim = min(self._data.items(), key=lambda kv: kv[1].stored_at)[0]
            del self._data[victim]
            return
        if policy == "lfu":
            victim = min(self._data.items(), key=lambda kv: (kv[1].hits, kv[1].last_used))[0]
        else:  # adaptive: frequency discounted by age since last use
            victim = min(self._data.items(), key=lambda kv: (kv[1].hits + 1) / (1.0 + now - kv[1].last_used))[
                0
            ]
        del self._data[victim]
