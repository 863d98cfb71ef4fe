"""ThingsBoard's own Python SDK (tb-mqtt-client, unchanged) against the Gatehouse broker.

The SDK ships a fork of paho under paho-mqtt's module name, so it lives in a virtual environment
of its own (.venv-sdk, built by `make test`) and runs here as a subprocess: each script in
tests/sdk_scripts takes its parameters as JSON on the command line and prints its result as
JSON. Only provisioning is exercised for now: `TBDeviceMqttClient.provision` speaks MQTT 3.1.1
with the user name `provision`; the SDK's device client speaks MQTT 5, which the broker refuses.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from gatehouse.models import CredentialsType, ProvisionType
from gatehouse.registry import Registry

from .mqtt_client import connect

REPO_ROOT = Path(__file__).resolve().parent.parent
SDK_PYTHON = REPO_ROOT / ".venv-sdk" / "bin" / "python"
SCRIPTS = Path(__file__).resolve().parent / "sdk_scripts"
SDK_TIMEOUT = 90  # the SDK's provisioning client itself gives up after 60 s without an answer

KEY, SECRET = "sdkProvisionKey", "sdk-Secret-5c1e7a"


@dataclass
class SdkRun:
    result: object  # what the SDK call returned, decoded from the script's JSON output
    log: str  # the SDK's log (stderr)


@pytest.fixture(scope="session")
def sdk_python() -> Path:
    if not SDK_PYTHON.exists():
        pytest.fail(f"{SDK_PYTHON.relative_to(REPO_ROOT)} is missing: `make test` builds it (ThingsBoard's SDK, "
                    "tb-mqtt-client, in a virtual environment of its own)", pytrace=False)
    return SDK_PYTHON


@pytest.fixture
def provisioning_broker(broker):
    with Registry.open(broker.data_dir) as registry:
        registry.create_profile("sdk-allow", ProvisionType.ALLOW_CREATE_NEW_DEVICES, key=KEY, secret=SECRET)
    return broker


def run_sdk(sdk_python: Path, script: str, *args: object) -> SdkRun:
    """Run tests/sdk_scripts/SCRIPT under the SDK's Python; dicts and lists go as JSON."""
    argv = [a if isinstance(a, str) else json.dumps(a) for a in args]
    done = subprocess.run([str(sdk_python), str(SCRIPTS / script), *argv], capture_output=True, text=True,
                          timeout=SDK_TIMEOUT, cwd=REPO_ROOT)
    assert done.returncode == 0, f"{script} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return SdkRun(json.loads(done.stdout), done.stderr)


def sdk_provision(sdk_python: Path, broker, **kwargs) -> SdkRun:
    request = {"provision_device_key": KEY, "provision_device_secret": SECRET, **kwargs}
    return run_sdk(sdk_python, "provision.py", broker.host, str(broker.mqtt_port), request)


def assert_logs_in_and_sends(broker, client_id: str, username: str | None, password: str | None = None) -> None:
    client = connect(broker.mqtt_port, client_id, username, password)
    try:
        assert client.connack == 0
        assert client.publish("v1/devices/me/telemetry", '{"provisioned": true}')
    finally:
        client.close()


def stored(broker, name: str):
    """(device, credentials, latest telemetry) as the registry has them."""
    with Registry.open(broker.data_dir) as registry:
        device = registry.get_device(name)
        return device, registry.get_credentials(device.id), registry.latest_telemetry(device.id)


def test_sdk_provisions_a_device_with_a_generated_token(sdk_python, provisioning_broker):
    run = sdk_provision(sdk_python, provisioning_broker, device_name="sdk-default")
    credentials = run.result
    assert credentials["status"] == "SUCCESS"
    assert credentials["credentialsType"] == "ACCESS_TOKEN"
    token = credentials["credentialsValue"]
    assert isinstance(token, str) and len(token) >= 20
    assert credentials["deviceName"] == "sdk-default"

    assert_logs_in_and_sends(provisioning_broker, "sdk-default-client", token)
    device, stored_credentials, telemetry = stored(provisioning_broker, "sdk-default")
    assert device.id == credentials["deviceId"] and device.profile_name == "sdk-allow"
    assert stored_credentials.credentials_type is CredentialsType.ACCESS_TOKEN
    assert stored_credentials.credentials_id == token
    assert telemetry["provisioned"]["value"] is True


def test_sdk_provisions_a_device_with_its_own_access_token(sdk_python, provisioning_broker):
    run = sdk_provision(sdk_python, provisioning_broker, device_name="sdk-token", access_token="SDK_OWN_TOKEN_42")
    assert run.result["status"] == "SUCCESS"
    assert run.result["credentialsType"] == "ACCESS_TOKEN"
    assert run.result["credentialsValue"] == "SDK_OWN_TOKEN_42"

    assert_logs_in_and_sends(provisioning_broker, "", "SDK_OWN_TOKEN_42")
    device, stored_credentials, _ = stored(provisioning_broker, "sdk-token")
    assert device.id == run.result["deviceId"]
    assert stored_credentials.credentials_id == "SDK_OWN_TOKEN_42"


def test_sdk_provisions_a_device_with_mqtt_basic_credentials(sdk_python, provisioning_broker):
    run = sdk_provision(sdk_python, provisioning_broker, device_name="sdk-basic", client_id="sdk-basic-client",
                        username="sdk-basic-user", password="sdk-basic-pass")
    assert run.result["status"] == "SUCCESS"
    assert run.result["credentialsType"] == "MQTT_BASIC"
    assert run.result["credentialsValue"] == {
        "clientId": "sdk-basic-client", "userName": "sdk-basic-user", "password": "sdk-basic-pass"}

    assert_logs_in_and_sends(provisioning_broker, "sdk-basic-client", "sdk-basic-user", "sdk-basic-pass")
    refused = connect(provisioning_broker.mqtt_port, "sdk-basic-client", "sdk-basic-user", "wrong-pass")
    refused.close()
    assert refused.connack != 0
    device, stored_credentials, _ = stored(provisioning_broker, "sdk-basic")
    assert device.id == run.result["deviceId"]
    assert stored_credentials.credentials_type is CredentialsType.MQTT_BASIC
    assert json.loads(stored_credentials.credentials_value) == run.result["credentialsValue"]


def test_sdk_gets_nothing_for_a_wrong_secret_and_no_device_is_created(sdk_python, provisioning_broker):
    run = sdk_provision(sdk_python, provisioning_broker, device_name="sdk-refused",
                        provision_device_secret="not-the-secret")
    assert run.result is None  # the SDK returns no credentials and logs the status
    assert "NOT_FOUND" in run.log
    with Registry.open(provisioning_broker.data_dir) as registry:
        assert registry.find_device("sdk-refused") is None
        assert registry.count_devices() == 0
        assert [event["outcome"] for event in registry.provisioning_events()] == ["NOT_FOUND"]
