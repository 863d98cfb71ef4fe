"""The plugin's hold on the broker's connections: which devices and service accounts are
connected here, and the three things done to a connection: publish to that one connection,
fan a message out to the subscribed applications, close it.

amqtt has no public way to reach one connection, so this reaches into the broker's session
table; under the hardened broker its handlers also take MQTT 5 properties, publish without a
task per message, and say why they disconnect.
"""
from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine

from amqtt.session import Session

from gatehouse import metrics as m
from gatehouse.application_namespace import device_topic, event_message, is_application_filter
from gatehouse.clock import now_ms
from gatehouse.payloads import json_bytes

from .interfaces import DisconnectReason, MessageProperties
from .session_state import ROLE, ROLE_APPLICATION

_messages_out = m.Children(m.MESSAGES, m.MQTT, m.OUT)
_to_applications = m.MESSAGES.labels(m.MQTT, m.OUT, "application")


class Connections:
    def __init__(self, broker, spawn: Callable[[Coroutine], asyncio.Task]):
        self._broker = broker
        self._spawn = spawn
        self.devices: dict[str, Session] = {}  # device id -> its one live session here
        # Service sessions (the sidecar) get what applications send to devices not connected here.
        self.services: dict[str, Session] = {}  # client id -> session

    def send(self, session: Session, topic: str, payload: bytes, qos: int,
             properties: MessageProperties | None = None, *, kind: str | None = None) -> None:
        """Publish to this one connection, subscribed or not (never through the fan-out); `kind`:
        a message to a device, counted as such."""
        entry = self._broker._sessions.get(session.client_id)
        if entry is None or entry[0] is not session or entry[0].transitions.state != "connected":
            return
        if kind is not None:
            _messages_out(kind).inc()
        self._deliver(entry[1], topic, payload, qos, properties)

    def send_after_answer(self, session: Session, topic: str, payload: bytes, qos: int, *, kind: str) -> None:
        """`send`, once the PUBLISH being processed has had its PUBACK (SPEC §3.3: ThingsBoard
        acknowledges a provisioning request, then publishes the response). Under plain amqtt,
        which acknowledges on its own schedule, at once."""
        entry = self._broker._sessions.get(session.client_id)
        after_answer = getattr(entry[1], "after_answer", None) if entry is not None else None
        send = functools.partial(self.send, session, topic, payload, qos, kind=kind)
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

    async def republish(self, topic: str, value, properties: MessageProperties | None = None) -> None:
        await self.republish_raw(topic, json_bytes(value), properties)

    async def republish_raw(self, topic: str, payload: bytes, properties: MessageProperties | None = None) -> None:
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

    async def publish_event(self, device_id: str, event: str) -> None:
        await self.republish(device_topic(device_id, "events"), event_message(event, now_ms()))

    async def disconnect(self, session: Session, reason: DisconnectReason) -> None:
        entry = self._broker._sessions.get(session.client_id)
        if entry is not None and entry[0] is session and session.transitions.state == "connected":
            handler = entry[1]
            if hasattr(handler, "disconnect"):  # the hardened broker's: tells MQTT 5 clients why
                await handler.disconnect(reason)
            else:
                await handler.handle_connection_closed()
