"""MQTT 3.1.1 on the wire, as bytes: packet framing, the remaining length, PUBLISH both ways,
CONNECT decoded, CONNACK and PUBACK encoded. No connection state and no I/O beyond reading one
frame from a reader: the connection handler (broker_plugin.protocol_handler) decides what to do.

The packets of every telemetry message and every login are read and written here rather than
through amqtt's packet classes (an object per header field, an awaited read per field, a plugin
event per packet sent): on the path from a device to an application that cost more than
storing the message. Every other packet still goes through amqtt.
"""
from __future__ import annotations

from dataclasses import dataclass

from amqtt.adapters import ReaderAdapter
from amqtt.mqtt.packet import PUBACK, PUBLISH
from amqtt.session import IncomingApplicationMessage, OutgoingApplicationMessage

from .interfaces import MQTT_311, DisconnectReason


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


def variable_header_offset(frame: bytes) -> int:
    """Where a whole frame's variable header starts: past the fixed header's first byte and the
    remaining length (read_frame has checked it)."""
    offset = 1
    while frame[offset] & 0x80:
        offset += 1
    return offset + 1


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length encoding of a packet's remaining length."""
    encoded = bytearray()
    while True:
        n, digit = divmod(n, 128)
        encoded.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(encoded)


def decode_publish(frame: bytes) -> IncomingApplicationMessage:
    """A whole MQTT 3.1.1 PUBLISH frame (QoS 0 or 1) as amqtt's incoming message."""
    flags, qos = frame[0], (frame[0] >> 1) & 0x03
    offset = variable_header_offset(frame)
    topic_end = offset + 2 + int.from_bytes(frame[offset:offset + 2], "big")
    header_end = topic_end + (2 if qos else 0)
    if header_end > len(frame):
        raise MalformedPacket(DisconnectReason.MALFORMED_PACKET, "PUBLISH shorter than its header")
    try:
        topic = frame[offset + 2:topic_end].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket(DisconnectReason.MALFORMED_PACKET, "PUBLISH topic is not UTF-8") from None
    packet_id = int.from_bytes(frame[topic_end:header_end], "big") if qos else None
    return IncomingApplicationMessage(packet_id, topic, qos, frame[header_end:], bool(flags & 0x01))


def encode_publish(message: OutgoingApplicationMessage, *, duplicate: bool = False) -> bytes:
    topic = message.topic.encode("utf-8")
    data = bytes(message.data or b"")
    header = len(topic).to_bytes(2, "big") + topic
    if message.qos:
        header += message.packet_id.to_bytes(2, "big")
    first = (PUBLISH << 4) | (0x08 if duplicate else 0) | (message.qos << 1) | (0x01 if message.retain else 0)
    return bytes((first,)) + remaining_length(len(header) + len(data)) + header + data


def encode_puback(packet_id: int) -> bytes:
    return bytes((PUBACK << 4, 2)) + packet_id.to_bytes(2, "big")  # 3.1.1 has no reason code


def encode_connack(session_present: bool, return_code: int) -> bytes:
    return bytes((0x20, 0x02, 1 if session_present else 0, return_code))


class ConnectRefused(Exception):
    """A 3.1.1 CONNECT refused before any login, with the CONNACK return code it gets (None: the
    connection is closed without one, as amqtt does for these)."""

    def __init__(self, message: str, connack: int | None = None):
        super().__init__(message)
        self.connack = connack


@dataclass(frozen=True)
class Connect:
    """What a 3.1.1 CONNECT says that the broker keeps (the will is ignored, see new_session)."""

    client_id: str | None
    clean_session: bool
    keep_alive: int
    username: str | None
    password: str | None


class _Fields:
    """Reads a CONNECT's fields in order; past the end of the frame a field is None."""

    def __init__(self, frame: bytes, offset: int):
        self.frame, self.offset = frame, offset

    def fixed(self, size: int) -> int | None:
        if self.offset + size > len(self.frame):
            return None
        value = int.from_bytes(self.frame[self.offset:self.offset + size], "big")
        self.offset += size
        return value

    def data(self) -> bytes | None:
        size = self.fixed(2)
        if size is None or self.offset + size > len(self.frame):
            return None
        value = self.frame[self.offset:self.offset + size]
        self.offset += size
        return value

    def text(self) -> str | None:
        value = self.data()
        # ThingsBoard reads strings as UTF-8; bytes that are not match no credential.
        return None if value is None else value.decode("utf-8", "replace")


def decode_connect(frame: bytes) -> Connect:
    """A whole MQTT 3.1.1 CONNECT frame, with the checks amqtt's `init_from_connect` makes;
    ConnectRefused if it fails one."""
    fields = _Fields(frame, variable_header_offset(frame))
    name, level, flags, keep_alive = fields.text(), fields.fixed(1), fields.fixed(1), fields.fixed(2)
    if name is None or level is None or flags is None or keep_alive is None:
        raise ConnectRefused("CONNECT shorter than its header")
    if flags & 0x01:
        raise ConnectRefused("[MQTT-3.1.2-3] CONNECT reserved flag must be set to 0")
    if name != "MQTT":
        raise ConnectRefused(f"[MQTT-3.1.2-1] incorrect protocol name: {name!r}")
    if level != MQTT_311:
        raise ConnectRefused(f"unsupported protocol level {level}", connack=0x01)
    clean_session, will_flag = bool(flags & 0x02), bool(flags & 0x04)
    username_flag, password_flag = bool(flags & 0x80), bool(flags & 0x40)
    client_id = fields.text()
    will_topic, will_message = (fields.text(), fields.data()) if will_flag else (None, None)
    username = fields.text() if username_flag else None
    password = fields.text() if password_flag else None
    if will_flag and (will_topic is None or will_message is None):
        raise ConnectRefused("will flag set, but will topic/message not present in payload")
    if (password_flag and not username_flag) or (username_flag and username is None) or (
            password_flag and password is None):
        raise ConnectRefused("bad user name or password fields", connack=0x04)  # [MQTT-3.1.2-22]
    if not client_id and not clean_session:
        raise ConnectRefused("[MQTT-3.1.3-8] no client id with clean session 0", connack=0x02)
    return Connect(client_id, clean_session, keep_alive, username, password)
