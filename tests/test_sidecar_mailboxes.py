"""What the sidecar holds for HTTP and CoAP devices' long polls (sidecar.mailboxes): updates
reach the polls open when they come, a device that keeps polling misses nothing in between,
and nothing is kept for a device that stopped polling. Real threads, no I/O."""
from __future__ import annotations

import threading

from sidecar import mailboxes as mailboxes_module
from sidecar.mailboxes import DeviceMailboxes


def poll_in_thread(mailboxes: DeviceMailboxes, device_id: str, timeout: float = 5.0):
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        update=mailboxes.wait_for_attribute_update(device_id, timeout)))
    thread.start()
    return thread, result


def wait_for_poll(mailboxes: DeviceMailboxes, device_id: str) -> None:
    while True:  # the poll is open once the device's record lists it
        with mailboxes._changed:
            device = mailboxes._devices.get(device_id)
            if device is not None and device.updates:
                return


def test_an_update_reaches_the_open_poll():
    mailboxes = DeviceMailboxes()
    thread, result = poll_in_thread(mailboxes, "d1")
    wait_for_poll(mailboxes, "d1")
    mailboxes.shared_attributes_changed("d1", {"mode": "eco"})
    thread.join()
    assert result["update"] == {"mode": "eco"}


def test_updates_between_polls_of_a_polling_device_go_to_its_next_polls_in_order():
    mailboxes = DeviceMailboxes()
    thread, result = poll_in_thread(mailboxes, "d1")
    wait_for_poll(mailboxes, "d1")
    mailboxes.shared_attributes_changed("d1", {"a": 1})
    thread.join()
    mailboxes.shared_attributes_changed("d1", {"b": 2})  # no poll open: the device re-polls next
    mailboxes.shared_attributes_changed("d1", {"c": 3})
    assert result["update"] == {"a": 1}
    assert mailboxes.wait_for_attribute_update("d1", 0) == {"b": 2}
    assert mailboxes.wait_for_attribute_update("d1", 0) == {"c": 3}
    assert mailboxes.wait_for_attribute_update("d1", 0) is None


def test_two_updates_during_one_poll_are_both_delivered():
    mailboxes = DeviceMailboxes()
    thread, result = poll_in_thread(mailboxes, "d1")
    wait_for_poll(mailboxes, "d1")
    with mailboxes._changed:  # both arrive before the poll thread can wake (the lock is re-entrant)
        mailboxes.shared_attributes_changed("d1", {"first": 1})
        mailboxes.shared_attributes_changed("d1", {"second": 2})
    thread.join()
    assert result["update"] == {"first": 1}
    assert mailboxes.wait_for_attribute_update("d1", 0) == {"second": 2}


def test_nothing_is_kept_for_a_device_that_never_polled_or_stopped_polling(monkeypatch):
    mailboxes = DeviceMailboxes()
    mailboxes.shared_attributes_changed("never", {"x": 1})
    assert mailboxes.wait_for_attribute_update("never", 0) is None
    assert mailboxes.wait_for_attribute_update("gone", 0) is None  # polled once
    monkeypatch.setattr(mailboxes_module, "REPOLL_GRACE_SECONDS", 0.0)  # ... long ago
    mailboxes.shared_attributes_changed("gone", {"x": 2})
    mailboxes.expire()
    assert mailboxes._devices == {}
