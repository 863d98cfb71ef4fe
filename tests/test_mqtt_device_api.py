"""The MQTT device API (SPEC §2.2–§2.7, §9.3–§9.5) and the application namespace
(DESIGN.md "Application topics"), driven by real paho clients (MQTT 3.1.1, plain port)
against one real `gatehouse broker` process shared by the module.

Every test makes its own devices (unique tokens and client ids) and its own application
account, so the tests do not depend on each other even though they share the broker.
"""
from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gatehouse.models import AttributeScope
from gatehouse.payloads import kv_entries
from gatehouse.registry import Registry

from .conftest import module_broker
from .devices import attributes, latest_telemetry, token_device, unique
from .mqtt_accounts import app_client, device_client
from .mqtt_client import TestClient as MqttClient
from .mqtt_client import acknowledged, body, codes, connect, next_on, nothing_on, publish_unacked, wait_until

# --- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """One broker for the whole module (each test still uses fresh devices and accounts)."""
    with module_broker(tmp_path_factory.mktemp("mqtt-device-api"), "--provision-close-seconds", "2") as running:
        yield running



def subscribe_many(client: MqttClient, filters: list[tuple[str, int]]) -> list[int]:
    """One SUBSCRIBE packet with several filters; the SUBACK codes in order."""
    client.client.subscribe(filters)
    return codes(client.subacks.get(timeout=10))


def unsubscribe(client: MqttClient, topic_filter: str, timeout: float = 10.0) -> None:
    """UNSUBSCRIBE and wait for the UNSUBACK."""
    done = threading.Event()
    client.client.on_unsubscribe = lambda *args: done.set()
    client.client.unsubscribe(topic_filter)
    assert done.wait(timeout), f"no UNSUBACK for {topic_filter}"


def save_attributes(broker, device_id: str, scope: AttributeScope, values: dict) -> None:
    with Registry.open(broker.data_dir) as registry:
        registry.save_attributes(device_id, scope, kv_entries(values))


def still_open(client: MqttClient, broker, device_id: str) -> None:
    """The connection is alive: not disconnected, and a telemetry message is acknowledged and stored."""
    assert not client.disconnected.is_set(), "the broker closed the connection"
    marker = uuid.uuid4().int % 1_000_000
    assert client.publish("v1/devices/me/telemetry", json.dumps({"alive": marker}), qos=1, timeout=5)
    assert latest_telemetry(broker, device_id)["alive"]["value"] == marker


# --- telemetry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["v1/devices/me/telemetry", "v2/t", "v2/t/j"])
def test_telemetry_plain_object_values_are_stored_with_their_types(broker, clients, topic):
    device, client = device_client(broker, clients)
    payload = {"s": "hello", "b": True, "d": 21.5, "l": 42, "j": {"nested": [1, 2]}, "cast": "73"}
    assert client.publish(topic, json.dumps(payload))
    stored = latest_telemetry(broker, device.id)
    assert stored["s"]["value"] == "hello"
    assert stored["b"]["value"] is True
    assert type(stored["d"]["value"]) is float and stored["d"]["value"] == 21.5
    assert type(stored["l"]["value"]) is int and stored["l"]["value"] == 42
    assert stored["j"]["value"] == {"nested": [1, 2]}
    assert type(stored["cast"]["value"]) is int and stored["cast"]["value"] == 73  # type cast on (SPEC §2.3)
    now = int(time.time() * 1000)
    assert all(abs(entry["ts"] - now) < 60_000 for entry in stored.values())  # server time


def test_telemetry_with_ts_and_values_uses_the_given_timestamp(broker, clients):
    device, client = device_client(broker, clients)
    assert client.publish("v1/devices/me/telemetry",
                          json.dumps({"ts": 1_700_000_000_000, "values": {"temperature": 26, "flag": False}}))
    stored = latest_telemetry(broker, device.id)
    assert stored["temperature"] == {"ts": 1_700_000_000_000, "value": 26}
    assert stored["flag"] == {"ts": 1_700_000_000_000, "value": False}
    assert "ts" not in stored and "values" not in stored


def test_telemetry_array_mixing_timestamped_and_plain_objects(broker, clients):
    device, client = device_client(broker, clients)
    payload = [{"ts": 1_600_000_000_000, "values": {"a": 1.25}}, {"b": "text", "c": [1, "x"]}]
    assert client.publish("v1/devices/me/telemetry", json.dumps(payload))
    stored = latest_telemetry(broker, device.id)
    assert stored["a"] == {"ts": 1_600_000_000_000, "value": 1.25}
    assert stored["b"]["value"] == "text" and stored["b"]["ts"] > 1_600_000_000_000
    assert stored["c"]["value"] == [1, "x"]


def test_telemetry_in_relaxed_json_is_accepted(broker, clients):
    device, client = device_client(broker, clients)
    assert client.publish("v1/devices/me/telemetry", "{temperature:25}")
    stored = latest_telemetry(broker, device.id)
    assert stored["temperature"]["value"] == 25 and type(stored["temperature"]["value"]) is int


def test_telemetry_is_republished_to_applications(broker, clients):
    app = app_client(broker, clients, "gatehouse/devices/+/telemetry")
    device, client = device_client(broker, clients)
    assert client.publish("v1/devices/me/telemetry",
                          json.dumps([{"ts": 1_700_000_000_123, "values": {"t": 20}}, {"h": 55.5, "ok": True}]))
    message = next_on(app, f"gatehouse/devices/{device.id}/telemetry")
    records = body(message)
    assert isinstance(records, list) and len(records) == 2
    assert records[0] == {"ts": 1_700_000_000_123, "values": {"t": 20}}
    assert records[1]["values"] == {"h": 55.5, "ok": True}
    assert isinstance(records[1]["ts"], int) and records[1]["ts"] > 1_700_000_000_123


def test_an_integer_past_64_bits_inside_a_json_value_is_acknowledged_passed_on_and_answered(broker, clients):
    """Found by tests/test_fuzz_servers.py: passing such a value on to applications failed after it
    was stored, and the device lost its connection instead of getting its PUBACK."""
    app = app_client(broker, clients, "gatehouse/devices/+/telemetry", "gatehouse/devices/+/attributes")
    device, client = device_client(broker, clients)
    big = '{"k": [123456789012345678901234567890]}'
    assert client.publish("v1/devices/me/telemetry", big)
    assert client.publish("v1/devices/me/attributes", big)
    assert body(next_on(app, f"gatehouse/devices/{device.id}/telemetry"))[0]["values"] == json.loads(big)
    assert body(next_on(app, f"gatehouse/devices/{device.id}/attributes")) == json.loads(big)
    client.subscribe("v1/devices/me/attributes/response/+")
    assert client.publish("v1/devices/me/attributes/request/1", '{"clientKeys": "k"}')
    assert body(next_on(client, "v1/devices/me/attributes/response/1")) == {"client": json.loads(big)}


def test_persistent_application_session_gets_qos1_data_published_while_it_was_away(broker, clients):
    with Registry.open(broker.data_dir) as registry:
        username, password = registry.create_application(unique("app"))
    client_id = unique("app-cid")
    app = connect(broker.mqtt_port, client_id, username, password, clean_session=False)
    clients.append(app)
    assert codes(app.subscribe("gatehouse/devices/+/telemetry", 1)) == [1]
    app.close()
    device, client = device_client(broker, clients)
    assert client.publish("v1/devices/me/telemetry", '{"while_away": 1}', qos=1)

    app = connect(broker.mqtt_port, client_id, username, password, clean_session=False)
    clients.append(app)
    assert app.connack == 0
    records = body(next_on(app, f"gatehouse/devices/{device.id}/telemetry"))
    assert [r["values"] for r in records] == [{"while_away": 1}]


def test_short_topic_telemetry_is_republished_like_v1(broker, clients):
    app = app_client(broker, clients, "gatehouse/devices/+/telemetry")
    device, client = device_client(broker, clients)
    assert client.publish("v2/t", '{"rssi": -70}')
    records = body(next_on(app, f"gatehouse/devices/{device.id}/telemetry"))
    assert [r["values"] for r in records] == [{"rssi": -70}]


# --- attributes ---------------------------------------------------------------------------------


def test_client_attributes_are_stored_in_client_scope_and_republished(broker, clients):
    app = app_client(broker, clients, "gatehouse/devices/+/attributes")
    device, client = device_client(broker, clients)
    assert client.publish("v1/devices/me/attributes", json.dumps({"fw": "1.0.3", "slots": 4, "eco": True}))
    assert attributes(broker, device.id, AttributeScope.CLIENT) == {"fw": "1.0.3", "slots": 4, "eco": True}
    assert attributes(broker, device.id, AttributeScope.SHARED) == {}
    message = next_on(app, f"gatehouse/devices/{device.id}/attributes")
    assert body(message) == {"fw": "1.0.3", "slots": 4, "eco": True}


def test_client_attributes_on_short_topic_are_stored(broker, clients):
    device, client = device_client(broker, clients)
    assert client.publish("v2/a", '{"model": "X1"}')
    assert attributes(broker, device.id, AttributeScope.CLIENT) == {"model": "X1"}


@pytest.mark.parametrize("request_topic, response_topic", [
    ("v1/devices/me/attributes/request/5", "v1/devices/me/attributes/response/5"),
    ("v2/a/req/5", "v2/a/res/5"),
])
def test_attribute_request_is_answered_without_a_subscription(broker, clients, request_topic, response_topic):
    device, client = device_client(broker, clients)
    save_attributes(broker, device.id, AttributeScope.SHARED, {"b": "shared-b", "other": 1})
    assert client.publish("v1/devices/me/attributes", '{"a": 11, "z": "zz"}')
    assert client.publish(request_topic, json.dumps({"clientKeys": "a", "sharedKeys": "b"}))
    message = next_on(client, response_topic)
    assert body(message) == {"client": {"a": 11}, "shared": {"b": "shared-b"}}
    assert message.qos == 1  # not subscribed: QoS 1 (SPEC §2.4)


def test_attribute_response_uses_the_qos_of_the_response_subscription(broker, clients):
    # SPEC §2.4: the response goes out with the QoS the device subscribed to the response topic with.
    _device, client = device_client(broker, clients)
    assert codes(client.subscribe("v1/devices/me/attributes/response/+", 0)) == [0]
    assert client.publish("v1/devices/me/attributes", '{"c": 1}')
    assert client.publish("v1/devices/me/attributes/request/21", '{"clientKeys": "c"}')
    message = next_on(client, "v1/devices/me/attributes/response/21")
    assert body(message) == {"client": {"c": 1}}
    assert message.qos == 0


def test_attribute_request_with_empty_object_returns_everything(broker, clients):
    device, client = device_client(broker, clients)
    save_attributes(broker, device.id, AttributeScope.SHARED, {"s1": "x", "s2": 2.5})
    assert client.publish("v1/devices/me/attributes", '{"c1": true, "c2": "y"}')
    assert codes(client.subscribe("v1/devices/me/attributes/response/+", 1)) == [1]
    assert client.publish("v1/devices/me/attributes/request/9", "{}")
    assert body(next_on(client, "v1/devices/me/attributes/response/9")) == {
        "client": {"c1": True, "c2": "y"}, "shared": {"s1": "x", "s2": 2.5}}


def test_attribute_request_for_one_scope_returns_only_that_scope(broker, clients):
    device, client = device_client(broker, clients)
    save_attributes(broker, device.id, AttributeScope.SHARED, {"s": "x"})
    assert client.publish("v1/devices/me/attributes", '{"c": 1}')
    assert client.publish("v1/devices/me/attributes/request/6", '{"sharedKeys": "s,missing"}')
    assert body(next_on(client, "v1/devices/me/attributes/response/6")) == {"shared": {"s": "x"}}


# --- invalid publishes ---------------------------------------------------------------------------


def test_invalid_json_telemetry_at_qos1_closes_the_connection_without_puback(broker, clients):
    device, client = device_client(broker, clients)
    info = publish_unacked(client, "v1/devices/me/telemetry", '{"temperature": 25,,, ')
    assert client.wait_disconnected(5), "the broker kept the connection open after invalid JSON"
    time.sleep(0.2)
    assert not acknowledged(info), "invalid JSON was acknowledged"
    assert latest_telemetry(broker, device.id) == {}


def test_telemetry_array_with_a_non_object_element_closes_the_connection(broker, clients):
    device, client = device_client(broker, clients)
    info = publish_unacked(client, "v1/devices/me/telemetry", '[{"a": 1}, 5]')
    assert client.wait_disconnected(5)
    assert not acknowledged(info)
    assert latest_telemetry(broker, device.id) == {}


def test_publish_to_an_unknown_topic_is_acknowledged_and_the_connection_stays_open(broker, clients):
    device, client = device_client(broker, clients)
    assert client.publish("wrong/topic", '{"temperature": 25}', qos=1, timeout=5), "no PUBACK for wrong/topic"
    still_open(client, broker, device.id)
    assert "temperature" not in latest_telemetry(broker, device.id)


def test_gateway_topic_from_a_non_gateway_device_gets_no_puback_but_stays_open(broker, clients):
    device, client = device_client(broker, clients)
    info = publish_unacked(client, "v1/gateway/telemetry", '{"child": [{"t": 1}]}')
    time.sleep(1.5)
    assert not acknowledged(info), "a non-gateway device got a PUBACK on v1/gateway/telemetry"
    still_open(client, broker, device.id)
    assert not acknowledged(info)


# --- subscriptions ------------------------------------------------------------------------------


@pytest.mark.parametrize("topic_filter", [
    "v1/devices/me/attributes",
    "v1/devices/me/rpc/request/+",
    "v1/devices/me/attributes/response/+",
    "v1/devices/me/rpc/response/+",
    "v2/a",
    "v2/r/req/+",
])
def test_device_may_subscribe_to_its_topics(broker, clients, topic_filter):
    _device, client = device_client(broker, clients)
    assert codes(client.subscribe(topic_filter, 1)) == [1]
    assert codes(client.subscribe(topic_filter, 0)) == [0]


@pytest.mark.parametrize("topic_filter", [
    "#", "gatehouse/#", "gatehouse/devices/+/telemetry", "v1/devices/+/telemetry", "v1/devices/me/telemetry",
    "wrong/topic/+", "/provision/response", "v1/devices/me/#",
])
def test_device_subscription_outside_the_allow_list_is_refused_and_connection_stays_open(
        broker, clients, topic_filter):
    device, client = device_client(broker, clients)
    assert codes(client.subscribe(topic_filter, 1)) == [0x80]
    still_open(client, broker, device.id)


def test_mixed_subscribe_gets_a_code_per_filter(broker, clients):
    device, client = device_client(broker, clients)
    result = subscribe_many(client, [
        ("v1/devices/me/attributes", 1), ("#", 1), ("v1/devices/me/rpc/request/+", 0),
        ("gatehouse/#", 0), ("v1/devices/me/attributes/response/+", 1), ("wrong/topic/+", 1),
    ])
    assert result == [1, 0x80, 0, 0x80, 1, 0x80]
    still_open(client, broker, device.id)


def test_granted_qos_is_at_most_1(broker, clients):
    # SPEC §2: QoS 0 and 1 only, granted QoS is min(requested, 1).
    _device, client = device_client(broker, clients)
    assert codes(client.subscribe("v1/devices/me/attributes", 2)) == [1]


# --- shared attribute updates -------------------------------------------------------------------


def test_shared_attribute_update_from_an_application_reaches_the_subscribed_device(broker, clients):
    device, client = device_client(broker, clients)
    assert codes(client.subscribe("v1/devices/me/attributes", 1)) == [1]
    app = app_client(broker, clients)
    assert app.publish(f"gatehouse/devices/{device.id}/attributes/shared", '{"targetTemp": 21, "mode": "eco"}')
    message = next_on(client, "v1/devices/me/attributes")
    assert body(message) == {"targetTemp": 21, "mode": "eco"}
    assert message.qos == 1
    assert attributes(broker, device.id, AttributeScope.SHARED) == {"targetTemp": 21, "mode": "eco"}
    assert attributes(broker, device.id, AttributeScope.CLIENT) == {}


def test_shared_attribute_deletion_is_delivered_and_removed(broker, clients):
    device, client = device_client(broker, clients)
    save_attributes(broker, device.id, AttributeScope.SHARED, {"k": "v", "keep": 1})
    assert codes(client.subscribe("v1/devices/me/attributes", 1)) == [1]
    app = app_client(broker, clients)
    assert app.publish(f"gatehouse/devices/{device.id}/attributes/shared", '{"deleted": ["k"]}')
    assert body(next_on(client, "v1/devices/me/attributes")) == {"deleted": ["k"]}
    assert attributes(broker, device.id, AttributeScope.SHARED) == {"keep": 1}


def test_shared_attribute_update_uses_the_subscription_qos_0(broker, clients):
    device, client = device_client(broker, clients)
    assert codes(client.subscribe("v1/devices/me/attributes", 0)) == [0]
    app = app_client(broker, clients)
    assert app.publish(f"gatehouse/devices/{device.id}/attributes/shared", '{"q": 0}')
    message = next_on(client, "v1/devices/me/attributes")
    assert body(message) == {"q": 0}
    assert message.qos == 0


def test_shared_attribute_update_on_short_topic_family(broker, clients):
    device, client = device_client(broker, clients)
    assert codes(client.subscribe("v2/a", 1)) == [1]
    app = app_client(broker, clients)
    assert app.publish(f"gatehouse/devices/{device.id}/attributes/shared", '{"short": true}')
    assert body(next_on(client, "v2/a")) == {"short": True}


def test_device_not_subscribed_to_attributes_receives_no_update(broker, clients):
    device, client = device_client(broker, clients)
    assert codes(client.subscribe("v1/devices/me/rpc/request/+", 1)) == [1]
    app = app_client(broker, clients)
    assert app.publish(f"gatehouse/devices/{device.id}/attributes/shared", '{"silent": 1}')
    assert wait_until(lambda: attributes(broker, device.id, AttributeScope.SHARED) == {"silent": 1}, 5)
    assert nothing_on(client) == []


# --- server-side RPC ----------------------------------------------------------------------------


def test_server_side_rpc_round_trip(broker, clients):
    device, client = device_client(broker, clients)
    assert codes(client.subscribe("v1/devices/me/rpc/request/+", 1)) == [1]
    app = app_client(broker, clients, f"gatehouse/devices/{device.id}/rpc/response/+")
    assert app.publish(f"gatehouse/devices/{device.id}/rpc/call/42",
                       '{"method": "setGpio", "params": {"pin": 1}}')
    request = next_on(client, "v1/devices/me/rpc/request/42")
    assert body(request) == {"method": "setGpio", "params": {"pin": 1}}
    assert client.publish("v1/devices/me/rpc/response/42", '{"pin": 1, "value": true}')
    reply = next_on(app, f"gatehouse/devices/{device.id}/rpc/response/42")
    assert body(reply) == {"pin": 1, "value": True}


def test_server_side_rpc_on_short_topics(broker, clients):
    device, client = device_client(broker, clients)
    assert codes(client.subscribe("v2/r/req/+", 1)) == [1]
    app = app_client(broker, clients, f"gatehouse/devices/{device.id}/rpc/response/+")
    assert app.publish(f"gatehouse/devices/{device.id}/rpc/call/8", '{"method": "reboot", "params": null}')
    assert body(next_on(client, "v2/r/req/8")) == {"method": "reboot", "params": None}
    assert client.publish("v2/r/res/8", '"ok"')
    assert body(next_on(app, f"gatehouse/devices/{device.id}/rpc/response/8")) == "ok"


def test_server_side_rpc_to_an_offline_device_answers_the_application_with_an_error(broker, clients):
    device, _token = token_device(broker)
    app = app_client(broker, clients, f"gatehouse/devices/{device.id}/rpc/response/+")
    assert app.publish(f"gatehouse/devices/{device.id}/rpc/call/42", '{"method": "setGpio", "params": {"pin": 1}}')
    reply = body(next_on(app, f"gatehouse/devices/{device.id}/rpc/response/42"))
    assert isinstance(reply, dict) and "error" in reply and reply["error"]


# --- client-side RPC ----------------------------------------------------------------------------


def test_client_side_rpc_round_trip_through_an_application(broker, clients):
    device, client = device_client(broker, clients)
    assert codes(client.subscribe("v1/devices/me/rpc/response/+", 1)) == [1]
    app = app_client(broker, clients, f"gatehouse/devices/{device.id}/rpc/request/+")
    assert client.publish("v1/devices/me/rpc/request/3", '{"method": "getTime", "params": {}}')
    request = next_on(app, f"gatehouse/devices/{device.id}/rpc/request/3")
    assert body(request) == {"method": "getTime", "params": {}}
    assert app.publish(f"gatehouse/devices/{device.id}/rpc/reply/3", '{"time": 1700000000000}')
    response = next_on(client, "v1/devices/me/rpc/response/3")
    assert body(response) == {"time": 1700000000000}


def test_get_session_limits_is_answered_by_the_broker(broker, clients):
    device, client = device_client(broker, clients)
    app = app_client(broker, clients, f"gatehouse/devices/{device.id}/rpc/request/+")
    assert client.publish("v1/devices/me/rpc/request/7", '{"method": "getSessionLimits", "params": {}}')
    limits = body(next_on(client, "v1/devices/me/rpc/response/7"))
    assert limits["maxPayloadSize"] == 65536
    assert isinstance(limits["maxInflightMessages"], int) and limits["maxInflightMessages"] > 0
    assert set(limits["rateLimits"]) == {"messages", "telemetryMessages", "telemetryDataPoints"}
    assert "gatewayRateLimits" not in limits
    assert nothing_on(app) == [], "getSessionLimits was forwarded to applications"


def test_invalid_client_side_rpc_request_closes_the_connection(broker, clients):
    _device, client = device_client(broker, clients)
    info = publish_unacked(client, "v1/devices/me/rpc/request/4", "not json at all {")
    assert client.wait_disconnected(5)
    assert not acknowledged(info)


# --- isolation between devices and between devices and applications -----------------------------


@pytest.fixture
def two_devices(broker, clients):
    pair = []
    for prefix in ("iso-a", "iso-b"):
        device, client = device_client(broker, clients, prefix)
        # Every topic an answer to the other device could be sent on, too.
        assert subscribe_many(client, [("v1/devices/me/attributes", 1), ("v1/devices/me/rpc/request/+", 1),
                                       ("v1/devices/me/attributes/response/+", 1),
                                       ("v1/devices/me/rpc/response/+", 1)]) == [1, 1, 1, 1]
        pair.append((device, client))
    return pair


def test_an_attribute_response_reaches_only_the_device_that_asked(broker, clients, two_devices):
    (a, client_a), (_b, client_b) = two_devices
    save_attributes(broker, a.id, AttributeScope.SHARED, {"forA": 1})
    assert client_a.publish("v1/devices/me/attributes/request/3", '{"sharedKeys": "forA"}')
    assert body(next_on(client_a, "v1/devices/me/attributes/response/3")) == {"shared": {"forA": 1}}
    assert nothing_on(client_b) == []


def test_shared_attribute_update_for_one_device_reaches_only_that_device(broker, clients, two_devices):
    (a, client_a), (b, client_b) = two_devices
    app = app_client(broker, clients)
    assert app.publish(f"gatehouse/devices/{a.id}/attributes/shared", '{"onlyA": 1}')
    assert body(next_on(client_a, "v1/devices/me/attributes")) == {"onlyA": 1}
    assert nothing_on(client_b) == []
    assert attributes(broker, b.id, AttributeScope.SHARED) == {}


def test_rpc_for_one_device_reaches_only_that_device(broker, clients, two_devices):
    (a, client_a), (_b, client_b) = two_devices
    app = app_client(broker, clients)
    assert app.publish(f"gatehouse/devices/{a.id}/rpc/call/1", '{"method": "blink", "params": 3}')
    assert body(next_on(client_a, "v1/devices/me/rpc/request/1")) == {"method": "blink", "params": 3}
    assert nothing_on(client_b) == []


def test_data_published_by_one_device_never_reaches_another(broker, clients, two_devices):
    (_a, client_a), (b, client_b) = two_devices
    assert client_a.publish("v1/devices/me/telemetry", '{"secret": 1}')
    assert client_a.publish("v1/devices/me/attributes", '{"clientAttr": 2}')  # B subscribes to this topic name
    assert client_a.publish("v1/devices/me/rpc/request/5", '{"method": "getTime", "params": {}}')
    assert client_a.publish("v1/devices/me/rpc/response/1", '{"r": 1}')
    assert nothing_on(client_b) == []
    assert latest_telemetry(broker, b.id) == {}
    assert attributes(broker, b.id, AttributeScope.CLIENT) == {}


def test_device_cannot_speak_for_another_device_through_its_will(broker, clients, two_devices):
    # A will is published by the broker itself when a connection drops; routed as it is, it
    # would reach applications past the ACL. Wills are ignored, as ThingsBoard ignores them.
    (_a, _client_a), (b, _client_b) = two_devices
    app = app_client(broker, clients, "gatehouse/#")
    spoofed = f"gatehouse/devices/{b.id}/telemetry"
    device, token = token_device(broker, "will")
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique("will"), protocol=paho.MQTTv311)
    client.username_pw_set(token)
    client.will_set(spoofed, '[{"ts": 1, "values": {"forged": true}}]', qos=1)
    client.connect("127.0.0.1", broker.mqtt_port)
    client.loop_start()
    try:
        assert next_on(app, f"gatehouse/devices/{device.id}/events")  # connected
        client.socket().shutdown(socket.SHUT_RDWR)  # dropped without DISCONNECT: the will would go now
        assert next_on(app, f"gatehouse/devices/{device.id}/events")  # disconnected
        assert nothing_on(app, lambda message: message.topic == spoofed) == []
    finally:
        client.loop_stop()


def test_device_cannot_use_the_application_namespace_to_reach_another_device(broker, clients, two_devices):
    (a, client_a), (b, client_b) = two_devices
    client_a.publish(f"gatehouse/devices/{b.id}/attributes/shared", '{"hijack": 1}', timeout=3)
    client_a.publish(f"gatehouse/devices/{b.id}/rpc/call/9", '{"method": "hijack", "params": {}}', timeout=3)
    client_a.publish(f"gatehouse/devices/{b.id}/telemetry", '[{"ts": 1, "values": {"hijack": 1}}]', timeout=3)
    assert nothing_on(client_b) == []
    assert attributes(broker, b.id, AttributeScope.SHARED) == {}
    assert latest_telemetry(broker, b.id) == {}
    assert attributes(broker, a.id, AttributeScope.SHARED) == {}


def test_application_cannot_publish_as_a_device(broker, clients):
    _device, client = device_client(broker, clients)
    assert codes(client.subscribe("v1/devices/me/attributes", 1)) == [1]
    app = app_client(broker, clients)
    key = f"app_injected_{uuid.uuid4().hex[:8]}"
    app.publish("v1/devices/me/telemetry", json.dumps({key: 1}), timeout=3)
    app.publish("v1/devices/me/attributes", json.dumps({key: 2}), timeout=3)
    assert nothing_on(client) == []
    with Registry.open(broker.data_dir) as registry:
        for other in registry.list_devices(limit=10_000):
            assert key not in registry.latest_telemetry(other.id), other.name
            assert key not in registry.get_attributes(other.id, AttributeScope.CLIENT), other.name


def test_device_cannot_receive_application_topics(broker, clients):
    device, client = device_client(broker, clients)
    assert codes(client.subscribe(f"gatehouse/devices/{device.id}/telemetry", 1)) == [0x80]
    assert client.publish("v1/devices/me/telemetry", '{"t": 1}')
    assert nothing_on(client) == []


# --- events -------------------------------------------------------------------------------------


def test_applications_see_connected_and_disconnected_events(broker, clients):
    app = app_client(broker, clients, "gatehouse/devices/+/events")
    device, token = token_device(broker)
    topic = f"gatehouse/devices/{device.id}/events"
    client = connect(broker.mqtt_port, unique("cid"), token)
    clients.append(client)
    assert client.connack == 0
    connected = body(next_on(app, topic))
    assert connected["event"] == "connected" and isinstance(connected["ts"], int)
    client.close()
    disconnected = body(next_on(app, topic))
    assert disconnected["event"] == "disconnected" and disconnected["ts"] >= connected["ts"]


def test_event_on_a_dropped_connection_is_disconnected(broker, clients):
    app = app_client(broker, clients, "gatehouse/devices/+/events")
    device, client = device_client(broker, clients)
    topic = f"gatehouse/devices/{device.id}/events"
    assert body(next_on(app, topic))["event"] == "connected"
    publish_unacked(client, "v1/devices/me/telemetry", "{broken")  # the broker closes the connection
    assert client.wait_disconnected(5)
    assert body(next_on(app, topic))["event"] == "disconnected"


# --- more payload rules (SPEC §2.2–§2.4) ---------------------------------------------------------


def test_telemetry_at_qos0_is_stored(broker, clients):
    device, client = device_client(broker, clients)
    client.publish("v1/devices/me/telemetry", '{"q0": 7}', qos=0)
    assert wait_until(lambda: latest_telemetry(broker, device.id).get("q0", {}).get("value") == 7, 5)


def test_telemetry_null_values_are_skipped_and_ts_without_values_is_a_key(broker, clients):
    device, client = device_client(broker, clients)
    assert client.publish("v1/devices/me/telemetry", '{"ts": 5, "n": null, "v": 1}')
    stored = latest_telemetry(broker, device.id)
    assert "n" not in stored
    assert stored["ts"]["value"] == 5 and stored["v"]["value"] == 1


def test_oversized_telemetry_closes_the_connection(broker, clients):
    device, client = device_client(broker, clients)
    info = publish_unacked(client, "v1/devices/me/telemetry", json.dumps({"big": "x" * 70_000}))
    assert client.wait_disconnected(5)
    assert not acknowledged(info)
    assert latest_telemetry(broker, device.id) == {}


def test_client_attributes_as_an_array_close_the_connection(broker, clients):
    device, client = device_client(broker, clients)
    info = publish_unacked(client, "v1/devices/me/attributes", '[{"a": 1}]')
    assert client.wait_disconnected(5)
    assert not acknowledged(info)
    assert attributes(broker, device.id, AttributeScope.CLIENT) == {}


def test_invalid_attribute_request_closes_the_connection(broker, clients):
    _device, client = device_client(broker, clients)
    info = publish_unacked(client, "v1/devices/me/attributes/request/1", "{clientKeys:")
    assert client.wait_disconnected(5)
    assert not acknowledged(info)


def test_attribute_request_on_short_json_topic(broker, clients):
    device, client = device_client(broker, clients)
    save_attributes(broker, device.id, AttributeScope.SHARED, {"sj": "yes"})
    assert client.publish("v2/a/req/j/12", '{"sharedKeys": "sj"}')
    assert body(next_on(client, "v2/a/res/j/12")) == {"shared": {"sj": "yes"}}


# --- more on server pushes ----------------------------------------------------------------------


def test_shared_attribute_update_for_an_offline_device_is_stored_and_readable_later(broker, clients):
    device, token = token_device(broker)
    app = app_client(broker, clients)
    assert app.publish(f"gatehouse/devices/{device.id}/attributes/shared", '{"later": "on"}')
    assert wait_until(lambda: attributes(broker, device.id, AttributeScope.SHARED) == {"later": "on"}, 5)
    _, client = device_client(broker, clients, device_and_token=(device, token))
    assert client.publish("v1/devices/me/attributes/request/2", '{"sharedKeys": "later"}')
    assert body(next_on(client, "v1/devices/me/attributes/response/2")) == {"shared": {"later": "on"}}


def test_invalid_shared_attribute_update_is_ignored_and_the_application_stays_connected(broker, clients):
    device, client = device_client(broker, clients)
    assert codes(client.subscribe("v1/devices/me/attributes", 1)) == [1]
    app = app_client(broker, clients)
    assert app.publish(f"gatehouse/devices/{device.id}/attributes/shared", "[1, 2")
    assert app.publish(f"gatehouse/devices/{device.id}/attributes/shared", '{"after": 1}')
    assert body(next_on(client, "v1/devices/me/attributes")) == {"after": 1}
    assert not app.disconnected.is_set()


def test_device_that_unsubscribed_from_attribute_updates_receives_none(broker, clients):
    # SPEC §2.7: subscribing to v1/devices/me/attributes registers for updates; ThingsBoard's
    # processUnsubscribe deregisters again, so updates stop after UNSUBSCRIBE.
    device, client = device_client(broker, clients)
    assert codes(client.subscribe("v1/devices/me/attributes", 1)) == [1]
    unsubscribe(client, "v1/devices/me/attributes")
    app = app_client(broker, clients)
    assert app.publish(f"gatehouse/devices/{device.id}/attributes/shared", '{"afterUnsubscribe": 1}')
    assert wait_until(lambda: "afterUnsubscribe" in attributes(broker, device.id, AttributeScope.SHARED), 5)
    assert nothing_on(client) == []


def test_device_that_unsubscribed_from_rpc_receives_no_rpc(broker, clients):
    device, client = device_client(broker, clients)
    assert codes(client.subscribe("v1/devices/me/rpc/request/+", 1)) == [1]
    unsubscribe(client, "v1/devices/me/rpc/request/+")
    app = app_client(broker, clients, f"gatehouse/devices/{device.id}/rpc/response/+")
    assert app.publish(f"gatehouse/devices/{device.id}/rpc/call/5", '{"method": "m", "params": {}}')
    assert nothing_on(client) == []
    # as for any device not subscribed to RPC, the application is told so
    assert "error" in body(next_on(app, f"gatehouse/devices/{device.id}/rpc/response/5"))


def test_server_side_rpc_uses_the_subscription_qos_0(broker, clients):
    device, client = device_client(broker, clients)
    assert codes(client.subscribe("v1/devices/me/rpc/request/+", 0)) == [0]
    app = app_client(broker, clients)
    assert app.publish(f"gatehouse/devices/{device.id}/rpc/call/11", '{"method": "q0", "params": {}}')
    message = next_on(client, "v1/devices/me/rpc/request/11")
    assert message.qos == 0


def test_client_side_rpc_on_short_topics_is_answered_on_the_short_topic(broker, clients):
    device, client = device_client(broker, clients)
    app = app_client(broker, clients, f"gatehouse/devices/{device.id}/rpc/request/+")
    assert client.publish("v2/r/req/13", '{"method": "getTime", "params": {}}')
    assert body(next_on(app, f"gatehouse/devices/{device.id}/rpc/request/13"))["method"] == "getTime"
    assert app.publish(f"gatehouse/devices/{device.id}/rpc/reply/13", '{"t": 1}')
    assert body(next_on(client, "v2/r/res/13")) == {"t": 1}


def test_client_side_rpc_reply_goes_only_to_the_device_that_asked(broker, clients, two_devices):
    (a, client_a), (_b, client_b) = two_devices
    app = app_client(broker, clients, "gatehouse/devices/+/rpc/request/+")
    assert client_a.publish("v1/devices/me/rpc/request/3", '{"method": "getTime", "params": {}}')
    assert client_b.publish("v1/devices/me/rpc/request/3", '{"method": "getTime", "params": {}}')
    next_on(app, f"gatehouse/devices/{a.id}/rpc/request/3")
    assert app.publish(f"gatehouse/devices/{a.id}/rpc/reply/3", '{"for": "a"}')
    assert body(next_on(client_a, "v1/devices/me/rpc/response/3")) == {"for": "a"}
    assert nothing_on(client_b) == []


def test_republished_telemetry_carries_the_stored_timestamp(broker, clients):
    # One data point, one timestamp: what applications receive must match what is stored.
    app = app_client(broker, clients, "gatehouse/devices/+/telemetry")
    device, client = device_client(broker, clients)
    mismatches = []
    for n in range(30):  # a server-stamped point: the stamps may differ by a millisecond or so
        assert client.publish("v1/devices/me/telemetry", json.dumps({"tsCheck": n}))
        republished = body(next_on(app, f"gatehouse/devices/{device.id}/telemetry"))[0]
        stored = latest_telemetry(broker, device.id)["tsCheck"]
        assert republished["values"] == {"tsCheck": n} and stored["value"] == n
        if republished["ts"] != stored["ts"]:
            mismatches.append((n, republished["ts"], stored["ts"]))
    assert mismatches == [], "republished ts != stored ts for (n, republished, stored)"


def test_applications_may_subscribe_only_to_their_namespace(broker, clients):
    app = app_client(broker, clients)
    assert subscribe_many(app, [("gatehouse/devices/#", 1), ("gatehouse/devices/+/events", 0), ("#", 1),
                                ("v1/devices/me/attributes", 1), ("v1/devices/me/rpc/request/+", 1)]) \
        == [1, 0, 0x80, 0x80, 0x80]
    assert not app.disconnected.is_set()
