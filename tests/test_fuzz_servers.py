"""Bad input against the real running processes — one broker, sidecar and CoAP bridge for the
module, reused by every example — with hypothesis drawing MQTT client ids, user names,
passwords and topics, HTTP paths and bodies, and CoAP URIs and payloads.

Each answer must be the protocol-correct one (SPEC §2.1 CONNACK codes, §2.7 SUBACK 0x80, §3 and
§4 provisioning statuses, §5 HTTP 400/401/404/413, §6 CoAP 4.00/4.01/4.04), where the domain
parser is the oracle for payloads; a refused request must leave the database as it was; and the
servers must still serve a well-behaved client afterwards. GATEHOUSE_FUZZ_SCALE multiplies the
example budgets.
"""
from __future__ import annotations

import asyncio
import json
import threading

import aiocoap
import pytest
import requests
from aiocoap import Code, Message
from hypothesis import assume, event, given
from hypothesis import strategies as st

from broker_plugin.topics import device_subscription
from gatehouse.payloads import PayloadError, parse_attributes, parse_json, parse_telemetry
from gatehouse.provisioning import ProvisionRequest, ProvisionRequestError
from gatehouse.registry import Registry

from .conftest import broker_and_sidecar, start_coap_bridge
from .devices import token_device, unique
from .fuzz_budget import fuzz_settings
from .fuzz_inputs import (
    TABLES,
    add_provisioning_profiles,
    hostile_payloads,
    provision_requests,
    provisioning_changes,
    row_counts,
)
from .mqtt_client import PINGREQ, PINGRESP, RawClient, connect, connect_packet, publish_packet, subscribe_packet

WAIT = 10


class Gatehouse:
    def __init__(self, broker, sidecar, bridge):
        self.broker, self.sidecar, self.bridge = broker, sidecar, bridge
        self.device, self.token = token_device(broker, "fuzzed")
        with self.registry() as registry:
            add_provisioning_profiles(registry)

    def registry(self) -> Registry:
        return Registry.open(self.broker.data_dir)

    def database_state(self) -> dict:
        """Row counts of every data table, and the fuzzed device's stored values."""
        with self.registry() as registry:
            return {**row_counts(registry), "latest": registry.latest_telemetry(self.device.id),
                    "attributes": registry.store.attributes(self.device.id, "CLIENT_SCOPE")}


@pytest.fixture(scope="module")
def gh(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-servers")
    # Refused logins are the point here: every server's address blocking (MQTT logins, HTTP and
    # CoAP unknown tokens) is pushed out of the way.
    no_blocking = ("--max-failed-logins", "1000000")
    with broker_and_sidecar(root, *no_blocking, sidecar_options=no_blocking) as (broker, sidecar):
        bridge = start_coap_bridge(root / "data", sidecar.url, root / "coap.log", *no_blocking)
        try:
            yield Gatehouse(broker, sidecar, bridge)
        finally:
            bridge.stop()
    for log in (broker.log(), sidecar.log(), bridge.log()):
        assert "Traceback" not in log, log[-5000:]


# --- MQTT ---------------------------------------------------------------------------------------

# Unicode text without U+0000, which MQTT forbids in strings [MQTT-1.5.3-2]: a CONNECT with it is
# malformed, not a wrong login (tests/test_fuzz_mqtt.py sends those).
mqtt_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30)


@fuzz_settings(150)
@given(client_id=mqtt_text | st.sampled_from(["provision", " ", ""]),
       username=st.none() | mqtt_text | st.sampled_from(["provision", "", "gatehouse-app:x", "gatehouse-service:x"]),
       password=st.none() | mqtt_text,
       with_token=st.booleans())
def test_mqtt_connect_gets_thingsboards_connack_code_for_any_client_id_user_name_and_password(
        gh, client_id, username, password, with_token):
    if with_token:
        username = gh.token
    if password is not None and username is None:
        username = ""  # MQTT 3.1.1 has no password without a user name [MQTT-3.1.2-22]
    if client_id == "" and username is None:
        client_id = unique("cid")  # else 0x02 for an empty client id would hide the rule under test
    before = gh.database_state()
    with RawClient(gh.broker.mqtt_port) as raw:
        raw.send(connect_packet(client_id, username, password))
        connack = raw.read(4, timeout=WAIT)
    if "provision" in (client_id, username) or username == gh.token:
        expected = 0x00  # a provisioning session, or the token (the password is ignored for tokens)
    elif username or password:
        expected = 0x05  # BAD_USERNAME_OR_PASSWORD
    elif client_id.strip():
        expected = 0x02  # an unknown client id sent alone
    else:
        expected = 0x05
    assert connack == bytes((0x20, 0x02, 0x00, expected))
    assert gh.database_state() == before


valid_topic_filters = st.from_regex(r"[a-z0-9/+]{0,10}(/#)?", fullmatch=True).filter(
    lambda f: f and all(level in ("+", "#") or ("+" not in level and "#" not in level) for level in f.split("/")))
topic_filters = st.sampled_from(["v1/devices/me/attributes", "v1/devices/me/rpc/request/+", "v2/a", "#", "+/+",
                                 "v1/devices/me/#", "v1/devices/+/attributes", "gatehouse/devices/x/telemetry",
                                 "/provision/response", "$SYS/#"]) | valid_topic_filters | mqtt_text.filter(
    lambda f: f and "+" not in f and "#" not in f)


@fuzz_settings(100)
@given(topic_filter=topic_filters)
def test_device_subscription_to_any_filter_is_granted_only_for_thingsboards_device_topics(gh, topic_filter):
    with RawClient(gh.broker.mqtt_port) as raw:
        raw.send(connect_packet(unique("sub"), gh.token))
        assert raw.read(4) == bytes((0x20, 0x02, 0x00, 0x00))
        raw.send(subscribe_packet(topic_filter, qos=1, packet_id=7))
        suback = raw.read(5)
        expected = 0x01 if device_subscription(topic_filter) else 0x80
        assert suback == bytes((0x90, 0x03, 0x00, 0x07, expected))
        raw.send(PINGREQ)  # the connection stays open
        assert raw.read(2) == PINGRESP


@fuzz_settings(100)
@given(topic=mqtt_text.filter(lambda t: t and "+" not in t and "#" not in t) | st.sampled_from(
    ["v1/devices/me/telemetry/", "v1/devices/me/rpc/request/x", "v1/devices/me/attributes/request/",
     "v1/devices/me/telemetry ", "gatehouse/devices/x/attributes/shared", "V1/devices/me/telemetry"]))
def test_device_publish_to_any_other_topic_gets_a_plain_puback_and_stores_nothing(gh, topic):
    assume(topic not in ("v1/devices/me/telemetry", "v1/devices/me/attributes", "v2/t", "v2/t/j", "v2/a", "v2/a/j"))
    before = gh.database_state()
    with RawClient(gh.broker.mqtt_port) as raw:
        raw.send(connect_packet(unique("pub"), gh.token))
        assert raw.read(4) == bytes((0x20, 0x02, 0x00, 0x00))
        raw.send(publish_packet(topic, b'{"fuzz": 1}', qos=1, packet_id=9))
        raw.send(PINGREQ)
        answer = raw.read(6, timeout=2)
    if topic.startswith("v1/gateway/"):
        assert answer == PINGRESP  # not a gateway: no PUBACK at all, as in ThingsBoard (SPEC §2.2)
    else:
        puback = bytes((0x40, 0x02, 0x00, 0x09))
        assert answer in (puback + PINGRESP, PINGRESP + puback)  # the two answers are not ordered
    assert gh.database_state() == before


@fuzz_settings(150)
@given(payload=hostile_payloads, attributes=st.booleans())
def test_mqtt_telemetry_and_attributes_are_acknowledged_exactly_when_the_parser_accepts_them(
        gh, payload, attributes):
    topic, parse = ("v1/devices/me/attributes", parse_attributes) if attributes else (
        "v1/devices/me/telemetry", parse_telemetry)
    before = gh.database_state()
    with RawClient(gh.broker.mqtt_port) as raw:
        raw.send(connect_packet(unique("data"), gh.token))
        assert raw.read(4) == bytes((0x20, 0x02, 0x00, 0x00))
        raw.send(publish_packet(topic, payload, qos=1, packet_id=3))
        if isinstance(parse(payload), PayloadError):
            assert raw.closed_by_server(WAIT)  # MQTT 3.1.1: an invalid payload closes the connection
            assert gh.database_state() == before
        else:
            assert raw.read(4) == bytes((0x40, 0x02, 0x00, 0x03))  # acknowledged once stored


# --- HTTP ---------------------------------------------------------------------------------------

path_segments = st.text(max_size=20).map(lambda text: requests.utils.quote(text, safe=""))


@fuzz_settings(150)
@given(token=path_segments, feature=st.sampled_from(["telemetry", "attributes", "rpc", "claim"]) | path_segments,
       method=st.sampled_from(["GET", "POST"]))
def test_http_request_with_any_path_under_api_v1_is_refused_and_stores_nothing(gh, token, feature, method):
    before = gh.database_state()
    answer = requests.request(method, f"{gh.sidecar.url}/api/v1/{token}/{feature}?timeout=1",
                              data=b'{"fuzz": 1}', timeout=WAIT)
    assert answer.status_code in (400, 401, 404, 405), answer.text
    # A token that reaches the server as one path segment (WSGI decodes %2F into a slash, and
    # dot segments are resolved) and names a feature: the token is looked up, and is unknown.
    if feature in ("telemetry", "attributes", "rpc", "claim") and token not in (
            "", ".", "..", "telemetry", "attributes", "rpc", "claim", "provision") and "%2F" not in token:
        assert answer.status_code in (401, 405), (token, feature)
    assert gh.database_state() == before


DEVICE_API_PATHS = ("telemetry", "attributes", "attributes/updates", "rpc", "claim")


@fuzz_settings(60)
@given(feature=path_segments.filter(lambda segment: segment not in ("", ".", "..") and "%2F" not in segment),
       method=st.sampled_from(["GET", "POST"]))
def test_http_request_for_an_unknown_feature_of_a_known_device_is_404(gh, feature, method):
    assume(feature not in DEVICE_API_PATHS)
    before = gh.database_state()
    answer = requests.request(method, f"{gh.sidecar.url}/api/v1/{gh.token}/{feature}", data=b'{"fuzz": 1}',
                              timeout=WAIT)
    assert answer.status_code == 404, (feature, answer.text)
    assert gh.database_state() == before


RPC_LIMIT = 65_536  # the sidecar's limit under /api/v1/*/rpc (ThingsBoard's)


@fuzz_settings(20)
@given(excess=st.integers(1, 4096), path=st.sampled_from(["rpc", "rpc/1"]), chunked=st.booleans(),
       filler=st.binary(min_size=1, max_size=16))
def test_http_body_over_the_limit_is_413_whether_its_length_is_declared_or_not(gh, excess, path, chunked, filler):
    body = (filler * (RPC_LIMIT // len(filler) + 1))[:RPC_LIMIT] + filler[:1] * excess
    before = gh.database_state()
    data = iter([body[:1000], body[1000:]]) if chunked else body  # an iterator goes out chunked
    answer = requests.post(f"{gh.sidecar.url}/api/v1/{gh.token}/{path}", data=data, timeout=WAIT)
    assert (answer.status_code, answer.json()["message"]) == (413, "Payload size exceeds the limit")
    assert gh.database_state() == before


@fuzz_settings(150)
@given(payload=hostile_payloads, attributes=st.booleans())
def test_http_telemetry_and_attributes_are_200_exactly_when_the_parser_accepts_them_else_400(
        gh, payload, attributes):
    feature, parse = ("attributes", parse_attributes) if attributes else ("telemetry", parse_telemetry)
    before = gh.database_state()
    answer = requests.post(f"{gh.sidecar.url}/api/v1/{gh.token}/{feature}", data=payload, timeout=WAIT)
    if isinstance(parse(payload), PayloadError):
        assert answer.status_code == 400, answer.text
        assert answer.headers["Content-Type"].startswith("application/json")
        assert gh.database_state() == before
    else:
        assert answer.status_code == 200, answer.text


provision_bodies = provision_requests.map(lambda body: json.dumps(body).encode()) | hostile_payloads


def processable(body: bytes) -> bool:
    """Whether ThingsBoard gets as far as a provisioning status for `body` (SPEC §3.6)."""
    parsed = parse_json(body)
    if isinstance(parsed, PayloadError):
        return False
    try:
        ProvisionRequest.from_json(parsed)
    except ProvisionRequestError:
        return False
    return True


def check_provisioning_outcome(gh, before: dict, answer: dict | None) -> None:
    status = None if answer is None else answer["status"]
    assert status in (None, "SUCCESS", "NOT_FOUND", "FAILURE")
    event(f"provisioning status {status}")  # --hypothesis-show-statistics shows how often each came
    after = gh.database_state()
    assert {table: after[table] - before[table] for table in TABLES} == provisioning_changes(answer), answer


@fuzz_settings(100)
@given(body=provision_bodies)
def test_http_provisioning_with_any_body_gets_a_status_or_400_and_stores_only_a_success(gh, body):
    before = gh.database_state()
    answer = requests.post(f"{gh.sidecar.url}/api/v1/provision", data=body, timeout=WAIT)
    if processable(body):
        assert answer.status_code == 200, answer.text
        check_provisioning_outcome(gh, before, answer.json())
    else:
        assert answer.status_code == 400, answer.text
        check_provisioning_outcome(gh, before, None)


@fuzz_settings(60)
@given(body=provision_bodies)
def test_mqtt_provisioning_with_any_body_is_answered_on_provision_response_or_closed(gh, body):
    before = gh.database_state()
    with RawClient(gh.broker.mqtt_port) as raw:
        raw.send(connect_packet(unique("prov"), "provision"))
        assert raw.read(4) == bytes((0x20, 0x02, 0x00, 0x00))
        raw.send(publish_packet("/provision/request", body, qos=1, packet_id=5))
        if not processable(body):
            # MQTT 3.1.1: an invalid payload, or a request ThingsBoard cannot process, closes the
            # connection without an answer.
            assert raw.closed_by_server(WAIT)
            check_provisioning_outcome(gh, before, None)
            return
        # The PUBACK and the response (published although not subscribed); ThingsBoard sends the
        # PUBACK first, Gatehouse may send it second: MQTT does not order the two.
        # (first byte, body) of each: the PUBLISH (0x3_) sorts before the PUBACK (0x40).
        (first, response), puback = sorted((raw.read_packet(), raw.read_packet()))
        assert puback == (0x40, b"\x00\x05"), puback
        assert first >> 4 == 3, (first, response)
        topic_end = 2 + int.from_bytes(response[:2], "big")
        assert response[2:topic_end] == b"/provision/response"
        provisioned = json.loads(response[topic_end + (2 if first & 0x06 else 0):])
    check_provisioning_outcome(gh, before, provisioned)


# --- CoAP ---------------------------------------------------------------------------------------


class CoapClient:
    """One aiocoap client context for the whole module, on an event loop of its own: a context
    per example would reuse ports, and with them tokens and message ids the bridge may still be
    answering (a separate response to an earlier request, or its deduplication cache)."""

    def __init__(self, port: int):
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.context = self._run(aiocoap.Context.create_client_context(transports=["udp6"]))

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(WAIT * 2)

    def request(self, uri_path: tuple[str, ...], method: Code, payload: bytes) -> Message:
        async def send():
            request = Message(code=method, uri=f"coap://127.0.0.1:{self.port}", payload=payload)
            request.opt.uri_path = uri_path
            return await asyncio.wait_for(self.context.request(request).response, WAIT)
        return self._run(send())

    def close(self) -> None:
        self._run(self.context.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


@pytest.fixture(scope="module")
def coap_client(gh):
    client = CoapClient(gh.bridge.coap_port)
    yield client
    client.close()


FEATURES = ("telemetry", "attributes", "rpc", "claim", "provision")
coap_segments = st.text(max_size=12)


@fuzz_settings(80)
@given(uri_path=st.lists(st.sampled_from(["api", "v1", *FEATURES]) | coap_segments, max_size=5).map(tuple),
       method=st.sampled_from([Code.GET, Code.POST, Code.PUT, Code.DELETE]))
def test_coap_request_to_any_uri_is_refused_and_stores_nothing(gh, coap_client, uri_path, method):
    before = gh.database_state()
    response = coap_client.request(uri_path, method, b'{"fuzz": 1}')
    assert response.code in (Code.BAD_REQUEST, Code.UNAUTHORIZED, Code.NOT_FOUND, Code.METHOD_NOT_ALLOWED), (
        uri_path, response)
    if uri_path[:2] != ("api", "v1"):
        assert response.code == Code.NOT_FOUND
    elif method in (Code.PUT, Code.DELETE):
        assert response.code == Code.METHOD_NOT_ALLOWED
    elif len(uri_path) >= 4 and uri_path[3] in FEATURES[:4] and uri_path[2] not in FEATURES:
        assert response.code in (Code.UNAUTHORIZED, Code.BAD_REQUEST)  # an unknown token; GET telemetry 4.00
    assert gh.database_state() == before


@fuzz_settings(80)
@given(payload=hostile_payloads, attributes=st.booleans())
def test_coap_telemetry_and_attributes_are_2_01_exactly_when_the_parser_accepts_them_else_4_00(
        gh, coap_client, payload, attributes):
    feature, parse = ("attributes", parse_attributes) if attributes else ("telemetry", parse_telemetry)
    before = gh.database_state()
    response = coap_client.request(("api", "v1", gh.token, feature), Code.POST, payload)
    if isinstance(parse(payload), PayloadError):
        assert response.code == Code.BAD_REQUEST
        assert gh.database_state() == before
    else:
        assert response.code == Code.CREATED


@fuzz_settings(60)
@given(body=provision_bodies)
def test_coap_provisioning_with_any_body_is_2_01_on_success_and_4_00_otherwise(gh, coap_client, body):
    before = gh.database_state()
    response = coap_client.request(("api", "v1", "provision"), Code.POST, body)
    if not processable(body):
        assert (response.code, response.payload) == (Code.BAD_REQUEST, b"")
        check_provisioning_outcome(gh, before, None)
        return
    provisioned = json.loads(response.payload)
    assert response.code == (Code.CREATED if provisioned["status"] == "SUCCESS" else Code.BAD_REQUEST)
    check_provisioning_outcome(gh, before, provisioned)


# --- afterwards ---------------------------------------------------------------------------------


def test_after_the_bad_input_every_server_still_serves_a_well_behaved_device(gh, coap_client):
    """Runs last in the module (pytest keeps file order): whatever came before, a device still
    gets its telemetry stored over MQTT, HTTP and CoAP."""
    device, token = token_device(gh.broker, "well-behaved")
    client = connect(gh.broker.mqtt_port, unique("well-behaved"), token)
    assert client.return_code == 0
    assert client.publish("v1/devices/me/telemetry", json.dumps({"mqtt": 1}))
    answer = requests.post(f"{gh.sidecar.url}/api/v1/{token}/telemetry", json={"http": 2}, timeout=WAIT)
    assert answer.status_code == 200
    assert coap_client.request(("api", "v1", token, "telemetry"), Code.POST, b'{"coap": 3}').code == Code.CREATED
    with gh.registry() as registry:
        latest = registry.latest_telemetry(device.id)
    assert {key: point["value"] for key, point in latest.items()} == {"mqtt": 1, "http": 2, "coap": 3}
    assert all(process.process.poll() is None for process in (gh.broker, gh.sidecar, gh.bridge))
