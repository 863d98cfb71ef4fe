"""schema.sql (SQLite) and schema_postgresql.sql say the same thing: read back from live databases,
both have the same tables, columns in the same order, nullability, primary keys, unique keys and
foreign keys (with their ON DELETE rule), so that rows move between the stores unchanged."""
import sqlite3

import psycopg

from gatehouse.storage import SqliteStore
from gatehouse.storage.postgresql import PostgresStore

# Tables only one store has, for its own bookkeeping.
SQLITE_ONLY = {"_sqlite_migrations"}
POSTGRESQL_ONLY = {"gatehouse_migrations"}


def sqlite_shape(path) -> dict:
    conn = sqlite3.connect(path)
    tables = sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                    if row[0] not in SQLITE_ONLY)
    shape = {}
    for table in tables:
        columns = conn.execute(f"PRAGMA table_info({table})").fetchall()  # cid, name, type, notnull, dflt, pk
        uniques = set()
        for index in conn.execute(f"PRAGMA index_list({table})").fetchall():  # seq, name, unique, origin, partial
            if index[2] and index[3] == "u" and not index[4]:
                uniques.add(tuple(row[2] for row in conn.execute(f"PRAGMA index_info({index[1]})")))
        foreign = {(row[3], row[2], row[4], row[6]) for row in conn.execute(f"PRAGMA foreign_key_list({table})")}
        shape[table] = {
            "columns": [c[1] for c in columns],
            # SQLite lets a non-INTEGER primary key hold NULL unless NOT NULL is said; PostgreSQL
            # never does: a primary key column counts as NOT NULL in both.
            "not_null": {c[1] for c in columns if c[3] or c[5]},
            "primary_key": tuple(c[1] for c in sorted(columns, key=lambda c: c[5]) if c[5]),
            "unique": uniques,
            "foreign_keys": foreign,
        }
    conn.close()
    return shape


def postgresql_shape(url) -> dict:
    with psycopg.connect(url) as conn:
        tables = sorted(row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
            if row[0] not in POSTGRESQL_ONLY)
        shape = {}
        for table in tables:
            columns = conn.execute("SELECT column_name, is_nullable FROM information_schema.columns "
                                   "WHERE table_name = %s ORDER BY ordinal_position", [table]).fetchall()
            keys = conn.execute(
                "SELECT c.contype, array_agg(a.attname ORDER BY k.ord), c.confdeltype, "
                "(SELECT relname FROM pg_class WHERE oid = c.confrelid), "
                "(SELECT array_agg(attname) FROM pg_attribute WHERE attrelid = c.confrelid AND attnum = ANY(c.confkey)) "
                "FROM pg_constraint c CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord) "
                "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
                "WHERE c.conrelid = %s::regclass AND c.contype IN ('p', 'u', 'f') "
                "GROUP BY c.oid, c.contype, c.confdeltype, c.confrelid, c.confkey", [table]).fetchall()
            on_delete = {"a": "NO ACTION", "c": "CASCADE", "n": "SET NULL", "r": "RESTRICT"}
            shape[table] = {
                "columns": [c[0] for c in columns],
                "not_null": {c[0] for c in columns if c[1] == "NO"},
                "primary_key": next(tuple(k[1]) for k in keys if k[0] == "p"),
                "unique": {tuple(k[1]) for k in keys if k[0] == "u"},
                "foreign_keys": {(k[1][0], k[3], k[4][0], on_delete[k[2]]) for k in keys if k[0] == "f"},
            }
    return shape


def test_both_schemas_have_the_same_tables_columns_and_keys(tmp_path, postgres_url):
    SqliteStore(tmp_path / "g.db").close()
    PostgresStore(postgres_url).close()
    sqlite, postgresql = sqlite_shape(tmp_path / "g.db"), postgresql_shape(postgres_url)
    assert sorted(sqlite) == sorted(postgresql)
    for table in sqlite:
        assert sqlite[table] == postgresql[table], table
