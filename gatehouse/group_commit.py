"""Group commit: the writes that arrived while a transaction was committing share the next one.

SQLite (like any database) has one writer at a time and a commit costs a disk sync, so the
transports do not give every telemetry message a transaction of its own: each has one writer (the
broker a task on its event loop, the sidecar a thread) that takes what is waiting and commits it
together. This module is what both share, the batching and the commit rule; the waiting (an
asyncio future, a threading event) stays with each transport.

The rule: all device data in one `Registry.save_device_data` (a few statements for the whole
batch; a bad item fails alone), every other write in a savepoint of its own, all in one
transaction. A writer answers a request only once its transaction has committed, so that an
acknowledged message is stored. An idle writer commits at once: there is no fixed delay, a batch
is only what was already waiting.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .registry import DeviceDataWrite, Registry

# The most writes one transaction takes: a bound on how long the database stays locked for the
# others and on one commit's latency, whatever the backlog.
MAX_BATCH = 1000

W = TypeVar("W")


@dataclass(slots=True)
class PendingWrite:
    """One write waiting for the next group commit: device data, or `fn(registry, *args,
    **kwargs)`. `commit` fills in its outcome."""

    data: DeviceDataWrite | None = None
    fn: Callable[..., Any] | None = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    result: Any = None
    error: BaseException | None = None


def take_batch(first: W, take_waiting: Callable[[], W | None]) -> list[W]:
    """`first` and what is already waiting behind it (`take_waiting()` until it returns None),
    at most MAX_BATCH writes: a commit never waits for more to come."""
    batch = [first]
    while len(batch) < MAX_BATCH and (write := take_waiting()) is not None:
        batch.append(write)
    return batch


def commit(registry: Registry, batch: Sequence[PendingWrite]) -> None:
    """Commit `batch` in one transaction by the rule above, setting each write's result or
    error; if the transaction itself fails, nothing was stored and every write has its error."""
    device_data = [write for write in batch if write.data is not None]
    try:
        # Device data alone need not queue behind other writers (Store.transaction).
        with registry.batch(exclusive=len(device_data) < len(batch)):
            if device_data:
                try:
                    outcomes = registry.save_device_data([write.data for write in device_data])
                except Exception as e:  # a batch of one raises instead of reporting, and so does
                    outcomes = [e] * len(device_data)  # any batch whose retry could not even begin
                for write, outcome in zip(device_data, outcomes, strict=True):
                    write.error = outcome
            for write in batch:
                if write.fn is None:
                    continue
                try:
                    with registry.batch():  # a savepoint: this write fails alone
                        write.result = write.fn(registry, *write.args, **write.kwargs)
                except Exception as e:  # raised to the request that asked for it
                    write.error = e
    except Exception as e:  # the transaction itself failed: nothing was stored
        for write in batch:
            write.result, write.error = None, e
