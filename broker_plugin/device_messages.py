"""What devices publish (SPEC §2.2, §2.7): telemetry and attributes, stored and then fanned out
to the applications; attribute requests and getSessionLimits, answered on the one connection;
RPC answers and client-side RPC requests, handed to the applications. Then provisioning over
MQTT (SPEC §3): the one request a provisioning session may publish.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine

from amqtt.session import Session

from gatehouse import device_requests
from gatehouse import metrics as m
from gatehouse.application_namespace import device_topic, rpc_request_message
from gatehouse.clock import now_ms
from gatehouse.device_activity import ActivityTracker
from gatehouse.device_requests import PROVISIONED_EVENT, attributes_upload, telemetry_upload
from gatehouse.models import CredentialsType, Device
from gatehouse.payloads import PayloadError, json_bytes, parse_attribute_request, parse_rpc_request
from gatehouse.registry import Registry

from .connections import Connections
from .interfaces import MAX_IN_FLIGHT, DisconnectReason, MessageProperties, PublishVerdict
from .logins import TrustStore
from .registry_worker import RegistryWorker
from .session_state import CLIENT_RPC_REPLIES, DEVICE, PROVISION_CLOSE_TIMER, ProfileTransports
from .topic_acl import reply_qos
from .topics import PROVISION_REQUEST, PROVISION_RESPONSE, DeviceAction, DevicePublish, classify_device_publish

log = logging.getLogger(__name__)

_messages_in = {action: m.MESSAGES.labels(m.MQTT, m.IN, action.value.lower()) for action in DeviceAction}
_publish_seconds = {action: m.REQUEST_SECONDS.labels(m.MQTT, action.value.lower()) for action in DeviceAction}
_provisioning = m.Children(m.PROVISIONING, m.MQTT)


class DeviceMessages:
    def __init__(self, worker: RegistryWorker, connections: Connections, transports: ProfileTransports,
                 activity: ActivityTracker, max_payload_size: int):
        self._worker = worker
        self._connections = connections
        self._transports = transports
        self._activity = activity
        self._max_payload_size = max_payload_size

    async def process(self, session: Session, topic: str, payload: bytes,
                      properties: MessageProperties | None) -> PublishVerdict:
        started = time.perf_counter()
        publish = classify_device_publish(topic, self._transports.of(session))
        _messages_in[publish.action].inc()
        self._activity.active(session.attributes[DEVICE].id, now_ms())
        try:
            if len(payload) > self._max_payload_size:
                return PublishVerdict.PACKET_TOO_LARGE
            return await self._act(session, publish, topic, payload, properties)
        finally:
            _publish_seconds[publish.action].observe(time.perf_counter() - started)

    async def _act(self, session: Session, publish: DevicePublish, topic: str, payload: bytes,
                   properties: MessageProperties | None) -> PublishVerdict:
        device: Device = session.attributes[DEVICE]
        connections = self._connections
        action = publish.action
        if action is DeviceAction.UNKNOWN:
            return PublishVerdict.TOPIC_NAME_INVALID  # dropped, connection kept (SPEC §2.2)
        if action is DeviceAction.GATEWAY:
            return PublishVerdict.NO_ACK
        if action is DeviceAction.CLAIM:
            return PublishVerdict.ACK  # claiming is out of scope; accepted like ThingsBoard does

        if action in (DeviceAction.TELEMETRY, DeviceAction.ATTRIBUTES):
            if action is DeviceAction.TELEMETRY:
                upload = telemetry_upload(device.id, payload, now=now_ms(), max_bytes=self._max_payload_size)
            else:
                upload = attributes_upload(device.id, payload, max_bytes=self._max_payload_size)
            if isinstance(upload, PayloadError):
                return self._invalid_payload(session, topic, upload)
            await self._worker.write(upload.write)
            await connections.republish(device_topic(device.id, upload.topic), upload.message, properties)
        elif action is DeviceAction.ATTRIBUTE_REQUEST:
            request = parse_attribute_request(payload)
            if isinstance(request, PayloadError):
                return self._invalid_payload(session, topic, request)
            answer = await self._worker.read(Registry.device_attributes, device.id, request.client_keys,
                                            request.shared_keys)
            connections.send(session, publish.reply_topic, json_bytes(answer), reply_qos(session, publish.reply_topic),
                             kind="attributes_response")
        elif action is DeviceAction.RPC_RESPONSE:
            await connections.republish_raw(device_topic(device.id, "rpc", "response", publish.request_id), payload,
                                            properties)
        elif action is DeviceAction.RPC_REQUEST:
            rpc = parse_rpc_request(payload)
            if isinstance(rpc, PayloadError):
                return self._invalid_payload(session, topic, rpc)
            if rpc.method == "getSessionLimits":
                connections.send(session, publish.reply_topic, json_bytes(self._session_limits(device)),
                                 reply_qos(session, publish.reply_topic), kind="rpc_reply")
            else:
                session.attributes[CLIENT_RPC_REPLIES][publish.request_id] = publish.reply_topic
                await connections.republish(device_topic(device.id, "rpc", "request", publish.request_id),
                                            rpc_request_message(rpc.method, rpc.params), properties)
        return PublishVerdict.ACK

    def _invalid_payload(self, session: Session, topic: str, error: PayloadError) -> PublishVerdict:
        log.info("invalid payload from %s on %s: %s", session.attributes[DEVICE].name, topic, error.message)
        transport = self._transports.of(session)
        if transport is not None and transport.send_ack_on_validation_exception:
            return PublishVerdict.PAYLOAD_FORMAT_INVALID_ACKED
        return PublishVerdict.PAYLOAD_FORMAT_INVALID

    def _session_limits(self, device: Device) -> dict:
        no_limits = {"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""}
        limits = {"maxPayloadSize": self._max_payload_size, "maxInflightMessages": MAX_IN_FLIGHT,
                  "rateLimits": no_limits}
        if device.is_gateway:
            limits["gatewayRateLimits"] = dict(no_limits)
        return limits


class Provisioning:
    """A provisioning session's request on /provision/request, answered on /provision/response;
    the session is closed a while after the answer."""

    def __init__(self, worker: RegistryWorker, connections: Connections, trust_store: TrustStore,
                 spawn: Callable[[Coroutine], asyncio.Task], close_seconds: float):
        self._worker = worker
        self._connections = connections
        self._trust_store = trust_store
        self._spawn = spawn
        self._close_seconds = close_seconds

    async def process(self, session: Session, topic: str, payload: bytes) -> PublishVerdict:
        if topic != PROVISION_REQUEST:
            return PublishVerdict.NOT_ALLOWED  # a provisioning session may do nothing else (SPEC §3.1)
        answer = await self._worker.call_write(device_requests.provision, payload, transport="MQTT",
                                               remote_address=session.remote_address)
        _provisioning(*answer.metric_labels).inc()
        if isinstance(answer.refused, PayloadError):
            return PublishVerdict.PAYLOAD_FORMAT_INVALID
        if answer.refused is not None:
            log.info("closing provisioning session from %s: %s", session.remote_address, answer.why_refused)
            return PublishVerdict.FAILED
        result = answer.result
        connections = self._connections
        connections.send_after_answer(session, PROVISION_RESPONSE, json_bytes(result.to_json()),
                                      reply_qos(session, PROVISION_RESPONSE), kind="provision_response")
        if answer.succeeded:
            await connections.publish_event(result.device_id, PROVISIONED_EVENT)
            if result.credentials_type is CredentialsType.X509_CERTIFICATE:
                await self._trust_store.refresh()  # the device brought its own certificate
        # ThingsBoard closes provisioning connections 60 s after answering, whatever the answer.
        # Most devices leave first, and the timer then goes with their session (see
        # session_ended) rather than keep it alive for the rest of the minute.
        session.attributes[PROVISION_CLOSE_TIMER] = asyncio.get_running_loop().call_later(
            self._close_seconds,
            lambda: self._spawn(connections.disconnect(session, DisconnectReason.MAXIMUM_CONNECT_TIME)))
        return PublishVerdict.ACK

    @staticmethod
    def session_ended(session: Session) -> None:
        close_timer = session.attributes.pop(PROVISION_CLOSE_TIMER, None)
        if close_timer is not None:
            close_timer.cancel()
