"""Schema migrations, recorded in the database's `_sqlite_migrations` table by sqlite-utils.

`0001_initial` applies schema.sql to a new database. A later schema change is a new function
here (never an edit of an applied one), and schema.sql is updated to match so that it stays
the readable picture of the current schema.
"""
from importlib import resources

import sqlite3

import sqlite_utils
from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("gatehouse")


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT the migration's transaction; run statement by statement.
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return [s for s in statements if s]


@MIGRATIONS(name="0001_initial")
def initial(db: sqlite_utils.Database) -> None:
    script = resources.files("gatehouse").joinpath("schema.sql").read_text(encoding="utf-8")
    for statement in _statements(script):
        db.execute(statement)
