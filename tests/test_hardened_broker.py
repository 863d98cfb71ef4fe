"""Regression tests for the amqtt 0.12.1 fixes in broker_plugin.hardened_broker / connect_gate /
server (docs/amqtt.md: G1–G6, G11–G13) and the failed-login blocking, against a real
`gatehouse broker` process. Raw sockets where paho hides the bytes (exact CONNACKs, session
present flags, a socket that stays silent).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from amqtt.plugins.base import BaseAuthPlugin

from gatehouse.credentials import AccessToken
from gatehouse.registry import Registry

from .conftest import module_broker
from .devices import token_device, unique
from .mqtt_client import (
    PINGREQ,
    PINGRESP,
    RawClient,
    connack,
    connect,
    connect_packet,
    publish_packet,
    raw_login,
    wait_until,
)

TELEMETRY = "v1/devices/me/telemetry"
CONNECT_TIMEOUT = 1.0
ACCEPTED, IDENTIFIER_REJECTED, SERVER_UNAVAILABLE, NOT_AUTHORIZED = 0x00, 0x02, 0x03, 0x05
PUBACK_1 = bytes((0x40, 0x02, 0x00, 0x01))


@pytest.fixture(scope="module")
def gh(tmp_path_factory):
    """The shared broker; refused logins are part of most tests here, so blocking is pushed
    out of the way except in the test about it (its own broker)."""
    with module_broker(tmp_path_factory.mktemp("hardened"), "--connect-timeout", str(CONNECT_TIMEOUT),
                       "--max-failed-logins", "100000", "--provision-close-seconds", "2") as running:
        yield running


_open = []


@pytest.fixture(autouse=True)
def _close_connections():
    yield
    while _open:
        _open.pop().close()


def mqtt(port, client_id="", username=None, password=None, **kwargs):
    client = connect(port, client_id, username, password, **kwargs)
    _open.append(client)
    return client


def login(port, client_id="", username=None, password=None, **kwargs) -> tuple[bytes, RawClient]:
    code, raw = raw_login(port, client_id, username, password, **kwargs)
    _open.append(raw)
    return code, raw


def raw(port, **kwargs) -> RawClient:
    client = RawClient(port, **kwargs)
    _open.append(client)
    return client


def create_device(broker, name, credentials=None):
    with Registry.open(broker.data_dir) as r:
        return r.create_device(name, credentials=credentials)


def telemetry(broker, device_id) -> dict:
    with Registry.open(broker.data_dir) as r:
        return {key: entry["value"] for key, entry in r.latest_telemetry(device_id).items()}


def tls_context(broker, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(broker.ca_cert))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def x509_device(broker, directory: Path):
    """A device with the CA-signed certificate `gatehouse pki issue` makes; (device, cert, key)."""
    name = unique("cert-dev")
    subprocess.run([sys.executable, "-m", "gatehouse", "--data-dir", str(broker.data_dir), "pki", "issue", name,
                    "--out", str(directory)], check=True, capture_output=True, timeout=60)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run([sys.executable, "-m", "gatehouse", "--data-dir", str(broker.data_dir), "device", "create", name,
                    "--cert", str(cert)], check=True, capture_output=True, timeout=60)
    with Registry.open(broker.data_dir) as r:
        return r.get_device(name), cert, key


def publish_qos1(client: RawClient, payload: dict) -> bytes:
    client.send(publish_packet(TELEMETRY, json.dumps(payload), qos=1, packet_id=1))
    return client.read(4)


# --- G1: a resumed persistent session must not keep the old connection's certificate ----------

def test_g1_certificate_identity_does_not_carry_over_to_a_resumed_session_without_certificate(gh, tmp_path):
    device, cert, key = x509_device(gh, tmp_path)
    client_id = unique("g1")
    code, cert_client = login(gh.mqtts_port, client_id, clean_session=False, ssl_context=tls_context(gh, cert, key))
    assert code == connack(ACCEPTED)
    assert publish_qos1(cert_client, {"by_cert": 1}) == PUBACK_1
    cert_client.send(bytes((0xE0, 0x00)))  # DISCONNECT: the persistent session stays behind
    assert cert_client.closed_by_server(5)
    time.sleep(0.2)

    # No certificate, no credentials, same client id, resuming the session: over TLS and plain TCP.
    # (SPEC §2.1: no username/password and a non-blank client id is CONNACK 2; anything but 0.)
    code, _ = login(gh.mqtts_port, client_id, clean_session=False, ssl_context=tls_context(gh))
    assert code == connack(IDENTIFIER_REJECTED)
    code, _ = login(gh.mqtt_port, client_id, clean_session=False)
    assert code == connack(IDENTIFIER_REJECTED)
    code, _ = login(gh.mqtt_port, client_id, "not-a-token", "x", clean_session=False)
    assert code == connack(NOT_AUTHORIZED)

    # The session itself survived those refusals: the certificate resumes it (session present).
    code, _ = login(gh.mqtts_port, client_id, clean_session=False, ssl_context=tls_context(gh, cert, key))
    assert code == connack(ACCEPTED, session_present=True)
    assert telemetry(gh, device.id) == {"by_cert": 1}


def test_g1_a_token_login_with_a_certificate_sessions_client_id_gets_a_fresh_session_of_its_own(gh, tmp_path):
    cert_device, cert, key = x509_device(gh, tmp_path)
    token = unique("TOKEN")
    token_device = create_device(gh, unique("token-dev"), AccessToken(token))
    client_id = unique("g1-token")
    code, cert_client = login(gh.mqtts_port, client_id, clean_session=False, ssl_context=tls_context(gh, cert, key))
    assert code == connack(ACCEPTED)
    cert_client.send(bytes((0xE0, 0x00)))
    assert cert_client.closed_by_server(5)
    time.sleep(0.2)
    # Another identity with the same client id: a session of its own, not the certificate's.
    code, token_client = login(gh.mqtt_port, client_id, token, clean_session=False)
    assert code == connack(ACCEPTED, session_present=False)
    assert publish_qos1(token_client, {"who": 2}) == PUBACK_1
    assert telemetry(gh, token_device.id) == {"who": 2}
    assert telemetry(gh, cert_device.id) == {}
    # The certificate's own session is still there for it.
    code, _ = login(gh.mqtts_port, client_id, clean_session=False, ssl_context=tls_context(gh, cert, key))
    assert code == connack(ACCEPTED, session_present=True)


# --- G2: a refused CONNECT must not wipe the victim's session ---------------------------------

def test_g2_refused_connect_with_the_victims_client_id_leaves_its_subscription_intact(gh):
    token = unique("TOKEN")
    victim_device = create_device(gh, unique("victim"), AccessToken(token))
    victim_id = unique("victim-client")
    victim = mqtt(gh.mqtt_port, victim_id, token)
    assert victim.connack == 0
    assert [c.value for c in victim.subscribe("v1/devices/me/attributes", 1)] == [1]

    for attempt in [{"username": "wrong-token"}, {}, {"username": "wrong-token", "clean_session": False}]:
        code, _ = login(gh.mqtt_port, victim_id, **attempt)
        assert code[:3] == bytes((0x20, 0x02, 0x00)) and code[3] != ACCEPTED, attempt
    time.sleep(0.2)
    assert not victim.disconnected.is_set()

    with Registry.open(gh.data_dir) as r:
        app_user, app_password = r.create_application(unique("app"))
    app = mqtt(gh.mqtt_port, unique("app"), app_user, app_password)
    assert app.connack == 0
    assert app.publish(f"gatehouse/devices/{victim_device.id}/attributes/shared", '{"k":1}')
    message = victim.next_message(5)
    assert message.topic == "v1/devices/me/attributes"
    assert json.loads(message.payload) == {"k": 1}


# --- G3: refused logins leave nothing behind ---------------------------------------------------

def test_g3_refused_logins_are_closed_after_connack_and_leave_no_session(gh):
    token = unique("TOKEN")
    create_device(gh, unique("g3"), AccessToken(token))
    client_id = unique("g3-client")
    for i in range(20):
        # The same client id every time, asking for a persistent session: a leaked session
        # would be resumed by the good login below (session present = 1).
        code, refused = login(gh.mqtt_port, client_id, f"wrong-token-{i}", clean_session=False)
        assert code == connack(NOT_AUTHORIZED)
        assert refused.closed_by_server(2), f"refused connection {i} left open"
    code, good = login(gh.mqtt_port, client_id, token, clean_session=False)
    assert code == connack(ACCEPTED, session_present=False)
    good.send(PINGREQ)
    assert good.read(2) == PINGRESP


# --- G4/G13: CONNACK codes in raw bytes ----------------------------------------------------------

def test_connack_return_codes_are_exact_bytes(gh):
    token = unique("TOKEN")
    create_device(gh, unique("codes"), AccessToken(token))
    cases = [
        ({"client_id": unique("c"), "username": "wrong-token"}, NOT_AUTHORIZED),
        ({"client_id": unique("c"), "username": "wrong-token", "password": "pw"}, NOT_AUTHORIZED),
        ({"client_id": unique("unknown-client")}, IDENTIFIER_REJECTED),
        ({"client_id": unique("c"), "username": token}, ACCEPTED),
    ]
    for kwargs, expected in cases:
        code, connection = login(gh.mqtt_port, **kwargs)
        assert code == bytes((0x20, 0x02, 0x00, expected)), kwargs
        if expected != ACCEPTED:
            assert connection.closed_by_server(2)


# --- MQTT 5 and silent connections (G6, G12) -------------------------------------------------

def test_mqtt5_connect_is_answered_at_once_in_mqtt5(gh):
    # amqtt alone never answers a v5 CONNECT (G12); the broker answers it in v5: here a refusal
    # for an unknown client id without credentials, 0x85 (SPEC §2.1).
    client = raw(gh.mqtt_port)
    client.send(connect_packet(unique("v5"), protocol_level=5))
    reply = client.read(5, timeout=2)
    assert reply[0] == 0x20 and reply[3] == 0x85, reply  # CONNACK, flags, reason 0x85
    assert client.closed_by_server(2)
    token = unique("TOKEN")
    create_device(gh, unique("after-v5"), AccessToken(token))
    assert login(gh.mqtt_port, unique("c"), token)[0] == connack(ACCEPTED)


def test_malformed_mqtt5_connect_gets_connack_malformed_packet(gh):
    client = raw(gh.mqtt_port)
    body = b"\x00\x04MQTT\x05\x02\x00\x3c\x05\x11"  # properties claim 5 bytes, then stop
    client.send(bytes((0x10, len(body))) + body)
    reply = client.read(5, timeout=2)
    assert reply[0] == 0x20 and reply[3] == 0x81, reply
    assert client.closed_by_server(2)


@pytest.mark.parametrize("sent", [b"", b"\x10", b"\x10\x20\x00\x04MQ"], ids=["nothing", "one-byte", "half-connect"])
def test_connection_without_a_complete_connect_is_closed_after_connect_timeout(gh, sent):
    client = raw(gh.mqtt_port)
    started = time.monotonic()
    if sent:
        client.send(sent)
    assert client.closed_by_server(CONNECT_TIMEOUT + 3)
    elapsed = time.monotonic() - started
    assert CONNECT_TIMEOUT - 0.3 <= elapsed <= CONNECT_TIMEOUT + 1.5, elapsed


# --- CONNECT read as bytes (protocol_handler.mqtt311_connect_session) ----------------------------

def _connect_with_flags(flags: int, payload: bytes, *, name: bytes = b"MQTT", level: int = 4) -> bytes:
    body = len(name).to_bytes(2, "big") + name + bytes((level, flags)) + (60).to_bytes(2, "big") + payload
    return bytes((0x10, len(body))) + body


def _field(text: bytes) -> bytes:
    return len(text).to_bytes(2, "big") + text


@pytest.mark.parametrize("packet, expected", [
    (_connect_with_flags(0x02, _field(b"c1"), level=6), connack(0x01)),  # not 3.1.1 nor 5
    (_connect_with_flags(0x42, _field(b"c1") + _field(b"pw")), connack(0x04)),  # password without user name
    (_connect_with_flags(0x00, _field(b"")), connack(IDENTIFIER_REJECTED)),  # no client id, clean session 0
    (_connect_with_flags(0x03, _field(b"c1")), b""),  # reserved flag: closed without CONNACK
    (_connect_with_flags(0x02, _field(b"c1"), name=b"MQIsdp", level=3), b""),  # MQTT 3.1: not served
    (_connect_with_flags(0x06, _field(b"c1") + _field(b"will/topic")), b""),  # will flag, no will message
], ids=["level-6", "password-without-username", "no-client-id-persistent", "reserved-flag", "mqtt-3.1",
        "will-without-message"])
def test_a_connect_breaking_the_protocol_is_refused_as_amqtt_would_and_the_broker_keeps_serving(gh, packet,
                                                                                               expected):
    client = raw(gh.mqtt_port)
    client.send(packet)
    assert client.read(4, timeout=5) == expected
    assert client.closed_by_server(5)
    code, _ = login(gh.mqtt_port, unique("after"), unique("no-such-token"))
    assert code == connack(NOT_AUTHORIZED)


def test_connect_fields_reach_the_login_as_sent(gh):
    """Client id, user name (the token) and keep-alive from a CONNECT read as bytes: a token
    login with a will (ignored) and a UTF-8 client id works."""
    device, token = token_device(gh, "bytes")
    will = _field(b"v1/devices/me/telemetry") + _field(b'{"will": 1}')
    packet = _connect_with_flags(0x02 | 0x04 | 0x80, _field("capteur-é".encode()) + will + _field(token.encode()))
    client = raw(gh.mqtt_port)
    client.send(packet)
    assert client.read(4) == connack(ACCEPTED)
    assert publish_qos1(client, {"via": 1}) == PUBACK_1
    assert telemetry(gh, device.id) == {"via": 1}


# --- PUBLISH and PUBACK read and written as bytes (protocol_handler) ---------------------------

@pytest.mark.parametrize("frame", [
    bytes((0x32, 0x04, 0x00, 0x09, 0x61, 0x62)),  # topic length past the end of the packet
    bytes((0x32, 0x04, 0x00, 0x01, 0x61, 0x00)),  # QoS 1 without a whole packet id
    bytes((0x30, 0x04, 0x00, 0x02, 0xC3, 0x28)),  # topic that is not UTF-8
    bytes((0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01)),  # QoS 3
], ids=["topic-past-end", "short-packet-id", "topic-not-utf8", "qos-3"])
def test_malformed_publish_closes_the_connection_and_the_broker_keeps_serving(gh, frame):
    device, token = token_device(gh, "malformed")
    code, client = login(gh.mqtt_port, unique("malformed"), token)
    assert code == connack(ACCEPTED)
    client.send(frame)
    assert client.closed_by_server(5)
    code, client = login(gh.mqtt_port, unique("malformed"), token)
    assert code == connack(ACCEPTED)
    assert publish_qos1(client, {"after": 1}) == PUBACK_1
    assert telemetry(gh, device.id) == {"after": 1}


@pytest.mark.parametrize("size", [0, 120, 16_370, 70_000])
def test_publish_frames_match_amqtts_encoding_at_every_remaining_length_width(size):
    """The hand-written PUBLISH encoder against amqtt's own packet classes, across the 1-, 2- and
    3-byte remaining lengths, and the decoder reading its output back."""
    from amqtt.mqtt.publish import PublishPacket
    from amqtt.session import OutgoingApplicationMessage

    from broker_plugin.mqtt311_codec import decode_publish, encode_publish

    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    for qos, packet_id, retain, dup in ((0, None, False, False), (1, 65535, True, True)):
        message = OutgoingApplicationMessage(packet_id, "gatehouse/devices/d/telemetry", qos, payload, retain)
        ours = encode_publish(message, duplicate=dup)
        assert ours == PublishPacket.build(message.topic, payload, packet_id, dup, qos, retain).to_bytes()
        back = decode_publish(ours)
        assert (back.topic, back.qos, back.packet_id, back.data, back.retain) == (
            message.topic, qos, packet_id, payload, retain)


# --- G5: keep-alive ------------------------------------------------------------------------------

def test_silent_client_is_disconnected_after_one_and_a_half_keepalives(gh):
    token = unique("TOKEN")
    create_device(gh, unique("silent"), AccessToken(token))
    code, client = login(gh.mqtt_port, unique("silent"), token, keepalive=1)
    assert code == connack(ACCEPTED)
    started = time.monotonic()
    assert client.closed_by_server(6)
    elapsed = time.monotonic() - started
    assert 1.3 <= elapsed <= 3.0, elapsed


def test_client_sending_pingreq_stays_connected(gh):
    token = unique("TOKEN")
    device = create_device(gh, unique("pinger"), AccessToken(token))
    code, client = login(gh.mqtt_port, unique("pinger"), token, keepalive=1)
    assert code == connack(ACCEPTED)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        client.send(PINGREQ)
        assert client.read(2, timeout=1) == PINGRESP
        time.sleep(0.5)
    assert publish_qos1(client, {"alive": 1}) == PUBACK_1
    assert telemetry(gh, device.id) == {"alive": 1}


# --- failed-login blocking (G13's code 3) --------------------------------------------------------

def test_address_is_blocked_after_max_failed_logins_and_released_after_block_seconds(broker_factory):
    broker = broker_factory("--max-failed-logins", "3", "--block-seconds", "2")
    token = unique("TOKEN")
    create_device(broker, unique("blocked"), AccessToken(token))
    for i in range(3):
        assert login(broker.mqtt_port, unique("c"), f"wrong-{i}")[0] == connack(NOT_AUTHORIZED)
    blocked_at = time.monotonic()
    code, connection = login(broker.mqtt_port, unique("c"), token)
    assert code == connack(SERVER_UNAVAILABLE)
    assert connection.closed_by_server(2)
    # Another source address is not affected.
    assert login(broker.mqtt_port, unique("c"), token, bind_address="127.0.0.2")[0] == connack(ACCEPTED)
    assert login(broker.mqtt_port, unique("c"), token)[0] == connack(SERVER_UNAVAILABLE)

    released = []

    def accepted_again() -> bool:
        code, _ = login(broker.mqtt_port, unique("c"), token)
        released.append(time.monotonic() - blocked_at)
        return code == connack(ACCEPTED)

    assert wait_until(accepted_again, timeout=6, interval=0.25)
    assert 1.5 <= released[-1] <= 3.5, released


# --- lifecycle (G11) -----------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_broker_cleanly_with_exit_status_0(broker_factory, sig):
    broker = broker_factory()
    token = unique("TOKEN")
    create_device(broker, unique("connected"), AccessToken(token))
    client = mqtt(broker.mqtt_port, unique("c"), token)
    assert client.connack == 0
    started = time.monotonic()
    assert broker.stop(sig, timeout=10) == 0, broker.log()
    assert time.monotonic() - started < 10
    assert client.wait_disconnected(5)
    assert "Traceback" not in broker.log()


def test_busy_port_exits_non_zero_promptly_with_one_clear_line(broker_factory):
    first = broker_factory()
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "gatehouse", "--data-dir", str(first.data_dir), "broker", "--host", "127.0.0.1",
         "--mqtt-port", str(first.mqtt_port), "--mqtts-port", "0"],
        check=False, capture_output=True, text=True, timeout=20, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert time.monotonic() - started < 10
    assert result.returncode != 0
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if "could not start" in line]
    assert len(lines) == 1, output
    assert str(first.mqtt_port) in lines[0] and "in use" in lines[0].lower(), lines[0]
    # The first broker is untouched.
    token = unique("TOKEN")
    create_device(first, unique("still-here"), AccessToken(token))
    assert login(first.mqtt_port, unique("c"), token)[0] == connack(ACCEPTED)
    # One clear line, not a traceback from amqtt's logger in front of it.
    assert "Traceback" not in output, output


@contextlib.contextmanager
def in_process_broker(plugins: dict):
    """A HardenedBroker with `plugins` on a loopback port, run on its own event loop thread;
    yields the port."""
    from broker_plugin.hardened_broker import HardenedBroker

    from .mqtt_client import close_all

    started, stop = threading.Event(), None
    ports = {}

    async def serve():
        nonlocal stop
        stop = asyncio.Event()
        broker = HardenedBroker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}},
                                 "plugins": plugins})
        await broker.start()
        ports["mqtt"] = broker.listening_port("default")
        started.set()
        await stop.wait()
        await broker.shutdown()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        assert started.wait(10)
        yield ports["mqtt"]
    finally:
        close_all()
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)
        loop.close()


def test_hardened_broker_without_the_gatehouse_plugin_still_acknowledges_and_routes():
    """The hardened broker defers every QoS 1 PUBACK to its publish processor; with none
    installed (any other plugin set) it must route and acknowledge like amqtt."""
    with in_process_broker({"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}) as port:
        subscriber = connect(port, "subscriber")
        subscriber.subscribe("plain/topic", 1)
        publisher = connect(port, "publisher")
        assert publisher.publish("plain/topic", "routed", qos=1)
        assert subscriber.next_message().payload == b"routed"


class FailingAuthPlugin(BaseAuthPlugin):
    """An auth plugin whose lookup breaks, as a database error would break ours."""

    async def authenticate(self, *, session) -> bool:
        raise RuntimeError("the credentials store is unreachable")


def test_g4_an_auth_plugin_that_raises_refuses_with_server_unavailable_and_the_broker_keeps_serving():
    with in_process_broker({f"{__name__}.FailingAuthPlugin": {}}) as port:
        for _ in range(2):
            code, connection = login(port, unique("c"), "any-token")
            assert code == connack(SERVER_UNAVAILABLE)  # 0x03: try again later, not "bad credentials"
            assert connection.closed_by_server(2)
