"""A device profile's MQTT topic settings (ThingsBoard's MQTT transport configuration, SPEC §2.8), without I/O.

ThingsBoard lets a profile of transport type MQTT move a device's telemetry and client attributes
to topics of its own choosing (MQTT wildcards allowed), name the subscription that stands for
shared-attribute updates, and acknowledge an invalid payload instead of closing the connection
(`sendAckOnValidationException`). A profile without these settings is ThingsBoard's DEFAULT
transport: JSON on the `v1/devices/me/...` topics. Only JSON payloads are supported; protobuf and
Sparkplug are refused when a profile is saved.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ValidationError

DEFAULT_TELEMETRY_TOPIC = "v1/devices/me/telemetry"
DEFAULT_ATTRIBUTES_TOPIC = "v1/devices/me/attributes"
MAX_TOPIC_BYTES = 65_535  # an MQTT string


@dataclass(frozen=True)
class MqttTopicSettings:
    telemetry_topic: str = DEFAULT_TELEMETRY_TOPIC
    attributes_topic: str = DEFAULT_ATTRIBUTES_TOPIC
    attributes_subscribe_topic: str = DEFAULT_ATTRIBUTES_TOPIC
    send_ack_on_validation_exception: bool = False

    def __post_init__(self) -> None:
        for name in ("telemetry_topic", "attributes_topic", "attributes_subscribe_topic"):
            _check_filter(getattr(self, name), field=f"mqtt_{name}")

    # The broker checks attributes before telemetry, as ThingsBoard does: when both filters
    # match a topic, it carries attributes.
    def is_attributes_topic(self, topic: str) -> bool:
        return _matcher(self.attributes_topic)(topic)

    def is_telemetry_topic(self, topic: str) -> bool:
        return _matcher(self.telemetry_topic)(topic)

    def is_attributes_subscription(self, topic_filter: str) -> bool:
        """Whether subscribing to `topic_filter` (the string the device sends) asks for
        shared-attribute updates."""
        return _matcher(self.attributes_subscribe_topic)(topic_filter)

    def to_json(self) -> dict:
        """ThingsBoard's MqttDeviceProfileTransportConfiguration."""
        return {
            "type": "MQTT",
            "deviceTelemetryTopic": self.telemetry_topic,
            "deviceAttributesTopic": self.attributes_topic,
            "deviceAttributesSubscribeTopic": self.attributes_subscribe_topic,
            "transportPayloadTypeConfiguration": {"transportPayloadType": "JSON"},
            "sparkplug": False,
            "sendAckOnValidationException": self.send_ack_on_validation_exception,
        }

    @classmethod
    def from_json(cls, data: dict) -> MqttTopicSettings:
        """From a transportConfiguration of type MQTT; a blank topic is the default one, as in
        ThingsBoard. Raises ValidationError for what Gatehouse cannot honour."""
        payload = data.get("transportPayloadTypeConfiguration") or {}
        if not isinstance(payload, dict):
            raise ValidationError("transportPayloadTypeConfiguration must be an object", field="mqtt_topics")
        check_payload_type(payload.get("transportPayloadType"))
        sparkplug = data.get("sparkplug", False)
        if not isinstance(sparkplug, bool | None):
            raise ValidationError("sparkplug must be a boolean", field="mqtt_topics")
        if sparkplug:
            raise ValidationError("Sparkplug is not supported", field="mqtt_topics")

        def topic(key: str, default: str) -> str:
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise ValidationError(f"{key} must be a string", field="mqtt_topics")
            return value if value and value.strip() else default

        ack = data.get("sendAckOnValidationException")
        ack = False if ack is None else ack
        if not isinstance(ack, bool):
            raise ValidationError("sendAckOnValidationException must be a boolean", field="mqtt_topics")
        return cls(topic("deviceTelemetryTopic", DEFAULT_TELEMETRY_TOPIC),
                   topic("deviceAttributesTopic", DEFAULT_ATTRIBUTES_TOPIC),
                   topic("deviceAttributesSubscribeTopic", DEFAULT_ATTRIBUTES_TOPIC), ack)


def check_payload_type(payload_type: object) -> None:
    """Only JSON payloads (a missing type is JSON); protobuf is out of scope (SPEC)."""
    if (payload_type or "JSON") != "JSON":
        raise ValidationError(f"MQTT payload type {str(payload_type)[:32]!r} is not supported: "
                              "Gatehouse devices send JSON", field="mqtt_topics")


def _check_filter(topic_filter: str, *, field: str) -> None:
    """MQTT's rules for a topic filter (MQTT 3.1.1 §4.7): `+` fills a whole level, `#` the last."""
    label = field.removeprefix("mqtt_").replace("_", " ")
    if not isinstance(topic_filter, str) or not topic_filter:
        raise ValidationError(f"The {label} must not be empty", field=field)
    if "\0" in topic_filter or len(topic_filter.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise ValidationError(f"The {label} is not a valid MQTT topic filter", field=field)
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValidationError(f"The {label} may have '#' only as its whole last level", field=field)
        if "+" in level and level != "+":
            raise ValidationError(f"The {label} may have '+' only as a whole level", field=field)


@functools.lru_cache(maxsize=256)
def _matcher(topic_filter: str) -> Callable[[str], bool]:
    """ThingsBoard's MqttTopicFilterFactory: `#` alone matches everything, `+` one non-empty
    level, `/#` the parent level and everything below it; a filter without wildcards matches
    only itself."""
    if topic_filter == "#":
        return lambda topic: True
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter.__eq__
    levels = topic_filter.split("/")
    rest = levels[-1] == "#"
    pattern = "/".join("[^/]+" if level == "+" else re.escape(level) for level in (levels[:-1] if rest else levels))
    regex = re.compile(pattern + ("(?:/.*)?" if rest else ""), re.DOTALL)
    return lambda topic: regex.fullmatch(topic) is not None
