"""CoAP over DTLS (SPEC §6, DTLS modes): coap_bridge/dtls.py carrying the CoAP bridge's resources,
driven by Debian's libcoap clients (`coap-client-openssl`, `coap-client-gnutls`) the way devices
written for ThingsBoard drive its coaps port.

A real `gatehouse broker` and `gatehouse sidecar` serve the module. The bridge side runs in this
process, in a thread with its own event loop: the bridge's own Site (coap_bridge.resources.ApiV1
forwarding to the sidecar) with the DTLS listener added to its Context, exactly as
`gatehouse coap` assembles them. Devices are registered with the CLI (`gatehouse pki issue`,
`gatehouse device create --cert`).

What libcoap cannot show (the HelloVerifyRequest exchange, flight retransmission) is checked
with a scripted pyOpenSSL client; the session table's cap and reaping are unit tests. No test
asserts how long anything took: waits have generous deadlines and look for an outcome.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiocoap
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from coap_bridge.dtls import (
    SessionState,
    SessionTable,
    add_dtls_listener,
    is_initial_client_hello,
)
from coap_bridge.forwarding import HttpForwarder
from coap_bridge.resources import ApiV1
from gatehouse.pki import (
    certificate_pem,
    create_self_signed,
    issue_certificate,
    private_key_pem,
)
from gatehouse.registry import Registry

from .admin_api_client import Api
from .conftest import (
    RunningBroker,
    RunningSidecar,
    broker_and_sidecar,
    free_port,
    operator_certificate,
    start_coap_bridge,
)
from .devices import latest_telemetry, token_device, unique
from .mqtt_accounts import app_client

OPENSSL_CLIENT, GNUTLS_CLIENT = "coap-client-openssl", "coap-client-gnutls"
needs_libcoap = pytest.mark.usefixtures("libcoap_clients")
WAIT = 20  # seconds to wait for anything that should happen
OBSERVE_SECONDS = 120  # longer than any test: a test stops its observer when it has seen enough
# A response in libcoap's info-level log: "v:1 t:ACK c:2.05 i:6c45 {01} [ ... ] :: 'payload'"
RESPONSE = re.compile(r"^v:1 t:\S+ c:([2-5]\.[0-9]{2}) .*?(?: :: '(.*)')?$", re.MULTILINE)


# --- the bridge, in this process ----------------------------------------------------------------

class InProcessBridge:
    """The bridge's Site in an aiocoap server Context plus the DTLS listener, on an event loop in
    a thread of its own so that the tests can run client processes meanwhile."""

    def __init__(self, data_dir: Path, sidecar_url: str, **listener_options):
        self._data_dir = data_dir
        self._sidecar_url = sidecar_url
        self._listener_options = listener_options
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.dtls = None
        self._thread = threading.Thread(target=self._run, name="coaps bridge", daemon=True)

    def start(self) -> InProcessBridge:
        self._thread.start()
        if not self._ready.wait(WAIT) or self._error is not None:
            raise RuntimeError(f"the in-process bridge did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as e:  # noqa: BLE001 - whatever stopped it is reported by start()
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        with Registry.open(self._data_dir) as registry:
            credentials = registry.service_credentials("coap")
        forwarder = HttpForwarder(self._sidecar_url, credentials)
        api = ApiV1(forwarder)
        site = aiocoap.resource.Site()
        site.add_resource(["api", "v1"], api)
        context = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", 0), transports=["udp6"])
        try:
            pki = self._data_dir / "pki"
            self.dtls = await add_dtls_listener(context, ("127.0.0.1", 0), cert_file=pki / "server.pem",
                                                key_file=pki / "server.key", **self._listener_options)
            self._ready.set()
            await self._stop.wait()
            await self.dtls.close()
        finally:
            await api.close()
            await context.shutdown()
            await forwarder.close()

    @property
    def port(self) -> int:
        return self.dtls.port

    def call(self, fn: Callable):
        """`fn()` run on the bridge's loop (the session table belongs to it)."""
        async def run():
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(WAIT)

    def session_count(self) -> int:
        return self.call(lambda: len(self.dtls.sessions))

    def session_states(self) -> list[SessionState]:
        return self.call(lambda: [s.state for s in self.dtls.sessions])

    def session_state(self, sockaddr: tuple) -> SessionState | None:
        return self.call(lambda: getattr(self.dtls.sessions.get(sockaddr), "state", None))

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT)


@dataclass
class Gatehouse:
    broker: RunningBroker
    sidecar: RunningSidecar
    bridge: InProcessBridge
    certs: Path

    @property
    def ca(self) -> Path:
        return self.broker.data_dir / "pki" / "ca.pem"

    def uri(self, *path: str) -> str:
        return f"coaps://127.0.0.1:{self.bridge.port}/" + "/".join(("api", "v1", *path))

    def two_way(self, cert: Path, key: Path) -> list[str]:
        """libcoap's options for two-way DTLS with this client certificate."""
        return ["-R", str(self.ca), "-c", str(cert), "-j", str(key)]

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "gatehouse", "--data-dir", str(self.broker.data_dir), *args],
                              check=False, capture_output=True, text=True, timeout=WAIT)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def issued_device(self) -> tuple[str, Path, Path]:
        """A device registered with a certificate the development CA issued: (name, cert, key)."""
        name = unique("x509")
        self.cli("pki", "issue", name, "--out", str(self.certs))
        cert = self.certs / f"{name}.pem"
        self.cli("device", "create", name, "--cert", str(cert))
        return name, cert, self.certs / f"{name}.key"

    def self_signed(self, *, register: bool) -> tuple[str, Path, Path]:
        name = unique("self-signed")
        certificate, key = create_self_signed(name)
        cert, key_file = self.certs / f"{name}.pem", self.certs / f"{name}.key"
        cert.write_text(certificate_pem(certificate))
        key_file.write_text(private_key_pem(key))
        if register:
            self.cli("device", "create", name, "--cert", str(cert))
        return name, cert, key_file

    def device_id(self, name: str) -> str:
        with Registry.open(self.broker.data_dir) as registry:
            return registry.find_device_by_name(name).id


@pytest.fixture(scope="module")
def gh(tmp_path_factory):
    root = tmp_path_factory.mktemp("coaps")
    with broker_and_sidecar(root) as (broker, sidecar):
        bridge = InProcessBridge(broker.data_dir, sidecar.url).start()
        try:
            certs = root / "certs"
            certs.mkdir()
            yield Gatehouse(broker, sidecar, bridge, certs)
        finally:
            bridge.stop()


@dataclass
class Answer:
    code: str | None  # the last response code the client printed, e.g. "2.01"; None: no response
    payload: str
    log: str

    def json(self):
        return json.loads(self.payload.encode().decode("unicode_escape"))  # libcoap escapes what it prints


def libcoap(client: str, *args: str) -> list[str]:
    """A libcoap client's command line. Its info-level log shows every message (its exit status is
    0 even when nothing was answered), so that is what tests read."""
    return [client, "-v", "6", "-B", "15", *args]


def coap(client: str, *args: str) -> Answer:
    """Run a libcoap client; the final response is the last one logged."""
    done = subprocess.run(libcoap(client, *args), check=False, capture_output=True, text=True, timeout=60)
    log = done.stdout + done.stderr
    responses = RESPONSE.findall(log)
    code, payload = responses[-1] if responses else (None, "")
    return Answer(code, payload, log)


class Observer:
    """A libcoap client observing a resource (`-s`) in the background, its responses read as they
    come; the test stops it."""

    def __init__(self, client: str, *args: str):
        # stdbuf: on a pipe, libcoap's log would come only when it exits.
        self.process = subprocess.Popen(["stdbuf", "-oL", *libcoap(client, "-s", str(OBSERVE_SECONDS), *args)],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.log = ""
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="libcoap observer", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def next_response(self, timeout: float = WAIT) -> Answer:
        """The next response or notification (code None: none within `timeout`, or the client ended)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                self._lines.put(None)  # ended for every later call too
                break
            self.log += line
            if found := RESPONSE.match(line):
                return Answer(found[1], found[2] or "", self.log)
        return Answer(None, "", self.log)

    def stop(self, sig: signal.Signals = signal.SIGINT) -> None:
        """SIGINT: libcoap ends its session with close_notify; SIGKILL: it vanishes."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        self.process.wait(WAIT)
        self._reader.join(WAIT)
        self.process.stdout.close()


@pytest.fixture
def observe():
    """Start `coap-client-openssl` observers; all are stopped after the test."""
    observers = []

    def start(*args: str) -> Observer:
        observers.append(Observer(OPENSSL_CLIENT, *args))
        return observers[-1]

    yield start
    for observer in observers:
        observer.stop()


def wait_for(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# --- libcoap clients through the bridge ---------------------------------------------------------

@needs_libcoap
@pytest.mark.parametrize("client", [OPENSSL_CLIENT, GNUTLS_CLIENT], ids=["openssl", "gnutls"])
def test_one_way_dtls_with_the_token_in_the_path(gh, client):
    device, token = token_device(gh.broker, "coaps")
    answer = coap(client, "-R", str(gh.ca), "-m", "post", "-t", "json", "-e", '{"temperature":25}',
                  gh.uri(token, "telemetry"))
    assert answer.code == "2.01", answer.log
    assert latest_telemetry(gh.broker, device.id)["temperature"]["value"] == 25


@needs_libcoap
def test_one_way_dtls_refuses_an_unknown_token_and_a_token_less_path(gh):
    assert coap(OPENSSL_CLIENT, "-R", str(gh.ca), "-m", "post", "-e", '{"t":1}',
                gh.uri(unique("nobody"), "telemetry")).code == "4.01"
    # Token-less paths are for client certificates only.
    assert coap(OPENSSL_CLIENT, "-R", str(gh.ca), "-m", "post", "-e", '{"t":1}', gh.uri("telemetry")).code == "4.01"


@needs_libcoap
def test_two_way_dtls_with_a_certificate_the_ca_issued(gh):
    name, cert, key = gh.issued_device()
    answer = coap(OPENSSL_CLIENT, "-R", str(gh.ca), "-c", str(cert), "-j", str(key), "-m", "post", "-t", "json",
                  "-e", '{"humidity":61}', gh.uri("telemetry"))
    assert answer.code == "2.01", answer.log
    assert latest_telemetry(gh.broker, gh.device_id(name))["humidity"]["value"] == 61
    # Attributes both ways, still without a token.
    assert coap(OPENSSL_CLIENT, "-R", str(gh.ca), "-c", str(cert), "-j", str(key), "-m", "post",
                "-e", '{"fw":"v1.2"}', gh.uri("attributes")).code == "2.01"
    answer = coap(OPENSSL_CLIENT, "-R", str(gh.ca), "-c", str(cert), "-j", str(key), "-m", "get",
                  gh.uri("attributes") + "?clientKeys=fw")
    assert answer.code == "2.05", answer.log
    assert answer.json() == {"client": {"fw": "v1.2"}}


@needs_libcoap
def test_two_way_dtls_with_gnutls(gh):
    name, cert, key = gh.issued_device()
    answer = coap(GNUTLS_CLIENT, "-R", str(gh.ca), "-c", str(cert), "-j", str(key), "-m", "post",
                  "-e", '{"pressure":1013}', gh.uri("telemetry"))
    assert answer.code == "2.01", answer.log
    assert latest_telemetry(gh.broker, gh.device_id(name))["pressure"]["value"] == 1013


@needs_libcoap
def test_a_registered_self_signed_certificate_identifies_its_device(gh):
    name, cert, key = gh.self_signed(register=True)
    answer = coap(OPENSSL_CLIENT, "-R", str(gh.ca), "-c", str(cert), "-j", str(key), "-m", "post",
                  "-e", '{"level":3}', gh.uri("telemetry"))
    assert answer.code == "2.01", answer.log
    assert latest_telemetry(gh.broker, gh.device_id(name))["level"]["value"] == 3


@needs_libcoap
def test_an_unknown_certificate_is_no_device_but_its_token_still_works(gh):
    _, cert, key = gh.self_signed(register=False)
    answer = coap(OPENSSL_CLIENT, "-R", str(gh.ca), "-c", str(cert), "-j", str(key), "-m", "post",
                  "-e", '{"level":3}', gh.uri("telemetry"))
    assert answer.code == "4.01", answer.log
    # As in ThingsBoard, an unknown certificate does not fail the handshake: token mode goes on.
    device, token = token_device(gh.broker, "coaps")
    answer = coap(OPENSSL_CLIENT, "-R", str(gh.ca), "-c", str(cert), "-j", str(key), "-m", "post",
                  "-e", '{"level":4}', gh.uri(token, "telemetry"))
    assert answer.code == "2.01", answer.log
    assert latest_telemetry(gh.broker, device.id)["level"]["value"] == 4


@needs_libcoap
def test_an_expired_certificate_fails_the_handshake(gh):
    name = unique("expired")
    ca_cert = x509.load_pem_x509_certificate((gh.broker.data_dir / "pki" / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((gh.broker.data_dir / "pki" / "ca.key").read_bytes(), None)
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    certificate, key = issue_certificate(ca_cert, ca_key, name, days=1, not_before=long_ago)
    cert, key_file = gh.certs / f"{name}.pem", gh.certs / f"{name}.key"
    cert.write_text(certificate_pem(certificate))
    key_file.write_text(private_key_pem(key))
    gh.cli("device", "create", name, "--cert", str(cert))
    answer = coap(OPENSSL_CLIENT, "-R", str(gh.ca), "-c", str(cert), "-j", str(key_file), "-m", "post",
                  "-e", '{"t":1}', gh.uri("telemetry"))
    assert answer.code is None, answer.log
    assert latest_telemetry(gh.broker, gh.device_id(name)) == {}


@needs_libcoap
@pytest.mark.parametrize("client", [OPENSSL_CLIENT, GNUTLS_CLIENT], ids=["openssl", "gnutls"])
def test_a_client_trusting_another_ca_refuses_the_server(gh, client):
    device, token = token_device(gh.broker, "coaps")
    _, other_ca, _ = gh.self_signed(register=False)
    answer = coap(client, "-R", str(other_ca), "-m", "post", "-e", '{"t":1}', gh.uri(token, "telemetry"))
    assert answer.code is None, answer.log
    assert latest_telemetry(gh.broker, device.id) == {}


@needs_libcoap
def test_block_wise_transfer_over_dtls(gh, tmp_path):
    name, cert, key = gh.issued_device()
    body = tmp_path / "big.json"
    values = {f"key{i:04d}": "x" * 40 for i in range(120)}  # about 6 KB: about a hundred 64-byte blocks
    body.write_text("{" + ",".join(f'"{k}":"{v}"' for k, v in values.items()) + "}")
    answer = coap(OPENSSL_CLIENT, "-R", str(gh.ca), "-c", str(cert), "-j", str(key), "-m", "post", "-t", "json",
                  "-b", "64", "-f", str(body), gh.uri("telemetry"))
    assert answer.code == "2.01", answer.log
    assert "Block1" in answer.log
    stored = latest_telemetry(gh.broker, gh.device_id(name))
    assert {k: v["value"] for k, v in stored.items()} == values


@needs_libcoap
def test_close_notify_ends_the_session(gh):
    _, token = token_device(gh.broker, "coaps")
    for _ in range(3):  # libcoap sends close_notify as it exits
        assert coap(OPENSSL_CLIENT, "-R", str(gh.ca), "-m", "post", "-e", '{"t":1}',
                    gh.uri(token, "telemetry")).code == "2.01"
    assert wait_for(lambda: gh.bridge.session_count() == 0), gh.bridge.session_states()


@needs_libcoap
def test_two_certificate_devices_from_one_udp_port_in_sequence(gh):
    """SPEC §9.7: one client port, two devices one after the other, each one's data its own."""
    port = str(free_port(socket.SOCK_DGRAM))
    devices = [gh.issued_device(), gh.issued_device()]
    for seq, (_, cert, key) in enumerate(devices, start=1):
        answer = coap(OPENSSL_CLIENT, "-p", port, *gh.two_way(cert, key), "-m", "post", "-e", f'{{"seq":{seq}}}',
                      gh.uri("telemetry"))
        assert answer.code == "2.01", answer.log
        assert f"127.0.0.1:{port} <->" in answer.log  # libcoap names its session by both ends
    assert [latest_telemetry(gh.broker, gh.device_id(name))["seq"]["value"] for name, _, _ in devices] == [1, 2]


@needs_libcoap
def test_a_new_handshake_from_the_address_of_an_open_session_is_served_as_the_new_certificate(gh, observe):
    """A client that vanished without close_notify (a device reboots, another takes its port)
    leaves its session open: the next ClientHello from that address starts a new session, and
    the new certificate's device is the one served."""
    port = free_port(socket.SOCK_DGRAM)
    vanished_name, cert, key = gh.issued_device()
    vanished = observe("-p", str(port), *gh.two_way(cert, key), gh.uri("rpc"))
    assert vanished.next_response().code == "2.03", vanished.log
    vanished.stop(signal.SIGKILL)
    assert gh.bridge.session_state(("127.0.0.1", port)) is SessionState.OPEN
    name, cert, key = gh.issued_device()
    answer = coap(OPENSSL_CLIENT, "-p", str(port), *gh.two_way(cert, key), "-m", "post", "-e", '{"seq":3}',
                  gh.uri("telemetry"))
    assert answer.code == "2.01", answer.log
    assert latest_telemetry(gh.broker, gh.device_id(name))["seq"]["value"] == 3
    assert latest_telemetry(gh.broker, gh.device_id(vanished_name)) == {}


@pytest.fixture(scope="module")
def admin(gh) -> Api:
    """The admin REST API, logged in: how an operator changes a device's shared attributes."""
    username, password = unique("admin") + "@gatehouse.test", "coaps-Admin-pass1"
    with Registry.open(gh.broker.data_dir) as registry:
        registry.add_admin(username, password)
    api = Api(gh.sidecar.url)
    api.token = api.ok("POST", "/api/auth/login", {"username": username, "password": password})["token"]
    return api


@needs_libcoap
def test_observe_shared_attributes_over_two_way_dtls_without_a_token(gh, admin, observe):
    name, cert, key = gh.issued_device()
    shared = f"/api/plugins/telemetry/DEVICE/{gh.device_id(name)}/attributes/SHARED_SCOPE"
    admin.ok("POST", shared, {"fw": "v1"})
    observer = observe(*gh.two_way(cert, key), gh.uri("attributes"))
    first = observer.next_response()
    assert (first.code, first.json()) == ("2.05", {"fw": "v1"}), first.log
    # The sidecar hands a change only to a long poll open at that moment, and the bridge opens its
    # first one just after this answer: repeat the change until it is notified.
    deadline = time.monotonic() + WAIT
    notification = Answer(None, "", "")
    while notification.code is None and time.monotonic() < deadline:
        admin.ok("POST", shared, {"fw": "v2"})
        notification = observer.next_response(timeout=1.0)
    assert (notification.code, notification.json()) == ("2.05", {"fw": "v2"}), observer.log


@needs_libcoap
def test_server_side_rpc_over_two_way_dtls_without_a_token(gh, observe, clients):
    """Observe `/api/v1/rpc` (2.03 first), the call as a notification, the reply on
    `/api/v1/rpc/{id}`: all for the device of the client certificate."""
    name, cert, key = gh.issued_device()
    device_id = gh.device_id(name)
    app = app_client(gh.broker, clients, f"gatehouse/devices/{device_id}/rpc/response/+")
    observer = observe(*gh.two_way(cert, key), gh.uri("rpc"))
    assert observer.next_response().code == "2.03", observer.log
    assert app.publish(f"gatehouse/devices/{device_id}/rpc/call/77", '{"method": "setGpio", "params": {"pin": 4}}')
    call = observer.next_response()
    assert (call.code, call.json()) == ("2.05", {"id": 77, "method": "setGpio", "params": {"pin": 4}}), call.log
    reply = coap(OPENSSL_CLIENT, *gh.two_way(cert, key), "-m", "post", "-e", '{"pin":4,"value":true}',
                 gh.uri("rpc", "77"))
    assert reply.code == "2.01", reply.log
    message = app.next_message(timeout=WAIT)
    assert (message.topic, json.loads(message.payload)) == (f"gatehouse/devices/{device_id}/rpc/response/77",
                                                            {"pin": 4, "value": True})


@needs_libcoap
def test_claim_over_two_way_dtls_without_a_token(gh):
    _, cert, key = gh.issued_device()
    claim = ["-m", "post", gh.uri("claim"), "-e"]
    assert coap(OPENSSL_CLIENT, *gh.two_way(cert, key), *claim, '{"secretKey":"s","durationMs":60000}').code == "2.01"
    # The sidecar judged the claim as that device's: a malformed one is refused, not the certificate.
    assert coap(OPENSSL_CLIENT, *gh.two_way(cert, key), *claim, "[1]").code == "4.00"
    _, stranger, stranger_key = gh.self_signed(register=False)
    assert coap(OPENSSL_CLIENT, *gh.two_way(stranger, stranger_key), *claim, '{"secretKey":"s"}').code == "4.01"


@needs_libcoap
def test_the_bridge_serves_the_operators_own_certificate_given_by_tls_cert(gh, tmp_path):
    """`gatehouse coap --tls-cert/--tls-key`: clients trusting the operator's CA get through, and
    the development CA no longer vouches for the coaps port."""
    operator_ca, cert, key = operator_certificate(tmp_path)
    bridge = start_coap_bridge(gh.broker.data_dir, gh.sidecar.url, tmp_path / "coap.log",
                               "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        device, token = token_device(gh.broker, "own-cert")
        telemetry = ["-m", "post", "-e", '{"own":1}', bridge.secure_url("api", "v1", token, "telemetry")]
        answer = coap(OPENSSL_CLIENT, "-R", str(operator_ca), *telemetry)
        assert answer.code == "2.01", answer.log
        assert latest_telemetry(gh.broker, device.id)["own"]["value"] == 1
        answer = coap(OPENSSL_CLIENT, "-R", str(gh.ca), *telemetry)
        assert answer.code is None, answer.log
    finally:
        bridge.stop()


# --- a scripted client for what libcoap does not show --------------------------------------------

class ScriptedDtlsClient:
    """A pyOpenSSL DTLS client on memory BIOs, with its own UDP socket: the test decides which
    datagram goes out when."""

    def __init__(self, port: int):
        context = SSL.Context(SSL.DTLS_CLIENT_METHOD)
        context.set_verify(SSL.VERIFY_NONE)
        self.connection = SSL.Connection(context, None)
        self.connection.set_connect_state()
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.connect(("127.0.0.1", port))

    def close(self) -> None:
        self.socket.close()

    def next_flight(self, answer: bytes = b"") -> bytes:
        """What the client sends next, having received `answer`."""
        if answer:
            self.connection.bio_write(answer)
        try:
            self.connection.do_handshake()
        except SSL.WantReadError:
            pass
        return self.connection.bio_read(65_536)

    def receive(self, timeout: float = WAIT) -> bytes | None:
        self.socket.settimeout(timeout)
        try:
            return self.socket.recv(65_536)
        except TimeoutError:
            return None


HANDSHAKE_TYPE_OFFSET = 13  # the first handshake message's type, after the record header
SERVER_HELLO, HELLO_VERIFY_REQUEST = 2, 3


@pytest.fixture
def scripted(gh):
    clients = []

    def new() -> ScriptedDtlsClient:
        clients.append(ScriptedDtlsClient(gh.bridge.port))
        return clients[-1]

    yield new
    for client in clients:
        client.close()


def test_a_client_hello_without_the_cookie_gets_only_a_hello_verify_request(gh, scripted):
    client = scripted()
    sessions_before = gh.bridge.session_count()
    hello = client.next_flight()
    assert is_initial_client_hello(hello)
    client.socket.send(hello)
    answer = client.receive()
    assert answer is not None and answer[HANDSHAKE_TYPE_OFFSET] == HELLO_VERIFY_REQUEST
    # At once: left waiting, the client's own retransmission timer would put a second,
    # cookie-less ClientHello in front of it.
    hello_with_cookie = client.next_flight(answer)
    # Nothing more comes, and the server kept nothing for this address.
    assert client.receive(timeout=1.5) is None
    assert gh.bridge.session_count() == sessions_before

    # The cookie is the address's: the same ClientHello from another port is asked for its own.
    other = scripted()
    other.socket.send(hello_with_cookie)
    other_answer = other.receive()
    assert other_answer is not None and other_answer[HANDSHAKE_TYPE_OFFSET] == HELLO_VERIFY_REQUEST
    assert gh.bridge.session_count() == sessions_before

    # From its own address it starts the handshake.
    client.socket.send(hello_with_cookie)
    flight = client.receive()
    assert flight is not None and flight[HANDSHAKE_TYPE_OFFSET] == SERVER_HELLO


def test_an_unanswered_server_flight_is_retransmitted(gh, scripted):
    client = scripted()
    client.socket.send(client.next_flight())
    client.socket.send(client.next_flight(client.receive()))
    first = client.receive()
    assert first is not None and first[HANDSHAKE_TYPE_OFFSET] == SERVER_HELLO
    while (more := client.receive(timeout=0.5)) is not None and more[HANDSHAKE_TYPE_OFFSET] != SERVER_HELLO:
        pass  # the rest of the flight
    # The client says nothing: the server sends its flight again, on OpenSSL's timer.
    again = more or client.receive()
    assert again is not None and again[HANDSHAKE_TYPE_OFFSET] == SERVER_HELLO
    assert SessionState.HANDSHAKE in gh.bridge.session_states()


# --- the session table ---------------------------------------------------------------------------

class StubSession:
    def __init__(self, table: SessionTable, port: int, *, is_open: bool = True, last_seen: float = 0.0):
        self.table, self.sockaddr, self.is_open, self.last_seen = table, ("127.0.0.1", port), is_open, last_seen
        self.closed = False

    def close(self) -> None:  # as DtlsSession.close: the session leaves the table
        self.closed = True
        self.table.remove(self)


def test_the_session_table_closes_the_least_recently_used_session_past_its_cap():
    table = SessionTable(max_sessions=2)
    first, second, third = (StubSession(table, port) for port in (1, 2, 3))
    table.add(first)
    table.add(second)
    table.touch(first)  # first is now the more recently used
    table.add(third)
    assert second.closed and not first.closed and not third.closed
    assert list(table) == [first, third]


def test_a_new_session_from_the_same_address_replaces_the_old_one():
    table = SessionTable(max_sessions=5)
    old, new = StubSession(table, 1), StubSession(table, 1)
    table.add(old)
    table.add(new)
    assert old.closed and list(table) == [new]


def test_the_reaper_closes_idle_sessions_and_abandoned_handshakes():
    table = SessionTable(max_sessions=10)
    busy = StubSession(table, 1, last_seen=990)
    idle = StubSession(table, 2, last_seen=100)
    handshaking = StubSession(table, 3, is_open=False, last_seen=900)
    fresh_handshake = StubSession(table, 4, is_open=False, last_seen=995)
    for session in (busy, idle, handshaking, fresh_handshake):
        table.add(session)
    assert table.reap(1000, idle_timeout=300, handshake_timeout=60) == 2
    assert list(table) == [busy, fresh_handshake]


def test_the_listener_reaps_through_the_event_loop(gh, scripted):
    """A handshake the client abandons is reaped (the in-process bridge has the default
    timeouts, so reap with a clock past them)."""
    client = scripted()
    client.socket.send(client.next_flight())
    client.socket.send(client.next_flight(client.receive()))
    assert client.receive() is not None
    assert SessionState.HANDSHAKE in gh.bridge.session_states()
    far_future = time.monotonic() + 10 * 86_400
    gh.bridge.call(lambda: gh.bridge.dtls.sessions.reap(far_future, idle_timeout=86_400, handshake_timeout=60))
    assert gh.bridge.session_count() == 0
