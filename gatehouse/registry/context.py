"""What every registry service shares: the store, the server key, the operator's settings."""
from __future__ import annotations

from dataclasses import dataclass

from ..server_key import ServerKey
from ..storage import Store


@dataclass
class RegistryContext:
    store: Store
    key: ServerKey  # seals secrets at rest and digests what logins look up
    # Off: telemetry keeps its latest values only, for operators whose applications keep the
    # history themselves from the gatehouse/devices/... feed (--no-telemetry-history).
    keep_telemetry_history: bool = True
