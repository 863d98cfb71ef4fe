"""The SQL both stores share: every statement of interfaces.Store that reads the same in SQLite and
PostgreSQL, written once, with `?` placeholders.

A store (gatehouse.storage.sqlite, gatehouse.storage.postgresql) subclasses SqlStore and supplies
the connection: how a statement runs (`_one`, `_all`, `_write`, `_write_many`), how a
transaction starts, how a list of values is matched (`_in`), and the statements its dialect
writes differently (bulk upserts of device data, change notification, housekeeping).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from .interfaces import TABLE_KEYS

# interfaces.PROFILE_SORT_KEYS and DEVICE_SORT_KEYS -> ORDER BY expression.
PROFILE_ORDER = {"name": "name", "created_time": "created_time", "description": "description"}
DEVICE_ORDER = {"name": "d.name", "created_time": "d.created_time", "label": "d.label", "profile_name": "p.name"}
SMALLEST_INTEGER = -(2**63)
# The tables whose `value` column a store may keep in its own way (`_decoded`).
VALUE_TABLES = ("attribute", "telemetry_latest", "telemetry_history")


def contains_pattern(text: str) -> str:
    """A LIKE pattern (ESCAPE '\\') matching `text` anywhere, its own % and _ taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class SqlStore:
    """The shared statements; a subclass provides the primitives below."""

    # What LIMIT takes for "no limit" (SQLite: -1, PostgreSQL: NULL).
    NO_LIMIT: int | None = -1
    # Name filters ignore case, as ThingsBoard's text search does (SQLite's LIKE already does
    # for ASCII; PostgreSQL's needs ILIKE).
    LIKE = "LIKE"

    # --- primitives a store provides -----------------------------------------------------------

    def _one(self, sql: str, params: Iterable = ()) -> dict | None:
        raise NotImplementedError

    def _all(self, sql: str, params: Iterable = ()) -> list[dict]:
        raise NotImplementedError

    def _write(self, sql: str, params: Iterable = ()) -> int:
        """Run a write; the number of rows it changed. IntegrityError names a broken rule."""
        raise NotImplementedError

    def _write_many(self, sql: str, rows: list[tuple]) -> None:
        """One statement for many rows of parameters; IntegrityError names a broken rule."""
        raise NotImplementedError

    def _in(self, column: str, values: list) -> Iterator[tuple[str, list]]:
        """`column` matching any of `values`: (SQL condition, its parameters), as many times as
        the database needs to see them all (SQLite binds at most 999 parameters a statement)."""
        raise NotImplementedError

    def _decoded(self, rows: list[dict]) -> list[dict]:
        """Attribute and telemetry rows as stored -> their `value` as bound (see postgresql)."""
        return rows

    # --- helpers ---------------------------------------------------------------------------------

    def _scalar(self, sql: str, params: Iterable = ()):
        row = self._one(sql, params)
        return next(iter(row.values())) if row else None

    def _insert(self, table: str, row: dict) -> None:
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self._write(f"INSERT INTO {table} ({columns}) VALUES ({marks})", row.values())

    def _insert_many(self, table: str, rows: list[dict]) -> None:
        """Rows with the same columns (they may hold BLOBs)."""
        if rows:
            marks = ", ".join("?" for _ in rows[0])
            self._write_many(f"INSERT INTO {table} ({', '.join(rows[0])}) VALUES ({marks})",
                             [tuple(row.values()) for row in rows])

    def _update(self, table: str, key: str, key_value, changes: dict) -> None:
        assignments = ", ".join(f"{column} = ?" for column in changes)
        self._write(f"UPDATE {table} SET {assignments} WHERE {key} = ?", [*changes.values(), key_value])

    def _limit(self, limit: int) -> int | None:
        return self.NO_LIMIT if limit < 0 else limit

    # --- device profiles ------------------------------------------------------------------

    def insert_profile(self, row: dict) -> None:
        self._insert("device_profile", row)

    def update_profile(self, profile_id: str, changes: dict) -> None:
        self._update("device_profile", "id", profile_id, changes)

    def delete_profile(self, profile_id: str) -> None:
        self._write("DELETE FROM device_profile WHERE id = ?", [profile_id])

    def profile(self, *, id: str | None = None, name: str | None = None, key: str | None = None) -> dict | None:
        column, value = next((c, v) for c, v in (("id", id), ("name", name), ("provision_device_key", key))
                             if v is not None)
        return self._one(f"SELECT * FROM device_profile WHERE {column} = ?", [value])

    def profile_topic_settings(self) -> list[dict]:
        return self._all("SELECT id, mqtt_telemetry_topic, mqtt_attributes_topic, mqtt_attributes_subscribe_topic, "
                         "mqtt_send_ack_on_validation_exception FROM device_profile")

    def default_profile(self) -> dict | None:
        return self._one("SELECT * FROM device_profile WHERE is_default = 1")

    def clear_default_profile(self) -> None:
        self._write("UPDATE device_profile SET is_default = 0 WHERE is_default = 1")

    def profiles(self, *, provision_type: str | None = None, name_contains: str | None = None, offset: int = 0,
                 limit: int = -1, order_by: str = "name", descending: bool = False) -> list[dict]:
        """Profiles ordered by a PROFILE_ORDER key (then id, for stable pages); limit -1: all."""
        where, params = self._profile_filter(provision_type, name_contains)
        direction = "DESC" if descending else "ASC"
        return self._all(f"SELECT * FROM device_profile{where} ORDER BY {PROFILE_ORDER[order_by]} {direction}, "
                         f"id {direction} LIMIT ? OFFSET ?", [*params, self._limit(limit), offset])

    def count_profiles(self, *, name_contains: str | None = None) -> int:
        where, params = self._profile_filter(None, name_contains)
        return self._scalar(f"SELECT count(*) FROM device_profile{where}", params)

    @classmethod
    def _profile_filter(cls, provision_type: str | None, name_contains: str | None) -> tuple[str, list]:
        clauses, params = [], []
        if provision_type is not None:
            clauses.append("provision_type = ?")
            params.append(provision_type)
        if name_contains:
            clauses.append(f"name {cls.LIKE} ? ESCAPE '\\'")
            params.append(contains_pattern(name_contains))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def count_devices_in_profile(self, profile_id: str) -> int:
        return self._scalar("SELECT count(*) FROM device WHERE profile_id = ?", [profile_id])

    # --- devices --------------------------------------------------------------------------

    _DEVICE = ("SELECT d.*, p.name AS profile_name, c.credentials_type FROM device d "
               "JOIN device_profile p ON p.id = d.profile_id "
               "LEFT JOIN device_credentials c ON c.device_id = d.id")

    def insert_device(self, row: dict) -> None:
        self._insert("device", row)

    def insert_devices(self, rows: list[dict]) -> None:
        self._insert_many("device", rows)

    def device_names_present(self, names: list[str]) -> set[str]:
        present = set()
        for condition, params in self._in("name", names):
            present.update(row["name"] for row in self._all(f"SELECT name FROM device WHERE {condition}", params))
        return present

    def update_device(self, device_id: str, changes: dict) -> None:
        self._update("device", "id", device_id, changes)

    def delete_device(self, device_id: str) -> None:
        self._write("DELETE FROM device WHERE id = ?", [device_id])

    def device(self, *, id: str | None = None, name: str | None = None) -> dict | None:
        if id is not None:
            return self._one(f"{self._DEVICE} WHERE d.id = ?", [id])
        return self._one(f"{self._DEVICE} WHERE d.name = ?", [name])

    def devices(self, *, offset: int = 0, limit: int = 100, name_contains: str | None = None,
                profile_name: str | None = None, order_by: str = "name", descending: bool = False) -> list[dict]:
        """Devices ordered by a DEVICE_ORDER key (then id, for stable pages)."""
        where, params = self._device_filter(name_contains, profile_name)
        direction = "DESC" if descending else "ASC"
        return self._all(f"{self._DEVICE}{where} ORDER BY {DEVICE_ORDER[order_by]} {direction}, d.id {direction} "
                         "LIMIT ? OFFSET ?", [*params, self._limit(limit), offset])

    def count_devices(self, *, name_contains: str | None = None, profile_name: str | None = None) -> int:
        where, params = self._device_filter(name_contains, profile_name)
        return self._scalar(f"SELECT count(*) FROM device d JOIN device_profile p ON p.id = d.profile_id{where}",
                            params)

    @classmethod
    def _device_filter(cls, name_contains: str | None, profile_name: str | None) -> tuple[str, list]:
        clauses, params = [], []
        if name_contains:
            clauses.append(f"d.name {cls.LIKE} ? ESCAPE '\\'")
            params.append(contains_pattern(name_contains))
        if profile_name is not None:
            clauses.append("p.name = ?")
            params.append(profile_name)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    # --- credentials ----------------------------------------------------------------------

    def insert_credentials(self, row: dict) -> None:
        self._insert("device_credentials", row)

    def insert_credentials_rows(self, rows: list[dict]) -> None:
        self._insert_many("device_credentials", rows)

    def update_credentials(self, device_id: str, changes: dict) -> None:
        self._update("device_credentials", "device_id", device_id,
                     {**changes, "version": self.credentials(device_id)["version"] + 1})

    def credentials(self, device_id: str) -> dict | None:
        return self._one("SELECT * FROM device_credentials WHERE device_id = ?", [device_id])

    def credentials_versions(self, device_ids: list[str]) -> dict[str, tuple[str, int]]:
        found = {}
        for condition, params in self._in("device_id", device_ids):
            found.update((row["device_id"], (row["id"], row["version"])) for row in self._all(
                f"SELECT device_id, id, version FROM device_credentials WHERE {condition}", params))
        return found

    def x509_certificate_ids(self) -> list[str]:
        return [row["public_credentials_id"] for row in self._all(
            "SELECT public_credentials_id FROM device_credentials WHERE credentials_type = 'X509_CERTIFICATE'")]

    def x509_certificates(self, ids: list[str]) -> dict[str, str]:
        found = {}
        for condition, params in self._in("public_credentials_id", ids):
            found.update((row["public_credentials_id"], row["certificate"]) for row in self._all(
                f"SELECT public_credentials_id, certificate FROM device_credentials WHERE {condition}", params))
        return found

    def credentials_generation(self) -> int:
        return self._scalar("SELECT value FROM credentials_generation")

    _LOGIN_COLUMNS = ("id, version, device_id, credentials_type, client_id_digest, user_name_digest, "
                      "password_digest, lookup_digest")

    def credentials_by_digest(self, lookup_digest: bytes) -> dict | None:
        """The login lookup: one indexed probe."""
        return self._one(f"SELECT {self._LOGIN_COLUMNS} FROM device_credentials WHERE lookup_digest = ?",
                         [lookup_digest])

    def credentials_by_digests(self, lookup_digests: list[bytes]) -> dict[bytes, dict]:
        """Several login lookups in one statement: lookup digest -> row, for those found."""
        found = {}
        for condition, params in self._in("lookup_digest", lookup_digests):
            found.update((bytes(row["lookup_digest"]), row) for row in self._all(
                f"SELECT {self._LOGIN_COLUMNS} FROM device_credentials WHERE {condition}", params))
        return found

    # --- attributes and telemetry ---------------------------------------------------------

    def attributes(self, device_id: str, scope: str, keys: Iterable[str] | None = None) -> list[dict]:
        select = "SELECT key, kind, value, last_update_ts FROM attribute WHERE device_id = ? AND scope = ?"
        if keys is None:
            return self._decoded(self._all(f"{select} ORDER BY key", [device_id, scope]))
        rows = []
        for condition, params in self._in("key", list(keys)):
            rows += self._all(f"{select} AND {condition}", [device_id, scope, *params])
        return self._decoded(sorted(rows, key=lambda row: row["key"]))

    def delete_attributes(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """Rows of (device_id, scope, key)."""
        self._write_many("DELETE FROM attribute WHERE device_id = ? AND scope = ? AND key = ?", list(rows))

    def latest_telemetry(self, device_id: str) -> list[dict]:
        return self._decoded(self._all("SELECT key, ts, kind, value FROM telemetry_latest WHERE device_id = ? "
                                       "ORDER BY key", [device_id]))

    def telemetry_history(self, device_id: str, key: str) -> list[dict]:
        return self._decoded(self._all("SELECT ts, kind, value FROM telemetry_history WHERE device_id = ? AND key = ? "
                                       "ORDER BY ts", [device_id, key]))

    def telemetry_range(self, device_id: str, key: str, start_ts: int | None, end_ts: int | None, *, limit: int,
                        descending: bool) -> list[dict]:
        """At most `limit` points of one key with start_ts <= ts < end_ts (None: unbounded),
        newest first if `descending`: a range scan of the primary key (device_id, key, ts) that
        stops at the limit, whatever the history holds."""
        end = "" if end_ts is None else " AND ts < ?"
        order = "DESC" if descending else "ASC"
        start = SMALLEST_INTEGER if start_ts is None else start_ts
        return self._decoded(self._all(
            f"SELECT ts, kind, value FROM telemetry_history WHERE device_id = ? AND key = ? "
            f"AND ts >= ?{end} ORDER BY ts {order} LIMIT ?",
            [device_id, key, start, *([] if end_ts is None else [end_ts]), limit]))

    # --- retention and leases ---------------------------------------------------------------------

    def delete_telemetry_before(self, ts: int, limit: int = -1) -> int:
        """At most `limit` (-1: all) history points older than `ts`, oldest first (the ts index)."""
        return self._write("DELETE FROM telemetry_history WHERE (device_id, key, ts) IN (SELECT device_id, key, ts "
                           "FROM telemetry_history WHERE ts < ? ORDER BY ts LIMIT ?)", [ts, self._limit(limit)])

    def count_telemetry_before(self, ts: int) -> int:
        return self._scalar("SELECT count(*) FROM telemetry_history WHERE ts < ?", [ts])

    def delete_provisioning_events_before(self, ts: int, limit: int = -1) -> int:
        return self._write("DELETE FROM provisioning_event WHERE id IN (SELECT id FROM provisioning_event "
                           "WHERE ts < ? ORDER BY ts LIMIT ?)", [ts, self._limit(limit)])

    def count_provisioning_events_before(self, ts: int) -> int:
        return self._scalar("SELECT count(*) FROM provisioning_event WHERE ts < ?", [ts])

    def take_lease(self, task: str, holder: str, now: int, expires: int) -> bool:
        """Take or renew `task` for `holder` until `expires`, unless another holder's lease runs."""
        return self._write("INSERT INTO maintenance_lease (task, holder, expires_ms) VALUES (?, ?, ?) "
                           "ON CONFLICT (task) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms "
                           "WHERE maintenance_lease.holder = excluded.holder OR maintenance_lease.expires_ms <= ?",
                           [task, holder, expires, now]) == 1

    def release_lease(self, task: str, holder: str) -> None:
        self._write("DELETE FROM maintenance_lease WHERE task = ? AND holder = ?", [task, holder])

    # --- provisioning events, accounts, administrators, the server key's check -------------------

    def add_provisioning_event(self, row: dict) -> None:
        self._insert("provisioning_event", row)

    def provisioning_events(self, *, device_id: str | None = None) -> list[dict]:
        if device_id is None:
            return self._all("SELECT * FROM provisioning_event ORDER BY id")
        return self._all("SELECT * FROM provisioning_event WHERE device_id = ? ORDER BY id", [device_id])

    def insert_application(self, row: dict) -> None:
        self._insert("application_account", row)

    def application(self, *, username: str) -> dict | None:
        return self._one("SELECT * FROM application_account WHERE username = ?", [username])

    def applications(self) -> list[dict]:
        return self._all("SELECT name, created_time, username FROM application_account ORDER BY name")

    def delete_application(self, name: str) -> bool:
        return self._write("DELETE FROM application_account WHERE name = ?", [name]) > 0

    def insert_admin_user(self, row: dict) -> None:
        self._insert("admin_user", row)

    def count_admin_users(self) -> int:
        return self._scalar("SELECT count(*) FROM admin_user")

    def admin_user(self, username: str) -> dict | None:
        return self._one("SELECT * FROM admin_user WHERE username = ?", [username])

    def server_key_check(self) -> bytes | None:
        value = self._scalar("SELECT sealed_check FROM server_key_check")
        return bytes(value) if value is not None else None

    def set_server_key_check(self, sealed: bytes) -> None:
        self._write("INSERT INTO server_key_check (id, sealed_check) VALUES (1, ?) ON CONFLICT (id) DO NOTHING",
                    [sealed])

    # --- copying a whole database (gatehouse.registry.database_copy) -----------------------------

    def count_rows(self, table: str) -> int:
        if table not in TABLE_KEYS:  # a table of schema.sql, never a caller's text
            raise KeyError(table)
        return self._scalar(f"SELECT count(*) FROM {table}")

    def table_rows(self, table: str, after: tuple | None, limit: int) -> list[dict]:
        """Keyset pages (`(key) > (after)` on the primary key's index): stable and as fast on the
        last page as on the first, whatever the table holds."""
        key = ", ".join(TABLE_KEYS[table])
        where, params = "", []
        if after is not None:
            where, params = f" WHERE ({key}) > ({', '.join('?' for _ in after)})", list(after)
        rows = self._all(f"SELECT * FROM {table}{where} ORDER BY {key} LIMIT ?", [*params, limit])
        return self._decoded(rows) if table in VALUE_TABLES else rows

    def insert_copied_rows(self, table: str, rows: list[dict]) -> None:
        if rows:
            columns = list(rows[0])
            self._write_many(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
                             f"ON CONFLICT ({', '.join(TABLE_KEYS[table])}) DO NOTHING",
                             [tuple(row[column] for column in columns) for row in rows])
