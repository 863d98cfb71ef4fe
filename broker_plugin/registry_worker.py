"""The broker's path to the database: one thread that owns a Registry for everything that
writes, so the event loop never waits for SQLite's write lock, and group commit for device data.

A short write that arrives while nobody holds the write lock (a provisioning request) runs on
the event loop's own connection instead, which never waits for the lock (busy timeout 0) and
never checkpoints: the hop to the thread and back, with the interpreter lock changing hands
around every statement, cost a busy loop three times the write itself. If the lock is taken
the write goes to the thread as before.

On a store across a network (PostgreSQL: `Store.local` is false) nothing runs on the event loop:
reads go to a few reader threads sharing the registry (its store's pool gives each a
connection), writes to the database thread, so a slow or unreachable database delays answers
but never the loop.

While the database cannot be reached, the calls queued behind one that found it so fail at once
rather than each waiting out the connect timeout in turn: the store fails every call for a moment
after one found its server away (gatehouse.storage.postgresql).

Telemetry is the write-heavy path and SQLite has one writer at a time, so device data that
arrives while a commit is running waits for the next one and then shares its transaction
(gatehouse.group_commit), and a QoS 1 message is acknowledged only once its transaction has
committed.
"""
from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from gatehouse import group_commit
from gatehouse.data_dir import DataDir
from gatehouse.errors import StoreBusy
from gatehouse.group_commit import PendingWrite
from gatehouse.registry import DeviceDataWrite, Registry

T = TypeVar("T")
# Reads in flight at once against a store that is not local (logins, attribute requests).
READER_THREADS = 4


class RegistryWorker:
    def __init__(self, data_dir: DataDir | Path | str, *, telemetry_history: bool = True):
        self._data_dir = data_dir
        self._open = functools.partial(Registry.open, data_dir, telemetry_history=telemetry_history)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gatehouse-db")
        self._reader_threads: ThreadPoolExecutor | None = None  # reads, for a store that is not local
        self._registry: Registry | None = None
        self._reader: Registry | None = None  # reads on the event loop, for a local store
        self._loop_writer: Registry | None = None  # short writes from the event loop, never waiting
        self._writes: asyncio.Queue[tuple[PendingWrite, asyncio.Future]] = asyncio.Queue()
        self._writer_task: asyncio.Task | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._registry = await loop.run_in_executor(self._executor, self._open)
        if self._registry.store.local:
            # A second connection for the event loop's own point reads (logins, attribute
            # requests): in WAL mode a reader never waits for a writer, and a 0.2 ms lookup
            # costs less than the hop to the database thread and back through a busy loop.
            self._reader = Registry.open(self._data_dir)
            self._loop_writer = self._open()
            self._loop_writer.never_wait()
        else:
            self._reader_threads = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="gatehouse-db-read")
        self._writer_task = asyncio.create_task(self._group_commit_loop(), name="gatehouse-group-commit")

    async def close(self) -> None:
        if self._writer_task is not None:
            self._writer_task.cancel()
            await asyncio.gather(self._writer_task, return_exceptions=True)
        if self._reader_threads is not None:
            self._reader_threads.shutdown(wait=True)
        if self._reader is not None:
            self._reader.close()
            self._loop_writer.close()
        if self._registry is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._registry.close)
        self._executor.shutdown(wait=True)

    async def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run `fn(registry, *args, **kwargs)` on the database thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(fn, self._registry, *args, **kwargs))

    async def read(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """`fn(registry, *args, **kwargs)` that only reads: on the event loop for a local store,
        else on a reader thread."""
        if self._reader is not None:
            return fn(self._reader, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(
            self._reader_threads, functools.partial(fn, self._registry, *args, **kwargs))

    async def call_write(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run the write transaction `fn(registry, *args, **kwargs)` at once on the event loop
        if the store is local and its write lock is free, else on the database thread."""
        if self._loop_writer is None:
            return await self.call(fn, *args, **kwargs)
        try:
            return fn(self._loop_writer, *args, **kwargs)
        except StoreBusy:  # raised by BEGIN IMMEDIATE: nothing was done
            return await self.call(fn, *args, **kwargs)

    async def checkpoint(self) -> None:
        """What the event loop's connection leaves to others (see call_write); nothing for a
        store that is not local, which has no such connection and checkpoints by itself."""
        if self._loop_writer is not None:
            await self.call(Registry.checkpoint)

    async def write(self, data: DeviceDataWrite) -> None:
        """Store `data` in the next group commit; returns once it is committed, raises if it
        could not be stored."""
        done = asyncio.get_running_loop().create_future()
        await self._writes.put((PendingWrite(data), done))
        await done

    async def _group_commit_loop(self) -> None:
        """Never ends before close(): a commit that fails (the database away, say) fails its
        writes, never the loop, or every later write would wait for good."""
        while True:
            batch = group_commit.take_batch(await self._writes.get(), self._take_waiting)
            try:
                await self.call(group_commit.commit, [write for write, _ in batch])
            except Exception as e:  # commit() reports each write's outcome; this is the hop failing
                for write, _ in batch:
                    write.error = e
            for write, done in batch:
                if done.done():  # its publisher went away
                    continue
                if write.error is None:
                    done.set_result(None)
                else:
                    done.set_exception(write.error)

    def _take_waiting(self) -> tuple[PendingWrite, asyncio.Future] | None:
        try:
            return self._writes.get_nowait()
        except asyncio.QueueEmpty:
            return None
