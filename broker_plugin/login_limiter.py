"""Blocking a source address after repeated failed logins (ThingsBoard's ip limits: 10 failures,
then 60 s blocked). Brute-forcing tokens from one address stops; other addresses are unaffected."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_MAX_FAILURES = 10
DEFAULT_BLOCK_SECONDS = 60.0


@dataclass
class LoginLimiter:
    max_failures: int = DEFAULT_MAX_FAILURES
    block_seconds: float = DEFAULT_BLOCK_SECONDS
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, int] = field(default_factory=dict)
    _blocked_until: dict[str, float] = field(default_factory=dict)

    def is_blocked(self, address: str) -> bool:
        until = self._blocked_until.get(address)
        if until is None:
            return False
        if self.clock() < until:
            return True
        del self._blocked_until[address]
        return False

    def failed(self, address: str) -> None:
        count = self._failures.get(address, 0) + 1
        if count >= self.max_failures:
            self._blocked_until[address] = self.clock() + self.block_seconds
            self._failures.pop(address, None)
        else:
            self._failures[address] = count

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def blocked_addresses(self) -> list[str]:
        return [a for a in list(self._blocked_until) if self.is_blocked(a)]
