"""The topic ACL: which filters a session may subscribe to (by its role, and for a device by
its profile's MQTT transport settings), and the subscriptions it was granted, which say where
and at what QoS server-pushed messages and answers go (SPEC §2.4, §2.7, §9.3).

Clients never publish through the broker's routing (every PUBLISH is processed instead), and
only applications and service accounts receive its broadcasts.
"""
from __future__ import annotations

from amqtt.contexts import Action
from amqtt.session import Session

from gatehouse.application_namespace import is_application_filter
from gatehouse.mqtt_topic_settings import MqttTopicSettings

from .session_state import NAMESPACE_ROLES, ROLE, ROLE_PROVISION, SUBSCRIPTIONS, ProfileTransports
from .topics import PROVISION_RESPONSE, SubscriptionKind, device_subscription


class TopicAcl:
    def __init__(self, transports: ProfileTransports):
        self._transports = transports

    def allows(self, session: Session | None, topic: str | None, action: Action | None) -> bool:
        role = session.attributes.get(ROLE) if session is not None else None
        if role is None or topic is None:
            return False
        if action is Action.RECEIVE:
            # Only applications get broadcasts; devices never see each other's v1/devices/me/...
            return role in NAMESPACE_ROLES and is_application_filter(topic)
        if action is Action.PUBLISH:
            return False  # client publishes are processed, never routed as they are
        if role == ROLE_PROVISION:
            allowed = topic == PROVISION_RESPONSE
        elif role in NAMESPACE_ROLES:
            allowed = is_application_filter(topic)
        else:
            allowed = device_subscription(topic, self._transports.of(session)) is not None
        if allowed:
            # Kept with the session: a resumed session's subscriptions (amqtt's) still push.
            session.attributes.setdefault(SUBSCRIPTIONS, {})[topic] = 1  # the granted QoS follows in subscribed()
        return allowed

    # Server-pushed messages use the QoS the client subscribed with, and stop when it
    # unsubscribes (SPEC §2.4, §2.7, §9.3).
    @staticmethod
    def subscribed(session: Session | None, topic: str, qos: int) -> None:
        if session is not None and topic in session.attributes.get(SUBSCRIPTIONS, {}):
            session.attributes[SUBSCRIPTIONS][topic] = min(qos, 1)

    @staticmethod
    def unsubscribed(session: Session | None, topic: str) -> None:
        if session is not None:
            session.attributes.get(SUBSCRIPTIONS, {}).pop(topic, None)


def push_target(session: Session, kind: SubscriptionKind, transport: MqttTopicSettings | None) -> tuple[str, int] | None:
    """(topic or topic prefix, QoS) for server-pushed messages of `kind`, if the device session
    (whose profile's MQTT transport settings are `transport`) subscribed to them."""
    for topic_filter, qos in session.attributes.get(SUBSCRIPTIONS, {}).items():
        meaning = device_subscription(topic_filter, transport)
        if meaning is not None and meaning[0] is kind:
            return meaning[1], qos
    return None


def reply_qos(session: Session, reply_topic: str) -> int:
    """Answers go out whether or not the client subscribed; at its QoS if it did, else 1."""
    reply_filter = reply_topic.rsplit("/", 1)[0] + "/+" if reply_topic != PROVISION_RESPONSE else reply_topic
    return session.attributes.get(SUBSCRIPTIONS, {}).get(reply_filter, 1)
