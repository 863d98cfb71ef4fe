"""MQTT topics: ThingsBoard's device topics (SPEC §2.2, §2.7) and the provisioning pair (§3),
classified without I/O. The application namespace is the domain's
(gatehouse.application_namespace): the sidecar publishes there too.

Every device uses the same `v1/devices/me/...` strings, so the broker never routes them
between clients: it classifies a device publish, acts on it, and answers the one connection.
A device whose profile has MQTT transport settings (SPEC §2.8) sends telemetry and attributes on
its profile's topics instead of the v1 ones, and may subscribe to its profile's topic for
attribute updates besides the usual ones.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from gatehouse.mqtt_topic_settings import (
    DEFAULT_ATTRIBUTES_TOPIC,
    DEFAULT_TELEMETRY_TOPIC,
    MqttTopicSettings,
)

PROVISION_REQUEST = "/provision/request"
PROVISION_RESPONSE = "/provision/response"


class DeviceAction(enum.Enum):
    TELEMETRY = "TELEMETRY"
    ATTRIBUTES = "ATTRIBUTES"
    ATTRIBUTE_REQUEST = "ATTRIBUTE_REQUEST"
    RPC_RESPONSE = "RPC_RESPONSE"  # the device answers a server-side RPC
    RPC_REQUEST = "RPC_REQUEST"  # client-side RPC from the device
    CLAIM = "CLAIM"
    GATEWAY = "GATEWAY"  # gateway API: not supported; ThingsBoard sends no PUBACK either
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class DevicePublish:
    action: DeviceAction
    request_id: int | None = None
    reply_topic: str | None = None  # where the answer to this request goes


_PROFILE_TOPICS = {  # what a profile's MQTT transport settings replace
    DEFAULT_TELEMETRY_TOPIC: DeviceAction.TELEMETRY,
    DEFAULT_ATTRIBUTES_TOPIC: DeviceAction.ATTRIBUTES,
}
_FIXED = {
    "v2/t": DeviceAction.TELEMETRY,
    "v2/t/j": DeviceAction.TELEMETRY,
    "v2/a": DeviceAction.ATTRIBUTES,
    "v2/a/j": DeviceAction.ATTRIBUTES,
    "v1/devices/me/claim": DeviceAction.CLAIM,
}
# (request prefix, action, reply prefix); protobuf (`/p/`) variants are not supported.
_WITH_ID = (
    ("v1/devices/me/attributes/request/", DeviceAction.ATTRIBUTE_REQUEST, "v1/devices/me/attributes/response/"),
    ("v2/a/req/j/", DeviceAction.ATTRIBUTE_REQUEST, "v2/a/res/j/"),
    ("v2/a/req/", DeviceAction.ATTRIBUTE_REQUEST, "v2/a/res/"),
    ("v1/devices/me/rpc/response/", DeviceAction.RPC_RESPONSE, None),
    ("v2/r/res/j/", DeviceAction.RPC_RESPONSE, None),
    ("v2/r/res/", DeviceAction.RPC_RESPONSE, None),
    ("v1/devices/me/rpc/request/", DeviceAction.RPC_REQUEST, "v1/devices/me/rpc/response/"),
    ("v2/r/req/j/", DeviceAction.RPC_REQUEST, "v2/r/res/j/"),
    ("v2/r/req/", DeviceAction.RPC_REQUEST, "v2/r/res/"),
)
_REQUEST_ID = re.compile(r"\d{1,9}")


def classify_device_publish(topic: str, transport: MqttTopicSettings | None = None) -> DevicePublish:
    """`transport`: the device's profile's MQTT transport settings, None for the DEFAULT one."""
    if transport is None:
        action = _PROFILE_TOPICS.get(topic)
        if action is not None:
            return DevicePublish(action)
    elif transport.is_attributes_topic(topic):
        return DevicePublish(DeviceAction.ATTRIBUTES)
    elif transport.is_telemetry_topic(topic):
        return DevicePublish(DeviceAction.TELEMETRY)
    action = _FIXED.get(topic)
    if action is not None:
        return DevicePublish(action)
    if topic.startswith("v1/gateway/"):
        return DevicePublish(DeviceAction.GATEWAY)
    for prefix, action, reply_prefix in _WITH_ID:
        if topic.startswith(prefix):
            suffix = topic[len(prefix):]
            if _REQUEST_ID.fullmatch(suffix):
                request_id = int(suffix)
                return DevicePublish(action, request_id, f"{reply_prefix}{request_id}" if reply_prefix else None)
            break
    return DevicePublish(DeviceAction.UNKNOWN)


class SubscriptionKind(enum.Enum):
    ATTRIBUTE_UPDATES = "ATTRIBUTE_UPDATES"
    RPC_REQUESTS = "RPC_REQUESTS"
    PLAIN = "PLAIN"  # accepted without side effects


# Filter -> (kind, the topic server-pushed messages of that kind are published on).
_DEVICE_SUBSCRIPTIONS = {
    "v1/devices/me/attributes": (SubscriptionKind.ATTRIBUTE_UPDATES, "v1/devices/me/attributes"),
    "v2/a": (SubscriptionKind.ATTRIBUTE_UPDATES, "v2/a"),
    "v2/a/j": (SubscriptionKind.ATTRIBUTE_UPDATES, "v2/a/j"),
    "v1/devices/me/rpc/request/+": (SubscriptionKind.RPC_REQUESTS, "v1/devices/me/rpc/request/"),
    "v2/r/req/+": (SubscriptionKind.RPC_REQUESTS, "v2/r/req/"),
    "v2/r/req/j/+": (SubscriptionKind.RPC_REQUESTS, "v2/r/req/j/"),
    **{f: (SubscriptionKind.PLAIN, None) for f in (
        "v1/devices/me/rpc/response/+", "v1/devices/me/attributes/response/+", "v2/a/res/+", "v2/a/res/j/+",
        "v2/r/res/+", "v2/r/res/j/+", "v1/gateway/attributes", "v1/gateway/rpc",
        "v1/gateway/attributes/response", "v2/fw/response/+/chunk/+", "v2/fw/error",
        "v2/sw/response/+/chunk/+", "v2/sw/error")},
}


def device_subscription(topic_filter: str, transport: MqttTopicSettings | None = None
                        ) -> tuple[SubscriptionKind, str | None] | None:
    """What a device subscription means, or None if a device may not subscribe to it. The
    profile's attribute subscription topic gets its updates on the v1 attributes topic, as
    ThingsBoard sends them."""
    if transport is not None and transport.is_attributes_subscription(topic_filter):
        return SubscriptionKind.ATTRIBUTE_UPDATES, DEFAULT_ATTRIBUTES_TOPIC
    return _DEVICE_SUBSCRIPTIONS.get(topic_filter)
