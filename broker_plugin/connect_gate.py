"""The first packet of a connection, read before amqtt sees it.

amqtt waits for CONNECT forever (a silent socket holds a connection slot) and misreads an MQTT 5
CONNECT as 3.1.1, then hangs waiting for bytes that never come. So the broker reads the whole
first packet here, within a deadline, learns the protocol version from it, and hands amqtt a
reader that replays the packet and then continues with the socket (MQTT 5 goes to our own
handler instead).
"""
from __future__ import annotations

import asyncio
import contextlib
import struct

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.errors import MQTTError

from .protocol_handler import MalformedPacket, read_frame

CONNECT_PACKET_TYPE = 1
MAX_CONNECT_BYTES = 65536


class ReplayReader(ReaderAdapter):
    """Serves `prefix` first, then reads from the wrapped reader."""

    def __init__(self, prefix: bytes, reader: ReaderAdapter):
        self._buffer = bytearray(prefix)
        self._reader = reader

    async def read(self, n: int = -1) -> bytes:
        if not self._buffer:
            return await self._reader.read(n)
        if n < 0 or n <= len(self._buffer):
            size = len(self._buffer) if n < 0 else n
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
            return data
        head = bytes(self._buffer)
        self._buffer.clear()
        return head + await self._reader.read(n - len(head))

    def feed_eof(self) -> None:
        self._reader.feed_eof()


async def _read_connect_frame(reader: ReaderAdapter) -> bytes:
    frame = await read_frame(reader, MAX_CONNECT_BYTES)
    if frame[0] >> 4 != CONNECT_PACKET_TYPE:
        raise MQTTError(f"first packet is type {frame[0] >> 4}, not CONNECT")
    return frame


def _level_offset(packet: bytes) -> int | None:
    offset = 1
    while packet[offset] & 0x80:
        offset += 1
    offset += 1
    if len(packet) < offset + 2:
        return None
    (name_length,) = struct.unpack_from("!H", packet, offset)
    level_at = offset + 2 + name_length
    return level_at if len(packet) > level_at else None


def protocol_level(packet: bytes) -> int | None:
    """The protocol level byte of a CONNECT packet, or None if the packet is too short."""
    level_at = _level_offset(packet)
    return None if level_at is None else packet[level_at]


def has_empty_client_id(packet: bytes) -> bool:
    """Whether a 3.1.1 CONNECT carries an empty client id (amqtt replaces it with a generated
    one before plugins see it, and ThingsBoard's refusal code depends on it)."""
    level_at = _level_offset(packet)
    id_length_at = None if level_at is None else level_at + 4  # level, flags, keep-alive
    if id_length_at is None or len(packet) < id_length_at + 2:
        return False
    return struct.unpack_from("!H", packet, id_length_at)[0] == 0


async def read_connect(reader: ReaderAdapter, writer: WriterAdapter, timeout: float) -> tuple[ReaderAdapter, bytes]:
    """Read the first packet within `timeout` seconds; return it and a reader that replays it.
    Raises MQTTError, having closed the connection, when there is no CONNECT in time."""
    try:
        packet = await asyncio.wait_for(_read_connect_frame(reader), timeout)
    except TimeoutError:
        await _close(writer)
        raise MQTTError(f"no CONNECT within {timeout:g} s") from None
    except (MQTTError, MalformedPacket, EOFError, asyncio.IncompleteReadError, ConnectionError, IndexError) as e:
        await _close(writer)
        raise MQTTError(f"bad first packet: {e!r}") from None
    return ReplayReader(packet, reader), packet


async def _close(writer: WriterAdapter) -> None:
    with contextlib.suppress(Exception):
        await writer.close()
