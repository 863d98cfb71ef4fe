"""The broker runs and speaks to a real client (the detailed MQTT suites build on this)."""
from gatehouse.credentials import AccessToken
from gatehouse.registry import Registry

from .mqtt_client import connect


def test_a_token_device_connects_and_its_telemetry_is_stored(broker):
    with Registry.open(broker.data_dir) as registry:
        device = registry.create_device("smoke", credentials=AccessToken("SMOKE_TOKEN"))
    client = connect(broker.mqtt_port, "any-id", "SMOKE_TOKEN")
    assert client.connack == 0
    assert client.publish("v1/devices/me/telemetry", '{"temperature": 21.5}')
    client.close()
    with Registry.open(broker.data_dir) as registry:
        assert registry.latest_telemetry(device.id)["temperature"]["value"] == 21.5
