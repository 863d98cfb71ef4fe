"""The Store on SQLite (gatehouse.storage.interfaces): the connection, and the SQL SQLite writes its
own way; the statements both stores share are in gatehouse.storage.sql.

One database file is shared by several processes (broker, sidecar, CoAP bridge, CLI), so the
connection uses WAL, a busy timeout and foreign keys, and every write goes through
`transaction()`, which takes the write lock up front (BEGIN IMMEDIATE): a read-then-write such as
"does this device exist? then create it" cannot be overtaken by another process in between.
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
from .sql import SqlStore
from .sqlite_migrations import MIGRATIONS

BUSY_TIMEOUT_SECONDS = 10.0
# How often a writer that waits tries for the write lock again. SQLite's own busy handler sleeps
# up to 100 ms between tries, so a writer behind a bulk import (which leaves a few ms between its
# batches: bulk_import._LockSharing) almost never got in: broker telemetry fell to 6 % of its
# rate, PUBACKs took up to 1.7 s, while an import ran.
LOCK_POLL_SECONDS = 0.002
# Bound parameters per statement: SQLite before 3.32 allows at most 999.
_MAX_PARAMETERS = 900


def _constraint_of(error: sqlite3.IntegrityError) -> str:
    # "UNIQUE constraint failed: device.name" -> "device.name"
    message = str(error)
    return message.split(": ", 1)[1] if ": " in message else message


class SqliteStore(SqlStore):
    """The Store on one SQLite file (WAL), shared by every process of one machine."""

    # A point read is a few microseconds from a local file: fit for an event loop's own use.
    local = True
    concurrent_device_data = False

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
    def transaction(self, *, exclusive: bool = True) -> Iterator[None]:
        """SQLite has one writer at a time: every transaction takes the write lock, whether
        `exclusive` or not."""
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

    # --- the primitives of sql.SqlStore ----------------------------------------------------------

    def _write(self, sql: str, params: Iterable = ()) -> int:
        try:
            return self.conn.execute(sql, tuple(params)).rowcount
        except sqlite3.IntegrityError as e:
            raise IntegrityError(_constraint_of(e)) from None

    def _write_many(self, sql: str, rows: list[tuple]) -> None:
        try:
            self.conn.executemany(sql, rows)
        except sqlite3.IntegrityError as e:
            raise IntegrityError(_constraint_of(e)) from None

    def _one(self, sql: str, params: Iterable = ()) -> dict | None:
        row = self.conn.execute(sql, tuple(params)).fetchone()
        return dict(row) if row is not None else None

    def _all(self, sql: str, params: Iterable = ()) -> list[dict]:
        return [dict(row) for row in self.conn.execute(sql, tuple(params))]

    def _in(self, column: str, values: list) -> Iterator[tuple[str, list]]:
        for start in range(0, len(values), _MAX_PARAMETERS):
            chunk = values[start:start + _MAX_PARAMETERS]
            yield f"{column} IN ({', '.join('?' for _ in chunk)})", chunk

    # --- change watching --------------------------------------------------------------------------

    def data_version(self) -> int:
        """Changes whenever another connection (another process) commits."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

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

    def stale_active_devices(self, cutoff_ms: int) -> list[str]:
        """Devices whose server attribute `active` is true and `lastActivityTime` is before
        `cutoff_ms` (gatehouse.device_activity)."""
        return [row[0] for row in self.conn.execute(
            "SELECT active.device_id FROM attribute AS active JOIN attribute AS activity "
            "ON activity.device_id = active.device_id AND activity.scope = 'SERVER_SCOPE' "
            "AND activity.key = 'lastActivityTime' "
            "WHERE active.scope = 'SERVER_SCOPE' AND active.key = 'active' AND active.kind = 'BOOLEAN' AND active.value = 1 "
            "AND activity.value < ?", (cutoff_ms,))]

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
