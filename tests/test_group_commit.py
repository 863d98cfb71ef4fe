"""The group-commit core both transports share (gatehouse.group_commit): what a batch takes, and
the commit rule, on a real SQLite registry with no threads or event loop around it."""
from __future__ import annotations

import pytest

from gatehouse import group_commit
from gatehouse.errors import NotFoundError, StoreBusy, StoreUnavailable, ValidationError
from gatehouse.group_commit import MAX_BATCH, PendingWrite, take_batch
from gatehouse.payloads import TelemetryRecord, kv_entries
from gatehouse.registry import DeviceDataWrite, Registry

# Each test that uses the store runs on SQLite and on PostgreSQL (conftest.py).
pytestmark = pytest.mark.both_stores


def telemetry(device_id: str, ts: int) -> PendingWrite:
    return PendingWrite(DeviceDataWrite(device_id, telemetry=(TelemetryRecord(ts, kv_entries({"t": ts})),)))


def waiting(items):
    queue = list(items)
    return lambda: queue.pop(0) if queue else None


@pytest.mark.parametrize(("waiting_behind", "taken"), [
    (0, 1),  # an idle writer commits what it has at once
    (5, 6),
    (MAX_BATCH - 1, MAX_BATCH),
    (MAX_BATCH + 10, MAX_BATCH),  # the rest waits for the next commit
])
def test_a_batch_is_what_is_already_waiting_up_to_the_cap(waiting_behind, taken):
    take_waiting = waiting(range(1, waiting_behind + 1))
    batch = take_batch(0, take_waiting)
    assert batch == list(range(taken))
    assert take_waiting() == (taken if waiting_behind >= taken else None)


def test_device_data_and_calls_share_one_commit_and_each_gets_its_outcome(registry):
    device = registry.create_device("commit-device")
    batch = [telemetry(device.id, 1), PendingWrite(fn=lambda r, name: r.create_device(name).name, args=("made",)),
             telemetry(device.id, 2)]
    group_commit.commit(registry, batch)
    assert [w.error for w in batch] == [None, None, None]
    assert batch[1].result == "made"
    assert sorted(p["value"] for p in registry.store.telemetry_history(device.id, "t")) == [1, 2]


def test_a_write_for_a_deleted_device_fails_alone(registry):
    kept = registry.create_device("kept")
    gone = registry.create_device("gone")
    registry.delete_device("gone")
    batch = [telemetry(kept.id, 1), telemetry(gone.id, 1), telemetry(kept.id, 2)]
    group_commit.commit(registry, batch)
    assert batch[0].error is None and batch[2].error is None
    assert isinstance(batch[1].error, NotFoundError)
    assert len(registry.store.telemetry_history(kept.id, "t")) == 2


def test_a_call_that_raises_fails_alone_and_leaves_nothing_of_its_own(registry):
    def create_then_fail(r):
        r.create_device("half-made")
        raise ValidationError("no")

    batch = [PendingWrite(fn=create_then_fail), PendingWrite(fn=lambda r: r.create_device("whole").name)]
    group_commit.commit(registry, batch)
    assert isinstance(batch[0].error, ValidationError)
    assert batch[1].result == "whole" and batch[1].error is None
    assert registry.find_device_by_name("half-made") is None
    assert registry.find_device_by_name("whole") is not None


def test_a_transaction_that_cannot_begin_fails_every_write_and_stores_nothing(data_dir):
    with Registry.initialise(data_dir) as registry, Registry.open(data_dir) as other:
        device = registry.create_device("commit-device")
        registry.never_wait()
        batch = [telemetry(device.id, 1), PendingWrite(fn=lambda r: r.create_device("never").name)]
        with other.batch():  # another process holds the write lock
            other.create_device("elsewhere")
            group_commit.commit(registry, batch)
        assert all(isinstance(w.error, StoreBusy) for w in batch) and batch[1].result is None
        assert registry.store.telemetry_history(device.id, "t") == []
        assert registry.find_device_by_name("never") is None


def test_a_batch_whose_device_data_cannot_be_stored_at_all_fails_each_write_with_that_error(registry, monkeypatch):
    # Regression: a batch of several whose save_device_data raised (the database gone between its
    # try and its retry) failed every write with zip()'s ValueError, which the sidecar answered 500.
    device = registry.create_device("unreachable-device")

    def unreachable(items):
        raise StoreUnavailable("the database cannot be reached")

    monkeypatch.setattr(registry, "save_device_data", unreachable)
    batch = [telemetry(device.id, 1), telemetry(device.id, 2), PendingWrite(fn=lambda r: "kept")]
    group_commit.commit(registry, batch)
    assert [type(w.error) for w in batch[:2]] == [StoreUnavailable, StoreUnavailable]
    assert (batch[2].result, batch[2].error) == ("kept", None)
