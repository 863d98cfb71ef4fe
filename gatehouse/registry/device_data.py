"""Attributes and telemetry: written a batch at a time (the transports' group commits), read by
scope, key and time range, and the activity attributes derived from sessions."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..clock import now_ms
from ..device_activity import ACTIVE, ACTIVITY_ATTRIBUTES, INACTIVITY_TIMEOUT_MS
from ..errors import NotFoundError, ValidationError
from ..models import AttributeScope
from ..payloads import KvEntry, TelemetryRecord, ValueKind, entry_to_json_value
from ..storage import IntegrityError
from .context import RegistryContext

HISTORY_LIMIT = 100  # points per key of a history query, ThingsBoard's default `limit`


@dataclass(frozen=True)
class DeviceDataWrite:
    """Telemetry and attribute changes of one device: one item of a batch to write (a group commit)."""

    device_id: str
    telemetry: tuple[TelemetryRecord, ...] = ()
    attributes: tuple[KvEntry, ...] = ()
    deleted: tuple[str, ...] = ()  # attribute keys to delete
    scope: AttributeScope = AttributeScope.CLIENT  # of `attributes` and `deleted`
    ts: int | None = None  # for attributes and timestamp-less telemetry; None: now


@dataclass(frozen=True)
class DeviceDataRows:
    """Writes as the store's rows: telemetry (device_id, key, ts, kind, value), attributes
    (device_id, scope, key, kind, value, ts), deleted attributes (device_id, scope, key)."""

    telemetry: list[tuple]
    attributes: list[tuple]
    deleted: list[tuple]

    @classmethod
    def of(cls, items: Iterable[DeviceDataWrite]) -> DeviceDataRows:
        telemetry, attributes, deleted = [], [], []
        for item in items:
            ts = item.ts if item.ts is not None else now_ms()
            scope = item.scope.value
            telemetry += [(item.device_id, e.key, record.ts if record.ts is not None else ts, e.kind.value,
                           db_value(e)) for record in item.telemetry for e in record.values]
            attributes += [(item.device_id, scope, e.key, e.kind.value, db_value(e), ts) for e in item.attributes]
            deleted += [(item.device_id, scope, key) for key in item.deleted]
        return cls(telemetry, attributes, deleted)

    @classmethod
    def concatenate(cls, parts: Iterable[DeviceDataRows]) -> DeviceDataRows:
        telemetry, attributes, deleted = [], [], []
        for part in parts:
            telemetry += part.telemetry
            attributes += part.attributes
            deleted += part.deleted
        return cls(telemetry, attributes, deleted)


def db_value(entry: KvEntry):
    return int(entry.value) if entry.kind is ValueKind.BOOLEAN else entry.value


def _json_value(row: dict):
    kind, value = ValueKind(row["kind"]), row["value"]
    # Databases from before migration 0004 stored values with NUMERIC affinity (2.0 as the integer 2).
    if kind is ValueKind.BOOLEAN:
        value = bool(value)
    elif kind is ValueKind.DOUBLE:
        value = float(value)
    return entry_to_json_value(KvEntry(key="", kind=kind, value=value))


class AttributesAndTelemetry:
    def __init__(self, context: RegistryContext):
        self._context = context
        self._store = context.store

    # --- writing ----------------------------------------------------------------------------

    def save_device_data(self, items: list[DeviceDataWrite]) -> list[Exception | None]:
        """Store many devices' telemetry and attribute changes in one transaction with a few
        statements (the transports' group commits). If that fails (a device deleted meanwhile,
        say), each item is retried on its own so that one bad item fails alone; returns one
        outcome per item: None when stored, else the error."""
        # Not exclusive: device data only adds rows to existing devices, so on a store with
        # concurrent writers (PostgreSQL) several nodes' group commits run side by side.
        try:
            with self._store.transaction(exclusive=False):
                self.write(items)
            return [None] * len(items)
        except Exception:
            if len(items) == 1:
                raise
        outcomes: list[Exception | None] = []
        with self._store.transaction(exclusive=False):
            for item in items:
                try:
                    with self._store.transaction():  # a savepoint
                        self.write([item])
                except Exception as e:
                    outcomes.append(e)
                else:
                    outcomes.append(None)
        return outcomes

    def write(self, items: Iterable[DeviceDataWrite]) -> None:
        """Inside the caller's transaction."""
        self.write_rows(DeviceDataRows.of(items))

    def write_rows(self, rows: DeviceDataRows) -> None:
        try:
            self._store.save_telemetry(rows.telemetry, history=self._context.keep_telemetry_history)
            self._store.save_attributes(rows.attributes)
            self._store.delete_attributes(rows.deleted)
        except IntegrityError:  # the only constraint these rows can break: their device
            raise NotFoundError("Device not found (deleted meanwhile?)") from None

    def save_attributes(self, device_id: str, scope: AttributeScope, entries: Iterable[KvEntry]) -> None:
        self.save_device_data([DeviceDataWrite(device_id, attributes=tuple(entries), scope=AttributeScope(scope))])

    def delete_attributes(self, device_id: str, scope: AttributeScope, keys: Iterable[str]) -> None:
        self.save_device_data([DeviceDataWrite(device_id, deleted=tuple(keys), scope=AttributeScope(scope))])

    def save_telemetry(self, device_id: str, records: Iterable[TelemetryRecord]) -> None:
        """Records without a timestamp get the server time."""
        self.save_device_data([DeviceDataWrite(device_id, telemetry=tuple(records))])

    # --- activity -------------------------------------------------------------------------------

    def record_activity(self, changes: dict[str, Iterable[KvEntry]]) -> None:
        """Store what an ActivityTracker took (server attributes by device id); a device deleted
        meanwhile is skipped."""
        items = [DeviceDataWrite(device_id, attributes=tuple(entries), scope=AttributeScope.SERVER)
                 for device_id, entries in changes.items()]
        try:
            if items:
                self.save_device_data(items)
        except NotFoundError:  # a batch of one raises what a larger batch reports
            pass

    def device_activity(self, device_id: str) -> dict:
        """The device's activity attributes that are set (`active`, `lastConnectTime`, ...)."""
        return self.get_attributes(device_id, AttributeScope.SERVER, ACTIVITY_ATTRIBUTES)

    def expire_activity(self, now: int, *, timeout_ms: int = INACTIVITY_TIMEOUT_MS,
                        connected: Iterable[str] = ()) -> list[str]:
        """Mark inactive the devices nobody reported for `timeout_ms`, except those `connected`
        (live MQTT sessions, quiet but there); returns their ids."""
        keep = set(connected)
        stale = [device_id for device_id in self._store.stale_active_devices(now - timeout_ms) if device_id not in keep]
        if stale:
            self.record_activity({device_id: (KvEntry(ACTIVE, ValueKind.BOOLEAN, False),)
                                  for device_id in stale})
        return stale

    # --- reading ------------------------------------------------------------------------------

    def get_attributes(self, device_id: str, scope: AttributeScope, keys: Iterable[str] | None = None) -> dict:
        return {row["key"]: _json_value(row)
                for row in self._store.attributes(device_id, AttributeScope(scope).value, keys)}

    def attribute_data(self, device_id: str, scope: AttributeScope, keys: Iterable[str] | None = None) -> list[dict]:
        """ThingsBoard's AttributeData list (REST API): {"lastUpdateTs", "key", "value"} by key."""
        return [{"lastUpdateTs": row["last_update_ts"], "key": row["key"], "value": _json_value(row)}
                for row in self._store.attributes(device_id, AttributeScope(scope).value, keys)]

    def device_attributes(self, device_id: str, client_keys: Iterable[str] | None,
                          shared_keys: Iterable[str] | None) -> dict:
        """A device's attribute request (SPEC §2.4): no key lists means all client and shared
        attributes; one list means that scope only; empty sections are left out."""
        if client_keys is None and shared_keys is None:
            wanted = {"client": None, "shared": None}
        else:
            wanted = {name: keys for name, keys in (("client", client_keys), ("shared", shared_keys))
                      if keys is not None}
        scopes = {"client": AttributeScope.CLIENT, "shared": AttributeScope.SHARED}
        answer = {name: self.get_attributes(device_id, scopes[name], keys) for name, keys in wanted.items()}
        return {name: values for name, values in answer.items() if values}

    def latest_telemetry(self, device_id: str) -> dict:
        return {row["key"]: {"ts": row["ts"], "value": _json_value(row)}
                for row in self._store.latest_telemetry(device_id)}

    def telemetry_history(self, device_id: str, keys: Iterable[str], *, start_ts: int | None = None,
                          end_ts: int | None = None, limit: int = HISTORY_LIMIT, descending: bool = True) -> dict:
        """The stored points of each key with start_ts <= ts < end_ts (ThingsBoard's range; None:
        unbounded), at most `limit` per key, newest first unless not `descending`:
        {"key": [{"ts", "value"}]}, keys in the order asked, those without points left out (as
        ThingsBoard answers). Empty with --no-telemetry-history, which keeps no history."""
        keys = list(dict.fromkeys(keys))  # a key asked twice is answered once
        if not keys:
            raise ValidationError("Name at least one telemetry key")
        if limit < 1:
            raise ValidationError("The limit must be at least 1")
        if start_ts is not None and end_ts is not None and start_ts > end_ts:
            raise ValidationError("The start of the range must not be after its end")
        history = {}
        for key in keys:  # one index range scan per key, each stopping at the limit
            rows = self._store.telemetry_range(device_id, key, start_ts, end_ts, limit=limit, descending=descending)
            if rows:
                history[key] = [{"ts": row["ts"], "value": _json_value(row)} for row in rows]
        return history
