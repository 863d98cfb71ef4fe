"""A minimal asyncio MQTT 3.1.1 client over raw sockets, for tests that open hundreds or
thousands of connections at once (a paho client costs a thread each)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import resource

from .mqtt_client import connect_packet, publish_packet

CONNACK, PUBLISH, PUBACK = 2, 3, 4
DISCONNECT = bytes((0xE0, 0x00))


def raise_open_files_limit(needed: int) -> None:
    """Each connection is a file descriptor here and one in the broker (which inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise RuntimeError(f"the open-files limit is {hard}, {needed} are needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """(packet type, flags, body) of the next packet."""
    head = await reader.readexactly(2)
    first, byte = head[0], head[1]
    length, shift = byte & 0x7F, 7
    while byte & 0x80:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
    body = await reader.readexactly(length) if length else b""
    return first >> 4, first & 0x0F, body


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, return_code: int):
        self.reader, self.writer, self.return_code = reader, writer, return_code
        self._next_packet_id = 0

    async def publish_qos1(self, topic: str, payload: bytes | str) -> bool:
        """One QoS 1 PUBLISH; True once its PUBACK arrives (False: the connection ended first)."""
        self._next_packet_id = self._next_packet_id % 65535 + 1
        packet_id = self._next_packet_id
        try:
            self.writer.write(publish_packet(topic, payload, 1, packet_id))
            while True:
                kind, _flags, body = await read_packet(self.reader)
                if kind == PUBACK and body[:2] == packet_id.to_bytes(2, "big"):
                    return True
        except (OSError, asyncio.IncompleteReadError):
            return False

    async def next_publish(self) -> tuple[str, bytes]:
        """(topic, payload) of the next PUBLISH the broker sends (QoS 0 or 1, acknowledged)."""
        while True:
            kind, flags, body = await read_packet(self.reader)
            if kind != PUBLISH:
                continue
            topic_length = int.from_bytes(body[:2], "big")
            at = 2 + topic_length
            if flags & 0x06:
                self.writer.write(bytes((0x40, 0x02)) + body[at:at + 2])
                at += 2
            return body[2:2 + topic_length].decode(), body[at:]

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.return_code == 0 and not self.writer.is_closing():
                self.writer.write(DISCONNECT)
            self.writer.close()
            await self.writer.wait_closed()


async def connect(port: int, client_id: str, username: str | None = None, password: str | None = None, *,
                  host: str = "127.0.0.1", bind_address: str | None = None, keepalive: int = 600) -> Connection:
    """Open a connection and send CONNECT; the CONNACK's return code is on the result (-1: the
    broker closed the connection without one). The caller closes it."""
    reader, writer = await asyncio.open_connection(
        host, port, local_addr=(bind_address, 0) if bind_address else None)
    try:
        writer.write(connect_packet(client_id, username, password, keepalive=keepalive))
        kind, _flags, body = await read_packet(reader)
        code = body[1] if kind == CONNACK and len(body) == 2 else -1
    except (OSError, asyncio.IncompleteReadError):
        code = -1
    return Connection(reader, writer, code)


async def provision(port: int, request: dict) -> dict | None:
    """ThingsBoard's MQTT provisioning: connect as `provision`, publish the request, read the
    answer on /provision/response; None when the connection ended without one."""
    connection = await connect(port, "", "provision")
    try:
        if connection.return_code != 0:
            return None
        connection.writer.write(publish_packet("/provision/request", json.dumps(request), 1, 1))
        while True:
            topic, payload = await connection.next_publish()
            if topic == "/provision/response":
                return json.loads(payload)
    except (OSError, asyncio.IncompleteReadError):
        return None
    finally:
        await connection.close()
