"""Device activity as ThingsBoard's device state service keeps it: the server-scope attributes
`active`, `lastConnectTime`, `lastDisconnectTime` and `lastActivityTime` (ms since the epoch),
which operators and scripts read like any other server attribute.

Each process that serves devices keeps an `ActivityTracker` of what it saw and stores its
changes about once a second. Like ThingsBoard's transports, it reports a device's activity at
most once per reporting period, so that steady telemetry costs no extra write per message. A
device nobody reports for `INACTIVITY_TIMEOUT_MS` becomes inactive (`Registry.expire_activity`,
run by the broker): HTTP and CoAP devices never disconnect, and an MQTT device whose broker was
killed never said goodbye.
"""
from __future__ import annotations

import threading

from .payloads import KvEntry, ValueKind

ACTIVE = "active"
LAST_CONNECT_TIME = "lastConnectTime"
LAST_DISCONNECT_TIME = "lastDisconnectTime"
LAST_ACTIVITY_TIME = "lastActivityTime"
ACTIVITY_ATTRIBUTES = (ACTIVE, LAST_CONNECT_TIME, LAST_DISCONNECT_TIME, LAST_ACTIVITY_TIME)
REPORTING_PERIOD_MS = 10_000  # ThingsBoard's transport.activity.reporting_period default
INACTIVITY_TIMEOUT_MS = 600_000  # ThingsBoard's default inactivityTimeout (10 minutes)


def _entries(values: dict[str, object]) -> tuple[KvEntry, ...]:
    return tuple(KvEntry(key, ValueKind.BOOLEAN if isinstance(value, bool) else ValueKind.LONG, value)
                 for key, value in values.items())


class ActivityTracker:
    """What one process saw of its devices since the last `take_changes`, as server attribute
    values per device id. No I/O: the caller stores what it takes. Thread-safe (the sidecar's
    request threads report; one background thread takes)."""

    def __init__(self, reporting_period_ms: int = REPORTING_PERIOD_MS):
        self._period = reporting_period_ms
        self._pending: dict[str, dict[str, object]] = {}
        self._reported: dict[str, int] = {}  # device id -> the lastActivityTime last reported
        self._lock = threading.Lock()

    def connected(self, device_id: str, now_ms: int) -> None:
        self._report(device_id, now_ms, {ACTIVE: True, LAST_CONNECT_TIME: now_ms, LAST_ACTIVITY_TIME: now_ms})

    def disconnected(self, device_id: str, now_ms: int) -> None:
        self._report(device_id, now_ms, {ACTIVE: False, LAST_DISCONNECT_TIME: now_ms, LAST_ACTIVITY_TIME: now_ms})

    def active(self, device_id: str, now_ms: int) -> None:
        """The device sent something: reported unless it was within the reporting period."""
        last = self._reported.get(device_id)  # a racy read is harmless: at worst one extra report
        if last is None or now_ms - last >= self._period:
            self._report(device_id, now_ms, {ACTIVE: True, LAST_ACTIVITY_TIME: now_ms})

    def _report(self, device_id: str, now_ms: int, values: dict[str, object]) -> None:
        with self._lock:
            self._reported[device_id] = now_ms
            self._pending.setdefault(device_id, {}).update(values)

    def take_changes(self, now_ms: int) -> dict[str, tuple[KvEntry, ...]]:
        """The attribute values to store, by device id; forgets devices quiet for a whole
        reporting period (their next activity is reported anyway), so memory stays bounded by
        the devices active lately."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._reported = {device_id: ts for device_id, ts in self._reported.items()
                              if now_ms - ts < self._period}
        return {device_id: _entries(values) for device_id, values in pending.items()}
