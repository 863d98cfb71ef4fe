"""Where the registry keeps its data: the Store interface (interfaces) and its implementations,
SQLite (the embedded default) and PostgreSQL (the shared store), chosen by a database URL."""
from .interfaces import (
                         DEVICE_SORT_KEYS,
                         PROFILE_SORT_KEYS,
                         TABLE_KEYS,
                         IntegrityError,
                         Store,
                         StoreBusy,
                         StoreUnavailable,
)
from .sqlite import SqliteStore
from .urls import DatabaseUrl, open_store

__all__ = ["DEVICE_SORT_KEYS", "PROFILE_SORT_KEYS", "TABLE_KEYS", "DatabaseUrl", "IntegrityError", "SqliteStore",
           "Store", "StoreBusy", "StoreUnavailable", "open_store"]
