"""The Store on SQLite (gatehouse.storage.interfaces): the only module that speaks SQL.

One database file is shared by several processes (broker, sidecar, CoAP bridge, CLI), so the
connection uses WAL, a busy timeout and foreign keys, and every write goes through
`transaction()`, which takes the write lock up front (BEGIN IMMEDIATE): a read-then-write such as
"does this device exist? then create it" cannot be overtaken by another process in between.

It is one module of about 450 lines on purpose: it is all of Gatehouse's SQL for SQLite, one
short method per statement in the order of interfaces.Store, and splitting it by table would
spread the connection rules above over several files.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import sqlite_utils

from .interfaces import IntegrityError, StoreBusy
from .sqlite_migrations import MIGRATIONS

BUSY_TIMEOUT_SECONDS = 10.0
# How often a writer that waits tries for the write lock again. SQLite's own busy handler sleeps
# up to 100 ms between tries, so a writer behind a bulk import (which leaves a few ms between its
# batches: bulk_import._LockSharing) almost never got in: broker telemetry fell to 6 % of its
# rate, PUBACKs took up to 1.7 s, while an import ran.
LOCK_POLL_SECONDS = 0.002
# interfaces.PROFILE_SORT_KEYS and DEVICE_SORT_KEYS -> ORDER BY expression.
PROFILE_ORDER = {"name": "name", "created_time": "created_time", "description": "description"}
DEVICE_ORDER = {"name": "d.name", "created_time": "d.created_time", "label": "d.label", "profile_name": "p.name"}
# Bound parameters per statement: SQLite before 3.32 allows at most 999.
_MAX_PARAMETERS = 900
_SMALLEST_INTEGER = -(2**63)


def _constraint_of(error: sqlite3.IntegrityError) -> str:
    # "UNIQUE constraint failed: device.name" -> "device.name"
    message = str(error)
    return message.split(": ", 1)[1] if ": " in message else message


def _contains_pattern(text: str) -> str:
    """A LIKE pattern (ESCAPE '\\') matching `text` anywhere, its own % and _ taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class SqliteStore:
    """The Store on one SQLite file (WAL), shared by every process of one machine."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes in WAL mode
        conn.execute("PRAGMA foreign_keys = ON")
        self.conn = conn
        self._waits_for_lock = True
        self.db = sqlite_utils.Database(conn)
        with self.transaction():  # serialises processes racing to create a new database
            MIGRATIONS.apply(self.db)

    def close(self) -> None:
        self.conn.close()

    def never_wait(self) -> None:
        """For a connection used on an event loop: a write lock held elsewhere raises
        StoreBusy at once instead of waiting, and its commits never run a checkpoint (an
        fsync); other connections checkpoint (`checkpoint`)."""
        self._waits_for_lock = False
        self.conn.execute("PRAGMA busy_timeout = 0")
        self.conn.execute("PRAGMA wal_autocheckpoint = 0")

    def checkpoint(self) -> None:
        """Copy what the write-ahead log holds into the database, without waiting for readers."""
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def schema_version(self) -> list[str]:
        return [m.name for m in MIGRATIONS.applied(self.db)]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self.conn.in_transaction:
            # Nested: a savepoint. One fixed name (SQLite resolves it to the innermost) lets the
            # statement be cached; bulk import opens one per row.
            self.conn.execute("SAVEPOINT nested")
            try:
                yield
            except BaseException:
                self.conn.execute("ROLLBACK TO nested")
                self.conn.execute("RELEASE nested")
                raise
            self.conn.execute("RELEASE nested")
            return
        self._begin_immediate()
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _begin_immediate(self) -> None:
        """Take the write lock, trying every LOCK_POLL_SECONDS for up to the busy timeout (at
        once only, for a connection that never waits); StoreBusy if it stays taken."""
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        if self._waits_for_lock:
            self.conn.execute("PRAGMA busy_timeout = 0")  # the polling below instead of SQLite's back-off
        try:
            while True:
                try:
                    self.conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as e:
                    if e.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                        raise
                    if not self._waits_for_lock or time.monotonic() >= deadline:
                        raise StoreBusy(str(e)) from None
                time.sleep(LOCK_POLL_SECONDS)
        finally:
            if self._waits_for_lock:  # other statements keep SQLite's own wait
                self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")

    def _write(self, sql: str, params: Iterable = ()) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, tuple(params))
        except sqlite3.IntegrityError as e:
            raise IntegrityError(_constraint_of(e)) from None

    def _insert(self, table: str, row: dict) -> None:
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self._write(f"INSERT INTO {table} ({columns}) VALUES ({marks})", row.values())

    def _insert_many(self, table: str, rows: list[dict]) -> None:
        """Rows with the same columns, in one executemany (they may hold BLOBs, which the JSON
        of _insert_rows cannot carry)."""
        if not rows:
            return
        columns = ", ".join(rows[0])
        marks = ", ".join("?" for _ in rows[0])
        try:
            self.conn.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})",
                                  [tuple(row.values()) for row in rows])
        except sqlite3.IntegrityError as e:
            raise IntegrityError(_constraint_of(e)) from None

    def _update(self, table: str, key: str, key_value, changes: dict) -> None:
        assignments = ", ".join(f"{column} = ?" for column in changes)
        self._write(f"UPDATE {table} SET {assignments} WHERE {key} = ?", [*changes.values(), key_value])

    def _one(self, sql: str, params: Iterable = ()) -> dict | None:
        row = self.conn.execute(sql, tuple(params)).fetchone()
        return dict(row) if row is not None else None

    def _all(self, sql: str, params: Iterable = ()) -> list[dict]:
        return [dict(row) for row in self.conn.execute(sql, tuple(params))]

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
                         f"id {direction} LIMIT ? OFFSET ?", [*params, limit, offset])

    def count_profiles(self, *, name_contains: str | None = None) -> int:
        where, params = self._profile_filter(None, name_contains)
        return self.conn.execute(f"SELECT count(*) FROM device_profile{where}", params).fetchone()[0]

    @staticmethod
    def _profile_filter(provision_type: str | None, name_contains: str | None) -> tuple[str, list]:
        clauses, params = [], []
        if provision_type is not None:
            clauses.append("provision_type = ?")
            params.append(provision_type)
        if name_contains:
            clauses.append("name LIKE ? ESCAPE '\\'")
            params.append(_contains_pattern(name_contains))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def count_devices_in_profile(self, profile_id: str) -> int:
        return self.conn.execute("SELECT count(*) FROM device WHERE profile_id = ?", [profile_id]).fetchone()[0]

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
        for start in range(0, len(names), _MAX_PARAMETERS):
            chunk = names[start:start + _MAX_PARAMETERS]
            marks = ", ".join("?" for _ in chunk)
            present.update(row[0] for row in self.conn.execute(f"SELECT name FROM device WHERE name IN ({marks})",
                                                               chunk))
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
                         "LIMIT ? OFFSET ?", [*params, limit, offset])

    def count_devices(self, *, name_contains: str | None = None, profile_name: str | None = None) -> int:
        where, params = self._device_filter(name_contains, profile_name)
        return self.conn.execute(f"SELECT count(*) FROM device d JOIN device_profile p ON p.id = d.profile_id{where}",
                                 params).fetchone()[0]

    @staticmethod
    def _device_filter(name_contains: str | None, profile_name: str | None) -> tuple[str, list]:
        clauses, params = [], []
        if name_contains:
            clauses.append("d.name LIKE ? ESCAPE '\\'")
            params.append(_contains_pattern(name_contains))
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
        marks = ", ".join("?" for _ in device_ids)
        rows = self.conn.execute(f"SELECT device_id, id, version FROM device_credentials WHERE device_id IN ({marks})",
                                 device_ids) if device_ids else []
        return {row["device_id"]: (row["id"], row["version"]) for row in rows}

    def x509_certificate_ids(self) -> list[str]:
        return [row[0] for row in self.conn.execute(
            "SELECT public_credentials_id FROM device_credentials WHERE credentials_type = 'X509_CERTIFICATE'")]

    def x509_certificates(self, ids: list[str]) -> dict[str, str]:
        found = {}
        for start in range(0, len(ids), _MAX_PARAMETERS):
            chunk = ids[start:start + _MAX_PARAMETERS]
            marks = ", ".join("?" for _ in chunk)
            found.update(self.conn.execute(f"SELECT public_credentials_id, certificate FROM device_credentials "
                                           f"WHERE public_credentials_id IN ({marks})", chunk).fetchall())
        return found

    def credentials_generation(self) -> int:
        return self.conn.execute("SELECT value FROM credentials_generation").fetchone()[0]

    def data_version(self) -> int:
        """Changes whenever another connection (another process) commits."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def credentials_by_digest(self, lookup_digest: bytes) -> dict | None:
        """The login lookup: one indexed probe."""
        return self._one(
            "SELECT id, version, device_id, credentials_type, client_id_digest, user_name_digest, password_digest "
            "FROM device_credentials WHERE lookup_digest = ?", [lookup_digest])

    # --- attributes and telemetry ---------------------------------------------------------

    def _insert_rows(self, insert: str, columns: int, conflict: str, rows: list[tuple]) -> None:
        """INSERT many rows with one statement: the rows travel as one JSON array read back with
        json_each. executemany runs a statement per row, and Python's sqlite3 gives up the
        interpreter lock around each one; on the broker's database thread every handover then
        waits for the busy event loop (bench: QoS 1 telemetry from 20 devices went from about
        1,100 to 2,700 acknowledged messages/s). Text with a NUL character does not survive
        SQLite's JSON functions, so such rare batches take the executemany path."""
        if not rows:
            return
        text = orjson.dumps(rows).decode()
        try:
            # orjson writes NUL as \u0000 (an escaped backslash before "u0000" matches too: a
            # harmless detour through executemany).
            if "\\u0000" in text:
                marks = ", ".join("?" for _ in range(columns))
                self.conn.executemany(f"{insert} VALUES ({marks}) {conflict}", rows)
                return
            fields = ", ".join(f"value->>{i}" for i in range(columns))
            self.conn.execute(f"{insert} SELECT {fields} FROM json_each(?) WHERE true {conflict}", [text])
        except sqlite3.IntegrityError as e:
            raise IntegrityError(_constraint_of(e)) from None

    def save_attributes(self, rows: Iterable[tuple[str, str, str, str, object, int]]) -> None:
        """Rows of (device_id, scope, key, kind, value, ts), any number of devices at once."""
        self._insert_rows(
            "INSERT INTO attribute (device_id, scope, key, kind, value, last_update_ts)", 6,
            "ON CONFLICT (device_id, scope, key) DO UPDATE SET kind = excluded.kind, value = excluded.value, "
            "last_update_ts = excluded.last_update_ts", list(rows))

    def attributes(self, device_id: str, scope: str, keys: Iterable[str] | None = None) -> list[dict]:
        if keys is None:
            return self._all("SELECT key, kind, value, last_update_ts FROM attribute "
                             "WHERE device_id = ? AND scope = ? ORDER BY key", [device_id, scope])
        keys = list(keys)
        marks = ", ".join("?" for _ in keys)
        return self._all(f"SELECT key, kind, value, last_update_ts FROM attribute WHERE device_id = ? "
                         f"AND scope = ? AND key IN ({marks}) ORDER BY key", [device_id, scope, *keys])

    def stale_active_devices(self, cutoff_ms: int) -> list[str]:
        """Devices whose server attribute `active` is true and `lastActivityTime` is before
        `cutoff_ms` (gatehouse.device_activity)."""
        return [row[0] for row in self.conn.execute(
            "SELECT active.device_id FROM attribute AS active JOIN attribute AS activity "
            "ON activity.device_id = active.device_id AND activity.scope = 'SERVER_SCOPE' "
            "AND activity.key = 'lastActivityTime' "
            "WHERE active.scope = 'SERVER_SCOPE' AND active.key = 'active' AND active.kind = 'BOOLEAN' AND active.value = 1 "
            "AND activity.value < ?", (cutoff_ms,))]

    def delete_attributes(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """Rows of (device_id, scope, key)."""
        self.conn.executemany("DELETE FROM attribute WHERE device_id = ? AND scope = ? AND key = ?", rows)

    def save_telemetry(self, rows: Iterable[tuple[str, str, int, str, object]], *, history: bool = True) -> None:
        """Rows of (device_id, key, ts, kind, value), any number of devices at once: two
        statements for a whole group commit (one without `history`: latest values only)."""
        rows = list(rows)
        if history:
            self._insert_rows(
                "INSERT INTO telemetry_history (device_id, key, ts, kind, value)", 5,
                "ON CONFLICT (device_id, key, ts) DO UPDATE SET kind = excluded.kind, value = excluded.value", rows)
        # A late point (older ts) must not overwrite a newer latest value.
        self._insert_rows(
            "INSERT INTO telemetry_latest (device_id, key, ts, kind, value)", 5,
            "ON CONFLICT (device_id, key) DO UPDATE SET ts = excluded.ts, kind = excluded.kind, "
            "value = excluded.value WHERE excluded.ts >= telemetry_latest.ts", rows)

    def latest_telemetry(self, device_id: str) -> list[dict]:
        return self._all("SELECT key, ts, kind, value FROM telemetry_latest WHERE device_id = ? ORDER BY key",
                         [device_id])

    def telemetry_history(self, device_id: str, key: str) -> list[dict]:
        return self._all("SELECT ts, kind, value FROM telemetry_history WHERE device_id = ? AND key = ? ORDER BY ts",
                         [device_id, key])

    def telemetry_range(self, device_id: str, key: str, start_ts: int | None, end_ts: int | None, *, limit: int,
                        descending: bool) -> list[dict]:
        """At most `limit` points of one key with start_ts <= ts < end_ts (None: unbounded),
        newest first if `descending`: a range scan of the primary key (device_id, key, ts) that
        stops at the limit, whatever the history holds."""
        end = "" if end_ts is None else " AND ts < ?"
        order = "DESC" if descending else "ASC"
        start = _SMALLEST_INTEGER if start_ts is None else start_ts
        return self._all(f"SELECT ts, kind, value FROM telemetry_history WHERE device_id = ? AND key = ? "
                         f"AND ts >= ?{end} ORDER BY ts {order} LIMIT ?",
                         [device_id, key, start, *([] if end_ts is None else [end_ts]), limit])

    def delete_telemetry_before(self, ts: int, limit: int = -1) -> int:
        """At most `limit` (-1: all) history points older than `ts`, oldest first (the ts index)."""
        return self._write("DELETE FROM telemetry_history WHERE (device_id, key, ts) IN (SELECT device_id, key, ts "
                           "FROM telemetry_history WHERE ts < ? ORDER BY ts LIMIT ?)", [ts, limit]).rowcount

    def count_telemetry_before(self, ts: int) -> int:
        return self.conn.execute("SELECT count(*) FROM telemetry_history WHERE ts < ?", (ts,)).fetchone()[0]

    def delete_provisioning_events_before(self, ts: int, limit: int = -1) -> int:
        return self._write("DELETE FROM provisioning_event WHERE id IN (SELECT id FROM provisioning_event "
                           "WHERE ts < ? ORDER BY ts LIMIT ?)", [ts, limit]).rowcount

    def count_provisioning_events_before(self, ts: int) -> int:
        return self.conn.execute("SELECT count(*) FROM provisioning_event WHERE ts < ?", (ts,)).fetchone()[0]

    def take_lease(self, task: str, holder: str, now: int, expires: int) -> bool:
        """Take or renew `task` for `holder` until `expires`, unless another holder's lease runs."""
        return self._write("INSERT INTO maintenance_lease (task, holder, expires_ms) VALUES (?, ?, ?) "
                           "ON CONFLICT (task) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms "
                           "WHERE maintenance_lease.holder = excluded.holder OR maintenance_lease.expires_ms <= ?",
                           [task, holder, expires, now]).rowcount == 1

    def release_lease(self, task: str, holder: str) -> None:
        self._write("DELETE FROM maintenance_lease WHERE task = ? AND holder = ?", [task, holder])

    # --- provisioning events and admin users ----------------------------------------------

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
        return self._write("DELETE FROM application_account WHERE name = ?", [name]).rowcount > 0

    def insert_admin_user(self, row: dict) -> None:
        self._insert("admin_user", row)

    def count_admin_users(self) -> int:
        return self.conn.execute("SELECT count(*) FROM admin_user").fetchone()[0]

    def admin_user(self, username: str) -> dict | None:
        return self._one("SELECT * FROM admin_user WHERE username = ?", [username])
