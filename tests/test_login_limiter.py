"""Blocking an address after repeated failed logins (gatehouse.login_limiter), on a clock the test
moves: the broker's device logins and the sidecar's administrator logins both use it."""
from __future__ import annotations

import pytest

from gatehouse.login_limiter import LoginLimiter, whole_seconds


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **kwargs) -> LoginLimiter:
    return LoginLimiter(**{"max_failures": 3, "block_seconds": 60.0, "clock": clock, **kwargs})


def test_an_address_is_blocked_at_its_nth_failure_for_the_block_time_and_others_are_not():
    clock = Clock()
    limits = limiter(clock)
    for _ in range(2):
        limits.failed("198.51.100.1")
    assert not limits.is_blocked("198.51.100.1")
    limits.failed("198.51.100.1")
    assert limits.is_blocked("198.51.100.1") and limits.seconds_blocked("198.51.100.1") == 60.0
    assert not limits.is_blocked("198.51.100.2")
    assert limits.blocked_addresses() == ["198.51.100.1"]
    clock.now += 59.5
    assert limits.seconds_blocked("198.51.100.1") == 0.5
    clock.now += 0.5
    assert not limits.is_blocked("198.51.100.1") and limits.blocked_addresses() == []


def test_a_success_starts_the_count_again():
    limits = limiter(Clock())
    limits.failed("198.51.100.1")
    limits.failed("198.51.100.1")
    limits.succeeded("198.51.100.1")
    limits.failed("198.51.100.1")
    limits.failed("198.51.100.1")
    assert not limits.is_blocked("198.51.100.1")


def test_failures_sprayed_from_many_addresses_are_remembered_for_the_newest_only():
    clock = Clock()
    limits = limiter(clock, max_failures=2, max_tracked=3)
    for i in range(1_000):
        limits.failed(f"2001:db8::{i:x}")
    assert not limits.is_blocked("2001:db8::0")
    limits.failed("2001:db8::0")  # its first failure was forgotten long ago: this is its first again
    assert not limits.is_blocked("2001:db8::0")
    limits.failed("2001:db8::3e7")  # the newest address's second failure
    assert limits.is_blocked("2001:db8::3e7")

    for i in range(1_000):
        limits.failed(f"2001:db8:1::{i:x}")
        limits.failed(f"2001:db8:1::{i:x}")
    assert limits.blocked_addresses() == [f"2001:db8:1::{i:x}" for i in range(997, 1_000)]


@pytest.mark.parametrize("seconds_blocked, retry_after", [
    (60.0, 60), (59.2, 60), (0.001, 1), (0.0, 1), (1.0, 1), (1.5, 2),
], ids=["whole", "a fraction rounds up", "a moment", "none left", "one", "one and a half"])
def test_the_time_left_is_told_in_whole_seconds_rounded_up_and_at_least_one(seconds_blocked, retry_after):
    assert whole_seconds(seconds_blocked) == retry_after
