"""Real third-party clients: Debian's mosquitto_pub / mosquitto_sub against the broker, over
TLS with X.509 device certificates made by `gatehouse pki issue` and registered with
`gatehouse device create --cert`, over TLS with an access token, and plain as in
ThingsBoard's MQTT docs. The TLS tests run with both protocol versions the broker speaks,
`-V mqttv311` and `-V mqttv5`. `make test` installs mosquitto-clients; these tests never skip.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from gatehouse.credentials import AccessToken
from gatehouse.models import AttributeScope
from gatehouse.registry import Registry

from .conftest import module_broker, operator_certificate
from .devices import issue_certificate, latest_telemetry, token_device, unique, x509_device
from .mqtt_client import connect, wait_until

MOSQUITTO_PUB = shutil.which("mosquitto_pub")
MOSQUITTO_SUB = shutil.which("mosquitto_sub")
# mosquitto's -V values for MQTT 3.1.1 and MQTT 5
VERSIONS = ["mqttv311", "mqttv5"]


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with module_broker(tmp_path_factory.mktemp("mqtt-tls-clients")) as running:
        yield running


def tls_args(broker, cert: Path | None = None, key: Path | None = None, version: str = "mqttv311") -> list[str]:
    args = ["-h", "127.0.0.1", "-p", str(broker.mqtts_port), "--cafile", str(broker.ca_cert), "-V", version]
    if cert is not None:
        args += ["--cert", str(cert), "--key", str(key)]
    return args


def mosquitto_pub(*args: str) -> subprocess.CompletedProcess:
    assert MOSQUITTO_PUB, "mosquitto_pub is missing (make test installs mosquitto-clients)"
    return subprocess.run([MOSQUITTO_PUB, *args], capture_output=True, text=True, timeout=20, check=False)


def test_mosquitto_clients_are_installed():
    assert MOSQUITTO_PUB, "mosquitto_pub is missing (make test installs mosquitto-clients)"
    assert MOSQUITTO_SUB, "mosquitto_sub is missing (make test installs mosquitto-clients)"


@pytest.mark.parametrize("version", VERSIONS)
def test_x509_device_telemetry_from_mosquitto_pub_is_stored(broker, tmp_path, version):
    device_id, cert, key = x509_device(broker, tmp_path)
    result = mosquitto_pub(*tls_args(broker, cert, key, version), "-d", "-i", unique("cid"), "-q", "1",
                           "-t", "v1/devices/me/telemetry", "-m", '{"temperature": 25, "unit": "C"}')
    assert result.returncode == 0, result.stdout + result.stderr
    assert "received PUBACK (Mid: 1, RC:0)" in result.stdout, result.stdout  # -d; MQTT 5: reason code 0
    stored = latest_telemetry(broker, device_id)
    assert stored["temperature"]["value"] == 25
    assert stored["unit"]["value"] == "C"


@pytest.mark.parametrize("version", VERSIONS)
def test_x509_device_on_mosquitto_sub_receives_a_shared_attribute_update(broker, tmp_path, version):
    device_id, cert, key = x509_device(broker, tmp_path)
    assert MOSQUITTO_SUB, "mosquitto_sub is missing (make test installs mosquitto-clients)"
    with Registry.open(broker.data_dir) as registry:
        username, password = registry.create_application(unique("app"))
    app = connect(broker.mqtt_port, unique("app-cid"), username, password)
    assert app.connack == 0
    assert [c.value for c in app.subscribe(f"gatehouse/devices/{device_id}/events", 1)] == [1]
    sub = subprocess.Popen(
        [MOSQUITTO_SUB, *tls_args(broker, cert, key, version), "-i", unique("cid"), "-q", "1",
         "-t", "v1/devices/me/attributes", "-C", "1", "-W", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(app.next_message().payload)["event"] == "connected"  # the certificate login worked
        # mosquitto_sub's SUBSCRIBE follows its CONNECT at once; its output is block-buffered on a
        # pipe, so instead of waiting for the SUBACK the update is repeated until it arrives.
        for _ in range(20):
            assert app.publish(f"gatehouse/devices/{device_id}/attributes/shared", '{"targetTemperature": 22.5}')
            try:
                sub.wait(0.5)
                break
            except subprocess.TimeoutExpired:
                pass
        stdout, stderr = sub.communicate(timeout=15)
    finally:
        app.close()
        if sub.poll() is None:
            sub.kill()
            sub.communicate()
    assert sub.returncode == 0, f"mosquitto_sub got no update: {stdout} {stderr}"
    assert [json.loads(line) for line in stdout.splitlines() if line.strip()] == [{"targetTemperature": 22.5}]
    with Registry.open(broker.data_dir) as registry:
        assert registry.get_attributes(device_id, AttributeScope.SHARED) == {"targetTemperature": 22.5}


@pytest.mark.parametrize("version", VERSIONS)
def test_unregistered_certificate_from_the_same_ca_is_refused(broker, tmp_path, version):
    name = unique("stranger")
    cert, key = issue_certificate(broker, name, tmp_path / "certs")
    result = mosquitto_pub(*tls_args(broker, cert, key, version), "-i", unique("cid"), "-q", "1",
                           "-t", "v1/devices/me/telemetry", "-m", '{"temperature": 99}')
    output = (result.stdout + result.stderr).lower()
    assert result.returncode != 0, output
    assert "not authori" in output, output
    with Registry.open(broker.data_dir) as registry:
        assert registry.find_device(name) is None


@pytest.mark.parametrize("version", VERSIONS)
def test_token_device_over_tls_without_a_client_certificate(broker, version):
    device, token = token_device(broker, "tok")
    result = mosquitto_pub(*tls_args(broker, version=version), "-i", unique("cid"), "-q", "1", "-u", token,
                           "-t", "v1/devices/me/telemetry", "-m", '{"humidity": 40.5}')
    assert result.returncode == 0, result.stdout + result.stderr
    assert latest_telemetry(broker, device.id)["humidity"]["value"] == 40.5


@pytest.mark.parametrize("version", VERSIONS)
def test_wrong_token_over_tls_is_refused(broker, version):
    result = mosquitto_pub(*tls_args(broker, version=version), "-i", unique("cid"), "-q", "1",
                           "-u", unique("NO_SUCH_TOKEN"), "-t", "v1/devices/me/telemetry", "-m", '{"humidity": 1}')
    output = (result.stdout + result.stderr).lower()
    # MQTT 3.1.1 has one code for both; MQTT 5 says which (0x86 here, 0x87 for an unknown certificate)
    expected = "not authori" if version == "mqttv311" else "bad user name or password"
    assert result.returncode != 0 and expected in output, output


def test_thingsboard_docs_plain_mosquitto_pub_example_stores_telemetry(broker):
    device, token = token_device(broker, "tok")
    result = mosquitto_pub("-d", "-q", "1", "-h", "127.0.0.1", "-p", str(broker.mqtt_port),
                           "-t", "v1/devices/me/telemetry", "-u", token, "-m", '{"temperature":25}')
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PUBACK" in result.stdout + result.stderr  # -d: the QoS 1 message was acknowledged
    assert wait_until(lambda: latest_telemetry(broker, device.id).get("temperature", {}).get("value") == 25, 5)


def test_an_operators_own_server_certificate_is_served_on_8883(tmp_path, broker_factory):
    operator_ca, cert, key = operator_certificate(tmp_path)
    running = broker_factory("--tls-cert", str(cert), "--tls-key", str(key), data_dir=tmp_path / "own-cert-data")
    with Registry.open(running.data_dir) as registry:
        registry.create_device("own-cert", credentials=AccessToken("OWN_CERT_TOKEN"))
    # Trusting the operator's CA works; the development CA no longer vouches for the listener.
    assert connect(running.mqtts_port, "c", "OWN_CERT_TOKEN", ca_cert=operator_ca).return_code == 0
    with pytest.raises(OSError):
        connect(running.mqtts_port, "c2", "OWN_CERT_TOKEN", ca_cert=running.ca_cert)
