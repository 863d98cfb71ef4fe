"""Telling a supervisor "ready: everything listens", by systemd's notify protocol.

A component started with NOTIFY_SOCKET in its environment (by systemd with `Type=notify`, or
by `gatehouse up`) sends one datagram "READY=1" to that Unix socket once all its listeners are
open; without the variable it does nothing. The protocol is one datagram (sd_notify(3)), so it
is written here rather than pulled in as a dependency. A name starting with "@" is in Linux's
abstract namespace.
"""
from __future__ import annotations

import os
import socket

NOTIFY_SOCKET = "NOTIFY_SOCKET"
READY = b"READY=1"


def notify_ready() -> bool:
    """Say READY=1 to the supervisor, if there is one; True if it was said."""
    address = os.environ.get(NOTIFY_SOCKET)
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(READY, address)
        except OSError:  # the supervisor has gone: nobody to tell
            return False
    return True


class ReadinessSocket:
    """The supervisor's end: a socket one component reports to (NOTIFY_SOCKET in its environment)."""

    def __init__(self, path: str):
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self._sock.bind(path)

    def said_ready(self) -> bool:
        """True if READY=1 arrived since the last call (other notifications are ignored)."""
        ready = False
        while True:
            try:
                message = self._sock.recv(4096)
            except BlockingIOError:
                return ready
            ready = ready or READY in message.split(b"\n")

    def close(self) -> None:
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
