"""The HTTP device API (SPEC §4.1, §5, §9.8) against a real `gatehouse sidecar` (waitress) linked to
a real `gatehouse broker`, driven the way device scripts drive ThingsBoard: requests, curl, and
raw http.client where a path or a body must go out exactly as written.

HTTP devices' data must reach applications exactly as MQTT devices' data does, and what
applications send (shared attributes, RPC) must reach HTTP devices' long polls, so those tests
use real MQTT application accounts. Statuses are ThingsBoard's except for malformed bodies,
which are 400 with a JSON error instead of its 500 (DESIGN.md).

One broker and sidecar serve the module; every test makes its own devices, profiles and
application accounts. Long polls are given short `?timeout=`s where a 408 is expected and
generous ones where an answer is; no test asserts how long anything took.
"""
from __future__ import annotations

import http.client
import io
import json
import queue
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from gatehouse.credentials import AccessToken, MqttBasic
from gatehouse.models import AttributeScope, ProvisionType
from gatehouse.payloads import kv_entries
from gatehouse.pki import certificate_pem, create_ca
from gatehouse.registry import Registry

from .conftest import (
    NO_BLOCKING,
    RunningBroker,
    RunningSidecar,
    broker_and_sidecar,
)
from .devices import stored_row_counts, token_device, unique
from .mqtt_accounts import app_client
from .mqtt_client import TestClient as MqttClient
from .mqtt_client import body, connect, next_on, wait_until
from .provisioning_answers import FAILURE_JSON, NOT_FOUND_JSON
from .provisioning_answers import provision as provision_over_mqtt

RPC_LIMIT = 65_536  # SidecarSettings.max_rpc_payload_size: /api/v1/*/rpc/**
PAYLOAD_LIMIT = 52_428_800  # SidecarSettings.max_payload_size: the rest of /api/v1/**
SHORT_POLL_MS = 300  # for polls that must time out
LONG_POLL_MS = 15_000  # for polls that must be answered
WAIT = 20  # seconds a test waits for anything that should happen
TABLES = ("device", "device_credentials", "attribute", "telemetry_history", "provisioning_event")


# --- fixtures and helpers -----------------------------------------------------------------------


@dataclass
class Gatehouse:
    broker: RunningBroker
    sidecar: RunningSidecar

    def url(self, token: str, *path: str) -> str:
        return "/".join((self.sidecar.url, "api/v1", token, *path))

    @property
    def provision_url(self) -> str:
        return f"{self.sidecar.url}/api/v1/provision"

    def registry(self) -> Registry:
        return Registry.open(self.broker.data_dir)


@pytest.fixture(scope="module")
def gh(tmp_path_factory):
    """The module's broker and sidecar."""
    # Its tests send wrong tokens on purpose (test_device_token_guessing.py tests the blocking).
    root = tmp_path_factory.mktemp("http-device-api")
    with broker_and_sidecar(root, sidecar_options=NO_BLOCKING) as (broker, sidecar):
        yield Gatehouse(broker, sidecar)


@pytest.fixture(autouse=True)
def no_traceback_in_the_sidecar_log(gh):
    """Every refusal is an answer, never a failure inside the server."""
    yield
    assert "Traceback" not in gh.sidecar.log()


@pytest.fixture(scope="module")
def pool():
    """Threads for requests that wait (long polls, client-side RPC) while the test acts."""
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def application(gh: Gatehouse, *filters: str) -> MqttClient:
    """A new application account over MQTT, subscribed to `filters` (closed after the test by conftest)."""
    return app_client(gh.broker, [], *filters)


def http_device(gh: Gatehouse, prefix: str = "http"):
    return token_device(gh.broker, prefix)


def raw_request(gh: Gatehouse, method: str, path: str, body: bytes | Iterable[bytes] = b"",
                headers: dict | None = None) -> tuple[int, bytes, str | None]:
    """Send `path` exactly as written (no client-side normalisation or quoting); an iterable
    body goes chunked. Returns (status, body, Content-Type)."""
    connection = http.client.HTTPConnection("127.0.0.1", gh.sidecar.http_port, timeout=WAIT)
    try:
        chunked = not isinstance(body, bytes)
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if chunked:
            connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders()
            for chunk in body:
                connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            connection.send(b"0\r\n\r\n")
        else:
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Content-Type")
    finally:
        connection.close()


def chunks(size: int, fill: bytes = b" ", chunk_size: int = 1 << 20) -> Iterable[bytes]:
    while size > 0:
        yield fill * min(size, chunk_size)
        size -= chunk_size


def padded_json(value: dict, size: int) -> bytes:
    """`value` as JSON padded with whitespace (still valid JSON) to exactly `size` bytes."""
    text = json.dumps(value).encode()
    return text + b" " * (size - len(text))


def row_counts(gh: Gatehouse) -> dict[str, int]:
    """Rows per table: unchanged means nothing was stored."""
    database = sqlite3.connect(gh.broker.data_dir / "gatehouse.db")
    try:
        return stored_row_counts(database, TABLES)
    finally:
        database.close()


def latest_values(gh: Gatehouse, device_id: str) -> dict:
    with gh.registry() as registry:
        return {key: entry["value"] for key, entry in registry.latest_telemetry(device_id).items()}


def client_attributes(gh: Gatehouse, device_id: str) -> dict:
    with gh.registry() as registry:
        return registry.get_attributes(device_id, AttributeScope.CLIENT)


def assert_clear_error(status: int, content: bytes, content_type: str | None, expected: int) -> dict:
    """`expected` with ThingsBoard's JSON error body, and no trace of the server's internals."""
    assert status == expected, content[:300]
    assert content_type == "application/json"
    error = json.loads(content)
    assert error["status"] == expected and isinstance(error["message"], str) and error["message"]
    assert_no_traceback(content)
    return error


def assert_no_traceback(content: bytes) -> None:
    text = content.decode(errors="replace")
    assert "Traceback" not in text and 'File "' not in text and ".py" not in text


def first_on_each(client: MqttClient, topics: list[str]) -> dict[str, bytes]:
    """The payload of the first message on each of `topics`, whatever order they arrive in."""
    received: dict[str, bytes] = {}
    deadline = time.monotonic() + WAIT
    while set(topics) - set(received) and (remaining := deadline - time.monotonic()) > 0:
        try:
            message = client.next_message(timeout=remaining)
        except queue.Empty:
            break
        received.setdefault(message.topic, message.payload)
    assert set(topics) <= set(received), f"nothing on {set(topics) - set(received)}"
    return received


def answered_while(future: Future, act, attempts: int = 60, pause: float = 0.25):
    """Repeat `act()` until the waiting request `future` is answered; its response. For
    updates that only reach a long poll which is already open when they are sent."""
    for _ in range(attempts):
        act()
        try:
            return future.result(timeout=pause)
        except TimeoutError:
            continue
    return future.result(timeout=WAIT)


# --- telemetry and client attributes --------------------------------------------------------------


def test_telemetry_in_each_shape_is_stored_and_answered_with_an_empty_200(gh):
    device, token = http_device(gh)
    for payload in ({"temperature": 21.5, "status": "ok", "active": True, "count": "42"},
                    {"ts": 1700000000000, "values": {"pressure": 1013.2}},
                    [{"ts": 1700000001000, "values": {"seq": 1}}, {"ts": 1700000002000, "values": {"seq": 2}}],
                    []):
        response = requests.post(gh.url(token, "telemetry"), json=payload, timeout=WAIT)
        assert (response.status_code, response.content) == (200, b"")
    with gh.registry() as registry:
        stored = registry.latest_telemetry(device.id)
    assert {key: entry["value"] for key, entry in stored.items()} == {
        "temperature": 21.5, "status": "ok", "active": True, "count": 42, "pressure": 1013.2, "seq": 2}
    assert stored["pressure"]["ts"] == 1700000000000 and stored["seq"]["ts"] == 1700000002000


def test_telemetry_records_without_ts_share_one_server_time_per_request(gh):
    device, token = http_device(gh)
    app = application(gh, f"gatehouse/devices/{device.id}/telemetry")
    response = requests.post(gh.url(token, "telemetry"), json=[{"a": 1}, {"b": 2}, {"ts": 5, "values": {"c": 3}}],
                             timeout=WAIT)
    assert response.status_code == 200
    published = body(next_on(app, f"gatehouse/devices/{device.id}/telemetry"))
    with gh.registry() as registry:
        stored = registry.latest_telemetry(device.id)
    stamp = stored["a"]["ts"]
    assert stored["b"]["ts"] == stamp and stored["c"]["ts"] == 5
    assert published == [{"ts": stamp, "values": {"a": 1}}, {"ts": stamp, "values": {"b": 2}},
                         {"ts": 5, "values": {"c": 3}}]


def test_thingsboard_docs_lenient_json_is_accepted(gh):
    # The docs' curl examples lose their inner quotes in some shells: {temperature:25}.
    device, token = http_device(gh)
    status, content, _ = raw_request(gh, "POST", f"/api/v1/{token}/telemetry", b"{temperature:25}")
    assert (status, content) == (200, b"")
    assert latest_values(gh, device.id) == {"temperature": 25}


def test_client_attributes_are_stored_in_client_scope(gh):
    device, token = http_device(gh)
    response = requests.post(gh.url(token, "attributes"), json={"fw": "1.2.0", "slots": 4, "eco": False}, timeout=WAIT)
    assert (response.status_code, response.content) == (200, b"")
    assert client_attributes(gh, device.id) == {"fw": "1.2.0", "slots": 4, "eco": False}
    with gh.registry() as registry:
        assert registry.get_attributes(device.id, AttributeScope.SHARED) == {}


@pytest.mark.parametrize("query, expected", [
    ("clientKeys=fw,slots&sharedKeys=targetTemp", {"client": {"fw": "1.2.0", "slots": 4},
                                                    "shared": {"targetTemp": 22.5}}),
    ("clientKeys=fw", {"client": {"fw": "1.2.0"}}),
    ("sharedKeys=mode,missing", {"shared": {"mode": "eco"}}),
    ("", {"client": {"fw": "1.2.0", "slots": 4}, "shared": {"targetTemp": 22.5, "mode": "eco"}}),
    ("clientKeys=&sharedKeys=", {"client": {"fw": "1.2.0", "slots": 4}, "shared": {"targetTemp": 22.5, "mode": "eco"}}),
    ("clientKeys=missing", {}),
    # Spring joins a repeated parameter with commas.
    ("sharedKeys=mode&sharedKeys=targetTemp", {"shared": {"mode": "eco", "targetTemp": 22.5}}),
    # Only clientKeys and sharedKeys mean anything (ThingsBoard's own Python SDK sends client_keys).
    ("client_keys=fw", {"client": {"fw": "1.2.0", "slots": 4}, "shared": {"targetTemp": 22.5, "mode": "eco"}}),
])
def test_attribute_request_returns_the_named_client_and_shared_values(gh, query, expected):
    _, token = device_with_attributes(gh)
    response = requests.get(gh.url(token, "attributes") + (f"?{query}" if query else ""), timeout=WAIT)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == expected


def device_with_attributes(gh: Gatehouse):
    device, token = http_device(gh)
    with gh.registry() as registry:
        registry.save_attributes(device.id, AttributeScope.CLIENT, kv_entries({"fw": "1.2.0", "slots": 4}))
        registry.save_attributes(device.id, AttributeScope.SHARED, kv_entries({"targetTemp": 22.5, "mode": "eco"}))
    return device, token


def test_attribute_request_answers_as_the_same_request_over_mqtt(gh):
    _, token = device_with_attributes(gh)
    mqtt = connect(gh.broker.mqtt_port, unique("cid"), token)  # a token works on both transports
    assert mqtt.connack == 0
    for n, keys in enumerate([{}, {"clientKeys": "fw"}, {"sharedKeys": "mode,targetTemp,missing"},
                              {"clientKeys": " fw , slots ", "sharedKeys": "mode"}, {"clientKeys": "missing"}]):
        assert mqtt.publish(f"v1/devices/me/attributes/request/{n}", json.dumps(keys))
        over_mqtt = body(next_on(mqtt, f"v1/devices/me/attributes/response/{n}", WAIT))
        over_http = requests.get(gh.url(token, "attributes"), params=keys, timeout=WAIT).json()
        assert over_http == over_mqtt, keys


# --- what applications see -----------------------------------------------------------------------


def test_http_device_data_reaches_applications_exactly_as_mqtt_device_data(gh):
    app = application(gh, "gatehouse/devices/+/telemetry", "gatehouse/devices/+/attributes")
    mqtt_device, mqtt_token = token_device(gh.broker, "mqtt")
    http_dev, http_token = http_device(gh)
    mqtt = connect(gh.broker.mqtt_port, unique("cid"), mqtt_token)
    assert mqtt.connack == 0
    telemetry = json.dumps([
        {"ts": 1700000000000, "values": {"temperature": 21.5, "text": "42", "huge": 12345678901234567890,
                                         "nested": {"a": [1, 2.5, None]}, "skipped": None}},
        {"ts": 1700000001000, "values": {"on": True, "one": 1.0}}])
    attributes = json.dumps({"fw": "1.2.0", "slots": 4, "ratio": 0.5, "cfg": {"x": "y"}, "gone": None})

    assert mqtt.publish("v1/devices/me/telemetry", telemetry)
    assert mqtt.publish("v1/devices/me/attributes", attributes)
    for path, payload in (("telemetry", telemetry), ("attributes", attributes)):
        response = requests.post(gh.url(http_token, path), data=payload, timeout=WAIT)
        assert response.status_code == 200

    received = first_on_each(app, [f"gatehouse/devices/{device_id}/{kind}" for device_id in (mqtt_device.id, http_dev.id)
                                   for kind in ("telemetry", "attributes")])
    for kind in ("telemetry", "attributes"):
        from_mqtt = received[f"gatehouse/devices/{mqtt_device.id}/{kind}"]
        assert received[f"gatehouse/devices/{http_dev.id}/{kind}"] == from_mqtt, kind
    assert json.loads(from_mqtt) == {"fw": "1.2.0", "slots": 4, "ratio": 0.5, "cfg": {"x": "y"}}
    with gh.registry() as registry:
        assert registry.latest_telemetry(http_dev.id) == registry.latest_telemetry(mqtt_device.id)
        assert client_attributes(gh, http_dev.id) == client_attributes(gh, mqtt_device.id)


def test_an_integer_past_64_bits_inside_a_json_value_reaches_applications_from_an_http_device(gh):
    """Found by tests/test_fuzz_servers.py: the sidecar answered 200 and stored the value, but
    failed to pass it on to applications."""
    app = application(gh, "gatehouse/devices/+/telemetry")
    device, token = http_device(gh)
    big = '{"k": [123456789012345678901234567890]}'
    assert requests.post(gh.url(token, "telemetry"), data=big, timeout=WAIT).status_code == 200
    records = json.loads(next_on(app, f"gatehouse/devices/{device.id}/telemetry").payload)
    assert records[0]["values"] == json.loads(big)


def test_shared_attribute_update_from_an_application_reaches_an_http_long_poll(gh, pool):
    device, token = http_device(gh)
    app = application(gh)
    topic = f"gatehouse/devices/{device.id}/attributes/shared"
    poll = pool.submit(requests.get, gh.url(token, "attributes", "updates"), params={"timeout": LONG_POLL_MS},
                       timeout=WAIT + LONG_POLL_MS / 1000)
    response = answered_while(poll, lambda: app.publish(topic, '{"targetTemp": 23, "mode": "comfort"}'))
    assert response.status_code == 200
    assert response.json() == {"targetTemp": 23, "mode": "comfort"}

    poll = pool.submit(requests.get, gh.url(token, "attributes", "updates"), params={"timeout": LONG_POLL_MS},
                       timeout=WAIT + LONG_POLL_MS / 1000)
    response = answered_while(poll, lambda: app.publish(topic, '{"deleted": ["mode"]}'))
    assert (response.status_code, response.json()) == (200, {"deleted": ["mode"]})
    with gh.registry() as registry:
        assert registry.get_attributes(device.id, AttributeScope.SHARED) == {"targetTemp": 23}


def test_long_polls_past_their_share_of_threads_are_503_while_telemetry_keeps_flowing(broker_factory, sidecar_factory):
    """Each poll holds a waitress thread: with 6 threads, 4 polls (a quarter of the threads, at
    least two, stay for requests that return at once)."""
    broker = broker_factory()
    sidecar = sidecar_factory(broker, "--threads", "6")
    tokens = [token_device(broker, "poller")[1] for _ in range(5)]
    url = f"{sidecar.url}/api/v1/{{}}/{{}}"
    with ThreadPoolExecutor(4) as polls:
        held = [polls.submit(requests.get, url.format(token, "attributes/updates"), params={"timeout": 4000},
                             timeout=WAIT + 4) for token in tokens[:4]]
        wait_until(lambda: "gatehouse_connected_devices{transport=\"HTTP\"} 4.0" in requests.get(
            f"{sidecar.url}/metrics", timeout=WAIT).text)
        for path in ("attributes/updates", "rpc"):
            refused = requests.get(url.format(tokens[4], path), params={"timeout": 4000}, timeout=WAIT)
            assert (refused.status_code, refused.json()["message"], refused.headers["Retry-After"]) == (
                503, "Too many open long polls; try again later", "5")
        refused = requests.post(url.format(tokens[4], "rpc"), json={"method": "getTime", "params": {}}, timeout=WAIT)
        assert refused.status_code == 503
        for seq in range(20):  # the threads kept free serve everything else at once
            assert requests.post(url.format(tokens[4], "telemetry"), json={"seq": seq}, timeout=2).status_code == 200
        assert [poll.result().status_code for poll in held] == [408] * 4
    assert requests.get(url.format(tokens[4], "rpc"), params={"timeout": 100}, timeout=WAIT).status_code == 408
    assert 'gatehouse_long_polls_refused_total{transport="HTTP"} 3.0' in requests.get(
        f"{sidecar.url}/metrics", timeout=WAIT).text


def test_server_side_rpc_from_an_application_is_polled_and_the_reply_reaches_the_application(gh):
    device, token = http_device(gh)
    app = application(gh, f"gatehouse/devices/{device.id}/rpc/response/+")
    assert app.publish(f"gatehouse/devices/{device.id}/rpc/call/4242", '{"method": "setGpio", "params": {"pin": 4}}')
    response = requests.get(gh.url(token, "rpc"), params={"timeout": LONG_POLL_MS}, timeout=WAIT + LONG_POLL_MS / 1000)
    assert response.status_code == 200
    assert response.json() == {"id": 4242, "method": "setGpio", "params": {"pin": 4}}

    reply = b'{"pin": 4, "value": true}'
    response = requests.post(gh.url(token, "rpc", "4242"), data=reply, timeout=WAIT)
    assert (response.status_code, response.content) == (200, b"")
    assert next_on(app, f"gatehouse/devices/{device.id}/rpc/response/4242", WAIT).payload == reply


def test_client_side_rpc_is_answered_by_an_application(gh, pool):
    device, token = http_device(gh)
    prefix = f"gatehouse/devices/{device.id}/rpc/request/"
    app = application(gh, prefix + "+")
    call = pool.submit(requests.post, gh.url(token, "rpc"), params={"timeout": LONG_POLL_MS},
                       json={"method": "getCurrentTime", "params": {"tz": "UTC"}}, timeout=WAIT + LONG_POLL_MS / 1000)
    request = app.next_message(timeout=WAIT)
    assert request.topic.startswith(prefix)
    assert body(request) == {"method": "getCurrentTime", "params": {"tz": "UTC"}}
    assert app.publish(f"gatehouse/devices/{device.id}/rpc/reply/{request.topic[len(prefix):]}",
                       '{"time": 1700000000000}')
    response = call.result(timeout=WAIT + LONG_POLL_MS / 1000)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"time": 1700000000000}


@pytest.mark.parametrize("method, path", [
    ("GET", "attributes/updates"),
    ("GET", "rpc"),
    ("POST", "rpc"),  # a client-side RPC nobody answers
])
def test_long_polls_that_get_nothing_are_408_with_an_empty_body(gh, method, path):
    _, token = http_device(gh)
    data = json.dumps({"method": "nobodyAnswers", "params": {}}) if method == "POST" else None
    response = requests.request(method, gh.url(token, *path.split("/")), params={"timeout": SHORT_POLL_MS},
                                data=data, timeout=WAIT)
    assert (response.status_code, response.content) == (408, b"")


@pytest.mark.parametrize("timeout", ["abc", "-5", "1.5", "1e3", "99999999999999999999999", "5_000"])
def test_a_timeout_that_is_not_a_whole_number_of_milliseconds_is_400(gh, timeout):
    _, token = http_device(gh)
    for path in ("attributes/updates", "rpc"):
        response = requests.get(gh.url(token, *path.split("/")), params={"timeout": timeout}, timeout=WAIT)
        assert_clear_error(response.status_code, response.content, response.headers["Content-Type"], 400)


@pytest.mark.parametrize("request_id", ["abc", "-1", "1234567890", "1.5"])
def test_an_rpc_reply_to_a_request_id_that_is_no_number_is_400(gh, request_id):
    _, token = http_device(gh)
    response = requests.post(gh.url(token, "rpc", request_id), data=b'{"ok": true}', timeout=WAIT)
    assert_clear_error(response.status_code, response.content, response.headers["Content-Type"], 400)


def test_an_rpc_reply_without_a_body_is_400(gh):
    _, token = http_device(gh)
    response = requests.post(gh.url(token, "rpc", "7"), data=b"", timeout=WAIT)
    assert_clear_error(response.status_code, response.content, response.headers["Content-Type"], 400)


@pytest.mark.parametrize("claim", [b"", b'{"secretKey": "s3cr3t", "durationMs": 60000}', b"{}"])
def test_claiming_info_is_accepted_with_an_empty_200(gh, claim):
    _, token = http_device(gh)
    response = requests.post(gh.url(token, "claim"), data=claim, timeout=WAIT)
    assert (response.status_code, response.content) == (200, b"")


# --- tokens ------------------------------------------------------------------------------------


ENDPOINTS = [  # (method, path after the token, a valid body)
    ("POST", "telemetry", b'{"t": 1}'),
    ("POST", "attributes", b'{"a": 1}'),
    ("GET", "attributes", b""),
    ("GET", "attributes/updates?timeout=100", b""),
    ("GET", "rpc?timeout=100", b""),
    ("POST", "rpc/1", b'{"ok": true}'),
    ("POST", "rpc?timeout=100", b'{"method": "m", "params": {}}'),
    ("POST", "claim", b""),
]


@pytest.mark.parametrize("method, path, valid_body", ENDPOINTS)
def test_wrong_token_is_401_with_an_empty_body_and_the_right_token_is_answered(gh, method, path, valid_body):
    _, token = http_device(gh)
    before = row_counts(gh)
    for wrong in (unique("WRONG"), token.lower(), token + "x"):
        for sent in (valid_body, b"{not json"):  # the token is checked first
            status, content, _ = raw_request(gh, method, f"/api/v1/{wrong}/{path}", sent)
            assert (status, content) == (401, b""), (wrong, sent)
    assert row_counts(gh) == before
    status, _, _ = raw_request(gh, method, f"/api/v1/{token}/{path}", valid_body)
    assert status in (200, 408)  # 408: a long poll with nothing to answer


@pytest.mark.parametrize("change", ["rotate", "delete"])
def test_a_token_revoked_elsewhere_stops_working_and_a_new_one_works_at_once(gh, change):
    """The sidecar keeps found tokens in memory; a change by another process (here the test's
    own registry, as the CLI or the admin API would) ends them within its recheck interval."""
    device, token = http_device(gh)
    assert requests.post(gh.url(token, "telemetry"), json={"before": 1}, timeout=WAIT).status_code == 200
    new_token = unique("NEW")
    with gh.registry() as registry:
        if change == "rotate":
            registry.set_credentials(device.id, AccessToken(new_token))
        else:
            registry.delete_device(device.id)
    assert wait_until(lambda: requests.post(gh.url(token, "telemetry"), json={"after": 1},
                                            timeout=WAIT).status_code == 401, timeout=5)
    if change == "rotate":
        assert requests.post(gh.url(new_token, "telemetry"), json={"after": 2}, timeout=WAIT).status_code == 200
        assert latest_values(gh, device.id) == {"before": 1, "after": 2}


def test_mqtt_basic_credentials_are_no_http_token(gh):
    name, client_id, username = unique("basic"), unique("cid"), unique("user")
    with gh.registry() as registry:
        device = registry.create_device(name, credentials=MqttBasic(client_id, username, unique("pw")))
        credentials_id = registry.get_credentials(device.id).credentials_id
    for token in (credentials_id, username, client_id):
        response = requests.post(gh.url(token, "telemetry"), json={"t": 1}, timeout=WAIT)
        assert (response.status_code, response.content) == (401, b"")
    assert latest_values(gh, device.id) == {}


@pytest.mark.parametrize("path, expected", [
    ("/api/v1/..%2F/telemetry", 404),  # ..// once decoded: no route, and no redirect either
    ("/api/v1/..%2F..%2Fprovision/telemetry", 404),
    ("/api/v1/../telemetry", 401),
    ("/api/v1/%2E%2E/telemetry", 401),
    ("/api/v1//telemetry", 404),
    ("/api/v1/%00/telemetry", 401),
    ("/api/v1/%00%00%00%00/attributes", 401),
    ("/api/v1/%E2%98%83%F0%9F%94%91/telemetry", 401),
    ("/api/v1/%FF%FE/telemetry", 401),
    ("/api/v1/%ZZ/telemetry", 401),
    ("/api/v1/%27%20OR%20%271%27%3D%271/telemetry", 401),
    ("/api/v1/x%27%3B%20DROP%20TABLE%20device%3B--/telemetry", 401),
    ("/api/v1/%22%29%3B%20DELETE%20FROM%20device_credentials%3B--/attributes", 401),
    ("/api/v1/" + "A" * 8000 + "/telemetry", 401),
])
def test_hostile_tokens_are_refused_cleanly_and_store_nothing(gh, path, expected):
    before = row_counts(gh)
    status, content, content_type = raw_request(gh, "POST", path, b'{"hostile": 1}')
    if expected == 401:
        assert (status, content) == (401, b"")
    else:
        assert_clear_error(status, content, content_type, expected)
    assert row_counts(gh) == before


def test_a_valid_token_with_a_nul_or_path_characters_appended_is_refused(gh):
    device, token = http_device(gh)
    for suffix in ("%00", "%00x", "%2F..", "%20", "%0A"):
        status, content, _ = raw_request(gh, "POST", f"/api/v1/{token}{suffix}/telemetry", b'{"t": 1}')
        assert status in (401, 404), suffix
        assert_no_traceback(content)
    assert latest_values(gh, device.id) == {}


@pytest.mark.parametrize("method, path", [
    ("GET", "telemetry"), ("PUT", "telemetry"), ("DELETE", "attributes"), ("PUT", "rpc"),
    ("POST", "attributes/updates"), ("DELETE", "rpc/1"), ("PATCH", "claim"),
])
def test_wrong_method_is_405(gh, method, path):
    _, token = http_device(gh)
    status, content, content_type = raw_request(gh, method, f"/api/v1/{token}/{path}")
    assert_clear_error(status, content, content_type, 405)


def test_provision_with_the_wrong_method_is_405(gh):
    status, content, content_type = raw_request(gh, "GET", "/api/v1/provision")
    assert_clear_error(status, content, content_type, 405)


# --- payload limits (SPEC §9.8) -----------------------------------------------------------------


@pytest.mark.parametrize("path, limit, at_limit", [
    ("rpc/77", RPC_LIMIT, lambda size: b"x" * size),  # a reply is published as it is
    ("rpc?timeout=100", RPC_LIMIT, lambda size: padded_json({"method": "m", "params": {}}, size)),
    ("telemetry", PAYLOAD_LIMIT, lambda size: padded_json({"atLimit": True}, size)),
])
def test_payload_over_the_limit_is_413_and_exactly_at_the_limit_is_accepted(gh, path, limit, at_limit):
    device, token = http_device(gh)
    before = row_counts(gh)
    for oversized in (b" " * (limit + 1), chunks(limit + 1)):
        status, content, content_type = raw_request(gh, "POST", f"/api/v1/{token}/{path}", oversized)
        error = assert_clear_error(status, content, content_type, 413)
        assert error["message"] == "Payload size exceeds the limit"
    assert row_counts(gh) == before

    status, _, _ = raw_request(gh, "POST", f"/api/v1/{token}/{path}", at_limit(limit))
    assert status == (408 if path.startswith("rpc?") else 200)  # nobody answers the client-side RPC
    if path == "telemetry":
        assert latest_values(gh, device.id) == {"atLimit": True}


def test_a_declared_body_far_over_the_limit_is_refused_before_it_is_sent(gh):
    """The server does not buffer a body it would refuse anyway: a declared gigabyte is a 413
    at once, without one byte of it sent."""
    _, token = http_device(gh)
    connection = http.client.HTTPConnection("127.0.0.1", gh.sidecar.http_port, timeout=WAIT)
    try:
        connection.putrequest("POST", f"/api/v1/{token}/telemetry")
        connection.putheader("Content-Length", str(1 << 30))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        response.read()
    finally:
        connection.close()


def test_a_chunked_body_at_the_rpc_limit_is_accepted(gh):
    _, token = http_device(gh)
    status, _, _ = raw_request(gh, "POST", f"/api/v1/{token}/rpc/78", chunks(RPC_LIMIT, b"y", chunk_size=1000))
    assert status == 200


def test_a_body_of_undeclared_length_is_read_no_further_than_the_limit(registry, data_dir):
    """waitress declares a chunked body's length once it has the whole body; should a WSGI server
    hand the stream on undeclared, at most one byte past the limit is read. In process: the
    Flask app without a broker link."""
    from sidecar.app import create_app
    from sidecar.context import SidecarSettings

    registry.create_device(unique("undeclared"), credentials=AccessToken("UNDECLARED_TOKEN"))
    client = create_app(SidecarSettings(data_dir=data_dir)).test_client()
    for size, expected in ((RPC_LIMIT, 200), (RPC_LIMIT + 1, 413), (10 * RPC_LIMIT, 413)):
        stream = io.BytesIO(b"x" * size)
        response = client.post("/api/v1/UNDECLARED_TOKEN/rpc/9", input_stream=stream,
                               headers={"Transfer-Encoding": "chunked"},
                               environ_overrides={"wsgi.input_terminated": True})
        assert response.status_code == expected, size
        assert stream.tell() <= RPC_LIMIT + 1


def test_the_payload_limit_is_checked_before_the_token(gh):
    # As ThingsBoard's payload filter, which runs before its controller looks at the token.
    status, content, content_type = raw_request(gh, "POST", f"/api/v1/{unique('WRONG')}/rpc/1", b"x" * (RPC_LIMIT + 1))
    assert_clear_error(status, content, content_type, 413)


def test_the_provisioning_path_has_the_general_limit(gh):
    status, content, content_type = raw_request(gh, "POST", "/api/v1/provision", b" " * (PAYLOAD_LIMIT + 1))
    assert_clear_error(status, content, content_type, 413)
    status, content, content_type = raw_request(gh, "POST", "/api/v1/provision", b" " * (RPC_LIMIT + 1))
    assert_clear_error(status, content, content_type, 400)  # not too large: empty JSON


def test_over_64_kib_of_telemetry_is_stored_and_the_broker_link_survives(gh):
    """The broker takes at most 64 KiB from any client; such data is stored but not relayed,
    and the sidecar's broker connection must not be dropped for it."""
    device, token = http_device(gh)
    app = application(gh, f"gatehouse/devices/{device.id}/telemetry")
    response = requests.post(gh.url(token, "telemetry"), json={"blob": "b" * 100_000}, timeout=WAIT)
    assert response.status_code == 200
    response = requests.post(gh.url(token, "telemetry"), json={"after": 1}, timeout=WAIT)
    assert response.status_code == 200
    assert body(next_on(app, f"gatehouse/devices/{device.id}/telemetry", WAIT))[0]["values"] == {"after": 1}
    assert latest_values(gh, device.id) == {"blob": "b" * 100_000, "after": 1}
    assert "lost the broker connection" not in gh.sidecar.log()


# --- malformed bodies ---------------------------------------------------------------------------


MALFORMED_EVERYWHERE = [
    b"not json at all{",
    b'{"a": 1',
    b"\xff\xfe\x00\x01",
    b'"just a string"',
    b"42",
    b"[1, 2]",
    b"[" * 30_000 + b"]" * 30_000,  # deeper than any parser goes, within the RPC limit
    b'{"a": NaN}',
]
MALFORMED_FOR = {
    "telemetry": [b"", b'{"ts": 1, "values": 5}', b'[{"a": 1}, 7]', b'{"": 1}', b'{"ts": "soon", "values": {"a": 1}}',
                  b'{"a": 1e999999999}'],
    "attributes": [b"", b'[{"a": 1}]', b'{"  ": 1}', b'{"' + b"k" * 256 + b'": 1}'],
    "rpc?timeout=100": [b"", b'{"params": {}}', b'{"method": "", "params": {}}', b'{"method": 5, "params": {}}'],
    "claim": [b'[{"secretKey": "s"}]'],
}


@pytest.mark.parametrize("path, payload", [
    *[(path, payload) for path in MALFORMED_FOR for payload in MALFORMED_EVERYWHERE],
    *[(path, payload) for path, payloads in MALFORMED_FOR.items() for payload in payloads],
], ids=lambda value: value if isinstance(value, str) else repr(value[:24]))
def test_malformed_body_is_400_with_a_json_error_and_nothing_is_stored(gh, path, payload):
    _, token = http_device(gh)
    before = row_counts(gh)
    status, content, content_type = raw_request(gh, "POST", f"/api/v1/{token}/{path}", payload)
    assert_clear_error(status, content, content_type, 400)
    assert row_counts(gh) == before


@pytest.mark.parametrize("payload", [
    *MALFORMED_EVERYWHERE,
    b"",
    b"{}",
    b'{"provisionDeviceKey": "k"}',
    b'{"provisionDeviceSecret": "s"}',
    b'{"provisionDeviceKey": "k", "provisionDeviceSecret": "s", "credentialsType": "BOGUS"}',
    b'{"provisionDeviceKey": {"nested": 1}, "provisionDeviceSecret": "s"}',
], ids=lambda value: repr(value[:24]))
def test_provision_request_that_is_no_json_object_or_lacks_key_or_secret_is_400(gh, payload):
    before = row_counts(gh)
    status, content, content_type = raw_request(gh, "POST", "/api/v1/provision", payload,
                                                {"Content-Type": "application/json"})
    assert_clear_error(status, content, content_type, 400)
    assert row_counts(gh) == before  # not even a provisioning event


UNUSUAL = {
    "température": 21.5,
    "温度": "高い",
    "emoji 🌡️": "🔥",
    "'; DROP TABLE device; --": "x' OR '1'='1",
    'quote"key': '"); DELETE FROM attribute; --',
    "back\\slash %s %d {}": "NUL\u0000inside",
    "Robert'); DROP TABLE telemetry_history;--": -1,
}


def test_unicode_and_sql_metacharacters_in_keys_and_values_are_stored_as_sent(gh):
    device, token = http_device(gh)
    before = row_counts(gh)
    for path in ("telemetry", "attributes"):
        response = requests.post(gh.url(token, path), data=json.dumps(UNUSUAL, ensure_ascii=False).encode(),
                                 timeout=WAIT)
        assert response.status_code == 200
    assert latest_values(gh, device.id) == UNUSUAL
    assert client_attributes(gh, device.id) == UNUSUAL
    keys = ",".join(key for key in UNUSUAL if "," not in key)
    response = requests.get(gh.url(token, "attributes"), params={"clientKeys": keys}, timeout=WAIT)
    assert response.json() == {"client": UNUSUAL}
    after = row_counts(gh)
    assert after["device"] == before["device"] and after["device_credentials"] == before["device_credentials"]
    assert after["attribute"] == before["attribute"] + len(UNUSUAL)


# --- provisioning over HTTP gives what MQTT gives (SPEC §4.1, §9.1, §9.8) -------------------------


def provision_over(gh: Gatehouse, transport: str, request: dict) -> dict:
    if transport == "MQTT":
        return provision_over_mqtt(gh.broker, request)[0]
    response = requests.post(gh.provision_url, json=request, timeout=WAIT)
    assert response.status_code == 200  # whatever the outcome (SPEC §4.1)
    assert response.headers["Content-Type"] == "application/json"
    return response.json()


def profile(gh: Gatehouse, strategy: ProvisionType) -> tuple[str, str, str]:
    name, key, secret = unique("profile"), unique("key"), unique("secret")
    with gh.registry() as registry:
        registry.create_profile(name, strategy, key=key, secret=secret)
    return name, key, secret


TRANSPORTS = ["HTTP", "MQTT"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_provision_allow_create_returns_a_token_that_then_works(gh, transport):
    _, key, secret = profile(gh, ProvisionType.ALLOW_CREATE_NEW_DEVICES)
    app = application(gh, "gatehouse/devices/+/events")
    name = unique("provisioned")
    response = provision_over(gh, transport, {"deviceName": name, "provisionDeviceKey": key,
                                              "provisionDeviceSecret": secret})
    assert list(response)[:3] == ["credentialsValue", "credentialsType", "status"]
    assert (response["status"], response["credentialsType"]) == ("SUCCESS", "ACCESS_TOKEN")
    with gh.registry() as registry:
        device = registry.get_device(name)
        assert registry.get_credentials(device.id).credentials_id == response["credentialsValue"]
        assert registry.get_attributes(device.id, AttributeScope.SERVER) == {"provisionState": "provisioned"}
        event = registry.provisioning_events(device.id)[-1]
    assert (response["deviceId"], response["deviceName"]) == (device.id, name)
    assert (event["outcome"], event["transport"], event["remote_address"]) == ("SUCCESS", transport, "127.0.0.1")
    assert body(next_on(app, f"gatehouse/devices/{device.id}/events", WAIT))["event"] == "provisioned"

    response = requests.post(gh.url(response["credentialsValue"], "telemetry"), json={"hello": 1}, timeout=WAIT)
    assert response.status_code == 200
    assert latest_values(gh, device.id) == {"hello": 1}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_provision_allow_create_with_the_gateway_flag_and_own_token(gh, transport):
    _, key, secret = profile(gh, ProvisionType.ALLOW_CREATE_NEW_DEVICES)
    name, token = unique("gateway"), unique("OWN_TOKEN")
    response = provision_over(gh, transport, {"deviceName": name, "provisionDeviceKey": key,
                                              "provisionDeviceSecret": secret, "gateway": True,
                                              "credentialsType": "ACCESS_TOKEN", "token": token})
    assert (response["status"], response["credentialsValue"]) == ("SUCCESS", token)
    with gh.registry() as registry:
        assert registry.get_device(name).additional_info == {"gateway": True}
    assert provision_over(gh, transport, {"deviceName": name, "provisionDeviceKey": key,
                                          "provisionDeviceSecret": secret}) == FAILURE_JSON


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_provision_pre_provisioned_succeeds_once_then_fails(gh, transport):
    profile_name, key, secret = profile(gh, ProvisionType.CHECK_PRE_PROVISIONED_DEVICES)
    name, token = unique("pre"), unique("PRE_TOKEN")
    with gh.registry() as registry:
        registry.create_device(name, credentials=AccessToken(token), profile=profile_name)
    request = {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret}
    first = provision_over(gh, transport, request)
    assert (first["status"], first["credentialsType"], first["credentialsValue"]) == ("SUCCESS", "ACCESS_TOKEN", token)
    assert provision_over(gh, transport, request) == FAILURE_JSON
    assert provision_over(gh, transport, {**request, "deviceName": unique("not-pre")}) == FAILURE_JSON


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", ["disabled-profile", "unknown-key", "wrong-secret"])
def test_provision_not_found_stores_no_device(gh, transport, case):
    _, key, secret = profile(gh, ProvisionType.ALLOW_CREATE_NEW_DEVICES)
    if case == "disabled-profile":
        with gh.registry() as registry:  # a DISABLED profile has no key a device could name
            assert registry.create_profile(unique("disabled"), ProvisionType.DISABLED).provision_device_key is None
        key, secret = "", ""
    elif case == "unknown-key":
        key = unique("unknown")
    else:
        secret += "-wrong"
    name = unique("never")
    response = provision_over(gh, transport, {"deviceName": name, "provisionDeviceKey": key,
                                              "provisionDeviceSecret": secret})
    assert response == NOT_FOUND_JSON
    with gh.registry() as registry:
        assert registry.find_device(name) is None


@pytest.mark.parametrize("name", ["Robert'); DROP TABLE device;--", "设备-🌡️-01", "a\"b\\c", "%00%2F.."])
def test_provision_keeps_unusual_device_names_as_sent(gh, name):
    _, key, secret = profile(gh, ProvisionType.ALLOW_CREATE_NEW_DEVICES)
    response = provision_over(gh, "HTTP", {"deviceName": name, "provisionDeviceKey": key,
                                           "provisionDeviceSecret": secret})
    assert (response["status"], response["deviceName"]) == ("SUCCESS", name)
    with gh.registry() as registry:
        assert registry.get_device(response["deviceId"]).name == name


def test_only_the_coap_bridge_can_say_a_request_came_over_coap(gh):
    """The audit trail's transport: a client that claims CoAP without the bridge's service
    credentials is recorded as HTTP."""
    _profile_name, key, secret = profile(gh, ProvisionType.ALLOW_CREATE_NEW_DEVICES)
    name = unique("claims-coap")
    response = requests.post(gh.provision_url, json={"deviceName": name, "provisionDeviceKey": key,
                                                     "provisionDeviceSecret": secret},
                             headers={"X-Gatehouse-Transport": "COAP"}, timeout=WAIT)
    assert response.json()["status"] == "SUCCESS"
    with gh.registry() as registry:
        assert [event["transport"] for event in registry.provisioning_events(name)] == ["HTTP"]


def test_provision_request_naming_an_x509_chain_profile_is_400(gh):
    # ThingsBoard fails such a request inside its core ("Invalid provision strategy type!", a 500).
    ca_cert, _ = create_ca(unique("chain-ca"))
    with gh.registry() as registry:
        chain = registry.create_profile(unique("chain"), ProvisionType.X509_CERTIFICATE_CHAIN,
                                        ca_certificate_pem=certificate_pem(ca_cert))
    before = row_counts(gh)
    status, content, content_type = raw_request(gh, "POST", "/api/v1/provision", json.dumps(
        {"deviceName": unique("n"), "provisionDeviceKey": chain.provision_device_key,
         "provisionDeviceSecret": chain.provision_device_secret}).encode())
    assert_clear_error(status, content, content_type, 400)
    assert row_counts(gh) == before


# --- scripts written for ThingsBoard ------------------------------------------------------------


SEED_SCRIPT = """
import json, sys
import requests

url, key, secret, name = sys.argv[1:5]
credentials = requests.post(url + "/api/v1/provision", json={
    "deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret}).json()
token = credentials["credentialsValue"]
telemetry = requests.post(url + "/api/v1/" + token + "/telemetry", json={"temperature": 25.5, "seeded": True})
attributes = requests.post(url + "/api/v1/" + token + "/attributes", json={"firmware": "1.0.0"})
read = requests.get(url + "/api/v1/" + token + "/attributes", params={"clientKeys": "firmware"})
print(json.dumps({"credentials": credentials, "telemetry": telemetry.status_code,
                  "attributes": attributes.status_code, "read": read.json()}))
"""


def test_seed_style_requests_script_provisions_and_sends_data(gh):
    _, key, secret = profile(gh, ProvisionType.ALLOW_CREATE_NEW_DEVICES)
    name = unique("seeded")
    done = subprocess.run([sys.executable, "-c", SEED_SCRIPT, gh.sidecar.url, key, secret, name],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["credentials"]["status"] == "SUCCESS"
    assert (result["telemetry"], result["attributes"]) == (200, 200)
    assert result["read"] == {"client": {"firmware": "1.0.0"}}
    with gh.registry() as registry:
        device = registry.get_device(name)
    assert latest_values(gh, device.id) == {"temperature": 25.5, "seeded": True}


def curl(*args: str) -> tuple[int, str]:
    """(HTTP status, body) of one curl call."""
    done = subprocess.run(["curl", "--silent", "--show-error", "--max-time", "30", "--write-out", "\n%{http_code}",
                           *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    content, _, status = done.stdout.rpartition("\n")
    return int(status), content


def test_curl_as_in_thingsboards_docs(gh):
    _, key, secret = profile(gh, ProvisionType.ALLOW_CREATE_NEW_DEVICES)
    name = unique("curl")
    status, content = curl("-X", "POST", "-H", "Content-Type: application/json", "-d", json.dumps(
        {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret}), gh.provision_url)
    assert status == 200
    token = json.loads(content)["credentialsValue"]
    status, content = curl("-v", "-X", "POST", "-d", '{"temperature": 25}', gh.url(token, "telemetry"),
                           "--header", "Content-Type:application/json")
    assert (status, content) == (200, "")
    status, content = curl("-X", "POST", "-d", '{"fw": "v2.0"}', gh.url(token, "attributes"),
                           "--header", "Content-Type:application/json")
    assert status == 200
    status, content = curl(gh.url(token, "attributes") + "?clientKeys=fw")
    assert (status, json.loads(content)) == (200, {"client": {"fw": "v2.0"}})
    status, content = curl(gh.url(token, "rpc") + f"?timeout={SHORT_POLL_MS}")
    assert (status, content) == (408, "")
    status, content = curl("-X", "POST", "-d", '{"temperature": 25}', gh.url(unique("WRONG"), "telemetry"))
    assert (status, content) == (401, "")
    with gh.registry() as registry:
        device = registry.get_device(name)
    assert latest_values(gh, device.id) == {"temperature": 25}
