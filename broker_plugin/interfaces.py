"""The contract between the hardened broker and the Gatehouse plugin.

amqtt acknowledges a QoS 1 PUBLISH before any plugin has seen it, and cannot close a connection
or withhold the PUBACK for a bad payload. The hardened broker instead hands every PUBLISH to one
`PublishProcessor` and acts on its verdict, which is how ThingsBoard's rules are kept: PUBACK only
once the data is stored, none on the gateway API, a closed connection for an invalid payload.
"""
from __future__ import annotations

import enum
from typing import Protocol

from amqtt.session import Session

# Auth plugins put a 3.1.1 CONNACK return code here before refusing a login.
CONNACK_CODE = "gatehouse.connack_code"
# Publishes a connection may have in flight; also what getSessionLimits announces.
MAX_IN_FLIGHT = 100
# Set by the broker when the client sent an empty client id, which amqtt has replaced.
CLIENT_ID_GENERATED = "gatehouse.client_id_generated"


class PublishVerdict(enum.Enum):
    ACK = "ACK"  # processed; a QoS 1 publish gets its PUBACK now
    NO_ACK = "NO_ACK"  # processed; no PUBACK (ThingsBoard's answer on the gateway API)
    CLOSE = "CLOSE"  # close the connection, no PUBACK


class PublishProcessor(Protocol):
    async def process_publish(self, session: Session, topic: str, payload: bytes) -> PublishVerdict: ...
