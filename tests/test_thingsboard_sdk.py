"""ThingsBoard's own Python SDK (tb-mqtt-client, unchanged) against the Gatehouse broker.

The SDK ships a fork of paho under paho-mqtt's module name, so it lives in a virtual environment
of its own (.venv-sdk, built by `make test`) and runs here as a subprocess: each script in
tests/sdk_scripts takes its parameters as JSON on the command line and prints its result as
JSON (device_session.py: one object per line, as it goes, so the test can act in between) and
the SDK's log on stderr. `TBDeviceMqttClient.provision` speaks MQTT 3.1.1 with the user name `provision`
(provision.py); the SDK's device client speaks MQTT 5 only, and device_session.py drives one
such session through its public API: the `getSessionLimits` call it makes on connecting,
telemetry, client attributes, attribute requests, shared attribute updates and RPC both ways.
Applications on the other side are MQTT 3.1.1 paho clients in the test process. The SDK's HTTP
device client, `TBHTTPDevice`, talks to a sidecar linked to the broker (http_device.py). ThingsBoard's
REST client, tb-rest-client, drives the sidecar's admin API (rest_client.py) and reads telemetry
history with it (rest_timeseries.py).
"""
from __future__ import annotations

import ast
import json
import queue
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from gatehouse.credentials import sha3_hash
from gatehouse.models import AttributeScope, CredentialsType, ProvisionType
from gatehouse.payloads import KvEntry, TelemetryRecord, ValueKind, kv_entries
from gatehouse.registry import Registry

from .devices import token_device, unique, x509_device
from .mqtt_client import TestClient as MqttClient
from .mqtt_client import connect, next_on
from .sdk_paths import REPO_ROOT, SCRIPTS, SDK_PYTHON

SDK_TIMEOUT = 90  # the SDK's provisioning client itself gives up after 60 s without an answer
STEP_TIMEOUT = 20  # how long device_session.py waits for any one thing (a CONNACK, a callback)

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


def run_sdk(sdk_python: Path, script: str, *args: object, server=None) -> SdkRun:
    """Run tests/sdk_scripts/SCRIPT under the SDK's Python; dicts and lists go as JSON. If it
    fails, the message has the log of `server` (the process the script talked to)."""
    argv = [a if isinstance(a, str) else json.dumps(a) for a in args]
    done = subprocess.run([str(sdk_python), str(SCRIPTS / script), *argv], capture_output=True, text=True, check=False,
                          timeout=SDK_TIMEOUT, cwd=REPO_ROOT)
    if done.returncode != 0:
        server_log = "" if server is None else (
            f"\n--- {server.log_path.name} (exit code {server.process.poll()}):\n{server.log_path.read_text()}")
        pytest.fail(f"{script} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}{server_log}")
    return SdkRun(json.loads(done.stdout), done.stderr)


def sdk_provision(sdk_python: Path, broker, **kwargs) -> SdkRun:
    request = {"provision_device_key": KEY, "provision_device_secret": SECRET, **kwargs}
    return run_sdk(sdk_python, "provision.py", broker.host, str(broker.mqtt_port), request, server=broker)


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


# --- device sessions: the SDK's MQTT 5 client --------------------------------------------------


class SdkSession:
    """tests/sdk_scripts/device_session.py running: its JSON lines as they come, its SDK log in a file."""

    def __init__(self, sdk_python: Path, plan: dict, log_path: Path):
        self.log_path = log_path
        with open(log_path, "w") as log_file:
            self.process = subprocess.Popen([str(sdk_python), str(SCRIPTS / "device_session.py"), json.dumps(plan)],
                                            stdout=subprocess.PIPE, stderr=log_file, text=True, cwd=REPO_ROOT)
        self._lines: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with self.process.stdout:
            for line in self.process.stdout:
                self._lines.put(line)
        self._lines.put(None)

    def log(self) -> str:
        return self.log_path.read_text()

    def _fail(self, message: str) -> None:
        tail = "\n".join(self.log().splitlines()[-40:])
        pytest.fail(f"{message}\n--- SDK log (last lines) ---\n{tail}", pytrace=False)

    def expect(self, event: str, timeout: float = STEP_TIMEOUT + 10) -> dict:
        """The script's next line, which must be `event`."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self._fail(f"device_session.py said nothing for {timeout} s; the test waited for {event!r}")
        if line is None:
            self._fail(f"device_session.py exited ({self.process.wait(10)}) before {event!r}")
        try:
            said = json.loads(line)
        except json.JSONDecodeError:
            self._fail(f"device_session.py printed something other than JSON: {line!r}")
        if said.get("event") != event:
            self._fail(f"device_session.py said {said} where the test waited for {event!r}")
        return said

    def finish(self) -> None:
        """The script disconnects and exits cleanly."""
        self.expect("done")
        assert self.process.wait(STEP_TIMEOUT) == 0, self.log()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STEP_TIMEOUT)
        self._reader.join(STEP_TIMEOUT)


@pytest.fixture
def sdk_session(sdk_python, tmp_path):
    """Start device_session.py for a token: sdk_session(broker, token, *steps, **plan options)."""
    started: list[SdkSession] = []

    def start(broker, token: str | None, *steps: dict, **options) -> SdkSession:
        plan = {"host": broker.host, "port": broker.mqtt_port, "token": token, "timeout": STEP_TIMEOUT,
                "steps": list(steps), **options}
        session = SdkSession(sdk_python, plan, tmp_path / f"sdk-session-{len(started)}.log")
        started.append(session)
        return session

    yield start
    for session in started:
        session.close()


def application(broker, *filters: str) -> MqttClient:
    """A new application account logged in (MQTT 3.1.1) and subscribed to `filters` at QoS 1."""
    with Registry.open(broker.data_dir) as registry:
        username, password = registry.create_application(unique("app"))
    app = connect(broker.mqtt_port, unique("app-cid"), username, password)
    assert app.connack == 0, f"application login refused: {app.connack}"
    for topic_filter in filters:
        assert [code.value for code in app.subscribe(topic_filter, 1)] == [1], topic_filter
    return app


def limits_logged(log: str) -> list:
    """What the SDK logged as the limits it applied ("Current device limits: {...}")."""
    return [ast.literal_eval(match) for match in re.findall(r"Current device limits: (\{.*\})$", log, re.MULTILINE)]


NO_RATE_LIMITS = {"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""}


def test_sdk_connects_with_a_provisioned_token_and_applies_the_session_limits(sdk_python, provisioning_broker,
                                                                              sdk_session):
    credentials = sdk_provision(sdk_python, provisioning_broker, device_name="sdk-session").result
    assert credentials["status"] == "SUCCESS"
    session = sdk_session(provisioning_broker, credentials["credentialsValue"],
                          {"step": "send_telemetry", "values": {"provisioned": True, "boot": 1}})
    connected = session.expect("connected")
    assert connected["reason_code"] == 0
    assert connected["subacks"] == [[1], [1], [1], [1]]  # attributes, attribute responses, RPC both ways
    # The broker answered the SDK's getSessionLimits call itself; the SDK keeps 80 % of each limit.
    assert connected["rate_limits_received"] is True
    assert connected["max_payload_size"] == 65536 * 80 // 100
    assert connected["max_inflight_messages"] == 100 * 80 // 100
    assert connected["max_queued_messages"] == 50000  # what the SDK sets when there are no rate limits
    assert session.expect("telemetry") == {"event": "telemetry", "rc": 0, "published": True}
    session.finish()

    log = session.log()
    assert "Service configuration was successfully retrieved and applied." in log
    assert "Timeout while waiting for service configuration" not in log
    assert limits_logged(log) == [{"maxPayloadSize": 65536, "maxInflightMessages": 100, "rateLimits": NO_RATE_LIMITS}]
    device, _, telemetry = stored(provisioning_broker, "sdk-session")
    assert device.id == credentials["deviceId"]
    assert telemetry["provisioned"]["value"] is True
    assert telemetry["boot"]["value"] == 1


def test_sdk_telemetry_is_acknowledged_and_stored(broker, sdk_session):
    device, token = token_device(broker)
    session = sdk_session(broker, token,
                          {"step": "send_telemetry",
                           "values": {"temperature": 21.5, "humidity": 40, "status": "ok", "active": True}},
                          {"step": "send_telemetry", "values": {"ts": 1700000000000, "values": {"pressure": 1013.2}}},
                          {"step": "send_telemetry", "values": [{"ts": 1700000001000, "values": {"count": 7}},
                                                                {"ts": 1700000002000, "values": {"count": 8}}]})
    session.expect("connected")
    for _ in range(3):
        assert session.expect("telemetry") == {"event": "telemetry", "rc": 0, "published": True}
    session.finish()

    with Registry.open(broker.data_dir) as registry:
        telemetry = registry.latest_telemetry(device.id)
    assert {key: entry["value"] for key, entry in telemetry.items()} == {
        "temperature": 21.5, "humidity": 40, "status": "ok", "active": True, "pressure": 1013.2, "count": 8}
    assert telemetry["pressure"]["ts"] == 1700000000000
    assert telemetry["count"]["ts"] == 1700000002000


def test_sdk_attribute_request_gets_the_stored_client_and_shared_values(broker, sdk_session):
    device, token = token_device(broker)
    with Registry.open(broker.data_dir) as registry:
        registry.save_attributes(device.id, AttributeScope.SHARED,
                                 kv_entries({"targetTemp": 22.5, "mode": "eco", "notAsked": 1}))
    session = sdk_session(broker, token,
                          {"step": "send_attributes", "values": {"fw": "1.2.0", "slots": 4, "eco": False}},
                          {"step": "request_attributes", "client_keys": ["fw", "slots"],
                           "shared_keys": ["targetTemp", "mode"]},
                          {"step": "request_attributes", "shared_keys": ["mode", "missing"]})
    session.expect("connected")
    assert session.expect("attributes_sent") == {"event": "attributes_sent", "rc": 0, "published": True}
    answer = session.expect("attributes")
    assert answer["error"] is None
    assert answer["value"] == {"client": {"fw": "1.2.0", "slots": 4}, "shared": {"targetTemp": 22.5, "mode": "eco"}}
    answer = session.expect("attributes")
    assert answer["error"] is None
    assert answer["value"] == {"shared": {"mode": "eco"}}
    session.finish()

    with Registry.open(broker.data_dir) as registry:
        assert registry.get_attributes(device.id, AttributeScope.CLIENT) == {"fw": "1.2.0", "slots": 4, "eco": False}


def test_sdk_attribute_callbacks_fire_on_shared_attribute_updates_from_an_application(broker, sdk_session):
    device, token = token_device(broker)
    app = application(broker)
    session = sdk_session(broker, token, *[{"step": "await_attribute_update"}] * 3,
                          watch_keys=["targetTemp", "neverSent"])
    session.expect("connected")
    topic = f"gatehouse/devices/{device.id}/attributes/shared"

    session.expect("awaiting_attribute_update")
    assert app.publish(topic, '{"targetTemp": 23, "mode": "comfort"}')
    update = session.expect("attribute_update")
    assert update["all"] == {"targetTemp": 23, "mode": "comfort"}
    assert update["by_key"] == {"targetTemp": {"targetTemp": 23, "mode": "comfort"}}

    session.expect("awaiting_attribute_update")
    assert app.publish(topic, '{"mode": "away"}')
    update = session.expect("attribute_update")
    assert update["all"] == {"mode": "away"}
    assert update["by_key"] == {}  # no callback for targetTemp this time

    session.expect("awaiting_attribute_update")
    assert app.publish(topic, '{"deleted": ["mode"]}')
    assert session.expect("attribute_update")["all"] == {"deleted": ["mode"]}
    session.finish()

    with Registry.open(broker.data_dir) as registry:
        assert registry.get_attributes(device.id, AttributeScope.SHARED) == {"targetTemp": 23}


def test_sdk_handler_answers_a_server_side_rpc_from_an_application(broker, sdk_session):
    device, token = token_device(broker)
    app = application(broker, f"gatehouse/devices/{device.id}/rpc/response/+")
    session = sdk_session(broker, token, {"step": "await_rpc"}, rpc_reply={"ok": True})
    session.expect("connected")
    session.expect("awaiting_rpc")
    assert app.publish(f"gatehouse/devices/{device.id}/rpc/call/17", '{"method": "setGpio", "params": {"pin": 4}}')
    request = session.expect("rpc_request")
    assert request["request_id"] == "17"
    assert request["body"] == {"method": "setGpio", "params": {"pin": 4}}
    reply = next_on(app, f"gatehouse/devices/{device.id}/rpc/response/17", STEP_TIMEOUT)
    assert json.loads(reply.payload) == {"received": {"method": "setGpio", "params": {"pin": 4}}, "ok": True}
    session.finish()


def test_sdk_client_side_rpc_is_answered_by_an_application(broker, sdk_session):
    device, token = token_device(broker)
    prefix = f"gatehouse/devices/{device.id}/rpc/request/"
    app = application(broker, prefix + "+")
    session = sdk_session(broker, token, {"step": "rpc_call", "method": "getCurrentTime", "params": {"tz": "UTC"}})
    session.expect("connected")
    # The first request the application sees is the SDK's own call: getSessionLimits stayed with the broker.
    request = app.next_message(timeout=STEP_TIMEOUT)
    assert request.topic.startswith(prefix), request.topic
    assert json.loads(request.payload) == {"method": "getCurrentTime", "params": {"tz": "UTC"}}
    request_id = request.topic[len(prefix):]
    assert app.publish(f"gatehouse/devices/{device.id}/rpc/reply/{request_id}", '{"time": 1700000000000}')
    response = session.expect("rpc_response")
    assert response["error"] is None
    assert response["request_id"] == int(request_id)
    assert response["value"] == {"time": 1700000000000}
    session.finish()
    assert app.no_message(0.5)


def test_sdk_over_tls_with_an_x509_device_certificate(broker, sdk_session, tmp_path):
    device_id, cert, key = x509_device(broker, tmp_path)
    session = sdk_session(broker, None, {"step": "send_telemetry", "values": {"viaTls": True}},
                          port=broker.mqtts_port,
                          tls={"ca_certs": str(broker.ca_cert), "cert_file": str(cert), "key_file": str(key)})
    connected = session.expect("connected")
    assert connected["reason_code"] == 0 and connected["rate_limits_received"] is True
    assert session.expect("telemetry") == {"event": "telemetry", "rc": 0, "published": True}
    session.finish()
    with Registry.open(broker.data_dir) as registry:
        assert registry.latest_telemetry(device_id)["viaTls"]["value"] is True


# --- the SDK's HTTP device client against the sidecar -------------------------------------------


def sdk_http_device(sdk_python: Path, sidecar, **plan) -> SdkRun:
    return run_sdk(sdk_python, "http_device.py", {"url": sidecar.url, "provision_device_key": KEY,
                                                  "provision_device_secret": SECRET, **plan}, server=sidecar)


def test_sdk_http_device_provisions_connects_sends_telemetry_and_requests_attributes(
        sdk_python, provisioning_broker, sidecar_factory):
    sidecar = sidecar_factory(provisioning_broker)
    run = sdk_http_device(sdk_python, sidecar, device_name="sdk-http",
                          telemetry={"temperature": 21.5, "status": "ok"}, telemetry_ts_ms=1700000000000,
                          queued_telemetry={"queued": True},
                          attributes={"fw": "1.2.0", "slots": 4},
                          client_keys=["fw"], shared_keys=["targetTemp"])
    result = run.result
    assert result["connected"] is True
    assert result["queued_published"] is True
    # The SDK names its parameters client_keys and shared_keys; ThingsBoard reads only clientKeys
    # and sharedKeys, so the SDK always gets every client and shared attribute, and so it does here.
    assert result["attributes"] == {"client": {"fw": "1.2.0", "slots": 4}}

    device, credentials, telemetry = stored(provisioning_broker, "sdk-http")
    assert device.profile_name == "sdk-allow"
    assert credentials.credentials_type is CredentialsType.ACCESS_TOKEN
    assert credentials.credentials_id == result["token"]
    assert {key: entry["value"] for key, entry in telemetry.items()} == {
        "temperature": 21.5, "status": "ok", "queued": True}
    assert telemetry["temperature"]["ts"] == 1700000000000
    with Registry.open(provisioning_broker.data_dir) as registry:
        assert registry.get_attributes(device.id, AttributeScope.CLIENT) == {"fw": "1.2.0", "slots": 4}
        assert [(event["outcome"], event["transport"]) for event in registry.provisioning_events()] == [
            ("SUCCESS", "HTTP")]


def test_sdk_http_device_gets_the_provisioning_refusal_and_a_wrong_token_does_not_connect(
        sdk_python, provisioning_broker, sidecar_factory):
    sidecar = sidecar_factory(provisioning_broker)
    run = sdk_http_device(sdk_python, sidecar, device_name="sdk-http-refused", provision_device_secret="not-it")
    assert run.result == {"provision_failure": {"errorMsg": "Provision data was not found!", "status": "NOT_FOUND"}}

    run = sdk_http_device(sdk_python, sidecar, device_name="sdk-http-ok", wrong_token="NOT_A_TOKEN")
    assert run.result["connected"] is True
    assert run.result["wrong_token_connected"] is False
    assert "Error 401: Unauthorized" in run.log
    with Registry.open(provisioning_broker.data_dir) as registry:
        assert registry.find_device("sdk-http-refused") is None
        assert registry.count_devices() == 1


# --- ThingsBoard's REST client against the admin API --------------------------------------------


def test_sdk_rest_client_manages_profiles_devices_and_credentials(sdk_python, broker, sidecar_factory):
    """tests/sdk_scripts/rest_client.py: tb-rest-client, unchanged, logs in, creates a provisioning
    profile and a device with MQTT basic credentials, reads and updates them, and deletes the
    device; the profile it made then provisions a device for the SDK's MQTT client."""
    with Registry.open(broker.data_dir) as registry:
        registry.add_admin("sdk-admin@gatehouse.test", "sdk-Admin-pass1")
    sidecar = sidecar_factory(broker)
    plan = {"username": "sdk-admin@gatehouse.test", "password": "sdk-Admin-pass1", "profile": "sdk-rest-profile",
            "key": "sdkRestKey", "secret": "sdk-rest-Secret", "device": "sdk-rest-device", "client_id": "sdk-rest-cid",
            "user_name": "sdk-rest-user", "mqtt_password": "sdk-rest-pass",
            "bulk_csv": "name,type,token\nsdk-bulk-1,sdk-bulk-type,SDK_BULK_TOKEN_1\n"}
    said = run_sdk(sdk_python, "rest_client.py", sidecar.url, plan, server=sidecar).result

    assert said["refreshed"] is True and said["token_exp"] > 0
    profile = said["profile"]
    assert (profile["name"], profile["provision_type"], profile["provision_device_key"]) == (
        "sdk-rest-profile", "ALLOW_CREATE_NEW_DEVICES", "sdkRestKey")
    assert profile["profile_data"]["provision_configuration"] == {
        "type": "ALLOW_CREATE_NEW_DEVICES", "provision_device_secret": "sdk-rest-Secret"}
    assert said["profile_read"] == profile
    mqtt_profile = said["mqtt_profile_read"]
    assert mqtt_profile["transport_type"] == "MQTT"
    transport = mqtt_profile["profile_data"]["transport_configuration"]
    assert (transport["device_telemetry_topic"], transport["device_attributes_topic"],
            transport["send_ack_on_validation_exception"]) == ("sensors/+/data", "sensors/+/state", True)
    assert [p["id"] for p in said["profiles_page"]["data"]] == [profile["id"]]
    assert said["duplicate_key"]["status"] == 400
    assert said["duplicate_key"]["body"]["message"] == "Device profile with such provision device key already exists!"

    device = said["device"]
    assert (device["name"], device["type"], device["label"]) == ("sdk-rest-device", "sdk-rest-profile",
                                                                 "made by tb-rest-client")
    assert device["device_profile_id"] == profile["id"]
    credentials = said["credentials"]
    assert credentials["credentials_type"] == "MQTT_BASIC"
    assert credentials["credentials_id"] == sha3_hash("sdk-rest-cid", "sdk-rest-user")
    assert json.loads(credentials["credentials_value"]) == {
        "clientId": "sdk-rest-cid", "userName": "sdk-rest-user", "password": "sdk-rest-pass"}
    assert said["by_name"] == device and [d["id"] for d in said["devices_page"]["data"]] == [device["id"]]
    assert {item["key"]: item["value"] for item in said["shared"]} == {"targetTemp": 21.5, "mode": "eco"}
    assert {"installedBy", "targetTemp"} <= {item["key"] for item in said["attributes"]}
    assert said["latest"] == {}
    assert json.loads(said["credentials_updated"]["credentials_value"])["password"] == "sdk-rest-pass-rotated"
    assert said["bulk_import"] == {"created": 1, "updated": 0, "errors": 0, "errors_list": []}
    assert said["after_delete"]["status"] == 404

    with Registry.open(broker.data_dir) as registry:
        stored_profile = registry.get_profile("sdk-rest-profile")
        assert stored_profile.provision_type is ProvisionType.ALLOW_CREATE_NEW_DEVICES
        assert (stored_profile.provision_device_key, stored_profile.provision_device_secret) == (
            "sdkRestKey", "sdk-rest-Secret")
        assert registry.find_device_by_name("sdk-rest-device") is None
        assert registry.token_login("SDK_BULK_TOKEN_1").profile_name == "sdk-bulk-type"
    provisioned = run_sdk(sdk_python, "provision.py", broker.host, str(broker.mqtt_port), {
        "provision_device_key": "sdkRestKey", "provision_device_secret": "sdk-rest-Secret",
        "device_name": "sdk-rest-provisioned"}, server=broker).result
    assert provisioned["status"] == "SUCCESS"
    device_after, _, _ = stored(broker, "sdk-rest-provisioned")
    assert device_after.profile_name == "sdk-rest-profile"


def test_sdk_rest_client_reads_telemetry_history_by_range_limit_and_order(sdk_python, broker, sidecar_factory):
    """tests/sdk_scripts/rest_timeseries.py: tb-rest-client's get_timeseries, unchanged, reads the
    history the devices stored: the range [start_ts, end_ts), at most limit points per key,
    newest first unless ASC, values as text unless strict types are asked for."""
    t0 = 1_700_000_000_000
    with Registry.open(broker.data_dir) as registry:
        registry.add_admin("sdk-history@gatehouse.test", "sdk-History-pass1")
        device = registry.create_device(unique("sdk-history"))
        registry.save_telemetry(device.id, [TelemetryRecord(t0 + n * 1_000, (
            KvEntry("temperature", ValueKind.DOUBLE, 20.5 + n), KvEntry("state", ValueKind.STRING, f"s{n}")))
            for n in range(10)])
    sidecar = sidecar_factory(broker)
    plan = {"username": "sdk-history@gatehouse.test", "password": "sdk-History-pass1", "device_id": device.id,
            "queries": {
                "range": {"keys": "temperature", "start_ts": t0 + 2_000, "end_ts": t0 + 6_000},
                "limited": {"keys": "temperature,state", "start_ts": t0, "end_ts": t0 + 60_000, "limit": 3,
                            "order_by": "ASC", "use_strict_data_types": True},
                "unknown_key": {"keys": "humidity", "start_ts": t0, "end_ts": t0 + 60_000},
                "aggregated": {"keys": "temperature", "start_ts": t0, "end_ts": t0 + 60_000, "agg": "AVG",
                               "interval": 1_000},
                "unknown_device": {"device_id": "00000000-0000-4000-8000-000000000000", "keys": "temperature",
                                   "start_ts": t0, "end_ts": t0 + 60_000}}}
    said = run_sdk(sdk_python, "rest_timeseries.py", sidecar.url, plan, server=sidecar).result

    assert said["range"] == {"temperature": [{"ts": t0 + n * 1_000, "value": str(20.5 + n)} for n in (5, 4, 3, 2)]}
    assert said["limited"] == {"temperature": [{"ts": t0 + n * 1_000, "value": 20.5 + n} for n in range(3)],
                               "state": [{"ts": t0 + n * 1_000, "value": f"s{n}"} for n in range(3)]}
    assert said["unknown_key"] == {}
    assert said["aggregated"]["status"] == 400 and "agg" in said["aggregated"]["body"]["message"]
    assert said["unknown_device"]["status"] == 404
    assert said["latest"] == {"state": [{"ts": t0 + 9_000, "value": "s9"}],
                              "temperature": [{"ts": t0 + 9_000, "value": 29.5}]}
