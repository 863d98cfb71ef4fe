"""A deployment's whole database copied into another one (`gatehouse db copy --to URL`): typically
its SQLite file into a PostgreSQL database, when the deployment outgrows one machine.

Rows move unchanged, ids included. Every secret is sealed or digested with the server key, and a
sealed value is bound to its row's id, so the copy works with the same key as the original: no
device, profile or account needs new credentials. The copy

- claims the target first: a database without a server key check gets the source's, byte for
  byte; a database with another one is refused, being another database (another deployment's,
  when the key does not open its check);
- copies the tables of storage.TABLE_KEYS in their order (each after the tables it references),
  in pages of `batch_size` rows read by primary key, each page one transaction of the target that
  skips the rows already there: a copy interrupted anywhere, or run twice, ends with the same
  target;
- checks at the end that nothing was committed to the source meanwhile and that every table holds
  as many rows in the target as in the source.

The source's writers must be stopped first: a row changed after its page was copied would not be
copied again (the check at the end then refuses the copy).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import GatehouseError, StoreUnavailable
from ..server_key import ServerKey
from ..storage import TABLE_KEYS, DatabaseUrl, IntegrityError, Store
from .context import RegistryContext
from .key_check import opens_check

BATCH_SIZE = 5_000  # rows per page read from the source and per transaction of the target
_START_AFRESH = "copy into a new, empty database"


class DatabaseCopyError(GatehouseError):
    """The copy was refused or did not complete; the message says why and what to do."""


@dataclass(frozen=True)
class CopyResult:
    target: str  # the target database's URL, without its password
    rows: dict[str, int]  # table -> its rows, as many in the target as in the source; in copy order
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    def to_json(self) -> dict:
        return {"target": self.target, "tables": self.rows, "rows": self.total, "seconds": round(self.seconds, 3)}


def copy_database(source: Store, target: Store, key: ServerKey, *, target_shown: str,
                  batch_size: int = BATCH_SIZE, progress: Callable[[int], None] | None = None) -> CopyResult:
    """Copy every table of `source` into `target` (see the module's docstring); `key` is the
    source's server key, `target_shown` how messages name the target, `progress(n)` is called
    after each page with its number of rows (as many in all as `row_counts(source)` adds up to)."""
    started = time.monotonic()
    version = source.data_version()
    _claim(source, target, key, target_shown)
    for table, primary_key in TABLE_KEYS.items():
        after = None
        while True:
            rows = source.table_rows(table, after, batch_size)
            if not rows:
                break
            try:
                with target.transaction():
                    target.insert_copied_rows(table, rows)
            except IntegrityError as e:
                raise DatabaseCopyError(
                    f"cannot copy {table} into {target_shown}: rows there clash with the copied ones "
                    f"({e.constraint}); stop every process that writes to either database and "
                    f"{_START_AFRESH}") from None
            if progress is not None:
                progress(len(rows))
            if len(rows) < batch_size:
                break
            after = tuple(rows[-1][column] for column in primary_key)
    if source.data_version() != version:
        raise DatabaseCopyError(
            "the source database changed during the copy: stop every Gatehouse process that uses it "
            f"(broker, sidecar, coap, up) and {_START_AFRESH}")
    counts = {}
    for table in TABLE_KEYS:
        in_source, in_target = source.count_rows(table), target.count_rows(table)
        if in_source != in_target:
            raise DatabaseCopyError(
                f"the copy of {table} does not match: {in_source:,} rows in the source database, {in_target:,} "
                f"in {target_shown}; stop every process that writes to either database and {_START_AFRESH}")
        counts[table] = in_source
    return CopyResult(target_shown, counts, time.monotonic() - started)


def row_counts(store: Store) -> dict[str, int]:
    """Rows per table, in copy order: what a copy of `store` moves."""
    return {table: store.count_rows(table) for table in TABLE_KEYS}


def _claim(source: Store, target: Store, key: ServerKey, target_shown: str) -> None:
    """The target becomes this database's copy (its server key check, the source's), or is
    refused for holding another database."""
    ours = source.server_key_check()
    if ours is None:
        raise DatabaseCopyError("the source database has no server key check: open it with Gatehouse once first")
    theirs = target.server_key_check()
    if theirs is None:
        with target.transaction():
            target.insert_copied_rows("server_key_check", source.table_rows("server_key_check", None, 1))
        theirs = target.server_key_check()  # another process may have been first
    if theirs == ours:
        return
    if opens_check(theirs, key):
        raise DatabaseCopyError(
            f"{target_shown} holds a Gatehouse database of its own (made by `gatehouse init` or a Gatehouse "
            f"process that used it), not a copy of this one: {_START_AFRESH}")
    raise DatabaseCopyError(
        f"{target_shown} belongs to another deployment (its secrets are sealed with another server key): "
        f"{_START_AFRESH}")


class DatabaseCopy:
    """The registry's database copied into another one, named by its URL."""

    def __init__(self, context: RegistryContext):
        self._store = context.store
        self._key = context.key

    def row_counts(self) -> dict[str, int]:
        """Rows per table of this registry's database, in copy order (a progress bar's length)."""
        return row_counts(self._store)

    def copy_to(self, url: str, progress: Callable[[int], None] | None = None, *,
                batch_size: int = BATCH_SIZE) -> CopyResult:
        """Copy this registry's database into the database at `url` (sqlite:///PATH or
        postgresql://...; created if new): see copy_database. Raises ValidationError for a URL
        of no supported kind, DatabaseCopyError when the target cannot be reached or is refused,
        or when the copy does not check out; a copy cut short can be run again."""
        parsed = DatabaseUrl.parse(url)
        if parsed.is_sqlite and not parsed.sqlite_path.parent.is_dir():
            raise DatabaseCopyError(f"no directory {parsed.sqlite_path.parent} for the database {parsed.redacted()}")
        try:
            target = parsed.open()
        except StoreUnavailable as e:
            raise DatabaseCopyError(str(e)) from None
        try:
            return copy_database(self._store, target, self._key, target_shown=parsed.redacted(),
                                 batch_size=batch_size, progress=progress)
        except StoreUnavailable as e:
            raise DatabaseCopyError(f"{e}; run the copy again once it is back: it carries on where it stopped") \
                from None
        finally:
            target.close()
