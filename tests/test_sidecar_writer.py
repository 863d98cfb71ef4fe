"""The sidecar's group-commit writer (sidecar.writer): writes from many threads share
transactions, a failing write fails alone, and what runs after a commit runs only for what was
stored. Real SQLite files; real threads."""
from __future__ import annotations

import threading

import pytest

from gatehouse.errors import NotFoundError, ValidationError
from gatehouse.payloads import TelemetryRecord, kv_entries
from gatehouse.registry import DeviceDataWrite, Registry
from sidecar.writer import GroupCommitWriter


@pytest.fixture
def data_dir(tmp_path):
    Registry.initialise(tmp_path).close()
    return tmp_path


@pytest.fixture
def writer(data_dir):
    writer = GroupCommitWriter(data_dir)
    writer.start()
    yield writer
    writer.stop()


def telemetry(device_id: str, **values) -> DeviceDataWrite:
    return DeviceDataWrite(device_id, telemetry=(TelemetryRecord(1_700_000_000_000, kv_entries(values)),))


def test_writes_from_many_threads_are_all_stored_and_published_after_their_commit(data_dir, writer):
    with Registry.open(data_dir) as registry:
        devices = [registry.create_device(f"dev-{i}") for i in range(8)]
    published, errors = [], []

    def send(device, n):
        try:
            for seq in range(n):
                writer.save_device_data(telemetry(device.id, seq=seq), after_commit=lambda d=device, s=seq:
                                        published.append((d.id, s)))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=send, args=(device, 50)) for device in devices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(published) == 8 * 50
    with Registry.open(data_dir) as registry:
        for device in devices:
            assert registry.latest_telemetry(device.id)["seq"]["value"] == 49


def test_a_write_for_a_deleted_device_fails_alone_and_is_not_published(data_dir, writer):
    with Registry.open(data_dir) as registry:
        kept, gone = registry.create_device("kept"), registry.create_device("gone")
        registry.delete_device(gone.id)
    published = []
    with pytest.raises(NotFoundError):
        writer.save_device_data(telemetry(gone.id, t=1), after_commit=lambda: published.append("gone"))
    writer.save_device_data(telemetry(kept.id, t=2), after_commit=lambda: published.append("kept"))
    assert published == ["kept"]


def test_a_call_that_raises_is_raised_to_its_caller_and_leaves_nothing(data_dir, writer):
    with pytest.raises(ValidationError):
        writer.call(Registry.create_device, "")  # an empty name breaks the domain's rule
    assert writer.call(Registry.create_device, "fine").name == "fine"
    with Registry.open(data_dir) as registry:
        assert [d.name for d in registry.list_devices()] == ["fine"]


def test_a_writer_whose_data_dir_is_missing_fails_to_start(tmp_path):
    with pytest.raises(NotFoundError):
        GroupCommitWriter(tmp_path / "nothing-here").start()
