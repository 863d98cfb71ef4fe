"""Retention (gatehouse.retention): telemetry history and the provisioning audit trail are kept
for their set number of days, pruned in small batches by the one broker holding the lease
(several may share the database), or at once by `gatehouse telemetry prune`."""
from __future__ import annotations

import json
import time

import pytest
import requests
from click.testing import CliRunner

from gatehouse.cli import main
from gatehouse.clock import now_ms
from gatehouse.credentials import AccessToken
from gatehouse.payloads import parse_telemetry
from gatehouse.registry import Registry
from gatehouse.retention import BATCH_ROWS, LEASE_TASK, Prunable, RetentionPolicy, cutoff

from .conftest import broker_and_sidecar, start_broker
from .devices import unique
from .mqtt_client import connect, wait_until

# Each test that uses the store runs on SQLite and on PostgreSQL (conftest.py).
pytestmark = pytest.mark.both_stores

DAY_MS = 86_400_000
TELEMETRY = "v1/devices/me/telemetry"
RACE_ROUNDS = 8


def old_and_new_telemetry(registry: Registry, *, old: int, new: int = 3, age_days: float = 40) -> str:
    """A device with `old` history points `age_days` old and `new` recent ones; its id."""
    device = registry.create_device(unique("dev"))
    then, now = now_ms() - int(age_days * DAY_MS), now_ms()
    with registry.batch():
        registry.save_telemetry(device.id, points([(then + i, i) for i in range(old)]))
        registry.save_telemetry(device.id, points([(now - i, -i) for i in range(new)]))
    return device.id


def points(values: list[tuple[int, int]]):
    return parse_telemetry(json.dumps([{"ts": ts, "values": {"t": value}} for ts, value in values]).encode(),
                           max_bytes=1 << 30) if values else []


def audit_event(registry: Registry, age_days: float) -> None:
    registry.store.add_provisioning_event({"ts": now_ms() - int(age_days * DAY_MS), "outcome": "NOT_FOUND",
                                           "device_name": unique("audit")})


def history_size(registry: Registry, device_id: str) -> int:
    return len(registry.store.telemetry_history(device_id, "t"))


def test_old_history_goes_recent_history_and_latest_values_stay(registry):
    device_id = old_and_new_telemetry(registry, old=5)
    assert registry.prune_telemetry(keep_days=30) == 5
    assert history_size(registry, device_id) == 3
    assert registry.latest_telemetry(device_id)["t"]["value"] == 0


def test_one_batch_deletes_at_most_its_limit_oldest_first(registry):
    device_id = old_and_new_telemetry(registry, old=BATCH_ROWS + 10, new=1)
    before = cutoff(now_ms(), 30)
    assert registry.count_prunable(Prunable.TELEMETRY, before) == BATCH_ROWS + 10
    assert registry.prune_batch(Prunable.TELEMETRY, before) == BATCH_ROWS
    remaining = [row["ts"] for row in registry.store.telemetry_history(device_id, "t")]
    assert len(remaining) == 11 and remaining[:10] == sorted(remaining[:10])  # the newest old ones
    assert registry.prune_batch(Prunable.TELEMETRY, before) == 10
    assert registry.prune_batch(Prunable.TELEMETRY, before) == 0


def test_the_audit_trail_has_its_own_retention(registry):
    for age in (400, 366, 10):
        audit_event(registry, age)
    before = RetentionPolicy(telemetry_days=30, audit_days=365).cutoffs(now_ms())[Prunable.AUDIT]
    assert registry.prune_batch(Prunable.AUDIT, before) == 2
    assert len(registry.provisioning_events()) == 1


def test_zero_days_keeps_everything():
    assert RetentionPolicy(0, 0).cutoffs(now_ms()) == {}
    assert set(RetentionPolicy(0, 365).cutoffs(now_ms())) == {Prunable.AUDIT}


NOW_MS = 1_700_000_000_000


@pytest.mark.parametrize("policy, cutoffs", [
    pytest.param(RetentionPolicy(), {Prunable.TELEMETRY: NOW_MS - 30 * DAY_MS, Prunable.AUDIT: NOW_MS - 365 * DAY_MS},
                 id="defaults: 30 days of telemetry, a year of audit events"),
    pytest.param(RetentionPolicy(1, 2), {Prunable.TELEMETRY: NOW_MS - DAY_MS, Prunable.AUDIT: NOW_MS - 2 * DAY_MS},
                 id="whole days"),
    pytest.param(RetentionPolicy(0.5, 0), {Prunable.TELEMETRY: NOW_MS - DAY_MS // 2}, id="half a day, audit kept"),
    pytest.param(RetentionPolicy(0, 0.001), {Prunable.AUDIT: NOW_MS - 86_400}, id="a thousandth of a day"),
])
def test_each_kind_is_pruned_before_now_minus_its_days(policy, cutoffs):
    assert policy.cutoffs(NOW_MS) == cutoffs


def test_the_lease_has_one_holder_until_it_runs_out(data_dir):
    Registry.initialise(data_dir).close()
    with Registry.open(data_dir) as first, Registry.open(data_dir) as second:
        assert first.take_lease(LEASE_TASK, "first", 0.3)
        assert not second.take_lease(LEASE_TASK, "second", 0.3)
        assert first.take_lease(LEASE_TASK, "first", 0.3)  # its holder renews it
        time.sleep(0.4)
        assert second.take_lease(LEASE_TASK, "second", 0.3)  # the first one stopped renewing
        assert not first.take_lease(LEASE_TASK, "first", 0.3)


@pytest.mark.parametrize("as_json", [True, False])
def test_the_prune_command_removes_what_is_older_and_says_how_much(registry, deployment, as_json):
    device_id = old_and_new_telemetry(registry, old=7, age_days=10)
    result = CliRunner().invoke(main, [*deployment.command_options(), "telemetry", "prune", "--older-than-days", "5",
                                       *(["--json"] if as_json else [])], env=deployment.environment(),
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    if as_json:
        answer = json.loads(result.stdout)
        assert answer["removed"] == 7 and answer["olderThanDays"] == 5
    else:
        assert result.stdout.startswith("removed 7 telemetry points recorded before ")
    assert history_size(registry, device_id) == 3


def test_the_prune_command_refuses_a_retention_of_zero_days(data_dir, registry):
    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), "telemetry", "prune", "--older-than-days", "0"])
    assert result.exit_code == 2 and "older-than-days" in result.output


def test_brokers_sharing_a_database_prune_on_schedule_and_only_one_of_them_does(tmp_path):
    data_dir = tmp_path / "data"
    Registry.initialise(data_dir).close()
    with Registry.open(data_dir) as registry:
        device_id = old_and_new_telemetry(registry, old=BATCH_ROWS * 2 + 5)  # three batches
        for age in (400, 10):
            audit_event(registry, age)
    options = ("--telemetry-retention-days", "30", "--audit-retention-days", "365",
               "--retention-interval-seconds", "0.3")
    brokers = [start_broker(data_dir, tmp_path / f"broker-{i}.log", *options) for i in range(2)]
    try:
        with Registry.open(data_dir) as registry:
            assert wait_until(lambda: history_size(registry, device_id) == 3, 20)
            assert wait_until(lambda: len(registry.provisioning_events()) == 1, 10)
            # Old rows again and again, for whichever broker runs next: without the lease each
            # round would go to the first to wake up, one broker or the other.
            for round_ in range(RACE_ROUNDS):
                more = old_and_new_telemetry(registry, old=5, new=0)
                assert wait_until(lambda: history_size(registry, more) == 0, 10), f"round {round_}"
            assert registry.latest_telemetry(device_id)["t"]["value"] == 0
            assert len(registry.store.conn.execute("SELECT holder FROM maintenance_lease").fetchall()) == 1
    finally:
        for broker in brokers:
            broker.stop()
    logs = [broker.log_path.read_text() for broker in brokers]
    pruners = [log for log in logs if "retention: removed" in log]
    assert len(pruners) == 1, logs
    assert f"removed {BATCH_ROWS * 2 + 5} telemetry points" in pruners[0]
    assert "removed 1 provisioning events" in pruners[0]
    assert pruners[0].count("retention: removed 5 telemetry points") == RACE_ROUNDS


def test_a_broker_that_stops_gives_the_lease_up_so_the_next_one_prunes_at_once(tmp_path):
    data_dir = tmp_path / "data"
    Registry.initialise(data_dir).close()
    with Registry.open(data_dir) as registry:
        device_id = old_and_new_telemetry(registry, old=0)
    # The audit trail's retention still takes the lease with telemetry's off; its lease would
    # outlive this broker by two hours (2 x the default interval + 60 s) if it kept it.
    start_broker(data_dir, tmp_path / "first.log", "--telemetry-retention-days", "0").stop()
    with Registry.open(data_dir) as registry:
        assert registry.store.conn.execute("SELECT count(*) FROM maintenance_lease").fetchone()[0] == 0
        registry.save_telemetry(device_id, points([(now_ms() - 40 * DAY_MS, 7)]))
        broker = start_broker(data_dir, tmp_path / "second.log")
        try:
            assert wait_until(lambda: history_size(registry, device_id) == 3, 20)
        finally:
            broker.stop()


def test_a_broker_with_retention_off_keeps_everything(tmp_path):
    data_dir = tmp_path / "data"
    Registry.initialise(data_dir).close()
    with Registry.open(data_dir) as registry:
        device_id = old_and_new_telemetry(registry, old=5, age_days=4000)
    broker = start_broker(data_dir, tmp_path / "broker.log", "--telemetry-retention-days", "0",
                          "--retention-interval-seconds", "0.2")
    try:
        time.sleep(1)
        with Registry.open(data_dir) as registry:
            assert history_size(registry, device_id) == 8
    finally:
        broker.stop()


# --- latest values only (--no-telemetry-history) ---------------------------------------------

def test_a_registry_without_history_keeps_the_latest_values_only(data_dir):
    Registry.initialise(data_dir).close()
    with Registry.open(data_dir, telemetry_history=False) as registry:
        device = registry.create_device(unique("dev"))
        registry.save_telemetry(device.id, points([(1000, 1), (2000, 2)]))
        assert registry.latest_telemetry(device.id)["t"] == {"ts": 2000, "value": 2}
        assert history_size(registry, device.id) == 0


def test_without_history_neither_mqtt_nor_http_telemetry_is_kept_beyond_its_latest_value(tmp_path):
    with broker_and_sidecar(tmp_path, "--no-telemetry-history",
                            sidecar_options=("--no-telemetry-history",)) as (broker, sidecar):
        with Registry.open(broker.data_dir) as registry:
            mqtt_device = registry.create_device(unique("mqtt"), credentials=AccessToken(mqtt_token := unique("T")))
            http_device = registry.create_device(unique("http"), credentials=AccessToken(http_token := unique("T")))
        client = connect(broker.mqtt_port, unique("c"), mqtt_token)
        for i in range(3):
            assert client.publish(TELEMETRY, json.dumps({"t": i}))
        for i in range(3):
            response = requests.post(f"{sidecar.url}/api/v1/{http_token}/telemetry", json={"t": i}, timeout=10)
            assert response.status_code == 200
        with Registry.open(broker.data_dir) as registry:
            for device in (mqtt_device, http_device):
                assert registry.latest_telemetry(device.id)["t"]["value"] == 2
                assert history_size(registry, device.id) == 0
