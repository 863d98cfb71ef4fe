#!/usr/bin/env python3
"""MQTT benchmark: the Gatehouse broker against stock amqtt with its anonymous auth plugin.

    .venv/bin/python bench/mqtt.py            # about 2-3 minutes
    .venv/bin/python bench/mqtt.py --quick    # about 35 s

The issue's target: the Gatehouse plugin costs at most 20 % of stock amqtt's throughput, i.e.
Gatehouse / amqtt >= 0.80 for every rate (and, for memory, at most 1 / 0.8 = 1.25 times as much
memory per connection). Figures are printed, never asserted; every baseline is measured in the
same run on the same machine, and measurements alternate between the two brokers.

Gatehouse also speaks MQTT 5 on the same listeners; stock amqtt does not. So the logins and the
telemetry are measured a third time, on Gatehouse with MQTT 5 clients, in the same alternation,
and compared with Gatehouse's own MQTT 3.1.1 figures of the same run in a second table
("MQTT 5 vs MQTT 3.1.1 (Gatehouse)", ratio v5 / 3.1.1, informational: no target).

Both brokers run as subprocesses of this script, each with a plain and a TLS listener on free ports:

- Gatehouse: `python -m gatehouse --data-dir TMP broker --mqtt-port 0 --mqtts-port 0`, on a data
  dir prepared with the library (token, MQTT basic and X.509 devices, an application account,
  an ALLOW_CREATE provisioning profile).
- Baseline: amqtt's `Broker` as shipped, configured with only
  `amqtt.plugins.authentication.AnonymousAuthPlugin` (allow_anonymous), the TLS listener using the
  same server certificate and CA (so client-certificate handshakes cost the same).

The load generator is this process: a small asyncio MQTT client over raw sockets, speaking
3.1.1, or MQTT 5 where a login says so (CONNECT and PUBLISH then encoded by the `mqtt5` codec).

1. Logins per second (token, MQTT basic, X.509 over TLS): C concurrent workers, each doing
   connect, CONNECT, CONNACK, DISCONNECT, close in a loop; only CONNACK 0 counts (for MQTT 5, a
   CONNACK with reason code 0 and properties). The baseline gets the same CONNECT packets and the
   same client certificates; the MQTT 5 rows the same credentials in MQTT 5 CONNECTs.
2. QoS 1 telemetry: K devices each keep W PUBLISHes in flight on v1/devices/me/telemetry.
   Gatehouse stores each message before its PUBACK and republishes it to
   gatehouse/devices/{id}/telemetry, where an application account (subscribed at QoS 1) counts
   them; stock amqtt relays the same messages to a QoS 1 subscriber of v1/devices/me/telemetry.
   Two rates: PUBACKs per second after a warm-up, and end to end: messages the subscriber got /
   (its last delivery - the first publish), since a broker may acknowledge faster than it
   relays. The end-to-end rate is the throughput held to the target: stock amqtt sends its
   PUBACK on receipt and queues the relay without bound, so its PUBACK rate (shown as "info")
   is not one it can sustain; Gatehouse acknowledges once the message is stored. After the
   run every acknowledged message must have reached the subscriber, and on Gatehouse every
   device's latest stored `seq` must be its last acknowledged one. A second pair of rows does
   the same with a single device (per-connection throughput). The MQTT 5 rows run the same
   devices as MQTT 5 clients (the application account stays on 3.1.1); an MQTT 5 PUBACK with
   a reason code of 0x80 or more is a refusal and does not count as acknowledged.
3. Provisioning requests per second: connect as `provision`, SUBSCRIBE /provision/response,
   PUBLISH the request (QoS 1), wait for the answer, DISCONNECT; unique device names, so each
   request creates a device. Baseline: the same packet exchange on stock amqtt, where the
   client subscribes to /provision/response/NAME and its publish there comes back to it through
   the broker (transport cost only: there is no provisioning in amqtt).
4. Memory: VmRSS of the broker process before and after 1,000 idle clients connected (kept open),
   per 1,000 connections.

Broker CPU (from /proc/PID/stat, all threads) is shown beside each rate, as is the load
generator's own CPU: a load generator near 100 % means the rate is a floor, not the broker's
limit. Subprocesses and temporary files are removed on exit, errors included.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import secrets
import shlex
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Benchmark the working tree this file belongs to, installed or not.
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
if _PROJECT_ROOT not in sys.path:
    sys.path.insert(0, _PROJECT_ROOT)
# This directory goes last: bench/http.py would shadow the standard library's `http` (amqtt imports it).
sys.path.sort(key=lambda entry: entry == str(Path(__file__).resolve().parent))

import mqtt5
import results  # noqa: E402  (bench/results.py, beside this file)
from amqtt.codecs_amqtt import encode_data_with_length  # noqa: E402
from amqtt.mqtt.packet import MQTTFixedHeader  # noqa: E402
from machine import cpu_model, cpu_seconds, usable_cores  # noqa: E402  (bench/machine.py, beside this file)

from tests.async_mqtt import read_packet  # noqa: E402  (the tests' raw MQTT client reads packets the same way)
from tests.load_generators import rss_kib  # noqa: E402

perf_counter = time.perf_counter

TELEMETRY_TOPIC = "v1/devices/me/telemetry"
APP_FILTER = "gatehouse/devices/+/telemetry"
PROVISION_REQUEST, PROVISION_RESPONSE = "/provision/request", "/provision/response"
PROVISION_KEY, PROVISION_SECRET = "benchProvisionKey", "bench-provision-secret"
TARGET_RATIO = 0.8
OP_TIMEOUT = 15.0
KEEPALIVE = 600  # idle connections must outlive every phase


# --- machine --------------------------------------------------------------------------------


def amqtt_version() -> str:
    from importlib import metadata
    return metadata.version("amqtt")


# --- MQTT 3.1.1 (protocol level 4) and MQTT 5 on the wire -----------------------------------

CONNACK, PUBLISH, PUBACK, SUBACK = 2, 3, 4, 9
DISCONNECT = bytes((0xE0, 0x00))  # also a valid MQTT 5 DISCONNECT (reason code 0, no properties)
MQTT311, MQTT5 = 4, 5  # protocol levels
PROTOCOL_NAMES = {MQTT311: "MQTT 3.1.1", MQTT5: "MQTT 5"}
_MQTT5_QOS = (mqtt5.QoS.AT_MOST_ONCE, mqtt5.QoS.AT_LEAST_ONCE, mqtt5.QoS.EXACTLY_ONCE)


def _string(value: str | bytes) -> bytes:
    return encode_data_with_length(value.encode() if isinstance(value, str) else value)


def _packet(first_byte: int, body: bytes) -> bytes:
    return MQTTFixedHeader(first_byte >> 4, first_byte & 0x0F, len(body)).to_bytes() + body


def connect_packet(client_id: str, username: str | None = None, password: str | None = None,
                   keepalive: int = 60, protocol: int = MQTT311) -> bytes:
    if protocol == MQTT5:
        return mqtt5.ConnectPacket(client_id, username=username,
                                   password=password.encode() if password is not None else None,
                                   clean_start=True, keep_alive=keepalive).write()
    flags = 0x02  # clean session
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    return _packet(0x10, _string("MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big") + payload)


def publish_packet(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0, protocol: int = MQTT311) -> bytes:
    if protocol == MQTT5:
        return mqtt5.PublishPacket(topic, payload, qos=_MQTT5_QOS[qos], packet_id=packet_id if qos else None).write()
    body = _string(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return _packet(0x30 | (qos << 1), body)


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    return _packet(0x82, packet_id.to_bytes(2, "big") + _string(topic_filter) + bytes((qos,)))


def puback_packet(packet_id: int) -> bytes:
    return bytes((0x40, 0x02)) + packet_id.to_bytes(2, "big")


def parse_publish(flags: int, body: bytes) -> tuple[str, int | None, bytes]:
    """(topic, packet id or None, payload) of an MQTT 3.1.1 PUBLISH body."""
    topic_length = int.from_bytes(body[:2], "big")
    topic = body[2:2 + topic_length].decode()
    at = 2 + topic_length
    packet_id = None
    if flags & 0x06:
        packet_id = int.from_bytes(body[at:at + 2], "big")
        at += 2
    return topic, packet_id, body[at:]


@dataclass(frozen=True)
class Login:
    """One client's CONNECT, its TLS context when it logs in on the TLS listener, and the MQTT
    protocol level it speaks."""

    client_id: str
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    protocol: int = MQTT311

    def packet(self, keepalive: int = 60) -> bytes:
        return connect_packet(self.client_id, self.username, self.password, keepalive, self.protocol)

    def speaking(self, protocol: int) -> Login:
        return dataclasses.replace(self, protocol=protocol)


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    connack: int

    async def close(self, *, disconnect: bool = True) -> None:
        with contextlib.suppress(Exception):
            if disconnect:
                self.writer.write(DISCONNECT)
            self.writer.close()
            await self.writer.wait_closed()


@dataclass(frozen=True)
class Endpoint:
    """A running broker: where to connect and which process to watch."""

    name: str
    pid: int
    host: str
    mqtt_port: int
    mqtts_port: int


async def open_mqtt(endpoint: Endpoint, login: Login, keepalive: int = 60) -> Connection:
    """Connect and read the CONNACK; the caller closes the connection whatever the code (-1: not
    a CONNACK of the login's protocol: 2 bytes for 3.1.1, flags, reason code and properties for MQTT 5)."""
    port = endpoint.mqtts_port if login.tls else endpoint.mqtt_port
    reader, writer = await asyncio.open_connection(endpoint.host, port, ssl=login.tls, limit=1 << 20)
    try:
        writer.write(login.packet(keepalive))
        kind, _flags, body = await read_packet(reader)
    except BaseException:
        writer.close()
        raise
    well_formed = kind == CONNACK and (len(body) == 2 if login.protocol == MQTT311 else len(body) >= 3)
    code = body[1] if well_formed else -1
    return Connection(reader, writer, code)


async def subscribe(connection: Connection, topic_filter: str, qos: int) -> None:
    """SUBSCRIBE and check the SUBACK (MQTT 3.1.1 only)."""
    connection.writer.write(subscribe_packet(1, topic_filter, qos))
    kind, _flags, body = await read_packet(connection.reader)
    if kind != SUBACK or body[2:] != bytes((qos,)):
        raise RuntimeError(f"subscription to {topic_filter} refused: packet type {kind}, {body!r}")


# --- measuring helpers ----------------------------------------------------------------------


@dataclass
class Sample:
    """What one measurement saw."""

    ok: int
    failed: int
    seconds: float
    broker_cpu: float  # CPU seconds the broker process used
    client_cpu: float  # CPU seconds this process used
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        text = (f"{self.rate:10,.0f}/s  ({self.ok:,} ok, {self.failed:,} failed, {self.seconds:.2f} s; "
                f"broker CPU {100 * self.broker_cpu / self.seconds:3.0f} %, "
                f"load generator CPU {100 * self.client_cpu / self.seconds:3.0f} %)")
        return "  ".join([text, *self.notes])


class Meter:
    """Wall time, broker CPU and own CPU between start() and stop()."""

    def __init__(self, pid: int):
        self.pid = pid

    def start(self) -> None:
        self._t, self._b, self._c = perf_counter(), cpu_seconds(self.pid), time.process_time()

    def stop(self) -> tuple[float, float, float]:
        return perf_counter() - self._t, cpu_seconds(self.pid) - self._b, time.process_time() - self._c


async def settle(endpoint: Endpoint, idle_share: float = 0.05, timeout: float = 20.0) -> None:
    """Wait until the broker is idle (under 5 % of a core over 0.25 s): closing the previous
    phase's connections must not be billed to the next one."""
    deadline = perf_counter() + timeout
    while perf_counter() < deadline:
        before = cpu_seconds(endpoint.pid)
        await asyncio.sleep(0.25)
        if cpu_seconds(endpoint.pid) - before < idle_share * 0.25:
            return
    print(f"  (note: {endpoint.name} was still busy after {timeout:g} s of waiting for it to go idle)")


async def run_timed(endpoint: Endpoint, seconds: float, concurrency: int, operation) -> Sample:
    """`concurrency` workers call `await operation(i)` (i = 0, 1, 2, ...) until `seconds` have
    passed; True counts as done, False or an exception as failed."""
    await settle(endpoint)
    counter = itertools.count()
    meter = Meter(endpoint.pid)
    meter.start()
    deadline = perf_counter() + seconds

    async def worker() -> tuple[int, int]:
        ok = failed = 0
        while perf_counter() < deadline:
            try:
                done = await asyncio.wait_for(operation(next(counter)), OP_TIMEOUT)
            except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.TimeoutError, ssl.SSLError):
                done = False
            if done:
                ok += 1
            else:
                failed += 1
        return ok, failed

    results = await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, broker_cpu, client_cpu = meter.stop()
    return Sample(sum(r[0] for r in results), sum(r[1] for r in results), wall, broker_cpu, client_cpu)


# --- 1. logins ------------------------------------------------------------------------------


async def login_rate(endpoint: Endpoint, logins: list[Login], seconds: float, concurrency: int) -> Sample:
    async def login_once(i: int) -> bool:
        connection = await open_mqtt(endpoint, logins[i % len(logins)])
        await connection.close(disconnect=connection.connack == 0)
        return connection.connack == 0

    return await run_timed(endpoint, seconds, concurrency, login_once)


# --- 2. telemetry ---------------------------------------------------------------------------


@dataclass
class TelemetryRun:
    sample: Sample
    end_to_end_rate: float  # messages the subscriber got / (last delivery - first publish)
    sent: int
    acked: int
    relayed: int  # after the drain
    last_acked_seq: dict[str, int]  # device login's client id -> seq
    puback_reasons: dict[int, int]  # MQTT 5 PUBACK reason code other than 0 -> how many (0x80 and up: refused)


async def telemetry_rate(endpoint: Endpoint, devices: list[Login], subscriber: Login, subscriber_filter: str,
                         seconds: float, window: int, warmup: float) -> TelemetryRun:
    """Every device keeps `window` QoS 1 PUBLISHes in flight until the end; the rate counts the
    PUBACKs (and the subscriber's deliveries) between warm-up and end. Devices speak their login's
    protocol; an MQTT 5 PUBACK with a reason code of 0x80 or more is a refusal, not an acknowledgement."""
    await settle(endpoint)
    sub = await open_mqtt(endpoint, subscriber, KEEPALIVE)
    if sub.connack != 0:
        raise RuntimeError(f"{endpoint.name}: subscriber refused with CONNACK {sub.connack}")
    await subscribe(sub, subscriber_filter, 1)
    relayed = 0
    last_delivery = 0.0

    async def count_deliveries() -> None:
        nonlocal relayed, last_delivery
        while True:
            kind, flags, body = await read_packet(sub.reader)
            if kind == PUBLISH:
                _topic, packet_id, _payload = parse_publish(flags, body)
                relayed += 1
                last_delivery = perf_counter()
                if packet_id is not None:
                    sub.writer.write(puback_packet(packet_id))

    connections = []
    for login in devices:
        connection = await open_mqtt(endpoint, login, KEEPALIVE)
        if connection.connack != 0:
            raise RuntimeError(f"{endpoint.name}: device {login.client_id} refused with CONNACK {connection.connack}")
        connections.append(connection)

    stop_sending = asyncio.Event()
    acked = sent = 0
    last_acked_seq: dict[str, int] = {}
    puback_reasons: dict[int, int] = {}

    async def device(login: Login, connection: Connection) -> None:
        nonlocal acked, sent
        in_flight: dict[int, int] = {}  # packet id -> seq
        seq = 0

        def send_one() -> None:
            nonlocal seq, sent
            seq += 1
            packet_id = seq % 65535 + 1
            in_flight[packet_id] = seq
            payload = b'{"temperature":%.1f,"humidity":%d,"seq":%d}' % (20 + seq % 100 / 10, 40 + seq % 20, seq)
            connection.writer.write(publish_packet(TELEMETRY_TOPIC, payload, 1, packet_id, login.protocol))
            sent += 1

        for _ in range(window):
            send_one()
        while in_flight:
            kind, _flags, body = await read_packet(connection.reader)
            if kind != PUBACK:
                continue
            done = in_flight.pop(int.from_bytes(body[:2], "big"), None)
            if done is None:
                continue
            reason = body[2] if len(body) > 2 else 0  # MQTT 5 only; absent means 0 (success)
            if reason:
                puback_reasons[reason] = puback_reasons.get(reason, 0) + 1
            if reason < 0x80:
                acked += 1
                last_acked_seq[login.client_id] = max(done, last_acked_seq.get(login.client_id, 0))
            if not stop_sending.is_set():
                send_one()

    relay_task = asyncio.create_task(count_deliveries())
    tasks = [asyncio.create_task(device(login, c)) for login, c in zip(devices, connections)]
    meter = Meter(endpoint.pid)
    first_publish = perf_counter()
    try:
        await asyncio.sleep(warmup)
        meter.start()
        acked_0 = acked
        await asyncio.sleep(seconds)
        acked_1 = acked
        wall, broker_cpu, client_cpu = meter.stop()
        stop_sending.set()
        done, pending = await asyncio.wait(tasks, timeout=30)
        failed = len(pending)
        for task in done:
            if task.exception() is not None:
                failed += 1
        deadline = perf_counter() + 10
        while relayed < acked and perf_counter() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # anything beyond `acked` would show up now
    finally:
        for task in [*tasks, relay_task]:
            task.cancel()
        await asyncio.gather(*tasks, relay_task, return_exceptions=True)
        for connection in [*connections, sub]:
            await connection.close()
    sample = Sample(acked_1 - acked_0, failed, wall, broker_cpu, client_cpu)
    return TelemetryRun(sample, relayed / (last_delivery - first_publish) if relayed else 0.0, sent, acked, relayed,
                        last_acked_seq, puback_reasons)


# --- 3. provisioning ------------------------------------------------------------------------


async def provision_rate(endpoint: Endpoint, seconds: float, concurrency: int, *, echo: bool) -> Sample:
    """Gatehouse answers on /provision/response; with `echo` (stock amqtt) the request itself is
    published to /provision/response and comes back through the broker."""
    run = secrets.token_hex(4)

    async def provision_once(i: int) -> bool:
        name = f"bench-prov-{run}-{i}"
        request = json.dumps({"deviceName": name, "provisionDeviceKey": PROVISION_KEY,
                              "provisionDeviceSecret": PROVISION_SECRET}).encode()
        # Echoes go to a topic of the client's own, or every client would get every echo.
        response_topic = f"{PROVISION_RESPONSE}/{name}" if echo else PROVISION_RESPONSE
        connection = await open_mqtt(endpoint, Login(f"bench-prov-{i}", "provision"))
        try:
            if connection.connack != 0:
                return False
            await subscribe(connection, response_topic, 0)
            connection.writer.write(publish_packet(response_topic if echo else PROVISION_REQUEST, request, 1, 1))
            while True:
                kind, flags, body = await read_packet(connection.reader)
                if kind != PUBLISH:
                    continue  # the PUBACK
                topic, packet_id, payload = parse_publish(flags, body)
                if packet_id is not None:
                    connection.writer.write(puback_packet(packet_id))
                if topic != response_topic:
                    continue
                answer = json.loads(payload)
                return answer.get("deviceName") == name if echo else answer.get("status") == "SUCCESS"
        finally:
            await connection.close()

    return await run_timed(endpoint, seconds, concurrency, provision_once)


# --- 4. memory ------------------------------------------------------------------------------


@dataclass
class MemoryRun:
    before_kib: int
    after_kib: int
    clients: int

    @property
    def per_thousand_mib(self) -> float:
        return (self.after_kib - self.before_kib) / self.clients * 1000 / 1024


async def memory_per_connection(endpoint: Endpoint, logins: list[Login]) -> MemoryRun:
    await settle(endpoint)
    before = rss_kib(endpoint.pid)
    connections: list[Connection] = []
    semaphore = asyncio.Semaphore(50)

    async def connect_one(login: Login) -> None:
        async with semaphore:
            connection = await asyncio.wait_for(open_mqtt(endpoint, login, KEEPALIVE), OP_TIMEOUT)
        connections.append(connection)
        if connection.connack != 0:
            raise RuntimeError(f"{endpoint.name}: idle client {login.client_id} refused ({connection.connack})")

    try:
        await asyncio.gather(*(connect_one(login) for login in logins))
        await settle(endpoint)
        await asyncio.sleep(0.5)
        after = rss_kib(endpoint.pid)
    finally:
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
    return MemoryRun(before, after, len(logins))


# --- the brokers ----------------------------------------------------------------------------


@dataclass
class Fleet:
    """The devices created in the Gatehouse data dir, as logins; the stock broker gets the same
    CONNECT packets (its anonymous plugin accepts them all)."""

    tokens: list[Login]
    basic: list[Login]
    x509: list[Login]
    device_ids: dict[str, str]  # client id of a token login -> device id
    app: Login


def prepare_data_dir(data_dir, work: Path, *, tokens: int, basic: int, x509: int) -> Fleet:
    from gatehouse import pki
    from gatehouse.credentials import AccessToken, MqttBasic, X509Certificate
    from gatehouse.data_dir import DataDir
    from gatehouse.models import ProvisionType
    from gatehouse.registry import Registry

    ca_dir = DataDir.of(data_dir).pki
    with Registry.initialise(data_dir) as registry:
        ca = pki.DevelopmentPki.in_directory(ca_dir)
        token_logins, basic_logins, x509_logins, device_ids = [], [], [], {}
        with registry.batch():
            for i in range(tokens):
                token = f"BENCH{i:05d}{secrets.token_urlsafe(12)}"
                device = registry.create_device(f"bench-token-{i}", credentials=AccessToken(token))
                login = Login(f"bench-token-client-{i}", token)
                token_logins.append(login)
                device_ids[login.client_id] = device.id
            for i in range(basic):
                login = Login(f"bench-basic-client-{i}", f"bench-basic-user-{i}", secrets.token_urlsafe(12))
                registry.create_device(f"bench-basic-{i}",
                                       credentials=MqttBasic(login.client_id, login.username, login.password))
                basic_logins.append(login)
            for i in range(x509):
                name = f"bench-x509-{i}"
                cert_path, key_path = pki.issue_device_certificate(ca, name, work / "certs")
                registry.create_device(name, credentials=X509Certificate.from_text(cert_path.read_text()))
                context = ssl.create_default_context(cafile=str(ca.ca_cert))
                context.load_cert_chain(str(cert_path), str(key_path))
                x509_logins.append(Login(f"bench-x509-client-{i}", tls=context))
            registry.create_profile("bench-allow", ProvisionType.ALLOW_CREATE_NEW_DEVICES,
                                    key=PROVISION_KEY, secret=PROVISION_SECRET)
        username, password = registry.create_application("bench")
    return Fleet(token_logins, basic_logins, x509_logins, device_ids, Login("bench-app", username, password))


# A benchmark's PostgreSQL commits as a production one does (the test suite's cluster does not).
DURABLE_POSTGRESQL = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}


@contextlib.contextmanager
def throwaway_postgresql(work: Path):
    """A PostgreSQL server of its own for the run (Debian's postgresql); yields a database URL."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.postgres_cluster import PostgresCluster

    cluster = PostgresCluster.start_new(work, settings=DURABLE_POSTGRESQL)
    try:
        yield cluster.create_database()
    finally:
        cluster.destroy()


class Processes:
    """Broker subprocesses, each in its own process group, all killed on exit."""

    def __init__(self):
        self._running: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], log_path: Path, timeout: float = 30,
              env: dict[str, str] | None = None) -> Endpoint:
        log = open(log_path, "w")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        log.close()
        self._running.append(process)
        deadline = time.monotonic() + timeout
        ports: dict[str, int] = {}
        while len(ports) < 2:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start in {timeout:g} s:\n{log_path.read_text()}")
            for line in log_path.read_text().splitlines():
                for listener in ("MQTT ", "MQTTS"):
                    if line.startswith(f"{listener} listening on "):
                        ports[listener] = int(line.rsplit(":", 1)[1])
            time.sleep(0.05)
        return Endpoint(name, process.pid, "127.0.0.1", ports["MQTT "], ports["MQTTS"])

    def stop_all(self) -> None:
        for process in self._running:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self._running:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def stock_amqtt_config(pki_dir: Path) -> dict:
    return {
        "listeners": {
            "default": {"type": "tcp", "bind": "127.0.0.1:0"},
            "tls": {"type": "tcp", "bind": "127.0.0.1:0", "ssl": True, "certfile": str(pki_dir / "server.pem"),
                    "keyfile": str(pki_dir / "server.key"), "cafile": str(pki_dir / "ca.pem")},
        },
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def serve_stock_amqtt(config_json: str) -> int:
    """The baseline broker process (`bench/mqtt.py --serve-stock-amqtt CONFIG`): amqtt as shipped,
    printing its ports like `gatehouse broker` does, stopped by SIGTERM."""
    import logging

    from amqtt.broker import Broker

    logging.basicConfig(level=logging.WARNING)

    async def serve() -> None:
        broker = Broker(json.loads(config_json))
        await broker.start()
        for name, label in (("default", "MQTT "), ("tls", "MQTTS")):
            port = broker._servers[name].instance.sockets[0].getsockname()[1]
            print(f"{label} listening on 127.0.0.1:{port}", flush=True)
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await stop.wait()
        await broker.shutdown()

    asyncio.run(serve())
    return 0


# --- the run --------------------------------------------------------------------------------


@dataclass
class Row:
    measurement: str
    gatehouse: float
    baseline: float
    unit: str
    higher_is_better: bool = True
    has_target: bool = True  # False: shown for information, not comparable as throughput


    @property
    def ratio(self) -> float:
        return self.gatehouse / self.baseline if self.baseline else float("nan")

    @property
    def target(self) -> str:
        if not self.has_target:
            return "(info)"
        return f">= {TARGET_RATIO:.2f}" if self.higher_is_better else f"<= {1 / TARGET_RATIO:.2f}"

    @property
    def met(self) -> bool:
        return self.ratio >= TARGET_RATIO if self.higher_is_better else self.ratio <= 1 / TARGET_RATIO


@dataclass
class Settings:
    seconds: float
    concurrency: int
    devices: int
    window: int
    rounds: int
    idle_clients: int
    warmup: float


QUICK = Settings(seconds=1.0, concurrency=20, devices=20, window=10, rounds=1, idle_clients=1000, warmup=0.3)
DEFAULT = Settings(seconds=3.0, concurrency=20, devices=50, window=10, rounds=3, idle_clients=1000, warmup=0.5)


def best(samples: list[Sample]) -> Sample:
    return max(samples, key=lambda s: s.rate)


async def measure(settings: Settings, gatehouse: Endpoint, stock: Endpoint, fleet: Fleet,
                  data_dir) -> tuple[list[Row], list[Row]]:
    """The rows of the Gatehouse / amqtt table, and those of the MQTT 5 / MQTT 3.1.1 one (where
    `gatehouse` is the MQTT 5 figure and `baseline` Gatehouse's MQTT 3.1.1 one)."""
    from gatehouse.registry import Registry

    rows: list[Row] = []
    v5_rows: list[Row] = []
    brokers = [(gatehouse, False), (stock, True)]
    # Who is measured for logins and telemetry, in this order every round: (who, endpoint,
    # protocol). Stock amqtt speaks only MQTT 3.1.1.
    v5 = f"{gatehouse.name} v5"
    contestants = [(gatehouse.name, gatehouse, MQTT311), (stock.name, stock, MQTT311), (v5, gatehouse, MQTT5)]

    # Warm both up (imports done lazily, first TLS handshake, first DB reads) before measuring.
    for _who, endpoint, protocol in contestants:
        for login in (fleet.tokens[0], fleet.basic[0], fleet.x509[0]):
            connection = await open_mqtt(endpoint, login.speaking(protocol))
            await connection.close()
            if connection.connack != 0:
                raise RuntimeError(f"{endpoint.name}: warm-up {PROTOCOL_NAMES[protocol]} login {login.client_id} "
                                   f"refused with CONNACK {connection.connack}")

    print("## Memory: idle connected clients")
    memory = {}
    for endpoint, _ in brokers:
        run = await memory_per_connection(endpoint, fleet.tokens[:settings.idle_clients])
        memory[endpoint.name] = run
        print(f"  {endpoint.name:9} VmRSS {run.before_kib / 1024:7.1f} MiB -> {run.after_kib / 1024:7.1f} MiB with "
              f"{run.clients:,} clients: {run.per_thousand_mib:6.1f} MiB per 1,000")
    memory_row = Row(f"memory per 1,000 idle clients (MiB, RSS; {settings.idle_clients:,} connected)",
                     memory[gatehouse.name].per_thousand_mib, memory[stock.name].per_thousand_mib, "MiB",
                     higher_is_better=False)

    print(f"\n## Logins per second ({settings.concurrency} concurrent, {settings.seconds:g} s, "
          f"best of {settings.rounds})")
    for kind, logins in (("token", fleet.tokens), ("MQTT basic", fleet.basic), ("X.509 (TLS)", fleet.x509)):
        samples: dict[str, list[Sample]] = {who: [] for who, _, _ in contestants}
        for _ in range(settings.rounds):
            for who, endpoint, protocol in contestants:
                sample = await login_rate(endpoint, [login.speaking(protocol) for login in logins], settings.seconds,
                                          settings.concurrency)
                samples[who].append(sample)
                print(f"  {kind:12} {who:12} {sample.describe()}")
        g311 = best(samples[gatehouse.name]).rate
        rows.append(Row(f"logins/s, {kind}", g311, best(samples[stock.name]).rate, "/s"))
        v5_rows.append(Row(f"logins/s, {kind}", best(samples[v5]).rate, g311, "/s", has_target=False))

    for label, devices in ((f"{settings.devices} devices", settings.devices), ("1 device", 1)):
        print(f"\n## QoS 1 telemetry, {label}, {settings.window} in flight each ({settings.seconds:g} s after "
              f"{settings.warmup:g} s warm-up, best of {settings.rounds})")
        runs: dict[str, list[TelemetryRun]] = {who: [] for who, _, _ in contestants}
        for _ in range(settings.rounds):
            for who, endpoint, protocol in contestants:
                is_stock = endpoint is stock
                logins = [login.speaking(protocol) for login in fleet.tokens[:devices]]
                run = await telemetry_rate(endpoint, logins, Login("bench-subscriber") if is_stock else fleet.app,
                                           TELEMETRY_TOPIC if is_stock else APP_FILTER, settings.seconds,
                                           settings.window, settings.warmup)
                run.sample.notes.append(f"subscriber got {run.relayed:,} of {run.acked:,} acked: "
                                        f"{run.end_to_end_rate:,.0f}/s end to end")
                if run.relayed != run.acked:
                    run.sample.notes.append("MISMATCH: relayed != acked")
                if run.puback_reasons:
                    run.sample.notes.append("PUBACK reason codes: " + ", ".join(
                        f"0x{code:02X} x {count:,}" for code, count in sorted(run.puback_reasons.items())))
                if not is_stock:
                    run.sample.notes.append(check_stored(Registry, data_dir, fleet, run))
                runs[who].append(run)
                print(f"  {who:12} {run.sample.describe()}")
        best_run = {who: max(who_runs, key=lambda r: r.sample.rate) for who, who_runs in runs.items()}
        g, s, g5 = best_run[gatehouse.name], best_run[stock.name], best_run[v5]
        # Stock amqtt acknowledges before relaying, into an unbounded queue: its PUBACK rate is
        # not a rate it sustains, so only the end-to-end row is held to the target.
        rows.append(Row(f"QoS 1 telemetry msg/s acked, {label}", g.sample.rate, s.sample.rate, "/s",
                        has_target=False))
        rows.append(Row(f"QoS 1 telemetry msg/s end to end (stored +) relayed, {label}", g.end_to_end_rate,
                        s.end_to_end_rate, "/s"))
        v5_rows.append(Row(f"QoS 1 telemetry msg/s acked, {label}", g5.sample.rate, g.sample.rate, "/s",
                           has_target=False))
        v5_rows.append(Row(f"QoS 1 telemetry msg/s end to end (stored + relayed to a 3.1.1 application), {label}",
                           g5.end_to_end_rate, g.end_to_end_rate, "/s", has_target=False))

    print(f"\n## Provisioning requests per second ({settings.concurrency} concurrent, {settings.seconds:g} s, "
          f"best of {settings.rounds}; baseline: the same exchange echoed by stock amqtt)")
    samples = {gatehouse.name: [], stock.name: []}
    for _ in range(settings.rounds):
        for endpoint, is_stock in brokers:
            sample = await provision_rate(endpoint, settings.seconds, settings.concurrency, echo=is_stock)
            samples[endpoint.name].append(sample)
            print(f"  {endpoint.name:9} {sample.describe()}")
    rows.append(Row("provisioning requests/s (baseline: echo)", best(samples[gatehouse.name]).rate,
                    best(samples[stock.name]).rate, "/s"))
    rows.append(memory_row)
    return rows, v5_rows


def check_stored(registry_class, data_dir, fleet: Fleet, run: TelemetryRun) -> str:
    """Every device's latest stored `seq` must be its last acknowledged one."""
    wrong = 0
    with registry_class.open(data_dir) as registry:
        for client_id, seq in run.last_acked_seq.items():
            latest = registry.latest_telemetry(fleet.device_ids[client_id]).get("seq", {}).get("value")
            wrong += latest != seq
    if wrong:
        return f"STORED MISMATCH: {wrong} of {len(run.last_acked_seq)} devices' latest seq is not the last acked"
    return f"stored: latest seq of all {len(run.last_acked_seq)} devices = last acked"


def print_table(rows: list[Row]) -> None:
    print("\n| measurement | Gatehouse | amqtt baseline | Gatehouse / amqtt | target | met |")
    print("|---|---:|---:|---:|---:|:---:|")
    for row in rows:
        fmt = "{:,.1f}" if row.unit == "MiB" else "{:,.0f}"
        print(f"| {row.measurement} | {fmt.format(row.gatehouse)} | {fmt.format(row.baseline)} | {row.ratio:.2f} | "
              f"{row.target} | {('yes' if row.met else 'NO') if row.has_target else ''} |")
    print(f"\nTarget: the plugin costs at most {100 - 100 * TARGET_RATIO:.0f} % of stock amqtt's throughput "
          f"(rates: Gatehouse / amqtt >= {TARGET_RATIO:.2f}; memory: <= {1 / TARGET_RATIO:.2f}).")


def print_protocol_table(rows: list[Row]) -> None:
    """The MQTT 5 rows: `gatehouse` is Gatehouse's MQTT 5 figure, `baseline` its MQTT 3.1.1 one."""
    print("\n## MQTT 5 vs MQTT 3.1.1 (Gatehouse)")
    print("\n| measurement | MQTT 5 | MQTT 3.1.1 | MQTT 5 / 3.1.1 |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row.measurement} | {row.gatehouse:,.0f} | {row.baseline:,.0f} | {row.ratio:.2f} |")
    print("\nInformational, no target: stock amqtt has no MQTT 5, so both columns are Gatehouse, measured in the "
          "same run, alternating with the rows above.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (about 35 s)")
    parser.add_argument("--seconds", type=float, help="duration of each measurement (default 3, quick 1)")
    parser.add_argument("--concurrency", type=int, help="concurrent clients for logins and provisioning (20)")
    parser.add_argument("--devices", type=int, help="telemetry devices (default 50, quick 20)")
    parser.add_argument("--window", type=int, help="QoS 1 messages in flight per device (10)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per measurement, best kept (default 3, quick 1)")
    parser.add_argument("--idle-clients", type=int, help="idle clients for the memory figure (1000)")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the temporary directory goes")
    parser.add_argument("--postgresql", action="store_true",
                        help="Gatehouse on PostgreSQL (a throwaway, durable cluster: tests/postgres_cluster.py) "
                             "instead of SQLite")
    results.add_json_option(parser)
    parser.add_argument("--serve-stock-amqtt", metavar="CONFIG_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_stock_amqtt:
        return serve_stock_amqtt(args.serve_stock_amqtt)

    settings = QUICK if args.quick else DEFAULT
    overrides = {name: getattr(args, name) for name in ("seconds", "concurrency", "devices", "window", "rounds",
                                                        "idle_clients") if getattr(args, name) is not None}
    settings = dataclasses.replace(settings, **overrides)
    started = perf_counter()
    print("# Gatehouse MQTT benchmark")
    print(f"command:  {shlex.join([sys.executable, *sys.argv])}")
    print(f"cpu:      {cpu_model()}")
    print(f"cores:    {usable_cores()}")
    print(f"python:   {platform.python_implementation()} {platform.python_version()}")
    print(f"amqtt:    {amqtt_version()}")
    print(f"platform: {platform.platform()}")
    print(f"settings: {settings}")
    print()

    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="gatehouse-mqtt-bench-", dir=args.tmpdir) as temp, \
            contextlib.ExitStack() as cleanup:
        from gatehouse.data_dir import DataDir

        work = Path(temp)
        data_dir = DataDir(work / "data")
        if args.postgresql:
            data_dir = DataDir(work / "data", cleanup.enter_context(throwaway_postgresql(work)))
            print(f"database: PostgreSQL, {DURABLE_POSTGRESQL}\n")
        try:
            setup_start = perf_counter()
            fleet = prepare_data_dir(data_dir, work, tokens=max(settings.idle_clients, settings.devices, 200),
                                     basic=200, x509=100)
            print(f"setup: {len(fleet.tokens)} token, {len(fleet.basic)} MQTT basic, {len(fleet.x509)} X.509 devices, "
                  f"1 application, 1 ALLOW_CREATE profile in {perf_counter() - setup_start:.1f} s")
            gatehouse = processes.start("Gatehouse", [
                sys.executable, "-m", "gatehouse", *data_dir.command_options(), "broker", "--host", "127.0.0.1",
                "--mqtt-port", "0", "--mqtts-port", "0", "--metrics-port", "0"], work / "gatehouse.log",
                env=data_dir.environment())
            stock = processes.start("amqtt", [
                sys.executable, str(Path(__file__).resolve()), "--serve-stock-amqtt",
                json.dumps(stock_amqtt_config(data_dir.pki))], work / "amqtt.log")
            print(f"brokers: Gatehouse pid {gatehouse.pid} (ports {gatehouse.mqtt_port}/{gatehouse.mqtts_port}), "
                  f"amqtt pid {stock.pid} (ports {stock.mqtt_port}/{stock.mqtts_port})\n")
            rows, v5_rows = asyncio.run(measure(settings, gatehouse, stock, fleet, data_dir))
        except BaseException:
            for log in ("gatehouse.log", "amqtt.log"):
                with contextlib.suppress(OSError):
                    text = (work / log).read_text()
                    print(f"\n--- {log} (last 40 lines) ---\n" + "\n".join(text.splitlines()[-40:]), file=sys.stderr)
            raise
        finally:
            processes.stop_all()
    print_table(rows)
    print_protocol_table(v5_rows)
    results.write(args.json, "MQTT broker (bench/mqtt.py)", [
        results.Figure(row.measurement, row.gatehouse, row.unit, "stock amqtt 0.12.1", row.baseline, row.ratio,
                       row.target if row.has_target else "", row.met if row.has_target else None) for row in rows] + [
        results.Figure(f"{row.measurement}, MQTT 5", row.gatehouse, row.unit, "Gatehouse, MQTT 3.1.1", row.baseline,
                       row.ratio) for row in v5_rows])
    print(f"\nwall time: {perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
