"""A profile's MQTT transport settings (SPEC §2.8) in the domain: ThingsBoard's topic filter
matching, the rules a filter must follow, ThingsBoard's JSON, and the registry round trip.
The broker's side is tests/test_mqtt_profile_topics.py."""
from __future__ import annotations

import pytest

from gatehouse.errors import ValidationError
from gatehouse.mqtt_topic_settings import MqttTopicSettings
from gatehouse.registry import Registry


@pytest.mark.parametrize("topic_filter, topic, matches", [
    ("v1/devices/me/telemetry", "v1/devices/me/telemetry", True),
    ("v1/devices/me/telemetry", "v1/devices/me/telemetry/", False),
    ("sensors/+/data", "sensors/kitchen/data", True),
    ("sensors/+/data", "sensors//data", False),  # ThingsBoard's `+` needs a non-empty level
    ("sensors/+/data", "sensors/a/b/data", False),
    ("plant/#", "plant", True),  # `/#` takes the parent level too
    ("plant/#", "plant/line/3", True),
    ("plant/#", "plantation", False),
    ("#", "anything/at/all", True),
    ("a.b/+", "aXb/c", False),  # only the wildcards are special, not regex characters
    ("+/+", "x/y", True),
])
def test_topic_filters_match_as_thingsboard_matches_them(topic_filter, topic, matches):
    assert MqttTopicSettings(telemetry_topic=topic_filter).is_telemetry_topic(topic) is matches


def test_the_subscribe_filter_is_matched_against_the_devices_subscription_string():
    transport = MqttTopicSettings(attributes_subscribe_topic="config/+/updates")
    assert transport.is_attributes_subscription("config/dev1/updates")
    assert not transport.is_attributes_subscription("config/updates")


@pytest.mark.parametrize("topic_filter, message", [
    ("", "must not be empty"),
    ("a/#/b", "'#' only as its whole last level"),
    ("a/b#", "'#' only as its whole last level"),
    ("a/b+/c", "only as a whole level"),
    ("a/\0", "not a valid MQTT topic filter"),
    ("x" * 65_536, "not a valid MQTT topic filter"),
])
@pytest.mark.parametrize("field", ["telemetry_topic", "attributes_topic", "attributes_subscribe_topic"])
def test_a_filter_breaking_mqtts_rules_is_refused_and_named(topic_filter, message, field):
    with pytest.raises(ValidationError, match=message) as refused:
        MqttTopicSettings(**{field: topic_filter})
    assert refused.value.field == f"mqtt_{field}"


def test_thingsboard_json_round_trips_and_blank_topics_are_the_defaults():
    transport = MqttTopicSettings("t/+", "a/#", "s/x", True)
    assert MqttTopicSettings.from_json(transport.to_json()) == transport
    assert MqttTopicSettings.from_json({"type": "MQTT", "deviceTelemetryTopic": " ", "deviceAttributesTopic": None}) \
        == MqttTopicSettings()


@pytest.mark.parametrize("data, message", [
    ({"transportPayloadTypeConfiguration": {"transportPayloadType": "PROTOBUF"}}, "PROTOBUF.* not supported"),
    ({"sparkplug": True}, "Sparkplug is not supported"),
    ({"sparkplug": "no"}, "sparkplug must be a boolean"),
    ({"transportPayloadTypeConfiguration": "JSON"}, "transportPayloadTypeConfiguration must be an object"),
    ({"transportPayloadTypeConfiguration": {"transportPayloadType": ["JSON"]}}, "is not supported"),
    ({"deviceTelemetryTopic": 5}, "deviceTelemetryTopic must be a string"),
    ({"sendAckOnValidationException": "yes"}, "must be a boolean"),
    ({"deviceAttributesTopic": "x/#/y"}, "'#' only"),
])
def test_settings_gatehouse_cannot_honour_are_refused_from_json(data, message):
    with pytest.raises(ValidationError, match=message):
        MqttTopicSettings.from_json({"type": "MQTT", **data})


def test_a_profile_keeps_its_transport_until_saved_without_one(tmp_path):
    with Registry.initialise(tmp_path / "data") as registry:
        transport = MqttTopicSettings("sensors/+/data", send_ack_on_validation_exception=True)
        profile = registry.create_profile("custom", mqtt_topics=transport)
        assert registry.get_profile("custom").mqtt_topics == transport
        shown = profile.to_json()
        assert shown["transportType"] == "MQTT"
        assert shown["profileData"]["transportConfiguration"]["deviceTelemetryTopic"] == "sensors/+/data"
        assert registry.profile_topic_settings()[profile.id] == transport
        registry.update_profile(profile.id, "custom")  # ThingsBoard's save replaces the whole profile
        assert registry.get_profile("custom").mqtt_topics is None
        assert registry.get_profile("custom").to_json()["profileData"]["transportConfiguration"] == {"type": "DEFAULT"}
        assert registry.profile_topic_settings()[registry.default_profile().id] is None
