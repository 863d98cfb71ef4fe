"""A small synchronous wrapper around paho-mqtt for tests: connect, wait for the CONNACK,
collect what arrives, publish and wait for the PUBACK."""
from __future__ import annotations

import queue
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

TIMEOUT = 10.0
# paho 2 maps MQTT 3.1.1 CONNACK return codes onto MQTT 5 reason codes; this undoes it.
_V5_TO_V3 = {0: 0, 132: 1, 133: 2, 136: 3, 134: 4, 135: 5}


@dataclass
class TestClient:
    client: paho.Client
    connack: paho.ReasonCode | None = None
    messages: queue.Queue = field(default_factory=queue.Queue)
    disconnected: threading.Event = field(default_factory=threading.Event)
    subacks: queue.Queue = field(default_factory=queue.Queue)

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
        return info.is_published()

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
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                         clean_session=clean_session, reconnect_on_failure=False)
    if username is not None:
        client.username_pw_set(username, password)
    if ca_cert is not None:
        context = ssl.create_default_context(cafile=str(ca_cert))
        if cert is not None:
            context.load_cert_chain(str(cert), str(key))
        client.tls_set_context(context)
    wrapper = TestClient(client)
    _open_clients.append(wrapper)
    connected = threading.Event()

    def on_connect(_client, _userdata, _flags, reason_code, _properties=None):
        wrapper.connack = reason_code
        connected.set()

    client.on_connect = on_connect
    client.on_message = lambda _c, _u, message: wrapper.messages.put(message)
    client.on_subscribe = lambda _c, _u, _mid, codes, _p=None: wrapper.subacks.put(list(codes))
    client.on_disconnect = lambda *args: (wrapper.disconnected.set(), connected.set())
    client.connect(host, port, keepalive=keepalive)
    client.loop_start()
    if not connected.wait(TIMEOUT):
        raise TimeoutError("no CONNACK")
    return wrapper


def wait_until(condition, timeout: float = TIMEOUT, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
