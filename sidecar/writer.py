"""The sidecar's writes to the database: one thread, group commit (gatehouse.group_commit).

Each waitress thread writing on its own connection made every request a transaction of its own,
and the threads queued for SQLite's write lock, which a waiting connection polls with sleeps of
up to 100 ms (bench/http.py: p99 of 600-800 ms, a fifth of a bare endpoint's throughput). Here
the request threads hand their writes to one thread, and what arrives while a transaction
commits shares the next one. A request returns once its transaction has committed, so an
answered request is stored. A commit that fails (the database away for a while) fails its requests
(the sidecar answers 503), never the thread: the next batch tries the database again.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gatehouse import group_commit
from gatehouse.group_commit import PendingWrite
from gatehouse.registry import DeviceDataWrite, Registry

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Write(PendingWrite):
    """A request thread's write, and how it is told that the commit is done."""

    __slots__ = ("after_commit", "done")

    def __init__(self, after_commit: Callable[[], None] | None = None, **write):
        super().__init__(**write)
        self.after_commit = after_commit
        self.done = threading.Event()


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
        return self._submit(_Write(fn=fn, args=args, kwargs=kwargs))

    def save_device_data(self, data: DeviceDataWrite, *, after_commit: Callable[[], None] | None = None) -> None:
        """Store a device's telemetry or attribute changes in the next group commit; returns once
        committed. `after_commit` then runs on the writer's thread (publishing what was stored)."""
        self._submit(_Write(after_commit, data=data))

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
                try:
                    self._commit(registry, batch)
                except Exception as e:  # the thread must outlive any batch, or every later request hangs
                    log.exception("a group commit failed")
                    for write in batch:
                        if not write.done.is_set():
                            write.result, write.error = None, e
                            write.done.set()
        finally:
            registry.close()

    def _next_batch(self) -> list[_Write] | None:
        """What is waiting (at least one write), or None once stopped."""
        first = self._queue.get()
        return None if first is None else group_commit.take_batch(first, self._take_waiting)

    def _take_waiting(self) -> _Write | None:
        try:
            write = self._queue.get_nowait()
        except queue.Empty:
            return None
        if write is None:
            self._queue.put(None)  # stop after this batch
        return write

    @staticmethod
    def _commit(registry: Registry, batch: list[_Write]) -> None:
        group_commit.commit(registry, batch)
        for write in batch:
            write.done.set()
        for write in batch:
            if write.after_commit is not None and write.error is None:
                try:
                    write.after_commit()
                except Exception:  # a publish that failed must not stop the writer
                    log.exception("publishing stored data failed")
