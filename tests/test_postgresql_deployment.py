"""A whole deployment on PostgreSQL: real `gatehouse broker`, `gatehouse sidecar` and `gatehouse
coap` processes sharing one database of a throwaway cluster of this module's own, driven by real
clients over loopback (paho-mqtt, libcoap's coap-client and aiocoap, plain HTTP): device data
that is in the database once acknowledged, provisioning over every transport, credentials changed
by another process ending MQTT sessions (LISTEN/NOTIFY), concurrent provisioning of one name, a
node with another server key refused, no secret in plain text in a pg_dump, and the database
going away under load and coming back (the last test: it stops the module's cluster)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from aiocoap import Code

from gatehouse.credentials import AccessToken, MqttBasic
from gatehouse.data_dir import DataDir
from gatehouse.device_activity import LAST_CONNECT_TIME
from gatehouse.errors import StoreUnavailable
from gatehouse.models import AttributeScope, ProvisionType
from gatehouse.payloads import kv_entries
from gatehouse.registry import Registry
from gatehouse.server_key import ServerKey
from gatehouse.storage.postgresql import UNAVAILABLE_SECONDS, PostgresStore

from .coap_client import coap
from .conftest import CHILD_ENV, NO_BLOCKING, start_broker, start_coap_bridge, start_sidecar
from .devices import unique
from .mqtt_client import acknowledged, body, connect, connect5, next_on, wait_until
from .postgres_cluster import PostgresCluster, find_bin_dir
from .provisioning_answers import FAILURE_JSON, PROVISION_REQUEST, PROVISION_RESPONSE, provision, provision_client
from .web_ui_client import HttpClient, Ui

WAIT = 20  # seconds: a hang guard for anything that should happen much sooner
TELEMETRY, ATTRIBUTES = "v1/devices/me/telemetry", "v1/devices/me/attributes"
COAP_CLIENT = "coap-client-notls"
ADMIN, ADMIN_PASSWORD = "operator@gatehouse.test", "operator-Password-7"


@dataclass
class Deployment:
    cluster: PostgresCluster
    data_dir: DataDir
    broker: object
    sidecar: object
    bridge: object

    def registry(self) -> Registry:
        return Registry.open(self.data_dir)

    def token_device(self, prefix: str = "pg") -> tuple[str, str, str]:
        """A new device with an access token: (name, id, token)."""
        name, token = unique(prefix), unique("TOKEN")
        with self.registry() as registry:
            device = registry.create_device(name, credentials=AccessToken(token))
        return name, device.id, token

    def allow_profile(self) -> tuple[str, str]:
        """A profile that provisions new devices: (key, secret)."""
        key, secret = unique("key"), unique("secret")
        with self.registry() as registry:
            registry.create_profile(unique("profile"), ProvisionType.ALLOW_CREATE_NEW_DEVICES, key=key, secret=secret)
        return key, secret

    def http(self, token: str, feature: str, payload, timeout: float = WAIT) -> requests.Response:
        return requests.post(f"{self.sidecar.url}/api/v1/{token}/{feature}", json=payload, timeout=timeout)

    def gatehouse(self, *args: str, key_file: Path | None = None) -> subprocess.CompletedProcess:
        """`gatehouse ARGS` in a process of its own on this deployment's database (its URL in the
        environment, as `gatehouse up` passes it)."""
        options = self.data_dir.command_options() + (["--server-key-file", str(key_file)] if key_file else [])
        return subprocess.run([sys.executable, "-m", "gatehouse", *options, *args], capture_output=True, text=True,
                              timeout=60, env={**CHILD_ENV, **self.data_dir.environment()}, check=False)

    def running(self) -> bool:
        return all(p.process.poll() is None for p in (self.broker, self.sidecar, self.bridge))


@pytest.fixture(scope="module")
def gh(tmp_path_factory):
    """One cluster of this module's own (the outage test stops it: the session's cluster is left
    alone), one database, and a broker, a sidecar and a CoAP bridge on it."""
    root = tmp_path_factory.mktemp("postgresql-deployment")
    cluster = PostgresCluster.start_new(root)
    started = []
    try:
        data_dir = DataDir(root / "data", cluster.create_database())
        broker = start_broker(data_dir, root / "broker.log", *NO_BLOCKING, "--provision-close-seconds", "2")
        started.append(broker)
        sidecar = start_sidecar(broker, root / "sidecar.log", *NO_BLOCKING)
        started.append(sidecar)
        bridge = start_coap_bridge(data_dir, sidecar.url, root / "coap.log")
        started.append(bridge)
        yield Deployment(cluster, data_dir, broker, sidecar, bridge)
    finally:
        for running in reversed(started):
            if running.process.poll() is None:
                running.stop()
        cluster.destroy()


def stored_points(gh: Deployment, device_id: str, key: str) -> set[int]:
    """The values of every stored point of `key` (its history), read through a Registry."""
    with gh.registry() as registry:
        history = registry.telemetry_history(device_id, [key], limit=1_000_000)
    return {point["value"] for point in history.get(key, [])}


# --- a. device data and provisioning over every transport ------------------------------------


def test_mqtt_telemetry_and_attributes_are_in_the_database_once_acknowledged(gh):
    _, device_id, token = gh.token_device()
    client = connect(gh.broker.mqtt_port, unique("c"), token)
    assert client.return_code == 0
    assert client.publish(TELEMETRY, json.dumps({"ts": 1_700_000_000_000, "values": {"temperature": 21.5}}))
    assert client.publish(ATTRIBUTES, json.dumps({"firmware": "1.2.3", "ok": True}))
    # No waiting: the PUBACK came after the commit.
    with gh.registry() as registry:
        assert registry.latest_telemetry(device_id)["temperature"] == {"ts": 1_700_000_000_000, "value": 21.5}
        assert registry.get_attributes(device_id, AttributeScope.CLIENT) == {"firmware": "1.2.3", "ok": True}


def test_an_mqtt_attribute_request_is_answered_from_the_database(gh):
    _, device_id, token = gh.token_device()
    with gh.registry() as registry:
        registry.save_attributes(device_id, AttributeScope.SHARED, kv_entries({"target": 19, "mode": "eco"}))
        registry.save_attributes(device_id, AttributeScope.CLIENT, kv_entries({"firmware": "v2"}))
    client = connect(gh.broker.mqtt_port, unique("c"), token)
    assert client.subscribe("v1/devices/me/attributes/response/+") == [1]
    assert client.publish("v1/devices/me/attributes/request/7",
                          json.dumps({"clientKeys": "firmware", "sharedKeys": "target,mode"}))
    answer = next_on(client, "v1/devices/me/attributes/response/7")
    assert body(answer) == {"client": {"firmware": "v2"}, "shared": {"target": 19, "mode": "eco"}}


def test_mqtt_provisioning_creates_a_device_whose_token_then_logs_in(gh):
    key, secret = gh.allow_profile()
    name = unique("mqtt-provisioned")
    answer, _ = provision(gh.broker, {"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret})
    assert (answer["status"], answer["credentialsType"]) == ("SUCCESS", "ACCESS_TOKEN")
    client = connect(gh.broker.mqtt_port, unique("c"), answer["credentialsValue"])
    assert client.return_code == 0
    assert client.publish(TELEMETRY, json.dumps({"provisioned": 1}))
    with gh.registry() as registry:
        device = registry.get_device(name)
        assert registry.latest_telemetry(device.id)["provisioned"]["value"] == 1
        assert registry.provisioning_events(device.id)[-1]["outcome"] == "SUCCESS"


def test_http_telemetry_and_http_provisioning(gh):
    _, device_id, token = gh.token_device()
    response = gh.http(token, "telemetry", {"ts": 1_700_000_000_001, "values": {"humidity": 40}})
    assert response.status_code == 200
    assert stored_points(gh, device_id, "humidity") == {40}

    key, secret = gh.allow_profile()
    name = unique("http-provisioned")
    response = requests.post(f"{gh.sidecar.url}/api/v1/provision", timeout=WAIT,
                             json={"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret})
    assert response.status_code == 200 and response.json()["status"] == "SUCCESS"
    provisioned_token = response.json()["credentialsValue"]
    assert gh.http(provisioned_token, "telemetry", {"after": 1}).status_code == 200
    with gh.registry() as registry:
        assert registry.latest_telemetry(registry.get_device(name).id)["after"]["value"] == 1


@pytest.mark.usefixtures("libcoap_clients")
def test_coap_telemetry_through_the_bridge(gh):
    _, device_id, token = gh.token_device()
    done = subprocess.run([COAP_CLIENT, "-m", "post", "-t", "json", "-e", '{"pressure": 1013}',
                           gh.bridge.url("api", "v1", token, "telemetry")],
                          capture_output=True, text=True, timeout=WAIT, check=False)
    assert done.returncode == 0, done.stderr
    assert stored_points(gh, device_id, "pressure") == {1013}


# --- b. credentials changed by another process -----------------------------------------------


def test_credentials_changed_by_the_cli_close_the_mqtt_session_within_about_a_second(gh):
    name, _, old_token = gh.token_device()
    client = connect(gh.broker.mqtt_port, unique("c"), old_token)
    assert client.return_code == 0
    new_token = unique("TOKEN")
    done = gh.gatehouse("device", "credentials", name, "--token", new_token)
    changed = time.monotonic()
    assert done.returncode == 0, done.stderr
    # The broker polls every second and hears the change by LISTEN/NOTIFY from the CLI's process.
    assert client.wait_disconnected(WAIT)
    assert time.monotonic() - changed < 2.5
    assert connect(gh.broker.mqtt_port, unique("c"), old_token).return_code == 5
    assert connect(gh.broker.mqtt_port, unique("c"), new_token).return_code == 0
    assert wait_until(lambda: gh.http(old_token, "telemetry", {"x": 1}).status_code == 401, 5)
    assert gh.http(new_token, "telemetry", {"x": 1}).status_code == 200


def test_credentials_changed_through_a_registry_of_another_process_close_the_mqtt_session(gh):
    name, _, old_token = gh.token_device()
    client = connect(gh.broker.mqtt_port, unique("c"), old_token)
    assert client.return_code == 0
    username, password = unique("user"), unique("pass")
    with gh.registry() as registry:
        registry.set_credentials(name, MqttBasic(unique("cid"), username, password))
    changed = time.monotonic()
    assert client.wait_disconnected(WAIT)
    assert time.monotonic() - changed < 2.5
    assert connect(gh.broker.mqtt_port, unique("c"), old_token).return_code == 5


# --- c. concurrent provisioning of one name --------------------------------------------------


def test_concurrent_provisioning_of_one_name_over_http_and_mqtt_has_exactly_one_success(gh):
    key, secret = gh.allow_profile()
    name = unique("contested")
    request = json.dumps({"deviceName": name, "provisionDeviceKey": key, "provisionDeviceSecret": secret})
    sessions = [provision_client(gh.broker) for _ in range(6)]  # connected first: the requests race, not the logins
    http_requests = 6
    start = threading.Barrier(len(sessions) + http_requests)

    def over_mqtt(session) -> dict:
        start.wait(WAIT)
        assert session.publish(PROVISION_REQUEST, request)
        message = session.next_message(WAIT)
        assert message.topic == PROVISION_RESPONSE
        return json.loads(message.payload)

    def over_http(_) -> dict:
        start.wait(WAIT)
        response = requests.post(f"{gh.sidecar.url}/api/v1/provision", data=request, timeout=WAIT,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 200
        return response.json()

    with ThreadPoolExecutor(len(sessions) + http_requests) as pool:
        answers = [f.result() for f in [*(pool.submit(over_mqtt, s) for s in sessions),
                                        *(pool.submit(over_http, i) for i in range(http_requests))]]
    successes = [answer for answer in answers if answer["status"] == "SUCCESS"]
    assert len(successes) == 1, answers
    assert [answer for answer in answers if answer["status"] != "SUCCESS"] == [FAILURE_JSON] * (len(answers) - 1)
    with gh.registry() as registry:
        assert [d.name for d in registry.list_devices(name_contains=name)] == [name]
        assert registry.token_login(successes[0]["credentialsValue"]).name == name


# --- d. a node with another server key -------------------------------------------------------


def test_a_broker_with_another_server_key_refuses_to_start_naming_the_key(gh, tmp_path):
    other_key = tmp_path / "other-node.key"
    ServerKey.load_or_create(other_key)
    started = time.monotonic()
    done = gh.gatehouse("broker", "--host", "127.0.0.1", "--mqtt-port", "0", "--mqtts-port", "0",
                        "--metrics-port", "0", key_file=other_key)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert time.monotonic() - started < 30
    assert "listening on" not in output  # refused before any listener opened
    assert output.startswith("Error: the server key does not open the secrets of the database"), output
    assert str(other_key) in output
    assert gh.cluster.password not in output  # the database is named without its password
    assert "Traceback" not in output
    # The deployment's own broker is untouched.
    _, _, token = gh.token_device()
    assert connect(gh.broker.mqtt_port, unique("c"), token).return_code == 0


# --- e. no secret in plain text in the database ----------------------------------------------


def test_a_pg_dump_holds_no_token_mqtt_password_or_provision_secret_in_plain_text(gh):
    token_name, _, token = gh.token_device("dump-token")
    basic_name, basic_password = unique("dump-basic"), unique("basic-password")
    admin_password = unique("admin-password")
    with gh.registry() as registry:
        registry.create_device(basic_name, credentials=MqttBasic(unique("cid"), unique("user"), basic_password))
        registry.add_admin(unique("admin"), admin_password)
    key, secret = gh.allow_profile()
    provisioned_password = unique("provisioned-password")
    answer, _ = provision(gh.broker, {"deviceName": unique("dump-mqtt"), "provisionDeviceKey": key,
                                      "provisionDeviceSecret": secret, "credentialsType": "MQTT_BASIC",
                                      "clientId": unique("cid"), "username": unique("user"),
                                      "password": provisioned_password})
    assert answer["status"] == "SUCCESS"
    response = requests.post(f"{gh.sidecar.url}/api/v1/provision", timeout=WAIT,
                             json={"deviceName": unique("dump-http"), "provisionDeviceKey": key,
                                   "provisionDeviceSecret": secret})
    provisioned_token = response.json()["credentialsValue"]

    # pg_dump of the server's own major version; the password in the environment, not argv.
    parts = urlsplit(gh.data_dir.database_url)
    without_password = urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}"))
    env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    done = subprocess.run([str(find_bin_dir() / "pg_dump"), "--no-owner", "--dbname", without_password],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**env, "PGPASSWORD": gh.cluster.password})
    assert done.returncode == 0, done.stderr
    dump = done.stdout
    assert token_name in dump and basic_name in dump  # the deployment's database, its devices in it
    secrets = {"access token": token, "MQTT password": basic_password, "admin password": admin_password,
               "provision secret": secret, "provisioned MQTT password": provisioned_password,
               "provisioned access token": provisioned_token}
    assert [what for what, value in secrets.items() if value in dump] == []


# --- f. the database goes away, and comes back -----------------------------------------------


TS_BASE = 1_750_000_000_000


def acknowledged_or_closed(client, topic: str, payload: str, timeout: float = WAIT) -> bool:
    """Publish at QoS 1: True once acknowledged, False once the connection closed without a
    PUBACK (paho's own wait would sit out its whole timeout)."""
    info = client.client.publish(topic, payload, qos=1)
    deadline = time.monotonic() + timeout
    while not acknowledged(info) and not client.disconnected.is_set():
        assert time.monotonic() < deadline, f"neither a PUBACK nor a closed connection within {timeout} s"
        time.sleep(0.005)
    return acknowledged(info)


@dataclass
class MqttStream:
    """A device publishing QoS 1 telemetry (`seq` = 1, 2, ...) as fast as it is acknowledged.
    A message without a PUBACK (the connection closed under it) is not sent again; the device
    reconnects once `resume` is set, trying until it is let in."""

    port: int
    device_id: str
    token: str
    resume: threading.Event
    stop: threading.Event = field(default_factory=threading.Event)
    acked: list[int] = field(default_factory=list)
    unanswered: list[int] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        seq, client = 0, None
        while not self.stop.is_set():
            if client is None:
                if self.unanswered and not self.resume.wait(0.1):
                    continue
                client = self._connect()
                if client is None:
                    time.sleep(0.1)
                    continue
            seq += 1
            if acknowledged_or_closed(client, TELEMETRY, json.dumps({"ts": TS_BASE + seq, "values": {"seq": seq}}),
                                      2 * WAIT):
                self.acked.append(seq)
            else:
                self.unanswered.append(seq)
                client.close()
                client = None
        if client is not None:
            client.close()

    def _connect(self):
        try:
            client = connect(self.port, unique("stream"), self.token)
        except (OSError, TimeoutError):
            return None
        if client.return_code != 0:
            client.close()
            return None
        return client

    def join(self) -> None:
        self.stop.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


@dataclass
class HttpStream:
    """An HTTP device posting telemetry (`hseq` = 1, 2, ...) one request after another."""

    url: str
    device_id: str
    stop: threading.Event = field(default_factory=threading.Event)
    statuses: dict[int, int] = field(default_factory=dict)  # seq -> HTTP status (0: no answer)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        seq = 0
        with requests.Session() as session:
            while not self.stop.is_set():
                seq += 1
                try:
                    response = session.post(self.url, json={"ts": TS_BASE + seq, "values": {"hseq": seq}}, timeout=WAIT)
                    self.statuses[seq] = response.status_code
                except requests.RequestException:
                    self.statuses[seq] = 0
                time.sleep(0.02)

    def ok(self) -> set[int]:
        return {seq for seq, status in dict(self.statuses).items() if status == 200}

    def join(self) -> None:
        self.stop.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


def until(condition, timeout: float = WAIT) -> float:
    """Seconds until `condition()` held (AssertionError if it did not within `timeout`)."""
    started = time.monotonic()
    assert wait_until(condition, timeout, interval=0.1), f"not within {timeout} s"
    return time.monotonic() - started


def test_calls_queued_behind_one_that_found_the_database_unreachable_fail_at_once(tmp_path):
    # The broker's database thread: each call that tries an unreachable database holds it for the
    # store's connect timeout, so the calls right after it fail at once instead of in turn; a
    # call after the pause tries the database again.
    cluster = PostgresCluster.start_new(tmp_path)
    store = PostgresStore(cluster.create_database())
    try:
        cluster.stop()
        with pytest.raises(StoreUnavailable):
            store.count_admin_users()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="cannot be reached"):  # right behind it: not tried
            store.count_admin_users()
        assert time.monotonic() - started < 0.5
        cluster.start()
        time.sleep(UNAVAILABLE_SECONDS)
        assert wait_until(lambda: _answers(store), timeout=WAIT)  # tried, and through
    finally:
        store.close()
        cluster.destroy()


def _answers(store: PostgresStore) -> bool:
    try:
        return store.count_admin_users() == 0
    except StoreUnavailable:
        return False


def test_a_database_outage_is_server_unavailable_everywhere_and_service_resumes_by_itself(gh):
    resume = threading.Event()
    streams = []
    for _ in range(3):
        _, device_id, token = gh.token_device("stream")
        streams.append(MqttStream(gh.broker.mqtt_port, device_id, token, resume))
    _, http_device_id, http_token = gh.token_device("http-stream")
    http_stream = HttpStream(f"{gh.sidecar.url}/api/v1/{http_token}/telemetry", http_device_id)
    probe_name, probe_id, probe_token = gh.token_device("probe")
    key, secret = gh.allow_profile()
    with gh.registry() as registry:
        registry.add_admin(ADMIN, ADMIN_PASSWORD)
    admin = requests.post(f"{gh.sidecar.url}/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD},
                          timeout=WAIT).json()["token"]
    ui = Ui(client=HttpClient(gh.sidecar.url))
    assert ui.login(ADMIN, ADMIN_PASSWORD).status_code == 302
    _, v5_device_id, v5_token = gh.token_device("v5")
    v5 = connect5(gh.broker.mqtt_port, unique("v5"), v5_token)
    assert v5.return_code == 0
    try:
        for stream in (*streams, http_stream):
            stream.start()
        until(lambda: all(len(s.acked) >= 5 for s in streams) and len(http_stream.ok()) >= 5)

        gh.cluster.stop()

        def mqtt311() -> int:
            return connect(gh.broker.mqtt_port, unique("probe"), probe_token).return_code

        def mqtt5() -> int:
            return connect5(gh.broker.mqtt_port, unique("probe5"), probe_token).return_code

        def http() -> requests.Response:
            return gh.http(probe_token, "telemetry", {"during": 1})

        def mqtt5_publish() -> int | None:
            return v5.publish_code(TELEMETRY, json.dumps({"during": 1}), timeout=WAIT)

        def coap_telemetry() -> Code:
            return coap(gh.bridge.url("api", "v1", probe_token, "telemetry"), Code.POST, '{"during": 1}').code

        provision_request = {"deviceName": unique("during"), "provisionDeviceKey": key, "provisionDeviceSecret": secret}

        def mqtt_provisioning() -> tuple[bool, bool]:
            """(answered, closed): a provisioning session needs no database to log in; its
            request is then neither acknowledged nor answered, and the connection is closed."""
            session = provision_client(gh.broker)
            session.subscribe(PROVISION_RESPONSE)
            acked = acknowledged_or_closed(session, PROVISION_REQUEST, json.dumps(provision_request))
            return acked or not session.no_message(0.5), session.wait_disconnected(WAIT)

        def http_provisioning() -> requests.Response:
            return requests.post(f"{gh.sidecar.url}/api/v1/provision", json=provision_request, timeout=WAIT)

        def admin_api() -> int:
            return requests.get(f"{gh.sidecar.url}/api/tenant/devices", params={"pageSize": 10, "page": 0},
                                headers={"X-Authorization": f"Bearer {admin}"}, timeout=WAIT).status_code

        def admin_login() -> int:
            return requests.post(f"{gh.sidecar.url}/api/auth/login", timeout=WAIT,
                                 json={"username": ADMIN, "password": ADMIN_PASSWORD}).status_code

        def web_ui() -> int:
            return ui.get("/ui/devices").status_code

        # At once: each waits for the database's connect timeout.
        probes = (mqtt311, mqtt5, mqtt5_publish, http, coap_telemetry, mqtt_provisioning, http_provisioning,
                  admin_api, admin_login, web_ui)
        with ThreadPoolExecutor(len(probes)) as pool:
            answers = [future.result() for future in [pool.submit(probe) for probe in probes]]
        (code_311, code_5, puback_5, during, coap_code, mqtt_provisioned, http_provisioned,
         *admin_codes, ui_code) = answers
        assert code_311 == 0x03  # MQTT 3.1.1: server unavailable
        assert code_5 == 0x88  # MQTT 5: server unavailable
        assert puback_5 == 0x83 and v5.wait_disconnected(WAIT)  # not stored: a failed PUBACK, then closed
        assert during.status_code == 503
        assert during.json()["message"] == "The database is unavailable; try again later"
        assert during.headers["Retry-After"] == "5"
        assert coap_code == Code.SERVICE_UNAVAILABLE
        assert mqtt_provisioned == (False, True)
        assert http_provisioned.status_code == 503
        assert admin_codes == [503, 503]  # a logged-in administrator's request, and a login
        assert ui_code == 503
        # Every device that was publishing lost its connection without a PUBACK.
        until(lambda: all(s.unanswered for s in streams))

        gh.cluster.start()
        resumed_ms = int(time.time() * 1000)
        resume.set()
        # Back by itself, without restarting any Gatehouse process.
        assert until(lambda: connect(gh.broker.mqtt_port, unique("probe"), probe_token).return_code == 0) < 10
        assert until(lambda: gh.http(probe_token, "telemetry", {"after": 1}).status_code == 200) < 10
        assert until(lambda: coap(gh.bridge.url("api", "v1", probe_token, "telemetry"), Code.POST,
                                  '{"after": 2}').code == Code.CREATED) < 10
        acked_before = [len(s.acked) for s in streams]
        http_before = len(http_stream.ok())
        until(lambda: all(len(s.acked) >= before + 5 for s, before in zip(streams, acked_before))
              and len(http_stream.ok()) >= http_before + 5)
    finally:
        for stream in (*streams, http_stream):
            if stream.thread is not None:
                stream.join()
        gh.cluster.start()  # for the module's teardown, should the test have failed while it was down
    assert gh.running()
    # Nothing acknowledged was lost: every PUBACKed message, every HTTP 200, is stored.
    for stream in streams:
        assert set(stream.acked) <= stored_points(gh, stream.device_id, "seq")
    assert http_stream.ok() <= stored_points(gh, http_device_id, "hseq")
    assert 503 in set(dict(http_stream.statuses).values())  # the HTTP device saw the outage too
    with gh.registry() as registry:
        assert registry.latest_telemetry(probe_id)["after"]["value"] == 2
        assert registry.find_device_by_name(provision_request["deviceName"]) is None
        assert registry.latest_telemetry(v5_device_id) == {}
    # Provisioning that was refused during the outage succeeds now.
    answer, _ = provision(gh.broker, provision_request)
    assert answer["status"] == "SUCCESS"
    # The broker's housekeeping outlived the outage: it stores activity again, and it still
    # closes the session of a device whose credentials change.

    def connected_since_resume() -> bool:
        with gh.registry() as registry:
            return registry.device_activity(probe_id).get(LAST_CONNECT_TIME, 0) >= resumed_ms

    until(connected_since_resume, 5)
    client = connect(gh.broker.mqtt_port, unique("probe"), probe_token)
    assert client.return_code == 0
    with gh.registry() as registry:
        registry.set_credentials(probe_name, AccessToken(unique("TOKEN")))
    assert until(client.disconnected.is_set, 5) < 2.5
    assert gh.running()
