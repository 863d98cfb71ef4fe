"""Retention: how long telemetry history and the provisioning audit trail are kept.

Latest telemetry values are never pruned; history points and audit events older than their
retention go. A large backlog is deleted in small batches, each its own short transaction, with
a pause between them, so pruning never holds SQLite's one write lock long enough to stall the
devices' telemetry: their group commits run in the pauses. When several processes share one
database, only the holder of the retention lease prunes (Registry.take_lease).
"""
from __future__ import annotations

import enum
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

TELEMETRY_RETENTION_DAYS = 30.0
AUDIT_RETENTION_DAYS = 365.0
BATCH_ROWS = 2000  # per transaction: a few milliseconds of the write lock
BATCH_PAUSE_SECONDS = 0.05
LEASE_TASK = "retention"
_DAY_MS = 86_400_000


class Prunable(enum.Enum):
    TELEMETRY = "telemetry points"
    AUDIT = "provisioning events"


@dataclass(frozen=True)
class RetentionPolicy:
    """Days to keep each kind of record; 0 keeps everything."""

    telemetry_days: float = TELEMETRY_RETENTION_DAYS
    audit_days: float = AUDIT_RETENTION_DAYS

    def cutoffs(self, now_ms: int) -> dict[Prunable, int]:
        """What to prune: records older than these times (ms)."""
        days = {Prunable.TELEMETRY: self.telemetry_days, Prunable.AUDIT: self.audit_days}
        return {kind: cutoff(now_ms, d) for kind, d in days.items() if d > 0}


def cutoff(now_ms: int, days: float) -> int:
    return now_ms - int(days * _DAY_MS)


def lease_holder() -> str:
    """A name for this process in the lease table (an operator reads it there)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def prune(registry, kind: Prunable, before_ms: int, *, pause: float = BATCH_PAUSE_SECONDS,
          progress: Callable[[int], None] | None = None) -> int:
    """Delete every `kind` record older than `before_ms`, batch by batch; returns how many."""
    removed = 0
    while True:
        n = registry.prune_batch(kind, before_ms)
        removed += n
        if progress is not None:
            progress(n)
        if n < BATCH_ROWS:
            return removed
        time.sleep(pause)
