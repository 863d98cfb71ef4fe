"""Logged-in MQTT 3.1.1 sessions on a running broker for the broker tests: a new device's, and a
new application account's subscribed to some filters."""
from __future__ import annotations

from gatehouse.registry import Registry

from .devices import token_device, unique
from .mqtt_client import TestClient as MqttClient
from .mqtt_client import codes, connect


def device_client(broker, clients, prefix: str = "dev", *, device_and_token=None):
    """A new device logged in over plain MQTT: (device, client)."""
    device, token = device_and_token or token_device(broker, prefix)
    client = connect(broker.mqtt_port, unique("cid"), token)
    clients.append(client)
    assert client.connack == 0, f"device login refused: {client.connack}"
    return device, client


def app_client(broker, clients, *filters: str, qos: int = 1) -> MqttClient:
    """A fresh application account logged in and subscribed to `filters`."""
    with Registry.open(broker.data_dir) as registry:
        username, password = registry.create_application(unique("app"))
    client = connect(broker.mqtt_port, unique("app-cid"), username, password)
    clients.append(client)
    assert client.connack == 0, f"application login refused: {client.connack}"
    for topic_filter in filters:
        assert codes(client.subscribe(topic_filter, qos)) == [qos], topic_filter
    return client
