"""The plugin dropped into someone else's amqtt by dotted path in a YAML config, run by amqtt's
own `amqtt` command (docs/mqtt.md#using-the-plugin-in-your-own-amqtt)."""
import socket
import subprocess
import sys
import time
from pathlib import Path

from gatehouse.credentials import AccessToken
from gatehouse.registry import Registry

from .conftest import free_port
from .mqtt_client import connect, wait_until


def test_plugin_loads_from_a_plain_amqtt_yaml_config(tmp_path):
    data_dir = tmp_path / "data"
    with Registry.initialise(data_dir) as registry:
        device = registry.create_device("plain", credentials=AccessToken("PLAIN_TOKEN"))
    port = free_port()
    config = tmp_path / "broker.yaml"
    config.write_text(f"""\
listeners:
  default:
    type: tcp
    bind: 127.0.0.1:{port}
plugins:
  broker_plugin.plugin.GatehousePlugin:
    data_dir: {data_dir}
""")
    amqtt = Path(sys.executable).with_name("amqtt")
    process = subprocess.Popen([str(amqtt), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: _accepts(port), timeout=20)
        refused = connect(port, "c", "WRONG_TOKEN")
        assert refused.return_code == 5
        client = connect(port, "c", "PLAIN_TOKEN")
        assert client.connack == 0
        assert client.publish("v1/devices/me/telemetry", '{"plain": 1}')
        client.close()
        with Registry.open(data_dir) as registry:
            assert wait_until(lambda: "plain" in registry.latest_telemetry(device.id))
    finally:
        process.terminate()
        process.wait(10)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        time.sleep(0.1)
        return False
