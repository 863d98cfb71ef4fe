"""Attributes and telemetry as devices send and request them (SPEC §2.3, §2.4), stored in the
real database and read back with their types."""
import json

import pytest

from gatehouse.clock import now_ms
from gatehouse.models import AttributeScope
from gatehouse.payloads import parse_attribute_request, parse_attributes, parse_telemetry

# Each test that uses the store runs on SQLite and on PostgreSQL (conftest.py).
pytestmark = pytest.mark.both_stores


@pytest.fixture
def device_id(registry):
    return registry.create_device("data-device").id


def test_client_attributes_keep_their_types(registry, device_id):
    registry.save_attributes(device_id, AttributeScope.CLIENT, parse_attributes(
        b'{"fw":"1.2","count":42,"ratio":0.5,"on":true,"cfg":{"a":[1,2]},"numeric":"7"}'))
    assert registry.get_attributes(device_id, AttributeScope.CLIENT) == {
        "fw": 1.2, "count": 42, "ratio": 0.5, "on": True, "cfg": {"a": [1, 2]}, "numeric": 7}


def test_whole_number_doubles_stay_doubles(registry, device_id):
    # SQLite's NUMERIC affinity stores 2.0 as 2; ThingsBoard answers a DOUBLE as 2.0.
    registry.save_attributes(device_id, AttributeScope.CLIENT, parse_attributes(b'{"d": 2.0, "cast": "3.0"}'))
    registry.save_telemetry(device_id, parse_telemetry(b'{"t": 4.0}'))
    stored = registry.get_attributes(device_id, AttributeScope.CLIENT)
    assert json.dumps(stored, sort_keys=True) == '{"cast": 3.0, "d": 2.0}'
    assert json.dumps(registry.latest_telemetry(device_id)["t"]["value"]) == "4.0"


def _request(registry, device_id, body: bytes):
    request = parse_attribute_request(body)
    return registry.device_attributes(device_id, request.client_keys, request.shared_keys)


def test_attribute_requests_follow_thingsboard_scoping(registry, device_id):
    registry.save_attributes(device_id, AttributeScope.CLIENT, parse_attributes(b'{"c1":1,"c2":"two"}'))
    registry.save_attributes(device_id, AttributeScope.SHARED, parse_attributes(b'{"s1":true}'))
    registry.save_attributes(device_id, AttributeScope.SERVER, parse_attributes(b'{"hidden":1}'))
    assert _request(registry, device_id, b"{}") == {"client": {"c1": 1, "c2": "two"}, "shared": {"s1": True}}
    assert _request(registry, device_id, b'{"clientKeys":"c2"}') == {"client": {"c2": "two"}}
    assert _request(registry, device_id, b'{"sharedKeys":"s1,nope"}') == {"shared": {"s1": True}}
    assert _request(registry, device_id, b'{"clientKeys":"c1","sharedKeys":"s1"}') == {
        "client": {"c1": 1}, "shared": {"s1": True}}
    # Server-scope attributes are never shown to the device, and empty sections are left out.
    assert _request(registry, device_id, b'{"clientKeys":"hidden","sharedKeys":"none"}') == {}


def test_attribute_data_has_thingsboard_shape_and_update_times(registry, device_id):
    registry.save_attributes(device_id, AttributeScope.SERVER, parse_attributes(b'{"b": 2.0, "a": "x"}'))
    data = registry.attribute_data(device_id, AttributeScope.SERVER)
    assert [(item["key"], item["value"]) for item in data] == [("a", "x"), ("b", 2.0)]
    assert all(abs(item["lastUpdateTs"] - now_ms()) < 60_000 for item in data)
    assert registry.attribute_data(device_id, AttributeScope.SERVER, ["b", "missing"]) == data[1:]
    assert registry.attribute_data(device_id, AttributeScope.SHARED) == []


def test_deleted_attributes_are_gone(registry, device_id):
    registry.save_attributes(device_id, AttributeScope.SHARED, parse_attributes(b'{"a":1,"b":2}'))
    registry.delete_attributes(device_id, AttributeScope.SHARED, ["a"])
    assert registry.get_attributes(device_id, AttributeScope.SHARED) == {"b": 2}


def test_telemetry_with_and_without_timestamps(registry, device_id):
    before = now_ms()
    registry.save_telemetry(device_id, parse_telemetry(
        b'[{"ts":1000,"values":{"t":20.5}},{"ts":2000,"values":{"t":21}},{"h":55,"ok":false}]'))
    latest = registry.latest_telemetry(device_id)
    assert latest["t"] == {"ts": 2000, "value": 21}
    assert latest["ok"]["value"] is False and latest["h"]["ts"] >= before
    history = registry.store.telemetry_history(device_id, "t")
    assert [(row["ts"], row["value"]) for row in history] == [(1000, 20.5), (2000, 21)]


def test_late_telemetry_does_not_replace_the_latest_value(registry, device_id):
    registry.save_telemetry(device_id, parse_telemetry(b'{"ts":5000,"values":{"t":2}}'))
    registry.save_telemetry(device_id, parse_telemetry(b'{"ts":4000,"values":{"t":1}}'))
    assert registry.latest_telemetry(device_id)["t"] == {"ts": 5000, "value": 2}
    # The same timestamp overwrites, as in ThingsBoard's ts_kv.
    registry.save_telemetry(device_id, parse_telemetry(b'{"ts":5000,"values":{"t":3}}'))
    assert registry.latest_telemetry(device_id)["t"]["value"] == 3
    assert len(registry.store.telemetry_history(device_id, "t")) == 2


def test_relaxed_json_from_thingsboard_coap_docs_is_stored(registry, device_id):
    registry.save_telemetry(device_id, parse_telemetry(b"{temperature:25}"))
    assert registry.latest_telemetry(device_id)["temperature"]["value"] == 25


def test_pruning_keeps_recent_history_and_latest_values(registry, device_id):
    old = now_ms() - 40 * 86_400_000
    registry.save_telemetry(device_id, parse_telemetry(b'{"ts":%d,"values":{"t":1}}' % old))
    registry.save_telemetry(device_id, parse_telemetry(b'{"t":2}'))
    assert registry.prune_telemetry(keep_days=30) == 1
    assert [row["value"] for row in registry.store.telemetry_history(device_id, "t")] == [2]
    assert registry.latest_telemetry(device_id)["t"]["value"] == 2


def test_values_keep_their_exact_types_and_bytes_through_batched_writes(registry, device_id):
    # Batches travel to SQLite as one JSON document (store._insert_rows); nothing may change on
    # the way: 64-bit extremes, doubles, booleans, nested JSON, and text with a NUL character.
    payload = (b'{"big": 9223372036854775807, "small": -9223372036854775808, "third": 0.1,'
               b' "tiny": 5e-324, "flag": true, "nested": {"a": [1, "x"]}, "text": "caf\\u00e9"}')
    registry.save_telemetry(device_id, parse_telemetry(payload))
    registry.save_telemetry(device_id, parse_telemetry(b'{"nul": "a\\u0000b"}'))
    latest = {key: entry["value"] for key, entry in registry.latest_telemetry(device_id).items()}
    # 5e-324 has a scale over 16: a STRING in ThingsBoard, written out plainly, and kept as text.
    assert latest == {"big": 2**63 - 1, "small": -2**63, "third": 0.1, "tiny": "0." + "0" * 323 + "5", "flag": True,
                      "nested": {"a": [1, "x"]}, "text": "café", "nul": "a\x00b"}
    registry.save_attributes(device_id, AttributeScope.CLIENT, parse_attributes(b'{"nul": "x\\u0000y", "n": 1.5}'))
    assert registry.get_attributes(device_id, AttributeScope.CLIENT) == {"nul": "x\x00y", "n": 1.5}


def test_data_for_a_device_deleted_meanwhile_is_refused_as_not_found(tmp_path):
    from gatehouse.errors import NotFoundError
    from gatehouse.payloads import TelemetryRecord, kv_entries
    from gatehouse.registry import DeviceDataWrite, Registry

    with Registry.initialise(tmp_path) as registry:
        device = registry.create_device("short-lived")
        registry.delete_device(device.id)
        with pytest.raises(NotFoundError):
            registry.save_device_data([DeviceDataWrite(device.id, telemetry=(TelemetryRecord(1, kv_entries({"t": 1})),))])
