"""Device logins and provisioning over real MQTT 3.1.1 (paho) against a real `gatehouse broker`
process: SPEC §9.2 (token, MQTT basic, refusal codes, one live session per device, logout on
credential change or deletion), §1.4 (X.509 over TLS, trust-store refresh, certificate-chain
provisioning at login) and §9.1 / §3 (the provision-only session and its JSON answers).

Most tests share one broker (each uses its own devices and profiles); a test that needs the
data dir prepared before the broker starts gets its own. Changes that must come from ANOTHER
process are made with the `gatehouse` CLI; the broker notices them within about a second.
"""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from gatehouse.certificates import base64_body, parse_certificate
from gatehouse.credentials import AccessToken, MqttBasic
from gatehouse.models import AttributeScope, CredentialsType, ProvisionType
from gatehouse.pki import (
    certificate_pem,
    create_ca,
    create_self_signed,
    issue_certificate,
    private_key_pem,
)
from gatehouse.registry import Registry

from .async_mqtt import CONNACK, PUBACK, PUBLISH, read_packet
from .conftest import module_broker
from .devices import unique
from .metrics_scrape import counts
from .mqtt_client import (
    RawClient,
    acknowledged,
    connect,
    connect_packet,
    publish_packet,
    wait_until,
)
from .provisioning_answers import (
    FAILURE_JSON,
    NOT_FOUND_JSON,
    PROVISION_REQUEST,
    PROVISION_RESPONSE,
    provision,
    provision_client,
)

TELEMETRY = "v1/devices/me/telemetry"
PROVISION_CLOSE_SECONDS = 2.0
SUBACK_FAILURE = 0x80


def rc(client) -> int | None:
    """The MQTT 3.1.1 CONNACK return code, None if the connection ended without a CONNACK."""
    return client.return_code


# --- fixtures and helpers ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def gh(tmp_path_factory):
    """The shared broker. Many tests here log in wrongly on purpose, so address blocking is
    pushed out of the way (test_hardened_broker.py tests it)."""
    with module_broker(tmp_path_factory.mktemp("logins"), "--provision-close-seconds",
                       str(PROVISION_CLOSE_SECONDS), "--max-failed-logins", "100000") as running:
        yield running


def mqtt(port, client_id="", username=None, password=None, **kwargs):
    return connect(port, client_id, username, password, **kwargs)  # closed after the test by conftest


def tls_login(broker, client_id, username=None, password=None, *, cert=None, key=None, **kwargs):
    """A TLS login trusting the broker's CA; None if the handshake itself was refused."""
    try:
        return mqtt(broker.mqtts_port, client_id, username, password, ca_cert=broker.ca_cert, cert=cert, key=key,
                    **kwargs)
    except OSError:  # ssl.SSLError included: the server refused the client certificate
        return None


def tls_code(broker, cert, key, username=None) -> int | None:
    client = tls_login(broker, unique("tls"), username, "whatever", cert=cert, key=key)
    return None if client is None else rc(client)


def registry(broker) -> Registry:
    return Registry.open(broker.data_dir)


def create_device(broker, name, credentials=None, **kwargs):
    with registry(broker) as r:
        return r.create_device(name, credentials=credentials, **kwargs)


def telemetry(broker, device_id) -> dict:
    with registry(broker) as r:
        return {key: entry["value"] for key, entry in r.latest_telemetry(device_id).items()}


def cli(broker, *args) -> subprocess.CompletedProcess:
    """The `gatehouse` command in another process, on the broker's data dir."""
    result = subprocess.run([sys.executable, "-m", "gatehouse", "--data-dir", str(broker.data_dir), *map(str, args)],
                            check=False, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr
    return result


def write_pair(directory: Path, name: str, cert, key) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_text(certificate_pem(cert))
    key_path.write_text(private_key_pem(key))
    return cert_path, key_path


def assert_sends_telemetry(broker, client, device_id, key="t"):
    value = uuid.uuid4().int % 100_000
    assert client.publish(TELEMETRY, json.dumps({key: value}))
    assert telemetry(broker, device_id).get(key) == value


# --- §9.2 token and MQTT basic logins ------------------------------------------------------------

def test_access_token_as_username_logs_in_and_telemetry_is_stored_on_that_device(gh):
    token = unique("TOKEN")
    device = create_device(gh, unique("token-dev"), AccessToken(token))
    other = create_device(gh, unique("bystander"))
    client = mqtt(gh.mqtt_port, unique("any-client"), token)
    assert rc(client) == 0
    assert_sends_telemetry(gh, client, device.id)
    assert telemetry(gh, other.id) == {}


def test_access_token_ignores_a_random_client_id_and_a_random_password(gh):
    token = unique("TOKEN")
    device = create_device(gh, unique("token-dev"), AccessToken(token))
    client = mqtt(gh.mqtt_port, uuid.uuid4().hex, token, uuid.uuid4().hex)
    assert rc(client) == 0
    assert_sends_telemetry(gh, client, device.id)


def test_mqtt_basic_client_id_only_logs_in_with_the_client_id_alone(gh):
    client_id = unique("cid-only")
    device = create_device(gh, unique("basic-cid"), MqttBasic(client_id, None, None))
    client = mqtt(gh.mqtt_port, client_id)
    assert rc(client) == 0
    assert_sends_telemetry(gh, client, device.id)
    client.close()
    # Any user name sends the login down the username branch, where this credential is not.
    assert rc(mqtt(gh.mqtt_port, client_id, "some-user")) == 5
    assert rc(mqtt(gh.mqtt_port, unique("other-cid"))) == 2


def test_mqtt_basic_client_id_and_username_win_over_an_equal_access_token(gh):
    shared_name = unique("SHARED")
    client_id = unique("cid")
    token_device = create_device(gh, unique("token-owner"), AccessToken(shared_name))
    basic_device = create_device(gh, unique("basic-owner"), MqttBasic(client_id, shared_name, None))
    basic = mqtt(gh.mqtt_port, client_id, shared_name)
    assert rc(basic) == 0
    assert_sends_telemetry(gh, basic, basic_device.id, key="basic")
    assert telemetry(gh, token_device.id) == {}
    # With any other client id the same username is just the access token.
    as_token = mqtt(gh.mqtt_port, unique("cid"), shared_name)
    assert rc(as_token) == 0
    assert_sends_telemetry(gh, as_token, token_device.id, key="token")
    assert "token" not in telemetry(gh, basic_device.id)


def test_mqtt_basic_full_triple_logs_in(gh):
    client_id, username, password = unique("cid"), unique("user"), unique("pw")
    device = create_device(gh, unique("triple"), MqttBasic(client_id, username, password))
    client = mqtt(gh.mqtt_port, client_id, username, password)
    assert rc(client) == 0
    assert_sends_telemetry(gh, client, device.id)


def test_mqtt_basic_username_and_password_without_client_id_accept_any_client_id(gh):
    username, password = unique("user"), unique("pw")
    device = create_device(gh, unique("user-pw"), MqttBasic(None, username, password))
    client = mqtt(gh.mqtt_port, uuid.uuid4().hex, username, password)
    assert rc(client) == 0
    assert_sends_telemetry(gh, client, device.id)
    client.close()
    assert rc(mqtt(gh.mqtt_port, uuid.uuid4().hex, username, "wrong")) == 5


def test_mqtt_basic_wrong_password_is_refused_with_5_and_nothing_is_stored(gh):
    client_id, username = unique("cid"), unique("user")
    device = create_device(gh, unique("triple"), MqttBasic(client_id, username, "right-password"))
    # An access token equal to the user name must not become a fallback (SPEC §1.3).
    token_device = create_device(gh, unique("token-twin"), AccessToken(username))
    assert rc(mqtt(gh.mqtt_port, client_id, username, "wrong-password")) == 5
    assert rc(mqtt(gh.mqtt_port, client_id, username)) == 5  # no password at all
    # A PUBLISH pipelined behind the refused CONNECT is never processed.
    with RawClient(gh.mqtt_port) as raw:
        raw.send(connect_packet(client_id, username, "wrong-password")
                 + publish_packet(TELEMETRY, '{"leak": 1}', qos=1))
        assert raw.read(4) == bytes((0x20, 0x02, 0x00, 0x05))
        assert raw.closed_by_server(5)
    assert telemetry(gh, device.id) == {}
    assert telemetry(gh, token_device.id) == {}


def test_wrong_access_token_is_refused_with_5(gh):
    create_device(gh, unique("token-dev"), AccessToken(unique("TOKEN")))
    client = mqtt(gh.mqtt_port, unique("cid"), unique("WRONG"))
    assert rc(client) == 5
    assert client.wait_disconnected(5)


def test_unknown_client_id_without_username_or_password_is_refused_with_2(gh):
    client = mqtt(gh.mqtt_port, unique("unknown-client"))
    assert rc(client) == 2


def test_no_credentials_at_all_is_refused_with_5(gh):
    # Raw bytes: on CONNACK 2 with an empty client id paho silently retries with a random one.
    with RawClient(gh.mqtt_port) as raw:
        raw.send(connect_packet(""))
        assert raw.read(4) == bytes((0x20, 0x02, 0x00, 0x05))
        assert raw.closed_by_server(5)


# --- §2.1 sessions: deletion, credential change, one live session per device ---------------------

def test_deleting_the_device_in_another_process_disconnects_its_client(gh):
    token, name = unique("TOKEN"), unique("doomed")
    create_device(gh, name, AccessToken(token))
    client = mqtt(gh.mqtt_port, unique("cid"), token)
    assert rc(client) == 0
    cli(gh, "device", "delete", name)
    assert client.wait_disconnected(5)
    assert rc(mqtt(gh.mqtt_port, unique("cid"), token)) == 5


def test_rotating_credentials_in_another_process_disconnects_the_client(gh):
    token, name = unique("TOKEN"), unique("rotated")
    device = create_device(gh, name, AccessToken(token))
    client = mqtt(gh.mqtt_port, unique("cid"), token)
    assert rc(client) == 0
    rotated = json.loads(cli(gh, "device", "credentials", name, "--rotate", "--json").stdout)
    new_token = rotated["credentialsId"]
    assert new_token != token
    assert client.wait_disconnected(5)
    assert rc(mqtt(gh.mqtt_port, unique("cid"), token)) == 5
    renewed = mqtt(gh.mqtt_port, unique("cid"), new_token)
    assert rc(renewed) == 0
    assert_sends_telemetry(gh, renewed, device.id)


def test_a_second_login_with_the_same_credentials_disconnects_the_first(gh):
    token = unique("TOKEN")
    device = create_device(gh, unique("single"), AccessToken(token))
    first = mqtt(gh.mqtt_port, unique("first"), token)
    assert rc(first) == 0
    second = mqtt(gh.mqtt_port, unique("second"), token)
    assert rc(second) == 0
    assert first.wait_disconnected(5)
    assert not second.disconnected.is_set()
    assert_sends_telemetry(gh, second, device.id)


def test_a_second_login_with_the_same_client_id_disconnects_the_first(gh):
    token, client_id = unique("TOKEN"), unique("same-id")
    device = create_device(gh, unique("single"), AccessToken(token))
    first = mqtt(gh.mqtt_port, client_id, token)
    assert rc(first) == 0
    second = mqtt(gh.mqtt_port, client_id, token)
    assert rc(second) == 0
    assert first.wait_disconnected(5)
    time.sleep(0.3)
    assert not second.disconnected.is_set()
    assert_sends_telemetry(gh, second, device.id)


# --- §1.4 X.509 over TLS --------------------------------------------------------------------------

def test_x509_certificate_from_the_cli_logs_in_and_username_is_ignored(gh, tmp_path):
    name = unique("x509-dev")
    cli(gh, "pki", "issue", name, "--out", tmp_path)
    cli(gh, "device", "create", name, "--cert", tmp_path / f"{name}.pem")
    with registry(gh) as r:
        device = r.get_device(name)
        assert r.get_credentials(name).credentials_type is CredentialsType.X509_CERTIFICATE
    client = tls_login(gh, unique("cid"), "garbage-username", "garbage-password",
                       cert=tmp_path / f"{name}.pem", key=tmp_path / f"{name}.key")
    assert client is not None and rc(client) == 0
    assert_sends_telemetry(gh, client, device.id)


def test_x509_path_ignores_a_valid_token_in_the_username(gh, tmp_path):
    token = unique("TOKEN")
    create_device(gh, unique("token-dev"), AccessToken(token))
    name = unique("unregistered")
    cli(gh, "pki", "issue", name, "--out", tmp_path)
    # The certificate decides; a valid access token in the username does not rescue it.
    assert tls_code(gh, tmp_path / f"{name}.pem", tmp_path / f"{name}.key", username=token) == 5


def test_ca_signed_certificate_that_is_not_registered_is_refused_with_5(gh, tmp_path):
    name = unique("unregistered")
    cli(gh, "pki", "issue", name, "--out", tmp_path)
    assert tls_code(gh, tmp_path / f"{name}.pem", tmp_path / f"{name}.key") == 5
    with registry(gh) as r:
        assert r.find_device(name) is None


def test_self_signed_certificate_registered_while_running_is_accepted_after_the_trust_refresh(gh, tmp_path):
    name = unique("self-signed")
    cert_path, key_path = write_pair(tmp_path, name, *create_self_signed(name))
    assert tls_code(gh, cert_path, key_path) != 0  # not trusted, not registered
    cli(gh, "device", "create", name, "--cert", cert_path)
    assert wait_until(lambda: tls_code(gh, cert_path, key_path) == 0, timeout=10, interval=0.3)
    with registry(gh) as r:
        device = r.get_device(name)
    client = tls_login(gh, unique("cid"), cert=cert_path, key=key_path)
    assert rc(client) == 0
    assert_sends_telemetry(gh, client, device.id)


def test_provision_username_wins_over_a_registered_client_certificate(gh, tmp_path):
    name = unique("x509-dev")
    cli(gh, "pki", "issue", name, "--out", tmp_path)
    cli(gh, "device", "create", name, "--cert", tmp_path / f"{name}.pem")
    client = tls_login(gh, unique("cid"), "provision", cert=tmp_path / f"{name}.pem", key=tmp_path / f"{name}.key")
    assert rc(client) == 0
    # A provision-only session, not the device: only /provision/response may be subscribed.
    assert [c.value for c in client.subscribe("v1/devices/me/attributes", 1)] == [SUBACK_FAILURE]
    assert [c.value for c in client.subscribe(PROVISION_RESPONSE, 1)] == [1]


def test_token_login_over_tls_without_a_client_certificate(gh):
    token = unique("TOKEN")
    device = create_device(gh, unique("tls-token"), AccessToken(token))
    client = tls_login(gh, unique("cid"), token)
    assert client is not None and rc(client) == 0
    assert_sends_telemetry(gh, client, device.id)
    assert rc(tls_login(gh, unique("cid"), unique("WRONG"))) == 5


# --- §1.4.2 X.509 certificate-chain provisioning at the TLS login --------------------------------

def _chain_ca(directory: Path, name: str):
    ca_cert, ca_key = create_ca(name)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_text(certificate_pem(ca_cert))
    return ca_cert, ca_key


def _leaf(directory: Path, ca, common_name: str) -> tuple[Path, Path]:
    return write_pair(directory, common_name, *issue_certificate(*ca, common_name))


def _assert_x509_device(broker, name: str, cert_path: Path):
    with registry(broker) as r:
        device = r.find_device(name)
        assert device is not None, f"no device {name!r}"
        credentials = r.get_credentials(name)
    assert credentials.credentials_type is CredentialsType.X509_CERTIFICATE
    assert credentials.credentials_value == base64_body(parse_certificate(cert_path.read_text()))
    return device


def test_x509_chain_profile_created_before_start_provisions_the_device_at_login(tmp_path, broker_factory):
    data_dir = tmp_path / "data"
    Registry.initialise(data_dir).close()
    ca = _chain_ca(tmp_path / "ca", unique("Sensors CA"))
    subprocess.run([sys.executable, "-m", "gatehouse", "--data-dir", str(data_dir), "profile", "create", "sensors",
                    "--strategy", "x509-chain", "--ca-cert", str(tmp_path / "ca" / "ca.pem"),
                    "--cn-regex", r"(.*)\.example"], check=True, capture_output=True, timeout=60)
    broker = broker_factory("--provision-close-seconds", "2")
    cert_path, key_path = _leaf(tmp_path / "leaf", ca, "sensor-9.example")
    client = tls_login(broker, unique("cid"), "ignored", cert=cert_path, key=key_path)
    assert client is not None and rc(client) == 0
    device = _assert_x509_device(broker, "sensor-9", cert_path)
    with registry(broker) as r:
        assert r.get_device("sensor-9").profile_name == "sensors"
    assert_sends_telemetry(broker, client, device.id)

    mismatch_cert, mismatch_key = _leaf(tmp_path / "leaf", ca, "sensor-10.elsewhere")
    assert tls_code(broker, mismatch_cert, mismatch_key) == 5
    with registry(broker) as r:
        assert r.find_device("sensor-10") is None and r.find_device("sensor-10.elsewhere") is None

    # A new leaf for the same name rotates the device's certificate (same device); any leaf the
    # CA signed for that CN does so again, the first one included (SPEC §1.4.2 step 3).
    client.close()
    rotated_cert, rotated_key = _leaf(tmp_path / "rotated", ca, "sensor-9.example")
    assert tls_code(broker, rotated_cert, rotated_key) == 0
    assert _assert_x509_device(broker, "sensor-9", rotated_cert).id == device.id
    assert tls_code(broker, cert_path, key_path) == 0
    assert _assert_x509_device(broker, "sensor-9", cert_path).id == device.id

    # A device of that name in another profile is not taken over.
    create_device(broker, "sensor-11")
    other_cert, other_key = _leaf(tmp_path / "leaf", ca, "sensor-11.example")
    assert tls_code(broker, other_cert, other_key) == 5
    with registry(broker) as r:
        assert r.get_credentials("sensor-11").credentials_type is CredentialsType.ACCESS_TOKEN
        events = r.provisioning_events()

    # Each provisioning at login is counted as one, as its entry in the audit trail.
    assert [event["outcome"] for event in events] == ["SUCCESS", "FAILURE", "SUCCESS", "SUCCESS", "FAILURE"]
    assert counts(broker.metrics_port, "gatehouse_provisioning_requests_total") == {
        ("SUCCESS", "X509_CERTIFICATE_CHAIN", "MQTT"): 3, ("FAILURE", "X509_CERTIFICATE_CHAIN", "MQTT"): 2}


def test_x509_chain_profile_created_while_running_provisions_after_the_trust_refresh(gh, tmp_path):
    ca = _chain_ca(tmp_path / "ca", unique("Fleet CA"))
    device_name = unique("sensor")
    cert_path, key_path = _leaf(tmp_path / "leaf", ca, f"{device_name}.example")
    assert tls_code(gh, cert_path, key_path) != 0  # the CA is not trusted yet
    cli(gh, "profile", "create", unique("fleet"), "--strategy", "x509-chain", "--ca-cert", tmp_path / "ca" / "ca.pem",
        "--cn-regex", r"(.*)\.example")
    assert wait_until(lambda: tls_code(gh, cert_path, key_path) == 0, timeout=10, interval=0.3)
    _assert_x509_device(gh, device_name, cert_path)

    other = unique("sensor")
    mismatch_cert, mismatch_key = _leaf(tmp_path / "leaf", ca, f"{other}_example")  # no "." before example
    assert tls_code(gh, mismatch_cert, mismatch_key) == 5
    with registry(gh) as r:
        assert r.find_device(other) is None and r.find_device(f"{other}_example") is None


# --- §3 / §9.1 provisioning over MQTT ------------------------------------------------------------

def assert_closed_without_answer(client, topic: str, payload) -> None:
    """QoS 1 PUBLISH, then: closed at once (well before the provisioning close timer), no
    PUBACK, no response."""
    info = client.client.publish(topic, payload, qos=1)
    assert client.wait_disconnected(PROVISION_CLOSE_SECONDS - 0.5)
    assert not acknowledged(info)
    assert client.no_message(0.2)


def allow_profile(broker):
    key, secret = unique("allowKey"), unique("allowSecret")
    with registry(broker) as r:
        r.create_profile(unique("allow"), ProvisionType.ALLOW_CREATE_NEW_DEVICES, key=key, secret=secret)
    return key, secret


def check_profile(broker):
    key, secret, name = unique("checkKey"), unique("checkSecret"), unique("check")
    with registry(broker) as r:
        r.create_profile(name, ProvisionType.CHECK_PRE_PROVISIONED_DEVICES, key=key, secret=secret)
    return name, key, secret


def _stored(broker, device_name):
    with registry(broker) as r:
        device = r.get_device(device_name)
        return device, r.get_credentials(device.id), r.get_attributes(device.id, AttributeScope.SERVER)


def test_concurrent_provisioning_clients_with_client_id_provision_all_get_their_answer(gh):
    # In MQTT one client id is one session; ThingsBoard nevertheless serves every "provision"
    # client, so the broker must not let them evict each other.
    key, secret = allow_profile(gh)
    clients = [provision_client(gh, "client_id") for _ in range(3)]
    names = [unique("together") for _ in clients]
    for client, name in zip(clients, names, strict=True):
        assert client.publish(PROVISION_REQUEST, json.dumps(
            {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret}))
    for client, name in zip(clients, names, strict=True):
        response = json.loads(client.next_message(5).payload)
        assert (response["status"], response["deviceName"]) == ("SUCCESS", name)


def test_provisioning_waits_for_a_write_lock_held_by_another_process(gh):
    """The broker provisions on its event loop's own connection only while nobody holds the
    database's write lock; held elsewhere (the CLI, the sidecar), the request waits its turn on
    the database thread and still succeeds. Logins and attribute requests only read, so they
    are answered meanwhile."""
    key, secret = allow_profile(gh)
    name, token = unique("locked"), unique("TOKEN")
    create_device(gh, unique("reader"), AccessToken(token))
    client = provision_client(gh)
    blocker = sqlite3.connect(gh.data_dir / "gatehouse.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        info = client.client.publish(PROVISION_REQUEST, json.dumps(
            {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret}), qos=1)
        assert client.no_message(1.0)  # waiting for the lock, not refused
        assert not acknowledged(info)
        provision_client(gh)  # meanwhile the event loop serves other clients
        device = connect(gh.mqtt_port, unique("c"), token)
        assert device.connack == 0
        assert device.publish("v1/devices/me/attributes/request/1", "{}", qos=1)
        assert json.loads(device.next_message(5).payload) == {}
        blocker.execute("COMMIT")
        response = json.loads(client.next_message(5).payload)
        assert wait_until(lambda: acknowledged(info))
    finally:
        blocker.close()
    assert (response["status"], response["deviceName"]) == ("SUCCESS", name)
    assert _stored(gh, name)[0].name == name


@pytest.mark.parametrize("via", ["username", "client_id"])
def test_provision_allow_create_without_credentials_returns_a_token_that_logs_in(gh, via):
    key, secret = allow_profile(gh)
    name = unique("provisioned")
    response, _ = provision(gh, {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret}, via)
    device, credentials, server_attributes = _stored(gh, name)
    assert response["status"] == "SUCCESS"
    assert response["credentialsType"] == "ACCESS_TOKEN" == credentials.credentials_type.value
    assert response["credentialsValue"] == credentials.credentials_id
    assert list(response)[:3] == ["credentialsValue", "credentialsType", "status"]
    assert server_attributes["provisionState"] == "provisioned"
    client = mqtt(gh.mqtt_port, unique("cid"), response["credentialsValue"])
    assert rc(client) == 0
    assert_sends_telemetry(gh, client, device.id)


def test_provision_with_an_access_token(gh):
    key, secret = allow_profile(gh)
    name, token = unique("provisioned"), unique("test_token")
    response, _ = provision(gh, {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret,
                                 "credentialsType": "ACCESS_TOKEN", "token": token})
    assert (response["status"], response["credentialsType"], response["credentialsValue"]) == (
        "SUCCESS", "ACCESS_TOKEN", token)
    device, credentials, _ = _stored(gh, name)
    assert credentials.credentials_id == token
    client = mqtt(gh.mqtt_port, unique("cid"), token)
    assert rc(client) == 0
    assert_sends_telemetry(gh, client, device.id)


def test_provision_with_mqtt_basic_credentials(gh):
    key, secret = allow_profile(gh)
    name, client_id, username, password = unique("provisioned"), unique("cid"), unique("user"), unique("pw")
    response, _ = provision(gh, {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret,
                                 "credentialsType": "MQTT_BASIC", "clientId": client_id, "username": username,
                                 "password": password})
    assert response["status"] == "SUCCESS" and response["credentialsType"] == "MQTT_BASIC"
    assert response["credentialsValue"] == {"clientId": client_id, "userName": username, "password": password}
    device, credentials, _ = _stored(gh, name)
    assert credentials.credentials_type is CredentialsType.MQTT_BASIC
    client = mqtt(gh.mqtt_port, client_id, username, password)
    assert rc(client) == 0
    assert_sends_telemetry(gh, client, device.id)


def test_provision_with_an_x509_certificate_which_then_logs_in_over_tls(gh, tmp_path):
    key, secret = allow_profile(gh)
    name = unique("provisioned-x509")
    cert, private_key = create_self_signed(name)
    cert_path, key_path = write_pair(tmp_path, name, cert, private_key)
    body = base64_body(cert)
    response, _ = provision(gh, {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret,
                                 "credentialsType": "X509_CERTIFICATE", "hash": body})
    assert (response["status"], response["credentialsType"], response["credentialsValue"]) == (
        "SUCCESS", "X509_CERTIFICATE", body)
    device, credentials, _ = _stored(gh, name)
    assert credentials.credentials_value == body
    assert wait_until(lambda: tls_code(gh, cert_path, key_path) == 0, timeout=10, interval=0.3)
    client = tls_login(gh, unique("cid"), cert=cert_path, key=key_path)
    assert_sends_telemetry(gh, client, device.id)


def test_provision_with_gateway_flag_marks_the_device_as_gateway(gh):
    key, secret = allow_profile(gh)
    name = unique("gateway")
    response, _ = provision(gh, {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret,
                                 "gateway": True})
    assert response["status"] == "SUCCESS"
    device, _, _ = _stored(gh, name)
    assert device.additional_info.get("gateway") is True


def test_provision_an_existing_device_name_fails(gh):
    key, secret = allow_profile(gh)
    name = unique("taken")
    create_device(gh, name)
    response, _ = provision(gh, {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret})
    assert response == FAILURE_JSON


@pytest.mark.parametrize("via", ["username", "client_id"])
@pytest.mark.parametrize("case", ["disabled-profile", "wrong-key", "wrong-secret"])
def test_provision_not_found_answers_exactly(gh, case, via):
    key, secret = allow_profile(gh)
    name = unique("never")
    if case == "disabled-profile":
        # A DISABLED profile has no key: whatever a device sends cannot name it.
        with registry(gh) as r:
            profile = r.create_profile(unique("disabled"), ProvisionType.DISABLED)
        assert profile.provision_device_key is None
        key, secret = "", ""
    elif case == "wrong-key":
        key = key + "-wrong"
    else:
        secret = secret + "-wrong"
    response, message = provision(gh, {"deviceName": name, "provisionDeviceKey": key,
                                       "provisionDeviceSecret": secret}, via)
    assert response == NOT_FOUND_JSON
    assert message.payload == b'{"errorMsg":"Provision data was not found!","status":"NOT_FOUND"}'
    with registry(gh) as r:
        assert r.find_device(name) is None


def test_provision_check_pre_provisioned_succeeds_once_then_fails(gh):
    profile, key, secret = check_profile(gh)
    name, token = unique("pre"), unique("PRE_TOKEN")
    create_device(gh, name, AccessToken(token), profile=profile)
    request = {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret,
               "credentialsType": "ACCESS_TOKEN", "token": unique("ignored")}
    first, _ = provision(gh, request)
    assert (first["status"], first["credentialsType"], first["credentialsValue"]) == ("SUCCESS", "ACCESS_TOKEN", token)
    _, credentials, server_attributes = _stored(gh, name)
    assert credentials.credentials_id == token and server_attributes["provisionState"] == "provisioned"
    second, _ = provision(gh, request)
    assert second == FAILURE_JSON
    unknown, _ = provision(gh, {**request, "deviceName": unique("not-pre")})
    assert unknown == FAILURE_JSON


@pytest.mark.parametrize("subscribe_qos, delivered_qos", [(None, 1), (0, 0), (1, 1)])
def test_provision_response_reaches_the_client_subscribed_or_not(gh, subscribe_qos, delivered_qos):
    key, secret = allow_profile(gh)
    response, message = provision(gh, {"deviceName": unique("p"), "provisionDeviceKey": key,
                                       "provisionDeviceSecret": secret}, subscribe_qos=subscribe_qos)
    assert response["status"] == "SUCCESS"
    assert message.qos == delivered_qos


def _publish_qos1(topic: str, payload: bytes, packet_id: int, protocol_level: int) -> bytes:
    body = (len(topic).to_bytes(2, "big") + topic.encode() + packet_id.to_bytes(2, "big")
            + (b"\x00" if protocol_level == 5 else b"") + payload)  # MQTT 5: no properties
    length, remaining = bytearray(), len(body)
    while True:
        remaining, byte = divmod(remaining, 128)
        length.append(byte | (0x80 if remaining else 0))
        if not remaining:
            return bytes((0x32, *length)) + body


@pytest.mark.parametrize("protocol_level", [4, 5])
def test_the_provisioning_request_is_acknowledged_before_the_response_is_sent(gh, protocol_level):
    """SPEC §3.3: ThingsBoard sends the PUBACK once the request is processed, then the response."""
    key, secret = allow_profile(gh)
    request = json.dumps({"deviceName": unique("acked-first"), "provisionDeviceKey": key,
                          "provisionDeviceSecret": secret}).encode()

    async def exchange() -> list[tuple[int, bytes]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", gh.mqtt_port)
        try:
            writer.write(connect_packet("", "provision", protocol_level=protocol_level))
            assert (await read_packet(reader))[0] == CONNACK
            writer.write(_publish_qos1(PROVISION_REQUEST, request, 7, protocol_level))
            packets = [await asyncio.wait_for(read_packet(reader), 5) for _ in range(2)]
            return [(kind, body) for kind, _flags, body in packets]
        finally:
            writer.close()

    (first, puback), (second, publish) = asyncio.run(exchange())
    assert (first, puback[:2]) == (PUBACK, (7).to_bytes(2, "big"))
    assert second == PUBLISH and publish[2:2 + len(PROVISION_RESPONSE)] == PROVISION_RESPONSE.encode()


def test_a_spy_subscribed_to_provision_response_sees_nothing_of_another_exchange(gh):
    key, secret = allow_profile(gh)
    spy = provision_client(gh)
    assert [c.value for c in spy.subscribe(PROVISION_RESPONSE, 1)] == [1]
    spy_by_client_id = provision_client(gh, "client_id")
    assert [c.value for c in spy_by_client_id.subscribe(PROVISION_RESPONSE, 1)] == [1]
    response, _ = provision(gh, {"deviceName": unique("secret-device"), "provisionDeviceKey": key,
                                 "provisionDeviceSecret": secret})
    assert response["status"] == "SUCCESS"
    assert spy.no_message(1.0)
    assert spy_by_client_id.no_message(0.2)


@pytest.mark.parametrize("topic_filter", ["v1/devices/me/attributes", "v1/devices/me/rpc/request/+", "#",
                                          PROVISION_REQUEST, "/provision/#", "gatehouse/#"])
def test_provisioning_session_may_subscribe_only_to_provision_response(gh, topic_filter):
    client = provision_client(gh)
    assert [c.value for c in client.subscribe(topic_filter, 1)] == [SUBACK_FAILURE]
    assert [c.value for c in client.subscribe(PROVISION_RESPONSE, 1)] == [1]


@pytest.mark.parametrize("topic", [TELEMETRY, "/provision/response", "some/other/topic"])
def test_provisioning_session_publishing_elsewhere_is_closed(gh, topic):
    client = provision_client(gh)
    assert_closed_without_answer(client, topic, '{"temperature": 1}')


@pytest.mark.parametrize("payload", [b"\x00\xffnot json at all", b"{broken", b"[1, 2]", b'"text"'],
                         ids=["binary", "broken-json", "json-array", "json-string"])
def test_provisioning_request_that_is_not_a_json_object_closes_without_response(gh, payload):
    client = provision_client(gh)
    assert_closed_without_answer(client, PROVISION_REQUEST, payload)


@pytest.mark.parametrize("request_json", [{"provisionDeviceSecret": "s", "deviceName": "n"},
                                          {"provisionDeviceKey": "k", "deviceName": "n"},
                                          {"provisionDeviceKey": "k", "provisionDeviceSecret": "s",
                                           "credentialsType": "NO_SUCH_TYPE"}],
                         ids=["no-key", "no-secret", "unknown-credentials-type"])
def test_provisioning_request_missing_required_fields_closes_without_response(gh, request_json):
    client = provision_client(gh)
    assert_closed_without_answer(client, PROVISION_REQUEST, json.dumps(request_json))


@pytest.mark.parametrize("outcome", ["SUCCESS", "NOT_FOUND"])
def test_broker_closes_the_provisioning_connection_after_provision_close_seconds(gh, outcome):
    key, secret = allow_profile(gh)
    client = provision_client(gh)
    request = {"deviceName": unique("timed"), "provisionDeviceKey": key,
               "provisionDeviceSecret": secret if outcome == "SUCCESS" else "wrong"}
    assert client.publish(PROVISION_REQUEST, json.dumps(request))
    assert json.loads(client.next_message(5).payload)["status"] == outcome
    answered = time.monotonic()
    assert not client.wait_disconnected(PROVISION_CLOSE_SECONDS - 0.6)  # not right away
    assert client.wait_disconnected(5)
    assert PROVISION_CLOSE_SECONDS - 0.6 <= time.monotonic() - answered <= PROVISION_CLOSE_SECONDS + 1.5


def test_provisioning_requests_never_reach_applications_or_devices(gh):
    key, secret = allow_profile(gh)
    with registry(gh) as r:
        app_user, app_password = r.create_application(unique("app"))
    app = mqtt(gh.mqtt_port, unique("app"), app_user, app_password)
    assert rc(app) == 0
    assert [c.value for c in app.subscribe("gatehouse/#", 1)] == [1]
    token = unique("TOKEN")
    create_device(gh, unique("listener"), AccessToken(token))
    device = mqtt(gh.mqtt_port, unique("dev"), token)
    assert rc(device) == 0
    granted = {f: device.subscribe(f, 1)[0].value for f in (
        "v1/devices/me/attributes", "v1/devices/me/rpc/request/+", "v1/devices/me/attributes/response/+",
        "#", PROVISION_REQUEST, PROVISION_RESPONSE)}
    assert granted["v1/devices/me/attributes"] == 1
    assert granted["#"] == granted[PROVISION_REQUEST] == granted[PROVISION_RESPONSE] == SUBACK_FAILURE
    time.sleep(0.3)
    while not app.messages.empty():  # the device's own "connected" event
        app.messages.get_nowait()

    name = unique("quiet")
    response, _ = provision(gh, {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret})
    assert response["status"] == "SUCCESS"
    refused, _ = provision(gh, {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": "wrong"})
    assert refused == NOT_FOUND_JSON
    time.sleep(1.0)
    seen = []
    while not app.messages.empty():
        seen.append(app.messages.get_nowait())
    for message in seen:
        assert not message.topic.startswith("/provision"), message.topic
        assert secret.encode() not in message.payload and key.encode() not in message.payload
        assert response["credentialsValue"].encode() not in message.payload  # the new token stays private
    assert device.no_message(0.2)
