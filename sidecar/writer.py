"""The sidecar's writes to the database: one thread, group commit.

Each waitress thread writing on its own connection made every request a transaction of its own,
and the threads queued for SQLite's write lock, which a waiting connection polls with sleeps of
up to 100 ms (bench/http.py: p99 of 600-800 ms, a fifth of a bare endpoint's throughput). Here
the request threads hand their writes to one thread, and what arrives while a transaction
commits shares the next one: all device data in one `save_device_data` (a few statements for
the whole batch; a bad item fails alone), every other write in a savepoint of its own. A
request returns once its transaction has committed, so an answered request is stored.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gatehouse.registry import DeviceDataWrite, Registry

log = logging.getLogger(__name__)
T = TypeVar("T")
GROUP_COMMIT_MAX = 500


class _Write:
    __slots__ = ("after_commit", "args", "data", "done", "error", "fn", "kwargs", "result")

    def __init__(self, fn, args, kwargs, data: DeviceDataWrite | None, after_commit):
        self.fn, self.args, self.kwargs, self.data, self.after_commit = fn, args, kwargs, data, after_commit
        self.done = threading.Event()
        self.result = self.error = None


class GroupCommitWriter:
    def __init__(self, data_dir: Path | str, *, telemetry_history: bool = True):
        self._data_dir = data_dir
        self._telemetry_history = telemetry_history
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gatehouse-writer", daemon=True)
        self._started = threading.Event()
        self._start_error: Exception | None = None

    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """`fn(registry, *args, **kwargs)` in the next group commit; returns its result once
        committed, or raises what it (or the commit) raised."""
        return self._submit(_Write(fn, args, kwargs, None, None))

    def save_device_data(self, data: DeviceDataWrite, *, after_commit: Callable[[], None] | None = None) -> None:
        """Store a device's telemetry or attribute changes in the next group commit; returns once
        committed. `after_commit` then runs on the writer's thread (publishing what was stored)."""
        self._submit(_Write(None, (), {}, data, after_commit))

    def _submit(self, write: _Write):
        self._queue.put(write)
        write.done.wait()
        if write.error is not None:
            raise write.error
        return write.result

    def _run(self) -> None:
        try:
            registry = Registry.open(self._data_dir, telemetry_history=self._telemetry_history)
        except Exception as e:  # told to start(), which raises it
            self._start_error = e
            self._started.set()
            return
        self._started.set()
        try:
            while (batch := self._next_batch()) is not None:
                self._commit(registry, batch)
        finally:
            registry.close()

    def _next_batch(self) -> list[_Write] | None:
        """What is waiting (at least one write), or None once stopped."""
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < GROUP_COMMIT_MAX:
            try:
                write = self._queue.get_nowait()
            except queue.Empty:
                break
            if write is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(write)
        return batch

    @staticmethod
    def _commit(registry: Registry, batch: list[_Write]) -> None:
        device_data = [write for write in batch if write.data is not None]
        try:
            with registry.batch():
                if device_data:
                    try:
                        outcomes = registry.save_device_data([write.data for write in device_data])
                    except Exception as e:  # a batch of one raises instead of reporting
                        outcomes = [e]
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
        for write in batch:
            write.done.set()
        for write in batch:
            if write.after_commit is not None and write.error is None:
                try:
                    write.after_commit()
                except Exception:  # a publish that failed must not stop the writer
                    log.exception("publishing stored data failed")
