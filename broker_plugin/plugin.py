"""The Gatehouse amqtt plugin: device logins, the per-device ACL, provisioning sessions, the
device topics, and the application namespace.

One class is amqtt's auth plugin and topic plugin at once. Every decision comes from the
domain (`gatehouse.registry`, `gatehouse.payloads`, `gatehouse.provisioning`); this module only
translates between MQTT and the domain, and runs database work on the registry thread.

Under the hardened broker (broker_plugin.server) each PUBLISH reaches `process_publish` before
any PUBACK. Loaded into a plain amqtt by dotted path, the plugin still authenticates, filters and
processes messages (from `on_broker_message_received`), but amqtt then acknowledges every QoS 1
message at once and keeps its own session bugs (README: "Using the plugin in your own amqtt").
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from dataclasses import dataclass

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from gatehouse import certificates
from gatehouse import metrics as m
from gatehouse.application_namespace import (
    ApplicationAction,
    attributes_message,
    classify_application_publish,
    device_data_device,
    device_topic,
    event_message,
    is_application_filter,
    rpc_request_message,
    telemetry_message,
)
from gatehouse.clock import now_ms, utc_text
from gatehouse.device_activity import ActivityTracker
from gatehouse.login import PROVISION_LOGIN, LoginOutcome
from gatehouse.login_limiter import (
    DEFAULT_BLOCK_SECONDS,
    DEFAULT_MAX_FAILURES,
    LoginLimiter,
)
from gatehouse.models import AttributeScope, CredentialsType, Device
from gatehouse.mqtt_transport import MqttTransport
from gatehouse.payloads import (
    PayloadError,
    TelemetryRecord,
    json_bytes,
    parse_attribute_request,
    parse_attributes,
    parse_json,
    parse_rpc_request,
    parse_telemetry,
)
from gatehouse.provisioning import (
    ProvisionRequest,
    ProvisionRequestError,
    ProvisionStatus,
)
from gatehouse.registry import DeviceDataWrite, Registry
from gatehouse.retention import (
    AUDIT_RETENTION_DAYS,
    BATCH_PAUSE_SECONDS,
    BATCH_ROWS,
    LEASE_TASK,
    TELEMETRY_RETENTION_DAYS,
    RetentionPolicy,
    lease_holder,
)

from .interfaces import (
    CLIENT_ID_GENERATED,
    LOGIN_REFUSAL,
    MAX_IN_FLIGHT,
    MQTT_311,
    SESSION_OWNER,
    DisconnectReason,
    LoginRefusal,
    MessageProperties,
    PublishVerdict,
)
from .registry_worker import RegistryWorker
from .topics import (
    PROVISION_REQUEST,
    PROVISION_RESPONSE,
    DeviceAction,
    SubscriptionKind,
    classify_device_publish,
    device_subscription,
)

log = logging.getLogger(__name__)

# session.attributes keys (amqtt shares the dict between plugins, hence the prefix)
ROLE = "gatehouse.role"
DEVICE = "gatehouse.device"
CREDENTIALS_VERSION = "gatehouse.credentials_version"
SUBSCRIPTIONS = "gatehouse.subscriptions"  # granted filter -> QoS
CLIENT_RPC_REPLIES = "gatehouse.client_rpc_replies"  # request id -> reply topic
PROVISION_CLOSE_TIMER = "gatehouse.provision_close_timer"

ROLE_DEVICE, ROLE_PROVISION, ROLE_APPLICATION, ROLE_SERVICE = "device", "provision", "application", "service"
# Roles that use the application namespace, gatehouse/devices/#.
NAMESPACE_ROLES = (ROLE_APPLICATION, ROLE_SERVICE)

_REFUSALS = {
    LoginOutcome.BAD_USERNAME_OR_PASSWORD: LoginRefusal.BAD_USERNAME_OR_PASSWORD,
    LoginOutcome.CLIENT_ID_NOT_VALID: LoginRefusal.CLIENT_ID_NOT_VALID,
    LoginOutcome.NOT_AUTHORIZED: LoginRefusal.NOT_AUTHORIZED,
    LoginOutcome.SERVER_UNAVAILABLE: LoginRefusal.SERVER_UNAVAILABLE,
}


# Metrics, bound to their labels once (gatehouse.metrics).
_logins = m.Children(m.LOGINS, m.MQTT)
_provisioning = m.Children(m.PROVISIONING, m.MQTT)
_messages_in = {action: m.MESSAGES.labels(m.MQTT, m.IN, action.value.lower()) for action in DeviceAction}
_messages_out = m.Children(m.MESSAGES, m.MQTT, m.OUT)
_to_applications = m.MESSAGES.labels(m.MQTT, m.OUT, "application")
_publish_seconds = {action: m.REQUEST_SECONDS.labels(m.MQTT, action.value.lower()) for action in DeviceAction}
_publish_seconds_by_role = m.Children(m.REQUEST_SECONDS, m.MQTT)


class GatehousePlugin(BaseAuthPlugin, BaseTopicPlugin):
    @dataclass
    class Config:
        data_dir: str = "gatehouse-data"
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
        self.worker = RegistryWorker(self.config.data_dir, telemetry_history=self.config.telemetry_history)
        self.limiter = LoginLimiter(self.config.max_failed_logins, self.config.block_seconds)
        self.connected_devices: dict[str, Session] = {}
        self.activity = ActivityTracker()
        # Service sessions (the sidecar) get what applications send to devices not connected here.
        self.connected_services: dict[str, Session] = {}
        self.ready = False
        self._background: set[asyncio.Task] = set()
        self._lease_holder = lease_holder()  # this process, in the retention lease table
        self._trusted: set[str] = set()
        self._version: int | None = None  # the database's change counter last seen
        # Each profile's MQTT transport settings (None: DEFAULT), reloaded on any change.
        self.mqtt_transports: dict[str, MqttTransport | None] = {}
        m.gauge_function(m.CONNECTED_DEVICES, lambda: len(self.connected_devices), m.MQTT)
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
        self._version = await self.worker.call(Registry.change_counter)
        self.mqtt_transports = self.worker.reader.mqtt_transports()
        self.ready = True

    async def on_broker_post_start(self) -> None:
        await self._refresh_trust_store()
        self._spawn(self._watch_for_changes())
        self._spawn(self._report_activity())
        self._spawn(self._prune_on_schedule())

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.ready:
            await self.worker.call(Registry.record_activity, self.activity.take_changes(now_ms()))
            await self.worker.call(Registry.release_lease, LEASE_TASK, self._lease_holder)
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

    # --- logins -------------------------------------------------------------------------------

    async def authenticate(self, *, session: Session) -> bool:
        for key in (ROLE, DEVICE, CREDENTIALS_VERSION, CLIENT_RPC_REPLIES, SESSION_OWNER):
            session.attributes.pop(key, None)
        # A will is a publish the broker would route as it is, past process_publish: a device
        # could speak for another one to applications. ThingsBoard ignores wills; so do we.
        session.will_flag, session.will_topic, session.will_message = False, None, None
        address = session.remote_address or ""
        if self.limiter.is_blocked(address):
            session.attributes[LOGIN_REFUSAL] = LoginRefusal.CONNECTION_RATE_EXCEEDED
            _logins(m.UNKNOWN, m.BLOCKED).inc()
            return False
        cert_der = session.ssl_object.getpeercert(binary_form=True) if session.ssl_object else None
        client_id = "" if session.attributes.get(CLIENT_ID_GENERATED) else session.client_id
        # Logins only read, on the event loop's own connection; an unknown certificate may have
        # to provision its device (a write), and that goes to the database thread.
        result = self.worker.reader.mqtt_login(client_id, session.username, session.password, cert_der, provision=False)
        if cert_der is not None and result.outcome is LoginOutcome.NOT_AUTHORIZED:
            result = await self.worker.call(Registry.mqtt_login, client_id, session.username, session.password, cert_der)
        _logins(m.login_credentials_type(result, session.username, cert_der is not None), m.login_outcome(result)).inc()
        if result.provisioning is not None:
            _provisioning(m.provision_strategy(result.provisioning), result.provisioning.status.value).inc()
        if result.outcome is LoginOutcome.PROVISION_SESSION:
            # It proved nothing: it owns no session (the hardened broker gives it one nobody else
            # can reach) and it never clears its address's failed logins.
            session.attributes[ROLE] = ROLE_PROVISION
            if session.client_id == PROVISION_LOGIN:
                # Under a plain amqtt, where one client id is one session, the many devices that
                # provision with client id "provision" at once would evict each other.
                session.client_id = f"{PROVISION_LOGIN}/{uuid.uuid4()}"
            return True
        if result.outcome is LoginOutcome.APPLICATION:
            session.attributes.update({ROLE: ROLE_APPLICATION, SESSION_OWNER: f"application:{result.application}"})
        elif result.outcome is LoginOutcome.SERVICE:
            session.attributes.update({ROLE: ROLE_SERVICE, SESSION_OWNER: f"service:{result.application}"})
        elif result.outcome is LoginOutcome.ACCEPTED:
            if result.device.profile_id not in self.mqtt_transports:  # a profile newer than the last reload
                self.mqtt_transports = self.worker.reader.mqtt_transports()
            session.attributes.update({ROLE: ROLE_DEVICE, DEVICE: result.device, SESSION_OWNER: f"device:{result.device.id}",
                                       CREDENTIALS_VERSION: result.credentials_version, CLIENT_RPC_REPLIES: {}})
        else:
            if result.outcome is not LoginOutcome.SERVER_UNAVAILABLE:
                self.limiter.failed(address)
            session.attributes[LOGIN_REFUSAL] = _REFUSALS[result.outcome]
            log.info("login refused (%s) from %s", result.outcome.value, address)
            return False
        self.limiter.succeeded(address)  # a secret (token, password, certificate) was proved
        return True

    async def on_broker_client_connected(self, *, client_id: str, client_session: Session) -> None:
        if client_session.attributes.get(ROLE) == ROLE_SERVICE:
            self.connected_services[client_id] = client_session
            return
        device: Device | None = client_session.attributes.get(DEVICE)
        if device is None:
            return
        # One live session per device (ThingsBoard's rule): a login with another client id
        # closes the older connection. Its end is told here, before the new start, because its
        # own disconnect handling finds itself replaced and says nothing.
        previous = self.connected_devices.get(device.id)
        self.connected_devices[device.id] = client_session
        self.activity.connected(device.id, now_ms())
        if previous is not None and previous is not client_session:
            log.info("device %s connected again; closing its older session", device.name)
            await self._disconnect(previous, DisconnectReason.SESSION_TAKEN_OVER)
            await self._publish_event(device.id, "disconnected")
        await self._publish_event(device.id, "connected")

    async def on_broker_client_disconnected(self, *, client_id: str, client_session: Session) -> None:
        close_timer = client_session.attributes.pop(PROVISION_CLOSE_TIMER, None)
        if close_timer is not None:
            close_timer.cancel()
        if self.connected_services.get(client_id) is client_session:
            del self.connected_services[client_id]
        device: Device | None = client_session.attributes.get(DEVICE)
        if device is not None and self.connected_devices.get(device.id) is client_session:
            del self.connected_devices[device.id]
            self.activity.disconnected(device.id, now_ms())
            await self._publish_event(device.id, "disconnected")

    # --- the ACL ------------------------------------------------------------------------------

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool:
        role = session.attributes.get(ROLE) if session is not None else None
        if role is None or topic is None:
            return False
        if action is Action.RECEIVE:
            # Only applications get broadcasts; devices never see each other's v1/devices/me/...
            return role in NAMESPACE_ROLES and is_application_filter(topic)
        if action is Action.PUBLISH:
            return False  # client publishes are processed, never routed as they are
        if role == ROLE_PROVISION:
            allowed = topic == PROVISION_RESPONSE
        elif role in NAMESPACE_ROLES:
            allowed = is_application_filter(topic)
        else:
            allowed = device_subscription(topic, self._transport(session)) is not None
        if allowed:
            # Kept with the session: a resumed session's subscriptions (amqtt's) still push.
            session.attributes.setdefault(SUBSCRIPTIONS, {})[topic] = 1  # the granted QoS follows in on_..._subscribed
        return allowed

    # Server-pushed messages use the QoS the client subscribed with, and stop when it
    # unsubscribes (SPEC §2.4, §2.7, §9.3).
    async def on_broker_client_subscribed(self, *, client_id: str, topic: str, qos: int) -> None:
        session = self.context.get_session(client_id)
        if session is not None and topic in session.attributes.get(SUBSCRIPTIONS, {}):
            session.attributes[SUBSCRIPTIONS][topic] = min(qos, 1)

    async def on_broker_client_unsubscribed(self, *, client_id: str, topic: str) -> None:
        session = self.context.get_session(client_id)
        if session is not None:
            session.attributes.get(SUBSCRIPTIONS, {}).pop(topic, None)

    def _transport(self, session: Session) -> MqttTransport | None:
        """The MQTT transport settings of a device session's profile."""
        return self.mqtt_transports.get(session.attributes[DEVICE].profile_id)

    def _push_target(self, session: Session, kind: SubscriptionKind) -> tuple[str, int] | None:
        """(topic or topic prefix, QoS) for server-pushed messages of `kind`, if subscribed."""
        transport = self._transport(session)
        for topic_filter, qos in session.attributes.get(SUBSCRIPTIONS, {}).items():
            meaning = device_subscription(topic_filter, transport)
            if meaning is not None and meaning[0] is kind:
                return meaning[1], qos
        return None

    @staticmethod
    def _reply_qos(session: Session, reply_topic: str) -> int:
        """Answers go out whether or not the client subscribed; at its QoS if it did, else 1."""
        reply_filter = reply_topic.rsplit("/", 1)[0] + "/+" if reply_topic != PROVISION_RESPONSE else reply_topic
        return session.attributes.get(SUBSCRIPTIONS, {}).get(reply_filter, 1)

    # --- publishes ----------------------------------------------------------------------------

    async def on_broker_message_received(self, *, client_id: str, message) -> None:
        if self._inline or message is None:
            return  # the hardened broker calls process_publish itself, before the PUBACK
        session = self.context.get_session(client_id)
        if session is not None:
            verdict = await self.process_publish(session, message.topic, bytes(message.data or b""))
            _puback, disconnect = verdict.answer(MQTT_311, message.qos)
            if disconnect is not None:
                await self._disconnect(session, disconnect)

    async def process_publish(self, session: Session, topic: str, payload: bytes,
                              properties: MessageProperties | None = None) -> PublishVerdict:
        started = time.perf_counter()
        role = session.attributes.get(ROLE)
        if role == ROLE_DEVICE:
            publish = classify_device_publish(topic, self._transport(session))
            _messages_in[publish.action].inc()
            self.activity.active(session.attributes[DEVICE].id, now_ms())
            try:
                if len(payload) > self.config.max_payload_size:
                    return PublishVerdict.PACKET_TOO_LARGE
                return await self._device_publish(session, publish, topic, payload, properties)
            finally:
                _publish_seconds[publish.action].observe(time.perf_counter() - started)
        try:
            return await self._other_publish(session, role, topic, payload, properties)
        finally:
            _publish_seconds_by_role(role or "none").observe(time.perf_counter() - started)

    async def _other_publish(self, session: Session, role: str | None, topic: str, payload: bytes,
                             properties: MessageProperties | None) -> PublishVerdict:
        if len(payload) > self.config.max_payload_size:
            return PublishVerdict.PACKET_TOO_LARGE
        if role == ROLE_PROVISION:
            return await self._provision_publish(session, topic, payload)
        if role == ROLE_APPLICATION:
            return await self._application_publish(session, topic, payload, properties)
        if role == ROLE_SERVICE:
            if device_data_device(topic) is not None:  # an HTTP or CoAP device's data, already stored
                await self._republish_raw(topic, payload, properties)
                return PublishVerdict.ACK
            return await self._application_publish(session, topic, payload, properties)
        return PublishVerdict.FAILED

    async def _device_publish(self, session: Session, publish, topic: str, payload: bytes,
                              properties: MessageProperties | None) -> PublishVerdict:
        device: Device = session.attributes[DEVICE]
        action = publish.action
        if action is DeviceAction.UNKNOWN:
            return PublishVerdict.TOPIC_NAME_INVALID  # dropped, connection kept (SPEC §2.2)
        if action is DeviceAction.GATEWAY:
            return PublishVerdict.NO_ACK
        if action is DeviceAction.CLAIM:
            return PublishVerdict.ACK  # claiming is out of scope; accepted like ThingsBoard does

        if action is DeviceAction.TELEMETRY:
            records = parse_telemetry(payload, max_bytes=self.config.max_payload_size)
            if isinstance(records, PayloadError):
                return self._invalid_payload(session, topic, records)
            stamp = now_ms()  # one server time for the stored and the republished copy
            records = [TelemetryRecord(stamp if r.ts is None else r.ts, r.values) for r in records]
            await self.worker.write(DeviceDataWrite(device.id, telemetry=tuple(records)))
            await self._republish(device_topic(device.id, "telemetry"), telemetry_message(records), properties)
        elif action is DeviceAction.ATTRIBUTES:
            entries = parse_attributes(payload, max_bytes=self.config.max_payload_size)
            if isinstance(entries, PayloadError):
                return self._invalid_payload(session, topic, entries)
            await self.worker.write(DeviceDataWrite(device.id, attributes=entries))
            await self._republish(device_topic(device.id, "attributes"), attributes_message(entries), properties)
        elif action is DeviceAction.ATTRIBUTE_REQUEST:
            request = parse_attribute_request(payload)
            if isinstance(request, PayloadError):
                return self._invalid_payload(session, topic, request)
            answer = self.worker.reader.device_attributes(device.id, request.client_keys, request.shared_keys)
            self._send(session, publish.reply_topic, json_bytes(answer), self._reply_qos(session, publish.reply_topic),
                       kind="attributes_response")
        elif action is DeviceAction.RPC_RESPONSE:
            await self._republish_raw(device_topic(device.id, "rpc", "response", publish.request_id), payload,
                                      properties)
        elif action is DeviceAction.RPC_REQUEST:
            rpc = parse_rpc_request(payload)
            if isinstance(rpc, PayloadError):
                return self._invalid_payload(session, topic, rpc)
            if rpc.method == "getSessionLimits":
                self._send(session, publish.reply_topic, json_bytes(self._session_limits(device)),
                           self._reply_qos(session, publish.reply_topic), kind="rpc_reply")
            else:
                session.attributes[CLIENT_RPC_REPLIES][publish.request_id] = publish.reply_topic
                await self._republish(device_topic(device.id, "rpc", "request", publish.request_id),
                                      rpc_request_message(rpc.method, rpc.params), properties)
        return PublishVerdict.ACK

    def _invalid_payload(self, session: Session, topic: str, error: PayloadError) -> PublishVerdict:
        log.info("invalid payload from %s on %s: %s", session.attributes[DEVICE].name, topic, error.message)
        transport = self._transport(session)
        if transport is not None and transport.send_ack_on_validation_exception:
            return PublishVerdict.PAYLOAD_FORMAT_INVALID_ACKED
        return PublishVerdict.PAYLOAD_FORMAT_INVALID

    def _session_limits(self, device: Device) -> dict:
        no_limits = {"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""}
        limits = {"maxPayloadSize": self.config.max_payload_size, "maxInflightMessages": MAX_IN_FLIGHT,
                  "rateLimits": no_limits}
        if device.is_gateway:
            limits["gatewayRateLimits"] = dict(no_limits)
        return limits

    async def _provision_publish(self, session: Session, topic: str, payload: bytes) -> PublishVerdict:
        if topic != PROVISION_REQUEST:
            return PublishVerdict.NOT_ALLOWED  # a provisioning session may do nothing else (SPEC §3.1)
        parsed = parse_json(payload)
        if isinstance(parsed, PayloadError):
            _provisioning(m.NO_PROFILE, m.PROVISION_INVALID).inc()
            return PublishVerdict.PAYLOAD_FORMAT_INVALID
        try:
            request = ProvisionRequest.from_json(parsed)
            result = await self.worker.call_write(Registry.provision, request, transport="MQTT",
                                                  remote_address=session.remote_address)
        except ProvisionRequestError as e:
            _provisioning(m.NO_PROFILE, m.PROVISION_INVALID).inc()
            log.info("closing provisioning session from %s: %s", session.remote_address, e)
            return PublishVerdict.FAILED
        _provisioning(m.provision_strategy(result), result.status.value).inc()
        self._send_after_answer(session, PROVISION_RESPONSE, json_bytes(result.to_json()),
                                self._reply_qos(session, PROVISION_RESPONSE), kind="provision_response")
        if result.status is ProvisionStatus.SUCCESS:
            await self._publish_event(result.device_id, "provisioned")
            if result.credentials_type is CredentialsType.X509_CERTIFICATE:
                await self._refresh_trust_store()  # the device brought its own certificate
        # ThingsBoard closes provisioning connections 60 s after answering, whatever the answer.
        # Most devices leave first, and the timer then goes with their session (see
        # on_broker_client_disconnected) rather than keep it alive for the rest of the minute.
        session.attributes[PROVISION_CLOSE_TIMER] = asyncio.get_running_loop().call_later(
            self.config.provision_close_seconds,
            lambda: self._spawn(self._disconnect(session, DisconnectReason.MAXIMUM_CONNECT_TIME)))
        return PublishVerdict.ACK

    async def _application_publish(self, sender: Session, topic: str, payload: bytes,
                                   properties: MessageProperties | None) -> PublishVerdict:
        """An application (or a service account) speaks to a device. A device connected here
        gets it at once; the service accounts get what may be for a device of theirs (HTTP and
        CoAP devices wait for it in long polls)."""
        publish = classify_application_publish(topic)
        if publish is None:
            return PublishVerdict.ACK
        target = self.connected_devices.get(publish.device_id)
        if publish.action is ApplicationAction.SHARED_ATTRIBUTES:
            # A service account has stored the change itself: storing it again here could put
            # an older value back over a newer one it has stored since.
            update = await self._update_shared_attributes(publish.device_id, target, payload, properties,
                                                          store=sender.attributes.get(ROLE) != ROLE_SERVICE)
            if update is not None:
                self._to_services(sender, topic, json_bytes(update), properties)
        elif publish.action is ApplicationAction.RPC_CALL:
            rpc = parse_rpc_request(payload)
            if isinstance(rpc, PayloadError):
                log.info("application RPC to %s ignored: %s", publish.device_id, rpc.message)
                return PublishVerdict.ACK
            call = json_bytes(rpc_request_message(rpc.method, rpc.params))
            push = self._push_target(target, SubscriptionKind.RPC_REQUESTS) if target is not None else None
            if push is not None:
                self._send(target, f"{push[0]}{publish.request_id}", call, push[1], properties, kind="rpc_call")
            elif not self._to_services(sender, topic, call, properties):
                await self._republish(device_topic(publish.device_id, "rpc", "response", publish.request_id),
                                      {"error": "Device is not connected or not subscribed to RPC"}, properties)
        elif target is not None:  # RPC_REPLY to the device's client-side RPC
            replies = target.attributes.get(CLIENT_RPC_REPLIES, {})
            reply_topic = replies.pop(publish.request_id, f"v1/devices/me/rpc/response/{publish.request_id}")
            self._send(target, reply_topic, payload, self._reply_qos(target, reply_topic), properties, kind="rpc_reply")
        else:
            self._to_services(sender, topic, payload, properties)
        return PublishVerdict.ACK

    def _to_services(self, sender: Session, topic: str, payload: bytes, properties: MessageProperties | None) -> bool:
        """Hand a message for a device to the service accounts (not back to the one that sent
        it); False if none is connected."""
        services = [s for s in self.connected_services.values() if s is not sender]
        for service in services:
            self._send(service, topic, payload, 1, properties)
        return bool(services)

    async def _update_shared_attributes(self, device_id: str, target: Session | None, payload: bytes,
                                        properties: MessageProperties | None, *, store: bool = True) -> dict | None:
        """Store (unless told not to) and push an update; returns it as devices are sent it, or
        None if it was not stored."""
        parsed = parse_json(payload)
        deleted = parsed.get("deleted") if isinstance(parsed, dict) and len(parsed) == 1 else None
        try:
            if isinstance(deleted, list) and all(isinstance(k, str) for k in deleted):
                if store:
                    await self.worker.write(DeviceDataWrite(device_id, deleted=tuple(deleted), scope=AttributeScope.SHARED))
                update = {"deleted": deleted}
            else:
                entries = parse_attributes(payload)
                if isinstance(entries, PayloadError):
                    log.info("shared attributes for %s ignored: %s", device_id, entries.message)
                    return None
                if store:
                    await self.worker.write(DeviceDataWrite(device_id, attributes=entries, scope=AttributeScope.SHARED))
                update = attributes_message(entries)
        except Exception as e:  # an unknown device id, most likely
            log.info("shared attributes for %s not stored: %s", device_id, e)
            return None
        push = self._push_target(target, SubscriptionKind.ATTRIBUTE_UPDATES) if target is not None else None
        if push is not None:  # pushed only to devices subscribed to attribute updates
            self._send(target, push[0], json_bytes(update), push[1], properties, kind="attributes_update")
        return update

    # --- sending ------------------------------------------------------------------------------

    def _send(self, session: Session, topic: str, payload: bytes, qos: int,
              properties: MessageProperties | None = None, *, kind: str | None = None) -> None:
        """Publish to this one connection, subscribed or not (never through the fan-out); `kind`:
        a message to a device, counted as such."""
        entry = self._broker._sessions.get(session.client_id)
        if entry is None or entry[0] is not session or entry[0].transitions.state != "connected":
            return
        if kind is not None:
            _messages_out(kind).inc()
        self._deliver(entry[1], topic, payload, qos, properties)

    def _send_after_answer(self, session: Session, topic: str, payload: bytes, qos: int, *, kind: str) -> None:
        """`_send`, once the PUBLISH being processed has had its PUBACK (SPEC §3.3: ThingsBoard
        acknowledges a provisioning request, then publishes the response). Under plain amqtt,
        which acknowledges on its own schedule, at once."""
        entry = self._broker._sessions.get(session.client_id)
        after_answer = getattr(entry[1], "after_answer", None) if entry is not None else None
        send = functools.partial(self._send, session, topic, payload, qos, kind=kind)
        if after_answer is None or not after_answer(send):
            send()

    def _deliver(self, handler, topic: str, payload: bytes, qos: int, properties: MessageProperties | None) -> None:
        publish_soon = getattr(handler, "publish_soon", None)  # the hardened broker's handlers
        if publish_soon is None or not publish_soon(topic, payload, qos, properties):
            self._spawn(self._publish_on(handler, topic, payload, qos, properties))

    @staticmethod
    def _publish_on(handler, topic: str, payload: bytes, qos: int, properties: MessageProperties | None):
        if properties:  # only the hardened broker's handlers take them (and MQTT 5 sends them)
            return handler.mqtt_publish(topic, payload, qos, retain=False, properties=properties)
        return handler.mqtt_publish(topic, payload, qos, retain=False)

    async def _republish(self, topic: str, value, properties: MessageProperties | None = None) -> None:
        await self._republish_raw(topic, json_bytes(value), properties)

    async def _republish_raw(self, topic: str, payload: bytes, properties: MessageProperties | None = None) -> None:
        """Deliver to the applications subscribed to `topic`, as amqtt's broadcast loop would,
        minus its queue, its wait and its plugin round trip per message: on the telemetry path
        that fan-out cost more than storing the message."""
        broker = self._broker
        for topic_filter, subscriptions in broker._subscriptions.items():
            if not subscriptions or not is_application_filter(topic_filter) or not broker._matches(topic, topic_filter):
                continue
            for session, qos in subscriptions:
                if session.attributes.get(ROLE) != ROLE_APPLICATION:
                    continue
                if session.transitions.state == "connected":
                    handler = broker._get_handler(session)
                    if handler is not None:
                        _to_applications.inc()
                        self._deliver(handler, topic, payload, qos, properties)
                elif not session.clean_session and qos > 0:  # kept for a persistent session's return
                    await broker._retain_broadcast_message({"session": None, "topic": topic, "data": payload},
                                                           qos, session)

    async def _publish_event(self, device_id: str, event: str) -> None:
        await self._republish(device_topic(device_id, "events"), event_message(event, now_ms()))

    async def _disconnect(self, session: Session, reason: DisconnectReason) -> None:
        entry = self._broker._sessions.get(session.client_id)
        if entry is not None and entry[0] is session and session.transitions.state == "connected":
            handler = entry[1]
            if hasattr(handler, "disconnect"):  # the hardened broker's: tells MQTT 5 clients why
                await handler.disconnect(reason)
            else:
                await handler.handle_connection_closed()

    # --- changes made by other processes ------------------------------------------------------

    async def _watch_for_changes(self) -> None:
        while True:
            await asyncio.sleep(self.config.change_poll_seconds)
            await self.worker.checkpoint()
            version = await self.worker.call(Registry.change_counter)
            if version == self._version:
                continue
            self._version = version
            self.mqtt_transports = self.worker.reader.mqtt_transports()
            await self._logout_changed_devices()
            await self._refresh_trust_store()

    async def _report_activity(self) -> None:
        """Store the devices' activity (gatehouse.device_activity) about once a second, and
        now and then mark inactive the devices nobody reported for a while."""
        next_check = 0.0
        while True:
            await asyncio.sleep(self.config.activity_report_seconds)
            now = now_ms()
            changes = self.activity.take_changes(now)
            if changes:
                await self.worker.call(Registry.record_activity, changes)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + self.config.inactivity_check_seconds
                await self.worker.call(Registry.expire_activity, now, connected=list(self.connected_devices))

    async def _prune_on_schedule(self) -> None:
        """Retention (gatehouse.retention), once per interval, by the one process of those
        sharing the database that holds the lease; batch by batch, so that the devices' group
        commits run between the batches."""
        config = self.config
        policy = RetentionPolicy(config.telemetry_retention_days, config.audit_retention_days)
        holder = self._lease_holder
        # Renewed every run; should this process die, another takes over when it runs out.
        lease_seconds = 2 * config.retention_interval_seconds + 60
        if not policy.cutoffs(0):
            return  # everything is kept
        while True:
            if await self.worker.call(Registry.take_lease, LEASE_TASK, holder, lease_seconds):
                for kind, before in policy.cutoffs(now_ms()).items():
                    removed = 0
                    while True:
                        n = await self.worker.call(Registry.prune_batch, kind, before)
                        removed += n
                        if n < BATCH_ROWS:
                            break
                        await asyncio.sleep(BATCH_PAUSE_SECONDS)
                    if removed:
                        log.info("retention: removed %d %s recorded before %s", removed, kind.value,
                                 utc_text(before))
            await asyncio.sleep(config.retention_interval_seconds)

    async def _logout_changed_devices(self) -> None:
        """Credentials changed or device deleted (by the CLI, the sidecar, ...): ThingsBoard
        closes the device's sessions, and so do we."""
        sessions = dict(self.connected_devices)
        current = await self.worker.call(Registry.credentials_versions, list(sessions))
        for device_id, session in sessions.items():
            if current.get(device_id) != session.attributes.get(CREDENTIALS_VERSION):
                log.info("credentials of %s changed; closing its session", device_id)
                await self._disconnect(session, DisconnectReason.ADMINISTRATIVE_ACTION)

    async def _refresh_trust_store(self) -> None:
        contexts = getattr(self._broker, "ssl_contexts", {})
        if not contexts:
            return
        for anchor_id, text in (await self.worker.call(Registry.new_trust_anchors, self._trusted)).items():
            self._trusted.add(anchor_id)
            try:
                der = certificates.der_bytes(certificates.parse_certificate(text))
            except certificates.CertificateError:
                continue  # provisioning stores what devices send (SPEC §3.4); it cannot log in anyway
            for context in contexts.values():
                context.load_verify_locations(cadata=der)
