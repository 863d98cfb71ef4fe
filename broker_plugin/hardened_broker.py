"""amqtt's Broker with the session-handling bugs fixed and what a production broker needs added
(docs/amqtt.md, G1–G6, G9, G13):

- a fresh CONNECT is authenticated before any existing session is touched, so a refused client
  can neither take over a persistent session's certificate identity (G1) nor wipe another
  client's subscriptions (G2), and is never left registered (G3); an exception in a plugin is a
  refusal, not a dropped socket (G4);
- sessions belong to identities, not client ids: each is keyed by the identity its login proved
  (interfaces.SESSION_OWNER) and its client id, so a login resumes, replaces or ends only its
  own identity's sessions, and a take-over ends the old connection before the new one starts;
- the auth plugin chooses why a login is refused (G13), and the broker says so in the client's
  protocol version;
- MQTT 5 on the same listeners (broker_plugin.mqtt5_handler), sharing sessions and plugins;
- keep-alive is enforced at 1.5 × the client's value (G5) and CONNECT must arrive in time (G6);
- every PUBLISH goes to the Gatehouse plugin, which decides about the PUBACK (G9);
- subscriptions are granted QoS 1 at most, as ThingsBoard does.

It overrides private amqtt methods, so amqtt is pinned to the release these were written
against; tests/test_hardened_broker.py keeps a regression test for each fix.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import ssl
import time
import uuid

import mqtt5
from amqtt.broker import Broker
from amqtt.contexts import ListenerType
from amqtt.errors import MQTTError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import ConnackPacket
from amqtt.mqtt.constants import QOS_1

from .connect_gate import protocol_level, read_connect
from .interfaces import (
    CLIENT_ID,
    LOGIN_REFUSAL,
    MQTT_5,
    SESSION_OWNER,
    DisconnectReason,
    LoginRefusal,
    PublishProcessor,
    PublishVerdict,
)
from .mqtt5_handler import (
    CLEAN_START,
    NEVER_EXPIRES,
    SESSION_EXPIRY,
    Mqtt5ProtocolHandler,
    connect_session,
    decode,
)
from .mqtt311_codec import ConnectRefused, MalformedPacket
from .protocol_handler import GatehouseProtocolHandler, mqtt311_connect_session

_PREAUTHENTICATED = "gatehouse.preauthenticated"
KEEPALIVE_FACTOR = 1.5
# A take-over closes the old connection and waits this long at most for its end to be handled.
TAKE_OVER_TIMEOUT = 5.0
TAKE_OVER_ATTEMPTS = 3
# amqtt listens with asyncio's default backlog of 100: when 2,000 devices reconnect at once the
# kernel drops the SYNs past it and the clients retry 1, 3 and 7 s later, which stretched a
# reconnect storm from about 3 s to 15. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096


def session_key(owner: str | None, client_id: str) -> str:
    """The broker's key of a session: its owner's identity and the client id, so that two
    identities using one client id (firmware with a fixed one, or an attacker) never meet."""
    if owner is None:
        owner = f"anonymous:{uuid.uuid4().hex}"
    return f"{owner}|{client_id}"


class HardenedBroker(Broker):
    def __init__(self, config, *, connect_timeout: float = 10.0, **kwargs):
        super().__init__(config, **kwargs)
        self.connect_timeout = connect_timeout
        self.publish_processor: PublishProcessor | None = None
        self.ssl_contexts: dict[str, ssl.SSLContext] = {}  # by bind address, for live trust updates
        self._publish_tasks: set[asyncio.Task] = set()

    def _create_ssl_context(self, listener) -> ssl.SSLContext:
        context = Broker._create_ssl_context(listener)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # A registered device certificate is a trust anchor by itself, CA-signed or not.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        self.ssl_contexts[listener["bind"]] = context
        return context

    async def _create_server_instance(self, listener_name, listener_type, address, port, ssl_context):
        if listener_type != ListenerType.TCP:
            return await super()._create_server_instance(listener_name, listener_type, address, port, ssl_context)
        return await asyncio.start_server(functools.partial(self.stream_connected, listener_name=listener_name),
                                          address, port, reuse_address=True, ssl=ssl_context, backlog=LISTEN_BACKLOG)

    def listening_port(self, listener_name: str) -> int:
        """The port a listener got (configured as port 0 in tests)."""
        return self._servers[listener_name].instance.sockets[0].getsockname()[1]

    async def _initialize_client_session(self, reader, writer, remote_address, remote_port):
        connect_packet = await read_connect(reader, writer, self.connect_timeout)
        level = protocol_level(connect_packet)
        if level == MQTT_5:
            handler, incoming = await self._open_mqtt5(connect_packet, writer)
        else:
            handler, incoming = await self._open_mqtt311(connect_packet, writer)

        incoming.attributes[CLIENT_ID] = incoming.client_id
        try:
            accepted = await super()._authenticate(incoming, None)
        except Exception:
            self.logger.exception("auth plugin failed")
            incoming.attributes[LOGIN_REFUSAL] = LoginRefusal.SERVER_UNAVAILABLE  # not the device's fault
            accepted = False
        if not accepted:
            refusal = incoming.attributes.get(LOGIN_REFUSAL, LoginRefusal.NOT_AUTHORIZED)
            code = refusal.code(handler.protocol_level)
            with contextlib.suppress(Exception):
                if handler.protocol_level == MQTT_5:
                    writer.write(mqtt5.ConnAckPacket(reason_code=mqtt5.ConnAckReasonCode(code)).write())
                else:
                    await ConnackPacket.build(0, code).to_stream(writer)
                await writer.close()
            raise MQTTError(f"login refused with CONNACK {code:#04x}")

        session = await self._admit(incoming)
        if session.keep_alive > 0:
            session.keep_alive = math.ceil(session.keep_alive * KEEPALIVE_FACTOR)
        session.attributes[_PREAUTHENTICATED] = True
        if self.publish_processor is not None:
            handler.publish_sink = functools.partial(self._accept_publish, session, handler)
        return handler, session

    async def _admit(self, incoming):
        """The session an authenticated CONNECT gets: its own stored one, resumed, or a new one.

        Sessions are keyed by owner and client id (interfaces.SESSION_OWNER), so whatever happens
        here happens only to sessions of the identity this login proved. A live connection of that
        identity with the same client id is closed first, and its end (the plugins' disconnect
        handling included) is over before the new connection starts: one "disconnected", then one
        "connected", never a session shared by two connections."""
        owner = incoming.attributes.get(SESSION_OWNER)
        if owner is None:  # nobody may resume it, so nothing may outlive its connection
            incoming.clean_session = True
            incoming.attributes[CLEAN_START] = True
        key = incoming.client_id = session_key(owner, incoming.client_id)
        for _ in range(TAKE_OVER_ATTEMPTS):  # a third login of the same key may win the race meanwhile
            existing = self._sessions.get(key)
            if existing is None or not existing[0].transitions.is_connected():
                break
            await self._end_connection(existing[1], DisconnectReason.SESSION_TAKEN_OVER)
        # No await from here to the return: the broker registers the connection right after it.
        # A clean session (MQTT 5: Session Expiry Interval 0) ends with its connection, even
        # while amqtt still holds it: it is never resumed.
        clean_start = incoming.attributes.get(CLEAN_START, incoming.clean_session)
        if existing is not None and (clean_start or existing[0].clean_session):
            self._forget_session(key)
            existing = None
        if existing is None:
            incoming.parent = 0
            return incoming
        # Resume: the same identity, with this connection's credentials, certificate and address.
        session = existing[0]
        for attr in ("clean_session", "will_flag", "will_message", "will_topic", "will_qos", "will_retain",
                     "keep_alive", "username", "password", "ssl_object", "remote_address", "remote_port"):
            setattr(session, attr, getattr(incoming, attr))
        session.attributes.update(incoming.attributes)
        session.parent = 1
        return session

    async def _end_connection(self, handler, reason: DisconnectReason) -> None:
        """Close a live connection and wait (briefly) until the broker has handled its end."""
        await handler.disconnect(reason)
        ended = getattr(handler, "ended", None)
        if ended is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TAKE_OVER_TIMEOUT):
                    await ended.wait()

    def _forget_session(self, key: str) -> None:
        """amqtt's _delete_session without its awaits (it never suspends, but says it might)."""
        session = self._sessions.pop(key)[0]
        for topic_filter in list(self._subscriptions):
            self._del_subscription(topic_filter, session)
            if not self._subscriptions[topic_filter]:
                del self._subscriptions[topic_filter]
        session.clear_queues()

    async def _client_message_loop(self, client_session, handler) -> None:
        try:
            await super()._client_message_loop(client_session, handler)
        finally:
            ended = getattr(handler, "ended", None)
            if ended is not None:
                ended.set()

    async def _handle_disconnect(self, client_session, handler, disconnect_waiter) -> None:
        # amqtt's, minus the will (new_session never keeps one) and with the plugins' disconnect
        # handling awaited, so that a take-over waiting for this connection's end sees it done.
        await self._stop_handler(handler)
        client_session.transitions.disconnect()
        await self.plugins_manager.fire_event(BrokerEvents.CLIENT_DISCONNECTED, wait=True,
                                              client_id=client_session.client_id, client_session=client_session)

    async def _open_mqtt311(self, connect_packet: bytes, writer):
        try:
            incoming = mqtt311_connect_session(connect_packet, writer)
        except ConnectRefused as refused:
            with contextlib.suppress(Exception):
                if refused.connack is not None:
                    await ConnackPacket.build(0, refused.connack).to_stream(writer)
                await writer.close()
            raise MQTTError(str(refused)) from None
        return GatehouseProtocolHandler(self.plugins_manager), incoming

    async def _open_mqtt5(self, connect_packet: bytes, writer):
        try:
            connect = decode(connect_packet)  # a CONNECT: read_connect checked the packet type
        except MalformedPacket as e:
            with contextlib.suppress(Exception):
                writer.write(mqtt5.ConnAckPacket(reason_code=mqtt5.ConnAckReasonCode.MALFORMED_PACKET).write())
                await writer.close()
            raise MQTTError(f"malformed MQTT 5 CONNECT: {e}") from None
        return Mqtt5ProtocolHandler(self.plugins_manager, connect), connect_session(connect, writer)

    async def _authenticate(self, session, listener) -> bool:
        # Called again by _handle_client_session; the real check already ran above.
        return bool(session.attributes.pop(_PREAUTHENTICATED, False))

    async def add_subscription(self, subscription, session) -> int:
        topic_filter, qos = subscription
        # ThingsBoard supports QoS 0 and 1 only: granted QoS is min(requested, 1).
        return await super().add_subscription((topic_filter, min(qos, QOS_1)), session)

    async def _handle_message_delivery(self, client_session, handler, wait_deliver) -> bool:
        message = wait_deliver.result()
        if self.publish_processor is None:  # amqtt's routing; the deferred PUBACK is still ours
            keep = await super()._handle_message_delivery(client_session, handler, wait_deliver)
            if keep and message is not None and message.qos == QOS_1 and message.packet_id is not None:
                await handler.send_puback(message.packet_id)
            return keep
        if message is not None:  # only QoS 2 (3.1.1) comes this way, once amqtt's flow is done
            await self._accept_publish(client_session, handler, message)
        return True

    async def _accept_publish(self, session, handler, message) -> None:
        """Take a PUBLISH straight from the connection's reader. amqtt's way, through the session's
        queue and the client loop's wait on four futures, cost more per message than storing it."""
        answer = handler.expect_answer(message)  # in arrival order, before anything waits
        await handler.in_flight.acquire()  # backpressure: the reader reads no more until a slot frees
        task = asyncio.create_task(self._process_publish(session, handler, message, answer))
        self._publish_tasks.add(task)
        task.add_done_callback(self._publish_tasks.discard)

    async def _process_publish(self, session, handler, message, answer) -> None:
        verdict = PublishVerdict.FAILED
        try:
            topic = message.topic
            if not topic or "#" in topic or "+" in topic:  # MQTT-4.7.3-1, MQTT-3.3.2-2
                verdict = PublishVerdict.NOT_ALLOWED
            else:
                verdict = await self.publish_processor.process_publish(
                    session, topic, bytes(message.data or b""), getattr(message, "properties", None))
        except Exception:
            self.logger.exception("processing a PUBLISH from %s failed", session.client_id)
        finally:
            handler.give_answer(answer, verdict)

    async def _handle_unsubscription(self, client_session, handler, unsubscribe_waiter) -> None:
        # amqtt's, plus whether each filter was subscribed (MQTT 5 answers 0x11 where not)
        unsubscription = unsubscribe_waiter.result()
        existed = []
        for topic in unsubscription.topics:
            existed.append(self._del_subscription(topic, client_session) > 0)
            await self.plugins_manager.fire_event(BrokerEvents.CLIENT_UNSUBSCRIBED,
                                                  client_id=client_session.client_id, topic=topic)
        await handler.acknowledge_unsubscription(unsubscription.packet_id, existed)

    async def _session_monitor(self) -> None:
        """amqtt's, with MQTT 5's per-session expiry: a disconnected session is dropped once its
        own Session Expiry Interval has passed (a 3.1.1 session keeps the configured one)."""
        while True:
            now = time.time()
            expired = []
            for client_id, (session, _) in self._sessions.items():
                if session.transitions.state != "disconnected":
                    continue
                expiry = session.attributes.get(SESSION_EXPIRY, self.config.session_expiry_interval)
                if session.clean_session or session.is_anonymous or (
                        expiry is not None and expiry != NEVER_EXPIRES and session.last_disconnect_time
                        and session.last_disconnect_time + expiry < now):
                    expired.append(client_id)
            for client_id in expired:
                await self._cleanup_session(client_id)
            await asyncio.sleep(1)

    async def shutdown(self) -> None:
        for task in list(self._publish_tasks):
            task.cancel()
        await asyncio.gather(*self._publish_tasks, return_exceptions=True)
        await super().shutdown()
