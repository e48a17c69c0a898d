"""Token buckets keyed by a principal, a department or a client: pure logic, clock injected.

Used by ``access.py`` for the per-user and per-department request limits and for the
brute-force lockout (one bucket of allowed authentication failures per client address and per
token subject). No I/O and no clock of its own: every call takes ``now`` (seconds, monotonic),
so the tests drive time by hand.

A bucket holds at most ``burst`` tokens and gains ``rate_per_second`` tokens a second. A
request takes one token; with none left, `KeyedBuckets.wait` says how long until one is
there, and that is the honest ``Retry-After`` for a bucket only its owner draws from.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from fdp_router.config import RateBucket

# Keys tracked per scope. Beyond this the least recently used key is forgotten; a forgotten
# key starts again with a full bucket, so the bound only matters under a flood of distinct
# keys (addresses, subjects), and it keeps memory bounded under exactly that flood.
MAX_KEYS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class KeyedBuckets:
    """One token bucket per key, all with the same rate and burst. Not thread-safe (the
    router calls it from its event loop only)."""

    def __init__(self, spec: RateBucket, max_keys: int = MAX_KEYS) -> None:
        self.spec = spec
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.spec.enabled

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, key: str, now: float) -> _Bucket | None:
        b = self._buckets.get(key)
        if b is None:
            return None
        elapsed = max(0.0, now - b.updated)
        b.tokens = min(float(self.spec.burst), b.tokens + elapsed * self.spec.rate_per_second)
        b.updated = now
        self._buckets.move_to_end(key)
        return b

    def wait(self, key: str, now: float) -> float:
        """Seconds until `key` has a whole token (0: it has one now). Takes nothing."""
        if not self.enabled:
            return 0.0
        b = self._refilled(key, now)
        if b is None or b.tokens >= 1.0:
            return 0.0
        return (1.0 - b.tokens) / self.spec.rate_per_second

    def take(self, key: str, now: float) -> None:
        """Take one token from `key`'s bucket (it may go down to 0, never below)."""
        if not self.enabled:
            return
        b = self._refilled(key, now)
        if b is None:
            b = self._buckets[key] = _Bucket(tokens=float(self.spec.burst), updated=now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        b.tokens = max(0.0, b.tokens - 1.0)


def retry_after_seconds(wait: float) -> int:
    """Whole seconds to tell a client: rounded up, so that waiting that long succeeds."""
    return max(1, math.ceil(wait - 1e-9))


class RequestLimiter:
    """Per-user and per-department request limits: a request needs a token from both, and
    takes from neither when one is empty (a refused request costs the user nothing)."""

    def __init__(self, per_user: RateBucket, per_department: RateBucket) -> None:
        self.users = KeyedBuckets(per_user)
        self.departments = KeyedBuckets(per_department)

    def admit(self, user: str, department: str, now: float) -> tuple[str, float] | None:
        """None if admitted (both tokens taken), else (scope, seconds to wait)."""
        if not self.users.enabled and not self.departments.enabled:
            return None  # no limits configured: nothing to take
        waits = (("user", self.users.wait(user, now)), ("department", self.departments.wait(department, now)))
        scope, longest = max(waits, key=lambda w: w[1])
        if longest > 0:
            return scope, longest
        self.users.take(user, now)
        self.departments.take(department, now)
        return None


class FailureLimiter:
    """Brute-force lockout: each authentication failure takes a token from its client's and
    its (claimed) subject's bucket; an empty bucket locks that client or subject out until it
    refills."""

    def __init__(self, per_client: RateBucket, per_subject: RateBucket) -> None:
        self.clients = KeyedBuckets(per_client)
        self.subjects = KeyedBuckets(per_subject)

    def locked(self, client: str, subject: str | None, now: float) -> tuple[str, float] | None:
        """None if neither is locked out, else (scope, seconds until the lockout ends)."""
        waits = [("client", self.clients.wait(client, now))]
        if subject is not None:
            waits.append(("subject", self.subjects.wait(subject, now)))
        scope, longest = max(waits, key=lambda w: w[1])
        return (scope, longest) if longest > 0 else None

    def failed(self, client: str, subject: str | None, now: float) -> None:
        self.clients.take(client, now)
        if subject is not None:
            self.subjects.take(subject, now)
