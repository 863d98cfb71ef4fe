"""The CoAP bridge (SPEC §4.2, §6, §9.7): real `gatehouse broker`, `gatehouse sidecar` and
`gatehouse coap` processes on free ports, driven by libcoap's `coap-client-notls` (what device
makers use from a shell) and by aiocoap's client (where a test needs the CoAP code or Observe)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiocoap
import pytest
from aiocoap import Code, Message

from gatehouse.device_activity import ACTIVE, is_connected
from gatehouse.models import AttributeScope, ProvisionType
from gatehouse.payloads import kv_entries
from gatehouse.registry import Registry

from .coap_client import coap, coap_request
from .conftest import (
    broker_and_sidecar,
    free_port,
    start_broker,
    start_coap_bridge,
    start_sidecar,
)
from .devices import latest_telemetry, token_device, unique
from .mqtt_accounts import app_client
from .mqtt_client import body, wait_until
from .provisioning_answers import FAILURE_JSON, NOT_FOUND_JSON
from .sdk_paths import SCRIPTS, SDK_PYTHON

WAIT = 20  # seconds a test waits for anything that should happen
COAP_CLIENT = "coap-client-notls"
LOG_PROBLEMS = ("Traceback", "Task was destroyed", "Unclosed", "ResourceWarning", "never awaited",
                "Warning:", "Exception in callback")

needs_libcoap = pytest.mark.usefixtures("libcoap_clients")


class Gatehouse:
    def __init__(self, broker, sidecar, bridge):
        self.broker, self.sidecar, self.bridge = broker, sidecar, bridge

    @property
    def data_dir(self):
        return self.broker.data_dir

    def uri(self, *path: str) -> str:
        return self.bridge.url("api", "v1", *path)

    def registry(self) -> Registry:
        return Registry.open(self.data_dir)


@pytest.fixture(scope="module")
def gh(tmp_path_factory):
    root = tmp_path_factory.mktemp("coap-bridge")
    with broker_and_sidecar(root) as (broker, sidecar):
        # Warnings the bridge would print (unclosed sessions, un-awaited coroutines) land in its log.
        bridge = start_coap_bridge(root / "data", sidecar.url, root / "coap.log")
        yield Gatehouse(broker, sidecar, bridge)
        if bridge.process.poll() is None:
            bridge.stop()



# --- clients --------------------------------------------------------------------------------


def coap_client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([COAP_CLIENT, *args], capture_output=True, text=True, timeout=WAIT, check=False)


def make_profile(gh: Gatehouse, strategy: ProvisionType) -> tuple[str, str, str]:
    name, key, secret = unique("profile"), unique("key"), unique("secret")
    with gh.registry() as registry:
        registry.create_profile(name, strategy, key=key, secret=secret)
    return name, key, secret


# --- telemetry and attributes ---------------------------------------------------------------


@needs_libcoap
def test_the_seed_command_with_unquoted_keys_stores_the_temperature(gh):
    device, token = token_device(gh.broker)
    done = coap_client("-m", "post", gh.uri(token, "telemetry"), "-t", "json", "-e", "{temperature:25}")
    assert done.returncode == 0, done.stderr
    assert latest_telemetry(gh.broker, device.id)["temperature"]["value"] == 25


@pytest.mark.parametrize("reliable", [True, False], ids=["CON", "NON"])
def test_telemetry_and_attribute_posts_are_2_01_and_stored_con_and_non(gh, reliable):
    tuning = aiocoap.Reliable if reliable else aiocoap.Unreliable
    device, token = token_device(gh.broker)
    response = coap(gh.uri(token, "telemetry"), Code.POST, '{"ts": 1700000000000, "values": {"t": 21.5}}',
                    transport_tuning=tuning)
    assert response.code == Code.CREATED
    assert response.mtype == (aiocoap.ACK if reliable else aiocoap.NON)  # answered in kind
    assert latest_telemetry(gh.broker, device.id)["t"] == {"ts": 1700000000000, "value": 21.5}
    assert coap(gh.uri(token, "attributes"), Code.POST, '{"fw": "v1.2", "ok": true}', transport_tuning=tuning).code == Code.CREATED
    with gh.registry() as registry:
        assert registry.get_attributes(device.id, AttributeScope.CLIENT) == {"fw": "v1.2", "ok": True}


def test_attribute_get_returns_client_and_shared_values_and_4_04_when_nothing_is_found(gh):
    device, token = token_device(gh.broker)
    assert coap(gh.uri(token, "attributes")).code == Code.NOT_FOUND  # HTTP says {} here; CoAP 4.04
    with gh.registry() as registry:
        registry.save_attributes(device.id, AttributeScope.SHARED, kv_entries({"target": 21}))
    coap(gh.uri(token, "attributes"), Code.POST, '{"fw": "v1.0"}')
    response = coap(gh.uri(token, "attributes") + "?clientKeys=fw&sharedKeys=target")
    assert response.code == Code.CONTENT
    assert response.opt.content_format == aiocoap.numbers.ContentFormat.JSON
    assert json.loads(response.payload) == {"client": {"fw": "v1.0"}, "shared": {"target": 21}}
    assert coap(gh.uri(token, "attributes") + "?sharedKeys=missing").code == Code.NOT_FOUND


@needs_libcoap
def test_attribute_get_with_coap_client(gh):
    _, token = token_device(gh.broker)
    coap(gh.uri(token, "attributes"), Code.POST, '{"fw": "v1.0"}')
    done = coap_client("-m", "get", gh.uri(token, "attributes") + "?clientKeys=fw")
    assert done.returncode == 0 and json.loads(done.stdout) == {"client": {"fw": "v1.0"}}


def test_claim_is_2_01(gh):
    _, token = token_device(gh.broker)
    assert coap(gh.uri(token, "claim"), Code.POST, '{"secretKey": "s", "durationMs": 1000}').code == Code.CREATED
    assert coap(gh.uri(token, "claim"), Code.POST).code == Code.CREATED


@needs_libcoap
def test_block_wise_upload_is_reassembled_and_stored(gh, tmp_path):
    device, token = token_device(gh.broker)
    values = {f"key{i:03}": i for i in range(300)}
    payload = tmp_path / "big.json"
    payload.write_text(json.dumps(values))
    assert payload.stat().st_size > 64 * 20
    done = coap_client("-m", "post", "-t", "json", "-b", "64", "-f", str(payload), gh.uri(token, "telemetry"))
    assert done.returncode == 0, done.stderr
    stored = latest_telemetry(gh.broker, device.id)
    assert {key: entry["value"] for key, entry in stored.items()} == values


@needs_libcoap
def test_a_large_attribute_answer_is_sent_block_wise_to_a_client_asking_for_small_blocks(gh):
    device, token = token_device(gh.broker)
    values = {f"setting{i:03}": f"value-{i}" for i in range(100)}
    with gh.registry() as registry:
        registry.save_attributes(device.id, AttributeScope.SHARED, kv_entries(values))
    # -b 64: Block2 of 64 bytes; the answer is about 2.5 KB, so about 40 blocks reassembled by libcoap.
    done = coap_client("-m", "get", "-b", "64", gh.uri(token, "attributes") + "?sharedKeys=")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"shared": values}


# --- codes (SPEC §6) ------------------------------------------------------------------------


@pytest.mark.parametrize("method, path, payload, expected", [
    (Code.POST, ("{token}", "telemetry"), "{\"t\": 1}", Code.CREATED),
    (Code.POST, ("no-such-token", "telemetry"), "{\"t\": 1}", Code.UNAUTHORIZED),
    (Code.GET, ("no-such-token", "attributes"), "", Code.UNAUTHORIZED),
    (Code.POST, ("no-such-token", "telemetry"), "not json", Code.UNAUTHORIZED),  # the token is checked first
    (Code.POST, ("{token}", "telemetry"), "not json", Code.BAD_REQUEST),
    (Code.POST, ("{token}", "telemetry"), "[1, 2]", Code.BAD_REQUEST),
    (Code.POST, ("{token}", "attributes"), "[1]", Code.BAD_REQUEST),
    (Code.POST, ("{token}", "rpc"), "{\"params\": 1}", Code.BAD_REQUEST),
    (Code.GET, ("{token}", "telemetry"), "", Code.BAD_REQUEST),
    (Code.GET, ("{token}", "rpc"), "", Code.BAD_REQUEST),  # without Observe
    (Code.GET, ("{token}", "claim"), "", Code.BAD_REQUEST),
    (Code.POST, ("{token}", "firmware"), "{}", Code.BAD_REQUEST),
    (Code.POST, ("{token}",), "{}", Code.BAD_REQUEST),
    (Code.DELETE, ("{token}", "telemetry"), "", Code.METHOD_NOT_ALLOWED),
    (Code.PUT, ("{token}", "attributes"), "{}", Code.METHOD_NOT_ALLOWED),
    (Code.POST, ("telemetry",), "{\"t\": 1}", Code.UNAUTHORIZED),  # token-less without a certificate
    (Code.GET, ("attributes",), "", Code.UNAUTHORIZED),
    (Code.POST, ("", "telemetry"), "{\"t\": 1}", Code.UNAUTHORIZED),
    (Code.GET, ("provision",), "", Code.BAD_REQUEST),
])
def test_codes(gh, method, path, payload, expected):
    _, token = token_device(gh.broker)
    response = coap(gh.uri(*(p.format(token=token) for p in path)), method, payload)
    assert response.code == expected, response.payload


def test_paths_outside_api_v1_are_4_04(gh):
    assert coap(gh.bridge.url("api", "v2", "x", "telemetry"), Code.POST, "{}").code == Code.NOT_FOUND
    assert coap(gh.bridge.url("other")).code == Code.NOT_FOUND
    assert coap(gh.bridge.url("api")).code == Code.NOT_FOUND


def test_api_v1_without_a_feature_is_4_00_and_4_05_for_other_methods(gh):
    assert coap(gh.bridge.url("api", "v1")).code == Code.BAD_REQUEST
    assert coap(gh.bridge.url("api", "v1"), Code.POST, "{}").code == Code.BAD_REQUEST
    assert coap(gh.bridge.url("api", "v1"), Code.DELETE).code == Code.METHOD_NOT_ALLOWED


def test_hostile_tokens_are_refused_and_reach_nothing_else(gh):
    for token in ("..", ".", "a%2Fb", "%2F..", "x%3Fy", "provision"):
        response = coap(gh.uri(token, "telemetry"), Code.POST, '{"t": 1}')
        assert response.code == Code.UNAUTHORIZED, token


# --- provisioning (SPEC §4.2) ---------------------------------------------------------------


def provision(gh: Gatehouse, request) -> Message:
    payload = request if isinstance(request, (bytes, str)) else json.dumps(request)
    return coap(gh.uri("provision"), Code.POST, payload)


def test_provision_success_is_2_01_with_the_credentials_and_they_work(gh):
    _, key, secret = make_profile(gh, ProvisionType.ALLOW_CREATE_NEW_DEVICES)
    name = unique("coap-provisioned")
    response = provision(gh, {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret})
    assert response.code == Code.CREATED
    answer = json.loads(response.payload)
    assert (answer["status"], answer["credentialsType"]) == ("SUCCESS", "ACCESS_TOKEN")
    with gh.registry() as registry:
        device = registry.get_device(name)
        assert registry.provisioning_events(device.id)[-1]["outcome"] == "SUCCESS"
    assert coap(gh.uri(answer["credentialsValue"], "telemetry"), Code.POST, '{"hello": 1}').code == Code.CREATED
    assert latest_telemetry(gh.broker, device.id)["hello"]["value"] == 1


def test_provision_not_found_and_failure_are_4_00_with_the_json(gh):
    _, key, secret = make_profile(gh, ProvisionType.CHECK_PRE_PROVISIONED_DEVICES)
    response = provision(gh, {"deviceName": unique("x"), "provisionDeviceKey": unique("unknown"),
                              "provisionDeviceSecret": secret})
    assert (response.code, json.loads(response.payload)) == (Code.BAD_REQUEST, NOT_FOUND_JSON)
    response = provision(gh, {"deviceName": unique("not-pre"), "provisionDeviceKey": key,
                              "provisionDeviceSecret": secret})
    assert (response.code, json.loads(response.payload)) == (Code.BAD_REQUEST, FAILURE_JSON)


@pytest.mark.parametrize("payload", [b"", b"not json", b"[1]", b'{"provisionDeviceKey": "k"}',
                                     b'{"provisionDeviceSecret": "s"}'])
def test_undecodable_provision_request_is_4_00_without_a_body(gh, payload):
    response = provision(gh, payload)
    assert (response.code, response.payload) == (Code.BAD_REQUEST, b"")


@needs_libcoap
def test_provision_with_coap_client(gh):
    _, key, secret = make_profile(gh, ProvisionType.ALLOW_CREATE_NEW_DEVICES)
    done = coap_client("-m", "post", "-t", "json", gh.uri("provision"), "-e",
                       json.dumps({"deviceName": unique("cli"), "provisionDeviceKey": key,
                                   "provisionDeviceSecret": secret}))
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "SUCCESS"


def test_thingsboard_coapthon3_provisioning_script(gh):
    """ThingsBoard's CoAP provisioning example runs CoAPthon3's HelperClient; it installs on
    Python 3.11, so the script runs with it in .venv-sdk (built by `make test`)."""
    if not SDK_PYTHON.exists():
        pytest.fail(f"{SDK_PYTHON} is missing: `make test` builds it (ThingsBoard's SDK and CoAPthon3)")
    _, key, secret = make_profile(gh, ProvisionType.ALLOW_CREATE_NEW_DEVICES)
    name = unique("coapthon")
    done = subprocess.run([str(SDK_PYTHON), str(SCRIPTS / "coapthon_provision.py"), "127.0.0.1",
                           str(gh.bridge.coap_port), name, key, secret],
                          capture_output=True, text=True, timeout=WAIT * 2, check=False)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"provision_code": outcome["created"], "status": "SUCCESS",
                       "telemetry_code": outcome["created"], "created": 65}
    with gh.registry() as registry:
        device = registry.get_device(name)
    assert latest_telemetry(gh.broker, device.id)["temperature"]["value"] == 22.5


def test_thingsboard_provisioning_script_steps(gh):
    """What ThingsBoard's CoAP provisioning example (CoAPthon3 HelperClient) does: POST the
    request JSON to /api/v1/provision, read credentialsValue from the answer, then POST
    telemetry with it; here with aiocoap's client, which needs no second virtualenv."""
    _, key, secret = make_profile(gh, ProvisionType.ALLOW_CREATE_NEW_DEVICES)
    name = unique("tb-script")

    async def script():
        context = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            request = {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret}
            answer = await context.request(Message(code=Code.POST, uri=gh.uri("provision"),
                                                   payload=json.dumps(request).encode())).response
            credentials = json.loads(answer.payload.decode())
            assert credentials["status"] == "SUCCESS"
            telemetry = await context.request(Message(
                code=Code.POST, uri=gh.uri(credentials["credentialsValue"], "telemetry"),
                payload=b'{"temperature": 22.5}')).response
            return answer.code, telemetry.code
        finally:
            await context.shutdown()

    assert asyncio.run(asyncio.wait_for(script(), WAIT)) == (Code.CREATED, Code.CREATED)
    with gh.registry() as registry:
        device = registry.get_device(name)
    assert latest_telemetry(gh.broker, device.id)["temperature"]["value"] == 22.5


# --- Observe and RPC ------------------------------------------------------------------------


async def _observe(uri: str, acts, *, repeat: bool = False, **options) -> list[Message]:
    """Observe `uri`: the first response, then one notification after each of `acts` (run in a
    thread); with `repeat`, an act is repeated until its notification comes (the sidecar hands a
    shared-attribute change only to a long poll open at that moment). Cancelled at the end."""
    context = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        request = context.request(Message(code=Code.GET, uri=uri, observe=0, **options))
        seen = [await asyncio.wait_for(request.response, WAIT)]
        if acts:
            notifications = aiter(request.observation)
            for act in acts:
                deadline = time.monotonic() + WAIT
                waiting = asyncio.ensure_future(anext(notifications))
                try:
                    while True:
                        await asyncio.to_thread(act)
                        done, _ = await asyncio.wait({waiting}, timeout=1.0 if repeat else WAIT)
                        if done or time.monotonic() > deadline:
                            break
                    seen.append(await asyncio.wait_for(waiting, 0.1))
                finally:
                    waiting.cancel()
        if not request.observation.cancelled:
            request.observation.cancel()
        return seen
    finally:
        await context.shutdown()


def test_observe_attributes_gets_the_current_state_then_each_change(gh, clients):
    device, token = token_device(gh.broker)
    with gh.registry() as registry:
        registry.save_attributes(device.id, AttributeScope.SHARED, kv_entries({"fw": "v1.0"}))
    app = app_client(gh.broker, clients)
    topic = f"gatehouse/devices/{device.id}/attributes/shared"

    acts = [lambda: app.publish(topic, '{"fw": "v2.0"}'), lambda: app.publish(topic, '{"deleted": ["fw"]}')]
    first, update, deleted = asyncio.run(_observe(gh.uri(token, "attributes"), acts, repeat=True))
    assert (first.code, first.opt.observe, json.loads(first.payload)) == (Code.CONTENT, 0, {"fw": "v1.0"})
    assert (update.code, json.loads(update.payload)) == (Code.CONTENT, {"fw": "v2.0"})
    assert (deleted.code, json.loads(deleted.payload)) == (Code.CONTENT, {"deleted": ["fw"]})
    assert 0 < update.opt.observe < deleted.opt.observe


def test_an_observation_connects_its_device_and_plain_requests_only_make_it_active(gh):
    """A CoAP observation is a session, as an MQTT one is (the web UI's "Connected now");
    a POST is activity only, as an HTTP request is."""
    observer, observer_token = token_device(gh.broker)
    poster, poster_token = token_device(gh.broker)

    def activity(device) -> dict:
        with gh.registry() as registry:
            return registry.device_activity(device.id)

    async def connected_while_observing() -> bool:
        context = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            request = context.request(Message(code=Code.GET, uri=gh.uri(observer_token, "attributes"), observe=0))
            assert (await asyncio.wait_for(request.response, WAIT)).code == Code.CONTENT
            connected = await asyncio.to_thread(wait_until, lambda: is_connected(activity(observer)))
            request.observation.cancel()
            return connected
        finally:
            await context.shutdown()

    assert coap(gh.uri(poster_token, "telemetry"), Code.POST, '{"t": 1}').code == Code.CREATED
    assert asyncio.run(connected_while_observing())
    assert wait_until(lambda: activity(poster).get(ACTIVE) is True)
    assert not is_connected(activity(poster))


def test_observe_attributes_of_a_device_without_any_starts_with_an_empty_object(gh):
    _, token = token_device(gh.broker)
    (first,) = asyncio.run(_observe(gh.uri(token, "attributes"), []))
    assert (first.code, first.opt.observe, first.payload) == (Code.CONTENT, 0, b"{}")


def test_observe_with_an_unknown_token_is_4_01(gh):
    for feature in ("attributes", "rpc"):
        (first,) = asyncio.run(_observe(gh.uri("no-such-token", feature), []))
        assert (first.code, first.opt.observe) == (Code.UNAUTHORIZED, None)


def test_observe_deregistration_is_2_02(gh):
    _, token = token_device(gh.broker)
    assert coap(gh.uri(token, "attributes"), observe=1).code == Code.DELETED


@pytest.mark.parametrize("reliable", [True, False], ids=["CON", "NON"])
def test_observe_rpc_is_2_03_then_each_call_and_the_reply_reaches_the_application(gh, clients, reliable):
    tuning = aiocoap.Reliable if reliable else aiocoap.Unreliable
    device, token = token_device(gh.broker)
    app = app_client(gh.broker, clients, f"gatehouse/devices/{device.id}/rpc/response/+")

    def call():
        assert app.publish(f"gatehouse/devices/{device.id}/rpc/call/77", '{"method": "setGpio", "params": {"pin": 4}}')

    first, notification = asyncio.run(_observe(gh.uri(token, "rpc"), [call], transport_tuning=tuning))
    assert (first.code, first.opt.observe, first.payload) == (Code.VALID, 0, b"")
    assert notification.code == Code.CONTENT
    assert json.loads(notification.payload) == {"id": 77, "method": "setGpio", "params": {"pin": 4}}
    reply = b'{"pin": 4, "value": true}'
    assert coap(gh.uri(token, "rpc", "77"), Code.POST, reply, transport_tuning=tuning).code == Code.CREATED
    message = app.next_message(timeout=WAIT)
    assert (message.topic, message.payload) == (f"gatehouse/devices/{device.id}/rpc/response/77", reply)


def test_client_side_rpc_is_2_05_with_the_applications_reply(gh, clients):
    device, token = token_device(gh.broker)
    prefix = f"gatehouse/devices/{device.id}/rpc/request/"
    app = app_client(gh.broker, clients, prefix + "+")

    async def call():
        request = asyncio.create_task(coap_request(gh.uri(token, "rpc"), Code.POST,
                                                   b'{"method": "getCurrentTime", "params": {}}'))
        message = await asyncio.to_thread(app.next_message, WAIT)
        assert body(message) == {"method": "getCurrentTime", "params": {}}
        assert await asyncio.to_thread(app.publish, f"gatehouse/devices/{device.id}/rpc/reply/"
                                       + message.topic[len(prefix):], '{"time": 1700000000000}')
        return await request

    response = asyncio.run(call())
    assert (response.code, json.loads(response.payload)) == (Code.CONTENT, {"time": 1700000000000})


# --- the bridge itself ----------------------------------------------------------------------


def test_sidecar_down_is_5_03_quickly_and_back_up_works_again(tmp_path):
    broker = start_broker(tmp_path / "data", tmp_path / "broker.log")
    http_port = free_port()  # the bridge is told it, and the sidecar comes back on it
    sidecar = start_sidecar(broker, tmp_path / "sidecar-1.log", "--http-port", str(http_port))
    bridge = start_coap_bridge(broker.data_dir, f"http://127.0.0.1:{http_port}", tmp_path / "coap.log")
    try:
        device, token = token_device(broker)
        assert coap(bridge.url("api", "v1", token, "telemetry"), Code.POST, '{"t": 1}').code == Code.CREATED
        assert sidecar.stop() == 0
        started = time.monotonic()
        assert coap(bridge.url("api", "v1", token, "telemetry"), Code.POST, '{"t": 2}').code == Code.SERVICE_UNAVAILABLE
        assert coap(bridge.url("api", "v1", "provision"), Code.POST, "{}").code == Code.SERVICE_UNAVAILABLE
        assert time.monotonic() - started < 10  # a hang guard, not a timing requirement
        sidecar = start_sidecar(broker, tmp_path / "sidecar-2.log", "--http-port", str(http_port))
        assert coap(bridge.url("api", "v1", token, "telemetry"), Code.POST, '{"t": 3}').code == Code.CREATED
        assert latest_telemetry(broker, device.id)["t"]["value"] == 3
    finally:
        for process in (bridge, sidecar, broker):
            if process.process.poll() is None:
                process.stop()
    assert bridge.process.returncode == 0
    assert not [problem for problem in LOG_PROBLEMS if problem in bridge.log()], bridge.log()


def test_a_stalled_sidecar_is_5_00_after_the_sidecar_timeout_and_then_works_again(tmp_path):
    """SIGSTOP freezes the real sidecar with its port open: the kernel still accepts connections
    and nothing answers them, the hang `--sidecar-timeout` bounds."""
    with broker_and_sidecar(tmp_path) as (broker, sidecar):
        bridge = start_coap_bridge(broker.data_dir, sidecar.url, tmp_path / "coap.log", "--sidecar-timeout", "1")
        try:
            stalled = Gatehouse(broker, sidecar, bridge)
            device, token = token_device(broker)
            _, key, secret = make_profile(stalled, ProvisionType.ALLOW_CREATE_NEW_DEVICES)
            assert coap(stalled.uri(token, "telemetry"), Code.POST, '{"t": 1}').code == Code.CREATED
            os.kill(sidecar.process.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                assert coap(stalled.uri(token, "telemetry"), Code.POST, '{"t": 2}').code == Code.INTERNAL_SERVER_ERROR
                response = provision(stalled, {"deviceName": unique("stalled"), "provisionDeviceKey": key,
                                               "provisionDeviceSecret": secret})
                assert response.code == Code.INTERNAL_SERVER_ERROR
                # A hang guard, not a timing requirement: the default timeout would take 20 s here.
                assert time.monotonic() - started < 10
            finally:
                os.kill(sidecar.process.pid, signal.SIGCONT)
            assert coap(stalled.uri(token, "telemetry"), Code.POST, '{"resumed": 3}').code == Code.CREATED
            # Its own key: the stalled {"t": 2} may still be stored after it, on another sidecar thread.
            assert wait_until(lambda: latest_telemetry(broker, device.id).get("resumed", {}).get("value") == 3)
        finally:
            bridge.stop()
    assert bridge.process.returncode == 0
    assert not [problem for problem in LOG_PROBLEMS if problem in bridge.log()], bridge.log()


def test_nothing_listens_on_tcp_at_the_coap_ports(gh, tmp_path):
    """UDP only. aiocoap's server also opens coap+tcp unless told not to, on the port it is given
    (5683 when given 0), so this bridge is given ports that are free."""
    coap_port, coaps_port = free_port(), free_port()
    bridge = start_coap_bridge(gh.data_dir, gh.sidecar.url, tmp_path / "coap.log",
                               "--coap-port", str(coap_port), "--coaps-port", str(coaps_port))
    try:
        assert bridge.coap_port == coap_port
        assert coap(bridge.url("api", "v1", "no-such-token", "telemetry"), Code.POST, "{}").code == Code.UNAUTHORIZED
        for port in (coap_port, coaps_port):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
    finally:
        bridge.stop()


@needs_libcoap
def test_the_bridge_process_serves_coap_over_dtls_one_way_and_two_way(gh, tmp_path):
    """`gatehouse coap` itself listens for DTLS with the data dir's server certificate: a token
    in the path over one-way DTLS, and a certificate from `gatehouse pki issue` on a token-less
    path over two-way DTLS (tests/test_coap_dtls.py covers the transport in depth)."""
    ca = gh.data_dir / "pki" / "ca.pem"
    device, token = token_device(gh.broker, "coaps")
    one_way = subprocess.run(["coap-client-openssl", "-R", str(ca), "-m", "post", "-t", "json", "-e", "{secure:1}",
                              gh.bridge.secure_url("api", "v1", token, "telemetry")],
                             capture_output=True, text=True, timeout=60, check=False)
    assert one_way.returncode == 0, one_way.stderr
    assert wait_until(lambda: "secure" in latest_telemetry(gh.broker, device.id))
    name = unique("coaps-x509")
    for args in (["pki", "issue", name, "--out", str(tmp_path)], ["device", "create", name, "--cert",
                                                                  str(tmp_path / f"{name}.pem")]):
        subprocess.run([sys.executable, "-m", "gatehouse", "--data-dir", str(gh.data_dir), *args], check=True,
                       capture_output=True, timeout=60)
    two_way = subprocess.run(["coap-client-openssl", "-R", str(ca), "-c", str(tmp_path / f"{name}.pem"),
                              "-j", str(tmp_path / f"{name}.key"), "-m", "post", "-t", "json", "-e", '{"mutual":2}',
                              gh.bridge.secure_url("api", "v1", "telemetry")], capture_output=True, text=True,
                             timeout=60, check=False)
    assert two_way.returncode == 0, two_way.stderr
    with gh.registry() as registry:
        x509_device = registry.find_device(name)
    assert wait_until(lambda: latest_telemetry(gh.broker, x509_device.id).get("mutual", {}).get("value") == 2)


def test_a_busy_port_is_a_one_line_error(gh, tmp_path):
    done = subprocess.run(
        [*_gatehouse(gh), "coap", "--host", "127.0.0.1", "--coap-port", str(gh.bridge.coap_port),
         "--sidecar-url", gh.sidecar.url], capture_output=True, text=True, timeout=WAIT, check=False)
    assert done.returncode != 0
    expected = (f"Error: the CoAP bridge could not start: cannot listen on UDP 127.0.0.1:{gh.bridge.coap_port}: "
                "Address already in use")
    assert done.stderr.strip().splitlines() == [expected]


def _gatehouse(gh):
    import sys
    return [sys.executable, "-m", "gatehouse", "--data-dir", str(gh.data_dir)]


def test_zz_the_bridge_stops_cleanly_without_leaks(gh):
    """Last in the module: after every test above, SIGTERM stops the bridge with status 0 and its
    log shows no traceback, un-awaited coroutine, destroyed pending task or unclosed session."""
    assert gh.bridge.stop() == 0
    log = gh.bridge.log()
    assert not [problem for problem in LOG_PROBLEMS if problem in log], log


# --- the observation feeds, in-process (no leaked tasks) ------------------------------------


class _FakeSidecar:
    """A Forwarder whose device is always known and whose long polls bring a change every 0.2 s."""

    def __init__(self):
        self.polls = 0

    async def request(self, method, path, query=None, body=b"", *, client_certificate=None, timeout=None):
        from coap_bridge.interfaces import HttpAnswer
        if path.endswith(("/updates", "/rpc")):
            self.polls += 1
            await asyncio.sleep(0.2)
            return HttpAnswer(200, b'{"n": %d}' % self.polls, "application/json")
        return HttpAnswer(200, b"{}", "application/json")

    async def close(self):
        pass


def test_a_feed_runs_while_observed_and_its_task_ends_with_the_last_observer():
    from coap_bridge.resources import ApiV1
    from coap_bridge.server import CoapSettings, start

    async def scenario():
        sidecar = _FakeSidecar()
        api = ApiV1(sidecar)
        server, _, port = await start(CoapSettings(data_dir=Path("."), host="127.0.0.1", coap_port=0), api)
        client = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            before = asyncio.all_tasks()
            uri = f"coap://127.0.0.1:{port}/api/v1/TOKEN/attributes"
            observations = [client.request(Message(code=Code.GET, uri=uri, observe=0)) for _ in range(2)]
            for observation in observations:
                assert (await asyncio.wait_for(observation.response, WAIT)).code == Code.CONTENT
            assert api.feed_count() == 1  # one device and feature, one feed: the newer observer replaced the older
            for observation in observations:
                if not observation.observation.cancelled:
                    observation.observation.cancel()  # the server learns it from the next notification's RST
            def feed_tasks() -> list[asyncio.Task]:
                return [t for t in asyncio.all_tasks() - before if "coap-feed" in t.get_name()]

            for _ in range(100):  # a feed is forgotten first, its cancelled task ends a moment later
                if api.feed_count() == 0 and not feed_tasks():
                    break
                await asyncio.sleep(0.05)
            return api.feed_count(), feed_tasks()
        finally:
            await client.shutdown()
            await api.close()
            await server.shutdown()

    feeds, feed_tasks = asyncio.run(scenario())
    assert (feeds, feed_tasks) == (0, [])
