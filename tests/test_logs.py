"""Logs: `--log-format json` is one JSON object per line; and no process ever logs a secret (tokens,
MQTT passwords, provisioning secrets, admin passwords, JWTs and web UI sessions, service passwords),
whatever traffic it serves, devices' or operators' (admin API, web UI, `gatehouse device import`),
in either format. There is no log level option to raise: the processes log at INFO."""
from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from pathlib import Path

import mqtt5
import pytest
from aiocoap import Code

from gatehouse.credentials import AccessToken, MqttBasic
from gatehouse.login import LoginOutcome
from gatehouse.logs import RateLimit, announce, configure_logging, redact_token_path
from gatehouse.models import ProvisionType
from gatehouse.registry import Registry

from .coap_client import coap
from .conftest import CHILD_ENV, NO_BLOCKING, broker_and_sidecar, module_broker, start_coap_bridge
from .devices import unique
from .mqtt_client import RawClient, connect, next_on
from .web_ui_client import HttpClient, Ui, new_device, upload, wait_for_import

LISTENING = ("MQTT  listening on ", "MQTTS listening on ", "HTTP  listening on ", "COAP  listening on ",
             "COAPS listening on ", "METRICS listening on ")
FLOOD_ROUNDS = 100
RATE_LIMIT_BURST, RATE_LIMIT_PERIOD = RateLimit().burst, RateLimit().period  # the broker's


@pytest.fixture
def root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_format_is_one_object_per_line(root_logger):
    out = io.StringIO()
    configure_logging("json", stream=out)
    log = logging.getLogger("gatehouse.test")
    log.info("plain %s", "message")
    log.warning("two\nlines and \"quotes\"")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    entries = [json.loads(line) for line in lines]
    assert [(e["level"], e["logger"], e["message"]) for e in entries] == [
        ("INFO", "gatehouse.test", "plain message"), ("WARNING", "gatehouse.test", "two\nlines and \"quotes\""),
        ("ERROR", "gatehouse.test", "failed")]
    assert all(e["ts"].endswith("Z") for e in entries)
    assert "ValueError: boom" in entries[2]["exception"] and "exception" not in entries[0]


def test_text_format_is_readable(root_logger):
    out = io.StringIO()
    configure_logging("text", stream=out)
    logging.getLogger("gatehouse.test").info("hello")
    assert out.getvalue().rstrip().endswith("INFO gatehouse.test: hello")
    with pytest.raises(ValueError):
        configure_logging("xml")


def test_token_paths_are_redacted():
    assert redact_token_path("/api/v1/SECRET/telemetry") == "/api/v1/***/telemetry"
    assert redact_token_path("/api/v1/SECRET/rpc/7") == "/api/v1/***/rpc/7"
    assert redact_token_path("/api/v1/telemetry") == "/api/v1/telemetry"
    assert redact_token_path("/api/v1/provision") == "/api/v1/provision"


def _http(method: str, url: str, body=None, headers=None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, method=method, data=data,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


def _mqtt_provision(port: int, request: dict) -> dict:
    client = connect(port, "provision", "provision")
    client.subscribe("/provision/response")
    assert client.publish("/provision/request", json.dumps(request))
    answer = json.loads(next_on(client, "/provision/response").payload)
    client.close()
    return answer


class Secrets(list):
    """Every secret a test used, for the logs to be searched for."""

    def new(self, prefix: str) -> str:
        value = unique(prefix)
        self.append(value)
        return value


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_no_secret_is_ever_logged(tmp_path, log_format):
    secrets = Secrets()
    secret = secrets.new

    token, wrong_token = secret("TOKEN"), secret("WRONGTOKEN")
    client_id, username, password, wrong_password = secret("cid"), secret("user"), secret("pw"), secret("badpw")
    key, provision_secret = secret("pkey"), secret("psecret")
    admin, admin_password = unique("admin"), secret("adminpw")
    options = ("--log-format", log_format)
    with broker_and_sidecar(tmp_path, *options) as (broker, sidecar):
        # broker_and_sidecar passes the options to the broker only: restart the sidecar in this format.
        from .conftest import start_sidecar
        sidecar.stop()
        sidecar = start_sidecar(broker, tmp_path / "sidecar-2.log", *options)
        bridge = start_coap_bridge(broker.data_dir, sidecar.url, tmp_path / "coap.log", *options)
        try:
            with Registry.open(broker.data_dir) as registry:
                registry.create_device(unique("tok"), credentials=AccessToken(token))
                registry.create_device(unique("basic"), credentials=MqttBasic(client_id, username, password))
                registry.create_profile(unique("profile"), ProvisionType.ALLOW_CREATE_NEW_DEVICES, key=key,
                                        secret=provision_secret)
                registry.add_admin(admin, admin_password)
                secrets += [registry.service_credentials("sidecar")[1], registry.service_credentials("coap")[1]]

            # MQTT: token and basic logins, wrong ones, data, invalid payloads, provisioning.
            device = connect(broker.mqtt_port, unique("c"), token)
            assert device.return_code == 0
            assert device.publish("v1/devices/me/telemetry", '{"t": 1}')
            device.publish("v1/devices/me/attributes", "not json", qos=0)
            basic = connect(broker.mqtt_port, client_id, username, password)
            assert basic.return_code == 0
            assert basic.publish("v1/devices/me/telemetry", '{"b": 1}')
            assert connect(broker.mqtt_port, unique("c"), wrong_token).return_code != 0
            assert connect(broker.mqtt_port, client_id, username, wrong_password).return_code != 0
            answer = _mqtt_provision(broker.mqtt_port, {"deviceName": unique("m"), "provisionDeviceKey": key,
                                                        "provisionDeviceSecret": provision_secret})
            secrets.append(answer["credentialsValue"])
            _mqtt_provision(broker.mqtt_port, {"deviceName": unique("m"), "provisionDeviceKey": key,
                                               "provisionDeviceSecret": wrong_password})

            # HTTP: device API with good and bad tokens, provisioning, the admin API.
            api = f"{sidecar.url}/api/v1"
            assert _http("POST", f"{api}/{token}/telemetry", {"h": 1})[0] == 200
            assert _http("POST", f"{api}/{token}/telemetry", None)[0] == 400
            assert _http("GET", f"{api}/{token}/attributes?clientKeys=a")[0] == 200
            assert _http("POST", f"{api}/{wrong_token}/telemetry", {"h": 1})[0] == 401
            assert _http("GET", f"{api}/{token}/nothing-here")[0] in (404, 405)
            status, body = _http("POST", f"{api}/provision", {"deviceName": unique("h"), "provisionDeviceKey": key,
                                                              "provisionDeviceSecret": provision_secret})
            secrets.append(json.loads(body)["credentialsValue"])
            status, body = _http("POST", f"{sidecar.url}/api/auth/login", {"username": admin, "password": admin_password})
            assert status == 200
            tokens = json.loads(body)
            secrets += [tokens["token"], tokens["refreshToken"]]
            bearer = {"X-Authorization": f"Bearer {tokens['token']}"}
            assert _http("GET", f"{sidecar.url}/api/auth/user", headers=bearer)[0] == 200
            assert _http("POST", f"{sidecar.url}/api/auth/token", {"refreshToken": tokens["refreshToken"]})[0] == 200
            assert _http("POST", f"{sidecar.url}/api/auth/login",
                         {"username": admin, "password": wrong_password})[0] == 401
            assert _http("GET", f"{sidecar.url}/api/auth/user",
                         headers={"X-Authorization": f"Bearer {tokens['token']}x"})[0] == 401

            # CoAP: data, a wrong token, provisioning; then with the sidecar down (errors logged).
            assert coap(bridge.url("api", "v1", token, "telemetry"), Code.POST, '{"c": 1}').code == Code.CREATED
            assert coap(bridge.url("api", "v1", wrong_token, "telemetry"), Code.POST, '{"c": 1}').code.is_successful() \
                is False
            answer = coap(bridge.url("api", "v1", "provision"), Code.POST,
                          json.dumps({"deviceName": unique("c"), "provisionDeviceKey": key,
                                      "provisionDeviceSecret": provision_secret}))
            secrets.append(json.loads(answer.payload)["credentialsValue"])
            sidecar.stop()
            assert coap(bridge.url("api", "v1", token, "telemetry"), Code.POST, '{"c": 2}').code \
                == Code.SERVICE_UNAVAILABLE
            device.close()
            basic.close()
        finally:
            if bridge.process.poll() is None:
                assert bridge.stop() == 0
    logs = {"broker": broker.log(), "sidecar (first)": (tmp_path / "sidecar.log").read_text(),
            "sidecar": sidecar.log(), "coap": bridge.log()}
    assert "the sidecar is unavailable" in logs["coap"]  # the errors that name a path were logged
    assert_no_secret_in(logs, secrets, json_logs=("broker", "sidecar", "coap") if log_format == "json" else ())


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_no_secret_typed_in_the_web_ui_or_imported_with_the_cli_is_ever_logged(tmp_path, log_format):
    secrets = Secrets()
    secret = secrets.new

    admin, admin_password, wrong_password = unique("admin"), secret("adminpw"), secret("badpw")
    key, provision_secret = secret("pkey"), secret("psecret")
    token, rotated_token = secret("TOKEN"), secret("ROTATED")
    client_id, username, password = secret("cid"), secret("user"), secret("pw")
    ui_csv_token, ui_csv_password, cli_csv_token, cli_csv_password = (secret("UICSV"), secret("uicsvpw"),
                                                                       secret("CLICSV"), secret("clicsvpw"))
    options = ("--log-format", log_format)
    with broker_and_sidecar(tmp_path, *options, sidecar_options=options) as (broker, sidecar):
        with Registry.open(broker.data_dir) as registry:
            registry.add_admin(admin, admin_password)
        ui = Ui(client=HttpClient(sidecar.url))
        assert ui.login(admin, wrong_password).status_code == 200
        assert ui.login(admin, admin_password).status_code == 302
        secrets.append(ui.client.session.cookies["gatehouse_ui"])  # the session is a bearer credential too

        ui.get("/ui/profiles/new")
        profile_name = unique("profile")
        assert ui.post("/ui/profiles/new", {"name": profile_name, "strategy": "ALLOW_CREATE_NEW_DEVICES", "key": key,
                                            "secret": provision_secret}).status_code == 302
        with Registry.open(broker.data_dir) as registry:
            profile_id = registry.get_profile(profile_name).id
        token_name, basic_name = unique("tok"), unique("basic")
        created = new_device(ui, name=token_name, profile=profile_id, token=token)
        assert created.status_code == 302
        device_page = created.location
        assert new_device(ui, name=basic_name, profile=profile_id, credentials_type="MQTT_BASIC", client_id=client_id,
                          user_name=username, password=password).status_code == 302
        # A refusal's message is where a typed token would most easily slip into a log line.
        assert new_device(ui, name=unique("twin"), profile=profile_id, token=token).status_code == 400

        ui.get(device_page)
        assert token in ui.post(f"{device_page}/credentials/reveal").get_data(as_text=True)
        assert ui.post(f"{device_page}/credentials", {"credentials_type": "ACCESS_TOKEN"}).status_code == 302
        with Registry.open(broker.data_dir) as registry:
            secrets.append(registry.get_credentials(token_name).credentials_id)  # the generated one
        assert ui.post(f"{device_page}/credentials", {"credentials_type": "ACCESS_TOKEN",
                                                      "token": rotated_token}).status_code == 302
        assert rotated_token in ui.post(f"{device_page}/credentials/reveal").get_data(as_text=True)

        header = "NAME,ACCESS_TOKEN,MQTT_CLIENT_ID,MQTT_USER_NAME,MQTT_PASSWORD\n"
        ui_csv = header + (f"{unique('ui-a')},{ui_csv_token},,,\n{unique('ui-b')},{ui_csv_token},,,\n"
                           f"{unique('ui-c')},,,{unique('ui-user')},{ui_csv_password}\n")
        ui.get("/ui/import")
        imported = ui.post("/ui/import", {"file": upload(ui_csv, "devices.csv"), "delimiter": ","})
        assert imported.status_code == 302
        assert (wait_for_import(ui, imported.location)["created"], ui.get(imported.location).status_code) == (2, 200)
        assert ui.post("/ui/logout").status_code == 302

        cli_csv = tmp_path / "devices.csv"
        cli_csv.write_text(header + f"{unique('cli-a')},{cli_csv_token},,,\n{unique('cli-b')},{cli_csv_token},,,\n"
                                    f"{unique('cli-c')},,,{unique('cli-user')},{cli_csv_password}\n")
        cli = subprocess.run([sys.executable, "-m", "gatehouse", "--data-dir", str(broker.data_dir), "device", "import",
                              str(cli_csv)], capture_output=True, text=True, timeout=60, env=CHILD_ENV, check=False)
        assert cli.returncode == 1 and "created 2, updated 0, errors 1" in cli.stdout, cli

        with Registry.open(broker.data_dir) as registry:
            for device_token in (rotated_token, ui_csv_token, cli_csv_token):
                assert registry.mqtt_login("any", device_token).outcome is LoginOutcome.ACCEPTED
            assert registry.mqtt_login(client_id, username, password).outcome is LoginOutcome.ACCEPTED
        sidecar.stop()  # its log complete, shutdown included
    assert_no_secret_in({"broker": broker.log(), "sidecar": sidecar.log(), "CLI": cli.stdout + cli.stderr}, secrets,
                        json_logs=("broker", "sidecar") if log_format == "json" else ())


def assert_no_secret_in(logs: dict[str, str], secrets: list[str], json_logs: Collection[str] = ()) -> None:
    """No log (name -> text) holds any of `secrets`; those named in `json_logs` are one JSON object
    a line, but for the listeners' lines."""
    secrets = [s for s in secrets if isinstance(s, str) and s]
    for name, text in logs.items():
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{name} logged {leaked}:\n{text}"
        if name in json_logs:
            for line in text.splitlines():
                if not line.startswith(LISTENING):
                    entry = json.loads(line)
                    assert {"ts", "level", "logger", "message"} <= entry.keys(), line


def test_a_listening_line_is_one_write_that_no_log_line_from_another_thread_can_split(monkeypatch):
    writes: list[str] = []

    class Stdout(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    monkeypatch.setattr("sys.stdout", Stdout())
    announce("HTTP  listening on 127.0.0.1:8080")
    assert writes == ["HTTP  listening on 127.0.0.1:8080\n"]


def _malformed_mqtt5_packets() -> list[tuple[bytes, bytes | None]]:
    """(CONNECT, packet after it) pairs the mqtt5 codec could not decode: text fields that are
    not UTF-8, in a CONNECT, a PUBLISH and a SUBSCRIBE (None: the CONNECT is the bad one)."""
    def corrupt(packet: bytes, text: str) -> bytes:
        at = packet.index(text.encode())
        return packet[:at] + b"\xff" + packet[at + 1:]

    good_connect = mqtt5.ConnectPacket(client_id=unique("flood"), username="provision").write()
    return [
        (corrupt(mqtt5.ConnectPacket(client_id="flood-client", username="provision").write(), "flood-client"), None),
        (good_connect, corrupt(mqtt5.PublishPacket("/provision/request", b"{}").write(), "provision")),
        (good_connect, corrupt(mqtt5.SubscribePacket(1, [mqtt5.TopicFilter("/provision/response")]).write(),
                               "provision")),
    ]


def test_a_flood_of_malformed_mqtt5_packets_logs_json_only_and_a_bounded_number_of_lines(tmp_path):
    """The mqtt5 codec panics on text that is not UTF-8, and a panic writes straight to stderr,
    past logging; the broker must turn each bad packet into a log record, and a flood of them
    into a bounded number of lines."""
    with module_broker(tmp_path, "--log-format", "json", *NO_BLOCKING) as broker:
        packets = _malformed_mqtt5_packets()
        started = time.monotonic()
        for _ in range(FLOOD_ROUNDS):
            for connect_packet, bad in packets:
                with RawClient(broker.mqtt_port) as raw:
                    raw.send(connect_packet)
                    if bad is not None:
                        assert raw.read(2)[:1] == b"\x20"  # its CONNACK
                        raw.send(bad)
                    assert raw.closed_by_server(5)
        periods = int((time.monotonic() - started) // RATE_LIMIT_PERIOD) + 1
        good = connect(broker.mqtt_port, unique("after"), "provision")  # the broker still serves
        assert good.return_code == 0
        good.close()
        broker.stop()
        lines = [line for line in broker.log_path.read_text().splitlines() if not line.startswith(LISTENING)]
    for line in lines:
        assert isinstance(json.loads(line), dict), line
    malformed = [line for line in lines if "UTF-8" in line or "malformed" in line.lower()]
    assert malformed, "the bad packets were not logged at all"
    # Each kind of bad packet is logged from its own line of code: a burst of each per period.
    bound = len(packets) * RATE_LIMIT_BURST * periods + 5
    assert len(lines) <= bound, f"{len(lines)} lines for {FLOOD_ROUNDS * len(packets)} bad packets"


def test_rate_limit_holds_back_a_flood_from_one_call_site_and_says_how_much_it_held_back(root_logger):
    out, now = io.StringIO(), [0.0]
    configure_logging("text", stream=out, rate_limit=RateLimit(burst=3, period=10, clock=lambda: now[0]))
    log = logging.getLogger("gatehouse.test")

    def refused(i):
        log.info("refused %d", i)  # one call site

    for i in range(50):
        refused(i)
    log.info("another line")  # another call site: its own allowance
    now[0] = 10.0
    refused(99)
    lines = out.getvalue().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [
        "refused 0", "refused 1", "refused 2", "another line",
        "refused 99 (47 more like this in 10 s were not logged)"]


@pytest.mark.parametrize("level, info_logged", [("warning", False), ("INFO", True), ("DEBUG", True)])
def test_log_level_leaves_out_less_severe_records_and_never_the_listening_lines(tmp_path, level, info_logged):
    # A refused login is logged at INFO; where the broker listens is printed at every level
    # (gatehouse up and the tests read the ports from it).
    with module_broker(tmp_path, "--log-level", level, *NO_BLOCKING) as broker:
        refused = connect(broker.mqtt_port, unique("nobody"), "no-such-token")
        assert refused.return_code == 5
        refused.close()
        broker.stop()
        text = broker.log_path.read_text()
    assert "MQTT  listening on" in text
    assert (" INFO " in text) is info_logged, text


def test_every_component_of_up_gets_the_log_level():
    from gatehouse.cli.supervisor import Settings, components

    for part in components(Settings(data_dir=Path("d"), log_level="WARNING")):
        argv = list(part.argv)
        assert argv[argv.index("--log-level") + 1] == "WARNING", part.name
