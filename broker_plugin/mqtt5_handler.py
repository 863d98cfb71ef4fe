"""MQTT 5 on amqtt's broker: a protocol handler that speaks v5 on the wire and amqtt inside.

amqtt's broker core (sessions, subscriptions, the message loop, the plugins) is written against
3.1.1 packet objects; its handler reads and writes them. This handler replaces only the wire: it
frames and decodes v5 packets with the `mqtt5` codec and feeds the broker the same calls a 3.1.1
client would (subscriptions, publishes, PUBACKs, DISCONNECT), and it writes v5 packets with the
reason codes and properties 3.1.1 has no room for. Sessions, the ACL and the plugin are shared
by both versions, so a v5 device and a 3.1.1 application (or the reverse) simply meet.

What is negotiated (announced in CONNACK): at most `MAX_IN_FLIGHT` QoS 1 messages from the
client, packets up to `MAX_PACKET_SIZE`, `TOPIC_ALIAS_MAXIMUM` topic aliases from the client
(none towards it), QoS 1 at most, no retained messages, no shared subscriptions or subscription
identifiers. Toward the client the broker keeps to the client's own Receive Maximum and Maximum
Packet Size.
"""
from __future__ import annotations

import asyncio

import mqtt5
from amqtt.adapters import WriterAdapter
from amqtt.mqtt.constants import QOS_1
from amqtt.mqtt.disconnect import DisconnectPacket as AmqttDisconnect
from amqtt.mqtt.protocol.broker_handler import Subscription, UnSubscription
from amqtt.session import (
    IncomingApplicationMessage,
    OutgoingApplicationMessage,
    Session,
)

from .interfaces import (
    CLIENT_ID,
    CLIENT_ID_GENERATED,
    MAX_IN_FLIGHT,
    MQTT_5,
    DisconnectReason,
    MessageProperties,
)
from .mqtt5_text import CLIENT_PACKET_TYPES, has_invalid_text
from .mqtt311_codec import MalformedPacket
from .protocol_handler import MAX_PACKET_SIZE, GatehouseProtocolHandler, new_session

TOPIC_ALIAS_MAXIMUM = 16
SESSION_EXPIRY = "gatehouse.session_expiry"  # seconds a v5 session outlives its connection
CLEAN_START = "gatehouse.clean_start"
NEVER_EXPIRES = 0xFFFFFFFF
_PROTOCOL_MAX_PACKET_SIZE = 268_435_460  # what a four-byte remaining length can frame

_SUBACK_REFUSED_311 = 0x80
_SUBACK_TOPIC_FILTER_INVALID = mqtt5.SubAckReasonCode.TOPIC_FILTER_INVALID


def decode(frame: bytes):
    """One whole packet from a client, decoded; MalformedPacket if it cannot be."""
    kind = frame[0] >> 4
    if kind not in CLIENT_PACKET_TYPES:
        raise MalformedPacket(DisconnectReason.PROTOCOL_ERROR, f"packet type {kind} is not a client's")
    if has_invalid_text(frame):  # the codec would panic on it (see mqtt5_text)
        raise MalformedPacket(DisconnectReason.MALFORMED_PACKET, "undecodable packet: a string is not UTF-8")
    try:
        packet, _size = mqtt5.read(memoryview(frame))
    except Exception as e:  # the codec raises ValueError, IndexError, ... for bad bytes
        raise MalformedPacket(DisconnectReason.MALFORMED_PACKET, f"undecodable packet: {e}") from None
    except BaseException as e:
        # pyo3's PanicException is a BaseException: uncaught, it would end the connection's
        # reader and leave the connection open. mqtt5_text keeps the known panic away.
        if type(e).__name__ != "PanicException":
            raise
        raise MalformedPacket(DisconnectReason.MALFORMED_PACKET, "undecodable packet: the codec failed") from None
    return packet


def connect_session(connect: mqtt5.ConnectPacket, writer: WriterAdapter) -> Session:
    """An amqtt Session for a v5 CONNECT, as for 3.1.1."""
    # amqtt drops a clean session when its connection ends; a v5 session does so when its expiry
    # interval is 0. Clean Start (whether an existing session is resumed) is read separately.
    # ThingsBoard reads the password as UTF-8 text; bytes that are not would match no credential.
    session = new_session(writer, connect.client_id, clean_session=connect.session_expiry_interval == 0,
                          keep_alive=connect.keep_alive, username=connect.username,
                          password=None if connect.password is None else connect.password.decode("utf-8", "replace"))
    session.attributes[CLEAN_START] = connect.clean_start
    session.attributes[SESSION_EXPIRY] = connect.session_expiry_interval
    return session


class _Incoming(IncomingApplicationMessage):
    __slots__ = ("properties",)  # amqtt's messages have slots and no room for properties


def _properties(packet: mqtt5.PublishPacket) -> MessageProperties | None:
    properties = MessageProperties(packet.response_topic, packet.correlation_data, packet.content_type,
                                   tuple(packet.user_properties))
    return properties or None


class Mqtt5ProtocolHandler(GatehouseProtocolHandler):
    protocol_level = MQTT_5

    def __init__(self, plugins_manager, connect: mqtt5.ConnectPacket):
        super().__init__(plugins_manager)
        self.client_max_packet_size = connect.max_packet_size or _PROTOCOL_MAX_PACKET_SIZE
        self.client_receive_slots = asyncio.Semaphore(connect.receive_max)
        self._topic_aliases: dict[int, str] = {}

    # --- writing ------------------------------------------------------------------------------

    async def _write(self, packet) -> None:
        await self.write_bytes(packet.write())

    async def _send_packet(self, packet) -> None:
        # Every amqtt call that would send a 3.1.1 packet is overridden below.
        raise TypeError(f"no MQTT 5 form for amqtt's {type(packet).__name__}")

    def puback_bytes(self, packet_id: int, reason: int) -> bytes:
        return mqtt5.PubAckPacket(packet_id, reason_code=mqtt5.PubAckReasonCode(reason)).write()

    async def send_puback(self, packet_id: int, reason: int = 0) -> None:
        await self.write_bytes(self.puback_bytes(packet_id, reason))

    async def mqtt_connack_authorize(self, authorize: bool) -> None:
        session = self.session
        await self._write(mqtt5.ConnAckPacket(
            session_present=bool(session.parent),
            assigned_client_id=session.attributes[CLIENT_ID] if session.attributes.get(CLIENT_ID_GENERATED) else None,
            receive_max=MAX_IN_FLIGHT, max_packet_size=MAX_PACKET_SIZE, topic_alias_max=TOPIC_ALIAS_MAXIMUM,
            max_qos=mqtt5.QoS.AT_LEAST_ONCE, retain_available=False, wildcard_subscription_available=True,
            subscription_id_available=False, shared_subscription_available=False))

    async def mqtt_acknowledge_subscription(self, packet_id: int, return_codes: list[int]) -> None:
        codes = [_SUBACK_TOPIC_FILTER_INVALID if code == _SUBACK_REFUSED_311 else mqtt5.SubAckReasonCode(code)
                 for code in return_codes]
        await self._write(mqtt5.SubAckPacket(packet_id, codes))

    async def acknowledge_unsubscription(self, packet_id: int, existed: list[bool]) -> None:
        codes = [mqtt5.UnsubAckReasonCode.SUCCESS if e else mqtt5.UnsubAckReasonCode.NO_SUBSCRIPTION_EXISTED
                 for e in existed]
        await self._write(mqtt5.UnsubAckPacket(packet_id, codes))

    async def send_disconnect(self, reason: DisconnectReason) -> None:
        await self._write(mqtt5.DisconnectPacket(reason_code=mqtt5.DisconnectReasonCode(int(reason))))

    def publish_bytes(self, message: OutgoingApplicationMessage, *, duplicate: bool = False) -> bytes | None:
        properties = getattr(message, "properties", None) or MessageProperties()
        packet = mqtt5.PublishPacket(
            message.topic, bytes(message.data or b""), qos=mqtt5.QoS(message.qos), packet_id=message.packet_id,
            duplicate=duplicate, response_topic=properties.response_topic,
            correlation_data=properties.correlation_data, content_type=properties.content_type,
            user_properties=list(properties.user_properties))
        data = packet.write()
        # Larger than the client takes: never sent, as if delivered (MQTT 5 §3.1.2.25).
        return data if len(data) <= self.client_max_packet_size else None

    # --- reading ------------------------------------------------------------------------------

    async def handle_frame(self, frame: bytes) -> DisconnectReason | None:
        return await self.handle_packet(decode(frame))

    async def handle_packet(self, packet) -> DisconnectReason | None:
        """Act on one packet from the client; a reason to close the connection, or None."""
        if isinstance(packet, mqtt5.PublishPacket):
            return await self._handle_publish(packet)
        if isinstance(packet, mqtt5.PubAckPacket):
            self.puback_received(packet.packet_id)
            return None
        if isinstance(packet, mqtt5.SubscribePacket):
            await self._pending_subscriptions.put(Subscription(
                packet.packet_id, [(f.pattern, int(f.max_qos)) for f in packet.topic_filters]))
            return None
        if isinstance(packet, mqtt5.UnsubscribePacket):
            await self._pending_unsubscriptions.put(UnSubscription(packet.packet_id, list(packet.patterns)))
            return None
        if isinstance(packet, mqtt5.PingReqPacket):
            await self._write(mqtt5.PingRespPacket())
            return None
        if isinstance(packet, mqtt5.DisconnectPacket):
            if packet.session_expiry_interval is not None and self.session.attributes.get(SESSION_EXPIRY):
                self.session.attributes[SESSION_EXPIRY] = packet.session_expiry_interval
                self.session.clean_session = packet.session_expiry_interval == 0
            await self.handle_disconnect(AmqttDisconnect())  # a clean close, as in 3.1.1
            return DisconnectReason.NORMAL_DISCONNECTION
        # CONNECT again, AUTH (no enhanced authentication here), QoS 2 flow packets
        return DisconnectReason.PROTOCOL_ERROR

    async def _handle_publish(self, packet: mqtt5.PublishPacket) -> DisconnectReason | None:
        if int(packet.qos) > QOS_1:
            return DisconnectReason.QOS_NOT_SUPPORTED
        if packet.retain:
            return DisconnectReason.RETAIN_NOT_SUPPORTED
        topic = packet.topic
        if packet.topic_alias is not None:
            if not 0 < packet.topic_alias <= TOPIC_ALIAS_MAXIMUM:
                return DisconnectReason.TOPIC_ALIAS_INVALID
            if topic:
                self._topic_aliases[packet.topic_alias] = topic
            else:
                topic = self._topic_aliases.get(packet.topic_alias)
                if topic is None:
                    return DisconnectReason.PROTOCOL_ERROR  # MQTT 5 §3.3.4: an alias never set
        elif not topic:
            return DisconnectReason.PROTOCOL_ERROR
        message = _Incoming(packet.packet_id, topic, int(packet.qos), packet.payload, False)
        message.properties = _properties(packet)
        await self.deliver_incoming(message)
        return None

