"""amqtt's broker-side protocol handler (MQTT 3.1.1 on the wire) with what the hardened broker
needs of every connection: PUBLISHes answered only once processed, in arrival order; the keep-alive
enforced; closes that say why (for MQTT 5, whose handler extends this one)."""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from amqtt.mqtt.constants import QOS_1
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.session import INCOMING

from .interfaces import (
    MAX_IN_FLIGHT,
    MQTT_311,
    DisconnectReason,
    MessageProperties,
    PublishVerdict,
)


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

    def handle_read_timeout(self) -> None:
        # Nothing from the client for 1.5 × its keep-alive: it is gone (MQTT 3.1.1 §3.1.2.10).
        self._keepalive_expiry = asyncio.ensure_future(self.handle_connection_closed())

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

    async def disconnect(self, reason: DisconnectReason) -> None:
        """Close the connection; MQTT 3.1.1 has no way to say why."""
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
