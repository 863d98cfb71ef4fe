"""The device registry: Gatehouse's library API.

Profiles, devices and their credentials, logins, provisioning, attributes and telemetry. The
CLI, the broker plugin, the sidecar and the CoAP bridge are all thin clients of this class.
Decisions come from the I/O-free modules (credentials, provisioning, payloads); this class
loads what they need, seals and digests secrets, and applies their answers atomically.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from . import certificates, retention
from .credentials import (
    AccessToken,
    MqttBasic,
    NewCredentials,
    StoredCredentials,
    X509Certificate,
    authenticate_basic,
    certificate_thumbprint,
    generate_secret,
    sha3_hash,
)
from .data_dir import DataDir
from .device_activity import ACTIVE, ACTIVITY_ATTRIBUTES, INACTIVITY_TIMEOUT_MS
from .errors import GatehouseError, NotFoundError, ValidationError
from .ids import new_id
from .login import (
    APPLICATION_USERNAME_PREFIX,
    SERVICE_USERNAME_PREFIX,
    LoginOutcome,
    LoginResult,
    is_provision_login,
    refusal_for_unknown_credentials,
)
from .models import (
    AttributeScope,
    CredentialsType,
    Device,
    DeviceCredentials,
    DeviceProfile,
    ProvisionType,
)
from .mqtt_transport import MqttTransport
from .payloads import KvEntry, TelemetryRecord, ValueKind, entry_to_json_value
from .pki import ensure_development_pki
from .provisioning import (
    PROVISION_STATE_KEY,
    PROVISIONED,
    CreateDevice,
    ExistingDevice,
    Failure,
    MarkProvisioned,
    NotFound,
    ProvisionRequest,
    ProvisionResult,
    ProvisionStatus,
    UseExisting,
    decide_provision,
    decide_x509_chain,
)
from .retention import TELEMETRY_RETENTION_DAYS, Prunable
from .server_key import ServerKey
from .store import DEVICE_ORDER, PROFILE_ORDER, IntegrityError, Store, now_ms

log = logging.getLogger(__name__)

DEFAULT_PROFILE_NAME = "default"
DEFAULT_CN_REGEX = "(.*)"
KEY_SECRET_STRATEGIES = (ProvisionType.ALLOW_CREATE_NEW_DEVICES, ProvisionType.CHECK_PRE_PROVISIONED_DEVICES)
HISTORY_LIMIT = 100  # points per key of a history query, ThingsBoard's default `limit`
_EARLIEST_TS = -(2**63)  # a history query without a start: SQLite's smallest integer

# The uniqueness rules, keyed by the constraint SQLite reports: ThingsBoard's message for each, and
# the input it concerns (ValidationError.field).
_CONSTRAINTS = {
    "device_profile.name": ("Device profile with such name already exists!", "name"),
    "device_profile.provision_device_key": ("Device profile with such provision device key already exists!",
                                            "provision_key"),
    "device.name": ("Device with such name already exists!", "name"),
    "device_credentials.lookup_digest": ("Device credentials are already assigned to another device!", "credentials"),
    "admin_user.username": ("User with such username already exists!", "username"),
}


def _integrity_error(error: IntegrityError) -> ValidationError:
    message, field = _CONSTRAINTS.get(error.constraint, (f"Constraint violated: {error.constraint}", None))
    return ValidationError(message, field=field)


def _profile_clash(error: IntegrityError, strategy: ProvisionType) -> ValidationError:
    if strategy is ProvisionType.X509_CERTIFICATE_CHAIN and error.constraint == "device_profile.provision_device_key":
        return ValidationError("Device profile with such certificate already exists!", field="ca_certificate")
    return _integrity_error(error)


def _checked_name(name: str | None, what: str) -> str:
    """ThingsBoard's name rules (DataValidator.validateString), after trimming."""
    name = (name or "").strip()
    if not name:
        raise ValidationError(f"{what} name should be specified!", field="name")
    if "\x00" in name:
        raise ValidationError(f"{what} name should not contain 0x00 symbol!", field="name")
    return name


def _profile_name(name: str | None) -> str:
    return _checked_name(name, "Device profile")


def _device_name(name: str | None) -> str:
    name = _checked_name(name, "Device")
    if len(name) > 255:
        raise ValidationError("Device name should be at most 255 characters long", field="name")
    return name


def _check_order(order_by: str, allowed: dict) -> None:
    if order_by not in allowed:
        raise ValidationError(f"Unsupported sort property: {order_by!r} (supported: {', '.join(allowed)})")


@dataclass(frozen=True)
class DeviceData:
    """Telemetry and attribute changes of one device, as one unit of a group commit."""

    device_id: str
    telemetry: tuple[TelemetryRecord, ...] = ()
    attributes: tuple[KvEntry, ...] = ()
    deleted: tuple[str, ...] = ()  # attribute keys to delete
    scope: AttributeScope = AttributeScope.CLIENT  # of `attributes` and `deleted`
    ts: int | None = None  # for attributes and timestamp-less telemetry; None: now


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
        attributes = [(device_id, AttributeScope(scope).value, e.key, e.kind.value, _db_value(e), ts)
                      for scope, entries in (self.attributes or {}).items() for e in entries]
        telemetry = [(device_id, e.key, ts, e.kind.value, _db_value(e)) for e in self.telemetry]
        return DeviceDataRows(telemetry, attributes, [])


@dataclass(frozen=True)
class DeviceDataRows:
    """DeviceData as the store's rows: telemetry (device_id, key, ts, kind, value), attributes
    (device_id, scope, key, kind, value, ts), deleted attributes (device_id, scope, key)."""

    telemetry: list[tuple]
    attributes: list[tuple]
    deleted: list[tuple]

    @classmethod
    def concatenate(cls, parts: Iterable[DeviceDataRows]) -> DeviceDataRows:
        telemetry, attributes, deleted = [], [], []
        for part in parts:
            telemetry += part.telemetry
            attributes += part.attributes
            deleted += part.deleted
        return cls(telemetry, attributes, deleted)


def _device_data_rows(items: Iterable[DeviceData]) -> DeviceDataRows:
    telemetry, attributes, deleted = [], [], []
    for item in items:
        ts = item.ts if item.ts is not None else now_ms()
        scope = item.scope.value
        telemetry += [(item.device_id, e.key, record.ts if record.ts is not None else ts, e.kind.value,
                       _db_value(e)) for record in item.telemetry for e in record.values]
        attributes += [(item.device_id, scope, e.key, e.kind.value, _db_value(e), ts) for e in item.attributes]
        deleted += [(item.device_id, scope, key) for key in item.deleted]
    return DeviceDataRows(telemetry, attributes, deleted)


def _info_json(additional_info: dict | None) -> str:
    return json.dumps(additional_info) if additional_info else "{}"  # most devices have none: no encoder


@dataclass
class PreparedUpsert:
    """A DeviceUpsert with its rows as a new device (Registry.prepare_upserts), or the error
    that refused it before any database work."""

    item: DeviceUpsert
    device: dict | None = None
    credentials: dict | None = None
    data: DeviceDataRows | None = None
    error: GatehouseError | None = None


class Registry:
    # Off: telemetry keeps its latest values only, for operators whose applications keep the
    # history themselves from the gatehouse/devices/... feed (--no-telemetry-history).
    keep_telemetry_history = True

    def __init__(self, database: Path | str, server_key: ServerKey):
        self.store = Store(database)
        self.key = server_key
        if self.store.default_profile() is None:
            with self.store.transaction():
                if self.store.default_profile() is None:
                    self._insert_profile(DEFAULT_PROFILE_NAME, ProvisionType.DISABLED, is_default=True)

    @classmethod
    def initialise(cls, data_dir: Path | str, *, hostnames: Iterable[str] = ()) -> Registry:
        """`gatehouse init`: database, server key and development PKI; creates only what is
        missing, so running it again is harmless."""
        paths = DataDir(Path(data_dir))
        paths.create()
        key = ServerKey.load_or_create(paths.server_key)
        registry = cls(paths.database, key)
        ensure_development_pki(paths.pki, hostnames=hostnames)
        return registry

    @classmethod
    def open(cls, data_dir: Path | str, *, telemetry_history: bool = True) -> Registry:
        """Open a data dir made by `initialise`; `telemetry_history` off: see keep_telemetry_history."""
        paths = DataDir(Path(data_dir))
        if not paths.exists():
            raise NotFoundError(f"no Gatehouse data in {paths.root} (run `gatehouse init`)")
        registry = cls(paths.database, ServerKey(paths.server_key.read_bytes()))
        registry.keep_telemetry_history = telemetry_history
        return registry

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- device profiles ------------------------------------------------------------------

    def create_profile(
        self,
        name: str,
        strategy: ProvisionType = ProvisionType.DISABLED,
        *,
        key: str | None = None,
        secret: str | None = None,
        ca_certificate_pem: str | None = None,
        cn_regex: str = DEFAULT_CN_REGEX,
        allow_create: bool = True,
        description: str | None = None,
        default: bool = False,
        mqtt_transport: MqttTransport | None = None,
    ) -> DeviceProfile:
        """Key and secret are generated when not given; an X.509 chain profile's key is the
        SHA3 hash of its CA certificate, as in ThingsBoard. `mqtt_transport` None is
        ThingsBoard's DEFAULT transport."""
        strategy = ProvisionType(strategy)
        with self.store.transaction():
            profile_id = self._insert_profile(
                name, strategy, is_default=default, key=key, secret=secret, ca_certificate_pem=ca_certificate_pem,
                cn_regex=cn_regex, allow_create=allow_create, description=description, mqtt_transport=mqtt_transport)
            return self._profile(self.store.profile(id=profile_id))

    def update_profile(
        self,
        profile_id: str,
        name: str,
        strategy: ProvisionType = ProvisionType.DISABLED,
        *,
        key: str | None = None,
        secret: str | None = None,
        ca_certificate_pem: str | None = None,
        cn_regex: str = DEFAULT_CN_REGEX,
        allow_create: bool = True,
        description: str | None = None,
        mqtt_transport: MqttTransport | None = None,
    ) -> DeviceProfile:
        """Replace a profile's name, description, provisioning and transport settings in place
        (ThingsBoard's save with an id); its id, devices and default flag stay. A key or secret
        not given keeps the current one while the strategy stays a key/secret one, else is
        generated. Connected MQTT devices follow a transport change within a second."""
        strategy = ProvisionType(strategy)
        with self.store.transaction():
            row = self._profile_row(profile_id, by_id=True)
            if strategy in KEY_SECRET_STRATEGIES and row["provision_type"] in KEY_SECRET_STRATEGIES:
                key = key or row["provision_device_key"]
                secret = secret or self.key.open(row["sealed_provision_secret"], f"device_profile:{row['id']}")
            changes = {"name": _profile_name(name), "description": description, "provision_type": strategy.value,
                       **self._provision_columns(row["id"], strategy, key, secret, ca_certificate_pem, cn_regex,
                                                 allow_create),
                       **_mqtt_transport_columns(mqtt_transport)}
            try:
                self.store.update_profile(row["id"], changes)
            except IntegrityError as e:
                raise _profile_clash(e, strategy) from None
            return self._profile(self.store.profile(id=row["id"]))

    def _insert_profile(self, name, strategy, *, is_default=False, key=None, secret=None, ca_certificate_pem=None,
                        cn_regex=DEFAULT_CN_REGEX, allow_create=True, description=None, mqtt_transport=None) -> str:
        profile_id = new_id()
        row = {"id": profile_id, "created_time": now_ms(), "name": _profile_name(name), "description": description,
               "is_default": int(is_default), "provision_type": strategy.value,
               **self._provision_columns(profile_id, strategy, key, secret, ca_certificate_pem, cn_regex,
                                         allow_create),
               **_mqtt_transport_columns(mqtt_transport)}
        try:
            if is_default:
                self.store.clear_default_profile()
            self.store.insert_profile(row)
        except IntegrityError as e:
            raise _profile_clash(e, strategy) from None
        return profile_id

    def _provision_columns(self, profile_id, strategy, key, secret, ca_certificate_pem, cn_regex,
                           allow_create) -> dict:
        """Every strategy-dependent column, the unused ones NULL (a strategy change clears them)."""
        columns = dict.fromkeys(("provision_device_key", "sealed_provision_secret", "ca_certificate_pem",
                                 "certificate_regex", "allow_create_by_x509"))
        if strategy in KEY_SECRET_STRATEGIES:
            key, secret = key or generate_secret(), secret or generate_secret()
            for label, value in (("key", key), ("secret", secret)):
                if value != value.strip() or re.search(r"[\x00-\x1f\x7f]", value):
                    raise ValidationError(f"Provision device {label} must not contain whitespace at its ends "
                                          "or control characters", field=f"provision_{label}")
            columns["provision_device_key"] = key
            columns["sealed_provision_secret"] = self.key.seal(secret, f"device_profile:{profile_id}")
        elif strategy is ProvisionType.X509_CERTIFICATE_CHAIN:
            columns.update(self._x509_chain_columns(ca_certificate_pem, cn_regex, allow_create))
        elif key or secret or ca_certificate_pem:
            raise ValidationError("A DISABLED profile takes no provision key, secret or certificate",
                                  field="provision_secret")
        return columns

    @staticmethod
    def _x509_chain_columns(ca_pem: str | None, cn_regex: str, allow_create: bool) -> dict:
        if not ca_pem:
            raise ValidationError("An X509_CERTIFICATE_CHAIN profile needs a CA certificate", field="ca_certificate")
        try:
            blocks = certificates.split_pem_certificates(ca_pem)
            certificates.parse_certificate(blocks[0])
        except certificates.CertificateError as e:
            raise ValidationError(f"Invalid CA certificate: {e}", field="ca_certificate") from None
        try:
            if re.compile(cn_regex).groups < 1:
                raise ValidationError("The CN regex needs a capture group for the device name, e.g. (.*)",
                                      field="cn_regex")
        except re.error as e:
            raise ValidationError(f"Invalid CN regex: {e}", field="cn_regex") from None
        normalised = "\n".join(blocks)
        return {"provision_device_key": sha3_hash(blocks[0]), "ca_certificate_pem": normalised,
                "certificate_regex": cn_regex, "allow_create_by_x509": int(bool(allow_create))}

    def _profile(self, row: dict) -> DeviceProfile:
        strategy = ProvisionType(row["provision_type"])
        secret = row["ca_certificate_pem"]
        if row["sealed_provision_secret"] is not None:
            secret = self.key.open(row["sealed_provision_secret"], f"device_profile:{row['id']}")
        allow = row["allow_create_by_x509"]
        return DeviceProfile(
            id=row["id"], created_time=row["created_time"], name=row["name"], description=row["description"],
            is_default=bool(row["is_default"]), provision_type=strategy,
            provision_device_key=row["provision_device_key"], provision_device_secret=secret,
            certificate_regex=row["certificate_regex"], allow_create_by_x509=None if allow is None else bool(allow),
            mqtt_transport=_mqtt_transport(row))

    def _profile_row(self, name_or_id: str, by_id: bool = False) -> dict:
        if by_id:
            row = self.store.profile(id=name_or_id)
            if row is None:
                raise NotFoundError(f"Device profile with id [{name_or_id}] is not found")
            return row
        row = self.store.profile(name=name_or_id) or self.store.profile(id=name_or_id)
        if row is None:
            raise NotFoundError(f"Device profile {name_or_id!r} not found")
        return row

    def get_profile(self, name_or_id: str, *, by_id: bool = False) -> DeviceProfile:
        """`by_id`: `name_or_id` is an id only, never a name (REST paths)."""
        return self._profile(self._profile_row(name_or_id, by_id))

    def list_profiles(self, *, offset: int = 0, limit: int | None = None, name_contains: str | None = None,
                      order_by: str = "name", descending: bool = False) -> list[DeviceProfile]:
        """`order_by`: name, created_time or description."""
        _check_order(order_by, PROFILE_ORDER)
        return [self._profile(row) for row in self.store.profiles(
            offset=offset, limit=-1 if limit is None else limit, name_contains=name_contains, order_by=order_by,
            descending=descending)]

    def mqtt_transports(self) -> dict[str, MqttTransport | None]:
        """Every profile's MQTT transport settings by profile id (None: the DEFAULT transport)."""
        return {row["id"]: _mqtt_transport(row) for row in self.store.profile_transports()}

    def count_profiles(self, *, name_contains: str | None = None) -> int:
        return self.store.count_profiles(name_contains=name_contains)

    def default_profile(self) -> DeviceProfile:
        return self._profile(self.store.default_profile())

    def set_default_profile(self, name_or_id: str, *, by_id: bool = False) -> DeviceProfile:
        with self.store.transaction():
            row = self._profile_row(name_or_id, by_id)
            self.store.clear_default_profile()
            self.store.update_profile(row["id"], {"is_default": 1})
        return self.get_profile(row["id"], by_id=True)

    def delete_profile(self, name_or_id: str, *, by_id: bool = False) -> None:
        with self.store.transaction():
            row = self._profile_row(name_or_id, by_id)
            if row["is_default"]:
                raise ValidationError("Deletion of Default Device Profile is prohibited!")
            if self.store.count_devices_in_profile(row["id"]):
                raise ValidationError("The device profile referenced by the devices cannot be deleted!")
            self.store.delete_profile(row["id"])

    # --- devices and credentials ----------------------------------------------------------

    def create_device(
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
        with self.store.transaction():
            profile_row = self._profile_row(profile) if profile else self.store.default_profile()
            device_id = self._insert_device(name, profile_row["id"], label, additional_info,
                                            credentials or AccessToken(generate_secret()))
            return self.get_device(device_id)

    def _insert_device(self, name: str, profile_id: str, label: str | None, additional_info: dict | None,
                       credentials: NewCredentials) -> str:
        device_id = new_id()
        try:
            self.store.insert_device({
                "id": device_id, "created_time": now_ms(), "name": _device_name(name), "profile_id": profile_id,
                "label": label, "additional_info": _info_json(additional_info),
            })
            credentials_id = new_id()
            self.store.insert_credentials({
                "id": credentials_id, "created_time": now_ms(), "device_id": device_id,
                **self._credentials_columns(credentials_id, credentials),
            })
        except IntegrityError as e:
            raise _integrity_error(e) from None
        return device_id

    def save_device(
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
        with self.store.transaction():
            profile_row = self._profile_for_device(profile_id, profile_type)
            if device_id is None:
                device_id = self._insert_device(name, profile_row["id"], label, additional_info,
                                                credentials or AccessToken(generate_secret()))
            else:
                self._device_row(device_id, by_id=True)
                try:
                    self.store.update_device(device_id, {
                        "name": _device_name(name), "profile_id": profile_row["id"], "label": label,
                        "additional_info": _info_json(additional_info)})
                except IntegrityError as e:
                    raise _integrity_error(e) from None
                if credentials is not None:
                    self._replace_credentials(self.store.credentials(device_id), credentials)
            return self._device_by_id(device_id)

    def _profile_for_device(self, profile_id: str | None, profile_type: str | None) -> dict:
        if profile_id:
            row = self.store.profile(id=profile_id)
            if row is None:
                raise ValidationError("Device is referencing non existing device profile!", field="profile")
            return row
        if profile_type and profile_type.strip():
            name = _profile_name(profile_type)
            return self.store.profile(name=name) or self.store.profile(
                id=self._insert_profile(name, ProvisionType.DISABLED))
        return self.store.default_profile()

    def prepare_upserts(self, items: list[DeviceUpsert]) -> list[PreparedUpsert]:
        """What `upsert_devices` can do without the database, done before it takes the write
        lock: each item's rows as a new device (ids, credential digests, sealed secrets, data)."""
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

    def upsert_devices(self, prepared: list[PreparedUpsert]) -> list[UpsertedDevice | GatehouseError]:
        """Create each device, or update the one of its name (bulk import, SPEC §8): one
        transaction for them all, and each item with its own outcome.

        New devices are inserted with a few statements for the whole batch, from the rows
        `prepare_upserts` built, instead of a savepoint and eight statements per device. Should
        one of them break a constraint (a token already in use), the batch is redone one
        savepoint per item, so that each item's own error is reported."""
        outcomes: list[UpsertedDevice | GatehouseError | None] = [p.error for p in prepared]
        with self.store.transaction():
            names = Counter(p.device["name"] for p in prepared if p.error is None)
            present = self.store.device_names_present(list(names))
            # A name twice in the batch is created by its first row and updated by the second:
            # such rows take the per-item path, as do existing devices.
            fresh = [i for i, p in enumerate(prepared)
                     if p.error is None and p.device["name"] not in present and names[p.device["name"]] == 1]
            try:
                with self.store.transaction():
                    self._insert_new_devices([prepared[i] for i in fresh])
            except (IntegrityError, GatehouseError):
                fresh = []
            for i in fresh:
                outcomes[i] = UpsertedDevice(prepared[i].device["id"], created=True)
            for i, p in enumerate(prepared):
                if outcomes[i] is None:
                    try:
                        with self.store.transaction():
                            outcomes[i] = self._upsert(p.item)
                    except GatehouseError as e:
                        outcomes[i] = e
        return outcomes

    def _new_device_rows(self, item: DeviceUpsert, ts: int) -> tuple[dict, dict]:
        """The device and credentials rows of `item` as a new device (profile_id still unset)."""
        device_id, credentials_id = new_id(), new_id()
        device = {"id": device_id, "created_time": ts, "name": _device_name(item.name), "profile_id": None,
                  "label": item.label, "additional_info": _info_json(item.additional_info)}
        credentials = {"id": credentials_id, "created_time": ts, "device_id": device_id,
                       **self._credentials_columns(credentials_id,
                                                   item.credentials or AccessToken(generate_secret()))}
        return device, credentials

    def _insert_new_devices(self, prepared: list[PreparedUpsert]) -> None:
        profile_ids: dict[str | None, str] = {}
        for p in prepared:
            if p.item.profile not in profile_ids:
                profile_ids[p.item.profile] = self._upsert_profile(p.item.profile)["id"]
            p.device["profile_id"] = profile_ids[p.item.profile]
        self.store.insert_devices([p.device for p in prepared])
        self.store.insert_credentials_rows([p.credentials for p in prepared])
        self._save_device_data_rows(DeviceDataRows.concatenate([p.data for p in prepared]))

    def _upsert_profile(self, name: str | None) -> dict:
        """The profile of that name, created if missing as ThingsBoard does; None: the default."""
        if not name:
            return self.store.default_profile()
        return self.store.profile(name=name) or self.store.profile(
            id=self._insert_profile(name.strip(), ProvisionType.DISABLED))

    def _upsert(self, item: DeviceUpsert) -> UpsertedDevice:
        """Existing devices keep what is not given (profile, label, credentials); attribute and
        telemetry columns are written to them only with `write_data_of_existing`."""
        profile_row = self._upsert_profile(item.profile) if item.profile else None
        existing = self.store.device(name=(item.name or "").strip())
        if existing is None:
            device_id = self._insert_device(item.name, (profile_row or self.store.default_profile())["id"], item.label,
                                            item.additional_info, item.credentials or AccessToken(generate_secret()))
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
            self.store.update_device(device_id, changes)
            if item.credentials is not None:
                self._replace_credentials(self.store.credentials(device_id), item.credentials)
        if existing is None or item.write_data_of_existing:
            self._save_device_data_rows(item.data_rows(device_id, now_ms()))
        return UpsertedDevice(device_id, created=existing is None)

    def batch(self):
        """One transaction around many calls (bulk import): far fewer commits, and each call
        inside still succeeds or fails on its own (a savepoint)."""
        return self.store.transaction()

    def _credentials_columns(self, credentials_row_id: str, creds: NewCredentials) -> dict:
        for reserved in (APPLICATION_USERNAME_PREFIX, SERVICE_USERNAME_PREFIX):
            if creds.credentials_id.startswith(reserved):
                raise ValidationError(f"Device credentials must not start with {reserved!r}", field="credentials")
        context = f"device_credentials:{credentials_row_id}"
        columns = {
            "credentials_type": creds.credentials_type.value,
            "lookup_digest": self.key.digest(creds.credentials_id),
            "public_credentials_id": None, "sealed_value": None, "client_id_digest": None,
            "user_name_digest": None, "password_digest": None, "certificate": None,
        }
        if isinstance(creds, AccessToken):
            columns["sealed_value"] = self.key.seal(creds.token, context)
        elif isinstance(creds, MqttBasic):
            columns["sealed_value"] = self.key.seal(creds.credentials_value, context)
            if creds.credentials_id_is_public:
                columns["public_credentials_id"] = creds.credentials_id
            for column, part in (("client_id_digest", creds.client_id), ("user_name_digest", creds.user_name),
                                 ("password_digest", creds.password)):
                columns[column] = self.key.digest(part) if part else None
        else:
            columns["public_credentials_id"] = creds.credentials_id
            columns["certificate"] = creds.body
        return columns

    def _device(self, row: dict) -> Device:
        return Device(id=row["id"], created_time=row["created_time"], name=row["name"],
                      profile_id=row["profile_id"], profile_name=row["profile_name"], label=row["label"],
                      additional_info=json.loads(row["additional_info"]),
                      credentials_type=CredentialsType(row["credentials_type"]) if row["credentials_type"] else None)

    def _device_row(self, name_or_id: str, by_id: bool = False) -> dict:
        if by_id:
            row = self.store.device(id=name_or_id)
            if row is None:
                raise NotFoundError(f"Device with id [{name_or_id}] is not found")
            return row
        row = self.store.device(name=name_or_id) or self.store.device(id=name_or_id)
        if row is None:
            raise NotFoundError(f"Device {name_or_id!r} not found")
        return row

    def _device_by_id(self, device_id: str) -> Device:
        # Logins know the id: skip get_device's by-name probe, which would always miss.
        return self._device(self.store.device(id=device_id))

    def get_device(self, name_or_id: str, *, by_id: bool = False) -> Device:
        """`by_id`: `name_or_id` is an id only, never a name (REST paths)."""
        return self._device(self._device_row(name_or_id, by_id))

    def find_device_by_name(self, name: str) -> Device | None:
        """The device of exactly this name (never one whose id it is)."""
        row = self.store.device(name=name)
        return None if row is None else self._device(row)

    def find_device(self, name_or_id: str) -> Device | None:
        try:
            return self.get_device(name_or_id)
        except NotFoundError:
            return None

    def list_devices(self, *, offset: int = 0, limit: int = 100, name_contains: str | None = None,
                     profile_name: str | None = None, order_by: str = "name",
                     descending: bool = False) -> list[Device]:
        """`order_by`: name, created_time, label or profile_name."""
        _check_order(order_by, DEVICE_ORDER)
        return [self._device(row) for row in self.store.devices(
            offset=offset, limit=limit, name_contains=name_contains, profile_name=profile_name, order_by=order_by,
            descending=descending)]

    def count_devices(self, *, name_contains: str | None = None, profile_name: str | None = None) -> int:
        return self.store.count_devices(name_contains=name_contains, profile_name=profile_name)

    def delete_device(self, name_or_id: str, *, by_id: bool = False) -> None:
        with self.store.transaction():
            self.store.delete_device(self._device_row(name_or_id, by_id)["id"])

    def get_credentials(self, device: str, *, by_id: bool = False) -> DeviceCredentials:
        """The device's credentials with secrets revealed (admin view)."""
        row = self.store.credentials(self._device_row(device, by_id)["id"])
        return self._reveal(row)

    def _reveal(self, row: dict) -> DeviceCredentials:
        kind = CredentialsType(row["credentials_type"])
        context = f"device_credentials:{row['id']}"
        if kind is CredentialsType.ACCESS_TOKEN:
            credentials_id, value = self.key.open(row["sealed_value"], context), None
        elif kind is CredentialsType.MQTT_BASIC:
            value = self.key.open(row["sealed_value"], context)
            credentials_id = row["public_credentials_id"] or json.loads(value)["userName"]
        else:
            credentials_id, value = row["public_credentials_id"], row["certificate"]
        return DeviceCredentials(id=row["id"], device_id=row["device_id"], credentials_type=kind,
                                 credentials_id=credentials_id, credentials_value=value)

    def set_credentials(self, device: str, credentials: NewCredentials | None = None) -> DeviceCredentials:
        """Replace the device's credentials (a new generated access token if None)."""
        with self.store.transaction():
            row = self.store.credentials(self._device_row(device)["id"])
            self._replace_credentials(row, credentials or AccessToken(generate_secret()))
            return self._reveal(self.store.credentials(row["device_id"]))

    def update_credentials(self, device_id: str, record_id: str | None,
                           credentials: NewCredentials) -> DeviceCredentials:
        """ThingsBoard's credentials update (REST API): the caller names the credentials record
        it read (`id`); anything but the device's current record is refused as ThingsBoard
        refuses it (SPEC §8). Logins with the old credentials end (the version changes)."""
        with self.store.transaction():
            row = self.store.credentials(self._device_row(device_id, by_id=True)["id"])
            if record_id is None or record_id != row["id"]:
                raise ValidationError("Unable to update non-existent device credentials!", field="credentials")
            self._replace_credentials(row, credentials)
            return self._reveal(self.store.credentials(row["device_id"]))

    def _replace_credentials(self, row: dict, credentials: NewCredentials) -> None:
        try:
            self.store.update_credentials(row["device_id"], self._credentials_columns(row["id"], credentials))
        except IntegrityError as e:
            raise _integrity_error(e) from None

    # --- watching for changes made elsewhere ---------------------------------------------------

    def checkpoint(self) -> None:
        self.store.checkpoint()

    def change_counter(self) -> int:
        """A number that changes when another process commits a change (cheap to poll)."""
        return self.store.data_version()

    def credentials_versions(self, device_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
        """device id -> (credentials id, version) for the devices that still exist; a device
        whose entry changed or vanished must be logged out."""
        return self.store.credentials_versions(list(device_ids))

    def new_trust_anchors(self, known: set[str]) -> dict[str, str]:
        """Certificates the TLS listener must trust for X.509 devices to complete the handshake
        — the X.509-chain profiles' CAs and every registered device certificate — keyed by
        their SHA3 id, leaving out the ids in `known` (the listener keeps what it loaded).
        Values are PEM or Base64 DER text."""
        anchors = {row["provision_device_key"]: row["ca_certificate_pem"]
                   for row in self.store.profiles(provision_type=ProvisionType.X509_CERTIFICATE_CHAIN.value)
                   if row["provision_device_key"] not in known}
        new_ids = [i for i in self.store.x509_certificate_ids() if i not in known]
        for chunk in range(0, len(new_ids), 500):  # SQLite's host-parameter limit
            anchors.update(self.store.x509_certificates(new_ids[chunk:chunk + 500]))
        return anchors

    # --- logins -----------------------------------------------------------------------------

    def _find_credentials(self, credentials_id: str) -> StoredCredentials | None:
        row = self.store.credentials_by_digest(self.key.digest(credentials_id))
        if row is None:
            return None
        return StoredCredentials(device_id=row["device_id"], credentials_type=CredentialsType(row["credentials_type"]),
                                 client_id_digest=row["client_id_digest"], user_name_digest=row["user_name_digest"],
                                 password_digest=row["password_digest"], version=(row["id"], row["version"]))

    def login(self, client_id: str | None, username: str | None = None, password: str | None = None,
              cert_der: bytes | None = None, *, provision: bool = True) -> LoginResult:
        """Who is this MQTT client? ThingsBoard's order (SPEC §2.1): a provisioning session,
        then the client certificate (username and password ignored), then token / MQTT basic.
        An unknown certificate may provision its device (X.509 chain profiles), the only login
        that writes; with `provision=False` it is refused instead. Never raises: an internal
        error is SERVER_UNAVAILABLE."""
        client_id = client_id or ""
        try:
            if is_provision_login(client_id, username):
                return LoginResult(LoginOutcome.PROVISION_SESSION)
            if username and username.startswith(APPLICATION_USERNAME_PREFIX):
                return self._application_login(username, password)
            if username and username.startswith(SERVICE_USERNAME_PREFIX):
                return self._service_login(username, password)
            if cert_der is not None:
                return self._certificate_login(cert_der, provision)
            found = authenticate_basic(client_id, username, password, find=self._find_credentials,
                                       matches=self.key.matches)
            if found is None:
                return LoginResult(refusal_for_unknown_credentials(client_id, username, password))
            return self._accepted(found)
        except Exception:
            log.exception("login lookup failed")
            return LoginResult(LoginOutcome.SERVER_UNAVAILABLE)

    def credentials_generation(self) -> int:
        """Changes whenever any device's credentials change or go away, or a device changes
        (in any process): what caches of logins compare."""
        return self.store.credentials_generation()

    def lookup_digest(self, secret: str) -> bytes:
        """The keyed digest a secret is looked up by; caches key by it, never by the secret."""
        return self.key.digest(secret)

    def token_login(self, token: str) -> Device | None:
        """HTTP and CoAP: the token in the path must be an ACCESS_TOKEN credential (SPEC §1.2)."""
        found = self._find_credentials(token) if token else None
        if found is None or found.credentials_type is not CredentialsType.ACCESS_TOKEN:
            return None
        return self._device_by_id(found.device_id)

    def certificate_device(self, cert_der: bytes) -> Device | None:
        """The X.509 device owning exactly this certificate (DTLS and TLS logins)."""
        found = self._find_certificate(cert_der)
        return None if found is None else self._device_by_id(found.device_id)

    def _find_certificate(self, cert_der: bytes) -> StoredCredentials | None:
        found = self._find_credentials(certificate_thumbprint(cert_der))
        if found is None or found.credentials_type is not CredentialsType.X509_CERTIFICATE:
            return None
        return found

    def _certificate_login(self, cert_der: bytes, provision: bool) -> LoginResult:
        try:
            cert = certificates.parse_certificate(cert_der)
        except certificates.CertificateError:
            return LoginResult(LoginOutcome.NOT_AUTHORIZED)
        if not certificates.is_within_validity(cert):
            return LoginResult(LoginOutcome.NOT_AUTHORIZED)
        found = self._find_certificate(cert_der)
        provisioning = None
        if found is None and provision:
            attempt = self.provision_by_certificate(cert_der)
            provisioning = attempt if attempt.strategy is not None else None  # else no chain profile: no attempt
            if attempt.status is ProvisionStatus.SUCCESS:
                # Provisioning may answer SUCCESS for a device that keeps non-X.509 credentials;
                # only a device now holding this very certificate may log in with it (SPEC §1.4.2).
                found = self._find_certificate(cert_der)
        if found is None:
            return LoginResult(LoginOutcome.NOT_AUTHORIZED, provisioning=provisioning)
        return replace(self._accepted(found), provisioning=provisioning)

    def _accepted(self, found: StoredCredentials) -> LoginResult:
        return LoginResult(LoginOutcome.ACCEPTED, self._device_by_id(found.device_id),
                           credentials_version=found.version, credentials_type=found.credentials_type)

    # --- provisioning -----------------------------------------------------------------------

    def provision(self, request: ProvisionRequest, *, transport: str | None = None,
                  remote_address: str | None = None) -> ProvisionResult:
        """Run a key/secret provisioning request (SPEC §3.4) in one write transaction: the
        decision and its effects commit together or not at all. Raises ProvisionRequestError
        for a key/secret request against an X.509-chain profile, as ThingsBoard does."""
        with self.store.transaction():
            profile_row = (self.store.profile(key=request.provision_device_key)
                           if request.provision_device_key else None)
            profile = self._profile(profile_row) if profile_row else None
            existing = self._existing_device(request.device_name.strip())
            decision = decide_provision(request, profile, existing)
            result = replace(self._apply(decision, profile), strategy=profile.provision_type if profile else None)
            self._record_event(result, profile, request.device_name.strip() or None, transport, remote_address)
        return result

    def provision_by_certificate(self, cert_der: bytes, *, transport: str | None = "MQTT",
                                 remote_address: str | None = None) -> ProvisionResult:
        """X.509 certificate-chain provisioning at a TLS login (SPEC §1.4.2). Only the leaf is
        available, so the chain profile is the one whose CA issued (and signed) the leaf."""
        try:
            leaf = certificates.parse_certificate(cert_der)
        except certificates.CertificateError:
            return ProvisionResult(ProvisionStatus.NOT_FOUND, reason="unparseable certificate")
        with self.store.transaction():
            profile = self._chain_profile_for(leaf)
            if profile is None:
                return ProvisionResult(ProvisionStatus.NOT_FOUND, reason="no chain profile trusts the issuer")
            decision = decide_x509_chain(profile, certificates.common_name(leaf),
                                         X509Certificate(certificates.base64_body(leaf)), self._existing_device)
            result = replace(self._apply(decision, profile), strategy=profile.provision_type)
            self._record_event(result, profile, certificates.common_name(leaf), transport, remote_address)
        return result

    def _chain_profile_for(self, leaf) -> DeviceProfile | None:
        for row in self.store.profiles(provision_type=ProvisionType.X509_CERTIFICATE_CHAIN.value):
            ca = certificates.parse_certificate(certificates.split_pem_certificates(row["ca_certificate_pem"])[0])
            if certificates.is_issued_by(leaf, ca):
                return self._profile(row)
        return None

    def _existing_device(self, name: str) -> ExistingDevice | None:
        row = self.store.device(name=name) if name else None
        if row is None:
            return None
        state = self.store.attributes(row["id"], AttributeScope.SERVER.value, [PROVISION_STATE_KEY])
        return ExistingDevice(id=row["id"], name=row["name"], profile_id=row["profile_id"],
                              credentials_type=CredentialsType(row["credentials_type"]),
                              provision_state=str(state[0]["value"]) if state else None)

    def _apply(self, decision, profile: DeviceProfile | None) -> ProvisionResult:
        if isinstance(decision, NotFound):
            return ProvisionResult(ProvisionStatus.NOT_FOUND, reason=decision.reason)
        if isinstance(decision, Failure):
            return ProvisionResult(ProvisionStatus.FAILURE, device_id=decision.device_id, reason=decision.reason)
        if isinstance(decision, CreateDevice):
            try:
                with self.store.transaction():  # a savepoint: a clash leaves no half-made device
                    device_id = self._insert_device(
                        decision.name or generate_secret(), profile.id, None,
                        {"gateway": True} if decision.gateway else {},
                        decision.credentials or AccessToken(generate_secret()))
                    self._mark_provisioned(device_id)
            except ValidationError as e:
                return ProvisionResult(ProvisionStatus.FAILURE, reason=str(e))
        elif isinstance(decision, MarkProvisioned):
            device_id = decision.device_id
            self._mark_provisioned(device_id)
        else:
            assert isinstance(decision, UseExisting)
            device_id = decision.device_id
            if decision.rotate_to is not None:
                try:
                    with self.store.transaction():
                        self._replace_credentials(self.store.credentials(device_id), decision.rotate_to)
                except ValidationError as e:
                    return ProvisionResult(ProvisionStatus.FAILURE, device_id=device_id, reason=str(e))
        return self._success(device_id)

    def _mark_provisioned(self, device_id: str) -> None:
        self._write_device_data([DeviceData(device_id, scope=AttributeScope.SERVER, attributes=(
            KvEntry(PROVISION_STATE_KEY, ValueKind.STRING, PROVISIONED),))])

    def _success(self, device_id: str) -> ProvisionResult:
        credentials = self._reveal(self.store.credentials(device_id))
        value: str | dict | None = credentials.credentials_value
        if credentials.credentials_type is CredentialsType.ACCESS_TOKEN:
            value = credentials.credentials_id
        elif credentials.credentials_type is CredentialsType.MQTT_BASIC:
            value = json.loads(value)  # an object in provisioning responses (SPEC §3.3)
        return ProvisionResult(ProvisionStatus.SUCCESS, credentials.credentials_type, value, device_id,
                               self.store.device(id=device_id)["name"])

    def _record_event(self, result: ProvisionResult, profile: DeviceProfile | None, device_name: str | None,
                      transport: str | None, remote_address: str | None) -> None:
        self.store.add_provisioning_event({
            "ts": now_ms(), "profile_id": profile.id if profile else None, "device_id": result.device_id,
            "device_name": result.device_name or device_name,
            "strategy": profile.provision_type.value if profile else None, "outcome": result.status.value,
            "reason": result.reason, "transport": transport, "remote_address": remote_address,
        })

    def provisioning_events(self, device: str | None = None) -> list[dict]:
        device_id = self._device_row(device)["id"] if device else None
        return self.store.provisioning_events(device_id=device_id)

    # --- attributes and telemetry -----------------------------------------------------------

    def save_attributes(self, device_id: str, scope: AttributeScope, entries: Iterable[KvEntry]) -> None:
        self.save_device_data([DeviceData(device_id, attributes=tuple(entries), scope=AttributeScope(scope))])

    def delete_attributes(self, device_id: str, scope: AttributeScope, keys: Iterable[str]) -> None:
        self.save_device_data([DeviceData(device_id, deleted=tuple(keys), scope=AttributeScope(scope))])

    def save_device_data(self, items: list[DeviceData]) -> list[Exception | None]:
        """Store many devices' telemetry and attribute changes in one transaction with a few
        statements (the broker's group commit). If that fails (a device deleted meanwhile, say),
        each item is retried on its own so that one bad item fails alone; returns one outcome
        per item: None when stored, else the error."""
        try:
            with self.store.transaction():
                self._write_device_data(items)
            return [None] * len(items)
        except Exception:
            if len(items) == 1:
                raise
        outcomes: list[Exception | None] = []
        with self.store.transaction():
            for item in items:
                try:
                    with self.store.transaction():  # a savepoint
                        self._write_device_data([item])
                except Exception as e:
                    outcomes.append(e)
                else:
                    outcomes.append(None)
        return outcomes

    def _write_device_data(self, items: Iterable[DeviceData]) -> None:
        self._save_device_data_rows(_device_data_rows(items))

    def _save_device_data_rows(self, rows: DeviceDataRows) -> None:
        try:
            self.store.save_telemetry(rows.telemetry, history=self.keep_telemetry_history)
            self.store.save_attributes(rows.attributes)
            self.store.delete_attributes(rows.deleted)
        except IntegrityError:  # the only constraint these rows can break: their device
            raise NotFoundError("Device not found (deleted meanwhile?)") from None

    def record_activity(self, changes: dict[str, Iterable[KvEntry]]) -> None:
        """Store what an ActivityTracker took (server attributes by device id); a device deleted
        meanwhile is skipped."""
        items = [DeviceData(device_id, attributes=tuple(entries), scope=AttributeScope.SERVER)
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
        stale = [device_id for device_id in self.store.stale_active_devices(now - timeout_ms) if device_id not in keep]
        if stale:
            self.record_activity({device_id: (KvEntry(ACTIVE, ValueKind.BOOLEAN, False),)
                                  for device_id in stale})
        return stale

    def get_attributes(self, device_id: str, scope: AttributeScope, keys: Iterable[str] | None = None) -> dict:
        return {row["key"]: _json_value(row) for row in self.store.attributes(device_id, AttributeScope(scope).value, keys)}

    def attribute_data(self, device_id: str, scope: AttributeScope, keys: Iterable[str] | None = None) -> list[dict]:
        """ThingsBoard's AttributeData list (REST API): {"lastUpdateTs", "key", "value"} by key."""
        return [{"lastUpdateTs": row["last_update_ts"], "key": row["key"], "value": _json_value(row)}
                for row in self.store.attributes(device_id, AttributeScope(scope).value, keys)]

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

    def save_telemetry(self, device_id: str, records: Iterable[TelemetryRecord]) -> None:
        """Records without a timestamp get the server time."""
        self.save_device_data([DeviceData(device_id, telemetry=tuple(records))])

    def prune_telemetry(self, *, keep_days: float = TELEMETRY_RETENTION_DAYS) -> int:
        """Delete telemetry history older than `keep_days` (latest values stay), batch by batch
        (gatehouse.retention); returns rows deleted."""
        return retention.prune(self, Prunable.TELEMETRY, retention.cutoff(now_ms(), keep_days))

    def prune_batch(self, kind: Prunable, before_ms: int, limit: int = retention.BATCH_ROWS) -> int:
        """One transaction deleting at most `limit` of the oldest `kind` records before `before_ms`."""
        delete = (self.store.delete_telemetry_before if kind is Prunable.TELEMETRY
                  else self.store.delete_provisioning_events_before)
        with self.store.transaction():
            return delete(before_ms, limit)

    def count_prunable(self, kind: Prunable, before_ms: int) -> int:
        count = (self.store.count_telemetry_before if kind is Prunable.TELEMETRY
                 else self.store.count_provisioning_events_before)
        return count(before_ms)

    def take_lease(self, task: str, holder: str, seconds: float) -> bool:
        """Whether `holder` now holds `task` for `seconds` (taken, renewed, or another's expired)."""
        now = now_ms()
        with self.store.transaction():
            return self.store.take_lease(task, holder, now, now + int(seconds * 1000))

    def release_lease(self, task: str, holder: str) -> None:
        """Give `task` up at once (a clean shutdown), so that the next process need not wait
        for the lease to run out."""
        with self.store.transaction():
            self.store.release_lease(task, holder)

    def latest_telemetry(self, device_id: str) -> dict:
        return {row["key"]: {"ts": row["ts"], "value": _json_value(row)}
                for row in self.store.latest_telemetry(device_id)}

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
        start = _EARLIEST_TS if start_ts is None else start_ts
        history = {}
        for key in keys:  # one index range scan per key, each stopping at the limit
            rows = self.store.telemetry_range(device_id, key, start, end_ts, limit=limit, descending=descending)
            if rows:
                history[key] = [{"ts": row["ts"], "value": _json_value(row)} for row in rows]
        return history

    # --- application accounts -----------------------------------------------------------------

    def create_application(self, name: str) -> tuple[str, str]:
        """A backend application's MQTT account; returns (username, password). The password is
        shown this once and only its digest is kept."""
        name = (name or "").strip()
        if not name or re.search(r"[\x00-\x20\x7f/#+]", name):
            raise ValidationError("Application name must be non-empty, without spaces, control characters, / # +",
                                  field="name")
        username, password = APPLICATION_USERNAME_PREFIX + name, generate_secret()
        try:
            with self.store.transaction():
                self.store.insert_application({"name": name, "created_time": now_ms(), "username": username,
                                               "password_digest": self.key.digest(password)})
        except IntegrityError:
            raise ValidationError(f"Application {name!r} already exists") from None
        return username, password

    def list_applications(self) -> list[str]:
        return [row["name"] for row in self.store.applications()]

    def delete_application(self, name: str) -> None:
        with self.store.transaction():
            if not self.store.delete_application(name):
                raise NotFoundError(f"Application {name!r} not found")

    def _application_login(self, username: str, password: str | None) -> LoginResult:
        row = self.store.application(username=username)
        if row is None or not self.key.matches(password or "", row["password_digest"]):
            return LoginResult(LoginOutcome.BAD_USERNAME_OR_PASSWORD)
        return LoginResult(LoginOutcome.APPLICATION, application=row["name"])

    # --- service accounts ---------------------------------------------------------------------

    def service_credentials(self, account: str) -> tuple[str, str]:
        """(MQTT username, password) of a Gatehouse process's service account, e.g. "sidecar"."""
        return SERVICE_USERNAME_PREFIX + account, self.key.service_password(account)

    def _service_login(self, username: str, password: str | None) -> LoginResult:
        account = username[len(SERVICE_USERNAME_PREFIX):]
        if not account or not hmac.compare_digest((password or "").encode(), self.key.service_password(account).encode()):
            return LoginResult(LoginOutcome.BAD_USERNAME_OR_PASSWORD)
        return LoginResult(LoginOutcome.SERVICE, application=account)

    # --- admin users ------------------------------------------------------------------------

    def add_admin(self, username: str, password: str) -> None:
        if len(password or "") < 8:
            raise ValidationError("Admin password must be at least 8 characters long", field="password")
        try:
            with self.store.transaction():
                self.store.insert_admin_user({"username": username.strip(), "created_time": now_ms(),
                                              "password_hash": _hash_password(password)})
        except IntegrityError as e:
            raise _integrity_error(e) from None

    def has_admins(self) -> bool:
        return self.store.count_admin_users() > 0

    def admin_exists(self, username: str) -> bool:
        return self.store.admin_user(username) is not None

    def verify_admin(self, username: str, password: str) -> bool:
        row = self.store.admin_user(username)
        # Hash even for unknown users so that response time does not reveal which exist.
        return _verify_password(password, row["password_hash"] if row else _dummy_hash()) and row is not None


def _mqtt_transport_columns(transport: MqttTransport | None) -> dict:
    if transport is None:
        return dict.fromkeys(("mqtt_telemetry_topic", "mqtt_attributes_topic", "mqtt_attributes_subscribe_topic",
                              "mqtt_send_ack_on_validation_exception"))
    return {"mqtt_telemetry_topic": transport.telemetry_topic, "mqtt_attributes_topic": transport.attributes_topic,
            "mqtt_attributes_subscribe_topic": transport.attributes_subscribe_topic,
            "mqtt_send_ack_on_validation_exception": int(transport.send_ack_on_validation_exception)}


def _mqtt_transport(row: dict) -> MqttTransport | None:
    if row["mqtt_telemetry_topic"] is None:
        return None
    return MqttTransport(row["mqtt_telemetry_topic"], row["mqtt_attributes_topic"],
                         row["mqtt_attributes_subscribe_topic"], bool(row["mqtt_send_ack_on_validation_exception"]))


def _db_value(entry: KvEntry):
    return int(entry.value) if entry.kind is ValueKind.BOOLEAN else entry.value


def _json_value(row: dict):
    kind, value = ValueKind(row["kind"]), row["value"]
    # Databases from before migration 0004 stored values with NUMERIC affinity (2.0 as the integer 2).
    if kind is ValueKind.BOOLEAN:
        value = bool(value)
    elif kind is ValueKind.DOUBLE:
        value = float(value)
    return entry_to_json_value(KvEntry(key="", kind=kind, value=value))


_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def _hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def _verify_password(password: str, encoded: str) -> bool:
    _, n, r, p, salt, digest = encoded.split("$")
    candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p))
    return hmac.compare_digest(candidate, bytes.fromhex(digest))


@functools.cache
def _dummy_hash() -> str:
    return _hash_password(secrets.token_hex(16))
