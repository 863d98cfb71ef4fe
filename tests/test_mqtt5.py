"""MQTT 5 on the broker's listeners (SPEC §2.1, §2.2, §2.7, §3.1, §9.1–§9.3): ThingsBoard's MQTT 5
reason codes for logins, PUBACKs, SUBACKs, UNSUBACKs and DISCONNECTs, what the CONNACK announces,
topic aliases, session expiry, request/response properties passing between devices and
applications, and MQTT 5 meeting MQTT 3.1.1 — all with real paho clients (`protocol=MQTTv5`)
against one real `gatehouse broker` process shared by the module.

Every test makes its own devices, profiles and application accounts (unique names), so the
tests do not depend on each other. Several tests log in wrongly on purpose, so address blocking
is pushed out of the way here (test_hardened_broker.py tests it).
"""
from __future__ import annotations

import json
import time
import uuid

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gatehouse.credentials import AccessToken, MqttBasic, X509Certificate
from gatehouse.models import AttributeScope, ProvisionType
from gatehouse.pki import DevelopmentPki, issue_device_certificate
from gatehouse.registry import Registry

from .conftest import module_broker
from .devices import token_device, unique
from .mqtt_client import QUIET, TIMEOUT, RawClient, V5Client, body, codes, connect, connect5, connect_packet, next_on
from .provisioning_answers import PROVISION_REQUEST, PROVISION_RESPONSE

TELEMETRY, ATTRIBUTES = "v1/devices/me/telemetry", "v1/devices/me/attributes"
RPC_REQUESTS = "v1/devices/me/rpc/request/+"

# MQTT 5 reason codes (SPEC §2.1, §2.2, §2.7, §3.1)
SUCCESS = 0x00
GRANTED_QOS_1 = 0x01
NO_SUBSCRIPTION_EXISTED = 0x11
CLIENT_IDENTIFIER_NOT_VALID = 0x85
BAD_USERNAME_OR_PASSWORD = 0x86
KEEP_ALIVE_TIMEOUT = 0x8D
CONNECTION_RATE_EXCEEDED = 0x9F
NOT_AUTHORIZED = 0x87
PROTOCOL_ERROR = 0x82
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
ADMINISTRATIVE_ACTION = 0x98
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
PAYLOAD_FORMAT_INVALID = 0x99
RETAIN_NOT_SUPPORTED = 0x9A
QOS_NOT_SUPPORTED = 0x9B
MALFORMED_PACKET = 0x81


# --- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """One broker for the whole module; refused logins on purpose must not block 127.0.0.1."""
    with module_broker(tmp_path_factory.mktemp("mqtt5"), "--provision-close-seconds", "5",
                       "--max-failed-logins", "100000") as running:
        yield running


def device5(broker, prefix: str = "v5dev", **kwargs):
    """A new token device logged in with MQTT 5: (device, client)."""
    device, token = token_device(broker, prefix)
    client = connect5(broker.mqtt_port, unique("cid"), token, **kwargs)
    assert client.return_code == SUCCESS, f"device login refused: {client.connack}"
    return device, client


def new_application(broker) -> tuple[str, str]:
    with Registry.open(broker.data_dir) as registry:
        return registry.create_application(unique("app"))


def app5(broker, *filters: str, qos: int = 1, account: tuple[str, str] | None = None, client_id: str | None = None,
         **kwargs) -> V5Client:
    """An application logged in with MQTT 5 and subscribed to `filters`."""
    username, password = account or new_application(broker)
    client = connect5(broker.mqtt_port, client_id or unique("app-cid"), username, password, **kwargs)
    assert client.return_code == SUCCESS, f"application login refused: {client.connack}"
    for topic_filter in filters:
        assert codes(client.subscribe(topic_filter, qos)) == [qos], topic_filter
    return client


def subscribe_many(client, filters: list[tuple[str, int]]) -> list[int]:
    """One SUBSCRIBE packet with several filters; the SUBACK codes in order."""
    client.client.subscribe(filters)
    return codes(client.subacks.get(timeout=TIMEOUT))


def properties(packet_type=PacketTypes.PUBLISH, **values) -> Properties:
    props = Properties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def latest(broker, device_id: str) -> dict:
    """The device's latest telemetry as {key: value}."""
    with Registry.open(broker.data_dir) as registry:
        return {key: entry["value"] for key, entry in registry.latest_telemetry(device_id).items()}


def client_attributes(broker, device_id: str) -> dict:
    with Registry.open(broker.data_dir) as registry:
        return registry.get_attributes(device_id, AttributeScope.CLIENT)


def disconnected_with(client: V5Client, reason: int, timeout: float = TIMEOUT) -> None:
    """The broker closed the connection with a DISCONNECT carrying `reason`."""
    assert client.wait_disconnected(timeout), f"still connected after {timeout} s"
    assert client.disconnect_from_broker, f"closed without a DISCONNECT from the broker ({client.disconnect_reason})"
    assert client.disconnect_reason.value == reason, \
        f"DISCONNECT {client.disconnect_reason.value:#04x} ({client.disconnect_reason}), expected {reason:#04x}"


def still_open(broker, client: V5Client, device_id: str) -> None:
    """The connection is alive: not disconnected, and a telemetry message is acknowledged and stored."""
    assert not client.disconnected.is_set(), f"the broker closed the connection ({client.disconnect_reason})"
    marker = uuid.uuid4().int % 1_000_000
    assert client.publish_code(TELEMETRY, json.dumps({"alive": marker})) == SUCCESS
    assert latest(broker, device_id)["alive"] == marker


def allow_create_profile(broker) -> tuple[str, str]:
    key, secret = unique("allowKey"), unique("allowSecret")
    with Registry.open(broker.data_dir) as registry:
        registry.create_profile(unique("allow"), ProvisionType.ALLOW_CREATE_NEW_DEVICES, key=key, secret=secret)
    return key, secret


def provision5(broker) -> V5Client:
    client = connect5(broker.mqtt_port, unique("prov"), "provision", "any-password")
    assert client.return_code == SUCCESS, f"provisioning session refused: {client.connack}"
    return client


# --- CONNACK ------------------------------------------------------------------------------------


def test_connack_announces_the_brokers_mqtt5_limits(broker):
    _device, client = device5(broker)
    props = client.connack_properties
    assert props is not None
    assert props.ReceiveMaximum == 100
    assert props.MaximumPacketSize > 65536
    assert props.MaximumQoS == 1
    assert props.TopicAliasMaximum >= 1
    assert props.RetainAvailable == 0
    assert props.SharedSubscriptionAvailable == 0
    assert props.SubscriptionIdentifierAvailable == 0


def test_token_login_with_an_empty_client_id_gets_an_assigned_client_identifier(broker):
    device, token = token_device(broker)
    client = connect5(broker.mqtt_port, "", token)
    assert client.return_code == SUCCESS
    assigned = getattr(client.connack_properties, "AssignedClientIdentifier", None)
    assert isinstance(assigned, str) and assigned
    assert client.publish_code(TELEMETRY, '{"assigned": 1}') == SUCCESS
    assert latest(broker, device.id) == {"assigned": 1}


# --- logins (SPEC §2.1, §9.2) -------------------------------------------------------------------


def test_access_token_login_is_accepted_and_telemetry_is_stored_on_that_device(broker):
    device, token = token_device(broker)
    client = connect5(broker.mqtt_port, unique("cid"), token, unique("any-password"))
    assert client.return_code == SUCCESS
    assert client.session_present is False
    assert client.publish_code(TELEMETRY, '{"login": 1}') == SUCCESS
    assert latest(broker, device.id) == {"login": 1}


def test_wrong_access_token_is_refused_with_0x86(broker):
    token_device(broker)
    client = connect5(broker.mqtt_port, unique("cid"), unique("WRONG"))
    assert client.return_code == BAD_USERNAME_OR_PASSWORD
    assert client.wait_disconnected(5)


def test_unknown_client_id_alone_is_refused_with_0x85(broker):
    client = connect5(broker.mqtt_port, unique("unknown-client"))
    assert client.return_code == CLIENT_IDENTIFIER_NOT_VALID
    assert client.wait_disconnected(5)


def test_no_credentials_at_all_is_refused_with_0x87(broker):
    client = connect5(broker.mqtt_port, "")
    assert client.return_code == NOT_AUTHORIZED
    assert client.wait_disconnected(5)


@pytest.mark.parametrize("parts", ["client-id", "client-id+username", "client-id+username+password",
                                   "username+password"])
def test_mqtt_basic_login_is_accepted(broker, parts):
    client_id, username, password = unique("cid"), unique("user"), unique("pw")
    credentials = {"client-id": MqttBasic(client_id, None, None),
                   "client-id+username": MqttBasic(client_id, username, None),
                   "client-id+username+password": MqttBasic(client_id, username, password),
                   "username+password": MqttBasic(None, username, password)}[parts]
    with Registry.open(broker.data_dir) as registry:
        device = registry.create_device(unique("basic"), credentials=credentials)
    client = connect5(broker.mqtt_port, client_id, credentials.user_name, credentials.password)
    assert client.return_code == SUCCESS
    assert client.publish_code(TELEMETRY, '{"basic": 1}') == SUCCESS
    assert latest(broker, device.id) == {"basic": 1}


def test_mqtt_basic_wrong_password_is_refused_with_0x86(broker):
    client_id, username = unique("cid"), unique("user")
    with Registry.open(broker.data_dir) as registry:
        registry.create_device(unique("basic"), credentials=MqttBasic(client_id, username, "right-password"))
    client = connect5(broker.mqtt_port, client_id, username, "wrong-password")
    assert client.return_code == BAD_USERNAME_OR_PASSWORD


@pytest.mark.parametrize("via", ["username", "client-id"])
def test_provision_login_opens_a_provisioning_session(broker, via):
    if via == "username":
        client = connect5(broker.mqtt_port, unique("prov"), "provision")
    else:
        client = connect5(broker.mqtt_port, "provision")
    assert client.return_code == SUCCESS
    assert codes(client.subscribe(PROVISION_RESPONSE, 1)) == [GRANTED_QOS_1]


# --- device publishes (SPEC §2.2, §9.3) ---------------------------------------------------------


def test_telemetry_at_qos1_gets_puback_0x00_and_is_stored(broker):
    device, client = device5(broker)
    assert client.publish_code(TELEMETRY, json.dumps({"temperature": 21.5, "ok": True})) == SUCCESS
    assert latest(broker, device.id) == {"temperature": 21.5, "ok": True}


def test_client_attributes_get_puback_0x00_and_are_stored(broker):
    device, client = device5(broker)
    assert client.publish_code(ATTRIBUTES, json.dumps({"fw": "v2.0", "slots": 3})) == SUCCESS
    assert client_attributes(broker, device.id) == {"fw": "v2.0", "slots": 3}


def test_publish_to_an_unknown_topic_gets_puback_0x90_and_the_connection_stays_open(broker):
    device, client = device5(broker)
    assert client.publish_code("wrong/topic/", '{"dropped": 1}') == TOPIC_NAME_INVALID
    assert latest(broker, device.id) == {}
    still_open(broker, client, device.id)


def test_invalid_json_at_qos1_gets_puback_0x99_and_the_connection_stays_open(broker):
    device, client = device5(broker)
    assert client.publish_code(TELEMETRY, '{"temperature": 25,,, ') == PAYLOAD_FORMAT_INVALID
    assert latest(broker, device.id) == {}
    still_open(broker, client, device.id)


def test_invalid_client_attributes_at_qos1_get_puback_0x99_and_nothing_is_stored(broker):
    device, client = device5(broker)
    assert client.publish_code(ATTRIBUTES, '[{"a": 1}]') == PAYLOAD_FORMAT_INVALID  # arrays are invalid here
    assert client_attributes(broker, device.id) == {}
    still_open(broker, client, device.id)


def test_invalid_json_at_qos0_gets_disconnect_0x99(broker):
    device, client = device5(broker)
    client.client.publish(TELEMETRY, "{broken", qos=0)
    disconnected_with(client, PAYLOAD_FORMAT_INVALID)
    assert latest(broker, device.id) == {}


def test_qos2_publish_gets_disconnect_0x9b(broker):
    # CONNACK announced Maximum QoS 1 (MQTT 5 §3.3.1.4: a higher QoS is answered with 0x9B).
    device, client = device5(broker)
    client.client.publish(TELEMETRY, '{"qos2": 1}', qos=2)
    disconnected_with(client, QOS_NOT_SUPPORTED)
    assert latest(broker, device.id) == {}


def test_retained_publish_gets_disconnect_0x9a(broker):
    # CONNACK announced Retain Available 0 (MQTT 5 §3.3.1.3: a retained publish is answered with 0x9A).
    device, client = device5(broker)
    client.client.publish(TELEMETRY, '{"retained": 1}', qos=1, retain=True)
    disconnected_with(client, RETAIN_NOT_SUPPORTED)
    assert latest(broker, device.id) == {}


@pytest.mark.parametrize(("size", "reason"), [(66_000, MALFORMED_PACKET), (70_000, PACKET_TOO_LARGE)],
                         ids=["over-the-payload-limit", "over-the-packet-maximum"])
def test_oversized_telemetry_is_refused_with_a_disconnect(broker, size, reason):
    # A payload over 65536 bytes: ThingsBoard's decoder fails, DISCONNECT 0x81 (SPEC §2). A packet
    # over the Maximum Packet Size the CONNACK announced: 0x95 (MQTT 5 §3.2.2.3.6).
    device, client = device5(broker)
    assert client.publish_code(TELEMETRY, json.dumps({"big": "x" * size})) is None
    assert client.wait_disconnected(5)
    assert client.disconnect_from_broker, f"closed without a DISCONNECT ({client.disconnect_reason})"
    assert client.disconnect_reason.value == reason, client.disconnect_reason
    assert latest(broker, device.id) == {}


# --- subscribe and unsubscribe (SPEC §2.7) ------------------------------------------------------


@pytest.mark.parametrize("requested", [0, 1, 2])
def test_subscribe_to_attribute_updates_is_granted_at_most_qos1(broker, requested):
    _device, client = device5(broker)
    assert codes(client.subscribe(ATTRIBUTES, requested)) == [min(requested, 1)]
    assert not client.disconnected.is_set()


def test_subscribe_to_an_unknown_filter_gets_0x8f_and_the_other_filters_are_still_granted(broker):
    device, client = device5(broker)
    assert codes(client.subscribe("wrong/topic/+", 1)) == [TOPIC_FILTER_INVALID]
    assert subscribe_many(client, [(ATTRIBUTES, 1), ("wrong/topic/+", 1), (RPC_REQUESTS, 1)]) \
        == [GRANTED_QOS_1, TOPIC_FILTER_INVALID, GRANTED_QOS_1]
    still_open(broker, client, device.id)


def test_subscribe_with_a_topic_filter_that_is_not_utf8_gets_disconnect_0x81_and_the_connection_is_closed(broker):
    """Found by tests/test_fuzz_mqtt.py: the mqtt5 codec panics on such a string, and the panic
    (a BaseException) ended the connection's reader without closing the connection."""
    _, token = token_device(broker)
    with RawClient(broker.mqtt_port) as raw:
        raw.send(connect_packet(unique("cid"), token, protocol_level=5))
        packet_type, connack = raw.read_packet()
        assert packet_type == 0x20 and connack[1] == SUCCESS
        body = b"\x00\x01" + b"\x00" + b"\x00\x03a\xffb" + b"\x01"  # packet id, no properties, filter, options
        raw.send(bytes((0x82, len(body))) + body)
        assert raw.read_packet() == (0xE0, bytes((0x81,)))  # DISCONNECT, malformed packet
        assert raw.closed_by_server()


def test_unsubscribe_reports_which_filters_were_subscribed(broker):
    _device, client = device5(broker)
    assert client.unsubscribe(ATTRIBUTES) == [NO_SUBSCRIPTION_EXISTED]
    assert codes(client.subscribe(ATTRIBUTES, 1)) == [GRANTED_QOS_1]
    assert client.unsubscribe(ATTRIBUTES) == [SUCCESS]
    assert client.unsubscribe(ATTRIBUTES) == [NO_SUBSCRIPTION_EXISTED]  # gone now
    assert codes(client.subscribe(RPC_REQUESTS, 1)) == [GRANTED_QOS_1]
    assert client.unsubscribe(RPC_REQUESTS, "v1/devices/me/attributes/response/+") \
        == [SUCCESS, NO_SUBSCRIPTION_EXISTED]
    assert not client.disconnected.is_set()


# --- sessions: take-over and credential change (SPEC §2.1) --------------------------------------


def test_second_login_with_the_same_token_disconnects_the_first_with_0x8e(broker):
    device, token = token_device(broker)
    first = connect5(broker.mqtt_port, unique("first"), token)
    assert first.return_code == SUCCESS
    second = connect5(broker.mqtt_port, unique("second"), token)
    assert second.return_code == SUCCESS
    disconnected_with(first, SESSION_TAKEN_OVER)
    still_open(broker, second, device.id)


def test_second_login_with_the_same_client_id_disconnects_the_first_with_0x8e(broker):
    device, token = token_device(broker)
    client_id = unique("same-id")
    first = connect5(broker.mqtt_port, client_id, token)
    assert first.return_code == SUCCESS
    second = connect5(broker.mqtt_port, client_id, token)
    assert second.return_code == SUCCESS
    disconnected_with(first, SESSION_TAKEN_OVER)
    still_open(broker, second, device.id)


def test_mqtt311_login_with_the_same_token_disconnects_the_v5_session_with_0x8e(broker):
    device, token = token_device(broker)
    first = connect5(broker.mqtt_port, unique("v5"), token)
    assert first.return_code == SUCCESS
    second = connect(broker.mqtt_port, unique("v311"), token)
    assert second.return_code == 0
    disconnected_with(first, SESSION_TAKEN_OVER)
    assert second.publish(TELEMETRY, '{"v311": 1}')
    assert latest(broker, device.id) == {"v311": 1}


def test_changing_the_credentials_in_another_process_disconnects_with_0x98(broker):
    device, token = token_device(broker)
    client = connect5(broker.mqtt_port, unique("cid"), token)
    assert client.return_code == SUCCESS
    new_token = unique("ROTATED")
    with Registry.open(broker.data_dir) as registry:  # this process, not the broker's
        registry.set_credentials(device.name, AccessToken(new_token))
    disconnected_with(client, ADMINISTRATIVE_ACTION)
    assert connect5(broker.mqtt_port, unique("cid"), token).return_code == BAD_USERNAME_OR_PASSWORD
    renewed = connect5(broker.mqtt_port, unique("cid"), new_token)
    assert renewed.return_code == SUCCESS
    still_open(broker, renewed, device.id)


# --- provisioning (SPEC §3.1, §9.1) -------------------------------------------------------------


def test_provisioning_session_may_subscribe_only_to_provision_response(broker):
    client = provision5(broker)
    assert codes(client.subscribe(PROVISION_RESPONSE, 1)) == [GRANTED_QOS_1]
    assert codes(client.subscribe(ATTRIBUTES, 1)) == [TOPIC_FILTER_INVALID]
    assert subscribe_many(client, [(RPC_REQUESTS, 1), (PROVISION_RESPONSE, 2)]) \
        == [TOPIC_FILTER_INVALID, GRANTED_QOS_1]
    assert not client.disconnected.is_set()


@pytest.mark.parametrize("subscribed", [True, False], ids=["subscribed", "not-subscribed"])
def test_provisioning_request_is_answered_on_provision_response(broker, subscribed):
    # SPEC §3.3: the response is published whether or not the client subscribed to it.
    key, secret = allow_create_profile(broker)
    client = provision5(broker)
    if subscribed:
        assert codes(client.subscribe(PROVISION_RESPONSE, 1)) == [GRANTED_QOS_1]
    name = unique("provisioned")
    request = {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret}
    assert client.publish_code(PROVISION_REQUEST, json.dumps(request)) == SUCCESS
    response = body(next_on(client, PROVISION_RESPONSE))
    assert response["status"] == "SUCCESS"
    assert response["credentialsType"] == "ACCESS_TOKEN"
    assert isinstance(response["credentialsValue"], str) and response["credentialsValue"]
    with Registry.open(broker.data_dir) as registry:
        assert registry.get_credentials(name).credentials_id == response["credentialsValue"]
    # The new token logs in with MQTT 5.
    device_client = connect5(broker.mqtt_port, unique("cid"), response["credentialsValue"])
    assert device_client.return_code == SUCCESS


def test_provisioning_session_publishing_to_a_device_topic_gets_puback_and_disconnect_0x90(broker):
    client = provision5(broker)
    assert client.publish_code(TELEMETRY, '{"temperature": 1}') == TOPIC_NAME_INVALID
    disconnected_with(client, TOPIC_NAME_INVALID)


# --- topic aliases from the client --------------------------------------------------------------


def test_topic_alias_set_by_the_client_is_resolved(broker):
    device, client = device5(broker)
    alias = properties(TopicAlias=1)
    assert client.publish_code(TELEMETRY, '{"first": 1}', properties=alias) == SUCCESS
    assert client.publish_code("", '{"second": 2}', properties=properties(TopicAlias=1)) == SUCCESS
    assert latest(broker, device.id) == {"first": 1, "second": 2}
    assert not client.disconnected.is_set()


def test_topic_alias_above_the_announced_maximum_gets_disconnect_0x94(broker):
    device, client = device5(broker)
    maximum = client.connack_properties.TopicAliasMaximum
    client.client.publish(TELEMETRY, '{"alias": 1}', qos=1, properties=properties(TopicAlias=maximum + 1))
    disconnected_with(client, TOPIC_ALIAS_INVALID)
    assert latest(broker, device.id) == {}


def test_empty_topic_with_an_alias_never_set_gets_disconnect_0x82(broker):
    device, client = device5(broker)
    client.client.publish("", '{"alias": 1}', qos=1, properties=properties(TopicAlias=2))
    disconnected_with(client, PROTOCOL_ERROR)
    assert latest(broker, device.id) == {}


def test_topic_aliases_belong_to_one_connection(broker):
    device, token = token_device(broker)
    first = connect5(broker.mqtt_port, unique("cid"), token)
    assert first.return_code == SUCCESS
    assert first.publish_code(TELEMETRY, '{"first": 1}', properties=properties(TopicAlias=1)) == SUCCESS
    first.close()
    second = connect5(broker.mqtt_port, unique("cid"), token)
    assert second.return_code == SUCCESS
    second.client.publish("", '{"second": 2}', qos=1, properties=properties(TopicAlias=1))
    disconnected_with(second, PROTOCOL_ERROR)
    assert latest(broker, device.id) == {"first": 1}


# --- request/response properties between devices and applications ------------------------------


def test_request_response_properties_of_device_telemetry_reach_the_application(broker):
    app = app5(broker, "gatehouse/devices/+/telemetry")
    device, client = device5(broker)
    props = properties(ResponseTopic=f"replies/{device.id}", CorrelationData=b"\x00corr\xff",
                       UserProperty=[("trace-id", "abc-123")])
    assert client.publish_code(TELEMETRY, '{"t": 20}', properties=props) == SUCCESS
    message = next_on(app, f"gatehouse/devices/{device.id}/telemetry")
    assert [record["values"] for record in body(message)] == [{"t": 20}]
    received = message.properties
    assert received is not None
    assert getattr(received, "ResponseTopic", None) == f"replies/{device.id}"
    assert getattr(received, "CorrelationData", None) == b"\x00corr\xff"
    assert ("trace-id", "abc-123") in getattr(received, "UserProperty", [])


def test_request_response_properties_of_a_server_side_rpc_reach_the_device(broker):
    device, client = device5(broker)
    assert codes(client.subscribe(RPC_REQUESTS, 1)) == [GRANTED_QOS_1]
    app = app5(broker, f"gatehouse/devices/{device.id}/rpc/response/+")
    props = properties(ResponseTopic=f"gatehouse/devices/{device.id}/rpc/reply-to/7", CorrelationData=b"rpc-7",
                       UserProperty=[("origin", "dashboard")])
    assert app.publish_code(f"gatehouse/devices/{device.id}/rpc/call/7", '{"method": "blink", "params": 2}',
                            properties=props) == SUCCESS
    message = next_on(client, "v1/devices/me/rpc/request/7")
    assert body(message) == {"method": "blink", "params": 2}
    received = message.properties
    assert received is not None
    assert getattr(received, "CorrelationData", None) == b"rpc-7"
    assert ("origin", "dashboard") in getattr(received, "UserProperty", [])
    assert getattr(received, "ResponseTopic", None) == f"gatehouse/devices/{device.id}/rpc/reply-to/7"


# --- MQTT 5 meets MQTT 3.1.1 --------------------------------------------------------------------


def test_v5_device_telemetry_reaches_a_mqtt311_application(broker):
    username, password = new_application(broker)
    app = connect(broker.mqtt_port, unique("app-cid"), username, password)
    assert app.return_code == 0
    assert codes(app.subscribe("gatehouse/devices/+/telemetry", 1)) == [1]
    device, client = device5(broker)
    props = properties(CorrelationData=b"dropped-for-311", UserProperty=[("k", "v")])
    assert client.publish_code(TELEMETRY, '{"v5to311": 1}', properties=props) == SUCCESS
    message = next_on(app, f"gatehouse/devices/{device.id}/telemetry")
    assert [record["values"] for record in body(message)] == [{"v5to311": 1}]


def test_mqtt311_device_telemetry_reaches_a_v5_application(broker):
    app = app5(broker, "gatehouse/devices/+/telemetry")
    device, token = token_device(broker)
    client = connect(broker.mqtt_port, unique("cid"), token)
    assert client.return_code == 0
    assert client.publish(TELEMETRY, '{"from311": 1}')
    message = next_on(app, f"gatehouse/devices/{device.id}/telemetry")
    assert [record["values"] for record in body(message)] == [{"from311": 1}]


def test_mqtt311_application_rpc_reaches_a_v5_device(broker):
    device, client = device5(broker)
    assert codes(client.subscribe(RPC_REQUESTS, 1)) == [GRANTED_QOS_1]
    username, password = new_application(broker)
    app = connect(broker.mqtt_port, unique("app-cid"), username, password)
    assert app.return_code == 0
    assert app.publish(f"gatehouse/devices/{device.id}/rpc/call/3", '{"method": "m", "params": {}}')
    assert body(next_on(client, "v1/devices/me/rpc/request/3")) == {"method": "m", "params": {}}


# --- session expiry -----------------------------------------------------------------------------


def test_session_with_expiry_interval_keeps_subscriptions_and_messages_while_away(broker):
    account = new_application(broker)
    client_id = unique("app-cid")
    device, token = token_device(broker)
    topic = f"gatehouse/devices/{device.id}/telemetry"
    app = app5(broker, topic, account=account, client_id=client_id, clean_start=False, session_expiry=300)
    app.close()
    client = connect5(broker.mqtt_port, unique("cid"), token)
    assert client.return_code == SUCCESS
    assert client.publish_code(TELEMETRY, '{"while_away": 1}') == SUCCESS

    again = connect5(broker.mqtt_port, client_id, *account, clean_start=False, session_expiry=300)
    assert again.return_code == SUCCESS
    assert again.session_present is True
    assert [record["values"] for record in body(next_on(again, topic))] == [{"while_away": 1}]


def test_session_without_expiry_interval_ends_with_the_connection(broker):
    # MQTT 5 §3.1.2.11.2: with Session Expiry Interval 0 (absent) the session ends when the network
    # connection closes, so a reconnection with Clean Start 0 finds none. The reconnection follows
    # at once: a session kept "a little while" is caught too.
    account = new_application(broker)
    client_id = unique("app-cid")
    device, token = token_device(broker)
    topic = f"gatehouse/devices/{device.id}/telemetry"
    app = app5(broker, topic, account=account, client_id=client_id, clean_start=False)  # expiry 0: the default
    app.close()
    again = connect5(broker.mqtt_port, client_id, *account, clean_start=False)
    assert again.return_code == SUCCESS
    assert again.session_present is False
    # and no subscription survived: data published now does not arrive
    client = connect5(broker.mqtt_port, unique("cid"), token)
    assert client.return_code == SUCCESS
    assert client.publish_code(TELEMETRY, '{"after": 1}') == SUCCESS
    assert again.no_message(QUIET)


def test_session_is_dropped_once_its_expiry_interval_has_passed(broker):
    account = new_application(broker)
    client_id = unique("app-cid")
    device, _token = token_device(broker)
    app = app5(broker, f"gatehouse/devices/{device.id}/telemetry", account=account, client_id=client_id,
               clean_start=False, session_expiry=1)
    app.close()
    time.sleep(3.5)  # nothing to wait for: the 1 s interval and the broker's once-a-second sweep
    again = connect5(broker.mqtt_port, client_id, *account, clean_start=False, session_expiry=1)
    assert again.return_code == SUCCESS
    assert again.session_present is False


# --- client DISCONNECT --------------------------------------------------------------------------


def test_client_disconnect_with_reason_0x00_closes_cleanly(broker):
    app = app5(broker, "gatehouse/devices/+/events")
    device, token = token_device(broker)
    events = f"gatehouse/devices/{device.id}/events"
    log_before = len(broker.log())
    with RawClient(broker.mqtt_port) as raw:
        raw.send(connect_packet(unique("cid"), token, protocol_level=5))
        packet_type, connack = raw.read_packet()
        assert packet_type == 0x20 and connack[1] == SUCCESS, f"CONNACK {packet_type:#x} {connack.hex()}"
        assert body(next_on(app, events))["event"] == "connected"
        raw.send(bytes((0xE0, 0x02, SUCCESS, 0x00)))  # DISCONNECT, reason 0x00, no properties
        answer = raw.read(1, timeout=5)
        assert answer == b"", f"the broker answered a normal DISCONNECT with {answer.hex()}"
        assert raw.closed_by_server(1), "the broker kept the connection open after DISCONNECT"
    assert body(next_on(app, events))["event"] == "disconnected"
    new_log = broker.log()[log_before:]
    problems = [line for line in new_log.splitlines()
                if any(word in line for word in ("ERROR", "Traceback", "Exception", "WARNING"))]
    assert problems == [], "\n".join(problems)


def test_paho_disconnect_ends_the_session_and_applications_see_it(broker):
    app = app5(broker, "gatehouse/devices/+/events")
    device, client = device5(broker)
    events = f"gatehouse/devices/{device.id}/events"
    assert body(next_on(app, events))["event"] == "connected"
    client.client.disconnect()
    assert client.wait_disconnected(5)
    assert client.disconnect_reason.value == SUCCESS and not client.disconnect_from_broker
    assert body(next_on(app, events))["event"] == "disconnected"


# --- X.509 over TLS -----------------------------------------------------------------------------


def test_registered_x509_certificate_logs_in_over_tls_with_mqtt5(broker, tmp_path):
    name = unique("x509")
    cert_path, key_path = issue_device_certificate(DevelopmentPki.in_directory(broker.data_dir / "pki"), name,
                                                   tmp_path)
    with Registry.open(broker.data_dir) as registry:
        device = registry.create_device(name, credentials=X509Certificate.from_text(cert_path.read_text()))
    client = connect5(broker.mqtts_port, unique("cid"), "ignored-username", "ignored-password",
                      ca_cert=broker.ca_cert, cert=cert_path, key=key_path)
    assert client.return_code == SUCCESS
    assert client.publish_code(TELEMETRY, '{"x509": 1}') == SUCCESS
    assert latest(broker, device.id) == {"x509": 1}


def test_unregistered_x509_certificate_is_refused_with_0x87(broker, tmp_path):
    name = unique("unregistered")
    cert_path, key_path = issue_device_certificate(DevelopmentPki.in_directory(broker.data_dir / "pki"), name,
                                                   tmp_path)
    client = connect5(broker.mqtts_port, unique("cid"), ca_cert=broker.ca_cert, cert=cert_path, key=key_path)
    assert client.return_code == NOT_AUTHORIZED
    with Registry.open(broker.data_dir) as registry:
        assert registry.find_device(name) is None


# --- production guards on MQTT 5 ---------------------------------------------------------------


def test_silent_client_is_disconnected_with_0x8d_after_one_and_a_half_keep_alives(broker):
    _device, token = token_device(broker)
    with RawClient(broker.mqtt_port) as raw:
        raw.send(connect_packet(unique("cid"), token, keepalive=1, protocol_level=5))
        packet_type, connack = raw.read_packet()
        assert packet_type == 0x20 and connack[1] == SUCCESS
        packet_type, disconnect = raw.read_packet()  # nothing sent for 1.5 s
        assert packet_type == 0xE0 and disconnect[0] == KEEP_ALIVE_TIMEOUT, f"{packet_type:#x} {disconnect.hex()}"
        assert raw.closed_by_server(2)


def test_blocked_address_is_refused_with_0x9f(broker_factory):
    blocking = broker_factory("--max-failed-logins", "2", "--block-seconds", "60")
    _device, token = token_device(blocking)
    for _ in range(2):
        assert connect5(blocking.mqtt_port, unique("cid"), unique("WRONG")).return_code == BAD_USERNAME_OR_PASSWORD
    assert connect5(blocking.mqtt_port, unique("cid"), token).return_code == CONNECTION_RATE_EXCEEDED
