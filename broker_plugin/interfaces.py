"""The contract between the hardened broker and the Gatehouse plugin.

amqtt acknowledges a QoS 1 PUBLISH before any plugin has seen it, and cannot close a connection
or withhold the PUBACK for a bad payload. The hardened broker instead hands every PUBLISH to one
`PublishProcessor` and acts on its verdict, which is how ThingsBoard's rules are kept: PUBACK only
once the data is stored, none on the gateway API, a closed connection for an invalid payload.

The plugin states what happened (a refused login, a publish to a wrong topic, a session taken
over) without knowing the client's protocol version; the broker turns that into MQTT 3.1.1
return codes or MQTT 5 reason codes (SPEC §2.1, §2.2, §3.1).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from amqtt.session import Session

# Auth plugins put a LoginRefusal here before refusing a login.
LOGIN_REFUSAL = "gatehouse.login_refusal"
# Publishes a connection may have in flight (MQTT 5: the Receive Maximum announced in CONNACK);
# also what getSessionLimits announces.
MAX_IN_FLIGHT = 100
# Set by the broker when the client sent an empty client id, which the broker has replaced.
CLIENT_ID_GENERATED = "gatehouse.client_id_generated"
# Auth plugins put the identity a login proved here ("device:<id>", "application:<name>", ...).
# A client id is never an identity: the broker keys each session by its owner and client id
# together, so a login resumes, replaces or ends only sessions of the identity it proved. A login
# that names no owner (a provisioning login) gets a clean session nobody else can reach.
SESSION_OWNER = "gatehouse.session_owner"
# The client id as the client sent it (or as generated for it); session.client_id is the key.
CLIENT_ID = "gatehouse.client_id"
MQTT_311, MQTT_5 = 4, 5  # protocol levels in CONNECT


class LoginRefusal(enum.Enum):
    """Why a CONNECT is refused, as (MQTT 3.1.1 return code, MQTT 5 reason code) (SPEC §2.1)."""

    BAD_USERNAME_OR_PASSWORD = (0x05, 0x86)
    CLIENT_ID_NOT_VALID = (0x02, 0x85)
    NOT_AUTHORIZED = (0x05, 0x87)
    SERVER_UNAVAILABLE = (0x03, 0x88)
    CONNECTION_RATE_EXCEEDED = (0x03, 0x9F)

    def code(self, protocol_level: int) -> int:
        return self.value[1] if protocol_level == MQTT_5 else self.value[0]


class DisconnectReason(enum.IntEnum):
    """Why the broker closes a connection: the MQTT 5 DISCONNECT reason code (a 3.1.1 client
    is just disconnected)."""

    NORMAL_DISCONNECTION = 0x00  # the client's own DISCONNECT; the broker sends none
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_NAME_INVALID = 0x90
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    MAXIMUM_CONNECT_TIME = 0xA0


class PublishVerdict(enum.Enum):
    """What became of a client's PUBLISH; `answer` says what the client is told."""

    ACK = "ACK"  # processed
    NO_ACK = "NO_ACK"  # processed; no PUBACK at all (ThingsBoard's answer on the gateway API)
    TOPIC_NAME_INVALID = "TOPIC_NAME_INVALID"  # dropped; the connection stays
    PAYLOAD_FORMAT_INVALID = "PAYLOAD_FORMAT_INVALID"  # not stored
    # Not stored, and the profile says to acknowledge it (sendAckOnValidationException, SPEC §2.8).
    PAYLOAD_FORMAT_INVALID_ACKED = "PAYLOAD_FORMAT_INVALID_ACKED"
    NOT_ALLOWED = "NOT_ALLOWED"  # a topic this kind of session may not use: closed (provisioning)
    PACKET_TOO_LARGE = "PACKET_TOO_LARGE"
    FAILED = "FAILED"  # an internal error: closed

    def answer(self, protocol_level: int, qos: int) -> tuple[int | None, DisconnectReason | None]:
        """(PUBACK reason code or None for no PUBACK, DISCONNECT reason or None to stay
        connected), by SPEC §2.2 and §3.1: MQTT 5 hears the reason in a PUBACK where 3.1.1
        hears a plain one or is disconnected."""
        v5_puback = protocol_level == MQTT_5 and qos == 1
        if self is PublishVerdict.ACK:
            return (0x00 if qos == 1 else None), None
        if self is PublishVerdict.NO_ACK:
            return None, None
        if self is PublishVerdict.TOPIC_NAME_INVALID:
            return ((0x90 if protocol_level == MQTT_5 else 0x00) if qos == 1 else None), None
        if self in (PublishVerdict.PAYLOAD_FORMAT_INVALID, PublishVerdict.PAYLOAD_FORMAT_INVALID_ACKED):
            if v5_puback:
                return 0x99, None
            if qos == 1 and self is PublishVerdict.PAYLOAD_FORMAT_INVALID_ACKED:
                return 0x00, None  # 3.1.1 has no reason codes: a plain PUBACK
            return None, DisconnectReason.PAYLOAD_FORMAT_INVALID
        if self is PublishVerdict.PACKET_TOO_LARGE:  # over the payload limit: ThingsBoard's decoder
            return None, DisconnectReason.MALFORMED_PACKET  # fails, hence 0x81 (SPEC §2)
        reason = (DisconnectReason.TOPIC_NAME_INVALID if self is PublishVerdict.NOT_ALLOWED
                  else DisconnectReason.IMPLEMENTATION_SPECIFIC_ERROR)
        return (int(reason) if v5_puback else None), reason


@dataclass(frozen=True)
class MessageProperties:
    """MQTT 5 request/response properties, passed between devices and applications as they are
    (an MQTT 3.1.1 receiver gets the message without them)."""

    response_topic: str | None = None
    correlation_data: bytes | None = None
    content_type: str | None = None
    user_properties: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.response_topic or self.correlation_data or self.content_type or self.user_properties)


class PublishProcessor(Protocol):
    async def process_publish(self, session: Session, topic: str, payload: bytes,
                              properties: MessageProperties | None = None) -> PublishVerdict: ...
