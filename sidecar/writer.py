"""The sidecar's writes to the database: one thread, group commit.

Each waitress thread writing on its own connection made every request a transaction of its own
and the threads queue for SQLite's write lock, which a waiting connection polls with sleeps of
up to 100 ms (bench/http.py: p99 of 600-800 ms, a fifth of a bare endpoint's throughput).
Here the request threads hand their writes to one thread; what arrives while a transaction
commits shares the next one, each write in a savepoint of its own, so one failing write fails
alone. A request returns once its transaction has committed, so an answered request is stored.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gatehouse.registry import Registry

log = logging.getLogger(__name__)
T = TypeVar("T")
GROUP_COMMIT_MAX = 500


class _Write:
    __slots__ = ("after_commit", "args", "done", "error", "fn", "kwargs", "result")

    def __init__(self, fn, args, kwargs, after_commit):
        self.fn, self.args, self.kwargs, self.after_commit = fn, args, kwargs, after_commit
        self.done = threading.Event()
        self.result = self.error = None


class GroupCommitWriter:
    def __init__(self, data_dir: Path | str):
        self._data_dir = data_dir
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gatehouse-writer", daemon=True)
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def call(self, fn: Callable[..., T], *args, after_commit: Callable[[], None] | None = None, **kwargs) -> T:
        """`fn(registry, *args, **kwargs)` in the next group commit; returns its result once
        committed, or raises what it (or the commit) raised. `after_commit` runs on the writer's
        thread once the write is committed (publishing what was stored)."""
        write = _Write(fn, args, kwargs, after_commit)
        self._queue.put(write)
        write.done.wait()
        if write.error is not None:
            raise write.error
        return write.result

    def _run(self) -> None:
        try:
            registry = Registry.open(self._data_dir)
        except BaseException as e:
            self._start_error = e
            self._started.set()
            return
        self._started.set()
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
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
                self._commit(registry, batch)
        finally:
            registry.close()

    @staticmethod
    def _commit(registry: Registry, batch: list[_Write]) -> None:
        try:
            with registry.batch():
                for write in batch:
                    try:
                        with registry.batch():  # a savepoint: this write fails alone
                            write.result = write.fn(registry, *write.args, **write.kwargs)
                    except Exception as e:
                        write.error = e
        except Exception as e:  # the transaction itself failed: nothing was stored
            for write in batch:
                write.result, write.error = None, e
        finally:
            for write in batch:
                write.done.set()
            for write in batch:
                if write.after_commit is not None and write.error is None:
                    try:
                        write.after_commit()
                    except Exception:
                        log.exception("after a commit")
