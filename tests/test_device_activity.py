"""Device activity (gatehouse.device_activity): the server attributes `active`, `lastConnectTime`,
`lastDisconnectTime` and `lastActivityTime` that ThingsBoard keeps per device, from what the
tracker saw, stored by the broker (MQTT sessions) and by the sidecar (HTTP and CoAP requests,
CoAP observations as sessions); and what connected means: a session, never mere activity."""
from __future__ import annotations

import requests

from gatehouse.device_activity import (
    ACTIVE,
    LAST_ACTIVITY_TIME,
    LAST_CONNECT_TIME,
    LAST_DISCONNECT_TIME,
    OBSERVATION_GRACE_MS,
    ActivityTracker,
    ObservationSessions,
    is_connected,
)
from gatehouse.models import AttributeScope
from gatehouse.payloads import KvEntry, ValueKind
from gatehouse.registry import Registry

from .conftest import broker_and_sidecar
from .devices import token_device
from .mqtt_client import connect, wait_until

PERIOD = 10_000


def values(changes: dict, device_id: str) -> dict:
    return {entry.key: entry.value for entry in changes[device_id]}


def server_attributes(data_dir, device_id: str) -> dict:
    with Registry.open(data_dir) as registry:
        return registry.get_attributes(device_id, AttributeScope.SERVER)


# --- the tracker ------------------------------------------------------------------------------


def test_tracker_reports_connect_and_disconnect_with_their_times():
    tracker = ActivityTracker(PERIOD)
    tracker.connected("d1", 1_000)
    assert values(tracker.take_changes(1_000), "d1") == {ACTIVE: True, LAST_CONNECT_TIME: 1_000,
                                                         LAST_ACTIVITY_TIME: 1_000}
    tracker.disconnected("d1", 5_000)
    assert values(tracker.take_changes(5_000), "d1") == {ACTIVE: False, LAST_DISCONNECT_TIME: 5_000,
                                                         LAST_ACTIVITY_TIME: 5_000}
    assert tracker.take_changes(6_000) == {}


def test_tracker_reports_activity_once_per_reporting_period():
    tracker = ActivityTracker(PERIOD)
    tracker.active("d1", 1_000)
    tracker.active("d1", 2_000)
    assert values(tracker.take_changes(2_000), "d1") == {ACTIVE: True, LAST_ACTIVITY_TIME: 1_000}
    tracker.active("d1", 1_000 + PERIOD - 1)
    assert tracker.take_changes(1_000 + PERIOD - 1) == {}
    tracker.active("d1", 1_000 + PERIOD)
    assert values(tracker.take_changes(1_000 + PERIOD), "d1") == {ACTIVE: True, LAST_ACTIVITY_TIME: 1_000 + PERIOD}


def test_tracker_keeps_the_latest_of_what_happened_between_takes():
    tracker = ActivityTracker(PERIOD)
    tracker.connected("d1", 1_000)
    tracker.disconnected("d1", 2_000)
    assert values(tracker.take_changes(2_000), "d1") == {
        ACTIVE: False, LAST_CONNECT_TIME: 1_000, LAST_DISCONNECT_TIME: 2_000, LAST_ACTIVITY_TIME: 2_000}


def test_changes_that_could_not_be_stored_are_taken_again_under_what_came_since():
    # The database away for a while: what a round took is put back for the next one.
    tracker = ActivityTracker(PERIOD)
    tracker.connected("d1", 1_000)
    tracker.active("d2", 1_000)
    failed = tracker.take_changes(1_000)
    tracker.disconnected("d1", 3_000)
    tracker.put_back(failed)
    changes = tracker.take_changes(3_000)
    assert values(changes, "d1") == {ACTIVE: False, LAST_CONNECT_TIME: 1_000, LAST_DISCONNECT_TIME: 3_000,
                                     LAST_ACTIVITY_TIME: 3_000}
    assert values(changes, "d2") == {ACTIVE: True, LAST_ACTIVITY_TIME: 1_000}
    assert tracker.take_changes(4_000) == {}


def test_tracker_forgets_quiet_devices_and_reports_their_next_activity():
    tracker = ActivityTracker(PERIOD)
    for n in range(1_000):
        tracker.active(f"d{n}", 1_000)
    tracker.take_changes(1_000)
    tracker.take_changes(1_000 + PERIOD)
    assert tracker._reported == {}  # bounded by the devices active within the last period
    tracker.active("d1", 1_000 + PERIOD)
    assert values(tracker.take_changes(1_000 + PERIOD), "d1")[LAST_ACTIVITY_TIME] == 1_000 + PERIOD


def test_connected_is_a_session_opened_and_not_closed_while_active_never_mere_activity():
    assert is_connected({ACTIVE: True, LAST_CONNECT_TIME: 1_000, LAST_ACTIVITY_TIME: 1_000})
    assert is_connected({ACTIVE: True, LAST_CONNECT_TIME: 3_000, LAST_DISCONNECT_TIME: 2_000})
    assert not is_connected({ACTIVE: True, LAST_ACTIVITY_TIME: 5_000})  # an HTTP device's requests
    assert not is_connected({ACTIVE: True, LAST_CONNECT_TIME: 2_000, LAST_DISCONNECT_TIME: 2_000})
    assert not is_connected({ACTIVE: False, LAST_CONNECT_TIME: 3_000})  # its process died; it expired
    assert not is_connected({})
    assert not is_connected({ACTIVE: 1, LAST_CONNECT_TIME: 3_000})
    assert not is_connected({ACTIVE: True, LAST_CONNECT_TIME: True})


def test_an_observation_is_one_session_across_its_polls_and_ends_after_the_grace_period():
    tracker = ActivityTracker(PERIOD)
    sessions = ObservationSessions(tracker, grace_ms=10_000)
    sessions.poll_started("d1", 1_000)
    assert values(tracker.take_changes(1_000), "d1") == {ACTIVE: True, LAST_CONNECT_TIME: 1_000,
                                                         LAST_ACTIVITY_TIME: 1_000}
    sessions.poll_ended("d1", 31_000)
    sessions.poll_started("d1", 31_005)  # the bridge's next poll of the same observation
    sessions.poll_started("d1", 32_000)  # and another feed of the device (attributes and rpc)
    sessions.poll_ended("d1", 40_000)
    assert sessions.expire(60_000) == [] and tracker.take_changes(60_000) == {}  # one poll still open
    sessions.poll_ended("d1", 61_000)
    assert sessions.expire(70_000) == []
    sessions.poll_started("d1", 70_500)  # back within the grace period: still the same session
    sessions.poll_ended("d1", 71_000)
    assert tracker.take_changes(71_000) == {}
    assert sessions.expire(80_999) == []
    assert sessions.expire(81_000) == ["d1"]
    assert values(tracker.take_changes(81_000), "d1") == {ACTIVE: False, LAST_DISCONNECT_TIME: 81_000,
                                                          LAST_ACTIVITY_TIME: 81_000}
    sessions.poll_started("d1", 90_000)  # a new observation: a new session
    assert values(tracker.take_changes(90_000), "d1")[LAST_CONNECT_TIME] == 90_000
    assert OBSERVATION_GRACE_MS >= 5_000  # the bridge's longest pause between two polls of a feed


# --- storing it ---------------------------------------------------------------------------------


def test_recorded_activity_is_server_attributes_and_a_deleted_device_is_skipped(registry):
    kept = registry.create_device("kept")
    gone = registry.create_device("gone")
    tracker = ActivityTracker(PERIOD)
    tracker.connected(kept.id, 1_000)
    tracker.connected(gone.id, 1_000)
    registry.delete_device(gone.id, by_id=True)
    registry.record_activity(tracker.take_changes(1_000))
    assert registry.get_attributes(kept.id, AttributeScope.SERVER) == {
        ACTIVE: True, LAST_ACTIVITY_TIME: 1_000, LAST_CONNECT_TIME: 1_000}
    tracker.active(gone.id, 20_000)
    registry.record_activity(tracker.take_changes(20_000))  # a batch of one deleted device


def test_devices_nobody_reported_for_the_timeout_become_inactive_unless_connected(registry):
    quiet, recent, connected = (registry.create_device(name) for name in ("quiet", "recent", "connected"))
    tracker = ActivityTracker(PERIOD)
    tracker.active(quiet.id, 1_000)
    tracker.active(connected.id, 1_000)
    tracker.active(recent.id, 500_000)
    registry.record_activity(tracker.take_changes(500_000))

    expired = registry.expire_activity(601_001, timeout_ms=600_000, connected=[connected.id])

    assert expired == [quiet.id]
    assert registry.get_attributes(quiet.id, AttributeScope.SERVER) == {ACTIVE: False, LAST_ACTIVITY_TIME: 1_000}
    assert registry.get_attributes(recent.id, AttributeScope.SERVER)[ACTIVE] is True
    assert registry.get_attributes(connected.id, AttributeScope.SERVER)[ACTIVE] is True
    assert registry.expire_activity(601_001, timeout_ms=600_000) == [connected.id]


def test_expiry_ignores_an_active_attribute_that_is_not_a_true_boolean(registry):
    device = registry.create_device("odd")
    registry.save_attributes(device.id, AttributeScope.SERVER, [
        KvEntry(ACTIVE, ValueKind.LONG, 1), KvEntry(LAST_ACTIVITY_TIME, ValueKind.LONG, 0)])
    assert registry.expire_activity(10**12) == []


# --- the processes ------------------------------------------------------------------------------


def test_mqtt_session_makes_its_device_active_and_leaving_inactive(tmp_path):
    with broker_and_sidecar(tmp_path) as (broker, _sidecar):
        device, token = token_device(broker)
        client = connect(broker.mqtt_port, "activity-client", token)
        assert client.connack == 0
        assert wait_until(lambda: server_attributes(broker.data_dir, device.id).get(ACTIVE) is True)
        connected = server_attributes(broker.data_dir, device.id)
        assert connected[LAST_CONNECT_TIME] == connected[LAST_ACTIVITY_TIME] > 0

        client.close()
        assert wait_until(lambda: server_attributes(broker.data_dir, device.id).get(ACTIVE) is False)
        left = server_attributes(broker.data_dir, device.id)
        assert left[LAST_DISCONNECT_TIME] >= left[LAST_CONNECT_TIME] == connected[LAST_CONNECT_TIME]


def test_http_request_makes_its_device_active_and_a_refused_one_does_not(tmp_path):
    with broker_and_sidecar(tmp_path) as (broker, sidecar):
        device, token = token_device(broker)
        stranger, _ = token_device(broker)
        assert requests.post(f"{sidecar.url}/api/v1/WRONG-{token}/telemetry", json={"t": 1}, timeout=10).status_code == 401
        assert requests.post(f"{sidecar.url}/api/v1/{token}/telemetry", json={"t": 1}, timeout=10).status_code == 200
        assert wait_until(lambda: server_attributes(broker.data_dir, device.id).get(ACTIVE) is True)
        assert server_attributes(broker.data_dir, device.id)[LAST_ACTIVITY_TIME] > 0
        assert server_attributes(broker.data_dir, stranger.id) == {}


def test_an_mqtt_session_connects_its_device_and_http_requests_even_long_polls_do_not(tmp_path):
    with broker_and_sidecar(tmp_path) as (broker, sidecar):
        mqtt_device, mqtt_token = token_device(broker)
        http_device, http_token = token_device(broker)
        client = connect(broker.mqtt_port, "connected-client", mqtt_token)
        assert client.connack == 0
        assert wait_until(lambda: is_connected(server_attributes(broker.data_dir, mqtt_device.id)))

        poll = requests.get(f"{sidecar.url}/api/v1/{http_token}/attributes/updates?timeout=200", timeout=10)
        assert poll.status_code == 408
        assert requests.post(f"{sidecar.url}/api/v1/{http_token}/telemetry", json={"t": 1}, timeout=10).status_code == 200
        assert wait_until(lambda: server_attributes(broker.data_dir, http_device.id).get(ACTIVE) is True)
        http_activity = server_attributes(broker.data_dir, http_device.id)
        assert LAST_CONNECT_TIME not in http_activity and not is_connected(http_activity)

        client.close()
        assert wait_until(lambda: not is_connected(server_attributes(broker.data_dir, mqtt_device.id)))

