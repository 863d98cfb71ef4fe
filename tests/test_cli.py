"""The `gatehouse` command (issue: CLI): every command in-process through click's CliRunner, with
`--json` shapes in ThingsBoard's field names, refusals as one-line errors that change nothing,
logins through the library with the credentials the CLI stored, and a few real processes: the
installed entry point, GATEHOUSE_DATA_DIR, and a non-editable `pip install`."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gatehouse.certificates import (
    common_name,
    der_bytes,
    is_issued_by,
    parse_certificate,
)
from gatehouse.cli import main
from gatehouse.device_activity import ActivityTracker
from gatehouse.login import LoginOutcome
from gatehouse.models import AttributeScope
from gatehouse.payloads import KvEntry, TelemetryRecord, ValueKind
from gatehouse.pki import certificate_pem, create_ca
from gatehouse.registry import Registry

PROJECT = Path(__file__).resolve().parents[1]
GATEHOUSE = Path(sys.executable).with_name("gatehouse")  # the venv's console script
GENERATED = re.compile(r"[A-Za-z0-9]{20}")  # generated tokens, keys and secrets


def one_line_error(stderr: str) -> str:
    """The refusal contract: exactly one line on stderr, `Error: ...`, never a traceback."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0]


class Cli:
    """`gatehouse --data-dir DIR ...` run in-process."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.runner = CliRunner()

    def invoke(self, *args, input: str | None = None):
        return self.runner.invoke(main, ["--data-dir", str(self.data_dir), *map(str, args)], input=input,
                                  catch_exceptions=False, prog_name="gatehouse")

    def run(self, *args, input: str | None = None):
        result = self.invoke(*args, input=input)
        assert result.exit_code == 0, result.output
        return result

    def json(self, *args):
        return json.loads(self.run(*args).stdout)

    def fail(self, *args) -> str:
        """Run a command that must be refused; returns its error line."""
        result = self.invoke(*args)
        assert result.exit_code != 0, result.output
        assert result.stdout == ""
        return one_line_error(result.stderr)

    def state(self) -> dict:
        """Everything `list`/`show` can see, to prove that a refusal changed nothing."""
        devices = self.json("device", "list", "--json")
        return {"profiles": self.json("profile", "list", "--json"),
                "devices": [self.json("device", "show", d["name"], "--json") for d in devices]}


def login(data_dir: Path, client_id: str | None, username: str | None = None, password: str | None = None,
          cert_der: bytes | None = None):
    with Registry.open(data_dir) as registry:
        return registry.mqtt_login(client_id, username, password, cert_der=cert_der)


def assert_logs_in_as(device_name: str, result) -> None:
    assert result.accepted, result.outcome
    assert result.device.name == device_name


def sha3(text: str) -> str:
    return hashlib.sha3_256(text.encode()).hexdigest()


def gatehouse(*args, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """A real process of the installed `.venv/bin/gatehouse`."""
    base = {k: v for k, v in os.environ.items() if k != "GATEHOUSE_DATA_DIR"}
    return subprocess.run([str(GATEHOUSE), *map(str, args)], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=cwd, timeout=60)


@pytest.fixture
def cli(tmp_path) -> Cli:
    cli = Cli(tmp_path / "data")
    cli.run("init")
    return cli


@pytest.fixture
def ca_pem_file(tmp_path) -> Path:
    path = tmp_path / "fleet-ca.pem"
    path.write_text(certificate_pem(create_ca("Fleet CA")[0]))
    return path


@pytest.fixture
def bad_pem_file(tmp_path) -> Path:
    path = tmp_path / "bad.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    return path


@pytest.fixture
def issued(cli, tmp_path):
    """`gatehouse pki issue NAME --out DIR` → the certificate's path."""
    def issue(name: str) -> Path:
        cli.run("pki", "issue", name, "--out", tmp_path / "certs")
        return tmp_path / "certs" / f"{name}.pem"
    return issue


# --- init, --version, uninitialised data dir ---------------------------------------------------

def test_version():
    result = CliRunner().invoke(main, ["--version"], prog_name="gatehouse")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"gatehouse, version {version('gatehouse')}"


def test_init_creates_database_server_key_and_development_pki(cli):
    assert {p.name for p in cli.data_dir.iterdir()} >= {"gatehouse.db", "gatehouse.key", "pki"}
    assert {p.name for p in (cli.data_dir / "pki").iterdir()} == {"ca.pem", "ca.key", "server.pem", "server.key"}
    assert [p["name"] for p in cli.json("profile", "list", "--json")] == ["default"]


@pytest.mark.parametrize("command", [
    "profile create p", "profile list", "profile show default", "profile delete p",
    "device create d", "device list", "device show d", "device delete d", "device credentials d --rotate",
    "device telemetry d --key t",
    "device import {csv}", "pki issue d --out {out}", "admin add root --password long-enough-pw",
])
def test_commands_on_an_uninitialised_data_dir_ask_for_init(tmp_path, command):
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text("NAME\nd\n")
    args = shlex.split(command.format(csv=csv_file, out=tmp_path / "certs"))
    error = Cli(tmp_path / "data").fail(*args)
    assert "run `gatehouse init`" in error
    assert not (tmp_path / "data").exists() and not (tmp_path / "certs").exists()


# --- refusals: one line, non-zero, nothing changed ---------------------------------------------

@pytest.fixture
def populated(cli):
    cli.run("profile", "create", "fleet", "--strategy", "allow-create", "--key", "fleet-key",
            "--secret", "fleet-secret")
    cli.run("device", "create", "existing", "--profile", "fleet", "--token", "existing-token")
    cli.run("device", "create", "other", "--client-id", "other-client", "--username", "u", "--password", "p")
    cli.run("admin", "add", "root", "--password", "long-enough-pw")
    return cli


@pytest.mark.parametrize("command, message", [
    ("profile create fleet", "Device profile with such name already exists!"),
    ("profile create fleet2 --strategy allow-create --key fleet-key",
     "Device profile with such provision device key already exists!"),
    ("profile create chain --strategy x509-chain", "needs a CA certificate"),
    ("profile create chain --strategy x509-chain --ca-cert {bad_pem}", "Invalid CA certificate"),
    ("profile create chain --strategy x509-chain --ca-cert {ca_pem} --cn-regex '(unclosed'", "Invalid CN regex"),
    ("profile create chain --strategy x509-chain --ca-cert {ca_pem} --cn-regex '.*'", "capture group"),
    ("profile create plain --key k", "A DISABLED profile takes no provision key"),
    ("profile create topics --mqtt-telemetry-topic 'a/#/b'", "The telemetry topic may have '#' only as its whole"),
    ("app create 'two words'", "Application name must be non-empty, without spaces"),
    ("profile show nope", "not found"),
    ("profile delete nope", "not found"),
    ("profile delete default", "Deletion of Default Device Profile is prohibited!"),
    ("profile delete fleet", "referenced by the devices cannot be deleted"),
    ("device create new --profile nope", "Device profile 'nope' not found"),
    ("device create existing", "Device with such name already exists!"),
    ("device create new --token existing-token", "Device credentials are already assigned to another device!"),
    ("device create new --client-id c --password p", "Password cannot be specified along with client id"),
    ("device create new --cert {bad_pem}", "Invalid certificate"),
    ("device create new --token t --client-id c --username u", "choose one kind of credentials"),
    ("device create new --token t --cert {ca_pem}", "choose one kind of credentials"),
    ("device show nope", "Device 'nope' not found"),
    ("device delete nope", "Device 'nope' not found"),
    ("device credentials nope --rotate", "Device 'nope' not found"),
    ("device credentials other --token existing-token", "already assigned to another device"),
    ("device credentials existing --cert {bad_pem}", "Invalid certificate"),
    ("device credentials existing --token t --username u", "choose one kind of credentials"),
    ("device credentials existing --rotate --token t", "--rotate"),
    ("device telemetry nope --key t", "Device 'nope' not found"),
    ("device telemetry existing --key t --since yesterday", "--since: 'yesterday' is neither an ISO 8601 time"),
    ("device telemetry existing --key t --until 2026-13-01", "--until: '2026-13-01' is neither an ISO 8601 time"),
    ("device telemetry existing --key t --since 2026-01-02 --until 2026-01-01",
     "The start of the range must not be after its end"),
    ("admin add root --password another-long-pw", "User with such username already exists!"),
    ("admin add shorty --password short", "at least 8 characters"),
])
def test_bad_input_is_a_one_line_error_that_changes_nothing(populated, ca_pem_file, bad_pem_file, command, message):
    before = populated.state()
    error = populated.fail(*shlex.split(command.format(ca_pem=ca_pem_file, bad_pem=bad_pem_file)))
    assert message in error
    assert populated.state() == before


# --- profiles ----------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy, provision_type", [
    ("allow-create", "ALLOW_CREATE_NEW_DEVICES"),
    ("check-pre-provisioned", "CHECK_PRE_PROVISIONED_DEVICES"),
])
def test_key_and_secret_profiles_get_generated_key_and_secret(cli, strategy, provision_type):
    created = cli.json("profile", "create", "fleet", "--strategy", strategy, "--json")
    configuration = created["profileData"]["provisionConfiguration"]
    assert created["name"] == "fleet" and created["default"] is False
    assert created["provisionType"] == configuration["type"] == provision_type
    assert GENERATED.fullmatch(created["provisionDeviceKey"])
    assert GENERATED.fullmatch(configuration["provisionDeviceSecret"])
    assert created["provisionDeviceKey"] != configuration["provisionDeviceSecret"]
    assert cli.json("profile", "show", "fleet", "--json") == created


def test_given_key_and_secret_are_kept_and_shown(cli):
    created = cli.json("profile", "create", "fleet", "--strategy", "check-pre-provisioned",
                       "--key", "my-key", "--secret", "my-secret", "--json")
    assert created["provisionDeviceKey"] == "my-key"
    assert created["profileData"]["provisionConfiguration"]["provisionDeviceSecret"] == "my-secret"
    shown = cli.run("profile", "show", "fleet").stdout
    assert "CHECK_PRE_PROVISIONED_DEVICES" in shown and "my-key" in shown and "my-secret" in shown


def test_disabled_is_the_default_strategy_and_has_no_key(cli):
    created = cli.json("profile", "create", "plain", "--json")
    assert created["provisionType"] == "DISABLED" and created["provisionDeviceKey"] is None
    assert created["profileData"]["provisionConfiguration"] == {"type": "DISABLED", "provisionDeviceSecret": None}


@pytest.mark.parametrize("extra, regex, allow_create", [
    ([], "(.*)", True),
    (["--cn-regex", r"(.*)\.example\.com", "--no-allow-create"], r"(.*)\.example\.com", False),
])
def test_x509_chain_profile_is_keyed_by_its_ca_certificate(cli, ca_pem_file, extra, regex, allow_create):
    created = cli.json("profile", "create", "chain", "--strategy", "x509-chain", "--ca-cert", ca_pem_file,
                       *extra, "--json")
    ca = parse_certificate(ca_pem_file.read_text())
    assert created["provisionType"] == "X509_CERTIFICATE_CHAIN"
    assert created["provisionDeviceKey"] == sha3(base64.b64encode(der_bytes(ca)).decode())
    configuration = created["profileData"]["provisionConfiguration"]
    assert configuration["type"] == "X509_CERTIFICATE_CHAIN"
    assert parse_certificate(configuration["provisionDeviceSecret"]) == ca
    assert configuration["certificateRegExPattern"] == regex
    assert configuration["allowCreateNewDevicesByX509Certificate"] is allow_create


def test_default_profile_moves_and_receives_new_devices(cli):
    cli.run("profile", "create", "fleet", "--default")
    profiles = {p["name"]: p["default"] for p in cli.json("profile", "list", "--json")}
    assert profiles == {"default": False, "fleet": True}
    assert cli.run("profile", "list").stdout.splitlines() == ["default\tDISABLED", "fleet\tDISABLED\tdefault"]
    assert cli.json("device", "create", "dev", "--json")["device"]["type"] == "fleet"


def test_profile_delete(cli):
    cli.run("profile", "create", "spare")
    assert cli.run("profile", "delete", "spare").stdout.strip() == "Deleted profile spare"
    assert [p["name"] for p in cli.json("profile", "list", "--json")] == ["default"]


# --- devices and their credentials -------------------------------------------------------------

def test_device_with_a_generated_token_logs_in(cli):
    created = cli.json("device", "create", "dev", "--json")
    device, credentials = created["device"], created["credentials"]
    assert device["name"] == "dev" and device["type"] == "default"
    assert credentials["deviceId"] == {"entityType": "DEVICE", "id": device["id"]["id"]}
    assert credentials["credentialsType"] == "ACCESS_TOKEN" and credentials["credentialsValue"] is None
    assert GENERATED.fullmatch(credentials["credentialsId"])
    assert_logs_in_as("dev", login(cli.data_dir, "any-client-id", credentials["credentialsId"], "any-password"))


def test_device_with_a_given_token_in_a_profile(cli):
    cli.run("profile", "create", "fleet")
    created = cli.json("device", "create", "gw", "--profile", "fleet", "--label", "Roof", "--gateway",
                       "--token", "gw-token", "--json")
    assert created["device"]["type"] == "fleet" and created["device"]["label"] == "Roof"
    assert created["device"]["additionalInfo"] == {"gateway": True}
    assert created["credentials"]["credentialsId"] == "gw-token"
    assert "gateway:     yes" in cli.run("device", "show", "gw").stdout
    assert_logs_in_as("gw", login(cli.data_dir, "c", "gw-token"))


def test_device_with_mqtt_basic_credentials_logs_in(cli):
    credentials = cli.json("device", "create", "m", "--client-id", "c1", "--username", "u1", "--password", "p1",
                           "--json")["credentials"]
    assert credentials["credentialsType"] == "MQTT_BASIC"
    assert credentials["credentialsId"] == sha3("c1|u1")
    assert json.loads(credentials["credentialsValue"]) == {"clientId": "c1", "userName": "u1", "password": "p1"}
    assert_logs_in_as("m", login(cli.data_dir, "c1", "u1", "p1"))
    assert not login(cli.data_dir, "c1", "u1", "wrong").accepted


def test_device_with_a_certificate_from_pki_issue_logs_in(cli, issued):
    cert_path = issued("sensor")
    body = base64.b64encode(der_bytes(parse_certificate(cert_path.read_text()))).decode()
    credentials = cli.json("device", "create", "sensor", "--cert", cert_path, "--json")["credentials"]
    assert credentials["credentialsType"] == "X509_CERTIFICATE"
    assert credentials["credentialsValue"] == body and credentials["credentialsId"] == sha3(body)
    assert_logs_in_as("sensor", login(cli.data_dir, "sensor", cert_der=base64.b64decode(body)))


def test_device_list_show_and_delete(cli):
    for name in ("beta", "alpha", "alphabet"):
        cli.run("device", "create", name, "--token", f"{name}-token")
    assert cli.run("device", "list").stdout.splitlines() == ["alpha\tdefault", "alphabet\tdefault", "beta\tdefault"]
    assert [d["name"] for d in cli.json("device", "list", "--search", "alpha", "--json")] == ["alpha", "alphabet"]
    listed = cli.json("device", "list", "--json")[0]
    shown = cli.json("device", "show", "alpha", "--json")
    assert shown["device"] == listed
    assert set(listed) >= {"id", "createdTime", "name", "type", "label", "deviceProfileId", "additionalInfo"}
    assert set(shown["credentials"]) >= {"credentialsType", "credentialsId", "credentialsValue"}
    assert "alpha-token" in cli.run("device", "show", "alpha").stdout
    assert shown["activity"] == {} and "active:      never seen" in cli.run("device", "show", "alpha").stdout

    assert cli.run("device", "delete", "alpha").stdout.strip() == "Deleted device alpha"
    assert [d["name"] for d in cli.json("device", "list", "--json")] == ["alphabet", "beta"]
    assert not login(cli.data_dir, "c", "alpha-token").accepted


def test_device_show_tells_whether_the_device_is_active_and_when_it_was_last_heard_from(cli):
    cli.run("device", "create", "seen", "--token", "seen-token")
    with Registry.open(cli.data_dir) as registry:
        device = registry.get_device("seen")
        tracker = ActivityTracker()
        tracker.connected(device.id, 1_795_000_000_000)
        registry.record_activity(tracker.take_changes(1_795_000_000_000))
    assert cli.json("device", "show", "seen", "--json")["activity"] == {
        "active": True, "lastActivityTime": 1_795_000_000_000, "lastConnectTime": 1_795_000_000_000}
    assert "active:      yes, last activity 2026-11-18 11:06:40 UTC" in cli.run("device", "show", "seen").stdout


def test_device_show_has_every_scope_of_attributes_and_the_latest_telemetry(cli):
    cli.run("device", "create", "meter", "--token", "meter-token")
    assert "client attributes: none" in cli.run("device", "show", "meter").stdout
    with Registry.open(cli.data_dir) as registry:
        device = registry.get_device("meter")
        registry.save_attributes(device.id, AttributeScope.CLIENT, [KvEntry("fw", ValueKind.STRING, "1.2")])
        registry.save_attributes(device.id, AttributeScope.SHARED, [KvEntry("interval", ValueKind.LONG, 30)])
        tracker = ActivityTracker()
        tracker.connected(device.id, 1_795_000_000_000)
        registry.record_activity(tracker.take_changes(1_795_000_000_000))
        registry.save_telemetry(device.id, [TelemetryRecord(1_700_000_000_250, (
            KvEntry("temperature", ValueKind.DOUBLE, 21.5), KvEntry("state", ValueKind.STRING, "ok")))])
    shown = cli.json("device", "show", "meter", "--json")
    assert shown["attributes"] == {
        "client": {"fw": "1.2"}, "shared": {"interval": 30},
        "server": {"active": True, "lastActivityTime": 1_795_000_000_000, "lastConnectTime": 1_795_000_000_000}}
    assert shown["latestTelemetry"] == {"state": {"ts": 1_700_000_000_250, "value": "ok"},
                                        "temperature": {"ts": 1_700_000_000_250, "value": 21.5}}
    text = cli.run("device", "show", "meter").stdout
    for line in ('  client attributes:\n    fw = "1.2"', "  shared attributes:\n    interval = 30",
                 "    lastConnectTime = 1795000000000 (2026-11-18 11:06:40 UTC)", "    active = true",
                 '  latest telemetry:\n    state = "ok" at 2023-11-14 22:13:20.250 UTC\n'
                 "    temperature = 21.5 at 2023-11-14 22:13:20.250 UTC"):
        assert line in text


def test_device_telemetry_prints_the_history_of_its_keys_newest_first_in_utc(cli):
    cli.run("device", "create", "meter", "--token", "meter-token")
    t0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
    with Registry.open(cli.data_dir) as registry:
        registry.save_telemetry(registry.get_device("meter").id, [TelemetryRecord(t0 + n * 1_500, (
            KvEntry("temperature", ValueKind.DOUBLE, 20.0 + n), KvEntry("state", ValueKind.STRING, f"s{n}")))
            for n in range(5)])
    assert cli.run("device", "telemetry", "meter", "--key", "temperature", "--key", "state", "--key", "humidity",
                   "--limit", "2").stdout == (
        "temperature\n  2023-11-14 22:13:26.000 UTC  24.0\n  2023-11-14 22:13:24.500 UTC  23.0\n"
        'state\n  2023-11-14 22:13:26.000 UTC  "s4"\n  2023-11-14 22:13:24.500 UTC  "s3"\n'
        "humidity: no points\n")
    # --since is included and --until excluded, in ISO 8601 (UTC unless an offset is named) or ms.
    for since, until in (("2023-11-14T22:13:21.500Z", "2023-11-14T22:13:26"),
                         ("2023-11-14T23:13:21.5+01:00", str(t0 + 6_000)), (str(t0 + 1_500), str(t0 + 6_000))):
        assert cli.json("device", "telemetry", "meter", "--key", "temperature", "--since", since, "--until", until,
                        "--json") == {"temperature": [{"ts": t0 + n * 1_500, "value": 20.0 + n} for n in (3, 2, 1)]}
    assert cli.json("device", "telemetry", "meter", "--key", "state", "--since", "2023-11-15", "--json") == {}
    assert len(cli.json("device", "telemetry", "meter", "--key", "state", "--json")["state"]) == 5


def test_credentials_rotate_replaces_the_token(cli):
    old = cli.json("device", "create", "dev", "--json")["credentials"]
    assert cli.json("device", "credentials", "dev", "--json") == old
    assert old["credentialsId"] in cli.run("device", "credentials", "dev").stdout

    new = cli.json("device", "credentials", "dev", "--rotate", "--json")
    assert new["credentialsType"] == "ACCESS_TOKEN" and GENERATED.fullmatch(new["credentialsId"])
    assert new["credentialsId"] != old["credentialsId"]
    assert not login(cli.data_dir, "c", old["credentialsId"]).accepted
    assert_logs_in_as("dev", login(cli.data_dir, "c", new["credentialsId"]))


def test_credentials_can_switch_kind(cli, issued):
    cli.run("device", "create", "dev", "--token", "first-token")
    token = cli.json("device", "credentials", "dev", "--token", "second-token", "--json")
    assert token["credentialsId"] == "second-token"
    assert_logs_in_as("dev", login(cli.data_dir, "c", "second-token"))

    basic = cli.json("device", "credentials", "dev", "--client-id", "c9", "--username", "u9", "--password", "p9",
                     "--json")
    assert basic["credentialsType"] == "MQTT_BASIC"
    assert not login(cli.data_dir, "c", "second-token").accepted
    assert_logs_in_as("dev", login(cli.data_dir, "c9", "u9", "p9"))

    cert_path = issued("dev")
    x509 = cli.json("device", "credentials", "dev", "--cert", cert_path, "--json")
    assert x509["credentialsType"] == "X509_CERTIFICATE"
    assert not login(cli.data_dir, "c9", "u9", "p9").accepted
    assert_logs_in_as("dev", login(cli.data_dir, "dev", cert_der=der_bytes(parse_certificate(cert_path.read_text()))))


# --- pki issue, admin add ----------------------------------------------------------------------

def test_pki_issue_writes_a_client_certificate_signed_by_the_development_ca(cli, tmp_path):
    out = tmp_path / "certs"
    printed = cli.run("pki", "issue", "sensor-1", "--out", out).stdout.split()
    cert_path, key_path = out / "sensor-1.pem", out / "sensor-1.key"
    assert printed == [str(cert_path), str(key_path)]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = parse_certificate(cert_path.read_text())
    assert common_name(cert) == "sensor-1"
    assert is_issued_by(cert, parse_certificate((cli.data_dir / "pki" / "ca.pem").read_text()))
    assert load_pem_private_key(key_path.read_bytes(), password=None).public_key() == cert.public_key()


def test_pki_issue_refuses_to_overwrite(cli, tmp_path):
    out = tmp_path / "certs"
    cli.run("pki", "issue", "sensor-1", "--out", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "refusing to overwrite" in cli.fail("pki", "issue", "sensor-1", "--out", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_profile_with_mqtt_topics_has_thingsboards_mqtt_transport(cli):
    created = cli.json("profile", "create", "sensors", "--mqtt-telemetry-topic", "sensors/+/data",
                       "--ack-invalid-payloads", "--json")
    assert created["transportType"] == "MQTT"
    assert created["profileData"]["transportConfiguration"] == {
        "type": "MQTT", "deviceTelemetryTopic": "sensors/+/data", "deviceAttributesTopic": "v1/devices/me/attributes",
        "deviceAttributesSubscribeTopic": "v1/devices/me/attributes", "sendAckOnValidationException": True,
        "transportPayloadTypeConfiguration": {"transportPayloadType": "JSON"}, "sparkplug": False}
    assert "MQTT telemetry topic:            sensors/+/data" in cli.run("profile", "show", "sensors").stdout
    assert cli.json("profile", "create", "plain", "--json")["transportType"] == "DEFAULT"


def test_app_create_prints_credentials_that_log_in_as_the_application(cli):
    shown = cli.run("app", "create", "console").stdout.splitlines()
    assert shown[0] == "console" and shown[1].startswith("  username: ") and shown[2].startswith("  password: ")
    created = cli.json("app", "create", "dashboard", "--json")
    username, password = created["username"], created["password"]
    with Registry.open(cli.data_dir) as registry:
        assert registry.mqtt_login("any-client", username, password).outcome is LoginOutcome.APPLICATION
        assert registry.mqtt_login("any-client", username, "wrong").outcome is LoginOutcome.BAD_USERNAME_OR_PASSWORD
    assert "already exists" in cli.fail("app", "create", "dashboard")


def test_admin_add(cli):
    assert cli.run("admin", "add", "ops", "--password", "correct-horse").stdout.strip() == "Added administrator ops"
    cli.run("admin", "add", "prompted", input="battery-staple\nbattery-staple\n")
    with Registry.open(cli.data_dir) as registry:
        assert registry.verify_admin("ops", "correct-horse")
        assert not registry.verify_admin("ops", "wrong-horse")
        assert registry.verify_admin("prompted", "battery-staple")


# --- real processes ----------------------------------------------------------------------------

def test_init_twice_is_idempotent(tmp_path):
    data_dir = tmp_path / "data"
    first = gatehouse("--data-dir", data_dir, "init")
    assert first.returncode == 0, first.stderr
    files = {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file() and p.suffix in (".key", ".pem")}
    assert len(files) == 5  # server key, CA and server certificate with their keys
    second = gatehouse("--data-dir", data_dir, "init")
    assert second.returncode == 0, second.stderr
    assert {p: p.read_bytes() for p in files} == files
    assert (data_dir / "gatehouse.db").is_file()


def test_data_dir_comes_from_the_environment_or_defaults_to_gatehouse_data(tmp_path):
    env = {"GATEHOUSE_DATA_DIR": str(tmp_path / "from-env")}
    assert gatehouse("init", env=env).returncode == 0
    assert gatehouse("device", "create", "dev", "--token", "env-token", env=env).returncode == 0
    assert_logs_in_as("dev", login(tmp_path / "from-env", "c", "env-token"))

    assert gatehouse("init", cwd=tmp_path).returncode == 0
    assert (tmp_path / "gatehouse-data" / "gatehouse.db").is_file()


def test_a_refusal_exits_non_zero_with_one_stderr_line(tmp_path):
    uninitialised = gatehouse("--data-dir", tmp_path / "data", "device", "list")
    assert uninitialised.returncode != 0 and uninitialised.stdout == ""
    assert "run `gatehouse init`" in one_line_error(uninitialised.stderr)

    gatehouse("--data-dir", tmp_path / "data", "init")
    missing = gatehouse("--data-dir", tmp_path / "data", "device", "show", "nope")
    assert missing.returncode != 0 and missing.stdout == ""
    assert one_line_error(missing.stderr) == "Error: Device 'nope' not found"


def test_a_non_editable_install_ships_schema_sql_and_a_working_command(tmp_path):
    # Install from a faithful copy (symlinks kept: gatehouse/schema.sql is one in the repository)
    # so that the build does not write build/ and *.egg-info into the working tree.
    source = tmp_path / "src"
    shutil.copytree(PROJECT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", "gatehouse-data"))
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(source)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr

    schema = site / "gatehouse" / "schema.sql"
    assert schema.is_file() and not schema.is_symlink()
    assert "CREATE TABLE" in schema.read_text()
    # The web UI's templates and static files are package data too.
    ui = site / "sidecar" / "ui"
    assert {"base.html", "device.html", "import_job.html"} <= {p.name for p in (ui / "templates" / "ui").iterdir()}
    assert {p.name for p in (ui / "static").iterdir()} == {"ui.css", "ui.js"}

    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("GATEHOUSE_DATA_DIR", None)
    imported = subprocess.run([sys.executable, "-c", "import gatehouse; print(gatehouse.__file__)"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert Path(imported.stdout.strip()).is_relative_to(site)  # not the editable checkout

    def installed(*args):
        done = subprocess.run([str(site / "bin" / "gatehouse"), "--data-dir", str(tmp_path / "d"), *args],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    installed("init")
    assert (tmp_path / "d" / "gatehouse.db").is_file()
    installed("device", "create", "probe")
    assert installed("device", "list").splitlines() == ["probe\tdefault"]


def test_tls_certificate_and_key_must_come_together(tmp_path):
    from click.testing import CliRunner

    from gatehouse.cli import main

    pem = tmp_path / "server.pem"
    pem.write_text("not used")
    for command in ("broker", "up"):
        for option in ("--tls-cert", "--tls-key"):
            result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "d"), command, option, str(pem)])
            assert result.exit_code == 1
            assert result.output.strip().splitlines() == ["Error: --tls-cert and --tls-key go together"]
