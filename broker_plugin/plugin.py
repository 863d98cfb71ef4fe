"""The Gatehouse amqtt plugin: one class that is amqtt's auth plugin and topic plugin at once,
wiring the parts below and handing each of amqtt's hooks to one of them.

- logins: what a CONNECT proves, the session's owner, one live session per device;
- topic_acl: what a session may subscribe to, and the QoS it was granted;
- device_messages: what devices publish, and provisioning over MQTT;
- application_messages: the application namespace, gatehouse/devices/...;
- housekeeping: changes made by other processes, device activity, retention;
- connections: the devices and service accounts connected here, and sending to them.

Every decision comes from the domain (`gatehouse.registry`, `gatehouse.payloads`,
`gatehouse.provisioning`); these modules only translate between MQTT and the domain, and run
database work on the registry thread.

Under the hardened broker (broker_plugin.server) each PUBLISH reaches `process_publish` before
any PUBACK. Loaded into a plain amqtt by dotted path, the plugin still authenticates, filters and
processes messages (from `on_broker_message_received`), but amqtt then acknowledges every QoS 1
message at once and keeps its own session bugs (docs/mqtt.md#using-the-plugin-in-your-own-amqtt).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from gatehouse import metrics as m
from gatehouse.data_dir import DataDir
from gatehouse.device_activity import ActivityTracker
from gatehouse.errors import SERVER_UNAVAILABLE_ERRORS
from gatehouse.login_limiter import DEFAULT_BLOCK_SECONDS, DEFAULT_MAX_FAILURES, LoginLimiter
from gatehouse.retention import AUDIT_RETENTION_DAYS, TELEMETRY_RETENTION_DAYS, RetentionPolicy

from .application_messages import ApplicationMessages
from .connections import Connections
from .device_messages import DeviceMessages, Provisioning
from .housekeeping import Housekeeping
from .interfaces import MQTT_311, MessageProperties, PublishVerdict
from .logins import Logins, TrustStore
from .registry_worker import RegistryWorker
from .session_state import NAMESPACE_ROLES, ROLE, ROLE_DEVICE, ROLE_PROVISION, ProfileTransports
from .topic_acl import TopicAcl

log = logging.getLogger(__name__)

_publish_seconds_by_role = m.Children(m.REQUEST_SECONDS, m.MQTT)


class GatehousePlugin(BaseAuthPlugin, BaseTopicPlugin):
    @dataclass
    class Config:
        data_dir: str = "gatehouse-data"
        database: str | None = None  # a database URL (gatehouse.storage.urls); None: SQLite in data_dir
        server_key_file: str | None = None  # None: gatehouse.key in data_dir
        max_failed_logins: int = DEFAULT_MAX_FAILURES
        block_seconds: float = DEFAULT_BLOCK_SECONDS
        provision_close_seconds: float = 60.0
        change_poll_seconds: float = 1.0
        activity_report_seconds: float = 1.0
        inactivity_check_seconds: float = 10.0
        max_payload_size: int = 65536
        telemetry_retention_days: float = TELEMETRY_RETENTION_DAYS  # 0: keep everything
        audit_retention_days: float = AUDIT_RETENTION_DAYS
        retention_interval_seconds: float = 3600.0
        telemetry_history: bool = True  # off: latest values only (Registry.keep_telemetry_history)

    def __init__(self, context):
        super().__init__(context)
        config = self.config
        data_dir = DataDir(Path(config.data_dir), config.database,
                           Path(config.server_key_file) if config.server_key_file else None)
        self.worker = RegistryWorker(data_dir, telemetry_history=config.telemetry_history)
        self.limiter = LoginLimiter(config.max_failed_logins, config.block_seconds)
        self.activity = ActivityTracker()
        self.ready = False
        self._background: set[asyncio.Task] = set()
        broker = self._broker
        transports = ProfileTransports(self.worker)
        connections = Connections(broker, self._spawn)
        trust_store = TrustStore(broker, self.worker)
        self._connections = connections
        self._trust_store = trust_store
        self._logins = Logins(self.worker, self.limiter, transports, connections, self.activity)
        self._topic_acl = TopicAcl(transports)
        self._device_messages = DeviceMessages(self.worker, connections, transports, self.activity,
                                               config.max_payload_size)
        self._provisioning = Provisioning(self.worker, connections, trust_store, self._spawn,
                                          config.provision_close_seconds)
        self._application_messages = ApplicationMessages(self.worker, connections, transports)
        self._housekeeping = Housekeeping(
            self.worker, transports, connections, self.activity, trust_store,
            change_poll_seconds=config.change_poll_seconds, activity_report_seconds=config.activity_report_seconds,
            inactivity_check_seconds=config.inactivity_check_seconds,
            retention=RetentionPolicy(config.telemetry_retention_days, config.audit_retention_days),
            retention_interval_seconds=config.retention_interval_seconds)
        m.gauge_function(m.CONNECTED_DEVICES, lambda: len(connections.devices), m.MQTT)
        m.export_blocked_addresses(self.limiter)

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def _broker(self):
        return self.context._broker_instance  # amqtt has no public way to reach one connection

    @property
    def _inline(self) -> bool:
        return getattr(self._broker, "publish_processor", None) is self

    async def on_broker_pre_start(self) -> None:
        await self.worker.start()
        await self._housekeeping.start()
        self.ready = True

    async def on_broker_post_start(self) -> None:
        await self._trust_store.refresh()
        for coroutine in self._housekeeping.tasks():
            self._spawn(coroutine)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.ready:
            await self._housekeeping.close()
            await self.worker.close()
            self.ready = False

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # --- logins (broker_plugin.logins) --------------------------------------------------------

    async def authenticate(self, *, session: Session) -> bool:
        return await self._logins.authenticate(session)

    async def on_broker_client_connected(self, *, client_id: str, client_session: Session) -> None:
        await self._logins.client_connected(client_id, client_session)

    async def on_broker_client_disconnected(self, *, client_id: str, client_session: Session) -> None:
        self._provisioning.session_ended(client_session)
        await self._logins.client_disconnected(client_id, client_session)

    # --- the topic ACL (broker_plugin.topic_acl) ----------------------------------------------

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool:
        return self._topic_acl.allows(session, topic, action)

    async def on_broker_client_subscribed(self, *, client_id: str, topic: str, qos: int) -> None:
        self._topic_acl.subscribed(self.context.get_session(client_id), topic, qos)

    async def on_broker_client_unsubscribed(self, *, client_id: str, topic: str) -> None:
        self._topic_acl.unsubscribed(self.context.get_session(client_id), topic)

    # --- publishes (broker_plugin.device_messages, broker_plugin.application_messages) --------

    async def on_broker_message_received(self, *, client_id: str, message) -> None:
        if self._inline or message is None:
            return  # the hardened broker calls process_publish itself, before the PUBACK
        session = self.context.get_session(client_id)
        if session is not None:
            verdict = await self.process_publish(session, message.topic, bytes(message.data or b""))
            _puback, disconnect = verdict.answer(MQTT_311, message.qos)
            if disconnect is not None:
                await self._connections.disconnect(session, disconnect)

    async def process_publish(self, session: Session, topic: str, payload: bytes,
                              properties: MessageProperties | None = None) -> PublishVerdict:
        try:
            return await self._process_publish(session, topic, payload, properties)
        except SERVER_UNAVAILABLE_ERRORS as e:
            # Nothing of it was stored: no PUBACK (MQTT 5: 0x83) and the connection is closed, as
            # ThingsBoard closes it when a message cannot be processed; the client sends it again
            # once it is let back in, and until the database is back its logins hear 0x03 / 0x88.
            log.warning("a PUBLISH from %s on %s was not processed: %s", session.client_id, topic, e)
            return PublishVerdict.FAILED

    async def _process_publish(self, session: Session, topic: str, payload: bytes,
                               properties: MessageProperties | None) -> PublishVerdict:
        role = session.attributes.get(ROLE)
        if role == ROLE_DEVICE:
            return await self._device_messages.process(session, topic, payload, properties)
        started = time.perf_counter()
        try:
            if len(payload) > self.config.max_payload_size:
                return PublishVerdict.PACKET_TOO_LARGE
            if role == ROLE_PROVISION:
                return await self._provisioning.process(session, topic, payload)
            if role in NAMESPACE_ROLES:
                return await self._application_messages.process(session, topic, payload, properties)
            return PublishVerdict.FAILED
        finally:
            _publish_seconds_by_role(role or "none").observe(time.perf_counter() - started)
