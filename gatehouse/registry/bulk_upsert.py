"""Many devices created or updated at once (bulk import, SPEC §8): rows prepared before the
write lock, new devices inserted a batch at a time, each item with its own outcome."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from ..clock import now_ms
from ..credentials import AccessToken, NewCredentials, generate_secret
from ..errors import GatehouseError
from ..ids import new_id
from ..models import AttributeScope, java_trim
from ..payloads import KvEntry
from ..storage import IntegrityError
from .context import RegistryContext
from .credential_rows import credentials_columns
from .device_data import AttributesAndTelemetry, DeviceDataRows, db_value
from .devices import Devices
from .profiles import Profiles
from .rules import device_name, info_json


@dataclass(frozen=True)
class UpsertedDevice:
    device_id: str
    created: bool  # False: an existing device of that name was updated


@dataclass(slots=True)
class DeviceUpsert:
    """A device to create, or to update if one of that name exists (a bulk import's row). A
    profile named but missing is created, as ThingsBoard does."""

    name: str
    profile: str | None = None
    label: str | None = None
    additional_info: dict | None = None
    credentials: NewCredentials | None = None  # None: a new device gets a generated token
    attributes: dict[AttributeScope, tuple[KvEntry, ...]] | None = None
    telemetry: tuple[KvEntry, ...] = ()
    write_data_of_existing: bool = True

    def data_rows(self, device_id: str, ts: int) -> DeviceDataRows:
        attributes = [(device_id, AttributeScope(scope).value, e.key, e.kind.value, db_value(e), ts)
                      for scope, entries in (self.attributes or {}).items() for e in entries]
        telemetry = [(device_id, e.key, ts, e.kind.value, db_value(e)) for e in self.telemetry]
        return DeviceDataRows(telemetry, attributes, [])


@dataclass
class PreparedUpsert:
    """A DeviceUpsert with its rows as a new device (BulkUpsert.prepare), or the error that
    refused it before any database work."""

    item: DeviceUpsert
    device: dict | None = None
    credentials: dict | None = None
    data: DeviceDataRows | None = None
    error: GatehouseError | None = None


class BulkUpsert:
    def __init__(self, context: RegistryContext, profiles: Profiles, devices: Devices,
                 data: AttributesAndTelemetry):
        self._store = context.store
        self._key = context.key
        self._profiles = profiles
        self._devices = devices
        self._data = data

    def prepare(self, items: list[DeviceUpsert]) -> list[PreparedUpsert]:
        """What `upsert` can do without the database, done before it takes the write lock: each
        item's rows as a new device (ids, credential digests, sealed secrets, data)."""
        prepared = []
        ts = now_ms()
        for item in items:
            try:
                device, credentials = self._new_device_rows(item, ts)
            except GatehouseError as e:
                prepared.append(PreparedUpsert(item, error=e))
                continue
            prepared.append(PreparedUpsert(item, device, credentials, item.data_rows(device["id"], ts)))
        return prepared

    def upsert(self, prepared: list[PreparedUpsert]) -> list[UpsertedDevice | GatehouseError]:
        """Create each device, or update the one of its name: one transaction for them all, and
        each item with its own outcome.

        New devices are inserted with a few statements for the whole batch, from the rows
        `prepare` built, instead of a savepoint and eight statements per device. Should one of
        them break a constraint (a token already in use), the batch is redone one savepoint per
        item, so that each item's own error is reported."""
        outcomes: list[UpsertedDevice | GatehouseError | None] = [p.error for p in prepared]
        with self._store.transaction():
            names = Counter(p.device["name"] for p in prepared if p.error is None)
            present = self._store.device_names_present(list(names))
            # A name twice in the batch is created by its first row and updated by the second:
            # such rows take the per-item path, as do existing devices.
            fresh = [i for i, p in enumerate(prepared)
                     if p.error is None and p.device["name"] not in present and names[p.device["name"]] == 1]
            try:
                with self._store.transaction():
                    self._insert_new_devices([prepared[i] for i in fresh])
            except (IntegrityError, GatehouseError):
                fresh = []
            for i in fresh:
                outcomes[i] = UpsertedDevice(prepared[i].device["id"], created=True)
            for i, p in enumerate(prepared):
                if outcomes[i] is None:
                    try:
                        with self._store.transaction():
                            outcomes[i] = self._upsert_one(p.item)
                    except GatehouseError as e:
                        outcomes[i] = e
        return outcomes

    def _new_device_rows(self, item: DeviceUpsert, ts: int) -> tuple[dict, dict]:
        """The device and credentials rows of `item` as a new device (profile_id still unset)."""
        device_id, credentials_id = new_id(), new_id()
        device = {"id": device_id, "created_time": ts, "name": device_name(item.name), "profile_id": None,
                  "label": item.label, "additional_info": info_json(item.additional_info)}
        credentials = {"id": credentials_id, "created_time": ts, "device_id": device_id,
                       **credentials_columns(self._key, credentials_id,
                                             item.credentials or AccessToken(generate_secret()))}
        return device, credentials

    def _insert_new_devices(self, prepared: list[PreparedUpsert]) -> None:
        profile_ids: dict[str | None, str] = {}
        for p in prepared:
            if p.item.profile not in profile_ids:
                profile_ids[p.item.profile] = self._profiles.named_or_created(p.item.profile)["id"]
            p.device["profile_id"] = profile_ids[p.item.profile]
        self._store.insert_devices([p.device for p in prepared])
        self._store.insert_credentials_rows([p.credentials for p in prepared])
        self._data.write_rows(DeviceDataRows.concatenate([p.data for p in prepared]))

    def _upsert_one(self, item: DeviceUpsert) -> UpsertedDevice:
        """Existing devices keep what is not given (profile, label, credentials); attribute and
        telemetry columns are written to them only with `write_data_of_existing`."""
        profile_row = self._profiles.named_or_created(item.profile) if item.profile else None
        existing = self._store.device(name=java_trim(item.name or ""))
        if existing is None:
            device_id = self._devices.insert(item.name, (profile_row or self._store.default_profile())["id"],
                                             item.label, item.additional_info,
                                             item.credentials or AccessToken(generate_secret()))
        else:
            # Only what the row gives changes: a file without a TYPE column must not move
            # devices to the default profile.
            device_id = existing["id"]
            changes = {"additional_info": json.dumps({**json.loads(existing["additional_info"]),
                                                      **(item.additional_info or {})})}
            if profile_row is not None:
                changes["profile_id"] = profile_row["id"]
            if item.label is not None:
                changes["label"] = item.label
            self._store.update_device(device_id, changes)
            if item.credentials is not None:
                self._devices.replace_credentials(self._store.credentials(device_id), item.credentials)
        if existing is None or item.write_data_of_existing:
            self._data.write_rows(item.data_rows(device_id, now_ms()))
        return UpsertedDevice(device_id, created=existing is None)
