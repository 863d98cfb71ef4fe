"""Access-token logins for a transport that authenticates every request (the HTTP device API,
and CoAP through it), with the devices found kept in memory.

Every request looking its token up again cost the sidecar more than storing the request's
telemetry (bench/http.py). A found device is kept until any device's credentials change or go
away, or any device changes, in any process: triggers bump a counter in the database
(`credentials_generation`), which is read at most every `recheck_seconds`. A revoked token
therefore keeps working for at most that long; the broker ends a revoked device's MQTT
session within its change poll (1 s) too. Unknown tokens are never kept: a device created a
moment ago logs in at once, and a guessed token is looked up every time.
"""
from __future__ import annotations

import threading
import time

from .models import Device
from .registry import Registry

DEFAULT_RECHECK_SECONDS = 0.25
MAX_KEPT = 100_000


class TokenLogins:
    def __init__(self, recheck_seconds: float = DEFAULT_RECHECK_SECONDS):
        self.recheck_seconds = recheck_seconds
        self._devices: dict[bytes, Device] = {}  # keyed by the token's digest
        self._generation: int | None = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def login(self, registry: Registry, token: str) -> Device | None:
        """The device whose access token this is (SPEC §1.2), or None."""
        if not token:
            return None
        generation = self._current_generation(registry)
        key = registry.lookup_digest(token)
        device = self._devices.get(key)
        if device is None:
            device = registry.token_login(token)
            with self._lock:
                # Kept only if nothing changed meanwhile: the lookup may predate the change.
                if device is not None and self._generation == generation and len(self._devices) < MAX_KEPT:
                    self._devices[key] = device
        return device

    def _current_generation(self, registry: Registry) -> int | None:
        now = time.monotonic()
        if now - self._checked_at < self.recheck_seconds:
            return self._generation
        generation = registry.credentials_generation()
        with self._lock:
            # The counter only grows; a thread that read it a moment earlier must not set it back.
            if self._generation is None or generation > self._generation:
                self._devices.clear()
                self._generation = generation
            self._checked_at = now
            return self._generation
