"""What the sidecar's blueprints share, reached with `sidecar()` inside a request."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from flask import current_app

from gatehouse import metrics as gm
from gatehouse.application_namespace import attributes_message
from gatehouse.data_dir import DataDir
from gatehouse.device_activity import ActivityTracker, ObservationSessions
from gatehouse.device_requests import DataUpload
from gatehouse.login import SERVICE_USERNAME_PREFIX
from gatehouse.login_limiter import (
    DEFAULT_BLOCK_SECONDS,
    DEFAULT_MAX_FAILURES,
    LoginLimiter,
)
from gatehouse.models import AttributeScope, Device
from gatehouse.payloads import KvEntry
from gatehouse.registry import Registry
from gatehouse.runtime import ports
from gatehouse.server_key import ServerKey
from gatehouse.token_logins import TokenLogins

from .broker_link import BrokerLink
from .mailboxes import DeviceMailboxes
from .writer import GroupCommitWriter

EXTENSION = "gatehouse"
T = TypeVar("T")


@dataclass(frozen=True)
class SidecarSettings:
    data_dir: Path
    host: str = "0.0.0.0"
    http_port: int = ports.HTTP_PORT
    broker_host: str = ports.LOOPBACK
    broker_port: int = ports.MQTT_PORT
    threads: int = 64  # waitress worker threads: each open long poll holds one
    # ThingsBoard's transport.http.max_payload_size: /api/v1/*/rpc/** 64 KiB, /api/v1/** 50 MiB
    max_payload_size: int = 52_428_800
    max_rpc_payload_size: int = 65_536
    request_timeout_ms: int = 60_000  # long polls without ?timeout= (transport.http.request_timeout)
    max_request_timeout_ms: int = 300_000  # transport.http.max_request_timeout
    jwt_expiry_seconds: int = 9_000  # ThingsBoard's security.jwt.tokenExpirationTime
    jwt_refresh_expiry_seconds: int = 604_800  # ThingsBoard's security.jwt.refreshTokenExpTime
    rpc_expiry_seconds: float = 60.0
    ui_session_idle_seconds: int = 1_800  # the web UI logs an operator out after this long without a request
    # Per address, for unknown device tokens and for administrators' failed logins (admin API and
    # web UI), each counted on its own.
    max_failed_logins: int = DEFAULT_MAX_FAILURES
    block_seconds: float = DEFAULT_BLOCK_SECONDS
    # A reverse proxy in front: its X-Forwarded-For names the client (address limits, audit);
    # from anyone else the header is dropped.
    trusted_proxy: str | None = None
    log_format: str = "text"
    log_level: str = "INFO"
    telemetry_history: bool = True  # off: latest telemetry values only (Registry.keep_telemetry_history)


def long_poll_limit(threads: int) -> int:
    """How many long polls the server holds at once: a quarter of its threads (at least two)
    stays free for requests that return at once, so that devices waiting for updates cannot
    stall every other device's telemetry (each poll holds a waitress thread)."""
    return max(1, threads - max(2, threads // 4))


class Sidecar:
    def __init__(self, settings: SidecarSettings, mailboxes: DeviceMailboxes, link: BrokerLink | None,
                 writer: GroupCommitWriter | None = None):
        self.settings = settings
        self.mailboxes = mailboxes
        self.link = link  # None: no broker (data is stored, nothing is published)
        self.writer = writer
        self.token_logins = TokenLogins()
        self.activity = ActivityTracker()  # stored by the server's housekeeping thread
        self.observations = ObservationSessions(self.activity)  # CoAP observations' sessions (device_api)
        self.admin_logins = LoginLimiter(settings.max_failed_logins, settings.block_seconds)  # admin_auth.check_login
        # Device API requests with unknown tokens (device_api). Its own limiter: a misconfigured
        # device behind an office's address does not lock its administrators out, nor the reverse.
        self.device_logins = LoginLimiter(settings.max_failed_logins, settings.block_seconds)
        gm.export_blocked_addresses(self.admin_logins, self.device_logins)
        self._poll_slots = threading.BoundedSemaphore(long_poll_limit(settings.threads))
        self._local = threading.local()
        self._opened: list[Registry] = []
        self._lock = threading.Lock()
        self._service_credentials: dict[str, tuple[str, str]] = {}
        self._server_key = ServerKey(DataDir.of(settings.data_dir).server_key.read_bytes())

    @property
    def registry(self) -> Registry:
        """This thread's Registry (one SQLite connection per server thread, kept open)."""
        registry = getattr(self._local, "registry", None)
        if registry is None:
            registry = self._local.registry = Registry.open(self.settings.data_dir,
                                                            telemetry_history=self.settings.telemetry_history)
            with self._lock:
                self._opened.append(registry)
        return registry

    def device_for_token(self, token: str) -> Device | None:
        return self.token_logins.login(self.registry, token)

    def device_for_certificate(self, cert_der: bytes) -> Device | None:
        """The X.509 device whose certificate this is (by its SHA3 thumbprint), else None."""
        return self.registry.certificate_device(cert_der)

    @contextlib.contextmanager
    def poll_slot(self) -> Iterator[bool]:
        """One of the long polls the server may hold (long_poll_limit): True if taken, given
        back on leaving; False at once when all are taken."""
        taken = self._poll_slots.acquire(blocking=False)
        try:
            yield taken
        finally:
            if taken:
                self._poll_slots.release()

    def service_credentials(self, account: str) -> tuple[str, str]:
        """(username, password) of a Gatehouse service account, derived from the server key once
        per account and kept: the key does not change while the process runs. From the key file,
        not a registry: every request checks for the CoAP bridge's account (its metrics too, after
        the answer), and that must not need the database, which may be away."""
        found = self._service_credentials.get(account)
        if found is None:
            found = self._service_credentials[account] = (SERVICE_USERNAME_PREFIX + account,
                                                          self._server_key.service_password(account))
        return found

    def write(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """The write transaction `fn(registry, *args, **kwargs)`: in the writer's next group
        commit when the server runs one, else on this thread's connection."""
        if self.writer is not None:
            return self.writer.call(fn, *args, **kwargs)
        return fn(self.registry, *args, **kwargs)

    def store_device_data(self, upload: DataUpload) -> None:
        """Store a device's telemetry or attributes, then tell its application topic. The writer
        publishes once it has committed: a request then hands its work to one other thread, not two."""
        def publish() -> None:
            self.publish_json(upload.write.device_id, (upload.topic,), upload.message)

        if self.writer is not None:
            self.writer.save_device_data(upload.write, after_commit=publish)
        else:
            self.registry.save_device_data([upload.write])
            publish()

    def publish_json(self, device_id: str, parts: tuple, value) -> None:
        if self.link is not None:
            self.link.publish_json(device_id, parts, value)

    def publish_event(self, device_id: str, event: str) -> None:
        if self.link is not None:
            self.link.publish_event(device_id, event)

    def change_shared_attributes(self, device_id: str, entries: Iterable[KvEntry] = (),
                                 deleted: Iterable[str] = ()) -> None:
        """An operator changes a device's shared attributes (admin API, web UI): stored here,
        then told to the device wherever it is connected: HTTP long polls of this sidecar at
        once, MQTT devices through the broker (which stores the same values again and pushes
        them; the sidecar's own service session is not sent them back)."""
        entries, deleted = tuple(entries), tuple(deleted)
        if entries:
            self.write(Registry.save_attributes, device_id, AttributeScope.SHARED, entries)
            self.shared_attributes_written(device_id, entries)
        if deleted:
            self.write(Registry.delete_attributes, device_id, AttributeScope.SHARED, deleted)
            self._tell_shared_attributes(device_id, {"deleted": list(deleted)})

    def shared_attributes_written(self, device_id: str, entries: tuple[KvEntry, ...]) -> None:
        """Tell a device of shared attributes already stored (by change_shared_attributes or a
        bulk import), wherever it is connected."""
        self._tell_shared_attributes(device_id, attributes_message(entries))

    def _tell_shared_attributes(self, device_id: str, update: dict) -> None:
        self.mailboxes.shared_attributes_changed(device_id, update)
        self.publish_json(device_id, ("attributes", "shared"), update)

    def close(self) -> None:
        with self._lock:
            for registry in self._opened:
                registry.close()
            self._opened.clear()


def sidecar() -> Sidecar:
    return current_app.extensions[EXTENSION]
