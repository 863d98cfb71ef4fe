"""A device profile's MQTT transport settings (SPEC §2.8, §9.3, §9.4) in the running broker:
custom telemetry and attribute topics with wildcards, a custom subscription for attribute
updates, and sendAckOnValidationException; paho devices (MQTT 3.1.1 and 5) on a real
`gatehouse broker`, profiles made and changed by other processes, as an operator would.
"""
from __future__ import annotations

import json

import pytest

from gatehouse.credentials import AccessToken
from gatehouse.models import AttributeScope, ProvisionType
from gatehouse.mqtt_topic_settings import MqttTopicSettings
from gatehouse.registry import Registry

from .conftest import module_broker
from .devices import attributes, latest_telemetry, unique
from .mqtt_accounts import app_client
from .mqtt_client import (
    acknowledged,
    body,
    codes,
    connect,
    connect5,
    next_on,
    nothing_on,
    publish_unacked,
    wait_until,
)

CUSTOM = MqttTopicSettings(telemetry_topic="sensors/+/data", attributes_topic="sensors/+/state",
                       attributes_subscribe_topic="commands/settings")


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with module_broker(tmp_path_factory.mktemp("mqtt-profile-topics")) as running:
        yield running


def profile_device(broker, transport: MqttTopicSettings | None, *, profile: str | None = None):
    """A device on a new profile with `transport`: (device, token, profile name)."""
    profile, token = profile or unique("profile"), unique("TOKEN")
    with Registry.open(broker.data_dir) as registry:
        registry.create_profile(profile, mqtt_topics=transport)
        device = registry.create_device(unique("dev"), profile=profile, credentials=AccessToken(token))
    return device, token, profile


def device_client(broker, clients, transport: MqttTopicSettings | None, *, version: int = 4):
    device, token, profile = profile_device(broker, transport)
    client = (connect5 if version == 5 else connect)(broker.mqtt_port, unique("cid"), token)
    clients.append(client)
    assert client.connack == 0, f"device login refused: {client.connack}"
    return device, client, profile


def test_telemetry_on_the_profiles_wildcard_topic_is_stored_and_the_v1_topic_no_longer_is(broker, clients):
    device, client, _ = device_client(broker, clients, CUSTOM)
    assert client.publish("sensors/kitchen/data", '{"temperature": 21.5}', qos=1)
    assert latest_telemetry(broker, device.id)["temperature"]["value"] == 21.5
    # ThingsBoard replaces the v1 topic with the profile's: a publish there is to an unknown topic,
    # acknowledged on 3.1.1 and dropped.
    assert client.publish("v1/devices/me/telemetry", '{"dropped": 1}', qos=1)
    assert client.publish("sensors/data", '{"oneLevelShort": 1}', qos=1)  # `+` fills exactly one level
    assert client.publish("v2/t", '{"short": 2}', qos=1)  # the short topics stay
    telemetry = latest_telemetry(broker, device.id)
    assert telemetry["short"]["value"] == 2
    assert "dropped" not in telemetry and "oneLevelShort" not in telemetry


def test_attributes_on_the_profiles_topic_are_stored_in_client_scope(broker, clients):
    device, client, _ = device_client(broker, clients, CUSTOM)
    assert client.publish("sensors/kitchen/state", '{"firmware": "v1.2"}', qos=1)
    assert client.publish("v1/devices/me/attributes", '{"dropped": true}', qos=1)
    assert attributes(broker, device.id, AttributeScope.CLIENT) == {"firmware": "v1.2"}


def test_a_topic_both_filters_match_carries_attributes_as_in_thingsboard(broker, clients):
    transport = MqttTopicSettings(telemetry_topic="plant/#", attributes_topic="plant/attributes")
    device, client, _ = device_client(broker, clients, transport)
    assert client.publish("plant/attributes", '{"serial": "A7"}', qos=1)
    assert client.publish("plant/line/3", '{"speed": 12}', qos=1)
    assert client.publish("plant", '{"parentLevel": 1}', qos=1)  # `/#` takes the parent level too
    assert attributes(broker, device.id, AttributeScope.CLIENT) == {"serial": "A7"}
    assert {"speed", "parentLevel"} <= set(latest_telemetry(broker, device.id))


def test_telemetry_of_the_profiles_topic_reaches_applications_like_v1_telemetry(broker, clients):
    device, client, _ = device_client(broker, clients, CUSTOM)
    app = app_client(broker, clients, f"gatehouse/devices/{device.id}/telemetry")
    assert client.publish("sensors/hall/data", '{"lux": 300}', qos=1)
    assert body(next_on(app, f"gatehouse/devices/{device.id}/telemetry"))[0]["values"] == {"lux": 300}


def test_the_profiles_subscribe_topic_gets_shared_attribute_updates_on_the_v1_topic(broker, clients):
    device, client, _ = device_client(broker, clients, CUSTOM)
    assert codes(client.subscribe("commands/settings", 0)) == [0]
    assert codes(client.subscribe("commands/other", 1)) == [0x80]  # not the profile's topic
    app = app_client(broker, clients)
    assert app.publish(f"gatehouse/devices/{device.id}/attributes/shared", '{"interval": 30}')
    # ThingsBoard publishes updates for its v1 subscription topic whatever the device subscribed
    # to; paho hands them to on_message all the same.
    message = next_on(client, "v1/devices/me/attributes")
    assert body(message) == {"interval": 30}
    assert message.qos == 0  # the QoS of the profile's subscription


def test_a_wildcard_subscribe_topic_matches_the_devices_subscription(broker, clients):
    device, client, _ = device_client(broker, clients, MqttTopicSettings(attributes_subscribe_topic="config/+/updates"))
    assert codes(client.subscribe("config/device/updates", 1)) == [1]
    app = app_client(broker, clients)
    assert app.publish(f"gatehouse/devices/{device.id}/attributes/shared", '{"deleted": ["old"]}')
    assert body(next_on(client, "v1/devices/me/attributes")) == {"deleted": ["old"]}


def test_the_v1_attribute_subscription_still_works_beside_the_profiles(broker, clients):
    device, client, _ = device_client(broker, clients, CUSTOM)
    assert codes(client.subscribe("v1/devices/me/attributes", 1)) == [1]
    app = app_client(broker, clients)
    assert app.publish(f"gatehouse/devices/{device.id}/attributes/shared", '{"mode": "eco"}')
    assert body(next_on(client, "v1/devices/me/attributes")) == {"mode": "eco"}


def test_send_ack_on_validation_exception_acknowledges_an_invalid_qos1_payload_on_mqtt_311(broker, clients):
    device, client, _ = device_client(broker, clients, MqttTopicSettings(send_ack_on_validation_exception=True))
    assert client.publish("v1/devices/me/telemetry", '{"temperature": 25,,, ', qos=1), "no PUBACK"
    assert client.publish("v1/devices/me/telemetry", '{"after": 1}', qos=1)  # still connected
    assert set(latest_telemetry(broker, device.id)) == {"after"}


def test_send_ack_on_validation_exception_still_closes_on_an_invalid_qos0_payload(broker, clients):
    _device, client, _ = device_client(broker, clients, MqttTopicSettings(send_ack_on_validation_exception=True))
    publish_unacked(client, "v1/devices/me/telemetry", "[1, 2", qos=0)
    assert client.wait_disconnected(5), "an invalid QoS 0 payload kept the connection open"


def test_without_send_ack_on_validation_exception_an_invalid_payload_closes_unacknowledged(broker, clients):
    device, client, _ = device_client(broker, clients, MqttTopicSettings(telemetry_topic="t/#"))
    info = publish_unacked(client, "t/x", "not json", qos=1)
    assert client.wait_disconnected(5)
    assert not acknowledged(info)
    assert latest_telemetry(broker, device.id) == {}


def test_mqtt5_gets_0x99_for_an_invalid_payload_whatever_the_flag(broker, clients):
    _device, client, _ = device_client(broker, clients, MqttTopicSettings(send_ack_on_validation_exception=True),
                                       version=5)
    assert client.publish_code("v1/devices/me/telemetry", "{oops", qos=1) == 0x99
    assert client.publish_code("v1/devices/me/telemetry", '{"ok": 1}', qos=1) == 0


def test_a_profile_changed_by_another_process_applies_to_the_connected_device(broker, clients):
    device, client, profile = device_client(broker, clients, None)
    assert client.publish("v1/devices/me/telemetry", '{"before": 1}', qos=1)
    with Registry.open(broker.data_dir) as registry:
        current = registry.get_profile(profile)
        registry.update_profile(current.id, current.name, ProvisionType.DISABLED,
                                mqtt_topics=MqttTopicSettings(telemetry_topic="moved/here"))

    def moved() -> bool:
        client.publish("moved/here", json.dumps({"after": 2}), qos=1)
        return "after" in latest_telemetry(broker, device.id)

    assert wait_until(moved, 10, interval=0.3), "the broker kept the old topics after the profile changed"
    assert not client.disconnected.is_set()


def test_devices_of_a_default_profile_are_unaffected_by_another_profiles_topics(broker, clients):
    _custom_device, custom_client, _ = device_client(broker, clients, CUSTOM)
    plain, plain_client, _ = device_client(broker, clients, None)
    assert plain_client.publish("sensors/kitchen/data", '{"x": 1}', qos=1)  # unknown for this device
    assert plain_client.publish("v1/devices/me/telemetry", '{"y": 2}', qos=1)
    assert set(latest_telemetry(broker, plain.id)) == {"y"}
    assert codes(plain_client.subscribe("commands/settings", 1)) == [0x80]
    assert nothing_on(custom_client) == []
