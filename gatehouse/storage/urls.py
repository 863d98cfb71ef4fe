"""Database URLs: which store a deployment uses (`gatehouse --database URL`).

- `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` (SQLAlchemy's spelling: the path
  is what follows the third slash), the default being `gatehouse.db` in the data dir;
- `postgresql://user:password@host:port/dbname` (also `postgres://`, and anything else libpq
  takes after the scheme: `?sslmode=verify-full&sslrootcert=...`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data_dir import SQLITE_URL_PREFIX as _SQLITE
from ..data_dir import redacted_url
from ..errors import ValidationError
from .interfaces import Store

_POSTGRESQL = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class DatabaseUrl:
    text: str

    @classmethod
    def parse(cls, text: str) -> DatabaseUrl:
        if text.startswith(_SQLITE) and len(text) > len(_SQLITE):
            return cls(text)
        if text.startswith(_POSTGRESQL):
            return cls(text)
        raise ValidationError(f"unsupported database URL {cls(text).redacted()!r}: expected sqlite:///PATH or "
                              "postgresql://USER:PASSWORD@HOST:PORT/DBNAME", field="database")

    @classmethod
    def sqlite(cls, path: Path) -> DatabaseUrl:
        return cls(_SQLITE + str(path))

    @property
    def is_sqlite(self) -> bool:
        return self.text.startswith(_SQLITE)

    @property
    def sqlite_path(self) -> Path:
        return Path(self.text[len(_SQLITE):])

    def redacted(self) -> str:
        """The URL without its password: what messages and logs show."""
        return redacted_url(self.text)

    def open(self) -> Store:
        if self.is_sqlite:
            from .sqlite import SqliteStore
            return SqliteStore(self.sqlite_path)
        from .postgresql import PostgresStore  # psycopg is loaded by deployments that use it
        return PostgresStore(self.text)

    def __str__(self) -> str:
        return self.redacted()


def open_store(url: str | DatabaseUrl) -> Store:
    return (url if isinstance(url, DatabaseUrl) else DatabaseUrl.parse(url)).open()
