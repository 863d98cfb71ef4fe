"""Gatehouse under faults: a concurrent provisioning storm over MQTT, HTTP and CoAP at once,
SIGKILL of the broker and of the sidecar in the middle of provisioning, telemetry and bulk
imports, the sidecar dying under the CoAP bridge, and a brute-force login attack. Real
processes on free ports and real SQLite files; afterwards the database itself is checked."""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiocoap
import aiohttp
import pytest
import requests
from aiocoap import Code, Message

from gatehouse.bulk_import import BATCH_SIZE
from gatehouse.credentials import AccessToken
from gatehouse.models import AttributeScope, ProvisionType
from gatehouse.registry import Registry

from . import async_mqtt
from .conftest import CHILD_ENV, free_port, start_coap_bridge
from .devices import database, stored_values, token_device, token_devices, unique
from .load_generators import TELEMETRY, import_csv, telemetry_payload
from .metrics_scrape import counts, scrape
from .provisioning_answers import FAILURE_JSON

HANG_GUARD = 60  # seconds: far beyond anything healthy, so only a hang trips it
ALLOW_KEY, ALLOW_SECRET = "stormAllowKey", "storm-allow-secret"
CHECK_KEY, CHECK_SECRET = "stormCheckKey", "storm-check-secret"
TS_BASE = int(time.time() * 1000)  # telemetry timestamps: TS_BASE + the message's seq


def assert_database_is_sound(data_dir: Path) -> None:
    """The file passes SQLite's own check, and every device has exactly one credential."""
    with contextlib.closing(database(data_dir)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.execute("SELECT d.name, count(c.id) FROM device d LEFT JOIN device_credentials c "
                          "ON c.device_id = d.id GROUP BY d.id HAVING count(c.id) != 1").fetchall() == []


def device_names(data_dir: Path) -> Counter:
    with contextlib.closing(database(data_dir)) as db:
        return Counter(name for (name,) in db.execute("SELECT name FROM device"))


def provisioning_profiles(data_dir: Path) -> None:
    with Registry.open(data_dir) as registry:
        registry.create_profile("storm-allow", ProvisionType.ALLOW_CREATE_NEW_DEVICES, key=ALLOW_KEY,
                                secret=ALLOW_SECRET)
        registry.create_profile("storm-check", ProvisionType.CHECK_PRE_PROVISIONED_DEVICES, key=CHECK_KEY,
                                secret=CHECK_SECRET)


def allow_request(name: str) -> dict:
    return {"provisionDeviceKey": ALLOW_KEY, "provisionDeviceSecret": ALLOW_SECRET, "deviceName": name}


def check_request(name: str) -> dict:
    return {"provisionDeviceKey": CHECK_KEY, "provisionDeviceSecret": CHECK_SECRET, "deviceName": name}


# --- provisioning over the three transports (None: no answer, the transport failed) ----------

async def provision_http(session: aiohttp.ClientSession, sidecar_url: str, request: dict) -> dict | None:
    try:
        async with session.post(f"{sidecar_url}/api/v1/provision", json=request) as response:
            return await response.json() if response.status == 200 else None
    except aiohttp.ClientError:
        return None


async def provision_coap(context: aiocoap.Context, bridge, request: dict) -> dict | None:
    message = Message(code=Code.POST, uri=bridge.url("api", "v1", "provision"), payload=json.dumps(request).encode())
    response = await context.request(message).response
    return json.loads(response.payload) if response.payload else None


async def provision_all(requests_by_transport: list[tuple[str, dict]], broker, sidecar, bridge) -> list[dict | None]:
    """Send every request at once, each over its transport; the answers in request order."""
    context = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
            def send(transport: str, request: dict):
                if transport == "MQTT":
                    return async_mqtt.provision(broker.mqtt_port, request)
                if transport == "HTTP":
                    return provision_http(session, sidecar.url, request)
                return provision_coap(context, bridge, request)

            return await asyncio.wait_for(
                asyncio.gather(*(send(transport, request) for transport, request in requests_by_transport)),
                HANG_GUARD)
    finally:
        await context.shutdown()


@pytest.fixture
def gatehouse(tmp_path, broker_factory, sidecar_factory):
    """A broker, a sidecar and a CoAP bridge on one data dir; stopped after the test."""
    broker = broker_factory()
    sidecar = sidecar_factory(broker)
    bridge = start_coap_bridge(broker.data_dir, sidecar.url, tmp_path / "coap.log")
    yield broker, sidecar, bridge
    if bridge.process.poll() is None:
        bridge.process.kill()
        bridge.process.wait()


# --- the provisioning storm ----------------------------------------------------------------

STORM_NEW, STORM_CONTESTED, STORM_PRE_PROVISIONED = 350, 25, 50  # 350 + 2 x 25 + 2 x 50 = 500 requests
TRANSPORTS = ("MQTT", "HTTP", "COAP")


def test_a_storm_of_500_mixed_provisioning_requests_leaves_one_device_and_one_credential_per_name(gatehouse):
    broker, sidecar, bridge = gatehouse
    provisioning_profiles(broker.data_dir)
    pre_provisioned_tokens = {}
    with Registry.open(broker.data_dir) as registry, registry.batch():
        for i in range(STORM_PRE_PROVISIONED):
            token = unique("PRE")
            registry.create_device(f"pre-{i}", profile="storm-check", credentials=AccessToken(token))
            pre_provisioned_tokens[f"pre-{i}"] = token

    # Contested names and pre-provisioned devices are each asked for twice, over two different
    # transports, so the two requests for one name race through different processes.
    requests_ = ([allow_request(f"new-{i}") for i in range(STORM_NEW)]
                 + [allow_request(f"contested-{i}") for i in range(STORM_CONTESTED) for _ in range(2)]
                 + [check_request(f"pre-{i}") for i in range(STORM_PRE_PROVISIONED) for _ in range(2)])
    by_transport = [(TRANSPORTS[i % 3], request) for i, request in enumerate(requests_)]
    answers = asyncio.run(provision_all(by_transport, broker, sidecar, bridge))

    assert [request for request, answer in zip(by_transport, answers) if answer is None] == []
    outcomes: dict[str, list[dict]] = {}
    for request, answer in zip(requests_, answers):
        outcomes.setdefault(request["deviceName"], []).append(answer)
    for name, answered in outcomes.items():
        successes = [answer for answer in answered if answer["status"] == "SUCCESS"]
        assert len(successes) == 1, (name, answered)
        assert [answer for answer in answered if answer["status"] != "SUCCESS"] == [FAILURE_JSON] * (len(answered) - 1)
        if name.startswith("pre-"):
            assert successes[0]["credentialsValue"] == pre_provisioned_tokens[name]

    # In SQLite: one device per name, one credential per device, each SUCCESS token logs in as
    # the device it named, each pre-provisioned device marked once.
    assert_database_is_sound(broker.data_dir)
    names = device_names(broker.data_dir)
    assert set(names) == set(outcomes) and set(names.values()) == {1}
    with Registry.open(broker.data_dir) as registry:
        for name, answered in outcomes.items():
            token = next(answer["credentialsValue"] for answer in answered if answer["status"] == "SUCCESS")
            assert registry.token_login(token).name == name
        for name in pre_provisioned_tokens:
            device = registry.get_device(name)
            assert registry.get_attributes(device.id, AttributeScope.SERVER) == {"provisionState": "provisioned"}
        events = Counter((event["transport"], event["outcome"]) for event in registry.provisioning_events())
    assert sum(events.values()) == len(requests_)
    assert sum(count for (_, outcome), count in events.items() if outcome == "SUCCESS") == len(outcomes)
    assert {transport for transport, _ in events} == set(TRANSPORTS)


# --- the sidecar's connection limit ----------------------------------------------------------

def test_idle_keep_alive_connections_do_not_lock_new_clients_out_of_the_sidecar(broker_factory, sidecar_factory):
    # Regression: waitress's default limit of 100 open connections counted idle keep-alive
    # connections too, so 100 quiet HTTP devices stopped the sidecar accepting anyone else
    # (the CoAP bridge included: the storm above got 5.00 for a third of its CoAP requests).
    sidecar = sidecar_factory(broker_factory())
    _device, token = token_device(sidecar)
    idle = []
    try:
        for i in range(150):
            connection = socket.create_connection(("127.0.0.1", sidecar.http_port), timeout=HANG_GUARD)
            idle.append(connection)
            body = json.dumps({"i": i})
            connection.sendall(f"POST /api/v1/{token}/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
            assert connection.recv(12) == b"HTTP/1.1 200"
        response = requests.post(f"{sidecar.url}/api/v1/{token}/telemetry", json={"late": 1}, timeout=10)
        assert response.status_code == 200
    finally:
        for connection in idle:
            connection.close()


# --- SIGKILL in the middle of the work -------------------------------------------------------

IMPORT_ROWS = 8_000  # a few seconds of work, so a kill lands in the middle of it
# Beside a busy broker: its QoS 1 telemetry waits behind the import's batches for SQLite's write
# lock (a few acknowledgements a second), so the import must outlast getting some through.
IMPORT_ROWS_BESIDE_THE_BROKER = 20_000
ADMIN, ADMIN_PASSWORD = "admin@faults.test", "admin-Password-42"


def imported_count(data_dir: Path) -> int:
    with contextlib.closing(database(data_dir)) as db:
        return db.execute("SELECT count(*) FROM device WHERE name LIKE 'imported-%'").fetchone()[0]


def assert_import_is_complete_and_unique(data_dir: Path, tokens: dict[str, str]) -> None:
    names = device_names(data_dir)
    assert {name: names[name] for name in tokens} == dict.fromkeys(tokens, 1)
    with Registry.open(data_dir) as registry:
        for name, token in list(tokens.items())[::97]:
            assert registry.token_login(token).name == name


def wait_for(condition, what: str, timeout: float = HANG_GUARD) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


class Acknowledged:
    """What the server acknowledged before it died: telemetry (device, seq), provisioned
    name -> token, and every name a provisioning request was sent for."""

    def __init__(self):
        self.lock = threading.Lock()
        self.telemetry: set[tuple[str, int]] = set()
        self.provisioned: dict[str, str] = {}
        self.attempted: set[str] = set()

    def provision_answer(self, name: str, answer: dict | None) -> None:
        if answer is not None and answer["status"] == "SUCCESS":
            with self.lock:
                self.provisioned[name] = answer["credentialsValue"]

    def check_against(self, data_dir: Path) -> None:
        """Every acknowledged write is in the database, and the database is sound."""
        assert_database_is_sound(data_dir)
        assert self.telemetry <= stored_values(data_dir, "seq")
        names = device_names(data_dir)
        assert {name: names[name] for name in self.provisioned} == dict.fromkeys(self.provisioned, 1)
        with Registry.open(data_dir) as registry:
            for name, token in self.provisioned.items():
                assert registry.token_login(token).name == name


def assert_retried_provisioning_makes_one_device_per_name(data_dir: Path, acknowledged: Acknowledged, provision):
    """Re-send every request the dead server got: names it acknowledged fail now, the others
    (answered or not before the kill) end with exactly one device each."""
    for name in sorted(acknowledged.attempted):
        answer = provision(allow_request(name))
        if name in acknowledged.provisioned:
            assert answer == FAILURE_JSON
        else:
            assert answer["status"] in ("SUCCESS", "FAILURE")
    names = device_names(data_dir)
    assert {name: names[name] for name in acknowledged.attempted} == dict.fromkeys(acknowledged.attempted, 1)
    assert_database_is_sound(data_dir)


@pytest.fixture
def importers():
    """`gatehouse device import` processes a test started (it appends them); killed after it."""
    started = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def import_command(data_dir: Path, csv_file: Path) -> list[str]:
    return [sys.executable, "-m", "gatehouse", "--data-dir", str(data_dir), "device", "import", str(csv_file)]


def start_import(tmp_path: Path, data_dir: Path, text: str, importers: list) -> subprocess.Popen:
    """`gatehouse device import` of `text` in the background; its output goes to import.out."""
    (tmp_path / "devices.csv").write_text(text)
    with open(tmp_path / "import.out", "w") as output:
        importer = subprocess.Popen(import_command(data_dir, tmp_path / "devices.csv"), stdout=output,
                                    stderr=subprocess.STDOUT, env=CHILD_ENV)
    importers.append(importer)
    return importer


def test_sigkill_of_the_broker_mid_provisioning_telemetry_and_an_import_loses_no_acknowledged_write(
        tmp_path, broker_factory, importers):
    broker = broker_factory()
    provisioning_profiles(broker.data_dir)
    meters = token_devices(broker.data_dir, "meter", 20)
    acknowledged = Acknowledged()
    # A CLI import runs beside the broker: the broker dying mid-transaction must not wedge it.
    text, imported_tokens = import_csv(IMPORT_ROWS_BESIDE_THE_BROKER)
    (tmp_path / "devices.csv").write_text(text)
    importer = start_import(tmp_path, broker.data_dir, text, importers)
    wait_for(lambda: imported_count(broker.data_dir) > 0, "the import's first commit")
    import_state_at_kill = []

    async def send_telemetry(name: str, token: str) -> None:
        connection = await async_mqtt.connect(broker.mqtt_port, name, token)
        assert connection.return_code == 0
        try:
            for seq in range(1, 100_000):
                if not await connection.publish_qos1(TELEMETRY, telemetry_payload(TS_BASE, seq)):
                    return
                acknowledged.telemetry.add((name, seq))
        finally:
            await connection.close()

    async def provision(worker: int) -> None:
        for i in range(100_000):
            name = f"provisioned-{worker}-{i}"
            acknowledged.attempted.add(name)
            try:
                answer = await async_mqtt.provision(broker.mqtt_port, allow_request(name))
            except OSError:  # the broker is gone: connection refused
                return
            acknowledged.provision_answer(name, answer)
            if answer is None:
                return

    async def kill_when_busy() -> None:
        while (len(acknowledged.telemetry) < 20 or len(acknowledged.provisioned) < 5
               or imported_count(broker.data_dir) < IMPORT_ROWS_BESIDE_THE_BROKER // 4):
            await asyncio.sleep(0.05)
        broker.process.kill()
        import_state_at_kill.append(importer.poll())

    async def storm() -> None:
        await asyncio.wait_for(asyncio.gather(kill_when_busy(), *(send_telemetry(n, t) for n, t in meters.items()),
                                              *(provision(worker) for worker in range(10))), HANG_GUARD)

    asyncio.run(storm())
    assert broker.process.wait() == -signal.SIGKILL
    assert import_state_at_kill == [None], "the import was over before the broker was killed"
    acknowledged.check_against(broker.data_dir)

    assert importer.wait(HANG_GUARD) == 0, (tmp_path / "import.out").read_text()
    assert_import_is_complete_and_unique(broker.data_dir, imported_tokens)

    restarted = broker_factory(data_dir=broker.data_dir)
    assert_retried_provisioning_makes_one_device_per_name(
        broker.data_dir, acknowledged, lambda request: asyncio.run(async_mqtt.provision(restarted.mqtt_port, request)))
    name, token = next(iter(meters.items()))

    async def one_more() -> bool:
        connection = await async_mqtt.connect(restarted.mqtt_port, name, token)
        try:
            return await connection.publish_qos1(TELEMETRY, telemetry_payload(TS_BASE, 0))
        finally:
            await connection.close()

    assert asyncio.run(one_more())
    assert (name, 0) in stored_values(broker.data_dir, "seq")


def admin_session(sidecar) -> requests.Session:
    session = requests.Session()
    answer = session.post(f"{sidecar.url}/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD},
                          timeout=HANG_GUARD)
    answer.raise_for_status()
    session.headers["X-Authorization"] = f"Bearer {answer.json()['token']}"
    return session


def bulk_import_over_http(sidecar, text: str) -> requests.Response:
    mapping = {"columns": [{"type": "NAME"}, {"type": "TYPE"}, {"type": "ACCESS_TOKEN"},
                           {"type": "SHARED_ATTRIBUTE", "key": "model"}, {"type": "TIMESERIES", "key": "temperature"}],
               "delimiter": ",", "update": True, "header": True}
    return admin_session(sidecar).post(f"{sidecar.url}/api/device/bulk_import", json={"file": text, "mapping": mapping},
                                       timeout=HANG_GUARD)


# A kill can land between a response's head and its body: the client then sees a broken body,
# which, like a refused connection, means "not acknowledged".
SIDECAR_GONE = (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)


def test_sigkill_of_the_sidecar_mid_provisioning_telemetry_and_a_bulk_import_loses_no_acknowledged_write(
        broker_factory, sidecar_factory):
    broker = broker_factory()
    sidecar = sidecar_factory(broker)
    provisioning_profiles(broker.data_dir)
    with Registry.open(broker.data_dir) as registry:
        registry.add_admin(ADMIN, ADMIN_PASSWORD)
    meters = token_devices(broker.data_dir, "meter", 8)
    text, imported_tokens = import_csv(IMPORT_ROWS)
    acknowledged = Acknowledged()

    def send_telemetry(name: str, token: str) -> None:
        with requests.Session() as session:
            for seq in itertools.count(1):
                try:
                    answer = session.post(f"{sidecar.url}/api/v1/{token}/telemetry",
                                          data=telemetry_payload(TS_BASE, seq),
                                          headers={"Content-Type": "application/json"}, timeout=HANG_GUARD)
                except SIDECAR_GONE:
                    return
                assert answer.status_code == 200
                with acknowledged.lock:
                    acknowledged.telemetry.add((name, seq))

    def provision(worker: int) -> None:
        with requests.Session() as session:
            for i in itertools.count():
                name = f"provisioned-{worker}-{i}"
                with acknowledged.lock:
                    acknowledged.attempted.add(name)
                try:
                    answer = session.post(f"{sidecar.url}/api/v1/provision", json=allow_request(name),
                                          timeout=HANG_GUARD)
                except SIDECAR_GONE:
                    return
                acknowledged.provision_answer(name, answer.json())

    def bulk_import() -> None:
        with contextlib.suppress(*SIDECAR_GONE):
            bulk_import_over_http(sidecar, text)
            raise AssertionError("the import ended before the sidecar was killed")

    with ThreadPoolExecutor(len(meters) + 5) as pool:
        work = [pool.submit(send_telemetry, name, token) for name, token in meters.items()]
        work += [pool.submit(provision, worker) for worker in range(4)]
        work.append(pool.submit(bulk_import))
        try:
            wait_for(lambda: (len(acknowledged.telemetry) >= 20 and len(acknowledged.provisioned) >= 5
                              and imported_count(broker.data_dir) >= IMPORT_ROWS // 4), "enough acknowledged work")
        finally:
            sidecar.stop(signal.SIGKILL)  # which also ends the workers
        for done in work:
            done.result(timeout=HANG_GUARD)
    assert sidecar.process.returncode == -signal.SIGKILL

    acknowledged.check_against(broker.data_dir)
    # Each batch of rows is one transaction: a kill leaves whole batches, never part of one.
    assert imported_count(broker.data_dir) % BATCH_SIZE == 0

    restarted = sidecar_factory(broker)
    result = bulk_import_over_http(restarted, text).json()
    assert (result["errors"], result["created"] + result["updated"]) == (0, IMPORT_ROWS)
    assert_import_is_complete_and_unique(broker.data_dir, imported_tokens)
    with requests.Session() as session:
        assert_retried_provisioning_makes_one_device_per_name(
            broker.data_dir, acknowledged,
            lambda request: session.post(f"{restarted.url}/api/v1/provision", json=request, timeout=HANG_GUARD).json())


def test_sigkill_of_the_import_cli_leaves_whole_batches_and_a_re_run_completes_without_duplicates(
        tmp_path, registry, data_dir, importers):
    text, imported_tokens = import_csv(IMPORT_ROWS)
    importer = start_import(tmp_path, data_dir, text, importers)
    wait_for(lambda: imported_count(data_dir) >= IMPORT_ROWS // 4, "a quarter of the import")
    importer.kill()
    assert importer.wait() == -signal.SIGKILL
    assert_database_is_sound(data_dir)
    left = imported_count(data_dir)
    assert 0 < left < IMPORT_ROWS and left % BATCH_SIZE == 0

    again = subprocess.run(import_command(data_dir, tmp_path / "devices.csv"), capture_output=True, text=True,
                           env=CHILD_ENV, timeout=HANG_GUARD, check=False)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"created {IMPORT_ROWS - left}, updated {left}, errors 0"
    assert_import_is_complete_and_unique(data_dir, imported_tokens)
    assert_database_is_sound(data_dir)


# --- the sidecar dies under the CoAP bridge ----------------------------------------------------

def test_sigkill_of_the_sidecar_while_the_coap_bridge_forwards_answers_every_request_and_traffic_resumes(
        tmp_path, broker_factory, sidecar_factory):
    broker = broker_factory()
    http_port = free_port()  # the bridge is told it, and the sidecar comes back on it
    sidecar = sidecar_factory(broker, "--http-port", str(http_port))
    bridge = start_coap_bridge(broker.data_dir, sidecar.url, tmp_path / "coap.log")
    try:
        tokens = token_devices(broker.data_dir, "coap-meter", 10)
        answers: list[tuple[str, int, Code]] = []

        async def send(context: aiocoap.Context, name: str, token: str, seq: int) -> None:
            message = Message(code=Code.POST, uri=bridge.url("api", "v1", token, "telemetry"),
                              payload=telemetry_payload(TS_BASE, seq).encode())
            response = await context.request(message).response
            answers.append((name, seq, response.code))

        async def stream(context: aiocoap.Context, name: str, token: str, seqs) -> None:
            for seq in seqs:
                await send(context, name, token, seq)

        async def traffic(seqs, during=None) -> None:
            context = await aiocoap.Context.create_client_context(transports=["udp6"])
            try:
                streams = [stream(context, name, token, seqs) for name, token in tokens.items()]
                await asyncio.wait_for(asyncio.gather(*streams, *([during()] if during else [])), HANG_GUARD)
            finally:
                await context.shutdown()

        async def kill_mid_stream() -> None:
            while sum(code == Code.CREATED for *_, code in answers) < 50:
                await asyncio.sleep(0.01)
            sidecar.process.kill()

        asyncio.run(traffic(range(1, 101), kill_mid_stream))
        codes = Counter(code for *_, code in answers)
        assert set(codes) <= {Code.CREATED, Code.SERVICE_UNAVAILABLE, Code.INTERNAL_SERVER_ERROR}, codes
        assert codes[Code.SERVICE_UNAVAILABLE] > 0 and sum(codes.values()) == 100 * len(tokens)
        assert {(name, seq) for name, seq, code in answers if code == Code.CREATED} <= stored_values(
            broker.data_dir, "seq")

        sidecar_factory(broker, "--http-port", str(http_port))
        answers.clear()
        asyncio.run(traffic(range(101, 111)))
        assert {code for *_, code in answers} == {Code.CREATED}
        assert {(name, seq) for name, seq, _ in answers} <= stored_values(broker.data_dir, "seq")
    finally:
        bridge.stop()


# --- brute force -------------------------------------------------------------------------------

WRONG_TOKENS, MAX_FAILED_LOGINS = 1_000, 10
NOT_AUTHORIZED, SERVER_UNAVAILABLE = 0x05, 0x03  # MQTT 3.1.1 CONNACK: bad credentials, blocked address
# The last wrong tokens are sent only once the fresh login from the other address is answered, so
# that login happens in the middle of the attack however fast the rest of it goes.
HELD_BACK = 100


def test_a_thousand_wrong_tokens_block_their_address_while_a_device_elsewhere_keeps_working(broker_factory):
    async_mqtt.raise_open_files_limit(4 * WRONG_TOKENS)
    broker = broker_factory("--max-failed-logins", str(MAX_FAILED_LOGINS), "--block-seconds", "60")
    device, token = token_device(broker)
    fresh_device, fresh_token = token_device(broker)
    name = device.name
    device_ready, attack_over = asyncio.Event(), asyncio.Event()
    address_blocked, fresh_login_answered = asyncio.Event(), asyncio.Event()
    acknowledged, answered, fresh_login = [], [], {}

    async def wrong_login(i: int) -> int:
        if i >= WRONG_TOKENS - HELD_BACK:
            await fresh_login_answered.wait()
        connection = await async_mqtt.connect(broker.mqtt_port, f"attacker-{i}", unique("WRONG"))
        await connection.close()
        answered.append(connection.return_code)
        if len(answered) > MAX_FAILED_LOGINS:  # the block is on now (the codes say whether it worked)
            address_blocked.set()
        return connection.return_code

    async def attack() -> Counter:
        await device_ready.wait()  # so that the device is seen working during the attack, however short
        codes = Counter(await asyncio.gather(*(wrong_login(i) for i in range(WRONG_TOKENS))))
        attack_over.set()
        return codes

    async def legitimate_device() -> None:
        # From another loopback address, through the whole attack and after it.
        connection = await async_mqtt.connect(broker.mqtt_port, name, token, bind_address="127.0.0.2")
        assert connection.return_code == 0
        try:
            for seq in itertools.count(1):
                assert await connection.publish_qos1(TELEMETRY, telemetry_payload(TS_BASE, seq))
                acknowledged.append((name, seq))
                device_ready.set()
                if attack_over.is_set():
                    return
        finally:
            await connection.close()

    async def fresh_legitimate_login() -> None:
        # Another device's first connection, from the other address, once the attacker is blocked.
        await address_blocked.wait()
        try:
            connection = await async_mqtt.connect(broker.mqtt_port, fresh_device.name, fresh_token,
                                                  bind_address="127.0.0.2")
            await connection.close()
            fresh_login.update(code=connection.return_code, wrong_logins_answered=len(answered))
        finally:
            fresh_login_answered.set()

    async def run() -> Counter:
        codes, *_ = await asyncio.wait_for(asyncio.gather(attack(), legitimate_device(), fresh_legitimate_login()),
                                           HANG_GUARD)
        return codes

    codes = asyncio.run(run())
    assert codes == {NOT_AUTHORIZED: MAX_FAILED_LOGINS, SERVER_UNAVAILABLE: WRONG_TOKENS - MAX_FAILED_LOGINS}
    assert fresh_login["code"] == 0
    assert MAX_FAILED_LOGINS < fresh_login["wrong_logins_answered"] <= WRONG_TOKENS - HELD_BACK
    assert set(acknowledged) <= stored_values(broker.data_dir, "seq") and len(acknowledged) > 1

    async def login_from(address: str) -> int:
        connection = await async_mqtt.connect(broker.mqtt_port, name, token, bind_address=address)
        await connection.close()
        return connection.return_code

    assert asyncio.run(login_from("127.0.0.1")) == SERVER_UNAVAILABLE  # even the right token, from there
    assert asyncio.run(login_from("127.0.0.2")) == 0
    assert scrape(broker.metrics_port)["gatehouse_blocked_addresses"] == {(): 1}
    logins = counts(broker.metrics_port, "gatehouse_logins_total")
    assert logins[("UNKNOWN", "BAD_USERNAME_OR_PASSWORD", "MQTT")] == MAX_FAILED_LOGINS
    assert logins[("UNKNOWN", "BLOCKED", "MQTT")] == WRONG_TOKENS - MAX_FAILED_LOGINS + 1
