"""What the CoAP resources need from the forwarding side, and nothing more.

The resources (`resources.py`) translate CoAP into calls on the sidecar's HTTP device API through a
`Forwarder`; `forwarding.py` is the aiohttp implementation, tests may use any object of this shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class HttpAnswer:
    """The sidecar's answer: its status, body and Content-Type (None when it sent none)."""

    status: int
    body: bytes = b""
    content_type: str | None = None


class ForwardingError(Exception):
    """The sidecar gave no answer."""


class SidecarUnavailable(ForwardingError):
    """The sidecar cannot be reached (down, refusing, connection lost): CoAP 5.03."""


class SidecarTimeout(ForwardingError):
    """The sidecar did not answer within the bounded time: CoAP 5.00, never a hang."""


class Forwarder(Protocol):
    async def request(self, method: str, path: str, query: list[tuple[str, str]] | None = None,
                      body: bytes = b"", *, client_certificate: bytes | None = None,
                      timeout: float | None = None) -> HttpAnswer:
        """One call on the sidecar. `path` is already percent-encoded (`/api/v1/...`); with a
        `client_certificate` (DER) the call is made as the bridge's service account on behalf of
        the device that certificate identifies. `timeout`: the whole call's bound in seconds
        (None: the forwarder's default). Raises SidecarUnavailable or SidecarTimeout."""
        ...

    async def close(self) -> None:
        ...
