"""A small synchronous wrapper around paho-mqtt for tests: connect, wait for the CONNACK,
collect what arrives, publish and wait for the PUBACK."""
from __future__ import annotations

import gc
import json
import queue
import socket
import ssl
import struct
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from amqtt.codecs_amqtt import encode_data_with_length
from amqtt.mqtt.packet import MQTTFixedHeader
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TIMEOUT = 10.0
QUIET = 1.0  # how long "nothing arrives" is watched for
# paho 2 maps MQTT 3.1.1 CONNACK return codes onto MQTT 5 reason codes; this undoes it.
_V5_TO_V3 = {0: 0, 132: 1, 133: 2, 136: 3, 134: 4, 135: 5}


@dataclass
class TestClient:
    client: paho.Client
    connack: paho.ReasonCode | None = None
    messages: queue.Queue = field(default_factory=queue.Queue)
    disconnected: threading.Event = field(default_factory=threading.Event)
    subacks: queue.Queue = field(default_factory=queue.Queue)
    session_present: bool | None = None  # the CONNACK's flag

    @property
    def return_code(self) -> int | None:
        """The MQTT 3.1.1 CONNACK return code (paho reports it as an MQTT 5 reason code)."""
        if self.connack is None:
            return None
        return _V5_TO_V3.get(self.connack.value, self.connack.value)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, timeout: float = TIMEOUT) -> bool:
        """True when a QoS 1 message was acknowledged within `timeout`."""
        info = self.client.publish(topic, payload, qos=qos)
        if qos == 0:
            return True
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        return acknowledged(info)

    def subscribe(self, topic: str, qos: int = 1) -> list:
        self.client.subscribe(topic, qos)
        return self.subacks.get(timeout=TIMEOUT)

    def next_message(self, timeout: float = TIMEOUT) -> paho.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def no_message(self, wait: float = 1.0) -> bool:
        try:
            self.messages.get(timeout=wait)
        except queue.Empty:
            return True
        return False

    def wait_disconnected(self, timeout: float = TIMEOUT) -> bool:
        return self.disconnected.wait(timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._sock_close()  # after a failed TLS handshake paho leaves its socket open
        # paho keeps a wake-up socket pair until the client object is collected
        for name in ("_sockpairR", "_sockpairW"):
            sock = getattr(self.client, name, None)
            if sock is not None:
                sock.close()


_open_clients: list[TestClient] = []


def close_all() -> None:
    """Close every client a test opened (called after each test by tests/conftest.py)."""
    while _open_clients:
        _open_clients.pop().close()


def connect(port: int, client_id: str = "", username: str | None = None, password: str | None = None, *,
            host: str = "127.0.0.1", ca_cert: Path | None = None, cert: Path | None = None, key: Path | None = None,
            keepalive: int = 60, clean_session: bool = True) -> TestClient:
    """Connect and wait for the CONNACK; automatic reconnection is off, so a refusal stays one."""
    client = _paho_client(client_id, username, password, ca_cert, cert, key, protocol=paho.MQTTv311,
                          clean_session=clean_session)
    wrapper = TestClient(client)
    _open_clients.append(wrapper)
    connected = threading.Event()

    def on_connect(_client, _userdata, flags, reason_code, _properties=None):
        wrapper.connack = reason_code
        wrapper.session_present = bool(flags.session_present)
        connected.set()

    client.on_connect = on_connect
    client.on_message = lambda _c, _u, message: wrapper.messages.put(message)
    client.on_subscribe = lambda _c, _u, _mid, codes, _p=None: wrapper.subacks.put(list(codes))
    client.on_disconnect = lambda *args: (wrapper.disconnected.set(), connected.set())
    return _connected(wrapper, connected, host, port, keepalive=keepalive)


def _paho_client(client_id: str, username: str | None, password: str | None, ca_cert: Path | None,
                 cert: Path | None, key: Path | None, **options) -> paho.Client:
    """A paho client that never reconnects by itself, so a refusal stays one."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, reconnect_on_failure=False, **options)
    if username is not None:
        client.username_pw_set(username, password)
    if ca_cert is not None:
        context = ssl.create_default_context(cafile=str(ca_cert))
        if cert is not None:
            context.load_cert_chain(str(cert), str(key))
        client.tls_set_context(context)
    return client


def _connected(wrapper: TestClient, connected: threading.Event, host: str, port: int, **connect_options):
    """Connect `wrapper`'s client and wait until its on_connect (or on_disconnect) sets `connected`."""
    client = wrapper.client
    # paho drops the socket of a failed TLS handshake without closing it: let it go here,
    # quietly, rather than have its ResourceWarning land in some later test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client.connect(host, port, **connect_options)
            failure = None
        except OSError as e:
            failure = type(e)(*e.args)  # a copy without the traceback that keeps the socket alive
        if failure is not None:
            wrapper.close()
            _open_clients.remove(wrapper)
            gc.collect()
    if failure is not None:
        raise failure
    client.loop_start()
    if not connected.wait(TIMEOUT):
        raise TimeoutError("no CONNACK")
    return wrapper


def next_on(client: TestClient, topic: str, timeout: float = TIMEOUT) -> paho.MQTTMessage:
    """The next message on exactly `topic`, skipping others (brokers are shared between tests)."""
    deadline = time.monotonic() + timeout
    seen = []
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            message = client.next_message(timeout=remaining)
        except queue.Empty:
            break
        if message.topic == topic:
            return message
        seen.append((message.topic, message.payload[:200]))
    raise AssertionError(f"nothing on {topic!r} within {timeout} s; saw {seen}")


def acknowledged(info: paho.MQTTMessageInfo) -> bool:
    """Whether a QoS 1 PUBLISH got its PUBACK; paho raises instead of answering when the
    connection dropped under the message."""
    try:
        return info.is_published()
    except RuntimeError:
        return False


def wait_until(condition, timeout: float = TIMEOUT, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def nothing_on(client: TestClient, predicate=lambda message: True, wait: float = QUIET) -> list:
    """Messages matching `predicate` that arrive within `wait` seconds (expected: none)."""
    deadline = time.monotonic() + wait
    found = []
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            message = client.next_message(timeout=remaining)
        except queue.Empty:
            break
        if predicate(message):
            found.append((message.topic, message.payload))
    return found


def publish_unacked(client: TestClient, topic: str, payload, qos: int = 1):
    """Publish without waiting; returns paho's MessageInfo to inspect later."""
    return client.client.publish(topic, payload, qos=qos)


def codes(reason_codes) -> list[int]:
    """SUBACK (or other) reason codes as plain numbers, whether paho gave ReasonCodes or ints."""
    return [getattr(code, "value", code) for code in reason_codes]


def body(message):
    """A message's JSON payload."""
    return json.loads(message.payload)


# --- raw MQTT 3.1.1 bytes, for what paho hides (exact CONNACK bytes, pipelining, silence) ------

PINGREQ = bytes((0xC0, 0x00))
PINGRESP = bytes((0xD0, 0x00))


def _utf8(value: str | bytes) -> bytes:
    return encode_data_with_length(value.encode() if isinstance(value, str) else value)


def _packet(first_byte: int, body: bytes) -> bytes:
    return MQTTFixedHeader(first_byte >> 4, first_byte & 0x0F, len(body)).to_bytes() + body


def connect_packet(client_id: str = "", username: str | None = None, password: str | None = None, *,
                   keepalive: int = 60, clean_session: bool = True, protocol_level: int = 4) -> bytes:
    """A CONNECT; protocol_level 5 adds the (empty) MQTT 5 properties."""
    flags = (0x02 if clean_session else 0) | (0x80 if username is not None else 0) | (
        0x40 if password is not None else 0)
    variable = _utf8("MQTT") + bytes((protocol_level, flags)) + struct.pack("!H", keepalive)
    if protocol_level == 5:
        variable += b"\x00"  # properties length
    payload = _utf8(client_id) + (_utf8(username) if username is not None else b"") + (
        _utf8(password) if password is not None else b"")
    body = variable + payload
    return _packet(0x10, body)


def publish_packet(topic: str, payload: bytes | str, qos: int = 0, packet_id: int = 1) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    body = _utf8(topic) + (struct.pack("!H", packet_id) if qos else b"") + data
    return _packet(0x30 | (qos << 1), body)


def subscribe_packet(topic_filter: str, qos: int = 1, packet_id: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + _utf8(topic_filter) + bytes((qos,))
    return _packet(0x82, body)


def connack(code: int, session_present: bool = False) -> bytes:
    """The exact CONNACK bytes: 20 02 <flags> <code>."""
    return bytes((0x20, 0x02, int(session_present), code))


class RawClient:
    """One TCP (or TLS) connection speaking raw bytes; `bind_address` picks the source address."""

    def __init__(self, port: int, host: str = "127.0.0.1", *, bind_address: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, timeout: float = TIMEOUT):
        sock = socket.create_connection((host, port), timeout=timeout,
                                        source_address=(bind_address, 0) if bind_address else None)
        if ssl_context is not None:
            try:
                sock = ssl_context.wrap_socket(sock, server_hostname=host)
            except BaseException:
                sock.close()
                raise
        self.sock = sock

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, n: int, timeout: float = TIMEOUT) -> bytes:
        """Up to `n` bytes: fewer only if the server closed the connection (or the time ran out)."""
        data = bytearray()
        deadline = time.monotonic() + timeout
        while len(data) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(n - len(data))
            except TimeoutError:
                break
            except (ConnectionError, ssl.SSLError, OSError):
                break
            if not chunk:
                break
            data += chunk
        return bytes(data)

    def read_packet(self) -> tuple[int, bytes]:
        """One MQTT packet: (first byte, body)."""
        first = self.read(1)
        assert first, "connection closed before a packet arrived"
        length, multiplier = 0, 1
        while True:
            byte = self.read(1)
            assert byte, "connection closed inside a packet header"
            length += (byte[0] & 0x7F) * multiplier
            multiplier *= 128
            if not byte[0] & 0x80:
                break
        data = self.read(length)
        assert len(data) == length, "connection closed inside a packet"
        return first[0], data

    def closed_by_server(self, timeout: float = TIMEOUT) -> bool:
        """True once the server closes the connection within `timeout` (data before that is
        discarded); False if it is still open then."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                if not self.sock.recv(4096):
                    return True
            except TimeoutError:
                return False
            except (ConnectionError, ssl.SSLError, OSError):
                return True

    def close(self) -> None:
        self.sock.close()


def raw_login(port: int, client_id: str = "", username: str | None = None, password: str | None = None, *,
              keepalive: int = 60, clean_session: bool = True, bind_address: str | None = None,
              ssl_context: ssl.SSLContext | None = None) -> tuple[bytes, RawClient]:
    """CONNECT on a new raw connection; returns the 4 CONNACK bytes and the open connection."""
    raw = RawClient(port, bind_address=bind_address, ssl_context=ssl_context)
    try:
        raw.send(connect_packet(client_id, username, password, keepalive=keepalive, clean_session=clean_session))
        return raw.read(4), raw
    except BaseException:
        raw.close()
        raise



# --- MQTT 5 -------------------------------------------------------------------------------------


@dataclass
class V5Client(TestClient):
    """A paho MQTT 5 client: what TestClient collects, plus the CONNACK's properties and session
    flag, each PUBACK's reason code, the UNSUBACKs and why the connection ended."""

    connack_properties: Properties | None = None
    pubacks: dict = field(default_factory=dict)  # mid -> ReasonCode of its PUBACK
    unsubacks: queue.Queue = field(default_factory=queue.Queue)
    disconnect_reason: paho.ReasonCode | None = None  # from the broker's DISCONNECT, or paho's own verdict
    disconnect_from_broker: bool = False  # the broker sent a DISCONNECT packet

    @property
    def return_code(self) -> int | None:
        """The MQTT 5 CONNACK reason code."""
        return None if self.connack is None else self.connack.value

    def publish_code(self, topic: str, payload: bytes | str, qos: int = 1, properties: Properties | None = None,
                     timeout: float = TIMEOUT) -> int | None:
        """The PUBACK reason code of a QoS 1 message; None when no PUBACK came within `timeout` or
        the connection ended first (paho handles a PUBACK before a DISCONNECT that follows it)."""
        info = self.client.publish(topic, payload, qos=qos, properties=properties)
        deadline = time.monotonic() + timeout
        while not acknowledged(info) and not self.disconnected.is_set() and time.monotonic() < deadline:
            try:
                info.wait_for_publish(0.02)
            except (RuntimeError, ValueError):
                return None
        if not acknowledged(info):
            return None
        return self.pubacks[info.mid].value

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, timeout: float = TIMEOUT) -> bool:
        """True when a QoS 1 message got a successful PUBACK (reason code below 0x80) within `timeout`."""
        if qos == 0:
            self.client.publish(topic, payload, qos=0)
            return True
        code = self.publish_code(topic, payload, qos, timeout=timeout)
        return code is not None and code < 0x80

    def unsubscribe(self, *filters: str) -> list[int]:
        """One UNSUBSCRIBE with `filters`; the UNSUBACK reason codes in order."""
        self.client.unsubscribe(list(filters))
        return [code.value for code in self.unsubacks.get(timeout=TIMEOUT)]


def connect5(port: int, client_id: str = "", username: str | None = None, password: str | None = None, *,
             host: str = "127.0.0.1", ca_cert: Path | None = None, cert: Path | None = None, key: Path | None = None,
             keepalive: int = 60, clean_start: bool = True, session_expiry: int | None = None,
             properties: Properties | None = None) -> V5Client:
    """Connect with MQTT 5 and wait for the CONNACK (or the end of the connection); automatic
    reconnection is off. `session_expiry` sets the CONNECT's Session Expiry Interval."""
    client = _paho_client(client_id, username, password, ca_cert, cert, key, protocol=paho.MQTTv5)
    if session_expiry is not None:
        properties = properties or Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = session_expiry
    wrapper = V5Client(client)
    _open_clients.append(wrapper)
    connected = threading.Event()

    def on_connect(_client, _userdata, flags, reason_code, connack_properties=None):
        wrapper.connack = reason_code
        wrapper.connack_properties = connack_properties
        wrapper.session_present = bool(flags.session_present)
        connected.set()

    def on_publish(_client, _userdata, mid, reason_code, _properties=None):
        wrapper.pubacks[mid] = reason_code

    def on_disconnect(_client, _userdata, flags, reason_code, _properties=None):
        if not wrapper.disconnected.is_set():
            wrapper.disconnect_reason = reason_code
            wrapper.disconnect_from_broker = bool(flags.is_disconnect_packet_from_server)
        wrapper.disconnected.set()
        connected.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.on_message = lambda _c, _u, message: wrapper.messages.put(message)
    client.on_subscribe = lambda _c, _u, _mid, codes, _p=None: wrapper.subacks.put(list(codes))
    client.on_unsubscribe = lambda _c, _u, _mid, codes, _p=None: wrapper.unsubacks.put(list(codes))
    client.on_disconnect = on_disconnect
    return _connected(wrapper, connected, host, port, keepalive=keepalive, clean_start=clean_start,
                      properties=properties)
