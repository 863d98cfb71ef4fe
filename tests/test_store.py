"""The store: schema applied once and recorded, SQLite settings for several processes, secrets
at rest (DESIGN.md: a stolen database file alone yields no usable credential), and device records
saved, paged and looked up by id as the admin REST API does."""
import os
import sqlite3
import stat
import threading
import time

import pytest

from gatehouse.credentials import AccessToken, MqttBasic
from gatehouse.data_dir import DataDir
from gatehouse.errors import NotFoundError, ValidationError
from gatehouse.models import AttributeScope, ProvisionType
from gatehouse.payloads import KvEntry, TelemetryRecord, ValueKind
from gatehouse.provisioning import ProvisionRequest
from gatehouse.registry import Registry
from gatehouse.server_key import ServerKey, ServerKeyError
from gatehouse.storage import SqliteStore, StoreBusy


def test_schema_is_applied_once_and_recorded(tmp_path):
    SqliteStore(tmp_path / "g.db").close()
    store = SqliteStore(tmp_path / "g.db")  # reopening applies nothing twice
    migrations = ["0001_initial", "0002_application_accounts", "0003_credentials_generation",
                  "0004_values_without_affinity", "0005_profile_mqtt_transport", "0006_retention",
                  "0007_server_key_check"]
    assert store.schema_version() == migrations
    rows = store.conn.execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall()
    assert [tuple(r) for r in rows] == [("gatehouse", name) for name in migrations]


def test_an_older_database_is_migrated_forward(tmp_path):
    import sqlite_utils

    from gatehouse.storage.sqlite_migrations import MIGRATIONS

    old = sqlite_utils.Database(tmp_path / "old.db")
    MIGRATIONS.apply(old, stop_before="0002_application_accounts")
    old.execute("DROP TABLE application_account")  # what a file made before 0002 looks like
    old.close()
    store = SqliteStore(tmp_path / "old.db")
    assert "0002_application_accounts" in store.schema_version()
    assert store.conn.execute("SELECT count(*) FROM application_account").fetchone()[0] == 0


def test_a_database_from_before_profile_mqtt_transports_gets_their_columns(tmp_path):
    import sqlite_utils

    from gatehouse.storage.sqlite_migrations import MIGRATIONS

    columns = {"mqtt_telemetry_topic", "mqtt_attributes_topic", "mqtt_attributes_subscribe_topic",
               "mqtt_send_ack_on_validation_exception"}
    old = sqlite_utils.Database(tmp_path / "old.db")
    MIGRATIONS.apply(old, stop_before="0005_profile_mqtt_transport")
    for column in columns:  # what a file made before 0005 looks like
        old.execute(f"ALTER TABLE device_profile DROP COLUMN {column}")
    old.close()
    store = SqliteStore(tmp_path / "old.db")
    assert "0005_profile_mqtt_transport" in store.schema_version()
    present = {row[1] for row in store.conn.execute("PRAGMA table_info(device_profile)")}
    assert columns <= present
    assert store.profile_topic_settings() == []


def test_a_database_from_before_retention_gets_its_lease_table_and_audit_index(tmp_path):
    import sqlite_utils

    from gatehouse.storage.sqlite_migrations import MIGRATIONS

    old = sqlite_utils.Database(tmp_path / "old.db")
    MIGRATIONS.apply(old, stop_before="0006_retention")
    old.execute("DROP TABLE maintenance_lease")  # what a file made before 0006 looks like
    old.execute("DROP INDEX provisioning_event_by_ts")
    old.close()
    store = SqliteStore(tmp_path / "old.db")
    assert "0006_retention" in store.schema_version()
    assert store.take_lease("retention", "me", 0, 1000)
    indexes = {row[1] for row in store.conn.execute("PRAGMA index_list(provisioning_event)")}
    assert "provisioning_event_by_ts" in indexes


def test_a_database_from_before_the_credentials_generation_gets_its_counter_and_triggers(tmp_path):
    import sqlite_utils

    from gatehouse.storage.sqlite_migrations import MIGRATIONS

    old = sqlite_utils.Database(tmp_path / "old.db")
    MIGRATIONS.apply(old, stop_before="0003_credentials_generation")
    for trigger in ("credentials_updated", "credentials_deleted", "device_updated", "device_deleted"):
        old.execute(f"DROP TRIGGER {trigger}")
    old.execute("DROP TABLE credentials_generation")  # what a file made before 0003 looks like
    old.close()
    store = SqliteStore(tmp_path / "old.db")
    assert "0003_credentials_generation" in store.schema_version()
    assert store.credentials_generation() == 0
    triggers = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert {"credentials_updated", "credentials_deleted", "device_updated", "device_deleted"} <= triggers


def test_schema_sql_is_the_schema(tmp_path):
    store = SqliteStore(tmp_path / "g.db")
    tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"device_profile", "device", "device_credentials", "attribute", "telemetry_latest",
            "telemetry_history", "provisioning_event", "admin_user"} <= tables


def test_connection_settings_for_several_processes(tmp_path):
    store = SqliteStore(tmp_path / "g.db")
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_a_failed_transaction_leaves_nothing(registry):
    with pytest.raises(RuntimeError):
        with registry.batch():
            registry.create_device("half-made")
            raise RuntimeError("boom")
    assert registry.find_device("half-made") is None


def test_deleting_a_device_deletes_its_credentials_and_data(registry):
    device = registry.create_device("doomed", credentials=AccessToken("doomed-token"))
    registry.delete_device("doomed")
    assert registry.token_login("doomed-token") is None
    assert registry.store.credentials(device.id) is None


def test_save_device_creates_then_updates_in_place_by_id(registry):
    created = registry.save_device("saved", label="first", additional_info={"gateway": True},
                                   credentials=AccessToken("saved-token"))
    assert created.profile_name == "default" and created.is_gateway
    sensors = registry.create_profile("sensors")
    updated = registry.save_device("renamed", device_id=created.id, profile_id=sensors.id, label=None)
    assert (updated.id, updated.name, updated.profile_name, updated.label) == (created.id, "renamed", "sensors", None)
    assert updated.additional_info == {}  # replaced, as ThingsBoard replaces the whole device
    assert registry.token_login("saved-token").id == created.id  # credentials untouched
    with pytest.raises(NotFoundError, match=r"^Device with id \[.*\] is not found$"):
        registry.save_device("ghost", device_id="00000000-0000-0000-0000-000000000000")


def test_save_device_finds_or_creates_its_profile_by_type_and_a_refusal_leaves_nothing(registry):
    device = registry.save_device("typed", profile_type=" thermostats ")
    assert device.profile_name == "thermostats"
    assert registry.save_device("typed-2", profile_type="thermostats").profile_id == device.profile_id
    with pytest.raises(ValidationError, match="^Device with such name already exists!$"):
        registry.save_device("typed", profile_type="brand-new-type")
    assert registry.find_device_by_name("brand-new-type") is None
    assert "brand-new-type" not in [p.name for p in registry.list_profiles()]
    with pytest.raises(ValidationError, match="^Device is referencing non existing device profile!$"):
        registry.save_device("orphan", profile_id="00000000-0000-0000-0000-000000000000")
    for name in ("", "   ", "nul\x00name", "x" * 256):
        with pytest.raises(ValidationError):
            registry.save_device(name)
    assert registry.count_devices() == 2


def test_devices_are_listed_in_pages_filtered_by_name_and_profile(registry):
    registry.create_profile("meters")
    for name in ("b-meter", "a-meter", "c_100%"):
        registry.create_device(name, profile="meters" if "meter" in name else None)
    assert [d.name for d in registry.list_devices(limit=2)] == ["a-meter", "b-meter"]
    assert [d.name for d in registry.list_devices(offset=2, limit=2)] == ["c_100%"]
    assert [d.name for d in registry.list_devices(name_contains="_100%")] == ["c_100%"]
    assert registry.count_devices(name_contains="METER") == 2 == registry.count_devices(profile_name="meters")
    assert [d.name for d in registry.list_devices(order_by="profile_name", descending=True)][-1] == "c_100%"
    newest_first = [d.created_time for d in registry.list_devices(order_by="created_time", descending=True)]
    assert newest_first == sorted(newest_first, reverse=True)
    with pytest.raises(ValidationError):
        registry.list_devices(order_by="id; DROP TABLE device")


def test_device_lookups_by_id_never_match_a_name(registry):
    target = registry.create_device("target")
    registry.create_device(target.id)  # a device named like another one's id
    assert registry.get_device(target.id, by_id=True) == target
    assert registry.find_device_by_name(target.id).name == target.id
    assert registry.find_device_by_name(target.name) == target
    registry.delete_device(target.id, by_id=True)
    assert registry.find_device_by_name("target") is None
    assert registry.find_device_by_name(target.id) is not None


def test_initialise_is_idempotent_and_protects_the_key(data_dir):
    Registry.initialise(data_dir).close()
    paths = DataDir(data_dir)
    key_before = paths.server_key.read_bytes()
    ca_before = (paths.pki / "ca.pem").read_bytes()
    Registry.initialise(data_dir).close()
    assert paths.server_key.read_bytes() == key_before
    assert (paths.pki / "ca.pem").read_bytes() == ca_before
    assert stat.S_IMODE(os.stat(paths.server_key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(paths.pki / "server.key").st_mode) == 0o600


def test_secrets_are_not_stored_in_plain_text(data_dir):
    secrets = ["TokenPlain123456789", "BasicPassword42xyz", "OnlyUserNameSecret7", "OnlyClientIdSecret9",
               "ProvisionSecretAbc12", "ProvisionedTokenZz99", "PreprovTokenQq88"]
    with Registry.initialise(data_dir) as registry:
        registry.create_device("token", credentials=AccessToken(secrets[0]))
        registry.create_device("basic", credentials=MqttBasic("public-client", "public-user", secrets[1]))
        registry.create_device("user-only", credentials=MqttBasic(None, secrets[2], None))
        registry.create_device("client-only", credentials=MqttBasic(secrets[3], None, None))
        registry.create_profile("p", ProvisionType.ALLOW_CREATE_NEW_DEVICES, key="prov-key", secret=secrets[4])
        registry.provision(ProvisionRequest("prov-key", secrets[4], "provisioned", token=secrets[5]))
        registry.create_profile("pre", ProvisionType.CHECK_PRE_PROVISIONED_DEVICES, key="pre-key", secret=secrets[4] + "x")
        registry.create_device("pre-device", profile="pre", credentials=AccessToken(secrets[6]))
        # The secrets are usable, so the test would notice if they were stored wrongly.
        assert registry.token_login(secrets[0]).name == "token"
        assert registry.mqtt_login("c", secrets[2]).device.name == "user-only"
        assert registry.mqtt_login(secrets[3]).device.name == "client-only"
        raw = b"".join(p.read_bytes() for p in data_dir.glob("gatehouse.db*"))
    for secret in secrets:
        for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
            assert secret.encode(encoding) not in raw, secret


def test_sealed_values_do_not_open_with_another_key_or_in_another_row(tmp_path):
    key = ServerKey.generate()
    sealed = key.seal("secret", "device_credentials:1")
    assert key.open(sealed, "device_credentials:1") == "secret"
    with pytest.raises(ServerKeyError):
        key.open(sealed, "device_credentials:2")
    with pytest.raises(ServerKeyError):
        ServerKey.generate().open(sealed, "device_credentials:1")


def test_digests_are_keyed(tmp_path):
    assert ServerKey.generate().digest("token") != ServerKey.generate().digest("token")


def test_constraint_violations_in_raw_sql_are_enforced(registry):
    # The schema itself refuses a second default profile and a key-less strategy.
    with pytest.raises(sqlite3.IntegrityError):
        registry.store.conn.execute("UPDATE device_profile SET provision_type = 'ALLOW_CREATE_NEW_DEVICES'")


def test_a_connection_that_never_waits_raises_database_busy_at_once_and_changes_nothing(tmp_path):
    waiting = SqliteStore(tmp_path / "g.db")
    never_waits = SqliteStore(tmp_path / "g.db")
    never_waits.never_wait()
    with waiting.transaction():
        waiting.conn.execute("CREATE TABLE marker (x)")
        started = time.monotonic()
        with pytest.raises(StoreBusy), never_waits.transaction():
            never_waits.conn.execute("CREATE TABLE other (x)")
        assert time.monotonic() - started < 1.0  # the waiting store's busy timeout is 10 s
    with never_waits.transaction():  # the lock is free again
        never_waits.conn.execute("CREATE TABLE later (x)")
    tables = {row[0] for row in never_waits.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"marker", "later"} <= tables and "other" not in tables


def test_a_writer_waiting_behind_back_to_back_batches_gets_in_between_two_of_them(tmp_path):
    # A bulk import commits batch after batch with a short gap (bulk_import._LockSharing);
    # a writer waiting meanwhile (the broker's telemetry) must get one of the first gaps, not
    # wait out the import: SQLite's own back-off, up to 100 ms between tries, missed them.
    importer, writer = SqliteStore(tmp_path / "g.db"), SqliteStore(tmp_path / "g.db")
    importer.conn.execute("CREATE TABLE batch (n)")
    batches, got_in_after = 40, []
    first_batch_open = threading.Event()

    def import_batches() -> None:
        for n in range(batches):
            if n:
                time.sleep(0.004)  # shorter than any gap an import leaves
            with importer.transaction():
                importer.conn.execute("INSERT INTO batch VALUES (?)", (n,))
                first_batch_open.set()
                time.sleep(0.02)  # a batch's work, holding the lock

    thread = threading.Thread(target=import_batches)
    thread.start()
    first_batch_open.wait(10)
    with writer.transaction():
        got_in_after.append(writer.conn.execute("SELECT count(*) FROM batch").fetchone()[0])
    thread.join()
    assert got_in_after[0] < 10, f"the waiting writer got in only after {got_in_after[0]} of {batches} batches"



def test_a_database_from_before_untyped_values_is_rebuilt_and_then_keeps_number_like_strings(tmp_path):
    from gatehouse.storage.sqlite_migrations import _statement_creating

    registry = Registry.initialise(tmp_path / "data")
    device = registry.create_device("meter")
    conn = registry.store.conn
    # What a file made before 0004 looks like: the value columns declared ANY (NUMERIC affinity).
    for table in ("attribute", "telemetry_latest", "telemetry_history"):
        conn.execute(f"DROP TABLE {table}")
        conn.execute(_statement_creating(table).replace("value                     BLOB", "value ANY"))
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = '0004_values_without_affinity'")
    conn.commit()
    registry.save_attributes(device.id, AttributeScope.CLIENT, [KvEntry("fw", ValueKind.STRING, "v1")])
    registry.save_telemetry(device.id, [TelemetryRecord(1000, (KvEntry("t", ValueKind.DOUBLE, 2.5),))])
    registry.close()

    with Registry.open(tmp_path / "data") as registry:
        assert "0004_values_without_affinity" in registry.store.schema_version()
        assert registry.get_attributes(device.id, AttributeScope.CLIENT) == {"fw": "v1"}
        assert registry.latest_telemetry(device.id) == {"t": {"ts": 1000, "value": 2.5}}
        registry.save_attributes(device.id, AttributeScope.CLIENT, [KvEntry("fw", ValueKind.STRING, "1e5")])
        assert registry.get_attributes(device.id, AttributeScope.CLIENT) == {"fw": "1e5"}
        indexes = {row[0] for row in registry.store.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "telemetry_history_by_ts" in indexes


def test_number_like_strings_are_stored_as_text(registry):
    """Found by tests/test_fuzz_payloads.py: SQLite's NUMERIC affinity stored "1e5" as 100000."""
    device = registry.create_device("meter")
    strings = ("1e5", " 12 ", "0x10", "-0", "1.50")
    registry.save_attributes(device.id, AttributeScope.CLIENT,
                             [KvEntry(f"k{i}", ValueKind.STRING, text) for i, text in enumerate(strings)])
    registry.save_telemetry(device.id, [TelemetryRecord(1000, tuple(
        KvEntry(f"k{i}", ValueKind.STRING, text) for i, text in enumerate(strings)))])
    expected = {f"k{i}": text for i, text in enumerate(strings)}
    assert registry.get_attributes(device.id, AttributeScope.CLIENT) == expected
    assert {key: point["value"] for key, point in registry.latest_telemetry(device.id).items()} == expected


def test_telemetry_history_is_limited_per_key_by_index_range_scans(registry):
    """Each key's points come from a scan of the primary key (device_id, key, ts) that stops at
    the limit: no sort of the whole history, however long it is."""
    device, other = registry.create_device("logger"), registry.create_device("other")
    registry.save_telemetry(device.id, [TelemetryRecord(ts, (KvEntry("a", ValueKind.LONG, ts),
                                                             KvEntry("b", ValueKind.BOOLEAN, ts % 2 == 0)))
                                        for ts in range(1, 501)])
    registry.save_telemetry(other.id, [TelemetryRecord(10, (KvEntry("a", ValueKind.LONG, -1),))])
    statements = []
    registry.store.conn.set_trace_callback(statements.append)
    history = registry.telemetry_history(device.id, ["b", "a", "b", "missing"], start_ts=100, end_ts=400, limit=3)
    registry.store.conn.set_trace_callback(None)
    assert history == {"b": [{"ts": 399, "value": False}, {"ts": 398, "value": True}, {"ts": 397, "value": False}],
                       "a": [{"ts": 399, "value": 399}, {"ts": 398, "value": 398}, {"ts": 397, "value": 397}]}
    assert len(statements) == 3  # one per distinct key
    for statement in statements:
        plan = " ".join(row[3] for row in registry.store.conn.execute("EXPLAIN QUERY PLAN " + statement))
        assert plan.startswith("SEARCH telemetry_history USING PRIMARY KEY") and "TEMP B-TREE" not in plan
    assert [p["ts"] for p in registry.telemetry_history(device.id, ["a"], limit=2, descending=False)["a"]] == [1, 2]
    assert [p["ts"] for p in registry.telemetry_history(device.id, ["a"], start_ts=499)["a"]] == [500, 499]
    assert registry.telemetry_history(other.id, ["a"]) == {"a": [{"ts": 10, "value": -1}]}
    for keys, options in (([], {}), (["a"], {"limit": 0}), (["a"], {"start_ts": 2, "end_ts": 1})):
        with pytest.raises(ValidationError):
            registry.telemetry_history(device.id, keys, **options)
