"""The plugin's background work: watching for changes made by other processes (the CLI, the
sidecar, another broker) and acting on them (profiles' MQTT transport settings, sessions whose
credentials changed, new trust anchors); storing the devices' activity; and retention, on
schedule, by whichever process sharing the database holds the lease.

None of it may stop for good: a round that fails (the database away for a while) is logged, and
the next round tries again (`_round`).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

from gatehouse.clock import now_ms, utc_text
from gatehouse.device_activity import ActivityTracker
from gatehouse.errors import SERVER_UNAVAILABLE_ERRORS
from gatehouse.registry import Registry
from gatehouse.retention import BATCH_PAUSE_SECONDS, BATCH_ROWS, LEASE_TASK, RetentionPolicy, lease_holder

from .connections import Connections
from .interfaces import DisconnectReason
from .logins import TrustStore
from .registry_worker import RegistryWorker
from .session_state import CREDENTIALS_VERSION, ProfileTransports

log = logging.getLogger(__name__)
# How soon retention tries again after a round that failed (rather than a whole interval later).
RETENTION_RETRY_SECONDS = 60.0


class _Outcome:
    failed = False


@contextlib.contextmanager
def _round(what: str, *, again: bool = True) -> Iterator[_Outcome]:
    """One round of a background loop (`again`: the loop tries again later): if it fails, it is
    logged (and `failed` set) and the loop goes on."""
    outcome = _Outcome()
    then = "; trying again later" if again else ""
    try:
        yield outcome
    except SERVER_UNAVAILABLE_ERRORS as e:  # expected while the database is away: one line each
        outcome.failed = True
        log.warning("%s failed%s: %s", what, then, e)
    except Exception:
        outcome.failed = True
        log.exception("%s failed%s", what, then)


class Housekeeping:
    def __init__(self, worker: RegistryWorker, transports: ProfileTransports, connections: Connections,
                 activity: ActivityTracker, trust_store: TrustStore, *, change_poll_seconds: float,
                 activity_report_seconds: float, inactivity_check_seconds: float, retention: RetentionPolicy,
                 retention_interval_seconds: float):
        self._worker = worker
        self._transports = transports
        self._connections = connections
        self._activity = activity
        self._trust_store = trust_store
        self._change_poll_seconds = change_poll_seconds
        self._activity_report_seconds = activity_report_seconds
        self._inactivity_check_seconds = inactivity_check_seconds
        self._retention = retention
        self._retention_interval_seconds = retention_interval_seconds
        self._lease_holder = lease_holder()  # this process, in the retention lease table
        self._version: int | None = None  # the database's change counter last seen

    async def start(self) -> None:
        self._version = await self._worker.call(Registry.change_counter)
        await self._transports.reload()

    def tasks(self):
        """The coroutines to run in the background until the plugin closes."""
        return self._watch_for_changes(), self._report_activity(), self._prune_on_schedule()

    async def close(self) -> None:
        """Once the background tasks have stopped: the last activity, and the lease given up
        (each tried once: a database that is away must not hold the broker's shutdown up)."""
        with _round("storing the last device activity", again=False):
            await self._worker.call(Registry.record_activity, self._activity.take_changes(now_ms()))
        with _round("giving up the retention lease", again=False):
            await self._worker.call(Registry.release_lease, LEASE_TASK, self._lease_holder)

    async def _watch_for_changes(self) -> None:
        while True:
            await asyncio.sleep(self._change_poll_seconds)
            with _round("watching for changes"):
                await self._apply_changes()

    async def _apply_changes(self) -> None:
        await self._worker.checkpoint()
        version = await self._worker.call(Registry.change_counter)
        if version == self._version:
            return
        await self._transports.reload()
        await self._logout_changed_devices()
        await self._trust_store.refresh()
        # Only once all of it is done: a round that failed half-way is done again next time.
        self._version = version

    async def _report_activity(self) -> None:
        """Store the devices' activity (gatehouse.device_activity) about once a second, and
        now and then mark inactive the devices nobody reported for a while."""
        next_check = 0.0
        while True:
            await asyncio.sleep(self._activity_report_seconds)
            now = now_ms()
            changes = self._activity.take_changes(now)
            if changes:
                with _round("storing device activity") as stored:
                    await self._worker.call(Registry.record_activity, changes)
                if stored.failed:
                    self._activity.put_back(changes)  # for the next round
                    continue
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + self._inactivity_check_seconds
                with _round("marking quiet devices inactive"):
                    await self._worker.call(Registry.expire_activity, now, connected=list(self._connections.devices))

    async def _prune_on_schedule(self) -> None:
        """Retention (gatehouse.retention), once per interval, by the one process of those
        sharing the database that holds the lease; batch by batch, so that the devices' group
        commits run between the batches."""
        policy = self._retention
        holder = self._lease_holder
        # Renewed every run; should this process die, another takes over when it runs out.
        lease_seconds = 2 * self._retention_interval_seconds + 60
        if not policy.cutoffs(0):
            return  # everything is kept
        while True:
            pause = min(self._retention_interval_seconds, RETENTION_RETRY_SECONDS)
            with _round("retention"):
                await self._prune(holder, lease_seconds)
                pause = self._retention_interval_seconds
            await asyncio.sleep(pause)

    async def _prune(self, holder: str, lease_seconds: float) -> None:
        if not await self._worker.call(Registry.take_lease, LEASE_TASK, holder, lease_seconds):
            return
        for kind, before in self._retention.cutoffs(now_ms()).items():
            removed = 0
            while True:
                n = await self._worker.call(Registry.prune_batch, kind, before)
                removed += n
                if n < BATCH_ROWS:
                    break
                await asyncio.sleep(BATCH_PAUSE_SECONDS)
            if removed:
                log.info("retention: removed %d %s recorded before %s", removed, kind.value, utc_text(before))

    async def _logout_changed_devices(self) -> None:
        """Credentials changed or device deleted (by the CLI, the sidecar, ...): ThingsBoard
        closes the device's sessions, and so do we."""
        sessions = dict(self._connections.devices)
        current = await self._worker.call(Registry.credentials_versions, list(sessions))
        for device_id, session in sessions.items():
            if current.get(device_id) != session.attributes.get(CREDENTIALS_VERSION):
                log.info("credentials of %s changed; closing its session", device_id)
                await self._connections.disconnect(session, DisconnectReason.ADMINISTRATIVE_ACTION)
