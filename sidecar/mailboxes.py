"""What applications send to HTTP and CoAP devices, held until the device's long poll takes it.

The sidecar's request threads wait here (`GET /api/v1/{token}/attributes/updates`,
`GET /api/v1/{token}/rpc`, a client-side `POST /api/v1/{token}/rpc` waiting for its reply); the
broker link's thread delivers. No I/O: the transport decides what a timeout means.

- Shared-attribute updates go to the polls open at that moment, as ThingsBoard's HTTP transport
  subscribes only for the length of a poll, except that a device that polled within the last
  `REPOLL_GRACE_SECONDS` is kept what arrives until its next poll (a few at most): one poll
  answers one update, so a device re-polling at once (and the CoAP bridge's observations, which
  are fed by these polls) would otherwise miss what came in between.
- A server-side RPC waits for a poll for `rpc_expiry_seconds`; if none takes it, `on_rpc_expired`
  is called (the link answers the application with an error, as ThingsBoard times it out).
- A reply to a client-side RPC goes to the request that is waiting for it, if it still is.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_RPC_EXPIRY_SECONDS = 60.0
REPOLL_GRACE_SECONDS = 5.0
MISSED_UPDATES_KEPT = 16


@dataclass
class _Device:
    updates: list[list[dict]] = field(default_factory=list)  # one list per open update poll
    rpc_calls: deque[tuple[float, int, dict]] = field(default_factory=deque)  # (expires, id, call)
    # Updates that came between two polls, with when they came; and when the last poll ended.
    missed: deque[tuple[float, dict]] = field(default_factory=lambda: deque(maxlen=MISSED_UPDATES_KEPT))
    last_poll_ended: float = float("-inf")


class DeviceMailboxes:
    def __init__(self, *, rpc_expiry_seconds: float = DEFAULT_RPC_EXPIRY_SECONDS,
                 on_rpc_expired: Callable[[str, int], None] | None = None):
        self.rpc_expiry_seconds = rpc_expiry_seconds
        self._on_rpc_expired = on_rpc_expired
        self._changed = threading.Condition()
        self._devices: dict[str, _Device] = {}
        self._replies: dict[tuple[str, int], list] = {}  # waiting client-side RPCs -> [reply]
        self._request_ids = itertools.count(1)

    def _device(self, device_id: str) -> _Device:
        device = self._devices.get(device_id)
        if device is None:
            device = self._devices[device_id] = _Device()
        return device

    def _forget_if_empty(self, device_id: str) -> None:
        device = self._devices.get(device_id)
        if (device is not None and not device.updates and not device.rpc_calls and not device.missed
                and time.monotonic() - device.last_poll_ended > REPOLL_GRACE_SECONDS):
            del self._devices[device_id]

    # --- shared attributes ----------------------------------------------------------------

    def shared_attributes_changed(self, device_id: str, update: dict) -> None:
        """`{"key": value, ...}` or `{"deleted": [...]}`, to every open update poll of the device."""
        with self._changed:
            device = self._devices.get(device_id)
            if device is None:
                return
            if device.updates:
                for poll in device.updates:
                    poll.append(update)
                self._changed.notify_all()
            elif time.monotonic() - device.last_poll_ended <= REPOLL_GRACE_SECONDS:
                device.missed.append((time.monotonic(), update))

    def wait_for_attribute_update(self, device_id: str, timeout: float) -> dict | None:
        """The next shared-attribute update of the device within `timeout` seconds, or None."""
        deadline = time.monotonic() + timeout
        poll: list[dict] = []
        with self._changed:
            device = self._device(device_id)
            while device.missed:
                came, update = device.missed.popleft()
                if time.monotonic() - came <= REPOLL_GRACE_SECONDS:
                    device.last_poll_ended = time.monotonic()
                    return update
            device.updates.append(poll)
            try:
                while not poll:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._changed.wait(remaining)
                now = time.monotonic()
                device.missed.extend((now, later) for later in poll[1:])  # for the next poll
                return poll[0]
            finally:
                device.updates.remove(poll)
                device.last_poll_ended = time.monotonic()
                self._forget_if_empty(device_id)

    # --- server-side RPC --------------------------------------------------------------------

    def rpc_call(self, device_id: str, request_id: int, call: dict) -> None:
        """`call` is `{"method": ..., "params": ...}`; a poll will see `{"id": request_id, **call}`."""
        with self._changed:
            self._device(device_id).rpc_calls.append((time.monotonic() + self.rpc_expiry_seconds, request_id, call))
            self._changed.notify_all()

    def take_rpc_call(self, device_id: str, timeout: float) -> dict | None:
        """The oldest waiting RPC for the device, `{"id": ..., "method": ..., "params": ...}`,
        within `timeout` seconds, or None."""
        deadline = time.monotonic() + timeout
        with self._changed:
            try:
                while True:
                    calls = self._device(device_id).rpc_calls
                    self._expire(device_id, calls)
                    if calls:
                        _expires, request_id, call = calls.popleft()
                        return {"id": request_id, **call}
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._changed.wait(min(remaining, self.rpc_expiry_seconds))
            finally:
                self._forget_if_empty(device_id)

    def expire(self) -> None:
        """Give up on RPCs no poll took in time and on updates kept for a device that has not
        polled again (called periodically)."""
        with self._changed:
            now = time.monotonic()
            for device_id in list(self._devices):
                device = self._devices[device_id]
                self._expire(device_id, device.rpc_calls)
                while device.missed and now - device.missed[0][0] > REPOLL_GRACE_SECONDS:
                    device.missed.popleft()
                self._forget_if_empty(device_id)

    def _expire(self, device_id: str, calls: deque) -> None:
        now = time.monotonic()
        while calls and calls[0][0] <= now:
            _expires, request_id, _call = calls.popleft()
            if self._on_rpc_expired is not None:
                self._on_rpc_expired(device_id, request_id)

    # --- client-side RPC ----------------------------------------------------------------------

    def next_request_id(self) -> int:
        return next(self._request_ids) % 1_000_000_000  # the namespace's ids have at most 9 digits

    def expect_rpc_reply(self, device_id: str, request_id: int) -> None:
        with self._changed:
            self._replies[(device_id, request_id)] = []

    def rpc_reply(self, device_id: str, request_id: int, payload: bytes) -> None:
        with self._changed:
            waiting = self._replies.get((device_id, request_id))
            if waiting is not None and not waiting:
                waiting.append(payload)
                self._changed.notify_all()

    def wait_for_rpc_reply(self, device_id: str, request_id: int, timeout: float) -> bytes | None:
        """The reply to a client-side RPC announced with `expect_rpc_reply`, or None."""
        deadline = time.monotonic() + timeout
        with self._changed:
            try:
                waiting = self._replies[(device_id, request_id)]
                while not waiting:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._changed.wait(remaining)
                return waiting[0]
            finally:
                self._replies.pop((device_id, request_id), None)
