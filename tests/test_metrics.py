"""Prometheus metrics: after a scripted run against real processes (broker, sidecar, CoAP
bridge), every counter each process exports equals what the script did."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import aiocoap
import pytest
from aiocoap import Code, Message

from gatehouse.credentials import AccessToken, X509Certificate
from gatehouse.models import ProvisionType
from gatehouse.pki import DevelopmentPki, issue_device_certificate
from gatehouse.registry import Registry

from .admin_api_client import Api, login_from
from .coap_client import coap
from .conftest import broker_and_sidecar, start_coap_bridge
from .devices import unique
from .metrics_scrape import counts, scrape
from .mqtt_client import connack, connect, next_on, raw_login, wait_until

MAX_FAILED_LOGINS = 3


def http(method: str, url: str, body: dict | None = None) -> int:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as e:
        e.close()
        return e.code


def mqtt_provision(port: int, request: dict) -> dict:
    client = connect(port, "provision", "provision")
    assert client.return_code == 0
    client.subscribe("/provision/response")
    assert client.publish("/provision/request", json.dumps(request))
    answer = json.loads(next_on(client, "/provision/response").payload)
    client.close()
    return answer


@pytest.fixture
def gh(tmp_path):
    limits = ("--max-failed-logins", str(MAX_FAILED_LOGINS), "--block-seconds", "600")
    with broker_and_sidecar(tmp_path, *limits, sidecar_options=limits) as (broker, sidecar):
        bridge = start_coap_bridge(broker.data_dir, sidecar.url, tmp_path / "coap.log")
        try:
            yield broker, sidecar, bridge
        finally:
            bridge.stop()


def test_counters_match_a_scripted_run(gh, tmp_path):
    broker, sidecar, bridge = gh
    tokens = [unique("TOKEN") for _ in range(3)]
    key, secret = unique("key"), unique("secret")
    admin, admin_password = unique("admin"), unique("admin-pw")
    cert, cert_key = issue_device_certificate(DevelopmentPki.in_directory(broker.data_dir / "pki"), unique("cam"),
                                              tmp_path)
    with Registry.open(broker.data_dir) as registry:
        devices = [registry.create_device(unique("dev"), credentials=AccessToken(token)) for token in tokens]
        registry.create_device(unique("cam"), credentials=X509Certificate.parse(cert.read_text()))
        registry.create_profile(unique("profile"), ProvisionType.ALLOW_CREATE_NEW_DEVICES, key=key, secret=secret)
        app_username, app_password = registry.create_application(unique("app"))
        registry.add_admin(admin, admin_password)
    device_topic = f"gatehouse/devices/{devices[0].id}"

    # MQTT: 2 refused logins, 3 token logins, 1 X.509, 1 application; 4 telemetry messages, which
    # the application, subscribed to that device's telemetry and RPC responses, receives.
    for i in range(2):
        assert connect(broker.mqtt_port, unique("c"), f"wrong-{i}").return_code == 5
    clients = [connect(broker.mqtt_port, unique("c"), token) for token in tokens]
    assert [c.return_code for c in clients] == [0, 0, 0]
    camera = connect(broker.mqtts_port, unique("c"), ca_cert=broker.ca_cert, cert=cert, key=cert_key)
    assert camera.return_code == 0
    application = connect(broker.mqtt_port, unique("app"), app_username, app_password)
    assert application.return_code == 0
    assert application.subscribe(f"{device_topic}/telemetry") == [1]
    assert application.subscribe(f"{device_topic}/rpc/response/+") == [1]
    assert clients[0].subscribe("v1/devices/me/attributes") == [1]
    assert clients[0].subscribe("v1/devices/me/rpc/request/+") == [1]
    for i in range(4):
        assert clients[0].publish("v1/devices/me/telemetry", json.dumps({"n": i}))
    for i in range(4):
        assert json.loads(next_on(application, f"{device_topic}/telemetry").payload)[0]["values"] == {"n": i}
    assert scrape(broker.metrics_port)["gatehouse_connected_devices"] == {("MQTT",): 4}

    # Messages out: an administrator (1 refused login, 1 accepted) sets a shared attribute over
    # the admin API, which the sidecar hands to the broker; the application calls an RPC, whose
    # response it receives (its fifth message).
    api = Api(sidecar.url)
    assert api.post("/api/auth/login", {"username": admin, "password": "wrong"}, token=None).status == 401
    api.token = api.ok("POST", "/api/auth/login", {"username": admin, "password": admin_password}, token=None)["token"]
    api.ok("POST", f"/api/plugins/telemetry/DEVICE/{devices[0].id}/SHARED_SCOPE", {"target": 21})
    assert json.loads(next_on(clients[0], "v1/devices/me/attributes").payload) == {"target": 21}
    assert application.publish(f"{device_topic}/rpc/call/7", json.dumps({"method": "reboot", "params": {}}))
    assert json.loads(next_on(clients[0], "v1/devices/me/rpc/request/7").payload)["method"] == "reboot"
    assert clients[0].publish("v1/devices/me/rpc/response/7", '{"rebooted": true}')
    assert json.loads(next_on(application, f"{device_topic}/rpc/response/7").payload) == {"rebooted": True}

    # HTTP: 2 telemetry posts, 1 with an unknown token; CoAP: 1 telemetry post.
    for i in range(2):
        assert http("POST", f"{sidecar.url}/api/v1/{tokens[1]}/telemetry", {"h": i}) == 200
    assert http("POST", f"{sidecar.url}/api/v1/no-such-token/telemetry", {"h": 9}) == 401
    assert coap(bridge.url("api", "v1", tokens[2], "telemetry"), Code.POST, '{"c": 1}').code == Code.CREATED

    # Provisioning over MQTT and HTTP: one success each, one unknown key each.
    good = {"deviceName": unique("new"), "provisionDeviceKey": key, "provisionDeviceSecret": secret}
    assert mqtt_provision(broker.mqtt_port, good)["status"] == "SUCCESS"
    bad = {"deviceName": unique("new"), "provisionDeviceKey": "no-such-key", "provisionDeviceSecret": secret}
    assert mqtt_provision(broker.mqtt_port, bad)["status"] == "NOT_FOUND"
    assert http("POST", f"{sidecar.url}/api/v1/provision", {**good, "deviceName": unique("new")}) == 200
    assert http("POST", f"{sidecar.url}/api/v1/provision", bad) == 200

    # The broker (label order: credentials_type, outcome, transport; and so on, by label name).
    assert counts(broker.metrics_port, "gatehouse_logins_total") == {
        ("UNKNOWN", "BAD_USERNAME_OR_PASSWORD", "MQTT"): 2,
        ("ACCESS_TOKEN", "ACCEPTED", "MQTT"): 3,
        ("X509_CERTIFICATE", "ACCEPTED", "MQTT"): 1,
        ("APPLICATION", "ACCEPTED", "MQTT"): 1,
        ("SERVICE", "ACCEPTED", "MQTT"): 1,  # the sidecar's service account
        ("PROVISION", "ACCEPTED", "MQTT"): 2,
    }
    assert counts(broker.metrics_port, "gatehouse_messages_total") == {
        ("in", "telemetry", "MQTT"): 4,
        ("in", "rpc_response", "MQTT"): 1,
        ("out", "attributes_update", "MQTT"): 1,
        ("out", "rpc_call", "MQTT"): 1,
        ("out", "application", "MQTT"): 5,
        ("out", "provision_response", "MQTT"): 2,
    }
    assert counts(broker.metrics_port, "gatehouse_provisioning_requests_total") == {
        ("SUCCESS", "ALLOW_CREATE_NEW_DEVICES", "MQTT"): 1,
        ("NOT_FOUND", "NONE", "MQTT"): 1,
    }
    broker_timed = counts(broker.metrics_port, "gatehouse_request_seconds_count")
    assert broker_timed[("telemetry", "MQTT")] == 4
    assert broker_timed[("provision", "MQTT")] == 2
    assert broker_timed[("rpc_response", "MQTT")] == 1

    # The sidecar: HTTP, and what the bridge forwarded (transport COAP).
    assert counts(sidecar.http_port, "gatehouse_logins_total") == {
        ("ADMIN", "ACCEPTED", "HTTP"): 1,
        ("ADMIN", "BAD_USERNAME_OR_PASSWORD", "HTTP"): 1,
        ("ACCESS_TOKEN", "ACCEPTED", "HTTP"): 2,
        ("UNKNOWN", "NOT_AUTHORIZED", "HTTP"): 1,
        ("ACCESS_TOKEN", "ACCEPTED", "COAP"): 1,
    }
    assert counts(sidecar.http_port, "gatehouse_messages_total") == {
        ("in", "telemetry", "HTTP"): 2,
        ("in", "telemetry", "COAP"): 1,
    }
    assert counts(sidecar.http_port, "gatehouse_provisioning_requests_total") == {
        ("SUCCESS", "ALLOW_CREATE_NEW_DEVICES", "HTTP"): 1,
        ("NOT_FOUND", "NONE", "HTTP"): 1,
    }
    sidecar_timed = counts(sidecar.http_port, "gatehouse_request_seconds_count")
    assert sidecar_timed[("device_api.post_telemetry", "HTTP")] == 3
    assert sidecar_timed[("device_api.post_telemetry", "COAP")] == 1
    assert sidecar_timed[("device_api.provision_device", "HTTP")] == 2

    # The bridge: its CoAP requests, by feature.
    assert counts(bridge.metrics_port, "gatehouse_request_seconds_count") == {("telemetry", "COAP"): 1}

    for client in [*clients, camera]:
        client.close()
    assert wait_until(lambda: scrape(broker.metrics_port)["gatehouse_connected_devices"] == {("MQTT",): 0})


def sidecar_connected(sidecar) -> dict[tuple, float]:
    return scrape(sidecar.http_port)["gatehouse_connected_devices"]


def test_sidecar_counts_devices_with_a_long_poll_or_an_observation_open_as_connected(gh):
    broker, sidecar, bridge = gh
    http_token, coap_token = unique("TOKEN"), unique("TOKEN")
    with Registry.open(broker.data_dir) as registry:
        for token in (http_token, coap_token):
            registry.create_device(unique("dev"), credentials=AccessToken(token))
    assert sidecar_connected(sidecar) == {("HTTP",): 0, ("COAP",): 0}

    # Two polls of one device are one connected device.
    polls = [threading.Thread(target=http, args=("GET", f"{sidecar.url}/api/v1/{http_token}/{feature}?timeout=3000"))
             for feature in ("attributes/updates", "rpc")]
    for poll in polls:
        poll.start()
    assert wait_until(lambda: sidecar_connected(sidecar) == {("HTTP",): 1, ("COAP",): 0})
    for poll in polls:
        poll.join()
    assert sidecar_connected(sidecar) == {("HTTP",): 0, ("COAP",): 0}

    async def observe_while_counted() -> dict:
        context = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            request = context.request(Message(code=Code.GET, observe=0,
                                              uri=bridge.url("api", "v1", coap_token, "attributes")))
            await asyncio.wait_for(request.response, 10)
            counted = await asyncio.to_thread(wait_until, lambda: sidecar_connected(sidecar)[("COAP",)] == 1)
            request.observation.cancel()
            return counted
        finally:
            await context.shutdown()

    assert asyncio.run(observe_while_counted())


def blocked_addresses(port: int) -> float:
    return scrape(port)["gatehouse_blocked_addresses"][()]


def test_blocked_addresses_in_the_broker_and_the_sidecar_after_a_brute_force_from_another_address(gh):
    broker, sidecar, _bridge = gh
    assert (blocked_addresses(broker.metrics_port), blocked_addresses(sidecar.http_port)) == (0, 0)
    for i in range(MAX_FAILED_LOGINS):
        code, connection = raw_login(broker.mqtt_port, unique("c"), f"guess-{i}", bind_address="127.0.0.2")
        connection.close()
        assert code == connack(5)
    code, connection = raw_login(broker.mqtt_port, unique("c"), "guess-again", bind_address="127.0.0.2")
    connection.close()
    assert code == connack(3)  # blocked
    assert blocked_addresses(broker.metrics_port) == 1
    logins = counts(broker.metrics_port, "gatehouse_logins_total")
    assert logins[("UNKNOWN", "BAD_USERNAME_OR_PASSWORD", "MQTT")] == MAX_FAILED_LOGINS
    assert logins[("UNKNOWN", "BLOCKED", "MQTT")] == 1

    # The sidecar's limiter (administrators' logins) is its own: its gauge counts only its blocks.
    assert blocked_addresses(sidecar.http_port) == 0
    assert [login_from(sidecar, "127.0.0.3", f"guess-{i}")[0] for i in range(MAX_FAILED_LOGINS)] \
        == [401] * MAX_FAILED_LOGINS
    assert login_from(sidecar, "127.0.0.3", "guess-again")[0] == 429
    assert blocked_addresses(sidecar.http_port) == 1
    assert blocked_addresses(broker.metrics_port) == 1
    assert counts(sidecar.http_port, "gatehouse_logins_total") == {
        ("ADMIN", "BAD_USERNAME_OR_PASSWORD", "HTTP"): MAX_FAILED_LOGINS,
        ("ADMIN", "BLOCKED", "HTTP"): 1,
    }


def test_a_busy_metrics_port_is_one_clear_line(gh):
    broker, _sidecar, _bridge = gh
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for command in (["broker", "--mqtt-port", "0", "--mqtts-port", "0"],
                        ["coap", "--coap-port", "0", "--coaps-port", "0"]):
            result = subprocess.run(
                [sys.executable, "-m", "gatehouse", "--data-dir", str(broker.data_dir), command[0], "--host", "127.0.0.1",
                 *command[1:], "--metrics-port", str(port)], capture_output=True, text=True, timeout=30, check=False)
            assert result.returncode == 1, result
            lines = (result.stdout + result.stderr).strip().splitlines()
            assert len(lines) == 1, lines
            assert f"127.0.0.1:{port} for metrics" in lines[0] and "in use" in lines[0].lower(), lines[0]
