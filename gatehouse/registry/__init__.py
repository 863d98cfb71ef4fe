"""The device registry: Gatehouse's library API.

The CLI, the broker plugin, the sidecar and the CoAP bridge are all thin clients of `Registry`.
Decisions come from the I/O-free modules (credentials, provisioning, payloads); the services of
this package load what they need, seal and digest secrets, and apply the answers atomically
through the store (gatehouse.storage), which only they use:

    profiles.py        device profiles, their provisioning and MQTT topic settings
    devices.py         devices and their credentials (credential_rows.py: sealed, digested)
    bulk_upsert.py     many devices created or updated at once (bulk import)
    device_lookup.py   a device by credentials id, access token (HTTP, CoAP) or certificate
    mqtt_login.py      MQTT CONNECT logins in ThingsBoard's order
    provisioning.py    provisioning requests applied, with their audit trail
    device_data.py     attributes, telemetry and activity
    change_watch.py    what other processes' changes look like to a poller
    maintenance.py     retention and its lease
    accounts.py        application and service MQTT accounts
    administrators.py  admin users (scrypt)
    database_copy.py   the whole database copied into another one (gatehouse db copy)

`Registry` builds the services and forwards each public method to the one that implements it
(`Registry.create_device` is `Devices.create`), so callers need one object and a reader finds
the code by file name. Methods are also reachable on the class, as the transports' worker
threads call them: `worker.call(Registry.save_device_data, items)`.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

from ..data_dir import DataDir
from ..errors import NotFoundError
from ..pki import ensure_development_pki
from ..server_key import ServerKey
from ..storage import DatabaseUrl, Store
from .accounts import Accounts
from .administrators import Administrators
from .bulk_upsert import BulkUpsert, DeviceUpsert, PreparedUpsert, UpsertedDevice
from .change_watch import ChangeWatch
from .context import RegistryContext
from .database_copy import CopyResult, DatabaseCopy, DatabaseCopyError
from .device_data import HISTORY_LIMIT, AttributesAndTelemetry, DeviceDataWrite
from .device_lookup import DeviceLookup
from .devices import Devices
from .key_check import check_server_key
from .maintenance import Maintenance
from .mqtt_login import MqttLogin
from .profiles import Profiles
from .provisioning import Provisioning
from .rules import DEFAULT_CN_REGEX, DEFAULT_PROFILE_NAME, KEY_SECRET_STRATEGIES

__all__ = ["DEFAULT_CN_REGEX", "DEFAULT_PROFILE_NAME", "HISTORY_LIMIT", "KEY_SECRET_STRATEGIES", "CopyResult",
           "DatabaseCopyError", "DeviceDataWrite", "DeviceUpsert", "PreparedUpsert", "Registry", "UpsertedDevice"]


class _Forward:
    """`Registry.<name>`: the method `method` of the registry's service attribute `service`."""

    def __init__(self, service: str, method):
        self._service = service
        self._method = method

        @functools.wraps(method)
        def on_registry(registry, *args, **kwargs):  # Registry.<name>(registry, ...), as worker.call does
            return method(getattr(registry, service), *args, **kwargs)
        self._on_registry = on_registry

    def __get__(self, registry, owner=None):
        if registry is None:
            return self._on_registry
        return self._method.__get__(getattr(registry, self._service))


class Registry:
    def __init__(self, database: Path | DatabaseUrl | Store, server_key: ServerKey, *,
                 telemetry_history: bool = True):
        """`database`: a SQLite file, a database URL or a Store; `telemetry_history` off keeps
        the latest telemetry values only (--no-telemetry-history). Raises ServerKeyError if
        `server_key` is not the key of this database's secrets."""
        if isinstance(database, (str, Path)):
            database = DatabaseUrl.sqlite(Path(database))
        self.store = database.open() if isinstance(database, DatabaseUrl) else database
        try:
            check_server_key(self.store, server_key, str(database))
        except BaseException:
            self.store.close()
            raise
        self.key = server_key
        self._context = RegistryContext(self.store, server_key, keep_telemetry_history=telemetry_history)
        context = self._context
        self.profiles = Profiles(context)
        self.devices = Devices(context, self.profiles)
        self.data = AttributesAndTelemetry(context)
        self.bulk = BulkUpsert(context, self.profiles, self.devices, self.data)
        self.lookup = DeviceLookup(context, self.devices)
        self.provisioning = Provisioning(context, self.profiles, self.devices, self.data)
        self.accounts = Accounts(context)
        self.mqtt = MqttLogin(context, self.lookup, self.devices, self.provisioning, self.accounts)
        self.changes = ChangeWatch(context, self.profiles)
        self.maintenance = Maintenance(context)
        self.administrators = Administrators(context)
        self.database_copy = DatabaseCopy(context)

    @classmethod
    def initialise(cls, data_dir: DataDir | Path | str, *, hostnames: Iterable[str] = ()) -> Registry:
        """`gatehouse init`: database, server key and development PKI; creates only what is
        missing, so running it again is harmless."""
        paths = DataDir.of(data_dir)
        paths.create()
        key = ServerKey.load_or_create(paths.server_key)
        registry = cls(DatabaseUrl.parse(paths.database), key)
        ensure_development_pki(paths.pki, hostnames=hostnames)
        return registry

    @classmethod
    def open(cls, data_dir: DataDir | Path | str, *, telemetry_history: bool = True) -> Registry:
        """Open a data dir made by `initialise` (and its database, wherever it lives)."""
        paths = DataDir.of(data_dir)
        if not paths.exists():
            raise NotFoundError(f"no Gatehouse data in {paths.root} (run `gatehouse init`)")
        return cls(DatabaseUrl.parse(paths.database), ServerKey(paths.server_key.read_bytes()),
                   telemetry_history=telemetry_history)

    @property
    def concurrent_device_data(self) -> bool:
        """Device data commits run beside other writes (PostgreSQL) instead of queueing for the
        one write lock (SQLite)."""
        return self.store.concurrent_device_data

    @property
    def keep_telemetry_history(self) -> bool:
        return self._context.keep_telemetry_history

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def never_wait(self) -> None:
        """For a registry used on an event loop: writes never wait for a lock held elsewhere
        (gatehouse.storage.StoreBusy at once) and leave the store's housekeeping (`checkpoint`)
        to a caller that may wait."""
        self.store.never_wait()

    def batch(self, *, exclusive: bool = True):
        """One transaction around many calls: each call inside still succeeds or fails on its
        own (a savepoint). Not `exclusive`: it holds device data only (Store.transaction)."""
        return self.store.transaction(exclusive=exclusive)

    # profiles.py
    create_profile = _Forward("profiles", Profiles.create)
    update_profile = _Forward("profiles", Profiles.update)
    get_profile = _Forward("profiles", Profiles.get)
    list_profiles = _Forward("profiles", Profiles.list)
    count_profiles = _Forward("profiles", Profiles.count)
    default_profile = _Forward("profiles", Profiles.default)
    set_default_profile = _Forward("profiles", Profiles.set_default)
    delete_profile = _Forward("profiles", Profiles.delete)
    profile_topic_settings = _Forward("profiles", Profiles.topic_settings)
    # devices.py
    create_device = _Forward("devices", Devices.create)
    save_device = _Forward("devices", Devices.save)
    get_device = _Forward("devices", Devices.get)
    find_device = _Forward("devices", Devices.find)
    find_device_by_name = _Forward("devices", Devices.find_by_name)
    list_devices = _Forward("devices", Devices.list)
    count_devices = _Forward("devices", Devices.count)
    delete_device = _Forward("devices", Devices.delete)
    get_credentials = _Forward("devices", Devices.credentials)
    set_credentials = _Forward("devices", Devices.set_credentials)
    update_credentials = _Forward("devices", Devices.update_credentials)
    # bulk_upsert.py
    prepare_upserts = _Forward("bulk", BulkUpsert.prepare)
    upsert_devices = _Forward("bulk", BulkUpsert.upsert)
    # device_lookup.py and mqtt_login.py
    lookup_digest = _Forward("lookup", DeviceLookup.lookup_digest)
    token_login = _Forward("lookup", DeviceLookup.token_login)
    certificate_device = _Forward("lookup", DeviceLookup.certificate_device)
    mqtt_login = _Forward("mqtt", MqttLogin.login)
    # provisioning.py
    provision = _Forward("provisioning", Provisioning.provision)
    provision_by_certificate = _Forward("provisioning", Provisioning.provision_by_certificate)
    provisioning_events = _Forward("provisioning", Provisioning.events)
    # device_data.py
    save_device_data = _Forward("data", AttributesAndTelemetry.save_device_data)
    save_attributes = _Forward("data", AttributesAndTelemetry.save_attributes)
    delete_attributes = _Forward("data", AttributesAndTelemetry.delete_attributes)
    save_telemetry = _Forward("data", AttributesAndTelemetry.save_telemetry)
    record_activity = _Forward("data", AttributesAndTelemetry.record_activity)
    device_activity = _Forward("data", AttributesAndTelemetry.device_activity)
    expire_activity = _Forward("data", AttributesAndTelemetry.expire_activity)
    get_attributes = _Forward("data", AttributesAndTelemetry.get_attributes)
    attribute_data = _Forward("data", AttributesAndTelemetry.attribute_data)
    device_attributes = _Forward("data", AttributesAndTelemetry.device_attributes)
    latest_telemetry = _Forward("data", AttributesAndTelemetry.latest_telemetry)
    telemetry_history = _Forward("data", AttributesAndTelemetry.telemetry_history)
    # change_watch.py
    change_counter = _Forward("changes", ChangeWatch.change_counter)
    credentials_generation = _Forward("changes", ChangeWatch.credentials_generation)
    credentials_versions = _Forward("changes", ChangeWatch.credentials_versions)
    new_trust_anchors = _Forward("changes", ChangeWatch.new_trust_anchors)
    # maintenance.py
    checkpoint = _Forward("maintenance", Maintenance.checkpoint)
    prune_telemetry = _Forward("maintenance", Maintenance.prune_telemetry)
    prune_batch = _Forward("maintenance", Maintenance.prune_batch)
    count_prunable = _Forward("maintenance", Maintenance.count_prunable)
    take_lease = _Forward("maintenance", Maintenance.take_lease)
    release_lease = _Forward("maintenance", Maintenance.release_lease)
    # accounts.py
    create_application = _Forward("accounts", Accounts.create_application)
    list_applications = _Forward("accounts", Accounts.list_applications)
    delete_application = _Forward("accounts", Accounts.delete_application)
    service_credentials = _Forward("accounts", Accounts.service_credentials)
    # administrators.py
    add_admin = _Forward("administrators", Administrators.add)
    has_admins = _Forward("administrators", Administrators.any)
    admin_exists = _Forward("administrators", Administrators.exists)
    verify_admin = _Forward("administrators", Administrators.verify)
    # database_copy.py
    copy_database_to = _Forward("database_copy", DatabaseCopy.copy_to)
    database_row_counts = _Forward("database_copy", DatabaseCopy.row_counts)
