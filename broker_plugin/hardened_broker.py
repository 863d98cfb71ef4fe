"""amqtt's Broker with the session-handling bugs fixed and what a production broker needs added
(notes/amqtt.md, G1–G6, G9, G13):

- a fresh CONNECT is authenticated before any existing session is touched, so a refused client
  can neither take over a persistent session's certificate identity (G1) nor wipe another
  client's subscriptions (G2), and is never left registered (G3); an exception in a plugin is a
  refusal, not a dropped socket (G4);
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

import mqtt5
from amqtt.broker import Broker
from amqtt.contexts import ListenerType
from amqtt.errors import MQTTError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import ConnackPacket
from amqtt.mqtt.constants import QOS_1
from amqtt.utils import gen_client_id

from .connect_gate import protocol_level, read_connect
from .interfaces import (
    LOGIN_REFUSAL,
    MQTT_5,
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
from .protocol_handler import (
    ConnectRefused,
    GatehouseProtocolHandler,
    MalformedPacket,
    mqtt311_connect_session,
)

_PREAUTHENTICATED = "gatehouse.preauthenticated"
KEEPALIVE_FACTOR = 1.5
# amqtt listens with asyncio's default backlog of 100: when 2,000 devices reconnect at once the
# kernel drops the SYNs past it and the clients retry 1, 3 and 7 s later, which stretched a
# reconnect storm from about 3 s to 15. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096


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

        session = incoming
        existing = self._sessions.get(incoming.client_id) if incoming.client_id else None
        # A clean session (MQTT 5: Session Expiry Interval 0) ends with its connection, even
        # while amqtt still holds it: it is never resumed.
        clean_start = incoming.attributes.get(CLEAN_START, incoming.clean_session)
        if clean_start or (existing is not None and existing[0].clean_session):
            if existing is not None:
                if existing[0].transitions.is_connected():
                    await existing[1].disconnect(DisconnectReason.SESSION_TAKEN_OVER)  # amqtt leaves it running
                await self._delete_session(incoming.client_id)
            if not incoming.client_id:
                incoming.client_id = gen_client_id()
            incoming.parent = 0
        elif existing is not None:
            # Resume the stored session with this connection's identity: nothing of the old
            # connection (its certificate above all) may carry over.
            session = existing[0]
            for attr in ("clean_session", "will_flag", "will_message", "will_topic", "will_qos", "will_retain",
                         "keep_alive", "username", "password", "ssl_object", "remote_address", "remote_port"):
                setattr(session, attr, getattr(incoming, attr))
            session.attributes.clear()
            session.attributes.update(incoming.attributes)
            session.parent = 1
        else:
            incoming.parent = 0
        if session.keep_alive > 0:
            session.keep_alive = math.ceil(session.keep_alive * KEEPALIVE_FACTOR)
        session.attributes[_PREAUTHENTICATED] = True
        if self.publish_processor is not None:
            handler.publish_sink = functools.partial(self._accept_publish, session, handler)
        return handler, session

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
