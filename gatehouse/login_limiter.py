"""Blocking a source address after repeated failed logins (ThingsBoard's ip limits: 10 failures,
then 60 s blocked). Brute-forcing tokens or passwords from one address stops; other addresses
are unaffected. The broker limits device logins with one; the sidecar, HTTP device requests
with unknown tokens and, with another, administrators' logins (admin REST API and web UI); the
CoAP bridge, CoAP requests with unknown tokens. Thread-safe: the sidecar's request threads share
one."""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_MAX_FAILURES = 10
DEFAULT_BLOCK_SECONDS = 60.0
# Addresses remembered, failing and blocked each: past it the oldest is forgotten, so that
# failures sprayed from countless addresses (an IPv6 prefix) cannot grow the process.
DEFAULT_MAX_TRACKED = 100_000


def whole_seconds(seconds_blocked: float) -> int:
    """A block's time left as HTTP's Retry-After and CoAP's Max-Age carry it: whole seconds,
    rounded up and at least 1, so that a client that waits that long is no longer blocked."""
    return max(1, math.ceil(seconds_blocked))


@dataclass
class LoginLimiter:
    max_failures: int = DEFAULT_MAX_FAILURES
    block_seconds: float = DEFAULT_BLOCK_SECONDS
    clock: Callable[[], float] = time.monotonic
    max_tracked: int = DEFAULT_MAX_TRACKED
    _failures: dict[str, int] = field(default_factory=dict)
    _blocked_until: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def is_blocked(self, address: str) -> bool:
        return self.seconds_blocked(address) > 0

    def seconds_blocked(self, address: str) -> float:
        """How much longer `address` stays blocked (0: it is not)."""
        with self._lock:
            until = self._blocked_until.get(address)
            if until is None:
                return 0.0
            left = until - self.clock()
            if left > 0:
                return left
            del self._blocked_until[address]
            return 0.0

    def failed(self, address: str) -> None:
        with self._lock:
            count = self._failures.pop(address, 0) + 1
            if count >= self.max_failures:
                self._blocked_until.pop(address, None)
                self._remember(self._blocked_until, address, self.clock() + self.block_seconds)
            else:
                self._remember(self._failures, address, count)

    def _remember(self, entries: dict, address: str, value) -> None:
        """Set `address` last in `entries` (newest), forgetting the oldest beyond max_tracked."""
        while len(entries) >= self.max_tracked:
            del entries[next(iter(entries))]
        entries[address] = value

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    def blocked_addresses(self) -> list[str]:
        with self._lock:
            candidates = list(self._blocked_until)
        return [a for a in candidates if self.is_blocked(a)]
