"""Token guessing over HTTP, CoAP and DTLS (issue 15): an address whose device requests name
--max-failed-logins unknown tokens is refused for --block-seconds (HTTP 429 with Retry-After,
CoAP 4.29 with Max-Age), even with a valid token, while every other address works.

Real `gatehouse broker`, `gatehouse sidecar` and `gatehouse coap` processes on free ports. The
guessing clients send from other loopback addresses (Linux routes all of 127.0.0.0/8 to lo), each
test from addresses of its own, so that one test's blocks never reach another's. No test asserts
how long anything took: the block's end is waited for with a generous deadline.
"""
from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import aiocoap
import pytest
from aiocoap import Code, Message

from coap_bridge.resources import ApiV1
from coap_bridge.server import CoapSettings, start
from gatehouse.login_limiter import LoginLimiter

from .conftest import (
    RunningBroker,
    RunningCoapBridge,
    RunningSidecar,
    broker_and_sidecar,
    start_coap_bridge,
)
from .devices import latest_telemetry, token_device, unique
from .metrics_scrape import scrape
from .mqtt_client import wait_until

MAX_FAILED_LOGINS = 3
BLOCK_SECONDS = 600  # longer than the module: a block seen once stays for every later assertion
SHORT_BLOCK_SECONDS = 3  # the test of a block's end waits this long
LIMITS = ("--max-failed-logins", str(MAX_FAILED_LOGINS), "--block-seconds", str(BLOCK_SECONDS))
WAIT = 20  # seconds for anything that should happen
TELEMETRY = b'{"t": 1}'
TOO_MANY = "Too many requests with unknown access tokens from this address; try again later"
LIBCOAP_RESPONSE = re.compile(r"^v:1 t:\S+ c:([2-5]\.[0-9]{2}) \S+ \{[0-9a-f]*\} \[(.*?)\]", re.MULTILINE)
needs_libcoap = pytest.mark.usefixtures("libcoap_clients")

_addresses = (f"127.0.{n // 250}.{n % 250 + 2}" for n in itertools.count(1))


def fresh_address() -> str:
    """A loopback address no other test of the module sends from (never 127.0.0.1)."""
    return next(_addresses)


@dataclass
class Gatehouse:
    broker: RunningBroker
    sidecar: RunningSidecar
    bridge: RunningCoapBridge


@pytest.fixture(scope="module")
def gh(tmp_path_factory):
    root = tmp_path_factory.mktemp("token-guessing")
    with broker_and_sidecar(root, sidecar_options=LIMITS) as (broker, sidecar):
        bridge = start_coap_bridge(broker.data_dir, sidecar.url, root / "coap.log", *LIMITS)
        try:
            yield Gatehouse(broker, sidecar, bridge)
        finally:
            bridge.stop()


@pytest.fixture
def short_blocks(gh, sidecar_factory, tmp_path):
    """A second sidecar and bridge on the module's broker, whose blocks last SHORT_BLOCK_SECONDS."""
    limits = ("--max-failed-logins", str(MAX_FAILED_LOGINS), "--block-seconds", str(SHORT_BLOCK_SECONDS))
    sidecar = sidecar_factory(gh.broker, *limits)
    bridge = start_coap_bridge(gh.broker.data_dir, sidecar.url, tmp_path / "coap.log", *limits)
    try:
        yield sidecar, bridge
    finally:
        bridge.stop()


# --- clients ------------------------------------------------------------------------------------

@dataclass
class HttpAnswer:
    status: int
    retry_after: str | None
    body: bytes

    def json(self):
        return json.loads(self.body)


def http_from(address: str, port: int, method: str, path: str, body: bytes = b"",
              headers: dict[str, str] | None = None) -> HttpAnswer:
    """One request to the sidecar on `port`, sent from `address`."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT, source_address=(address, 0))
    try:
        connection.request(method, path, body or None, {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return HttpAnswer(response.status, response.getheader("Retry-After"), response.read())
    finally:
        connection.close()


def post_telemetry(address: str, sidecar: RunningSidecar, token: str, **headers: str) -> HttpAnswer:
    return http_from(address, sidecar.http_port, "POST", f"/api/v1/{token}/telemetry", TELEMETRY, headers)


def coap_from(address: str, uri: str, method=Code.POST, payload: bytes = TELEMETRY, **options) -> Message:
    """One CoAP request from `address`: aiocoap's client has no source address, so a server context
    bound to it sends the request."""
    async def request() -> Message:
        context = await aiocoap.Context.create_server_context(None, bind=(address, 0), transports=["udp6"])
        try:
            message = Message(code=method, uri=uri, payload=payload, **options)
            return await asyncio.wait_for(context.request(message).response, WAIT)
        finally:
            await context.shutdown()

    return asyncio.run(request())


def coap_telemetry(address: str, bridge: RunningCoapBridge, token: str) -> Message:
    return coap_from(address, bridge.url("api", "v1", token, "telemetry"))


@dataclass
class LibcoapAnswer:
    code: str | None  # the last response code libcoap printed; None: no response
    options: str  # its options as libcoap prints them, e.g. "Max-Age:600"
    log: str


def dtls_from(address: str, broker: RunningBroker, bridge: RunningCoapBridge, token: str) -> LibcoapAnswer:
    """POST telemetry over one-way DTLS with `coap-client-openssl`, from `address` (its -a)."""
    done = subprocess.run(["coap-client-openssl", "-v", "6", "-B", "15", "-a", address,
                           "-R", str(broker.ca_cert), "-m", "post", "-e", TELEMETRY.decode(),
                           bridge.secure_url("api", "v1", token, "telemetry")],
                          check=False, capture_output=True, text=True, timeout=60)
    log = done.stdout + done.stderr
    responses = LIBCOAP_RESPONSE.findall(log)
    code, options = responses[-1] if responses else (None, "")
    return LibcoapAnswer(code, options, log)


def wrong_token() -> str:
    return unique("guess")


def blocked_addresses(port: int) -> float:
    return scrape(port)["gatehouse_blocked_addresses"][()]


def blocked_requests(port: int, transport: str) -> float:
    return scrape(port).get("gatehouse_logins_total", {}).get(("UNKNOWN", "BLOCKED", transport), 0)


# --- HTTP ---------------------------------------------------------------------------------------

def test_http_address_with_too_many_unknown_tokens_gets_429_even_with_a_valid_token_while_others_work(gh):
    device, token = token_device(gh.broker)
    guesser = fresh_address()
    assert [post_telemetry(guesser, gh.sidecar, wrong_token()).status
            for _ in range(MAX_FAILED_LOGINS)] == [401] * MAX_FAILED_LOGINS

    refused = post_telemetry(guesser, gh.sidecar, token)  # the valid token, from the blocked address
    assert refused.status == 429
    assert 1 <= int(refused.retry_after) <= BLOCK_SECONDS
    assert (refused.json()["status"], refused.json()["errorCode"], refused.json()["message"]) == (429, 33, TOO_MANY)
    assert http_from(guesser, gh.sidecar.http_port, "GET", f"/api/v1/{token}/attributes").status == 429
    assert "t" not in latest_telemetry(gh.broker, device.id)

    # Other addresses, 127.0.0.1 among them, are not affected.
    assert post_telemetry("127.0.0.1", gh.sidecar, token).status == 200
    assert post_telemetry(fresh_address(), gh.sidecar, token).status == 200
    assert latest_telemetry(gh.broker, device.id)["t"]["value"] == 1
    # Provisioning names no token: a blocked address still gets ThingsBoard's answer.
    provision = json.dumps({"deviceName": unique("p"), "provisionDeviceKey": unique("k"),
                            "provisionDeviceSecret": unique("s")}).encode()
    answer = http_from(guesser, gh.sidecar.http_port, "POST", "/api/v1/provision", provision)
    assert (answer.status, answer.json()["status"]) == (200, "NOT_FOUND")


def test_http_a_valid_token_between_guesses_does_not_clear_them(gh):
    _device, token = token_device(gh.broker)
    guesser = fresh_address()
    statuses = []
    for _ in range(MAX_FAILED_LOGINS):
        statuses.append(post_telemetry(guesser, gh.sidecar, wrong_token()).status)
        statuses.append(post_telemetry(guesser, gh.sidecar, token).status)
    assert statuses == [401, 200] * (MAX_FAILED_LOGINS - 1) + [401, 429]


def test_http_a_client_that_claims_to_be_the_coap_bridge_without_its_password_is_limited(gh):
    _device, token = token_device(gh.broker)
    guesser = fresh_address()
    claims = {"X-Gatehouse-Transport": "COAP", "Authorization": "Basic Z2F0ZWhvdXNlLXNlcnZpY2U6Y29hcDpndWVzcw=="}
    assert [post_telemetry(guesser, gh.sidecar, wrong_token(), **claims).status
            for _ in range(MAX_FAILED_LOGINS)] == [401] * MAX_FAILED_LOGINS
    assert post_telemetry(guesser, gh.sidecar, token, **claims).status == 429


def test_http_blocks_are_in_the_sidecars_metrics(gh):
    _device, token = token_device(gh.broker)
    blocked, refused = blocked_addresses(gh.sidecar.http_port), blocked_requests(gh.sidecar.http_port, "HTTP")
    guesser = fresh_address()
    for _ in range(MAX_FAILED_LOGINS):
        post_telemetry(guesser, gh.sidecar, wrong_token())
    assert [post_telemetry(guesser, gh.sidecar, token).status for _ in range(2)] == [429, 429]
    assert blocked_addresses(gh.sidecar.http_port) == blocked + 1
    assert blocked_requests(gh.sidecar.http_port, "HTTP") == refused + 2


# --- CoAP and DTLS ------------------------------------------------------------------------------

def test_coap_address_with_too_many_unknown_tokens_gets_4_29_with_max_age_even_with_a_valid_token(gh):
    device, token = token_device(gh.broker)
    guesser = fresh_address()
    blocked, refused = blocked_addresses(gh.bridge.metrics_port), blocked_requests(gh.bridge.metrics_port, "COAP")
    assert [coap_telemetry(guesser, gh.bridge, wrong_token()).code
            for _ in range(MAX_FAILED_LOGINS)] == [Code.UNAUTHORIZED] * MAX_FAILED_LOGINS

    refused_post = coap_telemetry(guesser, gh.bridge, token)
    assert refused_post.code == Code.TOO_MANY_REQUESTS
    assert 1 <= refused_post.opt.max_age <= BLOCK_SECONDS
    assert refused_post.payload.decode() == TOO_MANY
    attributes = gh.bridge.url("api", "v1", token, "attributes")
    assert coap_from(guesser, attributes, Code.GET, b"").code == Code.TOO_MANY_REQUESTS
    assert coap_from(guesser, attributes, Code.GET, b"", observe=0).code == Code.TOO_MANY_REQUESTS
    assert "t" not in latest_telemetry(gh.broker, device.id)
    assert blocked_addresses(gh.bridge.metrics_port) == blocked + 1
    assert blocked_requests(gh.bridge.metrics_port, "COAP") == refused + 3

    assert coap_telemetry("127.0.0.1", gh.bridge, token).code == Code.CREATED
    assert coap_telemetry(fresh_address(), gh.bridge, token).code == Code.CREATED
    assert latest_telemetry(gh.broker, device.id)["t"]["value"] == 1
    provision = json.dumps({"deviceName": unique("p"), "provisionDeviceKey": unique("k"),
                            "provisionDeviceSecret": unique("s")}).encode()
    answer = coap_from(guesser, gh.bridge.url("api", "v1", "provision"), payload=provision)
    assert (answer.code, json.loads(answer.payload)["status"]) == (Code.BAD_REQUEST, "NOT_FOUND")


def test_many_coap_clients_failing_a_few_times_each_never_block_the_bridge_nor_each_other(gh):
    _device, token = token_device(gh.broker)
    sidecar_blocks = blocked_addresses(gh.sidecar.http_port)
    # Together they send the sidecar, through the bridge, many times its limit of unknown tokens.
    clients = [fresh_address() for _ in range(6)]
    for address in clients:
        assert [coap_telemetry(address, gh.bridge, wrong_token()).code
                for _ in range(MAX_FAILED_LOGINS - 1)] == [Code.UNAUTHORIZED] * (MAX_FAILED_LOGINS - 1)
    guesser = fresh_address()
    for _ in range(MAX_FAILED_LOGINS):
        coap_telemetry(guesser, gh.bridge, wrong_token())
    assert coap_telemetry(guesser, gh.bridge, token).code == Code.TOO_MANY_REQUESTS  # the one over the limit

    assert [coap_telemetry(address, gh.bridge, token).code for address in clients] == [Code.CREATED] * len(clients)
    assert coap_telemetry("127.0.0.1", gh.bridge, token).code == Code.CREATED
    # The bridge's address (127.0.0.1 here, as an HTTP client's) is not blocked at the sidecar.
    assert blocked_addresses(gh.sidecar.http_port) == sidecar_blocks
    assert post_telemetry("127.0.0.1", gh.sidecar, token).status == 200


@needs_libcoap
def test_dtls_address_with_too_many_unknown_tokens_gets_4_29_with_max_age_even_with_a_valid_token(gh):
    device, token = token_device(gh.broker)
    guesser = fresh_address()
    answers = [dtls_from(guesser, gh.broker, gh.bridge, wrong_token()) for _ in range(MAX_FAILED_LOGINS)]
    assert [a.code for a in answers] == ["4.01"] * MAX_FAILED_LOGINS, answers[-1].log

    refused = dtls_from(guesser, gh.broker, gh.bridge, token)
    assert refused.code == "4.29", refused.log
    max_age = re.search(r"Max-Age:([0-9]+)", refused.options)
    assert max_age is not None and 1 <= int(max_age[1]) <= BLOCK_SECONDS, refused.log
    assert "t" not in latest_telemetry(gh.broker, device.id)

    assert dtls_from("127.0.0.1", gh.broker, gh.bridge, token).code == "2.01"
    assert latest_telemetry(gh.broker, device.id)["t"]["value"] == 1


def test_a_blocked_address_does_not_replace_a_devices_observation():
    """As ThingsBoard, a new observation of a device's attributes replaces the older one: one
    from a blocked address must not, even with the device's token (a sidecar stand-in here, whose
    long polls bring a change every 0.2 s)."""
    class ChangingAttributes:
        async def request(self, method, path, query=None, body=b"", *, client_certificate=None, timeout=None):
            from coap_bridge.interfaces import HttpAnswer
            if path.endswith("/updates"):
                await asyncio.sleep(0.2)
                return HttpAnswer(200, b'{"fw": "v2"}', "application/json")
            return HttpAnswer(200, b'{"client": {}, "shared": {}}', "application/json")

        async def close(self):
            pass

    limiter = LoginLimiter(MAX_FAILED_LOGINS, BLOCK_SECONDS)
    for _ in range(MAX_FAILED_LOGINS):
        limiter.failed("127.0.0.2")

    async def scenario() -> tuple[Code, list[Code]]:
        api = ApiV1(ChangingAttributes(), limiter=limiter)
        server, _, port = await start(CoapSettings(data_dir=Path("."), host="127.0.0.1", coap_port=0), api)
        device = await aiocoap.Context.create_client_context(transports=["udp6"])
        blocked = await aiocoap.Context.create_server_context(None, bind=("127.0.0.2", 0), transports=["udp6"])
        try:
            uri = f"coap://127.0.0.1:{port}/api/v1/TOKEN/attributes"
            observation = device.request(Message(code=Code.GET, uri=uri, observe=0))
            assert (await asyncio.wait_for(observation.response, WAIT)).code == Code.CONTENT
            notifications = aiter(observation.observation)
            refused = await asyncio.wait_for(blocked.request(Message(code=Code.GET, uri=uri, observe=0)).response, WAIT)
            later = [(await asyncio.wait_for(anext(notifications), WAIT)).code for _ in range(3)]
            observation.observation.cancel()
            return refused.code, later
        finally:
            await device.shutdown()
            await blocked.shutdown()
            await api.close()
            await server.shutdown()

    refused, later = asyncio.run(scenario())
    assert refused == Code.TOO_MANY_REQUESTS
    assert later == [Code.CONTENT] * 3  # not a last 2.02 Deleted: the device still observes


# --- the end of a block -------------------------------------------------------------------------

def test_http_and_coap_blocks_end_after_block_seconds(gh, short_blocks):
    sidecar, bridge = short_blocks
    device, token = token_device(gh.broker)
    http_guesser, coap_guesser = fresh_address(), fresh_address()
    for _ in range(MAX_FAILED_LOGINS):
        assert post_telemetry(http_guesser, sidecar, wrong_token()).status == 401
        assert coap_telemetry(coap_guesser, bridge, wrong_token()).code == Code.UNAUTHORIZED
    refused_http = post_telemetry(http_guesser, sidecar, token)
    assert (refused_http.status, 1 <= int(refused_http.retry_after) <= SHORT_BLOCK_SECONDS) == (429, True)
    refused_coap = coap_telemetry(coap_guesser, bridge, token)
    assert (refused_coap.code, 1 <= refused_coap.opt.max_age <= SHORT_BLOCK_SECONDS) == (Code.TOO_MANY_REQUESTS, True)

    assert wait_until(lambda: post_telemetry(http_guesser, sidecar, token).status == 200,
                      timeout=SHORT_BLOCK_SECONDS + WAIT, interval=0.5)
    assert wait_until(lambda: coap_telemetry(coap_guesser, bridge, token).code == Code.CREATED,
                      timeout=SHORT_BLOCK_SECONDS + WAIT, interval=0.5)
    assert latest_telemetry(gh.broker, device.id)["t"]["value"] == 1


# --- gatehouse up -------------------------------------------------------------------------------

def test_gatehouse_up_passes_the_limits_to_every_component(tmp_path):
    from gatehouse.cli.supervisor import Settings, components

    parts = components(Settings(data_dir=tmp_path, max_failed_logins=5, block_seconds=7.5))
    for part in parts:
        argv = list(part.argv)
        limits = argv[argv.index("--max-failed-logins"):][:4]
        assert limits == ["--max-failed-logins", "5", "--block-seconds", "7.5"], part.name
    assert {part.name for part in parts} == {"broker", "sidecar", "coap"}
