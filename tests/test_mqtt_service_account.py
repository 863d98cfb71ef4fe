"""The broker's service accounts (the sidecar's MQTT session): what they may publish for HTTP
and CoAP devices, and what the broker hands them of applications' messages to devices that are
not connected over MQTT. Real paho clients against a real `gatehouse broker` process; the
service logs in exactly as the sidecar does, with the password derived from the server key."""
from __future__ import annotations

import json

import pytest

from gatehouse.registry import Registry

from .conftest import module_broker
from .devices import token_device, unique
from .mqtt_accounts import app_client, device_client
from .mqtt_client import body, codes, connect, next_on, nothing_on

SHARED, CALL, REPLY = "attributes/shared", "rpc/call", "rpc/reply"


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with module_broker(tmp_path_factory.mktemp("mqtt-service")) as running:
        yield running



def service_client(broker, clients, account: str = "sidecar", password: str | None = None):
    with Registry.open(broker.data_dir) as registry:
        username, derived = registry.service_credentials(account)
    client = connect(broker.mqtt_port, unique("svc"), username, derived if password is None else password)
    clients.append(client)
    return client


def subscribed_service(broker, clients):
    service = service_client(broker, clients)
    assert service.connack == 0
    for topic_filter in ("gatehouse/devices/+/attributes/shared", "gatehouse/devices/+/rpc/call/+",
                         "gatehouse/devices/+/rpc/reply/+"):
        assert codes(service.subscribe(topic_filter, 1)) == [1]
    return service


def test_service_account_with_a_wrong_password_is_refused(broker, clients):
    assert service_client(broker, clients, password="guessed").return_code == 5
    assert service_client(broker, clients, account="other", password="").return_code == 5


def test_no_device_credential_may_take_a_service_account_name(broker):
    from gatehouse.credentials import AccessToken
    from gatehouse.errors import ValidationError

    with Registry.open(broker.data_dir) as registry, pytest.raises(ValidationError):
        registry.create_device(unique("squatter"), credentials=AccessToken("gatehouse-service:sidecar"))


def test_data_a_service_publishes_for_its_devices_reaches_applications_as_it_is(broker, clients):
    device, _token = token_device(broker, "http-dev")
    app = app_client(broker, clients, "gatehouse/devices/+/telemetry", f"gatehouse/devices/{device.id}/events")
    service = subscribed_service(broker, clients)
    telemetry = [{"ts": 1700000000000, "values": {"temperature": 21.5}}]
    assert service.publish(f"gatehouse/devices/{device.id}/telemetry", json.dumps(telemetry))
    assert body(next_on(app, f"gatehouse/devices/{device.id}/telemetry")) == telemetry
    assert service.publish(f"gatehouse/devices/{device.id}/events", '{"event": "provisioned", "ts": 1}')
    assert body(next_on(app, f"gatehouse/devices/{device.id}/events"))["event"] == "provisioned"


def test_applications_messages_for_a_device_not_on_mqtt_go_to_the_service(broker, clients):
    device, _token = token_device(broker, "http-dev")
    service = subscribed_service(broker, clients)
    app = app_client(broker, clients, f"gatehouse/devices/{device.id}/rpc/response/+")
    assert app.publish(f"gatehouse/devices/{device.id}/{SHARED}", '{"mode": "eco"}')
    assert body(next_on(service, f"gatehouse/devices/{device.id}/{SHARED}")) == {"mode": "eco"}
    assert app.publish(f"gatehouse/devices/{device.id}/{CALL}/7", '{"method": "reboot", "params": {"in": 1}}')
    assert body(next_on(service, f"gatehouse/devices/{device.id}/{CALL}/7")) == {"method": "reboot",
                                                                                 "params": {"in": 1}}
    assert app.publish(f"gatehouse/devices/{device.id}/{REPLY}/9", '{"time": 5}')
    assert body(next_on(service, f"gatehouse/devices/{device.id}/{REPLY}/9")) == {"time": 5}
    # With a service to hand it to, an RPC is not answered with "not connected" at once.
    assert nothing_on(app, lambda m: m.topic.endswith("/rpc/response/7"), wait=0.5) == []
    with Registry.open(broker.data_dir) as registry:  # the broker stored the shared attribute
        assert registry.get_attributes(device.id, "SHARED_SCOPE") == {"mode": "eco"}


def test_an_rpc_for_a_device_connected_over_mqtt_goes_to_the_device_not_the_service(broker, clients):
    device, client = device_client(broker, clients)
    assert codes(client.subscribe("v1/devices/me/rpc/request/+", 1)) == [1]
    service = subscribed_service(broker, clients)
    app = app_client(broker, clients)
    assert app.publish(f"gatehouse/devices/{device.id}/{CALL}/3", '{"method": "blink", "params": null}')
    assert body(next_on(client, "v1/devices/me/rpc/request/3")) == {"method": "blink", "params": None}
    assert nothing_on(service, lambda m: m.topic.endswith(f"{CALL}/3"), wait=0.5) == []


def test_shared_attributes_a_service_sends_reach_the_mqtt_device_and_not_the_service_itself(broker, clients):
    device, client = device_client(broker, clients)
    assert codes(client.subscribe("v1/devices/me/attributes", 1)) == [1]
    service = subscribed_service(broker, clients)
    other_service = subscribed_service(broker, clients)
    assert service.publish(f"gatehouse/devices/{device.id}/{SHARED}", '{"interval": 30}')
    assert body(next_on(client, "v1/devices/me/attributes")) == {"interval": 30}
    assert body(next_on(other_service, f"gatehouse/devices/{device.id}/{SHARED}")) == {"interval": 30}
    assert nothing_on(service, wait=0.5) == []


def test_a_service_cannot_reach_device_topics_or_be_fanned_device_data(broker, clients):
    service = subscribed_service(broker, clients)
    assert codes(service.subscribe("v1/devices/me/rpc/request/+", 1)) == [0x80]
    assert codes(service.subscribe("#", 1)) == [0x80]
    _device, client = device_client(broker, clients)
    assert client.publish("v1/devices/me/telemetry", '{"x": 1}')
    assert nothing_on(service, wait=0.5) == []  # device data goes to applications only
