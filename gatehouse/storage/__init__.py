"""Where the registry keeps its data: the Store interface (interfaces) and its implementations."""
from .interfaces import DEVICE_SORT_KEYS, PROFILE_SORT_KEYS, IntegrityError, Store, StoreBusy
from .sqlite import SqliteStore

__all__ = ["DEVICE_SORT_KEYS", "PROFILE_SORT_KEYS", "IntegrityError", "SqliteStore", "Store", "StoreBusy"]
