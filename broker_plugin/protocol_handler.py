"""amqtt's broker-side protocol handler (MQTT 3.1.1 on the wire) with what the hardened broker
needs of every connection: a reader that takes whole frames and hands PUBLISHes on at once;
PUBLISHes answered only once processed, in arrival order; the keep-alive enforced; closes that
say why (for MQTT 5, whose handler extends this one)."""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from amqtt.adapters import BufferReader, ReaderAdapter
from amqtt.mqtt import packet_class
from amqtt.mqtt.constants import QOS_1, QOS_2
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
from amqtt.mqtt.puback import PubackPacket
from amqtt.session import INCOMING, IncomingApplicationMessage

from .interfaces import (
    MAX_IN_FLIGHT,
    MQTT_311,
    DisconnectReason,
    MessageProperties,
    PublishVerdict,
)

MAX_PACKET_SIZE = 65536 + 4096  # ThingsBoard's 64 KiB payload limit plus room for topic and properties


# Packets amqtt's own handler methods deal with as they are (none of them waits on the client).
_AMQTT_HANDLERS = {PUBACK: "handle_puback", SUBSCRIBE: "handle_subscribe", UNSUBSCRIBE: "handle_unsubscribe",
                   PINGREQ: "handle_pingreq", PUBREL: "handle_pubrel", PUBREC: "handle_pubrec",
                   PUBCOMP: "handle_pubcomp"}


class MalformedPacket(Exception):
    def __init__(self, reason: DisconnectReason, message: str):
        super().__init__(message)
        self.reason = reason


async def read_frame(reader: ReaderAdapter, max_size: int) -> bytes:
    """One whole MQTT control packet: fixed header, remaining length and the rest."""
    first = await reader.read(1)
    if not first:
        raise EOFError
    length_bytes, remaining, multiplier = bytearray(), 0, 1
    while True:
        byte = (await reader.read(1))[0]
        length_bytes.append(byte)
        remaining += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            break
        multiplier *= 128
        if len(length_bytes) == 4:
            raise MalformedPacket(DisconnectReason.MALFORMED_PACKET, "remaining length over 4 bytes")
    if 1 + len(length_bytes) + remaining > max_size:
        raise MalformedPacket(DisconnectReason.PACKET_TOO_LARGE, f"packet of {remaining} bytes")
    return first + bytes(length_bytes) + (await reader.read(remaining) if remaining else b"")


class _Answer:
    """The broker's answer to one PUBLISH, decided once it is processed."""

    __slots__ = ("packet_id", "qos", "verdict")

    def __init__(self, packet_id: int | None, qos: int):
        self.packet_id = packet_id
        self.qos = qos
        self.verdict: PublishVerdict | None = None


class GatehouseProtocolHandler(BrokerProtocolHandler):
    protocol_level = MQTT_311
    publish_sink = None  # the broker's: takes every incoming PUBLISH (else amqtt's session queue)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Publishes of one connection are processed concurrently (a device's in-flight window
        # is then worth something) but answered in arrival order, as MQTT requires for PUBACKs.
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._answers: deque[_Answer] = deque()
        self._flush_scheduled = False
        self._flows: set[asyncio.Task] = set()  # QoS 2 exchanges in progress
        self._closing = False

    # --- reading ------------------------------------------------------------------------------

    async def _reader_loop(self) -> None:
        """amqtt's reader reads a packet field by field and runs a task per packet; this one
        reads whole frames and hands PUBLISHes on at once: the hot path of every device."""
        keepalive = self.session.keep_alive if self.session.keep_alive > 0 else None
        reason: DisconnectReason | None = None
        try:
            while True:
                self._reader_ready.set()
                try:
                    frame = await asyncio.wait_for(read_frame(self.reader, MAX_PACKET_SIZE), keepalive)
                except TimeoutError:
                    # Nothing for 1.5 × the client's keep-alive: it is gone (MQTT 3.1.1 §3.1.2.10).
                    reason = DisconnectReason.KEEP_ALIVE_TIMEOUT
                    break
                reason = await self.handle_packet(await self.decode(frame))
                if reason is not None:
                    break
        except MalformedPacket as e:
            self.logger.info("closing %s: %s", self.session.client_id, e)
            reason = e.reason
        except (EOFError, asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            self.logger.exception("connection of %s failed", self.session.client_id)
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
        if kind == PUBLISH:
            if packet.topic_name is None or packet.data is None:
                raise MalformedPacket(DisconnectReason.MALFORMED_PACKET, "PUBLISH without topic or payload")
            if packet.qos == QOS_2:  # amqtt's flow, which waits for the PUBREL this loop reads
                self._flows.add(task := asyncio.create_task(self.handle_publish(packet)))
                task.add_done_callback(self._flows.discard)
            else:
                message = IncomingApplicationMessage(packet.packet_id, packet.topic_name, packet.qos, packet.data,
                                                     packet.retain_flag)
                message.publish_packet = packet
                await self.deliver_incoming(message)
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

    async def mqtt_publish(self, topic: str, data: bytes, qos: int, retain: bool, ack_timeout: int | None = None,
                           properties: MessageProperties | None = None):
        # MQTT 3.1.1 has no properties: the message goes without them.
        return await super().mqtt_publish(topic, data, qos, retain, ack_timeout)

    def puback_bytes(self, packet_id: int, reason: int) -> bytes:
        return PubackPacket.build(packet_id).to_bytes()  # 3.1.1 has no reason code

    async def send_puback(self, packet_id: int, reason: int = 0) -> None:
        await self._send_packet(PubackPacket.build(packet_id))

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

    def _flush_answers(self) -> None:
        self._flush_scheduled = False
        acks = bytearray()
        disconnect: DisconnectReason | None = None
        while self._answers and self._answers[0].verdict is not None:
            answer = self._answers.popleft()
            self.in_flight.release()
            puback, disconnect = answer.verdict.answer(self.protocol_level, answer.qos)
            if puback is not None and answer.qos == QOS_1 and answer.packet_id is not None:
                acks += self.puback_bytes(answer.packet_id, puback)
            if disconnect is not None:
                break
        if acks and self.writer is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):  # the client may be gone
                self.writer.write(bytes(acks))
        if disconnect is not None:
            # Nothing is answered after the publish that closes the connection; the message
            # loop then sees the disconnect and cleans the session up as usual.
            self._answers.clear()
            asyncio.ensure_future(self.disconnect(disconnect))
