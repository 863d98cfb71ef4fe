"""`gatehouse db copy --to URL` and Registry.copy_database_to: a deployment's SQLite database copied
into a real PostgreSQL database (and back), after which the same server key opens everything on
the copy: token, MQTT basic and X.509 logins find the same devices, attribute and telemetry values
keep their kinds, provisioning secrets and trusted CAs still work, admins and applications still
log in. A copy run again, or after an interruption, changes nothing and succeeds; a target that
is another database is refused; counts are checked."""
from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from gatehouse.certificates import der_bytes
from gatehouse.cli import main
from gatehouse.credentials import AccessToken, MqttBasic, X509Certificate
from gatehouse.data_dir import DataDir
from gatehouse.errors import ValidationError
from gatehouse.login import LoginOutcome
from gatehouse.models import AttributeScope, ProvisionType
from gatehouse.mqtt_topic_settings import MqttTopicSettings
from gatehouse.payloads import KvEntry, TelemetryRecord, ValueKind
from gatehouse.pki import certificate_pem, create_ca, issue_certificate
from gatehouse.provisioning import ProvisionRequest, ProvisionStatus
from gatehouse.registry import DatabaseCopyError, Registry
from gatehouse.server_key import ServerKey
from gatehouse.storage import TABLE_KEYS, DatabaseUrl, open_store

ATTRIBUTES = (
    KvEntry("on", ValueKind.BOOLEAN, True),
    KvEntry("off", ValueKind.BOOLEAN, False),
    KvEntry("count", ValueKind.LONG, 42),
    KvEntry("big", ValueKind.LONG, -(2**62)),
    KvEntry("ratio", ValueKind.DOUBLE, 0.1),
    KvEntry("whole", ValueKind.DOUBLE, 2.0),
    KvEntry("tiny", ValueKind.DOUBLE, 1e-300),
    KvEntry("exponent", ValueKind.STRING, "1e5"),
    KvEntry("padded", ValueKind.STRING, " 12 "),
    KvEntry("empty", ValueKind.STRING, ""),
    KvEntry("text", ValueKind.STRING, "ünïcödé \"quoted\" \\ back\nslash"),
    KvEntry("nul", ValueKind.STRING, "a\x00b"),
    KvEntry("doc", ValueKind.JSON, '{"a":[1,2.5,"x"],"b":null}'),
)
T0 = 1_764_460_800_000


@pytest.fixture
def source(registry, tmp_path):
    """A deployment (SQLite) with every kind of row: profiles of each provisioning strategy,
    devices with each kind of credentials, attributes of each kind in each scope, telemetry
    history, provisioning events, an admin and an application account. What the tests check
    afterwards is in the returned dict."""
    ca, ca_key = create_ca("Copy Test CA")
    registry.create_profile("allow", ProvisionType.ALLOW_CREATE_NEW_DEVICES, key="allow-key",
                            secret="allow-secret", description="creates devices")
    registry.create_profile("pre", ProvisionType.CHECK_PRE_PROVISIONED_DEVICES, key="pre-key",
                            secret="pre-secret")
    registry.create_profile("chain", ProvisionType.X509_CERTIFICATE_CHAIN, ca_certificate_pem=certificate_pem(ca),
                            cn_regex=r"(.*)\.chain\.example")
    registry.create_profile("topics", mqtt_topics=MqttTopicSettings("sensors/+/data", "sensors/+/attrs",
                                                                     "sensors/attrs", True))
    token = registry.create_device("token-device", profile="allow", label="hall",
                                   additional_info={"gateway": True, "description": "first floor"},
                                   credentials=AccessToken("token-1"))
    basic = registry.create_device("basic-device", credentials=MqttBasic("basic-client", "basic-user", "basic-pw"))
    user_only = registry.create_device("user-only-device", credentials=MqttBasic(None, "just-a-user", None))
    cert, _ = issue_certificate(ca, ca_key, "x509-device")
    x509 = registry.create_device("x509-device", credentials=X509Certificate.parse(certificate_pem(cert)))
    registry.create_device("pre-device", profile="pre", credentials=AccessToken("pre-token"))
    for device in (token, basic, x509):
        for scope in AttributeScope:
            registry.save_attributes(device.id, scope, ATTRIBUTES)
        registry.save_telemetry(device.id, [TelemetryRecord(T0 + i * 1000, ATTRIBUTES) for i in range(5)])
    provisioned = registry.provision(ProvisionRequest("allow-key", "allow-secret", "provisioned-device"))
    assert provisioned.status is ProvisionStatus.SUCCESS
    assert registry.provision(ProvisionRequest("allow-key", "wrong", "nope")).status is ProvisionStatus.NOT_FOUND
    chain_cert, _ = issue_certificate(ca, ca_key, "first.chain.example")
    assert registry.provision_by_certificate(der_bytes(chain_cert)).status is ProvisionStatus.SUCCESS
    registry.add_admin("root", "long-enough-pw")
    app_user, app_password = registry.create_application("dashboard")
    assert registry.take_lease("retention", "node-1", 60)
    return {
        "devices": {d.name: d.id for d in (token, basic, user_only, x509)},
        "cert_der": der_bytes(cert), "ca": (ca, ca_key), "app": (app_user, app_password),
        "provisioned": provisioned,
    }


def dump(store) -> dict[str, list[dict]]:
    """Every row of every table, as the store gives them to a copy."""
    return {table: store.table_rows(table, None, 1_000_000) for table in TABLE_KEYS}


def comparable(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """A dump without the credentials-change counter, which each database counts for itself."""
    return {table: table_rows for table, table_rows in rows.items() if table != "credentials_generation"}


def sorted_rows(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Rows in one order whatever the database's text collation."""
    return {table: sorted(table_rows, key=lambda row: tuple(str(row[c]) for c in TABLE_KEYS[table]))
            for table, table_rows in rows.items()}


def open_copy(deployment: DataDir, url: str) -> Registry:
    """A registry on the copy, with the deployment's own server key (as every process pointed at
    the new URL opens it)."""
    return Registry.open(DataDir(deployment.root, url, deployment.server_key_file))


def run_cli(deployment: DataDir, *args: str):
    return CliRunner().invoke(main, [*deployment.command_options(), "db", "copy", *args],
                              env=deployment.environment(), catch_exceptions=False, prog_name="gatehouse")


# --- the copy opens with the same key and finds the same things --------------------------------

def test_the_copy_logs_in_the_same_devices_with_the_same_values(registry, source, deployment, postgres_url):
    before = dump(registry.store)
    result = registry.copy_database_to(postgres_url)
    assert result.rows == {table: len(rows) for table, rows in before.items()}
    assert result.rows["device"] == 7 and result.rows["telemetry_history"] == 3 * 5 * len(ATTRIBUTES)
    ids = source["devices"]
    with open_copy(deployment, postgres_url) as copy:
        assert copy.store.__class__.__name__ == "PostgresStore"
        assert copy.token_login("token-1").id == ids["token-device"]
        basic = copy.mqtt_login("basic-client", "basic-user", "basic-pw")
        assert basic.outcome is LoginOutcome.ACCEPTED and basic.device.id == ids["basic-device"]
        assert copy.mqtt_login("basic-client", "basic-user", "wrong").outcome is not LoginOutcome.ACCEPTED
        assert copy.mqtt_login("any-client", "just-a-user", None).device.id == ids["user-only-device"]
        assert copy.certificate_device(source["cert_der"]).id == ids["x509-device"]
        assert copy.mqtt_login("c", cert_der=source["cert_der"]).device.id == ids["x509-device"]
        app_user, app_password = source["app"]
        assert copy.mqtt_login("app", app_user, app_password).outcome is LoginOutcome.APPLICATION
        assert copy.verify_admin("root", "long-enough-pw") and not copy.verify_admin("root", "other-pw")
        # Sealed secrets open where they were copied: the MQTT basic credentials and the token.
        assert copy.get_credentials("basic-device").credentials_value == registry.get_credentials(
            "basic-device").credentials_value
        assert copy.get_credentials("token-device") == registry.get_credentials("token-device")
        for device_id in ids.values():
            assert copy.get_device(device_id) == registry.get_device(device_id)
            for scope in AttributeScope:
                # The store's rows: the same Python values (1e5 stays the text "1e5", 2.0 a float).
                assert copy.store.attributes(device_id, scope.value) == registry.store.attributes(device_id, scope.value)
                assert copy.attribute_data(device_id, scope) == registry.attribute_data(device_id, scope)
            assert copy.latest_telemetry(device_id) == registry.latest_telemetry(device_id)
            keys = [entry.key for entry in ATTRIBUTES]
            assert copy.telemetry_history(device_id, keys) == registry.telemetry_history(device_id, keys)
        values = {row["key"]: (row["kind"], row["value"]) for row in
                  copy.store.attributes(ids["token-device"], AttributeScope.SHARED.value)}
        assert values["exponent"] == ("STRING", "1e5") and values["padded"] == ("STRING", " 12 ")
        assert values["whole"] == ("DOUBLE", 2.0) and isinstance(values["whole"][1], float)
        assert values["on"] == ("BOOLEAN", 1) and values["big"] == ("LONG", -(2**62))
        assert values["nul"] == ("STRING", "a\x00b")
        assert copy.profile_topic_settings() == registry.profile_topic_settings()
        assert copy.provisioning_events() == registry.provisioning_events()
        assert copy.default_profile() == registry.default_profile()
        # Every row, column for column (the credentials-change counter is each database's own).
        assert sorted_rows(comparable(dump(copy.store))) == sorted_rows(comparable(before))


def test_provisioning_secrets_and_trusted_cas_still_work_on_the_copy(registry, source, deployment, postgres_url):
    registry.copy_database_to(postgres_url)
    with open_copy(deployment, postgres_url) as copy:
        created = copy.provision(ProvisionRequest("allow-key", "allow-secret", "after-copy"))
        assert created.status is ProvisionStatus.SUCCESS and created.device_name == "after-copy"
        assert copy.token_login(created.credentials_value).name == "after-copy"
        assert copy.provision(ProvisionRequest("allow-key", "wrong", "x")).status is ProvisionStatus.NOT_FOUND
        pre = copy.provision(ProvisionRequest("pre-key", "pre-secret", "pre-device"))
        assert pre.status is ProvisionStatus.SUCCESS and pre.credentials_value == "pre-token"
        ca, ca_key = source["ca"]
        chain_cert, _ = issue_certificate(ca, ca_key, "second.chain.example")
        chained = copy.provision_by_certificate(der_bytes(chain_cert))
        assert chained.status is ProvisionStatus.SUCCESS and chained.device_name == "second"


def test_provisioning_events_recorded_on_the_copy_get_ids_after_the_copied_ones(registry, source, deployment,
                                                                                postgres_url):
    copied = [event["id"] for event in registry.provisioning_events()]
    assert len(copied) == 3
    registry.copy_database_to(postgres_url)
    with open_copy(deployment, postgres_url) as copy:
        copy.provision(ProvisionRequest("allow-key", "allow-secret", "new-1"))
        copy.provision(ProvisionRequest("allow-key", "wrong", "new-2"))
        events = copy.provisioning_events()
    assert [event["id"] for event in events] == [*copied, max(copied) + 1, max(copied) + 2]
    assert [event["device_name"] for event in events[-2:]] == ["new-1", "new-2"]


def test_a_copy_to_postgresql_and_back_to_sqlite_gives_the_same_rows(registry, source, deployment, postgres_url,
                                                                      tmp_path):
    registry.copy_database_to(postgres_url)
    back = f"sqlite:///{tmp_path / 'back.db'}"
    with open_copy(deployment, postgres_url) as copy:
        copy.copy_database_to(back)
    with open_copy(deployment, back) as returned:
        assert comparable(dump(returned.store)) == comparable(dump(registry.store))


# --- run again, interrupted, refused -----------------------------------------------------------------

def test_a_second_copy_changes_nothing_and_succeeds(registry, source, deployment, postgres_url):
    first = registry.copy_database_to(postgres_url)
    target = open_store(postgres_url)
    try:
        after_first = dump(target)
        second = registry.copy_database_to(postgres_url)
        assert second.rows == first.rows
        assert dump(target) == after_first
    finally:
        target.close()


def test_a_copy_cut_short_is_finished_by_running_it_again(registry, source, deployment, postgres_url):
    class Interrupted(Exception):
        pass

    pages = []

    def interrupt(rows):
        pages.append(rows)
        if len(pages) == 4:
            raise Interrupted

    with pytest.raises(Interrupted):
        registry.copy_database_to(postgres_url, progress=interrupt, batch_size=7)
    target = open_store(postgres_url)
    try:
        # Pages of 7: the 5 profiles, the 7 devices, their 7 credentials, the first 7 attributes.
        assert [target.count_rows(table) for table in ("device", "attribute", "telemetry_history")] == [7, 7, 0]
        done = []
        result = registry.copy_database_to(postgres_url, progress=done.append, batch_size=7)
        assert sum(done) == result.total == sum(registry.database_row_counts().values())
        assert sorted_rows(comparable(dump(target))) == sorted_rows(comparable(dump(registry.store)))
    finally:
        target.close()


def test_progress_counts_every_row_in_pages(registry, source, postgres_url):
    pages = []
    result = registry.copy_database_to(postgres_url, progress=pages.append, batch_size=10)
    assert sum(pages) == result.total == sum(registry.database_row_counts().values())
    assert max(pages) == 10


def test_a_target_of_another_deployment_is_refused(registry, source, postgres_url):
    Registry(DatabaseUrl.parse(postgres_url), ServerKey(os.urandom(32))).close()
    with pytest.raises(DatabaseCopyError, match="belongs to another deployment .* another server key"):
        registry.copy_database_to(postgres_url)
    target = open_store(postgres_url)
    try:
        assert target.count_rows("device") == 0 and target.count_rows("device_profile") == 1
    finally:
        target.close()


def test_a_target_initialised_on_its_own_is_refused(registry, source, deployment, postgres_url):
    open_copy(deployment, postgres_url).close()  # `gatehouse --database URL init`: its own default profile
    with pytest.raises(DatabaseCopyError, match="holds a Gatehouse database of its own"):
        registry.copy_database_to(postgres_url)


def test_rows_that_clash_in_the_target_name_the_rule_they_break(registry, source, postgres_url):
    target = open_store(postgres_url)  # a database Gatehouse made but never opened with a key
    try:
        target.insert_profile({"id": "another-id", "created_time": T0, "name": "allow"})
        with pytest.raises(DatabaseCopyError, match=r"cannot copy device_profile into postgresql://gatehouse:\*\*\*@"
                                                     r".*: rows there clash with the copied ones \(device_profile.name\)"):
            registry.copy_database_to(postgres_url)
        assert target.count_rows("device_profile") == 1
    finally:
        target.close()


def test_counts_that_differ_name_the_table_and_both_counts(registry, source, deployment, postgres_url):
    registry.copy_database_to(postgres_url)
    with open_copy(deployment, postgres_url) as copy:
        copy.create_device("only-in-the-target")
    with pytest.raises(DatabaseCopyError, match=r"copy of device does not match: 7 rows in the source database, "
                                                r"8 in postgresql://"):
        registry.copy_database_to(postgres_url)


def test_a_source_written_during_the_copy_is_refused(registry, source, deployment, postgres_url):
    def meanwhile(rows):
        if not written:
            with Registry.open(deployment) as writer:  # another process, still running
                writer.create_device("written-meanwhile")
            written.append(rows)

    written = []
    with pytest.raises(DatabaseCopyError, match="the source database changed during the copy"):
        registry.copy_database_to(postgres_url, progress=meanwhile)


def test_urls_of_no_supported_kind_and_missing_directories_are_refused(registry, tmp_path):
    with pytest.raises(ValidationError, match="unsupported database URL 'mysql://root:\\*\\*\\*@db/gatehouse'"):
        registry.copy_database_to("mysql://root:hunter2@db/gatehouse")
    with pytest.raises(DatabaseCopyError, match="no directory"):
        registry.copy_database_to(f"sqlite:///{tmp_path / 'missing' / 'copy.db'}")


# --- the command -------------------------------------------------------------------------------------

def test_the_command_copies_and_prints_a_summary_per_table(registry, source, deployment, postgres_url):
    password = urlsplit(postgres_url).password
    assert password
    result = run_cli(deployment, "--to", postgres_url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("copied gatehouse.db to postgresql://") and ":***@" in lines[0]
    assert "device: 7 rows" in lines and "server_key_check: 1 row" in lines
    assert f"telemetry_history: {3 * 5 * len(ATTRIBUTES)} rows" in lines
    assert [line.split(":")[0] for line in lines[1:]] == list(TABLE_KEYS)
    assert password not in result.output
    with open_copy(deployment, postgres_url) as copy:
        assert copy.token_login("token-1").name == "token-device"
    # Run again, the password in libpq's own variable instead of the URL: nothing more to copy.
    parts = urlsplit(postgres_url)
    without_password = parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}").geturl()
    again = CliRunner().invoke(main, [*deployment.command_options(), "db", "copy", "--to", without_password, "--json"],
                               env={**deployment.environment(), "PGPASSWORD": password}, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["tables"]["device"] == 7 and password not in again.output


def test_the_command_refuses_in_one_line(registry, deployment, postgres_url, tmp_path):
    Registry(DatabaseUrl.parse(postgres_url), ServerKey(os.urandom(32))).close()
    for url, message in ((postgres_url, "belongs to another deployment"),
                         ("mysql://root:hunter2@db/gatehouse", "unsupported database URL"),
                         ("sqlite:///", "unsupported database URL")):
        result = run_cli(deployment, "--to", url)
        assert result.exit_code == 1
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("Error: "), result.stderr
        assert message in result.stderr and "hunter2" not in result.stderr


def test_the_command_names_an_unreachable_server_without_its_password(registry, deployment):
    result = run_cli(deployment, "--to", "postgresql://gatehouse:hunter2@127.0.0.1:1/gatehouse")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "Error: cannot reach the PostgreSQL database postgresql://gatehouse:***@127.0.0.1:1/gatehouse")
    assert "hunter2" not in result.output


def test_the_command_needs_an_initialised_data_dir(tmp_path, postgres_url):
    result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "none"), "db", "copy", "--to", postgres_url])
    assert result.exit_code == 1 and "run `gatehouse init`" in result.stderr

