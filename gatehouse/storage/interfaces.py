"""The storage seam: what the registry needs from a database, and nothing else.

The registry (gatehouse.registry) is the store's only user; transports never touch it. A store
keeps the tables of schema.sql and hands rows in and out as dicts keyed by their column names
(secrets arrive sealed or digested: a store never sees a plain secret). SQLite
(gatehouse.storage.sqlite) is the embedded default, PostgreSQL (gatehouse.storage.postgresql) the
shared store of several machines; the statements they share are in gatehouse.storage.sql.

Rules every implementation keeps:
- `transaction()` is a write transaction that takes the write lock up front, so a
  read-then-write ("does this name exist? then create it") cannot be overtaken by another
  process; nested, it is a savepoint that rolls back alone. `transaction(exclusive=False)` is
  for writes that only add device data to existing devices (group commits): a store whose
  writers need not queue behind one lock (PostgreSQL) lets them run beside each other.
- A broken uniqueness or reference rule raises IntegrityError naming the rule as
  "table.column" of schema.sql (e.g. "device.name"), whatever the database's own wording.
- A write lock held elsewhere for longer than the store waits raises StoreBusy; after
  `never_wait()` (a connection on an event loop) it is raised at once.
- A database that cannot be reached raises StoreUnavailable (the transports answer "server
  unavailable"); nothing of the failed call was stored.
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Protocol

from ..errors import StoreBusy, StoreUnavailable

__all__ = ["DEVICE_SORT_KEYS", "PROFILE_SORT_KEYS", "TABLE_KEYS", "IntegrityError", "Store", "StoreBusy",
           "StoreUnavailable"]

# What lists may be sorted by (ThingsBoard's sortProperty values the admin API accepts).
PROFILE_SORT_KEYS = ("name", "created_time", "description")
DEVICE_SORT_KEYS = ("name", "created_time", "label", "profile_name")
# Every table of schema.sql with its primary key, each after the tables it references: what a copy
# of a whole database moves, in this order (table_rows, insert_copied_rows; `gatehouse db copy`).
TABLE_KEYS = {
    "device_profile": ("id",),
    "device": ("id",),
    "device_credentials": ("id",),
    "attribute": ("device_id", "scope", "key"),
    "telemetry_latest": ("device_id", "key"),
    "telemetry_history": ("device_id", "key", "ts"),
    "provisioning_event": ("id",),
    "admin_user": ("username",),
    "application_account": ("name",),
    "maintenance_lease": ("task",),
    "credentials_generation": ("id",),
    "server_key_check": ("id",),
}


class IntegrityError(Exception):
    """A uniqueness or reference rule of the schema was violated; `constraint` names it."""

    def __init__(self, constraint: str):
        super().__init__(constraint)
        self.constraint = constraint


class Store(Protocol):
    # True when a point read is answered from this machine in microseconds (SQLite), so that an
    # event loop may run it itself; False when it crosses a network (PostgreSQL): the broker then
    # keeps every call off its event loop.
    local: bool
    # True when device data commits (transaction(exclusive=False)) run beside other writers
    # (PostgreSQL), False when every write queues for one lock (SQLite).
    concurrent_device_data: bool

    # --- the connection ------------------------------------------------------------------
    def close(self) -> None: ...
    def transaction(self, *, exclusive: bool = True) -> AbstractContextManager[None]: ...
    def never_wait(self) -> None:
        """For a connection used on an event loop: never block it waiting for the write lock
        (StoreBusy at once) nor for housekeeping such as checkpoints."""
    def checkpoint(self) -> None:
        """Housekeeping the never-waiting connection leaves to others (SQLite: the WAL)."""
    def data_version(self) -> int:
        """A number that changes whenever another process commits a change to devices, their
        credentials, profiles or accounts (cheap to poll; SQLite: any commit)."""
    def schema_version(self) -> list[str]:
        """The names of the applied migrations, oldest first."""

    # --- device profiles -----------------------------------------------------------------
    def insert_profile(self, row: dict) -> None: ...
    def update_profile(self, profile_id: str, changes: dict) -> None: ...
    def delete_profile(self, profile_id: str) -> None: ...
    def profile(self, *, id: str | None = None, name: str | None = None, key: str | None = None) -> dict | None:
        """The profile with this id, name or provision device key (exactly one given)."""
    def profile_topic_settings(self) -> list[dict]:
        """Every profile's id and mqtt_* columns."""
    def default_profile(self) -> dict | None: ...
    def clear_default_profile(self) -> None: ...
    def profiles(self, *, provision_type: str | None = None, name_contains: str | None = None, offset: int = 0,
                 limit: int = -1, order_by: str = "name", descending: bool = False) -> list[dict]:
        """Ordered by a PROFILE_SORT_KEYS key, then id (stable pages); limit -1: all."""
    def count_profiles(self, *, name_contains: str | None = None) -> int: ...
    def count_devices_in_profile(self, profile_id: str) -> int: ...

    # --- devices ---------------------------------------------------------------------------
    def insert_device(self, row: dict) -> None: ...
    def insert_devices(self, rows: list[dict]) -> None:
        """Many rows with the same columns, as few statements as the database allows."""
    def device_names_present(self, names: list[str]) -> set[str]: ...
    def update_device(self, device_id: str, changes: dict) -> None: ...
    def delete_device(self, device_id: str) -> None:
        """With its credentials, attributes and telemetry."""
    def device(self, *, id: str | None = None, name: str | None = None) -> dict | None:
        """A device row with `profile_name` and `credentials_type` joined in."""
    def devices(self, *, offset: int = 0, limit: int = 100, name_contains: str | None = None,
                profile_name: str | None = None, order_by: str = "name", descending: bool = False) -> list[dict]:
        """Rows as `device` gives them, ordered by a DEVICE_SORT_KEYS key, then id."""
    def count_devices(self, *, name_contains: str | None = None, profile_name: str | None = None) -> int: ...

    # --- credentials -------------------------------------------------------------------
    def insert_credentials(self, row: dict) -> None: ...
    def insert_credentials_rows(self, rows: list[dict]) -> None: ...
    def update_credentials(self, device_id: str, changes: dict) -> None:
        """Also moves the row's `version` on, which logs its sessions out."""
    def credentials(self, device_id: str) -> dict | None: ...
    def credentials_by_digest(self, lookup_digest: bytes) -> dict | None:
        """The login lookup: one indexed probe by lookup_digest."""
    def credentials_by_digests(self, lookup_digests: list[bytes]) -> dict[bytes, dict]:
        """Several login lookups in one statement: lookup digest -> row, for those found."""
    def credentials_versions(self, device_ids: list[str]) -> dict[str, tuple[str, int]]:
        """device id -> (credentials row id, version), for those that exist."""
    def credentials_generation(self) -> int:
        """Moves on whenever any credentials or device row changes or goes, in any process."""
    def x509_certificate_ids(self) -> list[str]: ...
    def x509_certificates(self, ids: list[str]) -> dict[str, str]:
        """public credentials id -> certificate, for any number of ids."""

    # --- attributes and telemetry ---------------------------------------------------------
    def save_attributes(self, rows: Iterable[tuple[str, str, str, str, object, int]]) -> None:
        """Rows of (device_id, scope, key, kind, value, ts), any number of devices at once."""
    def delete_attributes(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """Rows of (device_id, scope, key)."""
    def attributes(self, device_id: str, scope: str, keys: Iterable[str] | None = None) -> list[dict]: ...
    def stale_active_devices(self, cutoff_ms: int) -> list[str]:
        """Devices marked active whose last activity is before `cutoff_ms`."""
    def save_telemetry(self, rows: Iterable[tuple[str, str, int, str, object]], *, history: bool = True) -> None:
        """Rows of (device_id, key, ts, kind, value): the latest value per key, and with
        `history` every point."""
    def latest_telemetry(self, device_id: str) -> list[dict]: ...
    def telemetry_history(self, device_id: str, key: str) -> list[dict]: ...
    def telemetry_range(self, device_id: str, key: str, start_ts: int | None, end_ts: int | None, *, limit: int,
                        descending: bool) -> list[dict]:
        """At most `limit` points of one key with start_ts <= ts < end_ts (None: unbounded)."""

    # --- retention and leases ----------------------------------------------------------------
    def delete_telemetry_before(self, ts: int, limit: int = -1) -> int:
        """At most `limit` (-1: all) of the oldest history points before `ts`; how many went."""
    def count_telemetry_before(self, ts: int) -> int: ...
    def delete_provisioning_events_before(self, ts: int, limit: int = -1) -> int: ...
    def count_provisioning_events_before(self, ts: int) -> int: ...
    def take_lease(self, task: str, holder: str, now: int, expires: int) -> bool:
        """Take or renew `task` for `holder` until `expires`, unless another holder's lease runs."""
    def release_lease(self, task: str, holder: str) -> None: ...

    # --- provisioning audit, accounts, administrators ----------------------------------------
    def add_provisioning_event(self, row: dict) -> None: ...
    def provisioning_events(self, *, device_id: str | None = None) -> list[dict]: ...
    def insert_application(self, row: dict) -> None: ...
    def application(self, *, username: str) -> dict | None: ...
    def applications(self) -> list[dict]: ...
    def delete_application(self, name: str) -> bool: ...
    def insert_admin_user(self, row: dict) -> None: ...
    def count_admin_users(self) -> int: ...
    def admin_user(self, username: str) -> dict | None: ...

    # --- the server key's check value --------------------------------------------------------
    def server_key_check(self) -> bytes | None:
        """What the deployment's server key sealed when the database was first opened."""
    def set_server_key_check(self, sealed: bytes) -> None:
        """Record it, unless a value is there already (the first process wins)."""

    # --- copying a whole database into another store (gatehouse.registry.database_copy) ---------
    def count_rows(self, table: str) -> int:
        """The rows of a TABLE_KEYS table."""
    def table_rows(self, table: str, after: tuple | None, limit: int) -> list[dict]:
        """At most `limit` rows of a TABLE_KEYS table in its primary key's order, from the first
        one whose key comes after `after` (None: from the start), every column as a dict:
        attribute and telemetry values as bound (save_attributes), so that any store's
        insert_copied_rows takes the rows unchanged."""
    def insert_copied_rows(self, table: str, rows: list[dict]) -> None:
        """Rows of `table` as table_rows gives them (from this store or another), keeping every
        column, ids included; a row whose primary key is already there is skipped (a copy run
        again), any other broken rule raises IntegrityError. Ids the database generates itself
        (provisioning_event) continue after the copied ones."""
