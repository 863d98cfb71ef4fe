"""Schema migrations, recorded in the database's `_sqlite_migrations` table by sqlite-utils.

schema.sql is the readable picture of the current schema. A new database gets it in one go
(`0001_initial`), after which the later migrations find their work done; an older database
gets each later migration in order. A schema change is therefore two edits: the statement added to
schema.sql, and a migration here (never an edit of an applied one) doing the same to old files.
"""
import sqlite3
from importlib import resources

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


def _schema_statements() -> list[str]:
    return _statements(resources.files("gatehouse").joinpath("schema.sql").read_text(encoding="utf-8"))


def _statement_creating(table: str) -> str:
    return next(s for s in _schema_statements() if f"CREATE TABLE {table} (" in s)


@MIGRATIONS(name="0001_initial")
def initial(db: sqlite_utils.Database) -> None:
    for statement in _schema_statements():
        db.execute(statement)


@MIGRATIONS(name="0002_application_accounts")
def application_accounts(db: sqlite_utils.Database) -> None:
    if not db["application_account"].exists():  # a database created from the current schema.sql
        db.execute(_statement_creating("application_account"))


@MIGRATIONS(name="0003_credentials_generation")
def credentials_generation(db: sqlite_utils.Database) -> None:
    if db["credentials_generation"].exists():  # a database created from the current schema.sql
        return
    for statement in _schema_statements():  # the table, its row and its triggers
        if "credentials_generation" in statement:
            db.execute(statement)


@MIGRATIONS(name="0004_values_without_affinity")
def values_without_affinity(db: sqlite_utils.Database) -> None:
    """The value columns were declared ANY, which SQLite reads as NUMERIC affinity; SQLite cannot
    change a column's type in place, so each table is rebuilt from schema.sql (values already
    turned into numbers stay so)."""
    for table in ("attribute", "telemetry_latest", "telemetry_history"):
        declared = {column.name: column.type for column in db[table].columns}
        if declared["value"] == "BLOB":  # a database created from the current schema.sql
            continue
        db.execute(_statement_creating(table).replace(f"CREATE TABLE {table} (", f"CREATE TABLE {table}_new (", 1))
        db.execute(f"INSERT INTO {table}_new SELECT * FROM {table}")
        db.execute(f"DROP TABLE {table}")
        db.execute(f"ALTER TABLE {table}_new RENAME TO {table}")
        for statement in _schema_statements():
            if "CREATE INDEX" in statement and f" ON {table} (" in statement:
                db.execute(statement)


@MIGRATIONS(name="0005_profile_mqtt_transport")
def profile_mqtt_transport(db: sqlite_utils.Database) -> None:
    """The four columns of a profile's MQTT transport settings, added to an older database."""
    present = {column.name for column in db["device_profile"].columns}
    for definition in ("mqtt_telemetry_topic TEXT", "mqtt_attributes_topic TEXT",
                       "mqtt_attributes_subscribe_topic TEXT",
                       ("mqtt_send_ack_on_validation_exception INTEGER "
                        "CHECK (mqtt_send_ack_on_validation_exception IN (0, 1))")):
        if definition.split()[0] not in present:
            db.execute(f"ALTER TABLE device_profile ADD COLUMN {definition}")


@MIGRATIONS(name="0006_retention")
def retention(db: sqlite_utils.Database) -> None:
    """The lease that lets one process of several prune, and the audit trail's index by age."""
    if not db["maintenance_lease"].exists():  # a database created from the current schema.sql
        db.execute(_statement_creating("maintenance_lease"))
    if "provisioning_event_by_ts" not in {index.name for index in db["provisioning_event"].indexes}:
        db.execute("CREATE INDEX provisioning_event_by_ts ON provisioning_event (ts)")


@MIGRATIONS(name="0007_server_key_check")
def server_key_check(db: sqlite_utils.Database) -> None:
    """The sealed value that tells whether a server key belongs to this database."""
    if not db["server_key_check"].exists():  # a database created from the current schema.sql
        db.execute(_statement_creating("server_key_check"))
