"""The first packet of a connection, read before amqtt sees it.

amqtt waits for CONNECT forever (a silent socket holds a connection slot) and misreads an MQTT 5
CONNECT as 3.1.1, then hangs waiting for bytes that never come. So the broker reads the whole
first packet here, within a deadline, and learns the protocol version from it; the session is
then made from the packet by the handler of that version.
"""
from __future__ import annotations

import asyncio
import contextlib
import struct

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.errors import MQTTError

from .mqtt311_codec import MalformedPacket, read_frame, variable_header_offset

CONNECT_PACKET_TYPE = 1
MAX_CONNECT_BYTES = 65536


async def _read_connect_frame(reader: ReaderAdapter) -> bytes:
    frame = await read_frame(reader, MAX_CONNECT_BYTES)
    if frame[0] >> 4 != CONNECT_PACKET_TYPE:
        raise MQTTError(f"first packet is type {frame[0] >> 4}, not CONNECT")
    return frame


def _level_offset(packet: bytes) -> int | None:
    offset = variable_header_offset(packet)
    if len(packet) < offset + 2:
        return None
    (name_length,) = struct.unpack_from("!H", packet, offset)
    level_at = offset + 2 + name_length
    return level_at if len(packet) > level_at else None


def protocol_level(packet: bytes) -> int | None:
    """The protocol level byte of a CONNECT packet, or None if the packet is too short."""
    level_at = _level_offset(packet)
    return None if level_at is None else packet[level_at]


async def read_connect(reader: ReaderAdapter, writer: WriterAdapter, timeout: float) -> bytes:
    """Read the first packet within `timeout` seconds and return it. Raises MQTTError, having
    closed the connection, when there is no CONNECT in time."""
    try:
        packet = await asyncio.wait_for(_read_connect_frame(reader), timeout)
    except TimeoutError:
        await _close(writer)
        raise MQTTError(f"no CONNECT within {timeout:g} s") from None
    except (MQTTError, MalformedPacket, EOFError, asyncio.IncompleteReadError, ConnectionError, IndexError) as e:
        await _close(writer)
        raise MQTTError(f"bad first packet: {e!r}") from None
    return packet


async def _close(writer: WriterAdapter) -> None:
    with contextlib.suppress(Exception):
        await writer.close()
