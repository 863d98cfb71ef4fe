"""Devices and their one set of credentials: create, save (ThingsBoard's REST semantics), find,
list, delete, and replace or reveal the credentials."""
from __future__ import annotations

import json

from ..clock import now_ms
from ..credentials import AccessToken, NewCredentials, generate_secret
from ..errors import NotFoundError, ValidationError
from ..ids import new_id
from ..models import CredentialsType, Device, DeviceCredentials
from ..storage import DEVICE_SORT_KEYS, IntegrityError
from .context import RegistryContext
from .credential_rows import credentials_columns, reveal
from .profiles import Profiles
from .rules import check_order, device_name, info_json, integrity_error


def device_from_row(row: dict) -> Device:
    return Device(id=row["id"], created_time=row["created_time"], name=row["name"],
                  profile_id=row["profile_id"], profile_name=row["profile_name"], label=row["label"],
                  additional_info=json.loads(row["additional_info"]),
                  credentials_type=CredentialsType(row["credentials_type"]) if row["credentials_type"] else None)


class Devices:
    def __init__(self, context: RegistryContext, profiles: Profiles):
        self._store = context.store
        self._key = context.key
        self._profiles = profiles

    def create(
        self,
        name: str,
        *,
        profile: str | None = None,
        label: str | None = None,
        additional_info: dict | None = None,
        credentials: NewCredentials | None = None,
    ) -> Device:
        """A device in `profile` (default profile if None) with `credentials` (a generated
        access token if None). All or nothing: a credentials clash leaves no device behind."""
        with self._store.transaction():
            profile_row = self._profiles.row(profile) if profile else self._store.default_profile()
            device_id = self.insert(name, profile_row["id"], label, additional_info,
                                    credentials or AccessToken(generate_secret()))
            return self.get(device_id)

    def insert(self, name: str, profile_id: str, label: str | None, additional_info: dict | None,
               credentials: NewCredentials) -> str:
        """A new device and its credentials, inside the caller's transaction; returns its id."""
        device_id = new_id()
        try:
            self._store.insert_device({
                "id": device_id, "created_time": now_ms(), "name": device_name(name), "profile_id": profile_id,
                "label": label, "additional_info": info_json(additional_info),
            })
            credentials_id = new_id()
            self._store.insert_credentials({
                "id": credentials_id, "created_time": now_ms(), "device_id": device_id,
                **credentials_columns(self._key, credentials_id, credentials),
            })
        except IntegrityError as e:
            raise integrity_error(e) from None
        return device_id

    def save(
        self,
        name: str,
        *,
        device_id: str | None = None,
        profile_id: str | None = None,
        profile_type: str | None = None,
        label: str | None = None,
        additional_info: dict | None = None,
        credentials: NewCredentials | None = None,
    ) -> Device:
        """ThingsBoard's saveDevice (REST API): create a device, or with `device_id` replace that
        device's name, profile, label and additional info (its credentials only if given). The
        profile is `profile_id`, else the one named `profile_type` (created if missing, as
        ThingsBoard does), else the default. One transaction: a refused device leaves no
        profile behind."""
        with self._store.transaction():
            profile_row = self._profiles.for_new_device(profile_id, profile_type)
            if device_id is None:
                device_id = self.insert(name, profile_row["id"], label, additional_info,
                                        credentials or AccessToken(generate_secret()))
            else:
                self.row(device_id, by_id=True)
                try:
                    self._store.update_device(device_id, {
                        "name": device_name(name), "profile_id": profile_row["id"], "label": label,
                        "additional_info": info_json(additional_info)})
                except IntegrityError as e:
                    raise integrity_error(e) from None
                if credentials is not None:
                    self.replace_credentials(self._store.credentials(device_id), credentials)
            return self.by_id(device_id)

    def row(self, name_or_id: str, by_id: bool = False) -> dict:
        if by_id:
            row = self._store.device(id=name_or_id)
            if row is None:
                raise NotFoundError(f"Device with id [{name_or_id}] is not found")
            return row
        row = self._store.device(name=name_or_id) or self._store.device(id=name_or_id)
        if row is None:
            raise NotFoundError(f"Device {name_or_id!r} not found")
        return row

    def by_id(self, device_id: str) -> Device:
        # Logins know the id: skip get's by-name probe, which would always miss.
        return device_from_row(self._store.device(id=device_id))

    def get(self, name_or_id: str, *, by_id: bool = False) -> Device:
        """`by_id`: `name_or_id` is an id only, never a name (REST paths)."""
        return device_from_row(self.row(name_or_id, by_id))

    def find_by_name(self, name: str) -> Device | None:
        """The device of exactly this name (never one whose id it is)."""
        row = self._store.device(name=name)
        return None if row is None else device_from_row(row)

    def find(self, name_or_id: str) -> Device | None:
        try:
            return self.get(name_or_id)
        except NotFoundError:
            return None

    def list(self, *, offset: int = 0, limit: int = 100, name_contains: str | None = None,
             profile_name: str | None = None, order_by: str = "name", descending: bool = False) -> list[Device]:
        """`order_by`: name, created_time, label or profile_name."""
        check_order(order_by, DEVICE_SORT_KEYS)
        return [device_from_row(row) for row in self._store.devices(
            offset=offset, limit=limit, name_contains=name_contains, profile_name=profile_name, order_by=order_by,
            descending=descending)]

    def count(self, *, name_contains: str | None = None, profile_name: str | None = None) -> int:
        return self._store.count_devices(name_contains=name_contains, profile_name=profile_name)

    def delete(self, name_or_id: str, *, by_id: bool = False) -> None:
        with self._store.transaction():
            self._store.delete_device(self.row(name_or_id, by_id)["id"])

    # --- credentials --------------------------------------------------------------------------

    def credentials(self, device: str, *, by_id: bool = False) -> DeviceCredentials:
        """The device's credentials with secrets revealed (admin view)."""
        return reveal(self._key, self._store.credentials(self.row(device, by_id)["id"]))

    def revealed_credentials(self, device_id: str) -> DeviceCredentials:
        return reveal(self._key, self._store.credentials(device_id))

    def set_credentials(self, device: str, credentials: NewCredentials | None = None) -> DeviceCredentials:
        """Replace the device's credentials (a new generated access token if None)."""
        with self._store.transaction():
            row = self._store.credentials(self.row(device)["id"])
            self.replace_credentials(row, credentials or AccessToken(generate_secret()))
            return self.revealed_credentials(row["device_id"])

    def update_credentials(self, device_id: str, record_id: str | None,
                           credentials: NewCredentials) -> DeviceCredentials:
        """ThingsBoard's credentials update (REST API): the caller names the credentials record
        it read (`id`); anything but the device's current record is refused as ThingsBoard
        refuses it (SPEC §8). Logins with the old credentials end (the version changes)."""
        with self._store.transaction():
            row = self._store.credentials(self.row(device_id, by_id=True)["id"])
            if record_id is None or record_id != row["id"]:
                raise ValidationError("Unable to update non-existent device credentials!", field="credentials")
            self.replace_credentials(row, credentials)
            return self.revealed_credentials(row["device_id"])

    def replace_credentials(self, row: dict, credentials: NewCredentials) -> None:
        """The credentials row `row` holds `credentials` from now on, inside the caller's transaction."""
        try:
            self._store.update_credentials(row["device_id"], credentials_columns(self._key, row["id"], credentials))
        except IntegrityError as e:
            raise integrity_error(e) from None
