"""MQTT topics: ThingsBoard's device topics (SPEC §2.2, §2.7), the provisioning pair (§3) and
Gatehouse's per-device application namespace (DESIGN.md), classified without I/O.

Every device uses the same `v1/devices/me/...` strings, so the broker never routes them
between clients: it classifies a device publish, acts on it, and answers the one connection.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass

PROVISION_REQUEST = "/provision/request"
PROVISION_RESPONSE = "/provision/response"
APPLICATION_ROOT = "gatehouse/devices"


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


_FIXED = {
    "v1/devices/me/telemetry": DeviceAction.TELEMETRY,
    "v2/t": DeviceAction.TELEMETRY,
    "v2/t/j": DeviceAction.TELEMETRY,
    "v1/devices/me/attributes": DeviceAction.ATTRIBUTES,
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


def classify_device_publish(topic: str) -> DevicePublish:
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


def device_subscription(topic_filter: str) -> tuple[SubscriptionKind, str | None] | None:
    """What a device subscription means, or None if a device may not subscribe to it."""
    return _DEVICE_SUBSCRIPTIONS.get(topic_filter)


# --- the application namespace --------------------------------------------------------------

def device_topic(device_id: str, *parts: object) -> str:
    """`gatehouse/devices/{deviceId}/...`: where device data is published for applications."""
    return "/".join((APPLICATION_ROOT, device_id, *map(str, parts)))


class ApplicationAction(enum.Enum):
    SHARED_ATTRIBUTES = "SHARED_ATTRIBUTES"  # .../attributes/shared
    RPC_CALL = "RPC_CALL"  # .../rpc/call/{id}: server-side RPC to the device
    RPC_REPLY = "RPC_REPLY"  # .../rpc/reply/{id}: answer to the device's client-side RPC


@dataclass(frozen=True)
class ApplicationPublish:
    action: ApplicationAction
    device_id: str
    request_id: int | None = None


_APPLICATION_PUBLISH = re.compile(
    r"gatehouse/devices/(?P<device>[^/+#]+)/(?:(?P<shared>attributes/shared)|rpc/(?P<kind>call|reply)/(?P<id>\d{1,9}))")


def classify_application_publish(topic: str) -> ApplicationPublish | None:
    match = _APPLICATION_PUBLISH.fullmatch(topic)
    if match is None:
        return None
    if match["shared"]:
        return ApplicationPublish(ApplicationAction.SHARED_ATTRIBUTES, match["device"])
    action = ApplicationAction.RPC_CALL if match["kind"] == "call" else ApplicationAction.RPC_REPLY
    return ApplicationPublish(action, match["device"], int(match["id"]))


def is_application_filter(topic_filter: str) -> bool:
    """Applications may subscribe anywhere below gatehouse/devices, and nowhere else."""
    return topic_filter in ("gatehouse/#", f"{APPLICATION_ROOT}/#") or topic_filter.startswith(f"{APPLICATION_ROOT}/")
