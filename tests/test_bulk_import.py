"""Bulk device import in ThingsBoard's CSV format (SPEC §8), through
`gatehouse.bulk_import.import_devices` and `gatehouse device import`: credential precedence,
typed attributes, per-line errors that leave no trace, idempotent re-runs, ThingsBoard's mapping
object, batching and progress."""
from __future__ import annotations

import base64
import csv
import io
import json
import re
import threading
import time

import click
import pytest
from click.testing import CliRunner

from gatehouse.bulk_import import BATCH_SIZE, BulkImportMapping, ColumnType, import_devices, read_header
from gatehouse.cli import main
from gatehouse.credentials import AccessToken
from gatehouse.errors import ValidationError
from gatehouse.models import AttributeScope
from gatehouse.pki import certificate_pem, create_ca, issue_certificate
from gatehouse.storage import SqliteStore

# Each test that uses the store runs on SQLite and on PostgreSQL (conftest.py).
pytestmark = pytest.mark.both_stores

GENERATED = re.compile(r"[A-Za-z0-9]{20}")

# Row keys used by the tests → the CLI's header cells (column type, `:key` for data columns).
COLUMNS = {
    "name": "NAME", "type": "TYPE", "label": "LABEL", "description": "DESCRIPTION", "gateway": "IS_GATEWAY",
    "token": "ACCESS_TOKEN", "client_id": "MQTT_CLIENT_ID", "user_name": "MQTT_USER_NAME",
    "password": "MQTT_PASSWORD", "x509": "X509", "model": "SHARED_ATTRIBUTE:model",
    "serial": "SERVER_ATTRIBUTE:serial", "temperature": "TIMESERIES:temperature",
}


def csv_text(*rows: dict | str, columns: dict = COLUMNS) -> str:
    """A header line, then each row: a dict of `columns` keys (missing ones empty), or a literal line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns.values())
    for row in rows:
        if isinstance(row, str):
            out.write(row + "\n")
        else:
            writer.writerow([row.get(key, "") for key in columns])
    return out.getvalue()


def line_of(text: str, prefix: str) -> int:
    """The physical line (1-based) that starts with `prefix`."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.startswith(prefix))


def run_import(registry, text: str, *, update: bool = True, progress=None):
    mapping = BulkImportMapping.from_header(read_header(text), update=update)
    return import_devices(registry, text, mapping, progress=progress)


def attribute(registry, name: str, scope: AttributeScope, key: str):
    return registry.get_attributes(registry.get_device(name).id, scope).get(key)


def temperature(registry, name: str):
    return registry.latest_telemetry(registry.get_device(name).id)["temperature"]["value"]


def device_names(registry) -> list[str]:
    return [d.name for d in registry.list_devices(limit=10_000)]


@pytest.fixture(scope="module")
def new_certificate():
    """PEM text of a fresh client certificate (CN given) from a test CA."""
    ca, ca_key = create_ca("Bulk Import Test CA")
    return lambda cn: certificate_pem(issue_certificate(ca, ca_key, cn)[0])


@pytest.fixture
def import_cli(deployment, tmp_path):
    """`gatehouse --data-dir DATA device import FILE [options]` with `text` as FILE (and the
    deployment's database URL in the environment)."""
    def run(text: str, *options: str):
        csv_file = tmp_path / "devices.csv"
        csv_file.write_text(text)
        return CliRunner().invoke(main, [*deployment.command_options(), "device", "import", str(csv_file), *options],
                                  env=deployment.environment(), catch_exceptions=False, prog_name="gatehouse")
    return run


# --- what a row stores -------------------------------------------------------------------------

def test_a_full_row_creates_the_device_its_profile_attributes_and_telemetry(registry):
    text = csv_text({"name": "th-1", "type": "thermostats", "label": "Hall", "description": "first floor",
                     "gateway": "true", "token": "th-1-token", "model": "TH-X", "serial": "42",
                     "temperature": "21.5"})
    assert run_import(registry, text).to_json() == {"created": 1, "updated": 0, "errors": 0, "errorsList": []}

    device = registry.get_device("th-1")
    assert device.profile_name == "thermostats" and device.label == "Hall"
    assert device.additional_info == {"description": "first floor", "gateway": True}
    assert registry.get_profile("thermostats").provision_type.value == "DISABLED"
    assert registry.get_credentials("th-1").credentials_id == "th-1-token"
    assert attribute(registry, "th-1", AttributeScope.SHARED, "model") == "TH-X"
    assert attribute(registry, "th-1", AttributeScope.SERVER, "serial") == 42
    assert temperature(registry, "th-1") == 21.5
    assert registry.token_login("th-1-token").name == "th-1"


def test_an_existing_type_profile_is_reused(registry):
    registry.create_profile("thermostats")
    run_import(registry, csv_text({"name": "a", "type": "thermostats"}, {"name": "b", "type": "thermostats"}))
    assert [p.name for p in registry.list_profiles()] == ["default", "thermostats"]
    assert {registry.get_device(n).profile_name for n in ("a", "b")} == {"thermostats"}


@pytest.mark.parametrize("cell, expected", [
    ("42", 42), ("-7", -7), ("21.5", 21.5), ("true", True), ("FALSE", False), ("TH-X", "TH-X"),
])
def test_cells_are_typed_like_thingsboard(registry, cell, expected):
    run_import(registry, csv_text({"name": "dev", "model": cell, "serial": cell, "temperature": cell}))
    for value in (attribute(registry, "dev", AttributeScope.SHARED, "model"),
                  attribute(registry, "dev", AttributeScope.SERVER, "serial"), temperature(registry, "dev")):
        assert value == expected and type(value) is type(expected)


def test_credential_precedence_x509_then_mqtt_then_token_then_generated(registry, new_certificate):
    pem = new_certificate("x509-device")
    body = "".join(pem.strip().splitlines()[1:-1])
    text = csv_text(
        {"name": "x509", "x509": pem, "client_id": "xc", "user_name": "xu", "password": "xp", "token": "x-token"},
        {"name": "mqtt", "client_id": "mc", "user_name": "mu", "password": "mp", "token": "m-token"},
        {"name": "user-only", "user_name": "uu", "token": "u-token"},
        {"name": "token", "token": "t-token"},
        {"name": "generated"},
    )
    assert run_import(registry, text).errors_list == []

    x509 = registry.get_credentials("x509")
    assert (x509.credentials_type.value, x509.credentials_value) == ("X509_CERTIFICATE", body)
    assert registry.mqtt_login("x", cert_der=base64.b64decode(body)).device.name == "x509"
    mqtt = registry.get_credentials("mqtt")
    assert mqtt.credentials_type.value == "MQTT_BASIC"
    assert json.loads(mqtt.credentials_value) == {"clientId": "mc", "userName": "mu", "password": "mp"}
    assert registry.mqtt_login("mc", "mu", "mp").device.name == "mqtt"
    assert registry.get_credentials("user-only").credentials_type.value == "MQTT_BASIC"
    for unused in ("x-token", "m-token", "u-token"):
        assert registry.token_login(unused) is None
    assert registry.token_login("t-token").name == "token"
    generated = registry.get_credentials("generated")
    assert generated.credentials_type.value == "ACCESS_TOKEN" and GENERATED.fullmatch(generated.credentials_id)


# --- bad rows ----------------------------------------------------------------------------------

def test_bad_rows_are_reported_by_physical_line_and_leave_no_trace(registry, new_certificate):
    text = csv_text(
        {"name": "good-1", "x509": new_certificate("good-1"), "model": "M1"},  # spans several lines
        "",
        {"name": "good-2", "token": "taken-token"},
        {"name": "dup-token", "type": "ghost-profile", "token": "taken-token", "model": "M"},
        {"name": "client-and-password", "client_id": "c", "password": "p", "model": "M"},
        {"name": "bad-x509", "x509": "not a certificate", "model": "M"},
        "short-row,x,y",
        {"name": "", "type": "another-ghost", "token": "nameless-token"},
        {"name": "good-3"},
    )
    result = run_import(registry, text)

    assert (result.created, result.updated, result.errors) == (3, 0, 5)
    expected = [
        (line_of(text, "dup-token,"), "Device credentials are already assigned to another device!"),
        (line_of(text, "client-and-password,"), "Password cannot be specified along with client id"),
        (line_of(text, "bad-x509,"), "Invalid certificate"),
        (line_of(text, "short-row,"), "expected 13 columns, found 3"),
        (line_of(text, ",another-ghost,"), "Device name should be specified!"),
    ]
    assert len(result.errors_list) == len(expected)
    for error, (line, message) in zip(result.errors_list, expected):
        assert error.startswith(f"Line {line}: ") and message in error
    assert device_names(registry) == ["good-1", "good-2", "good-3"]
    assert [p.name for p in registry.list_profiles()] == ["default"]
    assert registry.token_login("nameless-token") is None
    assert attribute(registry, "good-1", AttributeScope.SHARED, "model") == "M1"


def test_a_bad_row_for_an_existing_device_changes_nothing(registry):
    run_import(registry, csv_text({"name": "dev", "label": "Old", "token": "dev-token", "model": "M1"},
                                  {"name": "other", "token": "other-token"}))
    result = run_import(registry, csv_text(
        {"name": "dev", "type": "new-profile", "label": "New", "token": "other-token", "model": "M2"}))
    assert (result.created, result.updated, result.errors) == (0, 0, 1)
    device = registry.get_device("dev")
    assert (device.label, device.profile_name) == ("Old", "default")
    assert registry.get_credentials("dev").credentials_id == "dev-token"
    assert attribute(registry, "dev", AttributeScope.SHARED, "model") == "M1"
    assert [p.name for p in registry.list_profiles()] == ["default"]


def test_a_bad_multi_line_row_is_reported_at_the_line_where_it_starts(registry, new_certificate):
    broken_pem = new_certificate("broken").replace("A", "!")  # still several lines, no longer Base64
    text = csv_text({"name": "broken", "x509": broken_pem})
    assert run_import(registry, text).errors_list[0].startswith(f"Line {line_of(text, 'broken,')}: ")


# --- re-running a file -------------------------------------------------------------------------

def test_lines_ending_in_a_lone_carriage_return_are_rows(registry):
    """Found by tests/test_fuzz_admin_api.py: the csv module refused a lone CR in an unquoted cell
    (text read without newline=""), and the admin API answered 500."""
    result = run_import(registry, "NAME,TYPE\rcr-a,cr-type\rcr-b,cr-type\r\ncr-c,cr-type\n")
    assert (result.created, result.errors) == (3, 0)
    assert {device.name for device in registry.list_devices(name_contains="cr-")} == {"cr-a", "cr-b", "cr-c"}


def test_text_the_csv_module_cannot_read_is_a_validation_error_naming_its_line(registry):
    huge_cell = "x" * (csv.field_size_limit() + 1)
    with pytest.raises(ValidationError, match="^Line 2: field larger than field limit"):
        run_import(registry, f"NAME,TYPE\n{huge_cell},t\n")
    assert registry.count_devices() == 0


def test_re_running_a_file_updates_instead_of_duplicating_and_keeps_credentials(registry, new_certificate):
    text = csv_text(
        {"name": "token", "token": "t-token", "model": "M"},
        {"name": "mqtt", "client_id": "c", "user_name": "u", "password": "p"},
        {"name": "x509", "x509": new_certificate("x509")},
        {"name": "generated", "type": "fleet"},
    )
    assert run_import(registry, text).to_json() == {"created": 4, "updated": 0, "errors": 0, "errorsList": []}
    before = {name: registry.get_credentials(name) for name in device_names(registry)}

    assert run_import(registry, text).to_json() == {"created": 0, "updated": 4, "errors": 0, "errorsList": []}
    assert registry.count_devices() == 4
    assert {name: registry.get_credentials(name) for name in device_names(registry)} == before
    assert [p.name for p in registry.list_profiles()] == ["default", "fleet"]


def test_a_file_without_type_or_label_columns_keeps_profile_and_label(registry):
    run_import(registry, csv_text({"name": "dev", "type": "fleet", "label": "Roof", "model": "M1"}))
    run_import(registry, "NAME,SHARED_ATTRIBUTE:model\ndev,M2\n")
    device = registry.get_device("dev")
    assert (device.profile_name, device.label) == ("fleet", "Roof")
    assert attribute(registry, "dev", AttributeScope.SHARED, "model") == "M2"


def test_without_update_existing_devices_keep_their_attributes_and_telemetry(registry):
    run_import(registry, csv_text({"name": "old", "model": "M1", "serial": "1", "temperature": "10"}))
    result = run_import(registry, csv_text({"name": "old", "model": "M2", "serial": "2", "temperature": "20"},
                                           {"name": "new", "model": "N1"}), update=False)
    assert (result.created, result.updated) == (1, 1)
    assert attribute(registry, "old", AttributeScope.SHARED, "model") == "M1"
    assert attribute(registry, "old", AttributeScope.SERVER, "serial") == 1
    assert temperature(registry, "old") == 10
    assert attribute(registry, "new", AttributeScope.SHARED, "model") == "N1"


# --- mapping -----------------------------------------------------------------------------------

THINGSBOARD_MAPPING = {
    "columns": [{"type": "NAME"}, {"type": "TYPE"}, {"type": "ACCESS_TOKEN"},
                {"type": "SHARED_ATTRIBUTE", "key": "model"}],
    "delimiter": ",", "update": False, "header": True,
}


def test_thingsboards_mapping_object(registry):
    mapping = BulkImportMapping.from_json(THINGSBOARD_MAPPING)
    assert [(c.type, c.key) for c in mapping.columns] == [
        (ColumnType.NAME, None), (ColumnType.TYPE, None), (ColumnType.ACCESS_TOKEN, None),
        (ColumnType.SHARED_ATTRIBUTE, "model")]
    assert (mapping.delimiter, mapping.update, mapping.header) == (",", False, True)

    text = "Device name,Profile,Token,Model\nsensor-a,sensors,tok-a,A1\nsensor-b,sensors,tok-b,B1\n"
    result = import_devices(registry, text, mapping)
    assert result.to_json() == {"created": 2, "updated": 0, "errors": 0, "errorsList": []}
    assert registry.token_login("tok-b").name == "sensor-b"
    assert registry.get_device("sensor-a").profile_name == "sensors"
    assert attribute(registry, "sensor-a", AttributeScope.SHARED, "model") == "A1"


def test_mapping_defaults_and_a_semicolon_file_without_header(registry):
    mapping = BulkImportMapping.from_json({"columns": [{"type": "NAME"}, {"type": "ACCESS_TOKEN"}],
                                           "delimiter": ";", "header": False})
    assert (mapping.delimiter, mapping.update, mapping.header) == (";", True, False)
    assert BulkImportMapping.from_json({"columns": [{"type": "NAME"}]}).delimiter == ","

    result = import_devices(registry, "a;tok-a\nb;tok-a\nc;tok,c\n", mapping)
    assert result.to_json() == {"created": 2, "updated": 0, "errors": 1,
                                "errorsList": ["Line 2: Device credentials are already assigned to another device!"]}
    assert registry.token_login("tok,c").name == "c"


@pytest.mark.parametrize("build", [
    lambda: BulkImportMapping.from_json({"columns": [{"type": "NAME"}, {"type": "LWM2M_CLIENT_ENDPOINT"}]}),
    lambda: BulkImportMapping.from_json({"columns": [{"type": "NAME"}, {"type": "SHARED_ATTRIBUTE"}]}),
    lambda: BulkImportMapping.from_json({"columns": [{"type": "ACCESS_TOKEN"}]}),
    lambda: BulkImportMapping.from_json({"columns": [{"key": "model"}]}),
    lambda: BulkImportMapping.from_json({"columns": "NAME"}),
    lambda: BulkImportMapping.from_header(["NAME", "FIRMWARE"]),
    lambda: BulkImportMapping.from_json({"columns": [{"type": "name"}]}),
    lambda: BulkImportMapping.from_json({"columns": [{"type": "NAME"}, {"type": "SERVER_ATTRIBUTE", "key": 5}]}),
    lambda: BulkImportMapping.from_json({"columns": [{"type": "NAME"}], "delimiter": 5}),
    lambda: BulkImportMapping.from_json({"columns": [{"type": "NAME"}], "delimiter": ""}),
    lambda: BulkImportMapping.from_json({"columns": [{"type": "NAME"}], "update": "yes"}),
    lambda: BulkImportMapping.from_json({"columns": [{"type": "NAME"}], "header": 0}),
], ids=["unsupported type", "attribute without key", "no NAME", "column without type", "columns not a list",
        "unsupported header", "JSON type not spelled as the enum", "key not a string", "delimiter not a string",
        "empty delimiter", "update not a boolean", "header not a boolean"])
def test_invalid_mappings_are_validation_errors(build):
    with pytest.raises(ValidationError):
        build()


# --- batches and progress ----------------------------------------------------------------------

def test_progress_sums_to_the_data_rows(registry):
    text = csv_text({"name": "a"}, "", {"name": "b", "token": "dup"}, {"name": "c", "token": "dup"}, "x,y")
    calls = []
    result = run_import(registry, text, progress=calls.append)
    assert sum(calls) == 4 == result.created + result.updated + result.errors


def test_a_large_import_runs_in_batches(registry):
    rows = [{"name": f"dev-{i:04}", "token": f"token-{i:04}", "model": f"M{i}"} for i in range(2000)]
    rows[1234]["token"] = "token-0001"
    text = csv_text(*rows)
    calls = []
    result = run_import(registry, text, progress=calls.append)

    assert calls == [BATCH_SIZE] * (2000 // BATCH_SIZE)
    assert (result.created, result.errors) == (1999, 1)
    assert result.errors_list[0].startswith(f"Line {line_of(text, 'dev-1234,')}: ")
    assert registry.count_devices() == 1999 and registry.find_device("dev-1234") is None
    assert registry.token_login("token-1999").name == "dev-1999"
    assert attribute(registry, "dev-1500", AttributeScope.SHARED, "model") == "M1500"


def test_a_new_device_batch_with_a_clash_is_redone_row_by_row_so_only_the_clash_fails(registry):
    registry.create_device("existing", credentials=AccessToken("existing-token"))
    rows = [{"name": f"dev-{i:03}", "token": f"token-{i:03}", "model": f"M{i}"} for i in range(300)]
    rows[150]["token"] = "existing-token"  # a clash found only by the batch's insert
    rows[200]["name"] = "dev-010"  # the same name twice in one batch: created, then updated
    rows.append({"name": "existing", "label": "updated"})
    result = run_import(registry, csv_text(*rows))

    assert (result.created, result.updated, result.errors) == (298, 2, 1)
    assert "Device credentials are already assigned to another device!" in result.errors_list[0]
    assert registry.find_device("dev-150") is None and registry.get_device("existing").label == "updated"
    assert registry.token_login("token-200").name == "dev-010"
    assert attribute(registry, "dev-010", AttributeScope.SHARED, "model") == "M200"
    assert registry.token_login("token-299").name == "dev-299"


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # SQLite's one write lock
def test_an_import_gives_way_to_another_writer_with_short_batches_and_pauses(registry, tmp_path):
    # The broker's telemetry commits from another connection all along; the import notices
    # (data_version) and leaves it the write lock most of the time instead of 500-row batches.
    rows = [{"name": f"dev-{i:04}", "token": f"token-{i:04}"} for i in range(3 * BATCH_SIZE)]
    other = SqliteStore(registry.store.path)
    other.conn.execute("CREATE TABLE IF NOT EXISTS other_writes (n)")
    importing, commits = threading.Event(), []

    def write_all_along() -> None:
        importing.wait(10)
        while importing.is_set():
            with other.transaction():
                other.conn.execute("INSERT INTO other_writes VALUES (1)")
            commits.append(1)
            time.sleep(0.001)

    writer = threading.Thread(target=write_all_along)
    writer.start()
    batches = []

    def progress(n: int) -> None:
        batches.append(n)
        importing.set()
        time.sleep(0.02)  # the other writer is surely writing by the next batch

    try:
        result = run_import(registry, csv_text(*rows), progress=progress)
    finally:
        importing.clear()
        writer.join()
        other.close()
    assert result.created == len(rows)
    assert batches[0] == BATCH_SIZE and max(batches[2:]) < BATCH_SIZE / 2, batches
    assert len(commits) > len(batches)


# --- the CLI -----------------------------------------------------------------------------------

def test_cli_import_succeeds_with_exit_status_0(registry, import_cli):
    result = import_cli(csv_text({"name": "a", "model": "42"}, {"name": "b"}))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "created 2, updated 0, errors 0"
    assert "Line" not in result.stderr
    assert attribute(registry, "a", AttributeScope.SHARED, "model") == 42


def test_cli_import_reports_bad_rows_on_stderr_with_exit_status_1(registry, import_cli):
    text = csv_text({"name": "a", "token": "dup"}, {"name": "b", "token": "dup"}, {"name": "", "label": "nameless"})
    result = import_cli(text, "--json")
    assert result.exit_code == 1
    errors = ["Line 3: Device credentials are already assigned to another device!",
              "Line 4: Device name should be specified!"]
    assert json.loads(result.stdout) == {"created": 1, "updated": 0, "errors": 2, "errorsList": errors}
    assert [line for line in result.stderr.splitlines() if line.startswith("Line ")] == errors
    assert device_names(registry) == ["a"]


def test_cli_import_options(registry, import_cli):
    assert import_cli("NAME;SHARED_ATTRIBUTE:model\ndev;M1\n", "--delimiter", ";").exit_code == 0
    assert import_cli("NAME;SHARED_ATTRIBUTE:model\ndev;M2\n", "--delimiter", ";", "--no-update").exit_code == 0
    assert attribute(registry, "dev", AttributeScope.SHARED, "model") == "M1"
    assert import_cli("NAME;SHARED_ATTRIBUTE:model\ndev;M3\n", "--delimiter", ";", "--update").exit_code == 0
    assert attribute(registry, "dev", AttributeScope.SHARED, "model") == "M3"


def test_cli_import_with_an_unsupported_header_is_a_one_line_error(registry, import_cli):
    result = import_cli("NAME,FIRMWARE\ndev,1.0\n")
    assert result.exit_code != 0
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("Error: Unsupported column type")
    assert device_names(registry) == []


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_cli_import_finds_a_files_delimiter_from_its_header(registry, import_cli, delimiter):
    text = csv_text({"name": "dev-1", "token": "token-1", "model": "M1"}, {"name": "dev-2", "token": "token-2"})
    result = import_cli(text.replace(",", delimiter))
    assert result.exit_code == 0, result.output
    assert device_names(registry) == ["dev-1", "dev-2"]
    assert attribute(registry, "dev-1", AttributeScope.SHARED, "model") == "M1"


def test_cli_import_with_the_wrong_delimiter_named_says_which_one_the_file_seems_to_use(registry, import_cli):
    result = import_cli("NAME;ACCESS_TOKEN\ndev;token\n", "--delimiter", ",")
    assert result.exit_code != 0 and len(result.stderr.splitlines()) == 1
    assert "Unsupported column type 'NAME;ACCESS_TOKEN'" in result.stderr
    assert "separated by ';' rather than ','? Name its delimiter with --delimiter ';'" in result.stderr
    assert device_names(registry) == []


def test_cli_progress_bar_length_is_the_number_of_rows(registry, import_cli, new_certificate, monkeypatch):
    bars = []
    real_progressbar = click.progressbar

    def recording_progressbar(*args, **kwargs):
        bars.append(real_progressbar(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(click, "progressbar", recording_progressbar)
    text = csv_text({"name": "a", "x509": new_certificate("a")}, {"name": "b"})
    assert import_cli(text).exit_code == 0
    assert (bars[0].length, bars[0].pos) == (2, 2)
