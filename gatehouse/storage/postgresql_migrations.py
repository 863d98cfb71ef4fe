"""Schema migrations on PostgreSQL, recorded in the database's `gatehouse_migrations` table.

The same rule as SQLite's (sqlite_migrations.py): schema_postgresql.sql is the picture of the
current schema, applied in one go to a new database as "0001_initial"; a later schema change is
a statement added to both schema files and a migration appended to each module, never an edit of
an applied one. PostgreSQL's DDL is transactional, so a migration and its record commit together,
and an advisory lock makes processes that start together on a new database apply it once.
"""
from __future__ import annotations

from collections.abc import Callable
from importlib import resources

import psycopg

# Any number, the same in every process: held while migrations are checked and applied.
MIGRATION_LOCK = 0x6761746569


def _schema_script() -> str:
    return resources.files("gatehouse").joinpath("schema_postgresql.sql").read_text(encoding="utf-8")


def _initial(conn: psycopg.Connection) -> None:
    conn.execute(_schema_script())


MIGRATIONS: list[tuple[str, Callable[[psycopg.Connection], None]]] = [
    ("0001_initial", _initial),
]


def applied_migrations(conn: psycopg.Connection) -> list[str]:
    exists = conn.execute("SELECT to_regclass('gatehouse_migrations') IS NOT NULL AS present").fetchone()
    if not exists["present"]:
        return []
    return [row["name"] for row in conn.execute("SELECT name FROM gatehouse_migrations ORDER BY name")]


def apply_migrations(conn: psycopg.Connection) -> None:
    """Bring the database up to date (`conn` in autocommit mode, as the store's are)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
        conn.execute("CREATE TABLE IF NOT EXISTS gatehouse_migrations ("
                     "name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        done = set(applied_migrations(conn))
        for name, migrate in MIGRATIONS:
            if name not in done:
                migrate(conn)
                conn.execute("INSERT INTO gatehouse_migrations (name) VALUES (%s)", [name])
