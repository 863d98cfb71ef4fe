"""The Store on PostgreSQL (gatehouse.storage.interfaces): the shared database of Gatehouse
processes on several machines, through psycopg 3 and its connection pool.

- Connections: one pool per store, shared by the process's threads. A transaction holds one
  connection for its thread until it ends; a read outside a transaction borrows one for the
  statement (autocommit), and is tried once more on a fresh connection if the borrowed one died
  with a restarted server.
- Writes keep SQLite's rule (interfaces.Store): `transaction()` first takes one advisory lock,
  the same for every Gatehouse process on the database, so that "does this name exist? then
  create it" cannot be overtaken (exactly one SUCCESS for concurrent provisioning requests for
  one name, from any number of nodes). Device data (`exclusive=False`) does not queue behind it:
  its rows only reference devices, which PostgreSQL's row locks and foreign keys protect.
- Change notification: triggers NOTIFY gatehouse_changes when devices, credentials, profiles or
  accounts change (schema_postgresql.sql); `data_version` counts what a listening connection
  has heard, so a change made anywhere reaches every poller at its next poll.
- A server that cannot be reached raises StoreUnavailable; the pool reconnects by itself.
"""
from __future__ import annotations

import functools
import re
import select
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from ..data_dir import redacted_url
from ..errors import StoreUnavailable
from .interfaces import TABLE_KEYS, IntegrityError, StoreBusy
from .postgresql_migrations import applied_migrations, apply_migrations
from .sql import VALUE_TABLES, SqlStore

# How long a call waits for a connection (the server down, or every connection in use) before
# StoreUnavailable; the transports then answer "server unavailable" and devices retry.
CONNECT_TIMEOUT_SECONDS = 5.0
# After a call found the server out of reach, how long further calls fail at once (_unavailable).
UNAVAILABLE_SECONDS = 1.0
# How long a writer waits for the write lock before StoreBusy, as SQLite's busy timeout.
LOCK_TIMEOUT_SECONDS = 10.0
# Connections per process: the broker's database thread and readers, the sidecar's request
# threads and writer; PostgreSQL's default max_connections (100) holds several nodes' pools.
POOL_SIZE = 12
# The advisory lock every exclusive transaction takes (any number: the same in every process).
WRITE_LOCK = 0x6761746568  # "gateh"
NOTIFY_CHANNEL = "gatehouse_changes"
_VALUE_KINDS_AS_INT = ("BOOLEAN", "LONG")
_KEY_COLUMNS = re.compile(r"Key \((?P<columns>[^)]*)\)=")


@functools.lru_cache(maxsize=512)
def _dialect(sql: str) -> str:
    # sql.SqlStore writes `?` placeholders; no statement holds a literal ? or %.
    return sql.replace("?", "%s")


def _constraint_of(error: psycopg.errors.IntegrityError) -> str:
    """PostgreSQL's violation -> SQLite's "table.column" (interfaces.IntegrityError)."""
    diag = error.diag
    table = diag.table_name or ""
    match = _KEY_COLUMNS.search(diag.message_detail or "")
    if match:  # unique, primary and foreign keys say their columns
        return ", ".join(f"{table}.{column.strip()}" for column in match.group("columns").split(","))
    if diag.column_name:  # NOT NULL
        return f"{table}.{diag.column_name}"
    return f"{table}.{diag.constraint_name}"


def _encoded(value) -> bytes | None:
    """An attribute or telemetry value as bound (int, float, str) -> the BYTEA column's text."""
    if value is None:
        return None
    if isinstance(value, float):
        return repr(value).encode()
    return str(value).encode()


def _decoded_value(kind: str, value: bytes | None):
    if value is None:
        return None
    text = bytes(value).decode()
    if kind in _VALUE_KINDS_AS_INT:
        return int(text)
    if kind == "DOUBLE":
        return float(text)
    return text


# The column types of save_attributes' and save_telemetry's rows, as PostgresStore._upsert_rows
# sends them (one array per column).
_ATTRIBUTE_TYPES = ("text", "text", "text", "text", "bytea", "bigint")  # device_id, scope, key, kind, value, ts
_TELEMETRY_TYPES = ("text", "text", "bigint", "text", "bytea")  # device_id, key, ts, kind, value


def _last_of_each(rows: list[tuple], key_length: int) -> list[tuple]:
    """Of the rows with the same first `key_length` values, the last, in the order of the first."""
    return list({row[:key_length]: row for row in rows}.values())


def _still_connected(conn: psycopg.Connection) -> None:
    """The pool's check before it lends a connection: one the server closed while it sat in the
    pool (a restarted server says so, and its socket turns readable) is replaced instead of
    failing its first caller. A poll of the socket, where psycopg's own check (a query) would cost
    a round trip per call: a third of a login's time."""
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if readable:  # nothing else is ever sent to an idle connection
        # Closed here, or the pool would take it back as a good one (its status still says
        # idle) and lend it again: a pool whose server restarted would never recover.
        conn.close()
        raise psycopg.OperationalError("the server closed the connection")


class PostgresStore(SqlStore):
    """The Store on a PostgreSQL database, shared by every Gatehouse process of a deployment."""

    local = False  # every statement crosses a network
    concurrent_device_data = True
    NO_LIMIT = None
    LIKE = "ILIKE"

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE):
        self.url = url
        self._local = threading.local()
        self._waits_for_lock = True
        self._unavailable_until = 0.0  # see _unavailable
        self._listener: psycopg.Connection | None = None
        self._heard = 0  # notifications heard, and reconnections of the listener
        self._listener_lock = threading.Lock()
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, timeout=CONNECT_TIMEOUT_SECONDS, open=False, name="gatehouse",
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": int(CONNECT_TIMEOUT_SECONDS),
                    "options": f"-c lock_timeout={int(LOCK_TIMEOUT_SECONDS * 1000)}"},
            check=_still_connected,
            # A reconnection gives up (and the next call starts a new one at once) after this
            # long, rather than backing off for up to psycopg_pool's 5 minutes: a pool that lost
            # its server is back within a second or two of the server's return.
            reconnect_timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
        except PoolTimeout:
            self._pool.close()
            raise StoreUnavailable(f"cannot reach the PostgreSQL database {redacted_url(url)}") from None
        with self._connection() as conn:
            apply_migrations(conn)

    def close(self) -> None:
        with self._listener_lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        self._pool.close()

    # --- connections and transactions ------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """The thread's transaction connection, else one from the pool for this statement."""
        current = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        if time.monotonic() < self._unavailable_until:
            raise StoreUnavailable(f"the PostgreSQL database {redacted_url(self.url)} cannot be reached")
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise self._unavailable("cannot be reached") from None

    def _unavailable(self, what: str) -> StoreUnavailable:
        """The error to raise for a server out of reach. For UNAVAILABLE_SECONDS after it, calls
        fail at once instead of each waiting CONNECT_TIMEOUT_SECONDS for a connection: during an
        outage a reconnect storm is refused as fast as it arrives, and the first call after the
        pause finds out whether the server is back."""
        self._unavailable_until = time.monotonic() + UNAVAILABLE_SECONDS
        return StoreUnavailable(f"the PostgreSQL database {redacted_url(self.url)} {what}")

    @contextmanager
    def transaction(self, *, exclusive: bool = True) -> Iterator[None]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:  # nested: psycopg makes it a savepoint
            with self._errors(), conn.transaction():
                yield
            return
        with self._connection() as conn:
            self._local.conn = conn
            try:
                with self._errors(), conn.transaction():
                    if exclusive:
                        self._take_write_lock(conn)
                    yield
            finally:
                self._local.conn = None

    def _take_write_lock(self, conn: psycopg.Connection) -> None:
        if self._waits_for_lock:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [WRITE_LOCK])
        elif not conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS taken", [WRITE_LOCK]).fetchone()["taken"]:
            raise StoreBusy("the write lock is held by another Gatehouse process")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """psycopg's errors of the connection itself -> the store's."""
        try:
            yield
        except pg_errors.LockNotAvailable as e:
            raise StoreBusy(str(e)) from None
        except psycopg.OperationalError as e:
            raise self._unavailable(f"is unavailable: {e}") from None

    def never_wait(self) -> None:
        self._waits_for_lock = False

    def checkpoint(self) -> None:
        """PostgreSQL checkpoints by itself."""

    def schema_version(self) -> list[str]:
        with self._connection() as conn:
            return applied_migrations(conn)

    # --- the primitives of sql.SqlStore ----------------------------------------------------------

    def _execute(self, sql: str, params: Iterable, result):
        """`result(cursor)` of the statement, read before the connection goes back to the pool."""
        attempts = 1 if getattr(self._local, "conn", None) is not None else 2
        for attempt in range(attempts):
            try:
                with self._connection() as conn:
                    return result(conn.execute(_dialect(sql), tuple(params)))
            except psycopg.errors.IntegrityError as e:
                raise IntegrityError(_constraint_of(e)) from None
            except pg_errors.LockNotAvailable as e:
                raise StoreBusy(str(e)) from None
            except psycopg.OperationalError as e:
                # Outside a transaction a statement is tried once more: the connection may have
                # died with a restarted server since the pool checked it.
                if attempt + 1 == attempts:
                    raise self._unavailable(f"is unavailable: {e}") from None
        raise AssertionError("unreachable")

    def _one(self, sql: str, params: Iterable = ()) -> dict | None:
        return self._execute(sql, params, psycopg.Cursor.fetchone)

    def _all(self, sql: str, params: Iterable = ()) -> list[dict]:
        return self._execute(sql, params, psycopg.Cursor.fetchall)

    def _write(self, sql: str, params: Iterable = ()) -> int:
        return self._execute(sql, params, lambda cursor: cursor.rowcount)

    def _write_many(self, sql: str, rows: list[tuple]) -> None:
        if rows:
            with self._many_rows() as conn:
                conn.cursor().executemany(_dialect(sql), rows)

    @contextmanager
    def _many_rows(self) -> Iterator[psycopg.Connection]:
        """The connection for a statement of many rows: the thread's transaction, else one of its
        own (device data's, not exclusive: one commit, not one per row); a broken rule raised
        as IntegrityError("table.column")."""
        try:
            if getattr(self._local, "conn", None) is not None:
                yield self._local.conn
            else:
                with self.transaction(exclusive=False):
                    yield self._local.conn
        except psycopg.errors.IntegrityError as e:
            raise IntegrityError(_constraint_of(e)) from None

    def _in(self, column: str, values: list) -> Iterator[tuple[str, list]]:
        if values:
            yield f"{column} = ANY(?)", [list(values)]

    def _decoded(self, rows: list[dict]) -> list[dict]:
        for row in rows:
            row["value"] = _decoded_value(row["kind"], row["value"])
        return rows

    # --- change watching --------------------------------------------------------------------------

    def data_version(self) -> int:
        """What this store's listening connection has heard on gatehouse_changes; a listener
        that had to reconnect counts as a change (it may have missed some)."""
        with self._listener_lock:
            try:
                if self._listener is None or self._listener.closed:
                    self._listener = psycopg.connect(self.url, autocommit=True,
                                                     connect_timeout=int(CONNECT_TIMEOUT_SECONDS))
                    self._listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._heard += 1
                for _ in self._listener.notifies(timeout=0):
                    self._heard += 1
            except psycopg.OperationalError as e:
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None
                raise self._unavailable(f"is unavailable: {e}") from None
            return self._heard

    # --- bulk import: many new devices at once ----------------------------------------------------

    def insert_devices(self, rows: list[dict]) -> None:
        """By COPY (_copy_rows)."""
        self._copy_rows("device", rows)

    def insert_credentials_rows(self, rows: list[dict]) -> None:
        """By COPY (_copy_rows)."""
        self._copy_rows("device_credentials", rows)

    def _copy_rows(self, table: str, rows: list[dict]) -> None:
        """New rows with the same columns, in one COPY FROM STDIN (text format) inside the
        caller's transaction. Measured on batches of 2,000 new devices and their credentials
        (fsync on, 2 cores): about 2.7x the rate of executemany (a statement per row, pipelined)
        and 1.8x that of one INSERT ... SELECT FROM unnest(arrays); binary COPY was about 20 %
        slower than text. COPY has no ON CONFLICT, which these inserts never need: a row breaking
        a rule fails the whole COPY with PostgreSQL's usual error, raised here as
        IntegrityError("table.column"), and the bulk upsert then redoes its batch one item at a
        time."""
        if not rows:
            return
        columns = list(rows[0])
        with self._many_rows() as conn, conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[column] for column in columns])

    # --- device data: many devices' rows at once --------------------------------------------------

    def save_attributes(self, rows: Iterable[tuple[str, str, str, str, object, int]]) -> None:
        """Rows of (device_id, scope, key, kind, value, ts). Sorted by their key (a stable sort:
        a later row for the same key still wins), so that two nodes' group commits lock rows in
        the same order and never deadlock. One statement for them all (_upsert_rows)."""
        rows = sorted(((d, s, k, kind, _encoded(v), ts) for d, s, k, kind, v, ts in rows), key=lambda r: r[:3])
        self._upsert_rows(
            "INSERT INTO attribute (device_id, scope, key, kind, value, last_update_ts)", _ATTRIBUTE_TYPES,
            "ON CONFLICT (device_id, scope, key) DO UPDATE SET kind = excluded.kind, value = excluded.value, "
            "last_update_ts = excluded.last_update_ts", _last_of_each(rows, 3))

    def save_telemetry(self, rows: Iterable[tuple[str, str, int, str, object]], *, history: bool = True) -> None:
        """Rows of (device_id, key, ts, kind, value), sorted as in save_attributes."""
        rows = sorted(((d, k, ts, kind, _encoded(v)) for d, k, ts, kind, v in rows), key=lambda r: r[:2])
        if history:  # a later row for the same point wins
            self._upsert_rows(
                "INSERT INTO telemetry_history (device_id, key, ts, kind, value)", _TELEMETRY_TYPES,
                "ON CONFLICT (device_id, key, ts) DO UPDATE SET kind = excluded.kind, value = excluded.value",
                _last_of_each(rows, 3))
        # A late point (older ts) must not overwrite a newer latest value: of each key's rows, the
        # newest (the last of them at equal ts) is the one that may.
        newest: dict[tuple, tuple] = {}
        for row in rows:
            if (kept := newest.get(row[:2])) is None or row[2] >= kept[2]:
                newest[row[:2]] = row
        self._upsert_rows(
            "INSERT INTO telemetry_latest (device_id, key, ts, kind, value)", _TELEMETRY_TYPES,
            "ON CONFLICT (device_id, key) DO UPDATE SET ts = excluded.ts, kind = excluded.kind, "
            "value = excluded.value WHERE excluded.ts >= telemetry_latest.ts", list(newest.values()))

    def _upsert_rows(self, insert: str, types: tuple[str, ...], conflict: str, rows: list[tuple]) -> None:
        """`insert` of many rows in one statement, each column sent as one array and read back
        with unnest, in the arrays' order (the callers' lock order). Measured (fsync on, 2 cores):
        half the time of executemany's statement per row from 100 rows a batch on (1,000
        attribute upserts: 13 ms against 28 ms a commit), no slower for a single row. One
        statement may not update a row twice (ON CONFLICT DO UPDATE refuses to), so the callers
        pass each key once."""
        if not rows:
            return
        arrays = ", ".join(f"?::{kind}[]" for kind in types)
        self._write(f"{insert} SELECT * FROM unnest({arrays}) {conflict}", [list(column) for column in zip(*rows)])

    def stale_active_devices(self, cutoff_ms: int) -> list[str]:
        """As SQLite's, with the values read back from their text."""
        return [row["device_id"] for row in self._all(
            "SELECT active.device_id FROM attribute AS active JOIN attribute AS activity "
            "ON activity.device_id = active.device_id AND activity.scope = 'SERVER_SCOPE' "
            "AND activity.key = 'lastActivityTime' AND activity.kind = 'LONG' "
            "WHERE active.scope = 'SERVER_SCOPE' AND active.key = 'active' AND active.kind = 'BOOLEAN' "
            "AND active.value = '1'::bytea AND convert_from(activity.value, 'UTF8')::bigint < ?", [cutoff_ms])]

    # --- copying a whole database (gatehouse.registry.database_copy) -------------------------------

    def insert_copied_rows(self, table: str, rows: list[dict]) -> None:
        """COPY into a temporary table shaped like `table`, then one INSERT ... SELECT that skips
        the rows already there (COPY itself has no ON CONFLICT): 10,000 devices with their
        telemetry (480,000 rows) copied from SQLite in 7 s (fsync off; 8.5 s on), against 20 s
        with executemany's statement per row (pipelined); a copy run again skips them in 4 s
        instead of 13. Values as bound are stored as their text (_encoded), as save_attributes
        stores them. After provisioning events with their own ids, the identity column's
        sequence moves past them, so that the next event recorded here gets a new id."""
        if not rows:
            return
        if table in VALUE_TABLES:
            rows = [{**row, "value": _encoded(row["value"])} for row in rows]
        columns = list(rows[0])
        names, staging = ", ".join(columns), f"copied_{table}"
        with self._many_rows() as conn:
            conn.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} (LIKE {table}) ON COMMIT DELETE ROWS")
            with conn.cursor().copy(f"COPY {staging} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row([row[column] for column in columns])
            conn.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {staging} "
                         f"ON CONFLICT ({', '.join(TABLE_KEYS[table])}) DO NOTHING")
            conn.execute(f"TRUNCATE {staging}")
            if table == "provisioning_event":
                conn.execute("SELECT setval(pg_get_serial_sequence('provisioning_event', 'id'), max(id)) "
                             "FROM provisioning_event")
