"""Housekeeping of a long-running deployment: pruning old telemetry history and provisioning
audit events in short batches (gatehouse.retention), under a lease so that one process prunes."""
from __future__ import annotations

from .. import retention
from ..clock import now_ms
from ..retention import TELEMETRY_RETENTION_DAYS, Prunable
from .context import RegistryContext


class Maintenance:
    def __init__(self, context: RegistryContext):
        self._store = context.store

    def checkpoint(self) -> None:
        """The store's own housekeeping, which a connection that never waits leaves to others."""
        self._store.checkpoint()

    def prune_telemetry(self, *, keep_days: float = TELEMETRY_RETENTION_DAYS) -> int:
        """Delete telemetry history older than `keep_days` (latest values stay), batch by batch;
        returns rows deleted."""
        return retention.prune(self, Prunable.TELEMETRY, retention.cutoff(now_ms(), keep_days))

    def prune_batch(self, kind: Prunable, before_ms: int, limit: int = retention.BATCH_ROWS) -> int:
        """One transaction deleting at most `limit` of the oldest `kind` records before `before_ms`."""
        delete = (self._store.delete_telemetry_before if kind is Prunable.TELEMETRY
                  else self._store.delete_provisioning_events_before)
        with self._store.transaction():
            return delete(before_ms, limit)

    def count_prunable(self, kind: Prunable, before_ms: int) -> int:
        count = (self._store.count_telemetry_before if kind is Prunable.TELEMETRY
                 else self._store.count_provisioning_events_before)
        return count(before_ms)

    def take_lease(self, task: str, holder: str, seconds: float) -> bool:
        """Whether `holder` now holds `task` for `seconds` (taken, renewed, or another's expired)."""
        now = now_ms()
        with self._store.transaction():
            return self._store.take_lease(task, holder, now, now + int(seconds * 1000))

    def release_lease(self, task: str, holder: str) -> None:
        """Give `task` up at once (a clean shutdown), so that the next process need not wait
        for the lease to run out."""
        with self._store.transaction():
            self._store.release_lease(task, holder)
