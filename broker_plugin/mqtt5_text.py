"""Finds the text fields of a client's MQTT 5 packet that are not UTF-8, before the codec does.

The `mqtt5` codec (0.8, Rust) panics on such a string: the panic cannot be caught before Rust's
panic hook and pyo3 have written a panic note and a traceback straight to the process's stderr,
past logging, one per packet. A client could fill the log that way, and `--log-format json`
would no longer be JSON. So every UTF-8 string field (MQTT 5 §1.5.4) a client may send is read
here first; a packet with a bad one is malformed (§1.5.4: the receiver closes the connection)
and never reaches the codec.

Only the text is judged here. Anything else wrong with a packet (a short field, an unknown
property) ends the walk without a verdict, and the codec reports it as it always has.
"""
from __future__ import annotations

# Property identifier -> the kind of its value (MQTT 5 §2.2.2.2).
_BYTE, _TWO, _FOUR, _VARINT, _TEXT, _BINARY, _TEXT_PAIR = range(7)
_PROPERTIES = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _TEXT, 0x08: _TEXT, 0x09: _BINARY, 0x0B: _VARINT, 0x11: _FOUR,
    0x12: _TEXT, 0x13: _TWO, 0x15: _TEXT, 0x16: _BINARY, 0x17: _BYTE, 0x18: _FOUR, 0x19: _BYTE,
    0x1A: _TEXT, 0x1C: _TEXT, 0x1F: _TEXT, 0x21: _TWO, 0x22: _TWO, 0x23: _TWO, 0x24: _BYTE,
    0x25: _BYTE, 0x26: _TEXT_PAIR, 0x27: _FOUR, 0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}
_FIXED = {_BYTE: 1, _TWO: 2, _FOUR: 4}
CONNECT, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT, AUTH = (
    1, 3, 4, 5, 6, 7, 8, 10, 12, 14, 15)
# What a client may send; the rest (CONNACK, SUBACK, ...) only a server does.
CLIENT_PACKET_TYPES = frozenset((CONNECT, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE,
                                 PINGREQ, DISCONNECT, AUTH))


class _Stop(Exception):
    """The packet is not well formed in some other way: the codec will say how."""


class _Reader:
    __slots__ = ("frame", "offset", "end")

    def __init__(self, frame: bytes, offset: int, end: int):
        self.frame, self.offset, self.end = frame, offset, end

    def skip(self, size: int) -> None:
        if self.offset + size > self.end:
            raise _Stop
        self.offset += size

    def byte(self) -> int:
        self.skip(1)
        return self.frame[self.offset - 1]

    def varint(self) -> int:
        value, shift = 0, 0
        for _ in range(4):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
        raise _Stop

    def binary(self) -> bytes:
        self.skip(2)
        size = int.from_bytes(self.frame[self.offset - 2:self.offset], "big")
        self.skip(size)
        return self.frame[self.offset - size:self.offset]

    def text(self) -> bool:
        """Reads a UTF-8 string field; False if it is not UTF-8."""
        try:
            bytes(self.binary()).decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    def properties(self) -> bool:
        # A length past the packet's end is not a stop: the codec reads (and decodes) the
        # properties that are there before it notices.
        length = self.varint()
        end = self.offset + length
        while self.offset < end:
            kind = _PROPERTIES.get(self.varint())
            if kind is None:
                raise _Stop
            if kind in _FIXED:
                self.skip(_FIXED[kind])
            elif kind == _VARINT:
                self.varint()
            elif kind == _BINARY:
                self.binary()
            elif not self.text() or (kind == _TEXT_PAIR and not self.text()):
                return False
        return True

    @property
    def more(self) -> bool:
        return self.offset < self.end


def _connect(r: _Reader) -> bool:
    if not r.text():  # the protocol name
        return False
    r.skip(1)  # protocol level
    flags = r.byte()
    r.skip(2)  # keep alive
    if not r.properties() or not r.text():  # the client id
        return False
    if flags & 0x04 and not (r.properties() and r.text()):  # will properties, will topic
        return False
    if flags & 0x04:
        r.binary()  # will payload
    return not flags & 0x80 or r.text()  # the user name (the password is binary)


def _publish(r: _Reader, qos: int) -> bool:
    if not r.text():
        return False
    if qos:
        r.skip(2)
    return r.properties()


def _subscriptions(r: _Reader, with_options: bool) -> bool:
    r.skip(2)  # packet id
    if not r.properties():
        return False
    while r.more:
        if not r.text():
            return False
        if with_options:
            r.skip(1)
    return True


def _reason_and_properties(r: _Reader, skip: int) -> bool:
    r.skip(skip)  # packet id, for the PUBLISH acknowledgements
    if not r.more:
        return True
    r.skip(1)  # reason code
    return not r.more or r.properties()


def _plain_publish(frame: bytes) -> bool:
    """Whether a PUBLISH has an ASCII topic and no properties: nearly every telemetry message,
    judged without the walk (which costs several times what decoding the packet does)."""
    start = 2
    while frame[start - 1] & 0x80:
        start += 1
    size = int.from_bytes(frame[start:start + 2], "big")
    properties_at = start + 2 + size + (2 if frame[0] & 0x06 else 0)
    return (properties_at < len(frame) and frame[properties_at] == 0
            and frame[start + 2:start + 2 + size].isascii())


def has_invalid_text(frame: bytes) -> bool:
    """Whether a whole packet from a client holds a UTF-8 string field that is not UTF-8."""
    if frame[0] >> 4 == PUBLISH and len(frame) > 5 and _plain_publish(frame):
        return False
    try:
        head = _Reader(frame, 1, len(frame))
        length = head.varint()
        r = _Reader(frame, head.offset, head.offset + length)
        kind = frame[0] >> 4
        if kind == CONNECT:
            return not _connect(r)
        if kind == PUBLISH:
            return not _publish(r, (frame[0] >> 1) & 0x03)
        if kind == SUBSCRIBE:
            return not _subscriptions(r, with_options=True)
        if kind == UNSUBSCRIBE:
            return not _subscriptions(r, with_options=False)
        if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            return not _reason_and_properties(r, 2)
        if kind in (DISCONNECT, AUTH):
            return not _reason_and_properties(r, 0)
    except _Stop:
        pass
    return False
