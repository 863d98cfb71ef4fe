"""amqtt's broker-side protocol handler (MQTT 3.1.1 on the wire) with what the hardened broker
needs of every connection: a reader that takes whole frames and hands PUBLISHes on at once;
PUBLISHes answered only once processed, in arrival order; the keep-alive enforced; closes that
say why (for MQTT 5, whose handler extends this one).

PUBLISH, PUBACK and CONNACK, the packets of every telemetry message and every login, go through
the byte codec (broker_plugin.mqtt311_codec), not amqtt's packet classes; every other packet
still goes through amqtt.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from amqtt.adapters import BufferReader
from amqtt.mqtt import packet_class
from amqtt.mqtt.constants import QOS_0, QOS_1, QOS_2
from amqtt.mqtt.packet import (
    DISCONNECT,
    PINGREQ,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBSCRIBE,
    UNSUBSCRIBE,
    MQTTFixedHeader,
)
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import (
    INCOMING,
    OutgoingApplicationMessage,
    Session,
)
from amqtt.utils import gen_client_id

from .interfaces import (
    CLIENT_ID_GENERATED,
    MAX_IN_FLIGHT,
    MQTT_311,
    DisconnectReason,
    MessageProperties,
    PublishVerdict,
)
from .mqtt311_codec import (
    MalformedPacket,
    decode_connect,
    decode_publish,
    encode_connack,
    encode_puback,
    encode_publish,
    read_frame,
)

log = logging.getLogger(__name__)

MAX_PACKET_SIZE = 65536 + 4096  # ThingsBoard's 64 KiB payload limit plus room for topic and properties


# Packets amqtt's own handler methods deal with as they are (none of them waits on the client).
_AMQTT_HANDLERS = {PUBACK: "handle_puback", SUBSCRIBE: "handle_subscribe", UNSUBSCRIBE: "handle_unsubscribe",
                   PINGREQ: "handle_pingreq", PUBREL: "handle_pubrel", PUBREC: "handle_pubrec",
                   PUBCOMP: "handle_pubcomp"}


def mqtt311_connect_session(frame: bytes, writer) -> Session:
    """An amqtt Session for a whole MQTT 3.1.1 CONNECT frame (ConnectRefused if it is refused).
    amqtt's own decoding (an awaited read per field from a replaying reader) cost a login more
    than a tenth of the broker's time."""
    connect = decode_connect(frame)
    return new_session(writer, connect.client_id, clean_session=connect.clean_session,
                       keep_alive=connect.keep_alive, username=connect.username, password=connect.password)


def new_session(writer, client_id: str | None, *, clean_session: bool, keep_alive: int, username: str | None,
                password: str | None) -> Session:
    """An amqtt Session for a CONNECT of either protocol version, as amqtt builds one: a client
    id generated where none was sent (and marked so), the will ignored, as ThingsBoard ignores
    it (see broker_plugin.logins)."""
    session = Session()
    session.client_id = client_id or gen_client_id()
    if not client_id:
        session.attributes[CLIENT_ID_GENERATED] = True
    session.clean_session = clean_session
    session.keep_alive = keep_alive
    session.username, session.password = username, password
    session.will_flag = False
    peer = writer.get_peer_info()
    if peer is not None:
        session.remote_address, session.remote_port = peer
    session.ssl_object = writer.get_ssl_info()
    return session


class _Outgoing(OutgoingApplicationMessage):
    __slots__ = ("properties",)  # amqtt's messages have slots and no room for MQTT 5 properties


class _Answer:
    """The broker's answer to one PUBLISH, decided once it is processed."""

    __slots__ = ("packet_id", "qos", "then", "verdict")

    def __init__(self, packet_id: int | None, qos: int):
        self.packet_id = packet_id
        self.qos = qos
        self.verdict: PublishVerdict | None = None
        self.then: list[Callable[[], None]] | None = None  # what to send once the answer is written


class GatehouseProtocolHandler(BrokerProtocolHandler):
    protocol_level = MQTT_311
    publish_sink = None  # the broker's: takes every incoming PUBLISH (else amqtt's session queue)
    client_receive_slots: asyncio.Semaphore | None = None  # MQTT 5: the client's Receive Maximum

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Publishes of one connection are processed concurrently (a device's in-flight window
        # is then worth something) but answered in arrival order, as MQTT requires for PUBACKs.
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._answers: deque[_Answer] = deque()
        self._flush_scheduled = False
        self._flows: set[asyncio.Task] = set()  # QoS 2 exchanges in progress
        self._closing = False
        self._write_buffer = bytearray()
        self._write_scheduled = False
        self.ended = asyncio.Event()  # set once the broker has handled the end of this connection

    # --- reading ------------------------------------------------------------------------------

    async def _reader_loop(self) -> None:
        """amqtt's reader reads a packet field by field and runs a task per packet; this one
        reads whole frames and hands PUBLISHes on at once: the hot path of every device."""
        keepalive = self.session.keep_alive if self.session.keep_alive > 0 else None
        loop = asyncio.get_running_loop()
        reason: DisconnectReason | None = None
        try:
            # One deadline moved along, not a wait_for (a task) per packet; it runs only while
            # waiting for the client, not while the broker holds it back (in_flight).
            async with asyncio.timeout(None) as silence:
                while True:
                    self._reader_ready.set()
                    if keepalive:
                        silence.reschedule(loop.time() + keepalive)
                    frame = await read_frame(self.reader, MAX_PACKET_SIZE)
                    silence.reschedule(None)
                    reason = await self.handle_frame(frame)
                    if reason is not None:
                        break
        except TimeoutError:
            # Nothing for 1.5 × the client's keep-alive: it is gone (MQTT 3.1.1 §3.1.2.10).
            reason = DisconnectReason.KEEP_ALIVE_TIMEOUT
        except MalformedPacket as e:
            log.info("closing the connection of %s: %s", self.session.client_id, e)
            reason = e.reason
        except (EOFError, asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("connection of %s failed", self.session.client_id)
            reason = DisconnectReason.IMPLEMENTATION_SPECIFIC_ERROR
        for task in self._flows:
            task.cancel()
        if reason is not None and reason is not DisconnectReason.NORMAL_DISCONNECTION:
            with contextlib.suppress(Exception):
                await self.send_disconnect(reason)
        self._closing = True
        await self.handle_connection_closed()
        self._reader_stopped.set()
        await self.stop()

    async def handle_frame(self, frame: bytes) -> DisconnectReason | None:
        """Act on one whole packet from the client; a reason to close the connection, or None."""
        kind = frame[0] >> 4
        if kind == PUBLISH and (frame[0] >> 1) & 0x03 in (QOS_0, QOS_1):
            await self.deliver_incoming(decode_publish(frame))
            return None
        if kind == PUBACK and len(frame) == 4:
            self.puback_received(int.from_bytes(frame[2:4], "big"))
            return None
        return await self.handle_packet(await self.decode(frame))

    async def decode(self, frame: bytes):
        reader = BufferReader(frame)
        try:
            header = await MQTTFixedHeader.from_stream(reader)
            return await packet_class(header).from_stream(reader, fixed_header=header)
        except Exception as e:  # amqtt's decoders raise MQTTError, struct.error, UnicodeError, ...
            raise MalformedPacket(DisconnectReason.MALFORMED_PACKET, f"undecodable packet: {e!r}") from None

    async def handle_packet(self, packet) -> DisconnectReason | None:
        """Act on one packet from the client; a reason to close the connection, or None."""
        kind = packet.fixed_header.packet_type
        if kind == PUBLISH:  # QoS 2 (or the invalid 3), which handle_frame leaves to amqtt's flow
            if packet.qos != QOS_2 or packet.topic_name is None or packet.data is None:
                raise MalformedPacket(DisconnectReason.MALFORMED_PACKET, "PUBLISH without topic or payload")
            # amqtt's flow waits for the PUBREL this loop reads
            self._flows.add(task := asyncio.create_task(self.handle_publish(packet)))
            task.add_done_callback(self._flows.discard)
        elif kind == DISCONNECT:
            await self.handle_disconnect(packet)
            return DisconnectReason.NORMAL_DISCONNECTION
        elif kind in _AMQTT_HANDLERS:
            await getattr(self, _AMQTT_HANDLERS[kind])(packet)
        else:  # CONNECT again [MQTT-3.1.0-2], or a packet only a server sends
            return DisconnectReason.PROTOCOL_ERROR
        return None

    async def deliver_incoming(self, message) -> None:
        if self.publish_sink is not None:
            await self.publish_sink(message)
        else:
            await self.session.delivered_message_queue.put(message)

    async def _handle_qos0_message_flow(self, app_message) -> None:
        if app_message.direction == INCOMING:
            await self.deliver_incoming(app_message)
        else:
            await super()._handle_qos0_message_flow(app_message)

    async def _handle_qos1_message_flow(self, app_message) -> None:
        if app_message.direction == INCOMING:
            await self.deliver_incoming(app_message)  # the PUBACK follows once it is processed
        else:
            await super()._handle_qos1_message_flow(app_message)

    # --- sending ------------------------------------------------------------------------------

    async def write_bytes(self, data: bytes) -> None:
        """Send `data` to the client. What is written in one loop iteration leaves in one send
        (a group commit answers and republishes many messages at once); a slow reader holds the
        writers back once the transport's buffer is full."""
        if self.writer is None or self._closing:
            return
        self._write_soon(data)
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            await self.handle_connection_closed()

    def _write_soon(self, data: bytes) -> None:
        self._write_buffer += data
        if not self._write_scheduled:
            self._write_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_buffer)

    def _send_buffer(self) -> None:
        self._write_scheduled = False
        if self._write_buffer and self.writer is not None:
            data, self._write_buffer = bytes(self._write_buffer), bytearray()
            with contextlib.suppress(ConnectionError, RuntimeError):  # the client may be gone
                self.writer.write(data)

    async def handle_connection_closed(self) -> None:
        self._send_buffer()  # a DISCONNECT with its reason, say
        await super().handle_connection_closed()

    def publish_bytes(self, message: OutgoingApplicationMessage, *, duplicate: bool = False) -> bytes | None:
        """The PUBLISH packet for `message`, or None if it must not be sent. MQTT 3.1.1 has no
        properties: the message goes without them."""
        return encode_publish(message, duplicate=duplicate)

    async def mqtt_publish(self, topic: str, data: bytes, qos: int, retain: bool, ack_timeout: int | None = None,
                           properties: MessageProperties | None = None) -> OutgoingApplicationMessage:
        """Send a PUBLISH; at QoS 1, return once the client has acknowledged it (or the
        connection has stopped: the message stays in flight for a resumed session)."""
        qos = min(qos, QOS_1)
        packet_id = self.session.next_packet_id if qos == QOS_1 else None
        message = _Outgoing(packet_id, topic, qos, data, retain)
        message.properties = properties
        if qos == QOS_0:
            await self._write_publish(message)
            return message
        async with self.client_receive_slots or contextlib.nullcontext():
            self.session.inflight_out[packet_id] = message
            waiter = asyncio.get_running_loop().create_future()
            self._puback_waiters[packet_id] = waiter
            try:
                await self._write_publish(message)
                await waiter
                self.session.inflight_out.pop(packet_id, None)
            finally:
                self._puback_waiters.pop(packet_id, None)
        return message

    def publish_soon(self, topic: str, data: bytes, qos: int, properties: MessageProperties | None = None) -> bool:
        """Send a PUBLISH without waiting for its PUBACK, which then just clears it from the
        session's in-flight messages: no task and no future per message on the way to
        applications. False, and nothing sent, where the client's Receive Maximum (MQTT 5)
        must be kept: mqtt_publish waits for room."""
        if self.client_receive_slots is not None:
            return False
        qos = min(qos, QOS_1)
        message = _Outgoing(self.session.next_packet_id if qos == QOS_1 else None, topic, qos, data, False)
        message.properties = properties
        if qos == QOS_1:
            self.session.inflight_out[message.packet_id] = message  # resent if the session resumes
        packet = self.publish_bytes(message)
        if packet is not None and self.writer is not None and not self._closing:
            self._write_soon(packet)
        return True

    async def _write_publish(self, message: OutgoingApplicationMessage, *, duplicate: bool = False) -> None:
        data = self.publish_bytes(message, duplicate=duplicate)
        if data is not None:
            await self.write_bytes(data)

    def puback_received(self, packet_id: int) -> None:
        waiter = self._puback_waiters.get(packet_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(packet_id)
        else:  # a message resent on a resumed session (nobody waits for it any more)
            self.session.inflight_out.pop(packet_id, None)

    async def _retry_deliveries(self) -> None:
        """Resend what a resumed session still has in flight [MQTT-4.4.0-1]; the PUBACKs then
        find nobody waiting and clear it."""
        for message in list(self.session.inflight_out.values()):
            if isinstance(message, OutgoingApplicationMessage):
                await self._write_publish(message, duplicate=True)
        for message in list(self.session.inflight_in.values()):  # QoS 2 from a 3.1.1 client
            self._flows.add(task := asyncio.create_task(asyncio.wait_for(self._handle_message_flow(message), 10)))
            task.add_done_callback(self._flows.discard)

    async def mqtt_connack_authorize(self, authorize: bool) -> None:
        # amqtt's builds a packet object and fires a plugin event for it; every login sends one.
        await self.write_bytes(encode_connack(bool(self.session.parent), 0x00 if authorize else 0x05))

    def puback_bytes(self, packet_id: int, reason: int) -> bytes:
        return encode_puback(packet_id)  # 3.1.1 has no reason code

    async def send_puback(self, packet_id: int, reason: int = 0) -> None:
        await self.write_bytes(self.puback_bytes(packet_id, reason))

    async def acknowledge_unsubscription(self, packet_id: int, existed: list[bool]) -> None:
        await self.mqtt_acknowledge_unsubscription(packet_id)  # 3.1.1 has no per-filter codes

    async def send_disconnect(self, reason: DisconnectReason) -> None:
        """Tell the client why it is being disconnected: MQTT 3.1.1 has no way to."""

    async def disconnect(self, reason: DisconnectReason) -> None:
        await self.send_disconnect(reason)
        self._closing = True
        await self.handle_connection_closed()

    # --- answers to PUBLISH -------------------------------------------------------------------

    def expect_answer(self, message) -> _Answer:
        answer = _Answer(message.packet_id, message.qos)
        self._answers.append(answer)
        return answer

    def give_answer(self, answer: _Answer, verdict: PublishVerdict) -> None:
        answer.verdict = verdict
        if not self._flush_scheduled:
            # Answers decided in the same loop iteration (one group commit) leave in one write.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_answers)

    def after_answer(self, then: Callable[[], None]) -> bool:
        """Call `then` once the answer (PUBACK) to the PUBLISH being processed has been written,
        as ThingsBoard answers a provisioning request before it sends the response (SPEC §3.3).
        False, and nothing kept, when no PUBLISH awaits its answer."""
        if not self._answers:
            return False
        answer = self._answers[-1]  # the latest read: this one, or one after it
        answer.then = [*(answer.then or ()), then]
        return True

    def _flush_answers(self) -> None:
        self._flush_scheduled = False
        acks = bytearray()
        disconnect: DisconnectReason | None = None
        follow_ups: list[Callable[[], None]] = []
        while self._answers and self._answers[0].verdict is not None:
            answer = self._answers.popleft()
            self.in_flight.release()
            puback, disconnect = answer.verdict.answer(self.protocol_level, answer.qos)
            if puback is not None and answer.qos == QOS_1 and answer.packet_id is not None:
                acks += self.puback_bytes(answer.packet_id, puback)
            if disconnect is not None:
                break
            if answer.then:
                follow_ups += answer.then
        if acks and self.writer is not None and not self._closing:
            self._write_buffer += acks
            self._send_buffer()
        for follow_up in follow_ups:
            follow_up()
        if disconnect is not None:
            # Nothing is answered after the publish that closes the connection; the message
            # loop then sees the disconnect and cleans the session up as usual.
            self._answers.clear()
            asyncio.ensure_future(self.disconnect(disconnect))
