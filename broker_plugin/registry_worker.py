"""The broker's path to the database: one thread that owns a Registry, so the event loop never
waits on SQLite, and group commit for device data.

Telemetry is the write-heavy path and SQLite has one writer at a time, so writes that arrive
within a few milliseconds share one transaction (each in its own savepoint, so one bad write
fails alone), and a QoS 1 message is acknowledged only once its transaction has committed.
"""
from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from gatehouse.registry import Registry

T = TypeVar("T")
GROUP_COMMIT_DELAY = 0.005
GROUP_COMMIT_MAX = 500


class RegistryWorker:
    def __init__(self, data_dir: Path | str):
        self._data_dir = data_dir
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gatehouse-db")
        self._registry: Registry | None = None
        self._writes: asyncio.Queue[tuple[Callable[[Registry], None], asyncio.Future]] = asyncio.Queue()
        self._writer_task: asyncio.Task | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._registry = await loop.run_in_executor(self._executor, Registry.open, self._data_dir)
        self._writer_task = asyncio.create_task(self._group_commit_loop(), name="gatehouse-group-commit")

    async def close(self) -> None:
        if self._writer_task is not None:
            self._writer_task.cancel()
            await asyncio.gather(self._writer_task, return_exceptions=True)
        if self._registry is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._registry.close)
        self._executor.shutdown(wait=True)

    async def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run `fn(registry, *args, **kwargs)` on the database thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(fn, self._registry, *args, **kwargs))

    async def write(self, fn: Callable[[Registry], None]) -> None:
        """Apply `fn(registry)` in the next group commit; returns once it is committed, raises
        what `fn` raised."""
        done = asyncio.get_running_loop().create_future()
        await self._writes.put((fn, done))
        await done

    async def _group_commit_loop(self) -> None:
        while True:
            batch = [await self._writes.get()]
            await asyncio.sleep(GROUP_COMMIT_DELAY)
            while len(batch) < GROUP_COMMIT_MAX and not self._writes.empty():
                batch.append(self._writes.get_nowait())
            try:
                outcomes = await self.call(_commit_together, [fn for fn, _ in batch])
            except Exception as e:  # the commit itself failed: nothing was written
                outcomes = [e] * len(batch)
            for (_, done), outcome in zip(batch, outcomes, strict=True):
                if done.done():
                    continue
                if outcome is None:
                    done.set_result(None)
                else:
                    done.set_exception(outcome)


def _commit_together(registry: Registry, writes: list[Callable[[Registry], None]]) -> list[Exception | None]:
    outcomes: list[Exception | None] = []
    with registry.batch():
        for write in writes:
            try:
                with registry.batch():  # a savepoint: a failing write leaves the others intact
                    write(registry)
            except Exception as e:
                outcomes.append(e)
            else:
                outcomes.append(None)
    return outcomes
