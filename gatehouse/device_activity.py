"""Device activity as ThingsBoard's device state service keeps it: the server-scope attributes
`active`, `lastConnectTime`, `lastDisconnectTime` and `lastActivityTime` (ms since the epoch),
which operators and scripts read like any other server attribute.

Each process that serves devices keeps an `ActivityTracker` of what it saw and stores its
changes about once a second. Like ThingsBoard's transports, it reports a device's activity at
most once per reporting period, so that steady telemetry costs no extra write per message. A
device nobody reports for `INACTIVITY_TIMEOUT_MS` becomes inactive (`Registry.expire_activity`,
run by the broker): HTTP and CoAP devices never disconnect, and an MQTT device whose broker was
killed never said goodbye.

Connected is not active. A device is connected while it has a session open: a live MQTT session
(the broker reports its start and end) or a CoAP observation (the sidecar sees the bridge's long
polls that feed it: `ObservationSessions`). HTTP has no sessions: an HTTP device's requests, its
long polls included, make it active and move its lastActivityTime, never its lastConnectTime.
`is_connected` reads that from the stored attributes, for the web UI and the CLI.
"""
from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

from .clock import now_ms
from .payloads import KvEntry, ValueKind

ACTIVE = "active"
LAST_CONNECT_TIME = "lastConnectTime"
LAST_DISCONNECT_TIME = "lastDisconnectTime"
LAST_ACTIVITY_TIME = "lastActivityTime"
ACTIVITY_ATTRIBUTES = (ACTIVE, LAST_CONNECT_TIME, LAST_DISCONNECT_TIME, LAST_ACTIVITY_TIME)
REPORTING_PERIOD_MS = 10_000  # ThingsBoard's transport.activity.reporting_period default
INACTIVITY_TIMEOUT_MS = 600_000  # ThingsBoard's default inactivityTimeout (10 minutes)
# How long a CoAP observation may go without an open poll and still be the same session: the
# bridge polls again at once after an answer, or within 5 s of a failed poll (its longest pause).
OBSERVATION_GRACE_MS = 10_000


def _is_ms(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_connected(activity: dict) -> bool:
    """Whether the device has a session open now, by its activity attributes: `active`, and a
    lastConnectTime after its lastDisconnectTime (if any). A session whose process died without
    saying goodbye counts until the device becomes inactive (`Registry.expire_activity`)."""
    connect, disconnect = activity.get(LAST_CONNECT_TIME), activity.get(LAST_DISCONNECT_TIME)
    if activity.get(ACTIVE) is not True or not _is_ms(connect):
        return False
    return not _is_ms(disconnect) or connect > disconnect


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

    def put_back(self, changes: dict[str, tuple[KvEntry, ...]]) -> None:
        """Changes taken that could not be stored (the database away for a while): pending
        again for the next take, under whatever was reported since."""
        with self._lock:
            for device_id, entries in changes.items():
                self._pending[device_id] = {**{entry.key: entry.value for entry in entries},
                                            **self._pending.get(device_id, {})}


class ObservationSessions:
    """CoAP observations as sessions, as the sidecar sees them: the bridge feeds an observation
    with one long poll after another, so its device is connected from the first poll until
    none has been open for `grace_ms`; the polls in between come and go unreported. Reports to
    `tracker` (connected, disconnected); `expire` ends the sessions whose grace ran out.
    Thread-safe: the sidecar's request threads poll, its housekeeping thread expires."""

    def __init__(self, tracker: ActivityTracker, grace_ms: int = OBSERVATION_GRACE_MS):
        self._tracker = tracker
        self._grace = grace_ms
        self._open: Counter[str] = Counter()  # device id -> its observation polls open now
        self._idle_since: dict[str, int] = {}  # device id -> when its last open poll ended
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def polling(self, device_id: str) -> Iterator[None]:
        """One observation poll, open while the block runs."""
        self.poll_started(device_id, now_ms())
        try:
            yield
        finally:
            self.poll_ended(device_id, now_ms())

    def poll_started(self, device_id: str, now: int) -> None:
        with self._lock:
            starts_a_session = not self._open[device_id] and self._idle_since.pop(device_id, None) is None
            self._open[device_id] += 1
        if starts_a_session:
            self._tracker.connected(device_id, now)

    def poll_ended(self, device_id: str, now: int) -> None:
        with self._lock:
            self._open[device_id] -= 1
            if self._open[device_id] <= 0:
                del self._open[device_id]
                self._idle_since[device_id] = now

    def expire(self, now: int) -> list[str]:
        """End the sessions with no poll open for the grace period; returns their device ids."""
        with self._lock:
            ended = [device_id for device_id, since in self._idle_since.items() if now - since >= self._grace]
            for device_id in ended:
                del self._idle_since[device_id]
        for device_id in ended:
            self._tracker.disconnected(device_id, now)
        return ended
